"""The reconstructed training-accuracy guarantee and the subexponential constant (analysis_lib.guarantees)."""

import math

import numpy as np
import pytest
import torch

from analysis_lib.guarantees import (
    accuracy_bound_along_path,
    accuracy_bound_for_head,
    accuracy_bound_over_steps,
    angle_to,
    boundary_path,
    centred_projections,
    class_error_bound,
    estimate_alpha,
    psi1_norm,
    tail_alpha,
)
from analysis_lib.lastlayer import make_behaviour, signed_mean, train_last_layer_dpo

# psi_1 norm of a standard normal: the root K of exp(1/(2K^2)) Phi(1/K) = 1 (E exp(|Z|/K) = 2), solved with brentq.
PSI1_STANDARD_NORMAL = 1.3724949919106393


# --- the subexponential constant -------------------------------------------------------------------------------

def test_psi1_norm_of_laplace_is_twice_its_scale():
    # E exp(|X|/K) = 1 / (1 - b/K) for Laplace(b), = 2 at K = 2b
    x = np.random.default_rng(0).laplace(scale=1.5, size=200_000)
    assert psi1_norm(x) == pytest.approx(3.0, rel=0.02)


def test_psi1_norm_of_a_normal_sample_matches_the_closed_form():
    z = np.random.default_rng(1).standard_normal(200_000)
    assert psi1_norm(z) == pytest.approx(PSI1_STANDARD_NORMAL, rel=0.01)


def test_psi1_norm_solves_its_definition_and_scales():
    x = np.random.default_rng(2).standard_t(df=5, size=300)
    k = psi1_norm(x)
    assert np.mean(np.exp(np.abs(x) / k)) == pytest.approx(2.0, rel=1e-8)
    assert psi1_norm(-3.0 * x) == pytest.approx(3.0 * k, rel=1e-8)
    assert psi1_norm(np.zeros(4)) == 0.0
    assert psi1_norm([1e4, -2e4]) > 0  # no overflow at large |x| / K


def test_tail_alpha_hand_examples():
    assert tail_alpha([3.0]) == pytest.approx(3 / math.log(2))
    # |x| = 2: P(|X| >= 2) = 1/2 -> 2/log 4; |x| = 1: P = 1 -> 1/log 2; both equal 1/log 2
    assert tail_alpha([1.0, -2.0]) == pytest.approx(1 / math.log(2))


def test_tail_alpha_is_the_tightest_constant_for_the_empirical_tail():
    x = np.random.default_rng(3).laplace(size=500)
    a = tail_alpha(x)
    t = np.abs(x)
    tail = (t[None, :] >= t[:, None]).mean(axis=1)  # empirical P(|X| >= |x_i|)
    assert (tail <= 2 * np.exp(-t / a) * (1 + 1e-12)).all()
    assert (tail > 2 * np.exp(-t / (0.99 * a))).any()


def test_tail_alpha_never_exceeds_psi1_and_tends_to_the_laplace_scale():
    rng = np.random.default_rng(4)
    for _ in range(20):
        x = rng.standard_normal(rng.integers(2, 200)) * rng.uniform(0.1, 10)
        assert tail_alpha(x) <= psi1_norm(x) * (1 + 1e-9)
    assert tail_alpha(rng.laplace(scale=2.0, size=100_000)) == pytest.approx(2.0, rel=0.1)


def test_estimate_alpha_takes_the_worst_class_and_direction():
    rng = np.random.default_rng(5)
    beh = make_behaviour(400, 6, 3.0, rng=rng, center=5.0)
    g, m = beh.features.copy(), beh.yes_mask
    g[m, 0] *= 4.0  # the Yes class is wider along e_0
    dirs = np.eye(6)[:2] * 7.0  # scaling a direction does not matter
    proj = centred_projections(g, m, dirs)
    expected = max(psi1_norm(proj[mask, k]) for k in range(2) for mask in (m, ~m))
    assert estimate_alpha(g, m, dirs) == pytest.approx(expected)
    assert estimate_alpha(g, m, dirs) == pytest.approx(psi1_norm(proj[m, 0]))
    shifted = g + np.where(m[:, None], 10.0, -3.0)  # class means do not enter the centred projections
    assert estimate_alpha(shifted, m, dirs, method="tail") == pytest.approx(estimate_alpha(g, m, dirs, method="tail"))


