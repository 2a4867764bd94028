"""Temperature and pressure schedules: constant or linear ramp, evaluated per replica step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Constant:
    """The same value at every step."""

    value: float

    def at(self, step: torch.Tensor) -> torch.Tensor:
        """Values (R,) at the per-replica steps ``step`` (R,)."""
        return torch.full(step.shape, float(self.value), dtype=torch.float64, device=step.device)

    @property
    def extremes(self) -> tuple[float, float]:
        return float(self.value), float(self.value)


@dataclass(frozen=True)
class LinearRamp:
    """From ``start`` at step 0 to ``end`` at step ``n_steps``, constant afterwards."""

    start: float
    end: float
    n_steps: int

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ValueError(f"a ramp needs n_steps >= 1, got {self.n_steps}")

    def at(self, step: torch.Tensor) -> torch.Tensor:
        frac = (step.to(torch.float64) / self.n_steps).clamp(0.0, 1.0)
        return self.start + (self.end - self.start) * frac

    @property
    def extremes(self) -> tuple[float, float]:
        return min(self.start, self.end), max(self.start, self.end)


Schedule = Constant | LinearRamp


def as_schedule(value: float | Schedule, *, name: str, positive: bool = False) -> Schedule:
    """A schedule from a number or a schedule; ``positive`` rejects values <= 0."""
    sched = value if isinstance(value, Constant | LinearRamp) else Constant(float(value))
    lo, _ = sched.extremes
    if positive and not lo > 0:
        raise ValueError(f"{name} must be > 0 at every step, got a schedule reaching {lo}")
    return sched
