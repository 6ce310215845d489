"""A realistic synthetic store catalogue, for tests, benchmarks and demonstrations.

The rows are what a retailer's price-list export looks like (the columns of
``lanecore.core.scan.catalog.CSV_COLUMNS``):

* GTINs: mostly GTIN-13 under real-looking GS1 prefixes (weighted towards the store's
  own country), about 10 % GTIN-12 (UPC-A, written as 12 digits) and 2 % GTIN-8; about
  2 % in-store variable-measure items listed by their lookup GTIN (variable part
  zeroed) for the region's in-store code rules. All GTINs are unique and carry valid
  check digits; none uses the restricted prefixes 02, 04 or 20-29 except the in-store
  items.
* ``price_minor``: integer minor units, log-normal (median about 250, most between 30
  and 5,000, a few up to 50,000); per kilogram for variable-measure items.
* ``unit_weight_g``: grams, log-normal (median about 400 g, most between 20 g and
  5 kg); ``weight_sd_g`` is 1-4 % of it plus a 0.5 g floor. Both empty for
  weight-exempt and variable-measure items.
* flags: about 3 % weight_exempt (gift cards, magazines), 2 % variable_measure, 5 %
  eas_tagged, 3 % age_restricted (alcohol and tobacco).
* product information: origin, producer, inspection, supply chain, and a promotion on
  about 10 % of the items.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same ``rows``,
``seed`` and ``region`` always give the same catalogue.
"""

from __future__ import annotations

import datetime as _dt
import operator
import os
from collections.abc import Callable, Iterator

import numpy as np

from lanecore.core.scan.catalog import CSV_COLUMNS
from lanecore.core.errors import CatalogError
from lanecore.ext import barcode

__all__ = ["generate_catalog", "write_catalog_csv", "with_check_digit", "MAX_ROWS"]

#: Most rows one call generates: the company-prefix space bounds how many unique
#: GTIN-13s the generator can invent.
MAX_ROWS = 20_000_000

#: Rows turned into strings at a time; bounds the memory of the Python objects.
_CHUNK = 50_000

# Shares of the rows (fractions). In-store and weight-exempt items are drawn first;
# the GTIN kinds split the remaining, ordinary items.
P_VARIABLE_MEASURE = 0.02
P_WEIGHT_EXEMPT = 0.03
P_AGE_RESTRICTED = 0.03
P_EAS_TAGGED = 0.05
P_PROMOTION = 0.10
P_GTIN12 = 0.10
P_GTIN8 = 0.02

# --------------------------------------------------------------------------------------
# GS1 prefixes (first three digits of a GTIN-13) and what goes with a region
# --------------------------------------------------------------------------------------

_GS1_RANGES = [
    (300, 379),  # France
    (400, 440),  # Germany
    (450, 459), (490, 499),  # Japan
    (500, 509),  # United Kingdom
    (540, 549),  # Belgium and Luxembourg
    (560, 560),  # Portugal
    (570, 579),  # Denmark
    (590, 590),  # Poland
    (640, 649),  # Finland
    (690, 699),  # China
    (700, 709),  # Norway
    (730, 739),  # Sweden
    (760, 769),  # Switzerland
    (800, 839),  # Italy
    (840, 849),  # Spain
    (870, 879),  # Netherlands
    (900, 919),  # Austria
    (930, 939),  # Australia
    (940, 949),  # New Zealand
]
_GS1_PREFIXES = np.array([p for lo, hi in _GS1_RANGES for p in range(lo, hi + 1)],
                         dtype=np.int64)

