"""Turning library errors into a clear message and a non-zero exit status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

_err = Console(stderr=True, soft_wrap=True)

# Exceptions the library raises for bad input or a failed operation: shown as one line.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    OSError,
    KeyError,
    TypeError,
)


@contextlib.contextmanager
def user_errors(exit_code: int = 2) -> Iterator[None]:
    """Print ``error: <message>`` for user-facing exceptions and exit with ``exit_code``."""
    try:
        yield
    except typer.Exit:
        raise
    except _USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True)
        raise typer.Exit(exit_code) from None
