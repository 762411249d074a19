"""Train the top layers only: the frozen lower layers run once per prompt, their output is kept.

LoRA on the top k of n layers needs, for every training prompt, the hidden states that
enter layer n-k; they never change while only the layers above learn. `ActivationCache`
computes them once (no grad, one prompt per forward, so a prompt's numbers never depend
on which prompts came with it or on a resume) and appends them to a file that is read
memory-mapped; each epoch then runs k layers forward and backward instead of n.

The cache is content-addressed: one folder per (model, layer, dtype), one entry per
prompt's token ids, so a data-size sweep or a second k shares what is already there and
a killed pass resumes with the prompts it had not reached. The hidden bytes are appended
first, the index line after; a kill between the two leaves bytes no line points to.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

_STORE = {torch.bfloat16: np.int16, torch.float16: np.int16, torch.float32: np.float32}


class _Skip(nn.Module):
    """A decoder layer that hands its input on: the layers below the cache."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Stop(Exception):
    pass


def decoder_layers(model) -> nn.ModuleList:
    return model.get_decoder().layers


@contextmanager
def starting_at(model, layer: int) -> Iterator[None]:
    """Within it, the decoder treats its `inputs_embeds` as the input of `layer`: the layers
    below pass it on unchanged, so indices, masks and rotary positions stay the model's own."""
    decoder = model.get_decoder()
    layers = decoder.layers
    decoder.layers = nn.ModuleList([_Skip() for _ in range(layer)] + list(layers[layer:]))
    try:
        yield
    finally:
        decoder.layers = layers


@torch.no_grad()
def hidden_before(model, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states entering `layer` for one prompt (1, T): the decoder stops there."""
    seen = {}

    def stop(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model.get_decoder()(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["h"][0]


def prompt_key(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:32]


class ActivationCache:
    """Hidden states entering one layer of one model, per prompt (keyed by its token ids)."""

    def __init__(self, root: str | Path, model_id: str, layer: int, dtype: torch.dtype, hidden: int):
        if dtype not in _STORE:
            raise ValueError(f"no activation store for {dtype}")
        name = hashlib.sha256(f"{model_id} {layer} {dtype} {hidden}".encode()).hexdigest()[:16]
        self.dir = Path(root) / name
        self.layer, self.dtype, self.hidden = layer, dtype, hidden
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"model": model_id, "layer": layer, "dtype": str(dtype).removeprefix("torch."), "hidden": hidden}
        (self.dir / "meta.json").write_text(json.dumps(meta) + "\n")
        self.entries: dict[str, tuple[int, int]] = {}  # key -> (offset in elements, tokens)
        self._map = None
        self._read_index()

    @property
    def _data(self) -> Path:
        return self.dir / "hidden.bin"

    def _read_index(self) -> None:
        try:
            lines = (self.dir / "index.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                key, offset, tokens = json.loads(line)
            except ValueError:  # a line torn by a kill: its prompt is computed again
                continue
            self.entries[key] = (offset, tokens)

    def missing(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Indices of the prompts with no stored states (each distinct prompt once)."""
        seen, todo = set(), []
        for i, ids in enumerate(prompts):
            key = prompt_key(ids)
            if key not in self.entries and key not in seen:
                seen.add(key)
                todo.append(i)
        return todo

    def fill(self, model, prompts: Sequence[Sequence[int]],
             progress: Callable[[int, int], None] | None = None) -> list[int]:
        """Compute and store every prompt not yet here; the indices computed. One writer at a time."""
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.entries.clear()
            self._read_index()  # another process may have added some
            todo = self.missing(prompts)
            device = next(model.parameters()).device
            with open(self._data, "ab") as data, open(self.dir / "index.jsonl", "a") as index:
                if index.tell() and not (self.dir / "index.jsonl").read_text().endswith("\n"):
                    index.write("\n")  # after a torn line
                for done, i in enumerate(todo, 1):
                    ids = torch.tensor([list(prompts[i])], device=device)
                    h = hidden_before(model, self.layer, ids).to("cpu", self.dtype).contiguous()
                    size, end = np.dtype(_STORE[self.dtype]).itemsize, data.seek(0, os.SEEK_END)
                    data.write(b"\0" * (-end % size))  # realign after bytes a kill left half-written
                    offset = (end + size - 1) // size
                    data.write(h.view(torch.int16 if h.element_size() == 2 else torch.float32).numpy().tobytes())
                    data.flush()
                    os.fsync(data.fileno())
                    key = prompt_key(prompts[i])
                    index.write(json.dumps([key, offset, int(h.shape[0])]) + "\n")
                    index.flush()
                    self.entries[key] = (offset, int(h.shape[0]))
                    if progress:
                        progress(done, len(todo))
            self._map = None
            return todo

    def get(self, ids: Sequence[int]) -> torch.Tensor:
        """(tokens, hidden) states entering the layer, in the cache's dtype."""
        if self._map is None:
            self._map = np.memmap(self._data, dtype=_STORE[self.dtype], mode="r")
        offset, tokens = self.entries[prompt_key(ids)]
        if len(ids) != tokens:
            raise KeyError("activation cache entry does not match its prompt's length")
        flat = torch.from_numpy(np.array(self._map[offset : offset + tokens * self.hidden]))
        return flat.view(self.dtype).view(tokens, self.hidden)
