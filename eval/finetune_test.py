"""Base against finetuned on split test: the table, and every question's letter so it recomputes without a model.

Usage: python eval/finetune_test.py --data LABELLED --out eval/results/finetune/test NAME=METRICS.json ...

Each METRICS.json is what `solver eval --split test --json METRICS.json` wrote, with its
journal (METRICS.json.journal.jsonl) beside it. Writes OUT.md (accuracy with its Wilson
95% interval, questions/s, LLM prompts and tokens a question, and against the first row:
wrong-to-right and right-to-wrong flips with McNemar's exact p) and OUT.json (the labels
and each row's letter per question).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]

from core.data import in_split, load_questions  # noqa: E402
from core.types import Prediction  # noqa: E402
from solver.runner import wilson  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("rows", nargs="+", help="NAME=METRICS.json")
    args = ap.parse_args()

    labels = {q.task_id: q.answer for q in in_split(load_questions(args.data, labelled=True).questions, "test")}
    rows, letters = [], {}
    for spec in args.rows:
        name, _, path = spec.partition("=")
        metrics = json.loads(Path(path).read_text())
        journal = Path(path + ".journal.jsonl").read_text().splitlines()[1:]
        preds = {p.task_id: p for p in map(Prediction.model_validate_json, journal)}
        missing = set(labels) - set(preds)
        if missing:
            sys.exit(f"{path}: {len(missing)} test questions unanswered (the run is not finished)")
        letters[name] = {t: preds[t].letter for t in labels}
        costs = [preds[t].cost for t in labels]
        rows.append({"name": name, "questions_per_s": metrics.get("questions_per_s"), "dtype": metrics.get("dtype"),
                     "machine": metrics.get("machine"), "prompts_per_q": sum(c.calls for c in costs) / len(labels),
                     "tokens_per_q": sum(c.tokens for c in costs) / len(labels)})
    first = rows[0]["name"]
    n = len(labels)
    lines = [f"Split test of {Path(args.data).name}: {n} questions. Machine: {rows[0]['machine']}.", "",
             "| configuration | accuracy [95% CI] | vs first: W->R / R->W (McNemar p) | questions/s "
             "| LLM prompts/q | prompt tokens/q |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        right = {t for t in labels if letters[r["name"]][t] == labels[t]}
        base = {t for t in labels if letters[first][t] == labels[t]}
        gain, loss = len(right - base), len(base - right)
        p = binomtest(gain, gain + loss).pvalue if gain + loss else 1.0
        lo, hi = wilson(len(right), n)
        r |= {"accuracy": len(right) / n, "interval95": [lo, hi], "flips_vs_first": [gain, loss], "mcnemar_p": p}
        qps = f"{r['questions_per_s']:.3f}" if r["questions_per_s"] else "--"
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} [{lo:.3f}, {hi:.3f}] | "
                     f"{'--' if r['name'] == first else f'+{gain} / -{loss} ({p:.3g})'} | {qps} | "
                     f"{r['prompts_per_q']:.2f} | {r['tokens_per_q']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"labels": labels, "rows": rows, "letters": letters},
                                                   indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
