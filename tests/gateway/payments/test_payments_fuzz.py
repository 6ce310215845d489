"""Fuzz the payment gateway's ops: random and malformed requests (every op, fields of
every type, signed and unsigned frames, garbage bytes) against a gateway with a real
wallet provider simulator and a cash drawer. Every reply is a map with ``ok``; every
error code is one docs/protocol.md documents and never INTERNAL; the same in batches
through the socket loop's grouped path (charges in flight together, gateway.py "Group
commit"), where each request also gets exactly one reply; afterwards the provider's
paid trades equal the ledger's paid charges."""

from __future__ import annotations

import re
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanecore.gateway.payments import terminals as T
from lanecore.gateway.payments.gateway import PaymentGateway

from payfix import WECHAT_CODE, wallet, write_config
from repo import REPO

pytestmark = [pytest.mark.slow, pytest.mark.kernel_free]

DOC = REPO / "docs" / "protocol.md"
DOC_CODES = frozenset(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", DOC.read_text()))

OPS = ["hello", "pay.quote", "pay.charge", "pay.status", "pay.reverse", "pay.refund",
       "recon.run", "pay.qr", "pay.list", "pay.receipt", "sv.open", "sv.topup",
       "sv.balance", "stats", "pay.nope", "", None, 7]
FIELDS = ["order_no", "amount_minor", "currency", "method", "terminal", "payer",
          "auth_code", "card", "cash", "refund_ref", "date", "client", "lines", "sms_to",
          "member", "pin", "ref", "sv_pin"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 64 - 1),
    st.floats(allow_nan=True), st.text(max_size=70), st.binary(max_size=40),
    st.sampled_from(["CNY", "GBP", "auth_code", "card", "cash", "qr", "stored_value",
                     WECHAT_CODE, "2026-11-22", "2026-02-30", "T1", "ORD-1", "ORD-2"]),
    st.integers(1, 5000))
cards = st.fixed_dictionaries({}, optional={
    "entry": st.one_of(st.sampled_from(["chip", "nfc", "magstripe", "tap"]), scalars),
    "pan": st.one_of(st.sampled_from(["6228480402564890018", "1234"]), scalars),
    "token": scalars, "pin_block": scalars})
tenders = st.fixed_dictionaries({}, optional={"tendered": st.one_of(
    scalars, st.dictionaries(st.sampled_from(["100", "500", "1000", "3", "x"]),
                             st.one_of(st.integers(-2, 5), scalars), max_size=4))})
