"""Eval metrics against hand-computed cases, grading files, and resumable generation."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from sedsft.evaluate import benchmark_metrics, grade_file, markdown_table, summarize
from sedsft.generation import SamplingSettings, generate_to_file

ROWS = [
    {"id": "p1", "correct": [True, False, False, True], "extracted": ["3", "5", "5", "3"],
     "status": ["ok"] * 4},
    {"id": "p2", "correct": [False] * 4, "extracted": [None, "2", "2.0", "7"],
     "status": ["no_box", "ok", "ok", "ok"]},
]


def test_benchmark_metrics_hand_computed():
    m = benchmark_metrics(ROWS)
    assert m["accuracy"] == pytest.approx(25.0)  # (2/4 + 0/4) / 2
    assert m["n_problems"] == 2 and m["n_samples"] == 4
    # pass@k = 1 - C(n-c, k)/C(n, k): problem 1 has c=2 of n=4, problem 2 none
    for k in range(1, 5):
        expected = 100 * (1 - math.comb(2, k) / math.comb(4, k)) / 2
        assert m["pass_at_k"][str(k)] == pytest.approx(expected)
    assert m["pass_at_k"]["2"] == pytest.approx(100 * (5 / 6) / 2)
    # maj@4: problem 1 ties 3 vs 5, the first seen (3, correct) wins; problem 2: "2" and "2.0" are
    # one class by math-verify (size 2) and it is wrong
    assert m["maj_at_n"] == pytest.approx(50.0)
    assert m["stderr"] == pytest.approx(100 * math.sqrt(((0.5 - 0.25) ** 2 + (0 - 0.25) ** 2) / 1) / math.sqrt(2))
    assert m["no_box"] == 1 and m["unparsable"] == 0 and m["timeouts"] == 0


def test_maj_uses_math_equivalence_not_strings():
    rows = [{"id": "q", "correct": [False, True, True], "extracted": ["4", "0.5", "\\frac{1}{2}"],
             "status": ["ok"] * 3}]
    assert benchmark_metrics(rows)["maj_at_n"] == 100.0
    assert benchmark_metrics(rows, equivalent=lambda a, b: a == b)["maj_at_n"] == 0.0  # first-seen "4"


def test_benchmark_metrics_cut_every_problem_to_the_smallest_sample_count():
    """A problem with more samples than another (a file written under other sampling, say) is
    scored on its first n only, n the smallest count: every metric and count sees the same n."""
    rows = [
        {"id": "a", "correct": [True, False, True, True], "extracted": ["1", "2", "1", "1"],
         "status": ["ok", "ok", "ok", "ok"]},
        {"id": "b", "correct": [False, True], "extracted": [None, "5"], "status": ["no_box", "ok"]},
        {"id": "c", "correct": [True, True, False], "extracted": ["7", "7", None],
         "status": ["ok", "ok", "timeout"]},
    ]
    m = benchmark_metrics(rows, equivalent=lambda x, y: x == y)
    assert m["n_samples"] == 2 and m["n_problems"] == 3
    assert m["accuracy"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1) / 3)  # not a's 3/4, nor c's 2/3
    assert set(m["pass_at_k"]) == {"1", "2"}
    assert m["pass_at_k"]["2"] == pytest.approx(100.0)  # every problem has a right one in its first two
    assert m["pass_at_k"]["1"] == pytest.approx(m["accuracy"])
    # maj@2: a's "1" vs "2" tie, the first ("1", right) wins; b's only answer "5" is right; c's "7"
    assert m["maj_at_n"] == pytest.approx(100.0)
    # the cut-off samples' statuses are not counted (c's timeout is its third sample)
    assert (m["no_box"], m["timeouts"], m["unparsable"]) == (1, 0, 0)
    per_problem = [0.5, 0.5, 1.0]
    assert m["stderr"] == pytest.approx(100 * math.sqrt(sum((p - 2 / 3) ** 2 for p in per_problem) / 2) / math.sqrt(3))


def test_markdown_table_with_the_sft_baseline_row():
    """The RL report puts the SFT model's scores above its own (`--baseline`), a benchmark one
    of them lacks shown as "-", and the detail table below holds the RL model's numbers only."""
    def result(accuracies, average):
        return {"benchmarks": {name: {"accuracy": acc, "n_problems": 4, "n_samples": 2, "stderr": 1.25,
                                      "pass_at_k": {"1": acc, "2": acc + 10}, "maj_at_n": acc - 5, "no_box": 1}
                               for name, acc in accuracies.items()},
                "average": average, "average_over": [n for n in accuracies if n != "tiny"]}

    rl = result({"gsm8k": 37.5, "math500": 12.25, "tiny": 80.0}, 24.875)
    sft = result({"gsm8k": 25.0, "tiny": 60.0}, 25.0)
    lines = markdown_table(rl, "rl", baseline=sft).splitlines()
    assert lines[:4] == ["| model | gsm8k | math500 | tiny | avg (2) |", "|---|---|---|---|---|",
                         "| sft | 25.00 | - | 60.00 | 25.00 |", "| rl | 37.50 | 12.25 | 80.00 | 24.88 |"]
    detail = lines[lines.index("| benchmark | problems | samples | acc | ± se | pass@n | maj@n | no box |") + 2:]
    assert detail == ["| gsm8k | 4 | 2 | 37.50 | 1.25 | 47.50 | 32.50 | 1 |",
                      "| math500 | 4 | 2 | 12.25 | 1.25 | 22.25 | 7.25 | 1 |",
                      "| tiny | 4 | 2 | 80.00 | 1.25 | 90.00 | 75.00 | 1 |"]
    assert "| sft |" not in markdown_table(rl, "rl")  # no baseline, no row
    assert markdown_table({**sft, "average": None}, "sft").splitlines()[2] == "| sft | 25.00 | 60.00 | - |"


