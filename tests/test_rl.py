"""GRPO: the paper's recipe mapped onto TRL, rewards, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sedsft import config as C
from sedsft.rl import MathVerifyReward, exact_match_reward, grpo_config
from workflow_helpers import REPO


def rl_config(experiment: str) -> C.RLConfig:
    return C.load_experiment(REPO / "config.yaml", experiment).rl


def test_paper_recipe_reaches_grpo_config(tmp_path):
    cfg = rl_config("llama3b")
    args = grpo_config(cfg, seed=42, work_dir=str(tmp_path), world_size=8, check_hardware=False)
    assert (args.beta, args.epsilon, args.epsilon_high, args.loss_type) == (0.0, 0.2, 0.28, "dapo")
    assert (args.learning_rate, args.max_grad_norm, args.temperature, args.top_p) == (1e-6, 1.0, 1.0, 1.0)
    assert args.num_generations == 8 and args.max_completion_length == 3072
    # 256 prompts x 8 completions per rollout batch; 32 prompts x 8 per optimizer update on 8 ranks
    assert args.generation_batch_size == 256 * 8
    assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 32 * 8
    # TRL derives micro-steps per rollout batch from the ranks it actually sees (1 in this test)
    assert args.steps_per_generation * args.per_device_train_batch_size * args.world_size == 256 * 8
    # vLLM settings from config, as TRL will use them
    assert args.use_vllm and args.vllm_mode == "colocate"
    assert args.vllm_gpu_memory_utilization == 0.8 and args.vllm_tensor_parallel_size == 2
    assert args.deepspeed.endswith("zero3.json")


def test_server_mode_settings(tmp_path):
    cfg = C.RLConfig(**{**rl_config("llama3b").__dict__, "vllm_mode": "server", "vllm_server_port": 8123,
                        "num_processes": 4})
    args = grpo_config(cfg, seed=0, work_dir=str(tmp_path), world_size=4, check_hardware=False)
    assert (args.vllm_mode, args.vllm_server_host, args.vllm_server_port) == ("server", "127.0.0.1", 8123)


def test_server_mode_launch_wraps_the_command():
    from sedsft.launch import rl_command_prefix

    rl = {"num_processes": 4, "deepspeed": "zero3", "use_vllm": True, "vllm_mode": "server",
          "vllm_tensor_parallel_size": 2, "vllm_server_port": 8000}
    prefix = rl_command_prefix(rl, "results/x/sft/model")
    assert "with_vllm_server.sh results/x/sft/model 2 8000 4 --" in prefix
    assert prefix.endswith("torchrun --standalone --nproc_per_node 4 -m sedsft.cli")
    assert rl_command_prefix({**rl, "vllm_mode": "colocate"}, "m").startswith("torchrun")


def test_rewards():
    completions = [[{"role": "assistant", "content": t}] for t in
                   ["so \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "no box", "\\boxed{3}", "\\boxed{" * 3000]]
    answers = ["\\frac{1}{2}"] * 3 + ["4", "1"]
    reward = MathVerifyReward(workers=1, timeout_s=5)
    try:
        assert reward(None, completions, answers) == [1.0, 1.0, 0.0, 0.0, 0.0]
    finally:
        reward.grader.close()
    # the released code's exact string match: 0.5 is not the string \frac{1}{2}
    assert exact_match_reward(None, completions, answers) == [1.0, -1.0, -1.0, -1.0, -1.0]


def test_rewards_of_hostile_outputs_are_right_and_bounded(monkeypatch):
    """Huge, deeply nested, box-less, many-boxed and surrogate-laden completions (the cases of
    test_grading.HOSTILE_OUTPUTS) score 0, or 1 where the last box is right. The pool grades
    them once for the session (test_grading.hostile_graded_once: bounded time, the pool goes on
    after a timeout); here the reward hands each completion's text and its gold to its grader
    and turns the grades into rewards in order."""
    import sedsft.grading
    from test_grading import HOSTILE_COMPLETIONS, HOSTILE_LABELS, GradedOnce

    texts = HOSTILE_COMPLETIONS[:-1]  # str completions, as TRL passes them
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    monkeypatch.setattr(sedsft.grading, "Grader", GradedOnce)
    GradedOnce.asked.clear()
    reward = MathVerifyReward(workers=2, timeout_s=1)
    assert reward(None, completions, ["42"] * len(texts)) == [float(r) for r in HOSTILE_LABELS[:-1]]
    assert GradedOnce.asked == [(texts, ["42"] * len(texts), 1)]
    assert reward(None, [[{"role": "assistant", "content": "\\boxed{42}"}]], ["42"]) == [1.0]
    started = time.perf_counter()
    # the released code's reward: +1 where the last box is the string "42" (here: where it is right)
    expected = [1.0 if right else -1.0 for right in HOSTILE_LABELS[:-1]]
    assert exact_match_reward(None, completions, ["42"] * len(texts)) == expected
    assert time.perf_counter() - started < 5


@pytest.mark.slow
def test_killed_rl_resumes_from_its_last_checkpoint(tmp_path):
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    settings["model"]["tiny"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                     vocab_size=300, pretrain_problems=32, pretrain_steps=0, sft_problems=16,
                                     rl_problems=64, test_problems=4)
    settings["rl"].update(max_steps=24, save_steps=3, logging_steps=1, prompts_per_step=4, mini_batch_prompts=4,
                          num_generations=2, per_device_batch_size=8, max_completion_length=12,
                          learning_rate=1e-3)
    common = ["--experiment", "tiny", "--settings", json.dumps(settings)]

    def cli(*args):
        return [sys.executable, "-m", "sedsft.cli", *args]

    for stage, extra in (("tiny-task", ["--out-dir", str(tmp_path / "task")]),
                         ("base-model", ["--task-dir", str(tmp_path / "task"), "--out-dir", str(tmp_path / "base")]),
                         ("rl-prompts", ["--source", str(tmp_path / "task" / "rl.jsonl"),
                                         "--out", str(tmp_path / "prompts.parquet")])):
        subprocess.run(cli(stage, *common, *extra, "--summary", str(tmp_path / f"{stage}.json")), check=True,
                       capture_output=True)
    rl = cli("rl", *common, "--model", str(tmp_path / "base"), "--prompts", str(tmp_path / "prompts.parquet"),
             "--out-dir", str(tmp_path / "rl"), "--work-dir", str(tmp_path / "ckpt"),
             "--summary", str(tmp_path / "rl.json"))

    # kill -9 once the second checkpoint is on disk
    process = subprocess.Popen(rl, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "ckpt" / "checkpoint-6" / "trainer_state.json").exists():
        assert process.poll() is None, "RL finished or died before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "rl").exists() and not (tmp_path / "rl.json").exists()

    subprocess.run(rl, check=True, capture_output=True)
    summary = json.loads((tmp_path / "rl.json").read_text())
    assert summary["resumed_from"] and int(summary["resumed_from"].rsplit("-", 1)[1]) >= 6
    assert summary["global_step"] == 24
    steps = [h["step"] for h in summary["log_history"] if "loss" in h]
    assert steps == list(range(1, 25))  # the history continues where it stopped, no restart, no repeats
    assert (tmp_path / "rl" / "model.safetensors").exists()
