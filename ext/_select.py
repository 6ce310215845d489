"""The one switch between compiled kernels and their pure-Python twins."""

import os


def pure_requested() -> bool:
    """True when ``LANECORE_PURE`` asks for the pure-Python twins (1, true, yes)."""
    return os.environ.get("LANECORE_PURE", "").strip().lower() in ("1", "true", "yes")
