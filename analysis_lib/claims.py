"""Claim checks: what a chapter measured against what theory (or an earlier run) predicts, with a verdict.

A chapter creates one :class:`Claims` log and records every check with an id, a **kind**, the statement, the
measured value, the prediction and the criterion, then ends with ``claims.report()``. The kind says what the
evidence is:

- ``claim``: evidence for a statement of a paper (or our reconstruction of it), or for a hypothesis of our own.
  It can fail, and a failure is a result, not a defect: the verdict is a **finding** (the statement does not hold
  in our setting), unless a difference from the paper was *declared* for this check beforehand, in which case the
  verdict names the declared difference. Neither stops the chapter.
- ``identity``: true by algebra or construction (a rank-one update, a count fixed by how a loop is built): it
  verifies the implementation. A failure is a bug and stops the chapter.
- ``regression``: compares with a number recorded earlier by this project. A failure stops the chapter.

**Declared differences.** ``claims.declare(ids, category, reason)`` states, before the check is recorded, how our
set-up differs from the paper's for that check: ``scale`` (CPU-sized model and data), ``data`` (a substitute data
set), ``setting`` (our training set-up: optimizer, trained parameters, ...) or ``adaptation`` (a criterion of
ours, e.g. a threshold chosen by us; the paper's criterion is checked next to it). A declaration is refused once
its check is recorded, so it cannot be chosen from the outcome; the book's tests also verify that every
``declare`` call in a chapter is built from literals and parameters only.

A check that cannot be decided (too few cases, e.g. no pair reached the accuracy threshold whose order it tests)
is *inconclusive*: never counted as reproduced, and it does not stop the chapter. So is a claim whose measured value
comes with an uncertainty interval (``interval=``, e.g. from :func:`bootstrap_interval`) that contains its limit:
the claim holds when the whole interval is on the predicted side, does not hold when the whole interval is on the
other side, and is undecided otherwise; a fraction over cases can likewise count some cases as ``undecided``.

The table is also emitted under the mime type :data:`MIME_TYPE`, so the book's build collects every chapter's
checks from its executed notebook into the reproducibility report. With ``ANALYSIS_LIB_SMOKE=1`` (the smoke
tests, which run chapters with tiny parameters to test the mechanics only) no failure stops the chapter.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import asdict, dataclass, field
from numbers import Number

MIME_TYPE = "application/vnd.analysis-lib.claims+json"

#: What a check is evidence of (see the module docstring).
KINDS = ("claim", "identity", "regression")
#: How our set-up may differ from the paper's, declared before the check is measured.
CATEGORIES = {
    "scale": "CPU scale: a smaller model or less data than the paper",
    "data": "a substitute data set",
    "setting": "our training set-up differs from the paper's (optimizer, trained parameters, ...)",
    "adaptation": "a criterion of ours (e.g. a threshold chosen by us); the paper's is checked next to it",
}

REPRODUCED = "reproduced"
FINDING = "finding: does not hold here"
DECLARED = "not reproduced: declared difference"
INCONCLUSIVE = "inconclusive"
VERIFIED = "verified"
MATCHES = "matches record"
FAILED = "FAILED"
SMOKE = "not enforced (smoke run)"
#: The verdict of a check that held, by kind.
HELD = {"claim": REPRODUCED, "identity": VERIFIED, "regression": MATCHES}


class ClaimCheckFailed(AssertionError):
    """An identity or a regression did not hold: the implementation (or its recorded number) is wrong."""


@dataclass(frozen=True)
class Difference:
    category: str
    reason: str


@dataclass(frozen=True)
class Claim:
    id: str
    kind: str
    statement: str
    measured: str
    predicted: str
    criterion: str
    passed: bool
    verdict: str
    note: str | None = None  # why a check is inconclusive
    differences: tuple[Difference, ...] = field(default_factory=tuple)

    @property
    def categories(self) -> list[str]:
        return [d.category for d in self.differences]


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


def _interval(interval) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval: must be a pair (low, high) of numbers, got {interval!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"interval: must be finite with low <= high, got ({low!r}, {high!r})")
    return low, high


def bootstrap_interval(rows, statistic, *, level: float = 0.9, resamples: int = 2000, seed: int = 0,
                       strata=None) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over the rows of ``rows`` (resampled with replacement;
    a row's columns move together, so paired measurements stay paired), at ``level`` (two-sided).

    ``strata`` (one label per row) resamples within each label separately, keeping each label's count (e.g. the
    two answer classes of a distinguishability). Deterministic for a given ``seed``."""
    import numpy as np

    from .checks import in_interval, int_at_least

    data = np.asarray(rows)
    if data.ndim < 1 or len(data) < 2:
        raise ValueError(f"rows: need at least 2 rows to resample, got {len(data) if data.ndim else 0}")
    in_interval("level", level, 0.0, 1.0, low_open=True, high_open=True)
    int_at_least("resamples", resamples, 1)
    labels = np.zeros(len(data), dtype=int) if strata is None else np.asarray(strata)
    if labels.shape != (len(data),):
        raise ValueError(f"strata: must give one label per row ({len(data)}), got shape {labels.shape}")
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        index = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        values[i] = statistic(data[index])
    if not np.all(np.isfinite(values)):
        raise ValueError("statistic: gave a non-finite value on a resample")
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _smoke() -> bool:
    return os.environ.get("ANALYSIS_LIB_SMOKE", "") not in {"", "0"}


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def verdict_counts(claims: list[dict]) -> dict[str, int]:
    """Counts of one chapter's (or a book's) checks as the report shows them: claims reproduced, findings,
    declared differences per category (the first declared category of a check not reproduced), inconclusive,
    identities and regressions (held / failed), smoke-run checks."""
    counts = {"reproduced": 0, "finding": 0, **{f"declared {c}": 0 for c in CATEGORIES}, "inconclusive": 0,
              "identities": 0, "regressions": 0, "failed": 0, "smoke": 0}
    for c in claims:
        verdict = c["verdict"]
        if verdict == FAILED:
            counts["failed"] += 1
        elif verdict == SMOKE:
            counts["smoke"] += 1
        elif c["kind"] == "identity":
            counts["identities"] += 1
        elif c["kind"] == "regression":
            counts["regressions"] += 1
        elif verdict == REPRODUCED:
            counts["reproduced"] += 1
        elif verdict == FINDING:
            counts["finding"] += 1
        elif verdict == INCONCLUSIVE:
            counts["inconclusive"] += 1
        elif verdict == DECLARED:
            counts[f"declared {c['differences'][0]['category']}"] += 1
    return counts


