"""Cards over ISO 8583 (gateway/payments/iso8583.py) against the acquirer host
simulator process (`lanecore sim provider --kind acquirer`, gateway/sim/acquirer.py):
the codec and its framing, approvals and each decline code through the payment
gateway, a host that never answers (reversal advice repeated until acknowledged),
duplicate transmissions charged once, and kill -9 between `sent` and the answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from lanecore.gateway.net.client import Client
from lanecore.gateway.payments import iso8583 as M
from lanecore.gateway.payments.gateway import PaymentGateway
from lanecore.gateway.payments.iso8583 import Iso8583Connector
from lanecore.gateway.payments.providers import Card
from lanecore.gateway.sim.provider import pin_block

from payfix import start_gateway, write_config

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

PAN = "4111111111111111"


class Acquirer:
    """A `lanecore sim provider --kind acquirer` process and its trade records."""

    def __init__(self, data_dir, *knobs: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", "acquirer",
             "--bind", "tcp://127.0.0.1:0", "--data-dir", str(data_dir), *knobs],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.endpoint = json.loads(line)["endpoint"]
        self.host, self.port = M.parse_endpoint(self.endpoint)

    def rows(self, sql: str, *args) -> list:
        con = sqlite3.connect(self.data_dir / "acquirer.sqlite")
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def trades(self) -> list[dict]:
        cols = ("key", "status", "code", "requests", "amount_minor", "card")
        return [dict(zip(cols, r)) for r in self.rows(f"SELECT {', '.join(cols)} FROM trades "
                                                      "ORDER BY created_at")]

    def paid(self) -> dict[str, int]:
        return dict(self.rows("SELECT key, amount_minor FROM trades WHERE status = 'paid'"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def acquirer(tmp_path):
    made = []

    def start(*knobs: str) -> Acquirer:
        d = tmp_path / f"acq-{len(made)}"
        d.mkdir()
        made.append(Acquirer(d, *knobs))
        return made[-1]
    yield start
    for a in made:
        a.stop()


def card_channel(endpoint: str, **extra) -> dict:
    t = {"kind": "card", "priority": 1, "methods": ["card"], "currency": "CNY",
         "endpoint": endpoint, "protocol": "iso8583", "merchant_id": "M000000000123",
         "terminal_id": "T0000001", "timeout_s": 0.5}
    t.update(extra)
    return t


def financial(stan="000001", tx_time="1208101500", pan=PAN, **over) -> dict:
    doc = {"t": "0200", "2": pan, "3": "000000", "4": "000000001234", "7": tx_time,
           "11": stan, "12": "101500", "13": "1208", "22": "051", "41": "T0000001",
           "42": "M00000000000123", "49": "156"}
    doc.update(over)
    return doc


def exchange(a: Acquirer, raw_frame: bytes) -> bytes:
    """One raw frame to the host, its raw answer ('' when it closed the connection)."""
    with socket.create_connection((a.host, a.port), timeout=10) as s:
        s.sendall(raw_frame)
        s.shutdown(socket.SHUT_WR)          # nothing more comes: a short frame is cut
        try:
            return M.read_frame(s)
        except ConnectionError:
            return b""


# ---------------------------------------------------------------------------------
# the codec and its framing
# ---------------------------------------------------------------------------------
def test_every_message_type_round_trips_and_tampering_is_refused(acquirer):
    orig = M.original_data("0200", "000001", "1208101500")
    docs = [financial(**{"52": pin_block("1234", PAN)}),
            {"t": "0210", "3": "000000", "4": "000000001234", "7": "1208101500",
             "11": "000001", "37": "000000000001", "38": "123456", "39": "00",
             "41": "T0000001"},
            {"t": "0420", "3": "000000", "4": "000000001234", "7": "1208101510",
             "11": "000002", "39": "68", "41": "T0000001", "42": "M00000000000123",
             "49": "156", "90": orig},
            {"t": "0430", "7": "1208101510", "11": "000002", "39": "00", "41": "T0000001",
             "90": orig},
            {"t": "0800", "7": "1208101520", "11": "000003", "41": "T0000001"},
            {"t": "0810", "7": "1208101520", "11": "000003", "39": "00", "41": "T0000001"}]
    for doc in docs:
        raw = M.encode(doc)
        back = M.decode(raw)
        back.pop("p")
        back.pop("1", None)          # the secondary bitmap (field 90 needs it)
        assert back == doc
        framed = M.frame(raw)
        assert int.from_bytes(framed[:2], "big") == len(raw) and framed[2:] == raw
    raw = M.encode(docs[0])
    # a field tampered with: letters in the amount, a message cut short, bytes after it
    amount_at = raw.index(b"000000001234")
    with pytest.raises(M.MessageError):
        M.decode(raw[:amount_at] + b"00000000X234" + raw[amount_at + 12:])
    with pytest.raises(M.MessageError):
        M.decode(raw[:-3])
    with pytest.raises(M.MessageError):
        M.decode(raw + b"99")
    with pytest.raises(M.MessageError):          # a type this link does not speak
        M.decode(b"0300" + raw[4:])
    with pytest.raises(M.MessageError):          # a required field missing
        M.encode({k: v for k, v in docs[0].items() if k != "4"})
    # framing: a length prefix of 0, one beyond the limit, one longer than the message
    a = acquirer()
    a_sock = socket.socketpair()
    try:
        for prefix in (b"\x00\x00", (M.MAX_MESSAGE + 1).to_bytes(2, "big")):
            a_sock[0].sendall(prefix + raw)
            with pytest.raises(M.MessageError):
                M.read_frame(a_sock[1])
            a_sock[1].recv(1 << 16)
    finally:
        a_sock[0].close()
        a_sock[1].close()
    assert exchange(a, (len(raw) + 5).to_bytes(2, "big") + raw) == b""  # cut short
    assert exchange(a, (len(raw) - 5).to_bytes(2, "big") + raw) == b""  # a bad message
    tampered = raw[:amount_at] + b"00000000X234" + raw[amount_at + 12:]
    assert exchange(a, M.frame(tampered)) == b""      # refused: the connection is dropped
    assert a.trades() == []                           # … and nothing was charged
    # the well-formed message is charged
    answer = M.decode(exchange(a, M.frame(raw)))
    assert (answer["t"], answer["39"], answer["11"]) == ("0210", "00", "000001")
    assert [t["status"] for t in a.trades()] == ["paid"]


# ---------------------------------------------------------------------------------
# through the payment gateway
# ---------------------------------------------------------------------------------
def _pay(gw, rid, order, amount, pan=PAN, pin="1234"):
    card = {"entry": "chip", "pan": pan}
    if pin is not None:
        card["pin_block"] = pin_block(pin, pan)
    return gw.handle({"op": "pay.charge", "id": rid, "order_no": order,
                      "amount_minor": amount, "currency": "CNY", "method": "card",
                      "terminal": "T1", "card": card}, client="till-1")


def _settled(gw, order):
    for _ in range(400):
        s = gw.handle({"op": "pay.status", "id": f"s-{order}-{time.monotonic()}",
                       "order_no": order}, client="till-1")
        if s["status"] != "pending":
            return s
        gw.on_idle()
        time.sleep(0.02)
    raise AssertionError(f"{order} never became final: {s}")


def test_approval_and_each_response_code_mapped(tmp_path, acquirer, caplog):
    a = acquirer("--next", "00,05,54,14,91,96,61")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": card_channel(a.endpoint)},
                 policy={"poll_every_s": 0.05, "give_up_after_s": 60})
    gw = PaymentGateway(d)
    ok = _pay(gw, "1", "A-1", 1234)
    assert (ok["status"], ok["channel"]) == ("paid", "card"), ok
    assert ok["provider_ref"] and ok["provider_ref"].isdigit()          # the RRN
    for i, code in enumerate(("05", "54", "14"), 2):                     # scripted declines
        r = _pay(gw, str(i), f"A-{i}", 100 + i)
        assert (r["status"], r["decline_code"]) == ("failed", code), r
    wrong_pin = _pay(gw, "5", "A-5", 105, pin="9999")
    assert (wrong_pin["status"], wrong_pin["decline_code"]) == ("failed", "55")
    poor = _pay(gw, "6", "A-6", 106, pan="4000000000009995")             # a test card
    assert (poor["status"], poor["decline_code"]) == ("failed", "51")
    # 91, 96: unknown → settled by reversal advice, never charged again
    for i in (7, 8):
        r = _pay(gw, str(i), f"A-{i}", 100 + i)
        assert r["status"] == "pending", r
        s = _settled(gw, f"A-{i}")
        assert s["status"] == "reversed", s
    limit = _pay(gw, "9", "A-9", 109)
    assert (limit["status"], limit["decline_code"]) == ("failed", "61")
    states = {t["code"]: t["status"] for t in a.trades()}
    assert states == {"00": "paid", "05": "failed", "54": "failed", "14": "failed",
                      "55": "failed", "51": "failed", "91": "failed", "96": "reversed",
                      "61": "failed"}
    assert list(a.paid().values()) == [1234]
    assert all(t["requests"] == 1 for t in a.trades())
    assert all(t["card"].count("*") == 6 for t in a.trades())           # masked at the host
    gw.ledger.close()
    for path in d.iterdir():                      # no PAN in any of the gateway's files
        if path.is_file():
            assert PAN.encode() not in path.read_bytes(), path
    assert PAN not in caplog.text


def test_a_host_that_never_answers_gets_advices_until_acknowledged(tmp_path, acquirer):
    """Done when: the 0200 is never answered; the gateway times out, sends a reversal
    advice, the host drops the first two, the advice is repeated until the host
    acknowledges it, and the charge ends reversed with nothing held at the host."""
    a = acquirer("--next", "noanswer", "--drop-reversal", "2")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": card_channel(a.endpoint)},
                 policy={"poll_every_s": 0.1, "give_up_after_s": 120})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", d, endpoint)
    try:
        with Client(endpoint, timeout_s=10.0) as c:
            card = {"entry": "chip", "pan": PAN, "pin_block": pin_block("1234", PAN)}
            first = c.call("pay.charge", order_no="N-1", amount_minor=4321, currency="CNY",
                           method="card", terminal="T1", card=card)
            assert first["status"] == "pending", first        # no answer: unknown
            for _ in range(600):
                s = c.call("pay.status", order_no="N-1")
                if s["status"] != "pending":
                    break
                time.sleep(0.05)
            assert s["status"] == "reversed", s
            assert [x["state"] for x in s["attempts"]] == ["reversed"]
    finally:
        proc.terminate()
        proc.wait(20)
    (trade,) = a.trades()
    assert (trade["status"], trade["requests"]) == ("reversed", 1)     # undone, sent once
    assert a.paid() == {}
    ((advices, dropped, found),) = a.rows("SELECT advices, dropped, found FROM reversals")
    assert dropped == 2 and advices >= 1 and found == 1                 # repeated until acked
    con = sqlite3.connect(d / "iso8583.sqlite")
    ((state, sent),) = con.execute("SELECT state, advices FROM iso_attempts").fetchall()
    con.close()
    assert state == "reversed" and sent == dropped + 1


def test_a_late_approval_is_reversed(tmp_path, acquirer):
    a = acquirer("--next", "late", "--late-s", "2")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": card_channel(a.endpoint)},
                 policy={"poll_every_s": 0.05, "give_up_after_s": 60})
    gw = PaymentGateway(d)
    assert _pay(gw, "1", "L-1", 700)["status"] == "pending"
    assert _settled(gw, "L-1")["status"] == "reversed"
    gw.ledger.close()
    (trade,) = a.trades()
    assert (trade["status"], trade["requests"]) == ("reversed", 1)


def test_a_duplicate_transmission_is_charged_once(tmp_path, acquirer):
    """Done when: the same 0200 sent twice (and repeated as 0201) is answered with the
    first response and charged once; a connector whose connection is lost before the
    answer repeats it, and the host charges it once."""
    a = acquirer()
    raw = M.encode(financial(stan="000042"))
    first = exchange(a, M.frame(raw))
    again = exchange(a, M.frame(raw))
    repeat = exchange(a, M.frame(M.encode(financial(stan="000042", t="0201"))))
    assert M.decode(first)["39"] == "00"
    assert again == first and repeat == first                   # the first answer, verbatim
    (trade,) = a.trades()
    assert (trade["status"], trade["requests"], trade["amount_minor"]) == ("paid", 3, 1234)
    # another STAN (or another time) is another charge
    other = M.decode(exchange(a, M.frame(M.encode(financial(stan="000043")))))
    assert other["37"] != M.decode(first)["37"] and len(a.paid()) == 2

    # the connector: the host charges, then the connection drops before the answer
    b = acquirer("--next", "drop")
    conn = Iso8583Connector(b.endpoint, timeout_s=5.0, merchant_id="M1", terminal_id="T1",
                            state_path=tmp_path / "iso.sqlite")
    try:
        res = conn.charge("D-1-1", 555, "CNY", card=Card("chip", pan=PAN))
    finally:
        conn.close()
    assert res.status == "paid" and res.paid_minor == 555, res
    (trade,) = b.trades()
    assert (trade["status"], trade["requests"]) == ("paid", 2)         # two sends, one charge


def test_stans_are_never_reused_across_restarts(tmp_path, acquirer):
    a = acquirer()
    stans = []
    for _ in range(2):
        conn = Iso8583Connector(a.endpoint, merchant_id="M1", terminal_id="T1",
                                state_path=tmp_path / "iso.sqlite")
        try:
            for i in range(3):
                ref = f"S-{len(stans)}-1"
                assert conn.charge(ref, 100 + i, "CNY", card=Card("nfc", pan=PAN)).status \
                    == "paid"
                stans.append(conn.state.get(ref)["stan"])
        finally:
            conn.close()
    assert len(set(stans)) == 6 and len(a.paid()) == 6


@pytest.mark.parametrize("where", ["after_ledger", "at_the_host"])
def test_kill_9_between_sent_and_the_answer_settles_by_advice(tmp_path, acquirer, where):
    """kill -9 after the charge is `sent`: before its 0200 left (after_ledger), or
    with the 0200 at the host and its answer not yet back. After a restart the charge
    is settled by a reversal advice — never a second 0200 — and ends reversed."""
    a = acquirer("--next", "late", "--late-s", "60")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": card_channel(a.endpoint, timeout_s=30.0)},
                 policy={"poll_every_s": 0.1, "give_up_after_s": 120})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    env = dict(os.environ)
    if where == "after_ledger":
        env.update(LANECORE_PAY_CRASH="after_ledger:1.0")
    proc = start_gateway("payments", d, endpoint, env=env)
    card = {"entry": "chip", "pan": PAN, "pin_block": pin_block("1234", PAN)}
    request = dict(order_no="K-1", amount_minor=2500, currency="CNY", method="card",
                   terminal="T1", card=card)
    try:
        c = Client(endpoint, timeout_s=1.0, retries=0)
        try:
            c.send("pay.charge", **request)
        except Exception:
            pass
        if where == "after_ledger":
            assert proc.wait(30) == -signal.SIGKILL
        else:
            for _ in range(600):                 # the 0200 has reached the host
                if a.trades():
                    break
                time.sleep(0.05)
            assert a.trades(), "the financial request reached the host"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        c.close()
        ledger = sqlite3.connect(d / "payments.db")
        assert ledger.execute("SELECT state FROM charges").fetchall() == [("sent",)]
        ledger.close()
        proc = start_gateway("payments", d, endpoint)
        with Client(endpoint, timeout_s=10.0) as c2:
            for _ in range(600):
                s = c2.call("pay.status", order_no="K-1")
                if s["status"] != "pending":
                    break
                time.sleep(0.05)
        assert s["status"] == "reversed", s
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
    assert a.paid() == {}
    if where == "after_ledger":
        assert a.trades() == []                   # never sent, and not sent after
        assert a.rows("SELECT found FROM reversals") == [(0,)]
    else:
        (trade,) = a.trades()
        assert (trade["status"], trade["requests"]) == ("reversed", 1)  # no second 0200


def test_config_iso8583_only_for_cards_and_loopback(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    for table in (card_channel("tcp://10.1.2.3:5000"),
                  card_channel("tcp://127.0.0.1:5000", terminal_id="far-too-long-id"),
                  card_channel("tcp://127.0.0.1:5000", protocol="x25"),
                  {**card_channel("tcp://127.0.0.1:5000"), "kind": "wechat",
                   "methods": ["auth_code"]}):
        write_config(d, {"card": table})
        with pytest.raises(Exception) as e:
            PaymentGateway(d)
        assert getattr(e.value, "code", None) in ("BAD_CONFIG", "PLAIN_NOT_ALLOWED"), table


def test_reverse_a_paid_card_payment_and_refunds_refused(tmp_path, acquirer):
    a = acquirer()
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": card_channel(a.endpoint)})
    gw = PaymentGateway(d)
    assert _pay(gw, "1", "R-1", 900)["status"] == "paid"
    refused = gw.handle({"op": "pay.refund", "id": "2", "order_no": "R-1",
                         "refund_ref": "RF-1", "amount_minor": 100}, client="till-1")
    assert refused["error"]["code"] == "NOT_SUPPORTED"
    assert gw.ledger.refunds(open_only=True) == []             # nothing written
    back = gw.handle({"op": "pay.reverse", "id": "3", "order_no": "R-1"}, client="till-1")
    assert back["status"] == "reversed", back
    gw.ledger.close()
    (trade,) = a.trades()
    assert trade["status"] == "reversed" and a.paid() == {}


def test_served_gateway_answers_approvals_and_declines_in_flight(tmp_path, acquirer):
    """The served gateway's grouped path: requests in flight on the connector's
    threads, their answers back through its socket."""
    a = acquirer("--next", "00,05,00")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": card_channel(a.endpoint, timeout_s=10.0)})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", d, endpoint)
    try:
        with Client(endpoint, timeout_s=20.0) as c:
            out = []
            for i, amount in enumerate((300, 400, 500)):
                out.append(c.call("pay.charge", order_no=f"F-{i}", amount_minor=amount,
                                  currency="CNY", method="card", terminal="T1",
                                  card={"entry": "nfc", "pan": PAN}))
    finally:
        proc.terminate()
        proc.wait(20)
    assert [(r["status"], r["decline_code"]) for r in out] == \
        [("paid", None), ("failed", "05"), ("paid", None)]
    assert sorted(a.paid().values()) == [300, 500]
    assert all(t["requests"] == 1 for t in a.trades())


def test_the_days_totals_agree_and_a_charge_only_the_host_has_is_found(tmp_path, acquirer):
    a = acquirer("--next", "00,05,noanswer,00")
    conn = Iso8583Connector(a.endpoint, timeout_s=0.5, merchant_id="M1", terminal_id="T1",
                            state_path=tmp_path / "iso.sqlite", advice_timeout_s=5.0)
    try:
        results = [conn.charge(f"B-{i}-1", 100 * (i + 1), "CNY", card=Card("chip", pan=PAN))
                   for i in range(4)]
        assert [r.status for r in results] == ["paid", "failed", "unknown", "paid"]
        assert conn.query("B-2-1").status == "reversed"      # settled by its advice
        date = time.strftime("%Y-%m-%d", time.gmtime())
        t = conn.totals(date)
        assert t["agreed"] and t["ours"] == t["host"] == {"count": 2, "amount_minor": 500}
        assert t["reversed"] == {"count": 1, "amount_minor": 300}
        # a charge the host holds for this terminal that this side never made
        doc = financial(stan="999999", tx_time=M.transmission_time(time.time()),
                        **{"41": "T1      "})
        assert M.decode(exchange(a, M.frame(M.encode(doc))))["39"] == "00"
        t = conn.totals(date)
        assert (t["agreed"], t["code"]) == (False, "95")
        assert t["host"] == {"count": 3, "amount_minor": 1734} and t["ours"]["count"] == 2
    finally:
        conn.close()
