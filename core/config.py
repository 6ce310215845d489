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

    [payments]               # the payment gateways whose signed receipts prove payment
    receipt_keys = ["…"]     # their `hello` receipt_key (Ed25519, base64url)

A pattern covers the 12 digits before the GTIN-13 check digit: ``P`` item reference
(prefix included), ``C`` the price/weight check digit, ``V`` the variable value.
``receipt_keys``: a receipt signed by one of them (``pay.receipt``) may mark an order
paid at the verification service (``order.status`` with ``proof``,
``docs/protocol.md``). Unknown sections, and unknown keys in ``[store]``,
``[payments]`` and the ``[rcn.CC]`` tables, are refused (``BAD_CONFIG`` naming them).

Private files (``docs/security.md``, "Files and directories"): every lanecore process
runs under umask 077 (:func:`set_process_umask`, called first thing by ``cli.main``);
data and key directories are created mode 0700 (:func:`private_dir`); key files are
written at mode 0600 under a temporary name made with ``O_EXCL`` and renamed into
place (:func:`write_private`); a key file or key directory that the group or others
may use is refused with ``BAD_PERMISSIONS`` naming it (:func:`check_private`). The
SQLite files get theirs from ``core/sqltxn.py``'s ``private_database``.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lanecore.core.errors import ConfigError, LanecoreError
from lanecore.ext import barcode
from lanecore.ext.gs1data import RcnRegion

CONFIG_FILE = "lanecore.toml"
DATABASE_FILE = "store.db"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(base).expanduser() / "lanecore"


def resolve_data_dir(cli_value: str | os.PathLike | None = None, *, create: bool = True) -> Path:
    """The data directory: the command-line value, else LANECORE_DATA_DIR, else default.

    ``create``: make it (and any missing parent) with mode 0700; an existing
    directory keeps its mode."""
    chosen = cli_value or os.environ.get("LANECORE_DATA_DIR") or default_data_dir()
    path = Path(chosen).expanduser()
    if create:
        try:
            private_dir(path)
        except OSError as exc:
            raise ConfigError(f"cannot create data directory {path}: {exc.strerror}",
                              code="BAD_DATA_DIR") from exc
    return path


def writable_dir(path: str | os.PathLike, *, what: str = "data directory") -> Path:
    """``path`` as a directory this process can write in: created as
    :func:`private_dir` does, then proven by creating (and removing) a file in it.
    Raises ConfigError ``DATA_DIR_READ_ONLY`` naming the path — for a process about
    to keep a database there, a clear refusal instead of SQLite's "unable to open
    database file" (root ignores permissions: the probe is the only true test)."""
    path = Path(path).expanduser()
    try:
        private_dir(path)
        probe = path / f".lanecore-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write in the {what} {path}: "
                          f"{exc.strerror or exc}", code="DATA_DIR_READ_ONLY") from exc
    return path


# --------------------------------------------------------------------------------------
# Private files and directories
# --------------------------------------------------------------------------------------

#: What every lanecore process runs under: new files 0600, new directories 0700.
PROCESS_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class PermissionsError(LanecoreError):
    """A key file or key directory that the group or others may use."""

    code = "BAD_PERMISSIONS"


def set_process_umask() -> int:
    """Set the process umask to 077 (what ``cli.main`` does first); returns the old one."""
    return os.umask(PROCESS_UMASK)


def private_dir(path: str | os.PathLike) -> Path:
    """``path`` as a directory: created, with every missing parent, mode 0700 whatever
    the umask; an existing directory is left as it is. Raises OSError (an existing
    file that is not a directory: ``EEXIST``)."""
    path = Path(path).expanduser()
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue            # made by someone else meanwhile: theirs, as it is
        os.chmod(d, PRIVATE_DIR_MODE)   # the umask may have narrowed, never widened
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a directory",
                              str(path))
    return path


