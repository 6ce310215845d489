"""What every lanecore ZeroMQ process shares: the envelope, retries, the socket loop.

An :class:`OpServer` answers MessagePack requests ``{op, id, client?, …fields}`` on a
ROUTER (or, behind a broker, a DEALER) socket: it checks the envelope and each op's
fields (``gateway/net/protocol.py``), dispatches to the op, turns every failure into a
structured error with a stable code, and never lets one request kill the loop. Ops
declare how a retry with the same id is answered (``kind``):

* ``PURE`` — a read, or an op that is idempotent by its own business key: simply
  answered again;
* ``STATEFUL`` — remembered in memory (a weighing frame is not fed twice);
* ``DURABLE`` — its reply is recorded in ``service_requests`` in the same SQLite
  transaction as its change, so a retry after a crash gets the same reply;
* ``RECORDED`` — an op that keeps its own transactions (a payment: nothing may hold
  a transaction across a provider's answer) and is idempotent by its own key; its
  reply is recorded once it is final (the op returns ``_final: False`` while it is
  not), and a retry gets the record. The op may leave its last transaction open: it
  is committed with the record (rolled back if the op fails).

Final errors are remembered like replies; ``TRANSIENT`` ones are not (a retry may
pass).

Who may call what: every op declares the roles allowed to call it (the 5th element
of an ``_ops()`` entry, ``gateway/net/identity.py``); a process refuses to start with
an op that declares none. The caller is a :class:`~lanecore.gateway.net.identity.
Principal` the transport proved (a CurveZMQ key, a terminal's HMAC); without
authentication it is the development principal ``DEV``. Retries are bound to that
identity: a reply is recorded under (identity, request id) with a digest of the op
and body, and the same id with another op or body is ``IDEMPOTENCY_MISMATCH``. Only
the development principal's requests may name their ``client``. The verification service (``gateway/service.py``) and the payment gateway
(``gateway/payments/gateway.py``) are OpServers.

A subclass may answer some requests later than it reads them: it overrides
:meth:`OpServer.on_io` (with :meth:`~OpServer.io_sockets`, :meth:`~OpServer.io_ready`),
which the loop then calls after every drain and on every quiet poll, polling those
sockets too (the payment gateway's provider links: its charges in flight, their ledger
writes grouped). A server that does not override it runs the loop as before.
"""

from __future__ import annotations

import collections
import functools
import gc
import hashlib
import logging
import signal
import sqlite3
import time

import zmq

from lanecore.core.errors import LanecoreError
from lanecore.core.sqlschema import migrate
from lanecore.gateway.net import protocol as P
from lanecore.gateway.net.identity import DEV, ROLES, Principal, forbidden
from lanecore.gateway.net.protocol import ProtocolError

log = logging.getLogger("lanecore.service")

#: How long a reply is kept for a retry with the same id (seconds).
REPLAY_WINDOW_S = 600.0
#: Most replies of read-only requests kept in memory.
REPLAY_MEMORY = 50_000
#: Most requests taken off the socket before answering them (a service may handle
#: some of them together, e.g. weighing frames in one kernel call).
MAX_DRAIN = 512
#: Errors a retry may not meet again: these replies are not replayed.
TRANSIENT = frozenset(["INTERNAL", "UNAVAILABLE", "DB_BUSY", "DB_ERROR"])

#: What an op does, for retries (above).
PURE, STATEFUL, DURABLE, RECORDED = "pure", "stateful", "durable", "recorded"

REQUESTS_SQL = """CREATE TABLE IF NOT EXISTS service_requests (
    client TEXT NOT NULL, id TEXT NOT NULL, op TEXT NOT NULL, reply BLOB NOT NULL,
    at REAL NOT NULL, digest BLOB, PRIMARY KEY (client, id))"""

#: Fields that are the envelope, not the body, of a request (left out of its digest).
_ENVELOPE = frozenset({"id", "client"})


def request_digest(op: str, req: dict) -> bytes:
    """What identifies a request's content for idempotency: the op and every field
    but the envelope, canonically packed (keys sorted at the top level)."""
    body = sorted((k, v) for k, v in req.items() if k not in _ENVELOPE and k != "op")
    return hashlib.blake2b(P.pack([op, body]), digest_size=16).digest()


#: The first bytes of the frame a broker puts before a request it forwards to a worker
#: to say who sent it (no client routing id can start with a zero byte and be longer
#: than 5 bytes: libzmq's own are 5 bytes, a client's may not start with zero).
PRINCIPAL_TAG = b"\x00LCP"


