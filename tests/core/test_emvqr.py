"""EMVCo merchant-presented QR payloads (core/emvqr.py): public vectors, the CRC,
TLV lengths, amounts from minor units, and lanecore's display QR round trip."""

from __future__ import annotations

import pytest

from lanecore.core import emvqr as E
from lanecore.core.emvqr import EmvQrError, MerchantQr

# The EMVCo MPM specification's own example (Chinese merchant name in template 64,
# so its CRC A13A only comes out over the UTF-8 bytes), as quoted by the
# mvallim/emv-qrcode and emvqr test suites.
EMVCO_SAMPLE = (
    "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678"
    "520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京"
    "540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988"
    "770708123456786304A13A")

# dtinth/promptpay-qr index.test.js: static and dynamic Thai PromptPay payloads.
PROMPTPAY = [
    ("00020101021129370016A000000677010111011300668012345675802TH530376463046197",
     [("00", "01"), ("01", "11"), ("29", [("00", "A000000677010111"),
                                          ("01", "0066801234567")]),
      ("58", "TH"), ("53", "764")]),
    ("00020101021229370016A000000677010111011300660000000005802TH530376454044.226304E469",
     [("00", "01"), ("01", "12"), ("29", [("00", "A000000677010111"),
                                          ("01", "0066000000000")]),
      ("58", "TH"), ("53", "764"), ("54", "4.22")]),
    ("00020101021129370016A000000677010111021301234567890125802TH530376463040CBD",
     [("00", "01"), ("01", "11"), ("29", [("00", "A000000677010111"),
                                          ("02", "0123456789012")]),
      ("58", "TH"), ("53", "764")]),
]

QR = MerchantQr(amount_minor=1234, currency="CNY", store_name="LANECORE MART",
                city="SHENZHEN", order_no="A0001", register="07", device_id="QRD-0001",
                hardware_serial="SN2014071900001")


def crc_reference(data: bytes) -> int:
    """A table-driven CRC-16/CCITT-FALSE, written independently of the module's."""
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        table.append(c)
    crc = 0xFFFF
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


@pytest.mark.parametrize("data,want", [
    (b"123456789", 0x29B1),          # the catalogue check value of CRC-16/CCITT-FALSE
    (b"", 0xFFFF), (b"A", 0xB915), (b"000201010212", 0x342A), (b"1234567890", 0x3218),
])
def test_crc_vectors(data, want):
    assert E.crc16_ccitt_false(data) == want == crc_reference(data)


def test_emvco_specification_sample():
    d = E.parse(EMVCO_SAMPLE)
    assert d["63"] == "A13A" and d["54"] == "23.72" and d["53"] == "156"
    assert d["64"] == {"00": "ZH", "01": "最佳运输", "02": "北京"}
    assert d["29"] == {"00": "D15600000000", "05": "A93FO3230Q"}
    assert d["62"] == {"03": "1234", "06": "***", "07": "A6008667", "09": "ME"}
    assert d["91"] == {"00": "A011223344998877", "07": "12345678"}
    assert E.parse_amount(d["54"], 2) == 2372


@pytest.mark.parametrize("text,objects", PROMPTPAY)
def test_promptpay_vectors_rebuild_exactly(text, objects):
    assert E.with_crc(E.encode(objects)) == text
    E.check_crc(text)
    assert E.parse(text)["29"] == dict(objects[2][1])


@pytest.mark.parametrize("minor,exp,text", [
    (1234, 2, "12.34"), (5, 2, "0.05"), (100, 2, "1.00"), (1, 2, "0.01"),
    (1234, 0, "1234"), (9_999_999_999, 2, "99999999.99"),
])
def test_amounts_from_minor_units(minor, exp, text):
    assert E.format_amount(minor, exp) == text
    assert E.parse_amount(text, exp) == minor


def test_amounts_other_issuers_write():
    assert E.parse_amount("4.2", 2) == 420
    assert E.parse_amount("12", 2) == 1200


@pytest.mark.parametrize("bad", [0, -1, 12.5, True, "12", None, 10 ** 13])
def test_bad_amounts_refused(bad):
    with pytest.raises(EmvQrError) as e:
        E.format_amount(bad, 2 if bad != 10 ** 13 else 0)
    assert e.value.code == "EMV_AMOUNT"


