"""Voting ablation: each backbone alone, each voting rule, with and without option-order voters.

Usage: python eval/ablate_vote.py [--config configs/vote.yaml] [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)]
                                  [--orders 1,2,4] [--dev-n N] [--test-n N] [--time-n 64] [--out DIR]

Every row runs the config's graph (its exact-duplicate shortcut included) and differs only
in who votes and how the votes combine:
  <backbone> single pass            the baseline: one backbone, options as given, no graph
  <backbone> alone, k orders        one backbone answering in k option orders, mean
  vote <rule> [(group)], k orders   every backbone (or the group named) in k orders; rule: mean, majority,
                                    weighted (Dawid-Skene EM over each batch's answers) or
                                    pool (log-linear, backbone weights fitted on the dev
                                    answers of the mean row)
  ..., debiased                     each backbone's position prior (PriDe) estimated
                                    label-free on 5% of the split's own questions (at least
                                    10), answered in every cyclic order, and divided out
The vote row with the best accuracy on split dev is the recommended one; every row is
reported on split test, which chose nothing. Flips: against the first row. LLM answers
come from the on-disk cache shared with eval/ablate.py; s/q is timed uncached on the first
--time-n test questions, best of two interleaved runs (in-process engines answer one after
the other; served backbones would overlap).
Writes DIR/vote.md, DIR/vote.json, DIR/vote.png, DIR/recommended.yaml and DIR/test_letters.json
(every row's letter per test question, and the labels: the tables recompute from it).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from report import ROOT, backbone_pair, bench_file, chart, dev_test, markdown, right, row, run

RULES = {"mean": {"rule": "mean"}, "majority": {"rule": "majority"}, "weighted": {"rule": "weighted"},
         "pool": {"rule": "pool"}}  # pool: its weights are fitted on dev (the mean row's answers) in main()
DEBIAS = {"source": "run", "share": 0.05, "at_least": 10}  # PriDe, label-free, on each split's own questions


def candidates(cfg, orders: list[int]) -> dict:
    """Row name -> config."""

    def variant(backbones, k, vote, debiased):
        return cfg.with_backbones(*backbones).model_copy(update={
            "answer": cfg.answer.model_copy(update={"orders": k}),
            "vote": cfg.vote.model_validate(cfg.vote.model_dump() | vote | {"debias": DEBIAS if debiased else {}})})

    rows = {}
    for b in cfg.backbones:
        rows[f"{b.label} single pass"] = cfg.with_backbones(b).model_copy(update={
            "graph": cfg.graph.model_copy(update={"enabled": False}),
            "answer": cfg.answer.model_copy(update={"orders": 1})})
    for b in cfg.backbones:
        for k in orders:
            for debiased in (False, True):
                rows[f"{b.label} alone, {k} order{'s' * (k > 1)}{', debiased' * debiased}"] = variant(
                    [b], k, RULES["mean"], debiased)
    groups = [g for n in range(len(cfg.backbones), 1, -1) for g in itertools.combinations(cfg.backbones, n)]
    for group in groups:  # every backbone, then each smaller group: does the vote keep the weakest?
        who = "" if len(group) == len(cfg.backbones) else f" ({' + '.join(b.label for b in group)})"
        for k in orders:
            for debiased in (False, True):
                for name, vote in RULES.items():
                    rows[f"vote {name}{who}, {k} order{'s' * (k > 1)}{', debiased' * debiased}"] = variant(
                        group, k, vote, debiased)
    return rows


def fitted_pool(cfg, mean_preds: dict, dev):
    """A pool row's config with backbone weights fitted on the dev answers of its mean row
    (the same voters; a question settled without a vote adds nothing)."""
    from graphs.vote import fit_pool

    votes = [mean_preds[q.task_id].votes for q in dev]
    weights = fit_pool(votes, [q.letters for q in dev], [q.answer for q in dev])
    return cfg.model_copy(update={"vote": cfg.vote.model_copy(update={"weights": weights})})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/vote.yaml"))
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--orders", default="1,2,4")
    ap.add_argument("--dev-n", type=int, default=None)
    ap.add_argument("--test-n", type=int, default=None)
    ap.add_argument("--time-n", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "vote"))
    args = ap.parse_args()

    import yaml

    from core.config import load_config, with_labelled
    from index.cached import cached_index

    cfg = with_labelled(load_config(args.config), args.data, held_out=True)[0]  # retrieval: split train only
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev, test = dev_test(args.data, args.dev_n, args.test_n)
    index = cached_index(cfg.retrieve.data, cfg.retrieve.split) if cfg.retrieve.enabled else None
    pairs = {b.label: backbone_pair(b) for b in cfg.backbones}
    raw, cached = {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    rows = candidates(cfg, [int(k) for k in args.orders.split(",")])

    dev_acc, dev_preds = {}, {}
    for name, c in rows.items():
        if name.startswith("vote pool"):
            rows[name] = c = fitted_pool(c, dev_preds[name.replace("vote pool", "vote mean", 1)], dev)
        dev_preds[name] = run(c, cached, index, dev)[0]
        dev_acc[name] = len(right(dev_preds[name], dev)) / len(dev)
        print(f"dev {dev_acc[name]:.4f} {name}", flush=True)
    best = max((k for k in rows if k.startswith("vote")), key=lambda k: dev_acc[k])
    single = max((k for k in rows if " alone, " in k), key=lambda k: dev_acc[k])

    timed = {}
    for _ in range(2):  # interleaved, best of two: the machine is shared
        for name in [k for k in rows if k.endswith("single pass")] + [single, best]:
            s = run(rows[name], raw, index, test[: args.time_n])[1] / args.time_n
            timed[name] = min(s, timed.get(name, s))

    preds = {name: run(c, cached, index, test)[0] for name, c in rows.items()}
    ok = {name: right(p, test) for name, p in preds.items()}
    first = next(iter(rows))
    table = [row(name + (" (recommended)" if name == best else ""), preds[name], test, ok[name], timed.get(name),
                 None if name == first else (len(ok[first] - ok[name]), len(ok[name] - ok[first]))) for name in rows]
    for r, name in zip(table, rows):
        r["dev_accuracy"] = dev_acc[name]

    lines = [f"Voting ablation: {', '.join(b.model for b in cfg.backbones)}; graph of {args.config} "
             f"(duplicate shortcut {cfg.retrieve.enabled and cfg.retrieve.duplicates}); chosen on train.csv split dev "
             f"({len(dev)} questions), reported on split test ({len(test)} questions).", "",
             f"Recommended (best vote row on dev, {dev_acc[best]:.4f}): **{best}**; best single backbone on dev: "
             f"{single}.", "",
             *markdown(table), "",
             f"Flips against {first}. s/q: uncached, best of two interleaved runs over the first {args.time_n} test "
             "questions; in-process engines answer one after the other.", ""]
    for label, c in cached.items():
        lines.append(f"LLM cache {label}: {c.hits} hits, {c.misses} prompts sent.")
    md = "\n".join(lines) + "\n"
    print(md)
    (out / "vote.md").write_text(md)
    (out / "vote.json").write_text(json.dumps({"table": table, "recommended": best, "dev_n": len(dev),
                                               "test_n": len(test)}, indent=2) + "\n")
    chosen = rows[best]
    (out / "recommended.yaml").write_text(yaml.safe_dump({"answer": {"orders": chosen.answer.orders},
                                                          "vote": chosen.vote.model_dump()}, sort_keys=False))
    per_q = {name: {q.task_id: p[q.task_id].letter for q in test} for name, p in preds.items()}
    (out / "test_letters.json").write_text(json.dumps({"labels": {q.task_id: q.answer for q in test},
                                                       "rows": per_q}) + "\n")
    chart(table, out / "vote.png", f"voting: accuracy on train.csv split test (n={len(test)})")


if __name__ == "__main__":
    main()
