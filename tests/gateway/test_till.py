"""The till of seed 002 end to end: gateway/till.py's Register on a real pty with the
QR display simulator, the store database on disk, and for cards a real `lanecore
gateway payments` process with a bank provider simulator process.

The shopper's phone is played by :func:`shopper_phone_pays`: it reads the QR the
display showed, checks it, and tells the display simulator the payment went through.
The display simulator stands in for the wallet provider's notification: in a store
the wallet's server tells the display (over the display's own network link) and the
display reports PAY_RESULT down the cable; here ``sim.do("pay")`` is that notice.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time

import pytest

from lanecore.core.pay.emvqr import MerchantQr, build_mpm, decode_mpm
from lanecore.drivers.qrdisplay import (Cancel, CardRead, PaymentData, PayResult, QrPay,
                                        StatusRequest)
from lanecore.drivers.sim.qrdisplay import QrDisplaySim
from lanecore.gateway.net.client import Client
from lanecore.gateway.till import (TABLE, Register, TillError, mask_payer, qr_problems,
                                   run_commands)

from payfix import start_gateway, write_config

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

LINES = [("Apples", 2, 1000), {"name": "Milk", "qty": 1, "amount_minor": 234}]
TOKEN = "tok_4RkQ9zLm27Xa"


class ShopSim(QrDisplaySim):
    """The display simulator with two actions for these tests:

    * ``card-token TOKEN [nfc]`` — a reader that hands the register a network token
      (CARD_READ with ``tok_...``) and leaves the charging to the register; the
      simulator's own ``card`` action settles the card itself;
    * ``result-for ORDER`` — a paid PAY_RESULT for an order the register is not
      selling (a stray notice).

    ``tamper_minor``: the QR it draws asks for that much more than it was sent."""

    def __init__(self, *a, tamper_minor: int = 0, **kw):
        super().__init__(*a, **kw)
        self.tamper_minor = tamper_minor

    def _do(self, action, args):
        now = time.monotonic()
        if action == "card-token":
            kind = "NFC" if len(args) > 1 and args[1].lower() == "nfc" else "CARD"
            order = self.payment.order_no if self.payment else None
            self.proto.send(CardRead(kind, args[0], order), now)
        elif action == "result-for":
            self.proto.send(PayResult(args[0], True, "", "TSTRAY0001", 999, "CNY", "QR", 1),
                            now)
        else:
            super()._do(action, args)

    def _start_attempt(self, now):
        super()._start_attempt(now)
        if self.tamper_minor:
            p = self.payment
            self.payload = MerchantQr(p.amount_minor + self.tamper_minor, p.currency,
                                      self.store_name, self.city, p.order_no, p.register,
                                      self.device_id, self.serial).to_payload()


class Clock:
    """The register's wall clock: 1,800,000,000 and one second more per reading."""

    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        self.t += 1.0
        return self.t


def shopper_phone_pays(register: Register, sim: QrDisplaySim, expect_minor: int,
                       *, pay_minor: int | None = None) -> dict:
    """The shopper's phone: scan the QR the display showed (the register's recorded
    QR_SHOWN payload), check it is a dynamic QR for the amount on the screen, and
    pay. The display simulator's ``pay`` stands in for the wallet provider's
    notification reaching the display."""
    qr = decode_mpm(register.shown.payload)
    assert qr["ok"] and qr["crc_ok"], qr
    assert qr["fields"]["01"] == "12"                       # dynamic: one sale
    assert (qr["amount_minor"], qr["currency"]) == (expect_minor, "CNY")
    assert qr["fields"]["62"]["01"] == sim.payment.order_no
    sim.do("pay", *([] if pay_minor is None else [str(pay_minor)]))
    return qr


def rows(db) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM {TABLE} ORDER BY order_no")]
    finally:
        con.close()


@pytest.fixture
def till(tmp_path):
    """``till(**sim_kw, register_kw=...) -> (register, sim)``, both stopped after."""
    made = []

    def make(*, register_kw=None, **sim_kw):
        sim = ShopSim(**sim_kw).start()
        reg = Register(sim.path, store_db_path=tmp_path / "store.db", register_no="07",
                       clock=Clock(), **(register_kw or {})).start()
        made.append((reg, sim))
        return reg, sim
    yield make
    for reg, sim in made:
        reg.close()
        sim.stop()


