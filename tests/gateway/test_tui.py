"""The terminal UI (gateway/tui.py): the live view of `lanecore demo --live` rendered
from a snapshot, the demo store's snapshot itself, its plain summary line, and the
progress of long work — a bar on a terminal, a few plain lines elsewhere."""

from __future__ import annotations

import io
import re
import threading
import time
from collections import Counter

import pytest
from rich.console import Console

from lanecore.gateway import tui
from lanecore.gateway.store import EXIT_LANES, Store

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SNAP = {
    "seconds": 12.5,
    "shoppers": {"done": 17, "total": 60},
    "lanes": {"EXIT-A1": {"exits": 9, "ok": 7, "over": 2, "short": 0, "eas": 1,
                          "last": "over", "last_order": "HH-01-0009"},
              "EXIT-A2": {"exits": 6, "ok": 5, "over": 0, "short": 1, "eas": 0,
                          "last": "ok", "last_order": "HH-02-0004"}},
    "journeys": {"handheld": {"done": 8, "planned": 21},
                 "kiosk": {"done": 4, "planned": 13},
                 "unattended": {"done": 2, "planned": 6}},
    "payments": {"wechat": {"count": 5, "amount_minor": 12345},
                 "cash": {"count": 3, "amount_minor": 4070}},
    "counts": {"orders": 16, "paid": 15, "exited": 13, "held": 1, "payments_failed": 0,
               "journey_errors": 0},
    "alarms": {"total": 3, "weight_over": 2, "weight_short": 1, "eas": 1, "audits": 4,
               "audit_items": 11},
    "recent": ["EXIT-A1 HH-01-0009 over", "EXIT-A2 HH-02-0003 short"],
}


