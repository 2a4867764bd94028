"""Clusters: the shrunk quickstart on a real one-node SLURM (SlurmProvider, and TorqueProvider on
the slurm-wlm-torque qsub/qstat wrappers), a cancelled block's tasks retried with nothing lost,
one GPU per worker, and the dry run with no scheduler on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import parsl_logs
import pytest
import yaml

from ubmd import keys
from ubmd.store import StructureStore

pytestmark = pytest.mark.timeout(600)

HERE = Path(__file__).resolve().parent
# workers (batch jobs, worker pools) import ubmd from this checkout, not from wherever it is
# installed
PYTHONPATH = os.pathsep.join(p for p in (str(HERE.parents[1]), os.environ.get("PYTHONPATH")) if p)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="module")
def slurm():
    """A one-node SLURM (partitions gpu and cpu on localhost) for this module; stopped after."""
    if _which("slurmctld") is None or _which("munged") is None:
        pytest.skip("slurmctld/munged not installed (apt-get install slurm-wlm munge)")
    # not under pytest's tmp folder: munged runs as user "munge" and must reach its folder
    state = Path(tempfile.mkdtemp(prefix="ubmd-slurm-"))
    state.chmod(0o755)
    ctld, slurmd = _free_ports(2)  # two test sessions at once (CI and a developer) can coexist
    env = {
        **os.environ,
        "SLURM_LOCAL_DIR": str(state),
        "SLURMCTLD_PORT": str(ctld),
        "SLURMD_PORT": str(slurmd),
    }
    env["PATH"] = env["PATH"] + ":/usr/sbin:/sbin"
    script = HERE / "slurm_local.sh"
    res = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        yield {
            **env,
            "SLURM_CONF": str(state / "slurm.conf"),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": PYTHONPATH,
        }
    finally:
        conf = {**env, "SLURM_CONF": str(state / "slurm.conf")}
        # every job of this private cluster is ours
        subprocess.run(["scancel", "--partition=gpu,cpu"], env=conf, capture_output=True)
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _site(tmp_path: Path, provider: str, **extra) -> Path:
    """Train/explore/select on partition "gpu" (two fake GPUs: CPU fallback), labels on "cpu"."""
    where = "partition" if provider == "slurm" else "queue"
    common = {
        "provider": provider,
        "walltime": "00:20:00",
        "max_workers_per_node": 2,
        "cores_per_worker": 1,
        "max_task_minutes": 5,
        "heartbeat_threshold_s": 6,
        "status_poll_s": 3,  # notice a cancelled block within seconds (parsl's default: 60)
        **extra,
    }
    data = {
        "name": f"{provider}_test",
        "executors": {
            # no GPU on this node: workers still get CUDA_VISIBLE_DEVICES 0/1 and run on CPU
            "gpu": {**common, where: "gpu", "available_accelerators": 2},
            "cpu": {**common, where: "cpu", "mpi_command": "srun -n 1"},
        },
        "roles": {"train": "gpu", "explore": "gpu", "select": "gpu", "label": "cpu"},
        "retries": 2,
        "strategy_period_s": 1.0,
    }
    path = tmp_path / f"{provider}_site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(config: Path, site: Path | str, env: dict, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "ubmd.cli", "run", str(config), "--site", str(site),
        "--no-live", *args,
    ]  # fmt: skip


def _counts(store_path: Path) -> dict[tuple[int, str], int]:
    """(iteration, status) -> number of structures; asserts no structure is stored twice."""
    with StructureStore.open(store_path, mode="r") as store:
        arrays = store.read_arrays()
        hashes = [h.tobytes() for h in store.content_hashes()]
    assert len(set(hashes)) == len(hashes), "a structure is stored twice"
    out: dict[tuple[int, str], int] = {}
    for it, status in zip(arrays[keys.ITERATION], arrays[keys.STATUS], strict=True):
        out[(int(it), str(status))] = out.get((int(it), str(status)), 0) + 1
    return out


EXPECTED = {(0, "ok"): 10, (1, "ok"): 3}  # the shrunk quickstart, one iteration


def _scripts(root: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((root / "parsl").rglob("submit_scripts/*")))


def test_quickstart_on_slurm(slurm, tmp_path, shrunk):
    config = shrunk(name="on_slurm")
    root = Path(yaml.safe_load(config.read_text())["directory"])
    res = subprocess.run(
        _cli(config, _site(tmp_path, "slurm"), slurm), env=slurm, capture_output=True,
        text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert _counts(root / "store.h5") == EXPECTED
    scripts = _scripts(root)
    assert "#SBATCH --partition=gpu" in scripts and "#SBATCH --partition=cpu" in scripts
    assert "--available-accelerators 0 1" in scripts and "--drain_period=900" in scripts
    log = "\n".join(p.read_text() for p in (root / "parsl").rglob("parsl.log"))
    assert "sbatch" in log


def test_quickstart_on_torque_wrappers(slurm, tmp_path, shrunk):
    if shutil.which("qsub") is None or shutil.which("qstat") is None:
        pytest.skip("qsub/qstat (slurm-wlm-torque) not installed")
    config = shrunk(name="on_torque")
    root = Path(yaml.safe_load(config.read_text())["directory"])
    site = _site(tmp_path, "torque", cores_per_node=2)
    res = subprocess.run(
        _cli(config, site, slurm),
        env=slurm,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,  # the qsub wrapper writes the jobs' NAME.o<id>/.e<id> files here
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert _counts(root / "store.h5") == EXPECTED
    scripts = _scripts(root)
    assert "#PBS -l nodes=1:ppn=2" in scripts and "#PBS -l walltime=00:20:00" in scripts
    log = "\n".join(p.read_text() for p in (root / "parsl").rglob("parsl.log"))
    # submitted with qsub, polled with qstat (status_poll_s: 3), cleaned up with qdel
    assert re.search(r"qsub\s+-q gpu", log) and re.search(r"qdel \d+", log)
    assert re.search(r"command 'qstat \d+'", log)


def _jobs(env: dict, partition: str) -> list[str]:
    res = subprocess.run(
        ["squeue", "-h", "-p", partition, "-t", "RUNNING", "-o", "%i"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    return res.stdout.split()


def test_cancelled_block_is_retried_and_nothing_lost(slurm, tmp_path, shrunk):
    config = shrunk(name="scancel")
    data = yaml.safe_load(config.read_text())
    data["model"]["training"].update(max_epochs=80, patience=80)  # long enough to be hit
    config.write_text(yaml.safe_dump(data))
    root = Path(data["directory"])
    member = root / "iter_001" / "models" / "member_0.pt"
    proc = subprocess.Popen(
        _cli(config, _site(tmp_path, "slurm"), slurm), env=slurm, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # iteration 1's training makes its models folder when it starts, in a worker of the gpu
        # block, whose log names the executor task it received: that block is cancelled
        running = _poll(
            lambda: (root / "iter_001" / "models").is_dir()
            and parsl_logs.busy(root / "parsl", "gpu"),
            proc, "the training task in a gpu block",
        )  # fmt: skip
        (victim,) = running
        jobs = _jobs(slurm, "gpu")
        assert jobs, "no running block on partition gpu"
        subprocess.run(["scancel", *jobs], env=slurm, check=True)
        assert not member.exists(), "iteration finished before scancel"
        assert proc.wait(timeout=400) == 0, proc.stderr.read()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # parsl lost the block's manager with the task on it, tried the task again, and a worker of
    # a second block ran it to the end and wrote the member
    retried = parsl_logs.check_retried_elsewhere(root / "parsl", victim, "ManagerLost", member)
    assert retried.block != victim.block
    assert len(list((root / "parsl").rglob("submit_scripts/parsl.gpu.block-1.*.stdout"))) >= 1
    assert _counts(root / "store.h5") == EXPECTED


def _poll(predicate, proc: subprocess.Popen, what: str, timeout: float = 300):
    """Poll ``predicate`` until it returns something true, and return that."""
    t0 = time.monotonic()
    while not (value := predicate()):
        assert proc.poll() is None, f"campaign ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_block_drains_before_walltime_and_a_new_block_takes_the_rest(slurm, tmp_path, monkeypatch):
    """walltime 60 s, max_task_minutes 0.75: the block's worker takes no task after 15 s, so of
    four 6-s tasks on one worker the fourth runs in a second block, not the first one."""
    import parsl

    from ubmd.pipeline.parsl_config import make_config
    from ubmd.pipeline.sites import SiteConfig

    for key in ("SLURM_CONF", "PATH", "PYTHONPATH"):
        monkeypatch.setenv(key, slurm[key])
    spec = {
        "provider": "slurm", "partition": "cpu", "walltime": "00:01:00", "max_task_minutes": 0.75,
        "max_workers_per_node": 1, "status_poll_s": 2, "heartbeat_threshold_s": 6,
    }  # fmt: skip
    roles = dict.fromkeys(("train", "explore", "select", "label"), "c")
    site = SiteConfig(name="drain", executors={"c": spec}, roles=roles)
    code = "import os, time; time.sleep(6); print(os.environ['SLURM_JOB_ID'])"
    dfk = parsl.load(make_config(site, tmp_path))
    try:
        app = parsl.python_app(subprocess.check_output, executors=["c"])
        futures = [app([sys.executable, "-c", code], text=True) for _ in range(4)]
        jobs = [f.result(timeout=300).strip() for f in futures]
    finally:
        dfk.cleanup()
        parsl.clear()
    assert len(set(jobs)) == 2, jobs
    assert jobs[0] == jobs[1] != jobs[3]  # the first block ran tasks, then drained


def test_mpi_prefix_runs_inside_a_label_block(slurm, tmp_path, monkeypatch):
    """The example configs' recipe: the label block owns N task slots (scheduler_options), and a
    task started by its worker runs `mpi_command` (here srun -n 2) inside that allocation."""
    import shlex

    import parsl

    from ubmd.pipeline.parsl_config import make_config
    from ubmd.pipeline.sites import SiteConfig

    for key in ("SLURM_CONF", "PATH", "PYTHONPATH"):
        monkeypatch.setenv(key, slurm[key])
    spec = {
        "provider": "slurm", "partition": "cpu", "max_workers_per_node": 1,
        "scheduler_options": "#SBATCH --ntasks-per-node=2", "mpi_command": "srun -n 2",
    }  # fmt: skip
    roles = dict.fromkeys(("train", "explore", "select", "label"), "m")
    site = SiteConfig(name="mpi", executors={"m": spec}, roles=roles)
    rank = "import os; print(os.environ['SLURM_PROCID'], os.environ['SLURM_JOB_ID'])"
    dfk = parsl.load(make_config(site, tmp_path))
    try:
        app = parsl.python_app(subprocess.check_output, executors=["m"])
        argv = [*shlex.split(site.executors["m"].mpi_command), sys.executable, "-c", rank]
        lines = app(argv, text=True).result(timeout=120).split("\n")
    finally:
        dfk.cleanup()
        parsl.clear()
    ranks = sorted(line.split() for line in lines if line.strip())
    assert [r[0] for r in ranks] == ["0", "1"] and ranks[0][1] == ranks[1][1]


def test_one_gpu_per_worker_and_cpu_fallback(tmp_path, monkeypatch):
    """available_accelerators on a node without GPUs: each worker gets its own
    CUDA_VISIBLE_DEVICES and device "auto" resolves to CPU, so campaigns still run."""
    import parsl

    from ubmd.pipeline.parsl_config import make_config
    from ubmd.pipeline.sites import SiteConfig

    spec = {"max_workers_per_node": 4, "available_accelerators": ["0", "1"]}
    site = SiteConfig(
        name="gpus", executors={"g": spec}, roles=dict.fromkeys(("train", "explore", "select", "label"), "g")
    )  # fmt: skip
    # an importable function as the app (workers cannot import this test module): a child
    # Python reports what the worker's environment gives it, and its worker's pid; each waits
    # (60 s at most) until both have started, so the two tasks run at once, on two workers
    code = (
        "import os, sys, time\n"
        "from ubmd.campaign.common import resolve_device\n"
        "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
        "t0 = time.monotonic()\n"
        "while len(os.listdir(sys.argv[1])) < 2 and time.monotonic() - t0 < 60:\n"
        "    time.sleep(0.05)\n"
        "print(os.environ.get('CUDA_VISIBLE_DEVICES', ''), os.getppid(), resolve_device('auto'))"
    )
    started = tmp_path / "started"
    started.mkdir()
    monkeypatch.setenv("PYTHONPATH", PYTHONPATH)
    dfk = parsl.load(make_config(site, tmp_path))
    try:
        app = parsl.python_app(subprocess.check_output, executors=["g"])
        argv = [sys.executable, "-c", code, str(started)]
        futures = [app(argv, text=True) for _ in range(2)]
        results = [f.result(timeout=120).split() for f in futures]
    finally:
        dfk.cleanup()
        parsl.clear()
    assert {r[0] for r in results} == {"0", "1"}  # two workers (one per GPU), each its own
    assert len({r[1] for r in results}) == 2
    assert {r[2] for r in results} == {"cpu"}


# ------------------------------------------------------------------ dry run, no scheduler
@pytest.fixture
def no_scheduler(tmp_path, monkeypatch):
    """PATH holding only this Python: no sbatch, qsub, srun, mpiexec."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    for exe in ("sbatch", "qsub", "srun", "mpiexec"):
        assert shutil.which(exe) is None
    return bin_dir