# --- the bound ---------------------------------------------------------------------------------------------------

def test_class_error_bound_values():
    assert class_error_bound(-1.0, 2.0, 1.0) == 1.0
    assert class_error_bound(0.0, 2.0, 1.0) == 1.0
    assert class_error_bound(0.1, 1.0, 1.0) == 1.0  # 2 exp(-0.1) > 1 is capped
    assert class_error_bound(6.0, 2.0, 0.5) == pytest.approx(2 * math.exp(-6.0))
    np.testing.assert_allclose(class_error_bound(np.array([1.0, 4.0]), np.array([1.0, 1.0]), 1.0),
                               [min(1, 2 * math.exp(-1)), 2 * math.exp(-4)])


def test_bound_holds_for_the_empirical_accuracy_when_alpha_is_fitted_along_v():
    # With the tail-fit alpha along u = v/||v|| the inequality is exact for the empirical law: a true property check.
    rng = np.random.default_rng(6)
    for trial in range(30):
        beh = make_behaviour(300, 8, rng.uniform(0, 6), rng=rng, center=rng.uniform(0, 4),
                             noise="laplace" if trial % 2 else "gaussian", yes_fraction=rng.uniform(0.3, 0.7))
        g, s, m = beh.features, beh.signs, beh.yes_mask
        v = rng.standard_normal(8) + rng.uniform(0, 3) * beh.direction
        alpha = estimate_alpha(g, m, v, method="tail")
        acc = float(np.mean(s * (g @ v) > 0))
        bound = accuracy_bound_for_head(v, g[m].mean(0), g[~m].mean(0), alpha, yes_fraction=float(m.mean()))
        assert acc >= bound - 1e-12


def test_bound_over_steps_equals_the_head_bound_when_v0_is_along_the_drift():
    rng = np.random.default_rng(7)
    d = 5
    mu_pos, mu_neg, m = rng.standard_normal(d), rng.standard_normal(d), rng.standard_normal(d)
    steps = np.arange(0, 50, 7)
    for v0, parallel in ((0.3 * m, True), (rng.standard_normal(d), False)):
        over = accuracy_bound_over_steps(steps, v0=v0, drift=m, mu_pos=mu_pos, mu_neg=mu_neg, alpha=0.7, lr=2.0,
                                         beta=0.5, yes_fraction=0.4)
        at_head = np.array([accuracy_bound_for_head(v, mu_pos, mu_neg, 0.7, 0.4)
                            for v in boundary_path(v0, m, steps, 2.0, 0.5)])
        if parallel:  # ||v0|| + c||m|| = ||v(t)||
            np.testing.assert_allclose(over, at_head, atol=1e-12)
        assert (over <= at_head + 1e-12).all()  # never tighter than the bound at the head itself


def test_bound_along_path_is_the_head_bound_at_every_row():
    rng = np.random.default_rng(11)
    beh = make_behaviour(200, 6, 3.0, rng=rng, center=2.0, yes_fraction=0.45)
    g, m = beh.features, beh.yes_mask
    W0 = rng.standard_normal((4, 6)) * 0.1
    run = train_last_layer_dpo(W0, g, beh.signs, yes_id=0, no_id=2, beta=0.1, lr=2.0, steps=12, batch_size=64,
                               device="cpu", record_v=True)
    mu_pos, mu_neg = g[m].mean(0), g[~m].mean(0)
    along = accuracy_bound_along_path(run.v_path, mu_pos, mu_neg, 0.8, yes_fraction=float(m.mean()))
    assert along.shape == (13,)
    for v, b in zip(run.v_path, along, strict=True):
        assert b == pytest.approx(accuracy_bound_for_head(v, mu_pos, mu_neg, 0.8, float(m.mean())), abs=1e-15)
    # fitted on these items along these directions, the bound holds for their empirical accuracy (Markov)
    alpha = estimate_alpha(g, m, run.v_path, method="psi1")
    acc = np.array([np.mean(beh.signs * (g @ v) > 0) for v in run.v_path])
    assert (acc >= accuracy_bound_along_path(run.v_path, mu_pos, mu_neg, alpha, float(m.mean())) - 1e-12).all()


