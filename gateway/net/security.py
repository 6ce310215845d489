"""CurveZMQ for the services: a server keypair, the devices allowed in, and the rule that
plain TCP stays on loopback.

Key files are ZeroMQ certificates (``zmq.auth.create_certificates``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and secret keys. In a data
directory:

    keys/server.key_secret      the service's keypair (created by ``lanecore keys gen``)
    keys/server.key             its public key, to give to devices
    keys/devices/*.key          the public keys of the devices allowed to connect

A device whose key is not in ``keys/devices`` is refused by the ZAP authenticator
during the handshake: it never gets a reply.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from lanecore.core.errors import LanecoreError

SERVER_NAME = "server"


class SecurityError(LanecoreError):
    code = "BAD_SECURITY"


def keys_dir(data_dir) -> Path:
    return Path(data_dir) / "keys"


def generate(directory, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret in ``directory`` (secret file mode 0600)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SecurityError(f"a key name is letters, digits, - and _: {name!r}",
                            code="BAD_ARGUMENT")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(directory, name))
    os.chmod(secret, 0o600)
    return public, secret


def load_keypair(path) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise SecurityError(f"{path} holds no secret key", code="BAD_KEY")
    return public, secret


def load_public(path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(path))
    return public


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
        self.public, self.secret = load_keypair(secret)
        self.devices = kdir / "devices"
        self.devices.mkdir(parents=True, exist_ok=True)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(self.devices))

    def server_socket(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def reload(self) -> None:
        """Read devices/ again (a device added or removed)."""
        self.auth.configure_curve(domain="*", location=str(self.devices))

    def stop(self) -> None:
        self.auth.stop()


def check_plain(endpoints, allow_plain: bool) -> None:
    """Refuse plain (unencrypted, unauthenticated) TCP beyond loopback unless allowed."""
    for ep in endpoints:
        if ep and not is_loopback(ep) and not allow_plain:
            raise SecurityError(
                f"{ep} is not loopback: use --curve (keys in the data directory) or say "
                "--allow-plain", code="PLAIN_NOT_ALLOWED")
