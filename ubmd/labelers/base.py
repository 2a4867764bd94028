"""The labeler interface: write_input -> execute -> read_results, in a scratch directory.

A ``Labeler`` holds immutable settings (a pydantic model that rejects unknown keys) and turns one
``ase.Atoms`` into a ``LabelResult`` (energy in eV, forces in eV/Å, stress in ASE Voigt eV/Å^3 for
periodic cells).  ``label`` is a template method; subclasses implement ``write_input``,
``execute`` and ``read_results``.  External programs go through ``run_external`` (the single
subprocess seam, see ``process.py``); in-process codes (EMT, xTB, OpenMM) compute in ``execute``.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from ubmd import __version__ as _ubmd_version
from ubmd.keys import STATUS_OK
from ubmd.labelers.errors import (
    AbsurdForces,
    CalculationFailed,
    MissingForces,
    OutputUnreadable,
    ProgramCrashed,
    TimeLimitExceeded,
)
from ubmd.labelers.process import ProcessOutcome, run_command


class LabelerSettings(BaseModel):
    """Base of every labeler's settings: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_force_eV_A: float = Field(
        50.0, gt=0, description="forces above this magnitude count as absurd (AbsurdForces)"
    )
    timeout_s: float | None = Field(3600.0, gt=0, description="wall-time limit of one run")
    kill_grace_s: float = Field(
        5.0, ge=0, description="after the time limit: SIGTERM, wait this long, then SIGKILL"
    )


