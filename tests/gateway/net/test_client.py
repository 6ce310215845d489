"""The client library (lanecore.gateway.net.client) against real services: `lanecore serve`
in a subprocess (the `serve` fixture, or `_launch` below where the fixture's plain
readiness probe cannot work: CurveZMQ, and a service that must not be up yet), and a
bare pyzmq ROUTER where a test needs to see exactly what goes over the wire."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from lanecore.core.errors import LanecoreError
from lanecore.gateway.net.client import AsyncClient, Client, CurveKeys, ServiceError

# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------


def _frames(lane_weight_g: float, n_frames: int, *, n: int = 50, seed: int = 0):
    """Load-cell frames (grams) of one weight at rest, with 0.3 g of noise."""
    rng = np.random.default_rng(seed)
    return [lane_weight_g + rng.normal(0.0, 0.3, n) for _ in range(n_frames)]


def _settle(client, lane: str, weight_g: float, *, seq0: int = 0, n_frames: int = 12):
    """Feed a lane frames of ``weight_g`` until it settles; every frame's events."""
    events = []
    for k, x in enumerate(_frames(weight_g, n_frames, seed=seq0)):
        events += client.weigh_frame(lane, seq0 + k, samples=x)["events"]
    return events


@dataclass
class _Proc:
    endpoint: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path


@pytest.fixture
def launch(tmp_path, store_template):
    """launch(*args, data_dir=None, wait=True): `lanecore serve` on a copy of the store,
    ready when it says it serves (no request needed, so it works with --curve)."""
    procs: list[_Proc] = []

    def start(*args, data_dir: Path | None = None, wait: bool = True,
              endpoint: str | None = None) -> _Proc:
        k = len(procs)
        d = data_dir or tmp_path / f"ldata{k}"
        if not d.exists():
            shutil.copytree(store_template[0], d)
        endpoint = endpoint or f"ipc://{tmp_path}/l{k}.ipc"
        log = tmp_path / f"launch{k}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "serve", "--bind", endpoint, "--events",
             f"ipc://{tmp_path}/l{k}-events.ipc", "--data-dir", str(d), *map(str, args)],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        p = _Proc(endpoint, d, proc, log)
        procs.append(p)
        if wait:
            deadline = time.monotonic() + 90
            while b"lanecore serving on" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service did not start: {log.read_text()[-3000:]}")
                time.sleep(0.05)
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


class _Stub:
    """A bare ROUTER that records every request and answers with ``script(req, n)``
    (a list of reply maps to send, or None for silence)."""

    def __init__(self, endpoint: str, script):
        self.endpoint, self.script = endpoint, script
        self.seen: list[tuple[bytes, dict, float]] = []   # (routing id, request, when)
        self._stop = threading.Event()
        ctx = zmq.Context.instance()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, payload = self.sock.recv_multipart()
            req = msgpack.unpackb(payload, raw=False)
            self.seen.append((ident, req, time.monotonic()))
            for reply in self.script(req, len(self.seen)) or []:
                self.sock.send_multipart([ident, msgpack.packb(reply, use_bin_type=True)])

    def close(self):
        self._stop.set()
        self.thread.join()
        self.sock.close(0)


@pytest.fixture
def stub(tmp_path):
    made = []

    def make(script):
        s = _Stub(f"ipc://{tmp_path}/stub{len(made)}.ipc", script)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def _ok(req, **fields):
    return {"id": req["id"], "ok": True, **fields}


def _err(req, code, **fields):
    return {"id": req["id"], "ok": False, "error": {"code": code, "message": code, **fields}}


# ----------------------------------------------------------------------------------
# Every op against one real service
# ----------------------------------------------------------------------------------


