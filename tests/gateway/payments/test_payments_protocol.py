"""The payment gateway against docs/protocol.md on the points an independent client
found unclear (issue 14, item 6): amount and currency codes, a missing payment code,
the `hello` fields, and the ready line on stderr."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from lanecore.gateway.payments.gateway import PaymentGateway

from payfix import WECHAT_CODE, write_config
from repo import REPO

DOC = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = DOC.index(title)
    return DOC[start:DOC.index("\n### ", start + 1)]


@pytest.fixture
def gw(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"cash": {"kind": "cash", "priority": 1, "methods": ["cash"],
                              "currency": "GBP"}})
    g = PaymentGateway(d)
    yield g
    g.ledger.close()


def call(gw, op, rid, **fields) -> dict:
    return gw.handle({"op": op, "id": rid, **fields}, client="till-1")


def code_of(reply: dict) -> str:
    assert reply["ok"] is False, reply
    return reply["error"]["code"]


@pytest.mark.parametrize("amount", [0, -1, 10 ** 12 + 1, "100", 1.5, True])
def test_a_bad_amount_is_bad_amount_in_every_op(gw, amount):
    """`BAD_AMOUNT`: not a positive integer of minor units (≤ 10^12), whatever the op."""
    base = dict(currency="GBP", terminal="T1", amount_minor=amount)
    assert code_of(call(gw, "pay.quote", "q", method="cash", **base)) == "BAD_AMOUNT"
    assert code_of(call(gw, "pay.charge", "c", order_no="A-1", method="cash",
                        cash={"tendered": {"100": 1}}, **base)) == "BAD_AMOUNT"
    assert code_of(call(gw, "pay.refund", "r", order_no="A-1", refund_ref="R1",
                        amount_minor=amount)) == "BAD_AMOUNT"
    assert code_of(call(gw, "pay.qr", "x", order_no="A-1", **base)) == "BAD_AMOUNT"


@pytest.mark.parametrize("currency", ["EURO", "EU", 826, "gbp", "G1P"])
def test_a_bad_currency_is_bad_currency(gw, currency):
    """`BAD_CURRENCY`: not three capital letters A–Z (the list of ISO 4217 codes is not
    checked: a well-formed code no channel takes is a routing reason, `CURRENCY`)."""
    r = call(gw, "pay.quote", "q", amount_minor=100, currency=currency, method="cash",
             terminal="T1")
    assert code_of(r) == "BAD_CURRENCY"
    r = call(gw, "pay.quote", "q2", amount_minor=100, currency="ZZZ", method="cash",
             terminal="T1")
    assert r["ok"] and r["channels"][0]["reason"] == "CURRENCY", r
    assert "three capital letters" in DOC and "not checked against" in DOC


def test_a_missing_payment_code_is_missing_field_on_quote_and_charge(gw):
    base = dict(amount_minor=100, currency="GBP", method="auth_code", terminal="T1")
    assert code_of(call(gw, "pay.quote", "q", **base)) == "MISSING_FIELD"
    assert code_of(call(gw, "pay.charge", "c", order_no="A-2", **base)) == "MISSING_FIELD"
    for bad in ("abc", "12 34", "١٢٣"):
        assert code_of(call(gw, "pay.quote", f"q{bad}", auth_code=bad, **base)) \
            == "BAD_AUTH_CODE"
        assert code_of(call(gw, "pay.charge", f"c{bad}", order_no="A-3", auth_code=bad,
                            **base)) == "BAD_AUTH_CODE"
    ok = call(gw, "pay.quote", "q-ok", auth_code=WECHAT_CODE, **base)
    assert ok["ok"], ok


def test_hello_fields_are_the_documented_ones(gw):
    r = call(gw, "hello", "h")
    assert r["ok"] and r["auth"] == "off"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", r["receipt_key"])
    fields = set(r) - {"id", "ok"}
    assert fields == {"protocol", "server", "capabilities", "auth", "receipt_key",
                      "channels"}, fields
    doc = _section("### `hello` (payments)")
    for name in fields | {"terminal"}:
        assert f"`{name}`" in doc, name


@pytest.mark.parametrize("kind", ["payments", "coupons"])
def test_gateways_say_when_they_are_ready(tmp_path, kind):
    """The documented ready signal: one line `lanecore KIND serving on ADDRESS …` on
    stderr once the socket is bound."""
    d = tmp_path / kind
    d.mkdir()
    endpoint = f"ipc://{tmp_path}/{kind}.ipc"
    log = tmp_path / f"{kind}.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", kind,
                                 "--dev-open", "--bind", endpoint, "--data-dir", str(d)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        line = f"lanecore {kind} serving on {endpoint}".encode()
        while line not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(20)
    assert f"lanecore {kind} serving on" in DOC
