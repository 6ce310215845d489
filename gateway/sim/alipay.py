"""Alipay's OpenAPI, simulated: ``lanecore sim provider --kind alipay --protocol
alipay --data-dir D [--bind HOST:PORT] [--fast] [knobs]``. ``docs/pay/alipay.md``.

An HTTPS server (the test CA under ``D/pki/``) serving ``POST /gateway.do`` the way
Alipay does: form parameters, RSA2 both ways — every request's ``sign`` is checked
with the app's public key (``40002 isv.invalid-signature`` when it does not
verify), every answer is ``{"<method>_response": {...}, "sign": "..."}`` signed with
"Alipay's" private key over the response object's JSON text. Behind it, the
provider engine (``gateway.sim.provider.Provider``, ``D/alipay.sqlite``) decides
every trade; its results become Alipay's codes: ``10000``, ``10003`` (user paying),
``20000`` / ``40004 ACQ.SYSTEM_ERROR`` (system error: query), ``40004`` + sub-code
(declines), and its "timeout" / "drop" actions hold the connection without an
answer.

Keys (made on first start, kept after): ``D/alipay/alipay_private.pem`` (0600) and
``alipay_public.pem`` — "Alipay's" keypair; ``app_private.pem`` (0600) and
``app_public.pem`` — the test merchant's app keypair (on the real platform the
merchant makes it and uploads the public half); ``merchant.json`` — the test
merchant's ``app_id`` and pid (``seller_id``, different per data directory). The
ready line's ``channel`` map is what payments.toml's ``[channels.X]`` needs.

Precreated orders (``alipay.trade.precreate``): ``POST /_sim/scan {merchant_ref,
outcome}`` is the shopper's wallet paying (or cancelling); then the signed
asynchronous notification goes to the order's ``notify_url``, repeated on Alipay's
schedule (4m, 10m, 10m, 1h, 2h, 6h, 15h; ``--fast``: a thousandth of that) until
the body ``success`` comes back. Bills: ``alipay.data.dataservice.bill.
downloadurl.query`` answers a short-lived signed URL on this server for the day's
zip (GBK CSV detail + summary files, Alipay's layout). Simulator-only paths:
``/_sim/configure`` (the engine's knobs, plus ``tamper_next``: the next N answers
carry a wrong signature; ``systemerror_code``: ``20000`` or ``ACQ.SYSTEM_ERROR``;
``notify_scale``: the notification schedule's factor; ``notify_ca_file``: an extra
CA trusted for notify URLs), ``/_sim/stats``, ``/_sim/scan``, ``/_sim/bill_inject``.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import signal
import ssl
import threading
import time
import urllib.parse
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lanecore.core.config import private_dir, write_private
from lanecore.core.pay import recon
from lanecore.gateway.net.protocol import ProtocolError
from lanecore.gateway.payments import alipay as A
from lanecore.gateway.payments.httpapi import (ALIPAY_SCHEDULE_S, HttpReply, NoAnswer,
                                               Notifier, HttpsServer, client_context,
                                               make_test_pki, parse_bind, post_url,
                                               trust_context)
from lanecore.gateway.payments.providers import ProviderError
from lanecore.gateway.sim.provider import Provider

__all__ = ["AlipaySim", "run", "ENGINE_SUB_CODES", "build_bill_zip"]

log = logging.getLogger("lanecore.sim.alipay")

#: The engine's decline codes → Alipay's ``40004`` sub-codes (and sub_msg).
ENGINE_SUB_CODES = {
    "AUTH_CODE_INVALID": ("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败"),
    "AUTH_CODE_EXPIRED": ("ACQ.PAYMENT_AUTH_CODE_INVALID", "付款码已过期，请刷新后重新扫码"),
    "NOTENOUGH": ("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"),
    "TRADE_ERROR": ("ACQ.PAYMENT_REQUEST_HAS_RISK", "支付有风险"),
    "EXCEED_LIMIT": ("ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额"),
    "USERCANCEL": ("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    "ORDERCLOSED": ("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    "OUT_TRADE_NO_USED": ("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"),
    "BANKERROR": ("ACQ.SYSTEM_ERROR", "系统错误"),
    "SYSTEMERROR": ("ACQ.SYSTEM_ERROR", "系统错误"),
    "ORDERPAID": ("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"),
    "ORDERNOTEXIST": ("ACQ.TRADE_NOT_EXIST", "交易不存在"),
    "TRADE_STATUS_ERROR": ("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"),
    "REFUND_EXCEEDS_PAID": ("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"),
    "REFUND_REF_USED": ("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求重复"),
}
#: How long a bill download URL stays valid (Alipay: 30 seconds).
BILL_URL_TTL_S = 30.0
#: How far a request's ``timestamp`` may be from the simulator's clock.
MAX_SKEW_S = 15 * 60
_BUYER_ID = "2088102177846880"
_BUYER_LOGON = "159****5620"


class _Reject(Exception):
    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.doc = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _business(sub_code: str, sub_msg: str) -> dict:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code,
            "sub_msg": sub_msg}


def _ok(**fields) -> dict:
    return {"code": "10000", "msg": "Success", **fields}


def _cst(ts_iso: str) -> str:
    """A BillRow's UTC ISO time → Alipay's ``yyyy-MM-dd HH:mm:ss`` (CST)."""
    t = datetime.strptime(ts_iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return t.astimezone(A.CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def _cn_date(d: datetime) -> str:
    return d.strftime("%Y年%m月%d日 %H:%M:%S")


def build_bill_zip(pid: str, date: str, rows: list, now: datetime | None = None
                   ) -> tuple[str, bytes]:
    """``(file name, zip bytes)`` of an Alipay trade bill for ``date`` (a CST day)
    from bill rows: ``<pid>_<yyyymmdd>_业务明细.csv`` and ``…_业务明细(汇总).csv``,
    GBK, CRLF, ``#`` comment lines around each table."""
    day = datetime.strptime(date, "%Y-%m-%d")
    ymd = day.strftime("%Y%m%d")
    now = (now or datetime.now(timezone.utc)).astimezone(A.CHINA_TZ)
    span = (f"#起始日期：[{_cn_date(day)}]   终止日期：[{_cn_date(day + timedelta(days=1))}]")
    account = f"#账号：[{pid}0156]"
    y = A.fen_to_yuan
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    buf.write("#支付宝业务明细查询\r\n" + account + "\r\n" + span + "\r\n")
    buf.write("#" + "-" * 41 + "业务明细列表" + "-" * 40 + "\r\n")
    w.writerow(A.BILL_DETAIL_COLUMNS)
    n_pay = n_ref = 0
    got = back = fee_total = 0
    for r in rows:
        t = _cst(r.trade_time)
        if r.type == "charge":
            n_pay += 1
            got += r.amount_minor
            sign, what, request_no, memo = 1, "交易", "", ""
        else:
            n_ref += 1
            back += r.amount_minor
            sign, what = -1, "退款"
            request_no = r.refund_ref if r.type == "refund" else r.merchant_ref
            memo = "交易撤销" if r.type == "reverse" else ""
        fee_total += r.fee_minor
        amount = y(sign * r.amount_minor)
        w.writerow([r.provider_ref + "\t", r.merchant_ref + "\t", what, "lanecore", t, t,
                    "", "", "", "", _BUYER_LOGON, amount, amount, "0.00", "0.00", "0.00",
                    "0.00", "", "", "0.00", "0.00",
                    request_no + "\t" if request_no else "", y(-r.fee_minor), "0.00", memo])
    buf.write("#" + "-" * 41 + "业务明细列表结束" + "-" * 36 + "\r\n")
    buf.write(f"#交易合计：{n_pay}笔，商家实收共：{y(got)}元，商家优惠共：0.00元\r\n")
    buf.write(f"#退款合计：{n_ref}笔，商家实收退款共：{y(-back)}元，商家优惠退款共：0.00元\r\n")
    buf.write(f"#导出时间：[{_cn_date(now)}]\r\n")
    detail = buf.getvalue()

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    buf.write("#支付宝业务汇总查询\r\n" + account + "\r\n" + span + "\r\n")
    buf.write("#" + "-" * 41 + "业务汇总列表" + "-" * 40 + "\r\n")
    w.writerow(A.BILL_SUMMARY_COLUMNS)
    net = got - back - fee_total
    totals = [n_pay, n_ref, y(got - back), y(got - back), "0.00", "0.00", "0.00",
              y(-fee_total), "0.00", y(net)]
    w.writerow(["", "", *totals])
    w.writerow(["合计", "", *totals])
    buf.write("#" + "-" * 41 + "业务汇总列表结束" + "-" * 36 + "\r\n")
    buf.write(f"#导出时间：[{_cn_date(now)}]\r\n")
    summary = buf.getvalue()

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{pid}_{ymd}_业务明细.csv", detail.encode("gbk"))
        zf.writestr(f"{pid}_{ymd}_业务明细(汇总).csv", summary.encode("gbk"))
    return f"{pid}_{ymd}.csv.zip", out.getvalue()


