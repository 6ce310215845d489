"""Per-item exit mode: each settled step on the conveyor is an item, matched to the
paid order's units (issue 18, Build 1).

A lane that sees items one at a time (a checkweigher section of the exit conveyor)
emits ``placed`` / ``removed`` steps with their σ (``lanecore.ext.loadcell``). Here
those steps are matched to the order::

    from lanecore.core.weigh.peritem import (ItemCatalogue, RobustWeights,
                                             PerItemSession, judge)
    weights = RobustWeights.fit(items, grams, n_items)   # past single-item weighings
    cat = ItemCatalogue(gtins, weights, sales)           # sales: how often each sells
    s = PerItemSession([(gtin, qty), ...], cat)
    s.step(412.3, 0.8)      # ItemVerdict as each step arrives: "ok", "merged", ...
    s.clear()               # OrderVerdict when the conveyor is clear

**Each item's weight distribution** (:class:`RobustWeights`) is a Student-t
(location, scale, ν) learned from past weighings with robust statistics: the
location is the median, the scale the median absolute deviation over the t's own
quartile, ν the grid value (2, 3, 4, 6, 10, 30, 200) that maximises the likelihood,
so an item whose history has outliers or heavy tails gets tails to match. Light
tails need evidence: under 60 weighings ν is at most 4, under 500 at most 10 (a
short history rarely shows an item's outliers; a t5 item looks Gaussian in 200
weighings). Scales are floored at max(0.5 g, 1 % of the weight), the floors of
``learning.WeightBook``. An item with fewer than ``min_n`` weighings keeps its
catalogue weight with ν = 4 (a label is not trusted to be Gaussian). A step of
σ_step is judged against the t with scale √(scale² + σ_step²), mixed with the
lane's conveyor bumps (``p_bump`` of the steps are off by N(0, ``bump_sd_g``) more
than their σ says).

**The matching** is a minimum-cost assignment. Costs are negative log
probabilities (per gram for a step's density):

* step i is unit j:           −log p(wᵢ | j)
* step i is unscanned:        −log p_unscanned − log f_cat(wᵢ), f_cat the catalogue's
  weight density mixed by how often each item sells
* unit j is missing:          −log p_miss
* step i is units j and k placed together: −log p(wᵢ | j + k) − log p_merge

A pair (i, j) that costs at least "i unscanned + j missing" can never be in the best
assignment, so it is dropped; the rest falls apart into independent components
(usually one step and its identical units), each solved exactly by the Hungarian
method on steps × (units + one "unscanned" column per step)
(:func:`linear_assignment`, O(n²m)). Then a merged step is looked for: every missing
unit j with a partner k whose summed weight lies near a step re-solves the problem
with j + k as one unit, kept when the total cost falls. ``p_merge`` (0.3) is a
decision weight more than a frequency: a light unit within a heavier unit's spread
cannot be told from the two placed at once, and the default calls that "two at
once" rather than stop an honest shopper (the cost: such a light unit, really
missing, is not caught — ``bench/test_peritem.py`` prints how many). A removal is
paired with the present step nearest its weight (a lifted item: both leave the
scale; the re-placement is a new step like any other); a step smaller than
``min_step_g`` is noise.
**Outcomes.** Per step as it arrives (:class:`ItemVerdict`): ``ok`` (a paid unit),
``merged`` (two paid units), ``lifted`` (a removal that takes a present item off),
``unscanned`` (no paid unit explains it: named against the catalogue, the top 3
candidates by likelihood × sales with their posteriors), ``unexplained_removal``,
``noise``.
For the order when the conveyor is clear (:class:`OrderVerdict`): ``ok`` or
``alarm``, with explanations ranked by how sure each is: ``missing`` (a paid unit
no step explains, with its posterior against the swaps with similar units) and
``unscanned`` (the step, its weight and the candidates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["NU_GRID", "RobustWeights", "ItemCatalogue", "PerItemPolicy", "Step",
           "ItemVerdict", "OrderVerdict", "PerItemSession", "judge", "judge_arrays",
           "linear_assignment", "PerItemError", "DEFAULT_POLICY", "order_units",
           "explain"]

#: ν values a learned distribution may take (200: as good as Gaussian).
NU_GRID = np.array([2.0, 3.0, 4.0, 6.0, 10.0, 30.0, 200.0])
#: The t's upper quartile per ν of the grid: MAD / q75 is the t's scale.
_Q75 = np.array([0.816497, 0.764892, 0.740697, 0.717558, 0.699812, 0.682756, 0.675718])
#: The t's 0.9995 quantile per ν: the two-sided 99.9 % band is loc ± q·scale.
_Q9995 = np.array([31.5991, 12.924, 8.6103, 5.9588, 4.5869, 3.646, 3.3398])
_NU_COLD = 2     # index of ν = 4 in the grid, for items known only by their label
_BIG = 1e12


class PerItemError(ValueError):
    """A per-item input that cannot be judged (code: UNKNOWN_ITEM, BAD_STEP,
    BAD_QUANTITY, BAD_POLICY)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(v) for v in np.ravel(x)], dtype=np.float64).reshape(
        np.shape(x))


def _logc(nu: np.ndarray) -> np.ndarray:
    """The t density's log normaliser without the scale: log Γ((ν+1)/2) − log Γ(ν/2)
    − ½ log(νπ)."""
    nu = np.asarray(nu, dtype=np.float64)
    return _lgamma((nu + 1.0) / 2.0) - _lgamma(nu / 2.0) - 0.5 * np.log(nu * math.pi)