def _write_bench(path, rows):
    pd.DataFrame(rows, columns=["id", "problem", "answer"]).to_parquet(path, index=False)


def test_grade_file_and_summary(tmp_path):
    _write_bench(tmp_path / "b.parquet", [{"id": "1", "problem": "x", "answer": "025"},
                                          {"id": "2", "problem": "y", "answer": "\\frac{1}{2}"}])
    with open(tmp_path / "b.jsonl", "w") as fh:
        fh.write(json.dumps({"id": "1", "completions": ["so \\boxed{25}", "\\boxed{24}"]}) + "\n")
        fh.write(json.dumps({"id": "2", "completions": ["\\boxed{0.5}", "no box here"]}) + "\n")
    grade_file(str(tmp_path / "b.jsonl"), str(tmp_path / "b.parquet"), str(tmp_path / "b.graded.jsonl"),
               workers=1, timeout_s=5)
    graded = [json.loads(line) for line in open(tmp_path / "b.graded.jsonl")]
    assert [g["correct"] for g in graded] == [[True, False], [True, False]]
    assert graded[1]["status"] == ["ok", "no_box"]
    (tmp_path / "b.gen.json").write_text(json.dumps({"sampling": {"n": 2}, "backend": "hf"}))
    (tmp_path / "b.bench.json").write_text(json.dumps({"skipped": [{"id": "x", "reason": "empty answer"}]}))
    result = summarize({"gsm8k": str(tmp_path / "b.graded.jsonl")}, {"gsm8k": str(tmp_path / "b.gen.json")},
                       {"gsm8k": str(tmp_path / "b.bench.json")}, "model")
    assert result["benchmarks"]["gsm8k"]["accuracy"] == 50.0
    assert result["benchmarks"]["gsm8k"]["skipped_rows"] == 1
    assert result["average"] == 50.0 and result["average_over"] == ["gsm8k"]
    assert "| gsm8k | 2 | 2 | 50.00 |" in markdown_table(result, "sft")


def test_hostile_generations_are_graded_and_reported_in_bounded_time(tmp_path, monkeypatch):
    """The cases of test_grading.HOSTILE_OUTPUTS as one problem's samples in a generations file
    (plus raw non-UTF-8 bytes in the file itself): each graded 0, or 1 where the last box is
    right, and the report (maj@n compares the extracted answers) still comes out, its failure
    counts those of the graded file. The pool grades the set once for the session
    (test_grading.hostile_graded_once); here grade_file hands every sample to its grader with
    its problem's gold and writes the grades back per problem, in order."""
    import time

    import sedsft.grading
    from test_grading import HOSTILE_COMPLETIONS, HOSTILE_LABELS, GradedOnce

    _write_bench(tmp_path / "b.parquet", [{"id": "1", "problem": "x", "answer": "42"},
                                          {"id": "2", "problem": "y", "answer": "42"}])
    texts = HOSTILE_COMPLETIONS[:-1]
    with open(tmp_path / "b.jsonl", "wb") as fh:
        fh.write(json.dumps({"id": "1", "completions": texts}).encode() + b"\n")
        fh.write(b'{"id": "2", "completions": ["\xff\xfe \\\\boxed{42}"]}\n')  # not UTF-8
    monkeypatch.setattr(sedsft.grading, "Grader", GradedOnce)
    GradedOnce.asked.clear()
    started = time.perf_counter()
    grade_file(str(tmp_path / "b.jsonl"), str(tmp_path / "b.parquet"), str(tmp_path / "b.graded.jsonl"),
               workers=2, timeout_s=1)
    assert GradedOnce.asked == [(texts + ["\ufffd\ufffd \\boxed{42}"], ["42"] * (len(texts) + 1), 1)]
    graded = [json.loads(line) for line in open(tmp_path / "b.graded.jsonl")]
    assert graded[0]["correct"] == HOSTILE_LABELS[:-1]
    assert graded[1] == {"id": "2", "answer": "42", "correct": [True], "extracted": ["42"], "status": ["ok"]}
    metrics = benchmark_metrics(graded[:1])
    assert metrics["accuracy"] == pytest.approx(100 * sum(HOSTILE_LABELS[:-1]) / len(texts))
    statuses = graded[0]["status"]
    assert metrics["no_box"] == statuses.count("no_box") == 3  # no box, "The answer is 42.", 200k unclosed
    assert metrics["timeouts"] == statuses.count("timeout")  # as many as this machine's speed gave
    assert metrics["unparsable"] == statuses.count("unparsable") + statuses.count("error")
    assert metrics["no_box"] + metrics["unparsable"] + metrics["timeouts"] + statuses.count("ok") == len(texts)
    assert metrics["maj_at_n"] == 100.0  # the four right samples' "42" is the largest answer class
    assert time.perf_counter() - started < 60


