"""What every CLI command shares: the consoles, the log file, and the one-line error exits.

A user sees our progress bar, summary and warnings; everything else (vLLM, transformers,
torch's C++ warnings, tqdm bars) goes to a log file. Those libraries write to the
process's file descriptors 1 and 2 directly, so filtering Python loggers would not be
enough: while a command runs, fds 1 and 2 point at the log, and our two consoles keep
copies of the real ones.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from backends.backbone import BackboneError
from core.cache import cache_path
from core.types import UserError

out = Console(soft_wrap=True)  # a line written to a file or pipe is never hard-wrapped at 80 columns
err = Console(stderr=True, soft_wrap=True)
log_path: Path | None = None  # the log file chatter goes to now, if any
_log_streams: dict[Path, object] = {}  # a log's Python stream, kept open: a library's handler may hold it


def _fds_open() -> bool:
    try:
        os.fstat(1), os.fstat(2)
        return True
    except OSError:
        return False


def _fd_backed() -> bool:
    """sys.stdout and sys.stderr write to fds 1 and 2 (a terminal, a file, a pipe), not to a
    test's or a notebook kernel's capture."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def chatter_to_log(verbose: bool = False, name: str = "solver", path: Path | None = None, captured: bool = False):
    """Send fds 1 and 2 to a log file under the cache root for the duration (`path`, or
    `logs/NAME-TIME-PID.log`); yields its path. Our consoles keep copies of the real fds.
    Nothing moves with `verbose`, inside an outer chatter_to_log (re-entrant: that one's log),
    or where sys.stdout is not fd 1 unless `captured` (a test's CliRunner keeps what it
    captures; the Python API moves the fds under a notebook kernel's capture too)."""
    global log_path
    fd_backed = _fd_backed()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose or fd_backed else "WARNING")
    if log_path is not None:
        yield log_path
        return
    if verbose or not _fds_open() or not (fd_backed or captured):
        yield None
        return
    logs = cache_path("logs")
    logs.mkdir(parents=True, exist_ok=True)
    path = path or logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    if fd_backed:
        out.file, err.file = os.fdopen(os.dup(saved[0]), "w"), os.fdopen(os.dup(saved[1]), "w")
    else:  # a capture (a notebook kernel's, a test's) takes Python's writes: those go to the log too
        out.file, err.file = streams
        sys.stdout = sys.stderr = _log_streams.setdefault(path, open(path, "a", buffering=1))
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    log_path = path
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        for console in (out, err):
            console.file.flush()
            if fd_backed:
                console.file.close()
            console.file = None  # back to sys.stdout / sys.stderr
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        log_path = None


def warn(message: str) -> None:
    """A warning the user can act on: on the terminal, whatever goes to the log file."""
    err.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)


class _Warnings(logging.Handler):
    """The libraries log their warnings (logging.getLogger(__name__)); the application shows them."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


for _name in ("solver", "graphs", "index", "finetune", "execution"):  # our packages' loggers: one line each
    logging.getLogger(_name).addHandler(_Warnings(logging.WARNING))


def fail(message: str, code: int = 2):
    err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def rate(done: int, seconds: float | None) -> float | None:
    """Items a second, as the bar and the summary both say it (None: nothing to say yet)."""
    return done / seconds if seconds and done > 0 else None


class RateColumn(ProgressColumn):
    """Items per second since the task started, in the caller's unit (questions, texts),
    counting only the items done since: a resumed run's journaled answers (the task's
    `base` field) are not this run's speed, and the summary line counts the same way."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        r = rate(task.completed - task.fields.get("base", 0), task.elapsed)
        return Text(f"{r:.2f} {self.unit}/s" if r else f"-- {self.unit}/s")


def progress_bar(unit: str, disable: bool = False, console: Console | None = None) -> Progress:
    """The one progress bar: description, bar, done/total, rate, elapsed, time left (on
    stderr); its clock is time.perf_counter, which the summaries' timings use too."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console or err, disable=disable, transient=False, get_time=time.perf_counter)


@contextmanager
def progress_callback(unit: str, description: str, disable: bool = False):
    """A `(done, total)` callback for a library that reports progress; the bar appears at the
    first report, so a command that fails before any work prints its error line alone."""
    bar, task = progress_bar(unit, disable=disable), None

    def report(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield report
    finally:
        if task is not None:
            bar.stop()


def skipped_note(loaded) -> str:
    """What the data loader skipped or normalised in a labelled file, for a report line."""
    parts = [f"{n} rows skipped: {why}" for why, n in loaded.skipped.items()]
    if loaded.relabelled:
        parts.append(f"{loaded.relabelled} labels normalised")
    return f"; in the file: {', '.join(parts)}" if parts else ""


INTERRUPTED = "the answers so far are journaled"
interrupted_line = "error: interrupted"  # what a Ctrl-C ends with: the running command's (`reported`)


def interrupted_at_exit(signum=None, frame=None) -> None:
    """A Ctrl-C once the command is over, while the libraries tear down (torch, vLLM): the
    command's one line and exit 130, never a traceback from a finalizer (solver.cli.main)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.write(2, (interrupted_line + "\n").encode())
    os._exit(130)


@contextmanager
def reported(interrupted: str = INTERRUPTED):
    """User errors exit 2 with one line; a failed backbone or Ctrl-C exits non-zero, also one line."""
    global interrupted_line
    interrupted_line = f"error: interrupted: {interrupted}; run the same command again to resume"
    try:
        yield
    except typer.Exit:  # a `fail` inside: already said
        raise
    except UserError as e:
        fail(str(e))
    except BackboneError as e:
        fail(str(e), 1)
    except KeyboardInterrupt:
        fail(interrupted_line.removeprefix("error: "), 130)
    except Exception as e:  # a bug or a library's failure: one line here, the traceback in the log
        if log_path is None:
            raise
        traceback.print_exc()  # into the log
        fail(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
             f"(the traceback is in {log_path})", 1)


def log_note() -> None:
    """The last line of a command: where its library chatter went."""
    if log_path is not None:
        err.print(f"log: {log_path}", highlight=False, markup=False, soft_wrap=True)
