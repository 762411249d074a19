"""What the eval scripts share: the benchmark file and its labelled questions, one timer,
cached backbones, one run of a config, scoring, the Markdown table and the charts.
Imported by the scripts in eval/ (run as scripts: `from report import ...`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from backends.hardware import library_defaults

library_defaults()  # what the solver tells the libraries, for every eval script (they import this first)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # no log file here: vLLM's INFO lines would fill the terminal

ROOT = Path(__file__).resolve().parents[1]


def bench_file(name: str = "train.csv") -> dict:
    """argparse keywords for a benchmark data file: by default NAME in the folder that
    `CODEMCQ_BENCH_DATA` names (`make bench` and `make test` set it), else required."""
    folder = os.environ.get("CODEMCQ_BENCH_DATA")
    return {"default": str(Path(folder) / name)} if folder else {"required": True}


def labelled(data, split: str | None = None, n: int | None = None) -> list:
    """The labelled questions of `data` in one fixed hash split (None: all), the first `n`."""
    from core.data import in_split, load_questions

    return in_split(load_questions(data, labelled=True).questions, split)[:n]


class Timer:
    """`with Timer() as t: ...`, then `t.seconds`: one wall-clock measurement."""

    def __enter__(self) -> "Timer":
        self.start, self.seconds = time.perf_counter(), None
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Each function's seconds in every round, the functions taking turns within a round, so
    a shared machine's noise falls on all of them alike (report their ratios)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            with Timer() as t:
                fn()
            times[name].append(t.seconds)
    return times


HEADER = ["| configuration | accuracy [95% CI] | R->W / W->R flips | LLM prompts/q | prompt tokens/q "
          "| sandboxed runs/q | s/q |",
          "| --- | --- | --- | --- | --- | --- | --- |"]


def backbone_pair(bcfg):
    """(uncached backbone for timing, the same behind the on-disk answer cache). At
    temperature 0 the same prompt gets the same answer, and ablations ask the same prompts
    under many configs: each is sent once, whichever script asks first."""
    from backends.backbone import CachedBackbone, make_backbone, run_dtype
    from core.cache import cache_path

    raw = make_backbone(bcfg)
    # what sets an answer
    answers = bcfg.model_dump(include={"model", "tokenizer", "lora", "merge_lora",
                                       "max_model_len"}) | {"dtype": run_dtype(bcfg)}
    answers["model"] = os.path.expanduser(answers["model"])  # one cache, however the path was spelt
    key = CachedBackbone.key(str(answers), [])[:12]
    return raw, CachedBackbone(raw, cache_path("llm", f"{Path(bcfg.model).stem}-{key}.jsonl"))


def dev_test(data, dev_n=None, test_n=None):
    """train.csv's hash splits `dev` (tuning) and `test` (reporting), optionally cut short."""
    return labelled(data, "dev", dev_n), labelled(data, "test", test_n)


def run(cfg, backbones: dict, index, questions):
    """Predictions (by task_id) and seconds: `solver run`'s batches, through its runner."""
    from solver.api import Solver
    from solver.runner import answer_all

    solver = Solver(cfg, index=index, backbones=backbones)
    with Timer() as t:
        solver.prepare(questions)  # the vote's position priors, from the whole input as `solver run` does
        preds, _, _ = answer_all(lambda: solver, questions, None, cfg.answer.batch_size, quiet=True)
    return preds, t.seconds


def right(preds, questions, tag=""):
    return {(tag, q.task_id) for q in questions if preds[q.task_id].letter == q.answer}


def cost(preds, questions):
    """LLM prompts, prompt tokens and sandboxed runs per question."""
    costs = [preds[q.task_id].cost for q in questions]
    return tuple(sum(getattr(c, k) for c in costs) / len(questions) for k in ("calls", "tokens", "runs"))


def row(name, preds, questions, ok, seconds=None, flips=None) -> dict:
    from solver.runner import wilson

    lo, hi = wilson(len(ok), len(questions))
    calls, tokens, runs = cost(preds, questions)
    return {"row": name, "accuracy": len(ok) / len(questions), "lo": lo, "hi": hi, "calls": calls,
            "tokens": tokens, "runs": runs, "s_per_q": seconds, "flips": flips}


def markdown(table) -> list[str]:
    from backends.hardware import describe, pick_dtype

    lines = [f"Timed on {describe(pick_dtype())} (dtype: auto).", "", *HEADER]
    for r in table:
        flips = f"{r['flips'][0]} / {r['flips'][1]}" if r["flips"] else ""
        sq = f"{r['s_per_q']:.3f}" if r["s_per_q"] else ""
        lines.append(f"| {r['row']} | {r['accuracy']:.4f} [{r['lo']:.3f}, {r['hi']:.3f}] | {flips} | "
                     f"{r['calls']:.2f} | {r['tokens']:.0f} | {r.get('runs', 0):.2f} | {sq} |")
    return lines


def figure(path, draw: Callable, size: tuple[float, float], title: str) -> None:
    """One chart in the house style, written to `path`: `draw(ax)` draws it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def chart(table, path, title):
    """Accuracy with its 95% interval per row; the first row (the baseline) in grey, dashed."""

    def draw(ax):
        ys = range(len(table))[::-1]
        acc = [r["accuracy"] for r in table]
        err = [[a - r["lo"] for a, r in zip(acc, table)], [r["hi"] - a for a, r in zip(acc, table)]]
        ax.barh(list(ys), acc, xerr=err, color=["#999"] + ["#6a5acd"] * (len(table) - 1), capsize=3)
        ax.set_yticks(list(ys), [r["row"] for r in table])
        ax.axvline(acc[0], color="#999", ls="--", lw=1)
        ax.set_xlabel("accuracy (95% interval)")

    figure(path, draw, (8, 0.5 * len(table) + 1.2), title)


def interval_text(hit: int, n: int, percent: bool = False) -> str:
    """An accuracy with its 95% half-width (normal approximation), or right/n below 30 questions."""
    import math

    if not n:
        return "-"
    p = hit / n
    if n < 30:
        return f"{100 * p:.0f} (n={n})" if percent else f"{hit}/{n}"
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    return f"{100 * p:.1f} ±{100 * half:.1f}" if percent else f"{p:.3f} ±{half:.3f}"
