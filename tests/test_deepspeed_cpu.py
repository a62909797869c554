"""SFT under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks (gloo) through torchrun, as the sft rule
launches it: the loss history and the saved weights match the 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sedsft import config as C
from workflow_helpers import REPO

pytestmark = pytest.mark.slow


def run_cli(*args, ranks: int | None = None, cwd=None):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
                if ranks else [sys.executable])
    result = subprocess.run([*launcher, "-m", "sedsft.cli", *args], capture_output=True, text=True, cwd=cwd,
                            timeout=900, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("ds")
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    settings["model"]["tiny"].update(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                     vocab_size=400, pretrain_problems=64, pretrain_steps=0, sft_problems=40,
                                     rl_problems=4, test_problems=4)
    settings["data"]["sft"].update(train_rows=48, val_rows=8)
    common = ["--experiment", "tiny", "--settings", json.dumps(settings)]
    run_cli("tiny-task", *common, "--out-dir", str(work / "task"), "--summary", str(work / "task.json"))
    run_cli("base-model", *common, "--task-dir", str(work / "task"), "--out-dir", str(work / "base"),
            "--summary", str(work / "base.json"))
    run_cli("sft-data", *common, "--source", str(work / "task" / "sft.jsonl"), "--tokenizer", str(work / "base"),
            "--train-out", str(work / "train.parquet"), "--val-out", str(work / "val.parquet"),
            "--summary", str(work / "data.json"))
    (work / "threshold.json").write_text(json.dumps({"tau": 0.9}))
    return work, settings


def train(prepared, name: str, deepspeed: str | None, ranks: int):
    work, settings = prepared
    sft = {**settings["sft"], "max_steps": 3, "logging_steps": 1, "deepspeed": deepspeed, "num_processes": ranks,
           # the same global batch of 8 sequences whatever the number of ranks
           "per_device_batch_size": 8 // ranks, "gradient_accumulation_steps": 1, "learning_rate": 1e-3}
    run_cli("sft", "--experiment", "tiny", "--settings", json.dumps({**settings, "sft": sft}),
            "--base", str(work / "base"), "--train", str(work / "train.parquet"),
            "--threshold", str(work / "threshold.json"), "--out-dir", str(work / name),
            "--work-dir", str(work / f"{name}_ckpt"), "--summary", str(work / f"{name}.json"),
            ranks=ranks if (deepspeed or ranks > 1) else None)
    with open(work / f"{name}.json") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def single(prepared):
    return train(prepared, "single", None, 1)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_on_two_cpu_ranks_matches_one_process(prepared, single, stage):
    import torch
    from transformers import AutoModelForCausalLM

    sharded = train(prepared, stage, stage, 2)
    assert sharded["world_size"] == 2 and sharded["deepspeed"] == stage
    # ZeRO-3 partitions the LM head, so the chunked loss goes through the module (checkpointed)
    assert (single["loss_impl"], sharded["loss_impl"]) == ("fused", "fused" if stage == "zero2" else "checkpointed")
    losses = lambda s: [h["loss"] for h in s["log_history"] if "loss" in h]  # noqa: E731
    assert len(losses(single)) == 3
    assert losses(sharded) == pytest.approx(losses(single), rel=1e-4)
    work = prepared[0]
    reference = AutoModelForCausalLM.from_pretrained(work / "single")
    reloaded = AutoModelForCausalLM.from_pretrained(work / stage)  # a plain HF folder, gathered from shards
    for (name, a), b in zip(reference.named_parameters(), reloaded.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