_LOCAL = {
    # region: (GS1 prefix range, country, company suffixes, distribution centres)
    "GB": ((500, 509), "United Kingdom", ("Ltd", "plc", "& Sons Ltd"),
           ("Leeds", "Daventry", "Bristol", "Thurrock", "Livingston", "Crewe")),
    "SE": ((730, 739), "Sweden", ("AB", "AB", "Ek. för."),
           ("Jönköping", "Helsingborg", "Västerås", "Umeå")),
    "NO": ((700, 709), "Norway", ("AS", "ASA"),
           ("Vestby", "Trondheim", "Bergen", "Stavanger")),
    "DE": ((400, 440), "Germany", ("GmbH", "GmbH & Co. KG", "AG"),
           ("Hamm", "Bingen", "Kassel", "Minden", "Erfurt")),
    "DK": ((570, 579), "Denmark", ("A/S", "ApS"), ("Brøndby", "Vejle", "Aarhus")),
    "FI": ((640, 649), "Finland", ("Oy", "Oyj"), ("Vantaa", "Tampere", "Oulu")),
    "EE": ((474, 474), "Estonia", ("OÜ", "AS"), ("Tallinn", "Tartu")),
    "LV": ((475, 475), "Latvia", ("SIA", "AS"), ("Riga", "Daugavpils")),
    "LT": ((477, 477), "Lithuania", ("UAB", "AB"), ("Vilnius", "Kaunas")),
}
#: Share of the GTIN-13 companies registered in the store's own country.
_P_LOCAL_COMPANY = 0.4
#: Share of the items whose origin is the store's own country.
_P_LOCAL_ORIGIN = 0.45

_COUNTRIES = (
    "France", "Germany", "Japan", "United Kingdom", "Belgium", "Portugal", "Denmark",
    "Poland", "Finland", "China", "Norway", "Sweden", "Switzerland", "Italy", "Spain",
    "Netherlands", "Austria", "Australia", "New Zealand", "Ireland", "Greece",
    "Morocco",
    "Kenya", "Peru", "Chile", "Brazil", "South Africa", "Thailand", "Vietnam", "India",
    "United States", "Canada", "Mexico", "Colombia", "Costa Rica", "Turkey",
)

# --------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------

_BRANDS = (
    "Hartley's", "Greenfield", "Oakridge", "Blue Harbour", "Sunvale", "Kestrel",
    "Meadowbrook", "Northern Star", "Ashby", "Golden Acre", "Riverside", "Pemberton",
    "Wild Thyme", "Copper Kettle", "Highland", "Brookfield", "Silver Birch", "Nordlys",
    "Fjällgården", "Alpenhof", "Bella Terra", "Casa Verde", "Le Moulin", "Haverford",
    "Fenwick", "Tidewater", "Little Orchard", "Stonebridge", "Saffron", "Morning Glory",
    "Red Fox", "Whitby", "Clearspring", "Evergreen", "Heritage", "Windmill", "Crown",
    "Harvest Moon", "Old Mill", "Seaview",
)

# (product, liquid?)
_PRODUCTS = (
    ("Penne Pasta", False), ("Basmati Rice", False), ("Baked Beans", False),
    ("Chopped Tomatoes", False), ("Cornflakes", False), ("Porridge Oats", False),
    ("Strawberry Jam", False), ("Peanut Butter", False), ("Digestive Biscuits", False),
    ("Salted Crisps", False), ("Dark Chocolate", False), ("Ground Coffee", False),
    ("Tea Bags", False), ("Plain Flour", False), ("Granulated Sugar", False),
    ("Sea Salt", False), ("Olive Oil", True), ("Sunflower Oil", True),
    ("Tomato Ketchup", False), ("Mayonnaise", False), ("Greek Yoghurt", False),
    ("Semi-Skimmed Milk", True), ("Salted Butter", False), ("Mature Cheddar", False),
    ("Free Range Eggs", False), ("Sliced White Bread", False),
    ("Wholemeal Bread", False),
    ("Orange Juice", True), ("Apple Juice", True), ("Sparkling Water", True),
    ("Still Water", True), ("Cola", True), ("Lemonade", True), ("Frozen Peas", False),
    ("Fish Fingers", False), ("Chicken Breast Fillets", False), ("Beef Mince", False),
    ("Pork Sausages", False), ("Smoked Salmon", False), ("Tuna Chunks", False),
    ("Washing Up Liquid", True), ("Laundry Detergent", True), ("Toilet Tissue", False),
    ("Kitchen Roll", False), ("Shampoo", True), ("Toothpaste", False),
    ("Hand Soap", True), ("Dog Food", False), ("Cat Litter", False),
    ("Bin Bags", False), ("AA Batteries", False), ("Light Bulb", False),
    ("Muesli", False), ("Honey", False), ("Pesto", False), ("Curry Paste", False),
    ("Coconut Milk", True), ("Soy Sauce", True), ("Red Lentils", False),
    ("Chickpeas", False), ("Oat Drink", True), ("Ice Cream", False),
)
_PRODUCT_NAMES = tuple(p for p, _ in _PRODUCTS)
_PRODUCT_LIQUID = tuple(liquid for _, liquid in _PRODUCTS)

