"""Kill -9 anything, lose nothing: SFT, diversity sampling and eval generation killed through
Snakemake and run again the way a user would (README "Reliability"), against the uninterrupted
run of the micro `tiny` (the session's `micro_run`, tests/micro_run.py).

Each test works in a copy of that run: it deletes one stage's outputs, runs that stage under
`snakemake` in its own process group, kills the group with SIGKILL once a checkpoint or some
samples are on disk, re-runs, and compares the bytes with the uninterrupted run, which was made
in another folder. (Two runs up to tau in two folders, one local and one through the Slurm
profile, are compared in tests/test_slurm_cluster.py.)
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

from e2e_checks import same_folder
from micro_run import EXP, SAVE_STEPS, SFT_STEPS, write_overlay
from workflow_helpers import snakemake, snakemake_command

pytestmark = pytest.mark.slow

SFT = f"results/{EXP}/sft"
DIVERSITY = f"results/{EXP}/sft/diversity.json"
GENERATIONS = f"results/{EXP}/eval/sft/tiny.jsonl"


@pytest.fixture(scope="module")
def reference(micro_run, tmp_path_factory):
    """(workdir, configfile, reference results folder): a copy of the uninterrupted micro run
    (modification times kept, so Snakemake sees it finished) to kill stages in, and the run."""
    workdir = tmp_path_factory.mktemp("reliability")
    shutil.copytree(micro_run.results, workdir / "results" / EXP)
    config = write_overlay(workdir / "micro.yaml")
    return workdir, config, micro_run.results


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
    # the whole model folder (weights, config, tokenizer, training_args.bin), trained in this
    # folder in two pieces, is the uninterrupted run's, made in another folder
    files = same_folder(ref, workdir / "results" / EXP, "sft/model")
    assert "sft/model/model.safetensors" in files and "sft/model/training_args.bin" in files
    for name in files:
        assert (workdir / "results" / EXP / name).read_bytes() == (ref / name).read_bytes(), name
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
