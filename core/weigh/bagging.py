"""Kiosk bagging-scale mode (lane B): each scanned item's weight delta on the bagging
scale (issue 18, Build 2).

A self-checkout kiosk weighs what goes into the bagging area. Every scan announces
an item; the settled delta that follows is checked against that item's learned
distribution — the same robust Student-t fits, bands, catalogue candidates and
minimum-cost assignment as per-item conveyor mode (``peritem.py``, imported, not
copied)::

    from lanecore.core.weigh.bagging import BaggingSession
    s = BaggingSession(cat)                 # cat: a peritem.ItemCatalogue
    s.scan("05901234123457", t_s=10.0)      # ScanVerdict: "await" (band) or "no_check"
    s.delta(412.3, 0.8, t_s=12.1)           # DeltaVerdict: "ok", "merged", "returned",
                                            #   "lifted", "noise", "unexpected", ...
    s.tick(25.0)                            # alarms for scans whose item was not placed
    s.override(0, gtin=..., by="att-7")     # the attendant accepts an alarm
    s.finish(t_s=40.0)                      # payment: what is still pending

**Matching a delta.** The positive delta is matched (``peritem.judge_arrays``, one
step against the *open* units: scanned and not yet placed, or lifted out of the bag
and not yet back) with the per-item costs: the delta is one open unit, two open
units placed together (``p_merge``: two scans, then both in the bag at once), or an
item nobody scanned (the catalogue's weight density × ``p_unscanned``; the
kiosk's priors are :data:`KIOSK_POLICY`). The last
is **"unexpected item in the bagging area"**: a delta with no scan, or one that is not
the scanned item's (a swap). Its explanation is ``peritem.explain``'s unscanned entry:
the step, its weight, the score, the catalogue's top 3 candidates with posteriors,
and the open units it was expected to be, with their 99.9 % bands.

**A scan with no delta in time** (``place_timeout_s``, 10 s after the scan, or
after a later scan made before anything was bagged: a shopper still scanning may
bag two items at once) is **"item not placed"**: its explanation is
``peritem.explain``'s missing entry over the units scanned while it was open and
the deltas matched to them (so a swap between two similar units says so: the score
and the ``or`` list).

**A removal** (a negative delta) is paired with the bagged item nearest its weight
(``judge_arrays``' lift pairing, with the bag's contents as the steps): "lifted", and
that item's units are open again until they come back ("returned"); one that is not
back within ``return_timeout_s`` (120 s) or by :meth:`finish` is alarmed
("not_returned") unless it is a no-bagging-check item (a light one's return may be
below the scale's smallest step). A removal that fits nothing in the bag is
"unexplained_removal".

**Two at once, lifted items.** Two units scanned and then bagged as one delta match
the pair (``merged``); a lifted item comes back on its own, so a delta that the
matching would call "a scanned unit + a lifted one" is matched again without the
lifted items (a light lifted item would otherwise hide in a heavy scan's spread and
its return look unexpected).

**Accepting.** The accept decision is the per-item cost comparison, not the band
alone: each :class:`DeltaVerdict` says whether the delta lay in its item's 99.9 %
band (``band_ok``), but on the heavier-tailed truth 0.11 % of honest deltas fall
outside their learned band (29 of 26,742 accepted honest deltas, 30,000 scanned
items of the benchmark's sessions), so alarming on the band alone would spend the
whole false-alarm budget.

**No bagging check** (:func:`no_check_reason`, documented rule): an item is not
checked when its learned weight is below ``light_g`` (10 g: twice the scale's
smallest step, ``min_step_g``, so its delta is not reliably told from the scale's
noise) or when it is too variable: its learned 99.9 % band's half-width exceeds
``max_band_rel`` (35 %) of its weight (the band of a heavy-tailed or erratic item
then covers other goods, so a delta says nothing). Such a unit is never alarmed as
not placed; a delta that fits it is accepted as it.

**Attendant override** (:meth:`BaggingSession.override`): an alarm accepted. For an
unexpected delta the attendant may say which item it is (``gtin``): if that item was
scanned and open it is placed by that delta, and the delta becomes a confirmed
weighing of it, ``(gtin, delta_g, 1, True)`` in :attr:`BaggingSession.learned`: what
``learning.WeightBook.learn_many(observations, confirmed_by=by)`` takes.

Pure (numpy, no I/O); weights are grams, times monotonic seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lanecore.core.weigh.peritem import (ItemCatalogue, PerItemError,
                                         PerItemPolicy, explain, judge_arrays)

__all__ = ["KIOSK_POLICY", "BaggingPolicy", "BaggingSession", "ScanVerdict", "DeltaVerdict", "Alarm",
           "Override", "no_check_reason", "DEFAULT_BAGGING", "ALARM_KINDS"]

ALARM_KINDS = ("unexpected", "not_placed", "unexplained_removal", "not_returned")

#: The kiosk's matching priors: per-item mode's costs with ``p_miss`` and
#: ``p_unscanned`` 0.03 (per-item mode: 0.01). A swap (scanned A, bagged X) costs
#: "X unscanned + A not placed", both priors; at 0.01 the learned heavy tails (ν ≤ 4
#: under 60 weighings) accept deltas 20-30 scales off the scanned item. On the
#: benchmark's 100,000 scanned items (seed 1819), 0.01 / 0.03 / 0.1: false alarms
#: 0.016 / 0.020 / 0.080 % of honest scanned items, swaps caught 72 / 82 / 89 %.
KIOSK_POLICY = PerItemPolicy(p_miss=0.03, p_unscanned=0.03)


@dataclass(frozen=True)
class BaggingPolicy:
    """The kiosk's timing and its no-bagging-check rule (seconds, grams)."""

    place_timeout_s: float = 10.0     # a scan's delta expected within this
    return_timeout_s: float = 120.0   # a lifted item expected back within this
    light_g: float = 10.0             # lighter items are not checked
    max_band_rel: float = 0.35        # items whose 99.9 % half-band exceeds this share
    #                                   of their weight are not checked

    def __post_init__(self):
        if not (self.place_timeout_s > 0 and self.return_timeout_s > 0
                and self.light_g >= 0 and self.max_band_rel > 0):
            raise PerItemError("bagging policy: timeouts > 0, light_g >= 0, "
                               "max_band_rel > 0", code="BAD_POLICY")


