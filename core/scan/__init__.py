"""Scanning: the catalogue (``catalog``: CSV import into SQLite, the compiled lookup
table, prices of in-store codes), the realistic synthetic catalogue (``synth``) and
scan mixes for tests and benchmarks (``scanmix``).

May import: ``lanecore.ext`` and ``core``'s shared files — no other domain.
"""
