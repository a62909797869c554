"""Kill -9 anything, lose nothing: SFT, diversity sampling and eval generation killed through
Snakemake and run again the way a user would (README "Reliability"), against an uninterrupted
run of the same micro `tiny`; and which artifacts two runs in two directories share bit for bit.

One uninterrupted run (the module fixture) provides the upstream artifacts and the references;
each test then deletes one stage's outputs, runs that stage under `snakemake` in its own process
group, kills the group with SIGKILL once a checkpoint or some samples are on disk, and re-runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from test_workflow_e2e import MICRO
from workflow_helpers import snakemake, snakemake_command

pytestmark = pytest.mark.slow

EXP = "micro"
SFT_STEPS, SAVE_STEPS = 12, 4  # 8 steps per epoch: the resumed run crosses an epoch boundary
SETTINGS = {
    **MICRO,
    "model": {"tiny": {**MICRO["model"]["tiny"], "pretrain_steps": 4}},  # any base model will do
    "data": {"sft": {"train_rows": 64, "val_rows": 8}},
    "threshold": {"tau": 0.5},  # fixed: no calibration
    "sft": {**MICRO["sft"], "max_steps": SFT_STEPS, "save_steps": SAVE_STEPS, "logging_steps": 2},
    # one prompt per generation batch (4 samples each), eight prompts
    "diversity": {**MICRO["diversity"], "num_prompts": 6, "batch_size": 4, "embedding_model": "none"},
    # two prompts per batch (2 samples each) over the tiny task's 12 test problems
    "eval": {**MICRO["eval"], "batch_size": 4, "per_benchmark": {"tiny": {"n": 2, "temperature": 1.0, "top_p": 1.0}}},
}
SFT = f"results/{EXP}/sft"
DIVERSITY = f"results/{EXP}/sft/diversity.json"
GENERATIONS = f"results/{EXP}/eval/sft/tiny.jsonl"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(workdir, configfile, reference results folder): one uninterrupted run up to the SFT
    model, its diversity samples and the tiny task's eval generations."""
    workdir = tmp_path_factory.mktemp("reliability")
    config = workdir / "micro.yaml"
    config.write_text(yaml.safe_dump({"experiments": {EXP: SETTINGS}}))
    snakemake(workdir, "--cores", "2", f"{SFT}/train.json", DIVERSITY, GENERATIONS, configfiles=[config])
    reference = workdir / "reference"
    shutil.copytree(workdir / "results" / EXP, reference, ignore=shutil.ignore_patterns("checkpoints"))
    return workdir, config, reference


def kill_when(reference, target: str, ready) -> None:
    """Run `snakemake <target>` in its own process group; SIGKILL the group once ready()."""
    workdir, config, _ = reference
    command = snakemake_command(workdir, "--cores", "2", target, configfiles=[config])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    try:
        while not ready():
            assert process.poll() is None, f"{target}: finished or died before it could be killed"
            assert time.time() < deadline, f"{target}: never got ready to be killed"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_again(reference, target: str, show_lock: bool = False) -> None:
    """What README "Reliability" tells a user to type after a kill: unlock, then the same command
    with --rerun-incomplete (the profiles in profiles/ set it already)."""
    workdir, config, _ = reference
    if show_lock:  # the killed Snakemake left its lock behind: the same command refuses, naming --unlock
        locked = snakemake(workdir, "--cores", "2", target, configfiles=[config], check=False)
        assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(workdir, "--unlock", target, configfiles=[config])
    snakemake(workdir, "--cores", "2", target, "--rerun-incomplete", configfiles=[config])


def remove(workdir: Path, *paths: str) -> None:
    for path in paths:
        target = workdir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def load(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- generation


def test_killed_diversity_sampling_resumes_to_the_same_bytes(reference):
    workdir, _, ref = reference
    stage = f"results/{EXP}/sft"
    outputs = [f"{stage}/{name}" for name in ("diversity.json", "diversity_samples.jsonl",
                                              "diversity_per_prompt.jsonl", "diversity_pass_at_k.png",
                                              "diversity_metrics.png")]
    remove(workdir, *outputs)
    partial = workdir / f"{stage}/diversity_samples.jsonl.partial"
    kill_when(reference, DIVERSITY, lambda: lines(partial) >= 2)
    # killed mid-sampling: no declared output exists, so none can pass for finished
    assert not any((workdir / output).exists() for output in outputs)
    assert lines(partial) >= 2

    run_again(reference, DIVERSITY)
    summary = load(workdir / DIVERSITY)
    assert summary["generation"]["resumed_prompts"] >= 2  # continued, not restarted
    for name in ("diversity_samples.jsonl", "diversity_per_prompt.jsonl"):
        assert (workdir / stage / name).read_bytes() == (ref / "sft" / name).read_bytes(), name
    assert not partial.exists() and not Path(f"{partial}.json").exists()


def test_killed_eval_generation_resumes_to_the_same_bytes(reference):
    workdir, _, ref = reference
    outputs = [GENERATIONS, GENERATIONS.replace(".jsonl", ".generation.json")]
    remove(workdir, *outputs)
    partial = workdir / f"{GENERATIONS}.partial"
    kill_when(reference, GENERATIONS, lambda: lines(partial) >= 2)
    assert not any((workdir / output).exists() for output in outputs)

    run_again(reference, GENERATIONS)
    assert load(workdir / outputs[1])["resumed_prompts"] >= 2
    assert (workdir / GENERATIONS).read_bytes() == (ref / "eval" / "sft" / "tiny.jsonl").read_bytes()
    assert not partial.exists() and not Path(f"{partial}.json").exists()


# ----------------------------------------------------------------------------- SFT


def losses(summary: dict) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in summary["log_history"] if "loss" in row]


