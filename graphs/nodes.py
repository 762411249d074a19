"""The graph's nodes: each a function of the question's state and the run's `Context`,
which asks the batcher and returns an update (graphs/build.py binds them to one run).

retrieve: the exact-duplicate shortcut and the nearest solved questions (no LLM).
execute:  the question's code run in the sandbox: the options the run is consistent with (no LLM).
answer:   one voter's probabilities: one backbone, one option order (fanned out by Send),
          without the backbone's position prior where `vote.debias` estimated one; after
          `answer.shots` solved neighbours as worked examples, if set.
vote:     the voters' probabilities combined by `vote.rule` (graphs/vote.py: RULES).
verify:   P(TRUE) that the current answer is right, from the logprobs of TRUE/FALSE.
reanswer: answer again after solved neighbours as worked examples, without the option
          verification turned down (if `reanswer.drop_rejected`); the first backbone, every order.
settle:   with a fitted decision: its LLM-free gate (graphs/ranker.py), which settles the
          question with no LLM call where it is sure enough for the question's kind.
decide:   the final letter: a duplicate's, a trusted run's, the gate's, else the fitted
          ranker's over every option's features, or without a fit the rules
          (graphs/routing.py: `decide`).

A backbone that fails (a dead server, a timeout) costs its votes on the questions of
that call, never the run: the trace says which backbone failed and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from backends.backbone import BackboneError
from core.prompts import VERDICTS, PromptTooLong, answer_prompt, verify_prompt
from core.types import Found, Question, top_letter, voter
from execution.evidence import evidence
from execution.recognise import job_for, kind_of
from graphs import vote as V
from graphs.features import evidence_of
from graphs.priors import OptionPriors
from graphs.routing import current, decide, has_examples, option_order, settled_by_run, verify_update


def neighbours_for(index, questions: list[Question], k: int, progress=None) -> list[list[tuple[str, float]]]:
    """What the fitted decision's retrieval features read: each question's k nearest solved
    questions at any similarity, copies with other options included, never the question
    itself (the index leaves its own task_id out). The graph and `solver fit` both ask this."""
    return [[(n.task_id, n.score) for n in r.neighbors]
            for r in index.query(questions, k=k, min_score=0.0, exclude_same_text=False, progress=progress)]


def found_in(s: dict) -> Found:
    """What the graph found for the question in state `s`: what a fitted decision reads now,
    and what its Prediction keeps for `solver fit`."""
    return Found(pooled=s.get("probs") or {}, duplicate=(s.get("duplicate") or {}).get("answer"),
                 executed=s.get("executed"), neighbours=s.get("found_neighbours") or [],
                 decided_by=s.get("decided_by") or "rules")


def tally(ballots: list[dict]) -> tuple[dict[str, dict[str, float]], dict[str, str], bool]:
    """The answer steps' ballots as (voter -> probabilities read, voter -> why its backbone
    failed, whether a prompt was cut): what the vote combines and a Prediction reports."""
    return ({v["voter"]: v["probs"] for v in ballots if v["probs"]},
            {v["voter"]: v["error"] for v in ballots if v.get("error")}, any(v.get("cut") for v in ballots))


def _map_back(r: dict[str, float], order: list[int], letters: list[str]) -> dict[str, float]:
    """A reply over the view's letters, as probabilities over the question's own letters."""
    probs = dict.fromkeys(letters, 0.0)
    for j, i in enumerate(order):
        probs[letters[i]] = r[letters[j]]
    return probs


@dataclass(frozen=True)
class Context:
    """What a run's nodes share: the config; `backbones`, label -> Backbone in the config's
    order (the first verifies and re-answers); the step batcher; the labelled questions'
    index; the vote's calibration; the fitted decision (graphs/ranker.py) and the option
    priors it reads (from the index)."""

    cfg: object
    backbones: dict
    batcher: object
    calibration: V.Calibration
    index: object = None
    fitted: object = None
    option_priors: object = None

    @property
    def first(self) -> str:
        return self.cfg.backbone.label


def evidence_now(s: dict, ctx: Context, votes: dict | None = None):
    """The question's Evidence as the graph holds it now (the votes once answered)."""
    return evidence_of(s["question"], found_in(s), votes or {}, ctx.index.get, ctx.option_priors)


def unbiased(ctx: Context, label: str, r: dict[str, float] | None):
    """A reply over the view's letters (= positions) without the backbone's position prior."""
    return V.without_prior(r, ctx.calibration.priors.get(label))


def prompt_for(ctx: Context, label: str, q: Question, order: list[int], examples=()):
    bb = ctx.backbones[label]
    return answer_prompt(q.in_order(order), bb.tokenizer, bb.max_model_len, examples)


