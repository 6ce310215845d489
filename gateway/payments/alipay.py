"""Alipay over its own OpenAPI: ``POST https://openapi.alipay.com/gateway.do``,
form parameters, JSON answers, RSA2 signatures both ways. ``docs/pay/alipay.md``.

The calls (Alipay's 当面付, face-to-face payment):

* ``alipay.trade.pay`` (scene ``bar_code``) — the shopper's payment code
  (:meth:`AlipayConnector.charge`);
* ``alipay.trade.query`` — a trade's state (:meth:`~AlipayConnector.query`);
* ``alipay.trade.cancel`` — close an unpaid trade, give back a paid one
  (:meth:`~AlipayConnector.reverse`);
* ``alipay.trade.refund`` / ``alipay.trade.fastpay.refund.query`` —
  (:meth:`~AlipayConnector.refund`, :meth:`~AlipayConnector.refund_query`);
* ``alipay.trade.precreate`` — a merchant-presented QR (:meth:`~AlipayConnector.
  precreate`), whose result comes as an asynchronous notification
  (:meth:`~AlipayConnector.notification`) or by query;
* ``alipay.data.dataservice.bill.downloadurl.query`` — the day's bill: a URL to a
  zip of GBK CSV files (:meth:`~AlipayConnector.bill`, :meth:`~AlipayConnector.
  bill_rows`).

Signing (Alipay's "自行实现签名"): every request parameter except ``sign`` with a
non-empty value, sorted by name, ``name=value`` joined by ``&`` (values as they are,
not URL-encoded), signed SHA256withRSA (PKCS#1 v1.5) over its UTF-8 bytes with the
app's private key, base64 (:func:`sign_content`, :func:`rsa2_sign`). Answers carry
``sign`` beside ``<method>_response``; it is Alipay's signature over that object's
JSON text exactly as it appears in the body (:func:`response_json_text`, never
re-serialised). A notification is verified over its form parameters without
``sign`` and ``sign_type``. A signature that does not verify makes an answer no
answer (unknown: query later) and a notification ``BAD_SIGNATURE``.

Money: Alipay speaks yuan strings ("12.34"); lanecore fen (integer).
:func:`fen_to_yuan` and :func:`yuan_to_fen` convert exactly (integer arithmetic,
never floats).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import re
import threading
import urllib.parse
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lanecore.gateway.payments.httpapi import (HttpsClient, ThreadedConnector,
                                               read_key_file, resolve_path)
from lanecore.gateway.payments.providers import (DECLINES, OTHER_CODES, BillFile,
                                                 ProviderError, ProviderResult,
                                                 _check_amount, _check_money, _check_ref)

__all__ = ["GATEWAY_PATH", "CHINA_TZ", "RESULT_CODES", "SUB_CODES", "REFUSED_SUB_CODES", "TRADE_STATUS",
           "BILL_DETAIL_COLUMNS", "BILL_SUMMARY_COLUMNS", "fen_to_yuan", "yuan_to_fen",
           "sign_content", "rsa2_sign", "rsa2_verify", "load_private_key",
           "load_public_key", "timestamp", "request_params", "response_json_text",
           "verify_response", "map_response", "parse_bill_zip", "MAX_BILL_FILE", "AlipayConnector",
           "from_config"]

log = logging.getLogger("lanecore.alipay")

#: The one path of Alipay's OpenAPI: every method is a form POST to it.
GATEWAY_PATH = "/gateway.do"
#: Alipay's clock (timestamps, bill days): China Standard Time, UTC+8, no DST.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
#: Alipay's bill days are China Standard Time days (the gateway reconciles each
#: against the ledger's same day: core.pay.ledger.day_rows)
BILL_UTC_OFFSET_S = 8 * 3600
#: Alipay's top-level answer codes: code → (outcome, meaning). ``success``: the
#: business answer follows; ``unknown``: the outcome is unknown, query;
#: ``business``: a business failure, read ``sub_code`` (:data:`SUB_CODES`);
#: ``refused``: the request itself was refused (nothing happened): ProviderError.
RESULT_CODES: dict[str, tuple[str, str]] = {
    "10000": ("success", "接口调用成功 — the call succeeded"),
    "10003": ("unknown", "业务处理中 — waiting for the shopper to pay (password): query"),
    "20000": ("unknown", "服务不可用 — service unavailable: the trade may exist, query"),
    "20001": ("refused", "授权权限不足 — the app's authorisation is missing"),
    "40001": ("refused", "缺少必选参数 — a required parameter is missing"),
    "40002": ("refused", "非法的参数 — a parameter (or the signature) is invalid"),
    "40004": ("business", "业务处理失败 — the business failed: see sub_code"),
    "40006": ("refused", "权限不足 — the app lacks the permission for this method"),
}
#: ``40004`` sub-codes → (lanecore code, outcome): the lanecore codes are
#: ``providers.DECLINES["wallet"]``'s (charges) and ``providers.OTHER_CODES``'s
#: (query, cancel, refund). ``failed`` is final, ``unknown`` means query,
#: ``not_found`` no such trade, ``repeat`` a repeated pay of a paid trade (the
#: query's answer is the result, nothing charged again).
SUB_CODES: dict[str, tuple[str, str]] = {
    "ACQ.SYSTEM_ERROR": ("SYSTEMERROR", "unknown"),
    "ACQ.RETRY_LATER": ("SYSTEMERROR", "unknown"),
    "ACQ.PAYMENT_AUTH_CODE_INVALID": ("AUTH_CODE_INVALID", "failed"),
    "ACQ.BUYER_BALANCE_NOT_ENOUGH": ("NOTENOUGH", "failed"),
    "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": ("NOTENOUGH", "failed"),
    "ACQ.TRADE_HAS_CLOSE": ("ORDERCLOSED", "failed"),
    "ACQ.TRADE_HAS_SUCCESS": ("ORDERPAID", "repeat"),
    "ACQ.CONTEXT_INCONSISTENT": ("OUT_TRADE_NO_USED", "failed"),
    "ACQ.TOTAL_FEE_EXCEED": ("EXCEED_LIMIT", "failed"),
    "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR": ("EXCEED_LIMIT", "failed"),
    "ACQ.BUYER_PAYMENT_AMOUNT_MONTH_LIMIT_ERROR": ("EXCEED_LIMIT", "failed"),
    "ACQ.PAYMENT_REQUEST_HAS_RISK": ("TRADE_ERROR", "failed"),
    "ACQ.BUYER_ENABLE_STATUS_FORBID": ("TRADE_ERROR", "failed"),
    "ACQ.PAYMENT_FAIL": ("TRADE_ERROR", "failed"),
    "ACQ.ERROR_BUYER_CERTIFY_LEVEL_LIMIT": ("TRADE_ERROR", "failed"),
    "ACQ.BUYER_SELLER_EQUAL": ("TRADE_ERROR", "failed"),
    "ACQ.TRADE_BUYER_NOT_MATCH": ("TRADE_ERROR", "failed"),
    "ACQ.TRADE_NOT_EXIST": ("ORDERNOTEXIST", "not_found"),
    "ACQ.TRADE_STATUS_ERROR": ("TRADE_STATUS_ERROR", "failed"),
    "ACQ.TRADE_NOT_ALLOW_REFUND": ("TRADE_STATUS_ERROR", "failed"),
    "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL": ("REFUND_EXCEEDS_PAID", "failed"),
    "ACQ.DISCORDANT_REPEAT_REQUEST": ("REFUND_REF_USED", "failed"),
    "ACQ.SELLER_BALANCE_NOT_ENOUGH": ("TRADE_STATUS_ERROR", "failed"),
}
#: ``40004`` sub-codes that refuse the request itself (nothing happened): a
#: ProviderError ``BAD_REQUEST`` — a bug on our side, never a decline to route on.
REFUSED_SUB_CODES = ("ACQ.INVALID_PARAMETER", "ACQ.ACCESS_FORBIDDEN")
#: ``trade_status`` (query, notification) → the reply status ``Connector.result``
#: reads: ``paying`` is unknown (USERPAYING), ``closed`` ends ``reversed``.
TRADE_STATUS = {"WAIT_BUYER_PAY": "paying", "TRADE_CLOSED": "closed",
                "TRADE_SUCCESS": "paid", "TRADE_FINISHED": "paid"}
#: The trade bill's detail file (业务明细): its column header, in Alipay's order.
BILL_DETAIL_COLUMNS = (
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
    "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）",
    "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）",
    "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）",
    "分润（元）", "备注")
#: The summary file (业务明细(汇总)): its column header.
BILL_SUMMARY_COLUMNS = (
    "门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）", "商家实收（元）",
    "支付宝优惠（元）", "商家优惠（元）", "卡消费金额（元）", "服务费（元）", "分润（元）",
    "实收净额（元）")

_METHODS = ("alipay.trade.pay", "alipay.trade.query", "alipay.trade.cancel",
            "alipay.trade.refund", "alipay.trade.fastpay.refund.query",
            "alipay.trade.precreate", "alipay.data.dataservice.bill.downloadurl.query")
_YUAN = re.compile(r"(-?)(0|[1-9][0-9]{0,13})(?:\.([0-9]{1,2}))?")
_PID = re.compile(r"2088[0-9]{12}")


# -- money -----------------------------------------------------------------------------
def fen_to_yuan(fen: int) -> str:
    """``1234`` → ``"12.34"`` (integer maths; negative amounts keep their sign)."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise ProviderError(f"an amount in fen is an integer, got {fen!r}", code="BAD_AMOUNT")
    sign = "-" if fen < 0 else ""
    q, r = divmod(abs(fen), 100)
    return f"{sign}{q}.{r:02d}"


