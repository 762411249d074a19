"""The compiled graph end to end on the embedded model, with a real MiniLM/FAISS index."""

import json
import math
import signal
import subprocess

import pytest

from backends.hardware import pick_dtype
from core.config import SolverConfig
from core.data import load_questions
from index.store import Index
from solver.api import Solver
from tests.helpers import PROB_TOL, SAMPLE, SMALL, interrupt, questions_file, run_cmd

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process

FULL = {"answer": {"orders": 2}, "graph": {"enabled": True}, "verify": {"enabled": True, "accept": 0.5},
        "retrieve": {"enabled": True, "floor": 0.3, "min_score": 0.3}, "reanswer": {"enabled": True}}


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx") / "sample"
    Index.build(load_questions(SAMPLE, labelled=True).questions[:20]).save(folder)
    return folder


def test_graph_end_to_end(engine_solver, sample_index):
    cfg = SolverConfig.model_validate(FULL | {"backbone": SMALL,
                                              "retrieve": FULL["retrieve"] | {"index": str(sample_index)}})
    solver = Solver(cfg, backbone=engine_solver.backbone)
    sample = load_questions(SAMPLE, labelled=True).questions
    copy = sample[0].model_copy(update={"task_id": "copy", "choices": sample[0].choices[::-1]})
    questions = [copy] + sample[20:26]  # one exact copy (options reversed), six unseen
    preds = solver.solve_batch(questions)
    for p, q in zip(preds, questions):
        assert p.letter in q.letters and math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-6)
        steps = [t["step"] for t in p.trace]
        assert steps[0] == "retrieve" and steps[-2:] == ["decide", "cost"]
    want = copy.letters[copy.choices.index(sample[0].choices[sample[0].letters.index(sample[0].answer)])]
    assert preds[0].letter == want and [t["step"] for t in preds[0].trace] == ["retrieve", "decide", "cost"]
    assert all("vote" in [t["step"] for t in p.trace] for p in preds[1:])  # the voters (two orders) answered
    # one batched LLM call per step (answer, verify, re-answer), not one per question
    assert solver.graph.batcher.calls[solver.backbone.label] <= 3 and solver.graph.batcher.calls["index"] == 1
    verify = [t for p in preds for t in p.trace if t["step"] == "verify"]
    assert verify and all(0.0 <= t["p_true"] <= 1.0 for t in verify)
    # again, on the engine that has seen these prompts (its prefix cache): the same numbers
    again = Solver(cfg, backbone=engine_solver.backbone).solve_batch(questions)
    assert [(p.letter, p.probabilities) for p in again] == [(p.letter, p.probabilities) for p in preds]


def test_answer_with_retrieved_examples(engine_solver, sample_index):
    """answer.shots: every answer prompt carries the question's nearest solved neighbours
    (as a finetune with retrieval trains on), so it costs more tokens and answers otherwise;
    a neighbour below retrieve.min_score is never an example."""
    base = {"backbone": SMALL, "graph": {"enabled": True},
            "retrieve": {"enabled": True, "index": str(sample_index), "duplicates": False, "min_score": 0.0}}
    questions = load_questions(SAMPLE, labelled=True).questions[20:26]

    def run(extra):
        preds = Solver(SolverConfig.model_validate(base | extra),
                       backbone=engine_solver.backbone).solve_batch(questions)
        assert all(p.letter in q.letters for p, q in zip(preds, questions))
        return preds

    plain, shots = run({}), run({"answer": {"shots": 2}})
    tokens = [(p.trace[-1]["tokens"], s.trace[-1]["tokens"]) for p, s in zip(plain, shots)]
    assert all(t_shots > 2 * t_plain for t_plain, t_shots in tokens), tokens
    assert [p.probabilities for p in plain] != [s.probabilities for s in shots]
    none_close = run({"answer": {"shots": 2}, "retrieve": base["retrieve"] | {"min_score": 1.01}})
    assert [p.trace[-1]["tokens"] for p in none_close] == [t for t, _ in tokens]


