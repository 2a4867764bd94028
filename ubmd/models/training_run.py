"""One training run's moving parts: the loss, the learning-rate schedule, and the run state
(optimizer, best weights, weight average, history) that a checkpoint saves and restores, with
the checks a checkpoint must pass before it is resumed (same config, same start model).

:mod:`ubmd.models.train` drives it; nothing here reads data or decides when to stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ubmd.models import data as mdata
from ubmd.models.files import model_from_payload, model_payload
from ubmd.models.potential import Potential, compute

if TYPE_CHECKING:
    from ubmd.models.train import TrainConfig


def batch_loss(model, sample: mdata.Sample, config: TrainConfig, *, train: bool,
               parts: bool = True):  # fmt: skip
    """Weighted loss and its parts (energy per atom, force and stress MSE) for one batch.

    ``parts=False`` leaves the parts out (an empty dict): reading them as Python floats waits
    for the device, which a training step does not need to do (one wait per batch on a GPU).
    """
    want_stress = config.stress_weight > 0 and bool(sample.has_stress.any())
    out = compute(model, sample.graph, forces=True, stress=want_stress, create_graph=train)
    n = sample.graph.n_atoms.to(sample.energy.dtype)
    de, df = (out["energy"] - sample.energy) / n, out["forces"] - sample.forces
    e_mse, f_mse = (de**2).mean(), (df**2).mean()
    if config.loss == "huber":
        e_pen = _huber(de, config.huber_delta_energy).mean()
        f_pen = _huber(df, config.huber_delta_forces).mean()
    else:
        e_pen, f_pen = e_mse, f_mse
    loss = config.energy_weight * e_pen + config.forces_weight * f_pen
    values = {"energy_mse": e_mse, "forces_mse": f_mse}
    if want_stress:
        mask = sample.has_stress
        s_mse = ((out["stress"][mask] - sample.stress[mask]) ** 2).mean()
        loss = loss + config.stress_weight * s_mse
        values["stress_mse"] = s_mse
    return loss, ({k: float(v.detach()) for k, v in values.items()} if parts else {})


def _huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    """x² below ``delta``, then linear (2δ|x| − δ²): equal to the squared error for ordinary
    errors, so the loss weights keep their meaning, while a few far-off structures (a broken
    bond an explorer ran into) cannot dominate the gradient."""
    a = x.abs()
    return torch.where(a <= delta, x**2, 2 * delta * a - delta**2)


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


def make_scheduler(optimizer, config: TrainConfig):
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
        )
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.max_epochs, eta_min=config.min_lr
        )
    return None


class TrainingRun:
    """The mutable state of one training run: optimizer, schedule, best weights, EMA, history."""

    def __init__(self, config: TrainConfig, model: Potential, *, init_fingerprint: str | None):
        self.config = config
        self.model = model
        self.init_fingerprint = init_fingerprint
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.history: list[dict[str, Any]] = []
        self.best_loss, self.best_state = float("inf"), None
        self.start_epoch, self.since_best = 0, 0
        self.ema = (
            {k: p.detach().clone() for k, p in model.named_parameters()}
            if config.ema_decay > 0
            else None
        )

    def resume(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        self.model.load_state_dict(state["payload"]["members"][0]["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        self.best_loss, self.best_state = state["best_loss"], state["best_state"]
        self.start_epoch, self.since_best = state["epoch"] + 1, state["since_best"]
        if self.ema is not None:
            self.ema = {k: v.to(self.model.energy_shift.device) for k, v in state["ema"].items()}

    def loss_config(self, epoch: int | None) -> TrainConfig:
        """The config whose loss weights apply in ``epoch`` (None: the final, validation one)."""
        final = self.config.energy_weight_final
        if final is None:
            return self.config
        if epoch is None or self.config.max_epochs <= 1:
            return dataclasses.replace(self.config, energy_weight=final)
        t = min(1.0, epoch / (self.config.max_epochs - 1))
        w0 = self.config.energy_weight
        return dataclasses.replace(self.config, energy_weight=w0 + t * (final - w0))

    def epoch(self, epoch: int, train_samples, valid_samples) -> dict[str, Any]:
        config, model = self.loss_config(epoch), self.model
        n = len(train_samples)
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen).tolist()
        model.train()
        # the running sum stays on the device (float64, the same sum as Python floats would
        # give; MPS has no float64): read once per epoch, not once per batch
        dev = model.energy_shift.device
        acc = torch.float32 if dev.type == "mps" else torch.float64
        train_sum, seen = torch.zeros((), dtype=acc, device=dev), 0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = mdata.Sample.collate([train_samples[k] for k in idx])
            loss, _ = batch_loss(model, batch, config, train=True, parts=False)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.optimizer.step()
            self._update_ema()
            train_sum = train_sum + loss.detach().to(acc) * len(idx)
            seen += len(idx)
        model.eval()
        with self._ema_weights():
            valid = evaluate_loss(model, valid_samples, self.loss_config(None))
            improved = valid["loss"] < self.best_loss
            if improved:
                self.best_state = {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                }
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(valid["loss"])
        elif self.scheduler is not None:
            self.scheduler.step()
        if improved:
            self.best_loss, self.since_best = valid["loss"], 0
        else:
            self.since_best += 1
        record = {
            "epoch": epoch,
            "train_loss": float(train_sum) / seen,
            "valid_loss": valid["loss"],
            "valid_energy_rmse": float(np.sqrt(valid["energy_mse"])),
            "valid_forces_rmse": float(np.sqrt(valid["forces_mse"])),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        if "stress_mse" in valid:
            record["valid_stress_rmse"] = float(np.sqrt(valid["stress_mse"]))
        self.history.append(record)
        return record

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.config.ema_decay
        with torch.no_grad():
            for k, p in self.model.named_parameters():
                self.ema[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[None]:
        """Evaluate (and keep as best) the averaged weights; training goes on with the raw ones."""
        if self.ema is None:
            yield
            return
        params = dict(self.model.named_parameters())
        raw = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(raw[k])

    def save(self, ckpt_dir: Path, epoch: int) -> None:
        state = {
            "payload": model_payload(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "config": self.config.to_dict(),
            "init": self.init_fingerprint or "",
            "epoch": epoch,
            "history": self.history,
            "best_loss": self.best_loss,
            "best_state": self.best_state,
            "since_best": self.since_best,
            "ema": {k: v.detach().cpu() for k, v in self.ema.items()} if self.ema else {},
        }
        tmp = ckpt_dir / f"last.pt.tmp{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, ckpt_dir / "last.pt")
        if self.best_state is not None and self.since_best == 0:
            best = model_payload(self.model, extra={"epoch": epoch, "valid_loss": self.best_loss})
            best["members"][0]["state_dict"] = self.best_state
            tmp = ckpt_dir / f"best.pt.tmp{os.getpid()}"
            torch.save(best, tmp)
            os.replace(tmp, ckpt_dir / "best.pt")


def model_fingerprint(model: Potential | None) -> str | None:
    """A content hash of a model's hyperparameters and weights (what a resume must match)."""
    if model is None:
        return None
    h = hashlib.sha256(repr(sorted(model.hyperparameters().items())).encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().double().cpu().numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(
    path: str | os.PathLike, config: TrainConfig, *, init: str | None = None
) -> dict[str, Any] | None:
    """The resumable state in ``path`` (None if absent); refuses a different config or a
    different start model (``init``: its fingerprint, None for a fresh model)."""
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
    if state.get("init", "") != (init or ""):
        raise ValueError(
            f"{path} was written for a different start model; use another checkpoint "
            "directory or delete it"
        )
    model_from_payload(state["payload"], source=str(path))  # validates the model part
    return state
