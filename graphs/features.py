"""Per-option features of one question, for the ranker that picks the final letter.

A registry (the lm-evaluation-harness way): each feature is a pure function of the
`Evidence` the graph holds for a question, one value per option in the question's order,
registered with its group and a one-sentence doc. `matrix(ev, names)` stacks them for
LightGBM. Features of the `text` and `prior` groups read how the benchmark was built (its
distractors' edits, its reused option texts), not what the code does: eval/fit_probe.py
measures what they buy, with and without them. Only the `model` group needs an LLM call;
its per-voter features are named `logp@VOTER` (`voter_features`), one per voter a config has.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.config import DecideConfig
from core.prompts import question_text
from core.types import LETTERS, Found, Question
from execution.recognise import KINDS, code_of, kind_of
from graphs.priors import OptionPriors
from index.embed import normalise, normalise_option


@dataclass(frozen=True)
class Feature:
    name: str
    group: str
    doc: str  # one sentence
    fn: Callable[[Evidence], list[float]]  # one value per option, in the question's order


FEATURES: dict[str, Feature] = {}


def feature(group: str, doc: str):
    """Register the decorated function as a feature named after it."""
    def register(fn):
        FEATURES[fn.__name__] = Feature(fn.__name__, group, doc, fn)
        return fn
    return register


@dataclass
class Evidence:
    """What the graph knows of one question when it decides."""

    question: Question
    kind: str
    neighbours: list[tuple[Question, float]] = field(default=())  # solved, cosine; best first; never itself
    priors: OptionPriors | None = None  # its rates always leave this question's own row out
    votes: dict[str, dict[str, float]] = field(default_factory=dict)  # voter -> its probabilities (no LLM: {})
    pooled: dict[str, float] = field(default_factory=dict)  # the vote's combination of them
    executed: dict | None = None  # the sandboxed run's evidence (execution/evidence.py), if the question ran
    duplicate: str | None = None  # an exact solved copy's letter


def evidence_of(q: Question, found: Found, votes: dict[str, dict[str, float]], solved: Callable[[str], Question | None],
                priors: OptionPriors | None) -> Evidence:
    """The Evidence of a question from what the graph found (a Prediction's `found` and
    `votes`), `solved` looking up its neighbours' labelled questions: the one way the graph's
    decide step and `solver fit` make it, so a fit reads what the run will read."""
    neighbours = [(nb, s) for t, s in found.neighbours if (nb := solved(t)) is not None]
    return Evidence(q, kind_of(q), neighbours, priors, votes, found.pooled, found.executed, found.duplicate)


VOTER = "logp@"  # a per-voter feature's name: logp@smollm2-135m-instruct@0


def voter_features(voters: list[str]) -> list[str]:
    return [VOTER + v for v in voters]


def _voter_logp(ev: Evidence, voter: str) -> list[float]:
    return _logp(ev.votes.get(voter) or {}, ev.question)


def matrix(ev: Evidence, names: list[str]) -> np.ndarray:
    """(options x features) float32, columns in the order of `names`."""
    cols = [_voter_logp(ev, n.removeprefix(VOTER)) if n.startswith(VOTER) else FEATURES[n].fn(ev) for n in names]
    return np.asarray(cols, dtype=np.float32).reshape(len(names), len(ev.question.choices)).T


def names_in(groups: list[str]) -> list[str]:
    return [f.name for f in FEATURES.values() if f.group in groups]


GROUPS = tuple(DecideConfig().features)  # every group, as the config names them (its default: all of them)
LLM_GROUPS = ("model",)  # the only groups that need an LLM call


# ---- kind: which kind of question (constant over a question's options) --------------

for _kind in KINDS:
    FEATURES[f"kind_{_kind}"] = Feature(
        f"kind_{_kind}", "kind", f"1 when execution.recognise.kind_of reads the question as {_kind}, else 0.",
        lambda ev, k=_kind: [float(ev.kind == k)] * len(ev.question.choices))


# ---- text: the option against the question's own text ----------------------------------

IDENT = re.compile(r"[A-Za-z_]\w*")
BLANK = re.compile(r"_{5,}")
COMMENT = re.compile(r"(#|//)\s*[A-Za-z]")


def _lines(text: str) -> list[str]:
    return [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


def _blank(q: Question) -> tuple[str, str, int | None]:
    """The non-empty lines before and after the first blank line, and its indentation."""
    lines = _lines(question_text(q))
    at = next((i for i, line in enumerate(lines) if BLANK.search(line)), None)
    if at is None:
        return "", "", None
    before = lines[at - 1].strip() if at else ""
    after = lines[at + 1].strip() if at + 1 < len(lines) else ""
    return before, after, _indent(lines[at])


def _expected_indent(q: Question) -> int | None:
    """Where an option's first line should start: the blank's column, else the code's last line's."""
    indent = _blank(q)[2]
    if indent is not None:
        return indent
    code = _lines(code_of(question_text(q)))
    return _indent(code[-1]) if code else None


def _repeats(ev: Evidence, which: int) -> list[float]:
    line = _blank(ev.question)[which]
    return [float(bool(line) and any(x.strip() == line for x in _lines(c))) for c in ev.question.choices]


@feature("text", "An option line repeats the question's first non-empty line after the blank (reads how "
                 "the benchmark cut the solution).")
def repeats_after_blank(ev: Evidence) -> list[float]:
    return _repeats(ev, 1)


@feature("text", "An option line repeats the line just before the blank (reads how the benchmark cut the solution).")
def repeats_before_blank(ev: Evidence) -> list[float]:
    return _repeats(ev, 0)


@feature("text", "The option's text (4+ characters) appears verbatim in the question (reads how the benchmark "
                 "wrote its questions).")
def in_question(ev: Evidence) -> list[float]:
    text = normalise_option(question_text(ev.question))
    return [float(len(o := normalise_option(c)) >= 4 and o in text) for c in ev.question.choices]


@feature("text", "Share of the option's identifiers found in the question's code (reads how the benchmark "
                 "made its distractors).")
def ident_share(ev: Evidence) -> list[float]:
    known = set(IDENT.findall(code_of(question_text(ev.question)) or question_text(ev.question)))
    out = []
    for c in ev.question.choices:
        ids = set(IDENT.findall(c))
        out.append(len(ids & known) / len(ids) if ids else 1.0)
    return out


@feature("text", "Share of the option's lines found verbatim among the question's lines (reads how the "
                 "benchmark made its distractors).")
def lines_in_question(ev: Evidence) -> list[float]:
    known = {line.strip() for line in _lines(question_text(ev.question))}
    return [sum(x.strip() in known for x in ls) / len(ls) if (ls := _lines(c)) else 0.0 for c in ev.question.choices]


@feature("text", "The option's first line starts at the blank's column (or the code's last line's): reads "
                 "how the benchmark cut the solution.")
def indent_match(ev: Evidence) -> list[float]:
    want = _expected_indent(ev.question)
    return [float(want is not None and bool(ls := _lines(c)) and _indent(ls[0]) == want) for c in ev.question.choices]


def _style(c: str) -> tuple:
    ls = _lines(c)
    return (_indent(ls[0]) if ls else 0, c.endswith("\n"), "\t" in c, bool(COMMENT.search(c)))


@feature("text", "Share of the other options whose layout (indentation, final newline, tabs, comments) differs "
                 "from this one's: the odd one out reads how the benchmark made its distractors.")
def style_odd(ev: Evidence) -> list[float]:
    styles = [_style(c) for c in ev.question.choices]
    n = len(styles)
    return [sum(s != t for t in styles) / (n - 1) for s in styles]


@feature("text", "The option ends with a newline (reads how the benchmark stored its source solutions).")
def ends_newline(ev: Evidence) -> list[float]:
    return [float(c.endswith("\n")) for c in ev.question.choices]


@feature("text", "The option holds a code comment (reads how the benchmark's distractors were annotated).")
def has_comment(ev: Evidence) -> list[float]:
    return [float(bool(COMMENT.search(c))) for c in ev.question.choices]


# ---- prior: the option text's rate of being right where the benchmark offers it --------

def _rates(ev: Evidence, per_kind: bool) -> list[float]:
    if ev.priors is None:
        return [0.0] * len(ev.question.choices)
    kind = ev.kind if per_kind else None
    return [ev.priors.rate(c, ev.question, kind) for c in ev.question.choices]


@feature("prior", "The option text's smoothed rate of being right where offered in the labelled data (reads "
                  "how the benchmark reuses option texts).")
def prior_rate(ev: Evidence) -> list[float]:
    return _rates(ev, False)


@feature("prior", "The same rate among questions of this kind only (reads how the benchmark reuses option texts).")
def prior_rate_kind(ev: Evidence) -> list[float]:
    return _rates(ev, True)


@feature("prior", "log(1 + times the option text is offered in the labelled data): how much the rate rests on.")
def prior_offered(ev: Evidence) -> list[float]:
    if ev.priors is None:
        return [0.0] * len(ev.question.choices)
    return [float(np.log1p(ev.priors.counts(normalise_option(c), ev.question)[0])) for c in ev.question.choices]


# ---- shape: where the option stands and how it looks among the others ------------------

ABOVE = re.compile(r"\b(all|none|both|neither) of (the )?(above|these|them|those|mentioned)\b|^(all|none|both)$", re.I)


@feature("shape", "The option's position, 0 for the first.")
def position(ev: Evidence) -> list[float]:
    return [float(i) for i in range(len(ev.question.choices))]


@feature("shape", "The option's position from the end, 0 for the last.")
def position_from_end(ev: Evidence) -> list[float]:
    n = len(ev.question.choices)
    return [float(n - 1 - i) for i in range(n)]


@feature("shape", "How many options the question has.")
def n_options(ev: Evidence) -> list[float]:
    return [float(len(ev.question.choices))] * len(ev.question.choices)


@feature("shape", "The option's length rank among the options, 0 the longest to 1 the shortest.")
def length_rank(ev: Evidence) -> list[float]:
    lengths = [len(c.strip()) for c in ev.question.choices]
    n = len(lengths)
    return [sum(m > x for m in lengths) / (n - 1) for x in lengths]


@feature("shape", "The option's length over the mean length of the question's options.")
def rel_length(ev: Evidence) -> list[float]:
    lengths = [len(c.strip()) for c in ev.question.choices]
    mean = sum(lengths) / len(lengths) or 1.0
    return [x / mean for x in lengths]


@feature("shape", "The option's normalised text is offered more than once in this question.")
def offered_twice(ev: Evidence) -> list[float]:
    texts = [normalise_option(c) for c in ev.question.choices]
    return [float(texts.count(t) > 1) for t in texts]


@feature("shape", "The option is an 'all / none / both of the above'-style option.")
def above_option(ev: Evidence) -> list[float]:
    return [float(bool(ABOVE.search(c.strip()))) for c in ev.question.choices]


# ---- retrieval: what the solved neighbours say ------------------------------------------

def _support(ev: Evidence, right: bool, same_text_only: bool = False) -> list[float]:
    texts = [normalise_option(c) for c in ev.question.choices]
    own = normalise(ev.question.question)
    out = [0.0] * len(texts)
    for nb, sim in ev.neighbours:
        if same_text_only and normalise(nb.question) != own:
            continue
        answer = normalise_option(nb.choices[LETTERS.index(nb.answer)])
        offered = {normalise_option(c) for c in nb.choices}
        for i, t in enumerate(texts):
            if (t == answer) if right else (t in offered and t != answer):
                out[i] += sim
    return out


@feature("retrieval", "Similarity-weighted count of the neighbours whose right option has this option's text.")
def nb_right(ev: Evidence) -> list[float]:
    return _support(ev, True)


@feature("retrieval", "Similarity-weighted count of the neighbours that offer this option's text as a wrong option.")
def nb_wrong(ev: Evidence) -> list[float]:
    return _support(ev, False)


@feature("retrieval", "nb_right over the neighbours with this question's very text only (copies, options shuffled).")
def nb_right_same_text(ev: Evidence) -> list[float]:
    return _support(ev, True, same_text_only=True)


@feature("retrieval", "The top neighbour's cosine similarity (0 without neighbours).")
def nb_top(ev: Evidence) -> list[float]:
    top = max((s for _, s in ev.neighbours), default=0.0)
    return [float(top)] * len(ev.question.choices)


@feature("retrieval", "1 when a neighbour has this question's normalised text.")
def nb_same_text(ev: Evidence) -> list[float]:
    own = normalise(ev.question.question)
    return [float(any(normalise(nb.question) == own for nb, _ in ev.neighbours))] * len(ev.question.choices)


# ---- model: what the LLM said (the only group that needs an LLM call) ------------------

def _logp(probs: dict[str, float], q: Question) -> list[float]:
    """log-probabilities per option; uniform where no reply was read."""
    if not probs:
        return [float(np.log(1 / len(q.choices)))] * len(q.choices)
    return [float(np.log(max(probs.get(L, 0.0), 1e-6))) for L in q.letters]


@feature("model", "log of the vote's pooled probability for the option (uniform without a reply).")
def llm_logp(ev: Evidence) -> list[float]:
    return _logp(ev.pooled, ev.question)


@feature("model", "llm_logp minus the best other option's: how far the vote prefers this option.")
def llm_margin(ev: Evidence) -> list[float]:
    lp = _logp(ev.pooled, ev.question)
    return [x - max(lp[:i] + lp[i + 1:]) for i, x in enumerate(lp)]


@feature("model", "The option's rank in the vote, 0 for its top option.")
def llm_rank(ev: Evidence) -> list[float]:
    lp = _logp(ev.pooled, ev.question)
    return [float(sum(y > x for y in lp)) for x in lp]


# ---- execution: what running the question's code in the sandbox said ------------------

CHECKS = ("output", "examples", "compile", "error")


def _consistent(ev: Evidence) -> list[str]:
    return (ev.executed or {}).get("consistent") or []


@feature("execution", "1 when the sandboxed run is consistent with the option (its output, passing examples, ...).")
def run_consistent(ev: Evidence) -> list[float]:
    keep = _consistent(ev)
    return [float(L in keep) for L in ev.question.letters]


@feature("execution", "1 when the run is consistent with some options and not with this one.")
def run_ruled_out(ev: Evidence) -> list[float]:
    keep = _consistent(ev)
    return [float(bool(keep) and L not in keep) for L in ev.question.letters]


@feature("execution", "1 when the run leaves this option alone.")
def run_settles(ev: Evidence) -> list[float]:
    settled = (ev.executed or {}).get("settled")
    return [float(L == settled) for L in ev.question.letters]


@feature("execution", "Which kind of evidence the run gave: 0 none, 1 output, 2 examples, 3 compile, 4 error.")
def run_kind(ev: Evidence) -> list[float]:
    check = (ev.executed or {}).get("check")
    return [float(CHECKS.index(check) + 1 if check in CHECKS else 0)] * len(ev.question.choices)


@feature("retrieval", "1 for the option an exact solved copy (same question, same options) answered.")
def duplicate(ev: Evidence) -> list[float]:
    return [float(L == ev.duplicate) for L in ev.question.letters]
