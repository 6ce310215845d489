"""A heavier-tailed simulated truth for the weigh-check: shoppers and goods that do
not follow the verdict's own Gaussian model (issue 18, Build 3).

Pure (numpy, no I/O), seeded, vectorised: :func:`simulate_exits` draws 100,000 exits
in a few seconds. Weights are grams.

**The catalogue** (:func:`make_catalogue`): ``n_items`` goods plus a few carrier bags.

* true mean weight log-normal (median 400 g, σ_log 1.0, clipped 20 g - 5 kg); the
  spread of one unit 1-4 % of the mean + 0.5 g, as in ``bench/test_verdicts.py``;
* the **shape** of a unit's weight is not always Gaussian: 25 % of items are
  Student-t (ν 3, 4 or 5, scaled to the same standard deviation), 15 % are mixtures
  where 0.5-3 % of the units are outliers (a pack over- or under-filled by 5-15 %);
* **packaging variation**: 30 % of items change lot, so the units on today's
  conveyor are offset by N(0, 0.5 % of the mean) from the history's average;
* **biased labels**: the catalogue's ``label_g`` is the true mean for 80 % of items,
  off by N(0, 2 %) for 20 %, and a **weight-label error** (off by 10-50 %) for 0.5 %;
  the catalogue's ``label_sd_g`` is the nominal 1-4 % spread, whatever the shape;
* **how often it sells**: a Zipf-like popularity (``sales``), which picks the basket
  items, the unscanned items and how many past weighings (``history``) each item has;
  the learned weights come from those weighings (a rarely sold item has few or none
  and falls back on its label, wrong or not).

**The history** (:func:`history`): past single-item weighings on the conveyor
(the unit's weight + the step's noise + an occasional bump), from which a lane learns.

**The exits** (:func:`simulate_exits`): baskets of 1-25 distinct lines (qty 1/2/3 at
80/15/5 %, within 50 kg), a paid carrier-bag line on 20 % of orders; half the exits
honest, 40 % with one unit of a uniformly chosen line left behind, 10 % with one
unscanned item (drawn by sales, not on the order). Every unit placed on the conveyor
in a random order is a **step** with its reported σ (0.3-1.5 g) and measured delta
(+ a conveyor **bump** of N(0, 8 g) on 0.5 % of steps, not in the reported σ);
**two items at once** on 10 % of exits (two consecutive units as one step), an item
**lifted and put back** on 5 % (a removal step after it, and a re-placement later).
The whole-basket weight is the sum of every unit on the conveyor + N(0, 2.5 g).

The ground truth is kept for scoring: each exit's state, the missing line, the
unscanned item, and for every step its true items, whether it is the unscanned item,
a merged pair, or part of a lift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["TruthConfig", "TruthCatalogue", "Exits", "make_catalogue", "draw_units",
           "history", "simulate_exits", "HONEST", "MISSING", "EXTRA", "STATES",
           "SHAPE_GAUSS", "SHAPE_T", "SHAPE_MIXTURE", "true_logpdf", "config_dict"]

HONEST, MISSING, EXTRA = 0, 1, 2
STATES = ("honest", "missing", "unscanned")
SHAPE_GAUSS, SHAPE_T, SHAPE_MIXTURE = 0, 1, 2


@dataclass(frozen=True)
class TruthConfig:
    """Every knob of the simulated truth (grams, shares in [0, 1])."""

    n_items: int = 3000
    median_g: float = 400.0
    sigma_log: float = 1.0
    min_g: float = 20.0
    max_g: float = 5000.0
    rel_sd: tuple = (0.01, 0.04)
    abs_sd_g: float = 0.5
    share_t: float = 0.25
    t_nus: tuple = (3.0, 4.0, 5.0)
    share_mixture: float = 0.15
    outlier_p: tuple = (0.005, 0.03)
    outlier_shift: tuple = (0.05, 0.15)
    share_lot: float = 0.30
    lot_sd_rel: float = 0.005
    share_biased_label: float = 0.20
    label_bias_sd: float = 0.02
    share_label_error: float = 0.005
    label_error: tuple = (0.10, 0.50)
    zipf_s: float = 1.0
    zipf_offset: float = 10.0
    history_weighings: int = 150_000
    history_cap: int = 200
    # carrier bags: (mean g, sd g) each, appended after the goods
    bags: tuple = ((8.0, 0.5), (15.0, 1.0), (35.0, 2.0))
    # steps
    step_sd_g: tuple = (0.3, 1.5)
    p_bump: float = 0.005
    bump_sd_g: float = 8.0
    scale_sd_g: float = 2.5
    # exits
    max_lines: int = 25
    qty_p: tuple = (0.80, 0.15, 0.05)
    capacity_g: float = 50_000.0
    share_bag_line: float = 0.20
    share_missing: float = 0.40
    share_extra: float = 0.10
    p_merge: float = 0.10
    p_lift: float = 0.05


@dataclass
class TruthCatalogue:
    """The simulated goods. Arrays of length ``n`` (goods first, bags last)."""

    label_g: np.ndarray        # the catalogue's unit weight (biased for some)
    label_sd_g: np.ndarray     # the catalogue's nominal standard deviation
    mean_g: np.ndarray         # true mean over lots (what the history sees)
    lot_g: np.ndarray          # today's lot offset (0 for most)
    sd_g: np.ndarray           # true standard deviation of one unit (core)
    shape: np.ndarray          # SHAPE_GAUSS / SHAPE_T / SHAPE_MIXTURE
    nu: np.ndarray             # the t's degrees of freedom (inf otherwise)
    out_p: np.ndarray          # share of outlier units (mixtures)
    out_shift: np.ndarray      # relative size of an outlier's offset
    sales: np.ndarray          # relative sales frequency (sums to 1 over goods)
    is_bag: np.ndarray         # carrier bags
    n_goods: int

    @property
    def n(self) -> int:
        return self.label_g.size

    @property
    def true_sd_g(self) -> np.ndarray:
        """The true standard deviation of one unit today (shape included, lot not)."""
        v = self.sd_g ** 2
        mix = self.shape == SHAPE_MIXTURE
        v = np.where(mix, (1 - self.out_p) * v + self.out_p * (v + (self.out_shift
                                                                    * self.mean_g) ** 2), v)
        return np.sqrt(v)


@dataclass
class Exits:
    """Simulated exits with their ground truth (see the module docstring).

    Lines: ``line_exit``, ``line_item``, ``line_qty``, grouped by exit
    (``line_offsets``). Steps (in conveyor order, grouped by exit, ``step_offsets``):
    ``step_delta_g`` (measured, signed), ``step_sigma_g`` (reported),
    ``step_true_g``, ``step_item_a`` / ``step_item_b`` (the items in the step; b is
    -1 unless two were placed at once), ``step_line_a`` / ``step_line_b`` (their order
    lines, -1 for the unscanned item), ``step_extra`` (it holds the unscanned item),
    ``step_lift`` (0, 1 = the removal of a lifted item, 2 = its re-placement).
    """

    n: int
    line_exit: np.ndarray
    line_item: np.ndarray
    line_qty: np.ndarray
    line_offsets: np.ndarray
    state: np.ndarray
    missing_line: np.ndarray
    extra_item: np.ndarray
    merged: np.ndarray
    lifted: np.ndarray
    measured_g: np.ndarray           # whole-basket weight
    step_offsets: np.ndarray
    step_delta_g: np.ndarray
    step_sigma_g: np.ndarray
    step_true_g: np.ndarray
    step_item_a: np.ndarray
    step_item_b: np.ndarray
    step_line_a: np.ndarray
    step_line_b: np.ndarray
    step_extra: np.ndarray
    step_lift: np.ndarray
    dropped: float = 0.0
    extra: dict = field(default_factory=dict)

    def lines(self, x: int) -> range:
        return range(int(self.line_offsets[x]), int(self.line_offsets[x + 1]))

    def steps(self, x: int) -> range:
        return range(int(self.step_offsets[x]), int(self.step_offsets[x + 1]))

    def n_lines(self) -> np.ndarray:
        return np.diff(self.line_offsets)


def make_catalogue(rng: np.random.Generator, cfg: TruthConfig = TruthConfig()
                   ) -> TruthCatalogue:
    """The goods and bags (see the module docstring)."""
    n = cfg.n_items
    mean = np.clip(rng.lognormal(math.log(cfg.median_g), cfg.sigma_log, n), cfg.min_g,
                   cfg.max_g)
    rel = rng.uniform(cfg.rel_sd[0], cfg.rel_sd[1], n)
    sd = mean * rel + cfg.abs_sd_g
    u = rng.random(n)
    shape = np.where(u < cfg.share_t, SHAPE_T,
                     np.where(u < cfg.share_t + cfg.share_mixture, SHAPE_MIXTURE,
                              SHAPE_GAUSS)).astype(np.int8)
    nu = np.where(shape == SHAPE_T, rng.choice(np.asarray(cfg.t_nus), n), np.inf)
    out_p = np.where(shape == SHAPE_MIXTURE, rng.uniform(*cfg.outlier_p, n), 0.0)
    out_shift = np.where(shape == SHAPE_MIXTURE, rng.uniform(*cfg.outlier_shift, n), 0.0)
    lot = np.where(rng.random(n) < cfg.share_lot,
                   rng.normal(0.0, cfg.lot_sd_rel, n) * mean, 0.0)
    label = mean.copy()
    v = rng.random(n)
    biased = v < cfg.share_biased_label
    label[biased] *= 1.0 + rng.normal(0.0, cfg.label_bias_sd, int(biased.sum()))
    wrong = rng.random(n) < cfg.share_label_error
    k = int(wrong.sum())
    label[wrong] *= 1.0 + rng.choice([-1.0, 1.0], k) * rng.uniform(*cfg.label_error, k)
    label_sd = label * rel + cfg.abs_sd_g
    rank = rng.permutation(n)
    sales = 1.0 / (rank + cfg.zipf_offset) ** cfg.zipf_s
    sales /= sales.sum()

    nb = len(cfg.bags)
    bag_mean = np.array([b[0] for b in cfg.bags], dtype=np.float64)
    bag_sd = np.array([b[1] for b in cfg.bags], dtype=np.float64)

    def cat(a, b):
        return np.concatenate([a, b])

    return TruthCatalogue(
        label_g=cat(label, bag_mean), label_sd_g=cat(label_sd, bag_sd),
        mean_g=cat(mean, bag_mean), lot_g=cat(lot, np.zeros(nb)), sd_g=cat(sd, bag_sd),
        shape=cat(shape, np.zeros(nb, np.int8)), nu=cat(nu, np.full(nb, np.inf)),
        out_p=cat(out_p, np.zeros(nb)), out_shift=cat(out_shift, np.zeros(nb)),
        sales=cat(sales, np.zeros(nb)), is_bag=cat(np.zeros(n, bool), np.ones(nb, bool)),
        n_goods=n)


def draw_units(rng: np.random.Generator, cat: TruthCatalogue, items: np.ndarray, *,
               lot: bool = True) -> np.ndarray:
    """One true weight per entry of ``items`` (grams), from each item's own shape;
    ``lot``: today's lot offsets (False: the history's lots, averaged out)."""
    items = np.asarray(items, dtype=np.int64)
    m = items.size
    z = rng.standard_normal(m)
    shape = cat.shape[items]
    t = shape == SHAPE_T
    if t.any():
        nu = cat.nu[items[t]]
        # Student-t scaled to unit variance: N / sqrt(chi2/ν) · sqrt((ν-2)/ν)
        chi = rng.chisquare(nu)
        z[t] = z[t] / np.sqrt(chi / nu) * np.sqrt((nu - 2.0) / nu)
    # a pack cannot weigh nothing: tails end at 8 standard deviations
    w = cat.mean_g[items] + cat.sd_g[items] * np.clip(z, -8.0, 8.0)
    mix = shape == SHAPE_MIXTURE
    if mix.any():
        it = items[mix]
        out = rng.random(it.size) < cat.out_p[it]
        sign = rng.choice([-1.0, 1.0], it.size)
        w[mix] += np.where(out, sign * cat.out_shift[it] * cat.mean_g[it], 0.0)
    if lot:
        w += cat.lot_g[items]
    else:   # each past weighing from some lot: a spread of lot offsets
        has_lot = cat.lot_g[items] != 0.0
        w += np.where(has_lot, rng.normal(0.0, 1.0, m) * np.abs(cat.lot_g[items]), 0.0)
    return np.maximum(w, 0.1)


def _step_noise(rng, m: int, cfg: TruthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(reported σ, error) of ``m`` steps: the settled estimate's noise plus a bump on
    ``p_bump`` of them that the reported σ does not know about."""
    sigma = rng.uniform(cfg.step_sd_g[0], cfg.step_sd_g[1], m)
    err = sigma * rng.standard_normal(m)
    bump = rng.random(m) < cfg.p_bump
    err[bump] += rng.normal(0.0, cfg.bump_sd_g, int(bump.sum()))
    return sigma, err


