"""The README stays true: its Python snippets run, its scripts and commands exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_scripts_exist_and_are_wired():
    bash = "\n".join(_blocks("bash"))
    for script in re.findall(r"bash ([\w/.-]+\.sh)", bash):
        assert (ROOT / script).is_file(), script
    # CI runs the README's test command
    assert "bash tests/run.sh" in bash
    assert "tests/run.sh" in (ROOT / ".ci" / "run").read_text()
    # the quickstart script runs the quickstart campaign on the local site
    quick = (ROOT / "workflows" / "quickstart" / "run.sh").read_text()
    assert "workflows/quickstart/campaign.yaml --site local" in quick


def test_readme_commands_exist():
    commands = set(re.findall(r"`ubmd ([a-z]+)", README)) | set(
        re.findall(r"^ubmd ([a-z]+)", "\n".join(_blocks("bash")), flags=re.M)
    )
    assert commands >= {
        "run",
        "status",
        "store",
        "train",
        "evaluate",
        "explore",
        "select",
        "design",
        "label",
    }
    from typer.testing import CliRunner

    from ubmd.cli import app, get_app

    get_app()
    for cmd in sorted(commands):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert res.exit_code == 0, (cmd, res.output)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_snippet_runs(index, tmp_path):
    code = _blocks("python")[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
