"""Hand-computed checks for sedsft.metrics."""

from __future__ import annotations

import math

import pytest

from sedsft.metrics import (
    count_distinct,
    distinct_n,
    majority_correct,
    mean,
    pass_at_k,
    self_bleu,
    standard_error,
)

# ------------------------------------------------------------------ pass@k


def _closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 16, 64])
def test_pass_at_k_matches_closed_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = pass_at_k(n, c, k)
            assert got == pytest.approx(_closed_form(n, c, k), abs=1e-12), (n, c, k)
            assert 0.0 <= got <= 1.0


def test_pass_at_k_hand_values():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # k=1 is the fraction correct
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 10, 10) == 1.0
    # k = n: passes iff at least one correct
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 0, 8) == 0.0
    # n - c < k -> exactly 1
    assert pass_at_k(8, 5, 4) == 1.0


def test_pass_at_k_large_n_is_stable():
    got = pass_at_k(1000, 7, 100)
    assert got == pytest.approx(_closed_form(1000, 7, 100), rel=1e-12)
    assert 0.0 < got < 1.0


def test_pass_at_k_accepts_numpy_ints():
    np = pytest.importorskip("numpy")
    assert pass_at_k(np.int64(4), np.int64(1), np.int64(2)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "n,c,k",
    [(4, 1, 5), (4, 5, 2), (-1, 0, 0), (4, -1, 1), (4, 1, -1), (4.0, 1, 2), (4, 1, 2.5), (True, 1, 1)],
)
def test_pass_at_k_invalid_raises(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ----------------------------------------------------------- maj@n / distinct


def test_majority_correct_basic():
    assert majority_correct(["4", "5", "4"], [True, False, True]) is True
    assert majority_correct(["4", "5", "5"], [True, False, False]) is False


def test_majority_correct_strip_default():
    # " 5" and "5 " are one class under the default equivalence (2 votes vs 1)
    assert majority_correct(["4", " 5", "5 "], [True, False, False]) is False


def test_majority_correct_tie_first_occurrence():
    assert majority_correct(["4", "5", "5", "4"], [True, False, False, True]) is True
    assert majority_correct(["5", "4", "4", "5"], [False, True, True, False]) is False


def test_majority_correct_none_never_wins():
    # three Nones outnumber the single "3", but None is not a class
    assert majority_correct([None, None, None, "3"], [False, False, False, True]) is True
    assert majority_correct([None, None], [False, False]) is False
    assert majority_correct([], []) is False


def test_majority_correct_custom_equivalence():
    num_eq = lambda a, b: float(a) == float(b)  # noqa: E731
    answers = ["2", "3", "2.0", "3"]
    correct = [True, False, True, False]
    # exact equality: "3" has 2 votes, "2" and "2.0" one each -> wrong
    assert majority_correct(answers, correct) is False
    # numeric: {2, 2.0} vs {3, 3} tie, "2" occurs first -> right
    assert majority_correct(answers, correct, equivalent=num_eq) is True


def test_majority_correct_length_mismatch():
    with pytest.raises(ValueError):
        majority_correct(["1", "2"], [True])


def test_count_distinct():
    assert count_distinct(["2", "2.0", " 2", "3", None]) == 3
    num_eq = lambda a, b: float(a) == float(b)  # noqa: E731
    assert count_distinct(["2", "2.0", " 2", "3", None], equivalent=num_eq) == 2
    assert count_distinct([None, None]) == 0
    assert count_distinct([]) == 0


# --------------------------------------------------------------- distinct-n


def test_distinct_n_repeated_sample_is_minimal():
    s = ["a", "b", "c"]
    assert distinct_n([s], 1) == 1.0
    assert distinct_n([s] * 4, 1) == pytest.approx(0.25)
    assert distinct_n([s] * 4, 2) == pytest.approx(0.25)  # 2 unique / 8


def test_distinct_n_disjoint_is_one():
    samples = [["a", "b"], ["c", "d"], ["e", "f"]]
    assert distinct_n(samples, 1) == 1.0
    assert distinct_n(samples, 2) == 1.0


def test_distinct_n_hand_case():
    samples = [["a", "b", "a", "b"], ["b", "a"]]
    assert distinct_n(samples, 1) == pytest.approx(2 / 6)  # {a, b} / 6 tokens
    # bigrams: ab, ba, ab | ba  -> 2 unique / 4
    assert distinct_n(samples, 2) == pytest.approx(0.5)
    # trigrams: aba, bab | (none) -> 2 / 2; no cross-sample n-grams
    assert distinct_n(samples, 3) == pytest.approx(1.0)


def test_distinct_n_no_ngrams_and_invalid():
    assert distinct_n([], 1) == 0.0
    assert distinct_n([["a"], ["b"]], 2) == 0.0
    with pytest.raises(ValueError):
        distinct_n([["a"]], 0)


# ---------------------------------------------------------------- self-BLEU


def test_self_bleu_identical_is_100():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    assert self_bleu(["x", "x"]) == pytest.approx(100.0)
    assert self_bleu(["the cat sat on the mat"] * 3) <= 100.0


def test_self_bleu_disjoint_is_zero():
    assert self_bleu(["a b c d e", "f g h i j", "k l m n o"]) < 1.0


def test_self_bleu_hand_computed_pair():
    # hyp "a b c d e" vs ref "a b c x y": precisions 3/5, 2/4, 1/3 and 0/2;
    # 'exp' smoothing turns the zero 4-gram count into 100/(2*2) = 25.
    # BP = 1 (equal lengths); symmetric, so both directions score the same.
    expected = (60.0 * 50.0 * (100.0 / 3) * 25.0) ** 0.25  # 39.76...
    assert self_bleu(["a b c d e", "a b c x y"]) == pytest.approx(expected, rel=1e-9)
    # 4/5, 3/4, 2/3, 1/2
    expected_more = (80.0 * 75.0 * (200.0 / 3) * 50.0) ** 0.25  # 66.87...
    assert self_bleu(["a b c d e", "a b c d y"]) == pytest.approx(expected_more, rel=1e-9)


def test_self_bleu_more_overlap_is_higher():
    low = self_bleu(["a b c d e f", "a b c x y z", "a q r s t u"])
    mid = self_bleu(["a b c d e f", "a b c d y z", "a b c d e u"])
    high = self_bleu(["a b c d e f", "a b c d e z", "a b c d e f"])
    assert 0.0 < low < mid < high < 100.0


def test_self_bleu_uses_all_others_as_references():
    # "a b" scores 100 against refs {"a b", "c d"} (multi-reference max clipping);
    # "c d" scores 0 against {"a b", "a b"} -> mean (100 + 100 + 0) / 3.
    assert self_bleu(["a b", "a b", "c d"]) == pytest.approx(200.0 / 3)
    # the matching reference for text 0 comes after an unrelated one
    assert self_bleu(["a b", "c d", "a b"]) == pytest.approx(200.0 / 3)


def test_self_bleu_needs_two_texts():
    with pytest.raises(ValueError):
        self_bleu(["only one"])
    with pytest.raises(ValueError):
        self_bleu([])


# --------------------------------------------------------------- aggregates


def test_mean():
    assert mean([1, 2, 3, 4]) == pytest.approx(2.5)
    assert mean(x for x in (0.1, 0.2, 0.3)) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        mean([])


def test_standard_error():
    # mean 2.5, sample var (2.25+0.25+0.25+2.25)/3 = 5/3 -> sqrt(5/3 / 4)
    assert standard_error([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 12))
    # sample var 32/7 over n=8
    assert standard_error([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(4 / 7))
    assert standard_error([3.0, 3.0, 3.0]) == 0.0
    assert standard_error([5.0]) == 0.0
    assert standard_error([]) == 0.0
