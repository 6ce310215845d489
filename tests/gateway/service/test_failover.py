"""Kill -9 a worker under load: clients retry, the worker is respawned, no item is added
twice and no acknowledged verdict is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from lanecore.gateway.net.client import Client, CurveKeys


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def _wait_for_workers(pid: int, n: int, timeout_s: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = _children(pid)
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"broker {pid} has {len(_children(pid))} workers, want {n}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "curve"])
def test_kill_9_workers_under_load(serve, mode):
    """Plain, and under CurveZMQ, where the broker tells each worker who sent each
    request (an enrolled admin identity here): retries still meet their replies."""
    served = serve("--workers", "2", curve_roles="admin" if mode == "curve" else None)
    curve = CurveKeys(*served.curve) if served.curve else None
    items = served.items(400)
    codes = [it["gtin"] for it in items]
    weights = {it["gtin"].rjust(14, "0"): float(it["unit_weight_g"]) for it in items}
    stop = threading.Event()
    acked_adds: list[str] = []
    acked_verdicts: list[dict] = []
    errors: list[BaseException] = []
    retried: dict[str, int] = {}

    # an order to verify again and again at two gates
    with Client(served.endpoint, client_id="setup", curve=curve, retries=40, timeout_s=1.0) as c:
        basket = c.basket_open("HH-1")["basket"]["basket_id"]
        c.basket_add(basket, codes[:3])
        order = c.basket_submit(basket)
    expected = sum(weights[line["gtin"]] * line["qty"] for line in order["lines"])

    def adder():
        try:
            with Client(served.endpoint, client_id="adder", curve=curve, retries=60, timeout_s=0.5,
                        backoff_s=0.05) as c:
                b = c.basket_open("HH-2")["basket"]["basket_id"]
                acked_adds.append(b)
                for code in codes[3:]:
                    if stop.is_set():
                        break
                    c.basket_add(b, [code])         # one new item per request
                    acked_adds.append(code)
                retried["adder"] = c.counters["retries"] + c.counters["unavailable"]
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    def verifier():
        try:
            with Client(served.endpoint, client_id="gate", curve=curve, retries=60, timeout_s=0.5,
                        backoff_s=0.05) as c:
                k = 0
                while not stop.is_set():
                    gate = f"EXIT-{k % 2}"
                    v = c.verify_order(gate, order_no=order["order_no"],
                                       measured_g=expected + (k % 7) - 3)
                    acked_verdicts.append(v)
                    k += 1
                retried["gate"] = c.counters["retries"] + c.counters["unavailable"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=adder), threading.Thread(target=verifier)]
    for t in threads:
        t.start()
    broker = served.proc.pid
    kills = 0
    rng_pick = 0
    deadline = time.monotonic() + 25
    while kills < 4 and time.monotonic() < deadline:
        time.sleep(0.6)
        workers = _wait_for_workers(broker, 2)
        victim = workers[rng_pick % len(workers)]
        rng_pick += 1
        os.kill(victim, signal.SIGKILL)
        kills += 1
        # wait until it is replaced before the next kill
        t0 = time.monotonic()
        while victim in _children(broker) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        _wait_for_workers(broker, 2)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert kills == 4
    assert sum(retried.values()) > 0, retried     # the clients did have to retry
    assert served.proc.poll() is None          # the broker itself lived through it

    basket_id, added = acked_adds[0], acked_adds[1:]
    assert len(added) > 20 and len(acked_verdicts) > 20
    with Client(served.endpoint, client_id="check", curve=curve, retries=40, timeout_s=1.0) as c:
        lines = c.basket_get(basket_id)["basket"]["lines"]
    # every acknowledged item exactly once; at most the one in flight at the end beyond
    got = [line["gtin"] for line in lines]
    assert all(line["qty"] == 1 for line in lines)
    assert len(got) == len(set(got))
    want = [code.rjust(14, "0") for code in added]
    assert got[:len(want)] == want and len(got) - len(want) <= 1

    # every acknowledged verdict is in the store, once
    con = sqlite3.connect(served.data_dir / "store.db")
    rows = con.execute("SELECT gate, measured_g, verdict FROM verdicts WHERE order_no = ? "
                       "ORDER BY verdict_id", (order["order_no"],)).fetchall()
    con.close()
    acked = [(round(v["measured_g"], 1), v["verdict"]) for v in acked_verdicts]
    stored = [(round(m, 1), v) for _, m, v in rows]
    assert stored[:len(acked)] == acked and len(stored) - len(acked) <= 1
    assert all(v["verdict"] == "ok" for v in acked_verdicts)
