"""Resuming a campaign directory: the same campaign resumes, a different one is refused."""

import pytest
import yaml

from ubmd.campaign.config import parse_campaign
from ubmd.campaign.validate import prepare_directory
from ubmd.strict import ConfigError


def _campaign(tmp_path, **changes):
    data = {
        "name": "t",
        "directory": "run",
        "systems": [{"name": "ala2", "structure": "ala2.extxyz"}],
        "mode": "streaming",
        "streaming": {"segment_steps": 150},
    }
    data.update(changes)
    return parse_campaign(data, base_dir=tmp_path)


def test_a_different_campaign_is_refused_and_names_the_section(tmp_path):
    prepare_directory(_campaign(tmp_path))
    with pytest.raises(ConfigError, match=r"sections differing: seed\b"):
        prepare_directory(_campaign(tmp_path, seed=1))
    with pytest.raises(ConfigError, match=r"sections differing: streaming\b"):
        prepare_directory(_campaign(tmp_path, streaming={"segment_steps": 300}))
    # the refused runs left the directory's campaign file as it was
    stored = yaml.safe_load((tmp_path / "run" / "campaign.yaml").read_text())
    assert stored["seed"] == 0 and stored["streaming"]["segment_steps"] == 150


def test_stopping_may_change_on_resume(tmp_path):
    prepare_directory(_campaign(tmp_path))
    prepare_directory(_campaign(tmp_path, stopping={"label_budget": 500}))
    stored = yaml.safe_load((tmp_path / "run" / "campaign.yaml").read_text())
    assert stored["stopping"]["label_budget"] == 500


def test_a_directory_from_before_an_option_existed_resumes(tmp_path):
    """A campaign file written by an older ubmd lacks options added since; at their defaults
    they are not a change, so upgrading does not strand a running campaign."""
    prepare_directory(_campaign(tmp_path))
    path = tmp_path / "run" / "campaign.yaml"
    stored = yaml.safe_load(path.read_text())
    del stored["streaming"]["max_picks_per_model"]
    del stored["selection"]["settings"]
    path.write_text(yaml.safe_dump(stored))
    prepare_directory(_campaign(tmp_path))
    # but the option set to anything else is a change
    with pytest.raises(ConfigError, match="streaming"):
        prepare_directory(
            _campaign(tmp_path, streaming={"segment_steps": 150, "max_picks_per_model": 4})
        )


def test_a_stored_file_that_no_longer_validates_is_compared_as_written(tmp_path):
    prepare_directory(_campaign(tmp_path))
    path = tmp_path / "run" / "campaign.yaml"
    stored = yaml.safe_load(path.read_text())
    stored["streaming"]["an_option_since_removed"] = 3
    path.write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigError, match="sections differing: streaming"):
        prepare_directory(_campaign(tmp_path))
