"""The CLI as people expect it: every option has help text and shows its default,
``lanecore --help`` describes the tool, lists every command on one line with examples,
exit codes and environment variables, and never shows ``==SUPPRESS==`` or RST markup;
long work (catalogue gen and import) shows progress, in plain lines off a terminal."""

from __future__ import annotations

import argparse
import re

import pytest
from clirun import lanecore
from repo import REPO

from lanecore import cli

#: Pure Python, no kernel: the twins pass of `make test` leaves it out (the progress
#: tests run the CLI, which parses with the kernels, so they are not marked).
kernel_free = pytest.mark.kernel_free

#: The plain progress line (gateway/tui.py): LABEL: N rows P% in S s (R rows/s)
PROGRESS_LINE = re.compile(r"^(?P<label>.+?): (?P<done>[\d,]+) rows(?: (?P<pct>[\d.]+)%)? "
                           r"in [\d.]+ s \([\d,]+ rows/s\)$")


def parsers(parser: argparse.ArgumentParser, path: str = "lanecore"):
    """(command path, parser) for the parser and every sub-parser below it, hidden
    ones (`worker`) included: their help is output too."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def visible_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The top-level commands `lanecore --help` should list (those with a help line)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [a.dest for a in action._choices_actions if a.help != argparse.SUPPRESS]
    raise AssertionError("lanecore has no sub-commands")


def shown_default(default) -> bool:
    return default is not None and default is not False and default is not argparse.SUPPRESS


def env_vars_read_by_the_code() -> set[str]:
    """Every LANECORE_* name the code (not the tests) mentions, and the Numba switch."""
    names = {"NUMBA_DISABLE_JIT"}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO).parts
        if rel[0] in ("tests", "build", ".venv") or "site-packages" in rel:
            continue
        names |= set(re.findall(r"\bLANECORE_[A-Z][A-Z0-9_]*[A-Z0-9]\b",
                                path.read_text(encoding="utf-8")))
    return names


@pytest.fixture
def wide(monkeypatch):
    """argparse wraps help to $COLUMNS: wide enough that no help text is wrapped."""
    monkeypatch.setenv("COLUMNS", "1000")


@pytest.fixture(scope="module")
def top_help() -> str:
    """`lanecore --help` as a user sees it, on an 80-column terminal."""
    r = lanecore("--help", env={"COLUMNS": "80"})
    return r.stdout


# -- every option ---------------------------------------------------------------------

@kernel_free
def test_the_walk_finds_every_command():
    found = {path for path, _ in parsers(cli.build_parser())}
    assert {"lanecore catalog gen", "lanecore weigh gen", "lanecore serve",
            "lanecore worker", "lanecore demo", "lanecore qr mpm"} <= found, found


@kernel_free
def test_every_option_has_help_text():
    missing = []
    for path, parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:       # hidden on purpose: never shown
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == [], f"options without help text: {missing}"


@kernel_free
def test_every_command_has_a_help_line_and_its_own_description():
    for path, parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert (choice.help or "").strip(), f"{path} {choice.dest}"
                    assert choice.help != argparse.SUPPRESS, f"{path} {choice.dest}"
        if path != "lanecore":
            assert (parser.description or "").strip(), f"{path} --help has no description"


@kernel_free
def test_help_shows_every_non_trivial_default(wide):
    checked = 0
    for path, parser in parsers(cli.build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if (not action.option_strings or action.help == argparse.SUPPRESS
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
                    or not shown_default(action.default)):
                continue
            option = "/".join(action.option_strings)
            # the option's help as its parser's formatter writes it …
            said = " ".join(parser._get_formatter()._expand_help(action).split())
            assert re.search(r"\bdefault:?\s+" + re.escape(str(action.default)), said), \
                f"{path}: {option}'s help does not show its default {action.default!r}: {said!r}"
            # … and as the help output shows it
            assert said in text, f"{path}: {option}: {said!r} not in its help output"
            checked += 1
    assert checked >= 25, checked               # the walk saw the defaults, not none


@kernel_free
def test_options_without_a_default_do_not_say_default_none(wide):
    for path, parser in parsers(cli.build_parser()):
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, path


@kernel_free
def test_no_help_output_shows_suppress_or_rst_markup(wide):
    for path, parser in parsers(cli.build_parser()):
        text = parser.format_help() + parser.format_usage()
        assert "==SUPPRESS==" not in text, path
        assert "``" not in text, path


# -- lanecore --help, as run --------------------------------------------------------

def test_top_help_describes_the_tool(top_help):
    assert top_help.startswith("usage: lanecore")
    intro = top_help.split("\n\n")[1]
    assert "supermarket checkout" in intro and len(intro.split()) >= 20, intro
    assert "``" not in top_help and "==SUPPRESS==" not in top_help
    assert "The ``lanecore`` command" not in top_help


def test_top_help_lists_every_command_on_one_line(top_help):
    lines = top_help.splitlines()
    start = lines.index("commands:")
    listing = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        listing.append(line)
    entries = {}
    for line in listing:
        m = re.match(r"^    (\S+)\s{2,}(\S.*)$", line)
        if m:
            entries[m.group(1)] = m.group(2)
        else:           # the group's own "COMMAND" line, and nothing else
            assert line.strip() == "COMMAND", f"a command's help runs over: {line!r}"
    commands = visible_commands(cli.build_parser())
    assert set(entries) == set(commands), (entries, commands)
    assert "worker" not in entries and "worker" not in top_help.splitlines()[0]


def test_top_help_has_examples(top_help):
    section = top_help[top_help.index("\nexamples:\n"):]
    examples = re.findall(r"^  (lanecore [a-z].*?)(?:\s{2,}|$)", section, re.M)
    assert len(examples) >= 4, section
    commands = set(visible_commands(cli.build_parser()))
    for example in examples:
        word = example.split()[1]
        assert word in commands or word == "COMMAND", example


def test_top_help_lists_exit_codes(top_help):
    section = top_help[top_help.index("\nexit codes:\n"):]
    for code, words in (("0", "success"), ("1", "bad"), ("2", "usage"), ("130", "interrupt")):
        assert re.search(rf"^  {code}\s+.*{words}", section, re.M), (code, section)


def test_top_help_and_readme_list_every_environment_variable(top_help):
    names = env_vars_read_by_the_code()
    assert {"LANECORE_DATA_DIR", "LANECORE_PURE", "NUMBA_DISABLE_JIT"} <= names, names
    section = top_help[top_help.index("\nenvironment:\n"):]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    env_section = readme[readme.index("## Exit codes and environment"):]
    for name in sorted(names):
        assert re.search(rf"^  {name}\b", section, re.M), f"--help: {name}"
        assert f"`{name}" in env_section, f"README: {name}"


def test_readme_lists_the_exit_codes():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Exit codes and environment"):]
    section = section[:section.find("\n## ", 1) if "\n## " in section[1:] else None]
    for code in ("0", "1", "2", "130"):
        assert f"| {code} |" in section, code


def test_a_sub_command_help_shows_its_defaults_as_run():
    r = lanecore("catalog", "gen", "--help", env={"COLUMNS": "200"})
    text = " ".join(r.stdout.split())
    assert "--seed SEED random seed: the same seed, the same catalogue (default: 0)" in text
    assert "--region CC" in text and "(GB, SE, DE) (default: GB)" in text
    r = lanecore("serve", "--help", env={"COLUMNS": "200"})
    assert "(default: 4096)" in r.stdout and "==SUPPRESS==" not in r.stdout


# -- progress of long work -----------------------------------------------------------

def progress_lines(stderr: str, label: str) -> list[re.Match]:
    lines = [line for line in stderr.splitlines() if line.startswith(label)]
    assert lines, stderr
    out = []
    for line in lines:
        assert line.count("rows/s") == 1 and "\r" not in line, repr(line)
        m = PROGRESS_LINE.match(line)
        assert m, f"garbled progress line: {line!r}"
        out.append(m)
    return out


def test_catalog_gen_and_import_print_plain_progress_lines(tmp_path):
    """Off a terminal (a pipe here): one line per quarter of the work passed and a last
    one, each ending with a single rate; 60,000 rows is more than one 50,000-row chunk,
    so there is a line before the last."""
    csv_path = tmp_path / "cat.csv"
    data_dir = tmp_path / "store"
    r = lanecore("catalog", "gen", "--rows", 60_000, "--out", csv_path, "--seed", 5)
    gen = progress_lines(r.stderr, f"writing {csv_path}:")
    assert [m["done"] for m in gen] == ["50,000", "60,000"], r.stderr
    assert gen[-1]["pct"] == "100.0" and float(gen[0]["pct"]) < 100.0
    assert "\x1b[" not in r.stderr                      # no animation in a pipe

    r = lanecore("catalog", "import", csv_path, env={"LANECORE_DATA_DIR": str(data_dir)})
    imp = progress_lines(r.stderr, f"importing {csv_path}:")
    assert len(imp) >= 2 and imp[-1]["done"] == "60,000" and imp[-1]["pct"] == "100.0"
    assert [int(m["done"].replace(",", "")) for m in imp] == \
        sorted(int(m["done"].replace(",", "")) for m in imp)
    assert "imported 60,000 of 60,000 rows" in r.stdout
    assert "\x1b[" not in r.stderr


def test_a_failed_import_prints_no_last_progress_line(tmp_path):
    r = lanecore("catalog", "import", tmp_path / "missing.csv", check=False,
                 env={"LANECORE_DATA_DIR": str(tmp_path / "store")})
    assert r.returncode != 0
    assert "rows/s" not in r.stderr and "Traceback" not in r.stderr, r.stderr