@dataclass
class LabelResult:
    """One labeled (or failed) structure, in ASE units."""

    atoms: Atoms  # the input structure (copy), without calculator
    labeler: str
    settings: dict[str, Any]
    settings_hash: str
    status: str = STATUS_OK
    reason: str = ""
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (N, 3) eV/Å
    stress: np.ndarray | None = None  # (6,) ASE Voigt eV/Å^3, periodic cells only
    free_energy: float | None = None  # eV
    wall_time_s: float = 0.0
    attempts: int = 1
    workdir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_atoms(self) -> Atoms:
        """The structure with a SinglePointCalculator holding the labels (none if failed)."""
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = self.atoms.copy()
        if self.ok:
            results: dict[str, Any] = {"energy": self.energy, "forces": self.forces}
            if self.stress is not None:
                results["stress"] = self.stress
            if self.free_energy is not None:
                results["free_energy"] = self.free_energy
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class Labeler(ABC):
    """Abstract reference calculator.  Subclasses set ``name`` and ``Settings``."""

    name: ClassVar[str]
    Settings: ClassVar[type[LabelerSettings]] = LabelerSettings
    periodic_only: ClassVar[bool] = False

    def __init__(self, settings: LabelerSettings | None = None, **kwargs: Any) -> None:
        if settings is not None and kwargs:
            raise ValueError("give either a settings object or keyword settings, not both")
        if settings is None:
            from ubmd.strict import build

            settings = build(self.Settings, kwargs, where=f"{self.name} labeler settings")
        elif not isinstance(settings, self.Settings):
            raise TypeError(
                f"{self.name} expects settings of type {self.Settings.__name__}, "
                f"got {type(settings).__name__}"
            )
        self.settings = settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"

    # --- identity --------------------------------------------------------------------
    def code_version(self) -> str:
        """Version of the reference code, where it can be found cheaply ("" otherwise)."""
        return ""

    def settings_dict(self) -> dict[str, Any]:
        return self.settings.model_dump(mode="json")

    def settings_hash(self) -> str:
        """sha256 of the canonical JSON of (name, settings, code version, ubmd version)."""
        payload = {
            "labeler": self.name,
            "settings": self.settings_dict(),
            "code_version": self.code_version(),
            "ubmd_version": _ubmd_version,
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    def with_settings(self, **changes: Any) -> Labeler:
        """A new labeler of the same kind with some settings replaced (validated again)."""
        merged = {**self.settings.model_dump(), **changes}
        return type(self)(self.Settings(**merged))

    def retry_variant(self, attempt: int, error: CalculationFailed) -> Labeler | None:
        """Settings for attempt ``attempt`` (2, 3, ...) after ``error``; None: same settings."""
        return None

    # --- the template ----------------------------------------------------------------
    @abstractmethod
    def check(self, atoms: Atoms) -> None:
        """Raise LabelerSetupError if this labeler cannot run on ``atoms``; runs nothing."""

    def write_input(self, atoms: Atoms, workdir: Path) -> None:  # noqa: B027 - optional hook
        """Write the input files into ``workdir`` (nothing for in-process codes)."""

    @abstractmethod
    def execute(self, atoms: Atoms, workdir: Path) -> Any:
        """Run the calculation; returns whatever ``read_results`` needs."""

    @abstractmethod
    def read_results(self, atoms: Atoms, workdir: Path, raw: Any) -> dict[str, Any]:
        """Return {"energy", "forces", optional "stress", "free_energy"} in ASE units."""

    def label(self, atoms: Atoms, *, workdir: Path | str) -> LabelResult:
        """Check, write the input, run and read one single point; raises on failure.

        Setup problems raise ``LabelerSetupError`` before anything runs; a failed run raises a
        ``CalculationFailed`` subclass (logs stay in ``workdir``).  See ``label_with_retries``
        for the variant that records failures instead of raising.
        """
        self.check(atoms)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        atoms = atoms.copy()
        atoms.calc = None
        t0 = time.perf_counter()
        self.write_input(atoms, workdir)
        raw = self.execute(atoms, workdir)
        values = self.read_results(atoms, workdir, raw)
        self.validate(atoms, values, workdir)
        return LabelResult(
            atoms=atoms,
            labeler=self.name,
            settings=self.settings_dict(),
            settings_hash=self.settings_hash(),
            energy=float(values["energy"]),
            forces=np.asarray(values["forces"], dtype=float),
            stress=None if values.get("stress") is None else np.asarray(values["stress"], float),
            free_energy=values.get("free_energy"),
            wall_time_s=time.perf_counter() - t0,
            workdir=workdir,
        )

    def validate(self, atoms: Atoms, values: dict[str, Any], workdir: Path) -> None:
        """Forces present, one per atom, finite, below the bound; energy finite."""
        forces = values.get("forces")
        if forces is None:
            raise MissingForces("no forces in the output", workdir=workdir)
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (len(atoms), 3):
            raise MissingForces(
                f"forces of shape {forces.shape} for {len(atoms)} atoms", workdir=workdir
            )
        energy = values.get("energy")
        if energy is None or not np.isfinite(energy):
            raise OutputUnreadable(f"energy missing or not finite: {energy}", workdir=workdir)
        if not np.all(np.isfinite(forces)):
            raise AbsurdForces("non-finite force components", workdir=workdir)
        stress = values.get("stress")
        if stress is not None and not np.all(np.isfinite(np.asarray(stress, dtype=float))):
            raise OutputUnreadable("non-finite stress components", workdir=workdir)
        fmax = float(np.linalg.norm(forces, axis=1).max()) if len(atoms) else 0.0
        if fmax > self.settings.max_force_eV_A:
            raise AbsurdForces(
                f"max |F| = {fmax:.3g} eV/Å above the bound "
                f"max_force_eV_A={self.settings.max_force_eV_A:g}",
                workdir=workdir,
            )

    # --- helpers for external programs -----------------------------------------------
    def run_external(
        self,
        argv: list[str],
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        stdout_name: str = "stdout.log",
    ) -> ProcessOutcome:
        """Run a program through the subprocess seam; raise on time limit or crash."""
        try:
            outcome = run_command(
                argv,
                cwd=workdir,
                env=env,
                timeout_s=self.settings.timeout_s,
                grace_s=self.settings.kill_grace_s,
                stdout_name=stdout_name,
            )
        except FileNotFoundError as exc:  # vanished between check() and here
            raise ProgramCrashed(f"cannot start {argv[0]!r}: {exc}", workdir=workdir) from exc
        if outcome.timed_out:
            raise TimeLimitExceeded(
                f"killed after the time limit of {self.settings.timeout_s:g} s"
            ).with_run(outcome, workdir)
        return outcome


def max_force(forces: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(forces), axis=1).max())
