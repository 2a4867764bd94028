"""`ubmd explore`: a one-off (biased) MD exploration writing candidate frames to HDF5."""

from __future__ import annotations

from pathlib import Path

import typer

from ubmd.cli.errors import user_errors

_HELP = """Run uncertainty-biased MD from start STRUCTURES with MODEL; write candidates to --out.

MODEL is a ubmd model file (with its uncertainty estimator and, for calibrated stop thresholds, its calibration), or `emt` for ASE's EMT potential (metals; unbiased `--sampler md` only).

STRUCTURES are files ASE can read (extxyz, cif, POSCAR, pdb, ...); by default the last frame of each file is a start structure (`--frames :` takes every frame).

Replicas run together in one batch; a replica that stops (uncertainty above the threshold, atoms too close, NaN, force blow-up, --steps reached) is replaced by the next start structure. A candidate frame is written every --record-every steps and at each stop.

`--sampler adversarial` runs adversarial attacks instead of MD (Schwalbe-Koda et al. 2021): every start structure is displaced by Adam steps (--steps of them, --attack-lr-A) that maximise u·exp(-E/kT)/Q, with Q from the energies of --training-data.

Example: `ubmd explore model.pt ala2.xyz --steps 20000 --replicas 8 --out cands.h5 --species-weight H=0 --max-atomic-uncertainty 1.5`
"""


def _parse_weights(items: list[str]) -> dict[int, float]:
    from ase.data import atomic_numbers

    out = {}
    for item in items:
        sym, sep, val = item.partition("=")
        if not sep or sym.strip() not in atomic_numbers:
            raise ValueError(f"--species-weight {item!r}: use SYMBOL=WEIGHT, e.g. H=0")
        try:
            out[atomic_numbers[sym.strip()]] = float(val)
        except ValueError:
            raise ValueError(f"--species-weight {item!r}: weight {val!r} is not a number") from None
    return out


def _read_structures(paths: list[Path], frames: str) -> list:
    from ubmd.inputs import read_checked

    return [a for p in paths for a in read_checked(p, index=frames, what="start structure file")]


def _load_model(spec: str, device: str, *, compile: bool, skin_A: float):
    if spec.lower() == "emt":
        if compile:
            raise ValueError("--compile applies to ubmd model files, not to `emt`")
        from ase.calculators.emt import EMT

        from ubmd.md.forcefield import ASEForceField

        return ASEForceField(EMT)
    from ubmd.md.adapter import UBMDModel

    return UBMDModel.from_file(spec, device=device, compile=compile, skin_A=skin_A)


