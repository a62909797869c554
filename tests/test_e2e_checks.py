"""The end-to-end checks of tests/e2e_checks.py on made-up artifacts: each passes on consistent
ones and fails on the break it is there to catch."""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest

import shutil

from e2e_checks import (RUN_SUMMARIES, assert_diversity_recomputed, assert_rl_learned, assert_same_run_up_to_tau,
                        assert_sft_telemetry, diversity_golds)

# ----------------------------------------------------------------------------- diversity

GOLDS = {"rl/0": "7", "rl/1": "12", "tiny/3": "5", "gsm8k/9": "18"}


def fake_samples(seed: int = 0) -> dict[str, dict]:
    rng = random.Random(seed)
    samples = {}
    for prompt_id, gold in GOLDS.items():
        texts = [rng.choice([f"so \\boxed{{{gold}}}", f"it is \\boxed{{{int(gold) + 1}}}.", "no idea",
                             f"\\boxed{{{gold}.0}} done"]) + " " * j for j in range(4)]
        tokens = [[rng.randrange(50) for _ in range(rng.randint(2, 9))] for _ in texts]
        samples[prompt_id] = {"id": prompt_id, "completions": texts, "token_ids": tokens,
                              "finished": [True] * 4, "entropies": [[round(rng.random(), 5) for _ in t] for t in tokens]}
    return samples


@pytest.fixture
def diversity_stage(tmp_path, monkeypatch):
    """A stage folder written the way `sedsft diversity` writes it, from sedsft.diversity.measure
    on made-up samples (grading in-process, a made-up embedder)."""
    import sedsft.grading
    from sedsft.diversity import measure
    from test_grading import GradedOnce

    monkeypatch.setattr(sedsft.grading, "Grader", GradedOnce)
    samples = fake_samples()
    prompts = [{"id": i, "source": i.split("/")[0], "answer": gold} for i, gold in GOLDS.items()]

    def embed(texts):
        return [[len(t) % 3 + 0.5, t.count("boxed") + 0.1, 1.0] for t in texts]

    result, per_prompt = measure(samples, prompts, embed=embed)
    summary = {"model": "m", **result, "prompts_per_source": {"rl": 2, "tiny": 1, "gsm8k": 1}}
    (tmp_path / "diversity.json").write_text(json.dumps(summary))
    (tmp_path / "diversity_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples.values()))
    (tmp_path / "diversity_per_prompt.jsonl").write_text("".join(json.dumps(p) + "\n" for p in per_prompt))
    return tmp_path


def rewrite(path, change):
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        change(rows)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))


def test_the_diversity_check_passes_on_what_measure_wrote(diversity_stage):
    assert_diversity_recomputed(diversity_stage, GOLDS)
    assert_diversity_recomputed(diversity_stage)  # without golds: all but the regrading


@pytest.mark.parametrize("file, change, message", [
    ("diversity_per_prompt.jsonl", lambda rows: rows[1].update(distinct_2=rows[1]["distinct_2"] + 0.01), "distinct_2"),
    ("diversity_per_prompt.jsonl", lambda rows: rows[0].update(self_bleu=rows[0]["self_bleu"] / 2 + 1), "self_bleu"),
    ("diversity_per_prompt.jsonl", lambda rows: rows[2].update(distinct_answers=rows[2]["distinct_answers"] + 1),
     "answers"),
    ("diversity_samples.jsonl", lambda rows: rows[3]["entropies"][0].append(0.5), "one entropy per token"),
    ("diversity.json", lambda d: d.update(distinct_1=d["distinct_1"] + 0.001), "mean distinct_1"),
    ("diversity.json", lambda d: d["by_source"]["benchmarks"].update(accuracy=0.99), "by_source.benchmarks"),
    ("diversity.json", lambda d: d["pass_at_k"].update({"4": 0.0}), "pass@k curve"),
])
def test_the_diversity_check_fails_where_a_value_is_not_its_samples(diversity_stage, file, change, message):
    rewrite(diversity_stage / file, change)
    with pytest.raises(AssertionError, match=message):
        assert_diversity_recomputed(diversity_stage, GOLDS)


