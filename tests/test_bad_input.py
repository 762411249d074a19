"""Every bad input: one line naming file, row and field; exit 2; the old output untouched."""

import json

import pytest
from typer.testing import CliRunner

from solver.cli import app

GOOD = "task_id,question,choices\nq1,Question: ok?,\"['a', 'b']\"\n"
CASES = {
    "wrong columns": ("task_id,question,options\nq1,x,\"['a','b']\"\n", "missing column(s) choices"),
    "choices do not parse": ("task_id,question,choices\nq1,x,\"['a', 'b'\"\n",
                             "row 1, field 'choices': does not parse"),
    "choices not strings": ("task_id,question,choices\nq1,x,\"['a', 2]\"\n",
                            "row 1, field 'choices': is not a list of strings"),
    "empty question": (GOOD + "q2,Question: ,\"['a', 'b']\"\n", "row 2, field 'question': empty"),
    "one option": (GOOD + "q2,x,\"['a']\"\n", "row 2, field 'choices': 1 option(s)"),
    "duplicate ids": (GOOD + "q1,y,\"['a', 'b']\"\n", "row 2, field 'task_id': duplicate 'q1' (first at row 1)"),
    "not utf-8": (GOOD.encode() + b"q2,caf\xe9,\"['a', 'b']\"\n", "line 3: bytes that are not UTF-8"),
}


def _run(args):
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_run(tmp_path, case):
    content, message = CASES[case]
    data = tmp_path / "q.csv"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "sub.csv"
    out.write_text("task_id,answer\nold,A\n")
    r = _run(["run", "--input", str(data), "--output", str(out)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data) in lines[0] and message in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert out.read_text() == "task_id,answer\nold,A\n"


def test_missing_file_and_bad_config(tmp_path):
    r = _run(["run", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv")])
    assert r.exit_code == 2 and "nope.csv: no such file" in r.stderr
    data = tmp_path / "q.csv"
    data.write_text(GOOD)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone:\n  modle: x\n")
    r = _run(["run", "--input", str(data), "--output", str(tmp_path / "o.csv"), "--config", str(cfg)])
    assert r.exit_code == 2 and "field 'backbone.modle'" in r.stderr
    cfg.write_text("backbone:\n  model: /no/such/model.gguf\n")
    r = _run(["run", "--input", str(data), "--output", str(tmp_path / "o.csv"), "--config", str(cfg)])
    assert r.exit_code == 2 and "no such GGUF file" in r.stderr.replace("\n", " ")
    assert not (tmp_path / "o.csv").exists()


def test_eval_with_no_usable_labels(tmp_path):
    data = tmp_path / "l.jsonl"
    data.write_text('{"task_id": "a", "question": "q", "choices": ["x", "y"], "answer": "ANSWER: Z"}\n')
    r = _run(["eval", "--data", str(data)])
    assert r.exit_code == 2 and "no usable labelled rows" in r.stderr


@pytest.mark.parametrize("retrieve,message", [
    ({"data": "nowhere/train.csv"}, "nowhere/train.csv: no such file (the solved questions to index: retrieve.data)"),
    ({"index": "nowhere/idx"}, "nowhere/idx: no such index folder"),
])
def test_graph_config_with_bad_retrieval_data(tmp_path, retrieve, message):
    """Refused with one line before any model is loaded; the old output untouched."""
    data = tmp_path / "q.csv"
    data.write_text(GOOD)
    cfg = tmp_path / "g.yaml"
    cfg.write_text(json.dumps({"graph": {"enabled": True}, "retrieve": {"enabled": True} | retrieve}))
    out = tmp_path / "sub.csv"
    out.write_text("task_id,answer\nold,A\n")
    r = _run(["run", "--input", str(data), "--output", str(out), "--config", str(cfg)])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [f"error: {message}"], r.stderr
    assert out.read_text() == "task_id,answer\nold,A\n"


def test_graph_command_with_bad_config(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("verify: {accept: high}\n")
    r = _run(["graph", "--config", str(cfg)])
    assert r.exit_code == 2 and "field 'verify.accept'" in r.stderr
    r = _run(["graph"])
    assert r.exit_code == 0 and "answer" in r.stdout and "verify" not in r.stdout  # defaults: no graph nodes on


@pytest.mark.parametrize("config,message", [
    ({"backbone": {}, "backbones": [{}]}, "give 'backbone' or 'backbones', not both"),
    ({"graph": {"enabled": True}, "backbones": [{}, {}]}, "backbones need distinct names"),
    ({"answer": {"orders": 2}}, "answer.orders > 1 vote, which needs graph.enabled"),
    ({"graph": {"enabled": True}, "answer": {"shots": 3}}, "answer.shots takes its examples from retrieve"),
    ({"graph": {"enabled": True}, "vote": {"rule": "loudest"}}, "field 'vote.rule'"),
    ({"graph": {"enabled": True}, "vote": {"rule": "weighted", "labelled": "nowhere.csv"}},
     "nowhere.csv: no such file (the labelled questions for vote.labelled)"),
    ({"graph": {"enabled": True}, "vote": {"rule": "pool", "labelled": "nowhere.csv"}},
     "nowhere.csv: no such file (the labelled questions for vote.labelled)"),
    ({"graph": {"enabled": True}, "vote": {"debias": {"source": "file", "data": "nowhere.csv"}}},
     "nowhere.csv: no such file (the questions for vote.debias.data)"),
    ({"graph": {"enabled": True}, "vote": {"debias": {"source": "file"}}}, "source: file needs data"),
    ({"graph": {"enabled": True}, "vote": {"debias": {"source": "run", "share": 2}}}, "field 'vote.debias.share'"),
    ({"graph": {"enabled": True}, "vote": {"rule": "pool", "weights": {"x": "heavy"}}}, "field 'vote.weights.x'"),
    ({"backbone": {"backend": "server", "served_name": "ghost"}},
     "backbone 'ghost': backend 'server' without base_url"),
    ({"backbone": {"batch_invariant": "sometimes"}}, "field 'backbone.batch_invariant'"),
    ({"graph": {"enabled": True}, "execute": {"enabled": True, "memory_mb": 0}}, "field 'execute.memory_mb'"),
    ({"graph": {"enabled": True}, "execute": {"enabled": True, "workers": 0}}, "field 'execute.workers'"),
])
def test_bad_vote_configs(tmp_path, config, message):
    """Refused in one line before any model loads; the old output untouched."""
    data = tmp_path / "q.csv"
    data.write_text(GOOD)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "sub.csv"
    out.write_text("task_id,answer\nold,A\n")
    r = _run(["run", "--input", str(data), "--output", str(out), "--config", str(cfg)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code in (1, 2) and len(lines) == 1 and message in lines[0] and "Traceback" not in r.output, r.output
    assert out.read_text() == "task_id,answer\nold,A\n"


def test_serve_with_nothing_to_serve(tmp_path):
    cfg = tmp_path / "v.yaml"
    cfg.write_text("backbone: {backend: engine}\n")
    r = _run(["serve", "--config", str(cfg)])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: {cfg}: no backbone has backend: server without a base_url, so there is nothing to serve"]
