# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, freethreading_compatible=False
"""Compiled barcode kernel: validation, normalisation and in-store code decoding.

The pure-Python twin ``_barcode_py.py`` gives the same answers; the two files follow
the same steps in the same order and format their messages from the same templates
(``gs1data.MESSAGES``). The speed here comes from reading the ASCII buffer of the
``str`` directly, keeping numbers as C integers until a property asks for a string,
and never raising on the hot path: inner functions return 0 (fine) or 1 (the error
is already written into the result).
"""

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy
from libc.time cimport time_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free
cimport cython

from . import gs1data as D

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    int PyUnicode_KIND(object o)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index)
    object PyUnicode_FromStringAndSize(const char* u, Py_ssize_t size)

cdef extern from "time.h" nogil:
    struct tm:
        int tm_year
    tm* gmtime_r(const time_t* timep, tm* result)
    time_t time(time_t* t)

IMPLEMENTATION = "cython"

cdef enum:
    MAX_SPECS = 1024
    MAX_COMPS = 4
    MAX_REGIONS = 64
    MAX_ELEMENTS = 64

cdef enum:
    K_NONE = 0
    K_GTIN = 1
    K_RCN = 2
    K_GS1 = 3
    K_SSCC = 4
    K_TEXT = 5

cdef enum:
    R_AUTO = 0
    R_EAN = 1
    R_EAN8 = 2
    R_EAN_ADDON = 3
    R_ITF = 4
    R_GS1 = 5
    R_TEXT = 6
    R_UPCA = 7
    R_UPCE = 8
    R_EAN13 = 9

cdef int64_t[19] POW10
if D.MAX_ELEMENTS != MAX_ELEMENTS:
    raise RuntimeError("gs1data.MAX_ELEMENTS and the compiled kernel disagree")

cdef int _i
POW10[0] = 1
for _i in range(1, 19):
    POW10[_i] = POW10[_i - 1] * 10

cdef tuple _KINDS = D.KINDS
cdef dict _MESSAGES = D.MESSAGES
cdef int MAX_INPUT_LEN = D.MAX_INPUT_LEN

# ----------------------------------------------------------------------------------
# Tables built from gs1data at import
# ----------------------------------------------------------------------------------

cdef struct Comp:
    int cset
    int lo
    int hi
    bint optional

cdef struct Spec:
    int ncomp
    Comp comps[MAX_COMPS]
    bint csum
    int csum_part
    int date         # 0 none, 1 yymmdd, 2 yymmdd9999, 3 range, 4 yyyymmdd
    bint dec
    bint yesno
    bint n3list
    int fixed_len    # -1 when variable
    int min_len
    int max_len
    int family       # 0 other, 1 net kg, 2 net lb, 3 local price, 4 price+currency

cdef enum:
    DATE_NONE = 0
    DATE_YYMMDD = 1
    DATE_YYMMDD9999 = 2
    DATE_RANGE = 3
    DATE_YYYYMMDD = 4

cdef dict _DATE_CODES = {None: DATE_NONE, "yymmdd": DATE_YYMMDD,
                         "yymmdd9999": DATE_YYMMDD9999, "range": DATE_RANGE,
                         "yyyymmdd": DATE_YYYYMMDD}

cdef Spec _specs[MAX_SPECS]
cdef int _nspecs = 0
cdef short _ai2[100]
cdef short _ai3[1000]
cdef short _ai4[10000]
cdef char _ailen[100]
cdef unsigned char _cset[8][128]
cdef list _ai_names = []          # spec index -> AI str (dict keys, interned)
cdef list _cset_names = []

cdef void _build_tables() except *:
    global _nspecs
    cdef int i, j, c
    cdef Spec* sp
    for i in range(100):
        _ai2[i] = -1
        _ailen[i] = 0
    for i in range(1000):
        _ai3[i] = -1
    for i in range(10000):
        _ai4[i] = -1
    if len(D.CHARSET_IDS) > 8:
        raise RuntimeError("more character sets than the compiled table holds")
    for i in range(8):
        for j in range(128):
            _cset[i][j] = 0
    for name, cid in D.CHARSET_IDS.items():
        for ch in D.CHARSETS[name]:
            _cset[cid][ord(ch)] = 1
    for name in sorted(D.CHARSET_IDS, key=D.CHARSET_IDS.get):
        _cset_names.append(name)
    for p2, ln in D.AI_LENGTH_BY_PREFIX.items():
        _ailen[int(p2)] = ln
    for ai, spec in D.AI_TABLE.items():
        if _nspecs >= MAX_SPECS:
            raise RuntimeError("AI table larger than MAX_SPECS")
        sp = &_specs[_nspecs]
        sp.ncomp = len(spec.components)
        for j, (cset, lo, hi, opt) in enumerate(spec.components):
            sp.comps[j].cset = D.CHARSET_IDS[cset]
            sp.comps[j].lo = lo
            sp.comps[j].hi = hi
            sp.comps[j].optional = opt
        sp.csum = spec.csum
        sp.csum_part = spec.csum_part
        sp.date = _DATE_CODES[spec.date]
        sp.dec = spec.dec
        sp.yesno = spec.yesno
        sp.n3list = spec.n3list
        sp.fixed_len = -1 if spec.fixed_len is None else spec.fixed_len
        sp.min_len = spec.min_len
        sp.max_len = spec.max_len
        head = ai[:3]
        if head == D.AI_NET_WEIGHT_KG:
            sp.family = 1
        elif head == D.AI_NET_WEIGHT_LB:
            sp.family = 2
        elif head == D.AI_PRICE_LOCAL:
            sp.family = 3
        elif head == D.AI_PRICE_CURRENCY:
            sp.family = 4
        else:
            sp.family = 0
        if len(ai) == 2:
            _ai2[int(ai)] = _nspecs
        elif len(ai) == 3:
            _ai3[int(ai)] = _nspecs
        else:
            _ai4[int(ai)] = _nspecs
        _ai_names.append(ai)
        _nspecs += 1

_build_tables()

