"""Per-atom gradient features from a potential's per-atom readout MLP.

* last-layer: φ_i = [a_i, 1], a_i the input of the final readout Linear (from the same forward).
* sketched gradient: φ_i = K^{-1/2} Σ_l (ā_l R¹_l) ⊙ (g_l R²_l) with ā_l = [input of readout
  Linear l, 1], g_l = ∂E_i/∂(output of Linear l) and fixed Gaussian R¹_l ((in_l+1)×K),
  R²_l (out_l×K). Then E[φ_i·φ_j] = Σ_l ⟨ā_l,i, ā_l,j⟩⟨g_l,i, g_l,j⟩ = ⟨∇_θ E_i, ∇_θ E_j⟩
  over the readout weights and biases, i.e. φ is an unbiased sketch of the full readout gradient.

Inputs/outputs of the readout Linear layers are captured with forward hooks during the model's
own forward (:class:`ReadoutCapture`), so no second forward is needed.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import Tensor, nn

LAST_LAYER_INPUT = "last_layer_input"  # contract.md: (A, K) input of the final readout Linear
FEATURE_KINDS = ("last_layer", "sketched_gradient")


def readout_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of ``model.readout`` in order; the last one must map to one number."""
    readout = getattr(model, "readout", None)
    if not isinstance(readout, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no `readout` module; see ubmd/models/contract.md"
        )
    linears = [m for m in readout.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].out_features != 1:
        raise ValueError(
            f"{type(model).__name__}.readout must end in a Linear with out_features=1, "
            f"found {[(m.in_features, m.out_features) for m in linears]}"
        )
    return linears


class ReadoutCapture:
    """Context manager recording the input and output of each readout Linear per forward."""

    def __init__(self, model: nn.Module) -> None:
        self.linears = readout_linears(model)
        self.inputs: list[Tensor | None] = [None] * len(self.linears)
        self.outputs: list[Tensor | None] = [None] * len(self.linears)
        self._handles: list = []

    def __enter__(self) -> ReadoutCapture:
        for idx, lin in enumerate(self.linears):
            self._handles.append(lin.register_forward_hook(self._hook(idx)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, idx: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self.inputs[idx] = args[0]
            self.outputs[idx] = output

        return hook

    def captured(self) -> tuple[list[Tensor], list[Tensor]]:
        if any(t is None for t in self.inputs):
            raise RuntimeError("the readout did not run inside this capture (no forward yet?)")
        return list(self.inputs), list(self.outputs)  # type: ignore[arg-type]


def with_bias(a: Tensor) -> Tensor:
    """Append a column of ones (the bias entry)."""
    return torch.cat([a, torch.ones_like(a[:, :1])], dim=1)


class SketchedGradient(nn.Module):
    """Random projections of the per-atom readout gradients (fixed seed, stored as buffers)."""

    def __init__(self, r1: list[Tensor], r2: list[Tensor]) -> None:
        super().__init__()
        if len(r1) != len(r2) or not r1:
            raise ValueError("need one (R1, R2) pair per readout Linear")
        self.n_layers = len(r1)
        for idx, (a, b) in enumerate(zip(r1, r2, strict=True)):
            self.register_buffer(f"r1_{idx}", a)
            self.register_buffer(f"r2_{idx}", b)

    @classmethod
    def for_model(
        cls, model: nn.Module, *, sketch_dim: int, seed: int, dtype: torch.dtype = torch.float64
    ) -> SketchedGradient:
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
        gen = torch.Generator().manual_seed(int(seed))
        r1, r2 = [], []
        for lin in readout_linears(model):
            r1.append(torch.randn(lin.in_features + 1, sketch_dim, generator=gen, dtype=dtype))
            r2.append(torch.randn(lin.out_features, sketch_dim, generator=gen, dtype=dtype))
        return cls(r1, r2)

    @property
    def dim(self) -> int:
        return int(self.r1_0.shape[1])

    def projections(self) -> list[tuple[Tensor, Tensor]]:
        return [(getattr(self, f"r1_{i}"), getattr(self, f"r2_{i}")) for i in range(self.n_layers)]

    def forward(
        self, atomic_energies: Tensor, inputs: list[Tensor], outputs: list[Tensor]
    ) -> Tensor:
        """φ (A, K) from the captured readout inputs/outputs; differentiable (create_graph)."""
        if len(inputs) != self.n_layers:
            raise ValueError(f"sketch built for {self.n_layers} readout layers, got {len(inputs)}")
        # The readout is per atom, so d(sum_i E_i)/dz_l[i] = dE_i/dz_l[i]: one backward for all.
        grads = torch.autograd.grad(
            atomic_energies.sum(), outputs, create_graph=True, allow_unused=False
        )
        phi = None
        for (r1, r2), a, g in zip(self.projections(), inputs, grads, strict=True):
            if a.shape[1] + 1 != r1.shape[0] or g.shape[1] != r2.shape[0]:
                raise ValueError(
                    f"sketch built for a readout layer {r1.shape[0] - 1}->{r2.shape[0]}, the "
                    f"model's is {a.shape[1]}->{g.shape[1]}: was it fitted for another model?"
                )
            term = (with_bias(a).to(r1.dtype) @ r1) * (g.to(r2.dtype) @ r2)
            phi = term if phi is None else phi + term
        return phi * self.dim**-0.5


def structure_mean(atomic: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """Mean of per-atom rows over each structure (S, K)."""
    out = torch.zeros(n_structures, *atomic.shape[1:], dtype=atomic.dtype, device=atomic.device)
    out = out.index_add(0, batch, atomic)
    counts = torch.bincount(batch, minlength=n_structures).to(atomic.dtype)
    return out / counts.reshape(-1, *([1] * (atomic.ndim - 1)))
