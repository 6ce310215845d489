"""``lanecore hq``: HQ's ingest of every store's events into PostgreSQL, and HQ's ops
(prices, promotions) published to every store (docs/chain.md).

**Ingest.** A durable JetStream pull consumer ``hq-ingest`` (explicit ack) on
:data:`~lanecore.gateway.chain.streams.STORES_STREAM` fetches up to :data:`FETCH` messages at a time and applies them in
ONE PostgreSQL transaction: ``INSERT INTO hq_events … ON CONFLICT DO NOTHING
RETURNING event_id`` (the event id is the message's ``Nats-Msg-Id``,
``<store>/<kind>/<row id>``), then the effect of only the events that were new
(``hq_ledger``, ``hq_orders``, ``hq_verdicts``, ``hq_alarms``, ``hq_audits``,
``hq_faults``, ``hq_bills``; a ``sale`` earns the member's points with the chain's
``Members``, in the same transaction, under the chain's writer lock); commit, then
ack. An event redelivered after a kill -9 (committed, not acked) finds its id in
``hq_events`` and changes nothing.

**Changes.** ``price.set``, ``promotion.set`` and ``promotion.end`` write HQ's tables
(``hq_prices``, ``hq_promotions``) and an ``hq_changes`` row in one transaction (a
transactional outbox again), then a publisher task sends every unpublished change on
``lanecore.hq.<kind>`` with ``Nats-Msg-Id: hq/<kind>/<change id>`` and marks it
published once acked; after a crash or while NATS is down the changes wait in
``hq_changes``. The ops are PURE in the OpServer's sense: idempotent by their own key
(the same price again, the same promotion again: no new change).

Schema versions: ``lanecore_schema(component, version)``, component ``hq``; each
migration runs in its own transaction under an advisory lock (:func:`migrate`).

Crash points (``LANECORE_HQ_CRASH``): ``mid_batch`` (inside the transaction, half the
batch applied), ``after_commit_before_ack``, ``after_change_before_publish``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

import msgpack

from lanecore.core.errors import LanecoreError
from lanecore.gateway.chain import streams as S
from lanecore.gateway.db.pg import CHAIN_LOCK
from lanecore.gateway.net.identity import ANY, roles
from lanecore.gateway.net.protocol import Field
from lanecore.gateway.net.server import PURE, OpServer

log = logging.getLogger("lanecore.hq")

CRASH_POINTS = ("mid_batch", "after_commit_before_ack", "after_change_before_publish")
#: Most messages one pull fetches (and one transaction applies).
FETCH = 1000
#: How long one pull waits for messages (seconds).
FETCH_WAIT_S = 0.5
#: A delivered message not acked within this is delivered again (a consumer killed
#: between its commit and its acks: the redelivery finds the events applied).
ACK_WAIT_S = 10.0
COMPONENT = "hq"
#: Advisory lock key of HQ's migrations.
_MIGRATION_LOCK = 0x4C43_4851        # "LCHQ"
#: Minor units paid per point a ``sale`` earns at HQ: ``Members``' rule, whose default
#: is also the coupon gateways' (``[members] earn_per_minor`` in coupons.toml).
EARN_PER_MINOR = 100

#: HQ's schema, one entry per version (never edit one: add the next).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (   # 1: ingest and the consolidated ledger
        """CREATE TABLE hq_events (
            event_id TEXT PRIMARY KEY, store_id TEXT NOT NULL, kind TEXT NOT NULL,
            row_id TEXT NOT NULL, received_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        "CREATE INDEX hq_events_store ON hq_events (store_id, kind)",
        """CREATE TABLE hq_ledger (
            event_id TEXT PRIMARY KEY REFERENCES hq_events, store_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('payment', 'reversal', 'refund')),
            merchant_ref TEXT NOT NULL, ref TEXT NOT NULL, order_no TEXT,
            channel TEXT, method TEXT, terminal TEXT,
            amount_minor BIGINT NOT NULL CHECK (amount_minor >= 0),
            signed_minor BIGINT NOT NULL, currency TEXT NOT NULL, at DOUBLE PRECISION)""",
        "CREATE INDEX hq_ledger_store ON hq_ledger (store_id, kind)",
        """CREATE TABLE hq_orders (
            store_id TEXT NOT NULL, order_no TEXT NOT NULL, event_id TEXT NOT NULL
            REFERENCES hq_events, device TEXT, total_minor BIGINT NOT NULL,
            currency TEXT NOT NULL, n_items INTEGER, at DOUBLE PRECISION,
            PRIMARY KEY (store_id, order_no))""",
        """CREATE TABLE hq_verdicts (
            event_id TEXT PRIMARY KEY REFERENCES hq_events, store_id TEXT NOT NULL,
            at DOUBLE PRECISION, gate TEXT, order_no TEXT, verdict TEXT,
            measured_g DOUBLE PRECISION, expected_g DOUBLE PRECISION, z DOUBLE PRECISION)""",
        """CREATE TABLE hq_alarms (
            event_id TEXT PRIMARY KEY REFERENCES hq_events, store_id TEXT NOT NULL,
            at DOUBLE PRECISION, lane TEXT, order_no TEXT, action TEXT, reason TEXT,
            staff TEXT, principal TEXT, finding TEXT)""",
        """CREATE TABLE hq_audits (
            event_id TEXT PRIMARY KEY REFERENCES hq_events, store_id TEXT NOT NULL,
            at DOUBLE PRECISION, order_no TEXT, audit_kind TEXT, outcome TEXT,
            reason TEXT, staff TEXT, finding TEXT)""",
        """CREATE TABLE hq_faults (
            event_id TEXT PRIMARY KEY REFERENCES hq_events, store_id TEXT NOT NULL,
            at DOUBLE PRECISION, lane TEXT, device TEXT, event TEXT, code TEXT,
            message TEXT)""",
    ),
    (   # 2: HQ's prices and promotions, and the outbox of changes to the stores
        """CREATE TABLE hq_changes (
            change_id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, body BYTEA NOT NULL,
            made_by TEXT NOT NULL, made_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            published_at TIMESTAMPTZ)""",
        "CREATE INDEX hq_changes_unpublished ON hq_changes (change_id) "
        "WHERE published_at IS NULL",
        """CREATE TABLE hq_prices (
            gtin TEXT PRIMARY KEY, price_minor BIGINT NOT NULL CHECK (price_minor >= 0),
            change_id BIGINT NOT NULL REFERENCES hq_changes,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        """CREATE TABLE hq_promotions (
            promo_id TEXT PRIMARY KEY, definition JSONB NOT NULL, valid_from BIGINT,
            valid_until BIGINT, change_id BIGINT NOT NULL REFERENCES hq_changes,
            ended_at TIMESTAMPTZ, ended_change_id BIGINT REFERENCES hq_changes)""",
    ),
    (   # 3: HQ's books: the providers' bills each store fetched, the ledger by day
        """CREATE TABLE hq_bills (
            store_id TEXT NOT NULL, channel TEXT NOT NULL, day DATE NOT NULL,
            event_id TEXT NOT NULL REFERENCES hq_events, file TEXT NOT NULL,
            fetched_at DOUBLE PRECISION NOT NULL, n_rows INTEGER NOT NULL,
            rows JSONB NOT NULL, PRIMARY KEY (store_id, channel, day))""",
        "CREATE INDEX hq_ledger_at ON hq_ledger (at)",
        "CREATE INDEX hq_ledger_ref ON hq_ledger (store_id, merchant_ref)",
    ),
)


class HQError(LanecoreError):
    code = "HQ_ERROR"


def connect(url: str):
    import psycopg
    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise HQError(f"cannot connect to HQ's database: {exc}", code="DB_ERROR") from None


def migrate(con) -> int:
    """Bring HQ's schema to the last version (each step one transaction, under an
    advisory lock so two HQ processes do not race); the version now."""
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        con.execute("CREATE TABLE IF NOT EXISTS lanecore_schema (component TEXT PRIMARY KEY, "
                    "version INTEGER NOT NULL)")
    while True:
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            row = con.execute("SELECT version FROM lanecore_schema WHERE component = %s",
                              (COMPONENT,)).fetchone()
            have = row[0] if row else 0
            if have >= len(MIGRATIONS):
                return have
            for stmt in MIGRATIONS[have]:
                con.execute(stmt)
            con.execute("INSERT INTO lanecore_schema (component, version) VALUES (%s, %s) "
                        "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                        (COMPONENT, have + 1))
            log.info("HQ schema now version %d", have + 1)


# ----------------------------------------------------------------------------------
# Ingest
# ----------------------------------------------------------------------------------
def _ledger_row(eid, store, kind, b):
    amount = int(b["amount_minor"])
    ref = b["refund_ref"] if kind == "refund" else b["merchant_ref"]
    return (eid, store, kind, b["merchant_ref"], ref, b.get("order_no"), b.get("channel"),
            b.get("method"), b.get("terminal"), amount,
            amount if kind == "payment" else -amount, b["currency"], b.get("at"))


_EFFECTS = {
    "ledger": ("INSERT INTO hq_ledger (event_id, store_id, kind, merchant_ref, ref, order_no, "
               "channel, method, terminal, amount_minor, signed_minor, currency, at) VALUES "
               "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"),
    "order": ("INSERT INTO hq_orders (store_id, order_no, event_id, device, total_minor, "
              "currency, n_items, at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
              "ON CONFLICT (store_id, order_no) DO NOTHING"),
    "verdict": ("INSERT INTO hq_verdicts (event_id, store_id, at, gate, order_no, verdict, "
                "measured_g, expected_g, z) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"),
    "alarm": ("INSERT INTO hq_alarms (event_id, store_id, at, lane, order_no, action, reason, "
              "staff, principal, finding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"),
    "audit": ("INSERT INTO hq_audits (event_id, store_id, at, order_no, audit_kind, outcome, "
              "reason, staff, finding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"),
    "fault": ("INSERT INTO hq_faults (event_id, store_id, at, lane, device, event, code, "
              "message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"),
    # the latest bill of a (store, channel, day) supersedes the earlier ones
    "bill": ("INSERT INTO hq_bills (event_id, store_id, channel, day, file, fetched_at, "
             "n_rows, rows) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
             "ON CONFLICT (store_id, channel, day) DO UPDATE SET event_id = excluded.event_id, "
             "file = excluded.file, fetched_at = excluded.fetched_at, n_rows = excluded.n_rows, "
             "rows = excluded.rows WHERE hq_bills.fetched_at <= excluded.fetched_at"),
}


def _bill_row(eid: str, store: str, b: dict):
    """The ``hq_bills`` row of a ``bill`` event, or None (logged) when its body is not
    a bill: the event is kept in ``hq_events``, nothing else is written."""
    import datetime as dt

    from psycopg.types.json import Jsonb

    from lanecore.core.pay.recon import BILL_TYPES
    try:
        channel, day, cols = b["channel"], b["date"], list(b["columns"])
        dt.date.fromisoformat(day)
        if not (isinstance(channel, str) and channel) or len(day) != 10:
            raise ValueError("channel or date")
        rows = []
        for r in b["rows"]:
            line = dict(zip(cols, r, strict=True))
            line["amount_minor"] = int(line["amount_minor"])
            line["fee_minor"] = int(line.get("fee_minor") or 0)
            if line["type"] not in BILL_TYPES or not isinstance(line["merchant_ref"], str):
                raise ValueError(f"a bill line of type {line['type']!r}")
            rows.append(line)
        fetched = float(b.get("fetched_at") or 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("HQ ingest: bill event %s is not a bill (%s: %s): kept, not applied",
                  eid, type(exc).__name__, exc)
        return None
    return (eid, store, channel, day, str(b.get("file") or ""), fetched, len(rows),
            Jsonb(rows))


def _effect(eid: str, store: str, kind: str, b: dict):
    """(table key, row) of one new event."""
    if kind in ("payment", "reversal", "refund"):
        return "ledger", _ledger_row(eid, store, kind, b)
    if kind == "order":
        return "order", (store, b["order_no"], eid, b.get("device"), int(b["total_minor"]),
                         b["currency"], b.get("n_items"), b.get("at"))
    if kind == "verdict":
        return "verdict", (eid, store, b.get("at"), b.get("gate"), b.get("order_no"),
                           b.get("verdict"), b.get("measured_g"), b.get("expected_g"),
                           b.get("z"))
    if kind == "alarm":
        return "alarm", (eid, store, b.get("at"), b.get("lane"), b.get("order_no"),
                         b.get("action"), b.get("reason"), b.get("staff"), b.get("principal"),
                         b.get("finding"))
    if kind == "audit":
        return "audit", (eid, store, b.get("at"), b.get("order_no"), b.get("audit_kind"),
                         b.get("outcome"), b.get("reason"), b.get("staff"), b.get("finding"))
    if kind == "fault":
        return "fault", (eid, store, b.get("at"), b.get("lane"), b.get("device"),
                         b.get("event"), b.get("code"), b.get("message"))
    if kind == "bill":
        row = _bill_row(eid, store, b)
        return None if row is None else ("bill", row)
    if kind == "sale":          # member points: applied by Ingest._earn, not a table row
        return "sale", (eid, store, b)
    return None


def event_of(subject: str, headers: dict | None, data: bytes) -> tuple[str, str, str, dict]:
    """(event id, store, kind, body) of one store message (HQError BAD_EVENT)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "lanecore" or parts[1] != "store":
        raise HQError(f"not a store subject: {subject}", code="BAD_EVENT")
    store, kind = parts[2], parts[3]
    body = msgpack.unpackb(data)
    eid = (headers or {}).get("Nats-Msg-Id") or S.store_msg_id(store, kind, body.get("id"))
    return eid, store, kind, body


