"""Payment channels and routing: which channel takes a payment, in which order, and
whether a decline may be tried on the next one.

A *channel* is one contract through which money can be taken — WeChat Pay through the
store's own merchant id, WeChat Pay through an acquiring bank, a card acquirer, the
kiosk's cash drawer, member stored value — with its own limits. Routing is pure: the
caller supplies today's totals (:class:`Usage`) and gets back the eligible channels in
priority order, or :class:`NoEligibleChannel` saying why each channel was passed over.

Configuration (a dict, e.g. the tables of a TOML file; nothing here reads files)::

    [wechat_direct]
    kind = "wechat"                 # wechat | alipay | unionpay | card | cash | stored_value
    priority = 10                   # lower goes first; equal priorities keep config order
    methods = ["auth_code", "qr"]   # auth_code | card | cash | qr | stored_value
    currency = "CNY"                # ISO 4217 alphabetic
    enabled = true                  # optional, default true
    min_payment_minor = 1           # optional limits, minor units; absent = no limit
    max_payment_minor = 50000
    payer_daily_max_minor = 200000
    terminal_daily_max_minor = 5000000
    payer_daily_count = 20          # optional counts of payments per day
    terminal_daily_count = 2000
    # optional, for an auth_code channel whose kind has no built-in rule:
    code_lengths = [16]
    code_prefixes = ["88"]

Customer payment codes (method ``auth_code``) are matched to channels by length and
prefix (:data:`CODE_RULES`, from the providers' own API documentation):
WeChat Pay 18 digits beginning 10–15 (``micropay`` ``auth_code``); Alipay 16–24
digits beginning 25–30 (``alipay.trade.pay`` ``auth_code``); UnionPay QR 19 digits
beginning 62. A WeChat code can only ever go to a WeChat channel, so falling back on
an ``auth_code`` payment means another channel *of the same kind* (another acquirer).

Declines: :func:`should_fall_back` answers from :data:`DECLINE_TABLE` whether a
provider's decline code may be tried on the next channel. The rule is that a refusal
*by the channel* (its limit, its outage, its contract) may go elsewhere, and a refusal
*about the payer* (wrong password, no funds, the payer's own limit, a lost card,
fraud) may not: it follows the payer to every channel, and trying it again is what a
fraudster would want. A result that is not known (``USERPAYING``, a system error
during a charge) is never a fall-back: the ledger queries and reverses it first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lanecore.core.errors import ConfigError, LanecoreError

__all__ = [
    "KINDS", "METHODS", "REASONS", "CODE_RULES", "CodeRule", "Channel", "Usage",
    "PaymentRequest", "Decline", "DeclineRule", "DECLINE_TABLE", "GENERIC_DECLINES",
    "Router", "RoutingError", "NoEligibleChannel", "classify_auth_code",
    "classify_decline", "should_fall_back", "parse_channels",
]

KINDS = ("wechat", "alipay", "unionpay", "card", "cash", "stored_value")
#: The ledger's payment methods (``lanecore.core.pay.ledger.METHODS``).
METHODS = ("auth_code", "card", "cash", "qr", "stored_value")

#: Why a channel was passed over, in the order they are checked (the first that
#: applies is reported).
REASONS = (
    "DISABLED",                   # enabled = false
    "TRIED",                      # this payment already went to it and was declined
    "CURRENCY",                   # the channel settles another currency
    "METHOD_NOT_ACCEPTED",        # e.g. a card on a wallet channel
    "CODE_NOT_THIS_CHANNEL",      # the shopper's code belongs to another kind of channel
    "UNDER_PAYMENT_MINIMUM",      # amount < min_payment_minor
    "OVER_PAYMENT_LIMIT",         # amount > max_payment_minor
    "OVER_PAYER_DAILY_LIMIT",     # payer's total today + amount > payer_daily_max_minor
    "OVER_PAYER_DAILY_COUNT",     # payer's payments today + 1 > payer_daily_count
    "OVER_TERMINAL_DAILY_LIMIT",  # terminal's total today + amount > terminal_daily_max_minor
    "OVER_TERMINAL_DAILY_COUNT",  # terminal's payments today + 1 > terminal_daily_count
)

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RoutingError(LanecoreError):
    """A request routing cannot judge: ``BAD_AUTH_CODE`` (method ``auth_code``
    without a code of digits), ``BAD_AMOUNT``, ``BAD_CURRENCY``, ``BAD_METHOD``,
    ``UNKNOWN_CHANNEL``."""


class NoEligibleChannel(LanecoreError):
    """No channel can take the payment. ``reasons`` maps every configured channel, in
    priority order, to the code of :data:`REASONS` that excluded it."""

    code = "NO_ELIGIBLE_CHANNEL"

    def __init__(self, reasons: dict[str, str]):
        text = "; ".join(f"{name}: {why}" for name, why in reasons.items()) or "no channels"
        super().__init__(f"no channel can take this payment ({text})")
        self.reasons = dict(reasons)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["reasons"] = dict(self.reasons)
        return out


# --------------------------------------------------------------------------------------
# Customer payment codes
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodeRule:
    """A customer payment code of this channel: all digits, one of ``lengths``,
    beginning with one of ``prefixes``."""

    lengths: frozenset[int]
    prefixes: tuple[str, ...]

    def matches(self, code: str) -> bool:
        return (len(code) in self.lengths and code.isdigit() and code.isascii()
                and code.startswith(self.prefixes))


#: Built-in code rules per channel kind (WeChat Pay micropay, Alipay trade.pay,
#: UnionPay QR). The prefix ranges do not overlap, so a code names one kind at most.
CODE_RULES: dict[str, CodeRule] = {
    "wechat": CodeRule(frozenset({18}), tuple(str(p) for p in range(10, 16))),
    "alipay": CodeRule(frozenset(range(16, 25)), tuple(str(p) for p in range(25, 31))),
    "unionpay": CodeRule(frozenset({19}), ("62",)),
}


def classify_auth_code(code: str) -> str | None:
    """The channel kind a shopper's payment code belongs to by the built-in rules
    (``wechat``, ``alipay``, ``unionpay``), or None."""
    for kind, rule in CODE_RULES.items():
        if isinstance(code, str) and rule.matches(code):
            return kind
    return None


# --------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------

_LIMIT_FIELDS = ("min_payment_minor", "max_payment_minor", "payer_daily_max_minor",
                 "terminal_daily_max_minor", "payer_daily_count", "terminal_daily_count")
_FIELDS = {"name", "kind", "priority", "methods", "currency", "enabled", "code_lengths",
           "code_prefixes", *_LIMIT_FIELDS}


@dataclass(frozen=True)
class Channel:
    """One payment channel. Money in minor units of ``currency``; a limit of None is no
    limit. ``order`` is its place in the configuration (ties of ``priority``)."""

    name: str
    kind: str
    priority: int
    methods: frozenset[str]
    currency: str
    enabled: bool = True
    min_payment_minor: int | None = None
    max_payment_minor: int | None = None
    payer_daily_max_minor: int | None = None
    terminal_daily_max_minor: int | None = None
    payer_daily_count: int | None = None
    terminal_daily_count: int | None = None
    code_rule: CodeRule | None = None
    order: int = 0

    @classmethod
    def from_dict(cls, table: Mapping, name: str | None = None, order: int = 0) -> "Channel":
        """A channel from a configuration table; ConfigError (``BAD_CONFIG``) naming
        the field that is wrong."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"channel {name!r} must be a table")
        name = table.get("name", name)
        where = f"channels.{name}"
        if not (isinstance(name, str) and _NAME.match(name)):
            raise ConfigError(f"{where}: name must be 1-64 characters A-Z a-z 0-9 _ . -")
        unknown = set(table) - _FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        kind = table.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(KINDS)}")
        priority = table.get("priority")
        if not _is_int(priority):
            raise ConfigError(f"{where}.priority must be an integer")
        methods = table.get("methods")
        if (not isinstance(methods, (list, tuple)) or not methods
                or any(m not in METHODS for m in methods)):
            raise ConfigError(f"{where}.methods must be a non-empty list of "
                              f"{', '.join(METHODS)}")
        currency = table.get("currency")
        if not (isinstance(currency, str) and _CURRENCY.match(currency)):
            raise ConfigError(f"{where}.currency must be an ISO 4217 code such as CNY")
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}.enabled must be true or false")
        limits = {}
        for key in _LIMIT_FIELDS:
            value = table.get(key)
            if value is not None and (not _is_int(value) or value < 0):
                raise ConfigError(f"{where}.{key} must be an integer ≥ 0")
            limits[key] = value
        if (limits["min_payment_minor"] is not None and limits["max_payment_minor"] is not None
                and limits["min_payment_minor"] > limits["max_payment_minor"]):
            raise ConfigError(f"{where}: min_payment_minor is above max_payment_minor")
        rule = CODE_RULES.get(kind)
        if "code_lengths" in table or "code_prefixes" in table:
            lengths, prefixes = table.get("code_lengths"), table.get("code_prefixes")
            if (not isinstance(lengths, list) or not lengths
                    or not all(_is_int(n) and 1 <= n <= 64 for n in lengths)):
                raise ConfigError(f"{where}.code_lengths must be a list of lengths 1-64")
            if (not isinstance(prefixes, list) or not prefixes
                    or not all(isinstance(p, str) and p.isdigit() for p in prefixes)):
                raise ConfigError(f"{where}.code_prefixes must be a list of digit strings")
            rule = CodeRule(frozenset(lengths), tuple(prefixes))
        if "auth_code" in methods and rule is None:
            raise ConfigError(f"{where}: a {kind} channel taking auth_code needs "
                              "code_lengths and code_prefixes")
        return cls(name=name, kind=kind, priority=priority, methods=frozenset(methods),
                   currency=currency, enabled=enabled, code_rule=rule, order=order, **limits)

    def to_dict(self) -> dict:
        """The channel as ``pay.quote`` shows it."""
        out = {"name": self.name, "kind": self.kind, "priority": self.priority,
               "methods": sorted(self.methods), "currency": self.currency,
               "enabled": self.enabled}
        out.update({k: getattr(self, k) for k in _LIMIT_FIELDS if getattr(self, k) is not None})
        return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_channels(config) -> list[Channel]:
    """Channels from configuration: a map ``{name: table}`` (TOML ``[channels.NAME]``
    tables), or a list of tables that each carry ``name``. Names must be unique."""
    if isinstance(config, Mapping):
        items = list(config.items())
    elif isinstance(config, (list, tuple)):
        items = [(t.get("name") if isinstance(t, Mapping) else None, t) for t in config]
    else:
        raise ConfigError("channels must be a table of tables or a list of tables")
    channels = [Channel.from_dict(t, name, i) for i, (name, t) in enumerate(items)]
    seen: set[str] = set()
    for ch in channels:
        if ch.name in seen:
            raise ConfigError(f"channel {ch.name!r} is configured twice")
        seen.add(ch.name)
    return channels


