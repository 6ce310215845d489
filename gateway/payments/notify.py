"""Dynamic QR (issue 17, Build 4): the payment gateway's side of a merchant-presented
QR — the record of each presented order, and the HTTPS listener that takes the
wallets' payment notifications. ``docs/pay/payments.md`` "Dynamic QR".

A presented QR is a ledger charge of method ``qr`` (``pay.present``,
``gateway/payments/gateway.py``): written and marked ``sent`` before the wallet's
``precreate``/native order is asked for (write-ahead), then left ``unknown`` (the
shopper has not scanned yet) until the wallet says how it ended. The gateway learns
that two ways, whichever comes first:

* the **notification**: the wallet POSTs a signed message to the ``notify_url`` given
  at precreate, ``{[notify] public_url}/notify/<channel>``. :class:`NotifyListener`
  (threads, HTTPS) hands the body to the channel's connector ``notification()``,
  which verifies the wallet's signature; a verified result is queued for the
  gateway's loop and a byte written to a pipe the loop polls (``io_sockets``). The
  loop writes the outcome to the ledger (one thread does every ledger write) and
  says whether it did; only then does the listener acknowledge
  (``notification_ack(True)``), so a notification the gateway could not record is
  sent again by the wallet. A bad signature is refused (``notification_ack(False)``)
  and counted, never queued;
* the **poll**: ``on_idle`` queries open presented charges every
  ``[policy] poll_every_s``, as it does unknown charges.

Both reach the ledger's state machine in the gateway's one loop thread: the first
moves the charge to ``paid``, a second finds it ``paid`` and changes nothing (the
ledger's move to a final state it is in is a no-op). An order still unpaid at its
``expires_at`` is closed at the wallet and ends ``failed`` with reason ``EXPIRED``.

Configuration, ``payments.toml``::

    [notify]
    bind = "127.0.0.1:8443"          # where the listener listens
    public_url = "https://pay.example.com:8443"   # what the wallet is told to call
    cert_file = "keys/notify.crt"    # the listener's TLS certificate and key
    key_file = "keys/notify.key"     # (0600; relative paths: the data directory)
    expire_s = 300                   # a presented QR's life (seconds)
    ack_wait_s = 5                   # how long the listener waits for the ledger

Nothing a notification carries is logged beyond its merchant reference, channel and
outcome (never the body, never a signature or key).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lanecore.core.errors import LanecoreError
from lanecore.gateway.payments.providers import ProviderError, ProviderResult

__all__ = ["NotifyConfig", "NotifyConfigError", "NotifyListener", "Arrival",
           "PRESENT_SCHEMA", "NOTIFY_PATH", "EXPIRE_S", "parse_config"]

log = logging.getLogger("lanecore.payments.notify")

#: The path the wallets post to: ``/notify/<channel>``.
#: The largest notification body taken: the wallets' are a few kilobytes (a larger
#: one is answered 413 and never read).
MAX_NOTIFICATION_BYTES = 64 << 10
NOTIFY_PATH = "/notify/"
#: A presented QR's life by default (WeChat Pay's native orders live 2 h, Alipay's
#: precreate 2 h by default; a shop counter wants minutes).
EXPIRE_S = 300.0
ACK_WAIT_S = 5.0
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEYS = {"bind", "public_url", "cert_file", "key_file", "expire_s", "ack_wait_s"}

#: The gateway's record of each presented QR beside its ledger charge.
PRESENT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS presented_qr (
        merchant_ref TEXT PRIMARY KEY, channel TEXT NOT NULL, code_url TEXT,
        notify_url TEXT NOT NULL, expires_at REAL NOT NULL, created_at REAL NOT NULL,
        closed_at REAL, source TEXT)""",
)


