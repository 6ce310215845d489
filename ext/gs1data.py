"""GS1 facts shared by the compiled barcode kernel and its pure-Python twin.

Everything here is data: the Application Identifier table, the national rules for
restricted-circulation (in-store) numbers, the error codes and their message
templates. Both implementations build their lookup structures from this module at
import time, so a fact is written once and the two kernels cannot drift apart.

Sources
-------
* GS1 General Specifications (GenSpecs) §3 (AI definitions), Figure 7.8.5-2 (AIs
  with a predefined length, which need no FNC1/GS after them), §7.9 (check digits,
  price/weight check digits), §7.11 (character sets 82, 39, 64), §7.12 (century of
  two-digit years).
* GS1 member organisations' rules for variable-measure numbers: GS1 UK, GS1 Sweden,
  GS1 Germany, GS1 Denmark, GS1 Finland, GS1 Latvia (also used in Estonia and
  Lithuania). Norway follows the Swedish layout.
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------

#: Longest input accepted, in characters. A GS1 DataMatrix holds at most 2,335
#: alphanumerics and a QR code 4,296; nothing a scanner sends is longer.
MAX_INPUT_LEN = 4096

#: Most element strings kept from one GS1 message (a DataMatrix can hold dozens).
MAX_ELEMENTS = 64

# --------------------------------------------------------------------------------------
# Result kinds
# --------------------------------------------------------------------------------------

#: Kinds of a parsed scan, in the order of their numeric codes (0 = unknown).
KINDS = (None, "gtin", "rcn", "gs1", "sscc", "text")
KIND_NONE, KIND_GTIN, KIND_RCN, KIND_GS1, KIND_SSCC, KIND_TEXT = range(6)

# --------------------------------------------------------------------------------------
# Error codes. The order is the numeric code used inside the compiled kernel; the
# string is what the API, the CLI and the wire protocol carry. Never renumber.
# --------------------------------------------------------------------------------------

ERROR_CODES = (
    None,
    "NOT_TEXT",
    "EMPTY",
    "TOO_LONG",
    "NUL_BYTE",
    "NON_ASCII",
    "BAD_CHARACTER",
    "NON_DIGIT",
    "BAD_LENGTH",
    "BAD_CHECK_DIGIT",
    "BAD_NUMBER_SYSTEM",
    "BAD_PRICE_CHECK_DIGIT",
    "UNKNOWN_AI",
    "TRUNCATED_AI",
    "BAD_AI_VALUE",
    "BAD_DATE",
    "DUPLICATE_AI",
    "INEXACT_AMOUNT",
    "UNKNOWN_SYMBOLOGY",
    "UNKNOWN_REGION",
)

#: One sentence per code; ``{…}`` fields are filled in by the kernel.
ERROR_DOCS = {
    "NOT_TEXT": "the scan is not a string",
    "EMPTY": "nothing but whitespace was scanned",
    "TOO_LONG": "the scan is longer than MAX_INPUT_LEN characters",
    "NUL_BYTE": "the scan contains a NUL (0x00) character",
    "NON_ASCII": "the scan contains a character outside ASCII",
    "BAD_CHARACTER": "the scan contains a control character other than GS (0x1D)",
    "NON_DIGIT": "a digit was expected",
    "BAD_LENGTH": "the digits are not a length any GTIN, UPC-E or SSCC has",
    "BAD_CHECK_DIGIT": "the mod-10 check digit of a GTIN, UPC-E, SSCC or AI field is wrong",
    "BAD_NUMBER_SYSTEM": "a UPC-E number system digit other than 0 or 1",
    "BAD_PRICE_CHECK_DIGIT": "the check digit of a price or weight embedded in an in-store code is wrong",
    "UNKNOWN_AI": "an Application Identifier that GS1 does not define",
    "TRUNCATED_AI": "the element string ends inside an AI or inside fixed-length data",
    "BAD_AI_VALUE": "an AI's data has the wrong length or characters",
    "BAD_DATE": "an AI's date or time does not exist",
    "DUPLICATE_AI": "the same AI appears twice with different values",
    "INEXACT_AMOUNT": "a price with more decimals than the currency's minor unit",
    "UNKNOWN_SYMBOLOGY": "a symbology identifier or scanner label prefix that lanecore does not read",
    "UNKNOWN_REGION": "the region is not an ISO 3166 alpha-2 code",
}

MESSAGES = {
    "NOT_TEXT": "expected a str, got {what}",
    "EMPTY": "empty scan",
    "TOO_LONG": "scan is {length} characters long; the limit is {limit}",
    "NUL_BYTE": "NUL character at position {pos}",
    "NON_ASCII": "non-ASCII character at position {pos}",
    "BAD_CHARACTER": "control character 0x{char:02X} at position {pos}",
    "NON_DIGIT": "{what} must be digits only; found {char!r} at position {pos}",
    "BAD_LENGTH": "{what} cannot have {length} digits",
    "BAD_CHECK_DIGIT": "{what} {digits} has check digit {got}; expected {expected}",
    "BAD_NUMBER_SYSTEM": "UPC-E number system must be 0 or 1, got {got}",
    "BAD_PRICE_CHECK_DIGIT": "in-store code {digits}: {measure} {value} has check digit {got}; expected {expected}",
    "UNKNOWN_AI": "unknown application identifier ({ai}) at position {pos}",
    "TRUNCATED_AI": "element string ends inside ({ai}) at position {pos}",
    "BAD_AI_VALUE": "({ai}) {value!r}: {why}",
    "BAD_DATE": "({ai}) {value!r}: {why}",
    "DUPLICATE_AI": "({ai}) appears twice with different values {first!r} and {second!r}",
    "INEXACT_AMOUNT": "{what} {value} has {decimals} decimals; {currency} has {exponent}",
    "UNKNOWN_SYMBOLOGY": "symbology {symbology!r} is not read by lanecore",
    "UNKNOWN_REGION": "region {region!r} is not an ISO 3166 alpha-2 code",
}

# --------------------------------------------------------------------------------------
# Character sets (GenSpecs §7.11)
# --------------------------------------------------------------------------------------

CSET_N = "0123456789"
#: Character set 82: the characters allowed in alphanumeric AI data.
CSET_X = (
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
    "abcdefghijklmnopqrstuvwxyz"
)
#: Character set 39 (AI 8010).
CSET_Y = "#-/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Character set 64, the file-safe/URI-safe base64 alphabet (AI 8030). Its "="
#: padding is left out: it may only end a value, and signatures are sent unpadded.
CSET_Z = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
#: A lone minus sign (AIs 4330-4333, temperatures below zero).
CSET_MINUS = "-"
#: A lone slash (AI 7258, "1/2": birth sequence).
CSET_SLASH = "/"
#: A lone zero (AI 8003: a GRAI is carried with a leading zero).
CSET_ZERO = "0"
#: ISO 3166 alpha-2 country codes (AIs 4307, 4317).
CSET_ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

CHARSETS = {"N": CSET_N, "X": CSET_X, "Y": CSET_Y, "Z": CSET_Z, "-": CSET_MINUS,
            "/": CSET_SLASH, "0": CSET_ZERO, "A": CSET_ALPHA}
#: How an error message names each character set.
CHARSET_NAMES = {"N": "digits", "X": "characters of set 82", "Y": "characters of set 39",
                 "Z": "characters of set 64", "-": "'-'", "/": "'/'", "0": "'0'",
                 "A": "upper-case letters"}
#: Numeric ids of the character sets, used by the compiled kernel's tables.
CHARSET_IDS = {"N": 0, "X": 1, "Y": 2, "Z": 3, "-": 4, "/": 5, "0": 6, "A": 7}

# --------------------------------------------------------------------------------------
# Application Identifier table
# --------------------------------------------------------------------------------------
# One line per AI or AI family:  AI  components  [flags]
#   components: N14 (exactly 14 digits), X..20 (1 to 20 of set 82), N..15, N6..12,
#               "[...]" marks an optional trailing component; -1, /1 and 01 are a
#               lone minus sign, slash and zero.
#   flags: csum  - the first component ends in a GS1 mod-10 check digit (or, when
#                  the first component is a lone zero, the second does)
#          date  - the data starts with YYMMDD (DD may be 00: the month's end) and
#                  may go on with HH, MM, SS (GenSpecs §7.12)
#          date9999 - as date; "9999" as HHMM means "no time" (AIs 4324, 4325)
#          date2 - YYMMDD and an optional second YYMMDD (AI 7007, a date range)
#          date8 - YYYYMMDD, then HH MM if the data goes on (AIs 7250, 7251)
#          dec   - the AI's last digit is the number of implied decimals of the
#                  last component
#          yesno - the digit is 0 or 1 (AIs 4321-4323)
#          n3list - a list of 3-digit ISO 3166 country codes (AIs 423, 425)
#   "n" in an AI stands for its last digit, with the range given after it.

_AI_SPEC = """
00      N18             csum
01      N14             csum
02      N14             csum
03      N14             csum
10      X..20
11      N6              date
12      N6              date
13      N6              date
15      N6              date
16      N6              date
17      N6              date
20      N2
21      X..20
22      X..20
235     X..28
240     X..30
241     X..30
242     N..6
243     X..20
250     X..30
251     X..30
253     N13 [X..17]     csum
254     X..20
255     N13 [N..12]     csum
30      N..8
37      N..8
390n:9  N..15           dec
391n:9  N3 N..15        dec
392n:9  N..15           dec
393n:9  N3 N..15        dec
394n:3  N4              dec
395n:5  N6              dec
400     X..30
401     X..30
402     N17             csum
403     X..30
410     N13             csum
411     N13             csum
412     N13             csum
413     N13             csum
414     N13             csum
415     N13             csum
416     N13             csum
417     N13             csum
420     X..20
421     N3 X..9
422     N3
423     N3 [N..12]      n3list
424     N3
425     N3 [N..12]      n3list
426     N3
427     X..3
4300    X..35
4301    X..35
4302    X..70
4303    X..70
4304    X..70
4305    X..70
4306    X..70
4307    A2
4308    X..30
4309    N20
4310    X..35
4311    X..35
4312    X..70
4313    X..70
4314    X..70
4315    X..70
4316    X..70
4317    A2
4318    X..20
4319    X..30
4320    X..35
4321    N1              yesno
4322    N1              yesno
4323    N1              yesno
4324    N10             date9999
4325    N10             date9999
4326    N6              date
4330    N6 [-1]
4331    N6 [-1]
4332    N6 [-1]
4333    N6 [-1]
7001    N13
7002    X..30
7003    N10             date
7004    N..4
7005    X..12
7006    N6              date
7007    N6 [N6]         date2
7008    X..3
7009    X..10
7010    X..2
7011    N6 [N4]         date
7020    X..20
7021    X..20
7022    X..20
7023    X..30
703n:9  N3 X..27
7040    N1 X3
7041    X..4
710     X..20
711     X..20
712     X..20
713     X..20
714     X..20
715     X..20
716     X..20
717     X..20
723n:9  X2 X..28
7240    X..20
7241    N2
7242    X..25
7250    N8              date8
7251    N12             date8
7252    N1
7253    X..40
7254    X..40
7255    X..10
7256    X..90
7257    X..70
7258    N1 /1 N1
7259    X..40
8001    N14
8002    X..20
8003    01 N13 [X..16]  csum
8004    X..30
8005    N6
8006    N14 N2 N2       csum
8007    X..34
8008    N8 [N..4]       date
8009    X..50
8010    Y..30
8011    N..12
8012    X..20
8013    X..25
8014    X..25
8017    N18             csum
8018    N18             csum
8019    N..10
8020    X..25
8026    N14 N2 N2       csum
8030    Z..90
8110    X..70
8111    N4
8112    X..70
8200    X..70
90      X..30
91      X..90
92      X..90
93      X..90
94      X..90
95      X..90
96      X..90
97      X..90
98      X..90
99      X..90
"""

# Trade and logistic measures, 31nn-36nn: six digits, the AI's last digit (0-5) the
# number of decimals. The families are listed by their first three digits.
_MEASURE_FAMILIES = (
    list(range(310, 317))   # net kg, length/width/depth m, area m2, net volume l, m3
    + list(range(320, 330))  # net lb; length, width, depth in in, ft, yd
    + list(range(330, 338))  # logistic: gross kg, lengths m, area m2, volume l, m3; kg/m2
    + list(range(340, 350))  # logistic: gross lb; length, width, depth in in, ft, yd
    + list(range(350, 358))  # area in2 ft2 yd2 (trade, logistic); net troy oz; net volume oz
    + list(range(360, 370))  # volume qt, gal (trade, logistic); in3 ft3 yd3 (trade, logistic)
)

#: First two AI digits of the AIs with a predefined length (GenSpecs Figure 7.8.5-2).
#: Only these may be followed by another element string without a GS separator.
PREDEFINED_LENGTH_PREFIXES = frozenset(
    ["00", "01", "02", "03", "04", "11", "12", "13", "14", "15", "16", "17", "18",
     "19", "20", "31", "32", "33", "34", "35", "36", "41"]
)

_COMPONENT_RE = re.compile(r"^(\[)?([NXYZA0/-])(\.\.)?(\d+)(?:\.\.(\d+))?(\])?$")
_FLAGS = frozenset(["csum", "date", "date9999", "date2", "date8", "dec", "yesno",
                    "n3list"])
#: Date layouts by flag (None: no date).
DATE_KINDS = {"date": "yymmdd", "date9999": "yymmdd9999", "date2": "range",
              "date8": "yyyymmdd"}


class AISpec:
    """The format of one Application Identifier's data.

    ``components`` is a tuple of ``(charset, min_len, max_len, optional)``.
    ``fixed_len`` is the data length when it can only have one, else ``None``.
    """

    __slots__ = ("ai", "components", "csum", "csum_part", "date", "dec", "yesno",
                 "n3list", "fixed_len", "min_len", "max_len", "predefined", "fmt")

    def __init__(self, ai: str, fmt: str, flags: frozenset[str]):
        comps = []
        for part in fmt.split():
            m = _COMPONENT_RE.match(part)
            if not m:
                raise ValueError(f"bad AI component {part!r} for AI {ai}")
            opt_open, cset, dots, n1, n2, opt_close = m.groups()
            if bool(opt_open) != bool(opt_close):
                raise ValueError(f"unbalanced optional marker in {part!r}")
            if dots:            # X..20 -> 1..20
                lo, hi = 1, int(n1)
            elif n2:            # N6..12
                lo, hi = int(n1), int(n2)
            else:               # N14
                lo = hi = int(n1)
            comps.append((cset, lo, hi, bool(opt_open)))
        self.ai = ai
        self.fmt = fmt
        self.components = tuple(comps)
        self.csum = "csum" in flags
        #: which component carries the check digit
        self.csum_part = 1 if comps[0][0] == "0" else 0
        dates = [DATE_KINDS[f] for f in flags if f in DATE_KINDS]
        #: None, "yymmdd", "yymmdd9999", "range" or "yyyymmdd"
        self.date = dates[0] if dates else None
        self.dec = "dec" in flags
        self.yesno = "yesno" in flags
        self.n3list = "n3list" in flags
        self.min_len = sum(lo for _, lo, _, opt in comps if not opt)
        self.max_len = sum(hi for _, _, hi, _ in comps)
        fixed = all(lo == hi and not opt for _, lo, hi, opt in comps)
        self.fixed_len = self.max_len if fixed else None
        self.predefined = ai[:2] in PREDEFINED_LENGTH_PREFIXES

    def __repr__(self) -> str:
        return f"AISpec({self.ai!r}, {self.fmt!r})"


def _build_ai_table() -> dict[str, AISpec]:
    table: dict[str, AISpec] = {}
    for line in _AI_SPEC.strip().splitlines():
        head, rest = line.split(None, 1)
        words = rest.split()
        flags = frozenset(w for w in words if w in _FLAGS)
        fmt = " ".join(w for w in words if w not in flags)
        if "n:" in head:
            stem, top = head.split("n:")
            for n in range(int(top) + 1):
                ai = f"{stem}{n}"
                table[ai] = AISpec(ai, fmt, flags)
        else:
            table[head] = AISpec(head, fmt, flags)
    for family in _MEASURE_FAMILIES:
        for n in range(6):
            ai = f"{family}{n}"
            table[ai] = AISpec(ai, "N6", frozenset(["dec"]))
    return table


#: AI string -> its data format.
AI_TABLE: dict[str, AISpec] = _build_ai_table()


def _ai_lengths() -> dict[str, int]:
    """Length of the AI itself, by its first two digits.

    GS1 allocates AI ranges so that the first two digits decide how many digits the
    AI has; the table proves it (a clash raises here, at import).
    """
    lengths: dict[str, int] = {}
    for ai in AI_TABLE:
        known = lengths.setdefault(ai[:2], len(ai))
        if known != len(ai):
            raise ValueError(f"AI {ai} breaks the two-digit length rule ({known})")
    return lengths


#: First two digits -> number of digits of the AI.
AI_LENGTH_BY_PREFIX: dict[str, int] = _ai_lengths()

#: AIs whose value is a GTIN, a GTIN's variable measure or an amount, and what lanecore
#: reads from them.
AI_GTIN = "01"
AI_COUNT = ("30", "37")
#: Net weight in kilograms (310n) and in pounds (320n).
AI_NET_WEIGHT_KG = "310"
AI_NET_WEIGHT_LB = "320"
GRAMS_PER_POUND = 453.59237
#: Price of a single variable-measure item in the local currency (392n) or with an
#: ISO 4217 currency (393n).
AI_PRICE_LOCAL = "392"
AI_PRICE_CURRENCY = "393"

# --------------------------------------------------------------------------------------
# Restricted-circulation numbers (in-store codes)
# --------------------------------------------------------------------------------------
# GTIN-13 prefixes 02 and 20-29 carry a price, weight or count by rules that each GS1
# member organisation publishes. Prefix 04 (040-049) and GTIN-8 prefixes 0 and 2 are
# for use inside one company; they carry nothing lanecore can decode and are looked
# up whole. GTIN-13 prefixes 40-49 are ordinary GTINs (GS1 Germany, Japan, ...).

GEO_RCN_PREFIXES = frozenset(["02", "20", "21", "22", "23", "24", "25", "26", "27",
                              "28", "29"])
COMPANY_RCN_PREFIX13 = "04"
COMPANY_RCN_PREFIX8 = frozenset("02")

MEASURES = ("price", "weight", "count")
MEASURE_NONE, MEASURE_PRICE, MEASURE_WEIGHT, MEASURE_COUNT = range(4)

#: A rule's pattern covers the 12 digits before the GTIN-13 check digit:
#: P = item reference (with the prefix), C = price/weight check digit,
#: V = the variable value.
RCN_PATTERN_RE = re.compile(r"^(P{2,})(C?)(V+)$")


class RcnRule:
    """How one in-store prefix carries its variable measure."""

    __slots__ = ("prefix", "measure", "pattern", "decimals", "value_start",
                 "value_len", "check_pos")

    def __init__(self, prefix: str, measure: str, pattern: str, decimals: int):
        if prefix not in GEO_RCN_PREFIXES:
            raise ValueError(f"prefix {prefix!r} is not an in-store prefix (02, 20-29)")
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        m = RCN_PATTERN_RE.match(pattern)
        if len(pattern) != 12 or not m:
            raise ValueError(
                f"pattern {pattern!r} must be 12 characters: P..P, an optional C, V..V")
        p, c, v = m.groups()
        if c and len(v) not in (4, 5):
            raise ValueError("a price/weight check digit (C) covers 4 or 5 value digits")
        if not 0 <= int(decimals) <= 6:
            raise ValueError(f"decimals must be 0..6, got {decimals!r}")
        if measure == "count" and int(decimals) != 0:
            raise ValueError("a count has no decimals")
        self.prefix = prefix
        self.measure = measure
        self.pattern = pattern
        self.decimals = int(decimals)
        self.value_start = len(p) + len(c)
        self.value_len = len(v)
        self.check_pos = len(p) if c else -1

    def __repr__(self) -> str:
        return (f"RcnRule({self.prefix!r}, {self.measure!r}, {self.pattern!r}, "
                f"{self.decimals})")


class RcnRegion:
    """A region's in-store code rules and its currency."""

    __slots__ = ("code", "currency", "currency_numeric", "exponent", "rules")

    def __init__(self, code: str, currency: str, currency_numeric: int, exponent: int,
                 rules: dict[str, tuple[str, str, int]]):
        if not (len(code) == 2 and code.isascii() and code.isalpha()):
            raise ValueError(f"region must be an ISO 3166 alpha-2 code, got {code!r}")
        if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
            raise ValueError(f"currency must be an ISO 4217 alpha code, got {currency!r}")
        if not 0 <= int(currency_numeric) <= 999:
            raise ValueError(f"currency number must be 0..999, got {currency_numeric!r}")
        # 0..3 covers every circulating currency and keeps price_minor in int64.
        if not 0 <= int(exponent) <= 3:
            raise ValueError(f"currency exponent must be 0..3, got {exponent!r}")
        self.code = code.upper()
        self.currency = currency.upper()
        self.currency_numeric = int(currency_numeric)
        self.exponent = int(exponent)
        self.rules = {p: RcnRule(p, *r) for p, r in rules.items()}

    def __repr__(self) -> str:
        return f"RcnRegion({self.code!r}, {self.currency!r}, rules={list(self.rules)})"


