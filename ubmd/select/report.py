"""Informativeness of a candidate pool before any label exists (offline design report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ubmd.select.design import DEFAULT_LAM, d_optimal, training_design
from ubmd.select.features import CHUNK_ROWS, PoolFeatures

DEFAULT_GAIN_THRESHOLD = 1e-3


@dataclass(frozen=True)
class DesignReport:
    """What a pool would add to the current training design M = Φ_TᵀΦ_T + λI.

    ``gains[x]`` = log(1 + φ_xᵀM⁻¹φ_x): the increase of log det M if x alone were labeled.
    ``novelty[x]`` = λ·φ_xᵀM⁻¹φ_x/||φ_x||² ∈ [0, 1]: the fraction of x outside the directions the
    training set already pins down (1: orthogonal to them; 0: well covered).
    """

    n_pool: int
    n_train: int
    feature_dim: int
    lam: float
    scale: float
    gains: np.ndarray  # (N,)
    novelty: np.ndarray  # (N,)
    eigenvalues: np.ndarray  # (K,) of Φ_TᵀΦ_T (scaled features), descending
    effective_rank: float  # exp(entropy of the normalised eigenvalues); 0 without training set
    numerical_rank: int  # eigenvalues above λ
    condition_number: float  # of Φ_TᵀΦ_T + λI
    gain_threshold: float
    n_informative: int  # candidates with gain > threshold
    adds_information: bool
    batch_size: int | None
    batch_gain: (
        float | None
    )  # log-det gain of the D-optimal batch of ``batch_size`` (greedy+exchange)
    message: str

    @property
    def max_gain(self) -> float:
        return float(self.gains.max())

    @property
    def mean_gain(self) -> float:
        return float(self.gains.mean())

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs for a table."""
        out = [
            ("candidates in pool", str(self.n_pool)),
            ("training structures", str(self.n_train)),
            ("feature dimension K", str(self.feature_dim)),
            ("ridge λ", f"{self.lam:.3g}"),
            ("training design: effective rank", f"{self.effective_rank:.2f}"),
            ("training design: eigenvalues > λ", f"{self.numerical_rank} / {self.feature_dim}"),
            ("training design: condition number", f"{self.condition_number:.3e}"),
            ("max expected log-det gain", f"{self.max_gain:.4g}"),
            ("mean expected log-det gain", f"{self.mean_gain:.4g}"),
            ("max novelty (fraction outside span)", f"{float(self.novelty.max()):.4g}"),
            (f"informative candidates (gain > {self.gain_threshold:g})", str(self.n_informative)),
        ]
        if self.batch_size is not None:
            out.append(
                (f"D-optimal batch of {self.batch_size}: log-det gain", f"{self.batch_gain:.4g}")
            )
        out.append(("verdict", self.message))
        return out


def design_report(
    candidate_features: Any,
    *,
    train_features: Any = None,
    lam: float = DEFAULT_LAM,
    gain_threshold: float = DEFAULT_GAIN_THRESHOLD,
    batch_size: int | None = None,
    device: Any = None,
    dtype: torch.dtype = torch.float64,
) -> DesignReport:
    """Report the informativeness of a pool given the current training design.

    The pool "adds no information" when no candidate would raise log det M by more than
    ``gain_threshold`` (e.g. all candidates lie in directions the training set has sampled
    densely). With ``batch_size`` the D-optimal batch's total gain is reported too.
    """
    if not gain_threshold >= 0.0:
        raise ValueError(f"gain_threshold must be >= 0; got {gain_threshold!r}")
    feats, mat = training_design(candidate_features, train_features, batch_size, lam, device, dtype)
    raw, train = feats.pool, feats.train
    n, k = raw.shape
    eig = torch.linalg.eigvalsh(mat).flip(0) - lam  # eigenvalues of Φ_TᵀΦ_T
    eig = eig.clamp(min=0.0).cpu().numpy()
    gains, novelty = _gains_and_novelty(feats, mat, lam=lam, dtype=dtype)
    eff_rank = _effective_rank(eig)
    cond = float((eig[0] + lam) / (eig[-1] + lam))
    n_inf = int((gains > gain_threshold).sum())
    batch_gain = None
    if batch_size is not None:
        res = d_optimal(raw, batch_size, train_features=train, lam=lam, dtype=dtype)
        batch_gain = res.value - res.start_value
    return DesignReport(
        n_pool=n,
        n_train=0 if train is None else int(train.shape[0]),
        feature_dim=k,
        lam=lam,
        scale=feats.scale,
        gains=gains,
        novelty=novelty,
        eigenvalues=eig,
        effective_rank=eff_rank,
        numerical_rank=int((eig > lam).sum()),
        condition_number=cond,
        gain_threshold=gain_threshold,
        n_informative=n_inf,
        adds_information=n_inf > 0,
        batch_size=None if batch_size is None else int(batch_size),
        batch_gain=batch_gain,
        message=_verdict(gains, n_informative=n_inf, gain_threshold=gain_threshold),
    )


