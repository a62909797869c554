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
    # TRL's own safe share beside 8 ZeRO-3 ranks (its default since OOM reports), not 0.8
    assert args.vllm_gpu_memory_utilization == 0.3 and args.vllm_tensor_parallel_size == 2
    assert args.trust_remote_code is False  # model.trust_remote_code reaches the colocated vLLM
    assert args.deepspeed.endswith("zero3.json")


def test_server_mode_settings(tmp_path):
    cfg = C.RLConfig(**{**rl_config("llama3b").__dict__, "vllm_mode": "server", "vllm_server_port": 8123,
                        "num_processes": 4})
    args = grpo_config(cfg, seed=0, work_dir=str(tmp_path), world_size=4, check_hardware=False)
    assert (args.vllm_mode, args.vllm_server_host, args.vllm_server_port) == ("server", "127.0.0.1", 8123)


def test_server_mode_launch_wraps_the_command():
    from sedsft.launch import rl_command_prefix

    rl = {"num_processes": 4, "deepspeed": "zero3", "use_vllm": True, "vllm_mode": "server",
          "vllm_tensor_parallel_size": 2, "vllm_server_port": 8000, "vllm_group_port": None,
          "max_prompt_length": 1024, "max_completion_length": 3072}
    prefix = rl_command_prefix(rl, "results/x/sft/model")
    assert "with_vllm_server.sh results/x/sft/model 2 8000 4 --group-port auto --max-model-len 4096 --" in prefix
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


# ----------------------------------------------------------------------------- GRPO with rewards


SYSTEM = "Put the final answer in a box."
# sums of 7 or 8: the model below answers \boxed{7} or \boxed{8} about half the time each,
# whatever the question, so every group of samples has right and wrong ones
GOLDS = {f"What is {a} + {b}?": str(a + b) for a, b in ((3, 4), (2, 6), (1, 6), (5, 3), (4, 3), (6, 2), (7, 0), (0, 8))}


