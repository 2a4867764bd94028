"""The top-level command line: help, version, and that it stays cheap to start."""

import subprocess
import sys

from typer.testing import CliRunner

from ubmd import __version__
from ubmd.cli import app, get_app

runner = CliRunner()


def test_help_lists_command_groups():
    get_app()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_cli_import_does_not_pull_torch_or_parsl():
    # `ubmd --help` must stay fast: heavy libraries are imported inside command bodies only.
    code = "import sys, ubmd.cli as c; c.get_app(); print('torch' in sys.modules, 'parsl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_commands_are_registered_once():
    first = [c.name for c in get_app().registered_commands]
    again = [c.name for c in get_app().registered_commands]
    groups = [g.name for g in get_app().registered_groups]
    assert first == again
    assert len(first) == len(set(first)) and len(groups) == len(set(groups))
    assert {"run", "status", "train", "evaluate", "explore", "select", "design", "label"} <= set(
        first
    )


def _failing_command(exc: BaseException):
    """A throwaway app whose one command raises ``exc`` inside the CLI's error wrapper."""
    import typer

    from ubmd.cli import _root
    from ubmd.cli.errors import user_errors

    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(_root)

    @app.command()
    def boom() -> None:
        with user_errors():
            raise exc

    return app


def test_bad_input_is_one_line_without_traceback():
    result = runner.invoke(
        _failing_command(ValueError("campaign file 'x.yaml' is empty")), ["boom"]
    )
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "error: campaign file 'x.yaml' is empty" in result.output
    assert "Traceback" not in result.output


def test_a_bug_keeps_its_traceback():
    # TypeError / KeyError / AttributeError are bugs in ubmd, not a user's mistake
    for exc in (TypeError("unsupported operand"), KeyError("n_atoms"), AttributeError("x")):
        result = runner.invoke(_failing_command(exc), ["boom"])
        assert result.exception is exc, result.output
        assert "error:" not in result.output


def test_debug_shows_the_traceback_of_bad_input(monkeypatch):
    exc = ValueError("bad value 7")
    result = runner.invoke(_failing_command(exc), ["--debug", "boom"])
    assert result.exception is exc
    monkeypatch.setenv("UBMD_DEBUG", "1")
    result = runner.invoke(_failing_command(exc), ["boom"])
    assert result.exception is exc
    monkeypatch.delenv("UBMD_DEBUG")
    result = runner.invoke(_failing_command(exc), ["boom"])
    assert isinstance(result.exception, SystemExit)


def test_messages_are_not_markup():
    # square brackets in a message (systems[ala2]) are text, not rich markup
    result = runner.invoke(
        _failing_command(ValueError("systems[ala2].structure: [bold]x")), ["boom"]
    )
    assert "systems[ala2].structure: [bold]x" in result.output