def test_every_op_and_a_basket_journey(serve):
    s = serve()
    items = s.items(4)
    with Client(s.endpoint, timeout_s=5.0) as c:
        hello = c.hello()
        assert hello["protocol"] == 1 and "verify.order" in hello["capabilities"]
        assert "id" not in hello and "ok" not in hello

        got = c.scan("L1", items[0]["gtin"])
        assert got["item"]["gtin"] == got["scan"]["gtin"] == items[0]["gtin"].zfill(14)
        assert got["item"]["price_minor"] == int(items[0]["price_minor"])
        assert c.scan("L1", items[0]["gtin"], region="GB")["scan"]["ok"] is True
        batch = c.scan_batch("L1", [items[1]["gtin"], "5901234123458"])["results"]
        assert batch[0]["ok"] is True and batch[1]["error"]["code"] == "BAD_CHECK_DIGIT"

        # the basket journey: open, add a batch, remove, get, submit
        basket = c.basket_open("HH07", member="M-42")["basket"]
        bid = basket["basket_id"]
        assert basket["status"] == "open" and basket["member"] == "M-42"
        added = c.basket_add(bid, [items[0]["gtin"], {"code": items[1]["gtin"], "qty": 3},
                                   items[2]["gtin"]])["basket"]
        assert added["n_items"] == 5 and len(added["lines"]) == 3
        by_gtin = {ln["gtin"]: ln for ln in added["lines"]}
        left = c.basket_remove(bid, [{"line_no": by_gtin[items[1]["gtin"].zfill(14)]
                                      ["line_no"], "qty": 1},
                                     items[2]["gtin"].zfill(14)])["basket"]
        assert left["n_items"] == 3 and len(left["lines"]) == 2
        assert c.basket_get(bid)["basket"] == left
        order = c.basket_submit(bid)
        assert order["status"] == "submitted" and order["basket_id"] == bid
        assert order["order_no"] and order["qr"].startswith("LCO1.")
        assert order["total_minor"] == left["total_minor"] and order["n_items"] == 3

        # a lane: configure, frames until it settles, then verify with measured_g
        # omitted (the lane's settled weight is used)
        expected_g = float(items[0]["unit_weight_g"]) + 2 * float(items[1]["unit_weight_g"])
        cfg = c.weigh_config("EXIT1", fs_hz=1000, e_g=5)
        assert cfg["lane"] == "EXIT1" and cfg["config"]["fs_hz"] == 1000
        events = _settle(c, "EXIT1", expected_g)
        settled = [e for e in events if e["event"] == "settled"]
        assert settled and abs(settled[-1]["weight_g"] - expected_g) < 1.0
        verdict = c.verify_order("EXIT1", order_no=order["order_no"])
        assert verdict["verdict"] == "ok" and verdict["order_no"] == order["order_no"]
        assert abs(verdict["measured_g"] - expected_g) < 1.0
        by_qr = c.verify_order("EXIT1", order_qr=order["qr"], measured_g=expected_g + 400)
        assert by_qr["verdict"] == "over" and by_qr["order_status"] == "submitted"

        # raw counts (a noisy ADC: a constant one would be a stuck-ADC fault): numpy
        # int arrays or lists, packed as int32
        c.weigh_config("EXIT2", counts_per_g=10, zero_counts=1000)
        out = {}
        for k, x in enumerate(_frames(500.0, 12)):
            out = c.weigh_frame("EXIT2", k, counts=np.rint(1000 + 10 * x).astype(np.int64))
        assert abs(out["settled_g"] - 500.0) < 0.5
        last = [int(v) for v in np.rint(1000 + 10 * _frames(500.0, 1, seed=9)[0])]
        assert c.weigh_frame("EXIT2", 12, counts=last)["stable"] is True

        learning = c.weights_confirm(items[3]["gtin"].zfill(14),
                                     2 * float(items[3]["unit_weight_g"]), units=2)
        assert learning["learning"]["code"] in ("LEARNED", "OUTLIER")
        stats = c.stats()
        assert stats["requests"]["basket.add"] == 1 and stats["lanes"] == 2
        health = c.health()
        assert health["status"] == "ok" and health["worker"] is None
        assert health["pid"] == s.proc.pid

        # pipeline: replies in request order, errors in place
        codes = [r["gtin"] for r in s.items(40)]
        reqs = [("scan", {"lane": "L9", "code": code}) for code in codes]
        reqs.insert(7, ("scan", {"lane": "L9", "code": "123"}))
        res = c.pipeline(reqs, window=8)
        assert isinstance(res[7], ServiceError) and res[7].code == "BAD_LENGTH"
        del res[7]
        assert [r["item"]["gtin"] for r in res] == [code.zfill(14) for code in codes]
        assert c.counters["retries"] == c.counters["timeouts"] == 0


