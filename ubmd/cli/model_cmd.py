"""`ubmd train` and `ubmd evaluate`: fit potentials and measure their errors."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ubmd.cli.errors import user_errors

_TRAIN_HELP = (
    "Train a potential (or an ensemble) on labelled structures and save it.\n\n"
    "DATA are extxyz files (any ASE-readable file with energies and forces) or ubmd stores "
    "(.h5; only structures with status 'ok' are used).\n\n"
    "Example: ubmd train data/ala2/ala2_xtb_300K.extxyz --out ala2.pt --epochs 100\n\n"
    "Settings (loss weights, learning rate, model size, ...) can come from a YAML file "
    "(--config) whose keys are the fields of ubmd.models.TrainConfig, e.g. "
    "'model_options: {n_features: 32}' or 'lr: 0.005'; command-line options override it. "
    "With --checkpoint-dir a killed run resumes when the same command is run again."
)

_EVAL_HELP = (
    "Print energy (per atom), force and stress MAE/RMSE of MODEL on labelled DATA.\n\n"
    "Example: ubmd evaluate ala2.pt test.extxyz --calibration"
)


def _load_config(config: Path | None, overrides: dict):
    from ubmd.models.train import TrainConfig

    values: dict = {}
    if config is not None:
        from ubmd.strict import load_yaml

        loaded = load_yaml(config, "config file") or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config} must hold a mapping of TrainConfig fields")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


def _check_writable(out: Path) -> None:
    """Fail before hours of training, not after: the model file must be writable."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a directory; give a file name (.pt)")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise PermissionError(f"--out {str(out)!r}: cannot write in {str(parent)!r}")


