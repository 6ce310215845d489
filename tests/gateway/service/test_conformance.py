"""Conformance: the verification service against docs/protocol.md, and nothing else.

Written as a lane controller in another language would write it: plain pyzmq DEALER
and REQ sockets, plain msgpack, the field names, types and error codes of
docs/protocol.md (and the documents it points to for lane configuration, the
weighing events and the order QR). This module never imports lanecore; the
module-level check below proves it from the module's own source. The `serve`
fixture (conftest) is used only to start the service and to learn its endpoint,
its events address, its pid, its stderr log and the catalogue's CSV rows.

Where the service and the document disagree, a test here fails: the document is the
contract, so either the service or the document is wrong, never the test quietly.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import math
import random
import re
import struct
import sys
import time
import uuid
from pathlib import Path

import msgpack
import pytest
import zmq

# --------------------------------------------------------------------------------------
# This module speaks the protocol from the document alone: no lanecore import, direct
# or relative (a relative import would reach into the test package and its conftest).
# The conftest that starts the service imports lanecore into sys.modules, so looking at
# sys.modules would prove nothing; parse this file instead.


def _imports_of(source: str) -> list[str]:
    """Every module this source imports: import statements and literal dynamic imports."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(
                f, ast.Attribute) else ""
            if fname in ("__import__", "import_module") and node.args:
                a = node.args[0]
                names.append(a.value if isinstance(a, ast.Constant) else "<dynamic>")
    return names


_OWN_IMPORTS = _imports_of(Path(__file__).read_text(encoding="utf-8"))
assert _OWN_IMPORTS and "zmq" in _OWN_IMPORTS and "msgpack" in _OWN_IMPORTS
assert not any(m == "lanecore" or m.startswith("lanecore.") or m.startswith(".")
               or m == "<dynamic>" for m in _OWN_IMPORTS), _OWN_IMPORTS
assert not any((v.__name__ if isinstance(v, type(sys)) else
                getattr(v, "__module__", None) or "").split(".")[0] == "lanecore"
               for v in list(globals().values())), "a lanecore object in this module"

# --------------------------------------------------------------------------------------
# What the document says.

OPS = {"hello", "scan", "scan.batch", "basket.open", "basket.add", "basket.remove",
       "basket.get", "basket.submit", "order.get", "order.status", "weigh.config",
       "weigh.frame", "verify.order", "verify.step", "verify.clear", "bag.event",
       "bag.override", "weights.confirm",
       "alarm.resolve", "device.event", "stats",
       "health", "alarm.list", "audit.decide", "audit.get", "audit.list", "audit.record"}

SCAN_CODES = {"NOT_TEXT", "EMPTY", "TOO_LONG", "NUL_BYTE", "NON_ASCII", "BAD_CHARACTER",
              "NON_DIGIT", "BAD_LENGTH", "BAD_CHECK_DIGIT", "BAD_NUMBER_SYSTEM",
              "BAD_PRICE_CHECK_DIGIT", "UNKNOWN_AI", "TRUNCATED_AI", "BAD_AI_VALUE",
              "BAD_DATE", "DUPLICATE_AI", "INEXACT_AMOUNT", "UNKNOWN_SYMBOLOGY",
              "UNKNOWN_REGION"}

SCAN_OBJECT_KEYS = {"input", "ok", "kind", "gtin", "lookup_gtin", "price_minor",
                    "weight_g", "count", "ais", "error"}
# The `scan` op lists these item fields; the catalogue lookup's item table adds
# `flag_bits` and `updated_at` (checked only where present: see test_scan).
SCAN_ITEM_KEYS = {"gtin", "name", "price_minor", "unit_weight_g", "weight_sd_g", "flags",
                  "line_price_minor", "origin", "producer", "inspection",
                  "supply_chain", "promotion"}
BASKET_KEYS = {"basket_id", "device", "member", "status", "order_no", "opened_at",
               "updated_at", "lines", "n_items", "total_minor", "currency"}
LINE_KEYS = {"line_no", "code", "gtin", "name", "qty", "unit_price_minor",
             "line_price_minor", "weight_g", "count", "flags"}
ORDER_KEYS = {"order_no", "basket_id", "status", "created_at", "total_minor",
              "currency", "n_items", "lines_digest", "qr", "lines"}
VERDICT_KEYS = {"verdict", "expected_g", "measured_g", "band_g", "sigma_g", "z", "mpe_g",
                "explanations"}
LEARNING_KEYS = {"code", "message", "gtin", "observed_g", "units", "weight", "z",
                 "mean_g", "sd_g", "n", "restarted"}
LEARNING_CODES = {"LEARNED", "OUTLIER", "NOT_LEARNABLE", "UNKNOWN_ITEM", "MULTI_SKU",
                  "NO_WEIGHED_ITEM"}
SCALE_KEYS = {"scale_id", "state", "direction", "cusum_high", "cusum_low", "ewma", "n"}
EVENT_COMMON = {"t", "sample", "event", "weight_g", "sigma_g"}
EVENT_FIELDS = {"settled": {"n_samples"}, "placed": {"delta_g"}, "removed": {"delta_g"},
                "motion": set(), "overload": set(), "under_zero": set(),
                "fault": {"reason"}}
# docs/weigh/weighing.md, LaneConfig: every field and its default (fs 1000 Hz, e 5 g, Max
# 30 kg), with the two computed defaults filled in.
LANE_DEFAULTS = {
    "fs_hz": 1000, "e_g": 5, "max_g": 30000, "counts_per_g": 1, "zero_counts": 0,
    "tare_g": 0, "adc_bits": 0, "lowpass_hz": 20, "lowpass_order": 2, "mains_hz": 50,
    "mains_q": 10, "conveyor_hz": 0, "conveyor_q": 2, "spike_e": 20, "stable_band_e": 1,
    "stable_window_s": 0.25, "zero_tracking": True, "zero_track_rate_e_s": 0.5,
    "zero_track_band_e": 0.5, "zero_track_limit": 0.04, "overload_g": 30000 + 9 * 5,
    "under_zero_e": 20, "placed_e": 2, "stuck_s": 0.5}

MiB = 1 << 20
TIMEOUT_MS = 10_000

# --------------------------------------------------------------------------------------
# A tiny client: what any language's ZeroMQ binding offers.

CTX = zmq.Context.instance()


def fresh_id() -> str:
    return uuid.uuid4().hex


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes):
    # Replies are maps with string keys: the default strict_map_key enforces that.
    return msgpack.unpackb(frame, raw=False)


def _secure(sock, curve):
    """CurveZMQ client keys (server public, public, secret) on a socket, when given:
    the service then runs ``--curve`` and these are an enrolled identity's."""
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    return sock


class Dealer:
    """A DEALER socket: one frame out per request, one frame back."""

    def __init__(self, endpoint: str, identity: bytes | None = None, curve=None):
        self.sock = _secure(CTX.socket(zmq.DEALER), curve)
        self.sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.connect(endpoint)

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv_frames(self, timeout_ms: int = TIMEOUT_MS) -> list[bytes] | None:
        if not self.sock.poll(timeout_ms):
            return None
        return self.sock.recv_multipart()

    def call_raw(self, frame: bytes, timeout_ms: int = TIMEOUT_MS) -> dict:
        self.send_frames([frame])
        frames = self.recv_frames(timeout_ms)
        assert frames is not None, "no reply"
        assert len(frames) == 1, f"a DEALER reply is one frame, got {len(frames)}"
        return unpack(frames[0])

    def call(self, req: dict, timeout_ms: int = TIMEOUT_MS) -> dict:
        req = dict(req)
        req.setdefault("id", fresh_id())
        reply = self.call_raw(pack(req), timeout_ms)
        assert isinstance(reply, dict) and "ok" in reply, reply
        assert reply["id"] == req["id"], (req, reply)
        return reply

    def close(self) -> None:
        self.sock.close(0)


class Req:
    """A REQ socket: it adds the empty delimiter itself and strips the reply's."""

    def __init__(self, endpoint: str, curve=None):
        self.sock = _secure(CTX.socket(zmq.REQ), curve)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def call_frames(self, frames: list[bytes], timeout_ms: int = TIMEOUT_MS) -> dict:
        self.sock.send_multipart(frames)
        assert self.sock.poll(timeout_ms), "no reply"
        got = self.sock.recv_multipart()
        assert len(got) == 1, got
        return unpack(got[0])

    def call(self, req: dict) -> dict:
        req = dict(req)
        req.setdefault("id", fresh_id())
        reply = self.call_frames([pack(req)])
        assert reply["id"] == req["id"], (req, reply)
        return reply

    def close(self) -> None:
        self.sock.close(0)


class Events:
    """A SUB socket on the service's PUB: [topic, map] per event."""

    def __init__(self, address: str, *topics: str, curve=None):
        self.sock = _secure(CTX.socket(zmq.SUB), curve)
        self.sock.setsockopt(zmq.LINGER, 0)
        for t in topics or ("",):
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
        self.sock.connect(address)
        time.sleep(0.3)  # ZeroMQ's slow joiner: let the subscription reach the PUB

    def drain(self, wait_s: float = 1.0) -> list[tuple[str, dict]]:
        out = []
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return out
            frames = self.sock.recv_multipart()
            assert len(frames) == 2, f"an event is two frames, got {len(frames)}"
            out.append((frames[0].decode("ascii"), unpack(frames[1])))

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture(params=["plain", "curve"])
def svc(serve, request):
    """The service in development mode (plain, loopback ipc), then again under CurveZMQ
    with an enrolled admin identity: every check holds under authentication too."""
    s = serve() if request.param == "plain" else serve(curve_roles="admin")
    curve = s.curve
    clients: list = []

    class Handle:
        endpoint, events, rows, pid = s.endpoint, s.events, s.rows, s.proc.pid
        log = s.log                  # the service's stderr (and stdout)
        mode = request.param

        @staticmethod
        def dealer(identity: bytes | None = None) -> Dealer:
            d = Dealer(s.endpoint, identity, curve)
            clients.append(d)
            return d

        @staticmethod
        def req() -> Req:
            r = Req(s.endpoint, curve)
            clients.append(r)
            return r

        @staticmethod
        def sub(*topics: str) -> Events:
            e = Events(s.events, *topics, curve=curve)
            clients.append(e)
            return e

        @staticmethod
        def alive() -> bool:
            return s.proc.poll() is None

    yield Handle
    for c in clients:
        c.close()


# --------------------------------------------------------------------------------------
# Helpers from the document's conventions.

