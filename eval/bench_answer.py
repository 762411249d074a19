"""Single-pass answering speed: the solver against a per-question loop and the raw engine.

Usage: python eval/bench_answer.py [--data ../shared/codemmlu-b6/train.csv] [--n 200]
                                   [--config configs/baseline.yaml] [--rounds 5]

One engine, one process, the same 200 prompts for all three; the three are interleaved
for `--rounds` rounds after one unmeasured warm-up pass, and the median and best times
are compared (the machine is shared and noisy: only ratios measured side by side count):
  raw     one `LLM.generate` call over all prebuilt prompts (the floor);
  solver  the `solver run` path: prompt building, batches of `answer.batch_size`,
          the journal with fsync per batch;
  loop    one `generate` call per question, as the reference notebooks do.
Target: solver within 1.15x of raw.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/codemmlu-b6/train.csv"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--config", default=str(ROOT / "configs/baseline.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from solver.api import Solver
    from solver.backbone import MAX_LOGPROBS
    from solver.config import load_config
    from solver.data import load_questions
    from solver.journal import Journal
    from solver.prompts import answer_prompt
    from solver.runner import answer_all

    cfg = load_config(args.config)
    questions = load_questions(args.data, labelled=True).questions[: args.n]
    solver = Solver(cfg)
    bb = solver.backbone
    fitted = [answer_prompt(q, bb.tokenizer, bb.max_model_len) for q in questions]
    prompts = [p.text for p in fitted]
    params = [SamplingParams(max_tokens=1, temperature=0.0, logprobs=MAX_LOGPROBS,
                             structured_outputs=StructuredOutputsParams(choice=q.letters)) for q in questions]
    n_tok = sum(p.tokens for p in fitted)

    def raw():
        bb.llm.generate(prompts, params, use_tqdm=False)

    def solve():
        with tempfile.TemporaryDirectory() as tmp:
            journal = Journal(Path(tmp) / "j.jsonl", "bench")
            answer_all(lambda: solver, questions, journal, cfg.answer.batch_size, quiet=True)
            journal.close()

    def loop():
        for p, sp in zip(prompts, params):
            bb.llm.generate([p], sp, use_tqdm=False)

    runs = {"raw": raw, "solver": solve, "loop": loop}
    raw()  # warm-up: compiles the grammar of every option set once
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model: {cfg.backbone.model}; "
          f"{len(questions)} questions, {n_tok / len(questions):.0f} prompt tokens each on average; "
          f"batch_size {cfg.answer.batch_size}; median of {args.rounds} interleaved rounds")
    for k in runs:
        print(f"  {k:>6}: {len(questions) / med[k]:7.2f} questions/s  ({med[k]:.2f} s; all: "
              f"{', '.join(f'{t:.2f}' for t in times[k])})")
    best = {k: min(v) for k, v in times.items()}
    print(f"solver time / raw engine time: {med['solver'] / med['raw']:.3f}x median, "
          f"{best['solver'] / best['raw']:.3f}x best-of (target <= 1.15x)")
    print(f"per-question loop time / solver time: {med['loop'] / med['solver']:.2f}x median, "
          f"{best['loop'] / best['solver']:.2f}x best-of (the solver's speed-up)")


if __name__ == "__main__":
    main()
