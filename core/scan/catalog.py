"""The store catalogue: an SQLite database of items, CSV price-list import, and the
in-memory lookup table the checkout hot paths use.

The database is ``data_dir / DATABASE_FILE`` (``store.db``), opened in WAL journal
mode with ``synchronous=FULL``. Table ``items``, one row per SKU:

=============  =======  ===========================================================
gtin           TEXT     primary key, exactly 14 digits (GTIN-14 form)
name           TEXT     1-200 characters
price_minor    INTEGER  price in integer minor units (pence, öre, cent), 0 ..
                        MAX_PRICE_MINOR (2**31 - 1: the lookup table's price column is
                        int32); for a variable-measure item the price per kilogram
unit_weight_g  REAL     expected weight of one unit in grams (NULL: weight-exempt or
                        variable-measure item)
weight_sd_g    REAL     standard deviation of that weight in grams (NULL: unknown)
flags          INTEGER  bits of ``lanecore.ext.lookup.FLAG_BITS``
origin, producer, inspection, supply_chain, promotion
               TEXT     free product information, NULL when empty
updated_at     REAL     Unix time (seconds) of the import that last wrote the row
=============  =======  ===========================================================

Table ``meta`` holds ``schema_version`` (also ``PRAGMA user_version``) and
``catalog_version``: a counter every import that writes rows bumps in its own
transaction (absent, read as 0, before the first). A running service compares it to
the version its lookup table was loaded at and reloads (``docs/scan/catalog.md``).

In-store (variable-measure) items are listed under their *lookup GTIN*, the in-store
code with its variable part (and price check digit) zeroed, e.g. ``2011122000005``
for the GB price codes ``2011122?????``. A scan finds its item by
``ScanResult.lookup_key`` (see ``Catalog.lookup_code``).

Every error raised to a caller is a :class:`~lanecore.core.errors.CatalogError`
with a stable ``code``: DB_ERROR, DB_BUSY (another connection holds the write lock
past the 5 s busy timeout), SCHEMA_TOO_NEW, NOT_A_CATALOG, CSV_NOT_FOUND,
CSV_UNREADABLE, BAD_CSV_HEADER, BAD_GTIN, and from :func:`update_item` UNKNOWN_ITEM,
BAD_PRICE, BAD_WEIGHT, BAD_ARGUMENT. Exceptions raised by a caller's own
``progress`` callback propagate unchanged (after the import is rolled back).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lanecore.core.config import DATABASE_FILE
from lanecore.core.errors import CatalogError
from lanecore.core.sqltxn import private_database
from lanecore.ext.barcode import parse_scan
from lanecore.ext.lookup import (FLAG_BITS, FLAG_VARIABLE_MEASURE, FLAG_WEIGHT_EXEMPT,
                                 CatalogTable)
from lanecore.ext.lookup import MAX_PRICE_MINOR as _TABLE_MAX_PRICE_MINOR

__all__ = [
    "SCHEMA_VERSION", "CSV_COLUMNS", "REQUIRED_COLUMNS", "TEXT_COLUMNS", "MAX_NAME_LEN",
    "MAX_TEXT_LEN", "MAX_PRICE_MINOR", "MAX_ERROR_DETAILS", "BATCH_ROWS",
    "CatalogError", "ImportReport", "Catalog", "connect", "database_path",
    "import_csv", "load_table", "item", "line_price_minor", "parse_flags",
    "flag_names", "CATALOG_VERSION_KEY", "catalog_version", "load_versioned_table",
    "update_item",
]

SCHEMA_VERSION = 1
#: The ``meta`` key of the catalogue version, bumped by every import that writes rows.
CATALOG_VERSION_KEY = "catalog_version"
_BUMP_VERSION_SQL = (f"INSERT INTO meta (key, value) VALUES ('{CATALOG_VERSION_KEY}', '1') "
                     "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
_VERSION_SQL = f"SELECT value FROM meta WHERE key = '{CATALOG_VERSION_KEY}'"

#: The documented CSV columns, in the order ``lanecore.core.scan.synth`` writes them.
CSV_COLUMNS = ("gtin", "name", "price_minor", "unit_weight_g", "weight_sd_g", "flags",
               "origin", "producer", "inspection", "supply_chain", "promotion")
REQUIRED_COLUMNS = ("gtin", "name", "price_minor")
TEXT_COLUMNS = ("origin", "producer", "inspection", "supply_chain", "promotion")

MAX_NAME_LEN = 200
MAX_TEXT_LEN = 2000
#: Largest accepted price in minor units: 2**31 - 1, the int32 ``price_minor`` column
#: of the lookup table (``lanecore.ext.lookup.MAX_PRICE_MINOR``): 21,474,836.47 in a
#: currency of cents, far above any shelf price (a larger price is BAD_PRICE).
MAX_PRICE_MINOR = _TABLE_MAX_PRICE_MINOR
#: Bad rows kept in detail in an ImportReport (all are counted).
MAX_ERROR_DETAILS = 1000
#: Rows per executemany batch, and about how often ``progress`` is called.
BATCH_ROWS = 50_000

_ITEM_COLUMNS = ("gtin", "name", "price_minor", "unit_weight_g", "weight_sd_g", "flags",
                 "origin", "producer", "inspection", "supply_chain", "promotion",
                 "updated_at")

# The CHECKs are a second line behind the import's validation, kept to what
# load_table relies on (14-digit GTINs, prices below 2**31, weights >= 0, flags
# that fit a uint8). They run for every row written, so they are the cheap kind: a
# GLOB of 14 digit classes, not NOT GLOB '*[^0-9]*' (a leading "*" makes SQLite try
# every position).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS items (
        gtin          TEXT PRIMARY KEY CHECK (gtin GLOB '{digits14}'),
        name          TEXT NOT NULL,
        price_minor   INTEGER NOT NULL
                      CHECK (typeof(price_minor) = 'integer'
                             AND price_minor BETWEEN 0 AND 2147483647),
        unit_weight_g REAL CHECK (unit_weight_g IS NULL OR unit_weight_g >= 0),
        weight_sd_g   REAL CHECK (weight_sd_g IS NULL OR weight_sd_g >= 0),
        flags         INTEGER NOT NULL DEFAULT 0 CHECK (flags BETWEEN 0 AND 255),
        origin        TEXT,
        producer      TEXT,
        inspection    TEXT,
        supply_chain  TEXT,
        promotion     TEXT,
        updated_at    REAL
    )""".replace("{digits14}", "[0-9]" * 14),
)

