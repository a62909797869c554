"""Grading of model answers for math reasoning (RL rewards, evaluation, answer diversity).

The prediction is only the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in a
completion.  It is compared with the gold final answer by math-verify
(`math_verify.parse` + `math_verify.verify`), with a normalized string compare as fallback
when math-verify cannot parse one side (multiple-choice letters, free text, odd gold strings).

Robustness:

* ``grade_answer`` / ``answers_equivalent`` run in-process under one wall-clock budget per
  call, enforced with ``signal.setitimer`` (so they must run in a process's main thread; in
  other threads they run without the in-process timeout).  math-verify's own ``signal.alarm``
  timeouts are switched off because they would clobber that timer.
* Inputs are capped (``MAX_ANSWER_CHARS``) before any parsing.
* ``Grader`` is a pool of worker *processes* (forkserver/spawn, never fork or threads) that
  additionally guards every item with a hard wall-clock limit: a worker that does not answer
  within ``timeout_s + margin`` (C code that ignores signals, a crash) is killed, its item is
  marked ``"timeout"`` (``"error"`` for a crash), a fresh worker is started and the rest of
  the batch continues.

Importing this module is cheap: math-verify (sympy, antlr) is imported lazily.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "Grade",
    "Grader",
    "MAX_ANSWER_CHARS",
    "answers_equivalent",
    "extract_boxed",
    "grade_answer",
    "grade_many",
]

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- process pool


def _grade_one(completion: str, gold: str, timeout_s: float) -> Grade:
    return grade_answer(completion, gold, timeout_s)


def _limit_memory(max_bytes: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        target = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
        if soft == resource.RLIM_INFINITY or soft > target:
            resource.setrlimit(resource.RLIMIT_AS, (target, hard))
    except Exception:
        pass


def _worker_main(conn, item_fn: Callable[[str, str, float], Grade], timeout_s: float, mem_bytes: int) -> None:
    """Worker loop: receive a chunk [(idx, completion, gold), ...], send (idx, grade) per item."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if mem_bytes > 0:
        _limit_memory(mem_bytes)
    try:  # warm up: import math-verify, build its regexes, touch sympy/antlr
        grade_answer("\\boxed{\\frac{1}{2}}", "0.5", timeout_s=max(timeout_s, 30.0))
    except BaseException:
        pass
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for idx, completion, gold in chunk:
            try:
                g = item_fn(completion, gold, timeout_s)
                out = (bool(g.correct), g.extracted, g.status)
            except BaseException:
                out = (False, None, "error")
            conn.send((idx, out))


class _Worker:
    __slots__ = ("proc", "conn", "ready", "items", "deadline", "started")

    def __init__(self, proc, conn):
        self.proc = proc
        self.conn = conn
        self.ready = False  # warm-up done ("ready" message received)
        self.items: collections.deque = collections.deque()  # indices sent, not yet answered
        self.deadline = math.inf  # wall-clock limit for the item at items[0]
        self.started = time.monotonic()


@contextlib.contextmanager
def _main_module_hidden(enabled: bool):
    """Keep spawn/forkserver children from re-importing ``__main__``.

    The workers only need ``sedsft.grading``; re-running the parent's main script in every
    worker would be slow, and fatal for unguarded scripts (e.g. Snakemake ``script:`` files,
    which have no ``if __name__ == "__main__"`` guard).  multiprocessing reads these
    attributes synchronously in ``Process.start()``.
    """
    main = sys.modules.get("__main__")
    if not enabled or main is None:
        yield
        return
    missing = object()
    saved = {k: main.__dict__.get(k, missing) for k in ("__file__", "__spec__")}
    try:
        if saved["__file__"] is not missing:
            del main.__file__
        main.__spec__ = None
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                main.__dict__.pop(k, None)
            else:
                setattr(main, k, v)