# --------------------------------------------------------------------------------------
# Today's usage, supplied by the caller
# --------------------------------------------------------------------------------------

@dataclass
class Usage:
    """Today's totals per channel: ``payer[(channel, payer)]`` and
    ``terminal[(channel, terminal)]`` are ``(amount_minor, count)``.

    The gateway fills it from the ledger. Count charges that are paid *and* those
    still open (sent, unknown, queried): an unknown result may yet be a deduction, and
    leaving it out would let a payer past the cap while it is being queried."""

    payer: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    terminal: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def record(self, channel: str, terminal: str, amount_minor: int,
               payer: str | None = None) -> None:
        """Add one payment of ``amount_minor`` to today's totals."""
        for table, who in ((self.terminal, terminal), (self.payer, payer)):
            if who is not None:
                amount, count = table.get((channel, who), (0, 0))
                table[(channel, who)] = (amount + amount_minor, count + 1)

    def payer_today(self, channel: str, payer: str | None) -> tuple[int, int]:
        """``(amount_minor, count)`` the payer has paid through ``channel`` today."""
        return self.payer.get((channel, payer), (0, 0)) if payer is not None else (0, 0)

    def terminal_today(self, channel: str, terminal: str) -> tuple[int, int]:
        """``(amount_minor, count)`` the terminal has taken through ``channel`` today."""
        return self.terminal.get((channel, terminal), (0, 0))


