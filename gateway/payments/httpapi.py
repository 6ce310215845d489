"""HTTPS for the wallets' own APIs: what the WeChat Pay and Alipay connectors
(``wechatpay.py``, ``alipay.py``) and their simulators (``gateway/sim/wechat.py``,
``gateway/sim/alipay.py``) share. ``docs/pay/providers.md`` "Over HTTPS".

* :func:`make_test_pki` — a test certificate authority and a server certificate for
  loopback (the simulators' HTTPS, the gateway's notification listener in tests),
  and client certificates for mutual TLS (WeChat Pay's ``/secapi/`` calls);
* :func:`server_context`, :func:`client_context` — TLS 1.2+ contexts that verify;
* :func:`read_key_file` — a credential file, refused unless it is its owner's alone;
* :class:`HttpsClient` — one request per fresh connection, thread-safe; ``None`` when
  no answer came in time (the outcome is unknown: query, never send again);
* :class:`ThreadedConnector` — the payment gateway's non-blocking path
  (``prepare_charge`` / ``post`` / ``answers``) for connectors whose exchange blocks:
  each posted charge runs in a thread, its answer comes back on an inproc socket the
  gateway polls;
* :class:`HttpsServer` — a threaded HTTPS server around one handler function (the
  simulators' APIs, the payment gateway's notification listener);
* :class:`Notifier` — a provider's notifications, delivered with retries on the
  provider's schedule until acknowledged.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import http.client
import ipaddress
import itertools
import logging
import secrets
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from lanecore.core.config import check_private, write_private
from lanecore.gateway.payments.providers import Connector, ProviderError, ProviderResult

__all__ = ["TestPki", "make_test_pki", "issue_client_cert", "server_context",
           "client_context", "trust_context", "post_url", "read_key_file", "parse_bind", "HttpReply", "HttpsClient",
           "ThreadedConnector", "NoAnswer", "HttpsServer", "Notifier", "resolve_path"]

log = logging.getLogger("lanecore.httpapi")

#: Largest body read from a provider or a notifier (a day's bill is the largest).
MAX_BODY = 64 << 20


# -- certificates ------------------------------------------------------------------------
@dataclass(frozen=True)
class TestPki:
    """Files of a test PKI: the CA's certificate (what clients trust), the server's
    certificate and private key (0600)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject_cn: str, public_key, issuer_cn: str, issuer_key, *, ca: bool,
          hosts=(), client: bool = False, days: int = 3650):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = _dt.datetime.now(_dt.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - _dt.timedelta(minutes=5))
         .not_valid_after(now + _dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        names = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_test_pki(directory, hosts=("127.0.0.1", "localhost", "::1")) -> TestPki:
    """A test CA and a server certificate for ``hosts``, in ``directory`` (which the
    caller made): ``ca.pem``, ``ca.key`` (0600: it issues client certificates),
    ``server.pem``, ``server.key`` (0600). Kept when already there (a restarted
    simulator keeps its certificates, so its clients keep trusting it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    d = Path(directory)
    pki = TestPki(d / "ca.pem", d / "server.pem", d / "server.key")
    if pki.ca_file.exists() and pki.cert_file.exists() and pki.key_file.exists() \
            and (d / "ca.key").exists():
        return pki
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # each test CA its own name (and key identifiers): a client trusting two of them
    # finds the right issuer
    name = f"lanecore test CA {secrets.token_hex(4)}"
    ca = _cert(name, ca_key.public_key(), name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(hosts[0], key.public_key(), name, ca_key, ca=False, hosts=hosts)
    write_private(d / "ca.key", _key_pem(ca_key))
    write_private(pki.key_file, _key_pem(key))
    write_private(pki.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    write_private(pki.ca_file, ca.public_bytes(serialization.Encoding.PEM))
    return pki


def issue_client_cert(pki: TestPki, name: str, cert_file, key_file) -> tuple[Path, Path]:
    """A client certificate (CN ``name``) issued by the test CA, for mutual TLS:
    written to ``cert_file`` and ``key_file`` (both 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    ca_key = serialization.load_pem_private_key(
        (pki.ca_file.parent / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    issuer = ca.subject.rfc4514_string().removeprefix("CN=")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(name, key.public_key(), issuer, ca_key, ca=False, client=True)
    write_private(key_file, _key_pem(key))
    write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return Path(cert_file), Path(key_file)


def server_context(cert_file, key_file, *, ca_file=None) -> ssl.SSLContext:
    """A server's TLS context (1.2+). With ``ca_file``, clients are asked for a
    certificate, which must be that CA's (optional at the handshake: the handler
    sees ``client_cert`` and refuses paths that need one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if ca_file is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(str(ca_file))
    return ctx


def client_context(ca_file=None, cert_file=None, key_file=None) -> ssl.SSLContext:
    """A client's TLS context (1.2+, certificate and host name verified): trusting
    ``ca_file`` (default: the system's authorities), presenting ``cert_file`` +
    ``key_file`` when given (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    return ctx


def parse_bind(text, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` (or ``tcp://HOST:PORT``; ``[::1]:PORT`` for IPv6; PORT ``0`` or
    ``*``: a free one) as ``(host, port)``. ProviderError ``BAD_ADDRESS`` for
    anything else."""
    raw = text.removeprefix("tcp://") if isinstance(text, str) else ""
    host, sep, port = raw.rpartition(":")
    port = "0" if port == "*" else port
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ProviderError(f"an address is HOST:PORT with PORT 0-65535, got {text!r:.60}",
                            code="BAD_ADDRESS")
    return host.strip("[]") or default_host, int(port)


def resolve_path(value, base: Path, what: str) -> Path:
    """A configured file path: absolute as given, relative to ``base`` (the data
    directory). ProviderError ``BAD_CONFIG`` for anything but a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ProviderError(f"{what} is a file path, got {value!r:.60}", code="BAD_CONFIG")
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base) / p


def read_key_file(path, what: str = "key file") -> bytes:
    """A credential file's bytes. ProviderError ``KEY_FILE_MISSING`` when it is not
    there, ``BAD_PERMISSIONS`` when the group or others may read it (chmod 600)."""
    try:
        check_private(path, what=what, error=ProviderError)
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ProviderError(f"{what} {path} does not exist",
                            code="KEY_FILE_MISSING") from None
    except IsADirectoryError:
        raise ProviderError(f"{what} {path} is a directory", code="KEY_FILE_MISSING") from None


# -- the client --------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict
    body: bytes


class HttpsClient:
    """Requests to one HTTPS origin (``base_url``: ``https://HOST[:PORT]``). Each
    request is one fresh connection (no connection is shared between threads or
    reused after an error whose effect is unknown). ``timeout_s`` bounds the whole
    exchange."""

    def __init__(self, base_url: str, *, ca_file=None, timeout_s: float = 5.0,
                 cert_file=None, key_file=None) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "https" or not u.hostname:
            raise ProviderError(f"{base_url!r:.80} is not an https:// URL: the wallets' "
                                "APIs are HTTPS only", code="PLAIN_NOT_ALLOWED")
        if not timeout_s > 0:
            raise ProviderError("timeout_s must be > 0", code="BAD_CONFIG")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = u.hostname, u.port or 443
        self.prefix = u.path.rstrip("/")
        self.timeout_s = float(timeout_s)
        try:
            self.context = client_context(ca_file, cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ProviderError(f"TLS credentials for {self.base_url}: {exc}",
                                code="BAD_CONFIG") from None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, *, timeout_s: float | None = None
                ) -> HttpReply | None:
        """One exchange; ``path`` is a path on this origin or a full ``https`` URL of
        the same host. None when no (whole) answer came in time or the connection
        broke: what the provider did is unknown."""
        host, port, target = self.host, self.port, self.prefix + path
        if path.startswith("https://"):
            u = urllib.parse.urlsplit(path)
            if u.hostname != self.host or (u.port or 443) != self.port:
                raise ProviderError(f"{path!r:.80} is not on {self.base_url}",
                                    code="BAD_REPLY")
            target = u.path + (f"?{u.query}" if u.query else "")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self.context)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
            resp = conn.getresponse()
            length = resp.getheader("content-length")
            if length is not None and int(length) > MAX_BODY:
                log.warning("%s %s: a %s-byte answer refused", method,
                            target.partition("?")[0], length)
                return None
            data = resp.read(MAX_BODY + 1)
            if len(data) > MAX_BODY:
                return None
            return HttpReply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        except ssl.SSLCertVerificationError as exc:
            log.warning("%s %s: the server's certificate does not verify: %s", method,
                        target.partition("?")[0], exc.verify_message)
            return None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("%s %s%s: no answer (%s)", method, self.base_url,
                        target.partition("?")[0], type(exc).__name__)
            return None
        finally:
            conn.close()


def trust_context(*ca_files) -> ssl.SSLContext:
    """A verifying client context that trusts the system's authorities and every CA
    file given (None ones skipped): what a provider's notifier trusts for a
    merchant's notify URL."""
    ctx = client_context()
    for f in ca_files:
        if f:
            ctx.load_verify_locations(str(f))
    return ctx


def post_url(url: str, body: bytes, headers: dict, *, context: ssl.SSLContext,
             timeout_s: float = 5.0) -> HttpReply | None:
    """POST ``body`` to ``url`` (``https``, or ``http`` as the providers allow for
    notify URLs), the answer's first 64 KiB; None when none came (a notifier then
    tries again on its schedule)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout_s,
                                           context=context)
    elif u.scheme == "http":
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout_s)
    else:
        return None
    try:
        conn.request("POST", (u.path or "/") + (f"?{u.query}" if u.query else ""),
                     body=body, headers=headers)
        resp = conn.getresponse()
        return HttpReply(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                         resp.read(1 << 16))
    except (OSError, http.client.HTTPException) as exc:
        log.info("notification to %s: %s", u.netloc, type(exc).__name__)
        return None
    finally:
        conn.close()


# -- the gateway's non-blocking path -----------------------------------------------------
class ThreadedConnector(Connector):
    """A connector whose exchange blocks (HTTPS, ISO 8583 over TCP), made fit for the
    payment gateway's non-blocking path: each posted charge runs
    :meth:`_charge_reply` in its own thread; the answer comes back on an inproc PULL
    socket (:meth:`async_socket`) that the gateway polls. A charge that gets no answer
    pushes nothing: the gateway's own deadline makes it unknown.

    Subclasses implement :meth:`_charge_job` (check and prepare: ProviderError before
    anything is sent) and :meth:`_charge_reply` (the exchange)."""

    #: what a thread is named after
    thread_name = "connector"

    def __init__(self, endpoint: str, kind: str, *, timeout_s: float = 5.0,
                 context: zmq.Context | None = None) -> None:
        super().__init__(endpoint, kind, timeout_s=timeout_s, context=context)
        self._pull: zmq.Socket | None = None
        self._inproc = f"inproc://{self.thread_name}-{self._prefix}-{id(self):x}"
        self._rids = itertools.count(1)
        self._workers: set[threading.Thread] = set()

    def _charge_job(self, merchant_ref: str, amount_minor: int, currency: str,
                    terminal: str | None, **means) -> dict:
        raise ProviderError(f"{type(self).__name__} does not take charges",
                            code="NOT_SUPPORTED")

    def _charge_reply(self, merchant_ref: str, job: dict) -> dict | None:
        raise ProviderError(f"{type(self).__name__} does not take charges",
                            code="NOT_SUPPORTED")

    def charge(self, merchant_ref: str, amount_minor: int, currency: str, *,
               terminal: str | None = None, **means) -> ProviderResult:
        job = self._charge_job(merchant_ref, amount_minor, currency, terminal, **means)
        return self.result("charge", merchant_ref, self._charge_reply(merchant_ref, job))

    def prepare_charge(self, merchant_ref: str, amount_minor: int, currency: str, *,
                       terminal: str | None = None, **means) -> tuple[str, bytes]:
        job = self._charge_job(merchant_ref, amount_minor, currency, terminal, **means)
        rid = f"{self._prefix}:{next(self._rids)}"
        return rid, msgpack.packb({"id": rid, "ref": merchant_ref, "job": job},
                                  use_bin_type=True)

    def async_socket(self) -> zmq.Socket:
        """Where the answers of the requests in flight arrive."""
        if self._pull is None:
            s = self._ctx.socket(zmq.PULL)
            s.setsockopt(zmq.LINGER, 0)
            s.bind(self._inproc)
            self._pull = s
        return self._pull

    def post(self, frame: bytes) -> bool:
        self.async_socket()
        job = msgpack.unpackb(frame, raw=False)
        t = threading.Thread(target=self._run, args=(job,), daemon=True,
                             name=f"{self.thread_name}-{job['ref']}")
        self._workers.add(t)
        t.start()
        return True

    def _run(self, job: dict) -> None:
        try:
            reply = self._charge_reply(job["ref"], job["job"])
        except Exception:
            log.exception("%s: the exchange of %s failed", self.kind, job["ref"])
            reply = None
        finally:
            self._workers.discard(threading.current_thread())
        if reply is None:
            return              # the gateway's deadline makes it unknown
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        try:
            push.connect(self._inproc)
            push.send(msgpack.packb({"id": job["id"], **reply}, use_bin_type=True))
        finally:
            push.close()

    def answers(self) -> list[dict]:
        out: list[dict] = []
        if self._pull is None:
            return out
        while True:
            try:
                out.append(msgpack.unpackb(self._pull.recv(zmq.NOBLOCK), raw=False))
            except zmq.Again:
                return out

    def close(self) -> None:
        super().close()
        if self._pull is not None:
            self._pull.close(0)
            self._pull = None


# -- the server (simulators, the gateway's notification listener) --------------------
class NoAnswer(Exception):
    """Raised by a :class:`HttpsServer` handler: hold the connection and never
    answer (a provider that processed a request, or lost it, and said nothing)."""


#: A body this much over a server's limit is still read (and dropped) before its 413,
#: so the client reads the answer instead of a reset; a larger one is not.
DRAIN_BYTES = 1 << 20
#: How long a held connection (NoAnswer) stays open at most.
HOLD_S = 120.0

Handler = Callable[[str, str, dict, bytes, "dict | None"], tuple[int, dict, bytes]]


class _TlsServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, owner: "HttpsServer") -> None:
        self.owner = owner
        super().__init__(addr, _HandlerShim, bind_and_activate=True)

    def finish_request(self, request, client_address) -> None:
        try:
            request.settimeout(10.0)
            # answers leave at once: no Nagle wait behind the client's delayed ACK
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.owner.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return                  # a failed handshake: nobody to answer
        try:
            _HandlerShim(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class _HandlerShim(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        owner: HttpsServer = self.server.owner
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return
            try:
                method, target, version = line.decode("latin-1").split()
            except ValueError:
                self._send(400, {}, b"bad request line\n", close=True)
                return
            headers: dict[str, str] = {}
            while True:
                h = self.rfile.readline(65537)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            try:
                n = int(headers.get("content-length", "0"))
            except ValueError:
                n = -1
            if not 0 <= n <= owner.max_body:
                if owner.max_body < n <= owner.max_body + DRAIN_BYTES:
                    # read and dropped, so the client gets its 413 rather than a reset
                    while n > 0:
                        got = self.rfile.read(min(n, 65536))
                        if not got:
                            return
                        n -= len(got)
                self._send(413, {}, b"body too large\n", close=True)
                return
            body = self.rfile.read(n) if n else b""
            cert = self.connection.getpeercert() or None
            try:
                status, out_headers, out = owner.handler(method, target, headers, body, cert)
            except NoAnswer:
                owner._hold(self.connection)
                return
            except Exception:
                log.exception("simulator handler failed on %s %s", method, target)
                status, out_headers, out = 500, {"Content-Type": "text/plain"}, b"error\n"
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            self._send(status, out_headers, out, close=close)
            if close:
                return

    def _send(self, status: int, headers: dict, body: bytes, *, close: bool) -> None:
        reason = http.client.responses.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}"]
        have = {k.lower() for k in headers}
        for k, v in headers.items():
            lines.append(f"{k}: {v}")
        if "content-length" not in have:
            lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.wfile.flush()


class HttpsServer:
    """A threaded HTTPS server that passes every request to ``handler(method, target,
    headers, body, client_cert)`` (headers with lower-case names; ``client_cert``: the
    verified client certificate as ``ssl`` gives it, or None) and sends what it
    returns: ``(status, headers, body)``. A handler raising :class:`NoAnswer` leaves
    the connection open without an answer (up to :data:`HOLD_S`). ``ca_file``: ask
    clients for a certificate issued by that CA; ``max_body``: the largest request
    body taken (bytes; a larger one is answered 413 and the connection closed)."""

    def __init__(self, handler: Handler, *, cert_file, key_file, ca_file=None,
                 host: str = "127.0.0.1", port: int = 0, max_body: int = MAX_BODY) -> None:
        self.handler = handler
        #: the largest request body taken (413 above it)
        self.max_body = int(max_body)
        self.context = server_context(cert_file, key_file, ca_file=ca_file)
        self._server = _TlsServer((host, port), self)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def start(self) -> "HttpsServer":
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"https-{self.port}")
        self._thread.start()
        return self

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self._held.append(conn)
        # Wait until the client gives up (EOF), the hold ends or the server stops.
        end = time.monotonic() + HOLD_S
        try:
            conn.settimeout(0.2)
            while not self._stopping.is_set() and time.monotonic() < end:
                try:
                    if not conn.recv(1):
                        break
                except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    break
        finally:
            with self._lock:
                if conn in self._held:
                    self._held.remove(conn)

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "HttpsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- notifications ---------------------------------------------------------------------
#: WeChat Pay's and Alipay's documented notification schedules (seconds after the
#: first try). WeChat Pay v2: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h.
WECHAT_SCHEDULE_S = (0, 15, 30, 60, 240, 840, 2040, 3840, 5640, 7440, 11040, 21840,
                     32640, 43440, 65040, 86640)
#: Alipay: 4m, 10m, 10m, 1h, 2h, 6h, 15h after the first try.
ALIPAY_SCHEDULE_S = (0, 240, 840, 1440, 5040, 12240, 33840, 87840)


class Notifier:
    """Delivers notifications the way a provider does: POSTs ``body`` to ``url`` at
    the schedule's times (seconds after :meth:`send`, multiplied by ``scale`` — a
    simulator's ``--fast`` shrinks them) until ``is_ack(reply)`` says the merchant
    acknowledged it, or the schedule ends. ``post(url, body, headers) -> HttpReply |
    None``. One thread; :meth:`stats` counts sends, acknowledgements and give-ups."""

    def __init__(self, post: Callable[[str, bytes, dict], "HttpReply | None"],
                 is_ack: Callable[[HttpReply], bool], *,
                 schedule_s=WECHAT_SCHEDULE_S, scale: float = 1.0) -> None:
        self.post, self.is_ack = post, is_ack
        self.schedule_s = tuple(float(s) for s in schedule_s)
        self.scale = float(scale)
        self._heap: list = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self.counts = {"queued": 0, "attempts": 0, "acked": 0, "gave_up": 0}
        self._thread = threading.Thread(target=self._loop, daemon=True, name="notifier")
        self._thread.start()

    def send(self, url: str, body: bytes, headers: dict | None = None) -> None:
        """Queue a notification; the first try is at once (the schedule's first time)."""
        with self._cv:
            self.counts["queued"] += 1
            heapq.heappush(self._heap, (time.monotonic() + self.schedule_s[0] * self.scale,
                                        next(self._seq), 0, url, body, dict(headers or {})))
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._heap
                                          or self._heap[0][0] > time.monotonic()):
                    wait = None if not self._heap else self._heap[0][0] - time.monotonic()
                    self._cv.wait(wait)
                if self._stop:
                    return
                _, _, tries, url, body, headers = heapq.heappop(self._heap)
                self.counts["attempts"] += 1
            try:
                reply = self.post(url, body, headers)
                acked = reply is not None and self.is_ack(reply)
            except Exception:
                log.exception("notification to %s failed", url)
                acked = False
            with self._cv:
                if acked:
                    self.counts["acked"] += 1
                elif tries + 1 < len(self.schedule_s):
                    due = (self.schedule_s[tries + 1] - self.schedule_s[tries]) * self.scale
                    heapq.heappush(self._heap, (time.monotonic() + due, next(self._seq),
                                                tries + 1, url, body, headers))
                else:
                    self.counts["gave_up"] += 1
                    log.warning("notification to %s: not acknowledged after %d tries",
                                url, tries + 1)

    def stats(self) -> dict:
        with self._cv:
            return {**self.counts, "pending": len(self._heap)}

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(5)

