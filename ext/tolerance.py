"""Weight tolerance kernels: an order's expected weight and variance, verdicts for many
exits at once, and the search for what explains a weight outside its band.

Pure numeric, grams throughout. The policy (which band, which priors) lives in
``lanecore.core.weigh.verify``; these kernels only add, compare and score.

Every kernel is compiled with lanecore's options (``lanecore.ext._numba``) and explicit
signatures, so it compiles (or loads from the cache) on import. Arrays must be
C-contiguous float64 (int64 for offsets and positions); the Python wrappers below
convert. With ``NUMBA_DISABLE_JIT=1`` the same code runs as plain Python: the twin.

Explanations are hypotheses scored by ``log prior + log N(measured | mean_h, var_h)``
(natural logarithms). Scores are relative to the hypothesis "nothing missing, nothing
extra", whose prior counts as 1 and whose likelihood is ``gauss_logpdf(deficit,
var_total)``; the caller normalises over the hypotheses it keeps plus that one.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba import IMPLEMENTATION, inline, kernel  # noqa: F401  (re-exported)

#: Verdict codes written by :func:`verdict_batch`.
VERDICT_OK = 0
VERDICT_SHORT = 1
VERDICT_OVER = 2
#: The expected load lies beyond the last row of the error table (the scale's Max).
VERDICT_OVER_CAPACITY = 3
#: A measured weight, mean or standard deviation that is not a finite number.
VERDICT_INVALID = 4
VERDICT_NAMES = ("ok", "short", "over", "over_capacity", "invalid")

#: A unit subset whose weight lies more than this many σ_total beyond the deficit (or
#: excess) is not scored: its Gaussian term is below exp(-18) of its peak.
PRUNE_SIGMAS = 6.0
#: An unscanned catalogue item is a candidate when its weight is within this many
#: sqrt(var_total + σ_item²) of the excess.
WINDOW_SIGMAS = 5.0
#: The largest ``max_units`` the searches accept (C(n+8, 8) subsets would be too many).
MAX_UNITS_LIMIT = 8

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Helpers compiled into the kernels
# --------------------------------------------------------------------------------------

@inline
def _logpdf(x, var):
    return -0.5 * (x * x / var + math.log(var) + _LOG_2PI)


@inline
def _stats(mu, sd, qty, a, b):
    e = 0.0
    v = 0.0
    for i in range(a, b):
        e += qty[i] * mu[i]
        v += qty[i] * sd[i] * sd[i]
    return e, v


@inline
def _mpe(load_g, e_g, upper_e, mpe_e):
    # Each row covers loads up to and including its upper limit (OIML: "500 e < m <=
    # 2 000 e"); a load below zero is judged as zero.
    for i in range(upper_e.shape[0]):
        if load_g <= upper_e[i] * e_g:
            return mpe_e[i] * e_g
    return np.nan


@inline
def _offer(score, seq, slot_scores, slot_seqs):
    """The slot a new hypothesis replaces, or -1 when it is not among the best."""
    worst = 0
    for s in range(1, slot_scores.shape[0]):
        # the worst slot: lowest score, and of equal scores the latest found
        if slot_scores[s] < slot_scores[worst] or (
                slot_scores[s] == slot_scores[worst] and slot_seqs[s] > slot_seqs[worst]):
            worst = s
    if score > slot_scores[worst]:
        slot_scores[worst] = score
        slot_seqs[worst] = seq
        return worst
    return -1


@inline
def _ranking(slot_scores, slot_seqs):
    """Indices of the filled slots, best score first (ties: found first)."""
    k = slot_scores.shape[0]
    idx = np.empty(k, np.int64)
    m = 0
    for s in range(k):
        if slot_scores[s] > -np.inf:
            idx[m] = s
            m += 1
    # insertion sort: k is small
    for i in range(1, m):
        t = idx[i]
        j = i - 1
        while j >= 0 and (
                slot_scores[idx[j]] < slot_scores[t]
                or (slot_scores[idx[j]] == slot_scores[t]
                    and slot_seqs[idx[j]] > slot_seqs[t])):
            idx[j + 1] = idx[j]
            j -= 1
        idx[j + 1] = t
    return idx[:m]


@inline
def _unit_search(mu, var, cap, multiplicity, target, var_total, sign, max_units,
                 log_odds, top_k, prune_sigmas):
    """Top-k multisets of order units (at most ``cap[i]`` from line ``i``, 1 to
    ``max_units`` in all) whose total mean M best explains ``target``.

    Hypothesis h: the measured weight is N(expected -/+ M, var_total +/- V) for
    missing (sign -1) / extra (sign +1) units of total variance V; its residual is
    M - target. Log prior relative to "nothing": c·log_odds per unit, plus
    log C(cap_i, c_i) per line when ``multiplicity``.

    Depth-first over lines sorted by mean, each unit from a line at or after the
    previous one's, so every multiset is visited once. Because the means ascend, the
    first line that takes the partial sum past ``target + prune_sigmas·σ`` ends the
    loop at that depth; a branch is not entered when even ``max_units`` of the
    heaviest line cannot reach ``target - prune_sigmas·σ``. Subsets in neither reach
    are not scored (their Gaussian term is below exp(-prune_sigmas²/2) of its peak).
    """
    n = mu.shape[0]
    counts = np.zeros((top_k, n), np.int64)
    slot_scores = np.full(top_k, -np.inf)
    slot_seqs = np.zeros(top_k, np.int64)
    if n == 0 or top_k <= 0 or max_units <= 0 or not var_total > 0.0:
        return np.zeros((0, n), np.int64), np.zeros(0)
    order = np.argsort(mu, kind="mergesort")
    smu = np.empty(n)
    svar = np.empty(n)
    scap = np.empty(n, np.int64)
    for t in range(n):
        smu[t] = mu[order[t]]
        svar[t] = var[order[t]]
        scap[t] = cap[order[t]]
    sigma = math.sqrt(var_total)
    hi = target + prune_sigmas * sigma
    lo = target - prune_sigmas * sigma
    mu_max = smu[n - 1]
    tiny = 1e-12 * var_total

    cnt = np.zeros(n, np.int64)
    chosen = np.zeros(max_units, np.int64)
    nxt = np.zeros(max_units, np.int64)
    base_m = np.zeros(max_units)
    base_v = np.zeros(max_units)
    base_lp = np.zeros(max_units)
    seq = 0
    d = 0
    while d >= 0:
        j = nxt[d]
        while j < n and cnt[j] >= scap[j]:
            j += 1
        if j >= n or base_m[d] + smu[j] > hi:
            # this depth is exhausted: back to the previous unit, try the next line
            d -= 1
            if d >= 0:
                jj = chosen[d]
                cnt[jj] -= 1
                nxt[d] = jj + 1
            continue
        cnt[j] += 1
        chosen[d] = j
        m = base_m[d] + smu[j]
        v = base_v[d] + svar[j]
        lp = base_lp[d] + log_odds
        if multiplicity:
            # C(q, c) / C(q, c - 1) = (q - c + 1) / c
            lp += math.log((scap[j] - cnt[j] + 1) / cnt[j])
        if m >= lo:
            vh = var_total + sign * v
            if vh < tiny:
                vh = tiny
            score = lp + _logpdf(m - target, vh)
            slot = _offer(score, seq, slot_scores, slot_seqs)
            seq += 1
            if slot >= 0:
                for t in range(n):
                    counts[slot, order[t]] = cnt[t]
        left = max_units - d - 1
        if left > 0 and m + left * mu_max >= lo:
            base_m[d + 1] = m
            base_v[d + 1] = v
            base_lp[d + 1] = lp
            nxt[d + 1] = j
            d += 1
        else:
            cnt[j] -= 1
            nxt[d] = j + 1
    idx = _ranking(slot_scores, slot_seqs)
    out_counts = np.empty((idx.shape[0], n), np.int64)
    out_scores = np.empty(idx.shape[0])
    for r in range(idx.shape[0]):
        out_scores[r] = slot_scores[idx[r]]
        for t in range(n):
            out_counts[r, t] = counts[idx[r], t]
    return out_counts, out_scores


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

@kernel("f8(f8, f8)")
def gauss_logpdf(x, var):
    """log N(x | 0, var): the log-density of a residual ``x`` (g) of variance ``var``
    (g²)."""
    return _logpdf(x, var)


@kernel("UniTuple(f8, 2)(f8[::1], f8[::1], f8[::1])")
def order_stats(mu, sd, qty):
    """(expected_g, var_g2) = (Σ qty·μ_i, Σ qty·σ_i²) over an order's lines."""
    return _stats(mu, sd, qty, 0, mu.shape[0])


