"""The fitted decision on real labelled questions (train.csv's split train), without an LLM:
the votes are fixed numbers, the rest of the evidence (kind, text, priors, shape, runs) is
computed from the questions as the graph computes it. What is tested: no label of a
question reaches its own row; the fit learns what the labelled data decides; the same fit
twice is the same artifact; a bad or mismatched artifact is one line."""

import json

import numpy as np
import pytest

from core.config import SolverConfig, load_config
from core.data import in_split, load_questions
from execution.recognise import kind_of
from graphs.features import Evidence, matrix
from graphs.priors import out_of_fold
from graphs.ranker import FitError, Fitted, Table, feature_names, gate_thresholds
from tests.helpers import ROOT

N = 400  # questions of split train: a fit in about a second, folds of 80


@pytest.fixture(scope="module")
def train(shared):
    return in_split(load_questions(shared / "train.csv", labelled=True).questions, "train")[::5][:N]  # every kind


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "configs" / "graph.yaml")


def evidence(questions, cfg, priors):
    """Uniform votes for every voter: the model says nothing, so what is learnt is the rest."""
    voters = [name.removeprefix("logp@") for name in feature_names(cfg) if name.startswith("logp@")]
    return [Evidence(q, kind_of(q), priors=priors(q), votes={v: dict.fromkeys(q.letters, 1 / len(q.letters))
                                                            for v in voters},
                     pooled=dict.fromkeys(q.letters, 1 / len(q.letters))) for q in questions]


def test_no_label_reaches_its_own_row(train, cfg):
    """Flip one question's label: its own features stay as they were; another question's
    priors may move (that label is evidence for them)."""
    names = feature_names(cfg)
    before = out_of_fold(train, 5, 1, kind_of=kind_of)
    q = next(x for x in train if kind_of(x) == "behaviour")
    wrong = next(L for L in q.letters if L != q.answer)
    flipped = [x.model_copy(update={"answer": wrong}) if x.task_id == q.task_id else x for x in train]
    after = out_of_fold(flipped, 5, 1, kind_of=kind_of)
    own = [matrix(evidence([x], cfg, p)[0], names) for x, p in ((q, before), (flipped[train.index(q)], after))]
    assert np.array_equal(*own)
    others = [x for x in train if x.task_id != q.task_id and set(x.choices) & set(q.choices)]
    moved = [x for x in others if not np.array_equal(matrix(evidence([x], cfg, before)[0], names),
                                                     matrix(evidence([x], cfg, after)[0], names))]
    assert moved  # the flipped label is evidence for the questions that offer its option texts


@pytest.fixture(scope="module")
def fitted(train, cfg):
    evs = evidence(train, cfg, out_of_fold(train, 5, 1, kind_of=kind_of))
    return Fitted.fit(cfg, evs, evs, folds=5, seed=0, rounds=100)


def test_the_fit_learns_what_the_labelled_data_decides(fitted):
    """Completion questions: the right option repeats the line after the blank (split
    train's regularity); the votes are uniform, so the vote is at chance and the fit is not."""
    o = fitted.manifest["out_of_fold"]
    right, n = o["ranker"]["completion"]
    assert n >= 30 and right / n > 0.8 > o["vote"]["completion"][0] / n
    settled, s = o["settled"]["all"]
    assert s == 0 or settled / s >= 0.95  # the gate settles only where it was out-of-fold precise


