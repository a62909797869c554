"""Tests for sedsft.benchmarks: every quirk listed in data/SOURCES.md, on small fixture files,
plus one pass over the real benchmark files the repository ships in data/benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sedsft.benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    hub_dataset,
    load_benchmark,
    normalize_row,
    strip_math_delimiters,
)

REAL_BENCHMARKS = Path(__file__).resolve().parents[1] / "data" / "benchmarks"


def write_rows(root: Path, name: str, rows: list) -> Path:
    """Write rows (dicts, or raw strings for broken lines) as <root>/<name>/test.jsonl."""
    path = root / name / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gsm8k_final_answer_after_last_marker_without_commas(tmp_path):
    write_rows(
        tmp_path,
        "gsm8k",
        [
            {"question": "Q0", "answer": "3 * 6 = <<3*6=18>>18\n#### 18", "idx": 0},
            {"question": "Q1", "answer": "It costs $2,125.\n#### 2,125", "idx": 1},
            {"question": "Q2", "answer": "a #### b\n#### 1,450,000 ", "idx": 2},
        ],
    )
    rows, skipped = load_benchmark("gsm8k", tmp_path)
    assert rows == [
        {"id": "0", "problem": "Q0", "answer": "18"},
        {"id": "1", "problem": "Q1", "answer": "2125"},
        {"id": "2", "problem": "Q2", "answer": "1450000"},
    ]
    assert skipped == []


def test_gsm8k_without_marker_is_an_error_naming_the_row(tmp_path):
    path = write_rows(tmp_path, "gsm8k", [{"question": "Q", "answer": "no marker here", "idx": 0}])
    with pytest.raises(BenchmarkError, match="####") as err:
        load_benchmark("gsm8k", tmp_path)
    assert str(path) in str(err.value) and "line 1" in str(err.value)


def test_olympiadbench_one_item_list_and_dollars(tmp_path):
    write_rows(
        tmp_path,
        "olympiadbench",
        [
            {"id": 1606, "question": "Q0", "final_answer": ["2"]},
            {"id": 1607, "question": "Q1", "final_answer": ["$\\frac{1}{2 n+2}$"]},
            {"id": 1608, "question": "Q2", "final_answer": ["$69$,$84$"]},
            {"id": 1609, "question": "Q3", "final_answer": ["$f(n)=n$, $g(n)=1$"]},
            {"id": 1610, "question": "Q4", "final_answer": ["$(-\\infty, 0) \\cup\\{1\\}$."]},
        ],
    )
    rows, skipped = load_benchmark("olympiadbench", tmp_path)
    assert [r["id"] for r in rows] == ["1606", "1607", "1608", "1609", "1610"]
    assert [r["answer"] for r in rows] == [
        "2",
        "\\frac{1}{2 n+2}",
        "69,84",
        "f(n)=n, g(n)=1",
        "(-\\infty, 0) \\cup\\{1\\}",
    ]
    assert skipped == []


def test_olympiadbench_list_of_two_is_an_error(tmp_path):
    write_rows(tmp_path, "olympiadbench", [{"id": 1, "question": "Q", "final_answer": ["1", "2"]}])
    with pytest.raises(BenchmarkError, match="one-item list"):
        load_benchmark("olympiadbench", tmp_path)


def test_strip_math_delimiters_leaves_prose_and_escaped_dollars():
    assert strip_math_delimiters("  $x^2$ ") == "x^2"
    assert strip_math_delimiters("$\\$ 3040$") == "\\$ 3040"  # \$ is a literal dollar sign
    prose = "$f(x)=a x+b$, where $b$ is an integer"
    assert strip_math_delimiters(prose) == prose
    assert strip_math_delimiters("$221,$8$") == "$221,$8$"  # unbalanced: leave it alone
    assert strip_math_delimiters("\\frac{1}{2}") == "\\frac{1}{2}"


def test_amc23_float_answers(tmp_path):
    write_rows(
        tmp_path,
        "amc23",
        [
            {"id": 0, "problem": "P0", "question": "P0", "answer": 27.0},
            {"id": 1, "problem": "P1", "question": "P1", "answer": -1.0},
            {"id": 2, "problem": "P2", "question": "P2", "answer": 0.5},
            {"id": 3, "problem": "P3", "question": "P3", "answer": 3159},
        ],
    )
    rows, _ = load_benchmark("amc23", tmp_path)
    assert [r["answer"] for r in rows] == ["27", "-1", "0.5", "3159"]
    assert [r["problem"] for r in rows] == ["P0", "P1", "P2", "P3"]


def test_aime_keeps_leading_zeros_and_strips_whitespace(tmp_path):
    for name in ("aime24", "aime25"):
        write_rows(
            tmp_path,
            name,
            [
                {"id": 60, "problem": "P0", "question": "P0", "answer": "025"},
                {"id": 61, "problem": "P1", "question": "P1", "answer": " 204\n"},
            ],
        )
        rows, _ = load_benchmark(name, tmp_path)
        assert rows == [
            {"id": "60", "problem": "P0", "answer": "025"},
            {"id": "61", "problem": "P1", "answer": "204"},
        ]


def test_gaokao_empty_answers_are_skipped_and_reported(tmp_path):
    write_rows(
        tmp_path,
        "gaokao2023en",
        [
            {"source": "s", "question": "Q0", "lang": "en", "answer": "$3$"},
            {"source": "s", "question": "Q1 answers: $\\frac{3}{10}$", "id": "HMMT2023General_9",
             "lang": "en", "answer": ""},
            {"source": "s", "question": "Q2", "lang": "en", "answer": "A", "id": "X_1"},
            {"source": "s", "question": "Q3 Answer: A", "id": "052023SATS4_11", "lang": "en",
             "answer": "  "},
        ],
    )
    rows, skipped = load_benchmark("gaokao2023en", tmp_path)
    # Rows without an id fall back to the row index.
    assert rows == [
        {"id": "0", "problem": "Q0", "answer": "$3$"},
        {"id": "X_1", "problem": "Q2", "answer": "A"},
    ]
    assert [s["id"] for s in skipped] == ["HMMT2023General_9", "052023SATS4_11"]
    assert all("empty gold answer" in s["reason"] and "line" in s["reason"] for s in skipped)


def test_empty_problem_is_skipped_in_any_benchmark(tmp_path):
    write_rows(
        tmp_path,
        "math500",
        [
            {"problem": " ", "answer": "3", "unique_id": "test/a/1.json"},
            {"problem": "P", "answer": "4", "unique_id": "test/a/2.json"},
        ],
    )
    rows, skipped = load_benchmark("math500", tmp_path)
    assert [r["id"] for r in rows] == ["test/a/2.json"]
    assert skipped[0]["id"] == "test/a/1.json" and "empty problem" in skipped[0]["reason"]


def test_repeated_ids_are_made_unique(tmp_path):
    write_rows(
        tmp_path,
        "college_math",
        [
            {"question_number": "exercise.1", "question": "Q0", "answer": "1"},
            {"question_number": "exercise.2", "question": "Q1", "answer": "2"},
            {"question_number": "exercise.1", "question": "Q2", "answer": "3"},
            {"question_number": "exercise.1", "question": "Q3", "answer": ""},
        ],
    )
    rows, skipped = load_benchmark("college_math", tmp_path)
    ids = [r["id"] for r in rows] + [s["id"] for s in skipped]
    assert ids == ["exercise.1", "exercise.2", "exercise.1#2", "exercise.1#3"]
    assert len(set(ids)) == len(ids)


def test_limit_keeps_first_valid_rows(tmp_path):
    write_rows(
        tmp_path,
        "gaokao2023en",
        [{"question": f"Q{i}", "answer": "" if i == 1 else str(i)} for i in range(6)]
        + ["{broken json after the limit"],
    )
    rows, skipped = load_benchmark("gaokao2023en", tmp_path, limit=3)
    assert [r["id"] for r in rows] == ["0", "2", "3"]  # row 1 has no answer
    assert [s["id"] for s in skipped] == ["1"]
    assert load_benchmark("gaokao2023en", tmp_path, limit=0) == ([], [])
    with pytest.raises(BenchmarkError, match="limit"):
        load_benchmark("gaokao2023en", tmp_path, limit=-1)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = write_rows(
        tmp_path,
        "aime24",
        [{"id": 1, "problem": "P", "answer": "1"}, "", '{"id": 2, "problem": "P2", "answer":'],
    )
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("aime24", tmp_path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and "not valid JSON" in message


def test_non_object_row_is_an_error(tmp_path):
    write_rows(tmp_path, "aime24", ["[1, 2]"])
    with pytest.raises(BenchmarkError, match="line 1.*not an object"):
        load_benchmark("aime24", tmp_path)


def test_missing_field_names_file_row_and_field(tmp_path):
    path = write_rows(
        tmp_path,
        "math500",
        [{"problem": "P", "answer": "1"}, {"problem": "P2", "solution": "s", "unique_id": "u"}],
    )
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("math500", tmp_path)
    message = str(err.value)
    assert str(path) in message and "line 2" in message and "'answer'" in message


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark("gsm8k", tmp_path / "nowhere")
    with pytest.raises(BenchmarkError, match="not found") as err:
        load_benchmark("gsm8k", tmp_path)
    assert "gsm8k" in str(err.value) and "test.jsonl" in str(err.value)


def test_unknown_benchmark_lists_known_ones(tmp_path):
    for call in (lambda: load_benchmark("mmlu", tmp_path), lambda: hub_dataset("mmlu")):
        with pytest.raises(BenchmarkError) as err:
            call()
        assert "'mmlu'" in str(err.value)
        assert all(name in str(err.value) for name in BENCHMARKS)


def test_hub_table_covers_every_benchmark():
    for name in BENCHMARKS:
        dataset_id, config, split = hub_dataset(name)
        assert "/" in dataset_id and split
    assert hub_dataset("gsm8k") == ("openai/gsm8k", "main", "test")
    assert hub_dataset("olympiadbench") == ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")


def test_hub_shaped_rows_go_through_the_same_normalizer():
    # openai/gsm8k has no idx column: the id is the row index, as Qwen's idx is.
    assert normalize_row("gsm8k", {"question": "Q", "answer": "x\n#### 1,000"}, 7) == {
        "id": "7", "problem": "Q", "answer": "1000"}
    # math-ai/amc23 has only "question", with float answers.
    assert normalize_row("amc23", {"id": 3, "question": "Q", "answer": 36.0}, 3)["answer"] == "36"
    # Hothan/OlympiadBench keeps final_answer as a list.
    row = {"id": 2231, "question": "Q", "final_answer": ["$\\sqrt{2}$"], "solution": ["..."]}
    expected = {"id": "2231", "problem": "Q", "answer": "\\sqrt{2}"}
    assert normalize_row("olympiadbench", row, 0) == expected
    # HuggingFaceH4/aime_2024 may type answers as ints.
    assert normalize_row("aime24", {"id": 60, "problem": "P", "answer": 204}, 0)["answer"] == "204"
    with pytest.raises(ValueError, match="missing field 'problem'"):
        normalize_row("math500", {"question": "Q", "answer": "1"}, 0)


def test_module_import_stays_cheap():
    code = (
        "import sys, sedsft.benchmarks; "
        "print('datasets' in sys.modules or 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


EXPECTED_ROWS = {
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "math500": 500,
    "gsm8k": 1319,
    "olympiadbench": 675,
    "college_math": 2818,
    "gaokao2023en": 383,  # 385 rows, 2 with an empty answer (SOURCES.md)
}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_real_benchmark_files(name):
    rows, skipped = load_benchmark(name, REAL_BENCHMARKS)
    assert len(rows) == EXPECTED_ROWS[name]
    assert all(r["problem"].strip() and r["answer"].strip() for r in rows)
    ids = [r["id"] for r in rows] + [s["id"] for s in skipped]
    assert len(set(ids)) == len(ids)
    if name == "gaokao2023en":
        assert [s["id"] for s in skipped] == ["HMMT2023General_9", "052023SATS4_11"]
    else:
        assert skipped == []
    if name == "gsm8k":
        assert not any("," in r["answer"] for r in rows)
    if name == "amc23":
        assert rows[0]["answer"] == "27" and not any(r["answer"].endswith(".0") for r in rows)
    if name == "aime24":
        assert "025" in {r["answer"] for r in rows}
    if name == "olympiadbench":
        wrapped = [r["answer"] for r in rows if r["answer"][:1] == r["answer"][-1:] == "$"]
        assert len(wrapped) <= 2  # only the prose answer and one malformed "$221,$8$" keep dollars
    assert load_benchmark(name, REAL_BENCHMARKS, limit=5)[0] == rows[:5]