cdef int _SPEC_01 = _ai2[1]
cdef int _SPEC_30 = _ai2[30]
cdef int _SPEC_37 = _ai2[37]

cdef int[10] W2M
cdef int[10] W3
cdef int[10] W5P
cdef int[10] W5M
cdef int[10] W5MI
for _i in range(10):
    W2M[_i] = D.WEIGHT_2_MINUS[_i]
    W3[_i] = D.WEIGHT_3[_i]
    W5P[_i] = D.WEIGHT_5_PLUS[_i]
    W5M[_i] = D.WEIGHT_5_MINUS[_i]
    W5MI[_i] = D.WEIGHT_5_MINUS_INVERSE[_i]

cdef dict _SYMBOLOGY_READS = {
    "ean": R_EAN, "ean8": R_EAN8, "ean_addon": R_EAN_ADDON, "itf": R_ITF,
    "gs1": R_GS1, "text": R_TEXT, "upca": R_UPCA, "upce": R_UPCE, "ean13": R_EAN13,
}
cdef dict _SYMBOLOGY_NAMES = {
    R_EAN: "EAN/UPC", R_EAN8: "EAN-8", R_EAN13: "EAN-13", R_UPCA: "UPC-A",
    R_UPCE: "UPC-E", R_ITF: "ITF-14", R_EAN_ADDON: "EAN/UPC with add-on",
}
# Symbology identifiers and Magellan labels, looked up by their characters without
# making a str: reading code per (char, char) and the interned name to report.
cdef signed char _aim_how[128][128]
cdef signed char _mag_how[128][128]     # second char 0 for one-letter labels
cdef list _aim_names = [None] * (128 * 128)   # c1 * 128 + c2 -> interned name
cdef list _mag_names = [None] * (128 * 128)


cdef void _build_symbologies() except *:
    cdef int i, j
    for i in range(128):
        for j in range(128):
            _aim_how[i][j] = -1
            _mag_how[i][j] = -1
    for ident, how in D.SYMBOLOGY_READS.items():
        _aim_how[ord(ident[1])][ord(ident[2])] = _SYMBOLOGY_READS[how]
        _aim_names[ord(ident[1]) * 128 + ord(ident[2])] = ident
    for label, how in D.MAGELLAN_READS.items():
        j = ord(label[1]) if len(label) == 2 else 0
        _mag_how[ord(label[0])][j] = _SYMBOLOGY_READS[how]
        _mag_names[ord(label[0]) * 128 + j] = "S08" + label

_build_symbologies()

# ----------------------------------------------------------------------------------
# Regions
# ----------------------------------------------------------------------------------

cdef struct Rule:
    int measure      # 0 none, 1 price, 2 weight, 3 count
    int value_start
    int value_len
    int check_pos
    int decimals

cdef struct Region:
    Rule rules[100]
    int exponent
    int currency_numeric

cdef Region _regions[MAX_REGIONS]
cdef int _nregions = 0
cdef dict _region_index = {}     # ISO code -> index into _regions
cdef list _region_codes = []     # index -> ISO code (str)
cdef list _region_currency = []  # index -> ISO 4217 alpha code
cdef dict _region_objects = {}   # ISO code -> gs1data.RcnRegion


# The last region argument seen by parse_scan and what it resolved to.
cdef object _last_region = None
cdef int _last_ridx = -1
cdef object _last_rcode = None


def register_region(region):
    """Add or replace a region's in-store code rules (a store-defined table)."""
    global _nregions
    if not isinstance(region, D.RcnRegion):
        raise TypeError("register_region takes a gs1data.RcnRegion")
    cdef int idx
    cdef int p
    code = region.code
    if code in _region_index:
        idx = _region_index[code]
    else:
        if _nregions >= MAX_REGIONS:
            raise ValueError(f"at most {MAX_REGIONS} regions")
        idx = _nregions
        _nregions += 1
        _region_codes.append(code)
        _region_currency.append(region.currency)
    cdef Region* rg = &_regions[idx]
    for p in range(100):
        rg.rules[p].measure = 0
    rg.exponent = region.exponent
    rg.currency_numeric = region.currency_numeric
    for prefix, rule in region.rules.items():
        p = int(prefix)
        rg.rules[p].measure = D.MEASURES.index(rule.measure) + 1
        rg.rules[p].value_start = rule.value_start
        rg.rules[p].value_len = rule.value_len
        rg.rules[p].check_pos = rule.check_pos
        rg.rules[p].decimals = rule.decimals
    _region_currency[idx] = region.currency
    _region_index[code] = idx
    _region_objects[code] = region
    _forget_region_cache()


cdef void _forget_region_cache():
    global _last_region, _last_ridx, _last_rcode
    _last_region = None
    _last_ridx = -1
    _last_rcode = None


def regions():
    """The regions whose in-store codes this kernel decodes, by ISO code."""
    return dict(_region_objects)


for _r in D.BUILTIN_REGIONS.values():
    register_region(_r)

# ----------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------

cdef inline str _fmt14(int64_t v):
    cdef char buf[14]
    cdef int i
    for i in range(13, -1, -1):
        buf[i] = <char>(48 + v % 10)
        v //= 10
    return PyUnicode_FromStringAndSize(buf, 14)


cdef struct Elem:
    int spec
    Py_ssize_t start
    Py_ssize_t end


