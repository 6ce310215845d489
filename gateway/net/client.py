"""The client library for the verification service: what lane controllers, handhelds,
the demo and the benchmarks use to talk to ``lanecore serve``.

``Client`` is blocking; ``AsyncClient`` has the same API as coroutines. Both follow
the contract in ``docs/protocol.md``: one DEALER socket, one MessagePack map per
request, a fresh ``id`` for every request, ``client`` on every request so the service
de-duplicates retries, and the ZeroMQ guide's *Lazy Pirate* retries: no reply within
``timeout_s`` → close the socket, open a new one and send the *same* request (same
id) again, at most ``retries`` times. ``docs/client.md`` has examples.

A ``Client`` is not thread-safe (ZeroMQ sockets are not): use one per thread. An
``AsyncClient`` belongs to one event loop; any number of coroutines on that loop may
share it.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from lanecore.core.errors import LanecoreError

__all__ = ["Client", "AsyncClient", "ServiceError", "CurveKeys", "MAX_MESSAGE_BYTES",
           "MAX_FRAME_SAMPLES"]

#: The service's transport limit: a larger message makes it drop the connection, so
#: the client refuses to send one (ValueError).
MAX_MESSAGE_BYTES = 1 << 20
#: Most samples (or counts) in one ``weigh.frame``.
MAX_FRAME_SAMPLES = 4096
#: Longest client name the service uses for de-duplication.
MAX_CLIENT_ID_LEN = 128 - 30   # room for ":<session>:<counter>" in the 128-character id
#: Reconnect back-off of the socket (ms): quick at first, never slower than this.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
#: A ``Client`` that has never been connected gives up after this long (or its
#: ``timeout_s``, if shorter) with ``UNREACHABLE``: nothing listens at the endpoint.
CONNECT_TIMEOUT_S = 2.0


class ServiceError(LanecoreError):
    """An ``ok: false`` reply (``code`` is the reply's error code), or the client's own
    ``TIMEOUT`` / ``UNREACHABLE`` / ``CLOSED``.

    ``details`` holds the error object's other fields (``index``, ``scan_error``, …);
    for ``TIMEOUT`` it holds the request ``id`` and how many ``tries`` were sent —
    the outcome of a mutating request that timed out is unknown, and asking again
    with ``call_with_id(details["id"], …)`` finds out without doing it twice.
    """

    code = "SERVICE_ERROR"

    def __init__(self, code: str, message: str, details: Mapping | None = None):
        super().__init__(message, code=str(code))
        self.details = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r}, {self.details!r})"

    def __reduce__(self):
        return (type(self), (self.code, self.message, self.details))

    def to_dict(self) -> dict:
        return {**self.details, "code": self.code, "message": self.message}

    @classmethod
    def from_reply(cls, reply: Mapping) -> "ServiceError":
        err = reply.get("error")
        if not isinstance(err, Mapping):
            return cls("BAD_REPLY", f"an ok: false reply without an error object: "
                                    f"{reply!r:.200}")
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        return cls(err.get("code") or "BAD_REPLY", str(err.get("message", "")), details)


@dataclass(frozen=True)
class CurveKeys:
    """The keys a device needs for ``lanecore serve --curve``: the service's public key
    and the device's own keypair (Z85, as ``zmq.auth`` writes them). The device's
    public key must be in the service's ``DATA_DIR/keys/devices/``."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_files(cls, server_key_path, client_secret_path) -> "CurveKeys":
        """From certificate files: the service's ``server.key`` (public) and the
        device's ``NAME.key_secret`` (``lanecore keys gen --name NAME``), refused with
        BAD_PERMISSIONS if the group or others may use it."""
        import zmq.auth

        from lanecore.core.config import check_private
        server_public, _ = zmq.auth.load_certificate(str(server_key_path))
        client_public, client_secret = zmq.auth.load_certificate(str(client_secret_path))
        if client_secret is None:
            raise LanecoreError(f"{client_secret_path} holds no secret key (give the "
                                "device's .key_secret file)", code="BAD_KEY")
        check_private(client_secret_path, what="secret key file")
        return cls(server_public, client_public, client_secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret


@dataclass(frozen=True)
class TerminalKey:
    """A POS terminal's id and secret key for a payment gateway with
    ``[pos] auth = "hmac"`` (``lanecore terminal add``): every request then goes out
    with its authentication frame (``gateway/net/auth.py``)."""

    terminal: str
    key: bytes = field(repr=False)

    @classmethod
    def from_text(cls, terminal: str, key_text: str) -> "TerminalKey":
        from lanecore.gateway.net.auth import parse_key
        return cls(terminal, parse_key(key_text))

    def frames(self, payload: bytes) -> list[bytes]:
        """``payload`` and a fresh authentication frame (``LCA2``: the current ``ts``
        and a new random nonce). Called for every send, so a retry carries a new
        frame around the same request bytes: the gateway never takes it for a
        replay (``AUTH_REPLAYED``) and answers it from the record of the first."""
        from lanecore.gateway.net.auth import auth_frame
        return [payload, auth_frame(self.terminal, self.key, payload)]


# ----------------------------------------------------------------------------------
# Requests: checked and packed before anything is sent
# ----------------------------------------------------------------------------------

def _pack(req: dict) -> bytes:
    payload = msgpack.packb(req, use_bin_type=True)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValueError(f"a {req.get('op')} request of {len(payload)} bytes is over the "
                         f"service's {MAX_MESSAGE_BYTES}-byte limit; split it")
    return payload


def _unpack(frame: bytes):
    """A reply map, or None for a frame that cannot be one (dropped as stale)."""
    try:
        reply = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:  # a garbled frame is not a reply to anything
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("id"), (str, int, type(None))):
        return None
    return reply


def _result(reply: dict) -> dict:
    """A reply's result fields, or ServiceError for ``ok: false``."""
    if reply.get("ok") is True:
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}
    raise ServiceError.from_reply(reply)


