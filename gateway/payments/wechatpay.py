"""WeChat Pay over its own API v2 (XML over HTTPS): the connector of a ``wechat``
channel with ``protocol = "wechatpay-v2"`` (``docs/pay/wechatpay.md``).

Why v2: paying by the shopper's payment code (付款码, ``/pay/micropay``) is a v2 API
for ordinary merchants. Every request and answer is a flat ``<xml>`` document signed
with the merchant's API key (:func:`sign`: the non-empty fields but ``sign`` sorted by
name, ``&key=KEY`` appended, HMAC-SHA256 keyed with the API key — or MD5 —, upper-case
hex). Cancelling (``/secapi/pay/reverse``) and refunding (``/secapi/pay/refund``) go
over mutual TLS with the merchant's API client certificate.

Calls used:

* ``/pay/micropay`` — charge by payment code (``auth_code``); ``USERPAYING``,
  ``SYSTEMERROR`` and ``BANKERROR`` leave it unknown (the gateway polls ``query``);
* ``/pay/orderquery`` — the trade's ``trade_state`` (:data:`TRADE_STATES`);
* ``/secapi/pay/reverse`` — cancel a payment-code trade (paid: given back; unpaid:
  closed for good); ``/pay/closeorder`` — close an unpaid native order;
* ``/secapi/pay/refund`` and ``/pay/refundquery`` — refunds, keyed by
  ``out_refund_no`` (our ``refund_ref``);
* ``/pay/unifiedorder`` with ``trade_type`` ``NATIVE`` — a merchant-presented QR
  (:meth:`WechatPayConnector.precreate`, ``code_url``); its payment notification is
  read by :meth:`WechatPayConnector.notification`;
* ``/pay/downloadbill`` (``bill_type`` ``ALL``) — the day's bill in WeChat's format,
  read by :meth:`WechatPayConnector.bill_rows`.

An answer whose signature, ``appid`` or ``mch_id`` does not verify is never trusted:
it counts as no answer (``unknown``, code ``BAD_SIGNATURE``; the gateway queries
later) and a warning is logged. Nothing secret is logged: no API key, signature
input, payment code or key file content.

XML from the network is parsed with ``defusedxml`` (no entities, no DTDs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from xml.etree.ElementTree import ParseError

from lanecore.gateway.payments.httpapi import (HttpsClient, ThreadedConnector,
                                               read_key_file, resolve_path)
from lanecore.gateway.payments.providers import (BillFile, ProviderError, ProviderResult,
                                                 _check_amount, _check_money, _check_ref)

__all__ = ["PROTOCOL", "SIGN_TYPES", "API_PATHS", "ERR_CODES", "TRADE_STATES",
           "BILL_HEADER", "BILL_SUMMARY_HEADER", "sign", "verify", "to_xml", "from_xml",
           "nonce", "yuan", "fen", "WechatPayConnector", "from_config", "parse_bill",
           "render_bill"]

log = logging.getLogger("lanecore.wechatpay")

PROTOCOL = "wechatpay-v2"
#: The signature types of the v2 security spec; HMAC-SHA256 is this connector's default.
SIGN_TYPES = ("HMAC-SHA256", "MD5")
#: The live API's origin.
LIVE_ENDPOINT = "https://api.mch.weixin.qq.com"
#: op → path. ``/secapi/`` paths need the merchant's API client certificate.
API_PATHS = {
    "micropay": "/pay/micropay", "orderquery": "/pay/orderquery",
    "reverse": "/secapi/pay/reverse", "closeorder": "/pay/closeorder",
    "refund": "/secapi/pay/refund", "refundquery": "/pay/refundquery",
    "unifiedorder": "/pay/unifiedorder", "downloadbill": "/pay/downloadbill",
}
#: Largest XML document parsed (a bill is text, not XML).
MAX_XML = 1 << 20
#: WeChat's out_trade_no / out_refund_no: up to 32 of these characters.
_OUT_NO = re.compile(r"^[A-Za-z0-9_\-|*@]{1,32}$")
_AUTH_CODE = re.compile(r"^[0-9]{10,32}$")
_TZ = timezone(timedelta(hours=8))          # WeChat's times are Beijing time
#: WeChat Pay's bill days are Beijing time days (the gateway reconciles each against
#: the ledger's same day: core.pay.ledger.day_rows)
BILL_UTC_OFFSET_S = 8 * 3600

#: WeChat Pay's ``err_code`` (``result_code`` FAIL) → (the code lanecore reports —
#: the wallet decline table's word where it has one, ``providers.DECLINES`` —, the
#: outcome, what it means). ``unknown``: the trade may exist, query it; ``query``:
#: the answer is the trade's state (asked at once); ``failed``: final. An
#: ``err_code`` not listed is ``failed`` under its own name.
ERR_CODES: dict[str, tuple[str, str, str]] = {
    "USERPAYING": ("USERPAYING", "unknown", "the shopper is entering the password: poll"),
    "SYSTEMERROR": ("SYSTEMERROR", "unknown", "WeChat's error, the result is unknown: query"),
    "BANKERROR": ("BANKERROR", "unknown", "the shopper's bank failed: query"),
    "BIZERR_NEED_RETRY": ("SYSTEMERROR", "unknown", "refund refused under load: send again"),
    "ORDERPAID": ("ORDERPAID", "query", "this out_trade_no is paid: its first result"),
    "ORDERCLOSED": ("ORDERCLOSED", "failed", "the order was closed: use a new attempt"),
    "ORDERREVERSED": ("ORDERCLOSED", "failed", "the order was reversed: use a new attempt"),
    "AUTHCODEEXPIRE": ("AUTH_CODE_EXPIRED", "failed", "the payment code expired"),
    "AUTH_CODE_INVALID": ("AUTH_CODE_INVALID", "failed", "not a WeChat payment code"),
    "AUTH_CODE_ERROR": ("AUTH_CODE_INVALID", "failed", "the payment code is malformed"),
    "NOTENOUGH": ("NOTENOUGH", "failed", "the shopper's balance is too low"),
    "NOTSUPORTCARD": ("NOTSUPORTCARD", "failed", "the shopper's card cannot pay this"),
    "BUYER_MISMATCH": ("BUYER_MISMATCH", "failed", "another payer than the order's"),
    "TRADE_ERROR": ("TRADE_ERROR", "failed", "refused by WeChat's risk control"),
    "OUT_TRADE_NO_USED": ("OUT_TRADE_NO_USED", "failed", "out_trade_no used with other terms"),
    "EXCEED_LIMIT": ("EXCEED_LIMIT", "failed", "over the merchant's per-payment limit "
                     "(no v2 err_code is documented for it; the simulator's word)"),
    "NOAUTH": ("NOAUTH", "failed", "the merchant may not use this API"),
    "ORDERNOTEXIST": ("ORDERNOTEXIST", "failed", "no such order"),
    "REFUNDNOTEXIST": ("REFUNDNOTEXIST", "failed", "no such refund"),
    "REVERSE_EXPIRE": ("REVERSE_EXPIRE", "failed", "too old to reverse (7 days): refund it"),
    "INVALID_REQUEST": ("INVALID_REQUEST", "failed", "the order's state forbids this"),
    "PARAM_ERROR": ("PARAM_ERROR", "failed", "a field of the request is wrong"),
    "LACK_PARAMS": ("LACK_PARAMS", "failed", "a required field is missing"),
    "SIGNERROR": ("SIGNERROR", "failed", "the request's signature is wrong"),
    "XML_FORMAT_ERROR": ("XML_FORMAT_ERROR", "failed", "the request is not WeChat's XML"),
    "APPID_MCHID_NOT_MATCH": ("APPID_MCHID_NOT_MATCH", "failed", "appid is not mch_id's"),
    "FREQUENCY_LIMITED": ("FREQUENCY_LIMITED", "failed", "too many requests"),
}
#: ``/pay/refund``'s catch-all ``ERROR``: its ``err_code_des`` says which it is.
REFUND_ERROR_DES = (("大于", "REFUND_EXCEEDS_PAID"), ("不一致", "REFUND_REF_USED"))
#: ``/pay/orderquery``'s ``trade_state`` → (connector status, code).
TRADE_STATES: dict[str, tuple[str, str | None]] = {
    "SUCCESS": ("paid", None),
    "REFUND": ("refunded", None),
    "NOTPAY": ("unknown", "USERPAYING"),      # a native order waiting for the scan
    "USERPAYING": ("unknown", "USERPAYING"),  # the shopper is entering the password
    "ACCEPT": ("unknown", "USERPAYING"),      # accepted, waiting for the debit
    "CLOSED": ("reversed", "ORDERCLOSED"),    # closed: can never be paid
    "REVOKED": ("reversed", None),            # reversed (a payment-code trade)
    "PAYERROR": ("failed", "PAYERROR"),       # the payment failed (cancelled, bank)
}
#: ``return_msg`` of a refused request (``return_code`` FAIL: nothing was processed)
#: → code; any other FAIL is unknown.
RETURN_FAIL = (("签名", "SIGNERROR"), ("XML", "XML_FORMAT_ERROR"), ("参数", "PARAM_ERROR"))

#: The ALL bill's header line and its summary's (``/pay/downloadbill``).
BILL_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,"
               "交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,"
               "商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
               "手续费,费率,订单金额,申请退款金额,费率备注")
BILL_SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
_COLS = BILL_HEADER.split(",")
_C = {name: i for i, name in enumerate(_COLS)}


# -- signing ---------------------------------------------------------------------------
def _sign_input(params: dict, key: str) -> bytes:
    items = sorted((str(k), str(v)) for k, v in params.items()
                   if k != "sign" and v is not None and str(v) != "")
    return ("&".join(f"{k}={v}" for k, v in items) + f"&key={key}").encode("utf-8")


def sign(params: dict, key: str, sign_type: str = "HMAC-SHA256") -> str:
    """The v2 signature of ``params``: every field with a non-empty value except
    ``sign``, sorted by name (ASCII), joined as ``k=v&…``, ``&key=KEY`` appended;
    HMAC-SHA256 keyed with ``key`` (or MD5), upper-case hex."""
    data = _sign_input(params, key)
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest().upper()
    if sign_type == "MD5":
        return hashlib.md5(data).hexdigest().upper()
    raise ProviderError(f"sign_type is one of {', '.join(SIGN_TYPES)}, got {sign_type!r:.40}",
                        code="BAD_SIGN_TYPE")


def verify(params: dict, key: str, sign_type: str | None = None) -> bool:
    """Whether ``params['sign']`` is the signature of ``params`` (constant-time).
    ``sign_type``: the one expected; default the document's own ``sign_type`` field,
    else MD5 (the v2 default)."""
    got = params.get("sign")
    st = sign_type or params.get("sign_type") or "MD5"
    if not isinstance(got, str) or st not in SIGN_TYPES:
        return False
    return hmac.compare_digest(got.encode("ascii", "replace"),
                               sign(params, key, st).encode("ascii"))


def nonce() -> str:
    """A ``nonce_str``: 32 random letters and digits."""
    return secrets.token_hex(16)


# -- XML ---------------------------------------------------------------------------------
def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def to_xml(params: dict) -> bytes:
    """``<xml><k><![CDATA[v]]></k>…</xml>`` (UTF-8), the fields in their order."""
    parts = ["<xml>"]
    for k, v in params.items():
        if v is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)):
            raise ProviderError(f"{k!r:.40} is not an XML field name", code="BAD_REQUEST")
        parts.append(f"<{k}>{_cdata(str(v))}</{k}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")


def from_xml(body: bytes | str) -> dict[str, str]:
    """The fields of a flat ``<xml>`` document (parsed with defusedxml: no DTD, no
    entities). ProviderError ``BAD_XML`` for anything else."""
    from defusedxml import ElementTree as DET
    from defusedxml.common import DefusedXmlException
    if isinstance(body, str):
        body = body.encode("utf-8")
    if len(body) > MAX_XML:
        raise ProviderError("an XML document over 1 MiB", code="BAD_XML")
    try:
        root = DET.fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise ProviderError(f"not WeChat Pay's XML: {type(exc).__name__}",
                            code="BAD_XML") from None
    if root.tag != "xml":
        raise ProviderError(f"the root element is <{root.tag:.40}>, not <xml>", code="BAD_XML")
    out: dict[str, str] = {}
    for child in root:
        if len(child):
            raise ProviderError(f"<{child.tag:.40}> is not a flat field", code="BAD_XML")
        if child.tag in out:
            raise ProviderError(f"<{child.tag:.40}> appears twice", code="BAD_XML")
        out[child.tag] = child.text or ""
    return out


# -- money -------------------------------------------------------------------------------
def yuan(fen_: int) -> str:
    """Fen as WeChat's bill writes yuan: ``1234`` → ``"12.34"`` (exact)."""
    sign_ = "-" if fen_ < 0 else ""
    fen_ = abs(int(fen_))
    return f"{sign_}{fen_ // 100}.{fen_ % 100:02d}"


