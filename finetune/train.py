"""LoRA finetuning of the answer model on the solver's own prompts, loss on the answer letter only.

`finetune(data, out, cfg)` trains, validates with the solver's scoring, keeps the best
adapter, and can be killed and started again: `out/checkpoint.pt` holds everything the
loop needs, and `out/run.json` names the run (data + config), so a finished run is
returned at once and another run's folder is never overwritten.

Speed: the loss needs the logits of one position per example (the one before the
answer letter), so the output head runs there only, not over every token of every
prompt (for SmolLM2-135M the head is a fifth of the forward's work, and its batch x T x
49k float32 logits the largest tensor of the step); and batches are grouped by length
(finetune.data.batch_order) so they pad little.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from finetune.config import FinetuneConfig
from finetune.data import IGNORE, Example, batch_order, build_examples, collate, load_splits, retrieved_shots
from solver.console import progress_bar
from solver.data import DataError
from solver.journal import atomic_write, sha256_file
from solver.models import resolve_model
from solver.types import UserError


def fingerprint(data_sha256: str, cfg: FinetuneConfig) -> str:
    """A run's identity: the data's content and every config field (not the file's name)."""
    return hashlib.sha256(f"{data_sha256} {cfg.model_dump_json()}".encode()).hexdigest()


def pick_dtype(name: str, device: str) -> torch.dtype:
    """`name`, or for auto the dtype the hardware computes natively (solver.hardware)."""
    from solver.hardware import pick_dtype as pick

    return getattr(torch, pick(name, device))


def load_model(path: str, cfg: FinetuneConfig, device: str, dtype: torch.dtype):
    """(tokenizer, the base wrapped with a fresh LoRA adapter); peft keeps the adapter in float32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules)
    torch.manual_seed(cfg.seed)  # the adapter's initial weights
    return tokenizer, get_peft_model(base, lora)


def answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits over the whole vocabulary at each position whose next token is an
    answer token, those tokens), rows in batch order: the decoder runs on every token,
    the output head only there."""
    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                use_cache=False).last_hidden_state
    rows, cols = (batch["labels"][:, 1:] != IGNORE).nonzero(as_tuple=True)
    logits = base.get_output_embeddings()(hidden[rows, cols]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)  # Gemma 2 squashes its logits
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, batch["labels"][rows, cols + 1]


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: the full-logits masked loss, computed where it is not zero."""
    return F.cross_entropy(*answer_logits(model, batch))


def train_batch(model, examples: list[Example], device: str, scale: float = 1.0,
                scaler: torch.amp.GradScaler | None = None) -> tuple[float, int]:
    """Forward and backward of one micro-batch; (its loss, its real tokens). `scaler`
    scales the loss so that float16 gradients do not underflow (a no-op when disabled)."""
    batch = {k: v.to(device) for k, v in collate(examples).items()}
    loss = answer_loss(model, batch)
    (scaler.scale(loss * scale) if scaler else loss * scale).backward()
    return loss.item(), int(batch["attention_mask"].sum())


@torch.no_grad()
def evaluate(model, examples: list[Example], batch_size: int, device: str) -> tuple[float, float]:
    """(accuracy, mean loss), scored as the solver scores: the next-token logits at the
    end of the prompt over the question's letters only, the top letter taken."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    correct, loss = 0, 0.0
    for start in range(0, len(order), batch_size):
        part = [examples[i] for i in order[start : start + batch_size]]
        logits, targets = answer_logits(model, {k: v.to(device) for k, v in collate(part).items()})
        loss += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += sum(int(row[e.letters_ids].argmax()) == e.answer_index for row, e in zip(logits, part))
    model.train()
    return correct / len(examples), loss / len(examples)


