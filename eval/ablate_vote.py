"""Voting ablation: each backbone alone, each voting rule, with and without option-order voters.

Usage: python eval/ablate_vote.py [--config configs/vote.yaml] [--data ../shared/codemmlu-b6/train.csv]
                                  [--orders 1,2,4] [--dev-n N] [--test-n N] [--time-n 64] [--out DIR]

Every row runs the config's graph (its exact-duplicate shortcut included) and differs only
in who votes and how the votes combine:
  <backbone> single pass            the baseline: one backbone, options as given, no graph
  <backbone> alone, k orders        one backbone answering in k option orders, mean
  vote <rule>, k orders             every backbone in k orders; rule: mean, majority,
                                    weighted (Dawid-Skene EM over each batch's answers) or
                                    weighted, train labels (confusions measured on 300
                                    questions of split train, which neither split holds)
The vote row with the best accuracy on split dev is the recommended one; every row is
reported on split test, which chose nothing. Flips: against the first row. LLM answers
come from the on-disk cache shared with eval/ablate.py; s/q is timed uncached on the first
--time-n test questions, best of two interleaved runs (in-process engines answer one after
the other; served backbones would overlap).
Writes DIR/vote.md, DIR/vote.json, DIR/vote.png and DIR/recommended.yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from report import ROOT, backbone_pair, chart, dev_test, markdown, right, row, run

RULES = {"mean": {"rule": "mean"}, "majority": {"rule": "majority"}, "weighted": {"rule": "weighted"},
         "weighted, train labels": {"rule": "weighted", "labelled_split": "train", "labelled_n": 300}}


def candidates(cfg, orders: list[int], data: str) -> dict:
    """Row name -> config."""

    def variant(backbones, k, vote):
        return cfg.with_backbones(*backbones).model_copy(update={
            "answer": cfg.answer.model_copy(update={"orders": k}),
            "vote": cfg.vote.model_copy(update={"labelled": data if "labelled_split" in vote else None} | vote)})

    rows = {}
    for b in cfg.backbones:
        rows[f"{b.label} single pass"] = cfg.with_backbones(b).model_copy(update={
            "graph": cfg.graph.model_copy(update={"enabled": False}), "answer": cfg.answer.model_copy(update={"orders": 1})})
    for b in cfg.backbones:
        for k in orders:
            rows[f"{b.label} alone, {k} order{'s' * (k > 1)}"] = variant([b], k, RULES["mean"])
    for k in orders:
        for name, vote in RULES.items():
            rows[f"vote {name}, {k} order{'s' * (k > 1)}"] = variant(cfg.backbones, k, vote)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/vote.yaml"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/codemmlu-b6/train.csv"))
    ap.add_argument("--orders", default="1,2,4")
    ap.add_argument("--dev-n", type=int, default=None)
    ap.add_argument("--test-n", type=int, default=None)
    ap.add_argument("--time-n", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "vote"))
    args = ap.parse_args()

    import yaml

    from index.cached import cached_index
    from solver.config import load_config

    cfg = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev, test = dev_test(args.data, args.dev_n, args.test_n)
    index = cached_index(cfg.retrieve.data, cfg.retrieve.split) if cfg.retrieve.enabled else None
    pairs = {b.label: backbone_pair(b) for b in cfg.backbones}
    raw, cached = {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    rows = candidates(cfg, [int(k) for k in args.orders.split(",")], args.data)

    dev_acc = {}
    for name, c in rows.items():
        dev_acc[name] = len(right(run(c, cached, index, dev)[0], dev)) / len(dev)
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
             f"Recommended (best vote row on dev, {dev_acc[best]:.4f}): **{best}**; best single backbone on dev: {single}.", "",
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
    chart(table, out / "vote.png", f"voting: accuracy on train.csv split test (n={len(test)})")


if __name__ == "__main__":
    main()