def assert_same_sft_as_the_uninterrupted_run(workdir: Path, ref: Path) -> dict:
    """Bit-equal on CPU: the resume restores weights, optimizer, scheduler, RNG and data order."""
    summary, expected = load(workdir / SFT / "train.json"), load(ref / "sft" / "train.json")
    assert summary["global_step"] == expected["global_step"] == SFT_STEPS
    assert losses(summary) == losses(expected) and len(losses(summary)) == SFT_STEPS // 2
    assert summary["train_loss"] == expected["train_loss"]
    assert (workdir / SFT / "model" / "model.safetensors").read_bytes() == \
        (ref / "sft" / "model" / "model.safetensors").read_bytes()
    metrics = [json.loads(line) for line in (workdir / SFT / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in metrics if "loss" in m] == losses(expected)  # every step, once
    return summary


def test_killed_sft_resumes_from_its_last_checkpoint(reference):
    workdir, _, ref = reference
    outputs = [f"{SFT}/model", f"{SFT}/train.json", f"{SFT}/metrics.jsonl"]
    remove(workdir, *outputs, f"{SFT}/checkpoints")
    first = workdir / SFT / "checkpoints" / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json"
    kill_when(reference, f"{SFT}/train.json", first.exists)
    assert not any((workdir / output).exists() for output in outputs)

    run_again(reference, f"{SFT}/train.json", show_lock=True)
    summary = assert_same_sft_as_the_uninterrupted_run(workdir, ref)
    step = int(summary["resumed_from"].rsplit("-", 1)[1])
    assert SAVE_STEPS <= step < SFT_STEPS
    assert f"resuming from {summary['resumed_from']}" in (workdir / f"results/{EXP}/logs/sft.log").read_text()


def test_sft_killed_after_its_last_checkpoint_saves_it_without_training(reference):
    """The Trainer saves a checkpoint at max_steps; resumed from it, transformers would train one
    step more (global_step max_steps + 1). A kill between that checkpoint and the model's save
    is simulated by removing the outputs."""
    workdir, config, ref = reference
    assert (workdir / SFT / "checkpoints" / f"checkpoint-{SFT_STEPS}" / "trainer_state.json").exists()
    remove(workdir, f"{SFT}/model", f"{SFT}/train.json", f"{SFT}/metrics.jsonl")
    snakemake(workdir, "--cores", "2", f"{SFT}/train.json", configfiles=[config])
    summary = assert_same_sft_as_the_uninterrupted_run(workdir, ref)
    assert summary["resumed_from"].endswith(f"checkpoint-{SFT_STEPS}")
    assert "is the run's last step: saving it as the model without training" in \
        (workdir / f"results/{EXP}/logs/sft.log").read_text()


# ----------------------------------------------------------------------------- determinism

# Trainer and telemetry fields that measure time, the provenance's run time, and its checkout
# (which moves when a commit lands between two runs, as on a shared working tree)
VOLATILE_KEYS = {"seconds", "train_runtime", "train_samples_per_second", "train_steps_per_second", "tokens_per_s",
                 "git_revision"}


def without_volatile(value):
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def test_two_runs_in_two_directories_are_bit_identical_but_for_timings_and_revision(reference, tmp_path):
    """The tiny task, the base model, the SFT data and a short SFT, run again in another directory
    (same machine, same checkout):

    - bit-identical: the tiny task's JSONL files, the base model folder (weights, tokenizer,
      config), sft_train/sft_val.parquet, the SFT model folder (weights, config, tokenizer,
      training_args.bin);
    - identical but for timings and the checkout: every JSON summary and sft/metrics.jsonl.
      Provenance `seconds`, the Trainer's train_runtime / train_samples_per_second /
      train_steps_per_second and the telemetry's tokens_per_s measure time; provenance
      `git_revision` names the checkout (commit, "-dirty" with uncommitted edits), so it differs
      between runs of different code. Nothing else differs.

    Logs and benchmarks/*.tsv hold timings by design. Generations (diversity samples, eval
    generations) are seeded per batch and equal to an uninterrupted run's bytes: see the kill
    tests above. This holds on CPU; GPU kernels (bf16 reductions, atomics, vLLM's batching) are
    not bit-reproducible, and no claim is made there."""
    workdir, config, ref = reference
    snakemake(tmp_path, "--cores", "2", f"{SFT}/train.json", configfiles=[config])
    again = tmp_path / "results" / EXP

    bit_identical = [f"data/tiny/{split}.jsonl" for split in ("pretrain", "sft", "rl", "test")]
    bit_identical += ["data/sft_train.parquet", "data/sft_val.parquet"]
    for folder in ("base/model", "sft/model"):
        bit_identical += [str(p.relative_to(again)) for p in sorted((again / folder).iterdir())]
    assert {"base/model/model.safetensors", "sft/model/model.safetensors"} <= set(bit_identical)
    for name in bit_identical:
        assert (again / name).read_bytes() == (ref / name).read_bytes(), name

    summaries = ["data/tiny/summary.json", "base/summary.json", "data/sft_data.json", "sft/threshold.json",
                 "sft/train.json"]
    for name in summaries:
        first, second = load(ref / name), load(again / name)
        assert without_volatile(second) == without_volatile(first), name
        assert first["provenance"]["seconds"] >= 0
    metrics = [[json.loads(line) for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
               for run in (ref, again)]
    assert without_volatile(metrics[0]) == without_volatile(metrics[1])
