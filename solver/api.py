"""The Python API: `Solver.from_config(path_or_None).solve(question, choices)`."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from solver.backbone import Backbone, make_backbone
from solver.config import SolverConfig, as_graph, load_config, with_labelled
from solver.data import DataError
from solver.hardware import machine
from solver.types import Prediction, Question, backbone_of


class Solver:
    """Answers questions through the graph (graphs/), one batched call per step and
    backbone; without `graph.enabled`, the graph's answer step alone (the single pass:
    one call per batch, the questions in input order).

    `stats` counts what a report must show: questions whose text was cut to fit the
    context, and replies that could not be read.
    """

    def __init__(self, config: SolverConfig, backbone: Backbone | None = None, index=None,
                 backbones: dict[str, Backbone] | None = None):
        if index is None:  # a config that retrieves but names no solved questions answers without
            config, note = with_labelled(config, None)
            if note:
                logging.getLogger("solver").warning(note)
        self.config = config
        self.run_config = as_graph(config)  # what the graph runs: the single pass has every other step off
        self.index = index  # the retrieval index; default: the one the config names
        run = self.run_config
        if run.retrieve.enabled and index is None:
            self.index = self._load_index()  # first: a bad index or data fails before the engine starts
        labelled = run.vote.labelled if run.vote.rule in ("weighted", "pool") else None
        if labelled and not Path(labelled).is_file():
            raise DataError(f"{labelled}: no such file (the labelled questions for vote.labelled)")
        debias = run.vote.debias
        if debias.source == "file" and not Path(debias.data).is_file():
            raise DataError(f"{debias.data}: no such file (the questions for vote.debias.data)")
        # label -> Backbone, in the config's order: those given (`backbone` for the first), or made
        given = (backbones or {}) | ({config.backbone.label: backbone} if backbone else {})
        self.backbones = {b.label: given.get(b.label) or make_backbone(b) for b in run.backbones}
        self.stats: Counter = Counter()
        self.failures: dict[str, str] = {}  # backbone label -> its first error
        self._graph = None
        self.priors: dict | None = None  # label -> position prior (vote.debias), once prepared
        self._extra: dict = {}  # task_id -> LLM calls and tokens the priors cost it

    @property
    def hardware(self) -> dict:
        """What every trace's cost step records: where it ran, and in which dtype."""
        return {"dtype": {label: bb.dtype for label, bb in self.backbones.items()}, "machine": machine()}

    @property
    def backbone(self) -> Backbone:
        """The first backbone: the single pass's, and the one that verifies and re-answers."""
        return next(iter(self.backbones.values()))

    def _load_index(self):
        from index.cached import cached_index
        from index.store import Index

        r = self.run_config.retrieve
        return Index.load(r.index) if r.index else cached_index(r.data, r.split)

    @property
    def graph(self):
        """The compiled graph and its index, made on first use."""
        if self._graph is None:
            from graphs.build import GraphRunner
            from graphs.calibrate import labelled_confusion, labelled_weights

            run, confusion, weights = self.run_config, None, None
            if run.vote.rule == "weighted" and run.vote.labelled:
                confusion = labelled_confusion(run, self.backbones)
            if run.vote.rule == "pool" and run.vote.labelled:
                weights = labelled_weights(run, self.backbones, self.priors) | run.vote.weights  # the config's win
            index = self.index if run.retrieve.enabled else None
            self._graph = GraphRunner(run, self.backbones, index, confusion, self.hardware,
                                      priors=self.priors, weights=weights, extra=self._extra)
        return self._graph

    def prepare(self, questions: list[Question]) -> None:
        """What the vote measures on the whole input before answering any of it: each
        backbone's position prior (vote.debias, source run: from a seeded share of these
        questions, so a resumed run estimates the same). Without it, the first batch is used."""
        if self.priors is not None or self.run_config.vote.debias.source == "none":
            return
        from graphs.calibrate import position_priors

        self.priors, self._extra = position_priors(self.run_config, self.backbones, questions)
        self._graph = None  # rebuilt with the priors

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
        self.prepare(questions)
        preds = self.graph.run(questions)
        for p in preds:
            self.stats["unread"] += not p.read
            self.stats["truncated"] += p.cut
            for voter, error in p.failed.items():
                self.failures.setdefault(backbone_of(voter), error)
        return preds

    def close(self) -> None:
        for bb in self.backbones.values():
            bb.close()