def test_the_diversity_check_regrades_the_samples(diversity_stage):
    """A prompt's accuracy (and pass@k with it) that is not its samples' grades."""
    def one_more_right(rows):
        n = len(rows[0]["pass_at_k"])
        c = round(rows[0]["accuracy"] * n) + (1 if rows[0]["accuracy"] < 1 else -1)
        rows[0]["accuracy"] = c / n
        rows[0]["pass_at_k"] = [1 - math.comb(n - c, k) / math.comb(n, k) for k in range(1, n + 1)]

    rewrite(diversity_stage / "diversity_per_prompt.jsonl", one_more_right)
    with pytest.raises(AssertionError, match="when graded again"):
        assert_diversity_recomputed(diversity_stage, GOLDS)


def test_diversity_golds_reads_the_rl_prompts_and_benchmarks(tmp_path):
    (tmp_path / "data" / "bench").mkdir(parents=True)
    pd.DataFrame([{"id": "0", "prompt": [{"role": "user", "content": "q"}], "answer": "7"}]).to_parquet(
        tmp_path / "data" / "rl_prompts.parquet")
    pd.DataFrame([{"id": "9", "problem": "p", "answer": "18"}]).to_parquet(tmp_path / "data" / "bench" / "gsm8k.parquet")
    assert diversity_golds(tmp_path) == {"rl/0": "7", "gsm8k/9": "18"}


# ----------------------------------------------------------------------------- RL

STEP = {"loss": 0.01, "grad_norm": 0.4, "reward": 0.25, "reward_std": 0.4, "rewards/math_verify/mean": 0.25,
        "rewards/math_verify/std": 0.4, "frac_reward_zero_std": 0.5, "step": 1}


