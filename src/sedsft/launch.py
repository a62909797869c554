"""How a training stage is launched: one process, torchrun ranks, DeepSpeed, a vLLM server.
Import-light: the Snakefile builds its commands from these functions.

`python -m sedsft.launch torchrun --standalone ...` runs a torchrun command line as given, except
in a Slurm job that spans several nodes: there it starts one torchrun per node through `srun`,
joined by a c10d rendezvous on the job's first node instead of `--standalone`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sedsft.stages import STAGES

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"


def deepspeed_config(name: str | None) -> str | None:
    """zero2/zero3 -> the JSON shipped with the package; anything else is a user's file."""
    from sedsft.config import ConfigError

    if name is None:
        return None
    shipped = DEEPSPEED_DIR / f"{name}.json"
    if shipped.is_file():
        return str(shipped)
    if Path(name).is_file():
        return name
    raise ConfigError(f"deepspeed: {name!r} is neither zero2/zero3 nor an existing DeepSpeed JSON file")


def zero_stage(name: str | None) -> int:
    import json

    config = deepspeed_config(name)
    return json.loads(Path(config).read_text()).get("zero_optimization", {}).get("stage", 0) if config else 0


def command_prefix(num_processes: int, deepspeed: str | None, across_nodes: bool = False) -> str:
    """`sedsft`, or torchrun for DeepSpeed or several ranks (plain `python --deepspeed` would
    want mpi4py), `num_processes` ranks per node. across_nodes: through `python -m sedsft.launch`,
    which reads the Slurm allocation at run time (one node: the same torchrun; several: one
    torchrun per node, see main())."""
    if num_processes == 1 and deepspeed is None:
        return "sedsft"
    torchrun = f"torchrun --standalone --nproc_per_node {num_processes} -m sedsft.cli"
    return f"python -m sedsft.launch {torchrun}" if across_nodes else torchrun


def rl_command_prefix(rl: dict, model_dir: str, across_nodes: bool = False, trust_remote_code: bool = False) -> str:
    """RL: like command_prefix, wrapped by a `trl vllm-serve` on GPUs of its own in server mode
    (on one node: the server listens on 127.0.0.1, so server mode never spans nodes). Ports the
    config leaves null are chosen free when the job starts (see with_vllm_server.sh)."""
    if not (rl["use_vllm"] and rl["vllm_mode"] == "server"):
        return command_prefix(rl["num_processes"], rl["deepspeed"], across_nodes)
    prefix = command_prefix(rl["num_processes"], rl["deepspeed"])
    script = Path(__file__).parent / "with_vllm_server.sh"
    options = (f"--group-port {rl['vllm_group_port'] or 'auto'} "
               f"--max-model-len {rl['max_prompt_length'] + rl['max_completion_length']}"
               + (" --trust-remote-code" if trust_remote_code else ""))
    return (f"bash {script} {model_dir} {rl['vllm_tensor_parallel_size']} {rl['vllm_server_port'] or 'auto'} "
            f"{rl['num_processes']} {options} -- {prefix}")


# ----------------------------------------------------------------------------- GPUs of a job

GPU_STAGES = tuple(name for name, stage in STAGES.items() if stage.gpus)


def job_gpus(stage: str, settings: dict, uses_gpus: bool) -> int:
    """The GPUs one job of `stage` asks for (Snakemake resources.gpu, Slurm --gpus) and may see:
    0 for a CPU experiment and for stages that run no model. settings: the experiment's merged
    settings; uses_gpus: its resources.gpus, resolved."""
    if not uses_gpus or stage not in GPU_STAGES:
        return 0
    if stage == "sft":
        return settings["sft"]["num_processes"]
    if stage == "rl":
        rl = settings["rl"]
        server = rl["use_vllm"] and rl["vllm_mode"] == "server"
        return rl["num_processes"] + (rl["vllm_tensor_parallel_size"] if server else 0)
    if stage == "generate":
        ev = settings["eval"]
        return 1 if ev["backend"] == "hf" else ev["tensor_parallel_size"]
    return 1  # threshold, diversity: one model on one GPU


def pin_gpus(stage: str, job: int) -> str:
    """Show this process only the GPUs it uses, before anything initialises CUDA; returns the new
    CUDA_VISIBLE_DEVICES.

    A one-process stage on a machine with several visible GPUs would otherwise take them all: the
    HF Trainer sets n_gpu = device_count() and wraps the model in nn.DataParallel (the batch
    silently becomes per_device x n_gpu), and TRL's GRPOTrainer refuses n_gpu > 1. So a single
    process sees one GPU (generate: the tensor-parallel GPUs vLLM spreads over), a torchrun rank
    (LOCAL_RANK set) the job's GPUs, of which it takes cuda:LOCAL_RANK, and a job that asked for
    none sees none."""
    wanted = job if stage == "generate" or "LOCAL_RANK" in os.environ else min(job, 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i for i in visible.split(",") if i.strip()] if visible is not None else [str(i) for i in range(wanted)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:wanted])
    return os.environ["CUDA_VISIBLE_DEVICES"]