def test_dry_run_every_shipped_site_without_scheduler(no_scheduler, shrunk):
    from typer.testing import CliRunner

    from ubmd.cli import app, get_app
    from ubmd.pipeline.sites import SITE_DIR

    config = shrunk(name="dry")
    root = Path(yaml.safe_load(config.read_text())["directory"])
    get_app()
    for site in sorted(SITE_DIR.glob("*.yaml")):
        res = CliRunner().invoke(app, ["run", str(config), "--site", str(site), "--dry-run"])
        assert res.exit_code == 0, f"{site.name}: {res.output}"
        out = res.output
        assert "nothing was submitted" in out and "== estimate" in out
        assert re.search(r"label\s+x3\s+on \w+", out)  # selection.batch_size label tasks
        if "local" not in site.stem:
            assert "not found: not a login node" in out
            submit = "sbatch" if "slurm" in site.stem else "qsub"
            assert f"would run `{submit} " in out and "process_worker_pool.py" in out
        assert not root.exists(), f"{site.name}: the dry run created the campaign directory"


def test_dry_run_pbspro_script_line_by_line(no_scheduler, shrunk):
    from ubmd.campaign.config import load_campaign
    from ubmd.pipeline.dryrun import WORKER_PORT, render_batch_scripts
    from ubmd.pipeline.sites import load_site

    config = load_campaign(shrunk(name="pbs"))
    scripts = {s.executor: s for s in render_batch_scripts(config, load_site("pbspro_example"))}
    cpu = scripts["cpu"]
    name = Path(cpu.script_path).name
    assert re.fullmatch(r"parsl\.cpu\.block-0\.[0-9.]+", name)
    sdir = config.campaign_dir / "parsl" / "runinfo" / "000" / "submit_scripts"
    assert cpu.submit_command == f"qsub  -q workq -A my_project {sdir / name}"
    lines = cpu.script.splitlines()
    pool = next(i for i, line in enumerate(lines) if line.startswith("process_worker_pool.py"))
    expected_head = [
        "#!/bin/bash",
        "",
        "#PBS -S /bin/bash",
        f"#PBS -N {name}",
        "#PBS -m n",
        "#PBS -l walltime=12:00:00",
        "#PBS -l select=1:ncpus=128:mpiprocs=128",
        f"#PBS -o {sdir / name}.stdout",
        f"#PBS -e {sdir / name}.stderr",
        "",
        "",
        "module load cp2k",
        "source $HOME/venvs/ubmd/bin/activate",
        "",
        "",
        f'export JOBNAME="{name}"',
        "",
        "set -e",
        "export CORES=$(getconf _NPROCESSORS_ONLN)",
    ]
    assert lines[: len(expected_head)] == expected_head
    args = lines[pool].split()
    assert args[:2] == ["process_worker_pool.py", "--max_workers_per_node=4"]
    assert f"--port={WORKER_PORT}" in args and "--drain_period=40500" in args
    assert args[args.index("-c") : args.index("-c") + 2] == ["-c", "32.0"]
    assert f"--logdir={config.campaign_dir / 'parsl' / 'worker_logs' / 'cpu'}" in args
    assert lines[pool + 1 :][:3] == ["}", "for COUNT in $(seq 1 1 $WORKERCOUNT); do",
                                     '    [[ "1" == "1" ]] && echo "Launching worker: $COUNT"']  # fmt: skip
    gpu = scripts["gpu"].script.splitlines()
    assert "#PBS -l select=1:ncpus=32:ngpus=4" in gpu
    assert any(line.endswith("--available-accelerators 0 1 2 3") for line in gpu)
    assert not config.campaign_dir.exists()


