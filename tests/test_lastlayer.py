"""Tests of analysis_lib.lastlayer: Im & Li's last-layer DPO model (paper notes sections 4.0-4.3, check d3)."""

import math

import numpy as np
import pytest
import torch

from analysis_lib import lastlayer as ll

BETA, LR = 0.01, 0.1


def setting(seed=0, n=200, d=16, V=9, pd_=3.0, center=5.0, noise="gaussian", yes_fraction=0.5):
    rng = np.random.default_rng(seed)
    b = ll.make_behaviour(n, d, pd_, rng=rng, noise=noise, center=center, yes_fraction=yes_fraction)
    W0 = 0.05 * rng.standard_normal((V, d))
    return b, W0, rng


def train(W0, b, **kw):
    args = dict(yes_id=0, no_id=1, beta=BETA, lr=LR, steps=20, batch_size=32, seed=0, device="cpu")
    args.update(kw)
    return ll.train_last_layer_dpo(W0, b.features, b.signs, **args)


# ---------------------------------------------------------------------------------------------------------------
# The reduction to logistic regression
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("yes_id, no_id, V", [(0, 1, 9), (7, 2, 9), (1, 0, 2)])
@pytest.mark.parametrize("beta", [0.01, 1.0])
def test_gradient_closed_form_matches_autograd(yes_id, no_id, V, beta):
    b, W0, rng = setting(V=V)
    W = torch.tensor(W0 + 0.3 * rng.standard_normal(W0.shape), requires_grad=True)
    ll.last_layer_dpo_loss(W, W0, b.features, b.signs, yes_id, no_id, beta).backward()
    closed = ll.dpo_gradient_closed_form(W, W0, b.features, b.signs, yes_id, no_id, beta)
    assert float((W.grad - closed).norm() / closed.norm()) < 1e-6
    others = [j for j in range(V) if j not in (yes_id, no_id)]
    if others:
        assert float(W.grad[others].abs().max()) < 1e-12
    assert float((W.grad[yes_id] + W.grad[no_id]).norm()) < 1e-12
    assert float(W.grad[yes_id].norm()) > 1e-6  # the test is not vacuous


def test_gradient_against_finite_differences():
    b, W0, rng = setting(n=40, d=5, V=4)
    W = W0 + 0.5 * rng.standard_normal(W0.shape)
    closed = ll.dpo_gradient_closed_form(W, W0, b.features, b.signs, 0, 1, 1.0).numpy()
    eps = 1e-6
    for j, k in [(0, 0), (1, 3), (2, 4), (3, 1)]:
        E = np.zeros_like(W)
        E[j, k] = eps
        f = lambda M: float(ll.last_layer_dpo_loss(torch.tensor(M), W0, b.features, b.signs, 0, 1, 1.0))  # noqa: E731
        assert (f(W + E) - f(W - E)) / (2 * eps) == pytest.approx(closed[j, k], rel=1e-5, abs=1e-10)


def test_loss_depends_only_on_yes_minus_no_row():
    b, W0, rng = setting()
    W = W0 + 0.3 * rng.standard_normal(W0.shape)
    base = float(ll.last_layer_dpo_loss(W, W0, b.features, b.signs, 0, 1, 1.0))
    shifted = W.copy()
    shifted[2:] += 3.0 * rng.standard_normal(shifted[2:].shape)  # move every other row
    common = W.copy()
    common[[0, 1]] += 2.0 * rng.standard_normal(W.shape[1])  # same vector added to both answer rows
    for M in (shifted, common):
        assert abs(float(ll.last_layer_dpo_loss(M, W0, b.features, b.signs, 0, 1, 1.0)) - base) < 1e-12
    # the logistic-regression form gives the same number
    assert abs(float(ll.dpo_loss_logistic_form(W, W0, b.features, b.signs, 0, 1, 1.0)) - base) < 1e-12
    # and a change of v does change the loss
    changed = W.copy()
    changed[0] += 0.5
    assert abs(float(ll.last_layer_dpo_loss(changed, W0, b.features, b.signs, 0, 1, 1.0)) - base) > 1e-3


