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


def test_the_peers_run_where_they_can_and_say_why_not_elsewhere(tmp_path):
    """chunked_ce (torchtune-style, plain torch) gives naive_ce's loss; the Triton peers are
    reported as skipped on CPU, not crashed on."""
    out = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--no-rss", "--methods", "naive_ce,chunked_ce,liger_ce,cce_ce",
                          "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "liger_ce: skipped (Triton kernels: CUDA only)" in out.stdout
    assert "cce_ce: skipped (Triton kernels: CUDA only)" in out.stdout
    rows = {r["name"]: r for r in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    assert set(rows) == {"naive_ce", "chunked_ce"}
    assert abs(rows["chunked_ce"]["loss"] - rows["naive_ce"]["loss"]) <= 1e-5 * abs(rows["naive_ce"]["loss"])
    bad = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--no-rss", "--methods", "fused_ce,nope"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--methods: unknown method 'nope'" in bad.stderr
