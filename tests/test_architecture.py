"""The house map holds: docs/architecture.md names only paths that exist, the rooms of
core/ and gateway/ are the ones it names, every package says what it may import, every
document path named anywhere exists, and the import contracts fail when broken."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

ARCH = REPO / "docs" / "architecture.md"
TOP = ("core", "ext", "drivers", "gateway", "bench", "tests", "docs")
PATH_RE = re.compile(r"(?<![\w./:-])((?:%s)/[\w./-]*[\w/])" % "|".join(TOP))

CORE_ROOMS = {"scan", "weigh", "pay", "promo", "store"}
CORE_SHARED = {"__init__.py", "errors.py", "config.py", "sqltxn.py", "sqlschema.py",
               "signing.py", "rollups.py"}
GATEWAY_ROOMS = {"net", "payments", "sim", "console", "db", "chain"}
GATEWAY_FILES = {"__init__.py", "service.py", "coupons.py", "till.py", "lane.py", "store.py",
                 "chainstore.py",
                 "tui.py", "supervisor.py"}


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    return [REPO / p for p in out]


def test_every_path_the_architecture_names_exists():
    text = ARCH.read_text(encoding="utf-8")
    named = sorted(set(PATH_RE.findall(text)))
    assert len(named) >= 60, named          # the map names its rooms, not a handful
    missing = [p for p in named if not (REPO / p).exists()]
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"
    for room in CORE_ROOMS:
        assert f"core/{room}/" in text, room
    for room in GATEWAY_ROOMS:
        assert f"gateway/{room}/" in text, room
    for name in GATEWAY_FILES - {"__init__.py"}:
        assert f"gateway/{name}" in text, name
    for name in CORE_SHARED - {"__init__.py"}:
        assert f"core/{name}" in text, name


def test_core_never_imports_the_postgresql_driver():
    """core speaks sqlite3's DB-API only; psycopg stays behind gateway/db/pg.py (the
    layers contract keeps core from importing gateway; this keeps the driver out)."""
    import ast
    found = []
    for f in tracked("core/*.py", "core/**/*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{f.relative_to(REPO)}: {n}" for n in names
                      if n.split(".")[0] in ("psycopg", "psycopg2", "psycopg_pool")]
    assert len(tracked("core/*.py", "core/**/*.py")) >= 20
    assert found == []


def test_the_readme_links_the_architecture():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/architecture.md" in readme


def _entries(folder: str) -> tuple[set[str], set[str]]:
    """(packages, modules) directly in a folder, as git tracks them."""
    dirs, files = set(), set()
    for p in tracked(f"{folder}/"):
        rel = p.relative_to(REPO / folder).parts
        if len(rel) == 1:
            files.add(rel[0])
        else:
            dirs.add(rel[0])
    return dirs, files


def test_core_and_gateway_hold_only_their_rooms_and_shared_files():
    dirs, files = _entries("core")
    assert dirs == CORE_ROOMS and files == CORE_SHARED, (dirs, files)
    dirs, files = _entries("gateway")
    assert dirs == GATEWAY_ROOMS and files == GATEWAY_FILES, (dirs, files)


def test_every_package_opens_with_what_lives_there_and_what_it_may_import():
    inits = [p for p in tracked("*__init__.py")
             if p.parts[len(REPO.parts)] in ("core", "ext", "drivers", "gateway")]
    inits.append(REPO / "__init__.py")
    assert len(inits) >= 14, inits
    for init in inits:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        where = init.relative_to(REPO)
        assert len(doc) > 80, f"{where}: no docstring saying what lives here"
        assert re.search(r"\bimport", doc), f"{where}: its docstring says nothing of imports"


#: A repository path as documents and docstrings name them: docs/pay/qr.md,
#: gateway/net/client.py, tests/core/scan/test_catalog.py, ext/_barcode.pyx.
NAMED_PATH = re.compile(r"(?<![\w./-])((?:docs|core|ext|drivers|gateway|tests|bench)/"
                        r"[\w./-]*\.(?:md|py|pyx|toml))\b")


def test_every_path_named_in_the_repository_exists():
    """Documents and docstrings name documents and modules by path; after a move, a
    stale one is found here rather than by a reader."""
    named: dict[str, set[str]] = {}
    for f in tracked("*.py", "*.md", "Makefile", "*.toml"):
        if f.is_relative_to(REPO / "tests" / "ext" / "data"):
            continue
        for m in NAMED_PATH.findall(f.read_text(encoding="utf-8")):
            named.setdefault(m, set()).add(str(f.relative_to(REPO)))
    assert sum(p.startswith("docs/") for p in named) >= 25, sorted(named)
    assert sum(p.startswith(("core/", "gateway/")) for p in named) >= 25, sorted(named)
    missing = {p: sorted(w) for p, w in named.items() if not (REPO / p).exists()}
    assert missing == {}, f"paths named but not there: {missing}"


LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """The package's Python sources under a folder named lanecore, with pyproject.toml
    beside it: what lint-imports reads, and ours to spoil."""
    assert LINT.exists(), f"{LINT}: import-linter is a test requirement (setup.py)"
    root = tmp_path_factory.mktemp("lint")
    for src in tracked("*.py"):
        rel = src.relative_to(REPO)
        if rel.parts[0] in ("tests", "bench"):
            continue
        dst = root / "lanecore" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _spoil(tree: Path, module: str, line: str):
    path = tree / "lanecore" / module
    original = path.read_text(encoding="utf-8")
    path.write_text(original + f"\n{line}\n", encoding="utf-8")
    return lambda: path.write_text(original, encoding="utf-8")


def test_the_contracts_hold_on_the_tree():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "5 kept" in r.stdout, r.stdout


@pytest.mark.parametrize("module, line, contract", [
    # the domain reaching up into the processes
    ("core/pay/ledger.py", "from lanecore.gateway.net import client", "One way down"),
    # a driver importing the command line (the old cycle, one layer lower)
    ("drivers/scales.py", "import lanecore.cli", "One way down"),
    # payments reaching into the catalogue
    ("core/pay/cash.py", "from lanecore.core.scan import catalog", "core.pay uses no other"),
    # two sibling domains
    ("core/promo/pricing.py", "from lanecore.core.weigh import verify", "core's domains"),
    # a shared file importing a room
    ("core/config.py", "from lanecore.core.store import basket", "core's shared files"),
    # one process importing another instead of talking to it
    ("gateway/coupons.py", "from lanecore.gateway.payments import gateway", "gateway:"),
    # the shared kit importing a process
    ("gateway/net/client.py", "from lanecore.gateway import service", "gateway:"),
])
def test_a_forbidden_import_breaks_its_contract(package_copy, module, line, contract):
    restore = _spoil(package_copy, module, line)
    try:
        r = _lint(package_copy)
    finally:
        restore()
    assert r.returncode == 1, r.stdout + r.stderr
    # The section after "Broken contracts" names each broken one and the import chain;
    # an import that closes a cycle may break a second contract too.
    assert "Broken contracts" in r.stdout, r.stdout
    assert contract in r.stdout.split("Broken contracts", 1)[1], r.stdout
    assert re.search(r"Contracts: \d kept, [1-5] broken", r.stdout), r.stdout