def test_dry_run_hands_mpi_prefix_to_cp2k_and_checks_basis(no_scheduler, shrunk):
    """A labeler that takes a launcher gets the site's mpi_command; CP2K's check (executable,
    basis and potential files) runs in the dry run."""
    from ubmd.campaign.config import load_campaign
    from ubmd.campaign.labels import labeler_settings

    config = load_campaign(shrunk(name="mpi"))
    cp2k = config.model_copy(update={"labeler": config.labeler.model_copy(update={"name": "cp2k"})})
    assert labeler_settings(cp2k, launcher="srun -n 32")["launcher"] == "srun -n 32"
    assert "launcher" not in labeler_settings(config, launcher="srun -n 32")  # xtb takes none
    own = cp2k.model_copy(
        update={"labeler": cp2k.labeler.model_copy(update={"settings": {"launcher": "mpirun"}})}
    )
    assert labeler_settings(own, launcher="srun -n 32")["launcher"] == "mpirun"
    from ubmd.pipeline.dryrun import dry_run
    from ubmd.pipeline.sites import load_site
    from ubmd.strict import ConfigError

    exe = shutil.which("cp2k.psmp", path=os.defpath + ":/usr/bin:/usr/local/bin")
    if exe is None:
        pytest.skip("cp2k.psmp not installed")
    settings = {"command": exe, "data_dir": str(no_scheduler)}  # no BASIS_MOLOPT there
    bad = cp2k.model_copy(
        update={"labeler": cp2k.labeler.model_copy(update={"settings": settings})}
    )
    with pytest.raises(ConfigError, match="BASIS_MOLOPT"):
        dry_run(bad, load_site("slurm_example"))
    good = cp2k.model_copy(
        update={"labeler": cp2k.labeler.model_copy(update={"settings": {"command": exe}})}
    )
    from ubmd.pipeline.dryrun import format_report

    out = format_report(dry_run(good, load_site("slurm_example")))
    assert "labels run as 'srun -n 32' + the labeler's command" in out
    assert "srun not on this machine's PATH" in out


