"""LoRA finetuning of the answer model on the solver's own prompts, loss on the answer letter only.

`finetune(data, out, cfg)` trains with transformers' `Trainer` (schedule, accumulation,
checkpoints every validation, resume, best adapter by validation accuracy) and peft, and
can be killed and started again: `out/trainer/` holds the Trainer's checkpoints, and
`out/run.json` names the run (data + config), so a finished run is returned at once and
another run's folder is never overwritten.

Cost on a CPU: with `layers: k`, LoRA sits in the top k layers only and the frozen layers
below run once per prompt (finetune.activations caches what enters layer n-k); every
epoch then runs k layers forward and backward. The loss needs the logits of one position
per prompt (its last, where the answer letter comes), so the output head runs there only.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backends.hardware import pick_dtype
from backends.models import merge_adapter, resolve_model
from core.cache import cache_path
from core.data import DataError
from core.journal import atomic_dir, atomic_write, sha256_file
from core.types import UserError
from finetune.activations import ActivationCache, decoder_layers, starting_at
from finetune.config import FinetuneConfig
from finetune.data import Example, build_examples, load_splits, retrieved_shots

StageProgress = Callable[[str, int, int], None]  # (stage, done, total): the caller draws it


def run_fingerprint(data_sha256: str, cfg: FinetuneConfig) -> str:
    """A run's identity: the data's content and every config field (not the file's name)."""
    return hashlib.sha256(f"{data_sha256} {cfg.model_dump_json()}".encode()).hexdigest()


def torch_dtype(name: str, device: str) -> torch.dtype:
    """`name`, or for auto the dtype the hardware computes natively (backends.hardware)."""
    return getattr(torch, pick_dtype(name, device))


def model_identity(path: str) -> str:
    """A model folder's name and its weight files' sizes and times (a hub id: the id): what
    the activation cache is keyed by, without hashing gigabytes; the name, not the path, so
    that a moved cache root keeps its activations (a dequantized folder's name carries its
    GGUF's hash)."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    name = Path(path).name if files else path
    return " ".join([name] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files])


def trained_layers(cfg: FinetuneConfig, n: int, device: str) -> tuple[int, int]:
    """(first trained layer, layer whose input is cached) for a model of n layers; a
    first layer of 0 is full LoRA with no cache. On a CUDA GPU `gpu_layers` applies."""
    k = cfg.gpu_layers if device == "cuda" else cfg.layers
    k = n if k is None else k
    if k > n:
        raise UserError(f"layers: {k}, but model '{cfg.model}' has {n} layers")
    start = n - k
    cache = start if cfg.cache_layer is None else cfg.cache_layer
    if cache > start:
        raise UserError(f"cache_layer: {cache} is above the first trained layer {start} (layers: {k} of {n})")
    return start, cache


def load_for_training(path: str, cfg: FinetuneConfig, device: str, dtype: torch.dtype):
    """(tokenizer, the base wrapped with a fresh LoRA adapter on the trained layers, first
    trained layer, cached layer); peft keeps the adapter in float32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    n = len(decoder_layers(base))
    start, cache = trained_layers(cfg, n, device)
    targets = cfg.target_modules
    if start and targets == "all-linear":  # peft takes a layer range with a list of names only
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in decoder_layers(base)[0].named_modules()
                          if isinstance(m, torch.nn.Linear)})
    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=targets, layers_to_transform=list(range(start, n)) if start else None)
    torch.manual_seed(cfg.seed)  # the adapter's initial weights
    return tokenizer, get_peft_model(base, lora), start, cache


def items(examples: list[Example]) -> list[dict]:
    """A dataset for the Trainer (its items are what `Collate` receives)."""
    return [{"example": e} for e in examples]


class Collate:
    """Items -> a padded batch: token ids, or the hidden states a cache holds for them."""

    def __init__(self, cache: ActivationCache | None = None):
        self.cache = cache

    def __call__(self, batch_items: list[dict]) -> dict:
        """Right-padded to the longest; pads are masked out of attention, so their value does not matter."""
        batch = [it["example"] for it in batch_items]
        width = max(len(e.prompt) for e in batch)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        letters = torch.full((len(batch), max(len(e.letters_ids) for e in batch)), -1)
        for i, e in enumerate(batch):
            mask[i, : len(e.prompt)] = 1
            letters[i, : len(e.letters_ids)] = torch.tensor(e.letters_ids)
        out = {"attention_mask": mask, "letters": letters,
               "last": torch.tensor([len(e.prompt) - 1 for e in batch]),
               "answer": torch.tensor([e.answer_index for e in batch])}
        if self.cache is None:
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for i, e in enumerate(batch):
                ids[i, : len(e.prompt)] = torch.tensor(e.prompt)
            return out | {"input_ids": ids}
        hidden = torch.zeros(len(batch), width, self.cache.hidden, dtype=self.cache.dtype)
        for i, e in enumerate(batch):
            hidden[i, : len(e.prompt)] = self.cache.get(e.prompt)
        return out | {"hidden": hidden, "enters": self.cache.layer}  # the layer these states are the input of