def history(rng: np.random.Generator, cat: TruthCatalogue,
            cfg: TruthConfig = TruthConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Past single-item weighings on the conveyor: (item, measured step grams), items
    sorted. Each good has Poisson(sales × ``history_weighings``) of them, at most
    ``history_cap``; bags have ``history_cap``."""
    n_hist = np.minimum(rng.poisson(cat.sales * cfg.history_weighings), cfg.history_cap)
    n_hist[cat.is_bag] = cfg.history_cap
    items = np.repeat(np.arange(cat.n), n_hist)
    w = draw_units(rng, cat, items, lot=False)
    _sigma, err = _step_noise(rng, items.size, cfg)
    return items, w + err


def _basket_items(rng, n_try: int, cat: TruthCatalogue, cfg: TruthConfig):
    n_lines = rng.integers(1, cfg.max_lines + 1, n_try)
    exit_of = np.repeat(np.arange(n_try), n_lines)
    p = cat.sales[:cat.n_goods]
    item = rng.choice(cat.n_goods, exit_of.size, p=p)
    for _ in range(200):          # distinct items within a basket: redraw duplicates
        order = np.lexsort((item, exit_of))
        dup = np.zeros(item.size, bool)
        dup[order[1:]] = (exit_of[order[1:]] == exit_of[order[:-1]]) & \
                         (item[order[1:]] == item[order[:-1]])
        if not dup.any():
            break
        item[dup] = rng.choice(cat.n_goods, int(dup.sum()), p=p)
    else:  # pragma: no cover - 200 rounds of Zipf redraws always separate them
        raise RuntimeError("could not draw distinct basket items")
    return exit_of, item


def simulate_exits(n: int, seed: int = 18, cfg: TruthConfig = TruthConfig(),
                   catalogue: TruthCatalogue | None = None) -> tuple[TruthCatalogue, Exits]:
    """``n`` exits with their ground truth (see the module docstring). The catalogue
    is drawn from ``seed`` too unless one is given."""
    rng = np.random.default_rng(seed)
    cat = make_catalogue(rng, cfg) if catalogue is None else catalogue
    n_try = int(n * 1.1) + 10
    exit_of, item = _basket_items(rng, n_try, cat, cfg)
    qty = rng.choice([1, 2, 3], exit_of.size, p=list(cfg.qty_p))
    # a paid carrier-bag line on some orders (bags are the catalogue's last items)
    bag_exit = np.flatnonzero(rng.random(n_try) < cfg.share_bag_line)
    bag_item = cat.n_goods + rng.integers(0, cat.n - cat.n_goods, bag_exit.size)
    bag_qty = rng.choice([1, 2], bag_exit.size, p=[0.7, 0.3])
    exit_of = np.concatenate([exit_of, bag_exit])
    item = np.concatenate([item, bag_item])
    qty = np.concatenate([qty, bag_qty])
    order = np.argsort(exit_of, kind="stable")
    exit_of, item, qty = exit_of[order], item[order], qty[order]
    mass = np.bincount(exit_of, cat.label_g[item] * qty, minlength=n_try)
    keep = np.flatnonzero(mass <= cfg.capacity_g)[:n]
    if keep.size < n:  # pragma: no cover - ~1 % are beyond capacity
        raise RuntimeError("too many baskets beyond capacity")
    renumber = np.full(n_try, -1)
    renumber[keep] = np.arange(n)
    sel = renumber[exit_of] >= 0
    exit_of, item, qty = renumber[exit_of[sel]], item[sel], qty[sel]
    dropped = float(np.count_nonzero(mass > cfg.capacity_g)) / n_try
    n_line = exit_of.size
    line_offsets = np.r_[0, np.cumsum(np.bincount(exit_of, minlength=n))].astype(np.int64)

    # the exit's true state and its missing line / unscanned item
    state = np.full(n, HONEST, np.int8)
    u = rng.random(n)
    state[u < cfg.share_missing + cfg.share_extra] = EXTRA
    state[u < cfg.share_missing] = MISSING
    pick = line_offsets[:-1] + (rng.random(n) * np.diff(line_offsets)).astype(np.int64)
    missing_line = np.where(state == MISSING, pick, -1)
    extra_item = np.full(n, -1, np.int64)
    xs = np.flatnonzero(state == EXTRA)
    cand = rng.choice(cat.n_goods, xs.size, p=cat.sales[:cat.n_goods])
    on_order = set(zip(exit_of.tolist(), item.tolist()))
    for k, x in enumerate(xs.tolist()):
        j = int(cand[k])
        while (x, j) in on_order:
            j = int(rng.choice(cat.n_goods, p=cat.sales[:cat.n_goods]))
        extra_item[x] = j

    # units on the conveyor: every paid unit but the missing one, plus the unscanned
    present = qty.copy()
    ml = missing_line[missing_line >= 0]
    present[ml] -= 1
    unit_line = np.repeat(np.arange(n_line), present)
    unit_exit = exit_of[unit_line]
    unit_item = item[unit_line]
    unit_exit = np.concatenate([unit_exit, xs])
    unit_item = np.concatenate([unit_item, extra_item[xs]])
    unit_line = np.concatenate([unit_line, np.full(xs.size, -1)])
    unit_w = draw_units(rng, cat, unit_item)
    n_unit = unit_exit.size
    # placement order: a random key per unit, sorted within the exit
    key = rng.random(n_unit)
    order = np.lexsort((key, unit_exit))
    unit_exit, unit_item, unit_line, unit_w = (a[order] for a in
                                               (unit_exit, unit_item, unit_line, unit_w))
    units_per_exit = np.bincount(unit_exit, minlength=n)
    unit_start = np.r_[0, np.cumsum(units_per_exit)][:-1]
    rank = np.arange(n_unit) - unit_start[unit_exit]

    # two items at once: units r and r+1 of an exit share one step
    merged = (rng.random(n) < cfg.p_merge) & (units_per_exit >= 2)
    mpos = (rng.random(n) * np.maximum(units_per_exit - 1, 1)).astype(np.int64)
    second = merged[unit_exit] & (rank == mpos[unit_exit] + 1)
    step_of_unit = np.cumsum(~second) - 1          # consecutive ids, merged share one
    n_step0 = int(step_of_unit[-1]) + 1 if n_unit else 0
    s_exit = np.zeros(n_step0, np.int64)
    s_exit[step_of_unit] = unit_exit
    s_true = np.bincount(step_of_unit, unit_w, minlength=n_step0)
    s_item_a = np.full(n_step0, -1, np.int64)
    s_item_b = np.full(n_step0, -1, np.int64)
    s_line_a = np.full(n_step0, -1, np.int64)
    s_line_b = np.full(n_step0, -1, np.int64)
    first_units = np.flatnonzero(~second)
    s_item_a[step_of_unit[first_units]] = unit_item[first_units]
    s_line_a[step_of_unit[first_units]] = unit_line[first_units]
    sec = np.flatnonzero(second)
    s_item_b[step_of_unit[sec]] = unit_item[sec]
    s_line_b[step_of_unit[sec]] = unit_line[sec]
    s_extra = np.zeros(n_step0, bool)
    xu = np.flatnonzero(unit_line < 0)
    s_extra[step_of_unit[xu]] = True
    s_pos = np.arange(n_step0, dtype=np.float64)
    s_pos -= np.r_[0, np.cumsum(np.bincount(s_exit, minlength=n))][:-1][s_exit]
    s_lift = np.zeros(n_step0, np.int8)

    # lifted and put back: a single-item step, then its removal and re-placement
    steps_per_exit = np.bincount(s_exit, minlength=n)
    step_start = np.r_[0, np.cumsum(steps_per_exit)][:-1]
    single = s_item_b < 0
    lifted = (rng.random(n) < cfg.p_lift) & (steps_per_exit >= 1)
    which = step_start + (rng.random(n) * np.maximum(steps_per_exit, 1)).astype(np.int64)
    lx = np.flatnonzero(lifted)
    ls = which[lx]
    ok = single[ls]
    lx, ls = lx[ok], ls[ok]
    lifted[:] = False
    lifted[lx] = True
    k = lx.size
    rem_pos = s_pos[ls] + 0.5
    back_pos = rem_pos + 0.25 + rng.random(k) * (steps_per_exit[lx] - rem_pos)
    new = {
        "exit": np.concatenate([lx, lx]),
        "true": np.concatenate([-s_true[ls], s_true[ls]]),
        "item_a": np.concatenate([s_item_a[ls], s_item_a[ls]]),
        "line_a": np.concatenate([s_line_a[ls], s_line_a[ls]]),
        "extra": np.concatenate([s_extra[ls], s_extra[ls]]),
        "pos": np.concatenate([rem_pos, back_pos]),
        "lift": np.concatenate([np.ones(k, np.int8), np.full(k, 2, np.int8)]),
    }
    s_exit = np.concatenate([s_exit, new["exit"]])
    s_true = np.concatenate([s_true, new["true"]])
    s_item_a = np.concatenate([s_item_a, new["item_a"]])
    s_item_b = np.concatenate([s_item_b, np.full(2 * k, -1)])
    s_line_a = np.concatenate([s_line_a, new["line_a"]])
    s_line_b = np.concatenate([s_line_b, np.full(2 * k, -1)])
    s_extra = np.concatenate([s_extra, new["extra"]])
    s_pos = np.concatenate([s_pos, new["pos"]])
    s_lift = np.concatenate([s_lift, new["lift"]])
    order = np.lexsort((s_pos, s_exit))
    s_exit, s_true, s_item_a, s_item_b, s_line_a, s_line_b, s_extra, s_lift = (
        a[order] for a in (s_exit, s_true, s_item_a, s_item_b, s_line_a, s_line_b,
                           s_extra, s_lift))
    sigma, err = _step_noise(rng, s_exit.size, cfg)
    step_offsets = np.r_[0, np.cumsum(np.bincount(s_exit, minlength=n))].astype(np.int64)

    measured = np.bincount(unit_exit, unit_w, minlength=n) + \
        cfg.scale_sd_g * rng.standard_normal(n)
    return cat, Exits(
        n=n, line_exit=exit_of, line_item=item, line_qty=qty, line_offsets=line_offsets,
        state=state, missing_line=missing_line, extra_item=extra_item, merged=merged,
        lifted=lifted, measured_g=measured, step_offsets=step_offsets,
        step_delta_g=s_true + err, step_sigma_g=sigma, step_true_g=s_true,
        step_item_a=s_item_a, step_item_b=s_item_b, step_line_a=s_line_a,
        step_line_b=s_line_b, step_extra=s_extra, step_lift=s_lift, dropped=dropped)


def config_dict(cfg: TruthConfig = TruthConfig()) -> dict:
    """The configuration as a plain dict (for reports)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(v) for v in np.ravel(x)], dtype=np.float64).reshape(
        np.shape(x))


