"""Pure-Python twin of the compiled barcode kernel (``_barcode.pyx``).

It gives the same answers as the compiled kernel for every input (the test suite
runs both on the same inputs and compares ``to_dict()``), and is what runs when
``LANECORE_PURE=1``. Keep the two files in step: same steps, same order, same
messages.
"""

from __future__ import annotations

import calendar
import time

from . import gs1data as D

IMPLEMENTATION = "python"

_GS = "\x1d"
# What str.strip() removes, restricted to ASCII (non-ASCII is rejected before).
_STRIP = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_DIGITS = frozenset(D.CSET_N)
_CHARSETS = {k: frozenset(v) for k, v in D.CHARSETS.items()}
_POW10 = tuple(10 ** i for i in range(19))

_regions: dict[str, D.RcnRegion] = dict(D.BUILTIN_REGIONS)


def register_region(region: D.RcnRegion) -> None:
    """Add or replace a region's in-store code rules (a store-defined table)."""
    if not isinstance(region, D.RcnRegion):
        raise TypeError("register_region takes a gs1data.RcnRegion")
    _regions[region.code] = region


def regions() -> dict[str, D.RcnRegion]:
    """The regions whose in-store codes this kernel decodes, by ISO code."""
    return dict(_regions)


class ScanError(Exception):
    """Raised inside the kernel; never escapes ``parse_scan``."""

    def __init__(self, code: str, **fields):
        super().__init__(code)
        self.code = code
        self.fields = fields


class ScanResult:
    """The reading of one scan. ``to_dict()`` is the documented JSON row."""

    __slots__ = ("input", "ok", "kind", "gtin_key", "lookup_key", "price_minor",
                 "weight_g", "count", "ais", "error_code", "error_message",
                 "symbology", "region", "currency", "addon")

    def __init__(self, code):
        self.input = code
        self.ok = False
        self.kind = None
        self.gtin_key = None
        self.lookup_key = None
        self.price_minor = None
        self.weight_g = None
        self.count = None
        self.ais = None
        self.error_code = None
        self.error_message = None
        self.symbology = None
        self.region = None
        self.currency = None
        self.addon = None

    @property
    def gtin(self):
        """The GTIN as 14 digits, or None."""
        return None if self.gtin_key is None else "%014d" % self.gtin_key

    @property
    def lookup_gtin(self):
        """The catalogue key as 14 digits (variable part of an in-store code zeroed)."""
        return None if self.lookup_key is None else "%014d" % self.lookup_key

    @property
    def error(self):
        if self.error_code is None:
            return None
        return {"code": self.error_code, "message": self.error_message}

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "ok": self.ok,
            "kind": self.kind,
            "gtin": self.gtin,
            "lookup_gtin": self.lookup_gtin,
            "price_minor": self.price_minor,
            "weight_g": self.weight_g,
            "count": self.count,
            "ais": None if self.ais is None else dict(self.ais),
            "error": self.error,
        }

    def __repr__(self) -> str:
        if self.ok:
            return f"<ScanResult {self.kind} {self.lookup_gtin or self.input!r}>"
        return f"<ScanResult error {self.error_code}: {self.error_message}>"


# ----------------------------------------------------------------------------------
# Check digits
# ----------------------------------------------------------------------------------

def gs1_check_digit(digits: str) -> int:
    """GS1 mod-10 check digit of ``digits`` (the digits before the check digit)."""
    total = 0
    weight = 3
    for ch in reversed(digits):
        total += (ord(ch) - 48) * weight
        weight = 4 - weight
    return (10 - total % 10) % 10


def price_check_digit(digits: str) -> int:
    """GS1 price/weight check digit of a 4- or 5-digit value (GenSpecs §7.9.3-4)."""
    d = [ord(c) - 48 for c in digits]
    if len(d) == 4:
        s = (D.WEIGHT_2_MINUS[d[0]] + D.WEIGHT_2_MINUS[d[1]] + D.WEIGHT_3[d[2]]
             + D.WEIGHT_5_MINUS[d[3]])
        return (s * 3) % 10
    s = (D.WEIGHT_5_PLUS[d[0]] + D.WEIGHT_2_MINUS[d[1]] + D.WEIGHT_5_MINUS[d[2]]
         + D.WEIGHT_5_PLUS[d[3]] + D.WEIGHT_2_MINUS[d[4]])
    return D.WEIGHT_5_MINUS_INVERSE[(10 - s % 10) % 10]


