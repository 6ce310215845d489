"""Terminal UI of the ``lanecore`` command: progress of long work and the live view of
``lanecore demo --live``, drawn with rich (https://rich.readthedocs.io).

Two kinds of output, chosen by :func:`is_terminal` on the stream written to:

* a terminal: rich draws a progress bar (:class:`RowProgress`) or a live view of the
  store redrawn :data:`LIVE_REFRESH_HZ` times a second (:func:`watch_store`);
* anything else (a pipe, a file, a CI log, a test): a few plain lines, one fact a line,
  no carriage returns and no colour, so logs and tests can read them:

  - progress: ``LABEL: 50,000 rows 41.7% in 0.2 s (230,203 rows/s)`` when another
    quarter of the work is done (or every :data:`PLAIN_EVERY_S` s when the total is not
    known), and the same line for the end;
  - live view: :func:`store_line` every :data:`PLAIN_LIVE_EVERY_S` s and once at the end.

The live view is drawn from a plain snapshot dict (:func:`render_store`), so what it
shows can be checked by rendering a snapshot to ``rich.console.Console(record=True)``.
The snapshot's keys (every one optional)::

    {"seconds": 12.5,                                   # since the shoppers started
     "shoppers": {"done": 10, "total": 60},
     "lanes": {"EXIT-A1": {"exits": 4, "ok": 3, "over": 1, "short": 0, "eas": 0,
                           "last": "over", "last_order": "A-000012"}},
     "journeys": {"handheld": {"done": 3, "planned": 20}},
     "payments": {"card": {"count": 3, "amount_minor": 12345}},
     "counts": {"orders": 9, "paid": 8, "exited": 7, "held": 1, "payments_failed": 0,
                "journey_errors": 0},
     "alarms": {"total": 2, "weight_over": 1, "weight_short": 0, "eas": 1,
                "audits": 1, "audit_items": 3},
     "recent": ["EXIT-A1 A-000012 over"]}               # latest alarms, newest last

This module is the gateway layer's: the core never draws anything; it reports
progress through plain callbacks (``progress(done, part, total)``) that the command
line hands a :class:`RowProgress`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (BarColumn, Progress, ProgressColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn)
from rich.table import Column, Table
from rich.text import Text

#: Plain progress lines with no known total: at most one every so many seconds.
PLAIN_EVERY_S = 10.0
#: Plain progress lines with a known total: one each time another quarter is done.
PLAIN_STEP = 0.25
#: Redraws of the live view a second on a terminal.
LIVE_REFRESH_HZ = 5
#: Seconds between two plain summary lines of the live view off a terminal.
PLAIN_LIVE_EVERY_S = 2.0


def is_terminal(stream) -> bool:
    """True when ``stream`` is an interactive terminal that can redraw in place
    (``isatty()`` and ``TERM`` is not ``dumb``)."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):        # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


# ----------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------

class _RateColumn(ProgressColumn):
    """Rows (or whatever the unit is) per second so far: ``23,414 rows/s``."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.fields.get("done", 0)
        unit = task.fields.get("unit", "rows")
        rate = done / elapsed if elapsed > 0 else 0.0
        return Text(f"{done:,} {unit} ({rate:,.0f} {unit}/s)", style="progress.data.speed")


class RowProgress:
    """Progress of work counted in rows, on ``stream`` (stderr by default).

    Use as a context manager and call it as a progress callback::

        with RowProgress("importing cat.csv") as progress:
            cat.import_csv(path, progress=progress)     # progress(done, part, total)

    ``done`` is the rows so far; ``part`` of ``total`` is how far along the work is
    (rows of rows, or bytes of a file), when known. On a terminal a rich progress bar;
    elsewhere plain lines (see the module docstring). Leaving the block ends it with
    a last line (a last plain line, or the bar at its final state).
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, unit: str = "rows",
                 terminal: bool | None = None) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.done = 0
        self.part: float | None = None
        self.total: float | None = None
        self.t0 = time.monotonic()
        self._next_mark = PLAIN_STEP         # the next fraction that earns a plain line
        self._last_line = float("-inf")      # when the last plain line was written
        self._finished = False
        self._bar: Progress | None = None
        self._task = None

    # -- the callback ---------------------------------------------------------------
    def __call__(self, done: int, part: float | None = None,
                 total: float | None = None) -> None:
        self.done = int(done)
        if part is not None and total:
            self.part, self.total = float(part), float(total)
        if self._bar is not None:
            self._bar.update(self._task, done=self.done, completed=self.part or 0,
                             total=self.total)
            return
        if not self.terminal:
            self._plain_tick()

    # -- start and end --------------------------------------------------------------
    def __enter__(self) -> RowProgress:
        self.t0 = time.monotonic()
        if self.terminal:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24),
                TaskProgressColumn(), _RateColumn(table_column=Column(no_wrap=True)),
                TimeElapsedColumn(),
                console=Console(file=self.stream, force_terminal=True),
                refresh_per_second=LIVE_REFRESH_HZ)
            self._task = self._bar.add_task(self.label, total=None, done=0, unit=self.unit)
            self._bar.start()
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        self.finish(ok=exc_type is None)

    def finish(self, *, ok: bool = True) -> None:
        """End the progress: the bar stops at its last state, or one last plain line
        (not after an error: the error says what happened)."""
        if self._finished:
            return
        self._finished = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif ok:
            self._write(self.line())

    # -- plain lines ----------------------------------------------------------------
    def line(self) -> str:
        """The plain progress line for now: ``LABEL: N rows P% in S s (R rows/s)``."""
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = f" {100.0 * self.part / self.total:.1f}%" if self.total else ""
        return (f"{self.label}: {self.done:,} {self.unit}{pct} in {elapsed:.1f} s "
                f"({rate:,.0f} {self.unit}/s)")

    def _plain_tick(self) -> None:
        now = time.monotonic()
        if self.total:
            fraction = self.part / self.total
            if fraction < self._next_mark or fraction >= 1.0:    # the end has its own
                return
            while self._next_mark <= fraction:
                self._next_mark += PLAIN_STEP
        elif now - self._last_line < PLAIN_EVERY_S:
            return
        self._last_line = now
        self._write(self.line())

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------------
# The live view of the store
# ----------------------------------------------------------------------------------

