"""How long a Slurm node sits idle between the jobs of a chain, by the executor plugin's polling
settings: a chain of `--jobs` rules (each `sleep --seconds`, one after the other) submitted with
snakemake-executor-plugin-slurm, then read back from sacct: wall time from the first job's start
to the last one's end, the time some job ran, and the idle share of the wall time.

    scripts/slurm_up.sh
    python perf/slurm_polling.py --init 40 --init 5 --json perf/results/slurm_polling.json

`--init` is --slurm-init-seconds-before-status-checks (the plugin's default is 40); each value
is one workflow run. Snakemake's own --seconds-between-status-checks stays at its default."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

SACCT_TIME = "%Y-%m-%dT%H:%M:%S"


def chain_snakefile(jobs: int, seconds: float) -> str:
    rules = []
    for i in range(jobs):
        needs = f'    input: "step{i - 1}.txt"\n' if i else ""
        rules.append(f'rule step{i}:\n{needs}    output: "step{i}.txt"\n    resources: mem_mb=200, runtime=5\n'
                     f'    shell: "sleep {seconds} && touch {{output}}"\n')
    return "\n".join(rules)


def run_chain(folder: Path, init: int, partition: str, account: str) -> tuple[float, list[tuple[float, float]]]:
    """(snakemake's wall seconds, [(start, end) of each job as sacct has them])."""
    before = {line.split("|")[0] for line in sacct_lines()}
    started = time.time()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(folder / "Snakefile"), "-d", str(folder),
                    f"step{chain_length(folder) - 1}.txt",
                    "--executor", "slurm", "--jobs", "1", "--default-resources", f"slurm_partition={partition}",
                    f"slurm_account={account}", "--slurm-init-seconds-before-status-checks", str(init)],
                   check=True, capture_output=True, timeout=3600)
    wall = time.time() - started
    jobs = []
    for line in sacct_lines():
        jobid, _, comment, start, end = line.split("|")
        if jobid not in before and comment.startswith("rule_step"):  # this chain's, not another user's
            jobs.append((parse(start), parse(end)))
    return wall, sorted(jobs)


def chain_length(folder: Path) -> int:
    return (folder / "Snakefile").read_text().count("rule step")


def sacct_lines() -> list[str]:
    return subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "-o", "JobID,JobName,Comment,Start,End"],
                          check=True, capture_output=True, text=True).stdout.splitlines()


def parse(stamp: str) -> float:
    return datetime.strptime(stamp, SACCT_TIME).timestamp()


def idle_share(jobs: list[tuple[float, float]]) -> dict:
    """Over [first start, last end]: seconds some job ran, and the idle share (sacct's times are
    whole seconds)."""
    span = max(end for _, end in jobs) - jobs[0][0]  # jobs sorted by start; the last to end may start earlier
    busy, reach = 0.0, jobs[0][0]
    for start, end in jobs:
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return {"span_s": span, "busy_s": busy, "idle_share": 1 - busy / span if span else 0.0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", type=int, action="append", help="--slurm-init-seconds-before-status-checks (repeat)")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--partition", default=os.environ.get("SLURM_PARTITION", "debug"))
    p.add_argument("--account", default=os.environ.get("SLURM_ACCOUNT", "sedsft"))
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    for init in args.init or [40, 5]:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "Snakefile").write_text(chain_snakefile(args.jobs, args.seconds))
            wall, jobs = run_chain(folder, init, args.partition, args.account)
        if len(jobs) != args.jobs:
            sys.exit(f"sacct shows {len(jobs)} new jobs, expected {args.jobs}")
        row = {"init_seconds": init, "jobs": args.jobs, "job_seconds": args.seconds, "snakemake_wall_s": wall,
               **idle_share(jobs)}
        rows.append(row)
        print(f"init {init:>3} s: {args.jobs} jobs of {args.seconds:g} s, span {row['span_s']:.0f} s, "
              f"busy {row['busy_s']:.0f} s, idle {100 * row['idle_share']:.1f} %, snakemake {wall:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "slurm": subprocess.run(
            ["sinfo", "--version"], capture_output=True, text=True).stdout.strip()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
