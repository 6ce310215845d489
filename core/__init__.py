"""The domain, pure Python: no sockets, serial ports or threads here.

Grouped by domain, each a package that says what it may import:

- ``scan``  — the catalogue (CSV → SQLite → the compiled lookup table), the synthetic
  catalogue and the scan mixes.
- ``weigh`` — lane weighing configuration, the weigh-check verdict and its explanations,
  per-SKU weight learning and scale drift.
- ``pay``   — the payment ledger, routing, cash and change, reconciliation, member stored
  value, signed receipts and EMVCo QR payloads.
- ``promo`` — the pricing engine, coupons (GS1 and the coupon book), the
  multi-information QR and members.
- ``store`` — baskets and the signed order QR, handheld fleets, audits and the
  unattended venue.

Shared by every domain, and importing none of them: ``errors`` (the error type with
its stable code), ``config`` (``lanecore.toml``, the data directory, and private
files and directories: umask 077, 0700, 0600, ``BAD_PERMISSIONS``), ``sqltxn`` (the
SQLite transaction helper, and ``private_database``: database, -wal and -shm 0600)
and ``signing`` (Ed25519 keys, canonical JSON and base64url, for everything the store
signs).

May import: ``lanecore.ext`` and the standard library and third-party packages —
never ``drivers``, ``gateway`` or the command line (``pyproject.toml``'s import-linter
contracts, run by ``make test``, hold every package to this).
"""
