"""Prompts, rendered with the model's own chat template.

The answer prompt ends where the assistant's reply begins, so the backbone's first
token is the option letter; no free text is ever parsed.
"""

from __future__ import annotations

from solver.types import Question

ANSWER_TEMPLATE = """The following is a multiple-choice question about programming. Choose the correct option.

{description}Question: {question}

{options}

Answer with the letter of the correct option ({letters})."""

CUT_MARK = "\n[...]\n"
REPLY_TOKENS = 8  # room left in the context for the reply


class PromptTooLong(ValueError):
    """Even with the question text cut to nothing, the options overflow the context."""


def question_text(q: Question) -> str:
    """The Kaggle data prefixes every question with a literal 'Question: '."""
    return q.question.removeprefix("Question:").strip()


def render_answer(q: Question, text: str) -> list[dict]:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(q.letters, q.choices))
    desc = f"{q.problem_description.strip()}\n\n" if q.problem_description else ""
    content = ANSWER_TEMPLATE.format(
        description=desc, question=text, options=options, letters=", ".join(q.letters)
    )
    return [{"role": "user", "content": content}]


def chat(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_prompt(q: Question, tokenizer, max_len: int) -> tuple[str, bool]:
    """The chat prompt for `q`, and whether its question text had to be cut to fit `max_len`.

    A long question is cut in the middle of its text (head and tail kept: code questions
    put the ask at the end), never by dropping options.
    """
    text = question_text(q)
    prompt = chat(tokenizer, render_answer(q, text))
    budget = max_len - REPLY_TOKENS
    total = n_tokens(tokenizer, prompt)
    if total <= budget:
        return prompt, False
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(ids) - (total - budget) - n_tokens(tokenizer, CUT_MARK) - 2  # 2: merges at the seams
    while keep > 0:
        head, tail = ids[: (keep + 1) // 2], ids[len(ids) - keep // 2 :]
        cut = tokenizer.decode(head) + CUT_MARK + tokenizer.decode(tail)
        prompt = chat(tokenizer, render_answer(q, cut))
        over = n_tokens(tokenizer, prompt) - budget
        if over <= 0:
            return prompt, True
        keep -= over
    prompt = chat(tokenizer, render_answer(q, CUT_MARK.strip()))
    if n_tokens(tokenizer, prompt) > budget:
        raise PromptTooLong(f"{q.task_id}: the options alone exceed the context of {max_len} tokens")
    return prompt, True
