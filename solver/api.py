"""The Python API: `Solver.from_config(path_or_None).solve(question, choices)`.

It works from a plain script (no `__main__` guard needed), standard input or a notebook:
the engine runs in this process (backends.hardware.library_defaults), and while the solver
works, the libraries' chatter goes to a log file under the cache root (`Solver.log_path`),
as the CLI's does; warnings a user can act on still reach stderr through `logging`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter
from pathlib import Path

from backends.backbone import Backbone, check_backbone, make_backbone
from backends.hardware import library_defaults, machine
from core.cache import cache_path
from core.config import SolverConfig, as_graph, load_config, with_labelled
from core.data import DataError
from core.types import Prediction, Question, backbone_of
from solver.console import chatter_to_log


def preflight(run: SolverConfig, given: dict | None = None) -> None:
    """Everything a run can check before an engine starts, for every backbone it runs (but
    those `given` ready-made): models and adapters here, servers answering, files there;
    so a missing second model fails at once, not after the first engine's start."""
    for b in run.backbones:
        if b.label not in (given or {}):
            check_backbone(b)
    files = {"the solved questions to index: retrieve.data":
             run.retrieve.data if run.retrieve.enabled and not run.retrieve.index else None,
             "the labelled questions for vote.labelled":
             run.vote.labelled if run.vote.rule in ("weighted", "pool") else None,
             "the questions for vote.debias.data": run.vote.debias.data if run.vote.debias.source == "file" else None}
    for what, path in files.items():
        if path and not Path(path).is_file():
            raise DataError(f"{path}: no such file ({what})")


def _quiet(method):
    """Run a Solver method with the libraries' chatter in the solver's log file."""

    @functools.wraps(method)
    def quiet(self, *args, **kwargs):
        with chatter_to_log(self.verbose, path=self.log_path, captured=True):
            return method(self, *args, **kwargs)

    return quiet


class Solver:
    """Answers questions through the graph (graphs/), one batched call per step and
    backbone; without `graph.enabled`, the graph's answer step alone (the single pass:
    one call per batch, the questions in input order).

    `stats` counts what a report must show: questions whose text was cut to fit the
    context, and replies that could not be read.
    """

    def __init__(self, config: SolverConfig, backbone: Backbone | None = None, index=None,
                 backbones: dict[str, Backbone] | None = None, verbose: bool = False):
        """`verbose`: the libraries' chatter on this process's stdout and stderr, not in `log_path`."""
        self.verbose = verbose
        self.log_path = cache_path("logs", f"api-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
        library_defaults()
        with chatter_to_log(verbose, path=self.log_path, captured=True):
            self._start(config, backbone, index, backbones)

    def _start(self, config, backbone, index, backbones):
        given = (backbones or {}) | ({config.backbone.label: backbone} if backbone else {})
        preflight(as_graph(config), given)
        if index is None:  # a config that retrieves but names no solved questions answers without
            config, note = with_labelled(config, None)
            if note:
                logging.getLogger("solver").warning(note)
        self.config = config
        self.run_config = as_graph(config)  # what the graph runs: the single pass has every other step off
        self.index = index  # the retrieval index; default: the one the config names
        run = self.run_config
        self.fitted = self._load_fitted() if run.decide.fitted else None  # a bad artifact fails before the engines
        if run.retrieve.enabled and index is None:
            self.index = self._load_index()  # first: a bad index or data fails before the engine starts
        # label -> Backbone, in the config's order: those given (`backbone` for the first), or made
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

    def _load_fitted(self):
        from graphs.ranker import Fitted, fitted_path

        return Fitted.load(fitted_path(self.run_config.decide.fitted), self.run_config)

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
            from graphs.calibrate import calibration

            run = self.run_config
            index = self.index if run.retrieve.enabled else None
            self._graph = GraphRunner(run, self.backbones, index, calibration(run, self.backbones, self.priors),
                                      self.hardware, extra=self._extra, fitted=self.fitted)
        return self._graph

    @_quiet
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
    def from_config(cls, path: str | Path | None = None, verbose: bool = False) -> "Solver":
        """The solver a YAML config describes (None: the defaults, the embedded SmolLM2-135M)."""
        return cls(load_config(path), verbose=verbose)

    def solve(self, question: str | Question, choices: list[str] | None = None) -> Prediction:
        if not isinstance(question, Question):
            if not choices or len(choices) < 2:
                raise ValueError("a question needs at least 2 choices")
            question = Question(task_id="q", question=question, choices=list(choices))
        return self.solve_batch([question])[0]

    @_quiet
    def solve_batch(self, questions: list[Question]) -> list[Prediction]:
        self.prepare(questions)
        preds = self.graph.run(questions)
        for p in preds:
            self.stats["unread"] += not p.read
            self.stats["truncated"] += p.cut
            for voter, error in p.failed.items():
                self.failures.setdefault(backbone_of(voter), error)
        return preds

    @_quiet
    def close(self) -> None:
        for bb in self.backbones.values():
            bb.close()
