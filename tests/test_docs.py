"""The README's configuration table is the settings objects' own description, so it cannot drift from the code."""
from __future__ import annotations

from core.settings import Settings, TrainingConfig
from tests.helpers import repo_root


def test_every_setting_is_documented_in_the_readme_as_the_code_describes_it():
    readme = (repo_root() / "README.md").read_text(encoding="utf-8")
    missing = [line for config in (Settings, TrainingConfig) for line in config.describe().splitlines() if line not in readme]
    assert not missing, "README.md is out of date; paste `python -m backend settings`:\n" + "\n".join(missing)
