"""SFT with the SED loss family through the HF Trainer."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sedsft.artifacts import write_jsonl
from sedsft.config import ModelConfig, SFTConfig
from sedsft.hardware import has_cuda, rank, require_precision, start_deepspeed_on_cpu, trainable_dtype, use_bf16
from sedsft.launch import deepspeed_config, save_final_model
from sedsft.resume import fingerprint, is_final, resume_point, save_checkpoint_as_final, stamp, trainer_state
from sedsft.tracking import tracker_arguments, trainer_reporting, watch

# the loss module imports torch: the CLI imports this module for the sft stage's flags before it
# has chosen the process's GPUs (launch.pin_gpus), so the loss is imported where it is used
if TYPE_CHECKING:
    from sedsft.losses import LossSettings

log = logging.getLogger("sedsft")


def load_sequences(path: str) -> list[tuple[list[int], list[int]]]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return [(list(map(int, i)), list(map(int, lab))) for i, lab in zip(frame["input_ids"], frame["labels"])]


def pad_collator(pad_token_id: int):
    import torch

    def collate(batch):
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            attention[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate


def loss_settings(cfg: SFTConfig, tau: float | None) -> LossSettings:
    from sedsft.loss_registry import config_parameters
    from sedsft.losses import LossSettings

    return LossSettings(loss=cfg.loss, tau=tau, **{key: getattr(cfg, key) for key in config_parameters()})


class TelemetryWindow:
    """Sums of the loss statistics since the last logging step (this rank's tokens)."""

    KEYS = ("ce_sum", "extra_sum", "masked", "entropy_sum", "correct", "tokens")

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.started = time.perf_counter()

    def add(self, stats: dict) -> None:
        for key in self.KEYS:
            self.sums[key] += float(stats[key])

    def summary(self) -> dict:
        tokens = self.sums["tokens"]
        if not tokens:
            return {}
        return {
            "ce": self.sums["ce_sum"] / tokens,  # the CE part of the loss, per label token
            "extra": self.sums["extra_sum"] / tokens,  # the method's additional term, per label token
            "mask_rate": self.sums["masked"] / tokens,  # SED: share of tokens flagged flexible
            "entropy": self.sums["entropy_sum"] / tokens,
            "token_accuracy": self.sums["correct"] / tokens,  # argmax == target
            "tokens_per_s": tokens / max(time.perf_counter() - self.started, 1e-9),
        }


def loss_implementation(cfg: SFTConfig) -> str:
    """auto: the fused chunked loss, ZeRO-3 included (chunked_loss.whole gathers the partitioned
    LM-head weight for it)."""
    return "fused" if cfg.loss_impl == "auto" else cfg.loss_impl


def make_trainer_class():
    from transformers import Trainer

    from sedsft.losses import causal_lm_loss

    class SFTTrainer(Trainer):
        """The HF Trainer with the SED loss family computed from hidden states (chunked) and
        per-logging-step telemetry of the loss's parts."""

        def __init__(self, *args, loss_settings: LossSettings, loss_impl: str, chunk_size: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_settings, self.loss_impl, self.chunk_size = loss_settings, loss_impl, chunk_size
            self.window = TelemetryWindow()
            # our loss is already normalised by the global label-token count: never divide again
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            if self.loss_impl == "reference":
                outputs = model(**inputs)
                loss, stats = causal_lm_loss(outputs.logits, labels, self.loss_settings, num_items_in_batch)
            else:
                from sedsft.chunked_loss import lm_loss

                outputs = None
                # the forward runs through `model` as the Trainer wrapped it (a DeepSpeedEngine:
                # its forward starts ZeRO's accumulation bookkeeping, see chunked_loss.
                # final_hidden_states); the head's weight is read from the unwrapped model
                loss, stats = lm_loss(self.accelerator.unwrap_model(model), inputs["input_ids"],
                                      inputs.get("attention_mask"), labels, self.loss_settings, num_items_in_batch,
                                      impl=self.loss_impl, chunk_size=self.chunk_size, forward=model)
            if model.training:
                self.window.add(stats)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every rank's tokens and the gradient all-reduce
                # averages over ranks: undo that average, as the Trainer's own compute_loss does
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, start_time=None):
            if "loss" in logs:  # a training logging step, not the final summary
                logs.update(self.window.summary())
                self.window.reset()
            super().log(logs, start_time)

    return SFTTrainer


def train(base_model: str, model_cfg: ModelConfig, cfg: SFTConfig, seed: int, train_file: str,
          tau: float | None, out_dir: str, work_dir: str, metrics_file: str | None = None,
          tracker: str = "tensorboard") -> dict:
    """Fine-tune and save to out_dir atomically. A re-run after a kill resumes from the newest
    complete checkpoint in work_dir that the same settings and inputs wrote (bit-identical to an
    uninterrupted run on CPU); one that had reached its last step is saved without training."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from sedsft.chat import load_tokenizer

    require_precision(deepspeed_config(cfg.deepspeed), "sft.deepspeed")
    tokenizer = load_tokenizer(base_model, model_cfg.trust_remote_code)
    settings = loss_settings(cfg, tau)
    impl = loss_implementation(cfg)
    # ---- resume: this run's own checkpoints only
    expected = fingerprint(stage="sft", sft=dataclasses.asdict(cfg), seed=seed, tau=tau,
                           trust_remote_code=model_cfg.trust_remote_code,
                           inputs={"base_model": stamp(base_model), "train": stamp(train_file)})
    resume = resume_point(work_dir, expected, is_main=rank() == 0)
    partitioned_at_load = None  # ZeRO-3: whether from_pretrained sharded the weights (zero.Init)
    if resume and is_final(resume):
        log.info("%s is the run's last step: saving it as the model without training", resume)
        if rank() == 0:
            save_checkpoint_as_final(resume, tokenizer, out_dir)
        state = trainer_state(resume)
        history, global_step = state["log_history"], state["global_step"]
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    else:
        if resume:
            log.info("resuming from %s", resume)
        start_deepspeed_on_cpu(cfg.deepspeed)
        # ---- arguments first: with ZeRO-3 they register the DeepSpeed config, so that
        # from_pretrained partitions the weights as it loads them (zero.Init) instead of every rank
        # holding the whole model in host RAM (transformers 5.17 training_args.py: __post_init__
        # builds HfTrainerDeepSpeedConfig; modeling_utils.py: is_deepspeed_zero3_enabled())
        args = TrainingArguments(
            deepspeed=deepspeed_config(cfg.deepspeed),
            max_grad_norm=cfg.max_grad_norm,
            output_dir=work_dir,
            per_device_train_batch_size=cfg.per_device_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
            weight_decay=cfg.weight_decay,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            gradient_checkpointing=cfg.gradient_checkpointing,
            logging_steps=cfg.logging_steps,
            save_steps=cfg.save_steps,
            save_total_limit=2,
            bf16=use_bf16(),  # bf16 autocast (and DeepSpeed's bf16 mode) on GPUs that support it
            use_cpu=not has_cuda(),
            seed=seed,
            data_seed=seed,
            remove_unused_columns=False,
            **trainer_reporting(tracker, work_dir),
        )
        # ---- model and trainer
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=trainable_dtype(cfg.deepspeed),
                                                     trust_remote_code=model_cfg.trust_remote_code)
        partitioned_at_load = hasattr(next(model.parameters()), "ds_id")
        trainer = make_trainer_class()(
            model=model, args=args, train_dataset=load_sequences(train_file),
            data_collator=pad_collator(tokenizer.pad_token_id), loss_settings=settings, loss_impl=impl,
            chunk_size=cfg.loss_chunk_size)
        watch(trainer)
        # ---- train, save
        trainer.train(resume_from_checkpoint=resume)
        save_final_model(trainer, tokenizer, out_dir)
        history, global_step = trainer.state.log_history, trainer.state.global_step
        world_size = trainer.args.world_size
    if metrics_file and rank() == 0:
        write_metrics(metrics_file, history)
    return {
        "world_size": world_size,
        "deepspeed": cfg.deepspeed,
        "loss_impl": impl,
        "partitioned_at_load": partitioned_at_load,
        "resumed_from": resume,
        "global_step": global_step,
        "train_loss": mean_train_loss(history),
        "loss": settings.loss,
        "tau": tau,
        "log_history": history,
    }


def mean_train_loss(history: list[dict]) -> float | None:
    """The mean training loss over the steps the logged losses cover (each logging step's loss
    is the mean over the steps since the previous one). Read from the log history because the
    Trainer's own `training_loss` counts only the steps since a resume."""
    total, last = 0.0, 0
    for row in history:
        if "loss" in row and row["step"] > last:
            total += row["loss"] * (row["step"] - last)
            last = row["step"]
    return total / last if last else None


def write_metrics(path: str, history: list[dict]) -> None:
    """sft/metrics.jsonl: one line per logging step (and the Trainer's closing summary), written
    once at the end from the log history, which a resumed run restores from its checkpoint: the
    file is whole after a kill and a resume, and never exists half-written. (While training,
    the same lines go to the log.)"""
    write_jsonl(path, history)


def read_tau(threshold_file: str) -> float:
    with open(threshold_file) as fh:
        return float(json.load(fh)["tau"])


# ----------------------------------------------------------------------------- the sft stage


def sft_arguments(parser) -> None:
    parser.add_argument("--base", required=True, help="the base model (folder written by base_model, or a Hub id)")
    parser.add_argument("--train", required=True, help="sft_train.parquet (written by sft_data)")
    parser.add_argument("--threshold", help="threshold.json (written by threshold): tau, which sft.loss sed needs")
    parser.add_argument("--out-dir", required=True, help="model folder this stage writes (save_pretrained)")
    parser.add_argument("--work-dir", required=True, help="checkpoint folder this stage writes and resumes from")
    parser.add_argument("--metrics", help="metrics.jsonl this stage writes: one line per logging step")
    tracker_arguments(parser)


def run_sft(args, settings: dict) -> dict:
    from sedsft.config import section

    cfg = section(settings, SFTConfig, "sft")
    from sedsft.loss_registry import loss_named

    tau = read_tau(args.threshold) if loss_named(cfg.loss).needs_tau else None
    return train(args.base, section(settings, ModelConfig, "model"), cfg, settings["seed"], args.train, tau,
                 args.out_dir, args.work_dir, metrics_file=args.metrics, tracker=args.tracker)
