"""CurveZMQ for the services: a server keypair, the devices allowed in, and the rule that
plain TCP stays on loopback.

Key files are ZeroMQ certificates (ZPL, the format of ``zmq.auth.create_certificates``
and ``zmq.auth.load_certificate``): ``NAME.key`` holds a public key, ``NAME.key_secret``
the public and secret keys, both with an optional ``metadata`` section. In a data
directory:

    keys/server.key_secret      the service's keypair (created by ``lanecore keys gen``)
    keys/server.key             its public key, to give to devices
    keys/devices/*.key          the public keys of the devices allowed to connect

A device whose key is not in ``keys/devices`` is refused by the ZAP authenticator
during the handshake: it never gets a reply.

Files (``docs/security.md``): :func:`generate` makes its directory mode 0700 and
writes each certificate at mode 0600 under a temporary ``O_EXCL`` name, renamed into
place, so no key is ever readable by others, whatever the umask. On start-up
:class:`ServerSecurity` refuses (``BAD_PERMISSIONS``, naming the path) a ``keys/``
or ``keys/devices/`` directory or a secret key file that the group or others may
use; :func:`load_keypair` refuses such a secret key file.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from lanecore.core.config import check_private, private_dir, write_private
from lanecore.core.errors import LanecoreError
from lanecore.gateway.net.identity import Principal
from lanecore.gateway.net.keyring import KeyRing

SERVER_NAME = "server"


class SecurityError(LanecoreError):
    code = "BAD_SECURITY"


def keys_dir(data_dir) -> Path:
    return Path(data_dir) / "keys"


_SECRET_BANNER = """#   ****  Generated on {0} by lanecore  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""

_PUBLIC_BANNER = """#   ****  Generated on {0} by lanecore  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange.

"""

_META_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _certificate(banner: str, public: bytes, secret: bytes | None,
                 metadata: dict[str, str] | None) -> bytes:
    """A ZPL certificate, line for line what ``zmq.auth`` writes (and reads)."""
    lines = [banner.format(datetime.datetime.now()), "metadata\n"]
    for k, v in (metadata or {}).items():
        lines.append(f"    {k} = {v}\n")
    lines += ["curve\n", f'    public-key = "{public.decode("ascii")}"\n']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"\n')
    return "".join(lines).encode("utf-8")


