"""`ubmd explore`: a one-off (biased) MD exploration writing candidate frames to HDF5."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from ubmd.cli.errors import user_errors

_HELP = """Run uncertainty-biased MD from start STRUCTURES with MODEL; write candidates to --out.

MODEL is a ubmd model file with its uncertainty estimator (and, for calibrated stop thresholds, its calibration): `ubmd train DATA --uncertainty posterior --out MODEL` writes one, and so does a campaign (`final/model.pt`, `iter_NNN/model.pt`). Or `emt` for ASE's EMT potential (metals; unbiased `--sampler md` only). Everything the run needs is checked before it starts.

STRUCTURES are files ASE can read (extxyz, cif, POSCAR, pdb, ...); every frame of each file is a start structure (`--frames -1` takes only the last). The R replicas spread over the n start frames: replica k starts from frame k mod n.

Replicas run together in one batch; a replica that stops (uncertainty above the threshold, atoms too close, NaN, force blow-up, --steps reached) ends there. A candidate frame is written every --record-every steps and at each stop. --out must be a new file (--append adds to an existing candidate file); a run that fails before its first frame leaves nothing behind.

`--sampler adversarial` runs adversarial attacks instead of MD (Schwalbe-Koda et al. 2021): every start structure is displaced by Adam steps (--steps of them, --attack-lr-A) that maximise u·exp(-E/kT)/Q, with Q from the energies of --training-data.

The summary separates the set-up (loading, compiling with --compile, the first steps) from the steady-state rate. On CPU, compiled explorers run fastest with one torch thread each (--threads 1).

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


