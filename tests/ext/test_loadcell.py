"""The load-cell signal path (Numba kernel; its twin is the same code under
NUMBA_DISABLE_JIT=1) and the filters it runs."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal

from lanecore.core.weigh.laneconfig import LaneConfig, WeighConfigError, configure_lane
from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate, to_counts
from lanecore.ext import filters, loadcell
from lanecore.ext.loadcell import LaneBank


def run(trace, config=None, *, frame=50, lane_bank=None, seqs=None):
    bank = lane_bank or LaneBank(1)
    configure_lane(bank, 0, config or LaneConfig())
    events = []
    for k, i in enumerate(range(0, len(trace), frame)):
        seq = -1 if seqs is None else seqs[k]
        events += bank.feed(0, trace[i:i + frame], seq)
    return events


def kinds(events):
    return [e["event"] for e in events]


SESSION = TraceSpec(seconds=7.0, noise_g=0.5, mains_g=2.0, spikes_per_s=2.0, spike_g=300.0,
                    placements=[Placement(0.5, 412.3), Placement(2.5, 1000.0),
                                Placement(4.5, -412.3)], seed=1)


# --------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------

def test_median5_is_the_median():
    med = getattr(loadcell._median5, "py_func", loadcell._median5)
    for p in itertools.permutations(range(5)):
        assert med(*map(float, p)) == 2.0
    rng = np.random.default_rng(0)
    for _ in range(2000):
        v = rng.choice([0.0, 1.0, 2.5, rng.normal()], size=5).tolist()
        assert med(*v) == statistics.median(v)


@pytest.mark.parametrize("sos", [filters.butterworth(20, 1000, 2), filters.butterworth(5, 80, 4),
                                 filters.notch(50, 1000, 10)[None, :],
                                 np.vstack([filters.butterworth(20, 1000, 4),
                                            filters.notch(50, 1000, 10),
                                            filters.notch(100, 1000, 10),
                                            filters.notch(7, 1000, 2)])])
def test_sections_pass_dc_and_match_scipy(sos):
    rng = np.random.default_rng(3)
    x = rng.normal(100.0, 5.0, (4, 3000))
    y = np.empty_like(x)
    zi = np.zeros((4, sos.shape[0], 2))
    filters.sos_cascade(np.ascontiguousarray(np.broadcast_to(sos, (4,) + sos.shape)), x, zi, y)
    want = scipy.signal.sosfilt(sos, x, axis=-1)
    assert np.max(np.abs(y - want)) < 1e-9
    assert abs(filters.impulse_response(sos, 20000).sum() - 1.0) < 1e-6   # unity DC gain


def test_no_sections_pass_samples_through():
    x = np.random.default_rng(0).normal(0, 1, (2, 100))
    y = np.empty_like(x)
    filters.sos_cascade(np.zeros((2, 0, 6)), x, np.zeros((2, 0, 2)), y)
    assert (y == x).all()


def test_cascade_carries_state_across_calls():
    sos = np.ascontiguousarray(np.vstack([filters.butterworth(20, 1000, 2),
                                          filters.notch(50, 1000, 10)])[None])
    x = np.random.default_rng(1).normal(0, 1, (1, 1000))
    whole = np.empty_like(x)
    filters.sos_cascade(sos, x, np.zeros((1, 2, 2)), whole)
    zi = np.zeros((1, 2, 2))
    parts = []
    for i in range(0, 1000, 37):
        part = np.ascontiguousarray(x[:, i:i + 37])
        out = np.empty_like(part)
        filters.sos_cascade(sos, part, zi, out)
        parts.append(out)
    assert np.allclose(np.hstack(parts), whole, atol=1e-12)


def test_notch_removes_mains():
    fs = 1000.0
    t = np.arange(4000) / fs
    x = 100 + 3 * np.sin(2 * np.pi * 50 * t)
    bank_events = run(x, LaneConfig(fs_hz=fs, e_g=1.0))
    settled = [e for e in bank_events if e["event"] == "settled"]
    assert settled and abs(settled[0]["weight_g"] - 100) < 0.05


def test_noise_gain_is_the_variance_ratio():
    sos = np.vstack([filters.butterworth(20, 1000, 2), filters.notch(50, 1000, 10)])
    x = np.random.default_rng(2).normal(0, 1, 400_000)
    y = scipy.signal.sosfilt(sos, x)
    assert filters.noise_gain(sos, 1000) == pytest.approx(np.var(y[2000:]), rel=0.03)


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------

def test_a_bagging_session():
    x, truth = generate(SESSION)
    ev = run(x)
    assert kinds(ev) == ["settled", "motion", "settled", "placed", "motion", "settled",
                         "placed", "motion", "settled", "removed"]
    settled = [e for e in ev if e["event"] == "settled"]
    for e, want in zip(settled, [0.0] + [p["after_g"] for p in truth["placements"]]):
        assert abs(e["weight_g"] - want) < 5.0                  # within 1 e
        assert e["n_samples"] == 250 and e["sigma_g"] > 0
    deltas = [e["delta_g"] for e in ev if "delta_g" in e]
    assert deltas == pytest.approx([412.3, 1000.0, -412.3], abs=5.0)
    for e, p in zip([e for e in ev if e["event"] == "settled"][1:], truth["placements"]):
        # settled after the mechanics settle, within the window and 20 ms more
        assert e["t"] - p["t_s"] <= p["settling_s"] + 0.25 + 0.02


def test_same_events_whatever_the_frame_size():
    x, _ = generate(SESSION)
    cfg = LaneConfig(zero_tracking=False)   # zero tracking corrects from the next frame
    a = run(x, cfg, frame=50)
    for frame in (7, 333, len(x)):
        b = run(x, cfg, frame=frame)
        assert kinds(a) == kinds(b)
        assert [e["sample"] for e in a] == [e["sample"] for e in b]
        for ea, eb in zip(a, b):
            for k in ("weight_g", "delta_g", "sigma_g"):
                if k in ea:
                    assert ea[k] == pytest.approx(eb[k], abs=1e-9)


def test_many_lanes_in_one_call_equal_one_at_a_time():
    rng = np.random.default_rng(5)
    traces = [generate(TraceSpec(seconds=3, placements=[Placement(0.4, float(w))],
                                 noise_g=0.4, seed=int(s)))[0]
              for w, s in zip(rng.uniform(50, 3000, 8), rng.integers(0, 1000, 8))]
    configs = [LaneConfig(), LaneConfig(e_g=2.0), LaneConfig(stable_window_s=0.1),
               LaneConfig(mains_hz=60.0), LaneConfig(lowpass_hz=10.0, lowpass_order=4),
               LaneConfig(conveyor_hz=7.0), LaneConfig(spike_e=0), LaneConfig(e_g=10.0)]
    bank = LaneBank(8)
    for lane, cfg in enumerate(configs):
        configure_lane(bank, lane, cfg)
    together = {lane: [] for lane in range(8)}
    frames = np.stack(traces)
    for i in range(0, frames.shape[1], 50):
        chunk = np.ascontiguousarray(frames[:, i:i + 50])
        bank.step(chunk, np.full(8, chunk.shape[1], dtype=np.int64),
                  np.full(8, -1, dtype=np.int64))
        for lane in range(8):
            together[lane] += bank.events(lane)
    for lane in range(8):
        alone = run(traces[lane], configs[lane])
        assert together[lane] == alone
        assert "settled" in kinds(alone)


def test_counts_input_is_calibrated():
    x, truth = generate(TraceSpec(seconds=3, placements=[Placement(0.5, 750.0)], noise_g=0.3))
    counts = to_counts(x, counts_per_g=412.5, zero_counts=-81_000, bits=24)
    cfg = LaneConfig(counts_per_g=412.5, zero_counts=-81_000, adc_bits=24)
    settled = [e for e in run(counts, cfg) if e["event"] == "settled"]
    assert settled[-1]["weight_g"] == pytest.approx(750.0, abs=1.0)


def test_overload_and_under_zero():
    x = np.concatenate([np.full(500, 0.0), np.full(500, 31_000.0), np.full(500, 0.0),
                        np.full(500, -200.0)]) + np.random.default_rng(0).normal(0, .2, 2000)
    ev = run(x, LaneConfig(max_g=30_000, spike_e=0))
    assert "overload" in kinds(ev) and "under_zero" in kinds(ev)
    over = next(e for e in ev if e["event"] == "overload")
    assert over["weight_g"] > 30_045 and 0.5 <= over["t"] < 0.55


def test_zero_tracking_follows_slow_drift_near_zero_only():
    fs = 1000.0
    t = np.arange(int(60 * fs)) / fs
    noise = np.random.default_rng(4).normal(0, 0.3, len(t))
    drift = 0.2 * 5.0 * t           # 0.2 e/s with e = 5 g: 12 g in a minute
    tracked = [e for e in run(drift + noise) if e["event"] == "settled"]
    assert all(abs(e["weight_g"]) < 2.5 for e in tracked)   # never half an e off zero
    # A load creeping 12 g while it sits there is not tracked away, and a slow creep
    # is not motion either: an item put on afterwards weighs what it weighs.
    x = 1000 + drift + noise
    x[50_000:] += 300.0
    ev = run(x)
    assert kinds(ev) == ["settled", "motion", "settled", "placed"]
    assert ev[-1]["delta_g"] == pytest.approx(300 + 0.2 * 5.0 * (50.3 - 0.3), abs=2.5)
    # a quick ramp leaves the zero band at once: tracking stops within ½ e
    bank = LaneBank(1)
    run(2.5 * 5.0 * t[:10_000] + noise[:10_000], lane_bank=bank)
    assert abs(bank.fst[0, loadcell.FS_ZT]) < 2.5


# --------------------------------------------------------------------------------------
# Faults: never a settled weight from bad data
# --------------------------------------------------------------------------------------

def _steady(n=3000, w=500.0):
    return w + np.random.default_rng(9).normal(0, 0.5, n)


@pytest.mark.parametrize("bad, reason", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")])
def test_nan_and_inf_are_faults(bad, reason):
    x = _steady()
    x[1000:1005] = bad
    ev = run(x)
    fault = next(e for e in ev if e["event"] == "fault")
    assert fault["reason"] == reason and fault["sample"] == 1000
    after = [e for e in ev if e["event"] == "settled" and e["sample"] > 1000]
    # the lane settles again only after a whole window of clean samples
    assert after and after[0]["sample"] >= 1005 + 250 - 1


def test_saturated_adc():
    x = _steady() * 100
    x[500:600] = 2 ** 23 - 1
    ev = run(x, LaneConfig(counts_per_g=100, adc_bits=24))
    assert [e["reason"] for e in ev if e["event"] == "fault"] == ["saturated"]


def test_stuck_adc():
    x = _steady()
    x[1000:1800] = x[1000]
    ev = run(x, LaneConfig(stuck_s=0.5))
    faults = [e for e in ev if e["event"] == "fault"]
    assert faults[0]["reason"] == "stuck" and faults[0]["sample"] == 1500
    assert not [e for e in ev if e["event"] == "settled" and 1500 <= e["sample"] < 1800 + 249]


def test_sequence_gap_and_out_of_order():
    x = _steady(2000)
    frames = [x[i:i + 50] for i in range(0, 2000, 50)]
    bank = LaneBank(1)
    configure_lane(bank, 0, LaneConfig())
    ev = []
    for k, f in enumerate(frames[:20]):
        ev += bank.feed(0, f, seq=k)
    before = bank.ist[0].copy(), bank.fst[0].copy()
    late = bank.feed(0, frames[20], seq=5)                   # out of order: dropped
    assert [(e["event"], e["reason"], e["frames"]) for e in late] == [("fault", "out_of_order", 15)]
    assert (bank.ist[0] == before[0]).all() and (bank.fst[0] == before[1]).all()
    gap = bank.feed(0, frames[21], seq=23)                   # frames 20..22 lost
    assert gap[0]["reason"] == "sequence_gap" and gap[0]["frames"] == 3
    assert not bank.stable(0)


def test_event_overflow_is_reported():
    x = np.tile(np.concatenate([np.full(3, 0.0), np.full(3, 1000.0)]), 200)
    cfg = LaneConfig(stable_window_s=0.003, spike_e=0, lowpass_hz=0, mains_hz=0)
    bank = LaneBank(1)
    configure_lane(bank, 0, cfg)
    ev = bank.feed(0, x)
    assert len(ev) == loadcell.MAX_EVENTS
    assert ev[-1]["event"] == "fault" and ev[-1]["reason"] == "event_overflow"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, code", [
    ({"fs_hz": 0}, "BAD_SAMPLE_RATE"), ({"fs_hz": float("nan")}, "BAD_SAMPLE_RATE"),
    ({"fs_hz": 1e6}, "BAD_SAMPLE_RATE"), ({"e_g": 0}, "BAD_SCALE_INTERVAL"),
    ({"lowpass_hz": 600}, "BAD_FILTER"), ({"conveyor_hz": 480}, "BAD_FILTER"),
    ({"lowpass_order": 3}, "BAD_FILTER"), ({"stable_window_s": 0}, "BAD_WEIGH_CONFIG"),
    ({"stable_window_s": 100}, "BAD_WEIGH_CONFIG"),
    ({"counts_per_g": 0}, "BAD_WEIGH_CONFIG"), ({"e_g": "5"}, "BAD_SCALE_INTERVAL"),
])
def test_bad_configuration_has_a_stable_code(kwargs, code):
    with pytest.raises(WeighConfigError) as exc:
        LaneConfig(**kwargs).validate()
    assert exc.value.code == code


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(WeighConfigError, match="colour"):
        LaneConfig.from_dict({"fs_hz": 80, "colour": "red"})
    assert LaneConfig.from_dict({"fs_hz": 80}).compile()[0]["win"] == 20


def test_slow_adc_has_no_mains_notch():
    sos = LaneConfig(fs_hz=10.0).sos()          # HX711 at 10 Hz: 50 Hz is out of sight
    assert sos.shape[0] == 1                    # the low-pass alone, at 2 Hz
    assert LaneConfig(fs_hz=10.0).compile()[0]["win"] == 3   # never fewer than 3


# --------------------------------------------------------------------------------------
# The compiled kernel and its twin
# --------------------------------------------------------------------------------------

TWIN_SCRIPT = r"""
import json, sys
import numpy as np
from lanecore.core.weigh.laneconfig import LaneConfig, configure_lane
from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate
from lanecore.ext.loadcell import LaneBank, IMPLEMENTATION
out = {"impl": IMPLEMENTATION, "events": []}
for seed in range(3):
    spec = TraceSpec(seconds=4.0, noise_g=0.6, mains_g=1.5, spikes_per_s=3, spike_g=200,
                     drift_g_per_s=0.1, placements=[Placement(0.6, 321.0 + seed),
                     Placement(2.2, -150.0)], seed=seed)
    x, _ = generate(spec)
    x[3000:3004] = np.nan
    bank = LaneBank(1)
    configure_lane(bank, 0, LaneConfig(conveyor_hz=6.0))
    ev = []
    for k, i in enumerate(range(0, len(x), 40)):
        ev += bank.feed(0, x[i:i + 40], k + (2 if i > 3500 else 0))
    out["events"].append(ev)
