"""A retail scale on a pty, speaking Toledo 8217, Magellan, SASI or CAS.

The simulated load is ``weight_g`` (grams on the platter, as the load cell feels
it). The scale shows ``gross = weight - zero offset`` and ``net = gross - tare``,
rounded to 1 g, with optional Gaussian ``noise_g``. It is in motion for
``motion_s`` seconds after every weight change; over capacity when gross exceeds
``capacity_g``; under zero when net is below -0.5 g. Zero (``Z``) is honoured only
when not in motion and gross is within 4 % of capacity (OIML R76 zero-setting
range); tare (``T``) only when not in motion and gross is above zero; ``C`` clears
the tare. docs/drivers/scales.md has every byte and every script action.
"""

from __future__ import annotations

import random
import time

from lanecore.drivers.scales import MAGELLAN_LABELS, PROTOCOLS
from lanecore.drivers.sim import ScriptedDevice, ScriptError, float_arg

HELP = "a retail scale (Toledo 8217, Magellan, SASI, CAS) with weight, noise and motion"

SYMBOLOGY_LABELS = {symbology: label for label, symbology in MAGELLAN_LABELS}


class ScaleSim(ScriptedDevice):
    """A scale answering one protocol. Script actions (:meth:`do`): ``weight G``,
    ``motion S``, ``noise G``, ``overload``, ``underzero``, ``status HEX`` /
    ``status off``, ``zero``, ``tare``, ``clear``, ``scan CODE [SYMBOLOGY]`` (Magellan),
    and the generic ones (``unplug``, ``replug``, ``garbage``, ``mute``, ...)."""

    name = "scale"

    def __init__(self, protocol: str = "toledo", link_path=None, *, weight_g: float = 0.0,
                 noise_g: float = 0.0, motion_s: float = 0.3, unit: str = "kg",
                 capacity_g: float = 15000.0, seed: int | None = None,
                 tick_s: float = 0.01) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"no scale protocol {protocol!r}; have {', '.join(PROTOCOLS)}")
        if unit not in ("g", "kg"):
            raise ValueError(f"unit must be g or kg, got {unit!r}")
        super().__init__(link_path, tick_s=tick_s)
        self.protocol = protocol
        self.unit = unit
        self.capacity_g = capacity_g
        self.noise_g = noise_g
        self.motion_s = motion_s
        self.weight_g = weight_g
        self.zero_offset_g = 0.0
        self.tare_g = 0.0
        self.motion_until = 0.0
        self.forced_status: bytes | None = None
        self.echo = False             # Toledo: between E and F every byte comes back
        self.beeps = 0                # Magellan S334
        self.resets = 0               # Magellan S10
        self.requests = 0             # weight/status requests answered
        self._rng = random.Random(seed)
        self._cmd = bytearray()

    # state ------------------------------------------------------------------------
    def set_weight(self, grams: float) -> None:
        """Put ``grams`` on the platter (the scale moves for ``motion_s``)."""
        with self._lock:
            self.weight_g = float(grams)
            self.motion_until = time.monotonic() + self.motion_s
            self.forced_status = None

    def _state(self) -> dict:
        now = time.monotonic()
        gross = self.weight_g - self.zero_offset_g
        if self.noise_g:
            gross += self._rng.gauss(0.0, self.noise_g)
        gross = round(gross)
        net = gross - round(self.tare_g)
        motion = now < self.motion_until
        return {"gross": gross, "net": net, "motion": motion,
                "over": gross > self.capacity_g, "under": net < 0,
                "tared": self.tare_g != 0}

    # commands from the host ----------------------------------------------------------
    def on_bytes(self, data: bytes) -> None:
        if self.protocol == "magellan":
            for b in data:
                if b == 0x0D:
                    # a command starts at its S: bytes before it were noise
                    cmd, self._cmd = bytes(self._cmd), bytearray()
                    self._magellan(cmd[cmd.rfind(b"S"):] if b"S" in cmd else b"")
                elif len(self._cmd) < 64:
                    self._cmd.append(b)
            return
        for b in data:
            self._single(bytes([b]))

    def _single(self, c: bytes) -> None:
        if self.echo:
            if c == b"F":
                self.echo = False
            else:
                self.send(c)
            return
        if c == b"W":
            self.requests += 1
            self.send(self._answer())
        elif c == b"Z" and self.protocol in ("toledo", "sasi"):
            self.do("zero")
        elif c == b"T" and self.protocol == "toledo":
            self.do("tare")
        elif c == b"C" and self.protocol == "toledo":
            self.do("clear")
        elif c == b"E" and self.protocol == "toledo":
            self.echo = True
            self.send(b"\x02E\r")
        # anything else: ignored, as the real scales do with bytes they do not know

    def _magellan(self, cmd: bytes) -> None:
        if cmd == b"S14":
            self.requests += 1
            self.send(self._answer())
        elif cmd == b"S11":
            self.requests += 1
            with self._lock:
                s = self._state()
                stable_weight = (self.forced_status is None and not s["motion"]
                                 and not s["over"] and not s["under"] and s["net"] > 0)
            self.send(b"S11%05d\r" % s["net"] if stable_weight else self._answer())
        elif cmd == b"S334":
            self.beeps += 1
        elif cmd == b"S10":
            self.resets += 1

    def _answer(self) -> bytes:
        with self._lock:
            s = self._state()
            forced = self.forced_status
        p = self.protocol
        if p == "toledo":
            if forced is not None:
                return b"\x02?" + forced + b"\r"
            bits = (s["motion"] << 0 | s["over"] << 1 | s["under"] << 2
                    | (s["tared"] and (s["motion"] or s["over"] or s["under"])) << 5)
            if s["motion"] or s["over"] or s["under"]:
                return b"\x02?" + bytes([0x40 | bits]) + b"\r"
            return b"\x02" + self._number(s["net"]) + (b"N" if s["tared"] else b"") + b"\r"
        if p == "sasi":
            if forced is not None:
                return b"\x02?" + forced + b"\r"
            for flag, letter in (("motion", b"A"), ("over", b"B"), ("under", b"C")):
                if s[flag]:
                    return b"\x02?" + letter + b"\r"
            return b"\x02" + self._number(s["net"]) + b"\r"
        if p == "magellan":
            if forced is not None:
                return b"S14" + forced + b"\r"
            if s["motion"]:
                return b"S141\r"
            if s["over"]:
                return b"S142\r"
            if s["under"]:
                return b"S145\r"
            if s["net"] == 0:
                return b"S143\r"
            return b"S144%05d\r" % s["net"]
        # cas
        head = forced if forced is not None else (
            b"OL" if s["over"] else b"US" if s["motion"] else b"ST")
        kind = b"NT" if s["tared"] else b"GS"
        sign = b"-" if s["net"] < 0 else b"+"
        value = abs(s["net"])
        body = (b"%7.3fkg" % (value / 1000.0)) if self.unit == "kg" else (b"%7dg" % value)
        return head + b"," + kind + b"," + sign + body + b"\r\n"

    def _number(self, grams: int) -> bytes:
        if self.unit == "kg":
            return b"%06.3f" % (grams / 1000.0)
        return b"%05d" % grams

    # script actions ------------------------------------------------------------------
    def do(self, action: str, *args: str) -> None:
        """Run one action (see the class docstring); unknown ones go to the base."""
        with self._lock:
            s = self._state()
            if action == "weight":
                self.set_weight(float_arg(action, args, 0))
            elif action == "motion":
                self.motion_until = time.monotonic() + float_arg(action, args, 0)
            elif action == "noise":
                self.noise_g = float_arg(action, args, 0)
            elif action == "overload":
                self.set_weight(self.zero_offset_g + self.capacity_g * 1.1)
            elif action == "underzero":
                self.set_weight(self.zero_offset_g + self.tare_g - 100.0)
            elif action == "status":
                if not args or args[0] == "off":
                    self.forced_status = None
                else:
                    try:
                        self.forced_status = bytes.fromhex(args[0])
                    except ValueError:
                        raise ScriptError(f"status needs hex bytes or 'off': {args[0]!r}"
                                          ) from None
            elif action == "zero":
                if not s["motion"] and abs(self.weight_g - self.zero_offset_g) \
                        <= 0.04 * self.capacity_g:
                    self.zero_offset_g = self.weight_g
            elif action == "tare":
                if not s["motion"] and s["gross"] > 0:
                    self.tare_g = float(s["gross"])
            elif action == "clear":
                self.tare_g = 0.0
            elif action == "scan":
                self._scan(args)
            else:
                super().do(action, *args)

    def _scan(self, args) -> None:
        if self.protocol != "magellan":
            raise ScriptError(f"{self.protocol} scales do not scan")
        if not args:
            raise ScriptError("scan needs a code")
        code = args[0]
        if len(args) > 1:
            symbology = args[1]
            if symbology not in SYMBOLOGY_LABELS:
                raise ScriptError(f"symbology must be one of "
                                  f"{', '.join(SYMBOLOGY_LABELS)}, got {symbology!r}")
        else:
            symbology = {12: "upc_a", 8: "ean8", 13: "ean13"}.get(len(code), "code128")
        self.send(b"S08" + SYMBOLOGY_LABELS[symbology].encode() + code.encode("ascii")
                  + b"\r")


def add_arguments(parser) -> None:
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="toledo")
    parser.add_argument("--weight-g", type=float, default=0.0, metavar="G",
                        help="load on the platter at start (grams)")
    parser.add_argument("--noise-g", type=float, default=0.0, metavar="G",
                        help="standard deviation of the noise on each answer (grams)")
    parser.add_argument("--motion-s", type=float, default=0.3, metavar="S",
                        help="seconds of motion after each weight change")
    parser.add_argument("--unit", choices=["kg", "g"], default="kg",
                        help="unit of the weights sent (Toledo, SASI, CAS)")
    parser.add_argument("--capacity-g", type=float, default=15000.0, metavar="G")
    parser.add_argument("--seed", type=int, help="noise seed")


def build(args, link_path) -> ScaleSim:
    return ScaleSim(args.protocol, link_path, weight_g=args.weight_g, noise_g=args.noise_g,
                    motion_s=args.motion_s, unit=args.unit, capacity_g=args.capacity_g,
                    seed=args.seed)
