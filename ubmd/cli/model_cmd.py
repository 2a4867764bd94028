"""`ubmd train` and `ubmd evaluate`: fit potentials and measure their errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ubmd.cli.errors import user_errors

if TYPE_CHECKING:  # heavy imports happen inside the commands (`ubmd --help` stays fast)
    from rich.console import Console

    from ubmd.models.train import TrainConfig
    from ubmd.uncertainty import UncertaintyConfig

_TRAIN_HELP = (
    "Train a potential (or an ensemble) on labelled structures and save it.\n\n"
    "DATA are extxyz files (any ASE-readable file with energies and forces) or ubmd stores "
    "(.h5; only structures with status 'ok' are used).\n\n"
    "Example: ubmd train data/ala2/ala2_xtb_300K.extxyz --out ala2.pt --epochs 100\n\n"
    "Settings (loss weights, learning rate, model size, ...) can come from a YAML file "
    "(--config) whose keys are the fields of ubmd.models.TrainConfig, e.g. "
    "'model_options: {n_features: 32}' or 'lr: 0.005'; command-line options override it. "
    "With --checkpoint-dir a killed run resumes when the same command is run again.\n\n"
    "With --uncertainty METHOD the model file also holds a fitted uncertainty estimator and its "
    "conformal calibration, so `ubmd explore` can bias with it and stop on calibrated "
    "thresholds: --calibration-fraction of DATA (default 0.2) is held out of training to "
    "calibrate on (or --calibration-data gives the calibration set), and the uncertainty is "
    "fitted on the rest. Check the calibration on fresh data with `ubmd evaluate MODEL TEST "
    "--calibration`.\n\n"
    "Example: ubmd train data/ala2/ala2_xtb_300K.extxyz --out ala2.pt --uncertainty posterior"
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


def _need_calibration_points(alpha: float) -> int:
    """Fewest calibration structures for split-conformal calibration at ``alpha``."""
    import math

    return math.ceil(1.0 / alpha - 1.0 - 1e-12)


def _uncertainty_plan(
    method: str | None,
    features: str | None,
    calibration_fraction: float | None,
    calibration_data: list[Path] | None,
    alpha: float | None,
    ensemble: int,
):
    """Check the uncertainty options before any training; (UncertaintyConfig or None, alpha)."""
    if method is None:
        given = [
            name
            for name, value in (
                ("--features", features),
                ("--calibration-fraction", calibration_fraction),
                ("--calibration-data", calibration_data),
                ("--alpha", alpha),
            )
            if value is not None and value != []
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} only apply with --uncertainty METHOD "
                "(e.g. --uncertainty posterior)"
            )
        return None, None
    from ubmd.uncertainty import UncertaintyConfig

    ucfg = UncertaintyConfig(method=method, features=features or "last_layer")
    if method == "ensemble" and ensemble < 2:
        raise ValueError(
            "--uncertainty ensemble needs an ensemble: add -M 2 (or more members), or use "
            "--uncertainty posterior for a single model"
        )
    if calibration_data and calibration_fraction is not None:
        raise ValueError("give either --calibration-data or --calibration-fraction, not both")
    if calibration_fraction is not None and not 0 < calibration_fraction < 1:
        raise ValueError(f"--calibration-fraction must lie in (0, 1), got {calibration_fraction}")
    alpha = 0.05 if alpha is None else alpha
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must lie in (0, 1), got {alpha}")
    return ucfg, alpha


def _calibration_split(arrays: dict, fraction: float, alpha: float, seed: int):
    """(training arrays, calibration arrays): ``fraction`` of the structures held out."""
    from ubmd.models import data as mdata
    from ubmd.models.train import split_indices

    n = len(arrays["n_atoms"])
    need = _need_calibration_points(alpha)
    train_idx, cal_idx = split_indices(n, fraction, seed)
    if len(cal_idx) < need or len(train_idx) < 2:
        raise ValueError(
            f"--calibration-fraction {fraction} of {n} structures holds out {len(cal_idx)} for "
            f"calibration; conformal calibration at --alpha {alpha} needs at least {need} "
            f"(and training at least 2): raise --calibration-fraction, give "
            f"--calibration-data, raise --alpha, or add data"
        )
    return mdata.select(arrays, train_idx), mdata.select(arrays, cal_idx)


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
    uncertainty: str | None = typer.Option(None, "--uncertainty", help="Also fit this uncertainty and calibrate it: posterior, distance, gmm, or ensemble (with -M 2 or more). The file is then a bundle `ubmd explore` biases with."),
    features: str | None = typer.Option(None, "--features", help="With --uncertainty: last_layer (default) or sketched_gradient features."),
    calibration_fraction: float | None = typer.Option(None, "--calibration-fraction", help="With --uncertainty: share of DATA held out of training to calibrate on (default 0.2)."),
    calibration_data: list[Path] | None = typer.Option(None, "--calibration-data", help="With --uncertainty: labelled calibration data (then all of DATA trains)."),
    alpha: float | None = typer.Option(None, "--alpha", help="With --uncertainty: calibrated intervals cover 1-α of fresh data (default 0.05)."),
) -> None:  # fmt: skip
    with user_errors():
        from rich.console import Console

        from ubmd.devices import check_device_here
        from ubmd.models import data as mdata

        console = Console()
        cfg = _load_config(
            config, {"max_epochs": epochs, "model": model, "device": device, "dtype": dtype, "seed": seed}
        )  # fmt: skip
        if ensemble < 1:
            raise ValueError(f"--ensemble must be >= 1, got {ensemble}")
        ucfg, alpha = _uncertainty_plan(
            uncertainty, features, calibration_fraction, calibration_data, alpha, ensemble
        )
        check_device_here(cfg.device, where="device")
        _check_writable(out)
        arrays = mdata.labelled_arrays([str(p) for p in data])
        valid_data = mdata.labelled_arrays([str(p) for p in valid]) if valid else None
        cal_arrays = None
        if ucfg is not None:
            arrays, cal_arrays = _calibration_arrays(
                arrays, calibration_data, calibration_fraction, alpha=alpha, seed=cfg.seed
            )
        console.print(_training_line(cfg, arrays, cal_arrays, ensemble=ensemble,
                                     from_calibration_data=bool(calibration_data)))  # fmt: skip
        log = _epoch_logger(console, quiet=quiet)
        net, histories = _train_net(cfg, arrays, ensemble=ensemble, valid_data=valid_data,
                                    checkpoint_dir=checkpoint_dir, log=log)  # fmt: skip
        fitted = _save_trained(out, net, cfg, ucfg=ucfg, arrays=arrays, cal_arrays=cal_arrays,
                               alpha=alpha)  # fmt: skip
        _print_best(console, histories)
        if fitted is not None:
            console.print(fitted, highlight=False, markup=False)
        console.print(f"wrote {out}")


def _calibration_arrays(
    arrays: dict,
    calibration_data: list[Path] | None,
    calibration_fraction: float | None,
    *,
    alpha: float,
    seed: int,
) -> tuple[dict, dict]:
    """(training arrays, calibration arrays): --calibration-data's structures (then all of
    DATA trains), or --calibration-fraction of DATA held out (default 0.2)."""
    from ubmd.models import data as mdata

    if not calibration_data:
        fraction = 0.2 if calibration_fraction is None else calibration_fraction
        return _calibration_split(arrays, fraction, alpha, seed)
    cal_arrays = mdata.labelled_arrays([str(p) for p in calibration_data])
    need = _need_calibration_points(alpha)
    if len(cal_arrays["n_atoms"]) < need:
        raise ValueError(
            f"--calibration-data holds {len(cal_arrays['n_atoms'])} structures; "
            f"conformal calibration at --alpha {alpha} needs at least {need}"
        )
    return arrays, cal_arrays


def _training_line(
    cfg: TrainConfig,
    arrays: dict,
    cal_arrays: dict | None,
    *,
    ensemble: int,
    from_calibration_data: bool,
) -> str:
    """What is about to be trained, on how much data, where."""
    held = ""
    if cal_arrays is not None:
        n_cal = len(cal_arrays["n_atoms"])
        held = (
            f", calibrating on the {n_cal} of --calibration-data"
            if from_calibration_data
            else f", {n_cal} held out to calibrate"
        )
    return (
        f"training {cfg.model} on {len(arrays['n_atoms'])} structures{held} "
        f"({'ensemble of ' + str(ensemble) if ensemble > 1 else 'single model'}, "
        f"device {cfg.resolved_device()}, {cfg.dtype})"
    )


def _epoch_logger(console: Console, *, quiet: bool) -> Callable[[dict], None]:
    """The per-epoch progress line (nothing with --quiet)."""

    def log(record: dict) -> None:
        if not quiet:
            member = f"member {record['member']}  " if "member" in record else ""
            console.print(
                f"{member}epoch {record['epoch']:4d}  train {record['train_loss']:.4g}  "
                f"valid {record['valid_loss']:.4g}  F-RMSE {record['valid_forces_rmse']:.4f} eV/Å  "
                f"lr {record['lr']:.2g}",
                highlight=False,
            )

    return log


def _train_net(
    cfg: TrainConfig,
    arrays: dict,
    *,
    ensemble: int,
    valid_data: dict | None,
    checkpoint_dir: Path | None,
    log: Callable[[dict], None],
) -> tuple[Any, list[list[dict]]]:
    """(model or Ensemble, per-member histories)."""
    from ubmd.models.train import train_ensemble, train_model

    if ensemble == 1:
        net, history = train_model(cfg, arrays, valid_data=valid_data, checkpoint_dir=checkpoint_dir, log=log)  # fmt: skip
        return net, [history]
    return train_ensemble(cfg, arrays, ensemble, valid_data=valid_data, checkpoint_dir=checkpoint_dir, log=log)  # fmt: skip


def _save_trained(
    out: Path,
    net: Any,
    cfg: TrainConfig,
    *,
    ucfg: UncertaintyConfig | None,
    arrays: dict,
    cal_arrays: dict | None,
    alpha: float | None,
) -> str | None:
    """Write the model file (with --uncertainty a bundle); the uncertainty's summary, if any."""
    from ubmd.models import save_model

    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"train_config": {k: str(v) for k, v in cfg.to_dict().items()}}
    if ucfg is None:
        save_model(out, net, extra=extra)
        return None
    return _fit_and_save(out, net, ucfg, arrays, cal_arrays, alpha, extra)