def yuan_to_fen(text: str) -> int:
    """``"12.34"`` → ``1234``, exactly: at most two decimals, no exponent, no
    spaces (a bill's ``-0.06`` is allowed). ProviderError ``BAD_AMOUNT`` otherwise."""
    m = _YUAN.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ProviderError(f"{text!r:.40} is not a yuan amount", code="BAD_AMOUNT")
    frac = (m.group(3) or "").ljust(2, "0")
    fen = int(m.group(2)) * 100 + int(frac)
    return -fen if m.group(1) else fen


# -- signatures ------------------------------------------------------------------------
def sign_content(params: Mapping[str, str], exclude=("sign",)) -> str:
    """The string to sign: every parameter but ``exclude`` with a non-empty value,
    sorted by name (code point order), ``name=value`` joined by ``&``, values as
    they are (not URL-encoded). Requests exclude ``sign``; notifications ``sign``
    and ``sign_type``."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in exclude and params[k] is not None and params[k] != "")


def load_private_key(pem: bytes):
    """An RSA private key from PEM (PKCS#8 or PKCS#1). ProviderError ``BAD_KEY``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ProviderError("the app private key is not an unencrypted RSA PEM key",
                            code="BAD_KEY") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ProviderError("the app private key must be RSA of 2048 bits or more (RSA2)",
                            code="BAD_KEY")
    return key


