"""Training throughput of finetune.train's loop against a plain transformers + peft loop.

Usage: python eval/bench_finetune.py [--model smollm2-135m-instruct] [--data ../shared/codemmlu-b6/train.csv]
                                     [--n 128] [--batch-size 8] [--rounds 2] [--max-len 1024] [--dtype auto]

Both loops train one LoRA model (the FinetuneConfig defaults: rank 16, all-linear) on the
same examples (the first N training-split questions, as finetune.data builds them), with
the same batch size, dtype and AdamW step:
  ours   finetune.data.batch_order (batches grouped by length) and finetune.train.train_batch
         (the output head applied only where the next token is the answer)
  plain  random batches padded to their longest, `model(input_ids, attention_mask, labels).loss`
         (logits over the whole vocabulary at every position)
Rounds are interleaved (ours first in even rounds, plain first in odd ones), each an epoch
over the N examples after one untimed warm-up batch. Printed: real (non-padding) tokens/s
of each, the ratio ours/plain (median over rounds, and best against best), the padding
fraction of each, the process's peak RSS (both loops together), and on CUDA each loop's
peak memory. The machine may be shared: quote figures from a quiet one.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from finetune.config import FinetuneConfig  # noqa: E402
from finetune.data import batch_order, build_examples, collate  # noqa: E402
from finetune.train import load_model, pick_dtype, train_batch  # noqa: E402
from solver.data import load_questions, split_of  # noqa: E402
from solver.models import resolve_model  # noqa: E402


def plain_batch(model, examples, device: str) -> int:
    """The usual way: the model's own loss over full logits; returns the real tokens."""
    batch = {k: v.to(device) for k, v in collate(examples).items()}
    model(**batch).loss.backward()
    return int(batch["attention_mask"].sum())


def plain_order(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def epoch(kind: str, model, examples, batches, device: str) -> dict:
    """One timed pass; tokens/s over real tokens, and the share of batch slots that are padding."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step = (lambda exs: train_batch(model, exs, device)[1]) if kind == "ours" else (lambda exs: plain_batch(model, exs, device))
    step([examples[i] for i in batches[0]])  # warm-up, untimed
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start, tokens = time.perf_counter(), 0
    for b in batches:
        tokens += step([examples[i] for i in b])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    slots = sum(len(b) * max(len(examples[i].input_ids) for i in b) for b in batches)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"tokens_per_s": tokens / seconds, "padding": 1 - tokens / slots, "seconds": seconds, "cuda_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "codemmlu-b6" / "train.csv"))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = pick_dtype(args.dtype, device)
    cfg = FinetuneConfig(model=args.model, max_len=args.max_len, batch_size=args.batch_size)
    tokenizer, model = load_model(resolve_model(args.model), cfg, device, dtype)
    model.train()
    questions = [q for q in load_questions(args.data, labelled=True).questions if split_of(q.task_id) == "train"][: args.n]
    examples, too_long = build_examples(questions, tokenizer, args.max_len)
    lengths = [len(e.input_ids) for e in examples]
    from solver.hardware import machine

    print(machine())
    print(f"{args.model} ({dtype}, {device}, {torch.get_num_threads()} threads): {len(examples)} examples "
          f"({too_long} too long), {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), "
          f"batch {args.batch_size}, {args.rounds} rounds")

    results = {"ours": [], "plain": []}
    for r in range(args.rounds):
        order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
        for kind in order:
            batches = batch_order(lengths, args.batch_size, 0, r) if kind == "ours" else plain_order(len(examples), args.batch_size, r)
            res = epoch(kind, model, examples, batches, device)
            results[kind].append(res)
            mem = f", CUDA peak {res['cuda_gib']:.2f} GiB" if res["cuda_gib"] is not None else ""
            print(f"round {r} {kind:5s}: {res['tokens_per_s']:8.1f} tokens/s, padding {res['padding']:.1%}, "
                  f"{res['seconds']:.1f} s{mem}", flush=True)

    ours = [x["tokens_per_s"] for x in results["ours"]]
    plain = [x["tokens_per_s"] for x in results["plain"]]
    print(f"ours : median {statistics.median(ours):.1f} tokens/s, best {max(ours):.1f}, "
          f"padding {statistics.mean(x['padding'] for x in results['ours']):.1%}")
    print(f"plain: median {statistics.median(plain):.1f} tokens/s, best {max(plain):.1f}, "
          f"padding {statistics.mean(x['padding'] for x in results['plain']):.1%}")
    print(f"ours/plain: median of rounds {statistics.median(o / p for o, p in zip(ours, plain)):.2f}x, "
          f"best-of {max(ours) / max(plain):.2f}x")
    print(f"peak RSS (process, both loops): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