def _save_dir(dest: Path, write: Callable[[Path], None]) -> None:
    """Write a folder whole into a temporary one, then rename it over `dest`."""
    tmp, old = dest.with_name(f".{dest.name}.tmp{os.getpid()}"), dest.with_name(f".{dest.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    random.setstate(saved["python"])
    if saved["cuda"]:
        torch.cuda.set_rng_state_all(saved["cuda"])


def _prior_run(out: Path, fp: str) -> dict | None:
    """The finished summary of this very run in `out`, None for a new or resumable one;
    refuses a folder that holds anything else."""
    try:
        prior = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prior = None
    if prior is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out}: exists and holds no finetune run; choose another --out")
        return None
    if prior.get("fingerprint") != fp:
        raise UserError(f"{out}: holds a different run (other data or config); choose another --out or remove it")
    return prior if prior.get("finished") else None


def merge(path: str, adapter: Path, dest: Path) -> None:
    """The base with the adapter merged in, as a plain HF folder (safetensors + tokenizer)
    that vLLM and transformers load like any other; the base's own dtype is kept."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(path).save_pretrained(tmp)

    _save_dir(dest, write)


def _schedule(train: list[Example], cfg: FinetuneConfig) -> list[list[int]]:
    """The whole run's micro-batches, epoch after epoch (a fraction of the last one too)."""
    steps = max(1, math.ceil(cfg.epochs * math.ceil(len(train) / cfg.batch_size) / cfg.grad_accum))
    schedule, epoch = [], 0
    while len(schedule) < steps * cfg.grad_accum:
        schedule += batch_order([len(e.input_ids) for e in train], cfg.batch_size, cfg.seed, epoch)
        epoch += 1
    return schedule[: steps * cfg.grad_accum]


