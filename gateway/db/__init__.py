"""Storage beside SQLite: PostgreSQL for a chain's shared state (docs/chain.md).

``pg`` (a psycopg 3 connection shaped like an autocommit ``sqlite3`` connection: the
dialect seam the stores of ``core`` run on unchanged), ``servers`` (real PostgreSQL
and NATS servers on loopback, for the demo and the tests) and ``relay``. The lowest
gateway room beside ``net``: it may import ``core`` and the drivers, no process.
"""