def gs1_check_digit(body: str) -> str:
    """The GS1 mod-10 check digit of the digits before it."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def gtin14(code: str) -> str:
    return code.zfill(14)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def f32(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def i32(values) -> bytes:
    return struct.pack(f"<{len(values)}i", *values)


def noisy(weight_g: float, n: int, rng: random.Random, sd: float = 0.2) -> list[float]:
    return [weight_g + rng.gauss(0.0, sd) for _ in range(n)]


def plain_items(rows, n: int, min_g: float = 150.0) -> list[dict]:
    """Catalogue rows with no flags and a unit weight of at least min_g."""
    out = [r for r in rows if not r["flags"] and r["unit_weight_g"]
           and float(r["unit_weight_g"]) >= min_g]
    assert len(out) >= n
    return out[:n]


def row_with_flag(rows, flag: str) -> dict:
    return next(r for r in rows if r["flags"] == flag)


def unknown_gtin13(rows) -> str:
    known = {gtin14(r["gtin"]) for r in rows}
    rng = random.Random(5)
    while True:
        body = "50" + "".join(rng.choice("0123456789") for _ in range(10))
        code = body + gs1_check_digit(body)
        if gtin14(code) not in known:
            return code


def assert_error(reply: dict, code: str | set, rid=...) -> dict:
    assert reply["ok"] is False, reply
    err = reply["error"]
    assert isinstance(err, dict), reply
    assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), reply
    codes = {code} if isinstance(code, str) else code
    assert err["code"] in codes, reply
    if rid is not ...:
        assert reply["id"] == rid, reply
    return err


def deli_label(c: Dealer, row: dict, price_minor: int) -> str:
    """A GB in-store price label (prefix 20, PPPPPPPCVVVV) for a variable-measure row.

    The price check digit C is found the way a label printer's tester would: of the
    ten candidates, the one the service reads."""
    ref = gtin14(row["gtin"])[1:8]          # the 7 digits of the item reference
    for c_digit in "0123456789":
        body = f"{ref}{c_digit}{price_minor:04d}"
        code = body + gs1_check_digit(body)
        r = c.call({"op": "scan", "lane": "L1", "code": code})
        if r["ok"]:
            return code
        assert r["error"]["code"] == "BAD_PRICE_CHECK_DIGIT", r
    raise AssertionError("no price check digit reads")


def settle(c: Dealer, lane: str, weight_g: float, *, seq0: int = 0, frames: int = 12,
           counts=None) -> tuple[list[dict], int]:
    """Feed `frames` 50 ms frames (1 kHz) of a steady weight; return events, next seq."""
    rng = random.Random(lane)
    events: list[dict] = []
    for seq in range(seq0, seq0 + frames):
        values = noisy(weight_g, 50, rng)
        if counts is None:
            body = {"samples": f32(values)}
        else:
            per_g, zero = counts
            body = {"counts": i32([round(zero + per_g * v) for v in values])}
        r = c.call({"op": "weigh.frame", "lane": lane, "seq": seq, **body})
        assert r["ok"], r
        events += r["events"]
    return events, seq0 + frames


def check_event(ev: dict, *, null_fields: bool = True) -> None:
    """A weighing event object as docs/protocol.md describes it. `null_fields`: also
    hold it to "weight_g and sigma_g are present on every row (null when the event has
    none)" — test_fault_event_fields checks that alone for the events without them."""
    need = EVENT_COMMON if null_fields else EVENT_COMMON - {"weight_g", "sigma_g"}
    assert need <= set(ev), f"{sorted(need - set(ev))} missing in {ev}"
    assert ev["event"] in EVENT_FIELDS, ev
    assert EVENT_FIELDS[ev["event"]] <= set(ev), ev
    assert is_num(ev["t"]) and is_int(ev["sample"]) and ev["sample"] >= 0, ev
    for k in ("weight_g", "sigma_g"):
        assert ev.get(k) is None or is_num(ev[k]), ev


def check_basket(b: dict) -> None:
    assert BASKET_KEYS <= set(b), sorted(BASKET_KEYS - set(b))
    assert re.fullmatch(r"[A-Z2-7]{12}", b["basket_id"]), b["basket_id"]
    assert b["status"] in ("open", "submitted", "cancelled")
    assert is_num(b["opened_at"]) and is_num(b["updated_at"])
    assert abs(b["opened_at"] - time.time()) < 3600 and b["updated_at"] >= b["opened_at"]
    assert is_int(b["n_items"]) and is_int(b["total_minor"])
    assert re.fullmatch(r"[A-Z]{3}", b["currency"])
    assert isinstance(b["lines"], list)
    for line in b["lines"]:
        check_line(line)
    assert b["n_items"] == sum(line["qty"] for line in b["lines"])
    assert b["total_minor"] == sum(line["line_price_minor"] for line in b["lines"])


def check_line(line: dict) -> None:
    assert LINE_KEYS <= set(line), sorted(LINE_KEYS - set(line))
    assert is_int(line["line_no"]) and is_int(line["qty"]) and line["qty"] >= 1
    assert re.fullmatch(r"\d{14}", line["gtin"]), line
    assert is_int(line["unit_price_minor"]) and is_int(line["line_price_minor"])
    assert line["weight_g"] is None or is_num(line["weight_g"])
    assert line["count"] is None or is_int(line["count"])
    assert isinstance(line["flags"], list) and all(isinstance(f, str) for f in line["flags"])


def check_verdict(v: dict) -> None:
    assert VERDICT_KEYS <= set(v), sorted(VERDICT_KEYS - set(v))
    assert v["verdict"] in ("ok", "short", "over")
    for k in ("expected_g", "measured_g", "band_g", "sigma_g", "z", "mpe_g"):
        assert is_num(v[k]), (k, v)
    assert isinstance(v["explanations"], list)
    if v["verdict"] == "ok":
        assert v["explanations"] == []
    for ex in v["explanations"]:
        assert {"kind", "score", "lines", "gtin", "qty"} <= set(ex), ex
        assert ex["kind"] in ("missing", "extra") and is_num(ex["score"])
        assert 0.0 <= ex["score"] <= 1.0
        for ln in ex["lines"]:
            assert {"gtin", "qty"} <= set(ln) and re.fullmatch(r"\d{14}", ln["gtin"])
        if len({ln["gtin"] for ln in ex["lines"]}) == 1:
            assert ex["gtin"] == ex["lines"][0]["gtin"] and is_int(ex["qty"]), ex
        else:
            assert ex["gtin"] is None and ex["qty"] is None, ex


def open_basket(c: Dealer, device: str = "HH07", **extra) -> str:
    r = c.call({"op": "basket.open", "device": device, **extra})
    assert r["ok"], r
    check_basket(r["basket"])
    return r["basket"]["basket_id"]


def submitted_order(c: Dealer, items: list[tuple[str, int]], device: str = "HH07") -> dict:
    bid = open_basket(c, device)
    r = c.call({"op": "basket.add", "basket": bid,
                "scans": [{"code": code, "qty": q} for code, q in items]})
    assert r["ok"], r
    r = c.call({"op": "basket.submit", "basket": bid})
    assert r["ok"], r
    return r


# ======================================================================================
# Transport and envelope


def test_hello_fields_and_types(svc):
    c = svc.dealer()
    r = c.call({"op": "hello", "id": "h-1"})
    assert r["ok"] is True and r["id"] == "h-1"
    assert r["protocol"] == 1 and is_int(r["protocol"])
    assert isinstance(r["server"], str) and r["server"]
    assert isinstance(r["capabilities"], list)
    assert all(isinstance(op, str) for op in r["capabilities"])
    assert set(r["capabilities"]) == OPS, set(r["capabilities"]) ^ OPS
    assert isinstance(r["kernels"], dict)
    assert r["store"] == {"region": "GB", "items": len(svc.rows)}
    # region: ISO 3166 alpha-2, or null when the store sets none
    assert r["store"]["region"] is None or re.fullmatch(r"[A-Z]{2}", r["store"]["region"])
    key = r["order_key"]
    assert key is None or (isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]{43}", key))
    lim = r["limits"]
    assert {"max_message_bytes", "max_batch", "max_frame_samples", "replay_window_s"} \
        <= set(lim)
    assert lim["max_message_bytes"] == MiB          # "larger than 1 MiB is refused"
    assert lim["max_batch"] == 1000                 # scan.batch: 1–1,000 codes
    assert lim["max_frame_samples"] == 4096         # weigh.frame: at most 4,096 values
    assert lim["replay_window_s"] == 600            # "within 10 minutes"
    # Fields an op does not know are ignored.
    r2 = c.call({"op": "hello", "from_the_future": {"x": [1, 2]}, "client": "lane-9"})
    assert r2["ok"] and r2["protocol"] == 1


def test_id_echo_str_and_int(svc):
    c = svc.dealer()
    for rid in ("abc", "", "ü-ñ-字", "x" * 128, 0, 7, -3, 2**63 - 1, -(2**63)):
        r = c.call({"op": "hello", "id": rid})
        assert r["ok"] is True and r["id"] == rid and type(r["id"]) is type(rid), (rid, r)
    # Errors echo the id too.
    r = c.call({"op": "no.such.op", "id": 42})
    assert_error(r, "UNKNOWN_OP", 42)
    r = c.call({"op": "scan", "id": "e-1", "lane": "L1"})
    assert_error(r, "MISSING_FIELD", "e-1")


def test_bad_ids(svc):
    c = svc.dealer()
    # id is str ≤ 128 or int: other shapes are BAD_FIELD; an absent id is MISSING_FIELD.
    assert_error(c.call_raw(pack({"op": "hello", "id": "x" * 129})), "BAD_FIELD")
    assert_error(c.call_raw(pack({"op": "hello", "id": 1.5})), "BAD_FIELD")
    assert_error(c.call_raw(pack({"op": "hello", "id": [1]})), "BAD_FIELD")
    assert_error(c.call_raw(pack({"op": "hello", "id": True})), "BAD_FIELD")
    err = assert_error(c.call_raw(pack({"op": "hello"})), "MISSING_FIELD", None)
    assert "id" in err["message"]
    # op: a str naming an op.
    err = assert_error(c.call({}), "MISSING_FIELD")
    assert "op" in err["message"]
    assert_error(c.call({"op": 3}), "BAD_FIELD")
    assert_error(c.call({"op": "HELLO"}), "UNKNOWN_OP")


def test_client_field_is_checked(svc):
    """`client`: str of 1–128 characters, optional; anything else is a field of the
    wrong type or out of range: BAD_FIELD."""
    c = svc.dealer()
    for good in ("c" * 128, "lane-1", "x"):
        r = c.call({"op": "hello", "client": good})
        assert r["ok"], (good, r)
    for bad in ("c" * 129, "", 5, ["lane-1"], b"lane-1"):
        assert_error(c.call({"op": "hello", "client": bad}), "BAD_FIELD")


