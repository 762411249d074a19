"""Shared fixtures: the real vLLM engine and a real vLLM server, each started once (what
the tests share besides fixtures is tests/helpers.py).

The benchmark data (train.csv with answers, test.csv, the sample submission) is read from
the folder `CODEMCQ_BENCH_DATA` names (`make test` sets it); tests that need it skip
without it. The session has a cache root of its own (core/cache.py) that borrows the
user's models/, so nothing a test indexes, runs or logs mixes with the user's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cache import root
from tests.helpers import PAIR, SHARED, SMALL, own_cache


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "train.csv").is_file():
        pytest.skip("no benchmark data: CODEMCQ_BENCH_DATA names no folder with train.csv (make test sets it)")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from backends.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def engine_solver():
    from core.config import SolverConfig
    from solver.api import Solver

    solver = Solver(SolverConfig.model_validate({"backbone": SMALL}))
    yield solver
    solver.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The one pair of loopback servers of the session, started once for the server, replica
    and vote tests (`solver serve` of PAIR, in the session's cache): yields (serve's process,
    PAIR's file, the registry). The vote test kills them, so it runs after every other user
    (pytest_collection_modifyitems)."""
    from backends.server import stop_server

    cfg = tmp_path_factory.mktemp("pair") / "pair.yaml"
    cfg.write_text(json.dumps(PAIR))
    proc = subprocess.Popen([sys.executable, "-m", "solver.cli", "serve", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reg = [root() / "serve" / f"{n}.json" for n in ("alpha", "beta")]  # the session's cache (tests/helpers.py)
    while not all(r.exists() for r in reg):  # serve gives up on a server by itself (its start timeout)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.5)
    yield proc, cfg, {n: json.loads(r.read_text()) for n, r in zip(("alpha", "beta"), reg)}
    if proc.poll() is None:
        stop_server(proc)


@pytest.fixture(scope="session")
def server(served) -> str:
    """A real batch-invariant vLLM server on 127.0.0.1 serving the embedded model: its base_url."""
    return served[2]["alpha"]["base_url"]


def pytest_collection_modifyitems(items):
    """The tests of the session's pair of servers run last, so the pair holds its memory only
    then, and the one that kills them (marked `kills_served`) after the others."""
    items.sort(key=lambda item: ("served" in getattr(item, "fixturenames", ()),
                                 item.get_closest_marker("kills_served") is not None))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own cache root (models shared), in this process and the ones it starts."""
    folder = own_cache(tmp_path / "cache")
    monkeypatch.setenv("CODEMCQ_CACHE", str(folder))
    return folder


