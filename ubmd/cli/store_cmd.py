"""`ubmd store ...`: inspect, export, import and validate a campaign's structure store."""

from __future__ import annotations

from pathlib import Path

import typer

from ubmd.cli.errors import user_errors

store_app = typer.Typer(
    name="store",
    help=(
        "Work with a structure store: the HDF5 file (one per campaign) that holds every "
        "labeled structure with energy, forces, stress and where it came from.\n\n"
        "Examples:\n\n"
        "  ubmd store info campaign.h5\n\n"
        "  ubmd store export campaign.h5 train.extxyz --status ok\n\n"
        "  ubmd store import campaign.h5 initial.extxyz --labeler xtb\n\n"
        "  ubmd store validate campaign.h5"
    ),
    no_args_is_help=True,
)

STORE_ARG = typer.Argument(..., help="Path of the store file (HDF5, e.g. campaign.h5).")


@store_app.command("info")
def info_cmd(
    store: Path = STORE_ARG,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a store (counts, elements, schema version, size).

    Counts structures by status, iteration, labeler and sampler and atoms by element. Safe to run while a campaign is writing to the store.
    """
    with user_errors():
        from ubmd.store import StructureStore

        with StructureStore.open(store, mode="r") as st:
            summary = st.info()
        if as_json:
            import json

            typer.echo(json.dumps(summary, indent=2, default=str))
            return
        mib = summary["file_size_bytes"] / 2**20
        typer.echo(f"store          {summary['path']}  ({mib:.2f} MiB)")
        typer.echo(f"schema version {summary['schema_version']}  created {summary['created_at']}")
        typer.echo(f"structures     {summary['n_structures']}  atoms {summary['n_atoms']}")
        typer.echo(f"with stress    {summary['with_stress']}")
        for title, key in (
            ("status", "by_status"),
            ("iteration", "by_iteration"),
            ("labeler", "by_labeler"),
            ("sampler", "by_sampler"),
        ):
            items = ", ".join(f"{k if k != '' else '-'}: {v}" for k, v in summary[key].items())
            typer.echo(f"{title:<15}{items or '-'}")
        elements = ", ".join(f"{k} {v}" for k, v in summary["elements"].items())
        typer.echo(f"elements       {elements or '-'}  (atoms per element)")


@store_app.command("export")
def export_cmd(
    store: Path = STORE_ARG,
    out: Path = typer.Argument(
        ...,
        help="Output file; format from the suffix: .extxyz/.xyz (extended XYZ) or .db "
        "(ASE SQLite database, must not exist yet).",
    ),
    iteration: list[int] = typer.Option(
        None, "--iteration", "-i", help="Only these iterations (repeat the option for several)."
    ),
    status: str | None = typer.Option(None, "--status", help="Only 'ok' or 'failed' records."),
    sampler: str | None = typer.Option(
        None, "--sampler", help="Only structures from this sampler."
    ),
    labeler: str | None = typer.Option(
        None, "--labeler", help="Only structures from this labeler."
    ),
) -> None:
    """Write structures to extxyz or an ASE database.

    Labels (energy, forces, stress) and provenance are written at full precision, so importing the file again reproduces the store's numbers exactly.
    """
    with user_errors():
        from ubmd.store import StructureStore
        from ubmd.store.convert import write_structures

        with StructureStore.open(store, mode="r") as st:
            atoms = st.read_atoms(
                iteration=iteration or None, status=status, sampler=sampler, labeler=labeler
            )
            if not atoms:
                info = st.info()
        if not atoms:
            filters = {"iteration": iteration or None, "status": status, "sampler": sampler,
                       "labeler": labeler}  # fmt: skip
            asked = ", ".join(f"{k} {v!r}" for k, v in filters.items() if v is not None)
            have = "; ".join(
                f"{k}: {', '.join(map(str, info.get(key, {})))}"
                for k, key in (
                    ("iterations", "by_iteration"),
                    ("samplers", "by_sampler"),
                    ("labelers", "by_labeler"),
                )
            )
            raise ValueError(
                f"no structure in {store} matches {asked or 'the store'}; nothing written "
                f"(the store has {have or 'no structures'})"
            )
        write_structures(out, atoms)
        typer.echo(f"exported {len(atoms)} structures to {out}")


@store_app.command("import")
def import_cmd(
    store: Path = typer.Argument(..., help="Store to append to (created if missing)."),
    files: list[Path] = typer.Argument(
        ...,
        help="Structure files: .extxyz/.xyz, .db (ASE database), or anything ASE reads "
        "(CIF, POSCAR, OUTCAR, ...).",
    ),
    labeler: str | None = typer.Option(
        None, "--labeler", help="Record this labeler name (e.g. 'cp2k') for the imported data."
    ),
    iteration: int | None = typer.Option(
        None, "--iteration", help="Record this iteration (default: from the file, else -1)."
    ),
    allow_unlabeled: bool = typer.Option(
        False,
        "--allow-unlabeled",
        help="Keep structures without energy/forces (e.g. CIF, POSCAR) as status 'failed' "
        "with reason 'unlabeled import'; without this flag they are an error.",
    ),
) -> None:
    """Append structures from files to a store.

    Labels come from the file (extxyz/ASE db fields, or what ASE reads from code output); provenance fields found in the file are kept. Exact duplicates (same numbers, positions and cell as a stored structure) are reported and skipped.
    """
    with user_errors():
        import dataclasses

        from ubmd.inputs import read_checked
        from ubmd.store import Provenance, StructureStore

        batches = []
        for path in files:
            atoms_list = read_checked(path)
            prov = []
            for k, atoms in enumerate(atoms_list):
                p = Provenance.from_info(atoms.info)
                changes: dict[str, object] = {}
                if labeler is not None:
                    changes["labeler"] = labeler
                if iteration is not None:
                    changes["iteration"] = iteration
                res = getattr(atoms.calc, "results", None) or {}
                if p.status == "ok" and ("energy" not in res or "forces" not in res):
                    if not allow_unlabeled:
                        raise ValueError(
                            f"{path} structure {k} has no energy/forces; label it first or "
                            "pass --allow-unlabeled to keep it as status 'failed'"
                        )
                    changes.update(status="failed", reason=f"unlabeled import from {path.name}")
                prov.append(dataclasses.replace(p, **changes))
            batches.append((path, atoms_list, prov))
        with StructureStore.open(store, mode="a") as st:
            for path, atoms_list, prov in batches:
                result = st.append(atoms_list, prov)
                typer.echo(
                    f"{path}: {len(result.indices)} added, {len(result.duplicates)} duplicates"
                )
                for pos, row in result.duplicates[:20]:
                    typer.echo(f"  duplicate: structure {pos} of {path.name} = store row {row}")
                if len(result.duplicates) > 20:
                    typer.echo(f"  ... {len(result.duplicates) - 20} more duplicates")
            typer.echo(f"{store}: {len(st)} structures")


@store_app.command("validate")
def validate_cmd(store: Path = STORE_ARG) -> None:
    """Check every invariant of a store; exit status 1 on any violation.

    Checks committed counts, atom offsets, labels of 'ok' records, reasons of 'failed' ones, status values, duplicate and content hashes and the schema version.
    """
    with user_errors():
        from ubmd.store.validate import validate

        if not store.exists():
            raise FileNotFoundError(f"store {str(store)!r} does not exist")
        problems = validate(store)
        for p in problems:
            typer.echo(f"violation: {p}")
        if problems:
            typer.echo(f"{store}: {len(problems)} violation(s)", err=True)
            raise typer.Exit(1)
        typer.echo(f"{store}: valid")


def register(app: typer.Typer) -> None:
    """Add `ubmd store ...` to the main app."""
    app.add_typer(store_app, name="store")
