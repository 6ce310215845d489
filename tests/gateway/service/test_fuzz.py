"""Fuzz: ≥ 10,000 malformed or random messages against one real `lanecore serve`.

Every message gets a reply within a timeout, and the reply is a map with `ok` and
either the op's result fields or `error: {code, message}` with a code that
docs/protocol.md documents; except a frame over the transport's 1 MiB cap, which the
document says drops the connection (we reconnect and go on). After every batch the
service still answers `hello`; at the end the process is alive and its `stats` count
what we sent.

Messages are pipelined: a batch goes out on one DEALER, then every reply is read and
matched to its request by id (ids are unique per request where we choose them;
requests whose id cannot be read are answered with `id: null`).

Like the conformance test, this talks to the service with plain pyzmq + msgpack.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import pytest
import zmq
from curvefix import enrol
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

MiB = 1 << 20
KiB = 1 << 10
REPLY_TIMEOUT_S = 30.0          # for a whole pipelined batch, on a loaded 2-core box
TOTAL_QUOTA = 10_000

OPS = ("hello", "scan", "scan.batch", "basket.open", "basket.add", "basket.remove",
       "basket.get", "basket.submit", "order.get", "order.status", "weigh.config",
       "weigh.frame", "verify.order", "verify.step", "verify.clear", "bag.event",
       "bag.override", "weights.confirm",
       "alarm.resolve", "alarm.list", "audit.decide", "audit.get", "audit.list",
       "audit.record", "device.event", "stats", "health")

# Every code in docs/protocol.md's error tables.
DOC_CODES = frozenset("""
NOT_TEXT EMPTY TOO_LONG NUL_BYTE NON_ASCII BAD_CHARACTER NON_DIGIT BAD_LENGTH
BAD_CHECK_DIGIT BAD_NUMBER_SYSTEM BAD_PRICE_CHECK_DIGIT UNKNOWN_AI TRUNCATED_AI
BAD_AI_VALUE BAD_DATE DUPLICATE_AI INEXACT_AMOUNT UNKNOWN_SYMBOLOGY UNKNOWN_REGION
UNKNOWN_ITEM
NOT_MSGPACK NOT_A_MAP BAD_KEY_TYPE TOO_LARGE BAD_FRAMES MISSING_FIELD BAD_FIELD UNKNOWN_OP INTERNAL
UNAVAILABLE TOO_COMPLEX BUSY
LANE_NOT_CONFIGURED TOO_MANY_LANES NO_SETTLED_WEIGHT PLAIN_NOT_ALLOWED NO_SERVER_KEY
BAD_KEY CANNOT_BIND REASON_REQUIRED
UNKNOWN_BASKET BASKET_CLOSED EMPTY_BASKET BAD_SCAN NEEDS_WEIGHING BAD_LINE BAD_REQUEST
TOO_MANY_LINES UNKNOWN_ORDER BAD_STATUS QR_FORMAT QR_SIGNATURE QR_EXPIRED QR_VERSION
USAGE CANNOT_READ BAD_CONFIG BAD_DATA_DIR BAD_ARGUMENT CSV_UNWRITABLE CSV_NOT_FOUND
CSV_UNREADABLE BAD_CSV_HEADER BAD_ROW BAD_GTIN DUPLICATE_GTIN MISSING_NAME BAD_PRICE
BAD_FLAGS BAD_WEIGHT DB_BUSY DB_ERROR SCHEMA_TOO_NEW NOT_A_CATALOG
BAD_SAMPLE_RATE BAD_SCALE_INTERVAL BAD_FILTER BAD_WEIGH_CONFIG BAD_TRACE CANNOT_WRITE
EMPTY_ORDER BAD_ORDER BAD_QUANTITY BAD_MEASUREMENT OVER_CAPACITY BAD_POLICY
ORDER_NOT_FOUND ORDER_UNREADABLE BAD_Z BAD_SCALE_ID
PROOF_INVALID PROOF_MISMATCH LANE_QUOTA CONFIRM_TOO_FAR CONFIRM_DAILY_LIMIT
IDEMPOTENCY_MISMATCH
NOT_PAID UNKNOWN_AUDIT NOT_AUDITED AUDIT_CONFLICT
BAD_SEQ BAD_STEP BAD_ALARM
""".split())
# A service bug, not a malformed request: never acceptable as an answer to fuzz.
NEVER = frozenset({"INTERNAL"})
LEARNING_CODES = {"LEARNED", "OUTLIER", "NOT_LEARNABLE", "UNKNOWN_ITEM", "MULTI_SKU",
                  "NO_WEIGHED_ITEM"}

RESULT_KEYS = {
    "hello": {"protocol", "server", "capabilities", "kernels", "store", "order_key",
              "limits"},
    "scan": {"scan", "item"},
    "scan.batch": {"results"},
    "basket.open": {"basket"}, "basket.add": {"basket"}, "basket.remove": {"basket"},
    "basket.get": {"basket"},
    "basket.submit": {"order_no", "basket_id", "status", "created_at", "total_minor",
                      "currency", "n_items", "lines_digest", "qr", "lines"},
    "weigh.config": {"lane", "config", "window_samples"},
    "weigh.frame": {"lane", "events", "stable", "settled_g"},
    "verify.order": {"order_no", "order_status", "verdict", "expected_g", "measured_g",
                     "band_g", "sigma_g", "z", "mpe_g", "explanations"},
    "verify.step": {"order_no", "lane", "item"},
    "verify.clear": {"order_no", "order_status", "verdict", "mode", "measured_g",
                     "expected_g", "explanations", "items"},
    "bag.event": {"kiosk", "session", "alarms", "open"},
    "bag.override": {"kiosk", "session", "alarm", "gtin", "learning", "open"},
    "weights.confirm": {"learning"},
    "order.get": {"order"}, "order.status": {"order"},
    "alarm.resolve": {"resolved"}, "alarm.list": {"alarms", "device_alarms"},
    "audit.decide": {"audit"}, "audit.get": {"audit"}, "audit.record": {"audit"},
    "audit.list": {"audits", "stats"},
    "device.event": {"event"},
    "stats": {"uptime_s", "requests", "errors", "replays", "lanes", "items"},
    "health": {"status", "db", "uptime_s", "lanes", "scales", "worker", "pid"},
}
SCAN_KEYS = {"input", "ok", "kind", "gtin", "lookup_gtin", "price_minor", "weight_g",
             "count", "ais", "error"}
BASKET_KEYS = {"basket_id", "device", "member", "status", "order_no", "opened_at",
               "updated_at", "lines", "n_items", "total_minor", "currency"}
LANE_FIELDS = ("fs_hz", "e_g", "max_g", "counts_per_g", "zero_counts", "tare_g",
               "adc_bits", "lowpass_hz", "lowpass_order", "mains_hz", "mains_q",
               "conveyor_hz", "conveyor_q", "spike_e", "stable_band_e", "stable_window_s",
               "zero_tracking", "zero_track_rate_e_s", "zero_track_band_e",
               "zero_track_limit", "overload_g", "under_zero_e", "placed_e", "stuck_s")

# No shrinking: a batch is 40–80 messages against a live service, and shrinking one
# took minutes; the failure message names the message and the reply instead.
FUZZ_SETTINGS = dict(deadline=None, derandomize=False, print_blob=True,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=list(HealthCheck))


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ======================================================================================
# One service for the module


@dataclass(eq=False)
class Msg:
    """One request as sent: its frames and, when we know them, its op.

    `ids`: the ids (packed) its reply may carry besides null — read from the frames
    themselves, so a random frame that happens to hold an id is matched too."""
    frames: list[bytes]
    op: str | None = None        # a documented op whose result fields we check
    ids: tuple = ()
    req_framed: bool = False     # [b"", request] from a DEALER: the reply keeps b""

    def __post_init__(self):
        if not self.ids:
            self.ids = tuple(ids_in(self.frames))


def ids_in(frames: list[bytes]):
    for f in frames:
        if len(f) > MiB:
            continue
        try:
            v = msgpack.unpackb(f, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - not MessagePack: no id
            continue
        if isinstance(v, dict) and "id" in v:
            try:
                yield pack(v["id"])
            except Exception:  # noqa: BLE001
                pass


@dataclass
class Fuzz:
    endpoint: str
    proc: subprocess.Popen
    log: str
    pools: dict
    #: With ``--curve``: the enrolled test identity's keys (server public, public, secret).
    curve: tuple | None = None
    sent: int = 0                # every message sent, oversized ones included
    replies: int = 0
    dropped: int = 0             # over 1 MiB: no reply, reconnected
    ok_replies: int = 0
    ok_ops: Counter = field(default_factory=Counter)
    hellos: int = 0
    codes: Counter = field(default_factory=Counter)
    op_codes: Counter = field(default_factory=Counter)     # (op, code, test)
    by_test: Counter = field(default_factory=Counter)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _sock: zmq.Socket | None = None
    _test: str = ""
    _dumps: int = 0

    # -- sockets ------------------------------------------------------------------
    def socket(self, kind: int) -> zmq.Socket:
        """A socket of ``kind`` with the test identity's CurveZMQ keys, if any."""
        s = zmq.Context.instance().socket(kind)
        if self.curve is not None:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self.curve
        return s

    def dealer(self) -> zmq.Socket:
        if self._sock is None:
            s = self.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def reconnect(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._sock = None

    def fresh_id(self):
        """Unique per request, half str, half int, so replays never mix replies."""
        n = next(self._ids)
        return f"fz-{n}" if n % 2 else 10**12 + n

    # -- checks -------------------------------------------------------------------
    def alive(self) -> None:
        assert self.proc.poll() is None, f"service died:\n{self.tail()}"

    def tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def check_reply(self, frames: list[bytes], msg: Msg | None) -> dict:
        assert len(frames) in (1, 2), f"reply of {len(frames)} frames"
        if len(frames) == 2:
            assert frames[0] == b"", frames[:1]
        if msg is not None and msg.req_framed:
            assert len(frames) == 2, "a REQ-framed request's reply lost its delimiter"
        try:
            reply = msgpack.unpackb(frames[-1], raw=False)   # string keys only
        except Exception as e:  # noqa: BLE001 - any decoding failure is the finding
            raise AssertionError(f"reply is not MessagePack with str keys: {e}") from e
        assert isinstance(reply, dict), reply
        assert isinstance(reply.get("ok"), bool), reply
        assert "id" in reply, reply
        if reply["ok"]:
            assert reply["id"] is not None, f"a success without an id: {reply}"
            self.ok_replies += 1
            if msg is not None and msg.op is not None:
                check_result(msg.op, reply)
                self.ok_ops[msg.op] += 1
        else:
            err = reply.get("error")
            assert isinstance(err, dict), reply
            assert isinstance(err.get("code"), str), reply
            assert isinstance(err.get("message"), str), reply
            assert err["code"] in DOC_CODES, f"undocumented code: {reply}"
            assert err["code"] not in NEVER, f"service failure: {reply}\n{self.tail()}"
            self.codes[err["code"]] += 1
            self.op_codes[(msg.op if msg else None, err["code"], self._test)] += 1
        return reply

    # -- traffic --------------------------------------------------------------------
    def exchange(self, msgs: list[Msg], test: str) -> None:
        """Pipeline a batch on one DEALER, read and check every reply, then hello."""
        self._test = test
        small = [m for m in msgs if all(len(f) <= MiB for f in m.frames)]
        for m in msgs:
            if m not in small:
                self.oversized(m.frames)
        s = self.dealer()
        pending: dict[bytes, list[Msg]] = {}
        anonymous: list[Msg] = []
        for m in small:
            s.send_multipart(m.frames)
            for k in m.ids:
                pending.setdefault(k, []).append(m)
            anonymous.append(m)
        self.sent += len(small)
        self.by_test[test] += len(msgs)
        got = 0
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while got < len(small):
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(int(left * 1000)):
                self.alive()
                raise AssertionError(
                    f"{len(small) - got} of {len(small)} messages got no reply in "
                    f"{REPLY_TIMEOUT_S} s. First unanswered: "
                    f"{self.diagnose(anonymous[0].frames) if anonymous else None}")
            frames = s.recv_multipart()
            got += 1
            # Which request is this the reply to? Its id, when it has one.
            try:
                rid = msgpack.unpackb(frames[-1], raw=False).get("id")
                key = pack(rid) if rid is not None else None
            except Exception:  # noqa: BLE001 - check_reply says what is wrong
                key = None
            msg = None
            if key is not None:
                assert key in pending and pending[key], \
                    f"reply with an id we never sent: {frames[-1][:200]!r}"
                msg = pending[key].pop(0)
                anonymous.remove(msg)
            self.check_reply(frames, msg)
        self.replies += got
        self.still_answers_hello()

    def diagnose(self, frames: list[bytes]) -> str:
        """Keep an unanswered message for replay, and say whether the service answers
        anyone else."""
        self._dumps += 1
        path = f"{self.log}.unanswered-{self._dumps}.msgpack"
        with open(path, "wb") as f:
            f.write(pack(frames))
        s = self.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        try:
            s.send(pack({"op": "hello", "id": "diagnose"}))
            answers = bool(s.poll(2000))
        finally:
            s.close(0)
        return (f"{len(frames)} frame(s) of {[len(f) for f in frames]} bytes, starting "
                f"{[f[:60] for f in frames]}; saved as {path} (msgpack list of frames); "
                f"a fresh DEALER's hello {'is' if answers else 'is NOT'} answered")

    def still_answers_hello(self) -> None:
        s = self.dealer()
        rid = self.fresh_id()
        s.send(pack({"op": "hello", "id": rid}))
        assert s.poll(int(REPLY_TIMEOUT_S * 1000)), f"no hello after a batch\n{self.tail()}"
        r = msgpack.unpackb(s.recv(), raw=False)
        assert r["ok"] is True and r["id"] == rid and r["protocol"] == 1, r
        self.hellos += 1

    def oversized(self, frames: list[bytes]) -> None:
        """A frame over 1 MiB: the transport drops the peer, no reply. Reconnect."""
        s = self.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        try:
            s.send_multipart(frames)
            self.sent += 1
            self.dropped += 1
            assert not s.poll(300), "a message over 1 MiB got a reply"
        finally:
            s.close(0)

    def req_exchange(self, frames_list: list[Msg], test: str) -> None:
        """The same through a REQ socket: strictly one request, one reply."""
        self._test = test
        s = self.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        try:
            for m in frames_list:
                self.by_test[test] += 1
                if any(len(f) > MiB for f in m.frames):
                    self.oversized(m.frames)
                    continue
                s.send_multipart(m.frames)
                self.sent += 1
                if not s.poll(int(REPLY_TIMEOUT_S * 1000)):
                    raise AssertionError(f"REQ: no reply. {self.diagnose(m.frames)}")
                frames = s.recv_multipart()
                assert len(frames) == 1, frames
                reply = self.check_reply(frames, m)
                if reply["id"] is not None:
                    assert pack(reply["id"]) in m.ids, (m.frames[0][:200], reply)
                self.replies += 1
        finally:
            s.close(0)
        self.still_answers_hello()


def check_result(op: str, reply: dict) -> None:
    """The documented result fields of a successful reply, and a few of their types."""
    need = RESULT_KEYS[op]
    assert need <= set(reply), f"{op}: {sorted(need - set(reply))} missing in {reply}"
    if op == "scan":
        assert set(reply["scan"]) == SCAN_KEYS, reply["scan"]
    elif op == "scan.batch":
        assert isinstance(reply["results"], list) and reply["results"]
        for r in reply["results"]:
            assert isinstance(r.get("ok"), bool), r
            if r["ok"]:
                assert {"scan", "item"} <= set(r), r
            else:
                assert r["error"]["code"] in DOC_CODES, r
    elif op.startswith("basket.") and op != "basket.submit":
        assert BASKET_KEYS <= set(reply["basket"]), reply["basket"]
    elif op == "weigh.frame":
        assert isinstance(reply["events"], list) and isinstance(reply["stable"], bool)
        for ev in reply["events"]:
            assert {"t", "sample", "event"} <= set(ev), ev
    elif op in ("verify.order", "verify.clear"):
        assert reply["verdict"] in ("ok", "short", "over"), reply
    elif op == "verify.step":
        assert reply["item"]["kind"] in ("ok", "merged", "lifted", "noise", "unscanned",
                                         "unexplained_removal"), reply
    elif op == "weights.confirm":
        assert reply["learning"]["code"] in LEARNING_CODES, reply


def _start(tmp, store_template, mode: str = "plain") -> Fuzz:
    """`lanecore serve` on ipc sockets over a copy of the store, as conftest does; the
    environment (LANECORE_PURE, NUMBA_DISABLE_JIT) passes through. ``mode`` "curve":
    under CurveZMQ, the fuzzer an enrolled admin identity."""
    data = tmp / "data"
    shutil.copytree(store_template[0], data)
    curve = enrol(data, tmp / "client", "fuzzer", "admin") if mode == "curve" else None
    endpoint, events, log = f"ipc://{tmp}/s.ipc", f"ipc://{tmp}/e.ipc", str(tmp / "serve.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "serve", "--bind", endpoint, "--events",
             events, "--data-dir", str(data), *(["--curve"] if curve else [])],
            stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    fz = Fuzz(endpoint, proc, log, {}, curve)
    deadline = time.monotonic() + 90
    while True:
        fz.alive()
        s = fz.dealer()
        s.send(pack({"op": "hello", "id": "ready?"}))
        if s.poll(500):
            assert msgpack.unpackb(s.recv())["ok"]
            break
        fz.reconnect()
        assert time.monotonic() < deadline, f"service not ready\n{fz.tail()}"
    return fz


def _call(fz: Fuzz, req: dict) -> dict:
    s = fz.dealer()
    req = {**req, "id": fz.fresh_id()}
    s.send(pack(req))
    assert s.poll(10_000)
    r = msgpack.unpackb(s.recv(), raw=False)
    assert r["ok"], r
    return r


@pytest.fixture(scope="module", params=["plain", "curve"])
def fz(tmp_path_factory, store_template, request):
    """`lanecore serve` for this module, with real baskets, orders and lanes to aim at:
    in development mode, then under CurveZMQ with an enrolled identity."""
    fz = _start(tmp_path_factory.mktemp("fuzz"), store_template, request.param)
    rows = store_template[1]
    plain = [r for r in rows if not r["flags"] and r["unit_weight_g"]]
    gtins = [r["gtin"] for r in rows[:200]]
    basket = _call(fz, {"op": "basket.open", "device": "FUZZ"})["basket"]["basket_id"]
    _call(fz, {"op": "basket.add", "basket": basket,
               "scans": [{"code": plain[0]["gtin"], "qty": 3}]})
    done = _call(fz, {"op": "basket.open", "device": "FUZZ2"})["basket"]["basket_id"]
    _call(fz, {"op": "basket.add", "basket": done, "scans": [{"code": plain[1]["gtin"]}]})
    order = _call(fz, {"op": "basket.submit", "basket": done})
    for lane, cfg in (("FZ1", {}), ("FZ2", {"fs_hz": 200}),
                      ("FZC", {"counts_per_g": 250, "zero_counts": 12000})):
        _call(fz, {"op": "weigh.config", "lane": lane, "config": cfg})
    # OPEN stands for a basket opened for each batch (fuzzed submits close them).
    fz.pools = {"gtins": gtins, "baskets": [OPEN, OPEN, OPEN, basket, done],
                "order_no": order["order_no"],
                "qr": order["qr"], "lanes": ["FZ1", "FZ2", "FZC"]}
    yield fz
    if fz._sock is not None:
        fz._sock.close(0)
    fz.proc.terminate()
    try:
        fz.proc.wait(20)
    except subprocess.TimeoutExpired:
        fz.proc.kill()
        fz.proc.wait()


# ======================================================================================
# Strategies
#
# Hypothesis draws each batch's raw material: values, op maps, frames, and a seed. A
# cheap seeded pass then derives a few variants of each drawn request (a field
# dropped, a field given another field's value or a value of the wrong type, a field
# of another op added, the frame cut short) — on this 2-core box that is what keeps
# 10,000+ messages within the time budget, since drawing a message costs far more than
# sending it.

def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, by weight. (st.one_of(a, a, b) does not favour a:
    Hypothesis picks among distinct branches, so weights need an explicit draw.)"""
    table = [s for w, s in choices for _ in range(w)]
    return pick(table).flatmap(lambda s: s)


def pick(items: list) -> st.SearchStrategy:
    """st.sampled_from without the items in the strategy's repr (Hypothesis builds
    reprs, and these hold megabytes)."""
    return st.integers(0, len(items) - 1).map(lambda i: items[i])


ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
texts = st.text(max_size=16)
plain = st.one_of(st.none(), st.booleans(), ints64, st.integers(-3, 3),
                  st.floats(allow_nan=True, allow_infinity=True), texts,
                  st.binary(max_size=16))
exts = st.one_of(st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
                 st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1),
                           st.integers(0, 999_999_999)))
scalars = weighted((3, plain), (1, exts))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        # pairs, not st.dictionaries: no uniqueness search over the keys
        st.lists(st.tuples(st.text(max_size=6), inner), max_size=4).map(dict)),
    max_leaves=8)


def _nested(depth: int):
    v: list = [1]
    for _ in range(depth):
        v = [v]
    return v


# Payloads at and just past the documented limits (strings 64 KiB, arrays 10,000
# items, maps 256 pairs, binaries 1 MiB — a binary at its limit needs the whole frame).
BIG = [
    "s" * (64 * KiB), "s" * (64 * KiB + 1), "ü" * (32 * KiB), "ü" * (32 * KiB + 1),
    list(range(10_000)), list(range(10_001)), [None] * 10_001,
    {f"k{i}": i for i in range(256)}, {f"k{i}": i for i in range(257)},
    b"\x00" * (MiB - 4 * KiB), _nested(64), _nested(400),
]
big = pick(BIG)
garbage = weighted((3, plain), (1, values), (1, big), (1, exts))
# One of each type, for the seeded variants.
EXEMPLARS = [None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"),
             float("inf"), "", "x", "é" * 3, b"", b"\x00", [], [1, "a"], {}, {"a": 1},
             msgpack.ExtType(1, b"x"), "x" * 129, "x" * 4097]
seeds = st.integers(0, 2**32 - 1)


def f32(xs) -> bytes:
    return struct.pack(f"<{len(xs)}f", *xs)


def i32(xs) -> bytes:
    return struct.pack(f"<{len(xs)}i", *xs)


samples = weighted(
    (2, st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True),
                 max_size=64).map(f32)),
    (4, st.tuples(st.floats(-100.0, 40_000.0, width=32), st.integers(1, 400)).map(
        lambda t: f32([t[0]] * t[1]))),
    (1, pick([f32([500.0] * 4096), f32([500.0] * 4097), b"", b"\x00" * 3])),
    (1, st.binary(max_size=40)))
counts = st.one_of(
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=64).map(i32),
    pick([i32([12000] * 4096), i32([1] * 4097)]),
    st.binary(max_size=40))


def mostly(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Seven times in eight a plausible value, else garbage of any type or size (the
    seeded variants below break the requests further)."""
    return weighted((7, plausible), (1, garbage))