#: A DEALER request may carry a routing frame before its request frame (docs/
#: protocol.md, "Routing frame"): a zero byte, then what the request is pinned by,
#: ``lane:NAME`` (``gate`` pins as ``lane``), ``basket:…``, ``device:…``,
#: ``order_no:…`` — so a broker routes it without reading the request. A service
#: without a broker simply drops it.
ROUTE_MARK = b"\x00"
#: Longest routing frame, marker included.
MAX_ROUTE_BYTES = 256


def route_frame(space: str, value: str) -> bytes:
    """The routing frame of a request pinned by ``space:value`` (e.g. ``lane``, ``L7``)."""
    return ROUTE_MARK + f"{space}:{value}".encode()


def _unrouted(frames: list) -> list:
    """``[identity, routing frame, request]`` as ``[identity, request]``; any other
    frames as they are."""
    if len(frames) == 3 and frames[1][:1] == ROUTE_MARK and len(frames[1]) <= MAX_ROUTE_BYTES:
        return [frames[0], frames[2]]
    return frames


def principal_frame(principal: Principal) -> bytes:
    return PRINCIPAL_TAG + P.pack({"id": principal.id, "roles": sorted(principal.roles),
                                   "via": principal.via})


def _principal_from_frame(frame: bytes) -> Principal | None:
    try:
        m = P.unpack(frame[len(PRINCIPAL_TAG):])
        return Principal(m["id"], frozenset(m["roles"]), m["via"])
    except Exception:  # a broker of ours wrote it; anything else is nobody
        return None


def memory_digest(op: str, req: dict) -> int:
    """The digest of a STATEFUL request, whose reply is kept in memory only (a weighing
    frame): Python's hash of its fields, cheaper than :func:`request_digest` on the
    hottest path; a field that cannot be hashed falls back to the canonical digest."""
    try:
        return hash((op, tuple(sorted((k, v) for k, v in req.items() if k not in _ENVELOPE))))
    except TypeError:
        return hash(request_digest(op, req))


def _mismatch(op: str, rid) -> bytes:
    return P.pack(P.error(rid, "IDEMPOTENCY_MISMATCH",
                          f"request id {str(rid)[:64]!r} was already used for another "
                          f"request (op or fields differ); use a new id for a new "
                          f"{op[:64]} request"))


#: Per-peer resources of the socket loop (docs/security.md, "Resources"). A peer is
#: one connection: its ROUTER identity (behind a broker, the client's connection to
#: the broker). Each drain reads up to MAX_READ messages (MAX_READ_BYTES) into
#: per-peer queues and answers a batch taking from each peer in turn at most
#: PEER_DRAIN requests and PEER_DRAIN_BYTES (deficit round robin: a larger request
#: waits for the credit of later drains, so a peer sending 1 MiB requests gets one
#: every 16th drain); a peer whose queue already holds PEER_INFLIGHT requests or
#: PEER_QUEUE_BYTES is answered BUSY without being read (and without being kept:
#: memory stays bounded however fast it sends).
PEER_DRAIN = 64
PEER_DRAIN_BYTES = 64 << 10
PEER_INFLIGHT = 1024
PEER_QUEUE_BYTES = 8 << 20
MAX_READ = 2 * MAX_DRAIN
MAX_READ_BYTES = 1 << 20
#: Messages ZeroMQ queues per peer on a ROUTER (its high-water marks count messages).
#: Requests: 64 of at most 1 MiB, then the peer's connection is pushed back (TCP or
#: ipc flow control; nothing is lost). Replies: 128; replies past that wait in the
#: loop (PEER_REPLY_BYTES of them per peer, sent as the peer reads), and past those a
#: reply to a peer that does not read is dropped (``UNDELIVERED``).
PEER_RCVHWM = 64
PEER_SNDHWM = 128
PEER_REPLY_BYTES = 8 << 20
#: Peers whose whole share of a drain is this small are answered before the others
#: (a hello is not kept waiting behind another peer's 64 requests or 1 MiB).
LIGHT_REQUESTS = 4
LIGHT_BYTES = 32 << 10
#: The most credit a peer saves up: room for any one request. A message larger still
#: (several frames of up to 1 MiB each: answered BAD_FRAMES) is taken once the credit
#: is full, and its peer's credit goes below zero: it waits as long as its size says,
#: never for ever.
_MAX_CREDIT = P.MAX_MESSAGE_BYTES + PEER_DRAIN_BYTES
#: A BUSY reply carries the request's id when the request is this small (reading it
#: is cheap); a larger one is answered with id null.
BUSY_PEEK_BYTES = 512


#: Socket option and flag values as plain ints (pyzmq's enums cost on the hot path).
_EVENTS, _POLLIN, _RCVMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE)
_NOBLOCK, _NOBLOCK_MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)


