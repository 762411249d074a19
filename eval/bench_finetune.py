"""What each way of LoRA training costs, against one inference pass over the same prompts.

Usage: python eval/bench_finetune.py --data LABELLED [--model smollm2-135m-instruct] [--n 32]
                                     [--batch-size 4] [--layers 2,4,8] [--max-len 768] [--dtype auto]

On the first N training-split questions (the solver's answer prompts, finetune.data):
  forward     the whole model, no grad: what one inference pass costs
  full        LoRA on every layer, forward and backward from the token ids
  cache@L     the pass that stores what enters layer L, one prompt at a time, no grad
  top-k       LoRA on the top k layers, forward and backward from that cache (L = n-k)
Each train variant takes AdamW steps over batches of the given size (grouped by length),
after one untimed warm-up batch. Printed: real tokens/s of each and its cost per epoch
relative to `forward`, then what E epochs cost in forward-pass units (top-k: its cache
once plus E epochs), the CPU and its bf16 flags, the dtype, and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from report import Timer, labelled  # noqa: E402

from backends.models import resolve_model  # noqa: E402
from finetune.activations import ActivationCache  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from finetune.data import build_examples  # noqa: E402
from finetune.train import Collate, answer_logits, answer_loss, items, load_for_training, torch_dtype  # noqa: E402


def batches(examples, size: int) -> list[list[dict]]:
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    return [items([examples[i] for i in order[j : j + size]]) for j in range(0, len(order), size)]


def timed(step, parts) -> float:
    step(parts[0])  # warm-up, untimed
    with Timer() as t:
        for part in parts:
            step(part)
    return t.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--layers", default="2,4,8")
    ap.add_argument("--max-len", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = ap.parse_args()

    from backends.hardware import machine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch_dtype(args.dtype, device)
    path = resolve_model(args.model)
    questions = labelled(args.data, "train", args.n)
    ks = [int(k) for k in args.layers.split(",")]
    seconds, tokens = {}, None
    for variant in ["forward", "full"] + [f"top-{k}" for k in ks]:
        k = int(variant[4:]) if variant.startswith("top-") else None
        cfg = FinetuneConfig(model=args.model, max_len=args.max_len, layers=k, dropout=0.0)
        tokenizer, model, start, cache_layer = load_for_training(path, cfg, device, dtype)
        examples, _ = build_examples(questions, tokenizer, args.max_len)
        tokens = sum(len(e.prompt) for e in examples)
        cache = None
        if k:
            base = model.get_base_model()
            with tempfile.TemporaryDirectory() as tmp:
                cache = ActivationCache(tmp, "bench", cache_layer, dtype, base.config.hidden_size)
                with Timer() as t, model.disable_adapter():
                    cache.fill(base, [e.prompt for e in examples])
                seconds[f"cache@{cache_layer}"] = t.seconds
                parts = [Collate(cache)(b) for b in batches(examples, args.batch_size)]  # the states read into memory
        else:
            parts = [Collate()(b) for b in batches(examples, args.batch_size)]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def train_step(batch, model=model, optimizer=optimizer):
            answer_loss(model, batch)[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def forward_step(batch, model=model):
            with torch.no_grad(), model.disable_adapter():  # the base alone: an inference pass
                answer_logits(model, batch)

        model.train(variant != "forward")
        seconds[variant] = timed(forward_step if variant == "forward" else train_step, parts)
        del model, optimizer, parts, cache, train_step, forward_step
        print(f"{variant}: {tokens / seconds[variant]:.1f} tokens/s", flush=True)

    print(machine())
    print(f"{args.model} ({dtype}, {device}, {torch.get_num_threads()} threads): {len(questions)} prompts, "
          f"{tokens} tokens, batch {args.batch_size}")
    fwd = seconds["forward"]
    print("| variant | tokens/s | cost of one epoch / one forward pass |\n| --- | --- | --- |")
    for name, s in seconds.items():
        print(f"| {name} | {tokens / s:.1f} | {s / fwd:.2f} |")
    e, caches = args.epochs, [v for n, v in seconds.items() if n.startswith("cache@")]
    costs = [f"full {e * seconds['full'] / fwd:.2f}"] + [
        f"top-{k} {(cache + e * seconds[f'top-{k}']) / fwd:.2f}" for k, cache in zip(ks, caches)]
    print(f"{e} epochs, in forward passes (top-k: its cache once, then the epochs): {'; '.join(costs)}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
