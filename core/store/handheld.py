"""The store's fleet of handhelds (seed 000): which are in their cradles, who holds
which, how charged each is, which basket each carries, and what a handheld must do
when it crosses the edge of the shopping area.

**Fleet.** :meth:`Handhelds.register` enrols a device; :meth:`Handhelds.take` hands a
free, charged one to a shopper (the caller's choice, or the fullest battery when the
caller names none); :meth:`Handhelds.give_back` puts it back in its cradle.
:meth:`Handhelds.report` is the device's heartbeat: battery level (percent) and, when
it knows it, the zone it is in. A handheld below :data:`MIN_TAKE_BATTERY_PCT` is not
handed out (LOW_BATTERY) — a handheld that dies mid-shop strands a basket.

**Zones and the geofence.** A handheld is always in one of :data:`ZONES`:
``shopping`` (the aisles, where the cradles are), ``checkout`` (kiosks and
self-pay lanes B, where an unpaid basket may still be paid), ``exit`` (past the point
of payment: lane A's weigh-check and the EAS gates) and ``outside``. Moving into
``outside``, or into ``exit`` with its basket not paid, is *leaving the shopping
area*: :meth:`Handhelds.zone_event` answers ``{"say": GOODBYE, "wipe": basket_id}``
and clears the device's basket binding. ``wipe`` is the unpaid basket the caller must
wipe in the service (cancel it and erase the device's copy); it is None when the
basket was paid (the order lives on in the store database) or none was bound. A paid
basket moving into ``exit`` is the normal way out — the handheld shows its order QR to
lane A — so nothing happens. Any other move, and an event for the zone the device is
already in, answers ``{}`` (a geofence reports crossings; a repeat must not say
goodbye twice).

Whether a basket is paid is asked of ``is_paid(basket_id)``; by default the
``orders`` table of :mod:`lanecore.core.store.basket` on the same connection (status
``paid`` or ``exited``).

**Persistence.** One table, ``handhelds``, on the caller's ``sqlite3`` connection
(autocommit, as :func:`lanecore.core.scan.catalog.connect` opens it). Every change is one
transaction of its own (``BEGIN IMMEDIATE``), or a savepoint inside the caller's.
Times are Unix seconds: ``now`` when given, else ``clock()``.

**Errors** are :class:`HandheldError` with a stable ``code`` and a ``details`` map:
UNKNOWN_HANDHELD, HANDHELD_IN_USE, NO_HANDHELD_FREE, LOW_BATTERY, BAD_ZONE,
HANDHELD_NOT_TAKEN (a basket bound to a handheld nobody holds), BASKET_BOUND (the
basket is already on another handheld), BAD_REQUEST, DB_ERROR, DB_BUSY.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable

from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError

__all__ = [
    "GOODBYE", "MIN_TAKE_BATTERY_PCT", "ZONES", "HandheldError", "Handhelds",
]

#: Where a handheld can be, from the aisles outwards.
ZONES = ("shopping", "checkout", "exit", "outside")
#: A handheld below this battery level (percent) is not handed out: a full shop with
#: the scanner on takes about a tenth of a charge, so 20 % leaves a wide margin.
MIN_TAKE_BATTERY_PCT = 20.0
#: What a handheld says as it leaves the shopping area.
GOODBYE = "Thank you for shopping with us. This handheld's basket has been cleared. Goodbye!"

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SAVEPOINT = "lanecore_handheld"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS handhelds (
        device_id     TEXT PRIMARY KEY,
        state         TEXT NOT NULL CHECK (state IN ('free', 'in_use')),
        shopper       TEXT,
        basket_id     TEXT,
        battery_pct   REAL NOT NULL CHECK (battery_pct BETWEEN 0 AND 100),
        zone          TEXT NOT NULL
                      CHECK (zone IN ('shopping', 'checkout', 'exit', 'outside')),
        registered_at REAL NOT NULL,
        taken_at      REAL,
        updated_at    REAL NOT NULL)""",
)
_COLUMNS = ("device_id", "state", "shopper", "basket_id", "battery_pct", "zone",
            "registered_at", "taken_at", "updated_at")


class HandheldError(LanecoreError):
    """A handheld request refused, with a stable ``code`` and a ``details`` map."""

    code = "HANDHELD_ERROR"


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, _SAVEPOINT, _db_error, "handheld", wrap_body_errors=True)


def _db_error(exc: sqlite3.Error, what: str) -> HandheldError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return HandheldError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