def explore(
    model: str = typer.Argument(..., help="ubmd model file, or `emt`."),
    structures: list[Path] = typer.Argument(..., help="Start structure file(s)."),
    out: Path = typer.Option(Path("candidates.h5"), "--out", "-o", help="Candidate HDF5 file (appended to if it exists)."),
    steps: int = typer.Option(10_000, "--steps", help="MD steps per replica."),
    temperature: float = typer.Option(300.0, "--temperature", help="Temperature, K."),
    temperature_end: float | None = typer.Option(None, "--temperature-end", help="Ramp linearly to this temperature (K) over --steps."),
    replicas: int = typer.Option(8, "--replicas", "-r", help="Replicas run together in one batch."),
    sampler: str = typer.Option("biased_md", "--sampler", help="biased_md | md | uncertainty_cv | adversarial."),
    training_data: Path | None = typer.Option(None, "--training-data", help="adversarial: labelled training structures (extxyz or store) whose energies give Q."),
    attack_lr: float = typer.Option(0.01, "--attack-lr-A", help="adversarial: Adam step size, Å."),
    npt: bool = typer.Option(False, "--npt", help="NPT (stochastic cell rescaling, full cell) instead of NVT."),
    isotropic: bool = typer.Option(False, "--isotropic", help="With --npt: scale the cell isotropically."),
    pressure_gpa: float = typer.Option(0.0, "--pressure-GPa", help="NPT target pressure, GPa."),
    tau_rel: float = typer.Option(0.25, "--tau-rel", help="Relative force-bias strength."),
    tau_stress_rel: float = typer.Option(0.05, "--tau-stress-rel", help="Relative stress-bias strength (NPT)."),
    window: int = typer.Option(100, "--window", help="Steps in the adaptive-strength window (unbiased until full)."),
    species_weight: list[str] = typer.Option([], "--species-weight", help="Bias weight per element, e.g. H=0 (repeatable)."),
    hill_height: float = typer.Option(0.05, "--hill-height-eV", help="uncertainty_cv: hill height, eV."),
    hill_width: float = typer.Option(0.01, "--hill-width", help="uncertainty_cv: hill width, in units of the CV (calibrated uncertainty)."),
    hill_pace: int = typer.Option(50, "--hill-pace", help="uncertainty_cv: steps between hills."),
    timestep_fs: float = typer.Option(0.5, "--timestep-fs", help="Timestep, fs."),
    friction: float = typer.Option(0.01, "--friction", help="Langevin friction, 1/fs."),
    record_every: int = typer.Option(200, "--record-every", help="Write a candidate every N steps."),
    max_atomic_uncertainty: float | None = typer.Option(None, "--max-atomic-uncertainty", help="Stop when a calibrated atomic uncertainty exceeds this (eV/Å); needs a calibrated model."),
    max_uncertainty: float | None = typer.Option(None, "--max-uncertainty", help="Stop when the calibrated total uncertainty exceeds this (eV/atom)."),
    min_distance: float = typer.Option(0.5, "--min-distance", help="Stop when two atoms are closer than this (Å)."),
    max_force: float = typer.Option(50.0, "--max-force", help="Stop when a model force exceeds this (eV/Å)."),
    frames: str = typer.Option("-1", "--frames", help="Frames of each file to start from (ASE index: -1, :, 0:10:2)."),
    explorer_id: int = typer.Option(0, "--explorer-id", help="Explorer index written with the candidates."),
    seed: int = typer.Option(0, "--seed", help="Random seed (each replica derives its own)."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    dtype: str | None = typer.Option(None, "--dtype", help="float64 or float32 (default: the model's)."),
    compile_model: bool = typer.Option(False, "--compile", help="Run a torch.compile'd copy of the model: seconds to compile, then faster steps (long runs)."),
    skin: float = typer.Option(1.0, "--skin-A", help="Verlet skin of the neighbour lists, Å (0: search every step)."),
) -> None:  # fmt: skip
    """Run a one-off (biased) MD exploration; see `ubmd explore --help`."""
    with user_errors():
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Table

        from ubmd import keys
        from ubmd.devices import check_device_here
        from ubmd.md.bias import UncertaintyCVConfig
        from ubmd.md.explore import ExploreConfig, run_explorer
        from ubmd.md.integrators import BarostatConfig
        from ubmd.md.schedule import LinearRamp
        from ubmd.md.stop import StopRules

        check_device_here(device)
        if device == "cpu":  # this process runs long MD: keep its per-step buffers
            from ubmd.md.allocator import retain_freed_memory

            retain_freed_memory()
        md_model = _load_model(model, device, compile=compile_model, skin_A=skin)
        if dtype is None:
            dtype = str(getattr(md_model, "dtype", "float64")).removeprefix("torch.")
        calibrated = getattr(md_model, "has_calibration", False)
        cv_key = keys.CALIBRATED_UNCERTAINTY if calibrated else keys.UNCERTAINTY
        temp = (
            temperature
            if temperature_end is None
            else LinearRamp(temperature, temperature_end, steps)
        )
        config = ExploreConfig(
            sampler="md" if sampler == "adversarial" else sampler, ensemble="npt" if npt else "nvt", temperature_K=temp,
            pressure_GPa=pressure_gpa, timestep_fs=timestep_fs, friction_per_fs=friction,
            n_steps=steps, record_every=record_every, tau_rel=tau_rel,
            tau_stress_rel=tau_stress_rel, window=window,
            species_weights=_parse_weights(species_weight),
            stop=StopRules(max_steps=steps, min_distance_A=min_distance, max_force_eV_A=max_force,
                           max_atomic_uncertainty=max_atomic_uncertainty,
                           max_uncertainty=max_uncertainty),
            barostat=BarostatConfig(mode="isotropic" if isotropic else "anisotropic"),
            uncertainty_cv=UncertaintyCVConfig(height_eV=hill_height, width=hill_width,
                                               pace=hill_pace, cv_key=cv_key),
            explorer_id=explorer_id, seed=seed, device=device, dtype=dtype,
        )  # fmt: skip
        starts = _read_structures(list(structures), frames)
        if hasattr(md_model, "check_structures"):
            for atoms in starts:
                md_model.check_structures(atoms.numbers)
        if sampler == "adversarial":
            _adversarial(md_model, starts, out, training_data=training_data, steps=steps,
                         lr=attack_lr, temperature=temperature, record_every=record_every,
                         stop=config.stop, explorer_id=explorer_id, seed=seed, device=device,
                         dtype=dtype)  # fmt: skip
            return
        console = Console(stderr=True)
        columns = (TextColumn("exploring"), BarColumn(), TextColumn("{task.completed}/{task.total} replica-steps"), TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("explore", total=max(replicas, len(starts)) * steps)
            summary = run_explorer(
                config, md_model, starts, out_path=out, replicas=replicas,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        table = Table(title=f"{summary['n_frames']} candidate frames -> {out}")
        for col in ("replica", "start", "steps", "stop reason"):
            table.add_column(col)
        for rid, rec in sorted(summary["replicas"].items()):
            table.add_row(str(rid), str(rec["start_index"]), str(rec["steps"]), rec["stop_reason"])
        Console().print(table)
        typer.echo(
            f"{summary['atom_steps_per_s']:.0f} atom-steps/s, wall time {summary['wall_time_s']:.1f} s"
        )


def _adversarial(md_model, starts, out: Path, *, training_data: Path | None, steps: int,
                 lr: float, temperature: float, record_every: int, stop, explorer_id: int,
                 seed: int, device: str, dtype: str) -> None:  # fmt: skip
    from ubmd import keys
    from ubmd.md.samplers import AdversarialConfig, run_adversarial
    from ubmd.models.data import labelled_arrays

    if training_data is None:
        raise ValueError("--sampler adversarial needs --training-data (labelled structures for Q)")
    if not training_data.exists():
        raise FileNotFoundError(f"training data {training_data} does not exist")
    energies = labelled_arrays(str(training_data)).get(keys.ENERGY)
    if energies is None or len(energies) == 0:
        raise ValueError(f"{training_data} holds no energies (needed for Q)")
    config = AdversarialConfig(
        training_energies_eV=tuple(float(e) for e in energies), temperature_K=temperature,
        n_iterations=steps, learning_rate_A=lr, record_every=min(record_every, steps),
        stop=stop, explorer_id=explorer_id, seed=seed, device=device, dtype=dtype,
    )  # fmt: skip
    summary = run_adversarial(config, md_model, starts, out_path=out)
    stopped = ", ".join(f"{k}: {v}" for k, v in sorted(summary["stop_reasons"].items()))
    typer.echo(
        f"{summary['n_frames']} candidate frames -> {out} ({len(starts)} attacks; "
        f"stopped: {stopped or 'none'}), wall time {summary['wall_time_s']:.1f} s"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("explore", help=_HELP)(explore)
