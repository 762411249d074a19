"""The one folder the solver keeps things in between runs, whatever the working folder.

`CODEMCQ_CACHE` names it; by default `codemcq` in the user's cache folder
(`$XDG_CACHE_HOME`, else `~/.cache`). Beneath it: models/ (weights, dequantized and merged
copies), index/, exec/ (sandbox outcomes), vote/ (calibrations), activations/ (finetune),
serve/ (servers `solver serve` started), eval/ (journals of runs without --json), logs/.
Read at every call, so a process or a test that sets the variable gets its own.
"""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    if os.environ.get("CODEMCQ_CACHE"):
        return Path(os.environ["CODEMCQ_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codemcq"


def cache_path(*parts: str) -> Path:
    """A folder or file under the cache root (not created)."""
    return root().joinpath(*parts)
