"""Fitted uncertainty estimators: features → total and atom-based uncertainties.

An :class:`UncertaintyEstimator` (fitted by :func:`ubmd.uncertainty.fitting.fit_uncertainty`)
is an ``nn.Module`` whose fitted tensors are buffers, so it follows ``.to(device)`` and
round-trips through :meth:`UncertaintyEstimator.to_dict` / :meth:`UncertaintyEstimator.from_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ubmd import keys
from ubmd.uncertainty.ensemble import ensemble_uncertainty
from ubmd.uncertainty.features import (
    FEATURE_KINDS,
    LAST_LAYER_INPUT,
    SketchedGradient,
    structure_mean,
    with_bias,
)
from ubmd.uncertainty.gmm import GMMHead
from ubmd.uncertainty.kernels import DistanceHead, PosteriorHead

METHODS = ("posterior", "distance", "ensemble", "gmm")
# Extra entries run_model() adds to a model's outputs (see ubmd.uncertainty.inference).
READOUT_INPUTS = "readout_inputs"
READOUT_OUTPUTS = "readout_outputs"
FORMAT = "ubmd.uncertainty/1"


@dataclass(frozen=True)
class UncertaintyConfig:
    """How to estimate uncertainty.

    method: "posterior" | "distance" | "ensemble" | "gmm"; features: "last_layer" |
    "sketched_gradient" (used by posterior/distance, and reported as FEATURES by all methods);
    sigma: posterior noise σ (in rescaled feature units); sketch_dim/seed: random projections;
    gmm_components: int, or a tuple to choose by BIC; batch_size: structures per forward in fit.
    """

    method: str = "posterior"
    features: str = "last_layer"
    sigma: float = 1e-2
    sketch_dim: int = 512
    seed: int = 0
    gmm_components: int | tuple[int, ...] = 8
    gmm_reg_covar: float = 1e-6
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.features not in FEATURE_KINDS:
            raise ValueError(f"features must be one of {FEATURE_KINDS}, got {self.features!r}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.sketch_dim < 1 or self.batch_size < 1:
            raise ValueError(
                f"sketch_dim and batch_size must be >= 1, got {self.sketch_dim}, {self.batch_size}"
            )
        if isinstance(self.gmm_components, list):
            object.__setattr__(self, "gmm_components", tuple(self.gmm_components))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["gmm_components"], tuple):
            d["gmm_components"] = list(d["gmm_components"])
        return d

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], where: str = "uncertainty settings"
    ) -> UncertaintyConfig:
        """Built strictly: unknown keys name the nearest valid one, wrong values are named."""
        from ubmd.strict import build

        return build(cls, data, where)


class UncertaintyEstimator(nn.Module):
    """Maps a model's outputs on a graph to features and total / atom-based uncertainties."""

    def __init__(
        self,
        config: UncertaintyConfig,
        *,
        sketch: SketchedGradient | None = None,
        total_head: nn.Module | None = None,
        atom_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.sketch = sketch
        self.total_head = total_head
        self.atom_head = atom_head

    @property
    def needs_capture(self) -> bool:
        """Whether the model must run under a ReadoutCapture (sketched-gradient features)."""
        return self.config.features == "sketched_gradient"

    def atomic_features(self, outputs: dict[str, Any]) -> Tensor:
        """φ_i (A, K) from a model's outputs (see :func:`ubmd.uncertainty.inference.run_model`)."""
        if self.config.features == "last_layer":
            if LAST_LAYER_INPUT in outputs:
                return with_bias(outputs[LAST_LAYER_INPUT])
            if READOUT_INPUTS in outputs:
                return with_bias(outputs[READOUT_INPUTS][-1])
            raise ValueError(f"model outputs lack {LAST_LAYER_INPUT!r} (see contract.md)")
        if self.sketch is None:
            raise ValueError(
                "this estimator has no sketch; it was not fitted for gradient features"
            )
        if READOUT_INPUTS not in outputs:
            raise ValueError(
                "sketched-gradient features need the readout captured: run the model with "
                "ubmd.uncertainty.run_model(model, graph, capture=True)"
            )
        return self.sketch(
            outputs[keys.ATOMIC_ENERGIES], outputs[READOUT_INPUTS], outputs[READOUT_OUTPUTS]
        )

    def forward(self, graph: Any, outputs: dict[str, Any]) -> dict[str, Tensor]:
        """Return UNCERTAINTY (S,), ATOMIC_UNCERTAINTY (A,), FEATURES (S,K), ATOMIC_FEATURES (A,K).

        Differentiable w.r.t. graph.positions / graph.strain when the outputs are.
        For method "ensemble", outputs must hold ENSEMBLE_ENERGY (M,S) and ENSEMBLE_FORCES (M,A,3)
        (the features then come from the member whose outputs these are, if available).
        """
        n_struct = int(graph.n_atoms.shape[0])
        res: dict[str, Tensor] = {}
        method = self.config.method
        have_features = LAST_LAYER_INPUT in outputs or READOUT_INPUTS in outputs
        # Features are reported for every method when the outputs allow (selection uses them).
        if method in ("posterior", "distance") or have_features:
            phi_atoms = self.atomic_features(outputs)
            res[keys.ATOMIC_FEATURES] = phi_atoms
            res[keys.FEATURES] = structure_mean(phi_atoms, graph.batch, n_struct)
        if method in ("posterior", "distance"):
            res[keys.UNCERTAINTY] = self.total_head(res[keys.FEATURES])
            res[keys.ATOMIC_UNCERTAINTY] = self.atom_head(res[keys.ATOMIC_FEATURES])
        elif method == "gmm":
            if keys.LATENT not in outputs:
                raise ValueError(f"model outputs lack {keys.LATENT!r} (see contract.md)")
            score = self.atom_head(outputs[keys.LATENT])
            res[keys.ATOMIC_UNCERTAINTY] = score
            res[keys.UNCERTAINTY] = structure_mean(score, graph.batch, n_struct)
        else:
            if keys.ENSEMBLE_ENERGY not in outputs:
                raise ValueError(
                    f"ensemble uncertainty needs {keys.ENSEMBLE_ENERGY!r} in the outputs "
                    "(run the members with ubmd.uncertainty.inference)"
                )
            u_tot, u_atom = ensemble_uncertainty(
                outputs[keys.ENSEMBLE_ENERGY], outputs.get(keys.ENSEMBLE_FORCES), graph.n_atoms
            )
            res[keys.UNCERTAINTY] = u_tot
            if u_atom is not None:
                res[keys.ATOMIC_UNCERTAINTY] = u_atom
        return res

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str, int, float, list, tensors) loadable with torch.load(weights_only=True)."""
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, device: str | torch.device | None = None
    ) -> UncertaintyEstimator:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"not a ubmd uncertainty estimator (format {data.get('format') if isinstance(data, dict) else type(data).__name__!r}, expected {FORMAT!r})"
            )
        config = UncertaintyConfig.from_dict(data["config"])
        st = data["state"]
        sketch = total = atom = None
        n_sketch = sum(1 for k in st if k.startswith("sketch.r1_"))
        if n_sketch:
            sketch = SketchedGradient(
                [st[f"sketch.r1_{i}"] for i in range(n_sketch)],
                [st[f"sketch.r2_{i}"] for i in range(n_sketch)],
            )
        if config.method == "posterior":
            total = PosteriorHead(
                st["total_head.chol"], st["total_head.scale"], st["total_head.sigma"]
            )
            atom = PosteriorHead(st["atom_head.chol"], st["atom_head.scale"], st["atom_head.sigma"])
        elif config.method == "distance":
            total = DistanceHead(st["total_head.points"], st["total_head.scale"])
            atom = DistanceHead(st["atom_head.points"], st["atom_head.scale"])
        elif config.method == "gmm":
            atom = GMMHead(
                st["atom_head.log_weights"], st["atom_head.means"], st["atom_head.prec_chol"]
            )
        est = cls(config, sketch=sketch, total_head=total, atom_head=atom)
        est.load_state_dict(st)  # checks that nothing is missing or left over
        return est.to(device) if device is not None else est
