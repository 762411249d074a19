"""`solver view`: a run's trace as one self-contained HTML page for an expert to review.

Everything the page needs is inside it (styles, the script, the plots as inline SVG drawn by
matplotlib), so it opens from disk with no server and no network. The rows are the trace's
questions, most doubtful first; the page's script filters them and collects corrections,
which it exports as `corrections.csv` for `solver learn`.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from core.data import DataError, json_lines, load_questions
from core.types import Prediction, Question
from execution.recognise import KINDS, kind_of
from solver.runner import confidence, doubt_ranking, wilson

PREDICTION = ("task_id", "letter", "probabilities", "votes", "failed", "cost", "trace")  # a trace line's
STEPS = ("duplicate", "run", "settle", "ranker", "rules", "unread")  # what decided, in the graph's order


@dataclass
class Trace:
    run: dict  # the trace's first line: config, questions, seconds (an older trace has none)
    questions: list[Question]
    preds: dict[str, Prediction]


def read_trace(path: Path) -> Trace:
    """A `--trace` file, checked: one line naming file, row and field for anything else."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    run, questions, preds = {}, [], {}
    for i, rec in json_lines(path, path.read_text(encoding="utf-8", errors="replace")):
        where = f"{path}: row {i}"
        if i == 1 and isinstance(rec.get("run"), dict):
            run = rec["run"]
            continue
        for name in ("task_id", "question", "choices", "letter", "probabilities", "trace"):
            if name not in rec:
                raise DataError(f"{where}, field '{name}': missing; a trace is what solver run or eval --trace writes")
        try:
            q = Question(task_id=rec["task_id"], question=rec["question"], choices=rec["choices"],
                         answer=rec.get("answer"))
            p = Prediction.model_validate({k: rec[k] for k in PREDICTION if k in rec})
        except ValidationError as e:
            err = e.errors()[0]
            raise DataError(f"{where}, field '{err['loc'][0] if err['loc'] else '?'}': {err['msg']}") from None
        if q.task_id in preds:
            raise DataError(f"{where}, field 'task_id': duplicate '{q.task_id}'")
        if p.letter is not None and p.letter not in q.letters:
            raise DataError(f"{where}, field 'letter': '{p.letter}' is not one of {', '.join(q.letters)}")
        questions.append(q)
        preds[q.task_id] = p
    if not questions:
        raise DataError(f"{path}: no questions; a trace is what solver run or eval --trace writes")
    return Trace(run, questions, preds)


def _step(p: Prediction, name: str) -> dict:
    return next((t for t in p.trace if t.get("step") == name), {})


def row_of(q: Question, p: Prediction, label: str | None) -> dict:
    """What the page shows of one question (plain data: the script renders it as text)."""
    decide, run, found = _step(p, "decide"), _step(p, "execute"), _step(p, "retrieve")
    verify = _step(p, "verify")
    by = decide.get("by") or ("unread" if not p.read else "rules")
    evidence = {}
    if found.get("duplicate"):
        evidence["duplicate"] = found["duplicate"].get("answer")
    if found.get("neighbors"):
        evidence["neighbours"] = [[n.get("task_id"), round(n.get("score", 0.0), 3)] for n in found["neighbors"][:5]]
    if run.get("ran"):
        evidence["run"] = {k: run.get(k) for k in ("check", "status", "consistent", "settled", "trusted", "ruled_out")}
    if verify:
        evidence["verify"] = {"letter": verify.get("letter"), "p_true": verify.get("p_true")}
    # the fitted model's largest contributions to the top option ([feature, amount], ...)
    moved = decide.get("moved_by") or (_step(p, "settle").get("moved_by") if by == "settle" else None) or []
    return {"id": q.task_id, "kind": kind_of(q), "question": q.question, "choices": q.choices,
            "letters": q.letters, "letter": p.letter, "label": label,
            "right": None if label is None else p.letter == label, "confidence": round(confidence(p), 4),
            "by": by, "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()},
            "votes": {v: {k: round(x, 4) for k, x in probs.items()} for v, probs in p.votes.items()},
            "failed": p.failed, "evidence": evidence, "moved": moved, "changed": decide.get("changed"),
            "calls": p.cost.calls, "runs": p.cost.runs}


def labels_for(trace: Trace, labelled: Path | None) -> dict[str, str]:
    """task_id -> label: the trace's own (eval writes them), then the labelled file's on top."""
    labels = {q.task_id: q.answer for q in trace.questions if q.answer}
    if labelled is not None:
        labels.update({q.task_id: q.answer for q in load_questions(labelled, labelled=True).questions})
    return labels


