"""Checks of a finished workflow run's artifacts, for the end-to-end tests to call (each raises
AssertionError naming what is wrong); tests/test_e2e_checks.py checks the checks on made-up
artifacts, including that each one fails where it should.

- assert_diversity_recomputed(stage_dir, golds): diversity.json and diversity_per_prompt.jsonl
  recomputed from diversity_samples.jsonl (the samples themselves), as the eval accuracy is
  recomputed from the graded files.
- diversity_golds(results_dir): the gold answers of the diversity prompts (rl/... and
  <benchmark>/... ids), from the run's RL prompts and benchmark files.
- assert_rl_learned(rl_dir, sft_model, rl_model, reward): GRPO got non-zero rewards from the
  configured reward function, some group had an advantage, and the weights moved.
- assert_sft_telemetry(metrics_file, loss): sft/metrics.jsonl's ce, extra, mask rate and
  token accuracy as the loss implies (SED: some tokens masked and a positive extra term; CE:
  none).
- assert_same_run_up_to_tau(first, second): two runs of the micro experiment's stages up to
  tau, in two folders, made the same bytes (timings and the checkout aside).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

DIVERSITY_SCALARS = ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "semantic_diversity", "distinct_answers",
                     "mean_token_entropy", "accuracy", "mean_length")


def _jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- diversity


def distinct(token_lists: list[list[int]], n: int) -> float:
    grams = [tuple(tokens[i:i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list[str]) -> float:
    """Mean over samples of sacrebleu's sentence BLEU against the other samples (clamped to 100)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return math.fsum(min(100.0, max(0.0, bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score))
                     for i, t in enumerate(texts)) / len(texts)


def answer_classes(answers: list[str | None]) -> int:
    """Distinct boxed answers: each joins the first earlier class its first member is
    math-equivalent to; no box, no class."""
    from sedsft.grading import answers_equivalent

    firsts: list[str] = []
    for answer in answers:
        if answer is not None and not any(answers_equivalent(first, answer) for first in firsts):
            firsts.append(answer)
    return len(firsts)