def summary_sentence(counts: dict[str, int]) -> str:
    """One sentence from :func:`verdict_counts`, e.g. '12 claims: 10 reproduced, 1 finding, ...'."""
    declared = [(c, counts[f"declared {c}"]) for c in CATEGORIES if counts[f"declared {c}"]]
    n_claims = counts["reproduced"] + counts["finding"] + counts["inconclusive"] + sum(n for _, n in declared)
    parts = [f"{counts['reproduced']} reproduced", f"{counts['finding']} finding{'s' * (counts['finding'] != 1)}"]
    if declared:
        parts.append("not reproduced with a declared difference: "
                     + ", ".join(f"{n} {c}" for c, n in declared))
    if counts["inconclusive"]:
        parts.append(f"{counts['inconclusive']} inconclusive")
    text = f"{n_claims} claim{'s' * (n_claims != 1)}: " + "; ".join(parts)
    text += (f". {counts['identities']} identit{'ies' if counts['identities'] != 1 else 'y'} verified, "
             f"{counts['regressions']} regression{'s' * (counts['regressions'] != 1)} matched")
    if counts["failed"]:
        text += f"; {counts['failed']} FAILED"
    if counts["smoke"]:
        text += f"; {counts['smoke']} not enforced (smoke run)"
    return text + "."


