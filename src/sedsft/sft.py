"""SFT with the SED loss family through the HF Trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sedsft.config import ConfigError, ModelConfig, SFTConfig
from sedsft.hardware import has_cuda, rank, use_bf16
from sedsft.losses import LossSettings, causal_lm_loss


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


def deepspeed_config(name: str | None) -> str | None:
    """zero2/zero3 -> the JSON shipped with the package; anything else is a user's file."""
    if name is None:
        return None
    shipped = Path(__file__).parent / "deepspeed" / f"{name}.json"
    if shipped.is_file():
        return str(shipped)
    if Path(name).is_file():
        return name
    raise ConfigError(f"sft.deepspeed: {name!r} is neither zero2/zero3 nor an existing DeepSpeed JSON file")


def loss_settings(cfg: SFTConfig, tau: float | None) -> LossSettings:
    return LossSettings(loss=cfg.loss, tau=tau, sed_lambda=cfg.sed_lambda, top_k=cfg.top_k,
                        gem_beta=cfg.gem_beta, gem_weighting=cfg.gem_weighting)


def train(base_model: str, model_cfg: ModelConfig, cfg: SFTConfig, seed: int, train_file: str,
          tau: float | None, out_dir: str, work_dir: str) -> dict:
    """Fine-tune, resuming from the newest checkpoint in work_dir; save to out_dir atomically."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from sedsft.chat import load_tokenizer

    tokenizer = load_tokenizer(base_model, model_cfg.trust_remote_code)
    dtype = torch.bfloat16 if use_bf16() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype,
                                                 trust_remote_code=model_cfg.trust_remote_code)
    settings = loss_settings(cfg, tau)

    def compute_loss(outputs, labels, num_items_in_batch=None):
        loss, _ = causal_lm_loss(outputs.logits, labels, settings, num_items_in_batch)
        return loss

    Path(work_dir).mkdir(parents=True, exist_ok=True)
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
        bf16=use_bf16(),
        use_cpu=not has_cuda(),
        seed=seed,
        data_seed=seed,
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=load_sequences(train_file),
                      data_collator=pad_collator(tokenizer.pad_token_id), compute_loss_func=compute_loss)
    resume = get_last_checkpoint(work_dir) if Path(work_dir).is_dir() else None
    result = trainer.train(resume_from_checkpoint=resume)

    tmp = Path(str(out_dir) + ".tmp")
    if rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank: ZeRO-3 gathers the shards here
    trainer.accelerator.wait_for_everyone()
    if rank() == 0:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)  # the folder appears only once complete
    return {
        "world_size": trainer.args.world_size,
        "deepspeed": cfg.deepspeed,"resumed_from": resume, "global_step": trainer.state.global_step,
            "train_loss": result.training_loss, "loss": settings.loss, "tau": tau,
            "log_history": trainer.state.log_history}


def read_tau(threshold_file: str) -> float:
    with open(threshold_file) as fh:
        return float(json.load(fh)["tau"])
