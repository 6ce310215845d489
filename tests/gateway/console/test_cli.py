"""`lanecore console user add` through the real command line."""

from __future__ import annotations

import os

from clirun import lanecore
from consolefix import csrf_of
from starlette.testclient import TestClient


def _password_file(path, text="a long enough secret", mode=0o600):
    path.write_text(text + "\n", encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_user_add_then_that_user_logs_in(tmp_path):
    from lanecore.gateway.console.app import create_app
    d = tmp_path / "console"
    pw = _password_file(tmp_path / "pw")
    r = lanecore("console", "user", "add", "zoe", "--role", "manager", "--password-file",
                 pw, "--data-dir", d, "--json")
    assert '"role": "manager"' in r.stdout and "a long enough secret" not in r.stdout + \
        r.stderr
    again = lanecore("console", "user", "add", "zoe", "--role", "manager",
                     "--password-file", pw, "--data-dir", d, check=False)
    assert again.returncode == 2 and "USER_EXISTS" in again.stderr
    app = create_app(d)
    with TestClient(app) as c:
        page = c.get("/login")
        r = c.post("/login", data={"username": "zoe", "password": "a long enough secret",
                                   "csrf": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303
        assert c.get("/products").status_code == 200
        assert c.get("/staff", follow_redirects=False).status_code == 403


def test_a_bad_role_is_refused(tmp_path):
    pw = _password_file(tmp_path / "pw")
    r = lanecore("console", "user", "add", "zoe", "--role", "boss", "--password-file", pw,
                 "--data-dir", tmp_path / "c", check=False)
    assert r.returncode == 2 and "BAD_ROLE" in r.stderr
    assert not (tmp_path / "c" / "console.db").exists()


def test_a_password_file_others_can_read_is_refused(tmp_path):
    pw = _password_file(tmp_path / "pw", mode=0o644)
    r = lanecore("console", "user", "add", "zoe", "--role", "attendant", "--password-file",
                 pw, "--data-dir", tmp_path / "c", check=False)
    assert r.returncode == 2 and "BAD_PERMISSIONS" in r.stderr
    short = _password_file(tmp_path / "short", "tiny")
    r = lanecore("console", "user", "add", "zoe", "--role", "attendant", "--password-file",
                 short, "--data-dir", tmp_path / "c", check=False)
    assert r.returncode == 2 and "BAD_PASSWORD" in r.stderr
    r = lanecore("console", "user", "add", "bad name!", "--role", "attendant",
                 "--password-file", pw, "--data-dir", tmp_path / "c", check=False)
    assert r.returncode == 2 and "BAD_NAME" in r.stderr
