"""perf/slurm_polling.py's arithmetic: the idle share of a node over a chain of jobs."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "slurm_polling.py"
spec = importlib.util.spec_from_file_location("slurm_polling", SCRIPT)
polling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(polling)


def test_idle_share_counts_gaps_and_overlaps_once():
    # 0-10 and 20-30 run, 10-20 idle: a third of the span
    assert polling.idle_share([(0, 10), (20, 30)]) == {"span_s": 30, "busy_s": 20, "idle_share": pytest.approx(1 / 3)}
    # overlapping jobs: the node is busy from 0 to 15, not 20 s
    assert polling.idle_share([(0, 10), (5, 15)])["busy_s"] == 15
    # a short job inside a long one: the span ends with the long one
    assert polling.idle_share([(0, 10), (2, 4)]) == {"span_s": 10, "busy_s": 10, "idle_share": 0}


def test_the_chain_is_one_rule_after_another():
    text = polling.chain_snakefile(3, 1)
    assert text.count("rule step") == 3 and 'input: "step1.txt"' in text and 'input: "step0.txt"' in text
    assert "step-1" not in text
