"""PriDe: a backbone's prior over option positions, estimated without labels and divided
out of its answers (Zheng et al., "Large Language Models Are Not Robust Multiple Choice
Selectors", ICLR 2024).

A small model prefers some positions whatever they hold (SmolLM2-135M answers "A"). A
question answered in all n cyclic orders shows every option once in every position, so
the mean log-probability of a position over those orders is the position's own pull plus
a constant: its softmax is that question's prior. The backbone's prior for n options is
the mean over the estimation questions; an answer is then P(position) / prior,
renormalised. Pure numpy here; graphs/nodes.py applies it, solver/api.py estimates it.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

Prior = dict[str, list[float]]  # number of options (as a string: JSON keys) -> prior over positions


def cyclic(n: int, shift: int) -> list[int]:
    """The option shown at each position when the options are rotated by `shift`."""
    return [(i + shift) % n for i in range(n)]


def sample(task_ids: list[str], share: float, at_least: int, seed: int = 0) -> list[str]:
    """The questions that estimate the prior: a fixed share of them, chosen by a seeded hash
    of their ids, so the same input picks the same questions in any order or batching."""
    k = min(len(task_ids), max(at_least, math.ceil(share * len(task_ids))))
    return sorted(set(task_ids), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())[:k]


def question_prior(views: list[list[float]]) -> np.ndarray:
    """One question's prior from its probabilities by position in each cyclic order."""
    logp = np.log(np.maximum(np.asarray(views, dtype=float), 1e-12)).mean(0)
    p = np.exp(logp - logp.max())
    return p / p.sum()


def estimate(per_question: list[list[list[float]]]) -> Prior:
    """The prior for each number of options: the mean of its questions' priors."""
    by_n: dict[int, list[np.ndarray]] = {}
    for views in per_question:
        by_n.setdefault(len(views[0]), []).append(question_prior(views))
    return {str(n): [round(float(x), 6) for x in np.mean(ps, 0)] for n, ps in sorted(by_n.items())}


def debias(by_position: list[float], prior: list[float]) -> list[float]:
    """An answer's probabilities by position without the backbone's pull towards positions."""
    p = np.asarray(by_position, dtype=float) / np.maximum(np.asarray(prior, dtype=float), 1e-12)
    return list(p / p.sum()) if p.sum() > 0 else list(by_position)