# Which fields each op needs (all of them, or one of each group) and may have.
REQUIRED = {"scan": ("lane", "code"), "scan.batch": ("lane", "codes"),
            "basket.open": ("device",), "basket.add": ("basket", "scans"),
            "basket.remove": ("basket", "items"), "basket.get": ("basket",),
            "basket.submit": ("basket",), "weigh.config": ("lane",),
            "weigh.frame": ("lane", "seq", ("samples", "counts")),
            "verify.order": (("gate", "lane"), ("order_no", "order_qr")),
            "verify.step": ("lane", "order_no", "seq", "delta_g", "sigma_g"),
            "verify.clear": ("lane", "order_no"),
            "bag.event": ("kiosk", "session", "seq", "kind", "t_s"),
            "bag.override": ("kiosk", "session", "alarm", "staff"),
            "weights.confirm": ("gtin", "weight_g"), "order.get": ("order_no",),
            "order.status": ("order_no", "status"),
            "alarm.resolve": ("lane", "order_no", "action", "staff"),
            "audit.decide": ("order_no", "shopper"), "audit.get": ("order_no",),
            "audit.record": ("order_no", "outcome", "staff")}


def op_fields(pools: dict) -> dict:
    """Each documented op's fields, mostly plausible (real lanes, GTINs, baskets,
    orders, float32 frames), sometimes garbage."""
    lanes = st.sampled_from(pools["lanes"])
    names = mostly(weighted((3, lanes), (1, st.text(min_size=1, max_size=70))))
    gtins = st.sampled_from(pools["gtins"])
    gtin = mostly(st.one_of(gtins, gtins.map(lambda g: g.zfill(14)),
                            st.text("0123456789", min_size=1, max_size=20)))
    code = mostly(weighted(
        (5, gtins), (1, texts),
        (1, st.tuples(st.sampled_from(["]E0", "]C1", "]E4", "]I1", "]Q1", "S08F", "]X9", ""]),
                      st.text("0123456789\x1d", max_size=30)).map("".join)),
        (1, pick(["5" * 4096, "5" * 4097, "]C1" + "01" * 40, "\x00", "é", " "]))))
    region = mostly(st.sampled_from(["GB", "SE", "DE", "DK", "FI", "US", "ZZ", "gb", ""]))
    qty = mostly(st.integers(-2, 1001))
    scan_entry = mostly(weighted(
        (6, st.fixed_dictionaries({"code": code}, optional={"qty": qty})),
        (1, st.fixed_dictionaries({}, optional={"code": code, "qty": qty,
                                                "extra": scalars}))))
    remove_entry = mostly(weighted(
        (3, st.fixed_dictionaries({"line_no": mostly(st.integers(-1, 5))},
                                  optional={"qty": qty})),
        (3, st.fixed_dictionaries({"gtin": gtin}, optional={"qty": qty})),
        (1, st.fixed_dictionaries({}, optional={"line_no": st.integers(-1, 5), "gtin": gtin,
                                                "qty": qty, "extra": scalars}))))
    basket = mostly(weighted(
        (4, st.sampled_from(pools["baskets"])), (1, st.just("A" * 12)),
        (1, st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=12, max_size=12))))
    config = mostly(st.fixed_dictionaries({}, optional={
        k: st.one_of(st.floats(-10, 20_000), st.integers(-5, 20_000), plain)
        for k in LANE_FIELDS}))
    qr = pools["qr"]
    qrs = mostly(st.one_of(
        st.just(qr), st.integers(0, len(qr) - 1).map(
            lambda i: qr[:i] + ("A" if qr[i] != "A" else "B") + qr[i + 1:]),
        texts, pick(["LCO1..", "LCO2." + qr[5:], "x" * 2000])))
    number = mostly(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                              st.floats(-100, 60_000), st.integers(-100, 60_000)))
    order_no = mostly(st.one_of(st.just(pools["order_no"]), texts))
    return {
        "hello": {},
        "scan": {"lane": names, "code": code, "region": region},
        "scan.batch": {"lane": names, "region": region,
                       "codes": mostly(weighted(
                           (8, st.lists(code, min_size=1, max_size=8)),
                           (1, pick([[], ["5000000000012"] * 1000,
                                     ["5000000000012"] * 1001]))))},
        "basket.open": {"device": names, "member": mostly(st.text(max_size=70))},
        "basket.add": {"basket": basket,
                       "scans": mostly(st.lists(scan_entry, min_size=1, max_size=4))},
        "basket.remove": {"basket": basket,
                          "items": mostly(st.lists(remove_entry, min_size=1, max_size=3))},
        "basket.get": {"basket": basket},
        "basket.submit": {"basket": basket},
        "weigh.config": {"lane": names, "config": config},
        "weigh.frame": {"lane": names, "seq": mostly(st.integers(-3, 10**6)),
                        "samples": mostly(samples), "counts": mostly(counts)},
        "verify.order": {"gate": names, "lane": names,
                         "order_no": mostly(st.one_of(st.just(pools["order_no"]), texts)),
                         "order_qr": qrs, "measured_g": number},
        "verify.step": {"lane": names, "order_no": order_no,
                        "seq": mostly(st.integers(-3, 1200)), "delta_g": number,
                        "sigma_g": number},
        "verify.clear": {"lane": names, "order_no": order_no},
        "bag.event": {"kiosk": names, "session": names,
                      "seq": mostly(st.integers(-3, 2100)),
                      "kind": mostly(pick(["scan", "delta", "tick", "finish", "nap"])),
                      "t_s": number, "gtin": gtin, "delta_g": number, "sigma_g": number},
        "bag.override": {"kiosk": names, "session": names,
                         "alarm": mostly(st.integers(-3, 2100)), "gtin": gtin,
                         "staff": names},
        "weights.confirm": {"gtin": gtin, "weight_g": number,
                            "units": mostly(st.integers(-2, 1001))},
        "device.event": {"lane": names,
                         "device": mostly(pick(["scale", "bridge", "scanner", "eas_gate",
                                                "eas_deactivator", "printer",
                                                "qr_display", "toaster"])),
                         "kind": mostly(pick(["alarm", "fault", "recovered", "ALARM"])),
                         "code": mostly(st.text(max_size=40)),
                         "message": mostly(st.text(max_size=300))},
        "order.get": {"order_no": order_no},
        "order.status": {"order_no": order_no,
                         "status": mostly(pick(["paid", "exited", "cancelled", "PAID"])),
                         "proof": mostly(st.fixed_dictionaries({}, optional={
                             "receipt": texts, "kind": texts}))},
        "alarm.resolve": {"lane": names, "order_no": order_no,
                          "action": mostly(pick(["ack", "override", "rescan", "OK"])),
                          "reason": mostly(st.text(max_size=300)), "weight_g": number,
                          "finding": mostly(pick(["theft", "mistake", "false_alarm", "x"])),
                          "staff": names},
        "alarm.list": {"since": number, "limit": mostly(st.integers(-1, 600))},
        "audit.decide": {"order_no": order_no, "shopper": names},
        "audit.get": {"order_no": order_no},
        "audit.list": {"state": mostly(pick(["pending", "done", "all", "none"])),
                       "limit": mostly(st.integers(-1, 600))},
        "audit.record": {"order_no": order_no,
                         "outcome": mostly(pick(["clean", "discrepancy", "dirty"])),
                         "found": mostly(st.lists(st.fixed_dictionaries(
                             {"gtin": gtin, "qty": qty}), max_size=3)),
                         "finding": mostly(pick(["theft", "mistake", "false_alarm"])),
                         "staff": names},
        "stats": {}, "health": {},
    }


