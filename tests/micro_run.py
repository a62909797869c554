"""The micro `tiny` experiment the slow workflow tests share, and the one run of its whole DAG
that they read (conftest's `micro_run` fixture, once per session, shared by the pytest-xdist workers):

- tests/test_workflow_e2e.py checks every artifact of the run and the re-run semantics on it;
- tests/test_reliability.py kills stages in a copy of it and compares the re-runs' bytes with it;
- tests/test_slurm_cluster.py runs its stages up to tau again through a real Slurm, in
  another folder, and compares the bytes with it.

The run is what a new user gets: a `git clone` of the repository in an empty folder (nothing
beside it), with the Hugging Face Hub offline."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from workflow_helpers import fresh_clone, offline_env, snakemake

EXP = "micro"
SFT_STEPS, SAVE_STEPS = 12, 4  # 64 rows at batch 8: 8 steps per epoch, so a resumed run crosses an epoch
MICRO = {
    "extends": "tiny",
    "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                       "vocab_size": 400, "pretrain_problems": 400, "pretrain_steps": 40,
                       "sft_problems": 80, "rl_problems": 24, "test_problems": 12}},
    "data": {"sft": {"train_rows": 64, "val_rows": 24}},
    "threshold": {"max_sequences": 24},
    "sft": {"max_steps": SFT_STEPS, "per_device_batch_size": 8, "logging_steps": 2, "save_steps": SAVE_STEPS},
    # one prompt per generation batch (4 samples each): a kill can land between prompts
    "diversity": {"num_prompts": 3, "prompts_per_benchmark": 1, "num_samples": 4, "max_new_tokens": 24,
                  "batch_size": 4},
    "rl": {"max_steps": 2, "prompts_per_step": 4, "mini_batch_prompts": 4, "num_generations": 2,
           "per_device_batch_size": 8, "max_completion_length": 16, "save_steps": 1},
    # the tiny task sampled twice per problem, two problems per batch (six batches)
    "eval": {"limit": 2, "max_new_tokens": 24, "batch_size": 4,
             "per_benchmark": {"tiny": {"n": 2, "temperature": 1.0, "top_p": 1.0}}},
}
TARGET = f"results/{EXP}/rl_eval.json"


@dataclass(frozen=True)
class MicroRun:
    clone: Path  # the fresh clone the run happened in (its own Snakefile, config.yaml, src/)
    config: Path  # the overlay that defines the micro experiment
    seconds: float

    @property
    def results(self) -> Path:
        return self.clone / "results" / EXP


def write_overlay(path: Path, settings: dict = MICRO) -> Path:
    path.write_text(yaml.safe_dump({"experiments": {EXP: settings}}))
    return path


def in_clone(clone: Path, *args: str, configfiles=(), timeout: int = 1200):
    """`snakemake <args>` typed in the clone: its own Snakefile, config and package, offline."""
    return snakemake(clone, *args, configfiles=configfiles, repo=clone, env=offline_env(clone), timeout=timeout)


def shared_micro_run(folder: Path) -> MicroRun:
    """The micro run in `folder`: made there (a fresh clone of the repository, then the whole DAG)
    by the first caller, read back by the others (the caller holds a lock around this)."""
    done = folder / "run.json"
    if done.exists():
        record = json.loads(done.read_text())
        return MicroRun(Path(record["clone"]), Path(record["config"]), record["seconds"])
    if folder.exists():  # an earlier caller's run failed: its error was reported with it
        raise AssertionError(f"the micro run in {folder} failed earlier in this session (see that test's error)")
    folder.mkdir(parents=True)
    clone = fresh_clone(folder)
    config = write_overlay(folder / "micro.yaml")
    started = time.time()
    # about 4.5 minutes on 2 quiet cores, 14.5 measured while a 5-seed run shared them: the limit
    # only stops a hang
    in_clone(clone, "--cores", "2", TARGET, configfiles=[config], timeout=3600)
    run = MicroRun(clone, config, time.time() - started)
    done.write_text(json.dumps({"clone": str(run.clone), "config": str(run.config), "seconds": run.seconds}))
    return run
