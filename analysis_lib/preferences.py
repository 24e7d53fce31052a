"""Preference matrices and the one-shot IPO optimum (Chen, He, Jordan & Yao 2026).

A preference matrix P over K responses has P[i, j] = Pr(i beats j), P + P^T = 1 and diagonal 1/2. A sampler
mu is a distribution over the K responses; pairs are drawn from mu x mu. Everything here is numpy/scipy in
float64 and, where cheap, batched over leading axes: P of shape (..., K, K), distributions of shape (..., K).

Contents (one home per idea):

* validation: :func:`validate_preference_matrix`, :func:`validate_distribution` (the argument checks shared with
  :mod:`analysis_lib.dynamics` live in :mod:`analysis_lib.checks`: every bad argument is a one-line ValueError
  ``"<argument>: must be <allowed>, got <value>"``);
* constructors: :func:`bradley_terry_matrix`, :func:`cyclic_matrix`, :func:`random_preference_matrix`,
  :func:`random_bt_matrix`, :func:`random_sst_matrix` (SST, generally not BT), :func:`random_transitive_matrix`;
* structure: :func:`is_bradley_terry`, :func:`bradley_terry_residual`, :func:`is_strongly_transitive`,
  :func:`is_strictly_sst`, :func:`has_cycle`,
  :func:`condorcet_winner`, :func:`smith_set`, :func:`smith_mask`, :func:`transitive_order`;
* the IPO optimum (R1): :func:`ipo_optimum` (closed form pi* ~ pi_ref * exp(beta P mu)),
  :func:`population_ipo_loss`, :func:`minimise_population_ipo` (BFGS), :func:`empirical_ipo_optimum`
  (least squares on sampled pairs), :func:`sample_preference_pairs`, :func:`pair_counts`, their batched count
  forms :func:`labelled_pair_probabilities`, :func:`sample_pair_counts`, :func:`empirical_ipo_optimum_counts`,
  :func:`empirical_ipo_loss`, :func:`train_tabular_ipo` / :func:`train_tabular_ipo_counts` (Adam on
  sampled pairs with the library's ``ipo_loss``) and :func:`train_tabular_ipo_sgd` (minibatch SGD on sampled
  pairs, many data sets at once);
* samplers and ranking guarantees (R2-R4): :func:`win_rates`, :func:`instance_dependent_sampler` (LP),
  :func:`order_preserving_sampler` (LP), :func:`condorcet_sampler`, :func:`adversarial_matrix`,
  :func:`adversarial_threshold`, :func:`condorcet_top_violated`, :func:`smith_top_violated`,
  :func:`order_violated`, :func:`ranking_violations`;
* on-policy tilts (R5): :func:`tilt_toward_top`, :func:`first_order_dominates`, :func:`pair_score_gaps`,
  :func:`adjacent_gaps`, :func:`monotone_difference_pairs`, :func:`entropy`, :func:`skew_part`;
* matrices from per-response attributes (Section 5): :func:`scale_attributes`,
  :func:`random_attribute_matrices`, :func:`synthetic_helpsteer_scores`, :func:`preference_structure`.

The statements these functions test are, in the paper's notes, partly *reconstructions* (tagged
[derived]/[summary] in the project's reference document); the chapters say so.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy.optimize import linprog, minimize
from scipy.special import expit, logsumexp

from analysis_lib.checks import (
    array_axis,
    batch_shape,
    distribution,
    finite_array,
    flag,
    generator,
    in_interval,
    int_at_least,
    non_negative,
    one_of,
    positive,
    positive_log,
    real_array,
)
from analysis_lib.runtime import torch_threads

# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------


def validate_preference_matrix(P, name: str = "P", atol: float = 1e-9) -> np.ndarray:
    """Return P as float64 after checking it is a preference matrix (or a batch of them, shape (..., K, K)).

    Raises ValueError naming ``name`` when P is not an array of real numbers, not square, has non-finite
    entries or entries outside [0, 1], or violates P + P^T = 1 (which also forces the diagonal to 1/2), each up
    to ``atol``.
    """
    atol = non_negative("atol", atol)
    arr = real_array(name, P)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] < 2:
        raise ValueError(f"{name}: must be a square K x K matrix (K >= 2) or a batch (..., K, K), "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: entries must be finite probabilities in [0, 1]")
    if arr.min() < -atol or arr.max() > 1 + atol:
        raise ValueError(f"{name}: entries must lie in [0, 1], got range [{arr.min():.3g}, {arr.max():.3g}]")
    dev = np.abs(arr + np.swapaxes(arr, -1, -2) - 1.0).max()
    if dev > atol:
        raise ValueError(f"{name}: must satisfy P + P^T = 1 with diagonal 1/2 (max deviation {dev:.3g})")
    return arr


def validate_distribution(x, name: str, K: int | None = None, atol: float = 1e-9) -> np.ndarray:
    """Return x as float64 after checking it is a distribution on its last axis (batched ok).

    Raises ValueError naming ``name`` for a non-real type, negative or non-finite entries, sums other than 1 (up
    to ``atol``) or, when ``K`` is given, a last axis of another length (:func:`analysis_lib.checks.distribution`).
    """
    return distribution(name, x, K, atol)


def _single(name: str, arr: np.ndarray) -> np.ndarray:
    """A validated distribution (or its log) that must be a single one, shape (K,): for one-instance functions."""
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be one distribution (shape (K,)), got shape {arr.shape}")
    return arr


def _check_K(K) -> int:
    return int_at_least("K", K, 2)


def _size_shape(size) -> tuple[int, ...]:
    """The batch shape of a constructor's ``size``: None (one matrix), an integer or a tuple of integers >= 0."""
    if size is None:
        return ()
    return tuple(int_at_least("size", n, 0) for n in (size if isinstance(size, (tuple, list)) else (size,)))


def _broadcasts_to(name: str, shape: tuple, target: tuple, target_name: str) -> None:
    """Raise unless an argument of batch shape ``shape`` broadcasts to the batch shape ``target`` (which it may
    not enlarge)."""
    if batch_shape(**{name: shape, target_name: target}) != target:
        raise ValueError(f"{name}: must broadcast to the batch shape {target} of {target_name}, got shape {shape}")


def _check_order(order, K: int, batched: bool = False) -> np.ndarray:
    """A ranking, best first: a permutation of 0..K-1 (with ``batched``, one per batch element, (..., K))."""
    try:
        arr = np.asarray(order)
    except (ValueError, TypeError):
        arr = np.asarray(None)
    ok = (arr.dtype.kind in "iu" and arr.ndim >= 1 and (batched or arr.ndim == 1) and arr.shape[-1] == K
          and np.all(np.sort(arr, axis=-1) == np.arange(K)))
    if not ok:
        many = " (or one per batch element, shape (..., K))" if batched else ""
        raise ValueError(f"order: must be a permutation of 0..{K - 1}{many}, got {order!r}")
    return arr


# ----------------------------------------------------------------------------------------------------------
# constructors
# ----------------------------------------------------------------------------------------------------------


def bradley_terry_matrix(scores, temperature=1.0) -> np.ndarray:
    """P[i, j] = sigmoid((s_i - s_j) / temperature) (Bradley & Terry 1952); scores (..., K), temperature > 0
    (a scalar or one per batch element)."""
    s = finite_array("scores", scores)
    if s.ndim < 1 or s.shape[-1] < 2:
        raise ValueError(f"scores: must be finite with shape (..., K), K >= 2, got shape {s.shape}")
    T = real_array("temperature", temperature, positive)
    batch_shape(scores=s.shape[:-1], temperature=T.shape)
    diff = (s[..., :, None] - s[..., None, :]) / T[..., None, None]
    return expit(diff)


