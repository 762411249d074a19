"""The state one question carries through the graph."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from core.types import Question


class State(TypedDict, total=False):
    question: Question
    seat: dict  # a Send's payload to `answer`, the voter it answers as: {"backbone": label, "order": k}
    duplicate: dict | None  # {"task_id", "answer"}: an exact solved copy, its letter mapped to ours
    neighbors: list[dict]  # [{"task_id", "score"}], best first
    executed: dict | None  # the run's evidence: {"check", "status", "consistent", "settled"}
    found_neighbours: list[tuple[str, float]]  # what the fitted decision's retrieval features read
    settled: str | None  # the letter the fitted gate settled with no LLM call
    gated: dict[str, float]  # the gate's probabilities
    decided_by: str  # duplicate, run, settle, ranker, rules
    ballots: Annotated[list[dict], operator.add]  # each voter's {"voter", "probs" | None, "error" | None}
    probs: dict[str, float]  # the vote's combination of the voters' probabilities
    verdicts: Annotated[list[float], operator.add]  # P(TRUE) of each verification
    rejected: Annotated[list[str], operator.add]  # letters verification turned down
    reprobs: dict[str, float] | None  # the re-answer's probabilities
    rounds: int
    final: dict[str, float]  # decide's probabilities
    letter: str | None
    error: str | None  # why there is no letter when every backbone failed
    calls: Annotated[int, operator.add]  # LLM prompts sent for this question
    tokens: Annotated[int, operator.add]  # their prompt tokens
    runs: Annotated[int, operator.add]  # sandboxed runs of the question's code
    run_seconds: Annotated[float, operator.add]  # their seconds (a cached run: none)
    trace: Annotated[list[dict], operator.add]
