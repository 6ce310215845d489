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


class CatalogTable:
    """The columns the hot paths need, one row per SKU, and the GTIN index over them.

    Columns (row-aligned numpy arrays): ``gtin`` uint64, ``price_minor`` int64,
    ``weight_mean_g`` and ``weight_sd_g`` float64 (grams), ``flags`` uint8
    (``FLAG_*`` bits).
    """

    __slots__ = ("gtin", "price_minor", "weight_mean_g", "weight_sd_g", "flags",
                 "index", "lookup", "lookup_many")

    def __init__(self, gtin, price_minor, weight_mean_g, weight_sd_g, flags, *,
                 index_type=None):
        """``index_type`` overrides the selected GtinIndex (benchmarks pin one)."""
        self.gtin = np.ascontiguousarray(gtin, dtype=np.uint64)
        n = self.gtin.shape[0]
        self.price_minor = np.ascontiguousarray(price_minor, dtype=np.int64)
        self.weight_mean_g = np.ascontiguousarray(weight_mean_g, dtype=np.float64)
        self.weight_sd_g = np.ascontiguousarray(weight_sd_g, dtype=np.float64)
        self.flags = np.ascontiguousarray(flags, dtype=np.uint8)
        for name in ("price_minor", "weight_mean_g", "weight_sd_g", "flags"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"column {name} has shape {shape}; want ({n},)")
        self.index = (index_type or GtinIndex)(self.gtin)
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
