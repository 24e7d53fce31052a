"""The claims API: kinds, verdicts, declared differences, findings, the stop on failure, smoke runs, the payload."""

import pytest

from analysis_lib.claims import (
    DECLARED,
    FAILED,
    FINDING,
    INCONCLUSIVE,
    MATCHES,
    REPRODUCED,
    SMOKE,
    VERIFIED,
    ClaimCheckFailed,
    Claims,
    bootstrap_interval,
    summary_sentence,
    verdict_counts,
)


@pytest.fixture(autouse=True)
def no_smoke(monkeypatch):
    monkeypatch.delenv("ANALYSIS_LIB_SMOKE", raising=False)


def test_check_close_uses_relative_and_absolute_tolerance():
    c = Claims("ch")
    assert c.check_close("a", "x", 1.05, 1.0, rtol=0.1, kind="claim")
    assert not c.check_close("b", "x", 1.2, 1.0, rtol=0.1, kind="claim")
    assert c.check_close("c", "x", 1e-9, 0.0, atol=1e-8, kind="identity")
    assert not c.check_close("d", "x", float("nan"), 0.0, atol=1.0, kind="claim")
    assert [x.verdict for x in c.claims] == [REPRODUCED, FINDING, VERIFIED, FINDING]


def test_thresholds_and_fractions():
    c = Claims("ch")
    assert c.check_at_least("a", "x", 0.7, 0.7, kind="claim")
    assert not c.check_at_least("b", "x", 0.69, 0.7, kind="claim")
    assert c.check_at_most("c", "x", 0.0, 0.0, kind="regression")
    assert c.check_fraction("d", "x", 95, 100, 0.95, kind="claim")
    assert not c.check_fraction("e", "x", 94, 100, 0.95, kind="claim")
    assert not c.check_fraction("f", "x", 0, 0, 0.5, kind="claim")  # no cases is never a pass
    assert [x.verdict for x in c.claims] == [REPRODUCED, FINDING, MATCHES, REPRODUCED, FINDING, FINDING]


def test_every_check_needs_a_kind():
    c = Claims("ch")
    with pytest.raises(TypeError):
        c.check_at_least("a", "x", 1, 0)
    with pytest.raises(ValueError, match=r"^kind: must be one of claim, identity, regression, got 'fact'$"):
        c.check_at_least("a", "x", 1, 0, kind="fact")


def test_a_claim_that_does_not_hold_is_a_finding_and_does_not_stop():
    c = Claims("ch")
    c.check_at_least("F", "paper says >= 0.8", 0.5, 0.8, kind="claim")
    assert c.claims[0].verdict == FINDING and not c.claims[0].passed
    c.report()  # does not raise


def test_identity_and_regression_failures_stop_the_chapter_and_name_the_check():
    for kind in ("identity", "regression"):
        c = Claims("ch")
        c.check_at_least("ok", "fine", 1, 0, kind="claim")
        c.check_at_least("bad", "broken", 0, 1, kind=kind)
        assert c.claims[1].verdict == FAILED
        with pytest.raises(ClaimCheckFailed, match=rf"bad \({kind}: measured 0"):
            c.report()


def test_declared_difference_is_attached_before_measuring_and_names_its_category():
    c = Claims("ch")
    c.declare(["S1", "S2"], "scale", "135M model instead of 7B")
    c.declare("S2", "data", "substitute data")
    assert not c.check_at_least("S1", "needs 7B", 0.1, 0.7, kind="claim")
    assert c.check_at_least("S2", "holds anyway", 0.9, 0.7, kind="claim")
    assert c.claims[0].verdict == DECLARED and c.claims[0].categories == ["scale"]
    assert c.claims[1].verdict == REPRODUCED and c.claims[1].categories == ["scale", "data"]
    table = c.differences()
    assert list(table.columns) == ["category", "checks", "reason"]
    assert table.to_dict("records")[0] == {"category": "scale", "checks": "S1, S2",
                                           "reason": "135M model instead of 7B"}
    c.report()


def test_a_difference_cannot_be_declared_after_the_check_is_recorded():
    c = Claims("ch")
    c.check_at_least("X", "measured first", 0, 1, kind="claim")
    with pytest.raises(ValueError, match=r"^ids: check\(s\) X already recorded: a difference is declared before"):
        c.declare("X", "scale", "too late")
    assert c.claims[0].verdict == FINDING


def test_declarations_are_checked():
    c = Claims("ch")
    with pytest.raises(ValueError, match=r"^category: must be one of scale, data, setting, adaptation, got 'cpu'$"):
        c.declare("A", "cpu", "r")
    with pytest.raises(ValueError, match=r"^reason: "):
        c.declare("A", "scale", " ")
    with pytest.raises(ValueError, match=r"^ids: "):
        c.declare([], "scale", "r")
    c.declare("I", "scale", "r")
    with pytest.raises(ValueError, match=r"^kind: differences can be declared only for claims"):
        c.check_at_least("I", "an identity", 1, 0, kind="identity")
    c.declare("never", "scale", "typo'd id")
    c.check_at_least("Y", "x", 1, 0, kind="claim")
    with pytest.raises(ValueError, match=r"never recorded: I, never"):
        c.report()