def test_answer_logps_is_the_full_vocabulary_log_softmax():
    b, W0, _ = setting()
    lp_yes, lp_no = ll.answer_logps(W0, b.features, 3, 5)
    full = torch.log_softmax(torch.tensor(b.features) @ torch.tensor(W0).T, dim=-1)
    torch.testing.assert_close(lp_yes, full[:, 3], rtol=0, atol=0)
    torch.testing.assert_close(lp_no, full[:, 5], rtol=0, atol=0)
    # low-precision inputs are computed in float32
    half = ll.answer_logps(torch.tensor(W0, dtype=torch.bfloat16), torch.tensor(b.features, dtype=torch.float16), 3, 5)
    assert half[0].dtype == torch.float32


def test_chosen_rejected():
    yes = torch.tensor([-1.0, -2.0, -3.0])
    no = torch.tensor([-4.0, -5.0, -6.0])
    c, r = ll.chosen_rejected(yes, no, np.array([1, -1, 1]))
    assert c.tolist() == [-1.0, -5.0, -3.0] and r.tolist() == [-4.0, -2.0, -6.0]


# ---------------------------------------------------------------------------------------------------------------
# Training dynamics
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_change_is_rank_one(optimizer):
    b, W0, _ = setting()
    run = train(W0, b, optimizer=optimizer, lr=LR if optimizer == "sgd" else 1e-2)
    sv = torch.linalg.svdvals(run.W - torch.tensor(W0))
    assert float(sv[0]) > 1e-4
    assert float(sv[1]) < 1e-10 * float(sv[0])
    rows, sv_changed = ll.weight_change_spectrum(run.W, W0)  # the cheap version: SVD of the changed rows
    assert rows == [0, 1]
    np.testing.assert_allclose(sv_changed[0], float(sv[0]), rtol=1e-12)
    assert sv_changed[1] < 1e-10 * sv_changed[0]
    # Frobenius = operator norm = sqrt(2) ||delta||, and the log's last weight change is that norm
    assert float(sv[0]) == pytest.approx(run.log["weight_change"].iloc[-1], rel=1e-12)


def test_weight_change_spectrum_of_a_hand_example():
    W0 = np.zeros((4, 3))
    W = W0.copy()
    W[1] = [1.0, 2.0, 2.0]
    W[3] = [0.0, 0.0, 1.0]
    rows, sv = ll.weight_change_spectrum(W, W0)
    assert rows == [1, 3]
    np.testing.assert_allclose(sv, np.linalg.svd(W, compute_uv=False)[:2], rtol=1e-12)
    assert sv[1] > 0.1  # not rank one
    assert ll.weight_change_spectrum(W0, W0)[0] == []


