"""`ubmd explore`: a one-off (biased) MD exploration writing candidate frames to HDF5."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from ubmd.cli.errors import user_errors
from ubmd.cli.explore_checks import (
    check_out,
    check_run_needs,
    check_start_structures,
    check_training_data,
    load_model_spec,
    nothing_left_on_failure,
    parse_species_weights,
    read_start_structures,
)

_HELP = """Run uncertainty-biased MD from start STRUCTURES with MODEL; write candidates to --out.

MODEL is a ubmd model file with its uncertainty estimator (and, for calibrated stop thresholds, its calibration): `ubmd train DATA --uncertainty posterior --out MODEL` writes one, and so does a campaign (`final/model.pt`, `iter_NNN/model.pt`). Or `emt` for ASE's EMT potential (metals; unbiased `--sampler md` only). Everything the run needs is checked before it starts.

STRUCTURES are files ASE can read (extxyz, cif, POSCAR, pdb, ...); every frame of each file is a start structure (`--frames -1` takes only the last). The R replicas spread over the n start frames: replica k starts from frame k mod n.

Replicas run together in one batch; a replica that stops (uncertainty above the threshold, atoms too close, NaN, force blow-up, --steps reached) ends there. A candidate frame is written every --record-every steps and at each stop. --out must be a new file (--append adds to an existing candidate file); a run that fails before its first frame leaves nothing behind.

`--sampler adversarial` runs adversarial attacks instead of MD (Schwalbe-Koda et al. 2021): every start structure is displaced by Adam steps (--steps of them, --attack-lr-A) that maximise u·exp(-E/kT)/Q, with Q from the energies of --training-data.

The summary separates the set-up (loading, compiling with --compile, the first steps) from the steady-state rate. On CPU, compiled explorers run fastest with one torch thread each (--threads 1).

Example: `ubmd explore model.pt ala2.xyz --steps 20000 --replicas 8 --out cands.h5 --species-weight H=0 --max-atomic-uncertainty 1.5`
"""


def _md_model(spec: str, net: Any, estimator: Any, calibration: Any, *, compile: bool,
              skin_A: float, device: str) -> Any:  # fmt: skip
    """The model the MD engine steps with (EMT for `emt`)."""
    if device == "cpu":  # this process runs long MD: keep its per-step buffers
        from ubmd.md.allocator import retain_freed_memory

        retain_freed_memory()
    if net is None:
        from ase.calculators.emt import EMT

        from ubmd.md.forcefield import ASEForceField

        return ASEForceField(EMT)
    from ubmd.md.adapter import UBMDModel

    return UBMDModel(net, estimator, calibration, compile=compile, skin_A=skin_A)


def _set_threads(threads: int | None) -> str:
    """Set torch's intra-op threads (None: keep torch's default); describe the setting."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        return f"torch threads {torch.get_num_threads()}"
    return f"torch threads {torch.get_num_threads()} (torch's default; --threads N sets it)"


def _describe(spec: str, net, estimator, calibration) -> str:
    if net is None:
        return "EMT, no uncertainty"
    what = [type(net).__name__ + (f" x{len(net.members)}" if hasattr(net, "members") else "")]
    if estimator is None:
        what.append("no uncertainty")
    else:
        what.append(f"{estimator.config.method} uncertainty on {estimator.config.features}")
        cal = [n for n, c in (("total", calibration and calibration.c_total),
                              ("atom-based", calibration and calibration.c_atom)) if c is not None]  # fmt: skip
        what.append(f"calibrated: {' and '.join(cal)}" if cal else "not calibrated")
    return f"{spec}: {', '.join(what)}"


