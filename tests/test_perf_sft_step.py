"""perf/sft_step.py: one SFT step per method on an experiment's own artifacts, each method in a
fresh process, written as data. Its numbers are only comparable if every method trains on the
same batches: the default Trainer's CE and our fused CE must then report the same loss."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "perf" / "sft_step.py"
EXP = "tiny"  # config.yaml's: its sft settings (learning rate, clipping, seed), the batch size given below


@pytest.fixture(scope="module")
def workdir(tiny_model, tmp_path_factory) -> Path:
    """results/tiny/{base/model, data/sft_train.parquet, sft/threshold.json} as the workflow lays them out."""
    from sedsft import artifacts

    root = tmp_path_factory.mktemp("sft_step")
    shutil.copytree(tiny_model, root / artifacts.model("base", EXP))
    rows = []
    for i in range(8):  # prompts of 5..12 tokens (labels -100), answers of 4..7 labelled tokens
        prompt, answer = list(range(3, 8 + i)), list(range(40 + i, 44 + i % 4 + i))
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    train = root / artifacts.sft_data("train", EXP)
    train.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(train)
    threshold = root / artifacts.threshold(EXP)
    threshold.parent.mkdir(parents=True)
    threshold.write_text(json.dumps({"tau": 0.5}))
    return root


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--experiment", EXP, *args], capture_output=True, text=True,
                          timeout=600)


def test_every_method_trains_on_the_same_batches_and_is_written_as_data(workdir, tmp_path):
    out_json, out_csv = tmp_path / "step.json", tmp_path / "step.csv"
    done = run_script("--workdir", str(workdir), "--batch-size", "2", "--steps", "2", "--warmup", "1",
                      "--repeats", "2", "--methods", "trainer_ce,ce_fused,sed_fused",
                      "--work-dir", str(tmp_path / "work"), "--json", str(out_json), "--csv", str(out_csv))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["name"] for r in rows] == ["trainer_ce", "ce_fused", "sed_fused"]
    assert all(r["steps"] == 2 and r["rounds"] == 2 and r["step_s"] > 0 and r["label_tokens_per_s"] > 0 and r["peak_rss"] > 0
               for r in rows)
    first, ce_fused, sed = rows
    assert first["x_step_time"] == first["x_peak_rss"] == 1.0
    # two rounds: each ratio is the median (here the mean) of the two ratios taken within a round
    assert all(len(r["x_tokens_per_s_per_round"]) == 2 for r in rows)
    assert first["x_tokens_per_s_per_round"] == [1.0, 1.0]
    assert ce_fused["x_tokens_per_s"] == pytest.approx(sum(ce_fused["x_tokens_per_s_per_round"]) / 2)
    # the Trainer's own CE and our fused CE: the same loss over the same three batches (in each round)
    assert ce_fused["final_loss"] == pytest.approx(first["final_loss"], rel=1e-5)
    assert sed["final_loss"] != pytest.approx(first["final_loss"], rel=1e-5)  # SED adds its term
    with open(out_csv) as fh:
        table = list(csv.DictReader(fh))
    assert [r["name"] for r in table] == ["trainer_ce", "ce_fused", "sed_fused"]
    assert float(table[2]["step_s"]) == pytest.approx(sed["step_s"])
    assert "trainer_ce" in done.stdout and "x tok/s" in done.stdout


def test_an_unbuilt_experiment_or_an_unknown_method_is_one_clear_line(workdir, tmp_path):
    done = run_script("--workdir", str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("snakemake --cores all results/tiny/sft/threshold.json")
    done = run_script("--workdir", str(workdir), "--methods", "trainer_ce,liger")
    assert done.returncode != 0 and "unknown method 'liger'" in done.stderr and "Traceback" not in done.stderr
