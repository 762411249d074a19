"""The Python API: `Solver.from_config(path_or_None).solve(question, choices)`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from solver.backbone import Backbone, make_backbone
from solver.config import SolverConfig, load_config
from solver.prompts import PromptTooLong, answer_prompt
from solver.types import Prediction, Question, top_letter


class Solver:
    """Answers questions: the single pass (one batched backbone call per batch), or the
    graph (graphs/) when `graph.enabled`, also one batched call per step.

    `stats` counts what a report must show: questions whose text was cut to fit the
    context, and replies that could not be read.
    """

    def __init__(self, config: SolverConfig, backbone: Backbone | None = None, index=None):
        self.config = config
        self.index = index  # the retrieval index; default: the one the config names
        if config.graph.enabled and config.retrieve.enabled and index is None:
            self.index = self._load_index()  # first: a bad index or data fails before the engine starts
        self.backbone = backbone or make_backbone(config.backbone)
        self.stats: Counter = Counter()
        self._graph = None

    def _load_index(self):
        from index.cached import cached_index
        from index.store import Index

        r = self.config.retrieve
        return Index.load(r.index) if r.index else cached_index(r.data, r.split)

    @property
    def graph(self):
        """The compiled graph and its index, made on first use."""
        if self._graph is None:
            from graphs.build import GraphRunner

            self._graph = GraphRunner(self.config, self.backbone, self.index if self.config.retrieve.enabled else None)
        return self._graph

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> "Solver":
        return cls(load_config(path))

    def solve(self, question: str | Question, choices: list[str] | None = None) -> Prediction:
        if not isinstance(question, Question):
            if not choices or len(choices) < 2:
                raise ValueError("a question needs at least 2 choices")
            question = Question(task_id="q", question=question, choices=list(choices))
        return self.solve_batch([question])[0]

    def solve_batch(self, questions: list[Question]) -> list[Prediction]:
        if self.config.graph.enabled:
            preds = self.graph.run(questions)
            self.stats["unread"] += sum(not p.read for p in preds)
            return preds
        asked, preds = [], {}
        for q in questions:
            try:
                prompt = answer_prompt(q, self.backbone.tokenizer, self.backbone.max_model_len)
            except PromptTooLong as e:
                self.stats["unread"] += 1
                preds[q.task_id] = Prediction(task_id=q.task_id, letter=None, trace=[{"step": "answer", "error": str(e)}])
                continue
            self.stats["truncated"] += prompt.cut
            asked.append((q, prompt))
        results = self.backbone.choose([p.text for _, p in asked], [q.letters for q, _ in asked]) if asked else []
        for (q, prompt), probs in zip(asked, results):
            step = {"step": "answer", "backbone": self.backbone.name, "probabilities": probs, "truncated": prompt.cut}
            cost = {"step": "cost", "calls": 1, "tokens": prompt.tokens}
            if probs is None:
                self.stats["unread"] += 1
                preds[q.task_id] = Prediction(task_id=q.task_id, letter=None, trace=[step, cost])
            else:
                letter = top_letter(probs)
                preds[q.task_id] = Prediction(task_id=q.task_id, letter=letter, probabilities=probs, trace=[step, cost])
        return [preds[q.task_id] for q in questions]

    def close(self) -> None:
        self.backbone.close()
