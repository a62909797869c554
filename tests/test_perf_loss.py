"""perf/loss.py as a user runs it: each method in a fresh process (the RSS column),
a subset chosen with --methods, the table also written as JSON and CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from workflow_helpers import REPO

SCRIPT = REPO / "perf" / "loss.py"
TINY = ["--device", "cpu", "--tokens", "48", "--hidden", "8", "--vocab", "64", "--repeats", "1",
        "--chunk-size", "16"]


def test_a_subset_of_methods_in_rss_mode_is_measured_and_written_as_data(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--methods", "fused_ce,fused_sed",
                          "--json", str(tmp_path / "rows.json"), "--csv", str(tmp_path / "rows.csv")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rss" in out.stdout  # each method ran in a process of its own
    stored = json.loads((tmp_path / "rows.json").read_text())
    assert [r["name"] for r in stored["rows"]] == ["fused_ce", "fused_sed"]
    assert stored["settings"]["methods"] == "fused_ce,fused_sed" and stored["settings"]["tokens"] == 48
    assert all(r["rss"] >= 0 and r["time"] > 0 for r in stored["rows"])
    with open(tmp_path / "rows.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["fused_ce", "fused_sed"]
    assert float(rows[1]["loss"]) == stored["rows"][1]["loss"]


def test_the_child_gets_no_option_of_the_parent_it_should_not_repeat():
    import importlib.util

    spec = importlib.util.spec_from_file_location("perf_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--tokens", "48", "--methods", "a,b", "--json=x.json", "--csv", "x.csv", "--no-rss"]
    assert module.without_options(argv, ("--methods", "--json", "--csv")) == ["--tokens", "48", "--no-rss"]
