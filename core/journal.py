"""Resumable runs: predictions are journaled as they come; outputs are written atomically.

The journal is append-only JSONL whose first line is the run's fingerprint (input
file + config). A killed run loses at most the batch in flight; a torn last line is
dropped. Running again with the same arguments reuses every journaled answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

from core.types import Prediction, Question


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write a whole file or nothing: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with (tmp.open("wb") if isinstance(text, bytes) else tmp.open("w", encoding="utf-8", newline="")) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_dir(dest: Path, write) -> None:
    """Write a folder whole into a temporary one (`write(tmp)`), then rename it over `dest`:
    a reader sees the old folder or the new one, never half of either."""
    import shutil

    dest = Path(dest)
    tmp, old = dest.with_name(f".{dest.name}.tmp{os.getpid()}"), dest.with_name(f".{dest.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


class Journal:
    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.done: dict[str, Prediction] = {}
        self.resumed = False
        if self.path.is_file():
            data = self.path.read_bytes()
            data = data[: data.rfind(b"\n") + 1]  # drop a line torn by a kill
            lines = data.decode("utf-8").splitlines()
            if lines and json.loads(lines[0]).get("fingerprint") == fingerprint:
                for line in lines[1:]:
                    p = Prediction.model_validate_json(line)
                    self.done[p.task_id] = p
                self.resumed = True
                with self.path.open("r+b") as f:
                    f.truncate(len(data))
        self.fingerprint = fingerprint
        self._f = self.path.open("a", encoding="utf-8") if self.resumed else None

    def add(self, predictions: list[Prediction]) -> None:
        if self._f is None:  # the first answers: a run that fails before any leaves no file (nor folder) behind
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps({"fingerprint": self.fingerprint}) + "\n")
            self._f = self.path.open("a", encoding="utf-8")
        for p in predictions:
            self._f.write(p.model_dump_json() + "\n")
            self.done[p.task_id] = p
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def submission_csv(questions: list[Question], preds: dict[str, Prediction]) -> str:
    """`task_id,answer` in input order; refuses to write a letter that is not valid."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task_id", "answer"])
    for q in questions:
        letter = preds[q.task_id].letter
        if letter not in q.letters:
            raise ValueError(f"{q.task_id}: answer {letter!r} is not one of {q.letters}")
        w.writerow([q.task_id, letter])
    return buf.getvalue()


TRACE_FORMAT = 1


def traces_jsonl(questions: list[Question], preds: dict[str, Prediction], run: dict) -> str:
    """A run's trace: a first line `{"run": ...}` (format, config, questions, seconds), then
    one line per question with what `solver view` shows and `solver learn` needs: the
    question itself, its label if the input had one, the letter, the final and each voter's
    probabilities, the cost and every step's record."""
    head = json.dumps({"run": {"format": TRACE_FORMAT} | run}) + "\n"
    return head + "".join(
        json.dumps({"task_id": q.task_id, "question": q.question, "choices": q.choices, "answer": q.answer,
                    "letter": p.letter, "probabilities": p.probabilities, "votes": p.votes, "failed": p.failed,
                    "cost": p.cost.model_dump(), "trace": p.trace}) + "\n"
        for q in questions if (p := preds.get(q.task_id)) is not None
    )
