"""Training potentials and ensembles: weighted energy/force/stress loss, early stopping,
learning-rate schedule, resumable checkpoints, bitwise-deterministic on CPU for a seed.

Loss per batch: ``w_E mean((ΔE/N)^2) + w_F mean(ΔF^2) + w_S mean(Δσ^2)`` (stress only over
structures that have a stress label). Shuffling uses a generator seeded with
``(seed, epoch)``, so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ubmd.models import data as mdata
from ubmd.models.base import Potential, compute, model_from_payload, model_payload
from ubmd.models.factory import MODEL_KINDS, build_model
from ubmd.models.graph import as_dtype

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
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
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
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)


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


def batch_loss(model, sample: mdata.Sample, config: TrainConfig, *, train: bool):
    """Weighted loss and its parts (energy per atom, force and stress MSE) for one batch."""
    want_stress = config.stress_weight > 0 and bool(sample.has_stress.any())
    out = compute(model, sample.graph, forces=True, stress=want_stress, create_graph=train)
    n = sample.graph.n_atoms.to(sample.energy.dtype)
    e_mse = (((out["energy"] - sample.energy) / n) ** 2).mean()
    f_mse = ((out["forces"] - sample.forces) ** 2).mean()
    loss = config.energy_weight * e_mse + config.forces_weight * f_mse
    parts = {"energy_mse": float(e_mse.detach()), "forces_mse": float(f_mse.detach())}
    if want_stress:
        mask = sample.has_stress
        s_mse = ((out["stress"][mask] - sample.stress[mask]) ** 2).mean()
        loss = loss + config.stress_weight * s_mse
        parts["stress_mse"] = float(s_mse.detach())
    return loss, parts


def evaluate_loss(model, samples, config: TrainConfig) -> dict[str, float]:
    """Mean loss parts over samples (weighted by structures per batch)."""
    totals: dict[str, float] = {}
    n_total = 0
    for start in range(0, len(samples), config.batch_size):
        chunk = samples[start : start + config.batch_size]
        loss, parts = batch_loss(model, mdata.Sample.collate(chunk), config, train=False)
        for k, v in {"loss": float(loss), **parts}.items():
            totals[k] = totals.get(k, 0.0) + v * len(chunk)
        n_total += len(chunk)
    return {k: v / n_total for k, v in totals.items()}


def _make_scheduler(optimizer, config: TrainConfig):
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
        )
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.max_epochs, eta_min=config.min_lr
        )
    return None


def train_model(
    config: TrainConfig,
    train_data: Any,
    *,
    valid_data: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Potential, list[dict[str, Any]]]:
    """Train one potential; returns the best-validation model and the per-epoch history.

    ``train_data``/``valid_data``: list of labelled ase.Atoms, extxyz path(s), a store or
    arrays (see :func:`ubmd.models.data.labelled_arrays`). Without ``valid_data`` a
    ``valid_fraction`` of the training data is held out. With ``checkpoint_dir``,
    ``last.pt`` (resumable state) and ``best.pt`` (a model file) are written every epoch;
    an existing ``last.pt`` from the same config is resumed.
    """
    device = config.resolved_device()
    dtype = as_dtype(config.dtype)
    arrays = mdata.labelled_arrays(train_data)
    if valid_data is None:
        tr_idx, va_idx = split_indices(len(arrays["n_atoms"]), config.valid_fraction, config.seed)
        valid_arrays = mdata.select(arrays, va_idx) if len(va_idx) else None
        arrays = mdata.select(arrays, tr_idx)
    else:
        valid_arrays = mdata.labelled_arrays(valid_data)

    species = sorted({int(z) for z in np.unique(arrays["numbers"])})
    if valid_arrays is not None:
        extra = sorted(set(np.unique(valid_arrays["numbers"]).tolist()) - set(species))
        if extra:
            raise ValueError(f"validation data has elements {extra} absent from training data")
    torch.manual_seed(config.seed)
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

    train_samples = mdata.make_samples(arrays, cutoff=model.cutoff, device=device, dtype=dtype)
    valid_samples = (
        mdata.make_samples(valid_arrays, cutoff=model.cutoff, device=device, dtype=dtype)
        if valid_arrays is not None
        else train_samples
    )
    if hasattr(model, "fit_graph_statistics"):  # e.g. MACE's avg_num_neighbors
        edges = sum(smp.graph.edge_index.shape[1] for smp in train_samples)
        model.fit_graph_statistics(edges / max(1, len(arrays["numbers"])))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = _make_scheduler(optimizer, config)
    history: list[dict[str, Any]] = []
    best_loss, best_state, start_epoch, since_best = float("inf"), None, 0, 0

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = load_checkpoint(ckpt_dir / "last.pt", config)
        if state is not None:
            model.load_state_dict(state["payload"]["members"][0]["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
            best_loss, best_state = state["best_loss"], state["best_state"]
            start_epoch, since_best = state["epoch"] + 1, state["since_best"]

    n = len(train_samples)
    with _deterministic(device):
        for epoch in range(start_epoch, config.max_epochs):
            if since_best >= config.patience:
                break
            gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen).tolist()
            model.train()
            train_sum, seen = 0.0, 0
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                batch = mdata.Sample.collate([train_samples[k] for k in idx])
                loss, _ = batch_loss(model, batch, config, train=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                train_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            model.eval()
            valid = evaluate_loss(model, valid_samples, config)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(valid["loss"])
            elif scheduler is not None:
                scheduler.step()
            if valid["loss"] < best_loss:
                best_loss, since_best = valid["loss"], 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            record = {
                "epoch": epoch,
                "train_loss": train_sum / seen,
                "valid_loss": valid["loss"],
                "valid_energy_rmse": float(np.sqrt(valid["energy_mse"])),
                "valid_forces_rmse": float(np.sqrt(valid["forces_mse"])),
                "lr": float(optimizer.param_groups[0]["lr"]),
            }
            if "stress_mse" in valid:
                record["valid_stress_rmse"] = float(np.sqrt(valid["stress_mse"]))
            history.append(record)
            if log is not None:
                log(record)
            if ckpt_dir is not None:
                _save_checkpoint(
                    ckpt_dir, model, optimizer, scheduler, config, epoch, history,
                    best_loss, best_state, since_best,
                )  # fmt: skip
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def _save_checkpoint(ckpt_dir, model, optimizer, scheduler, config, epoch, history,
                     best_loss, best_state, since_best) -> None:  # fmt: skip
    state = {
        "payload": model_payload(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "config": config.to_dict(),
        "epoch": epoch,
        "history": history,
        "best_loss": best_loss,
        "best_state": best_state,
        "since_best": since_best,
    }
    tmp = ckpt_dir / f"last.pt.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, ckpt_dir / "last.pt")
    if best_state is not None and since_best == 0:
        best = model_payload(model, extra={"epoch": epoch, "valid_loss": best_loss})
        best["members"][0]["state_dict"] = best_state
        tmp = ckpt_dir / f"best.pt.tmp{os.getpid()}"
        torch.save(best, tmp)
        os.replace(tmp, ckpt_dir / "best.pt")


def load_checkpoint(path: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """The resumable state in ``path`` (None if absent); refuses a different config."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable ubmd training checkpoint: {exc}") from None
    if not isinstance(state, dict) or "payload" not in state:
        raise ValueError(f"{path} is not a ubmd training checkpoint")
    if state["config"] != config.to_dict():
        raise ValueError(
            f"{path} was written with a different training config; use another "
            "checkpoint directory or delete it"
        )
    model_from_payload(state["payload"], source=str(path))  # validates the model part
    return state


def train_member(
    config: TrainConfig,
    data: Any,
    member_index: int,
    *,
    valid_data: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Potential, list[dict[str, Any]]]:
    """Train ensemble member ``member_index`` (seed ``config.seed + member_index``) alone.

    Checkpoints go to ``checkpoint_dir/member_<index>``; ``log`` records carry ``"member"``.
    """
    if not (isinstance(member_index, int) and member_index >= 0):
        raise ValueError(f"member_index must be an integer >= 0, got {member_index!r}")
    member_config = dataclasses.replace(config, seed=config.seed + member_index)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"member_{member_index}"
    member_log = None if log is None else (lambda r: log({**r, "member": member_index}))
    return train_model(
        member_config, data, valid_data=valid_data, checkpoint_dir=ckpt, log=member_log
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
