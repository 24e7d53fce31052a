"""Tests of analysis_lib.dynamics: MRS-IPO / MRS-DPO maps, Jacobians, fixed points, batched runs, metrics."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from analysis_lib import dynamics as dyn
from analysis_lib.preferences import (
    bradley_terry_matrix,
    cyclic_matrix,
    has_cycle,
    ipo_optimum,
    random_bt_matrix,
    random_preference_matrix,
)
from analysis_lib.runtime import get_device


def _random_instance(rng, K):
    P = random_preference_matrix(K, rng)
    return P, rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K))


# -- the map and its Jacobian ------------------------------------------------------------------------------


def test_step_is_the_ipo_optimum_with_the_mixed_reference_and_sampler():
    rng = np.random.default_rng(1)
    for K in (3, 4, 6):
        P, pi_ref, pi_0 = _random_instance(rng, K)
        pi = rng.dirichlet(np.ones(K))
        alpha, beta, lam = rng.uniform(0, 1), rng.uniform(0.5, 5), rng.uniform(0, 1)
        ref_t = pi**alpha * pi_ref ** (1 - alpha)
        expected = ipo_optimum(P, lam * pi + (1 - lam) * pi_0, ref_t / ref_t.sum(), beta)
        got = np.exp(dyn.mrs_ipo_step(np.log(pi), P, alpha, beta, lam, pi_ref, pi_0))
        np.testing.assert_allclose(got, expected, atol=1e-14)


def test_jacobian_matches_torch_autograd_at_random_points():
    rng = np.random.default_rng(2)
    device = get_device()
    for K in (3, 4, 5):
        for _ in range(4):
            P, pi_ref, pi_0 = _random_instance(rng, K)
            alpha, beta, lam = rng.uniform(0, 1), rng.uniform(0.1, 10), rng.uniform(0, 1)
            z = rng.normal(0, 2, K)
            Pt = torch.tensor(P, dtype=torch.float64, device=device)
            c = torch.tensor((1 - alpha) * np.log(pi_ref) + beta * (1 - lam) * P @ pi_0, device=device)

            def F(zt, Pt=Pt, c=c, alpha=alpha, beta=beta, lam=lam):
                out = alpha * zt + c + beta * lam * Pt @ torch.softmax(zt, 0)
                return out - out.mean()

            auto = torch.autograd.functional.jacobian(F, torch.tensor(z, device=device)).cpu().numpy()
            np.testing.assert_allclose(dyn.mrs_ipo_jacobian(z, P, alpha, beta, lam), auto, atol=1e-12)
            # and the map itself agrees with the torch version
            np.testing.assert_allclose(dyn.mrs_ipo_map(z, P, alpha, beta, lam, pi_ref, pi_0),
                                       F(torch.tensor(z, device=device)).cpu().numpy(), atol=1e-12)


@pytest.mark.parametrize("a, alpha, beta, lam", [(0.5, 0.5, 2, 1), (0.4, 0.9, 3, 0.5), (0.5, 0.0, 4, 1),
                                                 (0.3, 0.95, 1, 1), (0.1, 0.2, 7, 0.3)])
def test_cyclic_eigenvalues_at_uniform(a, alpha, beta, lam):
    J = dyn.mrs_ipo_jacobian(np.zeros(3), cyclic_matrix(a), alpha, beta, lam)
    eig = np.sort_complex(dyn.tangent_eigenvalues(J))
    expected = np.sort_complex(np.array([alpha + 1j * beta * lam * a / np.sqrt(3),
                                         alpha - 1j * beta * lam * a / np.sqrt(3)]))
    np.testing.assert_allclose(eig, expected, atol=1e-12)
    np.testing.assert_allclose(dyn.cyclic_rho_squared(a, alpha, beta, lam), alpha**2 + (a * beta * lam) ** 2 / 3)


def test_uniform_is_a_fixed_point_of_the_cycle_and_contraction_constant_of_the_cycle():
    a = 0.35
    P = cyclic_matrix(a)
    np.testing.assert_allclose(dyn.mrs_ipo_map(np.zeros(3), P, 0.3, 5.0, 0.7), np.zeros(3), atol=1e-15)
    np.testing.assert_allclose(dyn.contraction_bound(P, 0.2, 2.0, 0.5), 0.2 + 0.5 * a * np.sqrt(3), rtol=1e-12)


# -- fixed points -------------------------------------------------------------------------------------------


def test_fixed_point_is_a_fixed_point_and_unique_from_several_starts():
    rng = np.random.default_rng(3)
    n, K, n_starts = 30, 5, 6
    P = random_preference_matrix(K, rng, size=n)
    pi_ref, pi_0 = rng.dirichlet(np.ones(K), size=n), rng.dirichlet(np.ones(K), size=n)
    alpha, lam = rng.uniform(0, 0.95, n), rng.uniform(0, 1, n)
    beta = rng.uniform(0.5, 40, n)  # includes strongly expansive settings (kappa up to ~800)
    starts = rng.dirichlet(np.full(K, 0.3), size=(n_starts, n))
    fp = dyn.mrs_ipo_fixed_point(P, alpha, beta, lam, pi_ref, pi_0, start=starts)
    assert fp.shape == (n_starts, n, K)
    np.testing.assert_allclose(dyn.mrs_ipo_step(fp, P, alpha, beta, lam, pi_ref, pi_0), fp, atol=1e-10)
    np.testing.assert_allclose(fp, np.broadcast_to(fp[0], fp.shape), atol=1e-9)


def test_fixed_point_rejects_alpha_one():
    with pytest.raises(ValueError, match="alpha"):
        dyn.mrs_ipo_fixed_point(cyclic_matrix(0.5), 1.0, 1.0, 1.0)


def _assert_fixed_point(u, P, alpha, beta, lam, rtol=1e-12):
    """One MRS-IPO step leaves u in place up to rtol times its scale (at least 1) -- the doubles near
    |log pi| ~ 1000 are 1.1e-13 apart, so no absolute tolerance below that can be met there."""
    moved = np.abs(dyn.mrs_ipo_step(u, P, alpha, beta, lam) - u).max(-1)
    assert np.all(moved <= rtol * np.maximum(1.0, np.abs(u).max(-1)))


def test_fixed_point_with_log_probabilities_beyond_512_converges():
    """Issue 9: |log pi| >= 512 put an absolute tolerance of 1e-13 below the spacing of doubles, so Newton
    'did not converge (max residual 1.14e-13)' although the iteration does."""
    P = bradley_terry_matrix([1.0, 0.0, -1.0])
    u = dyn.mrs_ipo_fixed_point(P, 0.5, 1000.0, 1.0)
    assert np.abs(u).max() > 512
    _assert_fixed_point(u, P, 0.5, 1000.0, 1.0)
    run = dyn.run_mrs_ipo(P, 0.5, 1000.0, 1.0, steps=200)
    np.testing.assert_allclose(u, run.log_policy, rtol=1e-12)
    assert np.isfinite(dyn.fixed_point_spectral_radius(P, 0.5, 1000.0, 1.0))


def test_the_tolerance_is_raised_only_to_the_rounding_floor_of_the_largest_term():
    """tol stays as given where it can be met; it becomes 16 spacings of doubles at the largest term otherwise."""
    terms = (np.array([[-1.1, 0.0, -3.0], [-700.0, 0.0, -1.1]]), np.array([[0.5, 0.2, 0.1], [0.5, 0.2, 0.1]]))
    np.testing.assert_array_equal(dyn._tolerance(1e-13, *terms), [1e-13, 16 * np.spacing(700.0)])
    assert 16 * np.spacing(700.0) > 1e-12


@pytest.mark.parametrize("K", [6, 7])
def test_fixed_point_spectral_radius_on_random_instances_with_beta_lam_up_to_40(K):
    """Issue 9: 5 of these 180 instances (beta lam <= 40, beta up to 4e4 where lam is small) stopped with
    'Newton did not converge' at residuals of 1.1e-13 or 2.3e-13 (terms of the equation in the hundreds)."""
    rng = np.random.default_rng(K)
    n = 90
    P = random_preference_matrix(K, rng, size=n)
    alpha, lam = rng.uniform(0, 0.95, n), rng.uniform(0, 1, n)
    beta = rng.uniform(0, 40, n) / np.maximum(lam, 1e-3)
    u = dyn.mrs_ipo_fixed_point(P, alpha, beta, lam)
    _assert_fixed_point(u, P, alpha, beta, lam, rtol=1e-11)
    assert np.all(np.isfinite(dyn.fixed_point_spectral_radius(P, alpha, beta, lam)))


def test_kappa_invariance_of_the_limit():
    """R6: with lam = 1 and uniform references, the limit depends on (alpha, beta) only via kappa."""
    P = bradley_terry_matrix([1.5, 0.8, 0.3, -0.5])
    alphas = np.array([0.0, 0.5, 0.9])
    for k in (1.0, 5.0, 20.0):
        fp = dyn.mrs_ipo_fixed_point(P, alphas, k * (1 - alphas), 1.0)
        assert np.ptp(fp, axis=0).max() < 1e-10
    run = dyn.run_mrs_ipo(P, alphas, 2.0 * (1 - alphas), 1.0, steps=600)  # kappa = 2: all converge
    assert np.ptp(run.log_policy, axis=0).max() < 1e-10
    np.testing.assert_allclose(dyn.kappa(alphas, 2.0 * (1 - alphas), 1.0), 2.0)


# -- batched runs -------------------------------------------------------------------------------------------


def test_batched_run_equals_per_instance_loop():
    rng = np.random.default_rng(4)
    M, K, steps = 5, 4, 40
    P = random_preference_matrix(K, rng, size=M)
    pi_ref = rng.dirichlet(np.ones(K), size=(M, 1))
    alpha, beta = np.array([0.0, 0.6, 1.0]), np.array([0.5, 3.0, 9.0])
    run = dyn.run_mrs_ipo(P[:, None], alpha, beta, 0.7, steps, pi_ref=pi_ref, tail=10, record=True)
    assert run.log_policy.shape == (M, 3, K) and run.history.shape == (steps + 1, M, 3, K)
    for m in range(M):
        for g in range(3):
            z = np.log(pi_ref[m, 0])
            traj = [np.exp(z)]
            for _ in range(steps):
                z = dyn.mrs_ipo_step(z, P[m], alpha[g], beta[g], 0.7, pi_ref[m, 0])
                traj.append(np.exp(z))
            np.testing.assert_allclose(run.log_policy[m, g], z, atol=1e-11)
            np.testing.assert_allclose(run.cycle_strength[m, g], dyn.cycle_strength(np.array(traj[-10:])),
                                       atol=1e-14)
            np.testing.assert_allclose(run.tail_min[m, g], np.min(traj[-10:], axis=0), atol=1e-14)


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(5)
    P = random_preference_matrix(4, rng, size=3000)
    a = dyn.run_mrs_ipo(P, 0.5, 6.0, 1.0, steps=30, tail=10, threads=1)
    b = dyn.run_mrs_ipo(P, 0.5, 6.0, 1.0, steps=30, tail=10, threads=3)
    np.testing.assert_allclose(a.log_policy, b.log_policy, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.cycle_strength, b.cycle_strength, rtol=0, atol=1e-15)


def test_streamed_entropy_history_matches_recorded_history():
    run = dyn.run_mrs_ipo(cyclic_matrix(0.5), 0.5, 4.0, 1.0, 50, start=[0.34, 0.33, 0.33], record=True,
                          record_entropy=True)
    np.testing.assert_allclose(run.entropy_history, dyn.log_policy_entropy(run.history), atol=1e-14)
    np.testing.assert_allclose(run.entropy, run.entropy_history[-1], atol=1e-14)


def test_regression_snapshot_of_the_cyclic_runs():
    """The trajectories of the project's check c4 (3-cycle a = 0.5, start (0.34, 0.33, 0.33), T = 3000)."""
    alpha = np.array([0.5, 0.5, 0.9, 0.0, 1.0])
    beta = np.array([2.0, 4.0, 2.0, 4.0, 0.5])
    run = dyn.run_mrs_ipo(cyclic_matrix(0.5), alpha, beta, 1.0, 3000, start=[0.34, 0.33, 0.33], tail=1000)
    np.testing.assert_allclose(run.cycle_strength[[1, 2, 3, 4]], [0.198, 0.196, 0.111, 0.562], atol=2e-3)
    assert run.cycle_strength[0] < 1e-25  # stable: converged to uniform
    np.testing.assert_allclose(run.policy.min(-1)[[1, 2, 3]], [0.0453, 0.0767, 0.105], atol=1e-3)
    np.testing.assert_allclose(run.entropy[[0, 1, 2, 3]], [np.log(3), 0.790, 0.778, 0.882], atol=1e-3)
    assert run.entropy[4] < 0.01  # Hedge on rock-paper-scissors spirals out to the boundary
    np.testing.assert_array_equal(run.oscillating, [False, True, True, True, True])