def _gains_and_novelty(
    feats: PoolFeatures, mat: torch.Tensor, *, lam: float, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: log(1 + φᵀM⁻¹φ) and λ·φᵀM⁻¹φ/||φ||² clamped to [0, 1] (chunked rows)."""
    raw, s, dev = feats.pool, feats.scale, feats.device
    n = raw.shape[0]
    chol = torch.linalg.cholesky(mat)
    quad = torch.empty(n, dtype=dtype, device=dev)
    norm2 = torch.empty(n, dtype=dtype, device=dev)
    for i in range(0, n, CHUNK_ROWS):
        blk = raw[i : i + CHUNK_ROWS].to(dtype) * s
        w = torch.linalg.solve_triangular(chol.T, blk, upper=True, left=False)  # L⁻¹φ as rows
        quad[i : i + CHUNK_ROWS] = w.square().sum(dim=1)
        norm2[i : i + CHUNK_ROWS] = blk.square().sum(dim=1)
    gains = torch.log1p(quad).cpu().numpy()
    zero = norm2 <= 0
    novelty = torch.where(zero, 0.0, lam * quad / torch.where(zero, 1.0, norm2))
    return gains, novelty.clamp(0.0, 1.0).cpu().numpy()


def _effective_rank(eig: np.ndarray) -> float:
    """exp(entropy of the normalised eigenvalues); 0 when they are all zero."""
    total = float(eig.sum())
    if not total > 0:
        return 0.0
    p = eig[eig > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _verdict(gains: np.ndarray, *, n_informative: int, gain_threshold: float) -> str:
    """One line: does the pool add information, and how much."""
    if n_informative > 0:
        return (
            f"pool adds information: {n_informative} of {gains.size} candidates raise log det "
            f"by > {gain_threshold:g}"
        )
    return (
        f"pool adds no information: max expected log-det gain {gains.max():.3g} "
        f"<= {gain_threshold:g}"
    )


def plot_design_report(report: DesignReport, path: str) -> None:
    """Save a two-panel figure: sorted expected log-det gains, training eigenvalue spectrum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    gains = np.sort(report.gains)[::-1]
    ax1.semilogy(np.arange(1, gains.size + 1), np.maximum(gains, 1e-16), lw=1.5)
    ax1.axhline(report.gain_threshold, color="k", ls="--", lw=1, label="threshold")
    ax1.set_xlabel("candidate rank")
    ax1.set_ylabel("expected log-det gain")
    ax1.set_title(f"pool ({report.n_pool} candidates)")
    ax1.legend()
    eig = report.eigenvalues
    if report.n_train > 0:
        ax2.semilogy(np.arange(1, eig.size + 1), np.maximum(eig, 1e-16), "o-", ms=2, lw=1)
    ax2.axhline(report.lam, color="k", ls="--", lw=1, label="λ")
    ax2.set_xlabel("index")
    ax2.set_ylabel("eigenvalue of ΦᵀΦ")
    ax2.set_title(f"training design ({report.n_train} structures)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
