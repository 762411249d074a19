"""Labelled questions -> training examples on exactly the prompts the solver sends.

An example is the answer prompt, tokenized the way vLLM tokenizes a text prompt, then
the token of the answer letter: the one token the solver's structured choice scores.
Only that token carries a label, so the loss teaches the reply and nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.config import FinetuneConfig
from solver.data import DataError, load_questions, split_of
from solver.models import ModelError
from solver.prompts import PromptTooLong, answer_prompt
from solver.types import LETTERS, Question

IGNORE = -100  # the label torch's cross-entropy skips
CHUNK = 50  # batches per length-sorted chunk of batch_order


@dataclass
class Example:
    input_ids: list[int]  # prompt tokens, then the answer letter's token
    labels: list[int]  # IGNORE everywhere but the answer token
    letters_ids: list[int]  # the token of each option letter, option order
    answer_index: int  # the correct option


def letter_token_ids(tokenizer, letters: list[str]) -> list[int]:
    """The token that is exactly each letter: the first token vLLM's structured `choice`
    allows for that option (a prefix-space piece like SentencePiece's '▁A' decodes to ' A',
    which the grammar refuses)."""
    ids = []
    for letter in letters:
        tid = tokenizer.convert_tokens_to_ids(letter)
        if not isinstance(tid, int) or tid == tokenizer.unk_token_id or tokenizer.decode([tid]) != letter:
            raise ModelError(f"model '{tokenizer.name_or_path}': its tokenizer has no single token for the letter '{letter}'")
        ids.append(tid)
    return ids


def load_splits(path: str | Path, cfg: FinetuneConfig) -> tuple[list[Question], list[Question]]:
    """(train, val) questions: the first n_train of train_split, the first val_n of val_split."""
    questions = load_questions(path, labelled=True).questions  # unusable labels are dropped and counted there
    train = [q for q in questions if split_of(q.task_id) == cfg.train_split][: cfg.n_train]
    val = [q for q in questions if split_of(q.task_id) == cfg.val_split][: cfg.val_n]
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
    answer = q.letters.index(q.answer)
    letters_ids = letters_ids[: len(q.letters)]
    return Example(ids + [letters_ids[answer]], [IGNORE] * len(ids) + [letters_ids[answer]], letters_ids, answer)


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


def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded to the longest in the batch. Pads are masked out of attention and
    loss, so their id does not matter (0)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of example indices, grouped by length to cut padding.

    Shuffled, sorted by length within chunks of CHUNK batches (neighbours in a chunk pad
    little), then the batches shuffled so that length does not follow the step. A pure
    function of (seed, epoch): a resumed run continues the very same order.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), CHUNK * batch_size):
        part = sorted(order[start : start + CHUNK * batch_size], key=lambda i: lengths[i])
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches
