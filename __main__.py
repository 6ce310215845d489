"""``python -m lanecore`` is the ``lanecore`` command."""

from lanecore.cli import main

raise SystemExit(main())
