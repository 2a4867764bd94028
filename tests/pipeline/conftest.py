"""A shrunk quickstart campaign for end-to-end tests (seconds per phase on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "workflows" / "quickstart" / "campaign.yaml"


def shrunk_quickstart(
    tmp_path: Path, *, name: str = "shrunk", iterations: int = 1, **overrides
) -> Path:
    """The quickstart campaign made tiny, written to ``tmp_path/name.yaml`` (absolute paths)."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["name"] = name
    data["directory"] = str(tmp_path / name)
    data["systems"][0]["structure"] = str(ROOT / "data/ala2/alanine-dipeptide.extxyz")
    data["evaluation"]["test_set"] = str(ROOT / "data/ala2/ala2_xtb_300K.extxyz")
    data["evaluation"]["test_sets"] = {"plane": str(ROOT / "data/ala2/ala2_xtb_plane.extxyz")}
    data["initial_data"]["random_displacements"] = 10
    data["model"]["training"] = {"max_epochs": 12, "patience": 10}
    data["model"]["fine_tuning"] = {"max_epochs": 6, "patience": 6}
    data["model"]["hyperparameters"] = {"n_features": 16}
    data["exploration"].update(explorers=2, replicas=2)
    data["exploration"]["settings"] = {"n_steps": 60, "record_every": 20}
    data["selection"]["batch_size"] = 3
    data["stopping"]["max_iterations"] = iterations
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def shrunk(tmp_path):
    return lambda **kw: shrunk_quickstart(tmp_path, **kw)