def test_the_same_fit_twice_is_the_same_artifact(fitted, train, cfg, tmp_path):
    again = Fitted.fit(cfg, *(2 * [evidence(train, cfg, out_of_fold(train, 5, 1, kind_of=kind_of))]), folds=5, seed=0,
                       rounds=100)
    a, b = fitted.save(tmp_path / "a"), again.save(tmp_path / "b")
    for f in ("ranker.txt", "gate.txt", "manifest.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    loaded = Fitted.load(a, cfg)
    ev = evidence(train[:5], cfg, out_of_fold(train, 5, 1, kind_of=kind_of))
    assert [loaded.score(e)[0] for e in ev] == [fitted.score(e)[0] for e in ev]


def test_a_bad_or_mismatched_artifact_is_one_line(fitted, cfg, tmp_path):
    folder = fitted.save(tmp_path / "fit")
    with pytest.raises(FitError, match="fitted for config 'graph'"):
        Fitted.load(folder, cfg.model_copy(update={"execute": cfg.execute.model_copy(update={"timeout_s": 9})}))
    with pytest.raises(FitError, match=r"voters \['smollm2-135m-instruct@0'\], but .* "
                                       r"voters \['smollm2-135m-instruct@0', "):
        Fitted.load(folder, cfg.model_copy(update={"answer": cfg.answer.model_copy(update={"orders": 2})}))
    no_text = cfg.model_copy(update={"decide": cfg.decide.model_copy(update={"features": ["kind", "model"]})})
    with pytest.raises(FitError, match=r"but config 'graph' has groups \['kind', 'model'\]"):
        Fitted.load(folder, no_text)
    (folder / "gate.txt").write_text("tree\n")
    with pytest.raises(FitError, match="do not match manifest.json"):
        Fitted.load(folder, cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text("{")
    with pytest.raises(FitError, match="not a fitted decision"):
        Fitted.load(folder, cfg)
    with pytest.raises(FitError, match="not a fitted decision"):
        Fitted.load(tmp_path / "nowhere", cfg)
    assert manifest["questions"] == {"reach": N, "asked": N}


def test_too_few_questions_for_the_folds(train, cfg):
    evs = evidence(train[:7], cfg, out_of_fold(train[:7], 5, 1, kind_of=kind_of))
    with pytest.raises(FitError, match="too few for 5 folds"):
        Fitted.fit(cfg, evs, evs, folds=5)


def test_gate_thresholds_keep_the_precision():
    """Out-of-fold top probabilities of 30 behaviour questions: the 25 surest right, then
    wrong ones: the threshold lets in the 25 (precision 1.0 >= 0.98), none of the rest."""
    from core.types import Question

    qs = [Question(task_id=f"b{i}", question="Which behavior most likely occurs?", choices=["x", "y"],
                   answer="A" if i < 25 else "B") for i in range(30)]
    t = Table([Evidence(q, "behaviour") for q in qs], [])
    probs = [np.array([0.99 - i / 100, 0.01 + i / 100]) for i in range(30)]
    assert gate_thresholds(probs, t) == {"behaviour": pytest.approx(0.99 - 24 / 100)}
    assert gate_thresholds(probs[20:], Table(t.ev[20:], [])) == {}  # too few to settle on


def test_a_config_that_decides_by_fit_needs_retrieval():
    with pytest.raises(ValueError, match="decide.fitted reads the labelled questions"):
        SolverConfig.model_validate({"graph": {"enabled": True}, "decide": {"fitted": "x"}})


def test_the_graph_decides_with_a_fitted_decision(train, cfg, shared, tokenizer, tmp_path):
    """The graph with `decide.fitted`: a real index of solved questions (MiniLM, FAISS), a
    scripted backbone that always says "A" (tests/helpers.py: Scripted). Every question is
    decided by the duplicate, the run, the gate (then with no LLM call) or the ranker (with
    the features that moved it in the trace); the same input twice gives the same letters."""
    from index.store import Index
    from solver.api import Solver
    from tests.helpers import Scripted

    run = cfg.model_copy(update={"execute": cfg.execute.model_copy(update={"enabled": False}),
                                 "decide": cfg.decide.model_copy(update={"fitted": str(tmp_path / "fit")})})
    evs = evidence(train, run, out_of_fold(train, 5, 1, kind_of=kind_of))
    Fitted.fit(run, evs, evs, folds=5, seed=0, rounds=100).save(tmp_path / "fit")
    index = Index.build(train[:160])  # 160 solved questions: embedding them is most of the test
    asks = in_split(load_questions(shared / "train.csv", labelled=True).questions, "dev")[::10][:16]

    def says_a(prompt, options, key):
        return {k: 0.7 if k == "A" else 0.3 / (len(options) - 1) for k in options}

    label = run.backbone.label
    first, second = ([Solver(run, backbones={label: (bb := Scripted(label, says_a, tokenizer))}, index=index)
                      .solve_batch(asks), bb] for _ in range(2))
    preds, bb = first
    assert [p.letter for p in preds] == [p.letter for p in second[0]]
    by = {p.found.decided_by for p in preds}
    assert by <= {"duplicate", "settle", "ranker"} and "ranker" in by, by
    asked = {key for call in bb.calls for _, _, key in call}
    for q, p in zip(asks, preds):
        assert p.letter in q.letters and len(p.found.neighbours) == run.decide.k
        if p.found.decided_by == "settle":
            assert q.task_id not in asked and p.cost.calls == 0
        if p.found.decided_by == "ranker":
            step = next(t for t in p.trace if t["step"] == "decide")
            assert len(step["moved_by"]) == 3 and sum(p.probabilities.values()) == pytest.approx(1)


@pytest.mark.slow  # reads the session's real engine
def test_the_fitted_decision_on_the_real_engine_gives_the_same_csv_whole_and_resumed(train, shared, engine_solver,
                                                                                       tmp_path):
    """The graph with a fitted decision on the real engine (SmolLM2, its log-probabilities as
    the votes): the same questions answered whole, and again as a killed and resumed run
    answers them (a batch, then the rest in another solver, as `solver run` resumes from its
    journal), give the same CSV byte for byte; some questions were decided by the ranker."""
    from core.journal import submission_csv
    from index.store import Index
    from solver.api import Solver
    from tests.helpers import SMALL

    run = SolverConfig.model_validate({"backbone": SMALL, "graph": {"enabled": True},
                                       "retrieve": {"enabled": True, "duplicates": True},
                                       "decide": {"fitted": str(tmp_path / "fit")}})
    evs = evidence(train, run, out_of_fold(train, 5, 1, kind_of=kind_of))
    Fitted.fit(run, evs, evs, folds=5, seed=0, rounds=100).save(tmp_path / "fit")
    index = Index.build(train[:80])
    asks = in_split(load_questions(shared / "train.csv", labelled=True).questions, "dev")[1::10][:8]

    def solve(*runs):
        """Each run: a new solver (the resumed run is a new process) answering its batches of 4 in order."""
        preds = {}
        for batches in runs:
            solver = Solver(run, backbone=engine_solver.backbone, index=index)
            for b in batches:
                preds |= {p.task_id: p for p in solver.solve_batch(b)}
        return preds

    batches = [asks[i:i + 4] for i in range(0, len(asks), 4)]
    whole, resumed = solve(batches), solve(batches[:1], batches[1:])
    assert submission_csv(asks, resumed) == submission_csv(asks, whole)
    assert "ranker" in {p.found.decided_by for p in whole.values()}


def test_solver_fit_refuses_bad_input_in_one_line_before_answering(tmp_path, shared):
    """A labelled file that is not there, a config that retrieves nothing: one line, exit 2,
    no engine started and nothing written."""
    from typer.testing import CliRunner

    from solver.cli import app

    out = tmp_path / "fit"
    r = CliRunner().invoke(app, ["fit", "--labelled", str(tmp_path / "none.csv"), "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: --labelled {tmp_path / 'none.csv'}: no such file"]
    r = CliRunner().invoke(app, ["fit", "--labelled", str(shared / "train.csv"), "--out", str(out),
                                 "--config", str(ROOT / "configs" / "baseline.yaml")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: config 'baseline': a fitted decision reads the labelled questions through retrieve; "
        "set graph.enabled and retrieve.enabled"], r.output
    assert not out.exists()
