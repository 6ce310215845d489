"""ESC/POS receipt printers: command bytes, status decoding, the simulator's parser,
and the driver end to end against the simulator on a real pty (drivers/printer.py,
drivers/sim/printer.py)."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from lanecore.drivers.link import GARBAGE, NO_ANSWER, PORT_LOST, DeviceFault
from lanecore.drivers.printer import (COVER_OPEN, PAPER_OUT, PRINTER_ERROR, EscPos,
                                      PrinterDriver, PrinterError, PrinterStatus, Receipt,
                                      StatusByte, StatusProtocol, decode_status,
                                      encode_text, format_money, is_status_byte,
                                      status_query)
from lanecore.drivers.sim.printer import EscPosParser, Mode, PrinterSim

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free


def b(p: EscPos) -> bytes:
    return p.to_bytes()


# -- commands ------------------------------------------------------------------------------

@pytest.mark.parametrize("built,wire", [
    (EscPos().init(), b"\x1b\x40"),
    (EscPos().codepage(), b"\x1b\x74\x13"),
    (EscPos().codepage(0), b"\x1b\x74\x00"),
    (EscPos().bold(), b"\x1b\x45\x01"),
    (EscPos().bold(False), b"\x1b\x45\x00"),
    (EscPos().size(), b"\x1d\x21\x00"),
    (EscPos().size(2, 2), b"\x1d\x21\x11"),
    (EscPos().size(2, 1), b"\x1d\x21\x10"),
    (EscPos().size(1, 2), b"\x1d\x21\x01"),
    (EscPos().size(8, 8), b"\x1d\x21\x77"),
    (EscPos().align("left"), b"\x1b\x61\x00"),
    (EscPos().align("center"), b"\x1b\x61\x01"),
    (EscPos().align("right"), b"\x1b\x61\x02"),
    (EscPos().feed(3), b"\x1b\x64\x03"),
    (EscPos().feed(0), b"\x1b\x64\x00"),
    (EscPos().cut(), b"\x1d\x56\x00"),
    (EscPos().cut(partial=True), b"\x1d\x56\x01"),
    (EscPos().line("Milk"), b"Milk\x0a"),
    (EscPos().text("A").line(), b"A\x0a"),
    (EscPos().init().bold().line("X").bold(False), b"\x1b@\x1bE\x01X\n\x1bE\x00"),
])
def test_command_bytes(built, wire):
    assert b(built) == wire


@pytest.mark.parametrize("call", [lambda: EscPos().size(0, 1), lambda: EscPos().size(1, 9),
                                  lambda: EscPos().align("justify"),
                                  lambda: EscPos().feed(256), lambda: EscPos().feed(-1)])
def test_bad_command_arguments(call):
    with pytest.raises(PrinterError):
        call()


def test_status_queries():
    assert [status_query(n) for n in (1, 2, 3, 4)] == [
        b"\x10\x04\x01", b"\x10\x04\x02", b"\x10\x04\x03", b"\x10\x04\x04"]
    with pytest.raises(ValueError):
        status_query(5)


def test_qr_one_byte_exact():
    assert b(EscPos().qr("A")) == (
        b"\x1d\x28\x6b\x04\x00\x31\x41\x32\x00"      # fn 165: model 2
        b"\x1d\x28\x6b\x03\x00\x31\x43\x06"          # fn 167: module 6 dots
        b"\x1d\x28\x6b\x03\x00\x31\x45\x31"          # fn 169: error correction M
        b"\x1d\x28\x6b\x04\x00\x31\x50\x30\x41"      # fn 180: store 1 byte (pL = 1 + 3)
        b"\x1d\x28\x6b\x03\x00\x31\x51\x30")         # fn 181: print


@pytest.mark.parametrize("n,pl,ph", [(1, 0x04, 0x00), (252, 0xFF, 0x00), (253, 0x00, 0x01),
                                     (255, 0x02, 0x01), (256, 0x03, 0x01),
                                     (2000, 0xD3, 0x07)])
def test_qr_store_length_bytes(n, pl, ph):
    payload = bytes(range(256)) * 8
    payload = payload[:n]
    wire = b(EscPos().qr(payload))
    store = b"\x1d\x28\x6b" + bytes((pl, ph)) + b"\x31\x50\x30" + payload
    assert store in wire
    assert (pl | ph << 8) == n + 3
    assert wire.endswith(b"\x1d(k\x03\x001Q0")
    assert len(wire) == 9 + 8 + 8 + (8 + n) + 8


@pytest.mark.parametrize("ec,byte,limit", [("L", 0x30, 2953), ("M", 0x31, 2331),
                                           ("Q", 0x32, 1663), ("H", 0x33, 1273)])
def test_qr_error_correction_and_capacity(ec, byte, limit):
    wire = b(EscPos().qr(b"x" * limit, ec=ec, module=3, model=1))
    assert b"\x1d(k\x03\x001E" + bytes((byte,)) in wire
    assert b"\x1d(k\x03\x001C\x03" in wire and b"\x1d(k\x04\x001A1\x00" in wire
    with pytest.raises(PrinterError) as err:
        EscPos().qr(b"x" * (limit + 1), ec=ec)
    assert err.value.code == "QR_TOO_LONG"


@pytest.mark.parametrize("kw", [{"ec": "X"}, {"model": 3}, {"module": 0}, {"module": 17}])
def test_qr_bad_options(kw):
    with pytest.raises(PrinterError):
        EscPos().qr("A", **kw)
    with pytest.raises(PrinterError):
        EscPos().qr(b"")


def test_qr_str_payload_is_utf8():
    assert b"\x1d(k\x05\x001P0\xc2\xa3" in b(EscPos().qr("£"))


def test_text_in_pc858():
    assert encode_text("£1.29 €5 ¥3") == b"\x9c1.29 \xd55 \xbe3"
    assert encode_text("Caf\u00e9 \u00fc") == b"Caf\x82 \x81"
    assert encode_text("\u725b\u5976") == b"??"            # not in PC858
    # data can never become a command
    assert encode_text("A\x1dV\x00B\x1b@\x10\x04\x01\x7f\rC\tD") == b"A?V?B?@?????C?D"
    assert encode_text("two\nlines") == b"two\nlines"


@pytest.mark.parametrize("minor,kw,text", [
    (0, {}, "£0.00"), (5, {}, "£0.05"), (129, {}, "£1.29"), (-1205, {}, "-£12.05"),
    (123456789, {}, "£1,234,567.89"), (1200, {"symbol": "¥", "exponent": 0}, "¥1,200"),
    (999, {"symbol": "€", "exponent": 2}, "€9.99"), (7, {"symbol": "", "exponent": 3}, "0.007"),
])
def test_format_money(minor, kw, text):
    assert format_money(minor, **kw) == text


@pytest.mark.parametrize("bad", [1.5, "129", True, None])
def test_money_is_integer_minor_units(bad):
    with pytest.raises(PrinterError) as err:
        format_money(bad)
    assert err.value.code == "BAD_AMOUNT"


def test_receipt_bytes_exact():
    r = Receipt(width=20).header("Shop").item("Milk", 129).item("Bread", 500, qty=2) \
        .total("TOTAL", 629).line("Thank you")
    assert r.to_bytes() == (
        b"\x1b@\x1bt\x13"
        b"\x1ba\x01\x1bE\x01\x1d!\x11Shop\n\x1d!\x00\x1bE\x00\x1ba\x00"
        b"Milk           \x9c1.29\n"
        b"2 x Bread      \x9c5.00\n"
        b"\x1bE\x01TOTAL          \x9c6.29\n\x1bE\x00"
        b"Thank you\n"
        b"\x1bd\x04\x1dV\x00")
    assert r.pair("A very long product name", "£1.00") == "A very long pr" + " " + "£1.00"
    assert r.to_bytes(feed_lines=1, cut=False).endswith(b"Thank you\n\x1bd\x01")


# -- status ---------------------------------------------------------------------------------

def test_status_byte_fixed_bits():
    assert is_status_byte(0x12) and is_status_byte(0x7E) and is_status_byte(0x16)
    for not_status in (0x00, 0x10, 0x02, 0x13, 0x92, 0x37, 0xFF, 0x0A):
        assert not is_status_byte(not_status)


@pytest.mark.parametrize("raw,want,fault", [
    ((0x12, 0x12, 0x12, 0x12), {"online": True}, None),
    ((0x1A, 0x32, 0x12, 0x7E), {"paper_out": True, "online": False,
                                "paper_near_end": True}, PAPER_OUT),
    ((0x12, 0x12, 0x12, 0x72), {"paper_out": True}, PAPER_OUT),      # sensor only
    ((0x1A, 0x16, 0x12, 0x12), {"cover_open": True, "online": False}, COVER_OPEN),
    ((0x1A, 0x36, 0x12, 0x7E), {"cover_open": True, "paper_out": True, "online": False,
                                "paper_near_end": True}, PAPER_OUT),
    ((0x12, 0x12, 0x12, 0x1E), {"paper_near_end": True}, None),
    ((0x12, 0x1A, 0x12, 0x12), {"feed_button": True}, None),
    ((0x1A, 0x52, 0x1A, 0x12), {"cutter_error": True, "online": False}, PRINTER_ERROR),
    ((0x1A, 0x52, 0x32, 0x12), {"unrecoverable_error": True}, PRINTER_ERROR),
    ((0x12, 0x12, 0x52, 0x12), {"auto_recoverable_error": True}, None),
    ((0x1A, 0x12, 0x12, 0x12), {"online": False}, PRINTER_ERROR),
])
def test_decode_every_status(raw, want, fault):
    st = decode_status(*raw, at=4.0)
    for k, v in want.items():
        assert getattr(st, k) == v, k
    flags = ("cover_open", "paper_out", "paper_near_end", "feed_button", "cutter_error",
             "unrecoverable_error", "auto_recoverable_error")
    assert all(not getattr(st, f) for f in flags if f not in want)
    assert (st.fault().code if st.fault() else None) == fault
    assert st.ready == (fault is None)
    assert st.to_dict()["raw"] == bytes(raw).hex()


def test_status_protocol_and_garbage():
    p = StatusProtocol()
    assert p.feed(b"\x12\x16", at=1.0) == [StatusByte(0x12, 1.0), StatusByte(0x16, 1.0)]
    out = p.feed(b"\xff\x00\x12\x37\x37")
    assert [type(e).__name__ for e in out] == ["DeviceFault", "StatusByte", "DeviceFault"]
    assert out[0].code == GARBAGE and "2 bytes" in out[0].message


# -- the simulator's ESC/POS parser ---------------------------------------------------------------

def parse(stream: bytes, chunks=None):
    events, statuses = [], []
    p = EscPosParser(events.append, statuses.append)
    if chunks is None:
        p.feed(stream)
    else:
        for c in chunks:
            p.feed(c)
    return events, statuses, p


def test_parser_recovers_a_receipt():
    r = Receipt().header("Lanecore £ Shop").item("Milk", 129).total("TOTAL", 129) \
        .qr(bytes(range(256)))
    events, statuses, p = parse(r.to_bytes() + status_query(2))
    lines = [e[1] for e in events if e[0] == "line"]
    assert lines[0] == "Lanecore £ Shop" and lines[1].startswith("Milk")
    assert events[0][2] == Mode(bold=True, width=2, height=2, align=1, codepage=19)
    assert [e for e in events if e[0] == "qr"] == [
        ("qr", bytes(range(256)), {"model": 2, "module": 6, "ec": "M"})]
    assert events[-2:] == [("feed", 4), ("cut", False)]
    assert statuses == [2] and p.unknown == [] and not p.buf


def test_parser_split_at_every_byte_gives_the_same_events():
    stream = (EscPos().init().codepage().bold().line("Hi €").bold(False).qr(b"\x10\x04\x01")
              .feed(2).cut(partial=True).to_bytes() + status_query(4) + b"tail\n")
    want = parse(stream)[:2]
    assert [e[0] for e in want[0]] == ["line", "qr", "feed", "cut", "line"]
    for cut in range(len(stream) + 1):
        assert parse(stream, [stream[:cut], stream[cut:]])[:2] == want, cut


def test_parser_other_commands():
    events, _, p = parse(b"\x1b!\x08\x1b-\x01A\x1dV\x42\x05\x1dVA\x00\x1d\x42\x01"
                         b"\x1d(L\x02\x00ab\x1b~B\r\n")
    assert events == [("line", "A", Mode()), ("cut", True), ("cut", False),
                      ("line", "B", Mode())]
    assert p.unknown == [b"\x1b~"]


# -- end to end ---------------------------------------------------------------------------------

class Collector:
    def __init__(self) -> None:
        self.events: list = []
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def fault_codes(self):
        with self.lock:
            return [e.code for e in self.events if isinstance(e, DeviceFault)]


@pytest.fixture
def printer():
    got = Collector()
    with PrinterSim() as sim, PrinterDriver(sim.path, on_event=got,
                                            backoff_max_s=0.2) as drv:
        assert drv.wait_connected(5)
        yield sim, drv, got


def wait_until(pred, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_round_trip_text_and_qr(printer):
    sim, drv, got = printer
    payload = bytes(range(256)) * 7 + b"order=A-17&total=629"       # 1,812 bytes
    r = Receipt().header("Lanecore Shop").item("Milk 1L", 129).item("Café crème", 250, 2) \
        .total("TOTAL", 629).line("Paid: €6.29 ¥").qr(payload, ec="L")
    res = drv.print_receipt(r)
    assert res.ok and res.fault is None and res.status.ready
    wait_until(lambda: sim.printed.cuts == 1)
    assert sim.printed.lines == [
        "Lanecore Shop",
        "Milk 1L" + " " * 30 + "£1.29",
        "2 x Café crème" + " " * 23 + "£2.50",
        "TOTAL" + " " * 32 + "£6.29",
        "Paid: €6.29 ¥",
        ""]                                                    # the LF after the QR
    assert sim.printed.qr_payloads == [payload]
    assert sim.status_queries == 8                             # 4 before, 4 after


def test_paper_out_is_a_fault_and_nothing_prints_until_ok(printer):
    sim, drv, got = printer
    sim.do("paperout")
    res = drv.print_receipt(Receipt().line("hello"))
    assert not res.ok and res.fault.code == PAPER_OUT and res.status.paper_out
    assert PAPER_OUT in got.fault_codes()
    assert sim.printed.lines == []
    sim.do("ok")
    assert drv.print_receipt(Receipt().line("hello")).ok
    wait_until(lambda: sim.printed.cuts == 1)
    assert sim.printed.lines == ["hello"]


def test_paper_running_out_during_the_receipt_is_reported(printer):
    sim, drv, got = printer
    original = sim.on_bytes

    def on_bytes(data):
        if b"\x1dV" in data:                   # the roll ends as the cut arrives
            sim.paper_out = True
        original(data)

    sim.on_bytes = on_bytes
    res = drv.print_receipt(Receipt().line("x"))
    assert not res.ok and res.fault.code == PAPER_OUT


def test_cover_open_and_near_end(printer):
    sim, drv, _ = printer
    sim.do("coveropen")
    assert drv.print_receipt(b"\x1b@x\n").fault.code == COVER_OPEN
    sim.do("ok")
    sim.do("nearend")
    st = drv.status()
    assert isinstance(st, PrinterStatus) and st.paper_near_end and st.ready
    assert sim.held == [] and sim.printed.lines == []        # it was never sent


def test_mute_is_no_answer_then_recovers_without_stale_bytes(printer):
    sim, drv, got = printer
    sim.slow_s = 0.5                             # answers come after the driver gave up
    t0 = time.monotonic()
    st = drv.status(timeout_s=0.2)
    assert isinstance(st, DeviceFault) and st.code == NO_ANSWER
    assert time.monotonic() - t0 < 1.0
    wait_until(lambda: NO_ANSWER in got.fault_codes())       # and the port is reopened
    wait_until(lambda: drv.link.opens == 2)
    sim.slow_s = 0.0
    time.sleep(0.8)                             # the late "ready" bytes arrive, unasked
    sim.do("paperout")
    st = drv.status()
    assert isinstance(st, PrinterStatus) and st.paper_out
    sim.do("mute")
    assert drv.status(timeout_s=0.2).code == NO_ANSWER
    sim.do("unmute")
    assert drv.status().ready is False          # still out of paper, and answering


def test_unplug_replug(printer):
    sim, drv, got = printer
    assert drv.status().ready
    sim.do("unplug")
    st = drv.status(timeout_s=0.5)
    assert isinstance(st, DeviceFault) and st.code in (PORT_LOST, NO_ANSWER)
    wait_until(lambda: PORT_LOST in got.fault_codes())
    sim.do("replug")
    wait_until(lambda: drv.link.opens == 2)
    assert drv.print_receipt(Receipt().line("after")).ok
    wait_until(lambda: sim.printed.cuts == 1)
    assert sim.printed.lines == ["after"]


def test_garbage_from_the_printer_is_reported_and_skipped(printer):
    sim, drv, got = printer
    sim.do("garbage", "ff00")
    wait_until(lambda: GARBAGE in got.fault_codes())
    assert drv.status().ready


def test_sim_echo_writes_json_lines():
    out = io.StringIO()
    with PrinterSim(echo=out) as sim, PrinterDriver(sim.path) as drv:
        assert drv.wait_connected(5)
        assert drv.print_receipt(Receipt().line("£1").qr("Q")).ok
        wait_until(lambda: sim.printed.cuts == 1)
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert rows == [{"line": "£1"}, {"qr": "Q", "model": 2, "module": 6, "ec": "M"},
                    {"line": ""}, {"feed": 4}, {"cut": "full"}]
