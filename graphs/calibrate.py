"""What the vote measures before it answers (graphs/vote.py: Calibration): each voter's
confusions or each backbone's pool weight on labelled questions (`vote.labelled`), and each
backbone's prior over option positions (`vote.debias`); `calibration` chooses among them.

The weighted vote then trusts a voter as far as it proved right on questions with known
answers, the pool weighs a backbone by how well its probabilities predicted their labels,
and debiasing divides out a backbone's pull towards positions. Labelled measurements and
priors from a file are cached under .cache/vote/ per (data, split, voters).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from backends.backbone import BackboneError
from core.cache import cache_path
from core.config import SolverConfig, votes_only
from core.data import DataError, in_split, load_questions
from core.journal import atomic_write, sha256_file
from core.prompts import PromptTooLong, answer_prompt
from core.types import Question, top_letter
from graphs.vote import Calibration, Prior, confusion_from_labels, cyclic, estimate, fit_pool, sample


def _cache(path: Path, what: str, key: object) -> Path:
    digest = hashlib.sha256(f"{sha256_file(path)} {json.dumps(key)}".encode()).hexdigest()[:16]
    return cache_path("vote", f"{what}-{digest}.json")


def _questions(path: str, split: str | None, what: str) -> list[Question]:
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (the questions for {what})")
    qs = in_split(load_questions(path, labelled=True).questions, split)
    if not qs:
        raise DataError(f"{path}: no labelled questions in split {split} ({what})")
    return qs


def _labelled_votes(cfg: SolverConfig, backbones: dict,
                    priors: dict | None = None) -> tuple[list[Question], list[dict]]:
    """Every voter's answer to the labelled questions, as the run would give it; nothing else runs."""
    from graphs.build import GraphRunner

    v = cfg.vote
    qs = _questions(v.labelled, v.labelled_split, "vote.labelled")[: v.labelled_n]
    cal = Calibration(priors=priors or {}, weights=cfg.vote.weights)
    runner, size = GraphRunner(votes_only(cfg), backbones, calibration=cal), cfg.answer.batch_size
    preds = [p for i in range(0, len(qs), size) for p in runner.run(qs[i : i + size])]
    return qs, [p.votes for p in preds]


def _voters_key(cfg: SolverConfig) -> list:
    v = cfg.vote
    return [[b.model_dump() for b in cfg.backbones], cfg.answer.orders, v.labelled_split, v.labelled_n]


def labelled_confusion(cfg: SolverConfig, backbones: dict) -> dict[str, np.ndarray]:
    """Each voter's confusion over top letters on the labelled questions (rule weighted)."""
    cache = _cache(Path(cfg.vote.labelled), "confusion", _voters_key(cfg))
    if cache.is_file():
        return {k: np.array(m) for k, m in json.loads(cache.read_text()).items()}
    qs, votes = _labelled_votes(cfg, backbones)
    items = [{voter: q.letters.index(top_letter(probs)) for voter, probs in vs.items()} for q, vs in zip(qs, votes)]
    confusion = confusion_from_labels(items, [q.letters.index(q.answer) for q in qs], [len(q.choices) for q in qs])
    cache_path("vote").mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps({k: m.tolist() for k, m in confusion.items()}))
    return confusion


def labelled_weights(cfg: SolverConfig, backbones: dict, priors: dict | None = None) -> dict[str, float]:
    """Each backbone's log-linear pool weight, fitted on the labelled questions (rule pool),
    on its answers as the vote sees them (without the position priors, if any)."""
    cache = _cache(Path(cfg.vote.labelled), "weights", [*_voters_key(cfg), priors])
    if cache.is_file():
        return json.loads(cache.read_text())
    qs, votes = _labelled_votes(cfg, backbones, priors)
    weights = fit_pool(votes, [q.letters for q in qs], [q.answer for q in qs])
    cache_path("vote").mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps(weights))
    return weights


def position_priors(cfg: SolverConfig, backbones: dict, questions: list[Question]
                    ) -> tuple[dict[str, Prior], dict[str, Counter]]:
    """Each backbone's prior over positions (graphs/vote.py: PriDe), from a seeded share of
    `questions` (source run) or of the file's split (source file), each answered in all
    its cyclic orders; and what that cost each of the run's questions it used."""
    d = cfg.vote.debias
    cache = None
    if d.source == "file":
        questions = _questions(d.data, d.split, "vote.debias.data")
        cache = _cache(Path(d.data), "priors", [[b.model_dump() for b in cfg.backbones], d.model_dump()])
        if cache.is_file():
            return json.loads(cache.read_text()), {}
    chosen = set(sample([q.task_id for q in questions], d.share, d.at_least, d.seed))
    qs = [q for q in questions if q.task_id in chosen]
    priors, extra = {}, {}
    for label, bb in backbones.items():
        asked = []
        for q in qs:
            try:
                asked.append((q, [answer_prompt(q.in_order(cyclic(len(q.choices), k)), bb.tokenizer, bb.max_model_len)
                                  for k in range(len(q.choices))]))
            except PromptTooLong:
                continue
        try:
            replies = iter(bb.choose([p.text for _, ps in asked for p in ps],
                                     [q.letters for q, ps in asked for _ in ps],
                                     [q.task_id for q, ps in asked for _ in ps]))
        except BackboneError:
            continue  # a backbone that cannot answer here is not debiased; the graph reports its failures
        views = []
        for q, ps in asked:
            rs = [next(replies) for _ in ps]
            if all(rs):
                views.append([[r[k] for k in q.letters] for r in rs])
            if d.source == "run":
                extra.setdefault(q.task_id, Counter()).update(calls=len(ps), tokens=sum(p.tokens for p in ps))
        priors[label] = estimate(views)
    if cache:
        cache_path("vote").mkdir(parents=True, exist_ok=True)
        atomic_write(cache, json.dumps(priors))
    return priors, extra


def calibration(cfg: SolverConfig, backbones: dict, priors: dict | None = None) -> Calibration:
    """What the run's vote uses: the priors given; the pool's weights, those fitted on
    `vote.labelled` under the config's own (the config's win), else the config's; the
    weighted rule's confusions from `vote.labelled`, else None (EM over each batch)."""
    v = cfg.vote
    weights = dict(v.weights)
    if v.rule == "pool" and v.labelled:
        weights = labelled_weights(cfg, backbones, priors) | v.weights
    confusion = labelled_confusion(cfg, backbones) if v.rule == "weighted" and v.labelled else None
    return Calibration(priors=priors or {}, weights=weights, confusion=confusion)