def cyclic_matrix(a: float) -> np.ndarray:
    """The rock-paper-scissors matrix [[.5, .5+a, .5-a], [.5-a, .5, .5+a], [.5+a, .5-a, .5]], 0 < a <= 1/2:
    1 beats 2, 2 beats 3, 3 beats 1, each with probability 1/2 + a."""
    a = in_interval("a", a, 0.0, 0.5, low_open=True)
    return np.array([[0.5, 0.5 + a, 0.5 - a], [0.5 - a, 0.5, 0.5 + a], [0.5 + a, 0.5 - a, 0.5]])


def _from_upper(upper: np.ndarray) -> np.ndarray:
    """Complete a matrix whose strict upper triangle holds P[i, j] (i < j) into a preference matrix."""
    K = upper.shape[-1]
    iu = np.triu_indices(K, 1)
    P = np.full(upper.shape, 0.5)
    P[..., iu[0], iu[1]] = upper[..., iu[0], iu[1]]
    P[..., iu[1], iu[0]] = 1.0 - upper[..., iu[0], iu[1]]
    return P


def random_preference_matrix(K: int, rng: np.random.Generator, size=None) -> np.ndarray:
    """A general (usually non-BT) preference matrix: upper-triangle entries i.i.d. U(0, 1). Shape
    (*size, K, K)."""
    K, rng = _check_K(K), generator("rng", rng)
    return _from_upper(rng.uniform(0.0, 1.0, size=_size_shape(size) + (K, K)))


def random_transitive_matrix(K: int, rng: np.random.Generator, size=None) -> np.ndarray:
    """A transitive preference matrix with order 0 > 1 > ... > K-1: P[i, j] ~ U(1/2, 1) for i < j. Usually
    not SST (the R4 counterexample search)."""
    K, rng = _check_K(K), generator("rng", rng)
    return _from_upper(rng.uniform(0.5, 1.0, size=_size_shape(size) + (K, K)))


def random_bt_matrix(K: int, rng: np.random.Generator, size=None, temperature=(0.2, 2.0),
                     sort: bool = True, return_scores: bool = False):
    """A random Bradley-Terry matrix: scores s ~ N(0, 1) (sorted decreasingly when ``sort``, so response 0 is
    the best), temperature a number or a (low, high) range drawn uniformly per matrix. Shape (*size, K, K).

    With ``return_scores`` returns (P, scores, temperatures).
    """
    K, rng = _check_K(K), generator("rng", rng)
    shape = _size_shape(size)
    sort, return_scores = flag("sort", sort), flag("return_scores", return_scores)
    if isinstance(temperature, (tuple, list)):
        low, high = _temperature_range(temperature)
    else:
        T = real_array("temperature", temperature, positive)
        _broadcasts_to("temperature", T.shape, shape, "size")
    scores = rng.standard_normal(shape + (K,))
    if sort:
        scores = -np.sort(-scores, axis=-1)
    if isinstance(temperature, (tuple, list)):
        T = rng.uniform(low, high, size=shape)
    else:
        T = np.broadcast_to(T, shape).copy()
    P = bradley_terry_matrix(scores, T)
    return (P, scores, T) if return_scores else P


def _temperature_range(temperature) -> tuple[float, float]:
    if len(temperature) == 2:
        low, high = (positive("temperature", t) for t in temperature)
        if low <= high:
            return low, high
    raise ValueError(f"temperature: must be a number > 0 or a range (low, high) with 0 < low <= high, "
                     f"got {temperature!r}")


def random_sst_matrix(K: int, rng: np.random.Generator, size=None, spread: float = 0.5, sort: bool = True,
                      return_order: bool = False):
    """A random strictly strongly stochastically transitive (SST) matrix that is generally **not**
    Bradley-Terry. Shape (*size, K, K).

    In ranked coordinates (rank 0 the best) a tie-free transitive P is SST exactly when its upper triangle
    U_ij = P_ij (i < j) is non-decreasing along each row (P_ik >= P_ij for j < k: a worse opponent is beaten
    more often) and non-increasing down each column (P_ik >= P_jk for i < j). We fill the upper triangle one
    super-diagonal at a time: U_{i,i+1} = 1/2 + x/2 and, further out, U_ij = m + (1 - m) x with
    m = max(U_{i,j-1}, U_{i+1,j}), x ~ U(0, ``spread``) i.i.d. (0 < spread < 1). Every inequality is strict
    almost surely, entries stay below 1, and the logits are not additive (logit P_ik != logit P_ij +
    logit P_jk), so the matrix is almost surely not BT (:func:`is_bradley_terry`).

    ``sort``: response 0 is the best, 1 the second, ... (as :func:`random_bt_matrix`); otherwise the ranking is
    a uniformly random total order. With ``return_order`` returns (P, order) with order (*size, K) the
    responses best first (what :func:`transitive_order` recovers).
    """
    K, rng = _check_K(K), generator("rng", rng)
    spread = in_interval("spread", spread, 0.0, 1.0, low_open=True, high_open=True)
    sort, return_order = flag("sort", sort), flag("return_order", return_order)
    shape = _size_shape(size)
    x = rng.uniform(0.0, spread, size=shape + (K, K))
    U = np.full(shape + (K, K), 0.5)
    for d in range(1, K):
        for i in range(K - d):
            j = i + d
            m = np.full(shape, 0.5) if d == 1 else np.maximum(U[..., i, j - 1], U[..., i + 1, j])
            U[..., i, j] = m + (1.0 - m) * x[..., i, j]
    ranked = _from_upper(U)
    if sort:
        order = np.broadcast_to(np.arange(K), shape + (K,)).copy()
        P = ranked
    else:
        order = np.argsort(rng.random(shape + (K,)), axis=-1)  # order[r] = the response of rank r
        rank = np.argsort(order, axis=-1)  # rank[y] = the rank of response y
        P = np.take_along_axis(np.take_along_axis(ranked, rank[..., :, None], -2), rank[..., None, :], -1)
    return (P, order) if return_order else P


def skew_part(P) -> np.ndarray:
    """A_P = P - 1/2 11^T, the skew-symmetric part of a preference matrix (x^T A_P x = 0 for all x)."""
    return validate_preference_matrix(P) - 0.5


# ----------------------------------------------------------------------------------------------------------
# structure: transitivity, cycles, Condorcet winner, Smith set
# ----------------------------------------------------------------------------------------------------------


def _distinct_triples(K: int) -> np.ndarray:
    i, j, k = np.ogrid[:K, :K, :K]
    return (i != j) & (j != k) & (i != k)


def is_strongly_transitive(P, tol: float = 1e-12):
    """Strong stochastic transitivity: for distinct i, j, k, P_ij >= 1/2 and P_jk >= 1/2 imply
    P_ik >= max(P_ij, P_jk) - tol. Batched: returns a bool array of the batch shape (a bool for one matrix)."""
    P, tol = validate_preference_matrix(P), non_negative("tol", tol)
    Pij = P[..., :, :, None]
    Pjk = P[..., None, :, :]
    Pik = P[..., :, None, :]
    premise = (Pij >= 0.5) & (Pjk >= 0.5) & _distinct_triples(P.shape[-1])
    ok = ~premise | (Pik >= np.maximum(Pij, Pjk) - tol)
    return _scalar_or_array(ok.all(axis=(-3, -2, -1)))