def test_alpha_one_runs_stay_finite_and_collapse_on_sst():
    P = bradley_terry_matrix([1.5, 0.8, 0.3, -0.5])
    run = dyn.run_mrs_ipo(P, 1.0, np.array([0.1, 2.0]), 1.0, 3000, record_entropy=True,
                          start=[0.05, 0.05, 0.1, 0.8])
    assert np.all(np.isfinite(run.log_policy)) and run.log_policy.min() < -700  # underflows in probability
    assert np.all(run.entropy < 1e-6) and np.all(run.policy[:, 0] > 1 - 1e-6)
    H = run.entropy_history[:, 0]
    last_rise = np.flatnonzero(np.diff(H) > 0).max()
    assert 0 < last_rise < 200  # the entropy first rises (start near the worst response), then falls for good


# -- early stop ---------------------------------------------------------------------------------------------


def _matrices_for_early_stop(K, rng):
    """Cyclic matrices (the 3-cycle of a = 0.5 first for K = 3, then random ones with a 3-cycle) and random
    Bradley-Terry (transitive) ones."""
    cyclic = [cyclic_matrix(0.5)] if K == 3 else []
    while len(cyclic) < 6:
        P = random_preference_matrix(K, rng)
        if has_cycle(P):
            cyclic.append(P)
    return np.concatenate([np.array(cyclic), random_bt_matrix(K, rng, size=6)])


