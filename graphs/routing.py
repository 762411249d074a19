"""Routing and the final combination: pure functions of (state, config).

The graph's conditional edges and its nodes call these; being pure, they are tested on
fixed numbers (tests/test_routing.py) without a model.
"""

from __future__ import annotations

import random

from langgraph.types import Send

from core.config import SolverConfig
from core.types import top_letter

DECIDE, ANSWER, VOTE, VERIFY, REANSWER, EXECUTE, SETTLE = ("decide", "answer", "vote", "verify", "reanswer", "execute",
                                                           "settle")


def option_order(n: int, k: int, seed: str) -> list[int]:
    """The k-th order a voter sees n options in: 0 as given, 1 reversed, then shuffles
    seeded by the question (the same on every run and machine)."""
    order = list(range(n))
    if k == 1:
        return order[::-1]
    if k > 1:
        random.Random(f"{seed}:{k}").shuffle(order)
    return order


def seats(cfg: SolverConfig) -> list[dict]:
    """Every (backbone, option order) pair is one voter: its seat, {"backbone", "order"}."""
    return [{"backbone": b.label, "order": k} for b in cfg.backbones for k in range(cfg.answer.orders)]


def fan_out(s: dict, cfg: SolverConfig) -> list[Send]:
    """One `answer` per voter, run side by side (LangGraph Send); `vote` gathers them."""
    return [Send(ANSWER, {"question": s["question"], "seat": v, "neighbors": s.get("neighbors") or []})
            for v in seats(cfg)]


def has_examples(s: dict, cfg: SolverConfig) -> bool:
    """Retrieval earns a re-answer only with a neighbour at or above the similarity floor."""
    n = s.get("neighbors") or []
    return cfg.retrieve.enabled and bool(n) and n[0]["score"] >= cfg.retrieve.floor


def can_reanswer(s: dict, cfg: SolverConfig) -> bool:
    if not cfg.reanswer.enabled or s.get("rounds", 0) >= cfg.graph.max_rounds:
        return False
    return has_examples(s, cfg) or (cfg.reanswer.drop_rejected and bool(s.get("rejected")))


def settles(cfg: SolverConfig) -> bool:
    """The fitted gate runs: a fitted decision that may settle a question with no LLM call."""
    return bool(cfg.decide.fitted) and cfg.decide.settle


def before_answer(s: dict, cfg: SolverConfig) -> str | list[Send]:
    return SETTLE if settles(cfg) else fan_out(s, cfg)


def after_retrieve(s: dict, cfg: SolverConfig) -> str | list[Send]:
    if s.get("duplicate"):
        return DECIDE
    return EXECUTE if cfg.execute.enabled else before_answer(s, cfg)


def settled_by_run(s: dict, cfg: SolverConfig) -> str | None:
    """The option a sandboxed run left alone, when its kind of evidence is trusted."""
    e = s.get("executed")
    return e["settled"] if e and e["settled"] and e["check"] in cfg.execute.trust else None


def after_execute(s: dict, cfg: SolverConfig) -> str | list[Send]:
    """A run that settles the question needs no LLM call."""
    return DECIDE if settled_by_run(s, cfg) else before_answer(s, cfg)


def after_settle(s: dict, cfg: SolverConfig) -> str | list[Send]:
    """The fitted gate was sure: no LLM call."""
    return DECIDE if s.get("settled") else fan_out(s, cfg)


def after_vote(s: dict, cfg: SolverConfig) -> str:
    if not s["probs"] or max(s["probs"].values()) >= cfg.graph.accept:
        return DECIDE
    if cfg.verify.enabled:
        return VERIFY
    return REANSWER if can_reanswer(s, cfg) else DECIDE


def verified(s: dict, cfg: SolverConfig) -> bool:
    return s["verdicts"][-1] >= cfg.verify.accept


def after_verify(s: dict, cfg: SolverConfig) -> str:
    if verified(s, cfg):
        return DECIDE
    return REANSWER if can_reanswer(s, cfg) else DECIDE


def after_reanswer(s: dict, cfg: SolverConfig) -> str:
    if cfg.verify.enabled and s.get("rounds", 0) < cfg.graph.max_rounds:
        return VERIFY
    return DECIDE


def verify_update(s: dict, p_true: float, cfg: SolverConfig) -> dict:
    """What a verification adds to the state: its verdict, and the letter it turned down."""
    update = {"verdicts": [p_true], "rejected": []}
    if p_true < cfg.verify.accept:
        letter = top_letter(current(s, cfg))
        if letter not in (s.get("rejected") or []):
            update["rejected"] = [letter]
    return update


def decide(s: dict, cfg: SolverConfig) -> tuple[str, dict[str, float]]:
    """The final letter and probabilities."""
    final = current(s, cfg)
    return top_letter(final), final


def current(s: dict, cfg: SolverConfig) -> dict[str, float]:
    """The probabilities the graph holds now: the answer, mixed with a re-answer if any."""
    letter = s["duplicate"]["answer"] if s.get("duplicate") else settled_by_run(s, cfg)
    if letter:
        return {k: float(k == letter) for k in s["question"].letters}
    p = s["probs"]
    if s.get("reprobs"):
        w = cfg.reanswer.weight
        p = {k: (1 - w) * p[k] + w * s["reprobs"].get(k, 0.0) for k in p}
    return rule_out(p, s.get("executed"), cfg)


def rule_out(p: dict[str, float], executed: dict | None, cfg: SolverConfig) -> dict[str, float]:
    """The probabilities without the options a run ruled out (when its kind is trusted to
    rule out), renormalised; a run consistent with no option removes nothing."""
    keep = executed["consistent"] if executed and executed["check"] in cfg.execute.rule_out else []
    if not keep:
        return dict(p)
    kept = {k: (v if k in keep else 0.0) for k, v in p.items()}
    total = sum(kept.values())
    return {k: v / total for k, v in kept.items()} if total > 0 else {k: float(k in keep) / len(keep) for k in p}
