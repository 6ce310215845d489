"""An EAS deactivator or an EAS gate on a pty, speaking the lanecore EAS line protocol.

``--role deactivator`` (default): answers ``DEACT <id> <ms>`` with ``OK`` when a tag
is in its field (now, or before the request's time runs out), ``NOTAG`` when none
came, ``ERR <id> BUSY`` while another request is open, ``ERR <id> BAD_ARG`` /
``ERR 0 BAD_COMMAND`` for requests it cannot read, and says ``TAG`` when a tag
enters an idle field. Actions: ``tag [N]`` (N live tags into the field), ``notag``
(empty the field), ``fail [REASON]`` (the next request is answered ``ERR <id>
REASON``, default COIL_FAULT).

``--role gate``: ``HB <seq>`` every ``--heartbeat-s``; ``alarm [AISLE]`` sends
``ALARM``, cleared after ``--alarm-s`` (``CLEAR``) or by the host's ``ACK``;
``SILENCE`` is answered ``SILENCED``. Actions: ``alarm [AISLE]``, ``clear``,
``deaf`` (stop heartbeats), ``undeaf``, ``skip N`` (lose N lines: the seq jumps).

Both take the generic ``unplug`` (a deactivator forgets its open request, as
one powered by its USB cable would), ``replug``, ``garbage [HEX]``, ``mute``, ``unmute``,
``slow S``. Lines from the host that fail their checksum are ignored, as a device
would.
"""

from __future__ import annotations

import time

from lanecore.drivers.eas import (DEFAULT_DEVICE_TIMEOUT_MS, MAX_REQUEST_ID, SEQ_MOD,
                                  LineCodec, _token, frame)
from lanecore.drivers.link import DeviceFault
from lanecore.drivers.sim import ScriptedDevice, ScriptError, float_arg

HELP = "an EAS tag deactivator (--role deactivator) or exit gate (--role gate)"


class _EasSim(ScriptedDevice):
    def __init__(self, link_path=None, **kw) -> None:
        super().__init__(link_path, **kw)
        self.codec = LineCodec()
        self.commands: list[list[str]] = []      # every good line from the host

    def on_bytes(self, data: bytes) -> None:
        for item in self.codec.feed(data, time.monotonic()):
            if not isinstance(item, DeviceFault):
                with self._lock:
                    self.commands.append(item)
                self.on_command(item)

    def on_command(self, fields: list[str]) -> None:
        """One checked line from the host."""

    def say(self, *fields: object) -> None:
        self.send(frame(*fields))


class DeactivatorSim(_EasSim):
    """A tag deactivator pad."""

    name = "eas-deactivator"

    def __init__(self, link_path=None, **kw) -> None:
        super().__init__(link_path, **kw)
        self.tags = 0
        self.fail_next: str | None = None
        self.pending: tuple[int, float] | None = None   # (request id, deadline)
        self.deactivated = 0

    def unplug(self) -> None:
        """A USB deactivator loses its power with its cable: the open request goes."""
        with self._lock:
            self.pending = None
        super().unplug()

    def on_command(self, f: list[str]) -> None:
        if f[0] != "DEACT":
            self.say("ERR", 0, "BAD_COMMAND")
            return
        try:
            request_id = int(f[1])
            timeout_ms = int(f[2]) if len(f) > 2 else DEFAULT_DEVICE_TIMEOUT_MS
            if len(f) > 3 or not (1 <= request_id <= MAX_REQUEST_ID
                                  and 1 <= timeout_ms <= 60_000):
                raise ValueError
        except (IndexError, ValueError):
            self.say("ERR", f[1] if len(f) > 1 and f[1].isdigit() else 0, "BAD_ARG")
            return
        with self._lock:
            if self.pending is not None:
                self.say("ERR", request_id, "BUSY")
            elif self.fail_next is not None:
                reason, self.fail_next = self.fail_next, None
                self.say("ERR", request_id, reason)
            elif self.tags > 0:
                self.tags -= 1
                self.deactivated += 1
                self.say("OK", request_id)
            else:
                self.pending = (request_id, time.monotonic() + timeout_ms / 1000)

    def tick(self, now: float) -> None:
        with self._lock:
            if self.pending is None:
                return
            request_id, deadline = self.pending
            if self.tags > 0:
                self.tags -= 1
                self.deactivated += 1
                self.pending = None
                self.say("OK", request_id)
            elif now >= deadline:
                self.pending = None
                self.say("NOTAG", request_id)

    def do(self, action: str, *args: str) -> None:
        if action == "tag":
            n = int(float_arg(action, args, 0)) if args else 1
            with self._lock:
                idle = self.pending is None and self.tags == 0
                self.tags += n
            if idle and not self.muted:
                self.say("TAG")
        elif action == "notag":
            with self._lock:
                self.tags = 0
        elif action == "fail":
            self.fail_next = args[0] if args else "COIL_FAULT"
        else:
            super().do(action, *args)