def fen(text: str, *, exact: bool = True) -> int:
    """A bill's yuan amount as integer fen, with decimal arithmetic (never floats).
    ``exact``: refuse sub-fen digits (amounts); else round half up (fees, which
    WeChat writes to 1/1000 fen). ValueError for anything that is not a number."""
    try:
        d = Decimal(text.strip()) * 100
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{text!r:.40} is not an amount") from None
    if not d.is_finite():
        raise ValueError(f"{text!r:.40} is not an amount")
    q = d.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    if exact and q != d:
        raise ValueError(f"{text!r:.40} is not a whole number of fen")
    return int(q)


# -- bills -------------------------------------------------------------------------------
def parse_bill(text: str, channel: str, mch_id: str | None = None) -> list:
    """The reconciliation rows (``core.pay.recon.BillRow``) of WeChat Pay's ``ALL``
    bill text: the header line, one line per payment / refund / reversal with each
    field prefixed by a backtick, then the summary's header and its line. A payment
    line (``交易状态`` SUCCESS, or REVOKED once cancelled) is a ``charge`` row whose
    status is SUCCESS, REFUND (a refund line of the same order is in the bill) or
    REVERSED; a REFUND line is a ``refund`` row (``商户退款单号`` its refund_ref); a
    REVOKED line carrying the money given back is a ``reverse`` row. Times
    (Beijing) become UTC. ProviderError ``BILL_MERCHANT_MISMATCH`` when a line's
    ``商户号`` is not ``mch_id``; ``BAD_BILL`` for a malformed bill (the summary must
    agree with the lines)."""
    from lanecore.core.pay import recon
    text = text.lstrip("\ufeff")
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or lines[0].strip() != BILL_HEADER:
        raise ProviderError(f"the {channel} bill does not start with WeChat Pay's ALL "
                            "header", code="BAD_BILL")
    try:
        s = lines.index(BILL_SUMMARY_HEADER)
    except ValueError:
        raise ProviderError(f"the {channel} bill has no summary", code="BAD_BILL") from None
    if s != len(lines) - 2:
        raise ProviderError(f"the {channel} bill's summary is not its last two lines",
                            code="BAD_BILL")
    details = lines[1:s]

    def fields(line: str, n: int, where: str) -> list[str]:
        parts = line.split(",")
        if len(parts) != n or not all(p.startswith("`") for p in parts):
            raise ProviderError(f"the {channel} bill's {where} is not {n} fields each "
                                "prefixed by a backtick", code="BAD_BILL")
        return [p[1:] for p in parts]

    parsed = []
    for n, line in enumerate(details, 1):
        f = fields(line, len(_COLS), f"line {n}")
        if mch_id is not None and f[_C["商户号"]] != mch_id:
            raise ProviderError(f"the bill is merchant {f[_C['商户号']]!r:.20}'s, not channel "
                                f"{channel}'s ({mch_id})", code="BILL_MERCHANT_MISMATCH")
        try:
            when = datetime.strptime(f[_C["交易时间"]], "%Y-%m-%d %H:%M:%S").replace(tzinfo=_TZ)
            row = {
                "time": when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ref": f[_C["商户订单号"]], "pref": f[_C["微信订单号"]],
                "state": f[_C["交易状态"]], "currency": f[_C["货币种类"]],
                "settle": fen(f[_C["应结订单金额"]]),
                "total": fen(f[_C["订单金额"]]) if f[_C["订单金额"]] else None,
                "refund_id": f[_C["微信退款单号"]], "refund_ref": f[_C["商户退款单号"]],
                "refund": fen(f[_C["退款金额"]]),
                "asked": fen(f[_C["申请退款金额"]]) if f[_C["申请退款金额"]] else None,
                "fee": fen(f[_C["手续费"]], exact=False)}
        except ValueError as exc:
            raise ProviderError(f"the {channel} bill's line {n}: {exc}", code="BAD_BILL") from None
        if not row["ref"]:
            raise ProviderError(f"the {channel} bill's line {n} has no 商户订单号",
                                code="BAD_BILL")
        parsed.append(row)
    summary = fields(lines[-1], len(BILL_SUMMARY_HEADER.split(",")), "summary")
    try:
        count, settle_sum, refund_sum = int(summary[0]), fen(summary[1]), fen(summary[2])
    except ValueError:
        raise ProviderError(f"the {channel} bill's summary is not numbers",
                            code="BAD_BILL") from None
    if count != len(parsed) or settle_sum != sum(r["settle"] for r in parsed) or \
            refund_sum != sum(r["refund"] for r in parsed):
        raise ProviderError(f"the {channel} bill's summary does not agree with its lines "
                            "(truncated or altered)", code="BAD_BILL")
    money_back = lambda r: r["refund_id"] not in ("", "0")          # noqa: E731
    refunded = {r["ref"] for r in parsed if r["state"] == "REFUND"}
    out = []
    for r in parsed:
        if r["state"] == "REFUND":
            if not r["refund_ref"] or r["refund_ref"] == "0":
                raise ProviderError(f"the {channel} bill's refund of {r['ref']} has no "
                                    "商户退款单号", code="BAD_BILL")
            amount = r["asked"] if r["asked"] is not None else r["refund"]
            out.append(recon.BillRow(r["time"], r["ref"], r["refund_id"], "refund", amount,
                                     r["currency"], "SUCCESS", r["fee"], r["refund_ref"],
                                     channel))
        elif r["state"] == "REVOKED" and money_back(r):
            out.append(recon.BillRow(r["time"], r["ref"], r["pref"], "reverse", r["refund"],
                                     r["currency"], "SUCCESS", r["fee"], "", channel))
        elif r["state"] in ("SUCCESS", "REVOKED"):
            status = "REVERSED" if r["state"] == "REVOKED" else \
                "REFUND" if r["ref"] in refunded else "SUCCESS"
            amount = r["total"] if r["total"] is not None else r["settle"]
            out.append(recon.BillRow(r["time"], r["ref"], r["pref"], "charge", amount,
                                     r["currency"], status, r["fee"], "", channel))
        else:
            raise ProviderError(f"the {channel} bill: 交易状态 {r['state']!r:.20} is not "
                                "SUCCESS, REFUND or REVOKED", code="BAD_BILL")
    return out