#: Replies that say "not now" rather than "no": a broker's worker restarting, or a
#: server whose per-connection limits this client is over (docs/protocol.md). Both
#: left the request undone: it is retried with the same id after the backoff.
RETRY_LATER = frozenset({"UNAVAILABLE", "BUSY"})


def _is_unavailable(reply: dict) -> bool:
    err = reply.get("error")
    return reply.get("ok") is False and isinstance(err, Mapping) \
        and err.get("code") in RETRY_LATER


def _no_none(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def _codes(codes, what: str) -> list:
    if isinstance(codes, (str, bytes)) or not isinstance(codes, Iterable):
        raise ValueError(f"{what} must be a list of scans, not a {type(codes).__name__}")
    codes = list(codes)
    if not codes:
        raise ValueError(f"{what} must not be empty")
    return codes


def _scans(scans) -> list[dict]:
    out = []
    for i, s in enumerate(_codes(scans, "scans")):
        if isinstance(s, str):
            out.append({"code": s})
        elif isinstance(s, Mapping):
            out.append(dict(s))
        else:
            raise ValueError(f"scan {i} must be a code (str) or a {{'code', 'qty'}} map, "
                             f"not a {type(s).__name__}")
    return out


def _remove_items(items) -> list[dict]:
    out = []
    for i, it in enumerate(_codes(items, "items")):
        if isinstance(it, Mapping):
            out.append(dict(it))
        elif isinstance(it, str):
            out.append({"gtin": it})
        elif isinstance(it, int) and not isinstance(it, bool):
            out.append({"line_no": it})
        else:
            raise ValueError(f"item {i} must be a line number (int), a GTIN (str) or a "
                             f"{{'line_no'|'gtin', 'qty'}} map, not a {type(it).__name__}")
    return out


def _frame_bytes(values, dtype: str, what: str) -> bytes:
    """Little-endian float32 (samples) or int32 (counts) bytes for ``weigh.frame``.
    Bytes-like values are taken as already packed."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        data = bytes(values)
        if not data or len(data) % 4:
            raise ValueError(f"packed {what} must be a non-empty whole number of 4-byte "
                             f"values, got {len(data)} bytes")
    else:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
        if dtype == "<i4":
            if arr.dtype.kind == "f":
                if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                    raise ValueError(f"{what} must be whole numbers (raw ADC counts)")
            elif arr.dtype.kind not in "iub" and arr.size:
                raise ValueError(f"{what} must be integers, got {arr.dtype}")
            if arr.size and (arr.min() < -(2 ** 31) or arr.max() > 2 ** 31 - 1):
                raise ValueError(f"{what} must fit in int32")
        elif arr.dtype.kind not in "fiub" and arr.size:
            raise ValueError(f"{what} must be numbers (grams), got {arr.dtype}")
        data = arr.astype(dtype).tobytes()
    n = len(data) // 4
    if not 1 <= n <= MAX_FRAME_SAMPLES:
        raise ValueError(f"a frame carries 1..{MAX_FRAME_SAMPLES} {what}, got {n}")
    return data


class _Ops(abc.ABC):
    """The convenience methods, one per op of docs/protocol.md, over ``call``.
    (In AsyncClient ``call`` is a coroutine, so these return awaitables.)"""

    @abc.abstractmethod
    def call(self, op: str, **fields):
        """One request: ``Client.call`` / ``AsyncClient.call``."""

    def hello(self):
        """Protocol version, server, capabilities, kernels, store, order key, limits."""
        return self.call("hello")

    def scan(self, lane: str, code: str, region: str | None = None):
        """One scan, read and looked up: ``{"scan", "item"}``."""
        if not isinstance(code, str):
            raise ValueError(f"code must be a str (the scan as sent), not "
                             f"{type(code).__name__}")
        return self.call("scan", **_no_none(lane=lane, code=code, region=region))

    def scan_batch(self, lane: str, codes: Sequence[str], region: str | None = None):
        """Up to 1,000 scans: ``{"results": [...]}``, each ``ok`` on its own."""
        return self.call("scan.batch", **_no_none(lane=lane, codes=_codes(codes, "codes"),
                                                  region=region))

    def basket_open(self, device: str, member: str | None = None):
        """A new basket for ``device``: ``{"basket": {...}}``."""
        return self.call("basket.open", **_no_none(device=device, member=member))

    def basket_add(self, basket: str, scans):
        """Add scans (codes, or ``{"code", "qty"}`` maps), all or nothing."""
        return self.call("basket.add", basket=basket, scans=_scans(scans))

    def basket_remove(self, basket: str, items):
        """Remove lines: ``{"line_no"|"gtin", "qty"?}`` maps, or bare line numbers
        (int) / GTINs (str) for whole lines. All or nothing."""
        return self.call("basket.remove", basket=basket, items=_remove_items(items))

    def basket_get(self, basket: str):
        return self.call("basket.get", basket=basket)

    def basket_submit(self, basket: str):
        """Close the basket and make the order: ``order_no``, ``qr``, totals, lines."""
        return self.call("basket.submit", basket=basket)

    def weigh_config(self, lane: str, **config):
        """(Re)configure a lane's weighing (docs/weigh/weighing.md fields, e.g.
        ``fs_hz=1000, e_g=5``); resets the lane."""
        return self.call("weigh.config", lane=lane, config=config)

    def weigh_frame(self, lane: str, seq: int, samples=None, counts=None):
        """One frame of load-cell data: ``samples`` in grams (packed as little-endian
        float32) or ``counts`` raw ADC counts (int32) — a numpy array, a sequence, or
        bytes already packed. Reply: ``events``, ``stable``, ``settled_g``."""
        if (samples is None) == (counts is None):
            raise ValueError("give exactly one of samples (grams) or counts (raw ADC)")
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or seq < 0:
            raise ValueError(f"seq must be an int >= 0, got {seq!r}")
        if samples is not None:
            return self.call("weigh.frame", lane=lane, seq=int(seq),
                             samples=_frame_bytes(samples, "<f4", "samples"))
        return self.call("weigh.frame", lane=lane, seq=int(seq),
                         counts=_frame_bytes(counts, "<i4", "counts"))

    def verify_order(self, gate: str, order_no: str | None = None,
                     order_qr: str | None = None, measured_g: float | None = None):
        """Weigh-check an order at ``gate`` (the weigh-check lane's name), by number
        or by its QR; ``measured_g`` (grams) defaults to the lane's last settled
        weight.

        The name goes as both ``gate`` and ``lane``: a broker (``serve --workers N``)
        pins a request by the first of lane, gate, … it carries, and only ``lane``
        lands it on the worker that holds the lane's frames and settled weight."""
        if (order_no is None) == (order_qr is None):
            raise ValueError("give exactly one of order_no or order_qr")
        if measured_g is not None:
            measured_g = float(measured_g)
        return self.call("verify.order", **_no_none(gate=gate, lane=gate, order_no=order_no,
                                                    order_qr=order_qr,
                                                    measured_g=measured_g))

    def weights_confirm(self, gtin: str, weight_g: float, units: int = 1):
        """An attendant's confirmed weighing (``weight_g`` for all ``units``)."""
        return self.call("weights.confirm", gtin=gtin, weight_g=float(weight_g),
                         units=units)

    def alarm_resolve(self, lane: str, order_no: str, action: str, staff: str,
                      reason: str | None = None, weight_g: float | None = None):
        """Staff's ``ack``, ``override`` (with a reason; ``weight_g`` the confirmed
        weight) or ``rescan`` of an alarm, recorded at the service: ``{"resolved"}``."""
        return self.call("alarm.resolve", **_no_none(
            lane=lane, order_no=order_no, action=action, staff=staff, reason=reason,
            weight_g=None if weight_g is None else float(weight_g)))

    def device_event(self, lane: str, device: str, kind: str, code: str | None = None,
                     message: str | None = None):
        """Report a lane device's alarm, fault or recovery (published on ``device``)."""
        return self.call("device.event", **_no_none(lane=lane, device=device, kind=kind,
                                                    code=code, message=message))

    def stats(self):
        return self.call("stats")

    def health(self):
        return self.call("health")


class _Base(_Ops):
    def __init__(self, endpoint: str, *, client_id, timeout_s, retries, backoff_s,
                 backoff_max_s, curve, heartbeat_ivl_s, heartbeat_timeout_s,
                 terminal_key=None):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff_s < 0:
            raise ValueError("backoff_s must be >= 0")
        self.endpoint = endpoint
        self.client_id = client_id if client_id is not None else secrets.token_hex(8)
        if not isinstance(self.client_id, str) or not \
                0 < len(self.client_id) <= MAX_CLIENT_ID_LEN:
            raise ValueError(f"client_id must be a str of 1..{MAX_CLIENT_ID_LEN} characters")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s if backoff_max_s is not None
                                   else max(backoff_s, min(1.0, timeout_s)))
        self.curve = curve
        self.terminal_key = terminal_key
        self.heartbeat_ivl_s = heartbeat_ivl_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._counter = itertools.count(1)
        #: This client object's own part of every request id: a process that restarts
        #: with the same client_id must not meet its predecessor's recorded replies
        #: (the service answers a known (client, id) from its record for 10 minutes).
        self.session = secrets.token_hex(4)
        #: What happened so far: requests sent (first tries), retries (timeouts and
        #: UNAVAILABLE), timeouts (requests given up), unavailable replies, stale replies
        #: dropped, sockets reopened.
        self.counters = dict.fromkeys(("requests", "retries", "timeouts", "unavailable",
                                       "stale", "reconnects"), 0)
        self._sock = None
        self.closed = False

    def new_id(self) -> str:
        """A fresh request id: ``f"{client_id}:{session}:{counter}"``."""
        return f"{self.client_id}:{self.session}:{next(self._counter)}"

    def _request(self, req_id, op: str, fields: dict) -> bytes:
        if not isinstance(op, str) or not op:
            raise ValueError("op must be a non-empty str")
        for reserved in ("id", "client", "op"):
            if reserved in fields:
                raise ValueError(f"{reserved!r} is set by the client, not a field")
        return _pack({"op": op, "id": req_id, "client": self.client_id, **fields})

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        if self.heartbeat_ivl_s:
            # ZMTP PINGs: a peer that stops answering is dropped after the timeout and
            # reconnected, instead of a half-open TCP connection swallowing requests
            timeout_ms = int((self.heartbeat_timeout_s or 3 * self.heartbeat_ivl_s) * 1000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(self.heartbeat_ivl_s * 1000)))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
            # and the service drops us when our PINGs stop (TTL travels in 100 ms units)
            sock.setsockopt(zmq.HEARTBEAT_TTL, min(timeout_ms, 6_553_500))
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        if self.curve is not None:
            self.curve.apply(sock)

    def _backoff(self, k: int) -> float:
        return min(self.backoff_s * (2 ** k), self.backoff_max_s)

    def _timeout_error(self, req_id, op, tries: int) -> ServiceError:
        self.counters["timeouts"] += 1
        return ServiceError("TIMEOUT", f"no reply to {op} from {self.endpoint} after "
                                       f"{tries} tries of {self.timeout_s:g} s",
                            {"id": req_id, "tries": tries})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint} client_id={self.client_id!r}>"


