"""An ESC/POS receipt printer on a pty: decodes what it is sent back into printed
lines, QR payloads and cuts, and answers ``DLE EOT n`` status queries.

Actions: ``paperout``, ``coveropen``, ``nearend`` (paper low, still printing),
``ok`` (paper in, cover shut: what was held while not ready is printed), and the
generic ``unplug``, ``replug``, ``garbage [HEX]``, ``mute``, ``unmute``, ``slow S``.
With ``lanecore sim printer`` every printed line, QR and cut is also written to
stdout as one JSON object per line (``--quiet`` to stop that).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from lanecore.drivers.printer import CODEPAGE
from lanecore.drivers.sim import ScriptedDevice

HELP = "an ESC/POS receipt printer (PC858 text, GS ( k QR, GS V cut, DLE EOT status)"

# ESC commands with one parameter byte that only change modes the simulator ignores.
_ESC_ONE_ARG = frozenset(b"! -3GJMRUVer{")   # ESC ! n, ESC SP n, ESC - n, …
_ESC_NO_ARG = frozenset(b"2<")


@dataclass
class Mode:
    bold: bool = False
    width: int = 1
    height: int = 1
    align: int = 0
    codepage: int = 0


@dataclass
class Printed:
    """What came out of the printer, in order: ``("line", text, Mode)``,
    ``("qr", payload, {"model", "module", "ec"})``, ``("feed", n)``, ``("cut", partial)``."""

    events: list = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "line"]

    @property
    def qr_payloads(self) -> list[bytes]:
        return [e[1] for e in self.events if e[0] == "qr"]

    @property
    def cuts(self) -> int:
        return sum(1 for e in self.events if e[0] == "cut")


class EscPosParser:
    """Turns an ESC/POS byte stream into print events; incomplete commands wait
    for more bytes. ``status(n)`` answers ``DLE EOT n`` (it is called at once)."""

    def __init__(self, on_event, on_status) -> None:
        self.buf = bytearray()
        self.mode = Mode()
        self.line = bytearray()
        self.qr = {"model": 50, "module": 3, "ec": 48, "data": b""}
        self.on_event = on_event
        self.on_status = on_status
        self.unknown: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.buf += data
        i = 0
        buf = self.buf
        while i < len(buf):
            used = self._one(buf, i)
            if used == 0:
                break                      # an incomplete command: wait for more
            i += used
        del buf[:i]

    def _flush_line(self) -> None:
        text = bytes(self.line).decode(CODEPAGE, errors="replace")
        self.line.clear()
        self.on_event(("line", text, Mode(**vars(self.mode))))

    def _one(self, b: bytearray, i: int) -> int:
        c = b[i]
        n = len(b) - i
        if c == 0x0A:
            self._flush_line()
            return 1
        if c == 0x1B:
            if n < 2:
                return 0
            cmd = b[i + 1]
            if cmd == 0x40:                                  # ESC @
                self.mode = Mode()
                self.line.clear()
                return 2
            if cmd in _ESC_NO_ARG:
                return 2
            if n < 3:
                return 0
            arg = b[i + 2]
            if cmd == 0x74:                                  # ESC t n
                self.mode.codepage = arg
            elif cmd == 0x45:                                # ESC E n
                self.mode.bold = bool(arg & 1)
            elif cmd == 0x61:                                # ESC a n
                self.mode.align = arg % 48 if arg >= 48 else arg
            elif cmd == 0x64:                                # ESC d n
                if self.line:
                    self._flush_line()
                self.on_event(("feed", arg))
            elif cmd not in _ESC_ONE_ARG:
                self.unknown.append(bytes(b[i:i + 2]))
                return 2
            return 3
        if c == 0x1D:
            if n < 2:
                return 0
            cmd = b[i + 1]
            if cmd == 0x21:                                  # GS ! n
                if n < 3:
                    return 0
                self.mode.width = (b[i + 2] >> 4) + 1
                self.mode.height = (b[i + 2] & 0x0F) + 1
                return 3
            if cmd == 0x56:                                  # GS V m [n]
                if n < 3:
                    return 0
                m = b[i + 2]
                size = 4 if m in (65, 66, 97, 98, 103, 104) else 3
                if n < size:
                    return 0
                if self.line:
                    self._flush_line()
                self.on_event(("cut", m in (1, 49, 66, 98, 104)))
                return size
            if cmd == 0x28:                                  # GS ( X pL pH ...
                if n < 5:
                    return 0
                length = b[i + 3] | b[i + 4] << 8
                if n < 5 + length:
                    return 0
                if b[i + 2] == 0x6B:
                    self._qr(bytes(b[i + 5:i + 5 + length]))
                return 5 + length
            if cmd in (0x42, 0x48, 0x66, 0x68, 0x77):        # GS B/H/f/h/w n
                return 3 if n >= 3 else 0
            self.unknown.append(bytes(b[i:i + 2]))
            return 2
        if c == 0x10:
            if n < 2:
                return 0
            if b[i + 1] == 0x04:                             # DLE EOT n
                if n < 3:
                    return 0
                self.on_status(b[i + 2])
                return 3
            self.unknown.append(bytes(b[i:i + 2]))
            return 2
        if c >= 0x20 or c == 0x09:
            self.line.append(c)
        return 1                                             # CR and others: ignored

    def _qr(self, body: bytes) -> None:
        if len(body) < 2 or body[0] != 0x31:                 # cn 49: QR only
            return
        fn, rest = body[1], body[2:]
        if fn == 0x41 and rest:
            self.qr["model"] = rest[0]
        elif fn == 0x43 and rest:
            self.qr["module"] = rest[0]
        elif fn == 0x45 and rest:
            self.qr["ec"] = rest[0]
        elif fn == 0x50 and rest[:1] == b"\x30":
            self.qr["data"] = rest[1:]
        elif fn == 0x51:
            if self.line:
                self._flush_line()
            ec = {48: "L", 49: "M", 50: "Q", 51: "H"}.get(self.qr["ec"], "?")
            self.on_event(("qr", self.qr["data"], {"model": self.qr["model"] - 48,
                                                   "module": self.qr["module"], "ec": ec}))


class PrinterSim(ScriptedDevice):
    """A receipt printer. ``printed`` holds what it printed; while it is not ready
    (paper out, cover open) what it is sent waits in ``held`` until ``ok``."""

    name = "printer"

    def __init__(self, link_path=None, *, echo=None, state: str = "ok", **kw) -> None:
        super().__init__(link_path, **kw)
        self.printed = Printed()
        self.held: list = []
        self.paper_out = self.cover_open = self.near_end = False
        self.echo = echo
        self.parser = EscPosParser(self._event, self._status)
        self.status_queries = 0
        if state != "ok":
            self.do(state)

    @property
    def ready(self) -> bool:
        return not (self.paper_out or self.cover_open)

    def on_bytes(self, data: bytes) -> None:
        self.parser.feed(data)

    def _event(self, event) -> None:
        with self._lock:
            if not self.ready:
                self.held.append(event)
                return
            self.printed.events.append(event)
        if self.echo is not None:
            kind = event[0]
            if kind == "line":
                obj = {"line": event[1]}
            elif kind == "qr":
                obj = {"qr": event[1].decode("latin-1"), **event[2]}
            elif kind == "cut":
                obj = {"cut": "partial" if event[1] else "full"}
            else:
                obj = {"feed": event[1]}
            print(json.dumps(obj), file=self.echo, flush=True)

    def status_byte(self, n: int) -> int:
        """The answer to ``DLE EOT n`` for the present state."""
        offline = not self.ready
        if n == 1:
            return 0x12 | (0x08 if offline else 0)
        if n == 2:
            return (0x12 | (0x04 if self.cover_open else 0)
                    | (0x20 if self.paper_out else 0))
        if n == 3:
            return 0x12
        if n == 4:
            return (0x12 | (0x60 if self.paper_out else 0)
                    | (0x0C if self.near_end or self.paper_out else 0))
        return 0x12

    def _status(self, n: int) -> None:
        self.status_queries += 1
        if n in (1, 2, 3, 4):
            self.send(bytes((self.status_byte(n),)))

    def do(self, action: str, *args: str) -> None:
        if action == "paperout":
            self.paper_out = True
        elif action == "coveropen":
            self.cover_open = True
        elif action == "nearend":
            self.near_end = True
        elif action == "ok":
            with self._lock:
                self.paper_out = self.cover_open = self.near_end = False
                held, self.held = self.held, []
            for event in held:
                self._event(event)
        else:
            super().do(action, *args)


def add_arguments(parser) -> None:
    parser.add_argument("--state", choices=("ok", "paperout", "coveropen", "nearend"),
                        default="ok", help="the printer's state at start (ok)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not write printed lines, QR payloads and cuts to stdout")


def build(args, link_path) -> PrinterSim:
    return PrinterSim(link_path, state=args.state, echo=None if args.quiet else sys.stdout)
