"""Tests of analysis_lib.preferences: closed forms, known small cases, invariants, error messages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import expit, softmax

from analysis_lib import preferences as pr

R4_COUNTEREXAMPLE = np.array([[0.5, 0.527, 0.719, 0.683],
                              [0.473, 0.5, 0.956, 0.87],
                              [0.281, 0.044, 0.5, 0.649],
                              [0.317, 0.13, 0.351, 0.5]])


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, fragment", [
    (np.ones((2, 3)) / 2, "square"),
    (np.array([[0.5, 1.2], [-0.2, 0.5]]), "[0, 1]"),
    (np.array([[0.5, 0.7], [0.7, 0.5]]), "P + P^T = 1"),
    (np.array([[0.6, 0.5], [0.5, 0.4]]), "P + P^T = 1"),
    (np.array([[0.5, np.nan], [0.5, 0.5]]), "finite"),
])
def test_validate_preference_matrix_errors_name_the_argument(bad, fragment):
    with pytest.raises(ValueError, match="^Q:") as err:
        pr.validate_preference_matrix(bad, name="Q")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_distribution_errors():
    with pytest.raises(ValueError, match="^mu: .*summing to 1"):
        pr.validate_distribution([0.5, 0.6], "mu")
    with pytest.raises(ValueError, match="^mu: .*non-negative"):
        pr.validate_distribution([1.5, -0.5], "mu")
    with pytest.raises(ValueError, match="^mu: must have K = 3"):
        pr.validate_distribution([0.5, 0.5], "mu", K=3)
    batch = pr.validate_distribution(np.full((4, 3), 1 / 3), "mu", K=3)
    assert batch.shape == (4, 3) and batch.dtype == np.float64


def test_parameter_errors():
    P = pr.cyclic_matrix(0.2)
    u = np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="^beta: must be a finite number > 0, got 0.0$"):
        pr.ipo_optimum(P, u, u, 0.0)
    with pytest.raises(ValueError, match="^a: "):
        pr.cyclic_matrix(0.7)
    with pytest.raises(ValueError, match="^temperature: "):
        pr.bradley_terry_matrix([1.0, 0.0], temperature=-1)
    with pytest.raises(ValueError, match="^K: "):
        pr.random_preference_matrix(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="^rng: "):
        pr.random_preference_matrix(3, 0)
    with pytest.raises(ValueError, match="^target: "):
        pr.minimise_population_ipo(P, u, u, 1.0, target="dpo")
    with pytest.raises(ValueError, match="^P: has no proper Smith set"):
        pr.instance_dependent_sampler(P)
    with pytest.raises(ValueError, match="^P: has no Condorcet winner"):
        pr.condorcet_sampler(P)
    with pytest.raises(ValueError, match="^min_mass: "):
        pr.instance_dependent_sampler(pr.bradley_terry_matrix([1.0, 0.0, -1.0]), min_mass=0.5)
    with pytest.raises(ValueError, match="^eps: must satisfy"):
        pr.adversarial_matrix(u, eps=0.4)
    with pytest.raises(ValueError, match="^P: must be transitive"):
        pr.transitive_order(P)
    with pytest.raises(ValueError, match="^strength: "):
        pr.tilt_toward_top(u, 0.0)


# -- constructors and structure ------------------------------------------------------------------------------


def test_constructors_produce_valid_matrices(rng):
    for P in [pr.random_preference_matrix(5, rng, size=(3, 2)), pr.random_bt_matrix(6, rng, size=10),
              pr.random_transitive_matrix(4, rng, size=7), pr.cyclic_matrix(0.5),
              pr.bradley_terry_matrix(rng.standard_normal((4, 5)), temperature=rng.uniform(0.2, 2, 4))]:
        pr.validate_preference_matrix(P, atol=1e-14)
    assert pr.random_preference_matrix(5, rng, size=(3, 2)).shape == (3, 2, 5, 5)
    T = pr.random_transitive_matrix(4, rng, size=50)
    np.testing.assert_array_equal(pr.transitive_order(T), np.tile(np.arange(4), (50, 1)))
    assert not np.any(pr.has_cycle(T))
    A = pr.skew_part(pr.random_preference_matrix(5, rng))
    np.testing.assert_allclose(A, -A.T, atol=1e-15)


def test_bradley_terry_is_sst_and_acyclic(rng):
    P = pr.random_bt_matrix(6, rng, size=200)
    assert np.all(pr.is_strongly_transitive(P))
    assert not np.any(pr.has_cycle(P))
    assert np.all(pr.is_strictly_sst(P))
    np.testing.assert_array_equal(pr.transitive_order(P), np.tile(np.arange(6), (200, 1)))


def test_cycle_detection_and_sst_on_hand_examples():
    C = pr.cyclic_matrix(0.3)
    assert pr.has_cycle(C) is True
    assert pr.is_strongly_transitive(C) is False
    assert pr.is_strictly_sst(C) is False
    # transitive but not SST (the R2 construction): 1 > 2 narrowly, 2 crushes 3, 1 beats 3 narrowly
    P = np.array([[0.5, 0.55, 0.55], [0.45, 0.5, 1.0], [0.45, 0.0, 0.5]])
    assert pr.has_cycle(P) is False and pr.is_strongly_transitive(P) is False
    assert pr.is_strongly_transitive(R4_COUNTEREXAMPLE) is False
    # ties: all-1/2 is SST but not strictly
    half = np.full((3, 3), 0.5)
    assert pr.is_strongly_transitive(half) is True and pr.is_strictly_sst(half) is False


def test_has_cycle_matches_brute_force(rng):
    P = pr.random_preference_matrix(5, rng, size=300)
    brute = [any(p[i, j] > .5 and p[j, k] > .5 and p[k, i] > .5 for i, j, k in itertools.permutations(range(5), 3))
             for p in P]
    np.testing.assert_array_equal(pr.has_cycle(P), brute)


def _smith_brute_force(P):
    K = P.shape[0]
    for m in range(1, K + 1):
        for S in itertools.combinations(range(K), m):
            if all(P[i, j] > 0.5 for i in S for j in range(K) if j not in S):
                return list(S)


def test_condorcet_and_smith_on_hand_examples(rng):
    C = pr.cyclic_matrix(0.2)
    assert pr.condorcet_winner(C) is None
    assert pr.smith_set(C) == [0, 1, 2]
    # 4 responses: a 3-cycle {1, 2, 3} that each beat response 0
    P4 = np.full((4, 4), 0.5)
    P4[1:, 1:] = pr.cyclic_matrix(0.25)
    P4[1:, 0], P4[0, 1:] = 0.7, 0.3
    assert pr.smith_set(P4) == [1, 2, 3] and pr.condorcet_winner(P4) is None
    # a Condorcet winner (response 2) above a cycle
    P5 = np.full((4, 4), 0.5)
    P5[np.ix_([0, 1, 3], [0, 1, 3])] = pr.cyclic_matrix(0.1)
    P5[2, [0, 1, 3]], P5[[0, 1, 3], 2] = 0.6, 0.4
    assert pr.condorcet_winner(P5) == 2 and pr.smith_set(P5) == [2]
    # batched smith_mask equals the brute force
    P = pr.random_preference_matrix(5, rng, size=200)
    mask = pr.smith_mask(P)
    for p, m in zip(P, mask, strict=True):
        assert list(np.flatnonzero(m)) == _smith_brute_force(p)
    winners = pr.condorcet_winner(P)
    for m, w in zip(mask, winners, strict=True):
        assert (w >= 0) == (m.sum() == 1)
        if w >= 0:
            assert m[w]


# -- the IPO optimum (R1) ------------------------------------------------------------------------------------


def test_closed_form_equals_direct_minimisation(rng):
    for K in (3, 4, 5, 5, 6, 7):
        P = pr.random_preference_matrix(K, rng)
        mu, pi_ref = rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K))
        beta = rng.uniform(0.5, 5)
        closed = pr.ipo_optimum(P, mu, pi_ref, beta)
        for target in ("population", "azar"):
            numeric = pr.minimise_population_ipo(P, mu, pi_ref, beta, target=target)
            assert np.abs(numeric - closed).max() < 1e-6
        # the closed form minimises the population loss: small perturbations only increase it
        base = pr.population_ipo_loss(closed, P, mu, pi_ref, beta)
        for _ in range(5):
            pert = closed * np.exp(1e-3 * rng.standard_normal(K))
            assert pr.population_ipo_loss(pert / pert.sum(), P, mu, pi_ref, beta) > base


def test_population_loss_equals_expected_sampled_ipo_loss_up_to_constant(rng):
    K, beta = 4, 2.0
    P, mu, ref = pr.random_preference_matrix(K, rng), rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K))
    c = beta / 2

    def expected_sampled(pi):
        r = np.log(pi / ref)
        h = r[:, None] - r[None, :]
        return mu @ (P * (h - c) ** 2 + (1 - P) * (h + c) ** 2) @ mu

    pis = [rng.dirichlet(np.ones(K)) for _ in range(4)]
    diffs = [expected_sampled(p) - pr.population_ipo_loss(p, P, mu, ref, beta) for p in pis]
    np.testing.assert_allclose(diffs, diffs[0], atol=1e-12)


def test_batched_ipo_optimum_equals_loop(rng):
    B, K = 7, 5
    P = pr.random_preference_matrix(K, rng, size=B)
    mu, ref = rng.dirichlet(np.ones(K), B), rng.dirichlet(np.ones(K), B)
    beta = rng.uniform(0.5, 5, B)
    batched = pr.ipo_optimum(P, mu, ref, beta)
    loop = np.stack([pr.ipo_optimum(P[b], mu[b], ref[b], beta[b]) for b in range(B)])
    np.testing.assert_allclose(batched, loop, rtol=1e-13, atol=1e-15)
    # broadcasting a shared sampler and scalar beta; log form
    shared = pr.ipo_optimum(P, mu[0], ref[0], 2.0, log=True)
    np.testing.assert_allclose(shared[3], pr.ipo_optimum(P[3], mu[0], ref[0], 2.0, log=True), atol=1e-14)
    # large beta stays finite (log-sum-exp)
    assert np.all(np.isfinite(pr.ipo_optimum(P, mu, ref, 1e4, log=True)))


def test_ipo_optimum_closed_form_known_value():
    P = pr.cyclic_matrix(0.5)
    u = np.full(3, 1 / 3)
    np.testing.assert_allclose(pr.ipo_optimum(P, u, u, 5.0), u, atol=1e-15)  # P u = 1/2 everywhere
    mu = np.array([1.0, 0.0, 0.0])  # against response 0 only: scores (1/2, 0, 1)
    expected = softmax(5.0 * np.array([0.5, 0.0, 1.0]))
    np.testing.assert_allclose(pr.ipo_optimum(P, mu, u, 5.0), expected, rtol=1e-13)


def test_empirical_optimum_and_adam_training(rng):
    K, beta = 4, 3.0
    P, mu, ref = pr.random_preference_matrix(K, rng), rng.dirichlet(np.ones(K) * 3), np.full(K, 0.25)
    w, l_ = pr.sample_preference_pairs(P, mu, 4000, np.random.default_rng(1))
    exact = pr.empirical_ipo_optimum(w, l_, ref, beta)
    trained, history = pr.train_tabular_ipo(w, l_, ref, beta, steps=300, lr=0.1, seed=0, device="cpu")
    assert np.abs(trained - exact).max() < 1e-5
    assert history[-1] < history[0]
    # the empirical optimum is near the population optimum at this sample size, and further with fewer samples
    closed = pr.ipo_optimum(P, mu, ref, beta)
    assert np.abs(exact - closed).max() < 0.05
    # regression snapshot of a short fixed-seed minibatch run: values computed once (torch 2.13, CPU) and pinned
    mb, mb_hist = pr.train_tabular_ipo(w[:200], l_[:200], ref, beta, steps=20, lr=0.05, batch_size=16, seed=3,
                                       device="cpu")
    np.testing.assert_allclose(mb, [0.37094609058113803, 0.2699207420532292, 0.19498527585448647,
                                    0.16414789151114623], rtol=0, atol=1e-10)
    np.testing.assert_allclose(mb_hist[[0, -1]], [2.25, 2.4950346440892233], rtol=0, atol=1e-10)
    mb2, _ = pr.train_tabular_ipo(w[:200], l_[:200], ref, beta, steps=20, lr=0.05, batch_size=16, seed=3,
                                  device="cpu")
    np.testing.assert_array_equal(mb, mb2)


def test_batched_count_training_equals_separate_runs_and_reaches_the_empirical_minimum(rng):
    K, beta = 3, 2.0
    P, mu, ref = pr.random_preference_matrix(K, rng), np.full(K, 1 / 3), np.full(K, 1 / 3)
    data = [pr.sample_preference_pairs(P, mu, n, np.random.default_rng(n)) for n in (50, 300, 2000)]
    counts = np.stack([pr.pair_counts(w, l_, K) for w, l_ in data])
    assert counts[1].sum() == 300
    batched, hist = pr.train_tabular_ipo_counts(counts, ref, beta, steps=200, lr=0.1, device="cpu")
    assert hist.shape == (200, 3)
    for b, (w, l_) in enumerate(data):
        single, _ = pr.train_tabular_ipo(w, l_, ref, beta, steps=200, lr=0.1, device="cpu")
        np.testing.assert_allclose(batched[b], single, rtol=1e-12, atol=1e-14)
        exact = pr.empirical_ipo_optimum(w, l_, ref, beta)
        gap = pr.empirical_ipo_loss(counts[b], single, ref, beta) - pr.empirical_ipo_loss(counts[b], exact, ref,
                                                                                          beta)
        assert -1e-12 < gap < 1e-8
    # the mean sampled loss computed from counts equals the mean of per-pair losses
    w, l_ = data[0]
    pi = rng.dirichlet(np.ones(K))
    r = np.log(pi / ref)
    direct = np.mean((r[w] - r[l_] - beta / 2) ** 2)
    assert abs(pr.empirical_ipo_loss(counts[0], pi, ref, beta) - direct) < 1e-12


def test_sampled_labels_follow_P():
    P = pr.cyclic_matrix(0.3)
    mu = np.array([0.5, 0.5, 0.0])
    w, l_ = pr.sample_preference_pairs(P, mu, 20000, np.random.default_rng(0))
    assert not np.any(w == 2) and not np.any(l_ == 2)
    distinct = w != l_
    frac = np.mean(w[distinct] == 0)
    assert abs(frac - 0.8) < 0.02  # P[0, 1] = 0.8


# -- ranking guarantees (R2-R4) ------------------------------------------------------------------------------


def test_c2a_adversarial_example_numbers():
    P = pr.adversarial_matrix(np.full(3, 1 / 3), eps=0.05)
    np.testing.assert_allclose(P, [[.5, .55, .55], [.45, .5, 1], [.45, 0, .5]], atol=1e-15)
    np.testing.assert_allclose(pr.win_rates(P, np.full(3, 1 / 3)), [0.533, 0.650, 0.317], atol=5e-4)
    v = pr.ranking_violations(P, np.full(3, 1 / 3))
    assert v == {"condorcet_top": True, "smith_top": True, "order": True}


def test_adversarial_matrix_breaks_every_fixed_sampler(rng):
    samplers = [rng.dirichlet(np.ones(K)) for K in (3, 4, 5, 6) for _ in range(5)]
    samplers += [np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.0, 1.0, 0.0]), np.array([0.9, 0.05, 0.05])]
    for mu in samplers:
        P = pr.adversarial_matrix(mu)
        assert not pr.has_cycle(P) and not pr.is_strongly_transitive(P)
        assert all(pr.ranking_violations(P, mu).values())
        # a large enough eps (beyond the threshold) cannot be asked for
        with pytest.raises(ValueError):
            pr.adversarial_matrix(mu, eps=pr.adversarial_threshold(mu))


def test_lp_sampler_is_strictly_smith_top(rng):
    count = 0
    for K in (3, 4, 5, 6):
        P = pr.random_preference_matrix(K, rng, size=40)
        for p in P[~pr.smith_mask(P).all(-1)]:
            mu, gap = pr.instance_dependent_sampler(p)
            assert gap > 0 and mu.min() >= 1e-3 - 1e-12
            assert not pr.smith_top_violated(p, mu) and not pr.condorcet_top_violated(p, mu)
            count += 1
    assert count >= 50


def test_lp_sampler_puts_the_condorcet_winner_on_top_of_the_optimum_with_a_uniform_reference_only():
    """Issue 9: the guarantee ranks pi* / pi_ref; pi* itself only with a uniform reference (its docstring)."""
    rng = np.random.default_rng(7)
    on_top = {"uniform": 0, "random": 0}
    n = 0
    for K in (3, 4, 5):
        P = pr.random_preference_matrix(K, rng, size=60)
        winners = pr.condorcet_winner(P)
        for p, c in zip(P[winners >= 0], winners[winners >= 0], strict=True):
            mu, _ = pr.instance_dependent_sampler(p)
            for kind, ref in (("uniform", np.full(K, 1 / K)), ("random", rng.dirichlet(np.ones(K)))):
                on_top[kind] += int(np.argmax(pr.ipo_optimum(p, mu, ref, 1.0)) == c)
            n += 1
    assert n >= 50 and on_top["uniform"] == n and on_top["random"] < 0.8 * n


def test_condorcet_sampler_puts_the_winner_on_top(rng):
    P = pr.random_preference_matrix(5, rng, size=300)
    winners = pr.condorcet_winner(P)
    assert np.sum(winners >= 0) > 20
    for p in P[winners >= 0]:
        mu, eps = pr.condorcet_sampler(p)
        assert 0 < eps <= 0.01 and not pr.condorcet_top_violated(p, mu)


def test_sst_preserves_order_under_any_sampler(rng):
    P = pr.random_bt_matrix(5, rng, size=1000, temperature=(0.2, 2.0))
    mu = rng.dirichlet(np.ones(5), 1000)
    assert not np.any(pr.order_violated(P, mu))


def test_r4_counterexample_lp_value():
    assert list(pr.transitive_order(R4_COUNTEREXAMPLE)) == [0, 1, 2, 3]
    mu, gap = pr.order_preserving_sampler(R4_COUNTEREXAMPLE, min_mass=1e-6)
    assert gap < 0 and abs(gap - (-0.0066)) < 5e-4
    # at K = 3 a transitive P always admits an order-preserving sampler (near delta_2)
    _, gap3 = pr.order_preserving_sampler(R4_COUNTEREXAMPLE[:3, :3])
    assert gap3 > 0


# -- on-policy tilts (R5) ------------------------------------------------------------------------------------


def test_r5_worked_example():
    s = np.array([2.0, 1.0, 0.0, -1.0])
    P = pr.bradley_terry_matrix(s)
    u = np.full(4, 0.25)
    skewed = softmax(1.5 * s)
    np.testing.assert_allclose(skewed, [0.779, 0.174, 0.039, 0.009], atol=5e-4)
    np.testing.assert_allclose(pr.win_rates(P, u), [0.766, 0.595, 0.405, 0.234], atol=5e-4)
    np.testing.assert_allclose(pr.win_rates(P, skewed), [0.559, 0.332, 0.165, 0.072], atol=5e-4)
    np.testing.assert_allclose(pr.adjacent_gaps(P, u), [0.171, 0.190, 0.171], atol=5e-4)
    np.testing.assert_allclose(pr.adjacent_gaps(P, skewed), [0.227, 0.167, 0.093], atol=5e-4)
    assert abs(pr.entropy(pr.ipo_optimum(P, u, u, 5.0)) - 1.016) < 5e-4
    assert abs(pr.entropy(pr.ipo_optimum(P, skewed, u, 5.0)) - 0.989) < 5e-4


def test_tilt_dominates_and_condition_implies_wider_gap(rng):
    P = pr.random_bt_matrix(5, rng, size=500, temperature=(0.2, 3.0))
    mu = rng.dirichlet(np.ones(5), 500)
    tilted = pr.tilt_toward_top(mu, 0.7)
    assert np.all(pr.first_order_dominates(tilted, mu, strict=True))
    cond = pr.monotone_difference_pairs(P)
    assert np.all(cond[:, 0, 1])  # BT: the top pair always meets the condition
    assert not np.any(cond[:, 1, 0])  # only pairs (above, below)
    widened = pr.pair_score_gaps(P, tilted) > pr.pair_score_gaps(P, mu)
    assert np.all(widened[cond])


def test_entropy_and_first_order_dominance_small_cases():
    assert pr.entropy([1.0, 0.0, 0.0]) == 0.0
    assert abs(pr.entropy(np.full(4, 0.25)) - np.log(4)) < 1e-15
    assert pr.first_order_dominates([0.6, 0.3, 0.1], [0.2, 0.5, 0.3]) is True
    assert pr.first_order_dominates([0.2, 0.5, 0.3], [0.6, 0.3, 0.1]) is False
    with pytest.raises(ValueError, match="^p: "):
        pr.entropy([-0.1, 1.1])


# -- minibatch SGD on sampled pairs ---------------------------------------------------------------------------


def test_sgd_first_step_matches_the_hand_computed_ipo_gradient():
    """One SGD step from log pi_ref: h = 0 for every pair, so the minibatch-mean gradient of (h - beta/2)^2 with
    respect to the logits is mean_b 2 (0 - beta/2) (e_w - e_l) (the softmax terms cancel in h)."""
    rng = np.random.default_rng(20)
    K, beta, lr, B, n = 4, 2.5, 0.7, 10, 10
    ref = rng.dirichlet(np.ones(K) * 2)
    w, l_ = pr.sample_preference_pairs(pr.random_preference_matrix(K, rng), np.full(K, 0.25), n, rng)
    pi, steps = pr.train_tabular_ipo_sgd([(w, l_)], ref, beta, epochs=1, batch_size=B, lr=lr, decay_steps=5,
                                         seed=7, device="cpu")
    assert steps.tolist() == [1]
    idx = np.random.default_rng(np.random.SeedSequence(7).spawn(1)[0]).integers(n, size=(1, B))[0]
    grad = np.zeros(K)
    for i in idx:
        e = np.zeros(K)
        e[w[i]] += 1.0
        e[l_[i]] -= 1.0
        grad += 2 * (0.0 - beta / 2) * e / B
    np.testing.assert_allclose(pi, softmax(np.log(ref) - lr * grad)[None], atol=1e-14)


def test_sgd_runs_are_independent_of_each_other_and_reach_the_empirical_minimiser():
    rng = np.random.default_rng(21)
    K, beta = 3, 2.0
    P, mu, ref = pr.random_preference_matrix(K, rng), np.full(K, 1 / 3), np.full(K, 1 / 3)
    d0, d1, d2 = (pr.sample_preference_pairs(P, mu, n, rng) for n in (2000, 300, 50))
    a, steps_a = pr.train_tabular_ipo_sgd([d0, d1], ref, beta, epochs=20, seed=4, device="cpu")
    b, steps_b = pr.train_tabular_ipo_sgd([d0, d2], ref, beta, epochs=20, seed=4, device="cpu")
    np.testing.assert_array_equal(a[0], b[0])  # run 0 does not see the other data sets
    assert steps_a.tolist() == [625, 94] and steps_b.tolist() == [625, 16]
    exact = pr.empirical_ipo_optimum(*d0, ref, beta)
    assert np.abs(a[0] - exact).max() < 5e-3  # decaying steps: close to the minimiser of the empirical loss
    gap = pr.empirical_ipo_loss(pr.pair_counts(*d0, K), a[0], ref, beta) - pr.empirical_ipo_loss(
        pr.pair_counts(*d0, K), exact, ref, beta)
    assert 0 <= gap < 1e-4


def test_sgd_error_to_the_closed_form_shrinks_as_the_samples_grow():
    rng = np.random.default_rng(22)
    K, beta = 4, 3.0
    P, mu, ref = pr.random_preference_matrix(K, rng), rng.dirichlet(np.full(K, 3.0)), np.full(K, 0.25)
    target = pr.ipo_optimum(P, mu, ref, beta)
    sizes, repeats = (300, 3000, 30000), 4
    data = [pr.sample_preference_pairs(P, mu, n, rng) for n in sizes for _ in range(repeats)]
    pi, _ = pr.train_tabular_ipo_sgd(data, ref, beta, seed=0, device="cpu")
    err = np.abs(pi - target).max(-1).reshape(len(sizes), repeats).mean(-1)
    assert np.all(np.diff(err) < 0) and err[-1] < 0.25 * err[0]


def test_sgd_bad_inputs_name_the_argument():
    u = np.full(3, 1 / 3)
    data = [(np.array([0, 1]), np.array([1, 2]))]
    with pytest.raises(ValueError, match="^datasets: "):
        pr.train_tabular_ipo_sgd([], u, 1.0)
    with pytest.raises(ValueError, match="^winners, losers: "):
        pr.train_tabular_ipo_sgd([(np.array([0, 3]), np.array([1, 2]))], u, 1.0)
    with pytest.raises(ValueError, match="^pi_ref: "):
        pr.train_tabular_ipo_sgd(data, [0.5, 0.5, 0.0], 1.0)
    with pytest.raises(ValueError, match="^epochs: "):
        pr.train_tabular_ipo_sgd(data, u, 1.0, epochs=0)
    with pytest.raises(ValueError, match="^batch_size: "):
        pr.train_tabular_ipo_sgd(data, u, 1.0, batch_size=0)
    with pytest.raises(ValueError, match="^decay_steps: "):
        pr.train_tabular_ipo_sgd(data, u, 1.0, decay_steps=1.5)
    with pytest.raises(ValueError, match="^lr: "):
        pr.train_tabular_ipo_sgd(data, u, 1.0, lr=-1.0)


# -- Bradley-Terry test and SST matrices that are not Bradley-Terry -------------------------------------------


def test_bradley_terry_residual_known_value_and_bt_matrices():
    a, b, c = 0.4, 1.1, 0.9  # logits of P_12, P_23, P_13
    P = pr._from_upper(np.array([[0, expit(a), expit(c)], [0, 0, expit(b)], [0, 0, 0]]))
    np.testing.assert_allclose(pr.bradley_terry_residual(P), abs(a + b - c) / 3, atol=1e-14)
    assert not pr.is_bradley_terry(P)
    bt = pr.random_bt_matrix(6, np.random.default_rng(0), size=500, temperature=(0.05, 2.0))  # some near 0/1
    assert np.all(pr.is_bradley_terry(bt)) and np.max(pr.bradley_terry_residual(bt)) < 1e-10
    assert pr.is_bradley_terry(pr.bradley_terry_matrix([a + b, b, 0.0]))
    assert not pr.is_bradley_terry(pr.cyclic_matrix(0.3))
    assert pr.bradley_terry_residual(np.array([[0.5, 1.0], [0.0, 0.5]])) == np.inf
    with pytest.raises(ValueError, match="^tol: "):
        pr.is_bradley_terry(P, tol=-1)


@pytest.mark.parametrize("K", [3, 4, 6, 8])
def test_random_sst_matrices_are_strictly_sst_and_not_bradley_terry(K):
    rng = np.random.default_rng(K)
    P, order = pr.random_sst_matrix(K, rng, size=400, sort=False, return_order=True)
    assert P.shape == (400, K, K) and order.shape == (400, K)
    pr.validate_preference_matrix(P)
    assert np.all(pr.is_strictly_sst(P)) and np.all(pr.is_strongly_transitive(P))
    assert not np.any(pr.is_bradley_terry(P))
    np.testing.assert_array_equal(pr.transitive_order(P), order)
    assert not np.all(order == np.arange(K))  # a random total order, not always the identity
    assert P.max() < 1
    # sorted: response 0 best, and rows dominate entry-wise down the ranking (the working form of SST)
    S = pr.random_sst_matrix(K, rng, size=200)
    np.testing.assert_array_equal(pr.transitive_order(S), np.broadcast_to(np.arange(K), (200, K)))
    assert np.all(np.diff(S, axis=-2) < 0)
    # and hence every sampler preserves the order (R4)
    assert not np.any(pr.order_violated(P, rng.dirichlet(np.ones(K), 400)))


def test_random_sst_matrix_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="^spread: "):
        pr.random_sst_matrix(4, rng, spread=1.0)
    with pytest.raises(ValueError, match="^K: "):
        pr.random_sst_matrix(1, rng)
    with pytest.raises(ValueError, match="^rng: "):
        pr.random_sst_matrix(3, 0)


def test_ipo_loss_and_minimiser_reject_zero_reference_mass():
    P = pr.cyclic_matrix(0.3)
    u = np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="^pi_ref: must put positive mass"):
        pr.population_ipo_loss(u, P, u, [0.5, 0.5, 0.0], 1.0)
    with pytest.raises(ValueError, match="^pi: must put positive mass"):
        pr.population_ipo_loss([0.5, 0.5, 0.0], P, u, u, 1.0)
    with pytest.raises(ValueError, match="^pi_ref: must put positive mass"):
        pr.minimise_population_ipo(P, u, [0.5, 0.5, 0.0], 1.0)
    with pytest.raises(ValueError, match="^P: population_ipo_loss takes one"):
        pr.population_ipo_loss(u, np.stack([P, P]), u, u, 1.0)


# -- bad input: every public function answers with one line that names the argument (issue 9) ----------------

U3 = np.full(3, 1 / 3)
REF3 = np.array([0.5, 0.3, 0.2])
BT3 = pr.bradley_terry_matrix([1.0, 0.0, -1.0])
COUNTS3 = np.array([[0, 3, 1], [1, 0, 2], [0, 1, 0]], dtype=float)
WINNERS, LOSERS = np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2])
NAN = float("nan")


def _numbers(*out_of_range):
    """Not numbers (a string, None, a bool, a complex number, nan) and the given out-of-range values."""
    return ["2", None, True, 1j, NAN, *out_of_range]


def _integers(low):
    return [2.0, True, "3", None, low - 1]


def _matrices(P):
    """Not real matrices, or not square."""
    return ["abc", None, P + 0j, P > 0.5, np.ones((2, 3)) / 2]


def _distributions(x):
    """Not real arrays (a bool distribution included), or with K = 4 instead of 3."""
    return ["abc", None, np.asarray(x) + 0j, np.eye(3, dtype=bool)[0], np.full(4, 0.25)]


_ORDERS = ["abc", [0, 1], [0, 0, 1], [0.0, 1.0, 2.0], [0, 1, 5]]
_TOL = {"tol": _numbers(-1)}

# (function, a call that succeeds, {argument: bad values}); the table expands to one case per bad value
BAD_INPUTS = [
    (pr.validate_preference_matrix, dict(P=BT3), dict(P=_matrices(BT3), atol=_numbers(-1))),
    (pr.validate_distribution, dict(x=U3, name="x"), dict(x=_distributions(U3)[:4], K=_integers(1)[:-2] + [0],
                                                           atol=_numbers(-1))),
    (pr.bradley_terry_matrix, dict(scores=[1.0, 0.0]),
     dict(scores=["ab", None, [1j, 0], [True, False], [1.0], [0.0, NAN]], temperature=_numbers(0))),
    (pr.cyclic_matrix, dict(a=0.3), dict(a=_numbers(0, 0.7))),
    (pr.random_preference_matrix, dict(K=3, rng=np.random.default_rng(0)),
     dict(K=_integers(2), rng=[0, None], size=["3", 2.5, -1, (2, None)])),
    (pr.random_transitive_matrix, dict(K=3, rng=np.random.default_rng(0)), dict(K=_integers(2), rng=[0, None])),
    (pr.random_bt_matrix, dict(K=3, rng=np.random.default_rng(0), size=2),
     dict(K=_integers(2), rng=[0, None], temperature=_numbers(0) + [(2, 1), ("a", 1), (1,), np.ones(3)],
          sort=["yes", None], return_scores=[1, None])),
    (pr.random_sst_matrix, dict(K=3, rng=np.random.default_rng(0)),
     dict(K=_integers(2), rng=[0, None], spread=_numbers(0, 1), sort=["no"], return_order=[0])),
    (pr.skew_part, dict(P=BT3), dict(P=_matrices(BT3))),
    (pr.is_strongly_transitive, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.bradley_terry_residual, dict(P=BT3), dict(P=_matrices(BT3))),
    (pr.is_bradley_terry, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.has_cycle, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.is_strictly_sst, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.condorcet_winner, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.smith_mask, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.smith_set, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.transitive_order, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.win_rates, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3))),
    (pr.ipo_optimum, dict(P=BT3, mu=U3, pi_ref=REF3, beta=1.0),
     dict(P=_matrices(BT3), mu=_distributions(U3), pi_ref=_distributions(REF3), beta=_numbers(0), log=[1, "no"])),
    (pr.population_ipo_loss, dict(pi=U3, P=BT3, mu=U3, pi_ref=REF3, beta=1.0),
     dict(pi=_distributions(U3) + [np.full((2, 3), 1 / 3)], P=_matrices(BT3), mu=_distributions(U3),
          pi_ref=_distributions(REF3), beta=_numbers(0))),
    (pr.minimise_population_ipo, dict(P=BT3, mu=U3, pi_ref=REF3, beta=1.0),
     dict(P=_matrices(BT3), mu=_distributions(U3) + [np.full((2, 3), 1 / 3)], pi_ref=_distributions(REF3),
          beta=_numbers(0), target=[1, None, "dpo"], gtol=_numbers(0))),
    (pr.sample_preference_pairs, dict(P=BT3, mu=U3, n=5, rng=np.random.default_rng(0)),
     dict(P=_matrices(BT3), mu=_distributions(U3), n=_integers(1), rng=[0, None])),
    (pr.empirical_ipo_optimum, dict(winners=WINNERS, losers=LOSERS, pi_ref=REF3, beta=1.0),
     dict(pi_ref=_distributions(REF3)[:4], beta=_numbers(0))),
    (pr.pair_counts, dict(winners=WINNERS, losers=LOSERS, K=3), dict(K=_integers(2))),
    (pr.empirical_ipo_loss, dict(counts=COUNTS3, pi=U3, pi_ref=REF3, beta=1.0),
     dict(counts=["a", None, COUNTS3 + 1j, -COUNTS3, COUNTS3 * NAN], pi=_distributions(U3),
          pi_ref=_distributions(REF3), beta=_numbers(0))),
    (pr.train_tabular_ipo_counts, dict(counts=COUNTS3, pi_ref=REF3, beta=1.0, steps=2, device="cpu"),
     dict(counts=["a", None, COUNTS3 + 1j], pi_ref=_distributions(REF3), beta=_numbers(0), steps=_integers(1),
          lr=_numbers(0))),
    (pr.train_tabular_ipo, dict(winners=WINNERS, losers=LOSERS, pi_ref=REF3, beta=1.0, steps=2, device="cpu"),
     dict(pi_ref=_distributions(REF3)[:4], beta=_numbers(0), steps=_integers(1), lr=_numbers(0),
          batch_size=[2.0, True, "3", 0], seed=_integers(0))),
    (pr.train_tabular_ipo_sgd, dict(datasets=[(WINNERS, LOSERS)], pi_ref=REF3, beta=1.0, epochs=0.5, device="cpu"),
     dict(pi_ref=_distributions(REF3)[:4], beta=_numbers(0), epochs=_numbers(0), batch_size=_integers(1),
          lr=_numbers(0), decay_steps=_integers(1), seed=_integers(0))),
    (pr.instance_dependent_sampler, dict(P=BT3), dict(P=_matrices(BT3), min_mass=_numbers(-0.1, 0.5))),
    (pr.order_preserving_sampler, dict(P=BT3), dict(P=_matrices(BT3), min_mass=_numbers(0.5), order=_ORDERS)),
    (pr.condorcet_sampler, dict(P=BT3),
     dict(P=_matrices(BT3), eps=_numbers(0, 1), shrink=_numbers(0, 1), max_halvings=_integers(0))),
    (pr.adversarial_threshold, dict(mu=U3), dict(mu=_distributions(U3)[:4] + [[0.5, 0.5]])),
    (pr.adversarial_matrix, dict(mu=U3), dict(mu=_distributions(U3)[:4], eps=["2", True, 1j, NAN, 0, 0.4])),
    (pr.condorcet_top_violated, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3), **_TOL)),
    (pr.smith_top_violated, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3), **_TOL)),
    (pr.order_violated, dict(P=BT3, mu=U3),
     dict(P=_matrices(BT3), mu=_distributions(U3), order=_ORDERS + [np.tile([0, 1, 2], (2, 1))], **_TOL)),
    (pr.ranking_violations, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3))),
    (pr.tilt_toward_top, dict(mu=U3, strength=1.0), dict(mu=_distributions(U3)[:4], strength=_numbers(0),
                                                          order=_ORDERS)),
    (pr.first_order_dominates, dict(mu_new=U3, mu_old=REF3),
     dict(mu_new=_distributions(U3)[:4], mu_old=_distributions(REF3), order=_ORDERS, strict=[1, "yes"], **_TOL)),
    (pr.pair_score_gaps, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3))),
    (pr.adjacent_gaps, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3), order=_ORDERS)),
    (pr.monotone_difference_pairs, dict(P=BT3), dict(P=_matrices(BT3), order=_ORDERS, **_TOL)),
    (pr.entropy, dict(p=U3), dict(p=["abc", None, U3 + 1j, [-0.1, 1.1]], axis=[1.0, "a", None, 5, True])),
    (pr.scale_attributes, dict(values=np.arange(6.0).reshape(3, 2)),
     dict(values=["a", None, np.ones(3) + 1j, [[1.0, NAN]]], method=[1, None, "rank"], n_bins=_integers(2))),
    (pr.random_attribute_matrices, dict(attributes=np.ones((2, 3, 2)), rng=np.random.default_rng(0)),
     dict(attributes=["a", None, np.ones((2, 3, 2)) + 1j, np.ones((3, 2))], rng=[0, None], draws=_integers(1),
          temperature=_numbers(0))),
    (pr.synthetic_helpsteer_scores, dict(n_prompts=2, rng=np.random.default_rng(0)),
     dict(n_prompts=_integers(1), rng=[0, None], K=_integers(2), means=["a", None, [1j] * 5], slopes=[[True] * 5],
          noise=_numbers(-1))),
    (pr.preference_structure, dict(P=BT3), dict(P=_matrices(BT3), **_TOL)),
    (pr.labelled_pair_probabilities, dict(P=BT3, mu=U3), dict(P=_matrices(BT3), mu=_distributions(U3))),
    (pr.sample_pair_counts, dict(P=BT3, mu=U3, n=5, rng=np.random.default_rng(0)),
     dict(P=_matrices(BT3), mu=_distributions(U3), n=_integers(1), rng=[0, None])),
    (pr.empirical_ipo_optimum_counts, dict(counts=COUNTS3, pi_ref=REF3, beta=1.0),
     dict(counts=["a", None, COUNTS3 + 1j, -COUNTS3], pi_ref=_distributions(REF3), beta=_numbers(0))),
]


def _cases(table):
    return [pytest.param(f, good, arg, values, id=f"{f.__name__}-{arg}")
            for f, good, bads in table for arg, values in bads.items()]


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


@pytest.mark.parametrize("f, good, arg, bad_values", _cases(BAD_INPUTS))
def test_bad_input_is_a_one_line_error_naming_the_argument(f, good, arg, bad_values):
    for bad in bad_values:
        assert_one_line_error_naming(arg, lambda bad=bad: _call(f, good, **{arg: bad}), f"{arg}={bad!r}")


@pytest.mark.parametrize("call, name", [
    (lambda: pr.ipo_optimum(np.stack([BT3] * 4), np.full((3, 3), 1 / 3), U3, 1.0), "mu"),
    (lambda: pr.ipo_optimum(np.stack([BT3] * 4), U3, np.full((3, 3), 1 / 3), 1.0), "pi_ref"),
    (lambda: pr.ipo_optimum(np.stack([BT3] * 4), U3, U3, np.ones(3)), "beta"),
    (lambda: pr.win_rates(np.stack([BT3] * 4), np.full((3, 3), 1 / 3)), "mu"),
    (lambda: pr.labelled_pair_probabilities(np.stack([BT3] * 4), np.full((3, 3), 1 / 3)), "mu"),
    (lambda: pr.condorcet_top_violated(np.stack([BT3] * 4), np.full((3, 3), 1 / 3)), "mu"),
    (lambda: pr.order_violated(np.stack([BT3] * 4), U3, order=np.tile([0, 1, 2], (3, 1))), "order"),
    (lambda: pr.first_order_dominates(np.full((4, 3), 1 / 3), np.full((3, 3), 1 / 3)), "mu_old"),
    (lambda: pr.empirical_ipo_loss(np.stack([COUNTS3] * 4), np.full((3, 3), 1 / 3), U3, 1.0), "pi"),
    (lambda: pr.empirical_ipo_optimum_counts(np.stack([COUNTS3] * 4), U3, np.ones(3)), "beta"),
    (lambda: pr.train_tabular_ipo_counts(np.stack([COUNTS3] * 4), np.full((3, 3), 1 / 3), 1.0), "pi_ref"),
    (lambda: pr.bradley_terry_matrix(np.zeros((4, 3)), np.ones(3)), "temperature"),
    (lambda: pr.random_bt_matrix(3, np.random.default_rng(0), size=4, temperature=np.ones(3)), "temperature"),
], ids=["ipo_optimum-mu", "ipo_optimum-pi_ref", "ipo_optimum-beta", "win_rates", "labelled_pair_probabilities",
        "condorcet_top_violated", "order_violated", "first_order_dominates", "empirical_ipo_loss",
        "empirical_ipo_optimum_counts", "train_tabular_ipo_counts", "bradley_terry_matrix", "random_bt_matrix"])
def test_mismatched_batch_shapes_name_the_arguments(call, name):
    message = assert_one_line_error_naming(name, call)
    assert "broadcast" in message


def test_the_issues_bad_inputs_of_ipo_optimum():
    """Issue 9: a string beta was accepted, a complex P silently cast, beta=None said 'must be finite'."""
    for beta, shown in (("2", "'2'"), (None, "None"), (True, "True"), (1j, "1j")):
        with pytest.raises(ValueError, match=rf"^beta: must be a finite number > 0, got {shown}$"):
            pr.ipo_optimum(BT3, U3, U3, beta)
    with pytest.raises(ValueError, match=r"^P: must be an array of real numbers, got an array of complex128"):
        pr.ipo_optimum(BT3 + 0j, U3, U3, 1.0)
    with pytest.raises(ValueError, match=r"^mu: must be an array of real numbers, got an array of bool"):
        pr.ipo_optimum(BT3, np.array([True, False, False]), U3, 1.0)