def test_a_qr_sale_is_paid_recorded_and_a_retry_answers_from_the_table(till, tmp_path):
    reg, sim = till()
    sale = reg.sell("A0001", LINES, total_minor=1234, currency="CNY")
    assert (sale.status, sale.order_no, sale.amount_minor) == ("open", "A0001", 1234)
    assert sim.payment.register == "07" and [i.name for i in sim.payment.items] == \
        ["Apples", "Milk"]
    shown = reg.qr_pay()
    assert shown.payload == sim.payload == reg.shown.payload
    shopper_phone_pays(reg, sim, 1234)
    paid = reg.wait_result(5)
    assert paid.ok and paid.reason is None and paid.channel == "qr"
    assert paid.txn_ref == sim.last_result.txn_ref and paid.txn_ref
    [row] = rows(tmp_path / "store.db")
    assert row == {"order_no": "A0001", "register_no": "07", "amount_minor": 1234,
                   "currency": "CNY", "status": "paid", "reason": None,
                   "txn_ref": paid.txn_ref, "payer": None, "channel": "qr",
                   "created_at": paid.created_at, "updated_at": paid.updated_at}
    sent = list(sim.commands)
    again = reg.sell("A0001", LINES, total_minor=1234, currency="CNY")
    assert again.replayed and again.ok and again.txn_ref == paid.txn_ref
    assert sim.commands == sent and sim.payments_started == 1     # nothing sent
    assert [type(c) for c in sent] == [PaymentData, QrPay]
    with pytest.raises(TillError) as e:
        reg.sell("A0001", total_minor=999)
    assert e.value.code == "ORDER_CONFLICT"
    with pytest.raises(TillError) as e:
        reg.wait_result(0.1)
    assert e.value.code == "NO_SALE"
    assert len(rows(tmp_path / "store.db")) == 1


def test_a_failure_shows_its_reason_and_a_new_attempt_updates_the_one_row(till, tmp_path):
    reg, sim = till()
    reg.sell("A0002", LINES, total_minor=1234)
    reg.qr_pay()
    sim.do("fail", "DECLINED")
    failed = reg.wait_result(5)
    assert (failed.status, failed.reason, failed.txn_ref) == ("failed", "DECLINED", None)
    assert reg.sell("A0002", LINES, total_minor=1234).status == "open"   # try again
    assert reg.qr_pay().attempt == 2
    shopper_phone_pays(reg, sim, 1234)
    paid = reg.wait_result(5)
    assert paid.ok and paid.created_at == failed.created_at
    assert paid.updated_at > failed.updated_at
    [row] = rows(tmp_path / "store.db")
    assert (row["status"], row["reason"], row["txn_ref"]) == ("paid", None, paid.txn_ref)


def test_the_wrong_amount_paid_is_a_failure_that_keeps_the_reference(till, tmp_path):
    reg, sim = till()
    reg.sell("A0003", LINES, total_minor=1234)
    reg.qr_pay()
    shopper_phone_pays(reg, sim, 1234, pay_minor=1000)
    res = reg.wait_result(5)
    assert (res.status, res.reason) == ("failed", "AMOUNT_MISMATCH")
    assert res.txn_ref == sim.last_result.txn_ref        # money moved: for the refund
    assert rows(tmp_path / "store.db")[0]["reason"] == "AMOUNT_MISMATCH"


def test_no_result_in_time_asks_status_then_cancels(till, tmp_path):
    reg, sim = till()
    reg.sell("A0004", LINES, total_minor=1234)
    reg.qr_pay()
    t0 = time.monotonic()
    res = reg.wait_result(0.3)
    assert time.monotonic() - t0 < 3
    assert (res.status, res.reason) == ("cancelled", "TIMEOUT")
    kinds = [type(c) for c in sim.commands]
    assert kinds[-2:] == [StatusRequest, Cancel]
    assert sim.state == "RESULT" and sim.last_result.reason == "CANCELLED"
    sim.do("pay")                                          # too late: no QR is up
    time.sleep(0.1)
    assert rows(tmp_path / "store.db")[0]["status"] == "cancelled"


def test_a_shopper_already_paying_gets_the_grace_period(till):
    reg, sim = till(register_kw={"paying_grace_s": 3.0})
    reg.sell("A0005", LINES, total_minor=1234)
    reg.qr_pay()
    sim.do("scan")                                         # typing the wallet password
    threading.Timer(0.6, lambda: shopper_phone_pays(reg, sim, 1234)).start()
    res = reg.wait_result(0.2)
    assert res.ok and not any(isinstance(c, Cancel) for c in sim.commands)


def test_the_cashier_cancels(till):
    reg, sim = till()
    reg.sell("A0006", LINES, total_minor=1234)
    reg.qr_pay()
    res = reg.cancel()
    assert (res.status, res.reason) == ("cancelled", "CANCELLED")


def test_a_qr_for_another_amount_is_a_fault_never_a_sale(till, tmp_path):
    reg, sim = till(tamper_minor=100)
    reg.sell("A0007", LINES, total_minor=1234)
    with pytest.raises(TillError) as e:
        reg.qr_pay()
    assert e.value.code == "DISPLAY_MISMATCH" and reg.shown is None
    assert (e.value.sale.status, e.value.sale.reason) == ("failed", "DISPLAY_MISMATCH")
    assert sim.state == "RESULT" and sim.last_result.reason == "CANCELLED"  # QR taken down
    assert any("DISPLAY_MISMATCH" in str(f) for f in reg.faults)
    assert rows(tmp_path / "store.db")[0]["status"] == "failed"


def test_qr_problems_reads_the_payload():
    good = MerchantQr(1234, "CNY", "LANECORE MART", "SHENZHEN", "A0001", "07", "QRD-1",
                      "SN1").to_payload()
    assert qr_problems(good, "A0001", 1234, "CNY") == []
    assert len(qr_problems(good, "A0009", 1000, "USD")) == 3
    static = build_mpm(currency="CNY", country="CN", merchant_name="M", city="C",
                       bill="A0001")
    assert any("dynamic" in p for p in qr_problems(static, "A0001", 1234, "CNY"))
    assert qr_problems(good[:-4] + "0000", "A0001", 1234, "CNY")[0].startswith("EMV_CRC")


def test_a_result_for_another_order_is_ignored_and_logged(till, tmp_path, caplog):
    reg, sim = till()
    reg.sell("A0008", LINES, total_minor=1234)
    reg.qr_pay()
    with caplog.at_level("WARNING", logger="lanecore.gateway.till"):
        sim.do("result-for", "ZZ999")
        shopper_phone_pays(reg, sim, 1234)
        res = reg.wait_result(5)
    assert res.ok and res.order_no == "A0008"
    assert [(e.order_no, e.ok) for e in reg.ignored] == [("ZZ999", True)]
    assert "ZZ999" in caplog.text
    assert [r["order_no"] for r in rows(tmp_path / "store.db")] == ["A0008"]


def test_a_paid_order_the_table_lost_is_recovered_from_the_display(till, tmp_path):
    reg, sim = till()
    reg.sell("A0010", LINES, total_minor=1234)
    reg.qr_pay()
    shopper_phone_pays(reg, sim, 1234)
    paid = reg.wait_result(5)
    con = sqlite3.connect(tmp_path / "store.db")
    con.execute(f"DELETE FROM {TABLE}")                   # the write that never happened
    con.commit()
    con.close()
    again = reg.sell("A0010", LINES, total_minor=1234)    # the display: ORDER_DONE
    assert again.ok and again.txn_ref == paid.txn_ref and not again.replayed
    assert sim.payments_started == 1 and len(rows(tmp_path / "store.db")) == 1


def test_a_card_the_displays_reader_settles(till):
    reg, sim = till()
    reg.sell("A0011", LINES, total_minor=1234)
    reg.qr_pay()
    sim.do("card", "4321", "nfc")
    res = reg.wait_result(5)
    assert res.ok and (res.channel, res.payer) == ("card", "621700******4321")


def test_a_card_token_without_a_payment_gateway_is_recorded_failed(till):
    reg, sim = till()
    reg.sell("A0012", LINES, total_minor=1234)
    reg.qr_pay()
    sim.do("card-token", TOKEN, "nfc")
    res = reg.wait_result(5)
    assert (res.status, res.reason, res.channel) == ("failed", "NO_PAYMENTS", "card")
    assert res.payer == "tok_****" + TOKEN[-4:]
    assert sim.last_result.reason == "CANCELLED"          # the QR was taken down first