class GateSim(_EasSim):
    """An exit gate (a pair of pedestals around one or more aisles)."""

    name = "eas-gate"

    def __init__(self, link_path=None, *, gate: str = "G1", aisle: str = "A",
                 heartbeat_s: float = 1.0, alarm_s: float = 3.0, **kw) -> None:
        self.gate, self.aisle = _checked_token(gate), _checked_token(aisle)
        super().__init__(link_path, **kw)
        self.heartbeat_s, self.alarm_s = heartbeat_s, alarm_s
        self.deaf = False
        self.seq = 0
        self.alarms: dict[str, float] = {}     # aisle -> when it clears by itself
        self.silenced = False
        self._next_hb = 0.0

    def line(self, *fields: object) -> None:
        """Send one numbered line (the seq goes last)."""
        with self._lock:
            self.say(*fields, self.seq)
            self.seq = (self.seq + 1) % SEQ_MOD

    def on_command(self, f: list[str]) -> None:
        if f[0] not in ("SILENCE", "ACK"):
            self.say("ERR", 0, "BAD_COMMAND")
            return
        if len(f) != 2 or f[1] != self.gate:
            self.say("ERR", 0, "BAD_ARG")
            return
        if f[0] == "SILENCE":
            self.silenced = True
            self.line("SILENCED", self.gate)
        else:
            self.line("ACKED", self.gate)
            self.clear()

    def alarm(self, aisle: str | None = None) -> None:
        aisle = aisle or self.aisle
        with self._lock:
            self.alarms[aisle] = (time.monotonic() + self.alarm_s) if self.alarm_s > 0 \
                else float("inf")
            self.line("ALARM", self.gate, aisle)

    def clear(self) -> None:
        with self._lock:
            for aisle in list(self.alarms):
                del self.alarms[aisle]
                self.line("CLEAR", self.gate, aisle)
            self.silenced = False

    def tick(self, now: float) -> None:
        with self._lock:
            for aisle, until in list(self.alarms.items()):
                if now >= until:
                    del self.alarms[aisle]
                    self.line("CLEAR", self.gate, aisle)
            if not self.deaf and now >= self._next_hb:
                self._next_hb = now + self.heartbeat_s
                self.line("HB")

    def do(self, action: str, *args: str) -> None:
        if action == "alarm":
            self.alarm(_checked_token(args[0]) if args else None)
        elif action == "clear":
            self.clear()
        elif action == "deaf":
            self.deaf = True
        elif action == "undeaf":
            self.deaf = False
        elif action == "skip":
            with self._lock:
                self.seq = (self.seq + int(float_arg(action, args, 0))) % SEQ_MOD
        else:
            super().do(action, *args)


def _checked_token(text: str) -> str:
    try:
        return _token(text)
    except ValueError:
        raise ScriptError(f"gate ids and aisles are 1-8 of A-Z a-z 0-9 - _: {text!r}") \
            from None


def add_arguments(parser) -> None:
    parser.add_argument("--role", choices=("deactivator", "gate"), default="deactivator",
                        help="which device to be (default deactivator)")
    parser.add_argument("--gate", default="G1", help="gate id in its lines (1-8 of "
                                                      "A-Z a-z 0-9 - _; default G1)")
    parser.add_argument("--aisle", default="A", help="default aisle of an alarm (A)")
    parser.add_argument("--heartbeat-s", type=float, default=1.0,
                        help="seconds between HB lines (1)")
    parser.add_argument("--alarm-s", type=float, default=3.0,
                        help="an alarm clears itself after S seconds; 0: only on ACK (3)")


def build(args, link_path) -> ScriptedDevice:
    if args.role == "gate":
        return GateSim(link_path, gate=args.gate, aisle=args.aisle,
                       heartbeat_s=args.heartbeat_s, alarm_s=args.alarm_s)
    return DeactivatorSim(link_path)
