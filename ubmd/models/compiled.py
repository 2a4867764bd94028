"""Compiled inference: ``torch.compile`` (inductor) on a frozen copy of a potential.

For long MD runs: the compiler fuses the per-edge chains of gathers, products and
scatters of a message-passing step into a few loops, so forward and backward move far
less memory (on CPU, about 2.7x faster per step at float32; see tests/benchmarks/explore_bench.py).
Compiling costs some seconds on the first call and again when tensor ranks or dtypes
change; shapes are dynamic, so changing numbers of atoms and edges reuse the code.

The compiled copy has frozen parameters (only position/strain gradients are traced),
so it is for inference only: training keeps the eager model. Elements are not checked
inside the compiled code (a data-dependent branch would split it), so callers check
them first (:func:`check_elements`; the MD engine's neighbour lists and the ASE
calculator do). If the compiler fails on this machine (no C++ compiler, an inductor
bug), :func:`call` warns once and runs the model eagerly from then on.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
from torch import nn

_OPTIONS = {
    # No buffer reuse: with it the compiled backward overwrote saved activations, and a
    # second gradient of the same forward (retain_graph, biased MD) came out wrong.
    "inplace_buffers": False,
    "allow_buffer_reuse": False,
    # Generated kernels run on one thread (matrix products still use torch's threads):
    # threaded, their scatters use atomic adds, measured 1.5x slower on 2 cores here.
    "cpp.threads": 1,
}


def compile_for_inference(model: nn.Module, estimator=None) -> nn.Module:
    """A compiled, frozen copy of a Potential or Ensemble (the argument is not changed).

    ``estimator``: the uncertainty estimator the copy will serve; gradient features hook
    into the readout, which compiled code cannot, so they are refused here.
    """
    from ubmd.models.ensemble import Ensemble
    from ubmd.models.potential import Potential

    if estimator is not None and estimator.needs_capture:
        raise ValueError(
            f"compile=True cannot be used with the {estimator.config.features!r} "
            "uncertainty features (they hook into the readout); use compile=False or "
            "last-layer features"
        )

    members = list(model.members) if hasattr(model, "members") else [model]
    for m in members:
        if not isinstance(m, Potential):
            raise TypeError(f"compile_for_inference needs a ubmd Potential, got {type(m).__name__}")
    # Biased MD takes two gradients of one forward (retain_graph), which donated buffers
    # forbid. The backward is compiled lazily, at its first call, so this has to be set for
    # the process rather than around the forward call.
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    copies = []
    for m in members:
        c = copy.deepcopy(m).eval().requires_grad_(False)
        c.compile(dynamic=True, options=_OPTIONS)
        c._ubmd_compiled = True  # marker read by call() and is_compiled()
        copies.append(c)
    return Ensemble(copies) if hasattr(model, "members") else copies[0]


def call(model: nn.Module, graph) -> dict:
    """``model(graph)``. If compiling a compiled model fails (no C++ compiler, an inductor
    bug), a RuntimeWarning names the error and the model runs eagerly from then on."""
    if not getattr(model, "_ubmd_compiled", False):
        return model(graph)
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    try:
        with warnings.catch_warnings():
            # dynamo's own warnings about skipped frames are noise for users
            warnings.simplefilter("ignore", UserWarning)
            return model(graph)
    except (TorchDynamoException, InductorError) as exc:
        model._compiled_call_impl = None  # nn.Module.compile's hook: back to eager
        model._ubmd_compiled = False
        model.compile_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        warnings.warn(
            f"torch.compile failed ({model.compile_error}); running the model eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return model(graph)


def is_compiled(model: nn.Module) -> bool:
    """True while every member runs compiled code (False after a fallback to eager)."""
    members = list(model.members) if hasattr(model, "members") else [model]
    return all(getattr(m, "_ubmd_compiled", False) for m in members)


def check_elements(numbers, species) -> None:
    """Raise ValueError naming the elements of ``numbers`` not in ``species``."""
    unknown = sorted({int(z) for z in np.unique(np.asarray(numbers))} - {int(z) for z in species})
    if unknown:
        from ubmd.models.potential import unknown_elements_message

        raise ValueError(unknown_elements_message(unknown, species))