def render_bill(rows, *, appid: str, mch_id: str, rate: str = "0.60%",
                transaction_ids: dict | None = None) -> str:
    """WeChat Pay's ``ALL`` bill text of reconciliation rows (the simulator's
    ``/pay/downloadbill``; :func:`parse_bill` reads it back to the same rows). A
    refund line's ``微信退款单号`` is the refund row's provider_ref, its ``微信订单号``
    the order's (from ``transaction_ids`` or the bill's own charge lines)."""
    def when(iso: str) -> str:
        t = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return t.astimezone(_TZ).strftime("%Y-%m-%d %H:%M:%S")

    def fee_text(f: int) -> str:
        return yuan(f) + "000"

    rows = list(rows)
    tx = dict(transaction_ids or {})
    tx.update((r.merchant_ref, r.provider_ref) for r in rows if r.type != "refund")
    out = [BILL_HEADER]
    n = settle_sum = refund_sum = fee_sum = total_sum = asked_sum = 0
    for r in rows:
        v = dict.fromkeys(_COLS, "")
        v.update({"交易时间": when(r.trade_time), "公众账号ID": appid, "商户号": mch_id,
                  "特约商户号": "0", "微信订单号": r.provider_ref, "商户订单号": r.merchant_ref,
                  "用户标识": "o" + hashlib.sha256(r.merchant_ref.encode()).hexdigest()[:27],
                  "交易类型": "MICROPAY", "付款银行": "OTHERS", "货币种类": r.currency,
                  "代金券金额": "0.00", "充值券退款金额": "0.00", "商品名称": "lanecore",
                  "手续费": fee_text(r.fee_minor), "费率": rate, "费率备注": ""})
        if r.type == "charge":
            v.update({"交易状态": "REVOKED" if r.status == "REVERSED" else "SUCCESS",
                      "应结订单金额": yuan(r.amount_minor), "微信退款单号": "0",
                      "商户退款单号": "0", "退款金额": "0.00", "订单金额": yuan(r.amount_minor),
                      "申请退款金额": "0.00"})
            settle, refund, total, asked = r.amount_minor, 0, r.amount_minor, 0
        else:
            rid = "50" + hashlib.sha256(f"{r.type}|{r.merchant_ref}|{r.refund_ref}".encode()
                                        ).hexdigest()[:26].upper()
            if r.type == "refund":         # the refund's own id; the order's, if known
                rid, v["微信订单号"] = r.provider_ref, tx.get(r.merchant_ref, "")
            v.update({"交易状态": "REFUND" if r.type == "refund" else "REVOKED",
                      "应结订单金额": "0.00", "微信退款单号": rid,
                      "商户退款单号": r.refund_ref if r.type == "refund" else "0",
                      "退款金额": yuan(r.amount_minor), "退款类型": "ORIGINAL",
                      "退款状态": "SUCCESS", "订单金额": "0.00",
                      "申请退款金额": yuan(r.amount_minor)})
            settle, refund, total, asked = 0, r.amount_minor, 0, r.amount_minor
        out.append(",".join("`" + v[c] for c in _COLS))
        n += 1
        settle_sum += settle
        refund_sum += refund
        fee_sum += r.fee_minor
        total_sum += total
        asked_sum += asked
    out.append(BILL_SUMMARY_HEADER)
    out.append(",".join("`" + x for x in (str(n), yuan(settle_sum), yuan(refund_sum), "0.00",
                                          fee_text(fee_sum), yuan(total_sum),
                                          yuan(asked_sum))))
    return "\r\n".join(out) + "\r\n"


