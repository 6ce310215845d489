"""EAS (electronic article surveillance): the tag deactivator and the exit gate.

Both speak the lanecore EAS line protocol: ASCII lines ``$BODY*HH`` CR LF, where
``HH`` is the XOR of the body's bytes in two hex digits (the NMEA 0183 scheme).
Why a checksum: the cable runs beside the gate's own 58 kHz transmitter and the
conveyor motors, and a single flipped bit could turn ``OK 41`` into ``OK 40`` —
an answer to a different request — or an ``ALARM`` into garbage nobody notices.
XOR catches every single-bit error and every odd number of flipped bits per bit
position, costs one line of firmware, and keeps the lines readable on a terminal.
The leading ``$`` lets a receiver resynchronise in the middle of line noise.

* :class:`DeactivatorProtocol` / :class:`EasDeactivator`: the host sends
  ``DEACT <id> <timeout_ms>``; the device answers ``OK <id>`` (a tag was
  deactivated), ``NOTAG <id>`` (none in the field in time) or ``ERR <id> <reason>``,
  and says ``TAG`` on its own when a live tag enters an idle field.
* :class:`GateProtocol` / :class:`EasGate`: the gate says ``ALARM <gate> <aisle>
  <seq>``, ``CLEAR <gate> <aisle> <seq>`` and ``HB <seq>`` (every second); the host
  sends ``SILENCE <gate>`` and ``ACK <gate>``, answered by ``SILENCED`` / ``ACKED``.

Every byte is described in ``docs/drivers/scanner-eas-printer.md``.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable

from lanecore.drivers.link import (BAD_FRAME, GARBAGE, NO_ANSWER, PORT_LOST,
                                   SEQUENCE_GAP, UNKNOWN_STATUS, DeviceFault,
                                   LineSettings, PortLoop)

MAX_LINE = 82                 # bytes from '$' to LF inclusive (as NMEA 0183)
MAX_REQUEST_ID = 99_999_999
SEQ_MOD = 65_536
DEFAULT_DEVICE_TIMEOUT_MS = 3000
ERR_REASONS = ("BUSY", "BAD_COMMAND", "BAD_ARG", "COIL_FAULT", "OVERHEAT")

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# -- framing ---------------------------------------------------------------------------

def checksum(body: bytes) -> int:
    """XOR of every byte of ``body`` (the part between ``$`` and ``*``)."""
    x = 0
    for b in body:
        x ^= b
    return x


def frame(*fields: object) -> bytes:
    """One line on the wire: ``$`` + fields joined by spaces + ``*HH`` CR LF."""
    body = " ".join(str(f) for f in fields).encode("ascii")
    if not body or len(body) + 6 > MAX_LINE or any(b < 0x20 or b > 0x7E or b in b"$*"
                                                    for b in body):
        raise ValueError(f"not an EAS line body: {body!r}")
    return b"$" + body + b"*%02X\r\n" % checksum(body)


class LineCodec:
    """Cuts bytes into checked line bodies (``list[str]`` fields) and faults."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes, at: float) -> list[list[str] | DeviceFault]:
        self._buf += data
        out: list[list[str] | DeviceFault] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            out.extend(self._line(line, at))
        if len(self._buf) > MAX_LINE:
            dollar = self._buf.rfind(b"$")
            keep = self._buf[dollar:] if 0 <= dollar and len(self._buf) - dollar <= MAX_LINE \
                else b""
            out.append(DeviceFault(GARBAGE, f"{len(self._buf) - len(keep)} bytes without "
                                            f"a line end skipped", at))
            self._buf[:] = keep
        return out

    @staticmethod
    def _line(line: bytes, at: float) -> list[list[str] | DeviceFault]:
        if line.endswith(b"\r"):
            line = line[:-1]
        dollar = line.rfind(b"$")
        out: list[list[str] | DeviceFault] = []
        if dollar < 0:
            if line:
                out.append(DeviceFault(GARBAGE, f"{len(line)} bytes without '$' "
                                                f"skipped: {line[:16]!r}", at))
            return out
        if dollar > 0:
            out.append(DeviceFault(GARBAGE, f"{dollar} bytes before '$' skipped: "
                                            f"{line[:min(dollar, 16)]!r}", at))
        text = line[dollar + 1:]
        star = text.rfind(b"*")
        if star < 0 or len(text) - star != 3:
            out.append(DeviceFault(BAD_FRAME, f"line without '*HH' checksum: {text!r}", at))
            return out
        body, hh = text[:star], text[star + 1:]
        try:
            want = int(hh, 16)
        except ValueError:
            want = -1
        if want != checksum(body):
            out.append(DeviceFault(BAD_FRAME, f"checksum {hh!r} does not match "
                                              f"{checksum(body):02X}: {body!r}", at))
            return out
        if not body or any(b < 0x20 or b > 0x7E for b in body):
            out.append(DeviceFault(BAD_FRAME, f"bad characters in line {body!r}", at))
            return out
        out.append(body.decode("ascii").split(" "))
        return out


