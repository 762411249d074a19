"""How often each option text is the answer where it is offered, from labelled questions.

The benchmark reuses option texts (`True`, `Compile Error`, `None of the above`), and some
are right far more often than one in n: a smoothed rate per text reads how the benchmark
was built. `rate(text, exclude=q)` leaves q's own row out. That is not enough to fit a ranker
on the same questions: the left-out rate, (right - own) / (offered - 1), is lower exactly when
the row is right, and a tree reads that back as the label (eval/fit_probe.py: 64% out-of-fold
on train, 46% on dev). `out_of_fold` gives each question priors from the other folds only.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

from core.types import LETTERS, Question
from index.embed import normalise_option


def contribution(q: Question) -> tuple[set[str], str]:
    """The distinct normalised option texts `q` offers, and its right one's."""
    return {normalise_option(c) for c in q.choices}, normalise_option(q.choices[LETTERS.index(q.answer)])


class OptionPriors:
    """Per normalised option text (and per kind of question, when `kind_of` is given): how
    often it is offered (once per question) and how often it is the answer.

    >>> p = OptionPriors.build(labelled, kind_of=kind_of)
    >>> p.rate("True", exclude=q), p.rate("True", exclude=q, kind="output")
    """

    def __init__(self, a: float = 2.0, kind_of: Callable[[Question], str] | None = None):
        self.a = a
        self.kind_of = kind_of
        self.offered: Counter = Counter()  # key: text or (kind, text)
        self.right: Counter = Counter()
        self.ids: set[str] = set()

    @classmethod
    def build(cls, questions: list[Question], a: float = 2.0,
              kind_of: Callable[[Question], str] | None = None) -> OptionPriors:
        priors = cls(a, kind_of)
        for q in questions:
            if q.answer is None or q.task_id in priors.ids:
                continue
            priors.ids.add(q.task_id)
            for key, offered, right in priors._rows(q):
                priors.offered[key] += offered
                priors.right[key] += right
        return priors

    def _rows(self, q: Question):
        """(key, offered, right) of each count `q` adds; None and (kind, None) are the totals."""
        texts, answer = contribution(q)
        kinds = [None] if self.kind_of is None else [None, self.kind_of(q)]
        for kind in kinds:
            wrap = (lambda t: t) if kind is None else (lambda t, k=kind: (k, t))
            yield wrap(None), len(texts), 1
            for t in texts:
                yield wrap(t), 1, int(t == answer)

    def counts(self, text: str | None, exclude: Question | None = None, kind: str | None = None) -> tuple[int, int]:
        """(offered, right) of a normalised text (None: all texts), without `exclude`'s own row."""
        key = text if kind is None else (kind, text)
        offered, right = self.offered[key], self.right[key]
        if exclude is not None and exclude.task_id in self.ids and exclude.answer is not None:
            for k, o, r in self._rows(exclude):
                if k == key:
                    offered, right = offered - o, right - r
        return offered, right

    def rate(self, text: str, exclude: Question | None = None, kind: str | None = None) -> float:
        """(right + a*base) / (offered + a): the text's rate of being right, shrunk to the base
        rate (all texts', of this kind if given) when it is rarely offered."""
        offered, right = self.counts(None, exclude, kind)
        base = right / offered if offered else 0.25
        offered, right = self.counts(normalise_option(text), exclude, kind)
        return (right + self.a * base) / (offered + self.a)


def fold_of(task_id: str, folds: int, seed: int = 0) -> int:
    return int(hashlib.sha256(f"{seed} {task_id}".encode()).hexdigest(), 16) % folds


def out_of_fold(questions: list[Question], folds: int = 5, seed: int = 0, a: float = 2.0,
                kind_of: Callable[[Question], str] | None = None) -> Callable[[Question], OptionPriors]:
    """The priors to fit on: a question of `questions` gets those of the other folds' questions
    (its label never touches its own features), any other question those of all of them."""
    parts = [OptionPriors.build([q for q in questions if fold_of(q.task_id, folds, seed) != f], a, kind_of)
             for f in range(folds)]
    full = OptionPriors.build(questions, a, kind_of)
    return lambda q: parts[fold_of(q.task_id, folds, seed)] if q.task_id in full.ids else full
