"""The retrieval index: real all-MiniLM-L6-v2, real faiss-cpu, on the shipped sample and the shared data."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.data import load_questions  # noqa: E402
from core.types import LETTERS, Question  # noqa: E402
from index.embed import embed_texts, embedding_text, get_model, normalise, normalise_option  # noqa: E402
from index.store import Index, IndexBuildError, IndexLoadError, ivf_nlist, make_index  # noqa: E402
from tests.helpers import SAMPLE  # noqa: E402

OWN = [  # made-up rows beside the 30 shipped ones
    Question(task_id="m1", question="Question: What does `print(2 + 2)` print in Python?",
             choices=["3", "4", "5", "22"], answer="B"),
    Question(task_id="m2a", question="Which keyword defines a function in Python?",
             choices=["def", "func", "lambda", "fn"], answer="A"),
    Question(task_id="m2b", question="Which keyword defines  a function in Python?",
             choices=["func", "def", "fn", "lambda"], answer="C"),
    Question(task_id="m3", question="Which HTTP status code means Not Found?",
             choices=["200", "301", "404", "500"], answer="C"),
    Question(task_id="m4", question="Which HTTP status code means Not Found?",
             choices=["404", "403", "410", "400"], answer="A"),
]


@pytest.fixture(scope="session")
def model():
    return get_model()


@pytest.fixture(scope="module")
def stored(model):
    return load_questions(SAMPLE, labelled=True).questions + OWN


@pytest.fixture(scope="module")
def vectors(model, stored):
    return embed_texts(model, [embedding_text(q) for q in stored])


@pytest.fixture(scope="module")
def ix(stored, vectors, model):
    return Index.from_vectors(stored, vectors, encoder=model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, stored):
    """An index folder made by `solver index build` on the sample plus our rows."""
    folder = tmp_path_factory.mktemp("ix")
    data = folder / "labelled.jsonl"
    data.write_text("".join(json.dumps(q.model_dump(include={"task_id", "question", "choices", "answer"})) + "\n"
                            for q in stored))
    r = _cli(["index", "build", "--data", str(data), "--out", str(folder / "idx"), "--quiet"])
    assert r.exit_code == 0, r.output
    return folder / "idx"


def _cli(args):
    from solver.cli import app

    return CliRunner().invoke(app, args)


def _q(task_id, question, choices):
    return Question(task_id=task_id, question=question, choices=choices)


# ---- text and vectors ------------------------------------------------------------------


def test_text_and_vectors(model, vectors):
    assert normalise("Question:  Which\n keyword?\t") == "which keyword?"
    assert normalise_option(" True \n") == "True"  # options keep their case
    a = embedding_text(OWN[1])
    assert a == embedding_text(OWN[1].model_copy(update={"choices": list(reversed(OWN[1].choices))}))
    assert "func" in a and "Question:" not in embedding_text(OWN[0])
    assert vectors.dtype == np.float32 and vectors.shape[1] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


# ---- exact duplicates ------------------------------------------------------------------


def test_duplicate_with_shuffled_options_gets_its_own_letter(ix):
    q = _q("new1", "What does `print(2 + 2)`\n  print in python?", ["22", "5", "4", "3"])
    [r] = ix.query([q], k=3)
    assert r.duplicate is not None and r.duplicate.task_id == "m1"
    assert r.duplicate.answer == "C" and q.choices[2] == "4"  # B there is "4", C here
    assert "m1" not in [n.task_id for n in r.neighbors]  # the same text is no neighbour


def test_option_listed_twice_is_no_hit(ix):
    q = _q("new2", "Which HTTP status code means Not Found?", ["404", "200", "404", "301", "500"])
    [r] = ix.query([q], k=0)
    assert r.duplicate is None and "same option text twice" in r.note


def test_stored_copies_that_disagree_are_no_hit(ix):
    q = _q("new3", "Question: Which keyword defines a function in Python?", ["lambda", "def", "fn", "func"])
    [r] = ix.query([q], k=0)
    assert r.duplicate is None and "disagree" in r.note and "m2a: B" in r.note and "m2b: C" in r.note


def test_same_text_other_options_is_no_hit(ix):
    q = _q("new4", "Which HTTP status code means Not Found?", ["404", "403", "410", "401"])
    [r] = ix.query([q], k=0)
    assert r.duplicate is None and r.note is None
    [r] = ix.query([_q("new5", "which HTTP status code means not found?", ["400", "410", "403", "404"])], k=0)
    assert r.duplicate.task_id == "m4" and r.duplicate.answer == "D"


def test_itself_is_never_its_own_duplicate_or_neighbour(ix, stored):
    results = ix.query(stored, k=5, min_score=-1.0)
    for q, r in zip(stored, results):
        assert r.duplicate is None or r.duplicate.task_id != q.task_id
        ids = [n.task_id for n in r.neighbors]
        assert q.task_id not in ids
        assert all(normalise(ix.get(t).question) != normalise(q.question) for t in ids)
        assert len(ids) == 5  # over-fetched: k survive the exclusion
    r = dict(zip([q.task_id for q in stored], results))
    assert "m2b" not in [n.task_id for n in r["m2a"].neighbors]  # same text, another id


def test_same_text_under_another_id(ix, stored):
    s01 = stored[0]
    copy = _q("zz", s01.question, list(reversed(s01.choices)))
    [r] = ix.query([copy], k=3, min_score=-1.0)
    assert r.duplicate.task_id == s01.task_id
    assert r.duplicate.answer == LETTERS[copy.choices.index(s01.choices[LETTERS.index(s01.answer)])]
    assert s01.task_id not in [n.task_id for n in r.neighbors]
    [r] = ix.query([copy], k=3, min_score=-1.0, exclude_same_text=False)
    assert r.neighbors[0].task_id == s01.task_id and r.neighbors[0].score > 0.99


def test_neighbours_sorted_above_min_score(ix, stored):
    for min_score in (0.3, 0.6):
        for r in ix.query(stored[:8], k=4, min_score=min_score):
            scores = [n.score for n in r.neighbors]
            assert scores == sorted(scores, reverse=True) and all(s >= min_score for s in scores) and len(scores) <= 4
    # the output prediction questions about Python find each other
    [r] = ix.query([stored[0]], k=1, min_score=0.0)
    assert r.neighbors and r.neighbors[0].score > 0.3


# ---- kinds -----------------------------------------------------------------------------


def test_ivf_and_hnsw_agree_with_flat(ix, stored, vectors, model):
    _, flat = ix.search(vectors, 2)  # each question's nearest other question is at rank 2
    for kind in ("ivf", "hnsw"):
        approx = Index.from_vectors(stored, vectors, index_type=kind, encoder=model)
        assert approx.manifest["index_type"] == kind
        _, got = approx.search(vectors, 2)
        assert (got[:, :2] == flat[:, :2]).all(), kind
        [r] = approx.query([stored[0]], k=1, min_score=-1.0)  # the same API on top
        assert r.neighbors[0].task_id == stored[flat[0, 1]].task_id
    # and on 4,000 clustered vectors, where IVF has many lists
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    x = centres[rng.integers(0, 40, 4000)] + 0.35 * rng.standard_normal((4000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[:200] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact, _ = make_index(x, "flat")
    _, truth = exact.search(queries, 1)
    for kind in ("ivf", "hnsw"):
        index, params = make_index(x, kind)
        if kind == "ivf":
            assert params["nlist"] == ivf_nlist(4000) > 50
            index.nprobe = 32
        else:
            index.hnsw.efSearch = 96
        _, got = index.search(queries, 1)
        assert (got[:, 0] == truth[:, 0]).mean() >= 0.97, kind


# ---- saving, loading, the command line -------------------------------------------------


def test_save_load_query_roundtrip(saved, ix, stored):
    m = json.loads((saved / "manifest.json").read_text())
    assert m["count"] == len(stored) and m["dimension"] == 384 and m["index_type"] == "flat"
    assert m["embedding_model"] == "all-MiniLM-L6-v2" and len(m["data_sha256"]) == 64 and m["faiss_version"]
    assert sorted(p.name for p in saved.iterdir()) == ["index.faiss", "manifest.json", "metadata.jsonl"]
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left
    loaded = Index.load(saved, model="sentence-transformers/all-MiniLM-L6-v2")
    assert loaded.get("m1") == OWN[0]
    a, b = loaded.query(stored[-12:], k=3), ix.query(stored[-12:], k=3)
    for x, y in zip(a, b):
        assert x.duplicate == y.duplicate and [n.task_id for n in x.neighbors] == [n.task_id for n in y.neighbors]
        assert np.allclose([n.score for n in x.neighbors], [n.score for n in y.neighbors], atol=1e-4)
    # saving again over an index replaces it; a folder that is not an index is refused
    loaded.save(saved)
    Index.load(saved)
    with pytest.raises(IndexBuildError, match="not an index"):
        ix.save(saved.parent)


def test_cli_query(saved, tmp_path):
    questions = tmp_path / "q.jsonl"
    q = {"task_id": "t1", "question": "What does `print(2 + 2)` print in Python?", "choices": ["4", "3", "22", "5"]}
    questions.write_text(json.dumps(q) + "\n" + SAMPLE.read_text().splitlines()[0] + "\n")
    r = _cli(["index", "query", "--index", str(saved), "--input", str(questions), "--k", "2", "--min-score", "0.2"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[0]["task_id"] == "t1" and lines[0]["duplicate"] == {"task_id": "m1", "answer": "A"}
    assert lines[1]["task_id"] == "s01" and lines[1]["duplicate"] is None and len(lines[1]["neighbors"]) == 2
    assert set(lines[1]["neighbors"][0]) == {"task_id", "score"}


def _one_line_error(r, message):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.output


def _query(folder, tmp_path, *extra):
    questions = tmp_path / "q.jsonl"
    questions.write_text(SAMPLE.read_text().splitlines()[0] + "\n")
    return _cli(["index", "query", "--index", str(folder), "--input", str(questions), *extra])


def test_bad_index_folders(saved, tmp_path):
    _one_line_error(_query(tmp_path / "nope", tmp_path), "no such index folder")

    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(saved, folder)
        change(folder)
        return folder

    def rehash(folder, name):
        m = json.loads((folder / "manifest.json").read_text())
        import hashlib

        m["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(m))

    f = broken("nomanifest", lambda d: (d / "manifest.json").unlink())
    _one_line_error(_query(f, tmp_path), "no manifest.json")
    f = broken("noindex", lambda d: (d / "index.faiss").unlink())
    _one_line_error(_query(f, tmp_path), "index.faiss is missing")
    f = broken("flipped", lambda d: (d / "index.faiss").write_bytes(b"\0" * 100))
    _one_line_error(_query(f, tmp_path), "corrupt")
    f = broken("garbage", lambda d: ((d / "index.faiss").write_bytes(b"IxFI" + b"\1" * 60), rehash(d, "index.faiss")))
    _one_line_error(_query(f, tmp_path), "not a readable FAISS index")
    f = broken("short", lambda d: ((d / "metadata.jsonl").write_text(
                                       "".join((d / "metadata.jsonl").read_text().splitlines(True)[:-1])),
                                   rehash(d, "metadata.jsonl")))
    _one_line_error(_query(f, tmp_path), "counts differ")
    f = broken("badjson", lambda d: (d / "manifest.json").write_text("{"))
    _one_line_error(_query(f, tmp_path), "not a valid index manifest")


def test_model_mismatch(saved, tmp_path):
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    _one_line_error(_query(saved, tmp_path, "--model", str(other)), "built with embedding model 'all-MiniLM-L6-v2'")
    with pytest.raises(IndexLoadError):
        Index.load(saved, model="intfloat/e5-small-v2")


def test_bad_build_inputs(tmp_path):
    data = tmp_path / "l.jsonl"
    data.write_text('{"task_id": "a", "question": "q", "choices": ["x", "y"], "answer": "ANSWER: Z"}\n'
                    '{"task_id": "b", "question": "q", "choices": [], "answer": ""}\n')
    r = _cli(["index", "build", "--data", str(data), "--out", str(tmp_path / "idx")])
    _one_line_error(r, "no usable labelled rows")
    assert not (tmp_path / "idx").exists()
    _one_line_error(_cli(["index", "build", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "idx")]),
                    "no such file")
    _one_line_error(_cli(["index", "build", "--data", str(SAMPLE), "--out", str(tmp_path / "idx"),
                          "--index-type", "lsh"]), "not one of")


# ---- the shared data: train.csv indexed, test.csv queried ------------------------------


@pytest.fixture(scope="module")
def train_ix(shared):
    """train.csv indexed, cut to what the tests below ask: every row whose question text is
    one of test.csv's or of train's first 40 (so each duplicate, and each copy that could
    disagree, is there), and the first 200 rows as other neighbours: 267 of 3,447 rows
    (all of them took 195 s to embed in float32 on an AVX2-only CPU)."""
    loaded = load_questions(shared / "train.csv", labelled=True)
    texts = {normalise(q.question) for q in load_questions(shared / "test.csv").questions + loaded.questions[:40]}
    keep = [q for i, q in enumerate(loaded.questions) if i < 200 or normalise(q.question) in texts]
    # dtype auto: bf16 where the CPU has it natively (~2x faster, cosine ~0.9999 to float32)
    return Index.build(keep, source=shared / "train.csv", skipped=dict(loaded.skipped))


@pytest.mark.slow  # embeds part of train.csv
def test_train_duplicates_answer_test(train_ix, shared):
    assert train_ix.manifest["skipped_rows"]  # the dirty rows are counted, not indexed
    test = load_questions(shared / "test.csv").questions
    results = train_ix.query(test, k=0)  # duplicates need no embedding
    hits = [(q, r) for q, r in zip(test, results) if r.duplicate]
    assert len(hits) >= 25, len(hits)
    for q, r in hits:
        stored = train_ix.get(r.duplicate.task_id)
        assert r.duplicate.answer in q.letters
        want = normalise_option(stored.choices[LETTERS.index(stored.answer)])
        assert normalise_option(q.choices[LETTERS.index(r.duplicate.answer)]) == want
        assert normalise(q.question) == normalise(stored.question)
    refused = [r for r in results if r.duplicate is None and r.note]
    assert all("disagree" in r.note or "twice" in r.note for r in refused)


@pytest.mark.slow
def test_train_queried_with_itself_never_leaks(train_ix, shared):
    train = load_questions(shared / "train.csv", labelled=True).questions[:40]
    for q, r in zip(train, train_ix.query(train, k=3, min_score=0.0)):
        assert r.duplicate is None or r.duplicate.task_id != q.task_id
        assert all(n.task_id != q.task_id and normalise(train_ix.get(n.task_id).question) != normalise(q.question)
                   for n in r.neighbors)
        assert len(r.neighbors) == 3
