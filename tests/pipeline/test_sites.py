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


def _cluster(tmp_path: Path, **spec) -> Path:
    data = {
        "name": "c",
        "executors": {"x": {"provider": "slurm", "walltime": "01:00:00", **spec}},
        "roles": dict.fromkeys(("train", "explore", "select", "label"), "x"),
    }
    return _write(tmp_path, data)


def test_drain_period_is_walltime_minus_longest_task(tmp_path):
    site = load_site(_cluster(tmp_path, max_task_minutes=15))
    assert site.executors["x"].drain_period_s() == 45 * 60
    (executor,) = make_config(site, tmp_path).executors
    assert executor.drain_period == 45 * 60
    # no limit given, or a local executor: workers never drain
    assert load_site(_cluster(tmp_path)).executors["x"].drain_period_s() is None
    local = make_config(load_site("local"), tmp_path).executors[0]
    assert local.drain_period is None
    with pytest.raises(ConfigError, match="max_task_minutes = 60.*01:00:00"):
        load_site(_cluster(tmp_path, max_task_minutes=60))


def test_gpus_need_one_worker_each(tmp_path):
    with pytest.raises(ConfigError, match="available_accelerators: 4"):
        load_site(_cluster(tmp_path, gpus_per_node=4))
    site = load_site(
        _cluster(tmp_path, gpus_per_node=4, available_accelerators=4, max_workers_per_node=16)
    )
    (executor,) = make_config(site, tmp_path).executors
    assert executor.available_accelerators == ["0", "1", "2", "3"]
    assert site.executors["x"].workers_per_node() == 4
    assert executor.provider.gpus_per_node == 4


def test_blocks_must_fit_max_blocks(tmp_path):
    with pytest.raises(ConfigError, match="min_blocks <= max_blocks"):
        load_site(_cluster(tmp_path, min_blocks=3, max_blocks=2))


def test_torque_block_asks_for_all_cores_but_starts_one_pool(tmp_path):
    data = yaml.safe_load(_cluster(tmp_path).read_text())
    data["executors"]["x"].update(provider="torque", cores_per_node=8, queue="batch")
    site = load_site(_write(tmp_path, data))
    provider = make_config(site, tmp_path).executors[0].provider
    provider.script_dir = str(tmp_path)
    commands = []
    provider.execute_wait = lambda cmd, timeout=None: (commands.append(cmd), (0, "7.srv", ""))[1]
    assert provider.submit("echo pool", 1, "blk") == "7.srv"
    (script,) = tmp_path.glob("parsl.blk.*.submit")
    text = script.read_text()
    assert "#PBS -l nodes=1:ppn=8" in text
    assert "WORKERCOUNT=1" in text  # one worker pool per node, not eight
    assert commands == [f"qsub  -q batch {script}"]


def test_mpi_command_only_on_the_label_executor(tmp_path):
    data = yaml.safe_load((SITE_DIR / "slurm_example.yaml").read_text())
    data["executors"]["gpu"]["mpi_command"] = "srun -n 4"
    with pytest.raises(ConfigError, match="'gpu' sets mpi_command.*'cpu'"):
        load_site(_write(tmp_path, data))
