"""sedsft.stats against independent computations: textbook formulas, published t quantiles, an
exact enumeration of the sign-flip permutations, and the standard power table."""

import itertools
import math

import numpy as np
import pytest

from sedsft import stats

T_975_DF4 = 2.7764451051977987  # the 97.5 % quantile of t with 4 degrees of freedom (tables)


def test_interval_is_the_t_interval_of_the_mean():
    values = [50.0, 52.5, 47.0, 55.5, 51.0]
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    result = stats.interval(values)
    assert result["mean"] == pytest.approx(mean) and result["sd"] == pytest.approx(sd)
    half = T_975_DF4 * sd / math.sqrt(5)
    assert result["ci95"] == pytest.approx([mean - half, mean + half])
    assert stats.interval([3.0])["ci95"] is None and stats.interval([3.0])["mean"] == 3.0


def test_a_paired_difference_over_seeds_is_the_t_test_of_the_differences():
    a = {42: 60.0, 43: 58.0, 44: 63.0, 45: 61.0, 46: 59.5}
    b = {42: 55.0, 43: 57.5, 44: 58.0, 45: 60.0, 46: 54.0}
    d = [a[s] - b[s] for s in a]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    result = stats.seed_difference(a, b)
    assert result["test"] == "paired t-test over seeds"
    assert result["difference"] == pytest.approx(mean)
    assert result["ci95"] == pytest.approx([mean - T_975_DF4 * sd / math.sqrt(5), mean + T_975_DF4 * sd / math.sqrt(5)])
    t = mean / (sd / math.sqrt(5))
    # two-sided p of t = 3.45 with df 4, from the t density integrated numerically
    grid = np.linspace(abs(t), 200, 400_001)
    density = math.gamma(2.5) / (math.sqrt(4 * math.pi) * math.gamma(2)) * (1 + grid ** 2 / 4) ** -2.5
    tail = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid)))
    assert result["p"] == pytest.approx(2 * tail, rel=1e-3)


def test_unmatched_seeds_use_welch_and_one_seed_gives_no_interval():
    assert stats.seed_difference({1: 1.0, 2: 2.0}, {3: 0.0, 4: 1.0, 5: 0.5})["test"] == "Welch's t-test over seeds"
    single = stats.seed_difference({42: 60.0}, {42: 50.0})
    assert single["difference"] == 10.0 and single["ci95"] is None and single["p"] is None
    assert "no interval" in stats.reading("x", single)


def test_the_problem_level_p_value_is_the_exact_sign_flip_enumeration():
    a = [100, 50, 100, 0, 100, 100, 50, 100]
    b = [50, 50, 0, 0, 100, 50, 0, 100]
    weights = [1 / 8] * 8
    d = [w * (x - y) for w, x, y in zip(weights, a, b)]
    observed = sum(d)
    flips = [sum(s * x for s, x in zip(signs, d)) for signs in itertools.product((1, -1), repeat=8)]
    exact = sum(abs(f) >= abs(observed) - 1e-12 for f in flips) / len(flips)
    result = stats.problem_difference(a, b, weights)
    assert result["difference"] == pytest.approx(observed) == pytest.approx(sum(a) / 8 - sum(b) / 8)
    assert result["p"] == pytest.approx(exact)
    low, high = result["ci95"]
    assert low <= observed <= high and low > 0  # every problem moved the same way or not at all


def test_identical_sides_differ_by_zero_with_p_one():
    result = stats.problem_difference([100, 0, 50], [100, 0, 50], [1 / 3] * 3)
    assert result["difference"] == 0 and result["p"] == 1.0 and result["ci95"] == [0.0, 0.0]


def test_seeds_needed_matches_the_power_table():
    # one-sample / paired t-test, two-sided 5 %, power 80 %: effect size 1.0 needs 10, 0.5 needs 34
    assert stats.seeds_needed(1.0, 1.0, paired=True) == 10
    assert stats.seeds_needed(0.5, 1.0, paired=True) == 34
    assert stats.seeds_needed(1.0, 1.0, paired=False) == 17  # two groups of 17 at d = 1
    assert stats.seeds_needed(0.0, 1.0, paired=True) is None


def test_the_reading_says_whether_zero_is_excluded():
    inside = {"difference": 1.2, "ci95": [-0.5, 2.9], "p": 0.2, "test": "paired t-test over seeds"}
    outside = {"difference": 3.0, "ci95": [1.0, 5.0], "p": 0.01, "test": "paired t-test over seeds"}
    assert "not distinguishable from zero" in stats.reading("SED − CE", inside)
    assert "+1.2 points, 95 % CI [-0.5, +2.9], p = 0.2" in stats.reading("SED − CE", inside)
    assert "excludes it" in stats.reading("SED − CE", outside)
