"""Compiled kernels (Cython, Numba), each with a pure-Python twin.

``LANECORE_PURE=1`` switches the Cython kernels to their twins; ``NUMBA_DISABLE_JIT=1``
runs the Numba kernels as plain Python.

May import: numpy, numba and the standard library — nothing of the rest of lanecore
(the lowest layer; ``pyproject.toml``'s import-linter contracts check it).
"""
