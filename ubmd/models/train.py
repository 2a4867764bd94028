"""Training potentials and ensembles: weighted energy/force/stress loss, early stopping,
learning-rate schedule, resumable checkpoints, bitwise-deterministic on CPU for a seed.

Loss per batch: ``w_E mean((ΔE/N)^2) + w_F mean(ΔF^2) + w_S mean(Δσ^2)`` (stress only over
structures that have a stress label). Shuffling uses a generator seeded with
``(seed, epoch)``, so a resumed run continues exactly like an uninterrupted one.

Warm start (``init_model``): training continues from a previous model (fine-tuning on a grown
data set, as an active-learning campaign does every iteration); its per-species reference
energies are refitted first by least squares on what the model still gets wrong, so a shifted
or re-referenced data set costs no epochs. The kept weights are those with the lowest
validation loss, which weighs energy and force errors as the loss does (docs/training.md).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ubmd.models import data as mdata
from ubmd.models.factory import MODEL_KINDS, build_model
from ubmd.models.graph import as_dtype
from ubmd.models.potential import Potential, compute
from ubmd.models.training_run import TrainingRun, load_checkpoint, model_fingerprint

_SCHEDULES = ("plateau", "cosine", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. ``model``/``model_options`` choose the architecture."""

    model: str = "painn"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    energy_weight: float = 10.0  # on (ΔE/N)^2, eV^2/atom^2
    forces_weight: float = 10.0  # on ΔF^2 per component, eV^2/Å^2
    stress_weight: float = 1.0
    lr: float = 5e-3
    batch_size: int = 8
    max_epochs: int = 200
    # optimizer steps at most (None: no limit): the epochs become min(max_epochs, the epochs
    # these steps take), so a fine-tuning run costs the same however large the data set grows
    max_steps: int | None = None
    patience: int = 40  # epochs without validation improvement before stopping
    lr_schedule: str = "plateau"  # "plateau" (ReduceLROnPlateau), "cosine" or "none"
    lr_factor: float = 0.5  # plateau: multiply lr by this
    lr_patience: int = 10  # plateau: epochs without improvement before reducing
    min_lr: float = 1e-5
    valid_fraction: float = 0.1  # held out for early stopping (0: validate on training data)
    seed: int = 0
    device: str | None = None  # None: "cuda" if available else "cpu"
    dtype: str = "float32"
    grad_clip: float = 10.0
    ema_decay: float = 0.0  # exponential moving average of the weights (0: off), per step
    # energy weight at the last epoch (None: constant): the weight rises linearly from
    # energy_weight, so forces are learned first and energies refined last; validation (and
    # the kept weights) always use the final weight
    energy_weight_final: float | None = None
    loss: str = "mse"  # "mse" or "huber" (squared below the deltas, linear above)
    huber_delta_energy: float = 0.05  # eV/atom
    huber_delta_forces: float = 0.5  # eV/Å, per component

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("energy_weight", "forces_weight", "stress_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_epochs", "patience"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and not (
            isinstance(self.max_steps, int) and self.max_steps >= 1
        ):
            raise ValueError(f"max_steps must be an integer >= 1 (or null), got {self.max_steps!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.loss not in ("mse", "huber"):
            raise ValueError(f"loss must be 'mse' or 'huber', got {self.loss!r}")
        for name in ("huber_delta_energy", "huber_delta_forces"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.energy_weight_final is not None and not self.energy_weight_final >= 0:
            raise ValueError(f"energy_weight_final must be >= 0, got {self.energy_weight_final}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.device is not None:
            from ubmd.devices import check_device_name

            check_device_name(self.device)
        as_dtype(self.dtype)

    def resolved_device(self) -> str:
        if self.device is not None:
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_options"] = dict(self.model_options)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "training config") -> TrainConfig:
        """Built strictly: unknown keys name the nearest valid one, wrong values are named."""
        from ubmd.strict import build

        return build(cls, values, where)


@contextlib.contextmanager
def _deterministic(device: str) -> Iterator[None]:
    if not device.startswith("cpu"):
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of n structures (validation never empty if n >= 2)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = round(n * valid_fraction)
    if valid_fraction > 0 and n >= 2:
        n_valid = min(max(n_valid, 1), n - 1)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def epochs_for(config: TrainConfig, n_train: int) -> TrainConfig:
    """``config`` with ``max_epochs`` cut to what ``max_steps`` optimizer steps allow on
    ``n_train`` structures (at least one epoch); unchanged without ``max_steps``."""
    if config.max_steps is None:
        return config
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    epochs = max(1, min(config.max_epochs, math.ceil(config.max_steps / steps_per_epoch)))
    if epochs == config.max_epochs:
        return config
    patience = (
        min(config.patience, epochs) if config.patience >= config.max_epochs else config.patience
    )
    return dataclasses.replace(config, max_epochs=epochs, patience=patience)


def train_model(
    config: TrainConfig,
    train_data: Any,
    *,
    valid_data: Any = None,
    init_model: Potential | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Potential, list[dict[str, Any]]]:
    """Train one potential; returns the best-validation model and the per-epoch history.

    ``train_data``/``valid_data``: list of labelled ase.Atoms, extxyz path(s), a store or
    arrays (see :func:`ubmd.models.data.labelled_arrays`). Without ``valid_data`` a
    ``valid_fraction`` of the training data is held out. ``init_model``: continue from this
    model (a copy; it must know every element of the data) instead of a fresh one; its
    reference energies are refitted on the training data first. With ``checkpoint_dir``,
    ``last.pt`` (resumable state) and ``best.pt`` (a model file) are written every epoch;
    an existing ``last.pt`` from the same config and start model is resumed.
    """
    device = config.resolved_device()
    dtype = as_dtype(config.dtype)
    arrays, valid_arrays = _training_arrays(config, train_data, valid_data)
    config = epochs_for(config, len(arrays["n_atoms"]))
    species = _training_species(arrays, valid_arrays)
    torch.manual_seed(config.seed)
    model = _initial_model(config, arrays, species, init_model, device=device, dtype=dtype)
    train_samples = mdata.make_samples(arrays, cutoff=model.cutoff, device=device, dtype=dtype)
    valid_samples = (
        mdata.make_samples(valid_arrays, cutoff=model.cutoff, device=device, dtype=dtype)
        if valid_arrays is not None
        else train_samples
    )
    _fit_start_statistics(
        model, train_samples, warm_start=init_model is not None, n_atoms=len(arrays["numbers"])
    )
    run = TrainingRun(config, model, init_fingerprint=model_fingerprint(init_model))
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        run.resume(load_checkpoint(ckpt_dir / "last.pt", config, init=run.init_fingerprint))
    _run_epochs(run, train_samples, valid_samples, device=device, ckpt_dir=ckpt_dir, log=log)
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    return model, run.history


def _training_arrays(
    config: TrainConfig, train_data: Any, valid_data: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(training, validation) arrays: ``valid_data``'s, or a held-out ``valid_fraction``
    of ``train_data`` (None when that fraction is empty)."""
    arrays = mdata.labelled_arrays(train_data)
    if valid_data is not None:
        return arrays, mdata.labelled_arrays(valid_data)
    tr_idx, va_idx = split_indices(len(arrays["n_atoms"]), config.valid_fraction, config.seed)
    valid_arrays = mdata.select(arrays, va_idx) if len(va_idx) else None
    return mdata.select(arrays, tr_idx), valid_arrays


def _training_species(
    arrays: Mapping[str, np.ndarray], valid_arrays: Mapping[str, np.ndarray] | None
) -> list[int]:
    """The training data's atomic numbers; validation data may hold no others."""
    species = sorted({int(z) for z in np.unique(arrays["numbers"])})
    if valid_arrays is not None:
        extra = sorted(set(np.unique(valid_arrays["numbers"]).tolist()) - set(species))
        if extra:
            raise ValueError(f"validation data has elements {extra} absent from training data")
    return species


def _fit_start_statistics(
    model: Potential, train_samples: list[mdata.Sample], *, warm_start: bool, n_atoms: int
) -> None:
    """Before the first epoch: a warm start refits its reference energies; a fresh model
    with graph statistics (e.g. MACE's avg_num_neighbors) fits them (``n_atoms``: in all)."""
    if warm_start:
        refit_reference_energies(model, train_samples)
    elif hasattr(model, "fit_graph_statistics"):
        edges = sum(smp.graph.edge_index.shape[1] for smp in train_samples)
        model.fit_graph_statistics(edges / max(1, n_atoms))


def _run_epochs(
    run: TrainingRun,
    train_samples: list[mdata.Sample],
    valid_samples: list[mdata.Sample],
    *,
    device: str,
    ckpt_dir: Path | None,
    log: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Epochs from where ``run`` stands until max_epochs or early stopping; with
    ``ckpt_dir`` a checkpoint after each."""
    config = run.config
    with _deterministic(device):
        for epoch in range(run.start_epoch, config.max_epochs):
            if run.since_best >= config.patience:
                break
            record = run.epoch(epoch, train_samples, valid_samples)
            if log is not None:
                log(record)
            if ckpt_dir is not None:
                run.save(ckpt_dir, epoch)


def _initial_model(
    config: TrainConfig,
    arrays: Mapping[str, np.ndarray],
    species: list[int],
    init_model: Potential | None,
    *,
    device: str,
    dtype: torch.dtype,
) -> Potential:
    """A fresh model with fitted energy statistics, or a copy of ``init_model``."""
    if init_model is not None:
        missing = sorted(set(species) - set(init_model.species))
        if missing:
            raise ValueError(
                f"the start model knows atomic numbers {init_model.species}, the data also has "
                f"{missing}: train from scratch instead"
            )
        if type(init_model).__name__ != {"painn": "PaiNN", "mace": "MacePotential"}[config.model]:
            raise ValueError(
                f"the start model is a {type(init_model).__name__}, the config asks for "
                f"{config.model!r}"
            )
        return copy.deepcopy(init_model).to(device=device, dtype=dtype).train()
    model = build_model(
        config.model, species, options=config.model_options, dtype=dtype, device=device
    )
    shift, scale = mdata.fit_energy_stats(arrays, model.species)
    model.set_energy_stats(shift, scale)
    with torch.no_grad():
        # start from the fitted per-species reference energies (E_i = shift[Z_i]), so the
        # first epochs fit forces rather than a random offset of ~0.1 eV per atom
        model.readout[-1].weight.zero_()
        model.readout[-1].bias.zero_()
    return model


def refit_reference_energies(model: Potential, samples: list[mdata.Sample]) -> np.ndarray:
    """Add to the per-species energy shifts the least-squares fit (on composition) of what the
    model still gets wrong on ``samples``; returns the correction (eV per atom of each species).

    Min-norm least squares, so a data set of one composition moves every shift equally.
    """
    index = {z: k for k, z in enumerate(model.species)}
    counts, residual = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(samples), 32):
            batch = mdata.Sample.collate(samples[start : start + 32])
            out = compute(model, batch.graph, forces=False)
            residual.append((batch.energy - out["energy"]).double().cpu().numpy())
            numbers = batch.graph.numbers.cpu().numpy()
            owner = batch.graph.batch.cpu().numpy()
            c = np.zeros((int(owner.max()) + 1, len(model.species)))
            np.add.at(c, (owner, [index[int(z)] for z in numbers]), 1.0)
            counts.append(c)
    delta = np.linalg.lstsq(np.concatenate(counts), np.concatenate(residual), rcond=None)[0]
    shift = model.energy_shift.detach().double().cpu().numpy() + delta
    model.set_energy_stats(shift, model.energy_scale.detach().cpu())
    model.train()
    return delta


def train_member(
    config: TrainConfig,
    data: Any,
    member_index: int,
    *,
    valid_data: Any = None,
    init_model: Potential | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Potential, list[dict[str, Any]]]:
    """Train ensemble member ``member_index`` (seed ``config.seed + member_index``) alone,
    from scratch or, with ``init_model``, continuing from that member's previous model.

    Checkpoints go to ``checkpoint_dir/member_<index>``; ``log`` records carry ``"member"``.
    """
    if not (isinstance(member_index, int) and member_index >= 0):
        raise ValueError(f"member_index must be an integer >= 0, got {member_index!r}")
    member_config = dataclasses.replace(config, seed=config.seed + member_index)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"member_{member_index}"
    member_log = None if log is None else (lambda r: log({**r, "member": member_index}))
    return train_model(
        member_config,
        data,
        valid_data=valid_data,
        init_model=init_model,
        checkpoint_dir=ckpt,
        log=member_log,
    )


def train_ensemble(
    config: TrainConfig,
    data: Any,
    n_members: int,
    *,
    valid_data: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
):
    """Train ``n_members`` members one after another; returns (Ensemble, histories)."""
    from ubmd.models.ensemble import Ensemble

    if not (isinstance(n_members, int) and n_members >= 2):
        raise ValueError(f"n_members must be an integer >= 2, got {n_members!r}")
    arrays = mdata.labelled_arrays(data)  # read/validate once
    results = [
        train_member(
            config, arrays, m, valid_data=valid_data, checkpoint_dir=checkpoint_dir, log=log
        )
        for m in range(n_members)
    ]
    return Ensemble([r[0] for r in results]), [r[1] for r in results]
