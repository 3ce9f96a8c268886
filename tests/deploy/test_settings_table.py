"""The settings table (tests/deploy/contract.py) and the app read the same settings, with the same ranges."""

from __future__ import annotations

import pytest

from tests.deploy.contract import RANGED, SETTINGS, app_setting_names, is_platform, load_app_settings, refused


def test_the_table_and_the_app_read_the_same_settings():
    app = set(app_setting_names())
    assert app == set(SETTINGS), (
        f"the app reads settings the table lacks: {sorted(app - set(SETTINGS))}; "
        f"the table has settings the app does not read: {sorted(set(SETTINGS) - app)}"
    )
    assert not any(is_platform(n) for n in SETTINGS), "an app setting looks like a platform one"


@pytest.mark.parametrize("name", RANGED)
def test_the_app_accepts_exactly_the_table_range(name):
    """Loads the app's own settings at and past each bound: the table (and so Bicep) match the app."""
    setting = SETTINGS[name]
    related = {"SAS_TTL_MAX_MINUTES": str(SETTINGS["SAS_TTL_MAX_MINUTES"].high)} if name == "SAS_TTL_MINUTES" else {}
    assert setting.low is not None and setting.high is not None
    assert not refused(name, str(setting.low), **related)
    assert not refused(name, str(setting.high), **related)
    assert refused(name, str(setting.low - 1), **related)
    assert refused(name, str(setting.high + 1), **related)


def test_the_app_accepts_the_table_defaults():
    defaults = {n: s.default for n, s in SETTINGS.items() if s.default is not None}
    assert load_app_settings(**defaults)
    for name in ("AZURE_OPENAI_API_VERSION", "RUN_EVENTS"):
        for choice in SETTINGS[name].choices:
            assert not refused(name, choice)
        assert refused(name, "2025-04-01-preview")
