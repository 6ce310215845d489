"""Payment receipts (core/pay/receipt.py): the model and its dict, the signature (every
change refused, the recipe by hand), card numbers never in clear, the text and SMS
layouts, money for exponents 0/2/3, and GSM-7 / UCS-2 segment counting."""

from __future__ import annotations

import base64
import dataclasses
import json
import unicodedata

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanecore.core.errors import LanecoreError
from lanecore.core.store.orderqr import Signer, canonical_json, make_qr
from lanecore.core.pay.receipt import (RECEIPT_DOMAIN, Receipt, ReceiptError, ReceiptLine,
                                       ReceiptPayment, ReceiptRefund, format_money, layout,
                                       receipt_qr_text, render_sms, render_text,
                                       sign_receipt, signed_bytes, sms_segments,
                                       verify_code, verify_receipt)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

T = 1_718_022_896.25          # 2024-06-10T12:34:56.250Z


def make(**kw) -> Receipt:
    base = dict(
        store_name="Lanecore Express", store_id="S001", terminal="T01",
        order_no="A1B2-0001", issued_at=T, currency="GBP", total_minor=345,
        lines=(ReceiptLine("Milk 2L", 1, 145, 145), ReceiptLine("Bananas", 2, 100, 200)),
        payments=(ReceiptPayment("card", "card", 245, "A1B2-0001-1", "P-77",
                                 card="622848******1234"),
                  ReceiptPayment("cash", "cash", 100, "A1B2-0001-2",
                                 tendered_minor=500, change_minor=400)),
        refunds=(ReceiptRefund("R1", "A1B2-0001-1", 45),),
        footer="Thank you. Keep this receipt for returns within 28 days.")
    base.update(kw)
    return Receipt(**base)


def pay(amount, **kw) -> tuple:
    return (ReceiptPayment(kw.pop("channel", "wechat"), kw.pop("method", "auth_code"),
                           amount, kw.pop("ref", "A1B2-0001-1"), **kw),)


def code_of(fn, *a, **kw) -> str:
    with pytest.raises(ReceiptError) as info:
        fn(*a, **kw)
    assert isinstance(info.value, LanecoreError)
    return info.value.code


@pytest.fixture(scope="module")
def signer():
    return Signer.generate()


@pytest.fixture(scope="module")
def receipt():
    return make()


@pytest.fixture(scope="module")
def signed(receipt, signer):
    return sign_receipt(receipt, signer)


# -- the model --------------------------------------------------------------------------

def test_round_trip_through_json(receipt):
    d = receipt.to_dict()
    assert Receipt.from_dict(d) == receipt
    assert Receipt.from_dict(json.loads(json.dumps(d))) == receipt
    assert d["issued_at_ms"] == 1_718_022_896_250 and d["v"] == 1
    # nothing but JSON's exact types: no float has to be written canonically
    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (int, str), x
    walk(d)


def test_canonical_bytes_are_deterministic_ascii(receipt):
    b = receipt.canonical_bytes()
    assert b == make().canonical_bytes() == canonical_json(receipt.to_dict())
    assert b.isascii() and b'": ' not in b and b', "' not in b
    chinese = make(store_name="联华超市 浦东店", footer="谢谢惠顾")
    assert Receipt.from_dict(json.loads(chinese.canonical_bytes())) == chinese
    assert chinese.canonical_bytes().isascii()


def test_time_kept_to_the_millisecond_and_lists_become_tuples():
    r = make(issued_at=1_700_000_000.123456, lines=list(make().lines))
    assert r.issued_at == 1_700_000_000.123 and isinstance(r.lines, tuple)
    assert Receipt.from_dict(r.to_dict()) == r
    assert make(issued_at=1_700_000_000).issued_at_iso() == "2023-11-14T22:13:20Z"


def test_exponent_defaults_from_the_iso_table():
    assert make().exponent == 2
    jpy = make(currency="JPY", lines=(), total_minor=1200, payments=pay(1200), refunds=())
    assert jpy.exponent == 0
    kwd = make(currency="KWD", exponent=3, lines=(), total_minor=1250,
               payments=pay(1250), refunds=())
    assert kwd.exponent == 3 and Receipt.from_dict(kwd.to_dict()) == kwd
    assert make(currency="XTS", lines=(), total_minor=5, payments=pay(5),
                refunds=()).exponent == 2
    assert code_of(make, exponent=3) == "BAD_RECEIPT"          # GBP has 2