def _assert_early_stop_matches(full, early):
    """The chapters' classification and every terminal value of the early-stopped run equal the full run's (to
    1e-9); trajectories that ran every step are bitwise the full run's."""
    assert np.all(full.steps_run == full.steps)
    np.testing.assert_array_equal(early.oscillating, full.oscillating)
    np.testing.assert_array_equal(early.collapsed, full.collapsed)
    for name in ("log_policy", "cycle_strength", "tail_mean", "tail_min", "tail_max", "entropy"):
        np.testing.assert_allclose(getattr(early, name), getattr(full, name), rtol=0, atol=1e-9, err_msg=name)
    ran = early.steps_run == early.steps
    np.testing.assert_array_equal(early.log_policy[ran], full.log_policy[ran])
    np.testing.assert_array_equal(early.cycle_strength[ran], full.cycle_strength[ran])


@pytest.mark.parametrize("K", [3, 4])
def test_early_stop_gives_the_full_runs_classification_and_terminal_values(K):
    """Cyclic and transitive matrices x alpha in {0, 0.5, 0.9, 1} x beta lam from 0.1 to 64, from the uniform and a
    random start (lam = 1), and with lam = 0.6 and random references; 3,000 steps, tail 1,000 (the chapters'
    setting), and a tail window covering every iterate."""
    rng = np.random.default_rng(K)
    P = _matrices_for_early_stop(K, rng)
    alpha, gain = np.array([0.0, 0.5, 0.9, 1.0])[:, None], np.geomspace(0.1, 64, 10)
    starts = np.stack([np.full(K, 1 / K), rng.dirichlet(np.ones(K))])
    refs = {name: rng.dirichlet(np.ones(K), size=(len(P), 1, 1)) for name in ("pi_ref", "pi_0")}
    runs = [((P[:, None, None, None], alpha[..., None], gain[:, None], 1.0, 3000), dict(start=starts, tail=1000)),
            ((P[:, None, None], alpha, gain / 0.6, 0.6, 3000), dict(tail=1000, **refs)),
            ((P[:, None, None], alpha, gain, 1.0, 400), dict(tail=401))]
    stops_before_window = stops_in_window = 0
    for args, kwargs in runs:
        full = dyn.run_mrs_ipo(*args, **kwargs)
        early = dyn.run_mrs_ipo(*args, early_stop=True, **kwargs)
        _assert_early_stop_matches(full, early)
        # every regime is there, and most trajectories stop early
        assert full.oscillating.any() and full.collapsed.any() and (~full.oscillating & ~full.collapsed).any()
        assert np.mean(early.steps_run < early.steps) > 0.5
        window = early.steps + 1 - early.tail
        stops_before_window += np.sum(early.steps_run < window)
        stops_in_window += np.sum((early.steps_run >= window) & (early.steps_run < early.steps))
    assert stops_before_window > 100 and stops_in_window > 100


def _tied_cycle(a, b):
    """A 3-cycle of advantage a among responses 0-2 and a response 3 that beats each of them with 0.5 + b."""
    P = np.full((4, 4), 0.5)
    P[:3, :3] = cyclic_matrix(a)
    P[3, :3], P[:3, 3] = 0.5 + b, 0.5 - b
    return P


def test_early_stop_never_stops_on_a_repelling_fixed_point(monkeypatch):
    """From a start that is symmetric in responses 0-2 up to 1e-15 the trajectory converges fast inside the
    symmetric subspace, to a fixed point that repels outside it (spectral radius 1.03, 1.05): the rotation grows
    from 1e-15 and the full run ends up oscillating. The step sizes alone look converged at step 64; only the
    Jacobian's eigenvalues tell, and without them the early stop would report a converged run."""
    P, alpha, gain = _tied_cycle(0.5, -0.2), 0.6, np.array([3.1, 3.2])
    np.testing.assert_array_less(1.02, dyn.fixed_point_spectral_radius(P, alpha, gain, 1.0))
    start = [0.3 + 1e-15, 0.3, 0.3 - 1e-15, 0.1]
    full = dyn.run_mrs_ipo(P, alpha, gain, 1.0, 3000, start=start)
    early = dyn.run_mrs_ipo(P, alpha, gain, 1.0, 3000, start=start, early_stop=True)
    assert np.all(full.oscillating)
    _assert_early_stop_matches(full, early)
    monkeypatch.setattr(dyn, "_spectral_radius_below", lambda T, r: np.ones(T.shape[2:], dtype=bool))
    fooled = dyn.run_mrs_ipo(P, alpha, gain, 1.0, 3000, start=start, early_stop=True)
    assert np.all(fooled.steps_run == 64) and not np.any(fooled.oscillating)


def test_early_stop_stops_exact_fixed_points_even_when_they_repel():
    """The uniform start of the 3-cycle is a fixed point in floating point too (rho^2 = 1.33 > 1): its state never
    changes, so it is stopped at the first test, as it never moves in the full run either."""
    full = dyn.run_mrs_ipo(cyclic_matrix(0.5), 0.0, 4.0, 1.0, 3000)
    early = dyn.run_mrs_ipo(cyclic_matrix(0.5), 0.0, 4.0, 1.0, 3000, early_stop=True)
    assert early.steps_run == 32
    _assert_early_stop_matches(full, early)