def explore(
    model: str = typer.Argument(..., help="ubmd model file, or `emt`."),
    structures: list[Path] = typer.Argument(..., help="Start structure file(s)."),
    out: Path = typer.Option(Path("candidates.h5"), "--out", "-o", help="Candidate HDF5 file; must not exist unless --append."),
    append: bool = typer.Option(False, "--append", help="Add the candidates to an existing --out file."),
    steps: int = typer.Option(10_000, "--steps", help="MD steps per replica."),
    temperature: float = typer.Option(300.0, "--temperature", help="Temperature, K."),
    temperature_end: float | None = typer.Option(None, "--temperature-end", help="Ramp linearly to this temperature (K) over --steps."),
    replicas: int = typer.Option(8, "--replicas", "-r", help="Replicas run together in one batch; replica k starts from start frame k mod n."),
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
    frames: str = typer.Option(":", "--frames", help="Frames of each file to start from (ASE index: : every frame, -1 the last, 0:10:2)."),
    explorer_id: int = typer.Option(0, "--explorer-id", help="Explorer index written with the candidates."),
    seed: int = typer.Option(0, "--seed", help="Random seed (each replica derives its own)."),
    device: str = typer.Option("auto", "--device", help="torch device: auto (a GPU if torch sees one, else cpu), cpu, cuda, cuda:N."),
    dtype: str | None = typer.Option(None, "--dtype", help="float64 or float32 (default: the model's)."),
    compile_model: bool = typer.Option(False, "--compile", help="Run a torch.compile'd copy of the model: compiling takes a while (10-40 s on 2 CPU cores), then steps are faster; for long runs. Sketched-gradient uncertainties run eagerly (with a warning)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch intra-op threads (default: torch's, printed); one per explorer is fastest for compiled explorers on CPU."),
    skin: float = typer.Option(1.0, "--skin-A", help="Verlet skin of the neighbour lists, Å (0: search every step)."),
) -> None:  # fmt: skip
    """Run a one-off (biased) MD exploration; see `ubmd explore --help`."""
    with user_errors():
        t_start = time.perf_counter()
        from ubmd.devices import check_device_here, resolve_device
        from ubmd.md.explore import ExploreConfig
        from ubmd.md.integrators import BarostatConfig
        from ubmd.md.samplers import UncertaintyCVConfig
        from ubmd.md.schedule import LinearRamp
        from ubmd.md.stop import StopRules

        device = resolve_device(check_device_here(device))
        if sampler == "adversarial":
            check_training_data(training_data)
        check_out(out, append)
        threads_note = _set_threads(threads)
        net, estimator, calibration = load_model_spec(model, device)
        check_run_needs(model, estimator, calibration, sampler=sampler, compile=compile_model,
                        max_uncertainty=max_uncertainty,
                        max_atomic_uncertainty=max_atomic_uncertainty)  # fmt: skip
        compile_model = _compile_if_possible(model, estimator, compile_model=compile_model)
        starts = read_start_structures(list(structures), frames)
        check_start_structures(starts, net, npt=npt)
        md_model = _md_model(model, net, estimator, calibration, compile=compile_model,
                             skin_A=skin, device=device)  # fmt: skip
        if dtype is None:
            dtype = str(getattr(md_model, "dtype", "float64")).removeprefix("torch.")
        temp = temperature if temperature_end is None else LinearRamp(temperature, temperature_end, steps)  # fmt: skip
        config = ExploreConfig(
            sampler="md" if sampler == "adversarial" else sampler, ensemble="npt" if npt else "nvt", temperature_K=temp,
            pressure_GPa=pressure_gpa, timestep_fs=timestep_fs, friction_per_fs=friction,
            n_steps=steps, record_every=record_every, tau_rel=tau_rel,
            tau_stress_rel=tau_stress_rel, window=window,
            species_weights=parse_species_weights(species_weight),
            stop=StopRules(max_steps=steps, min_distance_A=min_distance, max_force_eV_A=max_force,
                           max_atomic_uncertainty=max_atomic_uncertainty,
                           max_uncertainty=max_uncertainty),
            barostat=BarostatConfig(mode="isotropic" if isotropic else "anisotropic"),
            uncertainty_cv=UncertaintyCVConfig(height_eV=hill_height, width=hill_width,
                                               pace=hill_pace, cv_key=_cv_key(calibration)),
            explorer_id=explorer_id, seed=seed, device=device, dtype=dtype,
        )  # fmt: skip
        if replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {replicas}")
        what = _describe(model, net, estimator, calibration)
        note = f"{threads_note}; {'compiled' if compile_model else 'eager'}"
        if sampler == "adversarial":
            typer.echo(f"{what}; {len(starts)} attacks; {note}")
            with nothing_left_on_failure(out):
                _adversarial(md_model, starts, out, training_data=training_data, steps=steps,
                             lr=attack_lr, temperature=temperature, record_every=record_every,
                             stop=config.stop, explorer_id=explorer_id, seed=seed,
                             device=device, dtype=dtype)  # fmt: skip
            return
        _explore_replicas(config, md_model, starts, out=out, replicas=replicas, what=what,
                          note=note, t_start=t_start, compile_asked=compile_model)  # fmt: skip