# -- the connector -----------------------------------------------------------------------
class WechatPayConnector(ThreadedConnector):
    """A ``wechat`` channel over WeChat Pay's API v2 (module notes). ``endpoint``:
    the API's origin (``https://api.mch.weixin.qq.com`` live); ``appid``,
    ``mch_id``: the merchant's; ``api_key``: the 32-character API key (never
    logged); ``sign_type``: HMAC-SHA256 (default) or MD5; ``ca_file``: the CA the
    endpoint's certificate is checked against (default the system's);
    ``client_cert_file`` / ``client_key_file``: the merchant's API certificate, for
    ``/secapi/``; ``notify_url``: where native orders' payment notifications go
    (the gateway's listener; ``precreate`` may name another)."""

    thread_name = "wechatpay"
    bill_utc_offset_s = BILL_UTC_OFFSET_S

    def __init__(self, endpoint: str, *, appid: str, mch_id: str, api_key: str,
                 sign_type: str = "HMAC-SHA256", ca_file=None, client_cert_file=None,
                 client_key_file=None, timeout_s: float = 5.0, notify_url: str | None = None,
                 spbill_create_ip: str = "127.0.0.1", body: str = "lanecore",
                 context=None) -> None:
        super().__init__(endpoint, "wechat", timeout_s=timeout_s, context=context)
        for what, v in (("appid", appid), ("mch_id", mch_id)):
            if not (isinstance(v, str) and 1 <= len(v) <= 32 and v.isascii() and v.isalnum()):
                raise ProviderError(f"{what} is 1–32 letters and digits", code="BAD_CONFIG")
        if not (isinstance(api_key, str) and len(api_key) == 32 and api_key.isascii()
                and api_key.isalnum()):
            raise ProviderError("the API key is 32 letters and digits", code="BAD_KEY")
        if sign_type not in SIGN_TYPES:
            raise ProviderError(f"sign_type is one of {', '.join(SIGN_TYPES)}",
                                code="BAD_CONFIG")
        self.appid, self.mch_id, self._key = appid, mch_id, api_key
        self.sign_type = sign_type
        self.notify_url = notify_url
        self.spbill_create_ip = spbill_create_ip
        self.body = body
        self.http = HttpsClient(endpoint, ca_file=ca_file, timeout_s=timeout_s)
        self.secure = None
        if client_cert_file is not None:
            self.secure = HttpsClient(endpoint, ca_file=ca_file, timeout_s=timeout_s,
                                      cert_file=client_cert_file, key_file=client_key_file)
        #: out_trade_no of the native orders this connector made (closed, not reversed)
        self._native: set[str] = set()

    def __repr__(self) -> str:
        return f"WechatPayConnector({self.endpoint!r}, mch_id={self.mch_id!r})"

    # -- the exchange ----------------------------------------------------------------
    def _call(self, op: str, fields: dict) -> tuple[dict | None, str | None]:
        """POST one signed request; ``(answer, None)`` when a verified answer came
        (``return_code`` FAIL answers are unsigned and come as they are), else
        ``(None, why)``: ``TIMEOUT`` (no answer), ``BAD_SIGNATURE`` (an answer that
        does not verify), ``BAD_REPLY`` (not WeChat's XML, an HTTP error)."""
        path = API_PATHS[op]
        client = self.http
        if path.startswith("/secapi/"):
            if self.secure is None:
                raise ProviderError(f"{path} needs the merchant's API certificate "
                                    "(client_cert_file, client_key_file)",
                                    code="NO_CLIENT_CERT")
            client = self.secure
        req = {"appid": self.appid, "mch_id": self.mch_id, "nonce_str": nonce(),
               "sign_type": self.sign_type, **fields}
        req["sign"] = sign(req, self._key, self.sign_type)
        reply = client.request("POST", path, to_xml(req),
                               {"Content-Type": "text/xml; charset=utf-8"})
        if reply is None:
            return None, "TIMEOUT"
        if reply.status != 200:
            log.warning("wechatpay %s: HTTP %d from %s", op, reply.status, self.endpoint)
            return None, "BAD_REPLY"
        try:
            doc = from_xml(reply.body)
        except ProviderError:
            log.warning("wechatpay %s: an answer that is not WeChat Pay's XML", op)
            return None, "BAD_REPLY"
        if doc.get("return_code") != "SUCCESS":
            return doc, None
        return self._trusted(op, doc)

    def _trusted(self, op: str, doc: dict) -> tuple[dict | None, str | None]:
        if not verify(doc, self._key, self.sign_type):
            log.warning("wechatpay %s: the answer's signature does not verify: treated "
                        "as no answer", op)
            return None, "BAD_SIGNATURE"
        if doc.get("appid") != self.appid or doc.get("mch_id") != self.mch_id:
            log.warning("wechatpay %s: an answer for another appid/mch_id: treated as "
                        "no answer", op)
            return None, "BAD_SIGNATURE"
        return doc, None

    @staticmethod
    def _unknown(why: str, message: str = "") -> dict:
        return {"ok": True, "status": "unknown", "code": why,
                "message": message or f"no trusted answer ({why}): query later"}

    @staticmethod
    def _return_fail(doc: dict, refused_ok: bool) -> dict:
        """A ``return_code`` FAIL: a request WeChat refused before processing it
        (signature, XML, a field: ``failed`` when ``refused_ok``), else unknown."""
        msg = str(doc.get("return_msg", ""))[:120]
        for needle, code in RETURN_FAIL:
            if needle in msg and refused_ok:
                return {"ok": True, "status": "failed", "code": code, "message": msg}
        return {"ok": True, "status": "unknown", "code": "RETURN_FAIL", "message": msg}

    @staticmethod
    def _err(doc: dict) -> tuple[str, str, str]:
        """(code, outcome, message) of a ``result_code`` FAIL answer."""
        err = str(doc.get("err_code") or "SYSTEMERROR")
        des = str(doc.get("err_code_des") or "")[:120]
        code, outcome, meaning = ERR_CODES.get(err, (err, "failed", ""))
        return code, outcome, des or meaning

    # -- charge (micropay) -----------------------------------------------------------
    def _charge_job(self, merchant_ref: str, amount_minor: int, currency: str,
                    terminal: str | None, auth_code: str | None = None, coupons=None,
                    **other) -> dict:
        _check_money(amount_minor, currency)
        _check_ref(merchant_ref)
        if other or not isinstance(auth_code, str) or not _AUTH_CODE.match(auth_code):
            raise ProviderError("a WeChat Pay charge takes auth_code (the shopper's payment "
                                "code, digits) and nothing else")
        if not _OUT_NO.match(merchant_ref):
            raise ProviderError("WeChat Pay's out_trade_no is 1–32 of A-Z a-z 0-9 _ - | * @",
                                code="BAD_REQUEST")
        fields = {"device_info": terminal[:32] if terminal else None, "body": self.body,
                  "out_trade_no": merchant_ref, "total_fee": str(amount_minor),
                  "fee_type": currency.upper(), "spbill_create_ip": self.spbill_create_ip,
                  "auth_code": auth_code}
        if coupons:        # seed 001: the coupons redeemed with it, as 单品优惠 detail
            fields["detail"] = json.dumps({"goods_detail": [
                {"goods_id": str(c["gtin"]), "quantity": 1, "price": int(c["amount_minor"])}
                for c in coupons]}, separators=(",", ":"))
        return {"fields": fields, "amount_minor": amount_minor}

    def _charge_reply(self, merchant_ref: str, job: dict) -> dict | None:
        doc, why = self._call("micropay", job["fields"])
        if doc is None:
            return self._unknown(why)
        if doc.get("return_code") != "SUCCESS":
            return self._return_fail(doc, refused_ok=True)
        if doc.get("result_code") == "SUCCESS":
            if doc.get("out_trade_no") != merchant_ref:
                log.warning("wechatpay micropay %s: the answer names another order",
                            merchant_ref)
                return self._unknown("BAD_REPLY")
            return {"ok": True, "status": "paid", "provider_ref": doc.get("transaction_id"),
                    "paid_minor": _int(doc.get("total_fee"))}
        code, outcome, message = self._err(doc)
        if outcome == "query":           # ORDERPAID: its first result
            res = self.query(merchant_ref)
            return {"ok": True, "status": res.status, "code": res.decline_code,
                    "provider_ref": res.provider_ref, "paid_minor": res.paid_minor,
                    "refunded_minor": res.refunded_minor, "duplicate": True,
                    "message": message}
        return {"ok": True, "status": outcome, "code": code, "message": message}

    # -- query -----------------------------------------------------------------------
    def _order(self, merchant_ref: str) -> tuple[dict | None, str | None]:
        return self._call("orderquery", {"out_trade_no": merchant_ref})

    def query(self, merchant_ref: str) -> ProviderResult:
        """``/pay/orderquery``: the trade's state (:data:`TRADE_STATES`)."""
        _check_ref(merchant_ref)
        doc, why = self._order(merchant_ref)
        return self.result("query", merchant_ref, self._query_map(merchant_ref, doc, why))

    def _query_map(self, ref: str, doc: dict | None, why: str | None) -> dict:
        if doc is None:
            return self._unknown(why)
        if doc.get("return_code") != "SUCCESS":
            return self._return_fail(doc, refused_ok=False)
        if doc.get("result_code") != "SUCCESS":
            code, _, message = self._err(doc)
            if code == "ORDERNOTEXIST":
                return {"ok": True, "status": "not_found", "code": code, "message": message}
            return {"ok": True, "status": "unknown", "code": code, "message": message}
        if doc.get("out_trade_no") not in (None, ref):
            return self._unknown("BAD_REPLY")
        state = doc.get("trade_state", "")
        status, code = TRADE_STATES.get(state, ("unknown", state or None))
        paid = _int(doc.get("total_fee")) if state in ("SUCCESS", "REFUND") else 0
        out = {"ok": True, "status": status, "code": code,
               "provider_ref": doc.get("transaction_id") or None, "paid_minor": paid,
               "message": str(doc.get("trade_state_desc", ""))[:120],
               "trade_type": doc.get("trade_type")}
        if state == "REFUND":
            r = self.refund_query(ref, by="out_trade_no")
            out["refunded_minor"] = r.refunded_minor
        return out

    # -- reverse / close ---------------------------------------------------------------
    def reverse(self, merchant_ref: str) -> ProviderResult:
        """Cancel: a payment-code trade by ``/secapi/pay/reverse`` (paid: given back;
        unpaid or never seen: closed for good), a native order by ``/pay/closeorder``
        — one the shopper paid first is given back by a full refund (WeChat cannot
        reverse a native order). ``reversed`` when done. (To close a native order
        and keep a payment that beat the close, use :meth:`close_order`.)"""
        _check_ref(merchant_ref)
        if merchant_ref in self._native:
            return self._give_back(merchant_ref, self.close_order(merchant_ref, fallback=True))
        return self._reverse(merchant_ref, fallback=True)

    def _give_back(self, merchant_ref: str, res: ProviderResult) -> ProviderResult:
        """A native order that was paid before it could be closed is given back by a
        refund of what is left of it (``out_refund_no`` ``RV`` + a hash of the
        reference: asked again, the same refund); ``reversed`` once nothing is left."""
        if res.status not in ("paid", "refunded"):
            return res
        left = res.paid_minor - res.refunded_minor
        if left > 0:
            ref_no = "RV" + hashlib.sha256(merchant_ref.encode()).hexdigest()[:30].upper()
            back = self.refund(merchant_ref, ref_no, left)
            if back.status != "refunded":
                return back
        return ProviderResult("reversed", provider_ref=res.provider_ref,
                              decline_code="REFUNDED", merchant_ref=merchant_ref,
                              message="a paid native order, given back by refund")

    def _reverse(self, merchant_ref: str, *, fallback: bool) -> ProviderResult:
        doc, why = self._call("reverse", {"out_trade_no": merchant_ref})
        if doc is None:
            return self.result("reverse", merchant_ref, self._unknown(why))
        if doc.get("return_code") != "SUCCESS":
            return self.result("reverse", merchant_ref, self._return_fail(doc, False))
        if doc.get("result_code") == "SUCCESS":
            if doc.get("recall") == "Y":     # WeChat asks for the reverse again
                return self.result("reverse", merchant_ref, {
                    "ok": True, "status": "unknown", "code": "SYSTEMERROR",
                    "message": "recall: reverse again"})
            return self.result("reverse", merchant_ref, {"ok": True, "status": "reversed"})
        code, outcome, message = self._err(doc)
        if code == "TRADE_ERROR" and fallback:    # not a payment-code order? native: close
            qdoc, _ = self._order(merchant_ref)
            if qdoc is not None and qdoc.get("trade_type") == "NATIVE":
                return self._give_back(merchant_ref, self.close_order(merchant_ref))
        status = "unknown" if outcome == "unknown" else "failed"
        return self.result("reverse", merchant_ref, {"ok": True, "status": status,
                                                     "code": code, "message": message})

    def close_order(self, merchant_ref: str, *, fallback: bool = False) -> ProviderResult:
        """``/pay/closeorder``: close an unpaid native order so it can never be paid
        (``reversed``); a paid one is answered with its state (``paid``).
        ``fallback``: an order WeChat says is not a native one (``TRADE_ERROR``) is
        reversed instead."""
        _check_ref(merchant_ref)
        doc, why = self._call("closeorder", {"out_trade_no": merchant_ref})
        if doc is None:
            return self.result("reverse", merchant_ref, self._unknown(why))
        if doc.get("return_code") != "SUCCESS":
            return self.result("reverse", merchant_ref, self._return_fail(doc, False))
        if doc.get("result_code") == "SUCCESS":
            return self.result("reverse", merchant_ref, {"ok": True, "status": "closed",
                                                         "code": "ORDERCLOSED"})
        code, outcome, message = self._err(doc)
        if code == "ORDERPAID":
            return self.query(merchant_ref)
        if code == "ORDERCLOSED":
            return self.result("reverse", merchant_ref, {"ok": True, "status": "closed",
                                                         "code": code})
        if code == "TRADE_ERROR" and fallback:    # a payment-code order: reverse it
            self._native.discard(merchant_ref)
            return self._reverse(merchant_ref, fallback=False)
        status = "unknown" if outcome == "unknown" else "failed"
        return self.result("reverse", merchant_ref, {"ok": True, "status": status,
                                                     "code": code, "message": message})

    # -- refunds -----------------------------------------------------------------------
    def refund(self, merchant_ref: str, refund_ref: str, amount_minor: int) -> ProviderResult:
        """``/secapi/pay/refund`` of ``amount_minor`` (``out_refund_no`` =
        ``refund_ref``: sent again, the same refund). The order's ``total_fee``,
        which WeChat requires, is asked first (``/pay/orderquery``). ``refunded``
        with ``refunded_minor`` this refund's amount; over-refunding is ``failed``
        ``REFUND_EXCEEDS_PAID``."""
        _check_ref(merchant_ref)
        _check_ref(refund_ref)
        _check_amount(amount_minor)
        if not _OUT_NO.match(refund_ref):
            raise ProviderError("WeChat Pay's out_refund_no is 1–32 of A-Z a-z 0-9 _ - | * @",
                                code="BAD_REQUEST")
        order = self.query(merchant_ref)
        if order.status == "unknown":
            return dataclasses.replace(order, message="the order's total is unknown: "
                                                      "refund again later")
        if order.status == "not_found":
            return order
        if order.status not in ("paid", "refunded"):
            return ProviderResult("failed", decline_code="TRADE_STATUS_ERROR",
                                  merchant_ref=merchant_ref, provider_ref=order.provider_ref,
                                  message=f"the order is {order.status}, not paid")
        doc, why = self._call("refund", {
            "out_trade_no": merchant_ref, "out_refund_no": refund_ref,
            "total_fee": str(order.paid_minor), "refund_fee": str(amount_minor),
            "refund_fee_type": "CNY"})
        if doc is None:
            return self.result("refund", merchant_ref, self._unknown(why))
        if doc.get("return_code") != "SUCCESS":
            return self.result("refund", merchant_ref, self._return_fail(doc, True))
        if doc.get("result_code") == "SUCCESS":
            return self.result("refund", merchant_ref, {
                "ok": True, "status": "refunded", "provider_ref": doc.get("refund_id"),
                "paid_minor": _int(doc.get("total_fee")),
                "refunded_minor": _int(doc.get("refund_fee"))})
        err = str(doc.get("err_code") or "")
        code, outcome, message = self._err(doc)
        if err == "ERROR":
            code = next((c for needle, c in REFUND_ERROR_DES if needle in message), "ERROR")
        if code == "ORDERNOTEXIST":
            return self.result("refund", merchant_ref, {"ok": True, "status": "not_found",
                                                        "code": code, "message": message})
        status = "unknown" if outcome == "unknown" else "failed"
        return self.result("refund", merchant_ref, {"ok": True, "status": status,
                                                    "code": code, "message": message})

    def refund_query(self, ref: str, *, by: str = "out_refund_no") -> ProviderResult:
        """``/pay/refundquery`` by ``out_refund_no`` (default) or ``out_trade_no``:
        ``refunded`` when the refund (every refund of the order) succeeded, with
        ``refunded_minor`` the order's refunds so far; ``unknown`` while processing;
        ``not_found`` (``REFUNDNOTEXIST``)."""
        _check_ref(ref)
        if by not in ("out_refund_no", "out_trade_no"):
            raise ProviderError("refund_query is by out_refund_no or out_trade_no")
        doc, why = self._call("refundquery", {by: ref})
        if doc is None:
            return self.result("refund", ref, self._unknown(why))
        if doc.get("return_code") != "SUCCESS":
            return self.result("refund", ref, self._return_fail(doc, False))
        order_ref = doc.get("out_trade_no") or ref
        if doc.get("result_code") != "SUCCESS":
            code, outcome, message = self._err(doc)
            status = "not_found" if code == "REFUNDNOTEXIST" else \
                "unknown" if outcome == "unknown" else "failed"
            return self.result("refund", order_ref, {"ok": True, "status": status,
                                                     "code": code, "message": message})
        n = _int(doc.get("refund_count"))
        states = [doc.get(f"refund_status_{i}", "") for i in range(n)]
        if by == "out_refund_no":
            states = [doc.get(f"refund_status_{i}", "") for i in range(n)
                      if doc.get(f"out_refund_no_{i}") == ref]
        if not states:
            return self.result("refund", order_ref, {"ok": True, "status": "not_found",
                                                     "code": "REFUNDNOTEXIST"})
        if all(s == "SUCCESS" for s in states):
            status, code = "refunded", None
        elif any(s == "PROCESSING" for s in states):
            status, code = "unknown", "PROCESSING"
        else:
            status, code = "failed", next(s for s in states if s != "SUCCESS")
        total = sum(_int(doc.get(f"refund_fee_{i}")) for i in range(n)
                    if doc.get(f"refund_status_{i}") == "SUCCESS")
        ids = [doc.get(f"refund_id_{i}") for i in range(n)
               if by == "out_trade_no" or doc.get(f"out_refund_no_{i}") == ref]
        return self.result("refund", order_ref, {
            "ok": True, "status": status, "code": code, "provider_ref": ids[0] if ids else None,
            "paid_minor": _int(doc.get("total_fee")), "refunded_minor": total})

    # -- native order (dynamic QR) -----------------------------------------------------
    def precreate(self, merchant_ref: str, amount_minor: int, currency: str, *,
                  subject: str | None = None, notify_url: str | None = None,
                  terminal: str | None = None) -> ProviderResult:
        """``/pay/unifiedorder`` with ``trade_type`` NATIVE: the order the shopper pays
        by scanning ``code_url`` (``weixin://wxpay/bizpayurl?pr=…``). Answered
        ``unknown``/``USERPAYING`` with ``code_url``; the result comes by the
        notification (:meth:`notification`) or :meth:`query`. Asked again with the same
        ``merchant_ref``, the same order. ``notify_url``: default the channel's."""
        _check_money(amount_minor, currency)
        _check_ref(merchant_ref)
        if not _OUT_NO.match(merchant_ref):
            raise ProviderError("WeChat Pay's out_trade_no is 1–32 of A-Z a-z 0-9 _ - | * @",
                                code="BAD_REQUEST")
        url = notify_url or self.notify_url
        if not (isinstance(url, str) and re.match(r"^https?://[^\s?#]+$", url)):
            raise ProviderError("a native order needs a notify_url (http(s), no query): "
                                "where WeChat Pay sends the payment notification",
                                code="NO_NOTIFY_URL")
        self._native.add(merchant_ref)
        doc, why = self._call("unifiedorder", {
            "device_info": terminal[:32] if terminal else None,
            "body": (subject or self.body)[:128], "out_trade_no": merchant_ref,
            "total_fee": str(amount_minor), "fee_type": currency.upper(),
            "spbill_create_ip": self.spbill_create_ip, "notify_url": url,
            "trade_type": "NATIVE", "product_id": merchant_ref})
        if doc is None:
            return self.result("precreate", merchant_ref, self._unknown(why))
        if doc.get("return_code") != "SUCCESS":
            return self.result("precreate", merchant_ref, self._return_fail(doc, True))
        if doc.get("result_code") == "SUCCESS":
            code_url = doc.get("code_url")
            if not code_url:
                return self.result("precreate", merchant_ref, self._unknown("BAD_REPLY"))
            res = self.result("precreate", merchant_ref, {
                "ok": True, "status": "unknown", "code": "USERPAYING",
                "message": "waiting for the shopper's scan"})
            return dataclasses.replace(res, code_url=code_url)
        code, outcome, message = self._err(doc)
        if outcome == "query":      # ORDERPAID: paid already (maybe not as a native order)
            self._native.discard(merchant_ref)
            return dataclasses.replace(self.query(merchant_ref), duplicate=True)
        status = "unknown" if outcome == "unknown" else "failed"
        if status == "failed" and code != "ORDERCLOSED":
            self._native.discard(merchant_ref)     # no native order of ours made
        return self.result("precreate", merchant_ref, {"ok": True, "status": status,
                                                       "code": code, "message": message})

    # -- the payment notification ------------------------------------------------------
    def notification(self, headers: dict, body: bytes) -> ProviderResult:
        """The payment notification WeChat Pay POSTs to ``notify_url`` (XML, signed
        like an answer): the trade's result. ProviderError ``BAD_SIGNATURE`` when the
        signature does not verify, ``BAD_NOTIFICATION`` when it is not one of this
        merchant's (another ``appid``/``mch_id``, not XML, no ``out_trade_no``)."""
        try:
            doc = from_xml(body)
        except ProviderError as exc:
            raise ProviderError(f"not a WeChat Pay notification: {exc.message}",
                                code="BAD_NOTIFICATION") from None
        if doc.get("return_code") != "SUCCESS":
            raise ProviderError("a notification with return_code FAIL",
                                code="BAD_NOTIFICATION")
        if not verify(doc, self._key, doc.get("sign_type") or self.sign_type):
            log.warning("wechatpay notification: the signature does not verify")
            raise ProviderError("the notification's signature does not verify",
                                code="BAD_SIGNATURE")
        if doc.get("appid") != self.appid or doc.get("mch_id") != self.mch_id:
            raise ProviderError("a notification for another appid/mch_id",
                                code="BAD_NOTIFICATION")
        ref = doc.get("out_trade_no") or ""
        if not ref:
            raise ProviderError("a notification without out_trade_no",
                                code="BAD_NOTIFICATION")
        if doc.get("result_code") == "SUCCESS":
            reply = {"ok": True, "status": "paid", "provider_ref": doc.get("transaction_id"),
                     "paid_minor": _int(doc.get("total_fee"))}
        else:
            code, outcome, message = self._err(doc)
            reply = {"ok": True, "status": "unknown" if outcome == "unknown" else "failed",
                     "code": code, "message": message}
        return self.result("notification", ref, reply)

    @staticmethod
    def notification_ack(ok: bool) -> tuple[int, str, bytes]:
        """The answer WeChat Pay expects to a notification: ``return_code`` SUCCESS
        (received: no more repeats) or FAIL (it is sent again on its schedule)."""
        doc = {"return_code": "SUCCESS", "return_msg": "OK"} if ok else \
            {"return_code": "FAIL", "return_msg": "not recorded"}
        return 200, "text/xml; charset=utf-8", to_xml(doc)

    # -- bills -------------------------------------------------------------------------
    def bill(self, date: str, inject=None) -> BillFile:
        """``/pay/downloadbill`` (``bill_type`` ALL) of ``date`` (YYYY-MM-DD): the text as
        WeChat Pay sends it (``BillFile.raw``, suffix ``txt``). ``inject`` (a
        simulator only): corrupt the bill on purpose first (``/_sim/bill_inject``).
        WeChat's "No Bill Exist" is an empty bill. ProviderError ``TIMEOUT`` (no
        answer), ``BILL_NOT_READY`` ("Bill Creating"), ``BAD_BILL``."""
        from lanecore.core.pay import recon
        recon.check_date(date)
        injected = None
        if inject is not None:
            injected = self.inject_bill(date, inject)
        req = {"appid": self.appid, "mch_id": self.mch_id, "nonce_str": nonce(),
               "sign_type": self.sign_type, "bill_date": date.replace("-", ""),
               "bill_type": "ALL"}
        req["sign"] = sign(req, self._key, self.sign_type)
        reply = self.http.request("POST", API_PATHS["downloadbill"], to_xml(req),
                                  {"Content-Type": "text/xml; charset=utf-8"})
        if reply is None:
            raise ProviderError(f"no bill from {self.endpoint} in {self.timeout_s:g} s",
                                code="TIMEOUT")
        if reply.status != 200:
            raise ProviderError(f"the bill of {date}: HTTP {reply.status}", code="BAD_BILL")
        raw = reply.body
        if raw.lstrip().startswith(b"<xml>"):
            doc = from_xml(raw)
            msg = str(doc.get("return_msg", ""))
            if msg.lower() != "no bill exist":
                code = "BILL_NOT_READY" if "creating" in msg.lower() else "BAD_BILL"
                raise ProviderError(f"no bill of {date}: {msg[:80]}", code=code)
            rows = 0
        else:
            rows = max(0, len([ln for ln in raw.split(b"\n") if ln.strip()]) - 3)
        return BillFile(date, self.kind, API_PATHS["downloadbill"], rows, None, injected,
                        raw=raw, suffix="txt")

    def bill_rows(self, bill: BillFile, channel: str) -> list:
        """The reconciliation rows of a bill :meth:`bill` fetched (:func:`parse_bill`);
        a bill of another merchant is refused ``BILL_MERCHANT_MISMATCH``."""
        raw = bill.raw if bill.raw is not None else (bill.csv_text or "").encode("utf-8")
        if raw.lstrip().startswith(b"<xml>"):
            doc = from_xml(raw)
            if str(doc.get("return_msg", "")).lower() == "no bill exist":
                return []
            raise ProviderError("the bill is an error answer", code="BAD_BILL")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderError("the bill is not UTF-8", code="BAD_BILL") from None
        return parse_bill(text, channel, self.mch_id)

    # -- the simulator's own paths, and ping --------------------------------------------
    def _sim_json(self, method: str, path: str, doc: dict | None = None) -> dict:
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        reply = self.http.request(method, path, body, {"Content-Type": "application/json"})
        if reply is None:
            raise ProviderError(f"no answer from {self.endpoint} in {self.timeout_s:g} s",
                                code="TIMEOUT")
        if reply.status == 404:
            raise ProviderError(f"{path} is a simulator's path; {self.endpoint} has none",
                                code="NOT_SUPPORTED")
        try:
            out = json.loads(reply.body)
        except ValueError:
            out = None
        if reply.status != 200 or not isinstance(out, dict):
            err = out.get("error", {}) if isinstance(out, dict) else {}
            raise ProviderError(str(err.get("message", f"HTTP {reply.status}"))[:200],
                                code=str(err.get("code", "BAD_REPLY")))
        return out

    def configure(self, **knobs) -> dict | None:
        """The simulator's knobs (``/_sim/configure``: the engine's, and its own
        ``tamper_next``, ``notify_scale``, ``notify_ca_file``); all of them back."""
        return self._sim_json("POST", "/_sim/configure", knobs).get("behaviour")

    def stats(self) -> dict | None:
        """The simulator's counters (``/_sim/stats``)."""
        return self._sim_json("GET", "/_sim/stats")

    def inject_bill(self, date: str, spec: dict | None) -> dict | None:
        """Make the simulator's next download of the bill of ``date`` carry
        discrepancies on purpose (``core.pay.recon.inject``'s ``spec``; None: the
        honest bill) — one download, the next is honest again (a simulator only:
        ``/_sim/bill_inject``). Returns the injection record (what was dropped,
        added, changed, duplicated)."""
        return self._sim_json("POST", "/_sim/bill_inject", {
            "date": date, "inject": None if spec is None else dict(spec)}).get("injected")

    def scan(self, merchant_ref: str, outcome: str = "paid") -> dict:
        """The shopper's wallet paying (or cancelling) a native order (a simulator
        only: ``/_sim/scan``); the notification follows."""
        return self._sim_json("POST", "/_sim/scan", {"merchant_ref": merchant_ref,
                                                     "outcome": outcome})

    def ping(self) -> bool:
        """Whether the API answers (a signed ``/pay/orderquery`` of a reference no
        order has: any trusted answer)."""
        doc, _ = self._order("PING" + secrets.token_hex(8))
        return doc is not None


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