def test_early_stop_does_not_depend_on_threads_and_full_runs_report_every_step():
    rng = np.random.default_rng(8)
    P = random_preference_matrix(4, rng, size=40)[:, None]
    alpha, gain = np.linspace(0, 1, 6), np.geomspace(0.1, 64, 6)[:, None, None]
    a = dyn.run_mrs_ipo(P, alpha, gain, 1.0, 500, tail=100, early_stop=True, threads=1)
    b = dyn.run_mrs_ipo(P, alpha, gain, 1.0, 500, tail=100, early_stop=True, threads=3)
    for name in ("log_policy", "cycle_strength", "tail_mean", "tail_min", "tail_max", "steps_run"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.steps_run.shape == (6, 40, 6) and np.all(dyn.run_mrs_ipo(P, alpha, gain, 1.0, 20).steps_run == 20)


def test_the_stop_tests_jacobian_and_eigenvalue_bound():
    """The stop test's tangent Jacobian (K-major) is Q^T J Q of mrs_ipo_jacobian; its Schur-Cohn test of
    'every eigenvalue below r' agrees with the eigenvalues (away from |lambda| = r)."""
    rng = np.random.default_rng(9)
    for K in (2, 3, 4, 5):
        n = 50
        P, z = random_preference_matrix(K, rng, size=n), rng.normal(0, 2, (n, K))
        alpha, gain = rng.uniform(0, 1, n), rng.uniform(0.1, 30, n)
        pi = np.exp(z - np.logaddexp.reduce(z, axis=-1, keepdims=True))
        T = dyn._tangent_jacobian(pi.T.copy(), alpha, np.moveaxis(gain[:, None, None] * P, 0, -1).copy())
        Q = dyn.tangent_basis(K)
        np.testing.assert_allclose(np.moveaxis(T, -1, 0), Q.T @ dyn.mrs_ipo_jacobian(z, P, alpha, gain, 1.0) @ Q,
                                   atol=1e-12)
    for d in (1, 2, 3, 4):
        T = rng.normal(size=(d, d, 20000)) * rng.uniform(0.1, 2, 20000)
        r = rng.uniform(0.2, 2, 20000)
        rho = np.abs(np.linalg.eigvals(np.moveaxis(T, -1, 0))).max(-1)
        clear = np.abs(rho / r - 1) > 1e-6
        np.testing.assert_array_equal(dyn._spectral_radius_below(T, r)[clear], (rho < r)[clear])


def test_early_stop_cannot_be_combined_with_recording():
    for kwargs in (dict(record=True), dict(record_entropy=True)):
        message = assert_one_line_error_naming(
            "early_stop", lambda kwargs=kwargs: dyn.run_mrs_ipo(C3, 0.5, 1.0, 1.0, 3, early_stop=True, **kwargs))
        assert "record" in message


# -- contraction --------------------------------------------------------------------------------------------


def test_measured_lipschitz_ratios_never_exceed_the_contraction_bound():
    rng = np.random.default_rng(6)
    for K in (3, 4, 6):
        n = 40
        P = random_preference_matrix(K, rng, size=n)
        alpha, beta, lam = rng.uniform(0, 1, n), rng.uniform(0.1, 20, n), rng.uniform(0, 1, n)
        ratios = dyn.sample_lipschitz_ratios(P, alpha, beta, lam, rng, n_pairs=100,
                                             pi_ref=rng.dirichlet(np.ones(K), size=n))
        bound = dyn.contraction_bound(P, alpha, beta, lam)
        assert ratios.shape == (100, n)
        assert np.all(ratios <= bound * (1 + 1e-9))
        assert np.max(ratios / bound) > 0.5  # the sampled pairs do probe the bound


# -- DPO ----------------------------------------------------------------------------------------------------


def _dpo_loss(r, P, mu):
    diff = r[:, None] - r[None, :]
    return -(mu[:, None] * mu[None, :] * P * np.log(1 / (1 + np.exp(-diff)))).sum()


def test_dpo_optimum_solves_the_foc_and_matches_direct_minimisation():
    rng = np.random.default_rng(7)
    P = 0.05 + 0.9 * random_preference_matrix(4, rng)
    mu = rng.dirichlet(np.ones(4))
    r = dyn.population_dpo_optimum(P, mu)
    assert np.abs(dyn.dpo_foc_residual(r, P, mu)).max() < 1e-12
    res = minimize(lambda x: _dpo_loss(np.append(x, -x.sum()), P, mu), np.zeros(3), method="BFGS",
                   options={"gtol": 1e-11})
    np.testing.assert_allclose(r, np.append(res.x, -res.x.sum()), atol=1e-5)


def test_dpo_optimum_ignores_the_sampler_for_bt_and_not_otherwise():
    rng = np.random.default_rng(8)
    mus = rng.dirichlet(np.ones(4), size=6)
    scores = np.array([1.0, 0.2, -0.7, 0.4])
    r_bt = dyn.population_dpo_optimum(bradley_terry_matrix(scores, 1.3), mus)
    assert np.ptp(r_bt, axis=0).max() < 1e-6
    np.testing.assert_allclose(r_bt[0], dyn.centre(scores / 1.3), atol=1e-10)
    r_gen = dyn.population_dpo_optimum(0.05 + 0.9 * random_preference_matrix(4, rng), mus)
    assert np.ptp(r_gen, axis=0).max() > 1e-2
    r_cyc = dyn.population_dpo_optimum(cyclic_matrix(0.3), rng.dirichlet(np.ones(3), size=6))
    assert np.ptp(r_cyc, axis=0).max() > 1e-2


def test_dpo_linearisation_at_uniform_gives_beta_eff():
    """delta r = 4 (P - 11^T/2) delta mu near mu = uniform (so beta_eff = 4 / beta_D, R12)."""
    P = cyclic_matrix(0.4)
    d = dyn.centre(np.array([1.0, -0.3, 0.2])) * 1e-6
    r = dyn.population_dpo_optimum(P, np.full(3, 1 / 3) + d)
    np.testing.assert_allclose(r, 4 * (P - 0.5) @ d, atol=1e-11)
    # the same linearisation, from the implicit derivative: dr/dmu = 4 Pi (P - 11^T/2) at uniform
    np.testing.assert_allclose(dyn.dpo_reward_derivative(P, np.full(3, 1 / 3)), 4 * dyn.centre((P - 0.5).T).T,
                               atol=1e-14)
    # so at the uniform point the MRS-DPO Jacobian is MRS-IPO's at beta = dpo_effective_beta(beta_D)
    for alpha, beta_d, lam in [(0.5, 1.2, 1.0), (0.0, 0.3, 0.6), (0.9, 4.0, 0.25)]:
        np.testing.assert_allclose(dyn.mrs_dpo_jacobian(np.zeros(3), P, alpha, beta_d, lam),
                                   dyn.mrs_ipo_jacobian(np.zeros(3), P, alpha, dyn.dpo_effective_beta(beta_d), lam),
                                   atol=1e-13)


def test_mrs_dpo_oscillates_exactly_where_the_local_threshold_predicts():
    """The project's check c7b: 3-cycle a = 0.4, lam = 1, 600 rounds."""
    alpha = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 0.9])
    beta_d = np.array([1.0, 1.2, 1.4, 2.0, 2.0, 3.0])
    run = dyn.run_mrs_dpo(cyclic_matrix(0.4), alpha, beta_d, 1.0, 600, start=[0.34, 0.33, 0.33], tail=200)
    rho2 = dyn.cyclic_rho_squared(0.4, alpha, dyn.dpo_effective_beta(beta_d), 1.0)
    np.testing.assert_array_equal(run.oscillating, rho2 > 1)
    np.testing.assert_allclose(run.cycle_strength[[0, 4]], [0.156, 0.145], atol=2e-3)


