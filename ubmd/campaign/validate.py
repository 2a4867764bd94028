"""Everything about a campaign that can be checked before a single task is submitted.

Library sections are built with the component's own config class (unknown keys and wrong
types are errors naming the key and the nearest valid one), files must exist and parse, the
labeler must be installed and able to handle every element of every system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.layout import CampaignLayout, atomic_path
from ubmd.strict import ConfigError, build

# A campaign's training defaults differ from a one-off `ubmd train`: its data are small and
# grow from odd structures, and it already holds out a calibration split. Early stopping on a
# further 10 % (a handful of structures) kept weights from the first epochs whenever
# that handful held a hot structure (best epoch 7 of 57); a cosine schedule over a fixed budget, validated on the
# training data, was better on both held-out ala2 sets for every seed (docs/training.md).
CAMPAIGN_TRAINING = {"lr_schedule": "cosine", "valid_fraction": 0.0, "max_epochs": 300}
CAMPAIGN_FINE_TUNING = {"max_epochs": 100}  # lr as from scratch: a cosine restart


def train_config(
    config: CampaignConfig, *, seed: int | None = None, fine_tuning: bool = False
) -> Any:
    """The TrainConfig of a campaign's training runs (``fine_tuning``: of warm-started ones)."""
    from ubmd.models.train import TrainConfig

    data = {
        **CAMPAIGN_TRAINING,
        "seed": config.seed,
        "device": None if config.device == "auto" else config.device,
        "dtype": config.dtype,
        "model": {"builtin": "painn", "mace": "mace"}[config.model.kind],
        "model_options": dict(config.model.hyperparameters),
    }
    data.update(config.model.training)
    where = "model.training"
    if fine_tuning:
        data.update({**CAMPAIGN_FINE_TUNING, **config.model.fine_tuning})
        where = "model.fine_tuning"
    data.setdefault("patience", data["max_epochs"])  # no early stop on the training data
    if seed is not None:
        data["seed"] = seed
    return build(TrainConfig, data, where=where)


def uncertainty_config(config: CampaignConfig) -> Any:
    from ubmd.uncertainty import UncertaintyConfig

    return build(
        UncertaintyConfig,
        {"seed": config.seed, **config.uncertainty.settings},
        where="uncertainty.settings",
    )


def explore_config(config: CampaignConfig, *, seed: int | None = None) -> Any:
    from ubmd.md.explore import ExploreConfig

    data = {"seed": config.seed, "device": config.device, "dtype": config.dtype}
    data.update(config.exploration.settings)
    if seed is not None:
        data["seed"] = seed
    return build(ExploreConfig, data, where="exploration.settings")


def make_campaign_labeler(config: CampaignConfig) -> Any:
    from ubmd.labelers import make_labeler

    try:
        return make_labeler(config.labeler.name, **config.labeler_settings())
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"labeler: {exc}") from None


def read_structures(config: CampaignConfig) -> dict[str, list[Any]]:
    """Start structures of every system (name -> list of Atoms), with clear errors."""
    import ase.io

    out = {}
    for system in config.systems:
        path = config.path(system.structure)
        if not path.is_file():
            raise FileNotFoundError(
                f"systems[{system.name}].structure: file {str(path)!r} not found"
            )
        try:
            if path.suffix in (".h5", ".hdf5"):
                from ubmd.store import StructureStore

                with StructureStore.open(path, mode="r") as store:
                    frames = store.read_atoms(status="ok")
            else:
                frames = ase.io.read(path, index=system.index)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError(
                f"systems[{system.name}].structure: cannot read {str(path)!r}: {exc}"
            ) from None
        frames = frames if isinstance(frames, list) else [frames]
        if not frames:
            raise ConfigError(
                f"systems[{system.name}].structure: {str(path)!r} holds no structures"
            )
        out[system.name] = frames
    return out


def validate_campaign(config: CampaignConfig) -> dict[str, Any]:
    """Raise on anything wrong; return what was built (configs, structures, labeler)."""
    from ubmd.select import METHODS

    built: dict[str, Any] = {
        "train": train_config(config),
        "fine_tuning": train_config(config, fine_tuning=True),
        "uncertainty": uncertainty_config(config),
        "explore": explore_config(config),
        "structures": read_structures(config),
    }
    species = sorted(
        {int(z) for frames in built["structures"].values() for a in frames for z in a.numbers}
    )
    try:  # architecture options are checked by building the (untrained) model once
        from ubmd.models.factory import build_model

        build_model(built["train"].model, species, options=built["train"].model_options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.hyperparameters: {exc}") from None
    if config.selection.method not in METHODS:
        raise ConfigError(
            f"selection.method: unknown method {config.selection.method!r} (known: {', '.join(METHODS)})"
        )
    if config.uncertainty.settings.get("method") == "ensemble" and config.model.ensemble_size < 2:
        raise ConfigError("uncertainty.settings.method 'ensemble' needs model.ensemble_size >= 2")
    labeler = make_campaign_labeler(config)
    for name, frames in built["structures"].items():
        try:
            labeler.check(frames[0])
        except Exception as exc:
            raise ConfigError(
                f"labeler {config.labeler.name!r} cannot label system {name!r}: {exc}"
            ) from None
    built["labeler"] = labeler
    for path in config.initial_data.labelled:
        if not config.path(path).is_file():
            raise FileNotFoundError(
                f"initial_data.labelled: file {str(config.path(path))!r} not found"
            )
    test_files = {"evaluation.test_set": config.evaluation.test_set} | {
        f"evaluation.test_sets.{name}": path for name, path in config.evaluation.test_sets.items()
    }
    for where, path in test_files.items():
        if path and not config.path(path).is_file():
            raise FileNotFoundError(f"{where}: file {str(config.path(path))!r} not found")
    return built


def prepare_directory(config: CampaignConfig) -> CampaignLayout:
    """Create the campaign directory and store, or check a resumed one matches this config."""
    from ubmd.store import StructureStore

    layout = CampaignLayout(config.campaign_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    mine = config.to_yaml_dict()
    if layout.config.exists():
        theirs = yaml.safe_load(layout.config.read_text())
        # stopping criteria may change on resume (run longer) and so may what the reports
        # measure; anything else changes the science
        free = ("stopping", "evaluation")
        diff = sorted(
            k for k in set(mine) | set(theirs) if k not in free and mine.get(k) != theirs.get(k)
        )
        if diff:
            raise ConfigError(
                f"campaign directory {str(layout.root)!r} was started with a different campaign "
                f"(sections differing: {', '.join(diff)}); use a new directory or the original file"
            )
    with atomic_path(layout.config, ".yaml") as tmp:
        tmp.write_text(yaml.safe_dump(mine, sort_keys=False))
    if not layout.store.exists():
        StructureStore.create(layout.store, campaign_config=mine).close()
    return layout


def campaign_dir_of(path: str | Path) -> CampaignLayout:
    layout = CampaignLayout(Path(path).resolve())
    if not layout.config.exists():
        raise FileNotFoundError(
            f"{str(path)!r} is not a campaign directory (no campaign.yaml in it)"
        )
    return layout
