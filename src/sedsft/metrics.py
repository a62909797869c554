"""Sample-set metrics shared by evaluation and diversity measurement.

Everything here works on the samples of ONE prompt (a list of answers or texts);
averaging over prompts is the caller's job (use :func:`mean` and
:func:`standard_error`).

* :func:`pass_at_k` -- unbiased pass@k estimator of Chen et al. (2021).
* :func:`majority_correct` -- maj@n: is the most frequent answer class correct.
* :func:`count_distinct` -- number of distinct answers under an equivalence.
* :func:`distinct_n` -- Distinct-n over all samples of a prompt.
* :func:`self_bleu` -- Self-BLEU (sacrebleu sentence BLEU, GEM-style).
* :func:`semantic_diversity` -- 1 - mean pairwise cosine similarity of embeddings.

Pure Python plus sacrebleu; no torch, no numpy.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sacrebleu.metrics import BLEU

__all__ = [
    "pass_at_k",
    "majority_correct",
    "count_distinct",
    "distinct_n",
    "self_bleu",
    "semantic_diversity",
    "standard_error",
    "mean",
]

Equivalence = Callable[[str, str], bool]


def _default_equivalent(a: str, b: str) -> bool:
    return a.strip() == b.strip()


# ---------------------------------------------------------------- correctness


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from ``n`` samples of which ``c`` are correct.

    Definition (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code")::

        pass@k = 1 - C(n - c, k) / C(n, k)

    computed in the numerically stable product form
    ``1 - prod_{i = n-c+1}^{n} (1 - k / i)``, which equals the ratio of
    binomials above; if ``n - c < k`` every k-subset contains a correct
    sample and the result is exactly 1.0. ``k == 0`` gives 0.0 (the empty
    subset never passes). The result is clamped to ``[0, 1]``.

    Raises ``ValueError`` if any argument is not an integer (bools and floats are
    rejected; numpy integers are fine), is negative, or if ``c > n`` or ``k > n``.
    """
    checked = []
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool):
            raise ValueError(f"pass_at_k: {name} must be an int, got {v!r}")
        try:
            v = operator.index(v)  # accepts numpy integers, rejects floats
        except TypeError:
            raise ValueError(f"pass_at_k: {name} must be an int, got {v!r}") from None
        checked.append(v)
        if v < 0:
            raise ValueError(f"pass_at_k: {name} must be >= 0, got {v}")
    n, c, k = checked
    if c > n:
        raise ValueError(f"pass_at_k: c={c} > n={n}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} > n={n}")
    if k == 0:
        return 0.0
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return min(1.0, max(0.0, 1.0 - prod))


def _classes(
    answers: Sequence[str | None], equivalent: Equivalence | None
) -> list[list[int]]:
    """Greedy equivalence classes of the non-None answers, as index lists.

    Each class is represented by its first member; a new answer joins the first
    class (in order of creation) whose representative is equivalent to it,
    otherwise it opens a new class. Classes are ordered by first occurrence.
    """
    eq = equivalent if equivalent is not None else _default_equivalent
    classes: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for cls in classes:
            if eq(answers[cls[0]], a):
                cls.append(i)
                break
        else:
            classes.append([i])
    return classes


def majority_correct(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    equivalent: Equivalence | None = None,
) -> bool:
    """maj@n: whether the most frequent answer class is correct.

    * ``None`` answers (no extractable answer) belong to no class and can never
      win; if every answer is ``None`` the result is ``False``.
    * Classes are formed greedily with ``equivalent(a, b) -> bool`` against one
      representative (the first member) per class; default equivalence is
      exact string equality after ``str.strip()``.
    * The winner is the class with the most members; ties are broken by the
      earliest first occurrence.
    * The winner is correct iff ``correct[i]`` of its representative (its first
      member) is true.

    Raises ``ValueError`` if ``answers`` and ``correct`` differ in length.
    """
    if len(answers) != len(correct):
        raise ValueError(
            f"majority_correct: {len(answers)} answers but {len(correct)} correctness flags"
        )
    classes = _classes(answers, equivalent)
    if not classes:
        return False
    best = classes[0]
    for cls in classes[1:]:
        if len(cls) > len(best):  # strict: earlier class wins ties
            best = cls
    return bool(correct[best[0]])


