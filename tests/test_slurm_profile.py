"""profiles/slurm: the micro `tiny` DAG submitted through snakemake-executor-plugin-slurm to a
fake Slurm (sbatch runs the job here, sacct reports its exit status); the GPUs, CPUs, memory and
time each job asks for, as derived from the config; and sedsft.launch across Slurm nodes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from e2e_checks import assert_same_run_up_to_tau
from micro_run import EXP as MICRO_EXP
from micro_run import MICRO, write_overlay
from workflow_helpers import REPO, snakemake

PROFILE = REPO / "profiles" / "slurm"
EXP = "micro_slurm"
# the micro experiment, smaller still: the fewest benchmarks the config allows (the three with
# their own sampling, plus tiny's test set), fewer steps and tokens; each job is mostly start-up
SMALL = {**MICRO,
         "model": {"tiny": {**MICRO["model"]["tiny"], "pretrain_steps": 10}},
         "sft": {**MICRO["sft"], "max_steps": 2},
         "diversity": {**MICRO["diversity"], "benchmarks": ["tiny"], "num_prompts": 2, "num_samples": 2,
                       "max_new_tokens": 8},
         "rl": {**MICRO["rl"], "max_steps": 1},
         "eval": {**MICRO["eval"], "benchmarks": ["aime24", "aime25", "amc23"], "limit": 1, "max_new_tokens": 8}}

# Fake Slurm commands, written into tmp_path and put first on PATH. They keep their state in
# $FAKE_SLURM (jobs.tsv: id, name; <id>.rc once a job ended; *.jsonl: the argv of every call).
FAKE = {
    "sbatch": r'''
import json, os, subprocess, sys
state = os.environ["FAKE_SLURM"]
argv = sys.argv[1:]
with open(f"{state}/sbatch.jsonl", "a") as fh:
    fh.write(json.dumps(argv) + "\n")
value = lambda flag: argv[argv.index(flag) + 1]
payload = next(a[len("--wrap="):] for a in argv if a.startswith("--wrap="))
with open(f"{state}/jobs.tsv", "a+") as fh:  # one snakemake submits from several threads
    import fcntl
    fcntl.flock(fh, fcntl.LOCK_EX)
    fh.seek(0)
    jobid = str(1000 + len(fh.readlines()))
    fh.write(f"{jobid}\t{value('--job-name')}\n")
log = value("--output").replace("%j", jobid)
os.makedirs(os.path.dirname(log), exist_ok=True)
env = {**os.environ, "SLURM_JOB_ID": jobid, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
       "SLURM_NODEID": "0"}
rc = f"{state}/{jobid}.rc"
subprocess.Popen(["/bin/sh", "-c", 'sh -c "$1"; echo $? > "$2.tmp" && mv "$2.tmp" "$2"', "sh", payload, rc],
                 stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                 cwd=value("-D"), env=env, start_new_session=True)
print(jobid)
''',
    "sacct": r'''
import os, sys
state = os.environ["FAKE_SLURM"]
name = sys.argv[sys.argv.index("--name") + 1] if "--name" in sys.argv else None
if not os.path.exists(f"{state}/jobs.tsv"):
    sys.exit(0)
for line in open(f"{state}/jobs.tsv"):
    jobid, job_name = line.split()
    if name not in (None, job_name):
        continue
    try:
        status = "COMPLETED" if open(f"{state}/{jobid}.rc").read().strip() == "0" else "FAILED"
    except FileNotFoundError:
        status = "RUNNING"
    print(f"{jobid}|{status}")
''',
    "squeue": "import subprocess, sys; sys.exit(subprocess.call(['sacct'] + sys.argv[1:]))",
    "sacctmgr": "print('testacct')",
    "sinfo": "",
    "srun": r'''
import json, os, sys
with open(os.environ["FAKE_SLURM"] + "/srun.jsonl", "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
args, valued = sys.argv[1:], {"-n", "-N", "-c", "--ntasks", "--nodes", "--cpus-per-task", "--gpus"}
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in valued else args[1:]
os.execvp(args[0], args)
''',
}


def fake_slurm(folder: Path) -> dict:
    """The environment of a run against the fake Slurm: its commands first on PATH."""
    bin_dir, state = folder / "bin", folder / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in FAKE.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {"PATH": path, "FAKE_SLURM": str(state)}


def calls(folder: Path, command: str) -> list[list[str]]:
    with open(folder / "state" / f"{command}.jsonl") as fh:
        return [json.loads(line) for line in fh]


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name value`, `--name=value` or `-n value` in an argv, else None."""
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


# ------------------------------------------------------------------ the submission (slow)


@pytest.mark.slow
def test_micro_tau_through_the_slurm_profile_makes_the_local_runs_bytes(micro_run, tmp_path, monkeypatch):
    """The micro DAG up to tau (tiny task, base model, SFT data, threshold) through sbatch:
    submission, the jobstep executor, the sacct status, a re-run; and the same bytes as the
    session's local run of the same experiment in another folder (tests/micro_run.py). The later
    stages' resources are checked from dry runs below; each job costs two Snakemake start-ups
    and the plugin's status polling (its interval grows by 10 s while no job ends), so the
    submission stops at tau."""
    for key, value in fake_slurm(tmp_path).items():
        monkeypatch.setenv(key, value)
    workdir = tmp_path / "work"
    workdir.mkdir()
    micro = write_overlay(workdir / "micro.yaml")
    target = f"results/{MICRO_EXP}/sft/threshold.json"
    started = time.time()
    snakemake(workdir, "--profile", str(PROFILE), "--jobs", "2",
              "--default-resources", "slurm_partition=testpart", "slurm_account=testacct",
              "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
              target, configfiles=[micro], timeout=900)
    print(f"micro tau through fake Slurm: {time.time() - started:.0f} s")

    submitted = calls(tmp_path, "sbatch")
    rules = {}
    for argv in submitted:
        rule = re.match(r"rule_([a-z_]+?)(_wildcards_.*)?$", flag(argv, "--comment")).group(1)
        rules.setdefault(rule, []).append(argv)
    # every job of the target went through sbatch, once
    assert {rule: len(argvs) for rule, argvs in rules.items()} == dict.fromkeys(
        ["tiny_task", "base_model", "sft_data", "threshold"], 1)
    for rule, argvs in rules.items():
        for argv in argvs:
            assert flag(argv, "-p") == "testpart" and flag(argv, "-A") == "testacct", argv
            # a CPU experiment: no GPU anywhere; memory, time and CPUs as the rules derive them
            assert not any(a.startswith(("--gpus", "--gres")) for a in argv), argv
            assert int(flag(argv, "--mem")) >= 2000 and int(flag(argv, "-t")) >= 10, argv
    (threshold,) = rules["threshold"]
    assert (flag(threshold, "--mem"), flag(threshold, "-t"), flag(threshold, "--cpus-per-task")) == ("4000", "20", "2")
    assert flag(rules["tiny_task"][0], "--cpus-per-task") == "1"
    # inside each job the jobstep executor ran the rule through srun, on one node, without GPUs
    steps = calls(tmp_path, "srun")
    assert len(steps) == len(submitted)
    assert all(flag(s, "--nodes") == "1" and not any(a.startswith("--gpus") for a in s) for s in steps)
    # and a second submission has nothing to do
    # the target before --default-resources, which would read it as one more resource (and after a
    # flag: --configfile, which comes first here, takes every plain argument after it)
    again = snakemake(workdir, "--profile", str(PROFILE), target, "--default-resources",
                      "slurm_partition=testpart", "slurm_account=testacct", configfiles=[micro])
    assert "Nothing to be done" in again.stdout + again.stderr
    assert len(calls(tmp_path, "sbatch")) == len(submitted)
    # a run through Slurm in one folder and a local run in another: the same bytes
    assert_same_run_up_to_tau(micro_run.results, workdir / "results" / MICRO_EXP)


