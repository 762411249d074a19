"""The vote, in one place: how several voters' answers to one multiple-choice question
combine (one registry of rules, `RULES`), what it measured beforehand (`Calibration`), and
PriDe, the position prior divided out of a backbone's answers.

`mean`, `majority` and `pool` (log-linear, with backbone weights fitted on labelled
answers by `fit_pool`) look at one question at a time. `weighted` needs a batch: a voter's
reliability only shows across many questions, so it runs Dawid-Skene EM over the batch
(or one E-step with confusion matrices estimated on labelled dev data). PriDe (Zheng et
al., "Large Language Models Are Not Robust Multiple Choice Selectors", ICLR 2024): a small
model prefers some positions whatever they hold (SmolLM2-135M answers "A"); a question
answered in all n cyclic orders shows every option once in every position, so the mean
log-probability of a position over those orders is the position's own pull plus a
constant: its softmax is that question's prior, and a backbone's prior for n options is
the mean over the estimation questions; an answer is then P(position) / prior,
renormalised. Pure numpy, tested on fixed numbers (tests/test_vote_rules.py); the
measuring runs are graphs/calibrate.py's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from core.types import LETTERS, backbone_of, top_letter

Votes = dict[str, dict[str, float]]
Prior = dict[str, list[float]]  # number of options (as a string: JSON keys) -> prior over positions
TINY = 1e-12  # floor inside log: a zero-count cell must not veto a class (or make NaN)
TIE = 1e-6  # the mean probability's weight in `weighted`: enough to break a tie, no more


def mean(votes: Votes, letters: list[str]) -> dict[str, float]:
    """The average distribution; no votes gives the uniform one."""
    if not votes:
        return {k: 1 / len(letters) for k in letters}
    return {k: sum(v.get(k, 0.0) for v in votes.values()) / len(votes) for k in letters}


def _top(vote: dict[str, float], letters: list[str]) -> str:
    return top_letter({k: vote.get(k, 0.0) for k in letters})


def majority(votes: Votes, letters: list[str]) -> dict[str, float]:
    """One vote per voter's top letter; the mean is worth half a vote (< 1), so it can
    only break ties between equal counts, deterministically, never overturn a count."""
    m, n = mean(votes, letters), len(votes)
    counts = dict.fromkeys(letters, 0)
    for v in votes.values():
        counts[_top(v, letters)] += 1
    return {k: (counts[k] + 0.5 * m[k]) / (n + 0.5) for k in letters}


class DSResult(NamedTuple):
    posteriors: list[np.ndarray]  # one vector of length n_classes[i] per item
    confusion: dict[str, np.ndarray]  # voter -> K x K, row t = P(says s | true t)
    prior: np.ndarray  # K
    iterations: int


def _pseudo(k: int, smoothing: float) -> np.ndarray:
    """Diagonal-heavy Dirichlet pseudo-counts: an unseen voter is mildly better than
    chance, and EM cannot settle on a label-swapped solution."""
    return np.full((k, k), smoothing / k) + np.eye(k) * (smoothing - smoothing / k)


def _normalise_rows(c: np.ndarray) -> np.ndarray:
    s = c.sum(1, keepdims=True)
    return np.where(s > 0, c / np.where(s > 0, s, 1), 1 / c.shape[1])  # empty row: uniform


def _m_step(items, T, voters, k, smoothing):
    counts = {v: _pseudo(k, smoothing) for v in voters}
    for i, said in enumerate(items):
        for v, s in said.items():
            counts[v][:, s] += T[i]
    prior = smoothing + T.sum(0)
    return {v: _normalise_rows(c) for v, c in counts.items()}, prior / prior.sum()


def _e_step(items, n_classes, conf, prior) -> np.ndarray:
    """Posterior over each item's classes in log space; columns >= n_classes[i] stay 0."""
    log_c = {v: np.log(np.maximum(c, TINY)) for v, c in conf.items()}
    T = np.zeros((len(items), len(prior)))
    for i, (said, k) in enumerate(zip(items, n_classes)):
        lp = np.log(np.maximum(prior[:k], TINY))
        for v, s in said.items():
            lp = lp + log_c[v][:k, s]
        p = np.exp(lp - lp.max())
        T[i, :k] = p / p.sum()
    return T


