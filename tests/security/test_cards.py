"""Card numbers (issue 13, item 9): the card-number check accepts ASCII digits, plain
or grouped by single spaces or by single hyphens, and nothing else — the same rule
in the connector (gateway/payments/providers.py: ``pan_digits``, ``Card``) and in the
provider simulator (gateway/sim/provider.py), and so through a real payment gateway
process: ``4111.1111.1111.1111`` is ``BAD_FIELD`` and charges nothing."""

from __future__ import annotations

import pytest

from lanecore.gateway.payments.providers import (Card, ProviderError, luhn_ok, mask_pan,
                                                 pan_digits)
from payfix import providers  # noqa: F401  (provider simulator processes, a fixture)
from payfix import start_gateway, write_config

pytestmark = pytest.mark.kernel_free

PAN = "4111111111111111"

ACCEPTED = {
    PAN: PAN,
    "4111 1111 1111 1111": PAN,
    "4111-1111-1111-1111": PAN,
    "3782 822463 10005": "378282246310005",              # 4-6-5
    "3782-822463-10005": "378282246310005",
    "6212 3456 7890 1234 567": "6212345678901234567",    # 19 digits, 4-4-4-4-3
    "4222 2222 2222 2": "4222222222222",                 # 13 digits
}
REFUSED = [
    "4111.1111.1111.1111",                # dots
    "4111/1111/1111/1111", "4111_1111_1111_1111", "4111,1111,1111,1111",
    "4111-1111 1111-1111",                # mixed separators
    "4111 1111-1111 1111",
    "4111  1111 1111 1111",               # two separators in a row
    "4111--1111-1111-1111",
    "41 11 1111 1111 1111",               # a separator at an odd place
    "4111 1 1 1 1 1 1 1 1 1 1 1 1",
    "411111111111 1111",                  # a group longer than 6
    " 4111 1111 1111 1111", "4111 1111 1111 1111 ", "-4111-1111-1111-1111",
    "4111-1111-1111-1111-", "4111111111111111\n", "\t4111111111111111",
    "4111\t1111\t1111\t1111", "4111\u00a01111\u00a01111\u00a01111",   # other spaces
    "4111\u20111111\u20111111\u20111111",                            # a non-ASCII hyphen
    "４１１１１１１１１１１１１１１１",      # fullwidth digits
    "٤١١١١١١١١١١١١١١١",                  # Arabic-Indic digits
    "4111 1111 1111 111a", "card 4111111111111111", "4111111111111111x",
    "41111111111",                        # 11 digits
    "41111111111111111111",               # 20 digits
    "4111 1111 1111 1111 1111",           # 20 digits, grouped
    "", " ", "-",
]


def test_the_card_number_check():
    assert {t: pan_digits(t) for t in ACCEPTED} == ACCEPTED
    assert [t for t in REFUSED if pan_digits(t) is not None] == []
    assert pan_digits(4111111111111111) is None and pan_digits(None) is None
    # the connector's Card keeps the digits only, and refuses the rest with its code
    card = Card("chip", pan="4111 1111 1111 1111")
    assert card.pan == PAN and card.wire() == {"entry": "chip", "pan": PAN}
    assert Card("nfc", pan="4111-1111-1111-1111").masked == "411111******1111"
    for text in REFUSED:
        with pytest.raises(ProviderError) as info:
            Card("chip", pan=text)
        assert info.value.code == "BAD_REQUEST"
        digits = "".join(ch for ch in text if ch.isdigit())
        assert len(digits) < 12 or digits not in info.value.message   # never echoed
    # Luhn reads ASCII digits only (int() would read the fullwidth ones)
    assert luhn_ok(PAN) and not luhn_ok("４１１１１１１１１１１１１１１１")
    assert mask_pan("4111 1111 1111 1111") == "411111******1111"


def test_the_simulator_checks_card_numbers_the_same_way(providers):  # noqa: F811
    """The raw wire, past the connector's Card: the simulator itself refuses."""
    bank = providers("bank", "bank")
    n = 0

    def charge(pan):
        nonlocal n
        n += 1
        return bank.conn.call("charge", merchant_ref=f"R-{n}", amount_minor=500,
                              currency="EUR", card={"entry": "chip", "pan": pan})

    for text in REFUSED:
        r = charge(text)
        assert r["ok"] is False and r["error"]["code"] == "BAD_FIELD", (text, r)
    assert bank.paid() == {}
    for text, digits in ACCEPTED.items():
        r = charge(text)                  # read as its digits: then Luhn decides
        want = ("paid", None) if luhn_ok(digits) else ("failed", "14")
        assert r["ok"] is True and (r["status"], r.get("code")) == want, (text, r)
    assert len(bank.paid()) == sum(luhn_ok(d) for d in ACCEPTED.values()) >= 5


def test_the_gateway_refuses_a_dotted_card_number_and_charges_nothing(tmp_path,
                                                                     providers):  # noqa: F811
    from lanecore.gateway.net.client import Client, ServiceError
    bank = providers("bank", "bank")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": {"kind": "card", "priority": 1, "methods": ["card"],
                              "currency": "CNY", "endpoint": bank.endpoint}})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", d, endpoint)
    try:
        with Client(endpoint, timeout_s=10.0, retries=0) as c:
            def pay(order, pan):
                return c.call("pay.charge", order_no=order, amount_minor=1200,
                              currency="CNY", method="card", terminal="T1",
                              card={"entry": "chip", "pan": pan})

            for i, text in enumerate(["4111.1111.1111.1111", "4111-1111 1111-1111",
                                      "４１１１１１１１１１１１１１１１", " " + PAN]):
                with pytest.raises(ServiceError) as info:
                    pay(f"BAD-{i}", text)
                assert info.value.code == "BAD_FIELD", text
                assert "4111111111111111" not in info.value.message
                with pytest.raises(ServiceError) as info:
                    c.call("pay.status", order_no=f"BAD-{i}")
                assert info.value.code == "UNKNOWN_ORDER"          # nothing written
            assert bank.paid() == {}                                # nothing sent
            spaced = pay("OK-1", "4111 1111 1111 1111")
            hyphened = pay("OK-2", "4111-1111-1111-1111")
            assert (spaced["status"], hyphened["status"]) == ("paid", "paid")
            assert bank.paid() == {"OK-1-1": 1200, "OK-2-1": 1200}
    finally:
        proc.terminate()
        proc.wait(20)