def test_payment_only_receipt_and_zero_total():
    r = make(lines=(), refunds=(), total_minor=999, payments=pay(999))
    assert Receipt.from_dict(r.to_dict()) == r
    free = make(lines=(ReceiptLine("Bag", 1, 0, 0),), total_minor=0, payments=(),
                refunds=())
    assert "TOTAL" in render_text(free)


@pytest.mark.parametrize("change", [
    dict(total_minor=-1),
    dict(total_minor=True),
    dict(total_minor=3.45),
    dict(total_minor=346),                                     # lines say 345
    dict(lines=(ReceiptLine("Milk", 1, 145, 145),)),           # lines say 145
    dict(currency="gbp"),
    dict(currency=None),
    dict(store_name="Shop\x1b@"),
    dict(store_name=""),
    dict(store_id="S 001"),
    dict(order_no="A1/B2"),
    dict(issued_at=float("nan")),
    dict(issued_at=-1),
    dict(issued_at="2024-06-10"),
    dict(footer=""),
    dict(footer="bell\x07"),
    dict(refunds=(ReceiptRefund("R1", "A1B2-0001-1", 246),)),  # more than 245
    dict(refunds=(ReceiptRefund("R1", "NOT-ON-IT", 1),)),
    dict(refunds=(ReceiptRefund("R1", "A1B2-0001-1", 1),
                  ReceiptRefund("R1", "A1B2-0001-2", 1))),
    dict(payments=pay(344)),
    dict(payments=pay(245) + pay(100)),                        # same merchant_ref
    dict(lines=[("Milk", 1, 345, 345)]),
    dict(exponent=7),
])
def test_bad_receipts(change):
    assert code_of(make, **change) == "BAD_RECEIPT"


@pytest.mark.parametrize("build", [
    lambda: ReceiptLine("Milk", 0, 1, 1),
    lambda: ReceiptLine("Milk", 1, -1, 1),
    lambda: ReceiptLine("Milk", 1, 1, -5),
    lambda: ReceiptLine("Milk", True, 1, 1),
    lambda: ReceiptPayment("card", "card", 0, "R-1"),
    lambda: ReceiptPayment("card", "Card", 1, "R-1"),
    lambda: ReceiptPayment("card", "card", 1, "R 1"),
    lambda: ReceiptPayment("card", "card", 1, "R-1", provider_ref="has space"),
    lambda: ReceiptPayment("cash", "cash", 100, "R-1", tendered_minor=500),
    lambda: ReceiptPayment("cash", "cash", 100, "R-1", tendered_minor=500,
                           change_minor=300),
    lambda: ReceiptPayment("card", "card", 100, "R-1", tendered_minor=100, change_minor=0),
    lambda: ReceiptRefund("R1", "R-1", 0),
])
def test_bad_parts(build):
    assert code_of(build) == "BAD_RECEIPT"


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("footer"),
    lambda d: d.update(extra=1),
    lambda d: d.update(v=2),
    lambda d: d.update(v=True),
    lambda d: d.update(issued_at_ms=1.5),
    lambda d: d.update(lines="milk"),
    lambda d: d["payments"][0].pop("card"),
    lambda d: d["payments"][0].update(pan="4111111111111111"),
    lambda d: d["lines"].append([1, 2]),
])
def test_from_dict_wants_exactly_the_shape(receipt, mutate):
    d = json.loads(json.dumps(receipt.to_dict()))
    mutate(d)
    assert code_of(Receipt.from_dict, d) == "BAD_RECEIPT"
    assert code_of(Receipt.from_dict, [1]) == "BAD_RECEIPT"


# -- card numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("card", [
    "6228480000001234", "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
    "411111111111", "6228480000000000001", "tok_4111111111111111", "PAN:5500000000000004",
    "6228481234****1234",                 # ten leading digits shown
    "622848******12345",                  # five trailing digits shown
    "1234**5678**1234",                   # digits between masks
])
def test_a_card_number_in_clear_is_refused(card):
    with pytest.raises(ReceiptError) as info:
        ReceiptPayment("card", "card", 100, "R-1", card=card)
    assert info.value.code == "RECEIPT_CLEAR_PAN"
    digits = "".join(c for c in card if c.isdigit())
    assert digits not in str(info.value)          # the refusal never echoes it


@pytest.mark.parametrize("card", [
    "622848******1234", "************", "**** **** **** 1234", "41111111XXXX1111",
    "tok_AbCdEf123456", "VISA", "x" * 64,
])
def test_masked_cards_and_tokens_are_kept(card):
    assert ReceiptPayment("card", "card", 100, "R-1", card=card).card == card


# -- signature ------------------------------------------------------------------------

