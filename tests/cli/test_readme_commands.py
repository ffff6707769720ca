"""Every ``vidiff`` command line in the README's code blocks and in the commands' ``--help`` examples parses with
the real command-line parser: a renamed or misspelt option in the documentation fails here (the cfg example once
used a flag argparse refused). And every dotted name and repository path the README gives exists."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from vidiff.cli.main import COMMANDS, build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?vidiff(?:\.cli\.main)?\s+(\S.*)$")  # vidiff, a path to it, -m


def readme_commands() -> list[str]:
    """The arguments after ``vidiff`` of each command line in a non-Python code block (continuations joined,
    trailing comments dropped)."""
    commands, language, line = [], None, ""
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            language = None if language is not None else (raw[3:].strip() or "text")
            continue
        if language in (None, "python"):
            continue
        line += raw.removesuffix("\\") + " "
        if raw.endswith("\\"):
            continue
        text, line = line.split("  #")[0].strip(), ""
        match = COMMAND.search(text)
        if match and not text.startswith("#") and "pip " not in text:
            commands.append(match.group(1))
    return commands


def test_the_readme_shows_commands_of_every_kind() -> None:
    found = {shlex.split(c)[0] for c in readme_commands()}
    assert {"generate", "train", "serve", "eval", "convert", "convert-weights"} <= found, found  # not vacuous


def help_examples() -> list[str]:
    """The example command lines of every command's ``--help`` (its module's ``EXAMPLES`` epilog)."""
    found = []
    for name in COMMANDS:
        module = importlib.import_module(f"vidiff.cli.{name.replace('-', '_')}")
        for line in getattr(module, "EXAMPLES", "").splitlines():
            match = COMMAND.search(line.strip())
            if line.startswith("  ") and not line.startswith("    ") and match:
                found.append(match.group(1))
    return found


def test_help_examples_are_found() -> None:
    assert len({shlex.split(c)[0] for c in help_examples()}) >= 6


@pytest.mark.parametrize("command", readme_commands() + help_examples())
def test_documented_command_parses(command: str, capsys: pytest.CaptureFixture) -> None:
    argv = shlex.split(command)
    assert argv[0] in COMMANDS, f"README runs an unknown command: vidiff {command}"
    try:
        build_parser(argv[0]).parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"vidiff {command}: {capsys.readouterr().err.strip().splitlines()[-1]} (exit {e.code})")


def test_every_dotted_name_the_readme_gives_exists() -> None:
    """``vidiff.parallel.parallelize_decode`` and the like, in prose and in code: each module imports and each
    attribute is there (a rename that forgets the README fails here)."""
    names = sorted(set(re.findall(r"\b(vidiff(?:\.[A-Za-z_]\w*)+)", README.read_text())))
    assert len(names) >= 20, names
    missing = []
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        for part in parts[i:]:
            obj = getattr(obj, part, None)
        if obj is None:
            missing.append(name)
    assert not missing, missing


def test_every_repository_path_the_readme_gives_exists() -> None:
    root = README.parent
    paths = sorted(set(re.findall(r"\b((?:vidiff|benchmarks|configs|scripts|tests)/[\w./-]*\w)", README.read_text())))
    assert len(paths) >= 20, paths
    assert not [p for p in paths if not (root / p).exists()]
