"""`ubmd select` and `ubmd design`: batch selection and the offline optimal-design report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # heavy imports happen inside the commands (`ubmd --help` stays fast)
    from ubmd.select import SelectionResult

_POOL_HELP = (
    "Candidate file: .npz with arrays 'features' (N, K) and optional 'uncertainty' (N,), "
    "or .h5/.hdf5 with those datasets at the file root."
)
_TRAIN_HELP = "Training-set features (same formats; only 'features' is read)."


def select(
    pool: Path = typer.Argument(..., help=_POOL_HELP),
    method: str = typer.Option(
        "max_det",
        "--method",
        "-m",
        help="random, max_unc, max_dist, max_det, lcmd or kmeans_pp (BMDAL definitions).",
    ),
    batch_size: int = typer.Option(
        8, "--batch-size", "-b", min=1, help="How many candidates to pick."
    ),
    train: Path | None = typer.Option(None, "--train", "-t", help=_TRAIN_HELP),
    kernel: str = typer.Option(
        "linear", "--kernel", help="'linear' (scaled features) or 'posterior' (needs --train)."
    ),
    sigma: float = typer.Option(1e-2, "--sigma", help="GP noise σ of the posterior and max_det."),
    condition_on_train: bool = typer.Option(
        True,
        "--condition-on-train/--no-condition-on-train",
        help="Treat training points as already picked (BMDAL 'TP' mode).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for random and kmeans_pp."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="torch device: auto (a GPU if torch sees one, else cpu), cpu, cuda, cuda:N.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the picks as JSON here."),
    structures: Path | None = typer.Option(
        None,
        "--structures",
        help="Also write the picked frames (with where they came from) to this .extxyz file, "
        "ready for `ubmd label`; POOL must be a candidate file of `ubmd explore`.",
    ),
) -> None:
    """Pick a batch of candidates to label.

    Example: ubmd select pool.npz --method max_det --batch-size 8 --train train.npz --out picks.json
    """
    from ubmd.cli.errors import user_errors

    with user_errors():
        from ubmd.devices import check_device_here, resolve_device
        from ubmd.select import select_batch
        from ubmd.select.io import load_features

        device = resolve_device(check_device_here(device))
        frames = _candidate_frames(pool, structures) if structures is not None else None
        feats, unc = load_features(pool)
        train_feats = load_features(train)[0] if train is not None else None
        res = select_batch(
            feats, batch_size, method=method, train_features=train_feats, uncertainties=unc,
            kernel=kernel, sigma=sigma, condition_on_train=condition_on_train, seed=seed,
            device=device,
        )  # fmt: skip
        _print_picks(res, n_candidates=feats.shape[0])
        if out is not None:
            _write_picks(out, res, pool=pool, train=train, sigma=sigma,
                         condition_on_train=condition_on_train, seed=seed)  # fmt: skip
        if frames is not None:
            _write_picked_frames(structures, [frames[int(i)] for i in res.indices])


def _print_picks(res: SelectionResult, *, n_candidates: int) -> None:
    """The picks as a table: rank, pool index, the method's score."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{res.method} picks ({len(res)} of {n_candidates} candidates)")
    table.add_column("#", justify="right")
    table.add_column("index", justify="right")
    table.add_column("score", justify="right")
    for rank, (i, sc) in enumerate(zip(res.indices, res.scores, strict=True)):
        table.add_row(str(rank), str(int(i)), f"{sc:.4g}")
    Console().print(table)


