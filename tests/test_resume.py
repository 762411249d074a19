"""A run killed mid-way (SIGKILL, then Ctrl-C) and run again ends with the same CSV."""

import json
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, SAMPLE


def _questions(tmp_path, copies=10):
    """300 questions: the sample, repeated under new ids, so a run lasts long enough to kill."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r | {"task_id": f"{r['task_id']}-{i}"}) + "\n" for i in range(copies) for r in rows))
    return path


def _cmd(data, out, cfg):
    return [sys.executable, "-m", "solver.cli", "run", "-i", str(data), "-o", str(out), "-c", str(cfg), "-q"]


def _answers(journal):
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.exists() else 0


def _interrupt(cmd, journal, sig, after, cwd=ROOT):
    """Start a run and send `sig` once the journal holds more than `after` answers."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while _answers(journal) <= after:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(60)
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    if sig == signal.SIGINT:  # Ctrl-C: one line, no traceback
        err = proc.stderr.read().decode()
        assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: interrupted: the answers so far")
    return _answers(journal)


def test_resume_after_kill_and_ctrl_c(tmp_path):
    data = _questions(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: {max_model_len: 2048, kv_cache_gb: 1}\nanswer: {batch_size: 4}\n")
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    subprocess.run(_cmd(data, whole, cfg), cwd=ROOT, check=True, capture_output=True)

    journal = part.with_name(part.name + ".journal.jsonl")
    killed_at = _interrupt(_cmd(data, part, cfg), journal, signal.SIGKILL, 0)
    assert not part.exists() and 0 < killed_at < 300
    stopped_at = _interrupt(_cmd(data, part, cfg), journal, signal.SIGINT, killed_at)
    assert killed_at < stopped_at < 300 and not part.exists()
    done = subprocess.run(_cmd(data, part, cfg), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming: {stopped_at} answers" in done.stderr
    assert part.read_text() == whole.read_text()
    assert len(part.read_text().splitlines()) == 301