def conversation(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def answering_model(tmp_path_factory) -> str:
    """A one-layer Llama taught (60 full-batch Adam steps, seconds) to answer every question of
    GOLDS with \\boxed{7} or \\boxed{8}, each half the time, then <|im_end|>."""
    import torch

    from sedsft.config import TinyModelConfig
    from sedsft.tinymodel import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("answering")
    tokenizer = build_tokenizer([SYSTEM] + [f"{q} \\boxed{{7}} \\boxed{{8}}" for q in GOLDS] * 5, vocab_size=300)
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                          pretrain_problems=1, pretrain_steps=0, pretrain_batch_size=1, pretrain_learning_rate=1e-3,
                          sft_problems=1, rl_problems=1, test_problems=1, max_operand=2)
    model = build_model(tokenizer, cfg, seed=0)
    rows = []
    for question in GOLDS:
        prompt = tokenizer.apply_chat_template(conversation(question), tokenize=False, add_generation_prompt=True)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        for answer in ("7", "8"):
            ids = tokenizer(prompt + f"\\boxed{{{answer}}}<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append((ids, start))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for row, (ids, start) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, start:len(ids)] = torch.tensor(ids[start:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    try:
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(60):
            loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(),
                         labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.2  # ln 2 / 6 answer tokens = 0.116: the coin flip is all that is left
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def prompt_length(tokenizer, question: str) -> int:
    """Tokens of the prompt as generation sees it: the chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(conversation(question), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_prompts_over_max_prompt_length_are_dropped_and_counted(answering_model):
    from transformers import AutoTokenizer

    from sedsft.rl import filter_prompts

    tokenizer = AutoTokenizer.from_pretrained(answering_model)
    limit = max(prompt_length(tokenizer, q) for q in GOLDS)  # the longest kept prompt is exactly at the limit
    longest = max(GOLDS, key=lambda q: prompt_length(tokenizer, q))
    tails = [c for c in "0123456789+=?!.,;:"] + [f" {c}" for c in "0123456789+="]
    one_over = next(longest + tail for tail in tails if prompt_length(tokenizer, longest + tail) == limit + 1)
    rows = [{"prompt": conversation(q)} for q in [*GOLDS, one_over, "What is " + " + ".join(["1"] * 40) + "?"]]
    kept, dropped = filter_prompts(rows, tokenizer, limit)
    assert (len(kept), dropped) == (len(GOLDS), 2)
    assert kept == rows[:len(GOLDS)]


def last_box(text: str) -> str | None:
    """The last \\boxed{...} without nested braces: all this model writes."""
    import re

    boxes = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return boxes[-1].strip() if boxes else None


class RecordingTrainer:
    """Patched over trl.GRPOTrainer: the real trainer, its reward functions wrapped to record
    what TRL hands them and what they return, per call (one call per rollout batch)."""

    calls: list[dict] = []
    reward_funcs: list = []

    @classmethod
    def make(cls):
        import trl

        class Recording(trl.GRPOTrainer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                cls.reward_funcs = list(self.reward_funcs)
                self.reward_funcs = [cls.recorded(f) for f in self.reward_funcs]

        return Recording

    @classmethod
    def recorded(cls, reward):
        def call(prompts, completions, **kwargs):
            rewards = reward(prompts, completions, **kwargs)
            cls.calls.append({"questions": [p[-1]["content"] for p in prompts],
                              "texts": [c[-1]["content"] for c in completions],
                              "answer": list(kwargs["answer"]), "rewards": list(rewards),
                              "step": kwargs["trainer_state"].global_step})
            return rewards

        call.__name__ = getattr(reward, "__name__", type(reward).__name__)
        return call


@pytest.mark.parametrize("reward, steps", [("math_verify", 3), ("exact_match", 2)])
def test_grpo_rewards_right_answers_and_moves_the_weights(answering_model, tmp_path, monkeypatch, reward, steps):
    """`sedsft rl` on prompts the model can answer: the reward configured in rl.reward is the one
    TRL calls, it receives each prompt's gold answer from the `answer` column, its values are the
    ones the test predicts from the completions (non-zero: about half the samples are right), the
    logged reward means are theirs, and the policy moves."""
    import pandas as pd
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sedsft.rl
    from sedsft import cli

    tokenizer = AutoTokenizer.from_pretrained(answering_model)
    limit = max(prompt_length(tokenizer, q) for q in GOLDS)  # the longest prompt is exactly at the limit
    rows = [{"id": str(i), "prompt": conversation(q), "answer": a} for i, (q, a) in enumerate(GOLDS.items())]
    pd.DataFrame(rows).to_parquet(tmp_path / "prompts.parquet", index=False)

    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    settings["rl"].update(reward=reward, max_steps=steps, num_generations=4, prompts_per_step=4,
                          mini_batch_prompts=4, per_device_batch_size=16, max_prompt_length=limit,
                          max_completion_length=8, learning_rate=1e-4, logging_steps=1, save_steps=100,
                          temperature=1.0, top_p=1.0, use_vllm=False)
    RecordingTrainer.calls.clear()
    monkeypatch.setattr(trl, "GRPOTrainer", RecordingTrainer.make())
    code = cli.main(["rl", "--experiment", "tiny", "--settings", json.dumps(settings), "--model", answering_model,
                     "--prompts", str(tmp_path / "prompts.parquet"), "--out-dir", str(tmp_path / "rl"),
                     "--work-dir", str(tmp_path / "ckpt"), "--summary", str(tmp_path / "rl.json")])
    assert code == 0
    summary = json.loads((tmp_path / "rl.json").read_text())

    # rl.reward chose the function TRL calls, and its name in the logs
    (func,) = RecordingTrainer.reward_funcs
    if reward == "math_verify":
        assert isinstance(func, sedsft.rl.MathVerifyReward)
        name, right, wrong = "math_verify", 1.0, 0.0
    else:
        assert func is sedsft.rl.exact_match_reward
        name, right, wrong = "exact_match_reward", 1.0, -1.0
    # filter_prompts: the 8 prompts kept, the longest at exactly the limit (and longer ones dropped:
    # test_prompts_over_max_prompt_length_are_dropped_and_counted)
    assert (summary["prompts"], summary["dropped_too_long"]) == (8, 0)

    calls = RecordingTrainer.calls
    assert [c["step"] for c in calls] == list(range(steps))  # one rollout batch of 4 prompts x 4 per step
    for c in calls:
        assert len(c["texts"]) == 16 and set(c["questions"]) <= set(GOLDS)
        assert c["answer"] == [GOLDS[q] for q in c["questions"]]  # the gold of each sample's own prompt
        assert c["rewards"] == [right if last_box(t) == a else wrong for t, a in zip(c["texts"], c["answer"])]
    all_rewards = [r for c in calls for r in c["rewards"]]
    assert 0.2 < all_rewards.count(right) / len(all_rewards) < 0.8  # the model's coin flip: right about half

    logged = [h for h in summary["log_history"] if "reward" in h]
    assert [h["step"] for h in logged] == list(range(1, steps + 1))
    for h, c in zip(logged, calls, strict=True):
        assert h["reward"] == pytest.approx(sum(c["rewards"]) / 16)
        assert h[f"rewards/{name}/mean"] == pytest.approx(sum(c["rewards"]) / 16)
        assert h["frac_reward_zero_std"] < 1  # some group had right and wrong samples: an advantage
    assert any(h["reward"] != 0 for h in logged)
    assert all(h["grad_norm"] > 0 for h in logged)

    before = AutoModelForCausalLM.from_pretrained(answering_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "rl").state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_killed_rl_resumes_from_its_last_checkpoint(answering_model, tmp_path):
    """`sedsft rl` killed -9 once its first checkpoint (step 2 of 8) is on disk, then run again:
    it resumes from a checkpoint, its history continues without a restart or repeats, the model
    is saved; on the answering model, so the rewards are not all 0 and the steps do move it."""
    import pandas as pd

    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    settings["rl"].update(max_steps=8, save_steps=2, logging_steps=1, prompts_per_step=4, mini_batch_prompts=4,
                          num_generations=2, per_device_batch_size=8, max_completion_length=8, learning_rate=1e-4,
                          use_vllm=False)
    rows = [{"id": str(i), "prompt": conversation(q), "answer": a} for i, (q, a) in enumerate(GOLDS.items())]
    pd.DataFrame(rows).to_parquet(tmp_path / "prompts.parquet", index=False)
    rl = [sys.executable, "-m", "sedsft.cli", "rl", "--experiment", "tiny", "--settings", json.dumps(settings),
          "--model", answering_model, "--prompts", str(tmp_path / "prompts.parquet"),
          "--out-dir", str(tmp_path / "rl"), "--work-dir", str(tmp_path / "ckpt"), "--summary", str(tmp_path / "rl.json")]

    # kill -9 once the first checkpoint is on disk
    process = subprocess.Popen(rl, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None, "RL finished or died before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "rl").exists() and not (tmp_path / "rl.json").exists()

    subprocess.run(rl, check=True, capture_output=True)
    summary = json.loads((tmp_path / "rl.json").read_text())
    assert summary["resumed_from"] and int(summary["resumed_from"].rsplit("-", 1)[1]) >= 2
    assert summary["global_step"] == 8
    logged = [h for h in summary["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == list(range(1, 9))  # the history continues where it stopped, no repeats
    assert any(h["reward"] > 0 for h in logged)
    assert (tmp_path / "rl" / "model.safetensors").exists()