def op_maps(pools: dict) -> st.SearchStrategy:
    """Maps with a documented op and its required fields (one of each alternative),
    the others present or not; any of them garbage now and then."""
    forms = []
    for op, fields in op_fields(pools).items():
        groups = [g if isinstance(g, tuple) else (g,) for g in REQUIRED.get(op, ())]
        for choice in itertools.product(*groups):
            required = {"op": st.just(op), **{k: fields[k] for k in choice}}
            grouped = {k for g in groups for k in g}    # the alternatives not chosen
            optional = {k: v for k, v in fields.items() if k not in grouped}
            forms.append(st.fixed_dictionaries(required, optional={
                **optional, "junk": plain,
                "client": mostly(st.text(min_size=1, max_size=10))}))
    return st.one_of(forms)


ALL_FIELDS = sorted({k for f in op_fields({"lanes": ["x"], "gtins": ["x"], "baskets": ["x"],
                                           "order_no": "x", "qr": "xx"}).values()
                     for k in f})


def variants(req: dict, others: list[dict], rng: random.Random, n: int) -> list[dict]:
    """`n` seeded variants of a request: a field dropped, given a wrong-typed value or
    another request's value, a field of another op added, op or id changed."""
    out = []
    for _ in range(n):
        v = dict(req)
        keys = [k for k in v if k not in ("op", "id")]
        what = rng.randrange(7)
        if what == 0 and keys:
            del v[rng.choice(keys)]
        elif what == 1 and keys:
            v[rng.choice(keys)] = rng.choice(EXEMPLARS)
        elif what == 2 and keys:
            donor = rng.choice(others)
            donor_keys = [k for k in donor if k not in ("op", "id")]
            if donor_keys:
                v[rng.choice(keys)] = donor[rng.choice(donor_keys)]
        elif what == 3:
            v[rng.choice(ALL_FIELDS)] = rng.choice(others).get(rng.choice(ALL_FIELDS),
                                                               rng.choice(EXEMPLARS))
        elif what == 4:
            v["op"] = rng.choice(OPS + ("", "HELLO", "basket", "scan.batch.x"))
        elif what == 5:
            v[rng.choice(ALL_FIELDS)] = rng.choice(BIG)
        else:
            v["client"] = rng.choice(EXEMPLARS[:12])
        out.append(v)
    return out