def test_envelope_errors_with_null_id(svc):
    c = svc.dealer()
    # NOT_MSGPACK: not one MessagePack value (0xc1 is never used; trailing bytes; cut).
    for frame in (b"\xc1", b"", pack({"op": "hello", "id": 1}) + b"\x01",
                  pack({"op": "hello", "id": 1})[:-1], b"not msgpack at all {}"):
        r = c.call_raw(frame)
        assert_error(r, "NOT_MSGPACK", None)
    # NOT_A_MAP: valid MessagePack, not a map; the id cannot be found: null.
    for value in ([1, 2], "hello", 7, None, True, 1.5, b"\x00", [{"op": "hello", "id": 1}]):
        r = c.call_raw(pack(value))
        assert_error(r, "NOT_A_MAP", None)


def test_string_keys_required(svc):
    c = svc.dealer()
    r = c.call_raw(pack({"op": "hello", "id": "k", 1: 2}))
    assert r["ok"] is False, "a map whose keys are not all strings is not a request"
    # BAD_KEY_TYPE, id null (the request is not read), at any depth, any non-str key.
    assert_error(r, "BAD_KEY_TYPE", None)
    for bad in ({"op": "hello", "id": "k", 1.5: 2}, {"op": "hello", "id": "k", None: 1},
                {"op": "hello", "id": "k", "x": {7: 1}}, {3: "hello"}):
        assert_error(c.call_raw(pack(bad)), "BAD_KEY_TYPE", None)


def test_ready_line_on_stderr(svc):
    """`lanecore serve` says on stderr when it answers (docs/protocol.md, "Ready")."""
    text = svc.log.read_text(encoding="utf-8", errors="replace")
    mode = "curve" if svc.mode == "curve" else "plain"
    assert f"lanecore serving on {svc.endpoint} ({mode}), events on {svc.events}, " in text


def test_too_large_limits(svc):
    c = svc.dealer()
    KiB = 1024
    # Strings ≤ 64 KiB, arrays ≤ 10,000, maps ≤ 256 pairs, bins ≤ 1 MiB: at the limit
    # the request reads (the unknown field is ignored), one past it is TOO_LARGE.
    at_limit = [{"pad": "s" * (64 * KiB)}, {"pad": list(range(10_000))},
                {"pad": {f"k{i}": i for i in range(256)}},
                {"pad": b"\x00" * (MiB - 200)}]
    for extra in at_limit:
        r = c.call({"op": "hello", **extra})
        assert r["ok"] is True, (list(extra), r.get("error"))
    past = [{"pad": "s" * (64 * KiB + 1)}, {"pad": list(range(10_001))},
            {"pad": {f"k{i}": i for i in range(257)}},
            {"pad": [[["deep", "s" * (64 * KiB + 1)]]]}]
    for extra in past:
        r = c.call_raw(pack({"op": "hello", "id": "big", **extra}))
        assert_error(r, "TOO_LARGE")
        assert r["id"] in ("big", None)
    # A request map of 257 pairs.
    big = {"op": "hello", "id": "m", **{f"f{i}": i for i in range(255)}}
    assert len(big) == 257
    assert_error(c.call_raw(pack(big)), "TOO_LARGE")
    # "no extension types. Past them: TOO_LARGE."
    r = c.call_raw(pack({"op": "hello", "id": "x", "pad": msgpack.ExtType(5, b"abc")}))
    assert_error(r, "TOO_LARGE")
    # the service still answers
    assert c.call({"op": "hello"})["ok"]


def test_message_over_one_mib_drops_the_connection(svc):
    c = svc.dealer()
    # Exactly 1 MiB is a message the transport carries.
    base = pack({"op": "hello", "id": "edge", "pad": b""})
    pad = MiB - len(base)
    frame = pack({"op": "hello", "id": "edge", "pad": b"\x00" * pad})
    while len(frame) > MiB:          # the bin header grows with its length
        pad -= 1
        frame = pack({"op": "hello", "id": "edge", "pad": b"\x00" * pad})
    assert len(frame) == MiB
    r = c.call_raw(frame)
    assert r["ok"] is True and r["id"] == "edge"
    # One byte more: refused by the transport, no reply; reconnect and go on.
    over = pack({"op": "hello", "id": "over", "pad": b"\x00" * (pad + 1)})
    assert len(over) == MiB + 1
    c.send_frames([over])
    assert c.recv_frames(1500) is None, "a message over 1 MiB must get no reply"
    c2 = svc.dealer()
    assert c2.call({"op": "hello"})["ok"]
    assert svc.alive()


def test_frames_dealer_and_req(svc):
    d = svc.dealer()
    hello = pack({"op": "hello", "id": "f"})
    # Any other frame layout than one frame (DEALER) or delimiter + frame (REQ).
    for frames in ([hello, hello], [b"x", hello], [b"", b"", hello], [b"", hello, hello],
                   [hello, b""]):
        d.send_frames(frames)
        got = d.recv_frames()
        assert got is not None, f"no reply to {len(frames)} frames"
        assert_error(unpack(got[-1]), "BAD_FRAMES")
    # A DEALER that frames like REQ (empty delimiter) is a REQ client: the reply comes
    # back with the delimiter.
    d.send_frames([b"", hello])
    got = d.recv_frames()
    assert got is not None and len(got) == 2 and got[0] == b"", got
    assert unpack(got[1])["id"] == "f"
    # A real REQ socket.
    q = svc.req()
    r = q.call({"op": "hello", "id": 99})
    assert r["ok"] and r["protocol"] == 1 and r["id"] == 99
    r = q.call({"op": "scan", "lane": "L1", "code": svc.rows[0]["gtin"], "id": "q2"})
    assert r["ok"] and r["item"]["gtin"] == gtin14(svc.rows[0]["gtin"])
    assert_error(q.call_frames([pack([1])]), "NOT_A_MAP", None)
    assert_error(q.call_frames([b"\xc1"]), "NOT_MSGPACK", None)
    assert q.call({"op": "hello"})["ok"]


def test_req_client_gets_its_bad_frames_reply(svc):
    """"Any other frame layout is answered with BAD_FRAMES", and a REQ client gets
    its replies with the delimiter (else its socket discards them)."""
    q = svc.req()
    hello = pack({"op": "hello", "id": "f"})
    assert_error(q.call_frames([hello, hello], timeout_ms=3000), "BAD_FRAMES")


def test_missing_and_bad_fields_per_op(svc):
    c = svc.dealer()
    bid = open_basket(c)
    missing = [
        ({"op": "scan", "code": "5000000000012"}, "lane"),
        ({"op": "scan", "lane": "L1"}, "code"),
        ({"op": "scan.batch", "lane": "L1"}, "codes"),
        ({"op": "basket.open"}, "device"),
        ({"op": "basket.add", "basket": bid}, "scans"),
        ({"op": "basket.add", "scans": [{"code": "5000000000012"}]}, "basket"),
        ({"op": "basket.remove", "basket": bid}, "items"),
        ({"op": "basket.get"}, "basket"),
        ({"op": "basket.submit"}, "basket"),
        ({"op": "weigh.config"}, "lane"),
        ({"op": "weigh.frame", "seq": 0, "samples": f32([1.0])}, "lane"),
        ({"op": "weigh.frame", "lane": "L1", "samples": f32([1.0])}, "seq"),
        ({"op": "weights.confirm", "weight_g": 100.0}, "gtin"),
        ({"op": "weights.confirm", "gtin": "05000000000012"}, "weight_g"),
    ]
    for req, field in missing:
        err = assert_error(c.call(req), "MISSING_FIELD")
        assert field in err["message"], (req, err)
    bad = [
        {"op": "scan", "lane": "", "code": "5000000000012"},          # name: 1–64
        {"op": "scan", "lane": "L" * 65, "code": "5000000000012"},
        {"op": "scan", "lane": 7, "code": "5000000000012"},
        {"op": "scan", "lane": "L1", "code": "5" * 4097},              # code ≤ 4096
        {"op": "scan", "lane": "L1", "code": "5000000000012", "region": 44},
        {"op": "scan.batch", "lane": "L1", "codes": []},                # 1–1,000
        {"op": "scan.batch", "lane": "L1", "codes": ["5000000000012"] * 1001},
        {"op": "scan.batch", "lane": "L1", "codes": "5000000000012"},
        {"op": "basket.open", "device": ""},
        {"op": "basket.open", "device": "D" * 65},
        {"op": "basket.open", "device": "HH", "member": 12},
        {"op": "basket.add", "basket": bid, "scans": []},               # 1–500
        {"op": "basket.add", "basket": bid, "scans": {"code": "5000000000012"}},
        {"op": "basket.add", "basket": 17, "scans": [{"code": "5000000000012"}]},
        {"op": "basket.remove", "basket": bid, "items": []},
        {"op": "basket.get", "basket": ["x"]},
        {"op": "weigh.config", "lane": "L1", "config": [1000]},
        {"op": "weigh.frame", "lane": "L1", "seq": -1, "samples": f32([1.0])},
        {"op": "weigh.frame", "lane": "L1", "seq": "0", "samples": f32([1.0])},
        {"op": "verify.order", "lane": "L1", "order_no": 5, "measured_g": 1.0},
        {"op": "verify.order", "lane": "L1", "order_no": "X-1", "measured_g": "heavy"},
        {"op": "weights.confirm", "gtin": 5000000000012, "weight_g": 100.0},
        {"op": "weights.confirm", "gtin": "05000000000012", "weight_g": "100"},
    ]
    for req in bad:
        assert_error(c.call(req), "BAD_FIELD")
    # basket.add / weights.confirm quantities: "int 1–999".
    for q in (0, 1000, -1, 1.5):
        r = c.call({"op": "basket.add", "basket": bid,
                    "scans": [{"code": svc.rows[0]["gtin"], "qty": q}]})
        assert_error(r, {"BAD_FIELD", "BAD_QUANTITY"})
        r = c.call({"op": "weights.confirm", "gtin": gtin14(svc.rows[0]["gtin"]),
                    "weight_g": 100.0, "units": q})
        assert_error(r, {"BAD_FIELD", "BAD_QUANTITY"})


def test_unknown_op(svc):
    c = svc.dealer()
    for op in ("nope", "", "basket", "scan.batch.x", "Hello", "basket.cancel"):
        err = assert_error(c.call({"op": op, "id": "u"}), "UNKNOWN_OP", "u")
        assert err["message"]


# ======================================================================================
# Scans