json.dump(out, sys.stdout)
"""


def _twin_run(disable_jit: bool):
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)
    if disable_jit:
        env["NUMBA_DISABLE_JIT"] = "1"
    proc = subprocess.run([sys.executable, "-c", TWIN_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_compiled_kernel_and_twin_emit_the_same_events():
    compiled = _twin_run(False)
    twin = _twin_run(True)
    assert (compiled["impl"], twin["impl"]) == ("numba", "python")
    assert sum(len(e) for e in compiled["events"]) > 10
    for a, b in zip(compiled["events"], twin["events"]):
        assert [(e["event"], e["sample"]) for e in a] == [(e["event"], e["sample"]) for e in b]
        for ea, eb in zip(a, b):
            for k, v in ea.items():
                if isinstance(v, float):
                    assert v == pytest.approx(eb[k], rel=1e-12, abs=1e-12), (k, ea, eb)
                else:
                    assert v == eb[k]


CACHE_SCRIPT = r"""
from lanecore.ext import loadcell
loadcell.warm_up()
print(sum(loadcell.lanes_step.stats.cache_hits.values()))
"""


@pytest.mark.skipif(loadcell.JIT_DISABLED, reason="the twin is not compiled, so not cached")
def test_kernels_load_from_the_cache_at_start_up(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], capture_output=True,
                           text=True, env=env, timeout=600)
    second = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=600)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert int(first.stdout) == 0 and int(second.stdout) >= 1
