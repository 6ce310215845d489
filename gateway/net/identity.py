"""Who is calling, and what they may do: one model for every lanecore process.

A caller's identity is what it *proved*, never a field it sent:

* over CurveZMQ (the verification service, the coupon gateway, their event sockets)
  it is the client's public key, enrolled as ``keys/devices/NAME.key`` with its roles
  in the certificate's metadata (``lanecore keys gen --name NAME --role ROLE,…``);
* at the payment gateway it is the POS terminal whose key made the request's HMAC
  (``lanecore terminal add ID --role ROLE,…``).

Each identity is a :class:`Principal` with a set of roles; each op of every process
declares the roles allowed to call it (the 5th element of an ``_ops()`` entry) and a
caller holding none of them is refused ``FORBIDDEN``. ``admin`` may call every op.

Without authentication (``--dev-open``, loopback and ipc only) every caller is the
documented development principal :data:`DEV`, which holds every role; the ``client``
field of a request then names whose retries it is, as it always did.

The roles (``docs/security.md`` has the table of ops each may call):

=============  ============================================================
``handheld``   a scan-as-you-shop handheld: scans, its basket, its order
``lane``       a lane controller or exit gate: weighing, verdicts, devices
``kiosk``      a self-pay kiosk: reads and pays orders, cash and cards
``till``       a staffed till (with a customer QR display)
``pos``        a multi-channel POS terminal
``attendant``  floor staff: alarms, overrides, weight confirmations
``manager``    store management: stored value top-ups, coupons, member prices
``payments``   the payment gateway as a caller of the other processes
``coupons``    the coupon gateway as a caller of the payment gateway
``hq``         head office: reports and reconciliation
``admin``      everything
=============  ============================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lanecore.core.errors import LanecoreError

__all__ = ["ROLES", "ANY", "STAFF", "Principal", "DEV", "RoleError", "roles",
           "parse_roles", "forbidden"]

ROLES = ("handheld", "lane", "kiosk", "till", "pos", "attendant", "manager", "payments",
         "coupons", "hq", "admin")
#: Every role: an op any authenticated caller may call (``hello``).
ANY = frozenset(ROLES)
#: Store staff.
STAFF = frozenset({"attendant", "manager"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class RoleError(LanecoreError):
    code = "BAD_ROLE"


def roles(*names: str) -> frozenset[str]:
    """The roles allowed to call an op (checked: a misspelt role is a bug)."""
    bad = [n for n in names if n not in ROLES]
    if bad or not names:
        raise RoleError(f"unknown role(s) {bad}; roles are {', '.join(ROLES)}")
    return frozenset(names)


def parse_roles(text) -> frozenset[str]:
    """``"lane,attendant"`` (or a list) → the roles; BAD_ROLE for an unknown one."""
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
    elif isinstance(text, (list, tuple, set, frozenset)):
        items = [str(t).strip() for t in text]
    else:
        raise RoleError(f"roles are a comma-separated list, not {type(text).__name__}")
    items = [t for t in items if t]
    if not items:
        raise RoleError(f"give at least one role: {', '.join(ROLES)}")
    bad = sorted(set(items) - set(ROLES))
    if bad:
        raise RoleError(f"unknown role(s) {', '.join(bad)}; roles are {', '.join(ROLES)}")
    return frozenset(items)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``id`` (``key:NAME``, ``pos:TERMINAL`` or ``dev``),
    its roles, and how it proved itself (``curve``, ``hmac`` or ``dev``)."""

    id: str
    roles: frozenset[str]
    via: str = "curve"

    def __post_init__(self):
        if not _NAME.match(self.id):
            raise RoleError(f"not an identity name: {self.id!r}")
        bad = set(self.roles) - set(ROLES)
        if bad:
            raise RoleError(f"unknown role(s) {sorted(bad)}")

    def may(self, allowed: frozenset[str]) -> bool:
        """Whether this caller holds one of ``allowed`` (``admin`` holds them all)."""
        return "admin" in self.roles or not self.roles.isdisjoint(allowed)

    def has(self, *names: str) -> bool:
        """Whether this caller holds one of ``names`` (or is ``admin``)."""
        return "admin" in self.roles or any(n in self.roles for n in names)

    @property
    def dev(self) -> bool:
        return self.via == "dev"

    def to_dict(self) -> dict:
        return {"id": self.id, "roles": sorted(self.roles), "via": self.via}


#: The development principal of a process started with ``--dev-open`` (or the
#: verification service in plain mode on loopback): it holds every role.
DEV = Principal("dev", ANY, "dev")


def forbidden(principal: Principal, op: str, allowed: frozenset[str]) -> LanecoreError:
    """The FORBIDDEN error for ``principal`` calling ``op``."""
    return LanecoreError(
        f"{principal.id} ({', '.join(sorted(principal.roles)) or 'no role'}) may not call "
        f"{op}; it needs one of: {', '.join(sorted(allowed))}", code="FORBIDDEN",
        details={"op": op, "roles": sorted(allowed)})


def declare(ops: list, table: dict[str, frozenset[str]]) -> list:
    """``_ops()`` entries ``(name, fn, schema, kind)`` with each op's roles from
    ``table`` (the process's one table of who may call what) appended; an op the
    table does not name, or a table entry with no op, is a TypeError at start-up."""
    names = [entry[0] for entry in ops]
    missing = [n for n in names if n not in table]
    extra = sorted(set(table) - set(names))
    if missing or extra:
        raise TypeError(f"role table and ops disagree: ops without roles {missing}, "
                        f"roles for no op {extra}")
    return [(*entry, table[entry[0]]) for entry in ops]