def test_too_few_cases_is_inconclusive_not_a_pass_and_does_not_stop():
    c = Claims("ch")
    assert not c.check_fraction("few", "first to 90%", 2, 2, 0.8, min_cases=5, few_cases_note="small model",
                                kind="claim")
    assert not c.check_fraction("none", "no min_cases: no case is a finding", 0, 0, 0.8, kind="claim")
    assert c.check_fraction("enough", "x", 4, 5, 0.8, min_cases=5, kind="claim")
    assert not c.check_fraction("wrong", "x", 3, 5, 0.8, min_cases=5, few_cases_note="explains few cases only",
                                kind="claim")
    assert [x.verdict for x in c.claims] == [INCONCLUSIVE, FINDING, REPRODUCED, FINDING]
    assert c.claims[0].measured == "2/2: too few cases" and "at least 5" in c.claims[0].note
    assert "small model" in c.claims[0].note
    c.report()
    with pytest.raises(ValueError, match="min_cases"):
        c.check_fraction("bad", "x", 1, 1, 0.5, min_cases=0, kind="claim")
    with pytest.raises(ValueError, match=r"^inconclusive: only a claim can be inconclusive"):
        c.check("idn", "x", 1, 1, True, "c", kind="identity", inconclusive="why")


def test_a_claim_decided_on_an_interval_is_inconclusive_when_the_interval_contains_the_limit():
    c = Claims("ch")
    assert c.check_at_most("in", "inside", 0.15, 0.2, interval=(0.1, 0.19), kind="claim")
    assert not c.check_at_most("out", "beyond", 0.3, 0.2, interval=(0.21, 0.4), kind="claim")
    assert not c.check_at_most("mid_low", "straddles", 0.18, 0.2, interval=(0.14, 0.23), kind="claim")
    assert not c.check_at_most("mid_high", "straddles", 0.21, 0.2, interval=(0.14, 0.23), kind="claim")
    assert c.check_at_least("al", "above", 0.05, 0.0, interval=(0.01, 0.09), kind="claim")
    assert not c.check_at_least("ab", "below", -0.05, 0.0, interval=(-0.09, -0.01), kind="claim")
    assert not c.check_at_least("am", "straddles", 0.01, 0.0, interval=(-0.02, 0.03), kind="claim")
    assert [x.verdict for x in c.claims] == [REPRODUCED, FINDING, INCONCLUSIVE, INCONCLUSIVE, REPRODUCED, FINDING,
                                             INCONCLUSIVE]
    assert c.claims[2].measured == "0.18 [0.14, 0.23]" and "contains the limit 0.2" in c.claims[2].note
    # the verdict is the same for any measured value inside the interval: only the interval decides
    assert c.claims[2].verdict == c.claims[3].verdict
    c.report()
    with pytest.raises(ValueError, match=r"^interval: must contain the measured value"):
        c.check_at_most("x1", "x", 0.5, 0.2, interval=(0.1, 0.3), kind="claim")
    with pytest.raises(ValueError, match=r"^interval: must be finite with low <= high"):
        c.check_at_most("x2", "x", 0.2, 0.2, interval=(0.3, 0.1), kind="claim")
    with pytest.raises(ValueError, match=r"^interval: must be a pair"):
        c.check_at_most("x3", "x", 0.2, 0.2, interval=0.1, kind="claim")
    with pytest.raises(ValueError, match=r"^interval: only a claim"):
        c.check_at_most("x4", "x", 0.2, 0.3, interval=(0.1, 0.25), kind="identity")


def test_undecided_cases_decide_a_fraction_only_when_they_cannot_change_it():
    c = Claims("ch")
    assert c.check_fraction("all", "5 of 5 needed", 5, 5, 1.0, kind="claim", undecided=0)
    assert not c.check_fraction("one", "4 hold, 1 undecided", 4, 5, 1.0, kind="claim", undecided=1)
    assert not c.check_fraction("miss", "3 hold, 1 undecided, 1 fails", 3, 5, 1.0, kind="claim", undecided=1)
    assert c.check_fraction("enough", "9 of 10 hold, the undecided one cannot matter", 9, 10, 0.9, kind="claim",
                            undecided=1)
    assert [x.verdict for x in c.claims] == [REPRODUCED, INCONCLUSIVE, FINDING, REPRODUCED]
    assert c.claims[1].measured == "4/5 = 80.0% (1 undecided)" and "80% if none holds, 100% if all do" in \
        c.claims[1].note
    for bad in (-1, 2, 1.0, True):
        with pytest.raises(ValueError, match=r"^undecided: must be an integer from 0 to total - hits = 1"):
            c.check_fraction(f"bad{bad}", "x", 4, 5, 1.0, kind="claim", undecided=bad)
    with pytest.raises(ValueError, match=r"^undecided: only a claim"):
        c.check_fraction("idn", "x", 4, 5, 1.0, kind="identity", undecided=1)