# --------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaymentRequest:
    """What is to be paid: ``amount_minor`` (minor units of ``currency``) by
    ``method``, at ``terminal``, by ``payer`` (None when anonymous: payer limits do not
    apply), with the shopper's ``auth_code`` when the method is ``auth_code``."""

    amount_minor: int
    currency: str
    method: str
    terminal: str
    payer: str | None = None
    auth_code: str | None = None

    def check(self) -> None:
        """RoutingError for a request no channel could judge."""
        if not _is_int(self.amount_minor) or self.amount_minor <= 0:
            raise RoutingError(f"amount_minor must be a positive integer, got "
                               f"{self.amount_minor!r}", code="BAD_AMOUNT")
        if not (isinstance(self.currency, str) and _CURRENCY.match(self.currency)):
            raise RoutingError(f"currency must be an ISO 4217 code, got {self.currency!r}",
                               code="BAD_CURRENCY")
        if self.method not in METHODS:
            raise RoutingError(f"method must be one of {', '.join(METHODS)}",
                               code="BAD_METHOD")
        if self.method == "auth_code" and not (isinstance(self.auth_code, str)
                                               and self.auth_code.isdigit()
                                               and self.auth_code.isascii()):
            raise RoutingError("an auth_code payment needs the shopper's code, digits only",
                               code="BAD_AUTH_CODE")


