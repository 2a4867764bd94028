"""The campaign file (YAML): strictly validated, reproducible from its seed.

Sections owned by the campaign are pydantic models with unknown keys rejected; the sections
that configure a library component (training, uncertainty, exploration, labeler settings) are
checked against that component's own config class when the campaign is validated
(:func:`ubmd.campaign.validate.validate_campaign`), so there is one definition of each option.
Relative paths are resolved against the campaign file's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ubmd.strict import ConfigError, build, load_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemSpec(_Strict):
    """A system to explore: a name and its start structure(s)."""

    name: str
    structure: str  # extxyz / xyz / CIF / POSCAR / a ubmd store (.h5): every frame is a start
    index: str = ":"  # which frames of the file (ASE index syntax)


class InitialData(_Strict):
    """The first training set: random displacements of the start structures and/or labels on file."""

    random_displacements: int = Field(32, ge=0)  # per system
    displacement_A: float = Field(
        0.05, gt=0
    )  # std of the Gaussian displacement of every coordinate
    labelled: list[str] = []  # extxyz or ubmd stores holding labelled structures to start from


class ModelSpec(_Strict):
    kind: Literal["builtin", "mace"] = "builtin"
    ensemble_size: int = Field(1, ge=1)
    hyperparameters: dict[str, Any] = {}  # architecture keyword arguments
    training: dict[str, Any] = {}  # ubmd.models.train.TrainConfig fields
    # Each iteration fine-tunes the previous iteration's member (each member from its own) with
    # `training` updated by `fine_tuning`; from scratch in iteration 1, in every iteration that
    # is a multiple of `retrain_every` (0: never again) and always when warm_start is false.
    warm_start: bool = True
    fine_tuning: dict[str, Any] = {}  # TrainConfig fields for warm-started runs
    retrain_every: int = Field(0, ge=0)
    # leave labels this far above the lowest of their composition (eV/atom) out of training and
    # calibration: bonds an explorer broke, which cost the model accuracy where it matters
    max_energy_above_min_eV_atom: float | None = Field(None, gt=0)


class CalibrationSpec(_Strict):
    alpha: float = Field(0.05, gt=0, lt=1)
    fraction: float = Field(0.1, gt=0, lt=1)  # of labelled data held out, re-split every iteration


class UncertaintySpec(_Strict):
    settings: dict[str, Any] = {}  # ubmd.uncertainty config fields (method, features, sigma, ...)
    calibration: CalibrationSpec = CalibrationSpec()


class ExplorationSpec(_Strict):
    explorers: int = Field(4, ge=1)  # parallel explorer tasks per iteration
    replicas: int = Field(8, ge=1)  # batched replicas inside each explorer
    start_from: Literal["systems", "store"] = "systems"  # store: recent labelled structures too
    # with start_from: store, start only from labels at most this far above the lowest of their
    # composition (eV/atom); None: the training limit (model.max_energy_above_min_eV_atom)
    start_max_energy_above_min_eV_atom: float | None = Field(None, gt=0)
    compile: bool = (
        False  # torch.compile the model in each explorer (long runs; ubmd.models.compiled)
    )
    neighbour_skin_A: float = Field(1.0, ge=0)  # Verlet skin of the explorers' neighbour lists
    settings: dict[str, Any] = {}  # ubmd.md explore config fields (sampler, temperature_K, ...)


class SelectionSpec(_Strict):
    method: str = "max_det"
    batch_size: int = Field(8, ge=1)
    settings: dict[str, Any] = {}  # extra keyword arguments of ubmd.select.select_batch


class LabelerSpec(_Strict):
    name: str = "xtb"
    settings: dict[str, Any] = {}
    max_attempts: int = Field(3, ge=1)


class StoppingSpec(_Strict):
    max_iterations: int = Field(8, ge=1)
    label_budget: int = Field(
        512, ge=1
    )  # labels gathered by active learning (initial data excluded)
    target_force_rmse_eV_A: float | None = None  # stop once the held-out force RMSE is below this
    stop_when_no_candidates: bool = True


class StreamingSpec(_Strict):
    """``mode: streaming``: explorers, selection, labels and training overlap (no barrier).

    Explorers run in segments of ``segment_steps`` MD steps, each with the newest published
    model; a selection runs once ``select_pool_factor`` x ``selection.batch_size`` candidates
    are pooled; labels start as soon as they are picked, at most ``max_labels_in_flight`` at
    once; a new model version is trained once ``train_every_labels`` new ok labels are stored.
    A selection also waits for ``explore_steps_per_label`` x its batch of replica MD steps
    offered to fresh segments (None: as much as the iterations mode explores per label,
    ``explorers x replicas x n_steps / batch_size``; 0: no minimum), so that labels that run
    first on shared cores do not starve the exploration behind them.
    A replica goes on with the trajectory its last segment left (positions, velocities, step
    count, bias windows) until a stop rule ends it or its trajectory has run
    ``max_trajectory_steps`` steps; then it starts afresh from a start structure (None: the
    iterations mode's ``n_steps`` from ``exploration.settings``, so both modes explore
    trajectories of one length; 0: no cap).
    Candidates from a model more than ``max_staleness`` versions behind the newest are dropped.
    ``max_picks_per_model`` caps the labels picked while one version is the newest (None: no
    cap); once they are picked, selections wait for the next version and its candidates, and
    that version is trained as soon as the last of those labels is in, as in the iterations
    mode, where each model picks one batch.
    ``stopping.max_iterations`` caps the number of model versions (docs/streaming.md).
    """

    segment_steps: int = Field(200, ge=1)
    select_pool_factor: float = Field(2.0, ge=1.0)
    explore_steps_per_label: int | None = Field(None, ge=0)
    # a replica's trajectory, continued across segments, starts afresh after this many steps
    # (None: the exploration's n_steps; 0: it goes on until a stop rule ends it)
    max_trajectory_steps: int | None = Field(None, ge=0)
    max_labels_in_flight: int = Field(8, ge=1)
    train_every_labels: int = Field(8, ge=1)
    max_staleness: int = Field(1, ge=0)
    # labels picked while one model version is the newest (None: as many as labels flow)
    max_picks_per_model: int | None = Field(None, ge=1)
    wall_time_limit_s: float | None = Field(None, gt=0)  # of one `ubmd run` (driver) process
    reports: bool = True  # a report (held-out errors) per model version; needed by the target


class EvaluationSpec(_Strict):
    test_set: str | None = None  # labelled extxyz/store of held-out frames for the learning curve
    test_sets: dict[str, str] = {}  # more named held-out sets (e.g. beyond the 300 K basin)
    ramachandran: bool = False  # alanine dipeptide: dihedral coverage of labelled structures


class CampaignConfig(_Strict):
    name: str
    seed: int = 0
    directory: str  # the campaign directory (store, models, candidates, reports)
    device: str = "auto"  # "auto" (a GPU when visible), "cpu", "cuda", "cuda:1", ...
    dtype: Literal["float32", "float64"] = "float32"
    systems: list[SystemSpec] = Field(min_length=1)
    initial_data: InitialData = InitialData()
    model: ModelSpec = ModelSpec()
    uncertainty: UncertaintySpec = UncertaintySpec()
    exploration: ExplorationSpec = ExplorationSpec()
    selection: SelectionSpec = SelectionSpec()
    labeler: LabelerSpec = LabelerSpec()
    stopping: StoppingSpec = StoppingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    # iterations: train -> explore -> select -> label per iteration; streaming: all at once
    mode: Literal["iterations", "streaming"] = "iterations"
    streaming: StreamingSpec = StreamingSpec()
    base_dir: str = "."  # folder of the campaign file; relative paths are resolved against it

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(
                f"name {value!r} must be letters, digits, '_', '.' or '-' (starting with a "
                "letter or digit): it names files and jobs"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from ubmd.devices import check_device_name

        return check_device_name(value)

    @model_validator(mode="after")
    def _names(self) -> CampaignConfig:
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise ValueError(f"system names must be unique, got {names}")
        return self

    def path(self, p: str | os.PathLike[str]) -> Path:
        """A path from the campaign file, resolved against its folder."""
        p = Path(os.path.expandvars(os.path.expanduser(str(p))))
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def labeler_settings(self) -> dict[str, Any]:
        """Labeler settings with relative file paths (e.g. an Amber ``prmtop``) resolved
        against the campaign file's folder, so tasks find them from any working directory."""
        out = {}
        for key, value in self.labeler.settings.items():
            if (
                isinstance(value, str)
                and value
                and not os.path.isabs(value)
                and self.path(value).exists()
            ):
                value = str(self.path(value))
            out[key] = value
        return out

    @property
    def campaign_dir(self) -> Path:
        return self.path(self.directory)

    def to_yaml_dict(self) -> dict[str, Any]:
        # the default mode and an untouched streaming section are left out, so an iterations
        # campaign's campaign.yaml reads as it did before `mode` existed
        exclude = {"base_dir"}
        if self.mode == "iterations":
            exclude.add("mode")
        if self.streaming == StreamingSpec():
            exclude.add("streaming")
        return self.model_dump(mode="json", exclude=exclude)