def test_label_task_works_in_the_sites_scratch_dir(tmp_path, shrunk, monkeypatch):
    """scratch_dir ($VARS expanded where the task runs) holds the labeler's working directory."""
    from ubmd.campaign.config import load_campaign
    from ubmd.campaign.labels import label_task, write_initial_selection
    from ubmd.campaign.layout import CampaignLayout

    config = load_campaign(
        shrunk(name="scratch", labeler={"name": "emt", "settings": {"allow_fun_elements": True}})
    )
    layout = CampaignLayout(config.campaign_dir)
    selection = layout.selection(0)
    selection.parent.mkdir(parents=True)
    write_initial_selection(config, selection)
    monkeypatch.setenv("UBMD_TEST_SCRATCH", str(tmp_path / "fast"))
    workdir = layout.label_workdir(0, 1)
    out = label_task(
        config.model_dump(mode="json"), selection=str(selection), iteration=0, index=1,
        out=str(layout.label(0, 1)), workdir=str(workdir), launcher="mpiexec -n 4",
        scratch_dir="$UBMD_TEST_SCRATCH/ubmd",
    )  # fmt: skip
    assert out["status"] == "ok"
    assert layout.label(0, 1).is_file() and not workdir.exists()
    assert (tmp_path / "fast" / "ubmd" / "scratch" / "iter_000" / "labels" / workdir.name).is_dir()


def test_dry_run_estimate_follows_the_cost_model(tmp_path, shrunk):
    from ubmd.campaign.config import load_campaign
    from ubmd.pipeline.dryrun import dry_run, load_costs
    from ubmd.pipeline.sites import load_site
    from ubmd.strict import ConfigError

    config = load_campaign(shrunk(name="costs"))
    site = load_site("slurm_example")
    costs = tmp_path / "costs.yaml"
    costs.write_text("label_minutes: {xtb: 60.0}\ntrain_s_per_epoch_per_100_structures: 1.0\n")
    slow = "\n".join(dry_run(config, site, costs=load_costs(costs)).estimate)
    fast = "\n".join(dry_run(config, site).estimate)
    core_h = [float(re.search(r"([0-9.]+) core-hours", t).group(1)) for t in (slow, fast)]
    # 13 labels x 1 h x 32 cores per label worker dominate the slow model
    assert core_h[0] > 13 * 32 * 0.99 and core_h[1] < 13 * 32 * 0.1
    assert "60 min per xtb label" in slow
    costs.write_text("label_minute: {xtb: 1}\n")
    with pytest.raises(ConfigError, match="label_minute.*label_minutes"):
        load_costs(costs)
