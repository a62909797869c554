"""Running the Snakemake workflow from tests: in a temporary directory, with extra config files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake_command(workdir: Path, *args: str, configfiles: list[Path] = (), repo: Path = REPO) -> list[str]:
    command = [*SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(workdir)]
    if configfiles:
        command += ["--configfile", *map(str, configfiles)]
    return command + list(args)


def snakemake(workdir: Path, *args: str, configfiles: list[Path] = (), check: bool = True,
              timeout: int = 1200, repo: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake` with `repo`'s Snakefile (and config.yaml) in `workdir`."""
    command = snakemake_command(workdir, *args, configfiles=configfiles, repo=repo)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(output: str) -> Counter:
    """The 'Job stats' table of a dry run, as {rule: count}; empty when nothing is to be done."""
    if "Nothing to be done" in output:
        return Counter()
    table = output.split("Job stats:", 1)[1]
    jobs = Counter()
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


def planned_outputs(output: str) -> list[str]:
    return re.findall(r"^\s+output: (.+)$", output, flags=re.MULTILINE)


def fresh_clone(folder: Path) -> Path:
    """What a user has after `git clone`: this repository's committed tree in `folder`/sedsft,
    where `folder` is empty, so nothing lies beside the clone (no sibling data folder). The
    working tree's uncommitted edits to tracked files are applied on top (in CI there are none),
    so that a developer tests what they would commit; untracked and ignored files (the venv,
    results/, a file not yet added) stay behind, as they do for a user."""
    clone = folder / "sedsft"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, capture_output=True, timeout=300)
    edits = subprocess.run(["git", "diff", "--binary", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
    if edits:
        subprocess.run(["git", "apply", "--whitespace=nowarn"], cwd=clone, input=edits, check=True, capture_output=True)
    return clone


def offline_env(clone: Path) -> dict:
    """A run in `clone` with no Hugging Face Hub, importing the clone's own package (its src/
    comes before the editable install of the checkout the tests run from)."""
    path = [str(clone / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(path)}


def planned_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each planned job, and its "threads"]} from a dry run's job listing."""
    plan: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=\[)", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.MULTILINE)
        resources = re.search(r"^\s+resources: (.+)$", block, flags=re.MULTILINE)
        if rule and resources:
            pairs = dict(item.split("=", 1) for item in resources.group(1).split(", "))
            threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.MULTILINE)
            pairs["threads"] = threads.group(1) if threads else "1"
            plan.setdefault(rule.group(1), []).append(pairs)
    return plan
