"""Single-pass answering speed: the solver against a per-question loop and the raw engine.

Usage: python eval/bench_answer.py [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)] [--n 200]
                                   [--config configs/baseline.yaml] [--rounds 5]

One engine, one process, the same 200 prompts for all three; the three are interleaved
for `--rounds` rounds after one unmeasured warm-up pass, and the median and best times
are compared (the machine is shared and noisy: only ratios measured side by side count):
  raw     one `LLM.generate` call over all prebuilt prompts (the floor);
  solver  the `solver run` path: prompt building, batches of `answer.batch_size`,
          the journal with fsync per batch;
  loop    one `generate` call per question, as the reference notebooks do.
Target: solver within 1.15x of raw.

Then the share of the machine's peak that the single pass reaches: the model's FLOP per
prompt (2 x non-embedding parameters per token, causal attention, the output head at the
last token only, as vLLM computes it) over the solver's median time, against a float
matmul microbenchmark in the same dtype, on the same threads, in this process, shaped
like the model's MLP (tokens x hidden x intermediate).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from report import bench_file, interleaved, labelled  # noqa: E402


def prompt_flop(model_path: str, lengths: list[int]) -> tuple[float, int]:
    """(FLOP to prefill prompts of these lengths, non-embedding parameters): the model is
    built on the meta device from its config, so nothing is loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    body = total - embed.numel() - (0 if head is embed else head.numel())
    heads_dim = config.num_attention_heads * getattr(config, "head_dim",
                                                     config.hidden_size // config.num_attention_heads)
    flop = sum(2 * body * t  # every linear layer, every token
               + 2 * config.num_hidden_layers * heads_dim * t * t  # QK^T and AV, causal: T^2/2 each, 2 FLOP a MAC
               + 2 * head.numel()  # the output head, at the last token only
               for t in lengths)
    return flop, body


def matmul_peak(dtype: str, shapes: list[tuple[int, int, int]], rounds: int = 10) -> tuple[float, tuple]:
    """(best FLOP/s, its shape) of (m x k) @ (k x n) matmuls in `dtype` on this process's threads."""
    import torch

    best = (0.0, None)
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
        for _ in range(3):
            a @ b
        for _ in range(rounds):
            t = time.perf_counter()
            a @ b
            best = max(best, (2 * m * k * n / (time.perf_counter() - t), (m, k, n)))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--config", default=str(ROOT / "configs/baseline.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from backends.backbone import MAX_LOGPROBS
    from backends.hardware import describe
    from backends.models import resolve_model
    from core.config import load_config, with_labelled
    from core.journal import Journal
    from core.prompts import answer_prompt
    from solver.api import Solver
    from solver.runner import answer_all

    cfg = with_labelled(load_config(args.config), args.data, held_out=True)[0]  # retrieval: split train only
    questions = labelled(args.data, n=args.n)
    solver = Solver(cfg)
    bb = solver.backbone
    fitted = [answer_prompt(q, bb.tokenizer, bb.max_model_len) for q in questions]
    prompts = [p.text for p in fitted]
    params = [SamplingParams(max_tokens=1, temperature=0.0, logprobs=MAX_LOGPROBS,
                             structured_outputs=StructuredOutputsParams(choice=q.letters)) for q in questions]
    n_tok = sum(p.tokens for p in fitted)

    def raw():
        bb.llm.generate(prompts, params, use_tqdm=False)

    def cold(fn):
        """Every timed pass starts with an empty prefix cache: a real run has not seen its
        prompts before (within a pass, the prompts' shared template is still reused)."""
        def run():
            bb.llm.reset_prefix_cache()
            fn()
        return run

    def solve():
        with tempfile.TemporaryDirectory() as tmp:
            journal = Journal(Path(tmp) / "j.jsonl", "bench")
            answer_all(lambda: solver, questions, journal, cfg.answer.batch_size, quiet=True)
            journal.close()

    def loop():
        for p, sp in zip(prompts, params):
            bb.llm.generate([p], sp, use_tqdm=False)

    runs = {"raw": cold(raw), "solver": cold(solve), "loop": cold(loop)}
    raw()  # warm-up: compiles the grammar of every option set once
    times = interleaved(runs, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"machine: {describe(bb.dtype)}; model: {cfg.backbone.model}; "
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

    import torch
    from transformers import AutoConfig

    flop, body = prompt_flop(resolve_model(cfg.backbone.model), [p.tokens for p in fitted])
    mc = AutoConfig.from_pretrained(resolve_model(cfg.backbone.model))
    h, i = mc.hidden_size, mc.intermediate_size
    peak, shape = matmul_peak(bb.dtype, [(2048, h, i), (2048, i, h), (2048, 2048, 2048)])  # the MLP's, and square
    achieved = flop / med["solver"]
    print(f"share of peak: {n_tok / med['solver']:.0f} prompt tokens/s x {flop / n_tok / 1e6:.0f} MFLOP/token "
          f"({body / 1e6:.0f}M non-embedding parameters, attention, head) = {achieved / 1e9:.1f} GFLOP/s; "
          f"{bb.dtype} matmul {'x'.join(map(str, shape))} on {torch.get_num_threads()} threads: "
          f"{peak / 1e9:.1f} GFLOP/s; "
          f"the single pass reaches {achieved / peak:.0%} of it")


if __name__ == "__main__":
    main()
