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