_LOGC_GRID = _logc(NU_GRID)


def _t_logpdf(x, loc, scale, nu, logc):
    z = (x - loc) / scale
    return logc - np.log(scale) - 0.5 * (nu + 1.0) * np.log1p(z * z / nu)


# --------------------------------------------------------------------------------------
# Learned per-item distributions
# --------------------------------------------------------------------------------------

@dataclass
class RobustWeights:
    """Each item's unit weight as a Student-t: ``loc_g``, ``scale_g``, ``nu`` (from
    :data:`NU_GRID`) and the number of weighings ``n`` it was learned from (0: the
    catalogue's label)."""

    loc_g: np.ndarray
    scale_g: np.ndarray
    nu: np.ndarray
    n: np.ndarray

    def __post_init__(self):
        self.loc_g = np.ascontiguousarray(self.loc_g, dtype=np.float64)
        self.scale_g = np.ascontiguousarray(self.scale_g, dtype=np.float64)
        self.nu = np.ascontiguousarray(self.nu, dtype=np.float64)
        self.n = np.ascontiguousarray(self.n, dtype=np.int64)
        self.logc = _logc(self.nu) if self.nu.size else np.zeros(0)

    def __len__(self) -> int:
        return self.loc_g.size

    @classmethod
    def from_label(cls, loc_g, sd_g, *, floor_g: float = 0.5, floor_rel: float = 0.01
                   ) -> RobustWeights:
        """Items known only by their catalogue weight and sd: ν = 4."""
        loc = np.asarray(loc_g, dtype=np.float64)
        sd = np.asarray(sd_g, dtype=np.float64)
        # a t with ν = 4 and scale s has sd s·√2: keep the label's sd
        scale = np.maximum(sd / math.sqrt(2.0), np.maximum(floor_g, floor_rel * loc))
        return cls(loc, scale, np.full(loc.size, NU_GRID[_NU_COLD]), np.zeros(loc.size))

    @classmethod
    def fit(cls, items, x_g, n_items: int, *, prior_loc_g=None, prior_sd_g=None,
            min_n: int = 5, floor_g: float = 0.5, floor_rel: float = 0.01
            ) -> RobustWeights:
        """Learn from past single-item weighings: ``items[k]`` (0..n_items-1) weighed
        ``x_g[k]`` grams. Items with fewer than ``min_n`` weighings take the prior
        (the catalogue's label and sd, ν = 4); without a prior they are NaN."""
        items = np.asarray(items, dtype=np.int64)
        x = np.asarray(x_g, dtype=np.float64)
        if items.shape != x.shape or (items.size and (items.min() < 0
                                                      or items.max() >= n_items)):
            raise PerItemError("items and weights must be equal-length, items in "
                               "0..n_items-1", code="BAD_STEP")
        order = np.lexsort((x, items))
        items, x = items[order], x[order]
        cnt = np.bincount(items, minlength=n_items)
        start = np.r_[0, np.cumsum(cnt)][:-1]

        def grouped_median(sorted_vals):
            lo = start + (np.maximum(cnt, 1) - 1) // 2
            hi = start + np.maximum(cnt, 1) // 2
            lo = np.minimum(lo, max(sorted_vals.size - 1, 0))
            hi = np.minimum(hi, max(sorted_vals.size - 1, 0))
            if sorted_vals.size == 0:
                return np.full(n_items, np.nan)
            return 0.5 * (sorted_vals[lo] + sorted_vals[hi])

        med = grouped_median(x)
        dev = np.abs(x - med[items]) if x.size else x
        order = np.lexsort((dev, items))
        mad = grouped_median(dev[order])
        floor = np.maximum(floor_g, floor_rel * np.abs(med))
        ll = np.empty((NU_GRID.size, n_items))
        scales = np.empty((NU_GRID.size, n_items))
        for g, (nu, q) in enumerate(zip(NU_GRID, _Q75)):
            s = np.maximum(mad / q, floor)
            scales[g] = s
            if x.size:
                lp = _t_logpdf(x, med[items], s[items], nu, _LOGC_GRID[g])
                ll[g] = np.bincount(items, lp, minlength=n_items)
            else:
                ll[g] = 0.0
        # light tails need evidence: with few weighings the t keeps heavy tails
        # (ν ≤ 4 under 60 weighings, ν ≤ 10 under 500), since a short history rarely
        # shows the outliers an item has
        nu_cap = np.where(cnt < 60, 4.0, np.where(cnt < 500, 10.0, np.inf))
        ll[NU_GRID[:, None] > nu_cap[None, :]] = -np.inf
        best = np.argmax(ll, axis=0)
        loc = med
        scale = scales[best, np.arange(n_items)]
        nu = NU_GRID[best]
        cold = cnt < min_n
        if prior_loc_g is not None:
            pl = np.asarray(prior_loc_g, dtype=np.float64)
            ps = np.asarray(prior_sd_g, dtype=np.float64) if prior_sd_g is not None \
                else floor_rel * pl
            prior = cls.from_label(pl, ps, floor_g=floor_g, floor_rel=floor_rel)
            loc = np.where(cold, prior.loc_g, loc)
            scale = np.where(cold, prior.scale_g, scale)
            nu = np.where(cold, prior.nu, nu)
        else:
            loc = np.where(cold, np.nan, loc)
            scale = np.where(cold, np.nan, scale)
        return cls(loc, scale, nu, np.where(cold, 0, cnt))

    def band_g(self, item: int) -> tuple[float, float]:
        """The item's two-sided 99.9 % band (grams): its t's 0.05 % and 99.95 %
        quantiles — where a Gaussian band would be too narrow for a heavy tail."""
        g = int(np.searchsorted(NU_GRID, self.nu[item]))
        half = float(_Q9995[min(g, NU_GRID.size - 1)] * self.scale_g[item])
        return float(self.loc_g[item]) - half, float(self.loc_g[item]) + half

    def logpdf(self, x, item, sigma_step=0.0):
        """log density (per gram) of a step of ``x`` g (σ ``sigma_step``) if it is
        one unit of ``item`` (broadcasts)."""
        s = np.sqrt(self.scale_g[item] ** 2 + np.asarray(sigma_step) ** 2)
        return _t_logpdf(x, self.loc_g[item], s, self.nu[item], self.logc[item])


