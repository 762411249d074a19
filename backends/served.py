"""Where `solver serve` records the servers it runs, one JSON file per backbone label under
the cache root's serve/, so that `solver run` and `solver eval` with the same config find
them (backends/backbone.py) without importing the server code."""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.cache import cache_path
from core.journal import atomic_write


def registry_dir() -> Path:
    return cache_path("serve")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def register(label: str, url: str, pid: int, model: str) -> None:
    registry_dir().mkdir(parents=True, exist_ok=True)
    atomic_write(registry_dir() / f"{label}.json",
                 json.dumps({"label": label, "base_url": url, "pid": pid, "model": model}))


def unregister(label: str) -> None:
    (registry_dir() / f"{label}.json").unlink(missing_ok=True)


def served(label: str) -> dict | None:
    """The live server `solver serve` runs for a backbone, or None."""
    path = registry_dir() / f"{label}.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    return entry if _alive(entry["pid"]) else None
