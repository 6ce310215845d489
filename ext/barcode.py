"""Barcode kernel: the compiled module, or its pure-Python twin when asked for.

``LANECORE_PURE=1`` selects the twin (``_barcode_py``). Otherwise the compiled
``_barcode`` must import: a missing or broken build is an error here, never a silent
fall-back to the slow path.
"""

from __future__ import annotations

from ._select import pure_requested

if pure_requested():
    from . import _barcode_py as _impl
else:
    try:
        from . import _barcode as _impl
    except ImportError as exc:  # pragma: no cover - exercised by the build check
        raise ImportError(
            "lanecore's compiled barcode kernel (lanecore.ext._barcode) is missing or "
            "broken; rebuild with `make build` (or `pip install .`), or set "
            "LANECORE_PURE=1 to run on the pure-Python twin on purpose"
        ) from exc

IMPLEMENTATION: str = _impl.IMPLEMENTATION
ScanResult = _impl.ScanResult
parse_scan = _impl.parse_scan
parse_many = _impl.parse_many
register_region = _impl.register_region
regions = _impl.regions
gs1_check_digit = _impl.gs1_check_digit
price_check_digit = _impl.price_check_digit
upce_to_upca = _impl.upce_to_upca

__all__ = [
    "IMPLEMENTATION", "ScanResult", "parse_scan", "parse_many", "register_region",
    "regions", "gs1_check_digit", "price_check_digit", "upce_to_upca",
]
