"""Group commit in the payment gateway (gateway/payments/gateway.py, "Group commit"):
charges in flight served from the socket are handled together — their intents and
outcomes written in shared transactions, provider calls not blocking the loop — and
still each taken once: limits hold under concurrency, one order is never charged
twice, a decline falls back, a timeout is unknown, and kill -9 at every point of the
grouped path (old and new) loses nothing and charges nothing twice."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from lanecore.gateway.net.auth import auth_frame
from lanecore.gateway.payments.gateway import CRASH_POINTS, PaymentGateway
from lanecore.gateway.payments.terminals import Terminals

from payfix import WECHAT_CODE, books_after_recovery, wallet, write_config

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free


@contextlib.contextmanager
def serving(d, endpoint):
    """The gateway of data directory ``d`` serving ``endpoint`` in a thread (made in
    that thread: its SQLite connection is that thread's); yields it."""
    box: dict = {}
    up = threading.Event()

    def run():
        try:
            box["gw"] = PaymentGateway(d)
            box["gw"].serve(endpoint, ready=up.set)
        except BaseException as exc:   # the test sees it
            box["error"] = exc
            up.set()
        finally:
            if "gw" in box:
                box["gw"].ledger.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert up.wait(30) and "error" not in box, box.get("error")
    try:
        yield box["gw"]
    finally:
        box["gw"].stop()
        t.join(20)


def pipelined(endpoint, reqs, window, timeout_s=30.0, sign=None) -> list[dict]:
    """Send ``reqs`` over one DEALER with ``window`` in flight; every reply, in the
    order they came. ``sign``: (terminal, key) to sign each (HMAC frame)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out, sent = [], 0
    end = time.monotonic() + timeout_s
    try:
        while len(out) < len(reqs):
            while sent < len(reqs) and sent - len(out) < window:
                payload = msgpack.packb(reqs[sent])
                if sign is None:
                    sock.send(payload)
                else:
                    sock.send_multipart([payload, auth_frame(*sign, payload)])
                sent += 1
            assert time.monotonic() < end, f"{len(out)} of {len(reqs)} replies"
            if sock.poll(100):
                out.append(msgpack.unpackb(sock.recv()))
    finally:
        sock.close(0)
    return out


def req(rid, order_no, amount, **kw):
    return {"op": "pay.charge", "id": rid, "client": "till-1", "order_no": order_no,
            "amount_minor": amount, "currency": "CNY", "method": "auth_code",
            "terminal": kw.pop("terminal", "T1"), "auth_code": WECHAT_CODE, **kw}


def gateway_dir(tmp_path, channels, **kw):
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, channels, **kw)
    return d


def test_charges_in_flight_share_commits_and_each_is_taken_once(tmp_path, providers):
    p = providers("wx", "wechat")
    d = gateway_dir(tmp_path, {"wx": wallet("wx", p.endpoint, 1)})
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    n = 160
    with serving(d, endpoint) as gw:
        replies = pipelined(endpoint, [req(f"r{i}", f"G{i:04d}", 100 + i)
                                       for i in range(n)], window=40)
        stats = dict(gw.group_stats)
    assert len(replies) == n and {r["status"] for r in replies} == {"paid"}, replies[:3]
    assert {r["id"]: r["merchant_ref"] for r in replies} == \
        {f"r{i}": f"G{i:04d}-1" for i in range(n)}
    assert p.paid() == {f"G{i:04d}-1": 100 + i for i in range(n)}
    # every intent and every outcome written, in fewer commits than one each
    assert stats["intents"] == n and stats["outcomes"] == n, stats
    assert stats["commits"] < 2 * n * 0.75, stats
    con = sqlite3.connect(d / "payments.db")
    steps = con.execute("SELECT to_state, COUNT(*) FROM charge_steps GROUP BY to_state")
    assert dict(steps) == {"created": n, "sent": n, "paid": n}
    (recorded,) = con.execute("SELECT COUNT(*) FROM service_requests").fetchone()
    assert recorded == n                            # each final reply recorded
    con.close()


@pytest.mark.parametrize("auth", ["dev", "hmac"])
def test_day_limit_holds_with_many_charges_of_one_terminal_in_flight(tmp_path, providers,
                                                                     auth):
    """30 charges of 100 from a terminal allowed 1,000 a day, all in flight at once:
    10 are taken, 20 refused TERMINAL_LIMIT — no overspend by concurrency (the
    terminal named in the request, and the terminal signing every request)."""
    p = providers("wx", "wechat")
    d = gateway_dir(tmp_path, {"wx": wallet("wx", p.endpoint, 1)},
                    pos={"auth": "hmac"} if auth == "hmac" else None)
    con = sqlite3.connect(d / "payments.db", isolation_level=None)
    _, key = Terminals(con).register("T1", max_day_minor=1000, roles="kiosk")
    con.close()
    sign = ("T1", key) if auth == "hmac" else None
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    with serving(d, endpoint):
        replies = pipelined(endpoint, [req(f"r{i}", f"L{i:03d}", 100) for i in range(30)],
                            window=30, sign=sign)
        # and again once those are paid: nothing more today
        more = pipelined(endpoint, [req(f"m{i}", f"M{i:03d}", 100) for i in range(5)],
                         window=5, sign=sign)
    paid = [r for r in replies if r["ok"] and r["status"] == "paid"]
    refused = [r for r in replies if not r["ok"]]
    assert len(paid) == 10 and len(refused) == 20, replies
    assert {r["error"]["code"] for r in refused} == {"TERMINAL_LIMIT"}
    assert sum(p.paid().values()) == 1000 and len(p.paid()) == 10
    assert all(not r["ok"] and r["error"]["code"] == "TERMINAL_LIMIT" for r in more)


def test_one_order_in_flight_twice_is_charged_once(tmp_path, providers):
    """The same order asked for at once under other ids (and the same id again) is
    charged once; each request is answered with that payment, and one for another
    amount is ORDER_MISMATCH."""
    p = providers("wx", "wechat")
    d = gateway_dir(tmp_path, {"wx": wallet("wx", p.endpoint, 1)})
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    reqs = []
    for i in range(20):
        order = f"S{i:03d}"
        reqs += [req(f"a{i}", order, 500), req(f"b{i}", order, 500), req(f"a{i}", order, 500),
                 req(f"c{i}", order, 600)]
    with serving(d, endpoint):
        replies = pipelined(endpoint, reqs, window=len(reqs))
    assert len(replies) == len(reqs)
    for i in range(20):
        mine = [r for r in replies if r["id"] in (f"a{i}", f"b{i}")]
        assert len(mine) == 3 and all(r["ok"] and r["status"] == "paid" for r in mine), mine
        assert {r["merchant_ref"] for r in mine} == {f"S{i:03d}-1"}
        (other,) = [r for r in replies if r["id"] == f"c{i}"]
        assert other["error"]["code"] == "ORDER_MISMATCH", other
    assert p.paid() == {f"S{i:03d}-1": 500 for i in range(20)}


def test_a_decline_falls_back_and_a_timeout_is_unknown_in_the_grouped_path(tmp_path,
                                                                          providers):
    a, b = providers("a", "wechat"), providers("b", "wechat")
    d = gateway_dir(tmp_path, {"first": wallet("first", a.endpoint, 1),
                               "second": wallet("second", b.endpoint, 2, timeout_s=0.5)},
                    policy={"poll_every_s": 0.2, "give_up_after_s": 30})
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    with serving(d, endpoint):
        a.conn.configure(next=["EXCEED_LIMIT", "EXCEED_LIMIT", "NOTENOUGH"])
        b.conn.configure(next=["paid", "paid"])
        r = pipelined(endpoint, [req("1", "F1", 500), req("2", "F2", 700),
                                 req("3", "F3", 900)], window=3)
        by = {x["id"]: x for x in r}
        assert {(by[k]["status"], by[k]["channel"], by[k]["attempt"]) for k in ("1", "2")} \
            == {("paid", "second", 2)}
        assert by["3"]["status"] == "failed" and by["3"]["decline_code"] == "NOTENOUGH"
        assert b.paid() == {"F1-2": 500, "F2-2": 700} and a.paid() == {}
        # the second provider answers too late: unknown (pending), then driven to
        # paid by asking it, never by charging again
        a.conn.configure(next=["EXCEED_LIMIT"])
        b.conn.configure(latency_s=1.0)
        (r,) = pipelined(endpoint, [req("4", "F4", 300)], window=1)
        assert r["status"] == "pending" and r["merchant_ref"] == "F4-2", r
        b.conn.configure(latency_s=0.0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            (r,) = pipelined(endpoint, [req("4", "F4", 300)], window=1)
            if r["status"] != "pending":
                break
            time.sleep(0.2)
        assert r["status"] == "paid" and r["merchant_ref"] == "F4-2", r
    assert b.paid() == {"F1-2": 500, "F2-2": 700, "F4-2": 300}


def test_kill_9_at_every_point_with_many_in_flight(tmp_path, providers):
    """The gateway killed with SIGKILL at random points of the grouped path (every
    point of CRASH_POINTS) while tills keep 20 charges in flight, each retried with
    its id until final: every order paid exactly once, the provider's charges the
    ledger's paid ones."""
    n = int(os.environ.get("LANECORE_PAY_CRASH_N", "200"))
    p = providers("wx", "wechat")
    d = gateway_dir(tmp_path, {"wx": wallet("wx", p.endpoint, 1)},
                    policy={"poll_every_s": 0.2, "give_up_after_s": 30})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    env = dict(os.environ, LANECORE_PAY_CRASH=",".join(f"{pt}:0.03" for pt in CRASH_POINTS))
    log = open(tmp_path / "gw.log", "w")
    state = {"proc": None, "starts": 0, "kills": 0}

    def ensure_up():
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            return False
        if proc is not None and proc.returncode == -signal.SIGKILL:
            state["kills"] += 1
        state["starts"] += 1
        env["LANECORE_PAY_CRASH_SEED"] = str(state["starts"])
        state["proc"] = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "gateway", "payments", "--dev-open", "--bind",
             endpoint, "--data-dir", str(d)], stdout=log, stderr=log, env=env)
        return True

    reqs = {f"K{i:04d}": req(f"r{i}", f"K{i:04d}", 100 + i) for i in range(n)}
    todo = list(reqs)                 # not sent on this socket yet (or to send again)
    out: dict[str, str] = {}          # order → merchant_ref paid
    flying: dict[str, float] = {}     # order → when sent
    ctx = zmq.Context.instance()
    sock = None
    deadline = time.monotonic() + 240
    try:
        while len(out) < n:
            assert time.monotonic() < deadline, f"{len(out)} of {n} final"
            if ensure_up() or sock is None:
                if sock is not None:
                    sock.close(0)
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
                todo = [o for o in reqs if o not in out]
                flying.clear()
            while todo and len(flying) < 20:
                order = todo.pop(0)
                sock.send(msgpack.packb(reqs[order]))
                flying[order] = time.monotonic()
            if sock.poll(50):
                r = msgpack.unpackb(sock.recv())
                order = r.get("order_no") or next(
                    (o for o in flying if reqs[o]["id"] == r["id"]), None)
                assert r["ok"], r
                flying.pop(order, None)
                if r["status"] == "paid":
                    out[order] = r["merchant_ref"]
                else:
                    assert r["status"] == "pending", r
                    todo.append(order)                # ask again, same id
            now = time.monotonic()
            for order, at in list(flying.items()):
                if now - at > 5:                      # lost: again, same id
                    del flying[order]
                    todo.append(order)
    finally:
        if sock is not None:
            sock.close(0)
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        log.close()
    gw, charges, ledger_paid, per_order = books_after_recovery(d, p, n)
    assert {o: per_order[o][0] for o in out} == out     # what the tills were told
    assert state["kills"] >= 5, state
    text = (tmp_path / "gw.log").read_text()
    hit = {pt: text.count(f"fault injection: SIGKILL {pt}\n") for pt in CRASH_POINTS}
    assert sum(hit.values()) == state["kills"] and sum(v > 0 for v in hit.values()) >= 3, hit
    print(f"\n{n} payments, 20 in flight, gateway started {state['starts']}×, killed -9 "
          f"{state['kills']}× {hit}; {len(charges)} charges, {len(ledger_paid)} paid")
    gw.ledger.close()
