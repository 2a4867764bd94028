"""Potential base class, :func:`compute` (forces/stress by autograd) and model files.

Model files are plain dicts (tensors, str, int, float, lists) written with ``torch.save``
and read back with ``torch.load(..., weights_only=True)``, never unpickling code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ubmd import keys
from ubmd.models.graph import Graph

FORMAT_MARKER = "ubmd-model"
FORMAT_VERSION = 1
N_ELEMENTS = 119

# Model class name -> import path; lazy so the MACE backend is only imported when used.
_REGISTRY: dict[str, str] = {
    "PaiNN": "ubmd.models.builtin:PaiNN",
    "MacePotential": "ubmd.models.mace_backend:MacePotential",
}


def unknown_elements_message(numbers: Any, species: Any) -> str:
    """Which elements a model does not know, by symbol and atomic number."""
    from ase.data import chemical_symbols

    def names(zs: Any) -> str:
        return ", ".join(f"{chemical_symbols[z]} ({z})" for z in sorted({int(z) for z in zs}))

    return (
        f"element(s) {names(numbers)} unknown to this model, which was trained on {names(species)}"
    )


def register_model(name: str, import_path: str) -> None:
    """Make a Potential subclass loadable by name (``"package.module:Class"``)."""
    _REGISTRY[name] = import_path


def model_class(name: str) -> type[Potential]:
    """The Potential subclass registered under ``name``."""
    import importlib

    if name not in _REGISTRY:
        raise ValueError(f"unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


class Potential(nn.Module):
    """Base class of all potentials (see ``ubmd/models/contract.md``).

    Subclasses set ``self.readout`` (per-atom MLP ending in ``Linear(K, 1)``), implement
    :meth:`hyperparameters` (plain values that rebuild the model via ``cls(**hp)``) and
    ``forward(graph)``. Per-species energies: ``E_i = scale[Z_i] * readout(h_i) + shift[Z_i]``.
    """

    readout: nn.Sequential

    def __init__(self, species: Sequence[int], cutoff: float) -> None:
        super().__init__()
        species = sorted({int(z) for z in species})
        if not species or species[0] < 1 or species[-1] >= N_ELEMENTS:
            raise ValueError(f"species must be atomic numbers in 1..118, got {species}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        self.species = species
        self.cutoff = float(cutoff)
        lookup = torch.full((N_ELEMENTS,), -1, dtype=torch.long)
        lookup[species] = torch.arange(len(species))
        self.register_buffer("species_lookup", lookup, persistent=False)
        self.register_buffer("energy_shift", torch.zeros(len(species), dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones(len(species), dtype=torch.float64))

    # ------------------------------------------------------------------ helpers
    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.energy_shift.dtype

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers to 0..n_species-1; unknown elements raise ValueError."""
        # out-of-range numbers map to index 0 (never a species) so one check covers both cases
        valid = (numbers >= 1) & (numbers < N_ELEMENTS)
        idx = self.species_lookup[torch.where(valid, numbers, 0)]
        # Compiled inference (ubmd.models.compiled) checks elements before the call: a
        # data-dependent branch here would split the compiled graph.
        if not torch.compiler.is_compiling() and bool((idx < 0).any()):
            raise ValueError(unknown_elements_message(numbers[idx < 0].tolist(), self.species))
        return idx

    def scale_shift(self, raw: torch.Tensor, species_idx: torch.Tensor) -> torch.Tensor:
        """Per-atom energies from the raw readout output (A,)."""
        return raw * self.energy_scale[species_idx] + self.energy_shift[species_idx]

    def set_energy_stats(self, shift: Sequence[float], scale: Sequence[float] | float) -> None:
        """Set per-species energy shift (eV) and scale (eV), in ``self.species`` order."""
        shift_t = torch.as_tensor(shift, dtype=self.dtype).reshape(-1)
        scale_t = torch.as_tensor(scale, dtype=self.dtype).reshape(-1).expand(len(self.species))
        if shift_t.numel() != len(self.species):
            raise ValueError(f"need {len(self.species)} shifts, got {shift_t.numel()}")
        if not (torch.isfinite(shift_t).all() and (scale_t > 0).all()):
            raise ValueError(f"shift must be finite and scale > 0, got {shift_t}, {scale_t}")
        self.energy_shift.copy_(shift_t)
        self.energy_scale.copy_(scale_t)

    def graph(self, atoms: Any, device: str | torch.device | None = None) -> Graph:
        """A Graph of ``atoms`` (ase.Atoms or list) with this model's cutoff/dtype/device."""
        device = device if device is not None else self.energy_shift.device
        return Graph.from_atoms(atoms, cutoff=self.cutoff, device=device, dtype=self.dtype)


def _sum_per_structure(values: torch.Tensor, graph: Graph) -> torch.Tensor:
    out = torch.zeros(graph.n_structures, dtype=values.dtype, device=values.device)
    return out.index_add(0, graph.batch, values)


