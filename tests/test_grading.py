"""Tests for sedsft.grading: boxed extraction, math-verify grading, hostile inputs, the pool."""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import sys
import time

import pytest

from sedsft.grading import (
    MAX_ANSWER_CHARS,
    Grade,
    Grader,
    answers_equivalent,
    extract_boxed,
    grade_answer,
    grade_many,
)

# ------------------------------------------------------------------ extract_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is $\\boxed{42}$.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}", "3"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} and \\fbox{8}", "8"),
        ("\\fbox{1} and \\boxed{9}", "9"),
        ("The final answer is $\\boxed 5$", "5"),
        ("\\boxed {4}", "4"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\boxed{3}}", "3"),
        ("\\boxed{ 12 }", "12"),
        ("\\boxed{}", ""),
        # truncated last box: fall back to the previous complete one
        ("\\boxed{10} ... so \\boxed{\\frac{1}{", "10"),
        ("no box here", None),
        ("", None),
        ("\\boxed", None),
        ("\\boxedx{3}", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_hostile_is_linear():
    t0 = time.perf_counter()
    assert extract_boxed("\\boxed{" * 200_000) is None
    assert extract_boxed("\\boxed{1}" * 100_000) == "1"
    assert extract_boxed("{" * 1_000_000 + "\\boxed{2}") == "2"
    assert extract_boxed("\\boxed{" * 5000 + "7" + "}" * 5000) == "7"
    assert time.perf_counter() - t0 < 5.0


# ------------------------------------------------------------------ grade_answer

CORRECT = [
    ("\\boxed{25}", "025"),
    ("\\boxed{025}", "25"),
    ("\\boxed{27.0}", "27"),
    ("\\boxed{27}", "27.0"),
    ("\\boxed{0.5}", "\\frac12"),
    ("\\boxed{\\dfrac{1}{2}}", "1/2"),
    ("\\boxed{1/2}", "\\dfrac{1}{2}"),
    ("\\boxed{\\frac{3}{2}}", "1.5"),
    ("\\boxed{2125}", "2125"),
    ("\\boxed{2,125}", "2125"),
    ("\\boxed{1\\,000}", "1000"),
    ("\\boxed{\\$18}", "18"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{x^2+1}", "1+x^2"),
    ("\\boxed{(1,2)}", "(1,2)"),
    ("\\boxed{(1, 2)}", "(1,2)"),
    ("\\boxed{\\sqrt{2}}", "2^{1/2}"),
    ("\\boxed{A}", "A"),
    ("\\boxed{a}", "A"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{B}}", "B"),
    ("\\boxed{\\textbf{(D)}}", "D"),
    ("\\boxed{\\text{Monday}}", "Monday"),
    ("$x = \\boxed{3}$", "3"),
    ("\\boxed{x=3}", "3"),
    ("The answer is \\boxed 7", "7"),
    ("wrong \\boxed{3} then right \\boxed{4}", "4"),
    ("\\boxed{4}", "$4$"),
    ("\\boxed{4}", "\\boxed{4}"),
]

INCORRECT = [
    ("\\boxed{26}", "025"),
    ("\\boxed{27.5}", "27"),
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("\\boxed{-1}", "1"),
    ("\\boxed{x^2-1}", "x^2+1"),
    ("\\boxed{(2,1)}", "(1,2)"),
    ("\\boxed{B}", "A"),
    ("\\boxed{(A)}", "C"),
    ("right \\boxed{4} then wrong \\boxed{3}", "4"),
    ("\\boxed{}", "4"),
    ("\\boxed{\\text{Tuesday}}", "Monday"),
]


@pytest.mark.parametrize("completion, gold", CORRECT)
def test_correct_pairs(completion, gold):
    g = grade_answer(completion, gold)
    assert g.correct, g
    assert g.status == "ok"
    assert g.extracted == extract_boxed(completion)


@pytest.mark.parametrize("completion, gold", INCORRECT)
def test_incorrect_pairs(completion, gold):
    g = grade_answer(completion, gold)
    assert not g.correct, g
    assert g.status in ("ok", "unparsable")


def test_gsm8k_numbers():
    golds = ["72", "10", "5", "42", "624", "1,080", "18", "3", "70000", "0.25"]
    preds = ["72", "10.00", "\\$5", "42", "624", "1080", "18", "3", "70,000", "\\frac{1}{4}"]
    wrong = ["73", "100", "\\$50", "4.2", "625", "1,008", "-18", "0.3", "7000", "\\frac{1}{5}"]
    for p, w, g in zip(preds, wrong, golds):
        assert grade_answer(f"... so the total is \\boxed{{{p}}}.", g).correct, (p, g)
        assert not grade_answer(f"... so the total is \\boxed{{{w}}}.", g).correct, (w, g)


def test_no_box():
    g = grade_answer("The answer is 25.", "25")
    assert g == Grade(False, None, "no_box")
    assert grade_answer("", "25") == Grade(False, None, "no_box")


def test_unparsable_gold_falls_back_to_string_compare():
    weird = "#@!unparsable gold??"
    assert grade_answer("\\boxed{#@!unparsable gold??}", weird).correct
    assert not grade_answer("\\boxed{25}", weird).correct
    assert grade_answer("\\boxed{25}", "").status in ("ok", "unparsable")


def test_unparsable_prediction():
    g = grade_answer("\\boxed{@@@ ### @@@}", "25")
    assert not g.correct and g.status == "unparsable"


def test_answers_equivalent():
    assert answers_equivalent("\\frac12", "0.5")
    assert answers_equivalent("0.5", "\\frac12")
    assert answers_equivalent("025", "25")
    assert answers_equivalent("x=3", "3") and answers_equivalent("3", "x=3")
    assert answers_equivalent("A", "a")
    assert answers_equivalent("@@", "@@")
    assert not answers_equivalent("2", "3")
    assert not answers_equivalent("x" * (MAX_ANSWER_CHARS + 1), "y")


# ------------------------------------------------------------------ hostile inputs

HOSTILE = [
    "\\boxed{" + "\\frac{" * 5000 + "1" + "}" * 5000 + "}",  # deep nesting, > cap
    "\\boxed{" + "\\frac{" * 5000 + "}",  # never closed
    "\\boxed{" + "1" * 50_000 + "}",  # huge number, > cap
    "x" * 2_000_000 + "\\boxed{" + "9" * 999 + "}",  # huge completion
    "\\boxed{1}" * 20_000 + "\\boxed{\ud800\udfff}",  # many boxes, lone surrogates
    "\\boxed{2\x00\x07}" + "\udcff" * 10,
    "\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}",  # slow to parse: hits the timeout
    "\\boxed{\\sqrt{" * 150 + "2" + "}" * 300,
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{1000000!}",
]


# Hostile model outputs against the gold "42", with the right grade: 0 unless the last complete
# box really holds 42. Shared with the RL reward (test_rl.py) and the eval path (test_evaluate.py).
HOSTILE_OUTPUTS = {
    "1 MB, no box": ("x" * 1_000_000, False),
    "1 MB, the right box at the end": ("step " * 200_000 + "\\boxed{42}", True),
    "1 MB inside the box": ("\\boxed{" + "4" * 1_000_000 + "}", False),
    "deeply nested LaTeX": ("\\boxed{" + "\\frac{" * 5000 + "42" + "}" * 5000 + "}", False),
    "nested and slow to parse (timeout)": ("\\boxed{" + "(" * 300 + "42" + ")" * 300 + "}", False),
    "nested under the length cap": ("\\boxed{\\sqrt{" * 150 + "42" + "}" * 300, False),
    "no box": ("The answer is 42.", False),
    "many boxes, the right one last": ("\\boxed{1}" * 20_000 + "\\boxed{42}", True),
    "many boxes, a wrong one last": ("\\boxed{42}" * 20_000 + "\\boxed{1}", False),
    "200k unclosed boxes": ("\\boxed{" * 200_000, False),
    "lone surrogates around the right box": ("\ud800 \\boxed{42} \udfff", True),
    "a lone surrogate inside the box": ("\\boxed{4\udcff2}", False),
    "undecodable bytes (replacement characters)": ("\ufffd\\boxed{42}\ufffd", True),
    "NUL and control characters in the box": ("\\boxed{42\x00\x07}", False),
}


# with raw non-UTF-8 bytes, as a completion can arrive from another tool
HOSTILE_COMPLETIONS = [text for text, _ in HOSTILE_OUTPUTS.values()] + [b"\\boxed{42}\xff\xfe"]
HOSTILE_LABELS = [right for _, right in HOSTILE_OUTPUTS.values()] + [True]


@functools.cache
def hostile_graded_once() -> tuple[list[Grade], float, list[Grade]]:
    """HOSTILE_COMPLETIONS against "42" through a real pool (2 workers, 1 s per item), once per
    session: (their grades, the seconds it took, the grades of the batch after it). The RL reward
    (test_rl.py) and the eval path (test_evaluate.py) check their own layer on these grades
    through GradedOnce instead of grading the set again."""
    with Grader(workers=2, timeout_s=1.0) as grader:
        started = time.perf_counter()
        grades = grader.grade(HOSTILE_COMPLETIONS, ["42"] * len(HOSTILE_COMPLETIONS))
        seconds = time.perf_counter() - started
        after = grader.grade(["\\boxed{42}", "\\boxed{41}"], ["42", "42"])
    return grades, seconds, after


class GradedOnce:
    """A stand-in for sedsft.grading.Grader (monkeypatch it in): a hostile completion against
    "42" gets the grade the one real pool run gave it (hostile_graded_once), anything else is
    graded in-process by grade_answer. `asked` records each grade() call's inputs."""

    asked: list[tuple[list[str], list[str], float]] = []

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, **_):
        self.timeout_s = timeout_s

    def grade(self, completions, golds, progress=None) -> list[Grade]:
        from sedsft.grading import _as_text

        completions, golds = [_as_text(c) for c in completions], [_as_text(g) for g in golds]
        GradedOnce.asked.append((completions, golds, self.timeout_s))
        known = {(_as_text(c), "42"): g for c, g in zip(HOSTILE_COMPLETIONS, hostile_graded_once()[0])}
        return [known.get((c, g)) or grade_answer(c, g, self.timeout_s) for c, g in zip(completions, golds)]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_hostile_outputs_through_the_pool_get_the_right_grade_in_bounded_time():
    grades, seconds, after = hostile_graded_once()
    assert seconds < 30
    assert [g.correct for g in grades] == HOSTILE_LABELS
    # a wrong answer is never "ok" by accident of a crash: each status says why it scored 0
    for (name, (text, right)), grade in zip(HOSTILE_OUTPUTS.items(), grades):
        if right:
            assert grade.status == "ok" and grade.extracted == "42", name
        else:
            assert grade.status in ("ok", "no_box", "unparsable", "timeout", "error"), name
            assert (grade.status == "no_box") == (extract_boxed(text) is None), name
    assert [(g.correct, g.status) for g in after] == [(True, "ok"), (False, "ok")]  # and it goes on


def test_hostile_in_process_bounded():
    for h in HOSTILE:
        t0 = time.perf_counter()
        g = grade_answer(h, "25", timeout_s=1.0)
        dt = time.perf_counter() - t0
        assert not g.correct
        assert g.status in ("no_box", "unparsable", "timeout", "ok", "error")
        assert dt < 3.0, (h[:40], dt)
    assert grade_answer(HOSTILE[0], "1").status == "unparsable"
    # slow to parse: a timeout where parsing takes longer than 0.5 s, else math-verify gives up on
    # it (a fast machine): either way wrong, in bounded time (the timeout itself: the next test)
    started = time.perf_counter()
    assert grade_answer(HOSTILE[6], "1", timeout_s=0.5).status in ("timeout", "unparsable")
    assert time.perf_counter() - started < 3.0


def test_the_in_process_timeout_fires_and_is_remembered(monkeypatch):
    """A comparison that would take 30 s is cut at timeout_s (status "timeout", the extracted
    answer kept), on any machine; the same pair again is answered from the timeout cache without
    running it; an earlier timer of the caller's survives."""
    import sedsft.answers as answers

    calls = []

    def slow(pred, gold):
        calls.append((pred, gold))
        time.sleep(30)
        return True, "ok"

    monkeypatch.setattr(answers, "_compare", slow)
    monkeypatch.setattr(answers, "_TIMEOUT_CACHE", answers.collections.OrderedDict())
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    signal.setitimer(signal.ITIMER_REAL, 5.0)  # the caller's own timer, re-armed afterwards
    try:
        started = time.perf_counter()
        assert grade_answer("so \\boxed{17}", "17", timeout_s=0.3) == Grade(False, "17", "timeout")
        assert 0.25 < time.perf_counter() - started < 3.0
        assert grade_answer("\\boxed{17}", "17", timeout_s=0.3) == Grade(False, "17", "timeout")
        assert len(calls) == 1  # the timeout cache answered: not run again
        assert 2.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 5.0 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_answer_slow_to_parse_is_not_parsed_again_for_every_comparison(monkeypatch):
    """maj@n and the distinct-answer count compare an answer with each class's first member: a
    pathological answer whose parse runs out of time costs one timeout for all those
    comparisons, not one each (a maj@8 over hostile samples took 5 s per pair); given more time
    it is tried again; the answer it is compared with is not blamed."""
    import sedsft.answers as answers

    monkeypatch.setattr(answers, "_SLOW_PARSES", answers.collections.OrderedDict())
    monkeypatch.setattr(answers, "_TIMEOUT_CACHE", answers.collections.OrderedDict())
    real, parsed = answers._parse_answer, []

    def parse(answer):
        parsed.append(answer)
        if answer == "SLOW":
            time.sleep(30)
        return real(answer)

    monkeypatch.setattr(answers, "_parse_answer", parse)
    others = ["1", "2", "x+1", "\\frac{1}{2}", "7"]
    assert not any(answers_equivalent("SLOW", other, timeout_s=0.3) for other in others)
    assert parsed.count("SLOW") == 1
    assert grade_answer("\\boxed{SLOW}", "3", timeout_s=0.3) == Grade(False, "SLOW", "timeout")
    assert parsed.count("SLOW") == 1
    assert not answers_equivalent("SLOW", "3", timeout_s=1.0)  # more time than it ran out of
    assert parsed.count("SLOW") == 2
    assert answers_equivalent("0.5", "\\frac{1}{2}", timeout_s=0.3) and answers_equivalent("x+1", "1+x")


def test_non_str_inputs_do_not_crash():
    assert grade_answer(None, "1").status == "no_box"  # type: ignore[arg-type]
    assert grade_answer(b"\\boxed{1}\xff", "1").correct  # type: ignore[arg-type]
    assert grade_answer("\\boxed{1}", 1).correct  # type: ignore[arg-type]


# ------------------------------------------------------------------ Grader


def _hang_on_marker(completion: str, gold: str, timeout_s: float) -> Grade:
    """Test hook run inside workers: items containing HANG block, ignoring signals, the way
    a long C call would."""
    if "HANG" in completion:
        signal.setitimer(signal.ITIMER_REAL, 0)
        while True:
            time.sleep(0.5)
    if "CRASH" in completion:
        import os

        os._exit(3)
    return grade_answer(completion, gold, timeout_s)


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=2.0) as g:
        yield g