def test_bootstrap_interval_is_a_deterministic_percentile_interval_that_keeps_pairs_and_strata():
    import numpy as np

    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 1.0, 400)
    low, high = bootstrap_interval(x, np.mean, level=0.9, resamples=2000, seed=1)
    se = x.std(ddof=1) / np.sqrt(len(x))  # the normal approximation of the same interval
    assert low < x.mean() < high
    assert abs((high - low) - 2 * 1.6449 * se) < 0.15 * (2 * 1.6449 * se)
    assert bootstrap_interval(x, np.mean, seed=1) == (low, high)  # deterministic
    # paired rows: a constant difference between the columns has a zero-width interval
    pairs = np.stack([x, x + 0.5], axis=1)
    lo_d, hi_d = bootstrap_interval(pairs, lambda r: float(np.mean(r[:, 1] - r[:, 0])))
    assert abs(lo_d - 0.5) < 1e-12 and abs(hi_d - 0.5) < 1e-12
    # strata keep each label's count: the share of label 1 never changes
    labels = np.array([0] * 30 + [1] * 10)
    share = bootstrap_interval(labels, lambda r: float(np.mean(r == 1)), strata=labels)
    assert share == (0.25, 0.25)
    with pytest.raises(ValueError, match=r"^rows: need at least 2 rows"):
        bootstrap_interval([1.0], np.mean)
    with pytest.raises(ValueError, match=r"^level: "):
        bootstrap_interval(x, np.mean, level=1.0)
    with pytest.raises(ValueError, match=r"^strata: must give one label per row"):
        bootstrap_interval(x, np.mean, strata=[0, 1])
    with pytest.raises(ValueError, match=r"^statistic: gave a non-finite value"):
        bootstrap_interval(x, lambda r: float("nan"))


def test_smoke_runs_do_not_stop(monkeypatch):
    monkeypatch.setenv("ANALYSIS_LIB_SMOKE", "1")
    c = Claims("ch")
    c.check_at_least("x", "tiny run", 0, 1, kind="identity")
    assert c.claims[0].verdict == SMOKE
    c.report()


def test_empty_log_and_duplicate_ids_are_errors():
    with pytest.raises(ClaimCheckFailed, match="no claim checks"):
        Claims("ch").report()
    c = Claims("ch")
    c.check_at_least("x", "s", 1, 0, kind="claim")
    with pytest.raises(ValueError, match="id"):
        c.check_at_least("x", "s", 1, 0, kind="claim")
    with pytest.raises(ValueError, match="rtol"):
        c.check_close("y", "s", 1, 1, kind="claim")


def test_counts_separate_the_kinds_and_the_sentence_follows_them():
    c = Claims("ch")
    c.declare("d", "data", "substitute")
    c.check_at_least("r", "s", 1, 0, kind="claim")
    c.check_at_least("f", "s", 0, 1, kind="claim")
    c.check_at_least("d", "s", 0, 1, kind="claim")
    c.check_fraction("i", "s", 0, 0, 0.5, min_cases=2, kind="claim")
    c.check_at_least("id", "s", 1, 0, kind="identity")
    c.check_at_least("re", "s", 1, 0, kind="regression")
    counts = c.counts()
    assert counts == {"reproduced": 1, "finding": 1, "declared scale": 0, "declared data": 1, "declared setting": 0,
                      "declared adaptation": 0, "inconclusive": 1, "identities": 1, "regressions": 1, "failed": 0,
                      "smoke": 0}
    assert counts == verdict_counts(c.payload()["claims"])
    assert summary_sentence(counts) == ("4 claims: 1 reproduced; 1 finding; not reproduced with a declared difference: "
                                        "1 data; 1 inconclusive. 1 identity verified, 1 regression matched.")


def test_payload_is_plain_data():
    c = Claims("ch")
    c.declare("a", "setting", "SGD instead of Adam")
    c.check_close("a", "s", 0.5, 0.5, rtol=1e-3, kind="claim")
    c.run_info = {"feature dtype": "float32"}
    p = c.payload()
    assert p["chapter"] == "ch" and p["claims"][0]["id"] == "a" and p["claims"][0]["passed"] is True
    assert p["claims"][0]["kind"] == "claim"
    assert p["claims"][0]["differences"] == [{"category": "setting", "reason": "SGD instead of Adam"}]
    assert p["run"] == {"feature dtype": "float32"}
    assert list(c.table().columns) == ["id", "kind", "statement", "measured", "predicted", "criterion", "verdict"]