# A page cache as big as the import keeps the B-trees it touches in memory instead
# of spilling half-built pages to the WAL again and again: twice the CSV's size,
# within these bounds (KiB). SQLite allocates the pages only as they are used.
_IMPORT_CACHE_MIN_KIB = 64 * 1024
_IMPORT_CACHE_MAX_KIB = 1024 * 1024
_BUSY_TIMEOUT_S = 5.0
# Beyond this, the WAL is truncated after a checkpoint instead of staying as large as
# the biggest import ever was (bytes).
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def _db_error(exc: BaseException, what: str) -> CatalogError:
    """DB_BUSY when another connection holds the lock past the busy timeout, else
    DB_ERROR."""
    name = getattr(exc, "sqlite_errorname", "")
    busy = name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    err = CatalogError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")
    err.__cause__ = exc
    return err


# --------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------

def connect(path: str | os.PathLike, *, timeout: float = _BUSY_TIMEOUT_S
            ) -> sqlite3.Connection:
    """Open the store database file at ``path`` (created if absent) and make sure it
    has the current schema.

    The connection is in autocommit mode (``isolation_level=None``): this module
    opens its own transactions. WAL journal, ``synchronous=FULL``; ``timeout`` is how
    long (seconds) a write waits for another connection's lock. Raises CatalogError:
    DB_ERROR (cannot open, not a database), DB_BUSY, SCHEMA_TOO_NEW, NOT_A_CATALOG
    (an ``items`` table of another layout).
    """
    where = os.fspath(path)
    private_database(where)             # 0600, and so its -wal and -shm
    try:
        con = sqlite3.connect(where, isolation_level=None, timeout=timeout)
    except sqlite3.Error as exc:
        raise _db_error(exc, f"cannot open {where}") from exc
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        _ensure_schema(con, where)
    except sqlite3.Error as exc:
        con.close()
        raise _db_error(exc, f"cannot use {where}") from exc
    except BaseException:
        con.close()
        raise
    return con


def _ensure_schema(con: sqlite3.Connection, where: str) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"{where} has catalogue schema {version}; this lanecore reads up to "
            f"{SCHEMA_VERSION}", code="SCHEMA_TOO_NEW")
    if version < SCHEMA_VERSION:
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                con.execute(stmt)
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                        "('schema_version', ?)", (str(SCHEMA_VERSION),))
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    have = {row[1] for row in con.execute("PRAGMA table_info(items)")}
    missing = set(_ITEM_COLUMNS) - have
    if missing:
        raise CatalogError(f"{where}: table items lacks columns {sorted(missing)}; "
                           "not a lanecore catalogue", code="NOT_A_CATALOG")


def database_path(path: str | os.PathLike) -> Path:
    """The database file for ``path``: ``path / DATABASE_FILE`` when ``path`` is a
    directory (a data directory), else ``path`` itself."""
    p = Path(path)
    return p / DATABASE_FILE if p.is_dir() else p


@contextlib.contextmanager
def _connection(db_or_path) -> Iterator[sqlite3.Connection]:
    """A connection for ``db_or_path``: a Catalog's, a caller's connection (left
    open), or one opened on a path (a data directory or a database file) and closed
    afterwards."""
    if isinstance(db_or_path, Catalog):
        yield db_or_path._con()
    elif isinstance(db_or_path, sqlite3.Connection):
        yield db_or_path
    elif isinstance(db_or_path, (str, os.PathLike)):
        con = connect(database_path(db_or_path))
        try:
            yield con
        finally:
            con.close()
    else:
        raise TypeError(f"expected a Catalog, sqlite3.Connection or path, "
                        f"got {type(db_or_path).__name__}")