def test_scan(svc):
    c = svc.dealer()
    rows = svc.rows
    hello = c.call({"op": "hello"})
    row = plain_items(rows, 1)[0]
    for code in (row["gtin"], gtin14(row["gtin"]), "]E0" + row["gtin"]):
        r = c.call({"op": "scan", "lane": "L1", "code": code})
        assert r["ok"] is True, r
        assert {"scan", "item"} <= set(r)
        s = r["scan"]
        assert set(s) == SCAN_OBJECT_KEYS, set(s) ^ SCAN_OBJECT_KEYS
        assert s["input"] == code and s["ok"] is True and s["kind"] == "gtin"
        assert s["gtin"] == gtin14(row["gtin"]) == s["lookup_gtin"]
        assert s["price_minor"] is None and s["weight_g"] is None and s["count"] is None
        assert s["ais"] is None and s["error"] is None
        it = r["item"]
        assert SCAN_ITEM_KEYS <= set(it), sorted(SCAN_ITEM_KEYS - set(it))
        assert it["gtin"] == gtin14(row["gtin"]) and it["name"] == row["name"]
        assert is_int(it["price_minor"]) and it["price_minor"] == int(row["price_minor"])
        assert it["line_price_minor"] == it["price_minor"]
        assert is_num(it["unit_weight_g"]) and is_num(it["weight_sd_g"])
        assert it["unit_weight_g"] == pytest.approx(float(row["unit_weight_g"]))
        assert it["weight_sd_g"] == pytest.approx(float(row["weight_sd_g"]))
        assert it["flags"] == []
        for k in ("origin", "producer", "inspection", "supply_chain", "promotion"):
            assert it[k] == (row[k] or None), (k, it[k], row[k])
        # The catalogue's item object, where the service sends its other two fields.
        if "flag_bits" in it:
            assert it["flag_bits"] == 0
        if "updated_at" in it:
            assert is_num(it["updated_at"])
    # flags and flag bits of flagged items
    bits = {"weight_exempt": 1, "variable_measure": 2, "eas_tagged": 4, "age_restricted": 8}
    for flag in ("weight_exempt", "eas_tagged", "age_restricted"):
        frow = row_with_flag(rows, flag)
        it = c.call({"op": "scan", "lane": "L1", "code": frow["gtin"]})["item"]
        assert it["flags"] == [flag]
        if "flag_bits" in it:
            assert it["flag_bits"] == bits[flag]
    exempt = c.call({"op": "scan", "lane": "L1",
                     "code": row_with_flag(rows, "weight_exempt")["gtin"]})["item"]
    if not row_with_flag(rows, "weight_exempt")["unit_weight_g"]:
        assert exempt["unit_weight_g"] is None and exempt["weight_sd_g"] is None
    # A GB deli label (prefix 20: price): kind rcn, the price it carries.
    vm = row_with_flag(rows, "variable_measure")
    code = deli_label(c, vm, 250)
    r = c.call({"op": "scan", "lane": "L1", "code": code, "region": "GB"})
    s, it = r["scan"], r["item"]
    assert s["kind"] == "rcn" and s["price_minor"] == 250 and s["weight_g"] is None
    assert s["gtin"] == gtin14(code) and s["lookup_gtin"] == gtin14(vm["gtin"])
    assert it["gtin"] == gtin14(vm["gtin"]) and it["flags"] == ["variable_measure"]
    assert it["price_minor"] == int(vm["price_minor"]) and it["line_price_minor"] == 250
    # A GS1 element string: ais map, AI → value.
    r = c.call({"op": "scan", "lane": "L1", "code": "]C101" + gtin14(row["gtin"])})
    assert r["ok"] and r["scan"]["kind"] == "gs1", r
    assert r["scan"]["ais"] == {"01": gtin14(row["gtin"])}
    # The region: default the store's (GB); an explicit other region.
    assert c.call({"op": "scan", "lane": "L1", "code": row["gtin"], "region": "SE"})["ok"]
    assert hello["store"]["region"] == "GB"


def test_scan_variable_measure_that_needs_weighing(svc):
    """An in-store code read in a region without a rule for its prefix is looked up
    whole and carries nothing: its item's line_price_minor is "null for a
    variable-measure item that still needs weighing". (In the GB store every
    variable-measure item is listed under a prefix-20 code, which always carries a
    price, so basket.add's NEEDS_WEIGHING cannot be reached from outside here.)"""
    c = svc.dealer()
    vm = row_with_flag(svc.rows, "variable_measure")
    r = c.call({"op": "scan", "lane": "L1", "code": vm["gtin"], "region": "US"})
    assert r["ok"] and r["item"]["flags"] == ["variable_measure"], r
    assert r["scan"]["price_minor"] is None and r["scan"]["weight_g"] is None
    assert r["item"]["line_price_minor"] is None, r["item"]


def test_scan_errors(svc):
    c = svc.dealer()
    row = plain_items(svc.rows, 1)[0]
    gtin = row["gtin"]
    wrong = gtin[:-1] + str((int(gtin[-1]) + 1) % 10)
    cases = [(wrong, "BAD_CHECK_DIGIT"), ("   ", "EMPTY"), ("\x00123", "NUL_BYTE"),
             ("é5000", "NON_ASCII"), ("50\x0712", "BAD_CHARACTER"), ("ZZ", "NON_DIGIT"), ("A5000", "NON_DIGIT"),
             ("12345", "BAD_LENGTH"), ("]X9123", "UNKNOWN_SYMBOLOGY"),
             (unknown_gtin13(svc.rows), "UNKNOWN_ITEM")]
    for code, want in cases:
        r = c.call({"op": "scan", "lane": "L1", "code": code, "id": f"s-{want}"})
        err = assert_error(r, want, f"s-{want}")
        assert err["message"]
    r = c.call({"op": "scan", "lane": "L1", "code": gtin, "region": "ZZZ"})
    assert_error(r, "BAD_FIELD")                      # a str of another length
    for bad in ("G1", "1B", "Ü1", "  "):               # not two ASCII letters
        assert_error(c.call({"op": "scan", "lane": "L1", "code": gtin, "region": bad}),
                     "UNKNOWN_REGION")
    for fine in ("gb", "ZZ"):        # either case; not checked against the ISO list
        r = c.call({"op": "scan", "lane": "L1", "code": gtin, "region": fine})
        assert r["ok"] and r["scan"]["gtin"] == gtin14(gtin), (fine, r)


def test_scan_batch(svc):
    c = svc.dealer()
    rows = plain_items(svc.rows, 3)
    wrong = rows[1]["gtin"][:-1] + str((int(rows[1]["gtin"][-1]) + 1) % 10)
    codes = [rows[0]["gtin"], wrong, unknown_gtin13(svc.rows), rows[2]["gtin"], ""]
    r = c.call({"op": "scan.batch", "lane": "L1", "codes": codes})
    assert r["ok"] is True
    res = r["results"]
    assert isinstance(res, list) and len(res) == len(codes)
    for i in (0, 3):
        assert res[i]["ok"] is True and {"scan", "item"} <= set(res[i]), res[i]
        assert set(res[i]["scan"]) == SCAN_OBJECT_KEYS
        assert res[i]["scan"]["input"] == codes[i]
        assert res[i]["item"]["gtin"] == gtin14(codes[i])
        assert SCAN_ITEM_KEYS <= set(res[i]["item"])
    for i, want in ((1, "BAD_CHECK_DIGIT"), (2, "UNKNOWN_ITEM"), (4, "EMPTY")):
        assert res[i]["ok"] is False and "error" in res[i], res[i]
        assert res[i]["error"]["code"] == want and isinstance(res[i]["error"]["message"], str)
    # 1,000 codes: the documented maximum.
    r = c.call({"op": "scan.batch", "lane": "L1", "codes": [rows[0]["gtin"]] * 1000})
    assert r["ok"] and len(r["results"]) == 1000 and all(x["ok"] for x in r["results"])


def test_scan_batch_code_that_is_not_text(svc):
    """`codes` is a list of str. A code that is not one either fails the request
    (BAD_FIELD) or is that code's result with the scan error for it: NOT_TEXT, "the
    scan is not a string"."""
    c = svc.dealer()
    row = plain_items(svc.rows, 1)[0]
    r = c.call({"op": "scan.batch", "lane": "L1", "codes": [row["gtin"], 5]})
    if r["ok"]:
        assert r["results"][0]["ok"] is True
        assert r["results"][1]["ok"] is False
        assert r["results"][1]["error"]["code"] == "NOT_TEXT", r["results"][1]
    else:
        assert_error(r, "BAD_FIELD")


# ======================================================================================
# Baskets and orders


