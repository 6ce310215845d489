"""A realistic stream of scans for benchmarks, the demo and tests.

What a supermarket's scanners send in a day, in rough proportion: mostly EAN-13 and
UPC-A, some EAN-8 and UPC-E, in-store price and weight labels from the deli and
produce scales, GS1 DataBar and GS1-128 codes with expiry dates, batches and weights,
items the catalogue does not know, and the garbage that misreads and keyboards
produce. Every code comes with the kind a correct parser must report (or the error
code it must give), so a consumer can check itself against the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lanecore.ext.barcode import gs1_check_digit, price_check_digit

#: Share of each sort of scan in a mix (sums to 1).
DEFAULT_MIX = {
    "ean13": 0.50,
    "upca": 0.12,
    "ean8": 0.04,
    "upce": 0.04,
    "symbology": 0.08,   # the same codes behind ]E0 / ]E4 / Magellan S08x prefixes
    "instore": 0.09,     # price or weight labels from the store's scales
    "gs1": 0.07,         # DataBar / GS1-128 element strings
    "unknown": 0.03,     # valid codes the catalogue does not list
    "bad": 0.03,         # misreads and garbage
}


@dataclass(frozen=True)
class Scan:
    """One scan and what a correct parser says about it."""

    code: str
    sort: str
    expect_kind: str | None    # None when the scan must be rejected
    expect_error: str | None   # the error code a correct parser gives, if rejected


def _with_check(payload: str) -> str:
    return payload + str(gs1_check_digit(payload))


def _rand_digits(rng: np.random.Generator, n: int) -> str:
    return "".join(map(str, rng.integers(0, 10, n)))


def _gtin13(rng) -> str:
    prefix = str(rng.choice([400, 401, 500, 539, 690, 703, 730, 760, 800, 840, 870, 930]))
    return _with_check(prefix + _rand_digits(rng, 9))


def _upce8(rng) -> str:
    """A UPC-E code (8 digits) whose expansion is a valid UPC-A."""
    from lanecore.ext.barcode import upce_to_upca
    ns = str(rng.integers(0, 2))
    # A leading non-zero keeps the expansion clear of the all-zero company prefixes,
    # whose GTINs are the same numbers as restricted-circulation GTIN-8s.
    six = str(rng.integers(1, 10)) + _rand_digits(rng, 5)
    return ns + six + str(gs1_check_digit(upce_to_upca(ns, six)))


# In-store label layouts used by the generator, per region: (prefix, measure, P, C, V).
_INSTORE = {
    "GB": [("20", "price", 7, True, 4)],
    "SE": [("20", "price", 8, False, 4), ("23", "weight", 8, False, 4)],
    "DE": [("22", "price", 6, True, 5), ("28", "weight", 6, True, 5)],
}


def instore_code(rng, region: str, item: str | None = None) -> tuple[str, str]:
    """A valid in-store label for ``region``: (13-digit code, lookup GTIN-13).

    ``item`` is the item reference digits after the prefix; random when None.
    """
    prefix, _measure, p_len, has_c, v_len = _INSTORE[region][
        int(rng.integers(len(_INSTORE[region])))]
    ref = item if item is not None else _rand_digits(rng, p_len - 2)
    ref = (ref + "0" * p_len)[: p_len - 2]
    value = str(int(rng.integers(1, 10 ** v_len))).rjust(v_len, "0")
    check = str(price_check_digit(value)) if has_c else ""
    code = _with_check(prefix + ref + check + value)
    lookup = _with_check(prefix + ref + ("0" if has_c else "") + "0" * v_len)
    return code, lookup


def _gs1(rng, gtin14: str) -> str:
    sym = "]C1" if rng.random() < 0.5 else "]e0"
    parts = ["01" + gtin14]
    if rng.random() < 0.7:
        parts.append("17" + f"{int(rng.integers(26, 30)):02d}{int(rng.integers(1, 13)):02d}"
                     f"{int(rng.integers(1, 29)):02d}")
    if rng.random() < 0.4:
        parts.append("3103" + f"{int(rng.integers(50, 5000)):06d}")
    if rng.random() < 0.5:
        parts.append("10" + _rand_digits(rng, int(rng.integers(3, 9))) + "\x1d")
    if rng.random() < 0.2:
        parts.append("3922" + f"{int(rng.integers(100, 99999))}" + "\x1d")
    return sym + "".join(parts).rstrip("\x1d")


_BAD = [
    ("BAD_CHECK_DIGIT", lambda rng, g: g[:-1] + str((int(g[-1]) + 1 + int(rng.integers(9))) % 10)),
    ("BAD_LENGTH", lambda rng, g: g[: int(rng.integers(3, 7))]),
    ("NON_DIGIT", lambda rng, g: "X" + g[1:]),
    ("BAD_DATE", lambda rng, g: "]C101" + g.rjust(14, "0") + "17261341"),
    ("TRUNCATED_AI", lambda rng, g: "]C101" + g.rjust(14, "0")[:9]),
    ("UNKNOWN_AI", lambda rng, g: "]C1" + "05" + g),
    ("NUL_BYTE", lambda rng, g: g[:5] + "\x00" + g[5:]),
    ("NON_ASCII", lambda rng, g: g[:4] + "\u00e9" + g[4:]),
    ("EMPTY", lambda rng, g: "  \r"),
    ("TOO_LONG", lambda rng, g: g * 400),
]


def mixed_scans(n: int, *, seed: int = 0, region: str = "GB",
                gtins: list[str] | None = None, mix: dict[str, float] | None = None
                ) -> list[Scan]:
    """``n`` scans in the proportions of ``mix``.

    ``gtins`` are catalogue GTINs (14 digits) to draw known items from; in-store
    labels are drawn for ``region`` (GB, SE or DE). Without ``gtins`` every code is
    random but valid where it should be.
    """
    if region not in _INSTORE:
        raise ValueError(f"mixed_scans knows in-store layouts for {sorted(_INSTORE)}")
    mix = mix or DEFAULT_MIX
    rng = np.random.default_rng(seed)
    sorts = list(mix)
    p = np.array([mix[s] for s in sorts], dtype=float)
    picks = rng.choice(len(sorts), size=n, p=p / p.sum())
    known13 = [g[1:] for g in (gtins or []) if g[0] == "0" and g[1:3] not in
               ("02", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "04")
               and not g.startswith("000000")]
    known12 = [g[2:] for g in (gtins or []) if g.startswith("00") and not g.startswith("000000")
               and g[2] not in "24"]
    known8 = [g[6:] for g in (gtins or []) if g.startswith("000000") and g[6] not in "02"]
    instore_refs = [g for g in (gtins or []) if g[1:3] in {r[0] for r in _INSTORE[region]}]
    out: list[Scan] = []
    for k in picks:
        sort = sorts[k]
        if sort == "ean13":
            code = known13[int(rng.integers(len(known13)))] if known13 else _gtin13(rng)
            out.append(Scan(code, sort, "gtin", None))
        elif sort == "upca":
            code = (known12[int(rng.integers(len(known12)))] if known12
                    else _with_check("0" + _rand_digits(rng, 10)))
            out.append(Scan(code, sort, "gtin", None))
        elif sort == "ean8":
            code = (known8[int(rng.integers(len(known8)))] if known8
                    else _with_check(str(rng.choice([40, 50, 73, 87])) + _rand_digits(rng, 5)))
            out.append(Scan(code, sort, "gtin", None))
        elif sort == "upce":
            out.append(Scan("]E0" + _upce8(rng), sort, "gtin", None))
        elif sort == "symbology":
            g = known13[int(rng.integers(len(known13)))] if known13 else _gtin13(rng)
            prefix = ["]E0", "S08F", ""][int(rng.integers(3))]
            out.append(Scan(prefix + g + ("\r" if prefix.startswith("S08") else ""), sort,
                            "gtin", None))
        elif sort == "instore":
            if instore_refs:
                ref_gtin = instore_refs[int(rng.integers(len(instore_refs)))]
                p_len = next(r[2] for r in _INSTORE[region] if r[0] == ref_gtin[1:3])
                code, _ = instore_code(rng, region, ref_gtin[3:1 + p_len])
            else:
                code, _ = instore_code(rng, region)
            out.append(Scan(code, sort, "rcn", None))
        elif sort == "gs1":
            g = ("0" + known13[int(rng.integers(len(known13)))]) if known13 else "0" + _gtin13(rng)
            out.append(Scan(_gs1(rng, g), sort, "gs1", None))
        elif sort == "unknown":
            out.append(Scan(_with_check("99" + _rand_digits(rng, 10)), sort, "gtin", None))
        else:
            err, make = _BAD[int(rng.integers(len(_BAD)))]
            out.append(Scan(make(rng, _gtin13(rng)), sort, None, err))
    return out
