"""Rules every chapter follows, checked on the sources (no execution): the skeleton of a page, every check has a
kind, and every declared difference from the paper is fixed before anything is measured (it is built from
literals and the chapter's parameters only, outside any branch or loop), so it cannot be chosen from an outcome.
"""

import ast
import re
from pathlib import Path

import jupytext
import pytest

from analysis_lib.claims import CATEGORIES, KINDS
from analysis_lib.runner import Project

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = Project(ROOT).chapters()
CHECKS = {"check", "check_close", "check_at_least", "check_at_most", "check_fraction"}
#: The page skeleton (CONTRIBUTING.md): these second-level headings, in this order.
SECTIONS = ["## Claim", "## Setting", "## Claim checks", "## What differs from the paper", "## References"]


def code_cells(chapter):
    nb = jupytext.read(chapter.path)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def markdown(chapter) -> str:
    nb = jupytext.read(chapter.path)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def calls(tree, names):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in names]


def parents(tree):
    out = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            out[child] = node
    return out


def literal_or_parameter(node, parameters) -> bool:
    """Built only from constants and parameter names (f-strings, +, lists, tuples, format specs allowed)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in parameters
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(literal_or_parameter(e, parameters) for e in node.elts)
    if isinstance(node, ast.JoinedStr):
        return all(literal_or_parameter(v, parameters) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return literal_or_parameter(node.value, parameters) and (
            node.format_spec is None or literal_or_parameter(node.format_spec, parameters))
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        return literal_or_parameter(node.left, parameters) and literal_or_parameter(node.right, parameters)
    return False


def declaration_problems(source: str, parameters: set[str]) -> list[str]:
    tree = ast.parse(source)
    up = parents(tree)
    problems = []
    for call in calls(tree, {"declare"}):
        node = call
        while node in up:
            node = up[node]
            if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.FunctionDef, ast.Lambda,
                                 ast.IfExp, ast.comprehension, ast.BoolOp)):
                problems.append(f"line {call.lineno}: declare() inside a {type(node).__name__}")
                break
        args = list(call.args) + [k.value for k in call.keywords]
        if not all(literal_or_parameter(a, parameters) for a in args):
            problems.append(f"line {call.lineno}: declare() uses a value that is not a literal or a parameter: "
                            f"{ast.unparse(call)[:120]}")
        category = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "category"), None)
        if not (isinstance(category, ast.Constant) and category.value in CATEGORIES):
            problems.append(f"line {call.lineno}: declare() needs a literal category, one of {list(CATEGORIES)}")
    return problems


def test_the_declaration_rule_catches_outcome_dependent_declarations():
    params = {"steps"}
    assert declaration_problems('claims.declare("A", "scale", f"{steps} steps instead of 1000")', params) == []
    assert declaration_problems('claims.declare(["A", "B"], "data", "substitute " + "data")', params) == []
    assert declaration_problems('if ok:\n    claims.declare("A", "scale", "why")', params)
    assert declaration_problems('claims.declare("A", "scale", f"measured {ratio:.2f}")', params)
    assert declaration_problems('claims.declare("A", "scale", "x" if ok else "y")', params)
    assert declaration_problems('claims.declare("A", kind, "why")', params)
    assert declaration_problems('for i in ids:\n    claims.declare(i, "scale", "why")', params)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_declared_differences_do_not_depend_on_measured_values(chapter):
    parameters = set(chapter.parameters)
    problems = [p for cell in code_cells(chapter) for p in declaration_problems(cell, parameters)]
    assert not problems, f"{chapter.name}: " + "; ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_every_check_has_a_literal_kind(chapter):
    problems = []
    for cell in code_cells(chapter):
        assert "scale_note" not in cell, f"{chapter.name}: scale_note is gone; declare the difference instead"
        for call in calls(ast.parse(cell), CHECKS):
            kind = next((k.value for k in call.keywords if k.arg == "kind"), None)
            if not (isinstance(kind, ast.Constant) and kind.value in KINDS):
                problems.append(f"line {call.lineno}: {ast.unparse(call)[:80]}")
    assert not problems, f"{chapter.name}: checks without a literal kind in {list(KINDS)}: " + "; ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_every_chapter_follows_the_page_skeleton(chapter):
    text = markdown(chapter)
    headings = re.findall(r"^## .*$", text, flags=re.M)
    positions = []
    for section in SECTIONS:
        found = [i for i, h in enumerate(headings) if h == section or h.startswith(section + ":")]
        assert found, f"{chapter.name}: no section '{section}' (sections: {headings})"
        positions.append(found[0])
    assert positions == sorted(positions), f"{chapter.name}: sections out of order: {headings}"
    title_at = text.index("\n# ") if not text.startswith("# ") else 0
    box = re.search(r":::\{admonition\} Key result", text)
    assert box and box.start() < text.index("## Claim"), f"{chapter.name}: no 'Key result' box before the Claim"
    assert title_at < box.start()
    assert "{bibliography}" in text and ":filter: docname in docnames" in text, f"{chapter.name}: no references"
    source = chapter.path.read_text()
    assert "page.report()" in source and "page.footer()" in source, f"{chapter.name}: no page.report/footer"
