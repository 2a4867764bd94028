"""Site configs: where each task role runs. Strictly validated YAML files -> parsl ``Config`` factories.

A site file names executors (a provider plus worker layout) and maps every role
(``train``, ``explore``, ``select``, ``label``) to one of them. ``make_config`` builds a fresh
parsl ``Config`` each call (a Config object is single-use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ubmd.strict import ConfigError, build

ROLES = ("train", "explore", "select", "label")
SITE_DIR = Path(__file__).resolve().parents[2] / "site_configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecutorSpec(_Strict):
    """One parsl HighThroughputExecutor and the provider that gets it workers."""

    provider: Literal["local", "slurm", "pbspro", "torque"] = "local"
    # worker layout on a node
    max_workers_per_node: int | Literal["auto"] = "auto"
    cores_per_worker: float = Field(1.0, gt=0)
    # GPUs per node (a count, or device ids): parsl starts one worker per GPU and sets that
    # worker's CUDA_VISIBLE_DEVICES, so device "auto" tasks each use their own GPU
    available_accelerators: int | list[str] = 0
    # batch-system fields (ignored by provider "local")
    partition: str | None = None  # SLURM partition
    queue: str | None = None  # PBS / Torque queue
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # SLURM --constraint (e.g. a GPU model)
    walltime: str = "00:30:00"
    nodes_per_block: int = Field(1, ge=1)
    init_blocks: int = Field(1, ge=0)
    min_blocks: int = Field(0, ge=0)
    max_blocks: int = Field(1, ge=1)
    cores_per_node: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=1)  # SLURM --gpus-per-node
    mem_per_node_GB: int | None = Field(None, ge=1)
    select_options: str = ""  # PBS Pro chunk options, e.g. "ngpus=4"
    scheduler_options: str = ""  # extra #SBATCH / #PBS lines, verbatim
    worker_init: str = ""  # shell lines run before the workers start (modules, venv)
    launcher: Literal["single", "srun", "mpiexec", "aprun"] = "single"
    # MPI launch prefix handed to labelers that take one (CP2K, VASP), e.g. "srun -n 32"
    mpi_command: str = ""
    # longest task expected on this executor: workers stop taking tasks once less than this is
    # left of the block's walltime (parsl's drain_period); None = take tasks until killed
    max_task_minutes: float | None = Field(None, gt=0)
    # a worker pool silent this long is lost (e.g. its block was cancelled): its tasks are retried
    heartbeat_threshold_s: int = Field(30, ge=2)
    # how often the scheduler is asked about blocks (a block that ended is only replaced after
    # this); None = parsl's default (60 s for SLURM, PBS Pro and Torque)
    status_poll_s: int | None = Field(None, ge=1)

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        parts = v.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"walltime must be HH:MM:SS, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorSpec:
        if self.gpus_per_node and not self.available_accelerators:
            raise ValueError(
                f"gpus_per_node = {self.gpus_per_node} but available_accelerators is 0: set "
                f"available_accelerators: {self.gpus_per_node} so each worker gets its own GPU"
            )
        drain = self.drain_period_s()
        if drain is not None and drain <= 0:
            raise ValueError(
                f"max_task_minutes = {self.max_task_minutes} does not fit in walltime "
                f"{self.walltime}: ask for a longer walltime or a shorter max_task_minutes"
            )
        if self.min_blocks > self.max_blocks or self.init_blocks > self.max_blocks:
            raise ValueError(
                f"need min_blocks <= max_blocks and init_blocks <= max_blocks, got "
                f"min {self.min_blocks}, init {self.init_blocks}, max {self.max_blocks}"
            )
        return self

    def walltime_s(self) -> int:
        h, m, sec = (int(p) for p in self.walltime.split(":"))
        return 3600 * h + 60 * m + sec

    def drain_period_s(self) -> int | None:
        """Seconds after a block's workers start when they stop taking new tasks (then exit once
        idle, and parsl starts a fresh block for what is left): walltime minus the longest task."""
        if self.max_task_minutes is None or self.provider == "local":
            return None
        return int(self.walltime_s() - 60 * self.max_task_minutes)

    def n_accelerators(self) -> int:
        acc = self.available_accelerators
        return acc if isinstance(acc, int) else len(acc)

    def workers_per_node(self) -> int:
        if self.max_workers_per_node == "auto":
            cores = self.cores_per_node or os.cpu_count() or 1
            n = max(1, int(cores // self.cores_per_worker))
        else:
            n = self.max_workers_per_node
        # one worker per GPU (parsl would cap it the same way)
        return min(n, self.n_accelerators()) if self.n_accelerators() else n


class SiteConfig(_Strict):
    name: str
    executors: dict[str, ExecutorSpec]
    roles: dict[str, str]
    retries: int = Field(2, ge=0)
    strategy_period_s: float = Field(1.0, gt=0)
    # labelers' working directories ($VARS expanded on the compute node, e.g. "/scratch/$USER");
    # default: inside the campaign directory
    scratch_dir: str | None = None

    @model_validator(mode="after")
    def _roles(self) -> SiteConfig:
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            raise ValueError(f"roles must map every role {ROLES}; missing: {missing}")
        for role, label in self.roles.items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
            if label not in self.executors:
                raise ValueError(
                    f"role {role!r} maps to executor {label!r}, which is not defined "
                    f"(executors: {', '.join(self.executors)})"
                )
        for label, spec in self.executors.items():
            if spec.mpi_command and label != self.roles["label"]:
                raise ValueError(
                    f"executor {label!r} sets mpi_command {spec.mpi_command!r}, but only the "
                    f"label executor's ({self.roles['label']!r}) is used: move it there"
                )
        return self


def load_site(name_or_path: str | os.PathLike[str]) -> SiteConfig:
    """Load a site by name (a file in site_configs/) or by path, strictly validated."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SITE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SITE_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"site config {str(name_or_path)!r} not found (a path to a YAML file, or one of: {', '.join(known)})"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    executors = data.get("executors") if isinstance(data, dict) else None
    if isinstance(executors, dict):  # first, so a misspelt key gets its "did you mean"
        for label, spec in executors.items():
            build(ExecutorSpec, spec, where=f"site config {path}: executors.{label}")
    return build(SiteConfig, data, where=f"site config {path}")


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