def test_sign_and_verify(receipt, signed, signer):
    assert set(signed) == {"receipt", "key", "sig"}
    assert len(signed["sig"]) == 86 and len(signed["key"]) == 43
    assert verify_receipt(signed, signer.verifier()) == receipt
    assert verify_receipt(json.loads(json.dumps(signed)), signer.verifier()) == receipt
    assert sign_receipt(make(), signer) == signed          # Ed25519 is deterministic
    assert verify_code(signed) == signed["sig"][:12]


def test_the_documented_recipe_by_hand(signed, signer):
    """docs/pay/receipts.md, "Verifying a signed receipt", with nothing of lanecore."""
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    body = json.dumps(signed["receipt"], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")
    key = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(pad(signer.public_key_b64())))
    key.verify(base64.urlsafe_b64decode(pad(signed["sig"])),
               b"lanecore-receipt-v1\n" + body)
    assert RECEIPT_DOMAIN == b"lanecore-receipt-v1\n"


CHANGES = [
    ("total and a line", lambda d: (d.update(total_minor=245),
                                    d["lines"][0].update(amount_minor=45, unit_minor=45),
                                    d["payments"][0].update(amount_minor=145))),
    ("store_name", lambda d: d.update(store_name="Lanecore Expres")),
    ("order_no", lambda d: d.update(order_no="A1B2-0002")),
    ("issued_at_ms", lambda d: d.update(issued_at_ms=d["issued_at_ms"] + 1)),
    ("footer", lambda d: d.update(footer=None)),
    ("card", lambda d: d["payments"][0].update(card="622848******9999")),
    ("change", lambda d: d["payments"][1].update(tendered_minor=1000, change_minor=900)),
    ("refund dropped", lambda d: d.update(refunds=[])),
    ("channel", lambda d: d["payments"][0].update(channel="alipay")),
    ("a type", lambda d: d.update(exponent="2")),
]


@pytest.mark.parametrize("name,change", CHANGES, ids=[c[0] for c in CHANGES])
def test_any_changed_field_is_refused(signed, signer, name, change):
    forged = json.loads(json.dumps(signed))
    change(forged["receipt"])
    assert forged["receipt"] != signed["receipt"]
    assert code_of(verify_receipt, forged, signer.verifier()) == "RECEIPT_SIGNATURE"


def test_every_changed_signature_character_is_refused(signed, signer):
    v = signer.verifier()
    for i in range(0, 86, 5):
        sig = signed["sig"]
        swapped = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1:]
        assert code_of(verify_receipt, dict(signed, sig=swapped), v) == "RECEIPT_SIGNATURE"
    for bad in ("", "!!", signed["sig"] + "AA", signed["sig"][:-2], 12345, None):
        assert code_of(verify_receipt, dict(signed, sig=bad), v) == "RECEIPT_SIGNATURE"


def test_other_keys_and_other_purposes_are_refused(receipt, signed, signer):
    other = Signer.generate()
    # signed by another store, claiming that store's key or ours
    theirs = sign_receipt(receipt, other)
    assert code_of(verify_receipt, theirs, signer.verifier()) == "RECEIPT_SIGNATURE"
    assert code_of(verify_receipt, dict(theirs, key=signed["key"]),
                   signer.verifier()) == "RECEIPT_SIGNATURE"
    # the key in the envelope is never what is checked against
    no_key = {"receipt": signed["receipt"], "sig": signed["sig"]}
    assert verify_receipt(no_key, signer.verifier()) == receipt
    # a signature over the bare canonical JSON (no domain tag) is not a receipt's
    bare = dict(signed, sig=base64.urlsafe_b64encode(
        signer.sign(receipt.canonical_bytes())).rstrip(b"=").decode())
    assert code_of(verify_receipt, bare, signer.verifier()) == "RECEIPT_SIGNATURE"
    # nor is an order QR's signature, whatever it signed
    qr = make_qr(signer, store="S001", order_no="A1B2-0001", total_minor=345,
                 currency="GBP", n_items=3, lines_digest="0" * 64, issued_at=T)
    assert code_of(verify_receipt, dict(signed, sig=qr.split(".")[2]),
                   signer.verifier()) == "RECEIPT_SIGNATURE"
    assert signed_bytes(receipt).startswith(b"lanecore-receipt-v1\n{")


def test_not_a_signed_receipt(signer, signed):
    v = signer.verifier()
    assert code_of(verify_receipt, [signed], v) == "BAD_RECEIPT"
    assert code_of(verify_receipt, {"receipt": signed["receipt"]}, v) == "BAD_RECEIPT"
    assert code_of(verify_receipt, dict(signed, note="hi"), v) == "BAD_RECEIPT"
    assert code_of(sign_receipt, signed["receipt"], signer) == "BAD_RECEIPT"


