"""``lanecore link``: one store's link to HQ over NATS JetStream (docs/chain.md).

**Store → HQ: the store's tables are its outbox.** The rows HQ needs are already
written durably, append-only, by the processes that own them: the payment ledger's
``charge_steps`` (a charge becoming ``paid``, a paid one ``reversed``) and its
``refunds`` in ``payments.db``; ``orders``, ``verdicts``, ``alarm_actions``,
``audits`` and ``device_events`` in the service's ``store.db``. The link reads the
new rows of each source after a cursor (the row id) kept in its own ``link.db``
(mode 0600), publishes each row as one message on ``lanecore.store.<store>.<kind>``
with the stable ``Nats-Msg-Id`` ``<store>/<kind>/<row id>``, waits for every PubAck
of the batch and only then moves the cursor. A kill -9 between the acks and the
cursor means the batch is published again: JetStream's duplicate window drops it,
and HQ applies each id once anyway. While NATS cannot be reached nothing leaves the
tables, the store sells on, and the link retries with back-off and logs its lag.

The providers' bills the payment gateway has fetched (``recon.run`` writes each to
``<payments dir>/bills/CHANNEL-DATE.csv``) are an outbox too: the file list. Each
file is one ``bill`` event with the id ``<store>/bill/<file name>/<first 16 hex of
its sha256>`` (the same file is the same event, a refetched bill that changed is a
new one); the (name, hash) pairs acked are kept in ``link.db`` (``bills_sent``).

Refunds are rows that change state in place (``created`` → ``sent`` → ``paid``), so
a refund is published once it is ``paid``: a new refund row is noted in ``link.db``
(``pending_refunds``) and looked at again on every pass until it is paid (published)
or failed (dropped).

Member points for the store's own sales accrue through HQ: an order with a member is
one ``sale`` event (id ``<store>/sale/<order no>``: ``order_no``, ``member``,
``total_minor``, ``currency``, ``at``) once it is ``paid`` or ``exited``, never when
``cancelled``. Orders change state in place too, so a new order with a member is
noted in ``link.db`` (``pending_sales``) and looked at again on every pass, like a
refund. HQ earns the member's points from it, once.

No secret goes out: a charge's payer and provider reference, its lines, a step's
detail, an order's signed QR (and its member, but in a ``sale``: the member id or
card number the order was opened with — never a phone number, such a sale is not
sent), an audit's shopper are left out; payment codes and card numbers are never in
the ledger.

**HQ → store.** A durable pull consumer ``store-<store>`` on HQ's stream (:data:`~lanecore.gateway.chain.streams.HQ_STREAM`) applies
each change to the store's own files and acks it afterwards: a price with
:func:`lanecore.core.scan.catalog.update_item` on ``store.db`` (its transaction bumps
``catalog_version``, so the running service reloads between requests), a promotion
with the coupon gateway's ``promo.create`` / ``promo.end`` (as the console's
promotions page does). Both are idempotent: the same price again changes nothing,
``PROMO_EXISTS`` and an ended promotion are "already done".

Crash points (``LANECORE_LINK_CRASH``): ``after_publish_before_cursor``,
``after_cursor``, ``after_apply_before_ack``.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import logging
import os
import re
import sqlite3
import time
from pathlib import Path

import msgpack

from lanecore.core.sqltxn import private_database
from lanecore.gateway.chain import streams as S

log = logging.getLogger("lanecore.link")

LINK_DB = "link.db"
CRASH_POINTS = ("after_publish_before_cursor", "after_cursor", "after_apply_before_ack")
#: Most rows one pass publishes per source.
BATCH = 500
#: How often the tables are read again when nothing was new (seconds).
POLL_S = 0.2
#: How long one publish waits for its PubAck (seconds).
ACK_TIMEOUT_S = 5.0
#: Back-off between attempts while NATS is unreachable: from .. to (seconds).
BACKOFF_S = (0.2, 5.0)
#: How often the lag is logged while the link is behind (seconds).
LAG_LOG_S = 10.0

_LINK_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cursors (source TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pending_refunds (
        row_id INTEGER PRIMARY KEY, refund_ref TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pending_sales (
        row_id INTEGER PRIMARY KEY, order_no TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS applied (
        msg_id TEXT PRIMARY KEY, kind TEXT NOT NULL, at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bills_sent (
        name TEXT NOT NULL, sha TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (name, sha))""",
)

