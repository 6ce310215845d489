"""Compiled kernels (Cython, Numba), each with a pure-Python twin.

``LANECORE_PURE=1`` switches the Cython kernels to their twins; ``NUMBA_DISABLE_JIT=1``
runs the Numba kernels as plain Python. Nothing here imports the rest of lanecore.
"""