def _write_picks(
    out: Path,
    res: SelectionResult,
    *,
    pool: Path,
    train: Path | None,
    sigma: float,
    condition_on_train: bool,
    seed: int,
) -> None:
    """The picks and how they were made, as JSON."""
    from rich.console import Console

    doc = {
        "pool": str(pool),
        "train": None if train is None else str(train),
        "method": res.method,
        "kernel": res.kernel,
        "sigma": sigma,
        "condition_on_train": condition_on_train,
        "seed": seed,
        "indices": [int(i) for i in res.indices],
        "scores": [None if s != s else float(s) for s in res.scores],  # NaN -> null
        "n_duplicates_excluded": res.n_duplicates_excluded,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    Console(stderr=True).print(f"wrote {out}")


def _write_picked_frames(structures: Path, picked: list) -> None:
    """The picked frames as extxyz, ready for `ubmd label`."""
    from rich.console import Console

    from ubmd.store.convert import write_structures

    write_structures(structures, picked)
    Console(stderr=True).print(f"wrote {len(picked)} structures to {structures}")


def _candidate_frames(pool: Path, structures: Path) -> list:
    """The pool's frames as Atoms carrying their provenance (checked before selecting)."""
    from ubmd.md.writer import KIND, candidates_to_atoms, read_candidates
    from ubmd.store import Provenance

    if structures.suffix.lower() not in (".extxyz", ".xyz"):
        raise ValueError(f"--structures {str(structures)!r}: write an .extxyz file")
    if structures.exists():
        raise FileExistsError(f"--structures {str(structures)!r} exists; choose a new file name")
    if pool.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"--structures needs a candidate file of `ubmd explore` (.h5), not {pool}")
    try:
        data = read_candidates(pool)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"--structures: {pool} is not a `ubmd explore` {KIND} file: {exc}"
        ) from None
    frames = []
    for atoms in candidates_to_atoms(data):
        plain = atoms.__class__(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        # provenance fields only: per-frame model outputs are not labels
        plain.info.update(Provenance.from_info(atoms.info).to_info(skip_defaults=True))
        frames.append(plain)
    return frames


def design(
    pool: Path = typer.Argument(..., help=_POOL_HELP),
    train: Path | None = typer.Option(None, "--train", "-t", help=_TRAIN_HELP),
    lam: float = typer.Option(1e-4, "--lam", help="Ridge λ of the design matrix ΦᵀΦ + λI."),
    threshold: float = typer.Option(
        1e-3, "--threshold", help="Gain below which a candidate adds no information."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, help="Also report the log-det gain of a D-optimal batch."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Save a PNG: sorted gains and the training eigenvalue spectrum."
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="torch device: auto (a GPU if torch sees one, else cpu), cpu, cuda, cuda:N.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the report (with per-candidate gains) as JSON here."
    ),
) -> None:
    """Offline optimal-design report: how much would labeling this pool add?

    Prints the expected log-det gain of the candidates, the effective rank and condition number
    of the training design, and whether the pool adds information at all.
    Example: ubmd design pool.npz --train train.npz --plot design.png
    """
    from ubmd.cli.errors import user_errors

    with user_errors():
        from rich.console import Console
        from rich.table import Table

        from ubmd.devices import check_device_here, resolve_device
        from ubmd.select import design_report, plot_design_report
        from ubmd.select.io import load_features

        device = resolve_device(check_device_here(device))
        if plot is not None:
            _check_plot_file(plot)
        feats, _ = load_features(pool)
        train_feats = load_features(train)[0] if train is not None else None
        rep = design_report(
            feats,
            train_features=train_feats,
            lam=lam,
            gain_threshold=threshold,
            batch_size=batch_size,
            device=device,
        )
        table = Table(title=f"design report: {pool.name}")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for name, value in rep.rows():
            table.add_row(name, value)
        Console().print(table)
        if plot is not None:
            plot_design_report(rep, str(plot))
            Console(stderr=True).print(f"wrote {plot}")
        if out is not None:
            doc = {name: value for name, value in rep.rows()}
            doc.update(
                adds_information=rep.adds_information,
                gains=[float(g) for g in rep.gains],
                novelty=[float(v) for v in rep.novelty],
                eigenvalues=[float(e) for e in rep.eigenvalues],
            )
            out.write_text(json.dumps(doc, indent=2) + "\n")
            Console(stderr=True).print(f"wrote {out}")


def _check_plot_file(plot: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if plot.suffix.lstrip(".").lower() not in formats:
        raise ValueError(
            f"--plot {str(plot)!r}: matplotlib cannot write {plot.suffix or 'a file without a suffix'!r} "
            f"files; use one of {', '.join('.' + f for f in sorted(formats))}"
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("select")(select)
    app.command("design")(design)
