"""Resources (issue 13, item 8): one client cannot starve the rest.

The attack: one client sending 300 one-MiB messages of a million empty maps each took
a gateway from 58 to 665 MiB and left every other client unanswered for 42 s. Here a
real `lanecore serve` (on ipc, over a small generated catalogue) is flooded by one
DEALER with such messages and with many small requests; another client's `hello` is
still answered (a generous timeout: the delay itself is a figure in
bench/test_flood.py, not a timed test), the flooder gets the documented codes
(`TOO_COMPLEX`, `BUSY`), and the service's memory stays bounded.

The unit tests pin the object bound of the protocol: exact, and far above every
legitimate maximal request (a full `scan.batch`, a `basket.add` of 1,000 scans, a
`weigh.frame` of the most samples), which are read and answered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import msgpack
import numpy as np
import pytest
import zmq

from lanecore.gateway.net import protocol as P
from storefix import stock_store

pytestmark = pytest.mark.kernel_free

MiB = 1 << 20
MAX_BATCH = 1000                 # docs/protocol.md: scan.batch codes, basket.add scans
MAX_FRAME_SAMPLES = 4096         # docs/protocol.md: weigh.frame
RSS_BOUND_MIB = 400              # the attack reached 665 MiB
FLOOD_BIG = 300                  # 1 MiB messages of ~a million empty maps
FLOOD_SMALL = 20_000             # small requests, pipelined without reading


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def empty_maps_request(rid) -> bytes:
    """A `hello` of just under 1 MiB carrying 1,040,000 empty maps."""
    junk = pack([[{}] * 10_000] * 104)
    head = pack({"op": "hello", "id": rid, "junk": None})[:-1]   # the map, up to its nil
    frame = head + junk
    assert len(frame) <= MiB
    return frame


# ----------------------------------------------------------------------------------
# The protocol's object bound
# ----------------------------------------------------------------------------------

def _with_values(n: int) -> dict:
    """A request map of exactly ``n`` values at every depth (lists of ≤ 10,000)."""
    base = {"op": "hello", "id": 1, "pad": []}    # 1 map + 6 keys and values
    left = n - 7
    pad = []
    while left > 0:
        k = min(10_000, left - 1)                  # a list and its items
        pad.append([0] * k)
        left -= k + 1
    assert left == 0
    base["pad"] = pad
    return base


def test_the_object_bound_is_exact():
    P.unpack(pack(_with_values(P.MAX_OBJECTS)))
    with pytest.raises(P.ProtocolError) as info:
        P.unpack(pack(_with_values(P.MAX_OBJECTS + 1)))
    assert info.value.code == "TOO_COMPLEX"
    assert "TOO_COMPLEX" in P.ENVELOPE_ERRORS and "BUSY" in P.ENVELOPE_ERRORS


@pytest.mark.parametrize("shape", ["empty maps", "empty lists", "nils", "deep"])
def test_a_message_of_many_tiny_objects_is_refused(shape):
    if shape == "empty maps":
        frame = empty_maps_request("x")
    elif shape == "empty lists":
        frame = pack({"op": "hello", "id": "x", "junk": [[[]] * 10_000] * 100})
    elif shape == "nils":
        frame = pack({"op": "hello", "id": "x", "junk": [[None] * 10_000] * 100})
    else:   # a chain of lists, each with values before the next
        v: list = []
        for _ in range(400):
            v = [*([0] * 200), v]
        frame = pack({"op": "hello", "id": "x", "junk": v})
    assert len(frame) <= MiB
    with pytest.raises(P.ProtocolError) as info:
        P.unpack(frame)
    assert info.value.code == "TOO_COMPLEX"


def legitimate_maximal_requests(codes: list[str]) -> dict[str, bytes]:
    """The largest requests a client may send, packed (codes: catalogue GTINs)."""
    long_codes = [f"]C1(01){c}(10)LOT{i:06d}ABCDEFGHIJKLMNOP" for i, c in
                  enumerate(codes * (MAX_BATCH // len(codes) + 1))][:MAX_BATCH]
    samples = np.full(MAX_FRAME_SAMPLES, 1250.5, dtype="<f4").tobytes()
    return {
        "scan.batch": pack({"op": "scan.batch", "id": "b1", "lane": "L1",
                            "codes": (codes * MAX_BATCH)[:MAX_BATCH]}),
        "scan.batch long codes": pack({"op": "scan.batch", "id": "b2", "lane": "L1",
                                       "codes": long_codes}),
        "basket.add": pack({"op": "basket.add", "id": "a1", "basket": "B" * 12,
                            "scans": [{"code": c, "qty": 999} for c in long_codes]}),
        "weigh.frame": pack({"op": "weigh.frame", "id": "f1", "lane": "L1",
                             "seq": 2 ** 62, "samples": samples}),
    }


def test_legitimate_maximal_requests_are_read():
    codes = ["05901234123457", "96385074", "4006381333931"]
    reqs = legitimate_maximal_requests(codes)
    # the long ones take the counted path (more bytes than the bound has values)
    assert len(reqs["scan.batch long codes"]) > P.MAX_OBJECTS
    assert len(reqs["basket.add"]) > P.MAX_OBJECTS
    for name, frame in reqs.items():
        req = P.unpack(frame)
        assert req["op"] == name.split()[0]
    scans = P.unpack(reqs["basket.add"])["scans"]
    assert len(scans) == MAX_BATCH and scans[-1]["qty"] == 999


# ----------------------------------------------------------------------------------
# A real service
# ----------------------------------------------------------------------------------

class Served:
    def __init__(self, endpoint: str, proc: subprocess.Popen, log, rows):
        self.endpoint, self.proc, self.log, self.rows = endpoint, proc, log, rows

    def dealer(self, *, hwm: int = 100_000) -> zmq.Socket:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, 1_000_000)
        s.connect(self.endpoint)
        return s

    def call(self, req: dict, timeout_ms: int = 10_000) -> dict:
        s = self.dealer()
        try:
            s.send(pack(req))
            if not s.poll(timeout_ms):
                raise TimeoutError(f"no reply to {req.get('op')} in {timeout_ms} ms")
            return msgpack.unpackb(s.recv(), raw=False)
        finally:
            s.close(0)

    def call_raw(self, frame: bytes, timeout_ms: int = 30_000) -> dict:
        s = self.dealer()
        try:
            s.send(frame)
            assert s.poll(timeout_ms), "no reply"
            return msgpack.unpackb(s.recv(), raw=False)
        finally:
            s.close(0)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    """A data directory with a 300-item GB catalogue, and its rows."""
    d = tmp_path_factory.mktemp("flood-store")
    return d, stock_store(d, 300, seed=13)


@pytest.fixture
def served(tmp_path, store_template):
    src, rows = store_template
    d = tmp_path / "data"
    shutil.copytree(src, d)
    endpoint = f"ipc://{tmp_path}/svc.ipc"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "serve", "--bind", endpoint, "--events",
             f"ipc://{tmp_path}/events.ipc", "--data-dir", str(d)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    s = Served(endpoint, proc, log, rows)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"service exited:\n{s.tail()}"
            try:
                if s.call({"op": "hello", "id": uuid.uuid4().hex}, 500).get("ok"):
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline, f"service not ready:\n{s.tail()}"
            time.sleep(0.1)
        yield s
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_legitimate_maximal_requests_are_answered(served):
    codes = [r["gtin"] for r in served.rows[:50]]
    assert served.call({"op": "weigh.config", "id": "cfg", "lane": "L1"})["ok"]
    basket = served.call({"op": "basket.open", "id": "open", "device": "hh-1"})
    assert basket["ok"], basket
    reqs = legitimate_maximal_requests(codes)
    reqs["basket.add"] = pack({"op": "basket.add", "id": "a1",
                               "basket": basket["basket"]["basket_id"],
                               "scans": [{"code": c, "qty": 1}
                                         for c in (codes * MAX_BATCH)[:MAX_BATCH]]})
    for name, frame in reqs.items():
        r = served.call_raw(frame)
        if name == "basket.add" and not r["ok"]:
            # the basket's own limits may say no; the envelope must have read it
            assert r["error"]["code"] not in ("TOO_COMPLEX", "TOO_LARGE", "BUSY"), r
            continue
        assert r["ok"], (name, r.get("error"))
    assert all(x["ok"] for x in served.call_raw(reqs["scan.batch"])["results"])


def test_a_message_larger_than_any_request_does_not_stall_its_connection(served):
    """Several frames of nearly 1 MiB each (the transport's cap is per frame): the
    message outgrows the most credit a peer saves. It is answered BAD_FRAMES, and the
    same connection's later requests are answered too (before, its peer waited for a
    credit it could never reach: found by the fuzz test)."""
    s = served.dealer()
    try:
        frame = b"\x00" * ((1 << 20) - 64)
        s.send_multipart([frame, frame, frame])
        s.send(pack({"op": "hello", "id": "after"}))
        replies = []
        for _ in range(2):
            assert s.poll(10_000), f"no reply on the connection\n{served.tail()}"
            replies.append(msgpack.unpackb(s.recv(), raw=False))
        assert replies[0]["error"]["code"] == "BAD_FRAMES", replies[0]
        assert replies[1]["ok"] and replies[1]["id"] == "after", replies[1]
    finally:
        s.close(0)


class Flooder(threading.Thread):
    """One DEALER: FLOOD_BIG messages of a million empty maps, then FLOOD_SMALL hellos,
    as fast as the socket takes them, reading nothing until all are sent; then every
    reply (each request gets one), counted by code."""

    def __init__(self, served: Served):
        super().__init__(daemon=True)
        self.sock = served.dealer(hwm=16)        # this process holds little of it
        self.sent = 0
        self.codes: Counter = Counter()
        self.replies = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            s = self.sock
            big = empty_maps_request("big")
            for _ in range(FLOOD_BIG):
                s.send(big, copy=False)
                self.sent += 1
            for i in range(FLOOD_SMALL):
                s.send(pack({"op": "hello", "id": i}))
                self.sent += 1
            deadline = time.monotonic() + 120
            while self.replies < self.sent and time.monotonic() < deadline:
                if s.poll(1000):
                    r = msgpack.unpackb(s.recv(), raw=False)
                    self.replies += 1
                    self.codes["ok" if r["ok"] else r["error"]["code"]] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.sock.close(0)


@pytest.mark.slow
def test_one_flooding_client_does_not_starve_another(served):
    base = served.rss_mib()
    flood = Flooder(served)
    peak = [base]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], served.rss_mib())
            time.sleep(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    flood.start()
    try:
        while flood.sent < 50 and flood.is_alive():   # the flood is under way
            time.sleep(0.01)
        victim = served.dealer()
        answered = 0
        for k in range(5):
            rid = f"victim-{k}"
            victim.send(pack({"op": "hello", "id": rid}))
            assert victim.poll(30_000), f"the victim's hello {k} got no reply during " \
                                        f"the flood\n{served.tail()}"
            r = msgpack.unpackb(victim.recv(), raw=False)
            assert r["ok"] and r["id"] == rid, r
            answered += 1
        victim.close(0)
        flood_was_on = flood.replies < FLOOD_BIG + FLOOD_SMALL
        flood.join(180)
        assert not flood.is_alive(), "the flooder's replies did not all come"
        assert flood.error is None, flood.error
    finally:
        sampling.set()
        sampler.join(5)
    assert answered == 5 and flood_was_on, "the flood was over before the victim asked"
    assert served.proc.poll() is None, served.tail()
    # every request got its one reply, with a documented code
    assert flood.replies == flood.sent == FLOOD_BIG + FLOOD_SMALL, (flood.replies,
                                                                    flood.codes)
    assert flood.codes["TOO_COMPLEX"] >= 1, flood.codes
    assert flood.codes["BUSY"] >= 1, flood.codes
    assert set(flood.codes) <= {"ok", "TOO_COMPLEX", "BUSY"}, flood.codes
    assert flood.codes["ok"] >= 1, flood.codes          # the small ones in its share
    rss = f"service RSS {peak[0]:.0f} MiB (started at {base:.0f} MiB)"
    assert peak[0] < RSS_BOUND_MIB, (rss, flood.codes)
    stats = served.call({"op": "stats", "id": "stats"})
    assert stats["errors"].get("BUSY", 0) >= flood.codes["BUSY"]
    assert stats["errors"].get("TOO_COMPLEX", 0) >= flood.codes["TOO_COMPLEX"]
    # and it still serves everyone
    assert served.call({"op": "hello", "id": "after"})["ok"]
