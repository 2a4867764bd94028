"""`ubmd train` / `ubmd evaluate` end to end on a few xTB-labelled alanine dipeptide frames."""

from __future__ import annotations

from ase.io import read, write
from model_helpers import ALA2
from typer.testing import CliRunner

from ubmd.cli import app, get_app
from ubmd.models import load_model

runner = CliRunner()


def text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_train_then_evaluate(tmp_path):
    get_app()
    frames = read(ALA2, index=":12")
    write(tmp_path / "train.extxyz", frames[:8])
    write(tmp_path / "test.extxyz", frames[8:])
    (tmp_path / "train.yaml").write_text(
        "model_options: {n_features: 8, n_basis: 6, readout_hidden: 4}\nbatch_size: 4\n"
    )
    out = tmp_path / "m.pt"
    args = ["train", str(tmp_path / "train.extxyz"), "--out", str(out), "--epochs", "2"]
    result = runner.invoke(
        app, [*args, "--config", str(tmp_path / "train.yaml"), "--ensemble", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "member 1  epoch    1" in result.output
    model = load_model(out)
    assert len(model.members) == 2 and model.members[0].hyperparameters()["n_features"] == 8

    result = runner.invoke(app, ["evaluate", str(out), str(tmp_path / "test.extxyz")])
    assert result.exit_code == 0, result.output
    assert "energy per atom" in result.output and "forces" in result.output
    assert "4 structures" in result.output


def test_cli_errors_are_one_line(tmp_path):
    get_app()
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    frames = read(ALA2, index=":2")
    write(tmp_path / "d.extxyz", frames)
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "d.extxyz"), "--out", str(tmp_path / "m.pt"),
         "--config", str(tmp_path / "bad.yaml")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "unknown key 'learning_rate' in training config" in text(result)
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "d.extxyz"), str(tmp_path / "d.extxyz")]
    )
    assert result.exit_code == 2 and "is not a ubmd model file" in text(result)
    result = runner.invoke(app, ["train", str(tmp_path / "nope.extxyz"), "--out", "x.pt"])
    assert result.exit_code == 2 and "does not exist" in text(result)


def test_evaluate_prints_calibrated_coverage(tmp_path):
    from ubmd.models import TrainConfig, train_model
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty
    from ubmd.uncertainty.bundle import calibrate_model, save_bundle

    get_app()
    frames = read(ALA2, index=":60")
    config = TrainConfig(
        model_options={"n_features": 8, "n_basis": 6, "readout_hidden": 4}, max_epochs=1,
        device="cpu",
    )  # fmt: skip
    model, _ = train_model(config, frames[:10])
    estimator = fit_uncertainty(model, frames[:10], UncertaintyConfig())
    calibration = calibrate_model(model, estimator, frames[10:30], alpha=0.1)
    save_bundle(tmp_path / "b.pt", model, estimator, calibration)
    write(tmp_path / "fresh.extxyz", frames[30:60])
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "b.pt"), str(tmp_path / "fresh.extxyz"), "--calibration"]
    )
    assert result.exit_code == 0, result.output
    out = text(result)
    assert "target coverage 1-α = 0.900" in out and "atom-based" in out and "total" in out
    # a model file without calibration: a clear error
    from ubmd.models import save_model

    save_model(tmp_path / "plain.pt", model)
    args = ["evaluate", str(tmp_path / "plain.pt"), str(tmp_path / "fresh.extxyz"), "--calibration"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "holds no uncertainty estimator/calibration" in text(result)
