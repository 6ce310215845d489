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
pass). The verification service (``gateway/service.py``) and the payment gateway
(``gateway/payments/gateway.py``) are OpServers.
"""

from __future__ import annotations

import collections
import gc
import logging
import signal
import sqlite3
import time

import zmq

from lanecore.core.errors import LanecoreError

from lanecore.gateway.net import protocol as P
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
    at REAL NOT NULL, PRIMARY KEY (client, id))"""


def _set_queues(sock: zmq.Socket) -> None:
    """No linger at exit; deep queues, so a burst of lanes is queued, not dropped."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)


class OpServer:
    """The envelope and the loop; subclasses give ``_ops()`` and the store ``con``
    (an autocommit ``sqlite3.Connection``, where DURABLE replies are recorded)."""

    def __init__(self, con: sqlite3.Connection, *, publish=None) -> None:
        self.con = con
        con.execute(REQUESTS_SQL)
        self._replies: collections.OrderedDict[tuple, tuple[float, bytes]] = \
            collections.OrderedDict()
        self.publish = publish or (lambda topic, event: None)
        self.started = time.monotonic()
        self.counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.replays = 0
        self._running = False
        self.ops = {name: (fn, schema, kind) for name, fn, schema, kind in self._ops()}

    def _ops(self) -> list:
        """``[(name, fn, schema, kind)]``: ``fn(fields)`` for PURE/STATEFUL ops,
        ``fn(fields, after)`` for DURABLE ones (``after``: callables to run once the
        change is committed)."""
        return []

    def fast_path(self, op: str, req: dict, rid) -> bytes | None:
        """A subclass may answer a hot op here without the generic dispatch."""
        return None

    # ------------------------------------------------------------------------------
    # The one entry point
    # ------------------------------------------------------------------------------
    def handle_bytes(self, payload: bytes, client: str) -> bytes:
        """A reply frame for a request frame; never raises."""
        try:
            req = P.unpack(payload)
        except ProtocolError as exc:
            self.errors[exc.code] += 1
            return P.pack(P.error(None, exc.code, exc.message))
        return self._answer(req, client)

    def handle(self, req: dict, client: str) -> dict:
        """The reply map for a request map; never raises (tests and tools)."""
        return P.unpack(self._answer(req, client))

    def _answer(self, req: dict, client: str) -> bytes:
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
            if who is not None:
                if not (isinstance(who, str) and 0 < len(who) <= P.MAX_ID_LEN):
                    raise ProtocolError("BAD_FIELD", f"field 'client' must be a str of 1.."
                                                     f"{P.MAX_ID_LEN} characters")
                client = who
            key = (client, str(rid))
            self.counts[op] += 1
            fast = self.fast_path(op, req, rid)
            if fast is not None:
                return fast
            if kind is DURABLE:
                return self._durable(key, op, rid, fn, schema, req)
            if kind is RECORDED:
                return self._recorded(key, op, rid, fn, schema, req)
            if kind is STATEFUL:
                hit = self._replies.get(key)
                if hit is not None and time.monotonic() - hit[0] < REPLAY_WINDOW_S:
                    self.replays += 1
                    return hit[1]
            out = P.pack(P.ok(rid, **fn(P.check(req, schema))))
            if kind is STATEFUL:
                self._remember(key, out)
            return out
        except ProtocolError as exc:
            self.errors[exc.code] += 1
            reply = P.error(rid, exc.code, exc.message)
        except LanecoreError as exc:
            self.errors[exc.code] += 1
            reply = P.error(rid, exc.code, exc.message)
            reply["error"].update({k: v for k, v in exc.to_dict().items()
                                   if k not in ("code", "message")})
        except Exception as exc:  # the loop must never die on one request
            log.exception("request failed")
            self.errors["INTERNAL"] += 1
            return P.pack(P.error(rid, "INTERNAL",
                                  f"{type(exc).__name__} while serving this request"))
        out = P.pack(reply)
        # A retry of a request that failed for good gets the same answer; a failure
        # that may pass (a busy database, a worker restarting) is tried again.
        if key is not None and reply["error"]["code"] not in TRANSIENT:
            if kind is DURABLE or kind is RECORDED:
                self._record_failure(key, op, out)
            elif kind is STATEFUL:
                self._remember(key, out)
        return out

    def _record_failure(self, key, op, out: bytes) -> None:
        try:
            self.con.execute("INSERT OR IGNORE INTO service_requests (client, id, op, reply, "
                             "at) VALUES (?, ?, ?, ?, ?)", (*key, op, out, time.time()))
        except sqlite3.Error:
            log.exception("could not record a failed request")

    def _remember(self, key, out: bytes) -> None:
        self._replies[key] = (time.monotonic(), out)
        if len(self._replies) > REPLAY_MEMORY:
            self._replies.popitem(last=False)

    def _durable(self, key, op, rid, fn, schema, req) -> bytes:
        """Do a mutating request and record its reply in one transaction."""
        con = self.con
        fields = P.check(req, schema)
        after = []
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("SELECT reply FROM service_requests WHERE client = ? AND id = ?",
                              key).fetchone()
            if row is not None:
                con.execute("COMMIT")
                self.replays += 1
                return row[0]
            out = P.pack(P.ok(rid, **fn(fields, after)))
            con.execute("INSERT INTO service_requests (client, id, op, reply, at) "
                        "VALUES (?, ?, ?, ?, ?)", (*key, op, out, time.time()))
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
        row = self.con.execute("SELECT reply FROM service_requests WHERE client = ? AND "
                               "id = ?", key).fetchone()
        if row is not None:
            self.replays += 1
            return row[0]
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
                        "at) VALUES (?, ?, ?, ?, ?)", (*key, op, out, time.time()))
        if con.in_transaction:
            con.execute("COMMIT")
        return out

    def on_idle(self) -> None:
        """Called by the loop when no request waits (at least every 0.2 s): work a
        service does in the background (driving open payments to a final state)."""

    def prune(self, now: float | None = None) -> int:
        """Forget replies older than the replay window; returns how many rows went."""
        cutoff = (now or time.time()) - REPLAY_WINDOW_S
        cur = self.con.execute("DELETE FROM service_requests WHERE at < ?", (cutoff,))
        mono = time.monotonic()
        while self._replies:
            k, (t, _) = next(iter(self._replies.items()))
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
        sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        _set_queues(sock)
        if security is not None:
            security.server_socket(sock)
        sock.bind(bind)
        pub = self._open_events(ctx, events, bind=True)
        self._loop(sock, pub, security, ready=ready)

    def _open_events(self, ctx: zmq.Context, address: str | None, *, bind: bool):
        """The PUB socket events go out on (bound, or connected to a broker's), and
        ``self.publish`` sending through it; None when there is no address."""
        if not address:
            return None
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        (pub.bind if bind else pub.connect)(address)

        def publish(topic, event, _pub=pub):
            try:
                _pub.send_multipart([topic.encode(), P.pack(event)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass   # a slow subscriber loses events, never the service
        self.publish = publish
        return pub

    def _loop(self, sock, pub, security, *, ready=None, hello: bytes | None = None) -> None:
        """Poll and drain ``sock`` until stopped; prune the replay memory when idle."""
        self._running = True
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                installed.append((sig, signal.signal(sig, lambda *_: self.stop())))
            except ValueError:   # not the main thread
                pass
        self._settle_memory()
        if hello is not None:
            sock.send_multipart([hello])
        if ready is not None:
            ready()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        last_prune = time.time()
        last_idle = time.monotonic()
        try:
            while self._running:
                if poller.poll(200):
                    self._drain(sock, security)
                    if time.monotonic() - last_idle < 0.2:
                        continue           # under load, background work every 0.2 s
                elif time.time() - last_prune > 60:
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
        """Take what is waiting (up to MAX_DRAIN requests), answer it, send."""
        batch = []
        recv = sock.recv_multipart
        events = sock.getsockopt
        # ZMQ_EVENTS says whether more is waiting: no exception ends the drain
        while len(batch) < MAX_DRAIN and events(zmq.EVENTS) & zmq.POLLIN:
            batch.append(recv(zmq.NOBLOCK))
        for out in self.on_batch(batch, security):
            try:
                sock.send_multipart(out, zmq.NOBLOCK)
            except zmq.ZMQError:
                self.errors["UNDELIVERED"] += 1   # the client went away

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
        self._loop(sock, pub, None, hello=b"READY")

    def on_frames(self, frames: list[bytes], security=None) -> list[bytes] | None:
        """Reply frames for the frames of one request (ROUTER side)."""
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
        client = frames[0].hex()
        return head + [self.handle_bytes(payload, client)]

    def on_batch(self, batch: list[list[bytes]], security=None) -> list[list[bytes]]:
        """Reply frames for a batch of request frames, in arrival order."""
        out = []
        for frames in batch:
            reply = self.on_frames(frames, security)
            if reply is not None:
                out.append(reply)
        return out