@kernel("f8(f8, f8, f8[::1], f8[::1])")
def mpe_at(load_g, e_g, upper_e, mpe_e):
    """The max permissible error (g) at ``load_g`` from a table of rows (upper limit,
    error), both in units of ``e_g``; each row includes its upper limit. NaN beyond the
    last row."""
    return _mpe(load_g, e_g, upper_e, mpe_e)


@kernel("void(f8[::1], f8[::1], f8[::1], i8[::1], f8[::1], f8[::1], f8[::1], f8, f8, "
        "f8, f8, f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], i1[::1])")
def verdict_batch(mu, sd, qty, offsets, tare_g, tare_sd_g, measured_g, scale_sd_g, k,
                  floor_g, e_g, upper_e, mpe_e,
                  out_expected, out_var, out_mpe, out_band, out_z, out_code):
    """Verdicts for many exits at once.

    Exit ``x`` owns lines ``offsets[x]:offsets[x + 1]`` of ``mu``, ``sd``, ``qty``
    (weight-exempt lines left out), plus its own ``tare_g``/``tare_sd_g`` and
    ``measured_g``. Writes expected = Σ qty·μ + tare, var = Σ qty·σ² + tare_sd² +
    scale_sd², mpe = the error table at the expected load, band = max(floor, k·σ +
    mpe), z = (measured - expected)/σ, and a ``VERDICT_*`` code.
    """
    svar = scale_sd_g * scale_sd_g
    for x in range(offsets.shape[0] - 1):
        e, v = _stats(mu, sd, qty, offsets[x], offsets[x + 1])
        e += tare_g[x]
        v += tare_sd_g[x] * tare_sd_g[x] + svar
        m = measured_g[x]
        mpe = _mpe(e, e_g, upper_e, mpe_e)
        sigma = math.sqrt(v) if v >= 0.0 else np.nan
        band = k * sigma + mpe
        if band < floor_g:
            band = floor_g
        dev = m - e
        if sigma > 0.0:
            z = dev / sigma
        elif dev == 0.0:
            z = 0.0
        else:
            z = math.copysign(np.inf, dev)
        out_expected[x] = e
        out_var[x] = v
        out_mpe[x] = mpe
        out_band[x] = band
        out_z[x] = z
        if not (math.isfinite(m) and math.isfinite(e) and math.isfinite(v) and v >= 0.0):
            out_code[x] = VERDICT_INVALID
        elif math.isnan(mpe):
            out_code[x] = VERDICT_OVER_CAPACITY
        elif abs(dev) <= band:
            out_code[x] = VERDICT_OK
        elif dev < 0.0:
            out_code[x] = VERDICT_SHORT
        else:
            out_code[x] = VERDICT_OVER


