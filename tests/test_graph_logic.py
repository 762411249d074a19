"""The graph's own logic on scripted backbones (tests/helpers.py: Scripted) with fixed
probabilities: the single pass as the graph's answer step, routing, the vote, debiasing,
decide, resume and batching. Fast: no engine. The real engine, server and sandbox have
their own tests (test_engine.py, test_graph.py, test_vote.py, ...)."""

import pytest

from core.config import SolverConfig
from core.journal import Journal
from core.prompts import VERDICTS
from core.types import Question
from solver.api import Solver
from solver.runner import answer_all
from tests.helpers import Scripted, shown

RIGHT = "the right one"


def questions(n: int) -> list[Question]:
    """n questions of 4 options; the right one at position i % 4."""
    out = []
    for i in range(n):
        choices = [f"wrong {k}" for k in range(3)]
        choices.insert(i % 4, RIGHT)
        out.append(Question(task_id=f"q{i}", question=f"Question {i}: which one?", choices=choices,
                            answer="ABCD"[i % 4]))
    return out


def knows(prompt, options, key):
    """0.7 on the option that reads RIGHT, wherever it is shown; the rest evenly."""
    right = shown(prompt, RIGHT)
    return {k: 0.7 if k == right else 0.3 / (len(options) - 1) for k in options}


def first_shown(prompt, options, key):
    """A pull towards the first positions whatever they hold: n, n-1, ..., 1, normalised."""
    n = len(options)
    return {k: (n - i) / (n * (n + 1) / 2) for i, k in enumerate(options)}


def config(**sections) -> SolverConfig:
    return SolverConfig.model_validate({"backbones": [{"served_name": "k"}]} | sections)


def scripted(cfg, tokenizer, **scripts):
    bbs = {label: Scripted(label, script, tokenizer) for label, script in scripts.items()}
    return Solver(cfg, backbones=bbs), bbs


def test_single_pass_is_the_graphs_answer_step_one_call_per_batch(tokenizer):
    qs = questions(6)
    too_long = Question(task_id="long", question="q", choices=["x " * 3000, "y"])  # options alone overflow
    solver, bbs = scripted(config(), tokenizer, k=knows)
    preds = solver.solve_batch(qs[:3] + [too_long] + qs[3:])
    (call,) = bbs["k"].calls  # one call for the batch, in input order, without the question that cannot fit
    assert [key for _, _, key in call] == [q.task_id for q in qs]
    for p, q, (prompt, _, _) in zip(preds[:3] + preds[4:], qs, call):
        assert p.letter == q.answer and p.probabilities == knows(prompt, q.letters, None)
        assert p.votes == {"k@0": p.probabilities}  # one voter, its reply the answer
        assert p.cost.calls == 1 and p.cost.tokens > 0 and [t["step"] for t in p.trace] == ["vote", "decide", "cost"]
    assert preds[3].letter is None and solver.stats["unread"] == 1 and preds[3].cost.calls == 0


def test_an_unreadable_reply_is_unread_never_a_made_up_letter(tokenizer):
    solver, _ = scripted(config(), tokenizer, k=lambda p, o, key: None if key == "q1" else knows(p, o, key))
    preds = solver.solve_batch(questions(3))
    assert [p.letter for p in preds] == ["A", None, "C"] and solver.stats["unread"] == 1 and not preds[1].error


def test_vote_maps_every_order_back_and_averages(tokenizer):
    """Two backbones, two orders each: the position pull of `p` cancels over the two orders,
    so each letter gets (2 * k's probability + 1/2) / 4; one call per backbone."""
    cfg = config(backbones=[{"served_name": "k"}, {"served_name": "p"}], answer={"orders": 2}, graph={"enabled": True})
    solver, bbs = scripted(cfg, tokenizer, k=knows, p=first_shown)
    qs = questions(4)
    preds = solver.solve_batch(qs)
    for p, q in zip(preds, qs):
        want = {k: (2 * (0.7 if k == q.answer else 0.1) + 0.5) / 4 for k in q.letters}
        assert p.letter == q.answer and sorted(p.votes) == ["k@0", "k@1", "p@0", "p@1"]
        assert all(abs(p.probabilities[k] - want[k]) < 1e-12 for k in q.letters)
    assert solver.graph.batcher.calls == {"k": 1, "p": 1}  # the mean needs no batch: no vote call
    assert [key for _, _, key in bbs["p"].calls[0]] == [q.task_id for q in qs for _ in range(2)]  # question order