def test_bound_rises_towards_its_limit_along_the_mean_direction():
    mu_pos, mu_neg = np.array([3.0, 1.0]), np.array([-3.0, 1.0])
    m = (mu_pos - mu_neg) / 2
    steps = np.array([0, 10, 100, 1000, 10**6])
    b = accuracy_bound_over_steps(steps, v0=np.array([0.0, -1.0]), drift=m, mu_pos=mu_pos, mu_neg=mu_neg, alpha=0.5,
                                  lr=0.1, beta=0.1)
    assert (np.diff(b) >= 0).all()
    # v0 = -e_1: positives get the trivial bound 1, negatives 2 exp(-1 / 0.5)
    assert b[0] == pytest.approx(1 - 0.5 - 0.5 * 2 * math.exp(-2.0))
    assert b[-1] == pytest.approx(accuracy_bound_for_head(m, mu_pos, mu_neg, 0.5), abs=1e-4)


def test_boundary_path_matches_one_full_batch_training_step():
    # v(1) - v(0) = eta beta m exactly for the first full-batch gradient step (sigmoid(0) = 1/2)
    rng = np.random.default_rng(8)
    beh = make_behaviour(120, 6, 2.0, rng=rng, center=3.0, yes_fraction=0.6)
    W0 = rng.standard_normal((5, 6)) * 0.1
    run = train_last_layer_dpo(W0, beh.features, beh.signs, yes_id=1, no_id=3, beta=0.05, lr=0.3, steps=1,
                               batch_size=None, device="cpu")
    v1 = (run.W[1] - run.W[3]).numpy()
    expected = boundary_path(W0[1] - W0[3], signed_mean(beh.features, beh.signs), [1], 0.3, 0.05)[0]
    np.testing.assert_allclose(v1, expected, atol=1e-12)
    assert isinstance(run.W, torch.Tensor)


def test_angle_to():
    assert angle_to([1.0, 0.0], [0.0, 2.0]) == pytest.approx(90.0)
    np.testing.assert_allclose(angle_to(np.array([[1.0, 1.0], [-3.0, 0.0]]), [1.0, 0.0]), [45.0, 180.0])


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: psi1_norm([]), "x"),
    (lambda: tail_alpha([1.0, np.nan]), "x"),
    (lambda: estimate_alpha(np.ones((4, 2)), np.array([True, True, False, False]), [1.0, 0.0], method="max"),
     "method"),
    (lambda: estimate_alpha(np.ones((4, 2)), np.array([True] * 4), [1.0, 0.0]), "yes_mask"),
    (lambda: estimate_alpha(np.ones((4, 2)), np.array([True, True, False, False]), [0.0, 0.0]), "directions"),
    (lambda: class_error_bound(1.0, 1.0, 0.0), "alpha"),
    (lambda: accuracy_bound_for_head([1.0, 0.0], [1.0], [0.0, 1.0], 1.0), "mu_pos"),
    (lambda: accuracy_bound_for_head([1.0, 0.0], [1.0, 0], [0.0, 1.0], 1.0, yes_fraction=2), "yes_fraction"),
    (lambda: boundary_path([1.0], [1.0], [-1], 0.1, 0.1), "steps"),
    (lambda: boundary_path([1.0], [1.0], [1], 0.1, 0.0), "beta"),
    (lambda: accuracy_bound_along_path(np.zeros((0, 2)), [1.0, 0.0], [0.0, 1.0], 1.0), "v_path"),
    (lambda: accuracy_bound_along_path([[np.nan, 1.0]], [1.0, 0.0], [0.0, 1.0], 1.0), "v_path"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