def test_basket_journey(svc):
    c = svc.dealer()
    rows = plain_items(svc.rows, 4)
    hello = c.call({"op": "hello"})
    t0 = time.time()
    r = c.call({"op": "basket.open", "device": "hh-07", "member": "M-1234"})
    assert r["ok"] and set(r) >= {"basket"}
    b = r["basket"]
    check_basket(b)
    assert b["device"] == "hh-07" and b["member"] == "M-1234"
    assert b["status"] == "open" and b["order_no"] is None and b["lines"] == []
    assert b["n_items"] == 0 and b["total_minor"] == 0 and b["currency"] == "GBP"
    assert abs(b["opened_at"] - t0) < 60
    bid = b["basket_id"]
    # member? is optional: absent → null
    other = c.call({"op": "basket.open", "device": "HH08"})["basket"]
    assert other["member"] is None and other["basket_id"] != bid

    # add a batch with qty
    vm = row_with_flag(svc.rows, "variable_measure")
    label = deli_label(c, vm, 375)
    scans = [{"code": rows[0]["gtin"], "qty": 3}, {"code": "]E0" + rows[1]["gtin"]},
             {"code": label}, {"code": gtin14(rows[2]["gtin"]), "qty": 2}]
    r = c.call({"op": "basket.add", "basket": bid, "scans": scans})
    assert r["ok"], r
    b = r["basket"]
    check_basket(b)
    assert [ln["line_no"] for ln in b["lines"]] == [1, 2, 3, 4]
    by_no = {ln["line_no"]: ln for ln in b["lines"]}
    l1, l2, l3, l4 = (by_no[i] for i in (1, 2, 3, 4))
    assert l1["code"] == rows[0]["gtin"] and l1["gtin"] == gtin14(rows[0]["gtin"])
    assert l1["qty"] == 3 and l1["name"] == rows[0]["name"]
    assert l1["unit_price_minor"] == int(rows[0]["price_minor"])
    assert l1["line_price_minor"] == 3 * int(rows[0]["price_minor"])
    assert l1["weight_g"] is None and l1["count"] is None and l1["flags"] == []
    assert l2["code"] == "]E0" + rows[1]["gtin"] and l2["qty"] == 1
    assert l3["code"] == label and l3["gtin"] == gtin14(vm["gtin"]) and l3["qty"] == 1
    assert l3["unit_price_minor"] == int(vm["price_minor"])   # per kg
    assert l3["line_price_minor"] == 375 and l3["flags"] == ["variable_measure"]
    assert l4["qty"] == 2
    assert b["n_items"] == 7
    # remove by line_no, some units
    r = c.call({"op": "basket.remove", "basket": bid, "items": [{"line_no": 1, "qty": 2}]})
    assert r["ok"], r
    b = r["basket"]
    check_basket(b)
    assert {ln["line_no"]: ln["qty"] for ln in b["lines"]} == {1: 1, 2: 1, 3: 1, 4: 2}
    # remove by gtin, no qty: the whole line; and a whole line by line_no
    r = c.call({"op": "basket.remove", "basket": bid,
                "items": [{"gtin": gtin14(rows[2]["gtin"])}, {"line_no": 2}]})
    assert r["ok"], r
    b = r["basket"]
    check_basket(b)
    assert sorted(ln["line_no"] for ln in b["lines"]) == [1, 3]
    # line numbers are never reused
    r = c.call({"op": "basket.add", "basket": bid, "scans": [{"code": rows[3]["gtin"]}]})
    assert r["ok"], r
    new = [ln for ln in r["basket"]["lines"] if ln["gtin"] == gtin14(rows[3]["gtin"])]
    assert len(new) == 1 and new[0]["line_no"] == 5, r["basket"]["lines"]
    # get
    g = c.call({"op": "basket.get", "basket": bid})
    assert g["ok"] and g["basket"] == r["basket"]
    expected_total = int(rows[0]["price_minor"]) + 375 + int(rows[3]["price_minor"])
    assert g["basket"]["total_minor"] == expected_total and g["basket"]["n_items"] == 3

    # submit
    t1 = time.time()
    s = c.call({"op": "basket.submit", "basket": bid})
    assert s["ok"], s
    assert ORDER_KEYS <= set(s), sorted(ORDER_KEYS - set(s))
    assert re.fullmatch(r"[A-Z0-9-]{1,32}", s["order_no"]), s["order_no"]
    # docs/store/baskets.md: {DEVICE}-{YYMMDD}-{NNNN}, device upper-cased, runs of others → -
    assert re.fullmatch(r"HH-07-\d{6}-\d{4}", s["order_no"]), s["order_no"]
    assert s["basket_id"] == bid and s["status"] == "submitted"
    assert is_num(s["created_at"]) and abs(s["created_at"] - t1) < 60
    assert s["total_minor"] == expected_total and s["n_items"] == 3
    assert s["currency"] == "GBP"
    assert s["lines"] == g["basket"]["lines"]
    assert isinstance(s["lines_digest"], str) and isinstance(s["qr"], str)
    # The order QR: LCO1.<payload>.<signature>, verified with hello's order_key alone.
    tag, body, sig = s["qr"].split(".")
    assert tag == "LCO1" and len(sig) == 86
    payload = json.loads(unb64(body))
    assert set(payload) == {"cur", "digest", "iat", "n", "order", "store", "total", "v"}
    assert payload["order"] == s["order_no"] and payload["total"] == expected_total
    assert payload["n"] == 3 and payload["cur"] == "GBP" and payload["v"] == 1
    assert abs(payload["iat"] - int(s["created_at"])) <= 1
    assert payload["digest"] == s["lines_digest"][:32]
    canon = [[ln["line_no"], ln["gtin"], ln["qty"], ln["unit_price_minor"],
              ln["line_price_minor"],
              None if ln["weight_g"] is None else round(ln["weight_g"] * 1000),
              ln["count"]] for ln in sorted(s["lines"], key=lambda x: x["line_no"])]
    digest = hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()
    assert s["lines_digest"] == digest
    if hello["order_key"] is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        key = Ed25519PublicKey.from_public_bytes(unb64(hello["order_key"]))
        key.verify(unb64(sig), f"{tag}.{body}".encode("ascii"))
    # the basket after submit
    g = c.call({"op": "basket.get", "basket": bid})
    assert g["basket"]["status"] == "submitted" and g["basket"]["order_no"] == s["order_no"]
    # closed: add, remove and submit again are BASKET_CLOSED
    assert_error(c.call({"op": "basket.add", "basket": bid,
                         "scans": [{"code": rows[0]["gtin"]}]}), "BASKET_CLOSED")
    assert_error(c.call({"op": "basket.remove", "basket": bid,
                         "items": [{"line_no": 1}]}), "BASKET_CLOSED")
    assert_error(c.call({"op": "basket.submit", "basket": bid}), "BASKET_CLOSED")

    # the order moves on: paid, exited; nothing else, nothing twice
    o = c.call({"op": "order.get", "order_no": s["order_no"]})
    assert o["ok"] and o["order"]["status"] == "submitted" and o["order"]["qr"] == s["qr"]
    assert_error(c.call({"op": "order.status", "order_no": s["order_no"],
                         "status": "exited"}), "BAD_STATUS")
    order_sub = svc.sub("order")
    p = c.call({"op": "order.status", "order_no": s["order_no"], "status": "paid"})
    assert p["ok"] and p["order"]["status"] == "paid"
    assert_error(c.call({"op": "order.status", "order_no": s["order_no"],
                         "status": "paid"}), "BAD_STATUS")
    x = c.call({"op": "order.status", "order_no": s["order_no"], "status": "exited"})
    assert x["ok"] and x["order"]["status"] == "exited"
    # each change is published on the `order` topic as {order_no, status}
    assert order_sub.drain(1.0) == [("order", {"order_no": s["order_no"], "status": st})
                                    for st in ("paid", "exited")]
    assert_error(c.call({"op": "order.status", "order_no": s["order_no"],
                         "status": "lost"}), "BAD_FIELD")
    assert_error(c.call({"op": "order.get", "order_no": "NO-SUCH-ORDER"}), "UNKNOWN_ORDER")


def test_basket_errors(svc):
    c = svc.dealer()
    rows = plain_items(svc.rows, 3)
    nobody = "A" * 12
    assert_error(c.call({"op": "basket.get", "basket": nobody}), "UNKNOWN_BASKET")
    assert_error(c.call({"op": "basket.add", "basket": nobody,
                         "scans": [{"code": rows[0]["gtin"]}]}), "UNKNOWN_BASKET")
    assert_error(c.call({"op": "basket.remove", "basket": nobody,
                         "items": [{"line_no": 1}]}), "UNKNOWN_BASKET")
    assert_error(c.call({"op": "basket.submit", "basket": nobody}), "UNKNOWN_BASKET")
    bid = open_basket(c)
    assert_error(c.call({"op": "basket.submit", "basket": bid}), "EMPTY_BASKET")
    # scans/items of the wrong type or length are BAD_FIELD; the shapes inside, BAD_REQUEST
    for bad in ("x", [], {"code": rows[0]["gtin"]}, [{"code": rows[0]["gtin"]}] * 1001):
        assert_error(c.call({"op": "basket.add", "basket": bid, "scans": bad}), "BAD_FIELD")
        assert_error(c.call({"op": "basket.remove", "basket": bid, "items": bad}),
                     "BAD_FIELD")
    assert_error(c.call({"op": "basket.add", "basket": bid, "scans": ["x"]}), "BAD_REQUEST")
    assert_error(c.call({"op": "basket.add", "basket": bid,
                         "scans": [{"code": rows[0]["gtin"]}] * 501}), "BAD_REQUEST")
    # BAD_SCAN: index and the scan's own error object; all or nothing.
    wrong = rows[1]["gtin"][:-1] + str((int(rows[1]["gtin"][-1]) + 1) % 10)
    r = c.call({"op": "basket.add", "basket": bid,
                "scans": [{"code": rows[0]["gtin"]}, {"code": rows[2]["gtin"]},
                          {"code": wrong}]})
    err = assert_error(r, "BAD_SCAN")
    assert err["index"] == 2
    assert err["scan_error"]["code"] == "BAD_CHECK_DIGIT"
    assert isinstance(err["scan_error"]["message"], str)
    assert c.call({"op": "basket.get", "basket": bid})["basket"]["lines"] == []
    # UNKNOWN_ITEM: the failing scan's index
    r = c.call({"op": "basket.add", "basket": bid,
                "scans": [{"code": rows[0]["gtin"]}, {"code": unknown_gtin13(svc.rows)}]})
    err = assert_error(r, "UNKNOWN_ITEM")
    assert err.get("index") == 1, err
    assert c.call({"op": "basket.get", "basket": bid})["basket"]["lines"] == []
    # (NEEDS_WEIGHING: test_scan_variable_measure_that_needs_weighing)
    vm = row_with_flag(svc.rows, "variable_measure")
    # BAD_QUANTITY: a label is one item (docs/store/baskets.md)
    label = deli_label(c, vm, 199)
    r = c.call({"op": "basket.add", "basket": bid, "scans": [{"code": label, "qty": 2}]})
    assert_error(r, "BAD_QUANTITY")
    # BAD_REQUEST: wrong shapes
    for scans in ([{"code": rows[0]["gtin"], "colour": "red"}], [{"qty": 1}], ["5000"]):
        assert_error(c.call({"op": "basket.add", "basket": bid, "scans": scans}),
                     {"BAD_REQUEST", "BAD_FIELD"})
    assert c.call({"op": "basket.get", "basket": bid})["basket"]["lines"] == []
    # BAD_LINE and BAD_REQUEST on remove
    r = c.call({"op": "basket.add", "basket": bid,
                "scans": [{"code": rows[0]["gtin"], "qty": 2}]})
    assert r["ok"]
    before = r["basket"]
    for items in ([{"line_no": 99}], [{"gtin": gtin14(rows[1]["gtin"])}],
                  [{"line_no": 1, "qty": 3}], [{"line_no": 1, "qty": 1}, {"line_no": 7}]):
        assert_error(c.call({"op": "basket.remove", "basket": bid, "items": items}),
                     "BAD_LINE")
    for items in ([{"line_no": 1, "gtin": gtin14(rows[0]["gtin"])}], [{"qty": 1}],
                  [{"line_no": 1, "colour": "red"}]):
        assert_error(c.call({"op": "basket.remove", "basket": bid, "items": items}),
                     {"BAD_REQUEST", "BAD_FIELD"})
    after = c.call({"op": "basket.get", "basket": bid})["basket"]
    assert after["lines"] == before["lines"], "a failed remove changed the basket"
    # TOO_MANY_LINES: more than 500 lines
    many = [r for r in svc.rows if not r["flags"]][:501]
    big = open_basket(c, "HH99")
    r = c.call({"op": "basket.add", "basket": big,
                "scans": [{"code": x["gtin"]} for x in many[:500]]})
    assert r["ok"] and len(r["basket"]["lines"]) == 500
    r = c.call({"op": "basket.add", "basket": big, "scans": [{"code": many[500]["gtin"]}]})
    assert_error(r, "TOO_MANY_LINES")
    # scans: 1–500
    r = c.call({"op": "basket.add", "basket": bid,
                "scans": [{"code": rows[0]["gtin"]}] * 501})
    assert_error(r, {"BAD_FIELD", "BAD_REQUEST"})


# ======================================================================================
# Weighing


