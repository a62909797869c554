"""profiles/slurm against a real Slurm: the one-node cluster scripts/slurm_up.sh brings up on a
Debian host as root (slurm-wlm, munge, slurmdbd over mariadb; a fake GPU gres). Every job goes
through the real sbatch, the real jobstep executor inside the job and srun; what each job asked
for and how it ended is read back from the accounting (sacct), not from a record we wrote.

Without root or apt the cluster cannot be brought up: the tests skip, except in CI, where they
fail. (tests/test_slurm_profile.py keeps the fake-command tests of what one node cannot show: a
job over two nodes, GPU counts above the fake gres.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e_checks import assert_same_run_up_to_tau
from micro_run import EXP as MICRO_EXP
from micro_run import write_overlay
from workflow_helpers import REPO, planned_resources, snakemake

PROFILE = REPO / "profiles" / "slurm"
PARTITION, ACCOUNT = "debug", "sedsft"  # scripts/slurm_up.sh's defaults
CLUSTER_ARGS = ("--default-resources", f"slurm_partition={PARTITION}", f"slurm_account={ACCOUNT}")
SACCT_FIELDS = ("JobID", "JobName", "Comment", "Account", "Partition", "State", "ExitCode", "ReqMem", "Timelimit",
                "ReqCPUS", "ReqTRES", "Start", "End")


@pytest.fixture(scope="module")
def cluster():
    """The cluster, up (idempotent: seconds when it already runs, about a minute from nothing)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        reason = "a real Slurm needs root and apt-get here (scripts/slurm_up.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    result = subprocess.run(["bash", str(REPO / "scripts" / "slurm_up.sh")], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout.strip())
    # the executor plugin asks sacctmgr for the user's accounts and runs sacct from PATH
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}


