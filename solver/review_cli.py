"""`solver view` and `solver learn`: an expert's loop over a run. The report page shows
where the solver doubts and collects corrections; learn merges them into the labelled
file that the next run's duplicate shortcut, retrieval and `solver fit` read."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from solver.console import out, reported


def view(
    trace: Path = typer.Argument(..., help="A run's --trace file (solver run or solver eval)."),
    report: Path = typer.Option(..., "--out", "-o", help="The HTML page to write (one self-contained file)."),
    labelled: Optional[Path] = typer.Option(None, "--labelled", "-l", help="Labels for the trace's questions "
                                            "(solver eval's trace holds its own)."),
):
    """One self-contained HTML report of a run: summary, plots, every question most doubtful first."""
    with reported():
        from solver.report import write_report

        start = time.perf_counter()
        s = write_report(trace, report, labelled)
        acc = f"accuracy {s['accuracy']:.3f} on {s['scored']} labelled; " if s["accuracy"] is not None else ""
        out.print(f"wrote {report.resolve()} ({s['questions']} questions; {acc}{s['bytes'] / 1e6:.2f} MB in "
                  f"{time.perf_counter() - start:.1f} s)", highlight=False, soft_wrap=True)


def learn(
    corrections: Path = typer.Option(..., "--corrections", help="task_id,answer,note (the report page's export)."),
    labelled: Path = typer.Option(..., "--labelled", "-l", help="Your labelled file (CSV, JSONL or parquet) to "
                                  "merge them into; written whole or not at all."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="The run's trace: a new id's question and options."),
):
    """Merge an expert's corrections into the labelled file; prints each row it changed."""
    with reported():
        from solver.learn import merge

        changes = merge(corrections, labelled, trace)
        for c in changes:
            was = f"{c.before} -> " if c.before else "new, "
            out.print(f"  {c.task_id}: {was}{c.after}{f'  ({c.note})' if c.note else ''}", highlight=False,
                      markup=False, soft_wrap=True)
        out.print(f"{labelled}: {len(changes)} rows changed" if changes else f"{labelled}: unchanged (every "
                  "correction already held)", highlight=False)