# A result holds only strings, numbers and a dict of strings: it can never be part of
# a reference cycle, so the cyclic GC need not track it (a batch of 100k results
# would otherwise make every collection walk them all).
@cython.freelist(64)
@cython.no_gc
cdef class ScanResult:
    """The reading of one scan. ``to_dict()`` is the documented JSON row."""

    cdef public object input
    cdef public bint ok
    cdef int _kind
    cdef int64_t _gtin          # -1: none
    cdef int64_t _lookup        # -1: none
    cdef int64_t _price
    cdef bint _has_price
    cdef double _weight
    cdef bint _has_weight
    cdef int64_t _count
    cdef bint _has_count
    cdef Elem* _elems           # element strings of a GS1 message (offsets into input)
    cdef int _nel
    cdef object _ais            # the dict, built on first use
    cdef public object error_code
    cdef public object error_message
    cdef public object symbology
    cdef public object region
    cdef public object currency
    cdef public object addon

    def __cinit__(self):
        self._gtin = -1
        self._lookup = -1
        self._elems = NULL
        self._nel = 0

    def __dealloc__(self):
        if self._elems != NULL:
            PyMem_Free(self._elems)
            self._elems = NULL

    @property
    def ais(self):
        """AI -> value string for a GS1 message, else None."""
        cdef int i
        cdef const char* buf
        if self._ais is None and self._nel > 0:
            buf = <const char*>PyUnicode_DATA(self.input)
            d = {}
            for i in range(self._nel):
                d[_ai_names[self._elems[i].spec]] = PyUnicode_FromStringAndSize(
                    buf + self._elems[i].start, self._elems[i].end - self._elems[i].start)
            self._ais = d
        return self._ais

    @property
    def kind(self):
        return _KINDS[self._kind]

    @property
    def gtin_key(self):
        """The GTIN as an integer (the catalogue's key type), or None."""
        return None if self._gtin < 0 else self._gtin

    @property
    def lookup_key(self):
        """The catalogue key as an integer, or None."""
        return None if self._lookup < 0 else self._lookup

    @property
    def gtin(self):
        """The GTIN as 14 digits, or None."""
        return None if self._gtin < 0 else _fmt14(self._gtin)

    @property
    def lookup_gtin(self):
        """The catalogue key as 14 digits (variable part of an in-store code zeroed)."""
        return None if self._lookup < 0 else _fmt14(self._lookup)

    @property
    def price_minor(self):
        return self._price if self._has_price else None

    @property
    def weight_g(self):
        return self._weight if self._has_weight else None

    @property
    def count(self):
        return self._count if self._has_count else None

    @property
    def error(self):
        if self.error_code is None:
            return None
        return {"code": self.error_code, "message": self.error_message}

    def to_dict(self):
        # Straight from the C fields: this row is what the CLI and the service send.
        ais = self.ais
        return {
            "input": self.input,
            "ok": self.ok,
            "kind": _KINDS[self._kind],
            "gtin": _fmt14(self._gtin) if self._gtin >= 0 else None,
            "lookup_gtin": _fmt14(self._lookup) if self._lookup >= 0 else None,
            "price_minor": self._price if self._has_price else None,
            "weight_g": self._weight if self._has_weight else None,
            "count": self._count if self._has_count else None,
            "ais": None if ais is None else dict(ais),
            "error": None if self.error_code is None else
            {"code": self.error_code, "message": self.error_message},
        }

    def __repr__(self):
        if self.ok:
            return f"<ScanResult {self.kind} {self.lookup_gtin or self.input!r}>"
        return f"<ScanResult error {self.error_code}: {self.error_message}>"


cdef int _fail(ScanResult r, str code, dict fields) except -1:
    r.ok = False
    r._kind = K_NONE
    r._gtin = -1
    r._lookup = -1
    r._has_price = False
    r._has_weight = False
    r._has_count = False
    r._nel = 0
    r._ais = None
    r.currency = None
    r.error_code = code
    r.error_message = _MESSAGES[code].format(**fields)
    return 1


cdef inline str _s(const char* s, Py_ssize_t a, Py_ssize_t b):
    return PyUnicode_FromStringAndSize(s + a, b - a)

# ----------------------------------------------------------------------------------
# Check digits
# ----------------------------------------------------------------------------------

