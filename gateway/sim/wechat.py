"""WeChat Pay's API v2 simulator: ``lanecore sim provider --kind wechat --protocol
wechatpay-v2 --data-dir D`` (``docs/pay/wechatpay.md``).

The trade engine (``gateway.sim.provider.Provider``: its knobs, database and bills)
behind WeChat Pay's own paths, field names, XML and signatures, over HTTPS with a
test CA:

* every request's ``sign`` is verified with the merchant's API key (a bad one is
  answered ``return_code`` FAIL, ``return_msg`` 签名错误, unsigned — as WeChat does);
  every answer is signed with the request's ``sign_type``;
* ``/secapi/`` paths need the merchant's API client certificate (mutual TLS), issued
  by the test CA for CN = ``mch_id``;
* the engine's results become WeChat's ``result_code``/``err_code``/``trade_state``;
  its "user paying" knobs answer micropay ``USERPAYING``; its ``timeout`` action holds
  the connection without answering, ``drop`` likewise without processing;
* after ``POST /_sim/scan`` pays a native order, the payment notification is POSTed
  to the order's ``notify_url``, signed, and repeated on WeChat's schedule (15 s,
  15 s, 30 s, 3 min, … — scaled by ``notify_scale``, 0.01 with ``--fast``) until the
  merchant answers ``return_code`` SUCCESS;
* ``/pay/downloadbill`` serves the engine's bill rows in WeChat's ALL format; the next
  download of a day carries the discrepancies ``POST /_sim/bill_inject`` asked for.

The simulator's own knobs (``POST /_sim/configure`` beside the engine's):
``tamper_next`` (the next N signed answers carry a wrong signature), ``notify_scale``,
``notify_ca_file`` (an extra CA to trust for notify URLs).

On first start the test merchant is made under ``D/merchant/`` (``appid``,
``mch_id``, the API key ``api_key`` and the API certificate ``apiclient_cert.pem`` /
``apiclient_key.pem``, all 0600) and the PKI under ``D/pki/``; the ready line's
``channel`` names them.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import json
import logging
import os
import secrets
import signal
import string
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lanecore.core.config import private_dir, write_private
from lanecore.core.pay import recon
from lanecore.gateway.net.protocol import ProtocolError
from lanecore.gateway.payments import httpapi
from lanecore.gateway.payments.providers import ProviderError
from lanecore.gateway.payments.wechatpay import (BILL_UTC_OFFSET_S, PROTOCOL, SIGN_TYPES,
                                                 from_xml, nonce,
                                                 render_bill, sign, to_xml, verify)
from lanecore.gateway.sim.provider import FEE_BPS, Provider

log = logging.getLogger("lanecore.sim.wechat")

_TZ = timezone(timedelta(hours=8))
#: The engine's decline codes → WeChat Pay's micropay ``err_code``.
ENGINE_ERR = {"AUTH_CODE_EXPIRED": "AUTHCODEEXPIRE", "AUTH_CODE_INVALID": "AUTH_CODE_INVALID",
              "NOTENOUGH": "NOTENOUGH", "TRADE_ERROR": "TRADE_ERROR",
              "EXCEED_LIMIT": "EXCEED_LIMIT", "USERCANCEL": "ORDERCLOSED",
              "OUT_TRADE_NO_USED": "OUT_TRADE_NO_USED", "ORDERCLOSED": "ORDERREVERSED"}
#: ``err_code_des`` of the codes the simulator answers.
DES = {"USERPAYING": "需要用户输入支付密码", "SYSTEMERROR": "系统超时",
       "AUTHCODEEXPIRE": "二维码已过期，请用户在微信上刷新后再试",
       "AUTH_CODE_INVALID": "请扫描微信支付授权码(以10/11/12/13/14/15为前缀的18位数字)",
       "NOTENOUGH": "余额不足", "TRADE_ERROR": "交易错误", "ORDERPAID": "订单已支付",
       "ORDERREVERSED": "订单已撤销", "ORDERCLOSED": "订单已关闭",
       "OUT_TRADE_NO_USED": "商户订单号重复", "ORDERNOTEXIST": "订单不存在",
       "REFUNDNOTEXIST": "退款订单查询失败", "EXCEED_LIMIT": "超出商户单笔收款限额",
       "PARAM_ERROR": "参数错误", "APPID_MCHID_NOT_MATCH": "appid和mch_id不匹配"}
#: The engine's trade state → ``trade_state`` (by whether it is a native order).
_PAYING = {True: ("NOTPAY", "订单未支付"), False: ("USERPAYING", "需要用户输入支付密码")}
#: The simulator's own knobs and their defaults.
OWN_KNOBS = {"tamper_next": 0, "notify_scale": 1.0, "notify_ca_file": None}
_TRADE_PATHS = ("/pay/micropay", "/pay/orderquery", "/secapi/pay/reverse", "/pay/closeorder",
                "/secapi/pay/refund", "/pay/unifiedorder", "/pay/refundquery")


class _Fail(Exception):
    """A business failure: ``result_code`` FAIL with this ``err_code``."""

    def __init__(self, err: str, des: str | None = None) -> None:
        super().__init__(err)
        self.err, self.des = err, des or DES.get(err, err)


class _Refused(Exception):
    """``return_code`` FAIL (nothing processed), unsigned."""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, _TZ).strftime("%Y%m%d%H%M%S")


def _openid(seed: str) -> str:
    return "o" + hashlib.sha256(seed.encode()).hexdigest()[:27]


class Merchant:
    """The test merchant under ``D/merchant/`` (made once, kept)."""

    def __init__(self, data_dir: Path, pki: httpapi.TestPki) -> None:
        d = private_dir(data_dir / "merchant")
        info = d / "merchant.json"
        self.key_file = d / "api_key"
        self.cert_file, self.client_key_file = d / "apiclient_cert.pem", d / "apiclient_key.pem"
        if info.exists() and self.key_file.exists() and self.cert_file.exists():
            doc = json.loads(info.read_text())
            self.appid, self.mch_id = doc["appid"], doc["mch_id"]
        else:
            self.appid = "wx" + secrets.token_hex(8)
            self.mch_id = str(1_900_000_000 + secrets.randbelow(99_999_999))
            alphabet = string.ascii_letters + string.digits
            write_private(self.key_file, "".join(secrets.choice(alphabet)
                                                 for _ in range(32)).encode())
            httpapi.issue_client_cert(pki, self.mch_id, self.cert_file, self.client_key_file)
            write_private(info, json.dumps({"appid": self.appid,
                                            "mch_id": self.mch_id}).encode())
        self.key = httpapi.read_key_file(self.key_file, "API key file").decode().strip()


class WechatSim:
    """The API's handler around one engine (one worker thread owns the engine and
    the simulator's own order table, so SQLite stays in one thread)."""

    def __init__(self, opts, behaviour, data_dir: Path, pki: httpapi.TestPki,
                 merchant: Merchant) -> None:
        self.pki, self.m = pki, merchant
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.engine: Provider = self.worker.submit(
            Provider, "wechat", data_dir, behaviour,
            synchronous=str(getattr(opts, "synchronous", "full")).upper()).result()
        self.worker.submit(self._orders_table).result()
        self.knobs = dict(OWN_KNOBS, notify_scale=0.01 if opts.fast else 1.0)
        self.lock = threading.Lock()
        self.injections: dict[str, dict | None] = {}
        self.counts: dict[str, int] = {}
        self.notifier = httpapi.Notifier(self._post_notification, self._acked,
                                         schedule_s=httpapi.WECHAT_SCHEDULE_S,
                                         scale=self.knobs["notify_scale"])

    # -- the engine's thread -----------------------------------------------------------
    def _orders_table(self) -> None:
        self.engine.con.execute(
            "CREATE TABLE IF NOT EXISTS wx_orders (out_trade_no TEXT PRIMARY KEY, "
            "notify_url TEXT NOT NULL, sign_type TEXT NOT NULL, body TEXT NOT NULL)")

    def run(self, fn, *args):
        return self.worker.submit(fn, *args).result()

    def _handle(self, op: str, req: dict):
        return self.engine.handle(op, req)

    def _trade(self, ref: str) -> dict | None:
        return self.engine._trade(ref)

    # -- HTTP ----------------------------------------------------------------------------
    def handler(self, method: str, target: str, headers: dict, body: bytes, cert):
        path = urllib.parse.urlsplit(target).path
        with self.lock:
            self.counts[path] = self.counts.get(path, 0) + 1
        if path.startswith("/_sim/"):
            return self._admin(method, path, body)
        if path == "/pay/downloadbill":
            return self._downloadbill(body)
        if path not in _TRADE_PATHS:
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        try:
            if method != "POST":
                raise _Refused("请使用post方法")
            if path.startswith("/secapi/") and not self._cert_ok(cert):
                raise _Refused("证书验证失败: /secapi/ requires the merchant's API certificate")
            req = self._request(body)
            try:
                out = self._dispatch(path, req)
                result = {"result_code": "SUCCESS", **out}
            except _Fail as f:
                result = {"result_code": "FAIL", "err_code": f.err, "err_code_des": f.des}
        except _Refused as exc:
            return self._xml({"return_code": "FAIL", "return_msg": str(exc)})
        latency = self.engine.behaviour.latency_s
        if latency > 0:
            time.sleep(latency)
        return self._signed(result, req.get("sign_type") or "MD5")

    def _cert_ok(self, cert: dict | None) -> bool:
        if not cert:
            return False
        cn = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        return cn == [self.m.mch_id]

    def _request(self, body: bytes) -> dict:
        try:
            req = from_xml(body)
        except ProviderError:
            raise _Refused("XML格式错误") from None
        st = req.get("sign_type") or "MD5"
        if st not in SIGN_TYPES:
            raise _Refused("签名类型错误")
        if not req.get("sign") or not verify(req, self.m.key, st):
            raise _Refused("签名错误")
        if not req.get("nonce_str") or len(req["nonce_str"]) > 32:
            raise _Refused("nonce_str参数格式错误")
        if req.get("appid") != self.m.appid or req.get("mch_id") != self.m.mch_id:
            raise _Refused("appid和mch_id不匹配")
        return req

    @staticmethod
    def _xml(doc: dict):
        return 200, {"Content-Type": "text/xml; charset=utf-8"}, to_xml(doc)

    def _signed(self, result: dict, sign_type: str):
        doc = {"return_code": "SUCCESS", "return_msg": "OK", "appid": self.m.appid,
               "mch_id": self.m.mch_id, "nonce_str": nonce(), **result}
        doc["sign"] = sign(doc, self.m.key, sign_type)
        with self.lock:
            if self.knobs["tamper_next"] > 0:
                self.knobs["tamper_next"] -= 1
                doc["sign"] = sign({**doc, "nonce_str": nonce()}, self.m.key, sign_type)
        return self._xml(doc)

    def _engine(self, op: str, req: dict) -> dict:
        """One engine op; NoAnswer for its timeout/drop; _Fail PARAM_ERROR for a
        request the engine refuses."""
        try:
            reply, action = self.run(self._handle, op, req)
        except ProtocolError as exc:
            raise _Fail("PARAM_ERROR", exc.message[:120]) from None
        if action != "reply":
            self.engine.unanswered += 1
            raise httpapi.NoAnswer()
        return reply

    @staticmethod
    def _need(req: dict, *names: str) -> None:
        missing = [n for n in names if not req.get(n)]
        if missing:
            raise _Fail("LACK_PARAMS", f"缺少参数 {', '.join(missing)}")

    @staticmethod
    def _fee(req: dict, name: str = "total_fee") -> int:
        v = req.get(name, "")
        if not v.isdigit() or int(v) <= 0:
            raise _Fail("PARAM_ERROR", f"{name}参数格式错误")
        return int(v)

    # -- the API ---------------------------------------------------------------------
    def _dispatch(self, path: str, req: dict) -> dict:
        return {"/pay/micropay": self.micropay, "/pay/orderquery": self.orderquery,
                "/secapi/pay/reverse": self.reverse, "/pay/closeorder": self.closeorder,
                "/secapi/pay/refund": self.refund, "/pay/unifiedorder": self.unifiedorder,
                "/pay/refundquery": self.refundquery}[path](req)

    def _paid_fields(self, t: dict, trade_type: str) -> dict:
        return {"openid": _openid(t["payer"] or t["merchant_ref"]), "is_subscribe": "N",
                "trade_type": trade_type, "bank_type": "OTHERS", "fee_type": t["currency"],
                "total_fee": str(t["amount_minor"]), "cash_fee": str(t["amount_minor"]),
                "transaction_id": t["provider_ref"], "out_trade_no": t["merchant_ref"],
                "time_end": _when(t["paid_at"] or time.time())}

    def micropay(self, req: dict) -> dict:
        self._need(req, "body", "out_trade_no", "total_fee", "spbill_create_ip", "auth_code")
        amount = self._fee(req)
        f = {"merchant_ref": req["out_trade_no"], "amount_minor": amount,
             "currency": req.get("fee_type") or "CNY", "auth_code": req["auth_code"]}
        if req.get("device_info"):
            f["terminal"] = req["device_info"]
        reply = self._engine("charge", f)
        status, code = reply.get("status"), reply.get("code")
        if status == "paid" and code == "ORDERPAID":
            raise _Fail("ORDERPAID")
        if status == "paid":
            t = self.run(self._trade, req["out_trade_no"])
            return {"device_info": req.get("device_info"), **self._paid_fields(t, "MICROPAY")}
        if status == "paying":
            raise _Fail("USERPAYING")
        if status == "unknown":
            raise _Fail(code or "SYSTEMERROR")
        if code == "USERCANCEL":        # asked again after the shopper cancelled
            raise _Fail("ORDERCLOSED", "用户取消支付，订单已关闭")
        raise _Fail(ENGINE_ERR.get(code, code or "SYSTEMERROR"))

    def orderquery(self, req: dict) -> dict:
        self._need(req, "out_trade_no")
        ref = req["out_trade_no"]
        reply = self._engine("query", {"merchant_ref": ref})
        if reply.get("status") == "not_found":
            raise _Fail("ORDERNOTEXIST")
        t = self.run(self._trade, ref)
        native = t["entry"] == "qr"
        trade_type = "NATIVE" if native else "MICROPAY"
        status = t["status"]
        out = {"out_trade_no": ref, "trade_type": trade_type, "fee_type": t["currency"],
               "total_fee": str(t["amount_minor"])}
        if status in ("paid", "refunded"):
            out.update(self._paid_fields(t, trade_type),
                       trade_state="SUCCESS" if status == "paid" else "REFUND",
                       trade_state_desc="支付成功" if status == "paid" else "转入退款")
        elif status == "paying":
            out["trade_state"], out["trade_state_desc"] = _PAYING[native]
        elif status == "failed":
            out["trade_state"] = "PAYERROR"
            out["trade_state_desc"] = "用户取消支付" if t["code"] == "USERCANCEL" else "支付失败"
        elif status == "reversed":
            out.update(self._paid_fields(t, trade_type), trade_state="REVOKED",
                       trade_state_desc="已撤销")
        else:                          # closed: never paid, can never be
            out["trade_state"] = "CLOSED" if native or not t["currency"] else "REVOKED"
            out["trade_state_desc"] = "已关闭" if out["trade_state"] == "CLOSED" else "已撤销"
        return out

    def reverse(self, req: dict) -> dict:
        self._need(req, "out_trade_no")
        ref = req["out_trade_no"]
        t = self.run(self._trade, ref)
        if t is not None and t["entry"] == "qr":
            raise _Fail("TRADE_ERROR", "订单支付场景错误，请使用关单接口")
        reply = self._engine("reverse", {"merchant_ref": ref})
        if reply.get("code") == "TRADE_STATUS_ERROR":
            raise _Fail("INVALID_REQUEST", "订单已退款，不能撤销")
        return {"recall": "N"}

    def closeorder(self, req: dict) -> dict:
        self._need(req, "out_trade_no")
        ref = req["out_trade_no"]
        t = self.run(self._trade, ref)
        if t is not None:
            if t["status"] in ("paid", "refunded"):
                raise _Fail("ORDERPAID")
            if t["status"] in ("closed", "reversed"):
                raise _Fail("ORDERCLOSED")
            if t["entry"] != "qr":
                raise _Fail("TRADE_ERROR", "付款码支付订单请使用撤销订单接口")
        self._engine("reverse", {"merchant_ref": ref})
        return {}

    def refund(self, req: dict) -> dict:
        self._need(req, "out_refund_no", "total_fee", "refund_fee")
        ref = req.get("out_trade_no") or ""
        if not ref:
            raise _Fail("LACK_PARAMS", "缺少参数 out_trade_no")
        total, amount = self._fee(req), self._fee(req, "refund_fee")
        t = self.run(self._trade, ref)
        if t is not None and t["status"] in ("paid", "refunded") and t["amount_minor"] != total:
            raise _Fail("PARAM_ERROR", "订单金额与原订单不一致")
        reply = self._engine("refund", {"merchant_ref": ref, "refund_ref": req["out_refund_no"],
                                        "amount_minor": amount})
        code = reply.get("code")
        if reply.get("status") == "refunded" and code not in (
                "REFUND_EXCEEDS_PAID", "REFUND_REF_USED", "ORDERNOTEXIST", "TRADE_STATUS_ERROR"):
            rid = self.run(self._refund_id, req["out_refund_no"])
            return {"transaction_id": reply.get("provider_ref"), "out_trade_no": ref,
                    "out_refund_no": req["out_refund_no"], "refund_id": rid,
                    "refund_fee": str(amount), "settlement_refund_fee": str(amount),
                    "total_fee": str(total), "cash_fee": str(total),
                    "cash_refund_fee": str(amount), "refund_channel": "ORIGINAL"}
        if code == "REFUND_EXCEEDS_PAID":
            raise _Fail("ERROR", "累计退款金额大于支付金额")
        if code == "REFUND_REF_USED":
            raise _Fail("ERROR", "订单金额或退款金额与之前请求不一致，请核实后再试")
        if code in ("ORDERNOTEXIST", "TRADE_STATUS_ERROR"):
            raise _Fail("ORDERNOTEXIST", "订单不存在或未支付，未支付的订单不能发起退款")
        raise _Fail("SYSTEMERROR")

    def _transaction_ids(self, refs: list[str]) -> dict[str, str]:
        out = {}
        for ref in refs:
            t = self.engine._trade(ref)
            if t is not None:
                out[ref] = t["provider_ref"]
        return out

    def _refund_id(self, refund_ref: str) -> str | None:
        row = self.engine.con.execute("SELECT provider_ref FROM refunds WHERE refund_ref = ?",
                                      (refund_ref,)).fetchone()
        return None if row is None else row[0]

    def _refunds(self, by: str, ref: str) -> list[tuple]:
        col = "refund_ref" if by == "out_refund_no" else "merchant_ref"
        if by == "out_refund_no":
            row = self.engine.con.execute("SELECT merchant_ref FROM refunds WHERE "
                                          "refund_ref = ?", (ref,)).fetchone()
            if row is None:
                return []
            col, ref = "merchant_ref", row[0]
        return self.engine.con.execute(
            f"SELECT refund_ref, provider_ref, amount_minor, at, merchant_ref FROM refunds "
            f"WHERE {col} = ? ORDER BY at, refund_ref", (ref,)).fetchall()

    def refundquery(self, req: dict) -> dict:
        by = "out_refund_no" if req.get("out_refund_no") else "out_trade_no"
        self._need(req, by)
        rows = self.run(self._refunds, by, req[by])
        if not rows:
            raise _Fail("REFUNDNOTEXIST")
        t = self.run(self._trade, rows[0][4])
        out = {"transaction_id": t["provider_ref"], "out_trade_no": t["merchant_ref"],
               "total_fee": str(t["amount_minor"]), "cash_fee": str(t["amount_minor"]),
               "refund_count": str(len(rows)), "refund_fee": str(sum(r[2] for r in rows))}
        for i, (rref, rid, amount, at, _) in enumerate(rows):
            out.update({f"out_refund_no_{i}": rref, f"refund_id_{i}": rid,
                        f"refund_channel_{i}": "ORIGINAL", f"refund_fee_{i}": str(amount),
                        f"settlement_refund_fee_{i}": str(amount),
                        f"refund_status_{i}": "SUCCESS",
                        f"refund_recv_accout_{i}": "支付用户的零钱",
                        f"refund_success_time_{i}": datetime.fromtimestamp(at, _TZ).strftime(
                            "%Y-%m-%d %H:%M:%S")})
        return out

    def unifiedorder(self, req: dict) -> dict:
        self._need(req, "body", "out_trade_no", "total_fee", "spbill_create_ip",
                   "notify_url", "trade_type")
        if req["trade_type"] != "NATIVE":
            raise _Fail("PARAM_ERROR", "trade_type: this simulator makes NATIVE orders")
        self._need(req, "product_id")
        amount = self._fee(req)
        f = {"merchant_ref": req["out_trade_no"], "amount_minor": amount,
             "currency": req.get("fee_type") or "CNY"}
        if req.get("device_info"):
            f["terminal"] = req["device_info"]
        reply = self._engine("precreate", f)
        status, code = reply.get("status"), reply.get("code")
        if status in ("paid", "refunded"):
            raise _Fail("ORDERPAID")
        if status == "failed":
            raise _Fail(code if code in ("OUT_TRADE_NO_USED", "ORDERCLOSED") else "ORDERCLOSED")
        self.run(self._remember, req)
        pref = reply.get("provider_ref") or ""
        token = hashlib.sha256(f"{self.m.mch_id}|{pref}".encode()).hexdigest()[:22]
        return {"device_info": req.get("device_info"), "trade_type": "NATIVE",
                "prepay_id": "wx" + token, "code_url": f"weixin://wxpay/bizpayurl?pr={token[:7]}"
                                                       f"{token[7:]}"}

    def _remember(self, req: dict) -> None:
        self.engine.con.execute(
            "INSERT OR IGNORE INTO wx_orders (out_trade_no, notify_url, sign_type, body) "
            "VALUES (?, ?, ?, ?)", (req["out_trade_no"], req["notify_url"],
                                    req.get("sign_type") or "MD5", req["body"]))

    def _order(self, ref: str) -> tuple | None:
        return self.engine.con.execute("SELECT notify_url, sign_type, body FROM wx_orders "
                                       "WHERE out_trade_no = ?", (ref,)).fetchone()

    # -- the bill --------------------------------------------------------------------
    def _rows(self, date: str, spec: dict | None) -> tuple[list, dict | None]:
        # WeChat Pay's bill days are Beijing time days
        rows = self.run(self.engine.bill_rows, date, BILL_UTC_OFFSET_S)
        if spec is None:
            return rows, None
        rows, record = recon.inject(rows, spec)
        return rows, {"date": date, "kind": "wechat", **record}

    def _downloadbill(self, body: bytes):
        try:
            req = self._request(body)
            self._need(req, "bill_date")
            d = req["bill_date"]
            if len(d) != 8 or not d.isdigit():
                raise _Refused("bill_date参数格式错误")
            date = f"{d[:4]}-{d[4:6]}-{d[6:]}"
            if req.get("bill_type", "ALL") not in ("ALL", "SUCCESS", "REFUND"):
                raise _Refused("invalid bill_type")
            with self.lock:                     # an injection is for one download
                spec = self.injections.pop(date, None)
            rows, _ = self._rows(date, spec)
        except (_Refused, _Fail) as exc:
            return self._xml({"return_code": "FAIL", "return_msg": str(exc)})
        except (recon.ReconError, ValueError) as exc:
            return self._xml({"return_code": "FAIL", "return_msg": f"data format error: {exc}"})
        kind = req.get("bill_type", "ALL")
        if kind == "SUCCESS":
            rows = [r for r in rows if r.type == "charge"]
        elif kind == "REFUND":
            rows = [r for r in rows if r.type == "refund"]
        if not rows:
            return self._xml({"return_code": "FAIL", "return_msg": "No Bill Exist"})
        rate = f"{FEE_BPS['wechat'] / 100:.2f}%"
        refs = sorted({r.merchant_ref for r in rows if r.type == "refund"})
        text = render_bill(rows, appid=self.m.appid, mch_id=self.m.mch_id, rate=rate,
                           transaction_ids=self.run(self._transaction_ids, refs))
        data = text.encode("utf-8")
        if req.get("tar_type") == "GZIP":
            return 200, {"Content-Type": "application/x-gzip"}, gzip.compress(data)
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, data

    # -- the simulator's own paths ----------------------------------------------------
    def _admin(self, method: str, path: str, body: bytes):
        def ok(doc):
            return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

        def bad(code, message, status=400):
            return status, {"Content-Type": "application/json"}, json.dumps(
                {"error": {"code": code, "message": message}}).encode()
        try:
            doc = json.loads(body) if body else {}
            if not isinstance(doc, dict):
                raise ValueError("a JSON object")
        except ValueError:
            return bad("BAD_JSON", "the body is a JSON object")
        try:
            if path == "/_sim/stats" and method == "GET":
                return ok(self.stats())
            if method != "POST":
                return bad("BAD_METHOD", f"{path} is POST", 405)
            if path == "/_sim/configure":
                return ok({"behaviour": self.configure(doc)})
            if path == "/_sim/scan":
                return ok(self.scan(doc))
            if path == "/_sim/bill_inject":
                return ok(self.bill_inject(doc))
        except ProtocolError as exc:
            return bad(exc.code, exc.message)
        except recon.ReconError as exc:
            return bad(exc.code, exc.message)
        return bad("NOT_FOUND", f"no {path}", 404)

    def configure(self, doc: dict) -> dict:
        own = {k: doc.pop(k) for k in list(doc) if k in OWN_KNOBS}
        if "tamper_next" in own and (not isinstance(own["tamper_next"], int)
                                     or own["tamper_next"] < 0):
            raise ProtocolError("BAD_FIELD", "tamper_next is a count ≥ 0")
        if "notify_scale" in own and (isinstance(own["notify_scale"], bool) or not isinstance(
                own["notify_scale"], (int, float)) or not 0 < own["notify_scale"] <= 10):
            raise ProtocolError("BAD_FIELD", "notify_scale is in (0, 10]")
        if own.get("notify_ca_file") is not None and not Path(own["notify_ca_file"]).is_file():
            raise ProtocolError("BAD_FIELD", "notify_ca_file is a CA certificate file")
        behaviour = self.run(self._handle, "configure", doc)[0]["behaviour"]
        with self.lock:
            self.knobs.update(own)
            self.notifier.scale = float(self.knobs["notify_scale"])
            return {**behaviour, **self.knobs}

    def stats(self) -> dict:
        out = self.run(self.engine.stats)
        with self.lock:
            out.update(paths=dict(self.counts), notifications=self.notifier.stats(),
                       tamper_next=self.knobs["tamper_next"])
        return out

    def bill_inject(self, doc: dict) -> dict:
        date = doc.get("date")
        recon.check_date(date if isinstance(date, str) else "")
        spec = doc.get("inject")
        if spec is not None and not isinstance(spec, dict):
            raise ProtocolError("BAD_FIELD", "inject is a map or null")
        _, record = self._rows(date, spec)      # BAD_INJECT before it is kept
        with self.lock:
            self.injections[date] = spec
        return {"date": date, "injected": record}

    def scan(self, doc: dict) -> dict:
        reply, _ = self.run(self._handle, "scan", doc)
        ref = doc["merchant_ref"]
        if reply.get("changed") and reply.get("status") == "paid":
            order = self.run(self._order, ref)
            if order is not None:
                self._notify(ref, *order)
        return reply

    # -- notifications ---------------------------------------------------------------
    def _notify(self, ref: str, url: str, sign_type: str, body: str) -> None:
        t = self.run(self._trade, ref)
        doc = {"return_code": "SUCCESS", "appid": self.m.appid, "mch_id": self.m.mch_id,
               "nonce_str": nonce(), "sign_type": sign_type, "result_code": "SUCCESS",
               **self._paid_fields(t, "NATIVE")}
        doc["sign"] = sign(doc, self.m.key, sign_type)
        self.notifier.send(url, to_xml(doc), {"Content-Type": "text/xml; charset=utf-8"})

    def _post_notification(self, url: str, body: bytes, headers: dict):
        """A notification's POST: the merchant's notify URL trusted by the system's
        CAs, the simulator's test CA and the ``notify_ca_file`` knob."""
        ctx = httpapi.trust_context(self.pki.ca_file, self.knobs.get("notify_ca_file"))
        return httpapi.post_url(url, body, headers, context=ctx)

    @staticmethod
    def _acked(reply) -> bool:
        if reply.status != 200:
            return False
        try:
            return from_xml(reply.body).get("return_code") == "SUCCESS"
        except ProviderError:
            return False

    def close(self) -> None:
        self.notifier.stop()
        self.worker.submit(self.engine.close).result()
        self.worker.shutdown()