@kernel("Tuple((i8[:, ::1], f8[::1]))(f8[::1], f8[::1], f8[::1], f8, f8, f8, i8, f8, "
        "i8, f8)")
def search_missing(mu, sd, qty, measured_g, expected_g, var_total, max_units, p_miss,
                   top_k, prune_sigmas):
    """Top-k sets of missing units: (counts[h, line], log scores[h]), best first.

    Lines are (μ_i, σ_i, qty_i); at most qty_i units from line i, 1 to ``max_units``
    units in all. Hypothesis h removes units of total mean M and variance V:
    measured ~ N(expected - M, var_total - V). Prior: each unit missing independently
    with probability ``p_miss``, so relative to "nothing missing" Π C(qty_i, c_i) ·
    (p/(1-p))^c_i. ``var_total`` includes the scale's and the tare's variance.
    """
    n = mu.shape[0]
    var = np.empty(n)
    cap = np.empty(n, np.int64)
    for i in range(n):
        var[i] = sd[i] * sd[i]
        cap[i] = int(qty[i])
    return _unit_search(mu, var, cap, True, expected_g - measured_g, var_total, -1.0,
                        max_units, math.log(p_miss / (1.0 - p_miss)), top_k,
                        prune_sigmas)


@kernel("Tuple((i8[:, ::1], f8[::1]))(f8[::1], f8[::1], f8, f8, f8, i8, f8, i8, f8)")
def search_extra_lines(mu, sd, measured_g, expected_g, var_total, max_units,
                       p_extra_line, top_k, prune_sigmas):
    """Top-k sets of extra (unpaid) units of the order's own lines, best first.

    Up to ``max_units`` units in all, from any lines. Hypothesis h adds units of total
    mean M and variance V: measured ~ N(expected + M, var_total + V). Prior
    ``p_extra_line`` per extra unit relative to "nothing extra".
    """
    n = mu.shape[0]
    var = np.empty(n)
    cap = np.empty(n, np.int64)
    for i in range(n):
        var[i] = sd[i] * sd[i]
        cap[i] = max_units
    return _unit_search(mu, var, cap, False, measured_g - expected_g, var_total, 1.0,
                        max_units, math.log(p_extra_line), top_k, prune_sigmas)


