"""A synthetic load cell: what a scale's ADC would report, with the ground truth.

Each placement (or removal) is a step through a second-order mass-spring-damper
(natural frequency ``wn_hz``, damping ratio ``zeta``); on top come white noise, a
conveyor tone, mains hum, spikes and a slow drift of the zero. Everything is drawn
from ``numpy.random.default_rng(seed)``, so a trace is reproducible from its
parameters. Tests, benchmarks, the demo and ``lanecore weigh gen`` use it.

The ground truth says, for each placement, the static weight before and after, and
the *mechanical settling time*: how long after the step the noise-free response stays
within ±``settle_band_g``/2 of its final value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Placement:
    """An item put on (``delta_g`` > 0) or taken off (< 0) the scale at ``t_s``."""

    t_s: float
    delta_g: float
    wn_hz: float = 6.0
    zeta: float = 0.35


@dataclass
class TraceSpec:
    """Everything a synthetic trace is made from."""

    fs_hz: float = 1000.0
    seconds: float = 3.0
    initial_g: float = 0.0
    placements: list[Placement] = field(default_factory=list)
    noise_g: float = 0.5            # white noise, standard deviation
    conveyor_hz: float = 0.0        # conveyor vibration tone (0: none)
    conveyor_g: float = 0.0         # its amplitude
    mains_hz: float = 50.0
    mains_g: float = 0.0            # mains hum amplitude
    spikes_per_s: float = 0.0       # single-sample spikes (e.g. ESD, a knock)
    spike_g: float = 0.0            # their size (random sign)
    drift_g_per_s: float = 0.0      # slow zero drift (temperature)
    settle_band_g: float = 5.0      # for the ground truth's settling times
    seed: int = 0


def step_response(t: np.ndarray, wn_hz: float, zeta: float) -> np.ndarray:
    """Unit step response of a second-order system at times ``t`` (0 before t=0)."""
    wn = 2 * math.pi * wn_hz
    out = np.zeros_like(t, dtype=float)
    m = t >= 0
    tt = t[m]
    if zeta < 1:
        wd = wn * math.sqrt(1 - zeta * zeta)
        out[m] = 1 - np.exp(-zeta * wn * tt) * (np.cos(wd * tt) + zeta / math.sqrt(1 - zeta * zeta)
                                                  * np.sin(wd * tt))
    elif zeta == 1:
        out[m] = 1 - np.exp(-wn * tt) * (1 + wn * tt)
    else:
        r = math.sqrt(zeta * zeta - 1)
        p1, p2 = -wn * (zeta - r), -wn * (zeta + r)
        out[m] = 1 + (p2 * np.exp(p1 * tt) - p1 * np.exp(p2 * tt)) / (p1 - p2)
    return out


def settling_time(wn_hz: float, zeta: float, delta_g: float, band_g: float,
                  fs_hz: float = 10_000.0, horizon_s: float = 20.0) -> float:
    """Seconds after a step of ``delta_g`` until the response stays within ±band_g/2."""
    t = np.arange(0, horizon_s, 1 / fs_hz)
    err = np.abs(delta_g * (step_response(t, wn_hz, zeta) - 1.0))
    outside = np.nonzero(err > band_g / 2)[0]
    return 0.0 if len(outside) == 0 else float(t[outside[-1]] + 1 / fs_hz)


def mechanical(spec: TraceSpec) -> np.ndarray:
    """The noise-free signal in grams: initial load plus each placement's response."""
    n = int(round(spec.seconds * spec.fs_hz))
    t = np.arange(n) / spec.fs_hz
    x = np.full(n, float(spec.initial_g))
    for p in spec.placements:
        x += p.delta_g * step_response(t - p.t_s, p.wn_hz, p.zeta)
    return x


def generate(spec: TraceSpec) -> tuple[np.ndarray, dict]:
    """A trace of ``spec.seconds`` in grams and its ground truth."""
    rng = np.random.default_rng(spec.seed)
    n = int(round(spec.seconds * spec.fs_hz))
    t = np.arange(n) / spec.fs_hz
    x = mechanical(spec)
    if spec.noise_g:
        x += rng.normal(0.0, spec.noise_g, n)
    if spec.conveyor_g and spec.conveyor_hz:
        x += spec.conveyor_g * np.sin(2 * math.pi * spec.conveyor_hz * t + rng.uniform(0, 6.3))
    if spec.mains_g and spec.mains_hz:
        x += spec.mains_g * np.sin(2 * math.pi * spec.mains_hz * t + rng.uniform(0, 6.3))
    if spec.drift_g_per_s:
        x += spec.drift_g_per_s * t
    spikes = []
    if spec.spikes_per_s and spec.spike_g:
        k = rng.poisson(spec.spikes_per_s * spec.seconds)
        where = np.sort(rng.choice(n, size=min(k, n), replace=False))
        x[where] += spec.spike_g * rng.choice([-1.0, 1.0], size=len(where))
        spikes = (where / spec.fs_hz).tolist()
    truth = {
        "spec": {**asdict(spec), "placements": [asdict(p) for p in spec.placements]},
        "placements": [],
        "spikes_s": spikes,
    }
    level = float(spec.initial_g)
    for p in sorted(spec.placements, key=lambda p: p.t_s):
        before = level
        level += p.delta_g
        truth["placements"].append({
            "t_s": p.t_s,
            "delta_g": p.delta_g,
            "before_g": round(before, 6),
            "after_g": round(level, 6),
            "settling_s": settling_time(p.wn_hz, p.zeta, p.delta_g, spec.settle_band_g),
        })
    return x, truth


def to_counts(x_g: np.ndarray, *, counts_per_g: float, zero_counts: float,
              bits: int = 24) -> np.ndarray:
    """Grams to raw signed ADC counts, rounded and saturated at the converter's range."""
    full = 2 ** (bits - 1) - 1
    return np.clip(np.round(x_g * counts_per_g + zero_counts), -full, full)


def random_spec(rng: np.random.Generator, *, fs_hz: float = 1000.0, seconds: float = 6.0,
                items: int = 3, noise_g: float = 0.5, settle_band_g: float = 5.0
                ) -> TraceSpec:
    """A bagging-area session: ``items`` placements of plausible goods, well apart."""
    placements = []
    t = 0.5
    for _ in range(items):
        w = float(np.clip(rng.lognormal(math.log(400), 0.9), 20, 5000))
        placements.append(Placement(t_s=round(t, 3), delta_g=round(w, 1),
                                    wn_hz=float(rng.uniform(4, 10)),
                                    zeta=float(rng.uniform(0.25, 0.6))))
        t += float(rng.uniform(1.2, 2.0))
    return TraceSpec(fs_hz=fs_hz, seconds=max(seconds, t + 1.0), placements=placements,
                     noise_g=noise_g, settle_band_g=settle_band_g,
                     seed=int(rng.integers(2**31)))
