"""Prompt building with the embedded model's real tokenizer and chat template."""

import pytest

from core.prompts import PromptTooLong, answer_prompt, n_tokens
from core.types import Question


def test_short_prompt_is_whole_and_templated(tokenizer):
    q = Question(task_id="t", question="Question: What is 1+1?", choices=["1", "2", "3"])
    prompt, cut, tokens = answer_prompt(q, tokenizer, 2048)
    assert tokens == n_tokens(tokenizer, prompt)
    assert not cut and "What is 1+1?" in prompt and "Question: Question:" not in prompt
    assert "A. 1\nB. 2\nC. 3" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_long_question_is_cut_in_the_middle_keeping_options(tokenizer):
    body = "HEAD_MARK " + " ".join(f"x{i} = {i}" for i in range(3000)) + " TAIL_MARK"
    q = Question(task_id="t", question=body, choices=["opt one", "opt two", "opt three", "opt four"])
    prompt, cut, tokens = answer_prompt(q, tokenizer, 1024)
    assert tokens == n_tokens(tokenizer, prompt)
    assert cut and n_tokens(tokenizer, prompt) <= 1024 - 8
    assert "HEAD_MARK" in prompt and "TAIL_MARK" in prompt and "[...]" in prompt
    assert all(f"{letter}. {c}" in prompt for letter, c in zip("ABCD", q.choices))


def test_options_that_overflow_alone_are_refused(tokenizer):
    q = Question(task_id="t", question="q", choices=["word " * 400, "other " * 400])
    with pytest.raises(PromptTooLong, match="t: the options alone exceed"):
        answer_prompt(q, tokenizer, 512)
