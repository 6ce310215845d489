"""A POS terminal changed at HQ (``terminal.set``) is in force in the stores within
2 s: disabled in one store only, limits changed in every store that has it
(issue 16, Build 2: HQ publishes terminal changes every store applies live).

Real PostgreSQL and nats-server (fixtures), `lanecore hq` with its ops, two stores'
`lanecore link`, each store's payment gateway registry (``payments.db``, which the
gateway reads on every request) made with the registry code `lanecore terminal add`
uses. What the test reads is that registry."""

from __future__ import annotations

import time

import pytest

from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import start_hq, start_link, stop, wait_for
from lanecore.gateway.net.client import Client, ServiceError
from lanecore.gateway.payments.terminals import open_registry

pytestmark = pytest.mark.kernel_free

DEADLINE_S = 2.0          # the line: in force in every store within 2 s
STORES = ("t1", "t2")


def _terminal(d, tid="POS-1"):
    con, reg = open_registry(d / "payments.db", readonly=True)
    try:
        return reg.get(tid)
    finally:
        con.close()


def test_hq_terminal_changes_reach_the_stores_registries(tmp_path, pg_url,  # noqa: F811
                                                         nats_server):  # noqa: F811
    hq_ep = f"ipc://{tmp_path}/hq.ipc"
    hq = start_hq(pg_url, nats_server.url, tmp_path, bind=hq_ep)
    procs = []
    dirs = {}
    try:
        for sid in STORES:
            d = dirs[sid] = tmp_path / sid
            d.mkdir()
            con, reg = open_registry(d / "payments.db")
            try:
                reg.register("POS-1", max_payment_minor=50_000, methods=["card"])
            finally:
                con.close()
            procs.append(start_link(sid, d, nats_server.url))
        with Client(hq_ep, timeout_s=5, retries=1) as h:
            # disabled in t2 only
            r = h.call("terminal.set", terminal_id="POS-1", store="t2", enabled=False)
            assert r["store"] == "t2" and r["enabled"] is False and r["change_id"] > 0
            wait_for(lambda: _terminal(dirs["t2"]).disabled_at is not None,
                    DEADLINE_S, "POS-1 disabled in t2")
            time.sleep(0.3)            # t1 had as long to apply it, and must not have
            assert _terminal(dirs["t1"]).disabled_at is None
            # limits in every store
            h.call("terminal.set", terminal_id="POS-1",
                   limits={"max_payment_minor": 20_000, "max_day_minor": 100_000,
                           "methods": ["card", "auth_code"]})
            for sid in STORES:
                wait_for(lambda sid=sid: _terminal(dirs[sid]).max_payment_minor == 20_000,
                        DEADLINE_S, f"POS-1's limits in {sid}")
                t = _terminal(dirs[sid])
                assert (t.max_day_minor, sorted(t.methods)) == (100_000,
                                                                ["auth_code", "card"])
            assert _terminal(dirs["t2"]).disabled_at is not None and \
                _terminal(dirs["t1"]).disabled_at is None
            # enabled again; a terminal a store does not have changes nothing there
            h.call("terminal.set", terminal_id="POS-1", store="t2", enabled=True)
            wait_for(lambda: _terminal(dirs["t2"]).disabled_at is None,
                    DEADLINE_S, "POS-1 enabled in t2")
            h.call("terminal.set", terminal_id="POS-9", enabled=False)
            for bad in ({"terminal_id": "POS-1"},
                        {"terminal_id": "POS-1", "limits": {"max_payment_minor": -1}},
                        {"terminal_id": "POS-1", "limits": {"colour": "red"}}):
                with pytest.raises(ServiceError) as e:
                    h.call("terminal.set", **bad)
                assert e.value.code == "BAD_FIELD"
        time.sleep(0.3)
        for sid in STORES:
            assert _terminal(dirs[sid], "POS-9") is None
            assert _terminal(dirs[sid]).max_payment_minor == 20_000
    finally:
        for p in procs:
            stop(p)
        stop(hq)
