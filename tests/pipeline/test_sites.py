"""Site configs: strict validation and the parsl Config factory."""

import os
import string
import sys
from pathlib import Path

import pytest
import yaml

from ubmd.pipeline.parsl_config import make_config, worker_command
from ubmd.pipeline.sites import SITE_DIR, load_site, shipped_sites, site_dir
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


# ------------------------------------------------------------ values refused at load time
@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("available_accelerators", -2, "GPU count >= 0"),
        ("available_accelerators", [], "non-empty list"),
        ("available_accelerators", [0, 0], "distinct device ids"),
        ("available_accelerators", True, "GPU count"),
        ("available_accelerators", "two", "GPU count"),
        ("max_workers_per_node", 0, "worker count >= 1, or 'auto'"),
        ("max_workers_per_node", "many", "worker count >= 1, or 'auto'"),
        ("cores_per_worker", 0, "greater than 0"),
        ("cores_per_worker", float("inf"), "finite"),
        ("cores_per_worker", (os.cpu_count() or 1) + 1, f"at most {os.cpu_count() or 1}"),
        ("nodes_per_block", 0, "greater than or equal to 1"),
        ("nodes_per_block", True, "a number"),
        ("init_blocks", -1, "greater than or equal to 0"),
        ("min_blocks", -1, "greater than or equal to 0"),
        ("max_blocks", 0, "greater than or equal to 1"),
        ("cores_per_node", 0, "greater than or equal to 1"),
        ("gpus_per_node", 0, "greater than or equal to 1"),
        ("mem_per_node_GB", -4, "greater than or equal to 1"),
        ("max_task_minutes", 0, "greater than 0"),
        ("heartbeat_threshold_s", 1, "greater than or equal to 2"),
        ("heartbeat_threshold_s", 99999, "less than or equal to 3600"),
        ("status_poll_s", 0, "greater than or equal to 1"),
        ("walltime", "00:00:00", "more than zero"),
        ("walltime", "01:75:00", "below 60"),
        ("walltime", 5400, 'quoted string "HH:MM:SS"'),  # YAML's reading of 01:30:00
    ],
)
def test_bad_executor_value_names_key_value_and_what_is_accepted(tmp_path, key, value, accepted):
    data = _base()
    data["executors"]["local"][key] = value
    with pytest.raises(ConfigError) as err:
        load_site(_write(tmp_path, data))
    message = str(err.value)
    assert f"executors.local.{key}" in message or f"{key} = " in message, message
    assert str(value) in message and accepted in message, message


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("retries", -1, "greater than or equal to 0"),
        ("strategy_period_s", 0, "greater than 0"),
        ("strategy_period_s", 1000, "less than or equal to 60"),
        ("executors", {}, "at least one executor"),
    ],
)
def test_bad_site_value_names_key_value_and_what_is_accepted(tmp_path, key, value, accepted):
    data = _base()
    data[key] = value
    with pytest.raises(ConfigError, match=key) as err:
        load_site(_write(tmp_path, data))
    assert (str(value) in str(err.value) or value == {}) and accepted in str(err.value)


def test_cluster_consistency_refused(tmp_path):
    with pytest.raises(ConfigError, match="cores_per_worker = 64 is more than cores_per_node"):
        load_site(_cluster(tmp_path, cores_per_node=32, cores_per_worker=64))
    with pytest.raises(ConfigError, match=r"more GPUs than gpus_per_node = 4.*at most 4"):
        load_site(_cluster(tmp_path, gpus_per_node=4, available_accelerators=8))


def test_accepted_spellings(tmp_path):
    site = load_site(_cluster(tmp_path, available_accelerators=[0, 1], max_workers_per_node="4"))
    spec = site.executors["x"]
    assert spec.available_accelerators == ["0", "1"] and spec.max_workers_per_node == 4
    assert (
        load_site(_cluster(tmp_path, available_accelerators="2")).executors["x"].n_accelerators()
        == 2
    )


# ------------------------------------------------------------ where site files come from
def test_shipped_sites_come_from_the_installed_package():
    assert site_dir() == SITE_DIR
    assert set(shipped_sites()) == {"local", "slurm_example", "pbspro_example", "torque_example"}
    assert (site_dir() / "__init__.py").is_file()  # the data package ubmd.site_configs


def test_a_file_the_user_names_wins_over_a_shipped_site(tmp_path, monkeypatch):
    data = _base()
    data["name"] = "mine"
    (tmp_path / "local").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    assert load_site("local").name == "mine"
    assert load_site(tmp_path / "local").name == "mine"
    monkeypatch.chdir(tmp_path.parent)
    assert load_site("local").name == "local"


def test_unknown_site_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError) as err:
        load_site("nowhere")
    assert all(name in str(err.value) for name in shipped_sites())
    with pytest.raises(FileNotFoundError, match="local"):
        load_site("some/dir/local")  # a path, not a name: not looked up among shipped sites


# ------------------------------------------------------------ parsl's processes without PATH
def _formatted(template: str) -> str:
    """A launch command as parsl formats it: every field, then block_id."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    return template.format(**dict.fromkeys(fields, "X")).format(block_id=0)


def test_interchange_and_local_workers_use_the_drivers_interpreter(tmp_path, monkeypatch):
    (executor,) = make_config(load_site("local"), tmp_path).executors
    assert list(executor.interchange_launch_cmd) == [
        sys.executable, "-m", "parsl.executors.high_throughput.interchange"
    ]  # fmt: skip
    assert executor.launch_cmd.startswith(f"{sys.executable} -m parsl.executors.high_throughput.")
    # an interpreter path with braces survives parsl's two rounds of str.format
    monkeypatch.setattr(sys, "executable", "/opt/{odd}/bin/python")
    command = _formatted(worker_command(load_site("local").executors["local"]))
    assert command.startswith("'/opt/{odd}/bin/python' -m ")  # quoted for the shell


def test_batch_workers_fall_back_to_the_drivers_scripts(tmp_path, monkeypatch):
    spec = load_site(_cluster(tmp_path)).executors["x"]
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    # the site's worker_init decides; the driver's venv only when it left no pool on PATH
    assert worker_command(spec).startswith("process_worker_pool.py ")  # no pool script there
    (bin_dir / "process_worker_pool.py").write_text("")
    first, second = _formatted(worker_command(spec)).splitlines()
    assert first == f'command -v process_worker_pool.py >/dev/null || export PATH={bin_dir}:"$PATH"'
    assert second.startswith("process_worker_pool.py ")


def test_tasks_alone_share_a_local_executors_cores():
    from ubmd.pipeline.sites import ExecutorSpec

    four = ExecutorSpec(provider="local", max_workers_per_node=4, cores_per_worker=1)
    assert [four.threads_alone(n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    wide = ExecutorSpec(provider="local", max_workers_per_node=2, cores_per_worker=2)
    assert [wide.threads_alone(n) for n in (1, 2, 3)] == [4, 2, 2]  # never below its own
    auto = ExecutorSpec(provider="local")  # one worker per core of this machine
    assert auto.threads_alone(1) == (os.cpu_count() or 1)
    # a batch executor's tasks may share nodes with others: its own cores only
    batch = ExecutorSpec(provider="slurm", max_workers_per_node=4, cores_per_worker=8)
    assert batch.threads_alone(1) == 8
    with pytest.raises(ValueError, match="tasks = 0"):
        four.threads_alone(0)
