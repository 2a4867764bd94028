"""Everything about a campaign that can be checked before a single task is submitted.

Library sections are built with the component's own config class (unknown keys and wrong
types are errors naming the key and the nearest valid one), files must exist and parse, the
labeler must be installed and able to handle every element of every system.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ubmd.campaign.config import CampaignConfig, parse_campaign
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
    """Start structures of every system (name -> list of Atoms), read and checked."""
    from ubmd.inputs import read_checked

    return {
        system.name: read_checked(
            config.path(system.structure),
            index=system.index,
            what=f"systems[{system.name}].structure",
        )
        for system in config.systems
    }


def check_data_files(config: CampaignConfig) -> int:
    """Labelled start data and test sets: readable, labelled, finite, before anything runs.
    Returns the number of labelled start structures."""
    from ubmd.inputs import read_checked

    files = [(f"initial_data.labelled[{k}]", p) for k, p in enumerate(config.initial_data.labelled)]
    if config.evaluation.test_set:
        files.append(("evaluation.test_set", config.evaluation.test_set))
    files += [(f"evaluation.test_sets.{n}", p) for n, p in config.evaluation.test_sets.items()]
    n_labelled = 0
    for where, path in files:
        frames = read_checked(config.path(path), what=where, labelled=True)
        n_labelled += len(frames) if where.startswith("initial_data") else 0
    return n_labelled


# The first calibration needs a held-out set of at least one structure, and the split holds
# out a fraction only from this many labels on (campaign.learning.training_split).
MIN_INITIAL_LABELS = 10


def check_initial_count(config: CampaignConfig, n_labelled: int) -> None:
    """Enough initial labels to train on and to hold a calibration set out of."""
    n0 = config.initial_data.random_displacements * len(config.systems) + n_labelled
    n_cal = max(1, round(config.uncertainty.calibration.fraction * n0))
    if n0 < MIN_INITIAL_LABELS or n0 - n_cal < 1:
        raise ConfigError(
            f"initial_data: {n0} initial structure(s) (random_displacements "
            f"{config.initial_data.random_displacements} x {len(config.systems)} system(s) + "
            f"{n_labelled} labelled) are too few to train on and hold out a calibration set "
            f"(uncertainty.calibration.fraction {config.uncertainty.calibration.fraction}); "
            f"give at least {MIN_INITIAL_LABELS}"
        )


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
    selection_settings(config)
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
    check_initial_count(config, check_data_files(config))
    check_directory(config)
    return built


def selection_settings(config: CampaignConfig) -> dict[str, Any]:
    """``selection.settings``, checked: the keyword arguments a campaign gives ``select_batch``."""
    import dataclasses

    from ubmd.select.batch import SelectionSettings

    built = build(SelectionSettings, config.selection.settings, where="selection.settings")
    return dataclasses.asdict(built)


def check_directory(config: CampaignConfig) -> None:
    """The campaign directory is a directory (or can become one) before anything is made."""
    path = Path(config.campaign_dir)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"campaign directory {str(path)!r}: {str(parent)!r} is a file, not a directory"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(
                    f"campaign directory {str(path)!r}: {str(parent)!r} is not writable"
                )
            break


def _as_today(stored: Any, base_dir: str) -> Any:
    """A stored campaign file read by today's model, so that an option added since (at its
    default) does not count as a change; stored as it is where today's model rejects it."""
    try:
        return parse_campaign(stored, base_dir=base_dir).to_yaml_dict()
    except ConfigError:
        return stored


def prepare_directory(config: CampaignConfig) -> CampaignLayout:
    """Create the campaign directory and store, or check a resumed one matches this config."""
    from ubmd.store import StructureStore

    layout = CampaignLayout(config.campaign_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    mine = config.to_yaml_dict()
    if layout.config.exists():
        theirs = _as_today(yaml.safe_load(layout.config.read_text()), config.base_dir)
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
