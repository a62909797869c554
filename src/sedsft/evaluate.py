"""Grading generations and summarizing them into the eval result (`sft_eval.json`, `rl_eval.json`)."""

from __future__ import annotations

import json
from pathlib import Path

from sedsft.artifacts import write_jsonl, write_text
from sedsft.benchmarks import BENCHMARKS
from sedsft.sources import DataError
from sedsft.metrics import majority_correct, mean, pass_at_k, standard_error


def grade_file(generations: str, benchmark: str, out: str, *, workers: int, timeout_s: float) -> dict:
    """Grade every sample against the gold answer; one JSONL line per problem."""
    import pandas as pd

    from sedsft.generation import read_generations
    from sedsft.grading import Grader

    problems = pd.read_parquet(benchmark).to_dict("records")
    generated = read_generations(generations)
    missing = [p["id"] for p in problems if p["id"] not in generated]
    if missing:
        raise DataError(f"{generations}: no generations for {len(missing)} problems (e.g. {missing[0]})")
    completions, golds = [], []
    for problem in problems:
        for text in generated[problem["id"]]["completions"]:
            completions.append(text)
            golds.append(problem["answer"])
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        grades = iter(grader.grade(completions, golds, progress=f"grade {Path(generations).name}"))

    def rows():
        for problem in problems:
            samples = [next(grades) for _ in generated[problem["id"]]["completions"]]
            yield {
                "id": problem["id"],
                "answer": problem["answer"],
                "correct": [g.correct for g in samples],
                "extracted": [g.extracted for g in samples],
                "status": [g.status for g in samples],
            }

    write_jsonl(out, rows())
    return {"graded": len(completions)}


def benchmark_metrics(graded_rows: list[dict], equivalent=None) -> dict:
    """avg@n accuracy, unbiased pass@k for every k <= n, maj@n (answers grouped by `equivalent`,
    math-verify equality by default), standard error over problems, failure counts."""
    if equivalent is None:
        from sedsft.grading import answers_equivalent as equivalent
    n = min(len(r["correct"]) for r in graded_rows)
    per_problem = [mean(r["correct"][:n]) for r in graded_rows]
    statuses = [s for r in graded_rows for s in r["status"][:n]]
    return {
        "accuracy": 100 * mean(per_problem),
        "stderr": 100 * standard_error(per_problem),
        "n_problems": len(graded_rows),
        "n_samples": n,
        "pass_at_k": {str(k): 100 * mean([pass_at_k(n, sum(r["correct"][:n]), k) for r in graded_rows])
                      for k in range(1, n + 1)},
        "maj_at_n": 100 * mean([majority_correct(r["extracted"][:n], r["correct"][:n], equivalent)
                                for r in graded_rows]),
        "no_box": statuses.count("no_box"),
        "unparsable": sum(s in ("unparsable", "error") for s in statuses),
        "timeouts": statuses.count("timeout"),
    }


def summarize(graded_files: dict[str, str], generation_meta: dict[str, str], bench_meta: dict[str, str],
              model_dir: str) -> dict:
    """The eval result: per-benchmark metrics and the plain mean over the eight benchmarks."""
    benchmarks = {}
    for name, path in graded_files.items():
        with open(path) as fh:
            rows = [json.loads(line) for line in fh]
        with open(generation_meta[name]) as fh:
            generation = json.load(fh)
        with open(bench_meta[name]) as fh:
            skipped = json.load(fh)["skipped"]
        benchmarks[name] = {**benchmark_metrics(rows), "skipped_rows": len(skipped),
                            "sampling": generation["sampling"], "backend": generation["backend"]}
    headline = [b for b in BENCHMARKS if b in benchmarks]
    return {
        "model": model_dir,
        "benchmarks": benchmarks,
        "average": mean([benchmarks[b]["accuracy"] for b in headline]) if headline else None,
        "average_over": headline,
    }