def _print_best(console: Console, histories: list[list[dict]]) -> None:
    """Each member's best epoch and its validation errors."""
    best = [min(h, key=lambda r: r["valid_loss"]) for h in histories]
    for m, b in enumerate(best):
        console.print(
            f"member {m}: best epoch {b['epoch']}, valid force RMSE {b['valid_forces_rmse']:.4f} eV/Å, "
            f"energy RMSE {b['valid_energy_rmse'] * 1000:.2f} meV/atom",
            highlight=False,
        )


def _fit_and_save(out: Path, net, ucfg, train_arrays, cal_arrays, alpha, extra) -> str:
    """Fit the uncertainty on the training structures, calibrate it on the held-out ones and
    write model + estimator + calibration as one bundle (the campaign's format); a summary."""
    from ubmd.uncertainty import calibrate_model, fit_uncertainty, save_bundle

    estimator = fit_uncertainty(net, train_arrays, ucfg)
    calibration = calibrate_model(net, estimator, cal_arrays, alpha=alpha)
    save_bundle(out, net, estimator, calibration, extra=extra)
    factors = ", ".join(
        f"{name} {value:.4g}"
        for name, value in (("c_total", calibration.c_total), ("c_atom", calibration.c_atom))
        if value is not None
    )
    return (
        f"uncertainty: {ucfg.method} on {ucfg.features} features, fitted on "
        f"{len(train_arrays['n_atoms'])} structures, calibrated on "
        f"{len(cal_arrays['n_atoms'])} structures it was not trained on, at alpha {alpha} "
        f"({factors}); "
        f"check it on fresh data with `ubmd evaluate {out} TEST --calibration`"
    )