def upce_to_upca(ns: str, six: str) -> str:
    """Expand UPC-E (number system + 6 digits) to the 11 digits of UPC-A before its check."""
    d7 = six[5]
    if d7 in "012":
        return ns + six[0:2] + d7 + "0000" + six[2:5]
    if d7 == "3":
        return ns + six[0:3] + "00000" + six[3:5]
    if d7 == "4":
        return ns + six[0:4] + "00000" + six[4]
    return ns + six[0:5] + "0000" + d7


# ----------------------------------------------------------------------------------
# Dates (GenSpecs §7.12)
# ----------------------------------------------------------------------------------

def _full_year(yy: int) -> int:
    now = time.gmtime().tm_year
    century = now - now % 100
    diff = yy - now % 100
    if 51 <= diff <= 99:
        return century - 100 + yy
    if -99 <= diff <= -50:
        return century + 100 + yy
    return century + yy


def _check_date(ai: str, v: str, start: int, ylen: int, with_time: bool,
                allow_9999: bool) -> None:
    """Validate a date at v[start:] (YYMMDD, or YYYYMMDD when ylen is 4) and, if asked,
    HH MM SS after it."""
    if ylen == 4:
        year = int(v[start:start + 4])
    else:
        year = _full_year(int(v[start:start + 2]))
    mm = int(v[start + ylen:start + ylen + 2])
    dd = int(v[start + ylen + 2:start + ylen + 4])
    if not 1 <= mm <= 12:
        raise ScanError("BAD_DATE", ai=ai, value=v, why=f"month {mm:02d} does not exist")
    last = calendar.monthrange(year, mm)[1]
    if dd > last:
        raise ScanError("BAD_DATE", ai=ai, value=v,
                        why=f"{year:04d}-{mm:02d} has no day {dd:02d}")
    if not with_time:
        return
    rest = v[start + ylen + 4:]
    if not rest:
        return
    if len(rest) % 2:
        raise ScanError("BAD_DATE", ai=ai, value=v,
                        why=f"time {rest} is not whole pairs of digits")
    hh = int(rest[0:2])
    mi = int(rest[2:4]) if len(rest) > 2 else 0
    ss = int(rest[4:6]) if len(rest) > 4 else 0
    if allow_9999 and hh == 99 and mi == 99:
        return  # "9999": the time is not known
    if hh > 23 or mi > 59 or ss > 59:
        raise ScanError("BAD_DATE", ai=ai, value=v,
                        why=f"time {rest} does not exist")


# ----------------------------------------------------------------------------------
# GTINs and in-store codes
# ----------------------------------------------------------------------------------

def _require_digits(s: str, what: str, offset: int) -> None:
    for i, ch in enumerate(s):
        if ch not in _DIGITS:
            raise ScanError("NON_DIGIT", what=what, char=ch, pos=offset + i + 1)


def _check(digits: str, what: str) -> None:
    expected = gs1_check_digit(digits[:-1])
    got = ord(digits[-1]) - 48
    if got != expected:
        raise ScanError("BAD_CHECK_DIGIT", what=what, digits=digits, got=got,
                        expected=expected)


def _money(value: int, decimals: int, exponent: int, what: str, currency: str):
    if decimals <= exponent:
        return value * _POW10[exponent - decimals]
    div = _POW10[decimals - exponent]
    if value % div:
        raise ScanError("INEXACT_AMOUNT", what=what, value=value, decimals=decimals,
                        currency=currency, exponent=exponent)
    return value // div


