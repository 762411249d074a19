"""Build the graph once from a config, and run a batch of questions through it."""

from __future__ import annotations

import asyncio
import logging

from langgraph.graph import END, START, StateGraph

from backends.backbone import run_coroutine
from core.config import SolverConfig
from core.types import Cost, Prediction, Question
from execution import sandbox
from graphs import routing as R
from graphs.batcher import StepBatcher
from graphs.nodes import found_in, make_nodes, neighbours_for, tally
from graphs.state import State
from graphs.vote import RULES, Calibration


def enabled_nodes(cfg: SolverConfig) -> list[str]:
    on = {"retrieve": cfg.retrieve.enabled, "execute": cfg.execute.enabled, "settle": R.settles(cfg), "answer": True,
          "vote": True, "verify": cfg.verify.enabled,
          "reanswer": cfg.reanswer.enabled, "decide": True}
    return [n for n, v in on.items() if v]


def build_graph(cfg: SolverConfig, nodes: dict | None = None):
    """The compiled graph; with `nodes` None, placeholders (for drawing it offline)."""
    names = enabled_nodes(cfg)
    g = StateGraph(State)
    for name in names:
        g.add_node(name, nodes[name] if nodes else (lambda s: {}))

    def edges(src, route, targets):
        g.add_conditional_edges(src, lambda s: route(s, cfg), [t for t in targets if t in names])

    if "retrieve" in names:
        g.add_edge(START, "retrieve")
        edges("retrieve", R.after_retrieve, [R.DECIDE, R.EXECUTE, R.SETTLE, R.ANSWER])
    elif "execute" in names:
        g.add_edge(START, "execute")
    else:
        edges(START, R.fan_out, [R.ANSWER])
    if "execute" in names:
        edges("execute", R.after_execute, [R.DECIDE, R.SETTLE, R.ANSWER])
    if "settle" in names:
        edges("settle", R.after_settle, [R.DECIDE, R.ANSWER])
    g.add_edge("answer", "vote")  # every voter's answer (Send), then one vote
    edges("vote", R.after_vote, [R.DECIDE, R.VERIFY, R.REANSWER])
    if "verify" in names:
        edges("verify", R.after_verify, [R.DECIDE, R.REANSWER])
    if "reanswer" in names:
        edges("reanswer", R.after_reanswer, [R.DECIDE, R.VERIFY])
    g.add_edge("decide", END)
    return g.compile()


def mermaid(cfg: SolverConfig) -> str:
    return build_graph(cfg).get_graph().draw_mermaid()


def sandbox_warnings(cfg) -> None:
    """What a user of `execute` must know before the run: no sandbox (nothing runs), no
    sandbox on purpose (unsafe), languages this machine cannot run, runs that may not fit
    in the memory left beside the engine, runs capped per process only (no cgroup)."""
    from backends.hardware import available_gb

    warn = logging.getLogger(__name__).warning  # the CLI shows it (solver/console.py)

    if cfg.sandbox == "none":
        warn("execute.sandbox: none runs code from the input file without a sandbox, as this user: unsafe")
    elif sandbox.available() is None:
        warn("execute: no sandbox here (bubblewrap: apt-get install bubblewrap), so no code from the questions "
             "is run and the graph answers without it; execute.sandbox: none would run it unsandboxed (unsafe)")
    missing = [lang for lang, ok in sandbox.runtimes().items() if not ok]
    if missing:
        warn(f"execute: no toolchain here for {', '.join(missing)}: those snippets are not run")
    most = max(cfg.memory_mb, cfg.compile_memory_mb)  # a compile's budget, or the program's
    need, spare = cfg.workers * most, available_gb() * 1024
    if need > spare:  # the engine is loaded by now: what is free is what the runs may take
        warn(f"execute: {cfg.workers} runs at once of up to {most} MB each "
             f"(compiling) may take {need} MB, but {spare:.0f} MB is free beside the engine; "
             "lower execute.workers or execute.memory_mb")
    if sandbox.available() and not sandbox.grouped():
        warn(f"execute: no cgroup per run here (needs root and cgroup v1 memory and pids): each process is capped, "
             f"and a run may start {sandbox.task_cap(cfg.memory_mb, False)} (Java and node need more)")


