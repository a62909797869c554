"""How long a no-op `snakemake -n TARGET` takes once every output exists (target: <= 5 s on 2 cores).

    python perf/dry_run.py                      # tiny and llama3b, 5 runs each
    python perf/dry_run.py --targets results/qwen7b/rl_eval.json --runs 10

Per target, in a scratch working directory: a dry run lists the planned outputs; each is
created (an empty file, or a folder for a `directory()` output of workflow/rules), then
`snakemake --touch` stamps them in DAG order and records them, and a dry run must answer
"Nothing to be done". Those no-op dry runs are timed (median and max of --runs). Every such
run pays for the DAG load, so the script also lists the heavy modules (torch & co.) that
loading the Snakefile imports beyond what Snakemake itself imports for a one-rule Snakefile
(`python -X importtime`): there must be none.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "transformers", "trl", "datasets", "deepspeed", "vllm", "accelerate",
                 "math_verify", "sympy", "sentence_transformers", "pandas", "matplotlib")


def snakemake(workdir: Path, *args: str, importtime: bool = False, snakefile: Path = REPO / "Snakefile"
              ) -> subprocess.CompletedProcess:
    python = [sys.executable, "-X", "importtime"] if importtime else [sys.executable]
    command = [*python, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def directory_patterns() -> list[re.Pattern]:
    """Regexes of the workflow's directory() outputs (their wildcards match one path part)."""
    patterns = []
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        for template in re.findall(r'directory\("([^"]+)"\)', rules.read_text()):
            parts = re.split(r"\{[^}]+\}", template)
            patterns.append(re.compile("[^/]+".join(map(re.escape, parts)) + "$"))
    return patterns


def create_outputs(workdir: Path, target: str) -> int:
    planned = snakemake(workdir, "-n", target).stdout
    outputs = {path.strip() for line in re.findall(r"^\s+output: (.+)$", planned, flags=re.MULTILINE)
               for path in line.split(",")}
    folders = directory_patterns()
    for output in outputs:
        path = workdir / output
        if any(p.search(output) for p in folders):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    snakemake(workdir, "--touch", "--cores", "1", target)
    if "Nothing to be done" not in snakemake(workdir, "-n", target).stdout:
        sys.exit(f"{target}: a dry run still plans jobs after every output was created")
    return len(outputs)


def heavy_imports(workdir: Path, *args: str, snakefile: Path = REPO / "Snakefile") -> set[str]:
    """Top-level heavy modules imported while loading a Snakefile and planning."""
    stderr = snakemake(workdir, "-n", *args, importtime=True, snakefile=snakefile).stderr
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return imported & set(HEAVY_MODULES)


def snakemake_own_imports() -> set[str]:
    with tempfile.TemporaryDirectory(prefix="dry-run-") as scratch:
        snakefile = Path(scratch) / "Snakefile"
        snakefile.write_text('rule one:\n    output: "done"\n    shell: "touch {output}"\n')
        return heavy_imports(Path(scratch), snakefile=snakefile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["results/tiny/rl_eval.json", "results/llama3b/rl_eval.json"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    baseline = snakemake_own_imports()
    print(f"Snakemake itself imports: {', '.join(sorted(baseline)) or 'none of them'}")
    print(f"{'target':<34} {'outputs':>7} {'median s':>9} {'max s':>7}  heavy imports the Snakefile adds")
    for target in args.targets:
        with tempfile.TemporaryDirectory(prefix="dry-run-") as scratch:
            workdir = Path(scratch)
            outputs = create_outputs(workdir, target)
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                snakemake(workdir, "-n", target)
                seconds.append(time.perf_counter() - started)
            added = heavy_imports(workdir, target) - baseline
        print(f"{target:<34} {outputs:>7} {statistics.median(seconds):>9.2f} {max(seconds):>7.2f}  "
              f"{', '.join(sorted(added)) or 'none'}")


if __name__ == "__main__":
    main()
