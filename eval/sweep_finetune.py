"""Finetune data-size sweep: accuracy on held-out questions against the number of training questions.

Usage: python eval/sweep_finetune.py [--config configs/finetune.yaml]
                                     [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)]
                                     [--sizes 1000,200] [--test-n N] [--out DIR]

For each size, `solver finetune` on the first N questions of the config's train split
(`all`: every one) into runs/sweep/n<N>, or into runs/smollm2-lora when N is the
config's own n_train: that is the default run `make finetune` trains (done runs are
skipped, interrupted ones resume), then the merged model answers
split `test` of the data, which neither training nor adapter selection saw, with the
single pass of configs/baseline.yaml; size 0 is the base model. Writes DIR/sweep.md,
DIR/sweep.json and DIR/sweep.png (accuracy with its 95% interval against size).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from report import ROOT, bench_file, figure, labelled, right, run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/finetune.yaml"))
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--sizes", default="1000,200")
    ap.add_argument("--test-n", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "finetune"))
    args = ap.parse_args()

    from backends.backbone import make_backbone
    from core.config import load_config
    from finetune.config import FinetuneConfig
    from finetune.train import finetune
    from solver.runner import wilson

    cfg = load_config(args.config, FinetuneConfig)
    base = load_config(ROOT / "configs/baseline.yaml")
    test = labelled(args.data, "test", args.test_n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    models = {0: (cfg.model, None)}  # size -> (model, run summary)
    for size in args.sizes.split(","):
        n = None if size == "all" else int(size)
        folder = ROOT / "runs" / ("smollm2-lora" if n == cfg.n_train else f"sweep/n{size}")
        summary = finetune(args.data, folder, cfg.model_copy(update={"n_train": n}))
        models[summary["n_train"]] = (summary["merged"], summary)
    points = []
    for n, (model, summary) in sorted(models.items()):
        bcfg = base.backbone.model_copy(update={"model": model})
        backbone = make_backbone(bcfg)
        preds, secs = run(base.with_backbones(bcfg), {bcfg.label: backbone}, None, test)
        backbone.close()
        k = len(right(preds, test))
        lo, hi = wilson(k, len(test))
        points.append({"n_train": n, "accuracy": k / len(test), "lo": lo, "hi": hi,
                       "val_accuracy": summary["best_val_accuracy"] if summary else None,
                       "train_seconds": summary["train_seconds"] if summary else None,
                       "train_tokens_per_s": summary["train_tokens_per_s"] if summary else None})
        print(f"n_train {n}: test accuracy {k / len(test):.4f} [{lo:.3f}, {hi:.3f}]", flush=True)

    lines = [f"Finetune sweep: {cfg.model}, LoRA r{cfg.rank}, {cfg.epochs} epoch(s); adapter chosen on split "
             f"{cfg.val_split}; accuracy on split test ({len(test)} questions), single pass.", "",
             "| training questions | test accuracy [95% CI] | best val accuracy | training s | tokens/s |",
             "| --- | --- | --- | --- | --- |"]
    for p in points:
        lines.append(f"| {p['n_train'] or '0 (base)'} | {p['accuracy']:.4f} [{p['lo']:.3f}, {p['hi']:.3f}] | "
                     f"{fmt(p['val_accuracy'])} | "
                     f"{p['train_seconds'] or ''} | {p['train_tokens_per_s'] or ''} |")
    md = "\n".join(lines) + "\n"
    print(md)
    (out / "sweep.md").write_text(md)
    (out / "sweep.json").write_text(json.dumps(points, indent=2) + "\n")
    chart(points, out / "sweep.png", f"{Path(cfg.model).stem} + LoRA: test accuracy (n={len(test)}) by training size")


def fmt(x) -> str:
    return "" if x is None else f"{x:.4f}"


def chart(points, path, title):
    """Accuracy with its 95% interval against the number of training questions."""

    def draw(ax):
        xs = [p["n_train"] for p in points]
        acc = [p["accuracy"] for p in points]
        ax.errorbar(xs, acc, yerr=[[a - p["lo"] for a, p in zip(acc, points)],
                                   [p["hi"] - a for a, p in zip(acc, points)]],
                    marker="o", capsize=3)
        ax.set_xlabel("training questions (0: the base model)")
        ax.set_ylabel("accuracy (95% interval)")

    figure(path, draw, (6, 4), title)


if __name__ == "__main__":
    main()
