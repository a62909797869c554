"""How a user watches a training stage: the tracker its curves go to (TensorBoard event files by
default, under the stage's results folder) and one log line per logging step with step/total,
elapsed time and an ETA; and progress lines, with counts and rate, for long loops (generation,
grading) whose logs are files, not terminals."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("sedsft")

# what `tracker` may name (workflow/schemas/config.schema.yaml): the Trainer's own integrations
# (transformers 5.17 integrations/integration_utils.py INTEGRATION_TO_CALLBACK), installed by the user
# for all but TensorBoard (a pinned dependency)
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "none")
TENSORBOARD_FOLDER = "tensorboard"


def tracker_arguments(parser) -> None:
    parser.add_argument("--tracker", choices=TRACKERS, default="tensorboard",
                        help="where the training curves go (config `tracker`): TensorBoard event files in "
                             "the stage's tensorboard/ folder beside its checkpoints, or another Trainer "
                             "integration the user installed, or none")


def trainer_reporting(tracker: str, work_dir: str | Path) -> dict:
    """TrainingArguments for `tracker` (report_to), with TensorBoard's event files beside the
    stage's checkpoint folder (results/<exp>/<stage>/tensorboard) instead of the Trainer's
    default <output_dir>/runs/<date>_<host>. transformers 5.17 has no logging_dir argument: its
    TensorBoardCallback reads TENSORBOARD_LOGGING_DIR (integrations/integration_utils.py:602)."""
    if tracker not in TRACKERS:
        raise ValueError(f"tracker {tracker!r}: one of {', '.join(TRACKERS)}")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(work_dir).parent / TENSORBOARD_FOLDER)
    # a log file gets ProgressLog's lines, not a redrawn bar
    return {"report_to": "none" if tracker == "none" else [tracker], "disable_tqdm": True}


def watch(trainer) -> None:
    """The Trainer's plain printing of each log dict (PrinterCallback, added when tqdm is off)
    replaced by ProgressLog's line: the same values, with step/total, elapsed and ETA."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLog())


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def progress_line(step: int, total: int, first_step: int, elapsed: float) -> str:
    """`step 30/188 (16%) elapsed 1:02 ETA 5:27`: the rate from the steps this process ran (a
    resumed run's earlier steps took no time here)."""
    done = step - first_step
    eta = _clock((total - step) * elapsed / done) if done > 0 and total >= step else "?"
    percent = f" ({100 * step / total:.0f}%)" if total > 0 else ""
    return f"step {step}/{total}{percent} elapsed {_clock(elapsed)} ETA {eta}"


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@functools.cache
def _progress_log_class():
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        """One log line per logging step: progress_line and the logged values."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step = time.monotonic(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            line = progress_line(state.global_step, state.max_steps, self.first_step,
                                 time.monotonic() - self.started)
            values = " ".join(f"{k}={_format(v)}" for k, v in logs.items() if k != "epoch")
            log.info("%s | %s", line, values)

    return ProgressLog


def ProgressLog():  # noqa: N802 (an instance of a class built once, when transformers is imported)
    return _progress_log_class()()


class _LogLines:
    """A file for tqdm that writes each redraw as its own line (a log file shows no carriage
    returns)."""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress(total: int, what: str, unit: str, initial: int = 0, every_s: float = 30.0):
    """A tqdm counter for a long loop, as log lines at most every `every_s` seconds (counts, rate,
    ETA), and a last one when it closes."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=what, unit=unit, file=_LogLines(), mininterval=every_s,
                maxinterval=every_s, ascii=True, dynamic_ncols=False, ncols=100)


def progress_over(items, what: str, unit: str, every_s: float = 30.0):
    """Each of `items`, counted by progress()."""
    items = list(items)
    with progress(len(items), what, unit, every_s=every_s) as counter:
        for item in items:
            yield item
            counter.update(1)