# -- money ----------------------------------------------------------------------------

@pytest.mark.parametrize("minor,currency,exponent,text", [
    (0, "JPY", 0, "¥0"),
    (1234567, "JPY", 0, "¥1,234,567"),
    (5, "GBP", 2, "£0.05"),
    (345, "GBP", 2, "£3.45"),
    (-120500, "EUR", 2, "-€1,205.00"),
    (100, "CNY", 2, "¥1.00"),
    (1, "KWD", 3, "KWD 0.001"),
    (1250, "KWD", 3, "KWD 1.250"),
    (-1234567, "BHD", 3, "-BHD 1,234.567"),
])
def test_format_money(minor, currency, exponent, text):
    assert format_money(minor, currency, exponent) == text


def test_receipts_in_exponent_0_and_3():
    jpy = make(currency="JPY", total_minor=1200, refunds=(),
               lines=(ReceiptLine("Onigiri", 4, 300, 1200),), payments=pay(1200))
    text = render_text(jpy)
    assert "  4 x ¥300\n" in text and text.count("¥1,200") == 3
    kwd = make(currency="KWD", exponent=3, total_minor=1250, refunds=(),
               lines=(ReceiptLine("Dates", 1, 1250, 1250),), payments=pay(1250))
    assert "KWD 1.250\n" in render_text(kwd)


# -- text layout ----------------------------------------------------------------------

