"""The enrolled CurveZMQ identities of a server, with their roles, kept current.

A device or process is enrolled by its public certificate in ``keys/devices/``
(``lanecore keys gen --name NAME --role ROLE,…`` writes it there, with the roles in
the certificate's ``metadata`` section)::

    metadata
        name = "lane-a"
        roles = "lane"
    curve
        public-key = "…40 Z85 characters…"

:class:`KeyRing` maps each enrolled public key to a
:class:`~lanecore.gateway.net.identity.Principal` (``key:NAME``). It reads the
directory again when its contents change (checked at most every
:data:`RELOAD_S` seconds), so a key removed while its connection is open is refused
from the next request on; the ZAP authenticator is reconfigured at the same moment so
a removed key cannot connect again. A certificate without roles enrols nobody (a
warning is logged): every identity says what it may do.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from lanecore.core.errors import LanecoreError
from lanecore.gateway.net.identity import Principal, RoleError, parse_roles

__all__ = ["KeyRing", "RELOAD_S", "read_certificate"]

log = logging.getLogger("lanecore.keys")

#: How often the key directory is looked at for changes (seconds).
RELOAD_S = 1.0
_LINE = re.compile(r'^\s+([A-Za-z0-9_.-]+)\s*=\s*"?([^"\n]*)"?\s*$')


def read_certificate(path) -> dict[str, str]:
    """The fields of a ZPL certificate: ``public-key`` (and ``secret-key``) and the
    ``metadata`` entries, as text."""
    out: dict[str, str] = {}
    section = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        m = _LINE.match(line)
        if m and section in ("metadata", "curve"):
            out[m.group(1)] = m.group(2)
    return out


class KeyRing:
    """Public key (Z85 text, as the ZAP handler reports it) → Principal."""

    def __init__(self, directory, *, on_change=None, clock=time.monotonic) -> None:
        self.directory = Path(directory)
        self.on_change = on_change
        self.clock = clock
        self._by_key: dict[str, Principal] = {}
        self._signature = None
        self._checked = -1e18
        self.reload(force=True)

    def __len__(self) -> int:
        return len(self._by_key)

    def principals(self) -> list[Principal]:
        return sorted(self._by_key.values(), key=lambda p: p.id)

    def _stat_signature(self):
        try:
            entries = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                             for e in os.scandir(self.directory) if e.name.endswith(".key"))
        except FileNotFoundError:
            entries = []
        return tuple(entries)

    def reload(self, *, force: bool = False) -> bool:
        """Read the directory again if it changed (or ``force``); whether it did."""
        signature = self._stat_signature()
        if not force and signature == self._signature:
            return False
        by_key: dict[str, Principal] = {}
        for name, _, _ in signature:
            path = self.directory / name
            try:
                cert = read_certificate(path)
                public = cert["public-key"]
                roles = parse_roles(cert.get("roles", ""))
                principal = Principal(f"key:{cert.get('name') or path.stem}", roles, "curve")
            except (OSError, KeyError, RoleError, LanecoreError) as exc:
                log.warning("%s enrols nobody: %s", path, getattr(exc, "message", exc))
                continue
            if len(public) != 40:
                log.warning("%s: not a Z85 CurveZMQ public key", path)
                continue
            by_key[public] = principal
        changed = by_key != self._by_key
        self._by_key = by_key
        self._signature = signature
        if changed and self.on_change is not None and not force:
            self.on_change()
        return changed

    def maybe_reload(self) -> None:
        """Reload when the directory changed, looking at most every RELOAD_S."""
        now = self.clock()
        if now - self._checked >= RELOAD_S:
            self._checked = now
            self.reload()

    def principal(self, user_id: str | None) -> Principal | None:
        """The enrolled identity of a connection's ZAP User-Id (its public key)."""
        if user_id is None:
            return None
        self.maybe_reload()
        return self._by_key.get(user_id)
