"""Smoke test: every chapter of the book executes under papermill with its tiny {smoke: ...} parameters, and
the book builds (warnings are errors) from those executed notebooks.

Claim failures are not enforced here (ANALYSIS_LIB_SMOKE=1): tiny runs test the mechanics; the book command
runs every chapter at its default scale and enforces the claims.
"""

import os
from pathlib import Path

import pytest
from browser_check import check_book
from conftest import _real_data_dir
from test_browser import require_chromium

from analysis_lib.runner import Project, build_html, run_chapter, stage

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = Project(ROOT).chapters()


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    return Project(ROOT, build_dir=tmp_path_factory.mktemp("smoke") / "_build"), {}


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter_runs_with_smoke_parameters(chapter, smoke_book, monkeypatch):
    monkeypatch.setenv("ANALYSIS_LIB_SMOKE", "1")
    if not os.environ.get("ANALYSIS_LIB_DATA") and _real_data_dir() is not None:
        monkeypatch.setenv("ANALYSIS_LIB_DATA", str(_real_data_dir()))  # as run.py does
    project, results = smoke_book
    result = run_chapter(project, chapter, chapter.smoke_overrides(), out_dir=project.build / "executed",
                         force=True)
    results[chapter.name] = result
    assert result.status == "ok", result.failure
    assert result.claims, f"{chapter.name} recorded no claim checks"


@pytest.mark.slow
def test_book_builds_from_the_smoke_run(smoke_book):
    project, results = smoke_book
    missing = [c.name for c in CHAPTERS if c.name not in results or results[c.name].status != "ok"]
    if missing:
        pytest.fail(f"chapters did not execute, so the book cannot be built: {', '.join(missing)}")
    src = stage(project, [results[c.name] for c in CHAPTERS])
    code, log = build_html(project, src)
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert code == 0, "\n".join(warnings[:20] or log.splitlines()[-20:])
    html = project.build / "html"
    assert (html / "reproducibility.html").exists()
    for c in CHAPTERS:
        assert (html / "book" / f"{c.name}.html").exists()


@pytest.mark.slow
def test_the_smoke_book_reads_well_in_a_browser(smoke_book):
    project, results = smoke_book
    html = project.build / "html"
    if not (html / "reproducibility.html").exists():
        pytest.fail("the smoke book was not built (see test_book_builds_from_the_smoke_run)")
    require_chromium()
    reports = check_book(html)
    problems = [f"{r.page}: {p}" for r in reports for p in r.problems]
    assert len(reports) == len(CHAPTERS) + 3 and not problems, "\n".join(problems)