class Ingest:
    """Applies batches of store events to PostgreSQL (one connection, blocking)."""

    def __init__(self, url: str, *, earn_per_minor: int = EARN_PER_MINOR) -> None:
        self.con = connect(url)
        migrate(self.con)
        self.members = chain_members(self.con, url, earn_per_minor)
        self.crash = S.CrashPlan("LANECORE_HQ_CRASH", CRASH_POINTS)
        self.applied = 0
        self.duplicates = 0
        #: ``sale`` events that earned points / that earned nothing (an unknown
        #: member, …) since this process started (hq.stats counts them from the tables)
        self.sales_earned = 0
        self.sales_skipped = 0

    def apply(self, events: list[tuple[str, str, str, dict]]) -> int:
        """Apply ``events`` in one transaction; the number that were new."""
        uniq: dict[str, tuple] = {}
        for ev in events:
            uniq.setdefault(ev[0], ev)
        ids = list(uniq)
        with self.con.transaction():
            new = {r[0] for r in self.con.execute(
                "INSERT INTO hq_events (event_id, store_id, kind, row_id) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                (ids, [uniq[i][1] for i in ids], [uniq[i][2] for i in ids],
                 [str(uniq[i][3].get("id")) for i in ids])).fetchall()}
            rows: dict[str, list] = {}
            for i, eid in enumerate(ids):
                if i == len(ids) // 2 and self.crash.plan:
                    self.crash.maybe("mid_batch")
                if eid not in new:
                    continue
                eff = _effect(*uniq[eid])
                if eff is not None:
                    rows.setdefault(eff[0], []).append(eff[1])
            sales = rows.pop("sale", [])
            with self.con.cursor() as cur:
                for key, batch in rows.items():
                    cur.executemany(_EFFECTS[key], batch)
            if sales:       # last: the chain's writer lock is held only to the commit
                self._earn(sales)
        self.applied += len(new)
        self.duplicates += len(events) - len(new)
        return len(new)

    def _earn(self, sales: list[tuple[str, str, dict]]) -> None:
        """The member points of new ``sale`` events, in the batch's transaction (they
        commit with its ``hq_events`` rows, or not at all), under the chain's writer
        lock: ``Members.earn`` and ``record_purchase`` keyed ``<store>:<order no>``
        (unique across the chain; the members' order numbers allow no ``/``). A sale
        that earns nothing (a member not enrolled in the chain, a malformed body) is
        logged by its event id and skipped: the event stays applied. A database
        failure raises the driver's error (the batch is rolled back and redelivered)."""
        from lanecore.core.promo.members import MemberError
        chain_lock(self.con)
        for eid, store, b in sales:
            try:
                with self.con.transaction():         # a savepoint: all of a sale or none
                    member = self.members.find(b["member"])
                    key, total = f"{store}:{b['order_no']}", b["total_minor"]
                    at = b.get("at")
                    at = time.time() if at is None else at
                    earned = self.members.earn(member.member_id, key, total, now=at)
                    self.members.record_purchase(member.member_id, key, total,
                                                 b["currency"], [], earned.points, 0, now=at)
            except MemberError as exc:
                if exc.code in ("DB_BUSY", "DB_ERROR"):
                    raise _driver_error(exc) from None
                self._skip(eid, exc.code)
            except (KeyError, TypeError) as exc:
                self._skip(eid, f"malformed ({type(exc).__name__})")
            else:
                self.sales_earned += 1

    def _skip(self, eid: str, why: str) -> None:
        self.sales_skipped += 1
        log.warning("HQ ingest: sale %s earns no points: %s (kept, skipped)", eid, why)

    def close(self) -> None:
        self.con.close()


