"""Running the Snakemake workflow from tests: in a temporary directory, with extra config files."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake_command(workdir: Path, *args: str, configfiles: list[Path] = ()) -> list[str]:
    command = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if configfiles:
        command += ["--configfile", *map(str, configfiles)]
    return command + list(args)


def snakemake(workdir: Path, *args: str, configfiles: list[Path] = (), check: bool = True,
              timeout: int = 1200) -> subprocess.CompletedProcess:
    command = snakemake_command(workdir, *args, configfiles=configfiles)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
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
