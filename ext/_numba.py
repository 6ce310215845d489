"""How lanecore compiles its Numba kernels.

* ``cache=True`` with a writable cache directory: ``NUMBA_CACHE_DIR`` if set, else
  ``$XDG_CACHE_HOME/lanecore/numba`` (``~/.cache/lanecore/numba``), so an install in a
  read-only site-packages still caches. It must be chosen before numba is imported,
  which is why every kernel imports numba through this module.
* ``nogil=True``, so a service thread keeps moving while a kernel runs.
* Hot kernels carry explicit signatures: they compile (or load from the cache) when
  their module is imported, i.e. at start-up, never on a lane's first frame.
* ``fastmath`` is not used: it would let the compiler assume there are no NaNs, and a
  NaN from a load cell is a fault to report.
* ``NUMBA_DISABLE_JIT=1`` runs every kernel as the plain Python it is written in: that
  is the kernels' pure-Python twin.
"""

from __future__ import annotations

import os

if not os.environ.get("NUMBA_CACHE_DIR"):
    _base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(_base, "lanecore", "numba")

import numba  # noqa: E402  (after the cache directory is chosen)

JIT_DISABLED: bool = bool(numba.config.DISABLE_JIT)
#: "numba" when kernels are compiled, "python" when they run as their twins.
IMPLEMENTATION = "python" if JIT_DISABLED else "numba"


def kernel(signature=None, **options):
    """``numba.njit`` with lanecore's options (cache, nogil, no fastmath)."""
    opts = {"cache": True, "nogil": True, **options}
    if signature is None:
        return numba.njit(**opts)
    return numba.njit(signature, **opts)


def inline(fn):
    """A helper called only from kernels (compiled with them, cached with them)."""
    return numba.njit(cache=True, nogil=True, inline="always")(fn)