def test_micro_jobs_after_sft_ask_for_what_their_rules_derive(tmp_path):
    plan = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n", f"results/{EXP}/rl_eval.json",
                                       configfiles=[micro_config(tmp_path)]).stdout)
    (grade, *_) = plan["grade"]
    assert (grade["mem_mb"], grade["runtime"]) == ("4000", "20")
    (sft,) = plan["sft"]
    assert (sft["mem_mb"], sft["runtime"]) == ("8000", "60")
    assert len(plan["generate"]) == len(plan["grade"]) == 8 and len(plan["eval_report"]) == 2
    assert all(int(job.get("gpu", 0)) == 0 for jobs in plan.values() for job in jobs)


def micro_config(folder: Path) -> Path:
    path = folder / "micro.yaml"
    path.write_text(yaml.safe_dump({"experiments": {EXP: SMALL}}))
    return path


# ------------------------------------------------------------------ resources from the config (dry runs)


def planned_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each planned job]} from a dry run's job listing."""
    plan: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=\[)", output):
        rule = re.search(r"^rule (\w+):", block, flags=re.MULTILINE)
        resources = re.search(r"^\s+resources: (.+)$", block, flags=re.MULTILINE)
        if rule and resources:
            pairs = dict(item.split("=", 1) for item in resources.group(1).split(", "))
            plan.setdefault(rule.group(1), []).append(pairs)
    return plan


def gpus_of(plan: dict, rule: str) -> set[int]:
    return {int(job.get("gpu", 0)) for job in plan[rule]}


def test_llama3b_jobs_ask_for_the_gpus_its_config_uses(tmp_path):
    plan = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n",
                                       "results/llama3b/rl_eval.json").stdout)
    # sft and rl: 8 ranks; vLLM evaluation: tensor parallel 1; threshold and diversity: one GPU
    assert (gpus_of(plan, "sft"), gpus_of(plan, "rl")) == ({8}, {8})
    assert gpus_of(plan, "generate") == gpus_of(plan, "threshold") == gpus_of(plan, "diversity") == {1}
    for rule in ("sft_data", "rl_prompts", "benchmark_data", "grade", "eval_report"):
        assert gpus_of(plan, rule) == {0}, rule
    (sft,) = plan["sft"]
    assert (sft["mem_mb"], sft["runtime"]) == ("256000", "1440")
    assert sft["slurm_partition"] == sft["slurm_account"] == "CHANGE_ME"  # the profile's placeholders


def test_server_mode_and_tensor_parallel_add_gpus(tmp_path):
    overlay = tmp_path / "server.yaml"
    overlay.write_text(yaml.safe_dump({"experiments": {"llama3b": {
        "rl": {"vllm_mode": "server", "num_processes": 4, "vllm_tensor_parallel_size": 2},
        "eval": {"tensor_parallel_size": 4}}}}))
    plan = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n", "results/llama3b/rl_eval.json",
                                       configfiles=[overlay]).stdout)
    assert gpus_of(plan, "rl") == {6}  # 4 policy ranks + a 2-GPU rollout server
    assert gpus_of(plan, "generate") == {4}


def test_tiny_asks_for_no_gpu_and_tiny_gpu_for_one(tmp_path):
    tiny = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n",
                                       "results/tiny/rl_eval.json").stdout)
    assert all(gpus_of(tiny, rule) == {0} for rule in tiny)
    assert tiny["sft"][0]["mem_mb"] == "8000"
    tiny_gpu = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n",
                                           "results/tiny_gpu/rl_eval.json").stdout)
    assert gpus_of(tiny_gpu, "sft") == gpus_of(tiny_gpu, "rl") == gpus_of(tiny_gpu, "generate") == {1}
    assert gpus_of(tiny_gpu, "tiny_task") == {0}


def test_the_local_profile_plans(tmp_path):
    result = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "local"), "-n", "results/tiny/rl_eval.json")
    assert "rule sft:" in result.stdout


def test_no_default_profile_is_shipped():
    # Snakemake loads profiles/default by itself, and its set-resources would replace the
    # --profile's (DESIGN: measured)
    assert not (REPO / "profiles" / "default").exists()


# ------------------------------------------------------------------ sedsft.launch across nodes