def test_a_card_token_is_charged_once_through_the_payment_gateway(till, tmp_path,
                                                                  providers):
    bank = providers("bank", "bank")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": {"kind": "card", "priority": 1, "methods": ["card"],
                              "currency": "CNY", "endpoint": bank.endpoint,
                              "timeout_s": 2.0}})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    gw = start_gateway("payments", d, endpoint)
    pay = Client(endpoint, client_id="till-07", timeout_s=5.0, retries=2)
    dead = Client(f"ipc://{tmp_path}/nobody.ipc", timeout_s=0.2, retries=0)
    try:
        reg, sim = till(register_kw={"payments": dead, "terminal": "REG-07",
                                     "charge_timeout_s": 0.5})
        # the gateway does not answer: no row, the sale and the card stay open
        reg.sell("C-0", LINES, total_minor=1234)
        reg.qr_pay()
        sim.do("card-token", TOKEN, "nfc")
        with pytest.raises(TillError) as e:
            reg.wait_result(5)
        assert e.value.code == "PAYMENT_UNKNOWN" and reg.transaction("C-0") is None
        with pytest.raises(TillError) as e:
            reg.cancel()                                  # not while the card is in doubt
        assert e.value.code == "PAYMENT_UNKNOWN"
        reg.payments = pay                                # the gateway is back
        res = reg.wait_result(5)
        assert res.ok and res.channel == "card" and bank.paid() == {"C-0-1": 1234}

        reg.sell("C-1", LINES, total_minor=1234)
        reg.qr_pay()
        sim.do("card-token", TOKEN, "nfc")
        res = reg.wait_result(10)
        assert res.ok and res.channel == "card" and res.payer == "tok_****" + TOKEN[-4:]
        assert bank.paid() == {"C-0-1": 1234, "C-1-1": 1234}
        status = pay.call("pay.status", order_no="C-1")
        assert res.txn_ref == status["provider_ref"] and status["channel"] == "card"
        assert sim.last_result.reason == "CANCELLED"      # no QR payment on top
        again = reg.sell("C-1", LINES, total_minor=1234)
        assert again.replayed and again.txn_ref == res.txn_ref
        sim.do("card-token", TOKEN, "nfc")                # tapped again: no open sale
        time.sleep(0.2)
        assert bank.paid() == {"C-0-1": 1234, "C-1-1": 1234}   # charged once
        [_, row] = rows(tmp_path / "store.db")
        assert (row["status"], row["channel"], row["txn_ref"]) == ("paid", "card",
                                                                   res.txn_ref)
        assert TOKEN.encode() not in (tmp_path / "store.db").read_bytes()
        # a card the bank declines: the row says so with its code
        bank.conn.configure(next=["51"])
        reg.sell("C-2", LINES, total_minor=1234)
        sim.do("card-token", TOKEN, "nfc")                # before any QR: fine too
        res = reg.wait_result(10)
        assert (res.status, res.reason) == ("failed", "DECLINED:51")
    finally:
        pay.close()
        dead.close()
        gw.terminate()
        gw.wait(10)


def test_json_commands(till, tmp_path):
    reg, sim = till(auto_pay_s=0.05)
    out = io.StringIO()
    cmds = [{"op": "sell", "order_no": "J-1", "lines": [["Tea", 1, 500]],
             "total_minor": 500},
            {"op": "qr_pay"}, {"op": "wait", "timeout_s": 5}, {"op": "get", "order_no": "J-1"},
            {"op": "sell", "order_no": "J-2", "total_minor": 10, "lines": [["X", 1, 9]]},
            {"op": "nope"}]
    errors = run_commands(reg, [json.dumps(c) for c in cmds] + ["not json"], out)
    answers = [json.loads(x) for x in out.getvalue().splitlines()]
    assert errors == 3
    assert answers[0]["sale"]["status"] == "open"
    assert answers[1]["payload"] == sim.payload
    assert answers[2]["sale"]["status"] == "paid"
    assert answers[3]["sale"] == answers[2]["sale"]
    assert [a["error"]["code"] for a in answers[4:]] == ["ITEMS_MISMATCH", "BAD_COMMAND",
                                                         "BAD_COMMAND"]


def test_mask_payer_and_a_bad_register():
    assert mask_payer("tok_abcdefgh1234") == "tok_****1234"
    assert mask_payer("621700******1234") == "621700******1234"
    assert mask_payer(None) is None
    with pytest.raises(TillError) as e:
        Register("loop://", store_db_path=":memory:", register_no="bad number")
    assert e.value.code == "BAD_REGISTER"
