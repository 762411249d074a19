"""What the LLM-free features alone buy: a LightGBM lambdarank ranker over graphs/features.py.

Usage: python eval/fit_probe.py [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)] [--k 8]
                                [--folds 5] [--seed 0] [--rounds 200] [--out eval/results/fit]

Fits on split train only and reports on dev and test (core.data.split_of). Evidence of a
train question: its neighbours in a FAISS index of split train (queried with
exclude_same_text=False, so copies count; the question itself is never its own neighbour)
and option priors of the other folds of split train (graphs.priors.out_of_fold: leave-one-out
priors leak the label, see the row "leave-one-out priors"); a dev or test question gets the
same index and all of train's priors, as a new question would.
Accuracy (the top option per question) on train out-of-fold (5 folds grouped by question),
dev and test, overall and per kind (execution.recognise.kind_of), for: all groups; without
the per-kind prior; without `text`; without `prior`; without both; without `retrieval`; and
"always the first option" and the prior alone.
Also: leave-one-out priors instead of k-fold ones, the learning curve (dev accuracy at 250, 500,
1000 and all train questions, with fit times) and the features that matter (gain, and the
mean |pred_contrib| on dev). Writes probe.json (per-question dev/test letters; ids and
letters only) and probe.md under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
from report import ROOT, Timer, bench_file, interval_text, labelled

from core.cache import cache_path
from core.data import split_of
from core.journal import sha256_file
from core.types import LETTERS
from execution.recognise import KINDS, kind_of
from graphs.features import FEATURES, Evidence, matrix, names_in
from graphs.priors import OptionPriors, fold_of, out_of_fold
from index.cached import cached_index

GROUPS = ["kind", "text", "prior", "shape", "retrieval"]
SETS = {  # name: (groups, features left out)
    "all groups": (GROUPS, ()),
    "without prior_rate_kind": (GROUPS, ("prior_rate_kind",)),
    "without text": ([g for g in GROUPS if g != "text"], ()),
    "without prior": ([g for g in GROUPS if g != "prior"], ()),
    "without text, prior": ([g for g in GROUPS if g not in ("text", "prior")], ()),
    "without retrieval": ([g for g in GROUPS if g != "retrieval"], ()),
}


def params(seed: int, rounds: int) -> dict:
    return dict(objective="lambdarank", metric="ndcg", eval_at=[1], learning_rate=0.05, num_leaves=15,
                min_data_in_leaf=20, feature_fraction=0.9, bagging_fraction=0.9, bagging_freq=1, lambda_l2=1.0,
                num_iterations=rounds, seed=seed, deterministic=True, force_row_wise=True, num_threads=1,
                verbose=-1)


def neighbours_of(data: str, questions, k: int) -> dict[str, list[tuple[str, float]]]:
    """Each question's neighbours (task_id, cosine) in split train, cached: embedding is the slow part."""
    key = hashlib.sha256(f"{sha256_file(data)} {k} train".encode()).hexdigest()[:16]
    path = cache_path("fit_probe") / f"neighbours-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ix = cached_index(data, "train")
    res = ix.query(questions, k=k, min_score=0.0, exclude_same_text=False)
    out = {r.task_id: [(n.task_id, n.score) for n in r.neighbors] for r in res}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


class Table:
    """The features of a set of questions: rows are options, one query group per question."""

    def __init__(self, evidence: list[Evidence]):
        self.ev = evidence
        self.names = list(FEATURES)
        mats = [matrix(ev, self.names) for ev in evidence]
        self.X = np.vstack(mats)
        self.sizes = np.array([m.shape[0] for m in mats])
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.y = np.concatenate([[float(L == ev.question.answer) for L in ev.question.letters] for ev in evidence])
        self.kinds = [ev.kind for ev in evidence]

    def rows(self, idx) -> np.ndarray:
        return np.concatenate([np.arange(self.starts[i], self.starts[i] + self.sizes[i]) for i in idx])

    def cols(self, groups, drop=()) -> list[int]:
        keep = set(names_in(groups)) - set(drop)
        return [j for j, n in enumerate(self.names) if n in keep]

    def picks(self, scores: np.ndarray, idx=None) -> list[int]:
        """The top option of each question (ties: the first), `scores` over `idx`'s rows."""
        idx = range(len(self.ev)) if idx is None else idx
        out, at = [], 0
        for i in idx:
            out.append(int(np.argmax(scores[at:at + self.sizes[i]])))
            at += self.sizes[i]
        return out

    def right(self, picks, idx=None) -> list[bool]:
        idx = range(len(self.ev)) if idx is None else idx
        return [self.ev[i].question.answer == LETTERS[p] for i, p in zip(idx, picks)]


