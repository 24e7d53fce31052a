"""The book as a reader sees it, in headless Chromium (see browser_check.py).

The checker is first shown to catch each kind of problem on a page made to have them; then it checks a built
book: the one named by ``ANALYSIS_LIB_BROWSER_BOOK`` (``.ci/run`` points it at ``_build/html`` after
``run.py book``). The smoke-built book is checked in ``test_chapters.py``. Without Chromium the tests skip with a
message, except in CI (``CI`` set), where ``.ci/run`` installs it and a missing browser is a failure.
"""

import os
from pathlib import Path

import pytest
from browser_check import check_book, chromium

ROOT = Path(__file__).resolve().parents[1]


def require_chromium():
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it in CI")
    pytest.importorskip("playwright", reason="the playwright package (a test dependency) is not installed")


BAD_PAGE = """<!DOCTYPE html><html><head>
<style>article {{ width: 600px; }} img {{ max-width: 100%; }}</style></head><body>
<article class="bd-article">
  <p>Fine text with <a href="#here">a good anchor</a>, <a href="#nowhere">a broken one</a>,
     <a href="missing.html">a missing page</a> and <a href="https://example.org">an external link</a>.</p>
  <h2 id="here">Here</h2>
  <span class="math notranslate nohighlight">\\(x^2\\)</span>
  <table><tr><td style="white-space: nowrap">{wide}</td></tr></table>
  <div class="table-wrapper" style="overflow-x: auto"><table><tr><td style="white-space: nowrap">{wide}</td></tr>
  </table></div>
  <div class="cell_output"><div class="output stderr"><pre>warning: something</pre></div></div>
  <div class="cell_output"><div class="output"><pre>training:  40%|####      | 4/10 [00:01&lt;00:02, 3.1it/s]</pre>
  </div></div>
  <div class="cell_output" style="height: 3000px"><pre>long</pre></div>
  <img src="nothere.png" alt="a missing image">
  <img src="wide.png" alt="a figure too wide for the column">
  <img src="narrow.png">
</article></body></html>"""


def write_png(path: Path, width: int, height: int = 20):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def test_the_checker_catches_each_kind_of_problem(tmp_path):
    require_chromium()
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    (html / "book" / "bad.html").write_text(BAD_PAGE.format(wide="x" * 300))
    write_png(html / "book" / "wide.png", 1200)
    write_png(html / "book" / "narrow.png", 300)
    (report,) = check_book(html, tmp_path / "shots")
    problems = "\n".join(report.problems)
    assert "element(s) run past the text column" in problems
    assert sum("table" in o or "td" in o for o in report.overflowing) >= 1
    assert "1 formula(s) not typeset" in problems
    assert "image not loaded: nothere.png" in problems
    assert "figure shown at 0.5" in problems and "wide.png" in problems
    assert "figure without alt text: narrow.png" in problems
    assert "1 stderr block(s)" in problems and "1 progress-bar block(s)" in problems
    assert "1 output cell(s) taller than" in problems
    assert "broken link #nowhere (no such anchor)" in problems and "broken link missing.html (no such file)" in problems
    assert "#here" not in problems and "example.org" not in problems
    assert (tmp_path / "shots" / "book__bad.html.png").exists() and (tmp_path / "shots" / "report.json").exists()


def test_the_built_book_reads_well():
    book = os.environ.get("ANALYSIS_LIB_BROWSER_BOOK")
    if not book:
        pytest.skip("set ANALYSIS_LIB_BROWSER_BOOK to a built book's html folder (.ci/run does, after run.py book)")
    require_chromium()
    html = Path(book) if Path(book).is_absolute() else ROOT / book
    assert (html / "book").is_dir(), f"no built book at {html}"
    reports = check_book(html)
    problems = [f"{r.page}: {p}" for r in reports for p in r.problems]
    assert len(reports) >= 3 and not problems, "\n".join(problems)
