"""Turning bad input into a clear message and a non-zero exit status, and nothing else.

Bad input (a ``ValueError``, which every config, file and store error in ubmd is, or an
``OSError`` such as a missing or unreadable file) is one line naming what is wrong. Anything
else is a bug in ubmd or a library: it keeps its traceback, so it is never mistaken for a
user's mistake. ``ubmd --debug`` (or ``UBMD_DEBUG=1``) shows tracebacks for bad input too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import typer
from rich.console import Console

_err = Console(stderr=True, soft_wrap=True)

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debugging() -> bool:
    return _debug or os.environ.get("UBMD_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def user_errors(exit_code: int = 2) -> Iterator[None]:
    """Print ``error: <message>`` for bad input and exit with ``exit_code``."""
    try:
        yield
    except typer.Exit:
        raise
    except USER_ERRORS as exc:
        if debugging():
            raise
        _err.print(f"[bold red]error:[/] {_message(exc)}", highlight=False, markup=True)
        raise typer.Exit(exit_code) from None


def _message(exc: BaseException) -> str:
    from rich.markup import escape

    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    if len(text) > 1500:  # a message is one line to read, not a dump of the input
        text = text[:1500] + " ..."
    return escape(text)
