"""Explorers: batched, uncertainty-biased molecular dynamics and related samplers.

Layout (functions over a batched state, torch-sim style):

* :mod:`ubmd.md.state` — :class:`MDState`, R replicas (different systems allowed) as flat
  tensors, one random generator and one bias window per replica.
* :mod:`ubmd.md.integrators` — ``nve_step`` (velocity Verlet), ``langevin_step`` (BAOAB),
  ``npt_step`` (BAOAB + stochastic cell rescaling, anisotropic or isotropic).
* :mod:`ubmd.md.evaluation` — one force call: model forces and stress plus one bias
  energy term behind the small ``Bias`` protocol.
* :mod:`ubmd.md.bias` — the adaptive uncertainty bias (``BiasConfig``).
* :mod:`ubmd.md.stop` — per-replica stop rules.
* :mod:`ubmd.md.frames` — candidate columns of a batch's replicas.
* :mod:`ubmd.md.writer` — candidate HDF5 files (``read_candidates``, ``candidates_to_atoms``).
* :mod:`ubmd.md.explore` — ``ExploreConfig`` and ``run_explorer`` (replica pool, NaN snapshots).
* :mod:`ubmd.md.continuation` — ``Continuation``: a trajectory going on in a later run
  (streaming segments), bias windows included.
* :mod:`ubmd.md.samplers` — uncertainty-as-CV metadynamics (``UncertaintyCVConfig``,
  ``HillsBias``) and adversarial attacks (``AdversarialConfig``, ``run_adversarial``).
* :mod:`ubmd.md.adapter` — ``UBMDModel``: a ubmd potential + estimator + calibration
  (optionally a ``torch.compile``d copy, :mod:`ubmd.models.compiled`).
* :mod:`ubmd.md.neighbours` — per-replica Verlet lists (a search every few tens of steps).
* :mod:`ubmd.md.allocator` — glibc malloc thresholds that keep per-step buffers in the process.
* :mod:`ubmd.md.forcefield` — the model protocol and ``ASEForceField`` (EMT etc.).

Why not torch-sim: its current releases (>= 0.4) need Python >= 3.12 (ubmd supports 3.11),
and the engine's own cost is small (tests/benchmarks/explore_bench.py: integrator, noise
and bookkeeping take about 4 % of a compiled batched step; the potential takes the rest), so a
dependency would buy no speed while we need things it does not give as such: one random
generator per replica (a batch reproduces its replicas run alone), the adaptive
uncertainty bias on forces and stress, per-replica stop rules with slot refilling, and
our Graph/estimator contract.

Imports are lazy so ``import ubmd.md`` does not import torch.
"""

from __future__ import annotations

from ubmd._lazy import lazy_getattr

_EXPORTS = {
    "MDState": "ubmd.md.state",
    "make_state": "ubmd.md.state",
    "nve_step": "ubmd.md.integrators",
    "langevin_step": "ubmd.md.integrators",
    "npt_step": "ubmd.md.integrators",
    "initialize": "ubmd.md.integrators",
    "BarostatConfig": "ubmd.md.integrators",
    "BiasConfig": "ubmd.md.bias",
    "Bias": "ubmd.md.evaluation",
    "evaluate": "ubmd.md.evaluation",
    "StopRules": "ubmd.md.stop",
    "ExploreConfig": "ubmd.md.explore",
    "run_explorer": "ubmd.md.explore",
    "CandidateWriter": "ubmd.md.writer",
    "read_candidates": "ubmd.md.writer",
    "candidates_to_atoms": "ubmd.md.writer",
    "UncertaintyCVConfig": "ubmd.md.samplers",
    "AdversarialConfig": "ubmd.md.samplers",
    "run_adversarial": "ubmd.md.samplers",
    "UBMDModel": "ubmd.md.adapter",
    "ASEForceField": "ubmd.md.forcefield",
    "Constant": "ubmd.md.schedule",
    "LinearRamp": "ubmd.md.schedule",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