def test_debiased_pool_vote_on_the_engine(engine_solver):
    """vote.debias (source run): a seeded share of the batch answered in every cyclic order
    gives the backbone's position prior, which every answer is divided by, and those
    questions' cost says so; the pool combines what is left, with the config's weight."""
    from core.prompts import answer_prompt
    from graphs.vote import debias, pool, sample

    cfg = SolverConfig.model_validate({"backbone": SMALL, "answer": {"orders": 2}, "graph": {"enabled": True},
                                       "vote": {"rule": "pool", "weights": {"smollm2-135m-instruct": 0.5},
                                                "debias": {"source": "run", "share": 0.2, "at_least": 3}}})
    solver = Solver(cfg, backbone=engine_solver.backbone)
    questions = load_questions(SAMPLE, labelled=True).questions[20:]
    preds = solver.solve_batch(questions)
    priors = solver.priors["smollm2-135m-instruct"]
    assert priors and all(len(p) == int(n) and math.isclose(sum(p), 1, abs_tol=1e-4) for n, p in priors.items())
    picked = set(sample([q.task_id for q in questions], 0.2, 3))
    bb = engine_solver.backbone
    for q, p in zip(questions, preds):
        calls = next(t for t in p.trace if t["step"] == "cost")["calls"]
        assert calls == 2 + len(q.choices) * (q.task_id in picked)  # two voters, and the cyclic orders
        vote = next(t for t in p.trace if t["step"] == "vote")
        assert vote["weights"] == {"smollm2-135m-instruct": 0.5}
        assert vote["probabilities"] == pytest.approx(pool(vote["votes"], q.letters, vote["weights"]))
        prior = priors.get(str(len(q.choices)))
        assert vote.get("priors", {}).get("smollm2-135m-instruct@0") == prior
        # the given order's answer is the engine's (alone here: within the dtype's rounding), divided by the prior
        if prior:
            (raw,) = bb.choose([answer_prompt(q, bb.tokenizer, bb.max_model_len).text], [q.letters])
            want = debias(list(raw.values()), prior)
            assert list(vote["votes"]["smollm2-135m-instruct@0"].values()) == pytest.approx(
                want, abs=PROB_TOL[bb.dtype])


def test_pool_weights_fitted_on_labelled_questions(engine_solver, cache):
    """vote.rule pool with vote.labelled: each backbone's weight is fitted on the labelled
    questions' answers (maximum likelihood), cached, and shown in the vote step."""
    cfg = SolverConfig.model_validate({"backbone": SMALL, "graph": {"enabled": True},
                                       "vote": {"rule": "pool", "labelled": str(SAMPLE), "labelled_split": None,
                                                "labelled_n": 8}})
    preds = Solver(cfg, backbone=engine_solver.backbone).solve_batch(
        load_questions(SAMPLE, labelled=True).questions[20:23])
    weights = [next(t for t in p.trace if t["step"] == "vote")["weights"] for p in preds]
    assert weights[0] == weights[-1] and set(weights[0]) == {"smollm2-135m-instruct"}
    assert 0.0 <= weights[0]["smollm2-135m-instruct"] <= 10.0
    assert len(list((cache / "vote").glob("weights-*.json"))) == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_runs_and_resumes_to_the_same_csv(dtype, tmp_path, cache):
    """The graph config through the CLI in each dtype, whatever this CPU computes natively:
    run once; run again, stopped after a batch (the CPU's own dtype: Ctrl-C, one line and no
    traceback; the other: SIGKILL), then resumed to the end: the same CSV byte for byte. In
    bf16 a prompt's numbers depend on the prompts that share its call, so this holds only if
    those follow from the input alone (not from timing, the engine's history or the process).
    The CPU's own dtype runs the whole graph (two orders, verify, re-answer, retrieval, code
    execution) on 4 questions; the other (bf16 emulated, 5-6x slower on AVX2; float32 where
    AMX makes bf16 the native one) two orders with retrieval and execution on 4. The index is
    built on first use and cached."""
    native = dtype == pick_dtype("auto", "cpu")
    n, batch, steps = (4, 2, FULL) if native else (4, 2, {k: FULL[k] for k in ("graph", "retrieve")})
    data = questions_file(tmp_path, n)
    cfg = tmp_path / "graph.yaml"
    # the inputs are copies of the indexed sample: no duplicate shortcut, so every step runs
    config = steps | {"retrieve": FULL["retrieve"] | {"data": str(SAMPLE), "split": None, "duplicates": False},
                      "execute": {"enabled": True}, "backbone": SMALL | {"dtype": dtype},
                      "answer": {"orders": 2, "batch_size": batch}}
    cfg.write_text(json.dumps(config))
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    subprocess.run(run_cmd(data, whole, cfg), cwd=tmp_path, check=True, capture_output=True)
    assert list((cache / "index").iterdir())  # built on first use, cached
    journal = part.with_name(part.name + ".journal.jsonl")
    sig = signal.SIGINT if native else signal.SIGKILL
    stopped_at = interrupt(run_cmd(data, part, cfg), journal, sig, 1, cwd=tmp_path)
    assert stopped_at == batch and not part.exists()
    done = subprocess.run(run_cmd(data, part, cfg), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming: {stopped_at} answers" in done.stderr
    assert part.read_bytes() == whole.read_bytes() and len(whole.read_text().splitlines()) == n + 1