_SE_RULES = {
    "20": ("price", "PPPPPPPPVVVV", 2),
    "21": ("price", "PPPPPPPPVVVV", 1),
    "22": ("price", "PPPPPPPPVVVV", 0),
    "23": ("weight", "PPPPPPPPVVVV", 3),
    "24": ("weight", "PPPPPPPPVVVV", 2),
    "25": ("weight", "PPPPPPPPVVVV", 1),
}
_BALTIC_FI_RULES = {
    "23": ("weight", "PPPPPPPPVVVV", 3),
    "24": ("weight", "PPPPPPPPVVVV", 2),
    "25": ("weight", "PPPPPPPPVVVV", 1),
}

#: Built-in regions. A store adds or overrides one in its configuration
#: (see ``lanecore.core.config``), e.g. CN for the codes its scales print.
BUILTIN_REGIONS = {
    r.code: r for r in (
        # GS1 UK: 20 + 5-digit item + price check digit + 4-digit price in pence.
        RcnRegion("GB", "GBP", 826, 2, {"20": ("price", "PPPPPPPCVVVV", 2)}),
        # GS1 Sweden: 20-22 price with 2/1/0 decimals, 23-25 weight with 3/2/1.
        RcnRegion("SE", "SEK", 752, 2, _SE_RULES),
        RcnRegion("NO", "NOK", 578, 2, _SE_RULES),
        # GS1 Germany: 22/23 price, 25/26 count, 28/29 weight; 5 digits + check digit.
        RcnRegion("DE", "EUR", 978, 2, {
            "22": ("price", "PPPPPPCVVVVV", 2),
            "23": ("price", "PPPPPPCVVVVV", 2),
            "25": ("count", "PPPPPPCVVVVV", 0),
            "26": ("count", "PPPPPPCVVVVV", 0),
            "28": ("weight", "PPPPPPCVVVVV", 3),
            "29": ("weight", "PPPPPPCVVVVV", 3),
        }),
        # GS1 Denmark: 21-24 price, 26-28 weight.
        RcnRegion("DK", "DKK", 208, 2, {
            "21": ("price", "PPPPPPVVVVVV", 2),
            "22": ("price", "PPPPPPVVVVVV", 2),
            "23": ("price", "PPPPPPVVVVVV", 2),
            "24": ("price", "PPPPPPVVVVVV", 2),
            "26": ("weight", "PPPPPPVVVVVV", 3),
            "27": ("weight", "PPPPPPPVVVVV", 3),
            "28": ("weight", "PPPPPPVVVVVV", 3),
        }),
        RcnRegion("FI", "EUR", 978, 2, _BALTIC_FI_RULES),
        RcnRegion("EE", "EUR", 978, 2, _BALTIC_FI_RULES),
        RcnRegion("LV", "EUR", 978, 2, _BALTIC_FI_RULES),
        RcnRegion("LT", "EUR", 978, 2, _BALTIC_FI_RULES),
    )
}