def _train(model, train: list[Example], val: list[Example], cfg: FinetuneConfig, out: Path, fp: str,
           device: str, dtype: torch.dtype, quiet: bool) -> dict:
    """The loop, from out/checkpoint.pt when it holds this run; the run's state at the end:
    step, best, history (step 0: the base model), training seconds and tokens."""
    from transformers import get_linear_schedule_with_warmup

    schedule = _schedule(train, cfg)
    steps = len(schedule) // cfg.grad_accum
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup * steps), steps)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)  # float16 only: a GPU without bf16
    eval_batch = 2 * cfg.batch_size  # no activations kept for backward
    ckpt = out / "checkpoint.pt"

    def checkpoint() -> None:
        adapter = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        _save_checkpoint(ckpt, {"fingerprint": fp, "adapter": adapter, "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(), **run})

    saved = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
    if saved and saved["fingerprint"] == fp:
        model.load_state_dict(saved["adapter"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved.get("scaler") or {})
        _set_rng_state(saved["rng"])
        run = {k: saved[k] for k in ("step", "best", "history", "seconds", "tokens")}
    else:
        acc, loss = evaluate(model, val, eval_batch, device)  # the base model, for comparison
        run = {"step": 0, "best": None, "seconds": 0.0, "tokens": 0,
               "history": [{"step": 0, "train_loss": None, "val_accuracy": acc, "val_loss": loss, "seconds": 0.0}]}
        checkpoint()

    window: list[float] = []  # micro-batch losses since the last validation

    def describe() -> str:
        last = run["history"][-1]
        loss = np.mean(window) if window else last["train_loss"]
        return f"loss {'--' if loss is None else f'{loss:.3f}'} · val acc {last['val_accuracy']:.3f}"

    sizes = [len(b) for b in schedule]
    start = run["step"] * cfg.grad_accum
    model.train()
    with progress_bar("ex", disable=quiet) as bar:
        task = bar.add_task(describe(), total=sum(sizes), completed=sum(sizes[:start]))
        for i in range(start, len(schedule)):
            t0 = time.perf_counter()
            loss, tokens = train_batch(model, [train[j] for j in schedule[i]], device, 1 / cfg.grad_accum, scaler)
            stepped = (i + 1) % cfg.grad_accum == 0
            if stepped:
                scaler.step(optimizer)  # skipped when float16 gradients overflowed
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                run["step"] += 1
            run["seconds"] += time.perf_counter() - t0
            run["tokens"] += tokens
            window.append(loss)
            bar.update(task, advance=sizes[i], description=describe())
            if stepped and (run["step"] % cfg.eval_every == 0 or run["step"] == steps):
                acc, vloss = evaluate(model, val, eval_batch, device)
                run["history"].append({"step": run["step"], "train_loss": float(np.mean(window)),
                                       "val_accuracy": acc, "val_loss": vloss, "seconds": round(run["seconds"], 3)})
                window.clear()
                best = run["best"]
                if best is None or (acc, -vloss) > (best["val_accuracy"], -best["val_loss"]):
                    _save_dir(out / "adapter", model.save_pretrained)
                    run["best"] = {"step": run["step"], "val_accuracy": acc, "val_loss": vloss}
                checkpoint()
                bar.update(task, description=describe())
                if not quiet:  # a line per validation, also where the bar cannot redraw (a log file)
                    bar.console.print(f"step {run['step']}/{steps}: {describe()} "
                                      f"({run['tokens'] / max(run['seconds'], 1e-9):.0f} tokens/s)", highlight=False)
    return run | {"steps": steps}


def finetune(data: str | Path, out: str | Path, cfg: FinetuneConfig, quiet: bool = False) -> dict:
    """Train a LoRA adapter on `data`'s labelled questions into `out`; the run summary.

    Writes out/adapter (the best by validation accuracy, ties to the lower loss; the base
    model at step 0 is a reference, not a candidate), out/merged (if cfg.merge),
    out/checkpoint.pt (the resume point) and out/run.json (the summary).
    """
    data, out = Path(data), Path(out)
    path = resolve_model(cfg.model)
    train_q, val_q = load_splits(data, cfg)
    data_sha = sha256_file(data)
    fp = fingerprint(data_sha, cfg)
    prior = _prior_run(out, fp)
    if prior:
        return prior
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "run.json", json.dumps({"fingerprint": fp, "finished": False}) + "\n")

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = pick_dtype(cfg.dtype, device)
    tokenizer, model = load_model(path, cfg, device, dtype)
    shots = retrieved_shots(data, train_q + val_q, cfg) if cfg.retrieval else None
    train, train_too_long = build_examples(train_q, tokenizer, cfg.max_len, shots)
    val, val_too_long = build_examples(val_q, tokenizer, cfg.max_len, shots)
    if not train or not val:
        which = "training" if not train else "validation"
        raise DataError(f"{data}: every {which} question overflows max_len {cfg.max_len}, even with its text cut")
    run = _train(model, train, val, cfg, out, fp, device, dtype, quiet)
    del model  # the merge loads a fresh base
    if cfg.merge:
        merge(path, out / "adapter", out / "merged")
    base, best = run["history"][0], run["best"]
    summary = {
        "fingerprint": fp, "finished": True, "base_model": cfg.model, "model_path": path,
        "data": str(data), "data_sha256": data_sha, "config": cfg.model_dump(), "device": device,
        "dtype": str(dtype).removeprefix("torch."), "n_train": len(train), "n_val": len(val),
        "dropped_too_long": {"train": train_too_long, "val": val_too_long}, "steps": run["steps"],
        "train_seconds": round(run["seconds"], 3), "train_tokens": run["tokens"],
        "train_tokens_per_s": round(run["tokens"] / run["seconds"], 1) if run["seconds"] else None,
        "base_val_accuracy": base["val_accuracy"], "base_val_loss": base["val_loss"],
        "best_step": best["step"], "best_val_accuracy": best["val_accuracy"], "best_val_loss": best["val_loss"],
        "history": run["history"], "adapter": str(out / "adapter"),
        "merged": str(out / "merged") if cfg.merge else None,
    }
    atomic_write(out / "run.json", json.dumps(summary, indent=2) + "\n")
    return summary