#: Where the payment gateway keeps its copies of the providers' bills, in its data
#: directory (``BILLS_DIR`` of gateway/payments/gateway.py: ``recon.run`` writes
#: ``CHANNEL-DATE.csv`` there); each file is one ``bill`` event.
BILLS_DIR = "bills"
_BILL_FILE = re.compile(r"^([A-Za-z0-9_.-]{1,64})-(\d{4}-\d{2}-\d{2})\.csv$")
#: The columns of a bill line a ``bill`` event carries, in order: the bill's columns
#: (core/pay/recon.py ``BILL_COLUMNS``) less ``provider_ref`` — the link never sends
#: a provider's reference, and matching does not use it. No column holds payer data.
BILL_FIELDS = ("trade_time", "merchant_ref", "type", "amount_minor", "currency", "status",
               "fee_minor", "refund_ref")
#: A bill event larger than this is not sent (NATS's default max_payload is 1 MiB;
#: the link uses the server's own once connected).
BILL_MAX_BYTES = 1024 * 1024

# (source name, database, kind, SQL of the rows after a cursor: (row id, fields…), the
# field names). A charge step that is not a payment or a reversal of a paid charge
# moves the cursor but is not sent.
_SOURCES = (
    ("charge_steps", "payments", None,
     "SELECT s.step_id, s.to_state, s.from_state, s.at, c.merchant_ref, c.order_no, "
     "c.attempt, c.amount_minor, c.currency, c.method, c.channel, c.terminal, c.scope "
     "FROM charge_steps s JOIN charges c ON c.merchant_ref = s.merchant_ref "
     "WHERE s.step_id > ? ORDER BY s.step_id LIMIT ?",
     ("to_state", "from_state", "at", "merchant_ref", "order_no", "attempt",
      "amount_minor", "currency", "method", "channel", "terminal", "scope")),
    ("orders", "store", "order",
     "SELECT rowid, order_no, device, created_at, total_minor, currency, n_items "
     "FROM orders WHERE rowid > ? ORDER BY rowid LIMIT ?",
     ("order_no", "device", "at", "total_minor", "currency", "n_items")),
    ("verdicts", "store", "verdict",
     "SELECT verdict_id, at, gate, order_no, measured_g, verdict, z, expected_g, band_g "
     "FROM verdicts WHERE verdict_id > ? ORDER BY verdict_id LIMIT ?",
     ("at", "gate", "order_no", "measured_g", "verdict", "z", "expected_g", "band_g")),
    ("alarm_actions", "store", "alarm",
     "SELECT action_id, at, lane, order_no, action, reason, weight_g, staff, principal, "
     "finding FROM alarm_actions WHERE action_id > ? ORDER BY action_id LIMIT ?",
     ("at", "lane", "order_no", "action", "reason", "weight_g", "staff", "principal",
      "finding")),
    ("audits", "store", "audit",
     "SELECT rowid, order_no, kind, outcome, reason, probability, recorded_at, staff, "
     "finding FROM audits WHERE rowid > ? ORDER BY rowid LIMIT ?",
     ("order_no", "audit_kind", "outcome", "reason", "probability", "at", "staff",
      "finding")),
    ("device_events", "store", "fault",
     "SELECT event_id, at, lane, device, kind, code, message FROM device_events "
     "WHERE event_id > ? ORDER BY event_id LIMIT ?",
     ("at", "lane", "device", "event", "code", "message")),
)
#: A source's cursor moved (link.db).
_SET_CURSOR = ("INSERT INTO cursors (source, seq) VALUES (?, ?) "
               "ON CONFLICT (source) DO UPDATE SET seq = excluded.seq")
_CHARGE_KIND = {"paid": "payment", "reversed": "reversal"}
#: What is dropped from a member identifier before telling a phone number (``+``…)
#: from a card number or member id (as core/promo/members.py reads one).
_SEPARATORS = str.maketrans("", "", " -")


def _ro(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to a source database (None while it does not exist)."""
    if not path.is_file():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0,
                          isolation_level=None, check_same_thread=False)
    return con


def _count(con, sql: str) -> int:
    if con is None:
        return 0
    try:
        return con.execute(sql).fetchone()[0] or 0
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise


#: The kinds of event :func:`store_books` counts (and HQ's copy must match).
BOOK_KINDS = frozenset({"payment", "reversal", "refund", "order", "verdict", "alarm",
                        "audit", "fault"})


def store_books(payments_db: Path, store_db: Path | None = None) -> dict:
    """What one store's own files say, to compare with HQ's copy (``hq.totals``): its
    ledger's net (paid charges less paid refunds, minor units) and how many source
    rows of each kind HQ must hold once the link has caught up."""
    pay = _ro(payments_db)
    st = _ro(store_db) if store_db else None
    try:
        out = {
            "net_minor": _count(pay, "SELECT SUM(amount_minor) FROM charges WHERE state = "
                                     "'paid'")
            - _count(pay, "SELECT SUM(amount_minor) FROM refunds WHERE state = 'paid'"),
            "events": {
                "payment": _count(pay, "SELECT COUNT(*) FROM charge_steps WHERE to_state = "
                                       "'paid'"),
                "reversal": _count(pay, "SELECT COUNT(*) FROM charge_steps WHERE to_state = "
                                        "'reversed' AND from_state = 'paid'"),
                "refund": _count(pay, "SELECT COUNT(*) FROM refunds WHERE state = 'paid'"),
                "order": _count(st, "SELECT COUNT(*) FROM orders"),
                "verdict": _count(st, "SELECT COUNT(*) FROM verdicts"),
                "alarm": _count(st, "SELECT COUNT(*) FROM alarm_actions"),
                "audit": _count(st, "SELECT COUNT(*) FROM audits"),
                "fault": _count(st, "SELECT COUNT(*) FROM device_events"),
            },
        }
    finally:
        for c in (pay, st):
            if c is not None:
                c.close()
    out["events"] = {k: v for k, v in out["events"].items() if v}
    return out



class Outbox:
    """The store's source tables read after the cursors in ``link.db`` (blocking;
    called off the event loop)."""

    def __init__(self, store_id: str, data_dir: Path, payments_dir: Path | None = None,
                 link_db: Path | None = None) -> None:
        self.store_id = S.check_store_id(store_id)
        self.paths = {"store": Path(data_dir) / "store.db",
                      "payments": Path(payments_dir or data_dir) / "payments.db"}
        self.bills_dir = Path(payments_dir or data_dir) / BILLS_DIR
        self.max_payload = BILL_MAX_BYTES
        #: bill file name → ((size, mtime_ns), sha, acked or refused): a file not
        #: changed since is not read again
        self._bill_seen: dict[str, tuple[tuple, str, bool]] = {}
        path = Path(link_db or Path(data_dir) / LINK_DB)
        private_database(path)
        self.con = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=10.0,
                                   check_same_thread=False)
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("PRAGMA synchronous = FULL")
        for stmt in _LINK_SCHEMA:
            self.con.execute(stmt)
        self._src: dict[str, sqlite3.Connection | None] = {}

    def _db(self, name: str) -> sqlite3.Connection | None:
        con = self._src.get(name)
        if con is None:
            con = self._src[name] = _ro(self.paths[name])
        return con

    def cursor(self, source: str) -> int:
        row = self.con.execute("SELECT seq FROM cursors WHERE source = ?", (source,)).fetchone()
        return 0 if row is None else int(row[0])

    def _rows(self, db: str, sql: str, args: tuple) -> list:
        con = self._db(db)
        if con is None:
            return []
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):      # its process has not made it yet
                return []
            self._src.pop(db, None)              # opened again on the next pass
            con.close()
            raise

    def pending(self, limit: int = BATCH) -> list[tuple[str, int, list]]:
        """``[(source, last row id read, [(kind, row id, body)…])]`` of what is new."""
        out = []
        for source, db, kind, sql, names in _SOURCES:
            rows = self._rows(db, sql, (self.cursor(source), limit))
            if not rows:
                continue
            msgs = []
            for r in rows:
                body = dict(zip(names, r[1:]))
                k = kind
                if source == "charge_steps":
                    to, frm = body.pop("to_state"), body.pop("from_state")
                    k = _CHARGE_KIND.get(to)
                    if k is None or (k == "reversal" and frm != "paid"):
                        continue
                msgs.append((k, r[0], body))
            out.append((source, rows[-1][0], msgs))
        refunds = self._refunds(limit)
        if refunds is not None:
            out.append(refunds)
        sales = self._sales(limit)
        if sales is not None:
            out.append(sales)
        bills = self._bills(limit)
        if bills is not None:
            out.append(bills)
        return out

    def _bills(self, limit: int):
        """The bill files whose (name, hash) was not acked yet, as ``bill`` events
        (the file list is the outbox): ``("bills", [(name, sha)…], msgs)`` or None."""
        from lanecore.core.pay import recon
        try:
            entries = sorted(os.scandir(self.bills_dir), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:      # unreadable: the other sources go on being sent
            if not getattr(self, "_bills_warned", False):
                self._bills_warned = True
                log.error("link %s: cannot read the bills in %s: %s", self.store_id,
                          self.bills_dir, exc)
            return None
        done, msgs = [], []
        for e in entries:
            m = _BILL_FILE.match(e.name)
            if m is None or not e.is_file(follow_symlinks=False):
                continue
            stamp = seen = None
            try:
                st = e.stat(follow_symlinks=False)
                stamp = (st.st_size, st.st_mtime_ns)
                seen = self._bill_seen.get(e.name)
                if seen is not None and seen[0] == stamp and seen[2]:
                    continue                  # unchanged since it was acked (or refused)
                data = Path(e.path).read_bytes()
            except FileNotFoundError:         # replaced or removed meanwhile
                continue
            except OSError as exc:            # unreadable: logged once per version
                if seen is None or seen[0] != stamp:
                    log.error("link %s: cannot read bill %s: %s", self.store_id, e.name, exc)
                    self._bill_seen[e.name] = (stamp, "", True)
                continue
            sha = hashlib.sha256(data).hexdigest()[:16]
            if self.con.execute("SELECT 1 FROM bills_sent WHERE name = ? AND sha = ?",
                                (e.name, sha)).fetchone() is not None:
                self._bill_seen[e.name] = (stamp, sha, True)
                continue
            channel, date = m.group(1), m.group(2)
            try:
                rows = recon.parse_bill(csv.DictReader(io.StringIO(data.decode("utf-8"))),
                                        channel)
            except (UnicodeDecodeError, recon.ReconError) as exc:
                log.error("link %s: bill %s cannot be read, not sent: %s", self.store_id,
                          e.name, exc)
                self._bill_seen[e.name] = (stamp, sha, True)
                continue
            body = {"channel": channel, "date": date, "file": e.name,
                    "fetched_at": st.st_mtime, "columns": list(BILL_FIELDS),
                    "rows": [[getattr(r, c) for c in BILL_FIELDS] for r in rows]}
            size = len(msgpack.packb(body)) + 256
            if size > self.max_payload:
                log.error("link %s: bill %s is %d bytes, over the NATS server's max_payload "
                          "%d: not sent (raise max_payload)", self.store_id, e.name, size,
                          self.max_payload)
                self._bill_seen[e.name] = (stamp, sha, True)
                continue
            self._bill_seen[e.name] = (stamp, sha, False)
            msgs.append(("bill", f"{e.name}/{sha}", body))
            done.append((e.name, sha))
            if len(msgs) >= limit:
                break
        return ("bills", done, msgs) if msgs else None

    def _note_pending(self, source: str, insert_sql: str, rows: list, last) -> None:
        """Rows that change state in place (refunds, orders) noted as pending and the
        source's cursor moved past them, in one transaction of ``link.db``."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            self.con.executemany(insert_sql, rows)
            self.con.execute(_SET_CURSOR, (source, last))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def _refunds(self, limit: int):
        """New refund rows noted as pending; the pending ones now paid, to send."""
        last = self.cursor("refunds")
        new = self._rows("payments", "SELECT rowid, refund_ref FROM refunds WHERE rowid > ? "
                         "ORDER BY rowid LIMIT ?", (last, limit))
        if new:
            self._note_pending("refunds", "INSERT OR IGNORE INTO pending_refunds (row_id, "
                               "refund_ref) VALUES (?, ?)", new, new[-1][0])
        waiting = self.con.execute("SELECT row_id FROM pending_refunds ORDER BY row_id "
                                   "LIMIT ?", (limit,)).fetchall()
        if not waiting:
            return None
        ids = [w[0] for w in waiting]
        marks = ",".join("?" * len(ids))
        rows = self._rows(
            "payments",
            "SELECT r.rowid, r.state, r.refund_ref, r.merchant_ref, c.order_no, "
            "r.amount_minor, r.currency, r.channel, r.done_at, r.updated_at FROM refunds r "
            f"JOIN charges c ON c.merchant_ref = r.merchant_ref WHERE r.rowid IN ({marks})",
            tuple(ids))
        msgs, settled = [], []
        for row_id, state, ref, mref, order_no, amount, cur, channel, done_at, upd in rows:
            if state == "paid":
                msgs.append(("refund", ref, {
                    "refund_ref": ref, "merchant_ref": mref, "order_no": order_no,
                    "amount_minor": amount, "currency": cur, "channel": channel,
                    "at": done_at or upd}))
                settled.append(row_id)
            elif state == "failed":
                settled.append(row_id)
        if not settled:
            return None
        return ("pending_refunds", settled, msgs)

    def _sales(self, limit: int):
        """Orders with a member, as ``sale`` events once paid (member points accrue
        through HQ): each new order with a member is noted in ``pending_sales`` and
        looked at again on every pass until it is ``paid`` or ``exited`` (sent) or
        ``cancelled`` (dropped); a ``submitted`` one waits. A member given by phone
        number is a personal datum and does not leave the store (dropped, logged
        without the number)."""
        last = self.cursor("sales")
        new = self._rows("store", "SELECT rowid, order_no, member FROM orders WHERE "
                         "rowid > ? ORDER BY rowid LIMIT ?", (last, limit))
        if new:
            self._note_pending("sales", "INSERT OR IGNORE INTO pending_sales (row_id, "
                               "order_no) VALUES (?, ?)",
                               [(r[0], r[1]) for r in new if r[2] is not None], new[-1][0])
        msgs, settled, after = [], [], -1
        while len(msgs) < limit:        # every waiting order, a chunk at a time
            ids = [w[0] for w in self.con.execute(
                "SELECT row_id FROM pending_sales WHERE row_id > ? ORDER BY row_id LIMIT ?",
                (after, BATCH)).fetchall()]
            if not ids:
                break
            after = ids[-1]
            rows = {r[0]: r[1:] for r in self._rows(
                "store", "SELECT rowid, status, order_no, member, total_minor, currency, "
                f"updated_at FROM orders WHERE rowid IN ({','.join('?' * len(ids))})",
                tuple(ids))}
            for row_id in ids:
                row = rows.get(row_id)
                if row is None or row[0] == "cancelled":
                    settled.append(row_id)
                    continue
                status, order_no, member, total, cur, at = row
                if status not in ("paid", "exited"):
                    continue
                settled.append(row_id)
                if member.translate(_SEPARATORS).startswith("+"):
                    log.warning("link %s: sale %s: the member was given by phone number, "
                                "which does not leave the store: not sent (no points at "
                                "HQ)", self.store_id, order_no)
                    continue
                msgs.append(("sale", order_no, {
                    "order_no": order_no, "member": member, "total_minor": total,
                    "currency": cur, "at": at}))
                if len(msgs) >= limit:
                    break
        if not settled:
            return None
        return ("pending_sales", settled, msgs)

    def advance(self, source: str, last) -> None:
        """Move ``source``'s cursor past ``last`` (after every message was acked)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            if source == "pending_refunds":
                self.con.executemany("DELETE FROM pending_refunds WHERE row_id = ?",
                                     [(i,) for i in last])
            elif source == "pending_sales":
                self.con.executemany("DELETE FROM pending_sales WHERE row_id = ?",
                                     [(i,) for i in last])
            elif source == "bills":
                self.con.executemany("INSERT OR IGNORE INTO bills_sent (name, sha, at) "
                                     "VALUES (?, ?, ?)",
                                     [(name, sha, time.time()) for name, sha in last])
            else:
                self.con.execute(_SET_CURSOR, (source, last))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        if source == "bills":
            for name, sha in last:
                seen = self._bill_seen.get(name)
                if seen is not None and seen[1] == sha:
                    self._bill_seen[name] = (seen[0], sha, True)

    def lag(self) -> int:
        """Rows not yet sent (an estimate: source rows after the cursors)."""
        n = 0
        for source, db, _kind, sql, _names in _SOURCES:
            table = {"charge_steps": ("charge_steps", "step_id"), "orders": ("orders", "rowid"),
                     "verdicts": ("verdicts", "verdict_id"),
                     "alarm_actions": ("alarm_actions", "action_id"),
                     "audits": ("audits", "rowid"),
                     "device_events": ("device_events", "event_id")}[source]
            rows = self._rows(db, f"SELECT COUNT(*) FROM {table[0]} WHERE {table[1]} > ?",
                              (self.cursor(source),))
            n += rows[0][0] if rows else 0
        n += self.con.execute("SELECT COUNT(*) FROM pending_refunds").fetchone()[0]
        n += self.con.execute("SELECT COUNT(*) FROM pending_sales").fetchone()[0]
        n += sum(1 for seen in self._bill_seen.values() if not seen[2])
        return n

    # HQ's changes applied here -----------------------------------------------------
    def was_applied(self, msg_id: str) -> bool:
        return self.con.execute("SELECT 1 FROM applied WHERE msg_id = ?",
                                (msg_id,)).fetchone() is not None

    def note_applied(self, msg_id: str, kind: str) -> None:
        self.con.execute("INSERT OR IGNORE INTO applied (msg_id, kind, at) VALUES (?, ?, ?)",
                         (msg_id, kind, time.time()))

    def close(self) -> None:
        for con in self._src.values():
            if con is not None:
                con.close()
        self.con.close()


class Applier:
    """HQ's changes applied to this store (blocking; off the event loop)."""

    def __init__(self, data_dir: Path, coupons: str | None = None, coupons_curve=None, *,
                 store_id: str | None = None, payments_db: Path | None = None,
                 terminals=None) -> None:
        self.store_db = Path(data_dir) / "store.db"
        self.coupons, self.coupons_curve = coupons, coupons_curve
        self._client = None
        self.store_id = store_id
        #: the payment gateway's ledger database, whose terminal registry HQ's
        #: ``terminal`` changes update, and the registry's opener (handed in by the
        #: command line: ``gateway/payments/terminals.py`` ``open_registry``; chain
        #: does not import the payment gateway)
        self.payments_db, self.terminals = payments_db, terminals

    def apply(self, kind: str, body: dict) -> str:
        """Apply one change; what happened (``applied``, ``unchanged``, ``skipped: …``).
        Raises on a failure worth retrying (the message is then not acked)."""
        from lanecore.core.errors import LanecoreError
        if kind == "price":
            from lanecore.core.scan import catalog
            try:
                out = catalog.update_item(self.store_db, body["gtin"],
                                          price_minor=int(body["price_minor"]))
            except LanecoreError as exc:
                if exc.code in ("UNKNOWN_ITEM", "BAD_GTIN", "BAD_PRICE"):
                    return f"skipped: {exc.code}"      # not sold here / never valid
                raise
            return "applied" if out["changed"] else "unchanged"
        if kind == "promotion":
            if not self.coupons:
                return "skipped: no coupon gateway (--coupons)"
            from lanecore.gateway.net.client import ServiceError
            c = self._coupons()
            try:
                if body.get("ended"):
                    c.call("promo.end", promo_id=body["promo_id"])
                else:
                    fields = {"definition": {**body["definition"], "id": body["promo_id"]}}
                    if body.get("valid_from") is not None:
                        fields["valid_from"] = body["valid_from"]
                    if body.get("valid_until") is not None:
                        fields["valid_until"] = body["valid_until"]
                    c.call("promo.create", **fields)
            except ServiceError as exc:
                if exc.code in ("PROMO_EXISTS", "UNKNOWN_PROMOTION"):
                    return f"unchanged: {exc.code}"
                if exc.code == "BAD_PROMOTION":
                    return f"skipped: {exc.code} {exc.message}"
                self._drop_client()
                raise
            return "applied"
        if kind == "terminal":
            return self._terminal(body)
        if kind == "catalog":
            return self._catalog(body)
        return f"skipped: unknown kind {kind}"

    def _catalog(self, body: dict) -> str:
        """HQ's items imported into ``store.db`` with the store's own importer (an
        upsert in one transaction that bumps ``catalog_version``: the running service
        reloads), from a private scratch file this link makes and removes."""
        import tempfile

        from lanecore.core.scan import catalog
        with tempfile.TemporaryDirectory(prefix=".hq-catalog-",
                                         dir=self.store_db.parent) as scratch:
            path = Path(scratch) / "push.csv"
            path.write_text(body["csv"], encoding="utf-8")
            report = catalog.import_csv(self.store_db.parent, path)
        return (f"applied: {report.rows_imported} items"
                + (f", {report.rows_bad} refused" if report.rows_bad else ""))

    def _terminal(self, body: dict) -> str:
        """A POS terminal's state or limits in this store's payment gateway registry
        (read by the gateway on every request: in force from the next one)."""
        from lanecore.core.errors import LanecoreError
        if body.get("store") and body["store"] != self.store_id:
            return "skipped: another store's terminal"
        if self.terminals is None or self.payments_db is None or \
                not Path(self.payments_db).is_file():
            return "skipped: no payment gateway registry here"
        con, reg = self.terminals(self.payments_db)
        try:
            tid = body["terminal_id"]
            if reg.get(tid) is None:
                return "skipped: UNKNOWN_TERMINAL"
            if "limits" in body:
                reg.set_limits(tid, **body["limits"])
            if "enabled" in body:
                (reg.enable if body["enabled"] else reg.disable)(tid)
        except LanecoreError as exc:
            if exc.code in ("UNKNOWN_TERMINAL", "BAD_LIMIT", "BAD_TERMINAL_ID"):
                return f"skipped: {exc.code}"
            raise
        finally:
            con.close()
        return "applied"

    def _coupons(self):
        if self._client is None:
            from lanecore.gateway.net.client import Client
            self._client = Client(self.coupons, timeout_s=2.0, retries=2,
                                  curve=self.coupons_curve)
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        self._drop_client()


