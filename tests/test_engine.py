"""The real vLLM CPU engine on the embedded model."""

import math

import pytest

from core.data import load_questions
from core.types import LETTERS, Question
from tests.helpers import SAMPLE

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process


def _check(pred, q):
    assert pred.task_id == q.task_id
    assert pred.letter in q.letters
    assert sorted(pred.probabilities) == q.letters
    assert math.isclose(sum(pred.probabilities.values()), 1.0, abs_tol=1e-6)
    assert pred.letter == max(pred.probabilities, key=pred.probabilities.get)


def test_batch_of_sample_questions(engine_solver):
    qs = load_questions(SAMPLE).questions
    preds = engine_solver.solve_batch(qs)
    for p, q in zip(preds, qs):
        _check(p, q)
        assert p.cost.calls == 1 and p.cost.tokens > 20 and p.trace[-1]["step"] == "cost"
        # one voter: its reply is the answer
        assert p.votes == {f"{engine_solver.backbone.cfg.label}@0": p.probabilities}
    # A real model, not a constant: its answers are not all one letter.
    assert len({p.letter for p in preds}) > 1


def test_single_question_api_and_26_options(engine_solver):
    p = engine_solver.solve("Which number is even?", ["7", "4", "9"])
    # the graph's answer step alone
    assert p.letter in "ABC" and [t["step"] for t in p.trace] == ["vote", "decide", "cost"]
    q = Question(task_id="z", question="Pick the letter Z.", choices=[f"option {c}" for c in LETTERS])
    _check(engine_solver.solve_batch([q])[0], q)


def test_long_question_is_cut_and_counted(engine_solver):
    before = engine_solver.stats["truncated"]
    q = Question(task_id="long", question="def f():\n" + "    x += 1\n" * 3000 + "What does f do?",
                 choices=["loops", "adds", "fails"])
    p = engine_solver.solve_batch([q])[0]
    _check(p, q)
    assert p.cut and p.trace[0]["cut"] and engine_solver.stats["truncated"] == before + 1


def test_multi_token_options_true_false(engine_solver):
    bb = engine_solver.backbone
    prompt = bb.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is 2+2=4? Reply TRUE or FALSE."}], tokenize=False, add_generation_prompt=True)
    (probs,) = bb.choose([prompt], [["TRUE", "FALSE"]])
    assert set(probs) == {"TRUE", "FALSE"} and math.isclose(sum(probs.values()), 1.0)
