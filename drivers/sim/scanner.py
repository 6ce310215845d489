"""A serial barcode scanner on a pty: sends each scripted code with its suffix.

Script actions: ``scan CODE`` (CODE may hold escapes: ``<GS>``, ``<FS>``, ``<RS>``,
``<US>``, ``<EOT>``, ``<NUL>``, ``<CR>``, ``<LF>``, ``<TAB>``, ``<ESC>``, ``\\xHH``,
``\\\\``), ``partial CODE`` (the code without its suffix: a scan cut short),
``suffix CR|LF|CRLF|TAB``, and the generic ``unplug``, ``replug``, ``garbage [HEX]``,
``mute``, ``unmute``, ``slow S``.
"""

from __future__ import annotations

import re

from lanecore.drivers.scanner import SUFFIXES
from lanecore.drivers.sim import ScriptedDevice, ScriptError

HELP = "a serial barcode scanner (CR/LF/CRLF/TAB suffix, AIM identifiers, GS kept)"

NAMED = {"GS": 0x1D, "FS": 0x1C, "RS": 0x1E, "US": 0x1F, "EOT": 0x04, "NUL": 0x00,
         "CR": 0x0D, "LF": 0x0A, "TAB": 0x09, "ESC": 0x1B}
_ESCAPE = re.compile(r"<([A-Z]{2,3})>|\\x([0-9A-Fa-f]{2})|\\\\")


def unescape(text: str) -> bytes:
    """Script text to the bytes a scanner sends: ``]C1010950<GS>10ABC`` etc.
    Everything else is taken as latin-1."""
    def sub(m: re.Match) -> str:
        if m.group(1):
            if m.group(1) not in NAMED:
                return m.group(0)
            return chr(NAMED[m.group(1)])
        if m.group(2):
            return chr(int(m.group(2), 16))
        return "\\"
    try:
        return _ESCAPE.sub(sub, text).encode("latin-1")
    except UnicodeEncodeError:
        raise ScriptError(f"a scan is bytes 0..255: {text!r}") from None


class ScannerSim(ScriptedDevice):
    """Sends codes like a scanner in serial mode; ignores what the host sends."""

    name = "scanner"

    def __init__(self, link_path=None, *, suffix: str = "CR", **kw) -> None:
        super().__init__(link_path, **kw)
        self.set_suffix(suffix)

    def set_suffix(self, suffix: str) -> None:
        key = suffix.upper()
        if key not in SUFFIXES:
            raise ScriptError(f"suffix is one of {', '.join(SUFFIXES)}, not {suffix!r}")
        self.suffix = key

    def scan(self, code: bytes | str, *, suffix: bool = True) -> bool:
        """Send one code (bytes as they are; str through :func:`unescape`)."""
        data = unescape(code) if isinstance(code, str) else bytes(code)
        if self.muted:
            return False
        return self.send(data + (SUFFIXES[self.suffix] if suffix else b""))

    def do(self, action: str, *args: str) -> None:
        if action in ("scan", "partial"):
            if len(args) != 1:
                raise ScriptError(f"{action} takes one CODE (quote it if it has spaces)")
            self.scan(args[0], suffix=action == "scan")
        elif action == "suffix":
            if len(args) != 1:
                raise ScriptError("suffix CR|LF|CRLF|TAB")
            self.set_suffix(args[0])
        else:
            super().do(action, *args)


def add_arguments(parser) -> None:
    parser.add_argument("--suffix", default="CR", choices=sorted(SUFFIXES),
                        help="what follows every code (default CR)")


def build(args, link_path) -> ScannerSim:
    return ScannerSim(link_path, suffix=args.suffix)