def _apply_gtin(r: ScanResult, d14: str, region) -> None:
    """Set gtin, kind and lookup key from a checked GTIN-14; decode in-store codes."""
    key = int(d14)
    r.gtin_key = key
    r.lookup_key = key
    r.kind = "gtin"
    if d14[0] != "0":
        return  # GTIN-14 with an indicator digit: never an in-store code
    if d14.startswith("000000"):
        if d14[6] in D.COMPANY_RCN_PREFIX8:
            r.kind = "rcn"  # RCN-8, company internal: looked up whole
        return
    p2 = d14[1:3]
    if p2 == D.COMPANY_RCN_PREFIX13:
        r.kind = "rcn"
        return
    if p2 not in D.GEO_RCN_PREFIXES:
        return
    r.kind = "rcn"
    if region is None:
        return
    rule = region.rules.get(p2)
    if rule is None:
        return
    d13 = d14[1:]
    vs = rule.value_start
    vdigits = d13[vs:vs + rule.value_len]
    if rule.check_pos >= 0:
        got = ord(d13[rule.check_pos]) - 48
        expected = price_check_digit(vdigits)
        if got != expected:
            raise ScanError("BAD_PRICE_CHECK_DIGIT", digits=d13, measure=rule.measure,
                            value=vdigits, got=got, expected=expected)
    value = int(vdigits)
    if rule.measure == "price":
        r.price_minor = _money(value, rule.decimals, region.exponent, "price",
                               region.currency)
        r.currency = region.currency
    elif rule.measure == "weight":
        r.weight_g = _grams_from_kg(value, rule.decimals)
    else:
        r.count = value
    # The catalogue key: the variable part (and its check digit) zeroed, GTIN check
    # digit recomputed.
    zeroed = d13[:vs] + "0" * rule.value_len
    if rule.check_pos >= 0:
        zeroed = zeroed[:rule.check_pos] + "0" + zeroed[rule.check_pos + 1:]
    payload = "0" + zeroed
    r.lookup_key = int(payload + str(gs1_check_digit(payload)))


def _grams_from_kg(value: int, decimals: int) -> float:
    if decimals <= 3:
        return float(value * _POW10[3 - decimals])
    return value / _POW10[decimals - 3]


def _gtin_of(r: ScanResult, digits: str, what: str, region) -> None:
    _check(digits, what)
    _apply_gtin(r, digits.rjust(14, "0"), region)


def _upce(r: ScanResult, digits: str, region, offset: int) -> None:
    """UPC-E as 6 (implicit number system 0), 7 or 8 (with check digit) digits."""
    n = len(digits)
    if n == 6:
        ns, six, check = "0", digits, None
    elif n == 7:
        ns, six, check = digits[0], digits[1:], None
    else:
        ns, six, check = digits[0], digits[1:7], digits[7]
    if ns not in "01":
        raise ScanError("BAD_NUMBER_SYSTEM", got=ns)
    upca = upce_to_upca(ns, six)
    expected = gs1_check_digit(upca)
    if check is not None and ord(check) - 48 != expected:
        raise ScanError("BAD_CHECK_DIGIT", what="UPC-E", digits=digits,
                        got=ord(check) - 48, expected=expected)
    _apply_gtin(r, "00" + upca + str(expected), region)


def _ean8_or_upce(r: ScanResult, digits: str, region) -> None:
    """Eight digits with no symbology: EAN-8 if its check digit holds, else UPC-E."""
    if gs1_check_digit(digits[:7]) == ord(digits[7]) - 48:
        _apply_gtin(r, "000000" + digits, region)
        return
    if digits[0] in "01":
        upca = upce_to_upca(digits[0], digits[1:7])
        if gs1_check_digit(upca) == ord(digits[7]) - 48:
            _apply_gtin(r, "00" + upca + digits[7], region)
            return
    _check(digits, "GTIN-8")  # raises with the EAN-8 reading's expectation


_GTIN_NAMES = {8: "GTIN-8", 12: "GTIN-12", 13: "GTIN-13", 14: "GTIN-14"}


def _auto_digits(r: ScanResult, s: str, region, offset: int) -> None:
    n = len(s)
    if n == 8:
        _ean8_or_upce(r, s, region)
    elif n in (12, 13, 14):
        _gtin_of(r, s, _GTIN_NAMES[n], region)
    elif n == 18:
        _check(s, "SSCC")
        r.kind = "sscc"
    elif n < 16:
        # Shorter digit strings are keyed or misread codes, not element strings: a
        # GS1 element string at a till starts with (01) and a GTIN-14.
        raise ScanError("BAD_LENGTH", what="a GTIN", length=n)
    else:
        _parse_gs1(r, s, region, offset)


# ----------------------------------------------------------------------------------
# GS1 element strings
# ----------------------------------------------------------------------------------

def _check_component(ai: str, value: str, comp_value: str, cset: str) -> None:
    allowed = _CHARSETS[cset]
    for ch in comp_value:
        if ch not in allowed:
            raise ScanError("BAD_AI_VALUE", ai=ai, value=value,
                            why=f"{ch!r} is not allowed; expected {D.CHARSET_NAMES[cset]}")


