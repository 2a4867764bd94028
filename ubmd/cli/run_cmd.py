"""`ubmd run` (an active-learning campaign on a site) and `ubmd status` (where a campaign stands)."""

from __future__ import annotations

from pathlib import Path

import typer

from ubmd.cli.errors import user_errors


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("status")(status)


def run(
    campaign: Path = typer.Argument(
        ..., help="Campaign file (YAML), e.g. workflows/quickstart/campaign.yaml."
    ),
    site: str = typer.Option(
        "local",
        "--site",
        "-s",
        help="Site config: a name in site_configs/ (local, slurm_example, pbspro_example, "
        "torque_example) or a YAML path. New cluster: see docs/clusters.md.",
    ),
    directory: Path | None = typer.Option(
        None, "--dir", help="Campaign directory (overrides the file's `directory`)."
    ),
    max_iterations: int | None = typer.Option(
        None, help="Override stopping.max_iterations (e.g. to run a resumed campaign longer)."
    ),
    live: bool = typer.Option(
        True, "--live/--no-live", help="Live table in a terminal; plain log lines otherwise."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check both files, the labeler and the site; print the batch scripts that would be "
        "submitted, one iteration's tasks and a core-/GPU-hour estimate (mode: streaming: its "
        "roles and a time-to-budget estimate). Submits nothing "
        "(works without a scheduler, e.g. on a laptop).",
    ),
    costs: Path | None = typer.Option(
        None,
        "--costs",
        help="With --dry-run: YAML of assumed task durations for the estimate "
        "(fields of ubmd.pipeline.dryrun.CostModel).",
    ),
) -> None:
    """Run an active-learning campaign, or resume it if its directory already exists.

    Every iteration trains the model(s), calibrates the uncertainty, runs the explorers, selects a
    batch of candidates, labels them with the reference code and appends each label to the
    campaign's HDF5 store as it arrives. Killing the run at any point loses nothing: run the same
    command again to continue where it stopped.
    """
    with user_errors():
        from ubmd.campaign.config import load_campaign
        from ubmd.pipeline.sites import load_site

        overrides: dict[str, object] = {}
        if directory is not None:
            overrides["directory"] = str(directory.resolve())
        if max_iterations is not None:
            overrides["stopping.max_iterations"] = max_iterations
        config = load_campaign(campaign, overrides=overrides)
        site_config = load_site(site)
        if costs is not None and not dry_run:
            raise ValueError("--costs only applies with --dry-run")
        if dry_run:
            from ubmd.pipeline.dryrun import dry_run as do_dry_run
            from ubmd.pipeline.dryrun import format_report, load_costs

            typer.echo(format_report(do_dry_run(config, site_config, costs=load_costs(costs))))
            return
        from ubmd.pipeline.driver import run_campaign

        summary = run_campaign(config, site_config, live=live)
    typer.echo(
        f"campaign {config.name}: {summary.iterations_done} iteration(s), {summary.labels_stored} labels stored "
        f"this run, {summary.labels_failed} failed; stopped: {summary.stop_reason}"
    )
    typer.echo(f"directory: {config.campaign_dir}")


def status(
    directory: Path = typer.Argument(
        ..., help="A campaign directory (holds campaign.yaml and store.h5)."
    ),
) -> None:
    """Where a campaign stands: iterations, phases done, labels by status, latest metrics."""
    with user_errors():
        from ubmd.campaign.status import campaign_status, render_status

        render_status(campaign_status(directory))
