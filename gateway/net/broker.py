"""``lanecore serve --workers N``: a ROUTER front for clients, N worker processes behind.

Each request goes to the worker its *pin* hashes to — the lane (or gate, basket,
device, order) it names — so a lane's filter state always lives in one process.
Workers are separate processes (each runs the single-process service loop on a
DEALER socket); the store database they share is SQLite in WAL mode, and requests
that change it carry their reply record in the same transaction, so a retry after a
worker died is answered, not repeated. A dead worker is respawned into its slot (its
lanes stay pinned to the slot and reload their configuration from the store); while
it starts, its requests are answered UNAVAILABLE, which clients retry.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import zmq

from lanecore.gateway.net import protocol as P
from lanecore.gateway.net.security import SecurityError, is_loopback
from lanecore.gateway.net.security import _Frames
from lanecore.gateway.net.server import (MAX_ROUTE_BYTES, PEER_RCVHWM, PEER_SNDHWM,
                                         ROUTE_MARK, bind_socket, principal_frame)

log = logging.getLogger("lanecore.broker")

#: Request fields that pin a request to a worker, in order of preference, and the
#: namespace each pins in: a gate is a lane (verify.order may name it either way).
PIN_FIELDS = (("lane", "lane"), ("gate", "lane"), ("basket", "basket"),
              ("device", "device"), ("order_no", "order_no"))

#: Bytes of requests the broker reads from its clients before it forwards replies again
#: (pinning a request unpacks it: a flood of 1 MiB requests must not hold replies up).
FRONT_READ_BYTES = 4 << 20


def pin_of(payload: bytes) -> bytes | None:
    """The value a request is pinned by, or None (bounded, never raises)."""
    try:
        req = P.unpack(payload)     # the service's limits, MAX_OBJECTS included
    except P.ProtocolError:         # garbage: any worker will say so
        return None
    for name, space in PIN_FIELDS:
        v = req.get(name)
        if isinstance(v, str):
            return f"{space}:{v}".encode()
    return None


def _unknown_key(payload: bytes) -> bytes:
    try:
        rid = P.request_id(P.unpack(payload))
    except (P.ProtocolError, AttributeError):
        rid = None
    return P.pack(P.error(rid, "AUTH_FAILED", "this key is not enrolled (any more)"))


class Worker:
    def __init__(self, slot: int):
        self.slot = slot
        self.identity = f"w{slot}".encode()
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.restarts = 0
        self.started = 0.0


class Broker:
    """The front of a multi-process service."""

    def __init__(self, data_dir, *, workers: int, region: str | None = None,
                 max_lanes: int = 4096, store_risk: str = "medium"):
        if not 1 <= workers <= 64:
            raise ValueError("--workers must be 1..64")
        self.data_dir = Path(data_dir)
        self.region = region
        self.max_lanes = max_lanes
        self.store_risk = store_risk
        self.workers = [Worker(k) for k in range(workers)]
        self.runtime = Path(tempfile.mkdtemp(prefix="lanecore-broker-"))
        self.backend = f"ipc://{self.runtime}/workers.ipc"
        self.event_sink = f"ipc://{self.runtime}/events.ipc"
        self._rr = 0
        self._running = False
        self.forwarded = 0
        self.unavailable = 0

    # ------------------------------------------------------------------------------
    def _spawn(self, w: Worker) -> None:
        cmd = [sys.executable, "-m", "lanecore", "worker", "--connect", self.backend,
               "--slot", str(w.slot), "--events-connect", self.event_sink,
               "--data-dir", str(self.data_dir), "--max-lanes", str(self.max_lanes),
               "--store-risk", self.store_risk]
        if self.region:
            cmd += ["--region", self.region]
        w.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        w.ready = False
        w.started = time.monotonic()
        log.info("worker %d started (pid %d)", w.slot, w.proc.pid)

    def _check_workers(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is not None:
                log.warning("worker %d (pid %d) exited with %s; respawning", w.slot,
                            w.proc.pid, w.proc.returncode)
                w.restarts += 1
                self._spawn(w)

    def _slot_for(self, frames: list[bytes], pin: bytes | None = None) -> Worker:
        if pin is None:
            pin = pin_of(frames[-1])
        if pin is None:
            pin = frames[0]   # unpinned requests: by client, so its retries meet its replies
        return self.workers[zlib.crc32(pin) % len(self.workers)]

    def status(self) -> list[dict]:
        return [{"slot": w.slot, "pid": w.proc.pid if w.proc else None, "ready": w.ready,
                 "restarts": w.restarts} for w in self.workers]

    # ------------------------------------------------------------------------------
    def serve(self, bind: str, *, events: str | None = None, security=None,
              ready=None, ctx: zmq.Context | None = None) -> None:
        ctx = ctx or zmq.Context.instance()
        front = ctx.socket(zmq.ROUTER)
        front.setsockopt(zmq.MAXMSGSIZE, P.max_wire_bytes(security))
        front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        front.setsockopt(zmq.LINGER, 0)
        front.setsockopt(zmq.SNDHWM, PEER_SNDHWM)    # per client, as a single service's
        front.setsockopt(zmq.RCVHWM, PEER_RCVHWM)
        if security is not None:
            security.server_socket(front)
        bind_socket(front, bind)
        back = ctx.socket(zmq.ROUTER)
        back.setsockopt(zmq.ROUTER_MANDATORY, 1)
        back.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a respawned worker takes its identity back
        back.setsockopt(zmq.LINGER, 0)
        back.setsockopt(zmq.SNDHWM, 100_000)
        back.setsockopt(zmq.RCVHWM, 100_000)
        back.bind(self.backend)
        sink = ctx.socket(zmq.XSUB)
        sink.bind(self.event_sink)
        pub = None
        if events:
            if security is None and not is_loopback(events):
                raise SecurityError(f"{events} is not loopback: events in clear go only "
                                    "to this machine; use --curve", code="PLAIN_NOT_ALLOWED")
            pub = ctx.socket(zmq.XPUB)
            pub.setsockopt(zmq.LINGER, 0)
            if security is not None:
                security.server_socket(pub)      # only enrolled keys subscribe
            bind_socket(pub, events)
        for w in self.workers:
            self._spawn(w)
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        poller.register(sink, zmq.POLLIN)
        if pub is not None:
            poller.register(pub, zmq.POLLIN)
        self._running = True
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                installed.append((sig, signal.signal(sig, lambda *_: self.stop())))
            except ValueError:
                pass
        announced = False
        last_check = 0.0
        try:
            while self._running:
                socks = dict(poller.poll(50))
                now = time.monotonic()
                if now - last_check > 0.05:
                    self._check_workers()
                    last_check = now
                if not announced and all(w.ready for w in self.workers):
                    announced = True
                    if ready is not None:
                        ready()
                if back in socks:
                    for _ in range(1000):
                        try:
                            frames = back.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._from_worker(front, frames)
                if front in socks:
                    recv = front.recv_multipart if security is None \
                        else security.receiver(front)
                    budget = FRONT_READ_BYTES    # then replies get their turn again
                    for _ in range(1000):
                        try:
                            frames = recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._route(front, back, frames, security)
                        budget -= len(frames[-1])
                        if budget < 0:
                            break
                if sink in socks:
                    while True:
                        try:
                            msg = sink.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if pub is not None:
                            pub.send_multipart(msg, zmq.NOBLOCK)
                if pub is not None and pub in socks:
                    while True:    # subscriptions travel upstream to the workers
                        try:
                            sink.send_multipart(pub.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
        finally:
            for sig, old in installed:
                signal.signal(sig, old)
            self._shutdown()
            for s in (front, back, sink, pub):
                if s is not None:
                    s.close(0)

    def _from_worker(self, front, frames: list[bytes]) -> None:
        """A worker's message: READY, or a reply to pass to its client."""
        wid, rest = frames[0], frames[1:]
        if rest == [b"READY"]:
            for w in self.workers:
                if w.identity == wid:
                    w.ready = True
            return
        try:
            front.send_multipart(rest, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # the client went away

    def _route(self, front, back, frames: list[bytes], security=None) -> None:
        if len(frames) < 2:
            return
        pin = None
        if len(frames) == 3 and frames[1][:1] == ROUTE_MARK and len(frames[1]) <= MAX_ROUTE_BYTES:
            pin = frames[1][1:]                   # the routing frame: the request unread
            user_id = getattr(frames, "user_id", None)
            frames = _Frames([frames[0], frames[2]])
            frames.user_id = user_id
        tag = []
        if security is not None:       # the worker learns who sent it from us alone
            principal = security.principal_of(frames)
            if principal is None:
                try:
                    front.send_multipart(frames[:-1] + [_unknown_key(frames[-1])],
                                         zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
                return
            tag = [principal_frame(principal)]
        w = self._slot_for(frames, pin)
        if w.ready:
            try:
                back.send_multipart([w.identity] + tag + list(frames), zmq.NOBLOCK)
                self.forwarded += 1
                return
            except zmq.ZMQError:
                w.ready = False   # not connected (yet, or any more)
        self.unavailable += 1
        try:
            req = P.unpack(frames[-1])
            rid = P.request_id(req)
        except P.ProtocolError:
            rid = None
        reply = P.pack(P.error(rid, "UNAVAILABLE", f"worker {w.slot} is restarting; "
                                                   "retry with the same id"))
        try:
            front.send_multipart(frames[:-1] + [reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def stop(self) -> None:
        self._running = False

    def _shutdown(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
        for name in ("workers.ipc", "events.ipc"):
            try:
                os.unlink(self.runtime / name)
            except OSError:
                pass
        try:
            os.rmdir(self.runtime)
        except OSError:
            pass
