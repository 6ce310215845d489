"""Channel routing with limits and the decline table (core/pay/routing.py)."""

from __future__ import annotations

import tomllib

import pytest

from lanecore.core.pay import routing as R
from lanecore.core.errors import ConfigError
from lanecore.core.pay.routing import (Decline, NoEligibleChannel, PaymentRequest, Router,
                                       RoutingError, Usage, classify_auth_code,
                                       classify_decline, should_fall_back)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

WECHAT_CODE = "134567890123456789"      # 18 digits, 13…
ALIPAY_CODE = "2812345678901234"        # 16 digits, 28…
UNIONPAY_CODE = "6212345678901234567"   # 19 digits, 62…

CONFIG = """
[wechat_direct]
kind = "wechat"
priority = 10
methods = ["auth_code", "qr"]
currency = "CNY"
max_payment_minor = 50000
payer_daily_max_minor = 80000
terminal_daily_max_minor = 1000000

[wechat_bank]
kind = "wechat"
priority = 20
methods = ["auth_code", "qr"]
currency = "CNY"
max_payment_minor = 500000

[alipay]
kind = "alipay"
priority = 15
methods = ["auth_code", "qr"]
currency = "CNY"
max_payment_minor = 300000
payer_daily_count = 2

[unionpay_qr]
kind = "unionpay"
priority = 30
methods = ["auth_code", "qr"]
currency = "CNY"
max_payment_minor = 30000000

[card_acquirer_a]
kind = "card"
priority = 40
methods = ["card"]
currency = "CNY"
min_payment_minor = 100
max_payment_minor = 200000

[card_acquirer_b]
kind = "card"
priority = 50
methods = ["card"]
currency = "CNY"
terminal_daily_max_minor = 300000
terminal_daily_count = 3

[cash]
kind = "cash"
priority = 60
methods = ["cash"]
currency = "CNY"

[members]
kind = "stored_value"
priority = 70
methods = ["stored_value"]
currency = "CNY"
enabled = false
"""


@pytest.fixture
def router():
    return Router.from_config(tomllib.loads(CONFIG))


def names(channels):
    return [c.name for c in channels]


def reasons(router, *args, **kw):
    with pytest.raises(NoEligibleChannel) as info:
        router.route(*args, **kw)
    assert info.value.code == "NO_ELIGIBLE_CHANNEL"
    return info.value.reasons


# --------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, kind", [
    (WECHAT_CODE, "wechat"), ("100000000000000000", "wechat"), ("159999999999999999", "wechat"),
    ("160000000000000000", None),                  # 16… is not WeChat
    ("13456789012345678", None),                   # 17 digits
    (ALIPAY_CODE, "alipay"), ("300000000000000000000000", "alipay"),   # 24 digits
    ("2512345678901234567890123", None),           # 25 digits
    ("251234567890123", None),                     # 15 digits
    ("3112345678901234", None),                    # 31…
    (UNIONPAY_CODE, "unionpay"), ("621234567890123456", None),   # 18 digits
    ("13456789012345678x", None),
    ("１３４５６７８９０１２３４５６７８９", None),   # full-width digits
])
def test_codes_route_by_prefix_and_length(code, kind):
    assert classify_auth_code(code) == kind


def test_code_routing_picks_the_codes_channels(router):
    u = Usage()
    assert names(router.route(100, "CNY", "auth_code", None, "T1", u,
                              auth_code=WECHAT_CODE)) == ["wechat_direct", "wechat_bank"]
    assert names(router.route(100, "CNY", "auth_code", None, "T1", u,
                              auth_code=ALIPAY_CODE)) == ["alipay"]
    assert names(router.route(100, "CNY", "auth_code", None, "T1", u,
                              auth_code=UNIONPAY_CODE)) == ["unionpay_qr"]


def test_a_code_of_no_kind_has_no_channel(router):
    why = reasons(router, 100, "CNY", "auth_code", None, "T1", Usage(),
                  auth_code="9912345678901234")
    assert why["wechat_direct"] == why["alipay"] == why["unionpay_qr"] == "CODE_NOT_THIS_CHANNEL"
    assert why["card_acquirer_a"] == why["cash"] == "METHOD_NOT_ACCEPTED"
    assert why["members"] == "DISABLED"


def test_auth_code_payment_without_a_code_is_refused(router):
    for code in (None, "", "12ab"):
        with pytest.raises(RoutingError) as info:
            router.route(100, "CNY", "auth_code", None, "T1", Usage(), auth_code=code)
        assert info.value.code == "BAD_AUTH_CODE"


# --------------------------------------------------------------------------------------
# Limits and fall-back by limit
# --------------------------------------------------------------------------------------

def test_over_one_channels_limit_goes_to_the_next(router):
    got = router.route(60000, "CNY", "auth_code", None, "T1", Usage(), auth_code=WECHAT_CODE)
    assert names(got) == ["wechat_bank"]
    got = router.route(250000, "CNY", "card", None, "T1", Usage())
    assert names(got) == ["card_acquirer_b"]


