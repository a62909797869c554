"""Is a difference real? Intervals, tests and power over seeds and over problems (scipy.stats).

Two questions, two levels of data:
- over seeds: does the *recipe* differ? One value per seed (a benchmark's accuracy, the mean of
  the eight, a diversity metric); runs of several seeds vary by SFT order and RL/eval sampling.
  A t interval of the mean; for a difference, a paired t-test when both sides ran the same seeds,
  else Welch's.
- over problems: do *these trained models* differ on these problems? Each problem's accuracy
  (its samples of every seed pooled), paired by problem: a sign-flip permutation test and a
  paired bootstrap interval of the weighted sum of differences. This uses every graded sample
  but not the spread between seeds' trainings, so it is the narrower of the two.
Values are in the units given (accuracy points, 0-100).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8  # the power the planning numbers aim for
RESAMPLES = 9999
MAX_PLANNED = 100_000  # seeds or problems beyond which the planning says "more than"
PROBLEM_TEST = "paired permutation test over problems (samples of every seed pooled)"


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def interval(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation and the 95 % t interval of the mean (None below 2 values)."""
    x = np.asarray(values, dtype=float)
    out = {"values": x.tolist(), "n": len(x), "mean": float(x.mean()) if len(x) else None, "sd": None, "ci95": None}
    if len(x) >= 2:
        sd = float(x.std(ddof=1))
        out["sd"] = sd
        half = 0.0 if sd == 0 else float(stats.t.ppf(1 - ALPHA / 2, len(x) - 1)) * sd / math.sqrt(len(x))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def seeds_needed(difference: float, sd: float | None, paired: bool) -> int | None:
    """The fewest seeds (per side) at which a two-sided t-test at 5 % detects a true `difference`
    with probability POWER, seeds varying with standard deviation `sd` (of the per-seed differences
    when paired, of one side's values otherwise). None without a spread or a difference."""
    if not sd or not difference:
        return None
    for n in range(2, MAX_PLANNED):
        df = n - 1 if paired else 2 * n - 2
        shift = difference / sd * math.sqrt(n if paired else n / 2)
        critical = stats.t.ppf(1 - ALPHA / 2, df)
        power = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
        if power >= POWER:
            return n
    return MAX_PLANNED


def seed_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """a - b over seeds (seed -> value): the difference of means, its 95 % interval, the p-value
    of the test named in `test`, and the seeds a POWER test of this size would need."""
    x, y = np.asarray(list(a.values()), float), np.asarray(list(b.values()), float)
    out = {"difference": float(x.mean() - y.mean()), "n_seeds": [len(x), len(y)], "test": None, "p": None,
           "ci95": None, "seeds_needed": None}
    paired = sorted(a) == sorted(b)
    if paired and len(x) >= 2:
        seeds = sorted(a)
        d = np.array([a[s] - b[s] for s in seeds])
        out["test"] = "paired t-test over seeds"
        if d.std(ddof=1) == 0:  # identical differences: no spread to test against
            out["ci95"] = [float(d[0]), float(d[0])]
            out["p"] = 1.0 if d[0] == 0 else 0.0
        else:
            result = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
            ci = result.confidence_interval(CONFIDENCE)
            out["p"], out["ci95"] = _number(result.pvalue), [float(ci.low), float(ci.high)]
        out["seeds_needed"] = seeds_needed(out["difference"], float(d.std(ddof=1)), paired=True)
    elif len(x) >= 2 and len(y) >= 2:
        out["test"] = "Welch's t-test over seeds"
        result = stats.ttest_ind(x, y, equal_var=False)
        ci = result.confidence_interval(CONFIDENCE)
        out["p"], out["ci95"] = _number(result.pvalue), [_number(ci.low), _number(ci.high)]
        pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
        out["seeds_needed"] = seeds_needed(out["difference"], pooled, paired=False)
    return out


def _weighted_sum(x, y, axis=-1):
    return np.sum(x - y, axis=axis)


def problem_difference(a: Sequence[float], b: Sequence[float], weights: Sequence[float], seed: int = 0) -> dict:
    """sum_i w_i (a_i - b_i) over problems i paired across the two sides (w_i = 1/n of a benchmark
    for its mean; 1/(8 n_b) for the mean of the eight): permutation p-value (each problem's pair
    swapped or not), paired percentile-bootstrap 95 % interval, and the problems needed (every
    benchmark scaled alike) for a POWER test of this size, from the bootstrap standard error."""
    w = np.asarray(weights, float)
    x, y = w * np.asarray(a, float), w * np.asarray(b, float)
    difference = float(_weighted_sum(x, y))
    out = {"difference": difference, "n_problems": len(w), "p": None, "ci95": None,
           "test": PROBLEM_TEST,
           "problems_needed": None}
    if np.all(x == y):
        out["p"], out["ci95"] = 1.0, [0.0, 0.0]
        return out
    rng = np.random.default_rng(seed)
    permuted = stats.permutation_test((x, y), _weighted_sum, permutation_type="samples", vectorized=True,
                                      n_resamples=RESAMPLES, alternative="two-sided", random_state=rng)
    boot = stats.bootstrap((x, y), _weighted_sum, paired=True, vectorized=True, n_resamples=RESAMPLES,
                           confidence_level=CONFIDENCE, method="percentile", random_state=rng)
    out["p"] = _number(permuted.pvalue)
    out["ci95"] = [_number(boot.confidence_interval.low), _number(boot.confidence_interval.high)]
    se = float(boot.standard_error)
    if difference and se:
        z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
        out["problems_needed"] = min(MAX_PLANNED, math.ceil(len(w) * (z * se / difference) ** 2))
    return out


def reading(label: str, result: dict, unit: str = " points", digits: int = 1) -> str:
    """One plain line: the difference, its interval, p, and whether zero is excluded."""
    ci = result.get("ci95")
    if ci is None or result.get("p") is None:
        return (f"{label}: {result['difference']:+.{digits}f}{unit} from one run per side; "
                f"no interval without at least two seeds per side")
    verdict = ("not distinguishable from zero at this sample size" if ci[0] <= 0 <= ci[1]
               else "distinguishable from zero (the interval excludes it)")
    return (f"{label}: {result['difference']:+.{digits}f}{unit}, 95 % CI [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}], "
            f"p = {result['p']:.3g} ({result['test']}); {verdict}")