def test_debias_divides_out_a_pure_position_pull(tokenizer):
    """A backbone that only prefers positions, debiased with the prior it shows on the
    input's cyclic orders, says nothing: every option even (ties go to A, never at random)."""
    cfg = config(graph={"enabled": True}, vote={"debias": {"source": "run", "share": 1.0, "at_least": 1}})
    solver, bbs = scripted(cfg, tokenizer, k=first_shown)
    preds = solver.solve_batch(questions(4))
    assert solver.priors == {"k": {"4": [0.4, 0.3, 0.2, 0.1]}}
    for p in preds:
        assert all(abs(v - 0.25) < 1e-5 for v in p.probabilities.values()) and p.letter == "A"
        assert p.cost.calls == 1 + 4  # its answer, and its four cyclic orders for the prior
    assert len(bbs["k"].calls) == 2  # the prior's one call, then the answers'


def test_routing_verify_rejects_and_reanswer_decides(tokenizer):
    """An unsure answer is verified; a rejected letter is removed and the question
    answered again over the rest; a sure one goes straight to decide. Questions at
    different steps share each step's one call."""
    cfg = config(graph={"enabled": True, "accept": 0.6}, verify={"enabled": True, "accept": 0.5},
                 reanswer={"enabled": True, "drop_rejected": True, "weight": 0.5})

    def script(prompt, options, key):
        if options == VERDICTS:
            return {"TRUE": 0.2, "FALSE": 0.8}
        return knows(prompt, options, key) if key == "sure" else first_shown(prompt, options, key)

    sure = Question(task_id="sure", question="An easy one?", choices=["no", RIGHT, "never"], answer="B")
    unsure = questions(2)[1]  # right at B, first_shown says A
    solver, bbs = scripted(cfg, tokenizer, k=script)
    p_sure, p_unsure = solver.solve_batch([sure, unsure])
    assert p_sure.letter == "B" and [t["step"] for t in p_sure.trace] == ["vote", "decide", "cost"]
    steps = {t["step"]: t for t in p_unsure.trace}
    assert list(steps) == ["vote", "verify", "reanswer", "decide", "cost"]
    assert steps["verify"]["letter"] == "A" and steps["verify"]["rejected"] == ["A"]
    # re-answer over B, C, D with the same pull: 3/6, 2/6, 1/6; final = half each
    want = {"A": 0.2, "B": 0.15 + 0.25, "C": 0.1 + 1 / 6, "D": 0.05 + 1 / 12}
    assert all(abs(p_unsure.probabilities[k] - want[k]) < 1e-12 for k in want)
    assert p_unsure.letter == "B" and steps["decide"]["changed"] == ["A", "B"] and p_unsure.cost.calls == 3
    assert [[key for _, _, key in call] for call in bbs["k"].calls] == [["sure", "q1"], ["q1"], ["q1"]]


def test_resume_sends_the_calls_an_uninterrupted_run_sends(tokenizer, tmp_path):
    """Killed during its second batch, then run again: the resumed run asks exactly the
    batches that were left, made as the whole run made them, and ends with its letters."""
    qs = questions(7)

    def run(journal_path, script):
        solver, bbs = scripted(config(answer={"batch_size": 3}), tokenizer, k=script)
        journal = Journal(journal_path, "same input, same config")
        try:
            preds, fresh, _ = answer_all(lambda: solver, qs, journal, 3, quiet=True)
        finally:
            journal.close()
        return preds, fresh, [[key for _, _, key in call] for call in bbs["k"].calls]

    whole, _, whole_calls = run(tmp_path / "whole.jsonl", knows)

    def dies_at_q4(prompt, options, key):
        if key == "q4":
            raise KeyboardInterrupt
        return knows(prompt, options, key)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part.jsonl", dies_at_q4)
    resumed, fresh, calls = run(tmp_path / "part.jsonl", knows)
    assert whole_calls == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]] and calls == whole_calls[1:] and fresh == 4
    assert {t: p.letter for t, p in resumed.items()} == {t: p.letter for t, p in whole.items()}


def test_a_coroutine_runs_inside_a_running_event_loop():
    """A notebook kernel runs an event loop: the graph and the served backbone run their own
    beside it (backends.backbone.run_coroutine), where asyncio.run alone refuses."""
    import asyncio

    from backends.backbone import run_coroutine

    async def answer():
        return 42

    async def in_a_notebook():
        return run_coroutine(answer())

    assert asyncio.run(in_a_notebook()) == 42 and run_coroutine(answer()) == 42