def pass_at(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def diversity_golds(results_dir: str | Path) -> dict[str, str]:
    """{prompt id: gold answer} for every prompt the diversity stage can pick: rl/<id> from
    data/rl_prompts.parquet, <benchmark>/<id> from data/bench/<benchmark>.parquet."""
    import pandas as pd

    data = Path(results_dir) / "data"
    golds = {f"rl/{row.id}": str(row.answer) for row in pd.read_parquet(data / "rl_prompts.parquet").itertuples()}
    for path in sorted((data / "bench").glob("*.parquet")):
        golds.update({f"{path.stem}/{row.id}": str(row.answer) for row in pd.read_parquet(path).itertuples()})
    return golds


def assert_diversity_recomputed(stage_dir: str | Path, golds: dict[str, str] | None = None) -> None:
    """stage_dir: results/<exp>/<stage>/ with diversity.json, diversity_samples.jsonl and
    diversity_per_prompt.jsonl. Per prompt, from its samples: distinct-1/2/3 (token ids), Self-BLEU
    (texts), distinct answers (boxed answers, math-verify classes), mean token entropy, mean
    length, and -- with golds -- accuracy (each sample graded again) and pass@k; then
    diversity.json's means over prompts, per source group, and its pass@k curve. Semantic
    diversity needs the embedding model: only its mean over prompts and its range are checked."""
    from sedsft.grading import extract_boxed, grade_answer

    stage_dir = Path(stage_dir)
    summary = json.loads((stage_dir / "diversity.json").read_text())
    samples = {record["id"]: record for record in _jsonl(stage_dir / "diversity_samples.jsonl")}
    per_prompt = _jsonl(stage_dir / "diversity_per_prompt.jsonl")
    assert [p["id"] for p in per_prompt] == list(samples), "per-prompt rows and samples are not the same prompts"
    n = summary["samples_per_prompt"]
    for row in per_prompt:
        record, where = samples[row["id"]], f"prompt {row['id']}"
        texts, tokens = record["completions"], record["token_ids"]
        assert len(texts) == len(tokens) == n, f"{where}: {len(texts)} samples, diversity.json says {n}"
        for k in (1, 2, 3):
            assert row[f"distinct_{k}"] == pytest.approx(distinct(tokens, k)), f"{where}: distinct_{k}"
        assert row["self_bleu"] == pytest.approx(self_bleu(texts)), f"{where}: self_bleu"
        assert row["distinct_answers"] == answer_classes([extract_boxed(t) for t in texts]), f"{where}: answers"
        assert row["mean_length"] == pytest.approx(_mean(len(t) for t in tokens)), f"{where}: mean_length"
        entropies = record.get("entropies")
        if entropies is None or any(e is None for e in entropies):
            assert row["mean_token_entropy"] is None, f"{where}: an entropy without per-token entropies"
        else:
            assert [len(e) for e in entropies] == [len(t) for t in tokens], f"{where}: one entropy per token"
            assert all(h >= 0 for e in entropies for h in e), f"{where}: a negative entropy"
            assert row["mean_token_entropy"] == pytest.approx(_mean(h for e in entropies for h in e)), \
                f"{where}: mean_token_entropy"
        correct = round(row["accuracy"] * n)
        assert row["accuracy"] == pytest.approx(correct / n), f"{where}: accuracy is not a count of samples"
        if golds is not None:
            graded = sum(grade_answer(t, golds[row["id"]]).correct for t in texts)
            assert correct == graded, f"{where}: {correct} of {n} counted right, {graded} when graded again"
        assert row["pass_at_k"] == pytest.approx([pass_at(n, correct, k) for k in range(1, n + 1)]), \
            f"{where}: pass@k"
        if row["semantic_diversity"] is not None:
            assert 0 <= row["semantic_diversity"] <= 2, f"{where}: semantic_diversity out of [0, 2]"

    def assert_means(got: dict, rows: list[dict], label: str) -> None:
        for key in DIVERSITY_SCALARS:
            want = _mean(r[key] for r in rows)
            assert got[key] == (pytest.approx(want) if want is not None else None), f"{label}: mean {key}"
        assert got["100_minus_self_bleu"] == pytest.approx(100 - got["self_bleu"]), f"{label}: 100 - self_bleu"
        assert got["prompts"] == len(rows) and got["samples_per_prompt"] == n, f"{label}: counts"
        assert got["pass_at_k"] == pytest.approx({str(k): _mean(r["pass_at_k"][k - 1] for r in rows)
                                                  for k in range(1, n + 1)}), f"{label}: pass@k curve"

    assert_means(summary, per_prompt, "diversity.json")
    groups = {"rl": [r for r in per_prompt if r["source"] == "rl"],
              "benchmarks": [r for r in per_prompt if r["source"] != "rl"]}
    assert set(summary["by_source"]) == {name for name, rows in groups.items() if rows}, "by_source groups"
    for name, got in summary["by_source"].items():
        assert_means(got, groups[name], f"by_source.{name}")
    sources = {r["source"] for r in per_prompt}
    assert summary["prompts_per_source"] == {s: sum(r["source"] == s for r in per_prompt) for s in sources}


# ----------------------------------------------------------------------------- RL


def assert_rl_learned(rl_dir: str | Path, sft_model: str | Path, rl_model: str | Path,
                      reward: str = "math_verify") -> None:
    """rl_dir/train.json's log history: every step logged the configured reward function
    (`rewards/<reward>/mean`, the one reward, so equal to `reward`), some step's mean reward is
    non-zero, some step had a group with a reward spread (frac_reward_zero_std < 1) and then a
    gradient; and the RL weights differ from the SFT weights. reward: math_verify, or
    exact_match_reward (rl.reward: exact_match)."""
    import torch
    from transformers import AutoModelForCausalLM

    history = json.loads((Path(rl_dir) / "train.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert steps, "no step logged a reward"
    for h in steps:
        assert f"rewards/{reward}/mean" in h, f"step {h.get('step')}: no rewards/{reward}/mean (another reward ran)"
        assert h[f"rewards/{reward}/mean"] == pytest.approx(h["reward"]), f"step {h.get('step')}: reward mean"
    assert any(h["reward"] != 0 for h in steps), "every step's mean reward is 0: no completion was ever rewarded"
    spread = [h for h in steps if h["frac_reward_zero_std"] < 1]
    assert spread, "no group ever had a reward spread: every advantage was 0"
    assert any(h["grad_norm"] > 0 for h in spread), "groups with a reward spread but no gradient"
    before = AutoModelForCausalLM.from_pretrained(sft_model, dtype=torch.float32).state_dict()
    after = AutoModelForCausalLM.from_pretrained(rl_model, dtype=torch.float32).state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "GRPO left the SFT weights unchanged"


# ----------------------------------------------------------------------------- SFT


def assert_sft_telemetry(metrics_file: str | Path, loss: str) -> None:
    """Every logging step of sft/metrics.jsonl carries ce, extra, mask_rate, entropy and
    token_accuracy; the logged loss is ce + extra (within 5 %: the loss is a mean over the
    window's steps, the telemetry over its tokens); SED masks some tokens at every step and adds
    a positive extra term, at most a quarter per masked token ((p_y - 1/2)^2 <= 1/4, sed_lambda
    1 assumed); the CE twin masks none and adds nothing."""
    lines = _jsonl(Path(metrics_file))
    steps = [line for line in lines if "loss" in line]
    assert steps, f"{metrics_file}: no logging step"
    for line in steps:
        where = f"{metrics_file} step {line['step']}"
        missing = {"ce", "extra", "mask_rate", "entropy", "token_accuracy"} - set(line)
        assert not missing, f"{where}: no {sorted(missing)}"
        assert line["ce"] > 0 and line["entropy"] > 0 and 0 <= line["token_accuracy"] <= 1, where
        assert line["loss"] == pytest.approx(line["ce"] + line["extra"], rel=0.05), f"{where}: loss != ce + extra"
        if loss == "sed":
            assert 0 < line["mask_rate"] < 1 and line["extra"] > 0, f"{where}: SED masked nothing"
            assert line["extra"] <= 0.25 * line["mask_rate"] + 1e-9, f"{where}: extra above 1/4 per masked token"
        elif loss == "ce":
            assert line["extra"] == 0 and line["mask_rate"] == 0, f"{where}: CE with an extra term"


# ----------------------------------------------------------------------------- determinism

# The Trainer's timings (the base model's pre-training), the provenance's run time, and its
# checkout (which moves when a commit lands between two runs, as on a shared working tree)
VOLATILE_KEYS = {"seconds", "train_runtime", "train_samples_per_second", "train_steps_per_second", "git_revision"}
RUN_SUMMARIES = ("data/tiny/summary.json", "base/summary.json", "data/sft_data.json", "sft/threshold.json")


def without_volatile(value):
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def assert_same_run_up_to_tau(first: str | Path, second: str | Path) -> None:
    """Two runs of the tiny task, the base model, the SFT data and tau in two folders
    (results/<exp> of each), on the same machine and checkout:

    - bit-identical: the tiny task's JSONL files, the base model folder (weights, tokenizer,
      config), sft_train/sft_val.parquet;
    - identical but for timings and the checkout: every JSON summary. Provenance `seconds`
      measures time; provenance `git_revision` names the checkout (commit, "-dirty" with
      uncommitted edits), so it differs between runs of different code. Nothing else differs.

    SFT itself is compared likewise by the kill tests of tests/test_reliability.py (a run
    killed and resumed in another folder ends with the uninterrupted run's model folder, byte
    for byte), and generations are seeded per batch and compared there too. Logs and
    timings/*.tsv hold timings by design. This holds on CPU; GPU kernels (bf16 reductions,
    atomics, vLLM's batching) are not bit-reproducible, and no claim is made there."""
    first, second = Path(first), Path(second)
    bit_identical = [f"data/tiny/{split}.jsonl" for split in ("pretrain", "sft", "rl", "test")]
    bit_identical += ["data/sft_train.parquet", "data/sft_val.parquet"]
    bit_identical += same_folder(first, second, "base/model")
    assert "base/model/model.safetensors" in bit_identical
    for name in bit_identical:
        assert (second / name).read_bytes() == (first / name).read_bytes(), f"{name} differs"
    for name in RUN_SUMMARIES:
        one, two = (json.loads((run / name).read_text()) for run in (first, second))
        assert without_volatile(two) == without_volatile(one), f"{name} differs beyond timings"
        assert one["provenance"]["seconds"] >= 0


def same_folder(first: Path, second: Path, folder: str) -> list[str]:
    """The files of `folder` (relative paths), which both runs must have; their bytes are the
    caller's to compare."""
    names = sorted(p.name for p in (first / folder).iterdir())
    assert names == sorted(p.name for p in (second / folder).iterdir()), f"{folder}: other files"
    return [f"{folder}/{name}" for name in names]