def envelope_maps() -> st.SearchStrategy:
    """Maps whose envelope is off: op, id, client of any type; keys not strings."""
    keyish = st.one_of(st.integers(-3, 3), st.binary(max_size=3), st.booleans(),
                       st.none(), st.floats(allow_nan=False))
    long_text = st.tuples(st.text(min_size=1, max_size=3), st.integers(129, 300)).map(
        lambda t: (t[0] * 300)[:t[1]])
    return st.one_of(
        st.fixed_dictionaries({}, optional={
            "op": st.one_of(st.sampled_from(OPS), texts, scalars),
            "id": st.one_of(long_text, st.floats(), st.booleans(), st.none(),
                            st.lists(ints64, max_size=2), st.binary(max_size=3),
                            st.lists(st.tuples(st.text(max_size=3), ints64),
                                     max_size=2).map(dict)),
            "client": garbage}),
        st.lists(st.tuples(keyish, scalars), min_size=1, max_size=3).map(
            lambda kv: {**dict(kv), "op": "hello", "id": 1}),
        st.lists(st.tuples(texts, scalars), max_size=6).map(dict),
    )


OPEN = "<open basket>"


def open_baskets(fz: Fuzz, reqs: list[dict]) -> list[dict]:
    """Put a basket opened now where a request names OPEN."""
    if not any(r.get("basket") == OPEN for r in reqs):
        return reqs
    bid = _call(fz, {"op": "basket.open", "device": "FUZZ"})["basket"]["basket_id"]
    return [{**r, "basket": bid} if r.get("basket") == OPEN else r for r in reqs]


