"""The tasks of a streaming campaign (``mode: streaming``): explorer segments and selections.

No parsl here: :mod:`ubmd.pipeline.streaming` wraps these into apps. Training, calibration,
reports and labels are the iterations-mode tasks (:mod:`ubmd.campaign.steps`), run on a
snapshot of the store (:mod:`ubmd.campaign.stream_layout`). Every random choice is seeded from
the campaign seed and the task's number (explorer and segment, selection), and every task
writes its result atomically and last, so a task run again computes the same thing.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ubmd.campaign.common import as_config, resolve_device, task_seed
from ubmd.campaign.frames import read_frames, structure_key, write_frames
from ubmd.campaign.labels import ORIGIN_FIELDS
from ubmd.campaign.layout import atomic_path, read_json, write_json_atomic
from ubmd.campaign.learning import features_and_uncertainty

if TYPE_CHECKING:
    from ubmd.md.continuation import Continuation


def segment_task(
    cfg: dict[str, Any],
    *,
    bundle: str,
    starts: str,
    previous: str | None,
    explorer: int,
    segment: int,
    out: str,
    next_out: str,
) -> dict[str, Any]:
    """One segment of an explorer: ``streaming.segment_steps`` MD steps with the model ``bundle``
    for each replica, going on with the trajectory the explorer's previous segment left it
    (``previous``, its continuation file: positions, velocities, step count and bias windows;
    :mod:`ubmd.md.continuation`) or from a start structure. Writes the continuation file, then
    the candidate file ``out`` (whose existence marks the segment done)."""
    from ubmd.campaign.exploring import explorer_model
    from ubmd.campaign.validate import explore_config
    from ubmd.md.explore import run_explorer

    config = as_config(cfg)
    spec = config.exploration
    device = resolve_device(config.device)
    ec = explore_config(config, seed=task_seed(config, "segment", explorer, segment))
    ec = dataclasses.replace(
        ec, device=device, explorer_id=explorer, n_steps=config.streaming.segment_steps
    )
    if device == "cpu":  # as explore_task: an explorer worker keeps its per-step buffers
        from ubmd.md.allocator import retain_freed_memory

        retain_freed_memory()
    frames, carried = _segment_starts(config, starts, previous, explorer, segment)
    model = explorer_model(bundle, device, compile=spec.compile, skin_A=spec.neighbour_skin_A)
    with atomic_path(out, ".h5") as tmp:
        tmp.unlink()  # the writer creates its own file
        summary = run_explorer(
            ec, model, frames, out_path=tmp, replicas=len(frames), continuations=carried,
            keep_ends=True,
        )  # fmt: skip
        ends = going_on(summary["ends"], max_steps=trajectory_step_cap(config))
        write_json_atomic(next_out, {str(r): c.to_json() for r, c in ends.items()})
    return {
        "n_frames": summary["n_frames"],
        "continued": sum(c is not None for c in carried),
        "wall_time_s": summary.get("wall_time_s"),
        "compiled": summary.get("compiled"),
    }


def _segment_starts(
    config: Any, starts: str, previous: str | None, explorer: int, segment: int
) -> tuple[list[Any], list[Continuation | None]]:
    """One start frame per replica and its continuation: the previous segment's when the
    replica goes on, else a start structure drawn from the segment's seed (and None)."""
    pool = read_frames(starts)
    replicas = config.exploration.replicas
    rng = np.random.default_rng(task_seed(config, "segment-starts", explorer, segment))
    fresh = rng.choice(len(pool), size=replicas, replace=len(pool) < replicas)
    carry = read_continuations(previous) if previous is not None else {}
    frames, carried = [], []
    for r in range(replicas):
        cont = carry.get(r)
        atoms = pool[int(fresh[r])].copy() if cont is None else cont.atoms()
        atoms.calc = None
        atoms.info = {}
        frames.append(atoms)
        carried.append(cont)
    return frames, carried


def read_continuations(path: str | Path) -> dict[int, Continuation]:
    """replica -> its continuation, from a segment's continuation file. A file of an older
    ubmd (``.next.extxyz``: positions only, no velocities or bias windows) gives none: its
    replicas start again from start structures."""
    from ubmd.md.continuation import Continuation

    path = Path(path)
    legacy = path.with_name(path.name.replace(".next.json", ".next.extxyz"))
    if path.suffix == ".extxyz" or (not path.exists() and legacy.exists()):
        return {}
    return {int(r): Continuation.from_json(c) for r, c in read_json(path).items()}


def trajectory_step_cap(config: Any) -> int | None:
    """How many steps a continued trajectory runs before its replica starts afresh (None: no
    cap): ``streaming.max_trajectory_steps``, by default the iterations mode's ``n_steps``."""
    cap = config.streaming.max_trajectory_steps
    if cap is None:
        from ubmd.campaign.validate import explore_config

        return int(explore_config(config).n_steps)
    return None if cap == 0 else int(cap)


def going_on(ends: dict[int, Continuation], *, max_steps: int | None) -> dict[int, Continuation]:
    """The replicas that reached the segment's end (``ends``) and go on in the next segment:
    those whose trajectory is still shorter than ``max_steps`` (None: no cap)."""
    return {r: c for r, c in sorted(ends.items()) if max_steps is None or c.step < max_steps}


