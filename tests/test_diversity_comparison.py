"""The SFT-diversity comparison over seeds (results/compare/sft_diversity/{name}.md) on
diversity files written here, against a computation of its own: textbook t intervals, and the
paired t-test's p from the t distribution's closed form with two degrees of freedom."""

from __future__ import annotations

import json
import math

import pytest

from sedsft import seeds

T_975_DF2 = 4.302652729911275  # the 97.5 % quantile of t with 2 degrees of freedom (tables)
VALUES = {  # run -> (distinct_3, self_bleu, pass@1)
    "a": (0.50, 70.0, 0.20), "a.seed43": (0.52, 72.5, 0.25), "a.seed44": (0.47, 69.0, 0.22),
    "b": (0.48, 74.0, 0.24), "b.seed43": (0.49, 75.0, 0.26), "b.seed44": (0.46, 71.5, 0.21),
}
RUNS = {"a": {42: "a", 43: "a.seed43", 44: "a.seed44"}, "b": {42: "b", 43: "b.seed43", 44: "b.seed44"}}


@pytest.fixture
def results(tmp_path):
    for run, (distinct_3, self_bleu, pass_1) in VALUES.items():
        folder = tmp_path / run / "sft"
        folder.mkdir(parents=True)
        (folder / "diversity.json").write_text(json.dumps(
            {"distinct_3": distinct_3, "self_bleu": self_bleu, "pass_at_k": {"1": pass_1, "4": 0.5}}))
    return tmp_path


def t_interval(values):
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, [mean - T_975_DF2 * sd / math.sqrt(3), mean + T_975_DF2 * sd / math.sqrt(3)]


def test_each_metric_over_seeds_and_the_paired_difference(results):
    summary = seeds.compare_diversity_over_seeds(RUNS, results)
    assert summary["reference"] == "a" and summary["seeds"] == {"a": [42, 43, 44], "b": [42, 43, 44]}
    for index, key in enumerate(("distinct_3", "self_bleu", "pass@1")):
        a = [VALUES[run][index] for run in RUNS["a"].values()]
        b = [VALUES[run][index] for run in RUNS["b"].values()]
        mean, ci = t_interval(a)
        assert summary["aggregate"]["a"][key]["mean"] == pytest.approx(mean)
        assert summary["aggregate"]["a"][key]["ci95"] == pytest.approx(ci)
        d = [x - y for x, y in zip(a, b)]
        d_mean, d_ci = t_interval(d)
        result = summary["differences"]["b"][key]
        assert result["difference"] == pytest.approx(d_mean) and result["ci95"] == pytest.approx(d_ci)
        # t with 2 degrees of freedom: P(|T| > t) = 1 - t / sqrt(2 + t^2)
        t = d_mean / (math.sqrt(sum((x - d_mean) ** 2 for x in d) / 2) / math.sqrt(3))
        assert result["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))
        assert result["test"] == "paired t-test over seeds"


def test_the_report_reads_each_difference_plainly(results):
    summary = seeds.compare_diversity_over_seeds(RUNS, results)
    text = seeds.diversity_comparison_markdown("ab", summary)
    assert "## a − b" in text and "| self_bleu | -3.000 |" in text
    assert "- a − b, SFT self_bleu: -3.000, 95 % CI" in text


def test_a_missing_diversity_file_names_the_seed_and_the_file(results):
    (results / "b.seed44" / "sft" / "diversity.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"seed 44 \(b.seed44\) lacks .*b.seed44/sft/diversity.json"):
        seeds.compare_diversity_over_seeds(RUNS, results)