def test_launch_rewrites_standalone_for_one_node_of_several():
    from sedsft.launch import multinode_torchrun

    argv = ["torchrun", "--standalone", "--nproc_per_node", "8", "-m", "sedsft.cli", "sft", "--x", "1"]
    assert multinode_torchrun(argv, 2, 1, "node-a:29500", "77") == [
        "torchrun", "--nnodes", "2", "--node_rank", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
        "node-a:29500", "--rdzv_id", "77", "--nproc_per_node", "8", "-m", "sedsft.cli", "sft", "--x", "1"]


# A 2-node job as the Slurm controller knows it; the fake commands below answer from it, not from
# the environment (which the jobstep executor strips)
JOB = {"id": "42", "nodelist": "gpu[07-08]", "hosts": ["gpu07", "gpu08"], "cpus": 64, "gpus": 16}
FAKE_LAUNCH = {
    "torchrun": "import json, os, sys\nopen(os.environ['RECORD'] + '/torchrun.jsonl', 'a').write("
                "json.dumps({'argv': sys.argv[1:], 'node': os.environ.get('SLURM_NODEID')}) + '\\n')",
    "scontrol": f"""import sys
args = sys.argv[1:]
if args[:2] == ['show', 'hostnames']:
    print('\\n'.join({{{JOB['nodelist']!r}: {JOB['hosts']!r}, 'gpu07': ['gpu07']}}[args[2]]))
elif args[:3] == ['show', 'job', '--oneliner'] and args[3] == {JOB['id']!r}:
    print('JobId={JOB['id']} JobName=sft JobState=RUNNING NumNodes=2 NumCPUs={JOB['cpus']} NumTasks=2 '
          'CPUs/Task=32 TRES=cpu={JOB['cpus']},mem=500G,node=2,billing={JOB['cpus']},gres/gpu={JOB['gpus']} '
          'NodeList={JOB['nodelist']} BatchHost=gpu07')
elif args[:3] == ['show', 'job', '--oneliner'] and args[3] == '5':
    print('JobId=5 JobName=sft JobState=RUNNING NumNodes=1 NumCPUs=8 NumTasks=1 TRES=cpu=8,node=1 NodeList=gpu07')
else:
    sys.exit('scontrol: unexpected ' + ' '.join(args))
""",
    # one task per node, one after the other, each with the SLURM_NODEID srun gives its tasks
    "srun": ("import json, os, subprocess, sys\nargs = sys.argv[1:]\n"
             "open(os.environ['RECORD'] + '/srun.jsonl', 'a').write(json.dumps(args) + '\\n')\n"
             "nodes = int(next(a.split('=')[1] for a in args if a.startswith('--nodes=')))\n"
             "while args[0].startswith('-'):\n    args = args[1:]\n"
             "sys.exit(max(subprocess.call(args, env={**os.environ, 'SLURM_NODEID': str(i), 'SLURM_JOB_ID': "
             f"{JOB['id']!r}}}) for i in range(nodes)))"),
}


