"""The HTTP backbone against a real vLLM server on 127.0.0.1."""

import math

import pytest

from solver.api import Solver
from solver.backbone import BackboneError, ServerBackbone
from solver.config import BackboneConfig, SolverConfig
from solver.data import load_questions
from solver.server import free_port
from tests.conftest import SAMPLE, SMALL


def test_server_answers_like_the_engine(server, engine_solver, monkeypatch):
    monkeypatch.setenv("MY_KEY", "not-a-secret")  # the key is read from the named variable
    cfg = SolverConfig.model_validate({"backbone": SMALL | {"kind": "server", "base_url": server, "api_key_env": "MY_KEY"}})
    solver = Solver(cfg)
    assert solver.backbone.api_key == "not-a-secret"
    qs = load_questions(SAMPLE).questions
    served, local = solver.solve_batch(qs), engine_solver.solve_batch(qs)
    for s, e, q in zip(served, local, qs):
        assert s.letter in q.letters and math.isclose(sum(s.probabilities.values()), 1.0, abs_tol=1e-6)
        for letter in q.letters:  # same model, same prompts: the same distribution
            assert abs(s.probabilities[letter] - e.probabilities[letter]) < 0.05, q.task_id


def test_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}/v1"
    bb = ServerBackbone(BackboneConfig(kind="server", base_url=url, served_name="ghost", timeout_s=5))
    with pytest.raises(BackboneError, match=f"backbone 'ghost' at {url}"):
        bb.choose(["hello"], [["A", "B"]])
