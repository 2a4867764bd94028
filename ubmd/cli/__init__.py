"""The ``ubmd`` command line.

Each command group lives in its own module with a ``register(app)`` function; heavy
imports (torch, parsl, h5py) happen inside the command bodies so ``ubmd --help`` is fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="ubmd",
    help=(
        "Uncertainty-biased active learning of machine-learned interatomic potentials.\n\n"
        "Start with `ubmd run CAMPAIGN.yaml --site local`; inspect a store with `ubmd store info`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands; each defines register(app: typer.Typer) -> None.
_COMMAND_MODULES = (
    "ubmd.cli.store_cmd",
    "ubmd.cli.model_cmd",
    "ubmd.cli.explore_cmd",
    "ubmd.cli.select_cmd",
    "ubmd.cli.label_cmd",
    "ubmd.cli.run_cmd",
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the ubmd version and exit."),
    debug: bool = typer.Option(
        False, "--debug", help="Show a traceback for bad input too (also: UBMD_DEBUG=1)."
    ),
) -> None:
    from ubmd.cli.errors import set_debug

    set_debug(debug)
    if version:
        from ubmd import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


_registered = False


def get_app() -> typer.Typer:
    """The application with every command registered (once, however often this is called)."""
    global _registered
    if not _registered:
        for name in _COMMAND_MODULES:
            importlib.import_module(name).register(app)
        _registered = True
    return app


def main() -> None:
    get_app()()
