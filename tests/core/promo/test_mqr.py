"""The multi-information QR (seed 001): round trip, and forged, expired, altered,
unknown-key and malformed texts each refused with their own code."""

from __future__ import annotations

import zlib

import pytest

from lanecore.core.promo.mqr import MqrError, make_mqr, read_mqr
from lanecore.core.store.orderqr import Signer, b64url_decode, b64url_encode, canonical_json

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

NOW = 1_790_000_000
SHAMPOO = "05012345678900"


@pytest.fixture(scope="module")
def wallet():
    return Signer.generate()


@pytest.fixture(scope="module")
def keys(wallet):
    return {"w1": wallet.verifier()}


def mk(wallet, **kw):
    args = dict(key_id="w1", issuer="wallet-sim", customer="C-42",
                token="134567890123456789", currency="GBP",
                coupons=[("CPN-1", SHAMPOO, 500)], now=NOW, qr_id="Q-1")
    args.update(kw)
    return make_mqr(wallet, **args)


def code(text, keys, now=NOW + 1):
    with pytest.raises(MqrError) as e:
        read_mqr(text, keys, now=now)
    return e.value.code


def test_round_trip(wallet, keys):
    text = mk(wallet)
    assert text.startswith("LCM1.") and text.isascii()
    m = read_mqr(text, keys, now=NOW + 1)
    assert (m.customer, m.token, m.currency, m.qr_id) == ("C-42", "134567890123456789",
                                                          "GBP", "Q-1")
    assert [(c.coupon_id, c.gtin, c.amount_minor) for c in m.coupons] == [
        ("CPN-1", SHAMPOO, 500)]
    assert "134567890123456789" not in str(m.to_dict())       # the token stays out
    assert m.expires_at == NOW + 120


def test_every_single_changed_byte_is_altered(wallet, keys):
    text = mk(wallet)
    for i in range(len(text)):
        for ch in {"A", "0", "."} - {text[i]}:
            changed = text[:i] + ch + text[i + 1:]
            assert code(changed, keys) == "MQR_ALTERED", (i, ch)


def test_forged_expired_replay_material_and_unknown_keys(wallet, keys):
    text = mk(wallet)
    # a forger changes the amount and recomputes the check: intact, but not signed
    head, payload, sig, _ = text.split(".")
    import json
    p = json.loads(b64url_decode(payload))
    p["cpn"][0][2] = 2999
    forged = f"{head}.{b64url_encode(canonical_json(p))}.{sig}"
    forged += f".{zlib.crc32(forged.encode()):08x}"
    assert code(forged, keys) == "MQR_FORGED"
    # or signs with a key of their own under the wallet's key id
    assert code(mk(Signer.generate()), keys) == "MQR_FORGED"
    assert code(mk(wallet, key_id="w9"), keys) == "MQR_UNKNOWN_KEY"
    assert code(text, keys, now=NOW + 120) == "MQR_EXPIRED"
    assert read_mqr(text, keys, now=NOW + 119).qr_id == "Q-1"
    later = text.replace("LCM1", "LCM2", 1)
    later = later[:-8] + f"{zlib.crc32(later[:-9].encode()):08x}"
    assert code(later, keys) == "MQR_VERSION"
    for junk in ("", "hello", "LCM1.a.b", "LCM1.abcdefghij", "é" * 5, "x" * 5000):
        assert code(junk, keys) == "MQR_FORMAT", junk
    assert code(None, keys) == "MQR_FORMAT"
    junk = "XYZ1.!.!"
    assert code(f"{junk}.{zlib.crc32(junk.encode()):08x}", keys) == "MQR_FORMAT"
    junk = "LCM1.!.!"
    assert code(f"{junk}.{zlib.crc32(junk.encode()):08x}", keys) == "MQR_FORGED"


@pytest.mark.parametrize("change", [
    dict(token="12"), dict(token="abc4567890"), dict(currency="gbp"), dict(customer=""),
    dict(coupons=[("CPN-1", "123", 500)]), dict(coupons=[("CPN-1", SHAMPOO, 0)]),
    dict(coupons=[("CPN-1", SHAMPOO, 5), ("CPN-1", SHAMPOO, 6)]),
    dict(coupons=[(f"C{i}", SHAMPOO, 1) for i in range(21)]), dict(ttl_s=0),
])
def test_make_refuses_bad_values(wallet, change):
    with pytest.raises(MqrError) as e:
        mk(wallet, **change)
    assert e.value.code == "BAD_REQUEST"
