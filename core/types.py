"""The shared vocabulary: every module speaks in these few types (the simple-evals way)."""

from __future__ import annotations

import string
from collections.abc import Callable

from pydantic import BaseModel, Field

LETTERS = string.ascii_uppercase  # option i is LETTERS[i]; 2 to 26 options
Progress = Callable[[int, int], None]  # a library's (done, total) report; the application draws it


def letters_for(n_options: int) -> list[str]:
    """The valid answer letters of a question with `n_options` options."""
    return list(LETTERS[:n_options])


def question_body(text: str) -> str:
    """A question's text without the literal 'Question:' the Kaggle data starts it with."""
    return text.strip().removeprefix("Question:").strip()


def voter(backbone: str, order: int) -> str:
    """A voter's name: one backbone reading the options in one order."""
    return f"{backbone}@{order}"


def backbone_of(voter: str) -> str:
    """The backbone label of a voter's name (`voter`)."""
    return voter.rsplit("@", 1)[0]


def top_letter(probs: dict[str, float]) -> str:
    """The most probable letter; ties go to the earlier letter (never a random one)."""
    return max(probs, key=lambda k: (probs[k], -ord(k[0])))


class UserError(ValueError):
    """Bad input from the user (a file, a row, a field, a config key): the CLI prints its
    one line and exits with status 2. Every module's input errors derive from it."""


class Question(BaseModel):
    """One validated multiple-choice question; `answer` is a clean letter or None."""

    task_id: str
    question: str
    choices: list[str]
    answer: str | None = None
    group: str = ""  # CodeMMLU subset, or the task_id's alphabetic prefix
    problem_description: str | None = None

    @property
    def letters(self) -> list[str]:
        return letters_for(len(self.choices))

    def in_order(self, order: list[int]) -> "Question":
        """The question with its options shown in `order` (a voter's view of it)."""
        return self.model_copy(update={"choices": [self.choices[i] for i in order]})


class Cost(BaseModel):
    """What answering one question cost: LLM prompts and their tokens, sandboxed runs and
    their seconds (a cached run costs nothing)."""

    calls: int = 0
    tokens: int = 0
    runs: int = 0
    run_seconds: float = 0.0


class Found(BaseModel):
    """What the graph found for a question before it decided: the evidence a fitted decision
    reads (graphs/features.py), kept on the Prediction so a fit reads it from the journal."""

    pooled: dict[str, float] = Field(default_factory=dict)  # the vote's combination, before any option is ruled out
    duplicate: str | None = None  # an exact solved copy's answer, as this question's letter
    executed: dict | None = None  # the sandboxed run's evidence: check, status, consistent, settled
    neighbours: list[tuple[str, float]] = Field(default_factory=list)  # solved (task_id, cosine), best first
    decided_by: str = "rules"  # duplicate, run, settle (the LLM-free fit), ranker, rules


class Prediction(BaseModel):
    """What the solver says about one question.

    `letter` is None only when no reply could be read, or (`error`) every backbone failed;
    such a question is counted as unread (and wrong), never given a made-up letter.
    `votes`, `failed`, `cut` and `cost` are what reports and calibration read; `trace` (each
    step's record, for people) is output only.
    """

    task_id: str
    letter: str | None
    probabilities: dict[str, float] = Field(default_factory=dict)
    votes: dict[str, dict[str, float]] = Field(default_factory=dict)  # voter -> its probabilities
    failed: dict[str, str] = Field(default_factory=dict)  # voter -> why its backbone failed
    cut: bool = False  # the question's text was cut to fit a backbone's context
    cost: Cost = Field(default_factory=Cost)
    found: Found = Field(default_factory=Found)
    trace: list[dict] = Field(default_factory=list)
    error: str | None = None

    @property
    def read(self) -> bool:
        return self.letter is not None
