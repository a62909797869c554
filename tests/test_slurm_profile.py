"""profiles/slurm without a cluster: the GPUs, CPUs, memory and time each job asks for, as derived
from the config (dry runs), and sedsft.launch across Slurm nodes with fake scontrol/srun (a job
over two nodes, which the one-node cluster of tests/test_slurm_cluster.py cannot hold)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from micro_run import MICRO
from workflow_helpers import REPO, planned_resources, snakemake

PROFILE = REPO / "profiles" / "slurm"
# a dry run caps each job's threads at --cores (1 unless given); a job sent to Slurm is not capped
UNCAPPED = ("--cores", "1024")
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

def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name value`, `--name=value` or `-n value` in an argv, else None."""
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


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


def gpus_of(plan: dict, rule: str) -> set[int]:
    return {int(job.get("gpu", 0)) for job in plan[rule]}


def test_llama3b_jobs_ask_for_the_gpus_its_config_uses(tmp_path):
    plan = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n", *UNCAPPED,
                                       "results/llama3b/rl_eval.json").stdout)
    # sft and rl: 8 ranks; vLLM evaluation: tensor parallel 1; threshold and diversity: one GPU
    assert (gpus_of(plan, "sft"), gpus_of(plan, "rl")) == ({8}, {8})
    assert gpus_of(plan, "generate") == gpus_of(plan, "threshold") == gpus_of(plan, "diversity") == {1}
    for rule in ("sft_data", "rl_prompts", "benchmark_data", "grade", "eval_report"):
        assert gpus_of(plan, rule) == {0}, rule
    (sft,) = plan["sft"]
    assert (sft["mem_mb"], sft["runtime"]) == ("256000", "1440")
    assert sft["threads"] == "32"  # resources.cpus_per_gpu (4) for each of the 8 GPUs
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
    tiny = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n", *UNCAPPED,
                                       "results/tiny/rl_eval.json").stdout)
    assert all(gpus_of(tiny, rule) == {0} for rule in tiny)
    assert tiny["sft"][0]["mem_mb"] == "8000"
    tiny_gpu = planned_resources(snakemake(tmp_path, "--profile", str(PROFILE), "-n", *UNCAPPED,
                                           "results/tiny_gpu/rl_eval.json").stdout)
    assert gpus_of(tiny_gpu, "sft") == gpus_of(tiny_gpu, "rl") == gpus_of(tiny_gpu, "generate") == {1}
    assert gpus_of(tiny_gpu, "tiny_task") == {0}
    # no more CPUs than its CPU twin: 4 per GPU would be a job larger than a small GPU node
    threads = lambda plan, rule: {job["threads"] for job in plan[rule]}
    for rule in ("sft", "rl", "generate", "threshold", "diversity"):
        assert threads(tiny_gpu, rule) == threads(tiny, rule), rule


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
