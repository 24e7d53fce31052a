"""Open every page of a built book in headless Chromium, as a reader would, and list what a reader would stumble on.

    .venv/bin/python tests/browser_check.py _build/html      # prints the problems, writes _build/browser/

For each page: untypeset math, images that did not load, figures shown smaller than their natural size (their
labels then fall below 10 pt), broken internal links and anchors, horizontal overflow of the text column, visible
stderr or progress-bar output, output cells taller than a limit. Screenshots of every page and a JSON summary go to
``<book>/../browser/``. Used by ``tests/test_browser.py`` (on the smoke build, and on the real book in CI).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 1400, 900
#: A figure shown at less than this fraction of its natural width has labels below 10 pt.
MIN_FIGURE_SCALE = 0.95
#: An output cell taller than this many pixels is too long for a reader to take in.
MAX_OUTPUT_HEIGHT = 2600
PROGRESS = re.compile(r"\d+%\|[#█▏▎▍▌▋▊▉ ]*\||\d+(\.\d+)?(it|cell|prompt)/s\]")


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)  # natural and displayed width of every image
    overflowing: list[str] = field(default_factory=list)


def chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def book_pages(html: Path) -> list[Path]:
    pages = sorted((html / "book").glob("*.html"))
    extra = [html / f"{name}.html" for name in ("reproducibility", "benchmarks")]
    return pages + [p for p in extra if p.exists()]


_MEASURE = """() => {
  const article = document.querySelector('article.bd-article') || document.body;
  const box = article.getBoundingClientRect();
  const clipped = el => { for (let e = el.parentElement; e && e !== article; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
    return false; };
  const describe = el => el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
      ? '.' + el.className.trim().split(/\\s+/).slice(0, 2).join('.') : '') + ': '
      + (el.textContent || '').trim().slice(0, 60);
  const overflowing = [];
  for (const el of article.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > box.right + 2 && !clipped(el)) overflowing.push(describe(el));
  }
  const math = Array.from(document.querySelectorAll('.math'));
  const untypeset = math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60));
  const images = Array.from(article.querySelectorAll('img')).map(i => ({
      src: i.getAttribute('src'), alt: i.getAttribute('alt') || '', loaded: i.complete && i.naturalWidth > 0,
      natural: i.naturalWidth, displayed: Math.round(i.getBoundingClientRect().width),
      hidden: i.closest('details:not([open])') !== null}));
  const stderr = Array.from(article.querySelectorAll('.output.stderr, .stderr')).map(e => e.textContent.slice(0, 80));
  const outputs = Array.from(article.querySelectorAll('.cell_output')).map(e => e.getBoundingClientRect().height);
  const texts = Array.from(article.querySelectorAll('.cell_output pre, .output pre')).map(e => e.textContent);
  const links = Array.from(article.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
  return {overflowing, untypeset, images, stderr, outputs, texts, links, mathCount: math.length};
}"""


def _ids(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        cache[path] = set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))
    return cache[path]


def _broken_links(page: Path, html_root: Path, links: list[str], cache: dict) -> list[str]:
    broken = []
    for href in links:
        parts = urlparse(href)
        if parts.scheme or href.startswith("mailto:") or href.startswith("//"):
            continue  # external: not checked (no network here)
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(f"{href} (no such file)")
        elif parts.fragment and target.suffix == ".html" and parts.fragment not in _ids(target, cache):
            broken.append(f"{href} (no such anchor)")
    return broken


def check_book(html: Path, out: Path | None = None) -> list[PageReport]:
    """Check every chapter page and the report of the book built in ``html``; screenshots and a JSON summary go
    to ``out`` (default: a ``browser`` folder next to ``html``)."""
    from playwright.sync_api import sync_playwright

    html = Path(html).resolve()
    out = Path(out) if out else html.parent / "browser"
    out.mkdir(parents=True, exist_ok=True)
    reports, cache = [], {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for path in book_pages(html):
            rep = PageReport(path.relative_to(html).as_posix())
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
            m = page.evaluate(_MEASURE)
            rep.overflowing = m["overflowing"][:10]
            if m["overflowing"]:
                rep.problems.append(f"{len(m['overflowing'])} element(s) run past the text column, e.g. "
                                    f"{m['overflowing'][0]!r}")
            if m["untypeset"]:
                rep.problems.append(f"{len(m['untypeset'])} formula(s) not typeset, e.g. {m['untypeset'][0]!r}")
            for img in m["images"]:
                if not img["loaded"]:
                    rep.problems.append(f"image not loaded: {img['src']}")
                    continue
                scale = img["displayed"] / img["natural"] if img["natural"] else 0.0
                rep.figures.append({"src": img["src"], "natural": img["natural"], "displayed": img["displayed"],
                                    "scale": round(scale, 3)})
                if not img["hidden"] and scale < MIN_FIGURE_SCALE:
                    rep.problems.append(f"figure shown at {scale:.2f}x its natural size: {img['src']}")
                if not img["alt"] or img["alt"].endswith(".png"):
                    rep.problems.append(f"figure without alt text: {img['src']}")
            if m["stderr"]:
                rep.problems.append(f"{len(m['stderr'])} stderr block(s), e.g. {m['stderr'][0]!r}")
            residue = [t for t in m["texts"] if PROGRESS.search(t)]
            if residue:
                rep.problems.append(f"{len(residue)} progress-bar block(s), e.g. {residue[0][:60]!r}")
            tall = [h for h in m["outputs"] if h > MAX_OUTPUT_HEIGHT]
            if tall:
                rep.problems.append(f"{len(tall)} output cell(s) taller than {MAX_OUTPUT_HEIGHT} px "
                                    f"(tallest {max(tall):.0f} px)")
            rep.problems += [f"broken link {b}" for b in _broken_links(path, html, m["links"], cache)]
            page.screenshot(path=str(out / (rep.page.replace("/", "__") + ".png")), full_page=True)
            reports.append(rep)
        browser.close()
    (out / "report.json").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    return reports


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: browser_check.py BOOK_HTML_FOLDER", file=sys.stderr)
        return 2
    reports = check_book(Path(argv[0]))
    for r in reports:
        scales = [f["scale"] for f in r.figures]
        print(f"{r.page}: {len(r.figures)} figure(s)"
              + (f", smallest scale {min(scales):.2f}" if scales else "")
              + (f"; PROBLEMS: {'; '.join(r.problems)}" if r.problems else "; ok"))
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
