"""Where the repository is, for tests that read its documents (README, docs/)."""

from pathlib import Path

#: The repository root (``tests/helpers/`` is two levels below it).
REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
