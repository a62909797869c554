"""Resuming killed work: which saved state a re-run may continue from, and which it must not.

Training keeps checkpoints in a work folder and generation appends to `<out>.partial`; both
survive a kill so that the re-run continues where the killed one stopped. Saved state is tied
to a fingerprint of what produced it (the stage's settings and, for every input, its size and
mtime): a re-run with other settings or rebuilt inputs starts afresh instead of continuing
another run's state, and a checkpoint torn by the kill is never resumed.

Import-light (no torch): only json, shutil and pathlib.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from sedsft.artifacts import read_json_or_none, replace_folder, staging_path, write_text

log = logging.getLogger("sedsft")

FINGERPRINT_FILE = "fingerprint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# what a Trainer checkpoint holds besides the model save_model writes (DeepSpeed adds global_step*/)
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|trainer_state\.json|rng_state.*\.pth|"
                            r"latest|zero_to_fp32\.py)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def stamp(path: str | Path):
    """What identifies an input without reading it: [size, mtime_ns] of a file, that of every
    file of a folder (top level; hidden files such as Snakemake's timestamp left out), or the
    string itself for a Hub id."""
    path = Path(path)
    if path.is_file():
        info = path.stat()
        return [info.st_size, info.st_mtime_ns]
    if path.is_dir():
        return {child.name: stamp(child) for child in sorted(path.iterdir())
                if child.is_file() and not child.name.startswith(".")}
    return str(path)


def fingerprint(**parts) -> dict:
    """A JSON-comparable record of what a piece of saved state depends on."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def _write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, sort_keys=True, indent=1))


def complete_checkpoints(work_dir: str | Path) -> list[Path]:
    """checkpoint-N folders whose trainer_state.json (the Trainer writes it after the model,
    optimizer, scheduler and RNG states) is readable and says step N; oldest first."""
    found = []
    for folder in Path(work_dir).iterdir() if Path(work_dir).is_dir() else []:
        match = _CHECKPOINT_RE.match(folder.name)
        if match and folder.is_dir():
            state = read_json_or_none(folder / "trainer_state.json")
            if isinstance(state, dict) and state.get("global_step") == int(match.group(1)):
                found.append((int(match.group(1)), folder))
    return [folder for _, folder in sorted(found)]


def resume_point(work_dir: str | Path, expected: dict, is_main: bool = True) -> str | None:
    """The newest complete checkpoint in work_dir that a run with fingerprint `expected` may
    resume, else None. The main process also clears what must not be resumed: every checkpoint
    when the folder was filled under another fingerprint (or none), and checkpoints torn by a
    kill.

    Every rank reaches the same answer whatever the interleaving: the main process deletes
    before it writes the new fingerprint, and a mismatch means no resume for anyone."""
    work_dir = Path(work_dir)
    matches = read_json_or_none(work_dir / FINGERPRINT_FILE) == expected
    if is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        complete = set(complete_checkpoints(work_dir)) if matches else set()
        stale = [f for f in work_dir.iterdir() if _CHECKPOINT_RE.match(f.name) and f.is_dir() and f not in complete]
        if stale and not matches:
            log.warning("%s holds checkpoints of other settings or inputs; starting afresh", work_dir)
        for folder in stale:  # only checkpoint-N folders: a hand-given --work-dir may hold other things
            if matches:
                log.warning("%s was not completely written (killed while saving?); removing it", folder)
            shutil.rmtree(folder)
        if not matches:
            _write_json(work_dir / FINGERPRINT_FILE, expected)
    checkpoints = complete_checkpoints(work_dir) if matches else []
    return str(checkpoints[-1]) if checkpoints else None


def is_final(checkpoint: str | Path) -> bool:
    """Whether the checkpoint is the last step of its run (saved just before the kill, say):
    resuming it would make the HF Trainer train one step more than max_steps."""
    state = read_json_or_none(Path(checkpoint) / "trainer_state.json") or {}
    max_steps = state.get("max_steps") or 0
    return max_steps > 0 and state.get("global_step", 0) >= max_steps and has_weights(checkpoint)


def has_weights(checkpoint: str | Path) -> bool:
    return any((Path(checkpoint) / name).is_file() for name in WEIGHT_FILES)


def save_checkpoint_as_final(checkpoint: str | Path, tokenizer, out_dir: str | Path) -> None:
    """The final model from a finished checkpoint, with no training: its model files (the same
    bytes save_model writes) and the tokenizer, into out_dir.tmp, renamed into place."""
    out_dir = Path(out_dir)
    tmp = staging_path(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in Path(checkpoint).iterdir():
        if item.is_file() and not TRAINING_STATE.match(item.name):
            shutil.copy2(item, tmp / item.name)
    tokenizer.save_pretrained(str(tmp))
    replace_folder(tmp, out_dir)


def trainer_state(checkpoint: str | Path) -> dict:
    return read_json_or_none(Path(checkpoint) / "trainer_state.json") or {}


# ----------------------------------------------------------------------------- partial files


def claim_partial(partial: str | Path, expected: dict) -> None:
    """Keep `partial` only if it was written under fingerprint `expected` (kept next to it in
    <partial>.json); otherwise remove it and record `expected` for the lines to come."""
    partial = Path(partial)
    meta = Path(str(partial) + ".json")
    if read_json_or_none(meta) == expected:
        return
    if partial.exists():
        log.warning("%s was written with other settings or another model; starting afresh", partial)
        partial.unlink()
    _write_json(meta, expected)


def release_partial(partial: str | Path) -> None:
    Path(str(partial) + ".json").unlink(missing_ok=True)
