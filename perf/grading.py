"""Grading throughput: answers per second through the `Grader` pool (math-verify in worker processes).

    python perf/grading.py                  # 1500 answers, 2 workers, 3 runs
    python perf/grading.py --answers 5000 --workers 8

The answers are tests/test_grading.py's `typical_batch` (GSM8K/MATH/AIME-like forms, about half
right, most of them in another form than the gold, so they really go through math-verify); the
test suite checks that each one is graded as its label says, and this script measures how fast.
Timed after the workers are warm (math-verify imported, a first small batch graded), each run
on answers of its own seed (the workers cache comparisons they have made). A 2-core
machine with nothing else running grades about 100 answers/s with 2 workers; how fast a loaded
or shared machine is says nothing about the code, which is why no test asserts a rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_grading import typical_batch  # noqa: E402

from sedsft.grading import Grader  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args()

    rates = []
    with Grader(workers=args.workers, timeout_s=args.timeout_s) as grader:
        grader.grade(*typical_batch(40, seed=1)[:2])  # warm
        for run in range(args.runs):
            # other answers each run: the workers cache what they have compared
            comps, golds, labels = typical_batch(args.answers, seed=2 + run)
            started = time.perf_counter()
            grades = grader.grade(comps, golds)
            seconds = time.perf_counter() - started
            wrong = sum(g.correct != label for g, label in zip(grades, labels))
            rates.append(len(comps) / seconds)
            print(f"run {run + 1}: {len(comps)} answers in {seconds:.2f} s = {rates[-1]:.0f} answers/s "
                  f"({args.workers} workers); {wrong} graded otherwise than their label says")
    print(f"median {statistics.median(rates):.0f} answers/s, min {min(rates):.0f}, max {max(rates):.0f}")


if __name__ == "__main__":
    main()