class NotifyConfigError(LanecoreError):
    code = "BAD_CONFIG"


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]`` of payments.toml (module notes). ``bind``: (host, port) or None
    (no listener in this process: the result then comes by polling only);
    ``public_url``: the base of the ``notify_url`` the wallet is given."""

    public_url: str
    bind: tuple[str, int] | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    expire_s: float = EXPIRE_S
    ack_wait_s: float = ACK_WAIT_S

    def notify_url(self, channel: str) -> str:
        return f"{self.public_url}{NOTIFY_PATH}{channel}"


def parse_config(table, data_dir: Path) -> NotifyConfig | None:
    """``[notify]`` checked (NotifyConfigError ``BAD_CONFIG``, or ``BAD_PERMISSIONS`` /
    ``KEY_FILE_MISSING`` for the listener's key); None when there is no section."""
    if table is None:
        return None
    where = "payments.toml [notify]"
    if not isinstance(table, dict):
        raise NotifyConfigError(f"{where} is a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise NotifyConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    url = table.get("public_url")
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.query \
            or parts.fragment or parts.path not in ("", "/"):
        raise NotifyConfigError(f"{where}.public_url: https://HOST[:PORT] (the wallet "
                                f"posts to it over TLS), got {url!r:.80}")
    try:
        parts.port
    except ValueError:
        raise NotifyConfigError(f"{where}.public_url: a bad port in {url!r:.80}") from None
    numbers = {}
    for key, default, most in (("expire_s", EXPIRE_S, 7200.0), ("ack_wait_s", ACK_WAIT_S,
                                                                  60.0)):
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= most:
            raise NotifyConfigError(f"{where}.{key}: seconds, > 0 and at most {most:g}; "
                                    f"got {v!r}")
        numbers[key] = float(v)
    bind = None
    cert = key = None
    if "bind" in table:
        from lanecore.gateway.payments.httpapi import parse_bind, read_key_file, resolve_path
        raw = table["bind"]
        try:
            bind = parse_bind(raw)
        except ProviderError:
            raise NotifyConfigError(f"{where}.bind: HOST:PORT, got {raw!r:.60}") from None
        try:
            cert = resolve_path(table.get("cert_file"), data_dir, f"{where}.cert_file")
            key = resolve_path(table.get("key_file"), data_dir, f"{where}.key_file")
            if not cert.is_file():
                raise ProviderError(f"{where}.cert_file {cert} does not exist",
                                    code="KEY_FILE_MISSING")
            read_key_file(key, f"{where}.key_file")        # 0600, or refused
        except ProviderError as exc:
            raise NotifyConfigError(exc.message, code=exc.code) from None
    elif "cert_file" in table or "key_file" in table:
        raise NotifyConfigError(f"{where}: cert_file and key_file are the listener's; "
                                "they need bind")
    return NotifyConfig(url.rstrip("/"), bind, cert, key, **numbers)


@dataclass
class Arrival:
    """A verified notification on its way to the gateway's loop: ``result`` (the
    connector's :class:`ProviderResult`, ``merchant_ref`` set) for ``channel``.
    The loop sets ``recorded`` (True: in the ledger, or already there) and
    ``done``."""

    channel: str
    result: ProviderResult
    recorded: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class NotifyListener:
    """The HTTPS listener for the wallets' notifications (module notes).

    ``connectors``: channel name → connector (those with ``notification``);
    ``config``: the :class:`NotifyConfig` (``bind``, ``cert_file``, ``key_file``,
    ``ack_wait_s``). :meth:`start` binds; :meth:`fileno` is the read end of the pipe
    the loop polls; :meth:`take` gives the arrivals queued since the last call.
    :attr:`counts`: ``received``, ``recorded``, ``not_recorded`` (the loop said no,
    or did not answer in ``ack_wait_s``), ``refused:<code>`` (``BAD_SIGNATURE``,
    ``BAD_NOTIFICATION``, ``NO_CHANNEL`` …)."""

    def __init__(self, connectors: dict, config: NotifyConfig) -> None:
        if config.bind is None:
            raise NotifyConfigError("payments.toml [notify] has no bind: no listener")
        self.connectors = {name: c for name, c in connectors.items()
                           if callable(getattr(c, "notification", None))}
        self.config = config
        self.counts: Counter = Counter()
        self._queue: queue.SimpleQueue[Arrival] = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._lock = threading.Lock()
        self._server = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "NotifyListener":
        from lanecore.gateway.payments.httpapi import HttpsServer
        host, port = self.config.bind
        self._server = HttpsServer(self._handle, cert_file=self.config.cert_file,
                                   key_file=self.config.key_file, host=host, port=port,
                                   max_body=MAX_NOTIFICATION_BYTES)
        self._server.start()
        log.info("notification listener on %s", self._server.url)
        return self

    @property
    def url(self) -> str | None:
        return None if self._server is None else self._server.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        # anyone still waiting is answered "not acknowledged": the wallet sends again
        for a in self.take():
            a.done.set()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._rfd = self._wfd = -1

    def fileno(self) -> int:
        return self._rfd

    # -- the loop's side -------------------------------------------------------------
    def take(self) -> list[Arrival]:
        """The arrivals queued so far (the pipe drained); the caller sets each one's
        ``recorded`` and ``done``."""
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    # -- the HTTPS side (listener threads) -------------------------------------------
    def _handle(self, method: str, target: str, headers: dict, body: bytes, _cert):
        path = urllib.parse.urlsplit(target).path
        if method != "POST" or not path.startswith(NOTIFY_PATH):
            self._count("refused:NOT_FOUND")
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        channel = path[len(NOTIFY_PATH):]
        conn = self.connectors.get(channel) if _CHANNEL_RE.fullmatch(channel) else None
        if conn is None:
            self._count("refused:NO_CHANNEL")
            return 404, {"Content-Type": "text/plain"}, b"no such channel\n"
        self._count("received")
        try:
            res = conn.notification(headers, body)
        except ProviderError as exc:
            # never recorded: a forged or altered message changes nothing
            self._count(f"refused:{exc.code}")
            log.warning("notification on %s refused: %s", channel, exc.code)
            return self._ack(conn, False)
        if not isinstance(res, ProviderResult) or not res.merchant_ref:
            self._count("refused:BAD_NOTIFICATION")
            return self._ack(conn, False)
        arrival = Arrival(channel, res)
        self._queue.put(arrival)
        try:
            os.write(self._wfd, b"!")
        except (BlockingIOError, OSError):
            pass                      # the pipe is full: the loop is awake already
        if arrival.done.wait(self.config.ack_wait_s) and arrival.recorded:
            self._count("recorded")
            return self._ack(conn, True)
        self._count("not_recorded")
        return self._ack(conn, False)

    def _count(self, key: str) -> None:
        with self._lock:                 # the listener's threads count together
            self.counts[key] += 1

    @staticmethod
    def _ack(conn, ok: bool):
        status, content_type, body = conn.notification_ack(ok)
        return status, {"Content-Type": content_type}, body
