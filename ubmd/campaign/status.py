"""`ubmd status DIR`: what a campaign directory holds, read from its artefacts and store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ubmd.campaign.layout import CampaignLayout


def campaign_status(directory: str | Path) -> dict[str, Any]:
    from ubmd.campaign.validate import campaign_dir_of
    from ubmd.store import StructureStore

    layout = campaign_dir_of(directory)
    import yaml

    config = yaml.safe_load(layout.config.read_text())
    iterations = []
    for it in layout.iterations_present():
        phases = _phases(layout, it, config)
        report = json.loads(layout.report(it).read_text()) if layout.report(it).exists() else {}
        iterations.append({"iteration": it, "phases": phases, "report": report})
    counts: dict[str, int] = {}
    by_iteration: dict[int, int] = {}
    if layout.store.exists():
        with StructureStore.open(layout.store, mode="r") as store:
            arrays = store.read_arrays(status=None)
        from ubmd import keys

        status = [s.decode() if isinstance(s, bytes) else str(s) for s in arrays[keys.STATUS]]
        for s in status:
            counts[s] = counts.get(s, 0) + 1
        for it, s in zip(arrays[keys.ITERATION].tolist(), status, strict=True):
            if s == keys.STATUS_OK:
                by_iteration[int(it)] = by_iteration.get(int(it), 0) + 1
    final = None
    if layout.final.exists():
        final = {
            "model": str(layout.final_bundle) if layout.final_bundle.exists() else None,
            "report": json.loads(layout.final_report.read_text())
            if layout.final_report.exists()
            else {},
        }
    return {
        "explorers": _explorers(layout, config),
        "streaming": _streaming(layout) if config.get("mode") == "streaming" else None,
        "roles": _roles(layout.roles),
        "name": config.get("name"),
        "directory": str(layout.root),
        "iterations": iterations,
        "final": final,
        "labels_by_status": counts,
        "ok_labels_by_iteration": by_iteration,
    }


def _explorers(layout: CampaignLayout, config: dict[str, Any]) -> dict[str, Any] | None:
    """The newest iteration's explorer summaries (start-up, steady rate, stops), if any."""
    n_explorers = config.get("exploration", {}).get("explorers", 1)
    for it in sorted(layout.iterations_present(), reverse=True):
        paths = [layout.explorer_stats(it, e) for e in range(n_explorers)]
        stats = [json.loads(p.read_text()) for p in paths if p.exists()]
        if stats:
            return {"iteration": it, "of": n_explorers, "stats": stats}
    return None


def format_explorers(explorers: dict[str, Any]) -> str:
    """One line: how many explorers finished, their start-up and steady rate, why they stopped."""
    stats = explorers["stats"]
    parts = [f"explorers (iteration {explorers['iteration']}): {len(stats)}/{explorers['of']} done"]
    warmup = [s["warmup_s"] for s in stats if s.get("warmup_s") is not None]
    rate = [s["steady_atom_steps_per_s"] for s in stats if s.get("steady_atom_steps_per_s")]
    if warmup:
        parts.append(f"start-up {sum(warmup) / len(warmup):.1f} s")
    if rate:
        parts.append(f"{sum(rate) / len(rate):,.0f} atom-steps/s each")
    stops: dict[str, int] = {}
    for s in stats:
        for reason, n in (s.get("stop_reasons") or {}).items():
            stops[reason] = stops.get(reason, 0) + int(n)
    if stops:
        parts.append("stops " + ", ".join(f"{k} {v}" for k, v in sorted(stops.items())))
    return "; ".join(parts)


def _roles(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()).get("summary", {}) if path.exists() else {}


def _streaming(layout: CampaignLayout) -> dict[str, Any]:
    """A streaming campaign: its newest published model and each role's busy/idle time."""
    from ubmd.campaign.stream_layout import StreamLayout, latest_version

    stream = StreamLayout(layout.root)
    return {"model_version": latest_version(stream), "roles": _roles(stream.roles)}


def _phases(layout: CampaignLayout, it: int, config: dict[str, Any]) -> dict[str, str]:
    if it == 0:
        sel = layout.selection(0)
        n_labels = len(list((layout.iteration(0) / "labels").glob("*.npz")))
        return {"initial labels": f"{n_labels} result files" if sel.exists() else "not started"}
    n_members = config.get("model", {}).get("ensemble_size", 1)
    n_explorers = config.get("exploration", {}).get("explorers", 1)
    members = sum(layout.member(it, m).exists() for m in range(n_members))
    explorers = sum(layout.explorer(it, e).exists() for e in range(n_explorers))
    return {
        "train": f"{members}/{n_members} members",
        "calibrate": "done" if layout.bundle(it).exists() else "-",
        "explore": f"{explorers}/{n_explorers} explorers",
        "select": "done" if layout.selection(it).exists() else "-",
        "labels": f"{len(list((layout.iteration(it) / 'labels').glob('*.npz')))} result files",
        "report": "done" if layout.report(it).exists() else "-",
    }


def _current_phase(phases: dict[str, str]) -> str:
    """The first phase of an iteration that is not complete, e.g. "explore 1/2"."""
    for name, value in phases.items():
        count = value.split()[0]
        if value in ("done",) or ("/" in count and len(set(count.split("/"))) == 1):
            continue
        return f"{name} {count}" if count[0].isdigit() else name
    return "report"


def render_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{status['name']}[/] in {status['directory']}")
    console.print(
        "labels by status: "
        + (
            ", ".join(f"{k} {v}" for k, v in sorted(status["labels_by_status"].items()))
            or "none yet"
        )
    )
    # one line per finished iteration; the phases only for the one in progress (80 columns)
    table = Table("iter.", "state", "labels", "F RMSE eV/Å", "E meV/atom", "Rama. cov.")
    for entry in status["iterations"]:
        it = entry["iteration"]
        rep = entry["report"]
        test = rep.get("test") or {}
        rmse, e_rmse = test.get("force_rmse_eV_A"), test.get("energy_rmse_eV_atom")
        cov = rep.get("ramachandran_coverage")
        finished = bool(rep) or (it == 0 and len(status["iterations"]) > 1)
        state = "done" if finished else _current_phase(entry["phases"])
        table.add_row(
            str(it),
            state,
            str(status["ok_labels_by_iteration"].get(it, 0)),
            "-" if rmse is None else f"{rmse:.4f}",
            "-" if e_rmse is None else f"{1000 * e_rmse:.2f}",
            "-" if cov is None else f"{cov:.3f}",
        )
    console.print(table)
    from ubmd.campaign.roles import format_roles

    streaming = status.get("streaming")
    if streaming:
        console.print(f"streaming: model v{streaming['model_version']} published")
    if status.get("explorers"):
        console.print(format_explorers(status["explorers"]))
    roles = (streaming or {}).get("roles") or status.get("roles")
    if roles:
        console.print("roles: " + format_roles(roles))
    final = status.get("final")
    if final is None:
        return
    if final["model"] is None:
        console.print("final model: training")
        return
    rep = final["report"]
    parts = [f"final model: {final['model']}"]
    if rep:
        parts.append(f"{rep.get('labels')} labels in the store")
        tests = {"test": rep.get("test") or {}, **(rep.get("tests") or {})}
        for name, m in tests.items():
            if m:
                parts.append(
                    f"{name}: E {1000 * m['energy_rmse_eV_atom']:.2f} meV/atom, "
                    f"F {m['force_rmse_eV_A']:.4f} eV/Å"
                )
        if rep.get("ramachandran_coverage") is not None:
            parts.append(f"Ramachandran coverage {rep['ramachandran_coverage']:.3f}")
    console.print("; ".join(parts))