class LengthGrouped(torch.utils.data.Sampler):
    """One epoch's order, batches of similar length (little padding): a pure function of
    (seed, epoch), so that a resumed run replays it (transformers' LengthGroupedSampler
    draws from the global random state, which a resume does not restore before it)."""

    def __init__(self, lengths: list[int], group: int, seed: int):
        self.lengths, self.group, self.seed, self.epoch = lengths, group, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.group, generator=rng))


def answer_logits(model, batch: dict) -> torch.Tensor:
    """Float32 logits over the vocabulary at each prompt's last position. From `hidden`
    (what enters layer `enters`) the layers below are skipped; from `input_ids` all run.
    The decoder runs on every token, the output head at one position a prompt."""
    base = model.get_base_model()
    decoder = base.get_decoder()
    if "hidden" in batch:
        with starting_at(base, batch["enters"]):
            h = decoder(inputs_embeds=batch["hidden"], attention_mask=batch["attention_mask"], use_cache=False)
    else:
        h = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    last = h.last_hidden_state[torch.arange(len(batch["last"])), batch["last"]]
    logits = base.get_output_embeddings()(last).float()
    cap = getattr(base.config, "final_logit_softcapping", None)  # Gemma 2 squashes its logits
    return torch.tanh(logits / cap) * cap if cap else logits


def answer_loss(model, batch: dict, over: str = "vocab") -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of the answer letter's token; each option letter's logit, -inf past the
    options). `vocab`: over the whole vocabulary, the causal-LM loss on that one label;
    `letters`: over the question's option letters only, the choice the solver makes (it
    renormalises over them), so no gradient goes to moving mass onto letter tokens."""
    logits = answer_logits(model, batch)
    letters = batch["letters"]
    by_letter = logits.gather(1, letters.clamp(min=0)).masked_fill(letters < 0, float("-inf"))
    if over == "letters":
        return F.cross_entropy(by_letter, batch["answer"]), by_letter
    target = letters.gather(1, batch["answer"][:, None])[:, 0]
    return F.cross_entropy(logits, target), by_letter


def _trainer(model, train: list[Example], val: list[Example], collate: Collate, cfg: FinetuneConfig, out: Path,
             device: str, dtype: torch.dtype, progress: StageProgress | None):
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    sampler = LengthGrouped([len(e.prompt) for e in train], cfg.batch_size * cfg.grad_accum, cfg.seed)

    class AnswerTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, by_letter = answer_loss(model, inputs, cfg.loss)
            return (loss, {"logits": by_letter}) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            return sampler

    class Report(TrainerCallback):  # the library reports; the caller draws
        def on_epoch_begin(self, args, state, control, **kw):
            sampler.epoch = math.floor(state.epoch + 1e-6)  # a resumed run mid-epoch: that epoch's order

        def on_step_end(self, args, state, control, **kw):
            if progress:
                progress("train", state.global_step, state.max_steps)

    def accuracy(p) -> dict:
        return {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(out / "trainer"), seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=2 * cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=cfg.warmup,
        eval_strategy="steps", eval_steps=cfg.eval_every, save_strategy="steps", save_steps=cfg.eval_every,
        save_total_limit=2,  # the last checkpoint (to resume) and the best (kept by load_best_model_at_end)
        load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
        logging_steps=cfg.eval_every, report_to=[], disable_tqdm=True, log_level="error",
        label_names=["answer"], remove_unused_columns=False,
        use_cpu=device == "cpu", fp16=dtype == torch.float16, dataloader_num_workers=0,
    )
    trainer = AnswerTrainer(model=model, args=args, train_dataset=items(train), eval_dataset=items(val),
                            data_collator=collate, compute_metrics=accuracy, callbacks=[Report()])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the summary has the history
    return trainer


def _prior_run(out: Path, fp: str) -> dict | None:
    """What `out/run.json` says of this very run (finished, or started), None for a new one;
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
    return prior


def _history(log: list[dict], base: dict) -> list[dict]:
    """Step 0 (the base model), then each validation with the training loss logged at its step."""
    losses = {e["step"]: e["loss"] for e in log if "loss" in e}
    return [base] + [{"step": e["step"], "train_loss": losses.get(e["step"]), "val_accuracy": e["eval_accuracy"],
                      "val_loss": e["eval_loss"]} for e in log if "eval_accuracy" in e]


