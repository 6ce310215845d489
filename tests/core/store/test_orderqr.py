"""The signed order QR: round trip, every changed byte refused, other keys, expiry,
the documented recipe done by hand, the key file, and the rendered images."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct
import threading
import xml.etree.ElementTree as ET
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanecore.core.errors import LanecoreError
from lanecore.core.store.orderqr import (KEY_DIR, KEY_FILE, MAX_QR_CHARS, OrderQrError,
                                         Signer, SigningError, Verifier, b64url_decode,
                                         b64url_encode, canonical_json, make_qr, qr_matrix,
                                         qr_png, qr_svg, qr_terminal, verify_qr)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

IAT = 1_700_000_000
DIGEST = hashlib.sha256(b"[]").hexdigest()
ORDER = dict(store="STORE", order_no="HH07-261122-0042", total_minor=12345,
             currency="GBP", n_items=12, lines_digest=DIGEST, issued_at=IAT + 0.9)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def signer():
    return Signer.generate()


@pytest.fixture(scope="module")
def qr(signer):
    return make_qr(signer, **ORDER)


def code_of(text, verifier, **kw) -> str:
    with pytest.raises(OrderQrError) as info:
        verify_qr(text, verifier, **kw)
    assert isinstance(info.value, LanecoreError)
    return info.value.code


def test_round_trip(signer, qr):
    payload = verify_qr(qr, signer.verifier())
    assert payload == {"v": 1, "store": "STORE", "order": "HH07-261122-0042",
                       "total": 12345, "cur": "GBP", "n": 12, "digest": DIGEST[:32],
                       "iat": IAT}
    tag, body, sig = qr.split(".")
    assert tag == "LCO1" and len(sig) == 86
    assert b64url_decode(body) == canonical_json(payload)
    # short, and all of it QR byte-mode friendly printable ASCII
    assert len(qr) < 300 and qr.isascii() and qr.isprintable()
    assert set(body + sig) <= set(B64URL)
    # deterministic: Ed25519 signatures do not depend on a random nonce
    assert make_qr(signer, **ORDER) == qr


def test_the_documented_recipe_by_hand(signer, qr):
    """docs/store/baskets.md, "Verifying an order QR", with nothing of lanecore."""
    public_key_b64 = signer.public_key_b64()
    parts = qr.split(".")
    assert len(parts) == 3 and parts[0] == "LCO1"
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(pad(public_key_b64)))
    key.verify(base64.urlsafe_b64decode(pad(parts[2])),
               (parts[0] + "." + parts[1]).encode("ascii"))
    payload = json.loads(base64.urlsafe_b64decode(pad(parts[1])))
    assert payload["order"] == "HH07-261122-0042" and payload["v"] == 1


def test_every_changed_byte_is_refused(signer, qr):
    verifier = signer.verifier()
    version_at = qr.index(".") - 1
    for i, ch in enumerate(qr):
        for new in {B64URL[(B64URL.index(ch) + 1) % 64] if ch in B64URL else "A",
                    "." if ch != "." else "A", "2" if ch != "2" else "3"}:
            changed = qr[:i] + new + qr[i + 1:]
            code = code_of(changed, verifier)
            if i == version_at and new.isdigit():
                assert code == "QR_VERSION"
            else:
                assert code in ("QR_SIGNATURE", "QR_FORMAT"), (i, ch, new, code)


def test_the_spare_bits_of_the_last_character_count(signer, qr):
    # 64 bytes are 86 base64 characters with 4 bits to spare in the last one: a
    # lenient decoder reads "...g" and "...h" as the same signature.
    last = qr[-1]
    sibling = B64URL[B64URL.index(last) ^ 1]
    assert base64.urlsafe_b64decode(qr.split(".")[2][:-1] + sibling + "==") == \
        base64.urlsafe_b64decode(qr.split(".")[2] + "==")
    assert code_of(qr[:-1] + sibling, signer.verifier()) == "QR_FORMAT"


@pytest.mark.parametrize("mangle", [
    lambda q: "", lambda q: q[:-1], lambda q: q + "A", lambda q: q + ".",
    lambda q: q.replace(".", "", 1), lambda q: q.rsplit(".", 1)[0],
    lambda q: "lco1" + q[4:], lambda q: "LCOX" + q[4:], lambda q: " " + q,
    lambda q: q + "\n", lambda q: q[:-1] + "+", lambda q: q[:-1] + "/",
    lambda q: q + "=", lambda q: "LCO1." + q.split(".")[2] + "." + q.split(".")[1],
    lambda q: q + "A" * MAX_QR_CHARS, lambda q: q.encode(), lambda q: None,
    lambda q: "https://example.com/?q=" + q, lambda q: "LCO.x.y", lambda q: "LCO1",
])
def test_not_our_format(signer, qr, mangle):
    assert code_of(mangle(qr), signer.verifier()) in ("QR_FORMAT", "QR_SIGNATURE")


def test_other_versions(signer, qr):
    for tag in ("LCO2", "LCO0", "LCO10", "LCO01"):
        assert code_of(tag + qr[4:], signer.verifier()) == "QR_VERSION"


def test_another_key_is_refused(qr):
    assert code_of(qr, Signer.generate().verifier()) == "QR_SIGNATURE"


def test_a_signed_payload_must_still_be_well_formed(signer):
    def signed(payload_bytes: bytes) -> str:
        head = "LCO1." + b64url_encode(payload_bytes)
        return head + "." + b64url_encode(signer.sign(head.encode()))

    good = {"v": 1, "store": "S", "order": "A-1", "total": 1, "cur": "GBP", "n": 1,
            "digest": "0" * 32, "iat": IAT}
    assert verify_qr(signed(canonical_json(good)), signer.verifier()) == good
    for bad in (json.dumps(good).encode(),                  # spaces: not canonical
                canonical_json({**good, "v": 2}),
                canonical_json({**good, "total": 1.5}),
                canonical_json({**good, "total": -1}),
                canonical_json({**good, "n": True}),
                canonical_json({**good, "extra": 1}),
                canonical_json({k: v for k, v in good.items() if k != "iat"}),
                canonical_json([good]), b"\xff", b"{"):
        assert code_of(signed(bad), signer.verifier()) == "QR_FORMAT", bad
    # a QR signed over the payload alone (without the tag) does not pass
    body = b64url_encode(canonical_json(good))
    assert code_of(f"LCO1.{body}.{b64url_encode(signer.sign(body.encode()))}",
                   signer.verifier()) == "QR_SIGNATURE"


def test_expiry(signer, qr):
    v = signer.verifier()
    assert verify_qr(qr, v, now=IAT + 3600, max_age_s=3600)["iat"] == IAT
    assert code_of(qr, v, now=IAT + 3601, max_age_s=3600) == "QR_EXPIRED"
    assert verify_qr(qr, v, now=IAT + 10 ** 9)["iat"] == IAT   # no max age: no limit
    assert code_of(qr, v, max_age_s=60) == "QR_EXPIRED"         # now: the real clock
    # a forged QR is a forgery before it is old
    # (change one signature character to a different one: "AA" at the end would be
    # no change at all for one key in 4,096, which is how CI once failed)
    flip = qr[-10]
    forged = qr[:-10] + ("B" if flip == "A" else "A") + qr[-9:]
    assert forged != qr
    assert code_of(forged, v, now=IAT + 10 ** 6, max_age_s=1) == "QR_SIGNATURE"


@pytest.mark.parametrize("field, value", [
    ("store", ""), ("store", "my store"), ("store", "S" * 33), ("order_no", "hh07-1"),
    ("order_no", "A" * 33), ("total_minor", -1), ("total_minor", 10 ** 18),
    ("total_minor", 1.0), ("currency", "gbp"), ("n_items", 0), ("lines_digest", "ab"),
    ("lines_digest", "z" * 64), ("issued_at", float("nan")), ("issued_at", "now"),
])
def test_make_qr_refuses_what_the_format_cannot_carry(signer, field, value):
    with pytest.raises(OrderQrError) as info:
        make_qr(signer, **{**ORDER, field: value})
    assert info.value.code == "BAD_REQUEST"


def test_b64url_is_strict():
    for data in (b"", b"\x00", b"ab", b"abc", bytes(range(256))):
        assert b64url_decode(b64url_encode(data)) == data
    for text in ("A", "AB=", "A+B/", "AB C", "ABC\n", "AR"):
        with pytest.raises(ValueError):
            b64url_decode(text)


# --------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------

def test_key_file_is_created_once_private_and_reused(tmp_path):
    s1 = Signer.load_or_create(tmp_path)
    path = tmp_path / KEY_DIR / KEY_FILE
    assert s1.path == path
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 32
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert os.listdir(path.parent) == [KEY_FILE]   # no temporary file left behind
    s2 = Signer.load_or_create(tmp_path)
    assert s2.public_key_b64() == s1.public_key_b64()
    qr = make_qr(s1, **ORDER)
    assert verify_qr(qr, Verifier(s2.public_key_b64()))["order"] == ORDER["order_no"]


def test_key_file_created_under_a_loose_umask_is_still_private(tmp_path):
    old = os.umask(0)
    try:
        Signer.load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / KEY_DIR / KEY_FILE).st_mode) == 0o600


def test_racing_creators_agree_on_one_key(tmp_path):
    keys, errors = [], []
    start = threading.Barrier(8)

    def create():
        start.wait()
        try:
            keys.append(Signer.load_or_create(tmp_path).public_key_b64())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(keys) == 8 and len(set(keys)) == 1
    assert os.listdir(tmp_path / KEY_DIR) == [KEY_FILE]


@pytest.mark.parametrize("spoil, code", [
    ("mode", "BAD_PERMISSIONS"), ("dir_mode", "BAD_PERMISSIONS"), ("short", "KEY_ERROR"),
    ("long", "KEY_ERROR"), ("directory", "KEY_ERROR"), ("symlink", "KEY_ERROR")])
def test_an_unusable_key_file_is_refused_not_replaced(tmp_path, spoil, code):
    Signer.load_or_create(tmp_path)
    path = tmp_path / KEY_DIR / KEY_FILE
    if spoil == "mode":
        os.chmod(path, 0o640)
    elif spoil == "dir_mode":
        os.chmod(path.parent, 0o750)
    elif spoil == "short":
        path.write_bytes(b"x" * 31)
    elif spoil == "long":
        path.write_bytes(b"x" * 33)
    elif spoil == "directory":
        path.unlink()
        path.mkdir()
    else:
        target = tmp_path / "elsewhere.key"
        os.rename(path, target)
        os.symlink(target, path)
    before = path.lstat()
    with pytest.raises(SigningError) as info:
        Signer.load_or_create(tmp_path)
    assert info.value.code == code
    if code == "BAD_PERMISSIONS":       # the message names what to fix
        assert str(path.parent) in info.value.message
        assert (KEY_FILE in info.value.message) == (spoil == "mode")
    assert path.lstat() == before


def test_verifier_takes_bytes_or_base64(signer, qr):
    raw = signer.public_key_bytes
    for key in (raw, bytearray(raw), signer.public_key_b64(),
                base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        assert verify_qr(qr, Verifier(key))["n"] == 12
    for bad in (raw[:31], raw + b"\0", "not base64!", "", 42, None,
                base64.b64encode(raw[:16]).decode()):
        with pytest.raises(SigningError) as info:
            Verifier(bad)
        assert info.value.code == "KEY_ERROR"
    with pytest.raises(TypeError):
        verify_qr(qr, signer)


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------

def read_png(data: bytes) -> list[list[bool]]:
    """Rows of dark pixels of a 1-bit greyscale, non-interlaced PNG (filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (1, 0, 0) and b"IEND" in chunks
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + (w + 7) // 8
    rows = []
    for y in range(h):
        line = raw[y * stride:(y + 1) * stride]
        assert line[0] == 0
        bits = "".join(f"{b:08b}" for b in line[1:])[:w]
        rows.append([c == "0" for c in bits])
    return rows


def test_qr_png_pixels_are_the_symbol(tmp_path, qr):
    out = qr_png(qr, tmp_path / "order.png", scale=3)
    pixels = read_png(out.read_bytes())
    modules = qr_matrix(qr)
    assert len(pixels) == 3 * len(modules)
    assert pixels == [[m for m in row for _ in range(3)] for row in modules
                      for _ in range(3)]
    assert len(modules) == 4 + 65 + 4   # version 12: 65 modules, quiet zone 4


def test_qr_svg(tmp_path, qr):
    out = qr_svg(qr, tmp_path / "order.svg")
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    assert any(el.tag.endswith("path") and el.get("d") for el in root.iter())


def test_qr_terminal_draws_the_symbol(qr):
    modules = qr_matrix(qr, border=2)
    text = qr_terminal(qr)
    lines = text.splitlines()
    assert len(lines) == (len(modules) + 1) // 2
    top = {" ": False, "\u2580": True, "\u2584": False, "\u2588": True}
    bottom = {" ": False, "\u2580": False, "\u2584": True, "\u2588": True}
    decoded = []
    for line in lines:
        assert len(line) == len(modules)
        decoded += [[top[c] for c in line], [bottom[c] for c in line]]
    assert decoded[:len(modules)] == modules
    inverted = qr_terminal(qr, invert=True).splitlines()
    assert [[top[c] for c in ln] for ln in inverted] == \
        [[not m for m in row] for row in modules[0::2]]
    plain = qr_terminal(qr, ascii_only=True).splitlines()
    assert [[ln[i:i + 2] == "##" for i in range(0, len(ln), 2)] for ln in plain] == modules


def test_rendering_refuses_what_byte_mode_cannot_hold(tmp_path):
    with pytest.raises(OrderQrError):
        qr_terminal("caf\u00e9")
    with pytest.raises(OrderQrError):
        qr_png("x", tmp_path / "x.png", scale=0)


def test_the_example_in_the_docs():
    """docs/store/baskets.md's example QR, made with the seed 0x00..0x1F."""
    signer = Signer.from_private_bytes(bytes(range(32)))
    public = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
    text = ("LCO1.eyJjdXIiOiJHQlAiLCJkaWdlc3QiOiIzZjNmM2YzZjNmM2YzZjNmM2YzZjNmM2YzZjN"
            "mM2YzZiIsImlhdCI6MTc5NTMwMDAwMCwibiI6MTIsIm9yZGVyIjoiSEgwNy0yNjExMjItMDA"
            "0MiIsInN0b3JlIjoiU1RPUkUiLCJ0b3RhbCI6MTIzNDUsInYiOjF9.cM9pAz9-oS3c96hNBx"
            "s5W1MGqYB0r71rkcCoA-wqAKWmAOGFcOcazRkpSk-eu18Q5lETAWqohSbLIPaSfRFpDg")
    assert signer.public_key_b64() == public
    assert make_qr(signer, store="STORE", order_no="HH07-261122-0042", total_minor=12345,
                   currency="GBP", n_items=12, lines_digest="3f" * 32,
                   issued_at=1795300000) == text
    assert len(text) == 284
    assert verify_qr(text, Verifier(public)) == {
        "cur": "GBP", "digest": "3f" * 16, "iat": 1795300000, "n": 12,
        "order": "HH07-261122-0042", "store": "STORE", "total": 12345, "v": 1}
