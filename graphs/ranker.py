"""The fitted decision: LightGBM lambdarank rankers over each option's features (graphs/features.py).

One `solver fit` run of a config's graph over labelled questions gives two fits:
- `ranker`, over every feature group the config's `decide.features` names (the votes too):
  it picks the letter wherever the graph asked the LLM;
- `gate`, over the groups that need no LLM call: where its top option is as sure as the
  threshold chosen for the question's kind (out-of-fold precision >= 0.98 there), the
  question is settled before any LLM call, as a trusted run settles one.

Why LightGBM's lambdarank: a ranking objective over a question's options (the right option
above each wrong one, so a reward model over (question, option) pairs) that takes any number
of options and features of any scale, fits in seconds on 2 cores, is deterministic with one
thread and a seed, saves to its own text format (never a pickle), and gives each feature's
contribution to a score (`pred_contrib`) for the trace.

An artifact is a folder: ranker.txt and gate.txt (LightGBM's model format) and
manifest.json (format, feature names, thresholds per kind, the config's fingerprint, the
out-of-fold metrics per kind, each file's sha256). It holds no row of the labelled data:
priors and neighbours come from the labelled file named at run time.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import SolverConfig
from core.journal import atomic_dir, sha256_file
from core.types import LETTERS, UserError, top_letter, voter
from execution.recognise import KINDS
from graphs.features import LLM_GROUPS, VOTER, Evidence, matrix, names_in, voter_features
from graphs.priors import fold_of
from graphs.routing import seats

FORMAT = 1
FILES = ("ranker.txt", "gate.txt")
PRECISION = 0.98  # what a kind's gate threshold must reach out of fold
MIN_SETTLED = 20  # ... over at least this many of its questions


REPO = Path(__file__).resolve().parents[1]


class FitError(UserError):
    """A fit that cannot be made or an artifact that cannot be used: one line, exit 2."""


def fitted_path(spec: str) -> Path:
    """`decide.fitted` as given, else relative to the checkout (where the shipped fits are)."""
    path = Path(spec).expanduser()
    return path if path.exists() or path.is_absolute() else REPO / spec


def fingerprint(cfg: SolverConfig) -> str:
    """What the evidence depends on: the config without its name, its decision, the labelled
    file it is given and the batch size (a fit made on one file serves another)."""
    keep = cfg.model_dump(exclude={"name": True, "decide": True, "answer": {"batch_size"},
                                   "retrieve": {"data", "split", "index"}})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def feature_names(cfg: SolverConfig, llm: bool = True) -> list[str]:
    """The ranker's features for `cfg` (its voters' own included), or the gate's (`llm` False)."""
    groups = [g for g in cfg.decide.features if llm or g not in LLM_GROUPS]
    extra = voter_features([voter(v["backbone"], v["order"]) for v in seats(cfg)]) if llm and "model" in groups else []
    return names_in(groups) + extra


def params(seed: int, rounds: int) -> dict:
    return dict(objective="lambdarank", metric="ndcg", eval_at=[1], learning_rate=0.05, num_leaves=15,
                min_data_in_leaf=20, feature_fraction=0.9, bagging_fraction=0.9, bagging_freq=1, lambda_l2=1.0,
                num_iterations=rounds, seed=seed, deterministic=True, force_row_wise=True, num_threads=1,
                verbose=-1)


class Table:
    """The features of some questions: one row per option, one query group per question."""

    def __init__(self, evidence: list[Evidence], names: list[str]):
        self.ev, self.names = evidence, names
        mats = [matrix(ev, names) for ev in evidence]
        self.X = np.vstack(mats) if mats else np.zeros((0, len(names)), np.float32)
        self.sizes = np.array([m.shape[0] for m in mats], dtype=int)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int)
        self.y = np.array([float(L == ev.question.answer) for ev in evidence for L in ev.question.letters])

    def rows(self, idx) -> np.ndarray:
        return np.concatenate([np.arange(self.starts[i], self.starts[i] + self.sizes[i]) for i in idx]) \
            if len(idx) else np.zeros(0, int)

    def split(self, scores: np.ndarray, idx) -> list[np.ndarray]:
        """`scores` over `idx`'s rows, cut into one array per question."""
        return np.split(scores, np.cumsum(self.sizes[idx])[:-1]) if len(idx) else []


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