def test_priority_order_and_qr(router):
    got = router.route(100, "CNY", "qr", None, "T1", Usage())
    assert names(got) == ["wechat_direct", "alipay", "wechat_bank", "unionpay_qr"]


def test_payer_daily_limit_and_count(router):
    u = Usage()
    u.record("wechat_direct", "T1", 50000, payer="openid-1")
    got = router.route(40000, "CNY", "auth_code", "openid-1", "T1", u, auth_code=WECHAT_CODE)
    assert names(got) == ["wechat_bank"]
    # Another payer at the same terminal is not affected.
    got = router.route(40000, "CNY", "auth_code", "openid-2", "T1", u, auth_code=WECHAT_CODE)
    assert names(got)[0] == "wechat_direct"
    u.record("alipay", "T1", 100, payer="2088-1")
    u.record("alipay", "T1", 100, payer="2088-1")
    why = reasons(router, 100, "CNY", "auth_code", "2088-1", "T1", u, auth_code=ALIPAY_CODE)
    assert why["alipay"] == "OVER_PAYER_DAILY_COUNT"


def test_terminal_daily_limit_and_count(router):
    u = Usage()
    u.record("card_acquirer_b", "T1", 250000)
    why = reasons(router, 250000, "CNY", "card", None, "T1", u)
    assert why["card_acquirer_a"] == "OVER_PAYMENT_LIMIT"
    assert why["card_acquirer_b"] == "OVER_TERMINAL_DAILY_LIMIT"
    assert names(router.route(250000, "CNY", "card", None, "T2", u)) == ["card_acquirer_b"]
    u.record("card_acquirer_b", "T1", 1)
    u.record("card_acquirer_b", "T1", 1)
    why = reasons(router, 10, "CNY", "card", None, "T1", u)
    assert why["card_acquirer_a"] == "UNDER_PAYMENT_MINIMUM"
    assert why["card_acquirer_b"] == "OVER_TERMINAL_DAILY_COUNT"


def test_none_eligible_gives_a_reason_for_every_channel(router):
    why = reasons(router, 40_000_000, "CNY", "auth_code", None, "T1", Usage(),
                  auth_code=WECHAT_CODE)
    assert list(why) == ["wechat_direct", "alipay", "wechat_bank", "unionpay_qr",
                         "card_acquirer_a", "card_acquirer_b", "cash", "members"]
    assert why == {
        "wechat_direct": "OVER_PAYMENT_LIMIT", "alipay": "CODE_NOT_THIS_CHANNEL",
        "wechat_bank": "OVER_PAYMENT_LIMIT", "unionpay_qr": "CODE_NOT_THIS_CHANNEL",
        "card_acquirer_a": "METHOD_NOT_ACCEPTED", "card_acquirer_b": "METHOD_NOT_ACCEPTED",
        "cash": "METHOD_NOT_ACCEPTED", "members": "DISABLED"}


def test_currency_reason_and_error_dict(router):
    with pytest.raises(NoEligibleChannel) as info:
        router.route(100, "EUR", "cash", None, "T1", Usage())
    d = info.value.to_dict()
    assert d["code"] == "NO_ELIGIBLE_CHANNEL"
    assert d["reasons"]["cash"] == "CURRENCY"
    assert "cash: CURRENCY" in d["message"]


def test_explain_lists_eligible_and_excluded(router):
    judged = router.explain(PaymentRequest(100, "CNY", "cash", "T1"), Usage())
    assert [(c.name, why) for c, why in judged if why is None] == [("cash", None)]
    assert len(judged) == 8


@pytest.mark.parametrize("amount, currency, method, code", [
    (0, "CNY", "cash", "BAD_AMOUNT"), (1.5, "CNY", "cash", "BAD_AMOUNT"),
    (True, "CNY", "cash", "BAD_AMOUNT"), (1, "cny", "cash", "BAD_CURRENCY"),
    (1, "CNY", "cheque", "BAD_METHOD"),
])
def test_bad_requests(router, amount, currency, method, code):
    with pytest.raises(RoutingError) as info:
        router.route(amount, currency, method, None, "T1", Usage())
    assert info.value.code == code