class Grader:
    """Process pool (spawn or forkserver context; NOT threads) that grades many answers; a context manager.

    Each item gets `timeout_s` inside its worker (itimer, see `grade_answer`) and a hard
    wall-clock limit of `timeout_s + margin_s` enforced by the parent: a worker over it is
    killed and replaced, the item gets status "timeout" (a crashed worker: "error") and the
    rest of the batch goes on.  Items go to workers in chunks and results come back per
    item; workers stay warm between `grade` calls; results keep the input order.
    `restarts` counts replaced workers.  Not thread-safe for concurrent `grade` calls
    (they are serialized by a lock).
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        margin_s: float | None = None,
        start_method: str | None = None,
        startup_timeout_s: float = 120.0,
        max_worker_memory_bytes: int = 4 << 30,
        _item_fn: Callable[[str, str, float], Grade] | None = None,
    ):
        import multiprocessing as mp

        self.workers = max(1, int(workers))
        self.timeout_s = float(timeout_s)
        if margin_s is None:
            margin_s = min(max(1.0, 0.5 * self.timeout_s), 5.0)
        self.margin_s = float(margin_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._mem = int(max_worker_memory_bytes or 0)
        self._item_fn = _item_fn or _grade_one
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"Grader needs the 'forkserver' or 'spawn' start method, not {start_method!r}")
        self._ctx = mp.get_context(start_method)
        self._lock = threading.Lock()
        self._closed = False
        self._startup_failures = 0
        self.restarts = 0
        self._pool: list[_Worker] = []
        try:
            for _ in range(self.workers):
                self._pool.append(self._spawn())
        except BaseException:
            self._closed = True
            for w in self._pool:
                self._kill(w)
            raise

    # -- lifecycle ---------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, self._item_fn, self.timeout_s, self._mem),
            name="sedsft-grader",
            daemon=True,
        )
        with _main_module_hidden(getattr(self._item_fn, "__module__", None) != "__main__"):
            proc.start()
        child.close()
        return _Worker(proc, parent)

    @staticmethod
    def _kill(w: _Worker) -> None:
        with contextlib.suppress(Exception):
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(timeout=10)
        with contextlib.suppress(Exception):
            w.conn.close()
        with contextlib.suppress(Exception):
            w.proc.close()

    def _replace(self, k: int) -> None:
        self._kill(self._pool[k])
        self.restarts += 1
        self._pool[k] = self._spawn()

    def _reset_pool(self) -> None:
        """After an interrupted `grade` the workers hold stale chunks: start afresh."""
        for k in range(len(self._pool)):
            self._kill(self._pool[k])
            self._pool[k] = self._spawn()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, []
        for w in pool:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        end = time.monotonic() + 2.0
        for w in pool:
            with contextlib.suppress(Exception):
                w.proc.join(timeout=max(0.0, end - time.monotonic()))
            self._kill(w)

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # -- grading -----------------------------------------------------------------------
    def grade(self, completions: Sequence[str], golds: Sequence[str]) -> list[Grade]:
        completions = [_as_text(c) for c in completions]
        golds = [_as_text(g) for g in golds]
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        if not completions:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError("Grader is closed")
            try:
                return self._grade(completions, golds)
            except BaseException:
                self._reset_pool()
                raise

    def _grade(self, completions: list[str], golds: list[str]) -> list[Grade]:
        from multiprocessing.connection import wait

        n = len(completions)
        results: list[Grade | None] = [None] * n
        remaining = n
        chunksize = max(1, min(64, math.ceil(n / (self.workers * 8))))
        queue: collections.deque = collections.deque(
            list(range(s, min(n, s + chunksize))) for s in range(0, n, chunksize)
        )
        item_limit = self.timeout_s + self.margin_s

        for k, w in enumerate(self._pool):  # a worker that died while idle: replace, no blame
            if w.proc.exitcode is not None:
                self._replace(k)

        def dispatch(w: _Worker) -> None:
            if w.items or not queue:
                return
            idxs = queue.popleft()
            w.items.extend(idxs)
            now = time.monotonic()
            w.deadline = now + item_limit
            if not w.ready:
                w.deadline += max(0.0, w.started + self.startup_timeout_s - now)
            try:
                w.conn.send([(i, completions[i], golds[i]) for i in idxs])
            except (OSError, EOFError):
                pass  # dead worker: seen as EOF or a missed deadline below

        def fail(k: int, status: str | None) -> None:
            """Kill worker k; its current item gets `status` (None: no blame), the rest of
            its chunk goes back to the queue."""
            nonlocal remaining
            w = self._pool[k]
            if status is not None and w.items:
                i = w.items.popleft()
                extracted = None
                with contextlib.suppress(Exception):
                    extracted = extract_boxed(completions[i])
                results[i] = Grade(False, extracted, status)
                remaining -= 1
            if w.items:
                queue.appendleft(list(w.items))
                w.items.clear()
            if not w.ready:
                self._startup_failures += 1
                if self._startup_failures > 3:
                    raise RuntimeError("grading workers fail to start")
            self._replace(k)
            dispatch(self._pool[k])

        for w in self._pool:
            dispatch(w)
        while remaining > 0:
            waiting = [w for w in self._pool if w.items or not w.ready]
            now = time.monotonic()
            deadlines = [w.deadline for w in self._pool if w.items]
            timeout = max(0.0, min(deadlines) - now) if deadlines else 1.0
            ready_conns = wait([w.conn for w in waiting], timeout=timeout)
            for conn in ready_conns:
                k = next((j for j, w in enumerate(self._pool) if w.conn is conn), None)
                if k is None:
                    continue
                w = self._pool[k]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # worker died (crash, OOM kill)
                    logger.warning("grading worker %s died; restarting it", w.proc.pid)
                    fail(k, "error" if w.ready else None)
                    continue
                if msg[0] == "ready":
                    w.ready = True
                    self._startup_failures = 0
                    if w.items:
                        w.deadline = time.monotonic() + item_limit
                    continue
                idx, (correct, extracted, status) = msg
                if w.items and w.items[0] == idx:
                    w.items.popleft()
                elif idx in w.items:
                    w.items.remove(idx)
                if results[idx] is None:
                    results[idx] = Grade(bool(correct), extracted, status)
                    remaining -= 1
                w.deadline = time.monotonic() + item_limit
                if not w.items:
                    dispatch(w)
            now = time.monotonic()
            for k, w in enumerate(self._pool):
                if w.items and now > w.deadline:
                    if w.ready:
                        logger.warning(
                            "grading worker %s exceeded %.1fs on one item; killing and restarting it",
                            w.proc.pid,
                            item_limit,
                        )
                    fail(k, "timeout" if w.ready else None)
            for w in self._pool:
                dispatch(w)
        return results  # type: ignore[return-value]


def grade_many(
    completions: Iterable[str],
    golds: Iterable[str],
    workers: int = 2,
    timeout_s: float = 5.0,
) -> list[Grade]:
    """Convenience: one-shot Grader."""
    completions, golds = list(completions), list(golds)
    if not completions and not golds:
        return []
    with Grader(workers=workers, timeout_s=timeout_s) as g:
        return g.grade(completions, golds)