class Link:
    """The link's two loops on one asyncio loop (:meth:`run`)."""

    def __init__(self, store_id: str, data_dir, nats_url: str, *, payments_dir=None,
                 coupons: str | None = None, coupons_curve=None, terminals=None) -> None:
        self.store_id = S.check_store_id(store_id)
        self.data_dir = Path(data_dir)
        self.nats_url = nats_url
        self.outbox = Outbox(store_id, self.data_dir, payments_dir and Path(payments_dir))
        self.applier = Applier(self.data_dir, coupons, coupons_curve, store_id=self.store_id,
                               payments_db=self.outbox.paths["payments"],
                               terminals=terminals)
        self.crash = S.CrashPlan("LANECORE_LINK_CRASH", CRASH_POINTS)
        self.sent = 0
        self.applied = 0
        self._stop = asyncio.Event()

    async def _connect(self):
        import nats
        delay = BACKOFF_S[0]
        since = time.monotonic()
        last_log = 0.0
        while not self._stop.is_set():
            try:
                nc = await nats.connect(self.nats_url, connect_timeout=2,
                                        allow_reconnect=True, max_reconnect_attempts=-1,
                                        reconnect_time_wait=0.5, name=f"link-{self.store_id}",
                                        error_cb=self._nats_error)
                js = nc.jetstream()
                await S.ensure_streams(js)
                if nc.max_payload:
                    self.outbox.max_payload = nc.max_payload
                return nc, js
            except Exception as exc:
                now = time.monotonic()
                if now - last_log >= LAG_LOG_S:
                    last_log = now
                    lag = await asyncio.to_thread(self.outbox.lag)
                    log.warning("link %s: NATS %s unreachable for %.0f s (%s); %d row(s) "
                                "waiting, selling on", self.store_id, self.nats_url,
                                now - since, exc, lag)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
        return None, None

    @staticmethod
    async def _nats_error(exc) -> None:
        log.debug("nats: %s", exc)

    async def run(self) -> None:
        nc, js = await self._connect()
        if nc is None:
            return
        log.info("link %s connected to %s", self.store_id, self.nats_url)
        tasks = [asyncio.create_task(self._publish_loop(js)),
                 asyncio.create_task(self._apply_loop(js))]
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()
        finally:
            for t in (*tasks, stop):
                t.cancel()
            try:
                await nc.close()
            except Exception:
                pass

    def stop(self) -> None:
        self._stop.set()

    # store → HQ ---------------------------------------------------------------------
    async def publish_once(self, js) -> int:
        """One pass over the sources: publish, wait for the acks, move the cursors.
        Returns the number of messages acked; raises when NATS did not ack."""
        n = 0
        for source, last, msgs in await asyncio.to_thread(self.outbox.pending):
            if msgs:
                await asyncio.gather(*(
                    js.publish(S.store_subject(self.store_id, kind),
                               msgpack.packb({"store": self.store_id, "kind": kind,
                                              "id": row_id, **body}),
                               timeout=ACK_TIMEOUT_S, stream=S.STORES_STREAM,
                               headers={"Nats-Msg-Id": S.store_msg_id(self.store_id,
                                                                      kind, row_id)})
                    for kind, row_id, body in msgs))
                self.crash.maybe("after_publish_before_cursor")
            await asyncio.to_thread(self.outbox.advance, source, last)
            if msgs:
                self.crash.maybe("after_cursor")
            n += len(msgs)
        self.sent += n
        return n

    async def _publish_loop(self, js) -> None:
        delay = BACKOFF_S[0]
        down_since = None
        last_log = 0.0
        while not self._stop.is_set():
            try:
                n = await self.publish_once(js)
            except Exception as exc:     # NATS not acking, a busy store: back off, again
                if not (isinstance(exc, (asyncio.TimeoutError, OSError, sqlite3.Error))
                        or type(exc).__module__.startswith("nats")):
                    raise
                now = time.monotonic()
                down_since = down_since or now
                if now - last_log >= LAG_LOG_S:
                    last_log = now
                    try:
                        lag = await asyncio.to_thread(self.outbox.lag)
                    except sqlite3.Error:
                        lag = -1
                    log.warning("link %s: HQ not acking for %.0f s (%s: %s); %d row(s) "
                                "waiting, selling on", self.store_id, now - down_since,
                                type(exc).__name__, exc, lag)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            if down_since is not None:
                log.info("link %s: HQ reachable again after %.0f s", self.store_id,
                         time.monotonic() - down_since)
            down_since, delay = None, BACKOFF_S[0]
            if n == 0:
                await asyncio.sleep(POLL_S)

    # HQ → store ---------------------------------------------------------------------
    async def _subscribe(self, js):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        cfg = ConsumerConfig(durable_name=S.consumer_name(self.store_id),
                             ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                             ack_wait=10.0, max_ack_pending=1000,
                             filter_subject=S.HQ_SUBJECTS)
        return await js.pull_subscribe(S.HQ_SUBJECTS, durable=S.consumer_name(self.store_id),
                                       stream=S.HQ_STREAM, config=cfg)

    async def _apply_loop(self, js) -> None:
        import nats.errors
        sub = None
        delay = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                if sub is None:
                    sub = await self._subscribe(js)
                try:
                    msgs = await sub.fetch(64, timeout=1.0)
                except (asyncio.TimeoutError, nats.errors.TimeoutError):
                    continue
                for msg in msgs:
                    await self._apply_one(msg)
                delay = BACKOFF_S[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("link %s: applying HQ's changes: %s: %s (again in %.1f s)",
                            self.store_id, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])

    async def _apply_one(self, msg) -> None:
        msg_id = (msg.headers or {}).get("Nats-Msg-Id") or f"seq/{msg.metadata.sequence.stream}"
        if await asyncio.to_thread(self.outbox.was_applied, msg_id):
            await msg.ack()
            return
        change = msgpack.unpackb(msg.data)
        kind = msg.subject.rsplit(".", 1)[-1]
        what = await asyncio.to_thread(self.applier.apply, kind, change)
        await asyncio.to_thread(self.outbox.note_applied, msg_id, kind)
        self.applied += 1
        log.info("link %s: HQ %s %s: %s", self.store_id, kind,
                 change.get("gtin") or change.get("promo_id"), what)
        self.crash.maybe("after_apply_before_ack")
        await msg.ack()

    def close(self) -> None:
        self.outbox.close()
        self.applier.close()


def main(store_id: str, data_dir, nats_url: str, *, payments_dir=None, coupons=None,
         coupons_curve=None, terminals=None) -> int:
    """Run the link until SIGTERM/SIGINT."""
    import signal
    from lanecore.gateway.net import metrics as M
    link = Link(store_id, data_dir, nats_url, payments_dir=payments_dir, coupons=coupons,
                coupons_curve=coupons_curve, terminals=terminals)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, link.stop)
        M.ready(f"lanecore link {store_id} to {nats_url}, data in {link.data_dir}",
                process="link", store=store_id, nats=nats_url, data_dir=str(link.data_dir))
        await link.run()
    try:
        asyncio.run(go())
    finally:
        link.close()
    return 0