def _credentials(data_dir: Path) -> dict:
    """The simulator's keys and the test merchant's ids under ``D/alipay/`` (made on
    first start): paths and ids for the ready line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    d = private_dir(data_dir / "alipay")
    files = {}
    for who in ("alipay", "app"):
        priv, pub = d / f"{who}_private.pem", d / f"{who}_public.pem"
        if not (priv.exists() and pub.exists()):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_private(priv, key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
            write_private(pub, key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        files[who] = (priv, pub)
    merchant = d / "merchant.json"
    if merchant.exists():
        ids = json.loads(merchant.read_text())
    else:
        ids = {"app_id": "2021" + "".join(secrets.choice("0123456789") for _ in range(12)),
               "seller_id": "2088" + "".join(secrets.choice("0123456789") for _ in range(12))}
        write_private(merchant, json.dumps(ids).encode())
    return {"files": files, **ids}


class AlipaySim:
    """The HTTPS handler around one engine (one lock: the engine is not thread-safe)."""

    def __init__(self, engine: Provider, data_dir: Path, *, fast: bool) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.data_dir = data_dir
        self.pki = make_test_pki(private_dir(data_dir / "pki"))
        cred = _credentials(data_dir)
        self.app_id, self.pid = cred["app_id"], cred["seller_id"]
        (self.alipay_priv_file, self.alipay_pub_file) = cred["files"]["alipay"]
        (self.app_priv_file, self.app_pub_file) = cred["files"]["app"]
        self.alipay_key = A.load_private_key(self.alipay_priv_file.read_bytes())
        self.app_public = A.load_public_key(self.app_pub_file.read_bytes())
        self.bill_secret = secrets.token_bytes(32)
        self.tamper_next = 0
        self.systemerror_code = "20000"
        self.counts = {"requests": 0, "bad_signature": 0, "tampered": 0, "rejected": 0,
                       "bill_downloads": 0}
        self.injected: dict[str, tuple[list, dict]] = {}
        self.bills: dict[str, tuple[bytes, float]] = {}
        self.notifier = Notifier(self._post, lambda r: r.status == 200
                                 and r.body.strip() == b"success",
                                 schedule_s=ALIPAY_SCHEDULE_S, scale=0.001 if fast else 1.0)
        self.notify_ca_file: str | None = None
        self.base_url = ""
        with self.lock:
            engine.con.execute("CREATE TABLE IF NOT EXISTS alipay_orders ("
                               "merchant_ref TEXT PRIMARY KEY, notify_url TEXT, "
                               "subject TEXT)")

    # -- HTTP --------------------------------------------------------------------------
    def handler(self, method: str, target: str, headers: dict, body: bytes, cert):
        u = urllib.parse.urlsplit(target)
        if u.path == A.GATEWAY_PATH and method == "POST":
            return self._gateway(u.query, headers, body)
        if u.path == "/downloadBillFile.resource" and method == "GET":
            return self._download(u.query)
        if u.path.startswith("/_sim/"):
            return self._admin(method, u.path, body)
        return 404, {"Content-Type": "text/plain"}, b"not found\n"

    def _json(self, status: int, doc) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def _admin(self, method: str, path: str, body: bytes):
        try:
            doc = json.loads(body.decode("utf-8")) if body else {}
            if not isinstance(doc, dict):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            return self._json(400, {"error": {"code": "BAD_JSON",
                                              "message": "a JSON object is expected"}})
        try:
            if path == "/_sim/configure" and method == "POST":
                return self._json(200, {"behaviour": self.configure(doc)})
            if path == "/_sim/stats" and method == "GET":
                with self.lock:
                    out, _ = self.engine.handle("stats", {})
                    out.update(self.counts)
                out["notifications"] = self.notifier.stats()
                return self._json(200, out)
            if path == "/_sim/scan" and method == "POST":
                return self._json(200, self.scan(doc))
            if path == "/_sim/bill_inject" and method == "POST":
                return self._json(200, self.bill_inject(doc))
        except ProtocolError as exc:
            return self._json(400, {"error": {"code": exc.code, "message": exc.message}})
        return self._json(404, {"error": {"code": "NOT_FOUND", "message": path}})

    def configure(self, doc: dict) -> dict:
        """The engine's knobs and the simulator's own: ``tamper_next``,
        ``systemerror_code``, ``notify_scale`` (the notification schedule's factor,
        (0, 10]) and ``notify_ca_file`` (an extra CA trusted for notify URLs)."""
        knobs = dict(doc)
        tamper = knobs.pop("tamper_next", None)
        syserr = knobs.pop("systemerror_code", None)
        scale = knobs.pop("notify_scale", None)
        has_ca = "notify_ca_file" in knobs
        ca = knobs.pop("notify_ca_file", None)
        if tamper is not None and (isinstance(tamper, bool) or not isinstance(tamper, int)
                                   or tamper < 0):
            raise ProtocolError("BAD_FIELD", "tamper_next is a count ≥ 0")
        if syserr is not None and syserr not in ("20000", "ACQ.SYSTEM_ERROR"):
            raise ProtocolError("BAD_FIELD", "systemerror_code is 20000 or ACQ.SYSTEM_ERROR")
        if scale is not None and (isinstance(scale, bool) or not isinstance(
                scale, (int, float)) or not 0 < scale <= 10):
            raise ProtocolError("BAD_FIELD", "notify_scale is in (0, 10]")
        if ca is not None and not (isinstance(ca, str) and Path(ca).is_file()):
            raise ProtocolError("BAD_FIELD", "notify_ca_file is a CA certificate file")
        if ca is not None:
            try:
                client_context(self.pki.ca_file).load_verify_locations(ca)
            except (OSError, ValueError, ssl.SSLError):
                raise ProtocolError("BAD_FIELD", "notify_ca_file holds no CA "
                                                 "certificate") from None
        with self.lock:
            out, _ = self.engine.handle("configure", knobs)
            if tamper is not None:
                self.tamper_next = tamper
            if syserr is not None:
                self.systemerror_code = syserr
            if scale is not None:
                self.notifier.scale = float(scale)
            if has_ca:
                self.notify_ca_file = ca
            return {**out["behaviour"], "tamper_next": self.tamper_next,
                    "systemerror_code": self.systemerror_code,
                    "notify_scale": self.notifier.scale,
                    "notify_ca_file": self.notify_ca_file}

    def _gateway(self, query: str, headers: dict, body: bytes):
        with self.lock:
            self.counts["requests"] += 1
        method = "error"
        try:
            params = self._params(query, headers, body)
            method = params["method"]
            biz = self._check(params)
            resp = getattr(self, "_m_" + method.replace(".", "_"))(biz, params)
        except _Reject as rej:
            with self.lock:
                self.counts["rejected"] += 1
            resp = rej.doc
        name = "error_response" if method == "error" else \
            method.replace(".", "_") + "_response"
        return self._signed(name, resp)

    def _signed(self, name: str, resp: dict):
        text = json.dumps(resp, ensure_ascii=False, separators=(",", ":"))
        signed = text
        with self.lock:
            if self.tamper_next > 0:
                self.tamper_next -= 1
                self.counts["tampered"] += 1
                signed = text + " "         # a signature over something else
        sign = A.rsa2_sign(signed, self.alipay_key)
        out = '{"' + name + '":' + text + ',"sign":' + json.dumps(sign) + "}"
        return 200, {"Content-Type": "application/json;charset=utf-8"}, out.encode("utf-8")

    def _params(self, query: str, headers: dict, body: bytes) -> dict:
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            if "application/x-www-form-urlencoded" in headers.get("content-type", ""):
                pairs += urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                                strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-charset",
                          "请求参数不是 UTF-8 表单") from None
        params: dict[str, str] = {}
        for k, v in pairs:
            if k in params:
                raise _Reject("40002", "Invalid Arguments", "isv.invalid-parameter",
                              f"参数 {k} 重复")
            params[k] = v
        if not params.get("method"):
            raise _Reject("40001", "Missing Required Arguments", "isv.missing-method",
                          "缺少方法名参数")
        if params["method"] not in A._METHODS:
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-method",
                          "不存在的方法名")
        return params

    def _check(self, p: dict) -> dict:
        for k, sub in (("app_id", "isv.missing-app-id"), ("sign", "isv.missing-signature"),
                       ("sign_type", "isv.missing-signature-type"),
                       ("timestamp", "isv.missing-timestamp"),
                       ("version", "isv.missing-version")):
            if not p.get(k):
                raise _Reject("40001", "Missing Required Arguments", sub, f"缺少 {k}")
        if p["sign_type"] != "RSA2":
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-signature-type",
                          "无效签名类型")
        if p["app_id"] != self.app_id:
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID参数")
        if not A.rsa2_verify(A.sign_content(p), p["sign"], self.app_public):
            with self.lock:
                self.counts["bad_signature"] += 1
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-signature",
                          "验签出错")
        try:
            ts = datetime.strptime(p["timestamp"], "%Y-%m-%d %H:%M:%S") \
                .replace(tzinfo=A.CHINA_TZ)
        except ValueError:
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-timestamp",
                          "非法的时间戳参数") from None
        if abs(ts.timestamp() - time.time()) > MAX_SKEW_S:
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-timestamp",
                          "时间戳与服务器时间相差太大")
        if p.get("charset", "utf-8").lower() != "utf-8" or p.get("format", "JSON").upper() \
                != "JSON" or p["version"] != "1.0":
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-parameter",
                          "charset utf-8, format JSON, version 1.0")
        try:
            biz = json.loads(p.get("biz_content") or "{}")
            if not isinstance(biz, dict):
                raise ValueError
        except ValueError:
            raise _Reject("40002", "Invalid Arguments", "isv.invalid-parameter",
                          "biz_content 不是 JSON 对象") from None
        return biz

    def _engine(self, op: str, req: dict, *, trade: bool = True) -> dict:
        """One engine op under the lock; its "timeout"/"drop": hold the connection."""
        with self.lock:
            try:
                reply, action = self.engine.handle(op, req)
            except ProtocolError as exc:
                raise _Reject(*_INVALID(exc.message)) from None
            latency = self.engine.behaviour.latency_s if trade else 0.0
            if action != "reply":
                self.engine.unanswered += 1
        if action != "reply":
            raise NoAnswer()
        if latency:
            time.sleep(latency)
        return reply

    def _amount(self, biz: dict, key: str) -> int:
        try:
            fen = A.yuan_to_fen(str(biz.get(key, "")))
        except Exception:
            fen = 0
        if fen <= 0:
            raise _Reject(*_INVALID(f"{key} 不是有效的金额"))
        return fen

    def _need(self, biz: dict, *keys: str) -> None:
        for k in keys:
            if not isinstance(biz.get(k), str) or not biz[k]:
                raise _Reject(*_INVALID(f"缺少参数 {k}"))

    def _trade_fields(self, r: dict) -> dict:
        return {"trade_no": r.get("provider_ref") or "", "out_trade_no": r["merchant_ref"],
                "buyer_logon_id": _BUYER_LOGON, "buyer_user_id": _BUYER_ID}

    def _decline(self, code: str | None) -> dict:
        if code == "SYSTEMERROR" and self.systemerror_code == "20000":
            return {"code": "20000", "msg": "Service Currently Unavailable",
                    "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"}
        sub, msg = ENGINE_SUB_CODES.get(code or "", ("ACQ.SYSTEM_ERROR", "系统错误"))
        if sub == "ACQ.SYSTEM_ERROR" and self.systemerror_code == "20000":
            return {"code": "20000", "msg": "Service Currently Unavailable",
                    "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"}
        return _business(sub, msg)

    def _m_alipay_trade_pay(self, biz: dict, p: dict) -> dict:
        self._need(biz, "out_trade_no", "scene", "auth_code", "subject")
        if biz["scene"] not in ("bar_code", "wave_code"):
            raise _Reject(*_INVALID("scene 只能是 bar_code 或 wave_code"))
        req = {"merchant_ref": biz["out_trade_no"], "amount_minor": self._amount(
            biz, "total_amount"), "currency": "CNY", "auth_code": biz["auth_code"]}
        if biz.get("terminal_id"):
            req["terminal"] = str(biz["terminal_id"])
        r = self._engine("charge", req)
        self._remember(biz["out_trade_no"], None, biz["subject"])
        st, code = r.get("status"), r.get("code")
        if st in ("paid", "refunded") and r.get("duplicate"):
            return self._decline("ORDERPAID")
        if st == "paid":
            y = A.fen_to_yuan(r["amount_minor"])
            return _ok(**self._trade_fields(r), total_amount=y, receipt_amount=y,
                       buyer_pay_amount=y, invoice_amount=y,
                       gmt_payment=A.timestamp(),
                       fund_bill_list=[{"fund_channel": "ALIPAYACCOUNT", "amount": y}])
        if st == "paying":
            return {"code": "10003", "msg": "Business Failed", **self._trade_fields(r),
                    "total_amount": A.fen_to_yuan(r["amount_minor"])}
        return self._decline(code)            # failed, or unknown (system error)

    def _trade_status(self, r: dict) -> str:
        st = r["status"]
        if st == "paid":
            return "TRADE_SUCCESS"
        if st == "refunded":
            return "TRADE_CLOSED" if r["refunded_minor"] >= r["amount_minor"] \
                else "TRADE_SUCCESS"
        if st == "paying":
            return "WAIT_BUYER_PAY"
        return "TRADE_CLOSED"

    def _m_alipay_trade_query(self, biz: dict, p: dict) -> dict:
        self._need(biz, "out_trade_no")
        r = self._engine("query", {"merchant_ref": biz["out_trade_no"]})
        if r["status"] == "not_found":
            return self._decline("ORDERNOTEXIST")
        y = A.fen_to_yuan(r["amount_minor"])
        out = _ok(**self._trade_fields(r), trade_status=self._trade_status(r), total_amount=y)
        if r.get("paid_minor"):
            out.update(receipt_amount=y, buyer_pay_amount=y, invoice_amount=y,
                       send_pay_date=A.timestamp())
        return out

    def _m_alipay_trade_cancel(self, biz: dict, p: dict) -> dict:
        self._need(biz, "out_trade_no")
        r = self._engine("reverse", {"merchant_ref": biz["out_trade_no"]})
        if r["status"] == "failed":
            return self._decline(r.get("code"))
        return _ok(trade_no=r.get("provider_ref") or "", out_trade_no=r["merchant_ref"],
                   retry_flag="N", action="refund" if r["status"] == "reversed" else "close")

    def _m_alipay_trade_refund(self, biz: dict, p: dict) -> dict:
        self._need(biz, "out_trade_no")
        ref = biz["out_trade_no"]
        rref = biz.get("out_request_no") or ref
        r = self._engine("refund", {"merchant_ref": ref, "refund_ref": str(rref),
                                    "amount_minor": self._amount(biz, "refund_amount")})
        if r.get("code"):
            return self._decline(r["code"])
        return _ok(**self._trade_fields(r), fund_change="N" if r.get("duplicate") else "Y",
                   refund_fee=A.fen_to_yuan(r["refunded_minor"]),
                   gmt_refund_pay=A.timestamp())

    def _m_alipay_trade_fastpay_refund_query(self, biz: dict, p: dict) -> dict:
        self._need(biz, "out_trade_no", "out_request_no")
        ref, rref = biz["out_trade_no"], biz["out_request_no"]
        t = self._engine("query", {"merchant_ref": ref})
        if t["status"] == "not_found":
            return self._decline("ORDERNOTEXIST")
        with self.lock:
            row = self.engine.con.execute(
                "SELECT amount_minor FROM refunds WHERE refund_ref = ? AND merchant_ref = ?",
                (rref, ref)).fetchone()
        if row is None:       # 10000 without the refund's fields: not refunded
            return _ok(trade_no=t.get("provider_ref") or "", out_trade_no=ref)
        return _ok(trade_no=t.get("provider_ref") or "", out_trade_no=ref,
                   out_request_no=rref, refund_amount=A.fen_to_yuan(row[0]),
                   total_amount=A.fen_to_yuan(t["amount_minor"]),
                   refund_status="REFUND_SUCCESS")

    def _m_alipay_trade_precreate(self, biz: dict, p: dict) -> dict:
        self._need(biz, "out_trade_no", "subject")
        req = {"merchant_ref": biz["out_trade_no"], "currency": "CNY",
               "amount_minor": self._amount(biz, "total_amount")}
        if biz.get("terminal_id"):
            req["terminal"] = str(biz["terminal_id"])
        r = self._engine("precreate", req)
        if r["status"] in ("paid", "refunded"):
            return self._decline("ORDERPAID")
        if r["status"] != "paying":
            return self._decline(r.get("code"))
        self._remember(biz["out_trade_no"], p.get("notify_url") or None, biz["subject"])
        return _ok(out_trade_no=r["merchant_ref"],
                   qr_code="https://qr.alipay.com/bax0" + r["provider_ref"][2:].lower())

    def _m_alipay_data_dataservice_bill_downloadurl_query(self, biz: dict, p: dict) -> dict:
        self._need(biz, "bill_type", "bill_date")
        if biz["bill_type"] != "trade":
            raise _Reject(*_INVALID("这里只有 trade 账单"))
        date = biz["bill_date"]
        try:
            recon.check_date(date)
            day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=A.CHINA_TZ)
        except (recon.ReconError, ValueError):
            raise _Reject(*_INVALID("bill_date 格式为 yyyy-MM-dd")) from None
        if day > datetime.now(A.CHINA_TZ):
            return _business("isp.bill_not_exist", "账单不存在")
        with self.lock:
            pending = self.injected.pop(date, None)
        rows = pending[0] if pending else self.day_rows(date)
        name, data = build_bill_zip(self.pid, date, rows)
        token = secrets.token_hex(16)
        expires = time.time() + BILL_URL_TTL_S
        with self.lock:
            now = time.time()
            for k in [k for k, (_, exp) in self.bills.items() if exp < now]:
                del self.bills[k]
            self.bills[token] = (data, expires)
        q = {"bizType": "trade", "userId": self.pid, "fileType": "csv.zip",
             "bizDates": date.replace("-", ""), "downloadFileName": name, "fileId": token,
             "timestamp": str(int(expires))}
        q["token"] = hmac.new(self.bill_secret, urllib.parse.urlencode(q).encode(),
                              hashlib.sha256).hexdigest()
        return _ok(bill_download_url=f"{self.base_url}/downloadBillFile.resource?"
                                     + urllib.parse.urlencode(q))

    def day_rows(self, date: str) -> list:
        """The engine's bill rows of the CST day ``date``."""
        with self.lock:
            return self.engine.bill_rows(date, A.BILL_UTC_OFFSET_S)

    def _download(self, query: str):
        q = dict(urllib.parse.parse_qsl(query))
        token = q.pop("token", "")
        want = hmac.new(self.bill_secret, urllib.parse.urlencode(q).encode(),
                        hashlib.sha256).hexdigest()
        with self.lock:
            got = self.bills.get(q.get("fileId", ""))
            ok = hmac.compare_digest(token, want) and got is not None \
                and got[1] >= time.time()
            if ok:
                self.counts["bill_downloads"] += 1
        if not ok:
            return 403, {"Content-Type": "text/plain"}, b"the link is invalid or expired\n"
        return 200, {"Content-Type": "application/octet-stream",
                     "Content-Disposition": "attachment; filename=bill.csv.zip"}, got[0]

    def bill_inject(self, doc: dict) -> dict:
        """Corrupt the next download of ``date``'s bill (``core.pay.recon.inject``)."""
        date, spec = doc.get("date"), doc.get("inject")
        if not isinstance(date, str) or not isinstance(spec, dict):
            raise ProtocolError("BAD_FIELD", "bill_inject takes {date, inject}")
        try:
            recon.check_date(date)
            rows, record = recon.inject(self.day_rows(date), spec)
        except recon.ReconError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        record = {"date": date, "kind": "alipay", **record}
        with self.lock:
            self.injected[date] = (rows, record)
        return {"injected": record}

    # -- precreated orders and their notifications --------------------------------------
    def _remember(self, ref: str, notify_url: str | None, subject: str) -> None:
        with self.lock:
            self.engine.con.execute(
                "INSERT INTO alipay_orders (merchant_ref, notify_url, subject) VALUES "
                "(?, ?, ?) ON CONFLICT (merchant_ref) DO UPDATE SET notify_url = "
                "COALESCE(excluded.notify_url, notify_url)", (ref, notify_url, subject))

    def scan(self, doc: dict) -> dict:
        r = self._engine("scan", doc, trade=False)
        with self.lock:
            row = self.engine.con.execute(
                "SELECT notify_url, subject FROM alipay_orders WHERE merchant_ref = ?",
                (r["merchant_ref"],)).fetchone()
        if r.get("changed") and row is not None and row[0]:
            body = self.notification_body(r, row[1] or "")
            self.notifier.send(row[0], body, {
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
            r["notified"] = row[0]
        return r

    def notification_body(self, r: dict, subject: str) -> bytes:
        """The signed form body of a trade's ``trade_status_sync`` notification."""
        y = A.fen_to_yuan(r["amount_minor"])
        now = A.timestamp()
        paid = r["status"] == "paid"
        params = {
            "notify_time": now, "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16), "app_id": self.app_id, "auth_app_id":
            self.app_id, "charset": "utf-8", "version": "1.0", "sign_type": "RSA2",
            "trade_no": r.get("provider_ref") or "", "out_trade_no": r["merchant_ref"],
            "buyer_id": _BUYER_ID, "buyer_logon_id": _BUYER_LOGON, "seller_id": self.pid,
            "trade_status": "TRADE_SUCCESS" if paid else "TRADE_CLOSED",
            "total_amount": y, "subject": subject, "gmt_create": now}
        if paid:
            params.update(receipt_amount=y, invoice_amount=y, buyer_pay_amount=y,
                          point_amount="0.00", gmt_payment=now, fund_bill_list=json.dumps(
                              [{"amount": y, "fundChannel": "ALIPAYACCOUNT"}],
                              separators=(",", ":")))
        else:
            params["gmt_close"] = now
        params["sign"] = A.rsa2_sign(A.sign_content(params, exclude=("sign", "sign_type")),
                                     self.alipay_key)
        return urllib.parse.urlencode(params).encode("ascii")

    def _post(self, url: str, body: bytes, headers: dict) -> HttpReply | None:
        """A notification's POST: the merchant's notify URL trusted by the system's
        CAs, the simulator's test CA and ``notify_ca_file`` when set."""
        with self.lock:
            extra = self.notify_ca_file
        return post_url(url, body, headers, context=trust_context(self.pki.ca_file, extra))

    def ready_line(self, kind: str, url: str) -> dict:
        channel = {"protocol": "alipay", "endpoint": url, "ca_file": str(self.pki.ca_file),
                   "app_id": self.app_id, "seller_id": self.pid,
                   "app_private_key_file": str(self.app_priv_file),
                   "alipay_public_key_file": str(self.alipay_pub_file)}
        return {"ready": True, "process": f"provider-{kind}", "provider": kind,
                "protocol": "alipay", "endpoint": url, "ca_file": str(self.pki.ca_file),
                "pid": os.getpid(), "data_dir": str(self.data_dir), "channel": channel}


def _INVALID(msg: str) -> tuple[str, str, str, str]:
    return ("40004", "Business Failed", "ACQ.INVALID_PARAMETER", msg)


def run(opts, behaviour) -> int:
    """``lanecore sim provider --kind alipay --protocol alipay``: serve until
    SIGTERM/SIGINT; one JSON ready line on stdout first."""
    import sys
    try:
        # one connection shared by the server's threads, one at a time (AlipaySim.lock)
        engine = Provider("alipay", opts.data_dir, behaviour, shared=True,
                          synchronous=str(getattr(opts, "synchronous", "full")).upper())
    except ProtocolError as exc:
        print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    try:
        host, port_n = parse_bind(getattr(opts, "bind", None) or "127.0.0.1:0")
    except ProviderError as exc:
        print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
        engine.close()
        return 2
    sim = AlipaySim(engine, Path(engine.data_dir), fast=bool(getattr(opts, "fast", False)))
    try:
        server = HttpsServer(sim.handler, cert_file=sim.pki.cert_file,
                                key_file=sim.pki.key_file, host=host, port=port_n)
    except OSError as exc:
        print(f"lanecore: CANNOT_BIND: {opts.bind}: {exc}", file=sys.stderr)
        sim.notifier.stop()
        engine.close()
        return 2
    sim.base_url = server.url
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    server.start()
    print(json.dumps(sim.ready_line("alipay", server.url)), flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        sim.notifier.stop()
        with sim.lock:
            engine.close()
    return 0
