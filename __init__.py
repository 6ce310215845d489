"""lanecore — the verification and settlement core of a supermarket checkout floor.

The public API most callers need::

    import lanecore
    r = lanecore.parse_scan("2011122912346", region="GB")
    r.to_dict()   # {"input": ..., "ok": True, "kind": "rcn", "price_minor": 1234, ...}

The packages, top to bottom (each imports only those below it; docs/architecture.md
is the map): the command line (``cli``, ``demo``), ``gateway`` (processes), ``drivers``
(serial devices), ``core`` (the domain) and ``ext`` (compiled kernels). This module
imports ``ext`` only.
"""

__version__ = "0.1.0"

from lanecore.ext.barcode import IMPLEMENTATION, ScanResult, parse_many, parse_scan

__all__ = ["__version__", "IMPLEMENTATION", "ScanResult", "parse_scan", "parse_many"]
