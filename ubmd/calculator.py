"""ASE calculator for ubmd potentials, with uncertainties in ``calc.results``.

    calc = UBMDCalculator.from_file("model.pt")      # model + estimator + calibration
    atoms.calc = calc
    atoms.get_forces(); calc.results["calibrated_atomic_uncertainty"]

Results: ``energy``, ``free_energy`` (= energy), ``forces``, ``stress`` (periodic cells only,
ASE Voigt order, eV/Å^3), ``energies`` (per-atom), and, with an estimator,
``keys.UNCERTAINTY`` (float), ``keys.ATOMIC_UNCERTAINTY`` (A,), the calibrated ones when a
calibration is present, and for ensembles ``keys.ENSEMBLE_ENERGY`` (M,) /
``keys.ENSEMBLE_FORCES`` (M, A, 3).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ubmd import keys

_UNCERTAINTY_KEYS = (
    keys.UNCERTAINTY,
    keys.ATOMIC_UNCERTAINTY,
    keys.CALIBRATED_UNCERTAINTY,
    keys.CALIBRATED_ATOMIC_UNCERTAINTY,
    keys.ENSEMBLE_ENERGY,
    keys.ENSEMBLE_FORCES,
)
_PER_STRUCTURE = (keys.UNCERTAINTY, keys.CALIBRATED_UNCERTAINTY)


class UBMDCalculator(Calculator):
    """Energy, forces, stress and uncertainties from a ubmd Potential or Ensemble."""

    implemented_properties = [  # noqa: RUF012 (ASE's own class attribute)
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energies",
        *_UNCERTAINTY_KEYS,
    ]

    def __init__(
        self,
        model: torch.nn.Module | list[torch.nn.Module],
        estimator: Any = None,
        calibration: Any = None,
        *,
        device: str | torch.device | None = None,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        """``compile``: evaluate a ``torch.compile``-d copy of the model (seconds to compile
        at the first call, then faster calls: for long MD; see :mod:`ubmd.models.compiled`).
        For steady step times in long CPU runs, the application may also call
        :func:`ubmd.md.allocator.retain_freed_memory` once (a process-wide malloc setting)."""
        super().__init__(**kwargs)
        if isinstance(model, list | tuple):
            from ubmd.models.ensemble import Ensemble

            model = Ensemble(model)
        if device is not None:
            model = model.to(device)
            estimator = estimator.to(device) if estimator is not None else None
        if compile:
            from ubmd.models.compiled import compile_for_inference

            model = compile_for_inference(model, estimator)
        self.model = model.eval()
        self.compiled = bool(compile)
        self.estimator = estimator
        self.calibration = calibration
        self.device = next(model.parameters()).device

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str | torch.device | None = None, **kwargs: Any
    ) -> UBMDCalculator:
        """Load a model file (with the estimator/calibration it carries, if any)."""
        from ubmd.uncertainty.bundle import load_bundle

        model, estimator, calibration = load_bundle(path, device=device)
        return cls(model, estimator, calibration, device=device, **kwargs)

    def calculate(
        self,
        atoms: Any = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        from ubmd.models.graph import Graph
        from ubmd.uncertainty.inference import predict

        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic in all three directions (pbc={atoms.pbc.tolist()})"
            )
        if self.compiled:  # the compiled model does not check elements itself
            from ubmd.models.compiled import check_elements

            check_elements(atoms.numbers, self.model.species)
        graph = Graph.from_atoms(
            atoms, cutoff=self.model.cutoff, device=self.device, dtype=self.model.dtype
        )
        res = predict(
            self.model, graph, self.estimator, self.calibration, forces=True, stress=periodic
        )
        energy = float(res[keys.ENERGY][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": _np(res[keys.FORCES]),
        }
        if periodic:
            self.results["stress"] = _np(res[keys.STRESS][0])
        if keys.ATOMIC_ENERGIES in res:
            self.results["energies"] = _np(res[keys.ATOMIC_ENERGIES])
        for k in _UNCERTAINTY_KEYS:
            if k in res:
                v = _np(res[k])
                if k in _PER_STRUCTURE:
                    self.results[k] = float(v[0])
                elif k == keys.ENSEMBLE_ENERGY:
                    self.results[k] = v[:, 0]
                else:
                    self.results[k] = v


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()
