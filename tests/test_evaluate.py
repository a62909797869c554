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


def test_hostile_generations_are_graded_and_reported_in_bounded_time(tmp_path):
    """The cases of test_grading.HOSTILE_OUTPUTS as one problem's samples in a generations file
    (plus raw non-UTF-8 bytes in the file itself): each graded 0, or 1 where the last box is
    right, and the report (maj@n compares the extracted answers) still comes out."""
    import time

    from test_grading import HOSTILE_OUTPUTS

    _write_bench(tmp_path / "b.parquet", [{"id": "1", "problem": "x", "answer": "42"},
                                          {"id": "2", "problem": "y", "answer": "42"}])
    texts = [text for text, _ in HOSTILE_OUTPUTS.values()]
    with open(tmp_path / "b.jsonl", "wb") as fh:
        fh.write(json.dumps({"id": "1", "completions": texts}).encode() + b"\n")
        fh.write(b'{"id": "2", "completions": ["\xff\xfe \\\\boxed{42}"]}\n')  # not UTF-8
    started = time.perf_counter()
    grade_file(str(tmp_path / "b.jsonl"), str(tmp_path / "b.parquet"), str(tmp_path / "b.graded.jsonl"),
               workers=2, timeout_s=1)
    graded = [json.loads(line) for line in open(tmp_path / "b.graded.jsonl")]
    assert graded[0]["correct"] == [right for _, right in HOSTILE_OUTPUTS.values()]
    assert graded[1]["correct"] == [True]
    metrics = benchmark_metrics(graded[:1])
    assert metrics["accuracy"] == pytest.approx(100 * 4 / len(texts)) and metrics["timeouts"] == 1
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