def with_id(fz: Fuzz, req: dict) -> Msg:
    """Give a request a fresh unique id."""
    rid = fz.fresh_id()
    req = {**req, "id": rid}
    op = req.get("op") if isinstance(req.get("op"), str) and req.get("op") in OPS else None
    return Msg([pack(req)], op=op, ids=(pack(rid),))


def loose(value) -> Msg:
    """Any value as one frame; the reply may echo an id the value carries."""
    return Msg([pack(value)])


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        what = rng.random()
        if what < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif what < 0.7 and b:
            del b[rng.randrange(len(b)):]
        else:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
    return bytes(b)


def run_batches(fz: Fuzz, test: str, quota: int, strategy, build, max_examples: int,
                send=None):
    """Hypothesis draws batches; `build(batch)` turns one into messages, `send` (a
    pipelined DEALER by default) sends them; then this test must have sent `quota`."""
    start = fz.by_test[test]
    send = send or fz.exchange

    @settings(max_examples=max_examples, **FUZZ_SETTINGS)
    @given(batch=strategy)
    def run(batch):
        send(build(batch), test)

    run()
    fz.alive()
    assert fz.by_test[test] - start >= quota, (test, fz.by_test[test] - start, quota)


# ======================================================================================
# The fuzz tests


def test_random_bytes(fz):
    """Random frames, and real requests with bytes flipped, cut or inserted."""
    template = {"lane": "FZ1", "code": "5000000000012", "basket": fz.pools["baskets"][0],
                "seq": 0, "samples": f32([1.0] * 8)}

    def build(batch):
        raw, seed = batch
        rng = random.Random(seed)
        mutated = [mutate(pack({**template, "op": rng.choice(OPS), "id": fz.fresh_id()}),
                          rng) for _ in range(40)]
        return [Msg([b]) for b in raw] + [Msg([m]) for m in mutated]

    strategy = st.tuples(st.lists(st.binary(max_size=48), min_size=40, max_size=40), seeds)
    run_batches(fz, "bytes", 2400, strategy, build, max_examples=30)