def load_public_key(data: bytes):
    """An RSA public key: PEM, or the bare base64 text Alipay's console shows (the
    DER SubjectPublicKeyInfo). ProviderError ``BAD_KEY``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(base64.b64decode(b"".join(data.split()),
                                                                     validate=True))
    except (ValueError, TypeError, binascii.Error):
        raise ProviderError("Alipay's public key is neither PEM nor base64 DER",
                            code="BAD_KEY") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProviderError("Alipay's public key is not RSA", code="BAD_KEY")
    return key


def rsa2_sign(content: str, private_key) -> str:
    """RSA2: SHA256withRSA, PKCS#1 v1.5, over ``content``'s UTF-8 bytes; base64."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    sig = private_key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(sig).decode("ascii")


def rsa2_verify(content: str, sign: str, public_key) -> bool:
    """Whether ``sign`` (base64) is an RSA2 signature of ``content`` by that key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    if not isinstance(sign, str) or not sign:
        return False
    try:
        raw = base64.b64decode(sign, validate=True)
        public_key.verify(raw, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, binascii.Error, ValueError):
        return False


def timestamp(now: datetime | None = None) -> str:
    """Alipay's ``timestamp``: ``yyyy-MM-dd HH:mm:ss`` in China Standard Time."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def request_params(app_id: str, method: str, biz: Mapping, private_key, *,
                   notify_url: str | None = None, now: datetime | None = None) -> dict:
    """The signed form parameters of one call: the public parameters, ``biz_content``
    (compact JSON, UTF-8 text) and ``sign``."""
    params = {"app_id": app_id, "method": method, "format": "JSON", "charset": "utf-8",
              "sign_type": "RSA2", "timestamp": timestamp(now), "version": "1.0",
              "biz_content": json.dumps(dict(biz), ensure_ascii=False,
                                        separators=(",", ":"))}
    if notify_url:
        params["notify_url"] = notify_url
    params["sign"] = rsa2_sign(sign_content(params), private_key)
    return params


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def response_json_text(body: str) -> dict[str, tuple[object, str]]:
    """The top-level members of an answer: name → (value, the value's JSON text
    exactly as it appears in ``body``). ProviderError ``BAD_REPLY`` when ``body``
    is not one JSON object."""
    dec = json.JSONDecoder()
    out: dict[str, tuple[object, str]] = {}
    try:
        i = _skip_ws(body, 0)
        if body[i:i + 1] != "{":
            raise ValueError("not an object")
        i = _skip_ws(body, i + 1)
        if body[i:i + 1] == "}":
            i += 1
        else:
            while True:
                key, i = dec.raw_decode(body, i)
                if not isinstance(key, str):
                    raise ValueError("a member name is not a string")
                i = _skip_ws(body, i)
                if body[i:i + 1] != ":":
                    raise ValueError("':' expected")
                start = _skip_ws(body, i + 1)
                value, i = dec.raw_decode(body, start)
                out[key] = (value, body[start:i])
                i = _skip_ws(body, i)
                if body[i:i + 1] == ",":
                    i = _skip_ws(body, i + 1)
                    continue
                if body[i:i + 1] == "}":
                    i += 1
                    break
                raise ValueError("',' or '}' expected")
        if _skip_ws(body, i) != len(body):
            raise ValueError("text after the object")
    except (ValueError, IndexError) as exc:
        raise ProviderError(f"an answer that is not one JSON object ({exc})",
                            code="BAD_REPLY") from None
    return out


def verify_response(body: bytes, method: str, public_key) -> dict | None:
    """The ``<method>_response`` object (or ``error_response``) of an answer whose
    ``sign`` verifies over that object's raw JSON text; None — never trusted —
    when it does not (a warning is logged, without the body)."""
    try:
        text = body.decode("utf-8")
        members = response_json_text(text)
    except (UnicodeDecodeError, ProviderError):
        log.warning("alipay %s: an answer that is not UTF-8 JSON: ignored", method)
        return None
    name = method.replace(".", "_") + "_response"
    if name not in members:
        name = "error_response"
    if name not in members or not isinstance(members[name][0], dict):
        log.warning("alipay %s: the answer has no %s_response: ignored", method,
                    method.replace(".", "_"))
        return None
    sign = members.get("sign", (None, ""))[0]
    if not sign:
        obj = members[name][0]
        # Alipay may leave a refusal of our own signature unsigned: still not
        # trusted, but say what it was (codes only), so a wrong key is visible
        log.warning("alipay %s: an unsigned answer (code %.8s %.60s): treated as no "
                    "answer", method, str(obj.get("code", "")), str(obj.get("sub_code", "")))
        return None
    if not rsa2_verify(members[name][1], sign, public_key):
        log.warning("alipay %s: the answer's signature does not verify with Alipay's "
                    "public key: treated as no answer", method)
        return None
    return members[name][0]


# -- the code mapping --------------------------------------------------------------------
def _reply(status: str, code: str | None, resp: Mapping, **extra) -> dict:
    said = "" if str(resp.get("code")) == "10000" else resp.get("sub_msg") or resp.get("msg")
    out = {"ok": True, "status": status, "code": code,
           "provider_ref": resp.get("trade_no") or None, "message": str(said or "")}
    out.update(extra)
    return out