def compute(
    model: nn.Module,
    graph: Graph,
    *,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``graph`` and add forces (-dE/dr) and stress ((1/V) dE/dε, ASE sign).

    One ``torch.autograd.grad`` call gives forces and stress together. Stress rows of
    structures that are not periodic in all three directions are NaN. With
    ``create_graph=True`` the results stay differentiable (training, biased MD);
    otherwise outputs are detached. The returned ``"graph"``-free dict also holds
    everything ``model.forward`` returns. For an :class:`~ubmd.models.ensemble.Ensemble`
    the member forces are added as ``keys.ENSEMBLE_FORCES``.
    """
    dtype = getattr(model, "dtype", graph.dtype)
    if graph.dtype != dtype:
        graph = graph.to(dtype=dtype)
    need_grad = forces or stress
    if need_grad:
        graph = replace(
            graph,
            positions=graph.positions.detach().requires_grad_(forces or stress),
            strain=graph.strain.detach().requires_grad_(stress),
        )
    with torch.enable_grad() if need_grad else torch.no_grad():
        out = dict(model(graph))
        if need_grad:
            inputs = [graph.positions] + ([graph.strain] if stress else [])
            member_energy = out.get(keys.ENSEMBLE_ENERGY)
            if forces and member_energy is not None:
                # One grad per member: each member's forces (M, A, 3).
                member_forces = []
                for m in range(member_energy.shape[0]):
                    (g,) = torch.autograd.grad(
                        member_energy[m].sum(),
                        graph.positions,
                        retain_graph=True,
                        create_graph=create_graph,
                    )
                    member_forces.append(-g)
                out[keys.ENSEMBLE_FORCES] = torch.stack(member_forces)
            grads = torch.autograd.grad(
                out[keys.ENERGY].sum(), inputs, create_graph=create_graph, allow_unused=True
            )
            if forces:
                g = grads[0]
                out[keys.FORCES] = -g if g is not None else torch.zeros_like(graph.positions)
            if stress:
                g = grads[-1] if grads[-1] is not None else torch.zeros_like(graph.strain)
                virial = 0.5 * (g + g.transpose(1, 2)) / graph.volume()[:, None, None]
                out[keys.STRESS] = virial[:, keys.VOIGT_ROWS, keys.VOIGT_COLS]
    if not create_graph:
        out = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out


# ---------------------------------------------------------------------- model files
def _member_payload(model: Potential) -> dict[str, Any]:
    name = type(model).__name__
    if name not in _REGISTRY:
        raise ValueError(f"model class {name} is not registered (see register_model)")
    return {
        "class": name,
        "hyperparameters": model.hyperparameters(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "species": list(model.species),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def model_payload(model: nn.Module, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plain dict a model file holds (also used inside training checkpoints)."""
    from ubmd import __version__

    members = list(model.members) if hasattr(model, "members") else [model]
    for m in members:
        if not isinstance(m, Potential):
            raise TypeError(f"expected a Potential or Ensemble, got {type(m).__name__}")
    return {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "ubmd_version": __version__,
        "kind": "ensemble" if hasattr(model, "members") else "potential",
        "members": [_member_payload(m) for m in members],
        "extra": dict(extra or {}),
    }


def model_from_payload(
    payload: Any, *, device: str | torch.device | None = None, source: str = "payload"
) -> nn.Module:
    """Rebuild a Potential or Ensemble from :func:`model_payload` output."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        raise ValueError(
            f"{source} is not a ubmd model file (expected a dict with format={FORMAT_MARKER!r} "
            "written by ubmd.models.save_model)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{source} has model format version {payload['format_version']}; this ubmd "
            f"reads up to {FORMAT_VERSION} — upgrade ubmd"
        )
    members = []
    for entry in payload["members"]:
        cls = model_class(entry["class"])
        model = cls(**entry["hyperparameters"])
        model.to(dtype=getattr(torch, entry["dtype"]))
        model.load_state_dict(entry["state_dict"])
        members.append(model.to(device) if device is not None else model)
    if payload["kind"] == "ensemble":
        from ubmd.models.ensemble import Ensemble

        return Ensemble(members)
    return members[0]


def save_model(
    path: str | os.PathLike, model: nn.Module, *, extra: Mapping[str, Any] | None = None
) -> None:
    """Write a Potential or Ensemble (plus ``extra``: tensors/str/int/float) to ``path``.

    Written to a temporary file first and renamed, so a crash never leaves half a file.
    """
    payload = model_payload(model, extra=extra)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw dict of a model file (weights_only), with clear errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/garbled files
        raise ValueError(
            f"{path} is not a ubmd model file (expected a file written by "
            f"ubmd.models.save_model / `ubmd train`; reading it with "
            f"torch.load(weights_only=True) failed with {type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        raise ValueError(
            f"{path} is not a ubmd model file (expected a dict with format={FORMAT_MARKER!r} "
            "written by ubmd.models.save_model / `ubmd train`)"
        )
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """Load a Potential or Ensemble saved by :func:`save_model` (its ``extra`` via :func:`load_extra`)."""
    payload = read_model_file(path)
    return model_from_payload(payload, device=device, source=os.fspath(path))


def load_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` dict stored with a model (uncertainty/calibration state)."""
    return dict(read_model_file(path).get("extra", {}))
