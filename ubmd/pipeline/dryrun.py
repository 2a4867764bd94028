"""``ubmd run --dry-run``: everything a submission would do, except submitting.

Validates the campaign and the site, checks the labeler (executables, basis and pseudopotential
files) and the site's paths where this machine can see them, renders the exact batch script
each executor's provider would submit (parsl's own provider code, with the submit command
recorded instead of run), lists one iteration's tasks with their executors and dependencies,
and estimates tasks and core-/GPU-hours. Works with no scheduler installed. A ``mode:
streaming`` campaign gets its roles and a time estimate instead (:mod:`.dryrun_streaming`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ubmd.campaign.config import CampaignConfig
from ubmd.pipeline.parsl_config import make_config
from ubmd.pipeline.sites import SiteConfig

SUBMIT_COMMAND = {"slurm": "sbatch", "pbspro": "qsub", "torque": "qsub"}
# stands in for what only exists once the run starts (the interchange picks a free port)
WORKER_PORT = "<worker-port>"


class CostModel(BaseModel):
    """Assumed task durations on one worker of the executor the task runs on. Core-hours =
    duration x the worker's cores (``cores_per_worker``); GPU-hours = duration x 1 when the
    executor has GPUs.

    The defaults are task durations measured on a 2-core CPU for the 22-atom alanine dipeptide
    (quickstart and ala2_paper, ``reports/roles.json``: training 0.2-0.3 s per epoch per 100
    structures, MD about 1 ms per step per replica, calibrate 0.1 s, select 0.2 s, report
    1.5 s), rounded up; the DFT label times are typical cluster figures. For larger systems scale
    MD and training by the number of atoms, on GPU nodes by the speed-up measured there, and
    pass your own figures in a file with ``--costs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_s_per_epoch_per_100_structures: float = Field(0.3, gt=0)
    md_ms_per_step_per_replica: float = Field(1.0, gt=0)
    label_minutes: dict[str, float] = {
        "xtb": 0.01,
        "emt": 0.001,
        "amber": 0.001,
        "cp2k": 15.0,
        "vasp": 30.0,
    }
    calibrate_minutes: float = Field(0.05, gt=0)
    select_minutes: float = Field(0.05, gt=0)
    report_minutes: float = Field(0.05, gt=0)


@dataclass
class BatchScript:
    executor: str
    provider: str
    submit_command: str  # what would have been run ("" for provider local)
    script: str  # the batch script's full text (for local: the worker pool command)
    script_path: str


@dataclass
class DryRunReport:
    checks: list[tuple[str, str, str]] = field(default_factory=list)  # (what, ok|note, detail)
    scripts: list[BatchScript] = field(default_factory=list)
    dag: list[str] = field(default_factory=list)
    dag_title: str = "one iteration (after the initial labels)"
    estimate: list[str] = field(default_factory=list)


def dry_run(
    config: CampaignConfig, site: SiteConfig, *, costs: CostModel | None = None
) -> DryRunReport:
    """Check and render everything for running ``config`` on ``site``; submit and create nothing.

    Raises (ConfigError, FileNotFoundError, ...) on anything that would make the run fail."""
    from ubmd.campaign.validate import validate_campaign

    report = DryRunReport()
    built = validate_campaign(config)  # files, sections, model options, labeler.check
    report.checks.append(("campaign", "ok", f"{config.name}: every section and file valid"))
    report.checks.append(
        ("labeler", "ok", f"{config.labeler.name}: executables and data files found (check)")
    )
    _check_site(config, site, report)
    report.scripts = render_batch_scripts(config, site)
    if config.mode == "streaming":  # no iterations: the roles run at once (docs/streaming.md)
        from ubmd.pipeline import dryrun_streaming

        report.checks += dryrun_streaming.streaming_checks(config, built)
        report.dag_title = "streaming roles (mode: streaming): no barrier after model v1"
        report.dag = dryrun_streaming.streaming_dag(config, site)
        report.estimate = dryrun_streaming.streaming_estimate(
            config, site, built, costs or CostModel()
        )
        return report
    report.dag = iteration_dag(config, site)
    report.estimate = estimate(config, site, built, costs or CostModel())
    return report


