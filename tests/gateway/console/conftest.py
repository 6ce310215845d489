"""The console's fixtures: an app over a temporary data directory with one user of
each role (tests/helpers/consolefix.py has the helpers)."""

from __future__ import annotations

import pytest
from consolefix import PASSWORD, USERS, Clock


@pytest.fixture
def make_app(tmp_path):
    """make_app(**create_app kwargs) -> (app, clock); users ann, max, ada."""
    from lanecore.gateway.console import auth
    from lanecore.gateway.console.app import create_app

    def make(**kw):
        clock = kw.pop("clock", None) or Clock()
        d = kw.pop("data_dir", tmp_path / "console")
        app = create_app(d, clock=clock, **kw)
        staff: auth.StaffDB = app.state.staff
        for name, role in USERS.items():
            if staff.user(name) is None:
                staff.add_user(name, role, PASSWORD)
        return app, clock
    return make
