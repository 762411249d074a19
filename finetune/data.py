"""Labelled questions -> training examples on exactly the prompts the solver sends.

An example is the answer prompt, tokenized the way vLLM tokenizes a text prompt, and the
token of its answer letter: the one token the solver scores after the prompt. Only that
token carries a label, so the loss teaches the reply and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backends.models import ModelError
from core.data import DataError, in_split, load_questions
from core.prompts import PromptTooLong, answer_prompt
from core.types import LETTERS, Question
from finetune.config import FinetuneConfig


@dataclass
class Example:
    prompt: list[int]  # the answer prompt's tokens, as vLLM tokenizes the text
    letters_ids: list[int]  # the token of each option letter, option order
    answer_index: int  # the correct option: the loss is on letters_ids[answer_index] after the prompt


def letter_token_ids(tokenizer, letters: list[str]) -> list[int]:
    """The token that is exactly each letter: the first token vLLM's structured `choice`
    allows for that option (a prefix-space piece like SentencePiece's '▁A' decodes to ' A',
    which the grammar refuses)."""
    ids = []
    for letter in letters:
        tid = tokenizer.convert_tokens_to_ids(letter)
        if not isinstance(tid, int) or tid == tokenizer.unk_token_id or tokenizer.decode([tid]) != letter:
            raise ModelError(f"model '{tokenizer.name_or_path}': its tokenizer has no single token for the letter "
                             f"'{letter}'")
        ids.append(tid)
    return ids


def load_splits(path: str | Path, cfg: FinetuneConfig) -> tuple[list[Question], list[Question]]:
    """(train, val) questions: the first n_train of train_split, the first val_n of val_split."""
    questions = load_questions(path, labelled=True).questions  # unusable labels are dropped and counted there
    train = in_split(questions, cfg.train_split)[: cfg.n_train]
    val = in_split(questions, cfg.val_split)[: cfg.val_n]
    for name, rows, split in (("training", train, cfg.train_split), ("validation", val, cfg.val_split)):
        if not rows:
            raise DataError(f"{path}: no usable {name} rows (no labelled question falls in split '{split}')")
    return train, val


def retrieved_shots(data: str | Path, questions: list[Question], cfg: FinetuneConfig) -> dict[str, list[Question]]:
    """Each question's k nearest solved training questions, nearest first, as the solver's
    re-answer picks them (the index never returns a question itself, nor a copy of its text)."""
    from index.cached import cached_index

    index = cached_index(str(data), cfg.train_split)
    results = index.query(questions, k=cfg.k, min_score=cfg.min_score)
    return {r.task_id: [index.get(n.task_id) for n in r.neighbors] for r in results}


def make_example(q: Question, tokenizer, max_len: int, letters_ids: list[int], shots: list[Question] = ()) -> Example:
    prompt = answer_prompt(q, tokenizer, max_len, shots)
    ids = tokenizer(prompt.text)["input_ids"]  # special tokens as vLLM adds them to a text prompt
    return Example(ids, letters_ids[: len(q.letters)], q.letters.index(q.answer))


def build_examples(questions: list[Question], tokenizer, max_len: int,
                   shots: dict[str, list[Question]] | None = None) -> tuple[list[Example], int]:
    """(examples, questions dropped because even their options overflow max_len)."""
    letters_ids = letter_token_ids(tokenizer, list(LETTERS[: max(len(q.choices) for q in questions)]))
    examples, too_long = [], 0
    for q in questions:
        try:
            examples.append(make_example(q, tokenizer, max_len, letters_ids, (shots or {}).get(q.task_id, ())))
        except PromptTooLong:
            too_long += 1
    return examples, too_long