def _check_site(config: CampaignConfig, site: SiteConfig, report: DryRunReport) -> None:
    from ubmd.campaign.labels import labeler_settings
    from ubmd.labelers import labeler_class

    label_spec = site.executors[site.roles["label"]]
    takes = "launcher" in labeler_class(config.labeler.name).Settings.model_fields
    if label_spec.mpi_command:
        prefix = labeler_settings(config, launcher=label_spec.mpi_command).get("launcher", "")
        if not takes:
            report.checks.append(
                (
                    "mpi_command",
                    "note",
                    f"{label_spec.mpi_command!r} unused: labeler {config.labeler.name!r} "
                    "takes no launcher (it runs in the worker process)",
                )
            )
        elif prefix != label_spec.mpi_command:
            report.checks.append(
                ("mpi_command", "note", f"the campaign's own launcher {prefix!r} is used")
            )
        else:
            exe = shlex.split(prefix)[0]
            found = shutil.which(exe)
            report.checks.append(
                (
                    "mpi_command",
                    "ok" if found else "note",
                    f"labels run as {prefix!r} + the labeler's command; "
                    + (
                        f"{exe} found at {found}"
                        if found
                        else f"{exe} not on this machine's PATH "
                        "(fine if it exists on the compute nodes)"
                    ),
                )
            )
    if site.scratch_dir:
        path = Path(os.path.expandvars(os.path.expanduser(site.scratch_dir)))
        parent = next((p for p in (path, *path.parents) if p.exists()), None)
        ok = "$" not in str(path) and parent is not None and os.access(parent, os.W_OK)
        report.checks.append(
            (
                "scratch_dir",
                "ok" if ok else "note",
                f"{site.scratch_dir} -> {path}"
                + ("" if ok else " (not writable here; checked again on the compute nodes)"),
            )
        )
    for label, spec in site.executors.items():
        if spec.provider == "local":
            continue
        exe = SUBMIT_COMMAND[spec.provider]
        if shutil.which(exe) is None:
            report.checks.append(
                (f"executor {label}", "note", f"{exe} not found: not a login node of this site")
            )
        drain = spec.drain_period_s()
        if drain is not None:
            report.checks.append(
                (
                    f"executor {label}",
                    "ok",
                    f"walltime {spec.walltime}: workers take no new task after "
                    f"{drain / 3600:.2f} h (max_task_minutes = {spec.max_task_minutes:g})",
                )
            )


def render_batch_scripts(config: CampaignConfig, site: SiteConfig) -> list[BatchScript]:
    """The batch script of each executor's first block, as parsl's provider writes it."""
    from ubmd.campaign.layout import CampaignLayout

    run_root = CampaignLayout(config.campaign_dir).run_dir
    pconfig = make_config(site, run_root)
    run_dir = _next_rundir(Path(pconfig.run_dir))
    out = []
    with tempfile.TemporaryDirectory(prefix="ubmd-dryrun-") as tmp:
        for executor in pconfig.executors:
            spec = site.executors[executor.label]
            out.append(_render(executor, spec.provider, run_dir, Path(tmp)))
    return out


def _next_rundir(runinfo: Path) -> Path:
    """The numbered folder parsl will create for the next run (as parsl.dataflow.rundirs)."""
    numbers = [int(p.name) for p in runinfo.glob("[0-9]*[0-9]") if p.name.isdigit()]
    return runinfo / f"{max(numbers) + 1 if numbers else 0:03d}"