# --------------------------------------------------------------------------------------
# CSV import
# --------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    """What one CSV import did.

    ``rows_read`` counts data rows (blank lines are skipped and not counted);
    ``rows_imported`` the rows written (inserted or replacing an existing GTIN);
    ``rows_bad`` every rejected row, of which the first ``MAX_ERROR_DETAILS`` are in
    ``errors`` as ``(line, code, message)`` with ``line`` the 1-based line of the
    file where the row starts (the header is line 1). ``seconds`` is wall time.
    """

    rows_read: int = 0
    rows_imported: int = 0
    rows_bad: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors_truncated(self) -> bool:
        """True when more rows were bad than ``errors`` lists."""
        return self.rows_bad > len(self.errors)

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_imported": self.rows_imported,
            "rows_bad": self.rows_bad,
            "errors": [{"line": ln, "code": c, "message": m}
                       for ln, c, m in self.errors],
            "errors_truncated": self.errors_truncated,
            "warnings": list(self.warnings),
            "seconds": self.seconds,
        }


_FLAG_SEPARATORS = str.maketrans({"|": " ", ";": " ", ",": " "})
_FLAG_CACHE_MAX = 4096


def parse_flags(text: str) -> int:
    """Flag bits of a ``flags`` cell: names of FLAG_BITS separated by ``|``, ``;``,
    ``,`` or whitespace, any case; empty means none. Raises ValueError naming an
    unknown flag."""
    bits = 0
    for word in text.translate(_FLAG_SEPARATORS).split():
        bit = FLAG_BITS.get(word.lower())
        if bit is None:
            raise ValueError(f"unknown flag {word!r}; known: {', '.join(FLAG_BITS)}")
        bits |= bit
    return bits


def flag_names(bits: int) -> list[str]:
    """Names of the flags set in ``bits``, in FLAG_BITS order."""
    return [name for name, bit in FLAG_BITS.items() if bits & bit]


def _price_problem(text: str) -> str:
    if not text:
        return "price_minor is empty"
    if text.startswith("-") and text[1:].isdigit():
        return f"price_minor {text!r} is negative"
    if text.isascii() and text.isdigit():
        return (f"price_minor {text} exceeds {MAX_PRICE_MINOR} minor units (the "
                f"lookup table keeps prices as int32)")
    try:
        float(text)
    except ValueError:
        return f"price_minor {text[:40]!r} is not a whole number of minor units"
    return (f"price_minor {text[:40]!r} is not a whole number: give the price in "
            f"integer minor units (e.g. 1250 for 12.50)")


def import_csv(db_or_path, csv_path: str | os.PathLike, *,
               progress: Callable[[int, int, int], object] | None = None
               ) -> ImportReport:
    """Import a price-list CSV into the catalogue; return an ImportReport.

    ``db_or_path``: a Catalog, an open connection (from :func:`connect`), a data
    directory or a database file. The CSV is UTF-8 (a BOM is allowed) with a header
    row naming the columns, any order, any case. Required: ``gtin``, ``name``,
    ``price_minor``. Optional: ``unit_weight_g``, ``weight_sd_g``, ``flags``,
    ``origin``, ``producer``, ``inspection``, ``supply_chain``, ``promotion``. Other
    columns are ignored with a warning.

    Row rules (the first broken rule rejects the row, with its code):

    * BAD_ROW: not as many fields as the header (or a CSV syntax error).
    * BAD_GTIN: ``gtin`` must be digits that ``lanecore.parse_scan`` (no region)
      reads as a GTIN or in-store number (GTIN-8/12/13/14, UPC-E); it is stored as
      14 digits. List an in-store item under its lookup GTIN (variable part zeroed).
    * DUPLICATE_GTIN: the GTIN already appeared on an earlier line of this file
      (the message names it), even if that row was itself rejected: the file
      contradicts itself, and the earlier row stands.
    * MISSING_NAME: ``name`` empty after stripping; TOO_LONG: over 200 characters.
    * BAD_PRICE: ``price_minor`` must be an integer >= 0 in minor units (``1250``,
      not ``12.50``), at most MAX_PRICE_MINOR.
    * BAD_FLAGS: ``flags`` holds names of FLAG_BITS (weight_exempt,
      variable_measure, eas_tagged, age_restricted) separated by ``|``, ``;``, ``,``
      or spaces, any case; empty means none.
    * BAD_WEIGHT: ``unit_weight_g`` and ``weight_sd_g`` must be finite numbers of
      grams >= 0. A ``unit_weight_g`` cell may be empty only for weight_exempt or
      variable_measure items; an empty ``weight_sd_g`` is stored as NULL. A file
      without a ``unit_weight_g`` column imports every item without a weight (NULL),
      with a warning.
    * TOO_LONG: a free-text field over 2000 characters.

    ``name`` is stripped of surrounding whitespace; free text is stored as given,
    an empty cell as NULL.
    A GTIN already in the database is replaced (upsert). The whole import is one
    transaction: if it fails part-way (an unreadable file, a database error, an
    exception from ``progress``) nothing changes. An import that writes rows bumps
    ``catalog_version`` in that transaction (:func:`catalog_version`), which tells a
    running service to reload. ``progress(rows_done, bytes_done,
    bytes_total)`` is called about every BATCH_ROWS rows and once at the end
    (``bytes_done`` is approximate until then).

    Raises CatalogError: CSV_NOT_FOUND, CSV_UNREADABLE (cannot be read, not UTF-8),
    BAD_CSV_HEADER (empty file, required column missing, column named twice) before
    anything is written; DB_BUSY (another writer holds the lock), DB_ERROR.
    """
    with _connection(db_or_path) as con:
        return _import(con, csv_path, progress)


def _open_csv(csv_path):
    where = os.fspath(csv_path)
    try:
        f = open(where, "r", encoding="utf-8-sig", newline="")
    except FileNotFoundError as exc:
        raise CatalogError(f"{where}: no such file", code="CSV_NOT_FOUND") from exc
    except OSError as exc:
        raise CatalogError(f"{where}: cannot open: {exc.strerror or exc}",
                           code="CSV_UNREADABLE") from exc
    return f, where


def _header(reader, where: str, report: ImportReport) -> tuple[dict[str, int], int]:
    """(column name -> field index, number of fields), from the header row."""
    try:
        header = next(reader)
    except StopIteration:
        raise CatalogError(f"{where}: empty file, no header row",
                           code="BAD_CSV_HEADER") from None
    except csv.Error as exc:
        raise CatalogError(f"{where}: line 1: {exc}", code="BAD_CSV_HEADER") from exc
    names = [h.strip().lower() for h in header]
    index: dict[str, int] = {}
    unnamed = 0
    for i, name in enumerate(names):
        if not name:  # spreadsheets export empty trailing columns
            unnamed += 1
            continue
        if name in index:
            raise CatalogError(f"{where}: column {name!r} appears twice in the header",
                               code="BAD_CSV_HEADER")
        index[name] = i
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        raise CatalogError(
            f"{where}: header lacks required column(s) {', '.join(missing)}; "
            f"it has {', '.join(repr(n) for n in names) or 'nothing'}",
            code="BAD_CSV_HEADER")
    unknown = [n for n in names if n and n not in CSV_COLUMNS]
    if unknown:
        report.warnings.append(
            f"ignored unknown column(s): {', '.join(repr(n) for n in unknown)}")
    if unnamed:
        report.warnings.append(f"ignored {unnamed} column(s) without a name")
    if "unit_weight_g" not in index:
        report.warnings.append(
            "no unit_weight_g column: items are imported without a unit weight, so "
            "the weight check cannot verify them")
    return index, len(names)


def _import(con: sqlite3.Connection, csv_path, progress) -> ImportReport:
    t0 = time.perf_counter()
    report = ImportReport()
    f, where = _open_csv(csv_path)
    with f:
        try:
            bytes_total = os.fstat(f.fileno()).st_size
            reader = csv.reader(f, strict=True)
            index, ncols = _header(reader, where, report)
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{where}: line 1 is not UTF-8: {exc.reason}",
                               code="CSV_UNREADABLE") from exc
        except OSError as exc:
            raise CatalogError(f"{where}: cannot read: {exc.strerror or exc}",
                               code="CSV_UNREADABLE") from exc
        try:
            old_cache = con.execute("PRAGMA cache_size").fetchone()[0]
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot start the import") from exc
        try:
            cache_kib = min(_IMPORT_CACHE_MAX_KIB,
                            max(_IMPORT_CACHE_MIN_KIB, 2 * bytes_total // 1024))
            con.execute(f"PRAGMA cache_size = -{cache_kib}")
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _db_error(exc, "cannot start the import") from exc
            _import_in_transaction(con, reader, f.buffer, bytes_total, index, ncols,
                                   report, progress, where)
        finally:
            with contextlib.suppress(sqlite3.Error):
                con.execute(f"PRAGMA cache_size = {old_cache}")
    report.seconds = time.perf_counter() - t0
    return report


def _import_in_transaction(con, reader, raw, bytes_total, index, ncols, report,
                           progress, where) -> None:
    """Write the rows and COMMIT, or ROLLBACK and raise."""
    try:
        _rows(con, reader, raw, bytes_total, index, ncols, report, progress)
        if report.rows_imported:
            con.execute(_BUMP_VERSION_SQL)   # committed with the rows, or not at all
        con.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise _db_error(exc, "import failed, nothing imported") from exc
        if isinstance(exc, UnicodeDecodeError):
            # The decoder reads ahead, so the line is where reading had got to.
            raise CatalogError(
                f"{where}: near line {reader.line_num + 1}: not UTF-8 "
                f"({exc.reason}); nothing imported", code="CSV_UNREADABLE") from exc
        if isinstance(exc, OSError):
            raise CatalogError(f"{where}: cannot read: {exc.strerror or exc}; "
                               "nothing imported", code="CSV_UNREADABLE") from exc
        raise


# An empty free-text cell becomes NULL in SQLite, in C, so the import loop passes
# the cells through untouched (a Python strip-or-None per cell, or SQLite's trim()
# with a character set, each cost more than the rest of the row's checks).
_TEXT_VALUE = "NULLIF(?, '')"


def _upsert_sql(present_text: list[str], now: float) -> str:
    """The upsert for one import: absent text columns are written as NULL (a row is
    replaced whole), and the import time is a constant."""
    values = ["?"] * 6 + [_TEXT_VALUE if c in present_text else "NULL"
                          for c in TEXT_COLUMNS]
    values.append(repr(float(now)))
    return (f"INSERT INTO items ({', '.join(_ITEM_COLUMNS)}) "
            f"VALUES ({', '.join(values)}) ON CONFLICT(gtin) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _ITEM_COLUMNS[1:]))


def _weight_problem(text: str, column: str) -> str:
    try:
        float(text)
    except ValueError:
        return f"{column} {text[:40]!r} is not a number of grams"
    return f"{column} {text[:40]!r} must be a finite number of grams >= 0"


def _rows(con, reader, raw, bytes_total, index, ncols, report, progress) -> None:
    """Validate and write the data rows (inside the caller's transaction).

    This loop is the import's cost per row, so it keeps to locals, C-level calls and
    early ``continue``; the slow paths (messages) live in helpers.
    """
    errors = report.errors
    n_bad = 0

    def bad(line: int, code: str, message: str) -> None:
        nonlocal n_bad
        n_bad += 1
        if len(errors) < MAX_ERROR_DETAILS:
            errors.append((line, code, message))

    i_gtin = index["gtin"]
    i_name = index["name"]
    i_price = index["price_minor"]
    i_weight = index.get("unit_weight_g", -1)
    i_sd = index.get("weight_sd_g", -1)
    i_flags = index.get("flags", -1)
    text_names = [c for c in TEXT_COLUMNS if c in index]
    i_text = [index[c] for c in text_names]
    if len(i_text) > 1:
        get_texts = operator.itemgetter(*i_text)
    elif i_text:
        get_texts = (lambda row, i=i_text[0]: (row[i],))
    else:
        get_texts = None
    upsert = _upsert_sql(text_names, time.time())

    parse = parse_scan
    seen: dict[str, int] = {}
    seen_get = seen.get
    flag_cache: dict[str, int] = {"": 0}
    flag_get = flag_cache.get
    exempt_bits = FLAG_WEIGHT_EXEMPT | FLAG_VARIABLE_MEASURE
    max_price_len = len(str(MAX_PRICE_MINOR))
    max_price = MAX_PRICE_MINOR
    max_text = MAX_TEXT_LEN
    inf = math.inf
    batch: list[tuple] = []
    append = batch.append
    executemany = con.executemany
    imported = 0
    # Line where the previous record ended; a record starts on the next one (quoted
    # fields may span lines).
    prev_end = reader.line_num

    while True:
        try:
            for row in reader:
                start = prev_end + 1
                prev_end = reader.line_num
                if len(row) != ncols:
                    if row:  # a blank line is skipped silently
                        bad(start, "BAD_ROW",
                            f"{len(row)} fields; the header has {ncols}")
                    continue

                g = row[i_gtin].strip()
                r = parse(g)
                if not (r.ok and (r.kind == "gtin" or r.kind == "rcn")
                        and g.isdigit()):
                    bad(start, "BAD_GTIN", _gtin_problem(g, r))
                    continue
                gtin = r.gtin
                first = seen_get(gtin)
                if first is not None:
                    bad(start, "DUPLICATE_GTIN",
                        f"GTIN {gtin} is already on line {first}; this row is skipped")
                    continue
                seen[gtin] = start

                name = row[i_name].strip()
                if not name:
                    bad(start, "MISSING_NAME", "name is empty")
                    continue
                if len(name) > MAX_NAME_LEN:
                    bad(start, "TOO_LONG", f"name has {len(name)} characters; the "
                        f"limit is {MAX_NAME_LEN}")
                    continue

                p = row[i_price].strip()
                if not (p.isascii() and p.isdigit() and len(p) <= max_price_len
                        and (price := int(p)) <= max_price):
                    bad(start, "BAD_PRICE", _price_problem(p))
                    continue

                if i_flags >= 0:
                    fs = row[i_flags]
                    flags = flag_get(fs)
                    if flags is None:
                        try:
                            flags = parse_flags(fs)
                        except ValueError as exc:
                            bad(start, "BAD_FLAGS", str(exc))
                            continue
                        if len(flag_cache) < _FLAG_CACHE_MAX:
                            flag_cache[fs] = flags
                else:
                    flags = 0

                w = row[i_weight].strip() if i_weight >= 0 else None
                if w:
                    try:
                        weight = float(w) + 0.0  # + 0.0 turns -0.0 into 0.0
                    except ValueError:
                        weight = -1.0
                    if not 0.0 <= weight < inf:  # NaN fails both comparisons
                        bad(start, "BAD_WEIGHT", _weight_problem(w, "unit_weight_g"))
                        continue
                elif w is None or flags & exempt_bits:
                    weight = None  # no column at all, or an item that needs none
                else:
                    bad(start, "BAD_WEIGHT",
                        "unit_weight_g is empty; only weight_exempt or "
                        "variable_measure items may leave it out")
                    continue

                s = row[i_sd].strip() if i_sd >= 0 else ""
                if s:
                    try:
                        sd = float(s) + 0.0
                    except ValueError:
                        sd = -1.0
                    if not 0.0 <= sd < inf:
                        bad(start, "BAD_WEIGHT", _weight_problem(s, "weight_sd_g"))
                        continue
                else:
                    sd = None

                if get_texts is None:
                    append((gtin, name, price, weight, sd, flags))
                else:
                    texts = get_texts(row)
                    if max(map(len, texts)) > max_text:
                        k = max(range(len(texts)), key=lambda j: len(texts[j]))
                        bad(start, "TOO_LONG", f"{text_names[k]} has {len(texts[k])} "
                            f"characters; the limit is {max_text}")
                        continue
                    append((gtin, name, price, weight, sd, flags) + texts)
                if len(batch) >= BATCH_ROWS:
                    executemany(upsert, batch)
                    imported += len(batch)
                    batch.clear()
                    if progress is not None:
                        progress(imported + n_bad, raw.tell(), bytes_total)
            break
        except csv.Error as exc:
            # The reader resumes on the next line; only this record is lost.
            bad(prev_end + 1, "BAD_ROW", f"CSV syntax error: {exc}")
            prev_end = reader.line_num

    if batch:
        executemany(upsert, batch)
        imported += len(batch)
        batch.clear()
    if progress is not None:
        progress(imported + n_bad, bytes_total, bytes_total)
    report.rows_imported = imported
    report.rows_bad = n_bad
    report.rows_read = imported + n_bad


# --------------------------------------------------------------------------------------
# Editing one item
# --------------------------------------------------------------------------------------

def update_item(db_or_path, gtin, *, price_minor: int | None = None,
                unit_weight_g: float | None = None, eas: bool | None = None) -> dict:
    """Change one item's price, unit weight or EAS flag; return ``{"item": the row
    as :func:`item` gives it, "catalog_version": the new version, "changed": {column:
    [old, new]}}``.

    ``None`` leaves a field as it is. The values are checked as the CSV import checks
    them: ``price_minor`` an int (not a bool) in 0..MAX_PRICE_MINOR (BAD_PRICE);
    ``unit_weight_g`` a finite number of grams >= 0 (BAD_WEIGHT); ``eas`` a bool
    setting or clearing the ``eas_tagged`` flag (BAD_ARGUMENT). The row is updated
    in its own transaction (BEGIN IMMEDIATE) together with the bump of
    ``catalog_version``, exactly as an import that writes rows bumps it, so a running
    service reloads. Nothing given, or nothing different from the row: nothing is
    written and the version stays. Raises CatalogError BAD_GTIN, UNKNOWN_ITEM,
    BAD_PRICE, BAD_WEIGHT, BAD_ARGUMENT, DB_BUSY, DB_ERROR.
    """
    key = _gtin14(gtin)
    if price_minor is not None and (
            isinstance(price_minor, bool) or not isinstance(price_minor, (int, np.integer))
            or not 0 <= price_minor <= MAX_PRICE_MINOR):
        raise CatalogError(f"price_minor {price_minor!r} must be a whole number of minor "
                           f"units in 0..{MAX_PRICE_MINOR}", code="BAD_PRICE")
    if unit_weight_g is not None:
        try:
            w = float(unit_weight_g) + 0.0
        except (TypeError, ValueError):
            w = -1.0
        if isinstance(unit_weight_g, bool) or not 0.0 <= w < math.inf:
            raise CatalogError(f"unit_weight_g {unit_weight_g!r} must be a finite number "
                               "of grams >= 0", code="BAD_WEIGHT")
        unit_weight_g = w
    if eas is not None and not isinstance(eas, bool):
        raise CatalogError(f"eas {eas!r} must be True or False", code="BAD_ARGUMENT")
    eas_bit = FLAG_BITS["eas_tagged"]
    with _connection(db_or_path) as con:
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            raise _db_error(exc, "cannot start the update") from exc
        try:
            row = con.execute("SELECT price_minor, unit_weight_g, flags FROM items "
                              "WHERE gtin = ?", (key,)).fetchone()
            if row is None:
                raise CatalogError(f"GTIN {key} is not in the catalogue",
                                   code="UNKNOWN_ITEM")
            old_price, old_weight, old_flags = row
            new_flags = old_flags if eas is None else (
                old_flags | eas_bit if eas else old_flags & ~eas_bit)
            changed = {}
            if price_minor is not None and int(price_minor) != old_price:
                changed["price_minor"] = [old_price, int(price_minor)]
            if unit_weight_g is not None and unit_weight_g != old_weight:
                changed["unit_weight_g"] = [old_weight, unit_weight_g]
            if new_flags != old_flags:
                changed["eas"] = [bool(old_flags & eas_bit), bool(new_flags & eas_bit)]
            if changed:
                con.execute(
                    "UPDATE items SET price_minor = ?, unit_weight_g = ?, flags = ?, "
                    "updated_at = ? WHERE gtin = ?",
                    (changed.get("price_minor", [0, old_price])[1],
                     changed.get("unit_weight_g", [0, old_weight])[1], new_flags,
                     time.time(), key))
                con.execute(_BUMP_VERSION_SQL)   # committed with the row, or not at all
            version = _version(con)
            con.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _db_error(exc, "update failed, nothing changed") from exc
            raise
        return {"item": item(con, key), "catalog_version": version, "changed": changed}


def _gtin_problem(text: str, r) -> str:
    if not text:
        return "gtin is empty"
    if not r.ok:
        return f"gtin {text[:40]!r}: {r.error_message} ({r.error_code})"
    if not text.isdigit():
        return f"gtin {text[:40]!r} must be digits only"
    return f"gtin {text[:40]!r} is a {r.kind} code, not a GTIN"


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def load_table(db_or_path) -> CatalogTable:
    """The whole catalogue as a CatalogTable (numpy columns and the GTIN index).

    Columns: ``gtin`` (uint64, the GTIN-14 as an integer), ``price_minor`` (int32,
    minor units, at most MAX_PRICE_MINOR), ``weight_mean_g`` and ``weight_sd_g``
    (float64 grams, NaN where NULL), ``flags`` (uint8), in the index's row order (see
    :class:`~lanecore.ext.lookup.CatalogTable`). Rows are read in one read
    transaction, so the table is a consistent snapshot even while another process
    imports. Raises CatalogError DB_ERROR, or BAD_PRICE for a price above
    MAX_PRICE_MINOR (a database written before that bound: re-import the item).
    """
    with _connection(db_or_path) as con:
        try:
            return _load(con)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot load the catalogue") from exc


def catalog_version(db_or_path) -> int:
    """The catalogue version (``meta.catalog_version``): 0 before the first import,
    one more after every import that wrote rows. One indexed read, cheap enough to
    poll. Raises CatalogError DB_ERROR."""
    with _connection(db_or_path) as con:
        try:
            return _version(con)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the catalogue version") from exc


def _version(con: sqlite3.Connection) -> int:
    row = con.execute(_VERSION_SQL).fetchone()
    return 0 if row is None else int(row[0])


def load_versioned_table(db_or_path) -> tuple[int, CatalogTable]:
    """``(catalog_version, load_table())`` read in one read transaction: the table
    is exactly the catalogue of that version, even while another process imports.
    Raises CatalogError DB_ERROR."""
    with _connection(db_or_path) as con:
        own_txn = not con.in_transaction
        try:
            if own_txn:
                con.execute("BEGIN")
            try:
                return _version(con), _load(con)
            finally:
                if own_txn:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot load the catalogue") from exc


# Every value of a row passes through one float64 array: the schema keeps GTINs
# (< 10**14), prices (< 2**31, older databases < 10**15) and flags below 2**53, where float64 is exact, and
# weights are >= 0, so -1 can stand for NULL. One flat np.fromiter over the cursor
# avoids a Python list per column.
_LOAD_SQL = ("SELECT CAST(gtin AS INTEGER), price_minor, IFNULL(unit_weight_g, -1.0), "
             "IFNULL(weight_sd_g, -1.0), flags FROM items")


def _load(con: sqlite3.Connection) -> CatalogTable:
    own_txn = not con.in_transaction
    if own_txn:
        con.execute("BEGIN")
    try:
        n = con.execute("SELECT count(*) FROM items").fetchone()[0]
        flat = np.fromiter(itertools.chain.from_iterable(con.execute(_LOAD_SQL)),
                           dtype=np.float64, count=5 * n)
    except ValueError as exc:  # fewer rows than counted: impossible in one snapshot
        raise CatalogError(f"catalogue changed while loading: {exc}",
                           code="DB_ERROR") from exc
    finally:
        if own_txn:
            with contextlib.suppress(sqlite3.Error):
                con.execute("COMMIT")
    rows = flat.reshape(n, 5)
    weight = rows[:, 2].copy()
    weight[weight < 0] = np.nan
    sd = rows[:, 3].copy()
    sd[sd < 0] = np.nan
    price = rows[:, 1]
    if n and price.max() > MAX_PRICE_MINOR:
        i = int(np.argmax(price))
        raise CatalogError(
            f"item {int(rows[i, 0]):014d} has price_minor {int(price[i])}, above "
            f"{MAX_PRICE_MINOR} (the lookup table keeps prices as int32; this database "
            f"was written before that bound): re-import the item with a smaller price",
            code="BAD_PRICE")
    return CatalogTable(rows[:, 0].astype(np.uint64), price.astype(np.int32),
                        weight, sd, rows[:, 4].astype(np.uint8))


def _gtin14(gtin) -> str:
    if isinstance(gtin, str):
        g = gtin.strip()
        if g.isascii() and g.isdigit() and len(g) in (8, 12, 13, 14):
            return g.zfill(14)
    elif isinstance(gtin, (int, np.integer)) and not isinstance(gtin, bool):
        if 0 <= gtin < 10 ** 14:
            return "%014d" % gtin
    raise CatalogError(f"{gtin!r} is not a GTIN (8, 12, 13 or 14 digits)",
                       code="BAD_GTIN")


def item(db, gtin14: str) -> dict | None:
    """One item as a dict of all ``items`` columns, or None when absent.

    ``gtin14`` is the 14-digit GTIN (8, 12 or 13 digits are zero-padded; an int is
    accepted). ``flags`` is expanded to a list of flag names and the bits are kept
    as ``flag_bits``; prices are minor units, weights grams (None when NULL).
    Raises CatalogError BAD_GTIN, DB_ERROR.
    """
    key = _gtin14(gtin14)
    with _connection(db) as con:
        try:
            cur = con.execute(f"SELECT {', '.join(_ITEM_COLUMNS)} FROM items "
                              "WHERE gtin = ?", (key,))
            row = cur.fetchone()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the catalogue") from exc
    if row is None:
        return None
    out = dict(zip(_ITEM_COLUMNS, row))
    out["flag_bits"] = out["flags"]
    out["flags"] = flag_names(out["flags"])
    return out


def _round_half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


def line_price_minor(item_row: dict, scan) -> int | None:
    """The price of the scanned unit in minor units, or None when it needs a weight.

    * A scan that carries a price (in-store price code, GS1 AI 392n/393n): that price.
    * A variable-measure item (``price_minor`` per kg) and a scan that carries a
      weight in grams: ``price_minor * weight_g / 1000`` rounded half up to an
      integer (exact arithmetic: 1234 per kg x 0.5 kg = 617; 999 x 0.0015 kg =
      1.4985 -> 1; 1 x 0.5 kg = 0.5 -> 1).
    * An in-store count code (DE 25/26): ``price_minor * count``.
    * Any other variable-measure item: None (the till must weigh it).
    * Otherwise the item's ``price_minor``.
    """
    if scan.price_minor is not None:
        return int(scan.price_minor)
    bits = item_row.get("flag_bits", 0)
    price = item_row["price_minor"]
    if bits & FLAG_VARIABLE_MEASURE and scan.weight_g is not None:
        return _round_half_up(Fraction(price) * Fraction(scan.weight_g) / 1000)
    if scan.kind == "rcn" and scan.count is not None:
        return price * int(scan.count)
    if bits & FLAG_VARIABLE_MEASURE:
        return None
    return price


# --------------------------------------------------------------------------------------
# The catalogue object
# --------------------------------------------------------------------------------------

class Catalog:
    """The store catalogue in a data directory: database, import, lookups.

    Use as a context manager (or call :meth:`close`)::

        with Catalog.open(data_dir) as cat:
            cat.import_csv("prices.csv")
            cat.lookup_code("2011122912346", region="GB")
    """

    def __init__(self, connection: sqlite3.Connection, path: Path | None = None):
        self.connection = connection
        self.path = path
        self._table: CatalogTable | None = None
        self._table_key = None

    @classmethod
    def open(cls, data_dir: str | os.PathLike) -> Catalog:
        """Open (creating if needed) ``data_dir / DATABASE_FILE``. The directory must
        exist (``lanecore.core.config.resolve_data_dir`` creates it). Raises
        CatalogError DB_ERROR, SCHEMA_TOO_NEW, NOT_A_CATALOG."""
        d = Path(data_dir)
        if not d.is_dir():
            raise CatalogError(f"data directory {d} does not exist", code="DB_ERROR")
        path = d / DATABASE_FILE
        return cls(connect(path), path)

    # context manager -------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        con, self.connection = self.connection, None
        self._table = None
        if con is not None:
            con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _con(self) -> sqlite3.Connection:
        if self.connection is None:
            raise CatalogError("the catalogue is closed", code="DB_ERROR")
        return self.connection

    # operations ------------------------------------------------------------------

    def import_csv(self, csv_path: str | os.PathLike, *,
                   progress: Callable[[int, int, int], object] | None = None
                   ) -> ImportReport:
        """Import a price-list CSV (see the module-level :func:`import_csv`)."""
        try:
            return import_csv(self._con(), csv_path, progress=progress)
        finally:
            self._table = None

    def update_item(self, gtin, *, price_minor: int | None = None,
                    unit_weight_g: float | None = None, eas: bool | None = None) -> dict:
        """Change one item (see the module-level :func:`update_item`)."""
        try:
            return update_item(self._con(), gtin, price_minor=price_minor,
                               unit_weight_g=unit_weight_g, eas=eas)
        finally:
            self._table = None

    def table(self) -> CatalogTable:
        """The lookup table, loaded once and reloaded when the database changed
        (an import through this object or a commit by any other connection)."""
        con = self._con()
        try:
            key = (con.execute("PRAGMA data_version").fetchone()[0], con.total_changes)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the catalogue") from exc
        if self._table is None or key != self._table_key:
            self._table = load_table(con)
            self._table_key = key
        return self._table

    def item(self, gtin: str) -> dict | None:
        """One item (see the module-level :func:`item`), or None."""
        return item(self._con(), gtin)

    def version(self) -> int:
        """The catalogue version (see :func:`catalog_version`)."""
        return catalog_version(self._con())

    def count(self) -> int:
        """Number of items."""
        try:
            return self._con().execute("SELECT count(*) FROM items").fetchone()[0]
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the catalogue") from exc

    def lookup_code(self, code, region: str | None = None) -> dict:
        """Look up what a scanner sent.

        Returns ``{"scan": ScanResult.to_dict(), "found": bool, "item": dict | None,
        "error": {"code", "message"} | None}``. The scan is parsed with
        ``lanecore.parse_scan(code, region)`` (``region`` decides how in-store codes
        are read) and its ``lookup_key`` is looked up in :meth:`table`. A scan that
        does not parse gives its own error (e.g. BAD_CHECK_DIGIT); one that parses
        but names no catalogue item (or carries no GTIN, e.g. an SSCC) gives
        UNKNOWN_ITEM. A found item is :meth:`item` plus ``line_price_minor``, the
        price of this unit in minor units (see :func:`line_price_minor`: embedded
        price; else per-kg price x weight / 1000 rounded half up; None when a
        variable-measure item still needs weighing).
        """
        r = parse_scan(code, region)
        out = {"scan": r.to_dict(), "found": False, "item": None, "error": None}
        if not r.ok:
            out["error"] = r.error
            return out
        key = r.lookup_key
        if key is None:
            out["error"] = {"code": "UNKNOWN_ITEM",
                            "message": f"a {r.kind} scan carries no GTIN to look up"}
            return out
        found = self.table().lookup(key) >= 0
        row = self.item(r.lookup_gtin) if found else None
        if row is None:
            out["error"] = {"code": "UNKNOWN_ITEM",
                            "message": f"GTIN {r.lookup_gtin} is not in the catalogue"}
            return out
        row["line_price_minor"] = line_price_minor(row, r)
        out["found"] = True
        out["item"] = row
        return out