DEFAULT_BAGGING = BaggingPolicy()


def no_check_reason(cat: ItemCatalogue, item: int, policy: BaggingPolicy = DEFAULT_BAGGING
                    ) -> str | None:
    """Why item ``item`` (catalogue index) is not bagging-checked: ``"light"``,
    ``"variable"`` or None (checked). See the module docstring."""
    w = cat.weights
    loc = float(w.loc_g[item])
    if loc < policy.light_g:
        return "light"
    lo, hi = w.band_g(item)
    if (hi - lo) / 2.0 > policy.max_band_rel * loc:
        return "variable"
    return None


@dataclass
class ScanVerdict:
    """A scan: ``kind`` "await" (a delta within ``band_g`` expected by ``due_s``) or
    "no_check" (``reason`` light / variable)."""

    unit: int
    gtin: str
    kind: str
    band_g: tuple = ()
    due_s: float | None = None
    reason: str | None = None


@dataclass
class DeltaVerdict:
    """A settled delta on the bagging scale. ``kind``: ok (one scanned unit), merged
    (two at once), returned (a lifted item back), lifted (a removal of a bagged
    item), late (a unit already alarmed "not placed"), noise, unexpected (alarm),
    unexplained_removal (alarm). ``units``: the
    scanned units it is; ``alarm``: the alarm number, if any."""

    step: int
    kind: str
    delta_g: float
    sigma_g: float
    t_s: float
    units: list = field(default_factory=list)
    gtins: list = field(default_factory=list)
    band_ok: bool | None = None
    alarm: int | None = None

    def to_dict(self) -> dict:
        return {"step": self.step, "kind": self.kind, "delta_g": round(self.delta_g, 1),
                "sigma_g": round(self.sigma_g, 2), "t_s": self.t_s, "units": list(self.units),
                "gtins": list(self.gtins), "band_ok": self.band_ok, "alarm": self.alarm}


@dataclass
class Alarm:
    """An alarm: ``kind`` one of :data:`ALARM_KINDS`; ``explanation`` as per-item mode
    gives it (``unexpected``: ``{"kind": "unexpected", "step", "delta_g", "score",
    "candidates": [{"gtin", "posterior", "weight_g"}] (top 3), "expected": [{"gtin",
    "band_g"}]}``; ``not_placed``: ``{"kind": "not_placed", "gtin", "unit", "score",
    "or": [{"gtin", "score"}]}``); ``overridden``: who accepted it."""

    no: int
    kind: str
    t_s: float
    explanation: dict
    step: int | None = None
    unit: int | None = None
    overridden: str | None = None

    def to_dict(self) -> dict:
        return {"no": self.no, "kind": self.kind, "t_s": self.t_s, "step": self.step,
                "unit": self.unit, "explanation": dict(self.explanation),
                "overridden": self.overridden}