def check_private(path: str | os.PathLike, *, what: str = "key file",
                  error: type[LanecoreError] = PermissionsError) -> None:
    """Refuse, with ``error(..., code="BAD_PERMISSIONS")`` naming the path, a file or
    directory the group or others may read, write or search (any of mode 077).
    A missing path raises FileNotFoundError: whether that is an error is the
    caller's to say."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        want = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise error(f"{path} has mode {mode:04o}: a {what} must be its owner's alone "
                    f"(chmod {want} {path})", code="BAD_PERMISSIONS")


def write_private(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` at mode 0600 whatever the umask: into a new file made
    with ``O_EXCL`` under a temporary name in the same directory, fsynced, then
    renamed over ``path`` (a reader sees the old file or the whole new one, never a
    file readable by others). Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 PRIVATE_FILE_MODE)
    try:
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
            view = memoryview(bytes(data))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)      # our own temporary file, nothing else
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:             # pragma: no cover - the rename is done either way
        return path
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


@dataclass
class StoreConfig:
    """What ``lanecore.toml`` says (all optional)."""

    region: str | None = None
    regions: dict[str, RcnRegion] = field(default_factory=dict)
    source: Path | None = None
    #: Public keys (base64url) of the payment gateways whose signed receipts are
    #: proof of payment (``[payments] receipt_keys``).
    receipt_keys: tuple[str, ...] = ()
    #: The store in a chain (``[chain]``: ``store_id``, ``nats`` — HQ's NATS URL,
    #: ``payments_dir``, ``coupons``): what ``lanecore link`` uses when its options
    #: do not say (docs/chain.md). Empty for a store on its own.
    chain: dict[str, str] = field(default_factory=dict)

    def apply(self) -> None:
        """Register the store-defined in-store code tables with the barcode kernel."""
        for region in self.regions.values():
            barcode.register_region(region)


def _region_code(value, where: str) -> str:
    if not (isinstance(value, str) and len(value) == 2 and value.isascii()
            and value.isalpha()):
        raise ConfigError(f"{where}: {value!r} is not an ISO 3166 alpha-2 code")
    return value.upper()


def _receipt_keys(payments, where: str) -> tuple[str, ...]:
    """``[payments] receipt_keys``: Ed25519 public keys, each checked, as base64url."""
    from lanecore.core.signing import SigningError, Verifier
    if not isinstance(payments, dict):
        raise ConfigError(f"{where}: [payments] must be a table")
    unknown = set(payments) - {"receipt_keys"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [payments]: {sorted(unknown)}")
    keys = payments.get("receipt_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{where}: payments.receipt_keys must be a list of public keys "
                          "(the payment gateway's hello receipt_key)")
    out = []
    for i, key in enumerate(keys):
        try:
            out.append(Verifier(key.strip()).public_key_b64())
        except SigningError as exc:
            raise ConfigError(f"{where}: payments.receipt_keys[{i}]: {exc.message}") from None
    return tuple(dict.fromkeys(out))


_CHAIN_KEYS = ("store_id", "nats", "payments_dir", "coupons")


def _chain(chain, where: str) -> dict[str, str]:
    """``[chain]``: the store's id in a chain and how its link reaches HQ (strings)."""
    if not isinstance(chain, dict):
        raise ConfigError(f"{where}: [chain] must be a table")
    unknown = set(chain) - set(_CHAIN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [chain]: {sorted(unknown)} "
                          f"(it takes {', '.join(_CHAIN_KEYS)})")
    for k, v in chain.items():
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{where}: chain.{k} must be a non-empty string")
    if "nats" in chain and not chain["nats"].startswith(("nats://", "tls://")):
        raise ConfigError(f"{where}: chain.nats is a nats://HOST:PORT URL, got "
                          f"{chain['nats'][:40]!r}")
    return {k: v.strip() for k, v in chain.items()}


def parse_config(text: str, source: Path | None = None) -> StoreConfig:
    """Read configuration from TOML text; raise ConfigError naming the bad key."""
    where = str(source) if source else "configuration"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"store", "rcn", "payments", "chain"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}")
    cfg = StoreConfig(source=source)
    cfg.chain = _chain(doc.get("chain", {}), where)
    cfg.receipt_keys = _receipt_keys(doc.get("payments", {}), where)
    store = doc.get("store", {})
    if not isinstance(store, dict):
        raise ConfigError(f"{where}: [store] must be a table")
    unknown = set(store) - {"region"}
    if unknown:             # a misspelt key would otherwise be silently ignored
        raise ConfigError(f"{where}: unknown key(s) in [store]: {sorted(unknown)} "
                          "(it takes region)")
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
        unknown = set(table) - {"currency", "currency_numeric", "exponent", "prefixes"}
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {sorted(unknown)}")
        if not isinstance(table["currency"], str):
            raise ConfigError(f"{key}.currency must be a string (an ISO 4217 code), "
                              f"got {table['currency']!r}")
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
