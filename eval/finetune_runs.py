"""Finetune variants of one config side by side: what each costs and what it buys on validation.

Usage: python eval/finetune_runs.py --config configs/finetune-qwen2.5-coder-1.5b.yaml --data LABELLED
                                    --runs runs/ft --out eval/results/finetune/layers
                                    NAME:KEY=VALUE[,KEY=VALUE...] ...

Each variant is the config with its overrides (YAML values: `layers=null`), trained by
`solver finetune` in its own process into RUNS/NAME (done runs are skipped, interrupted
ones resume; the activation cache is shared). Writes OUT.md and OUT.json: per variant the
base and best validation accuracy, the activation-cache pass (prompts, seconds, tokens/s),
training seconds and tokens/s, and the process's peak RSS, with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from core.config import read_yaml

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), []))
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["no native bf16"]
    return f"{model}, {os.cpu_count()} cores, {' '.join(bf16)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", default="runs/ft")
    ap.add_argument("--out", required=True)
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args()

    base = read_yaml(Path(args.config))  # with what it includes
    rows = []
    for variant in args.variants:
        name, _, overrides = variant.partition(":")
        cfg = base | {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides.split(",") if o)}
        run = Path(args.runs) / name
        run.parent.mkdir(parents=True, exist_ok=True)
        cfg_file = run.parent / f"{name}.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        print(f"{name}: {overrides or 'the config'}", flush=True)
        subprocess.run([sys.executable, "-m", "solver.cli", "finetune", "-q", "--config", str(cfg_file),
                        "--labelled", args.data, "--out", str(run)], cwd=ROOT, check=True)
        s = json.loads((run / "run.json").read_text())
        c = s["cache_filled"]
        rows.append({"name": name, "overrides": overrides, "layers": f"{s['layers_trained']}/{s['layers']}",
                     "n_train": s["n_train"], "n_val": s["n_val"], "epochs": s["config"]["epochs"], "steps": s["steps"],
                     "base_val": s["base_val_accuracy"], "best_val": s["best_val_accuracy"],
                     "best_step": s["best_step"],
                     "cache_prompts": c["prompts"], "cache_s": c["seconds"],
                     "cache_tok_s": round(c["tokens"] / c["seconds"], 1) if c["seconds"] else None,
                     "train_s": s["train_seconds"], "train_tok_s": s["train_tokens_per_s"],
                     "peak_rss_mb": s["peak_rss_mb"], "dtype": s["dtype"], "history": s["history"]})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu(), "config": args.config, "data": Path(args.data).name}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(meta, rows))
    print(table(meta, rows))


def table(meta: dict, rows: list[dict]) -> str:
    lines = [f"Machine: {meta['cpu']}; config {meta['config']}; dtype {rows[0]['dtype']}. Validation: the first "
             f"{rows[0]['n_val']} questions of split dev that fit, single pass, one order.", "",
             "| variant | layers trained | n_train | epochs | val acc base -> best (step) "
             "| cache pass: prompts, s, tok/s "
             "| train s | train tok/s | peak RSS MB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cache = (f"{r['cache_prompts']}, {r['cache_s']:.0f}, {r['cache_tok_s']}" if r["cache_prompts"]
                 else "none (already cached)")
        lines.append(f"| {r['name']} ({r['overrides']}) | {r['layers']} | {r['n_train']} | {r['epochs']} | "
                     f"{r['base_val']:.3f} -> {r['best_val']:.3f} ({r['best_step']}/{r['steps']}) | {cache} | "
                     f"{r['train_s']:.0f} | {r['train_tok_s']} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
