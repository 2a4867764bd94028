"""The dry run's cost estimate follows the training budget (epochs capped by max_steps)."""

from __future__ import annotations

import re
from pathlib import Path

from ubmd.campaign.config import load_campaign
from ubmd.pipeline.dryrun import dry_run, format_report, load_costs
from ubmd.pipeline.sites import load_site

ROOT = Path(__file__).resolve().parents[2]


def _core_hours(overrides: dict) -> tuple[float, str]:
    config = load_campaign(ROOT / "workflows" / "ala2_paper" / "campaign.yaml", overrides=overrides)
    text = format_report(dry_run(config, load_site("local"), costs=load_costs(None)))
    return float(re.search(r"([\d.]+) core-hours", text).group(1)), text


def test_capped_fine_tuning_costs_less_and_is_said():
    capped, text = _core_hours({"model.fine_tuning.max_steps": 1500})
    uncapped, text_uncapped = _core_hours({"model.fine_tuning.max_steps": None})
    assert "at most 1500 optimizer steps" in text
    assert "optimizer steps" not in text_uncapped
    assert capped < uncapped
