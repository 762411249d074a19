"""What the fitted decision buys a config, per kind of question, and what each feature group is worth.

Usage: python eval/fit_report.py --config configs/graph.yaml --name graph
           [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)] [--runs DIR] [--out eval/results/fit]

Reads three runs of the config with the rules deciding, each journaled: split train (what
`solver fit --config C --labelled TRAIN` answered; its journal under the cache's fit/),
and split dev and test (`solver eval --data TRAIN --split dev|test --labelled TRAIN --config C
--json RUNS/NAME-rules-SPLIT.json`); a run with --limit counts the questions it answered.
Fits on split train only (graphs/fit.py: the same evidence and fits as `solver fit`) and applies
each fit to the dev and test answers as the graph's settle
and decide steps do (Fitted.decide): the LLM's answers are the journaled ones, so every row
reads the same votes. Rows: the rules; the fit with every feature group; without `text`
(the question's own text: how the benchmark built its questions); without `text` and `prior`
(the labelled data's option priors: the same); the model alone (its votes and the kind).
Then the learning curve (dev accuracy against the number of fitted questions, fit time).
Writes NAME.md and NAME.json (per-question letters: ids and letters only) under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from report import ROOT, Timer, bench_file, interval_text, labelled

from core.cache import cache_path
from core.config import load_config, with_labelled
from core.journal import Journal
from execution.recognise import KINDS, kind_of
from graphs.features import Evidence, evidence_of
from graphs.fit import collect
from graphs.nodes import neighbours_for
from graphs.priors import OptionPriors, fold_of
from graphs.ranker import Fitted, per_kind
from index.cached import cached_index
from solver.runner import fingerprint

VARIANTS = {  # name: feature groups (None: the rules decide)
    "rules (no fit)": None,
    "fit: every group": ["kind", "model", "execution", "retrieval", "text", "prior", "shape"],
    "fit: without text": ["kind", "model", "execution", "retrieval", "prior", "shape"],
    "fit: without text, prior": ["kind", "model", "execution", "retrieval", "shape"],
    "fit: the model alone (votes, kind)": ["kind", "model"],
}


def journaled(path: Path, data: str, cfg) -> dict:
    """The answers a run journaled (its fingerprint must be this data and config's)."""
    j = Journal(path, fingerprint(Path(data), cfg.model_dump_json()))
    if not j.resumed:
        raise SystemExit(f"{path}: no journal of this config and data; run it first (see the usage)")
    return j.done


def with_groups(cfg, groups):
    return cfg.model_copy(update={"decide": cfg.decide.model_copy(update={"features": groups})})


def apply(fitted: Fitted, cfg, questions, preds, index, priors) -> dict[str, tuple[str, str]]:
    """task_id -> (letter, decided by), as the graph decides with `fitted`."""
    out, todo = {}, []
    for q in questions:
        p = preds[q.task_id]
        if p.found.decided_by in ("duplicate", "run") or not p.votes:
            out[q.task_id] = (p.letter, p.found.decided_by)
        else:
            todo.append(q)
    for q, nbs in zip(todo, neighbours_for(index, todo, cfg.decide.k)):
        p = preds[q.task_id]
        ev = evidence_of(q, p.found.model_copy(update={"neighbours": nbs}), p.votes, index.get, priors)
        by, probs, _ = fitted.decide(ev, cfg.decide.settle)
        out[q.task_id] = (max(probs, key=lambda k: (probs[k], -ord(k))), by)
    return out


def table(questions, letters: dict) -> dict:
    return per_kind([Evidence(q, kind_of(q)) for q in questions], [letters[q.task_id] for q in questions])


def pct(hit_n) -> str:
    return interval_text(*hit_n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--runs", default=str(ROOT / "eval/results/fit"))
    ap.add_argument("--out", default=str(ROOT / "eval/results/fit"))
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    base, _ = with_labelled(load_config(args.config), args.data, held_out=True)
    cfg = base.model_copy(update={"decide": base.decide.model_copy(update={"fitted": None})})
    questions = {s: labelled(args.data, s) for s in ("train", "dev", "test")}
    preds = {"train": journaled(cache_path("fit", f"{cfg.name}-{Path(args.data).stem}-train.journal.jsonl"), args.data,
                                cfg)}
    for s in ("dev", "test"):
        preds[s] = journaled(Path(args.runs) / f"{args.name}-rules-{s}.json.journal.jsonl", args.data, cfg)
    # a run with --limit (solver fit --limit N, eval --limit N) answered the first questions of its split
    questions = {s: [q for q in qs if q.task_id in preds[s]] for s, qs in questions.items()}
    index = cached_index(args.data, "train")
    priors = OptionPriors.build(index.records, kind_of=kind_of)  # a new question's: all of split train
    results, letters, fits = {}, {s: {} for s in ("dev", "test")}, {}
    for name, groups in VARIANTS.items():
        if groups is None:
            got = {s: {q.task_id: (preds[s][q.task_id].letter, preds[s][q.task_id].found.decided_by)
                       for q in questions[s]} for s in ("dev", "test")}
        else:
            c = with_groups(cfg, groups)
            reach, asked = collect(c, questions["train"], preds["train"], Path(args.data), args.folds)
            with Timer() as t:
                fitted = Fitted.fit(c, reach, asked, args.folds)
            fits[name] = {"seconds": round(t.seconds, 2), "thresholds": fitted.manifest["thresholds"],
                          "out_of_fold": fitted.manifest["out_of_fold"]}
            got = {s: apply(fitted, c, questions[s], preds[s], index, priors) for s in ("dev", "test")}
        results[name] = {}
        for s in ("dev", "test"):
            results[name][s] = table(questions[s], {t: v[0] for t, v in got[s].items()})
            results[name][s + "_decided_by"] = {by: sum(v[1] == by for v in got[s].values())
                                                for by in ("duplicate", "run", "settle", "ranker", "rules")}
            for t, (letter, by) in got[s].items():
                letters[s].setdefault(t, {"kind": kind_of(next(q for q in questions[s] if q.task_id == t))})
                letters[s][t][name] = letter
        print(f"{name:38s} dev {pct(results[name]['dev']['all'])}  test {pct(results[name]['test']['all'])}",
              flush=True)

    curve = []
    reach, asked = collect(cfg, questions["train"], preds["train"], Path(args.data), args.folds)
    order = sorted(range(len(reach)), key=lambda i: fold_of(reach[i].question.task_id, 10**6, 7))
    for n in sorted({n for n in (250, 500, 1000) if n < len(reach)} | {len(reach)}):
        keep = {reach[i].question.task_id for i in order[:n]}
        with Timer() as t:
            fitted = Fitted.fit(cfg, [e for e in reach if e.question.task_id in keep],
                                [e for e in asked if e.question.task_id in keep], args.folds)
        got = apply(fitted, cfg, questions["dev"], preds["dev"], index, priors)
        curve.append({"n": n, "dev": table(questions["dev"], {k: v[0] for k, v in got.items()})["all"],
                      "fit_s": round(t.seconds, 2)})
        print(f"learning curve: {n:5d} fitted questions  dev {pct(curve[-1]['dev'])}  fit {t.seconds:.1f} s")
    write(Path(args.out), args, cfg, results, fits, curve, letters, questions)


def write(out: Path, args, cfg, results, fits, curve, letters, questions) -> None:
    from backends.hardware import machine

    out.mkdir(parents=True, exist_ok=True)
    answers = {s: {q.task_id: q.answer for q in questions[s]} for s in ("dev", "test")}
    (out / f"{args.name}.json").write_text(json.dumps({
        "config": args.config, "machine": machine(), "results": results, "fits": fits, "learning_curve": curve,
        "letters": {s: {t: v | {"answer": answers[s][t]} for t, v in letters[s].items()} for s in letters}},
        indent=1, default=float))
    kinds = ["all", *KINDS]
    md = [f"# The fitted decision for {args.config} (eval/fit_report.py)", "",
          f"Fitted on split train of {Path(args.data).name} ({len(questions['train'])} questions), applied to the "
          f"journaled answers of split dev ({len(questions['dev'])}) and test ({len(questions['test'])}). Machine: "
          f"{machine()}. Accuracy ±95% half-width (n<30: right/n).", ""]
    for s in ("dev", "test"):
        n = {k: results["rules (no fit)"][s][k][1] for k in kinds}
        md += [f"## split {s}", "", "| decision | " + " | ".join(f"{k} ({n[k]})" for k in kinds) +
               " | decided by: duplicate / run / settle (no LLM) / ranker / rules |", "| --- |" + " ---: |" * len(kinds)
               + " --- |"]
        for name, r in results.items():
            by = r[s + "_decided_by"]
            md.append(f"| {name} | " + " | ".join(pct(r[s][k]) for k in kinds) +
                      f" | {by['duplicate']} / {by['run']} / {by['settle']} / {by['ranker']} / {by['rules']} |")
        md.append("")
    md += ["## Learning curve (every group)", "", "| fitted questions | dev accuracy | fit s (both fits, 5 folds) |",
           "| ---: | ---: | ---: |"]
    md += [f"| {c['n']} | {pct(c['dev'])} | {c['fit_s']:.1f} |" for c in curve]
    md += ["", "Gate thresholds per kind (where the gate settles with no LLM call): " +
           "; ".join(f"{name}: {f['thresholds']}" for name, f in fits.items()), ""]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / (args.name + '.md')} and {out / (args.name + '.json')}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
