"""Site configs: where each task role runs. Strictly validated YAML files -> parsl ``Config`` factories.

A site file names executors (a provider plus worker layout) and maps every role
(``train``, ``explore``, ``select``, ``label``) to one of them. ``make_config`` builds a fresh
parsl ``Config`` each call (ubmd.pipeline.parsl_config).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ubmd.strict import brief, build, load_yaml

ROLES = ("train", "explore", "select", "label")
# the site files shipped with ubmd: the top-level site_configs/ folder of the source tree,
# installed inside the package as this data package (pyproject.toml)
SITE_PACKAGE = "ubmd.site_configs"


def site_dir() -> Path:
    """The folder of the site configs shipped with ubmd, wherever this install put it."""
    try:
        return Path(str(importlib.resources.files(SITE_PACKAGE)))
    except ModuleNotFoundError:  # a source checkout on sys.path, not installed
        return Path(__file__).resolve().parents[2] / "site_configs"


def shipped_sites() -> list[str]:
    """Names of the shipped site configs (what ``--site NAME`` accepts)."""
    return sorted(p.stem for p in site_dir().glob("*.yaml"))


def __getattr__(name: str) -> Any:
    # SITE_DIR (kept for existing callers) is resolved when used, not at import
    if name == "SITE_DIR":
        return site_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# numeric fields, where YAML's true/false would pass for 1/0
_COUNTS = (
    "cores_per_worker",
    "nodes_per_block",
    "init_blocks",
    "min_blocks",
    "max_blocks",
    "cores_per_node",
    "gpus_per_node",
    "mem_per_node_GB",
    "max_task_minutes",
    "heartbeat_threshold_s",
    "status_poll_s",
)
_ACCELERATORS = "a GPU count >= 0 (0: none), or a non-empty list of distinct device ids like [0, 1]"
_WORKERS = "a worker count >= 1, or 'auto' (one per core)"


class ExecutorSpec(_Strict):
    """One parsl HighThroughputExecutor and the provider that gets it workers.

    Every value that would leave the campaign waiting for workers that never come (no worker
    on a node, a non-positive count, an impossible walltime) is refused at load time."""

    provider: Literal["local", "slurm", "pbspro", "torque"] = "local"
    # worker layout on a node
    max_workers_per_node: int | Literal["auto"] = "auto"
    cores_per_worker: float = Field(1.0, gt=0, allow_inf_nan=False)
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
    max_task_minutes: float | None = Field(None, gt=0, allow_inf_nan=False)
    # a worker pool silent this long is lost (e.g. its block was cancelled): its tasks are
    # retried; above an hour a lost pool would hold its tasks for hours
    heartbeat_threshold_s: int = Field(30, ge=2, le=3600)
    # how often the scheduler is asked about blocks (a block that ended is only replaced after
    # this); None = parsl's default (60 s for SLURM, PBS Pro and Torque)
    status_poll_s: int | None = Field(None, ge=1, le=600)

    @field_validator(*_COUNTS, mode="before")
    @classmethod
    def _not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"expected a number, not {str(v).lower()}")
        return v

    @field_validator("max_workers_per_node", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":  # a quoted count
            try:
                v = int(v)
            except ValueError:
                raise ValueError(f"expected {_WORKERS}") from None
        # 0 or fewer: parsl would start a pool with no worker, and wait for one forever
        if isinstance(v, bool) or (isinstance(v, int) and v < 1):
            raise ValueError(f"expected {_WORKERS}")
        return v

    @field_validator("available_accelerators", mode="before")
    @classmethod
    def _accelerators(cls, v: Any) -> Any:
        if isinstance(v, str):  # a quoted count
            try:
                v = int(v)
            except ValueError:
                raise ValueError(f"expected {_ACCELERATORS}") from None
        if isinstance(v, bool) or (isinstance(v, int) and v < 0):
            raise ValueError(f"expected {_ACCELERATORS}")
        if isinstance(v, list):
            return _device_ids(v)
        return v

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> Any:
        if not isinstance(v, str):  # YAML reads an unquoted 01:30:00 as the number 5400
            raise ValueError('walltime must be a quoted string "HH:MM:SS"')
        parts = v.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError("walltime must be HH:MM:SS")
        h, m, s = (int(p) for p in parts)
        if m >= 60 or s >= 60 or h + m + s == 0:
            raise ValueError(
                "walltime must be HH:MM:SS with minutes and seconds below 60, more than zero"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorSpec:
        self._check_gpus()
        self._check_cores()
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

    def _check_gpus(self) -> None:
        if self.gpus_per_node and not self.available_accelerators:
            raise ValueError(
                f"gpus_per_node = {self.gpus_per_node} but available_accelerators is 0: set "
                f"available_accelerators: {self.gpus_per_node} so each worker gets its own GPU"
            )
        if self.gpus_per_node and self.n_accelerators() > self.gpus_per_node:
            raise ValueError(
                f"available_accelerators = {self.available_accelerators} names more GPUs than "
                f"gpus_per_node = {self.gpus_per_node} asks for: at most {self.gpus_per_node}"
            )

    def _check_cores(self) -> None:
        """A worker needs cores_per_worker cores: a node with fewer gets no worker at all, and
        the campaign would wait for one forever."""
        if self.provider == "local":  # the workers run on this machine
            cores, what = os.cpu_count() or 1, "this machine's cores"
        elif self.cores_per_node is not None:
            cores, what = self.cores_per_node, "cores_per_node"
        else:
            return
        if self.cores_per_worker > cores:
            raise ValueError(
                f"cores_per_worker = {self.cores_per_worker:g} is more than {what} ({cores}): "
                f"no worker would start; at most {cores}"
            )

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

    def threads_alone(self, tasks: int) -> int:
        """Threads for each of ``tasks`` tasks submitted while nothing else runs on this
        executor (an iterations campaign's training): a local executor's cores shared among
        them, so one model trains on every core of a laptop instead of one. Never fewer than
        ``cores_per_worker``; batch executors keep it (their tasks may share a node with others
        the driver cannot see)."""
        if tasks < 1:
            raise ValueError(f"tasks = {tasks}: expected at least 1")
        own = max(1, int(self.cores_per_worker))
        if self.provider != "local":
            return own
        return max(own, int(self.workers_per_node() * self.cores_per_worker) // tasks)

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
    # how often parsl adds or removes blocks: with a longer period, waiting tasks wait for it
    strategy_period_s: float = Field(1.0, gt=0, le=60, allow_inf_nan=False)
    # labelers' working directories ($VARS expanded on the compute node, e.g. "/scratch/$USER");
    # default: inside the campaign directory
    scratch_dir: str | None = None

    @field_validator("executors", mode="before")
    @classmethod
    def _some_executor(cls, v: Any) -> Any:
        if isinstance(v, dict) and not v:
            raise ValueError("expected at least one executor (a label: its settings), got none")
        return v

    @field_validator("retries", "strategy_period_s", mode="before")
    @classmethod
    def _not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"expected a number, not {str(v).lower()}")
        return v

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


def _device_ids(ids: list[Any]) -> list[str]:
    """GPU ids as parsl takes them (strings); ints as YAML reads ``[0, 1]`` are fine."""
    ok = all(
        (isinstance(i, int) and not isinstance(i, bool) and i >= 0)
        or (isinstance(i, str) and i.strip())
        for i in ids
    )
    out = [str(i).strip() for i in ids]
    if not ids or not ok or len(set(out)) != len(out):
        raise ValueError(f"expected {_ACCELERATORS}, got {brief(ids)}")
    return out


def site_file(name_or_path: str | os.PathLike[str]) -> Path:
    """The file of a site given by path, or by the name of a shipped site (``local``).

    A file the user names wins over a shipped site of the same name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    shipped = site_dir() / f"{name}.yaml"
    if name == path.name and not path.suffix and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"site config {name!r} not found: no such file, and not a site shipped with ubmd "
        f"(a path to a YAML file, or one of: {', '.join(shipped_sites())})"
    )


def load_site(name_or_path: str | os.PathLike[str]) -> SiteConfig:
    """Load a site by name (a shipped site config) or by path, strictly validated."""
    path = site_file(name_or_path)
    data = load_yaml(path, "site config")
    executors = data.get("executors") if isinstance(data, dict) else None
    if isinstance(executors, dict):  # first, so a misspelt key gets its "did you mean"
        for label, spec in executors.items():
            build(ExecutorSpec, spec, where=f"site config {path}: executors.{label}")
    return build(SiteConfig, data, where=f"site config {path}")