def display_cols(line: str) -> int:
    """Columns a terminal gives ``line``, counted independently of the module."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def crowded() -> Receipt:
    name = "Organic free-range extra large brown eggs x12 box"
    return make(
        store_name="联华超市 上海浦东新区世纪大道店 Lianhua Supermarket Century Avenue",
        currency="CNY", total_minor=10 ** 12 + 2 * 99999, refunds=(),
        lines=(ReceiptLine(name, 1, 10 ** 12, 10 ** 12),
               ReceiptLine("有机鸡蛋十二枚装 特大号 散养 农场直供 新鲜", 2, 99999, 2 * 99999)),
        payments=(ReceiptPayment("unionpay-credit-card-channel", "card",
                                 10 ** 12 + 2 * 99999, "R" * 64, "P" * 64,
                                 card="**** **** **** 1234"),),
        footer="谢谢惠顾，欢迎再次光临！" * 8 + " Returns within 28 days " + "y" * 90)


@pytest.mark.parametrize("width", [24, 32, 42, 48, 80])
def test_no_line_is_wider_than_the_paper(width, signer):
    for r in (make(), crowded()):
        signed = sign_receipt(r, signer)
        text = render_text(r, width, signed=signed)
        assert text.endswith("\n")
        for line in text.splitlines():
            assert display_cols(line) <= width, (width, line)
        for kind, row in layout(r, width, signed=signed, east_asian=False):
            assert len(row) <= width
        assert "Verify" in text and verify_code(signed) in text
        # references wrap, never cut: all 64 characters are on the paper
        squeezed = text.replace(" ", "").replace("\n", "")
        if r.payments[0].merchant_ref == "R" * 64:
            assert "R" * 64 in squeezed and "P" * 64 in squeezed


def test_text_layout(receipt, signed):
    lines = render_text(receipt, signed=signed).splitlines()
    assert lines[0].strip() == "Lanecore Express"
    assert all(len(x) <= 42 for x in lines)
    assert "Date                  2024-06-10T12:34:56Z" in lines
    assert "Bananas                              £2.00" in lines
    assert "  2 x £1.00" in lines
    assert "TOTAL                                £3.45" in lines
    assert "Paid card                            £2.45" in lines
    assert "  Card 622848******1234" in lines
    assert "  Change                             £4.00" in lines
    assert "Refund R1                           -£0.45" in lines
    assert "NET PAID                             £3.00" in lines
    assert f"Verify{' ' * 24}{signed['sig'][:12]}" in lines
    assert lines[-2:] == ["Thank you. Keep this receipt for returns", "within 28 days."]
    kinds = [k for k, _ in layout(receipt, signed=signed)]
    assert kinds[0] == "title" and kinds.count("total") == 2 and "verify" in kinds
    assert "Verify" not in render_text(receipt)


def test_rendering_checks_its_arguments(receipt, signed, signer):
    assert code_of(render_text, receipt, 10) == "BAD_REQUEST"
    assert code_of(render_text, receipt, 200) == "BAD_REQUEST"
    other = sign_receipt(make(order_no="OTHER"), signer)
    assert code_of(render_text, receipt, signed=other) == "BAD_RECEIPT"
    assert code_of(render_sms, receipt, signed=other) == "BAD_RECEIPT"


def test_qr_text(signed):
    text = receipt_qr_text(signed)
    assert text == f"LCR1/S001/A1B2-0001/{signed['sig']}"
    assert text.isascii() and text.isprintable() and len(text) < 160


# -- SMS ------------------------------------------------------------------------------

def test_sms_text(receipt, signed):
    sms = render_sms(receipt, signed=signed)
    assert sms.splitlines() == [
        "Lanecore Express", "Order A1B2-0001 2024-06-10 12:34 UTC", "Total £3.45",
        "Paid card *1234 £2.45", "Paid cash £1.00", "Refunded £0.45",
        f"Verify {signed['sig'][:12]}"]
    assert sms_segments(sms) == ("GSM-7", 1)
    assert "Verify" not in render_sms(receipt)
    eur = make(currency="EUR")
    assert sms_segments(render_sms(eur))[0] == "GSM-7"   # € is in the extension
    chinese = make(store_name="联华超市")
    assert sms_segments(render_sms(chinese)) == ("UCS-2", 2)


@pytest.mark.parametrize("text,expected", [
    ("", ("GSM-7", 1)),
    ("a" * 160, ("GSM-7", 1)),
    ("a" * 161, ("GSM-7", 2)),
    ("a" * 306, ("GSM-7", 2)),
    ("a" * 307, ("GSM-7", 3)),
    ("€", ("GSM-7", 1)),
    ("€" * 80, ("GSM-7", 1)),                 # 160 septets
    ("€" + "a" * 158, ("GSM-7", 1)),          # 160 septets
    ("€" + "a" * 159, ("GSM-7", 2)),          # 161 septets
    ("a" * 152 + "€" + "a" * 152, ("GSM-7", 3)),  # the escape pair is never split
    ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà",
     ("GSM-7", 1)),
    ("^{}\\[~]|" * 10, ("GSM-7", 1)),          # 80 extension chars = 160 septets
    ("^{}\\[~]|" * 10 + "a", ("GSM-7", 2)),
    ("中", ("UCS-2", 1)),
    ("中" + "a" * 69, ("UCS-2", 1)),
    ("中" + "a" * 70, ("UCS-2", 2)),
    ("a" * 134 + "中", ("UCS-2", 3)),
    ("ç", ("UCS-2", 1)),                      # lower-case c cedilla is not GSM-7
    ("😀" * 35, ("UCS-2", 1)),                 # 70 UTF-16 units
    ("😀" * 36, ("UCS-2", 2)),
    ("a" * 66 + "😀" + "a" * 66, ("UCS-2", 3)),  # a surrogate pair is never split
])
def test_sms_segments(text, expected):
    assert sms_segments(text) == expected


def test_sms_segments_of_a_non_string():
    assert code_of(sms_segments, b"abc") == "BAD_REQUEST"


def test_receipt_is_frozen(receipt):
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.total_minor = 1


def test_the_documented_test_vector():
    """docs/pay/receipts.md, "Test vector": the key from seed bytes 00..1f."""
    signer = Signer.from_private_bytes(bytes(range(32)))
    r = make(total_minor=345, refunds=(), footer=None,
             payments=(ReceiptPayment("card", "card", 345, "A1B2-0001-1", "P-77",
                                      card="622848******1234"),))
    signed = sign_receipt(r, signer)
    assert signer.public_key_b64() == "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
    assert signed_bytes(r) == (
        b'lanecore-receipt-v1\n{"currency":"GBP","exponent":2,"footer":null,'
        b'"issued_at_ms":1718022896250,"lines":[{"amount_minor":145,"name":"Milk 2L",'
        b'"qty":1,"unit_minor":145},{"amount_minor":200,"name":"Bananas","qty":2,'
        b'"unit_minor":100}],"order_no":"A1B2-0001","payments":[{"amount_minor":345,'
        b'"card":"622848******1234","change_minor":null,"channel":"card",'
        b'"merchant_ref":"A1B2-0001-1","method":"card","provider_ref":"P-77",'
        b'"tendered_minor":null}],"refunds":[],"store_id":"S001",'
        b'"store_name":"Lanecore Express","terminal":"T01","total_minor":345,"v":1}')
    assert signed["sig"] == ("czrlsTXGn7b1MHXRUwaayn02Qvncvi0q8owIG3UDFiPURzaHgGMGFlyxBZSf"
                             "jJ7KVPR_1xF5ft_yzLdkXsaoCA")
