"""The whole DAG on a micro version of `tiny`, run the way a new user runs it: in a `git clone`
of the repository in an empty folder (nothing beside it), with the Hugging Face Hub offline
(the session's `micro_run`, tests/micro_run.py). Every artifact is produced and checked, then
the re-run semantics are checked against the finished run (dry runs); the paper's experiments
are planned in the same clone."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from e2e_checks import assert_diversity_recomputed, assert_sft_telemetry, diversity_golds
from micro_run import EXP, MICRO, SFT_STEPS, in_clone
from workflow_helpers import REPO, planned_jobs

pytestmark = pytest.mark.slow

BENCHES = ["aime24", "aime25", "amc23", "math500", "gsm8k", "olympiadbench", "college_math", "gaokao2023en"]


def test_a_fresh_clone_plans_the_tiny_smollm2_and_llama3b_runs_offline(micro_run):
    clone = micro_run.clone
    result = in_clone(clone, "-n", "-p", *(f"results/{exp}/rl_eval.json" for exp in ("tiny", "smollm2", "llama3b")))
    jobs = planned_jobs(result.stdout)
    assert jobs["eval_report"] == 6 and jobs["rl_prompts"] == 3
    assert jobs["benchmark_data"] == 9 + 2 + 8  # tiny: eight + its own; smollm2: gsm8k, math500; llama3b: eight
    # every stage reads the data shipped in the clone
    assert set(re.findall(r'"benchmarks_dir": "([^"]+)"', result.stdout)) == {str(clone / "data" / "benchmarks")}
    sources = set(re.findall(r"--source (\S+)", result.stdout))
    assert {str(clone / "data" / "rl" / "math_train_data_filtered_qwen25_revised.parquet"),
            str(clone / "data" / "sft" / "gsm8k_train.jsonl")} <= sources


@pytest.fixture(scope="module")
def run(micro_run):
    return micro_run.clone, micro_run.config


def results(run):
    return run[0] / "results" / EXP


def load(path):
    with open(path) as fh:
        return json.load(fh)


def jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_tiny_task_splits(run):
    data = results(run) / "data" / "tiny"
    test, rl = jsonl(data / "test.jsonl"), jsonl(data / "rl.jsonl")
    sft, pretrain = jsonl(data / "sft.jsonl"), jsonl(data / "pretrain.jsonl")
    assert (len(test), len(rl), len(pretrain)) == (12, 24, 400)
    assert len({r["id"].split("/")[0] for r in sft}) == 80 and len(sft) > 80  # several solutions each
    held_out = {r["id"] for r in test}
    assert not held_out & ({r["id"] for r in rl} | {r["id"] for r in pretrain} | {r["id"].split("/")[0] for r in sft})


def test_base_model_was_pretrained(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = load(results(run) / "base" / "summary.json")
    assert summary["final_loss"] < summary["first_loss"]
    model = AutoModelForCausalLM.from_pretrained(results(run) / "base" / "model")
    tokenizer = AutoTokenizer.from_pretrained(results(run) / "base" / "model")
    assert model.config.model_type == "llama" and tokenizer.chat_template


def test_sft_tokens_have_assistant_only_labels(run):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(results(run) / "base" / "model")
    train = pd.read_parquet(results(run) / "data" / "sft_train.parquet")
    val = pd.read_parquet(results(run) / "data" / "sft_val.parquet")
    assert (len(train), len(val)) == (64, 24)
    source = jsonl(results(run) / "data" / "tiny" / "sft.jsonl")
    for row in train.itertuples():
        ids, labels = list(row.input_ids), list(row.labels)
        assert all(label in (-100, token) for token, label in zip(ids, labels))
        labelled = tokenizer.decode([t for t, lab in zip(ids, labels) if lab != -100])
        assert labelled == source[row.row]["answer"] + "<|im_end|>"


def test_rl_prompts_and_benchmarks(run):
    prompts = pd.read_parquet(results(run) / "data" / "rl_prompts.parquet")
    assert len(prompts) == 24
    system = yaml.safe_load(open(REPO / "config.yaml"))["defaults"]["system_prompt"]
    assert all(p[0]["role"] == "system" and p[0]["content"] == system for p in prompts["prompt"])
    for bench in BENCHES:
        frame = pd.read_parquet(results(run) / "data" / "bench" / f"{bench}.parquet")
        assert list(frame.columns) == ["id", "problem", "answer"] and len(frame) == 2
        assert frame["answer"].str.len().min() > 0
    assert len(pd.read_parquet(results(run) / "data" / "bench" / "tiny.parquet")) == 12


def test_threshold(run):
    threshold = load(results(run) / "sft" / "threshold.json")
    assert 0 < threshold["tau"] <= 1
    assert threshold["mode"] == "consistent" and threshold["tau_top_k"] == threshold["loss_top_k"] == 2
    assert threshold["positions"] > 100
    # tau is the 30th percentile of the same masses the loss compares: ~30 % are masked
    assert abs(threshold["mask_rate"] - 0.3) < 0.05


def test_models_saved_and_trained(run):
    import torch
    from transformers import AutoModelForCausalLM

    sft = load(results(run) / "sft" / "train.json")
    rl = load(results(run) / "rl" / "train.json")
    assert sft["global_step"] == SFT_STEPS and sft["loss"] == "sed" and sft["tau"] is not None
    assert rl["global_step"] == 2
    models = {s: AutoModelForCausalLM.from_pretrained(results(run) / s / "model") for s in ("base", "sft", "rl")}
    weights = {s: torch.cat([p.flatten() for p in m.parameters()]) for s, m in models.items()}
    assert not torch.equal(weights["base"], weights["sft"])
    # GRPO moves the weights exactly when some group had a reward spread (non-zero gradient)
    moved = any(h.get("grad_norm", 0) > 0 for h in rl["log_history"])
    assert torch.equal(weights["sft"], weights["rl"]) != moved


def test_diversity(run):
    diversity = load(results(run) / "sft" / "diversity.json")
    # 3 RL prompts + 1 problem of each of tiny's diversity benchmarks (tiny, gsm8k)
    assert diversity["prompts"] == 5 and diversity["samples_per_prompt"] == 4
    assert diversity["prompts_per_source"] == {"rl": 3, "tiny": 1, "gsm8k": 1}
    for key in ("distinct_1", "distinct_2", "distinct_3", "accuracy"):
        assert 0 <= diversity[key] <= 1
    assert 0 <= diversity["self_bleu"] <= 100
    assert diversity["100_minus_self_bleu"] == pytest.approx(100 - diversity["self_bleu"])
    assert 0 <= diversity["distinct_answers"] <= 4
    assert 0 <= diversity["semantic_diversity"] <= 2 and diversity["mean_token_entropy"] > 0
    curve = [diversity["pass_at_k"][str(k)] for k in range(1, 5)]
    assert curve == sorted(curve) and curve[0] == pytest.approx(diversity["accuracy"])
    assert set(diversity["by_source"]) == {"rl", "benchmarks"}
    samples = jsonl(results(run) / "sft" / "diversity_samples.jsonl")
    assert len(samples) == 5 and all(len(s["completions"]) == 4 for s in samples)
    assert all(len(e) == len(t) for s in samples for e, t in zip(s["entropies"], s["token_ids"]))
    assert len(jsonl(results(run) / "sft" / "diversity_per_prompt.jsonl")) == 5
    for plot in ("diversity_pass_at_k.png", "diversity_metrics.png"):
        assert (results(run) / "sft" / plot).read_bytes().startswith(b"\x89PNG")
    # every value recomputed from the samples (accuracy and pass@k graded again against the golds)
    assert_diversity_recomputed(results(run) / "sft", diversity_golds(results(run)))


def test_sft_telemetry(run):
    assert_sft_telemetry(results(run) / "sft" / "metrics.jsonl", "sed")


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_eval_contract(run, stage):
    result = load(results(run) / f"{stage}_eval.json")
    assert set(result["benchmarks"]) == set(BENCHES) | {"tiny"}
    expected_samples = {"aime24": 2, "aime25": 2, "amc23": 2, "tiny": 2}
    for name, bench in result["benchmarks"].items():
        assert 0 <= bench["accuracy"] <= 100
        assert bench["n_problems"] == (12 if name == "tiny" else 2)
        assert bench["n_samples"] == expected_samples.get(name, 1)
        assert bench["sampling"]["n"] == bench["n_samples"]
        # recompute accuracy from the per-sample grades
        graded = jsonl(results(run) / "eval" / stage / f"{name}.graded.jsonl")
        correct = [sum(r["correct"]) / len(r["correct"]) for r in graded]
        assert bench["accuracy"] == pytest.approx(100 * sum(correct) / len(correct))
    assert result["average"] == pytest.approx(sum(result["benchmarks"][b]["accuracy"] for b in BENCHES) / 8)
    provenance = result["provenance"]
    for key in ("experiment", "config_hash", "packages", "git_revision", "seed"):
        assert key in provenance
    assert provenance["experiment"] == EXP and provenance["packages"]["transformers"]
    assert (results(run) / f"{stage}_eval.md").read_text().count("|") > 20
    if stage == "rl":
        assert result["sft_diversity"]["samples_per_prompt"] == 4
        sft = load(results(run) / "sft_eval.json")
        assert result["sft_baseline"]["average"] == sft["average"]
        assert result["sft_baseline"]["accuracy"]["tiny"] == sft["benchmarks"]["tiny"]["accuracy"]


def _plan(run, *extra_configs):
    workdir, micro = run
    return planned_jobs(in_clone(workdir, "-n", f"results/{EXP}/rl_eval.json", f"results/{EXP}/sft_eval.json",
                                 configfiles=[micro, *extra_configs]).stdout)


def _override(run, name, settings):
    path = run[1].parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"experiments": {EXP: {**MICRO, **settings}}}))
    return path


def test_rerun_nothing_changed_does_nothing(run):
    assert _plan(run) == {}


def test_rerun_tracker_or_job_sizes_changed_does_nothing(run):
    """How a run is watched (tracker) and what its jobs ask the scheduler for (resources) are
    not what it computes: switching TensorBoard off or asking for more CPUs re-runs nothing."""
    path = run[1].parent / "watched.yaml"
    path.write_text(yaml.safe_dump({"experiments": {EXP: {**MICRO, "tracker": "none",
                                                          "resources": {"gpus": "auto", "cpus_per_gpu": 8}}}}))
    assert _plan(run, path) == {}


def test_training_stages_write_tensorboard_event_files(run):
    """results/<exp>/<stage>/tensorboard: the curves a user watches while a stage runs, read back
    with TensorBoard's reader: pre-training and SFT losses (with the SED telemetry), RL rewards
    and lengths, each at the steps its log history has."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(stage):
        folder = results(run) / stage / "tensorboard"
        assert any(p.name.startswith("events.out.tfevents.") for p in folder.iterdir()), folder
        return EventAccumulator(str(folder)).Reload()

    base = scalars("base")
    assert "train/loss" in base.Tags()["scalars"]
    sft = scalars("sft")
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/ce", "train/extra",
            "train/mask_rate"} <= set(sft.Tags()["scalars"])
    history = [row for row in jsonl(results(run) / "sft" / "metrics.jsonl") if "loss" in row]
    assert [e.step for e in sft.Scalars("train/loss")] == [row["step"] for row in history]
    assert [e.value for e in sft.Scalars("train/ce")] == pytest.approx([row["ce"] for row in history], rel=1e-5)
    rl = scalars("rl")
    assert {"train/reward", "train/completions/mean_length", "train/learning_rate"} <= set(rl.Tags()["scalars"])


