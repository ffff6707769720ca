"""Every ``vidiff`` command line in the README's code blocks parses with the real command-line parser: a renamed
or misspelt option in the documentation fails here (the cfg example once used a flag argparse refused)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vidiff.cli.main import COMMANDS, build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?vidiff(?:\.cli\.main)?\s+(\S.*)$")  # vidiff, .venv/bin/vidiff, -m ...


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


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command: str, capsys: pytest.CaptureFixture) -> None:
    argv = shlex.split(command)
    assert argv[0] in COMMANDS, f"README runs an unknown command: vidiff {command}"
    try:
        build_parser(argv[0]).parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"vidiff {command}: {capsys.readouterr().err.strip().splitlines()[-1]} (exit {e.code})")