def _validate(ai: str, spec: D.AISpec, value: str) -> list[str]:
    """Split ``value`` into the spec's components and check each; return them."""
    n = len(value)
    if n < spec.min_len or n > spec.max_len:
        if spec.min_len == spec.max_len:
            need = f"{spec.max_len}"
        else:
            need = f"{spec.min_len} to {spec.max_len}"
        raise ScanError("BAD_AI_VALUE", ai=ai, value=value,
                        why=f"has {n} characters; needs {need}")
    parts = []
    pos = 0
    last = len(spec.components) - 1
    for i, (cset, lo, hi, optional) in enumerate(spec.components):
        left = n - pos
        if optional and left == 0:
            break
        take = left if i == last else lo
        if take < lo or take > hi:
            raise ScanError("BAD_AI_VALUE", ai=ai, value=value,
                            why=f"part {i + 1} has {take} characters; needs {lo} to {hi}")
        part = value[pos:pos + take]
        _check_component(ai, value, part, cset)
        parts.append(part)
        pos += take
    if pos != n:
        raise ScanError("BAD_AI_VALUE", ai=ai, value=value,
                        why=f"has {n} characters; needs {spec.min_len} to {spec.max_len}")
    if spec.csum:
        keyed = parts[spec.csum_part]
        expected = gs1_check_digit(keyed[:-1])
        got = ord(keyed[-1]) - 48
        if got != expected:
            raise ScanError("BAD_CHECK_DIGIT", what=f"({ai})", digits=keyed, got=got,
                            expected=expected)
    if spec.yesno and value not in ("0", "1"):
        raise ScanError("BAD_AI_VALUE", ai=ai, value=value, why="must be 0 or 1")
    if spec.n3list and n % 3:
        raise ScanError("BAD_AI_VALUE", ai=ai, value=value,
                        why="must be a list of 3-digit country codes")
    if spec.date == "range":
        # A date range (7007) holds a second date, not a time, after the first.
        _check_date(ai, value, 0, 2, False, False)
        if len(parts) > 1:
            _check_date(ai, value, 6, 2, False, False)
    elif spec.date == "yyyymmdd":
        _check_date(ai, value, 0, 4, True, False)
    elif spec.date is not None:
        _check_date(ai, value, 0, 2, True, spec.date == "yymmdd9999")
    return parts


def _starts_with_ai(s: str) -> bool:
    """Whether ``s`` opens with a GS1 AI (else a mixed string is a mistyped GTIN)."""
    ailen = D.AI_LENGTH_BY_PREFIX.get(s[:2])
    return ailen is not None and s[:ailen] in D.AI_TABLE


