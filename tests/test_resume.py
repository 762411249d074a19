"""A run killed mid-way (SIGKILL, then Ctrl-C) and run again ends with the same CSV.

The interruptions land on a journal barrier (CODEMCQ_SIGNAL_AFTER: the run signals
itself after its Nth journaled batch), so no test races the run with a timer."""

import json
import os
import signal
import subprocess
import sys

from tests.conftest import ROOT, SAMPLE


def _questions(tmp_path, n=30):
    """The first `n` questions of the sample (repeated under new ids past its 30)."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    rows = [r | {"task_id": f"{r['task_id']}-{i // len(rows)}"} for i, r in zip(range(n), rows * (n // len(rows) + 1))]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cmd(data, out, cfg):
    return [sys.executable, "-m", "solver.cli", "run", "-i", str(data), "-o", str(out), "-c", str(cfg), "-q"]


def _answers(journal):
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.exists() else 0


def _interrupt(cmd, journal, sig, batches, cwd=ROOT):
    """Run until `batches` more batches are journaled, then deliver `sig`; the answers journaled."""
    env = os.environ | {"CODEMCQ_SIGNAL_AFTER": f"{batches}:{sig.name}"}
    # A suite started in the background (`make test &`) ignores SIGINT, and so would the run
    # (Python installs its Ctrl-C handler only where SIGINT is not ignored): a terminal's default.
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    else:  # Ctrl-C: one line, no traceback
        assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error: interrupted: the answers so far")
    return _answers(journal)


def test_resume_after_kill_and_ctrl_c(tmp_path):
    data = _questions(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: {max_model_len: 2048, kv_cache_gb: 1}\nanswer: {batch_size: 8}\n")
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    subprocess.run(_cmd(data, whole, cfg), cwd=ROOT, check=True, capture_output=True)

    journal = part.with_name(part.name + ".journal.jsonl")
    killed_at = _interrupt(_cmd(data, part, cfg), journal, signal.SIGKILL, 1)
    assert killed_at == 8 and not part.exists()
    stopped_at = _interrupt(_cmd(data, part, cfg), journal, signal.SIGINT, 2)
    assert stopped_at == 24 and not part.exists()
    done = subprocess.run(_cmd(data, part, cfg), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming: {stopped_at} answers" in done.stderr
    assert part.read_text() == whole.read_text()
    assert len(part.read_text().splitlines()) == 31
