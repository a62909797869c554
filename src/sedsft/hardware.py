"""What the machine can do, decided once: GPU or CPU, bf16 or fp32, vLLM or not."""

from __future__ import annotations

import importlib.util


class HardwareError(RuntimeError):
    """A setting this machine cannot honour (vLLM or bf16 without a GPU, say)."""


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def rank() -> int:
    """This process's global rank under torchrun/deepspeed (0 when not distributed)."""
    import os

    return int(os.environ.get("RANK", "0"))


def has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm(setting: str) -> None:
    """A clear refusal instead of a deep import or CUDA error."""
    if not has_cuda():
        raise HardwareError(f"{setting} asks for vLLM, which needs a CUDA GPU; none is visible here. "
                           f"Set it to false/'hf' for CPU runs.")
    if not has_vllm():
        raise HardwareError(f"{setting} asks for vLLM, but it is not installed: pip install -e '.[gpu]'")