def select_stream_task(
    cfg: dict[str, Any],
    *,
    bundle: str,
    segments: list[str],
    versions: list[int],
    condition: str,
    batch_size: int,
    pick: int,
    out: str,
) -> dict[str, Any]:
    """Pick up to ``batch_size`` of the pooled candidates of ``segments`` (made by model
    ``versions``), conditioned on the structures of ``condition`` (labelled, or picked and being
    labelled). Features come from the newest model ``bundle`` for the pool and the condition
    alike, so candidates from older versions are compared on one footing."""
    from ubmd.campaign.validate import selection_settings
    from ubmd.md.writer import candidates_to_atoms, read_candidates
    from ubmd.store.batch import atoms_to_arrays

    config = as_config(cfg)
    device = resolve_device(config.device)
    frames: list[Any] = []
    for path, v in zip(segments, versions, strict=True):
        for atoms in candidates_to_atoms(read_candidates(path)):
            atoms.info["model_version"] = int(v)
            frames.append(atoms)
    cond = read_frames(condition)
    if not frames:
        write_frames(out, [])
        return {"candidates": 0, "selected": 0}
    pool_feats, pool_u = features_and_uncertainty(bundle, atoms_to_arrays(frames), device)
    cond_feats = np.zeros((0, pool_feats.shape[1]))
    if cond:
        cond_feats = features_and_uncertainty(bundle, atoms_to_arrays(cond), device)[0]
    chosen = pick_batch(
        pool_feats,
        [structure_key(a) for a in frames],
        condition_features=cond_feats,
        taken={structure_key(a) for a in cond},
        batch_size=batch_size,
        method=config.selection.method,
        uncertainties=pool_u,
        seed=task_seed(config, "stream-select", pick),
        settings=selection_settings(config),
    )
    picked = [_picked(frames[i], float(pool_u[i]), config.selection.method) for i in chosen]
    write_frames(out, picked)
    return {"candidates": len(frames), "selected": len(picked)}


def _picked(atoms: Any, uncertainty: float, method: str) -> Any:
    info = {k: atoms.info[k] for k in ORIGIN_FIELDS if k in atoms.info}
    info.update(
        selection_uncertainty=uncertainty,
        selection_method=method,
        # frame files keep provenance fields only: the explorer's model version goes in the
        # iteration field, which is what its label's store row will say
        iteration=int(atoms.info["model_version"]),
    )
    clean = atoms.copy()
    clean.calc = None
    clean.arrays = {k: v for k, v in clean.arrays.items() if k in ("numbers", "positions")}
    clean.info = info
    return clean


def pick_batch(
    pool_features: np.ndarray,
    pool_keys: list[bytes],
    *,
    condition_features: np.ndarray,
    taken: set[bytes],
    batch_size: int,
    method: str,
    uncertainties: np.ndarray | None = None,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
) -> np.ndarray:
    """Indices into the pool of up to ``batch_size`` picks. A candidate whose structure is in
    ``taken`` (labelled or being labelled) or repeats an earlier candidate is never picked; the
    rest are chosen by ``select_batch`` conditioned on ``condition_features``, so a batch does
    not chase the region an earlier batch, still being labelled, already covers."""
    import torch

    from ubmd.select import select_batch

    seen: set[bytes] = set(taken)
    keep = []
    for i, key in enumerate(pool_keys):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if not keep or batch_size < 1:
        return np.zeros(0, dtype=np.int64)
    keep_idx = np.asarray(keep)
    cond = np.asarray(condition_features, dtype=np.float64)
    result = select_batch(
        torch.as_tensor(np.asarray(pool_features, dtype=np.float64)[keep_idx]),
        min(batch_size, len(keep_idx)),
        method=method,
        train_features=torch.as_tensor(cond) if len(cond) else None,
        uncertainties=None if uncertainties is None else torch.as_tensor(uncertainties[keep_idx]),
        seed=seed,
        **(settings or {}),
    )
    return keep_idx[np.asarray(result.indices, dtype=np.int64)]


def explore_steps_per_label(config: Any) -> int:
    """Replica MD steps of fresh exploration a selection needs per label it picks: the
    ``streaming.explore_steps_per_label`` setting, or by default what the iterations mode
    explores per label (``explorers x replicas x n_steps / batch_size``)."""
    value = config.streaming.explore_steps_per_label
    if value is not None:
        return value
    from ubmd.campaign.validate import explore_config

    x = config.exploration
    n_steps = explore_config(config).n_steps
    return math.ceil(x.explorers * x.replicas * n_steps / config.selection.batch_size)


def segments_per_selection(config: Any, batch: int) -> int:
    """Fresh segments a selection of ``batch`` picks waits for. A segment offers
    ``replicas x segment_steps`` steps; a replica stopped early by a stop rule counts its whole
    segment, since it starts again in the next one, so the wait always ends."""
    per_segment = config.exploration.replicas * config.streaming.segment_steps
    return math.ceil(explore_steps_per_label(config) * batch / per_segment)


def condition_frames(store: Any, in_flight: list[Path]) -> list[Any]:
    """What a selection is conditioned on: every stored structure (ok or failed: either way it
    is labelled) and every pick of the selection files ``in_flight`` not stored yet."""
    stored = store.read_atoms()
    known = {structure_key(a) for a in stored}
    out = []
    for atoms in stored:
        atoms.calc = None
        atoms.info = {}
        out.append(atoms)
    for path in in_flight:
        for atoms in read_frames(path):
            if structure_key(atoms) not in known:
                atoms.info = {}
                out.append(atoms)
    return out
