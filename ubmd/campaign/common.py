"""Helpers every campaign step shares: the config from plain data, the device, per-task seeds."""

from __future__ import annotations

import hashlib
from typing import Any

from ubmd.campaign.config import CampaignConfig
from ubmd.devices import resolve_device

__all__ = ["as_config", "resolve_device", "task_seed"]


def as_config(cfg: dict[str, Any] | CampaignConfig) -> CampaignConfig:
    return cfg if isinstance(cfg, CampaignConfig) else CampaignConfig.model_validate(cfg)


def task_seed(config: CampaignConfig, *parts: Any) -> int:
    """A 31-bit seed from the campaign seed and a task's place in the DAG."""
    text = ":".join(str(p) for p in (config.seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF
