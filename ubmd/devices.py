"""Device names: one check for every command and config that takes a torch device."""

from __future__ import annotations

import re

ACCEPTED = "auto, cpu, cuda, cuda:N, mps"
_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_name(name: str, *, where: str = "device") -> str:
    """``name`` if it is a device ubmd runs on (not whether this machine has it)."""
    if not isinstance(name, str) or not _PATTERN.fullmatch(name):
        raise ValueError(f"{where} {name!r} is not a device ubmd runs on (accepted: {ACCEPTED})")
    return name


def check_device_here(name: str | None, *, where: str = "--device") -> str | None:
    """Like ``check_device_name``, and the device must exist on this machine."""
    if name is None:
        return None
    check_device_name(name, where=where)
    if name.startswith("cuda") or name == "mps":
        import torch

        if name == "mps":
            present = torch.backends.mps.is_available()
        else:
            index = int(name.partition(":")[2] or 0)
            present = torch.cuda.is_available() and index < torch.cuda.device_count()
        if not present:
            raise ValueError(f"{where} {name!r}: torch sees no such device on this machine")
    return name


def resolve_device(name: str | None) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU (parsl binds one per worker),
    else ``"cpu"``; any other name as it is. Every command and campaign step resolves here."""
    if name not in (None, "auto"):
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