def _compile_if_possible(model: str, estimator: Any, *, compile_model: bool) -> bool:
    """--compile unless the uncertainty hooks into the model where compiled code cannot
    (then a warning says so and the run is eager)."""
    if compile_model and estimator is not None and estimator.needs_capture:
        typer.echo(
            f"warning: {model}'s uncertainty uses {estimator.config.features} features, "
            "which hook into the model's readout where compiled code cannot: running "
            "eagerly instead of --compile (a model trained with --features last_layer "
            "compiles)",
            err=True,
        )
        return False
    return compile_model


def _cv_key(calibration: Any) -> str:
    """Hills on the calibrated total uncertainty where the model has it, else the raw one."""
    from ubmd import keys

    if calibration is not None and calibration.c_total is not None:
        return keys.CALIBRATED_UNCERTAINTY
    return keys.UNCERTAINTY


def _explore_replicas(
    config: Any,
    md_model: Any,
    starts: list[Any],
    *,
    out: Path,
    replicas: int,
    what: str,
    note: str,
    t_start: float,
    compile_asked: bool,
) -> None:
    """Run the replicas with a progress bar; print where each stopped and the timings
    (``what``: the model; ``note``: threads and mode; ``t_start``: when the command began)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ubmd.md.explore import run_explorer

    steps = config.n_steps
    n = len(starts)
    runs = [starts[k % n] for k in range(replicas)]  # replica k starts from frame k mod n
    typer.echo(
        f"{what}; {replicas} replicas from {min(n, replicas)} of {n} start frames (replica k "
        f"starts from frame k mod {n}); {note}"
    )
    console = Console(stderr=True)
    columns = (TextColumn("exploring"), BarColumn(), TextColumn("{task.completed}/{task.total} replica-steps"), TimeRemainingColumn())  # fmt: skip
    t_run = time.perf_counter()
    # two redraws a second: at rich's default ten, the drawing thread takes ~1 % of the CPU
    # (and the GIL) from the MD steps of a one-thread explorer
    progress = Progress(*columns, console=console, transient=True, refresh_per_second=2)
    with nothing_left_on_failure(out), progress as bar:
        task = bar.add_task("explore", total=replicas * steps)
        summary = run_explorer(
            config, md_model, runs, out_path=out, replicas=replicas,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    _print_stops(summary, out=out, n_starts=n)
    typer.echo(_timings(summary, setup_s=t_run - t_start, compile_asked=compile_asked,
                        replicas=replicas))  # fmt: skip


def _print_stops(summary: dict, *, out: Path, n_starts: int) -> None:
    """One row per replica: its start frame, steps run and why it stopped."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['n_frames']} candidate frames -> {out}")
    for col in ("replica", "start frame", "steps", "stop reason"):
        table.add_column(col)
    for rid, rec in sorted(summary["replicas"].items()):
        table.add_row(str(rid), str(rec["start_index"] % n_starts), str(rec["steps"]), rec["stop_reason"])  # fmt: skip
    Console().print(table)


def _timings(
    summary: dict, *, setup_s: float, compile_asked: bool, replicas: int | None = None
) -> str:
    """Set-up (loading, compiling, warm-up steps) apart from the steady-state rate; where
    stopped replicas left slots empty, how many of the ``replicas`` ran on average (fewer
    atoms per step: a lower rate than a full batch)."""
    setup = setup_s + summary["warmup_s"]
    what = "loading" + (", compiling" if compile_asked else "")
    n = summary["warmup_steps"]
    line = f"set-up {setup:.1f} s ({what}, first {n} step{'' if n == 1 else 's'})"
    if compile_asked and not summary.get("compiled"):
        line += " [compiling failed: ran eagerly]"
    rate = summary["steady_atom_steps_per_s"]
    if rate is None:
        line += "; steady state not reached (too few --steps to measure it)"
    else:
        line += f"; steady state {rate:.0f} atom-steps/s over {summary['steady_steps']} steps"
        busy = summary.get("steady_mean_replicas")
        if replicas is not None and busy is not None and busy < replicas - 1e-9:
            line += f" ({busy:.1f} of {replicas} replicas running on average)"
    return line + f"; wall time {setup_s + summary['wall_time_s']:.1f} s"


def _adversarial(md_model, starts, out: Path, *, training_data: Path | None, steps: int,
                 lr: float, temperature: float, record_every: int, stop, explorer_id: int,
                 seed: int, device: str, dtype: str) -> None:  # fmt: skip
    from ubmd import keys
    from ubmd.md.samplers import AdversarialConfig, run_adversarial
    from ubmd.models.data import labelled_arrays

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
