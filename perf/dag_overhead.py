"""Where a finished run's wall time went, by stage: each job's wall time (Snakemake's timing
file), the part its `sedsft <stage>` spent inside the stage (the log's "done in" line, lazy
library imports included), and the rest (Python start-up, the CLI's own imports, the shell);
beside it, what importing each library a stage uses costs in a fresh process, so a stage whose
import time rivals its work shows as such. Read it on a quiet machine.

    python perf/dag_overhead.py results/tiny --json overhead.json
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# the libraries each stage imports (lazily, inside the stage); measured one set per fresh process
STAGE_IMPORTS = {
    "tiny_task": [],
    "base_model": ["torch", "transformers.Trainer"],
    "sft_data": ["transformers.AutoTokenizer"],
    "rl_prompts": ["datasets", "pandas"],
    "benchmark_data": ["pandas"],
    "threshold": ["torch", "transformers.AutoModelForCausalLM"],
    "sft": ["torch", "transformers.Trainer"],
    "diversity": ["torch", "transformers.AutoModelForCausalLM", "math_verify", "sacrebleu", "sentence_transformers"],
    "rl": ["torch", "trl.GRPOTrainer", "math_verify"],
    "generate": ["torch", "transformers.AutoModelForCausalLM"],
    "grade": ["math_verify", "pandas"],
    "eval_report": ["pandas"],
    "seeds": ["scipy.stats", "matplotlib.pyplot"],
    "compare": ["scipy.stats", "matplotlib.pyplot"],
    "compare_diversity": ["scipy.stats", "matplotlib.pyplot"],
}
DONE = re.compile(r" done in ([0-9.]+) s")


def stage_of(timing: Path) -> str:
    """timings/generate_sft_gsm8k.tsv -> generate (the longest stage name the file starts with)."""
    stem = timing.stem
    return max((s for s in STAGE_IMPORTS if stem == s or stem.startswith(s + "_")), key=len, default=stem)


def job_rows(results: Path) -> list[dict]:
    rows = []
    for timing in sorted((results / "timings").glob("*.tsv")):
        with open(timing) as fh:
            wall = float(next(csv.DictReader(fh, delimiter="\t"))["s"])
        log = results / "logs" / f"{timing.stem}.log"
        found = DONE.findall(log.read_text()) if log.exists() else []
        inside = float(found[-1]) if found else None
        rows.append({"job": timing.stem, "stage": stage_of(timing), "wall_s": wall, "in_stage_s": inside})
    return rows


def import_line(name: str) -> str:
    """"transformers.Trainer" -> "from transformers import Trainer" (a class); "scipy.stats" ->
    "import scipy.stats" (a module)."""
    package, _, last = name.rpartition(".")
    return f"from {package} import {last}" if package and last[0].isupper() else f"import {name}"


def import_seconds(modules: list[str], repeats: int) -> float:
    """Median wall seconds of importing `modules` (a.b means `from a import b`) in a fresh process,
    less the bare interpreter's start-up."""
    lines = [import_line(m) for m in modules]
    code = "import time; t = time.perf_counter()\n" + "\n".join(lines) + "\nprint(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
            for _ in range(repeats)]
    return statistics.median(runs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a finished run's results/<exp> folder")
    p.add_argument("--repeats", type=int, default=3, help="import timings per stage (median)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    jobs = job_rows(Path(args.results))
    if not jobs:
        sys.exit(f"{args.results}/timings: no timing files (a finished run's results/<exp>?)")
    cli = import_seconds(["sedsft.cli"], args.repeats)
    by_stage = defaultdict(list)
    for job in jobs:
        by_stage[job["stage"]].append(job)
    stages = []
    for stage, rows in by_stage.items():
        inside = [r["in_stage_s"] for r in rows if r["in_stage_s"] is not None]
        stages.append({
            "stage": stage, "jobs": len(rows), "wall_s": sum(r["wall_s"] for r in rows),
            "wall_per_job_s": statistics.median(r["wall_s"] for r in rows),
            "outside_stage_per_job_s": statistics.median(r["wall_s"] - r["in_stage_s"] for r in rows
                                                         if r["in_stage_s"] is not None) if inside else None,
            "imports_per_job_s": import_seconds(STAGE_IMPORTS.get(stage, []), args.repeats)
            if STAGE_IMPORTS.get(stage) else 0.0})
    stages.sort(key=lambda s: -s["wall_s"])
    total = sum(s["wall_s"] for s in stages)
    print(f"{'stage':<16}{'jobs':>5}{'wall s':>9}{'share':>7}{'per job':>9}{'outside':>9}{'imports':>9}")
    for s in stages:
        outside = f"{s['outside_stage_per_job_s']:.1f}" if s["outside_stage_per_job_s"] is not None else "-"
        print(f"{s['stage']:<16}{s['jobs']:>5}{s['wall_s']:>9.1f}{100 * s['wall_s'] / total:>6.0f}%"
              f"{s['wall_per_job_s']:>9.1f}{outside:>9}{s['imports_per_job_s']:>9.1f}")
    print(f"sum of job wall times {total:.0f} s; importing sedsft.cli alone {cli:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": args.results, "cli_import_s": cli, "stages": stages,
                                               "jobs": jobs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