# --------------------------------------------------------------------------------------
# Declines
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, code, fall_back", [
    ("wechat", "FREQUENCY_LIMITED", True), ("wechat", "NOAUTH", True),
    ("wechat", "NOTENOUGH", False), ("wechat", "USERPAYING", False),
    ("wechat", "SYSTEMERROR", False), ("wechat", "ORDERPAID", False),
    ("wechat", "AUTHCODEEXPIRE", False),
    ("alipay", "ACQ.TOTAL_FEE_EXCEED", True),
    ("alipay", "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR", False),
    ("alipay", "ACQ.PAYMENT_REQUEST_HAS_RISK", False), ("alipay", "ACQ.SYSTEM_ERROR", False),
    ("card", "91", True), ("card", "96", True), ("card", "4203", True),
    ("card", "55", False), ("card", "51", False), ("card", "41", False), ("card", "43", False),
    ("card", "59", False), ("card", "61", False), ("card", "68", False),
    ("unionpay", "92", True), ("stored_value", "BALANCE_NOT_ENOUGH", False),
    # Generic words work for every kind.
    ("cash", "LIMIT_EXCEEDED", True), ("stored_value", "SYSTEM_BUSY", True),
    ("alipay", "CHANNEL_UNAVAILABLE", True), ("card", "WRONG_PASSWORD", False),
    ("wechat", "FRAUD_SUSPECTED", False),
    ("alipay", "EXCEED_LIMIT", True), ("unionpay", "USERCANCEL", False),
    ("alipay", "AUTH_CODE_EXPIRED", False),
    # Unknown codes never fall back.
    ("card", "ZZ", False), ("nonsense", "LIMIT_EXCEEDED", True), ("wechat", "", False),
])
def test_decline_table(kind, code, fall_back):
    assert should_fall_back(kind, code) is fall_back


def test_decline_categories():
    assert classify_decline("card", "43").category == "LOST_OR_STOLEN"
    assert classify_decline("wechat", "NOTENOUGH").category == "INSUFFICIENT_FUNDS"
    assert classify_decline("card", "ZZ") is None
    # Every rule's category agrees on fall-back, whichever table it is in.
    rules = [r for t in R.DECLINE_TABLE.values() for r in t.values()]
    rules += list(R.GENERIC_DECLINES.values())
    by_category = {}
    for r in rules:
        by_category.setdefault(r.category, set()).add(r.fall_back)
    assert all(len(v) == 1 for v in by_category.values())


def test_next_after_a_retryable_decline(router):
    req = PaymentRequest(1000, "CNY", "auth_code", "T1", auth_code=WECHAT_CODE)
    u = Usage()
    first = router.route_request(req, u)[0]
    assert first.name == "wechat_direct"
    nxt = router.next_after(Decline(req, u, first.name, "FREQUENCY_LIMITED"))
    assert nxt.name == "wechat_bank"
    with pytest.raises(NoEligibleChannel) as info:
        router.next_after(Decline(req, u, "wechat_bank", "LIMIT_EXCEEDED",
                                  tried=("wechat_direct",)))
    assert info.value.reasons["wechat_direct"] == "TRIED"
    assert info.value.reasons["wechat_bank"] == "TRIED"


def test_next_after_a_final_decline_is_none(router):
    req = PaymentRequest(1000, "CNY", "card", "T1")
    assert router.next_after(Decline(req, Usage(), "card_acquirer_a", "55")) is None
    assert router.next_after(Decline(req, Usage(), "card_acquirer_a", "91")).name \
        == "card_acquirer_b"
    with pytest.raises(RoutingError) as info:
        router.next_after(Decline(req, Usage(), "nope", "91"))
    assert info.value.code == "UNKNOWN_CHANNEL"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

BASE = {"kind": "card", "priority": 1, "methods": ["card"], "currency": "CNY"}


@pytest.mark.parametrize("change", [
    {"kind": "bitcoin"}, {"priority": "1"}, {"priority": True}, {"methods": []},
    {"methods": ["cheque"]}, {"currency": "cny"}, {"enabled": "yes"},
    {"max_payment_minor": -1}, {"max_payment_minor": 1.5},
    {"min_payment_minor": 10, "max_payment_minor": 5}, {"colour": "red"},
    {"methods": ["auth_code"]},                     # a card channel has no code rule
    {"code_lengths": [16]},                         # prefixes missing
    {"code_lengths": [16], "code_prefixes": [88]},
])
def test_bad_channel_config(change):
    with pytest.raises(ConfigError) as info:
        Router.from_config({"c": {**BASE, **change}})
    assert info.value.code == "BAD_CONFIG"


def test_config_as_list_duplicates_and_custom_code_rule():
    r = Router.from_config([{**BASE, "name": "a"},
                            {**BASE, "name": "sv", "kind": "stored_value",
                             "methods": ["auth_code"], "code_lengths": [16],
                             "code_prefixes": ["88"]}])
    got = r.route(100, "CNY", "auth_code", None, "T1", Usage(), auth_code="8812345678901234")
    assert names(got) == ["sv"]
    with pytest.raises(ConfigError):
        Router.from_config([{**BASE, "name": "a"}, {**BASE, "name": "a"}])
    with pytest.raises(ConfigError):
        Router.from_config([{**BASE}])               # no name
    assert r.by_name["a"].to_dict()["methods"] == ["card"]


def test_equal_priorities_keep_config_order():
    r = Router.from_config({"z": BASE, "a": BASE, "m": {**BASE, "priority": 0}})
    assert names(r.channels) == ["m", "z", "a"]