def test_service_errors_carry_code_and_details(serve):
    s = serve()
    good = s.items(1)[0]["gtin"]
    with Client(s.endpoint, timeout_s=5.0) as c:
        with pytest.raises(ServiceError) as e:
            c.scan("L1", "5901234123458")
        assert e.value.code == "BAD_CHECK_DIGIT" and isinstance(e.value, LanecoreError)
        assert "check digit" in e.value.message and e.value.details == {}
        with pytest.raises(ServiceError) as e:
            c.call("no.such.op")
        assert e.value.code == "UNKNOWN_OP"
        with pytest.raises(ServiceError) as e:
            c.call("scan", lane="L1")
        assert e.value.code == "MISSING_FIELD"
        bid = c.basket_open("HH1")["basket"]["basket_id"]
        with pytest.raises(ServiceError) as e:
            c.basket_add(bid, [good, "12345"])
        assert e.value.code == "BAD_SCAN"
        assert e.value.details["index"] == 1
        assert e.value.details["scan_error"]["code"] == "BAD_LENGTH"
        assert e.value.to_dict()["index"] == 1
        assert c.basket_get(bid)["basket"]["lines"] == []      # all or nothing
        with pytest.raises(ServiceError) as e:
            c.basket_submit(bid)
        assert e.value.code == "EMPTY_BASKET"
        with pytest.raises(ServiceError) as e:
            c.basket_get("NOSUCHBASKET")
        assert e.value.code == "UNKNOWN_BASKET"
        with pytest.raises(ServiceError) as e:
            c.weigh_frame("NEVER", 0, samples=[1.0, 2.0])
        assert e.value.code == "LANE_NOT_CONFIGURED"
        with pytest.raises(ServiceError) as e:
            c.weigh_config("L1", fs_hz=0)
        assert e.value.code == "BAD_SAMPLE_RATE"
        # the client and the service still talk after all that
        assert c.hello()["protocol"] == 1


def test_bad_use_raises_value_error_before_sending(stub):
    st = stub(lambda req, n: [_ok(req)])
    with Client(st.endpoint, timeout_s=2.0) as c:
        bad = [
            lambda: c.weigh_frame("L1", 0, samples=[1.0], counts=[1]),
            lambda: c.weigh_frame("L1", 0),
            lambda: c.weigh_frame("L1", -1, samples=[1.0]),
            lambda: c.weigh_frame("L1", 0, samples=np.zeros((2, 3))),
            lambda: c.weigh_frame("L1", 0, samples=np.zeros(4097)),
            lambda: c.weigh_frame("L1", 0, samples=[]),
            lambda: c.weigh_frame("L1", 0, counts=[1.5, 2.0]),
            lambda: c.weigh_frame("L1", 0, counts=[2 ** 40]),
            lambda: c.weigh_frame("L1", 0, samples=b"\x00\x00\x80"),
            lambda: c.verify_order("G1"),
            lambda: c.verify_order("G1", order_no="A", order_qr="B"),
            lambda: c.scan_batch("L1", "5901234123457"),
            lambda: c.scan_batch("L1", []),
            lambda: c.scan("L1", 5901234123457),
            lambda: c.basket_add("B", []),
            lambda: c.basket_add("B", [5901234123457]),
            lambda: c.basket_remove("B", [1.5]),
            lambda: c.call("scan", id="x", lane="L1", code="1"),
            lambda: c.scan("L1", "1" * (1 << 20) + "2"),   # over the 1 MiB transport limit
        ]
        for fn in bad:
            with pytest.raises(ValueError):
                fn()
        assert c.counters["requests"] == 0
        time.sleep(0.1)
        assert st.seen == []
        with pytest.raises(ValueError):
            Client(st.endpoint, timeout_s=0)
        with pytest.raises(ValueError):
            Client(st.endpoint, client_id="")
    with pytest.raises(ServiceError) as e:
        c.hello()                          # closed by the with block
    assert e.value.code == "CLOSED"


