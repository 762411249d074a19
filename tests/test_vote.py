"""Voting across two real vLLM servers on loopback, started by `solver serve`: one killed
mid-run is dropped and the run goes on; with both dead the run stops and, served again,
resumes."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from solver.api import Solver
from solver.config import load_config
from solver.data import load_questions
from tests.conftest import SAMPLE, SMALL, answers_in, faulty, questions_file, run_cmd

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process

VOTE = {"backbones": [SMALL | {"kind": "server", "served_name": n} for n in ("alpha", "beta")],
        "answer": {"orders": 2, "batch_size": 4}, "graph": {"enabled": True}, "vote": {"rule": "weighted"}}


def _serve(cfg, env):
    """`solver serve` in the background; returns it once both servers are registered."""
    proc = subprocess.Popen([sys.executable, "-m", "solver.cli", "serve", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reg = [os.path.join(env["CODEMCQ_CACHE"], "serve", f"{n}.json") for n in ("alpha", "beta")]
    deadline = time.monotonic() + 600
    while not all(os.path.exists(r) for r in reg):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.5)
    return proc, {n: json.load(open(r)) for n, r in zip(("alpha", "beta"), reg)}


def _paused(run):
    """Wait until the run stops itself (SIGSTOP on a journal barrier)."""
    _, status = os.waitpid(run.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the run ended (status {status}) before its barrier"


def _stop(proc, on_its_own=False):
    """`solver serve`'s exit status and what it said: after it exits by itself (every server
    gone), or else after SIGTERM. A SIGTERM sent while it is already exiting kills it outright."""
    if on_its_own:
        try:
            return proc.wait(120), proc.stderr.read()
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60), proc.stderr.read()


@pytest.fixture
def env(cache):
    return dict(os.environ)


def test_vote_across_served_backbones_with_faults(tmp_path, env):
    cfg = tmp_path / "vote.yaml"
    cfg.write_text(json.dumps(VOTE))
    serve, reg = _serve(cfg, env)
    try:
        assert all(r["base_url"].startswith("http://127.0.0.1:") for r in reg.values())

        # 1. In-process API against the served backbones: one call per backbone for the batch.
        solver = Solver(load_config(cfg))
        qs = load_questions(SAMPLE).questions
        preds = solver.solve_batch(qs)
        for p, q in zip(preds, qs):
            assert p.letter in q.letters and math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-6)
            (vote,) = [t for t in p.trace if t["step"] == "vote"]
            assert sorted(vote["votes"]) == ["alpha@0", "alpha@1", "beta@0", "beta@1"] and not vote["failed"]
        assert solver.graph.batcher.calls == {"alpha": 1, "beta": 1, "vote": 1}

        # 2. beta dies mid-run: dropped for the questions it fails on, reported by name, the run
        # goes on; then alpha dies too: the run stops in one line, what was answered is journaled.
        data, out, trace = questions_file(tmp_path, 48), tmp_path / "sub.csv", tmp_path / "trace.jsonl"
        journal = out.with_name(out.name + ".journal.jsonl")
        run = subprocess.Popen(faulty(run_cmd(data, out, cfg), "5:SIGSTOP,8:SIGSTOP"), cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _paused(run)  # 20 answers journaled
        os.killpg(reg["beta"]["pid"], signal.SIGKILL)  # the server and its engine process
        run.send_signal(signal.SIGCONT)
        _paused(run)  # 32
        os.killpg(reg["alpha"]["pid"], signal.SIGKILL)
        run.send_signal(signal.SIGCONT)
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
        assert "warning: backbone 'beta' failed" in stderr
        assert stderr.strip().splitlines()[-1].startswith("error: ") and "lost every backbone" in stderr
        answered = answers_in(journal)
        assert 32 <= answered < 48 and not out.exists()
    finally:
        status, said = _stop(serve, on_its_own=True)
    # serve reported each death by name, and exited 1 once nothing was left to serve
    assert status == 1 and "error: server 'beta' exited" in said and "error: server 'alpha' exited" in said
    assert not [f for f in os.listdir(os.path.join(env["CODEMCQ_CACHE"], "serve")) if f.endswith(".json")]

    # 3. Served again: the stopped run resumes from its journal and completes.
    serve, reg = _serve(cfg, env)
    try:
        done = subprocess.run(run_cmd(data, out, cfg) + ["--trace", str(trace)], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"resuming: {answered} answers" in done.stderr
        lines = out.read_text().splitlines()
        assert len(lines) == 49 and all(line.split(",")[1] in "ABCDEF" for line in lines[1:])
        votes = [next(t for t in json.loads(line)["trace"] if t["step"] == "vote") for line in trace.read_text().splitlines()]
        assert all(not v["failed"] and len(v["votes"]) == 4 for v in votes[:20] + votes[answered:])
        dropped = [v for v in votes[20:answered] if v["failed"]]
        assert dropped and all(v["failed"].keys() == {"beta@0", "beta@1"} and sorted(v["votes"]) == ["alpha@0", "alpha@1"]
                               and "backbone 'beta'" in v["failed"]["beta@0"] for v in dropped)
    finally:
        status, _ = _stop(serve)
    assert status == 0
    for r in reg.values():  # SIGTERM stopped both servers, their engine processes too
        with pytest.raises(ProcessLookupError):
            os.killpg(r["pid"], 0)
