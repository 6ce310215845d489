"""The console's test kit (tests/gateway/console/): one user of each role, logins
through the real login form, and the CSRF token a page carries."""

from __future__ import annotations

import re
import time

PASSWORD = "correct horse battery"
USERS = {"ann": "attendant", "max": "manager", "ada": "admin"}


class Clock:
    """A clock the test moves (lockout and session expiry without waiting)."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_for(predicate, what: str, timeout_s: float = 30.0):
    """Poll ``predicate`` until it returns something true (returned); an
    AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def csrf_of(html: str) -> str:
    m = re.search(r'<meta name="csrf" content="([^"]*)"', html)
    assert m, html[:500]
    return m.group(1)


def login(client, name: str, password: str = PASSWORD):
    """Log in through the form (any earlier session of this client is dropped)."""
    client.cookies.clear()
    page = client.get("/login")
    assert page.status_code == 200
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf": csrf_of(page.text)},
                       follow_redirects=False)


def route_coupons_to(monkeypatch, gw, principal) -> None:
    """Make the console's coupon Upstream call ``gw`` (a CouponGateway in this
    process) as ``principal`` — what ``--coupons`` with the console's key does over
    ZeroMQ — raising ServiceError for an error reply as the real client does."""
    import itertools

    from lanecore.gateway.console.app import Upstream
    from lanecore.gateway.net.client import ServiceError
    ids = itertools.count()

    def call(self, op, fields):
        assert self.endpoint == "test://coupons"
        r = gw.handle({"op": op, "id": f"c{next(ids)}", **fields}, "console", principal)
        if not r["ok"]:
            raise ServiceError(r["error"]["code"], r["error"]["message"], r["error"])
        return r
    monkeypatch.setattr(Upstream, "_call", call)
