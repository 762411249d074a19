"""The graph's nodes: each reads the state, asks the batcher, and returns an update.

retrieve: the exact-duplicate shortcut and the nearest solved questions (no LLM).
answer:   probabilities over the options (averaged with the reversed order if `permute`).
verify:   P(TRUE) that the current answer is right, from the logprobs of TRUE/FALSE.
reanswer: answer again after solved neighbours as worked examples, without the option
          verification turned down (if `eliminate`).
decide:   the final letter (graphs/routing.py: `decide`).
"""

from __future__ import annotations

from solver.prompts import VERDICTS, answer_prompt, verify_prompt
from solver.types import Question, top_letter

from graphs.routing import current, decide, has_examples, verify_update


def _view(q: Question, order: list[int]) -> Question:
    return q.model_copy(update={"choices": [q.choices[i] for i in order]})


def make_nodes(cfg, backbone, batcher, index=None) -> dict:
    tok, max_len = backbone.tokenizer, backbone.max_model_len

    async def ask(q: Question, order: list[int], examples=()) -> tuple[dict | None, int, int]:
        """Probabilities over q's letters for the options `order` keeps (averaged over the
        given and the reversed order if `permute`); None if no reply could be read."""
        views = [order] + ([order[::-1]] if cfg.answer.permute and len(order) > 1 else [])
        prompts = [answer_prompt(_view(q, v), tok, max_len, examples) for v in views]
        letters = [q.letters[: len(order)]] * len(views)
        results = await batcher.submit("llm", [(p.text, o) for p, o in zip(prompts, letters)])
        probs = dict.fromkeys(q.letters, 0.0)
        read = [(v, r) for v, r in zip(views, results) if r is not None]
        for v, r in read:
            for j, i in enumerate(v):
                probs[q.letters[i]] += r[q.letters[j]] / len(read)
        return (probs if read else None), len(prompts), sum(p.tokens for p in prompts)

    async def retrieve(s):
        (r,) = await batcher.submit("index", [s["question"]])
        dup = r.duplicate.model_dump() if cfg.retrieve.duplicates and r.duplicate else None
        neighbors = [n.model_dump() for n in r.neighbors]
        return {"duplicate": dup, "neighbors": neighbors,
                "trace": [{"step": "retrieve", "duplicate": dup, "note": r.note, "neighbors": neighbors}]}

    async def answer(s):
        q = s["question"]
        probs, calls, tokens = await ask(q, list(range(len(q.choices))))
        return {"probs": probs or {}, "calls": calls, "tokens": tokens,
                "trace": [{"step": "answer", "probabilities": probs, "permuted": cfg.answer.permute}]}

    async def verify(s):
        q = s["question"]
        letter = top_letter(current(s, cfg))
        prompt = verify_prompt(q, letter, tok, max_len)
        (r,) = await batcher.submit("llm", [(prompt.text, VERDICTS)])
        p_true = r["TRUE"] if r else cfg.verify.accept  # unreadable: no evidence either way
        update = verify_update(s, p_true, cfg)
        step = {"step": "verify", "letter": letter, "p_true": p_true, "read": r is not None, "rejected": update["rejected"]}
        return update | {"calls": 1, "tokens": prompt.tokens, "trace": [step]}

    async def reanswer(s):
        q = s["question"]
        rejected = set(s.get("rejected") or []) if cfg.reanswer.eliminate else set()
        keep = [i for i, letter in enumerate(q.letters) if letter not in rejected]
        examples = []
        if has_examples(s, cfg):
            examples = [index.get(n["task_id"]) for n in s["neighbors"] if n["score"] >= cfg.retrieve.min_score]
            examples = examples[: cfg.retrieve.k]
        before = top_letter(current(s, cfg))
        if len(keep) == 1:
            probs, calls, tokens = {k: float(k == q.letters[keep[0]]) for k in q.letters}, 0, 0
        else:
            probs, calls, tokens = await ask(q, keep, examples)
        update = {"reprobs": probs, "rounds": s.get("rounds", 0) + 1, "calls": calls, "tokens": tokens}
        after = top_letter(current(s | update, cfg)) if probs else before
        step = {"step": "reanswer", "examples": [e.task_id for e in examples], "removed": sorted(rejected),
                "probabilities": probs, "changed": [before, after] if after != before else None}
        return update | {"trace": [step]}

    async def decide_node(s):
        if not s.get("probs") and not s.get("duplicate"):
            return {"letter": None, "final": {}, "trace": [{"step": "decide", "letter": None, "unread": True}]}
        letter, final = decide(s, cfg)
        first = top_letter(s["probs"]) if s.get("probs") else None
        step = {"step": "decide", "letter": letter, "changed": [first, letter] if first and first != letter else None}
        return {"letter": letter, "final": final, "trace": [step]}

    return {"retrieve": retrieve, "answer": answer, "verify": verify, "reanswer": reanswer, "decide": decide_node}