def count_distinct(
    answers: Sequence[str | None], equivalent: Equivalence | None = None
) -> int:
    """Number of equivalence classes among the non-None answers.

    Greedy clustering: each answer is compared with one representative (the
    first member) of each existing class, in order, and joins the first match
    or opens a new class. Default equivalence: string equality after strip.
    """
    return len(_classes(answers, equivalent))


# ------------------------------------------------------------------ diversity


def distinct_n(samples: Sequence[Sequence[Any]], n: int) -> float:
    """Distinct-n of ONE prompt's samples.

    ``samples`` is a list of token sequences (any hashable tokens). With
    ``G`` the multiset of all contiguous n-grams of all samples (n-grams never
    cross sample boundaries; a sample shorter than ``n`` contributes none)::

        distinct_n = |set(G)| / |G|

    Returns 0.0 when there are no n-grams. Raises ``ValueError`` if ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    seen: set[tuple] = set()
    total = 0
    for toks in samples:
        toks = list(toks)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


# One BLEU object, configured as sacrebleu's own sentence_bleu default:
# tokenize='13a', case-sensitive, smooth_method='exp', max order 4,
# effective_order=True.
_SENT_BLEU = BLEU(effective_order=True)


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU of one prompt's samples, in [0, 100] (higher = less diverse).

    Definition (GEM-style, all-others-as-references)::

        self_bleu = (1/m) * sum_i BLEU(texts[i], refs = texts[:i] + texts[i+1:])

    where ``BLEU`` is sacrebleu 2.x sentence-level BLEU
    (``sacrebleu.metrics.BLEU(effective_order=True).sentence_score``): 13a
    tokenization, case-sensitive, max n-gram order 4, 'exp' smoothing,
    effective order (orders with no hypothesis n-grams are ignored), n-gram
    counts clipped by the max count over the references, and the brevity
    penalty using the reference length closest to the hypothesis length.
    Signature: ``nrefs:<m-1>|case:mixed|eff:yes|tok:13a|smooth:exp|version:2.6.0``.
    Each sentence score is clamped to [0, 100] (sacrebleu can return
    100.00000000000004).

    Identical texts give 100; texts with no shared token give 0; an empty
    hypothesis scores 0. Raises ``ValueError`` for fewer than 2 texts.
    """
    texts = list(texts)
    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    total = 0.0
    for i, hyp in enumerate(texts):
        refs = texts[:i] + texts[i + 1 :]
        s = _SENT_BLEU.sentence_score(hyp, refs).score
        total += min(100.0, max(0.0, s))
    return total / len(texts)


def semantic_diversity(embeddings: Sequence[Sequence[float]]) -> float:
    """Semantic diversity of ONE prompt's samples, from their sentence embeddings::

        semantic_diversity = 1 - mean_{i < j} cos(e_i, e_j)

    over all unordered pairs of distinct samples (each vector is normalised here, so the
    embeddings need not be). In [0, 2]; 0 when every embedding points the same way, about 1
    for unrelated texts. A zero vector has cosine 0 with everything. Raises ``ValueError``
    for fewer than 2 embeddings or vectors of different lengths.
    """
    vectors = [[float(x) for x in e] for e in embeddings]
    if len(vectors) < 2:
        raise ValueError(f"semantic_diversity needs at least 2 embeddings, got {len(vectors)}")
    if len({len(v) for v in vectors}) != 1:
        raise ValueError("semantic_diversity: embeddings of different lengths")
    norms = [math.sqrt(math.fsum(x * x for x in v)) for v in vectors]
    unit = [[x / n for x in v] if n > 0 else [0.0] * len(v) for v, n in zip(vectors, norms)]
    cosines = [math.fsum(a * b for a, b in zip(unit[i], unit[j]))
               for i in range(len(unit)) for j in range(i + 1, len(unit))]
    return 1.0 - math.fsum(cosines) / len(cosines)


# ----------------------------------------------------------------- aggregates


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean. Raises ``ValueError`` on an empty input."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean of an empty sequence")
    return math.fsum(vals) / len(vals)


def standard_error(values: Iterable[float]) -> float:
    """Standard error of the mean: sample std (ddof=1) / sqrt(n); 0.0 for n < 2."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2:
        return 0.0
    m = math.fsum(vals) / n
    var = math.fsum((v - m) ** 2 for v in vals) / (n - 1)
    return math.sqrt(var / n)
