"""The `lanecore` command in a subprocess, as a user runs it (tests of the CLI and of
processes started through it)."""

from __future__ import annotations

import os
import subprocess
import sys


def lanecore(*args, check: bool = True, env: dict | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m lanecore ARGS``; with ``check``, its exit status must be 0.
    ``env``: variables added to this process's environment."""
    r = subprocess.run([sys.executable, "-m", "lanecore", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
    if check:
        assert r.returncode == 0, r.stderr
    return r