class GraphRunner:
    """Runs questions through the compiled graph, one coroutine each, one call per step
    and backbone (`backbones`: label -> Backbone, in the config's order). A backbone's
    requests are (prompt, options, task_id): replicated servers route by the question."""

    def __init__(self, cfg: SolverConfig, backbones: dict, index=None, calibration: Calibration | None = None,
                 hardware: dict | None = None, extra: dict | None = None, fitted=None):
        """`calibration`: what the vote measured (graphs/calibrate.py; None: the config's
        weights alone); `extra`: task_id -> {calls, tokens} it cost beyond the graph (the
        question answered in every cyclic order to estimate the priors), added to that
        question's cost; `fitted`: the fitted decision (graphs/ranker.py), which reads
        `index`'s labelled questions."""
        self.calibration = calibration or Calibration(weights=cfg.vote.weights)
        handlers = {label: (lambda reqs, bb=bb: bb.achoose([p for p, _, _ in reqs], [o for _, o, _ in reqs],
                                                           [k for _, _, k in reqs]))
                    for label, bb in backbones.items()}
        if index is not None:  # neighbours serve the re-answer and answer.shots: without them, no embedding at all
            k = max(cfg.retrieve.k if cfg.reanswer.enabled else 0, cfg.answer.shots)
            handlers["index"] = lambda qs: index.query(qs, k=k, min_score=cfg.retrieve.min_score)
        if index is not None and fitted is not None:  # the fitted decision's neighbours: any similarity, copies too
            handlers["neighbours"] = lambda qs: neighbours_for(index, qs, cfg.decide.k)
        if cfg.execute.enabled:  # the sandbox's runs, in a thread: LLM calls of the same step overlap them
            handlers["execute"] = lambda jobs: asyncio.to_thread(sandbox.run_jobs, jobs, cfg.execute)
            sandbox_warnings(cfg.execute)
        if RULES[cfg.vote.rule].batched:  # a rule that reads every question at this step (weighted: Dawid-Skene)
            combine = RULES[cfg.vote.rule].combine
            handlers["vote"] = lambda items: combine([v for _, v in items], [q.letters for q, _ in items],
                                                     self.calibration)
        self.index, self.hardware, self.extra = index, hardware or {}, extra or {}
        self.batcher = StepBatcher(handlers)
        nodes = make_nodes(cfg, backbones, self.batcher, self.calibration, index, fitted)
        self.graph = build_graph(cfg, {name: self.batcher.node(fn) for name, fn in nodes.items()})

    async def _one(self, position: int, q: Question) -> dict:
        with self.batcher.question(position):
            return await self.graph.ainvoke({"question": q, "rounds": 0})

    async def _all(self, questions):
        return await asyncio.gather(*(self._one(i, q) for i, q in enumerate(questions)))

    def run(self, questions: list[Question]) -> list[Prediction]:
        states = run_coroutine(self._all(questions))
        return [self._prediction(q, s) for q, s in zip(questions, states)]

    def _prediction(self, q: Question, s: dict) -> Prediction:
        """The typed result of one question's final state; its trace gains the cost step
        (LLM prompts and tokens, sandboxed runs and their seconds, where it ran)."""
        extra = self.extra.get(q.task_id, {})
        cost = Cost(calls=s.get("calls", 0) + extra.get("calls", 0), tokens=s.get("tokens", 0) + extra.get("tokens", 0),
                    runs=s.get("runs", 0), run_seconds=round(s.get("run_seconds", 0.0), 3))
        votes, failed, cut = tally(s.get("ballots") or [])
        return Prediction(task_id=q.task_id, letter=s.get("letter"), probabilities=s.get("final") or {},
                          votes=votes, failed=failed, cut=cut, cost=cost, error=s.get("error"), found=found_in(s),
                          trace=s["trace"] + [{"step": "cost"} | cost.model_dump() | self.hardware])
