"""Every op of every process declares who may call it, and the documents say the same:
the OP_ROLES table of each process names exactly the ops it registers, a server with an
op missing from its table refuses to start, and docs/security.md and docs/protocol.md
carry each table as the code has it."""

from __future__ import annotations

import re
import sqlite3

import pytest
from repo import REPO

from lanecore.gateway import coupons, service
from lanecore.gateway.chain import hq
from lanecore.gateway.net.identity import ANY, DEV, ROLES, Principal, declare, roles
from lanecore.gateway.net.protocol import Field
from lanecore.gateway.net.server import PURE, STATEFUL, OpServer
from lanecore.gateway.payments import gateway as payments

pytestmark = pytest.mark.kernel_free

PROCESSES = {
    "Verification service (`lanecore serve`)": (service, REPO / "gateway" / "service.py"),
    "Payment gateway (`lanecore gateway payments`)":
        (payments, REPO / "gateway" / "payments" / "gateway.py"),
    "Coupon gateway (`lanecore gateway coupons`)": (coupons, REPO / "gateway" / "coupons.py"),
    "HQ (`lanecore hq`)": (hq, REPO / "gateway" / "chain" / "hq.py"),
}


def _registered_ops(path) -> list[str]:
    """The op names an ``_ops()`` list registers: ``("name", self.op_…``."""
    return re.findall(r'\(\s*"([a-z][a-z.]*)",\s*self\.op_', path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("title", list(PROCESSES))
def test_every_registered_op_has_roles_and_no_table_entry_is_stale(title):
    module, path = PROCESSES[title]
    ops = _registered_ops(path)
    least = 7 if module is hq else 10          # HQ: prices, promotions, its books
    assert len(ops) >= least and len(set(ops)) == len(ops), ops
    assert set(module.OP_ROLES) == set(ops), (set(ops) ^ set(module.OP_ROLES))
    for op, allowed in module.OP_ROLES.items():
        assert allowed and allowed <= set(ROLES), op
        assert op == "hello" or op == "health" or allowed != ANY, \
            f"{op} is open to every role: say who needs it"


class _Two(OpServer):
    def __init__(self, table):
        self.table = table
        super().__init__(sqlite3.connect(":memory:", isolation_level=None))

    def _ops(self):
        return declare([("hello", lambda f: {"hi": 1}, {}, PURE),
                        ("stats", lambda f: {"n": 2}, {}, PURE)], self.table)


def test_a_server_with_an_op_missing_from_its_table_does_not_start():
    with pytest.raises(TypeError, match="ops without roles"):
        _Two({"hello": ANY})
    with pytest.raises(TypeError, match="roles for no op"):
        _Two({"hello": ANY, "stats": roles("hq"), "gone": roles("hq")})


class _Bare(OpServer):
    def _ops(self):
        return [("hello", lambda f: {}, {}, PURE)]


def test_an_op_entry_without_roles_does_not_start():
    with pytest.raises(TypeError, match="declares no roles"):
        _Bare(sqlite3.connect(":memory:", isolation_level=None))


def test_roles_are_enforced_by_the_envelope():
    srv = _Two({"hello": ANY, "stats": roles("hq")})
    pos = Principal("pos:T1", frozenset({"pos"}), "hmac")
    hq = Principal("pos:HQ", frozenset({"hq"}), "hmac")
    admin = Principal("key:boss", frozenset({"admin"}), "curve")
    assert srv.handle({"op": "hello", "id": 1}, "c", pos)["ok"]
    r = srv.handle({"op": "stats", "id": 2}, "c", pos)
    assert r["ok"] is False and r["error"]["code"] == "FORBIDDEN"
    assert r["error"]["details"] == {"op": "stats", "roles": ["hq"]}
    assert srv.handle({"op": "stats", "id": 3}, "c", hq)["n"] == 2
    assert srv.handle({"op": "stats", "id": 4}, "c", admin)["n"] == 2
    assert srv.handle({"op": "stats", "id": 5}, "c", DEV)["n"] == 2   # dev: every role


def _doc_table(doc: str, title: str) -> dict[str, frozenset[str]]:
    section = re.split(r"^### (?:Roles: )?" + re.escape(title) + r"\s*$", doc,
                       flags=re.M)[1]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"^\| `([a-z.]+)` \| ([^|]+) \|$", line)
        if m:
            cell = m.group(2).strip()
            rows[m.group(1)] = ANY if cell == "any" else frozenset(
                x.strip() for x in cell.split(","))
    return rows


@pytest.mark.parametrize("doc", ["security.md", "protocol.md"])
@pytest.mark.parametrize("title", list(PROCESSES))
def test_the_documented_tables_are_the_code_s(doc, title):
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    assert _doc_table(text, title) == dict(PROCESSES[title][0].OP_ROLES)


class _Frames(OpServer):
    def _ops(self):
        return declare([("frame", lambda f: {"n": f["n"]}, {"n": Field("int")}, STATEFUL)],
                       {"frame": roles("lane")})


def test_remembered_replies_survive_pruning_and_a_changed_retry_is_refused(monkeypatch):
    """In-memory replies (a weighing frame's) carry their digest; pruning reads them
    (it once expected the old two-field entries and killed the loop after a minute)."""
    import time as _time
    srv = _Frames(sqlite3.connect(":memory:", isolation_level=None))
    lane = Principal("key:lane-a", frozenset({"lane"}), "curve")
    first = srv.handle({"op": "frame", "id": 1, "n": 7}, "c", lane)
    assert first["n"] == 7
    srv.prune()                                     # a fresh reply stays
    assert srv.handle({"op": "frame", "id": 1, "n": 7}, "c", lane) == first
    assert srv.handle({"op": "frame", "id": 1, "n": 8}, "c", lane)["error"]["code"] == \
        "IDEMPOTENCY_MISMATCH"
    later = _time.monotonic() + 601.0               # past the replay window: forgotten
    monkeypatch.setattr(_time, "monotonic", lambda: later)
    srv.prune()
    assert srv._replies == {}
    assert srv.handle({"op": "frame", "id": 1, "n": 8}, "c", lane)["n"] == 8
