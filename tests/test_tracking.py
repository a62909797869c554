"""sedsft.tracking: the progress line's ETA, the Trainer wiring (TensorBoard event files beside
the checkpoints, ProgressLog in place of the Trainer's plain printer) and the log-line counter."""

from __future__ import annotations

import logging
import os

import pytest

from sedsft.tracking import TENSORBOARD_FOLDER, progress, progress_line, trainer_reporting, watch


def test_progress_line_rates_from_the_steps_this_process_ran():
    assert progress_line(30, 188, 0, 62.0) == "step 30/188 (16%) elapsed 1:02 ETA 5:27"
    # resumed at step 100: 10 steps in 20 s, 88 to go
    assert progress_line(110, 198, 100, 20.0) == "step 110/198 (56%) elapsed 0:20 ETA 2:56"
    assert progress_line(100, 198, 100, 5.0).endswith("ETA ?")  # no step yet: no rate
    assert progress_line(7200, 14400, 0, 7200.0) == "step 7200/14400 (50%) elapsed 2:00:00 ETA 2:00:00"


def test_trainer_reporting_names_the_tracker_and_the_event_folder(monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert trainer_reporting("none", "results/x/sft/checkpoints")["report_to"] == "none"
    assert trainer_reporting("wandb", "results/x/rl/checkpoints")["report_to"] == ["wandb"]
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == os.path.join("results", "x", "rl", TENSORBOARD_FOLDER)
    with pytest.raises(ValueError, match="tracker 'comet'"):
        trainer_reporting("comet", "w")


def test_the_counter_writes_lines_without_carriage_returns(capsys):
    with progress(3, "grade x.jsonl", "answer", every_s=0) as counter:
        for _ in range(3):
            counter.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("grade x.jsonl: 100%") and "3/3" in err


def test_a_trainer_writes_event_files_beside_its_checkpoints_and_logs_progress(tmp_path, monkeypatch, caplog):
    """A 4-step Trainer run of a tiny Llama: the scalars in results/<stage>/tensorboard (read back
    with TensorBoard's own reader), and one ProgressLog line per logging step instead of the
    Trainer's printed dicts."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    rows = [{"input_ids": list(range(i, i + 8)), "labels": list(range(i, i + 8))} for i in range(8)]
    work_dir = os.path.join("stage", "checkpoints")
    args = TrainingArguments(output_dir=work_dir, max_steps=4, per_device_train_batch_size=2, logging_steps=1,
                             learning_rate=1e-3, save_strategy="no", use_cpu=True,
                             **trainer_reporting("tensorboard", work_dir))
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    watch(trainer)
    assert not any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)
    with caplog.at_level(logging.INFO, logger="sedsft"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" elapsed")[0] for line in lines[:4]] == [f"step {s}/4 ({25 * s}%)" for s in range(1, 5)]
    assert "loss=" in lines[0] and "learning_rate=" in lines[0]

    (events,) = (tmp_path / "stage" / TENSORBOARD_FOLDER).iterdir()
    scalars = EventAccumulator(str(events.parent)).Reload()
    assert {"train/loss", "train/learning_rate", "train/grad_norm"} <= set(scalars.Tags()["scalars"])
    assert [e.step for e in scalars.Scalars("train/loss")] == [1, 2, 3, 4]
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert [e.value for e in scalars.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6)
    assert not (tmp_path / work_dir / "runs").exists()  # not the Trainer's default folder
