"""Project-level contracts: the README's two set-up commands, CI, packaging."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each set-up command is one line"
    assert "pytest" in commands[1] and "pytest" not in commands[0]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert commands[1] in ci, ".ci/run must run the README's test command verbatim"


def test_distribution_ships_only_safecrowd_llm():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "safecrowd-llm"
    assert meta["tool"]["setuptools"]["packages"]["find"]["include"] == ["safecrowd_llm*"]
    assert {"llm", "control", "serve", "dev"} <= set(meta["project"]["optional-dependencies"])