# --------------------------------------------------------------------------------------
# The catalogue an unmatched step is named against
# --------------------------------------------------------------------------------------

class ItemCatalogue:
    """Items that can be named: GTINs (strings), their :class:`RobustWeights` and how
    often each sells (any non-negative numbers, normalised here). Items whose weight
    is unknown (NaN) are never named and cannot be on a judged order."""

    GRID_MIN_G = 1.0
    GRID_MAX_G = 100_000.0
    GRID_POINTS = 3200
    #: the share of unscanned objects that are no catalogue item (uniform in weight)
    OTHER_SHARE = 0.01

    def __init__(self, gtins, weights: RobustWeights, sales=None):
        self.gtins = [str(g) for g in gtins]
        if len(self.gtins) != len(weights):
            raise PerItemError("one GTIN per weight", code="UNKNOWN_ITEM")
        self.weights = weights
        n = len(self.gtins)
        s = np.ones(n) if sales is None else np.asarray(sales, dtype=np.float64).copy()
        known = np.isfinite(weights.loc_g) & np.isfinite(weights.scale_g)
        s = np.where(known & (s > 0), s, 0.0)
        if s.sum() <= 0:
            s = known.astype(np.float64)
        self.sales = s / max(s.sum(), 1e-300)
        self.known = known
        self.index = {g: i for i, g in enumerate(self.gtins)}
        self._nameable = np.flatnonzero(known & (self.sales > 0))
        self._log_sales = np.log(self.sales[self._nameable])
        self._grid = None

    def __len__(self) -> int:
        return len(self.gtins)

    def item(self, gtin: str) -> int:
        i = self.index.get(str(gtin))
        if i is None or not self.known[i]:
            raise PerItemError(f"{gtin}: no learned or catalogue weight", code="UNKNOWN_ITEM")
        return i

    def _density_grid(self):
        if self._grid is None:
            lx = np.linspace(math.log(self.GRID_MIN_G), math.log(self.GRID_MAX_G),
                             self.GRID_POINTS)
            x = np.exp(lx)
            dens = np.zeros_like(x)
            idx = self._nameable
            w = self.weights
            for a in range(0, idx.size, 256):
                it = idx[a:a + 256]
                lp = _t_logpdf(x[:, None], w.loc_g[it], w.scale_g[it], w.nu[it],
                               w.logc[it])
                dens += np.exp(lp) @ self.sales[it]
            # an object that is none of the catalogue's (a bag of something else, a
            # hand on the scale) weighs anything up to the grid's end: a uniform share
            # OTHER_SHARE of the density, so a weight no item comes near is still
            # "unscanned" rather than the nearest item's far tail
            dens = (1.0 - self.OTHER_SHARE) * dens + self.OTHER_SHARE / self.GRID_MAX_G
            self._grid = (lx, np.log(np.maximum(dens, 1e-300)))
        return self._grid

    def log_density(self, x_g) -> np.ndarray:
        """log f_cat(x): the density (per gram) of the weight of an item drawn by
        sales — with a uniform share :data:`OTHER_SHARE` over 0–100 kg for objects
        none of the catalogue's — at ``x_g`` (interpolated on a log-spaced grid,
        1 g – 100 kg)."""
        lx, ld = self._density_grid()
        x = np.clip(np.abs(np.asarray(x_g, dtype=np.float64)), self.GRID_MIN_G,
                    self.GRID_MAX_G)
        return np.interp(np.log(x), lx, ld)

    def candidates(self, x_g: float, sigma_g: float = 0.0, top: int = 3) -> list[dict]:
        """The items a step of ``x_g`` grams most likely is, by likelihood × sales:
        ``[{"gtin", "posterior", "weight_g"}]``, most likely first."""
        it = self._nameable
        if it.size == 0:
            return []
        w = self.weights
        lp = w.logpdf(float(x_g), it, sigma_g) + self._log_sales
        top_i = np.argsort(-lp)[:top]
        m = lp.max()
        z = np.exp(lp - m).sum()
        return [{"gtin": self.gtins[int(it[k])], "posterior": float(np.exp(lp[k] - m) / z),
                 "weight_g": float(w.loc_g[it[k]])} for k in top_i]