# (product, size) for age-restricted items
_AGE_PRODUCTS = (
    ("Lager", "4 x 440 ml"), ("Pale Ale", "500 ml"), ("Cider", "4 x 500 ml"),
    ("Red Wine", "75 cl"), ("White Wine", "75 cl"), ("Rosé Wine", "75 cl"),
    ("Prosecco", "75 cl"), ("London Dry Gin", "70 cl"), ("Single Malt Whisky", "70 cl"),
    ("Vodka", "70 cl"), ("Spiced Rum", "70 cl"), ("Cigarettes", "20 pack"),
    ("Rolling Tobacco", "30 g"), ("Cigarillos", "10 pack"), ("Vape Refills", "2 pack"),
)

_EXEMPT_PRODUCTS = (
    "Gift Card", "Magazine: Home & Garden", "Magazine: Weekly News", "Newspaper",
    "Greeting Card", "Phone Top-Up Voucher", "Postage Stamps (book of 8)",
    "Cinema Voucher", "Puzzle Magazine", "Music Gift Card",
)

_VM_PRODUCTS = (
    "Loose Bananas", "Loose Carrots", "Loose Red Apples", "Loose Brown Onions",
    "Loose Potatoes", "Loose Tomatoes", "Loose Mushrooms", "Deli Honey Roast Ham",
    "Deli Salami", "Deli Olives", "Cheddar Cut to Order", "Brie Cut to Order",
    "Salmon Fillets", "Cod Loins", "Beef Rump Steak", "Lamb Chops", "Pick & Mix Sweets",
    "Loose Grapes", "Loose Peppers", "Rotisserie Chicken",
)

_SURNAMES = (
    "Hartley", "Whitmore", "Ellison", "Carver", "Pryce", "Lindqvist", "Bergström",
    "Dahl", "Krüger", "Hoffmann", "Moreau", "Rossi", "García", "Van Dijk", "Novak",
    "Fairbairn", "Ashworth", "Okafor", "Tanaka", "Chen", "Nielsen", "Virtanen",
    "Kowalski", "Murphy", "Sinclair", "Holm", "Becker", "Duarte", "Ferrari", "Lund",
)
_TRADES = ("Foods", "Dairy", "Bakeries", "Brewing", "Farms", "Fisheries",
           "Household", "Brands", "Trading", "Distillers", "Provisions", "Mills")
_DEFAULT_SUFFIXES = ("Ltd", "Inc.", "S.A.", "B.V.", "GmbH")

_CERT_SCHEMES = ("QS", "BRC", "IFS", "SQF", "FSSC", "GLOBALG.A.P.")
_CHAINS = (
    "Farm ({origin}) → packer → DC {dc} → store",
    "Factory ({origin}) → importer → DC {dc} → store",
    "Producer ({origin}) → consolidator → DC {dc} → store",
    "Manufacturer ({origin}) → DC {dc} → store",
    "Supplier ({origin}) direct to store",
    "Vessel → processor ({origin}) → cold store → DC {dc} → store",
    "Grower ({origin}) → ripening centre → DC {dc} → store",
    "Publisher → wholesaler → store",
    "Card issuer → DC {dc} → store",
)
_PROMOTIONS = ("2 for 1", "3 for 2", "Half price", "Save 20%", "Buy 2 save 25%",
               "Member price", "Multibuy: any 3", "New: try me", "Reduced to clear")

_DATES = [(_dt.date(2025, 1, 1) + _dt.timedelta(days=i)).isoformat()
          for i in range(731)]

_FLAG_STRINGS = ["|".join(name for bit, name in ((1, "weight_exempt"),
                                                 (2, "variable_measure"),
                                                 (4, "eas_tagged"),
                                                 (8, "age_restricted")) if b & bit)
                 for b in range(16)]
_GIFT_VALUES = (1000, 1500, 2000, 2500, 5000)
_GIFT_PRODUCTS = (0, 9)  # indexes of _EXEMPT_PRODUCTS sold at a face value

# Row categories.
_NORMAL, _AGE, _EXEMPT, _VM = 0, 1, 2, 3
# GTIN kinds of the ordinary items.
_G13, _G12, _G8 = 0, 1, 2


