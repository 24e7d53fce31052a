"""Tests of the Section-5 additions: attribute-based preference matrices (preferences.py), their structure
counts, the count form of finite-sample IPO, and the summaries over matrices and seeds (dynamics.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import expit

from analysis_lib import dynamics as dyn
from analysis_lib import preferences as pr


@pytest.fixture
def rng():
    return np.random.default_rng(2026)


# -- scale_attributes ------------------------------------------------------------------------------------------


def test_quantile_bins_of_a_known_column():
    x = np.arange(10.0)[:, None]
    np.testing.assert_array_equal(pr.scale_attributes(x, "quantile")[:, 0], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def test_quantile_bins_are_invariant_to_increasing_transforms_and_keep_ties_together(rng):
    x = rng.standard_normal((50, 4, 3))
    x[:, :, 2] = np.round(x[:, :, 2])  # many ties
    bins = pr.scale_attributes(x, "quantile")
    np.testing.assert_array_equal(bins, pr.scale_attributes(np.exp(x) * 3 + 1, "quantile"))
    assert bins.min() >= 0 and bins.max() <= 4 and np.all(bins == np.round(bins))
    for value in np.unique(x[:, :, 2]):  # equal values share one bin
        assert np.unique(bins[:, :, 2][x[:, :, 2] == value]).size == 1
    for a in range(2):  # continuous columns: each bin holds a fifth of the data
        np.testing.assert_array_equal(np.bincount(bins[:, :, a].astype(int).ravel()), [40] * 5)


def test_zscore_and_raw_scales(rng):
    x = rng.normal(3.0, 2.0, size=(30, 4, 2))
    z = pr.scale_attributes(x, "zscore")
    np.testing.assert_allclose(z.reshape(-1, 2).mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.reshape(-1, 2).std(0), 1, atol=1e-12)
    np.testing.assert_array_equal(pr.scale_attributes(x, "raw"), x)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"method": "rank"}, "method: must be one of"),
    ({"n_bins": 1}, "n_bins"),
    ({"n_bins": 2.5}, "n_bins"),
])
def test_scale_attributes_rejects_bad_options(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        pr.scale_attributes(np.arange(6.0).reshape(3, 2), **kwargs)


def test_scale_attributes_rejects_bad_values():
    with pytest.raises(ValueError, match="values"):
        pr.scale_attributes([[1.0, np.nan]])
    with pytest.raises(ValueError, match="constant"):
        pr.scale_attributes(np.ones((4, 1)), "zscore")


# -- random_attribute_matrices ---------------------------------------------------------------------------------


def test_each_pair_uses_one_of_the_attributes(rng):
    x = rng.normal(size=(20, 4, 3))
    T = 0.7
    P = pr.random_attribute_matrices(x, rng, draws=5, temperature=T)
    assert P.shape == (20, 5, 4, 4)
    pr.validate_preference_matrix(P)
    for m, d in itertools.product(range(20), range(5)):
        for i, j in itertools.combinations(range(4), 2):
            candidates = expit((x[m, i] - x[m, j]) / T)
            assert np.min(np.abs(candidates - P[m, d, i, j])) < 1e-15


def test_attribute_choice_is_uniform_and_seeded(rng):
    x = np.zeros((2000, 2, 3))
    x[:, 0] = [0.0, 1.0, 2.0]  # the drawn attribute a gives P_01 = sigmoid(a)
    P = pr.random_attribute_matrices(x, np.random.default_rng(5), draws=3)
    chosen = np.rint(np.log(P[..., 0, 1] / (1 - P[..., 0, 1]))).astype(int)  # logit(P_01) = a
    counts = np.bincount(chosen.ravel(), minlength=3)
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.02)  # 6000 draws: sd of a share 0.006
    np.testing.assert_array_equal(P, pr.random_attribute_matrices(x, np.random.default_rng(5), draws=3))


def test_a_single_attribute_gives_the_bradley_terry_matrix(rng):
    s = rng.normal(size=(6, 4))
    P = pr.random_attribute_matrices(s[:, :, None], rng, draws=2, temperature=1.3)
    np.testing.assert_allclose(P[:, 1], pr.bradley_terry_matrix(s, 1.3), atol=1e-15)
    np.testing.assert_array_equal(P[:, 0], P[:, 1])


@pytest.mark.parametrize("kwargs, fragment", [
    ({"draws": 0}, "draws"),
    ({"temperature": 0.0}, "temperature"),
    ({"rng": 3}, "rng"),
])
def test_random_attribute_matrices_rejects_bad_input(kwargs, fragment):
    args = {"attributes": np.zeros((2, 3, 2)), "rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(ValueError, match=fragment):
        pr.random_attribute_matrices(**args)
    with pytest.raises(ValueError, match="attributes"):
        pr.random_attribute_matrices(np.zeros((3, 2)), np.random.default_rng(0))


# -- preference_structure and the synthetic HelpSteer stand-in -----------------------------------------------


def test_preference_structure_of_known_matrices():
    tie = pr.bradley_terry_matrix([1.0, 1.0, 0.0])
    batch = np.stack([pr.cyclic_matrix(0.3), pr.bradley_terry_matrix([2.0, 1.0, 0.0]), tie])
    out = pr.preference_structure(batch)
    np.testing.assert_array_equal(out["cyclic"], [True, False, False])
    np.testing.assert_array_equal(out["sst"], [False, True, True])
    np.testing.assert_array_equal(out["strictly_sst"], [False, True, False])
    np.testing.assert_array_equal(out["has_tie"], [False, False, True])


def test_synthetic_scores_follow_the_generator(rng):
    S = pr.synthetic_helpsteer_scores(4000, rng)
    assert S.shape == (4000, 4, 5) and S.dtype.kind == "i" and S.min() >= 0 and S.max() <= 4
    corr = np.corrcoef(S.reshape(-1, 5).T)
    assert np.all(corr[np.triu_indices(5, 1)] > 0.1)  # one latent quality drives all five attributes
    noiseless = pr.synthetic_helpsteer_scores(5, np.random.default_rng(1), noise=0.0, means=(2.0,), slopes=(0.0,))
    np.testing.assert_array_equal(noiseless, 2)


def test_synthetic_counts_match_the_reference_check_c8():
    """The notes' check c8: 9,000 prompts, one draw each, give 1,028 cyclic and 235 strictly SST (555 SST)."""
    rng = np.random.default_rng(0)
    P = pr.random_attribute_matrices(pr.synthetic_helpsteer_scores(9000, rng), rng)[:, 0]
    counts = {k: int(v.sum()) for k, v in pr.preference_structure(P).items()}
    assert counts == {"cyclic": 1030, "sst": 546, "strictly_sst": 224, "has_tie": 7717}  # fixed-seed snapshot
    for key, reference in (("cyclic", 1028), ("strictly_sst", 235), ("sst", 555)):
        assert abs(counts[key] - reference) <= 4 * np.sqrt(reference)  # another seed: within sampling noise


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n_prompts": 0}, "n_prompts"),
    ({"K": 1}, "K"),
    ({"means": (1.0, 2.0), "slopes": (1.0,)}, "means, slopes"),
    ({"noise": -1.0}, "noise"),
])
def test_synthetic_scores_reject_bad_input(kwargs, fragment):
    args = {"n_prompts": 3, "rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(ValueError, match=fragment):
        pr.synthetic_helpsteer_scores(**args)


def test_finegrained_counts_match_the_reference_check_c11(real_data_dir):
    from analysis_lib.data import load_finegrained_qa

    fg = load_finegrained_qa(real_data_dir)
    X = fg.responses[["copeland", "n_words", "gold_f1"]].to_numpy(float).reshape(-1, 4, 3)
    human = pr.preference_structure(pr.random_attribute_matrices(X[:, :, :1], np.random.default_rng(0))[:, 0])
    assert (human["cyclic"].sum(), human["sst"].sum(), human["strictly_sst"].sum()) == (0, 500, 314)
    bins = pr.scale_attributes(X, "quantile")
    mixed = pr.preference_structure(pr.random_attribute_matrices(bins, np.random.default_rng(0), draws=20))
    for key, reference in (("cyclic", 1411), ("sst", 775), ("strictly_sst", 286)):
        assert abs(int(mixed[key].sum()) - reference) <= 0.1 * reference


# -- the count form of finite-sample IPO -----------------------------------------------------------------------


def test_labelled_pair_probabilities_sum_to_one_and_split_each_pair_by_P(rng):
    P, mu = pr.random_preference_matrix(4, rng), rng.dirichlet(np.ones(4), size=3)
    Q = pr.labelled_pair_probabilities(P, mu)
    np.testing.assert_allclose(Q.sum((-2, -1)), 1.0, atol=1e-15)
    pair = Q + np.swapaxes(Q, -1, -2)
    outer = mu[:, :, None] * mu[:, None, :]
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(pair[:, off], 2 * outer[:, off], atol=1e-15)
    np.testing.assert_allclose((Q / pair)[:, off], np.broadcast_to(P, (3, 4, 4))[:, off], atol=1e-12)


def test_sample_pair_counts_has_the_multinomial_mean(rng):
    P, mu = pr.cyclic_matrix(0.4), np.array([0.5, 0.3, 0.2])
    n, reps = 400, 3000
    C = pr.sample_pair_counts(P, np.broadcast_to(mu, (reps, 3)), n, rng)
    assert C.shape == (reps, 3, 3) and np.all(C.sum((-2, -1)) == n)
    Q = pr.labelled_pair_probabilities(P, mu)
    se = np.sqrt(n * Q * (1 - Q) / reps)
    assert np.all(np.abs(C.mean(0) - n * Q) <= 5 * se + 1e-12)


def test_sample_pair_counts_is_distributed_like_sampled_pairs():
    P, mu, n = pr.bradley_terry_matrix([1.0, 0.0, -0.5]), np.array([0.2, 0.5, 0.3]), 100_000
    w, lo = pr.sample_preference_pairs(P, mu, n, np.random.default_rng(1))
    from_pairs = pr.pair_counts(w, lo, 3) / n
    from_counts = pr.sample_pair_counts(P, mu, n, np.random.default_rng(2)) / n
    assert np.abs(from_pairs - from_counts).max() < 5 * np.sqrt(2 * 0.25 / n)


@pytest.mark.parametrize("K, n", [(3, 50), (4, 7), (5, 3)])
def test_count_form_optimum_equals_the_pairwise_least_squares(K, n):
    rng = np.random.default_rng(K * 10 + n)
    for _ in range(20):  # small n: self-pairs and disconnected comparison graphs occur
        w, lo = rng.integers(K, size=n), rng.integers(K, size=n)
        if np.all(w == lo):
            continue
        pi_ref, beta = rng.dirichlet(np.ones(K)), rng.uniform(0.5, 5)
        expected = pr.empirical_ipo_optimum(w, lo, pi_ref, beta)
        got = pr.empirical_ipo_optimum_counts(pr.pair_counts(w, lo, K), pi_ref, beta)
        np.testing.assert_allclose(got, expected, atol=1e-10)


def test_count_form_optimum_is_batched(rng):
    C = rng.integers(0, 20, size=(3, 2, 4, 4)).astype(float)
    pi_ref = rng.dirichlet(np.ones(4), size=(3, 2))
    got = pr.empirical_ipo_optimum_counts(C, pi_ref, 2.0)
    for a, b in itertools.product(range(3), range(2)):
        np.testing.assert_allclose(got[a, b], pr.empirical_ipo_optimum_counts(C[a, b], pi_ref[a, b], 2.0),
                                   atol=1e-13)


def test_count_form_rejects_bad_input():
    with pytest.raises(ValueError, match="counts"):
        pr.empirical_ipo_optimum_counts(-np.ones((3, 3)), np.full(3, 1 / 3), 1.0)
    with pytest.raises(ValueError, match="pi_ref"):
        pr.empirical_ipo_optimum_counts(np.ones((3, 3)), np.array([0.5, 0.5, 0.0]), 1.0)
    with pytest.raises(ValueError, match="n: must be"):
        pr.sample_pair_counts(pr.cyclic_matrix(0.2), np.full(3, 1 / 3), 0, np.random.default_rng(0))


# -- summaries over matrices and seeds (dynamics.py) ---------------------------------------------------------


def test_spectral_radius_at_the_fixed_point_of_the_three_cycle():
    alpha = np.array([0.0, 0.5, 0.9])[:, None]
    beta = np.array([1.0, 3.0, 6.0])[None, :]
    rho = dyn.fixed_point_spectral_radius(pr.cyclic_matrix(0.5), alpha, beta, 0.8)
    np.testing.assert_allclose(rho, np.sqrt(dyn.cyclic_rho_squared(0.5, alpha, beta, 0.8)), atol=1e-12)


def test_spectral_radius_matches_finite_differences_off_uniform(rng):
    P = pr.random_preference_matrix(4, rng)
    log_pi = dyn.mrs_ipo_fixed_point(P, 0.3, 4.0, 1.0)
    J = dyn.finite_difference_jacobian(dyn.centre(log_pi), P, 0.3, 4.0, 1.0)
    expected = np.abs(dyn.tangent_eigenvalues(J)).max()
    assert abs(dyn.fixed_point_spectral_radius(P, 0.3, 4.0, 1.0) - expected) < 1e-7


def test_trend_violations_flags_a_real_decrease_but_not_noise(rng):
    M = 400
    base = np.array([0.0, 1.0, 2.0, 1.0])  # up, up, down
    values = base + rng.normal(0, 0.5, size=(M, 4))
    check = dyn.trend_violations(values, axis=0)
    np.testing.assert_array_equal(check.violated, [False, False, True])
    assert check.n_violations == 1 and check.n_comparisons == 3
    np.testing.assert_allclose(check.mean, values.mean(0))
    flat = np.zeros(4) + rng.normal(0, 0.5, size=(M, 4))  # no trend: differences are pure noise
    assert dyn.trend_violations(flat, axis=0, z=4.0).n_violations == 0
    assert dyn.trend_violations(values, axis=0, increasing=False).violated[:2].all()
    masked = dyn.trend_violations(values, axis=0, where=np.array([True, True, False]))
    assert masked.n_violations == 0


def test_trend_violations_on_a_grid_and_with_atol():
    v = np.zeros((5, 2, 3))
    v[:, 0] = [1e-20, 0.0, 0.0]  # numerically zero wiggles
    v[:, 1] = [0.1, 0.3, 0.2]  # the same for every matrix: no sampling noise, so any decrease counts
    check = dyn.trend_violations(v, axis=1, atol=1e-8)
    np.testing.assert_array_equal(check.violated, [[False, False], [False, True]])
    assert dyn.trend_violations(v, axis=1).violated[0, 0]  # without atol 1e-20 > 0 is a decrease
    rows = dyn.trend_violations(v, axis=0)
    assert rows.violated.shape == (1, 3) and rows.n_violations == 0


@pytest.mark.parametrize("args, fragment", [
    ((np.zeros(4), 0), "values"),
    ((np.zeros((4, 3)), 1), "axis"),
    ((np.zeros((4, 1)), 0), "at least 2"),
])
def test_trend_violations_rejects_bad_input(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        dyn.trend_violations(*args)
    with pytest.raises(ValueError, match="where"):
        dyn.trend_violations(np.zeros((4, 3)), 0, where=np.ones(3, dtype=bool))


def test_averaging_hides_runs_in_antiphase():
    t = np.arange(200)
    wave = 0.1 * np.sin(2 * np.pi * t / 20)
    run = np.stack([1 / 3 + wave, 1 / 3 - wave, np.full(200, 1 / 3)], axis=-1)
    mirrored = np.stack([1 / 3 - wave, 1 / 3 + wave, np.full(200, 1 / 3)], axis=-1)
    per_run, averaged = dyn.averaging_variances(np.stack([run, mirrored]), window=100)
    np.testing.assert_allclose(per_run, 2 * wave[-100:].var(), rtol=1e-12)
    assert averaged < 1e-30
    same, avg_same = dyn.averaging_variances(np.stack([run, run]), window=100)
    np.testing.assert_allclose(avg_same, same[0], rtol=1e-12)  # in phase: nothing is hidden


def test_averaging_variances_rejects_bad_input():
    with pytest.raises(ValueError, match="trajectories"):
        dyn.averaging_variances(np.zeros((5, 3)), 2)
    with pytest.raises(ValueError, match="window"):
        dyn.averaging_variances(np.zeros((2, 5, 3)), 6)


def test_many_finite_sample_runs_are_seeded_distributions():
    P = pr.cyclic_matrix(0.5)
    a = dyn.run_empirical_mrs_ipo_runs(P, 0.5, 4.0, 0.9, 30, 200, 4, np.random.default_rng(3))
    b = dyn.run_empirical_mrs_ipo_runs(P, 0.5, 4.0, 0.9, 30, 200, 4, np.random.default_rng(3))
    assert a.shape == (4, 31, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(a[:, 0], 1 / 3)
    assert np.ptp(a[:, -1, 0]) > 1e-3  # the runs differ


def test_many_finite_sample_runs_approach_the_population_map_with_many_pairs():
    P = pr.bradley_terry_matrix([1.0, 0.3, -0.4, -0.9])
    population = dyn.run_mrs_ipo(P, 0.5, 3.0, 0.7, 20, record=True).history  # (21, 4) log pi
    runs = dyn.run_empirical_mrs_ipo_runs(P, 0.5, 3.0, 0.7, 20, 10**7, 3, np.random.default_rng(0))
    assert np.abs(runs - np.exp(population)[None]).max() < 5e-3


def test_many_finite_sample_runs_match_the_pairwise_implementation_in_distribution():
    """One round from the same state: the mean and spread of pi_1 over seeds agree between the per-pair
    implementation and the count form."""
    P, n, seeds = pr.cyclic_matrix(0.5), 200, 300
    pairwise = np.stack([dyn.run_empirical_mrs_ipo(P, 0.5, 4.0, 0.9, 1, n, np.random.default_rng(s))[1]
                         for s in range(seeds)])
    counts = dyn.run_empirical_mrs_ipo_runs(P, 0.5, 4.0, 0.9, 1, n, seeds, np.random.default_rng(0))[:, 1]
    se = np.sqrt(pairwise.var(0) / seeds + counts.var(0) / seeds)
    assert np.all(np.abs(pairwise.mean(0) - counts.mean(0)) < 4 * se)
    np.testing.assert_allclose(counts.std(0), pairwise.std(0), rtol=0.25)


def test_many_finite_sample_runs_reject_bad_input():
    with pytest.raises(ValueError, match="runs"):
        dyn.run_empirical_mrs_ipo_runs(pr.cyclic_matrix(0.5), 0.5, 1.0, 1.0, 3, 10, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha"):
        dyn.run_empirical_mrs_ipo_runs(pr.cyclic_matrix(0.5), 1.5, 1.0, 1.0, 3, 10, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="P: takes one"):
        dyn.run_empirical_mrs_ipo_runs(np.stack([pr.cyclic_matrix(0.5)] * 2), 0.5, 1.0, 1.0, 3, 10, 2,
                                       np.random.default_rng(0))
