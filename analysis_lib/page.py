"""What every chapter page does around its science: the set-up, tables and figures for the page, the footer.

    page = start_page("imli_01_logistic_regression", seed)   # seed, threads, theme, claim log, timer
    claims = page.claims
    ...
    page.figure("fig_loss", fig)          # placed in the text with ```{glue:figure} fig_loss``` and a caption
    page.table(df, columns={"pd": "PD"})  # human column names, formatted numbers, "—" for missing
    ...
    page.report()                         # the claim table, with the run's machine, dtype and commit
    page.footer()                         # one line: run time, machine, feature dtype, commit, date

The machine facts (:func:`run_info`) go with the claims into the build's reproducibility report, so two builds
(e.g. with and without native bf16) can be compared chapter by chapter.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis_lib.claims import Claims
from analysis_lib.plotting import set_theme
from analysis_lib.runtime import TIMINGS, seed_everything, set_cpu_threads, timed

ROOT = Path(__file__).resolve().parents[1]
MISSING = "—"


@functools.lru_cache(maxsize=1)
def source_commit() -> str:
    """The git commit the library was loaded from (short hash, '+changes' if the tree differs), or 'unknown'."""
    if env := os.environ.get("ANALYSIS_LIB_COMMIT"):
        return env
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def run_info(seconds: float | None = None) -> dict:
    """Facts that make a chapter's numbers comparable across builds: machine, CPU capability, native bf16, the
    feature dtype that ``dtype='auto'`` picks here, the device, the commit and the date (UTC)."""
    import torch

    from analysis_lib.models import cpu_capability, cpu_has_native_bf16, feature_dtype
    from analysis_lib.runtime import get_device

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "cpu capability": cpu_capability(),
        "native bf16": cpu_has_native_bf16(),
        "feature dtype": feature_dtype("auto"),
        "device": str(get_device()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if seconds is not None:
        info["seconds"] = round(float(seconds), 1)
    if TIMINGS:
        info["time by part"] = {part: round(t, 1) for part, t in sorted(TIMINGS.items())}
    return info


def describe_run(info: dict) -> str:
    """One sentence from :func:`run_info`."""
    took = f" in {info['seconds']:.0f} s" if "seconds" in info else ""
    bf16 = "native bf16" if info.get("native bf16") else "no native bf16"
    return (f"Executed{took} on {info['date']} from commit {info['commit']}: {info['machine']}, CPU capability "
            f"{info['cpu capability']} ({bf16}), features in {info['feature dtype']}, device {info['device']}, "
            f"torch {info['torch']}, Python {info['python']}.")


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------

def _format_number(value, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if fmt is not None:
        return format(value, fmt)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            mantissa, exponent = f"{v:.2e}".split("e")
            return f"{mantissa}×10<sup>{int(exponent)}</sup>"
        return f"{v:.4g}"
    return html.escape(str(value))


def table_html(df, *, columns: dict | None = None, formats: dict | None = None, index: bool = False,
               caption: str | None = None) -> str:
    """A DataFrame as the book's HTML table: columns renamed by ``columns`` (and only those, in that order, when
    given), numbers formatted (``formats``: column -> format spec, else 4 significant digits), '—' for missing,
    booleans as yes/no."""
    frame = df.reset_index() if index else df
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"columns: not in the table: {', '.join(map(str, missing))}")
        frame = frame[list(columns)].rename(columns=columns)
    formats = {(columns or {}).get(k, k): v for k, v in (formats or {}).items()}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = []
        for col, v in zip(frame.columns, values, strict=True):
            numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f'<td class="{"num" if numeric else "text"}">{_format_number(v, formats.get(col))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(frame.columns)}">{MISSING}</td></tr>')
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<div class="table-wrapper"><table class="book-table">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def show_table(df, **kwargs) -> None:
    """Display :func:`table_html` in the notebook."""
    from IPython.display import HTML, display

    display(HTML(table_html(df, **kwargs)))


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Page:
    """One chapter's run: its seed, random generator, claim log and clock."""

    name: str
    seed: int
    rng: np.random.Generator
    claims: Claims
    threads: int
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def figure(self, key: str, fig) -> None:
        """Glue ``fig`` under ``key`` (placed in the text by a ``glue:figure`` directive with its caption) and
        close it, so it is not also shown where it was drawn."""
        import matplotlib.pyplot as plt
        from myst_nb import glue

        with timed("plotting"):  # glue renders the PNG
            glue(key, fig, display=False)
        plt.close(fig)

    table = staticmethod(show_table)

    def glue(self, key: str, value) -> None:
        """Glue a value for the text (``{glue:text}`key:.3f```), not shown where it is computed."""
        from myst_nb import glue

        glue(key, value, display=False)

    def report(self) -> None:
        """The claim table of the chapter, carrying the run's facts (:func:`run_info`) to the book's report."""
        self.claims.run_info = run_info(self.elapsed())
        self.claims.report()

    def footer(self) -> None:
        """The page's last line: how long it ran, on what, from which commit (see :func:`describe_run`)."""
        from IPython.display import Markdown, display

        info = self.claims.run_info or run_info(self.elapsed())
        self.glue("runtime", info.get("seconds", self.elapsed()))
        display(Markdown(f"<p class='run-footer'>{html.escape(describe_run(info))}</p>"))


def start_page(name: str, seed: int, *, threads: int | None = None) -> Page:
    """Set up a chapter: seed everything, set the CPU threads and the figure theme, open the claim log and start
    the clock. ``threads``: torch CPU threads (default: all cores, at most 8)."""
    import pandas as pd

    rng = seed_everything(seed)
    TIMINGS.clear()
    n_threads = set_cpu_threads(threads)
    set_theme()
    pd.set_option("display.float_format", "{:.4g}".format)
    return Page(name, seed, rng, Claims(name), n_threads)
