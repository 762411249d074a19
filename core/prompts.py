"""Prompts, rendered with the model's own chat template.

Every prompt ends where the assistant's reply begins, so the backbone's first token is
the option letter (or TRUE/FALSE); no free text is ever parsed. Every prompt is fitted
to the context the same way: the question text is cut in the middle, never an option.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from core.types import Question, question_body

ANSWER_TEMPLATE = """The following is a multiple-choice question about programming. Choose the correct option.

{description}Question: {question}

{options}

Answer with the letter of the correct option ({letters})."""

VERIFY_TEMPLATE = """The following is a multiple-choice question about programming, with a proposed answer.

{description}Question: {question}

{options}

Proposed answer: {letter}. {choice}

Is the proposed answer correct? Answer TRUE or FALSE."""

CUT_MARK = "\n[...]\n"
REPLY_TOKENS = 8  # room left in the context for the reply
# Text beyond max_len x this many characters, at either end, cannot fit: a huge question
# (a 14 MB field) is cut to that before it is tokenized, which would take minutes.
CHARS_PER_TOKEN = 32
VERDICTS = ["TRUE", "FALSE"]


class Prompt(NamedTuple):
    text: str
    cut: bool  # the question text had to be cut to fit the context
    tokens: int  # its length, counted while fitting it (the cost reported in traces)


class PromptTooLong(ValueError):
    """Even with the question text cut to nothing, the options overflow the context."""


def question_text(q: Question) -> str:
    """The Kaggle data prefixes every question with a literal 'Question: '."""
    return question_body(q.question)


def _fields(q: Question, text: str) -> dict:
    return dict(
        description=f"{q.problem_description.strip()}\n\n" if q.problem_description else "",
        question=text,
        options="\n".join(f"{letter}. {choice}" for letter, choice in zip(q.letters, q.choices)),
        letters=", ".join(q.letters),
    )


def answer_messages(q: Question, text: str) -> list[dict]:
    return [{"role": "user", "content": ANSWER_TEMPLATE.format(**_fields(q, text))}]


def verify_messages(q: Question, text: str, letter: str) -> list[dict]:
    choice = q.choices[q.letters.index(letter)]
    return [{"role": "user", "content": VERIFY_TEMPLATE.format(**_fields(q, text), letter=letter, choice=choice)}]


def examples_messages(examples: list[Question]) -> list[dict]:
    """Solved questions as earlier turns of the conversation: the question, then its letter."""
    turns = []
    for ex in examples:
        turns += answer_messages(ex, question_text(ex)) + [{"role": "assistant", "content": ex.answer}]
    return turns


def chat(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit(q: Question, render: Callable[[str], list[dict]], tokenizer, max_len: int) -> Prompt:
    """The chat prompt `render(question text)`, fitted to `max_len` tokens.

    A long question is cut in the middle of its text (head and tail kept: code questions
    put the ask at the end), never by dropping options.
    """
    text = question_text(q)
    ends = max_len * CHARS_PER_TOKEN
    precut = len(text) > 2 * ends + len(CUT_MARK)
    if precut:
        text = text[:ends] + CUT_MARK + text[-ends:]
    prompt = chat(tokenizer, render(text))
    budget = max_len - REPLY_TOKENS
    total = n_tokens(tokenizer, prompt)
    if total <= budget:
        return Prompt(prompt, precut, total)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(ids) - (total - budget) - n_tokens(tokenizer, CUT_MARK) - 2  # 2: merges at the seams
    while keep > 0:
        head, tail = ids[: (keep + 1) // 2], ids[len(ids) - keep // 2 :]
        prompt = chat(tokenizer, render(tokenizer.decode(head) + CUT_MARK + tokenizer.decode(tail)))
        over = n_tokens(tokenizer, prompt) - budget
        if over <= 0:
            return Prompt(prompt, True, budget + over)
        keep -= over
    prompt = chat(tokenizer, render(CUT_MARK.strip()))
    total = n_tokens(tokenizer, prompt)
    if total > budget:
        raise PromptTooLong(f"{q.task_id}: the options alone exceed the context of {max_len} tokens")
    return Prompt(prompt, True, total)


def answer_prompt(q: Question, tokenizer, max_len: int, examples: list[Question] = ()) -> Prompt:
    """Answer `q`, optionally after solved examples; examples that do not fit are dropped
    (the farthest last in the list first), the question's own options never."""
    examples = list(examples)
    while examples:
        shots = examples_messages(examples)
        prompt = chat(tokenizer, shots + answer_messages(q, question_text(q)))
        total = n_tokens(tokenizer, prompt)
        if total <= max_len - REPLY_TOKENS:
            return Prompt(prompt, False, total)
        examples.pop()
    return fit(q, lambda text: answer_messages(q, text), tokenizer, max_len)


def verify_prompt(q: Question, letter: str, tokenizer, max_len: int) -> Prompt:
    return fit(q, lambda text: verify_messages(q, text, letter), tokenizer, max_len)