def chain_lock(con) -> None:
    """Take the chain database's writer lock in ``con``'s open transaction, as the
    seam's ``BEGIN IMMEDIATE`` does for the coupon gateways (the lock, then the
    data-version bump), waiting at most as long as they do."""
    from lanecore.gateway.db.pg import lock_id
    con.execute("SET LOCAL lock_timeout = '10s'")
    con.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(CHAIN_LOCK),))
    con.execute("UPDATE public.lanecore_data_version SET n = n + 1 WHERE k = 1")


def chain_members(con, url: str, earn_per_minor: int = EARN_PER_MINOR):
    """The chain's members (core/promo/members.py) on HQ's own connection ``con``,
    through the storage seam, so a sale's points are written in the ingest batch's
    transaction. First the chain database is prepared as every coupon gateway finds
    it: a seam connection (its data-version row) and the members' tables created or
    migrated by ``Members`` itself, under the writer lock (HQError DB_ERROR)."""
    import psycopg

    from lanecore.core.promo.members import MemberError, Members
    from lanecore.gateway.db import pg
    try:
        seam = pg.connect(url, lock_key=CHAIN_LOCK)
        try:
            Members(seam, earn_per_minor=earn_per_minor)
        finally:
            seam.close()
        with con.transaction():
            chain_lock(con)
            return Members(pg.PgConnection(con, lock_key=CHAIN_LOCK, url=url),
                           earn_per_minor=earn_per_minor)
    except (LanecoreError, sqlite3.Error, psycopg.Error) as exc:
        code = exc.code if isinstance(exc, MemberError) else "DB_ERROR"
        raise HQError(f"cannot open the chain's members: {exc}", code=code) from None