def run(opts, behaviour) -> int:
    """``lanecore sim provider --kind wechat --protocol wechatpay-v2``: serve until
    SIGTERM/SIGINT (module notes). Prints one JSON ready line."""
    from lanecore.core.errors import LanecoreError
    data_dir = Path(opts.data_dir)
    try:
        private_dir(data_dir)
        pki = httpapi.make_test_pki(private_dir(data_dir / "pki"))
        merchant = Merchant(data_dir, pki)
        sim = WechatSim(opts, behaviour, data_dir, pki, merchant)
    except (LanecoreError, ProtocolError, OSError, ValueError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        print(f"lanecore: {code}: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    try:
        host, port = httpapi.parse_bind(getattr(opts, "bind", None) or "127.0.0.1:0")
        server = httpapi.HttpsServer(sim.handler, cert_file=pki.cert_file,
                                     key_file=pki.key_file, ca_file=pki.ca_file,
                                     host=host, port=port)
    except ProviderError as exc:
        sim.close()
        print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        sim.close()
        print(f"lanecore: CANNOT_BIND: {opts.bind}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    server.start()
    channel = {"protocol": PROTOCOL, "endpoint": server.url, "ca_file": str(pki.ca_file),
               "appid": merchant.appid, "mch_id": merchant.mch_id,
               "key_file": str(merchant.key_file), "sign_type": "HMAC-SHA256",
               "client_cert_file": str(merchant.cert_file),
               "client_key_file": str(merchant.client_key_file)}
    print(json.dumps({"ready": True, "process": "provider-wechat", "provider": "wechat",
                      "protocol": PROTOCOL, "bind": opts.bind, "endpoint": server.url,
                      "ca_file": str(pki.ca_file), "pid": os.getpid(),
                      "data_dir": str(data_dir), "channel": channel}), flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        sim.close()
    return 0


__all__ = ["run", "WechatSim", "Merchant", "ENGINE_ERR", "OWN_KNOBS"]