def test_mrs_dpo_collapses_on_bt_at_alpha_one():
    run = dyn.run_mrs_dpo(bradley_terry_matrix([1.5, 0.8, 0.3, -0.5]), 1.0, 1.0, 1.0, 300)
    assert run.entropy < 1e-6 and run.policy[0] > 1 - 1e-6


# -- finite samples -----------------------------------------------------------------------------------------


def test_empirical_round_approaches_the_population_round_with_many_pairs():
    rng = np.random.default_rng(9)
    P = cyclic_matrix(0.5)
    traj = dyn.run_empirical_mrs_ipo(P, 0.5, 2.0, 0.9, steps=1, n_pairs=200_000, rng=rng, start=[0.5, 0.3, 0.2])
    exact = np.exp(dyn.mrs_ipo_step(np.log([0.5, 0.3, 0.2]), P, 0.5, 2.0, 0.9))
    np.testing.assert_allclose(traj[-1], exact, atol=0.01)
    np.testing.assert_allclose(traj[0], [0.5, 0.3, 0.2])


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, name", [
    (dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"), (dict(beta=0.0), "beta"), (dict(beta=-1.0), "beta"),
    (dict(lam=1.2), "lam"), (dict(lam=-0.5), "lam"), (dict(P=np.ones((3, 3))), "P"),
    (dict(pi_ref=[0.0, 0.5, 0.5]), "pi_ref"), (dict(pi_0=[0.2, 0.2, 0.2]), "pi_0"), (dict(steps=-1), "steps"),
    (dict(start=[1.0, 0.0, 0.0]), "start"),
])
def test_bad_input_is_rejected_with_the_parameter_named(kwargs, name):
    args = dict(P=cyclic_matrix(0.5), alpha=0.5, beta=1.0, lam=1.0, steps=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        dyn.run_mrs_ipo(**args)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="beta_d"):
        dyn.run_mrs_dpo(cyclic_matrix(0.5), 0.5, 0.0, 1.0, 5)
    with pytest.raises(ValueError, match="P"):
        dyn.population_dpo_optimum(np.array([[0.5, 1.0], [0.0, 0.5]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="a"):
        dyn.cyclic_eigenvalues(0.7, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        dyn.kappa(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="leading \\(batch\\) shapes must broadcast"):
        dyn.run_mrs_ipo(random_bt_matrix(3, np.random.default_rng(0), size=4), np.zeros(3), 1.0, 1.0, 2)


def test_finite_difference_jacobian_agrees_with_the_analytic_one():
    rng = np.random.default_rng(10)
    P, pi_ref, pi_0 = _random_instance(rng, 4)
    z = rng.normal(size=4)
    fd = dyn.finite_difference_jacobian(z, P, 0.3, 4.0, 0.6, pi_ref, pi_0)
    np.testing.assert_allclose(fd, dyn.mrs_ipo_jacobian(z, P, 0.3, 4.0, 0.6), atol=1e-8)


def test_dpo_optimum_handles_unsampled_responses_and_far_starts():
    """mu_y = 0: r_y solves its own condition; a far warm start must not make Newton diverge."""
    P = cyclic_matrix(0.4)
    mu = np.array([0.0, 0.5, 0.5])
    r = dyn.population_dpo_optimum(P, mu, start=[60.0, 0.0, -60.0])
    assert np.abs(dyn.dpo_foc_residual(r, P, mu)).max() < 1e-12
    run = dyn.run_mrs_dpo(P, 0.0, 0.5, 1.0, 300, start=[0.34, 0.33, 0.33])  # hits the vertices
    assert np.all(np.isfinite(run.log_policy)) and run.oscillating


# -- MRS-DPO: Jacobian and fixed point ---------------------------------------------------------------------


def _torch_dpo_rewards(P, mu):
    """The population-DPO optimum by Newton on the convex loss -sum mu_y mu_y' P_yy' log sigmoid(r_y - r_y')
    + (sum r)^2 / 2 (the penalty fixes the constant: the minimiser is centred), with gradient and Hessian from
    torch autograd (an implementation independent of the library's). Newton runs to convergence with mu
    detached; one last step r* - H(r*, mu)^-1 g(r*, mu) is differentiable in mu (r* held fixed): as g(r*) = 0,
    its derivative is -H^-1 dg/dmu, the implicit derivative of the optimum."""
    def newton(r, mu, graph):
        r = r.detach().requires_grad_(True)
        diff = r[:, None] - r[None, :]
        loss = -(mu[:, None] * mu[None, :] * P * torch.nn.functional.logsigmoid(diff)).sum() + 0.5 * r.sum() ** 2
        (g,) = torch.autograd.grad(loss, r, create_graph=True)
        H = torch.stack([torch.autograd.grad(g[i], r, create_graph=graph, retain_graph=True)[0]
                         for i in range(len(g))])
        step = torch.linalg.solve(H, g)
        return (r - step) if graph else (r - step).detach()

    r = torch.zeros(P.shape[0], dtype=torch.float64)
    for _ in range(12):
        r = newton(r, mu.detach(), graph=False)
    return newton(r, mu, graph=True)


def test_mrs_dpo_jacobian_matches_torch_autograd_of_an_independent_implementation():
    rng = np.random.default_rng(30)
    for K in (3, 4, 5):
        for _ in range(3):
            P = 0.1 + 0.8 * random_preference_matrix(K, rng)
            pi_ref, pi_0 = rng.dirichlet(np.ones(K) * 2), rng.dirichlet(np.ones(K) * 2)
            alpha, beta_d, lam = rng.uniform(0, 1), rng.uniform(0.2, 3), rng.uniform(0, 1)
            z = rng.normal(0, 1, K)
            Pt = torch.tensor(P, dtype=torch.float64)
            ref_t, p0_t = torch.tensor(np.log(pi_ref)), torch.tensor(pi_0)

            def G(zt, Pt=Pt, ref_t=ref_t, p0_t=p0_t, alpha=alpha, beta_d=beta_d, lam=lam):
                mu = lam * torch.softmax(zt, 0) + (1 - lam) * p0_t
                out = alpha * zt + (1 - alpha) * ref_t + _torch_dpo_rewards(Pt, mu) / beta_d
                return out - out.mean()

            zt = torch.tensor(z)
            auto = torch.autograd.functional.jacobian(G, zt).numpy()
            np.testing.assert_allclose(dyn.mrs_dpo_jacobian(z, P, alpha, beta_d, lam, pi_0), auto, atol=1e-10)
            # and the library's map agrees with the torch one
            np.testing.assert_allclose(dyn.centre(dyn.mrs_dpo_step(z, P, alpha, beta_d, lam, pi_ref, pi_0)[0]),
                                       G(zt).detach().numpy(), atol=1e-11)


def test_mrs_dpo_jacobian_is_batched_and_reuses_a_given_reward():
    rng = np.random.default_rng(31)
    P = 0.1 + 0.8 * random_preference_matrix(4, rng, size=5)
    z = rng.normal(size=(5, 4))
    J = dyn.mrs_dpo_jacobian(z, P, 0.4, 1.5, 0.7)
    assert J.shape == (5, 4, 4)
    for i in range(5):
        np.testing.assert_allclose(J[i], dyn.mrs_dpo_jacobian(z[i], P[i], 0.4, 1.5, 0.7), atol=1e-14)
    _, r = dyn.mrs_dpo_step(z, P, 0.4, 1.5, 0.7)
    np.testing.assert_allclose(dyn.mrs_dpo_jacobian(z, P, 0.4, 1.5, 0.7, r=r), J, atol=1e-12)


def test_mrs_dpo_fixed_point_is_a_fixed_point_and_unique_from_several_starts():
    rng = np.random.default_rng(32)
    for K in (3, 5):
        n, n_starts = 60, 6
        P = 0.03 + 0.94 * random_preference_matrix(K, rng, size=n)
        pi_ref, pi_0 = rng.dirichlet(np.ones(K), size=n), rng.dirichlet(np.ones(K), size=n)
        alpha, lam = rng.uniform(0, 0.95, n), rng.uniform(0, 1, n)
        beta_d = 10 ** rng.uniform(-1.3, 1, n)  # includes strong feedback, 1 / (beta_D (1 - alpha)) up to ~400
        starts = rng.dirichlet(np.full(K, 0.3), size=(n_starts, n))
        fp = dyn.mrs_dpo_fixed_point(P, alpha, beta_d, lam, pi_ref, pi_0, start=starts)
        assert fp.shape == (n_starts, n, K)
        step, _ = dyn.mrs_dpo_step(fp, P, alpha, beta_d, lam, pi_ref, pi_0)
        np.testing.assert_allclose(np.exp(step), np.exp(fp), atol=1e-9)
        np.testing.assert_allclose(np.exp(fp), np.broadcast_to(np.exp(fp[0]), fp.shape), atol=1e-9)


def test_mrs_dpo_fixed_point_of_the_cycle_and_its_spectral_radius():
    """3-cycle, uniform references: the fixed point is uniform, and the spectral radius of the MRS-DPO Jacobian
    there is sqrt(rho^2) of MRS-IPO at beta_eff = 4 / beta_D (R12)."""
    alpha = np.array([0.0, 0.5, 0.5, 0.9])
    beta_d = np.array([0.5, 1.0, 2.0, 3.0])
    fp = dyn.mrs_dpo_fixed_point(cyclic_matrix(0.4), alpha, beta_d, 1.0, start=[0.6, 0.3, 0.1])
    np.testing.assert_allclose(np.exp(fp), 1 / 3, atol=1e-12)
    radius = dyn.mrs_dpo_spectral_radius(cyclic_matrix(0.4), alpha, beta_d, 1.0)
    np.testing.assert_allclose(radius**2, dyn.cyclic_rho_squared(0.4, alpha, dyn.dpo_effective_beta(beta_d), 1.0),
                               atol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        dyn.mrs_dpo_fixed_point(cyclic_matrix(0.4), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="P: off-diagonal"):
        dyn.mrs_dpo_fixed_point(np.array([[0.5, 1.0], [0.0, 0.5]]), 0.5, 1.0, 1.0)


def test_mrs_dpo_run_converges_to_the_fixed_point_when_the_jacobian_is_stable():
    rng = np.random.default_rng(33)
    P = 0.1 + 0.8 * random_preference_matrix(4, rng, size=20)
    pi_ref, pi_0 = rng.dirichlet(np.ones(4) * 3, size=20), rng.dirichlet(np.ones(4) * 3, size=20)
    alpha, beta_d, lam = rng.uniform(0, 0.6, 20), rng.uniform(2, 4, 20), rng.uniform(0.3, 1, 20)
    radius = dyn.mrs_dpo_spectral_radius(P, alpha, beta_d, lam, pi_ref, pi_0)
    assert np.all(radius < 0.9)
    run = dyn.run_mrs_dpo(P, alpha, beta_d, lam, 300, pi_ref, pi_0, start=rng.dirichlet(np.ones(4), 20))
    fp = dyn.mrs_dpo_fixed_point(P, alpha, beta_d, lam, pi_ref, pi_0)
    np.testing.assert_allclose(run.policy, np.exp(fp), atol=1e-9)


# -- error messages name the argument ----------------------------------------------------------------------


def test_map_jacobian_and_dpo_errors_name_the_argument():
    P = cyclic_matrix(0.4)
    with pytest.raises(ValueError, match="^logits: must have K = 3"):
        dyn.mrs_ipo_step(np.zeros(4), P, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="^z: must have K = 3"):
        dyn.mrs_ipo_map(np.zeros(4), P, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="^logits: must have K = 3"):
        dyn.mrs_ipo_jacobian(np.zeros(2), P, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="^logits, P, alpha, beta, lam: leading .* logits \\(4,\\)"):
        dyn.mrs_ipo_jacobian(np.zeros((4, 3)), P, np.zeros(3), 1.0, 1.0)
    with pytest.raises(ValueError, match="^P, alpha, beta, lam, pi_ref, pi_0, logits: leading"):
        dyn.mrs_ipo_step(np.zeros((4, 3)), P, np.zeros(2), 1.0, 1.0)
    with pytest.raises(ValueError, match="^logits: must have K = 3"):
        dyn.mrs_dpo_step(np.zeros(4), P, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="^P, alpha, beta_d, lam, pi_ref, pi_0, logits: leading .* beta_d \\(2,\\)"):
        dyn.mrs_dpo_step(np.zeros((3, 3)), P, 0.5, np.ones(2), 1.0)
    with pytest.raises(ValueError, match="^r_start: must have K = 3"):
        dyn.mrs_dpo_step(np.zeros(3), P, 0.5, 1.0, 1.0, r_start=np.zeros(2))
    with pytest.raises(ValueError, match="^beta_d: must be a finite number > 0, got 0.0$"):
        dyn.mrs_dpo_step(np.zeros(3), P, 0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="^P, alpha, beta_d, lam, pi_ref, pi_0, start: leading"):
        dyn.run_mrs_dpo(random_bt_matrix(3, np.random.default_rng(0), size=4), np.zeros(3), 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="^start: must have K = 3"):
        dyn.run_mrs_dpo(P, 0.5, 1.0, 1.0, 2, start=[0.5, 0.5])
    with pytest.raises(ValueError, match="^pi_0: must have K = 3"):
        dyn.run_mrs_dpo(P, 0.5, 1.0, 1.0, 2, pi_0=[0.5, 0.5])
    with pytest.raises(ValueError, match="^logits: must have K = 3"):
        dyn.mrs_dpo_jacobian(np.zeros(4), P, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="^r: must have K = 3"):
        dyn.mrs_dpo_jacobian(np.zeros(3), P, 0.5, 1.0, 1.0, r=np.zeros(5))
    with pytest.raises(ValueError, match="^mu: must have K = 3"):
        dyn.dpo_reward_derivative(P, [0.5, 0.5])


# -- bad input: every public function answers with one line that names the argument (issue 9) ----------------

U3 = np.full(3, 1 / 3)
REF3 = np.array([0.5, 0.3, 0.2])
C3 = cyclic_matrix(0.4)
Z3 = np.array([0.1, -0.2, 0.3])
NAN = float("nan")


def _numbers(*out_of_range):
    """Not numbers (a string, None, a bool, a complex number, nan) and the given out-of-range values."""
    return ["2", None, True, 1j, NAN, *out_of_range]


def _integers(low):
    return [2.0, True, "3", None, low - 1]


def _matrices(P):
    return ["abc", None, P + 0j, P > 0.5, np.ones((2, 3)) / 2]


def _distributions(x):
    """Not real arrays (a bool distribution included), or with K = 4 instead of 3."""
    return ["abc", None, np.asarray(x) + 0j, np.eye(3, dtype=bool)[0], np.full(4, 0.25)]


def _optional(values):
    """Bad values of an argument whose None means a default."""
    return [v for v in values if v is not None]


_LOGITS = ["abc", None, Z3 + 1j, Z3 > 0, np.zeros(4), [NAN, 0.0, 0.0]]
_RATES = dict(alpha=_numbers(-0.1, 1.5), beta=_numbers(0), lam=_numbers(-0.5, 1.2))
_DPO_RATES = dict(alpha=_numbers(1.5), beta_d=_numbers(0), lam=_numbers(1.2))
_START = _optional(_distributions(REF3))
_REFS = dict(pi_ref=_START, pi_0=_START)
_IPO = dict(P=C3, alpha=0.5, beta=1.0, lam=0.5)
_DPO = dict(P=C3, alpha=0.5, beta_d=1.0, lam=0.5)

# (function, a call that succeeds, {argument: bad values}); the table expands to one case per bad value
BAD_INPUTS = [
    (dyn.validate_rates, dict(alpha=0.5, beta=1.0, lam=0.5), _RATES),
    (dyn.centre, dict(z=Z3), dict(z=_LOGITS[:4] + [3.0])),
    (dyn.mrs_ipo_step, dict(logits=Z3, **_IPO), dict(logits=_LOGITS, P=_matrices(C3), **_RATES, **_REFS)),
    (dyn.mrs_ipo_map, dict(z=Z3, **_IPO), dict(z=_LOGITS, P=_matrices(C3), **_RATES, **_REFS)),
    (dyn.softmax_covariance, dict(pi=U3), dict(pi=_distributions(U3)[:4])),
    (dyn.mrs_ipo_jacobian, dict(logits=Z3, **_IPO), dict(logits=_LOGITS, P=_matrices(C3), **_RATES)),
    (dyn.finite_difference_jacobian, dict(z=Z3, **_IPO),
     dict(z=_LOGITS, P=_matrices(C3), **_RATES, **_REFS, eps=_numbers(0))),
    (dyn.tangent_basis, dict(K=3), dict(K=_integers(2))),
    (dyn.tangent_eigenvalues, dict(J=np.eye(3)), dict(J=["abc", None, np.eye(3) + 1j, np.eye(3) > 0, np.ones((2, 3))])),
    (dyn.cyclic_eigenvalues, dict(a=0.3, alpha=0.5, beta=1.0, lam=0.5), dict(a=_numbers(0, 0.7), **_RATES)),
    (dyn.cyclic_rho_squared, dict(a=0.3, alpha=0.5, beta=1.0, lam=0.5), dict(a=_numbers(0, 0.7), **_RATES)),
    (dyn.contraction_bound, _IPO, dict(P=_matrices(C3), **_RATES)),
    (dyn.kappa, dict(alpha=0.5, beta=1.0, lam=0.5), dict(_RATES, alpha=_numbers(1.0))),
    (dyn.dpo_effective_beta, dict(beta_d=1.0), dict(beta_d=_numbers(0))),
    (dyn.log_policy_entropy, dict(log_policy=np.log(U3)),
     dict(log_policy=["abc", None, np.log(U3) + 1j], axis=[1.0, "a", None, 5, True])),
    (dyn.cycle_strength, dict(policies=np.ones((4, 3)) / 3),
     dict(policies=["abc", None, np.ones((4, 3)) + 1j], axis=[1.0, "a", None, 5, True])),
    (dyn.run_mrs_ipo, dict(steps=3, **_IPO),
     dict(P=_matrices(C3), **_RATES, **_REFS, start=_START, steps=_integers(0), tail=_integers(1),
          threads=[2.0, True, "3", 0], record=["yes", 1], record_entropy=[None, 0], early_stop=[1, "yes", None])),
    (dyn.mrs_ipo_fixed_point, _IPO,
     dict(P=_matrices(C3), **_RATES, **_REFS, start=_START, tol=_numbers(0), max_iter=_integers(1))),
    (dyn.lipschitz_ratios, dict(z1=Z3, z2=-Z3, **_IPO), dict(z1=_LOGITS, z2=_LOGITS, P=_matrices(C3), **_RATES)),
    (dyn.sample_lipschitz_ratios, dict(rng=np.random.default_rng(0), n_pairs=2, **_IPO),
     dict(P=_matrices(C3), **_RATES, **_REFS, rng=[0, None], n_pairs=_integers(1))),
    (dyn.dpo_foc_residual, dict(r=Z3, P=C3, mu=U3), dict(r=_LOGITS, P=_matrices(C3), mu=_distributions(U3))),
    (dyn.population_dpo_optimum, dict(P=C3, mu=U3),
     dict(P=_matrices(C3), mu=_distributions(U3), tol=_numbers(0), max_iter=_integers(1), start=_optional(_LOGITS))),
    (dyn.mrs_dpo_step, dict(logits=Z3, **_DPO),
     dict(logits=_LOGITS, P=_matrices(C3), **_DPO_RATES, **_REFS, r_start=_optional(_LOGITS))),
    (dyn.dpo_reward_derivative, dict(P=C3, mu=U3), dict(P=_matrices(C3), mu=_distributions(U3), r=_optional(_LOGITS))),
    (dyn.mrs_dpo_jacobian, dict(logits=Z3, **_DPO),
     dict(logits=_LOGITS, P=_matrices(C3), **_DPO_RATES, pi_0=_START, r=_optional(_LOGITS))),
    (dyn.mrs_dpo_fixed_point, _DPO,
     dict(P=_matrices(C3), **_DPO_RATES, **_REFS, start=_START, tol=_numbers(0),
          max_iter=_integers(1), continuation_steps=_integers(1))),
    (dyn.mrs_dpo_spectral_radius, _DPO, dict(P=_matrices(C3), **_DPO_RATES, **_REFS, start=_START)),
    (dyn.run_mrs_dpo, dict(steps=2, **_DPO),
     dict(P=_matrices(C3), **_DPO_RATES, **_REFS, start=_START, steps=_integers(0), tail=_integers(1),
          record=["no"])),
    (dyn.run_empirical_mrs_ipo, dict(steps=2, n_pairs=5, rng=np.random.default_rng(0), **_IPO),
     dict(P=_matrices(C3), **_RATES, **_REFS, start=_START, steps=_integers(0),
          n_pairs=_integers(1), rng=[0, None])),
    (dyn.run_empirical_mrs_ipo_runs, dict(steps=2, n_pairs=5, runs=2, rng=np.random.default_rng(0), **_IPO),
     dict(P=_matrices(C3), **_RATES, **_REFS, start=_START, steps=_integers(0),
          n_pairs=_integers(1), runs=_integers(1), rng=[0, None])),
    (dyn.fixed_point_spectral_radius, _IPO, dict(P=_matrices(C3), **_RATES, **_REFS)),
    (dyn.trend_violations, dict(values=np.ones((3, 4)), axis=0),
     dict(values=["abc", None, np.ones((3, 4)) + 1j], axis=[1.0, True, "a", None, 5], atol=_numbers(-1),
          z=_numbers(-1), increasing=[1, "no"], where=["abc", np.ones(5, bool), np.ones(3)])),
    (dyn.averaging_variances, dict(trajectories=np.ones((2, 5, 3)) / 3, window=3),
     dict(trajectories=["abc", None, np.ones((2, 5, 3)) + 1j], window=_integers(2) + [9])),
]


def _call(f, good, **override):
    kwargs = {**good, **override}
    if "rng" in kwargs and "rng" not in override:
        kwargs["rng"] = np.random.default_rng(0)  # a fresh stream for every call
    return f(**kwargs)


def assert_one_line_error_naming(name: str, call, case: str = "") -> str:
    """call() raises ValueError with one line "<names>: must ..." whose names (comma-separated) include name."""
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    names = [n.strip() for n in message.split(":")[0].split(",")]
    assert "\n" not in message and name in names and " must " in message, f"{case}: {message}"
    return message


@pytest.mark.parametrize("f, good", [pytest.param(f, good, id=f.__name__) for f, good, _ in BAD_INPUTS])
def test_the_bad_input_table_starts_from_calls_that_succeed(f, good):
    _call(f, good)


@pytest.mark.parametrize("f, good, arg, bad_values", [
    pytest.param(f, good, arg, values, id=f"{f.__name__}-{arg}")
    for f, good, bads in BAD_INPUTS for arg, values in bads.items()])
def test_bad_input_is_a_one_line_error_naming_the_argument(f, good, arg, bad_values):
    for bad in bad_values:
        assert_one_line_error_naming(arg, lambda bad=bad: _call(f, good, **{arg: bad}), f"{arg}={bad!r}")


P4 = random_preference_matrix(3, np.random.default_rng(0), size=4)


@pytest.mark.parametrize("call, name", [
    pytest.param(lambda: dyn.population_dpo_optimum(0.05 + 0.9 * P4, np.full((3, 3), 1 / 3)), "mu",
                 id="population_dpo_optimum-mu"),
    pytest.param(lambda: dyn.population_dpo_optimum(0.05 + 0.9 * P4, U3, start=np.zeros((3, 3))), "start",
                 id="population_dpo_optimum-start"),
    pytest.param(lambda: dyn.contraction_bound(P4, np.full(3, 0.5), 1.0, 1.0), "alpha", id="contraction_bound"),
    pytest.param(lambda: dyn.kappa(np.full(3, 0.5), np.ones(4), 1.0), "beta", id="kappa"),
    pytest.param(lambda: dyn.cyclic_rho_squared(np.full(4, 0.3), np.full(3, 0.5), 1.0, 1.0), "a",
                 id="cyclic_rho_squared"),
    pytest.param(lambda: dyn.dpo_foc_residual(np.zeros((3, 3)), P4, U3), "r", id="dpo_foc_residual"),
    pytest.param(lambda: dyn.mrs_dpo_step(np.zeros((4, 3)), P4, 0.5, 1.0, 1.0, r_start=np.zeros((3, 3))), "r_start",
                 id="mrs_dpo_step-r_start"),
    pytest.param(lambda: dyn.lipschitz_ratios(np.ones((4, 3)), np.zeros((3, 3)), C3, 0.5, 1.0, 1.0), "z2",
                 id="lipschitz_ratios"),
    pytest.param(lambda: dyn.mrs_ipo_fixed_point(P4, np.full(3, 0.5), 1.0, 1.0), "alpha", id="mrs_ipo_fixed_point"),
    pytest.param(lambda: dyn.run_mrs_ipo(P4, 0.5, 1.0, 1.0, 2, pi_0=np.full((3, 3), 1 / 3)), "pi_0",
                 id="run_mrs_ipo-pi_0"),
    pytest.param(lambda: dyn.run_empirical_mrs_ipo(C3, np.full(2, 0.5), 1.0, 1.0, 2, 5, np.random.default_rng(0)),
                 "alpha", id="run_empirical_mrs_ipo-alpha"),
    pytest.param(lambda: dyn.run_empirical_mrs_ipo(C3, 0.5, 1.0, 1.0, 2, 5, np.random.default_rng(0),
                                                   pi_ref=np.full((2, 3), 1 / 3)), "pi_ref",
                 id="run_empirical_mrs_ipo-pi_ref"),
])
def test_mismatched_batch_shapes_name_the_arguments(call, name):
    assert_one_line_error_naming(name, call)


def test_the_issues_bad_rates():
    """Issue 9: alpha=True was taken as 1, beta=None said 'must be finite'."""
    with pytest.raises(ValueError, match=r"^alpha: must be a number in \[0, 1\], got True$"):
        dyn.run_mrs_ipo(C3, True, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match=r"^beta: must be a finite number > 0, got None$"):
        dyn.kappa(0.5, None, 1.0)
    with pytest.raises(ValueError, match=r"^alpha: must be < 1 \(kappa = beta lam / \(1 - alpha\)\), got 1.0$"):
        dyn.kappa(1.0, 1.0, 1.0)
