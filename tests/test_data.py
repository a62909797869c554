"""Data prep: answer formats (GSM8K solutions and golds), row windows, and the files written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sedsft.chat import IGNORE_INDEX
from sedsft.config import ModelConfig, RLDataConfig, SFTDataConfig
from sedsft.data import formatted_answer, gsm8k_solution, prepare_rl_prompts, prepare_sft
from sedsft.sources import DataError, load_rows

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# the shape of a GSM8K train row: calculator notes, a thousands separator in the final answer
SOLUTION = "Each box holds 5*425=<<5*425=2125>>2125 pens.\nSo she has 2125 pens.\n#### 2,125"


def write_rows(path, count: int, bad_row: int | None = None):
    with open(path, "w") as fh:
        for i in range(count):
            answer = f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"
            fh.write(json.dumps({"question": f"What is {i}+{i}?", "answer": "no marker" if i == bad_row else answer}) + "\n")
    return str(path)


def test_gsm8k_solution_drops_calculator_notes_and_boxes_the_final_number():
    assert gsm8k_solution(SOLUTION) == (
        "Each box holds 5*425=2125 pens.\nSo she has 2125 pens.\nThe final answer is $\\boxed{2125}$.")


def test_answer_formats():
    assert formatted_answer(SOLUTION, "gsm8k", gold=True) == "2125"
    assert formatted_answer(SOLUTION, "text", gold=True) == SOLUTION
    assert formatted_answer(42, "text", gold=True) == "42"
    with pytest.raises(ValueError, match="no '#### ' final-answer marker"):
        formatted_answer("The answer is 5.", "gsm8k", gold=False)


@pytest.mark.parametrize("skip, limit, expected", [(0, None, range(10)), (0, 3, range(3)), (4, None, range(4, 10)),
                                                   (4, 3, range(4, 7)), (8, 5, range(8, 10))])
def test_load_rows_takes_the_window_after_skip(tmp_path, skip, limit, expected):
    source = write_rows(tmp_path / "rows.jsonl", 10)
    rows = load_rows(source, "train", limit, skip=skip)
    assert [r["question"] for r in rows] == [f"What is {i}+{i}?" for i in expected]


def test_skipping_every_row_is_an_error_that_says_so(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", 10)
    with pytest.raises(DataError, match=r"rows.jsonl \(split 'train'\) has no rows after skipping 10"):
        load_rows(source, "train", 5, skip=10)


def rl_config(**overrides) -> RLDataConfig:
    values = dict(source="", split="train", question_field="question", answer_field="answer",
                  answer_format="gsm8k", skip_rows=6, max_prompts=3)
    return RLDataConfig(**{**values, **overrides})


def test_rl_prompts_from_gsm8k_rows_after_the_sft_ones(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", 10)
    summary = prepare_rl_prompts(source, rl_config(), SYSTEM, str(tmp_path / "rl.parquet"))
    prompts = pd.read_parquet(tmp_path / "rl.parquet")
    assert summary["prompts"] == 3 and summary["skipped_rows"] == 6
    assert list(prompts["id"]) == ["6", "7", "8"]  # ids are the rows' positions in the source
    assert list(prompts["answer"]) == ["12", "14", "16"]
    assert prompts["prompt"][0][1]["content"] == "What is 6+6?"


def test_a_gsm8k_row_without_its_marker_names_the_row_and_field(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", 10, bad_row=7)
    with pytest.raises(DataError, match=r"rows.jsonl: row 7, field 'answer' \(answer_format gsm8k\): GSM8K answer has no"):
        prepare_rl_prompts(source, rl_config(), SYSTEM, str(tmp_path / "rl.parquet"))


def test_sft_tokens_of_gsm8k_rows_learn_the_boxed_answer(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    source = write_rows(tmp_path / "rows.jsonl", 6)
    cfg = SFTDataConfig(source=source, split="train", messages_field=None, question_field="question",
                        answer_field="answer", answer_format="gsm8k", train_rows=4, val_rows=2, max_length=512)
    model = ModelConfig(path=tiny_model, trust_remote_code=False, tiny=None, gguf=None)
    stats = prepare_sft(source, cfg, model, tiny_model, SYSTEM, str(tmp_path / "train.parquet"),
                        str(tmp_path / "val.parquet"))
    assert stats["train"]["kept"] == 4 and stats["val"]["kept"] == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    row = pd.read_parquet(tmp_path / "val.parquet").iloc[1]
    learnt = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert row["row"] == 5
    assert learnt == "5+5=10\nThe final answer is $\\boxed{10}$.<|im_end|>"