def test_wire_format_ids_client_and_frame_packing(stub):
    st = stub(lambda req, n: [_ok(req, echo=len(req))])
    with Client(st.endpoint, client_id="lane-7", timeout_s=2.0) as c:
        samples = [1.5, -2.25, 1e3]
        c.weigh_frame("L1", 3, samples=samples)
        c.weigh_frame("L1", 4, counts=np.array([1, -2, 2 ** 31 - 1]))
        c.weigh_frame("L1", 5, samples=np.array(samples, ">f8"))   # any dtype, any order
        c.weigh_frame("L1", 6, samples=np.asarray(samples, "<f4").tobytes())  # packed
        c.basket_remove("B1", [3, "05901234123457", {"line_no": 4, "qty": 2}])
        c.verify_order("G1", order_no="HH-1", measured_g=12)
        assert c.call("anything", x=1) == {"echo": 4}     # op, id, client, x
        # ZMTP heartbeats, so a dead peer is noticed; quick, bounded reconnects
        sock = c._sock
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 1000
        assert sock.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 5000
        assert sock.getsockopt(zmq.RECONNECT_IVL) == 100
        assert sock.getsockopt(zmq.RECONNECT_IVL_MAX) == 1000
        assert sock.getsockopt(zmq.LINGER) == 0
    reqs = [r for _, r, _ in st.seen]
    assert [r["id"] for r in reqs] == [f"lane-7:{c.session}:{k}" for k in range(1, 8)]
    assert all(r["client"] == "lane-7" for r in reqs)
    f32 = np.asarray(samples, "<f4").tobytes()
    assert reqs[0]["samples"] == f32 and "counts" not in reqs[0] and reqs[0]["seq"] == 3
    assert reqs[1]["counts"] == np.array([1, -2, 2 ** 31 - 1], "<i4").tobytes()
    assert reqs[2]["samples"] == f32 and reqs[3]["samples"] == f32
    assert reqs[4]["items"] == [{"line_no": 3}, {"gtin": "05901234123457"},
                                {"line_no": 4, "qty": 2}]
    assert reqs[5] == {"op": "verify.order", "id": f"lane-7:{c.session}:6", "client": "lane-7",
                       "gate": "G1", "lane": "G1", "order_no": "HH-1", "measured_g": 12.0}


# ----------------------------------------------------------------------------------
# Lazy Pirate
# ----------------------------------------------------------------------------------


def test_stale_replies_are_dropped_and_retries_keep_the_id(stub):
    def script(req, n):
        if n == 1:       # the first try of the first call: silence (a lost reply)
            return None
        # a late answer to something else first, then the real one
        return [{"id": "someone-else:1", "ok": True, "late": True}, _ok(req, n=n)]
    st = stub(script)
    with Client(st.endpoint, timeout_s=0.3, retries=2) as c:
        t0 = time.monotonic()
        assert c.call("hello") == {"n": 2}
        assert 0.3 <= time.monotonic() - t0 < 2.0
        assert c.counters["stale"] == 1 and c.counters["retries"] == 1
        assert c.counters["reconnects"] == 1
    (ident1, r1, _), (ident2, r2, _) = st.seen
    assert r1 == r2                       # the same request, the same id ...
    assert ident1 != ident2               # ... sent on a new socket


def test_unavailable_is_retried_with_backoff_then_raised(stub):
    st = stub(lambda req, n: [_err(req, "UNAVAILABLE")] if n <= 3 else [_ok(req, n=n)])
    with Client(st.endpoint, timeout_s=1.0, retries=5, backoff_s=0.05) as c:
        assert c.call("scan", lane="L1", code="1") == {"n": 4}
        assert c.counters["unavailable"] == 3 and c.counters["reconnects"] == 0
    ids = {r["id"] for _, r, _ in st.seen}
    assert len(ids) == 1
    gaps = [b[2] - a[2] for a, b in zip(st.seen, st.seen[1:])]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.195   # doubling

    st2 = stub(lambda req, n: [_err(req, "UNAVAILABLE")])
    with Client(st2.endpoint, timeout_s=1.0, retries=2, backoff_s=0.01) as c:
        with pytest.raises(ServiceError) as e:
            c.call("hello")
        assert e.value.code == "UNAVAILABLE"
    assert len(st2.seen) == 3


