"""Claim checks: what a chapter measured against what the theory predicts, with a verdict.

A chapter creates one :class:`Claims` log, records every check with an id, the statement, the measured
value, the prediction and the criterion, and ends with ``claims.report()``, which shows the table and stops
the chapter (raises :class:`ClaimCheckFailed`) if a check that is expected to hold failed. A check can be
declared *not expected to reproduce at this scale* by giving ``scale_note`` (the reason): its failure is then
reported as such and does not stop the chapter. A check that cannot be decided (too few cases: e.g. no pair
reached the accuracy threshold whose order it tests) is recorded with ``inconclusive`` (the reason): verdict
*inconclusive*, never counted as reproduced, and it does not stop the chapter either.

The table is also emitted under the mime type :data:`MIME_TYPE`, so the book's build collects every
chapter's claims from its executed notebook into the reproducibility report.

With the environment variable ``ANALYSIS_LIB_SMOKE=1`` (set by the smoke tests, which run chapters with tiny
parameters to test the mechanics only) failures are reported but never stop the chapter.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import asdict, dataclass
from numbers import Number

MIME_TYPE = "application/vnd.analysis-lib.claims+json"

PASS = "reproduced"
FAIL = "NOT reproduced"
SCALE = "not reproduced (expected: see note)"
SMOKE = "not enforced (smoke run)"
INCONCLUSIVE = "inconclusive (too few cases: see note)"


class ClaimCheckFailed(AssertionError):
    """A claim that the chapter expects to hold at its scale did not."""


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    measured: str
    predicted: str
    criterion: str
    passed: bool
    verdict: str
    scale_note: str | None = None


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Number):
        v = float(value)
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _smoke() -> bool:
    return os.environ.get("ANALYSIS_LIB_SMOKE", "") not in {"", "0"}


class Claims:
    """The claim log of one chapter."""

    def __init__(self, chapter: str):
        if not chapter:
            raise ValueError("chapter: give the chapter's name (a non-empty string)")
        self.chapter = chapter
        self.claims: list[Claim] = []

    # -- recording ------------------------------------------------------------------------------------------
    def check(self, id: str, statement: str, measured, predicted, passed: bool, criterion: str,
              scale_note: str | None = None, inconclusive: str | None = None) -> bool:
        """Record a check with an explicit verdict ``passed``; the other check_* methods build on this.

        ``inconclusive`` (a reason) records a check that could not be decided: ``passed`` is then ignored."""
        if any(c.id == id for c in self.claims):
            raise ValueError(f"id: claim {id!r} is already recorded in chapter {self.chapter!r}")
        if inconclusive is not None and scale_note is not None:
            raise ValueError("inconclusive, scale_note: give one reason, not both")
        passed = bool(passed) and inconclusive is None
        if inconclusive:
            verdict, scale_note = INCONCLUSIVE, inconclusive
        elif passed:
            verdict = PASS
        elif scale_note:
            verdict = SCALE
        elif _smoke():
            verdict = SMOKE
        else:
            verdict = FAIL
        self.claims.append(Claim(id, statement, _fmt(measured), _fmt(predicted), criterion, passed, verdict,
                                 scale_note))
        return passed

    def check_close(self, id: str, statement: str, measured: float, predicted: float, *, rtol: float = 0.0,
                    atol: float = 0.0, scale_note: str | None = None) -> bool:
        """|measured - predicted| <= atol + rtol * |predicted|."""
        if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
            raise ValueError("rtol, atol: give at least one positive tolerance (both must be >= 0)")
        m, p = float(measured), float(predicted)
        ok = math.isfinite(m) and abs(m - p) <= atol + rtol * abs(p)
        parts = ([f"rel. error <= {rtol:g}"] if rtol else []) + ([f"abs. error <= {atol:g}"] if atol else [])
        err = abs(m - p) / abs(p) if p != 0 else float("inf")
        crit = " + ".join(parts) + (f" (rel. error {err:.2g})" if math.isfinite(err) else "")
        return self.check(id, statement, m, p, ok, crit, scale_note)

    def check_at_least(self, id: str, statement: str, measured: float, threshold: float, *,
                       predicted: str | None = None, scale_note: str | None = None) -> bool:
        m = float(measured)
        return self.check(id, statement, m, predicted or f">= {_fmt(threshold)}", math.isfinite(m) and m >= threshold,
                          f">= {_fmt(threshold)}", scale_note)

    def check_at_most(self, id: str, statement: str, measured: float, threshold: float, *,
                      predicted: str | None = None, scale_note: str | None = None) -> bool:
        m = float(measured)
        return self.check(id, statement, m, predicted or f"<= {_fmt(threshold)}", math.isfinite(m) and m <= threshold,
                          f"<= {_fmt(threshold)}", scale_note)

    def check_fraction(self, id: str, statement: str, hits: int, total: int, min_fraction: float, *,
                       min_cases: int | None = None, few_cases_note: str | None = None,
                       scale_note: str | None = None) -> bool:
        """hits/total >= min_fraction (e.g. 'the sign predicts the winner in at least 95% of pairs').

        No case at all fails the check. With ``min_cases``, fewer cases than that make it *inconclusive*
        (it cannot be decided) instead, with ``few_cases_note`` saying why cases are few: for checks whose cases
        are the runs that reached some event. ``scale_note`` applies only to a decided check."""
        if min_cases is not None and (isinstance(min_cases, bool) or not isinstance(min_cases, int)
                                      or min_cases < 1):
            raise ValueError(f"min_cases: must be an integer >= 1 or None, got {min_cases!r}")
        criterion = f"fraction >= {min_fraction:g}" + (f" of at least {min_cases} cases" if min_cases else "")
        if min_cases is not None and total < min_cases:
            return self.check(id, statement, f"{hits}/{total}: too few cases", f">= {min_fraction:.0%}", False,
                              criterion, inconclusive=f"only {total} case(s); at least {min_cases} are needed to "
                                                      "decide" + (f": {few_cases_note}" if few_cases_note else ""))
        if total <= 0:
            return self.check(id, statement, "no cases", f">= {min_fraction:.0%}", False,
                              "needs at least one case", scale_note)
        frac = hits / total
        return self.check(id, statement, f"{hits}/{total} = {frac:.1%}", f">= {min_fraction:.0%}",
                          frac >= min_fraction, criterion, scale_note)

    # -- reporting ------------------------------------------------------------------------------------------
    @property
    def failures(self) -> list[Claim]:
        return [c for c in self.claims if c.verdict == FAIL]

    def table(self):
        import pandas as pd

        cols = ["id", "statement", "measured", "predicted", "criterion", "verdict"]
        return pd.DataFrame([asdict(c) for c in self.claims], columns=cols + ["scale_note"])[cols]

    def _html(self) -> str:
        rows = []
        for c in self.claims:
            colour = {PASS: "#1a7f37", FAIL: "#cf222e", INCONCLUSIVE: "#57606a"}.get(c.verdict, "#9a6700")
            note = f"<br><small>{html.escape(c.scale_note)}</small>" if c.scale_note else ""
            cells = [c.id, c.statement, c.measured, c.predicted, c.criterion]
            rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells)
                        + f'<td style="color:{colour}"><b>{html.escape(c.verdict)}</b>{note}</td></tr>')
        head = "".join(f"<th>{h}</th>" for h in ["id", "claim", "measured", "predicted", "criterion", "verdict"])
        return f'<table class="claims-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'

    def payload(self) -> dict:
        return {"chapter": self.chapter, "claims": [asdict(c) for c in self.claims]}

    def report(self) -> None:
        """Display the claim table (also as machine-readable JSON) and stop if an expected claim failed."""
        if not self.claims:
            raise ClaimCheckFailed(f"chapter {self.chapter!r} recorded no claim checks")
        try:
            from IPython.display import display

            display({MIME_TYPE: self.payload(), "text/html": self._html(),
                     "text/plain": self.table().to_string(index=False)}, raw=True)
        except ImportError:  # outside IPython: plain text
            print(self.table().to_string(index=False))
        failed = self.failures
        if failed:
            ids = ", ".join(f"{c.id} (measured {c.measured}, predicted {c.predicted})" for c in failed)
            raise ClaimCheckFailed(f"{len(failed)} claim check(s) failed in {self.chapter}: {ids}")
