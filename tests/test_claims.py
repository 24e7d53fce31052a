"""The claims API: verdicts, the stop on failure, scale notes, smoke runs, the machine-readable payload."""

import pytest

from analysis_lib.claims import FAIL, INCONCLUSIVE, PASS, SCALE, SMOKE, ClaimCheckFailed, Claims


@pytest.fixture(autouse=True)
def no_smoke(monkeypatch):
    monkeypatch.delenv("ANALYSIS_LIB_SMOKE", raising=False)


def test_check_close_uses_relative_and_absolute_tolerance():
    c = Claims("ch")
    assert c.check_close("a", "x", 1.05, 1.0, rtol=0.1)
    assert not c.check_close("b", "x", 1.2, 1.0, rtol=0.1)
    assert c.check_close("c", "x", 1e-9, 0.0, atol=1e-8)
    assert not c.check_close("d", "x", float("nan"), 0.0, atol=1.0)
    assert [x.verdict for x in c.claims] == [PASS, FAIL, PASS, FAIL]


def test_thresholds_and_fractions():
    c = Claims("ch")
    assert c.check_at_least("a", "x", 0.7, 0.7)
    assert not c.check_at_least("b", "x", 0.69, 0.7)
    assert c.check_at_most("c", "x", 0.0, 0.0)
    assert c.check_fraction("d", "x", 95, 100, 0.95)
    assert not c.check_fraction("e", "x", 94, 100, 0.95)
    assert not c.check_fraction("f", "x", 0, 0, 0.5)  # no cases is never a pass


def test_report_raises_on_expected_failure_and_names_it():
    c = Claims("ch")
    c.check_at_least("ok", "fine", 1, 0)
    c.check_at_least("bad", "broken", 0, 1)
    with pytest.raises(ClaimCheckFailed, match="bad"):
        c.report()


def test_scale_note_reports_without_stopping():
    c = Claims("ch")
    c.check_at_least("s", "needs 7B", 0.1, 0.7, scale_note="135M model")
    assert c.claims[0].verdict == SCALE
    c.report()  # does not raise


def test_too_few_cases_is_inconclusive_not_a_pass_and_does_not_stop():
    c = Claims("ch")
    assert not c.check_fraction("few", "first to 90%", 2, 2, 0.8, min_cases=5, few_cases_note="small model")
    assert not c.check_fraction("none", "no min_cases: no case fails", 0, 0, 0.8)
    assert c.check_fraction("enough", "x", 4, 5, 0.8, min_cases=5)
    assert not c.check_fraction("wrong", "x", 3, 5, 0.8, min_cases=5, few_cases_note="only explains few cases")
    assert [x.verdict for x in c.claims] == [INCONCLUSIVE, FAIL, PASS, FAIL]
    assert c.claims[0].measured == "2/2: too few cases" and "at least 5" in c.claims[0].scale_note
    assert "small model" in c.claims[0].scale_note
    with pytest.raises(ClaimCheckFailed) as err:
        c.report()
    assert "none" in str(err.value) and "wrong" in str(err.value) and "few" not in str(err.value)
    with pytest.raises(ValueError, match="inconclusive, scale_note"):
        c.check("both", "x", 1, 1, False, "c", scale_note="a", inconclusive="b")
    with pytest.raises(ValueError, match="min_cases"):
        c.check_fraction("bad", "x", 1, 1, 0.5, min_cases=0)


def test_smoke_runs_do_not_stop(monkeypatch):
    monkeypatch.setenv("ANALYSIS_LIB_SMOKE", "1")
    c = Claims("ch")
    c.check_at_least("x", "tiny run", 0, 1)
    assert c.claims[0].verdict == SMOKE
    c.report()


def test_empty_log_and_duplicate_ids_are_errors():
    with pytest.raises(ClaimCheckFailed, match="no claim checks"):
        Claims("ch").report()
    c = Claims("ch")
    c.check_at_least("x", "s", 1, 0)
    with pytest.raises(ValueError, match="id"):
        c.check_at_least("x", "s", 1, 0)
    with pytest.raises(ValueError, match="rtol"):
        c.check_close("y", "s", 1, 1)


def test_payload_is_plain_data():
    c = Claims("ch")
    c.check_close("a", "s", 0.5, 0.5, rtol=1e-3)
    p = c.payload()
    assert p["chapter"] == "ch" and p["claims"][0]["id"] == "a" and p["claims"][0]["passed"] is True
    assert list(c.table().columns) == ["id", "statement", "measured", "predicted", "criterion", "verdict"]
