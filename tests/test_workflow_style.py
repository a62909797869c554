"""The workflow passes `snakemake --lint` (a log and a conda env per rule, helpers apart from
rules, no absolute paths) and is formatted by snakefmt (settings: pyproject.toml [tool.snakefmt])."""

from __future__ import annotations

import subprocess
import sys

from workflow_helpers import REPO, snakemake


def test_snakemake_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", check=False, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, f"snakemake --lint:\n{output[-6000:]}"


def test_snakefmt_leaves_the_workflow_unchanged():
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff", *map(str, files)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (f"snakefmt would reformat (run `snakefmt Snakefile workflow/rules/*.smk`):\n"
                                    f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
