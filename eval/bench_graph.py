"""Graph overhead: a full graph run against the same LLM calls issued as one batch per step.

Usage: python eval/bench_graph.py [--config configs/graph.yaml] [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)]
                                  [--n 128] [--rounds 3]

The graph's batched calls are recorded on a first, unmeasured run (which also warms the
engine and builds the index). Then, for `--rounds` interleaved rounds: the graph over the
questions (retrieval, prompt building, LangGraph, routing included) and a replay of the
recorded calls straight into the backbone, one call per step. Target: at most 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from report import bench_file, interleaved, labelled  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/graph.yaml"))
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from core.config import load_config, with_labelled
    from graphs.build import GraphRunner
    from solver.api import Solver

    cfg = with_labelled(load_config(args.config), args.data, held_out=True)[0]  # retrieval: split train only
    questions = labelled(args.data, "dev", args.n)
    solver = Solver(cfg)
    runner = solver.graph  # builds or loads the index
    recorded = []  # (backbone label, requests) of every batched LLM call, in order
    for label, handler in [(k, h) for k, h in runner.batcher.handlers.items() if k in solver.backbones]:
        runner.batcher.handlers[label] = (lambda reqs, label=label, h=handler:
                                          recorded.append((label, list(reqs))) or h(reqs))
    runner.run(questions)  # record, and warm up

    def graph():
        GraphRunner(cfg, solver.backbones, runner.index, runner.calibration).run(questions)

    def replay():
        for label, reqs in recorded:
            solver.backbones[label].choose([p for p, _, _ in reqs], [o for _, o, _ in reqs], [k for _, _, k in reqs])

    times = interleaved({"graph": graph, "replay": replay}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    n_prompts = sum(len(r) for _, r in recorded)
    from backends.backbone import run_dtype
    from backends.hardware import machine

    dtypes = ", ".join(f"{b.model} {run_dtype(b)}" for b in cfg.backbones)
    print(f"{len(questions)} dev questions, config {cfg.name}, models {dtypes}; {machine()}")
    print(f"  {len(recorded)} batched LLM calls ({n_prompts} prompts, {n_prompts / len(questions):.2f} per question)")
    for k in times:
        print(f"  {k:>6}: {med[k]:.2f} s median ({', '.join(f'{t:.2f}' for t in times[k])})")
    print(f"graph time / batched-calls time: {med['graph'] / med['replay']:.3f}x median, "
          f"{best['graph'] / best['replay']:.3f}x best-of (target <= 1.2x)")


if __name__ == "__main__":
    main()
