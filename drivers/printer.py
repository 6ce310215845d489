"""Receipt printers speaking ESC/POS (Epson TM-series and the many compatibles).

* :class:`EscPos`: a byte builder for the commands lanecore uses — initialise
  (``ESC @``), code page (``ESC t 19`` = PC858), bold (``ESC E``), character size
  (``GS !``), alignment (``ESC a``), feed (``ESC d``), QR codes (``GS ( k``
  functions 165, 167, 169, 180, 181) and cut (``GS V``).
* :class:`Receipt`: a till receipt (lines, items with prices from integer minor
  units, totals, a QR) rendered with :class:`EscPos`.
* :class:`StatusProtocol`: the printer's answers to ``DLE EOT n`` in, typed
  :class:`PrinterStatus` out.
* :class:`PrinterDriver`: writes a receipt and checks the status around it.

Text is encoded in code page PC858 (CP437 with the euro sign at 0xD5): it has £
(0x9C), € and ¥ (0xBE), and every Epson printer since the TM-T88III selects it with
``ESC t 19``. A character PC858 lacks prints as ``?``; control characters in text
(a product name with an ESC in it) print as ``?`` too, so data can never become a
command. Every byte is described in ``docs/drivers/scanner-eas-printer.md``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from lanecore.drivers.link import (GARBAGE, NO_ANSWER, PORT_LOST, DeviceFault,
                                   LineSettings, PortLoop)

ESC, GS, DLE, EOT, LF = 0x1B, 0x1D, 0x10, 0x04, 0x0A
CODEPAGE = "cp858"
CODEPAGE_ESC_T = 19            # ESC t 19: PC858 (Euro)

# The most a QR of version 40 holds in byte mode, per error-correction level.
QR_EC = {"L": 48, "M": 49, "Q": 50, "H": 51}
QR_MAX_BYTES = {"L": 2953, "M": 2331, "Q": 1663, "H": 1273}
QR_MODELS = {1: 49, 2: 50}

# Printer fault codes (DeviceFault.code) beyond the link's.
PAPER_OUT = "PAPER_OUT"
COVER_OPEN = "COVER_OPEN"
PRINTER_ERROR = "PRINTER_ERROR"


class PrinterError(ValueError):
    """A receipt that cannot be encoded; ``code`` is stable (``QR_TOO_LONG``, …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def format_money(minor: int, symbol: str = "£", exponent: int = 2) -> str:
    """Integer minor units as text: ``format_money(-1205)`` is ``-£12.05``."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise PrinterError("BAD_AMOUNT", f"money is an integer of minor units, got {minor!r}")
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(minor), 10 ** exponent)
    body = f"{units:,}" + (f".{cents:0{exponent}d}" if exponent else "")
    return f"{sign}{symbol}{body}"


def encode_text(text: str) -> bytes:
    """``text`` in PC858; control characters and characters PC858 lacks as ``?``.
    A newline stays a newline (LF: print the line)."""
    clean = "".join(c if c == "\n" or (ord(c) >= 0x20 and c != "\x7f") else "?"
                    for c in text)
    return clean.encode(CODEPAGE, errors="replace")


class EscPos:
    """An ESC/POS byte stream, built by chained calls; :meth:`to_bytes` at the end."""

    def __init__(self) -> None:
        self._out = bytearray()

    def to_bytes(self) -> bytes:
        return bytes(self._out)

    def raw(self, data: bytes) -> "EscPos":
        self._out += data
        return self

    def init(self) -> "EscPos":
        """``ESC @`` (1B 40): clear the buffer, modes back to power-on defaults."""
        return self.raw(b"\x1b@")

    def codepage(self, n: int = CODEPAGE_ESC_T) -> "EscPos":
        """``ESC t n`` (1B 74 n): character code table (19 = PC858)."""
        return self.raw(bytes((ESC, 0x74, n)))

    def text(self, text: str) -> "EscPos":
        """Text in PC858 (no line end)."""
        return self.raw(encode_text(text))

    def line(self, text: str = "") -> "EscPos":
        """Text and ``LF`` (0A): print the line."""
        return self.raw(encode_text(text) + b"\n")

    def bold(self, on: bool = True) -> "EscPos":
        """``ESC E n`` (1B 45 01 / 1B 45 00): emphasised on/off."""
        return self.raw(bytes((ESC, 0x45, 1 if on else 0)))

    def size(self, width: int = 1, height: int = 1) -> "EscPos":
        """``GS ! n`` (1D 21 n): character width and height multipliers 1..8;
        ``n = (width-1) << 4 | (height-1)``; ``size(2, 2)`` is double size."""
        if not (1 <= width <= 8 and 1 <= height <= 8):
            raise PrinterError("BAD_SIZE", "width and height are 1..8")
        return self.raw(bytes((GS, 0x21, (width - 1) << 4 | (height - 1))))

    def align(self, how: str = "left") -> "EscPos":
        """``ESC a n`` (1B 61 n): 0 left, 1 centre, 2 right."""
        n = {"left": 0, "center": 1, "centre": 1, "right": 2}.get(how)
        if n is None:
            raise PrinterError("BAD_ALIGN", f"align left, center or right, not {how!r}")
        return self.raw(bytes((ESC, 0x61, n)))

    def feed(self, lines: int = 1) -> "EscPos":
        """``ESC d n`` (1B 64 n): print and feed ``lines`` lines (0..255)."""
        if not 0 <= lines <= 255:
            raise PrinterError("BAD_FEED", "feed 0..255 lines")
        return self.raw(bytes((ESC, 0x64, lines)))

    def cut(self, partial: bool = False) -> "EscPos":
        """``GS V m`` (1D 56 00 full / 1D 56 01 partial): cut the paper here."""
        return self.raw(bytes((GS, 0x56, 1 if partial else 0)))

    def qr(self, payload: bytes | str, *, module: int = 6, ec: str = "M",
           model: int = 2) -> "EscPos":
        """A QR code, centred by the current alignment.

        ``GS ( k`` with cn = 49 ('1', QR): fn 65 (function 165) model, fn 67 (167)
        module size ``module`` dots (1..16), fn 69 (169) error correction ``ec``
        (L/M/Q/H), fn 80 (180) store ``payload`` with ``pL pH`` = len + 3 as a
        little-endian 16-bit number, fn 81 (181) print. A ``str`` payload is UTF-8.
        """
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        if ec not in QR_EC:
            raise PrinterError("BAD_QR", f"error correction L, M, Q or H, not {ec!r}")
        if model not in QR_MODELS:
            raise PrinterError("BAD_QR", "QR model 1 or 2")
        if not 1 <= module <= 16:
            raise PrinterError("BAD_QR", "module size 1..16 dots")
        if not 1 <= len(data) <= QR_MAX_BYTES[ec]:
            raise PrinterError("QR_TOO_LONG", f"a QR with error correction {ec} holds "
                                              f"1..{QR_MAX_BYTES[ec]} bytes, "
                                              f"got {len(data)}")
        n = len(data) + 3
        self.raw(b"\x1d(k\x04\x00\x31\x41" + bytes((QR_MODELS[model], 0)))
        self.raw(b"\x1d(k\x03\x00\x31\x43" + bytes((module,)))
        self.raw(b"\x1d(k\x03\x00\x31\x45" + bytes((QR_EC[ec],)))
        self.raw(b"\x1d(k" + bytes((n & 0xFF, n >> 8)) + b"\x31\x50\x30" + data)
        return self.raw(b"\x1d(k\x03\x00\x31\x51\x30")


def status_query(n: int) -> bytes:
    """``DLE EOT n`` (10 04 n): real-time status, n = 1 printer, 2 offline cause,
    3 error cause, 4 roll paper sensor. Answered at once with one byte, even while
    the printer is offline or busy printing."""
    if n not in (1, 2, 3, 4):
        raise ValueError("DLE EOT n: n is 1..4")
    return bytes((DLE, EOT, n))


@dataclass
class Receipt:
    """A till receipt. Amounts are integer minor units; ``width`` is characters
    per line in the normal font (42 on 80 mm paper, 32 on 58 mm)."""

    width: int = 42
    symbol: str = "£"
    exponent: int = 2
    _ops: list = field(default_factory=list, repr=False)

    def header(self, text: str) -> "Receipt":
        """A centred, bold, double-size line (the store's name)."""
        self._ops.append(("header", text))
        return self

    def line(self, text: str = "") -> "Receipt":
        self._ops.append(("line", text))
        return self

    def item(self, name: str, amount_minor: int, qty: int = 1) -> "Receipt":
        """``name`` left (with ``qty x`` when more than one), amount right."""
        label = f"{qty} x {name}" if qty != 1 else name
        self._ops.append(("pair", label, self.money(amount_minor), False))
        return self

    def total(self, label: str, amount_minor: int) -> "Receipt":
        """A bold label/amount line."""
        self._ops.append(("pair", label, self.money(amount_minor), True))
        return self

    def qr(self, payload: bytes | str, **kw) -> "Receipt":
        self._ops.append(("qr", payload, kw))
        return self

    def money(self, minor: int) -> str:
        return format_money(minor, self.symbol, self.exponent)

    def pair(self, left: str, right: str) -> str:
        """``left`` and ``right`` on one line of ``width`` characters (left cut short)."""
        room = self.width - len(right) - 1
        left = left[:max(0, room)]
        return left + " " * (self.width - len(left) - len(right)) + right

    def to_bytes(self, *, feed_lines: int = 4, cut: bool = True) -> bytes:
        """The whole receipt: init, code page, the lines, feed, cut."""
        p = EscPos().init().codepage()
        for op in self._ops:
            if op[0] == "header":
                p.align("center").bold().size(2, 2).line(op[1]).size().bold(False) \
                    .align("left")
            elif op[0] == "line":
                p.line(op[1])
            elif op[0] == "pair":
                _, left, right, strong = op
                if strong:
                    p.bold()
                p.line(self.pair(left, right))
                if strong:
                    p.bold(False)
            elif op[0] == "qr":
                p.align("center").qr(op[1], **op[2]).line().align("left")
        p.feed(feed_lines)
        if cut:
            p.cut(partial=False)
        return p.to_bytes()


# -- status ----------------------------------------------------------------------------

@dataclass(frozen=True)
class StatusByte:
    """One byte answering ``DLE EOT n`` (which n is known only to the asker)."""

    value: int
    at: float


@dataclass(frozen=True)
class PrinterStatus:
    """The printer's state from the four ``DLE EOT`` answers. ``at``: monotonic s."""

    online: bool
    cover_open: bool
    paper_out: bool
    paper_near_end: bool
    feed_button: bool
    cutter_error: bool
    unrecoverable_error: bool
    auto_recoverable_error: bool
    raw: tuple[int, int, int, int]
    at: float

    @property
    def ready(self) -> bool:
        return (self.online and not self.cover_open and not self.paper_out
                and not self.cutter_error and not self.unrecoverable_error)

    def fault(self) -> DeviceFault | None:
        """The fault that stops printing, most specific first, or None."""
        if self.paper_out:
            return DeviceFault(PAPER_OUT, "the printer is out of paper", self.at)
        if self.cover_open:
            return DeviceFault(COVER_OPEN, "the printer's cover is open", self.at)
        if self.cutter_error or self.unrecoverable_error or not self.online:
            return DeviceFault(PRINTER_ERROR, f"printer offline or in error "
                                              f"(status {bytes(self.raw).hex()})", self.at)
        return None

    def to_dict(self) -> dict:
        return {"event": "printer_status", "online": self.online,
                "cover_open": self.cover_open, "paper_out": self.paper_out,
                "paper_near_end": self.paper_near_end, "feed_button": self.feed_button,
                "cutter_error": self.cutter_error,
                "unrecoverable_error": self.unrecoverable_error,
                "auto_recoverable_error": self.auto_recoverable_error,
                "raw": bytes(self.raw).hex(), "at": self.at}


def is_status_byte(b: int) -> bool:
    """Bits 0 and 7 are 0 and bits 1 and 4 are 1 in every ``DLE EOT`` answer."""
    return b & 0x93 == 0x12


def decode_status(printer: int, offline: int, error: int, paper: int,
                  at: float = 0.0) -> PrinterStatus:
    """The answers to ``DLE EOT`` 1, 2, 3, 4 (in that order) as one status."""
    return PrinterStatus(
        online=not printer & 0x08,
        cover_open=bool(offline & 0x04),
        paper_out=bool(offline & 0x20) or paper & 0x60 == 0x60,
        paper_near_end=paper & 0x0C == 0x0C,
        feed_button=bool(offline & 0x08),
        cutter_error=bool(error & 0x08),
        unrecoverable_error=bool(error & 0x20),
        auto_recoverable_error=bool(error & 0x40),
        raw=(printer, offline, error, paper),
        at=at)


class StatusProtocol:
    """Bytes from the printer in, :class:`StatusByte` / :class:`DeviceFault` out.

    The printer sends nothing but status bytes here (automatic status back is never
    enabled by this driver), so a byte that does not have a status byte's fixed
    bits is line noise (``GARBAGE``).
    """

    def reset(self) -> None:
        """Nothing is kept between bytes; present for the drivers' common shape."""

    def feed(self, data: bytes, at: float = 0.0) -> list[StatusByte | DeviceFault]:
        out: list[StatusByte | DeviceFault] = []
        bad = 0
        for b in data:
            if is_status_byte(b):
                if bad:
                    out.append(DeviceFault(GARBAGE, f"{bad} bytes that are not status "
                                                    f"skipped", at))
                    bad = 0
                out.append(StatusByte(b, at))
            else:
                bad += 1
        if bad:
            out.append(DeviceFault(GARBAGE, f"{bad} bytes that are not status skipped", at))
        return out


@dataclass(frozen=True)
class PrintResult:
    """What :meth:`PrinterDriver.print_receipt` returns: ``ok``, or the ``fault``
    that stopped it (``PAPER_OUT``, ``COVER_OPEN``, ``PRINTER_ERROR``,
    ``NO_ANSWER``, ``PORT_LOST``) and the last status read."""

    ok: bool
    fault: DeviceFault | None
    status: PrinterStatus | None

    def to_dict(self) -> dict:
        return {"event": "print_result", "ok": self.ok,
                "fault": self.fault.to_dict() if self.fault else None,
                "status": self.status.to_dict() if self.status else None}


class PrinterDriver(PortLoop):
    """An ESC/POS printer on ``url``.

    :meth:`status` asks ``DLE EOT`` 1..4 and returns a :class:`PrinterStatus` (or a
    :class:`DeviceFault`); :meth:`print_receipt` checks the status, writes the
    receipt and checks again. Status bytes that arrive while no query is waiting
    are dropped; a query left unanswered makes the driver reopen the port (which
    flushes its input), so a late byte is not taken as the next query's answer.
    """

    name = "printer"

    def __init__(self, url: str, line: LineSettings | None = None, *,
                 on_event: Callable[[object], None] | None = None, **kw) -> None:
        super().__init__(url, line, on_event=on_event, **kw)
        self.protocol = StatusProtocol()
        self._request_lock = threading.Lock()
        self._state = threading.Lock()
        self._want = 0                     # status bytes the current query waits for
        self._got: list[int] = []
        self._done = threading.Event()
        self._lost = False

    def on_connect(self, now: float) -> None:
        self.protocol.reset()
        self.discard_outbox()

    def on_down(self, now: float) -> None:
        self.discard_outbox()
        with self._state:
            if self._want:
                self._lost = True
                self._want = 0
                self._done.set()

    def on_data(self, data: bytes, now: float) -> None:
        for event in self.protocol.feed(data, now):
            if isinstance(event, DeviceFault):
                self.emit(event)
                continue
            with self._state:
                if self._want:
                    self._got.append(event.value)
                    if len(self._got) >= self._want:
                        self._want = 0
                        self._done.set()

    def _ask(self, payload: bytes, answers: int, timeout_s: float) -> list[int] | DeviceFault:
        if not self.connected.wait(timeout_s):
            return DeviceFault(PORT_LOST, f"{self.url}: port not open", self.clock())
        with self._state:
            self._got, self._want, self._lost = [], answers, False
            self._done.clear()
        self.send(payload)
        answered = self._done.wait(timeout_s)
        with self._state:
            got, lost = self._got, self._lost
            self._want = 0
        if lost:
            return DeviceFault(PORT_LOST, f"{self.url}: port lost during a query",
                               self.clock())
        if not answered or len(got) < answers:
            self.request_drop(NO_ANSWER, f"{self.url}: {len(got)} of {answers} status "
                                         f"bytes in {timeout_s:g} s")
            return DeviceFault(NO_ANSWER, f"printer: no status answer in {timeout_s:g} s",
                               self.clock())
        return got

    def status(self, timeout_s: float = 1.0) -> PrinterStatus | DeviceFault:
        """The printer's status, or a :class:`DeviceFault` (``NO_ANSWER``,
        ``PORT_LOST``) within about ``timeout_s`` seconds."""
        with self._request_lock:
            got = self._ask(b"".join(status_query(n) for n in (1, 2, 3, 4)), 4, timeout_s)
        if isinstance(got, DeviceFault):
            return got
        st = decode_status(*got, at=self.clock())
        self.emit(st)
        return st

    def print_receipt(self, receipt: Receipt | EscPos | bytes,
                      timeout_s: float = 2.0) -> PrintResult:
        """Print ``receipt`` if the printer is ready; the printer's fault (reported
        to on_event too) otherwise. Checks the status again after writing, so paper
        that ran out during the receipt is reported."""
        data = receipt if isinstance(receipt, bytes) else receipt.to_bytes()
        before = self.status(timeout_s)
        if isinstance(before, DeviceFault):
            return PrintResult(False, before, None)
        fault = before.fault()
        if fault is not None:
            self.emit(fault)
            return PrintResult(False, fault, before)
        self.send(data)
        after = self.status(timeout_s)
        if isinstance(after, DeviceFault):
            return PrintResult(False, after, before)
        fault = after.fault()
        if fault is not None:
            self.emit(fault)
            return PrintResult(False, fault, after)
        return PrintResult(True, None, after)
