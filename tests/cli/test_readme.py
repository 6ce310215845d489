"""The README documents every command the `lanecore` CLI has, and its device
example does what it says."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lanecore import cli
from lanecore.drivers.sim.scale import ScaleSim

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def commands(parser: argparse.ArgumentParser, prefix: str = "lanecore") -> list[str]:
    """Every (sub)command path of the parser, e.g. 'lanecore device read'."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            hidden = {a.dest for a in action._choices_actions if a.help == argparse.SUPPRESS}
            shown = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                if name in hidden or name not in shown:
                    continue
                path = f"{prefix} {name}"
                below = commands(sub, path)
                out += below or [path]
    return out


def test_every_command_is_in_the_readme():
    found = commands(cli.build_parser())
    assert "lanecore sim" in found and "lanecore device read" in found, found
    missing = [c for c in found if f"`{c}" not in README]
    assert missing == [], f"commands the README does not document: {missing}"


def test_every_simulator_is_named_in_the_readme():
    from lanecore.drivers.sim import SIMULATORS
    section = README[README.index("## Devices and their simulators"):]
    for name in SIMULATORS:
        assert f"`{name}`" in README or f"sim {name}" in section, name


def test_readme_device_example(capsys):
    """`device probe` then `device read --count 3 --json` on a simulated Toledo scale
    print what the README shows."""
    example = re.search(r"\$ lanecore device read \S+ --protocol toledo --count 3 --json\n"
                        r"((?:\{.*\}\n)+)", README)
    assert example, "the README's device read example"
    shown = [json.loads(line) for line in example.group(1).splitlines()]
    with ScaleSim("toledo", weight_g=1234, motion_s=0.0) as scale:
        assert cli.main(["device", "probe", scale.path]) == 0
        assert capsys.readouterr().out.strip() == "toledo"
        assert cli.main(["device", "read", scale.path, "--protocol", "toledo",
                         "--count", "3", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == shown