def _money(minor) -> str:
    return f"{(minor or 0) / 100:,.2f}"


def render_store(snap: dict):
    """The live view of a store snapshot (keys in the module docstring) as a rich
    renderable: a title line, then four tables — exit lanes, shoppers by journey,
    payments per channel, alarms and audits — and the latest alarms."""
    shoppers = snap.get("shoppers", {})
    counts = snap.get("counts", {})
    title = Text.assemble(
        ("lanecore demo", "bold"),
        f"  {snap.get('seconds', 0.0):6.1f} s   shoppers "
        f"{shoppers.get('done', 0)}/{shoppers.get('total', 0)}   orders "
        f"{counts.get('orders', 0)}  paid {counts.get('paid', 0)}  exited "
        f"{counts.get('exited', 0)}  held {counts.get('held', 0)}")

    lanes = Table(title="exit lanes", title_justify="left", expand=False)
    for col in ("lane", "last verdict", "exits", "ok", "over", "short", "EAS"):
        lanes.add_column(col, justify="left" if col in ("lane", "last verdict") else "right")
    for name, lane in sorted(snap.get("lanes", {}).items()):
        last = lane.get("last") or "-"
        style = "green" if last == "ok" else ("red" if last != "-" else "")
        lanes.add_row(name, Text(last, style=style), *(str(lane.get(k, 0)) for k in
                                                       ("exits", "ok", "over", "short", "eas")))

    journeys = Table(title="shoppers by journey", title_justify="left")
    journeys.add_column("journey")
    journeys.add_column("done", justify="right")
    journeys.add_column("planned", justify="right")
    for name, j in sorted(snap.get("journeys", {}).items()):
        journeys.add_row(name, str(j.get("done", 0)), str(j.get("planned", 0)))

    payments = Table(title="payments", title_justify="left")
    payments.add_column("channel")
    payments.add_column("count", justify="right")
    payments.add_column("amount", justify="right")
    for name, p in sorted(snap.get("payments", {}).items()):
        payments.add_row(name, str(p.get("count", 0)), _money(p.get("amount_minor")))
    if counts.get("payments_failed"):
        payments.add_row(Text("failed", style="red"), str(counts["payments_failed"]), "")

    a = snap.get("alarms", {})
    alarms = Table(title="alarms and audits", title_justify="left")
    alarms.add_column("what")
    alarms.add_column("count", justify="right")
    for label, key in (("alarms", "total"), ("weight over", "weight_over"),
                       ("weight short", "weight_short"), ("EAS", "eas"),
                       ("audits", "audits"), ("items rescanned", "audit_items")):
        alarms.add_row(label, str(a.get(key, 0)))
    if counts.get("journey_errors"):
        alarms.add_row(Text("journey errors", style="red"), str(counts["journey_errors"]))

    grid = Table.grid(padding=(0, 2))
    grid.add_row(lanes, journeys)
    grid.add_row(payments, alarms)
    parts = [title, grid]
    recent = snap.get("recent") or []
    if recent:
        parts.append(Text("latest alarms:\n" + "\n".join(f"  {r}" for r in recent[-5:]),
                          style="yellow"))
    return Group(*parts)


def store_line(snap: dict) -> str:
    """One plain summary line of a store snapshot (the live view off a terminal)."""
    shoppers = snap.get("shoppers", {})
    c = snap.get("counts", {})
    a = snap.get("alarms", {})
    pays = sum(p.get("count", 0) for p in snap.get("payments", {}).values())
    return (f"[{snap.get('seconds', 0.0):5.1f} s] shoppers done {shoppers.get('done', 0)}/"
            f"{shoppers.get('total', 0)}  orders {c.get('orders', 0)}  paid "
            f"{c.get('paid', 0)}  exited {c.get('exited', 0)}  payments {pays}  "
            f"alarms {a.get('total', 0)}  audits {a.get('audits', 0)}")


def watch_store(snapshot: Callable[[], dict], stop: threading.Event, *,
                stream: TextIO | None = None, terminal: bool | None = None) -> None:
    """Show the store until ``stop`` is set, then once more (the final state).

    ``snapshot()`` returns the store's state as a plain dict (module docstring). On a
    terminal a rich live view redrawn :data:`LIVE_REFRESH_HZ` times a second; else a
    :func:`store_line` every :data:`PLAIN_LIVE_EVERY_S` seconds. Runs in the caller's
    thread (the demo gives it one of its own)."""
    stream = stream if stream is not None else sys.stdout
    if is_terminal(stream) if terminal is None else terminal:
        console = Console(file=stream, force_terminal=True)
        # auto_refresh off: this loop redraws at its own pace, from a fresh snapshot
        with Live(render_store(snapshot()), console=console, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while not stop.wait(1.0 / LIVE_REFRESH_HZ):
                live.update(render_store(snapshot()), refresh=True)
            live.update(render_store(snapshot()), refresh=True)
        return
    while not stop.wait(PLAIN_LIVE_EVERY_S):
        stream.write(store_line(snapshot()) + "\n")
        stream.flush()
    stream.write(store_line(snapshot()) + "\n")
    stream.flush()
