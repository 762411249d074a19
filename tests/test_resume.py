"""A run killed mid-way (SIGKILL, then Ctrl-C) and run again ends with the same CSV.

The interruptions land on a journal barrier (tests/faulty.py: the run signals itself
after its Nth journaled batch), so no test races the run with a timer."""

import signal
import subprocess

import pytest

from tests.conftest import ROOT, interrupt, questions_file, run_cmd

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process


def test_resume_after_kill_and_ctrl_c(tmp_path):
    data = questions_file(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: {max_model_len: 2048, kv_cache_gb: 1}\nanswer: {batch_size: 8}\n")
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    subprocess.run(run_cmd(data, whole, cfg), cwd=ROOT, check=True, capture_output=True)

    journal = part.with_name(part.name + ".journal.jsonl")
    killed_at = interrupt(run_cmd(data, part, cfg), journal, signal.SIGKILL, 1)
    assert killed_at == 8 and not part.exists()
    stopped_at = interrupt(run_cmd(data, part, cfg), journal, signal.SIGINT, 2)
    assert stopped_at == 24 and not part.exists()
    done = subprocess.run(run_cmd(data, part, cfg), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming: {stopped_at} answers" in done.stderr
    assert part.read_text() == whole.read_text()
    assert len(part.read_text().splitlines()) == 31
