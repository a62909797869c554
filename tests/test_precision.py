"""Training precision: on a bf16 GPU without DeepSpeed the weights (and AdamW's state) must stay
fp32 while autocast computes in bf16, else updates at the RL learning rate vanish in bf16
rounding. Here the bf16 decision is forced on the CPU, the closest analogue: the Trainer then
runs with bf16 autocast on the CPU, exactly the code path of a bf16 GPU without DeepSpeed."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from sedsft import config as C
from sedsft import hardware
from workflow_helpers import REPO


@pytest.fixture
def bf16_machine(monkeypatch):
    """Make sedsft believe it runs on a GPU with bf16 (the decision, not the device)."""
    import sedsft.sft

    monkeypatch.setattr(hardware, "use_bf16", lambda: True)
    monkeypatch.setattr(sedsft.sft, "use_bf16", lambda: True)


def test_bf16_weights_only_where_deepspeed_keeps_fp32_masters(bf16_machine):
    assert hardware.trainable_dtype(None) == torch.float32
    assert hardware.trainable_dtype("zero2") == hardware.trainable_dtype("zero3") == torch.bfloat16


def test_fp32_everywhere_without_bf16():
    assert hardware.trainable_dtype(None) == hardware.trainable_dtype("zero3") == torch.float32


def test_a_small_update_reaches_the_weights_under_bf16(bf16_machine, tiny_model, tmp_path):
    """One AdamW step at lr 1e-6 (the paper's RL rate) changes nearly every weight that has a
    gradient; with bf16 weights (the old behaviour) about 2 % of them changed."""
    from transformers import AutoModelForCausalLM

    from sedsft import sft

    tokenizer_ids = list(range(5, 45))
    rows = [{"input_ids": tokenizer_ids, "labels": [-100] * 10 + tokenizer_ids[10:]} for _ in range(4)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    cfg = C.parse_experiment(settings, "tiny")
    sft_cfg = dataclasses.replace(cfg.sft, loss="ce", learning_rate=1e-6, lr_scheduler="constant",
                                  warmup_ratio=0.0, weight_decay=0.0, max_steps=1, per_device_batch_size=4,
                                  gradient_accumulation_steps=1, logging_steps=1, save_steps=100,
                                  deepspeed=None, num_processes=1, max_grad_norm=1.0)
    summary = sft.train(tiny_model, cfg.model, sft_cfg, 0, str(tmp_path / "train.parquet"), None,
                        str(tmp_path / "out"), str(tmp_path / "work"))
    assert summary["global_step"] == 1
    before = AutoModelForCausalLM.from_pretrained(tiny_model)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    # AdamW's first step moves each weight by lr * g / (|g| + eps), i.e. by lr wherever |g| >> eps
    for (name, a), b in zip(before.named_parameters(), after.parameters(), strict=True):
        if a.dim() == 2 and "embed" not in name:  # every entry of a projection gets a gradient
            step = (b.double() - a.double()).abs()
            moved_by_lr = ((step - 1e-6).abs() < 0.25e-6).double().mean().item()
            assert moved_by_lr > 0.9, f"{name}: only {moved_by_lr:.1%} of the weights moved by the learning rate"
    assert next(after.parameters()).dtype == torch.float32  # saved from the fp32 masters
