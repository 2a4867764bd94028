"""A site as a parsl ``Config``: executors, providers, launchers and the worker command.

``make_config`` builds a fresh parsl ``Config`` each call (a Config object is single-use).
Parsl's own helper processes are started with this interpreter (``sys.executable -m ...``), so
an ``ubmd`` called by its absolute path, with its environment not activated, still finds them.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ubmd.pipeline.sites import ExecutorSpec, SiteConfig


def make_config(site: SiteConfig, run_dir: str | os.PathLike[str]) -> Any:
    """A fresh parsl Config for ``site`` with its run directory under ``run_dir``."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    executors = []
    for label, spec in site.executors.items():
        executors.append(
            HighThroughputExecutor(
                label=label,
                provider=_poll_every(_provider(spec), spec.status_poll_s)
                if spec.status_poll_s
                else _provider(spec),
                max_workers_per_node=spec.workers_per_node(),
                cores_per_worker=spec.cores_per_worker,
                available_accelerators=spec.available_accelerators,
                drain_period=spec.drain_period_s(),
                heartbeat_period=max(1, min(5, spec.heartbeat_threshold_s // 3)),
                heartbeat_threshold=spec.heartbeat_threshold_s,
                poll_period=10,
                worker_logdir_root=str(Path(run_dir) / "worker_logs"),
                launch_cmd=worker_command(spec),
                interchange_launch_cmd=interchange_command(),
            )
        )
    return Config(
        executors=executors,
        retries=site.retries,
        strategy_period=site.strategy_period_s,
        run_dir=str(Path(run_dir) / "runinfo"),
        max_idletime=30.0,
        initialize_logging=True,
    )


# parsl starts its interchange and worker pools as scripts found on PATH, which lacks them when
# ubmd runs by absolute path from a venv that is not activated (what batch scripts do)
POOL_SCRIPT = "process_worker_pool.py"
_POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
_INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"


def interchange_command() -> list[str]:
    """The interchange runs beside the driver: the driver's own interpreter and parsl."""
    return [sys.executable, "-m", _INTERCHANGE_MODULE]


def worker_command(spec: ExecutorSpec) -> str:
    """parsl's worker pool command (a template parsl formats twice), found without PATH.

    Local workers run on this machine: the driver's interpreter, whatever PATH holds. On a
    compute node the site's ``worker_init`` (modules, a venv) decides which pool runs; when it
    leaves none on PATH, the pool next to the driver's interpreter (a shared file system) is
    used, if that is where this install keeps it."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    if not DEFAULT_LAUNCH_CMD.startswith(f"{POOL_SCRIPT} "):
        raise RuntimeError(f"parsl's worker command changed: {DEFAULT_LAUNCH_CMD[:60]!r}...")
    if not sys.executable:
        return DEFAULT_LAUNCH_CMD
    if spec.provider == "local":
        python = _literal(shlex.quote(sys.executable))
        return f"{python} -m {_POOL_MODULE}{DEFAULT_LAUNCH_CMD[len(POOL_SCRIPT) :]}"
    scripts = Path(sys.executable).parent
    if not (scripts / POOL_SCRIPT).is_file():
        return DEFAULT_LAUNCH_CMD
    fallback = (
        f'command -v {POOL_SCRIPT} >/dev/null || export PATH={shlex.quote(str(scripts))}:"$PATH"'
    )
    return f"{_literal(fallback)}\n{DEFAULT_LAUNCH_CMD}"


def _literal(text: str) -> str:
    """``text`` safe in parsl's launch command template, which goes through str.format twice."""
    return text.replace("{", "{{{{").replace("}", "}}}}")


def _poll_every(provider: Any, seconds: int) -> Any:
    """``provider`` with its scheduler status poll every ``seconds`` (a read-only property in
    parsl's providers, hence a one-off subclass)."""
    base = type(provider)
    attrs = {
        "status_polling_interval": property(lambda self: seconds),
        "__module__": base.__module__,
    }
    provider.__class__ = type(base.__name__, (base,), attrs)
    return provider


def _launcher(spec: ExecutorSpec) -> Any:
    from parsl import launchers

    return {
        "single": launchers.SingleNodeLauncher,
        "srun": launchers.SrunLauncher,
        "mpiexec": launchers.MpiExecLauncher,
        "aprun": launchers.AprunLauncher,
    }[spec.launcher]()


def _provider(spec: ExecutorSpec) -> Any:
    from parsl import providers

    common = {
        "nodes_per_block": spec.nodes_per_block,
        "init_blocks": spec.init_blocks,
        "min_blocks": spec.min_blocks,
        "max_blocks": spec.max_blocks,
        "worker_init": spec.worker_init,
        "launcher": _launcher(spec),
    }
    if spec.provider == "local":
        return providers.LocalProvider(**common)
    if spec.provider == "slurm":
        return providers.SlurmProvider(
            partition=spec.partition,
            account=spec.account,
            qos=spec.qos,
            walltime=spec.walltime,
            cores_per_node=spec.cores_per_node,
            gpus_per_node=spec.gpus_per_node,
            mem_per_node=spec.mem_per_node_GB,
            constraint=spec.constraint,
            scheduler_options=spec.scheduler_options,
            exclusive=False,
            **common,
        )
    if spec.provider == "pbspro":
        return providers.PBSProProvider(
            queue=spec.queue,
            account=spec.account,
            walltime=spec.walltime,
            cpus_per_node=spec.cores_per_node or 1,
            select_options=spec.select_options,
            scheduler_options=spec.scheduler_options,
            **common,
        )
    provider = providers.TorqueProvider(
        queue=spec.queue,
        account=spec.account,
        walltime=spec.walltime,
        scheduler_options=spec.scheduler_options,
        **common,
    )
    if spec.cores_per_node:
        _ask_ppn(provider, spec.cores_per_node)
    return provider


def _ask_ppn(provider: Any, ppn: int) -> None:
    """Make parsl's TorqueProvider ask for ``nodes=N:ppn=<cores>`` instead of ``ppn=1``.

    HTEX submits every block with one task per node (one worker pool), and TorqueProvider puts
    that number into ``ppn``, so a block would get one core. The template gets ``ppn`` cores
    while the launcher still starts one worker pool per node.
    """
    submit, launcher = provider.submit, provider.launcher

    def one_pool(command: str, _tasks_per_node: int, nodes: int, *rest: Any) -> str:
        return launcher(command, 1, nodes, *rest)

    def submit_with_ppn(command: str, tasks_per_node: int, job_name: str = "parsl.torque") -> Any:
        provider.launcher = one_pool
        try:
            return submit(command, ppn, job_name)
        finally:
            provider.launcher = launcher

    provider.submit = submit_with_ppn