@dataclass(frozen=True)
class Decline:
    """A channel's decline of ``request``: the provider's ``code`` from ``channel``.
    ``tried`` names the channels this payment has already been declined on (this one
    is added by the router)."""

    request: PaymentRequest
    usage: Usage
    channel: str
    code: str
    tried: tuple[str, ...] = ()


class Router:
    """The configured channels and the routing rules over them."""

    def __init__(self, channels: Iterable[Channel]) -> None:
        self.channels = sorted(channels, key=lambda c: (c.priority, c.order))
        self.by_name = {c.name: c for c in self.channels}

    @classmethod
    def from_config(cls, config) -> "Router":
        """A router from a channels table (see :func:`parse_channels`)."""
        return cls(parse_channels(config))

    def reason(self, ch: Channel, req: PaymentRequest, usage: Usage,
               tried: Sequence[str] = ()) -> str | None:
        """Why ``ch`` cannot take ``req`` (a code of :data:`REASONS`), or None."""
        if not ch.enabled:
            return "DISABLED"
        if ch.name in tried:
            return "TRIED"
        if ch.currency != req.currency:
            return "CURRENCY"
        if req.method not in ch.methods:
            return "METHOD_NOT_ACCEPTED"
        if req.method == "auth_code" and not (ch.code_rule and ch.code_rule.matches(req.auth_code)):
            return "CODE_NOT_THIS_CHANNEL"
        amount = req.amount_minor
        if ch.min_payment_minor is not None and amount < ch.min_payment_minor:
            return "UNDER_PAYMENT_MINIMUM"
        if ch.max_payment_minor is not None and amount > ch.max_payment_minor:
            return "OVER_PAYMENT_LIMIT"
        if req.payer is not None:
            paid, count = usage.payer_today(ch.name, req.payer)
            if ch.payer_daily_max_minor is not None and paid + amount > ch.payer_daily_max_minor:
                return "OVER_PAYER_DAILY_LIMIT"
            if ch.payer_daily_count is not None and count + 1 > ch.payer_daily_count:
                return "OVER_PAYER_DAILY_COUNT"
        taken, count = usage.terminal_today(ch.name, req.terminal)
        if (ch.terminal_daily_max_minor is not None
                and taken + amount > ch.terminal_daily_max_minor):
            return "OVER_TERMINAL_DAILY_LIMIT"
        if ch.terminal_daily_count is not None and count + 1 > ch.terminal_daily_count:
            return "OVER_TERMINAL_DAILY_COUNT"
        return None

    def explain(self, req: PaymentRequest, usage: Usage,
                tried: Sequence[str] = ()) -> list[tuple[Channel, str | None]]:
        """Every channel in priority order with the reason it is passed over (None:
        eligible) — what ``pay.quote`` shows."""
        req.check()
        return [(ch, self.reason(ch, req, usage, tried)) for ch in self.channels]

    def route_request(self, req: PaymentRequest, usage: Usage,
                      tried: Sequence[str] = ()) -> list[Channel]:
        """The eligible channels for ``req`` in priority order (first = the one to
        use); NoEligibleChannel with every channel's reason when there is none."""
        judged = self.explain(req, usage, tried)
        eligible = [ch for ch, why in judged if why is None]
        if not eligible:
            raise NoEligibleChannel({ch.name: why for ch, why in judged})
        return eligible

    def route(self, amount_minor: int, currency: str, method: str, payer: str | None,
              terminal: str, usage: Usage, *, auth_code: str | None = None) -> list[Channel]:
        """:meth:`route_request` with the request's fields spelt out."""
        return self.route_request(PaymentRequest(amount_minor, currency, method, terminal,
                                                 payer, auth_code), usage)

    def next_after(self, decline: Decline) -> Channel | None:
        """Where a declined payment goes next: the first eligible channel it has not
        been declined on, or None when the decline is final (:func:`should_fall_back`
        says no — report it to the shopper). NoEligibleChannel when the decline may
        fall back but no channel is left (the declined ones show as ``TRIED``)."""
        try:
            kind = self.by_name[decline.channel].kind
        except KeyError:
            raise RoutingError(f"no channel {decline.channel!r}",
                               code="UNKNOWN_CHANNEL") from None
        if not should_fall_back(kind, decline.code):
            return None
        tried = (*decline.tried, decline.channel)
        return self.route_request(decline.request, decline.usage, tried)[0]