def train(
    data: list[Path] = typer.Argument(..., help="Training data: extxyz files or ubmd stores (.h5)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the model file (.pt)."),
    ensemble: int = typer.Option(1, "--ensemble", "-M", help="Number of ensemble members (1: single model)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum number of epochs."),
    model: str | None = typer.Option(None, "--model", help="Architecture: painn (built-in) or mace."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with TrainConfig fields."),
    valid: list[Path] | None = typer.Option(None, "--valid", help="Validation data (default: a random split of DATA)."),
    device: str | None = typer.Option(None, "--device", help="torch device, e.g. cpu or cuda (default: cuda if available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 or float64."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (member m uses seed+m)."),
    checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir", help="Write resumable checkpoints here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print per-epoch progress."),
) -> None:  # fmt: skip
    with user_errors():
        from rich.console import Console

        from ubmd.devices import check_device_here
        from ubmd.models import data as mdata
        from ubmd.models.base import save_model
        from ubmd.models.train import train_ensemble, train_model

        console = Console()
        cfg = _load_config(
            config, {"max_epochs": epochs, "model": model, "device": device, "dtype": dtype, "seed": seed}
        )  # fmt: skip
        if ensemble < 1:
            raise ValueError(f"--ensemble must be >= 1, got {ensemble}")
        check_device_here(cfg.device, where="device")
        _check_writable(out)
        arrays = mdata.labelled_arrays([str(p) for p in data])
        valid_data = mdata.labelled_arrays([str(p) for p in valid]) if valid else None
        console.print(
            f"training {cfg.model} on {len(arrays['n_atoms'])} structures "
            f"({'ensemble of ' + str(ensemble) if ensemble > 1 else 'single model'}, "
            f"device {cfg.resolved_device()}, {cfg.dtype})"
        )

        def log(record: dict) -> None:
            if not quiet:
                member = f"member {record['member']}  " if "member" in record else ""
                console.print(
                    f"{member}epoch {record['epoch']:4d}  train {record['train_loss']:.4g}  "
                    f"valid {record['valid_loss']:.4g}  F-RMSE {record['valid_forces_rmse']:.4f} eV/Å  "
                    f"lr {record['lr']:.2g}",
                    highlight=False,
                )

        if ensemble == 1:
            net, history = train_model(cfg, arrays, valid_data=valid_data, checkpoint_dir=checkpoint_dir, log=log)  # fmt: skip
            histories = [history]
        else:
            net, histories = train_ensemble(cfg, arrays, ensemble, valid_data=valid_data, checkpoint_dir=checkpoint_dir, log=log)  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        save_model(out, net, extra={"train_config": {k: str(v) for k, v in cfg.to_dict().items()}})
        best = [min(h, key=lambda r: r["valid_loss"]) for h in histories]
        for m, b in enumerate(best):
            console.print(
                f"member {m}: best epoch {b['epoch']}, valid force RMSE {b['valid_forces_rmse']:.4f} eV/Å, "
                f"energy RMSE {b['valid_energy_rmse'] * 1000:.2f} meV/atom",
                highlight=False,
            )
        console.print(f"wrote {out}")


def evaluate(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Model file written by `ubmd train`."),
    data: list[Path] = typer.Argument(..., help="Labelled test data: extxyz files or ubmd stores (.h5)."),
    calibration: bool = typer.Option(False, "--calibration", help="Also print the empirical coverage of the calibrated uncertainties stored with the model."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cpu)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Structures per evaluation batch."),
) -> None:  # fmt: skip
    with user_errors():
        from rich.console import Console
        from rich.table import Table

        from ubmd.devices import check_device_here
        from ubmd.models.base import load_model
        from ubmd.models.metrics import error_metrics

        check_device_here(device)
        net = load_model(model_path, device=device or "cpu")
        m = error_metrics(net, [str(p) for p in data], batch_size=batch_size)
        table = Table(
            title=f"{model_path.name} on {m['n_structures']} structures ({m['n_atoms']} atoms)"
        )
        for col in ("quantity", "MAE", "RMSE", "unit"):
            table.add_column(col, justify="left" if col in ("quantity", "unit") else "right")
        table.add_row("energy per atom", f"{m['energy_per_atom_mae'] * 1000:.3f}", f"{m['energy_per_atom_rmse'] * 1000:.3f}", "meV/atom")  # fmt: skip
        table.add_row("forces", f"{m['forces_mae']:.4f}", f"{m['forces_rmse']:.4f}", "eV/Å")
        if "stress_mae" in m:
            table.add_row(f"stress ({m['n_stress']} structures)", f"{m['stress_mae'] * 1000:.3f}", f"{m['stress_rmse'] * 1000:.3f}", "meV/Å³")  # fmt: skip
        Console().print(table)
        if calibration:
            _print_coverage(model_path, [str(p) for p in data], batch_size=batch_size, device=device or "cpu")  # fmt: skip


def _print_coverage(model_path: Path, data: list[str], *, batch_size: int, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ubmd.uncertainty.bundle import coverage, load_bundle

    net, estimator, calibration = load_bundle(model_path, device=device)
    if estimator is None or calibration is None:
        raise ValueError(
            f"{model_path} holds no uncertainty estimator/calibration; write one with "
            "ubmd.uncertainty.save_bundle (the campaign does this after calibrating)"
        )
    cov = coverage(net, estimator, calibration, data, batch_size=batch_size, device=device)
    table = Table(title=f"calibrated uncertainty, target coverage 1-α = {1 - cov['alpha']:.3f}")
    for col in ("uncertainty", "residual", "coverage", "samples"):
        table.add_column(col, justify="right" if col in ("coverage", "samples") else "left")
    if "coverage_total" in cov:
        table.add_row(
            "total", "|ΔE|/N", f"{cov['coverage_total']:.3f}", f"{int(cov['n_structures'])}"
        )
    if "coverage_atom" in cov:
        table.add_row("atom-based", "force RMSE per atom", f"{cov['coverage_atom']:.3f}", f"{int(cov['n_atoms'])}")  # fmt: skip
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add `ubmd train` and `ubmd evaluate` to the main app."""
    app.command("train", help=_TRAIN_HELP)(train)
    app.command("evaluate", help=_EVAL_HELP)(evaluate)
