"""Biquad design and the batched second-order-section cascade.

Sections are rows ``[b0, b1, b2, 1, a1, a2]`` (scipy's SOS layout), run in direct
form II transposed, the same arithmetic as ``scipy.signal.sosfilt``. Designs follow
the RBJ Audio EQ Cookbook (bilinear transform with frequency pre-warping); every
section has unity gain at DC, so a weight passes through unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import IMPLEMENTATION, inline, kernel  # noqa: F401  (IMPLEMENTATION re-exported)

#: Q of the sections of Butterworth low-passes of order 2 and 4.
BUTTERWORTH_Q = {2: (1 / math.sqrt(2),), 4: (0.5411961001461971, 1.3065629648763766)}


def lowpass(fc_hz: float, fs_hz: float, q: float = 1 / math.sqrt(2)) -> np.ndarray:
    """One low-pass biquad (cut-off ``fc_hz``, quality ``q``) as an SOS row."""
    w0 = 2 * math.pi * fc_hz / fs_hz
    alpha = math.sin(w0) / (2 * q)
    c = math.cos(w0)
    b = [(1 - c) / 2, 1 - c, (1 - c) / 2]
    a = [1 + alpha, -2 * c, 1 - alpha]
    return np.array([b[0] / a[0], b[1] / a[0], b[2] / a[0], 1.0, a[1] / a[0], a[2] / a[0]])


def notch(f0_hz: float, fs_hz: float, q: float) -> np.ndarray:
    """One notch biquad at ``f0_hz`` (-3 dB bandwidth f0/q) as an SOS row."""
    w0 = 2 * math.pi * f0_hz / fs_hz
    alpha = math.sin(w0) / (2 * q)
    c = math.cos(w0)
    a0 = 1 + alpha
    return np.array([1 / a0, -2 * c / a0, 1 / a0, 1.0, -2 * c / a0, (1 - alpha) / a0])


def butterworth(fc_hz: float, fs_hz: float, order: int) -> np.ndarray:
    """A Butterworth low-pass of order 2 or 4 as SOS rows."""
    if order not in BUTTERWORTH_Q:
        raise ValueError(f"Butterworth order must be one of {sorted(BUTTERWORTH_Q)}")
    return np.vstack([lowpass(fc_hz, fs_hz, q) for q in BUTTERWORTH_Q[order]])


def impulse_response(sos: np.ndarray, n: int) -> np.ndarray:
    """The cascade's first ``n`` impulse-response samples."""
    x = np.zeros((1, n))
    x[0, 0] = 1.0
    y = np.empty_like(x)
    zi = np.zeros((1, sos.shape[0], 2))
    sos_cascade(np.ascontiguousarray(sos[None, :, :]), x, zi, y)
    return y[0]


def noise_gain(sos: np.ndarray, fs_hz: float) -> float:
    """Σ h² of the cascade: the variance a unit white noise has after it.

    The mean of N filtered samples of white noise σ² has variance σ²/N (unity DC
    gain), while their sample variance is σ²·Σh², so σ_mean = s_y / sqrt(N·Σh²): the
    effective number of independent samples is N·Σh² (N_eff = N / (1 + 2Σρ_k)).
    """
    if sos.shape[0] == 0:
        return 1.0
    n = int(min(max(8 * fs_hz, 4096), 400_000))
    h = impulse_response(sos, n)
    return float(np.dot(h, h))


def warm_up_samples(sos: np.ndarray, fs_hz: float, tolerance: float = 0.01) -> int:
    """Samples after which the cascade's step response stays within ``tolerance`` of 1.

    A lane primes its filters with its first sample; after this many samples that
    sample's noise has left the output (to ``tolerance`` of it).
    """
    if sos.shape[0] == 0:
        return 0
    n = int(min(max(8 * fs_hz, 4096), 400_000))
    step = np.cumsum(impulse_response(sos, n))
    outside = np.nonzero(np.abs(step - 1.0) > tolerance)[0]
    return 0 if len(outside) == 0 else int(outside[-1]) + 1


