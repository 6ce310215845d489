"""EMVCo merchant-presented QR payloads (core/pay/emvqr.py): public vectors (the EMVCo
sample, dtinth/promptpay-qr, mvallim/emv-qrcode), the CRC, TLV lengths, amounts from
minor units, lanecore's display QR, any merchant's MPM built and decoded, and a real
QR image round trip through OpenCV's reader."""

from __future__ import annotations

import pytest

from lanecore.core.pay import emvqr as E
from lanecore.core.pay.emvqr import EmvQrError, MerchantQr

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

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
    ("00020101021129370016A000000677010111011300668912345675802TH5303764630429C1",
     [("00", "01"), ("01", "11"), ("29", [("00", "A000000677010111"),
                                          ("01", "0066891234567")]),
      ("58", "TH"), ("53", "764")]),
    ("00020101021129370016A000000677010111021311111111111115802TH530376463047B5A",
     [("00", "01"), ("01", "11"), ("29", [("00", "A000000677010111"),
                                          ("02", "1111111111111")]),
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


# --------------------------------------------------------------------------------------
# mvallim/emv-qrcode: README encode example, decoder tests, CRC validator tests
# --------------------------------------------------------------------------------------

# README "MPM Encode": built from these objects, printed with CRC 6325.
MVALLIM_README = (
    "00020101021102160004hoge0104abcd520441115303156540523.7255020256035005802CN5"
    "914BEST TRANSPORT6007BEIJING6107123456762800205678900305098760505abcde0705klm"
    "no0805pqres0903tuv1004abcd5016000412340104ijkl64280002ZH0102北京0204最佳运输030"
    "4abcd65020080320016A01122334499887707081234567863046325")
MVALLIM_README_OBJECTS = [
    ("00", "01"), ("01", "11"), ("02", "0004hoge0104abcd"), ("52", "4111"),
    ("53", "156"), ("54", "23.72"), ("55", "02"), ("56", "500"), ("58", "CN"),
    ("59", "BEST TRANSPORT"), ("60", "BEIJING"), ("61", "1234567"),
    ("62", [("02", "67890"), ("03", "09876"), ("05", "abcde"), ("07", "klmno"),
            ("08", "pqres"), ("09", "tuv"), ("10", "abcd"),
            ("50", [("00", "1234"), ("01", "ijkl")])]),
    ("64", [("00", "ZH"), ("01", "北京"), ("02", "最佳运输"), ("03", "abcd")]),
    ("65", "00"), ("80", [("00", "A011223344998877"), ("07", "12345678")]),
]
# MerchantPresentedModeDecoderTest.testeSuccessToString (301 characters, CRC 4220).
MVALLIM_FULL = (
    "00020101021102160004hoge0104abcd520441115303156540523.725502015603500570155802CN"
    "5914BEST TRANSPORT6007BEIJING6107123456762950105123450205678900305098760405543210"
    "505abcde0605fghij0705klmno0805pqres0905tuvxy5010000110101i64280002ZH0102北京0204"
    "最佳运输0304abcd65020080320016A01122334499887707081234567863044220")
# MerchantPresentedModeDecoderTest.testeBrCode: Brazilian Pix payloads.
MVALLIM_PIX = [
    "00020126570014BR.GOV.BCB.PIX0114607011900001040217Mensagem opcional52040000530398"
    "654041.225802BR5920Teste Batch atualiza6009SAO PAULO622605221t9OGEuUWlqWQiY0CU2Ym"
    "A63048179",
    "00020126830014br.gov.bcb.pix01364004901d-bd85-4769-8e52-cb4c42c506dc0221Jornada pa"
    "gador 57768520400005303986540573.625802BR5903Pix62080504oooo63048E87",
    "00020126830014br.gov.bcb.pix01364004901d-bd85-4769-8e52-cb4c42c506dc0221Jornada pa"
    "gador 57768520400005303986540573.625802BR5903Pix6016Sao Joao del Rei62080504oooo63"
    "044682",
    "00020104141234567890123426580014BR.GOV.BCB.PIX0136123e4567-e12b-12d1-a456-42665544"
    "000027300012BR.COM.OUTRO011001234567895204000053039865406123.455802BR5917NOME DO R"
    "ECEBEDOR6008BRASILIA61087007490080390012BR.COM.OUTRO01190123.ABCD.3456.WXYZ6304549C",
    "00020126830014br.gov.bcb.pix01364004901d-bd85-4769-8e52-cb4c42c506dc0221Jornada pa"
    "gador 57768520400005303986540105802BR5903Pix6008BRASILIA62080504oooo63041F70",
]
PUBLISHED = ([EMVCO_SAMPLE, MVALLIM_README, MVALLIM_FULL] + MVALLIM_PIX[:4]
             + [text for text, _ in PROMPTPAY])


def reencode(fields: dict) -> str:
    """A decoded ``fields`` map written back as a payload, templates included."""
    return E.encode([(t, reencode(v) if isinstance(v, dict) else v)
                     for t, v in fields.items()])


def test_mvallim_readme_rebuilds_exactly():
    assert E.with_crc(E.encode(MVALLIM_README_OBJECTS)) == MVALLIM_README
    assert E.parse(MVALLIM_README)["63"] == "6325"


def test_mvallim_full_decoder_vector():
    assert len(MVALLIM_FULL) == 301          # characters, as the Java test asserts
    r = E.decode_mpm(MVALLIM_FULL)
    assert r["ok"] and r["crc_ok"] and r["currency"] == "CNY" and r["amount_minor"] == 2372
    f = r["fields"]
    assert f["62"] == {"01": "12345", "02": "67890", "03": "09876", "04": "54321",
                       "05": "abcde", "06": "fghij", "07": "klmno", "08": "pqres",
                       "09": "tuvxy", "50": {"00": "1", "01": "i"}}
    assert f["64"] == {"00": "ZH", "01": "北京", "02": "最佳运输", "03": "abcd"}
    assert f["80"] == {"00": "A011223344998877", "07": "12345678"}
    assert f["02"] == "0004hoge0104abcd" and f["65"] == "00" and f["57"] == "5"


@pytest.mark.parametrize("text", PUBLISHED)
def test_published_payloads_decode_and_rebuild_byte_exact(text):
    r = E.decode_mpm(text)
    assert r["ok"] and r["crc_ok"], r
    E.check_crc(text)
    assert E.crc_hex(text[:-4]) == f"{crc_reference(text[:-4].encode('utf-8')):04X}"
    assert reencode(r["fields"]) == text


def test_pix_amounts_and_accounts():
    r = E.decode_mpm(MVALLIM_PIX[3])
    assert r["currency"] == "BRL" and r["amount_minor"] == 12345
    assert r["fields"]["26"]["00"] == "BR.GOV.BCB.PIX"
    assert r["fields"]["27"] == {"00": "BR.COM.OUTRO", "01": "0123456789"}
    assert r["fields"]["80"]["01"] == "0123.ABCD.3456.WXYZ"
    assert E.decode_mpm(MVALLIM_PIX[1])["amount_minor"] == 7362


def test_pix_amount_zero_is_read_but_not_ok():
    # mvallim's decoder accepts this one ("5401" "0"); EMVCo says an amount, when
    # present, is not zero, so the reader shows the fields under a good CRC and
    # reports the amount
    r = E.decode_mpm(MVALLIM_PIX[4])
    assert r["crc_ok"] is True and r["ok"] is False and r["error"]["code"] == "EMV_AMOUNT"
    assert r["fields"]["54"] == "0" and reencode(r["fields"]) == MVALLIM_PIX[4]


@pytest.mark.parametrize("text,code", [
    # Crc16ValidatorTest: no CRC, a cut CRC, "6304" alone, a CRC that is not hex
    (MVALLIM_README[:-8], "EMV_FORMAT"),
    (MVALLIM_README[:-6], "EMV_FORMAT"),
    (MVALLIM_README[:-4], "EMV_FORMAT"),
    (MVALLIM_README[:-4] + "XXXX", "EMV_CRC"),
    ("000", "EMV_FORMAT"),
    # testFailDecode: a repeated 53 and a tag "AA" (given a good CRC, so the
    # structure is what fails)
    (E.with_crc(MVALLIM_FULL[:-8].replace("5303156", "53031565303156")), "EMV_FORMAT"),
    (E.with_crc(MVALLIM_FULL[:-8].replace("5303156", "AA03156")), "EMV_FORMAT"),
])
def test_mvallim_refused_payloads(text, code):
    r = E.decode_mpm(text)
    assert r["ok"] is False and r["error"]["code"] == code
    with pytest.raises(EmvQrError) as e:
        E.parse(text)
    assert e.value.code == code


# --------------------------------------------------------------------------------------
# build_mpm: any merchant's payload from arguments
# --------------------------------------------------------------------------------------

SHOP = dict(currency="156", country="CN", merchant_name="LANECORE MART", city="SHENZHEN")


def test_build_dynamic_payload_exactly():
    text = E.build_mpm(amount_minor=1234, bill="A0001", terminal="T07",
                       gui="com.lanecore.pay", account="M123", **SHOP)
    body = ("000201" "010212" "2628" "0016com.lanecore.pay" "0104M123" "52045411"
            "5303156" "540512.34" "5802CN" "5913LANECORE MART" "6008SHENZHEN"
            "6216" "0105A0001" "0703T07" "6304")
    assert text == body + f"{crc_reference(body.encode()):04X}"


def test_static_without_amount_dynamic_with():
    static = E.parse(E.build_mpm(**SHOP))
    assert static["01"] == "11" and "54" not in static and "62" not in static
    assert "26" not in static
    assert E.parse(E.build_mpm(amount_minor=1, **SHOP))["01"] == "12"


@pytest.mark.parametrize("currency,minor,text", [
    ("156", 1234, "12.34"), ("826", 5, "0.05"), ("978", 100, "1.00"),
    ("840", 99_999, "999.99"), ("764", 422, "4.22"), ("392", 500, "500"),
    ("752", 1_000_000, "10000.00"), ("CNY", 1, "0.01"),
])
def test_amount_with_each_currencys_exponent(currency, minor, text):
    r = E.decode_mpm(E.build_mpm(**{**SHOP, "currency": currency}, amount_minor=minor))
    assert r["ok"] and r["fields"]["54"] == text and r["amount_minor"] == minor
    assert r["fields"]["53"] == E.lookup_currency(currency)[1]


def test_additional_data_and_account_template():
    f = E.parse(E.build_mpm(terminal="LANE-07", gui="A000000677010111",
                            account="0066801234567", account_tag="29", **SHOP))
    assert f["62"] == {"07": "LANE-07"}
    assert f["29"] == {"00": "A000000677010111", "01": "0066801234567"}
    assert E.parse(E.build_mpm(bill="B-9", **SHOP))["62"] == {"01": "B-9"}


def test_local_language_template():
    text = E.build_mpm(amount_minor=2372, name_local="最佳运输", city_local="北京", **SHOP)
    r = E.decode_mpm(text)
    assert r["ok"] and r["fields"]["64"] == {"00": "ZH", "01": "最佳运输", "02": "北京"}
    assert "64200002ZH0104最佳运输0202北京6304" in text     # lengths count characters


def test_lookup_currency():
    assert E.lookup_currency("156") == ("CNY", "156", 2)
    assert E.lookup_currency("jpy") == ("JPY", "392", 0)
    assert E.lookup_currency("752") == ("SEK", "752", 2)


@pytest.mark.parametrize("change,code", [
    ({"amount_minor": 0}, "EMV_AMOUNT"), ({"amount_minor": -5}, "EMV_AMOUNT"),
    ({"amount_minor": True}, "EMV_AMOUNT"), ({"amount_minor": 10 ** 13}, "EMV_AMOUNT"),
    ({"currency": "999"}, "EMV_CURRENCY"), ({"currency": "XXX"}, "EMV_CURRENCY"),
    ({"country": "cn"}, "EMV_FORMAT"), ({"country": "CHN"}, "EMV_FORMAT"),
    ({"merchant_name": "X" * 26}, "EMV_FORMAT"), ({"merchant_name": ""}, "EMV_FORMAT"),
    ({"merchant_name": "LIANHUA 联华"}, "EMV_FORMAT"), ({"city": "Y" * 16}, "EMV_FORMAT"),
    ({"bill": "B" * 26}, "EMV_FORMAT"), ({"terminal": "T\n1"}, "EMV_FORMAT"),
    ({"gui": "com.x"}, "EMV_FORMAT"), ({"account": "123"}, "EMV_FORMAT"),
    ({"gui": "com.x", "account": "1", "account_tag": "52"}, "EMV_FORMAT"),
    ({"gui": "G" * 33, "account": "1"}, "EMV_FORMAT"), ({"mcc": "541"}, "EMV_FORMAT"),
    ({"name_local": "联" * 26}, "EMV_FORMAT"), ({"city_local": "北\x07"}, "EMV_FORMAT"),
    ({"name_local": "联华", "language": "zh"}, "EMV_FORMAT"),
])
def test_build_refuses_bad_input(change, code):
    with pytest.raises(EmvQrError) as e:
        E.build_mpm(**{**SHOP, **change})
    assert e.value.code == code


# --------------------------------------------------------------------------------------
# decode_mpm: the reader's report
# --------------------------------------------------------------------------------------

def test_decode_wrong_crc_still_shows_fields():
    text = PROMPTPAY[3][0]
    r = E.decode_mpm(text[:-4] + "0000")
    assert r["ok"] is False and r["crc_ok"] is False and r["error"]["code"] == "EMV_CRC"
    assert r["fields"]["29"]["01"] == "0066891234567"


@pytest.mark.parametrize("objects,code", [
    ([("00", "01"), ("01", "13"), ("53", "156")], "EMV_FORMAT"),
    ([("00", "01"), ("52", "54A1")], "EMV_FORMAT"),
    ([("00", "01"), ("53", "15")], "EMV_FORMAT"),
    ([("00", "01"), ("58", "cn")], "EMV_FORMAT"),
    ([("00", "01"), ("53", "156"), ("54", "1.234")], "EMV_AMOUNT"),
    ([("00", "01"), ("53", "392"), ("54", "5.00")], "EMV_AMOUNT"),    # yen has no decimals
    ([("00", "01"), ("53", "360"), ("54", "0.00")], "EMV_AMOUNT"),
    ([("00", "01"), ("54", "abc")], "EMV_AMOUNT"),
])
def test_decode_bad_values_under_a_good_crc(objects, code):
    r = E.decode_mpm(E.with_crc(E.encode(objects)))
    assert r["ok"] is False and r["crc_ok"] is True and r["error"]["code"] == code


def test_decode_currency_without_exponent_keeps_amount_text():
    r = E.decode_mpm(E.with_crc(E.encode([("00", "01"), ("53", "360"), ("54", "15000.5")])))
    assert r["ok"] and r["currency"] is None and r["amount_minor"] is None
    assert r["fields"]["54"] == "15000.5"


@pytest.mark.parametrize("bad", [None, 12, "", "0002", "0002010"])
def test_decode_never_raises(bad):
    r = E.decode_mpm(bad)
    assert r == {"ok": False, "error": r["error"]} and r["error"]["code"] == "EMV_FORMAT"


# --------------------------------------------------------------------------------------
# A real image round trip: qrcode draws, OpenCV reads
# --------------------------------------------------------------------------------------

ROUND_TRIP = [
    PROMPTPAY[4][0],
    EMVCO_SAMPLE,                                            # Chinese in template 64
    MVALLIM_FULL,                                            # Chinese in template 64
    MVALLIM_PIX[0],
    E.build_mpm(amount_minor=2372, bill="A0001", terminal="T07", gui="com.lanecore.pay",
                account="M123", name_local="联华超市", city_local="上海", **SHOP),
    E.build_mpm(**SHOP),
]


def _read_qr(gray) -> str:
    import cv2
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(gray)
    assert points is not None, "no QR found in the image"
    return text


@pytest.mark.parametrize("payload", ROUND_TRIP)
def test_pil_image_round_trip_through_opencv(payload):
    # imported here, not skipped: without OpenCV, Pillow or numpy this test fails
    import numpy as np
    from qrcode.image.pil import PilImage

    image = E.qr_code(payload, box_size=6).make_image(image_factory=PilImage).get_image()
    assert _read_qr(np.asarray(image.convert("L"))) == payload


@pytest.mark.parametrize("payload", ROUND_TRIP[1::3])
def test_png_file_round_trip_through_opencv(payload):
    import cv2
    import numpy as np

    data = E.qr_png(payload, scale=5)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray.shape[0] == gray.shape[1] == len(E.qr_matrix(payload)) * 5
    assert _read_qr(gray) == payload


def test_svg_draws_the_same_modules():
    import xml.etree.ElementTree as ET

    payload = ROUND_TRIP[4]
    root = ET.fromstring(E.qr_svg(payload))
    side = len(E.qr_matrix(payload))
    assert root.get("viewBox") == f"0 0 {side} {side}"
    path = root.find("{http://www.w3.org/2000/svg}path").get("d")
    # one "M..z" square per dark module
    assert path.count("z") == sum(map(sum, E.qr_matrix(payload)))


def test_png_scale_refused():
    with pytest.raises(EmvQrError):
        E.qr_png("000201", scale=0)


@pytest.mark.parametrize("text,minor", [("1234", 1234), ("0", 0), ("007", 7)])
def test_minor_units_as_typed(text, minor):
    assert E.parse_minor_units(text) == minor


@pytest.mark.parametrize("bad", ["", "-5", "+5", "12.5", "1e3", " 12", "１２", None])
def test_minor_units_refused(bad):
    with pytest.raises(EmvQrError) as e:
        E.parse_minor_units(bad)
    assert e.value.code == "EMV_AMOUNT"


def test_field_lines():
    assert E.field_lines(E.parse(PROMPTPAY[0][0])) == [
        "00  01", "01  11", "29", "  00  A000000677010111", "  01  0066801234567",
        "58  TH", "53  764", "63  6197"]