def sale_counts(con) -> dict:
    """``{"earned": n, "skipped": n}``: the ``sale`` events HQ applied that earned
    points (their purchase is in the members' ``purchases``, keyed ``<store>:<order
    no>``; 0 points included) and those that earned nothing (an unknown member, …)."""
    if con.execute("SELECT to_regclass('public.purchases')").fetchone()[0] is None:
        n = con.execute("SELECT COUNT(*) FROM hq_events WHERE kind = 'sale'").fetchone()[0]
        return {"earned": 0, "skipped": int(n)}
    earned, skipped = con.execute(
        "SELECT COUNT(p.order_no), COUNT(*) - COUNT(p.order_no) FROM hq_events e "
        "LEFT JOIN public.purchases p ON p.order_no = e.store_id || ':' || e.row_id "
        "WHERE e.kind = 'sale'").fetchone()
    return {"earned": int(earned), "skipped": int(skipped)}


def _driver_error(exc: BaseException) -> BaseException:
    """The psycopg error under a store's DB_BUSY/DB_ERROR (the seam keeps it as the
    cause), so the ingest loop connects again and the batch is redelivered."""
    import psycopg
    e = exc
    while e is not None:
        if isinstance(e, psycopg.Error):
            return e
        e = e.__cause__
    return psycopg.OperationalError(str(exc))


def totals(con, store_id: str | None = None) -> dict:
    """Per store: the consolidated ledger (payments, reversals, refunds and the net,
    integer minor units) and the count of each kind of event."""
    sql = ("SELECT store_id, kind, COALESCE(SUM(amount_minor), 0), COUNT(*) FROM hq_ledger"
           + (" WHERE store_id = %s" if store_id else "") + " GROUP BY store_id, kind")
    out: dict[str, dict] = {}
    for store, kind, amount, n in con.execute(sql, (store_id,) if store_id else ()):
        t = out.setdefault(store, {"payment_minor": 0, "reversal_minor": 0,
                                   "refund_minor": 0, "net_minor": 0, "events": {}})
        t[f"{kind}_minor"] = int(amount)
        t["net_minor"] += int(amount) if kind == "payment" else -int(amount)
    sql = ("SELECT store_id, kind, COUNT(*) FROM hq_events"
           + (" WHERE store_id = %s" if store_id else "") + " GROUP BY store_id, kind")
    for store, kind, n in con.execute(sql, (store_id,) if store_id else ()):
        t = out.setdefault(store, {"payment_minor": 0, "reversal_minor": 0,
                                   "refund_minor": 0, "net_minor": 0, "events": {}})
        t["events"][kind] = int(n)
    return out


