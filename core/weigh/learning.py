"""Weight learning and scale health, kept in the store database.

:class:`WeightBook` learns each SKU's unit weight (mean and standard deviation) from
accepted weighings, starting from the catalogue's ``unit_weight_g`` / ``weight_sd_g``
and dropping outliers, and writes what it learned into a
:class:`~lanecore.ext.lookup.CatalogTable` so the weight verdicts use it.
:class:`ScaleHealth` accumulates each scale's normalised error ``z`` across
transactions in a two-sided CUSUM and raises a warning, then a failure, when the
scale drifts. ``docs/weigh/learning.md`` explains both, with the measured run lengths.

Both live in ``store.db`` (the connection comes from
:func:`lanecore.core.scan.catalog.connect`: WAL, ``synchronous=FULL``), in tables created
here with ``CREATE TABLE IF NOT EXISTS``; every update is one transaction, so a
process that dies mid-update leaves the previous row.

Errors are :class:`LearningError` with a stable ``code``: BAD_GTIN, BAD_WEIGHT,
BAD_QUANTITY, BAD_Z, BAD_SCALE_ID, BAD_ARGUMENT, DB_BUSY, DB_ERROR. Whether a weighing
was learned is not an error: :class:`LearnResult` says so with its own ``code``
(LEARNED, OUTLIER, NOT_LEARNABLE, UNKNOWN_ITEM, MULTI_SKU, NO_WEIGHED_ITEM, and for an
attendant's confirmation beyond its bounds CONFIRM_TOO_FAR, CONFIRM_DAILY_LIMIT).

Attendant confirmations are bounded (``docs/weigh/learning.md``, "Confirmations"):
one moves the learned mean by at most ``confirm_max_step_sd`` (k = 1) standard
deviations, an item takes at most ``confirm_daily_max`` (N = 5) of them per UTC day,
and each one is recorded with who confirmed it in ``weight_confirmations``.
Opening a database by path may also raise the
:class:`~lanecore.core.errors.CatalogError` of :func:`~lanecore.core.scan.catalog.connect`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

from lanecore.core.scan.catalog import Catalog, connect, database_path
from lanecore.core.errors import LanecoreError
from lanecore.ext.barcode import gs1_check_digit
from lanecore.ext.lookup import FLAG_VARIABLE_MEASURE, FLAG_WEIGHT_EXEMPT, CatalogTable

__all__ = [
    "LearningError", "WeightStats", "LearnedWeight", "LearnResult", "WeightBook",
    "HealthState", "ScaleHealth", "cusum_update", "NOT_LEARNED_FLAGS",
    "MAX_WEIGHT_G", "MAX_UNITS", "CONFIRM_MAX_STEP_SD", "CONFIRM_DAILY_MAX",
]

#: Items with any of these flags are never learned: an exempt item's weight is not
#: checked, a variable-measure item has no unit weight.
NOT_LEARNED_FLAGS = FLAG_WEIGHT_EXEMPT | FLAG_VARIABLE_MEASURE
#: A net weight above this (grams) is not a weighing at a shop scale.
MAX_WEIGHT_G = 1_000_000.0
#: Most identical units one observation may stand for.
MAX_UNITS = 100_000
#: k: one attendant confirmation moves an item's learned mean by at most k standard
#: deviations (the item's learned sd, never more than its catalogue sd).
CONFIRM_MAX_STEP_SD = 1.0
#: N: confirmations one item accepts per UTC day.
CONFIRM_DAILY_MAX = 5
MAX_SCALE_ID_LEN = 100


class LearningError(LanecoreError):
    """Bad input to weight learning or scale health, or the database failed."""

    code = "LEARNING_ERROR"


def _db_error(exc: sqlite3.Error, what: str) -> LearningError:
    # Same split as the catalogue: a lock held past the busy timeout is DB_BUSY.
    name = getattr(exc, "sqlite_errorname", "")
    busy = name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return LearningError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


def _bad_argument(name: str, value, rule: str) -> LearningError:
    return LearningError(f"{name}={value!r}: {rule}", code="BAD_ARGUMENT")


def _positive(name: str, value, *, minimum: float = 0.0, inclusive=False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _bad_argument(name, value, "must be a number") from None
    ok = v >= minimum if inclusive else v > minimum
    if not (ok and math.isfinite(v)):
        raise _bad_argument(name, value, f"must be finite and "
                                         f"{'>=' if inclusive else '>'} {minimum}")
    return v


def _gtin14(gtin) -> str:
    """The 14-digit catalogue key of ``gtin`` (GTIN-8/12/13/14 digits or an int),
    check digit verified; else LearningError BAD_GTIN."""
    if isinstance(gtin, str):
        g = gtin.strip()
        key = g.zfill(14) if g.isascii() and g.isdigit() and len(g) in (8, 12, 13, 14) \
            else None
    elif isinstance(gtin, (int, np.integer)) and not isinstance(gtin, bool) \
            and 0 < gtin < 10 ** 14:
        key = "%014d" % gtin
    else:
        key = None
    if key is None:
        raise LearningError(f"{gtin!r} is not a GTIN (8, 12, 13 or 14 digits)",
                            code="BAD_GTIN")
    if gs1_check_digit(key[:13]) != int(key[13]):
        raise LearningError(f"GTIN {key} has a wrong check digit", code="BAD_GTIN")
    return key


def _number(value) -> float:
    """float(value) for an int or float (numpy's too); NaN for anything else, text
    included: a weight is a measurement, not a string to parse."""
    if isinstance(value, (int, float, np.integer, np.floating)) \
            and not isinstance(value, bool):
        return float(value)
    return math.nan


def _weight_g(name: str, value, *, allow_zero=False) -> float:
    v = _number(value)
    if not math.isfinite(v) or v > MAX_WEIGHT_G \
            or (v < 0 if allow_zero else v <= 0):
        raise LearningError(
            f"{name}={value!r}: must be a finite number of grams "
            f"{'>= 0' if allow_zero else '> 0'} and at most {MAX_WEIGHT_G:.0f}",
            code="BAD_WEIGHT")
    return v + 0.0


def _flag(name: str, value) -> bool:
    # A string such as "false" is truthy: only a real bool may say "confirmed".
    if not isinstance(value, (bool, np.bool_)):
        raise _bad_argument(name, value, "must be True or False")
    return bool(value)


def _units(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= value <= MAX_UNITS:
        raise LearningError(f"quantity {value!r}: must be a whole number of units "
                            f"from 1 to {MAX_UNITS}", code="BAD_QUANTITY")
    return int(value)


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------

class _Store:
    """A connection to store.db (a Catalog's, a caller's, or one opened here), one
    table in it (created if absent) and the write transaction."""

    def __init__(self, db, table: str, ddl: str) -> None:
        self._table = table
        self._owned = False
        if isinstance(db, Catalog):
            con = db.connection
            if con is None:
                raise LearningError("the catalogue is closed", code="DB_ERROR")
        elif isinstance(db, sqlite3.Connection):
            con = db
        elif isinstance(db, (str, os.PathLike)):
            con = connect(database_path(db))
            self._owned = True
        else:
            raise TypeError(f"expected a Catalog, sqlite3.Connection or path, "
                            f"got {type(db).__name__}")
        #: The sqlite3 connection (left open by :meth:`close` unless opened here).
        self.connection: sqlite3.Connection | None = con
        try:
            with self._write(f"cannot create table {table}"):
                con.execute(ddl)
            have = {row[1] for row in self._read(f"cannot read table {table}",
                                                 f"PRAGMA table_info({table})")}
        except BaseException:
            self.close()
            raise
        missing = _columns(ddl) - have
        if missing:
            self.close()
            raise LearningError(f"table {table} lacks columns {sorted(missing)}; it is "
                                "not lanecore's", code="DB_ERROR")

    def close(self) -> None:
        """Close the connection if this object opened it (idempotent)."""
        con, self.connection = self.connection, None
        if con is not None and self._owned:
            con.close()

    def _con(self) -> sqlite3.Connection:
        if self.connection is None:
            raise LearningError(f"the {self._table} store is closed", code="DB_ERROR")
        return self.connection

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE (so the read-modify-write of a row
        cannot interleave with another process's), or a savepoint inside a caller's
        open transaction. Anything raised inside rolls it back."""
        con = self._con()
        nested = con.in_transaction
        try:
            con.execute("SAVEPOINT lanecore_learning" if nested else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            # An interrupted BEGIN can leave the transaction open.
            if not nested and con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            raise _db_error(exc, what) from exc
        try:
            yield con
            con.execute("RELEASE lanecore_learning" if nested else "COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if nested:
                    con.execute("ROLLBACK TO lanecore_learning")
                    con.execute("RELEASE lanecore_learning")
                elif con.in_transaction:
                    con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _db_error(exc, what) from exc
            raise

    def _read(self, what: str, sql: str, params=()) -> list:
        try:
            return self._con().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, what) from exc


def _columns(ddl: str) -> set[str]:
    body = ddl[ddl.index("(") + 1:ddl.rindex(")")]
    return {line.split()[0] for line in body.split(",\n") if line.split()}


# --------------------------------------------------------------------------------------
# Weight learning
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightStats:
    """Running weighted mean and variance of one SKU's unit weight (grams).

    An observation is ``x`` grams per unit, the mean of ``q`` identical units
    weighed together, with weight ``w`` (= q, times the attendant factor when
    confirmed). ``n`` = sum of w (the effective count), ``m2`` = sum of
    w·(x − mean)² (West's weighted Welford update, stable for long runs).
    ``v1`` = sum of w/q and ``v2`` = sum of w²/q give the unbiased variance
    ``m2 / (v1 − v2/n)``: with q = 1 this is numpy's ``cov(x, aweights=w)``, with
    every w = q it divides by (observations − 1), because the mean of q units
    varies q times less than one unit. ``v1 = v2 = 0`` (a prior without an sd)
    adds weight to the mean but no evidence about the spread.
    """

    n: float = 0.0
    mean_g: float = 0.0
    m2: float = 0.0
    v1: float = 0.0
    v2: float = 0.0

    @classmethod
    def prior(cls, mean_g: float, sd_g: float | None, n: float) -> WeightStats:
        """``n`` pseudo-observations of one unit each, mean ``mean_g``, standard
        deviation ``sd_g`` (None: mean only)."""
        if sd_g is None:
            return cls(n, mean_g)
        return cls(n, mean_g, sd_g * sd_g * (n - 1.0), n, n)

    def add(self, x_g: float, w: float = 1.0, q: int = 1) -> WeightStats:
        """These statistics with one more observation (see the class docstring)."""
        n = self.n + w
        delta = x_g - self.mean_g
        mean = self.mean_g + delta * (w / n)
        return WeightStats(n, mean, self.m2 + w * delta * (x_g - mean),
                           self.v1 + w / q, self.v2 + w * w / q)

    @property
    def variance_g2(self) -> float | None:
        """Unbiased variance of one unit's weight (g²), or None with no evidence of
        the spread yet (fewer than two observations' worth)."""
        v = float(_variance_g2(self.n, self.m2, self.v1, self.v2))
        return None if math.isnan(v) else v


def _variance_g2(n, m2, v1, v2):
    """:attr:`WeightStats.variance_g2` for numbers or numpy arrays, NaN where
    unknown (the degrees of freedom v1 - v2/n are zero up to rounding)."""
    n, v1, v2 = (np.asarray(x, dtype=np.float64) for x in (n, v1, v2))
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = v1 - np.where(n > 0, v2 / n, 0.0)
        return np.where(dof > 1e-9 * np.maximum(v1, 1.0), np.maximum(m2, 0.0) / dof,
                        np.nan)


class LearnedWeight(NamedTuple):
    """A SKU's learned unit weight: ``mean_g`` and ``sd_g`` in grams (``sd_g`` has
    the floor applied; None while the spread is unknown) and the effective count
    ``n`` (prior pseudo-observations included)."""

    mean_g: float
    sd_g: float | None
    n: float


@dataclass(frozen=True)
class LearnResult:
    """What one learning call did.

    ``code``: LEARNED; OUTLIER (rejected and counted, not learned); NOT_LEARNABLE
    (a weight-exempt or variable-measure item); UNKNOWN_ITEM (not in the
    catalogue); MULTI_SKU / NO_WEIGHED_ITEM (an exit whose weight is not one SKU's).
    ``observed_g`` is the per-unit weight seen, ``units`` how many units it is the
    mean of, ``weight`` its learning weight, ``z`` its distance from the learned
    mean before the update in standard errors (None when the spread was unknown).
    ``mean_g``, ``sd_g``, ``n`` are the SKU's statistics afterwards. ``restarted``:
    the catalogue weight had changed since the SKU was last learned, so learning
    began again from the new catalogue prior. ``confirmation``: for a confirmed
    weighing, its record (``confirmation_id``, ``confirmed_by``, ``at``, ``day``,
    ``mean_before_g``, ``mean_after_g``, ``max_step_g``, ``n_today``,
    ``max_per_day``); for CONFIRM_TOO_FAR / CONFIRM_DAILY_LIMIT the bounds it met
    (nothing changed, nothing recorded).
    """

    code: str
    message: str
    gtin: str | None = None
    observed_g: float | None = None
    units: int | None = None
    weight: float | None = None
    z: float | None = None
    mean_g: float | None = None
    sd_g: float | None = None
    n: float | None = None
    restarted: bool = False
    confirmation: dict | None = None

    @property
    def learned(self) -> bool:
        return self.code == "LEARNED"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["learned"] = self.learned
        return out


def _exit_lines(lines) -> dict[str, int]:
    """Catalogue key -> total quantity of an exit's lines: (gtin, qty) pairs,
    mappings with ``gtin`` and ``qty`` (or ``quantity``), or objects with those
    attributes such as ``lanecore.core.weigh.verify.OrderLine``. A ``lookup_key`` (the
    catalogue key of an in-store code, whose scanned GTIN carries a price) is used
    in place of ``gtin``."""
    total: dict[str, int] = {}
    for line in lines:
        if isinstance(line, Mapping):
            gtin = line.get("lookup_key", line.get("gtin"))
            qty = line.get("qty", line.get("quantity"))
        elif isinstance(line, (tuple, list)) and len(line) == 2:
            gtin, qty = line
        else:
            gtin = getattr(line, "lookup_key", getattr(line, "gtin", None))
            qty = getattr(line, "qty", getattr(line, "quantity", None))
        key = _gtin14(gtin)
        total[key] = total.get(key, 0) + _units(qty)
    return total


class WeightBook:
    """Learned unit weights per SKU, in table ``weight_stats`` of the store database.

    ``db``: a :class:`~lanecore.core.scan.catalog.Catalog`, a connection from
    :func:`~lanecore.core.scan.catalog.connect` (left open by :meth:`close`), or a data
    directory / database file (opened here, closed by :meth:`close`).

    Parameters (defaults and reasons in ``docs/weigh/learning.md``):

    * ``min_n`` (5): effective count from which outliers are rejected and the
      learned weight is used by :meth:`apply_to_table`.
    * ``reject_z`` (4): an observation further than this many standard errors from
      the mean is an outlier (unless confirmed).
    * ``confirmed_weight`` (3): how many ordinary weighings an attendant-confirmed
      one counts as.
    * ``prior_n`` (3): pseudo-observations the catalogue weight counts as.
    * ``sd_floor_g`` (0.5 g), ``sd_floor_rel`` (0.01): the standard deviation used
      for rejection and published is at least ``max(sd_floor_g, sd_floor_rel·mean)``.
    * ``confirm_max_step_sd`` (k = 1): a confirmed weighing that would move the
      learned mean by more than k·σ is refused (CONFIRM_TOO_FAR); σ is the item's
      published sd (its floor while unknown), never more than the catalogue's
      ``max(weight_sd_g, floor)``, so confirmations cannot widen their own bound.
    * ``confirm_daily_max`` (N = 5): confirmations one item accepts per UTC day
      (CONFIRM_DAILY_LIMIT past them). None for either: unbounded.

    Every confirmation learned is recorded in ``weight_confirmations`` with who
    confirmed it (``confirmed_by``): :meth:`confirmations` lists them.
    """

    _DDL = """CREATE TABLE IF NOT EXISTS weight_stats (
        gtin          TEXT PRIMARY KEY,
        n             REAL NOT NULL,
        mean_g        REAL NOT NULL,
        m2            REAL NOT NULL,
        v1            REAL NOT NULL,
        v2            REAL NOT NULL,
        n_obs         INTEGER NOT NULL,
        n_confirmed   INTEGER NOT NULL,
        n_rejected    INTEGER NOT NULL,
        prior_mean_g  REAL,
        prior_sd_g    REAL,
        updated_at    REAL NOT NULL
    )"""
    _COLUMNS = ("gtin", "n", "mean_g", "m2", "v1", "v2", "n_obs", "n_confirmed",
                "n_rejected", "prior_mean_g", "prior_sd_g", "updated_at")
    _UPSERT = (f"INSERT OR REPLACE INTO weight_stats ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_COLUMNS))})")
    _CONFIRM_DDL = """CREATE TABLE IF NOT EXISTS weight_confirmations (
        confirmation_id INTEGER PRIMARY KEY,
        gtin            TEXT NOT NULL,
        at              REAL NOT NULL,
        day             TEXT NOT NULL,
        confirmed_by    TEXT,
        observed_g      REAL NOT NULL,
        units           INTEGER NOT NULL,
        mean_before_g   REAL,
        mean_after_g    REAL NOT NULL,
        max_step_g      REAL
    )"""
    _CONFIRM_COLUMNS = ("confirmation_id", "gtin", "at", "day", "confirmed_by",
                        "observed_g", "units", "mean_before_g", "mean_after_g",
                        "max_step_g")
    # Learned rows still valid for the catalogue as it is now: the item is listed,
    # learnable, and its catalogue weight is the one learning started from (`IS`
    # compares NULLs as equal).
    _CURRENT = ("FROM weight_stats s JOIN items i ON i.gtin = s.gtin "
                f"WHERE (i.flags & {NOT_LEARNED_FLAGS}) = 0 "
                "AND i.unit_weight_g IS s.prior_mean_g AND i.weight_sd_g IS s.prior_sd_g")

    def __init__(self, db, *, min_n: float = 5, reject_z: float = 4.0,
                 confirmed_weight: float = 3.0, prior_n: float = 3.0,
                 sd_floor_g: float = 0.5, sd_floor_rel: float = 0.01,
                 confirm_max_step_sd: float | None = CONFIRM_MAX_STEP_SD,
                 confirm_daily_max: int | None = CONFIRM_DAILY_MAX):
        self.min_n = _positive("min_n", min_n)
        self.reject_z = _positive("reject_z", reject_z)
        self.confirmed_weight = _positive("confirmed_weight", confirmed_weight)
        self.prior_n = _positive("prior_n", prior_n, minimum=1.0, inclusive=True)
        self.sd_floor_g = _positive("sd_floor_g", sd_floor_g, inclusive=True)
        self.sd_floor_rel = _positive("sd_floor_rel", sd_floor_rel, inclusive=True)
        self.confirm_max_step_sd = None if confirm_max_step_sd is None else \
            _positive("confirm_max_step_sd", confirm_max_step_sd)
        if confirm_daily_max is not None and (
                isinstance(confirm_daily_max, bool)
                or not isinstance(confirm_daily_max, (int, np.integer))
                or confirm_daily_max < 1):
            raise _bad_argument("confirm_daily_max", confirm_daily_max,
                                "must be a whole number >= 1 (or None)")
        self.confirm_daily_max = None if confirm_daily_max is None else \
            int(confirm_daily_max)
        self._store = _Store(db, "weight_stats", self._DDL)
        try:
            with self._store._write("cannot create table weight_confirmations") as con:
                con.execute(self._CONFIRM_DDL)
                con.execute("CREATE INDEX IF NOT EXISTS weight_confirmations_day "
                            "ON weight_confirmations (gtin, day)")
        except BaseException:
            self._store.close()
            raise

    @property
    def connection(self) -> sqlite3.Connection | None:
        return self._store.connection

    def close(self) -> None:
        """Close the connection if this book opened it (idempotent)."""
        self._store.close()

    def __enter__(self) -> WeightBook:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # statistics -------------------------------------------------------------------

    def _floor_g(self, mean_g):
        return np.maximum(self.sd_floor_g, self.sd_floor_rel * np.abs(mean_g))

    def _published(self, s: WeightStats) -> LearnedWeight:
        var = s.variance_g2
        sd = None if var is None else float(max(math.sqrt(var), self._floor_g(s.mean_g)))
        return LearnedWeight(s.mean_g, sd, s.n)

    def stats(self, gtin) -> LearnedWeight | None:
        """The learned ``(mean_g, sd_g, n)`` of ``gtin``, or None when nothing is
        learned for it, or its catalogue weight changed since (learning restarts at
        its next weighing), or it is now exempt/variable-measure or delisted.
        Raises LearningError BAD_GTIN, DB_ERROR."""
        key = _gtin14(gtin)
        rows = self._store._read("cannot read weight_stats",
                                 "SELECT s.n, s.mean_g, s.m2, s.v1, s.v2 "
                                 + self._CURRENT + " AND s.gtin = ?", (key,))
        return self._published(WeightStats(*rows[0])) if rows else None

    def record(self, gtin) -> dict | None:
        """The stored ``weight_stats`` row of ``gtin`` as a dict (counts of
        observations, confirmed and rejected ones, the catalogue prior, ...), plus
        ``sd_g`` (floored) and ``current`` (False when :meth:`stats` ignores it), or
        None. Raises LearningError BAD_GTIN, DB_ERROR."""
        key = _gtin14(gtin)
        rows = self._store._read(
            "cannot read weight_stats",
            f"SELECT {', '.join('s.' + c for c in self._COLUMNS)}, "
            f"EXISTS (SELECT 1 {self._CURRENT} AND s.gtin = ?) "
            "FROM weight_stats s WHERE s.gtin = ?", (key, key))
        if not rows:
            return None
        out = dict(zip(self._COLUMNS, rows[0]))
        out["current"] = bool(rows[0][-1])
        out["sd_g"] = self._published(WeightStats(*rows[0][1:6])).sd_g
        return out

    def confirmations(self, gtin=None, *, day: str | None = None) -> list[dict]:
        """The recorded confirmations (oldest first), of ``gtin`` and of ``day``
        (``YYYY-MM-DD``, UTC) when given: each ``{confirmation_id, gtin, at, day,
        confirmed_by, observed_g, units, mean_before_g, mean_after_g, max_step_g}``.
        Raises LearningError BAD_GTIN, DB_ERROR."""
        where, params = [], []
        if gtin is not None:
            where.append("gtin = ?")
            params.append(_gtin14(gtin))
        if day is not None:
            where.append("day = ?")
            params.append(str(day))
        rows = self._store._read(
            "cannot read weight_confirmations",
            f"SELECT {', '.join(self._CONFIRM_COLUMNS)} FROM weight_confirmations"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY confirmation_id", params)
        return [dict(zip(self._CONFIRM_COLUMNS, row)) for row in rows]

    def forget(self, gtin) -> bool:
        """Drop what was learned for ``gtin`` (the next weighing starts again from the
        catalogue); True if there was something. Raises BAD_GTIN, DB_ERROR."""
        key = _gtin14(gtin)
        with self._store._write("cannot forget a learned weight") as con:
            return con.execute("DELETE FROM weight_stats WHERE gtin = ?",
                               (key,)).rowcount > 0

    # learning ---------------------------------------------------------------------

    def learn(self, gtin, measured_g: float, *, units: int = 1,
              confirmed: bool = False, confirmed_by: str | None = None) -> LearnResult:
        """Learn from one accepted weighing of ``units`` identical units of ``gtin``
        weighing ``measured_g`` grams together (net of any tare): observes
        ``measured_g / units`` with weight ``units`` (times ``confirmed_weight``
        when an attendant confirmed it). One transaction. A confirmed weighing is
        bounded (CONFIRM_TOO_FAR, CONFIRM_DAILY_LIMIT: see the class) and recorded
        with ``confirmed_by``, who confirmed it.

        Raises LearningError BAD_GTIN, BAD_WEIGHT (not finite, <= 0, over
        MAX_WEIGHT_G), BAD_QUANTITY, DB_BUSY, DB_ERROR. An exempt, variable-measure,
        unknown item or an outlier is not an error: see the result's ``code``.
        """
        return self.learn_many([(gtin, measured_g, units, confirmed)],
                               confirmed_by=confirmed_by)[0]

    def learn_many(self, observations: Iterable, *,
                   confirmed_by: str | None = None) -> list[LearnResult]:
        """:meth:`learn` for each ``(gtin, measured_g[, units[, confirmed]])``, in
        order, in one transaction (all or nothing). Every observation is checked
        before anything is written. ``confirmed_by``: who confirmed the confirmed
        ones."""
        checked = []
        for obs in observations:
            if not isinstance(obs, (tuple, list)) or not 2 <= len(obs) <= 4:
                raise _bad_argument("observation", obs,
                                    "must be (gtin, measured_g[, units[, confirmed]])")
            units = obs[2] if len(obs) > 2 else 1
            confirmed = obs[3] if len(obs) > 3 else False
            checked.append((_gtin14(obs[0]), _weight_g("measured_g", obs[1]),
                            _units(units), _flag("confirmed", confirmed)))
        if not checked:
            return []
        now = time.time()
        with self._store._write("cannot learn a weight") as con:
            return [self._learn(con, *obs, now, confirmed_by) for obs in checked]

    def learn_exit(self, lines, measured_g: float, tare_g: float = 0.0, *,
                   confirmed: bool = False, confirmed_by: str | None = None
                   ) -> LearnResult:
        """Learn from an ACCEPTED exit weighing, when it can be pinned on one SKU.

        ``lines``: the paid basket, as ``(gtin, qty)`` pairs, mappings with ``gtin``
        and ``qty`` (or ``quantity``) or objects with those attributes (e.g. the
        ``lines`` of a ``lanecore.core.weigh.verify.Order``, whose ``lookup_key`` is used);
        lines of the same SKU are added up. ``measured_g`` is the settled gross weight and
        ``tare_g`` what the scale carried besides the goods (a tray, a bag).
        Weight-exempt lines are left out. When the rest is a single SKU of total
        quantity q, ``(measured_g - tare_g) / q`` is learned with weight q (see
        :meth:`learn`). Otherwise nothing is learned: a weight shared by several
        SKUs cannot be split honestly (MULTI_SKU); an exit of exempt items only
        (NO_WEIGHED_ITEM); a line not in the catalogue (UNKNOWN_ITEM) might have
        been anything.

        Raises LearningError BAD_GTIN, BAD_QUANTITY, BAD_WEIGHT (also when the net
        weight is not > 0), DB_BUSY, DB_ERROR.
        """
        measured = _weight_g("measured_g", measured_g)
        tare = _weight_g("tare_g", tare_g, allow_zero=True)
        confirmed = _flag("confirmed", confirmed)
        basket = _exit_lines(lines)
        net = measured - tare
        if basket and not net > 0:
            raise LearningError(f"net weight {measured} - {tare} = {net} g is not > 0",
                                code="BAD_WEIGHT")
        if not basket:
            return LearnResult("NO_WEIGHED_ITEM", "the exit has no lines")
        now = time.time()
        with self._store._write("cannot learn a weight") as con:
            keys = list(basket)
            flags = dict(con.execute(
                f"SELECT gtin, flags FROM items WHERE gtin IN "
                f"({', '.join('?' * len(keys))})", keys).fetchall())
            unknown = [k for k in keys if k not in flags]
            if unknown:
                return LearnResult("UNKNOWN_ITEM", f"GTIN {unknown[0]} is not in the "
                                   "catalogue; its weight is unaccounted for",
                                   gtin=unknown[0])
            weighed = [k for k in keys if not flags[k] & FLAG_WEIGHT_EXEMPT]
            if not weighed:
                return LearnResult("NO_WEIGHED_ITEM",
                                   "every line is weight-exempt; nothing to learn")
            if len(weighed) > 1:
                return LearnResult(
                    "MULTI_SKU", f"the weight belongs to {len(weighed)} SKUs and "
                    "cannot be split between them honestly")
            key = weighed[0]
            return self._learn(con, key, net, basket[key], confirmed, now, confirmed_by)

    def _confirm_bounds(self, con: sqlite3.Connection, key: str, s: WeightStats,
                        cat_mean, cat_sd, now: float) -> tuple[str, int, float | None]:
        """(UTC day, confirmations of ``key`` that day, the most one confirmation may
        move the mean in grams — None: unbounded) for a confirmation now."""
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        n_today = con.execute("SELECT COUNT(*) FROM weight_confirmations WHERE gtin = ? "
                              "AND day = ?", (key, day)).fetchone()[0]
        if self.confirm_max_step_sd is None or s.n <= 0:
            return day, n_today, None          # no distribution yet: nothing to bound
        sd = self._published(s).sd_g
        if sd is None:
            sd = float(self._floor_g(s.mean_g))
        if cat_mean:        # never wider than the catalogue's: no self-widening
            sd = min(sd, max(float(cat_sd or 0.0), float(self._floor_g(cat_mean))))
        return day, n_today, self.confirm_max_step_sd * sd

    def _learn(self, con: sqlite3.Connection, key: str, measured: float, units: int,
               confirmed: bool, now: float, confirmed_by: str | None = None
               ) -> LearnResult:
        item = con.execute("SELECT unit_weight_g, weight_sd_g, flags FROM items "
                           "WHERE gtin = ?", (key,)).fetchone()
        if item is None:
            return LearnResult("UNKNOWN_ITEM", f"GTIN {key} is not in the catalogue",
                               gtin=key)
        cat_mean, cat_sd, flags = item
        if flags & NOT_LEARNED_FLAGS:
            kind = "weight-exempt" if flags & FLAG_WEIGHT_EXEMPT else "variable-measure"
            return LearnResult("NOT_LEARNABLE", f"GTIN {key} is a {kind} item; its "
                               "weight is never learned", gtin=key)
        row = con.execute(f"SELECT {', '.join(self._COLUMNS[1:11])} FROM weight_stats "
                          "WHERE gtin = ?", (key,)).fetchone()
        restarted = row is not None and (row[8], row[9]) != (cat_mean, cat_sd)
        if row is None or restarted:
            # Cold start (or the catalogue weight changed: a new pack, a fixed
            # typo): the catalogue's weight as prior_n pseudo-observations. A
            # missing or zero catalogue weight is no evidence: start empty.
            s = (WeightStats.prior(cat_mean, cat_sd, self.prior_n)
                 if cat_mean else WeightStats())
            n_obs = n_confirmed = n_rejected = 0
        else:
            s = WeightStats(*row[:5])
            n_obs, n_confirmed, n_rejected = row[5:8]

        x = measured / units
        w = units * (self.confirmed_weight if confirmed else 1.0)
        confirmation = None
        if confirmed:
            day, n_today, max_step = self._confirm_bounds(con, key, s, cat_mean, cat_sd,
                                                          now)
            confirmation = {"confirmed_by": confirmed_by, "day": day,
                            "mean_before_g": s.mean_g if s.n > 0 else None,
                            "max_step_g": max_step, "n_today": n_today,
                            "max_per_day": self.confirm_daily_max}
            step = abs(s.add(x, w, units).mean_g - s.mean_g) if s.n > 0 else 0.0
            refused = None
            if self.confirm_daily_max is not None and n_today >= self.confirm_daily_max:
                refused = ("CONFIRM_DAILY_LIMIT",
                           f"GTIN {key} had its {self.confirm_daily_max} confirmations "
                           f"today ({day}, UTC); it takes more tomorrow")
            elif max_step is not None and step > max_step * (1 + 1e-9):
                refused = ("CONFIRM_TOO_FAR",
                           f"{x:.6g} g per unit would move the learned {s.mean_g:.6g} g "
                           f"by {step:.3g} g; one confirmation moves it at most "
                           f"{max_step:.3g} g ({self.confirm_max_step_sd:g} sd)")
            if refused is not None:
                mean_g, sd_g, n = self._published(s) if s.n > 0 else (None, None, s.n)
                return LearnResult(refused[0], refused[1], gtin=key, observed_g=x,
                                   units=units, weight=w, mean_g=mean_g, sd_g=sd_g, n=n,
                                   restarted=restarted, confirmation=confirmation)
        var = s.variance_g2
        z = None
        if var is not None and s.n > 0:
            # The mean of q units varies sqrt(q) less; the floor (scale resolution,
            # pack-to-pack shifts) does not average away.
            se = max(math.sqrt(var / units), float(self._floor_g(s.mean_g)))
            z = abs(x - s.mean_g) / se
        if not confirmed and z is not None and s.n >= self.min_n and z > self.reject_z:
            n_rejected += 1
            code, message = "OUTLIER", (f"{x:.6g} g per unit is {z:.1f} sd from the "
                                        f"learned {s.mean_g:.6g} g; not learned")
        else:
            s = s.add(x, w, units)
            n_obs += 1
            n_confirmed += confirmed
            code, message = "LEARNED", f"learned {x:.6g} g per unit (weight {w:g})"
        con.execute(self._UPSERT, (key, s.n, s.mean_g, s.m2, s.v1, s.v2, n_obs,
                                   n_confirmed, n_rejected, cat_mean, cat_sd, now))
        if confirmation is not None:
            cur = con.execute(
                "INSERT INTO weight_confirmations (gtin, at, day, confirmed_by, "
                "observed_g, units, mean_before_g, mean_after_g, max_step_g) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, now, confirmation["day"], confirmed_by, x, units,
                 confirmation["mean_before_g"], s.mean_g, confirmation["max_step_g"]))
            confirmation.update(confirmation_id=cur.lastrowid, at=now,
                                mean_after_g=s.mean_g,
                                n_today=confirmation["n_today"] + 1)
        mean_g, sd_g, n = self._published(s)
        return LearnResult(code, message, gtin=key, observed_g=x, units=units, weight=w,
                           z=z, mean_g=mean_g, sd_g=sd_g, n=n, restarted=restarted,
                           confirmation=confirmation)

    # publishing ------------------------------------------------------------------

    def apply_to_table(self, table: CatalogTable) -> int:
        """Write the learned mean and sd of every SKU with ``n >= min_n`` into
        ``table.weight_mean_g`` / ``table.weight_sd_g`` in place, so the verdicts
        use learned weights; return how many rows changed. Only rows
        :meth:`stats` would report are used (a changed catalogue weight waits for
        new learning); an sd still unknown leaves the table's sd as it is; rows
        flagged exempt or variable-measure in ``table`` are not touched. Raises
        LearningError DB_ERROR."""
        # One flat float64 array, as catalog.load_table reads items: GTINs < 10**14
        # are exact in float64.
        try:
            cur = self._store._con().execute(
                "SELECT CAST(s.gtin AS INTEGER), s.n, s.mean_g, s.m2, s.v1, s.v2 "
                + self._CURRENT + " AND s.n >= ?", (self.min_n,))
            a = np.fromiter(itertools.chain.from_iterable(cur),
                            dtype=np.float64).reshape(-1, 6)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read weight_stats") from exc
        if not len(a):
            return 0
        idx = table.lookup_many(a[:, 0].astype(np.uint64))
        mean = a[:, 2]
        sd = np.maximum(np.sqrt(_variance_g2(a[:, 1], a[:, 3], a[:, 4], a[:, 5])),
                        self._floor_g(mean))  # NaN (unknown) stays NaN
        ok = idx >= 0
        ok[ok] = (table.flags[idx[ok]] & NOT_LEARNED_FLAGS) == 0
        idx, mean, sd = idx[ok], mean[ok], sd[ok]
        sd = np.where(np.isnan(sd), table.weight_sd_g[idx], sd)
        old_mean, old_sd = table.weight_mean_g[idx], table.weight_sd_g[idx]
        changed = ~(_same(old_mean, mean) & _same(old_sd, sd))
        table.weight_mean_g[idx] = mean
        table.weight_sd_g[idx] = sd
        return int(np.count_nonzero(changed))


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


# --------------------------------------------------------------------------------------
# Scale health
# --------------------------------------------------------------------------------------

def cusum_update(high: float, low: float, z: float, k: float = 0.5
                 ) -> tuple[float, float]:
    """One step of the two-sided tabular CUSUM on a standard score ``z`` with slack
    ``k``: ``(max(0, high + z - k), max(0, low - z - k))``."""
    return max(0.0, high + z - k), max(0.0, low - z - k)


@dataclass(frozen=True)
class HealthState:
    """A scale's health after an observation.

    ``state``: "ok", "warning" (a CUSUM side at or above ``h_warn``; clears by
    itself when the drift goes) or "failure" (a side reached ``h_fail``; stays until
    :meth:`ScaleHealth.reset`, i.e. a recalibration). ``direction``: "high" (reads
    heavy), "low" or None when ok. ``cusum_high`` / ``cusum_low``: the two CUSUM
    sums; ``ewma``: exponentially weighted mean of z, for display; ``n``:
    observations since the last reset; ``changed``: the state differs from before
    this observation. Times are Unix seconds (None: never).
    """

    scale_id: str
    state: str = "ok"
    direction: str | None = None
    cusum_high: float = 0.0
    cusum_low: float = 0.0
    ewma: float = 0.0
    n: int = 0
    changed: bool = False
    failed_at: float | None = None
    reset_at: float | None = None
    updated_at: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class ScaleHealth:
    """Drift alarms per scale, in table ``scale_health`` of the store database.

    Feed :meth:`observe` the verdict's ``z = (measured - expected) / sd`` of each
    trusted weighing (an accepted exit, or one an attendant resolved, with the
    corrected basket). A two-sided CUSUM with slack ``k`` accumulates it; a side at
    ``h_warn`` is a warning, at ``h_fail`` a failure (latched until :meth:`reset`).
    ``clip_z`` bounds one observation's push (a single wild basket must not fail a
    scale on its own); ``ewma_lambda`` smooths z for display. ``db`` as for
    :class:`WeightBook`. Defaults and the run lengths they give are in
    ``docs/weigh/learning.md``.
    """

    _DDL = """CREATE TABLE IF NOT EXISTS scale_health (
        scale_id    TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        direction   TEXT,
        cusum_high  REAL NOT NULL,
        cusum_low   REAL NOT NULL,
        ewma        REAL NOT NULL,
        n           INTEGER NOT NULL,
        failed_at   REAL,
        reset_at    REAL,
        updated_at  REAL NOT NULL
    )"""
    _COLUMNS = ("scale_id", "state", "direction", "cusum_high", "cusum_low", "ewma", "n",
                "failed_at", "reset_at", "updated_at")
    _UPSERT = (f"INSERT OR REPLACE INTO scale_health ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_COLUMNS))})")

    def __init__(self, db, *, k: float = 0.5, h_warn: float = 4.0, h_fail: float = 8.0,
                 clip_z: float = 3.0, ewma_lambda: float = 0.1):
        self.k = _positive("k", k, inclusive=True)
        self.h_warn = _positive("h_warn", h_warn)
        self.h_fail = _positive("h_fail", h_fail)
        if self.h_fail < self.h_warn:
            raise _bad_argument("h_fail", h_fail, f"must be >= h_warn ({h_warn})")
        self.clip_z = _positive("clip_z", clip_z)
        self.ewma_lambda = _positive("ewma_lambda", ewma_lambda)
        if self.ewma_lambda > 1:
            raise _bad_argument("ewma_lambda", ewma_lambda, "must be in (0, 1]")
        self._store = _Store(db, "scale_health", self._DDL)

    @property
    def connection(self) -> sqlite3.Connection | None:
        return self._store.connection

    def close(self) -> None:
        """Close the connection if this object opened it (idempotent)."""
        self._store.close()

    def __enter__(self) -> ScaleHealth:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _scale_id(scale_id) -> str:
        if not isinstance(scale_id, str) or not 1 <= len(scale_id) <= MAX_SCALE_ID_LEN \
                or not scale_id.isprintable() or scale_id != scale_id.strip():
            raise LearningError(f"scale id {scale_id!r}: must be 1-{MAX_SCALE_ID_LEN} "
                                "printable characters without surrounding spaces",
                                code="BAD_SCALE_ID")
        return scale_id

    @staticmethod
    def _z(z) -> float:
        v = _number(z)
        if not math.isfinite(v):
            raise LearningError(f"z={z!r}: must be a finite number (a NaN or infinite "
                                "score is a fault upstream)", code="BAD_Z")
        return v

    def _load(self, con: sqlite3.Connection, scale_id: str) -> HealthState:
        row = con.execute(f"SELECT {', '.join(self._COLUMNS)} FROM scale_health "
                          "WHERE scale_id = ?", (scale_id,)).fetchone()
        return HealthState(scale_id) if row is None else \
            HealthState(*row[:7], False, *row[7:])

    def _save(self, con: sqlite3.Connection, h: HealthState) -> None:
        con.execute(self._UPSERT, (h.scale_id, h.state, h.direction, h.cusum_high,
                                   h.cusum_low, h.ewma, h.n, h.failed_at, h.reset_at,
                                   h.updated_at))

    def _step(self, h: HealthState, z: float, now: float) -> HealthState:
        zc = min(max(z, -self.clip_z), self.clip_z)
        high, low = cusum_update(h.cusum_high, h.cusum_low, zc, self.k)
        ewma = h.ewma + self.ewma_lambda * (zc - h.ewma)
        failed_at = h.failed_at
        if h.state == "failure":
            state, direction = "failure", h.direction
        else:
            peak = max(high, low)
            direction = "high" if high >= low else "low"
            if peak >= self.h_fail:
                state, failed_at = "failure", now
            elif peak >= self.h_warn:
                state = "warning"
            else:
                state, direction = "ok", None
        return HealthState(h.scale_id, state, direction, high, low, ewma, h.n + 1,
                           state != h.state, failed_at, h.reset_at, now)

    def observe(self, scale_id: str, z: float) -> HealthState:
        """Add one transaction's normalised error ``z`` for ``scale_id`` (e.g.
        "lane-3/exit"); return the new state. One transaction. Raises LearningError
        BAD_SCALE_ID, BAD_Z (NaN, inf, not a number), DB_BUSY, DB_ERROR."""
        return self.observe_many(scale_id, [z])[-1]

    def observe_many(self, scale_id: str, zs: Iterable[float]) -> list[HealthState]:
        """:meth:`observe` for each of ``zs`` in order, in one transaction (all or
        nothing); the state after each. Every z is checked first."""
        sid = self._scale_id(scale_id)
        values = [self._z(z) for z in zs]
        if not values:
            return []
        now = time.time()
        with self._store._write("cannot update scale health") as con:
            h = self._load(con, sid)
            out = []
            for z in values:
                h = self._step(h, z, now)
                out.append(h)
            self._save(con, h)
        return out

    def state(self, scale_id: str) -> HealthState:
        """The stored state of ``scale_id`` ("ok", n = 0 if never observed)."""
        sid = self._scale_id(scale_id)
        try:
            return self._load(self._store._con(), sid)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read scale health") from exc

    def scales(self) -> list[HealthState]:
        """Every scale's stored state, by id."""
        rows = self._store._read("cannot read scale health",
                                 f"SELECT {', '.join(self._COLUMNS)} FROM scale_health "
                                 "ORDER BY scale_id")
        return [HealthState(*r[:7], False, *r[7:]) for r in rows]

    def reset(self, scale_id: str) -> HealthState:
        """Clear ``scale_id``'s sums and state after a recalibration (``n`` restarts
        at 0; ``failed_at`` is kept as history, ``reset_at`` set)."""
        sid = self._scale_id(scale_id)
        now = time.time()
        with self._store._write("cannot reset scale health") as con:
            old = self._load(con, sid)
            h = replace(HealthState(sid), changed=old.state != "ok",
                        failed_at=old.failed_at, reset_at=now, updated_at=now)
            self._save(con, h)
        return h