def test_grader_order_and_values(grader):
    pairs = CORRECT + INCORRECT + [("no box", "1")]
    comps = [c for c, _ in pairs] * 3
    golds = [g for _, g in pairs] * 3
    out = grader.grade(comps, golds)
    assert len(out) == len(comps)
    expected = [grade_answer(c, g) for c, g in zip(comps, golds)]
    assert out == expected
    assert grader.grade([], []) == []
    with pytest.raises(ValueError):
        grader.grade(["a"], [])


def test_grader_hostile(grader):
    comps = HOSTILE + ["\\boxed{25}"]
    t0 = time.perf_counter()
    out = grader.grade(comps, ["25"] * len(comps))
    assert time.perf_counter() - t0 < 20
    assert [g.correct for g in out] == [False] * len(HOSTILE) + [True]
    assert out[6].status in ("timeout", "unparsable")  # slow to parse: see test_hostile_in_process_bounded
    assert out[-1] == Grade(True, "25", "ok")


def test_grader_timeout_kills_and_continues():
    n = 40
    comps = [f"\\boxed{{{i}}}" for i in range(n)]
    comps[5] = "HANG \\boxed{5}"
    comps[23] = "HANG"
    comps[30] = "CRASH \\boxed{30}"
    golds = [str(i) for i in range(n)]
    with Grader(workers=2, timeout_s=0.5, margin_s=0.5, _item_fn=_hang_on_marker) as g:
        t0 = time.perf_counter()
        out = g.grade(comps, golds)
        dt = time.perf_counter() - t0
        assert out[5] == Grade(False, "5", "timeout")
        assert out[23] == Grade(False, None, "timeout")
        assert out[30] == Grade(False, "30", "error")
        for i in set(range(n)) - {5, 23, 30}:
            assert out[i] == Grade(True, str(i), "ok"), (i, out[i])
        assert g.restarts == 3
        assert dt < 30, dt
        # still works after the restarts
        assert g.grade(["\\boxed{1}", "\\boxed{2}"], ["1", "3"]) == [
            Grade(True, "1", "ok"),
            Grade(False, "2", "ok"),
        ]