def large_blocks_from_mmap(threshold: int = 1 << 20) -> bool:
    """Serve blocks of `threshold` bytes and more from mmap, returned to the OS when freed.
    glibc raises its mmap threshold each time such a block is freed, after which training
    steps' tensors of varying shapes come from the heap and fragment it: over 2,391
    questions the heap grew ~0.35 GB a minute (4.5 GB after 10 minutes) and a run's RSS
    would have outgrown 24 GB. A threshold set by mallopt is fixed. False: not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def finetune(data: str | Path, out: str | Path, cfg: FinetuneConfig, progress: StageProgress | None = None) -> dict:
    """Train a LoRA adapter on `data`'s labelled questions into `out`; the run summary.

    Writes out/adapter (the best by validation accuracy; the base model at step 0 is a
    reference, not a candidate), out/merged (if cfg.merge), out/trainer (checkpoints,
    the resume point) and out/run.json (the summary). `progress(stage, done, total)` is
    called as the activation cache fills ("cache") and as training steps ("train").
    """
    from transformers.trainer_utils import get_last_checkpoint

    data, out = Path(data), Path(out)
    path = resolve_model(cfg.model)
    train_q, val_q = load_splits(data, cfg)
    data_sha = sha256_file(data)
    fp = run_fingerprint(data_sha, cfg)
    prior = _prior_run(out, fp)
    if prior and prior.get("finished"):
        return prior

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        large_blocks_from_mmap()
    dtype = torch_dtype(cfg.dtype, device)
    tokenizer, model, start, cache_layer = load_for_training(path, cfg, device, dtype)
    out.mkdir(parents=True, exist_ok=True)
    if not prior:
        atomic_write(out / "run.json", json.dumps({"fingerprint": fp, "finished": False}) + "\n")
    n_layers = len(decoder_layers(model.get_base_model()))
    shots = retrieved_shots(data, train_q + val_q, cfg) if cfg.retrieval else None
    train, train_too_long = build_examples(train_q, tokenizer, cfg.max_len, shots)
    val, val_too_long = build_examples(val_q, tokenizer, cfg.max_len, shots)
    if not train or not val:
        which = "training" if not train else "validation"
        raise DataError(f"{data}: every {which} question overflows max_len {cfg.max_len}, even with its text cut")

    cache, cached = None, {"prompts": 0, "tokens": 0, "seconds": 0.0}
    if cache_layer:
        hidden = model.get_base_model().config.hidden_size
        cache = ActivationCache(cache_path("activations"), model_identity(path), cache_layer, dtype, hidden)
        t0 = time.perf_counter()
        with model.disable_adapter():  # what enters the cached layer does not depend on the adapter
            todo = cache.fill(model.get_base_model(), [e.prompt for e in train + val],
                              lambda done, total: progress and progress("cache", done, total))
        cached = {"prompts": len(todo), "tokens": sum(len((train + val)[i].prompt) for i in todo),
                  "seconds": round(time.perf_counter() - t0, 3)}
    trainer = _trainer(model, train, val, Collate(cache), cfg, out, device, dtype, progress)
    base_file = out / "base.json"  # the base model's validation, once
    if not base_file.is_file():
        m = trainer.evaluate()
        atomic_write(base_file, json.dumps({"step": 0, "train_loss": None, "val_accuracy": m["eval_accuracy"],
                                            "val_loss": m["eval_loss"]}) + "\n")
    base = json.loads(base_file.read_text())
    checkpoint = get_last_checkpoint(str(out / "trainer")) if (out / "trainer").is_dir() else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    atomic_dir(out / "adapter", trainer.model.save_pretrained)  # the best checkpoint's adapter
    state = trainer.state
    history = _history(state.log_history, base)
    best = next((h for h in history[1:] if h["step"] == int(Path(state.best_model_checkpoint).name.split("-")[-1])),
                history[-1])
    del model, trainer  # the merge loads a fresh base
    if cfg.merge:
        merge_adapter(path, out / "adapter", out / "merged")
    tokens = sum(len(e.prompt) for e in train)
    summary = {
        "fingerprint": fp, "finished": True, "base_model": cfg.model, "model_path": path,
        "data": str(data), "data_sha256": data_sha, "config": cfg.model_dump(), "device": device,
        "dtype": str(dtype).removeprefix("torch."), "layers_trained": n_layers - start, "layers": n_layers,
        "cache_layer": cache_layer or None, "n_train": len(train), "n_val": len(val),
        "dropped_too_long": {"train": train_too_long, "val": val_too_long}, "steps": state.max_steps,
        "cache_filled": cached, "train_seconds": round(result.metrics["train_runtime"], 3),
        "resumed": checkpoint is not None,
        "train_tokens_per_s": None if checkpoint else round(tokens * cfg.epochs / result.metrics["train_runtime"], 1),
        "base_val_accuracy": base["val_accuracy"], "base_val_loss": base["val_loss"],
        "best_step": best["step"], "best_val_accuracy": best["val_accuracy"], "best_val_loss": best["val_loss"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "history": history, "adapter": str(out / "adapter"), "merged": str(out / "merged") if cfg.merge else None,
    }
    atomic_write(out / "run.json", json.dumps(summary, indent=2) + "\n")
    return summary