def test_fast_path_equals_full_softmax():
    b, W0, _ = setting(V=12)
    test = ll.make_behaviour(50, 16, 3.0, rng=np.random.default_rng(9), direction=b.direction, center=b.center)
    kw = dict(test_features=test.features, test_signs=test.signs)
    fast, full = train(W0, b, **kw), train(W0, b, full_softmax=True, **kw)
    assert list(fast.log.columns) == list(full.log.columns)
    np.testing.assert_allclose(fast.log.to_numpy(), full.log.to_numpy(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast.W, full.W, rtol=0, atol=1e-14)
    # the literal full-softmax run never moves the other rows
    assert torch.equal(full.W[2:], torch.tensor(W0)[2:])


def test_starts_at_log2_and_logs_before_and_after_the_update():
    b, W0, _ = setting()
    run = train(W0, b, steps=3, test_features=b.features[:20], test_signs=b.signs[:20])
    row0 = run.log.iloc[0]
    for col in ("loss", "full_train_loss", "eval_loss"):
        assert row0[col] == pytest.approx(math.log(2), abs=1e-15)
    assert row0["rewards/margins"] == 0.0
    # weight change is logged after the update: positive already at step 0
    assert row0["weight_change"] > 0
    # the next step's full-train loss is the loss at W(1), below log 2
    assert run.log["full_train_loss"].iloc[1] < math.log(2)
    assert run.final["full_train_loss"] < run.log["full_train_loss"].iloc[-1]
    # policy accuracy at W(0) is the ordering of the starting head, computed independently
    lp_y, lp_n = ll.answer_logps(W0, b.features, 0, 1)
    acc0 = float(((lp_y > lp_n) == torch.tensor(b.signs > 0)).double().mean())
    assert row0["full_train_outputs/accuracies"] == pytest.approx(acc0)


def test_full_batch_equals_batch_of_everything():
    b, W0, _ = setting(n=64)
    a = train(W0, b, batch_size=None, steps=5)
    c = train(W0, b, batch_size=64, steps=5)  # a random permutation of all items: same mean loss
    np.testing.assert_allclose(a.log["loss"], c.log["loss"], rtol=1e-13)
    np.testing.assert_allclose(a.log["loss"], a.log["full_train_loss"], rtol=1e-13)


@pytest.mark.parametrize("yes_fraction", [0.5, 0.3])
def test_first_step_drop_matches_closed_form(yes_fraction):
    b, W0, _ = setting(n=400, yes_fraction=yes_fraction, pd_=4.0)
    lr = 1e-3
    run = train(W0, b, batch_size=None, steps=1, lr=lr, beta=0.5)
    measured = run.log["full_train_loss"].iloc[0] - run.final["full_train_loss"]
    predicted = ll.first_step_loss_drop(b.features, b.signs, 0.5, lr)
    assert measured == pytest.approx(predicted, rel=1e-3)
    if yes_fraction == 0.5:  # exactly balanced: eta beta^2 ||Delta||^2 / 8 with the empirical Delta
        pd_hat = ll.behaviour_properties(b.features, b.yes_mask)["distinguishability"]
        assert ll.balanced_first_step_loss_drop(pd_hat, 0.5, lr) == pytest.approx(predicted, rel=1e-12)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_weight_change_bound_never_exceeded(noise):
    b, W0, _ = setting(noise=noise, pd_=8.0)
    run = train(W0, b, steps=40, beta=1.0, lr=0.5)
    t = run.log["step"].to_numpy() + 1  # updates done when weight_change is logged
    bound = ll.weight_change_bound(0.5, 1.0, t, run.max_feature_norm)
    assert np.all(run.log["weight_change"].to_numpy() <= bound)
    assert run.max_feature_norm == pytest.approx(np.linalg.norm(b.features, axis=1).max())
    assert ll.weight_change_bound(0.1, 0.01, 3, 2.0) == pytest.approx(math.sqrt(2) * 0.1 * 0.01 * 3 * 2.0)


def test_float32_with_half_features():
    b, W0, _ = setting()
    run = train(torch.tensor(W0, dtype=torch.float32), ll.Behaviour(b.features.astype(np.float16), b.signs,
                                                                     b.direction, b.center), dtype=torch.float32)
    ref = train(W0, b)
    assert run.W.dtype == torch.float32
    np.testing.assert_allclose(run.log["loss"], ref.log["loss"], rtol=1e-5)


def test_regression_snapshot():
    """A short fixed-seed run (values recorded from this implementation after the checks above passed)."""
    b, W0, _ = setting(seed=123, n=120, d=8, V=6, pd_=4.0, center=3.0)
    test = ll.make_behaviour(40, 8, 4.0, rng=np.random.default_rng(7), direction=b.direction, center=b.center)
    run = train(W0, b, steps=10, batch_size=16, seed=5, beta=0.5, lr=0.2,
                test_features=test.features, test_signs=test.signs)
    log = run.log
    got = {
        "loss[9]": log["loss"].iloc[9],
        "outputs/accuracies[9]": log["outputs/accuracies"].iloc[9],
        "full_train_loss[9]": log["full_train_loss"].iloc[9],
        "eval_outputs/accuracies[9]": log["eval_outputs/accuracies"].iloc[9],
        "weight_change[4]": log["weight_change"].iloc[4],
        "weight_change[9]": log["weight_change"].iloc[9],
        "final full_train_loss": run.final["full_train_loss"],
    }
    expected = {
        "loss[9]": 0.3313860442340648,
        "outputs/accuracies[9]": 0.875,
        "full_train_loss[9]": 0.29859195308822084,
        "eval_outputs/accuracies[9]": 1.0,
        "weight_change[4]": 0.579275551433235,
        "weight_change[9]": 0.9000536626452084,
        "final full_train_loss": 0.2863490073450029,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_non_finite_loss_raises_with_the_step():
    b, W0, _ = setting(n=40, d=4, V=5, center=3.0, pd_=2.0)
    with pytest.raises(ValueError, match=r"step [1-9]\d*: non-finite .*loss"):
        train(W0, b, beta=1.0, lr=1e307, steps=5, batch_size=8)


def test_divergent_learning_rate_raises_with_lr_step_and_values():
    # far above the stability limit 4 / (beta^2 lambda_max): the loss oscillates and grows without overflowing
    b, W0, _ = setting(n=100, d=4, V=5, center=3.0, pd_=2.0)
    g = b.features
    limit = 4 / (1.0 * float(np.linalg.eigvalsh(g.T @ g / len(g))[-1]))
    with pytest.raises(ValueError, match=r"step [1-9]\d*: training diverged with lr = .*rose from 0\.693147"):
        train(W0, b, beta=1.0, lr=3 * limit, steps=60, batch_size=None)
    # with the rule switched off the run goes on: the loss spikes above twice its start (here the logistic loss's
    # flattening curvature then lets it settle into an oscillation, which is why a rule on the loss is needed)
    run = train(W0, b, beta=1.0, lr=3 * limit, steps=60, batch_size=None, max_loss_ratio=None)
    assert run.log["full_train_loss"].max() > 2 * math.log(2)
    # below the limit the loss falls at every step: the rule never fires
    stable = train(W0, b, beta=1.0, lr=0.5 * limit, steps=60, batch_size=None)
    assert (np.diff(stable.log["full_train_loss"]) < 0).all()


@pytest.mark.parametrize("ratio", [1.0, 0.5, -2.0, float("inf")])
def test_max_loss_ratio_bad_input(ratio):
    b, W0, _ = setting()
    with pytest.raises(ValueError, match="max_loss_ratio"):
        train(W0, b, max_loss_ratio=ratio)


@pytest.mark.parametrize("full_softmax", [False, True])
def test_record_v_keeps_the_head_difference_at_every_step(full_softmax):
    b, W0, _ = setting(V=7)
    run = train(W0, b, steps=6, yes_id=3, no_id=5, record_v=True, full_softmax=full_softmax)
    assert run.v_path.shape == (7, 16)
    np.testing.assert_allclose(run.v_path[0], W0[3] - W0[5], rtol=0, atol=0)
    np.testing.assert_allclose(run.v_path[-1], (run.W[3] - run.W[5]).numpy(), rtol=0, atol=1e-15)
    short = train(W0, b, steps=2, yes_id=3, no_id=5)  # same seed: the same trajectory
    np.testing.assert_allclose(run.v_path[2], (short.W[3] - short.W[5]).numpy(), rtol=0, atol=1e-15)
    assert train(W0, b, steps=2).v_path is None


def test_reference_overflow_raises():
    b, W0, _ = setting(n=20, d=4, V=3)
    with pytest.raises(ValueError, match="W0"):
        train(np.full((3, 4), 1e200), ll.Behaviour(b.features * 1e200, b.signs, b.direction, b.center))


# ---------------------------------------------------------------------------------------------------------------
# Synthetic behaviours and geometry
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_make_behaviour(noise):
    rng = np.random.default_rng(1)
    b = ll.make_behaviour(20000, 6, 2.5, rng=rng, noise=noise, center=10.0)
    assert b.features.shape == (20000, 6) and (b.signs == 1).sum() == 10000 and (b.signs == -1).sum() == 10000
    assert np.linalg.norm(b.center) == pytest.approx(10.0) and np.linalg.norm(b.direction) == pytest.approx(1.0)
    means = ll.preference_direction(b.features, b.yes_mask)
    np.testing.assert_allclose(means, 2.5 * b.direction, atol=0.06)
    noise_part = b.features - b.center - b.signs[:, None] * 1.25 * b.direction
    np.testing.assert_allclose(noise_part.var(axis=0), 1.0, atol=0.06)
    kurt = (noise_part**4).mean(axis=0) / noise_part.var(axis=0) ** 2
    np.testing.assert_allclose(kurt, 3.0 if noise == "gaussian" else 6.0, rtol=0.2)  # Laplace: heavier tails
    # a test split from the same distribution, and other class balances
    t = ll.make_behaviour(10, 6, 2.5, rng=rng, direction=b.direction, center=b.center, yes_fraction=0.3)
    assert (t.signs == 1).sum() == 3
    np.testing.assert_array_equal(t.center, b.center)


def test_behaviour_properties_hand_example():
    g = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0],  # Yes: mean (2, 2)
                  [0.0, 0.0], [0.0, 2.0], [-3.0, 1.0]])  # No: mean (-1, 1)
    yes = np.array([True, True, True, False, False, False])
    props = ll.behaviour_properties(g, yes)
    assert props["distinguishability"] == pytest.approx(math.sqrt(10))
    cov_yes = np.array([[1.0, 1.0], [1.0, 4.0]])  # unbiased: sum of outer products / (n - 1)
    cov_no = np.array([[3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(np.cov(g[yes], rowvar=False), cov_yes)
    np.testing.assert_allclose(np.cov(g[~yes], rowvar=False), cov_no)
    lam_yes = (5 + math.sqrt(9 + 4)) / 2  # largest eigenvalue of [[1, 1], [1, 4]]
    lam_no = 3.0
    assert props["concentration"] == pytest.approx(max(lam_yes, lam_no))
    assert props["trace"] == pytest.approx(5.0)
    np.testing.assert_allclose(ll.preference_direction(g, yes), [3.0, 1.0])


@pytest.mark.parametrize("n,d", [(2, 5), (16, 576), (40, 7), (7, 7)])
def test_covariance_spectral_norm_equals_the_svd_norm(n, d):
    """The Gram-matrix route (n <= d) and the covariance route (n > d) against numpy's SVD 2-norm of np.cov."""
    x = np.random.default_rng(n * d).normal(size=(n, d)) * np.linspace(0.1, 3.0, d)
    expected = np.linalg.norm(np.atleast_2d(np.cov(x, rowvar=False)), 2)
    assert ll.covariance_spectral_norm(x) == pytest.approx(expected, rel=1e-12)


def random_delta_pairs(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    d = 7
    di = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1))
    dj = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1))
    third = n // 3  # nearly antiparallel pairs: the extreme gaps
    dj[:third] = -di[:third] * rng.uniform(0.5, 1.5, (third, 1)) + 1e-3 * rng.standard_normal((third, d))
    return di, dj


