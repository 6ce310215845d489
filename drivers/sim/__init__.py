"""Simulators of every lane device, each on a pty pair (``lanecore sim DEVICE``).

Every simulator module here defines:

* ``HELP``: one line for ``lanecore sim --help``;
* ``add_arguments(parser)``: its own options;
* ``build(args, link_path) -> PtyDevice``: the device, not yet started.

A device also takes scripted actions (:meth:`ScriptedDevice.do`): the generic ones
here — ``unplug``, ``replug``, ``garbage``, ``mute``, ``unmute``, ``slow S`` — and
its own (a scale's ``weight G``, ``motion S``, …). ``lanecore sim`` runs a script
given as ``--script "0.5 weight 1500; 2 unplug; 3 replug"`` (seconds after start,
action, arguments; ``;`` or newlines between steps) or ``--script @FILE``.

May import: the drivers (``lanecore.drivers``), ``core`` and ``ext`` — never
``gateway``.
"""

from __future__ import annotations

import importlib
import shlex
import time
from dataclasses import dataclass

from lanecore.drivers.pty import PtyDevice

SIMULATORS = ("scale", "loadcell", "scanner", "eas", "qrdisplay", "printer")


class ScriptError(ValueError):
    code = "BAD_SCRIPT"


class ScriptedDevice(PtyDevice):
    """A :class:`PtyDevice` that takes named actions (from a script or a test)."""

    def do(self, action: str, *args: str) -> None:
        """Run one action; subclasses handle theirs and defer the rest here."""
        if action == "unplug":
            self.unplug()
        elif action == "replug":
            self.replug()
        elif action == "garbage":
            self.inject_garbage(bytes.fromhex(args[0]) if args else b"\x00\xff#noise\x7f")
        elif action == "mute":
            self.muted = True
        elif action == "unmute":
            self.muted = False
        elif action == "slow":
            self.slow_s = float_arg(action, args, 0)
        else:
            raise ScriptError(f"{self.name}: unknown action {action!r}")


def float_arg(action: str, args, i: int) -> float:
    """Argument ``i`` of a script action as a number (ScriptError if it is not one)."""
    try:
        return float(args[i])
    except (IndexError, ValueError):
        raise ScriptError(f"{action} needs a number") from None


@dataclass(frozen=True)
class Step:
    at_s: float
    action: str
    args: tuple[str, ...]


def parse_script(text: str) -> list[Step]:
    """``"0.5 weight 1500; 2 unplug"`` → steps sorted by time."""
    steps = []
    for raw in text.replace("\n", ";").split(";"):
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        try:
            at = float(words[0])
        except ValueError:
            raise ScriptError(f"a script step starts with its time in seconds: {raw!r}") from None
        if at < 0 or len(words) < 2:
            raise ScriptError(f"a script step is 'SECONDS ACTION [ARGS]': {raw!r}")
        steps.append(Step(at, words[1], tuple(words[2:])))
    return sorted(steps, key=lambda s: s.at_s)


def run_script(device: ScriptedDevice, steps: list[Step], *, start: float | None = None,
               stop=None) -> None:
    """Run the steps at their times (monotonic seconds after ``start``)."""
    t0 = time.monotonic() if start is None else start
    for step in steps:
        while True:
            left = t0 + step.at_s - time.monotonic()
            if left <= 0:
                break
            if stop is not None and stop.wait(min(left, 0.1)):
                return
            if stop is None:
                time.sleep(min(left, 0.1))
        device.do(step.action, *step.args)


def module(name: str):
    """The simulator module for a device name."""
    if name not in SIMULATORS:
        raise ValueError(f"no simulator {name!r}; have {', '.join(SIMULATORS)}")
    return importlib.import_module(f"lanecore.drivers.sim.{name}")
