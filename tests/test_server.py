"""The HTTP backbone against a real vLLM server on 127.0.0.1."""

import json
import math
import subprocess

import pytest

from backends.backbone import BackboneError, ServerBackbone
from backends.server import free_port
from core.config import BackboneConfig, SolverConfig
from core.data import load_questions
from solver.api import Solver
from tests.helpers import PROB_TOL, SAMPLE, SMALL, run_cmd

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process


def test_server_answers_like_the_engine(server, engine_solver, monkeypatch, tmp_path):
    """batch_invariant: the server answers each prompt as it answers it alone, and as an
    in-process engine with batch_invariant does (`solver run` in its own process): the same
    logits, whatever it batches with (the server takes a log-softmax over a choice grammar's
    tokens, the engine over the vocabulary, renormalised over the same tokens: equal to
    float32 rounding, 1e-7). An engine that batches is within its dtype's rounding of both."""
    monkeypatch.setenv("MY_KEY", "not-a-secret")  # the key is read from the named variable
    cfg = SolverConfig.model_validate({"backbone": SMALL | {"backend": "server", "base_url": server,
                                                            "api_key_env": "MY_KEY", "batch_invariant": True}})
    solver = Solver(cfg)
    assert solver.backbone.api_key == "not-a-secret"
    qs = load_questions(SAMPLE).questions[:6]
    served, local = solver.solve_batch(qs), engine_solver.solve_batch(qs)  # the server's batch: 6 requests at once
    alone = [solver.solve_batch([q])[0] for q in qs[:2]]
    config, trace = tmp_path / "invariant.yaml", tmp_path / "trace.jsonl"
    config.write_text(json.dumps({"backbone": SMALL | {"batch_invariant": True, "kv_cache_gb": 0.5}}))  # the server's
    r = subprocess.run(run_cmd(SAMPLE, tmp_path / "out.csv", config) + ["--limit", "6", "--trace", str(trace)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    head, *lines = trace.read_text().splitlines()
    assert json.loads(head)["run"]["questions"] == 6
    engine = [json.loads(line)["trace"][0]["probabilities"] for line in lines]
    tol = PROB_TOL[engine_solver.backbone.dtype]
    for s, e, local_e, q in zip(served, engine, local, qs):
        assert s.letter in q.letters and math.isclose(sum(s.probabilities.values()), 1.0, abs_tol=1e-6)
        assert s.probabilities == pytest.approx(e, abs=1e-6), q.task_id  # the same logits
        assert max(abs(s.probabilities[k] - local_e.probabilities[k]) for k in q.letters) <= tol, q.task_id
    assert [a.probabilities for a in alone] == [s.probabilities for s in served[:2]]


def test_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}/v1"
    bb = ServerBackbone(BackboneConfig(backend="server", base_url=url, served_name="ghost", timeout_s=5))
    with pytest.raises(BackboneError, match=f"backbone 'ghost' at {url}"):
        bb.choose(["hello"], [["A", "B"]])