def test_grade_file_refuses_missing_generations(tmp_path):
    from sedsft.sources import DataError

    _write_bench(tmp_path / "b.parquet", [{"id": "1", "problem": "x", "answer": "1"},
                                          {"id": "2", "problem": "y", "answer": "2"}])
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "1", "completions": ["\\boxed{1}"]}) + "\n")
    with pytest.raises(DataError, match="no generations for 1 problems"):
        grade_file(str(tmp_path / "b.jsonl"), str(tmp_path / "b.parquet"), str(tmp_path / "g.jsonl"),
                   workers=1, timeout_s=5)


def _killed_after(records: int, monkeypatch):
    """Make HF generation die (like a kill) once `records` prompts' lines are written."""
    import sedsft.generation as generation

    real = generation._generate_hf

    def dying(*args, **kwargs):
        for i, record in enumerate(real(*args, **kwargs)):
            if i == records:
                raise KeyboardInterrupt("killed")
            yield record

    monkeypatch.setattr(generation, "_generate_hf", dying)


def test_generation_resumes_where_it_stopped(tiny_model, tmp_path, monkeypatch):
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(6)]
    sampling = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=3)
    whole = tmp_path / "whole.jsonl"
    # batch_size counts sequences: 4 = two prompts x two samples per batch, three batches
    summary = generate_to_file(tiny_model, prompts, str(whole), sampling, batch_size=4)
    assert summary["resumed_prompts"] == 0 and summary["backend"] == "hf"
    lines = whole.read_text().splitlines()
    assert len(lines) == 6 and all(len(json.loads(line)["completions"]) == 2 for line in lines)

    # a run killed after three prompts (the first batch and half the second), in the middle of
    # writing the fourth line
    resumed = tmp_path / "resumed.jsonl"
    partial = tmp_path / "resumed.jsonl.partial"
    with monkeypatch.context() as patch:
        _killed_after(3, patch)
        with pytest.raises(KeyboardInterrupt):
            generate_to_file(tiny_model, prompts, str(resumed), sampling, batch_size=4)
    assert not resumed.exists() and partial.read_text().splitlines() == lines[:3]
    partial.write_text(partial.read_text() + lines[3][:20])
    summary = generate_to_file(tiny_model, prompts, str(resumed), sampling, batch_size=4)
    # only whole batches are kept: the second is generated again, with its own seed and padding
    assert summary["resumed_prompts"] == 2
    # seeded per batch: the resumed file equals the uninterrupted one
    assert resumed.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not (tmp_path / "resumed.jsonl.partial.json").exists()


def test_a_partial_file_of_other_settings_is_not_resumed(tiny_model, tmp_path, monkeypatch):
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(3)]
    sampling = SamplingSettings(n=1, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=3)
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as patch:
        _killed_after(2, patch)
        with pytest.raises(KeyboardInterrupt):
            generate_to_file(tiny_model, prompts, str(out), sampling, batch_size=1)
    other = SamplingSettings(n=1, temperature=0.5, top_p=1.0, max_new_tokens=4, seed=3)
    assert generate_to_file(tiny_model, prompts, str(out), other, batch_size=1)["resumed_prompts"] == 0
    fresh = tmp_path / "fresh.jsonl"
    generate_to_file(tiny_model, prompts, str(fresh), other, batch_size=1)
    assert out.read_bytes() == fresh.read_bytes()
