"""Diversity of a model's samples: N samples per prompt at temperature 1 (GEM's setting)."""

from __future__ import annotations

import random

from sedsft.config import DiversityConfig
from sedsft.metrics import count_distinct, distinct_n, mean, pass_at_k, self_bleu


def select_prompts(rl_prompts_file: str, count: int, seed: int) -> list[dict]:
    """A fixed, seeded sample of the RL prompts, as generation prompts with gold answers."""
    import pandas as pd

    rows = pd.read_parquet(rl_prompts_file).to_dict("records")
    random.Random(seed).shuffle(rows)
    return [{"id": r["id"], "messages": [dict(m) for m in r["prompt"]], "answer": r["answer"]}
            for r in rows[:count]]


def measure(samples: dict[str, dict], prompts: list[dict], *, workers: int = 2, timeout_s: float = 5.0) -> dict:
    """Per-prompt metrics averaged over prompts, and the mean pass@k curve for k = 1..N."""
    from sedsft.grading import Grader, answers_equivalent, extract_boxed

    completions = [c for p in prompts for c in samples[p["id"]]["completions"]]
    golds = [p["answer"] for p in prompts for _ in samples[p["id"]]["completions"]]
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        grades = iter(grader.grade(completions, golds))
    per_prompt = []
    for prompt in prompts:
        record = samples[prompt["id"]]
        texts, tokens = record["completions"], record["token_ids"]
        correct = [next(grades).correct for _ in texts]
        answers = [extract_boxed(t) for t in texts]
        n = len(texts)
        per_prompt.append({
            "distinct_1": distinct_n(tokens, 1),
            "distinct_2": distinct_n(tokens, 2),
            "distinct_3": distinct_n(tokens, 3),
            "self_bleu": self_bleu(texts),
            "distinct_answers": count_distinct(answers, equivalent=answers_equivalent),
            "accuracy": mean(correct),
            "pass_at_k": [pass_at_k(n, sum(correct), k) for k in range(1, n + 1)],
        })
    keys = ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "distinct_answers", "accuracy")
    result = {key: mean([p[key] for p in per_prompt]) for key in keys}
    result["100_minus_self_bleu"] = 100 - result["self_bleu"]
    n = min(len(p["pass_at_k"]) for p in per_prompt)
    result["pass_at_k"] = {str(k): mean([p["pass_at_k"][k - 1] for p in per_prompt]) for k in range(1, n + 1)}
    result["prompts"] = len(per_prompt)
    result["samples_per_prompt"] = n
    return result


def sampling_of(cfg: DiversityConfig, seed: int):
    from sedsft.generation import SamplingSettings

    return SamplingSettings(n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)
