"""Answer extraction and equivalence for math reasoning, in-process (the pool: grading_pool).

The prediction is only the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in a
completion.  It is compared with the gold final answer by math-verify
(`math_verify.parse` + `math_verify.verify`), with a normalized string compare as fallback
when math-verify cannot parse one side (multiple-choice letters, free text, odd gold strings).

Robustness:

* ``grade_answer`` / ``answers_equivalent`` run under one wall-clock budget per call,
  enforced with ``signal.setitimer`` (so they must run in a process's main thread; in
  other threads they run without the in-process timeout).  math-verify's own ``signal.alarm``
  timeouts are switched off because they would clobber that timer.
* Inputs are capped (``MAX_ANSWER_CHARS``) before any parsing.
* A comparison or parse that ran out of time is remembered, so that it is not rerun with
  no more time than it had.

Importing this module is cheap: math-verify (sympy, antlr) is imported lazily.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The name the grading log lines have always carried (the log format shows it).
logger = logging.getLogger("sedsft.grading")

#: Extracted answers (and gold answers) longer than this are not parsed.
MAX_ANSWER_CHARS = 1000

@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None  # the boxed answer that was graded (None when no box)
    status: str  # "ok" | "no_box" | "unparsable" | "timeout" | "error"


# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# An escaped character (``\{``, ``\}``, ``\\``) or a grouping brace.
_BRACE_TOKEN_RE = re.compile(r"\\[\s\S]|[{}]")
_UNBRACED_RE = re.compile(r"[^$\n]*")


def _as_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return ""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", errors="replace")
    try:
        return str(x)
    except Exception:
        return ""


def extract_boxed(text: str) -> str | None:
    """Content of the LAST \\boxed{...} (balanced braces, nested braces ok; also \\fbox{...};
    `\\boxed 5` form too), or None.

    A last box that is never closed (truncated generation) is skipped in favour of the
    previous complete one.  ``\\{``/``\\}`` are literal braces, not groups.  Linear time.
    """
    text = _as_text(text)
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    boxes = [(m.start(), m.end()) for m in _BOX_RE.finditer(text)]
    limit = len(text)  # a box that failed to close bounds the search for earlier ones
    for start, pos in reversed(boxes):
        if pos > limit:
            continue
        j = pos
        while j < limit and text[j] in " \t":
            j += 1
        if j < limit and text[j] == "{":
            depth = 0
            for tok in _BRACE_TOKEN_RE.finditer(text, j, limit):
                t = tok.group()
                if t == "{":
                    depth += 1
                elif t == "}":
                    depth -= 1
                    if depth == 0:
                        return text[j + 1 : tok.start()].strip()
            # Never closed before `limit`: an earlier box can only close before this one
            # starts (its own depth stays above this one's), which keeps the search linear.
            limit = start
            continue
        if pos < j < limit:  # "\boxed 5" (Minerva style): up to '$' or end of line
            m = _UNBRACED_RE.match(text, j, limit)
            content = m.group().strip() if m else ""
            if content:
                return content
    return None


# --------------------------------------------------------------------------- normalization

_MATH_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\s+")
_THOUSANDS_SPACE_RE = re.compile(r"(?<=\d)(?:\\[,;:! ]|~)(?=\d{3}(?!\d))")
_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")


def _strip_delims(s: str) -> str:
    s = s.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in _MATH_DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                inner = s[len(left) : len(s) - len(right)]
                if left in inner or right in inner:  # "$1$ and $2$" is not one wrapped span
                    continue
                s = inner.strip()
                changed = True
                break
    return s


def _prep(s: str) -> str:
    """Answer string as handed to math-verify: math delimiters off, thin-space thousands
    separators (``1\\,000``) removed."""
    s = _strip_delims(s)
    s = _THOUSANDS_SPACE_RE.sub("", s)
    return s


def _norm(s: str) -> str:
    """Normalized string for the string-compare paths (case kept; callers lower() it)."""
    s = _strip_delims(s)
    for _ in range(3):
        t = _TEXT_CMD_RE.sub(r"\1", s)
        if t == s:
            break
        s = t
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("$", "")
    s = _SPACING_RE.sub("", s)
    return s.rstrip(".")


def _letter(s: str) -> str | None:
    m = _LETTER_RE.match(_norm(s))
    return m.group(1).upper() if m else None


_CHOICE_GOLD_RE = re.compile(r"^\(?[A-Z]\)?$")


def _is_choice_gold(gold: str) -> bool:
    return bool(_CHOICE_GOLD_RE.match(_norm(gold)))


# --------------------------------------------------------------------------- math-verify

_MV: Any = None
_MV_CONFIG: Any = None


def _mv():
    """Lazily import math-verify (heavy: sympy, antlr) and return the module namespace."""
    global _MV, _MV_CONFIG
    if _MV is None:
        import math_verify
        import math_verify.grader as mv_grader
        import math_verify.parser as mv_parser

        # We pass timeouts of None (our own itimer covers the whole item); silence the
        # one-time "timeout is disabled" warning that this triggers.
        mv_grader.TIMEOUT_WARNING_SHOWN = True
        mv_parser.TIMEOUT_WARNING_SHOWN = True
        # The answer is handed over as "\\boxed{...}": only the boxed pattern matters.
        _MV_CONFIG = (math_verify.LatexExtractionConfig(boxed_match_priority=0),)
        _MV = math_verify
    return _MV


_THREAD_WARNING_SHOWN = False


class _GradingTimeout(BaseException):
    """Raised by our SIGALRM handler.  BaseException so math-verify's / sympy's
    ``except Exception`` blocks do not swallow it."""


@contextlib.contextmanager
def _deadline(seconds: float | None):
    """Raise _GradingTimeout in the main thread after `seconds` of wall-clock time."""
    global _THREAD_WARNING_SHOWN
    if seconds is None or seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        if not _THREAD_WARNING_SHOWN:
            _THREAD_WARNING_SHOWN = True
            logger.warning(
                "sedsft.grading called outside the main thread: no in-process timeout "
                "(signals only work in the main thread); use Grader for a hard time limit"
            )
        yield
        return
    armed = [True]

    def _handler(signum, frame):
        if armed[0]:
            armed[0] = False
            raise _GradingTimeout()

    old_handler = signal.signal(signal.SIGALRM, _handler)
    t0 = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        try:
            armed[0] = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if old_delay > 0:  # re-arm a timer the caller had running
                left = max(1e-3, old_delay - (time.monotonic() - t0))
                signal.setitimer(signal.ITIMER_REAL, left, old_interval)


@lru_cache(maxsize=4096)
def _parse_answer(ans: str) -> tuple:
    """math-verify parse of one bare answer; only the sympy results (no string fallbacks)."""
    mv = _mv()
    out = mv.parse(
        "\\boxed{" + ans + "}",
        extraction_config=_MV_CONFIG,
        fallback_mode="no_fallback",
        extraction_mode="first_match",
        parsing_timeout=None,
    )
    return tuple(x for x in out if not isinstance(x, str))


def _verify(gold: tuple, pred: tuple) -> bool:
    mv = _mv()
    return bool(mv.verify(list(gold), list(pred), timeout_seconds=None))


def _gold_answer(gold: str) -> str:
    gold = _as_text(gold).strip()
    if "\\boxed" in gold or "\\fbox" in gold:
        inner = extract_boxed(gold)
        if inner is not None:
            gold = inner
    return _prep(gold)


_TIMEOUT_CACHE: collections.OrderedDict = collections.OrderedDict()
# answer -> the seconds it had left when its parse ran out of time. A pathological answer is slow
# to parse every time: re-parsing it for each comparison (maj@n's answer classes, distinct answers:
# one per class) would multiply the timeout by the number of comparisons.
_SLOW_PARSES: collections.OrderedDict = collections.OrderedDict()
_PARSE_DEADLINE = threading.local()  # .at: time.monotonic() by which the current comparison must end


def _parse_in_time(ans: str) -> tuple:
    """_parse_answer, except that an answer whose parse already ran out of about as much time as
    is left now (10 % and 50 ms more count as the same) times out at once; one that runs out now
    is remembered."""
    at = getattr(_PARSE_DEADLINE, "at", None)
    left = None if at is None else at - time.monotonic()
    ran_out = _SLOW_PARSES.get(ans)
    if left is not None and ran_out is not None and left <= 1.1 * ran_out + 0.05:
        raise _GradingTimeout()
    try:
        return _parse_answer(ans)
    except _GradingTimeout:
        if left is not None:
            _SLOW_PARSES[ans] = max(left, _SLOW_PARSES.get(ans, 0.0))
            if len(_SLOW_PARSES) > 256:
                _SLOW_PARSES.popitem(last=False)
        raise


@lru_cache(maxsize=8192)
def _compare(pred: str, gold: str) -> tuple[bool, str]:
    """(correct, status) for a prepared prediction and gold; may raise _GradingTimeout."""
    if not pred:
        return False, "unparsable"
    npred, ngold = _norm(pred), _norm(gold)
    if npred and npred == ngold:
        return True, "ok"
    if _is_choice_gold(gold):
        letter = _letter(pred)
        if letter is not None:
            return letter == _letter(gold), "ok"
    p = _parse_in_time(pred)
    g = _parse_in_time(gold) if len(gold) <= MAX_ANSWER_CHARS else ()
    if not p or not g:
        # math-verify cannot parse one side: normalized, case-insensitive string compare.
        correct = bool(npred) and npred.lower() == ngold.lower()
        return correct, ("ok" if (p or correct) else "unparsable")
    return _verify(g, p), "ok"


def _compare_guarded(pred: str, gold: str, timeout_s: float) -> tuple[bool, str]:
    if len(pred) > MAX_ANSWER_CHARS:
        return False, "unparsable"
    if len(gold) > MAX_ANSWER_CHARS:  # not parsed, not cached: plain string compare
        return (bool(pred) and _norm(pred) == _norm(gold)), "ok"
    key = (pred, gold)
    if timeout_s is not None and timeout_s <= _TIMEOUT_CACHE.get(key, -1.0):
        return False, "timeout"  # timed out before with at least this budget: skip the rerun
    _PARSE_DEADLINE.at = time.monotonic() + timeout_s if timeout_s is not None and timeout_s > 0 else None
    try:
        with _deadline(timeout_s):
            return _compare(pred, gold)
    except _GradingTimeout:
        _TIMEOUT_CACHE[key] = float(timeout_s)
        if len(_TIMEOUT_CACHE) > 256:
            _TIMEOUT_CACHE.popitem(last=False)
        return False, "timeout"
    finally:
        _PARSE_DEADLINE.at = None


def grade_answer(completion: str, gold: str, timeout_s: float = 5.0) -> Grade:
    """In-process grading (must be called in a process's main thread: math-verify uses signal.alarm).

    Never raises for bad input: hostile/unparsable answers give ``correct=False`` with status
    ``"unparsable"``, ``"timeout"`` or ``"error"``.
    """
    extracted: str | None = None
    try:
        extracted = extract_boxed(_as_text(completion))
        if extracted is None:
            return Grade(False, None, "no_box")
        pred = _prep(extracted) if len(extracted) <= MAX_ANSWER_CHARS else extracted
        correct, status = _compare_guarded(pred, _gold_answer(gold), timeout_s)
        return Grade(bool(correct), extracted, status)
    except _GradingTimeout:  # fired outside the guarded region (race at the very end)
        return Grade(False, extracted, "timeout")
    except Exception:
        logger.debug("grading failed", exc_info=True)
        return Grade(False, extracted, "error")


def answers_equivalent(a: str, b: str, timeout_s: float = 5.0) -> bool:
    """Two extracted answers equal by math-verify (symmetric; string fallback when one side
    cannot be parsed).  Never raises; timeouts count as not equivalent."""
    try:
        a, b = _as_text(a), _as_text(b)
        if a == b:
            return True
        if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
            return False
        pa, pb = _prep(a), _prep(b)
        c1, s1 = _compare_guarded(pa, pb, timeout_s)
        if c1:
            return True
        if s1 in ("timeout", "unparsable"):
            return False
        c2, _ = _compare_guarded(pb, pa, timeout_s)  # verify() is not symmetric
        return bool(c2)
    except BaseException as e:  # noqa: BLE001 - never propagate from a grading helper
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        logger.debug("answers_equivalent failed", exc_info=True)
        return False
