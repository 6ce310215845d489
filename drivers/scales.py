"""Retail scales: Toledo 8217, Datalogic Magellan (single cable), SASI and CAS.

Two layers, as for every lanecore driver (docs/drivers/scales.md has every byte):

* protocol classes (:class:`Toledo8217`, :class:`Magellan`, :class:`Sasi`,
  :class:`Cas`): bytes in, typed readings out, commands out. ``feed(data, now)``
  keeps a partial frame across calls, skips and reports bytes that are not the
  protocol's (``GARBAGE``), and returns :class:`ScaleReading`, :class:`ScanReading`
  and :class:`~lanecore.drivers.link.DeviceFault` objects. No I/O, threads or clocks.
* the port loop :class:`ScaleDriver`: one thread owns the serial :class:`Link` (it
  writes the requests and reads the answers), a synchronous :meth:`ScaleDriver.read`
  with a timeout, :meth:`ScaleDriver.zero` / :meth:`ScaleDriver.tare`, a polling
  mode, and :func:`probe` to find out which protocol a port speaks.

Weights are grams (float), times monotonic seconds. A reading answers one request:
the driver never hands out an answer that arrived before the request was sent or
before the port was last reopened, and it never caches or repeats a weight — two
reads of the same load are two answers from the scale.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Union

from lanecore.core.errors import LanecoreError
from lanecore.drivers.link import (BAD_FRAME, GARBAGE, NO_ANSWER, PORT_OPEN_FAILED,
                                   UNKNOWN_STATUS, DeviceFault, LineSettings, Link,
                                   LinkDown)

_log = logging.getLogger(__name__)

# Status names a ScaleReading may carry (stable strings; docs/drivers/scales.md).
MOTION = "motion"
OVER_CAPACITY = "over_capacity"
UNDER_ZERO = "under_zero"
OUTSIDE_ZERO_CAPTURE = "outside_zero_capture"
CENTRE_OF_ZERO = "centre_of_zero"
NET = "net"
BAD_COMMAND = "bad_command"
ZERO = "zero"
ZERO_NOT_CAPTURED = "zero_not_captured"
STATUS_NAMES = (MOTION, OVER_CAPACITY, UNDER_ZERO, OUTSIDE_ZERO_CAPTURE, CENTRE_OF_ZERO,
                NET, BAD_COMMAND, ZERO, ZERO_NOT_CAPTURED)

# Error codes (LanecoreError.code) of this module.
UNKNOWN_PROTOCOL = "UNKNOWN_PROTOCOL"
UNSUPPORTED = "UNSUPPORTED"
NO_SCALE = "NO_SCALE"

STX, ETX, LF, CR = 0x02, 0x03, 0x0A, 0x0D
GRAMS_PER = {"g": 1.0, "kg": 1000.0, "lb": 453.59237}

# Skipped bytes are reported when the stream resynchronises, or every this many bytes
# of unbroken noise, so a babbling line is visible without a fault per byte.
GARBAGE_REPORT_BYTES = 64


class ScaleError(LanecoreError):
    """A scale request that cannot be made (unknown protocol, unsupported command)."""

    code = UNSUPPORTED


@dataclass(frozen=True)
class ScaleReading:
    """One answer of a scale.

    ``weight_g``: grams, ``None`` when the scale gave a status instead of a weight
    (motion, over capacity, under zero, ...); ``stable``: True only when the scale
    said the weight is stable; ``status``: state names (see ``STATUS_NAMES``);
    ``at``: monotonic seconds when the answer arrived; ``protocol``: its name.
    """

    weight_g: float | None
    stable: bool
    status: tuple[str, ...]
    at: float
    protocol: str

    def to_dict(self) -> dict:
        return {"weight_g": self.weight_g, "stable": self.stable,
                "status": list(self.status), "at": self.at, "protocol": self.protocol}


@dataclass(frozen=True)
class ScanReading:
    """A barcode read by a scanner-scale (Magellan ``S08``): ``code`` as sent, without
    the label id; ``symbology`` a stable name (``upc_a``, ``ean13``, ...,
    ``unknown``); ``label_id`` the Datalogic label identifier it came with."""

    code: str
    symbology: str
    label_id: str
    at: float
    protocol: str

    def to_dict(self) -> dict:
        return {"scan": self.code, "symbology": self.symbology, "label_id": self.label_id,
                "at": self.at, "protocol": self.protocol}


Event = Union[ScaleReading, ScanReading, DeviceFault]


# ----------------------------------------------------------------------------------
# Protocol classes
# ----------------------------------------------------------------------------------

class ScaleProtocol(abc.ABC):
    """Bytes from a scale in, events out; requests to it as bytes.

    Encoders return ``None`` for a command the protocol does not have.
    """

    name = "scale"
    line = LineSettings(9600, 7, "E", 1)
    max_frame = 32          # bytes between a frame's start and its terminator

    def __init__(self, unit: str = "kg") -> None:
        if unit not in GRAMS_PER:
            raise ScaleError(f"unit must be one of {', '.join(GRAMS_PER)}, got {unit!r}",
                             code="BAD_UNIT")
        self.unit = unit
        self.grams_per_unit = GRAMS_PER[unit]
        self._junk = 0
        self._junk_sample = bytearray()
        self.reset()

    # commands ------------------------------------------------------------------
    def weight_request(self) -> bytes:
        """Ask for the weight now."""
        return b"W"

    def zero_request(self) -> bytes | None:
        """Set zero (the scale refuses in motion or outside its zero range)."""
        return None

    def tare_request(self) -> bytes | None:
        """Take what is on the platter as tare: later weights are net."""
        return None

    def clear_request(self) -> bytes | None:
        """Clear the tare."""
        return None

    def probe_request(self) -> bytes:
        """What :func:`probe` sends to see whether the port speaks this protocol."""
        return self.weight_request()

    def probe_finish(self) -> bytes:
        """Sent after a successful probe (to end a mode the probe started)."""
        return b""

    def probe_matches(self, data: bytes) -> bool:
        """True when ``data`` (everything read after :meth:`probe_request`) is an
        answer of this protocol."""
        fresh = type(self)(self.unit)
        return any(not isinstance(ev, DeviceFault) or ev.code == UNKNOWN_STATUS
                   for ev in fresh.feed(data))

    # input ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget partial input (the port was reopened: half a frame is not a frame)."""
        self._junk = 0
        self._junk_sample = bytearray()

    @abc.abstractmethod
    def feed(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Bytes as they arrive (any split) -> readings and faults, in order.
        ``now``: monotonic seconds, stamped on everything returned."""

    # helpers for subclasses ---------------------------------------------------------
    def _skip(self, data: bytes | int, now: float, out: list) -> None:
        chunk = bytes([data]) if isinstance(data, int) else data
        for b in chunk:
            self._junk += 1
            if len(self._junk_sample) < 16:
                self._junk_sample.append(b)
            if self._junk >= GARBAGE_REPORT_BYTES:
                self._flush_junk(now, out)

    def _flush_junk(self, now: float, out: list) -> None:
        if self._junk:
            out.append(DeviceFault(GARBAGE, f"{self.name}: skipped {self._junk} bytes "
                                            f"that are not the protocol's "
                                            f"({bytes(self._junk_sample)!r}...)", now))
            self._junk = 0
            self._junk_sample = bytearray()

    def _fault(self, code: str, message: str, now: float) -> DeviceFault:
        return DeviceFault(code, f"{self.name}: {message}", now)

    def _reading(self, weight_g: float | None, stable: bool, status, now: float
                 ) -> ScaleReading:
        return ScaleReading(weight_g, stable, tuple(status), now, self.name)


class _StxProtocol(ScaleProtocol):
    """Frames ``STX <content> CR``; LF or ETX right after a frame are tolerated."""

    def reset(self) -> None:
        super().reset()
        self._frame: bytearray | None = None

    def feed(self, data: bytes, now: float = 0.0) -> list[Event]:
        out: list[Event] = []
        for b in data:
            frame = self._frame
            if frame is None:
                if b == STX:
                    self._flush_junk(now, out)
                    self._frame = bytearray()
                elif b not in (LF, ETX):
                    self._skip(b, now, out)
            elif b == CR:
                self._frame = None
                out.extend(self._decode(bytes(frame), now))
            elif b == STX:
                out.append(self._fault(BAD_FRAME, f"frame cut short: {bytes(frame)!r}",
                                       now))
                self._frame = bytearray()
            elif len(frame) >= self.max_frame:
                out.append(self._fault(BAD_FRAME, f"no CR within {self.max_frame} bytes",
                                       now))
                self._frame = None
                self._skip(b, now, out)
            else:
                frame.append(b)
        return out

    def _decode(self, content: bytes, now: float) -> list[Event]:
        try:
            text = content.decode("ascii").strip(" ")
        except UnicodeDecodeError:
            return [self._fault(BAD_FRAME, f"not ASCII: {content!r}", now)]
        if text.startswith("?"):
            if len(text) != 2:
                return [self._fault(BAD_FRAME, f"a status is one character: {content!r}",
                                    now)]
            return [self._status(ord(text[1]), now)]
        return self._weight(text, content, now)

    _WEIGHT = re.compile(r"(\d+(?:\.\d+)?)")

    def _weight(self, text: str, content: bytes, now: float) -> list[Event]:
        m = self._WEIGHT.fullmatch(text)
        if m is None:
            return [self._fault(BAD_FRAME, f"not a weight: {content!r}", now)]
        grams = float(m.group(1)) * self.grams_per_unit
        return [self._reading(grams, True, (ZERO,) if grams == 0 else (), now)]

    @abc.abstractmethod
    def _status(self, char: int, now: float) -> Event:
        """The status character after ``?`` -> a reading or UNKNOWN_STATUS."""


# Toledo 8217 status character: bits 0-5 are states. Bit 6 is set in every status
# character real scales send (they are letters: ?A motion, ?B over, ?D under zero), so
# it carries a state only on its own: '@' (0x40) is the scale refusing a command.
TOLEDO_STATUS_BITS = ((0, MOTION), (1, OVER_CAPACITY), (2, UNDER_ZERO),
                      (3, OUTSIDE_ZERO_CAPTURE), (4, CENTRE_OF_ZERO), (5, NET))


class Toledo8217(_StxProtocol):
    """Mettler-Toledo 8217 (9600 7E1). ``W`` -> ``STX <weight>[N] CR`` in ``unit``
    (kg in metric mode) or ``STX ? <status> CR``; ``Z`` zero, ``T`` tare, ``C`` clear
    tare; ``E`` starts the echo used to probe (answer ``STX E CR`` then the echo), ``F``
    ends it."""

    name = "toledo"
    line = LineSettings(9600, 7, "E", 1)

    def zero_request(self) -> bytes:
        return b"Z"

    def tare_request(self) -> bytes:
        return b"T"

    def clear_request(self) -> bytes:
        return b"C"

    def probe_request(self) -> bytes:
        return b"Ehello"

    def probe_finish(self) -> bytes:
        return b"F"

    def probe_matches(self, data: bytes) -> bool:
        return b"\x02E\rhello" in data

    _WEIGHT = re.compile(r"(\d+(?:\.\d+)?)(N?)")

    def _decode(self, content: bytes, now: float) -> list[Event]:
        if content == b"E":
            return []           # the echo acknowledgement (probe), not a weight
        return super()._decode(content, now)

    def _weight(self, text: str, content: bytes, now: float) -> list[Event]:
        m = self._WEIGHT.fullmatch(text)
        if m is None:
            return [self._fault(BAD_FRAME, f"not a weight: {content!r}", now)]
        grams = float(m.group(1)) * self.grams_per_unit
        status = ((NET,) if m.group(2) else ()) + ((ZERO,) if grams == 0 else ())
        return [self._reading(grams, True, status, now)]

    def _status(self, char: int, now: float) -> Event:
        if not 0x40 <= char <= 0x7E:
            return self._fault(UNKNOWN_STATUS, f"status character 0x{char:02X} "
                                               "is not one of the protocol's", now)
        if char == 0x40:
            return self._reading(None, False, (BAD_COMMAND,), now)
        states = tuple(name for bit, name in TOLEDO_STATUS_BITS if char >> bit & 1)
        impossible = ({OVER_CAPACITY, UNDER_ZERO} <= set(states)
                      or (CENTRE_OF_ZERO in states
                          and (OVER_CAPACITY in states or UNDER_ZERO in states)))
        if impossible:
            return self._fault(UNKNOWN_STATUS, f"status character 0x{char:02X} claims "
                                               f"contradictory states {states}", now)
        return self._reading(None, False, states, now)


# SASI / Magellan dual cable status letters (Datalogic's list, not a bit field).
SASI_STATUS = {"A": (MOTION,), "B": (OVER_CAPACITY,), "C": (UNDER_ZERO,),
               "D": (OUTSIDE_ZERO_CAPTURE,)}


class Sasi(_StxProtocol):
    """SASI, the Magellan dual-cable scale port (9600 7E1): ``W`` -> ``STX xx.xxx CR``
    (``unit``, kg by default) or ``STX ? <letter> CR``; ``Z`` zero."""

    name = "sasi"
    line = LineSettings(9600, 7, "E", 1)

    def zero_request(self) -> bytes:
        return b"Z"

    def _status(self, char: int, now: float) -> Event:
        states = SASI_STATUS.get(chr(char))
        if states is None:
            return self._fault(UNKNOWN_STATUS, f"status ?{chr(char)!r} (0x{char:02X}) "
                                               "is not one of A B C D", now)
        return self._reading(None, False, states, now)


# Datalogic label identifiers after S08, longest first.
MAGELLAN_LABELS = (("FF", "ean8"), ("F", "ean13"), ("A", "upc_a"), ("E", "upc_e"),
                   ("R4", "gs1_databar"), ("B1", "code39"), ("B2", "interleaved_2of5"),
                   ("B3", "code128"))
MAGELLAN_STATUS = {"0": (None, False, (ZERO_NOT_CAPTURED,)),
                   "1": (None, False, (MOTION,)),
                   "2": (None, False, (OVER_CAPACITY,)),
                   "3": (0.0, True, (ZERO,)),
                   "5": (None, False, (UNDER_ZERO,))}


class Magellan(ScaleProtocol):
    """Datalogic Magellan single-cable scanner-scale (9600 7O1). Messages are
    ``S<two digits>...`` ending in CR, both ways. ``S14`` status (``S140``..``S145``,
    ``S144<weight>``), ``S11`` stable weight (``S11<weight>``), ``S334`` beep, ``S10``
    reset; scans arrive as ``S08<label id><code>``. Weights are whole digits in units
    of ``digit_g`` grams (1 g: 5 digits metric)."""

    name = "magellan"
    line = LineSettings(9600, 7, "O", 1)
    max_frame = 96

    def __init__(self, unit: str = "g", digit_g: float = 1.0) -> None:
        super().__init__(unit)
        self.digit_g = digit_g

    def weight_request(self) -> bytes:
        # S14 answers at once, whatever the state; S11 may wait for a stable weight
        return b"S14\r"

    def stable_weight_request(self) -> bytes:
        """The weight if stable and above zero, else the ``S14`` status."""
        return b"S11\r"

    def beep_request(self) -> bytes:
        """One beep of the scanner."""
        return b"S334\r"

    def reset_request(self) -> bytes:
        """Reset the scanner-scale."""
        return b"S10\r"

    def probe_request(self) -> bytes:
        # the leading CR ends whatever half command earlier probes left in the scale
        return b"\rS14\r"

    def probe_matches(self, data: bytes) -> bool:
        fresh = Magellan(self.unit, self.digit_g)
        return any(isinstance(ev, ScaleReading) or
                   (isinstance(ev, DeviceFault) and ev.code == UNKNOWN_STATUS)
                   for ev in fresh.feed(data))

    def reset(self) -> None:
        super().reset()
        self._frame: bytearray | None = None

    def feed(self, data: bytes, now: float = 0.0) -> list[Event]:
        out: list[Event] = []
        for b in data:
            self._byte(b, now, out)
        return out

    def _byte(self, b: int, now: float, out: list) -> None:
        frame = self._frame
        if frame is None:
            if b == 0x53:                       # 'S'
                self._flush_junk(now, out)
                self._frame = bytearray(b"S")
            elif b not in (CR, LF):
                self._skip(b, now, out)
            return
        if b == CR:
            self._frame = None
            out.extend(self._decode(bytes(frame), now))
        elif len(frame) < 3 and not 0x30 <= b <= 0x39:
            # 'S' was not a message start after all: it was noise; look again from b
            self._frame = None
            self._skip(bytes(frame), now, out)
            self._byte(b, now, out)
        elif not 0x20 <= b <= 0x7E:
            self._frame = None
            self._skip(bytes(frame) + bytes([b]), now, out)
        elif len(frame) >= self.max_frame:
            self._frame = None
            out.append(self._fault(BAD_FRAME, f"no CR within {self.max_frame} bytes", now))
            self._skip(b, now, out)
        else:
            frame.append(b)

    def _decode(self, frame: bytes, now: float) -> list[Event]:
        text = frame.decode("ascii")
        if len(text) < 3:
            return [self._fault(BAD_FRAME, f"message too short: {frame!r}", now)]
        kind, rest = text[1:3], text[3:]
        if kind == "11":
            grams = self._digits(rest)
            if grams is None:
                return [self._fault(BAD_FRAME, f"weight not 4-5 digits: {frame!r}", now)]
            return [self._reading(grams, True, (ZERO,) if grams == 0 else (), now)]
        if kind == "14":
            if not rest:
                return [self._fault(BAD_FRAME, f"status without a code: {frame!r}", now)]
            code, tail = rest[0], rest[1:]
            if code == "4":
                grams = self._digits(tail)
                if grams is None:
                    return [self._fault(BAD_FRAME, f"S144 weight not 4-5 digits: {frame!r}",
                                        now)]
                return [self._reading(grams, True, (ZERO,) if grams == 0 else (), now)]
            if code not in MAGELLAN_STATUS:
                return [self._fault(UNKNOWN_STATUS, f"scale status S14{code}", now)]
            if tail:
                return [self._fault(BAD_FRAME, f"unexpected data after S14{code}: "
                                               f"{frame!r}", now)]
            weight, stable, status = MAGELLAN_STATUS[code]
            return [self._reading(weight, stable, status, now)]
        if kind == "08":
            for label, symbology in MAGELLAN_LABELS:
                if rest.startswith(label) and len(rest) > len(label):
                    return [ScanReading(rest[len(label):], symbology, label, now,
                                        self.name)]
            if not rest:
                return [self._fault(BAD_FRAME, "scan without data", now)]
            return [ScanReading(rest, "unknown", "", now, self.name)]
        return [self._fault(UNKNOWN_STATUS, f"message type S{kind}", now)]

    def _digits(self, text: str) -> float | None:
        if 4 <= len(text) <= 5 and text.isdigit():
            return int(text) * self.digit_g
        return None


CAS_STATES = {"ST": (True, ()), "US": (False, (MOTION,)), "OL": (False, (OVER_CAPACITY,))}
CAS_KINDS = {"GS": (), "NT": (NET,)}


class Cas(ScaleProtocol):
    """CAS ASCII (9600 7E1): ``W`` -> ``ST,GS,+  1.500kg`` CR LF. Fields: state
    (``ST`` stable, ``US`` unstable, ``OL`` overload), weight kind (``GS`` gross, ``NT``
    net), sign, value, unit (``kg``, ``g``, ``lb``) — the unit is in the line, so
    ``unit`` is not used."""

    name = "cas"
    line = LineSettings(9600, 7, "E", 1)
    max_frame = 48
    _HEAD = re.compile(r"[A-Z]{2},[A-Z]{2},")
    _BODY = re.compile(r"([+-]) *(\d+(?:\.\d+)?) *(kg|g|lb)")

    def reset(self) -> None:
        super().reset()
        self._line = bytearray()

    def feed(self, data: bytes, now: float = 0.0) -> list[Event]:
        out: list[Event] = []
        for b in data:
            if b in (CR, LF):
                if self._line:
                    line, self._line = bytes(self._line), bytearray()
                    out.extend(self._decode(line, now))
            elif 0x20 <= b <= 0x7E and len(self._line) < self.max_frame:
                self._line.append(b)
            elif 0x20 <= b <= 0x7E:
                out.append(self._fault(BAD_FRAME, f"no line end within {self.max_frame} "
                                                  "bytes", now))
                self._skip(bytes(self._line) + bytes([b]), now, out)
                self._line = bytearray()
            else:
                self._skip(bytes(self._line) + bytes([b]), now, out)
                self._line = bytearray()
        return out

    def _decode(self, line: bytes, now: float) -> list[Event]:
        text = line.decode("ascii")
        out: list[Event] = []
        m = self._HEAD.search(text)
        if m is None:
            self._skip(line, now, out)
            return out
        if m.start():
            self._skip(line[:m.start()], now, out)
        self._flush_junk(now, out)
        text = text[m.start():]
        state, kind, body = text[:2], text[3:5], text[6:]
        if state not in CAS_STATES:
            out.append(self._fault(UNKNOWN_STATUS, f"state {state!r}", now))
            return out
        if kind not in CAS_KINDS:
            out.append(self._fault(UNKNOWN_STATUS, f"weight kind {kind!r}", now))
            return out
        stable, states = CAS_STATES[state]
        states = states + CAS_KINDS[kind]
        if state == "OL":       # an overloaded scale's number is not a weight
            out.append(self._reading(None, False, states, now))
            return out
        b = self._BODY.fullmatch(body.strip())
        if b is None:
            out.append(self._fault(BAD_FRAME, f"not a weight: {line!r}", now))
            return out
        grams = float(b.group(2)) * GRAMS_PER[b.group(3)]
        if b.group(1) == "-" and grams:
            grams, states = -grams, states + (UNDER_ZERO,)
        if grams == 0 and stable:
            states = states + (ZERO,)
        out.append(self._reading(grams, stable, states, now))
        return out


PROTOCOLS: dict[str, type[ScaleProtocol]] = {
    "toledo": Toledo8217, "magellan": Magellan, "sasi": Sasi, "cas": Cas}
PROBE_ORDER = ("toledo", "magellan", "cas", "sasi")


def line_for(url: str, line: LineSettings) -> LineSettings:
    """The settings to open ``url`` with: ``line``, except on a pseudo-terminal.

    A pty carries bytes, not bits: data bits and parity mean nothing on it, and some
    Linux kernels refuse a second 7-bit/parity ``tcsetattr`` on a pty with EINVAL. So
    ptys (the simulators) are opened 8N1 at the protocol's speed.
    """
    if "://" not in url:
        try:
            real = os.path.realpath(url)
        except OSError:
            return line
        if real.startswith("/dev/pts/"):
            return LineSettings(line.baudrate, 8, "N", 1)
    return line


def make_protocol(name: str | ScaleProtocol, unit: str | None = None) -> ScaleProtocol:
    """A protocol object from its name (``toledo``, ``magellan``, ``sasi``, ``cas``)."""
    if isinstance(name, ScaleProtocol):
        return name
    cls = PROTOCOLS.get(name)
    if cls is None:
        raise ScaleError(f"no scale protocol {name!r}; have {', '.join(PROTOCOLS)}",
                         code=UNKNOWN_PROTOCOL)
    return cls(unit) if unit else cls()


# ----------------------------------------------------------------------------------
# Port loop
# ----------------------------------------------------------------------------------

class _Job:
    """A command for the I/O thread; a read also waits for the answer."""

    def __init__(self, data: bytes, *, wants_answer: bool) -> None:
        self.data = data
        self.wants_answer = wants_answer
        self.sent_at: float | None = None    # monotonic, set just before the write
        self.generation = -1                 # Link.opens when it was written
        self.result: Event | None = None
        self.done = threading.Event()

    def finish(self, result: Event | None) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()


class ScaleDriver:
    """A scale on a serial port (any :func:`serial.serial_for_url` URL).

    ``read()`` sends the protocol's weight request and returns the answer
    (:class:`ScaleReading`) or a :class:`DeviceFault` — ``NO_ANSWER`` when nothing
    came within ``timeout_s``, ``PORT_LOST``/``PORT_OPEN_FAILED`` when the port was
    down all that time, ``UNKNOWN_STATUS``/``BAD_FRAME`` when the answer was bad,
    always within ``timeout_s``. Every reading, scan and fault also goes to ``on_event``
    (called from the driver's threads). The port is reopened with backoff by
    :class:`Link`; a request in flight when the port went away is sent again on the
    reopened port, and answers from before the reopen are dropped.
    """

    def __init__(self, url: str, protocol: str | ScaleProtocol = "toledo", *,
                 on_event: Callable[[Event], None] | None = None, timeout_s: float = 0.5,
                 unit: str | None = None, read_timeout_s: float = 0.02,
                 backoff_min_s: float = 0.05, backoff_max_s: float = 1.0,
                 line: LineSettings | None = None) -> None:
        self.protocol = make_protocol(protocol, unit)
        self.url = url
        self.timeout_s = timeout_s
        self.on_event = on_event
        self.link = Link(url, line or line_for(url, self.protocol.line),
                         read_timeout_s=read_timeout_s,
                         backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s,
                         on_fault=self._emit)
        self.unsolicited = 0          # weight answers no request was waiting for
        self._jobs: list[_Job] = []   # to be written by the I/O thread
        self._pending: _Job | None = None
        self._jobs_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._stop = threading.Event()
        self._io: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        self._generation = 0

    # lifecycle ------------------------------------------------------------------------
    def open(self) -> "ScaleDriver":
        """Start the I/O thread (``read()`` does this on first use)."""
        if self._io is None or not self._io.is_alive():
            self._stop.clear()
            self._io = threading.Thread(target=self._run, name=f"scale-{self.url}",
                                        daemon=True)
            self._io.start()
        return self

    def start(self, interval_s: float | None = None) -> "ScaleDriver":
        """Start the I/O thread and, with ``interval_s``, poll the weight every
        ``interval_s`` seconds; results go to ``on_event``."""
        self.open()
        if interval_s is not None and (self._poller is None or not self._poller.is_alive()):
            if interval_s <= 0:
                raise ValueError("interval_s must be positive")
            self._poller = threading.Thread(target=self._poll, args=(interval_s,),
                                            name=f"scale-poll-{self.url}", daemon=True)
            self._poller.start()
        return self

    def stop(self) -> None:
        """Stop polling and the I/O thread, close the port."""
        self._stop.set()
        for t in (self._poller, self._io):
            if t is not None and t is not threading.current_thread():
                t.join(5)
        self._poller = self._io = None
        with self._jobs_lock:
            jobs, self._jobs = self._jobs, []
            if self._pending is not None:
                jobs.append(self._pending)
            self._pending = None
        for job in jobs:
            job.finish(DeviceFault(NO_ANSWER, f"{self.url}: driver stopped"))
        self.link.close()

    def __enter__(self) -> "ScaleDriver":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.stop()

    # requests ---------------------------------------------------------------------------
    def read(self, timeout_s: float | None = None) -> ScaleReading | DeviceFault:
        """Ask the scale for its weight now and wait for the answer (at most
        ``timeout_s`` seconds, default the driver's)."""
        return self._ask(self.protocol.weight_request(), timeout_s)

    def read_stable(self, timeout_s: float | None = None) -> ScaleReading | DeviceFault:
        """Magellan only: ``S11``, the scale's stable weight."""
        request = getattr(self.protocol, "stable_weight_request", None)
        if request is None:
            raise ScaleError(f"{self.protocol.name} has no stable-weight request")
        return self._ask(request(), timeout_s)

    def _ask(self, data: bytes, timeout_s: float | None) -> ScaleReading | DeviceFault:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        end = time.monotonic() + timeout
        self.open()
        # one request at a time (the protocols carry no request ids); waiting for a
        # poll in progress counts against this read's own timeout
        if not self._read_lock.acquire(timeout=timeout):
            return self.link.fault(NO_ANSWER, f"{self.url}: another request held the "
                                              f"scale for {timeout:g} s")
        try:
            job = _Job(data, wants_answer=True)
            with self._jobs_lock:
                self._pending = job
                self._jobs.append(job)
            answered = job.done.wait(max(0.0, end - time.monotonic()))
            with self._jobs_lock:
                claimed = self._pending is not job
                if not claimed:
                    self._pending = None
                if job in self._jobs:
                    self._jobs.remove(job)
            if not answered and claimed:
                # the answer came as the time ran out; the I/O thread is handing it over
                answered = job.done.wait(1.0)
            if answered and job.result is not None:
                return job.result
            if not self.link.is_open and self.link.faults:
                return self.link.faults[-1]   # the port has been down: say so, once
            return self.link.fault(NO_ANSWER, f"{self.url}: no answer from the "
                                              f"{self.protocol.name} scale in "
                                              f"{timeout:g} s")
        finally:
            self._read_lock.release()

    def zero(self, timeout_s: float | None = None) -> DeviceFault | None:
        """Zero the scale (the scale refuses while in motion). None when sent."""
        return self._command(self.protocol.zero_request(), "zero", timeout_s)

    def tare(self, timeout_s: float | None = None) -> DeviceFault | None:
        """Tare what is on the scale. None when sent."""
        return self._command(self.protocol.tare_request(), "tare", timeout_s)

    def clear_tare(self, timeout_s: float | None = None) -> DeviceFault | None:
        """Clear the tare. None when sent."""
        return self._command(self.protocol.clear_request(), "clear", timeout_s)

    def beep(self, timeout_s: float | None = None) -> DeviceFault | None:
        """Magellan only: one beep. None when sent."""
        request = getattr(self.protocol, "beep_request", None)
        return self._command(request() if request else None, "beep", timeout_s)

    def _command(self, data: bytes | None, what: str, timeout_s: float | None
                 ) -> DeviceFault | None:
        if data is None:
            raise ScaleError(f"the {self.protocol.name} protocol has no {what} command")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self.open()
        job = _Job(data, wants_answer=False)
        with self._jobs_lock:
            self._jobs.append(job)
        if job.done.wait(timeout):
            return job.result
        with self._jobs_lock:
            if job in self._jobs:
                self._jobs.remove(job)
        return (self.link.faults[-1] if self.link.faults and not self.link.is_open
                else self.link.fault(NO_ANSWER, f"{self.url}: could not send {what}"))

    # the I/O thread ----------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:              # the caller's bug must not stop the scale
                _log.exception("on_event raised for %r", event)

    def _run(self) -> None:
        link = self.link
        odd_failure = False
        while not self._stop.is_set():
            try:
                is_open = link.open()
            except Exception as exc:       # e.g. termios.error, which is not an OSError
                if not odd_failure:
                    link.fault(PORT_OPEN_FAILED, f"{self.url}: {exc!r}")
                odd_failure = True
                self._stop.wait(link.backoff_max_s)
                continue
            odd_failure = False
            if not is_open:
                self._stop.wait(0.01)      # Link keeps the backoff; just don't spin
                continue
            if link.opens != self._generation:
                # a fresh port: half a frame from the old one is not a frame
                self._generation = link.opens
                self.protocol.reset()
            try:
                self._write_jobs()
                data = link.read()
            except LinkDown:
                continue
            if data:
                now = time.monotonic()
                for event in self.protocol.feed(data, now):
                    self._dispatch(event)
        link.close()

    def _write_jobs(self) -> None:
        with self._jobs_lock:
            jobs = [j for j in self._jobs if j.wants_answer is False or j.sent_at is None]
            pending = self._pending
            if (pending is not None and pending.sent_at is not None
                    and pending.generation != self._generation
                    and not pending.done.is_set()):
                jobs.append(pending)       # written to a port that is gone: again
        for job in jobs:
            job.sent_at = time.monotonic()
            job.generation = self._generation
            self.link.write(job.data)      # LinkDown: the job stays queued
            if not job.wants_answer:
                with self._jobs_lock:
                    if job in self._jobs:
                        self._jobs.remove(job)
                job.finish(None)

    def _dispatch(self, event: Event) -> None:
        with self._jobs_lock:
            job = self._pending
            answers = (job is not None and job.sent_at is not None
                       and job.generation == self._generation and event.at >= job.sent_at
                       and not job.done.is_set())
            if isinstance(event, ScaleReading) and answers:
                self._pending = None
            elif isinstance(event, DeviceFault) and answers \
                    and event.code in (UNKNOWN_STATUS, BAD_FRAME):
                self._pending = None
            else:
                answers = False
        if isinstance(event, ScaleReading) and not answers:
            self.unsolicited += 1          # late answer to a request that timed out
            return
        self._emit(event)
        if answers:
            job.finish(event)

    def _poll(self, interval_s: float) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.read()
            next_at = max(next_at + interval_s, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))


# ----------------------------------------------------------------------------------
# Probe
# ----------------------------------------------------------------------------------

def probe(url: str, *, timeout_s: float = 0.3, protocols=PROBE_ORDER) -> str | None:
    """The name of the protocol the scale on ``url`` answers, or None.

    Tries each protocol in turn with its own line settings: opens the port, sends
    its probe request and waits up to ``timeout_s`` seconds for an answer it
    recognises. At most ``len(protocols) * timeout_s`` seconds (plus opening).
    """
    for name in protocols:
        proto = make_protocol(name)
        link = Link(url, line_for(url, proto.line), read_timeout_s=0.02)
        try:
            try:
                opened = link.wait_open(timeout_s)
            except Exception:         # settings this port refuses (termios.error)
                continue
            if not opened:
                return None           # no port at all: no protocol will do better
            try:
                link.write(proto.probe_request())
                got = b""
                end = time.monotonic() + timeout_s
                while time.monotonic() < end:
                    got += link.read()
                    if got and proto.probe_matches(got):
                        finish = proto.probe_finish()
                        if finish:
                            link.write(finish)
                        return name
            except LinkDown:
                return None
        finally:
            link.close()
    return None
