"""Logins, sessions, lockout, roles and CSRF of the console (Starlette's TestClient
against the app; console.db on disk)."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from consolefix import PASSWORD, csrf_of, login
from starlette.testclient import TestClient

from lanecore.gateway.console import auth
from lanecore.gateway.console.app import PAGES


def test_healthz_and_login_logout(make_app, tmp_path):
    app, _clock = make_app()
    with TestClient(app) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["ok"] is True
        # not logged in: every page sends to /login
        for path, _t, _r in PAGES:
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/login", path
        page = c.get("/login")
        assert 'name="username"' in page.text and 'name="password"' in page.text
        assert 'data-testid="login-submit"' in page.text
        r = login(c, "ann")
        assert r.status_code == 303 and r.headers["location"] == "/lanes"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        lanes = c.get("/lanes")
        assert lanes.status_code == 200 and 'data-testid="whoami"' in lanes.text
        token = c.cookies.get("lanecore_session")
        # the database keeps no session token, only its digest
        con = sqlite3.connect(tmp_path / "console" / "console.db")
        assert not con.execute("SELECT 1 FROM sessions WHERE token_sha256 = ?",
                               (token,)).fetchone()
        assert con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
        r = c.post("/logout", data={"csrf": csrf_of(lanes.text)}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
        # the old token is worth nothing
        c.cookies.set("lanecore_session", token)
        assert c.get("/lanes", follow_redirects=False).status_code == 303
        acts = [r[0] for r in con.execute("SELECT action FROM actions WHERE staff = 'ann' "
                                          "ORDER BY action_id")]
        assert acts == ["login", "logout"]
        con.close()
    mode = stat.S_IMODE(os.stat(tmp_path / "console" / "console.db").st_mode)
    assert mode == 0o600


def test_the_login_form_needs_its_csrf_token(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        c.get("/login")
        r = c.post("/login", data={"username": "ann", "password": PASSWORD},
                   follow_redirects=False)
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        assert 'data-code="CSRF"' in r.text
        assert c.get("/lanes", follow_redirects=False).status_code == 303


def test_wrong_passwords_lock_the_name_with_growing_waits(make_app):
    app, clock = make_app()
    with TestClient(app) as c:
        for i in range(auth.FREE_FAILURES):
            r = login(c, "ann", "wrong password")
            assert r.status_code == 401 and r.headers["x-error-code"] == "BAD_LOGIN", i
        r = login(c, "ann", "wrong password")        # past the free ones: locked
        assert r.headers["x-error-code"] == "BAD_LOGIN"
        first = app.state.staff.lock_state("ann")["locked_until"] - clock.t
        assert first == auth.LOCK_BASE_S
        r = login(c, "ann")                          # even the right password
        assert r.status_code == 429 and r.headers["x-error-code"] == "LOCKED"
        assert 'data-code="LOCKED"' in r.text
        assert c.get("/lanes", follow_redirects=False).status_code == 303
        # another name is not slowed
        assert login(c, "max").status_code == 303
        c.cookies.clear()
        clock.t += first + 1                         # the wait is over; one more wrong
        assert login(c, "ann", "wrong again").headers["x-error-code"] == "BAD_LOGIN"
        second = app.state.staff.lock_state("ann")["locked_until"] - clock.t
        assert second == 2 * first                   # backoff: the wait doubles
        clock.t += second + 1
        assert login(c, "ann").status_code == 303    # then the right one gets in
        assert app.state.staff.lock_state("ann")["failures"] == 0
        # an unknown name is answered and locked the same way
        for _ in range(auth.FREE_FAILURES + 1):
            assert login(c, "nobody", "x" * 9).headers["x-error-code"] == "BAD_LOGIN"
        assert login(c, "nobody", "x" * 9).headers["x-error-code"] == "LOCKED"
        rows = app.state.staff.actions(staff="ann")
        assert {"BAD_LOGIN", "LOCKED", "ok"} <= {a["result"] for a in rows}


@pytest.mark.parametrize("name,role", [("ann", "attendant"), ("max", "manager"),
                                       ("ada", "admin")])
def test_each_role_sees_only_its_pages(make_app, name, role):
    app, _ = make_app()
    with TestClient(app) as c:
        assert login(c, name).status_code == 303
        nav = c.get("/lanes").text
        for path, _title, least in PAGES:
            allowed = auth.role_rank(role) >= auth.role_rank(least)
            r = c.get(path, follow_redirects=False)
            if allowed:
                assert r.status_code == 200, (role, path)
                assert f'href="{path}"' in nav, (role, path)
            else:
                assert r.status_code == 403, (role, path)
                assert r.headers["x-error-code"] == "FORBIDDEN"
                assert f'href="{path}"' not in nav, (role, path)


def test_a_post_without_the_csrf_token_is_refused(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        login(c, "ada")
        page = c.get("/staff")
        r = c.post("/staff", data={"name": "eve", "role": "admin", "password": "p" * 12})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        r = c.post("/staff", data={"name": "eve", "role": "admin", "password": "p" * 12,
                                   "csrf": "not-the-token"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        assert app.state.staff.user("eve") is None
        r = c.post("/alarms/resolve", data={"lane": "L1", "order_no": "O-1",
                                            "action": "ack"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        r = c.post("/staff", data={"name": "eve", "role": "attendant",
                                   "password": "p" * 12, "csrf": csrf_of(page.text)})
        assert r.status_code == 200 and 'data-testid="staff-added"' in r.text
        assert app.state.staff.user("eve")["role"] == "attendant"
        results = [a["result"] for a in app.state.staff.actions(staff="ada")]
        assert results.count("CSRF") == 3 and "ok" in results


def test_an_attendant_cannot_reach_a_manager_page_or_post(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        login(c, "ann")
        token = csrf_of(c.get("/lanes").text)
        for path in ("/products", "/members", "/analytics", "/staff",
                     "/analytics/sales.csv"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN", path
        r = c.post("/staff", data={"name": "mallory", "role": "admin",
                                   "password": "p" * 12, "csrf": token})
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
        assert app.state.staff.user("mallory") is None
        r = c.get("/staff", headers={"accept": "application/json"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"


def test_the_language_is_kept_per_user(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        login(c, "ann")
        page = c.get("/lanes")
        assert 'data-testid="lang-switch"' in page.text and "Lanes" in page.text
        r = c.post("/lang", data={"lang": "zh_Hans", "csrf": csrf_of(page.text),
                                  "next": "/alarms"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/alarms"
        page = c.get("/lanes")
        assert 'lang="zh-Hans"' in page.text and "通道" in page.text
        assert ">Lanes<" not in page.text
        r = c.post("/lang", data={"lang": "xx", "csrf": csrf_of(page.text)})
        assert r.status_code == 400
    with TestClient(app) as c:         # another browser: the user's language follows
        login(c, "ann")
        assert "通道" in c.get("/lanes").text
        assert app.state.staff.user("ann")["lang"] == "zh_Hans"