def test_random_msgpack_values(fz):
    """Valid MessagePack that is not a request: scalars, lists, nested, huge, ext;
    each drawn value also sent wrapped in a list and as a map's value."""
    def build(batch):
        vals, seed = batch
        rng = random.Random(seed)
        out = []
        for v in vals:
            out += [loose(v), loose([v, rng.choice(EXEMPLARS)]),
                    loose({rng.choice(ALL_FIELDS + ["op", "id"]): v})]
        return out

    strategy = st.tuples(st.lists(weighted((4, values), (1, big)), min_size=20, max_size=20),
                         seeds)
    run_batches(fz, "values", 2000, strategy, build, max_examples=35)


def test_ops_with_random_fields(fz):
    """Every documented op, its fields missing, right, wrong-typed, huge or another
    op's; each drawn request and four seeded variants of it."""
    def build(batch):
        reqs, seed = batch
        reqs = open_baskets(fz, reqs)
        rng = random.Random(seed)
        out = []
        for r in reqs:
            out += [with_id(fz, x) for x in [r] + variants(r, reqs, rng, 2)]
        return out

    strategy = st.tuples(st.lists(op_maps(fz.pools), min_size=15, max_size=15), seeds)
    run_batches(fz, "ops", 6000, strategy, build, max_examples=135)