def examples_for(s: dict, ctx: Context, k: int) -> list[Question]:
    """The k nearest solved neighbours at or above retrieve.min_score, nearest first."""
    min_score = ctx.cfg.retrieve.min_score
    return [ctx.index.get(n["task_id"]) for n in s.get("neighbors") or [] if n["score"] >= min_score][:k]


async def answer(s: dict, ctx: Context) -> dict:
    q, v = s["question"], s["seat"]
    order = option_order(len(q.choices), v["order"], q.task_id)
    vote = {"voter": voter(v["backbone"], v["order"]), "probs": None}
    try:
        prompt = prompt_for(ctx, v["backbone"], q, order, examples_for(s, ctx, ctx.cfg.answer.shots))
        (r,) = await ctx.batcher.submit(v["backbone"], [(prompt.text, q.letters, q.task_id)])
    except PromptTooLong as e:
        return {"ballots": [vote | {"unread": str(e)}]}
    except BackboneError as e:
        return {"ballots": [vote | {"error": str(e)}], "calls": 1, "tokens": prompt.tokens}
    r, vote["prior"] = unbiased(ctx, v["backbone"], r)
    vote["probs"] = _map_back(r, order, q.letters) if r else None
    return {"ballots": [vote | {"cut": prompt.cut}], "calls": 1, "tokens": prompt.tokens}


async def vote(s: dict, ctx: Context) -> dict:
    q, rule = s["question"], ctx.cfg.vote.rule
    votes, failed, cut = tally(s["ballots"])
    if not votes:
        probs = {}
    elif V.RULES[rule].batched:  # reads the whole step's batch: the batcher's "vote" call (graphs/build.py)
        (probs,) = await ctx.batcher.submit("vote", [(q, votes)])
    else:
        (probs,) = V.RULES[rule].combine([votes], [q.letters], ctx.calibration)
    step = {"step": "vote", "rule": rule, "votes": votes, "failed": failed, "probabilities": probs, "cut": cut}
    if unread := {v["voter"]: v["unread"] for v in s["ballots"] if v.get("unread")}:
        step["unread"] = unread  # the prompt could not fit the context
    if rule == "pool":
        step["weights"] = ctx.calibration.weights
    if any(v.get("prior") for v in s["ballots"]):  # the position priors divided out (debias)
        step["priors"] = {v["voter"]: v["prior"] for v in s["ballots"] if v.get("prior")}
    update = {"probs": probs, "trace": [step]}
    if not votes and len(failed) == len(s["ballots"]):
        update["error"] = "every backbone failed: " + "; ".join(failed.values())
    return update


async def retrieve(s: dict, ctx: Context) -> dict:
    (r,) = await ctx.batcher.submit("index", [s["question"]])
    dup = r.duplicate.model_dump() if ctx.cfg.retrieve.duplicates and r.duplicate else None
    neighbors = [n.model_dump() for n in r.neighbors]
    update = {"duplicate": dup, "neighbors": neighbors,
              "trace": [{"step": "retrieve", "duplicate": dup, "note": r.note, "neighbors": neighbors}]}
    if ctx.fitted is not None and not dup:
        (update["found_neighbours"],) = await ctx.batcher.submit("neighbours", [s["question"]])
    return update


async def settle(s: dict, ctx: Context) -> dict:
    letter, probs, moved = ctx.fitted.settles(evidence_now(s, ctx))
    return {"settled": letter, "gated": probs,
            "trace": [{"step": "settle", "letter": letter, "probabilities": probs, "moved_by": moved}]}


async def execute(s: dict, ctx: Context) -> dict:
    q, cfg = s["question"], ctx.cfg
    job = job_for(q)
    if job is None:
        return {"executed": None, "trace": [{"step": "execute", "ran": False}]}
    (results,) = await ctx.batcher.submit("execute", [job])
    e = evidence(q, job, results)
    executed = {"check": e.check, "status": e.status, "consistent": e.consistent, "settled": e.settled}
    seconds = round(sum(r.seconds for r in results if not r.cached), 3)  # a cached run cost nothing now
    step = {"step": "execute", "ran": True, "language": job.language, "runs": len(results), "seconds": seconds,
            **executed, "trusted": settled_by_run({"executed": executed}, cfg) is not None,
            "ruled_out": e.ruled_out(q.letters) if e.check in cfg.execute.rule_out and not e.settled else []}
    if stopped := [r for r in results if r.status in ("unavailable", "killed")]:
        step["why"] = (stopped[0].stderr.strip().splitlines() or [stopped[0].status])[-1]
    if peaks := [r.peak_mb for r in results if r.peak_mb is not None]:
        step["peak_mb"] = max(peaks)  # the most memory one run's processes held together
    return {"executed": executed, "runs": len(results), "run_seconds": seconds, "trace": [step]}