def evaluate(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Model file written by `ubmd train`."),
    data: list[Path] = typer.Argument(..., help="Labelled test data: extxyz files or ubmd stores (.h5)."),
    calibration: bool = typer.Option(False, "--calibration", help="Also print the empirical coverage of the calibrated uncertainties stored with the model."),
    device: str = typer.Option("auto", "--device", help="torch device: auto (a GPU if torch sees one, else cpu), cpu, cuda, cuda:N."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Structures per evaluation batch."),
) -> None:  # fmt: skip
    with user_errors():
        from rich.console import Console
        from rich.table import Table

        from ubmd.devices import check_device_here, resolve_device
        from ubmd.models import load_model
        from ubmd.models.metrics import error_metrics

        device = resolve_device(check_device_here(device))
        net = load_model(model_path, device=device)
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
        console = Console()
        console.print(table)
        console.print(
            "mean energy error (predicted - label): "
            f"{m['energy_per_atom_mean_error'] * 1000:+.3f} meV/atom"
        )
        if calibration:
            _print_coverage(model_path, [str(p) for p in data], batch_size=batch_size, device=device)  # fmt: skip


def _print_coverage(model_path: Path, data: list[str], *, batch_size: int, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ubmd.uncertainty.bundle import coverage, load_bundle

    net, estimator, calibration = load_bundle(model_path, device=device)
    if estimator is None or calibration is None:
        raise ValueError(
            f"{model_path} holds no uncertainty estimator/calibration; train one that does "
            f"with `ubmd train DATA --uncertainty posterior --out {model_path}`"
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