def _render(executor: Any, provider_name: str, run_dir: Path, tmp: Path) -> BatchScript:
    provider = executor.provider
    # what the DataFlowKernel and HTEX.start() set before the first block is launched
    executor.run_dir = str(run_dir)
    executor.worker_port = WORKER_PORT
    executor.logconf_path = None
    executor.initialize_scaling()  # composes the worker pool command (no process started)
    if provider_name == "local":
        return BatchScript(executor.label, "local", "", executor._get_launch_command("0"), "")
    provider.script_dir = str(run_dir / "submit_scripts")
    written: dict[str, str] = {}
    submitted: list[str] = []

    def write_script(template: str, script_filename: str, job_name: str, configs: Any) -> None:
        # parsl's own templating, into a scratch file: the campaign folder is not touched
        scratch = tmp / Path(script_filename).name
        original_write(template, str(scratch), job_name, configs)
        written[script_filename] = scratch.read_text()

    def record(cmd: str, timeout: Any = None) -> tuple[int, str, str]:
        submitted.append(cmd)
        # what each scheduler prints on success, so the provider's own parsing accepts it
        return 0, "Submitted batch job 1" if provider_name == "slurm" else "1.dryrun", ""

    original_write = provider._write_submit_script
    provider._write_submit_script = write_script
    provider.execute_wait = record
    executor._launch_block("0")  # -> provider.submit(launch command, 1, job name)
    (path, text), cmd = next(iter(written.items())), submitted[0]
    return BatchScript(executor.label, provider_name, cmd, text, path)


# ------------------------------------------------------------------------------- the DAG
def _steps(config: CampaignConfig) -> list[tuple[str, str, int, str]]:
    """(task, role, count, depends on) for one active-learning iteration, in driver order."""
    m, e, b = config.model.ensemble_size, config.exploration.explorers, config.selection.batch_size
    return [
        ("train", "train", m, "the store (previous labels); fine-tunes last iteration's member"),
        ("calibrate", "train", 1, f"all {m} train task(s)"),
        ("explore", "explore", e, "calibrate (the model bundle)"),
        ("select", "select", 1, f"all {e} explore task(s)"),
        ("label", "label", b, "select (one task per selected structure, at most)"),
        ("report", "select", 1, "all label tasks (each stored as it arrives) and calibrate"),
    ]


def iteration_dag(config: CampaignConfig, site: SiteConfig) -> list[str]:
    lines = []
    for task, role, count, deps in _steps(config):
        label = site.roles[role]
        spec = site.executors[label]
        where = f"{label} ({spec.provider})"
        if task == "train":  # nothing else runs then: the members share the executor's cores
            deps += f"; {spec.threads_alone(count)} thread(s) each"
        lines.append(f"{task:<10} x{count:<4} on {where:<22} after {deps}")
    return lines


def estimate(
    config: CampaignConfig, site: SiteConfig, built: dict[str, Any], costs: CostModel
) -> list[str]:
    """Tasks and core-/GPU-hours per iteration and for the whole campaign, with assumptions."""
    train_cfg, explore_cfg = built["train"], built["explore"]
    fine_cfg = built["fine_tuning"]
    spec = config.model
    n_start = sum(len(f) for f in built["structures"].values())
    n0 = initial_labels(config, built)
    iterations = config.stopping.max_iterations
    batch = config.selection.batch_size
    per_label = label_minutes(config, costs)
    core_h = gpu_h = 0.0
    tasks = n0  # the initial labels
    core_h += n0 * per_label / 60 * _cores(site, "label")
    for it in range(1, iterations + 1):
        n_train = n0 + (it - 1) * batch
        minutes = {
            "train": train_minutes(config, built, costs, version=it, n_train=n_train),
            "calibrate": costs.calibrate_minutes,
            "explore": md_minutes(config, costs, n_steps=explore_cfg.n_steps),
            "select": costs.select_minutes,
            "label": per_label,
            "report": costs.report_minutes,
        }
        for task, role, count, _ in _steps(config):
            hours = count * minutes[task] / 60
            core_h += hours * _cores(site, role)
            gpu_h += hours if site.executors[site.roles[role]].n_accelerators() else 0.0
            tasks += count
    labels = min(config.stopping.label_budget, iterations * batch)
    # the final model: every member once more on every label, then calibrate and report
    final_h = (
        spec.ensemble_size
        * train_minutes(config, built, costs, version=iterations + 1, n_train=n0 + labels)
        / 60
    )
    core_h += final_h * _cores(site, "train")
    gpu_h += final_h if site.executors[site.roles["train"]].n_accelerators() else 0.0
    tasks += spec.ensemble_size + 2
    return [
        f"initial labels: {n0} ({config.initial_data.random_displacements} displacements x "
        f"{n_start} start structure(s))",
        f"per iteration: {sum(step[2] for step in _steps(config))} tasks; "
        f"at most {iterations} iterations, {labels} active-learning labels (label_budget "
        f"{config.stopping.label_budget})",
        f"whole campaign (upper bound, every iteration run): {tasks} tasks, "
        f"{core_h:.1f} core-hours, {gpu_h:.1f} GPU-hours",
        f"assumed: training {costs.train_s_per_epoch_per_100_structures:g} s per epoch per 100 "
        f"structures x {train_cfg.max_epochs} epochs from scratch, {fine_cfg.max_epochs} "
        f"fine-tuning (max_epochs{_steps_cap(fine_cfg)}); then a final model on every label; MD "
        f"{costs.md_ms_per_step_per_replica:g} ms per step per replica x {explore_cfg.n_steps} "
        f"steps x {config.exploration.replicas} replicas; {per_label:g} min per "
        f"{config.labeler.name} label; calibrate/select/report "
        f"{costs.calibrate_minutes:g}/{costs.select_minutes:g}/{costs.report_minutes:g} min "
        f"(change with --costs FILE.yaml)",
    ]