values = st.one_of(scalars, cards, tenders, st.lists(scalars, max_size=3))
random_requests = st.builds(
    lambda op, rid, fields: {"op": op, "id": rid, **fields},
    st.sampled_from(OPS), st.one_of(st.integers(0, 10 ** 6), st.text(max_size=12),
                                    st.none()),
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=8))
ORDERS = st.sampled_from([f"FZ-{i}" for i in range(12)])
AMOUNTS = st.sampled_from([1, 99, 100, 1000, 3999, 4000, 4001, 250_000])
#: Requests that are valid but for what the mutations below change: they reach the
#: ops (charges, cash with change, refunds of what was paid, limits) and not only the
#: field checks.
VALID = {
    "pay.charge": st.fixed_dictionaries({
        "order_no": ORDERS, "amount_minor": AMOUNTS, "currency": st.just("CNY"),
        "method": st.sampled_from(["auth_code", "cash", "card", "qr", "stored_value"]),
        "payer": st.sampled_from(["M-1", "M-9"]), "sv_pin": st.sampled_from(["1234", "0"]),
        "auth_code": st.sampled_from([WECHAT_CODE, "2812345678901234", "12"]),
        "cash": st.fixed_dictionaries({"tendered": st.dictionaries(
            st.sampled_from(["100", "500", "1000", "5000", "10000"]), st.integers(0, 3),
            min_size=1, max_size=3)})}),
    "pay.quote": st.fixed_dictionaries({
        "amount_minor": AMOUNTS, "currency": st.just("CNY"),
        "method": st.sampled_from(["auth_code", "cash"]),
        "auth_code": st.just(WECHAT_CODE)}),
    "pay.status": st.fixed_dictionaries({"order_no": ORDERS}),
    "pay.reverse": st.fixed_dictionaries({"order_no": ORDERS}),
    "pay.refund": st.fixed_dictionaries({
        "order_no": ORDERS, "refund_ref": st.sampled_from(["R1", "R2", "R3"]),
        "amount_minor": AMOUNTS}),
    "pay.qr": st.fixed_dictionaries({"order_no": ORDERS, "amount_minor": AMOUNTS,
                                     "currency": st.sampled_from(["CNY", "GBP", "XYZ"])}),
    "pay.list": st.fixed_dictionaries({}, optional={"date": st.just("2026-11-22")}),
    "recon.run": st.fixed_dictionaries({"date": st.just("2026-11-22")}),
    "pay.receipt": st.fixed_dictionaries({"order_no": ORDERS}, optional={
        "sms_to": st.sampled_from(["+447700900123", "12", "+86 138 0013 8000"]),
        "lines": st.lists(st.fixed_dictionaries({
            "name": st.sampled_from(["Tea", ""]), "qty": st.integers(0, 3),
            "unit_minor": AMOUNTS, "amount_minor": AMOUNTS}), max_size=3)}),
    "sv.open": st.fixed_dictionaries({"member": st.sampled_from(["M-1", "M 2", "M-3"]),
                                      "currency": st.sampled_from(["CNY", "GBP"])},
                                     optional={"pin": st.sampled_from(["1234", "1"])}),
    "sv.topup": st.fixed_dictionaries({"member": st.sampled_from(["M-1", "M-9"]),
                                       "currency": st.just("CNY"), "amount_minor": AMOUNTS,
                                       "ref": st.sampled_from(["S1", "S2", "bad ref"])}),
    "sv.balance": st.fixed_dictionaries({"member": st.sampled_from(["M-1", "M-9"]),
                                         "currency": st.sampled_from(["CNY", "GBP"])}),
}


@st.composite
def near_valid(draw):
    op = draw(st.sampled_from(sorted(VALID)))
    req = {"op": op, "id": draw(st.integers(0, 10 ** 9)), **draw(VALID[op])}
    for _ in range(draw(st.integers(0, 2))):          # mutate: drop or replace a field
        name = draw(st.sampled_from(sorted(req)))
        if draw(st.booleans()):
            req.pop(name)
        else:
            req[name] = draw(values)
    return req


requests = st.one_of(random_requests, near_valid(), near_valid(), near_valid())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from payfix import Provider
    tmp = tmp_path_factory.mktemp("payfuzz")
    (tmp / "prov").mkdir()
    p = Provider("wechat", tmp / "prov", tmp)
    d = tmp / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1),
                     "cash": {"kind": "cash", "priority": 9, "methods": ["cash"],
                              "currency": "CNY"},
                     "sv": {"kind": "stored_value", "priority": 5,
                            "methods": ["stored_value"], "currency": "CNY"}},
                 pos={"auth": "hmac"})
    gw = PaymentGateway(d)
    _, key = gw.terminals.register("T1", max_payment_minor=4000)
    gw.terminals.register("HQ", admin=True)
    yield gw, p, key
    gw.ledger.close()
    p.stop()


def check(reply_frames) -> dict:
    reply = msgpack.unpackb(reply_frames[-1], raw=False)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        code = reply["error"]["code"]
        assert code in DOC_CODES, f"undocumented code: {reply}"
        assert code != "INTERNAL", reply
    return reply


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(req=requests, signed=st.sampled_from(["good", "good", "good", "none", "bad"]))
def test_random_requests_get_documented_answers(setup, req, signed):
    gw, _, key = setup
    payload = msgpack.packb(req, use_bin_type=True)
    frames = [b"\x01peer", payload]
    if signed == "good":
        frames.append(T.auth_frame("T1", key, payload))
    elif signed == "bad":
        frames.append(T.auth_frame("T1", b"\x07" * 32, payload))
    check(gw.on_frames(frames))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=64), auth=st.one_of(st.none(), st.binary(max_size=64)),
       extra=st.integers(0, 2))