def train(t: Table, idx, seed: int, rounds: int):
    import lightgbm as lgb

    rows = t.rows(idx)
    ds = lgb.Dataset(t.X[rows], t.y[rows], group=t.sizes[idx], feature_name=list(t.names), free_raw_data=False)
    return lgb.train(params(seed, rounds), ds)


def out_of_fold(t: Table, folds: int, seed: int, rounds: int) -> list[np.ndarray]:
    """Each question's option probabilities from a fit that never saw its fold."""
    fold = np.array([fold_of(ev.question.task_id, folds, seed) for ev in t.ev])
    probs: list = [None] * len(t.ev)
    for f in range(folds):
        held = np.flatnonzero(fold == f)
        model = train(t, np.flatnonzero(fold != f), seed, rounds)
        for i, s in zip(held, t.split(model.predict(t.X[t.rows(held)]), held)):
            probs[i] = softmax(s)
    return probs


def gate_thresholds(probs: list[np.ndarray], t: Table) -> dict[str, float]:
    """Per kind: the lowest top-option probability at which the gate's out-of-fold picks are
    still >= PRECISION right, over at least MIN_SETTLED questions (no entry: never settle)."""
    out = {}
    for kind in KINDS:
        top = sorted(((float(p.max()), LETTERS[int(p.argmax())] == ev.question.answer)
                      for p, ev in zip(probs, t.ev) if ev.kind == kind), key=lambda x: -x[0])
        right, best = 0, None
        for n, (p, ok) in enumerate(top, 1):
            right += ok
            if n >= MIN_SETTLED and right / n >= PRECISION and (n == len(top) or top[n][0] < p):
                best = p  # a threshold between two distinct probabilities, so ties are all in or out
        if best is not None:
            out[kind] = best
    return out


def per_kind(evidence: list[Evidence], picks: list[str | None]) -> dict:
    """Accuracy overall and per kind: {"all": [right, n], kind: [right, n]}."""
    out = {k: [0, 0] for k in ("all", *KINDS)}
    for ev, p in zip(evidence, picks):
        for k in ("all", ev.kind):
            out[k][0] += p == ev.question.answer
            out[k][1] += 1
    return out