@dataclass
class Override:
    """An attendant's acceptance: the alarm, who, and the weighing it taught
    (``(gtin, delta_g, 1, True)`` or None)."""

    alarm: int
    by: str
    gtin: str | None
    learned: tuple | None


# unit states
_OPEN, _PLACED, _NOT_PLACED, _SKIPPED, _LIFTED, _ACCEPTED = (
    "open", "placed", "not_placed", "skipped", "lifted", "accepted")


class BaggingSession:
    """One kiosk transaction (see the module docstring). Events in time order:
    :meth:`scan`, :meth:`delta`, :meth:`tick`; :meth:`override` for an alarm;
    :meth:`finish` at payment."""

    def __init__(self, cat: ItemCatalogue, policy: PerItemPolicy = KIOSK_POLICY,
                 bagging: BaggingPolicy = DEFAULT_BAGGING):
        self.cat = cat
        self.policy = policy
        self.bagging = bagging
        self.unit_item: list[int] = []
        self.unit_gtin: list[str] = []
        self.unit_t: list[float] = []        # when scanned (or lifted out)
        self.unit_state: list[str] = []
        self.unit_check: list[str | None] = []   # no-check reason
        self.unit_step: list[int] = []       # the delta that placed it, -1
        self.steps: list[DeltaVerdict] = []
        self.bag: list[int] = []             # steps whose items are in the bag
        self.step_units: dict[int, list[int]] = {}
        self.alarms: list[Alarm] = []
        self.learned: list[tuple] = []
        self.overrides: list[Override] = []
        self._t = -math.inf
        self._wait_from: list[float] = []    # the "not placed" wait runs from here
        self._scanning: list[int] = []       # units scanned since the last bagging

    # ------------------------------------------------------------------ helpers
    def _clock(self, t_s) -> float:
        t = float(t_s)
        if not math.isfinite(t):
            raise PerItemError(f"t_s {t_s!r} must be finite", code="BAD_STEP")
        if t < self._t:
            raise PerItemError(f"t_s {t} before the last event {self._t}", code="BAD_STEP")
        self._t = t
        return t

    def _open(self) -> list[int]:
        """Units a positive delta may be: scanned and not yet placed (a unit already
        alarmed "not placed" too: placed late), or lifted out of the bag."""
        # the scanned ones first: between identical items the matching keeps the
        # first, so an item already alarmed is not taken for one just scanned
        return [j for want in (_OPEN, _LIFTED, _NOT_PLACED)
                for j, s in enumerate(self.unit_state) if s == want]

    def _alarm(self, kind, t, explanation, step=None, unit=None) -> int:
        a = Alarm(len(self.alarms), kind, t, explanation, step, unit)
        self.alarms.append(a)
        return a.no

    def _band(self, j: int) -> tuple:
        lo, hi = self.cat.weights.band_g(self.unit_item[j])
        return (round(lo, 1), round(hi, 1))

    # ------------------------------------------------------------------ events
    def scan(self, gtin, t_s: float) -> ScanVerdict:
        """A scanned unit of ``gtin``: what the bagging scale now expects."""
        t = self._clock(t_s)
        self.tick(t)
        i = self.cat.item(str(gtin))
        j = len(self.unit_item)
        reason = no_check_reason(self.cat, i, self.bagging)
        self.unit_item.append(i)
        self.unit_gtin.append(self.cat.gtins[i])
        # a later scan restarts the wait of units scanned since the last bagging:
        # the shopper is still scanning (two scans, then both in the bag at once)
        for u in self._scanning:
            if self.unit_state[u] == _OPEN:
                self._wait_from[u] = t
        self._scanning.append(j)
        self._wait_from.append(t)
        self.unit_t.append(t)
        self.unit_state.append(_OPEN)
        self.unit_check.append(reason)
        self.unit_step.append(-1)
        if reason:
            return ScanVerdict(j, self.cat.gtins[i], "no_check", self._band(j), None, reason)
        return ScanVerdict(j, self.cat.gtins[i], "await", self._band(j),
                           t + self.bagging.place_timeout_s)

    def delta(self, delta_g: float, sigma_g: float, t_s: float) -> DeltaVerdict:
        """A settled weight change of the bagging area (> 0 placed, < 0 removed)."""
        t = self._clock(t_s)
        self.tick(t)
        d, e = delta_g, sigma_g
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) for v in (d, e)) or e < 0 or d == 0:
            raise PerItemError("a delta is a finite non-zero delta_g with sigma_g >= 0",
                               code="BAD_STEP")
        k = len(self.steps)
        d, e = float(d), float(e)
        if abs(d) < self.policy.min_step_g:
            v = DeltaVerdict(k, "noise", d, e, t)
        elif d < 0:
            v = self._removal(k, d, e, t)
        else:
            v = self._placed(k, d, e, t)
        self.steps.append(v)
        return v

    def _removal(self, k, d, e, t) -> DeltaVerdict:
        if self.bag:
            # the per-item lift pairing: the bag's contents as steps, then the removal
            w = np.array([self.steps[b].delta_g for b in self.bag] + [d])
            sd = np.array([self.steps[b].sigma_g for b in self.bag] + [e])
            res = judge_arrays(np.zeros(0, np.int64), w, sd, self.cat, self.policy)
            lk = int(res["lifted"][-1])
            if lk >= 0:
                b = self.bag.pop(lk)
                units = self.step_units.get(b, [])
                for j in units:
                    self.unit_state[j] = _LIFTED
                    self.unit_t[j] = t
                return DeltaVerdict(k, "lifted", d, e, t, list(units),
                                    [self.unit_gtin[j] for j in units])
        no = self._alarm("unexplained_removal", t, {"kind": "unexplained_removal",
                                                    "step": k, "delta_g": d, "score": 1.0},
                         step=k)
        return DeltaVerdict(k, "unexplained_removal", d, e, t, alarm=no)

    def _placed(self, k, d, e, t) -> DeltaVerdict:
        self._scanning = []
        op = self._open()
        items = np.asarray([self.unit_item[j] for j in op], dtype=np.int64)
        w, sd = np.array([d]), np.array([e])
        res = judge_arrays(items, w, sd, self.cat, self.policy)
        got = [op[u] for u in res["step_units"][0]]
        if len(got) > 1 and any(self.unit_state[j] == _LIFTED for j in got):
            # two at once means two scans, then one delta: an item lifted out comes
            # back on its own (a light one would otherwise hide in a heavy scan's
            # spread). The best of: the match made again without the lifted items
            # (merges among the scanned ones allowed), or a lifted item alone.
            miss = -math.log(self.policy.p_miss)
            lifted = [u for u, j in enumerate(op) if self.unit_state[j] == _LIFTED]
            c1 = res["c"][0]
            u1 = min(lifted, key=lambda u: c1[u])
            one = float(c1[u1]) + (len(op) - 1) * miss
            rest = [j for j in op if self.unit_state[j] != _LIFTED]
            items2 = np.asarray([self.unit_item[j] for j in rest], dtype=np.int64)
            res2 = judge_arrays(items2, w, sd, self.cat, self.policy)
            if res2["cost"] + len(lifted) * miss <= one:
                op, items, res = rest, items2, res2
                got = [op[u] for u in res["step_units"][0]]
            else:
                got = [op[u1]]
        if got:
            back = all(self.unit_state[j] == _LIFTED for j in got)
            late = any(self.unit_state[j] == _NOT_PLACED for j in got)
            for j in got:
                self.unit_state[j] = _PLACED
                self.unit_step[j] = k
            self.bag.append(k)
            self.step_units[k] = got
            gt = [self.unit_gtin[j] for j in got]
            if back:
                return DeltaVerdict(k, "returned", d, e, t, got, gt)
            if late:
                return DeltaVerdict(k, "late", d, e, t, got, gt)
            if len(got) == 1:
                lo, hi = self.cat.weights.band_g(self.unit_item[got[0]])
                return DeltaVerdict(k, "ok", d, e, t, got, gt, band_ok=bool(lo <= d <= hi))
            return DeltaVerdict(k, "merged", d, e, t, got, gt)
        # nothing scanned explains it: "unexpected item in the bagging area"
        gt = [self.unit_gtin[j] for j in op]
        ex = [x for x in explain(res, items, gt, w, sd, self.cat, self.policy)
              if x["kind"] == "unscanned"][0]
        ex = dict(ex, kind="unexpected", step=k,
                  expected=[{"gtin": self.unit_gtin[j], "unit": j, "band_g": self._band(j)}
                            for j in op if self.unit_check[j] is None])
        self.bag.append(k)
        self.step_units[k] = []
        no = self._alarm("unexpected", t, ex, step=k)
        return DeltaVerdict(k, "unexpected", d, e, t, alarm=no)

    def tick(self, t_s: float) -> list[int]:
        """Time passes: scans whose delta is overdue become "item not placed" alarms,
        lifted items overdue "not_returned" (each once); skipped units expire
        silently. Returns the new alarm numbers."""
        t = self._clock(t_s)
        new = []
        for j, s in enumerate(self.unit_state):
            if s == _OPEN and t - self._wait_from[j] >= self.bagging.place_timeout_s:
                if self.unit_check[j]:
                    self.unit_state[j] = _SKIPPED
                else:
                    new.append(self._not_placed(j, t))
            elif s == _LIFTED and t - self.unit_t[j] >= self.bagging.return_timeout_s:
                if self.unit_check[j]:
                    self.unit_state[j] = _SKIPPED
                else:
                    new.append(self._not_returned(j, t))
        return new

    def _not_placed(self, j: int, t: float) -> int:
        """Unit j's scan had no delta: explained as per-item mode explains a missing
        unit, over the units scanned while j was open and the deltas they took."""
        self.unit_state[j] = _NOT_PLACED
        t0 = self.unit_t[j]
        rivals = sorted({u for u, s in enumerate(self.unit_state)
                         if s == _PLACED and u != j and len(self._same_step(u)) == 1
                         and self.unit_step[u] >= 0
                         and t0 <= self.steps[self.unit_step[u]].t_s <= t})
        units = [j] + rivals
        items = np.asarray([self.unit_item[u] for u in units], dtype=np.int64)
        gt = [self.unit_gtin[u] for u in units]
        w = np.array([self.steps[self.unit_step[u]].delta_g for u in rivals])
        sd = np.array([self.steps[self.unit_step[u]].sigma_g for u in rivals])
        res = judge_arrays(items, w, sd, self.cat, self.policy)
        ex = [x for x in explain(res, items, gt, w, sd, self.cat, self.policy)
              if x["kind"] == "missing"]
        if ex:
            e = ex[0]
        else:   # pragma: no cover - the unit j has no step in this problem
            e = {"gtin": self.unit_gtin[j], "score": 1.0, "or": []}
        e = dict(e, kind="not_placed", unit=j)
        return self._alarm("not_placed", t, e, unit=j)

    def _same_step(self, u: int) -> list[int]:
        return self.step_units.get(self.unit_step[u], [])

    def _not_returned(self, j: int, t: float) -> int:
        self.unit_state[j] = _NOT_PLACED
        return self._alarm("not_returned", t, {"kind": "not_returned",
                                               "gtin": self.unit_gtin[j], "unit": j,
                                               "score": 1.0}, unit=j)

    def finish(self, t_s: float) -> list[int]:
        """Payment: every open checked unit is not placed (lifted ones not returned);
        returns the new alarm numbers."""
        t = self._clock(t_s)
        new = self.tick(t)
        for j, s in enumerate(self.unit_state):
            if s == _OPEN:
                if self.unit_check[j]:
                    self.unit_state[j] = _SKIPPED
                else:
                    new.append(self._not_placed(j, t))
            elif s == _LIFTED:
                if self.unit_check[j]:
                    self.unit_state[j] = _SKIPPED
                else:
                    new.append(self._not_returned(j, t))
        return new

    def override(self, alarm: int, *, by: str, gtin=None) -> Override:
        """The attendant accepts alarm ``alarm``. For an unexpected delta, ``gtin``
        says which item it is: an open scanned unit of it is placed by that delta, and
        the delta is learned as a confirmed weighing of it (:attr:`learned`)."""
        if not isinstance(by, str) or not by:
            raise PerItemError("override needs who accepted it (by)", code="BAD_POLICY")
        if not 0 <= int(alarm) < len(self.alarms):
            raise PerItemError(f"no alarm {alarm}", code="BAD_STEP")
        a = self.alarms[int(alarm)]
        if a.overridden:
            raise PerItemError(f"alarm {alarm} already accepted by {a.overridden}",
                               code="BAD_STEP")
        a.overridden = by
        learned = None
        g = None
        if a.kind == "unexpected" and gtin is not None:
            i = self.cat.item(str(gtin))
            g = self.cat.gtins[i]
            v = self.steps[a.step]
            cand = [j for j in self._open() if self.unit_item[j] == i] + \
                [j for j, s in enumerate(self.unit_state)
                 if s == _NOT_PLACED and self.unit_item[j] == i]
            if cand:
                j = cand[0]
                self.unit_state[j] = _PLACED
                self.unit_step[j] = a.step
                self.step_units[a.step] = [j]
            learned = (g, v.delta_g, 1, True)
            self.learned.append(learned)
        elif a.kind in ("not_placed", "not_returned") and a.unit is not None:
            self.unit_state[a.unit] = _ACCEPTED
        o = Override(a.no, by, g, learned)
        self.overrides.append(o)
        return o

    @property
    def open_alarms(self) -> list[Alarm]:
        return [a for a in self.alarms if not a.overridden]
