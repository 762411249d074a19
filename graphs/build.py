"""Build the graph once from a config, and run a batch of questions through it."""

from __future__ import annotations

import asyncio

from langgraph.graph import END, START, StateGraph

from graphs import routing as R
from graphs.batcher import StepBatcher
from graphs.nodes import make_nodes
from graphs.state import State
from solver.config import SolverConfig
from solver.types import Prediction, Question


def enabled_nodes(cfg: SolverConfig) -> list[str]:
    on = {"retrieve": cfg.retrieve.enabled, "answer": True, "verify": cfg.verify.enabled,
          "reanswer": cfg.reanswer.enabled, "decide": True}
    return [n for n, v in on.items() if v]


def build_graph(cfg: SolverConfig, nodes: dict | None = None):
    """The compiled graph; with `nodes` None, placeholders (for drawing it offline)."""
    names = enabled_nodes(cfg)
    g = StateGraph(State)
    for name in names:
        g.add_node(name, nodes[name] if nodes else (lambda s: {}))

    def edges(src, route, targets):
        g.add_conditional_edges(src, lambda s: route(s, cfg), {t: t for t in targets if t in names})

    g.add_edge(START, "retrieve" if "retrieve" in names else "answer")
    if "retrieve" in names:
        edges("retrieve", R.after_retrieve, [R.DECIDE, R.ANSWER])
    edges("answer", R.after_answer, [R.DECIDE, R.VERIFY, R.REANSWER])
    if "verify" in names:
        edges("verify", R.after_verify, [R.DECIDE, R.REANSWER])
    if "reanswer" in names:
        edges("reanswer", R.after_reanswer, [R.DECIDE, R.VERIFY])
    g.add_edge("decide", END)
    return g.compile()


def mermaid(cfg: SolverConfig) -> str:
    return build_graph(cfg).get_graph().draw_mermaid()


class GraphRunner:
    """Runs questions through the compiled graph, one coroutine each, one call per step."""

    def __init__(self, cfg: SolverConfig, backbone, index=None):
        handlers = {"llm": lambda reqs: backbone.choose([p for p, _ in reqs], [o for _, o in reqs])}
        if index is not None:
            handlers["index"] = lambda qs: index.query(qs, k=cfg.retrieve.k, min_score=cfg.retrieve.min_score)
        self.index = index
        self.batcher = StepBatcher(handlers)
        self.graph = build_graph(cfg, make_nodes(cfg, backbone, self.batcher, index))

    async def _one(self, q: Question) -> dict:
        self.batcher.enter()
        try:
            return await self.graph.ainvoke({"question": q, "rounds": 0})
        finally:
            self.batcher.leave()

    async def _all(self, questions):
        return await asyncio.gather(*(self._one(q) for q in questions))

    def run(self, questions: list[Question]) -> list[Prediction]:
        states = asyncio.run(self._all(questions))
        return [
            Prediction(task_id=q.task_id, letter=s.get("letter"), probabilities=s.get("final") or {},
                       trace=s["trace"] + [{"step": "cost", "calls": s.get("calls", 0), "tokens": s.get("tokens", 0)}])
            for q, s in zip(questions, states)
        ]
