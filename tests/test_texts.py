"""The texts a user reads first say what the tool is: `nst-jax --help` and every subcommand's help name the three
model families and Gatys; pyproject's description names the families and its `requires-python` is what the
installed dependencies need. Argparse and metadata only: no jax."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from nst_jax import cli

ROOT = Path(__file__).resolve().parent.parent
# The three feed-forward families by the names a user types or reads, and the optimisation baseline.
NAMES = ("AdaIN", "multistyle26", "magenta-arbitrary", "Gatys")
# Subcommands that run a feed-forward model: their one-line help in `nst-jax --help` names all three families.
MODEL_COMMANDS = ("stylize", "video", "export")


def _flat(text: str) -> str:
    """Help text as one line: argparse wraps (and may break at hyphens), so join the lines back."""
    return re.sub(r"-\n\s*", "-", re.sub(r"(?<!-)\n\s*", " ", text))


def _subcommands() -> dict[str, tuple[str, argparse.ArgumentParser]]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return {name: (helps[name], sub) for name, sub in action.choices.items()}


def test_top_level_help_names_the_families_and_the_live_page():
    text = _flat(cli.build_parser().format_help())
    for name in (*NAMES, "conditional instance norm", "python serve.py"):
        assert name in text, name


def test_every_subcommand_names_the_families_and_gatys():
    commands = _subcommands()
    assert set(commands) >= {"stylize", "sheet", "video", "gatys", "export", "download", "convert", "info"}
    for name, (line, sub) in commands.items():
        description = _flat(sub.description or "")
        for word in NAMES:
            assert word in description, (name, word)
        if name in MODEL_COMMANDS:
            for word in ("AdaIN", "multistyle26", "magenta-arbitrary"):
                assert word in line, (name, word)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_package_description_names_the_families():
    description = _pyproject()["description"]
    for words in ("AdaIN", "conditional instance norm", "arbitrary", "Gatys"):
        assert words in description, words


def _lowest_python(spec: str | None) -> tuple[int, int]:
    """The lowest Python 3.x a Requires-Python specifier admits."""
    allowed = SpecifierSet(spec or "")
    return next((3, m) for m in range(6, 30) if f"3.{m}.0" in allowed or f"3.{m}" in allowed)


def test_requires_python_is_what_the_installed_dependencies_need():
    project = _pyproject()
    ours = _lowest_python(project["requires-python"])
    needed: dict[str, tuple[int, int]] = {}
    for line in project["dependencies"]:
        name = Requirement(line).name
        try:
            needed[name] = _lowest_python(importlib.metadata.metadata(name).get("Requires-Python"))
        except importlib.metadata.PackageNotFoundError:
            continue
    assert "jax" in needed, "jax, a dependency, is not installed"
    for extra in ("jaxlib",):  # installed with jax, not listed
        needed[extra] = _lowest_python(importlib.metadata.metadata(extra).get("Requires-Python"))
    # Not lower than any dependency needs (pip's resolver would fail with a confusing error instead), and not
    # higher than the strictest of them (nothing of ours needs more).
    assert ours == max(needed.values()), (ours, needed)
    for classifier in project.get("classifiers", []):
        m = re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", classifier)
        if m:
            assert (3, int(m.group(1))) >= ours, classifier


def test_readme_first_screen_says_what_it_is_and_how_to_start():
    text = (ROOT / "README.md").read_text()
    first = text[:text.index("\n## ")]  # everything before the first section
    for words in (*NAMES, "pip install", "nst-jax stylize photo.jpg --model magenta-arbitrary", "python serve.py"):
        assert words in first, words
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", first)
    assert len(pictures) == 1
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):  # every picture README shows is in the repository
        assert (ROOT / path).is_file(), path
    assert "python -m pytest -q -n 2\n" in text  # CI runs README's test command (.ci/run)
