"""Site configs: strict validation and the parsl Config factory."""

from pathlib import Path

import pytest
import yaml

from ubmd.pipeline.sites import SITE_DIR, load_site, make_config
from ubmd.strict import ConfigError


def test_every_shipped_site_loads_and_builds(tmp_path):
    files = sorted(SITE_DIR.glob("*.yaml"))
    assert files, "no site configs shipped"
    for f in files:
        site = load_site(f)
        config = make_config(site, tmp_path / f.stem)
        assert {e.label for e in config.executors} == set(site.executors)
        assert config.strategy_period <= 5


def test_local_site_by_name_maps_every_role():
    site = load_site("local")
    assert set(site.roles) == {"train", "explore", "select", "label"}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((SITE_DIR / "local.yaml").read_text())


def test_misspelt_key_names_nearest(tmp_path):
    data = _base()
    data["executors"]["local"]["cores_per_wroker"] = 1
    with pytest.raises(ConfigError, match="cores_per_wroker.*cores_per_worker"):
        load_site(_write(tmp_path, data))
    data = _base()
    data["retrys"] = 3
    with pytest.raises(ConfigError, match="retrys.*retries"):
        load_site(_write(tmp_path, data))


def test_role_to_missing_executor_and_missing_role(tmp_path):
    data = _base()
    data["roles"]["label"] = "cpu"
    with pytest.raises(ConfigError, match="'cpu'"):
        load_site(_write(tmp_path, data))
    data = _base()
    del data["roles"]["select"]
    with pytest.raises(ConfigError, match="select"):
        load_site(_write(tmp_path, data))


def test_bad_walltime_and_unknown_site(tmp_path):
    data = _base()
    data["executors"]["local"]["walltime"] = "2h"
    with pytest.raises(ConfigError, match="HH:MM:SS"):
        load_site(_write(tmp_path, data))
    with pytest.raises(FileNotFoundError, match="local"):
        load_site("no-such-site")
