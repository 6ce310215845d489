"""EMVCo merchant-presented QR (MPM) payloads: build, parse, check.

What a customer-facing QR display (seed 002) or a POS terminal shows for the shopper's
wallet to scan. The text is a flat run of data objects, each ``ID LL VALUE``:

* ``ID``: two digits; ``LL``: two digits, the length of ``VALUE`` in characters;
* templates (IDs 26-51 merchant account information, 62 additional data, 64 merchant
  information in an alternate language, 80-99 unreserved; inside 62 the IDs 50-99)
  hold the same kind of run inside their value;
* ID 00 (payload format indicator, ``"01"``) comes first and ID 63 (CRC) last; the
  CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF, no reflection, no
  final xor) over every byte before it *including* ``"6304"``, written as four
  upper-case hexadecimal digits.

Every value is printable ASCII except inside template 64, which may carry the store's
name in another script (e.g. Chinese); the text is then encoded as UTF-8 in the QR
(byte mode) and the CRC runs over those UTF-8 bytes. Lengths always count characters.

:class:`MerchantQr` is the payload lanecore's QR display draws: amount (integer minor
units, formatted with the currency's exponent), currency (ISO 4217 numeric in the
payload), store name and city, country, merchant category code 5411 (grocery stores,
supermarkets), the acquirer's merchant account template, and a reference made of the
order number, the register number, the display's device id and hardware serial.
``docs/drivers/qr-display.md`` lists every tag with a worked example.

:func:`build_mpm` makes the payload of any merchant from plain arguments (static or
dynamic, bill number and terminal label in template 62, an account template 26-51,
template 64) and :func:`decode_mpm` reads any payload into a JSON-ready report; the
``lanecore qr mpm`` and ``lanecore qr decode-mpm`` commands are thin shells around
them (``docs/pay/qr.md``). :func:`qr_png`, :func:`qr_svg` and :func:`qr_text` draw the
symbol.

Errors are :class:`EmvQrError` with a stable ``code``: ``EMV_FORMAT`` (not a run of
data objects, a missing or misplaced mandatory object, a value that cannot be held),
``EMV_CRC`` (the checksum does not match), ``EMV_AMOUNT`` (an amount that is not a
positive integer of minor units, or not a decimal with the currency's exponent),
``EMV_CURRENCY`` (a currency lanecore has no exponent for). Pure Python; rendering
imports ``qrcode`` only when asked.
"""

from __future__ import annotations

import binascii
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Iterable, Union

from lanecore.core.errors import LanecoreError

__all__ = [
    "EmvQrError", "CURRENCIES", "MCC_GROCERY", "crc16_ccitt_false", "crc_hex",
    "data_object", "encode", "with_crc", "split", "parse", "check_crc",
    "format_amount", "parse_amount", "MerchantQr", "qr_matrix", "qr_text",
    "lookup_currency", "parse_minor_units", "build_mpm", "decode_mpm", "field_lines",
    "qr_code", "qr_png", "qr_svg",
]

#: ISO 4217: alphabetic code -> (numeric code, minor-unit exponent).
CURRENCIES = {
    "CNY": ("156", 2), "HKD": ("344", 2), "MOP": ("446", 2), "TWD": ("901", 2),
    "USD": ("840", 2), "EUR": ("978", 2), "GBP": ("826", 2), "JPY": ("392", 0),
    "KRW": ("410", 0), "SGD": ("702", 2), "MYR": ("458", 2), "THB": ("764", 2),
    "SEK": ("752", 2), "BRL": ("986", 2),
}
_BY_NUMERIC = {num: (alpha, exp) for alpha, (num, exp) in CURRENCIES.items()}

#: ISO 18245 merchant category code of grocery stores and supermarkets.
MCC_GROCERY = "5411"
#: The longest amount (tag 54 holds up to 13 characters).
MAX_AMOUNT_CHARS = 13

_TEMPLATE_IDS = frozenset([f"{i:02d}" for i in range(26, 52)] + ["62", "64"]
                          + [f"{i:02d}" for i in range(80, 100)])