# --------------------------------------------------------------------------------------
# Check digits (GenSpecs §7.9)
# --------------------------------------------------------------------------------------

#: Products of the price/weight check digit weighting factors, by digit (§7.9.2).
WEIGHT_2_MINUS = (0, 2, 4, 6, 8, 9, 1, 3, 5, 7)
WEIGHT_3 = (0, 3, 6, 9, 2, 5, 8, 1, 4, 7)
WEIGHT_5_PLUS = (0, 5, 1, 6, 2, 7, 3, 8, 4, 9)
WEIGHT_5_MINUS = (0, 5, 9, 4, 8, 3, 7, 2, 6, 1)
#: digit d such that WEIGHT_5_MINUS[d] == i
WEIGHT_5_MINUS_INVERSE = tuple(WEIGHT_5_MINUS.index(i) for i in range(10))

# --------------------------------------------------------------------------------------
# Symbology identifiers (ISO/IEC 15424) and Datalogic Magellan label prefixes
# --------------------------------------------------------------------------------------

#: What the data after each AIM symbology identifier is read as.
SYMBOLOGY_READS = {
    "]E0": "ean",        # EAN-13, UPC-A, or UPC-E
    "]E4": "ean8",       # EAN-8
    "]E3": "ean_addon",  # EAN/UPC with a 2- or 5-digit add-on
    "]I1": "itf",        # ITF with check digit: ITF-14
    "]C1": "gs1",        # GS1-128
    "]e0": "gs1",        # GS1 DataBar (all kinds)
    "]Q3": "gs1",        # GS1 QR Code
    "]d2": "gs1",        # GS1 DataMatrix
    "]J1": "gs1",        # GS1 DotCode
    "]Q1": "text",       # QR Code (ISO/IEC 18004), no FNC1
    "]C0": "text",       # Code 128, not GS1-128
    "]A0": "text",       # Code 39
    "]d1": "text",       # DataMatrix, not GS1
}

#: Magellan single-cable scanner-scale label prefixes (after "S08").
MAGELLAN_READS = {
    "A": "upca",    # UPC-A
    "E": "upce",    # UPC-E (number system + 6 digits, check digit optional)
    "F": "ean13",   # EAN-13
    "FF": "ean8",   # EAN-8
    "R4": "gs1",    # GS1 DataBar
    "RX": "gs1",    # GS1 DataBar Expanded
    "B1": "text",   # Code 39
    "B2": "itf",    # Interleaved 2 of 5
    "B3": "text",   # Code 128
}