def test_priority_gap_code_formula_equals_closed_form():
    di, dj = random_delta_pairs()
    code, closed = ll.priority_gap(di, dj), ll.priority_gap_closed_form(di, dj)
    np.testing.assert_allclose(code, closed, rtol=1e-9, atol=1e-12)
    assert np.abs(code).max() < 2
    assert np.abs(code).max() > 1.5  # near-antiparallel pairs reach towards 2
    np.testing.assert_array_equal(np.sign(code), np.sign(np.linalg.norm(di, axis=1) - np.linalg.norm(dj, axis=1)))
    np.testing.assert_allclose(ll.priority_gap(dj, di), -code, rtol=1e-12, atol=1e-15)
    # orthogonal Deltas: (PD_i^2 - PD_j^2) / (sqrt(PD_i^2 + PD_j^2) max)
    assert ll.priority_gap([3.0, 0.0], [0.0, 9.0]) == pytest.approx((9 - 81) / (math.sqrt(90) * 9))
    assert isinstance(ll.priority_gap([1.0, 0.0], [0.0, 2.0]), float)


def test_priority_gap_matrix():
    rng = np.random.default_rng(3)
    D = rng.standard_normal((6, 5)) * rng.uniform(0.5, 4, (6, 1))
    M = ll.priority_gap_matrix(D)
    np.testing.assert_allclose(M, -M.T, atol=1e-15)
    np.testing.assert_array_equal(np.diag(M), 0.0)
    np.testing.assert_allclose(M, ll.priority_gap_matrix(D, closed_form=True), rtol=1e-10, atol=1e-14)
    assert M[2, 4] == pytest.approx(ll.priority_gap(D[2], D[4]))
    assert np.isnan(ll.priority_gap([1.0, 2.0], [-1.0, -2.0]))  # undefined when Delta_i + Delta_j = 0


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the parameter
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, param", [
    ({"beta": 0.0}, "beta"), ({"beta": float("nan")}, "beta"), ({"lr": -1.0}, "lr"), ({"lr": "0.1"}, "lr"),
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 10_000}, "batch_size"), ({"yes_id": 1}, "yes_id, no_id"), ({"yes_id": 9}, "yes_id"),
    ({"no_id": -1}, "no_id"), ({"optimizer": "lbfgs"}, "optimizer"), ({"dtype": torch.float16}, "dtype"),
    ({"seed": -1}, "seed"), ({"test_features": np.zeros((3, 16))}, "test_features, test_signs"),
])
def test_training_bad_input(override, param):
    b, W0, _ = setting()
    with pytest.raises(ValueError, match=param):
        train(W0, b, **override)