def markdown_table(result: dict, title: str, baseline: dict | None = None) -> str:
    """A paper-style table (one row per model, the mean of the eight last), then per-benchmark detail."""
    names = list(result["benchmarks"])

    def row(label, res):
        cells = [f"{res['benchmarks'][n]['accuracy']:.2f}" if n in res["benchmarks"] else "-" for n in names]
        average = "-" if res["average"] is None else f"{res['average']:.2f}"
        return f"| {label} | " + " | ".join(cells) + f" | {average} |"

    # the mean over the paper's benchmarks this experiment evaluates (not the tiny task's own)
    lines = ["| model | " + " | ".join(names) + f" | avg ({len(result['average_over'])}) |",
             "|" + "---|" * (len(names) + 2)]
    if baseline is not None:
        lines.append(row("sft", baseline))
    lines.append(row(title, result))
    lines += ["", "| benchmark | problems | samples | acc | ± se | pass@n | maj@n | no box |", "|---" * 8 + "|"]
    for n in names:
        b = result["benchmarks"][n]
        lines.append(f"| {n} | {b['n_problems']} | {b['n_samples']} | {b['accuracy']:.2f} | {b['stderr']:.2f} "
                     f"| {b['pass_at_k'][str(b['n_samples'])]:.2f} | {b['maj_at_n']:.2f} | {b['no_box']} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the grade and eval_report stages


def grade_arguments(parser) -> None:
    parser.add_argument("--generations", required=True, help="<bench>.jsonl (written by generate): the samples")
    parser.add_argument("--benchmark", required=True,
                        help="<bench>.parquet (written by benchmark_data): the gold answers")
    parser.add_argument("--out", required=True, help="<bench>.graded.jsonl this stage writes: one line per problem")


def run_grade(args, settings: dict) -> dict:
    return grade_file(args.generations, args.benchmark, args.out, workers=settings["eval"]["grading_workers"],
                      timeout_s=settings["eval"]["grading_timeout_s"])


def eval_report_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the model evaluated (recorded in the result)")
    parser.add_argument("--label", required=True, help="the model's row in the table: base, sft or rl")
    parser.add_argument("--graded", nargs="+", required=True, metavar="BENCH=PATH",
                        help="each benchmark's <bench>.graded.jsonl (written by grade)")
    parser.add_argument("--generation-meta", nargs="+", required=True, metavar="BENCH=PATH",
                        help="each benchmark's <bench>.generation.json (written by generate): sampling, backend")
    parser.add_argument("--bench-meta", nargs="+", required=True, metavar="BENCH=PATH",
                        help="each benchmark's <bench>.json (written by benchmark_data): the skipped rows")
    parser.add_argument("--out-md", required=True, help="<stage>_eval.md this stage writes: the table")
    parser.add_argument("--diversity", help="the SFT model's diversity.json (written by diversity), carried into "
                                            "the RL result")
    parser.add_argument("--baseline", help="sft_eval.json (written by eval_report for sft): the SFT row of the "
                                           "RL table")


def run_eval_report(args, settings: dict) -> dict:
    def pairs(values):
        return dict(v.split("=", 1) for v in values)

    result = summarize(pairs(args.graded), pairs(args.generation_meta), pairs(args.bench_meta), args.model)
    if args.diversity:
        with open(args.diversity) as fh:
            diversity = json.load(fh)
        result["sft_diversity"] = {k: v for k, v in diversity.items() if k not in ("provenance", "generation")}
    baseline = None
    if args.baseline:
        with open(args.baseline) as fh:
            baseline = json.load(fh)
        result["sft_baseline"] = {"average": baseline["average"],
                                  "accuracy": {b: v["accuracy"] for b, v in baseline["benchmarks"].items()}}
    table = markdown_table(result, args.label, baseline)
    write_text(args.out_md, f"# {args.experiment}: {args.label}\n\n" + table)
    return result