# ------------------------------------------------- task durations (also the streaming estimate)
def initial_labels(config: CampaignConfig, built: dict[str, Any]) -> int:
    return config.initial_data.random_displacements * len(built["structures"])


def label_minutes(config: CampaignConfig, costs: CostModel) -> float:
    """Minutes of one label with the campaign's labeler (an error if the model has none)."""
    per_label = costs.label_minutes.get(config.labeler.name)
    if per_label is None:
        raise ValueError(
            f"no label_minutes for labeler {config.labeler.name!r} in the cost model "
            f"(has: {', '.join(costs.label_minutes)}); add it to the --costs file"
        )
    return per_label


def train_minutes(
    config: CampaignConfig, built: dict[str, Any], costs: CostModel, *, version: int, n_train: int
) -> float:
    """Minutes of one member's training in iteration (model version) ``version`` on ``n_train``
    structures: from scratch or fine-tuned as the driver would, epochs capped by max_steps."""
    from ubmd.models.train import epochs_for

    spec = config.model
    scratch = not spec.warm_start or version <= 1
    scratch = scratch or bool(spec.retrain_every and version % spec.retrain_every == 0)
    cfg = built["train"] if scratch else built["fine_tuning"]
    epochs = epochs_for(cfg, n_train).max_epochs
    return epochs * n_train / 100 * costs.train_s_per_epoch_per_100_structures / 60


def md_minutes(config: CampaignConfig, costs: CostModel, *, n_steps: int) -> float:
    """Minutes of one explorer task of ``n_steps`` MD steps of all its replicas."""
    return n_steps * config.exploration.replicas * costs.md_ms_per_step_per_replica / 6e4


def _cores(site: SiteConfig, role: str) -> float:
    return site.executors[site.roles[role]].cores_per_worker


def format_report(report: DryRunReport) -> str:
    out = ["== checks"]
    out += [f"  [{status}] {what}: {detail}" for what, status, detail in report.checks]
    for s in report.scripts:
        if s.provider == "local":
            out += [
                f"== executor {s.executor} (local): no batch job; worker pool command:",
                s.script,
            ]
            continue
        out += [
            f"== executor {s.executor} ({s.provider}): would run `{s.submit_command}`",
            f"-- {s.script_path} ({WORKER_PORT} is chosen when the run starts)",
            s.script.rstrip(),
        ]
    out += [f"== {report.dag_title}"] + [f"  {line}" for line in report.dag]
    out += ["== estimate"] + [f"  {line}" for line in report.estimate]
    out.append("dry run: nothing was submitted")
    return "\n".join(out)


def _steps_cap(cfg: Any) -> str:
    return "" if cfg.max_steps is None else f", at most {cfg.max_steps} optimizer steps"


def load_costs(path: str | os.PathLike[str] | None) -> CostModel:
    """The cost model from a YAML file of CostModel fields (unknown keys are errors)."""
    if path is None:
        return CostModel()
    from ubmd.strict import build, load_yaml

    return build(CostModel, load_yaml(path, "costs file") or {}, where=f"costs {path}")
