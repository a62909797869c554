"""sedsft.resume: what a re-run after a kill may continue from (the end-to-end kills are in
test_reliability.py)."""

from __future__ import annotations

import json
import os

import pytest

from sedsft.resume import (
    FINGERPRINT_FILE,
    claim_partial,
    fingerprint,
    is_final,
    release_partial,
    resume_point,
    save_checkpoint_as_final,
    stamp,
)
from sedsft.sft import mean_train_loss

RUN = fingerprint(stage="sft", sft={"loss": "sed", "max_steps": 12}, inputs={"train": [10, 1]})
OTHER = fingerprint(stage="sft", sft={"loss": "ce", "max_steps": 12}, inputs={"train": [10, 1]})


def checkpoint(work, step, state="ok", max_steps=12, weights=True):
    folder = work / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "config.json").write_text("{}")
    (folder / "optimizer.pt").write_bytes(b"adam")
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps,
                                                               "log_history": []}))
    elif state == "torn":
        (folder / "trainer_state.json").write_text('{"global_step": ')
    return folder


def test_a_new_work_dir_records_its_fingerprint(tmp_path):
    assert resume_point(tmp_path / "work", RUN) is None
    assert json.loads((tmp_path / "work" / FINGERPRINT_FILE).read_text()) == RUN
    checkpoint(tmp_path / "work", 4)
    assert resume_point(tmp_path / "work", RUN) == str(tmp_path / "work" / "checkpoint-4")


def test_checkpoints_torn_by_a_kill_are_removed_and_the_last_whole_one_resumed(tmp_path):
    work = tmp_path / "work"
    resume_point(work, RUN)
    checkpoint(work, 4)
    checkpoint(work, 8, state="missing")  # killed before trainer_state.json was written
    checkpoint(work, 12, state="torn")  # killed while writing it
    assert resume_point(work, RUN) == str(work / "checkpoint-4")
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-4", FINGERPRINT_FILE]


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
    work = tmp_path / "work"
    resume_point(work, OTHER)
    checkpoint(work, 4)
    (work / "notes.txt").write_text("a hand-given --work-dir may hold other things")
    # another rank sees the same answer and deletes nothing
    assert resume_point(work, RUN, is_main=False) is None and (work / "checkpoint-4").exists()
    assert resume_point(work, RUN) is None
    assert sorted(p.name for p in work.iterdir()) == [FINGERPRINT_FILE, "notes.txt"]
    assert resume_point(work, RUN, is_main=False) is None


def test_checkpoints_without_a_fingerprint_are_not_resumed(tmp_path):
    checkpoint(tmp_path, 4)  # from before fingerprints, or copied in by hand
    assert resume_point(tmp_path, RUN) is None and not (tmp_path / "checkpoint-4").exists()


def test_only_the_max_steps_checkpoint_with_weights_is_final(tmp_path):
    assert is_final(checkpoint(tmp_path, 12))
    assert not is_final(checkpoint(tmp_path, 8))
    assert not is_final(checkpoint(tmp_path / "sharded", 12, weights=False))  # ZeRO-3 shards only: train


def test_a_final_checkpoint_becomes_the_model_without_its_training_state(tmp_path):
    class Tokenizer:
        def save_pretrained(self, folder):
            (tmp_path / "out.tmp" / "tokenizer.json").write_text("{}")

    final = checkpoint(tmp_path / "work", 12)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.bin").write_bytes(b"old")
    save_checkpoint_as_final(final, Tokenizer(), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tokenizer.json"]
    assert not (tmp_path / "out.tmp").exists()


def test_stamp_sees_a_rewritten_input_and_keeps_hub_ids(tmp_path):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")
    before = stamp(data)
    os.utime(data, ns=(before[1] + 10**9, before[1] + 10**9))
    assert stamp(data) != before
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    (model / ".snakemake_timestamp").touch()
    assert list(stamp(model)) == ["model.safetensors"]
    assert stamp("meta-llama/Llama-3.2-3B-Instruct") == "meta-llama/Llama-3.2-3B-Instruct"


def test_a_partial_file_is_kept_only_for_its_own_fingerprint(tmp_path):
    partial = tmp_path / "out.jsonl.partial"
    claim_partial(partial, RUN)
    partial.write_text('{"id": "q0"}\n')
    claim_partial(partial, RUN)
    assert partial.exists()
    claim_partial(partial, OTHER)
    assert not partial.exists()
    release_partial(partial)
    assert not (tmp_path / "out.jsonl.partial.json").exists()


@pytest.mark.parametrize("history, expected", [
    ([{"loss": 2.0, "step": 2}, {"loss": 1.0, "step": 4}, {"train_runtime": 1.0, "step": 4}], 1.5),
    ([{"loss": 3.0, "step": 1}, {"loss": 1.0, "step": 4}], 1.5),  # windows weighted by their steps
    ([{"train_runtime": 1.0, "step": 0}], None),
])
def test_mean_train_loss_weights_each_logged_loss_by_its_steps(history, expected):
    assert mean_train_loss(history) == expected
