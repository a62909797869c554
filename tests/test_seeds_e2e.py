"""Two seeds of two micro experiments through the aggregate (results/{exp}/seeds.json) and the
comparison (results/compare/{name}.md), in a copy of the session's micro run (tests/micro_run.py),
whose data, base model and tau the four seed runs reuse. Every number is checked against a
computation of its own from the graded files: textbook t intervals and an exact enumeration of
the sign-flip permutations.

The micro model answers nothing right, and statistics of zeros cannot tell a right computation
from a wrong one: after the run, the tiny benchmark's grades are redrawn (seeded, per run, stage,
problem and sample), and the workflow runs again from the graded files on, as it does after a
re-grade."""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil

import pytest
import yaml

from micro_run import EXP, MICRO
from workflow_helpers import planned_jobs, snakemake

pytestmark = pytest.mark.slow

SEEDS = [42, 43]
A, B = "micro_seeds", "micro_seeds_ce"
T_975_DF1 = 12.706204736174707  # the 97.5 % quantile of t with 1 degree of freedom (tables)
# the tiny task's test set only: eight benchmarks' jobs four times over would double the suite
EXPERIMENTS = {
    EXP: MICRO,
    A: {"extends": EXP, "seeds": SEEDS, "eval": {"benchmarks": []}, "diversity": {"benchmarks": ["tiny"]}},
    B: {"extends": A, "sft": {"loss": "ce"}},
}
TARGETS = (f"results/compare/{A}.md", f"results/{A}/seeds.json", f"results/compare/sft_diversity/{A}.md")


def overlay(path, experiments=EXPERIMENTS):
    path.write_text(yaml.safe_dump({"experiments": experiments, "comparisons": {A: [A, B]}}))
    return path


