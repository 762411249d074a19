"""What every CLI command shares: the consoles and the one-line error exits."""

from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console

from solver.backbone import BackboneError
from solver.types import UserError

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2):
    err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def reported():
    """User errors exit 2 with one line; a failed backbone or Ctrl-C exits non-zero, also one line."""
    try:
        yield
    except UserError as e:
        fail(str(e))
    except BackboneError as e:
        fail(str(e), 1)
    except KeyboardInterrupt:
        fail("interrupted: the answers so far are journaled; run the same command again to resume", 130)