def test_timeout_after_retries_against_a_dead_endpoint(tmp_path):
    dead = f"ipc://{tmp_path}/nobody.ipc"
    with Client(dead, timeout_s=0.25, retries=2, connect_timeout_s=None) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as e:
            c.hello()
        took = time.monotonic() - t0
        assert e.value.code == "TIMEOUT" and e.value.details["tries"] == 3
        assert e.value.details["id"] == f"{c.client_id}:{c.session}:1"
        assert 0.74 <= took < 1.5, took                       # (retries + 1) · timeout
        assert c.counters["reconnects"] == 3
        t0 = time.monotonic()                                   # no retries in a pipeline
        res = c.pipeline([("hello", {})] * 5)
        assert all(isinstance(r, ServiceError) and r.code == "TIMEOUT" for r in res)
        assert 0.24 <= time.monotonic() - t0 < 0.75

    async def many():      # five coroutines time out together, not one after another
        async with AsyncClient(dead, timeout_s=0.25, retries=2) as ac:
            t0 = time.monotonic()
            res = await asyncio.gather(*(ac.hello() for _ in range(5)),
                                       return_exceptions=True)
            return res, time.monotonic() - t0
    res, took = asyncio.run(many())
    assert all(isinstance(r, ServiceError) and r.code == "TIMEOUT" for r in res)
    assert 0.74 <= took < 1.6, took


