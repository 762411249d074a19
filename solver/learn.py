"""`solver learn`: an expert's corrections (`task_id,answer,note`, as the report page exports
them) merged into the user's labelled file, so the next run's duplicate shortcut, retrieval
and `solver fit` read them.

A corrected id replaces its label; a new id gets a row, its question and options taken
from the run's trace. Every correction is checked before anything is written (one line
naming file, row and field), and the labelled file is replaced whole or not at all.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from core.data import DataError, clean_label, parse_choices, read_rows, rows_bytes
from core.journal import atomic_write
from core.types import LETTERS


@dataclass
class Change:
    task_id: str
    before: str | None  # the label it had; None: a new row
    after: str
    note: str


def read_corrections(path: Path) -> list[tuple[int, str, str, str]]:
    """(row, task_id, letter, note) per correction; a bad or duplicate row is one line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    if not rows or not {"task_id", "answer"} <= rows[0].keys():
        raise DataError(f"{path}: expected the columns task_id,answer,note (what the report page exports)")
    out, seen = [], {}
    for i, row in enumerate(rows, 2):  # row 1 is the header
        tid, raw = (row.get("task_id") or "").strip(), (row.get("answer") or "").strip()
        if not tid:
            raise DataError(f"{path}: row {i}, field 'task_id': empty")
        if tid in seen:
            raise DataError(f"{path}: row {i}, field 'task_id': duplicate '{tid}' (first at row {seen[tid]})")
        seen[tid] = i
        letter = clean_label(raw)
        if letter is None:
            raise DataError(f"{path}: row {i}, field 'answer': '{raw}' is not a letter")
        out.append((i, tid, letter, (row.get("note") or "").strip()))
    return out


def merge(corrections: Path, labelled: Path, trace: Path | None = None) -> list[Change]:
    """Apply `corrections` to `labelled` (atomically); returns the rows that changed."""
    from solver.report import read_trace

    fixes = read_corrections(corrections)
    rows = read_rows(labelled) if labelled.is_file() else []
    by_id = {str(r.get("task_id") or "").strip(): r for r in rows}
    traced = {q.task_id: q for q in read_trace(trace).questions} if trace is not None else {}
    changes, added = [], []
    for i, tid, letter, note in fixes:
        where = f"{corrections}: row {i}"
        if tid in by_id:
            try:
                n = len(parse_choices(by_id[tid].get("choices")))
            except ValueError:
                raise DataError(f"{labelled}: task '{tid}', field 'choices': does not parse") from None
        elif tid in traced:
            n = len(traced[tid].choices)
        else:
            raise DataError(f"{where}, field 'task_id': '{tid}' is neither in {labelled} nor in "
                            f"{trace or 'a trace (--trace names the run it came from)'}")
        if LETTERS.index(letter) >= n:
            raise DataError(f"{where}, field 'answer': '{letter}' is beyond the question's {n} options "
                            f"(A-{LETTERS[n - 1]})")
        if tid in by_id:
            before = clean_label(by_id[tid].get("answer"))
            if before != letter:
                by_id[tid]["answer"] = letter
                changes.append(Change(tid, before, letter, note))
        else:
            q = traced[tid]
            added.append({"task_id": tid, "question": q.question, "choices": list(q.choices), "answer": letter})
            changes.append(Change(tid, None, letter, note))
    if changes:
        atomic_write(labelled, rows_bytes(labelled, rows + added))
    return changes
