"""Per-node ablation of the graph: tuned on train's dev split, reported on its test split.

Usage: python eval/ablate.py --data ../shared/codemmlu-b6/train.csv --config configs/graph.yaml
                             [--model SPEC] [--dev-n N] [--test-n N] [--passes 2] [--out DIR]

1. Tune the graph by coordinate ascent on the fixed hash split `dev` of the data: which
   nodes are on (and both option orders or one), then the thresholds (graph.accept,
   verify.accept, retrieve.floor, reanswer.weight). A change is kept only if it raises dev
   accuracy, so a node stays on only if it earns its place there.
2. Report on the split `test`, which tuning never saw: the single-pass baseline, the
   answer step alone (both option orders), the full tuned graph, and the full graph with
   each node removed: accuracy with a 95% interval, the right-to-wrong and wrong-to-right
   flips each node causes, LLM prompts and prompt tokens per question.
3. Seconds per question for the baseline and the full graph, timed on uncached runs
   (all other runs answer repeated prompts from an on-disk cache: temperature 0, same
   prompt, same answer; their seconds would mean nothing).
The retrieval index holds only the split `train` of the data, so neither split is in it.
Writes DIR/ablation.md, DIR/ablation.png, DIR/ablation.json and DIR/tuned.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
GRID = {  # nodes first: a node that does not earn its place on dev is switched off
    ("answer", "permute"): [True, False],
    ("verify", "enabled"): [True, False],
    ("reanswer", "enabled"): [True, False],
    ("retrieve", "enabled"): [True, False],
    ("graph", "accept"): [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01],
    ("verify", "accept"): [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7],
    ("retrieve", "floor"): [0.7, 0.8, 0.85, 0.9, 0.95, 1.01],
    ("reanswer", "weight"): [0.25, 0.5, 0.75, 1.0],
}


def with_(cfg, **sections):
    """A copy of cfg with some fields of some sections replaced: with_(c, verify={"enabled": False})."""
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


class MemoIndex:
    """The same retrieval for every config: query each question once."""

    def __init__(self, index):
        self.index, self.memo = index, {}

    def query(self, questions, **kw):
        todo = [q for q in questions if q.task_id not in self.memo]
        if todo:
            self.memo.update((q.task_id, r) for q, r in zip(todo, self.index.query(todo, **kw)))
        return [self.memo[q.task_id] for q in questions]

    def get(self, task_id):
        return self.index.get(task_id)


def run(cfg, backbone, index, questions):
    """Predictions (by task_id) and seconds, in the batches `solver run` uses."""
    from solver.api import Solver

    solver = Solver(cfg, backbone=backbone, index=index)
    start, preds = time.perf_counter(), {}
    for i in range(0, len(questions), cfg.answer.batch_size):
        preds.update((p.task_id, p) for p in solver.solve_batch(questions[i : i + cfg.answer.batch_size]))
    return preds, time.perf_counter() - start


def accuracy(preds, questions):
    return sum(preds[q.task_id].letter == q.answer for q in questions) / len(questions)


def cost(preds, questions):
    """LLM prompts and prompt tokens per question, from each trace's `cost` step."""
    costs = [next(t for t in preds[q.task_id].trace if t["step"] == "cost") for q in questions]
    return sum(c["calls"] for c in costs) / len(questions), sum(c["tokens"] for c in costs) / len(questions)


