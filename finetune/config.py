"""The finetune config: one YAML, every field with a commented default (unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import Strict

Split = Literal["train", "dev", "test"]  # the fixed hash splits of solver.data.split_of


class FinetuneConfig(Strict):
    """A LoRA run on the solver's own answer prompts; part of the run's fingerprint."""

    model: str = "smollm2-135m-instruct"  # the base: anything solver.models.resolve_model takes
    # LoRA
    rank: int = Field(16, gt=0)
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"  # peft's name for every linear layer but the output head
    # Which layers learn. On a CPU, the top `layers` of the model only (null: all, full LoRA):
    # the layers below run once per prompt and their output is cached (finetune.activations).
    layers: int | None = Field(None, gt=0)
    gpu_layers: int | None = Field(None, gt=0)  # the same on a CUDA GPU (null: full LoRA, affordable there)
    cache_layer: int | None = Field(None, ge=0)  # cache the input of this layer instead of the first trained one
    # (lower: one cache serves several `layers`; the layers between run frozen each step)
    # the answer letter against the whole vocabulary or only the options' letters
    loss: Literal["vocab", "letters"] = "vocab"
    # Optimisation: AdamW on the adapter, linear warmup then linear decay to 0
    epochs: float = Field(1.0, gt=0)  # fractions allowed: 0.5 is half the batches of one epoch
    lr: float = 2e-4
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer step
    warmup: float = Field(0.05, ge=0, lt=1)  # share of the optimizer steps
    weight_decay: float = 0.0
    max_len: int = Field(1024, gt=8)  # prompts are fitted to it by answer_prompt (question text cut, options kept)
    seed: int = 0
    # Data: hash splits of the labelled file
    train_split: Split = "train"
    val_split: Split = "dev"
    val_n: int = Field(200, gt=0)  # the first N questions of val_split
    n_train: int | None = Field(None, gt=0)  # only the first N training questions (the data-size sweep)
    eval_every: int = Field(50, gt=0)  # optimizer steps between validations (and Trainer checkpoints)
    # Retrieval-augmented prompts: each question after its k nearest solved training questions
    retrieval: bool = False
    k: int = Field(3, ge=0)
    min_score: float = 0.5  # neighbours below this cosine are never examples
    # auto: solver.hardware (bf16 where native, fp16 on old GPUs, else fp32)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    merge: bool = True  # also write the base with the best adapter merged in (out/merged), for vLLM

    @model_validator(mode="after")
    def _apart(self):
        if self.train_split == self.val_split:
            raise ValueError(f"train_split and val_split are both '{self.val_split}': validation would see "
                             "training rows")
        return self
