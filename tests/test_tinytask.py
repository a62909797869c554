"""Tests for sedsft.tinytask: the generated arithmetic task is correct, disjoint and reproducible."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from sedsft.config import ConfigError
from sedsft.grading import grade_answer
from sedsft.tinytask import generate, problem_keys

COUNTS = {"test_problems": 20, "rl_problems": 30, "sft_problems": 40, "pretrain_problems": 60}
MAX_OPERAND = 12
SPLITS = ("test", "rl", "sft", "pretrain")
STEP = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def read(folder: Path, split: str) -> list[dict]:
    with open(folder / f"{split}.jsonl") as fh:
        return [json.loads(line) for line in fh]


def true_answer(problem_id: str) -> int:
    """From the numbers in the id alone: add-a-b-c -> a + b - c, mul-a-b-c -> a * b - c."""
    kind, a, b, c = problem_id.split("/")[0].split("-")
    a, b, c = int(a), int(b), int(c)
    return {"add": a + b - c, "mul": a * b - c}[kind]


def key_of(row: dict) -> str:
    return row["id"].split("/")[0]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("task")
    counts = generate(folder, seed=7, max_operand=MAX_OPERAND, **COUNTS)
    return folder, counts


def test_generate_writes_four_files_of_the_requested_sizes(task):
    folder, counts = task
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.jsonl" for s in SPLITS)
    rows = {split: read(folder, split) for split in SPLITS}
    assert counts == {split: len(rows[split]) for split in SPLITS}
    assert len(rows["test"]) == COUNTS["test_problems"]
    assert len(rows["rl"]) == COUNTS["rl_problems"]
    assert len(rows["pretrain"]) == COUNTS["pretrain_problems"]
    # SFT has one row per (problem, solution): the problem count is the requested one
    assert len({key_of(r) for r in rows["sft"]}) == COUNTS["sft_problems"]
    assert len(rows["sft"]) >= 2 * COUNTS["sft_problems"]
    # the row schemas the later stages read
    assert all(set(r) == {"id", "problem", "answer"} for r in rows["test"])
    assert all(set(r) == {"id", "question", "answer"} for s in ("rl", "sft", "pretrain") for r in rows[s])


def test_splits_are_disjoint_by_problem_numbers(task):
    folder, _ = task
    keys = {split: [key_of(r) for r in read(folder, split)] for split in SPLITS}
    for split in ("test", "rl", "pretrain"):
        assert len(keys[split]) == len(set(keys[split])), f"{split} repeats a problem"
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not set(keys[a]) & set(keys[b]), f"{a} and {b} share problems"


def test_questions_state_the_numbers_of_their_id(task):
    folder, _ = task
    for split in SPLITS:
        for row in read(folder, split):
            question = row.get("question", row.get("problem"))
            numbers = [int(n) for n in re.findall(r"\d+", question)]
            _, a, b, c = key_of(row).split("-")
            assert numbers == [int(a), int(b), int(c)], row


def test_gold_answers_are_the_true_answers(task):
    folder, _ = task
    for split in ("test", "rl"):
        for row in read(folder, split):
            assert row["answer"] == str(true_answer(row["id"])), row


def check_solution(solution: str, problem_id: str) -> None:
    boxed = BOXED.findall(solution)
    assert len(boxed) == 1 and solution.rstrip(".").endswith(f"\\boxed{{{boxed[0]}}}"), solution
    assert boxed[0] == str(true_answer(problem_id)), (problem_id, solution)
    steps = STEP.findall(solution)
    # every "=" is a step the regex checked, and a two-step problem takes two steps
    assert len(steps) == solution.count("=") >= 2, solution
    for x, op, y, z in steps:
        x, y, z = int(x), int(y), int(z)
        assert {"+": x + y, "-": x - y, "*": x * y}[op] == z, (problem_id, solution)
    # the last step's result is the boxed answer
    assert steps[-1][3] == boxed[0]


def test_every_sft_and_pretrain_solution_is_correct_step_by_step(task):
    folder, _ = task
    checked = 0
    for split in ("sft", "pretrain"):
        for row in read(folder, split):
            check_solution(row["answer"], row["id"])
            checked += 1
    assert checked >= COUNTS["sft_problems"] * 2 + COUNTS["pretrain_problems"]


def test_check_solution_rejects_a_wrong_step():
    # the checker itself can fail: one wrong intermediate, one wrong box
    with pytest.raises(AssertionError):
        check_solution("After buying: 3 + 4 = 8. After giving away: 8 - 2 = 5. The answer is \\boxed{5}.",
                       "add-3-4-2")
    with pytest.raises(AssertionError):
        check_solution("After buying: 3 + 4 = 7. After giving away: 7 - 2 = 5. The answer is \\boxed{6}.",
                       "add-3-4-2")
    check_solution("After buying: 3 + 4 = 7. After giving away: 7 - 2 = 5. The answer is \\boxed{5}.", "add-3-4-2")


def test_every_sft_problem_has_several_distinct_solutions(task):
    folder, _ = task
    solutions = defaultdict(list)
    for row in read(folder, "sft"):
        solutions[key_of(row)].append(row["answer"])
        assert row["id"].split("/")[1].isdigit()
    for key, texts in solutions.items():
        assert len(set(texts)) == len(texts) >= 2, key
    # all the solutions of one problem answer the same question
    questions = defaultdict(set)
    for row in read(folder, "sft"):
        questions[key_of(row)].add(row["question"])
    assert all(len(q) == 1 for q in questions.values())


def test_both_problem_kinds_appear(task):
    folder, _ = task
    kinds = {key_of(r).split("-")[0] for s in SPLITS for r in read(folder, s)}
    assert kinds == {"add", "mul"}


def test_math_verify_grades_the_solutions_correct(task):
    folder, _ = task
    rows = read(folder, "sft")[:15] + read(folder, "pretrain")[:15]
    for row in rows:
        gold = str(true_answer(row["id"]))
        assert grade_answer(row["answer"], gold).correct, row
        assert not grade_answer(row["answer"], str(int(gold) + 1)).correct, row


def test_the_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, seed=seed, max_operand=MAX_OPERAND, **COUNTS)
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert any((tmp_path / "a" / f"{s}.jsonl").read_bytes() != (tmp_path / "c" / f"{s}.jsonl").read_bytes()
               for s in SPLITS)
    # a different seed draws different test problems, not just different names
    assert {key_of(r) for r in read(tmp_path / "a", "test")} != {key_of(r) for r in read(tmp_path / "c", "test")}


def distinct_problems(max_operand: int) -> int:
    # add: a in 1..m, b in 1..9, c in 1..min(9, a+b); mul: a, b in 2..9 (ab >= 4), c in 1..min(9, ab)
    add = sum(min(9, a + b) for a in range(1, max_operand + 1) for b in range(1, 10))
    mul = sum(min(9, a * b) for a in range(2, 10) for b in range(2, 10))
    return add + mul


@pytest.mark.parametrize("max_operand", [2, 5])
def test_problem_keys_are_distinct_and_counted(max_operand):
    keys = problem_keys(max_operand)
    assert len(keys) == len(set(keys)) == distinct_problems(max_operand)


def test_asking_for_more_problems_than_exist_is_a_config_error(tmp_path):
    limit = distinct_problems(2)
    with pytest.raises(ConfigError, match=r"model\.tiny.*max_operand=2"):
        generate(tmp_path / "over", seed=0, max_operand=2, test_problems=1, rl_problems=1, sft_problems=1,
                 pretrain_problems=limit - 2)
    assert not (tmp_path / "over").exists()  # nothing half-written
    # exactly all of them is fine
    counts = generate(tmp_path / "all", seed=0, max_operand=2, test_problems=1, rl_problems=1, sft_problems=1,
                      pretrain_problems=limit - 3)
    assert counts["pretrain"] == limit - 3