def _int(text: str, lo: int, hi: int) -> int:
    if not text.isdigit() or len(text) > 10:
        raise ValueError(text)
    n = int(text)
    if not lo <= n <= hi:
        raise ValueError(text)
    return n


def _token(text: str) -> str:
    if not 1 <= len(text) <= 8 or not set(text) <= _TOKEN_CHARS:
        raise ValueError(text)
    return text


# -- deactivator -----------------------------------------------------------------------

@dataclass(frozen=True)
class DeactAnswer:
    """The deactivator's answer to ``DEACT <request_id>``.

    ``outcome``: ``OK`` (a tag was deactivated), ``NOTAG`` (none in the field within
    the request's time) or ``ERR`` (with ``reason``). ``at``: monotonic seconds.
    """

    outcome: str
    request_id: int
    reason: str | None
    at: float

    def to_dict(self) -> dict:
        return {"event": "deact_answer", "outcome": self.outcome,
                "request_id": self.request_id, "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class TagInField:
    """The deactivator saw a live tag while no request was pending."""

    at: float

    def to_dict(self) -> dict:
        return {"event": "tag_in_field", "at": self.at}


@dataclass(frozen=True)
class DeactResult:
    """What :meth:`EasDeactivator.deactivate` returns.

    ``outcome``: ``OK``, ``NOTAG``, ``ERR`` (``reason`` from the device), or the
    driver's own ``NO_ANSWER`` (nothing within the time) and ``PORT_LOST`` (the
    port failed or was not open). ``at``: monotonic seconds of the answer.
    """

    outcome: str
    request_id: int
    reason: str | None
    at: float

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"

    def to_dict(self) -> dict:
        return {"event": "deact_result", "outcome": self.outcome,
                "request_id": self.request_id, "reason": self.reason, "at": self.at}


class DeactivatorProtocol:
    """Deactivator lines in, :class:`DeactAnswer` / :class:`TagInField` /
    :class:`DeviceFault` out; commands out as bytes. No I/O."""

    def __init__(self) -> None:
        self.codec = LineCodec()

    def reset(self) -> None:
        self.codec.reset()

    def feed(self, data: bytes, at: float = 0.0) -> list:
        out: list = []
        for item in self.codec.feed(data, at):
            if isinstance(item, DeviceFault):
                out.append(item)
            else:
                out.extend(self._message(item, at))
        return out

    @staticmethod
    def _message(f: list[str], at: float) -> list:
        kw = f[0]
        try:
            if kw in ("OK", "NOTAG") and len(f) == 2:
                return [DeactAnswer(kw, _int(f[1], 0, MAX_REQUEST_ID), None, at)]
            if kw == "ERR" and len(f) == 3:
                answer = DeactAnswer("ERR", _int(f[1], 0, MAX_REQUEST_ID), _token_reason(f[2]),
                                     at)
                if answer.reason not in ERR_REASONS:
                    return [answer, DeviceFault(UNKNOWN_STATUS,
                                                f"unknown ERR reason {answer.reason!r}", at)]
                return [answer]
            if kw == "TAG" and len(f) == 1:
                return [TagInField(at)]
        except ValueError:
            return [DeviceFault(BAD_FRAME, f"bad fields in {' '.join(f)!r}", at)]
        if kw in ("OK", "NOTAG", "ERR", "TAG"):
            return [DeviceFault(BAD_FRAME, f"wrong field count in {' '.join(f)!r}", at)]
        return [DeviceFault(UNKNOWN_STATUS, f"unknown deactivator message {kw!r}", at)]

    @staticmethod
    def deact(request_id: int, timeout_ms: int = DEFAULT_DEVICE_TIMEOUT_MS) -> bytes:
        """``$DEACT <id> <timeout_ms>``: deactivate one tag within ``timeout_ms``
        milliseconds (1..60000); ``request_id`` 1..99999999."""
        if not 1 <= request_id <= MAX_REQUEST_ID or not 1 <= timeout_ms <= 60_000:
            raise ValueError("request id 1..99999999, timeout 1..60000 ms")
        return frame("DEACT", request_id, timeout_ms)


def _token_reason(text: str) -> str:
    if not 1 <= len(text) <= 16 or not set(text) <= _TOKEN_CHARS:
        raise ValueError(text)
    return text


class EasDeactivator(PortLoop):
    """The deactivator on ``url``. :meth:`deactivate` is synchronous; every answer,
    spontaneous ``TAG`` and fault also goes to ``on_event``.

    Request ids start from a clock-derived number and count up, so neither a late
    answer in this run nor one from before a restart can match the current request.
    """

    name = "eas-deactivator"

    def __init__(self, url: str, line: LineSettings | None = None, *,
                 on_event: Callable[[object], None] | None = None,
                 answer_margin_s: float = 0.5, **kw) -> None:
        super().__init__(url, line, on_event=on_event, **kw)
        self.protocol = DeactivatorProtocol()
        self.answer_margin_s = answer_margin_s
        first = int(time.time() * 1000) % (MAX_REQUEST_ID - 1_000_000) + 1
        self._ids = itertools.count(first)
        self._request_lock = threading.Lock()      # one request at a time
        self._state = threading.Lock()
        self._pending: tuple[int, threading.Event, list] | None = None

    def _next_id(self) -> int:
        return (next(self._ids) - 1) % MAX_REQUEST_ID + 1

    def deactivate(self, timeout_s: float = 3.0) -> DeactResult:
        """Ask the deactivator to kill the tag in its field within ``timeout_s``
        seconds; wait at most ``timeout_s + answer_margin_s`` for its answer (plus up
        to ``timeout_s`` for the port to open). Never raises for device trouble."""
        with self._request_lock:
            request_id = self._next_id()
            if not self.connected.wait(timeout_s):
                return DeactResult(PORT_LOST, request_id, "port not open", self.clock())
            done, slot = threading.Event(), []
            with self._state:
                self._pending = (request_id, done, slot)
            timeout_ms = max(1, min(60_000, round(timeout_s * 1000)))
            self.send(DeactivatorProtocol.deact(request_id, timeout_ms))
            answered = done.wait(timeout_s + self.answer_margin_s)
            with self._state:
                self._pending = None
            if answered:
                return slot[0]
            self.emit(DeviceFault(NO_ANSWER, f"deactivator: no answer to DEACT "
                                             f"{request_id} in {timeout_s:g} s",
                                  self.clock()))
            return DeactResult(NO_ANSWER, request_id, None, self.clock())

    def _finish(self, result: DeactResult, only_id: int | None = None) -> None:
        with self._state:
            if self._pending is None:
                return
            request_id, done, slot = self._pending
            if only_id is not None and only_id != request_id:
                return
            slot.append(DeactResult(result.outcome, request_id, result.reason, result.at))
            self._pending = None
        done.set()

    def on_connect(self, now: float) -> None:
        self.protocol.reset()
        self.discard_outbox()

    def on_down(self, now: float) -> None:
        self.discard_outbox()
        self._finish(DeactResult(PORT_LOST, 0, "port lost", now))

    def on_data(self, data: bytes, now: float) -> None:
        for event in self.protocol.feed(data, now):
            if isinstance(event, DeactAnswer):
                self._finish(DeactResult(event.outcome, event.request_id, event.reason,
                                         event.at), only_id=event.request_id)
            self.emit(event)


# -- gate ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateAlarm:
    """A live tag passed ``gate`` in ``aisle``; ``seq`` the gate's line number."""

    gate: str
    aisle: str
    seq: int
    at: float

    def to_dict(self) -> dict:
        return {"event": "gate_alarm", "gate": self.gate, "aisle": self.aisle,
                "seq": self.seq, "at": self.at}


@dataclass(frozen=True)
class GateClear:
    """The alarm in ``gate``/``aisle`` ended (timed out or acknowledged)."""

    gate: str
    aisle: str
    seq: int
    at: float

    def to_dict(self) -> dict:
        return {"event": "gate_clear", "gate": self.gate, "aisle": self.aisle,
                "seq": self.seq, "at": self.at}


@dataclass(frozen=True)
class GateHeartbeat:
    """The gate is alive (sent every second)."""

    seq: int
    at: float

    def to_dict(self) -> dict:
        return {"event": "gate_heartbeat", "seq": self.seq, "at": self.at}


@dataclass(frozen=True)
class GateReply:
    """The gate's answer to a host command: ``what`` is ``SILENCED`` or ``ACKED``."""

    what: str
    gate: str
    seq: int
    at: float

    def to_dict(self) -> dict:
        return {"event": "gate_reply", "what": self.what, "gate": self.gate,
                "seq": self.seq, "at": self.at}


@dataclass(frozen=True)
class GateError:
    """The gate rejected a host command (``reason``: ``BAD_COMMAND``, ``BAD_ARG``)."""

    reason: str
    at: float

    def to_dict(self) -> dict:
        return {"event": "gate_error", "reason": self.reason, "at": self.at}


class GateProtocol:
    """Gate lines in, gate readings / :class:`DeviceFault` out; commands out.

    Every gate line but ``ERR`` carries ``seq`` (0..65535, one counter for all of
    them, wrapping); a skip is reported as ``SEQUENCE_GAP`` and the line is still
    delivered. The first line after :meth:`reset` sets the count.
    """

    def __init__(self) -> None:
        self.codec = LineCodec()
        self._last_seq: int | None = None

    def reset(self) -> None:
        self.codec.reset()
        self._last_seq = None

    def feed(self, data: bytes, at: float = 0.0) -> list:
        out: list = []
        for item in self.codec.feed(data, at):
            if isinstance(item, DeviceFault):
                out.append(item)
                continue
            msg = self._message(item, at)
            seq = getattr(msg, "seq", None)
            if seq is not None:
                if self._last_seq is not None and seq != (self._last_seq + 1) % SEQ_MOD:
                    lost = (seq - self._last_seq - 1) % SEQ_MOD
                    out.append(DeviceFault(SEQUENCE_GAP, f"gate seq {self._last_seq} -> "
                                                         f"{seq} ({lost} lines lost)", at))
                self._last_seq = seq
            out.append(msg)
        return out

    @staticmethod
    def _message(f: list[str], at: float):
        kw, n = f[0], len(f)
        try:
            if kw in ("ALARM", "CLEAR") and n == 4:
                cls = GateAlarm if kw == "ALARM" else GateClear
                return cls(_token(f[1]), _token(f[2]), _int(f[3], 0, SEQ_MOD - 1), at)
            if kw == "HB" and n == 2:
                return GateHeartbeat(_int(f[1], 0, SEQ_MOD - 1), at)
            if kw in ("SILENCED", "ACKED") and n == 3:
                return GateReply(kw, _token(f[1]), _int(f[2], 0, SEQ_MOD - 1), at)
            if kw == "ERR" and n == 3 and f[1] == "0":
                reason = _token_reason(f[2])
                if reason not in ("BAD_COMMAND", "BAD_ARG"):
                    return DeviceFault(UNKNOWN_STATUS, f"unknown gate ERR reason {reason!r}",
                                       at)
                return GateError(reason, at)
        except ValueError:
            return DeviceFault(BAD_FRAME, f"bad fields in {' '.join(f)!r}", at)
        if kw in ("ALARM", "CLEAR", "HB", "SILENCED", "ACKED", "ERR"):
            return DeviceFault(BAD_FRAME, f"wrong fields in {' '.join(f)!r}", at)
        return DeviceFault(UNKNOWN_STATUS, f"unknown gate message {kw!r}", at)

    @staticmethod
    def silence(gate: str) -> bytes:
        """``$SILENCE <gate>``: stop the sounder, keep the light until cleared."""
        return frame("SILENCE", _token(gate))

    @staticmethod
    def ack(gate: str) -> bytes:
        """``$ACK <gate>``: an attendant dealt with it; end the alarm, rearm."""
        return frame("ACK", _token(gate))


class EasGate(PortLoop):
    """The EAS gate on ``url``: alarms, clears, heartbeats, replies and faults go to
    ``on_event``.

    A gate that sends nothing valid for ``heartbeat_timeout_s`` seconds (it
    heartbeats every second) is reported ``NO_ANSWER`` and its port is reopened; the
    report repeats every ``heartbeat_timeout_s`` while it stays silent.
    """

    name = "eas-gate"

    def __init__(self, url: str, line: LineSettings | None = None, *,
                 on_event: Callable[[object], None] | None = None,
                 heartbeat_timeout_s: float = 2.5, **kw) -> None:
        super().__init__(url, line, on_event=on_event, **kw)
        self.protocol = GateProtocol()
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._last_alive = 0.0

    def silence(self, gate: str) -> None:
        """Queue ``SILENCE <gate>`` (the answer, ``SILENCED``, comes to on_event)."""
        self.send(GateProtocol.silence(gate))

    def acknowledge(self, gate: str) -> None:
        """Queue ``ACK <gate>`` (answered by ``ACKED`` and a ``CLEAR``)."""
        self.send(GateProtocol.ack(gate))

    def on_connect(self, now: float) -> None:
        self.protocol.reset()
        self.discard_outbox()
        self._last_alive = now

    def on_data(self, data: bytes, now: float) -> None:
        for event in self.protocol.feed(data, now):
            if not isinstance(event, DeviceFault):
                self._last_alive = now
            self.emit(event)
        if now - self._last_alive > self.heartbeat_timeout_s:
            self.request_drop(NO_ANSWER, f"{self.url}: no heartbeat from the gate for "
                                         f"{now - self._last_alive:.1f} s")
            self._last_alive = now           # one report per silent interval