def _parse_gs1(r: ScanResult, s: str, region, offset: int) -> None:
    n = len(s)
    pos = 0
    ais: dict[str, str] = {}
    decs: list[tuple[str, list[str]]] = []
    while pos < n:
        if s[pos] == _GS:
            pos += 1
            continue
        if len(ais) >= D.MAX_ELEMENTS:
            raise ScanError("BAD_AI_VALUE", ai=s[pos:pos + 2], value=s[pos:],
                            why=f"more than {D.MAX_ELEMENTS} element strings")
        if n - pos < 2:
            if s[pos] in _DIGITS:
                raise ScanError("TRUNCATED_AI", ai=s[pos:], pos=offset + pos + 1)
            raise ScanError("UNKNOWN_AI", ai=s[pos:pos + 2], pos=offset + pos + 1)
        p2 = s[pos:pos + 2]
        ailen = D.AI_LENGTH_BY_PREFIX.get(p2)
        if ailen is None:
            raise ScanError("UNKNOWN_AI", ai=p2, pos=offset + pos + 1)
        ai = s[pos:pos + ailen]
        if len(ai) < ailen:
            if all(c in _DIGITS for c in ai):
                raise ScanError("TRUNCATED_AI", ai=ai, pos=offset + pos + 1)
            raise ScanError("UNKNOWN_AI", ai=ai, pos=offset + pos + 1)
        spec = D.AI_TABLE.get(ai)
        if spec is None:
            raise ScanError("UNKNOWN_AI", ai=ai, pos=offset + pos + 1)
        start = pos + ailen
        if spec.fixed_len is not None:
            end = start + spec.fixed_len
            gs = s.find(_GS, start, end)
            if gs != -1:
                end = gs
            elif end > n:
                raise ScanError("TRUNCATED_AI", ai=ai, pos=offset + pos + 1)
        else:
            gs = s.find(_GS, start)
            end = n if gs == -1 else gs
            if end == start and end == n:
                raise ScanError("TRUNCATED_AI", ai=ai, pos=offset + pos + 1)
        value = s[start:end]
        parts = _validate(ai, spec, value)
        prev = ais.get(ai)
        if prev is not None:
            if prev != value:
                raise ScanError("DUPLICATE_AI", ai=ai, first=prev, second=value)
        else:
            ais[ai] = value
            if spec.dec:
                decs.append((ai, parts))
        pos = end
    r.kind = "gs1"
    r.ais = ais
    gtin = ais.get(D.AI_GTIN)
    if gtin is not None:
        _apply_gtin(r, gtin, region)
        r.kind = "gs1"
    # Counts, weights and prices carried by AIs override those of an in-store GTIN.
    for ai in D.AI_COUNT:
        if ai in ais:
            r.count = int(ais[ai])
            break
    kg = lb = local = foreign = None
    for ai, parts in decs:
        head = ai[:3]
        if head == D.AI_NET_WEIGHT_KG and kg is None:
            kg = (ai, parts)
        elif head == D.AI_NET_WEIGHT_LB and lb is None:
            lb = (ai, parts)
        elif head == D.AI_PRICE_LOCAL and local is None:
            local = (ai, parts)
        elif head == D.AI_PRICE_CURRENCY and foreign is None:
            foreign = (ai, parts)
    if kg is not None:
        r.weight_g = _grams_from_kg(int(kg[1][-1]), ord(kg[0][3]) - 48)
    elif lb is not None:
        r.weight_g = (int(lb[1][-1]) / _POW10[ord(lb[0][3]) - 48]) * D.GRAMS_PER_POUND
    # A price is given in minor units of the store's currency, which only a region
    # names: without one, (392n) and (393n) stay in ``ais`` alone.
    if local is not None:
        if region is not None:
            ai, parts = local
            r.price_minor = _money(int(parts[-1]), ord(ai[3]) - 48, region.exponent,
                                   f"({ai})", region.currency)
            r.currency = region.currency
    elif foreign is not None:
        ai, parts = foreign
        if region is not None and int(parts[0]) == region.currency_numeric:
            r.price_minor = _money(int(parts[-1]), ord(ai[3]) - 48, region.exponent,
                                   f"({ai})", region.currency)
            r.currency = region.currency


# ----------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------

