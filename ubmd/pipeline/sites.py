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
    available_accelerators: int | list[str] = 0  # GPUs per node: one worker bound per GPU
    # batch-system fields (ignored by provider "local")
    partition: str | None = None  # SLURM partition
    queue: str | None = None  # PBS / Torque queue
    account: str | None = None
    qos: str | None = None
    walltime: str = "00:30:00"
    nodes_per_block: int = Field(1, ge=1)
    init_blocks: int = Field(1, ge=0)
    min_blocks: int = Field(0, ge=0)
    max_blocks: int = Field(1, ge=1)
    cores_per_node: int | None = None
    gpus_per_node: int | None = None
    mem_per_node_GB: int | None = None
    scheduler_options: str = ""
    worker_init: str = ""
    launcher: Literal["single", "srun", "mpiexec", "aprun"] = "single"
    # MPI launch prefix handed to labelers (e.g. "srun -n 32", "mpiexec -n 32"); "" = serial
    mpi_command: str = ""

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        parts = v.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"walltime must be HH:MM:SS, got {v!r}")
        return v

    def workers_per_node(self) -> int:
        if self.max_workers_per_node == "auto":
            cores = self.cores_per_node or os.cpu_count() or 1
            return max(1, int(cores // self.cores_per_worker))
        return self.max_workers_per_node


class SiteConfig(_Strict):
    name: str
    executors: dict[str, ExecutorSpec]
    roles: dict[str, str]
    retries: int = Field(2, ge=0)
    strategy_period_s: float = Field(1.0, gt=0)
    scratch_dir: str | None = None  # labelers' scratch (default: inside the campaign directory)

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
                provider=_provider(spec),
                max_workers_per_node=spec.workers_per_node(),
                cores_per_worker=spec.cores_per_worker,
                available_accelerators=spec.available_accelerators,
                heartbeat_period=5,
                heartbeat_threshold=30,
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
            scheduler_options=spec.scheduler_options,
            **common,
        )
    return providers.TorqueProvider(
        queue=spec.queue,
        account=spec.account,
        walltime=spec.walltime,
        scheduler_options=spec.scheduler_options,
        **common,
    )
