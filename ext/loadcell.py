"""The load-cell signal path, for many lanes at once (Numba; twin: NUMBA_DISABLE_JIT=1).

One call of ``lanes_step`` advances any set of lanes in the bank by one frame of raw
samples each. Per sample and lane:

1. **faults**: NaN, ±inf, a saturated ADC (``|raw| >= sat``), a stuck ADC (the same
   raw value ``stuck_n`` times running) — the sample is not used, the stability
   window restarts, and a ``fault`` event is emitted when the condition begins;
2. **calibration**: grams = (raw − zero_counts) / counts_per_g − tare − zero tracking;
3. **spike rejection** (Hampel): a sample further than ``spike_g`` from the running
   median of the last five is replaced by that median;
4. **filtering**: the lane's cascade of biquads (low-pass, mains and conveyor
   notches), direct form II transposed;
5. **stability**: the lane is stable while the last ``win`` filtered samples lie
   within a band ``band_g`` wide (their max and min by van Herk / Gil-Werman: O(1)
   per sample without data-dependent branches; rings as long as the bank's longest
   window);
6. **events**: ``settled`` on becoming stable — the mean of the window, its
   standard error ``s / sqrt(N·Σh²)`` (N·Σh² is the number of independent samples
   left after the filters' correlation: N_eff), and N — then ``placed`` /
   ``removed`` when it differs from the last settled weight by ``placed_g`` or more;
   ``motion`` on becoming unstable; ``overload`` and ``under_zero`` when the weight
   crosses those limits (with hysteresis); ``fault`` for sample faults, sequence gaps
   and frames that arrive out of order (dropped);
7. **zero tracking**: only when stable, within ``zt_band`` of zero, at most
   ``zt_rate`` grams per sample, and never beyond ``zt_limit`` in total.

The lane's state lives in rows of 2-D arrays held by ``LaneBank``; events are written
to per-lane arrays and turned into dicts by the bank.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import IMPLEMENTATION, JIT_DISABLED, inline, kernel  # noqa: F401
from .filters import _cascade4

# --- configuration columns (float64) ---------------------------------------------
CF_FS, CF_CPG, CF_ZERO, CF_TARE, CF_SPIKE, CF_BAND, CF_WIN, CF_ZT_RATE, CF_ZT_BAND, \
    CF_ZT_LIMIT, CF_OVER, CF_UNDER, CF_HYST, CF_PLACED, CF_SAT, CF_STUCK, CF_G2, \
    CF_WARM, CF_NSEC = range(19)
NCFG = 19
# --- float state -------------------------------------------------------------------
FS_ZT, FS_LAST_RAW, FS_LAST_SETTLED, FS_PMAX, FS_PMIN = range(5)
NFS = 5
# --- int state ---------------------------------------------------------------------
IS_SAMPLE, IS_COUNT, IS_STABLE, IS_HAVE_SETTLED, IS_OVER, IS_UNDER, IS_RUN, \
    IS_NEXT_SEQ, IS_MED_N, IS_FAULT, IS_PRIMED, IS_POS = range(12)
NIS = 12

# --- events ------------------------------------------------------------------------
EV_MOTION, EV_SETTLED, EV_PLACED, EV_REMOVED, EV_OVERLOAD, EV_UNDER_ZERO, EV_FAULT = \
    range(1, 8)
EVENT_NAMES = {EV_MOTION: "motion", EV_SETTLED: "settled", EV_PLACED: "placed",
               EV_REMOVED: "removed", EV_OVERLOAD: "overload",
               EV_UNDER_ZERO: "under_zero", EV_FAULT: "fault"}
F_NAN, F_INF, F_SATURATED, F_STUCK, F_SEQUENCE_GAP, F_OUT_OF_ORDER, F_EVENT_OVERFLOW = \
    range(1, 8)
FAULT_NAMES = {F_NAN: "nan", F_INF: "inf", F_SATURATED: "saturated", F_STUCK: "stuck",
               F_SEQUENCE_GAP: "sequence_gap", F_OUT_OF_ORDER: "out_of_order",
               F_EVENT_OVERFLOW: "event_overflow"}

#: Most events one lane can report per frame (more set an event_overflow fault).
MAX_EVENTS = 32
#: Longest stability window, in samples (10 s at 10 kHz).
MAX_WINDOW = 100_000
#: Most biquad sections per lane.
MAX_SECTIONS = 8


@inline
def _median5(a, b, c, d, e):
    """Median of five numbers with min and max only: no branch for noise to make
    the processor mispredict."""
    f = max(min(a, b), min(c, d))
    g = min(max(a, b), max(c, d))
    return max(min(e, f), min(max(e, f), g))


@inline
def _emit(ev_type, ev_idx, ev_val, ev_n, lane, kind, idx, v0, v1, v2):
    k = ev_n[lane]
    if k < MAX_EVENTS - 1:
        ev_type[lane, k] = kind
        ev_idx[lane, k] = idx
        ev_val[lane, k, 0] = v0
        ev_val[lane, k, 1] = v1
        ev_val[lane, k, 2] = v2
        ev_n[lane] = k + 1
    elif k == MAX_EVENTS - 1:
        # the last slot says that events were lost
        ev_type[lane, k] = EV_FAULT
        ev_idx[lane, k] = idx
        ev_val[lane, k, 0] = F_EVENT_OVERFLOW
        ev_val[lane, k, 1] = 0.0
        ev_val[lane, k, 2] = 0.0
        ev_n[lane] = k + 1


@kernel("void(i8[::1], f8[:, ::1], i8[::1], i8[::1], f8[:, ::1], f8[:, :, ::1], f8[:, ::1], "
        "i8[:, ::1], f8[:, :, ::1], f8[:, ::1], f8[:, ::1], f8[:, ::1], f8[:, ::1], "
        "i8[:, ::1], i8[:, ::1], f8[:, :, ::1], i8[::1], f8[::1], i8[::1], u1[::1])")
def lanes_step(which, samples, nsamp, seq, cfg, sos, fst, ist, zi, med, ybuf, sufmax,
               sufmin, ev_type, ev_idx, ev_val, ev_n, tmp_w, tmp_idx, tmp_reset):
    """Advance lane ``which[j]`` by its frame ``samples[j, :nsamp[j]]``, for every j.

    ``seq[j]`` is the frame's sequence number (-1: unnumbered); ``nsamp[j] == 0``
    leaves the lane alone. A lane may appear once per call. Events land in
    ``ev_*[lane, :ev_n[lane]]`` (fault events first, then the others, each in time
    order). ``tmp_*`` are scratch arrays at least as long as a frame.

    A frame is done in three passes: faults, calibration and spike rejection; the
    filter cascade; then stability, events and zero tracking.
    Zero tracking therefore corrects from the next frame on.
    """
    for jj in range(which.shape[0]):
        lane = which[jj]
        ev_n[lane] = 0
        n = nsamp[jj]
        if n <= 0:
            continue
        sample = ist[lane, IS_SAMPLE]
        reset = 0
        # --- sequence numbers --------------------------------------------------
        s = seq[jj]
        if s >= 0:
            expect = ist[lane, IS_NEXT_SEQ]
            if expect >= 0 and s < expect:
                _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_FAULT, sample,
                      F_OUT_OF_ORDER, float(expect - s), 0.0)
                continue
            if expect >= 0 and s > expect:
                _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_FAULT, sample,
                      F_SEQUENCE_GAP, float(s - expect), 0.0)
                reset = 1   # time jumped: the window starts again
            ist[lane, IS_NEXT_SEQ] = s + 1

        # --- pass 1: faults, calibration, spike rejection ----------------------
        cpg = cfg[lane, CF_CPG]
        zero = cfg[lane, CF_ZERO]
        tare = cfg[lane, CF_TARE]
        spike = cfg[lane, CF_SPIKE]
        sat = cfg[lane, CF_SAT]
        stuck_n = int(cfg[lane, CF_STUCK])
        zt = fst[lane, FS_ZT]
        offset = zero / cpg + tare + zt
        inv = 1.0 / cpg
        last_raw = fst[lane, FS_LAST_RAW]
        run = ist[lane, IS_RUN]
        fault = ist[lane, IS_FAULT]
        med_n = ist[lane, IS_MED_N]
        m0 = med[lane, 0]
        m1 = med[lane, 1]
        m2 = med[lane, 2]
        m3 = med[lane, 3]
        m4 = med[lane, 4]
        nv = 0
        row = samples[jj]
        for j in range(n):
            raw = row[j]
            idx = sample + j
            bad = 0
            if raw != raw:
                bad = F_NAN
            elif raw == np.inf or raw == -np.inf:
                bad = F_INF
            elif sat > 0.0 and abs(raw) >= sat:
                bad = F_SATURATED
            else:
                if raw == last_raw:
                    run += 1
                else:
                    run = 0
                last_raw = raw
                if stuck_n > 0 and run >= stuck_n:
                    bad = F_STUCK
            if bad != 0:
                if fault != bad:
                    _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_FAULT, idx, float(bad),
                          raw if bad == F_SATURATED or bad == F_STUCK else 0.0, 0.0)
                    fault = bad
                reset = 1
                continue
            fault = 0
            w = raw * inv - offset
            # the last five good samples, oldest first
            m0 = m1
            m1 = m2
            m2 = m3
            m3 = m4
            m4 = w
            med_n += 1
            if spike > 0.0 and med_n >= 5:
                m = _median5(m0, m1, m2, m3, m4)
                if abs(w - m) > spike:
                    w = m
            tmp_w[nv] = w
            tmp_idx[nv] = idx
            tmp_reset[nv] = reset
            reset = 0
            nv += 1
        sample += n
        fst[lane, FS_LAST_RAW] = last_raw
        ist[lane, IS_RUN] = run
        ist[lane, IS_FAULT] = fault
        ist[lane, IS_MED_N] = med_n
        med[lane, 0] = m0
        med[lane, 1] = m1
        med[lane, 2] = m2
        med[lane, 3] = m3
        med[lane, 4] = m4
        ist[lane, IS_SAMPLE] = sample
        if nv == 0:
            if reset and ist[lane, IS_COUNT] >= 0:
                ist[lane, IS_COUNT] = 0
                ist[lane, IS_STABLE] = 0
            continue

        # --- pass 2: the filter cascade ------------------------------------------
        nsec = int(cfg[lane, CF_NSEC])
        count = ist[lane, IS_COUNT]
        if ist[lane, IS_PRIMED] == 0:
            # Start the filters as if the first weight had always been there, and
            # keep the first window out until that sample's own noise has left
            # them (``warm`` samples).
            w0 = tmp_w[0]
            for k in range(nsec):
                zi[lane, k, 0] = w0 * (1.0 - sos[lane, k, 0])
                zi[lane, k, 1] = w0 * (sos[lane, k, 2] - sos[lane, k, 5])
            ist[lane, IS_PRIMED] = 1
            count = -int(cfg[lane, CF_WARM])
        if 0 < nsec <= 4:
            _cascade4(sos[lane], tmp_w, zi[lane], tmp_w, nsec, nv)
        else:
            for k in range(nsec):
                b0 = sos[lane, k, 0]
                b1 = sos[lane, k, 1]
                b2 = sos[lane, k, 2]
                a1 = sos[lane, k, 4]
                a2 = sos[lane, k, 5]
                z0 = zi[lane, k, 0]
                z1 = zi[lane, k, 1]
                for i in range(nv):
                    v = tmp_w[i]
                    out = b0 * v + z0
                    z0 = b1 * v - a1 * out + z1
                    z1 = b2 * v - a2 * out
                    tmp_w[i] = out
                zi[lane, k, 0] = z0
                zi[lane, k, 1] = z1

        # --- pass 3: limits, stability, events, zero tracking -------------------
        band = cfg[lane, CF_BAND]
        win = int(cfg[lane, CF_WIN])
        zt_rate = cfg[lane, CF_ZT_RATE]
        zt_band = cfg[lane, CF_ZT_BAND]
        zt_limit = cfg[lane, CF_ZT_LIMIT]
        over_g = cfg[lane, CF_OVER]
        under_g = cfg[lane, CF_UNDER]
        hyst = cfg[lane, CF_HYST]
        placed_g = cfg[lane, CF_PLACED]
        g2 = cfg[lane, CF_G2]
        last_settled = fst[lane, FS_LAST_SETTLED]
        stable = ist[lane, IS_STABLE]
        have_settled = ist[lane, IS_HAVE_SETTLED]
        over = ist[lane, IS_OVER]
        under = ist[lane, IS_UNDER]
        pos = ist[lane, IS_POS]
        pmax = fst[lane, FS_PMAX]
        pmin = fst[lane, FS_PMIN]
        yb = ybuf[lane]
        sx = sufmax[lane]
        sn = sufmin[lane]
        for i in range(nv):
            y = tmp_w[i]
            idx = tmp_idx[i]
            if tmp_reset[i] == 1 and count >= 0:
                # after a fault or a gap, only clean samples may settle the lane again
                count = 0
                stable = 0
            if over == 0 and y > over_g:
                over = 1
                _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_OVERLOAD, idx, y, 0.0, 0.0)
            elif over == 1 and y < over_g - hyst:
                over = 0
            if under == 0 and y < under_g:
                under = 1
                _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_UNDER_ZERO, idx, y, 0.0, 0.0)
            elif under == 1 and y > under_g + hyst:
                under = 0
            if count < 0:
                count += 1
                continue
            if count == 0:
                pos = 0
            # The window is the last ``win`` samples; its max and min by van Herk /
            # Gil-Werman: the ring is cut into blocks of ``win``; the window is the
            # tail of the previous block (its suffix extremes, computed once when it
            # filled) and the head of this one (running prefix extremes). No branch
            # depends on the noise.
            c = count
            yb[pos] = y
            if pos == 0:
                pmax = y
                pmin = y
            else:
                pmax = max(pmax, y)
                pmin = min(pmin, y)
            if pos + 1 < win:
                top = max(sx[pos + 1], pmax)
                bottom = min(sn[pos + 1], pmin)
            else:
                top = pmax
                bottom = pmin
            pos += 1
            if pos == win:
                pos = 0
                hi = yb[win - 1]
                lo = hi
                sx[win - 1] = hi
                sn[win - 1] = lo
                for k in range(win - 2, -1, -1):
                    v = yb[k]
                    hi = max(hi, v)
                    lo = min(lo, v)
                    sx[k] = hi
                    sn[k] = lo
            count = c + 1
            now_stable = 0
            if count >= win and top - bottom <= band:
                now_stable = 1
            if now_stable == 1 and stable == 0:
                total = 0.0
                for k in range(win):
                    total += yb[k]
                mean = total / win
                ss = 0.0
                for k in range(win):
                    d = yb[k] - mean
                    ss += d * d
                # The window's samples are correlated by the filters: N·Σh² of them
                # are independent. Its sample variance misses 1/N_eff of the true one.
                n_eff = win * g2
                var = ss / (win - 1)
                if n_eff > 1.0:
                    var = var / (1.0 - 1.0 / n_eff)
                sigma = math.sqrt(var / n_eff)
                _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_SETTLED, idx, mean, sigma,
                      float(win))
                if have_settled == 1:
                    delta = mean - last_settled
                    if delta >= placed_g:
                        _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_PLACED, idx, delta,
                              0.0, 0.0)
                    elif delta <= -placed_g:
                        _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_REMOVED, idx, delta,
                              0.0, 0.0)
                last_settled = mean
                have_settled = 1
            elif now_stable == 0 and stable == 1:
                _emit(ev_type, ev_idx, ev_val, ev_n, lane, EV_MOTION, idx, y, 0.0, 0.0)
            stable = now_stable
            if zt_rate > 0.0 and stable == 1 and abs(y) < zt_band:
                step = y
                if step > zt_rate:
                    step = zt_rate
                elif step < -zt_rate:
                    step = -zt_rate
                if abs(zt + step) <= zt_limit:
                    zt += step
        fst[lane, FS_ZT] = zt
        fst[lane, FS_LAST_SETTLED] = last_settled
        ist[lane, IS_COUNT] = count
        ist[lane, IS_STABLE] = stable
        ist[lane, IS_HAVE_SETTLED] = have_settled
        ist[lane, IS_OVER] = over
        ist[lane, IS_UNDER] = under
        ist[lane, IS_POS] = pos
        fst[lane, FS_PMAX] = pmax
        fst[lane, FS_PMIN] = pmin


class LaneBank:
    """The state of up to ``capacity`` lanes and one call to advance them all.

    ``configure(lane, params, sos)`` sets a lane up (``params``: the CF_* values by
    name, see ``lanecore.core.weigh.laneconfig.LaneConfig`` which builds them); ``feed`` runs
    one lane's frame; ``step`` runs a frame for every lane at once.
    """

    PARAMS = ("fs", "counts_per_g", "zero_counts", "tare_g", "spike_g", "band_g",
              "win", "zt_rate", "zt_band", "zt_limit", "over_g", "under_g", "hyst_g",
              "placed_g", "sat", "stuck_n", "g2", "warm")

    def __init__(self, capacity: int = 64, *, window: int = 256,
                 max_sections: int = MAX_SECTIONS):
        if capacity < 1:
            raise ValueError("a bank holds at least one lane")
        self.capacity = capacity
        self.cfg = np.zeros((capacity, NCFG))
        self.sos = np.zeros((capacity, max_sections, 6))
        self.fst = np.zeros((capacity, NFS))
        self.ist = np.zeros((capacity, NIS), dtype=np.int64)
        self.zi = np.zeros((capacity, max_sections, 2))
        self.med = np.zeros((capacity, 5))
        self._scratch(1024)
        self._rings(window)
        self._all = np.arange(capacity, dtype=np.int64)
        self._one = np.zeros(1, dtype=np.int64)
        self._one_n = np.zeros(1, dtype=np.int64)
        self._one_seq = np.zeros(1, dtype=np.int64)
        self.ev_type = np.zeros((capacity, MAX_EVENTS), dtype=np.int64)
        self.ev_idx = np.zeros((capacity, MAX_EVENTS), dtype=np.int64)
        self.ev_val = np.zeros((capacity, MAX_EVENTS, 3))
        self.ev_n = np.zeros(capacity, dtype=np.int64)
        self.configured = np.zeros(capacity, dtype=bool)

    def _rings(self, window: int) -> None:
        """Rings as long as the longest window: the window's samples and the suffix
        extremes of the last full block."""
        self.window = window
        self.ybuf = np.zeros((self.capacity, window))
        self.sufmax = np.zeros((self.capacity, window))
        self.sufmin = np.zeros((self.capacity, window))

    def _scratch(self, n: int) -> None:
        self.tmp_w = np.zeros(n)
        self.tmp_idx = np.zeros(n, dtype=np.int64)
        self.tmp_reset = np.zeros(n, dtype=np.uint8)

    def configure(self, lane: int, params: dict, sos: np.ndarray) -> None:
        """Set up ``lane`` and reset its state."""
        if not 0 <= lane < self.capacity:
            raise IndexError(f"lane {lane} is outside this bank (0..{self.capacity - 1})")
        sos = np.asarray(sos, dtype=np.float64).reshape(-1, 6)
        if sos.shape[0] > self.sos.shape[1]:
            raise ValueError(f"at most {self.sos.shape[1]} filter sections per lane")
        win = int(params["win"])
        if not 3 <= win <= MAX_WINDOW:
            raise ValueError(f"stability window must be 3..{MAX_WINDOW} samples")
        if win > self.window:
            # a longer window: longer rings for every lane, which start afresh
            old = self.ybuf.shape[1]
            self._rings(max(win, 2 * old))
            self.ist[:, IS_COUNT] = np.minimum(self.ist[:, IS_COUNT], 0)
            self.ist[:, IS_STABLE] = 0
        row = self.cfg[lane]
        for i, name in enumerate(self.PARAMS):
            row[i] = float(params[name])
        row[CF_NSEC] = sos.shape[0]
        self.sos[lane] = 0.0
        self.sos[lane, :sos.shape[0]] = sos
        self.reset(lane)
        self.configured[lane] = True

    def reset(self, lane: int) -> None:
        """Forget everything a lane has seen (its configuration stays)."""
        self.fst[lane] = 0.0
        self.fst[lane, FS_LAST_RAW] = np.nan
        self.ist[lane] = 0
        self.ist[lane, IS_NEXT_SEQ] = -1
        self.zi[lane] = 0.0
        self.med[lane] = 0.0

    def step(self, samples: np.ndarray, nsamp: np.ndarray, seq: np.ndarray) -> None:
        """Advance lanes 0..k-1 by the k rows of ``samples`` (``nsamp``, ``seq``: (k,)
        int64). Read the events with ``events(lane)``."""
        self.step_lanes(self._all[:samples.shape[0]], samples, nsamp, seq)

    def step_lanes(self, lanes: np.ndarray, samples: np.ndarray, nsamp: np.ndarray,
                   seq: np.ndarray) -> None:
        """Advance lane ``lanes[j]`` by row j of ``samples`` (each lane at most once)."""
        if samples.shape[1] > self.tmp_w.shape[0]:
            self._scratch(samples.shape[1])
        lanes_step(lanes, samples, nsamp, seq, self.cfg, self.sos, self.fst, self.ist,
                   self.zi, self.med, self.ybuf, self.sufmax, self.sufmin, self.ev_type,
                   self.ev_idx, self.ev_val, self.ev_n, self.tmp_w, self.tmp_idx,
                   self.tmp_reset)

    def feed(self, lane: int, samples, seq: int = -1) -> list[dict]:
        """Run one lane's frame and return its events."""
        if not self.configured[lane]:
            raise ValueError(f"lane {lane} is not configured")
        x = np.ascontiguousarray(samples, dtype=np.float64).reshape(1, -1)
        self._one[0] = lane
        self._one_n[0] = x.shape[1]
        self._one_seq[0] = seq
        self.step_lanes(self._one, x, self._one_n, self._one_seq)
        return self.events(lane)

    def events(self, lane: int) -> list[dict]:
        """The events of ``lane``'s last frame, as dicts (``t`` in seconds since the
        lane's first sample)."""
        fs = float(self.cfg[lane, CF_FS])
        out = []
        for k in range(int(self.ev_n[lane])):
            kind = int(self.ev_type[lane, k])
            idx = int(self.ev_idx[lane, k])
            v = self.ev_val[lane, k]
            ev = {"t": idx / fs, "sample": idx, "event": EVENT_NAMES[kind],
                  "weight_g": None, "sigma_g": None}
            if kind == EV_SETTLED:
                ev.update(weight_g=float(v[0]), sigma_g=float(v[1]), n_samples=int(v[2]))
            elif kind in (EV_PLACED, EV_REMOVED):
                ev.update(delta_g=float(v[0]))
            elif kind in (EV_MOTION, EV_OVERLOAD, EV_UNDER_ZERO):
                ev.update(weight_g=float(v[0]))
            else:
                reason = FAULT_NAMES[int(v[0])]
                ev.update(reason=reason)
                if int(v[0]) in (F_SEQUENCE_GAP, F_OUT_OF_ORDER):
                    ev.update(frames=int(v[1]))
                elif int(v[0]) in (F_SATURATED, F_STUCK):
                    ev.update(raw=float(v[1]))
            out.append(ev)
        # faults come from the first pass: put everything in time order
        out.sort(key=lambda ev: ev["sample"])
        return out

    def stable(self, lane: int) -> bool:
        return bool(self.ist[lane, IS_STABLE])

    def last_settled_g(self, lane: int) -> float | None:
        if not self.ist[lane, IS_HAVE_SETTLED]:
            return None
        return float(self.fst[lane, FS_LAST_SETTLED])


def warm_up() -> None:
    """Run the kernel once on a scratch lane, so the first real frame pays nothing."""
    bank = LaneBank(1, window=8, max_sections=1)
    params = dict(fs=1000.0, counts_per_g=1.0, zero_counts=0.0, tare_g=0.0, spike_g=10.0,
                  band_g=1.0, win=4, zt_rate=0.0, zt_band=0.0, zt_limit=0.0,
                  over_g=1e9, under_g=-1e9, hyst_g=1.0, placed_g=1.0, sat=0.0, stuck_n=0,
                  g2=1.0, warm=0)
    bank.configure(0, params, np.array([[1.0, 0, 0, 1.0, 0, 0]]))
    bank.feed(0, np.ones(16))
