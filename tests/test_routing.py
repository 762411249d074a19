"""Routing, combination and batching: pure functions on fixed numbers (no model)."""

import asyncio

from core.config import BackboneConfig, SolverConfig
from core.types import Question, top_letter
from graphs import routing as R
from graphs.batcher import StepBatcher
from graphs.build import enabled_nodes, mermaid

Q = Question(task_id="t", question="q", choices=["a", "b", "c", "d"])


def cfg(**sections):
    base = {"graph": {"enabled": True}, "verify": {"enabled": True}, "retrieve": {"enabled": True},
            "reanswer": {"enabled": True}}
    for k, v in sections.items():
        base[k] = base.get(k, {}) | v
    return SolverConfig.model_validate(base)


def state(probs, **kw):
    return {"question": Q, "probs": probs, "rounds": 0} | kw


P = {"A": 0.1, "B": 0.6, "C": 0.2, "D": 0.1}


def test_top_breaks_ties_by_letter_not_at_random():
    assert top_letter({"A": 0.3, "B": 0.3, "C": 0.4}) == "C"
    assert top_letter({"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}) == "A"


def test_duplicate_goes_straight_to_decide_and_wins():
    s = state(P, duplicate={"task_id": "x", "answer": "D"})
    assert R.after_retrieve(s, cfg()) == R.DECIDE
    assert R.decide(s, cfg()) == ("D", {"A": 0.0, "B": 0.0, "C": 0.0, "D": 1.0})
    sends = R.after_retrieve(state(P), cfg())
    assert [(x.node, x.arg["seat"]) for x in sends] == [(R.ANSWER, {"backbone": "smollm2-135m-instruct", "order": 0})]


def test_every_backbone_and_option_order_is_a_voter():
    two = cfg(answer={"orders": 3}).model_copy(update={"backbones": [BackboneConfig(served_name="a"),
                                                                       BackboneConfig(served_name="b")]})
    sends = R.fan_out(state(P), two)
    assert [(x.arg["seat"]["backbone"], x.arg["seat"]["order"]) for x in sends] == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert all(x.node == R.ANSWER and x.arg["question"] is Q for x in sends)


def test_option_orders_are_fixed_permutations():
    assert R.option_order(4, 0, "t") == [0, 1, 2, 3] and R.option_order(4, 1, "t") == [3, 2, 1, 0]
    shuffled = R.option_order(7, 2, "t")
    assert sorted(shuffled) == list(range(7)) and shuffled != list(range(7))
    assert R.option_order(7, 2, "t") == shuffled  # seeded by the question: the same every run
    assert R.option_order(7, 3, "t") != shuffled


def test_confident_answer_is_accepted_early():
    assert R.after_vote(state(P), cfg(graph={"accept": 0.6})) == R.DECIDE
    assert R.after_vote(state(P), cfg(graph={"accept": 0.7})) == R.VERIFY
    no_verify = cfg(graph={"accept": 0.7}, verify={"enabled": False})
    assert R.after_vote(state(P), no_verify) == R.DECIDE  # no neighbours, nothing rejected
    near = [{"task_id": "n", "score": 0.95}]
    assert R.after_vote(state(P, neighbors=near), no_verify) == R.REANSWER
    assert R.after_vote(state({}), cfg()) == R.DECIDE  # no voter could answer


def test_failed_verification_rejects_the_answer_and_reanswers():
    c = cfg(verify={"accept": 0.4})
    s = state(P)
    up = R.verify_update(s, 0.3, c)
    assert up == {"verdicts": [0.3], "rejected": ["B"]}
    s2 = s | {"verdicts": [0.3], "rejected": ["B"]}
    assert R.after_verify(s2, c) == R.REANSWER
    assert R.verify_update(s, 0.5, c) == {"verdicts": [0.5], "rejected": []}
    assert R.after_verify(s | {"verdicts": [0.5], "rejected": []}, c) == R.DECIDE
    # without elimination and without close neighbours there is nothing to re-answer with
    assert R.after_verify(s2, cfg(verify={"accept": 0.4}, reanswer={"drop_rejected": False})) == R.DECIDE


def test_similarity_floor_gates_examples():
    far, near = [{"task_id": "n", "score": 0.85}], [{"task_id": "n", "score": 0.92}]
    assert not R.has_examples(state(P, neighbors=far), cfg(retrieve={"floor": 0.9}))
    assert R.has_examples(state(P, neighbors=near), cfg(retrieve={"floor": 0.9}))
    assert not R.has_examples(state(P, neighbors=near), cfg(retrieve={"enabled": False}))


def test_rounds_are_bounded():
    s = state(P, rejected=["B"], rounds=1)
    assert not R.can_reanswer(s, cfg(graph={"max_rounds": 1}))
    assert R.can_reanswer(s, cfg(graph={"max_rounds": 2}))
    assert R.after_reanswer(s, cfg(graph={"max_rounds": 1})) == R.DECIDE
    assert R.after_reanswer(state(P, rounds=1), cfg(graph={"max_rounds": 2})) == R.VERIFY


def test_decide_mixes_the_reanswer_by_weight():
    s = state(P, reprobs={"A": 0.0, "B": 0.0, "C": 0.9, "D": 0.1})
    letter, final = R.decide(s, cfg(reanswer={"weight": 0.5}))
    assert letter == "C" and abs(final["C"] - 0.55) < 1e-9 and abs(sum(final.values()) - 1) < 1e-9
    assert R.decide(s, cfg(reanswer={"weight": 0.2}))[0] == "B"


def test_a_run_removes_the_options_it_ruled_out_when_told_to():
    run = {"check": "compile", "status": "ok", "consistent": ["A", "C", "D"], "settled": None}
    s = state(P, executed=run)
    assert R.decide(s, cfg(execute={"rule_out": []}))[0] == "B"  # not told: the run only informs the trace
    letter, final = R.decide(s, cfg(execute={"rule_out": ["compile"]}))
    assert letter == "C" and final["B"] == 0 and abs(final["C"] - 0.5) < 1e-9 and abs(sum(final.values()) - 1) < 1e-9
    assert R.decide(state(P, executed=run | {"consistent": []}), cfg(execute={"rule_out": ["compile"]}))[0] == "B"
    zero = state({"A": 0.0, "B": 1.0, "C": 0.0, "D": 0.0}, executed=run)  # all the mass ruled out: the rest evenly
    assert R.decide(zero, cfg(execute={"rule_out": ["compile"]}))[1] == {"A": 1 / 3, "B": 0.0, "C": 1 / 3, "D": 1 / 3}


def test_batcher_makes_one_call_per_step():
    """Ten questions, two steps each, uneven work between, the first step fanned out to
    side-by-side nodes that start at different times: two batched calls in all."""
    seen = []

    def handler(items):
        seen.append(list(items))
        return [x * 10 for x in items]

    b = StepBatcher({"llm": handler})

    async def voter(i):
        for _ in range(5 * (i >= 100)):  # the second voter starts late
            await asyncio.sleep(0)
        return await b.submit("llm", [i])

    async def second(i, first):
        for _ in range(i):  # uneven work between steps
            await asyncio.sleep(0)
        return await b.submit("llm", [first + 1])

    async def one(i):
        with b.question():
            fan = await asyncio.gather(b.node(voter)(i), b.node(voter)(i + 100))
            await asyncio.sleep(0)  # between nodes: not blocked
            return fan, await b.node(lambda s: second(i, fan[0][0]))(None)

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    out = asyncio.run(main())
    assert b.calls["llm"] == 2 and [len(x) for x in seen] == [20, 10]
    assert out[3] == ([[30], [1030]], [310])


def test_a_call_holds_its_requests_in_question_order():
    """Requests that arrive in another order (a sandbox run in a thread, a server's reply)
    go into the call in the order of the questions: in bf16 the order changes the numbers."""
    seen = []
    b = StepBatcher({"llm": lambda items: seen.append(list(items)) or items})

    async def one(i):
        with b.question(i):
            for _ in range(10 - i):  # the last question asks first
                await asyncio.sleep(0)
            return await b.node(lambda s: b.submit("llm", [i, -i]))(None)

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    assert asyncio.run(main()) == [[i, -i] for i in range(10)]
    assert seen == [[x for i in range(10) for x in (i, -i)]]


def test_graph_shape_follows_config():
    assert enabled_nodes(cfg()) == ["retrieve", "answer", "vote", "verify", "reanswer", "decide"]
    drawn = mermaid(cfg(verify={"enabled": False}))
    assert "verify" not in drawn and "retrieve -.-> answer" in drawn and "vote -.-> reanswer" in drawn
    assert "answer --> vote" in drawn
    assert "retrieve" not in mermaid(cfg(retrieve={"enabled": False}))
