"""Weigh-check verdicts that explain themselves.

An exit lane weighs a paid order on a conveyor and decides whether the shopper is
leaving with what they paid for::

    from lanecore.core.weigh.verify import VerifyPolicy, verify, load_order
    v = verify(load_order("ORDER.json"), measured_g=1234.5, table=catalog.table())
    v.verdict          # "ok", "short" or "over"
    v.to_dict()        # the Verdict JSON (docs/weigh/verification.md)

The numbers (grams, g² for variances):

* expected = Σ qty·μ_i + tare;  σ_total = sqrt(Σ qty·σ_i² + tare_sd² + σ_scale²)
* band = max(floor, k·σ_total + MPE(expected)), MPE from the OIML table of the policy
* verdict "ok" when |measured - expected| <= band, else "short" or "over"
* for "short"/"over": the sets of missing (extra) units and the unscanned catalogue
  items that best explain the difference, ranked by posterior probability.

Every refusal is a :class:`VerifyError` with a stable ``code`` (EMPTY_ORDER,
BAD_ORDER, BAD_GTIN, BAD_QUANTITY, BAD_WEIGHT, UNKNOWN_ITEM, NO_WEIGHT_DATA,
BAD_MEASUREMENT, OVER_CAPACITY, BAD_POLICY, UNKNOWN_REGION, ORDER_NOT_FOUND,
ORDER_UNREADABLE): never a verdict from bad or missing data.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from lanecore.core.errors import LanecoreError
from lanecore.ext import tolerance as _tol
from lanecore.ext.barcode import parse_scan
from lanecore.ext.lookup import FLAG_VARIABLE_MEASURE, FLAG_WEIGHT_EXEMPT, CatalogTable

__all__ = [
    "VerifyError", "VerifyPolicy", "Verdict", "OrderLine", "Order", "CatalogWeights",
    "DEFAULT_POLICY", "MPE_TABLES", "CAPACITY_E", "MAX_QTY", "MAX_LINES", "MAX_ORDER_BYTES",
    "max_permissible_error_g", "parse_order", "load_order", "verify",
]

#: Max permissible errors as rows (upper limit of the load, error), both in units of
#: e; a row covers loads above the previous row's limit up to and including its own.
MPE_TABLES: dict[str, tuple[tuple[float, float], ...]] = {
    # OIML R76 class III non-automatic scales, at initial verification
    "r76": ((500.0, 0.5), (2000.0, 1.0), (10000.0, 1.5)),
    # OIML R51 category Y(a) automatic catchweighers, in automatic operation
    "r51": ((500.0, 1.0), (2000.0, 1.5), (10000.0, 2.0)),
}
#: The largest load (in e) the tables cover: the weigh-check scale's Max.
CAPACITY_E = 10000.0
#: Largest quantity on one line.
MAX_QTY = 10000
#: Most lines in one order.
MAX_LINES = 1000
#: Largest ORDER.json read.
MAX_ORDER_BYTES = 4 * 1024 * 1024

_MPE_ARRAYS = {name: (np.ascontiguousarray([r[0] for r in rows], dtype=np.float64),
                      np.ascontiguousarray([r[1] for r in rows], dtype=np.float64))
               for name, rows in MPE_TABLES.items()}
_ORDER_KEYS = frozenset({"lines", "tare_g", "tare_sd_g"})
_LINE_KEYS = frozenset({"gtin", "qty", "unit_weight_g", "weight_sd_g"})
_GTIN_LENGTHS = (8, 12, 13, 14)
# A posterior below this rounds to 0.0000 and explains nothing: left out.
_MIN_SCORE = 0.00005
#: Most unit multisets one explanation search may visit (about 40 ns each compiled):
#: a very long order is searched with fewer units per hypothesis instead of slowly.
SEARCH_BUDGET = 2_000_000


def _search_units(n_lines: int, max_units: int) -> int:
    """``max_units``, lowered until C(n + u - 1, u) multisets fit the budget."""
    units = max_units
    while units > 1 and math.comb(n_lines + units - 1, units) > SEARCH_BUDGET:
        units -= 1
    return units


class VerifyError(LanecoreError):
    """An order, measurement or policy the weigh-check cannot judge."""

    code = "BAD_ORDER"


def _is_number(x) -> bool:
    t = type(x)
    if t is float or t is int:
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
    if type(x) is int:
        return True
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyPolicy:
    """How wide the band is and how explanations are scored. Grams throughout.

    ``k``: coverage factor on σ_total (3.29: two-sided 0.1 % for a Gaussian).
    ``e_g``: the scale's verification interval e. ``mpe_table``: "r51" (automatic
    weighing on a moving conveyor, the default) or "r76" (non-automatic).
    ``scale_sd_g``: the scale's standard deviation (None: 0.5·e). ``floor_g``: the
    narrowest band (None: 2·e). ``max_units``: most units one explanation may hold.
    ``p_miss``, ``p_extra_line``, ``p_unscanned``: prior probabilities of a paid unit
    missing, of an extra unit of an order line, of one unscanned catalogue item.
    ``top_k``: most explanations returned. ``variable_measure_sd_g``: σ of a weight
    printed on an in-store label.
    """

    k: float = 3.29
    e_g: float = 5.0
    mpe_table: str = "r51"
    scale_sd_g: float | None = None
    floor_g: float | None = None
    max_units: int = 3
    p_miss: float = 0.01
    p_extra_line: float = 0.01
    p_unscanned: float = 0.01
    top_k: int = 5
    variable_measure_sd_g: float = 1.0

    def __post_init__(self):
        def bad(name, want):
            raise VerifyError(f"policy {name} = {getattr(self, name)!r}: {want}",
                              code="BAD_POLICY")

        def positive(name, *, zero_ok=False, upper=math.inf):
            x = getattr(self, name)
            if not _is_number(x) or not math.isfinite(x) or x > upper or \
                    (x < 0 if zero_ok else x <= 0):
                bad(name, f"must be a finite number {'>=' if zero_ok else '>'} 0"
                    + (f" and <= {upper}" if upper < math.inf else ""))

        positive("k", upper=100.0)
        positive("e_g", upper=1e6)
        if not isinstance(self.mpe_table, str) or self.mpe_table not in MPE_TABLES:
            bad("mpe_table", f"must be one of {sorted(MPE_TABLES)}")
        if self.scale_sd_g is not None:
            positive("scale_sd_g")  # a real scale has noise; 0 would make σ_total 0
        if self.floor_g is not None:
            positive("floor_g", zero_ok=True)
        if not _is_int(self.max_units) or not 1 <= self.max_units <= _tol.MAX_UNITS_LIMIT:
            bad("max_units", f"must be an integer 1..{_tol.MAX_UNITS_LIMIT}")
        for name in ("p_miss", "p_extra_line", "p_unscanned"):
            p = getattr(self, name)
            if not _is_number(p) or not 0.0 < p < 1.0:
                bad(name, "must be a probability strictly between 0 and 1")
        if not _is_int(self.top_k) or not 1 <= self.top_k <= 50:
            bad("top_k", "must be an integer 1..50")
        positive("variable_measure_sd_g", zero_ok=True)

    @property
    def sigma_scale_g(self) -> float:
        """The scale's standard deviation (g): ``scale_sd_g`` or 0.5·e."""
        return float(self.scale_sd_g) if self.scale_sd_g is not None else 0.5 * self.e_g

    @property
    def band_floor_g(self) -> float:
        """The narrowest band (g): ``floor_g`` or 2·e."""
        return float(self.floor_g) if self.floor_g is not None else 2.0 * self.e_g

    @property
    def mpe_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The error table as the kernels take it: (upper limits, errors), in e."""
        return _MPE_ARRAYS[self.mpe_table]

    @property
    def capacity_g(self) -> float:
        """The largest expected load the error table covers (10000·e)."""
        return CAPACITY_E * self.e_g


#: The policy :func:`verify` uses unless given another.
DEFAULT_POLICY = VerifyPolicy()


def max_permissible_error_g(load_g: float, e_g: float = 5.0, table: str = "r51") -> float:
    """The max permissible error (g) at ``load_g`` (g) for a scale of interval ``e_g``
    under ``table`` ("r51" or "r76"). A load of exactly 500 e takes the first row's
    error; loads below zero count as zero. Raises VerifyError OVER_CAPACITY beyond
    10000 e, BAD_POLICY for an unknown table or a bad e, BAD_WEIGHT for a load that is
    not a number."""
    if table not in _MPE_ARRAYS:
        raise VerifyError(f"unknown error table {table!r}; one of {sorted(MPE_TABLES)}",
                          code="BAD_POLICY")
    if not _is_number(e_g) or not 0 < e_g < math.inf:
        raise VerifyError(f"e = {e_g!r} must be a finite number > 0", code="BAD_POLICY")
    if not _is_number(load_g) or math.isnan(load_g):
        raise VerifyError(f"load {load_g!r} is not a number of grams", code="BAD_WEIGHT")
    upper, mpe = _MPE_ARRAYS[table]
    out = _tol.mpe_at(float(load_g), float(e_g), upper, mpe)
    if math.isnan(out):
        raise VerifyError(f"load {load_g:g} g is beyond the scale's capacity "
                          f"{CAPACITY_E * e_g:g} g (10000 e)", code="OVER_CAPACITY")
    return out


# --------------------------------------------------------------------------------------
# The order
# --------------------------------------------------------------------------------------

class OrderLine(NamedTuple):
    """One validated order line. ``gtin``: 14 digits as scanned; ``lookup_key``: the
    catalogue key (an in-store code's variable part zeroed when a region is given)."""

    gtin: str
    lookup_key: int
    kind: str              # "gtin" or "rcn"
    qty: int
    unit_weight_g: float | None
    weight_sd_g: float | None
    #: unit_weight_g is the weight an in-store code carries (a printed label)
    from_label: bool = False


@dataclass(frozen=True)
class Order:
    lines: tuple[OrderLine, ...]
    tare_g: float = 0.0
    tare_sd_g: float = 0.0


def _weight(value, what: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise VerifyError(f"{what} = {value!r} must be a finite number of grams >= 0",
                          code="BAD_WEIGHT")
    return float(value) + 0.0


def parse_order(order, region: str | None = None) -> Order:
    """Validate an order (the ORDER.json object) without the catalogue.

    ``{"lines": [{"gtin", "qty", "unit_weight_g"?, "weight_sd_g"?}, ...], "tare_g"?,
    "tare_sd_g"?}``; an optional key that is null counts as absent. ``region`` decides
    how in-store codes are looked up (``lanecore.parse_scan``). Raises VerifyError
    BAD_ORDER, EMPTY_ORDER, BAD_GTIN, BAD_QUANTITY, BAD_WEIGHT, UNKNOWN_REGION.
    """
    if region is not None and parse_scan("96385074", region).error_code == "UNKNOWN_REGION":
        raise VerifyError(f"region {region!r} has no in-store code rules",
                          code="UNKNOWN_REGION")
    if not isinstance(order, Mapping):
        raise VerifyError(f"an order is a JSON object, not {type(order).__name__}",
                          code="BAD_ORDER")
    unknown = [k for k in order if k not in _ORDER_KEYS]
    if unknown:
        raise VerifyError(f"unknown order key(s) {sorted(map(str, unknown))}; an order "
                          f"has {sorted(_ORDER_KEYS)}", code="BAD_ORDER")
    if "lines" not in order:
        raise VerifyError("the order has no \"lines\"", code="BAD_ORDER")
    raw_lines = order["lines"]
    if not isinstance(raw_lines, (list, tuple)):
        raise VerifyError(f"\"lines\" is a list, not {type(raw_lines).__name__}",
                          code="BAD_ORDER")
    if not raw_lines:
        raise VerifyError("the order has no lines", code="EMPTY_ORDER")
    if len(raw_lines) > MAX_LINES:
        raise VerifyError(f"the order has {len(raw_lines)} lines; at most {MAX_LINES}",
                          code="BAD_ORDER")
    lines = tuple(_parse_line(i, raw, region) for i, raw in enumerate(raw_lines))
    tare = order.get("tare_g")
    tare_sd = order.get("tare_sd_g")
    return Order(lines, 0.0 if tare is None else _weight(tare, "tare_g"),
                 0.0 if tare_sd is None else _weight(tare_sd, "tare_sd_g"))


def _parse_line(i: int, raw, region) -> OrderLine:
    if not (type(raw) is dict or isinstance(raw, Mapping)):
        raise VerifyError(f"line {i} is a JSON object, not {type(raw).__name__}",
                          code="BAD_ORDER")
    if not _LINE_KEYS.issuperset(raw):
        unknown = sorted(str(k) for k in raw if k not in _LINE_KEYS)
        raise VerifyError(f"line {i}: unknown key(s) {unknown}; a line has "
                          f"{sorted(_LINE_KEYS)}", code="BAD_ORDER")
    text = raw.get("gtin")
    qty = raw.get("qty")
    if text is None or qty is None:
        raise VerifyError(f"line {i} has no \"{'gtin' if text is None else 'qty'}\"",
                          code="BAD_ORDER")

    if type(text) is not str:
        raise VerifyError(f"line {i}: gtin {text!r} must be a string of 8, 12, 13 or 14 "
                          "digits", code="BAD_GTIN")
    g = text.strip()
    if not (g.isascii() and g.isdigit() and len(g) in _GTIN_LENGTHS):
        raise VerifyError(f"line {i}: gtin {text[:40]!r} is not 8, 12, 13 or 14 digits",
                          code="BAD_GTIN")
    scan = parse_scan(g, region)
    if not scan.ok:
        raise VerifyError(f"line {i}: gtin {g}: {scan.error_message} ({scan.error_code})",
                          code="BAD_GTIN")
    kind = scan.kind
    if (kind != "gtin" and kind != "rcn") or scan.lookup_key is None:
        raise VerifyError(f"line {i}: {g} is a {kind} code, not a GTIN", code="BAD_GTIN")
    gtin = scan.gtin

    if not (type(qty) is int or _is_int(qty)) or not 1 <= qty <= MAX_QTY:
        raise VerifyError(f"line {i} ({gtin}): qty {qty!r} must be a whole number "
                          f"1..{MAX_QTY}", code="BAD_QUANTITY")
    w = raw.get("unit_weight_g")
    from_label = False
    if w is not None:
        w = _weight(w, f"line {i} ({gtin}) unit_weight_g")
    elif scan.weight_g is not None:
        # an in-store weight code read by the region's rules: the label's weight
        w, from_label = float(scan.weight_g), True
    sd = raw.get("weight_sd_g")
    if sd is not None:
        sd = _weight(sd, f"line {i} ({gtin}) weight_sd_g")
    return OrderLine(gtin, int(scan.lookup_key), kind, int(qty), w, sd, from_label)


def load_order(path: str | os.PathLike) -> dict:
    """Read and validate an ORDER.json file; returns the order object (a dict).

    Raises VerifyError ORDER_NOT_FOUND, ORDER_UNREADABLE (cannot be read, larger than
    4 MiB, not UTF-8, not JSON), and the codes of :func:`parse_order`.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = f.read(MAX_ORDER_BYTES + 1)
    except FileNotFoundError as exc:
        raise VerifyError(f"order file {where} does not exist",
                          code="ORDER_NOT_FOUND") from exc
    except OSError as exc:
        raise VerifyError(f"cannot read order file {where}: {exc.strerror or exc}",
                          code="ORDER_UNREADABLE") from exc
    if len(data) > MAX_ORDER_BYTES:
        raise VerifyError(f"order file {where} is larger than {MAX_ORDER_BYTES} bytes",
                          code="ORDER_UNREADABLE")
    try:
        order = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise VerifyError(f"order file {where} is not UTF-8: {exc}",
                          code="ORDER_UNREADABLE") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise VerifyError(f"order file {where} is not JSON: {exc}",
                          code="ORDER_UNREADABLE") from exc
    parse_order(order)
    return order


# --------------------------------------------------------------------------------------
# The catalogue's weights, sorted once per table
# --------------------------------------------------------------------------------------

class CatalogWeights:
    """The catalogue items an unscanned-item explanation may name, sorted by unit
    weight: not weight-exempt, not variable-measure, with a finite mean and standard
    deviation. Build it once per table (:meth:`for_table` caches)."""

    _cache: OrderedDict = OrderedDict()
    _cache_lock = threading.Lock()
    _CACHE_SIZE = 2

    def __init__(self, table: CatalogTable, window_sigmas: float = _tol.WINDOW_SIGMAS):
        if not isinstance(table, CatalogTable):
            raise TypeError(f"CatalogWeights needs a CatalogTable, not "
                            f"{type(table).__name__}")
        self.table = table
        w, sd = table.weight_mean_g, table.weight_sd_g
        usable = (np.isfinite(w) & np.isfinite(sd) & (w >= 0) & (sd >= 0)
                  & ((table.flags & (FLAG_WEIGHT_EXEMPT | FLAG_VARIABLE_MEASURE)) == 0))
        rows = np.flatnonzero(usable)
        rows = rows[np.argsort(w[rows], kind="stable")]
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.weight_g = np.ascontiguousarray(w[rows])
        self.sd_g = np.ascontiguousarray(sd[rows])
        self.window_sigmas = float(window_sigmas)
        self.below, self.above = _tol.catalog_envelopes(self.weight_g, self.sd_g,
                                                        self.window_sigmas)
        self.position_of_row = np.full(len(table), -1, dtype=np.int64)
        self.position_of_row[rows] = np.arange(len(rows))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def arrays(self) -> tuple:
        """(weight_sorted, sd_sorted, below, above), as the kernels take them."""
        return self.weight_g, self.sd_g, self.below, self.above

    def gtin14(self, position: int) -> str:
        return "%014d" % int(self.table.gtin[self.rows[position]])

    @classmethod
    def for_table(cls, table: CatalogTable) -> CatalogWeights:
        """The (cached) CatalogWeights of ``table``; the last two tables are kept."""
        key = id(table)
        with cls._cache_lock:
            hit = cls._cache.get(key)
            if hit is not None and hit.table is table:
                cls._cache.move_to_end(key)
                return hit
        made = cls(table)
        with cls._cache_lock:
            cls._cache[key] = made
            cls._cache.move_to_end(key)
            while len(cls._cache) > cls._CACHE_SIZE:
                cls._cache.popitem(last=False)
        return made


# --------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """A weigh-check verdict (grams). ``explanations`` are dicts, most likely first."""

    verdict: str
    expected_g: float
    measured_g: float
    band_g: float
    sigma_g: float
    z: float
    mpe_g: float
    explanations: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The Verdict JSON: weights to 0.1 g, z to 0.01, scores to 0.0001."""
        def r(x, nd):
            return round(x, nd) + 0.0  # + 0.0: no "-0.0" in the JSON

        return {"verdict": self.verdict, "expected_g": r(self.expected_g, 1),
                "measured_g": r(self.measured_g, 1), "band_g": r(self.band_g, 1),
                "sigma_g": r(self.sigma_g, 1), "z": r(self.z, 2), "mpe_g": r(self.mpe_g, 1),
                "explanations": [dict(e, score=r(e["score"], 4),
                                      lines=[dict(x) for x in e["lines"]])
                                 for e in self.explanations]}


@dataclass
class _Weighed:
    """The weighed lines of an order (weight-exempt lines left out), merged by
    (GTIN, μ, σ)."""

    gtins: list
    mu: np.ndarray
    sd: np.ndarray
    qty: np.ndarray
    lookup_keys: np.ndarray   # of every line, exempt ones too (uint64)


def _resolve(order: Order, table: CatalogTable | None, policy: VerifyPolicy) -> _Weighed:
    lines = order.lines
    n = len(lines)
    keys = np.fromiter((line.lookup_key for line in lines), dtype=np.uint64, count=n)
    if table is not None:
        rows = table.lookup_many(keys).astype(np.int64)
        at = np.where(rows >= 0, rows, 0)
        found = rows >= 0
        flag_of = np.where(found, table.flags[at], 0).tolist() if len(table) else [0] * n
        mean_of = table.weight_mean_g[at].tolist() if len(table) else [math.nan] * n
        sd_of = table.weight_sd_g[at].tolist() if len(table) else [math.nan] * n
        rows = rows.tolist()
    else:
        rows, flag_of = [-1] * n, [0] * n
    merged: dict[tuple, int] = {}
    gtins, mus, sds, qtys = [], [], [], []
    for i, line in enumerate(lines):
        row, flags = rows[i], flag_of[i]
        if flags & FLAG_WEIGHT_EXEMPT:
            continue  # adds nothing and widens nothing
        if flags & FLAG_VARIABLE_MEASURE or line.from_label:
            if line.unit_weight_g is None:
                raise VerifyError(f"{line.gtin} is a variable-measure item: the line must "
                                  "carry unit_weight_g (the weight on its label)",
                                  code="NO_WEIGHT_DATA")
            mu = line.unit_weight_g
            sd = line.weight_sd_g if line.weight_sd_g is not None \
                else policy.variable_measure_sd_g
        else:
            if line.unit_weight_g is not None:
                mu = line.unit_weight_g
            elif table is None:
                raise VerifyError(f"{line.gtin} has no unit_weight_g and no catalogue "
                                  "was given to look it up", code="UNKNOWN_ITEM")
            elif row < 0:
                raise VerifyError(f"{line.gtin} has no unit_weight_g and is not in the "
                                  "catalogue", code="UNKNOWN_ITEM")
            else:
                mu = mean_of[i]
                if not math.isfinite(mu):
                    raise VerifyError(f"the catalogue has no unit weight for {line.gtin}",
                                      code="NO_WEIGHT_DATA")
            if line.weight_sd_g is not None:
                sd = line.weight_sd_g
            elif row >= 0 and math.isfinite(sd_of[i]):
                sd = sd_of[i]
            elif row < 0 and line.kind == "rcn":
                # an in-store label's printed weight
                sd = policy.variable_measure_sd_g
            else:
                raise VerifyError(f"no weight standard deviation is known for "
                                  f"{line.gtin}: give weight_sd_g or list it in the "
                                  "catalogue", code="NO_WEIGHT_DATA")
        key = (line.gtin, mu, sd)
        at = merged.get(key)
        if at is None:
            merged[key] = len(gtins)
            gtins.append(line.gtin)
            mus.append(mu)
            sds.append(sd)
            qtys.append(float(line.qty))
        else:
            qtys[at] += line.qty
    return _Weighed(gtins, np.array(mus, dtype=np.float64), np.array(sds, dtype=np.float64),
                    np.array(qtys, dtype=np.float64), keys)


def _measurement(measured_g, policy: VerifyPolicy) -> float:
    if not _is_number(measured_g) or not math.isfinite(measured_g) or \
            measured_g < -10.0 * policy.e_g:
        raise VerifyError(f"measured weight {measured_g!r} must be a finite number of "
                          f"grams >= -10 e ({-10.0 * policy.e_g:g} g)",
                          code="BAD_MEASUREMENT")
    return float(measured_g)


def verify(order, measured_g: float, table: CatalogTable | None = None,
           policy: VerifyPolicy | None = DEFAULT_POLICY,
           catalog_weights: CatalogWeights | None = None, *,
           region: str | None = None) -> Verdict:
    """Judge a paid order against its measured weight (g).

    ``order`` is the ORDER.json object (or a parsed :class:`Order`); ``table`` supplies
    the weights a line omits, the item flags (weight-exempt, variable-measure) and the
    candidates for an unscanned item; ``catalog_weights`` is its sorted-weight index
    (built and cached from ``table`` when omitted). ``region`` reads in-store codes
    (``lanecore.parse_scan``). Returns a :class:`Verdict`; raises VerifyError (see the
    module docstring) for anything it cannot judge.
    """
    policy = DEFAULT_POLICY if policy is None else policy
    if not isinstance(policy, VerifyPolicy):
        raise VerifyError(f"policy must be a VerifyPolicy, not {type(policy).__name__}",
                          code="BAD_POLICY")
    if table is not None and not isinstance(table, CatalogTable):
        raise TypeError(f"table must be a CatalogTable, not {type(table).__name__}")
    if catalog_weights is not None:
        if not isinstance(catalog_weights, CatalogWeights):
            raise TypeError("catalog_weights must be a CatalogWeights")
        if table is not None and catalog_weights.table is not table:
            raise ValueError("catalog_weights was built for another table")
    parsed = order if isinstance(order, Order) else parse_order(order, region)
    measured = _measurement(measured_g, policy)
    weighed = _resolve(parsed, table, policy)

    code, expected, var_total, mpe_g, band_g, z = _judge(weighed, parsed, measured, policy)
    if code == _tol.VERDICT_OVER_CAPACITY:
        raise VerifyError(f"the order's expected weight {expected:.1f} g is beyond the "
                          f"scale's capacity {policy.capacity_g:g} g (10000 e)",
                          code="OVER_CAPACITY")
    if code == _tol.VERDICT_INVALID:  # pragma: no cover - inputs are validated above
        raise VerifyError("the order's weights do not add up to a finite number",
                          code="BAD_WEIGHT")
    verdict = _tol.VERDICT_NAMES[code]
    explanations: list = []
    if code == _tol.VERDICT_SHORT:
        explanations = _explain_short(weighed, measured, expected, var_total, policy)
    elif code == _tol.VERDICT_OVER:
        if catalog_weights is None and table is not None:
            catalog_weights = CatalogWeights.for_table(table)
        explanations = _explain_over(weighed, measured, expected, var_total, policy,
                                     catalog_weights)
    return Verdict(verdict, expected, measured, band_g, math.sqrt(var_total), z, mpe_g,
                   explanations)


def _judge(w: _Weighed, order: Order, measured: float, policy: VerifyPolicy) -> tuple:
    """One exit through the batch kernel (the same arithmetic as a lane's batch):
    (code, expected_g, var_g2, mpe_g, band_g, z)."""
    upper, mpe = policy.mpe_rows
    f = np.empty(8)   # tare, tare_sd, measured, then the kernel's five outputs
    f[0], f[1], f[2] = order.tare_g, order.tare_sd_g, measured
    code = np.empty(1, np.int8)
    _tol.verdict_batch(w.mu, w.sd, w.qty, np.array([0, len(w.gtins)], dtype=np.int64),
                       f[0:1], f[1:2], f[2:3], policy.sigma_scale_g, float(policy.k),
                       policy.band_floor_g, float(policy.e_g), upper, mpe,
                       f[3:4], f[4:5], f[5:6], f[6:7], f[7:8], code)
    return int(code[0]), float(f[3]), float(f[4]), float(f[5]), float(f[6]), float(f[7])


def _line_hypothesis(kind: str, gtins: list, counts) -> dict:
    units: dict[str, int] = {}
    for g, c in zip(gtins, counts.tolist()):
        if c:
            units[g] = units.get(g, 0) + int(c)
    lines = [{"gtin": g, "qty": c} for g, c in units.items()]
    one = len(lines) == 1
    return {"kind": kind, "score": 0.0, "lines": lines,
            "gtin": lines[0]["gtin"] if one else None,
            "qty": lines[0]["qty"] if one else None}


def _posteriors(null_score: float, scored: list, top_k: int) -> list:
    """Normalise log scores over the kept hypotheses plus "nothing": the best
    ``top_k`` with their probabilities, most likely first."""
    if not scored:
        return []
    logs = np.array([null_score] + [s for s, _ in scored])
    top = logs.max()
    probs = np.exp(logs - top)
    probs /= probs.sum()
    ranked = sorted(range(len(scored)), key=lambda i: -scored[i][0])[:top_k]
    out = []
    for i in ranked:
        p = float(probs[i + 1])
        if p >= _MIN_SCORE:
            out.append(dict(scored[i][1], score=p))
    return out


def _explain_short(w: _Weighed, measured, expected, var_total, policy) -> list:
    counts, scores = _tol.explain_missing(w.mu, w.sd, w.qty, measured, expected, var_total,
                                          max_units=_search_units(len(w.gtins),
                                                                  policy.max_units),
                                          p_miss=policy.p_miss, top_k=policy.top_k)
    scored = [(float(s), _line_hypothesis("missing", w.gtins, c))
              for c, s in zip(counts, scores)]
    return _posteriors(_tol.gauss_logpdf(expected - measured, var_total), scored,
                       policy.top_k)


def _explain_over(w: _Weighed, measured, expected, var_total, policy,
                  cw: CatalogWeights | None) -> list:
    catalog = skip = None
    if cw is not None and len(cw):
        catalog = cw.arrays
        # an item already on the order is an extra unit of its line, scored there
        rows = cw.table.lookup_many(w.lookup_keys)
        skip = cw.position_of_row[rows[rows >= 0]]
        skip = skip[skip >= 0]
    counts, scores, pos, item_scores = _tol.explain_extra(
        w.mu, w.sd, measured, expected, var_total, catalog=catalog, skip=skip,
        max_units=_search_units(len(w.gtins), policy.max_units),
        p_extra_line=policy.p_extra_line,
        p_unscanned=policy.p_unscanned, top_k=policy.top_k)
    scored = [(float(s), _line_hypothesis("extra", w.gtins, c))
              for c, s in zip(counts, scores)]
    for p, s in zip(pos.tolist(), item_scores.tolist()):
        g = cw.gtin14(p)
        scored.append((float(s), {"kind": "extra", "score": 0.0,
                                  "lines": [{"gtin": g, "qty": 1}], "gtin": g, "qty": 1}))
    return _posteriors(_tol.gauss_logpdf(measured - expected, var_total), scored,
                       policy.top_k)
