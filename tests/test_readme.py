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


def test_readme_without_a_campaign_runs(tmp_path):
    """The command-line walk-through (train, evaluate, explore, select, label) runs as written,
    in a fresh directory that sees the repository's data/."""
    section = README[README.index("## Without a campaign") :]
    section = section[: section.index("\n## ", 1)]
    script = "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))
    assert "ubmd train" in script and "ubmd label" in script
    (tmp_path / "data").symlink_to(ROOT / "data")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    for name in ("ala2.pt", "cands.h5", "picks.json", "picked.extxyz", "labels.h5"):
        assert (tmp_path / name).is_file(), name
    assert "coverage" in res.stdout and "steady state" in res.stdout
    assert "labeled 4 structures: 4 ok" in res.stdout
