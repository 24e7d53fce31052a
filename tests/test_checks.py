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


# -- arrays, distributions, generators, batch shapes, flags and axes ------------------------------------------


def test_real_array_checks_numbers_with_the_scalar_check_and_arrays_by_their_type():
    assert C.real_array("beta", 2).shape == () and C.real_array("beta", [1, 2]).dtype == np.float64
    np.testing.assert_array_equal(C.real_array("beta", np.arange(3), C.non_negative), [0.0, 1.0, 2.0])
    for bad in ("2", None, True, 1j, float("nan"), 0):
        with pytest.raises(ValueError, match=r"^beta: must be a finite number > 0, got "):
            C.real_array("beta", bad, C.positive)
    with pytest.raises(ValueError, match=r"^beta: must be a finite number > 0, got -1.0$"):
        C.real_array("beta", [2.0, -1.0], C.positive)
    with pytest.raises(ValueError, match=r"^beta: must be a finite number > 0, got nan$"):
        C.real_array("beta", [2.0, np.nan], C.positive)
    for bad, shown in ((np.ones(2) + 1j, "an array of complex128 with shape \\(2,\\)"),
                       ([True, False], "an array of bool with shape \\(2,\\)"), ([[1, 2], [3]], "a ragged sequence"),
                       ("abc", "'abc'"), (None, "None")):
        with pytest.raises(ValueError, match=rf"^P: must be an array of real numbers, got {shown}$"):
            C.real_array("P", bad)


def test_finite_array_and_distributions():
    with pytest.raises(ValueError, match=r"^z: must have finite entries, got .* with 1 nan or inf$"):
        C.finite_array("z", [0.0, np.inf])
    np.testing.assert_array_equal(C.distribution("mu", [0.5, 0.5 + 1e-12], K=2), [0.5, 0.5 + 1e-12])
    for bad, message in (([0.5, 0.6], "summing to 1"), ([1.5, -0.5], "non-negative"), ([1.0], "K = 2"),
                         ([True, False], "array of real numbers"), (0.5, "shape \\(\\.\\.\\., K\\)")):
        with pytest.raises(ValueError, match=rf"^mu: .*{message}"):
            C.distribution("mu", bad, K=None if message != "K = 2" else 2)
    np.testing.assert_allclose(C.positive_log("pi", [0.25, 0.75]), np.log([0.25, 0.75]))
    with pytest.raises(ValueError, match=r"^pi: must put positive mass on every response"):
        C.positive_log("pi", [0.0, 1.0])


def test_generator_batch_shape_flag_and_axis():
    rng = np.random.default_rng(0)
    assert C.generator("rng", rng) is rng
    with pytest.raises(ValueError, match=r"^rng: must be a numpy Generator .*got int$"):
        C.generator("rng", 0)
    assert C.batch_shape(P=(4, 1), beta=(3,)) == (4, 3)
    with pytest.raises(ValueError, match=r"^P, beta: leading \(batch\) shapes must broadcast, got P \(4,\), "
                                         r"beta \(3,\)$"):
        C.batch_shape(P=(4,), beta=(3,))
    assert C.flag("log", np.True_) is True
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match=r"^log: must be True or False, got "):
            C.flag("log", bad)
    assert C.array_axis("axis", -1, 2) == -1
    for bad in (2, -3, 1.0, True, None):
        with pytest.raises(ValueError, match=r"^axis: must be an integer in \[-2, 2\)"):
            C.array_axis("axis", bad, 2)


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
