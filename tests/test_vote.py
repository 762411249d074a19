"""Voting across two real vLLM servers on loopback, started by `solver serve` (the session's
pair, tests/conftest.py: served): one killed mid-run is dropped and the run goes on; with the other
stopped too (SIGTERM to serve) the run stops in one line, and its journal keeps what it
answered with the dropped votes named (a stopped run resumes from its journal as any run
does: tests/test_graph.py)."""

import json
import math
import os
import signal
import subprocess

import pytest

from core.config import load_config
from core.data import load_questions
from solver.api import Solver
from tests.helpers import SAMPLE, answers_in, faulty, questions_file, run_cmd

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process


def _paused(run):
    """Wait until the run stops itself (SIGSTOP on a journal barrier)."""
    _, status = os.waitpid(run.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the run ended (status {status}) before its barrier"


def _stop(proc):
    """SIGTERM `solver serve`: its exit status and what it said."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60), proc.stderr.read()


@pytest.mark.kills_served
def test_vote_across_served_backbones_with_faults(tmp_path, served):
    serve, cfg, reg = served
    env = dict(os.environ)  # the session's cache, where serve registered the pair
    try:
        assert all(r["base_url"].startswith("http://127.0.0.1:") for r in reg.values())

        # 1. In-process API against the served backbones: one call per backbone for the batch.
        solver = Solver(load_config(cfg))
        qs = load_questions(SAMPLE).questions[:4]
        preds = solver.solve_batch(qs)
        for p, q in zip(preds, qs):
            assert p.letter in q.letters and math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-6)
            (vote,) = [t for t in p.trace if t["step"] == "vote"]
            assert sorted(vote["votes"]) == ["alpha@0", "alpha@1", "beta@0", "beta@1"] and not vote["failed"]
        assert solver.graph.batcher.calls == {"alpha": 1, "beta": 1, "vote": 1}

        # 2. beta dies mid-run: dropped for the questions it fails on, reported by name, the run
        # goes on; then serve is stopped, alpha with it: the run stops in one line, what was
        # answered is journaled.
        data, out = questions_file(tmp_path, 12), tmp_path / "sub.csv"
        journal = out.with_name(out.name + ".journal.jsonl")
        run = subprocess.Popen(faulty(run_cmd(data, out, cfg), "2:SIGSTOP,4:SIGSTOP"), cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _paused(run)  # 4 answers journaled (batches of 2)
        os.killpg(reg["beta"]["pid"], signal.SIGKILL)  # the server and its engine process
        run.send_signal(signal.SIGCONT)
        _paused(run)  # 8
        said = next(line for line in serve.stderr if "error: server 'beta' exited" in line)  # serve saw it die
        status, rest = _stop(serve)  # SIGTERM: serve stops alpha, and exits
        said += rest
        run.send_signal(signal.SIGCONT)
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
        assert "warning: backbone 'beta' failed" in stderr
        assert stderr.strip().splitlines()[-1].startswith("error: ") and "lost every backbone" in stderr
        answered = answers_in(journal)
        assert 8 <= answered < 12 and not out.exists()
    finally:
        if serve.poll() is None:
            status, said = _stop(serve)
    # serve reported beta's death by name and, on SIGTERM, stopped alpha, its engine process too
    assert status == 0 and "error: server 'beta' exited" in said, said
    assert not [f for f in os.listdir(os.path.join(env["CODEMCQ_CACHE"], "serve")) if f.endswith(".json")]
    with pytest.raises(ProcessLookupError):
        os.killpg(reg["alpha"]["pid"], 0)

    # 3. The journal: every vote before beta died, beta's dropped after (named), for a resumed run to keep.
    votes = [next(t for t in json.loads(line)["trace"] if t["step"] == "vote")
             for line in journal.read_text().splitlines()[1:]]
    assert all(not v["failed"] and len(v["votes"]) == 4 for v in votes[:4])
    dropped = [v for v in votes[4:] if v["failed"]]
    assert dropped and all(v["failed"].keys() == {"beta@0", "beta@1"} and sorted(v["votes"]) == ["alpha@0", "alpha@1"]
                           and "backbone 'beta'" in v["failed"]["beta@0"] for v in dropped)