def fit(t: Table, idx, cols, seed, rounds) -> tuple[lgb.Booster, float]:
    rows = t.rows(idx)
    ds = lgb.Dataset(t.X[np.ix_(rows, cols)], t.y[rows], group=t.sizes[idx],
                     feature_name=[t.names[j] for j in cols], free_raw_data=False)
    with Timer() as timer:
        model = lgb.train(params(seed, rounds), ds)
    return model, timer.seconds


def oof(t: Table, cols, folds, seed, rounds) -> list[int]:
    """Out-of-fold picks on train: each question scored by a model that never saw its fold."""
    fold = np.array([fold_of(ev.question.task_id, folds, seed) for ev in t.ev])
    picks = [0] * len(t.ev)
    for f in range(folds):
        held = np.flatnonzero(fold == f)
        model, _ = fit(t, np.flatnonzero(fold != f), cols, seed, rounds)
        for i, p in zip(held, t.picks(model.predict(t.X[np.ix_(t.rows(held), cols)]), held)):
            picks[i] = p
    return picks


def accuracy(t: Table, picks) -> dict:
    ok = t.right(picks)
    out = {"all": (sum(ok), len(ok))}
    for kind in KINDS:
        sel = [o for o, k in zip(ok, t.kinds) if k == kind]
        out[kind] = (sum(sel), len(sel))
    return out


def pct(hit_n) -> str:
    return interval_text(*hit_n, percent=True)


def evidence(questions, nbs, by_id, priors_of) -> list[Evidence]:
    return [Evidence(q, kind_of(q), [(by_id[i], s) for i, s in nbs.get(q.task_id, [])], priors_of(q))
            for q in questions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "eval/results/fit"))
    args = ap.parse_args()
    questions = labelled(args.data)
    split = {s: [q for q in questions if split_of(q.task_id) == s] for s in ("train", "dev", "test")}
    by_id = {q.task_id: q for q in split["train"]}
    print({s: len(v) for s, v in split.items()}, flush=True)
    with Timer() as tn:
        nbs = neighbours_of(args.data, questions, args.k)
    print(f"neighbours: {tn.seconds:.0f} s", flush=True)
    priors = out_of_fold(split["train"], args.folds, args.seed + 1, kind_of=kind_of)  # not the CV's folds
    with Timer() as tf:
        tables = {s: Table(evidence(split[s], nbs, by_id, priors)) for s in split}
    print(f"features: {len(FEATURES)} x {sum(len(t.ev) for t in tables.values())} questions, {tf.seconds:.1f} s")
    tr = tables["train"]
    everything = np.arange(len(tr.ev))

    results, preds = {}, {s: defaultdict(dict) for s in ("dev", "test")}
    first = {s: [0] * len(t.ev) for s, t in tables.items()}
    results["always the first option"] = {s: accuracy(tables[s], first[s]) for s in ("train", "dev", "test")}
    j = tr.names.index("prior_rate")
    results["prior alone"] = {s: accuracy(t, t.picks(t.X[:, j])) for s, t in tables.items()}
    models = {}
    for name, (groups, drop) in SETS.items():
        cols = tr.cols(groups, drop)
        row = {"train": accuracy(tr, oof(tr, cols, args.folds, args.seed, args.rounds))}
        model, seconds = fit(tr, everything, cols, args.seed, args.rounds)
        models[name] = (model, cols)
        for s in ("dev", "test"):
            t = tables[s]
            picks = t.picks(model.predict(t.X[:, cols]))
            row[s] = accuracy(t, picks)
            for ev, p in zip(t.ev, picks):
                preds[s][ev.question.task_id][name] = LETTERS[p]
        row["fit_s"] = seconds
        results[name] = row
        print(f"{name:22s} train-OOF {pct(row['train']['all'])}  dev {pct(row['dev']['all'])}  "
              f"test {pct(row['test']['all'])}  fit {seconds:.2f} s", flush=True)

    # leave-one-out priors (OptionPriors.rate's exclude) for train: the leak graphs/priors.py names
    loo = OptionPriors.build(split["train"], kind_of=kind_of)
    tl = Table(evidence(split["train"], nbs, by_id, lambda q: loo))
    cols = tl.cols(GROUPS)
    row = {"train": accuracy(tl, oof(tl, cols, args.folds, args.seed, args.rounds))}
    model, row["fit_s"] = fit(tl, everything, cols, args.seed, args.rounds)
    for s in ("dev", "test"):
        row[s] = accuracy(tables[s], tables[s].picks(model.predict(tables[s].X[:, cols])))
    results["all groups, leave-one-out priors"] = row
    print(f"leave-one-out priors   train-OOF {pct(row['train']['all'])}  dev {pct(row['dev']['all'])}  "
          f"test {pct(row['test']['all'])}")

    curve = []
    order = np.random.default_rng(args.seed).permutation(len(tr.ev))
    cols = tr.cols(GROUPS)
    for n in [250, 500, 1000, len(tr.ev)]:
        model, seconds = fit(tr, np.sort(order[:n]), cols, args.seed, args.rounds)
        dev = tables["dev"]
        picks = dev.picks(model.predict(dev.X[:, cols]))
        curve.append({"n": n, "dev": accuracy(dev, picks)["all"], "fit_s": seconds})
        print(f"learning curve: {n:5d} questions  dev {pct(curve[-1]['dev'])}  fit {seconds:.2f} s")

    model, cols = models["all groups"]
    gain = dict(zip(model.feature_name(), model.feature_importance("gain")))
    contrib = model.predict(tables["dev"].X[:, cols], pred_contrib=True)[:, :-1]
    mean_abs = dict(zip(model.feature_name(), np.abs(contrib).mean(axis=0)))
    top = sorted(gain, key=lambda n: -gain[n])
    print("features by gain:", ", ".join(f"{n} {gain[n]:.0f}" for n in top[:12]))
    write(Path(args.out), results, curve, gain, mean_abs, preds, tables, args)