_TEMPLATE_IDS_IN_62 = frozenset(f"{i:02d}" for i in range(50, 100))
_ID_RE = re.compile(r"[0-9]{2}")
_AMOUNT_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_ANS_RE = re.compile(r"[\x20-\x7e]*")

Value = Union[str, "list[tuple[str, Value]]"]


class EmvQrError(LanecoreError):
    """A payload that cannot be built, read or trusted."""

    code = "EMV_FORMAT"


# --------------------------------------------------------------------------------------
# CRC and TLV
# --------------------------------------------------------------------------------------

def crc16_ccitt_false(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (poly 0x1021, init 0xFFFF; check value of
    ``b"123456789"`` is 0x29B1). Also the checksum of lanecore's serial frames.

    ``binascii.crc_hqx`` is exactly this CRC (MSB first, polynomial 0x1021) with the
    initial value as its second argument, computed in C.
    """
    return binascii.crc_hqx(data, crc)


def crc_hex(text_before_crc_value: str) -> str:
    """The four upper-case hex digits of tag 63 for a payload ending in ``"6304"``."""
    return f"{crc16_ccitt_false(text_before_crc_value.encode('utf-8')):04X}"


def data_object(tag: str, value: str) -> str:
    """One ``ID LL VALUE`` object; the length counts characters (at most 99)."""
    if not (isinstance(tag, str) and _ID_RE.fullmatch(tag)):
        raise EmvQrError(f"an ID is two digits, got {tag!r}")
    if not isinstance(value, str) or not value:
        raise EmvQrError(f"ID {tag}: a value is a non-empty string, got {value!r}")
    if len(value) > 99:
        raise EmvQrError(f"ID {tag}: {len(value)} characters; the most is 99")
    return f"{tag}{len(value):02d}{value}"


def encode(objects: Iterable[tuple[str, Value]]) -> str:
    """A run of data objects; a value that is a list of ``(ID, value)`` pairs is a
    template, encoded recursively."""
    out = []
    for tag, value in objects:
        if isinstance(value, list):
            value = encode(value)
        out.append(data_object(tag, value))
    return "".join(out)


def with_crc(body: str) -> str:
    """``body`` (everything but the CRC) with ``6304`` and its CRC appended."""
    head = body + "6304"
    return head + crc_hex(head)


def split(text: str) -> list[tuple[str, str]]:
    """One level of a run of data objects as ``(ID, value)`` pairs, in order."""
    if not isinstance(text, str):
        raise EmvQrError("a payload is text")
    out, i = [], 0
    while i < len(text):
        tag, ll = text[i:i + 2], text[i + 2:i + 4]
        if not (_ID_RE.fullmatch(tag) and _ID_RE.fullmatch(ll)):
            raise EmvQrError(f"no data object at character {i}: {text[i:i + 8]!r}")
        n = int(ll)
        value = text[i + 4:i + 4 + n]
        if n == 0 or len(value) != n:
            raise EmvQrError(f"ID {tag} at character {i}: length {n} does not fit")
        out.append((tag, value))
        i += 4 + n
    return out


def check_crc(text: str) -> None:
    """Raise ``EMV_CRC`` unless ``text`` ends with a tag 63 that matches its CRC."""
    if len(text) < 8 or text[-8:-4] != "6304":
        raise EmvQrError("the payload does not end with the CRC object 6304XXXX")
    want = crc_hex(text[:-4])
    if text[-4:].upper() != want:
        raise EmvQrError(f"CRC {text[-4:]!r}, the payload's is {want}", code="EMV_CRC")


def _unique(pairs: list[tuple[str, str]], where: str) -> dict:
    out = {}
    for tag, value in pairs:
        if tag in out:
            raise EmvQrError(f"ID {tag} appears twice{where}")
        out[tag] = value
    return out


def parse(text: str, *, verify: bool = True) -> dict:
    """The payload's data objects as ``{ID: value}``, templates as nested dicts.

    Checks what every MPM must have: ID 00 ``"01"`` first, ID 63 last with a
    matching CRC (``verify=False`` skips the CRC comparison only), no repeated IDs,
    printable ASCII outside template 64.
    """
    pairs = split(text)
    if not pairs or pairs[0] != ("00", "01"):
        raise EmvQrError("an MPM starts with the payload format indicator 000201")
    if pairs[-1][0] != "63" or len(pairs[-1][1]) != 4:
        raise EmvQrError("an MPM ends with the CRC object 6304XXXX")
    if verify:
        check_crc(text)
    out = _unique(pairs, "")
    for tag, value in list(out.items()):
        if tag in _TEMPLATE_IDS:
            inner = _unique(split(value), f" in template {tag}")
            if tag == "62":
                inner = {t: (_unique(split(v), f" in template 62/{t}")
                             if t in _TEMPLATE_IDS_IN_62 else v) for t, v in inner.items()}
            out[tag] = inner
        if tag != "64":
            for v in ([value] if not isinstance(out[tag], dict) else _leaves(out[tag])):
                if not _ANS_RE.fullmatch(v):
                    raise EmvQrError(f"ID {tag}: only printable ASCII outside template 64")
    return out


def _leaves(d: dict):
    for v in d.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


# --------------------------------------------------------------------------------------
# Amounts
# --------------------------------------------------------------------------------------

def _exponent(currency: str) -> tuple[str, int]:
    try:
        return CURRENCIES[currency]
    except (KeyError, TypeError):
        raise EmvQrError(f"currency {currency!r} is not one of {', '.join(CURRENCIES)}",
                         code="EMV_CURRENCY") from None


def format_amount(amount_minor: int, exponent: int) -> str:
    """Tag 54 text of an amount in minor units: ``1234, 2`` -> ``"12.34"``,
    ``5, 2`` -> ``"0.05"``, ``1234, 0`` -> ``"1234"``. Always the full exponent's
    digits after the point, so the text is one-to-one with the integer."""
    if type(amount_minor) is not int or amount_minor <= 0:
        raise EmvQrError(f"an amount is a positive integer of minor units, got "
                         f"{amount_minor!r}", code="EMV_AMOUNT")
    if exponent == 0:
        text = str(amount_minor)
    else:
        whole, frac = divmod(amount_minor, 10 ** exponent)
        text = f"{whole}.{frac:0{exponent}d}"
    if len(text) > MAX_AMOUNT_CHARS:
        raise EmvQrError(f"amount {text} is longer than {MAX_AMOUNT_CHARS} characters",
                         code="EMV_AMOUNT")
    return text


def parse_amount(text: str, exponent: int) -> int:
    """Minor units of a tag 54 text. Fewer decimals than the exponent are accepted
    (``"4.2"`` is 420 with exponent 2, as other issuers write it); more are not,
    since they would be a fraction of the smallest coin."""
    m = _AMOUNT_RE.fullmatch(text) if isinstance(text, str) else None
    if not m or len(text) > MAX_AMOUNT_CHARS:
        raise EmvQrError(f"amount {text!r} is not a decimal number", code="EMV_AMOUNT")
    frac = m.group(2) or ""
    if len(frac) > exponent:
        raise EmvQrError(f"amount {text!r} has more than {exponent} decimals",
                         code="EMV_AMOUNT")
    minor = int(m.group(1)) * 10 ** exponent + int((frac + "0" * exponent)[:exponent] or 0)
    if minor <= 0:
        raise EmvQrError(f"amount {text!r} is not positive", code="EMV_AMOUNT")
    return minor


# --------------------------------------------------------------------------------------
# lanecore's dynamic merchant QR
# --------------------------------------------------------------------------------------

def _ans(name: str, value: str, most: int, *, required: bool = True) -> None:
    if not isinstance(value, str) or (required and not value):
        raise EmvQrError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > most or not _ANS_RE.fullmatch(value):
        raise EmvQrError(f"{name} {value!r} is not 1-{most} printable ASCII characters")


@dataclass(frozen=True)
class MerchantQr:
    """A dynamic (amount-carrying) merchant-presented QR for one order.

    ``amount_minor``: integer minor units of ``currency`` (ISO 4217 alphabetic).
    ``merchant_gui``/``merchant_id``: the acquirer's globally unique id (reverse
    domain name or AID) and the store's merchant id under it, in template 26.
    ``order_no``, ``register``, ``device_id``, ``hardware_serial``: the reference
    that brings the wallet's payment notice back to this display and this order.
    ``store_name_local``: the store's name in the local script (template 64).
    """

    amount_minor: int
    currency: str
    store_name: str
    city: str
    order_no: str
    register: str
    device_id: str
    hardware_serial: str
    merchant_gui: str = "com.lanecore.pay"
    merchant_id: str = "LANECORE-DEMO"
    country: str = "CN"
    mcc: str = MCC_GROCERY
    store_name_local: str = ""
    language: str = "ZH"

    def __post_init__(self) -> None:
        _exponent(self.currency)
        format_amount(self.amount_minor, CURRENCIES[self.currency][1])
        _ans("store_name", self.store_name, 25)
        _ans("city", self.city, 15)
        _ans("order_no", self.order_no, 25)
        _ans("register", self.register, 25)
        _ans("device_id", self.device_id, 25)
        _ans("hardware_serial", self.hardware_serial, 25)
        _ans("merchant_gui", self.merchant_gui, 32)
        _ans("merchant_id", self.merchant_id, 25)
        if not re.fullmatch(r"[A-Z]{2}", self.country or ""):
            raise EmvQrError(f"country {self.country!r} is not ISO 3166 alpha-2")
        if not re.fullmatch(r"[0-9]{4}", self.mcc or ""):
            raise EmvQrError(f"mcc {self.mcc!r} is not four digits")
        if not isinstance(self.store_name_local, str) or len(self.store_name_local) > 25:
            raise EmvQrError("store_name_local is at most 25 characters")
        if not re.fullmatch(r"[A-Z]{2}", self.language or ""):
            raise EmvQrError(f"language {self.language!r} is not ISO 639-1 (upper case)")

    def objects(self) -> list[tuple[str, Value]]:
        """The data objects in payload order (without the CRC)."""
        numeric, exponent = CURRENCIES[self.currency]
        objs: list[tuple[str, Value]] = [
            ("00", "01"),
            ("01", "12"),      # dynamic: this QR is for one amount, one order
            ("26", [("00", self.merchant_gui), ("01", self.merchant_id)]),
            ("52", self.mcc),
            ("53", numeric),
            ("54", format_amount(self.amount_minor, exponent)),
            ("58", self.country),
            ("59", self.store_name),
            ("60", self.city),
            ("62", [("01", self.order_no), ("05", self.register),
                    ("07", self.device_id),
                    ("50", [("00", self.merchant_gui), ("01", self.hardware_serial)])]),
        ]
        if self.store_name_local:
            objs.append(("64", [("00", self.language), ("01", self.store_name_local)]))
        return objs

    def to_payload(self) -> str:
        """The payload text, CRC included."""
        return with_crc(encode(self.objects()))

    @classmethod
    def from_payload(cls, text: str) -> "MerchantQr":
        """Read back a payload built by :meth:`to_payload` (CRC checked)."""
        d = parse(text)
        try:
            if d["01"] != "12":
                raise EmvQrError("not a dynamic QR (01 = 12)")
            alpha, exponent = _BY_NUMERIC[d["53"]]
            extra, account = d["62"], d["26"]
            local = d.get("64", {})
            return cls(
                amount_minor=parse_amount(d["54"], exponent), currency=alpha,
                store_name=d["59"], city=d["60"], order_no=extra["01"],
                register=extra["05"], device_id=extra["07"],
                hardware_serial=extra["50"]["01"], merchant_gui=account["00"],
                merchant_id=account["01"], country=d["58"], mcc=d["52"],
                store_name_local=local.get("01", ""), language=local.get("00", "ZH"))
        except (KeyError, TypeError) as exc:
            raise EmvQrError(f"not a lanecore display QR: {exc} missing") from None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# Any merchant's MPM: build from arguments, decode for display
# --------------------------------------------------------------------------------------

def lookup_currency(code: str) -> tuple[str, str, int]:
    """``(alphabetic, numeric, exponent)`` of an ISO 4217 currency given by either
    code: ``"156"`` or ``"CNY"`` -> ``("CNY", "156", 2)``. ``EMV_CURRENCY`` for a
    currency not in :data:`CURRENCIES` (lanecore needs the exponent to turn minor
    units into the payload's decimal amount)."""
    if isinstance(code, str) and code in _BY_NUMERIC:
        alpha, exponent = _BY_NUMERIC[code]
        return alpha, code, exponent
    numeric, exponent = _exponent(code.upper() if isinstance(code, str) else code)
    return code.upper(), numeric, exponent


def parse_minor_units(text: str) -> int:
    """An amount typed as a whole number of minor units (``"1234"`` fen) as an int;
    ``EMV_AMOUNT`` for anything else (decimals, non-ASCII digits); a negative whole
    number is told so."""
    if isinstance(text, str) and re.fullmatch(r"\s*-[0-9]+\s*", text):
        raise EmvQrError(f"amount {text.strip()} is negative: it must be at least 1 "
                         "minor unit", code="EMV_AMOUNT")
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        raise EmvQrError(f"amount {text!r} is not a whole number of minor units",
                         code="EMV_AMOUNT")
    return int(text)


def _local(name: str, value: str, most: int) -> None:
    # template 64 is the one place other scripts may appear, but control characters
    # would still break a wallet's display and a terminal's log line
    if not isinstance(value, str) or len(value) > most or not value.isprintable():
        raise EmvQrError(f"{name} {value!r} is not 1-{most} printable characters")


def build_mpm(*, currency: str, country: str, merchant_name: str, city: str,
              amount_minor: int | None = None, bill: str = "", terminal: str = "",
              gui: str = "", account: str = "", account_tag: str = "26",
              mcc: str = MCC_GROCERY, name_local: str = "", city_local: str = "",
              language: str = "ZH") -> str:
    """An EMVCo merchant-presented QR payload (CRC included) for any merchant.

    ``amount_minor``: integer minor units of ``currency`` (ISO 4217 numeric such as
    ``"156"``, or alphabetic); written with the currency's exponent in tag 54 and the
    QR is dynamic (01 = ``"12"``, one sale); ``None`` makes a static QR (``"11"``,
    the shopper types the amount). ``country``: ISO 3166 alpha-2 (tag 58);
    ``merchant_name`` up to 25 and ``city`` up to 15 printable ASCII characters
    (59, 60). ``bill``/``terminal``: tag 62 sub-tags 01 (bill number) and 07
    (terminal label), up to 25 characters each. ``gui``/``account``: a merchant
    account template at ``account_tag`` (26-51) with sub-tag 00 the globally unique
    id (reverse domain name or AID, up to 32) and 01 the merchant's account; both or
    neither. ``mcc``: tag 52, ISO 18245 (default grocery, 5411). ``name_local``/
    ``city_local``: template 64 in ``language`` (ISO 639-1), any script.

    Raises :class:`EmvQrError`: ``EMV_AMOUNT``, ``EMV_CURRENCY`` or ``EMV_FORMAT``.
    """
    _, numeric, exponent = lookup_currency(currency)
    if not (isinstance(country, str) and re.fullmatch(r"[A-Z]{2}", country)):
        raise EmvQrError(f"country {country!r} is not ISO 3166 alpha-2 (upper case)")
    if not (isinstance(mcc, str) and re.fullmatch(r"[0-9]{4}", mcc)):
        raise EmvQrError(f"mcc {mcc!r} is not four digits")
    _ans("merchant name", merchant_name, 25)
    _ans("city", city, 15)
    objs: list[tuple[str, Value]] = [("00", "01"),
                                     ("01", "11" if amount_minor is None else "12")]
    if bool(gui) != bool(account):
        raise EmvQrError("a merchant account needs both the GUI and the account")
    if gui:
        if not (isinstance(account_tag, str) and _ID_RE.fullmatch(account_tag)
                and 26 <= int(account_tag) <= 51):
            raise EmvQrError(f"account tag {account_tag!r} is not one of 26-51")
        _ans("GUI", gui, 32)
        _ans("account", account, 99)
        objs.append((account_tag, [("00", gui), ("01", account)]))
    objs += [("52", mcc), ("53", numeric)]
    if amount_minor is not None:
        objs.append(("54", format_amount(amount_minor, exponent)))
    objs += [("58", country), ("59", merchant_name), ("60", city)]
    extra = []
    if bill:
        _ans("bill number", bill, 25)
        extra.append(("01", bill))
    if terminal:
        _ans("terminal label", terminal, 25)
        extra.append(("07", terminal))
    if extra:
        objs.append(("62", extra))
    if name_local or city_local:
        if not (isinstance(language, str) and re.fullmatch(r"[A-Z]{2}", language)):
            raise EmvQrError(f"language {language!r} is not ISO 639-1 (upper case)")
        local: list[tuple[str, Value]] = [("00", language)]
        if name_local:
            _local("local merchant name", name_local, 25)
            local.append(("01", name_local))
        if city_local:
            _local("local city", city_local, 15)
            local.append(("02", city_local))
        objs.append(("64", local))
    # every value is bounded above, so the payload stays far under EMVCo's 512
    return with_crc(encode(objs))


def _check_fields(fields: dict) -> tuple[str | None, int | None]:
    """Formats of the top-level objects that are present; ``(currency, minor)``.

    Presence is not demanded beyond 00 and 63: published national schemes (Thai
    PromptPay among them) leave out 52, 59 and 60, and a reader should still show
    them."""
    if "01" in fields and fields["01"] not in ("11", "12"):
        raise EmvQrError(f"point of initiation {fields['01']!r} is neither 11 nor 12")
    if "52" in fields and not re.fullmatch(r"[0-9]{4}", fields["52"]):
        raise EmvQrError(f"merchant category code {fields['52']!r} is not four digits")
    if "58" in fields and not re.fullmatch(r"[A-Z]{2}", fields["58"]):
        raise EmvQrError(f"country {fields['58']!r} is not ISO 3166 alpha-2")
    alpha = exponent = None
    if "53" in fields:
        if not re.fullmatch(r"[0-9]{3}", fields["53"]):
            raise EmvQrError(f"currency {fields['53']!r} is not ISO 4217 numeric")
        alpha, exponent = _BY_NUMERIC.get(fields["53"], (None, None))
    minor = None
    if "54" in fields:
        text = fields["54"]
        if exponent is None:
            # a currency lanecore has no exponent for: check the decimal's shape only
            parse_amount(text, len(text.partition(".")[2]))
        else:
            minor = parse_amount(text, exponent)
    return alpha, minor


def decode_mpm(text: str) -> dict:
    """Everything a reader shows about a payload, never raising.

    ``{"ok": True, "crc_ok": True, "fields": {...}, "currency": "CNY" | None,
    "amount_minor": int | None}`` for a good payload; ``fields`` maps each ID to
    its value, with templates (26-51, 62 and its 50-99, 64, 80-99) as nested maps
    of sub-ID -> value, in payload order. ``amount_minor`` is tag 54 in minor units
    when the currency's exponent is known. A bad payload gives ``{"ok": False,
    "error": {"code", "message"}}``, plus ``crc_ok`` and ``fields`` when the objects
    could be read (a wrong CRC, or a malformed amount under a good CRC).
    """
    try:
        fields = parse(text, verify=False)
    except EmvQrError as exc:
        return {"ok": False, "error": {"code": exc.code, "message": exc.message}}
    out: dict = {"ok": False, "crc_ok": True, "fields": fields}
    try:
        check_crc(text)
    except EmvQrError as exc:
        out.update(crc_ok=False, error={"code": exc.code, "message": exc.message})
        return out
    try:
        currency, minor = _check_fields(fields)
    except EmvQrError as exc:
        out["error"] = {"code": exc.code, "message": exc.message}
        return out
    out.update(ok=True, currency=currency, amount_minor=minor)
    return out


def field_lines(fields: dict, indent: str = "") -> list[str]:
    """``fields`` of :func:`decode_mpm` as readable lines: ``"ID  value"``, a
    template's ID alone with its objects indented two spaces under it."""
    lines = []
    for tag, value in fields.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{tag}")
            lines += field_lines(value, indent + "  ")
        else:
            lines.append(f"{indent}{tag}  {value}")
    return lines


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

def qr_code(payload: str, *, border: int = 4, box_size: int = 10):
    """The ``qrcode.QRCode`` of ``payload``, made (UTF-8, error correction M),
    ``border`` light modules around, ``box_size`` pixels (or tenths of a mm in SVG)
    per module; ``.make_image()`` draws it with any of ``qrcode``'s image factories."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=border, box_size=box_size)
    # ASCII payloads may be split into numeric/alphanumeric/byte segments for a
    # smaller symbol. A payload with UTF-8 (template 64) goes in one byte segment:
    # OpenCV's reader (5.0) returns nothing for non-ASCII bytes mixed with other
    # segments, and a phone's wallet reader may share that weakness; one segment
    # costs a few versions and reads everywhere.
    qr.add_data(payload.encode("utf-8"), optimize=20 if payload.isascii() else 0)
    qr.make(fit=True)
    return qr


def qr_matrix(payload: str, *, border: int = 4) -> list[list[bool]]:
    """The QR symbol of ``payload`` (UTF-8, byte mode, error correction M) as rows
    of modules, True = dark, with ``border`` light modules around."""
    return [list(map(bool, row)) for row in qr_code(payload, border=border).get_matrix()]


def qr_png(payload: str, *, scale: int = 8, border: int = 4) -> bytes:
    """The QR of ``payload`` as a PNG file's bytes: 8-bit greyscale, ``scale``
    pixels per module, ``border`` light modules of quiet zone (4 is the standard's).

    The modules come from ``qrcode``; the PNG is written here with ``zlib`` so the
    command line needs no imaging library (``qrcode``'s own PNG output needs Pillow
    or pypng)."""
    if type(scale) is not int or scale < 1:
        raise EmvQrError(f"scale {scale!r} is not a positive number of pixels")
    rows = qr_matrix(payload, border=border)
    width = len(rows[0]) * scale
    raw = bytearray()
    for row in rows:
        # filter type 0 (none) then one byte per pixel: 0 dark, 255 light
        line = b"\x00" + b"".join((b"\x00" if dark else b"\xff") * scale for dark in row)
        raw += line * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return (len(data).to_bytes(4, "big") + body
                + (binascii.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + width.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))


def qr_svg(payload: str, *, border: int = 4) -> str:
    """The QR of ``payload`` as an SVG document (one path, 1 mm per module), drawn
    by ``qrcode``'s SVG image factory."""
    from qrcode.image.svg import SvgPathImage

    img = qr_code(payload, border=border).make_image(image_factory=SvgPathImage)
    return img.to_string(encoding="unicode")


def qr_text(payload: str, *, invert: bool = False, border: int = 2) -> str:
    """The QR of ``payload`` as terminal art, two module rows per line drawn with
    ``▀ ▄ █``; ``invert=True`` for a dark terminal background."""
    rows = qr_matrix(payload, border=border)
    if invert:
        rows = [[not m for m in row] for row in rows]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    glyph = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584",
             (True, True): "\u2588"}
    return "\n".join("".join(glyph[p] for p in zip(rows[i], rows[i + 1]))
                     for i in range(0, len(rows), 2)) + "\n"
