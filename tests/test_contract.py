"""Features ask the family contract, never the family's name: outside `nst_jax/models` and `nst_jax/weights` no
code compares against a family name (a literal such as "cin", or `family.name` against a literal or a constant
list of names). Comparing two runtime values (the family a checkpoint holds against the run's) is allowed."""

from __future__ import annotations

import ast
from pathlib import Path

import nst_jax
from nst_jax import models

ROOT = Path(nst_jax.__file__).parent
OWNERS = ("models", "weights")  # where a family's own code lives


def _names_a_family(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in models.MODELS
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_family(e) for e in node.elts)
    return False


def _is_family_name(node: ast.AST) -> bool:
    """`family.name`, `st.family.name`, `self.family.name`."""
    if not (isinstance(node, ast.Attribute) and node.attr == "name"):
        return False
    owner = node.value
    return (isinstance(owner, ast.Name) and owner.id == "family") or \
        (isinstance(owner, ast.Attribute) and owner.attr == "family")


def _is_constant_list(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id.isupper()


def family_name_comparisons(root: Path = ROOT) -> list[str]:
    """`path:line: source` of every comparison against a family name outside the families' own packages."""
    hits = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in OWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            literal = any(_names_a_family(o) for o in operands)
            by_list = any(_is_family_name(o) for o in operands) and any(_is_constant_list(o) for o in operands)
            if literal or by_list:
                hits.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return hits


def test_no_module_outside_the_families_compares_a_family_name():
    assert family_name_comparisons() == []


def test_the_scan_finds_each_form(tmp_path):
    (tmp_path / "feature.py").write_text(
        "def f(family, st, name, other):\n"
        "    a = family.name == 'adain'\n"
        "    b = st.family.name in ('cin', 'arbitrary')\n"
        "    c = family.name not in BF16_FAMILIES\n"
        "    d = name != 'adain'\n"
        "    e = family.name != other.family.name\n"  # two runtime values: allowed
        "    return a, b, c, d, e\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "own.py").write_text("x = 'cin' == 'cin'\n")  # a family's own package: allowed
    assert [h.split(":")[1] for h in family_name_comparisons(tmp_path)] == ["2", "3", "4", "5"]