class Claims:
    """The claim log of one chapter."""

    def __init__(self, chapter: str):
        if not chapter or not isinstance(chapter, str):
            raise ValueError("chapter: give the chapter's name (a non-empty string)")
        self.chapter = chapter
        self.claims: list[Claim] = []
        self.declared: dict[str, list[Difference]] = {}
        self.run_info: dict = {}

    # -- declaring differences -------------------------------------------------------------------------------
    def declare(self, ids, category: str, reason: str) -> None:
        """Declare, before measuring, that our set-up differs from the paper's for the claim check(s) ``ids``."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise ValueError(f"ids: give one or more check ids (strings), got {ids!r}")
        if category not in CATEGORIES:
            raise ValueError(f"category: must be one of {', '.join(CATEGORIES)}, got {category!r}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason: say how the set-up differs (a non-empty string)")
        recorded = [i for i in ids if any(c.id == i for c in self.claims)]
        if recorded:
            raise ValueError(f"ids: check(s) {', '.join(recorded)} already recorded: a difference is declared "
                             "before the check is measured")
        for i in ids:
            self.declared.setdefault(i, []).append(Difference(category, reason.strip()))

    def differences(self):
        """The declared differences as a table: category, checks, reason (for 'What differs from the paper')."""
        import pandas as pd

        rows: dict[tuple[str, str], list[str]] = {}
        for check_id, diffs in self.declared.items():
            for d in diffs:
                rows.setdefault((d.category, d.reason), []).append(check_id)
        return pd.DataFrame([{"category": cat, "checks": ", ".join(ids), "reason": reason}
                             for (cat, reason), ids in rows.items()], columns=["category", "checks", "reason"])

    # -- recording -------------------------------------------------------------------------------------------
    def check(self, id: str, statement: str, measured, predicted, passed: bool, criterion: str, *, kind: str,
              inconclusive: str | None = None) -> bool:
        """Record a check with an explicit outcome ``passed``; the other check_* methods build on this.

        ``inconclusive`` (a reason) records a check that could not be decided: ``passed`` is then ignored."""
        kind = _check_kind(kind)
        if not isinstance(id, str) or not id:
            raise ValueError(f"id: must be a non-empty string, got {id!r}")
        if any(c.id == id for c in self.claims):
            raise ValueError(f"id: check {id!r} is already recorded in chapter {self.chapter!r}")
        differences = tuple(self.declared.get(id, ()))
        if differences and kind != "claim":
            raise ValueError(f"kind: differences can be declared only for claims; {id!r} is a {kind}")
        if inconclusive is not None and kind != "claim":
            raise ValueError(f"inconclusive: only a claim can be inconclusive; {id!r} is a {kind}")
        passed = bool(passed) and inconclusive is None
        if inconclusive is not None:
            verdict = INCONCLUSIVE
        elif passed:
            verdict = HELD[kind]
        elif kind == "claim":
            verdict = DECLARED if differences else FINDING
        else:
            verdict = SMOKE if _smoke() else FAILED
        self.claims.append(Claim(id, kind, statement, _fmt(measured), _fmt(predicted), criterion, passed, verdict,
                                 inconclusive, differences))
        return passed

    def check_close(self, id: str, statement: str, measured: float, predicted: float, *, kind: str,
                    rtol: float = 0.0, atol: float = 0.0) -> bool:
        """|measured - predicted| <= atol + rtol * |predicted|."""
        if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
            raise ValueError("rtol, atol: give at least one positive tolerance (both must be >= 0)")
        m, p = float(measured), float(predicted)
        ok = math.isfinite(m) and abs(m - p) <= atol + rtol * abs(p)
        parts = ([f"rel. error <= {rtol:g}"] if rtol else []) + ([f"abs. error <= {atol:g}"] if atol else [])
        err = abs(m - p) / abs(p) if p != 0 else float("inf")
        crit = " + ".join(parts) + (f" (rel. error {err:.2g})" if math.isfinite(err) else "")
        return self.check(id, statement, m, p, ok, crit, kind=kind)

    def check_at_least(self, id: str, statement: str, measured: float, threshold: float, *, kind: str,
                       predicted: str | None = None, interval: tuple[float, float] | None = None) -> bool:
        """measured >= threshold; with ``interval`` (low, high) around the measured value, a claim holds only
        when low >= threshold, fails when high < threshold and is inconclusive otherwise."""
        return self._check_bound(id, statement, measured, threshold, ">=", kind=kind, predicted=predicted,
                                 interval=interval)

    def check_at_most(self, id: str, statement: str, measured: float, threshold: float, *, kind: str,
                      predicted: str | None = None, interval: tuple[float, float] | None = None) -> bool:
        """measured <= threshold; with ``interval`` (low, high), a claim holds only when high <= threshold, fails
        when low > threshold and is inconclusive otherwise."""
        return self._check_bound(id, statement, measured, threshold, "<=", kind=kind, predicted=predicted,
                                 interval=interval)

    def _check_bound(self, id, statement, measured, threshold, op, *, kind, predicted, interval) -> bool:
        m, t = float(measured), float(threshold)
        holds = (lambda x: x >= t) if op == ">=" else (lambda x: x <= t)
        predicted = predicted or f"{op} {_fmt(threshold)}"
        if interval is None:
            return self.check(id, statement, m, predicted, math.isfinite(m) and holds(m), f"{op} {_fmt(threshold)}",
                              kind=kind)
        if kind != "claim":
            raise ValueError(f"interval: only a claim is decided on an interval; {id!r} is a {kind}")
        low, high = _interval(interval)
        if not low <= m <= high:
            raise ValueError(f"interval: must contain the measured value {m:.4g}, got [{low:.4g}, {high:.4g}]")
        shown = f"{_fmt(m)} [{_fmt(low)}, {_fmt(high)}]"
        criterion = f"{op} {_fmt(threshold)} over the whole interval"
        inside, outside = (low, high) if op == ">=" else (high, low)  # the end that must hold / the end that fails
        if holds(inside) or not holds(outside):
            return self.check(id, statement, shown, predicted, holds(inside), criterion, kind=kind)
        return self.check(id, statement, shown, predicted, False, criterion, kind=kind,
                          inconclusive=f"the interval [{_fmt(low)}, {_fmt(high)}] contains the limit "
                                       f"{_fmt(threshold)}")

    def check_fraction(self, id: str, statement: str, hits: int, total: int, min_fraction: float, *, kind: str,
                       min_cases: int | None = None, few_cases_note: str | None = None, undecided: int = 0) -> bool:
        """hits/total >= min_fraction (e.g. 'the sign predicts the winner in at least 95% of pairs').

        No case at all fails the check. With ``min_cases`` (a rule fixed before the run), fewer cases than that
        make a claim *inconclusive* (it cannot be decided) instead, with ``few_cases_note`` saying why cases are
        few: for checks whose cases are the runs that reached some event. ``undecided`` cases (of the ``total``,
        not among the ``hits``) are those whose own outcome is within its uncertainty: a claim then holds only
        if it holds with all of them as misses, fails if it fails with all of them as hits, and is inconclusive
        otherwise."""
        if isinstance(undecided, bool) or not isinstance(undecided, int) or not 0 <= undecided <= total - hits:
            raise ValueError(f"undecided: must be an integer from 0 to total - hits = {total - hits}, "
                             f"got {undecided!r}")
        if undecided and kind != "claim":
            raise ValueError(f"undecided: only a claim can have undecided cases; {id!r} is a {kind}")
        if min_cases is not None and (isinstance(min_cases, bool) or not isinstance(min_cases, int)
                                      or min_cases < 1):
            raise ValueError(f"min_cases: must be an integer >= 1 or None, got {min_cases!r}")
        criterion = f"fraction >= {min_fraction:g}" + (f" of at least {min_cases} cases" if min_cases else "")
        if min_cases is not None and total < min_cases:
            return self.check(id, statement, f"{hits}/{total}: too few cases", f">= {min_fraction:.0%}", False,
                              criterion, kind=kind,
                              inconclusive=f"only {total} case(s); at least {min_cases} are needed to "
                                           "decide" + (f": {few_cases_note}" if few_cases_note else ""))
        if total <= 0:
            return self.check(id, statement, "no cases", f">= {min_fraction:.0%}", False, "needs at least one case",
                              kind=kind)
        frac = hits / total
        if not undecided:
            return self.check(id, statement, f"{hits}/{total} = {frac:.1%}", f">= {min_fraction:.0%}",
                              frac >= min_fraction, criterion, kind=kind)
        shown = f"{hits}/{total} = {frac:.1%} ({undecided} undecided)"
        best = (hits + undecided) / total
        if frac >= min_fraction or best < min_fraction:
            return self.check(id, statement, shown, f">= {min_fraction:.0%}", frac >= min_fraction,
                              criterion + ", undecided cases counted as misses", kind=kind)
        return self.check(id, statement, shown, f">= {min_fraction:.0%}", False,
                          criterion + ", undecided cases counted as misses", kind=kind,
                          inconclusive=f"{undecided} undecided case(s) decide it: {frac:.0%} if none holds, "
                                       f"{best:.0%} if all do")

    # -- reporting -------------------------------------------------------------------------------------------
    @property
    def failures(self) -> list[Claim]:
        return [c for c in self.claims if c.verdict == FAILED]

    def counts(self) -> dict[str, int]:
        return verdict_counts(self.payload()["claims"])

    def table(self):
        import pandas as pd

        cols = ["id", "kind", "statement", "measured", "predicted", "criterion", "verdict"]
        return pd.DataFrame([{k: getattr(c, k) for k in cols} for c in self.claims], columns=cols)

    def _html(self) -> str:
        rows = []
        for c in self.claims:
            verdict = c.verdict + (f" ({', '.join(c.categories)})" if c.verdict == DECLARED else "")
            declared = (f"<br><small>declared: {html.escape(', '.join(c.categories))}</small>"
                        if c.differences and c.verdict != DECLARED else "")
            note = f"<br><small>{html.escape(c.note)}</small>" if c.note else ""
            implied = c.criterion in c.predicted or (c.criterion.startswith("fraction >=")
                                                     and "cases" not in c.criterion)
            predicted = c.predicted if implied else f"{c.predicted} ({c.criterion})"
            cells = [c.id, c.kind, c.statement, c.measured, predicted]
            rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells)
                        + f'<td class="verdict {verdict_class(c.verdict)}"><b>{html.escape(verdict)}</b>'
                          f'{declared}{note}</td></tr>')
        head = "".join(f"<th>{h}</th>" for h in ["id", "kind", "check", "measured", "predicted (criterion)",
                                                  "verdict"])
        summary = html.escape(summary_sentence(self.counts()))
        reasons = ("<p><small>The reasons for the declared differences are in the table under "
                   "<em>What differs from the paper</em>.</small></p>" if self.declared else "")
        return (f'<p class="claims-summary">{summary}</p><div class="table-wrapper"><table class="claims-table">'
                f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{reasons}')

    def payload(self) -> dict:
        claims = []
        for c in self.claims:
            d = asdict(c)
            d["differences"] = [asdict(x) for x in c.differences]
            claims.append(d)
        return {"chapter": self.chapter, "claims": claims, "run": self.run_info}

    def report(self) -> None:
        """Display the table (also as machine-readable JSON) and stop if an identity or a regression failed."""
        if not self.claims:
            raise ClaimCheckFailed(f"chapter {self.chapter!r} recorded no claim checks")
        unknown = sorted(set(self.declared) - {c.id for c in self.claims})
        if unknown:
            raise ValueError(f"ids: differences declared for check(s) never recorded: {', '.join(unknown)}")
        try:
            from IPython.display import display

            display({MIME_TYPE: self.payload(), "text/html": self._html(),
                     "text/plain": self.table().to_string(index=False)}, raw=True)
        except ImportError:  # outside IPython: plain text
            print(self.table().to_string(index=False))
        failed = self.failures
        if failed:
            ids = ", ".join(f"{c.id} ({c.kind}: measured {c.measured}, predicted {c.predicted})" for c in failed)
            raise ClaimCheckFailed(f"{len(failed)} check(s) failed in {self.chapter}: {ids}")


def verdict_class(verdict: str) -> str:
    """A CSS class for a verdict (the book's stylesheet colours them)."""
    return {REPRODUCED: "v-reproduced", VERIFIED: "v-held", MATCHES: "v-held", FINDING: "v-finding",
            DECLARED: "v-declared", INCONCLUSIVE: "v-inconclusive", FAILED: "v-failed"}.get(verdict, "v-smoke")