# -- configuration -----------------------------------------------------------------------
def from_config(name: str, table: dict, data_dir: Path) -> WechatPayConnector:
    """The connector of ``[channels.NAME]`` with ``protocol = "wechatpay-v2"``:
    ``endpoint`` (https only, else ``PLAIN_NOT_ALLOWED``), ``ca_file`` (optional),
    ``appid``, ``mch_id``, ``key_file`` (the API key, 32 characters, mode 0600),
    ``sign_type`` (HMAC-SHA256 | MD5), ``client_cert_file`` + ``client_key_file``
    (the API certificate; its key 0600), ``timeout_s``, ``notify_url`` (optional).
    Relative paths are relative to ``data_dir``. ProviderError with a stable code
    (``BAD_CONFIG``, ``KEY_FILE_MISSING``, ``BAD_PERMISSIONS``, ``BAD_KEY``)."""
    where = f"channels.{name}"
    if table.get("protocol", PROTOCOL) != PROTOCOL:
        raise ProviderError(f"{where}: protocol is {PROTOCOL}", code="BAD_CONFIG")
    endpoint = table.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
        raise ProviderError(f"{where}: endpoint must be an https:// URL (WeChat Pay's API "
                            f"is HTTPS only), got {endpoint!r:.80}", code="PLAIN_NOT_ALLOWED")
    for key in ("appid", "mch_id", "key_file", "client_cert_file", "client_key_file"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ProviderError(f"{where}: {key} is required for WeChat Pay", code="BAD_CONFIG")
    key_path = resolve_path(table["key_file"], data_dir, f"{where}.key_file")
    try:
        api_key = read_key_file(key_path, "API key file").decode("ascii").strip()
    except UnicodeDecodeError:
        raise ProviderError(f"{where}: the API key file {key_path} is not ASCII",
                            code="BAD_KEY") from None
    if len(api_key) != 32 or not api_key.isalnum():
        raise ProviderError(f"{where}: the API key in {key_path} is not 32 letters and "
                            "digits", code="BAD_KEY")
    cert = resolve_path(table["client_cert_file"], data_dir, f"{where}.client_cert_file")
    ckey = resolve_path(table["client_key_file"], data_dir, f"{where}.client_key_file")
    if not cert.is_file():
        raise ProviderError(f"{where}: client_cert_file {cert} does not exist",
                            code="KEY_FILE_MISSING")
    read_key_file(ckey, "API certificate key file")           # 0600, present
    ca = table.get("ca_file")
    ca_path = None if ca is None else resolve_path(ca, data_dir, f"{where}.ca_file")
    if ca_path is not None and not ca_path.is_file():
        raise ProviderError(f"{where}: ca_file {ca_path} does not exist", code="BAD_CONFIG")
    timeout = table.get("timeout_s", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ProviderError(f"{where}: timeout_s must be a positive number", code="BAD_CONFIG")
    notify = table.get("notify_url")
    if notify is not None and not (isinstance(notify, str)
                                   and re.match(r"^https?://[^\s?#]+$", notify)):
        raise ProviderError(f"{where}: notify_url is an http(s) URL without a query",
                            code="BAD_CONFIG")
    return WechatPayConnector(
        endpoint, appid=table["appid"], mch_id=table["mch_id"], api_key=api_key,
        sign_type=table.get("sign_type", "HMAC-SHA256"), ca_file=ca_path,
        client_cert_file=cert, client_key_file=ckey, timeout_s=float(timeout),
        notify_url=notify)
