"""Weighing: the settled-weight estimator against the Cramér–Rao bound, the latency
from a step to its settled event against the mechanics, and the cost of the signal
path against scipy and against real time.

Issue 3 targets: RMS error ≤ 1.25 × σ/√N on white noise; settled within mechanical
settling + stability window + 20 ms at 1 kHz with the default configuration; the
batched cascade at least as fast as scipy.signal.sosfilt (outputs equal within 1e-9) —
issue 19 raised that to ≥ 1.5×, timed interleaved with sosfilt and a plain numba loop
in one loop (``bench/_paired.py``); 1000 lanes × 1 kHz in ≤ 5 % of one core.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.signal

from lanecore.core.weigh.laneconfig import LaneConfig, configure_lane
from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate
from lanecore.ext import filters
from lanecore.ext._numba import kernel
from lanecore.ext.loadcell import LaneBank

from _paired import LoadProbe, paired  # bench/ is on sys.path (pyproject: pythonpath)

CONFIG = LaneConfig()           # the default: 1 kHz, e = 5 g, window 0.25 s
E = CONFIG.e_g
WINDOW_S = CONFIG.stable_window_s
CASCADE_TARGET = 1.5            # × scipy.signal.sosfilt, paired (issue 19)
LANES_CORE_SHARE_TARGET = 0.05  # 1000 lanes × 1 kHz in ≤ 5 % of one core (issue 3)


def _first_settled(bank, x, after_s=0.0, frame=50):
    configure_lane(bank, 0, CONFIG)
    for i in range(0, len(x), frame):
        for ev in bank.feed(0, x[i:i + frame]):
            if ev["event"] == "settled" and ev["t"] > after_s:
                return ev
    return None


def test_estimator_against_cramer_rao(sizes, note, figures):
    """Constant load + white noise: RMS error of the settled weight vs σ/√N."""
    n_traces = 1000 if sizes.real else 100
    bank = LaneBank(1)
    for sigma in (0.5, 2.0):
        errors, reported, used = [], [], []
        for seed in range(n_traces):
            rng = np.random.default_rng(seed)
            truth = float(rng.uniform(50, 10_000))
            x = truth + rng.normal(0, sigma, 700)
            ev = _first_settled(bank, x)
            errors.append(ev["weight_g"] - truth)
            reported.append(ev["sigma_g"])
            used.append(ev["n_samples"])
        n = used[0]
        assert set(used) == {n}
        rms = float(np.sqrt(np.mean(np.square(errors))))
        bound = sigma / np.sqrt(n)
        ratio = rms / bound
        note(f"estimator, {n_traces} white-noise traces, σ = {sigma} g: RMS error "
             f"{rms:.4f} g over N = {n} samples = {ratio:.3f} × Cramér–Rao σ/√N "
             f"(target ≤ 1.25); mean reported σ_g {np.mean(reported):.4f} g "
             f"(= {np.mean(reported) / rms:.2f} × the RMS error)")
        figures.add(f"estimator RMS error / Cramér–Rao bound, white noise σ = {sigma} g",
                    ratio, "of the bound", rounds=n_traces)
        assert ratio <= 1.25
        # the reported uncertainty is honest: errors / sigma_g have unit spread
        z = np.array(errors) / np.array(reported)
        assert 0.8 < np.std(z) < 1.25


def test_latency_against_mechanical_settling(sizes, note):
    """A step through a mass-spring-damper: settled event time vs the mechanics."""
    per_level = 200 if sizes.real else 20
    bank = LaneBank(1)
    rows = []
    for noise_e in (0.02, 0.05, 0.1, 0.2, 0.3):
        over = []
        within = 0
        for seed in range(per_level):
            rng = np.random.default_rng(10_000 + seed)
            p = Placement(t_s=0.4, delta_g=float(rng.uniform(50, 5000)),
                          wn_hz=float(rng.uniform(4, 10)), zeta=float(rng.uniform(0.25, 0.7)))
            x, truth = generate(TraceSpec(seconds=3.0, placements=[p], noise_g=noise_e * E,
                                          settle_band_g=CONFIG.stable_band_e * E,
                                          seed=seed))
            ev = _first_settled(bank, x, after_s=p.t_s)
            assert ev is not None and abs(ev["weight_g"] - p.delta_g) < E
            settling = truth["placements"][0]["settling_s"]
            latency = ev["t"] - p.t_s
            over.append(latency - settling)
            within += latency <= settling + WINDOW_S + 0.020
        over = np.array(over) * 1000
        rows.append((noise_e, within / per_level))
        note(f"latency at 1 kHz, noise {noise_e:.2f} e ({noise_e * E:.2f} g): settled "
             f"{np.median(over):.0f} ms (median), {np.percentile(over, 95):.0f} ms (p95), "
             f"{over.max():.0f} ms (max) after the mechanics settled; within settling + "
             f"{WINDOW_S * 1000:.0f} ms window + 20 ms: {100 * within / per_level:.1f} %")
    # within the bound at every noise level a scale of this e is specified for
    assert all(frac == 1.0 for noise_e, frac in rows)


@pytest.fixture(scope="module")
def cascade_case(sizes):
    lanes, n = (1000, 1000) if sizes.real else (100, 200)
    sos = np.vstack([filters.butterworth(20, 1000, 2), filters.notch(50, 1000, 10),
                     filters.notch(7, 1000, 2)])
    x = np.random.default_rng(0).normal(500, 1, (lanes, n))
    return sos, x


@kernel()
def _plain_biquads(sos, x, zi, y):
    """The reference: the textbook numba loop — one section at a time over the whole
    row, coefficients read from the array, state kept in ``zi`` between sections."""
    n_rows, n = x.shape
    for r in range(n_rows):
        for s in range(sos.shape[0]):
            src = x if s == 0 else y
            for i in range(n):
                v = src[r, i]
                o = sos[s, 0] * v + zi[r, s, 0]
                zi[r, s, 0] = sos[s, 1] * v - sos[s, 4] * o + zi[r, s, 1]
                zi[r, s, 1] = sos[s, 2] * v - sos[s, 5] * o
                y[r, i] = o


def test_cascade_paired_with_scipy(figures, record, note, cascade_case, sizes):
    """The cascade, scipy.signal.sosfilt and the plain numba loop in one loop (ABBA
    order), same SOS, same data; outputs compared in the first and last rounds."""
    sos, x = cascade_case
    per_lane = np.ascontiguousarray(np.broadcast_to(sos, (x.shape[0],) + sos.shape))
    y_lc, y_plain = np.empty_like(x), np.empty_like(x)
    zi_scipy = np.zeros((sos.shape[0], x.shape[0], 2))

    def lanecore():
        filters.sos_cascade(per_lane, x, np.zeros((x.shape[0], sos.shape[0], 2)), y_lc)
        return y_lc

    def plain():
        _plain_biquads(sos, x, np.zeros((x.shape[0], sos.shape[0], 2)), y_plain)
        return y_plain

    def check(out):
        ref = out["scipy"]
        assert ref.shape == x.shape
        assert np.max(np.abs(out["lanecore"] - ref)) < 1e-9
        assert np.max(np.abs(out["plain numba"] - ref)) < 1e-9

    res = paired({"scipy": lambda: scipy.signal.sosfilt(sos, x, axis=-1, zi=zi_scipy)[0],
                  "lanecore": lanecore, "plain numba": plain},
                 rounds=40 if sizes.real else 1, warmup=2 if sizes.real else 0, check=check)
    if not sizes.real:
        return
    group = "SOS cascade: 3 sections"
    record(res.side("scipy"), group, "scipy.signal.sosfilt", "baseline", x.size)
    record(res.side("plain numba"), group, "plain numba biquads", "baseline", x.size,
           target_baseline=False)
    record(res.side("lanecore"), group, "lanecore sos_cascade", "candidate", x.size,
           target=CASCADE_TARGET)
    fig = figures.speedup(f"{group}: lanecore sos_cascade vs scipy.signal.sosfilt", res,
                          "lanecore", "scipy", lanes=x.shape[0], samples=x.shape[1])
    figures.speedup(f"{group}: lanecore sos_cascade vs plain numba biquads", res,
                    "lanecore", "plain numba")
    plain_vs_scipy = res.speedup("plain numba", "scipy")
    ns = res.side("lanecore").min / x.size * 1e9
    note(f"cascade, {x.shape[0]} lanes × {x.shape[1]} samples, 3 sections, {res.rounds} "
         f"interleaved rounds: {res.summary(x.size)} (min / median / max); lanecore "
         f"{fig['value']:.2f}× sosfilt (per-round pairs {fig['min']:.2f} / "
         f"{fig['median']:.2f} / {fig['max']:.2f}); the plain numba loop "
         f"{plain_vs_scipy:.2f}× sosfilt; {res.load}; target ≥ {CASCADE_TARGET}×: "
         f"{'met' if min(fig['value'], fig['median']) >= CASCADE_TARGET else 'NOT MET'}")
    note(f"    the floor: each section is a recurrence in time (o = b0·v + z0, then z0 "
         f"needs a1·o), three dependent floating-point operations per section per sample "
         f"for one lane; lanecore's best {ns:.2f} ns per sample through 3 sections is that "
         f"chain's latency (sections overlap, lanes do not: interleaving 2–8 lanes with "
         f"scalar registers measured no faster, and numba did not vectorise across lanes)")


def test_thousand_lanes_at_1khz(benchmark, record, note, sizes):
    lanes = 1000 if sizes.real else 50
    frame = 50                                   # 50 ms frames at 1 kHz
    bank = LaneBank(lanes)
    for lane in range(lanes):
        configure_lane(bank, lane, CONFIG)
    rng = np.random.default_rng(1)
    frames = [np.ascontiguousarray(1000 + rng.normal(0, 0.5, (lanes, frame)))
              for _ in range(20)]               # one second of signal
    nsamp = np.full(lanes, frame, dtype=np.int64)
    seq = np.full(lanes, -1, dtype=np.int64)

    def one_second():
        for f in frames:
            bank.step(f, nsamp, seq)

    benchmark.pedantic(one_second, rounds=20 if sizes.real else 1, warmup_rounds=2)
    record(benchmark, "signal path: lanes x 1 kHz", f"lanecore, {lanes} lanes", "candidate",
           lanes * 1000)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        share = stats.stats.median / 1.0
        note(f"signal path: {lanes} lanes × 1 kHz cost {stats.stats.median * 1000:.1f} ms "
             f"per second of signal = {100 * share:.1f} % of one core (target ≤ 5 %)")
    assert bank.stable(0)


def test_cpu_share_measured_by_the_process_clock(sizes, note, figures):
    """The same share from the process's own CPU clock (not wall time)."""
    lanes = 1000 if sizes.real else 50
    bank = LaneBank(lanes)
    for lane in range(lanes):
        configure_lane(bank, lane, CONFIG)
    rng = np.random.default_rng(2)
    f = np.ascontiguousarray(1000 + rng.normal(0, 0.5, (lanes, 50)))
    nsamp = np.full(lanes, 50, dtype=np.int64)
    seq = np.full(lanes, -1, dtype=np.int64)
    bank.step(f, nsamp, seq)
    seconds = 10 if sizes.real else 1
    shares = []
    with LoadProbe() as probe:
        for _ in range(seconds):            # one second of signal a round
            t0 = time.process_time()
            for _ in range(20):
                bank.step(f, nsamp, seq)
            shares.append(time.process_time() - t0)
    share = sum(shares) / seconds
    figures.values(f"signal path: {lanes} lanes × 1 kHz, share of one core", shares,
                   "core", load=probe.load)
    note(f"signal path (process CPU clock): {lanes} lanes × 1 kHz = {100 * share:.1f} % of "
         f"one core over {seconds} s of signal")