def _receiver(sock):
    """``sock.recv_multipart`` without its enum arithmetic (the frames, as bytes)."""
    recv, get = sock.recv, sock.get

    def recv_frames(flags):
        frames = [recv(flags)]
        while get(_RCVMORE):
            frames.append(recv(flags))
        return frames
    return recv_frames


def _set_queues(sock: zmq.Socket) -> None:
    """No linger at exit. A ROUTER's pipes are per peer: PEER_RCVHWM requests and
    PEER_SNDHWM replies each (the loop's per-peer queues hold what it has read,
    counted in bytes). A worker's DEALER has one pipe, to its broker, carrying every
    client: deep, so a burst of lanes is queued, not dropped."""
    sock.setsockopt(zmq.LINGER, 0)
    router = sock.getsockopt(zmq.TYPE) == zmq.ROUTER
    sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM if router else 100_000)
    sock.setsockopt(zmq.RCVHWM, PEER_RCVHWM if router else 100_000)



def bind_socket(sock, address: str) -> None:
    """``sock.bind(address)``, or LanecoreError: ``BAD_ADDRESS`` for an address that
    is none (``security.check_endpoint``), ``CANNOT_BIND`` naming the address that
    could not be bound (in use, no such interface, no permission)."""
    from lanecore.gateway.net.security import check_endpoint
    check_endpoint(address)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        raise LanecoreError(f"cannot bind {address}: {exc}", code="CANNOT_BIND") from exc


