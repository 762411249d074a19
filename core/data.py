"""Load questions from Kaggle CSV, JSONL or CodeMMLU parquet into validated `Question`s.

Bad input raises `DataError` with one line naming file, row and field; the CLI turns it
into exit status 2. Labelled data (eval, index, finetune) is dirty in known ways
(`ANSWER: X`, empty labels, letters beyond the options, rows with no options): those
rows are normalised or skipped and counted, never silently used.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from core.types import LETTERS, Question, UserError, question_body

REQUIRED = ("task_id", "question", "choices")
_LABEL = re.compile(r"^(?:ANSWER\s*:\s*)?([A-Za-z])$")


class DataError(UserError):
    """A one-line, user-facing complaint about an input file."""


@dataclass
class Loaded:
    questions: list[Question]
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped
    relabelled: int = 0  # labels normalised from `ANSWER: X`


def clean_label(raw: object) -> str | None:
    """`'ANSWER:  d'` -> `'D'`; anything that is not one letter -> None."""
    m = _LABEL.match(str(raw or "").strip())
    return m.group(1).upper() if m else None


def parse_choices(raw: object) -> list[str]:
    """Choices arrive as a list, or (Kaggle CSV) a Python-literal list in a string."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return []  # an empty cell: no options (the row is then refused or skipped)
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)  # never eval: options hold arbitrary code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError("does not parse as a Python list literal") from None
    if hasattr(raw, "tolist"):  # numpy arrays from parquet
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)) or not all(isinstance(c, str) for c in raw):
        raise ValueError("is not a list of strings")
    return list(raw)


def group_of(task_id: str) -> str:
    """`k01234` -> `k`, `rt00012` -> `rt`: the Kaggle ids name their kind by prefix."""
    m = re.match(r"[A-Za-z]+", task_id)
    return m.group(0) if m else "other"


def split_of(task_id: str, dev: float = 0.15, test: float = 0.15) -> str:
    """A fixed train/dev/test split by a hash of the id: the same everywhere, forever."""
    u = int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) / 16**8
    return "dev" if u < dev else "test" if u < dev + test else "train"


def in_split(questions: list[Question], split: str | None) -> list[Question]:
    """The questions of one fixed hash split (`split_of`), in their order; None or "all": all."""
    return list(questions) if split in (None, "all") else [q for q in questions if split_of(q.task_id) == split]


def json_lines(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank JSONL line; anything else is one line naming the row."""
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: not a JSON object")
        rows.append((i, row))
    return rows


def read_rows(path: Path) -> list[dict]:
    """Raw rows as dicts, whatever the format; encoding and syntax errors carry a row."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises many kinds for a broken file
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: bytes that are not UTF-8 (offset {e.start})") from None
    if suffix in (".jsonl", ".json"):
        return [row for _, row in json_lines(path, text)]
    if suffix == ".csv":
        # Any field the file holds: a question may carry megabytes of code (the prompt cuts
        # it to fit the context); the csv module's default limit (128 KiB) refuses the row.
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        try:
            return list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise DataError(f"{path}: not valid CSV ({e})") from None
    raise DataError(f"{path}: unknown format '{suffix}' (use .csv, .jsonl or .parquet)")


def rows_bytes(path: Path, rows: list[dict]) -> bytes:
    """`rows` in the format `path` names (what read_rows reads back): CSV with every column
    any row has (a list as the Python literal Kaggle's files hold), JSONL, or parquet."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        return buf.getvalue().to_pybytes()
    if suffix in (".jsonl", ".json"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows({k: repr(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    return buf.getvalue().encode()


def load_questions(path: str | Path, labelled: bool = False) -> Loaded:
    """Read and validate a questions file.

    labelled=False (`solver run`): every row must be answerable, or the file is refused.
    labelled=True (eval, index, finetune): rows whose label or options cannot be scored
    are skipped and counted by reason.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    missing = [c for c in REQUIRED + (("answer",) if labelled else ()) if c not in rows[0]]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(rows[0])})")

    out, skipped, relabelled, seen = [], Counter(), 0, {}
    for i, row in enumerate(rows, 1):
        where = f"{path}: row {i}"
        task_id = str(row.get("task_id") or "").strip()
        if not task_id:
            raise DataError(f"{where}, field 'task_id': empty")
        if task_id in seen:
            raise DataError(f"{where}, field 'task_id': duplicate '{task_id}' (first at row {seen[task_id]})")
        seen[task_id] = i
        try:
            choices = parse_choices(row.get("choices"))
        except ValueError as e:
            raise DataError(f"{where}, field 'choices': {e}") from None
        question = str(row.get("question") or "").strip()
        raw_label = row.get("answer")
        label = clean_label(raw_label)
        if label and str(raw_label).strip() != label:
            relabelled += 1
        if labelled:
            reason = (
                "no label" if label is None
                else "label beyond the options" if LETTERS.index(label) >= len(choices)
                else "fewer than 2 options" if len(choices) < 2
                else "empty question" if not question_body(question)
                else None
            )
            if reason:
                skipped[reason] += 1
                continue
        else:
            if not question_body(question):
                raise DataError(f"{where}, field 'question': empty")
            if label is not None and LETTERS.index(label) >= len(choices):
                label = None  # unusable label on data we only answer
        if len(choices) < 2:
            raise DataError(f"{where}, field 'choices': {len(choices)} option(s), need at least 2")
        if len(choices) > len(LETTERS):
            raise DataError(f"{where}, field 'choices': {len(choices)} options, at most {len(LETTERS)}")
        subset = row.get("subset") or row.get("group")
        out.append(
            Question(
                task_id=task_id,
                question=question,
                choices=choices,
                answer=label,
                group=str(subset) if subset else group_of(task_id),
                problem_description=row.get("problem_description") or None,
            )
        )
    if labelled and not out:
        raise DataError(f"{path}: no usable labelled rows ({dict(skipped)})")
    return Loaded(out, skipped, relabelled)
