"""Barcode scanners in serial mode (RS-232, or USB-CDC "virtual COM").

A hand-held or bioptic scanner set to serial output sends every decoded barcode as
its data followed by one configured suffix (CR, LF, CR LF or TAB), optionally
preceded by an AIM symbology identifier (``]E0``, ``]C1``, ``]Q1``, ``]d2`` …,
ISO/IEC 15424). :class:`ScannerProtocol` cuts that byte stream into
:class:`ScanRead` values; :class:`ScannerDriver` runs it on a port.

What a scan's ``code`` holds: exactly the bytes between two suffixes, decoded as
latin-1 (so every byte maps to one character and back), the AIM identifier kept.
GS (0x1D) inside GS1-128 / GS1 DataMatrix data stays where it is: it is never a
suffix. NUL and bytes above 0x7F are passed through untouched, so that
:func:`lanecore.parse_scan` gives its own stable error (``NUL_BYTE``,
``NON_ASCII``) instead of the driver guessing. The lane controller hands ``code``
unchanged to the verification service's ``scan`` op.

The full byte-level description is in ``docs/drivers/scanner-eas-printer.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lanecore.drivers.link import GARBAGE, DeviceFault, LineSettings, PortLoop


SUFFIXES = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "TAB": b"\t"}
MAX_SCAN_BYTES = 4096
INCOMPLETE_AFTER_S = 1.0


@dataclass(frozen=True)
class ScanRead:
    """One barcode as the scanner sent it.

    ``code``: the data without the suffix, latin-1 decoded, AIM prefix kept;
    ``symbology``: the AIM identifier (``]E0``) when the code starts with one, else
    None; ``at``: monotonic seconds when its suffix arrived.
    """

    code: str
    symbology: str | None
    at: float

    def to_dict(self) -> dict:
        return {"event": "scan", "code": self.code, "symbology": self.symbology,
                "at": self.at}


def aim_identifier(code: str) -> str | None:
    """The ISO/IEC 15424 identifier at the start of ``code`` (``]`` + code character
    + modifier character), or None."""
    if len(code) >= 3 and code[0] == "]" and code[1].isascii() and code[1].isalpha() \
            and code[2].isascii() and code[2].isalnum():
        return code[:3]
    return None


class ScannerProtocol:
    """Bytes from a serial scanner in, :class:`ScanRead` / :class:`DeviceFault` out.

    ``suffix``: ``CR``, ``LF``, ``CRLF`` or ``TAB`` (what the scanner is programmed
    to send after each code). ``max_bytes``: a scan longer than this without a
    suffix is dropped with a ``GARBAGE`` fault and everything up to the next suffix
    is skipped. ``incomplete_after_s``: a partial scan that got no byte for this
    long is dropped (``GARBAGE``) rather than glued to the next one. No I/O here.
    """

    def __init__(self, suffix: str = "CR", *, max_bytes: int = MAX_SCAN_BYTES,
                 incomplete_after_s: float = INCOMPLETE_AFTER_S) -> None:
        key = suffix.upper()
        if key not in SUFFIXES:
            raise ValueError(f"suffix is one of {', '.join(SUFFIXES)}, got {suffix!r}")
        self.suffix = key
        self.terminator = SUFFIXES[key]
        self.max_bytes = max_bytes
        self.incomplete_after_s = incomplete_after_s
        self._buf = bytearray()
        self._skipping = False          # after an overlong scan: drop up to a suffix
        self._last_byte_at: float | None = None

    def reset(self) -> None:
        """Forget any partial scan (after a reconnect its start is not trustworthy)."""
        self._buf.clear()
        self._skipping = False
        self._last_byte_at = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished scan held."""
        return len(self._buf)

    def feed(self, data: bytes, at: float = 0.0) -> list[ScanRead | DeviceFault]:
        """Take the bytes that arrived at monotonic time ``at``; return what they
        completed. Call with ``b""`` now and then so a stale partial scan expires."""
        out: list[ScanRead | DeviceFault] = []
        if ((self._buf or self._skipping) and self._last_byte_at is not None
                and at - self._last_byte_at > self.incomplete_after_s):
            if not self._skipping:           # an overlong scan was reported already
                out.append(DeviceFault(GARBAGE, f"incomplete scan of {len(self._buf)} "
                                                f"bytes dropped (no suffix within "
                                                f"{self.incomplete_after_s:g} s)", at))
            self._buf.clear()
            self._skipping = False
        if not data:
            return out
        self._last_byte_at = at
        self._buf += data
        term = self.terminator
        start = 0
        while True:
            end = self._buf.find(term, start)
            if end < 0:
                break
            frame = bytes(self._buf[start:end])
            start = end + len(term)
            if self._skipping:
                self._skipping = False       # the overlong scan ends here
                continue
            if len(frame) > self.max_bytes:
                out.append(self._too_long(len(frame), at))
                continue
            if frame:                        # an empty frame is a doubled suffix
                code = frame.decode("latin-1")
                out.append(ScanRead(code, aim_identifier(code), at))
        del self._buf[:start]
        if len(self._buf) > self.max_bytes:
            # Keep a possible first half of a CR LF so the suffix is seen whole.
            keep = len(term) - 1
            if not self._skipping:
                out.append(self._too_long(len(self._buf), at))
            self._skipping = True
            tail = bytes(self._buf[len(self._buf) - keep:]) if keep else b""
            self._buf[:] = tail
        return out

    def _too_long(self, n: int, at: float) -> DeviceFault:
        return DeviceFault(GARBAGE, f"scan longer than {self.max_bytes} bytes "
                                    f"({n}+) dropped", at)

    def encode(self, code: str) -> bytes:
        """The bytes a scanner with this suffix sends for ``code`` (for simulators)."""
        return code.encode("latin-1") + self.terminator


class ScannerDriver(PortLoop):
    """A serial scanner on ``url``: every :class:`ScanRead` and fault to ``on_event``.

    ``suffix`` as for :class:`ScannerProtocol`; ``line`` the serial settings (most
    scanners ship at 9600 8N1; USB-CDC ignores them). After a reconnect a partial
    scan from before is dropped, never completed with bytes from after.
    """

    name = "scanner"

    def __init__(self, url: str, suffix: str = "CR", line: LineSettings | None = None,
                 *, on_event: Callable[[object], None] | None = None,
                 max_bytes: int = MAX_SCAN_BYTES, **kw) -> None:
        super().__init__(url, line, on_event=on_event, **kw)
        self.protocol = ScannerProtocol(suffix, max_bytes=max_bytes)

    def on_connect(self, now: float) -> None:
        self.protocol.reset()

    def on_data(self, data: bytes, now: float) -> None:
        for event in self.protocol.feed(data, now):
            self.emit(event)
