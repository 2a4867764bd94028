"""`ubmd label`: reference single points for structures, written into a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ubmd.cli.errors import user_errors

if TYPE_CHECKING:  # heavy imports happen inside the command (`ubmd --help` stays fast)
    from ase import Atoms

    from ubmd.labelers.base import Labeler, LabelResult
    from ubmd.labelers.retry import RetryPolicy
    from ubmd.store import Provenance

_HELP = (
    "Label structures with a reference code and append them to a store.\n\n"
    "Every frame of every file (extxyz, xyz, ASE .db, CIF, POSCAR: anything ASE reads) gets one "
    "single point: energy, forces and, for periodic cells, stress. A failed calculation is "
    "retried with changed settings (--max-attempts); if it still fails it is stored with status "
    "'failed' and its reason, never silently dropped. Inputs and logs of every run stay under "
    "--workdir. Setup problems (missing executable, basis file, unsupported element) stop the "
    "command before anything runs.\n\n"
    "Labelers: cp2k, vasp, xtb (GFN2-xTB via tblite), emt (ASE, metals), amber (OpenMM; give "
    "prmtop in the settings).\n\n"
    "Examples:\n\n"
    "  ubmd label frames.extxyz --labeler xtb --store campaign.h5\n\n"
    "  ubmd label cand.extxyz --labeler cp2k --store campaign.h5 --settings cp2k.yaml "
    '--command "mpirun -np 2 cp2k.psmp"\n\n'
    "The settings file is a YAML mapping of the labeler's settings, for CP2K e.g. "
    "'cutoff_Ry: 400', 'basis_set: DZVP-MOLOPT-SR-GTH', 'omp_num_threads: 2', "
    "'overrides: {FORCE_EVAL: {DFT: {SCF: {MAX_SCF: 100}}}}'; for amber "
    "'prmtop: data/ala2/alanine-dipeptide.prmtop'. Unknown keys are rejected."
)


def label_cmd(
    structures: list[Path] = typer.Argument(
        ..., help="Structure files to label (every frame of each file is labeled)."
    ),
    labeler: str = typer.Option(..., "--labeler", "-l", help="cp2k, vasp, xtb, emt or amber."),
    store: Path = typer.Option(..., "--store", "-s", help="Store to append to (created if new)."),
    settings: Path | None = typer.Option(
        None, "--settings", help="YAML file with the labeler's settings."
    ),
    workdir: Path = typer.Option(
        Path("ubmd_label_runs"), "--workdir", help="Where each run's inputs and logs are kept."
    ),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, help="Tries per structure (changed settings after a failure)."
    ),
    command: str | None = typer.Option(
        None,
        "--command",
        help='Launch command of an external code, e.g. "mpirun -np 2 cp2k.psmp" or "srun vasp_std".',
    ),
    timeout_s: float | None = typer.Option(
        None, "--timeout-s", help="Wall-time limit of one run in seconds (default 3600)."
    ),
    iteration: int | None = typer.Option(
        None,
        "--iteration",
        help="Active-learning iteration to record (default: from the file or -1).",
    ),
) -> None:
    with user_errors():
        from ubmd.inputs import read_checked
        from ubmd.labelers.retry import RetryPolicy

        lab = _make_labeler(labeler, settings=settings, command=command, timeout_s=timeout_s)
        frames = [(path, atoms) for path in structures for atoms in read_checked(path)]
        for _, atoms in frames:  # every setup problem surfaces before the first run
            lab.check(atoms)
        policy = RetryPolicy(max_attempts=max_attempts)
        n_ok, n_failed, n_dup = _label_into_store(
            lab, frames, store=store, workdir=workdir, policy=policy, iteration=iteration
        )
        dup = f", {n_dup} already in the store (skipped)" if n_dup else ""
        typer.echo(
            f"labeled {len(frames)} structures: {n_ok} ok, {n_failed} failed{dup} -> {store}"
        )


def _make_labeler(
    name: str, *, settings: Path | None, command: str | None, timeout_s: float | None
) -> Labeler:
    """The labeler ``name`` with the settings file's settings and the command-line ones."""
    from ubmd.labelers import labeler_class

    cls = labeler_class(name)
    options = _read_settings(settings)
    if command is not None:
        if "command" not in cls.Settings.model_fields:
            raise ValueError(f"--command does not apply to the in-process labeler {name!r}")
        options["command"] = command
    if timeout_s is not None:
        options["timeout_s"] = timeout_s
    return cls(**options)


def _label_into_store(
    lab: Labeler,
    frames: list[tuple[Path, Atoms]],
    *,
    store: Path,
    workdir: Path,
    policy: RetryPolicy,
    iteration: int | None,
) -> tuple[int, int, int]:
    """Label every frame (one line each) and append it to ``store``; (ok, failed, duplicates)."""
    from ubmd.labelers.retry import label_with_retries
    from ubmd.store import StructureStore

    n_ok = n_failed = n_dup = 0
    with StructureStore.open(store, mode="a") as st:
        for i, (path, atoms) in enumerate(frames):
            result = label_with_retries(
                lab, atoms, workdir=workdir / f"{lab.name}_{i:05d}", policy=policy
            )
            prov = _label_provenance(atoms, result, labeler=lab.name, iteration=iteration)
            appended = st.append([result.to_atoms()], provenance=[prov])
            n_dup += len(appended.duplicates)
            if result.ok:
                n_ok += 1
                msg = f"ok     E = {result.energy:.6f} eV"
            else:
                n_failed += 1
                msg = f"failed {result.reason}"
            typer.echo(
                f"[{i + 1}/{len(frames)}] {path.name}: {msg} "
                f"({result.wall_time_s:.2f} s, {result.attempts} attempt(s))"
            )
    return n_ok, n_failed, n_dup


def _label_provenance(
    atoms: Atoms, result: LabelResult, *, labeler: str, iteration: int | None
) -> Provenance:
    """The frame's own provenance with the label's outcome (and --iteration, if given)."""
    import dataclasses

    from ubmd.store import Provenance

    prov = Provenance.from_info(atoms.info)
    return dataclasses.replace(
        prov,
        labeler=labeler,
        labeler_hash=result.settings_hash,
        status=result.status,
        reason=result.reason,
        wall_time_s=result.wall_time_s,
        iteration=prov.iteration if iteration is None else iteration,
    )


def _read_settings(path: Path | None) -> dict:
    if path is None:
        return {}
    from ubmd.strict import load_yaml

    data = load_yaml(path, "settings file") or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"settings file {path} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("label", help=_HELP)(label_cmd)
