"""Grading of model answers for math reasoning (RL rewards, evaluation, answer diversity).

The prediction is only the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in a
completion, compared with the gold final answer by math-verify, with a normalized string
compare as fallback.  Import from here; the code lives in two modules:

* `sedsft.answers`: extraction, normalization and equivalence, in-process, under a SIGALRM
  wall-clock budget per call (``grade_answer``, ``answers_equivalent``, ``extract_boxed``).
* `sedsft.grading_pool`: ``Grader``, a pool of worker processes that also puts a hard time
  limit on each item and replaces hung or crashed workers (``grade_many``: a one-shot pool).

Importing this module is cheap: math-verify (sympy, antlr) is imported lazily.
"""

from __future__ import annotations

import collections  # noqa: F401 - kept for callers that reach it as sedsft.grading.collections

# The private names are re-exported for callers that read them here; a test that patches one
# must patch it on sedsft.answers, where the code looks it up.
from sedsft.answers import (  # noqa: F401
    _SLOW_PARSES,
    _TIMEOUT_CACHE,
    MAX_ANSWER_CHARS,
    Grade,
    _as_text,
    _compare,
    _parse_answer,
    answers_equivalent,
    extract_boxed,
    grade_answer,
)
from sedsft.grading_pool import Grader, grade_many

__all__ = [
    "Grade",
    "Grader",
    "MAX_ANSWER_CHARS",
    "answers_equivalent",
    "extract_boxed",
    "grade_answer",
    "grade_many",
]