def test_weigh_config(svc):
    c = svc.dealer()
    r = c.call({"op": "weigh.config", "lane": "W1"})
    assert r["ok"], r
    assert r["lane"] == "W1"
    cfg = r["config"]
    assert set(LANE_DEFAULTS) <= set(cfg), sorted(set(LANE_DEFAULTS) - set(cfg))
    for k, v in LANE_DEFAULTS.items():
        if k not in ("lowpass_hz", "overload_g"):   # computed: test_weigh_config_defaults
            assert cfg[k] == pytest.approx(v), (k, cfg[k], v)
    assert r["window_samples"] == 250 and is_int(r["window_samples"])
    r = c.call({"op": "weigh.config", "lane": "W2",
                "config": {"fs_hz": 1000, "e_g": 5, "conveyor_hz": 7}})
    assert r["ok"], r
    assert r["config"]["conveyor_hz"] == 7 and r["config"]["e_g"] == 5
    r = c.call({"op": "weigh.config", "lane": "W3",
                "config": {"fs_hz": 200, "stable_window_s": 0.5, "e_g": 2, "max_g": 6000}})
    assert r["ok"], r
    cfg = r["config"]
    assert cfg["fs_hz"] == 200 and r["window_samples"] == 100
    # Errors
    for bad, code in (({"fs_hz": 0}, "BAD_SAMPLE_RATE"), ({"fs_hz": 10_001}, "BAD_SAMPLE_RATE"),
                      ({"fs_hz": "fast"}, "BAD_SAMPLE_RATE"),
                      ({"e_g": 0}, "BAD_SCALE_INTERVAL"), ({"e_g": -5}, "BAD_SCALE_INTERVAL"),
                      ({"lowpass_hz": 600}, "BAD_FILTER"), ({"lowpass_order": 3}, "BAD_FILTER"),
                      ({"stable_window_s": -1}, "BAD_WEIGH_CONFIG")):
        err = assert_error(c.call({"op": "weigh.config", "lane": "WX", "config": bad}), code)
        assert err["message"]


def test_weigh_config_defaults_filled_in(svc):
    """"config (every field, defaults filled in)": the computed defaults too —
    lowpass_hz min(20, fs/5), overload_g Max + 9 e (docs/weigh/weighing.md)."""
    c = svc.dealer()
    r = c.call({"op": "weigh.config", "lane": "W1"})
    nulls = sorted(k for k, v in r["config"].items() if v is None)
    assert nulls == [], f"config fields left null: {nulls}"
    for k, v in LANE_DEFAULTS.items():
        assert r["config"][k] == pytest.approx(v), (k, r["config"][k], v)
    r = c.call({"op": "weigh.config", "lane": "W3",
                "config": {"fs_hz": 50, "e_g": 2, "max_g": 6000}})
    assert r["config"]["lowpass_hz"] == pytest.approx(min(20, 50 / 5))
    assert r["config"]["overload_g"] == pytest.approx(6000 + 9 * 2)


def test_weigh_frames_settled_event(svc):
    c = svc.dealer()
    sub = svc.sub("settled", "fault")
    assert c.call({"op": "weigh.config", "lane": "W1", "config": {"fs_hz": 1000}})["ok"]
    r = c.call({"op": "weigh.frame", "lane": "W1", "seq": 0, "samples": f32([0.0] * 50)})
    assert r["ok"] and {"lane", "events", "stable", "settled_g"} <= set(r)
    assert r["lane"] == "W1" and r["stable"] is False and r["settled_g"] is None
    assert r["events"] == []
    events, seq = settle(c, "W1", 1250.0, seq0=1, frames=12)
    settled = [e for e in events if e["event"] == "settled"]
    assert settled, events
    for e in events:
        check_event(e)
    ev = settled[-1]
    assert ev["weight_g"] == pytest.approx(1250.0, abs=1.0)
    assert is_num(ev["sigma_g"]) and 0 <= ev["sigma_g"] < 1
    assert is_int(ev["n_samples"]) and ev["n_samples"] >= 250
    r = c.call({"op": "weigh.frame", "lane": "W1", "seq": seq,
                "samples": f32([1250.0] * 50)})
    assert r["stable"] is True and r["settled_g"] == pytest.approx(ev["weight_g"])
    got = sub.drain(1.0)
    pub = [m for t, m in got if t == "settled"]
    assert pub, got
    assert pub[-1]["lane"] == "W1"
    check_event(pub[-1])
    assert pub[-1]["event"] == "settled"
    # Flat: the weighing event's fields beside `lane`, exactly the reply's event.
    assert set(pub[-1]) == {"lane", "t", "sample", "event", "weight_g", "sigma_g",
                            "n_samples"}, pub[-1]
    assert {"lane": "W1", **ev} in pub, (ev, pub)
    assert pub[-1]["weight_g"] == pytest.approx(ev["weight_g"])
    # Sequence gaps and late frames are not errors: fault events, in the reply and on PUB.
    r = c.call({"op": "weigh.frame", "lane": "W1", "seq": seq + 5,
                "samples": f32([1250.0] * 50)})
    assert r["ok"], r
    faults = [e for e in r["events"] if e["event"] == "fault"]
    assert faults and faults[0]["reason"] == "sequence_gap" and faults[0]["frames"] == 4
    for e in r["events"]:
        check_event(e, null_fields=False)
    r = c.call({"op": "weigh.frame", "lane": "W1", "seq": seq + 1,
                "samples": f32([1250.0] * 50)})
    assert r["ok"], r
    faults = [e for e in r["events"] if e["event"] == "fault"]
    assert faults and faults[0]["reason"] == "out_of_order" and is_int(faults[0]["frames"])
    for e in r["events"]:
        check_event(e, null_fields=False)
    # A NaN sample is a fault too.
    r = c.call({"op": "weigh.frame", "lane": "W1", "seq": seq + 6,
                "samples": f32([1250.0] * 10 + [math.nan] + [1250.0] * 10)})
    assert r["ok"] and any(e["event"] == "fault" and e["reason"] == "nan"
                           for e in r["events"]), r
    got = sub.drain(1.0)
    pub_faults = [m for t, m in got if t == "fault"]
    assert len(pub_faults) >= 3, got
    for m in pub_faults:
        assert m["lane"] == "W1"
        check_event(m, null_fields=False)


def test_every_event_has_weight_and_sigma(svc):
    """"weight_g and sigma_g are present on every row (null when the event has none)",
    and "A field that has no value is present and null": for every kind of event."""
    c = svc.dealer()
    assert c.call({"op": "weigh.config", "lane": "F1"})["ok"]
    rng = random.Random(3)
    events, seq = [], 0
    for weight_g, frames in ((100, 10), (600, 10), (0, 10), (40_000, 4), (-500, 4)):
        for _ in range(frames):
            events += c.call({"op": "weigh.frame", "lane": "F1", "seq": seq,
                              "samples": f32(noisy(weight_g, 50, rng))})["events"]
            seq += 1
    for s_ in (seq + 2, seq):   # a gap, then a late frame
        events += c.call({"op": "weigh.frame", "lane": "F1", "seq": s_,
                          "samples": f32([0.0] * 20)})["events"]
    kinds = {e["event"] for e in events}
    assert {"settled", "placed", "removed", "motion", "overload", "under_zero",
            "fault"} <= kinds, kinds
    for e in events:
        check_event(e, null_fields=False)
    lacking = sorted({e["event"] for e in events if not {"weight_g", "sigma_g"} <= set(e)})
    assert lacking == [], f"events without weight_g/sigma_g: {lacking}"
    for e in events:
        if e["event"] in ("fault", "placed", "removed"):
            assert e["weight_g"] is None and e["sigma_g"] is None, e


def test_weigh_counts_lane(svc):
    c = svc.dealer()
    per_g, zero = 250.0, 12000
    r = c.call({"op": "weigh.config", "lane": "C1",
                "config": {"fs_hz": 1000, "counts_per_g": per_g, "zero_counts": zero}})
    assert r["ok"], r
    assert r["config"]["counts_per_g"] == per_g and r["config"]["zero_counts"] == zero
    events, _ = settle(c, "C1", 800.0, frames=12, counts=(per_g, zero))
    settled = [e for e in events if e["event"] == "settled"]
    assert settled and settled[-1]["weight_g"] == pytest.approx(800.0, abs=1.0), events


def test_weigh_frame_errors(svc):
    c = svc.dealer()
    r = c.call({"op": "weigh.frame", "lane": "NEVER", "seq": 0, "samples": f32([1.0] * 4)})
    assert_error(r, "LANE_NOT_CONFIGURED")
    assert c.call({"op": "weigh.config", "lane": "W1"})["ok"]
    ok = c.call({"op": "weigh.frame", "lane": "W1", "seq": 0,
                 "samples": f32([5.0] * 4096)})
    assert ok["ok"], ok                                     # at most 4,096: the limit
    bad = [
        {"samples": f32([1.0] * 4097)},                     # over 4,096 values
        {"counts": i32([1] * 4097)},
        {"samples": f32([1.0] * 4), "counts": i32([1] * 4)},  # both
        {"samples": b"\x00\x00\x80"},                       # not whole float32 values
        {"counts": b"\x00\x00\x00\x00\x00"},
        {"samples": [1.0, 2.0]},                            # not bin
        {"samples": "AAAA"},
    ]
    for i, body in enumerate(bad, start=1):
        r = c.call({"op": "weigh.frame", "lane": "W1", "seq": i, **body})
        assert_error(r, "BAD_FIELD")
    r = c.call({"op": "weigh.frame", "lane": "W1", "seq": 50})    # neither
    assert_error(r, {"BAD_FIELD", "MISSING_FIELD"})


def test_too_many_lanes(serve):
    s = serve("--max-lanes", "1")
    c = Dealer(s.endpoint)
    try:
        assert c.call({"op": "weigh.config", "lane": "A"})["ok"]
        assert_error(c.call({"op": "weigh.config", "lane": "B"}), "TOO_MANY_LANES")
        assert c.call({"op": "weigh.config", "lane": "A"})["ok"]   # same lane: reset
    finally:
        c.close()


# ======================================================================================
# Verification at the exit


