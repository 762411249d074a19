"""What every CLI command shares: the consoles and the one-line error exits."""

from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from solver.backbone import BackboneError
from solver.types import UserError

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2):
    err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


class RateColumn(ProgressColumn):
    """Items per second, in the caller's unit (questions, texts)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"-- {self.unit}/s")


def progress_bar(unit: str, disable: bool = False, console: Console | None = None) -> Progress:
    """The one progress bar: description, bar, done/total, rate, elapsed (on stderr)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit), TimeElapsedColumn())
    return Progress(*columns, console=console or err, disable=disable, transient=False)


def skipped_note(loaded) -> str:
    """What the data loader skipped or normalised in a labelled file, for a report line."""
    parts = [f"{n} rows skipped: {why}" for why, n in loaded.skipped.items()]
    if loaded.relabelled:
        parts.append(f"{loaded.relabelled} labels normalised")
    return f"; in the file: {', '.join(parts)}" if parts else ""


@contextmanager
def reported(interrupted: str = "the answers so far are journaled"):
    """User errors exit 2 with one line; a failed backbone or Ctrl-C exits non-zero, also one line."""
    try:
        yield
    except UserError as e:
        fail(str(e))
    except BackboneError as e:
        fail(str(e), 1)
    except KeyboardInterrupt:
        fail(f"interrupted: {interrupted}; run the same command again to resume", 130)