def _read(r: ScanResult, code: str, region) -> None:
    n = len(code)
    if n > D.MAX_INPUT_LEN:
        raise ScanError("TOO_LONG", length=n, limit=D.MAX_INPUT_LEN)
    for i, ch in enumerate(code):
        o = ord(ch)
        if o == 0:
            raise ScanError("NUL_BYTE", pos=i + 1)
        if o > 127:
            raise ScanError("NON_ASCII", pos=i + 1)
    lead = len(code) - len(code.lstrip(_STRIP))
    s = code.strip(_STRIP)
    if not s:
        raise ScanError("EMPTY")
    for i, ch in enumerate(s):
        o = ord(ch)
        if (o < 32 and o != 0x1D) or o == 127:
            raise ScanError("BAD_CHARACTER", char=o, pos=lead + i + 1)

    how = "auto"
    if s[0] == "]":
        sym = s[:3]
        how = D.SYMBOLOGY_READS.get(sym) if len(sym) == 3 else None
        if how is None:
            raise ScanError("UNKNOWN_SYMBOLOGY", symbology=sym)
        r.symbology = sym
        data = s[3:]
    elif s.startswith("S08"):
        label = s[3:5]
        if label not in D.MAGELLAN_READS or len(label) != 2:
            label = s[3:4]
        how = D.MAGELLAN_READS.get(label) if label else None
        if how is None:
            raise ScanError("UNKNOWN_SYMBOLOGY", symbology=s[:5])
        r.symbology = "S08" + label
        data = s[3 + len(label):]
    else:
        data = s
    offset = lead + (len(s) - len(data))
    if not data:
        raise ScanError("EMPTY")

    if how == "auto":
        if all(c in _DIGITS for c in data):
            _auto_digits(r, data, region, offset)
        elif _starts_with_ai(data):
            _parse_gs1(r, data, region, offset)
        else:
            i = next(i for i, c in enumerate(data) if c not in _DIGITS)
            raise ScanError("NON_DIGIT", what="a barcode without symbology identifier",
                            char=data[i], pos=offset + i + 1)
    elif how == "gs1":
        _parse_gs1(r, data, region, offset)
    elif how == "text":
        r.kind = "text"
    else:
        _require_digits(data, _SYMBOLOGY_NAMES[how], offset)
        n = len(data)
        if how == "ean":
            if n == 13 or n == 12:
                _gtin_of(r, data, _GTIN_NAMES[n], region)
            elif 6 <= n <= 8:
                _upce(r, data, region, offset)
            else:
                raise ScanError("BAD_LENGTH", what="EAN-13/UPC-A/UPC-E", length=n)
        elif how == "ean8":
            if n != 8:
                raise ScanError("BAD_LENGTH", what="EAN-8", length=n)
            _gtin_of(r, data, "GTIN-8", region)
        elif how == "ean13":
            if n != 13:
                raise ScanError("BAD_LENGTH", what="EAN-13", length=n)
            _gtin_of(r, data, "GTIN-13", region)
        elif how == "upca":
            if n != 12:
                raise ScanError("BAD_LENGTH", what="UPC-A", length=n)
            _gtin_of(r, data, "GTIN-12", region)
        elif how == "upce":
            if not 6 <= n <= 8:
                raise ScanError("BAD_LENGTH", what="UPC-E", length=n)
            _upce(r, data, region, offset)
        elif how == "itf":
            if n != 14:
                raise ScanError("BAD_LENGTH", what="ITF-14", length=n)
            _gtin_of(r, data, "GTIN-14", region)
        else:  # ean_addon
            main = _ADDON_MAIN.get(n)
            if main is None:
                raise ScanError("BAD_LENGTH", what="EAN/UPC with add-on", length=n)
            r.addon = data[main:]
            head = data[:main]
            if main == 8:
                _ean8_or_upce(r, head, region)
            else:
                _gtin_of(r, head, _GTIN_NAMES[main], region)


_SYMBOLOGY_NAMES = {
    "ean": "EAN/UPC", "ean8": "EAN-8", "ean13": "EAN-13", "upca": "UPC-A",
    "upce": "UPC-E", "itf": "ITF-14", "ean_addon": "EAN/UPC with add-on",
}
#: Length with an add-on -> length of the main symbol.
_ADDON_MAIN = {15: 13, 18: 13, 14: 12, 17: 12, 10: 8, 13: 8}


def _resolve_region(region):
    """Return (ok, region_code, RcnRegion or None)."""
    if region is None:
        return True, None, None
    if not (isinstance(region, str) and len(region) == 2 and region.isascii()
            and region.isalpha()):
        return False, region, None
    code = region.upper()
    return True, code, _regions.get(code)


def parse_scan(code, region=None) -> ScanResult:
    """Parse one scan.

    ``code`` is what the scanner sent (symbology identifier or Magellan prefix
    included); ``region`` an ISO 3166 alpha-2 code whose rules decode in-store
    codes, or None. Never raises: a bad scan gives ``ok == False`` with a stable
    ``error_code``.
    """
    r = ScanResult(code if isinstance(code, str) else None)
    try:
        good, rcode, rg = _resolve_region(region)
        if not good:
            raise ScanError("UNKNOWN_REGION", region=region)
        r.region = rcode
        if not isinstance(code, str):
            raise ScanError("NOT_TEXT", what=type(code).__name__)
        _read(r, code, rg)
        r.ok = True
    except ScanError as e:
        _fail(r, e.code, e.fields)
    return r


def _fail(r: ScanResult, code: str, fields: dict) -> None:
    r.ok = False
    r.kind = None
    r.gtin_key = None
    r.lookup_key = None
    r.price_minor = None
    r.weight_g = None
    r.count = None
    r.ais = None
    r.currency = None
    r.error_code = code
    r.error_message = D.MESSAGES[code].format(**fields)


def parse_many(codes, region=None) -> list:
    """Parse a sequence of scans with one region."""
    return [parse_scan(c, region) for c in codes]