def _ident(value, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise HandheldError(f"{what} must be 1-64 of A-Z a-z 0-9 . _ -, got {value!r:.40}",
                            code="BAD_REQUEST", details={"field": what})
    return value


def _battery(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= 100:
        raise HandheldError(f"battery_pct must be a number 0-100, got {value!r:.40}",
                            code="BAD_REQUEST", details={"field": "battery_pct"})
    return float(value)


def _zone(value) -> str:
    if value not in ZONES:
        raise HandheldError(f"zone {value!r:.40} is not one of {', '.join(ZONES)}",
                            code="BAD_ZONE", details={"zone": str(value)[:40]})
    return value


def _orders_is_paid(con: sqlite3.Connection) -> Callable[[str], bool]:
    """``is_paid`` from the basket module's ``orders`` table (absent: nothing paid)."""
    def is_paid(basket_id: str) -> bool:
        try:
            row = con.execute("SELECT status FROM orders WHERE basket_id = ?",
                              (basket_id,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False
            raise
        return row is not None and row[0] in ("paid", "exited")
    return is_paid


class Handhelds:
    """The handheld fleet of one store, in table ``handhelds`` of ``con``.

    ``clock``: Unix seconds, used when a call passes no ``now``. ``is_paid``:
    ``basket_id -> bool``, whether the basket's order is paid (default: the
    ``orders`` table on ``con``). ``min_take_battery_pct``: the LOW_BATTERY line.
    ``goodbye``: the text a leaving handheld says. Creates the table if absent.
    Raises HandheldError DB_ERROR, DB_BUSY, BAD_REQUEST.

    Devices are returned as dicts: ``{device_id, state ("free"|"in_use"), shopper,
    basket_id, battery_pct, zone, registered_at, taken_at, updated_at, charged}``,
    ``charged`` meaning the battery is at or above the take line.
    """

    def __init__(self, con: sqlite3.Connection, *, clock: Callable[[], float] = time.time,
                 is_paid: Callable[[str], bool] | None = None,
                 min_take_battery_pct: float = MIN_TAKE_BATTERY_PCT,
                 goodbye: str = GOODBYE) -> None:
        if not isinstance(con, sqlite3.Connection):
            raise TypeError(f"con must be a sqlite3.Connection, not {type(con).__name__}")
        self.con = con
        self.clock = clock
        self.is_paid = is_paid if is_paid is not None else _orders_is_paid(con)
        self.min_take_battery_pct = _battery(min_take_battery_pct)
        if not isinstance(goodbye, str) or not goodbye:
            raise HandheldError("goodbye must be a non-empty text", code="BAD_REQUEST")
        self.goodbye = goodbye
        with _Txn(con):
            for stmt in _SCHEMA:
                con.execute(stmt)

    # -- reading ---------------------------------------------------------------------
    def _now(self, now) -> float:
        if now is None:
            return float(self.clock())
        if isinstance(now, bool) or not isinstance(now, (int, float)):
            raise HandheldError(f"now must be Unix seconds, got {now!r:.40}",
                                code="BAD_REQUEST", details={"field": "now"})
        return float(now)

    def _public(self, row) -> dict:
        d = dict(zip(_COLUMNS, row))
        d["charged"] = d["battery_pct"] >= self.min_take_battery_pct
        return d

    def _row(self, device_id) -> dict:
        _ident(device_id, "device_id")
        row = self.con.execute(f"SELECT {', '.join(_COLUMNS)} FROM handhelds "
                               "WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            raise HandheldError(f"no handheld {device_id!r} in this store's fleet",
                                code="UNKNOWN_HANDHELD", details={"device_id": device_id})
        return self._public(row)

    def device(self, device_id: str) -> dict:
        """One handheld (the dict described on the class). Raises UNKNOWN_HANDHELD."""
        try:
            return self._row(device_id)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the handheld") from exc

    def status(self) -> dict:
        """The fleet: ``{devices: [...] (by device_id), total, free, in_use,
        available (free and charged: what take() can hand out), low_battery (any
        state, below the take line), outside (devices in zone outside)}``."""
        try:
            rows = self.con.execute(f"SELECT {', '.join(_COLUMNS)} FROM handhelds "
                                    "ORDER BY device_id").fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the fleet") from exc
        devices = [self._public(r) for r in rows]
        return {"devices": devices, "total": len(devices),
                "free": sum(d["state"] == "free" for d in devices),
                "in_use": sum(d["state"] == "in_use" for d in devices),
                "available": sum(d["state"] == "free" and d["charged"] for d in devices),
                "low_battery": sum(not d["charged"] for d in devices),
                "outside": sum(d["zone"] == "outside" for d in devices)}

    # -- the fleet ------------------------------------------------------------------
    def register(self, device_id: str, *, battery_pct: float = 100.0,
                 zone: str = "shopping", now: float | None = None) -> dict:
        """Enrol ``device_id`` in the fleet: free, in ``zone`` (its cradle's),
        ``battery_pct`` charged (default full: a device is enrolled off its charger).
        Registering a device already enrolled changes nothing and returns it.
        Raises BAD_REQUEST, BAD_ZONE."""
        _ident(device_id, "device_id")
        battery = _battery(battery_pct)
        zone = _zone(zone)
        t = self._now(now)
        with _Txn(self.con):
            self.con.execute(
                "INSERT OR IGNORE INTO handhelds (device_id, state, battery_pct, zone, "
                "registered_at, updated_at) VALUES (?, 'free', ?, ?, ?, ?)",
                (device_id, battery, zone, t, t))
            return self._row(device_id)

    def take(self, device_id: str | None = None, *, shopper: str,
             now: float | None = None) -> dict:
        """Hand a free, charged handheld to ``shopper`` (a member number or session
        id); returns the device, now ``in_use``.

        With ``device_id`` None the fleet picks: the free handheld with the fullest
        battery (ties: the lowest device_id) — unless ``shopper`` already holds one,
        which is returned (a retried take does not hand out a second). Taking a
        handheld the same shopper already holds returns it unchanged.

        Raises UNKNOWN_HANDHELD, HANDHELD_IN_USE (held by another shopper; details
        ``device_id``), LOW_BATTERY (details ``battery_pct``, ``min_pct``),
        NO_HANDHELD_FREE (details ``free`` and ``low_battery``: free handhelds and
        how many of those are too flat), BAD_REQUEST."""
        _ident(shopper, "shopper")
        t = self._now(now)
        with _Txn(self.con):
            if device_id is None:
                held = self.con.execute(
                    "SELECT device_id FROM handhelds WHERE state = 'in_use' AND shopper = ? "
                    "ORDER BY device_id LIMIT 1", (shopper,)).fetchone()
                if held is not None:
                    return self._row(held[0])
                rows = self.con.execute(
                    "SELECT device_id, battery_pct FROM handhelds WHERE state = 'free' "
                    "ORDER BY battery_pct DESC, device_id").fetchall()
                charged = [r for r in rows if r[1] >= self.min_take_battery_pct]
                if not charged:
                    raise HandheldError(
                        f"no free, charged handheld: {len(rows)} free, all below "
                        f"{self.min_take_battery_pct:g} %" if rows else
                        "no free handheld: every one is in use",
                        code="NO_HANDHELD_FREE",
                        details={"free": len(rows), "low_battery": len(rows)})
                device_id = charged[0][0]
            dev = self._row(device_id)
            if dev["state"] == "in_use":
                if dev["shopper"] == shopper:
                    return dev
                raise HandheldError(f"handheld {device_id} is in use by another shopper",
                                    code="HANDHELD_IN_USE", details={"device_id": device_id})
            if not dev["charged"]:
                raise HandheldError(
                    f"handheld {device_id} has {dev['battery_pct']:g} % battery, below "
                    f"the {self.min_take_battery_pct:g} % needed to hand it out",
                    code="LOW_BATTERY",
                    details={"device_id": device_id, "battery_pct": dev["battery_pct"],
                             "min_pct": self.min_take_battery_pct})
            self.con.execute(
                "UPDATE handhelds SET state = 'in_use', shopper = ?, basket_id = NULL, "
                "taken_at = ?, updated_at = ? WHERE device_id = ?",
                (shopper, t, t, device_id))
            return self._row(device_id)

    def give_back(self, device_id: str, now: float | None = None) -> dict:
        """The handheld is back in its cradle: free, no shopper, no basket. Returns
        the device with one more key, ``wipe``: the basket it still carried unpaid,
        which the caller must wipe in the service (None when there was none, or it
        was paid). Giving back a free handheld changes nothing (``wipe`` None).
        Raises UNKNOWN_HANDHELD, BAD_REQUEST."""
        t = self._now(now)
        with _Txn(self.con):
            dev = self._row(device_id)
            if dev["state"] == "free":
                return {**dev, "wipe": None}
            wipe = self._unpaid(dev["basket_id"])
            self.con.execute(
                "UPDATE handhelds SET state = 'free', shopper = NULL, basket_id = NULL, "
                "taken_at = NULL, updated_at = ? WHERE device_id = ?", (t, device_id))
            return {**self._row(device_id), "wipe": wipe}

    def bind_basket(self, device_id: str, basket_id: str, *,
                    now: float | None = None) -> dict:
        """The basket the shopper opened on ``device_id`` (the geofence wipes it if
        the handheld leaves unpaid). A new basket replaces the one bound before
        (an earlier, paid trip); binding the same one again changes nothing. Returns
        the device. Raises UNKNOWN_HANDHELD, HANDHELD_NOT_TAKEN (nobody holds the
        handheld), BASKET_BOUND (the basket is on another handheld), BAD_REQUEST."""
        _ident(basket_id, "basket_id")
        t = self._now(now)
        with _Txn(self.con):
            dev = self._row(device_id)
            if dev["state"] != "in_use":
                raise HandheldError(f"handheld {device_id} is not taken by a shopper",
                                    code="HANDHELD_NOT_TAKEN",
                                    details={"device_id": device_id})
            other = self.con.execute(
                "SELECT device_id FROM handhelds WHERE basket_id = ? AND device_id != ?",
                (basket_id, device_id)).fetchone()
            if other is not None:
                raise HandheldError(f"basket {basket_id} is on handheld {other[0]}",
                                    code="BASKET_BOUND",
                                    details={"basket_id": basket_id, "device_id": other[0]})
            if dev["basket_id"] == basket_id:
                return dev
            self.con.execute("UPDATE handhelds SET basket_id = ?, updated_at = ? "
                             "WHERE device_id = ?", (basket_id, t, device_id))
            return self._row(device_id)

    # -- heartbeat and geofence -----------------------------------------------------
    def report(self, device_id: str, battery_pct: float, zone: str | None = None, *,
               now: float | None = None) -> dict:
        """The device's heartbeat: its battery level (percent, 0-100) and, when
        given, its zone. A zone change here is a crossing like :meth:`zone_event`;
        the answer is that action (``{}`` when nothing is to be done). Raises
        UNKNOWN_HANDHELD, BAD_ZONE, BAD_REQUEST."""
        battery = _battery(battery_pct)
        if zone is not None:
            _zone(zone)
        t = self._now(now)
        with _Txn(self.con):
            self._row(device_id)
            self.con.execute("UPDATE handhelds SET battery_pct = ?, updated_at = ? "
                             "WHERE device_id = ?", (battery, t, device_id))
            return self._cross(device_id, zone, t) if zone is not None else {}

    def zone_event(self, device_id: str, zone: str, now: float | None = None) -> dict:
        """The geofence saw ``device_id`` enter ``zone`` (one of :data:`ZONES`).

        Leaving the shopping area — into ``outside``, or into ``exit`` with the
        bound basket not paid — answers ``{"say": goodbye, "wipe": basket_id}``
        (``wipe`` None unless the basket is unpaid) and clears the binding. Anything
        else answers ``{}``, a repeat of the current zone included. Raises
        UNKNOWN_HANDHELD, BAD_ZONE, BAD_REQUEST."""
        zone = _zone(zone)
        t = self._now(now)
        with _Txn(self.con):
            self._row(device_id)
            return self._cross(device_id, zone, t)

    def _cross(self, device_id: str, zone: str, t: float) -> dict:
        dev = self._row(device_id)
        if dev["zone"] == zone:
            return {}
        basket = dev["basket_id"]
        unpaid = self._unpaid(basket)
        leaving = zone == "outside" or (zone == "exit" and basket is not None
                                        and unpaid is not None)
        if not leaving:
            self.con.execute("UPDATE handhelds SET zone = ?, updated_at = ? "
                             "WHERE device_id = ?", (zone, t, device_id))
            return {}
        self.con.execute("UPDATE handhelds SET zone = ?, basket_id = NULL, updated_at = ? "
                         "WHERE device_id = ?", (zone, t, device_id))
        return {"say": self.goodbye, "wipe": unpaid}

    def _unpaid(self, basket_id: str | None) -> str | None:
        """``basket_id`` when it is bound and not paid, else None."""
        if basket_id is None:
            return None
        return None if self.is_paid(basket_id) else basket_id
