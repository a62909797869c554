"""How a training stage is launched: one process, torchrun ranks, DeepSpeed, a vLLM server.
Import-light: the Snakefile builds its commands from these functions."""

from __future__ import annotations

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


def command_prefix(num_processes: int, deepspeed: str | None) -> str:
    """`sedsft`, or torchrun for DeepSpeed or several ranks (plain `python --deepspeed` would
    want mpi4py). Under Slurm with several nodes, torchrun reads the rendezvous from the env."""
    if num_processes == 1 and deepspeed is None:
        return "sedsft"
    return f"torchrun --standalone --nproc_per_node {num_processes} -m sedsft.cli"


def rl_command_prefix(rl: dict, model_dir: str) -> str:
    """RL: like command_prefix, wrapped by a `trl vllm-serve` on GPUs of its own in server mode."""
    prefix = command_prefix(rl["num_processes"], rl["deepspeed"])
    if not (rl["use_vllm"] and rl["vllm_mode"] == "server"):
        return prefix
    script = Path(__file__).parent / "with_vllm_server.sh"
    return (f"bash {script} {model_dir} {rl['vllm_tensor_parallel_size']} {rl['vllm_server_port']} "
            f"{rl['num_processes']} -- {prefix}")
