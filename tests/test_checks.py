"""The shared argument checks: accepted values are converted, everything else is a one-line error naming the
argument."""

import numpy as np
import pytest

from analysis_lib import checks as C


@pytest.mark.parametrize("value", [True, "2", None, 1j, float("nan"), float("inf"), 0, -1.0])
def test_positive_refuses_non_numbers_and_non_positive(value):
    with pytest.raises(ValueError, match=r"^beta: must be a finite number > 0, got "):
        C.positive("beta", value)


def test_positive_accepts_numpy_scalars_and_converts():
    assert C.positive("beta", np.float32(0.5)) == 0.5 and isinstance(C.positive("beta", 2), float)


def test_non_negative_and_real_number():
    assert C.non_negative("lam", 0) == 0.0
    with pytest.raises(ValueError, match=r"^lam: must be a finite number >= 0, got -0.1$"):
        C.non_negative("lam", -0.1)
    assert C.real_number("x", -3) == -3.0 and C.real_number("x", float("inf"), finite=False) == float("inf")
    for bad in (True, "1", None, 2j, float("nan")):
        with pytest.raises(ValueError, match=r"^x: must be a finite real number"):
            C.real_number("x", bad)


def test_intervals_and_fractions():
    assert C.fraction("alpha", 1) == 1.0 and C.fraction("alpha", 0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"^alpha: must be a number in \(0, 1\], got 0$"):
        C.fraction("alpha", 0)
    with pytest.raises(ValueError, match=r"^alpha: must be a number in \[0, 1\], got True$"):
        C.fraction("alpha", True, allow_zero=True)
    with pytest.raises(ValueError, match=r"^lr: must be a number in \[0, 2\), got 2$"):
        C.in_interval("lr", 2, 0, 2, high_open=True)


def test_int_at_least_and_one_of():
    assert C.int_at_least("steps", np.int64(3), 1) == 3
    for bad in (0, 2.0, True, "3"):
        with pytest.raises(ValueError, match=r"^steps: must be an integer >= 1, got "):
            C.int_at_least("steps", bad, 1)
    assert C.one_of("loss", "ipo", ["dpo", "ipo"]) == "ipo"
    with pytest.raises(ValueError, match=r"^loss: must be one of dpo, ipo, got 'kto'$"):
        C.one_of("loss", "kto", ["dpo", "ipo"])


def test_index_below():
    assert C.index_below("yes_id", np.int64(3), 4) == 3
    for bad in (4, -1, 1.0, True, "0"):
        with pytest.raises(ValueError, match=r"^yes_id: must be a token id in \[0, 3\], got "):
            C.index_below("yes_id", bad, 4, "a token id")


def test_signs_are_plus_or_minus_one_of_the_right_length():
    import torch

    s = C.signs("signs", [1, -1, 1], 3, dtype=torch.float32)
    assert s.dtype == torch.float32 and s.tolist() == [1.0, -1.0, 1.0]
    assert C.signs("signs", np.array([1, -1]), 2).dtype == torch.int64
    with pytest.raises(ValueError, match=r"^signs: must have shape \(4,\), one sign per item, got \(3,\)$"):
        C.signs("signs", [1, -1, 1], 4)
    with pytest.raises(ValueError, match=r"^test_signs: every entry must be \+1 \(chosen = Yes\) or -1"):
        C.signs("test_signs", [1, 0], 2)