def test_garbage_frames_get_documented_answers(setup, payload, auth, extra):
    gw, _, _ = setup
    frames = [b"\x02peer", payload] + ([auth] if auth is not None else []) + \
        [b"x"] * extra
    check(gw.on_frames(frames))


_FRESH = [0]
#: Charges as VALID makes them, mostly wallet ones for orders of their own, several
#: of one order in a batch now and then (the grouped path: charges in flight together).
charges = st.builds(
    lambda f, order, method, code, rid: {"op": "pay.charge", "id": rid, **f,
                                         "order_no": order, "method": method,
                                         "auth_code": code},
    VALID["pay.charge"], st.sampled_from([f"FG-{i}" for i in range(150)]),
    st.sampled_from(["auth_code"] * 4 + ["cash", "stored_value", "card"]),
    st.sampled_from([WECHAT_CODE] * 4 + ["12"]), st.text(min_size=1, max_size=12))


def grouped(gw, batch: list[list[bytes]]) -> list[list[bytes]]:
    """``batch`` through the socket loop's path (on_batch, then on_io turns until
    nothing is in flight): every reply frame list, answered now or later."""
    gw.io_sockets()
    out = gw.on_batch(batch)
    gw.on_io(out.extend)
    deadline = time.monotonic() + 20
    while gw._flight or gw.io_ready():
        assert time.monotonic() < deadline, "charges never answered"
        time.sleep(0.002)
        gw.on_io(out.extend)
    return out


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(reqs=st.lists(st.tuples(st.one_of(charges, charges, charges, near_valid(), requests),
                               st.sampled_from(["good"] * 5 + ["none", "bad"]),
                               st.booleans()), min_size=1, max_size=8))
def test_random_batches_in_the_grouped_path_get_one_documented_answer_each(setup, reqs):
    """The same requests several at a time through the grouped path (charges in
    flight together): each request gets exactly one reply, every reply documented."""
    gw, _, key = setup
    batch = []
    for i, (req, signed, fresh) in enumerate(reqs):
        if fresh and "id" in req:         # else mostly replays of the ids used above
            _FRESH[0] += 1
            req = {**req, "id": f"g{_FRESH[0]}"}
        payload = msgpack.packb(req, use_bin_type=True)
        frames = [b"\x04peer%d" % i, payload]
        if signed == "good":
            frames.append(T.auth_frame("T1", key, payload))
        elif signed == "bad":
            frames.append(T.auth_frame("T1", b"\x07" * 32, payload))
        batch.append(frames)
    replies = grouped(gw, batch)
    assert sorted(r[0] for r in replies) == sorted(f[0] for f in batch)
    for r in replies:
        check(r)


def test_afterwards_the_books_agree(setup):
    gw, p, key = setup
    for i in range(3):     # a few good ones too, so there is something to agree on
        # orders the fuzz never names (it may have paid FZ-0 for another amount)
        req = {"op": "pay.charge", "id": f"good-{i}", "order_no": f"BOOKS-{i}",
               "amount_minor": 100 + i, "currency": "CNY", "method": "auth_code",
               "auth_code": WECHAT_CODE}
        payload = msgpack.packb(req)
        r = check(gw.on_frames([b"\x03", payload, T.auth_frame("T1", key, payload)]))
        assert r["status"] == "paid", r
    for _ in range(5):
        gw.on_idle()
    paid = {c.merchant_ref: c.amount_minor for c in gw.ledger.charges(state="paid")
            if c.channel == "wx"}
    assert paid and p.paid() == paid
