"""`ubmd explore`'s checks before anything runs (options, files, what MODEL holds), and the
guard that leaves no candidate file behind when a run fails before its first frame."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def parse_species_weights(items: list[str]) -> dict[int, float]:
    from ase.data import atomic_numbers

    out = {}
    for item in items:
        sym, sep, val = item.partition("=")
        if not sep or sym.strip() not in atomic_numbers:
            raise ValueError(f"--species-weight {item!r}: use SYMBOL=WEIGHT, e.g. H=0")
        try:
            out[atomic_numbers[sym.strip()]] = float(val)
        except ValueError:
            raise ValueError(f"--species-weight {item!r}: weight {val!r} is not a number") from None
    return out


def read_start_structures(paths: list[Path], frames: str) -> list[Any]:
    from ubmd.inputs import read_checked

    return [a for p in paths for a in read_checked(p, index=frames, what="start structure file")]


def check_out(out: Path, append: bool) -> None:
    """--out is a new file, or (--append) an existing candidate file."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a directory; give a file name (.h5)")
    if not out.exists():
        return
    if not append:
        raise FileExistsError(
            f"--out {str(out)!r} exists; pass --append to add the candidates to it, or give "
            "another --out"
        )
    import h5py

    from ubmd.md.writer import KIND

    try:
        with h5py.File(out, "r") as f:
            kind = f.attrs.get("kind")
    except OSError:
        kind = None
    if kind != KIND:
        raise ValueError(f"--append: {str(out)!r} is not a ubmd candidate file")


def _committed_frames(path: Path) -> int:
    """Frames a candidate file holds (0 if it is missing or unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("n_frames", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def nothing_left_on_failure(out: Path) -> Iterator[None]:
    """If the run fails before its first frame, remove the file (and folders) it created."""
    existed = out.exists()
    new_dirs = []
    parent = out.parent
    while not parent.exists():
        new_dirs.append(parent)
        parent = parent.parent
    try:
        yield
    except BaseException:
        if not existed and _committed_frames(out) == 0:
            out.unlink(missing_ok=True)
            for d in new_dirs:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break
        raise


_TRAIN_HINT = "`ubmd train DATA --uncertainty posterior --out MODEL`"


def load_model_spec(spec: str, device: str) -> tuple[Any, Any, Any]:
    """(potential, estimator, calibration) of a model file; (None, None, None) for `emt`."""
    if spec.lower() == "emt":
        return None, None, None
    from ubmd.uncertainty import load_bundle

    return load_bundle(spec, device=device)


def check_run_needs(spec: str, estimator: Any, calibration: Any, *, sampler: str, compile: bool,
                    max_uncertainty: float | None, max_atomic_uncertainty: float | None) -> None:  # fmt: skip
    """Everything the run needs from MODEL, before anything starts; says what makes it."""
    thresholds = [
        flag
        for flag, value in (
            ("--max-uncertainty", max_uncertainty),
            ("--max-atomic-uncertainty", max_atomic_uncertainty),
        )
        if value is not None
    ]
    if spec.lower() == "emt":
        if compile:
            raise ValueError("--compile applies to ubmd model files, not to `emt`")
        if sampler != "md":
            raise ValueError(
                f"`emt` has no uncertainty, which --sampler {sampler} needs: use sampler 'md' "
                f"(--sampler md), or a ubmd model file with an uncertainty ({_TRAIN_HINT})"
            )
        if thresholds:
            raise ValueError(f"`emt` has no calibrated uncertainty: drop {', '.join(thresholds)}")
        return
    if estimator is None and (sampler != "md" or thresholds):
        needs = f"--sampler {sampler}" if sampler != "md" else " and ".join(thresholds)
        raise ValueError(
            f"{spec} holds no uncertainty estimator, which {needs} needs; train a model with "
            f"one (fitted and calibrated) with {_TRAIN_HINT}"
            + (", or run unbiased MD with --sampler md" if sampler != "md" else "")
        )
    parts = {"--max-uncertainty": ("c_total", "total"),
             "--max-atomic-uncertainty": ("c_atom", "atom-based")}  # fmt: skip
    for flag in thresholds:
        attr, name = parts[flag]
        if calibration is None:
            raise ValueError(
                f"{flag} is a calibrated threshold and {spec} holds no calibration; train a "
                f"calibrated model with {_TRAIN_HINT} (it holds out --calibration-fraction of "
                f"DATA to calibrate on), or drop {flag}"
            )
        if getattr(calibration, attr) is None:
            other = next(f for f in parts if f != flag)
            raise ValueError(
                f"{flag} needs the calibrated {name} uncertainty, but {spec} carries only the "
                f"{parts[other][1]} part of a calibration (a campaign calibrates each part once "
                f"its calibration split is large enough for alpha={calibration.alpha}); use "
                f"{other}, or train a model calibrated on both with {_TRAIN_HINT}"
            )


def check_training_data(training_data: Path | None) -> None:
    if training_data is None:
        raise ValueError("--sampler adversarial needs --training-data (labelled structures for Q)")
    if not training_data.exists():
        raise FileNotFoundError(f"training data {training_data} does not exist")


def check_start_structures(starts: list[Any], net: Any, *, npt: bool) -> None:
    """The model knows every element of the start structures; NPT has 3D periodic cells."""
    if net is not None:
        from ubmd.models.compiled import check_elements

        for atoms in starts:
            check_elements(atoms.numbers, net.species)
    if npt and not all(a.pbc.all() and a.cell.volume > 1e-6 for a in starts):
        raise ValueError(
            "NPT needs periodic structures with a 3D cell; a start structure has no cell or "
            "pbc is not True in all directions (use NVT for molecules and clusters)"
        )