def tune(cfg, backbone, index, dev, passes):
    best = accuracy(run(cfg, backbone, index, dev)[0], dev)
    print(f"dev start: {best:.4f}")
    for _ in range(passes):
        for (section, field), values in GRID.items():
            for v in values:
                c = with_(cfg, **{section: {field: v}})
                acc = accuracy(run(c, backbone, index, dev)[0], dev)
                if acc > best + 1e-9:
                    best, cfg = acc, c
                    print(f"  dev {best:.4f} with {section}.{field} = {v}")
    return cfg, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/codemmlu-b6/train.csv"))
    ap.add_argument("--config", default=str(ROOT / "configs/graph.yaml"))
    ap.add_argument("--model", default=None, help="override backbone.model")
    ap.add_argument("--dev-n", type=int, default=None)
    ap.add_argument("--test-n", type=int, default=None)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import yaml

    from index.cached import cached_index
    from solver.backbone import CachedBackbone, make_backbone
    from solver.config import load_config
    from solver.data import load_questions, split_of
    from solver.runner import wilson

    cfg = load_config(args.config)
    if args.model:
        cfg = with_(cfg, backbone={"model": args.model})
    name = Path(cfg.backbone.model).stem
    out = Path(args.out or ROOT / "eval" / "results" / f"ablation-{name}")
    out.mkdir(parents=True, exist_ok=True)
    labelled = load_questions(args.data, labelled=True).questions
    dev = [q for q in labelled if split_of(q.task_id) == "dev"][: args.dev_n]
    test = [q for q in labelled if split_of(q.task_id) == "test"][: args.test_n]
    raw = make_backbone(cfg.backbone)
    cached = CachedBackbone(raw, ROOT / ".cache" / "llm" / f"{name}-{CachedBackbone.key(str(cfg.backbone.model_dump()), [])[:12]}.jsonl")
    index = MemoIndex(cached_index(cfg.retrieve.data, cfg.retrieve.split))

    tuned, dev_acc = tune(cfg, cached, index, dev, args.passes) if args.passes else (cfg, None)
    baseline = with_(tuned, graph={"enabled": False}, answer={"permute": False})
    rows = {
        "baseline (single pass)": baseline,
        "answer only (both orders)": with_(tuned, verify={"enabled": False}, retrieve={"enabled": False},
                                           reanswer={"enabled": False}),
        "full graph": tuned,
        "full - verify": with_(tuned, verify={"enabled": False}),
        "full - retrieve": with_(tuned, retrieve={"enabled": False}),
        "full - reanswer": with_(tuned, reanswer={"enabled": False}),
    }
    timed = {k: run(rows[k], raw, index, test)[1] / len(test) for k in ("baseline (single pass)", "full graph")}
    preds = {k: run(c, cached, index, test)[0] for k, c in rows.items()}
    right = {k: {q.task_id for q in test if p[q.task_id].letter == q.answer} for k, p in preds.items()}
    table = []
    for k in rows:
        n_right = len(right[k])
        lo, hi = wilson(n_right, len(test))
        calls, tokens = cost(preds[k], test)
        without = right[k]  # flips the node causes: full graph against the graph without it
        flips = (len(without - right["full graph"]), len(right["full graph"] - without)) if k.startswith("full -") else None
        table.append({"row": k, "accuracy": n_right / len(test), "lo": lo, "hi": hi, "calls": calls, "tokens": tokens,
                      "s_per_q": timed.get(k), "flips": flips})
    b, f = right["baseline (single pass)"], right["full graph"]
    tuning = (f"tuned on train.csv split dev ({len(dev)} questions, dev accuracy {dev_acc:.4f})" if args.passes
              else f"thresholds as in {args.config}, not tuned here")
    lines = [f"Model {cfg.backbone.model}; {tuning}; reported on split test ({len(test)} questions); "
             "index: split train.", "",
             "| configuration | accuracy [95% CI] | node's R->W / W->R flips | LLM prompts/q | prompt tokens/q | s/q |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in table:
        flips = f"{r['flips'][0]} / {r['flips'][1]}" if r["flips"] else ""
        sq = f"{r['s_per_q']:.3f}" if r["s_per_q"] else ""
        lines.append(f"| {r['row']} | {r['accuracy']:.4f} [{r['lo']:.3f}, {r['hi']:.3f}] | {flips} | "
                     f"{r['calls']:.2f} | {r['tokens']:.0f} | {sq} |")
    lines += ["", f"Full graph against the baseline: {len(b - f)} right-to-wrong, {len(f - b)} wrong-to-right.",
              f"Tuned: graph.accept {tuned.graph.accept}, verify.accept {tuned.verify.accept}, "
              f"retrieve.floor {tuned.retrieve.floor}, reanswer.weight {tuned.reanswer.weight}; on: "
              f"permute {tuned.answer.permute}, verify {tuned.verify.enabled}, retrieve {tuned.retrieve.enabled}, "
              f"reanswer {tuned.reanswer.enabled}.",
              f"LLM cache: {cached.hits} hits, {cached.misses} prompts sent."]
    md = "\n".join(lines) + "\n"
    print(md)
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps({"table": table, "tuned": tuned.model_dump(), "dev_accuracy": dev_acc,
                                                   "dev_n": len(dev), "test_n": len(test)}, indent=2) + "\n")
    (out / "tuned.yaml").write_text(yaml.safe_dump(tuned.model_dump(exclude={"name"}), sort_keys=False))
    chart(table, out / "ablation.png", f"{name}: accuracy on train.csv split test (n={len(test)})")


def chart(table, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ys = range(len(table))[::-1]
    acc = [r["accuracy"] for r in table]
    err = [[a - r["lo"] for a, r in zip(acc, table)], [r["hi"] - a for a, r in zip(acc, table)]]
    ax.barh(list(ys), acc, xerr=err, color=["#999"] + ["#6a5acd"] * (len(table) - 1), capsize=3)
    ax.set_yticks(list(ys), [r["row"] for r in table])
    ax.axvline(acc[0], color="#999", ls="--", lw=1)
    ax.set_xlabel("accuracy (95% interval)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
