"""ubmd installed the way users install it: a wheel in a fresh venv (not the editable checkout)
carries its site configs and runs `ubmd` by absolute path with the venv not activated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the build reads (pyproject's readme, packages and package-dir)
SOURCES = ("pyproject.toml", "README.md", "ubmd", "site_configs")
SITES = {"local", "slurm_example", "pbspro_example", "torque_example"}


def _packages_in_tree() -> set[str]:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "ubmd").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    return found | {"ubmd.site_configs"}


def test_every_package_is_listed_in_pyproject():
    """pyproject lists its packages (find cannot see the mapped ubmd.site_configs): a new
    subpackage must be added there, or wheels leave it out."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(listed["packages"]) == _packages_in_tree()
    assert listed["package-dir"] == {"ubmd.site_configs": "site_configs"}


def _run(*args: str | Path, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{args}: {res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def _build_wheel(tmp: Path) -> Path:
    """The wheel, built from a copy of the sources: an in-tree build would leave build/ in the
    checkout, and stale files there would end up in later wheels."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", dist, src)  # fmt: skip
    (wheel,) = dist.glob("ubmd-*.whl")
    return wheel


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (it could point at the checkout), no user site, and PATH without the venv's
    bin folder or this interpreter's: as a batch script calls ubmd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin", **extra}


@pytest.mark.timeout(600)  # about 10 s on 2 cores
def test_wheel_in_a_fresh_venv_runs_by_absolute_path(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"ubmd/site_configs/{s}.yaml" for s in SITES} <= names
    missing = [p for p in _packages_in_tree() if f"{p.replace('.', '/')}/__init__.py" not in names]
    assert not missing, missing
    assert not any(n.startswith("site_configs/") for n in names)  # no top-level package

    # torch & co. come from this interpreter's site-packages; ubmd from the wheel. The
    # checkout's editable install is on that path too (its finder comes after the normal path
    # search, so the venv's own ubmd wins): checked below by where ubmd is imported from.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, env=_clean_env())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -I: neither the current folder nor PYTHON* variables on sys.path
    probe = (
        "import ubmd, ubmd.pipeline.sites as s; print(ubmd.__file__); print(s.site_dir()); "
        "print(','.join(s.shipped_sites())); print(s.load_site('local').name)"
    )
    out = _run(python, "-I", "-c", probe, cwd=elsewhere, env=_clean_env()).stdout.split()
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert Path(out[0]).is_relative_to(site_packages), out[0]
    assert Path(out[1]) == Path(out[0]).parent / "site_configs"
    assert set(out[2].split(",")) == SITES and out[3] == "local"

    campaign = ROOT / "workflows" / "quickstart" / "campaign.yaml"
    res = subprocess.run(
        [venv / "bin" / "ubmd", "run", campaign, "--site", "local", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=_clean_env(),
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert "nothing was submitted" in res.stdout
    # the local workers would run with the venv's interpreter, not whatever PATH finds
    assert f"{python} -m parsl.executors.high_throughput.process_worker_pool" in res.stdout

    unknown = subprocess.run(
        [venv / "bin" / "ubmd", "run", campaign, "--site", "nowhere", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=_clean_env(),
    )
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert all(s in unknown.stderr for s in SITES), unknown.stderr