# ----------------------------------------------------------------------------------
# The blocking client
# ----------------------------------------------------------------------------------

class Client(_Base):
    """A blocking client of the verification service (not thread-safe: one per thread).

    ``timeout_s`` is how long one try waits for its reply; a request is tried at most
    ``1 + retries`` times (a timeout, or an ``UNAVAILABLE`` reply from a broker whose
    worker is restarting, uses one retry; an UNAVAILABLE retry waits ``backoff_s``,
    doubling up to ``backoff_max_s``), then ServiceError(TIMEOUT) — or the last
    UNAVAILABLE. ``curve``: CurveKeys for ``serve --curve``. ``ctx``: a zmq.Context
    (default the process's shared one; never terminated by the client).
    ``terminal_key``: a TerminalKey for a payment gateway that authenticates its
    terminals (each send is signed afresh, so a retry carries a current ``ts`` and a
    new nonce). ``connect_timeout_s``: a client whose socket has never connected
    raises ServiceError(UNREACHABLE) after this long (at most ``timeout_s``) instead
    of retrying — a wrong endpoint, or nothing started there; the request was
    delivered nowhere. Once connected, a lost connection is retried as before (a
    restarting service comes back). None: no such check.
    """

    def __init__(self, endpoint: str, *, client_id: str | None = None,
                 timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.05,
                 curve: CurveKeys | None = None, heartbeat_ivl_s: float = 1.0,
                 heartbeat_timeout_s: float = 5.0, ctx: zmq.Context | None = None,
                 backoff_max_s: float | None = None,
                 terminal_key: TerminalKey | None = None,
                 connect_timeout_s: float | None = CONNECT_TIMEOUT_S):
        super().__init__(endpoint, client_id=client_id, timeout_s=timeout_s,
                         retries=retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s,
                         curve=curve, heartbeat_ivl_s=heartbeat_ivl_s,
                         heartbeat_timeout_s=heartbeat_timeout_s, terminal_key=terminal_key)
        self.ctx = ctx or zmq.Context.instance()
        #: Until the first connection: a monitor of the socket's connects, and when to
        #: give up (UNREACHABLE).
        self._monitor = None
        self._connected = connect_timeout_s is None
        self._connect_window = min(connect_timeout_s or 0.0, self.timeout_s)
        self._connect_by = time.monotonic() + self._connect_window
        self._sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        self._configure(sock)
        # a full send queue (a peer long gone) counts as a timed-out try
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        if not self._connected:
            self._drop_monitor()
            self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        sock.connect(self.endpoint)
        return sock

    def _drop_monitor(self) -> None:
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except (zmq.ZMQError, AttributeError):
                pass
            self._monitor.close(0)
            self._monitor = None

    def _reachable(self) -> bool:
        """Whether the socket has connected (ever): a connect event on the monitor."""
        if not self._connected and self._monitor is not None and self._monitor.poll(0):
            self._connected = True
            self._drop_monitor()
        return self._connected

    def _unreachable(self, req_id, op: str) -> ServiceError:
        self.counters["timeouts"] += 1
        return ServiceError("UNREACHABLE", f"nothing answers at {self.endpoint}: no "
                            f"connection within {self._connect_window:g} s (is the process "
                            f"running, is the address right?); {op} was not delivered",
                            {"id": req_id, "tries": 1})

    def reconnect(self) -> None:
        """Close the socket (dropping anything queued or late) and open a new one."""
        self._check_open()
        self._sock.close(0)
        self._sock = self._open()
        self.counters["reconnects"] += 1

    def _check_open(self) -> None:
        if self.closed:
            raise ServiceError("CLOSED", "this client is closed")

    def _send(self, payload: bytes) -> bool:
        try:
            if self.terminal_key is None:
                self._sock.send(payload)
            else:
                self._sock.send_multipart(self.terminal_key.frames(payload))
            return True
        except zmq.Again:
            return False

    # -- the Lazy Pirate exchange ---------------------------------------------------
    def call(self, op: str, **fields) -> dict:
        """Send ``op`` with ``fields`` (a fresh id) and return the reply's result
        fields; raises ServiceError for an ``ok: false`` reply or TIMEOUT."""
        return self.call_with_id(self.new_id(), op, **fields)

    def call_with_id(self, req_id, op: str, **fields) -> dict:
        """``call`` with a request id of your choosing — a retry by hand: the same id
        (from the same client_id) is answered from the service's record, not done
        again."""
        self._check_open()
        return _result(self._exchange(req_id, op, self._request(req_id, op, fields)))

    def send(self, op: str, *, req_id=None, **fields):
        """Send one request without waiting for its reply; returns its id. (Its
        reply, when it comes, is dropped as stale by the next call — for tests and
        fire-and-forget.)"""
        self._check_open()
        req_id = self.new_id() if req_id is None else req_id
        if not self._send(self._request(req_id, op, fields)):
            raise self._timeout_error(req_id, op, 1)
        self.counters["requests"] += 1
        return req_id

    def _exchange(self, req_id, op: str, payload: bytes) -> dict:
        tries = 1
        unavailable = 0
        self.counters["requests"] += 1
        sent = self._send(payload)
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if not self._connected:          # nothing listening yet: wait in slices
                if not self._reachable():
                    if time.monotonic() >= self._connect_by:
                        self.reconnect()         # drop the queued request: never sent
                        self._connect_by = time.monotonic() + self._connect_window
                        raise self._unreachable(req_id, op)
                    left = min(left, 0.05)
            if sent and left > 0 and self._sock.poll(max(1, int(left * 1000 + 0.999)),
                                                     zmq.POLLIN):
                reply = _unpack(self._sock.recv())
                if reply is None:
                    self.counters["stale"] += 1
                    continue
                rid = reply.get("id")
                # an id-less error is the service failing to read our one request
                if rid != req_id and not (rid is None and reply.get("ok") is False):
                    self.counters["stale"] += 1   # a late answer to an earlier try
                    continue
                if not _is_unavailable(reply):
                    return reply
                self.counters["unavailable"] += 1
                if tries > self.retries:
                    return reply
                time.sleep(self._backoff(unavailable))
                unavailable += 1
            elif time.monotonic() < deadline and sent:
                continue
            else:
                # Lazy Pirate: the socket may be wedged (peer gone); start afresh
                self.reconnect()
                if tries > self.retries:
                    raise self._timeout_error(req_id, op, tries)
            tries += 1
            self.counters["retries"] += 1
            sent = self._send(payload)
            deadline = time.monotonic() + self.timeout_s

    # -- throughput -----------------------------------------------------------------
    def pipeline(self, requests: Iterable[tuple[str, Mapping]], window: int = 64
                 ) -> list[dict | ServiceError]:
        """Send many requests with up to ``window`` in flight on the one socket; the
        results (result dicts, or ServiceError) in request order. No retries: a
        request without a reply within ``timeout_s`` of being sent becomes
        ServiceError(TIMEOUT), an UNAVAILABLE reply stays an error."""
        self._check_open()
        if window < 1:
            raise ValueError("window must be >= 1")
        items = []                # (id, op, payload): all checked and sized before sending
        for op, fields in requests:
            rid = self.new_id()
            items.append((rid, op, self._request(rid, op, dict(fields))))
        results: list = [None] * len(items)
        index = {rid: i for i, (rid, _, _) in enumerate(items)}
        inflight: dict = {}       # id -> deadline, in sending order
        nxt = done = 0
        timed_out = False
        while done < len(items):
            while nxt < len(items) and len(inflight) < window:
                rid, op, payload = items[nxt]
                if self._send(payload):
                    inflight[rid] = time.monotonic() + self.timeout_s
                else:
                    results[nxt] = self._timeout_error(rid, op, 1)
                    done += 1
                    timed_out = True
                self.counters["requests"] += 1
                nxt += 1
            if not inflight:
                continue
            oldest = next(iter(inflight.values()))
            left = oldest - time.monotonic()
            if left > 0 and self._sock.poll(max(1, int(left * 1000 + 0.999)), zmq.POLLIN):
                while True:
                    try:
                        reply = _unpack(self._sock.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    rid = None if reply is None else reply.get("id")
                    if rid is None and reply is not None and len(inflight) == 1:
                        rid = next(iter(inflight))
                    if rid not in inflight:
                        self.counters["stale"] += 1
                        continue
                    del inflight[rid]
                    i = index[rid]
                    try:
                        results[i] = _result(reply)
                    except ServiceError as exc:
                        if exc.code == "UNAVAILABLE":
                            self.counters["unavailable"] += 1
                        results[i] = exc
                    done += 1
            else:
                now = time.monotonic()
                for rid in [r for r, d in inflight.items() if d <= now]:
                    del inflight[rid]
                    i = index[rid]
                    results[i] = self._timeout_error(rid, items[i][1], 1)
                    done += 1
                    timed_out = True
        if timed_out:
            self.reconnect()   # late replies and a possibly dead connection: start afresh
        return results

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Close the socket (anything unsent is dropped). The context is left alone."""
        if not self.closed:
            self.closed = True
            self._drop_monitor()
            self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


# ----------------------------------------------------------------------------------
# The asyncio client
# ----------------------------------------------------------------------------------

class AsyncClient(_Base):
    """The same client for asyncio (``zmq.asyncio``): every method is a coroutine.
    Several coroutines may share one AsyncClient — replies are routed to their
    waiters by id — but it belongs to one event loop (and is not thread-safe).
    A timeout reopens the shared socket (at most once per ``timeout_s``) and resends
    every request still in flight on the new one, with their ids.

    ``ctx``: a ``zmq.asyncio.Context`` or a plain ``zmq.Context`` (shadowed);
    default the process's shared context.
    """

    def __init__(self, endpoint: str, *, client_id: str | None = None,
                 timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.05,
                 curve: CurveKeys | None = None, heartbeat_ivl_s: float = 1.0,
                 heartbeat_timeout_s: float = 5.0, ctx=None,
                 backoff_max_s: float | None = None,
                 terminal_key: TerminalKey | None = None):
        super().__init__(endpoint, client_id=client_id, timeout_s=timeout_s,
                         retries=retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s,
                         curve=curve, heartbeat_ivl_s=heartbeat_ivl_s,
                         heartbeat_timeout_s=heartbeat_timeout_s, terminal_key=terminal_key)
        if isinstance(ctx, zmq.asyncio.Context):
            self.ctx = ctx
        else:
            # (zmq.asyncio.Context.instance() can hand back the plain shared context)
            self.ctx = zmq.asyncio.Context.shadow((ctx or zmq.Context.instance()).underlying)
        self._waiters: dict = {}      # id -> Future of the reply
        self._payloads: dict = {}     # id -> packed request, for resending
        self._reader: asyncio.Task | None = None
        self._generation = 0
        self._opened_at = 0.0

    # -- the socket and its reader ----------------------------------------------------
    def _ensure_open(self) -> None:
        if self.closed:
            raise ServiceError("CLOSED", "this client is closed")
        if self._sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            self._configure(sock)
            sock.connect(self.endpoint)
            self._sock = sock
            self._generation += 1
            self._opened_at = time.monotonic()
            self._reader = asyncio.get_running_loop().create_task(self._read(sock))

    async def _read(self, sock) -> None:
        while True:
            try:
                frame = await sock.recv()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            reply = _unpack(frame)
            rid = None if reply is None else reply.get("id")
            if rid is None and reply is not None and reply.get("ok") is False \
                    and len(self._waiters) == 1:
                rid = next(iter(self._waiters))   # the one request it can answer
            fut = self._waiters.get(rid) if rid is not None else None
            if fut is None or fut.done():
                self.counters["stale"] += 1
                continue
            fut.set_result(reply)

    def _drop_socket(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    async def reconnect(self) -> None:
        """Close the socket and open a new one; requests in flight are resent."""
        self._drop_socket()
        self._ensure_open()
        self.counters["reconnects"] += 1
        for payload in list(self._payloads.values()):
            await self._send(payload)

    async def _send(self, payload: bytes) -> bool:
        self._ensure_open()
        try:
            if self.terminal_key is None:
                await asyncio.wait_for(self._sock.send(payload), self.timeout_s)
            else:
                await asyncio.wait_for(self._sock.send_multipart(
                    self.terminal_key.frames(payload)), self.timeout_s)
            return True
        except (asyncio.TimeoutError, zmq.Again):
            return False

    # -- the Lazy Pirate exchange ---------------------------------------------------
    async def call(self, op: str, **fields) -> dict:
        """As Client.call."""
        return await self.call_with_id(self.new_id(), op, **fields)

    async def call_with_id(self, req_id, op: str, **fields) -> dict:
        """As Client.call_with_id."""
        payload = self._request(req_id, op, fields)
        self._ensure_open()
        return _result(await self._exchange(req_id, op, payload))

    async def send(self, op: str, *, req_id=None, **fields):
        """Send one request without waiting for its reply; returns its id."""
        req_id = self.new_id() if req_id is None else req_id
        payload = self._request(req_id, op, fields)
        if not await self._send(payload):
            raise self._timeout_error(req_id, op, 1)
        self.counters["requests"] += 1
        return req_id

    async def _exchange(self, req_id, op: str, payload: bytes) -> dict:
        if req_id in self._waiters:
            raise ValueError(f"request id {req_id!r} is already waiting for its reply")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters[req_id] = fut
        self._payloads[req_id] = payload
        tries, unavailable = 1, 0
        self.counters["requests"] += 1
        try:
            await self._send(payload)
            generation = self._generation
            while True:
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
                except asyncio.TimeoutError:
                    if tries > self.retries:
                        raise self._timeout_error(req_id, op, tries) from None
                    tries += 1
                    self.counters["retries"] += 1
                    if self._generation == generation:
                        if time.monotonic() - self._opened_at >= self.timeout_s:
                            await self.reconnect()  # resends every request in flight
                        else:
                            await self._send(payload)
                    # else another request's timeout reopened the socket after our
                    # last send, and resent us on the new one
                    generation = self._generation
                    continue
                if not _is_unavailable(reply):
                    return reply
                self.counters["unavailable"] += 1
                if tries > self.retries:
                    return reply
                tries += 1
                self.counters["retries"] += 1
                fut = loop.create_future()
                self._waiters[req_id] = fut
                await asyncio.sleep(self._backoff(unavailable))
                unavailable += 1
                await self._send(payload)
                generation = self._generation
        finally:
            if self._waiters.get(req_id) is fut:
                del self._waiters[req_id]
            self._payloads.pop(req_id, None)

    async def pipeline(self, requests: Iterable[tuple[str, Mapping]], window: int = 64
                       ) -> list[dict | ServiceError]:
        """As Client.pipeline: up to ``window`` in flight, results in request order,
        no retries (TIMEOUT per request after ``timeout_s``)."""
        if window < 1:
            raise ValueError("window must be >= 1")
        reqs = []
        for op, fields in requests:
            rid = self.new_id()
            reqs.append((rid, op, self._request(rid, op, dict(fields))))
        self._ensure_open()
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(window)
        timed_out = False

        async def one(rid, op, payload):
            nonlocal timed_out
            async with sem:
                fut = loop.create_future()
                self._waiters[rid] = fut
                self.counters["requests"] += 1
                try:
                    if not await self._send(payload):
                        timed_out = True
                        return self._timeout_error(rid, op, 1)
                    try:
                        reply = await asyncio.wait_for(fut, self.timeout_s)
                    except asyncio.TimeoutError:
                        timed_out = True
                        return self._timeout_error(rid, op, 1)
                finally:
                    self._waiters.pop(rid, None)
                try:
                    return _result(reply)
                except ServiceError as exc:
                    if exc.code == "UNAVAILABLE":
                        self.counters["unavailable"] += 1
                    return exc

        results = await asyncio.gather(*(one(*r) for r in reqs))
        if timed_out and not self._waiters:
            self._drop_socket()     # reopened on the next request
            self.counters["reconnects"] += 1
        return list(results)

    # -- lifetime -------------------------------------------------------------------
    async def close(self) -> None:
        """Close the socket; requests still waiting fail with ServiceError(CLOSED)."""
        if self.closed:
            return
        self.closed = True
        reader = self._reader
        self._drop_socket()
        if reader is not None:
            try:
                await reader
            except asyncio.CancelledError:
                pass
        for rid, fut in list(self._waiters.items()):
            if not fut.done():
                fut.set_exception(ServiceError("CLOSED", "the client was closed",
                                               {"id": rid}))
        self._waiters.clear()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

