"""Where the store's data lives and what the store configures.

The data directory holds the store database (``store.db``) and the optional
configuration file ``lanecore.toml``. It is chosen by ``--data-dir``, else
``LANECORE_DATA_DIR``, else ``$XDG_DATA_HOME/lanecore`` (``~/.local/share/lanecore``).

``lanecore.toml``::

    [store]
    region = "CN"            # ISO 3166 alpha-2: whose in-store code rules apply

    [rcn.CN]                 # a store-defined in-store code table (adds or overrides)
    currency = "CNY"
    currency_numeric = 156
    exponent = 2             # digits of the minor unit
    [rcn.CN.prefixes]
    "20" = { measure = "price",  pattern = "PPPPPPPVVVVV", decimals = 2 }
    "21" = { measure = "weight", pattern = "PPPPPPPVVVVV", decimals = 3 }

A pattern covers the 12 digits before the GTIN-13 check digit: ``P`` item reference
(prefix included), ``C`` the price/weight check digit, ``V`` the variable value.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lanecore.core.errors import ConfigError
from lanecore.ext import barcode
from lanecore.ext.gs1data import RcnRegion

CONFIG_FILE = "lanecore.toml"
DATABASE_FILE = "store.db"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(base).expanduser() / "lanecore"


def resolve_data_dir(cli_value: str | os.PathLike | None = None, *, create: bool = True) -> Path:
    """The data directory: the command-line value, else LANECORE_DATA_DIR, else default."""
    chosen = cli_value or os.environ.get("LANECORE_DATA_DIR") or default_data_dir()
    path = Path(chosen).expanduser()
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create data directory {path}: {exc.strerror}",
                              code="BAD_DATA_DIR") from exc
    return path


@dataclass
class StoreConfig:
    """What ``lanecore.toml`` says (all optional)."""

    region: str | None = None
    regions: dict[str, RcnRegion] = field(default_factory=dict)
    source: Path | None = None

    def apply(self) -> None:
        """Register the store-defined in-store code tables with the barcode kernel."""
        for region in self.regions.values():
            barcode.register_region(region)


def _region_code(value, where: str) -> str:
    if not (isinstance(value, str) and len(value) == 2 and value.isascii()
            and value.isalpha()):
        raise ConfigError(f"{where}: {value!r} is not an ISO 3166 alpha-2 code")
    return value.upper()


def parse_config(text: str, source: Path | None = None) -> StoreConfig:
    """Read configuration from TOML text; raise ConfigError naming the bad key."""
    where = str(source) if source else "configuration"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"store", "rcn"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}")
    cfg = StoreConfig(source=source)
    store = doc.get("store", {})
    if not isinstance(store, dict):
        raise ConfigError(f"{where}: [store] must be a table")
    if "region" in store:
        cfg.region = _region_code(store["region"], f"{where}: store.region")
    rcn = doc.get("rcn", {})
    if not isinstance(rcn, dict):
        raise ConfigError(f"{where}: [rcn] must be a table of regions")
    for code, table in rcn.items():
        key = f"{where}: rcn.{code}"
        code = _region_code(code, key)
        if not isinstance(table, dict):
            raise ConfigError(f"{key} must be a table")
        missing = {"currency", "currency_numeric", "exponent", "prefixes"} - set(table)
        if missing:
            raise ConfigError(f"{key} lacks {sorted(missing)}")
        prefixes = table["prefixes"]
        if not isinstance(prefixes, dict) or not prefixes:
            raise ConfigError(f"{key}.prefixes must be a non-empty table")
        rules = {}
        for prefix, rule in prefixes.items():
            if not isinstance(rule, dict) or set(rule) != {"measure", "pattern", "decimals"}:
                raise ConfigError(
                    f"{key}.prefixes.{prefix} needs exactly measure, pattern, decimals")
            if not isinstance(rule["decimals"], int):
                raise ConfigError(f"{key}.prefixes.{prefix}.decimals must be an integer")
            rules[str(prefix)] = (rule["measure"], rule["pattern"], rule["decimals"])
        try:
            numeric = table["currency_numeric"]
            exponent = table["exponent"]
            if not isinstance(numeric, int) or not isinstance(exponent, int):
                raise ValueError("currency_numeric and exponent must be integers")
            cfg.regions[code] = RcnRegion(code, str(table["currency"]), numeric, exponent,
                                          rules)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    return cfg


def load_config(data_dir: Path) -> StoreConfig:
    """Read ``lanecore.toml`` from the data directory (an absent file is no config)."""
    path = Path(data_dir) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StoreConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_config(text, path)
