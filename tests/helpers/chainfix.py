"""Real PostgreSQL and NATS servers for the chain's tests (gateway/db/servers.py).

One server of each per test process, started on first use on loopback in a directory
made for it under /tmp (PostgreSQL runs as ``nobody`` under root, and a pytest
temporary directory below /tmp/pytest-of-root is not open to that user), stopped and
removed at the end of the session. A missing server fails the test that needs it
(``SERVER_MISSING``): it is never skipped.

``pg_url(name)`` gives each test (or module) a new empty database of its own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile

import pytest

_counter = itertools.count()


@pytest.fixture(scope="session")
def chain_root():
    root = tempfile.mkdtemp(prefix="lanecore-chain-test-", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)       # made above, for this session only


@pytest.fixture(scope="session")
def pg_server(chain_root):
    from lanecore.gateway.db.servers import Postgres
    server = Postgres(os.path.join(chain_root, "pg")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(chain_root):
    from lanecore.gateway.db.servers import Nats
    server = Nats(os.path.join(chain_root, "nats")).start()
    yield server
    server.stop()


def new_database(pg_server, prefix: str = "t") -> str:
    """A new empty database on the session's server; its URL."""
    return pg_server.create_database(f"{prefix}_{os.getpid()}_{next(_counter)}")


@pytest.fixture
def pg_url(pg_server):
    """A new empty PostgreSQL database for this test: its URL."""
    return new_database(pg_server)