async def ingest_batch(ingest: Ingest, msgs: list) -> int:
    """One fetched batch: applied in one transaction (off the event loop), then every
    message acked; a malformed one is logged and terminated (never redelivered).
    The number of new events."""
    events, bad = [], []
    for m in msgs:
        try:
            events.append(event_of(m.subject, m.headers, m.data))
        except Exception as exc:
            log.error("HQ ingest: dropped a malformed message on %s: %s", m.subject, exc)
            bad.append(m)
    new = 0
    if events:
        new = await asyncio.to_thread(ingest.apply, events)
        ingest.crash.maybe("after_commit_before_ack")
    for m in msgs:
        if m not in bad:
            await m.ack()
    for m in bad:
        await m.term()
    return new


# ----------------------------------------------------------------------------------
# The NATS side: ingest loop and the publisher of changes (one asyncio loop, a thread)
# ----------------------------------------------------------------------------------
class Pump:
    """Runs the ingest consumer and the change publisher on their own event loop in a
    thread (:meth:`start`); :meth:`poke` wakes the publisher after a change."""

    def __init__(self, db_url: str, nats_url: str) -> None:
        self.db_url, self.nats_url = db_url, nats_url
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.ingest: Ingest | None = None
        self.published = 0
        self.ready = threading.Event()

    def start(self) -> "Pump":
        self.thread = threading.Thread(target=self._run, name="hq-pump", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self.main())
        except BaseException as exc:          # reported by whoever waits on the pump
            self.error = exc
            log.exception("HQ pump stopped")
        finally:
            self.ready.set()

    def poke(self) -> None:
        if self.loop is not None and self._wake is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self.thread is not None:
            self.thread.join(10)

    async def main(self) -> None:
        import nats
        self.loop = asyncio.get_running_loop()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self.ingest = await asyncio.to_thread(Ingest, self.db_url)
        pub_con = await asyncio.to_thread(connect, self.db_url)
        nc = await nats.connect(self.nats_url, connect_timeout=5, allow_reconnect=True,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                name="hq")
        js = nc.jetstream()
        await S.ensure_streams(js)
        sub = await self._subscribe(js)
        self.ready.set()
        tasks = [asyncio.create_task(self._ingest_loop(sub)),
                 asyncio.create_task(self._publish_loop(js, pub_con)),
                 asyncio.create_task(self._stop.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()
            try:
                await nc.close()
            except Exception:
                pass
            pub_con.close()
            self.ingest.close()

    async def _subscribe(self, js):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        cfg = ConsumerConfig(durable_name=S.HQ_INGEST, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=ACK_WAIT_S,
                             max_ack_pending=50_000, filter_subject=S.STORES_SUBJECTS)
        return await js.pull_subscribe(S.STORES_SUBJECTS, durable=S.HQ_INGEST,
                                       stream=S.STORES_STREAM, config=cfg)

    async def _ingest_loop(self, sub) -> None:
        import nats.errors
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=FETCH_WAIT_S)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                log.warning("HQ ingest: %s (again)", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await ingest_batch(self.ingest, msgs)
            except Exception as exc:
                import psycopg
                if not isinstance(exc, psycopg.OperationalError):
                    raise
                # PostgreSQL went away: nothing of the batch is acked, so it comes
                # back after the ack wait; connect again meanwhile
                log.warning("HQ ingest: PostgreSQL: %s (connecting again)", exc)
                await asyncio.sleep(1.0)
                try:
                    old, self.ingest = self.ingest, await asyncio.to_thread(Ingest,
                                                                            self.db_url)
                    old.close()
                except HQError as again:
                    log.warning("HQ ingest: %s", again)

    async def _publish_loop(self, js, con) -> None:
        while True:
            try:
                n = await self.publish_changes(js, con)
            except Exception as exc:
                if type(exc).__module__.startswith(("nats", "asyncio")) or \
                        isinstance(exc, (asyncio.TimeoutError, OSError)):
                    log.warning("HQ: publishing changes: %s: %s (again)",
                                type(exc).__name__, exc)
                    await asyncio.sleep(0.5)
                    continue
                raise
            if n:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def publish_changes(self, js, con) -> int:
        rows = await asyncio.to_thread(lambda: con.execute(
            "SELECT change_id, kind, body FROM hq_changes WHERE published_at IS NULL "
            "ORDER BY change_id LIMIT 500").fetchall())
        con.commit()
        if not rows:
            return 0
        for change_id, kind, body in rows:      # in order: a store applies them in order
            await js.publish(S.hq_subject(kind), bytes(body), timeout=5.0,
                             stream=S.HQ_STREAM,
                             headers={"Nats-Msg-Id": S.hq_msg_id(kind, change_id)})

        def mark():
            with con.transaction():
                con.execute("UPDATE hq_changes SET published_at = now() WHERE change_id = "
                            "ANY(%s)", ([r[0] for r in rows],))
        await asyncio.to_thread(mark)
        self.published += len(rows)
        return len(rows)


# ----------------------------------------------------------------------------------
# HQ's ops
# ----------------------------------------------------------------------------------
#: Who may call each op (docs/security.md; ``admin`` may call every op).
OP_ROLES = {
    "hello": ANY,
    "price.set": roles("hq"),
    "price.get": roles("hq"),
    "promotion.set": roles("hq"),
    "promotion.end": roles("hq"),
    "terminal.set": roles("hq"),
    "catalog.push": roles("hq"),
    "hq.totals": roles("hq"),
    "hq.stats": roles("hq"),
    "hq.recon": roles("hq"),
    "hq.clearing": roles("hq"),
}


#: The largest catalogue push (bytes of CSV text): one JetStream message each (the
#: server's default max_payload is 1 MiB); a larger catalogue goes in several pushes.
CATALOG_PUSH_MAX = 512 * 1024


def _gtin14(text: str) -> str:
    if not (isinstance(text, str) and text.isascii() and text.isdigit()
            and len(text) in (8, 12, 13, 14)):
        raise LanecoreError(f"a GTIN is 8, 12, 13 or 14 digits, got {text!r}",
                            code="BAD_GTIN")
    return text.zfill(14)


class HQ(OpServer):
    """HQ's OpServer: the ops above over PostgreSQL; ``pump`` publishes the changes."""

    def __init__(self, db_url: str, data_dir, *, pump: Pump | None = None) -> None:
        from lanecore.core.config import resolve_data_dir
        from lanecore.core.sqltxn import private_database
        self.data_dir = resolve_data_dir(data_dir)
        path = Path(self.data_dir) / "hq-requests.db"
        private_database(path)
        super().__init__(sqlite3.connect(str(path), isolation_level=None,
                                         check_same_thread=False))
        self.db_url = db_url
        self.pg = connect(db_url)
        self.pg.autocommit = False
        migrate(self.pg)
        self.pump = pump
        self.crash = S.CrashPlan("LANECORE_HQ_CRASH", CRASH_POINTS)

    def _ops(self) -> list:
        from lanecore.gateway.net.identity import declare
        gtin = Field("str", min=8, max=14)
        return declare([
            ("hello", self.op_hello, {}, PURE),
            ("price.set", self.op_price_set,
             {"gtin": gtin, "price_minor": Field("int", min=0, max=2**31 - 1,
                                                  code="BAD_PRICE")}, PURE),
            ("price.get", self.op_price_get, {"gtin": gtin}, PURE),
            ("promotion.set", self.op_promotion_set,
             {"promo_id": Field("str", min=1, max=64), "definition": Field("map"),
              "valid_from": Field("int", required=False, min=0),
              "valid_until": Field("int", required=False, min=0)}, PURE),
            ("promotion.end", self.op_promotion_end,
             {"promo_id": Field("str", min=1, max=64)}, PURE),
            ("catalog.push", self.op_catalog_push,
             {"csv": Field("str", min=1, max=CATALOG_PUSH_MAX)}, PURE),
            ("terminal.set", self.op_terminal_set,
             {"terminal_id": Field("str", min=1, max=64),
              "store": Field("str", required=False, min=1, max=32),
              "enabled": Field("bool", required=False),
              "limits": Field("map", required=False)}, PURE),
            ("hq.totals", self.op_totals, {"store": Field("str", required=False, max=32)},
             PURE),
            ("hq.stats", self.op_stats, {}, PURE),
            ("hq.recon", self.op_recon, {"date": Field("str", min=10, max=10)}, PURE),
            ("hq.clearing", self.op_clearing,
             {"issuer_id": Field("str", required=False, min=1, max=64),
              "since": Field("int", required=False, min=0),
              "until": Field("int", required=False, min=0)}, PURE),
        ], OP_ROLES)

    # --
    def _change(self, kind: str, body: dict) -> int:
        """An ``hq_changes`` row in the open transaction; its id."""
        return self.pg.execute(
            "INSERT INTO hq_changes (kind, body, made_by) VALUES (%s, %s, %s) "
            "RETURNING change_id", (kind, b"", self.principal.id)).fetchone()[0]

    def _set_body(self, change_id: int, kind: str, body: dict) -> None:
        self.pg.execute("UPDATE hq_changes SET body = %s WHERE change_id = %s",
                        (msgpack.packb({**body, "change_id": change_id}), change_id))

    def _committed(self) -> None:
        self.crash.maybe("after_change_before_publish")
        if self.pump is not None:
            self.pump.poke()

    def op_hello(self, f) -> dict:
        import lanecore
        from lanecore.gateway.net import protocol as P
        return {"protocol": P.PROTOCOL_VERSION, "server": f"lanecore {lanecore.__version__}",
                "capabilities": sorted(self.ops), "process": "hq"}

    def op_price_set(self, f) -> dict:
        """HQ's price of ``gtin``, sent to every store; the same price again: the
        change already made."""
        g = _gtin14(f["gtin"])
        price = int(f["price_minor"])
        with self.pg.transaction():
            self.pg.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("price:" + g,))
            row = self.pg.execute("SELECT price_minor, change_id FROM hq_prices WHERE gtin = %s",
                                  (g,)).fetchone()
            if row is not None and row[0] == price:
                return {"gtin": g, "price_minor": price, "change_id": row[1], "changed": False}
            cid = self._change("price", {})
            self._set_body(cid, "price", {"gtin": g, "price_minor": price})
            self.pg.execute(
                "INSERT INTO hq_prices (gtin, price_minor, change_id) VALUES (%s, %s, %s) "
                "ON CONFLICT (gtin) DO UPDATE SET price_minor = excluded.price_minor, "
                "change_id = excluded.change_id, updated_at = now()", (g, price, cid))
        self._committed()
        return {"gtin": g, "price_minor": price, "change_id": cid, "changed": True}

    def op_price_get(self, f) -> dict:
        g = _gtin14(f["gtin"])
        with self.pg.transaction():
            row = self.pg.execute("SELECT price_minor, change_id FROM hq_prices WHERE "
                                  "gtin = %s", (g,)).fetchone()
        if row is None:
            raise LanecoreError(f"HQ sets no price for {g}", code="UNKNOWN_ITEM")
        return {"gtin": g, "price_minor": row[0], "change_id": row[1]}

    def op_promotion_set(self, f) -> dict:
        """A promotion for every store: ``definition`` is a ``[[promotions]]`` table
        as the coupon gateway's ``promo.create`` takes it (checked there, by each
        store); the same promotion again: the change already made; another one under
        the same id: ``PROMO_EXISTS`` (end it and make a new one)."""
        import json

        from psycopg.types.json import Jsonb
        pid = f["promo_id"]
        d = {k: v for k, v in dict(f["definition"]).items() if k != "id"}
        if not isinstance(d.get("kind"), str):
            raise LanecoreError("definition.kind is required (a [[promotions]] table)",
                                code="BAD_PROMOTION", details={"field": "kind"})
        try:
            json.dumps(d, allow_nan=False)
        except (TypeError, ValueError):
            raise LanecoreError("the definition holds values JSON cannot carry",
                                code="BAD_PROMOTION", details={"field": "definition"}) from None
        vf, vu = f.get("valid_from"), f.get("valid_until")
        with self.pg.transaction():
            self.pg.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("promo:" + pid,))
            row = self.pg.execute("SELECT definition, valid_from, valid_until, change_id "
                                  "FROM hq_promotions WHERE promo_id = %s", (pid,)).fetchone()
            if row is not None:
                if (row[0], row[1], row[2]) == (d, vf, vu):
                    return {"promo_id": pid, "change_id": row[3], "changed": False}
                raise LanecoreError(f"a promotion {pid} exists already", code="PROMO_EXISTS",
                                    details={"promo_id": pid})
            cid = self._change("promotion", {})
            self._set_body(cid, "promotion", {"promo_id": pid, "definition": d,
                                              "valid_from": vf, "valid_until": vu})
            self.pg.execute("INSERT INTO hq_promotions (promo_id, definition, valid_from, "
                            "valid_until, change_id) VALUES (%s, %s, %s, %s, %s)",
                            (pid, Jsonb(d), vf, vu, cid))
        self._committed()
        return {"promo_id": pid, "change_id": cid, "changed": True}

    def op_promotion_end(self, f) -> dict:
        pid = f["promo_id"]
        with self.pg.transaction():
            self.pg.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("promo:" + pid,))
            row = self.pg.execute("SELECT ended_change_id FROM hq_promotions WHERE "
                                  "promo_id = %s", (pid,)).fetchone()
            if row is None:
                raise LanecoreError(f"no promotion {pid}", code="UNKNOWN_PROMOTION",
                                    details={"promo_id": pid})
            if row[0] is not None:
                return {"promo_id": pid, "change_id": row[0], "changed": False}
            cid = self._change("promotion", {})
            self._set_body(cid, "promotion", {"promo_id": pid, "ended": True})
            self.pg.execute("UPDATE hq_promotions SET ended_at = now(), ended_change_id = %s "
                            "WHERE promo_id = %s", (cid, pid))
        self._committed()
        return {"promo_id": pid, "change_id": cid, "changed": True}

    def op_catalog_push(self, f) -> dict:
        """Items for every store's catalogue, as the store's own price-list CSV
        (``docs/scan/catalog.md``: new items added, listed ones replaced): checked
        here first by the store's own importer on a scratch catalogue, so a store
        never receives a row its import would refuse (``BAD_CATALOG`` with the first
        problems); then sent to every store, which imports it into ``store.db``."""
        import tempfile

        from lanecore.core.scan import catalog
        with tempfile.TemporaryDirectory(prefix="lanecore-hq-catalog-") as scratch:
            path = Path(scratch) / "push.csv"
            path.write_text(f["csv"], encoding="utf-8")
            try:
                report = catalog.import_csv(Path(scratch), path)
            except LanecoreError as exc:
                raise LanecoreError(f"the catalogue push is refused: {exc.message}",
                                    code="BAD_CATALOG") from None
        if report.rows_bad or not report.rows_imported:
            raise LanecoreError(
                f"the catalogue push is refused: {report.rows_bad} bad rows of "
                f"{report.rows_read}", code="BAD_CATALOG",
                details={"errors": report.to_dict()["errors"][:5]})
        with self.pg.transaction():
            cid = self._change("catalog", {})
            self._set_body(cid, "catalog", {"csv": f["csv"], "rows": report.rows_imported})
        self._committed()
        return {"rows": report.rows_imported, "change_id": cid}

    #: What ``terminal.set``'s ``limits`` may hold (the store registry's own limits).
    TERMINAL_LIMITS = ("max_payment_minor", "max_day_minor", "methods")

    def op_terminal_set(self, f) -> dict:
        """A POS terminal's state or limits, in one store (``store``) or in every
        store that has it: ``enabled`` (false: its requests refused from the next
        one), ``limits`` (``max_payment_minor``, ``max_day_minor``: integer minor
        units or null for none; ``methods``: a list or null for every method),
        replacing the terminal's limits. Sent to the stores like a price."""
        limits = f.get("limits")
        if "enabled" not in f and limits is None:
            raise LanecoreError("terminal.set changes enabled, limits or both",
                                code="BAD_FIELD", details={"field": "enabled"})
        if limits is not None:
            unknown = set(limits) - set(self.TERMINAL_LIMITS)
            if unknown:
                raise LanecoreError(f"limits take {', '.join(self.TERMINAL_LIMITS)}",
                                    code="BAD_FIELD", details={"field": "limits"})
            for k in ("max_payment_minor", "max_day_minor"):
                v = limits.get(k)
                if v is not None and (type(v) is not int or not 0 < v <= 10 ** 12):
                    raise LanecoreError(f"limits.{k} is a positive integer (minor units) "
                                        "or null", code="BAD_FIELD",
                                        details={"field": f"limits.{k}"})
            m = limits.get("methods")
            if m is not None and not (isinstance(m, list) and m and
                                      all(isinstance(x, str) and x for x in m)):
                raise LanecoreError("limits.methods is a list of methods or null",
                                    code="BAD_FIELD", details={"field": "limits.methods"})
        body = {"terminal_id": f["terminal_id"], "store": f.get("store")}
        if "enabled" in f:
            body["enabled"] = bool(f["enabled"])
        if limits is not None:
            body["limits"] = {k: limits.get(k) for k in self.TERMINAL_LIMITS}
        with self.pg.transaction():
            cid = self._change("terminal", {})
            self._set_body(cid, "terminal", body)
        self._committed()
        return {**body, "change_id": cid}

    def op_totals(self, f) -> dict:
        with self.pg.transaction():
            return {"stores": totals(self.pg, f.get("store"))}

    def op_recon(self, f) -> dict:
        """One UTC day's reconciliation of every store's ledger against the bills its
        payment gateway fetched (:func:`lanecore.gateway.chain.books.recon`)."""
        from lanecore.gateway.chain import books
        with books.snapshot(self.pg):
            return books.recon(self.pg, f["date"])

    def op_clearing(self, f) -> dict:
        """What each manufacturer owes for its coupons redeemed in every store
        (:func:`lanecore.gateway.chain.books.clearing`)."""
        from lanecore.gateway.chain import books
        with books.snapshot(self.pg):
            return books.clearing(self.pg, since=f.get("since"), until=f.get("until"),
                                  issuer_id=f.get("issuer_id"))

    def op_stats(self, f) -> dict:
        with self.pg.transaction():
            events = self.pg.execute("SELECT COUNT(*) FROM hq_events").fetchone()[0]
            waiting = self.pg.execute("SELECT COUNT(*) FROM hq_changes WHERE published_at "
                                      "IS NULL").fetchone()[0]
            sales = sale_counts(self.pg)
        return {"uptime_s": round(time.monotonic() - self.started, 3), "events": events,
                "changes_waiting": waiting, "sales": sales, "requests": dict(self.counts),
                "errors": dict(self.errors)}

    def on_idle(self) -> None:
        super().on_idle()
        if self.pump is not None and self.pump.error is not None:
            raise HQError(f"HQ's NATS pump stopped: {self.pump.error}", code="PUMP_FAILED")

    def close(self) -> None:
        for c in (self.pg, self.con):
            try:
                c.close()
            except Exception:
                pass


def serve(db_url: str, nats_url: str, bind: str | None, data_dir=None, *,
          curve: bool = False) -> int:
    """Run HQ until SIGTERM/SIGINT: the ingest and publisher (always) and, with
    ``bind``, the ops."""
    import signal

    from lanecore.gateway.net import metrics as M
    pump = Pump(db_url, nats_url).start()
    pump.ready.wait(60)
    if pump.error is not None:
        raise HQError(f"HQ could not start: {pump.error}", code="HQ_FAILED")
    if not bind:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        M.ready(f"lanecore hq ingesting from {nats_url}", process="hq", bind=None,
                mode="none", nats=nats_url)
        while not stop.wait(0.5):
            if pump.error is not None:
                raise HQError(f"HQ's NATS pump stopped: {pump.error}", code="PUMP_FAILED")
        pump.stop()
        return 0
    import zmq

    from lanecore.gateway.net.security import ServerSecurity
    hq = HQ(db_url, data_dir, pump=pump)
    guard = ServerSecurity(hq.data_dir, zmq.Context.instance()) if curve else None

    def ready():
        mode = "curve" if guard else "dev-open"
        M.ready(f"lanecore hq serving on {bind} ({mode}), ingesting from {nats_url}",
                process="hq", bind=bind, mode=mode, nats=nats_url,
                data_dir=str(hq.data_dir))
    try:
        hq.serve(bind, security=guard, ready=ready)
    finally:
        if guard is not None:
            guard.stop()
        pump.stop()
        hq.close()
    return 0
