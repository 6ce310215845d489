"""A store data directory for tests: a generated catalogue imported into it."""

from __future__ import annotations

import csv
from pathlib import Path


def stock_store(d: Path, items: int, *, seed: int, region: str = "GB") -> list[dict]:
    """Generate a catalogue of ``items`` rows into ``d``, import it, write a
    lanecore.toml with the region; the catalogue's rows (as the CSV has them)."""
    from lanecore.core.scan.catalog import import_csv
    from lanecore.core.scan.synth import write_catalog_csv
    write_catalog_csv(d / "catalog.csv", items, seed=seed, region=region)
    assert import_csv(d, d / "catalog.csv").rows_bad == 0
    with open(d / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    (d / "lanecore.toml").write_text(f'[store]\nregion = "{region}"\n')
    return rows