@pytest.mark.parametrize("bad", ["4.222", "", "-1.00", "1,00", "0.00", "01.00", " 1"])
def test_bad_amount_texts_refused(bad):
    with pytest.raises(EmvQrError) as e:
        E.parse_amount(bad, 2)
    assert e.value.code == "EMV_AMOUNT"


def test_display_qr_round_trip_and_tlv_lengths():
    text = QR.to_payload()
    assert text.startswith("000201010212")
    assert MerchantQr.from_payload(text) == QR
    assert E.encode(E.split(text)) == text            # every LL is its value's length
    d = E.parse(text)
    assert d["54"] == "12.34" and d["53"] == "156" and d["52"] == "5411"
    assert d["59"] == "LANECORE MART" and d["58"] == "CN"
    assert d["62"]["01"] == "A0001" and d["62"]["05"] == "07"
    assert d["62"]["07"] == "QRD-0001" and d["62"]["50"]["01"] == "SN2014071900001"
    assert d["63"] == f"{crc_reference(text[:-4].encode()):04X}"


def test_every_object_length_counts_characters():
    text = MerchantQr(**{**QR.to_dict(), "store_name_local": "联华超市"}).to_payload()
    pos = 0
    while pos < len(text):
        tag, n = text[pos:pos + 2], int(text[pos + 2:pos + 4])
        if tag == "64":
            assert text[pos + 4:pos + 4 + n] == "0002ZH0104联华超市"
            assert n == 14      # characters, though the UTF-8 bytes are 22
        pos += 4 + n
    assert pos == len(text)
    assert E.crc_hex(text[:-4]) == f"{crc_reference(text[:-4].encode('utf-8')):04X}"
    assert MerchantQr.from_payload(text).store_name_local == "联华超市"


def test_japanese_yen_has_no_decimals():
    text = MerchantQr(**{**QR.to_dict(), "currency": "JPY", "amount_minor": 500}).to_payload()
    assert E.parse(text)["54"] == "500" and E.parse(text)["53"] == "392"


@pytest.mark.parametrize("mutate,code", [
    (lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"), "EMV_CRC"),
    (lambda t: t.replace("12.34", "92.34"), "EMV_CRC"),
    (lambda t: t[6:], "EMV_FORMAT"),                  # no payload format indicator
    (lambda t: t[:-8], "EMV_FORMAT"),                 # no CRC
    (lambda t: t[:-9] + t[-8:], "EMV_FORMAT"),        # a length no longer fits
    (lambda t: "0002010002" + t[6:], "EMV_FORMAT"),    # an object of length 0
    (lambda t: E.with_crc(t[:-8] + "5802CN"), "EMV_FORMAT"),   # repeated ID
    (lambda t: E.with_crc(t[:-8].replace("LANECORE MART", "LANECORE MAR\u00c9")),
     "EMV_FORMAT"),                                    # non-ASCII outside template 64
])
def test_damaged_payloads_refused(mutate, code):
    with pytest.raises(EmvQrError) as e:
        E.parse(mutate(QR.to_payload()))
    assert e.value.code == code


def test_bad_merchant_data_refused():
    with pytest.raises(EmvQrError):
        MerchantQr(**{**QR.to_dict(), "store_name": "X" * 26})
    with pytest.raises(EmvQrError) as e:
        MerchantQr(**{**QR.to_dict(), "currency": "XXX"})
    assert e.value.code == "EMV_CURRENCY"
    with pytest.raises(EmvQrError) as e:
        MerchantQr(**{**QR.to_dict(), "amount_minor": 0})
    assert e.value.code == "EMV_AMOUNT"
    with pytest.raises(EmvQrError):
        E.data_object("5", "x")
    with pytest.raises(EmvQrError):
        E.data_object("59", "x" * 100)


def test_rendering():
    text = QR.to_payload()
    rows = E.qr_matrix(text, border=0)
    assert len(rows) == len(rows[0]) and len(rows) >= 21 and (len(rows) - 17) % 4 == 0
    art = E.qr_text(text).splitlines()
    assert len(art) == (len(rows) + 4 + 1) // 2 and set("".join(art)) <= set(" \u2580\u2584\u2588")