@kernel("UniTuple(f8[::1], 2)(f8[::1], f8[::1], f8)")
def catalog_envelopes(weight_sorted, sd_sorted, window_sigmas):
    """Bounds that let :func:`search_unscanned` stop scanning a sorted catalogue.

    ``below[j]`` = max over rows <= j of (w + window_sigmas·σ): the highest reach
    upwards of any item at or below j. ``above[j]`` = min over rows >= j of
    (w - window_sigmas·σ): the lowest reach downwards of any item at or above j.
    """
    n = weight_sorted.shape[0]
    below = np.empty(n)
    above = np.empty(n)
    run = -np.inf
    for j in range(n):
        r = weight_sorted[j] + window_sigmas * sd_sorted[j]
        if r > run:
            run = r
        below[j] = run
    run = np.inf
    for j in range(n - 1, -1, -1):
        r = weight_sorted[j] - window_sigmas * sd_sorted[j]
        if r < run:
            run = r
        above[j] = run
    return below, above


@kernel("Tuple((i8[::1], f8[::1]))(f8[::1], f8[::1], f8[::1], f8[::1], i8[::1], f8, f8, "
        "f8, i8, f8)")
def search_unscanned(weight_sorted, sd_sorted, below, above, skip, excess_g, var_total,
                     log_prior, top_k, window_sigmas):
    """Top-k single catalogue items that explain an excess: (positions, log scores).

    Items are given sorted by unit weight (``below``/``above`` from
    :func:`catalog_envelopes` with the same ``window_sigmas``); positions index that
    order. Item j is a candidate when |excess - w_j| <= window_sigmas·sqrt(var_total
    + σ_j²), scored ``log_prior + log N(excess | w_j, var_total + σ_j²)``. Positions in
    ``skip`` (sorted) are left out. A binary search finds the excess; the scan runs
    outwards and stops where the envelopes show no further item can be a candidate.
    """
    n = weight_sorted.shape[0]
    slot_pos = np.full(top_k, -1, np.int64)
    slot_scores = np.full(top_k, -np.inf)
    slot_seqs = np.zeros(top_k, np.int64)
    if n > 0 and top_k > 0 and var_total > 0.0:
        reach = window_sigmas * math.sqrt(var_total)
        start = np.searchsorted(weight_sorted, excess_g)
        # upwards, then downwards from the excess
        for direction in range(2):
            j = start if direction == 0 else start - 1
            while 0 <= j < n:
                if direction == 0 and above[j] - reach > excess_g:
                    break
                if direction == 1 and below[j] + reach < excess_g:
                    break
                w = weight_sorted[j]
                vj = var_total + sd_sorted[j] * sd_sorted[j]
                r = excess_g - w
                if r * r <= window_sigmas * window_sigmas * vj:
                    s = np.searchsorted(skip, j)
                    if not (s < skip.shape[0] and skip[s] == j):
                        score = log_prior + _logpdf(r, vj)
                        slot = _offer(score, j, slot_scores, slot_seqs)
                        if slot >= 0:
                            slot_pos[slot] = j
                j = j + 1 if direction == 0 else j - 1
    idx = _ranking(slot_scores, slot_seqs)
    out_pos = np.empty(idx.shape[0], np.int64)
    out_scores = np.empty(idx.shape[0])
    for r in range(idx.shape[0]):
        out_pos[r] = slot_pos[idx[r]]
        out_scores[r] = slot_scores[idx[r]]
    return out_pos, out_scores


# --------------------------------------------------------------------------------------
# Python entry points: convert, default, allocate
# --------------------------------------------------------------------------------------