def parse_campaign(
    data: Any, *, base_dir: str | os.PathLike[str] = ".", where: str = "campaign"
) -> CampaignConfig:
    """Validate a campaign mapping (as read from YAML): every section strictly (unknown keys
    name the nearest valid one, wrong values are named), relative paths against ``base_dir``."""
    return build(CampaignConfig, data, where, fixed={"base_dir": str(Path(base_dir).resolve())})


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], *, where: str) -> None:
    """Set dotted keys (``{"stopping.max_iterations": 20}``) in a campaign mapping, in place."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: cannot set {dotted}: '{key}' is not a section")
        node[leaf] = value


def parse_overrides(items: list[str], *, where: str) -> dict[str, Any]:
    """``["stopping.max_iterations=20", ...]`` as overrides, each value read as YAML."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE, e.g. seed=1")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} {item!r}: the value is not YAML ({exc})") from None
    return out


def load_campaign(
    path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None
) -> CampaignConfig:
    """Read and validate a campaign YAML file; ``overrides`` (dotted key -> value, e.g.
    ``{"stopping.max_iterations": 20}``) replace values of the file before validation, so they
    are checked exactly like the file."""
    path = Path(path)
    data = load_yaml(path, "campaign file")
    if isinstance(data, dict):
        apply_overrides(data, overrides or {}, where=str(path))
    return parse_campaign(data, base_dir=path.parent, where=str(path))