def generate(directory, name: str, metadata: dict[str, str] | None = None
             ) -> tuple[Path, Path]:
    """Write a new keypair as NAME.key (public) and NAME.key_secret in ``directory``
    (created mode 0700 if missing), both mode 0600, each written under a temporary
    O_EXCL name and renamed into place. ``metadata``: name = value pairs written into
    the certificates' ``metadata`` section (names letters, digits, ``_ . -``; values
    one line)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SecurityError(f"a key name is letters, digits, - and _: {name!r}",
                            code="BAD_ARGUMENT")
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not (isinstance(k, str) and _META_NAME.fullmatch(k)) or not isinstance(v, str) \
                or any(c in v for c in "\r\n\0"):
            raise SecurityError(f"certificate metadata is name = one-line text: {k!r}",
                                code="BAD_ARGUMENT")
    try:
        directory = private_dir(directory)
    except OSError as exc:
        raise SecurityError(f"cannot create {directory}: {exc.strerror}",
                            code="BAD_ARGUMENT") from exc
    public_key, secret_key = zmq.curve_keypair()
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    try:
        write_private(secret, _certificate(_SECRET_BANNER, public_key, secret_key, metadata))
        write_private(public, _certificate(_PUBLIC_BANNER, public_key, None, metadata))
    except OSError as exc:
        raise SecurityError(f"cannot write a key into {directory}: {exc.strerror}",
                            code="BAD_KEY") from exc
    return public, secret


def load_keypair(path) -> tuple[bytes, bytes]:
    """The (public, secret) keys of a ``.key_secret`` certificate; BAD_PERMISSIONS
    if the group or others may use the file, BAD_KEY if it holds no secret key."""
    try:
        check_private(path, what="secret key file", error=SecurityError)
    except FileNotFoundError:
        raise SecurityError(f"no key file at {path}", code="BAD_KEY") from None
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise SecurityError(f"{path} holds no secret key", code="BAD_KEY")
    return public, secret


def load_public(path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(path))
    return public


#: The transports an address may name (``docs/protocol.md``).
ENDPOINT_SCHEMES = ("tcp", "ipc", "inproc")


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is an address a lanecore process can bind or connect:
    ``tcp://HOST:PORT`` (PORT 1-65535, or ZeroMQ's ``*`` for any free one; an IPv6
    HOST in brackets), ``ipc://PATH`` or ``inproc://NAME``. Anything else — a bare
    port, a port out of range, another scheme — is SecurityError ``BAD_ADDRESS``
    naming it (ZeroMQ would take ``:99999`` and listen on another port)."""
    def bad(why: str):
        return SecurityError(f"{endpoint!r} is not an address: {why} (tcp://HOST:PORT "
                             "with PORT 1-65535, or ipc://PATH)", code="BAD_ADDRESS")
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise bad("no scheme")
    scheme, rest = endpoint.split("://", 1)
    if scheme not in ENDPOINT_SCHEMES:
        raise bad(f"unknown transport {scheme!r}")
    if not rest or any(c.isspace() for c in rest):
        raise bad("empty, or with spaces")
    if scheme != "tcp":
        return endpoint
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise bad("no HOST:PORT")
    if host.startswith("[") != host.endswith("]") or host in ("[]",):
        raise bad("an IPv6 host goes in brackets")
    if port.startswith("*"):
        return endpoint
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise bad(f"port {port!r} is not 1-65535")
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine (ipc://, inproc://, loopback tcp)."""
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(endpoint).hostname or ""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSecurity:
    """CurveZMQ server side: the keypair and a ZAP authenticator over devices/."""

    def __init__(self, data_dir, ctx: zmq.Context):
        kdir = keys_dir(data_dir)
        secret = kdir / f"{SERVER_NAME}.key_secret"
        if not secret.exists():
            raise SecurityError(f"no server key at {secret}; run `lanecore keys gen "
                                f"--server --data-dir {data_dir}`", code="NO_SERVER_KEY")
        # Who may read keys/ may read the secret key; who may write keys/devices/
        # may let any device in: both the owner's alone, or no start.
        check_private(kdir, what="key directory", error=SecurityError)
        self.public, self.secret = load_keypair(secret)
        self.devices = kdir / "devices"
        try:
            private_dir(self.devices)
        except OSError as exc:
            raise SecurityError(f"cannot create {self.devices}: {exc.strerror}",
                                code="BAD_KEY") from exc
        check_private(self.devices, what="key directory", error=SecurityError)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(self.devices))
        #: The enrolled identities and their roles, read again when devices/ changes.
        self.keyring = KeyRing(self.devices, on_change=self.reload)

    def server_socket(self, sock: zmq.Socket) -> None:
        """CURVE server side on ``sock`` — the ops ROUTER and the events PUB alike:
        only enrolled keys connect, and everything on the wire is encrypted."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def reload(self) -> None:
        """Read devices/ again (a device added or removed)."""
        self.auth.configure_curve(domain="*", location=str(self.devices))

    def receiver(self, sock: zmq.Socket):
        """``recv(flags)`` for ``sock``: a request's frames (bytes) with the sender's
        ZAP User-Id (its public key, Z85) as ``.user_id``."""
        def recv(flags=0):
            parts = sock.recv_multipart(flags, copy=False)
            frames = _Frames(p.bytes for p in parts)
            try:
                frames.user_id = parts[-1].get("User-Id")
            except (zmq.ZMQError, KeyError, UnicodeDecodeError):
                frames.user_id = None
            return frames
        return recv

    def principal_of(self, frames) -> Principal | None:
        """The enrolled identity that sent ``frames`` (None: not, or no longer)."""
        return self.keyring.principal(getattr(frames, "user_id", None))

    def stop(self) -> None:
        self.auth.stop()


class _Frames(list):
    """A request's frames and who sent them."""

    user_id: str | None = None


def check_plain(endpoints, allow_plain: bool) -> None:
    """Refuse plain (unencrypted, unauthenticated) TCP beyond loopback unless allowed;
    an endpoint that is no address at all is ``BAD_ADDRESS`` (:func:`check_endpoint`)."""
    for ep in endpoints:
        if ep:
            check_endpoint(ep)
        if ep and not is_loopback(ep) and not allow_plain:
            raise SecurityError(
                f"{ep} is not loopback: use --curve (keys in the data directory) or say "
                "--allow-plain", code="PLAIN_NOT_ALLOWED")