class OpServer:
    """The envelope and the loop; subclasses give ``_ops()`` and the store ``con``
    (an autocommit ``sqlite3.Connection``, where DURABLE replies are recorded)."""

    def __init__(self, con: sqlite3.Connection, *, publish=None) -> None:
        self.con = con
        cols = {row[1] for row in con.execute("PRAGMA table_info(service_requests)")}
        if cols and "digest" not in cols:
            con.execute("ALTER TABLE service_requests ADD COLUMN digest BLOB")  # older files
        # version 1: the table as it is (core/sqlschema.py; a store's own on a chain's
        # shared database)
        migrate(con, "requests", ((REQUESTS_SQL,),), tables=("service_requests",))
        self._replies: collections.OrderedDict[tuple, tuple[float, bytes, bytes]] = \
            collections.OrderedDict()
        self.publish = publish or (lambda topic, event: None)
        self.started = time.monotonic()
        self.counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        #: error replies per (op, code) (gateway/net/metrics.py; op '-' when unknown)
        self.op_errors: collections.Counter = collections.Counter()
        #: events published, per topic
        self.published: collections.Counter = collections.Counter()
        #: ``lanecore_request_seconds`` when ``--metrics`` is on (metrics.enable)
        self.latency = None
        self._latency_children: dict = {}
        self._peers: dict[bytes, list] = {}
        self.replays = 0
        self._running = False
        self.ops: dict[str, tuple] = {}
        #: The roles allowed to call each op (``docs/security.md`` has the table).
        self.op_roles: dict[str, frozenset[str]] = {}
        for entry in self._ops():
            if len(entry) != 5 or not isinstance(entry[4], frozenset) or not entry[4] \
                    or not entry[4] <= set(ROLES):
                raise TypeError(f"{type(self).__name__}: op {entry[0]!r} declares no roles "
                                "(each _ops() entry ends with the roles allowed to call it)")
            name, fn, schema, kind, allowed = entry
            self.ops[name] = (fn, schema, kind)
            self.op_roles[name] = allowed
        #: The caller of the request being answered (ops consult it for finer rules).
        self.principal: Principal = DEV
        #: Set when serving behind a broker, which names each request's caller.
        self.behind_broker = False
        #: Seconds the loop waits before its next drain (set by a subclass after a
        #: drain of many small requests, e.g. weighing frames: one later, larger batch
        #: costs less CPU than many small ones); the loop resets it.
        self.coalesce_s = 0.0

    def _ops(self) -> list:
        """``[(name, fn, schema, kind, roles)]``: ``fn(fields)`` for PURE/STATEFUL ops,
        ``fn(fields, after)`` for DURABLE ones (``after``: callables to run once the
        change is committed); ``roles``: who may call it (``identity.roles(...)``)."""
        return []

    def fast_path(self, op: str, req: dict, rid) -> bytes | None:
        """A subclass may answer a hot op here without the generic dispatch."""
        return None

    # ------------------------------------------------------------------------------
    # Metrics (gateway/net/metrics.py; read from the scrape thread)
    # ------------------------------------------------------------------------------
    def queue_depth(self) -> tuple[int, int]:
        """(requests read and not yet answered, connections they came on)."""
        try:
            queues = list(self._peers.values())
        except RuntimeError:          # changed while read: the next scrape sees it
            return 0, 0
        return sum(len(q[0]) for q in queues), len(queues)

    def metrics_db(self) -> sqlite3.Connection | None:
        """A read-only connection to the store file, for the scrape thread."""
        if not getattr(self, "_db_path", ""):
            return None
        return sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True, timeout=1.0)

    def metric_families(self, db: sqlite3.Connection | None):
        """The process's own gauges (a subclass yields prometheus metric families)."""
        return iter(())

    def remember_db_path(self) -> None:
        """Note the store file's path (on the serving thread, before scrapes start)."""
        row = self.con.execute("PRAGMA database_list").fetchone()
        self._db_path = (row[2] if row else "") or ""

    # ------------------------------------------------------------------------------
    # The one entry point
    # ------------------------------------------------------------------------------
    def handle_bytes(self, payload: bytes, client: str,
                     principal: Principal | None = None) -> bytes:
        """A reply frame for a request frame; never raises. ``principal``: the caller
        the transport authenticated (None: the development principal, whose request
        may name its ``client``)."""
        try:
            req = P.unpack(payload)
        except ProtocolError as exc:
            self.errors[exc.code] += 1
            return P.pack(P.error(None, exc.code, exc.message))
        return self._answer(req, client, principal)

    def handle(self, req: dict, client: str, principal: Principal | None = None) -> dict:
        """The reply map for a request map; never raises (tests and tools)."""
        return P.unpack(self._answer(req, client, principal))

    def _answer(self, req: dict, client: str, principal: Principal | None = None) -> bytes:
        if self.latency is None:
            return self._answer_timed(req, client, principal)
        t0 = time.perf_counter()
        out = self._answer_timed(req, client, principal)
        op = req.get("op") if isinstance(req, dict) else None
        if not isinstance(op, str) or op not in self.ops:
            op = "-"
        child = self._latency_children.get(op)
        if child is None:
            child = self._latency_children[op] = self.latency.labels(op)
        child.observe(time.perf_counter() - t0)
        return out

    def _op_error(self, op, code: str) -> None:
        self.errors[code] += 1
        self.op_errors[(op if isinstance(op, str) and op in self.ops else "-", code)] += 1

    def _answer_timed(self, req: dict, client: str,
                      principal: Principal | None = None) -> bytes:
        rid = P.request_id(req)
        key = None
        kind = PURE
        op = None
        try:
            if "id" not in req:
                raise ProtocolError("MISSING_FIELD", "field 'id' (str or int) is required")
            if rid is None:
                raise ProtocolError("BAD_FIELD", f"field 'id' must be a str of at most "
                                                 f"{P.MAX_ID_LEN} characters or an int")
            op = req.get("op")
            if op is None:
                raise ProtocolError("MISSING_FIELD", "field 'op' (str) is required")
            if not isinstance(op, str):
                raise ProtocolError("BAD_FIELD", "field 'op' must be a str")
            entry = self.ops.get(op)
            if entry is None:
                raise ProtocolError("UNKNOWN_OP", f"unknown op {op[:64]!r}; 'hello' lists "
                                                  "the ops")
            fn, schema, kind = entry
            who = req.get("client")
            if who is not None and not (isinstance(who, str) and 0 < len(who) <= P.MAX_ID_LEN):
                raise ProtocolError("BAD_FIELD", f"field 'client' must be a str of "
                                                 f"1..{P.MAX_ID_LEN} characters")
            if principal is None:
                principal = DEV
                if who is not None:
                    client = who
            else:
                client = principal.id      # its own retries only, whatever it says
            self.principal = principal
            allowed = self.op_roles[op]
            if not principal.may(allowed):
                raise forbidden(principal, op, allowed)
            key = (client, str(rid))
            self.counts[op] += 1
            fast = self.fast_path(op, req, rid)
            if fast is not None:
                return fast
            if kind is DURABLE:
                return self._durable(key, op, rid, fn, schema, req)
            if kind is RECORDED:
                return self._recorded(key, op, rid, fn, schema, req)
            digest = None
            if kind is STATEFUL:
                digest = memory_digest(op, req)
                hit = self._replies.get(key)
                if hit is not None and time.monotonic() - hit[0] < REPLAY_WINDOW_S:
                    if hit[2] != digest:
                        self._op_error(op, "IDEMPOTENCY_MISMATCH")
                        return _mismatch(op, rid)
                    self.replays += 1
                    return hit[1]
            out = P.pack(P.ok(rid, **fn(P.check(req, schema))))
            if kind is STATEFUL:
                self._remember(key, out, digest)
            return out
        except Exception as exc:  # the loop must never die on one request
            return self.failure_reply(exc, op, rid, key, kind, req)

    def failure_reply(self, exc: Exception, op, rid, key, kind, req) -> bytes:
        """The reply frame for a request that raised ``exc`` (called in the except
        block): a ProtocolError or LanecoreError is its code (recorded for a DURABLE
        or RECORDED op unless TRANSIENT or FORBIDDEN, remembered for a STATEFUL one);
        anything else is INTERNAL, logged, not recorded. ``key``: (client, id), or
        None before the envelope was read. A server that answers some requests later
        than it reads them (the payment gateway's grouped charges) uses it too."""
        if isinstance(exc, ProtocolError):
            self._op_error(op, exc.code)
            reply = P.error(rid, exc.code, exc.message)
        elif isinstance(exc, LanecoreError):
            self._op_error(op, exc.code)
            reply = P.error(rid, exc.code, exc.message)
            reply["error"].update({k: v for k, v in exc.to_dict().items()
                                   if k not in ("code", "message")})
        else:
            log.exception("request failed", extra={"op": op, "id": rid})
            self._op_error(op, "INTERNAL")
            return P.pack(P.error(rid, "INTERNAL",
                                  f"{type(exc).__name__} while serving this request"))
        out = P.pack(reply)
        # A retry of a request that failed for good gets the same answer; a failure
        # that may pass (a busy database, a worker restarting) is tried again.
        if key is not None and reply["error"]["code"] not in TRANSIENT \
                and reply["error"]["code"] != "FORBIDDEN":
            if kind is DURABLE or kind is RECORDED:
                self._record_failure(key, op, out, request_digest(op, req))
            elif kind is STATEFUL:
                self._remember(key, out, memory_digest(op, req))
        return out

    def _record_failure(self, key, op, out: bytes, digest: bytes) -> None:
        try:
            self.con.execute("INSERT OR IGNORE INTO service_requests (client, id, op, reply, "
                             "at, digest) VALUES (?, ?, ?, ?, ?, ?)",
                             (*key, op, out, time.time(), digest))
        except sqlite3.Error:
            log.exception("could not record a failed request")

    def _remember(self, key, out: bytes, digest: int) -> None:
        self._replies[key] = (time.monotonic(), out, digest)
        if len(self._replies) > REPLAY_MEMORY:
            self._replies.popitem(last=False)

    def _recorded_reply(self, key, op, rid, digest: bytes) -> bytes | None:
        """The recorded reply of ``key`` (a retry), IDEMPOTENCY_MISMATCH when the id was
        used for another request, None when there is none."""
        row = self.con.execute("SELECT reply, op, digest FROM service_requests WHERE "
                               "client = ? AND id = ?", key).fetchone()
        if row is None:
            return None
        if row[1] != op or (row[2] is not None and row[2] != digest):
            self.errors["IDEMPOTENCY_MISMATCH"] += 1
            return _mismatch(op, rid)
        self.replays += 1
        return row[0]

    def _durable(self, key, op, rid, fn, schema, req) -> bytes:
        """Do a mutating request and record its reply in one transaction."""
        con = self.con
        fields = P.check(req, schema)
        digest = request_digest(op, req)
        after = []
        con.execute("BEGIN IMMEDIATE")
        try:
            recorded = self._recorded_reply(key, op, rid, digest)
            if recorded is not None:
                con.execute("COMMIT")
                return recorded
            out = P.pack(P.ok(rid, **fn(fields, after)))
            con.execute("INSERT INTO service_requests (client, id, op, reply, at, digest) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (*key, op, out, time.time(), digest))
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        for action in after:    # events and in-memory effects, once the change is safe
            action()
        return out

    def _recorded(self, key, op, rid, fn, schema, req) -> bytes:
        """Run an op that keeps its own transactions; record its reply once final."""
        digest = request_digest(op, req)
        recorded = self._recorded_reply(key, op, rid, digest)
        if recorded is not None:
            return recorded
        con = self.con
        try:
            result = fn(P.check(req, schema))
        except BaseException:
            if con.in_transaction:      # a last step the op left open: undone
                con.execute("ROLLBACK")
            raise
        final = result.pop("_final", True)
        out = P.pack(P.ok(rid, **result))
        # The op may leave its last step's transaction open: it commits together with
        # the record of its reply (one disk flush instead of two).
        if final:
            if not con.in_transaction:
                con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT OR IGNORE INTO service_requests (client, id, op, reply, "
                        "at, digest) VALUES (?, ?, ?, ?, ?, ?)",
                        (*key, op, out, time.time(), digest))
        if con.in_transaction:
            con.execute("COMMIT")
        return out

    def io_sockets(self):
        """Sockets besides the request socket the loop polls for :meth:`on_io` (a
        subclass that overrides ``on_io``; e.g. the payment gateway's provider links)."""
        return ()

    def io_ready(self) -> bool:
        """Whether :meth:`on_io` has work now (the loop then does not wait)."""
        return False

    def on_io(self, send) -> None:
        """Called by the loop after each drain when a subclass overrides it: work on
        its own sockets, and replies it answers late, sent with ``send(frames_list)``
        (the payment gateway's grouped charges). The base does nothing, and a server
        that does not override it runs the plain loop."""

    def on_idle(self) -> None:
        """Called by the loop when no request waits (at least every 0.2 s): work a
        service does in the background (driving open payments to a final state)."""

    def prune(self, now: float | None = None) -> int:
        """Forget replies older than the replay window; returns how many rows went."""
        cutoff = (now or time.time()) - REPLAY_WINDOW_S
        cur = self.con.execute("DELETE FROM service_requests WHERE at < ?", (cutoff,))
        mono = time.monotonic()
        while self._replies:
            t = next(iter(self._replies.values()))[0]   # (time, reply, digest)
            if mono - t < REPLAY_WINDOW_S:
                break
            self._replies.popitem(last=False)
        return cur.rowcount

    # ------------------------------------------------------------------------------
    # The socket loop
    # ------------------------------------------------------------------------------
    def serve(self, bind: str, *, events: str | None = None, security=None,
              ready=None, ctx: zmq.Context | None = None) -> None:
        """Answer requests on ``bind`` until SIGTERM/SIGINT (or ``stop()``)."""
        ctx = ctx or zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.MAXMSGSIZE, P.max_wire_bytes(security))
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        _set_queues(sock)
        if security is not None:
            security.server_socket(sock)
        bind_socket(sock, bind)
        pub = self._open_events(ctx, events, bind=True, security=security)
        self._loop(sock, pub, security, ready=ready)

    def _open_events(self, ctx: zmq.Context, address: str | None, *, bind: bool,
                     security=None):
        """The PUB socket events go out on (bound, or connected to a broker's), and
        ``self.publish`` sending through it; None when there is no address. A server
        with CurveZMQ publishes with CURVE too (only enrolled keys subscribe); a plain
        PUB binds only to loopback or ipc (PLAIN_NOT_ALLOWED otherwise)."""
        if not address:
            return None
        if bind and security is None:
            from lanecore.gateway.net.security import SecurityError, is_loopback
            if not is_loopback(address):
                raise SecurityError(f"{address} is not loopback: events in clear go only "
                                    "to this machine; use --curve", code="PLAIN_NOT_ALLOWED")
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        if security is not None:
            security.server_socket(pub)
        if bind:
            bind_socket(pub, address)
        else:
            pub.connect(address)

        def publish(topic, event, _pub=pub, _count=self.published):
            _count[topic] += 1
            try:
                _pub.send_multipart([topic.encode(), P.pack(event)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass   # a slow subscriber loses events, never the service
        self.publish = publish
        return pub

    def _loop(self, sock, pub, security, *, ready=None, hello: bytes | None = None) -> None:
        """Poll and drain ``sock`` until stopped (at once again while requests wait in
        the per-peer queues, every 10 ms while replies are held); prune the replay
        memory every minute."""
        self._running = True
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                installed.append((sig, signal.signal(sig, lambda *_: self.stop())))
            except ValueError:   # not the main thread
                pass
        P.warm_up()
        self._settle_memory()
        if hello is not None:
            sock.send_multipart([hello])
        if ready is not None:
            ready()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        last_prune = time.time()
        last_idle = time.monotonic()
        #: peer identity -> [deque of (frames, bytes) read and not yet answered, bytes]
        self._peers: dict[bytes, list] = {}
        #: peer identity -> [deque of reply frames its full pipe did not take, bytes]
        self._held: dict[bytes, list] = {}
        waiting, held = self._peers, self._held
        # a server with work of its own in the loop (io_sockets, on_io): the payment
        # gateway's provider links; the others take the plain path below
        with_io = type(self).on_io is not OpServer.on_io
        io: tuple = ()
        send = functools.partial(self._send_all, sock)
        try:
            while self._running:
                if with_io:
                    now_io = tuple(self.io_sockets())
                    if now_io != io:
                        poller = zmq.Poller()
                        poller.register(sock, zmq.POLLIN)
                        for s in now_io:
                            poller.register(s, zmq.POLLIN)
                        io = now_io
                    work = self.io_ready()
                    busy = poller.poll(0 if waiting or work else 10 if held else 200) \
                        or waiting or held or work
                    if busy:
                        self._drain(sock, security)
                    self.on_io(send)              # also on a quiet poll: its deadlines
                    if busy and time.monotonic() - last_idle < 0.2:
                        continue
                elif poller.poll(0 if waiting else 10 if held else 200) or waiting or held:
                    if self.coalesce_s:     # a stream of small requests: take more at once
                        time.sleep(self.coalesce_s)
                        self.coalesce_s = 0.0
                    self._drain(sock, security)
                    if time.monotonic() - last_idle < 0.2:
                        continue           # under load, background work every 0.2 s
                if time.time() - last_prune > 60:
                    self.prune()
                    last_prune = time.time()
                self.on_idle()
                last_idle = time.monotonic()
        finally:
            for sig, old in installed:
                signal.signal(sig, old)
            sock.close(0)
            if pub is not None:
                pub.close(0)

    def stop(self) -> None:
        self._running = False

    def _drain(self, sock, security) -> None:
        """Read what is waiting (MAX_READ messages, MAX_READ_BYTES) into per-peer
        queues, BUSY past a peer's bounds; take up to MAX_DRAIN requests, each waiting
        peer's oldest in turn (PEER_DRAIN, and PEER_DRAIN_BYTES of credit a turn);
        answer the peers that asked little first, then the rest; send. A peer served
        and still waiting goes to the back of the line."""
        peers = self._peers
        if self._held:
            self._flush(sock)
        # with CurveZMQ, frames that carry who sent them (the ZAP User-Id)
        recv = _receiver(sock) if security is None else security.receiver(sock)
        events = sock.get
        tagged = getattr(self, "behind_broker", False)
        busy = None
        n = 0
        unread = MAX_READ_BYTES
        # ZMQ_EVENTS says whether more is waiting: no exception ends the reading
        while n < MAX_READ and unread > 0 and events(_EVENTS) & _POLLIN:
            frames = recv(_NOBLOCK)
            n += 1
            size = sum(map(len, frames))
            unread -= size
            ident = frames[0]
            if tagged and ident[:4] == PRINCIPAL_TAG and len(frames) > 2:
                ident = frames[1]      # after the broker's principal frame: the client
            peer = peers.get(ident)
            if peer is None:
                peers[ident] = [collections.deque(((frames, size),)), size, 0]
            elif len(peer[0]) < PEER_INFLIGHT and peer[1] + size <= PEER_QUEUE_BYTES:
                peer[0].append((frames, size))
                peer[1] += size
            elif busy is None:                   # its reply only: the request goes
                busy = [self._busy(frames)]
            else:
                busy.append(self._busy(frames))
        if busy is not None:
            self._send_all(sock, busy)
        light: list = []     # peers that asked little: answered first
        heavy: list = []
        room = MAX_DRAIN
        for ident in list(peers):
            if room <= 0:
                break                      # the peers not reached stay at the front
            peer = peers.pop(ident)
            queue = peer[0]
            if len(queue) == 1 and peer[1] <= LIGHT_BYTES:   # the common case (a lane)
                light.append(queue[0][0])
                room -= 1
                continue
            credit = start = min(peer[2] + PEER_DRAIN_BYTES, _MAX_CREDIT)
            mine = []
            for _ in range(min(len(queue), PEER_DRAIN, room)):
                frames, size = queue[0]
                if size > credit and credit < _MAX_CREDIT:
                    break                  # it waits for the credit of later drains
                queue.popleft()
                credit -= size
                mine.append(frames)
            peer[1] -= start - credit
            room -= len(mine)
            if queue:
                peer[2] = credit
                peers[ident] = peer        # to the back of the line
                heavy += mine
            elif len(mine) <= LIGHT_REQUESTS and start - credit <= LIGHT_BYTES:
                light += mine
            else:
                heavy += mine
        if light:
            self._send_all(sock, self.on_batch(light, security))
        if heavy:
            self._send_all(sock, self.on_batch(heavy, security))

    def _send_all(self, sock, replies) -> None:
        """Send reply frames; a reply whose peer's pipe is full waits in ``_held``
        (in order: behind it, that peer's later replies too)."""
        held = self._held
        send = sock.send
        for out in replies:
            if held and out[0] in held:
                self._hold(out)
                continue
            try:
                if len(out) == 2:       # a DEALER's reply: int flags, no enum arithmetic
                    send(out[0], _NOBLOCK_MORE)
                    send(out[1], _NOBLOCK)
                else:
                    sock.send_multipart(out, zmq.NOBLOCK)
            except zmq.Again:
                self._hold(out)                   # the peer reads slower than it asks
            except zmq.ZMQError:
                self.errors["UNDELIVERED"] += 1   # the peer went away

    def _hold(self, out: list) -> None:
        size = sum(map(len, out))
        h = self._held.get(out[0])
        if h is None:
            self._held[out[0]] = [collections.deque((out,)), size]
        elif h[1] + size <= PEER_REPLY_BYTES:
            h[0].append(out)
            h[1] += size
        else:
            self.errors["UNDELIVERED"] += 1       # it reads none of its replies

    def _flush(self, sock) -> None:
        """Send the held replies their peers' pipes take now."""
        held = self._held
        for ident in list(held):
            h = held[ident]
            queue = h[0]
            while queue:
                try:
                    sock.send_multipart(queue[0], zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:              # the peer went away
                    self.errors["UNDELIVERED"] += len(queue)
                    queue.clear()
                    break
                h[1] -= sum(map(len, queue.popleft()))
            if not queue:
                del held[ident]

    def _busy(self, frames: list) -> list:
        """The reply to a request not read because its peer is over its bounds."""
        self.errors["BUSY"] += 1
        if getattr(self, "behind_broker", False) and frames[0][:4] == PRINCIPAL_TAG \
                and len(frames) > 2:
            frames = frames[1:]                          # the broker's principal frame
        frames = _unrouted(frames)
        if len(frames) >= 3 and frames[1] == b"":     # REQ: [identity, "", request]
            head, payload = frames[:2], frames[2]
        else:
            head, payload = frames[:1], frames[1] if len(frames) > 1 else b""
        rid = None
        if len(payload) <= BUSY_PEEK_BYTES:
            try:
                rid = P.request_id(P.unpack(payload))
            except ProtocolError:
                pass
        return head + [P.pack(P.error(rid, "BUSY", (
            f"this connection has {PEER_INFLIGHT:,} requests or {PEER_QUEUE_BYTES >> 20} "
            f"MiB waiting at the service; this one was not read: retry with the same id "
            f"after a pause")))]

    @staticmethod
    def _settle_memory() -> None:
        """Everything loaded so far lives as long as the process: keep the cyclic GC
        from walking it again and again (a full collection of the imports and the
        catalogue took ~80 ms, a pause every lane would feel)."""
        gc.collect()
        gc.freeze()

    def serve_worker(self, connect: str, slot: int, *, events_connect: str | None = None,
                     ctx: zmq.Context | None = None) -> None:
        """Answer requests a broker forwards (``lanecore serve --workers N``)."""
        ctx = ctx or zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"w{slot}".encode())
        _set_queues(sock)
        sock.connect(connect)
        pub = self._open_events(ctx, events_connect, bind=False)
        self.worker_slot = slot
        self.behind_broker = True        # the broker says who sent each request
        self._loop(sock, pub, None, hello=b"READY")

    def caller_of(self, frames: list[bytes], security):
        """``(frames, principal, known)``: the request's frames without the broker's
        principal frame, its caller (None: the development principal) and whether the
        caller is known (False: an unenrolled or removed key — refuse it)."""
        if self.behind_broker and frames and frames[0][:4] == PRINCIPAL_TAG \
                and len(frames[0]) > 5:
            principal = _principal_from_frame(frames[0])
            return _unrouted(frames[1:]), principal, principal is not None
        if security is None:
            return _unrouted(frames), None, True
        principal = security.principal_of(frames)
        return _unrouted(frames), principal, principal is not None

    def on_frames(self, frames: list[bytes], security=None) -> list[bytes] | None:
        """Reply frames for the frames of one request (ROUTER side)."""
        frames, principal, known = self.caller_of(frames, security)
        if len(frames) == 2:                          # DEALER: [identity, request]
            head, payload = frames[:1], frames[1]
        elif len(frames) == 3 and frames[1] == b"":   # REQ: [identity, "", request]
            head, payload = frames[:2], frames[2]
        elif len(frames) >= 2:
            self.errors["BAD_FRAMES"] += 1
            # A REQ client's delimiter goes back with the reply, or its socket drops it.
            head = frames[:2] if frames[1] == b"" else frames[:1]
            return head + [P.pack(P.error(None, "BAD_FRAMES",
                                              f"a request is one frame; got {len(frames) - 1}"))]
        else:
            return None
        if not known:
            return head + [self.unknown_caller(payload)]
        return head + [self.handle_bytes(payload, frames[0].hex(), principal)]

    def unknown_caller(self, payload: bytes) -> bytes:
        """The reply to a request from a key that is no longer enrolled (removed while
        its connection was open): AUTH_FAILED, nothing done."""
        self.errors["AUTH_FAILED"] += 1
        try:
            rid = P.request_id(P.unpack(payload))
        except (ProtocolError, AttributeError):
            rid = None
        return P.pack(P.error(rid, "AUTH_FAILED", "this key is not enrolled (any more)"))

    def on_batch(self, batch: list[list[bytes]], security=None) -> list[list[bytes]]:
        """Reply frames for a batch of request frames, in arrival order."""
        out = []
        for frames in batch:
            reply = self.on_frames(frames, security)
            if reply is not None:
                out.append(reply)
        return out