@pytest.mark.parametrize("features, signs, param", [
    (np.zeros((0, 16)), np.zeros(0), "train_features"),
    (np.zeros((5, 15)), np.ones(5), "train_features"),
    (np.full((5, 16), np.nan), np.ones(5), "train_features"),
    (np.zeros((5, 16)), np.array([1, -1, 0, 1, 1]), "train_signs"),
    (np.zeros((5, 16)), np.ones(4), "train_signs"),
])
def test_training_bad_data(features, signs, param):
    _, W0, _ = setting()
    with pytest.raises(ValueError, match=param):
        ll.train_last_layer_dpo(W0, features, signs, yes_id=0, no_id=1, beta=0.1, lr=0.1, steps=1, batch_size=None)


@pytest.mark.parametrize("kwargs, param", [
    ({"n": 0}, "n"), ({"d": 0}, "d"), ({"distinguishability": -1.0}, "distinguishability"),
    ({"noise": "cauchy"}, "noise"), ({"yes_fraction": 1.5}, "yes_fraction"), ({"rng": 0}, "rng"),
    ({"center": [1.0, 2.0]}, "center"), ({"direction": np.ones(4)}, "direction"),
])
def test_make_behaviour_bad_input(kwargs, param):
    args = dict(n=10, d=4, distinguishability=1.0, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=param):
        ll.make_behaviour(**args)