def test_envelope_fields(fz):
    """op / id / client of every type, non-string keys, random keys."""
    def build(batch):
        maps, seed = batch
        rng = random.Random(seed)
        out = [loose(m) for m in maps]
        for m in maps:       # the same with a valid op, so the id is looked at
            out.append(loose({**m, "op": rng.choice(OPS)}))
        return out

    strategy = st.tuples(st.lists(envelope_maps(), min_size=25, max_size=25), seeds)
    run_batches(fz, "envelope", 1000, strategy, build, max_examples=20)


def test_multi_frame_and_req_framing(fz):
    """Two to five frames (BAD_FRAMES), and REQ framing from a DEALER (the empty
    delimiter, then the request: an ordinary reply)."""
    def build(batch):
        reqs, junk, seed = batch
        reqs = open_baskets(fz, reqs)
        rng = random.Random(seed)
        out = []
        for r in reqs:       # REQ framing, a good request and a variant
            for x in [r] + variants(r, reqs, rng, 1):
                m = with_id(fz, x)
                out.append(Msg([b""] + m.frames, op=m.op, ids=m.ids, req_framed=True))
        pool = [b"", *junk, *(pack(r) for r in reqs)]
        for _ in range(30):
            out.append(Msg([rng.choice(pool) for _ in range(rng.randint(2, 5))]))
        return out

    strategy = st.tuples(st.lists(op_maps(fz.pools), min_size=5, max_size=5),
                         st.lists(st.binary(max_size=16), min_size=3, max_size=3), seeds)
    run_batches(fz, "frames", 1000, strategy, build, max_examples=25)


def test_req_sockets(fz):
    """REQ clients: one frame per request, the socket adds and strips the delimiter."""
    def build(batch):
        reqs, raw, seed = batch
        reqs = open_baskets(fz, reqs)
        rng = random.Random(seed)
        out = []
        for r in reqs:
            out += [with_id(fz, x) for x in [r] + variants(r, reqs, rng, 2)]
        out += [Msg([b]) for b in raw]
        return out

    strategy = st.tuples(st.lists(op_maps(fz.pools), min_size=8, max_size=8),
                         st.lists(st.binary(max_size=24), min_size=6, max_size=6), seeds)
    run_batches(fz, "req", 600, strategy, build, max_examples=20, send=fz.req_exchange)


def test_over_one_mib(fz):
    """Frames over the transport's 1 MiB cap: dropped, no reply; the service goes on."""
    before = fz.dropped
    msgs = [Msg([b"\x00" * (MiB + 1)]),
            Msg([pack({"op": "hello", "id": "big", "pad": b"\x00" * MiB})]),
            Msg([pack({"op": "scan", "id": "big2", "lane": "FZ1",
                       "code": "5" * (MiB + 10)})]),
            Msg([pack({"op": "hello", "id": "m"}), b"\x00" * (MiB + 1)])]
    fz.exchange(msgs + [with_id(fz, {"op": "hello"})], "oversized")
    assert fz.dropped - before == 4