def test_rerun_rl_setting_reruns_only_rl_onwards(run):
    jobs = _plan(run, _override(run, "rl_lr", {"rl": {**MICRO["rl"], "learning_rate": 3.0e-5}}))
    assert dict(jobs) == {"rl": 1, "generate": 9, "grade": 9, "eval_report": 1}


def test_rerun_loss_reruns_sft_onwards(run):
    jobs = _plan(run, _override(run, "loss", {"sft": {**MICRO["sft"], "loss": "ce"}}))
    assert set(jobs) == {"sft", "diversity", "rl", "generate", "grade", "eval_report"}
    assert jobs["generate"] == 18 and jobs["eval_report"] == 2


def test_rerun_eval_sampling_reruns_that_benchmark_only(run):
    per_benchmark = {**yaml.safe_load(open(REPO / "config.yaml"))["experiments"]["tiny"]["eval"]["per_benchmark"],
                     **MICRO["eval"]["per_benchmark"]}
    per_benchmark["aime24"] = {"n": 3, "temperature": 1.0, "top_p": 1.0}
    jobs = _plan(run, _override(run, "aime", {"eval": {**MICRO["eval"], "per_benchmark": per_benchmark}}))
    assert dict(jobs) == {"generate": 2, "grade": 2, "eval_report": 2}