def fake_launch_commands(tmp_path) -> dict:
    """PATH and RECORD for fake torchrun/srun/scontrol that record their calls in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKE_LAUNCH.items():
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SEDSFT_"))}
    return {**clean, "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
            "RECORD": str(tmp_path)}


def recorded(tmp_path, command: str) -> list:
    path = tmp_path / f"{command}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def launch(tmp_path, env: dict) -> list[dict]:
    """Run `python -m sedsft.launch torchrun ...` with the fake commands; the torchrun calls."""
    command = [sys.executable, "-m", "sedsft.launch", "torchrun", "--standalone", "--nproc_per_node", "4",
               "-m", "sedsft.cli", "sft", "--experiment", "x"]
    subprocess.run(command, env={**fake_launch_commands(tmp_path), **env}, check=True, timeout=60)
    return recorded(tmp_path, "torchrun")


def test_launch_outside_slurm_or_on_one_node_runs_torchrun_standalone(tmp_path):
    for env in ({}, {"SLURM_JOB_ID": "5"}):
        (call,) = launch(tmp_path, env)
        assert call["argv"][:3] == ["--standalone", "--nproc_per_node", "4"]
        (tmp_path / "torchrun.jsonl").unlink()
    assert not recorded(tmp_path, "srun")


def assert_one_torchrun_per_node(tmp_path, torchruns: list[dict]) -> None:
    assert [t["node"] for t in torchruns] == ["0", "1"]
    for rank, call in enumerate(t["argv"] for t in torchruns):
        assert "--standalone" not in call
        assert flag(call, "--nnodes") == "2" and flag(call, "--node_rank") == str(rank)
        assert flag(call, "--rdzv_backend") == "c10d" and flag(call, "--rdzv_endpoint") == "gpu07:29500"
        assert flag(call, "--rdzv_id") == JOB["id"] and flag(call, "--nproc_per_node") == "4"
        assert call[-5:] == ["-m", "sedsft.cli", "sft", "--experiment", "x"]
    (srun,) = recorded(tmp_path, "srun")
    # each node's task gets that node's CPUs and GPUs (the job's totals over its nodes)
    assert flag(srun, "--nodes") == flag(srun, "--ntasks") == "2" and flag(srun, "--ntasks-per-node") == "1"
    assert flag(srun, "--cpus-per-task") == str(JOB["cpus"] // 2)
    assert flag(srun, "--gpus-per-node") == str(JOB["gpus"] // 2)


def test_launch_in_a_two_node_job_runs_one_torchrun_per_node(tmp_path):
    # only the job id, as the jobstep executor leaves it: the allocation comes from scontrol
    assert_one_torchrun_per_node(tmp_path, launch(tmp_path, {"SLURM_JOB_ID": JOB["id"]}))


def test_two_node_sft_through_the_real_jobstep_executor(tmp_path):
    """The sft rule's launcher under snakemake-executor-plugin-slurm-jobstep, started as the slurm
    executor starts it inside a 2-node job (its environment is what sbatch gives the batch step).
    The plugin strips the SLURM_* allocation variables before running the rule; the launcher must
    still spread over both nodes."""
    from sedsft.launch import command_prefix

    workdir = tmp_path / "work"
    workdir.mkdir()
    snakefile = tmp_path / "Snakefile"
    prefix = command_prefix(4, "zero3", across_nodes=True)
    snakefile.write_text(f"""rule sft:
    output: "done.txt"
    resources: mpi="srun", nodes=2, tasks=2, gpu=16
    shell: "{prefix} sft --experiment x && touch {{output}}"
""")
    batch_step = {"SLURM_JOB_ID": JOB["id"], "SLURM_JOBID": JOB["id"], "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
                  "SLURM_JOB_NODELIST": JOB["nodelist"], "SLURM_NODELIST": JOB["nodelist"], "SLURM_NODEID": "0",
                  "SLURM_CPUS_ON_NODE": "32", "SLURM_GPUS_ON_NODE": "8", "SLURM_NTASKS": "2",
                  "SLURM_SUBMIT_DIR": str(workdir)}
    env = {**fake_launch_commands(tmp_path), **batch_step}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir),
                             "--executor", "slurm-jobstep", "--jobs", "1", "done.txt"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_one_torchrun_per_node(tmp_path, recorded(tmp_path, "torchrun"))


def test_the_profile_examples_reach_sbatch_as_written():
    """The commented set-resources examples, uncommented, parse, and a constraint reaches sbatch
    without literal quotes: the plugin shell-quotes resource values itself
    (snakemake-executor-plugin-slurm 2.8.0 submit_string.py: `-C {safe_quote(constraint)}`)."""
    import shlex

    from snakemake_executor_plugin_slurm.submit_string import safe_quote

    text = (PROFILE / "config.v8+.yaml").read_text()
    example = text[text.index("# set-resources:"):].splitlines()
    block = "\n".join(line[2:] for line in example if line.startswith("# ") and not line.startswith("# SFT"))
    overrides = yaml.safe_load(block)["set-resources"]
    constraints = [r["constraint"] for r in overrides.values() if "constraint" in r]
    assert constraints
    for value in constraints:
        assert shlex.split(f"sbatch -C {safe_quote(value)}")[2] == value
        assert not set("'\"") & set(value), f"constraint {value!r} would reach Slurm with its quotes"
