"""The state one question carries through the graph."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from solver.types import Question


class State(TypedDict, total=False):
    question: Question
    duplicate: dict | None  # {"task_id", "answer"}: an exact solved copy, its letter mapped to ours
    neighbors: list[dict]  # [{"task_id", "score"}], best first
    probs: dict[str, float]  # the answer step's probabilities
    verdicts: Annotated[list[float], operator.add]  # P(TRUE) of each verification
    rejected: Annotated[list[str], operator.add]  # letters verification turned down
    reprobs: dict[str, float] | None  # the re-answer's probabilities
    rounds: int
    final: dict[str, float]  # decide's probabilities
    letter: str | None
    calls: Annotated[int, operator.add]  # LLM prompts sent for this question
    tokens: Annotated[int, operator.add]  # their prompt tokens
    trace: Annotated[list[dict], operator.add]