def map_response(method: str, resp: Mapping | None) -> dict | None:
    """A verified ``<method>_response`` → the reply map :meth:`Connector.result`
    reads (``ok: false`` for a refused request: ProviderError with code
    ``BAD_SIGNATURE`` / ``BAD_REQUEST`` / ``BAD_CONFIG``). ``None`` stays None (no
    answer). Business answers of ``10000`` are read per method by the connector;
    here they come back as ``status: "ok"``."""
    if resp is None:
        return None
    code = str(resp.get("code", ""))
    sub = str(resp.get("sub_code") or "")
    outcome = RESULT_CODES.get(code, ("unknown", ""))[0]
    if outcome == "success":
        return _reply("ok", None, resp)
    if code == "10003":
        return _reply("paying", "USERPAYING", resp)
    if code == "20000" or (code == "40004" and SUB_CODES.get(sub, ("", ""))[1] == "unknown"):
        return _reply("unknown", "SYSTEMERROR", resp)
    if outcome == "refused" or sub in REFUSED_SUB_CODES:
        what = "BAD_SIGNATURE" if sub in ("isv.invalid-signature", "isv.invalid-signature-type") \
            else "BAD_CONFIG" if code in ("20001", "40006") or sub == "isv.invalid-app-id" \
            else "BAD_REQUEST"
        return {"ok": False, "error": {"code": what, "message": f"Alipay refused {method}: "
                                       f"{code} {sub} {resp.get('sub_msg') or ''}".strip()}}
    if code == "40004":
        ours, kind = SUB_CODES.get(sub, (None, "failed"))
        if kind == "not_found":
            return _reply("not_found", ours, resp)
        if kind == "repeat":
            return _reply("repeat", ours, resp)
        return _reply("failed", ours or "TRADE_ERROR", resp,
                      message=f"{sub}: {resp.get('sub_msg') or ''}".strip(": "))
    # an answer code Alipay does not document: its outcome is unknown
    return _reply("unknown", "SYSTEMERROR", resp)


# -- bills -------------------------------------------------------------------------------
def _cell(v: str) -> str:
    return v.strip().strip("\t").strip()


#: Largest detail file read out of a bill zip (uncompressed).
MAX_BILL_FILE = 256 << 20


def parse_bill_zip(raw: bytes, *, pid: str | None, channel: str):
    """``(account pid, detail rows)`` of an Alipay trade bill zip — see
    :meth:`AlipayConnector.bill_rows`. ``pid``: the merchant it must be (None:
    any)."""
    from lanecore.core.pay import recon
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
        names = zf.namelist()
    except (zipfile.BadZipFile, ValueError):
        raise ProviderError("the Alipay bill is not a zip file", code="BAD_BILL") from None
    details = [n for n in names if n.endswith("_业务明细.csv")]
    if len(details) != 1:
        raise ProviderError(f"the Alipay bill zip holds {len(details)} detail files "
                            "(…_业务明细.csv), not one", code="BAD_BILL")
    name_pid = Path(details[0]).name.split("_", 1)[0]
    if zf.getinfo(details[0]).file_size > MAX_BILL_FILE:
        raise ProviderError("the Alipay bill's detail file is too large", code="BAD_BILL")
    try:
        text = zf.read(details[0]).decode("gbk")
    except (UnicodeDecodeError, KeyError, zipfile.BadZipFile):
        raise ProviderError("the Alipay bill's detail file is not GBK text",
                            code="BAD_BILL") from None
    account = None
    header: list[str] | None = None
    lines: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            m = re.match(r"#账号：\[(\d+)\]", line)
            if m:
                account = m.group(1)
            continue
        if not line.strip():
            continue
        cells = next(csv.reader([line]))
        if header is None:
            header = [_cell(c) for c in cells]
            continue
        lines.append(cells)
    acct_pid = account[:16] if account else None
    if acct_pid is None or not _PID.fullmatch(acct_pid) or name_pid != acct_pid:
        raise ProviderError("the Alipay bill names no merchant account (#账号) matching "
                            "its file name", code="BAD_BILL")
    if pid is not None and acct_pid != pid:
        raise ProviderError(f"the Alipay bill is merchant {acct_pid}'s, not this channel's "
                            f"({pid}): refused", code="BILL_MERCHANT_MISMATCH")
    if header is None or any(c not in header for c in (
            "支付宝交易号", "商户订单号", "业务类型", "完成时间", "商家实收（元）",
            "退款批次号/请求号", "服务费（元）")):
        raise ProviderError("the Alipay bill's detail file lacks its column header",
                            code="BAD_BILL")
    col = {c: i for i, c in enumerate(header)}
    out = []
    reversed_refs = set()
    parsed = []
    for n, cells in enumerate(lines, 1):
        if len(cells) < len(header):
            raise ProviderError(f"Alipay bill line {n}: {len(cells)} columns, the header "
                                f"has {len(header)}", code="BAD_BILL")
        get = lambda c: _cell(cells[col[c]])          # noqa: E731
        try:
            received = yuan_to_fen(get("商家实收（元）"))
            fee = -yuan_to_fen(get("服务费（元）") or "0")
            done = datetime.strptime(get("完成时间"), "%Y-%m-%d %H:%M:%S")
        except (ProviderError, ValueError) as exc:
            raise ProviderError(f"Alipay bill line {n}: {exc}", code="BAD_BILL") from None
        ref, trade_no, what = get("商户订单号"), get("支付宝交易号"), get("业务类型")
        request_no = get("退款批次号/请求号")
        when = done.replace(tzinfo=CHINA_TZ).astimezone(timezone.utc) \
            .strftime("%Y-%m-%dT%H:%M:%SZ")
        if what == "交易":
            typ, rref = "charge", ""
        elif what == "退款":
            # a cancel that gave a paid trade back: its request number is the
            # trade's own out_trade_no (Alipay's rule when none was given)
            typ, rref = ("reverse", "") if request_no in ("", ref) else ("refund", request_no)
            if typ == "reverse":
                reversed_refs.add(ref)
        else:
            raise ProviderError(f"Alipay bill line {n}: 业务类型 {what!r} is neither 交易 "
                                "nor 退款", code="BAD_BILL")
        parsed.append((when, ref, trade_no, typ, abs(received), fee, rref))
    refunded = {p[1] for p in parsed if p[3] == "refund"}
    for when, ref, trade_no, typ, amount, fee, rref in parsed:
        status = "SUCCESS"
        if typ == "charge":
            status = "REVERSED" if ref in reversed_refs else \
                "REFUND" if ref in refunded else "SUCCESS"
        out.append(recon.BillRow(when, ref, trade_no, typ, amount, "CNY", status, fee, rref,
                                 channel))
    return acct_pid, out


