"""A pool of worker processes that grades many answers, each under a hard time limit.

``Grader`` runs `sedsft.answers.grade_answer` in worker *processes* (forkserver/spawn, never
fork or threads) and additionally guards every item with a hard wall-clock limit: a worker
that does not answer within ``timeout_s + margin`` (C code that ignores signals, a crash) is
killed, its item is marked ``"timeout"`` (``"error"`` for a crash), a fresh worker is started
and the rest of the batch continues.

Importing this module is cheap: multiprocessing is imported when a pool starts, math-verify
only in the workers.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Sequence

from sedsft.answers import Grade, _as_text, extract_boxed, grade_answer

# The name the grading log lines have always carried (the log format shows it).
logger = logging.getLogger("sedsft.grading")


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

    def restart_clock(self, item_limit: float) -> None:
        """The item now at items[0] gets a whole `item_limit` from now."""
        self.deadline = time.monotonic() + item_limit


@contextlib.contextmanager
def _main_module_hidden(enabled: bool):
    """Keep spawn/forkserver children from re-importing ``__main__``.

    The workers only need ``sedsft.grading_pool``; re-running the parent's main script in every
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


class _Batch:
    """One `Grader.grade` call's bookkeeping: the chunks no worker holds, the grades so far.

    Which worker holds which items is kept on the workers (`_Worker.items`); the batch hands
    them chunks, takes their answers, and takes back what a killed worker left unanswered.
    """

    def __init__(self, completions: list[str], golds: list[str], *, workers: int,
                 item_limit: float, startup_timeout_s: float):
        n = len(completions)
        self.completions = completions
        self.golds = golds
        self.item_limit = item_limit
        self.startup_timeout_s = startup_timeout_s
        self.results: list[Grade | None] = [None] * n
        self.remaining = n
        # small chunks: a killed worker loses little work, and the workers finish together
        chunksize = max(1, min(64, math.ceil(n / (workers * 8))))
        self.queue: collections.deque = collections.deque(
            list(range(s, min(n, s + chunksize))) for s in range(0, n, chunksize)
        )

    def dispatch(self, w: _Worker) -> None:
        """Send an idle worker the next chunk."""
        if w.items or not self.queue:
            return
        idxs = self.queue.popleft()
        w.items.extend(idxs)
        now = time.monotonic()
        w.deadline = now + self.item_limit
        if not w.ready:  # a worker still warming up is not timed before its startup allowance ends
            w.deadline += max(0.0, w.started + self.startup_timeout_s - now)
        try:
            w.conn.send([(i, self.completions[i], self.golds[i]) for i in idxs])
        except (OSError, EOFError):
            pass  # dead worker: seen as EOF or a missed deadline later

    def answered(self, w: _Worker, idx: int, grade: Grade) -> None:
        if w.items and w.items[0] == idx:
            w.items.popleft()
        elif idx in w.items:
            w.items.remove(idx)
        if self.results[idx] is None:
            self.results[idx] = grade
            self.remaining -= 1
        w.restart_clock(self.item_limit)
        if not w.items:
            self.dispatch(w)

    def blame_current_item(self, w: _Worker, status: str) -> None:
        """The item a killed worker was on fails with `status`."""
        i = w.items.popleft()
        extracted = None
        with contextlib.suppress(Exception):
            extracted = extract_boxed(self.completions[i])
        self.results[i] = Grade(False, extracted, status)
        self.remaining -= 1

    def take_back(self, w: _Worker) -> None:
        """What a killed worker left unanswered goes first to the next worker."""
        if w.items:
            self.queue.appendleft(list(w.items))
            w.items.clear()

    def seconds_to_next_deadline(self, pool: list[_Worker]) -> float:
        now = time.monotonic()
        deadlines = [w.deadline for w in pool if w.items]
        return max(0.0, min(deadlines) - now) if deadlines else 1.0


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
    def grade(self, completions: Sequence[str], golds: Sequence[str], progress: str | None = None) -> list[Grade]:
        """One Grade per completion, in order; `progress` names the work in log lines with counts
        and rate (evaluation and diversity; not RL's many small batches)."""
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
                return self._grade(completions, golds, progress)
            except BaseException:
                self._reset_pool()
                raise

    def _grade(self, completions: list[str], golds: list[str], what: str | None) -> list[Grade]:
        from sedsft.tracking import progress

        self._replace_workers_that_died_idle()
        batch = _Batch(completions, golds, workers=self.workers, item_limit=self.timeout_s + self.margin_s,
                       startup_timeout_s=self.startup_timeout_s)
        counter = progress(len(completions), what, "answer") if what else contextlib.nullcontext()
        with counter:
            for w in self._pool:
                batch.dispatch(w)
            while batch.remaining > 0:
                self._take_messages(batch)
                self._kill_overdue(batch)
                for w in self._pool:
                    batch.dispatch(w)
                if what:
                    counter.update(len(completions) - batch.remaining - counter.n)
        return batch.results  # type: ignore[return-value]

    def _replace_workers_that_died_idle(self) -> None:
        """No item is to blame for a worker that died between batches."""
        for k, w in enumerate(self._pool):
            if w.proc.exitcode is not None:
                self._replace(k)

    def _take_messages(self, batch: _Batch) -> None:
        """Wait for messages until the nearest item deadline, and handle each that came."""
        from multiprocessing.connection import wait

        waiting = [w for w in self._pool if w.items or not w.ready]
        for conn in wait([w.conn for w in waiting], timeout=batch.seconds_to_next_deadline(self._pool)):
            # a worker replaced while handling an earlier message is no longer in the pool
            k = next((j for j, w in enumerate(self._pool) if w.conn is conn), None)
            if k is not None:
                self._take_message(batch, k)

    def _take_message(self, batch: _Batch, k: int) -> None:
        w = self._pool[k]
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # worker died (crash, OOM kill)
            logger.warning("grading worker %s died; restarting it", w.proc.pid)
            self._fail(batch, k, "error" if w.ready else None)
            return
        if msg[0] == "ready":
            w.ready = True
            self._startup_failures = 0
            if w.items:
                w.restart_clock(batch.item_limit)
            return
        idx, (correct, extracted, status) = msg
        batch.answered(w, idx, Grade(bool(correct), extracted, status))

    def _kill_overdue(self, batch: _Batch) -> None:
        now = time.monotonic()
        for k in range(len(self._pool)):
            w = self._pool[k]
            if w.items and now > w.deadline:
                if w.ready:
                    logger.warning(
                        "grading worker %s exceeded %.1fs on one item; killing and restarting it",
                        w.proc.pid,
                        batch.item_limit,
                    )
                self._fail(batch, k, "timeout" if w.ready else None)

    def _fail(self, batch: _Batch, k: int, status: str | None) -> None:
        """Kill worker k; its current item gets `status` (None: no blame, as for a worker that
        never got through its warm-up), the rest of its chunk goes back to the queue."""
        w = self._pool[k]
        if status is not None and w.items:
            batch.blame_current_item(w, status)
        batch.take_back(w)
        if not w.ready:
            self._startup_failures += 1
            if self._startup_failures > 3:
                raise RuntimeError("grading workers fail to start")
        self._replace(k)
        batch.dispatch(self._pool[k])


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
