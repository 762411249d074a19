"""Run a solver over a dataset: fixed batches, journaled as they finish, with a progress bar.

Batches are fixed slices of the input order, and a batch is journaled whole, so a
resumed run sends the engine exactly the batches an uninterrupted run would have:
the final answers are the same.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from backends.backbone import BackboneError
from core.journal import Journal, sha256_file
from core.types import Prediction, Question
from solver.console import progress_bar


def fingerprint(data_path: Path, config_json: str) -> str:
    """Same input bytes and same config: the journal's answers still hold."""
    return hashlib.sha256(f"{sha256_file(data_path)}\n{config_json}".encode()).hexdigest()


def answer_all(
    make_solver: Callable, questions: list[Question], journal: Journal | None, batch_size: int, quiet: bool = False
) -> tuple[dict[str, Prediction], int, float]:
    """Answer every question not yet journaled (`journal` None: none is, and nothing is
    kept: eval/'s scripts); returns (predictions, newly answered, seconds).

    A prediction that could not be read is returned but not journaled, so a rerun retries it.
    A backbone that fails is dropped for the questions it failed on (with a warning); a
    batch where some question lost every backbone stops the run once the rest of the batch
    is journaled: running again resumes.
    """
    done = journal.done if journal is not None else {}
    preds = {q.task_id: done[q.task_id] for q in questions if q.task_id in done}
    todo = [questions[i : i + batch_size] for i in range(0, len(questions), batch_size)]
    todo = [[q for q in b if q.task_id not in preds] for b in todo]
    todo = [b for b in todo if b]
    solver = make_solver() if todo else None  # engine start-up is not answering time
    fresh, warned = 0, set()
    with progress_bar("q", disable=quiet) as bar:  # its rate and the summary's: the same answers over the same time
        task = bar.add_task("answering", total=len(questions), completed=len(preds), base=len(preds))
        start = bar.tasks[0].start_time
        for batch in todo:
            out = solver.solve_batch(batch)
            if journal is not None:
                journal.add([p for p in out if p.read])
            preds.update((p.task_id, p) for p in out)
            fresh += len(out)
            bar.advance(task, len(out))
            for name in solver.failures.keys() - warned:
                warned.add(name)
                bar.console.print(f"warning: backbone '{name}' failed and is left out of the questions it failed on "
                                  f"({solver.failures[name]})", highlight=False, markup=False)
            lost = [p for p in out if p.error]
            if lost:
                raise BackboneError(f"{len(lost)} questions lost every backbone "
                                    f"(first: {lost[0].task_id}: {lost[0].error}); "
                                    "the answered ones are journaled: run again to resume")
    return preds, fresh, time.perf_counter() - start


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% (Wilson score) interval for an accuracy of k/n; (0, 0) for no questions."""
    if n == 0:
        return (0.0, 0.0)
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def score(questions: list[Question], preds: dict[str, Prediction]) -> dict:
    """Accuracy overall and per group; an unread answer counts as wrong."""
    right, total, unread = Counter(), Counter(), 0
    for q in questions:
        p = preds[q.task_id]
        unread += not p.read
        total[q.group] += 1
        right[q.group] += p.letter == q.answer
    n, k = sum(total.values()), sum(right.values())
    groups = {g: {"accuracy": right[g] / total[g], "count": total[g]} for g in sorted(total)}
    doubt = doubt_ranking([confidence(preds[q.task_id]) for q in questions],
                          [preds[q.task_id].letter == q.answer for q in questions])
    return {"accuracy": k / n if n else 0.0, "interval95": wilson(k, n), "count": n, "correct": k,
            "unread": unread, "groups": groups, "doubt": doubt}


def confidence(p: Prediction) -> float:
    """The final probability of the letter given; an unread answer has none."""
    return p.probabilities.get(p.letter, 0.0) if p.read else 0.0


def doubt_ranking(confidences: list[float], right: list[bool], share: float = 0.1) -> dict:
    """How well the doubt (low confidence) ranks the errors: the share of wrong answers among
    the `share` most doubtful (ties in input order; the base rate is the run's error rate),
    and the area under the ROC curve of confidence against correctness (0.5: no better than
    chance; None where all are right or all wrong)."""
    n = len(right)
    if not n:
        return {"doubtful": 0, "wrong_among_doubtful": None, "error_rate": None, "auroc": None}
    order = sorted(range(n), key=lambda i: confidences[i])  # stable: ties keep the input order
    doubtful = order[: max(1, math.ceil(share * n))]
    wrong = sum(not right[i] for i in doubtful) / len(doubtful)
    good, bad = [c for c, r in zip(confidences, right) if r], [c for c, r in zip(confidences, right) if not r]
    auroc = None
    if good and bad:
        from scipy.stats import mannwhitneyu

        auroc = float(mannwhitneyu(good, bad).statistic) / (len(good) * len(bad))  # ties count one half
    return {"doubtful": len(doubtful), "wrong_among_doubtful": wrong, "error_rate": sum(not r for r in right) / n,
            "auroc": auroc}

