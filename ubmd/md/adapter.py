"""A ubmd potential (or ensemble) + uncertainty estimator + calibration as an MD model.

Each call takes the batch's neighbour-listed :class:`ubmd.models.graph.Graph` from
Verlet lists kept across steps (:mod:`ubmd.md.neighbours`), swaps in the engine's
differentiable positions and strain, and runs :func:`ubmd.uncertainty.inference.evaluate`
once for all replicas; with ``compile=True`` on a compiled copy of the potential
(:mod:`ubmd.models.compiled`). For ensembles
the member-mean energy gradients come back with the outputs, so the engine only adds the
uncertainty's backward pass.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ubmd import keys
from ubmd.md.evaluation import ENERGY_GRADS
from ubmd.md.state import MDState


class UBMDModel:
    """Differentiable MD model from a ubmd potential, estimator and calibration.

    ``create_graph``: keep member-force graphs of ensembles differentiable (needed only
    when biasing on the atom-based ensemble uncertainty, which is built from forces).
    ``member_forces``: for ensembles, take every member's forces (needed for the
    atom-based ensemble uncertainty); False gives only the total uncertainty, but lets a
    biased step cost one backward pass through all members (see :mod:`ubmd.md.bias`).
    ``skin_A``: Verlet skin of the neighbour lists (0 searches every step).
    ``compile``: run a ``torch.compile``-d copy of the potential (compiling takes the first
    steps 10-40 s on a 2-core CPU, then steps are faster; worth it for long runs).
    Sketched-gradient estimators cannot run compiled (they hook into the readout).
    """

    differentiable = True

    def __init__(
        self,
        model: torch.nn.Module,
        estimator=None,
        calibration=None,
        *,
        create_graph: bool = False,
        member_forces: bool = True,
        skin_A: float = 1.0,
        compile: bool = False,
    ) -> None:
        from ubmd.md.neighbours import VerletLists
        from ubmd.models.compiled import compile_for_inference

        if compile and create_graph:
            raise ValueError(
                "compile=True cannot be used with create_graph=True: biasing on the atom-based "
                "ensemble uncertainty differentiates forces again, which compiled models do "
                "not support; use compile=False"
            )
        self.model = compile_for_inference(model, estimator) if compile else model.eval()
        self.compile_requested = bool(compile)
        self.estimator = estimator
        self.calibration = calibration
        self.create_graph = create_graph
        self.member_forces = member_forces
        self.has_calibration = calibration is not None and estimator is not None
        self.cutoff = float(model.cutoff)
        self.species = set(int(z) for z in model.species)
        self.neighbours = VerletLists(self.cutoff, skin_A=skin_A, species=self.species)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, *, device: str | torch.device | None = None, **kw
    ) -> UBMDModel:
        """Load a model file written by ``ubmd.uncertainty.save_bundle`` (or ``save_model``)."""
        from ubmd.uncertainty.bundle import load_bundle

        model, est, cal = load_bundle(path, device=device)
        return cls(model, est, cal, **kw)

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled code (False if compiling failed and it fell back)."""
        from ubmd.models.compiled import is_compiled

        return self.compile_requested and is_compiled(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check_structures(self, numbers) -> None:
        """Raise ValueError naming elements of ``numbers`` the model was not trained on."""
        from ubmd.models.compiled import check_elements

        check_elements(numbers, self.species)

    def outputs(
        self, positions: torch.Tensor, strain: torch.Tensor, state: MDState
    ) -> dict[str, torch.Tensor]:
        from ubmd.uncertainty.inference import evaluate

        graph = dataclasses.replace(
            self.neighbours.graph(state), positions=positions, strain=strain
        )
        wrt = [t for t in (positions, strain) if t.requires_grad] if self.member_forces else []
        res, grads_e = evaluate(
            self.model, graph, self.estimator, wrt=wrt, create_graph=self.create_graph
        )
        if self.calibration is not None:
            self.calibration.apply(res)
        if grads_e is not None and len(wrt) == len(grads_e):
            res[ENERGY_GRADS] = grads_e
        res.pop(keys.ATOMIC_FEATURES, None)  # (A, K): not needed by the engine
        return res


def as_md_model(bundle, *, device: str | torch.device | None = None):
    """What the explorers accept as a model: an MD model (``outputs`` or ``compute``), a
    ubmd model file path, a ``(model, estimator, calibration)`` tuple, or a bare potential."""
    if hasattr(bundle, "outputs") or hasattr(bundle, "compute"):
        return bundle
    if isinstance(bundle, str | os.PathLike):
        return UBMDModel.from_file(bundle, device=device)
    if isinstance(bundle, tuple) and 1 <= len(bundle) <= 3:
        model, est, cal = (*bundle, None, None)[:3]
        return UBMDModel(model if device is None else model.to(device), est, cal)
    if isinstance(bundle, torch.nn.Module):
        return UBMDModel(bundle if device is None else bundle.to(device))
    raise TypeError(
        f"cannot use a {type(bundle).__name__} as an MD model: give a model file path, "
        "(model, estimator, calibration), a ubmd potential, or an ubmd.md force field"
    )