def test_grade_many_one_shot():
    out = grade_many(["\\boxed{\\frac{1}{2}}", "x", "\\boxed{B}"], ["0.5", "1", "B"], workers=1)
    assert [g.status for g in out] == ["ok", "no_box", "ok"]
    assert [g.correct for g in out] == [True, False, True]


def typical_batch(n: int, seed: int = 0) -> tuple[list[str], list[str], list[bool]]:
    """GSM8K/MATH/AIME-like answers, ~half correct, mostly in a different form than the gold
    so that most items really go through math-verify (not the string fast path): completions,
    golds, and whether each is right. (perf/grading.py times these.)"""
    rng = random.Random(seed)
    comps, golds, labels = [], [], []
    filler = "Let's think step by step. " * 40
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 999)
        ok = rng.random() < 0.5
        kind = i % 5
        if kind == 0:  # fraction vs decimal
            gold, pred = f"\\frac{{{a}}}{{{b}}}", (f"{a / b:.6f}" if ok else f"{a}/{b + 1}")
        elif kind == 1:  # GSM8K integer, thousands separator / float
            gold, pred = str(a * b), (f"{a * b:,}" if ok else f"{a * b + 1}.0")
        elif kind == 2:  # AIME with leading zeros
            gold, pred = f"{a:03d}", (str(a) if ok else str(a + 1))
        elif kind == 3:  # radicals, reordered
            gold, pred = f"{a}\\sqrt{{{b}}}", (f"\\sqrt{{{b}}} \\cdot {a}" if ok else f"{a}\\sqrt{{{b + 1}}}")
        else:  # exact match of a plain number
            gold, pred = str(a), (str(a) if ok else str(a + b))
        comps.append(f"{filler} so the result is $\\boxed{{{pred}}}$.")
        golds.append(gold)
        labels.append(ok)
    return comps, golds, labels