# ----------------------------------------------------------------------------- several nodes

RDZV_PORT = 29500


def multinode_torchrun(argv: list[str], nodes: int, node_rank: int, endpoint: str, rdzv_id: str) -> list[str]:
    """A `torchrun --standalone ...` command line for one node of `nodes`: --standalone becomes
    the job's rendezvous (c10d on `endpoint`, host:port of the first node)."""
    if "--standalone" not in argv:
        raise ValueError(f"expected a `torchrun --standalone ...` command, got {' '.join(argv)}")
    i = argv.index("--standalone")
    return argv[:i] + ["--nnodes", str(nodes), "--node_rank", str(node_rank), "--rdzv_backend", "c10d",
                       "--rdzv_endpoint", endpoint, "--rdzv_id", rdzv_id] + argv[i + 1:]


def slurm_allocation(job_id: str) -> dict:
    """The job's nodes, hosts, and CPUs and GPUs per node, from `scontrol show job`.

    Read from Slurm, not from the environment: the slurm-jobstep executor (0.6.1, __init__.py
    `run_job`, `keep_slurm`) removes every SLURM_* variable but the job/array ids, the cluster and
    the submit dir/host before it runs a rule, so SLURM_JOB_NUM_NODES and SLURM_JOB_NODELIST are
    gone by the time the rule's command starts."""
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], check=True, capture_output=True,
                           text=True).stdout
    fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
    nodes = int(fields["NumNodes"].split("-")[0])  # "2" (or "2-2" while pending)
    tres = dict(item.split("=", 1) for item in fields.get("TRES", "").split(",") if "=" in item)
    hosts = subprocess.run(["scontrol", "show", "hostnames", fields["NodeList"]], check=True, capture_output=True,
                           text=True).stdout.split()
    return {"nodes": nodes, "hosts": hosts, "cpus_per_node": int(fields["NumCPUs"]) // nodes,
            "gpus_per_node": int(tres.get("gres/gpu", 0)) // nodes}


def main(argv: list[str] | None = None) -> None:
    """Run `argv` (a torchrun command line), spread over the nodes of the Slurm job, if several.

    The job's batch step (one task, on the first node) re-runs this module through
    `srun --ntasks-per-node 1`, with each node's CPUs and GPUs (the jobstep executor stripped the
    SLURM_* defaults an inner srun would otherwise inherit); each node's task then runs torchrun
    with that node's rank (SLURM_NODEID, which srun sets for its own tasks)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit("usage: python -m sedsft.launch torchrun --standalone --nproc_per_node N ...")
    endpoint = os.environ.get("SEDSFT_RDZV_ENDPOINT")
    if endpoint is not None:  # one node's task of the srun below
        argv = multinode_torchrun(argv, int(os.environ["SEDSFT_NNODES"]), int(os.environ["SLURM_NODEID"]),
                                  endpoint, os.environ.get("SLURM_JOB_ID", "sedsft"))
    elif os.environ.get("SLURM_JOB_ID"):
        job = slurm_allocation(os.environ["SLURM_JOB_ID"])
        if job["nodes"] > 1:
            port = os.environ.get("SEDSFT_RDZV_PORT", str(RDZV_PORT))
            os.environ.update(SEDSFT_RDZV_ENDPOINT=f"{job['hosts'][0]}:{port}", SEDSFT_NNODES=str(job["nodes"]))
            gpus = [f"--gpus-per-node={job['gpus_per_node']}"] if job["gpus_per_node"] else []
            srun = ["srun", f"--nodes={job['nodes']}", f"--ntasks={job['nodes']}", "--ntasks-per-node=1",
                    f"--cpus-per-task={job['cpus_per_node']}", *gpus, "--kill-on-bad-exit=1",
                    sys.executable, "-m", "sedsft.launch", *argv]
            os.execvp(srun[0], srun)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()


def save_final_model(trainer, tokenizer, out_dir: str) -> None:
    """save_pretrained the trained model into out_dir so that the folder appears only complete:
    every rank saves (ZeRO-3 gathers its shards there) into out_dir.tmp, rank 0 renames it."""
    import shutil

    from sedsft.artifacts import replace_folder, staging_path
    from sedsft.hardware import rank

    is_main = rank() == 0
    tmp = staging_path(out_dir)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if is_main:
        tokenizer.save_pretrained(str(tmp))
        replace_folder(tmp, out_dir)
