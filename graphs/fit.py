"""`solver fit`'s work after the graph has answered the labelled questions: their evidence,
built as the graph's decide step builds it (graphs/features.py: evidence_of), then the fits.

No label of a question reaches its own row: its neighbours never include itself (the index
leaves its task_id out), its option priors come from the other folds' questions only
(graphs/priors.py: out_of_fold; leave-one-out rates would leak the label), and an exact
copy's answer comes from another labelled row, as it would for a new question.
"""

from __future__ import annotations

from pathlib import Path

from core.config import SolverConfig
from core.types import Prediction, Progress, Question
from execution.recognise import kind_of
from graphs.features import Evidence, evidence_of
from graphs.nodes import neighbours_for
from graphs.priors import out_of_fold
from graphs.ranker import FitError, Fitted


def fittable(cfg: SolverConfig) -> None:
    """A fitted decision reads the labelled questions through retrieve: one line if `cfg` has none."""
    if not (cfg.graph.enabled and cfg.retrieve.enabled):
        raise FitError(f"config '{cfg.name}': a fitted decision reads the labelled questions through retrieve; "
                       "set graph.enabled and retrieve.enabled")


def fit_decision(cfg: SolverConfig, questions: list[Question], preds: dict[str, Prediction], labelled: Path,
                 folds: int = 5, seed: int = 0, progress: Progress | None = None) -> Fitted:
    """The fitted decision for `cfg` from its graph's predictions on labelled `questions`
    (split train of `labelled`, which its index holds)."""
    reach, asked = collect(cfg, questions, preds, labelled, folds, seed, progress)
    return Fitted.fit(cfg, reach, asked, folds, seed)


def collect(cfg: SolverConfig, questions: list[Question], preds: dict[str, Prediction], labelled: Path,
            folds: int = 5, seed: int = 0, progress: Progress | None = None) -> tuple[list[Evidence], list[Evidence]]:
    """(the Evidence of the questions that reach the gate, of those the LLM answered)."""
    from index.cached import cached_index

    fittable(cfg)
    index = cached_index(str(labelled), "train")
    neighbours = dict(zip([q.task_id for q in questions], neighbours_for(index, questions, cfg.decide.k, progress)))
    priors = out_of_fold(questions, folds, seed + 1, kind_of=kind_of)  # other folds than the fit's own
    reach, asked = [], []
    for q in questions:
        p = preds[q.task_id]
        if p.found.decided_by in ("duplicate", "run") or p.error:
            continue  # decided before any fit would be asked
        found = p.found.model_copy(update={"neighbours": neighbours[q.task_id]})
        ev = evidence_of(q, found, p.votes, index.get, priors(q))
        reach.append(ev)
        if p.votes:
            asked.append(ev)
    return reach, asked