def _check(items, n_classes):
    for said, k in zip(items, n_classes, strict=True):
        if any(not 0 <= s < k for s in said.values()):
            raise ValueError(f"a vote {said} is outside the item's {k} classes")


def dawid_skene(items: list[dict[str, int]], n_classes: list[int], iters: int = 100,
                tol: float = 1e-6, smoothing: float = 1.0) -> DSResult:
    """Dawid-Skene EM: learn each voter's confusion matrix and the class prior jointly
    with the true-class posteriors, so reliable voters count for more."""
    if not items:
        return DSResult([], {}, np.zeros(0), 0)
    _check(items, n_classes)
    k_max = max(n_classes)
    voters = sorted({v for said in items for v in said})
    # start from a soft majority vote with a small floor, so no class starts impossible
    T = np.zeros((len(items), k_max))
    for i, (said, k) in enumerate(zip(items, n_classes)):
        share = np.bincount(list(said.values()), minlength=k)[:k] / max(len(said), 1)
        T[i, :k] = (share + 0.01) / (share + 0.01).sum()
    conf, prior = _m_step(items, T, voters, k_max, smoothing)
    it = 0
    while it < iters:
        it += 1
        new = _e_step(items, n_classes, conf, prior)
        done = np.abs(new - T).max() < tol
        T = new
        conf, prior = _m_step(items, T, voters, k_max, smoothing)
        if done:
            break
    return DSResult([T[i, :k].copy() for i, k in enumerate(n_classes)], conf, prior, it)


def confusion_from_labels(items: list[dict[str, int]], truth: list[int], n_classes: list[int],
                          smoothing: float = 1.0) -> dict[str, np.ndarray]:
    """The supervised estimate from a labelled dev split: the M-step with one-hot truth."""
    _check(items, n_classes)
    k_max = len(LETTERS)  # every size a later question may have, not only the dev split's
    T = np.eye(k_max)[truth]
    voters = sorted({v for said in items for v in said})
    return _m_step(items, T, voters, k_max, smoothing)[0]


def weighted(items_votes: list[Votes], letters_list: list[list[str]],
             confusion: dict[str, np.ndarray] | None = None
             ) -> tuple[list[dict[str, float]], dict[str, np.ndarray]]:
    """The reliability-weighted rule over a batch: EM when there are no labels, else one
    E-step (uniform prior) with the dev-estimated confusions."""
    items = [{v: letters.index(_top(vote, letters)) for v, vote in votes.items()}
             for votes, letters in zip(items_votes, letters_list, strict=True)]
    n_classes = [len(k) for k in letters_list]
    if not items:
        return [], dict(confusion or {})
    if confusion is None:
        res = dawid_skene(items, n_classes)
        posts, conf = res.posteriors, res.confusion
    else:
        k_max = max([*n_classes, *(c.shape[0] for c in confusion.values())])
        if any(c.shape[0] < max(n_classes) for c in confusion.values()):
            raise ValueError(f"a confusion matrix has fewer than {max(n_classes)} classes")
        conf = {v: confusion.get(v, _normalise_rows(_pseudo(k_max, 1.0)))
                for v in sorted({v for said in items for v in said} | set(confusion))}
        T = _e_step(items, n_classes, conf, np.full(k_max, 1 / k_max))
        posts = [T[i, :k] for i, k in enumerate(n_classes)]
    # top letters alone can tie (two equally trusted voters disagree): the voters' mean
    # probability breaks it, at a weight too small to overturn anything else
    out = []
    for votes, letters, p in zip(items_votes, letters_list, posts):
        m = mean(votes, letters)
        p = [float(x) + TIE * m[k] for k, x in zip(letters, p)]
        out.append({k: x / sum(p) for k, x in zip(letters, p)})
    return out, conf


