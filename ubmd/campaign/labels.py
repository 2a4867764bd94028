"""Labels: the initial data, one label task per selected structure, and appending results to the store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.common import as_config, task_seed
from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.frames import read_frames, write_frames
from ubmd.campaign.layout import write_atomic

ORIGIN_FIELDS = (
    "explorer",
    "replica",
    "md_step",
    "temperature_K",
    "bias_strength",
    "bias_stress_strength",
    "sampler",
    "selection_uncertainty",
    "selection_method",
)


def stored_hashes(store: Any) -> set[bytes]:
    return {h.tobytes() for h in store.content_hashes()}


def count_labels(store: Any, *, min_iteration: int = 0) -> int:
    it = store.read_arrays(status=keys.STATUS_OK)[keys.ITERATION]
    return int(np.count_nonzero(it >= min_iteration))


def write_initial_selection(config: CampaignConfig, path: str | os.PathLike[str]) -> None:
    """Random Gaussian displacements of every system's start structures (the paper's start)."""
    from ubmd.campaign.validate import read_structures

    rng = np.random.default_rng(task_seed(config, "initial"))
    frames = []
    for name, starts in read_structures(config).items():
        for k in range(config.initial_data.random_displacements):
            atoms = starts[k % len(starts)].copy()
            atoms.calc = None
            atoms.info = {"system": name, "sampler": "random_displacement"}
            atoms.positions = atoms.positions + rng.normal(
                0.0, config.initial_data.displacement_A, atoms.positions.shape
            )
            frames.append(atoms)
    write_frames(path, frames)


def import_labelled(config: CampaignConfig, store: Any) -> int:
    """Append the campaign's already-labelled structures (iteration -1); duplicates skipped."""
    from ubmd.inputs import read_structures
    from ubmd.store import Provenance

    added = 0
    for p in config.initial_data.labelled:
        frames = read_structures(config.path(p))
        prov = [Provenance(campaign_id=config.name, iteration=-1, sampler="import") for _ in frames]
        added += len(store.append(frames, provenance=prov).indices)
    return added


def _provenance(fields: dict[str, Any]) -> Any:
    from ubmd.store import Provenance

    known = Provenance.__dataclass_fields__
    return Provenance(**{k: v for k, v in fields.items() if k in known})


def _origin(atoms: Any) -> dict[str, Any]:
    return {k: atoms.info[k] for k in ORIGIN_FIELDS if k in atoms.info}


def labeler_settings(config: CampaignConfig, *, launcher: str = "") -> dict[str, Any]:
    """The campaign's labeler settings plus the site's MPI prefix (``launcher``) for labelers
    that take one (CP2K, VASP); a ``launcher`` set in the campaign file itself wins."""
    from ubmd.labelers import labeler_class

    settings = config.labeler_settings()
    takes = "launcher" in labeler_class(config.labeler.name).Settings.model_fields
    if launcher and takes and "launcher" not in settings:
        settings["launcher"] = launcher
    return settings


def label_task(
    cfg: dict[str, Any],
    *,
    selection: str,
    iteration: int,
    index: int,
    out: str,
    workdir: str,
    launcher: str = "",
    scratch_dir: str = "",
) -> dict[str, Any]:
    """Label frame ``index`` of a selection file with the campaign's labeler (with retries).

    ``launcher`` and ``scratch_dir`` are site properties (the label executor's MPI prefix, the
    labelers' scratch disk with ``$VARS`` expanded here, on the compute node)."""
    from ubmd.labelers import RetryPolicy, label_with_retries, make_labeler

    config = as_config(cfg)
    atoms = read_frames(selection)[index]
    labeler = make_labeler(config.labeler.name, **labeler_settings(config, launcher=launcher))
    if scratch_dir:
        work, root = Path(workdir), Path(os.path.expandvars(os.path.expanduser(scratch_dir)))
        inside = work.is_relative_to(config.campaign_dir)  # mirror the campaign's layout
        workdir = str(
            root / config.name / (work.relative_to(config.campaign_dir) if inside else work.name)
        )
    shutil.rmtree(workdir, ignore_errors=True)  # a retried task starts clean
    result = label_with_retries(
        labeler,
        atoms,
        workdir=workdir,
        policy=RetryPolicy(max_attempts=config.labeler.max_attempts),
    )
    record = {
        "campaign_id": config.name,
        "iteration": iteration,
        "labeler": result.labeler,
        "labeler_hash": result.settings_hash,
        "status": result.status,
        "reason": result.reason,
        "wall_time_s": result.wall_time_s,
        **_origin(atoms),
    }
    _write_label(
        out, atoms, record, result.energy, result.forces, result.stress, result.free_energy
    )
    return {"status": result.status, "reason": result.reason, "wall_time_s": result.wall_time_s}


def write_failed_label(
    cfg: dict[str, Any], *, selection: Path, iteration: int, index: int, out: Path, reason: str
) -> None:
    config = as_config(cfg)
    atoms = read_frames(selection)[index]
    record = {
        "campaign_id": config.name,
        "iteration": iteration,
        "labeler": config.labeler.name,
        "status": keys.STATUS_FAILED,
        "reason": reason,
        **_origin(atoms),
    }
    _write_label(out, atoms, record, None, None, None, None)


def _write_label(
    out: str | Path, atoms: Any, record: dict[str, Any], energy, forces, stress, free_energy
) -> None:
    import json

    arrays = {
        "numbers": atoms.numbers,
        "positions": atoms.positions,
        "cell": atoms.cell.array,
        "pbc": atoms.pbc,
        "record": np.array(json.dumps(record, default=float)),
    }
    for name, value in (
        ("energy", energy),
        ("forces", forces),
        ("stress", stress),
        ("free_energy", free_energy),
    ):
        if value is not None:
            arrays[name] = np.asarray(value, dtype=np.float64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    write_atomic(out, write, suffix=".npz")


def append_label(store: Any, path: str | os.PathLike[str]) -> bool:
    """Append one label result file to the store; True if it is an ok label."""
    import json

    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    with np.load(path, allow_pickle=False) as data:
        atoms = Atoms(
            numbers=data["numbers"], positions=data["positions"], cell=data["cell"], pbc=data["pbc"]
        )
        record = json.loads(str(data["record"]))
        results = {k: data[k] for k in ("energy", "forces", "stress", "free_energy") if k in data}
    if "energy" in results:
        results["energy"] = float(results["energy"])
    if "free_energy" in results:
        results["free_energy"] = float(results["free_energy"])
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    store.append([atoms], provenance=[_provenance(record)])
    return record["status"] == keys.STATUS_OK
