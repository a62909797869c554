"""The `tiny` experiment's generated task: two-step arithmetic word problems.

Every problem has several correct worked solutions (different orders of the same arithmetic),
each ending in \\boxed{answer}, so the SFT data is genuinely multi-modal: a loss that collapses
onto one solution path and one that keeps several are distinguishable, as in the paper.
Problems are partitioned by their numbers, so held-out test problems are never seen in training.
"""

from __future__ import annotations

import json

import random
from pathlib import Path

from sedsft.config import ConfigError, TinyModelConfig, section

NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "marbles"]


def _add_sub(a: int, b: int, c: int, name: str, item: str) -> tuple[str, list[str], int]:
    r = a + b - c
    question = (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} away. "
                f"How many {item} does {name} have now?")
    solutions = [f"After buying: {a} + {b} = {a + b}. After giving away: {a + b} - {c} = {r}. "
                 f"The answer is \\boxed{{{r}}}."]
    if b >= c:
        solutions.append(f"The net change is {b} - {c} = {b - c}. So {a} + {b - c} = {r}. "
                         f"The answer is \\boxed{{{r}}}.")
    else:
        solutions.append(f"The net loss is {c} - {b} = {c - b}. So {a} - {c - b} = {r}. "
                         f"The answer is \\boxed{{{r}}}.")
    if a >= c:
        solutions.append(f"Giving away first: {a} - {c} = {a - c}. Then buying: {a - c} + {b} = {r}. "
                         f"The answer is \\boxed{{{r}}}.")
    return question, solutions, r


def _mul_sub(a: int, b: int, c: int, name: str, item: str) -> tuple[str, list[str], int]:
    r = a * b - c
    question = (f"{name} buys {a} boxes with {b} {item} in each box and then loses {c} {item}. "
                f"How many {item} does {name} have now?")
    solutions = [
        f"In the boxes: {a} * {b} = {a * b}. After losing some: {a * b} - {c} = {r}. "
        f"The answer is \\boxed{{{r}}}.",
        f"Each box holds {b}, so {b} * {a} = {a * b} in all. Then {a * b} - {c} = {r}. "
        f"The answer is \\boxed{{{r}}}.",
    ]
    return question, solutions, r


# Changes (bought, given away, lost) are single digits: every step is then within reach of a
# model of a few hundred thousand parameters, so SFT reaches a useful accuracy and RL has signal.
MAX_CHANGE = 9


def problem_keys(max_operand: int) -> list[tuple[str, int, int, int]]:
    """Every distinct arithmetic problem: the numbers decide the problem, not the names."""
    keys = [("add", a, b, c) for a in range(1, max_operand + 1) for b in range(1, MAX_CHANGE + 1)
            for c in range(1, min(MAX_CHANGE, a + b) + 1)]
    keys += [("mul", a, b, c) for a in range(2, 10) for b in range(2, 10) for c in range(1, min(MAX_CHANGE, a * b) + 1)]
    return keys


def make_problem(key: tuple[str, int, int, int], rng: random.Random) -> dict:
    kind, a, b, c = key
    build = _add_sub if kind == "add" else _mul_sub
    question, solutions, answer = build(a, b, c, rng.choice(NAMES), rng.choice(ITEMS))
    return {"id": f"{kind}-{a}-{b}-{c}", "question": question, "solutions": solutions, "answer": str(answer)}


def generate(out_dir: str | Path, *, seed: int, pretrain_problems: int, sft_problems: int,
             rl_problems: int, test_problems: int, max_operand: int) -> dict[str, int]:
    """Write pretrain/sft/rl/test JSONL files of disjoint problems; returns row counts."""
    rng = random.Random(seed)
    keys = problem_keys(max_operand)
    wanted = test_problems + rl_problems + sft_problems + pretrain_problems
    if wanted > len(keys):
        raise ConfigError(f"model.tiny: {wanted} problems requested but max_operand={max_operand} "
                         f"allows only {len(keys)} distinct ones; raise max_operand or ask for fewer")
    rng.shuffle(keys)
    splits, start = {}, 0
    for split, count in (("test", test_problems), ("rl", rl_problems), ("sft", sft_problems),
                         ("pretrain", pretrain_problems)):
        splits[split] = [make_problem(k, rng) for k in keys[start:start + count]]
        start += count

    rows = {
        # the held-out benchmark, in the normalized benchmark schema
        "test": [{"id": p["id"], "problem": p["question"], "answer": p["answer"]} for p in splits["test"]],
        "rl": [{"id": p["id"], "question": p["question"], "answer": p["answer"]} for p in splits["rl"]],
        # one row per (problem, solution): several correct targets per question
        "sft": [{"id": f"{p['id']}/{i}", "question": p["question"], "answer": s}
                for p in splits["sft"] for i, s in enumerate(p["solutions"])],
        # pretraining sees one solution style per problem, drawn at random
        "pretrain": [{"id": p["id"], "question": p["question"], "answer": rng.choice(p["solutions"])}
                     for p in splits["pretrain"]],
    }
    rng.shuffle(rows["sft"])  # so that the first rows and the validation rows mix problems
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        with open(out_dir / f"{split}.jsonl", "w") as fh:
            for item in items:
                fh.write(json.dumps(item) + "\n")
    return {split: len(items) for split, items in rows.items()}


# ----------------------------------------------------------------------------- the tiny_task stage


def tiny_task_arguments(parser) -> None:
    parser.add_argument("--out-dir", required=True,
                        help="folder this stage writes pretrain/sft/rl/test.jsonl into (results/<exp>/data/tiny)")


def run_tiny_task(args, settings: dict) -> dict:
    tiny = section(settings, TinyModelConfig, "model.tiny")
    counts = generate(args.out_dir, seed=settings["data_seed"], pretrain_problems=tiny.pretrain_problems,
                      sft_problems=tiny.sft_problems, rl_problems=tiny.rl_problems,
                      test_problems=tiny.test_problems, max_operand=tiny.max_operand)
    return {"rows": counts}
