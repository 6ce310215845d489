"""Ed25519 keys and the encodings every signed artefact of the store shares.

The order QR (``core.store.orderqr``), the signed receipt (``core.pay.receipt``), the
wallet's multi-information QR (``core.promo.mqr``) and the venue's exit pass
(``core.store.unattended``) all sign canonical JSON with Ed25519 and carry bytes as
unpadded base64url; this module is that common ground, so no domain has to import
another's to sign.

- :func:`canonical_json`: keys sorted, no spaces, ASCII only.
- :func:`b64url_encode` / :func:`b64url_decode`: RFC 4648 §5 without padding, strict.
- :class:`Signer` (private key; :meth:`Signer.load_or_create` keeps it in
  ``data_dir/keys/order_signing.key``: the raw 32-byte seed, mode 0600, created
  atomically) and :class:`Verifier` (public key only).

Errors are :class:`SigningError`: code ``BAD_PERMISSIONS`` for a key file or key
directory that the group or others may use, ``KEY_ERROR`` for any other key or key
file that cannot be used. Imports no domain.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

from lanecore.core.errors import LanecoreError

__all__ = ["SigningError", "Signer", "Verifier", "KEY_DIR", "KEY_FILE", "KEY_LEN",
           "SIGNATURE_LEN", "canonical_json", "b64url_encode", "b64url_decode"]

#: Where :meth:`Signer.load_or_create` keeps the key, below the data directory.
KEY_DIR = "keys"
KEY_FILE = "order_signing.key"
KEY_LEN = 32
SIGNATURE_LEN = 64
_KEY_LEN = KEY_LEN

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


class SigningError(LanecoreError):
    """A key or key file that cannot be used."""

    code = "KEY_ERROR"

# --------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------

def canonical_json(obj) -> bytes:
    """The canonical JSON bytes of ``obj``: keys sorted, separators ``,`` and ``:``
    without spaces, non-ASCII escaped as ``\\uXXXX``. Integers and ASCII strings
    only in the order payload, so every language's serialiser can reproduce it."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


def b64url_encode(data: bytes) -> str:
    """base64url (RFC 4648 §5) without ``=`` padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`: only the 64 base64url characters, no
    padding, and the canonical encoding (unused trailing bits zero), so one byte
    string has exactly one text. Raises ValueError otherwise."""
    if not isinstance(text, str) or not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards
        raise ValueError(f"not base64url: {exc}") from None
    # A last character whose unused low bits are set decodes to the same bytes as
    # the canonical one; refusing it makes every character of the text count.
    if b64url_encode(data) != text:
        raise ValueError("not the canonical base64url of its bytes")
    return data