# --------------------------------------------------------------------------------------
# Policy, steps, verdicts
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PerItemPolicy:
    """Priors of the per-item matching (probabilities per unit or per step)."""

    p_miss: float = 0.01          # a paid unit is not on the conveyor
    p_unscanned: float = 0.01     # a step is an item that was not paid
    p_merge: float = 0.3          # weight of "two paid units placed at once" (see docs)
    min_step_g: float = 5.0       # |step| below this is the conveyor's noise: ignored
    p_bump: float = 0.01          # a step off by N(0, bump_sd_g) beyond its σ
    bump_sd_g: float = 10.0
    lift_rel: float = 0.25        # a removal pairs with a step within 25 % + lift_abs_g
    lift_abs_g: float = 20.0
    top_candidates: int = 3

    def __post_init__(self):
        for name in ("p_miss", "p_unscanned", "p_merge"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 < p < 1.0):
                raise PerItemError(f"policy {name} = {p!r}: a probability in (0, 1)",
                                   code="BAD_POLICY")
        if not (0.0 <= self.p_bump < 1.0 and self.bump_sd_g > 0 and self.min_step_g >= 0):
            raise PerItemError("policy p_bump in [0, 1), bump_sd_g > 0, min_step_g >= 0",
                               code="BAD_POLICY")
        if not (self.lift_rel >= 0 and self.lift_abs_g >= 0) or \
                not 1 <= int(self.top_candidates) <= 20:
            raise PerItemError("policy lift_rel, lift_abs_g >= 0 and top_candidates "
                               "1..20", code="BAD_POLICY")


DEFAULT_POLICY = PerItemPolicy()


class Step(NamedTuple):
    """A settled step: ``delta_g`` (> 0 placed, < 0 removed), its ``sigma_g`` and when
    it settled (monotonic seconds)."""

    delta_g: float
    sigma_g: float
    t_s: float = 0.0


@dataclass
class ItemVerdict:
    """One step's verdict. ``kind``: ok, merged, lifted, unscanned,
    unexplained_removal, noise (a step smaller than ``min_step_g``). ``gtins``: the paid unit(s) it is; ``candidates`` for an
    unscanned step; ``band_ok``: the step lies within its item's 99.9 % band."""

    step: int
    kind: str
    delta_g: float
    sigma_g: float
    gtins: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    band_ok: bool | None = None
    lifted_step: int | None = None
    units: tuple = ()              # the order's unit numbers (a session's merged step)

    @property
    def alarm(self) -> bool:
        return self.kind in ("unscanned", "unexplained_removal")

    def to_dict(self) -> dict:
        return {"step": self.step, "kind": self.kind, "delta_g": round(self.delta_g, 1),
                "sigma_g": round(self.sigma_g, 2), "gtins": list(self.gtins),
                "candidates": [dict(c, posterior=round(c["posterior"], 4))
                               for c in self.candidates],
                "band_ok": self.band_ok, "lifted_step": self.lifted_step}


@dataclass
class OrderVerdict:
    """The order's verdict when the conveyor is clear: ``verdict`` ok / alarm,
    ``explanations`` (dicts, surest first: ``{"kind": "missing", "gtin", "score",
    "or": [gtins]}`` or ``{"kind": "unscanned", "step", "delta_g", "score",
    "candidates"}`` or ``{"kind": "unexplained_removal", "step", "delta_g"}``) and
    ``items``, each step's final :class:`ItemVerdict`."""

    verdict: str
    explanations: list
    items: list
    cost: float = 0.0

    @property
    def missing(self) -> list:
        return [e["gtin"] for e in self.explanations if e["kind"] == "missing"]

    @property
    def unscanned_steps(self) -> list:
        return [e["step"] for e in self.explanations if e["kind"] == "unscanned"]

    def to_dict(self) -> dict:
        return {"verdict": self.verdict,
                "explanations": [dict(e) for e in self.explanations],
                "items": [v.to_dict() for v in self.items]}


# --------------------------------------------------------------------------------------
# The assignment
# --------------------------------------------------------------------------------------

def linear_assignment(cost) -> list[int]:
    """The minimum-cost assignment of every row of an n × m cost matrix (n ≤ m; list
    of lists or array) to distinct columns: ``col[r]`` for every row r. The Hungarian
    method with potentials (Kuhn–Munkres with Jonker–Volgenant's shortest augmenting
    paths), O(n²·m)."""
    a = cost.tolist() if isinstance(cost, np.ndarray) else [list(r) for r in cost]
    n = len(a)
    if n == 0:
        return []
    m = len(a[0])
    if any(len(r) != m for r in a) or m < n:
        raise ValueError("linear_assignment needs n rows of m >= n columns")
    inf = math.inf
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    p = [0] * (m + 1)        # p[j]: the row matched to column j (1-based; 0 = none)
    way = [0] * (m + 1)
    cols = range(1, m + 1)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0 = p[j0]
            row = a[i0 - 1]
            ui0 = u[i0]
            delta = inf
            j1 = 0
            for j in cols:
                if not used[j]:
                    cur = row[j - 1] - ui0 - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    col = [0] * n
    for j in range(1, m + 1):
        if p[j]:
            col[p[j] - 1] = j - 1
    return col


def _components(n_s: int, n_u: int, ii, jj) -> list[tuple[list, list]]:
    """Connected components (steps, units) of the bipartite graph with edges
    (ii[k], jj[k]); only components with at least one edge."""
    parent = list(range(n_s + n_u))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(ii, jj):
        a, b = find(i), find(n_s + j)
        if a != b:
            parent[a] = b
    groups: dict[int, tuple[list, list]] = {}
    touched = set(ii) | {n_s + j for j in jj}
    for node in sorted(touched):
        r = find(node)
        g = groups.setdefault(r, ([], []))
        if node < n_s:
            g[0].append(node)
        else:
            g[1].append(node - n_s)
    return list(groups.values())