def test_closed_forms_bad_input():
    b, W0, _ = setting()
    with pytest.raises(ValueError, match="beta"):
        ll.dpo_gradient_closed_form(W0, W0, b.features, b.signs, 0, 1, -1.0)
    with pytest.raises(ValueError, match="W_ref"):
        ll.dpo_gradient_closed_form(W0, W0[:3], b.features, b.signs, 0, 1, 1.0)
    with pytest.raises(ValueError, match="features"):
        ll.answer_logps(W0, b.features[:, :3], 0, 1)
    with pytest.raises(ValueError, match="lr"):
        ll.first_step_loss_drop(b.features, b.signs, 0.1, 0.0)
    with pytest.raises(ValueError, match="t"):
        ll.weight_change_bound(0.1, 0.1, -1, 1.0)
    with pytest.raises(ValueError, match="yes_mask"):
        ll.behaviour_properties(b.features, b.signs)  # signs are not a boolean mask
    with pytest.raises(ValueError, match="yes_mask"):
        ll.behaviour_properties(b.features, np.arange(len(b.signs)) == 0)  # a single Yes item
    with pytest.raises(ValueError, match="deltas"):
        ll.priority_gap_matrix(np.ones(3))


def test_run_fields_can_be_dropped_or_replaced_as_before():
    b, W0, _ = setting(n=20, d=4, V=3)
    run = train(W0, b, steps=2, batch_size=8, record_v=True)
    assert isinstance(run, ll.LastLayerRun) and run.W is run.model and run.v_path.shape == (3, 4)
    run.W = None  # a chapter drops a large head and keeps the logs
    run.v_path, run.max_feature_norm = None, 1.5
    assert run.model is None and run.v_path is None and run.max_feature_norm == 1.5
