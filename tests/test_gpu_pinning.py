"""A stage sees only the GPUs its job asked for: one process never takes every visible GPU (the
Trainer would wrap it in nn.DataParallel, TRL's GRPOTrainer would refuse), a CPU job sees none,
torchrun ranks see the job's GPUs and take cuda:LOCAL_RANK. Checked through the CLI, the way the rules call
it, and in the commands the workflow plans."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from sedsft.launch import GPU_STAGES, job_gpus, pin_gpus
from workflow_helpers import REPO, snakemake

def visible_after(stage: str, job: int, env: dict, tmp_path) -> str:
    """CUDA_VISIBLE_DEVICES as the stage sees it when `sedsft <stage> --gpus job` runs it (through
    cli.main, with the stage's own work replaced by a probe that prints it)."""
    code = ("import os, sys\nfrom sedsft import cli\n"
            "probe = lambda args, s: print(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')) or {}\n"
            "cli.STAGES = {name: (probe, options) for name, (_, options) in cli.STAGES.items()}\n"
            "sys.exit(cli.main(sys.argv[1:]))")
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK")}
    result = subprocess.run([sys.executable, "-c", code, stage, "--experiment", "x", "--settings", "{}",
                             "--summary", "s.json", "--gpus", str(job), *REQUIRED[stage]], env={**base, **env},
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    return result.stdout.strip()


REQUIRED = {
    "threshold": ["--base", "b", "--val", "v"],
    "sft": ["--base", "b", "--train", "t", "--out-dir", "o", "--work-dir", "w"],
    "diversity": ["--model", "m", "--samples", "s"],
    "rl": ["--model", "m", "--prompts", "p", "--out-dir", "o", "--work-dir", "w"],
    "generate": ["--model", "m", "--benchmark", "b", "--out", "o"],
}


@pytest.mark.parametrize("stage", GPU_STAGES)
def test_one_process_sees_one_of_the_jobs_gpus(stage, tmp_path):
    # a local machine with eight GPUs, a one-process job that was given GPUs 3 and 5 (Slurm), none
    assert visible_after(stage, 1, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, tmp_path) == "0"
    two = visible_after(stage, 2, {"CUDA_VISIBLE_DEVICES": "3,5"}, tmp_path)
    assert two == ("3,5" if stage == "generate" else "3")
    assert visible_after(stage, 1, {}, tmp_path) == "0"  # nothing set: every GPU would be visible
    gpus = json.loads((tmp_path / "s.json").read_text())["provenance"]["gpus"]
    assert gpus == {"job": 1, "cuda_visible_devices": "0", "seen_by_torch": None}  # the probe imported no torch


def test_a_job_without_gpus_sees_none(tmp_path):
    assert visible_after("sft", 0, {"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path) == ""
    assert visible_after("generate", 0, {}, tmp_path) == ""


def test_torchrun_ranks_see_the_jobs_gpus(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    assert pin_gpus("sft", 4) == "0,1,2,3" == os.environ["CUDA_VISIBLE_DEVICES"]  # rank 3 takes cuda:3 of them


def test_job_gpus_follow_the_config():
    settings = {"sft": {"num_processes": 8},
                "rl": {"use_vllm": True, "vllm_mode": "server", "num_processes": 4, "vllm_tensor_parallel_size": 2},
                "eval": {"backend": "vllm", "tensor_parallel_size": 2}}
    assert [job_gpus(s, settings, True) for s in GPU_STAGES] == [1, 8, 1, 6, 2]
    assert [job_gpus(s, settings, False) for s in GPU_STAGES] == [0] * 5
    assert job_gpus("grade", settings, True) == 0


def test_every_gpu_stage_passes_its_gpus_to_the_command(tmp_path):
    """The planned shell commands of llama3b (GPUs) and tiny (none) hand each GPU stage its count."""
    for exp, expected in (("llama3b", {"threshold": "1", "sft": "8", "diversity": "1", "rl": "8", "generate": "1"}),
                          ("tiny", dict.fromkeys(GPU_STAGES, "0"))):
        plan = snakemake(tmp_path, "-n", "-p", "--forceall", f"results/{exp}/rl_eval.json").stdout
        for stage in GPU_STAGES:
            commands = [line for line in plan.splitlines() if re.search(rf"\bsedsft(\.cli)? {stage} ", line)]
            assert commands, (exp, stage)
            assert all(f"--gpus {expected[stage]} " in c for c in commands), (exp, stage, commands[0])