def _assign(c: np.ndarray, c_un: np.ndarray, c_miss: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimum-cost assignment of steps (rows of ``c``) to units (columns), each
    step possibly unscanned (cost ``c_un``), each unit possibly missing (``c_miss``):
    (unit of each step or -1, step of each unit or -1, total cost)."""
    n_s, n_u = c.shape
    step_unit = np.full(n_s, -1, np.int64)
    unit_step = np.full(n_u, -1, np.int64)
    if n_s == 0 or n_u == 0:
        return step_unit, unit_step, float(c_un.sum() + c_miss.sum())
    ok = c < (c_un[:, None] + c_miss[None, :])
    ii, jj = np.nonzero(ok)
    total = float(c_un.sum() + c_miss.sum())
    if ii.size == 0:
        return step_unit, unit_step, total
    for steps, units in _components(n_s, n_u, ii.tolist(), jj.tolist()):
        if len(steps) == 1 and len(units) == 1:
            i, j = steps[0], units[0]
            step_unit[i], unit_step[j] = j, i
            total += float(c[i, j] - c_un[i] - c_miss[j])
            continue
        # rows: the component's steps; columns: its units (cost less the unit's
        # missing cost, which every unit pays unless matched) then one "unscanned"
        # column per step
        s, u = len(steps), len(units)
        m = np.full((s, u + s), _BIG)
        m[:, :u] = np.where(ok[np.ix_(steps, units)],
                            c[np.ix_(steps, units)] - c_miss[units][None, :], _BIG)
        m[np.arange(s), u + np.arange(s)] = c_un[steps]
        col = linear_assignment(m)
        for r in range(s):
            k = col[r]
            if k < u:
                i, j = steps[r], units[k]
                step_unit[i], unit_step[j] = j, i
                total += float(c[i, j] - c_un[i] - c_miss[j])
    return step_unit, unit_step, total


# --------------------------------------------------------------------------------------
# Judging an exit
# --------------------------------------------------------------------------------------

def _pair_lifts(w: np.ndarray, sd: np.ndarray, policy: PerItemPolicy
                ) -> tuple[np.ndarray, np.ndarray]:
    """Removals paired with the present placed step nearest their weight: (lifted:
    for each removal the step it took off or -1; present: placed steps still on)."""
    lifted = np.full(w.size, -1, np.int64)
    present = np.zeros(w.size, bool)
    for i in range(w.size):
        if abs(w[i]) < policy.min_step_g:
            continue                    # noise: neither an item nor a removal
        if w[i] > 0:
            present[i] = True
            continue
        on = np.flatnonzero(present)
        if on.size == 0:
            continue
        gap = np.abs(w[on] + w[i])
        k = int(np.argmin(gap))
        if gap[k] <= policy.lift_rel * abs(w[i]) + policy.lift_abs_g + \
                4.0 * math.hypot(sd[on[k]], sd[i]):
            lifted[i] = on[k]
            present[on[k]] = False
    return lifted, present


class _Columns(NamedTuple):
    """The units of a matching problem as columns: each a group of original units
    (one, or two placed together) with its t's location, scale, ν and normaliser."""

    members: list
    loc: np.ndarray
    scale: np.ndarray
    nu: np.ndarray
    logc: np.ndarray

    @classmethod
    def of_units(cls, cat: ItemCatalogue, unit_item: np.ndarray) -> _Columns:
        rw = cat.weights
        return cls([[j] for j in range(unit_item.size)], rw.loc_g[unit_item],
                   rw.scale_g[unit_item], rw.nu[unit_item], rw.logc[unit_item])

    def costs(self, w: np.ndarray, sd: np.ndarray, policy: PerItemPolicy) -> np.ndarray:
        """−log p(step | column) for every step (rows) and column: the column's t
        widened by the step's σ, mixed with a conveyor bump (``policy.p_bump`` of the
        steps are off by N(0, ``bump_sd_g``) more than their σ says)."""
        s2 = self.scale[None, :] ** 2 + sd[:, None] ** 2
        lt = _t_logpdf(w[:, None], self.loc[None, :], np.sqrt(s2), self.nu[None, :],
                       self.logc[None, :])
        if policy.p_bump <= 0:
            return -lt
        vb = s2 + policy.bump_sd_g ** 2
        d = w[:, None] - self.loc[None, :]
        lb = -0.5 * (d * d / vb + np.log(2 * math.pi * vb))
        return -np.logaddexp(lt + math.log1p(-policy.p_bump), lb + math.log(policy.p_bump))

    def pair(self, j: int) -> _Columns:
        """Column j placed together with each column k (k = j gives nonsense and is
        excluded by the caller)."""
        nu = np.minimum(self.nu[j], self.nu)
        logc = np.where(self.nu[j] <= self.nu, self.logc[j], self.logc)
        return _Columns([self.members[j] + m for m in self.members], self.loc[j] + self.loc,
                        np.sqrt(self.scale[j] ** 2 + self.scale ** 2), nu, logc)

    def merge(self, j: int, k: int) -> _Columns:
        """Columns j and k replaced by one column of both (appended last)."""
        keep = [x for x in range(len(self.members)) if x not in (j, k)]
        p = self.pair(j)
        return _Columns([self.members[x] for x in keep] + [p.members[k]],
                        np.r_[self.loc[keep], p.loc[k]], np.r_[self.scale[keep], p.scale[k]],
                        np.r_[self.nu[keep], p.nu[k]], np.r_[self.logc[keep], p.logc[k]])


def judge_arrays(unit_item, w, sd, cat: ItemCatalogue, policy: PerItemPolicy = DEFAULT_POLICY,
                 *, pending: bool = False) -> dict:
    """Match steps (``w`` grams, ``sd`` σ, in conveyor order) to the order's units
    (catalogue indices ``unit_item``, one per unit). ``pending``: the conveyor is not
    clear yet, so an unmatched unit is not missing (cost 0) and no merge is sought.

    Returns a dict: ``step_units`` (per step: the unit indices it is, empty when
    unscanned or a removal), ``lifted`` (per removal the step it took off, else -1),
    ``missing`` (unit indices), ``unscanned`` (step indices), ``unexplained``
    (removals that took nothing off), ``merged`` (steps of two units), ``cost`` (the
    assignment's total), ``present`` (the steps still on the conveyor), and ``c``,
    ``c_un`` (the single-unit costs, present steps × units) for explanations."""
    unit_item = np.asarray(unit_item, dtype=np.int64)
    w = np.asarray(w, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    lifted, present = _pair_lifts(w, sd, policy)
    on = np.flatnonzero(present)
    wo, so = w[on], sd[on]
    cols = _Columns.of_units(cat, unit_item)
    c = cols.costs(wo, so, policy)
    c0 = c
    c_un = -math.log(policy.p_unscanned) - cat.log_density(wo)
    miss = 0.0 if pending else -math.log(policy.p_miss)
    c_miss = np.full(len(cols.members), miss)
    su, us, total = _assign(c, c_un, c_miss)
    if not pending and unit_item.size >= 2 and on.size:
        lmerge = -math.log(policy.p_merge)
        for _round in range(4):        # at most four merged steps in one exit
            best = None
            n_c = len(cols.members)
            for j in np.flatnonzero(us < 0).tolist():
                if len(cols.members[j]) > 1:
                    continue
                pair = cols.pair(j)
                pc = pair.costs(wo, so, policy) + lmerge            # steps × partner columns
                pc[:, j] = np.inf
                for k in range(n_c):
                    if len(cols.members[k]) > 1:
                        pc[:, k] = np.inf
                cand = np.argwhere(pc < c_un[:, None] + 2 * miss)
                if cand.size == 0:
                    continue
                # most promising first: the pair's cost against what the step costs now
                now = np.where(su >= 0, c[np.arange(su.size), np.maximum(su, 0)], c_un)
                gain = pc[cand[:, 0], cand[:, 1]] - now[cand[:, 0]]
                ks = []
                for k in cand[np.argsort(gain), 1].tolist():
                    if k not in ks:
                        ks.append(k)
                    if len(ks) == 6:
                        break
                for k in ks:
                    cols2 = cols.merge(j, k)
                    keep = [x for x in range(n_c) if x not in (j, k)]
                    c2 = np.column_stack([c[:, keep], pc[:, k]])
                    cm2 = np.r_[c_miss[keep], 2 * miss]
                    su2, us2, t2 = _assign(c2, c_un, cm2)
                    if t2 < total - 1e-9 and (best is None or t2 < best[0]):
                        best = (t2, cols2, c2, cm2, su2, us2)
            if best is None:
                break
            total, cols, c, c_miss, su, us = best
    step_units = [sorted(cols.members[x]) if x >= 0 else [] for x in su.tolist()]
    full_units: list[list[int]] = [[] for _ in range(w.size)]
    for k, i in enumerate(on.tolist()):
        full_units[i] = step_units[k]
    covered = {u for grp in step_units for u in grp}
    return {"step_units": full_units, "lifted": lifted,
            "missing": [j for j in range(unit_item.size) if j not in covered],
            "unscanned": [int(on[k]) for k in range(on.size) if not step_units[k]],
            "unexplained": [i for i in range(w.size) if w[i] <= -policy.min_step_g
                            and lifted[i] < 0],
            "merged": [int(on[k]) for k in range(on.size) if len(step_units[k]) >= 2],
            "cost": total, "present": on, "c": c0, "c_un": c_un}


def _units_of(lines, cat: ItemCatalogue) -> tuple[np.ndarray, list]:
    """Order lines (``(gtin, qty)`` pairs or mappings with ``gtin`` and ``qty``) as
    one catalogue index per unit, and the unit's GTIN."""
    items, gtins = [], []
    for line in lines:
        if isinstance(line, Mapping):
            g, q = line.get("gtin"), line.get("qty", 1)
        else:
            g, q = line
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 10_000:
            raise PerItemError(f"{g}: qty {q!r} must be a whole number 1..10000",
                               code="BAD_QUANTITY")
        i = cat.item(str(g))
        items.extend([i] * q)
        gtins.extend([cat.gtins[i]] * q)
    return np.asarray(items, dtype=np.int64), gtins


def _steps_of(steps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w, sd, t = [], [], []
    for s in steps:
        if isinstance(s, Mapping):
            s = Step(s.get("delta_g"), s.get("sigma_g", 0.0), s.get("t", 0.0) or 0.0)
        elif not isinstance(s, Step):
            s = Step(*s)
        d, e = s.delta_g, s.sigma_g
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) for v in (d, e)) or e < 0 or d == 0:
            raise PerItemError(f"a step is a finite non-zero delta_g with sigma_g >= 0, "
                               f"not {s!r}", code="BAD_STEP")
        w.append(float(d))
        sd.append(float(e))
        t.append(float(s.t_s))
    return (np.asarray(w, dtype=np.float64), np.asarray(sd, dtype=np.float64),
            np.asarray(t, dtype=np.float64))


def _explain(res: dict, unit_item: np.ndarray, gtins: list, w, sd, cat: ItemCatalogue,
             policy: PerItemPolicy) -> list:
    """Explanations of a final matching, surest first (see :class:`OrderVerdict`)."""
    c, c_un, on = res["c"], res["c_un"], res["present"]
    row_of = {int(i): k for k, i in enumerate(on.tolist())}
    single = {}      # unit -> row of the step it alone is
    for i, units in enumerate(res["step_units"]):
        if len(units) == 1:
            single[units[0]] = row_of[i]
    out = []
    for j in res["missing"]:
        # j missing vs each matched unit k of another GTIN missing instead (j takes
        # k's step): Δ = C(step_k, j) − C(step_k, k)
        alt: dict[str, float] = {}
        for k, r in single.items():
            if gtins[k] == gtins[j]:
                continue
            d = float(c[r, j] - c[r, k])
            if d < 30.0:
                alt[gtins[k]] = alt.get(gtins[k], 0.0) + math.exp(-d)
        tot = 1.0 + sum(alt.values())
        ors = sorted(alt.items(), key=lambda kv: -kv[1])[:3]
        out.append({"kind": "missing", "gtin": gtins[j], "score": 1.0 / tot,
                    "or": [{"gtin": g, "score": a / tot} for g, a in ors]})
    for i in res["unscanned"]:
        r = row_of[i]
        alt_sum = 0.0
        for j, r2 in single.items():
            d = float(c[r, j] + c_un[r2] - c[r2, j] - c_un[r])
            if d < 30.0:
                alt_sum += math.exp(-d)
        out.append({"kind": "unscanned", "step": int(i), "delta_g": float(w[i]),
                    "score": 1.0 / (1.0 + alt_sum),
                    "candidates": cat.candidates(w[i], sd[i], policy.top_candidates)})
    for i in res["unexplained"]:
        out.append({"kind": "unexplained_removal", "step": int(i), "delta_g": float(w[i]),
                    "score": 1.0})
    out.sort(key=lambda e: -e["score"])
    return out


def _item_verdicts(res: dict, unit_item, gtins, w, sd, cat: ItemCatalogue,
                   policy: PerItemPolicy, with_candidates: bool = True) -> list:
    rw = cat.weights
    out = []
    for i in range(w.size):
        units = res["step_units"][i]
        if abs(w[i]) < policy.min_step_g:
            out.append(ItemVerdict(i, "noise", float(w[i]), float(sd[i])))
        elif w[i] <= 0:
            lk = int(res["lifted"][i])
            out.append(ItemVerdict(i, "lifted" if lk >= 0 else "unexplained_removal",
                                   float(w[i]), float(sd[i]),
                                   lifted_step=lk if lk >= 0 else None))
        elif i not in set(res["present"].tolist()):
            out.append(ItemVerdict(i, "lifted", float(w[i]), float(sd[i])))
        elif len(units) == 1:
            lo, hi = rw.band_g(int(unit_item[units[0]]))
            out.append(ItemVerdict(i, "ok", float(w[i]), float(sd[i]), [gtins[units[0]]],
                                   band_ok=bool(lo <= w[i] <= hi)))
        elif units:
            out.append(ItemVerdict(i, "merged", float(w[i]), float(sd[i]),
                                   [gtins[u] for u in units]))
        else:
            cand = cat.candidates(w[i], sd[i], policy.top_candidates) \
                if with_candidates else []
            out.append(ItemVerdict(i, "unscanned", float(w[i]), float(sd[i]),
                                   candidates=cand))
    return out


def judge(lines, steps, cat: ItemCatalogue, policy: PerItemPolicy = DEFAULT_POLICY
          ) -> OrderVerdict:
    """The order's verdict once the conveyor is clear: ``lines`` the paid order
    (``(gtin, qty)`` or ``{"gtin", "qty"}``), ``steps`` every settled step in order
    (:class:`Step`, ``(delta_g, sigma_g[, t_s])`` or ``{"delta_g", "sigma_g"}``)."""
    unit_item, gtins = _units_of(lines, cat)
    w, sd, _t = _steps_of(steps)
    res = judge_arrays(unit_item, w, sd, cat, policy)
    expl = _explain(res, unit_item, gtins, w, sd, cat, policy)
    items = _item_verdicts(res, unit_item, gtins, w, sd, cat, policy)
    return OrderVerdict("alarm" if expl else "ok", expl, items, res["cost"])


class PerItemSession:
    """One order on the conveyor: :meth:`step` for each settled step (its verdict at
    once), :meth:`clear` when the conveyor is clear (the order's verdict). A later
    step may change an earlier one's role (two similar items); the order's verdict
    is the final word."""

    def __init__(self, lines, cat: ItemCatalogue, policy: PerItemPolicy = DEFAULT_POLICY):
        self.cat = cat
        self.policy = policy
        self.unit_item, self.gtins = _units_of(lines, cat)
        self._w: list[float] = []
        self._sd: list[float] = []
        self._t: list[float] = []
        self.verdicts: list[ItemVerdict] = []
        self._merged: dict[int, tuple[int, int]] = {}

    def step(self, delta_g: float, sigma_g: float, t_s: float = 0.0) -> ItemVerdict:
        w1, sd1, t1 = _steps_of([Step(delta_g, sigma_g, t_s)])
        self._w.append(float(w1[0]))
        self._sd.append(float(sd1[0]))
        self._t.append(float(t1[0]))
        w, sd = np.asarray(self._w), np.asarray(self._sd)
        i = w.size - 1
        # steps already judged "merged" keep their two units out of the matching
        # (unless a removal has taken them off since)
        off = {int(v.lifted_step) for v in self.verdicts if v.lifted_step is not None}
        merged = {k: u for k, u in self._merged.items() if k not in off}
        keep_u = [j for j in range(self.unit_item.size)
                  if j not in {x for u in merged.values() for x in u}]
        keep_s = [k for k in range(w.size) if k not in merged]
        res = judge_arrays(self.unit_item[keep_u], w[keep_s], sd[keep_s], self.cat,
                           self.policy, pending=True)
        # back to the session's numbering
        res["step_units"] = [[keep_u[j] for j in units] for units in res["step_units"]]
        step_units = {k: res["step_units"][r] for r, k in enumerate(keep_s)}
        lifted = {k: int(res["lifted"][r]) for r, k in enumerate(keep_s)}
        res["present"] = np.asarray([keep_s[r] for r in res["present"].tolist()])
        units = step_units[i]
        if abs(w[i]) < self.policy.min_step_g:
            v = ItemVerdict(i, "noise", w[i], sd[i])
        elif w[i] <= 0:
            lk = lifted[i]
            lk = keep_s[lk] if lk >= 0 else -1
            v = ItemVerdict(i, "lifted" if lk >= 0 else "unexplained_removal", w[i], sd[i],
                            gtins=list(self.verdicts[lk].gtins) if lk >= 0 else [],
                            lifted_step=lk if lk >= 0 else None)
        else:
            taken = {u for k, grp in step_units.items() for u in grp if k != i}
            v = self._placed(res, i, w, sd, units, taken | set(keep_u).symmetric_difference(
                range(self.unit_item.size)))
            if v.kind == "merged":
                self._merged[i] = v.units
        self.verdicts.append(v)
        return v

    def _placed(self, res, i, w, sd, units, taken) -> ItemVerdict:
        """A placed step: the paid unit the matching gave it, unless two units not
        yet seen (or that one and another) placed together explain it better; an
        unscanned item when neither does. ``taken``: units other steps hold."""
        free = [j for j in range(self.unit_item.size) if j not in taken and j not in units]
        free += list(units)
        row = res["present"].tolist().index(i)
        if units:
            one = _Columns.of_units(self.cat, self.unit_item[units[:1]])
            now = float(one.costs(w[i:i + 1], sd[i:i + 1], self.policy)[0, 0])
        else:
            now = float(res["c_un"][row])
        if len(free) >= 2:
            cols = _Columns.of_units(self.cat, self.unit_item[free])
            lmerge = -math.log(self.policy.p_merge)
            best = (math.inf, None)
            for a in range(len(free)):
                pc = cols.pair(a).costs(w[i:i + 1], sd[i:i + 1], self.policy)[0] + lmerge
                pc[: a + 1] = np.inf          # each pair once
                b = int(np.argmin(pc))
                if pc[b] < best[0]:
                    best = (float(pc[b]), (free[a], free[b]))
            if best[0] < now:
                a, b = best[1]
                v = ItemVerdict(i, "merged", w[i], sd[i], [self.gtins[a], self.gtins[b]])
                v.units = (a, b)
                return v
        if units:
            lo, hi = self.cat.weights.band_g(int(self.unit_item[units[0]]))
            return ItemVerdict(i, "ok", w[i], sd[i], [self.gtins[units[0]]],
                               band_ok=bool(lo <= w[i] <= hi))
        return ItemVerdict(i, "unscanned", w[i], sd[i],
                           candidates=self.cat.candidates(w[i], sd[i],
                                                          self.policy.top_candidates))

    def clear(self) -> OrderVerdict:
        """The order's verdict: every step so far, unmatched paid units missing."""
        w, sd = np.asarray(self._w, dtype=np.float64), np.asarray(self._sd, dtype=np.float64)
        res = judge_arrays(self.unit_item, w, sd, self.cat, self.policy)
        expl = _explain(res, self.unit_item, self.gtins, w, sd, self.cat, self.policy)
        items = _item_verdicts(res, self.unit_item, self.gtins, w, sd, self.cat,
                               self.policy)
        return OrderVerdict("alarm" if expl else "ok", expl, items, res["cost"])


def order_units(lines, cat: ItemCatalogue) -> tuple[np.ndarray, list]:
    """(catalogue index per unit, GTIN per unit) of an order's lines."""
    return _units_of(lines, cat)


def explain(res: dict, unit_item, gtins, w, sd, cat: ItemCatalogue,
            policy: PerItemPolicy = DEFAULT_POLICY) -> list:
    """The explanations of a :func:`judge_arrays` result, surest first."""
    return _explain(res, np.asarray(unit_item), gtins, np.asarray(w), np.asarray(sd), cat,
                    policy)