# --------------------------------------------------------------------------------------
# Declines
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeclineRule:
    """What a decline code means: a ``category`` and whether the payment may be tried
    on the next channel."""

    category: str
    fall_back: bool


_CHANNEL_LIMIT = DeclineRule("CHANNEL_LIMIT", True)        # the channel's own cap
_UNAVAILABLE = DeclineRule("CHANNEL_UNAVAILABLE", True)    # outage, busy, definitely not charged
_NOT_PERMITTED = DeclineRule("CHANNEL_NOT_PERMITTED", True)  # this contract cannot do it
_PAYER_LIMIT = DeclineRule("PAYER_LIMIT", False)           # the payer's own cap
_NO_FUNDS = DeclineRule("INSUFFICIENT_FUNDS", False)
_BAD_PIN = DeclineRule("WRONG_PASSWORD", False)
_LOST = DeclineRule("LOST_OR_STOLEN", False)
_FRAUD = DeclineRule("FRAUD", False)
_REFUSED = DeclineRule("PAYER_REFUSED", False)             # issuer/wallet refuses this payer
_BAD_CODE = DeclineRule("BAD_CODE", False)                 # invalid/expired code: ask again
_UNKNOWN = DeclineRule("RESULT_UNKNOWN", False)            # query, then reverse
_DONE = DeclineRule("ALREADY_SETTLED", False)              # the trade exists: never charge again
_REQUEST = DeclineRule("REQUEST_ERROR", False)             # our request is wrong: fix it

#: Kind-independent codes, for providers and simulators that speak lanecore's words.
GENERIC_DECLINES: dict[str, DeclineRule] = {
    "LIMIT_EXCEEDED": _CHANNEL_LIMIT, "CHANNEL_UNAVAILABLE": _UNAVAILABLE,
    "SYSTEM_BUSY": _UNAVAILABLE, "NOT_PERMITTED": _NOT_PERMITTED,
    "PAYER_LIMIT_EXCEEDED": _PAYER_LIMIT, "INSUFFICIENT_FUNDS": _NO_FUNDS,
    "WRONG_PASSWORD": _BAD_PIN, "LOST_OR_STOLEN": _LOST, "FRAUD_SUSPECTED": _FRAUD,
    "DO_NOT_HONOUR": _REFUSED, "CODE_INVALID": _BAD_CODE, "CODE_EXPIRED": _BAD_CODE,
    "USER_PAYING": _UNKNOWN, "TIMEOUT": _UNKNOWN, "ORDER_PAID": _DONE,
    "BAD_REQUEST": _REQUEST,
    # A channel whose records live in a database it cannot reach (stored value kept in
    # the chain's PostgreSQL database): refused before anything was taken.
    "DB_UNAVAILABLE": _UNAVAILABLE,
    # The words of lanecore's provider simulators (gateway/payments/providers.py), which are
    # WeChat's where WeChat has one.
    "EXCEED_LIMIT": _CHANNEL_LIMIT, "USERCANCEL": DeclineRule("PAYER_CANCELLED", False),
    "AUTH_CODE_INVALID": _BAD_CODE, "AUTH_CODE_EXPIRED": _BAD_CODE,
}