def test_nothing_listening_is_unreachable_at_once_and_nothing_is_delivered(tmp_path,
                                                                          launch):
    """A client that has never connected says UNREACHABLE after its connect timeout
    instead of trying 1 + retries times (a wrong endpoint took 15.6 s to say TIMEOUT);
    the request is dropped, not delivered when something starts there later; the
    next call, once the service is up, is answered."""
    endpoint = f"ipc://{tmp_path}/later.ipc"
    with Client(endpoint, client_id="early", timeout_s=20.0, retries=3,
                connect_timeout_s=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as e:
            c.basket_open("NEVER-SENT")
        assert e.value.code == "UNREACHABLE", e.value
        assert e.value.details["tries"] == 1 and endpoint in e.value.message
        assert time.monotonic() - t0 < 20.0          # not one full try, let alone four
        assert c.counters["retries"] == 0
        p = launch(endpoint=endpoint)
        for _ in range(100):                         # now it connects: answered
            try:
                assert c.basket_open("SENT")["basket"]["device"] == "SENT"
                break
            except ServiceError as exc:
                assert exc.code == "UNREACHABLE", exc   # still starting: try again
        else:
            raise AssertionError("never answered once the service was up")
    from lanecore.core.scan.catalog import database_path
    con = sqlite3.connect(database_path(p.data_dir))
    try:
        devices = [d for (d,) in con.execute("SELECT device FROM baskets")]
    finally:
        con.close()
    assert "SENT" in devices and "NEVER-SENT" not in devices, devices


def test_retried_until_the_service_comes_up(tmp_path, launch):
    endpoint = f"ipc://{tmp_path}/late.ipc"
    out: dict = {}

    def sync_call():
        with Client(endpoint, client_id="late-hh", timeout_s=0.3, retries=60,
                    connect_timeout_s=None) as c:
            try:
                out["sync"] = c.basket_open("LATE-HH")
            except Exception as exc:  # reported below
                out["sync"] = exc
            out["counters"] = dict(c.counters)

    def async_call():
        async def go():
            async with AsyncClient(endpoint, timeout_s=0.3, retries=60) as ac:
                res = await asyncio.gather(ac.hello(), ac.basket_open("LATE-AS"))
                return res, dict(ac.counters)
        try:
            out["async"], out["async_counters"] = asyncio.run(go())
        except Exception as exc:  # reported below
            out["async"] = exc

    threads = [threading.Thread(target=sync_call), threading.Thread(target=async_call)]
    for t in threads:
        t.start()
    time.sleep(0.5)          # every first try has gone unanswered by now
    p = launch(endpoint=endpoint)
    for t in threads:
        t.join(timeout=30)
    assert "basket" in out["sync"], out
    assert out["counters"]["retries"] >= 1 and out["counters"]["reconnects"] >= 1
    hello, basket = out["async"]
    assert hello["protocol"] == 1 and basket["basket"]["device"] == "LATE-AS"
    assert out["async_counters"]["retries"] >= 2
    # however many tries reached it, the service opened one basket for the device
    from lanecore.core.scan.catalog import database_path
    con = sqlite3.connect(database_path(p.data_dir))
    try:
        n = con.execute("SELECT COUNT(*) FROM baskets WHERE device = 'LATE-HH'").fetchone()
        recorded = con.execute("SELECT COUNT(*) FROM service_requests WHERE client = "
                               "'late-hh'").fetchone()
    finally:
        con.close()
    assert n == (1,) and recorded == (1,)


def test_a_lost_reply_is_answered_from_the_record(serve):
    s = serve()
    gtin = s.items(1)[0]["gtin"]
    with Client(s.endpoint, timeout_s=5.0) as c:
        bid = c.basket_open("HH-LOST")["basket"]["basket_id"]
        replays0 = c.stats()["replays"]
        scans = [{"code": gtin, "qty": 2}]
        rid = c.send("basket.add", basket=bid, scans=scans)
        # the service does it; its reply reaches the socket but nobody reads it: the
        # next call drops it as stale
        assert c.basket_get(bid)["basket"]["n_items"] == 2
        assert c.counters["stale"] == 1
        c.reconnect()
        again = c.call_with_id(rid, "basket.add", basket=bid, scans=scans)
        assert again["basket"]["n_items"] == 2             # answered, not done again
        # a restarted controller (same client_id, a new socket) gets the same answer
        with Client(s.endpoint, client_id=c.client_id, timeout_s=5.0) as c2:
            assert c2.call_with_id(rid, "basket.add", basket=bid, scans=scans) == again
        assert c.basket_get(bid)["basket"]["n_items"] == 2
        assert c.stats()["replays"] == replays0 + 2
        # the same id from another client is another request
        with Client(s.endpoint, client_id="someone-else", timeout_s=5.0) as c3:
            assert c3.call_with_id(rid, "basket.add", basket=bid,
                                   scans=scans)["basket"]["n_items"] == 4


# ----------------------------------------------------------------------------------
# Behind a broker
# ----------------------------------------------------------------------------------


def test_workers_unavailable_is_retried_and_lanes_stay_pinned(serve):
    s = serve("--workers", 2)
    items = s.items(2)
    with Client(s.endpoint, timeout_s=2.0, retries=80, backoff_s=0.05,
                backoff_max_s=0.2) as c:
        # one lane per worker (health carries no pin of its own: pin it by the lane)
        lanes: dict[int, tuple[str, int]] = {}
        for k in range(32):
            h = c.call("health", lane=f"EXIT{k}")
            lanes.setdefault(h["worker"], (f"EXIT{k}", h["pid"]))
            if len(lanes) == 2:
                break
        assert sorted(lanes) == [0, 1]
        bid = c.basket_open("HH-W")["basket"]["basket_id"]
        c.basket_add(bid, [items[0]["gtin"]])
        order = c.basket_submit(bid)
        weight_g = float(items[0]["unit_weight_g"])
        for slot, (lane, pid) in lanes.items():
            c.weigh_config(lane)
            events = _settle(c, lane, weight_g)
            # every frame reached the one worker that holds the lane's filters
            assert [e["event"] for e in events if e["event"] != "placed"] == ["settled"]
            verdict = c.verify_order(lane, order_no=order["order_no"])
            assert verdict["verdict"] == "ok"
            # (BUG in the service, not asserted here: verify.order naming the lane as
            # `gate` only is pinned by "gate:<name>", which may hash to the other worker,
            # which has no settled weight -> NO_SETTLED_WEIGHT. The client sends `lane`
            # too, so it reaches the lane's worker.)

        # a worker dies: its requests are answered UNAVAILABLE until it is back, the
        # client retries them with the same id, and the lane comes back to its slot
        lane, pid = lanes[1]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)               # the broker has seen it go and is respawning it
        before = c.counters["unavailable"]
        c.weigh_config(lane)
        assert c.counters["unavailable"] > before
        h = c.call("health", lane=lane)
        assert h["worker"] == 1 and h["pid"] != pid
        events = _settle(c, lane, weight_g + 100, seq0=100)
        assert [e["event"] for e in events if e["event"] != "placed"] == ["settled"]
        assert c.verify_order(lane, order_no=order["order_no"])["verdict"] == "over"
        # the other worker never stopped
        assert c.call("health", lane=lanes[0][0])["pid"] == lanes[0][1]


# ----------------------------------------------------------------------------------
# asyncio
# ----------------------------------------------------------------------------------