@pytest.fixture(scope="module")
def seeds_run(micro_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seeds")
    shutil.copytree(micro_run.results, workdir / "results" / EXP)
    config = overlay(workdir / "seeds.yaml")
    snakemake(workdir, "--cores", "2", *TARGETS, configfiles=[config])
    for exp in (A, B):
        for run in runs(exp).values():
            for stage in ("sft", "rl"):
                redraw_grades(workdir / "results" / run / "eval" / stage / "tiny.graded.jsonl", f"{run}/{stage}")
    again = snakemake(workdir, "--cores", "2", *TARGETS, configfiles=[config])
    assert "eval_report" in again.stdout + again.stderr  # the reports, aggregate and comparison again
    return workdir, config


def redraw_grades(path, key):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        rng = random.Random(f"{key}/{i}")
        row["correct"] = [rng.random() < 0.5 for _ in row["correct"]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def runs(exp):
    return {42: exp, 43: f"{exp}.seed43"}


def graded_accuracy(workdir, run, stage, bench):
    """problem id -> the list of its samples' grades."""
    with open(workdir / "results" / run / "eval" / stage / f"{bench}.graded.jsonl") as fh:
        return {row["id"]: row["correct"] for row in map(json.loads, fh)}


def accuracy(workdir, run, stage, bench):
    rows = graded_accuracy(workdir, run, stage, bench).values()
    return 100 * sum(sum(c) / len(c) for c in rows) / len(rows)


def t_interval(values):
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = T_975_DF1 * sd / math.sqrt(len(values))
    return mean, sd, [mean - half, mean + half]


def test_seed_runs_reuse_what_the_seed_does_not_change(seeds_run):
    workdir, _ = seeds_run
    for exp in (A, B):
        for run in runs(exp).values():
            folder = workdir / "results" / run
            assert (folder / "rl_eval.json").is_file() and (folder / "sft" / "model").is_dir()
            # one tiny task, base model, tau and data prep: the micro run's
            assert not (folder / "base").exists() and not (folder / "data").exists()
            assert not (folder / "sft" / "threshold.json").exists()
    sft_42 = json.loads((workdir / "results" / A / "sft" / "train.json").read_text())
    sft_43 = json.loads((workdir / "results" / f"{A}.seed43" / "sft" / "train.json").read_text())
    assert sft_42["provenance"]["seed"] == 42 and sft_43["provenance"]["seed"] == 43
    assert sft_42["provenance"]["settings"]["sft"] == sft_43["provenance"]["settings"]["sft"]


def test_the_aggregate_is_the_graded_files_over_seeds(seeds_run):
    workdir, _ = seeds_run
    summary = json.loads((workdir / "results" / A / "seeds.json").read_text())
    assert summary["seeds"] == SEEDS
    for stage in ("sft", "rl"):
        for bench in ("tiny",):
            values = [accuracy(workdir, run, stage, bench) for run in runs(A).values()]
            row = summary[stage][bench]
            assert row["values"] == pytest.approx(values)
            mean, sd, ci = t_interval(values)
            assert row["mean"] == pytest.approx(mean) and row["sd"] == pytest.approx(sd)
            assert row["ci95"] == pytest.approx(ci)
        assert set(summary[stage]) == {"tiny"}  # no benchmark of the eight, so no mean of them
    rl_minus_sft = [accuracy(workdir, run, "rl", "tiny") - accuracy(workdir, run, "sft", "tiny") for run in runs(A).values()]
    assert summary["rl_minus_sft"]["tiny"]["difference"] == pytest.approx(sum(rl_minus_sft) / 2)
    assert summary["rl_minus_sft"]["tiny"]["test"] == "paired t-test over seeds"
    assert set(summary["diversity"]) >= {"distinct_1", "self_bleu", "pass@1"}
    assert "## RL − SFT" in (workdir / "results" / A / "seeds.md").read_text()
    assert (workdir / "results" / A / "seeds.png").stat().st_size > 1000


def test_the_comparison_tests_the_difference_over_seeds_and_over_problems(seeds_run):
    workdir, _ = seeds_run
    summary = json.loads((workdir / "results" / "compare" / f"{A}.json").read_text())["over_seeds"]
    assert summary["reference"] == A and summary["seeds"] == {A: SEEDS, B: SEEDS}
    for stage in ("sft", "rl"):
        result = summary["differences"][B][stage]["tiny"]
        per_seed = [accuracy(workdir, a, stage, "tiny") - accuracy(workdir, b, stage, "tiny")
                    for a, b in zip(runs(A).values(), runs(B).values())]
        assert result["over_seeds"]["difference"] == pytest.approx(sum(per_seed) / 2)
        assert result["over_seeds"]["test"] == "paired t-test over seeds"
        # over problems: each problem's samples of both seeds pooled, A minus B, mean over problems
        pooled = {}
        for exp in (A, B):
            for run in runs(exp).values():
                for problem, correct in graded_accuracy(workdir, run, stage, "tiny").items():
                    pooled.setdefault((exp, problem), []).extend(correct)
        problems = sorted({p for _, p in pooled})
        d = [100 * (sum(pooled[A, p]) / len(pooled[A, p]) - sum(pooled[B, p]) / len(pooled[B, p])) / len(problems)
             for p in problems]
        assert result["over_problems"]["difference"] == pytest.approx(sum(d))
        assert result["over_problems"]["n_problems"] == len(problems)
        flips = [sum(s * x for s, x in zip(signs, d)) for signs in itertools.product((1, -1), repeat=len(d))]
        exact = sum(abs(f) >= abs(sum(d)) - 1e-9 for f in flips) / len(flips)
        assert result["over_problems"]["p"] == pytest.approx(1.0 if all(x == 0 for x in d) else exact)
    table = (workdir / "results" / "compare" / f"{A}.md").read_text()
    assert "## Over seeds" in table and f"{A} − {B} after SFT, on the tiny test set" in table
    assert "paired t-test over seeds" in table and "paired permutation test over problems" in table
    assert any(summary["differences"][B][stage]["tiny"]["over_problems"]["p"] < 1 for stage in ("sft", "rl"))
    assert (workdir / "results" / "compare" / f"{A}_seeds.png").stat().st_size > 1000


def diversity_metric(workdir, run, key):
    summary = json.loads((workdir / "results" / run / "sft" / "diversity.json").read_text())
    return summary["pass_at_k"]["1"] if key == "pass@1" else summary[key]


def test_the_sft_diversity_comparison_is_the_diversity_files_over_seeds(seeds_run):
    workdir, _ = seeds_run
    summary = json.loads((workdir / "results" / "compare" / "sft_diversity" / f"{A}.json").read_text())
    assert summary["reference"] == A and summary["seeds"] == {A: SEEDS, B: SEEDS}
    checked = 0
    for key in ("distinct_1", "distinct_3", "self_bleu", "mean_token_entropy", "pass@1"):
        if key not in summary["differences"][B]:
            continue
        a = [diversity_metric(workdir, run, key) for run in runs(A).values()]
        b = [diversity_metric(workdir, run, key) for run in runs(B).values()]
        mean, sd, ci = t_interval(a)
        row = summary["aggregate"][A][key]
        assert row["values"] == pytest.approx(a) and row["mean"] == pytest.approx(mean)
        assert row["ci95"] == pytest.approx(ci)
        d = [x - y for x, y in zip(a, b)]
        result = summary["differences"][B][key]
        assert result["difference"] == pytest.approx(sum(d) / 2) and result["test"] == "paired t-test over seeds"
        if d[0] != d[1]:
            # t with one degree of freedom is Cauchy: p = 1 - (2 / pi) atan|t|
            d_mean, d_sd, d_ci = t_interval(d)
            t = d_mean / (d_sd / math.sqrt(2))
            assert result["p"] == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)))
            assert result["ci95"] == pytest.approx(d_ci)
            checked += 1
    assert checked >= 3
    table = (workdir / "results" / "compare" / "sft_diversity" / f"{A}.md").read_text()
    assert f"## {A} − {B}" in table and "paired t-test over seeds" in table
    assert (workdir / "results" / "compare" / "sft_diversity" / f"{A}.png").stat().st_size > 1000


def test_a_new_seed_runs_only_what_it_lacks(seeds_run):
    workdir, config = seeds_run
    again = snakemake(workdir, "-n", *TARGETS, configfiles=[config])
    assert planned_jobs(again.stdout + again.stderr) == {}
    more = {**EXPERIMENTS, A: {**EXPERIMENTS[A], "seeds": SEEDS + [44]}}
    plan = planned_jobs(snakemake(workdir, "-n", *TARGETS, configfiles=[overlay(workdir / "more.yaml", more)]).stdout)
    # seed 44 of both experiments: their training and evaluation, then the aggregate and comparison again
    assert plan["sft"] == plan["rl"] == plan["diversity"] == 2 and plan["seeds"] == plan["compare"] == 1
    assert not {"tiny_task", "base_model", "threshold", "sft_data", "rl_prompts", "benchmark_data"} & set(plan)