#: Provider decline codes per channel kind. WeChat Pay ``micropay`` err_code, Alipay
#: ``alipay.trade.pay`` sub_code, ISO 8583 response codes for UnionPay and card
#: acquirers (two digits), and stored value's own codes. Codes not listed here nor in
#: :data:`GENERIC_DECLINES` do not fall back: an unknown refusal is treated as one
#: about the payer.
DECLINE_TABLE: dict[str, dict[str, DeclineRule]] = {
    "wechat": {
        "NOTENOUGH": _NO_FUNDS, "NOTSUPORTCARD": _REFUSED, "BUYER_MISMATCH": _REFUSED,
        "AUTHCODEEXPIRE": _BAD_CODE, "AUTH_CODE_INVALID": _BAD_CODE,
        "AUTH_CODE_ERROR": _BAD_CODE, "USERPAYING": _UNKNOWN, "SYSTEMERROR": _UNKNOWN,
        "BANKERROR": _UNKNOWN, "ORDERPAID": _DONE, "OUT_TRADE_NO_USED": _DONE,
        "ORDERCLOSED": _DONE, "ORDERREVERSED": _DONE, "NOAUTH": _NOT_PERMITTED,
        "TRADE_ERROR": _FRAUD, "PARAM_ERROR": _REQUEST, "SIGNERROR": _REQUEST,
        "LACK_PARAMS": _REQUEST, "XML_FORMAT_ERROR": _REQUEST,
        "FREQUENCY_LIMITED": _UNAVAILABLE,
    },
    "alipay": {
        "ACQ.SYSTEM_ERROR": _UNKNOWN, "ACQ.TRADE_HAS_SUCCESS": _DONE,
        "ACQ.TRADE_HAS_CLOSE": _DONE, "ACQ.BUYER_BALANCE_NOT_ENOUGH": _NO_FUNDS,
        "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": _NO_FUNDS,
        "ACQ.PAYMENT_AUTH_CODE_INVALID": _BAD_CODE, "ACQ.TOTAL_FEE_EXCEED": _CHANNEL_LIMIT,
        "ACQ.BEYOND_PER_RECEIPT_RESTRICTION": _CHANNEL_LIMIT,
        "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR": _PAYER_LIMIT,
        "ACQ.BUYER_PAYMENT_AMOUNT_MONTH_LIMIT_ERROR": _PAYER_LIMIT,
        "ACQ.BEYOND_PAY_RESTRICTION": _PAYER_LIMIT,
        "ACQ.ERROR_BUYER_CERTIFY_LEVEL_LIMIT": _PAYER_LIMIT,
        "ACQ.PAYMENT_REQUEST_HAS_RISK": _FRAUD, "ACQ.BUYER_ENABLE_STATUS_FORBID": _REFUSED,
        "ACQ.NO_PAYMENT_INSTRUMENTS_AVAILABLE": _NO_FUNDS,
        "ACQ.ACCESS_FORBIDDEN": _NOT_PERMITTED, "ACQ.SELLER_BEEN_BLOCKED": _NOT_PERMITTED,
        "ACQ.INVALID_PARAMETER": _REQUEST, "ACQ.CONTEXT_INCONSISTENT": _REQUEST,
    },
    "unionpay": {},   # filled below with the ISO 8583 codes
    "card": {},
    "stored_value": {
        "BALANCE_NOT_ENOUGH": _NO_FUNDS, "ACCOUNT_FROZEN": _REFUSED,
        "WRONG_PASSWORD": _BAD_PIN,
    },
    "cash": {},       # cash is not declined by a provider: NO_EXACT_CHANGE is the drawer's
}

# ISO 8583 response codes, as card acquirers and UnionPay return them.
_ISO8583: dict[str, DeclineRule] = {
    "05": _REFUSED, "12": _REQUEST, "13": _REQUEST, "14": _REFUSED, "54": _REFUSED,
    "57": _REFUSED, "62": _REFUSED, "04": _LOST, "07": _LOST, "41": _LOST, "43": _LOST,
    "34": _FRAUD, "59": _FRAUD, "51": _NO_FUNDS, "55": _BAD_PIN, "75": _BAD_PIN,
    "61": _PAYER_LIMIT, "65": _PAYER_LIMIT, "58": _NOT_PERMITTED, "92": _UNAVAILABLE,
    "91": _UNAVAILABLE, "96": _UNAVAILABLE, "68": _UNKNOWN, "94": _DONE,
    # Worldline terminal floor-limit refusals (REFERENCE §3): the terminal's cap.
    "4203": _CHANNEL_LIMIT, "4204": _CHANNEL_LIMIT,
}
DECLINE_TABLE["card"].update(_ISO8583)
DECLINE_TABLE["unionpay"].update(_ISO8583)


def classify_decline(channel_kind: str, decline_code: str) -> DeclineRule | None:
    """The rule for a provider's decline code on a channel of ``channel_kind``: the
    kind's own table first, then :data:`GENERIC_DECLINES`; None when unknown."""
    table = DECLINE_TABLE.get(channel_kind, {})
    return table.get(decline_code) or GENERIC_DECLINES.get(decline_code)


def should_fall_back(channel_kind: str, decline_code: str) -> bool:
    """True when a payment declined with ``decline_code`` on a ``channel_kind`` channel
    may be tried on the next eligible channel (the refusal was the channel's, nothing
    was taken); False for refusals about the payer, unknown results and unknown codes."""
    rule = classify_decline(channel_kind, decline_code)
    return rule is not None and rule.fall_back
