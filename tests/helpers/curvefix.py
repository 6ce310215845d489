"""CurveZMQ identities for tests: a server keypair in a data directory and client
identities with roles enrolled in it, as `lanecore keys gen --name N --role R --enrol`
makes them."""

from __future__ import annotations

from pathlib import Path


def enrol(data_dir: Path, key_dir: Path, name: str, roles: str) -> tuple[bytes, bytes, bytes]:
    """A server keypair for ``data_dir`` (made once) and a client identity NAME with
    ``roles`` enrolled in it; (server public, client public, client secret)."""
    import zmq.auth

    from lanecore.core.config import private_dir, write_private
    from lanecore.gateway.net.security import generate
    keys = data_dir / "keys"
    if not (keys / "server.key_secret").exists():
        generate(keys, "server")
    public, secret = generate(key_dir, name, {"name": name, "roles": roles})
    private_dir(keys / "devices")
    write_private(keys / "devices" / public.name, public.read_bytes())
    server_public, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    client_public, client_secret = zmq.auth.load_certificate(str(secret))
    return server_public, client_public, client_secret