def test_a_typical_batch_gets_every_label_right(grader):
    """Each of 500 answers in the forms models write (decimal for a fraction, thousands commas,
    leading zeros, reordered radicals) graded as its label says; how fast: the benchmark."""
    comps, golds, labels = typical_batch(500, seed=2)
    out = grader.grade(comps, golds)
    assert [g.status for g in out] == ["ok"] * len(comps)
    wrong = [(golds[i], out[i].extracted, labels[i]) for i in range(len(comps)) if out[i].correct != labels[i]]
    assert not wrong, wrong[:10]
    assert 0.35 * len(out) <= sum(labels) <= 0.65 * len(out)  # both outcomes well represented


def test_unguarded_main_script(tmp_path):
    """A script without an `if __name__ == "__main__"` guard (like a Snakemake `script:`)
    can use the pool: workers must not re-run the parent's main module."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from sedsft.grading import grade_many\n"
        "print('RESULT', [g.correct for g in grade_many(['\\\\boxed{2}', '\\\\boxed{3}'], ['2', '2'], workers=1)])\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("RESULT") == 1, proc.stdout
    assert "RESULT [True, False]" in proc.stdout


def test_import_is_cheap():
    code = (
        "import sys, sedsft.grading; "
        "bad = [m for m in ('math_verify', 'sympy', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
