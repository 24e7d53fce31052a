"""The page helpers: figure geometry, the book's tables, the run facts and the chapter set-up."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from analysis_lib import plotting
from analysis_lib.page import describe_run, run_info, start_page, table_html


def test_figures_are_page_wide_with_at_most_three_panels_per_row():
    fig, axes = plotting.panel_grid(5, ncols=3)
    assert len(axes) == 5 and sum(ax.get_visible() for ax in fig.axes) == 5
    assert fig.get_size_inches()[0] == pytest.approx(plotting.PAGE_WIDTH)
    with pytest.raises(ValueError, match=r"^ncols: must be 1..3"):
        plotting.panel_grid(5, ncols=5)
    assert plotting.figure_size(0.5, aspect=1.0) == pytest.approx((plotting.PAGE_WIDTH / 2, plotting.PAGE_WIDTH / 2))
    with pytest.raises(ValueError, match=r"^width: "):
        plotting.figure_size(1.5)


def test_theme_fonts_are_at_least_ten_points():
    plotting.set_theme()
    for key in ("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize", "legend.fontsize"):
        assert matplotlib.rcParams[key] >= plotting.MIN_FONT


def test_tables_have_human_columns_formatted_numbers_and_dashes_for_missing():
    df = pd.DataFrame({"pd_before": [1.23456, np.nan], "n": [1200, 3], "ok": [True, False], "tiny": [2e-16, 0.5]})
    out = table_html(df, columns={"pd_before": "PD before", "n": "items", "ok": "holds", "tiny": "error"},
                     formats={"pd_before": ".2f"})
    assert "<th>PD before</th><th>items</th><th>holds</th><th>error</th>" in out
    assert ">1.23<" in out and ">—<" in out and ">1,200<" in out and ">yes<" in out
    assert "2.00×10<sup>-16</sup>" in out and ">0.5<" in out
    assert "pd_before" not in out and out.startswith('<div class="table-wrapper">')
    assert '<tbody><tr><td colspan="4">—</td></tr></tbody>' in table_html(df.iloc[:0])
    with pytest.raises(ValueError, match=r"^columns: not in the table: nope$"):
        table_html(df, columns={"nope": "x"})


def test_run_info_names_what_makes_builds_comparable(monkeypatch):
    monkeypatch.setenv("ANALYSIS_LIB_FEATURE_DTYPE", "float32")
    info = run_info(12.34)
    assert info["feature dtype"] == "float32" and info["seconds"] == 12.3
    assert {"date", "commit", "machine", "cpu capability", "native bf16", "device"} <= set(info)
    text = describe_run(info)
    assert text.startswith("Executed in 12 s on ") and "features in float32" in text and info["commit"] in text


def test_start_page_seeds_and_opens_the_claim_log():
    a, b = start_page("ch", 3), start_page("ch", 3)
    assert a.claims.chapter == "ch" and a.rng.integers(1000) == b.rng.integers(1000)
    with pytest.raises(ValueError, match="seed"):
        start_page("ch", -1)


def test_time_by_part_is_accumulated_and_reported():
    import time

    from analysis_lib.runtime import TIMINGS, timed

    page = start_page("ch", 0)  # a new page starts counting afresh
    assert TIMINGS == {}
    with timed("training"):
        time.sleep(0.02)
    with timed("training"):
        time.sleep(0.02)
    assert TIMINGS["training"] >= 0.04
    page.claims.check_at_least("A", "s", 1, 0, kind="identity")
    info = run_info(1.0)
    assert info["time by part"]["training"] == round(TIMINGS["training"], 1)


def test_training_time_is_counted_as_training():
    import torch

    from analysis_lib.runtime import TIMINGS
    from analysis_lib.training import train

    class Tiny:  # the smallest model the trainer takes: one logit per item
        def __init__(self):
            self.w = torch.zeros(4, requires_grad=True)

        def trainable_parameters(self):
            return [self.w]

        def logps(self, data, idx):
            w = self.w if idx is None else self.w[idx]
            return w, -w

    start_page("ch", 0)
    train(Tiny(), list(range(4)), beta=0.1, lr=0.1, steps=2, batch_size=2)
    assert TIMINGS.get("training", 0.0) > 0.0