def test_verify_order(svc):
    c = svc.dealer()
    rows = plain_items(svc.rows, 3, min_g=200.0)
    sub = svc.sub("verdict", "alarm")
    hello = c.call({"op": "hello"})
    # Unit weights as the weigh-check uses them (learned or from the catalogue).
    units = {}
    for row in rows:
        units[gtin14(row["gtin"])] = c.call({"op": "scan", "lane": "X",
                                             "code": row["gtin"]})["item"]
    order = submitted_order(c, [(rows[0]["gtin"], 2), (rows[1]["gtin"], 1),
                                (rows[2]["gtin"], 1)], device="EXIT-TEST")
    expected = sum(units[ln["gtin"]]["unit_weight_g"] * ln["qty"] for ln in order["lines"])

    # Lane weighs the goods; verify.order by order_no without measured_g uses the
    # lane's settled weight.
    lane = "EXIT1"
    assert c.call({"op": "weigh.config", "lane": lane})["ok"]
    r = c.call({"op": "verify.order", "lane": lane, "order_no": order["order_no"]})
    assert_error(r, "NO_SETTLED_WEIGHT")
    events, _ = settle(c, lane, expected, frames=12)
    settled = [e for e in events if e["event"] == "settled"][-1]["weight_g"]
    r = c.call({"op": "verify.order", "lane": lane, "order_no": order["order_no"]})
    assert r["ok"], r
    assert r["order_no"] == order["order_no"] and r["order_status"] == "submitted"
    check_verdict(r)
    assert r["verdict"] == "ok" and r["explanations"] == []
    # docs/weigh/verification.md: weights rounded to 0.1 g, z to 0.01, scores to 0.0001
    assert r["measured_g"] == pytest.approx(settled, abs=0.051)
    assert r["expected_g"] == pytest.approx(expected, abs=0.051)
    assert r["band_g"] > 0 and r["sigma_g"] > 0 and r["mpe_g"] > 0
    assert r["z"] == pytest.approx((r["measured_g"] - r["expected_g"]) / r["sigma_g"],
                                   abs=0.02 + 0.1 / r["sigma_g"])

    # by order_qr with measured_g: one unit of the heaviest line missing → short
    heavy = max(order["lines"], key=lambda ln: units[ln["gtin"]]["unit_weight_g"])
    short_g = expected - units[heavy["gtin"]]["unit_weight_g"]
    r = c.call({"op": "verify.order", "gate": "GATE2", "order_qr": order["qr"],
                "measured_g": short_g})
    assert r["ok"], r
    check_verdict(r)
    assert r["order_no"] == order["order_no"] and r["verdict"] == "short"
    assert r["measured_g"] == pytest.approx(short_g, abs=0.051)
    top = r["explanations"][0]
    assert top["kind"] == "missing" and top["gtin"] == heavy["gtin"] and top["qty"] == 1
    # an extra unit → over
    r = c.call({"op": "verify.order", "gate": "GATE2", "order_no": order["order_no"],
                "measured_g": expected + units[heavy["gtin"]]["unit_weight_g"]})
    assert r["ok"] and r["verdict"] == "over", r
    check_verdict(r)

    # Published: a verdict event per verdict, an alarm for the two that are not ok.
    got = sub.drain(1.5)
    verdicts = [m for t, m in got if t == "verdict"]
    alarms = [m for t, m in got if t == "alarm"]
    assert len(verdicts) == 3 and len(alarms) == 2, got
    for m in verdicts + alarms:
        assert {"gate", "order_no"} <= set(m) and m["order_no"] == order["order_no"]
        check_verdict(m)
    assert verdicts[0]["gate"] == lane and verdicts[0]["verdict"] == "ok"
    assert [m["gate"] for m in alarms] == ["GATE2", "GATE2"]
    assert [m["verdict"] for m in alarms] == ["short", "over"]

    # An ok verdict feeds the gate's scale health.
    h = c.call({"op": "health"})
    assert h["ok"] and h["scales"], h
    for sc in h["scales"]:
        assert SCALE_KEYS <= set(sc), sc
    assert any(lane in sc["scale_id"] for sc in h["scales"]), h["scales"]

    # An altered QR: the payload changed, the signature kept.
    tag, body, sig = order["qr"].split(".")
    payload = json.loads(unb64(body))
    payload["total"] += 100
    forged_body = b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    r = c.call({"op": "verify.order", "gate": "GATE2", "measured_g": expected,
                "order_qr": f"{tag}.{forged_body}.{sig}"})
    assert_error(r, "QR_SIGNATURE")
    # another store's signature (a different, valid-looking one)
    other_sig = b64(bytes(64))
    r = c.call({"op": "verify.order", "gate": "GATE2", "measured_g": expected,
                "order_qr": f"{tag}.{body}.{other_sig}"})
    assert_error(r, "QR_SIGNATURE")
    r = c.call({"op": "verify.order", "gate": "GATE2", "measured_g": expected,
                "order_qr": f"LCO2.{body}.{sig}"})
    assert_error(r, "QR_VERSION")
    for junk in ("not a qr", "LCO1.only-two", "", order["qr"] + ".x"):
        r = c.call({"op": "verify.order", "gate": "GATE2", "measured_g": expected,
                    "order_qr": junk})
        assert_error(r, {"QR_FORMAT", "BAD_FIELD"} if junk == "" else "QR_FORMAT")
    # UNKNOWN_ORDER
    r = c.call({"op": "verify.order", "gate": "GATE2", "order_no": "NOPE-000000-0001",
                "measured_g": 100.0})
    assert_error(r, "UNKNOWN_ORDER")
    # BAD_MEASUREMENT: below −10 e
    r = c.call({"op": "verify.order", "gate": "GATE2", "order_no": order["order_no"],
                "measured_g": -1000.0})
    assert_error(r, "BAD_MEASUREMENT")
    # Neither gate nor lane; neither order_no nor order_qr.
    assert_error(c.call({"op": "verify.order", "order_no": order["order_no"],
                         "measured_g": 1.0}), "MISSING_FIELD")
    assert_error(c.call({"op": "verify.order", "gate": "G", "measured_g": 1.0}),
                 "MISSING_FIELD")
    assert hello["order_key"] is not None


def test_verify_price_only_label_weight_is_derived(svc):
    """A price-only in-store label of a variable-measure item (a GB deli label) is
    expected to weigh p × 1000 ÷ the line's unit_price_minor (the price per kg), with
    σ √(1 + h²/3) g, h = 500 ÷ price per kg (docs/protocol.md, `verify.order`)."""
    c = svc.dealer()
    vm = row_with_flag(svc.rows, "variable_measure")
    label = deli_label(c, vm, 420)
    order = submitted_order(c, [(label, 1)])
    line = order["lines"][0]
    assert line["weight_g"] is None and line["line_price_minor"] == 420
    per_kg = line["unit_price_minor"]
    assert is_int(per_kg) and per_kg > 0
    expected = 420 * 1000 / per_kg
    sigma = math.sqrt(1 + (500 / per_kg) ** 2 / 3)
    r = c.call({"op": "verify.order", "gate": "G1", "order_no": order["order_no"],
                "measured_g": expected})
    assert r["ok"], r
    # weights come rounded to 0.1 g
    assert r["verdict"] == "ok" and abs(r["expected_g"] - expected) <= 0.05 + 1e-9, r
    # Far beyond the band either way: the derived weight is what is checked.
    for off, verdict in ((r["band_g"] + 10 * sigma + 50, "over"),
                         (-(r["band_g"] + 10 * sigma + 50), "short")):
        if expected + off < 0:
            continue
        r2 = c.call({"op": "verify.order", "gate": "G1", "order_no": order["order_no"],
                     "measured_g": expected + off})
        assert r2["ok"] and r2["verdict"] == verdict, r2


def test_verify_order_data_errors(svc):
    c = svc.dealer()
    rows = svc.rows
    # Beyond 10,000 e (50 kg at e = 5 g).
    heavy = plain_items(rows, 1, min_g=300.0)[0]
    order = submitted_order(c, [(heavy["gtin"], 999)])
    r = c.call({"op": "verify.order", "gate": "G1", "order_no": order["order_no"],
                "measured_g": 999 * float(heavy["unit_weight_g"])})
    assert_error(r, "OVER_CAPACITY")
    # measured_g omitted on a gate whose lane has never weighed anything.
    r = c.call({"op": "verify.order", "lane": "NEVER", "order_no": order["order_no"]})
    assert_error(r, {"NO_SETTLED_WEIGHT", "LANE_NOT_CONFIGURED"})


# ======================================================================================
# Device events


def test_device_event_stored_published_and_once(svc):
    """`device.event`: the event comes back, is published on `device`, and a retry with
    the same id is answered from the record without a second publication."""
    c = svc.dealer()
    sub = svc.sub("device")
    req = {"op": "device.event", "id": "gate-alarm-1", "lane": "EXIT-B",
           "device": "eas_gate", "kind": "alarm", "code": "LIVE_TAG",
           "message": "gate 1, left side"}
    r = c.call(req)
    assert r["ok"], r
    ev = r["event"]
    assert set(ev) == {"event_id", "at", "lane", "device", "kind", "code", "message"}
    assert is_int(ev["event_id"]) and isinstance(ev["at"], float)
    assert (ev["lane"], ev["device"], ev["kind"], ev["code"], ev["message"]) == (
        "EXIT-B", "eas_gate", "alarm", "LIVE_TAG", "gate 1, left side")
    again = c.call(req)
    assert again["ok"] and again["event"] == ev
    # code and message are optional: null when not given
    r2 = c.call({"op": "device.event", "lane": "EXIT-B", "device": "scale",
                 "kind": "fault"})
    assert r2["ok"] and r2["event"]["code"] is None and r2["event"]["message"] is None
    assert r2["event"]["event_id"] != ev["event_id"]
    got = sub.drain(1.5)
    assert [t for t, _ in got] == ["device", "device"], got
    assert got[0][1] == ev and got[1][1] == r2["event"]
    # the documented lists, and nothing else
    for bad in ({"device": "toaster"}, {"kind": "ALARM"}, {"code": ""},
                {"code": "x" * 33}, {"message": "m" * 257}, {"lane": 5}):
        assert_error(c.call({"op": "device.event", "lane": "EXIT-B", "device": "scanner",
                             "kind": "fault", **bad}), "BAD_FIELD")
    for missing in ("lane", "device", "kind"):
        body = {"op": "device.event", "lane": "EXIT-B", "device": "scanner",
                "kind": "recovered"}
        del body[missing]
        assert_error(c.call(body), "MISSING_FIELD")


# ======================================================================================
# Learning, stats, health