def summary(rows: list[dict], run: dict) -> dict:
    n = len(rows)
    scored = [r for r in rows if r["right"] is not None]
    per_kind = {}
    for kind in [k for k in KINDS if any(r["kind"] == k for r in scored)]:
        rs = [r for r in scored if r["kind"] == kind]
        k = sum(r["right"] for r in rs)
        per_kind[kind] = {"count": len(rs), "accuracy": k / len(rs), "interval95": wilson(k, len(rs))}
    k = sum(r["right"] for r in scored)
    secs, fresh = run.get("seconds"), run.get("fresh")
    return {"questions": n, "scored": len(scored), "accuracy": k / len(scored) if scored else None,
            "interval95": wilson(k, len(scored)) if scored else None, "per_kind": per_kind,
            "questions_per_s": fresh / secs if secs and fresh else None, "fresh": fresh,
            "calls_per_q": sum(r["calls"] for r in rows) / n, "runs_per_q": sum(r["runs"] for r in rows) / n,
            "unread": sum(r["letter"] is None for r in rows),
            "doubt": doubt_ranking([r["confidence"] for r in scored], [r["right"] for r in scored]) if scored else None,
            "by": {s: {"count": sum(r["by"] == s for r in rows),
                       "right": sum(bool(r["right"]) for r in scored if r["by"] == s),
                       "scored": sum(r["by"] == s for r in scored)} for s in STEPS if any(r["by"] == s for r in rows)},
            "config": run.get("config"), "input": run.get("input")}


# ---- plots: matplotlib drawn to SVG text, inlined -----------------------------------


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # without the XML prolog and doctype: inline in HTML


def plots(rows: list[dict], s: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")  # no screen: drawn to text
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "codemcq"})  # the same bytes each time
    out = {}
    if s["per_kind"]:
        fig, ax = plt.subplots(figsize=(4.6, 2.8))
        kinds = list(s["per_kind"])
        acc = [s["per_kind"][k]["accuracy"] for k in kinds]
        lo = [a - s["per_kind"][k]["interval95"][0] for k, a in zip(kinds, acc)]
        hi = [s["per_kind"][k]["interval95"][1] - a for k, a in zip(kinds, acc)]
        ax.bar(kinds, acc, yerr=[lo, hi], color="#4c78a8", capsize=3)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (95% interval)")
        ax.set_title("accuracy per kind of question")
        for i, k in enumerate(kinds):
            ax.text(i, 0.02, str(s["per_kind"][k]["count"]), ha="center", color="white")
        out["kinds"] = _svg(fig)
        plt.close(fig)

        scored = [r for r in rows if r["right"] is not None]
        bins = 10
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        xs, ys, ns = [], [], []
        for b in range(bins):
            inside = [r for r in scored if min(int(r["confidence"] * bins), bins - 1) == b]
            if inside:
                xs.append(sum(r["confidence"] for r in inside) / len(inside))
                ys.append(sum(r["right"] for r in inside) / len(inside))
                ns.append(len(inside))
        ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
        ax.scatter(xs, ys, s=[12 + 3 * math.sqrt(n) * 4 for n in ns], color="#e45756")
        ax.plot(xs, ys, color="#e45756", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("final probability of the letter given")
        ax.set_ylabel("share right")
        ax.set_title("reliability (dot size: questions)")
        out["reliability"] = _svg(fig)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    steps = list(s["by"])
    counts = [s["by"][k]["count"] for k in steps]
    ax.bar(steps, counts, color="#72b7b2")
    for i, k in enumerate(steps):
        v = s["by"][k]
        label = f"{v['right'] / v['scored']:.0%} right" if v["scored"] else ""
        ax.text(i, counts[i], label, ha="center", va="bottom")
    ax.set_ylabel("questions")
    ax.set_title("which step decided")
    ax.margins(y=0.15)
    out["steps"] = _svg(fig)
    plt.close(fig)
    return out


# ---- the page -----------------------------------------------------------------------


def _figure(x: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def render(trace: Trace, labels: dict[str, str], source: str) -> tuple[str, dict]:
    from jinja2 import Environment, PackageLoader, select_autoescape

    rows = [row_of(q, trace.preds[q.task_id], labels.get(q.task_id)) for q in trace.questions]
    rows.sort(key=lambda r: (r["confidence"], r["id"]))  # most doubtful first
    s = summary(rows, trace.run)
    env = Environment(loader=PackageLoader("solver", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["figure"] = _figure
    # The data goes in a <script type="application/json">: every "<" escaped, so no text from
    # an input file can close the element; the page's script renders it as text, never as HTML.
    data = json.dumps(rows, ensure_ascii=False).replace("<", "\\u003c")
    page = env.get_template("report.html").render(s=s, plots=plots(rows, s), data=data, source=source,
                                                  kinds=[k for k in KINDS if any(r["kind"] == k for r in rows)],
                                                  steps=list(s["by"]))
    return page, s


def write_report(trace_path: Path, out: Path, labelled: Path | None = None) -> dict:
    """Read, check, render and write atomically; returns the summary and the page's size."""
    from core.journal import atomic_write

    trace = read_trace(trace_path)
    labels = labels_for(trace, labelled)
    for tid, letter in labels.items():
        q = next((q for q in trace.questions if q.task_id == tid), None)
        if q is not None and letter not in q.letters:
            raise DataError(f"{labelled or trace_path}: task '{tid}', field 'answer': '{letter}' is beyond its "
                            f"options ({', '.join(q.letters)})")
    page, s = render(trace, labels, str(trace_path))
    atomic_write(out, page)
    return s | {"bytes": len(page.encode())}