def true_logpdf(cat: TruthCatalogue, items, x_g, sigma_g=0.0) -> np.ndarray:
    """The true log density (per gram) of a step of ``x_g`` grams with step noise
    ``sigma_g`` if it is one unit of ``items`` today (lot included; bumps left out):
    what a Bayes-optimal judge that knew the simulation would use. Broadcasts."""
    items = np.asarray(items, dtype=np.int64)
    x = np.asarray(x_g, dtype=np.float64)
    s2 = np.asarray(sigma_g, dtype=np.float64) ** 2
    mu = cat.mean_g[items] + cat.lot_g[items]
    sd = cat.sd_g[items]
    shape = cat.shape[items]

    def gauss(d, v):
        return -0.5 * (d * d / v + np.log(2 * math.pi * v))

    out = gauss(x - mu, sd * sd + s2)
    nu = np.where(shape == SHAPE_T, cat.nu[items], 30.0)
    # a t of variance sd² has scale sd·sqrt((ν-2)/ν); the step noise widens it
    scale = np.sqrt(sd * sd * (nu - 2.0) / nu + s2)
    z = (x - mu) / scale
    lt = (_lgamma((nu + 1) / 2) - _lgamma(nu / 2) - 0.5 * np.log(nu * math.pi)
          - np.log(scale) - 0.5 * (nu + 1) * np.log1p(z * z / nu))
    out = np.where(shape == SHAPE_T, lt, out)
    p = cat.out_p[items]
    shift = cat.out_shift[items] * cat.mean_g[items]
    v = sd * sd + s2
    mix = np.logaddexp(np.log1p(-p) + gauss(x - mu, v),
                       np.log(np.maximum(p, 1e-300) / 2) + np.logaddexp(
                           gauss(x - mu - shift, v), gauss(x - mu + shift, v)))
    return np.where(shape == SHAPE_MIXTURE, mix, out)