def bradley_terry_residual(P):
    """How far P is from Bradley-Terry: max_ij |L_ij - (s_i - s_j)| with L_ij = log P_ij - log P_ji (the
    logit of P_ij, computed from both stored entries so that entries near 0 or 1 keep their precision) and
    s = the row means of L (the least-squares scores). Zero exactly for P = sigmoid(s_i - s_j); inf when an
    off-diagonal entry is 0 or 1 (no finite scores). Batched."""
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    off = ~np.eye(K, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log(P) - np.log(np.swapaxes(P, -1, -2))
    L = np.where(np.eye(K, dtype=bool), 0.0, L)
    finite = np.all(np.isfinite(L), axis=(-2, -1))
    L = np.where(finite[..., None, None], L, 0.0)
    s = L.mean(-1)
    resid = np.abs(L - (s[..., :, None] - s[..., None, :]))[..., off].max(-1)
    return _scalar_or_array(np.where(finite, resid, np.inf))


def is_bradley_terry(P, tol: float = 1e-8):
    """True where P = sigmoid(s_i - s_j) for some finite scores s, up to ``tol`` in logit units
    (:func:`bradley_terry_residual` <= tol). Batched."""
    tol = non_negative("tol", tol)
    return _scalar_or_array(np.asarray(bradley_terry_residual(P)) <= tol)


def _majority(P, tol: float = 1e-12) -> np.ndarray:
    """The strict majority relation M[i, j] = P_ij > 1/2 (+ tol)."""
    return P > 0.5 + non_negative("tol", tol)


def _has_ties(P, tol: float = 1e-12) -> np.ndarray:
    tol = non_negative("tol", tol)
    K = P.shape[-1]
    off = ~np.eye(K, dtype=bool)
    return (np.abs(P - 0.5) <= tol)[..., off].any(-1)


def has_cycle(P, tol: float = 1e-12):
    """True when the strict majority relation (P_ij > 1/2) contains a directed 3-cycle i > j > k > i.
    Batched (bool array of the batch shape)."""
    M = _majority(validate_preference_matrix(P), tol).astype(np.int64)
    trace = np.einsum("...ij,...jk,...ki->...", M, M, M)
    return _scalar_or_array(trace > 0)


def is_strictly_sst(P, tol: float = 1e-12):
    """Strictly SST (the collapse result's structure): no tie P_ij = 1/2 off the diagonal, no majority cycle,
    and strongly transitive. Batched."""
    P = validate_preference_matrix(P)
    out = ~_has_ties(P, tol) & ~np.asarray(has_cycle(P, tol)) & np.asarray(is_strongly_transitive(P, tol))
    return _scalar_or_array(out)


def _scalar_or_array(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x


def condorcet_winner(P, tol: float = 1e-12):
    """The response c with P_cj > 1/2 for every j != c, or None. For a batch: an int array with -1 where there
    is none."""
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    M = _majority(P, tol) | np.eye(K, dtype=bool)
    beats_all = M.all(-1)
    winner = np.where(beats_all.any(-1), beats_all.argmax(-1), -1)
    if winner.ndim == 0:
        return None if winner < 0 else int(winner)
    return winner


def smith_mask(P, tol: float = 1e-12) -> np.ndarray:
    """Boolean mask (..., K) of the Smith set: the smallest non-empty set whose members each beat (P > 1/2)
    every non-member (Smith 1973). Batched.

    A dominant set's members have strictly more majority wins than any outsider, so the Smith set is the
    smallest dominant prefix of the responses sorted by their number of wins.
    """
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    M = _majority(P, tol)
    order = np.argsort(-M.sum(-1), axis=-1, kind="stable")
    ranked = np.take_along_axis(np.take_along_axis(M, order[..., :, None], -2), order[..., None, :], -1)
    size = np.full(P.shape[:-2], K)
    for m in range(K - 1, 0, -1):  # smallest dominant prefix wins: scan from large to small
        dominant = ranked[..., :m, m:].all(axis=(-2, -1))
        size = np.where(dominant, m, size)
    in_prefix = np.arange(K) < size[..., None]
    mask = np.zeros(P.shape[:-1], dtype=bool)
    np.put_along_axis(mask, order, in_prefix, axis=-1)
    return mask


def smith_set(P, tol: float = 1e-12) -> list[int]:
    """The Smith set of one preference matrix, as a sorted list of response indices."""
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: smith_set takes one K x K matrix (use smith_mask for batches), got shape {P.shape}")
    return [int(i) for i in np.flatnonzero(smith_mask(P, tol))]


def transitive_order(P, tol: float = 1e-12) -> np.ndarray:
    """The ranking (best first) of a transitive tie-free matrix: responses sorted by majority wins. Batched.

    Raises ValueError when some matrix is not a strict linear order (a tie or a majority cycle).
    """
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    wins = _majority(P, tol).sum(-1)
    if not np.all(np.sort(wins, axis=-1) == np.arange(K)):
        raise ValueError("P: must be transitive without ties (its majority relation a strict linear order)")
    return np.argsort(-wins, axis=-1)


# ----------------------------------------------------------------------------------------------------------
# the IPO optimum (R1)
# ----------------------------------------------------------------------------------------------------------


def win_rates(P, mu) -> np.ndarray:
    """s = P mu: each response's win rate against a mu-sampled opponent (the logit shift of the IPO optimum,
    divided by beta). Batched with broadcasting."""
    P = validate_preference_matrix(P)
    mu = validate_distribution(mu, "mu", K=P.shape[-1])
    batch_shape(P=P.shape[:-2], mu=mu.shape[:-1])
    return np.einsum("...ij,...j->...i", P, mu)


def ipo_optimum(P, mu, pi_ref, beta, log: bool = False) -> np.ndarray:
    """The population IPO optimum pi* proportional to pi_ref * exp(beta * P mu) (R1), computed in log space.

    P (..., K, K), mu and pi_ref (..., K), beta > 0 (a scalar or (...,)); leading axes broadcast. Returns
    probabilities, or log-probabilities when ``log``. Zero entries of pi_ref stay zero (log: -inf).
    """
    P = validate_preference_matrix(P)
    mu, pi_ref = validate_distribution(mu, "mu", P.shape[-1]), validate_distribution(pi_ref, "pi_ref", P.shape[-1])
    beta, log = real_array("beta", beta, positive), flag("log", log)
    batch_shape(P=P.shape[:-2], mu=mu.shape[:-1], pi_ref=pi_ref.shape[:-1], beta=beta.shape)
    s = np.einsum("...ij,...j->...i", P, mu)
    with np.errstate(divide="ignore"):
        logits = np.log(pi_ref) + beta[..., None] * s
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)
    return logp if log else np.exp(logp)


def population_ipo_loss(pi, P, mu, pi_ref, beta) -> float:
    """L(pi) = sum_{y, y'} mu_y mu_y' (h_pi(y, y') - beta (P_yy' - 1/2))^2, with h the log-ratio margin
    log[pi(y) pi_ref(y') / (pi(y') pi_ref(y))]: the squared-loss form of IPO's population objective (equal to
    the expected sampled IPO loss with tau = 1/beta up to a constant). One instance (no batch)."""
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: population_ipo_loss takes one K x K matrix, got shape {P.shape}")
    K = P.shape[-1]
    r = _single("pi", positive_log("pi", pi, K)) - _single("pi_ref", positive_log("pi_ref", pi_ref, K))
    return float(_ipo_loss_in_r(r, P, _single("mu", validate_distribution(mu, "mu", K)), positive("beta", beta)))


def _ipo_loss_in_r(r, P, mu, beta):
    resid = r[:, None] - r[None, :] - beta * (P - 0.5)
    return mu @ (resid**2) @ mu


def _ipo_grad_in_r(r, P, mu, beta):
    resid = r[:, None] - r[None, :] - beta * (P - 0.5)
    return 4.0 * mu * (resid @ mu)


def minimise_population_ipo(P, mu, pi_ref, beta, target: str = "population", gtol: float = 1e-12):
    """Minimise the population IPO loss numerically (scipy BFGS, analytic gradient) over centred log-ratios
    r = log(pi / pi_ref), sum r = 0, parametrised by its first K-1 entries. Returns pi.

    ``target``: 'population' regresses h onto beta (P_yy' - 1/2) (:func:`population_ipo_loss`); 'azar'
    onto beta ((P mu)_y - (P mu)_y') (Azar et al.'s form). Both share the closed-form minimiser on supp mu;
    responses outside supp mu are not identified by the loss and stay at r = 0. pi_ref must put positive mass
    on every response (a ValueError naming it otherwise): the loss is written in r = log(pi / pi_ref).
    """
    target = one_of("target", target, ("population", "azar"))
    gtol = positive("gtol", gtol)
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: minimise_population_ipo takes one K x K matrix, got shape {P.shape}")
    K = P.shape[0]
    mu = _single("mu", validate_distribution(mu, "mu", K))
    log_ref = _single("pi_ref", positive_log("pi_ref", pi_ref, K))
    beta = positive("beta", beta)
    if target == "azar":
        s = P @ mu
        Q = 0.5 + (s[:, None] - s[None, :])  # Q - 1/2 = s_y - s_y'
    else:
        Q = P
    embed = np.vstack([np.eye(K - 1), -np.ones((1, K - 1))])  # r = embed @ z, sum r = 0

    def fun(z):
        r = embed @ z
        return _ipo_loss_in_r(r, Q, mu, beta), embed.T @ _ipo_grad_in_r(r, Q, mu, beta)

    res = minimize(fun, np.zeros(K - 1), jac=True, method="BFGS", options={"gtol": gtol, "maxiter": 10_000})
    logits = log_ref + embed @ res.x
    return np.exp(logits - logsumexp(logits))


def sample_preference_pairs(P, mu, n: int, rng: np.random.Generator):
    """Draw n pairs (y, y') ~ mu x mu and a Bernoulli(P_yy') label each; return (winners, losers) index
    arrays of length n (the labelled data of one round of preference collection)."""
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: takes one K x K matrix, got shape {P.shape}")
    mu = _single("mu", validate_distribution(mu, "mu", P.shape[0]))
    n, rng = int_at_least("n", n, 1), generator("rng", rng)
    y = rng.choice(P.shape[0], size=n, p=mu)
    y2 = rng.choice(P.shape[0], size=n, p=mu)
    first_wins = rng.random(n) < P[y, y2]
    return np.where(first_wins, y, y2), np.where(first_wins, y2, y)


def empirical_ipo_optimum(winners, losers, pi_ref, beta) -> np.ndarray:
    """The exact minimiser of the empirical IPO loss sum_n (h(w_n, l_n) - beta/2)^2 over tabular log-ratios
    (a graph-Laplacian least-squares problem, solved by the pseudo-inverse, centred). Responses never
    compared keep r = 0. Returns pi."""
    pi_ref = _single("pi_ref", validate_distribution(pi_ref, "pi_ref"))
    K = pi_ref.shape[-1]
    beta = positive("beta", beta)
    w, lo = _pair_indices(winners, losers, K)
    keep = w != lo  # a self-pair has h = 0 whatever r is
    D = np.zeros((int(keep.sum()), K))
    D[np.arange(D.shape[0]), w[keep]] += 1.0
    D[np.arange(D.shape[0]), lo[keep]] -= 1.0
    r = np.linalg.lstsq(D, np.full(D.shape[0], beta / 2), rcond=None)[0]  # minimum-norm: centred
    logits = np.log(pi_ref) + r
    return np.exp(logits - logsumexp(logits))


def _single_torch_thread():
    """Tabular models are tiny: torch's intra-op threads only add overhead (10-30x slower on a busy 2-core
    machine). Run with one thread and restore the previous setting."""
    return torch_threads(1)


def pair_counts(winners, losers, K: int) -> np.ndarray:
    """C[w, l] = how many sampled pairs had winner w and loser l (a K x K count matrix)."""
    K = _check_K(K)
    counts = np.zeros((K, K))
    np.add.at(counts, _pair_indices(winners, losers, K), 1.0)
    return counts


def _pair_indices(winners, losers, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(winners, losers) as equal-length 1-d integer arrays of response indices in [0, K)."""
    try:
        w, lo = np.asarray(winners), np.asarray(losers)
    except (ValueError, TypeError):
        w = lo = np.zeros(0)
    if (w.dtype.kind not in "iu" or lo.dtype.kind not in "iu" or w.shape != lo.shape or w.ndim != 1
            or w.size == 0 or min(w.min(), lo.min()) < 0 or max(w.max(), lo.max()) >= K):
        raise ValueError(f"winners, losers: must be equal-length 1-d integer index arrays with values in [0, {K})")
    return w, lo


def _check_counts(counts) -> np.ndarray:
    C = finite_array("counts", counts)
    if (C.ndim < 2 or C.shape[-1] != C.shape[-2] or C.shape[-1] < 2 or np.any(C < 0)
            or np.any(C.sum((-2, -1)) <= 0)):
        raise ValueError(f"counts: must be non-negative (..., K, K) pair-count matrices with a positive total, "
                         f"got shape {C.shape}")
    return C


def empirical_ipo_loss(counts, pi, pi_ref, beta) -> np.ndarray:
    """The mean sampled IPO loss (h(w, l) - beta/2)^2 over the pairs summarised by ``counts`` (..., K, K)
    (from :func:`pair_counts`) at policy pi. Batched."""
    C = _check_counts(counts)
    K = C.shape[-1]
    pi, pi_ref = validate_distribution(pi, "pi", K), validate_distribution(pi_ref, "pi_ref", K)
    beta = real_array("beta", beta, positive)
    batch_shape(counts=C.shape[:-2], pi=pi.shape[:-1], pi_ref=pi_ref.shape[:-1], beta=beta.shape)
    r = np.log(pi) - np.log(pi_ref)
    b = beta[..., None, None]
    h = r[..., :, None] - r[..., None, :]
    return _scalar_or_array((C * (h - b / 2) ** 2).sum((-2, -1)) / C.sum((-2, -1)))


def train_tabular_ipo_counts(counts, pi_ref, beta, steps: int = 2000, lr: float = 0.05, device=None):
    """Full-batch Adam on tabular log-policies (one logit per response, started at log pi_ref) minimising the
    mean sampled IPO loss -- the library's ``ipo_loss`` with tau = 1/beta -- over the pairs summarised by
    ``counts`` (..., K, K) (:func:`pair_counts`; the mean over n pairs equals the count-weighted sum over the
    K^2 distinct pairs). Leading axes are independent runs trained at once (Adam is per-coordinate, so this is
    the same as separate runs). The learning rate follows a cosine schedule from ``lr`` to 0 (a constant rate
    leaves Adam hovering around the minimum). Returns (pi (..., K), loss history (steps, ...))."""
    import torch

    from analysis_lib.runtime import get_device

    C = _check_counts(counts)
    K = C.shape[-1]
    pi_ref = validate_distribution(pi_ref, "pi_ref", K)
    _broadcasts_to("pi_ref", pi_ref.shape[:-1], C.shape[:-2], "counts")
    beta, steps, lr = positive("beta", beta), int_at_least("steps", steps, 1), positive("lr", lr)
    device = device or get_device()
    weights = torch.as_tensor(C / C.sum((-2, -1), keepdims=True), dtype=torch.float64, device=device)
    ref = torch.as_tensor(np.broadcast_to(np.log(pi_ref), C.shape[:-1]).copy(), dtype=torch.float64,
                          device=device)
    logits = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(steps))
    history = []
    with _single_torch_thread():
        for _ in range(int(steps)):
            history.append(_count_adam_step(logits, ref, weights, beta, opt))
            schedule.step()
    pi = torch.softmax(logits.detach(), dim=-1).cpu().numpy()
    return pi, np.stack(history)


def _count_adam_step(logits, ref, weights, beta, opt) -> np.ndarray:
    """One Adam step on the count-weighted mean IPO loss of every run; returns the runs' losses."""
    from analysis_lib.losses import ipo_loss

    shape = weights.shape
    logp = logits.log_softmax(dim=-1)
    chosen = logp[..., :, None].expand(shape).reshape(-1)
    rejected = logp[..., None, :].expand(shape).reshape(-1)
    ref_c = ref[..., :, None].expand(shape).reshape(-1)
    ref_r = ref[..., None, :].expand(shape).reshape(-1)
    losses, _, _ = ipo_loss(chosen, rejected, ref_c, ref_r, tau=1.0 / beta)
    per_run = (weights * losses.reshape(shape)).sum((-2, -1))
    opt.zero_grad()
    per_run.sum().backward()
    opt.step()
    return per_run.detach().cpu().numpy()


def train_tabular_ipo(winners, losers, pi_ref, beta, steps: int = 2000, lr: float = 0.05,
                      batch_size: int | None = None, seed: int = 0, device=None):
    """Train a tabular log-policy (one logit per response, initialised at log pi_ref) with Adam on sampled
    pairs using the library's ``ipo_loss`` (tau = 1/beta). Returns (pi, loss history).

    ``batch_size`` None: full batch (:func:`train_tabular_ipo_counts` on the pairs' counts); otherwise
    minibatches of sampled pairs drawn with replacement (seeded).

    The empirical minimiser is :func:`empirical_ipo_optimum`; as the number of pairs grows it tends to the
    population optimum :func:`ipo_optimum`.
    """
    import torch

    from analysis_lib.losses import ipo_loss
    from analysis_lib.runtime import get_device

    pi_ref = _single("pi_ref", validate_distribution(pi_ref, "pi_ref"))
    K = pi_ref.shape[-1]
    seed = int_at_least("seed", seed, 0)
    if batch_size is None:
        return train_tabular_ipo_counts(pair_counts(winners, losers, K), pi_ref, beta, steps, lr, device)
    beta, steps, lr = positive("beta", beta), int_at_least("steps", steps, 1), positive("lr", lr)
    batch_size = int_at_least("batch_size", batch_size, 1)
    w, l_ = _pair_indices(winners, losers, K)
    device = device or get_device()
    gen = torch.Generator().manual_seed(seed)
    w = torch.as_tensor(w, dtype=torch.long, device=device)
    l_ = torch.as_tensor(l_, dtype=torch.long, device=device)
    ref = torch.as_tensor(np.log(pi_ref), dtype=torch.float64, device=device)
    logits = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    history = []
    n = w.numel()
    with _single_torch_thread():
        for _ in range(int(steps)):
            idx = torch.randint(n, (int(batch_size),), generator=gen).to(device)
            logp = torch.log_softmax(logits, dim=0)
            losses, _, _ = ipo_loss(logp[w[idx]], logp[l_[idx]], ref[w[idx]], ref[l_[idx]], tau=1.0 / beta)
            loss = losses.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
    pi = torch.softmax(logits.detach(), dim=0).cpu().numpy()
    return pi, np.asarray(history)


def train_tabular_ipo_sgd(datasets, pi_ref, beta, epochs: float = 2.0, batch_size: int = 64, lr: float = 0.3,
                          decay_steps: int = 10, seed: int = 0, device=None):
    """Plain minibatch SGD (no momentum) on sampled pairs with the library's ``ipo_loss`` (tau = 1/beta), for
    several independent data sets at once. Returns (pi (R, K), steps (R,)).

    ``datasets``: a sequence of R (winners, losers) index-array pairs (:func:`sample_preference_pairs`), one
    tabular log-policy per data set (one logit per response, started at log pi_ref). Run r takes
    ceil(``epochs`` n_r / ``batch_size``) steps, each on ``batch_size`` of its own pairs drawn uniformly with
    replacement, at step size lr_t = ``lr`` * decay_steps / (decay_steps + t) (Robbins-Monro: sum lr_t = inf,
    sum lr_t^2 < inf, so the iterate converges to the empirical minimiser; at a fixed number of epochs the
    final step size, hence the variance of the optimisation noise, scales as 1/n, like the statistical error's
    variance). The defaults (c = lr * decay_steps = 3 above the inverse curvature of small tabular problems)
    keep that noise comparable to the statistical error. The minibatches of run r come
    from its own random stream (numpy SeedSequence(seed) spawned R times), so a run does not depend on the
    other data sets trained with it. The gradient is torch autograd through ``ipo_loss`` of the minibatch's
    mean loss.
    """
    import torch

    from analysis_lib.losses import ipo_loss
    from analysis_lib.runtime import get_device

    log_ref = _single("pi_ref", positive_log("pi_ref", pi_ref))
    K = log_ref.shape[0]
    beta, epochs, lr = positive("beta", beta), positive("epochs", epochs), positive("lr", lr)
    batch_size, decay_steps = int_at_least("batch_size", batch_size, 1), int_at_least("decay_steps", decay_steps, 1)
    seed = int_at_least("seed", seed, 0)
    try:
        datasets = [(np.asarray(w), np.asarray(lo)) for w, lo in datasets]
    except (TypeError, ValueError):
        raise ValueError("datasets: must be a sequence of (winners, losers) index-array pairs") from None
    if not datasets:
        raise ValueError("datasets: must hold at least one (winners, losers) pair of index arrays")
    for w, lo in datasets:
        pair_counts(w, lo, K)  # validates each data set's indices against K
    R = len(datasets)
    sizes = np.array([w.size for w, _ in datasets])
    steps = np.ceil(epochs * sizes / batch_size).astype(np.int64)
    T = int(steps.max())
    # each run's minibatches, drawn with replacement from its own stream; padded runs have lr = 0 there
    chosen = np.zeros((T, R, batch_size), dtype=np.int64)
    rejected = np.zeros((T, R, batch_size), dtype=np.int64)
    for r, (stream, (w, lo)) in enumerate(zip(np.random.SeedSequence(int(seed)).spawn(R), datasets, strict=True)):
        idx = np.random.default_rng(stream).integers(w.size, size=(int(steps[r]), batch_size))
        chosen[: steps[r], r], rejected[: steps[r], r] = w[idx], lo[idx]
    t = np.arange(T)[:, None]
    rates = np.where(t < steps[None, :], lr * decay_steps / (decay_steps + t), 0.0)  # (T, R)
    device = device or get_device()
    ref = torch.as_tensor(log_ref, dtype=torch.float64, device=device)
    logits = ref.expand(R, K).clone().requires_grad_(True)
    chosen_t = torch.as_tensor(chosen, device=device)
    rejected_t = torch.as_tensor(rejected, device=device)
    rates_t = torch.as_tensor(rates, dtype=torch.float64, device=device)
    with _single_torch_thread():
        for k in range(T):
            logp = torch.log_softmax(logits, dim=-1)
            c, rj = chosen_t[k], rejected_t[k]
            losses, _, _ = ipo_loss(logp.gather(1, c).reshape(-1), logp.gather(1, rj).reshape(-1),
                                    ref[c].reshape(-1), ref[rj].reshape(-1), tau=1.0 / beta)
            per_run = losses.reshape(R, batch_size).mean(-1)
            (grad,) = torch.autograd.grad(per_run.sum(), logits)
            with torch.no_grad():
                logits -= rates_t[k][:, None] * grad
    pi = torch.softmax(logits.detach(), dim=-1).cpu().numpy()
    return pi, steps


# ----------------------------------------------------------------------------------------------------------
# samplers and ranking guarantees (R2-R4)
# ----------------------------------------------------------------------------------------------------------


def _check_min_mass(min_mass, K) -> float:
    return in_interval("min_mass", min_mass, 0.0, 1.0 / K)  # at most 1/K: the masses must sum to 1


def _max_min_gap_sampler(P: np.ndarray, pairs: list[tuple[int, int]], min_mass: float):
    """LP: maximise t over (mu, t) s.t. sum_k mu_k (P_ik - P_jk) >= t for all (i, j) in pairs, mu a
    distribution with mu_k >= min_mass. Returns (mu, t)."""
    K = P.shape[0]
    rows = np.array([P[j] - P[i] for i, j in pairs])  # -(gap) + t <= 0
    A_ub = np.hstack([rows, np.ones((len(pairs), 1))])
    c = np.zeros(K + 1)
    c[-1] = -1.0
    A_eq = np.hstack([np.ones((1, K)), np.zeros((1, 1))])
    bounds = [(min_mass, 1.0)] * K + [(None, None)]
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(len(pairs)), A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs")
    if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise RuntimeError(f"linprog failed: {res.message}")
    mu = np.clip(res.x[:K], 0.0, None)
    return mu / mu.sum(), float(res.x[K])


def instance_dependent_sampler(P, min_mass: float = 1e-3):
    """The instance-dependent sampler of R3: the mu (with mu_k >= min_mass) maximising the minimum score gap
    (P mu)_i - (P mu)_j over Smith members i and non-members j, by linear programming. Returns (mu, gap).

    gap > 0 means the scores s = P mu, i.e. the ranking of pi* / pi_ref, are strictly Smith-top (and
    Condorcet-top when the Smith set is one response). The ranking guarantee for IPO's optimum
    pi* ~ pi_ref exp(beta P mu) itself holds with a **uniform reference** pi_ref only: a non-uniform pi_ref adds
    log pi_ref to the logits and can put another response on top (at moderate beta, for random references,
    it often does).

    Raises ValueError when the Smith set is all K responses (Smith-top is then vacuous).
    """
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: takes one K x K matrix, got shape {P.shape}")
    K = P.shape[0]
    min_mass = _check_min_mass(min_mass, K)
    S = smith_set(P)
    if len(S) == K:
        raise ValueError("P: has no proper Smith set (it contains all K responses), so Smith-top is vacuous")
    N = [j for j in range(K) if j not in S]
    return _max_min_gap_sampler(P, [(i, j) for i in S for j in N], min_mass)


def order_preserving_sampler(P, order=None, min_mass: float = 1e-6):
    """The mu (mu_k >= min_mass) maximising the minimum adjacent score gap along ``order`` (default: the
    transitive order of P), by linear programming. Returns (mu, gap); gap < 0 means no such sampler preserves
    the order (R4's counterexample)."""
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: takes one K x K matrix, got shape {P.shape}")
    K = P.shape[0]
    min_mass = _check_min_mass(min_mass, K)
    order = transitive_order(P) if order is None else _check_order(order, K)
    return _max_min_gap_sampler(P, [(int(order[k]), int(order[k + 1])) for k in range(K - 1)], min_mass)


def condorcet_sampler(P, eps: float = 0.01, shrink: float = 0.5, max_halvings: int = 60):
    """mu = (1 - eps) delta_c + eps * uniform over the other responses, c the Condorcet winner; eps is shrunk
    (times ``shrink``) until c scores strictly highest (adaptive eps, R3). Returns (mu, eps used).

    Raises ValueError when P has no Condorcet winner.
    """
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: takes one K x K matrix, got shape {P.shape}")
    eps = in_interval("eps", eps, 0.0, 1.0, low_open=True, high_open=True)
    shrink = in_interval("shrink", shrink, 0.0, 1.0, low_open=True, high_open=True)
    max_halvings = int_at_least("max_halvings", max_halvings, 0)
    c = condorcet_winner(P)
    if c is None:
        raise ValueError("P: has no Condorcet winner")
    K = P.shape[0]
    for _ in range(max_halvings + 1):
        mu = np.full(K, eps / (K - 1))
        mu[c] = 1.0 - eps
        s = P @ mu
        if s[c] > np.delete(s, c).max():
            return mu, eps
        eps *= shrink
    raise RuntimeError(f"condorcet_sampler: no eps down to {eps:.3g} put the winner on top")  # pragma: no cover


def adversarial_threshold(mu) -> float:
    """The largest eps for which :func:`adversarial_matrix` breaks the fixed sampler mu: (1 - m1 - m2)/2,
    with m1, m2 the two smallest masses of mu."""
    mu = validate_distribution(mu, "mu")
    if mu.ndim != 1 or mu.shape[0] < 3:
        raise ValueError(f"mu: must be one distribution over K >= 3 responses, got shape {mu.shape}")
    m = np.sort(mu)
    return float((1.0 - m[0] - m[1]) / 2.0)


def adversarial_matrix(mu, eps: float | None = None) -> np.ndarray:
    """R2's construction against a fixed sampler mu (K >= 3): a transitive (not SST) P whose Condorcet winner
    c is not on top of P mu. Returns P.

    c and the runner-up r are mu's two least-sampled responses (ties: lowest index). c beats everyone narrowly
    (P_cj = 1/2 + eps); r loses to c but crushes every other response (P_rj = 1); the others are ordered by
    index with P = 1/2 + eps. Then (P mu)_c - (P mu)_r = eps - (1 - mu_c - mu_r)/2 < 0 for
    eps < :func:`adversarial_threshold` (default eps: half of it). So Condorcet-top, Smith-top (Smith set
    {c}) and order preservation (c > r > others) all fail under mu.
    """
    mu = validate_distribution(mu, "mu")
    threshold = adversarial_threshold(mu)
    if eps is None:
        eps = threshold / 2
    if not isinstance(eps, Real) or not (0 < eps < threshold):
        raise ValueError(f"eps: must satisfy 0 < eps < {threshold:.4g} (half the mass outside mu's two smallest "
                         f"entries) for this sampler, got {eps!r}")
    K = mu.shape[0]
    c, r = (int(i) for i in np.argsort(mu, kind="stable")[:2])
    ranking = [c, r] + [k for k in range(K) if k not in (c, r)]
    upper = np.zeros((K, K))
    for a in range(K):
        for b in range(a + 1, K):
            upper[a, b] = 1.0 if ranking[a] == r else 0.5 + eps
    P_ranked = _from_upper(upper)  # in ranked coordinates
    inv = np.argsort(ranking)
    return P_ranked[np.ix_(inv, inv)]


def condorcet_top_violated(P, mu, tol: float = 1e-12):
    """True where P has a Condorcet winner that does not score strictly highest under mu. Batched."""
    s, tol = win_rates(P, mu), non_negative("tol", tol)
    winner = condorcet_winner(P)
    c = np.asarray(-1 if winner is None else winner)
    c_safe = np.maximum(c, 0)
    s_c = np.take_along_axis(s, c_safe[..., None], -1)[..., 0]
    others = np.where(np.arange(s.shape[-1]) == c_safe[..., None], -np.inf, s).max(-1)
    return _scalar_or_array((c >= 0) & ~(s_c > others + tol))


def smith_top_violated(P, mu, tol: float = 1e-12):
    """True where the Smith set is proper and some member does not score strictly above every non-member.
    Batched."""
    s, tol = win_rates(P, mu), non_negative("tol", tol)
    S = smith_mask(P)
    proper = ~S.all(-1)
    worst_in = np.where(S, s, np.inf).min(-1)
    best_out = np.where(S, -np.inf, s).max(-1)
    return _scalar_or_array(proper & ~(worst_in > best_out + tol))


def order_violated(P, mu, order=None, tol: float = 1e-12):
    """True where the scores P mu are not strictly decreasing along ``order`` (default: the transitive order
    of each P; raises ValueError if P is not transitive without ties). Batched."""
    s, tol = win_rates(P, mu), non_negative("tol", tol)
    if order is None:
        order = transitive_order(P)
    else:
        order = _check_order(order, s.shape[-1], batched=True)
        _broadcasts_to("order", order.shape[:-1], s.shape[:-1], "P, mu")
    ranked = np.take_along_axis(s, np.broadcast_to(order, s.shape), -1)
    return _scalar_or_array(~np.all(ranked[..., :-1] > ranked[..., 1:] + tol, axis=-1))


def ranking_violations(P, mu) -> dict:
    """The three ranking axioms under sampler mu: {'condorcet_top', 'smith_top', 'order'} -> bool (arrays).
    The order entry is False where P is not transitive without ties (the axiom does not apply)."""
    P = validate_preference_matrix(P)
    M = _majority(P)
    transitive = np.all(np.sort(M.sum(-1), axis=-1) == np.arange(P.shape[-1]), axis=-1)
    safe_P = np.where(transitive[..., None, None], P, _from_upper(np.ones(P.shape)))  # dummy linear order
    order = np.where(transitive, np.asarray(order_violated(safe_P, mu)), False)
    return {"condorcet_top": condorcet_top_violated(P, mu), "smith_top": smith_top_violated(P, mu),
            "order": _scalar_or_array(order)}


# ----------------------------------------------------------------------------------------------------------
# on-policy tilts and concentration (R5)
# ----------------------------------------------------------------------------------------------------------


def tilt_toward_top(mu, strength: float, order=None) -> np.ndarray:
    """A likelihood-ratio tilt mu' proportional to mu * exp(-strength * rank) (rank 0 = top of ``order``,
    default 0 > 1 > ... > K-1): weights decrease down the ranking, so mu' first-order dominates mu toward the
    top. Batched over mu."""
    mu, strength = validate_distribution(mu, "mu"), positive("strength", strength)
    K = mu.shape[-1]
    order = np.arange(K) if order is None else _check_order(order, K)
    rank = np.empty(K)
    rank[order] = np.arange(K)
    w = mu * np.exp(-strength * rank)
    return w / w.sum(-1, keepdims=True)


def first_order_dominates(mu_new, mu_old, order=None, strict: bool = False, tol: float = 1e-12):
    """True where every top-m mass of mu_new is >= that of mu_old (m = 1..K-1, along ``order``); with
    ``strict``, also > for some m. Batched."""
    a = validate_distribution(mu_new, "mu_new")
    K = a.shape[-1]
    b = validate_distribution(mu_old, "mu_old", K)
    batch_shape(mu_new=a.shape[:-1], mu_old=b.shape[:-1])
    strict, tol = flag("strict", strict), non_negative("tol", tol)
    order = np.arange(K) if order is None else _check_order(order, K)
    ca = np.cumsum(a[..., order], -1)[..., :-1]
    cb = np.cumsum(b[..., order], -1)[..., :-1]
    out = np.all(ca >= cb - tol, -1)
    if strict:
        out &= np.any(ca > cb + tol, -1)
    return _scalar_or_array(out)


def pair_score_gaps(P, mu) -> np.ndarray:
    """G[..., i, j] = (P mu)_i - (P mu)_j; the IPO logit gap of pair (i, j) is beta times this."""
    s = win_rates(P, mu)
    return s[..., :, None] - s[..., None, :]


def adjacent_gaps(P, mu, order=None) -> np.ndarray:
    """Score gaps between consecutive responses of ``order`` (default 0 > 1 > ... > K-1), shape (..., K-1)."""
    s = win_rates(P, mu)
    order = np.arange(s.shape[-1]) if order is None else _check_order(order, s.shape[-1])
    ranked = s[..., order]
    return ranked[..., :-1] - ranked[..., 1:]


def monotone_difference_pairs(P, order=None, tol: float = 1e-12) -> np.ndarray:
    """R5's sufficient condition, per pair: C[..., i, j] is True for i ranked above j (along ``order``,
    default 0 > 1 > ...) when d_k = P_ik - P_jk is non-increasing in the rank of k. Then every tilt mu' that
    first-order dominates mu toward the top gives (P mu')_i - (P mu')_j >= (P mu)_i - (P mu)_j (Abel
    summation). Batched."""
    P, tol = validate_preference_matrix(P), non_negative("tol", tol)
    K = P.shape[-1]
    order = np.arange(K) if order is None else _check_order(order, K)
    Pr = P[..., order, :][..., :, order]  # ranked coordinates
    d = Pr[..., :, None, :] - Pr[..., None, :, :]  # d[..., i, j, k]
    monotone = np.all(np.diff(d, axis=-1) <= tol, axis=-1)
    above = np.triu(np.ones((K, K), dtype=bool), 1)
    ranked_mask = monotone & above
    inv = np.argsort(order)
    return ranked_mask[..., inv, :][..., :, inv]


def entropy(p, axis: int = -1) -> np.ndarray:
    """Shannon entropy (natural log, 0 log 0 = 0) along ``axis``."""
    p = real_array("p", p)
    axis = array_axis("axis", axis, p.ndim)
    if np.any(p < 0):
        raise ValueError(f"p: must be non-negative (a distribution), got a smallest entry {p.min()!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return _scalar_or_array(terms.sum(axis))


# ----------------------------------------------------------------------------------------------------------
# preference matrices from per-response attributes (the paper's Section 5 construction)
# ----------------------------------------------------------------------------------------------------------

#: Attribute scales for :func:`scale_attributes`.
ATTRIBUTE_SCALES = ("quantile", "zscore", "raw")

#: The synthetic HelpSteer stand-in of the project's notes (Section 5.2): five attributes (helpfulness,
#: correctness, coherence, complexity, verbosity), score_k = clip(round(m_k + b_k q + noise eps), 0, 4).
HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER_MEANS = (2.8, 2.8, 3.3, 1.5, 2.0)
HELPSTEER_SLOPES = (1.0, 1.0, 0.6, 0.4, 0.5)
HELPSTEER_NOISE = 0.9


def scale_attributes(values, method: str = "quantile", n_bins: int = 5) -> np.ndarray:
    """Put attributes on a comparable scale, each column (last axis) over the whole data set.

    ``values``: (..., A) per-response attributes (any leading axes, e.g. (questions, responses, A)).
    ``method``: 'quantile' maps each attribute to dataset-wide quantile bins 0..n_bins-1 (the bin of x is the
    number of interior quantile edges q_{1/n}, ..., q_{(n-1)/n} that are <= x, so equal values share a bin;
    with n_bins = 5 this mimics HelpSteer's 0-4 scores); 'zscore' subtracts the mean and divides by the
    standard deviation (population); 'raw' returns the values unchanged. Returns float64 of the same shape.
    """
    method, n_bins = one_of("method", method, ATTRIBUTE_SCALES), int_at_least("n_bins", n_bins, 2)
    x = real_array("values", values)
    if x.ndim < 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"values: must be a non-empty finite array with attributes on the last axis, "
                         f"got shape {x.shape}")
    if method == "raw":
        return x.copy()
    flat = x.reshape(-1, x.shape[-1])
    if method == "zscore":
        sd = flat.std(axis=0)
        if np.any(sd == 0):
            raise ValueError("values: an attribute is constant over the data set, so it has no z-score")
        return (x - flat.mean(axis=0)) / sd
    edges = np.quantile(flat, np.arange(1, n_bins) / n_bins, axis=0)  # (n_bins - 1, A)
    out = np.empty_like(flat)
    for a in range(flat.shape[1]):
        out[:, a] = np.searchsorted(edges[:, a], flat[:, a], side="right")
    return out.reshape(x.shape)


def random_attribute_matrices(attributes, rng: np.random.Generator, draws: int = 1,
                              temperature: float = 1.0) -> np.ndarray:
    """The paper's construction: for every pair of responses pick **one attribute at random** and set
    P_ij = sigmoid((x_ia - x_ja) / temperature) for that attribute a (P_ji = 1 - P_ij).

    ``attributes``: (M, K, A) scaled attributes of K responses to each of M prompts (see
    :func:`scale_attributes`). ``draws``: independent draws of the attribute choice per prompt. Returns
    P of shape (M, draws, K, K). With a single attribute (A = 1) the result is one Bradley-Terry matrix per
    prompt, repeated.
    """
    x = real_array("attributes", attributes)
    if x.ndim != 3 or x.shape[1] < 2 or x.shape[2] < 1 or not np.all(np.isfinite(x)):
        raise ValueError(f"attributes: must be finite with shape (prompts, K >= 2 responses, attributes), "
                         f"got shape {x.shape}")
    draws, T = int_at_least("draws", draws, 1), positive("temperature", temperature)
    rng = generator("rng", rng)
    M, K, A = x.shape
    iu, ju = np.triu_indices(K, 1)
    choice = rng.integers(A, size=(M, draws, iu.size))  # the attribute of each pair
    xi = np.take_along_axis(np.broadcast_to(x[:, None, iu, :], (M, draws, iu.size, A)), choice[..., None], -1)
    xj = np.take_along_axis(np.broadcast_to(x[:, None, ju, :], (M, draws, iu.size, A)), choice[..., None], -1)
    upper = np.zeros((M, draws, K, K))
    upper[..., iu, ju] = expit((xi[..., 0] - xj[..., 0]) / T)
    return _from_upper(upper)


def synthetic_helpsteer_scores(n_prompts: int, rng: np.random.Generator, K: int = 4,
                               means=HELPSTEER_MEANS, slopes=HELPSTEER_SLOPES,
                               noise: float = HELPSTEER_NOISE) -> np.ndarray:
    """The project's synthetic HelpSteer stand-in (notes Section 5.2): per prompt, K responses with latent
    quality q ~ N(0, 1) and attribute scores clip(round(m_k + b_k q + noise eps), 0, 4), eps ~ N(0, 1).

    Returns integer scores of shape (n_prompts, K, len(means)) in 0..4 (the HelpSteer scale). Feed them to
    :func:`random_attribute_matrices` (temperature 1 in the notes).
    """
    n_prompts, K, rng = int_at_least("n_prompts", n_prompts, 1), _check_K(K), generator("rng", rng)
    m, b = real_array("means", means), real_array("slopes", slopes)
    if m.ndim != 1 or m.shape != b.shape or m.size < 1 or not np.all(np.isfinite(m) & np.isfinite(b)):
        raise ValueError(f"means, slopes: must be finite 1-d arrays of the same length (one per attribute), "
                         f"got shapes {m.shape} and {b.shape}")
    noise = non_negative("noise", noise)
    q = rng.standard_normal((n_prompts, K, 1))
    eps = rng.standard_normal((n_prompts, K, m.size))
    return np.clip(np.round(m + b * q + noise * eps), 0, 4).astype(np.int64)


def preference_structure(P, tol: float = 1e-12) -> dict:
    """Classify preference matrices as in the paper's Section 5 (the project's tests, notes Section 7):
    {'cyclic': a directed 3-cycle in the strict majority relation, 'sst': strongly transitive (ties
    allowed), 'strictly_sst': no off-diagonal tie, no cycle, SST, 'has_tie': some off-diagonal P_ij = 1/2}.
    Batched: bool arrays of the batch shape."""
    P = validate_preference_matrix(P)
    return {"cyclic": np.asarray(has_cycle(P, tol)), "sst": np.asarray(is_strongly_transitive(P, tol)),
            "strictly_sst": np.asarray(is_strictly_sst(P, tol)), "has_tie": np.asarray(_has_ties(P, tol))}


# ----------------------------------------------------------------------------------------------------------
# finite samples in count form (batched; the same statistics as sample_preference_pairs /
# empirical_ipo_optimum, for many independent runs at once)
# ----------------------------------------------------------------------------------------------------------


def labelled_pair_probabilities(P, mu) -> np.ndarray:
    """Q[..., w, l] = Pr(one sampled, labelled pair has winner w and loser l) when (y, y') ~ mu x mu and the
    label is Bernoulli(P_yy'): 2 mu_w mu_l P_wl off the diagonal, mu_w^2 on it (a self-pair). Sums to 1.
    Batched with broadcasting."""
    P = validate_preference_matrix(P)
    mu = validate_distribution(mu, "mu", K=P.shape[-1])
    batch_shape(P=P.shape[:-2], mu=mu.shape[:-1])
    outer = mu[..., :, None] * mu[..., None, :]
    K = P.shape[-1]
    return np.where(np.eye(K, dtype=bool), outer, 2.0 * outer * P)


def sample_pair_counts(P, mu, n: int, rng: np.random.Generator) -> np.ndarray:
    """C[..., w, l] = how many of n labelled pairs had winner w and loser l: one multinomial draw of n over
    :func:`labelled_pair_probabilities` per batch element. Distributed like :func:`pair_counts` of
    :func:`sample_preference_pairs` (with another random stream). Batched: P (..., K, K), mu (..., K)."""
    n, rng = int_at_least("n", n, 1), generator("rng", rng)
    Q = labelled_pair_probabilities(P, mu)
    K = Q.shape[-1]
    flat = Q.reshape(-1, K * K)
    flat = flat / flat.sum(-1, keepdims=True)
    counts = rng.multinomial(n, flat)
    return counts.reshape(Q.shape).astype(np.float64)


def empirical_ipo_optimum_counts(counts, pi_ref, beta) -> np.ndarray:
    """:func:`empirical_ipo_optimum` from pair counts (..., K, K) (:func:`pair_counts`), batched: the
    minimum-norm solution of the same least squares, r = L^+ b with the comparison graph's Laplacian
    L = diag(deg) - (C + C^T) (off the diagonal) and b_i = (beta/2) sum_j (C_ij - C_ji); self-pairs do not
    enter. Responses never compared keep r = 0. Returns pi (..., K)."""
    C = _check_counts(counts)
    K = C.shape[-1]
    log_ref = positive_log("pi_ref", pi_ref, K)
    beta = real_array("beta", beta, positive)
    batch_shape(counts=C.shape[:-2], pi_ref=log_ref.shape[:-1], beta=beta.shape)
    off = np.where(np.eye(K, dtype=bool), 0.0, C)
    W = off + np.swapaxes(off, -1, -2)
    L = W.sum(-1)[..., :, None] * np.eye(K) - W
    b = (beta[..., None] / 2.0) * (off.sum(-1) - off.sum(-2))
    r = np.einsum("...ij,...j->...i", np.linalg.pinv(L, hermitian=True), b)
    logits = log_ref + r
    return np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))
