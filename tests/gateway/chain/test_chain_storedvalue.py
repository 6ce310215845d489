"""A member's stored value follows the member from store to store: two payment
gateways (two stores) whose ``stored_value`` channel keeps its accounts in the chain's
PostgreSQL database (``db = "postgresql://…"``, docs/pay/payments.md) — one balance
seen at once everywhere, refunds chain-wide, kill -9 between the ledger's ``sent``
and ``paid``, the chain database out of reach (``DB_UNAVAILABLE``, another tender
taken), and 20 tills over 2 stores spending one balance without overdrawing it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from lanecore.core.pay.storedvalue import StoredValue, StoredValueError
from lanecore.gateway.db.pg import connect
from lanecore.gateway.net.client import Client, ServiceError
from lanecore.gateway.payments.gateway import (CHAIN_LOCK, PaymentConfigError,
                                               PaymentGateway)

from chainfix import chain_root, pg_server, pg_url  # noqa: F401
from payfix import write_config


def start_gateway(kind: str, data_dir: Path, endpoint: str, env=None):
    """`lanecore gateway payments --dev-open` in a process, its log in a file (a
    pipe nobody reads could fill), once it answers hello (a fresh client per try)."""
    assert kind == "payments"
    log = data_dir.parent / f"{data_dir.name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", "payments",
                             "--bind", endpoint, "--data-dir", str(data_dir), "--dev-open"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=env)
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        if "serving on" in log.read_text():
            with Client(endpoint, timeout_s=2.0, retries=0) as c:
                try:
                    c.call("hello")
                    return proc
                except ServiceError:
                    pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the payment gateway did not start: {log.read_text()[-3000:]}")


def sv_channel(db: str | None, priority: int = 1) -> dict:
    t = {"kind": "stored_value", "priority": priority, "methods": ["stored_value"],
         "currency": "CNY"}
    if db is not None:
        t["db"] = db
    return t


CASH = {"kind": "cash", "priority": 5, "methods": ["cash"], "currency": "CNY"}


def store_dir(root: Path, name: str, db: str | None, **more) -> Path:
    d = root / name
    d.mkdir()
    write_config(d, {"sv": sv_channel(db), **more})
    return d


def balance(url: str, member: str) -> int:
    with psycopg.connect(url) as con:
        return con.execute("SELECT balance_minor FROM sv_accounts WHERE member = %s",
                           (member,)).fetchone()[0]


def debits(url: str) -> dict[str, int]:
    with psycopg.connect(url) as con:
        return dict(con.execute("SELECT ref, amount_minor FROM sv_moves "
                                "WHERE kind = 'debit'").fetchall())


def ledger(d: Path) -> dict[str, tuple[str, str | None]]:
    con = sqlite3.connect(d / "payments.db")
    try:
        return {r: (s, why) for r, s, why in con.execute(
            "SELECT merchant_ref, state, reason FROM charges")}
    finally:
        con.close()


def pay(c: Client, order: str, amount: int, member: str = "M-1", pin: str | None = "2468"):
    try:
        return c.call("pay.charge", order_no=order, amount_minor=amount, currency="CNY",
                      method="stored_value", terminal="T1", payer=member,
                      **({"sv_pin": pin} if pin else {}))
    except ServiceError as exc:
        return {"error": exc.code}


def test_config_db_only_on_stored_value_and_validated(tmp_path, pg_url):  # noqa: F811
    d = tmp_path / "bad"
    d.mkdir()
    write_config(d, {"cash": {**CASH, "db": pg_url}})
    with pytest.raises(PaymentConfigError, match="db is for stored_value"):
        PaymentGateway(d)
    write_config(d, {"sv": sv_channel("sqlite:///secret-place.db")})
    with pytest.raises(PaymentConfigError, match="postgresql:// URL"):
        PaymentGateway(d)
    write_config(d, {"sv": sv_channel("mysql://u:hunter2@h/db")})
    with pytest.raises(PaymentConfigError) as info:
        PaymentGateway(d)
    assert "hunter2" not in info.value.message          # the password never shown
    write_config(d, {"sv": sv_channel(pg_url), "sv2": sv_channel(None, 2)})
    with pytest.raises(PaymentConfigError, match="same place"):
        PaymentGateway(d)
    # without db: the ledger's own database, as before (nothing in PostgreSQL)
    write_config(d, {"sv": sv_channel(None)})
    gw = PaymentGateway(d)
    assert gw.sv_db == {} and gw._sv("CNY").con is gw.con
    gw.ledger.close()


def test_two_stores_one_balance_refund_chain_wide(tmp_path, pg_url):  # noqa: F811
    a = store_dir(tmp_path, "store-a", pg_url)
    b = store_dir(tmp_path, "store-b", pg_url)
    ea, eb = f"ipc://{tmp_path}/a.ipc", f"ipc://{tmp_path}/b.ipc"
    pa, pb = start_gateway("payments", a, ea), start_gateway("payments", b, eb)
    try:
        with Client(ea, timeout_s=10) as ca, Client(eb, timeout_s=10) as cb:
            ca.call("sv.open", member="M-1", currency="CNY", pin="2468")
            top = ca.call("sv.topup", member="M-1", currency="CNY", amount_minor=5000,
                          ref="SLIP-1")
            assert top["balance_minor"] == 5000
            # the account is the chain's: store B opens nothing, sees it at once
            assert cb.call("sv.balance", member="M-1", currency="CNY")["account"][
                "balance_minor"] == 5000
            r = pay(ca, "A-1", 1200)
            assert (r["status"], r["provider_ref"]) == ("paid", "sv:A-1-1"), r
            assert cb.call("sv.balance", member="M-1", currency="CNY")["account"][
                "balance_minor"] == 3800
            poor = pay(cb, "B-1", 3801)
            assert (poor["status"], poor["decline_code"]) == ("failed", "BALANCE_NOT_ENOUGH")
            wrong = pay(cb, "B-2", 100, pin="0000")
            assert (wrong["status"], wrong["decline_code"]) == ("failed", "WRONG_PASSWORD")
            ok = pay(cb, "B-3", 3800)
            assert ok["status"] == "paid", ok
            assert balance(pg_url, "M-1") == 0
            # the same order number in another store is another payment: refused, never
            # answered with store A's debit (the debit's origin is one of its terms)
            clash = pay(cb, "A-1", 1200)
            assert clash == {"error": "REF_CONFLICT"}, clash
            # a refund in store B: back onto the member's account, seen in store A
            rf = cb.call("pay.refund", order_no="B-3", refund_ref="RF-1", amount_minor=500)
            assert rf["status"] == "refunded", rf
            assert ca.call("sv.balance", member="M-1", currency="CNY")["account"][
                "balance_minor"] == 500
            assert cb.call("pay.refund", order_no="B-3", refund_ref="RF-1",
                           amount_minor=500)["status"] == "refunded"      # once
            with pytest.raises(ServiceError) as over:
                cb.call("pay.refund", order_no="B-3", refund_ref="RF-2", amount_minor=3301)
            assert over.value.code == "REFUND_EXCEEDS_PAID"
            # store A spends what store B gave back, and no more
            assert pay(ca, "A-2", 501)["decline_code"] == "BALANCE_NOT_ENOUGH"
            assert pay(ca, "A-3", 500)["status"] == "paid"
            # store A's reconciliation reads the chain's record of its debits
            today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
            rec = ca.call("recon.run", date=today)
            assert rec["local"] == ["sv"] and rec["no_bill"] == []
            assert rec["clean"] and rec["counts"]["matched"] == 2, rec   # A-1-1, A-3-1
    finally:
        for p in (pa, pb):
            p.terminate()
            p.wait(10)
    # `lanecore recon` (offline, from the ledger file) reads the chain's record too
    bills = tmp_path / "no-bills"
    bills.mkdir()
    out = subprocess.run([sys.executable, "-m", "lanecore", "recon", "--date", today,
                          "--ledger", str(a / "payments.db"), "--bills", str(bills),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["clean"] and report["counts"]["matched"] == 2, report
    assert debits(pg_url) == {"A-1-1": 1200, "B-3-1": 3800, "A-3-1": 500}
    assert balance(pg_url, "M-1") == 0
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT amount_minor FROM sv_moves WHERE ref = "
                           "'refund:RF-1'").fetchall() == [(500,)]


def test_kill_between_sent_and_paid_then_restart(tmp_path, pg_url):  # noqa: F811
    a = store_dir(tmp_path, "store-a", pg_url)
    ep = f"ipc://{tmp_path}/a.ipc"
    env = dict(os.environ, LANECORE_PAY_CRASH="after_provider:1")
    proc = start_gateway("payments", a, ep, env=env)
    with Client(ep, timeout_s=10) as c:
        c.call("sv.open", member="M-1", currency="CNY", pin="2468")
        c.call("sv.topup", member="M-1", currency="CNY", amount_minor=5000, ref="SLIP-1")
    with Client(ep, timeout_s=3, retries=0) as c:
        assert pay(c, "K-1", 1700) == {"error": "TIMEOUT"}        # killed, no answer
    assert proc.wait(10) == -signal.SIGKILL
    # the debit is in the chain database, the ledger still says sent
    assert debits(pg_url) == {"K-1-1": 1700}
    assert ledger(a)["K-1-1"][0] == "sent"
    # killed after the ledger's `sent`, before anything was debited
    env = dict(os.environ, LANECORE_PAY_CRASH="after_ledger:1")
    proc = start_gateway("payments", a, ep, env=env)
    assert ledger(a)["K-1-1"][0] == "paid"          # recovery at start: the debit is there
    with Client(ep, timeout_s=3, retries=0) as c:
        assert pay(c, "K-2", 900) == {"error": "TIMEOUT"}
    assert proc.wait(10) == -signal.SIGKILL
    assert ledger(a)["K-2-1"][0] == "sent"
    proc = start_gateway("payments", a, ep)
    try:
        got = ledger(a)
        assert got["K-1-1"] == ("paid", None)
        assert got["K-2-1"] == ("failed", "NOT_SENT")   # nothing debited: failed, and
        with Client(ep, timeout_s=10) as c:              # ... the ref can never be debited
            again = pay(c, "K-1", 1700)                  # the till asks again: no new debit
            assert (again["status"], again["merchant_ref"]) == ("paid", "K-1-1")
            st = c.call("pay.status", order_no="K-2")
            assert st["status"] == "failed"
            assert pay(c, "K-2", 900)["status"] == "paid"     # a new attempt: K-2-2
        chain = StoredValue(connect(pg_url, lock_key=CHAIN_LOCK), "CNY")
        with pytest.raises(StoredValueError) as late:         # a debit still on its way
            chain.debit("M-1", 900, ref="K-2-1", pin="2468")
        assert late.value.code == "REF_CONFLICT" and late.value.details["voided"]
        chain.con.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert debits(pg_url) == {"K-1-1": 1700, "K-2-2": 900}
    assert balance(pg_url, "M-1") == 5000 - 1700 - 900


def test_chain_database_unreachable_refuses_and_another_tender_pays(tmp_path, pg_url):  # noqa: F811
    from lanecore.core.pay.cash import Drawer
    from lanecore.gateway.db.relay import Relay
    parts = urlsplit(pg_url)
    relay = Relay(parts.port).start()
    via = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}",
                                                                f":{relay.port}")))
    d = store_dir(tmp_path, "store-a", via, cash=CASH)
    gw = PaymentGateway(d)

    def call(op, rid, **f):
        return gw.handle({"op": op, "id": rid, **f}, client="till-1")

    def sv_pay(rid, order, amount):
        return call("pay.charge", rid, order_no=order, amount_minor=amount, currency="CNY",
                    method="stored_value", terminal="T1", payer="M-1")
    try:
        Drawer(gw.con, drawer_id="T1", currency="CNY").float_in({100: 5}, ref="open")
        assert call("sv.open", "o", member="M-1", currency="CNY")["ok"]
        assert call("sv.topup", "t", member="M-1", currency="CNY", amount_minor=3000,
                    ref="S-1")["ok"]
        assert sv_pay("1", "U-1", 1000)["status"] == "paid"
        relay.cut()                                   # the link to HQ's database is down
        down = sv_pay("2", "U-2", 1000)
        assert (down["status"], down["decline_code"]) == ("failed", "DB_UNAVAILABLE"), down
        assert ledger(d)["U-2-1"] == ("failed", "DB_UNAVAILABLE")   # nothing half done
        assert gw.ledger.open_charges() == []
        assert call("sv.balance", "b", member="M-1", currency="CNY")["error"]["code"] == \
            "DB_UNAVAILABLE"
        cash = call("pay.charge", "3", order_no="U-2", amount_minor=1000, currency="CNY",
                    method="cash", terminal="T1", cash={"tendered": {"1000": 1}})
        assert cash["status"] == "paid", cash                    # the shopper paid cash
        relay.restore()
        assert sv_pay("4", "U-3", 1000)["status"] == "paid"      # back: served again
    finally:
        gw.ledger.close()
        relay.cut()
    assert debits(pg_url) == {"U-1-1": 1000, "U-3-1": 1000}
    assert balance(pg_url, "M-1") == 1000


def test_twenty_tills_over_two_stores_never_overdraw(tmp_path, pg_url):  # noqa: F811
    a = store_dir(tmp_path, "store-a", pg_url)
    b = store_dir(tmp_path, "store-b", pg_url)
    ends = {"a": f"ipc://{tmp_path}/a.ipc", "b": f"ipc://{tmp_path}/b.ipc"}
    procs = [start_gateway("payments", a, ends["a"]),
             start_gateway("payments", b, ends["b"])]
    start = 10_000
    try:
        with Client(ends["a"], timeout_s=10) as c:
            c.call("sv.open", member="M-7", currency="CNY")
            c.call("sv.topup", member="M-7", currency="CNY", amount_minor=start, ref="S-7")
        results: list[dict] = []
        lock = threading.Lock()
        go = threading.Barrier(20)

        def till(i: int) -> None:
            store = "ab"[i % 2]
            with Client(ends[store], timeout_s=20, retries=0) as c:
                go.wait()
                for k in range(3):
                    r = pay(c, f"{store.upper()}{i}-{k}", 700 + 10 * i, member="M-7",
                            pin=None)
                    with lock:
                        results.append(r)
        threads = [threading.Thread(target=till, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    assert len(results) == 60 and all("status" in r for r in results), results
    paid = {r["merchant_ref"]: r["amount_minor"] for r in results if r["status"] == "paid"}
    refused = [r for r in results if r["status"] != "paid"]
    assert all(r["decline_code"] == "BALANCE_NOT_ENOUGH" for r in refused), refused
    assert paid and refused                      # the balance ran out under contention
    assert debits(pg_url) == paid                # one debit per paid charge, no other
    assert sum(paid.values()) <= start
    assert balance(pg_url, "M-7") == start - sum(paid.values())
    both = {**{r: s for r, (s, _) in ledger(a).items()},
            **{r: s for r, (s, _) in ledger(b).items()}}
    assert {r for r, s in both.items() if s == "paid"} == set(paid)
    # what was left is less than the cheapest refused payment: nothing was refused
    # that the balance could have paid at the end
    assert balance(pg_url, "M-7") < min(r["amount_minor"] for r in refused)