def test_every_op_answers_a_valid_request(fz):
    """Among the fuzz, a plainly valid request of every op the service has succeeds
    with its documented result fields: the fuzz cannot pass by refusing everything."""
    from lanecore.gateway.service import OP_ROLES
    assert set(OPS) == set(OP_ROLES), "the fuzz's op list is the service's"
    gtins = fz.pools["gtins"]
    bid = _call(fz, {"op": "basket.open", "device": "HH-VALID"})["basket"]["basket_id"]
    order_bid = _call(fz, {"op": "basket.open", "device": "HH-VALID2"})["basket"][
        "basket_id"]
    _call(fz, {"op": "basket.add", "basket": order_bid, "scans": [{"code": gtins[0]}]})
    order_no = _call(fz, {"op": "basket.submit", "basket": order_bid})["order_no"]
    lane = "FZ1"
    item = _call(fz, {"op": "scan", "lane": lane, "code": gtins[0]})["item"]
    valid = [
        {"op": "hello"}, {"op": "scan", "lane": lane, "code": gtins[1]},
        {"op": "scan.batch", "lane": lane, "codes": gtins[:3]},
        {"op": "basket.add", "basket": bid, "scans": [{"code": gtins[2]},
                                                      {"code": gtins[3]}]},
        {"op": "basket.remove", "basket": bid, "items": [{"gtin": gtins[3]}]},
        {"op": "basket.get", "basket": bid}, {"op": "basket.submit", "basket": bid},
        {"op": "order.get", "order_no": order_no},
        {"op": "order.status", "order_no": order_no, "status": "paid"},
        {"op": "weigh.config", "lane": "FZV"},
        {"op": "weigh.frame", "lane": "FZV", "seq": 0, "samples": f32([0.0] * 50)},
        {"op": "verify.order", "gate": lane, "order_no": order_no, "measured_g": 250.0},
        {"op": "verify.step", "lane": "FZV", "order_no": order_no, "seq": 0,
         "delta_g": float(item["unit_weight_g"]), "sigma_g": 1.0},
        {"op": "verify.clear", "lane": "FZV", "order_no": order_no},
        {"op": "bag.event", "kiosk": "FZK", "session": "V1", "seq": 0, "kind": "scan",
         "t_s": 1.0, "gtin": gtins[0]},
        {"op": "bag.event", "kiosk": "FZK", "session": "V1", "seq": 1, "kind": "delta",
         "t_s": 2.0, "delta_g": 50_000.0, "sigma_g": 1.0},     # unexpected: alarm 0
        {"op": "bag.override", "kiosk": "FZK", "session": "V1", "alarm": 0,
         "staff": "ann"},
        {"op": "weights.confirm", "gtin": gtins[0], "weight_g": item["unit_weight_g"]},
        {"op": "alarm.resolve", "lane": lane, "order_no": order_no, "action": "ack",
         "finding": "false_alarm", "staff": "ann"},
        {"op": "alarm.list", "limit": 5},
        {"op": "audit.decide", "order_no": order_no, "shopper": "shopper-1"},
        {"op": "audit.get", "order_no": order_no},
        {"op": "audit.list", "state": "all"},
        {"op": "device.event", "lane": lane, "device": "scale", "kind": "fault",
         "code": "NO_ANSWER", "message": "valid"},
        {"op": "stats"}, {"op": "health"},
        {"op": "basket.open", "device": "HH-VALID3"},
    ]
    for req in valid:
        r = _call(fz, req)                    # asserts ok
        check_result(req["op"], r)
    audit = _call(fz, {"op": "audit.get", "order_no": order_no})["audit"]
    rec = {"op": "audit.record", "order_no": order_no, "outcome": "clean", "staff": "ann"}
    if audit["state"] == "none":              # not chosen: refused, as documented
        s = fz.dealer()
        s.send(pack({**rec, "id": fz.fresh_id()}))
        assert s.poll(10_000)
        assert msgpack.unpackb(s.recv())["error"]["code"] == "NOT_AUDITED"
    else:
        check_result("audit.record", _call(fz, rec))
    done = {req["op"] for req in valid} | {"audit.record"}
    assert done == set(OPS), sorted(set(OPS) - done)


def test_service_survived_and_counted(fz):
    """The process is alive, it still answers, and its stats saw the traffic."""
    fz.alive()
    fz.still_answers_hello()
    stats = _call(fz, {"op": "stats"})
    total_requests = sum(stats["requests"].values())
    total_errors = sum(stats["errors"].values())
    print(f"\nfuzz: {fz.sent} messages ({dict(fz.by_test)}), {fz.replies} replies, "
          f"{fz.dropped} dropped over 1 MiB, {fz.ok_replies} ok {dict(fz.ok_ops)}, "
          f"{fz.hellos} hello checks; "
          f"error codes {dict(fz.codes.most_common())}; service stats: "
          f"{total_requests} requests {stats['requests']}, {total_errors} errors")
    assert fz.sent >= TOTAL_QUOTA, (fz.sent, dict(fz.by_test))
    assert fz.replies + fz.dropped == fz.sent, (fz.replies, fz.dropped, fz.sent)
    # Every request the service ran is in `requests`, every error reply in `errors`.
    assert total_requests >= fz.ok_replies, (total_requests, fz.ok_replies)
    assert stats["requests"].get("hello", 0) >= fz.hellos
    # Error replies we saw and the service did not count as errors can only be replays
    # of a first reply (a mutated frame may land on an id already used).
    short = {code: (n, stats["errors"].get(code, 0)) for code, n in fz.codes.items()
             if stats["errors"].get(code, 0) < n}
    assert sum(n - counted for n, counted in short.values()) <= stats["replays"], \
        (short, stats["replays"], {k: n for k, n in fz.op_codes.items() if k[1] in short})