async def verify(s: dict, ctx: Context) -> dict:
    q, cfg = s["question"], ctx.cfg
    letter = top_letter(current(s, cfg))
    bb = ctx.backbones[ctx.first]
    prompt = verify_prompt(q, letter, bb.tokenizer, bb.max_model_len)
    try:
        (r,) = await ctx.batcher.submit(ctx.first, [(prompt.text, VERDICTS, q.task_id)])
    except BackboneError as e:
        r = None
        step = {"error": str(e)}
    else:
        step = {}
    p_true = r["TRUE"] if r else cfg.verify.accept  # unreadable or failed: no evidence either way
    update = verify_update(s, p_true, cfg)
    step |= {"step": "verify", "letter": letter, "p_true": p_true, "read": r is not None,
             "rejected": update["rejected"]}
    return update | {"calls": 1, "tokens": prompt.tokens, "trace": [step]}


async def _reanswer_probs(q: Question, keep: list[int], examples: list, ctx: Context, step: dict):
    """The first backbone's answer over the options kept, in every option order, averaged:
    (probabilities or None if none could be read, LLM calls, tokens)."""
    if len(keep) == 1:
        return {k: float(k == q.letters[keep[0]]) for k in q.letters}, 0, 0
    views = [[keep[i] for i in option_order(len(keep), k, q.task_id)] for k in range(ctx.cfg.answer.orders)]
    prompts = [prompt_for(ctx, ctx.first, q, v, examples) for v in views]
    try:
        results = await ctx.batcher.submit(ctx.first, [(p.text, q.letters[: len(keep)], q.task_id) for p in prompts])
    except BackboneError as e:
        results, step["error"] = [], str(e)
    read = {i: _map_back(unbiased(ctx, ctx.first, r)[0], v, q.letters)
            for i, (v, r) in enumerate(zip(views, results)) if r}
    return (V.mean(read, q.letters) if read else None), len(prompts), sum(p.tokens for p in prompts)


async def reanswer(s: dict, ctx: Context) -> dict:
    q, cfg = s["question"], ctx.cfg
    rejected = set(s.get("rejected") or []) if cfg.reanswer.drop_rejected else set()
    keep = [i for i, letter in enumerate(q.letters) if letter not in rejected]
    examples = examples_for(s, ctx, cfg.retrieve.k) if has_examples(s, cfg) else []
    before = top_letter(current(s, cfg))
    step = {"step": "reanswer", "examples": [e.task_id for e in examples], "removed": sorted(rejected)}
    probs, calls, tokens = await _reanswer_probs(q, keep, examples, ctx, step)
    update = {"reprobs": probs, "rounds": s.get("rounds", 0) + 1, "calls": calls, "tokens": tokens}
    after = top_letter(current(s | update, cfg)) if probs else before
    step |= {"probabilities": probs, "changed": [before, after] if after != before else None}
    return update | {"trace": [step]}


def decided_by(s: dict, ctx: Context) -> str:
    """Which evidence decides: an exact duplicate, a trusted run, the fitted gate, the
    fitted ranker (where the LLM answered), else the rules."""
    if s.get("duplicate"):
        return "duplicate"
    if settled_by_run(s, ctx.cfg):
        return "run"
    if s.get("settled"):
        return "settle"
    return "ranker" if ctx.fitted is not None and s.get("probs") else "rules"


async def decide_node(s: dict, ctx: Context) -> dict:
    by = decided_by(s, ctx)
    if by == "rules" and not s.get("probs"):
        return {"letter": None, "final": {}, "trace": [{"step": "decide", "letter": None, "unread": True}]}
    step = {"step": "decide", "by": by}
    if by == "settle":
        final = s["gated"]
    elif by == "ranker":
        final, step["moved_by"] = ctx.fitted.score(evidence_now(s, ctx, tally(s.get("ballots") or [])[0]))
    else:
        final = decide(s, ctx.cfg)[1]
    letter = top_letter(final)
    first_letter = top_letter(s["probs"]) if s.get("probs") else None
    changed = [first_letter, letter] if first_letter and first_letter != letter else None
    return {"letter": letter, "final": final, "decided_by": by,
            "trace": [step | {"letter": letter, "changed": changed}]}


NODES = {"retrieve": retrieve, "execute": execute, "settle": settle, "answer": answer, "vote": vote, "verify": verify,
         "reanswer": reanswer, "decide": decide_node}


def make_nodes(cfg, backbones: dict, batcher, calibration: V.Calibration, index=None, fitted=None) -> dict:
    """Every node bound to one run's Context."""
    option_priors = OptionPriors.build(index.records, kind_of=kind_of) if fitted is not None else None
    ctx = Context(cfg, backbones, batcher, calibration, index, fitted, option_priors)
    return {name: partial(fn, ctx=ctx) for name, fn in NODES.items()}
