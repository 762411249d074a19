"""Shared fixtures: the real vLLM engine and a real vLLM server, each started once.

The benchmark data (train.csv with answers, test.csv, the sample submission) is read from
the folder `CODEMCQ_BENCH_DATA` names (`make test` sets it); tests that need it skip
without it. The session has a cache root of its own (core/cache.py) that borrows the
user's models/, so nothing a test indexes, runs or logs mixes with the user's.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from backends.backbone import Backbone
from backends.hardware import library_defaults
from core.cache import root

library_defaults()
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "solver" / "samples" / "questions.jsonl"
SHARED = Path(os.environ.get("CODEMCQ_BENCH_DATA") or "/nonexistent")
USER_MODELS = root() / "models"


def own_cache(folder: Path) -> Path:
    """A cache root at `folder` that shares the user's models (weights and dequantized copies)."""
    USER_MODELS.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "models").exists():
        (folder / "models").symlink_to(USER_MODELS)
    return folder


_SESSION_CACHE = own_cache(Path(tempfile.mkdtemp(prefix="codemcq-tests-")))
atexit.register(shutil.rmtree, _SESSION_CACHE, True)
os.environ["CODEMCQ_CACHE"] = str(_SESSION_CACHE)

SMALL = dict(max_model_len=2048, kv_cache_gb=1)
# How far two computations of one probability may differ when they are not the same
# computation (a prompt in a batch against the same prompt alone; the engine against a
# server that batches its own way): a logit of magnitude ~20 rounded to a dtype's
# significand moves by 20 * 2^-bits per rounding; allowed: two roundings. bf16 keeps 8
# bits (0.08 a rounding; SmolLM2-135M measured up to 0.077 on 64 prompts), float16 11,
# float32 24 (allowed far more than two roundings: 1e-3).
PROB_TOL = {"bfloat16": 0.15, "float16": 0.02, "float32": 1e-3}


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


class Scripted(Backbone):
    """A stand-in for the engine that answers with fixed probabilities, for tests of the
    graph's own logic (routing, vote, debias, decide, resume, batching), never of vLLM: the
    real engine and server have their own tests. `script(prompt, options, key)` gives the
    probabilities over `options` (None: unreadable); every call's (prompt, options, key)
    requests are kept in `calls`. The tokenizer is the embedded model's (prompts are real)."""

    def __init__(self, label: str, script, tokenizer):
        from core.config import BackboneConfig

        super().__init__(BackboneConfig(served_name=label, max_model_len=2048))
        self._tokenizer, self.script, self.calls = tokenizer, script, []

    @property
    def tokenizer(self):
        return self._tokenizer

    def choose(self, prompts, options, keys=None):
        self.calls.append(list(zip(prompts, options, keys or prompts)))
        return [self.script(p, o, k) for p, o, k in zip(prompts, options, keys or prompts)]


def shown(prompt: str, text: str) -> str:
    """The letter under which `text` is shown among a prompt's options (`A. text`)."""
    return next(line.split(". ", 1)[0] for line in prompt.splitlines() if line.endswith(f". {text}")
                and len(line.split(". ", 1)[0]) == 1)


@pytest.fixture(scope="session")
def engine_solver():
    from core.config import SolverConfig
    from solver.api import Solver

    solver = Solver(SolverConfig.model_validate({"backbone": SMALL}))
    yield solver
    solver.close()


# Two batch-invariant servers of the embedded model, as `solver serve` starts them for a vote
# of two labels; each also answers to the model's own name, so together they are replicas.
PAIR = {"backbones": [SMALL | {"kind": "server", "served_name": n, "batch_invariant": True, "kv_cache_gb": 0.5}
                      for n in ("alpha", "beta")],
        "answer": {"orders": 2, "batch_size": 2}, "graph": {"enabled": True}, "vote": {"rule": "weighted"}}


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
    # the session's cache as the environment names it now (this module is imported twice, as
    # `conftest` and as `tests.conftest`, and the second import's folder is the one in use)
    reg = [root() / "serve" / f"{n}.json" for n in ("alpha", "beta")]
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


# ---- running the CLI in its own process (resume, graph, server and vote tests) ----

def questions_file(tmp_path, n=30):
    """The first `n` questions of the sample (repeated under new ids past its 30)."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    rows = [r | {"task_id": f"{r['task_id']}-{i // len(rows)}"} for i, r in zip(range(n), rows * (n // len(rows) + 1))]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cmd(data, out, cfg):
    return [sys.executable, "-m", "solver.cli", "run", "-i", str(data), "-o", str(out), "-c", str(cfg), "-q"]


def answers_in(journal):
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.exists() else 0


def faulty(cmd, plan: str) -> list[str]:
    """`run_cmd`'s command that signals itself after journaled batches (tests/faulty.py):
    plan "N:SIGNAME[,M:SIGNAME]"."""
    assert cmd[1:3] == ["-m", "solver.cli"]
    return [cmd[0], str(ROOT / "tests" / "faulty.py"), plan, *cmd[3:]]


def interrupt(cmd, journal, sig, batches, cwd=ROOT):
    """Run until `batches` more batches are journaled, then deliver `sig`; the answers journaled."""
    # A suite started in the background (`make test &`) ignores SIGINT, and so would the run
    # (Python installs its Ctrl-C handler only where SIGINT is not ignored): a terminal's default.
    proc = subprocess.run(faulty(cmd, f"{batches}:{sig.name}"), cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    else:  # Ctrl-C: one line, no traceback
        assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error: interrupted: the answers so far")
    return answers_in(journal)