# -- the connector -------------------------------------------------------------------
class AlipayConnector(ThreadedConnector):
    """An Alipay channel over Alipay's OpenAPI (``protocol = "alipay"``): ``endpoint``
    the gateway's origin (``https://openapi.alipay.com``; ``/gateway.do`` is added),
    ``app_id``, the app's RSA private key and Alipay's public key, ``seller_id`` (the
    merchant's ``2088…`` pid: checked in notifications and bills), ``notify_url``
    (where precreated orders' notifications go). Thread-safe: every call is one
    HTTPS exchange on a fresh connection."""

    thread_name = "alipay"
    refunds = True
    bill_utc_offset_s = BILL_UTC_OFFSET_S

    def __init__(self, endpoint: str, *, app_id: str, app_private_key, alipay_public_key,
                 seller_id: str | None = None, ca_file=None, timeout_s: float = 5.0,
                 notify_url: str | None = None, context=None) -> None:
        super().__init__(endpoint, "alipay", timeout_s=timeout_s, context=context)
        if not (isinstance(app_id, str) and re.fullmatch(r"[0-9]{8,32}", app_id)):
            raise ProviderError("app_id is Alipay's application id (digits)",
                                code="BAD_CONFIG")
        if seller_id is not None and not (isinstance(seller_id, str)
                                          and _PID.fullmatch(seller_id)):
            raise ProviderError("seller_id is the merchant's pid: 2088 and 12 digits",
                                code="BAD_CONFIG")
        if notify_url is not None and not (isinstance(notify_url, str) and
                                           notify_url.startswith(("https://", "http://"))):
            raise ProviderError("notify_url is an http(s) URL", code="BAD_CONFIG")
        if isinstance(endpoint, str) and endpoint.rstrip("/").endswith(GATEWAY_PATH):
            endpoint = endpoint.rstrip("/")[:-len(GATEWAY_PATH)]   # the origin is wanted
        self.http = HttpsClient(endpoint, ca_file=ca_file, timeout_s=timeout_s)
        self.app_id, self.seller_id, self.notify_url = app_id, seller_id, notify_url
        self._key, self._alipay_key = app_private_key, alipay_public_key
        self._lock = threading.Lock()
        self.ca_file = ca_file
        self._origins: dict[str, HttpsClient] = {}
        self.counts = {"calls": 0, "unanswered": 0, "bad_signature": 0}

    # -- one call --------------------------------------------------------------------
    def call_api(self, method: str, biz: Mapping, *, notify_url: str | None = None
                 ) -> dict | None:
        """One signed call; the verified ``<method>_response`` object, or None when
        no answer came, or it was not 200, or its signature did not verify."""
        params = request_params(self.app_id, method, biz, self._key, notify_url=notify_url)
        body = urllib.parse.urlencode(params).encode("ascii")
        with self._lock:
            self.counts["calls"] += 1
        reply = self.http.request("POST", GATEWAY_PATH, body, {
            "Content-Type": "application/x-www-form-urlencoded;charset=utf-8",
            "Accept": "application/json"})
        if reply is None or reply.status != 200:
            if reply is not None:
                log.warning("alipay %s: HTTP %d: treated as no answer", method, reply.status)
            with self._lock:
                self.counts["unanswered"] += 1
            return None
        resp = verify_response(reply.body, method, self._alipay_key)
        if resp is None:
            with self._lock:
                self.counts["unanswered"] += 1
                self.counts["bad_signature"] += 1
        return resp

    # -- charge (ThreadedConnector) --------------------------------------------------
    def _charge_job(self, merchant_ref: str, amount_minor: int, currency: str,
                    terminal: str | None, auth_code: str | None = None, coupons=None,
                    subject: str | None = None, **other) -> dict:
        _check_money(amount_minor, currency)
        _check_ref(merchant_ref)
        if other or not isinstance(auth_code, str) or not auth_code:
            raise ProviderError("an Alipay charge takes auth_code (the shopper's payment "
                                "code) and nothing else")
        if currency.upper() != "CNY":
            raise ProviderError("Alipay face-to-face trades here are in CNY",
                                code="BAD_CURRENCY")
        biz = {"out_trade_no": merchant_ref, "scene": "bar_code", "auth_code": auth_code,
               "product_code": "FACE_TO_FACE_PAYMENT", "subject": subject or merchant_ref,
               "total_amount": fen_to_yuan(amount_minor)}
        if terminal:
            biz["terminal_id"] = terminal[:32]
        return {"biz": biz, "amount_minor": amount_minor}

    def _charge_reply(self, merchant_ref: str, job: dict) -> dict | None:
        resp = self.call_api("alipay.trade.pay", job["biz"])
        reply = map_response("alipay.trade.pay", resp)
        if reply is None or not reply["ok"]:
            return reply
        if reply["status"] == "repeat":
            # a repeat of a paid out_trade_no: nothing charged again; its state is the
            # query's answer
            q = self._query_reply(merchant_ref)
            if q is None:
                return None
            return {**q, "duplicate": True}
        if reply["status"] == "ok":
            return self._paid_reply(resp)
        return reply

    def _paid_reply(self, resp: Mapping) -> dict:
        try:
            paid = yuan_to_fen(str(resp.get("total_amount")))
        except ProviderError:
            paid = 0
        return _reply("paid", None, resp, paid_minor=paid)

    # -- query / cancel / refund -------------------------------------------------------
    def _query_reply(self, merchant_ref: str) -> dict | None:
        resp = self.call_api("alipay.trade.query", {"out_trade_no": merchant_ref})
        reply = map_response("alipay.trade.query", resp)
        if reply is None or not reply["ok"] or reply["status"] != "ok":
            return reply
        st = TRADE_STATUS.get(str(resp.get("trade_status")))
        if st is None:
            return _reply("unknown", None, resp)
        if st == "paid":
            return self._paid_reply(resp)
        if st == "paying":
            return _reply("paying", "USERPAYING", resp)
        return _reply("closed", None, resp)

    def query(self, merchant_ref: str) -> ProviderResult:
        """``alipay.trade.query``: WAIT_BUYER_PAY → unknown (USERPAYING),
        TRADE_SUCCESS / TRADE_FINISHED → paid, TRADE_CLOSED → reversed,
        ACQ.TRADE_NOT_EXIST → not_found."""
        _check_ref(merchant_ref)
        return self.result("query", merchant_ref, self._query_reply(merchant_ref))

    def reverse(self, merchant_ref: str) -> ProviderResult:
        """``alipay.trade.cancel``: an unpaid trade is closed (``action`` close), a
        paid one given back in full (``action`` refund); ``reversed`` either way."""
        _check_ref(merchant_ref)
        resp = self.call_api("alipay.trade.cancel", {"out_trade_no": merchant_ref})
        reply = map_response("alipay.trade.cancel", resp)
        if reply is not None and reply["ok"] and reply["status"] == "ok":
            if resp.get("retry_flag") == "Y":
                reply = _reply("unknown", "SYSTEMERROR", resp,
                               message="cancel not done yet (retry_flag Y): cancel again")
            else:
                reply = _reply("reversed", None, resp,
                               message=f"action {resp.get('action') or 'close'}")
        return self.result("reverse", merchant_ref, reply)

    def refund(self, merchant_ref: str, refund_ref: str, amount_minor: int) -> ProviderResult:
        """``alipay.trade.refund`` with ``out_request_no`` = ``refund_ref`` (a retry with
        the same one never refunds twice: ``fund_change`` N). ``refunded_minor``:
        Alipay's ``refund_fee``, the trade's refunds so far."""
        _check_ref(merchant_ref)
        _check_ref(refund_ref)
        _check_amount(amount_minor)
        resp = self.call_api("alipay.trade.refund", {
            "out_trade_no": merchant_ref, "refund_amount": fen_to_yuan(amount_minor),
            "out_request_no": refund_ref})
        reply = map_response("alipay.trade.refund", resp)
        if reply is not None and reply["ok"] and reply["status"] == "ok":
            try:
                total = yuan_to_fen(str(resp.get("refund_fee")))
            except ProviderError:
                total = 0
            reply = _reply("refunded", None, resp, refunded_minor=total,
                           duplicate=resp.get("fund_change") == "N")
        return self.result("refund", merchant_ref, reply)

    def refund_query(self, merchant_ref: str, refund_ref: str) -> ProviderResult:
        """``alipay.trade.fastpay.refund.query``: ``refunded`` (``refunded_minor``: this
        refund's amount) when Alipay holds the refund (``refund_status``
        REFUND_SUCCESS, or absent with the refund's fields present), ``not_found``
        when it does not — a refund that may be retried with the same refund_ref."""
        _check_ref(merchant_ref)
        _check_ref(refund_ref)
        resp = self.call_api("alipay.trade.fastpay.refund.query",
                             {"out_trade_no": merchant_ref, "out_request_no": refund_ref})
        reply = map_response("alipay.trade.fastpay.refund.query", resp)
        if reply is not None and reply["ok"] and reply["status"] == "ok":
            status = resp.get("refund_status")
            if resp.get("out_request_no") == refund_ref and resp.get("refund_amount") \
                    and status in (None, "", "REFUND_SUCCESS"):
                reply = _reply("refunded", None, resp,
                               refunded_minor=yuan_to_fen(str(resp["refund_amount"])))
            else:
                reply = _reply("not_found", "ORDERNOTEXIST", resp,
                               message="Alipay holds no refund under this refund_ref")
        return self.result("refund_query", merchant_ref, reply)

    # -- the merchant-presented QR ------------------------------------------------------
    def precreate(self, merchant_ref: str, amount_minor: int, currency: str, *,
                  terminal: str | None = None, subject: str | None = None,
                  notify_url: str | None = None) -> ProviderResult:
        """``alipay.trade.precreate``: an order the shopper pays by scanning
        ``code_url`` (Alipay's ``qr_code``) — ``unknown`` / ``USERPAYING`` until the
        notification (:meth:`notification`) or a query says otherwise. The
        notification goes to ``notify_url`` (default: the channel's)."""
        _check_money(amount_minor, currency)
        _check_ref(merchant_ref)
        if currency.upper() != "CNY":
            raise ProviderError("Alipay face-to-face trades here are in CNY",
                                code="BAD_CURRENCY")
        biz = {"out_trade_no": merchant_ref, "total_amount": fen_to_yuan(amount_minor),
               "subject": subject or merchant_ref}
        if terminal:
            biz["terminal_id"] = terminal[:32]
        resp = self.call_api("alipay.trade.precreate", biz,
                             notify_url=notify_url or self.notify_url)
        reply = map_response("alipay.trade.precreate", resp)
        qr = None
        if reply is not None and reply["ok"] and reply["status"] == "repeat":
            q = self._query_reply(merchant_ref)         # already paid: its state
            reply = None if q is None else {**q, "duplicate": True}
        elif reply is not None and reply["ok"] and reply["status"] == "ok":
            qr = resp.get("qr_code")
            if not isinstance(qr, str) or not qr:
                reply = None
            else:
                reply = _reply("paying", "USERPAYING", resp)
        res = self.result("precreate", merchant_ref, reply)
        return replace(res, code_url=qr) if qr else res

    def notification(self, headers: Mapping, body: bytes) -> ProviderResult:
        """An asynchronous notification (a form POST from Alipay), verified: its
        ``sign`` over the sorted parameters without ``sign`` and ``sign_type``
        (ProviderError ``BAD_SIGNATURE``), ``app_id`` this channel's and ``seller_id``
        the configured merchant's (``BAD_NOTIFICATION``). The trade's result:
        TRADE_SUCCESS / TRADE_FINISHED → paid (``paid_minor`` = total_amount),
        TRADE_CLOSED → reversed, WAIT_BUYER_PAY → unknown. The caller answers with
        :meth:`notification_ack` — and checks the amount against its order."""
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if "application/x-www-form-urlencoded" not in ctype.lower():
            raise ProviderError("an Alipay notification is a form POST",
                                code="BAD_NOTIFICATION")
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                           strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise ProviderError("an Alipay notification that is not a UTF-8 form",
                                code="BAD_NOTIFICATION") from None
        params: dict[str, str] = {}
        for k, v in pairs:
            if k in params:
                raise ProviderError(f"a notification with {k} twice", code="BAD_NOTIFICATION")
            params[k] = v
        if params.get("sign_type") not in (None, "RSA2") or not rsa2_verify(
                sign_content(params, exclude=("sign", "sign_type")), params.get("sign", ""),
                self._alipay_key):
            log.warning("alipay notification: the signature does not verify: refused")
            raise ProviderError("the notification's signature does not verify with "
                                "Alipay's public key", code="BAD_SIGNATURE")
        if params.get("app_id") != self.app_id:
            raise ProviderError("a notification for another app_id", code="BAD_NOTIFICATION")
        if self.seller_id is not None and params.get("seller_id") != self.seller_id:
            raise ProviderError("a notification for another merchant (seller_id)",
                                code="BAD_NOTIFICATION")
        ref = params.get("out_trade_no", "")
        st = TRADE_STATUS.get(params.get("trade_status", ""))
        if not ref or st is None:
            raise ProviderError("a notification without out_trade_no or a known "
                                "trade_status", code="BAD_NOTIFICATION")
        try:
            paid = yuan_to_fen(params.get("total_amount", "")) if st == "paid" else 0
        except ProviderError:
            raise ProviderError("a notification whose total_amount is not yuan",
                                code="BAD_NOTIFICATION") from None
        reply = {"ok": True, "status": st, "code": "USERPAYING" if st == "paying" else None,
                 "provider_ref": params.get("trade_no") or None, "paid_minor": paid,
                 "message": f"notification {params.get('notify_id', '')}".strip()}
        return self.result("notification", ref, reply)

    @staticmethod
    def notification_ack(ok: bool) -> tuple[int, str, bytes]:
        """The answer to a notification: the body ``success`` when it was taken (Alipay
        stops sending it); anything else (``failure``) makes Alipay send it again on
        its schedule (4m, 10m, 10m, 1h, 2h, 6h, 15h)."""
        return 200, "text/plain; charset=utf-8", b"success" if ok else b"failure"

    # -- bills --------------------------------------------------------------------------
    def bill(self, date: str, inject: Mapping | None = None) -> BillFile:
        """``alipay.data.dataservice.bill.downloadurl.query`` (``bill_type`` trade,
        ``bill_date`` the China Standard Time day) → GET ``bill_download_url`` → the
        zip, kept as it came (``raw``, ``suffix`` zip). ``inject`` (simulator only):
        corrupt it first (``POST /_sim/bill_inject``). ProviderError ``TIMEOUT``,
        ``NO_BILL`` (Alipay has none), ``BAD_BILL``."""
        from lanecore.core.pay import recon
        recon.check_date(date)
        record = None
        if inject is not None:
            r = self._sim("POST", "/_sim/bill_inject", {"date": date, "inject": dict(inject)})
            record = r.get("injected")
        resp = self.call_api("alipay.data.dataservice.bill.downloadurl.query",
                             {"bill_type": "trade", "bill_date": date})
        reply = map_response("alipay.data.dataservice.bill.downloadurl.query", resp)
        if reply is None:
            raise ProviderError(f"no answer about the bill of {date}", code="TIMEOUT")
        if not reply["ok"]:
            raise ProviderError(reply["error"]["message"], code=reply["error"]["code"])
        url = resp.get("bill_download_url") if reply["status"] == "ok" else None
        if not isinstance(url, str) or not url:
            raise ProviderError(f"Alipay has no bill of {date}: {reply.get('message')}",
                                code="NO_BILL")
        got = self._download(url)
        if got is None:
            raise ProviderError(f"the bill of {date} did not download", code="TIMEOUT")
        if got.status != 200 or not got.body.startswith(b"PK"):
            raise ProviderError(f"the bill of {date}: HTTP {got.status}, not a zip",
                                code="BAD_BILL")
        _, rows = parse_bill_zip(got.body, pid=None, channel="alipay")
        u = urllib.parse.urlsplit(url)
        name = dict(urllib.parse.parse_qsl(u.query)).get("downloadFileName") \
            or u.path.rsplit("/", 1)[-1]
        return BillFile(date, "alipay", name, len(rows), None, record, raw=got.body,
                        suffix="zip")

    def _download(self, url: str):
        """GET a bill download URL: on the API's own origin with its client, on
        another host (Alipay's ``dwbillcenter.alipay.com``) with a client of that
        origin — always over HTTPS (an ``http://`` URL is fetched as ``https://``)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ProviderError("the bill download URL is not an http(s) URL",
                                code="BAD_BILL")
        origin = f"https://{u.netloc}" if u.scheme == "https" or u.port is None \
            else None
        if origin is None:
            raise ProviderError("a plain-HTTP bill URL with a port: refused",
                                code="PLAIN_NOT_ALLOWED")
        target = urllib.parse.urlunsplit(("https", u.netloc, u.path, u.query, ""))
        if (u.hostname, u.port or 443) == (self.http.host, self.http.port):
            return self.http.request("GET", target)
        with self._lock:
            client = self._origins.get(origin)
            if client is None:
                client = self._origins[origin] = HttpsClient(
                    origin, ca_file=self.ca_file, timeout_s=self.timeout_s)
        return client.request("GET", target)

    def bill_rows(self, bill: BillFile, channel: str) -> list:
        """The reconciliation rows of an Alipay bill zip: the detail file
        (``<pid>_<yyyymmdd>_业务明细.csv``, GBK, ``#`` comment lines around a CSV
        table): ``交易`` lines are charges, ``退款`` lines refunds (keyed by
        ``退款批次号/请求号``) or — with the trade's own out_trade_no as request number
        — a cancel's give-back (``reverse``). Amounts from ``商家实收（元）`` in fen,
        fees from ``服务费（元）`` (negative there: charged). The bill's account must
        be this channel's ``seller_id``: ProviderError ``BILL_MERCHANT_MISMATCH``."""
        if self.seller_id is None:
            raise ProviderError("reading an Alipay bill needs the channel's seller_id "
                                "(the merchant's pid) to check whose bill it is",
                                code="BAD_CONFIG")
        if bill.raw is None:
            raise ProviderError("an Alipay bill comes as its zip (raw)", code="BAD_BILL")
        return parse_bill_zip(bill.raw, pid=self.seller_id, channel=channel)[1]

    # -- the simulator's admin paths -----------------------------------------------------
    def _sim(self, method: str, path: str, doc: Mapping | None = None) -> dict:
        body = None if doc is None else json.dumps(dict(doc)).encode("utf-8")
        r = self.http.request(method, path, body,
                              {"Content-Type": "application/json"} if body else {})
        if r is None:
            raise ProviderError(f"no answer from {self.http.base_url}{path}", code="TIMEOUT")
        try:
            out = json.loads(r.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            out = None
        if r.status != 200 or not isinstance(out, dict):
            err = out.get("error", {}) if isinstance(out, dict) else {}
            raise ProviderError(str(err.get("message", f"HTTP {r.status}")),
                                code=str(err.get("code", "BAD_REPLY")))
        return out

    def configure(self, **knobs) -> dict | None:
        """The simulator's knobs (``POST /_sim/configure``; not Alipay's API)."""
        return self._sim("POST", "/_sim/configure", knobs).get("behaviour")

    def stats(self) -> dict | None:
        """The simulator's counters (``GET /_sim/stats``; not Alipay's API) and this
        connector's (``connector``)."""
        try:
            out = self._sim("GET", "/_sim/stats")
        except ProviderError:
            out = {}
        with self._lock:
            out["connector"] = dict(self.counts)
        return out

    def ping(self) -> bool:
        """Whether Alipay answers a signed call (a query of a reference nobody used)."""
        return self.call_api("alipay.trade.query", {"out_trade_no": "lanecore-ping"}) \
            is not None


def from_config(name: str, table: Mapping, data_dir) -> AlipayConnector:
    """The connector of a payments.toml ``[channels.NAME]`` table with ``protocol =
    "alipay"``: ``endpoint`` (https only, else ``PLAIN_NOT_ALLOWED``), ``app_id``,
    ``app_private_key_file`` (PEM, 0600: ``BAD_PERMISSIONS``; ``KEY_FILE_MISSING``),
    ``alipay_public_key_file``, optional ``seller_id``, ``ca_file``, ``timeout_s``,
    ``notify_url``. Relative paths are relative to ``data_dir``."""
    data_dir = Path(data_dir)
    endpoint = table.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
        raise ProviderError(f"channel {name}: endpoint must be an https:// URL, got "
                            f"{endpoint!r:.60}", code="PLAIN_NOT_ALLOWED")
    for key in ("app_id", "app_private_key_file", "alipay_public_key_file"):
        if not table.get(key):
            raise ProviderError(f"channel {name}: {key} is required for protocol alipay",
                                code="BAD_CONFIG")
    priv = read_key_file(resolve_path(table["app_private_key_file"], data_dir,
                                      "app_private_key_file"), "Alipay app private key")
    pub_path = resolve_path(table["alipay_public_key_file"], data_dir,
                            "alipay_public_key_file")
    try:
        pub = pub_path.read_bytes()
    except OSError:
        raise ProviderError(f"channel {name}: {pub_path} cannot be read",
                            code="KEY_FILE_MISSING") from None
    ca = table.get("ca_file")
    timeout = table.get("timeout_s", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ProviderError(f"channel {name}: timeout_s is a number of seconds",
                            code="BAD_CONFIG")
    return AlipayConnector(
        endpoint, app_id=str(table["app_id"]), app_private_key=load_private_key(priv),
        alipay_public_key=load_public_key(pub), seller_id=table.get("seller_id"),
        ca_file=None if ca is None else resolve_path(ca, data_dir, "ca_file"),
        timeout_s=float(timeout), notify_url=table.get("notify_url"))


# the codes this module reports must be lanecore's
assert all(c in DECLINES["wallet"] or c in OTHER_CODES for c, _ in SUB_CODES.values())
