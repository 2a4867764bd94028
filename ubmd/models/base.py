"""Former home of the model registry, the Potential base class and the model files.

They live in ``registry``, ``potential`` and ``files`` now; these names stay importable
from here for code written against the old module.
"""

from ubmd.models.files import (
    FORMAT_MARKER,
    FORMAT_VERSION,
    load_extra,
    load_model,
    model_from_payload,
    model_payload,
    read_model_file,
    save_model,
)
from ubmd.models.potential import N_ELEMENTS, Potential, compute, unknown_elements_message
from ubmd.models.registry import model_class, register_model

__all__ = [
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "N_ELEMENTS",
    "Potential",
    "compute",
    "load_extra",
    "load_model",
    "model_class",
    "model_from_payload",
    "model_payload",
    "read_model_file",
    "register_model",
    "save_model",
    "unknown_elements_message",
]