def _key_bytes(key) -> bytes:
    """32 raw public-key bytes from bytes or base64 / base64url text (padded or not)."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    elif isinstance(key, str):
        text = key.strip().rstrip("=")
        if not re.fullmatch(r"[A-Za-z0-9+/_-]+", text or "!"):
            raise SigningError("the public key is not base64 text", code="KEY_ERROR")
        text = text.replace("+", "-").replace("/", "_")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise SigningError(f"the public key is not base64: {exc}",
                               code="KEY_ERROR") from None
    else:
        raise SigningError(f"a public key is 32 bytes or their base64, not "
                           f"{type(key).__name__}", code="KEY_ERROR")
    if len(raw) != _KEY_LEN:
        raise SigningError(f"an Ed25519 public key is {_KEY_LEN} bytes, not {len(raw)}",
                           code="KEY_ERROR")
    return raw


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------

class Verifier:
    """Checks Ed25519 signatures (order QRs, receipts, exit passes, wallet QRs) with the
    public key alone.

    ``public_key``: the 32 raw bytes, or their base64 / base64url text (what
    :meth:`Signer.public_key_b64` prints). Raises OrderQrError KEY_ERROR.
    """

    def __init__(self, public_key):
        raw = _key_bytes(public_key)
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:  # pragma: no cover - any 32 bytes are accepted
            raise SigningError(f"not an Ed25519 public key: {exc}",
                               code="KEY_ERROR") from None
        self.public_key_bytes = raw

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``data``."""
        try:
            self._key.verify(bytes(signature), bytes(data))
        except InvalidSignature:
            return False
        return True

    def public_key_b64(self) -> str:
        """The public key as unpadded base64url (43 characters)."""
        return b64url_encode(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"Verifier({self.public_key_b64()!r})"


class Signer:
    """Signs with an Ed25519 private key (the store's, the venue's, a wallet's).

    Use :meth:`load_or_create` for the store's key; :meth:`generate` makes a key
    that lives only in memory (tests, demonstrations).
    """

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SigningError("Signer needs an Ed25519PrivateKey", code="KEY_ERROR")
        self._key = private_key
        #: The key file, or None for a key held only in memory.
        self.path = path
        self.public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> Signer:
        """A new key held only in memory."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, seed: bytes, path: Path | None = None) -> Signer:
        """The key whose 32-byte RFC 8032 seed is ``seed``."""
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != _KEY_LEN:
            raise SigningError(f"an Ed25519 private key is {_KEY_LEN} bytes",
                               code="KEY_ERROR")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(seed)), path)

    @classmethod
    def load_or_create(cls, data_dir: str | os.PathLike) -> Signer:
        """The store's signing key from ``data_dir/keys/order_signing.key``, created
        on first use.

        The file holds the raw 32-byte seed and nothing else, mode 0600, in a
        directory created with mode 0700. Creation is atomic: the seed is written
        and fsynced under a temporary name, then hard-linked to the final name, which
        fails if another process got there first (then both use that one's key). A
        key file or ``keys/`` directory that the group or others may use is refused
        with BAD_PERMISSIONS naming it; a file that is not a regular file or not 32
        bytes with KEY_ERROR — refused rather than trusted or replaced: replacing a
        key silently invalidates every QR already issued.
        """
        keys = Path(data_dir) / KEY_DIR
        path = keys / KEY_FILE
        try:
            keys.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SigningError(f"cannot create {keys}: {exc.strerror}",
                               code="KEY_ERROR") from exc
        try:
            mode = stat.S_IMODE(os.stat(keys).st_mode)
        except OSError as exc:
            raise SigningError(f"cannot read {keys}: {exc.strerror}",
                               code="KEY_ERROR") from exc
        if mode & 0o077:
            raise SigningError(
                f"{keys} has mode {mode:04o}: a key directory must be its owner's "
                f"alone (chmod 700 {keys})", code="BAD_PERMISSIONS")
        seed = _read_key_file(path)
        if seed is None:
            _create_key_file(path, secrets.token_bytes(_KEY_LEN))
            seed = _read_key_file(path)
            if seed is None:  # pragma: no cover - removed between link and read
                raise SigningError(f"{path} vanished while it was created",
                                   code="KEY_ERROR")
        return cls.from_private_bytes(seed, path)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(bytes(data))

    def public_key_b64(self) -> str:
        """The public key as unpadded base64url (43 characters): what an exit device
        is configured with."""
        return b64url_encode(self.public_key_bytes)

    def verifier(self) -> Verifier:
        """A Verifier for this key."""
        return Verifier(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"Signer(public_key={self.public_key_b64()!r}, path={self.path!r})"


def _read_key_file(path: Path) -> bytes | None:
    """The seed in ``path``, None when there is no file; BAD_PERMISSIONS when others
    may use it, KEY_ERROR when otherwise unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SigningError(f"cannot open {path}: {exc.strerror}",
                           code="KEY_ERROR") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningError(f"{path} is not a regular file", code="KEY_ERROR")
        if st.st_mode & 0o077:
            raise SigningError(
                f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: a signing key must "
                f"be its owner's alone (chmod 600 {path})", code="BAD_PERMISSIONS")
        data = os.read(fd, _KEY_LEN + 1)
    except OSError as exc:
        raise SigningError(f"cannot read {path}: {exc.strerror}",
                           code="KEY_ERROR") from exc
    finally:
        os.close(fd)
    if len(data) != _KEY_LEN:
        raise SigningError(f"{path} holds {len(data)}{'+' if len(data) > _KEY_LEN else ''}"
                           f" bytes; an Ed25519 key file holds exactly {_KEY_LEN}",
                           code="KEY_ERROR")
    return data


def _create_key_file(path: Path, seed: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did
            os.write(fd, seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never replaces an existing key
        except FileExistsError:
            pass  # another process created it first: use theirs
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise SigningError(f"cannot create {path}: {exc.strerror}",
                           code="KEY_ERROR") from exc
    finally:
        try:
            os.unlink(tmp)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # pragma: no cover
                raise SigningError(f"cannot remove {tmp}: {exc.strerror}",
                                   code="KEY_ERROR") from exc