@pytest.fixture
def rl_run(tiny_model, tmp_path):
    """(rl_dir, sft model, rl model): train.json with two logged steps and an RL model whose
    weights differ from the SFT model's in one entry."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    model.save_pretrained(tmp_path / "model")
    history = [dict(STEP), {**STEP, "step": 2, "reward": 0.0, "rewards/math_verify/mean": 0.0,
                            "frac_reward_zero_std": 1.0, "grad_norm": 0.0}, {"train_runtime": 1.0, "step": 2}]
    (tmp_path / "train.json").write_text(json.dumps({"log_history": history}))
    return tmp_path, tiny_model, tmp_path / "model"


def test_the_rl_check_passes_on_a_rewarded_run(rl_run):
    assert_rl_learned(*rl_run)


@pytest.mark.parametrize("change, message", [
    (lambda h: [s.update(reward=0.0, **{"rewards/math_verify/mean": 0.0}) for s in h if "reward" in s],
     "every step's mean reward is 0"),
    (lambda h: [s.update(frac_reward_zero_std=1.0) for s in h if "reward" in s], "every advantage was 0"),
    (lambda h: [s.update(grad_norm=0.0) for s in h if "reward" in s], "no gradient"),
    (lambda h: [s.pop("rewards/math_verify/mean") for s in h if "reward" in s], "another reward ran"),
])
def test_the_rl_check_fails_on_a_run_that_learnt_nothing(rl_run, change, message):
    rl_dir = rl_run[0]
    rewrite(rl_dir / "train.json", lambda d: change(d["log_history"]))
    with pytest.raises(AssertionError, match=message):
        assert_rl_learned(*rl_run)


def test_the_rl_check_fails_on_unchanged_weights_and_names_the_reward(rl_run, tmp_path):
    rl_dir, sft, _ = rl_run
    with pytest.raises(AssertionError, match="left the SFT weights unchanged"):
        assert_rl_learned(rl_dir, sft, sft)
    with pytest.raises(AssertionError, match="no rewards/exact_match_reward/mean"):
        assert_rl_learned(*rl_run, reward="exact_match_reward")


# ----------------------------------------------------------------------------- SFT

SFT_STEP = {"step": 2, "loss": 1.05, "ce": 1.0, "extra": 0.05, "mask_rate": 0.3, "entropy": 0.8,
            "token_accuracy": 0.6, "grad_norm": 1.0}


def write_metrics(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines + [{"train_runtime": 1.0, "step": 4}]))
    return path


def test_the_sft_telemetry_check(tmp_path):
    sed = write_metrics(tmp_path / "sed.jsonl", [SFT_STEP, {**SFT_STEP, "step": 4}])
    ce = write_metrics(tmp_path / "ce.jsonl", [{**SFT_STEP, "loss": 1.0, "extra": 0.0, "mask_rate": 0.0}])
    assert_sft_telemetry(sed, "sed")
    assert_sft_telemetry(ce, "ce")
    with pytest.raises(AssertionError, match="SED masked nothing"):
        assert_sft_telemetry(ce, "sed")
    with pytest.raises(AssertionError, match="CE with an extra term"):
        assert_sft_telemetry(sed, "ce")
    broken = write_metrics(tmp_path / "x.jsonl", [{**SFT_STEP, "extra": 0.2}])  # loss is not ce + extra
    with pytest.raises(AssertionError, match="loss != ce \\+ extra"):
        assert_sft_telemetry(broken, "sed")
    missing = write_metrics(tmp_path / "y.jsonl", [{k: v for k, v in SFT_STEP.items() if k != "token_accuracy"}])
    with pytest.raises(AssertionError, match="token_accuracy"):
        assert_sft_telemetry(missing, "sed")


# ----------------------------------------------------------------------------- determinism


def fake_run(folder):
    """What the micro run leaves up to tau, in miniature: every file the comparison reads."""
    for split in ("pretrain", "sft", "rl", "test"):
        (folder / "data" / "tiny").mkdir(parents=True, exist_ok=True)
        (folder / "data" / "tiny" / f"{split}.jsonl").write_text(json.dumps({"id": split}) + "\n")
    for name in ("sft_train", "sft_val"):
        pd.DataFrame({"input_ids": [[1, 2]], "labels": [[-100, 2]]}).to_parquet(folder / "data" / f"{name}.parquet")
    (folder / "base" / "model").mkdir(parents=True)
    (folder / "base" / "model" / "model.safetensors").write_bytes(bytes(range(16)))
    (folder / "base" / "model" / "config.json").write_text("{}")
    (folder / "sft").mkdir()
    for name in RUN_SUMMARIES:
        summary = {"loss": 1.5, "train_runtime": 3.0, "provenance": {"seconds": 2.0, "git_revision": "abc"}}
        (folder / name).write_text(json.dumps(summary))
    return folder


def edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_the_two_run_check_passes_on_equal_runs_and_ignores_only_timings(tmp_path):
    first = fake_run(tmp_path / "first")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    edit_json(second / "sft" / "threshold.json", lambda s: s.update(train_runtime=9.0))
    edit_json(second / "base" / "summary.json", lambda s: s["provenance"].update(seconds=7.0, git_revision="def"))
    assert_same_run_up_to_tau(first, second)


@pytest.mark.parametrize("change, message", [
    (lambda run: (run / "base/model/model.safetensors").write_bytes(bytes(range(1, 17))), "base/model/model.safetensors"),
    (lambda run: (run / "base/model/tokenizer.json").write_text("{}"), "base/model: other files"),
    (lambda run: (run / "data/tiny/test.jsonl").write_text("{}\n"), "data/tiny/test.jsonl"),
    (lambda run: edit_json(run / "sft/threshold.json", lambda s: s.update(loss=1.25)), "sft/threshold.json"),
    (lambda run: edit_json(run / "data/sft_data.json", lambda s: s["provenance"].update(python="3.0")),
     "data/sft_data.json"),
])
def test_the_two_run_check_fails_on_any_other_difference(tmp_path, change, message):
    first = fake_run(tmp_path / "first")
    second = tmp_path / "second"
    shutil.copytree(first, second)
    change(second)
    with pytest.raises(AssertionError, match=message):
        assert_same_run_up_to_tau(first, second)