def _f8(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _check_units(max_units: int, top_k: int) -> None:
    if not 1 <= max_units <= MAX_UNITS_LIMIT:
        raise ValueError(f"max_units must be 1..{MAX_UNITS_LIMIT}, got {max_units}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def verdicts(mu, sd, qty, offsets, measured_g, *, tare_g=None, tare_sd_g=None,
             scale_sd_g, k, floor_g, e_g, upper_e, mpe_e) -> dict:
    """:func:`verdict_batch` with its output arrays allocated: a dict of arrays
    ``expected_g``, ``var_g2``, ``mpe_g``, ``band_g``, ``z``, ``code`` (one per exit)."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    n = offsets.shape[0] - 1
    measured_g = _f8(measured_g)
    tare_g = np.zeros(n) if tare_g is None else _f8(tare_g)
    tare_sd_g = np.zeros(n) if tare_sd_g is None else _f8(tare_sd_g)
    mu, sd, qty = _f8(mu), _f8(sd), _f8(qty)
    if n < 0 or measured_g.shape != (n,) or tare_g.shape != (n,) or tare_sd_g.shape != (n,):
        raise ValueError("offsets, measured_g and tares disagree on the number of exits")
    if mu.shape != sd.shape or mu.shape != qty.shape:
        raise ValueError("mu, sd and qty must have one entry per line")
    if n and (offsets[0] != 0 or offsets[-1] != mu.shape[0]
              or (np.diff(offsets) < 0).any()):
        raise ValueError("offsets must rise from 0 to the number of lines")
    out = {name: np.empty(n) for name in ("expected_g", "var_g2", "mpe_g", "band_g", "z")}
    out["code"] = np.empty(n, np.int8)
    verdict_batch(mu, sd, qty, offsets, tare_g, tare_sd_g, measured_g, float(scale_sd_g),
                  float(k), float(floor_g), float(e_g), _f8(upper_e), _f8(mpe_e),
                  out["expected_g"], out["var_g2"], out["mpe_g"], out["band_g"], out["z"],
                  out["code"])
    return out


def explain_missing(mu, sd, qty, measured_g, expected_g, var_total, *, max_units=3,
                    p_miss=0.01, top_k=5, prune_sigmas=PRUNE_SIGMAS):
    """Top-k sets of missing units (see :func:`search_missing`): ``(counts, scores)``
    with ``counts`` int64 (hypotheses, lines) and ``scores`` float64 log scores
    relative to "nothing missing", best first."""
    _check_units(max_units, top_k)
    mu, sd, qty = _f8(mu), _f8(sd), _f8(qty)
    return search_missing(mu, sd, qty, float(measured_g), float(expected_g),
                          float(var_total), int(max_units), float(p_miss), int(top_k),
                          float(prune_sigmas))


def explain_extra(mu, sd, measured_g, expected_g, var_total, *, catalog=None, skip=None,
                  max_units=3, p_extra_line=0.01, p_unscanned=0.01, n_catalogue=None,
                  top_k=5, prune_sigmas=PRUNE_SIGMAS, window_sigmas=WINDOW_SIGMAS):
    """What explains an excess: ``(line_counts, line_scores, positions, item_scores)``.

    (a) extra units of the order's lines (:func:`search_extra_lines`); (b) single
    unscanned catalogue items (:func:`search_unscanned`) when ``catalog`` is given as
    ``(weight_sorted, sd_sorted, below, above)``, prior ``p_unscanned / n_catalogue``
    each (``n_catalogue`` defaults to the number of items given). ``skip``: sorted
    positions to leave out (items already on the order). Scores are log scores
    relative to "nothing extra"; each list best first.
    """
    _check_units(max_units, top_k)
    mu, sd = _f8(mu), _f8(sd)
    counts, scores = search_extra_lines(mu, sd, float(measured_g), float(expected_g),
                                        float(var_total), int(max_units),
                                        float(p_extra_line), int(top_k),
                                        float(prune_sigmas))
    if catalog is None:
        return counts, scores, np.empty(0, np.int64), np.empty(0)
    w, s, below, above = (_f8(a) for a in catalog)
    n_cat = w.shape[0] if n_catalogue is None else int(n_catalogue)
    if n_cat == 0:
        return counts, scores, np.empty(0, np.int64), np.empty(0)
    skip = (np.empty(0, np.int64) if skip is None
            else np.ascontiguousarray(np.sort(np.asarray(skip, dtype=np.int64))))
    pos, item_scores = search_unscanned(w, s, below, above, skip,
                                        float(measured_g) - float(expected_g),
                                        float(var_total), math.log(p_unscanned / n_cat),
                                        int(top_k), float(window_sigmas))
    return counts, scores, pos, item_scores
