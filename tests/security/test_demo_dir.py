"""Data safety (issue 13, item 10; docs/security.md): `lanecore demo` uses ./.demo
unless --data-dir is given, never $LANECORE_DATA_DIR; it marks a directory it
creates, and refuses (DEMO_DIR_NOT_EMPTY, exit 2, nothing touched) to empty a
non-empty directory without that mark, the filesystem root, the home directory or
the store's data directory. The other code that removes files removes only its own.

The demo runs as a real process, small and fast (the settings of tests/cli/test_cli.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lanecore.core.errors import LanecoreError
from lanecore.gateway.store import DEMO_MARKER, prepare_demo_dir

SMALL = ("--shoppers", "6", "--seed", "3")


def demo(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "LANECORE_DATA_DIR"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "lanecore", "demo", *SMALL,
                           *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=e, timeout=300)


def snapshot(root: Path) -> dict:
    """Every entry under ``root`` (root included): kind, mode, mtime, and the bytes of
    a file or the target of a link — what "intact" means here."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode,
                                             st.st_mtime_ns, body)
    return out


def populate(d: Path, outside: Path) -> None:
    """A directory someone cares about: files, a subdirectory, a link out."""
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (d / "notes.txt").write_bytes(b"do not delete\n" * 100)
    (d / ".hidden").write_text("x")
    os.symlink(outside, d / "link-out")
    os.utime(d / "notes.txt", ns=(1_000_000_000, 1_000_000_000))


@pytest.fixture
def outside(tmp_path) -> Path:
    f = tmp_path / "outside.txt"
    f.write_text("a file outside, reached through a link\n")
    return f


def test_a_non_empty_directory_without_the_marker_is_refused_and_left_intact(tmp_path,
                                                                               outside):
    d = tmp_path / "mine"
    populate(d, outside)
    before, out_before = snapshot(d), snapshot(outside.parent / "outside.txt")
    r = demo("--data-dir", d)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"lanecore: DEMO_DIR_NOT_EMPTY: {d}" in r.stderr, r.stderr
    assert snapshot(d) == before
    assert snapshot(outside) == out_before
    assert not (d / DEMO_MARKER).exists()


def test_a_file_as_the_demo_directory_is_refused(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("keep me\n")
    before = snapshot(f)
    r = demo("--data-dir", f)
    assert r.returncode == 2 and "DEMO_DIR_NOT_EMPTY" in r.stderr, r.stderr
    assert snapshot(f) == before


@pytest.mark.parametrize("which", ["home", "data_dir", "holds_data_dir"])
def test_home_and_the_real_data_directory_are_refused_even_with_the_marker(tmp_path, which):
    """The explicit rule, not the marker's: a marker planted in the home directory or
    the store's data directory does not make them the demo's."""
    home, real = tmp_path / "home", tmp_path / "srv" / "lanecore"
    for d in (home, real):
        d.mkdir(parents=True)
        (d / DEMO_MARKER).write_text("planted\n")
        (d / "precious.db").write_bytes(b"\0" * 4096)
    target = {"home": home, "data_dir": real, "holds_data_dir": real.parent}[which]
    before = snapshot(tmp_path)
    r = demo("--data-dir", target, env={"HOME": str(home), "LANECORE_DATA_DIR": str(real)})
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"DEMO_DIR_NOT_EMPTY: {target}" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before


def test_the_filesystem_root_is_refused_by_name(tmp_path):
    # Safe to ask even if the explicit rule broke: / holds no marker, so the
    # not-empty rule refuses it too (checked first, so this cannot empty anything).
    assert not os.path.lexists(Path("/") / DEMO_MARKER)
    with pytest.raises(LanecoreError) as e:
        prepare_demo_dir("/")
    assert e.value.code == "DEMO_DIR_NOT_EMPTY" and "filesystem root" in e.value.message


def test_without_data_dir_the_demo_uses_dot_demo_never_lanecore_data_dir(tmp_path):
    real = tmp_path / "real-store"
    real.mkdir()
    (real / "store.db").write_bytes(b"the real catalogue\n")
    (real / "lanecore.toml").write_text('[store]\nregion = "GB"\n')
    before = snapshot(real)
    cwd = tmp_path / "work"
    cwd.mkdir()
    r = demo(cwd=cwd, env={"LANECORE_DATA_DIR": str(real)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "every check passed" in r.stdout
    assert snapshot(real) == before                 # not read into, not emptied
    used = cwd / ".demo"
    assert (used / DEMO_MARKER).is_file() and (used / "pay" / "payments.db").is_file()
    assert f"data in {used}" in r.stdout
    assert stat.S_IMODE(os.stat(used).st_mode) == 0o700
    assert sorted(p.name for p in cwd.iterdir()) == [".demo"]


def test_a_directory_the_demo_made_is_emptied_and_reused(tmp_path, outside):
    d = tmp_path / "demo"
    r = demo("--data-dir", d)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    marker = (d / DEMO_MARKER).read_bytes()
    assert (d / "store" / "store.db").is_file()
    (d / "pay" / "from-the-last-run").write_text("x")   # inside a room of the store
    (d / "left-over.txt").write_text("from last time\n")
    (d / "old" / "deep").mkdir(parents=True)
    (d / "old" / "deep" / "f").write_text("x")
    os.symlink(outside, d / "link-out")
    out_before = snapshot(outside)
    r = demo("--data-dir", d)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "every check passed" in r.stdout
    names = {p.name for p in d.iterdir()}
    assert DEMO_MARKER in names and {"store", "pay", "coupons"} <= names
    assert not ({"left-over.txt", "old", "link-out"} & names)
    assert (d / DEMO_MARKER).read_bytes() == marker
    assert not (d / "pay" / "from-the-last-run").exists()              # a fresh store
    assert (d / "pay" / "payments.db").is_file()
    assert snapshot(outside) == out_before          # the link went, not its target


def test_an_empty_existing_directory_is_taken_and_marked(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    assert prepare_demo_dir(d) == d.resolve()
    assert [p.name for p in d.iterdir()] == [DEMO_MARKER]
    (d / "x").write_text("the demo's own")
    prepare_demo_dir(d)
    assert [p.name for p in d.iterdir()] == [DEMO_MARKER]


# --------------------------------------------------------------------------------------
# The other code that removes files: only what it made
# --------------------------------------------------------------------------------------

def test_a_simulator_never_replaces_a_file_at_its_port_path(tmp_path):
    """`lanecore sim … --link PATH` replaces and removes only a symbolic link there."""
    for name in ("port", "port.new"):
        taken = tmp_path / name
        taken.write_text("someone's file\n")
        before = snapshot(taken)
        r = subprocess.run([sys.executable, "-m", "lanecore", "sim", "scanner", "--link",
                            str(tmp_path / "port"), "--duration", "0.2"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "BAD_ARGUMENT" in r.stderr, r.stderr
        assert snapshot(taken) == before
        taken.unlink()
    os.symlink("/dev/null", tmp_path / "port")        # a stale link: its to replace
    r = subprocess.run([sys.executable, "-m", "lanecore", "sim", "scanner", "--link",
                        str(tmp_path / "port"), "--duration", "0.2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(tmp_path / "port")     # unplugged at the end: link gone