def test_weights_confirm(svc):
    c = svc.dealer()
    row = plain_items(svc.rows, 1)[0]
    g = gtin14(row["gtin"])
    unit = float(row["unit_weight_g"])
    r = c.call({"op": "weights.confirm", "gtin": g, "weight_g": 2 * unit, "units": 2})
    assert r["ok"], r
    ln = r["learning"]
    assert LEARNING_KEYS <= set(ln), sorted(LEARNING_KEYS - set(ln))
    assert ln["code"] == "LEARNED" and ln["code"] in LEARNING_CODES
    assert ln["gtin"] == g and ln["units"] == 2
    assert ln["observed_g"] == pytest.approx(unit) or ln["observed_g"] == pytest.approx(
        2 * unit)
    assert isinstance(ln["restarted"], bool) and isinstance(ln["message"], str)
    n1 = ln["n"]
    r = c.call({"op": "weights.confirm", "gtin": g, "weight_g": unit})    # units? → 1
    assert r["ok"] and r["learning"]["code"] == "LEARNED" and r["learning"]["units"] == 1
    assert r["learning"]["n"] > n1
    # Not learnable is not an error.
    r = c.call({"op": "weights.confirm", "gtin": gtin14(unknown_gtin13(svc.rows)),
                "weight_g": 100.0})
    assert r["ok"] and r["learning"]["code"] == "UNKNOWN_ITEM", r
    exempt = row_with_flag(svc.rows, "weight_exempt")
    r = c.call({"op": "weights.confirm", "gtin": gtin14(exempt["gtin"]), "weight_g": 50.0})
    assert r["ok"] and r["learning"]["code"] in LEARNING_CODES - {"LEARNED"}, r
    # Errors
    wrong = g[:-1] + str((int(g[-1]) + 1) % 10)
    assert_error(c.call({"op": "weights.confirm", "gtin": wrong, "weight_g": 10.0}),
                 "BAD_GTIN")
    assert_error(c.call({"op": "weights.confirm", "gtin": "0500000000001X",
                         "weight_g": 10.0}), "BAD_GTIN")
    # Out of the field's range: the op's own code or the envelope's BAD_FIELD.
    assert_error(c.call({"op": "weights.confirm", "gtin": "123", "weight_g": 10.0}),
                 {"BAD_GTIN", "BAD_FIELD"})
    assert_error(c.call({"op": "weights.confirm", "gtin": g, "weight_g": -10.0}),
                 {"BAD_WEIGHT", "BAD_FIELD"})
    assert_error(c.call({"op": "weights.confirm", "gtin": g, "weight_g": math.inf}),
                 {"BAD_WEIGHT", "BAD_FIELD"})


def test_stats_and_health(svc):
    c = svc.dealer()
    c.call({"op": "hello"})
    c.call({"op": "hello"})
    c.call({"op": "scan", "lane": "L1", "code": "5000000000013"})   # a wrong check digit
    c.call({"op": "nope"})
    c.call({"op": "weigh.config", "lane": "S1"})
    s = c.call({"op": "stats"})
    assert s["ok"], s
    assert {"uptime_s", "requests", "errors", "replays", "lanes", "items"} <= set(s)
    assert is_num(s["uptime_s"]) and s["uptime_s"] > 0
    assert isinstance(s["requests"], dict) and isinstance(s["errors"], dict)
    assert all(isinstance(k, str) and is_int(v) for k, v in s["requests"].items())
    assert all(isinstance(k, str) and is_int(v) for k, v in s["errors"].items())
    assert s["requests"].get("hello", 0) >= 2 and s["requests"].get("scan", 0) >= 1
    assert s["errors"].get("BAD_CHECK_DIGIT", 0) >= 1
    assert s["errors"].get("UNKNOWN_OP", 0) >= 1
    assert is_int(s["replays"]) and s["lanes"] == 1 and s["items"] == len(svc.rows)
    h = c.call({"op": "health"})
    assert h["ok"], h
    assert {"status", "db", "uptime_s", "lanes", "scales", "worker", "pid"} <= set(h)
    assert h["status"] == "ok" and h["worker"] is None and h["pid"] == svc.pid
    assert is_num(h["uptime_s"]) and h["lanes"] == 1 and isinstance(h["scales"], list)


# ======================================================================================
# Retries: same id + client → same reply, nothing done twice


def test_retry_replays_error_replies(svc):
    """"A request that failed for good (a bad field, an unknown basket) gets the same
    error again". (A client that lost an EMPTY_BASKET reply and retries must not find
    its basket submitted by the retry.) Pure reads are answered again, not replayed."""
    c = svc.dealer()
    row = plain_items(svc.rows, 1)[0]
    bid = open_basket(c)
    problems = []
    first = c.call({"op": "basket.submit", "id": "sub-empty", "basket": bid})
    assert_error(first, "EMPTY_BASKET")
    assert c.call({"op": "basket.add", "basket": bid, "scans": [{"code": row["gtin"]}]})["ok"]
    retry = c.call({"op": "basket.submit", "id": "sub-empty", "basket": bid})
    if retry != first:
        problems.append(f"basket.submit retried after EMPTY_BASKET did the work: {retry}")
    # and for an op that does not touch the store
    first = c.call({"op": "weigh.frame", "id": "wf-early", "lane": "LATE", "seq": 0,
                    "samples": f32([1.0] * 8)})
    assert_error(first, "LANE_NOT_CONFIGURED")
    assert c.call({"op": "weigh.config", "lane": "LATE"})["ok"]
    retry = c.call({"op": "weigh.frame", "id": "wf-early", "lane": "LATE", "seq": 0,
                    "samples": f32([1.0] * 8)})
    if retry != first:
        problems.append(f"weigh.frame retried after LANE_NOT_CONFIGURED ran: {retry}")
    before = c.call({"op": "stats"})["replays"]
    c.call({"op": "scan", "id": "bad-scan", "lane": "L", "code": "5000000000013"})
    c.call({"op": "scan", "id": "bad-scan", "lane": "L", "code": "5000000000013"})
    after = c.call({"op": "stats"})["replays"]
    if after != before:
        problems.append(f"a repeated scan (a pure read) was replayed: {before} → {after}")
    # a bad field on a store op: the same error again when retried as it was sent …
    bad = {"op": "basket.add", "id": "add-bad", "basket": bid,
           "scans": [{"code": row["gtin"], "qty": 0}]}
    first = c.call(bad)
    assert_error(first, {"BAD_QUANTITY", "BAD_FIELD"})
    retry = c.call(dict(bad))
    if retry != first:
        problems.append(f"basket.add retried after {first['error']['code']}: {retry}")
    # … and the same id with other fields is not a retry: IDEMPOTENCY_MISMATCH, not run
    lines = c.call({"op": "basket.get", "basket": bid})["basket"]["lines"]
    other = c.call({**bad, "scans": [{"code": row["gtin"], "qty": 1}]})
    assert_error(other, "IDEMPOTENCY_MISMATCH")
    if c.call({"op": "basket.get", "basket": bid})["basket"]["lines"] != lines:
        problems.append("basket.add with a reused id and other fields changed the basket")
    assert not problems, "\n".join(problems)


def test_retry_rule(svc):
    c = svc.dealer()
    rows = plain_items(svc.rows, 2)
    r1 = c.call({"op": "basket.open", "id": "open-1", "device": "HH1"})
    r2 = c.call({"op": "basket.open", "id": "open-1", "device": "HH1"})
    assert r1 == r2
    bid = r1["basket"]["basket_id"]
    add = {"op": "basket.add", "id": "add-1", "basket": bid,
           "scans": [{"code": rows[0]["gtin"], "qty": 2}]}
    a1 = c.call(add)
    a2 = c.call(add)
    assert a1["ok"] and a1 == a2
    g = c.call({"op": "basket.get", "basket": bid})["basket"]
    assert g["n_items"] == 2, "a retried basket.add added twice"
    # A repeated id with other fields is not a retry: IDEMPOTENCY_MISMATCH, nothing done.
    a3 = c.call({**add, "scans": [{"code": rows[1]["gtin"], "qty": 5}]})
    assert a3["ok"] is False and a3["error"]["code"] == "IDEMPOTENCY_MISMATCH", a3
    assert c.call({"op": "basket.get", "basket": bid})["basket"]["n_items"] == 2
    # nor is the same id with another op
    a4 = c.call({"op": "basket.submit", "id": "add-1", "basket": bid})
    assert a4["ok"] is False and a4["error"]["code"] == "IDEMPOTENCY_MISMATCH", a4
    other = svc.dealer()
    o = other.call(add)
    assert o["ok"]
    if svc.mode == "plain":
        # Without authentication another socket is another client (the routing
        # identity) unless `client` says.
        assert c.call({"op": "basket.get", "basket": bid})["basket"]["n_items"] == 4
    else:
        # Authenticated, the client is the identity: another socket of the same key
        # gets the same reply, and nothing is added again.
        assert o == a1
        assert c.call({"op": "basket.get", "basket": bid})["basket"]["n_items"] == 2
    # Same `client` across sockets: one client (authenticated: one identity anyway).
    ca = {"op": "basket.add", "id": "add-2", "client": "lane-7", "basket": bid,
          "scans": [{"code": rows[1]["gtin"]}]}
    x1 = svc.dealer().call(ca)
    x2 = svc.dealer().call(ca)
    assert x1 == x2
    g = c.call({"op": "basket.get", "basket": bid})["basket"]
    assert g["n_items"] == (5 if svc.mode == "plain" else 3)
    # Submit retried: the same order, not BASKET_CLOSED.
    s1 = c.call({"op": "basket.submit", "id": "sub-1", "basket": bid})
    s2 = c.call({"op": "basket.submit", "id": "sub-1", "basket": bid})
    assert s1["ok"] and s1 == s2
    # weigh.frame replies are remembered: a repeated frame is answered, not weighed
    # again (no out_of_order fault for it, no gap after it).
    assert c.call({"op": "weigh.config", "lane": "RF"})["ok"]
    frame = {"op": "weigh.frame", "id": "frame-0", "lane": "RF", "seq": 0,
             "samples": f32([100.0] * 50)}
    f1 = c.call(frame)
    f2 = c.call(frame)
    assert f1["ok"] and f1 == f2
    f3 = c.call({**frame, "id": "frame-1", "seq": 1})
    assert f3["ok"] and not [e for e in f3["events"] if e["event"] == "fault"], f3
    # The other requests only read, and are simply answered again.
    before = c.call({"op": "stats"})["replays"]
    st1 = c.call({"op": "stats", "id": 777})
    st2 = c.call({"op": "stats", "id": 777})
    assert st2["requests"]["stats"] == st1["requests"]["stats"] + 1, (st1, st2)
    assert st2["replays"] == before
    h = c.call({"op": "hello", "id": "first-hello"})
    again = c.call({"op": "stats", "id": "first-hello"})
    assert "uptime_s" in again and "protocol" not in again and h["protocol"] == 1
    # weights.confirm: learned once
    wc = {"op": "weights.confirm", "id": "wc-1", "gtin": gtin14(rows[0]["gtin"]),
          "weight_g": float(rows[0]["unit_weight_g"])}
    w0 = c.call({**wc, "id": "wc-0"})
    w1 = c.call(wc)
    w2 = c.call(wc)
    assert w1 == w2
    w3 = c.call({**wc, "id": "wc-2"})
    step = w1["learning"]["n"] - w0["learning"]["n"]
    assert step > 0
    assert w3["learning"]["n"] - w1["learning"]["n"] == pytest.approx(step), \
        "a retried weights.confirm was learned twice"
    # REQ clients retry too (the routing identity of the REQ socket).
    q = svc.req()
    h1 = q.call({"op": "weigh.config", "id": "wcfg", "lane": "R1"})
    h2 = q.call({"op": "weigh.config", "id": "wcfg", "lane": "R1"})
    assert h1 == h2
    # replays are counted
    st = c.call({"op": "stats"})
    assert st["replays"] >= 7, st["replays"]
    # A fresh id does the work again.
    a4 = c.call({**add, "id": "add-3"})
    assert_error(a4, "BASKET_CLOSED")
