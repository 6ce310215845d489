"""A loopback TCP relay that can be cut and restored: a store's link to HQ, on one
machine.

``lanecore demo --stores N`` puts one relay between each store's link process and
HQ's NATS server, so "the store is cut off" is a real severed TCP path: ``cut()``
closes every relayed connection and stops accepting (the store's client sees its
connection drop and its reconnects refused, as behind a dead WAN link), ``restore()``
accepts again on the same port. Bytes are copied as they come; nothing is parsed.
"""

from __future__ import annotations

import selectors
import socket
import threading


class Relay:
    """``Relay(upstream_port).start()`` listens on 127.0.0.1:``port`` (0: a free one)
    and forwards each connection to 127.0.0.1:``upstream_port``."""

    def __init__(self, upstream_port: int, port: int = 0, *,
                 upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener: socket.socket | None = None
        self.port = port
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0            # accepted since start (progress and tests)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def start(self) -> "Relay":
        self.restore()
        return self

    def restore(self) -> None:
        """Accept again (on the same port once one was picked)."""
        with self._lock:
            if self._listener is not None:
                return
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", self.port))
            ls.listen(64)
            self.port = ls.getsockname()[1]
            self._listener = ls
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(ls,), daemon=True,
                                            name=f"relay-{self.port}")
            self._thread.start()

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones until ``restore()``."""
        with self._lock:
            ls, self._listener = self._listener, None
            self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if ls is not None:
            ls.close()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    stop = cut

    def _run(self, ls: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(ls, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    if key.data is None:
                        self._accept(ls, sel, peers)
                        continue
                    src = key.fileobj
                    dst = peers.get(src)
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if data and dst is not None:
                        try:
                            dst.sendall(data)
                            continue
                        except OSError:
                            pass
                    self._drop(src, sel, peers)
        finally:
            for s in list(peers):
                self._drop(s, sel, peers)
            sel.close()

    def _accept(self, ls, sel, peers) -> None:
        try:
            client, _ = ls.accept()
        except OSError:
            return
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, up):
            s.setblocking(True)
            s.settimeout(10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peers[client], peers[up] = up, client
        sel.register(client, selectors.EVENT_READ, "c")
        sel.register(up, selectors.EVENT_READ, "u")
        with self._lock:
            self._pairs.add((client, up))
        self.connections += 1

    def _drop(self, s, sel, peers) -> None:
        other = peers.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            peers.pop(x, None)
            try:
                sel.unregister(x)
            except (KeyError, ValueError, OSError):
                pass
            try:
                x.close()
            except OSError:
                pass
        with self._lock:
            self._pairs.discard((s, other))
            self._pairs.discard((other, s))