def test_async_client_shared_by_many_coroutines(serve):
    s = serve()
    rows = s.items(30)

    async def lane(ac, name, weight_g):
        await ac.weigh_config(name)
        events = []
        for k, x in enumerate(_frames(weight_g, 12, seed=len(name))):
            events += (await ac.weigh_frame(name, k, samples=x))["events"]
        return [e for e in events if e["event"] == "settled"]

    async def shopper(ac, device, codes):
        bid = (await ac.basket_open(device))["basket"]["basket_id"]
        await ac.basket_add(bid, codes)
        return await ac.basket_submit(bid)

    async def main():
        async with AsyncClient(s.endpoint, timeout_s=5.0) as ac:
            scans = [ac.scan(f"L{k % 3}", r["gtin"]) for k, r in enumerate(rows)]
            lanes = [lane(ac, f"EXIT{k}", 500.0 + 100 * k) for k in range(3)]
            shoppers = [shopper(ac, f"HH{k}", [r["gtin"] for r in rows[k::5]])
                        for k in range(5)]
            res = await asyncio.gather(*scans, *lanes, *shoppers, ac.hello(), ac.stats())
            with pytest.raises(ServiceError) as e:
                await ac.scan("L1", "5901234123458")
            piped = await ac.pipeline([("scan", {"lane": "P", "code": r["gtin"]})
                                       for r in rows], window=4)
            return res, e.value, piped, dict(ac.counters)

    res, err, piped, counters = asyncio.run(main())
    scans, lanes, shoppers = res[:30], res[30:33], res[33:38]
    assert [r["item"]["gtin"] for r in scans] == [r["gtin"].zfill(14) for r in rows]
    for k, settled in enumerate(lanes):
        assert settled and abs(settled[-1]["weight_g"] - (500.0 + 100 * k)) < 1.0
    assert len({o["order_no"] for o in shoppers}) == 5
    assert [o["n_items"] for o in shoppers] == [6] * 5
    assert res[38]["protocol"] == 1 and "uptime_s" in res[39]
    assert err.code == "BAD_CHECK_DIGIT"
    assert [r["item"]["gtin"] for r in piped] == [r["gtin"].zfill(14) for r in rows]
    assert counters["retries"] == counters["timeouts"] == counters["stale"] == 0


# ----------------------------------------------------------------------------------
# Security
# ----------------------------------------------------------------------------------


def test_curve_allowed_device_gets_replies_unknown_key_gets_none(tmp_path, launch,
                                                                 store_template):
    from lanecore.gateway.net.security import generate
    data = tmp_path / "curve-data"
    shutil.copytree(store_template[0], data)
    keys = data / "keys"
    generate(keys, "server")
    till_public, till_secret = generate(tmp_path / "till", "till1", {"roles": "till"})
    (keys / "devices").mkdir(mode=0o700)     # the owner's alone, or serve refuses it
    shutil.copy(till_public, keys / "devices" / till_public.name)
    _, stranger_secret = generate(tmp_path / "stranger", "stranger")
    p = launch("--curve", data_dir=data)

    allowed = CurveKeys.from_files(keys / "server.key", till_secret)
    with Client(p.endpoint, curve=allowed, timeout_s=5.0) as c:
        assert c.hello()["protocol"] == 1
        assert c.scan_batch("L1", ["5901234123458"])["results"][0]["ok"] is False
    stranger = CurveKeys.from_files(keys / "server.key", stranger_secret)
    for curve in (stranger, None):       # an unknown key; no key at all
        with Client(p.endpoint, curve=curve, timeout_s=0.5, retries=1) as c:
            with pytest.raises(ServiceError) as e:
                c.hello()
            assert e.value.code == "TIMEOUT"
    with pytest.raises(LanecoreError) as e:       # a public key is not a keypair
        CurveKeys.from_files(keys / "server.key", till_public)
    assert e.value.code == "BAD_KEY"
    # the allowed device is still served after the refusals
    with Client(p.endpoint, curve=allowed, timeout_s=5.0) as c:
        assert c.health()["status"] == "ok"


@pytest.mark.parametrize("args", [
    ["--bind", "tcp://0.0.0.0:5599"],
    ["--bind", "tcp://127.0.0.1:5599", "--events", "tcp://10.1.2.3:5598"],
])
def test_serve_refuses_plain_tcp_beyond_loopback(tmp_path, store_template, args):
    data = tmp_path / "plain-data"
    shutil.copytree(store_template[0], data)
    args = args if "--events" in args else [*args, "--events", f"ipc://{tmp_path}/e.ipc"]
    r = subprocess.run([sys.executable, "-m", "lanecore", "serve", "--data-dir", str(data),
                        *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "PLAIN_NOT_ALLOWED" in r.stderr and "--allow-plain" in r.stderr
