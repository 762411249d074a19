"""Name a model any way a user would: a registered name (backends/registry.py), a hub id, a
local folder, a GGUF file.

vLLM on CPU cannot load GGUF, so a GGUF is dequantized once with transformers into a
cached HF folder (keyed by the file's hash) that every later start reuses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from backends import registry
from backends.registry import ModelError
from core.cache import cache_path
from core.journal import atomic_dir, sha256_file

DEFAULT_MODEL = "smollm2-135m-instruct"
__all__ = ["DEFAULT_MODEL", "ModelError", "adapter_config", "locate_model", "merged_model", "resolve_adapter",
           "resolve_model"]


def cache_dir() -> Path:
    return cache_path("models")


def dequantize_gguf(gguf: Path) -> Path:
    """The cached HF folder (bf16 safetensors + tokenizer) made from a GGUF file."""
    out = cache_dir() / f"{gguf.stem}-{sha256_file(gguf)[:12]}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    model.config.quantization_config = None  # the saved folder is plain bf16

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_dir(out, write)  # a half-written folder is never mistaken for a model
    return out


def merge_adapter(base: str, adapter: str | Path, dest: Path) -> None:
    """The base with a peft adapter merged in, as a plain HF folder (safetensors +
    tokenizer) that vLLM and transformers load like any other; the base's dtype is kept."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)

    atomic_dir(dest, write)


def adapter_config(adapter: str | Path) -> dict:
    """A peft adapter folder's adapter_config.json, or one line saying it is not one."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise ModelError(f"lora '{adapter}': no adapter_config.json (a folder saved by peft)")
    return json.loads(config.read_text())


def merged_model(base: str, adapter: str) -> str:
    """The cached merge of `adapter` into the resolved `base`, made once: keyed by the base's
    path and the adapter's bytes, so a retrained adapter gets a new folder."""
    adapter_config(adapter)
    folder = Path(adapter)
    key = hashlib.sha256(" ".join([base] + [sha256_file(f) for f in sorted(folder.glob("adapter_*"))]).encode())
    out = cache_dir() / f"{Path(base).name}+{folder.resolve().name}-{key.hexdigest()[:12]}"
    if not (out / "config.json").is_file():
        merge_adapter(base, folder, out)
    return str(out)


def locate_model(spec: str) -> tuple[str, bool]:
    """(where `spec`'s weights are, whether that is a GGUF to dequantize first), or one line
    saying why they are not here; reads no weights, so a run checks every model first."""
    e = registry.entry(spec)
    if e is not None and e.role == "llm":
        path = registry.require(e.name)
        return str(path), path.suffix == ".gguf"
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"model '{spec}': no such GGUF file")
        return str(path.resolve()), True
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model '{spec}': folder has no config.json")
        return str(path.resolve()), False
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, False  # a hub id: loaded by vLLM/transformers as usual
    names = ", ".join(n for n, e in registry.MODELS.items() if e.role == "llm")
    raise ModelError(f"model '{spec}': not a registered name ({names}), a local folder, a .gguf file or a hub id")


def resolve_model(spec: str) -> str:
    """A path or hub id that vLLM and transformers can load."""
    where, gguf = locate_model(spec)
    return str(dequantize_gguf(Path(where))) if gguf else where


def resolve_adapter(spec: str) -> str:
    """A LoRA adapter folder: a registered adapter's name (shipped in the repo) or a path."""
    e = registry.entry(spec)
    if e is not None and e.role == "adapter":
        return str(registry.require(e.name))
    adapter_config(spec)
    return str(Path(spec).expanduser().resolve())
