"""What the tests share besides fixtures: the session's environment and cache root (set
once, on first import), the sample, the engine settings, a scripted backbone, and running
the CLI in its own process. Test modules import from here, never from conftest (which
pytest imports itself: a second import as `tests.conftest` would make a second cache)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

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


# Two batch-invariant servers of the embedded model, as `solver serve` starts them for a vote
# of two labels; each also answers to the model's own name, so together they are replicas.
PAIR = {"backbones": [SMALL | {"backend": "server", "served_name": n, "batch_invariant": True, "kv_cache_gb": 0.5}
                      for n in ("alpha", "beta")],
        "answer": {"orders": 2, "batch_size": 2}, "graph": {"enabled": True}, "vote": {"rule": "weighted"}}


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
