"""Campaign files: strict validation with the nearest valid key, relative paths, defaults."""

from pathlib import Path

import pytest
import yaml

from ubmd.campaign.config import load_campaign, parse_campaign
from ubmd.strict import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _minimal() -> dict:
    return {
        "name": "t",
        "directory": "run",
        "systems": [{"name": "ala2", "structure": "ala2.extxyz"}],
    }


def test_minimal_defaults_and_relative_paths(tmp_path):
    cfg = parse_campaign(_minimal(), base_dir=tmp_path)
    assert cfg.campaign_dir == (tmp_path / "run").resolve()
    assert cfg.path("ala2.extxyz") == (tmp_path / "ala2.extxyz").resolve()
    assert cfg.selection.method == "max_det"
    assert cfg.model.ensemble_size == 1


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(sead=1), "unknown key 'sead'.*did you mean 'seed'"),
        (lambda d: d.update(selection={"batch_sise": 8}), "batch_sise.*batch_size"),
        (lambda d: d.update(stopping={"max_iteration": 3}), "max_iteration.*max_iterations"),
        (lambda d: d["systems"][0].update(structur="x"), "structur.*structure"),
        (lambda d: d.update(uncertainty={"calibration": {"alpah": 0.1}}), "alpah.*alpha"),
    ],
)
def test_misspelt_keys_name_the_nearest_valid_key(tmp_path, mutate, pattern):
    data = _minimal()
    mutate(data)
    with pytest.raises(ConfigError, match=pattern):
        parse_campaign(data, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(seed="zero"), "seed"),
        (lambda d: d.update(selection={"batch_size": 0}), "batch_size"),
        (lambda d: d.update(systems=[]), "systems"),
        (lambda d: d.update(dtype="float16"), "dtype"),
        (lambda d: d.update(uncertainty={"calibration": {"alpha": 1.5}}), "alpha"),
        (lambda d: d.update(device="tpu"), r"device 'tpu' is not a device ubmd runs on \(accepted"),
        (lambda d: d.update(device="cuda:x"), "device 'cuda:x'"),
    ],
)
def test_wrong_types_and_ranges_are_named(tmp_path, mutate, pattern):
    data = _minimal()
    mutate(data)
    with pytest.raises(ConfigError, match=pattern):
        parse_campaign(data, base_dir=tmp_path)


def test_load_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_campaign(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_campaign(bad)


def test_devices_accepted():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse_campaign({**_minimal(), "device": device}).device == device


def test_shipped_workflows_parse():
    files = sorted((ROOT / "workflows").glob("*/campaign*.yaml"))
    assert files, "no shipped workflows"
    for f in files:
        cfg = load_campaign(f)
        for system in cfg.systems:
            assert cfg.path(system.structure).is_file(), (f, system.structure)
        assert yaml.safe_load(f.read_text())["name"] == cfg.name


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_minimal()))
    cfg = load_campaign(path, overrides={"stopping.max_iterations": 20, "directory": "other"})
    assert cfg.stopping.max_iterations == 20 and cfg.campaign_dir == tmp_path / "other"
    with pytest.raises(ConfigError, match=r"max_iterations.*\(got -1\)"):
        load_campaign(path, overrides={"stopping.max_iterations": -1})


def test_command_line_override_fails_before_anything_is_created(tmp_path):
    from typer.testing import CliRunner

    from ubmd.cli import app, get_app

    data = {**_minimal(), "directory": str(tmp_path / "run")}
    data["systems"][0]["structure"] = str(ROOT / "data/ala2/alanine-dipeptide.extxyz")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    get_app()
    res = CliRunner().invoke(app, ["run", str(path), "--site", "local", "--max-iterations", "-1"])
    assert res.exit_code == 2, res.output
    assert "(got -1)" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"stop": {"max_atomic_uncertainy": 2.0}}, r"exploration\.settings\.stop; did you mean "
                                                   "'max_atomic_uncertainty'"),
        ({"barostat": {"mode": "isotropic", "tau_ps": 1}}, r"'tau_ps' in exploration\.settings\."
                                                          "barostat"),
        ({"uncertainty_cv": {"heigth_eV": 0.1}}, r"'heigth_eV'.*did you mean 'height_eV'"),
    ],
)  # fmt: skip
def test_misspelt_keys_deep_in_library_sections_are_errors(tmp_path, settings, pattern):
    from ubmd.campaign.validate import explore_config

    cfg = parse_campaign({**_minimal(), "exploration": {"settings": settings}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        explore_config(cfg)


def test_overrides_read_values_as_yaml_and_reject_what_is_not_key_value():
    from ubmd.campaign.config import parse_overrides
    from ubmd.strict import ConfigError

    got = parse_overrides(
        ["stopping.max_iterations=21", "model.fine_tuning={max_epochs: 100}", "name=a=b"],
        where="--set",
    )
    assert got == {
        "stopping.max_iterations": 21,
        "model.fine_tuning": {"max_epochs": 100},
        "name": "a=b",
    }
    for bad in ("seed", "=3"):
        with pytest.raises(ConfigError, match=f"--set '{bad}': expected KEY=VALUE"):
            parse_overrides([bad], where="--set")
    with pytest.raises(ConfigError, match="not YAML"):
        parse_overrides(["seed=[1"], where="--set")
