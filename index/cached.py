"""The index a config names, built on first use from its data and cached under the cache root's index/."""

from __future__ import annotations

import hashlib
from pathlib import Path

from backends.hardware import pick_dtype
from core.cache import cache_path
from core.data import DataError, in_split, load_questions
from core.journal import sha256_file
from index.embed import DEFAULT_MODEL
from index.store import Index


def cached_index(data: str, split: str | None = None, model: str = DEFAULT_MODEL) -> Index:
    """Index the labelled questions of `data` (only the hash split `split`, if given):
    evaluating on another split of the same file then never sees its own rows.

    The encoder runs in bf16 where the hardware has it natively (2.5x faster on such a CPU,
    cosine to fp32 >= 0.9999, eval/bench_index.py), else in float32."""
    dtype = pick_dtype()
    if not Path(data).is_file():
        raise DataError(f"{data}: no such file (the solved questions to index: retrieve.data)")
    key = hashlib.sha256(f"{sha256_file(data)} {split} {model} {dtype}".encode()).hexdigest()[:16]
    folder = cache_path("index") / f"{Path(data).stem}-{split or 'all'}-{key}"
    if (folder / "manifest.json").is_file():
        return Index.load(folder)
    loaded = load_questions(data, labelled=True)
    questions = in_split(loaded.questions, split)
    ix = Index.build(questions, model, source=data, skipped=dict(loaded.skipped), dtype=dtype)
    ix.save(folder)
    return ix
