"""One backbone served by several vLLM replicas: each question's prompts go to one replica,
chosen by its task_id, and the letters are those of one server."""

import pytest

from backends.backbone import BackboneError, ServerBackbone, replica_of, run_dtype
from backends.server import free_port
from core.config import BackboneConfig, ConfigError, SolverConfig, load_config
from core.data import load_questions
from solver.api import Solver
from tests.helpers import PROB_TOL, SAMPLE, SMALL


def test_replica_of_is_stable_and_spreads():
    keys = [f"t{i:03d}" for i in range(100)]
    where = [replica_of(k, 2) for k in keys]
    assert where == [replica_of(k, 2) for k in keys]  # a function of the key alone
    assert 30 <= where.count(0) <= 70
    assert {replica_of(k, 1) for k in keys} == {0}
    assert {replica_of(k, 3) for k in keys} == {0, 1, 2}


def test_base_url_takes_a_list_of_replicas(tmp_path):
    assert BackboneConfig(backend="server", base_url="http://a/v1").base_url == "http://a/v1"
    assert BackboneConfig(backend="server", base_url=["http://a/v1", "http://b/v1"]).base_url == ["http://a/v1", "http://b/v1"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: {backend: server, base_url: []}\n")
    with pytest.raises(ConfigError, match="field 'backbone': .*base_url: an empty list names no server"):
        load_config(bad)


def test_each_question_goes_to_one_replica_and_replies_keep_their_order(monkeypatch):
    """The routing and regrouping alone (no server): a fake replica echoes what it got."""
    urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    bb = ServerBackbone(BackboneConfig(backend="server", base_url=urls))
    got_by = {}

    async def replica(url, prompts, options):
        got_by.setdefault(url, []).extend(prompts)
        return [{"url": url, "prompt": p} for p in prompts]

    monkeypatch.setattr(bb, "_replica", replica)
    keys = [f"q{i % 10}" for i in range(30)]  # 10 questions, 3 prompts each, interleaved
    prompts = [f"prompt {i}" for i in range(30)]
    replies = bb.choose(prompts, [["A", "B"]] * 30, keys)
    assert [r["prompt"] for r in replies] == prompts
    for key in set(keys):
        assert {r["url"] for r, k in zip(replies, keys) if k == key} == {urls[replica_of(key, 2)]}
    assert set(got_by) == set(urls) and bb.sent == [len(got_by[u]) for u in urls]
    bb.choose(["alone"], [["A", "B"]])  # no keys: routed by the prompt
    assert bb.sent[replica_of("alone", 2)] == len(got_by[urls[replica_of("alone", 2)]])


def test_a_dead_replica_is_named():
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    bb = ServerBackbone(BackboneConfig(backend="server", base_url=urls, served_name="ghost", timeout_s=5))
    key = next(k for k in (f"k{i}" for i in range(100)) if replica_of(k, 2) == 1)
    with pytest.raises(BackboneError, match=f"backbone 'ghost' at {urls[1]}"):
        bb.choose(["hello"], [["A", "B"]], [key])


@pytest.fixture(scope="session")
def replica(served) -> str:
    """The pair's second server: the same model, dtype and flags as `server`, a replica of it."""
    return served[2]["beta"]["base_url"]


@pytest.mark.slow
def test_two_replicas_answer_like_one_server(server, replica, monkeypatch):
    """The graph (two option orders: two prompts per question) through two
    batch-invariant replicas gives one server's letters; every prompt of a question went to
    the replica its task_id names, and both replicas served."""
    def solver(base_url):
        return Solver(SolverConfig.model_validate({
            "backbone": SMALL | {"backend": "server", "base_url": base_url, "batch_invariant": True},
            "answer": {"orders": 2}, "graph": {"enabled": True}}))

    qs = load_questions(SAMPLE).questions[:4]  # both replicas get some (replica_of)
    one, two = solver(server), solver([server, replica])
    bb, key_of, url_of = two.backbone, {}, {}
    achoose, send = bb.achoose, bb._replica

    async def recorded_achoose(prompts, options, keys=None):
        key_of.update(zip(prompts, keys))
        return await achoose(prompts, options, keys)

    async def recorded_replica(url, prompts, options):
        url_of.update(dict.fromkeys(prompts, url))
        return await send(url, prompts, options)

    monkeypatch.setattr(bb, "achoose", recorded_achoose)
    monkeypatch.setattr(bb, "_replica", recorded_replica)
    alone, replicated = one.solve_batch(qs), two.solve_batch(qs)
    tol = PROB_TOL[run_dtype(BackboneConfig(**SMALL))]  # the dtype both servers chose
    for a, r, q in zip(alone, replicated, qs):
        assert r.letter == a.letter and r.letter in q.letters, q.task_id
        assert r.probabilities == pytest.approx(a.probabilities, abs=tol), q.task_id
    assert set(key_of) == set(url_of) and set(key_of.values()) == {q.task_id for q in qs}
    for q in qs:
        assert {url_of[p] for p, k in key_of.items() if k == q.task_id} == {[server, replica][replica_of(q.task_id, 2)]}
    calls = [next(t for t in p.trace if t["step"] == "cost")["calls"] for p in replicated]
    assert bb.sent == [sum(c for c, q in zip(calls, qs) if replica_of(q.task_id, 2) == r) for r in (0, 1)]
    assert min(bb.sent) > 0
