"""Catalogue lookup table: a GTIN index over row-aligned numpy columns.

The index is compiled (``_lookup.pyx``) unless ``LANECORE_PURE=1`` selects its twin;
a missing build is an error, never a silent fall-back.
"""

from __future__ import annotations

import numpy as np

from ._select import pure_requested

if pure_requested():
    from . import _lookup_py as _impl
else:
    try:
        from . import _lookup as _impl
    except ImportError as exc:  # pragma: no cover - exercised by the build check
        raise ImportError(
            "lanecore's compiled lookup kernel (lanecore.ext._lookup) is missing or "
            "broken; rebuild with `make build` (or `pip install .`), or set "
            "LANECORE_PURE=1 to run on the pure-Python twin on purpose"
        ) from exc

IMPLEMENTATION: str = _impl.IMPLEMENTATION
GtinIndex = _impl.GtinIndex

#: Bits of the ``flags`` column.
FLAG_WEIGHT_EXEMPT = 1
FLAG_VARIABLE_MEASURE = 2
FLAG_EAS_TAGGED = 4
FLAG_AGE_RESTRICTED = 8
FLAG_BITS = {
    "weight_exempt": FLAG_WEIGHT_EXEMPT,
    "variable_measure": FLAG_VARIABLE_MEASURE,
    "eas_tagged": FLAG_EAS_TAGGED,
    "age_restricted": FLAG_AGE_RESTRICTED,
}


#: Largest ``price_minor`` the table holds: the column is int32. The catalogue
#: import refuses a larger price (BAD_PRICE, ``core/scan/catalog.MAX_PRICE_MINOR``).
MAX_PRICE_MINOR = 2**31 - 1


def _column(values, dtype, name: str, n: int, lo=None, hi=None) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != (n,):
        raise ValueError(f"column {name} has shape {a.shape}; want ({n},)")
    if lo is not None and n:
        low, high = a.min(), a.max()
        if not (lo <= low and high <= hi):   # NaN fails too
            bad = low if not lo <= low else high
            raise ValueError(f"column {name} holds {bad}, outside {lo}..{hi} "
                             f"(the table stores it as {np.dtype(dtype).name})")
    return np.ascontiguousarray(a, dtype=dtype)


class CatalogTable:
    """The columns the hot paths need, one row per SKU, and the GTIN index over them.

    Columns (row-aligned numpy arrays): ``gtin`` uint64 (read-only), ``price_minor``
    int32 (0..MAX_PRICE_MINOR minor units; ``int()`` it before arithmetic that could
    pass 2**31), ``weight_mean_g`` and ``weight_sd_g`` float64 (grams), ``flags``
    uint8 (``FLAG_*`` bits): 29 bytes a row, plus the index's bucket starts (about 1
    byte a row): about 30 bytes per SKU at any size.

    Rows are in the index's order, not the input's: the constructor applies the
    index's permutation (``GtinIndex.order``) to every column, so the position the
    index answers for a key is the key's row and the index needs no row numbers.
    Row numbers are handles into these columns; use ``gtin[row]`` to name the item.
    """

    __slots__ = ("gtin", "price_minor", "weight_mean_g", "weight_sd_g", "flags",
                 "index", "lookup", "lookup_many")

    def __init__(self, gtin, price_minor, weight_mean_g, weight_sd_g, flags, *,
                 index_type=None):
        """``index_type`` overrides the selected GtinIndex (benchmarks pin one).

        Raises ValueError for a column of the wrong length, a price outside
        0..MAX_PRICE_MINOR, or a key the index refuses (above GTIN-14, repeated)."""
        keys = np.ascontiguousarray(gtin, dtype=np.uint64)
        n = keys.shape[0]
        price = _column(price_minor, np.int32, "price_minor", n, 0, MAX_PRICE_MINOR)
        mean = _column(weight_mean_g, np.float64, "weight_mean_g", n)
        sd = _column(weight_sd_g, np.float64, "weight_sd_g", n)
        fl = _column(flags, np.uint8, "flags", n)
        self.index = (index_type or GtinIndex)(keys)
        order = self.index.order
        self.index.order = None        # 8 bytes a row, not needed once applied
        self.gtin = self.index.keys    # read-only; the index compares keys in it
        self.price_minor = price[order]
        self.weight_mean_g = mean[order]
        self.weight_sd_g = sd[order]
        self.flags = fl[order]
        # Bound methods of the index, so a lookup costs one call, not two.
        self.lookup = self.index.lookup
        self.lookup_many = self.index.lookup_many

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes of the index and the columns."""
        return (self.index.nbytes + self.gtin.nbytes + self.price_minor.nbytes
                + self.weight_mean_g.nbytes + self.weight_sd_g.nbytes
                + self.flags.nbytes)

    @property
    def bytes_per_sku(self) -> float:
        n = len(self)
        return self.nbytes / n if n else 0.0