@inline
def _cascade4(sos, x, zi, y, n_sec, n):
    """Up to four sections, sample by sample, coefficients and states in registers
    (none: a copy). ``x`` and ``y`` may be the same array."""
    if n_sec == 0:
        for i in range(n):
            y[i] = x[i]
        return
    b00, b01, b02, a01, a02 = sos[0, 0], sos[0, 1], sos[0, 2], sos[0, 4], sos[0, 5]
    z00, z01 = zi[0, 0], zi[0, 1]
    b10 = b11 = b12 = a11 = a12 = z10 = z11 = 0.0
    b20 = b21 = b22 = a21 = a22 = z20 = z21 = 0.0
    b30 = b31 = b32 = a31 = a32 = z30 = z31 = 0.0
    if n_sec > 1:
        b10, b11, b12, a11, a12 = sos[1, 0], sos[1, 1], sos[1, 2], sos[1, 4], sos[1, 5]
        z10, z11 = zi[1, 0], zi[1, 1]
    if n_sec > 2:
        b20, b21, b22, a21, a22 = sos[2, 0], sos[2, 1], sos[2, 2], sos[2, 4], sos[2, 5]
        z20, z21 = zi[2, 0], zi[2, 1]
    if n_sec > 3:
        b30, b31, b32, a31, a32 = sos[3, 0], sos[3, 1], sos[3, 2], sos[3, 4], sos[3, 5]
        z30, z31 = zi[3, 0], zi[3, 1]
    for i in range(n):
        v = x[i]
        o = b00 * v + z00
        z00 = b01 * v - a01 * o + z01
        z01 = b02 * v - a02 * o
        v = o
        if n_sec > 1:
            o = b10 * v + z10
            z10 = b11 * v - a11 * o + z11
            z11 = b12 * v - a12 * o
            v = o
            if n_sec > 2:
                o = b20 * v + z20
                z20 = b21 * v - a21 * o + z21
                z21 = b22 * v - a22 * o
                v = o
                if n_sec > 3:
                    o = b30 * v + z30
                    z30 = b31 * v - a31 * o + z31
                    z31 = b32 * v - a32 * o
                    v = o
        y[i] = v
    if n_sec > 0:
        zi[0, 0] = z00
        zi[0, 1] = z01
    if n_sec > 1:
        zi[1, 0] = z10
        zi[1, 1] = z11
    if n_sec > 2:
        zi[2, 0] = z20
        zi[2, 1] = z21
    if n_sec > 3:
        zi[3, 0] = z30
        zi[3, 1] = z31


@kernel("void(f8[:, :, ::1], f8[:, ::1], f8[:, :, ::1], f8[:, ::1])")
def sos_cascade(sos, x, zi, y):
    """Filter each row of ``x`` through its own SOS cascade (direct form II
    transposed), into ``y``; ``zi`` (rows, sections, 2) carries the state across calls.

    ``sos`` is (rows, sections, 6): every lane may have its own filters. Each sample
    goes through all sections before the next is read (one pass over memory); up to
    four sections run with coefficients and states in registers.
    """
    n_rows, n = x.shape
    n_sec = sos.shape[1]
    for r in range(n_rows):
        if n_sec <= 4:
            _cascade4(sos[r], x[r], zi[r], y[r], n_sec, n)
        else:
            for s in range(n_sec):
                b0 = sos[r, s, 0]
                b1 = sos[r, s, 1]
                b2 = sos[r, s, 2]
                a1 = sos[r, s, 4]
                a2 = sos[r, s, 5]
                z0 = zi[r, s, 0]
                z1 = zi[r, s, 1]
                src = x if s == 0 else y
                for i in range(n):
                    v = src[r, i]
                    out = b0 * v + z0
                    z0 = b1 * v - a1 * out + z1
                    z1 = b2 * v - a2 * out
                    y[r, i] = out
                zi[r, s, 0] = z0
                zi[r, s, 1] = z1