def sacct(name: str) -> list[dict]:
    """Every allocation (not its steps) with this job name (the plugin names a workflow run's jobs
    by its run id), as sacct's accounting database holds it."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "--name", name, "-o", ",".join(SACCT_FIELDS)],
                         check=True, capture_output=True, text=True).stdout
    return [dict(zip(SACCT_FIELDS, line.split("|"))) for line in out.splitlines() if line]


def _all_jobs() -> list[str]:
    return subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "-o", "JobID,JobName,Comment"],
                          check=True, capture_output=True, text=True).stdout.splitlines()


def minutes(timelimit: str) -> int:
    """sacct's Timelimit ([days-]hh:mm:ss) in minutes."""
    days, _, clock = timelimit.rpartition("-")
    h, m, s = map(int, clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


@pytest.mark.slow
def test_micro_tau_through_a_real_slurm_runs_each_job_as_declared_and_makes_the_local_runs_bytes(
        cluster, micro_run, tmp_path):
    """The micro DAG up to tau (tiny task, base model, SFT data, threshold) through sbatch on the
    real cluster: every job COMPLETED in the accounting with the account, partition, memory, time
    and CPUs its rule declares; a second call submits nothing; and the bytes equal the session's
    local run of the same experiment (tests/micro_run.py)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    micro = write_overlay(workdir / "micro.yaml")
    target = f"results/{MICRO_EXP}/sft/threshold.json"
    # the target after a flag (--configfile, which comes first, takes every plain argument after it)
    # and before --default-resources (which would read it as one more resource)
    declared = planned_resources(snakemake(workdir, "--profile", str(PROFILE), target, "-n", "--cores", "1024",
                                           *CLUSTER_ARGS,
                                           configfiles=[micro], env=cluster).stdout)
    before = set(_all_jobs())
    started = time.time()
    snakemake(workdir, "--profile", str(PROFILE), target, "--jobs", "2", *CLUSTER_ARGS, configfiles=[micro],
              env=cluster, timeout=900)
    print(f"micro tau through the real Slurm: {time.time() - started:.0f} s")

    new = [line.split("|") for line in set(_all_jobs()) - before]
    (run_id,) = {name for _, name, comment in new if comment.startswith("rule_")}
    jobs = sacct(run_id)
    by_rule = {}
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(job)
    assert {rule: len(j) for rule, j in by_rule.items()} == {rule: len(j) for rule, j in declared.items()}
    for rule, rule_jobs in by_rule.items():
        (want,) = declared[rule]
        for job in rule_jobs:
            assert (job["State"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
            assert (job["Account"], job["Partition"]) == (ACCOUNT, PARTITION), job
            assert job["ReqMem"] == f"{want['mem_mb']}M", (rule, job, want)
            assert minutes(job["Timelimit"]) == int(want["runtime"]), (rule, job, want)
            assert job["ReqCPUS"] == want["threads"], (rule, job, want)
            assert "gres/gpu" not in job["ReqTRES"], job  # a CPU experiment asks for no GPU
    # a second call has nothing to do and submits nothing
    again = snakemake(workdir, "--profile", str(PROFILE), target, *CLUSTER_ARGS, configfiles=[micro], env=cluster)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert set(_all_jobs()) - before == {"|".join(job) for job in new}
    assert_same_run_up_to_tau(micro_run.results, workdir / "results" / MICRO_EXP)


GPU_SNAKEFILE = """
rule gpu_job:
    output: "gpu.txt"
    resources: gpu=1, mem_mb=500, runtime=5
    shell: "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"

rule two_tasks:
    output: launch="launch.txt", allocation="allocation.json"
    resources: mpi="srun", tasks=2, mem_mb=500, runtime=5
    shell:
        "{python} -c 'import json, os; from sedsft.launch import slurm_allocation; "
        "print(json.dumps(slurm_allocation(os.environ[\\"SLURM_JOB_ID\\"])))' > {output.allocation} && "
        "{python} -m sedsft.launch torchrun --standalone --nproc_per_node 2 -m sedsft.cli sft > {output.launch}"
"""
# stands in for torchrun: prints the command line the launcher gave it
FAKE_TORCHRUN = "#!/bin/sh\necho torchrun \"$@\"\n"


@pytest.mark.slow
def test_a_gpu_rule_gets_the_fake_gpu_and_the_launcher_reads_the_real_allocation(cluster, tmp_path):
    """A gpu=1 rule reaches sbatch as --gpus=1 and its job sees CUDA_VISIBLE_DEVICES=0; a job of
    two tasks on one node (the one-node stand-in for a multi-node SFT) is read by sedsft.launch
    from the real `scontrol show job` (the jobstep executor strips SLURM_*), which runs one
    torchrun --standalone on its one node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(FAKE_TORCHRUN)
    (bin_dir / "torchrun").chmod(0o755)
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE.replace("{python}", sys.executable))
    env = {**cluster, "PATH": os.pathsep.join([str(bin_dir), cluster["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path),
                             "gpu.txt", "launch.txt", "--executor", "slurm", "--jobs", "2", *CLUSTER_ARGS,
                             "--slurm-init-seconds-before-status-checks", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "gpu.txt").read_text().strip() == "CUDA_VISIBLE_DEVICES=0"
    # what the launcher reads of the job from the real scontrol, inside the job
    allocation = json.loads((tmp_path / "allocation.json").read_text())
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    assert allocation == {"nodes": 1, "hosts": [node], "cpus_per_node": 2, "gpus_per_node": 0}
    assert (tmp_path / "launch.txt").read_text().split() == [
        "torchrun", "--standalone", "--nproc_per_node", "2", "-m", "sedsft.cli", "sft"]
    comments = {line.split("|")[2]: line for line in _all_jobs()}
    gpu_job = next(line for comment, line in comments.items() if comment.startswith("rule_gpu_job"))
    (job,) = [j for j in sacct(gpu_job.split("|")[1]) if j["Comment"].startswith("rule_gpu_job")][-1:]
    assert "gres/gpu=1" in job["ReqTRES"] and job["State"] == "COMPLETED", job
