"""Retries are bound to the caller's identity and to what it asked (issue 13, "Why"):
against a real `lanecore gateway payments` process with a provider simulator.

- In development mode (`--dev-open`, the old default: no authentication) the free
  `client` field still names whose retries a request is — but a `pay.reverse` sent with
  a victim's `client` and `id` is IDEMPOTENCY_MISMATCH, never the victim's `pay.charge`
  reply; and a 1-fen charge recorded under the victim's next id makes the victim's real
  charge IDEMPOTENCY_MISMATCH, never "paid, amount 1" without running.
- With terminal authentication, a terminal's `client` field reaches nobody's replies
  but its own: the same id and `client` as another terminal's charge is a new request.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from payfix import WECHAT_CODE, providers, start_gateway, wallet, write_config  # noqa: F401

from lanecore.gateway.net.client import Client, ServiceError, TerminalKey

pytestmark = pytest.mark.kernel_free


def _call(c: Client, rid: str, op: str, **fields) -> dict:
    """One request with exactly this id (and whatever `client` the fields name)."""
    try:
        return {"ok": True, **c.call_with_id(rid, op, **fields)}
    except ServiceError as exc:
        return {"ok": False, "error": {"code": exc.code, "message": str(exc),
                                       "details": exc.details.get("details", exc.details)}}


@pytest.fixture
def dev_gateway(tmp_path, providers):  # noqa: F811
    wx = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", wx.endpoint, 1)})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", d, endpoint)
    yield endpoint, wx
    proc.terminate()
    proc.wait(10)


def test_a_reversal_sent_with_a_victims_client_and_id_is_not_answered_with_its_charge(
        dev_gateway):
    endpoint, wx = dev_gateway
    with Client(endpoint, client_id="kiosk-1", timeout_s=5, retries=0) as kiosk, \
            Client(endpoint, client_id="kiosk-1", timeout_s=5, retries=0) as attacker:
        paid = _call(kiosk, "kiosk-1:s:1", "pay.charge", order_no="K1-0042",
                     amount_minor=9000, currency="CNY", method="auth_code",
                     terminal="KIOSK-1", auth_code=WECHAT_CODE)
        assert paid["ok"] and paid["status"] == "paid" and paid["amount_minor"] == 9000
        # the attacker's client names the victim's client (its client_id) and its id
        stolen = _call(attacker, "kiosk-1:s:1", "pay.reverse", order_no="K1-0042")
        assert stolen["ok"] is False and stolen["error"]["code"] == "IDEMPOTENCY_MISMATCH"
        assert "status" not in stolen and "amount_minor" not in stolen
        # the victim's own retry still gets its reply; the charge stands
        again = _call(kiosk, "kiosk-1:s:1", "pay.charge", order_no="K1-0042", amount_minor=9000, currency="CNY",
                      method="auth_code", terminal="KIOSK-1", auth_code=WECHAT_CODE)
        assert again == paid
        assert _call(kiosk, "kiosk-1:s:2", "pay.status", order_no="K1-0042")["status"] == "paid"
    assert sorted(wx.paid().values()) == [9000]


def test_a_cheap_charge_recorded_under_the_victims_next_id_does_not_answer_its_real_one(
        dev_gateway):
    endpoint, wx = dev_gateway
    with Client(endpoint, client_id="kiosk-1", timeout_s=5, retries=0) as attacker, \
            Client(endpoint, client_id="kiosk-1", timeout_s=5, retries=0) as kiosk:
        squat = _call(attacker, "kiosk-1:s:7", "pay.charge", order_no="CHEAP-1", amount_minor=1, currency="CNY",
                      method="auth_code", terminal="ATT", auth_code=WECHAT_CODE)
        assert squat["ok"] and squat["amount_minor"] == 1
        real = _call(kiosk, "kiosk-1:s:7", "pay.charge", order_no="K1-0043", amount_minor=9000, currency="CNY",
                     method="auth_code", terminal="KIOSK-1", auth_code=WECHAT_CODE)
        # never "paid, amount 1": the id was used for another request
        assert real["ok"] is False and real["error"]["code"] == "IDEMPOTENCY_MISMATCH", real
        # with a fresh id the kiosk's charge runs, for its own amount
        fresh = _call(kiosk, "kiosk-1:s:8", "pay.charge", order_no="K1-0043", amount_minor=9000, currency="CNY",
                      method="auth_code", terminal="KIOSK-1", auth_code=WECHAT_CODE)
        assert fresh["ok"] and fresh["status"] == "paid" and fresh["amount_minor"] == 9000
    assert sorted(wx.paid().values()) == [1, 9000]


def _terminal(d, tid: str, *role: str) -> TerminalKey:
    import json
    args = [sys.executable, "-m", "lanecore", "terminal", "add", tid, "--data-dir", str(d)]
    if role:
        args += ["--role", ",".join(role)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return TerminalKey.from_text(tid, json.loads(out)["key"])


def test_an_authenticated_terminal_never_reaches_another_terminals_replies(
        tmp_path, providers):  # noqa: F811
    wx = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", wx.endpoint, 1)}, pos={"auth": "hmac"})
    a = _terminal(d, "KIOSK-A", "kiosk")
    b = _terminal(d, "POS-B")
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", d, endpoint)
    try:
        with Client(endpoint, terminal_key=a, timeout_s=5, retries=0) as ka, \
                Client(endpoint, terminal_key=b, client_id="pos:KIOSK-A", timeout_s=5,
                       retries=0) as kb:
            paid = _call(ka, "r-1", "pay.charge", order_no="A-1", amount_minor=5000,
                         currency="CNY", method="auth_code", terminal="KIOSK-A",
                         auth_code=WECHAT_CODE)
            assert paid["ok"] and paid["status"] == "paid"
            # B names A's terminal as its client and A's id: its own request, not A's reply
            other = _call(kb, "r-1", "pay.status", order_no="A-1")
            assert "amount_minor" not in other and other.get("status") != "paid", other
            # and B may not call what its role does not allow
            top = _call(kb, "r-2", "sv.topup", member="M-1", currency="CNY",
                        amount_minor=10 ** 12, ref="mint")
            assert top["ok"] is False and top["error"]["code"] == "FORBIDDEN"
            assert top["error"]["details"]["roles"] == ["manager"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert sorted(wx.paid().values()) == [5000]