@dataclass
class Fitted:
    """A fitted decision, loaded and checked against the config that uses it."""

    manifest: dict
    ranker: object  # lightgbm.Booster
    gate: object

    @classmethod
    def fit(cls, cfg: SolverConfig, reach: list[Evidence], asked: list[Evidence], folds: int = 5, seed: int = 0,
            rounds: int = 200) -> "Fitted":
        """`reach`: the labelled questions that reach the gate (no duplicate, no trusted run);
        `asked`: those the LLM answered (their votes read). Out-of-fold metrics, then the fits on all."""
        if len(asked) < 2 * folds or len(reach) < 2 * folds:
            raise FitError(f"{len(asked)} answered questions: too few for {folds} folds (at least {2 * folds})")
        names, gate_names = feature_names(cfg), feature_names(cfg, llm=False)
        t, g = Table(asked, names), Table(reach, gate_names)
        ranked, gated = out_of_fold(t, folds, seed, rounds), out_of_fold(g, folds, seed, rounds)
        thresholds = gate_thresholds(gated, g)
        settled = [ev.question.task_id for p, ev in zip(gated, g.ev) if ev.kind in thresholds
                   and p.max() >= thresholds[ev.kind]]
        rules = [top_letter(ev.pooled) if ev.pooled else None for ev in asked]
        manifest = {
            "format": FORMAT, "config": cfg.name, "fingerprint": fingerprint(cfg), "groups": list(cfg.decide.features),
            "features": names, "gate_features": gate_names, "thresholds": thresholds, "folds": folds, "seed": seed,
            "rounds": rounds, "questions": {"reach": len(reach), "asked": len(asked)},
            "out_of_fold": {"ranker": per_kind(asked, [LETTERS[int(p.argmax())] for p in ranked]),
                            "vote": per_kind(asked, rules),
                            "gate": per_kind(reach, [LETTERS[int(p.argmax())] for p in gated]),
                            "settled": per_kind([ev for ev in g.ev if ev.question.task_id in settled],
                                                [LETTERS[int(p.argmax())] for p, ev in zip(gated, g.ev)
                                                 if ev.question.task_id in settled])}}
        return cls(manifest, train(t, np.arange(len(asked)), seed, rounds),
                   train(g, np.arange(len(reach)), seed, rounds))

    def save(self, folder: str | Path) -> Path:
        """Written whole or not at all (a temporary folder renamed into place)."""
        def write(tmp: Path) -> None:
            (tmp / "ranker.txt").write_text(self.ranker.model_to_string())
            (tmp / "gate.txt").write_text(self.gate.model_to_string())
            manifest = self.manifest | {"sha256": {f: sha256_file(tmp / f) for f in FILES}}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

        atomic_dir(Path(folder), write)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, cfg: SolverConfig) -> "Fitted":
        """The artifact in `folder`, or one line saying why it cannot decide for `cfg`."""
        import lightgbm as lgb

        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            if manifest.get("format") != FORMAT:
                raise FitError(f"{folder}: format {manifest.get('format')}, this solver reads {FORMAT}")
            for f in FILES:
                if sha256_file(folder / f) != manifest["sha256"][f]:
                    raise FitError(f"{folder / f}: its bytes do not match manifest.json (corrupt or edited)")
            ranker = lgb.Booster(model_str=(folder / "ranker.txt").read_text())
            gate = lgb.Booster(model_str=(folder / "gate.txt").read_text())
        except FitError:
            raise
        except (OSError, ValueError, KeyError, TypeError, lgb.basic.LightGBMError) as e:
            raise FitError(f"decide.fitted {folder}: not a fitted decision ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'})") from None
        if manifest["features"] != feature_names(cfg) or manifest["groups"] != list(cfg.decide.features):
            def said(names, groups):
                return f"groups {groups}, voters {[n.removeprefix(VOTER) for n in names if n.startswith(VOTER)]}"
            raise FitError(f"decide.fitted {folder}: fitted on {said(manifest['features'], manifest['groups'])}, but "
                           f"config '{cfg.name}' has {said(feature_names(cfg), cfg.decide.features)}; "
                           "fit it again: solver fit")
        if manifest["fingerprint"] != fingerprint(cfg):
            raise FitError(f"decide.fitted {folder}: fitted for config '{manifest['config']}' (fingerprint "
                           f"{manifest['fingerprint']}), not this one ({fingerprint(cfg)}); fit it again: solver fit")
        return cls(manifest, ranker, gate)

    def score(self, ev: Evidence, gate: bool = False) -> tuple[dict[str, float], list[tuple[str, float]]]:
        """(each option's probability, the features that moved the top option most) by one fit."""
        model, names = (self.gate, self.manifest["gate_features"]) if gate else (self.ranker, self.manifest["features"])
        X = matrix(ev, names)
        probs = softmax(model.predict(X))
        best = int(probs.argmax())
        contrib = model.predict(X[best:best + 1], pred_contrib=True)[0][:-1]
        moved = sorted(zip(names, contrib), key=lambda x: -abs(x[1]))[:3]
        return ({L: float(p) for L, p in zip(ev.question.letters, probs)},
                [(n, round(float(c), 4)) for n, c in moved])

    def decide(self, ev: Evidence, settle: bool = True) -> tuple[str, dict[str, float], list]:
        """(settle or ranker, the probabilities, what moved them): the gate's where it is sure,
        else the ranker's; what the graph's settle and decide steps do, for one question at once."""
        if settle:
            letter, probs, moved = self.settles(ev)
            if letter:
                return "settle", probs, moved
        return ("ranker", *self.score(ev))

    def settles(self, ev: Evidence) -> tuple[str | None, dict[str, float], list]:
        """The gate's letter when it is sure enough for this kind of question, else None."""
        probs, moved = self.score(ev, gate=True)
        letter = top_letter(probs)
        threshold = self.manifest["thresholds"].get(ev.kind, math.inf)
        return (letter if probs[letter] >= threshold else None), probs, moved

