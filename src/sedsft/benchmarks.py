"""Load the eight math test sets as uniform rows {"id", "problem", "answer"}.

Local files are the harness copies the repository ships in data/benchmarks (data/SOURCES.md).
Each benchmark has one spec (question field, answer field, id field, answer normalizer,
Hub location); local rows and Hub rows go through the same `normalize_row`, so both sources
give the same answers. Rows with no usable problem or gold answer are never scored and never
dropped silently: they come back in the skipped list with a reason.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS: tuple[str, ...] = (
    "aime24",
    "aime25",
    "amc23",
    "math500",
    "gsm8k",
    "olympiadbench",
    "college_math",
    "gaokao2023en",
)


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded; the message names the benchmark, file and row."""


# --- answer normalizers: raw field value -> clean answer string ("" means no gold answer) ---


def _text(value: object) -> str:
    """Generic answer: strings are stripped, JSON numbers become their shortest exact text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):  # bool is an int subclass; a True/False answer is a data bug
        raise ValueError(f"answer is a boolean ({value!r})")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"answer is not a finite number ({value!r})")
        # AMC23 stores 27.0: the gold answer is "27"; a real fraction like 0.5 keeps its digits.
        return str(int(value)) if value.is_integer() else repr(value)
    raise ValueError(f"answer has unexpected type {type(value).__name__}")


def gsm8k_final(value: object) -> str:
    """GSM8K answers are worked solutions ending in '#### <number>'; the gold is that number."""
    solution = _text(value)
    if not solution:
        return ""
    if "#### " not in solution:
        raise ValueError("GSM8K answer has no '#### ' final-answer marker")
    # Thousands separators ("2,125") would make a numeric comparison fail.
    return solution.rsplit("#### ", 1)[1].strip().replace(",", "")


# An unescaped "$" (MATH-style answers write a literal dollar sign as "\$").
_DOLLAR = re.compile(r"(?<!\\)\$")


def strip_math_delimiters(text: str) -> str:
    """'$x$' -> 'x' and '$69$,$84$' -> '69,84'; prose around the $..$ spans is left unchanged.

    Multi-answer OlympiadBench rows hold several $..$ spans joined by commas; removing only the
    outer pair (the Qwen harness way) would leave a broken '69$,$84'.
    """
    s = text.strip()
    if s.endswith("$."):  # one row ends its answer with a full stop after the math
        s = s[:-1]
    parts = _DOLLAR.split(s)
    # A fully wrapped answer splits into ['', math, sep, math, ..., math, ''].
    if len(parts) < 3 or len(parts) % 2 == 0 or parts[0] or parts[-1]:
        return text.strip()
    maths, seps = parts[1:-1:2], parts[2:-1:2]
    if any(sep.strip() != "," for sep in seps):
        return text.strip()
    return "".join(m + sep for m, sep in zip(maths, seps + [""])).strip()


def _olympiad_final(value: object) -> str:
    """OlympiadBench `final_answer` is a one-item list such as ['$\\frac{1}{2}$']."""
    if isinstance(value, (list, tuple)):
        if not value:
            return ""
        if len(value) != 1:
            raise ValueError(f"final_answer should be a one-item list, got {len(value)} items")
        value = value[0]
    return strip_math_delimiters(_text(value))


# --- per-benchmark spec table ---


@dataclass(frozen=True)
class _Spec:
    question: str  # field holding the problem text
    answer: str  # field holding the gold answer (raw)
    id_field: str | None  # the row's own id, if the source has one (row index otherwise)
    hub: tuple[str, str | None, str]  # (dataset id, config, split) on the Hugging Face Hub
    final_answer: Callable[[object], str] = _text


_SPECS: dict[str, _Spec] = {
    "aime24": _Spec("problem", "answer", "id", ("HuggingFaceH4/aime_2024", None, "train")),
    "aime25": _Spec("problem", "answer", "id", ("math-ai/aime25", None, "test")),
    # The local file has both "problem" and "question" (identical); the Hub copy only "question".
    "amc23": _Spec("question", "answer", "id", ("math-ai/amc23", None, "test")),
    "math500": _Spec("problem", "answer", "unique_id", ("HuggingFaceH4/MATH-500", None, "test")),
    # Qwen's idx is the row index, so the Hub copy (no idx) gets the same ids.
    "gsm8k": _Spec("question", "answer", "idx", ("openai/gsm8k", "main", "test"), gsm8k_final),
    "olympiadbench": _Spec(
        "question",
        "final_answer",
        "id",
        ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
        _olympiad_final,
    ),
    "college_math": _Spec(
        "question", "answer", "question_number", ("di-zhang-fdu/College_Math_Test", None, "test")
    ),
    # Only 293 of 385 rows carry an id; the others fall back to their row index.
    "gaokao2023en": _Spec(
        "question", "answer", "id", ("MARIO-Math-Reasoning/Gaokao2023-Math-En", None, "train")
    ),
}
assert tuple(_SPECS) == BENCHMARKS


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        known = ", ".join(BENCHMARKS)
        raise BenchmarkError(f"unknown benchmark {name!r}; known benchmarks: {known}")
    return _SPECS[name]


def hub_dataset(name: str) -> tuple[str, str | None, str]:
    """(dataset id, config name or None, split) read when source == "hub"."""
    return _spec(name).hub


def normalize_row(name: str, row: Mapping, index: int) -> dict:
    """One raw row (local JSON or Hub) -> {"id", "problem", "answer"}.

    The id is the row's own id (not yet made unique) or the 0-based row index. An empty
    problem or answer is returned as "" for the caller to skip; a missing field or a malformed
    answer raises ValueError.
    """
    spec = _spec(name)
    if not isinstance(row, Mapping):
        raise ValueError(f"row is a JSON {type(row).__name__}, not an object")
    for field in (spec.question, spec.answer):
        if field not in row:
            present = ", ".join(sorted(map(str, row))) or "nothing"
            raise ValueError(f"missing field {field!r} (row has: {present})")
    problem = row[spec.question]
    if problem is not None and not isinstance(problem, str):
        raise ValueError(f"field {spec.question!r} is a {type(problem).__name__}, not text")
    own_id = row.get(spec.id_field) if spec.id_field else None
    has_id = own_id is not None and str(own_id).strip() != ""
    return {
        "id": str(own_id).strip() if has_id else str(index),
        "problem": (problem or "").strip(),
        "answer": spec.final_answer(row[spec.answer]),
    }


# --- row sources: (row index, location for messages, raw row) ---


def _file_rows(path: Path) -> Iterator[tuple[int, str, object]]:
    index = 0
    with path.open(encoding="utf-8") as lines:
        lineno = 0
        try:
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BenchmarkError(f"{where}: not valid JSON ({err})") from None
                yield index, f"{where} (row {index})", row
                index += 1
        except UnicodeDecodeError as err:
            raise BenchmarkError(f"{path} after line {lineno}: not UTF-8 text ({err})") from None


def _hub_rows(name: str) -> Iterator[tuple[int, str, object]]:
    # Imported here: `datasets` is heavy and only needed when reading the Hub.
    from datasets import load_dataset

    dataset_id, config, split = hub_dataset(name)
    label = f"Hub dataset {dataset_id}" + (f" ({config})" if config else "") + f" split {split}"
    try:
        rows = load_dataset(dataset_id, config, split=split)
    except Exception as err:  # network, auth, renamed dataset: one clear message
        raise BenchmarkError(f"{name}: cannot load {label}: {err}") from err
    for index, row in enumerate(rows):
        yield index, f"{label} row {index}", row


def load_benchmark(
    name: str, source: str | os.PathLike, limit: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Rows normalized to {"id": str, "problem": str, "answer": str}, and the skipped rows as
    {"id": str, "reason": str}.

    source: a local folder holding <name>/test.jsonl, or the string "hub" to read the Hugging
    Face Hub. limit: keep the first `limit` valid rows (file order), for smoke runs; skipped rows
    are reported only up to that point.
    """
    _spec(name)
    if limit is not None and limit < 0:
        raise BenchmarkError(f"{name}: limit must be >= 0, got {limit}")
    if isinstance(source, str) and source == "hub":
        rows = _hub_rows(name)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise BenchmarkError(f"{name}: benchmark folder {folder} does not exist")
        path = folder / name / "test.jsonl"
        if not path.is_file():
            raise BenchmarkError(f"{name}: benchmark file {path} not found")
        rows = _file_rows(path)

    kept: list[dict] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for index, where, raw in rows:
        if limit is not None and len(kept) >= limit:
            break
        try:
            row = normalize_row(name, raw, index)
        except ValueError as err:
            raise BenchmarkError(f"{name}: {where}: {err}") from None
        # Sources repeat ids (college_math question_number); the row index makes them unique.
        if row["id"] in seen:
            row["id"] = f"{row['id']}#{index}"
            if row["id"] in seen:
                raise BenchmarkError(f"{name}: {where}: cannot make id {row['id']!r} unique")
        seen.add(row["id"])
        if not row["problem"]:
            skipped.append({"id": row["id"], "reason": f"empty problem ({where})"})
        elif not row["answer"]:
            skipped.append({"id": row["id"], "reason": f"empty gold answer ({where})"})
        else:
            kept.append(row)
    return kept, skipped