def _check_out(out: Path, append: bool) -> None:
    """--out is a new file, or (--append) an existing candidate file."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a directory; give a file name (.h5)")
    if not out.exists():
        return
    if not append:
        raise FileExistsError(
            f"--out {str(out)!r} exists; pass --append to add the candidates to it, or give "
            "another --out"
        )
    import h5py

    from ubmd.md.writer import KIND

    try:
        with h5py.File(out, "r") as f:
            kind = f.attrs.get("kind")
    except OSError:
        kind = None
    if kind != KIND:
        raise ValueError(f"--append: {str(out)!r} is not a ubmd candidate file")


def _committed_frames(path: Path) -> int:
    """Frames a candidate file holds (0 if it is missing or unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("n_frames", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def _nothing_left_on_failure(out: Path) -> Iterator[None]:
    """If the run fails before its first frame, remove the file (and folders) it created."""
    existed = out.exists()
    new_dirs = []
    parent = out.parent
    while not parent.exists():
        new_dirs.append(parent)
        parent = parent.parent
    try:
        yield
    except BaseException:
        if not existed and _committed_frames(out) == 0:
            out.unlink(missing_ok=True)
            for d in new_dirs:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break
        raise


_TRAIN_HINT = "`ubmd train DATA --uncertainty posterior --out MODEL`"


def _load_bundle(spec: str, device: str):
    """(potential, estimator, calibration) of a model file; (None, None, None) for `emt`."""
    if spec.lower() == "emt":
        return None, None, None
    from ubmd.uncertainty import load_bundle

    return load_bundle(spec, device=device)


def _check_run_needs(spec: str, estimator, calibration, *, sampler: str, compile: bool,
                     max_uncertainty: float | None, max_atomic_uncertainty: float | None) -> None:  # fmt: skip
    """Everything the run needs from MODEL, before anything starts; says what makes it."""
    thresholds = [
        flag
        for flag, value in (
            ("--max-uncertainty", max_uncertainty),
            ("--max-atomic-uncertainty", max_atomic_uncertainty),
        )
        if value is not None
    ]
    if spec.lower() == "emt":
        if compile:
            raise ValueError("--compile applies to ubmd model files, not to `emt`")
        if sampler != "md":
            raise ValueError(
                f"`emt` has no uncertainty, which --sampler {sampler} needs: use sampler 'md' "
                f"(--sampler md), or a ubmd model file with an uncertainty ({_TRAIN_HINT})"
            )
        if thresholds:
            raise ValueError(f"`emt` has no calibrated uncertainty: drop {', '.join(thresholds)}")
        return
    if estimator is None and (sampler != "md" or thresholds):
        needs = f"--sampler {sampler}" if sampler != "md" else " and ".join(thresholds)
        raise ValueError(
            f"{spec} holds no uncertainty estimator, which {needs} needs; train a model with "
            f"one (fitted and calibrated) with {_TRAIN_HINT}"
            + (", or run unbiased MD with --sampler md" if sampler != "md" else "")
        )
    parts = {"--max-uncertainty": ("c_total", "total"),
             "--max-atomic-uncertainty": ("c_atom", "atom-based")}  # fmt: skip
    for flag in thresholds:
        attr, name = parts[flag]
        if calibration is None:
            raise ValueError(
                f"{flag} is a calibrated threshold and {spec} holds no calibration; train a "
                f"calibrated model with {_TRAIN_HINT} (it holds out --calibration-fraction of "
                f"DATA to calibrate on), or drop {flag}"
            )
        if getattr(calibration, attr) is None:
            other = next(f for f in parts if f != flag)
            raise ValueError(
                f"{flag} needs the calibrated {name} uncertainty, but {spec} carries only the "
                f"{parts[other][1]} part of a calibration (a campaign calibrates each part once "
                f"its calibration split is large enough for alpha={calibration.alpha}); use "
                f"{other}, or train a model calibrated on both with {_TRAIN_HINT}"
            )


def _md_model(spec: str, net, estimator, calibration, *, compile: bool, skin_A: float):
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
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    dtype: str | None = typer.Option(None, "--dtype", help="float64 or float32 (default: the model's)."),
    compile_model: bool = typer.Option(False, "--compile", help="Run a torch.compile'd copy of the model: compiling takes a while (10-40 s on 2 CPU cores), then steps are faster; for long runs. Sketched-gradient uncertainties run eagerly (with a warning)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch intra-op threads (default: torch's, printed); one per explorer is fastest for compiled explorers on CPU."),
    skin: float = typer.Option(1.0, "--skin-A", help="Verlet skin of the neighbour lists, Å (0: search every step)."),
) -> None:  # fmt: skip
    """Run a one-off (biased) MD exploration; see `ubmd explore --help`."""
    with user_errors():
        t_start = time.perf_counter()
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Table

        from ubmd import keys
        from ubmd.devices import check_device_here
        from ubmd.md.explore import ExploreConfig, run_explorer
        from ubmd.md.integrators import BarostatConfig
        from ubmd.md.samplers import UncertaintyCVConfig
        from ubmd.md.schedule import LinearRamp
        from ubmd.md.stop import StopRules

        check_device_here(device)
        if sampler == "adversarial":
            _check_training_data(training_data)
        _check_out(out, append)
        threads_note = _set_threads(threads)
        net, estimator, calibration = _load_bundle(model, device)
        _check_run_needs(model, estimator, calibration, sampler=sampler, compile=compile_model,
                         max_uncertainty=max_uncertainty,
                         max_atomic_uncertainty=max_atomic_uncertainty)  # fmt: skip
        if compile_model and estimator is not None and estimator.needs_capture:
            typer.echo(
                f"warning: {model}'s uncertainty uses {estimator.config.features} features, "
                "which hook into the model's readout where compiled code cannot: running "
                "eagerly instead of --compile (a model trained with --features last_layer "
                "compiles)",
                err=True,
            )
            compile_model = False
        starts = _read_structures(list(structures), frames)
        if net is not None:
            from ubmd.models.compiled import check_elements

            for atoms in starts:
                check_elements(atoms.numbers, net.species)
        if npt and not all(a.pbc.all() and a.cell.volume > 1e-6 for a in starts):
            raise ValueError(
                "NPT needs periodic structures with a 3D cell; a start structure has no cell or "
                "pbc is not True in all directions (use NVT for molecules and clusters)"
            )
        if device == "cpu":  # this process runs long MD: keep its per-step buffers
            from ubmd.md.allocator import retain_freed_memory

            retain_freed_memory()
        md_model = _md_model(model, net, estimator, calibration, compile=compile_model,
                             skin_A=skin)  # fmt: skip
        if dtype is None:
            dtype = str(getattr(md_model, "dtype", "float64")).removeprefix("torch.")
        # hills on the calibrated total uncertainty where the model has it, else the raw one
        cv_key = (
            keys.CALIBRATED_UNCERTAINTY
            if calibration is not None and calibration.c_total is not None
            else keys.UNCERTAINTY
        )
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
        if replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {replicas}")
        mode = "compiled" if compile_model else "eager"
        if sampler == "adversarial":
            typer.echo(f"{_describe(model, net, estimator, calibration)}; {len(starts)} "
                       f"attacks; {threads_note}; {mode}")  # fmt: skip
            with _nothing_left_on_failure(out):
                _adversarial(md_model, starts, out, training_data=training_data, steps=steps,
                             lr=attack_lr, temperature=temperature, record_every=record_every,
                             stop=config.stop, explorer_id=explorer_id, seed=seed,
                             device=device, dtype=dtype)  # fmt: skip
            return
        n = len(starts)
        runs = [starts[k % n] for k in range(replicas)]  # replica k starts from frame k mod n
        typer.echo(
            f"{_describe(model, net, estimator, calibration)}; {replicas} replicas from "
            f"{min(n, replicas)} of {n} start frames (replica k starts from frame k mod {n}); "
            f"{threads_note}; {mode}"
        )
        console = Console(stderr=True)
        columns = (TextColumn("exploring"), BarColumn(), TextColumn("{task.completed}/{task.total} replica-steps"), TimeRemainingColumn())  # fmt: skip
        t_run = time.perf_counter()
        with _nothing_left_on_failure(out), Progress(*columns, console=console, transient=True) as bar:  # fmt: skip
            task = bar.add_task("explore", total=replicas * steps)
            summary = run_explorer(
                config, md_model, runs, out_path=out, replicas=replicas,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        table = Table(title=f"{summary['n_frames']} candidate frames -> {out}")
        for col in ("replica", "start frame", "steps", "stop reason"):
            table.add_column(col)
        for rid, rec in sorted(summary["replicas"].items()):
            table.add_row(str(rid), str(rec["start_index"] % n), str(rec["steps"]), rec["stop_reason"])  # fmt: skip
        Console().print(table)
        typer.echo(_timings(summary, setup_s=t_run - t_start, compile_asked=compile_model))


def _timings(summary: dict, *, setup_s: float, compile_asked: bool) -> str:
    """Set-up (loading, compiling, warm-up steps) apart from the steady-state rate."""
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
    return line + f"; wall time {setup_s + summary['wall_time_s']:.1f} s"


def _check_training_data(training_data: Path | None) -> None:
    if training_data is None:
        raise ValueError("--sampler adversarial needs --training-data (labelled structures for Q)")
    if not training_data.exists():
        raise FileNotFoundError(f"training data {training_data} does not exist")


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
