"""Held-out alanine dipeptide test sets labelled with CP2K (DFT), with the campaign's settings.

The geometries of two GFN2-xTB test sets are relabelled, unchanged, with ubmd's CP2K labeler and
the settings in ``cp2k_settings.yaml`` (PBE-D3(BJ), DZVP-MOLOPT-SR-GTH, GTH pseudopotentials,
non-periodic wavelet box; the file says why each value): the same file a CP2K campaign on ala2
uses (``ubmd label --settings`` or ``labeler.settings`` of a campaign), so that model errors on
these sets are measured against exactly the campaign's reference.

- the first ``--n-300k`` (100) frames of ``ala2_xtb_300K.extxyz`` (300 K MD)
  -> ``ala2_cp2k_300K.extxyz``
- one frame (the first) of each of the 144 (phi, psi) grid points of ``ala2_xtb_plane.extxyz``
  (600 K, restrained on a 12 x 12 grid over the whole Ramachandran plane; see
  make_plane_testset.py), or with ``--plane-points 96`` two thirds of them spread over the
  grid -> ``ala2_cp2k_plane.extxyz``

Each frame goes through ``label_with_retries`` with the retry policy of a campaign (3 attempts:
the settings, then more SCF steps with half the mixing, then the other SCF solver: the same
converged SCF). A frame still failing after that is left out and counted. Energies are in eV and
forces in eV/Å, written with ``ubmd.store.convert.write_extxyz`` like the other test sets (keys
``energy``, ``forces``, ``temperature_K``, ``md_step`` for 300 K frames, plus ``labeler`` and
``labeler_hash``, the hash of the settings). Inputs and logs of failed frames stay under
``--workdir``; those of labelled frames are deleted.

Run (about 25 s of one core per frame, i.e. about 100 CPU-minutes for the 244 frames):

    OMP_NUM_THREADS=1 python data/ala2/make_cp2k_testset.py

Each finished label is kept in ``<workdir>/<set>.checkpoint.extxyz`` at once: after a kill, the
same command carries on from there. The reduced sets (60 + 96 frames, 65 CPU-minutes), one
process per set on 2 cores:

    OMP_NUM_THREADS=1 python data/ala2/make_cp2k_testset.py --n-300k 60 --sets 300K &
    OMP_NUM_THREADS=1 python data/ala2/make_cp2k_testset.py --plane-points 96 --sets plane
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_300K = 100
GRID = 12  # make_plane_testset.py: 12 x 12 (phi, psi) grid points, 2 frames each, in order


def plane_indices(n_points: int, n_frames: int) -> list[int]:
    """Frames of ``ala2_xtb_plane.extxyz`` to label: the first frame of each grid point (all
    144), or for 96 the points with (i_phi + i_psi) % 3 != 2 (every row and column of the
    grid keeps 8 of its 12 points: no phi or psi column is left out)."""
    if n_frames != 2 * GRID * GRID:
        raise ValueError(f"expected {2 * GRID * GRID} frames in the plane set, got {n_frames}")
    points = [(a, b) for a in range(GRID) for b in range(GRID)]
    if n_points == 96:
        points = [(a, b) for a, b in points if (a + b) % 3 != 2]
    elif n_points != GRID * GRID:
        raise ValueError(f"--plane-points must be 144 or 96, got {n_points}")
    return [2 * (a * GRID + b) for a, b in points]


def _cpu_children_s() -> float:
    """User + system CPU seconds of finished child processes (the CP2K runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_checkpoint(path: Path) -> dict[int, object]:
    """Frames labelled by an earlier, interrupted run: source index -> labelled Atoms."""
    from ase.io import read

    if not path.exists():
        return {}
    return {int(a.info["source_index"]): a for a in read(path, index=":")}


def label_frames(
    labeler,
    frames,
    *,
    workdir: Path,
    checkpoint: Path,
    tag: str,
    keep_info: tuple[str, ...],
    temperature_K: float,
):
    """(failures, CPU seconds per labelled frame) for ``frames``; each labelled frame is
    appended to ``checkpoint`` as soon as it is done, so a killed run loses at most one."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from ubmd.labelers import RetryPolicy, label_with_retries

    policy = RetryPolicy(max_attempts=3)  # the default of a campaign's labeler spec
    failed, cpu = [], []
    for k, atoms in frames:
        atoms = atoms.copy()
        # temperature of the MD that made the frame; source_index: the frame of the xTB set
        info = {"temperature_K": temperature_K, "source_index": k}
        info.update({key: atoms.info[key] for key in keep_info if key in atoms.info})
        atoms.calc = None
        atoms.info = {}
        run_dir = workdir / f"{tag}_{k:04d}"
        c0, t0 = _cpu_children_s(), time.perf_counter()
        result = label_with_retries(labeler, atoms, workdir=run_dir, policy=policy)
        dc, dt = _cpu_children_s() - c0, time.perf_counter() - t0
        if not result.ok:
            failed.append((k, result.reason))
            print(
                f"{tag} frame {k}: failed after {result.attempts} attempts ({result.reason}); "
                f"left out, logs in {run_dir}",
                flush=True,
            )
            continue
        labelled = atoms.copy()
        # energy and forces only (no free_energy), as in the other ala2 test sets
        labelled.calc = SinglePointCalculator(labelled, energy=result.energy, forces=result.forces)
        labelled.info = {**info, "labeler": result.labeler, "labeler_hash": result.settings_hash}
        write(checkpoint, labelled, format="extxyz", append=True)
        cpu.append(dc)
        shutil.rmtree(run_dir, ignore_errors=True)
        print(
            f"{tag} frame {k}: E = {result.energy:.4f} eV, attempts {result.attempts}, "
            f"CPU {dc:.1f} s, wall {dt:.1f} s",
            flush=True,
        )
    return failed, cpu


def main() -> None:
    from ase.io import read

    from ubmd.labelers import make_labeler
    from ubmd.store.convert import write_extxyz
    from ubmd.strict import load_yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, default=HERE / "cp2k_settings.yaml")
    parser.add_argument("--n-300k", type=int, default=N_300K, help="first frames of the 300 K set")
    parser.add_argument(
        "--plane-points",
        type=int,
        default=GRID * GRID,
        choices=(GRID * GRID, 96),
        help="grid points of the plane set to label (one frame each)",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=("300K", "plane"),
        default=["300K", "plane"],
        help="which sets to label (two processes can label one each)",
    )
    parser.add_argument("--workdir", type=Path, default=HERE / ".cp2k_work")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the extxyz files go")
    args = parser.parse_args()

    settings = load_yaml(args.settings, "CP2K settings file") or {}
    labeler = make_labeler("cp2k", **settings)
    sets = [
        (
            "300K",
            "ala2_xtb_300K.extxyz",
            "ala2_cp2k_300K.extxyz",
            lambda n: list(range(min(args.n_300k, n))),
            ("md_step",),
            300.0,
        ),
        (
            "plane",
            "ala2_xtb_plane.extxyz",
            "ala2_cp2k_plane.extxyz",
            lambda n: plane_indices(args.plane_points, n),
            (),
            600.0,
        ),
    ]
    t_start = time.perf_counter()
    all_cpu = []
    for tag, source, target, which, keep, temperature_K in sets:
        if tag not in args.sets:
            continue
        frames = read(HERE / source, index=":")
        picked = [(k, frames[k]) for k in which(len(frames))]
        for _, atoms in picked:  # setup problems (executable, basis file) stop before any run
            labeler.check(atoms)
        checkpoint = args.workdir / f"{tag}.checkpoint.extxyz"
        args.workdir.mkdir(parents=True, exist_ok=True)
        done = load_checkpoint(checkpoint)
        if done:
            print(f"{tag}: {len(done)} frames labelled by an earlier run, kept", flush=True)
        failed, cpu = label_frames(
            labeler,
            [(k, atoms) for k, atoms in picked if k not in done],
            workdir=args.workdir,
            checkpoint=checkpoint,
            tag=tag,
            keep_info=keep,
            temperature_K=temperature_K,
        )
        done = load_checkpoint(checkpoint)
        out = [done[k] for k, _ in picked if k in done]
        for atoms in out:
            del atoms.info["source_index"]
        write_extxyz(args.out_dir / target, out)
        checkpoint.unlink()
        all_cpu += cpu
        mean_cpu = statistics.mean(cpu) if cpu else float("nan")
        print(
            f"{target}: {len(out)} of {len(picked)} frames of {source} labelled, "
            f"{len(failed)} failed {[k for k, _ in failed]}; CP2K CPU per label "
            f"{mean_cpu:.1f} s (mean)",
            flush=True,
        )
    if all_cpu:
        print(
            f"all: {len(all_cpu)} labels, CP2K CPU {sum(all_cpu) / 60:.1f} min in total, "
            f"{statistics.mean(all_cpu):.1f} s mean, {statistics.median(all_cpu):.1f} s median "
            f"per label; wall {(time.perf_counter() - t_start) / 60:.1f} min"
        )
    if args.workdir.is_dir() and not any(args.workdir.iterdir()):
        args.workdir.rmdir()


if __name__ == "__main__":
    main()