# --------------------------------------------------------------------------------------
# GTINs
# --------------------------------------------------------------------------------------

def _check_digits(payload: np.ndarray) -> np.ndarray:
    """GS1 mod-10 check digits of int64 payloads (the digits before the check digit).

    Leading zeros weigh nothing, so one routine serves GTIN-8, -12 and -13.
    """
    p = payload.astype(np.int64, copy=True)
    total = np.zeros_like(p)
    weight = 3
    for _ in range(len(str(int(p.max()))) if len(p) else 0):
        total += (p % 10) * weight
        p //= 10
        weight = 4 - weight
    return (10 - total % 10) % 10


def with_check_digit(payload: np.ndarray) -> np.ndarray:
    """GTINs (int64) from their payloads: each payload with its check digit appended."""
    return payload * 10 + _check_digits(payload)


def _ranks_within(comp: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows belong to the same company (0, 1, 2, ...),
    so item references drawn from it never repeat within a company."""
    order = np.argsort(comp, kind="stable")
    sorted_comp = comp[order]
    first = np.searchsorted(sorted_comp, sorted_comp, side="left")
    rank = np.empty(len(comp), np.int64)
    rank[order] = np.arange(len(comp)) - first
    return rank


def _gtin13(rng: np.random.Generator, n: int, local: tuple[int, int] | None):
    """``n`` unique GTIN-13s and the company (0..C-1) each belongs to.

    Companies own a 7-digit GS1 company prefix (3-digit GS1 prefix + 4 digits) and
    number their items with 5 digits, as small GS1 members do; item counts per
    company are skewed (log-normal), like a real assortment.
    """
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    n_comp = max(1, -(-n // 40))
    prefixes = _GS1_PREFIXES
    if local is not None:
        is_local = (prefixes >= local[0]) & (prefixes <= local[1])
        local_p, foreign_p = prefixes[is_local], prefixes[~is_local]
        n_local = int(rng.binomial(n_comp, _P_LOCAL_COMPANY))
    else:
        local_p, foreign_p, n_local = prefixes[:0], prefixes, 0
    n_local = min(n_local, len(local_p) * 10_000)
    n_foreign = n_comp - n_local
    if n_foreign > len(foreign_p) * 10_000:
        raise CatalogError(f"cannot invent {n} unique GTIN-13s", code="BAD_ARGUMENT")
    company7 = []
    for pool, k in ((local_p, n_local), (foreign_p, n_foreign)):
        if k:
            pick = rng.choice(len(pool) * 10_000, size=k, replace=False)
            company7.append(pool[pick // 10_000] * 10_000 + pick % 10_000)
    company7 = np.concatenate(company7)
    weights = rng.lognormal(0.0, 1.0, n_comp)
    comp = rng.choice(n_comp, size=n, p=weights / weights.sum())
    rank = _ranks_within(comp)
    if rank.max() >= 100_000:
        raise CatalogError(f"cannot invent {n} unique GTIN-13s", code="BAD_ARGUMENT")
    # A unit step modulo 10**5 (coprime to 10) maps ranks to distinct references.
    start = rng.integers(0, 100_000, n_comp)
    step = rng.choice(np.array([1, 1, 1, 1, 3, 7, 11, 13, 101]), n_comp)
    item = (start[comp] + step[comp] * rank) % 100_000
    return with_check_digit(company7[comp] * 100_000 + item), comp, n_comp


def _gtin12(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unique UPC-As: number system 0, 1, 6-9 (never 2/4/5, in-store and coupons)
    and a 6-digit company prefix that never starts 0000 (the GTIN-8 space)."""
    if n == 0:
        return np.zeros(0, np.int64)
    n_comp = max(1, -(-n // 40))
    # 6 number-system digits x 90,000 five-digit tails starting 1-9.
    space = rng.choice(6 * 90_000, size=n_comp, replace=False)
    ns_choice = np.array([0, 1, 6, 7, 8, 9])[space // 90_000]
    company6 = ns_choice * 100_000 + 10_000 + space % 90_000
    # Number system 0 dominates real UPC assortments.
    weights = rng.lognormal(0.0, 1.0, n_comp) * np.where(ns_choice == 0, 4.0, 1.0)
    comp = rng.choice(n_comp, size=n, p=weights / weights.sum())
    rank = _ranks_within(comp)
    if rank.max() >= 100_000:
        raise CatalogError(f"cannot invent {n} unique GTIN-12s", code="BAD_ARGUMENT")
    start = rng.integers(0, 100_000, n_comp)
    item = (start[comp] + rank) % 100_000
    return with_check_digit(company6[comp] * 100_000 + item)


def _gtin8_capacity() -> int:
    return len(_GS1_PREFIXES) * 10_000


def _gtin8(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unique EAN-8s: a GS1 prefix and a 4-digit item reference."""
    if n == 0:
        return np.zeros(0, np.int64)
    pick = rng.choice(_gtin8_capacity(), size=n, replace=False)
    return with_check_digit(_GS1_PREFIXES[pick // 10_000] * 10_000 + pick % 10_000)


def _rcn_rules(region: str):
    """The in-store rules a variable-measure item is listed under, best first.

    Weight codes first (the scale prints the weight, the till prices it per kg),
    else price codes (the scale prints the price, as in the UK).
    """
    rules = barcode.regions()[region].rules
    for measure in ("weight", "price"):
        chosen = [r for p, r in sorted(rules.items()) if r.measure == measure]
        if chosen:
            return chosen
    return []


def _item_digits(rule) -> int:
    """Digits of the item reference after the two-digit prefix."""
    p_len = rule.check_pos if rule.check_pos >= 0 else rule.value_start
    return p_len - 2


def _rcn_capacity(region: str) -> int:
    return sum(10 ** _item_digits(r) for r in _rcn_rules(region))


def _rcn(rng: np.random.Generator, n: int, region: str) -> np.ndarray:
    """``n`` unique in-store lookup GTIN-13s: prefix, item digits, the variable part
    (and its price check digit) zeroed, GTIN check digit computed."""
    out = []
    left = n
    for rule in _rcn_rules(region):
        if left == 0:
            break
        item_digits = _item_digits(rule)
        k = min(left, 10 ** item_digits)
        item = rng.choice(10 ** item_digits, size=k, replace=False)
        zeros = 12 - 2 - item_digits
        payload = int(rule.prefix) * 10 ** 10 + item.astype(np.int64) * 10 ** zeros
        out.append(with_check_digit(payload))
        left -= k
    if left:
        raise CatalogError(
            f"region {region} has room for fewer than {n} in-store items",
            code="BAD_ARGUMENT")
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------

def _round_price(rng: np.random.Generator, x: np.ndarray, top: int) -> np.ndarray:
    """Shelf-looking prices from ``x`` (minor units): most end in 9, the rest in 0
    or 5; none above ``top``."""
    p = np.maximum(np.round(x / 5.0) * 5, 10).astype(np.int64)
    nine = rng.random(len(p)) < 0.6
    return np.minimum(np.where(nine, p - p % 10 + 9, p), top)


def _csv_quote(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def _needs_quote(s: str) -> bool:
    return any(c in s for c in ',"\r\n')


def _csv_parts(heads: list[str], tails: list[str]) -> tuple[list[str], list[str]]:
    """CSV-escape a column built as head + tail: if any value could need quoting,
    every value is quoted (the quote opens in the head and closes in the tail)."""
    if any(map(_needs_quote, heads)) or any(map(_needs_quote, tails)):
        return (['"' + h.replace('"', '""') for h in heads],
                [t.replace('"', '""') + '"' for t in tails])
    return heads, tails


def _csv_table(values: list[str]) -> list[str]:
    return [_csv_quote(v) if _needs_quote(v) else v for v in values]


def _size_label(net: int, liquid: bool) -> str:
    if net >= 1000:
        return f" {net / 1000:g} {'l' if liquid else 'kg'}"
    return f" {net} {'ml' if liquid else 'g'}"


class _Plan:
    """Every random draw of one catalogue, made at construction (so bad arguments
    raise at once and the rows do not depend on how they are chunked), and the
    small string tables the rows are assembled from."""

    def __init__(self, rows: int, seed: int, region: str):
        if (isinstance(rows, bool) or not isinstance(rows, (int, np.integer))
                or rows < 0):
            raise CatalogError(f"rows must be a non-negative integer, got {rows!r}",
                               code="BAD_ARGUMENT")
        if rows > MAX_ROWS:
            raise CatalogError(f"at most {MAX_ROWS} rows, got {rows}",
                               code="BAD_ARGUMENT")
        if not isinstance(region, str) or region.upper() not in barcode.regions():
            raise CatalogError(
                f"region {region!r} has no in-store code rules; known: "
                f"{sorted(barcode.regions())}", code="UNKNOWN_REGION")
        region = region.upper()
        n = self.n = int(rows)
        rng = np.random.default_rng(seed)
        local = _LOCAL.get(region)

        # Categories
        cat = np.full(n, _NORMAL, np.int8)
        u = rng.random(n)
        cat[u < P_VARIABLE_MEASURE + P_WEIGHT_EXEMPT] = _EXEMPT
        cat[u < P_VARIABLE_MEASURE] = _VM
        vm_rows = np.flatnonzero(cat == _VM)
        room = _rcn_capacity(region)
        # A small in-store code space (DE): the rest become ordinary items.
        if len(vm_rows) > room:
            cat[vm_rows[room:]] = _NORMAL
        p_age = P_AGE_RESTRICTED / (1 - P_VARIABLE_MEASURE - P_WEIGHT_EXEMPT)
        cat[(cat == _NORMAL) & (rng.random(n) < p_age)] = _AGE
        vm = cat == _VM
        exempt = cat == _EXEMPT
        age = cat == _AGE
        normal = cat == _NORMAL

        # GTINs
        kind = np.full(n, _G13, np.int8)
        g = rng.random(n)
        kind[~vm & (g < P_GTIN12 + P_GTIN8)] = _G12
        kind[~vm & (g < P_GTIN8)] = _G8
        g8_rows = np.flatnonzero(kind == _G8)
        if len(g8_rows) > _gtin8_capacity():
            kind[g8_rows[_gtin8_capacity():]] = _G13
        gtin = np.zeros(n, np.int64)
        is13 = ~vm & (kind == _G13)
        is12 = ~vm & (kind == _G12)
        is8 = ~vm & (kind == _G8)
        g13, company, n_comp = _gtin13(rng, int(is13.sum()),
                                       local[0] if local else None)
        gtin[is13] = g13
        gtin[is12] = _gtin12(rng, int(is12.sum()))
        gtin[is8] = _gtin8(rng, int(is8.sum()))
        gtin[vm] = _rcn(rng, int(vm.sum()), region)
        self.gtin = gtin
        self.is12 = is12

        # Prices (minor units) and weights (grams)
        price = _round_price(rng, rng.lognormal(np.log(250), 0.95, n), 50_000)
        premium = rng.random(n) < 0.004
        price[premium] = _round_price(
            rng, rng.lognormal(np.log(9000), 0.6, int(premium.sum())), 50_000)
        # Drinks and tobacco cost more; loose and deli goods stay under 100.00 a kg.
        price[age] = _round_price(
            rng, np.maximum(rng.lognormal(np.log(900), 0.6, int(age.sum())), 99),
            50_000)
        price[vm] = _round_price(
            rng, np.maximum(rng.lognormal(np.log(1200), 0.5, int(vm.sum())), 99),
            9999)
        weight = np.round(np.clip(rng.lognormal(np.log(400), 0.85, n), 5, 25_000), 1)
        sd = np.round(weight * rng.uniform(0.01, 0.04, n) + 0.5, 2)
        self.has_weight = normal | age
        self.weight = weight
        self.sd = sd

        flags = np.zeros(n, np.int64)
        flags[exempt] |= 1
        flags[vm] |= 2
        flags[~vm & (rng.random(n) < P_EAS_TAGGED)] |= 4
        flags[age] |= 8
        self.flags = flags

        # Names: a head from a small table and a size label.
        nb, npd, na = len(_BRANDS), len(_PRODUCTS), len(_AGE_PRODUCTS)
        ne, ng, nv = len(_EXEMPT_PRODUCTS), len(_GIFT_VALUES), len(_VM_PRODUCTS)
        heads = ([f"{b} {p}" for b in _BRANDS for p in _PRODUCT_NAMES]
                 + [f"{b} {a} {z}" for b in _BRANDS for a, z in _AGE_PRODUCTS]
                 + [f"{e} {v // 100}" if i in _GIFT_PRODUCTS else e
                    for i, e in enumerate(_EXEMPT_PRODUCTS) for v in _GIFT_VALUES]
                 + [f"{v} (per kg)" for v in _VM_PRODUCTS])
        off_age = nb * npd
        off_exempt = off_age + nb * na
        off_vm = off_exempt + ne * ng
        brand = rng.integers(0, nb, n)
        product = rng.integers(0, npd, n)
        age_product = rng.integers(0, na, n)
        exempt_product = rng.integers(0, ne, n)
        gift = rng.integers(0, ng, n)
        vm_product = rng.integers(0, nv, n)
        head = np.select(
            [normal, age, exempt],
            [brand * npd + product, off_age + brand * na + age_product,
             off_exempt + exempt_product * ng + gift],
            off_vm + vm_product)
        is_gift = exempt & np.isin(exempt_product, _GIFT_PRODUCTS)
        price[is_gift] = np.array(_GIFT_VALUES)[gift[is_gift]]
        self.price = price
        # The label states a round net size a little under the gross weight.
        net = weight * 0.9
        net = np.where(net >= 1000, np.round(net / 50) * 50,
                       np.maximum(5, np.round(net / 5) * 5)).astype(np.int64)
        liquid = np.array(_PRODUCT_LIQUID)[product]
        size_key = np.where(normal, net * 2 + liquid, -1)
        keys, size_id = np.unique(size_key, return_inverse=True)
        tails = ["" if k < 0 else _size_label(int(k) // 2, bool(k % 2))
                 for k in keys.tolist()]
        self.name_parts = (heads, tails)
        self.head_id = head
        self.size_id = size_id.reshape(-1)

        # Product information
        home = local[1] if local else None
        countries = list(_COUNTRIES) + ([home] if home else [])
        origin = rng.integers(0, len(_COUNTRIES), n)
        if home:
            origin[rng.random(n) < _P_LOCAL_ORIGIN] = len(countries) - 1
        self.origins = countries
        self.origin_id = origin

        suffixes = local[2] if local else _DEFAULT_SUFFIXES
        producers = [f"{a} {b} {c}"
                     for a in _SURNAMES for b in _TRADES for c in suffixes]
        # A GTIN-13 company keeps one name across its items.
        comp_producer = rng.integers(0, len(producers), max(n_comp, 1))
        producer = rng.integers(0, len(producers), n)
        company_of = np.full(n, -1, np.int64)
        company_of[is13] = company
        self.producers = producers
        self.producer_id = np.where(company_of >= 0, comp_producer[company_of],
                                    producer)

        inspections = [f"Batch inspected {d}, certificate {c}-" for d in _DATES
                       for c in _CERT_SCHEMES]
        self.inspections = inspections
        self.inspection_id = rng.integers(0, len(inspections), n)
        self.cert_no = rng.integers(100_000, 1_000_000, n)

        dcs = local[3] if local else ("Central",)
        chains = [t.format(dc=d, origin=o) for t in _CHAINS for d in dcs
                  for o in countries]
        by_cat = {_NORMAL: (1, 2, 3, 4), _AGE: (1, 2, 3), _EXEMPT: (7,), _VM: (0, 5, 6)}
        template = np.zeros(n, np.int64)
        for c, choices in by_cat.items():
            m = cat == c
            template[m] = np.array(choices)[rng.integers(0, len(choices), int(m.sum()))]
        template[is_gift] = 8  # gift cards come from the card issuer
        self.chains = chains
        self.chain_id = ((template * len(dcs) + rng.integers(0, len(dcs), n))
                         * len(countries) + origin)

        self.promotions = [""] + list(_PROMOTIONS)
        self.promo_id = np.where(rng.random(n) < P_PROMOTION,
                                 rng.integers(1, len(self.promotions), n), 0)

    def chunks(self, as_csv: bool) -> Iterator[list]:
        """Columns (CSV_COLUMNS order) of ``_CHUNK`` rows at a time: CSV-ready
        strings when ``as_csv``, else typed values (None for an empty cell)."""
        heads, tails = self.name_parts
        ins_heads, ins_close = self.inspections, ""
        origins, producers, chains = self.origins, self.producers, self.chains
        promotions = self.promotions
        if as_csv:
            heads, tails = _csv_parts(heads, tails)
            # The certificate number after the head is digits: only heads matter.
            ins_heads, (ins_close,) = _csv_parts(ins_heads, [""])
            origins, producers, chains, promotions = map(
                _csv_table, (origins, producers, chains, promotions))
        else:
            promotions = [None] + promotions[1:]
        add = operator.add
        for lo in range(0, self.n, _CHUNK):
            sl = slice(lo, min(self.n, lo + _CHUNK))
            gtin = list(map(str, self.gtin[sl].tolist()))
            for i in np.flatnonzero(self.is12[sl]).tolist():
                gtin[i] = gtin[i].zfill(12)  # UPC-A number system 0
            names = list(map(add, map(heads.__getitem__, self.head_id[sl].tolist()),
                             map(tails.__getitem__, self.size_id[sl].tolist())))
            # The certificate number, and the closing quote when the head opened one.
            cert = ("%d" + ins_close).__mod__ if ins_close else str
            inspection = list(map(add,
                                  map(ins_heads.__getitem__,
                                      self.inspection_id[sl].tolist()),
                                  map(cert, self.cert_no[sl].tolist())))
            hw = self.has_weight[sl]
            if as_csv:
                price = list(map(str, self.price[sl].tolist()))
                # repr() is what csv.writer writes for a float, and twice as fast
                # as numpy's astype(str).
                weight = list(map(repr, self.weight[sl].tolist()))
                sd = list(map(repr, self.sd[sl].tolist()))
                for i in np.flatnonzero(~hw).tolist():
                    weight[i] = sd[i] = ""
            else:
                price = self.price[sl].tolist()
                weight = [w if h else None
                          for w, h in zip(self.weight[sl].tolist(), hw.tolist())]
                sd = [s if h else None
                      for s, h in zip(self.sd[sl].tolist(), hw.tolist())]
            yield [
                gtin, names, price, weight, sd,
                list(map(_FLAG_STRINGS.__getitem__, self.flags[sl].tolist())),
                list(map(origins.__getitem__, self.origin_id[sl].tolist())),
                list(map(producers.__getitem__, self.producer_id[sl].tolist())),
                inspection,
                list(map(chains.__getitem__, self.chain_id[sl].tolist())),
                list(map(promotions.__getitem__, self.promo_id[sl].tolist())),
            ]


def generate_catalog(rows: int, *, seed: int = 0, region: str = "GB") -> Iterator[dict]:
    """Return an iterator of ``rows`` catalogue rows, dicts keyed by ``CSV_COLUMNS``.

    Values are what the CSV carries, typed: ``gtin`` a digit string (8, 12 or 13
    digits), ``price_minor`` int (minor units; per kg for variable-measure items),
    ``unit_weight_g`` and ``weight_sd_g`` float grams or None, ``flags`` flag names
    joined by ``|`` ("" for none), the product-information fields str, ``promotion``
    str or None. The same arguments always give the same rows, and the same rows
    that ``write_catalog_csv`` writes. ``region`` (ISO 3166 alpha-2, one with
    in-store code rules, see ``lanecore.ext.barcode.regions()``) decides the in-store
    code layout and the local flavour. Raises CatalogError (BAD_ARGUMENT,
    UNKNOWN_REGION) at the call.
    """
    chunks = _Plan(rows, seed, region).chunks(as_csv=False)
    keys = CSV_COLUMNS
    return (dict(zip(keys, values)) for cols in chunks for values in zip(*cols))


def write_catalog_csv(path: str | os.PathLike, rows: int, *, seed: int = 0,
                      region: str = "GB",
                      progress: Callable[[int, int], object] | None = None) -> int:
    """Write ``generate_catalog(rows, seed=seed, region=region)`` as a UTF-8 CSV file
    (header row, ``\\n`` line ends, RFC 4180 quoting); return the number of data
    rows written.

    ``progress(rows_done, rows_total)`` is called after each chunk of 50,000 rows.
    Raises CatalogError: BAD_ARGUMENT, UNKNOWN_REGION, CSV_UNWRITABLE.
    """
    plan = _Plan(rows, seed, region)
    done = 0
    join = ",".join
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(join(CSV_COLUMNS) + "\n")
            for cols in plan.chunks(as_csv=True):
                # Every cell is already an escaped CSV field, so a row is a join.
                f.write("\n".join(map(join, zip(*cols))))
                f.write("\n")
                done += len(cols[0])
                if progress is not None:
                    progress(done, plan.n)
    except OSError as exc:
        raise CatalogError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}",
                           code="CSV_UNWRITABLE") from exc
    return done
