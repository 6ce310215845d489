"""A payment receipt on ESC/POS (drivers/receipt_print.py): the key bytes by hand,
then the whole stream decoded by the printer simulator's parser."""

from __future__ import annotations

import pytest

from lanecore.core.store.orderqr import Signer
from lanecore.core.pay.receipt import (Receipt, ReceiptError, ReceiptLine, ReceiptPayment,
                                       currency_symbol, format_money, receipt_qr_text,
                                       sign_receipt)
from lanecore.drivers import printer
from lanecore.drivers.receipt_print import render_escpos
from lanecore.drivers.sim.printer import EscPosParser

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

ESC_INIT, CODEPAGE_PC858, CUT = b"\x1b@", b"\x1bt\x13", b"\x1dV\x00"
BOLD_ON, BOLD_OFF = b"\x1bE\x01", b"\x1bE\x00"


def make(**kw) -> Receipt:
    base = dict(store_name="Lanecore Express", store_id="S001", terminal="T01",
                order_no="A1B2-0001", issued_at=1_718_022_896, currency="GBP",
                total_minor=1234,
                lines=(ReceiptLine("Tea 80 bags", 2, 317, 634),
                       ReceiptLine("Jam", 1, 600, 600)),
                payments=(ReceiptPayment("card", "card", 1234, "A1B2-0001-1",
                                         card="622848******1234"),))
    base.update(kw)
    return Receipt(**base)


def decode(data: bytes):
    events = []
    parser = EscPosParser(events.append, lambda n: None)
    parser.feed(data)
    assert not parser.unknown and not parser.buf
    return events


@pytest.fixture(scope="module")
def signer():
    return Signer.generate()


def test_key_bytes():
    data = render_escpos(make())
    assert data.startswith(ESC_INIT + CODEPAGE_PC858)
    total = ("TOTAL" + " " * 31 + "£12.34").encode("cp858")
    assert total == b"TOTAL" + b" " * 31 + b"\x9c12.34"        # £ is 0x9C in PC858
    assert BOLD_ON + total + b"\n" + BOLD_OFF in data
    assert data.endswith(b"\x1bd\x04" + CUT)
    assert b"\x1d(k" not in data                              # no QR unless signed
    # the header: centred, bold, double size, then back to normal
    assert (b"\x1ba\x01" + BOLD_ON + b"\x1d!\x11" + b"Lanecore Express\n"
            + b"\x1d!\x00" + BOLD_OFF + b"\x1ba\x00") in data


def test_decoded_by_the_simulator(signer):
    r = make()
    signed = sign_receipt(r, signer)
    events = decode(render_escpos(r, signed))
    lines = [e for e in events if e[0] == "line"]
    assert lines[0][1] == "Lanecore Express" and lines[0][2].width == 2
    assert all(len(text) <= 42 for _, text, mode in lines if mode.width == 1)
    bold = [text for _, text, mode in lines if mode.bold and mode.width == 1]
    assert bold == ["TOTAL" + " " * 31 + "£12.34"]
    assert "  2 x £3.17" in [e[1] for e in lines]
    assert f"Verify{' ' * 24}{signed['sig'][:12]}" in [e[1] for e in lines]
    qrs = [e for e in events if e[0] == "qr"]
    assert len(qrs) == 1
    assert qrs[0][1] == receipt_qr_text(signed).encode("ascii")
    assert qrs[0][2] == {"model": 2, "module": 4, "ec": "M"}
    assert events[-2:] == [("feed", 4), ("cut", False)]


def test_58mm_paper_and_characters_pc858_lacks(signer):
    r = make(store_name="联华超市 Lianhua", currency="CNY",
             lines=(ReceiptLine("有机鸡蛋 Organic eggs twelve large", 2, 317, 634),
                    ReceiptLine("Jam", 1, 600, 600)))
    data = render_escpos(r, sign_receipt(r, signer), width=32)
    lines = [e for e in decode(data) if e[0] == "line"]
    assert lines[0][1] == "???? Lianhua"                    # one ? per character
    assert all(len(text) <= 32 for _, text, mode in lines if mode.width == 1)
    assert "¥12.34" in lines[[m.bold for _, _, m in lines].index(True, 1)][1]
    assert b"\xbe12.34" in data                             # ¥ is 0xBE in PC858


def test_refused_arguments(signer):
    with pytest.raises(ReceiptError) as info:
        render_escpos(make(), width=12)
    assert info.value.code == "BAD_REQUEST"
    with pytest.raises(ReceiptError) as info:
        render_escpos(make(), sign_receipt(make(order_no="OTHER"), signer))
    assert info.value.code == "BAD_RECEIPT"


@pytest.mark.parametrize("minor,currency,exponent", [
    (0, "JPY", 0), (1234567, "JPY", 0), (-120500, "GBP", 2), (5, "EUR", 2),
    (1250, "KWD", 3), (99, "CNY", 2)])
def test_money_as_the_printer_writes_it(minor, currency, exponent):
    assert format_money(minor, currency, exponent) == printer.format_money(
        minor, currency_symbol(currency), exponent)