cdef inline int _gs1_check(const char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Mod-10 check digit of the digits s[a:b]."""
    cdef int total = 0
    cdef int weight = 3
    cdef Py_ssize_t i
    for i in range(b - 1, a - 1, -1):
        total += (s[i] - 48) * weight
        weight = 4 - weight
    return (10 - total % 10) % 10


cdef inline int _price_check(const char* d, int n) noexcept nogil:
    cdef int s
    if n == 4:
        s = W2M[d[0] - 48] + W2M[d[1] - 48] + W3[d[2] - 48] + W5M[d[3] - 48]
        return (s * 3) % 10
    s = (W5P[d[0] - 48] + W2M[d[1] - 48] + W5M[d[2] - 48] + W5P[d[3] - 48]
         + W2M[d[4] - 48])
    return W5MI[(10 - s % 10) % 10]


def gs1_check_digit(str digits):
    """GS1 mod-10 check digit of ``digits`` (the digits before the check digit)."""
    b = digits.encode("ascii")
    return _gs1_check(b, 0, len(b))


def price_check_digit(str digits):
    """GS1 price/weight check digit of a 4- or 5-digit value (GenSpecs §7.9.3-4)."""
    b = digits.encode("ascii")
    if len(b) not in (4, 5):
        raise ValueError("a price/weight check digit covers 4 or 5 digits")
    return _price_check(b, len(b))


cdef inline int64_t _num(const char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef int64_t v = 0
    cdef Py_ssize_t i
    for i in range(a, b):
        v = v * 10 + (s[i] - 48)
    return v


cdef inline bint _all_digits(const char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(a, b):
        if s[i] < 48 or s[i] > 57:
            return False
    return True


cdef inline void _upce_expand(char ns, const char* six, char* out) noexcept nogil:
    """UPC-E number system + 6 digits -> the 11 digits of UPC-A before its check."""
    cdef char d7 = six[5]
    cdef int i
    out[0] = ns
    if d7 <= 50:   # '0'..'2'
        out[1] = six[0]; out[2] = six[1]; out[3] = d7
        for i in range(4, 8):
            out[i] = 48
        out[8] = six[2]; out[9] = six[3]; out[10] = six[4]
    elif d7 == 51:  # '3'
        out[1] = six[0]; out[2] = six[1]; out[3] = six[2]
        for i in range(4, 9):
            out[i] = 48
        out[9] = six[3]; out[10] = six[4]
    elif d7 == 52:  # '4'
        out[1] = six[0]; out[2] = six[1]; out[3] = six[2]; out[4] = six[3]
        for i in range(5, 10):
            out[i] = 48
        out[10] = six[4]
    else:
        out[1] = six[0]; out[2] = six[1]; out[3] = six[2]; out[4] = six[3]
        out[5] = six[4]
        for i in range(6, 10):
            out[i] = 48
        out[10] = d7


def upce_to_upca(str ns, str six):
    """Expand UPC-E (number system + 6 digits) to the 11 digits of UPC-A before its check."""
    cdef char out[11]
    b = six.encode("ascii")
    _upce_expand(ord(ns), b, out)
    return PyUnicode_FromStringAndSize(out, 11)

# ----------------------------------------------------------------------------------
# Dates (GenSpecs §7.12)
# ----------------------------------------------------------------------------------

cdef int64_t _year_day = -1
cdef int _year_now = 0

cdef int _current_year() noexcept:
    global _year_day, _year_now
    cdef time_t t = time(NULL)
    cdef int64_t day = t // 86400
    cdef tm out
    if day != _year_day:
        gmtime_r(&t, &out)
        _year_now = out.tm_year + 1900
        _year_day = day
    return _year_now


cdef inline int _full_year(int yy) noexcept:
    cdef int now = _current_year()
    cdef int century = now - now % 100
    cdef int diff = yy - now % 100
    if 51 <= diff <= 99:
        return century - 100 + yy
    if -99 <= diff <= -50:
        return century + 100 + yy
    return century + yy


cdef inline int _month_days(int year, int month) noexcept:
    if month == 2:
        if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0:
            return 29
        return 28
    if month == 4 or month == 6 or month == 9 or month == 11:
        return 30
    return 31


cdef int _check_date(ScanResult r, str ai, const char* s, Py_ssize_t a, Py_ssize_t b,
                     Py_ssize_t start, int ylen, bint with_time, bint allow_9999) except -1:
    """Validate a date at s[a+start:] (YYMMDD, or YYYYMMDD when ylen is 4) and, if
    asked, HH MM SS after it."""
    cdef const char* v = s + a + start
    cdef int year, mm, dd, last, hh, mi, ss
    cdef Py_ssize_t nrest
    if ylen == 4:
        year = <int>_num(v, 0, 4)
    else:
        year = _full_year((v[0] - 48) * 10 + v[1] - 48)
    mm = (v[ylen] - 48) * 10 + v[ylen + 1] - 48
    dd = (v[ylen + 2] - 48) * 10 + v[ylen + 3] - 48
    if mm < 1 or mm > 12:
        return _fail(r, "BAD_DATE", {"ai": ai, "value": _s(s, a, b),
                                     "why": f"month {mm:02d} does not exist"})
    last = _month_days(year, mm)
    if dd > last:
        return _fail(r, "BAD_DATE", {"ai": ai, "value": _s(s, a, b),
                                     "why": f"{year:04d}-{mm:02d} has no day {dd:02d}"})
    if not with_time:
        return 0
    nrest = (b - a) - start - ylen - 4
    if nrest <= 0:
        return 0
    if nrest % 2:
        return _fail(r, "BAD_DATE", {"ai": ai, "value": _s(s, a, b),
                                     "why": f"time {_s(s, a + start + ylen + 4, b)} is not whole pairs of digits"})
    v = v + ylen + 4
    hh = _num(v, 0, 2 if nrest >= 2 else nrest)
    mi = _num(v, 2, 4 if nrest >= 4 else nrest) if nrest > 2 else 0
    ss = _num(v, 4, 6 if nrest >= 6 else nrest) if nrest > 4 else 0
    if allow_9999 and hh == 99 and mi == 99:
        return 0
    if hh > 23 or mi > 59 or ss > 59:
        return _fail(r, "BAD_DATE", {"ai": ai, "value": _s(s, a, b),
                                     "why": f"time {_s(s, a + start + ylen + 4, b)} does not exist"})
    return 0

# ----------------------------------------------------------------------------------
# GTINs and in-store codes
# ----------------------------------------------------------------------------------

cdef int _check(ScanResult r, const char* s, Py_ssize_t a, Py_ssize_t b, str what) except -1:
    cdef int expected = _gs1_check(s, a, b - 1)
    cdef int got = s[b - 1] - 48
    if got != expected:
        return _fail(r, "BAD_CHECK_DIGIT", {"what": what, "digits": _s(s, a, b),
                                            "got": got, "expected": expected})
    return 0


cdef int _money(ScanResult r, int64_t value, int decimals, int exponent, str what,
                str currency, int64_t* out) except -1:
    cdef int64_t div
    if decimals <= exponent:
        out[0] = value * POW10[exponent - decimals]
        return 0
    div = POW10[decimals - exponent]
    if value % div:
        return _fail(r, "INEXACT_AMOUNT", {"what": what, "value": value,
                                           "decimals": decimals, "currency": currency,
                                           "exponent": exponent})
    out[0] = value // div
    return 0


cdef inline double _grams_from_kg(int64_t value, int decimals) noexcept:
    if decimals <= 3:
        return <double>(value * POW10[3 - decimals])
    return <double>value / <double>POW10[decimals - 3]


cdef int _apply_gtin(ScanResult r, const char* d14, int region) except -1:
    """Set gtin, kind and lookup key from a checked GTIN-14; decode in-store codes."""
    cdef int64_t key = _num(d14, 0, 14)
    cdef int p2, vs, vl, got, expected, i
    cdef Rule* rule
    cdef int64_t value
    cdef char z[13]
    r._gtin = key
    r._lookup = key
    r._kind = K_GTIN
    if d14[0] != 48:
        return 0
    if d14[0] == 48 and d14[1] == 48 and d14[2] == 48 and d14[3] == 48 \
            and d14[4] == 48 and d14[5] == 48:
        if d14[6] == 48 or d14[6] == 50:
            r._kind = K_RCN
        return 0
    p2 = (d14[1] - 48) * 10 + d14[2] - 48
    if p2 == 4:
        r._kind = K_RCN
        return 0
    if not (p2 == 2 or (20 <= p2 <= 29)):
        return 0
    r._kind = K_RCN
    if region < 0:
        return 0
    rule = &_regions[region].rules[p2]
    if rule.measure == 0:
        return 0
    vs = rule.value_start
    vl = rule.value_len
    # d13 = d14 + 1
    if rule.check_pos >= 0:
        got = d14[1 + rule.check_pos] - 48
        expected = _price_check(d14 + 1 + vs, vl)
        if got != expected:
            return _fail(r, "BAD_PRICE_CHECK_DIGIT", {
                "digits": _s(d14, 1, 14), "measure": D.MEASURES[rule.measure - 1],
                "value": _s(d14, 1 + vs, 1 + vs + vl), "got": got, "expected": expected})
    value = _num(d14, 1 + vs, 1 + vs + vl)
    if rule.measure == 1:
        if _money(r, value, rule.decimals, _regions[region].exponent, "price",
                  _region_currency[region], &r._price):
            return 1
        r._has_price = True
        r.currency = _region_currency[region]
    elif rule.measure == 2:
        r._weight = _grams_from_kg(value, rule.decimals)
        r._has_weight = True
    else:
        r._count = value
        r._has_count = True
    # payload = "0" + d13[:12] with the variable part and its check digit zeroed
    z[0] = 48
    memcpy(z + 1, d14 + 1, 12)
    for i in range(vl):
        z[1 + vs + i] = 48
    if rule.check_pos >= 0:
        z[1 + rule.check_pos] = 48
    r._lookup = _num(z, 0, 13) * 10 + _gs1_check(z, 0, 13)
    return 0


cdef int _gtin_of(ScanResult r, const char* s, Py_ssize_t a, Py_ssize_t b, str what,
                  int region) except -1:
    cdef char d14[14]
    cdef Py_ssize_t n = b - a
    cdef int i
    if _check(r, s, a, b, what):
        return 1
    for i in range(14 - n):
        d14[i] = 48
    memcpy(d14 + 14 - n, s + a, n)
    return _apply_gtin(r, d14, region)


cdef int _upce(ScanResult r, const char* s, Py_ssize_t a, Py_ssize_t b, int region) except -1:
    cdef Py_ssize_t n = b - a
    cdef char ns
    cdef const char* six
    cdef int check = -1
    cdef char d14[14]
    cdef int expected
    if n == 6:
        ns = 48
        six = s + a
    elif n == 7:
        ns = s[a]
        six = s + a + 1
    else:
        ns = s[a]
        six = s + a + 1
        check = s[a + 7] - 48
    if ns != 48 and ns != 49:
        return _fail(r, "BAD_NUMBER_SYSTEM", {"got": chr(ns)})
    d14[0] = 48
    d14[1] = 48
    _upce_expand(ns, six, d14 + 2)
    expected = _gs1_check(d14, 2, 13)
    if check >= 0 and check != expected:
        return _fail(r, "BAD_CHECK_DIGIT", {"what": "UPC-E", "digits": _s(s, a, b),
                                            "got": check, "expected": expected})
    d14[13] = <char>(48 + expected)
    return _apply_gtin(r, d14, region)


cdef int _ean8_or_upce(ScanResult r, const char* s, Py_ssize_t a, int region) except -1:
    """Eight digits with no symbology: EAN-8 if its check digit holds, else UPC-E."""
    cdef char d14[14]
    cdef int i
    if _gs1_check(s, a, a + 7) == s[a + 7] - 48:
        for i in range(6):
            d14[i] = 48
        memcpy(d14 + 6, s + a, 8)
        return _apply_gtin(r, d14, region)
    if s[a] == 48 or s[a] == 49:
        d14[0] = 48
        d14[1] = 48
        _upce_expand(s[a], s + a + 1, d14 + 2)
        if _gs1_check(d14, 2, 13) == s[a + 7] - 48:
            d14[13] = s[a + 7]
            return _apply_gtin(r, d14, region)
    return _check(r, s, a, a + 8, "GTIN-8")


cdef str _gtin_name(Py_ssize_t n):
    if n == 8:
        return "GTIN-8"
    if n == 12:
        return "GTIN-12"
    if n == 13:
        return "GTIN-13"
    return "GTIN-14"


cdef int _auto_digits(ScanResult r, const char* s, Py_ssize_t a, Py_ssize_t b, int region,
                      Py_ssize_t offset) except -1:
    cdef Py_ssize_t n = b - a
    if n == 8:
        return _ean8_or_upce(r, s, a, region)
    if n == 12 or n == 13 or n == 14:
        return _gtin_of(r, s, a, b, _gtin_name(n), region)
    if n == 18:
        if _check(r, s, a, b, "SSCC"):
            return 1
        r._kind = K_SSCC
        return 0
    if n < 16:
        # Shorter digit strings are keyed or misread codes, not element strings: a
        # GS1 element string at a till starts with (01) and a GTIN-14.
        return _fail(r, "BAD_LENGTH", {"what": "a GTIN", "length": n})
    return _parse_gs1(r, s, a, b, region, offset)

# ----------------------------------------------------------------------------------
# GS1 element strings
# ----------------------------------------------------------------------------------

cdef int _validate(ScanResult r, int si, str ai, const char* s, Py_ssize_t a, Py_ssize_t b,
                   Py_ssize_t* last_part) except -1:
    """Check s[a:b] against spec si; set last_part to the start of its last component."""
    cdef Spec* sp = &_specs[si]
    cdef Py_ssize_t n = b - a
    cdef Py_ssize_t pos = 0, left, take, k
    cdef int i, nparts = 0, expected, got
    cdef Comp* c
    cdef Py_ssize_t cs_start = 0, cs_end = 0
    cdef unsigned char ch
    if n < sp.min_len or n > sp.max_len:
        if sp.min_len == sp.max_len:
            need = f"{sp.max_len}"
        else:
            need = f"{sp.min_len} to {sp.max_len}"
        return _fail(r, "BAD_AI_VALUE", {"ai": ai, "value": _s(s, a, b),
                                         "why": f"has {n} characters; needs {need}"})
    last_part[0] = a
    for i in range(sp.ncomp):
        c = &sp.comps[i]
        left = n - pos
        if c.optional and left == 0:
            break
        take = left if i == sp.ncomp - 1 else c.lo
        if take < c.lo or take > c.hi:
            return _fail(r, "BAD_AI_VALUE", {
                "ai": ai, "value": _s(s, a, b),
                "why": f"part {i + 1} has {take} characters; needs {c.lo} to {c.hi}"})
        for k in range(a + pos, a + pos + take):
            ch = <unsigned char>s[k]
            if ch >= 128 or not _cset[c.cset][ch]:
                name = D.CHARSET_NAMES[_cset_names[c.cset]]
                return _fail(r, "BAD_AI_VALUE", {
                    "ai": ai, "value": _s(s, a, b),
                    "why": f"{chr(ch)!r} is not allowed; expected {name}"})
        last_part[0] = a + pos
        if i == sp.csum_part:
            cs_start = a + pos
            cs_end = a + pos + take
        pos += take
        nparts += 1
    if pos != n:
        return _fail(r, "BAD_AI_VALUE", {
            "ai": ai, "value": _s(s, a, b),
            "why": f"has {n} characters; needs {sp.min_len} to {sp.max_len}"})
    if sp.csum:
        expected = _gs1_check(s, cs_start, cs_end - 1)
        got = s[cs_end - 1] - 48
        if got != expected:
            return _fail(r, "BAD_CHECK_DIGIT", {"what": f"({ai})",
                                                "digits": _s(s, cs_start, cs_end),
                                                "got": got, "expected": expected})
    if sp.yesno and not (n == 1 and (s[a] == 48 or s[a] == 49)):
        return _fail(r, "BAD_AI_VALUE", {"ai": ai, "value": _s(s, a, b),
                                         "why": "must be 0 or 1"})
    if sp.n3list and n % 3:
        return _fail(r, "BAD_AI_VALUE", {"ai": ai, "value": _s(s, a, b),
                                         "why": "must be a list of 3-digit country codes"})
    if sp.date == DATE_RANGE:
        # A date range (7007) holds a second date, not a time, after the first.
        if _check_date(r, ai, s, a, b, 0, 2, False, False):
            return 1
        if nparts > 1:
            if _check_date(r, ai, s, a, b, 6, 2, False, False):
                return 1
    elif sp.date == DATE_YYYYMMDD:
        return _check_date(r, ai, s, a, b, 0, 4, True, False)
    elif sp.date != DATE_NONE:
        return _check_date(r, ai, s, a, b, 0, 2, True, sp.date == DATE_YYMMDD9999)
    return 0


cdef bint _starts_with_ai(const char* s, Py_ssize_t a, Py_ssize_t b) noexcept:
    """Whether s[a:b] opens with a GS1 AI (else a mixed string is a mistyped GTIN)."""
    cdef int p2, ailen
    if b - a < 2 or not _all_digits(s, a, a + 2):
        return False
    p2 = (s[a] - 48) * 10 + s[a + 1] - 48
    ailen = _ailen[p2]
    if ailen == 0 or a + ailen > b or not _all_digits(s, a, a + ailen):
        return False
    if ailen == 2:
        return _ai2[p2] >= 0
    if ailen == 3:
        return _ai3[_num(s, a, a + 3)] >= 0
    return _ai4[_num(s, a, a + 4)] >= 0


cdef int _parse_gs1(ScanResult r, const char* s, Py_ssize_t a, Py_ssize_t b, int region,
                    Py_ssize_t offset) except -1:
    cdef Elem elems[MAX_ELEMENTS]
    cdef Py_ssize_t lastpart[MAX_ELEMENTS]
    cdef int nel = 0, i, j, si, ailen, p2
    cdef Py_ssize_t pos = a, start, end, k, lp
    cdef Py_ssize_t n = b
    cdef bint dup, found
    cdef int kg = -1, lb = -1, local = -1, foreign = -1, fam
    cdef int64_t value, price
    cdef Spec* sp
    cdef str ai
    while pos < n:
        if s[pos] == 0x1D:
            pos += 1
            continue
        if nel >= MAX_ELEMENTS:
            return _fail(r, "BAD_AI_VALUE", {"ai": _s(s, pos, min(pos + 2, n)),
                                             "value": _s(s, pos, n),
                                             "why": f"more than {MAX_ELEMENTS} element strings"})
        if n - pos < 2:
            if 48 <= s[pos] <= 57:
                return _fail(r, "TRUNCATED_AI", {"ai": _s(s, pos, n), "pos": offset + pos - a + 1})
            return _fail(r, "UNKNOWN_AI", {"ai": _s(s, pos, n), "pos": offset + pos - a + 1})
        if not (48 <= s[pos] <= 57 and 48 <= s[pos + 1] <= 57):
            return _fail(r, "UNKNOWN_AI", {"ai": _s(s, pos, pos + 2), "pos": offset + pos - a + 1})
        p2 = (s[pos] - 48) * 10 + s[pos + 1] - 48
        ailen = _ailen[p2]
        if ailen == 0:
            return _fail(r, "UNKNOWN_AI", {"ai": _s(s, pos, pos + 2), "pos": offset + pos - a + 1})
        if pos + ailen > n:
            if _all_digits(s, pos, n):
                return _fail(r, "TRUNCATED_AI", {"ai": _s(s, pos, n), "pos": offset + pos - a + 1})
            return _fail(r, "UNKNOWN_AI", {"ai": _s(s, pos, n), "pos": offset + pos - a + 1})
        if not _all_digits(s, pos, pos + ailen):
            return _fail(r, "UNKNOWN_AI", {"ai": _s(s, pos, pos + ailen),
                                           "pos": offset + pos - a + 1})
        if ailen == 2:
            si = _ai2[p2]
        elif ailen == 3:
            si = _ai3[_num(s, pos, pos + 3)]
        else:
            si = _ai4[_num(s, pos, pos + 4)]
        if si < 0:
            return _fail(r, "UNKNOWN_AI", {"ai": _s(s, pos, pos + ailen),
                                           "pos": offset + pos - a + 1})
        sp = &_specs[si]
        ai = <str>_ai_names[si]
        start = pos + ailen
        if sp.fixed_len >= 0:
            end = start + sp.fixed_len
            found = False
            for k in range(start, min(end, n)):
                if s[k] == 0x1D:
                    end = k
                    found = True
                    break
            if not found and end > n:
                return _fail(r, "TRUNCATED_AI", {"ai": ai, "pos": offset + pos - a + 1})
        else:
            end = n
            for k in range(start, n):
                if s[k] == 0x1D:
                    end = k
                    break
            if end == start and end == n:
                return _fail(r, "TRUNCATED_AI", {"ai": ai, "pos": offset + pos - a + 1})
        if _validate(r, si, ai, s, start, end, &lp):
            return 1
        dup = False
        for j in range(nel):
            if elems[j].spec == si:
                if (elems[j].end - elems[j].start != end - start or
                        memcmp(s + elems[j].start, s + start, end - start) != 0):
                    return _fail(r, "DUPLICATE_AI", {
                        "ai": ai, "first": _s(s, elems[j].start, elems[j].end),
                        "second": _s(s, start, end)})
                dup = True
                break
        if not dup:
            elems[nel].spec = si
            elems[nel].start = start
            elems[nel].end = end
            lastpart[nel] = lp
            nel += 1
        pos = end

    r._elems = <Elem*>PyMem_Malloc(nel * sizeof(Elem))
    if r._elems == NULL:
        raise MemoryError()
    memcpy(r._elems, elems, nel * sizeof(Elem))
    r._nel = nel
    r._kind = K_GS1
    for i in range(nel):
        if elems[i].spec == _SPEC_01:
            if _apply_gtin(r, s + elems[i].start, region):
                return 1
            r._kind = K_GS1
            break
    found = False
    for i in range(nel):
        if elems[i].spec == _SPEC_30:
            r._count = _num(s, elems[i].start, elems[i].end)
            r._has_count = True
            found = True
            break
    if not found:
        for i in range(nel):
            if elems[i].spec == _SPEC_37:
                r._count = _num(s, elems[i].start, elems[i].end)
                r._has_count = True
                break
    for i in range(nel):
        fam = _specs[elems[i].spec].family
        if fam == 1 and kg < 0:
            kg = i
        elif fam == 2 and lb < 0:
            lb = i
        elif fam == 3 and local < 0:
            local = i
        elif fam == 4 and foreign < 0:
            foreign = i
    if kg >= 0:
        value = _num(s, lastpart[kg], elems[kg].end)
        r._weight = _grams_from_kg(value, s[elems[kg].start - 1] - 48)
        r._has_weight = True
    elif lb >= 0:
        value = _num(s, lastpart[lb], elems[lb].end)
        r._weight = (<double>value / <double>POW10[s[elems[lb].start - 1] - 48]) \
            * D.GRAMS_PER_POUND
        r._has_weight = True
    # A price is given in minor units of the store's currency, which only a region
    # names: without one, (392n) and (393n) stay in ``ais`` alone.
    if local >= 0:
        if region >= 0:
            ai = <str>_ai_names[elems[local].spec]
            value = _num(s, lastpart[local], elems[local].end)
            if _money(r, value, s[elems[local].start - 1] - 48, _regions[region].exponent,
                      f"({ai})", _region_currency[region], &price):
                return 1
            r.currency = _region_currency[region]
            r._price = price
            r._has_price = True
    elif foreign >= 0:
        if region >= 0 and _num(s, elems[foreign].start, elems[foreign].start + 3) \
                == _regions[region].currency_numeric:
            ai = <str>_ai_names[elems[foreign].spec]
            value = _num(s, lastpart[foreign], elems[foreign].end)
            if _money(r, value, s[elems[foreign].start - 1] - 48, _regions[region].exponent,
                      f"({ai})", _region_currency[region], &price):
                return 1
            r._price = price
            r._has_price = True
            r.currency = _region_currency[region]
    return 0

# ----------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------

cdef inline bint _strip_char(char c) noexcept nogil:
    return c == 32 or (9 <= c <= 13) or (28 <= c <= 31)


cdef int _require_digits(ScanResult r, const char* s, Py_ssize_t a, Py_ssize_t b,
                         str what, Py_ssize_t offset) except -1:
    cdef Py_ssize_t i
    for i in range(a, b):
        if s[i] < 48 or s[i] > 57:
            return _fail(r, "NON_DIGIT", {"what": what, "char": chr(s[i]),
                                          "pos": offset + i - a + 1})
    return 0


cdef int _read(ScanResult r, str code, int region) except -1:
    cdef Py_ssize_t n = len(code)
    cdef Py_ssize_t i, lo, hi, a, main
    cdef const char* s
    cdef int kind
    cdef void* data
    cdef Py_UCS4 ch
    cdef int how = R_AUTO
    cdef unsigned char o, c1, c2
    if n > MAX_INPUT_LEN:
        return _fail(r, "TOO_LONG", {"length": n, "limit": MAX_INPUT_LEN})
    if not PyUnicode_IS_ASCII(code):
        kind = PyUnicode_KIND(code)
        data = PyUnicode_DATA(code)
        for i in range(n):
            ch = PyUnicode_READ(kind, data, i)
            if ch == 0:
                return _fail(r, "NUL_BYTE", {"pos": i + 1})
            if ch > 127:
                return _fail(r, "NON_ASCII", {"pos": i + 1})
    s = <const char*>PyUnicode_DATA(code)
    for i in range(n):
        if s[i] == 0:
            return _fail(r, "NUL_BYTE", {"pos": i + 1})
    lo = 0
    hi = n
    while lo < hi and _strip_char(s[lo]):
        lo += 1
    while hi > lo and _strip_char(s[hi - 1]):
        hi -= 1
    if lo == hi:
        return _fail(r, "EMPTY", {})
    for i in range(lo, hi):
        o = <unsigned char>s[i]
        if (o < 32 and o != 0x1D) or o == 127:
            return _fail(r, "BAD_CHARACTER", {"char": o, "pos": i + 1})

    a = lo
    if s[lo] == 93:   # ']'
        if hi - lo < 3:
            return _fail(r, "UNKNOWN_SYMBOLOGY", {"symbology": _s(s, lo, hi)})
        c1 = <unsigned char>s[lo + 1]
        c2 = <unsigned char>s[lo + 2]
        how = _aim_how[c1][c2] if c1 < 128 and c2 < 128 else -1
        if how < 0:
            return _fail(r, "UNKNOWN_SYMBOLOGY", {"symbology": _s(s, lo, lo + 3)})
        r.symbology = _aim_names[c1 * 128 + c2]
        a = lo + 3
    elif hi - lo >= 3 and s[lo] == 83 and s[lo + 1] == 48 and s[lo + 2] == 56:  # "S08"
        how = -1
        if hi - lo >= 5:
            c1 = <unsigned char>s[lo + 3]
            c2 = <unsigned char>s[lo + 4]
            how = _mag_how[c1][c2]
        if how < 0 and hi - lo >= 4:
            c1 = <unsigned char>s[lo + 3]
            c2 = 0
            how = _mag_how[c1][0]
        if how < 0:
            return _fail(r, "UNKNOWN_SYMBOLOGY", {"symbology": _s(s, lo, min(lo + 5, hi))})
        r.symbology = _mag_names[c1 * 128 + c2]
        a = lo + len(r.symbology)
    if a == hi:
        return _fail(r, "EMPTY", {})
    offset = a

    if how == R_AUTO:
        if _all_digits(s, a, hi):
            return _auto_digits(r, s, a, hi, region, offset)
        if _starts_with_ai(s, a, hi):
            return _parse_gs1(r, s, a, hi, region, offset)
        for i in range(a, hi):
            if s[i] < 48 or s[i] > 57:
                return _fail(r, "NON_DIGIT", {
                    "what": "a barcode without symbology identifier", "char": chr(s[i]),
                    "pos": offset + i - a + 1})
    if how == R_GS1:
        return _parse_gs1(r, s, a, hi, region, offset)
    if how == R_TEXT:
        r._kind = K_TEXT
        return 0
    if _require_digits(r, s, a, hi, _SYMBOLOGY_NAMES[how], offset):
        return 1
    n = hi - a
    if how == R_EAN:
        if n == 13 or n == 12:
            return _gtin_of(r, s, a, hi, _gtin_name(n), region)
        if 6 <= n <= 8:
            return _upce(r, s, a, hi, region)
        return _fail(r, "BAD_LENGTH", {"what": "EAN-13/UPC-A/UPC-E", "length": n})
    if how == R_EAN8:
        if n != 8:
            return _fail(r, "BAD_LENGTH", {"what": "EAN-8", "length": n})
        return _gtin_of(r, s, a, hi, "GTIN-8", region)
    if how == R_EAN13:
        if n != 13:
            return _fail(r, "BAD_LENGTH", {"what": "EAN-13", "length": n})
        return _gtin_of(r, s, a, hi, "GTIN-13", region)
    if how == R_UPCA:
        if n != 12:
            return _fail(r, "BAD_LENGTH", {"what": "UPC-A", "length": n})
        return _gtin_of(r, s, a, hi, "GTIN-12", region)
    if how == R_UPCE:
        if not 6 <= n <= 8:
            return _fail(r, "BAD_LENGTH", {"what": "UPC-E", "length": n})
        return _upce(r, s, a, hi, region)
    if how == R_ITF:
        if n != 14:
            return _fail(r, "BAD_LENGTH", {"what": "ITF-14", "length": n})
        return _gtin_of(r, s, a, hi, "GTIN-14", region)
    # R_EAN_ADDON
    if n == 15 or n == 18:
        main = 13
    elif n == 14 or n == 17:
        main = 12
    elif n == 10 or n == 13:
        main = 8
    else:
        return _fail(r, "BAD_LENGTH", {"what": "EAN/UPC with add-on", "length": n})
    r.addon = _s(s, a + main, hi)
    if main == 8:
        return _ean8_or_upce(r, s, a, region)
    return _gtin_of(r, s, a, a + main, _gtin_name(main), region)


cdef inline bint _is_region_code(str region):
    cdef Py_UCS4 c
    if len(region) != 2 or not region.isascii():
        return False
    for c in region:
        if not (65 <= c <= 90 or 97 <= c <= 122):
            return False
    return True


cpdef ScanResult parse_scan(object code, object region=None):
    """Parse one scan.

    ``code`` is what the scanner sent (symbology identifier or Magellan prefix
    included); ``region`` an ISO 3166 alpha-2 code whose rules decode in-store
    codes, or None. Never raises: a bad scan gives ``ok == False`` with a stable
    ``error_code``.
    """
    global _last_region, _last_ridx, _last_rcode
    cdef ScanResult r = ScanResult.__new__(ScanResult)
    cdef int ridx = -1
    r.input = code if type(code) is str or isinstance(code, str) else None
    if region is not None and region is _last_region:
        # Callers pass the same region object scan after scan.
        ridx = _last_ridx
        r.region = _last_rcode
    elif region is not None:
        if not (isinstance(region, str) and _is_region_code(<str>region)):
            _fail(r, "UNKNOWN_REGION", {"region": region})
            return r
        original = region
        idx = _region_index.get(region)
        if idx is None:
            region = (<str>region).upper()
            idx = _region_index.get(region)
        r.region = region
        if idx is not None:
            ridx = idx
        _last_region = original
        _last_ridx = ridx
        _last_rcode = region
    if not isinstance(code, str):
        _fail(r, "NOT_TEXT", {"what": type(code).__name__})
        return r
    if _read(r, <str>code, ridx) == 0:
        r.ok = True
    return r


def parse_many(codes, region=None):
    """Parse a sequence of scans with one region."""
    return [parse_scan(c, region) for c in codes]