def render(snap: dict, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(tui.render_store(snap))
    return console.export_text()


def row(text: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first`` (two tables stand side by
    side, so the row may start mid-line)."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if first in cells:
            return cells[cells.index(first):]
    raise AssertionError(f"no row {first!r} in\n{text}")


# -- the live view ---------------------------------------------------------------------

def test_the_live_view_shows_lanes_journeys_payments_and_alarms():
    text = render(SNAP)
    for title in ("exit lanes", "shoppers by journey", "payments", "alarms and audits"):
        assert title in text, title
    assert "12.5 s" in text and "shoppers 17/60" in text and "held 1" in text
    # each lane: its last verdict, then exits, ok, over, short, EAS
    assert row(text, "EXIT-A1")[:7] == ["EXIT-A1", "over", "9", "7", "2", "0", "1"]
    assert row(text, "EXIT-A2")[:7] == ["EXIT-A2", "ok", "6", "5", "0", "1", "0"]
    # shoppers by journey: done of planned
    assert row(text, "handheld")[:3] == ["handheld", "8", "21"]
    assert row(text, "unattended")[:3] == ["unattended", "2", "6"]
    # payments per channel, amounts in major units
    assert row(text, "wechat")[:3] == ["wechat", "5", "123.45"]
    assert row(text, "cash")[:3] == ["cash", "3", "40.70"]
    # alarms and audits
    assert row(text, "weight over")[:2] == ["weight over", "2"]
    assert row(text, "audits")[:2] == ["audits", "4"]
    assert row(text, "items rescanned")[:2] == ["items rescanned", "11"]
    assert "EXIT-A2 HH-02-0003 short" in text


def test_the_live_view_follows_the_snapshot():
    """Another snapshot, another view: nothing in it is fixed text."""
    snap = {**SNAP, "lanes": {"EXIT-B9": {"exits": 1, "ok": 0, "over": 0, "short": 1,
                                          "eas": 0, "last": "short"}},
            "payments": {"card": {"count": 42, "amount_minor": 1_000_000}},
            "journeys": {"pos": {"done": 3, "planned": 3}}, "recent": []}
    text = render(snap)
    assert row(text, "EXIT-B9")[:3] == ["EXIT-B9", "short", "1"]
    assert row(text, "card")[:3] == ["card", "42", "10,000.00"]
    assert row(text, "pos")[:3] == ["pos", "3", "3"]
    assert "EXIT-A1" not in text and "wechat" not in text and "handheld" not in text
    assert "latest alarms" not in text


def test_a_failed_payment_or_journey_shows_in_red_rows():
    snap = {**SNAP, "counts": {**SNAP["counts"], "payments_failed": 2, "journey_errors": 1}}
    text = render(snap)
    assert row(text, "failed")[:2] == ["failed", "2"]
    assert row(text, "journey errors")[:2] == ["journey errors", "1"]
    assert "journey errors" not in render(SNAP)


def test_an_empty_snapshot_renders():
    text = render({})
    assert "exit lanes" in text and "shoppers 0/0" in text


def test_the_plain_line_sums_up_the_snapshot():
    line = tui.store_line(SNAP)
    assert "\n" not in line and "\r" not in line
    assert "shoppers done 17/60" in line and "orders 16" in line and "paid 15" in line
    assert "exited 13" in line and "payments 8" in line and "alarms 3" in line
    assert "audits 4" in line


def test_watch_store_off_a_terminal_prints_plain_lines_and_a_last_one():
    out = io.StringIO()
    stop = threading.Event()
    stop.set()                                  # already over: just the last line
    tui.watch_store(lambda: SNAP, stop, stream=out)
    assert out.getvalue() == tui.store_line(SNAP) + "\n"


def test_watch_store_on_a_terminal_draws_the_live_view():
    out = io.StringIO()
    stop = threading.Event()
    stop.set()
    tui.watch_store(lambda: SNAP, stop, stream=out, terminal=True)
    text = ANSI.sub("", out.getvalue())
    assert "exit lanes" in text and "EXIT-A1" in text and "wechat" in text
    assert "\x1b[" in out.getvalue()            # drawn with escapes: a terminal's view


def test_live_refresh_is_several_times_a_second():
    assert tui.LIVE_REFRESH_HZ >= 4


# -- the demo store's snapshot -----------------------------------------------------------

def test_the_store_snapshot_counts_lanes_journeys_payments_and_alarms(tmp_path):
    store = Store(tmp_path / "demo")              # nothing started: only its tally
    t = store.tally
    lane_a, lane_b = EXIT_LANES
    t.add(done=3, journey_handheld=2, journey_kiosk=1, orders=3, paid=3, exited=2,
          held=1, alarms=2, alarm_weight_over=1, alarm_eas=1, audits=1, audit_items=4,
          journey_errors=1)
    t.payment("wechat", 1000)
    t.payment("wechat", 250)
    t.payment("cash", 700)
    t.event(shopper=0, order_no="O-1", lane=lane_a, verdict="ok", eas=False)
    t.event(shopper=1, order_no="O-2", lane=lane_a, verdict="over", eas=True)
    t.event(shopper=2, order_no="O-3", lane=lane_b, verdict="ok", eas=False)
    t.event(shopper=9, journey="pos", error="boom")              # not a lane's
    snap = store.snapshot(time.perf_counter(), Counter(handheld=5, kiosk=2, pos=1))

    assert snap["shoppers"] == {"done": 3, "total": store.spec.shoppers}
    assert snap["lanes"][lane_a] == {"exits": 2, "ok": 1, "over": 1, "short": 0, "eas": 1,
                                     "last": "eas", "last_order": "O-2"}
    assert snap["lanes"][lane_b]["exits"] == 1 and snap["lanes"][lane_b]["last"] == "ok"
    assert snap["journeys"] == {"handheld": {"done": 2, "planned": 5},
                                "kiosk": {"done": 1, "planned": 2},
                                "pos": {"done": 0, "planned": 1}}
    assert snap["payments"] == {"wechat": {"count": 2, "amount_minor": 1250},
                                "cash": {"count": 1, "amount_minor": 700}}
    assert snap["counts"]["journey_errors"] == 1 and snap["counts"]["held"] == 1
    assert snap["alarms"]["total"] == 2 and snap["alarms"]["eas"] == 1
    assert snap["recent"] == [f"{lane_a} O-2 eas"]
    # and the view draws it
    text = render(snap)
    assert row(text, lane_a)[:3] == [lane_a, "eas", "2"]
    assert row(text, "wechat")[:3] == ["wechat", "2", "12.50"]


def test_a_store_with_no_exits_yet_lists_its_lanes(tmp_path):
    snap = Store(tmp_path / "demo").snapshot(time.perf_counter())
    assert set(snap["lanes"]) == set(EXIT_LANES)
    assert all(lane["exits"] == 0 and lane["last"] is None for lane in snap["lanes"].values())
    assert snap["journeys"] == {} and snap["payments"] == {}


# -- progress ------------------------------------------------------------------------------

def test_plain_progress_prints_a_line_per_quarter_and_a_last_one():
    out = io.StringIO()
    with tui.RowProgress("importing x.csv", stream=out) as progress:
        for done in range(10_000, 200_001, 10_000):       # 20 calls, 5% apart
            progress(done, done, 200_000)
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split(" in ")[0] for line in lines] == [
        "50,000 rows 25.0%", "100,000 rows 50.0%", "150,000 rows 75.0%",
        "200,000 rows 100.0%"]
    for line in lines:
        assert re.fullmatch(r"importing x\.csv: [\d,]+ rows [\d.]+% in [\d.]+ s "
                            r"\([\d,]+ rows/s\)", line), line


def test_plain_progress_with_a_jump_prints_one_line_not_several():
    out = io.StringIO()
    with tui.RowProgress("writing y.csv", stream=out) as progress:
        progress(50_000, 50_000, 60_000)        # 83%: past three quarters at once
        progress(60_000, 60_000, 60_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "50,000 rows 83.3%" in lines[0] and "100.0%" in lines[1]


def test_plain_progress_without_a_total_counts_rows():
    out = io.StringIO()
    with tui.RowProgress("reading", stream=out, unit="lines") as progress:
        progress(7)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("reading: 7 lines in ") and lines[-1].endswith("lines/s)")
    assert "%" not in lines[-1]


def test_no_last_line_after_an_error():
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with tui.RowProgress("importing z.csv", stream=out) as progress:
            progress(10, 10, 1000)
            raise RuntimeError("the import failed")
    assert out.getvalue() == ""


def test_progress_on_a_terminal_is_a_bar_whose_frames_are_not_garbled():
    out = io.StringIO()
    with tui.RowProgress("importing big.csv", stream=out, terminal=True) as progress:
        for done in (50_000, 100_000, 123_414):
            progress(done, done, 123_414)
    raw = out.getvalue()
    assert "\x1b[" in raw                               # drawn, not printed
    frames = [f for f in re.split(r"[\r\n]", ANSI.sub("", raw)) if f.strip()]
    assert frames, raw
    for frame in frames:                                # each redraw one whole line
        assert frame.count("rows/s") <= 1, repr(frame)
    assert "123,414 rows (" in frames[-1] and "100%" in frames[-1], frames[-1]


def test_is_terminal():
    assert not tui.is_terminal(io.StringIO())
    assert not tui.is_terminal(object())
