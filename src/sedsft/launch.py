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


def rl_command_prefix(rl: dict, model_dir: str, across_nodes: bool = False) -> str:
    """RL: like command_prefix, wrapped by a `trl vllm-serve` on GPUs of its own in server mode
    (on one node: the server listens on 127.0.0.1, so server mode never spans nodes)."""
    if not (rl["use_vllm"] and rl["vllm_mode"] == "server"):
        return command_prefix(rl["num_processes"], rl["deepspeed"], across_nodes)
    prefix = command_prefix(rl["num_processes"], rl["deepspeed"])
    script = Path(__file__).parent / "with_vllm_server.sh"
    return (f"bash {script} {model_dir} {rl['vllm_tensor_parallel_size']} {rl['vllm_server_port']} "
            f"{rl['num_processes']} -- {prefix}")


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


def main(argv: list[str] | None = None) -> None:
    """Run `argv` (a torchrun command line), spread over the nodes of the Slurm job, if several.

    The job's batch step (one task, on the first node) re-runs this module through
    `srun --ntasks-per-node 1`; each node's task then runs torchrun with that node's rank."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit("usage: python -m sedsft.launch torchrun --standalone --nproc_per_node N ...")
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    if nodes > 1:
        endpoint = os.environ.get("SEDSFT_RDZV_ENDPOINT")
        if endpoint is None:  # the batch step: one task per node, this module again in each
            hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                                   check=True, capture_output=True, text=True).stdout.split()
            port = os.environ.get("SEDSFT_RDZV_PORT", str(RDZV_PORT))
            os.environ["SEDSFT_RDZV_ENDPOINT"] = f"{hosts[0]}:{port}"
            srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
                    "--kill-on-bad-exit=1", sys.executable, "-m", "sedsft.launch", *argv]
            os.execvp(srun[0], srun)
        argv = multinode_torchrun(argv, nodes, int(os.environ["SLURM_NODEID"]), endpoint,
                                  os.environ.get("SLURM_JOB_ID", "sedsft"))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()


def save_final_model(trainer, tokenizer, out_dir: str) -> None:
    """save_pretrained the trained model into out_dir so that the folder appears only complete:
    every rank saves (ZeRO-3 gathers its shards there) into out_dir.tmp, rank 0 renames it."""
    import shutil

    from sedsft.hardware import rank

    is_main = rank() == 0
    tmp = Path(str(out_dir) + ".tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if is_main:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