def pool(votes: Votes, letters: list[str], weights: dict[str, float]) -> dict[str, float]:
    """Log-linear pool: P(k) proportional to the product over voters of p(k) ** w, with w
    the voter's backbone weight (missing: 1). Unlike a mean, a voter sure an option is wrong
    pulls it down hard; unlike majority, it keeps how sure each voter was."""
    if not votes:
        return mean(votes, letters)
    logp = np.array([sum(weights.get(backbone_of(voter), 1.0) * np.log(max(v.get(k, 0.0), TINY))
                         for voter, v in votes.items()) for k in letters])
    p = np.exp(logp - logp.max())
    return {k: float(x) for k, x in zip(letters, p / p.sum())}


def fit_pool(items_votes: list[Votes], letters_list: list[list[str]], truth: list[str]) -> dict[str, float]:
    """The pool's backbone weights that make the labelled answers most likely (maximum
    likelihood, weights in [0, 10]): a backbone at chance gets ~0, a reliable one more."""
    from scipy.optimize import minimize

    names = sorted({backbone_of(v) for votes in items_votes for v in votes})
    rows = []  # per question: (n_voters_of_backbone x options) log-probs summed per backbone, index of truth
    for votes, letters, t in zip(items_votes, letters_list, truth, strict=True):
        if votes and t in letters:
            m = np.zeros((len(names), len(letters)))
            for voter, v in votes.items():
                m[names.index(backbone_of(voter))] += [np.log(max(v.get(k, 0.0), TINY)) for k in letters]
            rows.append((m, letters.index(t)))
    if not rows:
        return dict.fromkeys(names, 1.0)

    def nll(w):
        total = 0.0
        for m, t in rows:
            z = w @ m
            total -= z[t] - (z.max() + np.log(np.exp(z - z.max()).sum()))
        return total / len(rows)

    res = minimize(nll, np.ones(len(names)), method="L-BFGS-B", bounds=[(0.0, 10.0)] * len(names))
    return {n: round(float(w), 4) for n, w in zip(names, res.x)}


# PriDe: the position prior (estimated by graphs/calibrate.py, divided out by the answer node)


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


def without_prior(reply: dict[str, float] | None, prior: Prior | None):
    """A reply over a view's letters (= positions) without its backbone's position prior
    for that many options, and the prior divided out (None: none was estimated)."""
    p = prior.get(str(len(reply))) if reply and prior else None
    if p is None:
        return reply, None
    return dict(zip(reply, debias(list(reply.values()), p))), p


@dataclass(frozen=True)
class Calibration:
    """What the vote measured before answering (graphs/calibrate.py: `calibration`): each
    backbone's position prior, the pool's weights (the config's, over any fitted on
    `vote.labelled`), the weighted rule's confusions (None: EM over the batch)."""

    priors: dict[str, Prior] = field(default_factory=dict)  # backbone label -> its prior
    weights: dict[str, float] = field(default_factory=dict)  # pool: backbone label -> weight (missing: 1)
    confusion: dict[str, np.ndarray] | None = None


class Rule(NamedTuple):
    """A vote rule: for each question of a batch, its voters' probabilities and its letters
    in, the combined probabilities out. `batched`: it reads the whole step's batch (the
    graph sends it through the batcher); otherwise each question is combined alone."""

    combine: Callable[[list[Votes], list[list[str]], Calibration], list[dict[str, float]]]
    batched: bool = False


def _each(rule: Callable[[Votes, list[str], Calibration], dict[str, float]]) -> Rule:
    return Rule(lambda batch, letters, cal: [rule(v, k, cal) for v, k in zip(batch, letters, strict=True)])


RULES: dict[str, Rule] = {
    "mean": _each(lambda votes, letters, cal: mean(votes, letters)),
    "majority": _each(lambda votes, letters, cal: majority(votes, letters)),
    "pool": _each(lambda votes, letters, cal: pool(votes, letters, cal.weights)),
    "weighted": Rule(lambda batch, letters, cal: weighted(batch, letters, cal.confusion)[0], batched=True),
}