def write(out: Path, results, curve, gain, mean_abs, preds, tables, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    per_q = {s: [{"task_id": ev.question.task_id, "kind": ev.kind, "answer": ev.question.answer,
                  **preds[s][ev.question.task_id]} for ev in tables[s].ev] for s in ("dev", "test")}
    (out / "probe.json").write_text(json.dumps({
        "args": {k: v for k, v in vars(args).items() if k != "out"} | {"data": Path(args.data).name},
        "results": results, "learning_curve": curve, "gain": gain, "mean_abs_contrib_dev": mean_abs,
        "features": {n: {"group": f.group, "doc": f.doc} for n, f in FEATURES.items()},
        "predictions": per_q}, indent=1, default=float))
    kinds = ["all", *KINDS]
    md = ["# What the LLM-free features buy (eval/fit_probe.py)", "",
          (f"LightGBM lambdarank, {args.rounds} rounds, seed {args.seed}; neighbours k={args.k} from split train; "
           "accuracy % ±95% half-width (n<30: count shown). train = out-of-fold."), ""]
    for s in ("train", "dev", "test"):
        n = {k: results["all groups"][s][k][1] for k in kinds}
        md += [f"## {s}", "", "| features | " + " | ".join(f"{k} ({n[k]})" for k in kinds) + " |",
               "| --- |" + " ---: |" * len(kinds)]
        md += [f"| {name} | " + " | ".join(pct(r[s][k]) for k in kinds) + " |" for name, r in results.items()]
        md.append("")
    md += ["## Learning curve (all groups)", "", "| train questions | dev accuracy | fit s |",
           "| ---: | ---: | ---: |"]
    md += [f"| {c['n']} | {pct(c['dev'])} | {c['fit_s']:.2f} |" for c in curve]
    md += ["", "## Features that matter (all groups: gain; mean |pred_contrib| on dev)", "",
           "| feature | group | gain | mean abs contrib |", "| --- | --- | ---: | ---: |"]
    md += [f"| {n} | {FEATURES[n].group} | {gain[n]:.0f} | {mean_abs[n]:.3f} |"
           for n in sorted(gain, key=lambda n: -gain[n])]
    (out / "probe.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'probe.json'} and {out / 'probe.md'}")


if __name__ == "__main__":
    main()
