"""Each voter's per-option confusion measured on labelled questions (`vote.labelled`).

The weighted vote then trusts a voter as far as it proved right on questions with known
answers, instead of estimating that from the run's own unlabelled answers. Measured once
per (data, split, voters) and cached under .cache/vote/.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from solver.config import SolverConfig
from solver.data import DataError, load_questions, split_of
from solver.journal import atomic_write, sha256_file
from solver.types import top_letter

CACHE = Path(".cache") / "vote"


def labelled_confusion(cfg: SolverConfig, backbones: dict) -> dict[str, np.ndarray]:
    from graphs.build import GraphRunner
    from graphs.vote import confusion_from_labels

    v = cfg.vote
    path = Path(v.labelled)
    if not path.is_file():
        raise DataError(f"{path}: no such file (the labelled questions for vote.labelled)")
    voters = json.dumps([[b.model_dump() for b in cfg.backbones], cfg.answer.orders, v.labelled_split, v.labelled_n])
    cache = CACHE / f"{hashlib.sha256(f'{sha256_file(path)} {voters}'.encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        return {k: np.array(m) for k, m in json.loads(cache.read_text()).items()}
    qs = [q for q in load_questions(path, labelled=True).questions
          if v.labelled_split is None or split_of(q.task_id) == v.labelled_split][: v.labelled_n]
    if not qs:
        raise DataError(f"{path}: no labelled questions in split {v.labelled_split} (vote.labelled)")
    # every voter answers; nothing else runs
    plain = cfg.model_copy(update={
        "vote": v.model_copy(update={"rule": "mean"}), "graph": cfg.graph.model_copy(update={"accept": 1.01}),
        "retrieve": cfg.retrieve.model_copy(update={"enabled": False}),
        "verify": cfg.verify.model_copy(update={"enabled": False}),
        "reanswer": cfg.reanswer.model_copy(update={"enabled": False})})
    runner, size = GraphRunner(plain, backbones), cfg.answer.batch_size
    preds = [p for i in range(0, len(qs), size) for p in runner.run(qs[i : i + size])]
    items = [{voter: q.letters.index(top_letter(probs)) for voter, probs in step["votes"].items()}
             for q, p in zip(qs, preds) for step in p.trace if step["step"] == "vote"]
    confusion = confusion_from_labels(items, [q.letters.index(q.answer) for q in qs], [len(q.choices) for q in qs])
    CACHE.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps({k: m.tolist() for k, m in confusion.items()}))
    return confusion
