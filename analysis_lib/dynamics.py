"""Iterative alignment as a dynamical system: MRS-IPO and MRS-DPO (Chen, He, Jordan & Yao 2026).

Each round t the reference follows the model geometrically and the sampler mixes on- and off-policy data,

    pi_ref^(t) ~ pi_t^alpha * pi_ref^(1 - alpha),        mu_t = lam * pi_t + (1 - lam) * pi_0,

and the next policy is the round's exact population optimum. For IPO (R1 of the project's notes) that is

    pi_{t+1} = softmax(alpha log pi_t + (1 - alpha) log pi_ref + beta P mu_t)                   (MRS-IPO)

and for DPO it is pi_{t+1} ~ pi_ref^(t) * exp(r_t / beta_D), with r_t the population-DPO optimum under mu_t
(MRS-DPO). ``lam`` is the paper's lambda (a Python keyword).

Conventions (everything float64, numpy):

* **Log space.** States are normalised log-policies log pi (shape (..., K)); the alpha = 1 runs drive some
  probabilities far below the smallest double, which is harmless here (exp underflows to 0, no log of 0 is
  ever taken).
* **Batching by broadcasting.** P (..., K, K), alpha / beta / lam (...), pi_ref / pi_0 / start (..., K): all
  leading axes broadcast against each other. A grid of many matrices times many settings is
  ``P[:, None]`` (M, 1, K, K) with ``alpha`` of shape (G,): one call, batch shape (M, G).
* **Centred logits** z (sum z = 0) are the coordinates of the map F and its Jacobian (R6); the iterator
  itself carries normalised log-probabilities (the same point, shifted by a constant).

Contents: input checks (:func:`validate_rates`; the checks shared with :mod:`analysis_lib.preferences` live in
:mod:`analysis_lib.checks`, and every bad argument is a one-line ValueError naming it), the map
(:func:`mrs_ipo_step`, :func:`mrs_ipo_map`, :func:`centre`), its Jacobian (:func:`mrs_ipo_jacobian`,
:func:`finite_difference_jacobian`, :func:`softmax_covariance`, :func:`tangent_basis`, :func:`tangent_eigenvalues`)
and closed forms (:func:`cyclic_eigenvalues`, :func:`cyclic_rho_squared`, :func:`contraction_bound`, :func:`kappa`,
:func:`dpo_effective_beta`), the fixed point (:func:`mrs_ipo_fixed_point`), the batched iterator
(:func:`run_mrs_ipo`, optionally stopping trajectories that have settled, returning a :class:`DynamicsRun` with
the metrics: terminal entropy, cycle strength = time-averaged variance of the policy; also
:func:`log_policy_entropy`, :func:`cycle_strength`, :data:`OSCILLATION_THRESHOLD`, :data:`COLLAPSE_THRESHOLD`),
Lipschitz ratios (:func:`lipschitz_ratios`, :func:`sample_lipschitz_ratios`), the population-DPO optimum
(:func:`population_dpo_optimum`, :func:`dpo_foc_residual`, its sampler derivative :func:`dpo_reward_derivative`),
MRS-DPO (:func:`mrs_dpo_step`, :func:`run_mrs_dpo`, its Jacobian :func:`mrs_dpo_jacobian`, fixed point
:func:`mrs_dpo_fixed_point` and :func:`mrs_dpo_spectral_radius`), the finite-sample round of the paper's
Section 5 (:func:`run_empirical_mrs_ipo`), many runs of it at once (:func:`run_empirical_mrs_ipo_runs`), and
summaries over many matrices and seeds (:func:`fixed_point_spectral_radius`, :func:`trend_violations`,
:func:`averaging_variances`).

The thresholds (R6-R12) come from secondary summaries of the paper and were re-derived for this project;
chapters present them as reconstructions.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logsumexp

from analysis_lib.checks import (
    array_axis,
    batch_shape,
    distribution,
    finite_array,
    flag,
    fraction,
    generator,
    in_interval,
    int_at_least,
    non_negative,
    positive,
    positive_log,
    real_array,
)
from analysis_lib.preferences import (
    empirical_ipo_optimum,
    empirical_ipo_optimum_counts,
    sample_pair_counts,
    sample_preference_pairs,
    validate_preference_matrix,
)

#: Cycle strength above which a run counts as oscillating (the project's notes, c10).
OSCILLATION_THRESHOLD = 1e-8
#: Terminal entropy below which a run counts as collapsed (the criterion of chen_06 and chen_08).
COLLAPSE_THRESHOLD = 1e-6


# ----------------------------------------------------------------------------------------------------------
# validation and broadcasting
# ----------------------------------------------------------------------------------------------------------

_unit = functools.partial(fraction, allow_zero=True)  # a number in [0, 1]


def validate_rates(alpha, beta, lam, beta_name: str = "beta"):
    """Check alpha in [0, 1], beta > 0 and lam (lambda, the on-policy fraction) in [0, 1], each a number or an
    array, and that their shapes broadcast; return them as float64 arrays.

    Raises ValueError naming the argument and what it allows (strings, None, bools and complex numbers are
    refused; :mod:`analysis_lib.checks`).
    """
    alpha, lam = real_array("alpha", alpha, _unit), real_array("lam", lam, _unit)
    beta = real_array(beta_name, beta, positive)
    batch_shape(**{"alpha": alpha.shape, beta_name: beta.shape, "lam": lam.shape})
    return alpha, beta, lam


def _alpha_below_one(alpha: np.ndarray, why: str) -> None:
    if np.any(alpha >= 1):
        raise ValueError(f"alpha: must be < 1 ({why}), got {_show(alpha)}")


def _show(arr: np.ndarray) -> str:
    return repr(arr.item()) if arr.size == 1 else f"values in [{arr.min():.4g}, {arr.max():.4g}]"


@dataclass
class _Inputs:
    """The arguments of a map, run or fixed point, validated, with their broadcast batch shape. For MRS-DPO
    ``beta`` holds beta_D."""

    P: np.ndarray  # (..., K, K)
    alpha: np.ndarray  # (...)
    beta: np.ndarray
    lam: np.ndarray
    log_ref: np.ndarray  # (..., K)
    pi_0: np.ndarray  # (..., K)
    log_pi: np.ndarray  # (..., K) the normalised log-policy of the logits / start argument
    batch_shape: tuple

    @property
    def gain(self) -> np.ndarray:
        return self.beta * self.lam

    @property
    def c(self) -> np.ndarray:
        """(1 - alpha) log pi_ref + beta (1 - lam) P pi_0: the MRS-IPO logits' part that does not depend on pi."""
        offline = np.einsum("...ij,...j->...i", self.P, self.pi_0)
        return (1 - self.alpha)[..., None] * self.log_ref + (self.beta * (1 - self.lam))[..., None] * offline


def _check_logits(value, name: str, K: int) -> np.ndarray:
    """Finite logits (or rewards) with K entries on the last axis; errors name ``name``."""
    z = finite_array(name, value)
    if z.ndim < 1 or z.shape[-1] != K:
        raise ValueError(f"{name}: must have K = {K} entries on its last axis (K from P), got shape {z.shape}")
    return z


def _logits(value, name: str, K: int) -> np.ndarray:
    """:func:`_check_logits`, normalised to log-probabilities."""
    z = _check_logits(value, name, K)
    return z - logsumexp(z, axis=-1, keepdims=True)


_NO_LOGITS = object()  # _inputs without a logits argument (the policy is ``start``)


def _inputs(P, alpha, beta, lam, pi_ref, pi_0, logits=_NO_LOGITS, logits_name: str = "logits", start=None,
            beta_name: str = "beta", extra=None) -> _Inputs:
    """Validate and broadcast (errors name the arguments as the caller spells them): the policy is ``logits``
    (named ``logits_name``) where given, else the distribution ``start`` (default pi_ref); ``extra``: more
    name=batch-shape pairs that must broadcast with the rest."""
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    alpha, beta, lam = validate_rates(alpha, beta, lam, beta_name=beta_name)
    uniform = np.full(K, 1.0 / K)
    log_ref = positive_log("pi_ref", uniform if pi_ref is None else pi_ref, K)
    pi_0 = distribution("pi_0", uniform if pi_0 is None else pi_0, K)
    if logits is not _NO_LOGITS:
        log_pi, name = _logits(logits, logits_name, K), logits_name
    else:
        log_pi, name = (log_ref if start is None else positive_log("start", start, K)), "start"
    shapes = {"P": P.shape[:-2], "alpha": alpha.shape, beta_name: beta.shape, "lam": lam.shape,
              "pi_ref": log_ref.shape[:-1], "pi_0": pi_0.shape[:-1], name: log_pi.shape[:-1], **(extra or {})}
    return _Inputs(P=P, alpha=alpha, beta=beta, lam=lam, log_ref=log_ref, pi_0=pi_0, log_pi=log_pi,
                   batch_shape=batch_shape(**shapes))


def centre(z) -> np.ndarray:
    """Centred logits: z minus its mean over the last axis (the coordinates on 1^perp)."""
    z = _last_axis("z", real_array("z", z))
    return z - z.mean(-1, keepdims=True)


def _last_axis(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name}: must have a last axis of responses (shape (..., K)), got shape {arr.shape}")
    return arr


def _log_normalise(z: np.ndarray) -> np.ndarray:
    return z - logsumexp(z, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# the map, its Jacobian and closed forms (R6-R8)
# ----------------------------------------------------------------------------------------------------------


def mrs_ipo_step(logits, P, alpha, beta, lam, pi_ref=None, pi_0=None) -> np.ndarray:
    """One MRS-IPO round from the policy softmax(logits): returns the normalised log pi_{t+1}.

    pi_{t+1} = softmax(alpha log pi_t + (1 - alpha) log pi_ref + beta P (lam pi_t + (1 - lam) pi_0)).
    pi_ref and pi_0 default to uniform. Batched by broadcasting (module docstring).
    """
    return _ipo_step(logits, "logits", P, alpha, beta, lam, pi_ref, pi_0)


def _ipo_step(logits, name, P, alpha, beta, lam, pi_ref, pi_0) -> np.ndarray:
    s = _inputs(P, alpha, beta, lam, pi_ref, pi_0, logits=logits, logits_name=name)
    log_pi = s.log_pi
    on_policy = np.einsum("...ij,...j->...i", s.P, np.exp(log_pi))
    return _log_normalise(s.alpha[..., None] * log_pi + s.c + s.gain[..., None] * on_policy)


def mrs_ipo_map(z, P, alpha, beta, lam, pi_ref=None, pi_0=None) -> np.ndarray:
    """F(z): the MRS-IPO round in centred logits (R6), F(z) = centre(alpha z + c + beta lam P softmax(z))."""
    return centre(_ipo_step(z, "z", P, alpha, beta, lam, pi_ref, pi_0))


def softmax_covariance(pi) -> np.ndarray:
    """S(pi) = diag(pi) - pi pi^T, the Jacobian of softmax (batched, (..., K, K))."""
    pi = _last_axis("pi", real_array("pi", pi))
    return pi[..., :, None] * np.eye(pi.shape[-1]) - pi[..., :, None] * pi[..., None, :]


def mrs_ipo_jacobian(logits, P, alpha, beta, lam) -> np.ndarray:
    """The Jacobian of the centred map F at z = logits (R6): Pi (alpha I + beta lam P S(pi)), with
    Pi = I - 11^T/K the centring projection and S(pi) = diag(pi) - pi pi^T.

    On 1^perp, P S(pi) = A_P S(pi) with A_P = P - 11^T/2 skew-symmetric. pi_ref and pi_0 do not enter.
    Batched (..., K, K).
    """
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    alpha, beta, lam = validate_rates(alpha, beta, lam)
    pi = np.exp(_logits(logits, "logits", K))
    batch_shape(logits=pi.shape[:-1], P=P.shape[:-2], alpha=alpha.shape, beta=beta.shape, lam=lam.shape)
    J = alpha[..., None, None] * np.eye(K) + (beta * lam)[..., None, None] * (P @ softmax_covariance(pi))
    return J - J.mean(-2, keepdims=True)


def finite_difference_jacobian(z, P, alpha, beta, lam, pi_ref=None, pi_0=None, eps: float = 1e-6) -> np.ndarray:
    """The Jacobian of the centred map F at z by central differences (an independent check of
    :func:`mrs_ipo_jacobian`; error O(eps^2)). One point, one setting: returns (K, K)."""
    z, eps = finite_array("z", z), positive("eps", eps)
    if z.ndim != 1:
        raise ValueError(f"z: must be one logit vector (shape (K,)), got shape {z.shape}")
    K = z.shape[0]
    steps = np.eye(K) * eps  # row j: perturb coordinate j
    plus = mrs_ipo_map(z + steps, P, alpha, beta, lam, pi_ref, pi_0)
    minus = mrs_ipo_map(z - steps, P, alpha, beta, lam, pi_ref, pi_0)
    return ((plus - minus) / (2 * eps)).T


def tangent_basis(K: int) -> np.ndarray:
    """An orthonormal basis Q (K x (K-1)) of 1^perp (the centred logits)."""
    K = int_at_least("K", K, 2)
    q, _ = np.linalg.qr(np.eye(K) - 1.0 / K)
    return q[:, : K - 1]


def tangent_eigenvalues(J) -> np.ndarray:
    """Eigenvalues of a Jacobian restricted to 1^perp: eig(Q^T J Q) (batched; complex, K - 1 of them)."""
    J = finite_array("J", J)
    if J.ndim < 2 or J.shape[-1] != J.shape[-2] or J.shape[-1] < 2:
        raise ValueError(f"J: must be a square K x K matrix (K >= 2) or a batch (..., K, K), got shape {J.shape}")
    Q = tangent_basis(J.shape[-1])
    return np.linalg.eigvals(Q.T @ J @ Q)


def cyclic_eigenvalues(a, alpha, beta, lam) -> np.ndarray:
    """Closed form (R7): the Jacobian at the uniform fixed point of the 3-cycle with advantage a (uniform
    pi_ref and pi_0) has eigenvalues alpha +- i beta lam a / sqrt(3) on 1^perp. Returns (..., 2) complex."""
    alpha, beta, lam = validate_rates(alpha, beta, lam)
    a = real_array("a", a, functools.partial(in_interval, low=0.0, high=0.5, low_open=True))
    batch_shape(a=a.shape, alpha=alpha.shape, beta=beta.shape, lam=lam.shape)
    imag = beta * lam * a / np.sqrt(3.0)
    return np.stack([alpha + 1j * imag, alpha - 1j * imag], axis=-1)


def cyclic_rho_squared(a, alpha, beta, lam) -> np.ndarray:
    """rho^2 = alpha^2 + a^2 beta^2 lam^2 / 3: the squared modulus of :func:`cyclic_eigenvalues`. The uniform
    fixed point is linearly unstable (persistent oscillation, R7) when rho^2 > 1."""
    return np.abs(cyclic_eigenvalues(a, alpha, beta, lam)[..., 0]) ** 2


def contraction_bound(P, alpha, beta, lam) -> np.ndarray:
    """L = alpha + (beta lam / 2) ||P - 11^T/2||_2 (R8): a Lipschitz constant of F in centred logits (Euclidean
    norm). L < 1 guarantees a contraction, hence a unique fixed point reached from every start."""
    P = validate_preference_matrix(P)
    alpha, beta, lam = validate_rates(alpha, beta, lam)
    batch_shape(P=P.shape[:-2], alpha=alpha.shape, beta=beta.shape, lam=lam.shape)
    spectral = np.linalg.norm(P - 0.5, ord=2, axis=(-2, -1))
    return alpha + 0.5 * beta * lam * spectral


def kappa(alpha, beta, lam) -> np.ndarray:
    """The self-reinforcement gain kappa = beta lam / (1 - alpha) (R6, R9); needs alpha < 1."""
    alpha, beta, lam = validate_rates(alpha, beta, lam)
    _alpha_below_one(alpha, "kappa = beta lam / (1 - alpha)")
    return beta * lam / (1 - alpha)


def dpo_effective_beta(beta_d) -> np.ndarray:
    """beta_eff = 4 / beta_D: near uniform, MRS-DPO behaves like MRS-IPO with this beta (R12, derived by us
    from sigma'(0) = 1/4 with r = beta_D log(pi / pi_ref))."""
    return 4.0 / real_array("beta_d", beta_d, positive)


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------


def log_policy_entropy(log_policy, axis: int = -1) -> np.ndarray:
    """Shannon entropy -sum pi log pi computed from log pi (exact where pi underflows; cf.
    :func:`analysis_lib.preferences.entropy` for probabilities)."""
    z = real_array("log_policy", log_policy)
    axis = array_axis("axis", axis, z.ndim)
    with np.errstate(invalid="ignore"):
        terms = np.where(np.isneginf(z), 0.0, -np.exp(z) * z)
    return terms.sum(axis)


def cycle_strength(policies, axis: int = 0) -> np.ndarray:
    """Cycle strength: sum over responses of the variance over time of pi_t(i) (population variance),
    for a recorded trajectory of probabilities with time on ``axis`` and responses on the last axis."""
    p = _last_axis("policies", real_array("policies", policies))
    return p.var(axis=array_axis("axis", axis, p.ndim)).sum(-1)


# ----------------------------------------------------------------------------------------------------------
# the batched iterator
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DynamicsRun:
    """The outcome of a batched run (batch shape B, K responses).

    log_policy: (B, K) the final normalised log pi_T. cycle_strength: (B,) sum_i Var_t pi_t(i) over the last
    ``tail`` iterates (t = steps - tail + 1 .. steps). tail_mean / tail_min / tail_max: (B, K) mean, minimum
    and maximum of pi_t(i) over that window. history: (steps + 1, B, K) log pi_t when recorded.
    entropy_history: (steps + 1, B) when recorded. steps_run: (B,) the iterations each trajectory was actually
    iterated (``steps`` unless :func:`run_mrs_ipo` stopped it early; ``None`` for MRS-DPO).
    """

    log_policy: np.ndarray
    cycle_strength: np.ndarray
    tail_mean: np.ndarray
    tail_min: np.ndarray
    tail_max: np.ndarray
    steps: int
    tail: int
    history: np.ndarray | None = None
    entropy_history: np.ndarray | None = None
    steps_run: np.ndarray | None = None

    @property
    def policy(self) -> np.ndarray:
        return np.exp(self.log_policy)

    @property
    def entropy(self) -> np.ndarray:
        return log_policy_entropy(self.log_policy)

    @property
    def oscillating(self) -> np.ndarray:
        """cycle_strength > OSCILLATION_THRESHOLD (1e-8)."""
        return self.cycle_strength > OSCILLATION_THRESHOLD

    @property
    def collapsed(self) -> np.ndarray:
        """Terminal entropy < COLLAPSE_THRESHOLD (1e-6)."""
        return self.entropy < COLLAPSE_THRESHOLD


def _window_add(pi, shift, s1, s2, lo, hi) -> None:
    """Add the next iterate pi to a window's shifted sums, minimum and maximum (in place)."""
    d = pi - shift
    s1 += d
    s2 += d * d
    np.minimum(lo, pi, out=lo)
    np.maximum(hi, pi, out=hi)


def _window_summary(shift, s1, s2, lo, hi, n: int, k_axis: int):
    """(sum_i Var_t pi_t(i), mean, min, max) of a window of n iterates from its shifted sums."""
    m = s1 / n
    return np.maximum(s2 / n - m * m, 0.0).sum(k_axis), shift + m, lo, hi


class _TailStats:
    """Streaming sum_i Var_t pi_t(i), mean, min and max over a window (sums shifted by the first iterate: exact
    for constant sequences). Works on any array layout; reduces the response axis ``k_axis`` for the variance."""

    def __init__(self, k_axis: int):
        self.k_axis, self.n = k_axis, 0

    def add(self, pi: np.ndarray) -> None:
        if self.n == 0:
            self.shift, self.s1, self.s2 = pi.copy(), np.zeros_like(pi), np.zeros_like(pi)
            self.lo, self.hi = pi.copy(), pi.copy()
        else:
            _window_add(pi, self.shift, self.s1, self.s2, self.lo, self.hi)
        self.n += 1

    def finish(self):
        return _window_summary(self.shift, self.s1, self.s2, self.lo, self.hi, self.n, self.k_axis)


# The batched MRS-IPO loop (:func:`_iterate_flat`): rows are advanced in blocks of _BLOCK (cache-sized),
# _CHECK_EVERY steps at a time; with early stopping, the rows that have settled are finished after every
# _CHECK_EVERY steps (:func:`_settled`: remaining change of log pi estimated below _STOP_TOL, rounding wobble
# below _WOBBLE_TOL, with _WOBBLE_ULPS spacings of doubles as one step's rounding).
_BLOCK = 8192
_CHECK_EVERY = 32
_STOP_TOL = 1e-12
_WOBBLE_TOL = 1e-10
_WOBBLE_ULPS = 4


class _Rows:
    """The rows of a chunk still being iterated, all at the same step: arrays whose last axis is the row."""

    def __init__(self, **arrays):
        self.__dict__.update(arrays)

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows ``mask`` selects, in C order (boolean indexing would put the row axis first in memory,
        and numpy's kernels, einsum's among them, may round differently on other layouts)."""
        for name, arr in vars(self).items():
            setattr(self, name, np.compress(mask, arr, axis=-1))


def _iterate_flat(log_pi, alpha, gain_P, c, steps, tail, record, record_entropy, early_stop):
    """The MRS-IPO loop on one chunk in a K-major layout: log_pi (K, N), alpha (N,), gain_P = beta lam P
    (K, K, N), c (K, N). The logits z are only shifted (max 0), never normalised inside the loop: a constant
    in z does not change softmax(alpha z + ...), so one exp of K x N per step suffices.

    Rows are advanced in blocks of at most _BLOCK rows, _CHECK_EVERY steps at a time. With ``early_stop``
    (never with ``record`` / ``record_entropy``) the rows that have settled (:func:`_settled`) are finished after
    every _CHECK_EVERY steps, their remaining tail iterates taken as copies of the current one, and dropped. A
    row's arithmetic does not depend on the rows beside it, so a row that is never stopped ends bitwise as in a
    full run. Returns (log pi_T, cycle strength, tail mean, min, max, history, entropy history, steps run), each
    row's results those of the step at which it was finished."""
    K, N = log_pi.shape
    first = steps + 1 - tail  # the tail window's first iterate (>= 0)
    rows = _Rows(idx=np.arange(N), z=log_pi.copy(), pi=np.exp(log_pi), total=np.ones(N), alpha=alpha,
                 gain_P=gain_P, c=c)
    if first == 0:
        _window_open(rows.pi, rows)
    if early_stop:  # the stop test's statistics of the last step (:func:`_advance`) and the previous test's d
        rows.d, rows.scale, rows.exact, rows.d_prev = np.empty(N), np.empty(N), np.empty(N, bool), np.full(N, np.nan)
    out = _Rows(log_pi=np.empty((K, N)), var=np.empty(N), mean=np.empty((K, N)), lo=np.empty((K, N)),
                hi=np.empty((K, N)), steps_run=np.empty(N, dtype=np.int64))
    history = np.empty((steps + 1, K, N)) if record else None
    ent = np.empty((steps + 1, N)) if record_entropy else None
    if record:
        history[0] = log_pi
    if record_entropy:
        ent[0] = log_policy_entropy(log_pi, axis=0)
    on_policy = np.empty((K, min(_BLOCK, N)))
    t = 0
    while t < steps and rows.idx.size:
        m = min(_CHECK_EVERY, steps - t)
        n = rows.idx.size
        bounds = np.linspace(0, n, -(-n // _BLOCK) + 1).astype(int)  # blocks of equal size, at most _BLOCK
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            _advance(rows, slice(a, b), on_policy, t, m, first, history, ent, early_stop)
        t += m
        if early_stop and t < steps:
            stop = _settled(rows)
            if stop.any():
                _finish(rows, stop, t, first, tail, out)
                rows.keep(~stop)
    if rows.idx.size:
        _finish(rows, np.ones(rows.idx.size, dtype=bool), steps, first, tail, out)
    return out.log_pi, out.var, out.mean, out.lo, out.hi, history, ent, out.steps_run


_WINDOW = ("shift", "s1", "s2", "lo", "hi")  # the tail window's sums (:func:`_window_add`), from when it opens


def _window_open(pi, rows, cols=slice(None)) -> None:
    """Open the tail window of the rows ``cols`` with its first iterate pi (allocating the sums for all rows
    the first time)."""
    if not hasattr(rows, "shift"):
        for name in _WINDOW:
            setattr(rows, name, np.zeros_like(rows.pi))
    for name in ("shift", "lo", "hi"):
        getattr(rows, name)[:, cols] = pi
    rows.s1[:, cols] = 0.0
    rows.s2[:, cols] = 0.0


def _advance(rows, cols, on_policy, t, m, first, history, ent, early_stop) -> None:
    """Iterate the rows ``cols`` (a slice) from step t to t + m in place. With ``early_stop``, also record the
    last step's statistics for the stop test (:func:`_settled`): d, the max-norm change of log pi; scale,
    max |log pi|; exact, whether the state did not change at all."""
    z, pi = rows.z[:, cols], rows.pi[:, cols]
    alpha, gain_P, c = rows.alpha[cols], rows.gain_P[:, :, cols], rows.c[:, cols]
    on_policy = on_policy[:, : z.shape[1]]
    total = rows.total[cols].copy()
    for step in range(t + 1, t + m + 1):
        if early_stop and step == t + m:
            z_prev, total_prev = z.copy(), total
        np.einsum("ijn,jn->in", gain_P, pi, out=on_policy)
        z *= alpha
        z += c
        z += on_policy
        z -= z.max(0)
        np.exp(z, out=pi)
        total = pi.sum(0)
        pi /= total
        if history is not None or ent is not None:
            log_pi = z - np.log(total)
            if history is not None:
                history[step][:, cols] = log_pi
            if ent is not None:
                ent[step][cols] = log_policy_entropy(log_pi, axis=0)
        if step == first:
            _window_open(pi, rows, cols)
        elif step > first:
            _window_add(pi, *(getattr(rows, w)[:, cols] for w in _WINDOW))
    rows.total[cols] = total
    if early_stop:
        log_pi = z - np.log(total)
        rows.d[cols] = np.abs(log_pi - (z_prev - np.log(total_prev))).max(0)
        rows.scale[cols] = np.abs(log_pi).max(0)
        rows.exact[cols] = (z == z_prev).all(0)


def _settled(rows) -> np.ndarray:
    """The stop test after a block of _CHECK_EVERY steps: which rows may be finished now, their remaining
    iterates taken as copies of the current one, with every terminal value within 1e-9 of the full run's.

    A row stops when its state did not change in the last step (bitwise: then it never changes again), or when
    it converges to an attracting fixed point fast enough. With d the last step's change of log pi (max-norm),
    q = (d / d_prev)^(1/_CHECK_EVERY) the rate measured over the last _CHECK_EVERY steps and u = _WOBBLE_ULPS
    spacings of doubles at max |log pi| (one step's rounding), the remaining change under geometric decay at
    rate r is at most d r / (1 - r), and rounding keeps the iterates wobbling within about u / (1 - r) of the
    fixed point. So the row stops when, for r = 1 - d / max(_STOP_TOL, 2u) capped at 1 - u / _WOBBLE_TOL (the
    slowest rate that keeps both below their tolerances), the measured rate is at most r (not asked where
    d <= 2u) and every eigenvalue of the map's Jacobian at the current point (on 1^perp) has modulus below r:
    the decay will not slow down, and the point attracts (a trajectory that creeps along the stable directions
    of a repelling fixed point is never stopped). _STOP_TOL = 1e-12 leaves a factor 1000 for transient growth
    of non-normal Jacobians.
    """
    d, u = rows.d, _WOBBLE_ULPS * np.spacing(rows.scale)
    rate = np.minimum(1 - d / np.maximum(_STOP_TOL, 2 * u), 1 - u / _WOBBLE_TOL)
    # the measured rate (d / d_prev)^(1/_CHECK_EVERY) is at most r (false on the first test: d_prev is nan); not
    # asked of a step within rounding, which says nothing about the rate: there only the Jacobian tells
    converging = (rate > 0) & ((d <= rows.d_prev * np.maximum(rate, 0.0) ** _CHECK_EVERY) | (d <= 2 * u))
    rows.d_prev = d.copy()
    if converging.any():
        i = np.flatnonzero(converging)
        T = _tangent_jacobian(rows.pi[:, i], rows.alpha[i], rows.gain_P[:, :, i])
        converging[i] = _spectral_radius_below(T, rate[i])
    return converging | rows.exact


def _tangent_jacobian(pi, alpha, gain_P) -> np.ndarray:
    """Q^T J Q, the Jacobian of :func:`mrs_ipo_jacobian` (J = alpha I + beta lam P S(pi)) in the orthonormal basis Q
    of 1^perp (:func:`tangent_basis`), in the loop's K-major layout: pi (K, n), alpha (n,), gain_P (K, K, n) ->
    (K - 1, K - 1, n). (gain_P S(pi))_ij = (gain_P_ij - (gain_P pi)_i) pi_j; the contractions with Q are
    matrix products over all n at once."""
    K = pi.shape[0]
    Q = tangent_basis(K)
    M = (gain_P - np.einsum("ijn,jn->in", gain_P, pi)[:, None]) * pi[None]
    T = np.einsum("ajn,jb->abn", (Q.T @ M.reshape(K, -1)).reshape(K - 1, K, -1), Q)
    T += alpha * np.eye(K - 1)[:, :, None]
    return T


def _finish(rows, which, t, first, tail, out) -> None:
    """Write the results of the rows ``which`` (a mask), at step t, into ``out`` (at their chunk positions). The
    tail window's iterates after t are copies of the current one."""
    idx, pi = rows.idx[which], rows.pi[:, which]
    pad = tail - max(0, t - first + 1)  # iterates of the window still to come
    if pad == tail:  # the window has not opened: all of it is the current iterate
        window = (pi, np.zeros_like(pi), np.zeros_like(pi), pi, pi)
    else:
        window = tuple(getattr(rows, w)[:, which] for w in _WINDOW)
        if pad:
            shift, s1, s2, lo, hi = window
            d = pi - shift
            s1 += pad * d
            s2 += pad * d * d
            np.minimum(lo, pi, out=lo)
            np.maximum(hi, pi, out=hi)
    out.var[idx], out.mean[:, idx], out.lo[:, idx], out.hi[:, idx] = _window_summary(*window, tail, k_axis=0)
    out.log_pi[:, idx] = rows.z[:, which] - np.log(rows.total[which])
    out.steps_run[idx] = t


def _spectral_radius_below(T: np.ndarray, r: np.ndarray) -> np.ndarray:
    """True where every eigenvalue of the real square matrices T (d, d, ...) (matrix axes first) has modulus below
    r (..., > 0).

    The Schur-Cohn test on the characteristic polynomial of T / r, whose coefficients come from the traces of
    its powers (Newton's identities): exact up to rounding, and for small d (K - 1 here) much cheaper than
    eigenvalues. Each reduction p -> (a_d p - a_0 p*) / z, with p* the reversed polynomial, keeps the number of
    roots outside the unit disk when |a_0| < |a_d|; all roots are inside iff that holds at every degree."""
    A = T / r
    d = A.shape[0]
    power, sums = A, []  # sums[k] = tr(A^(k+1))
    for k in range(d):
        if k:
            power = np.einsum("ab...,bc...->ac...", power, A)
        sums.append(np.einsum("aa...->...", power))
    coef = [np.ones_like(sums[0])]  # det(x I - A) = x^d + coef[1] x^(d-1) + ... + coef[d]
    for k in range(1, d + 1):
        coef.append(-sum(coef[k - j] * sums[j - 1] for j in range(1, k + 1)) / k)
    a = np.stack(coef)  # leading coefficient first
    inside = np.ones(a.shape[1:], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(d):
            inside &= np.abs(a[-1]) < np.abs(a[0])
            a = (a[0] * a - a[-1] * a[::-1])[:-1]
            a = a / a[0]
    return inside


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_mrs_ipo(P, alpha, beta, lam, steps: int, pi_ref=None, pi_0=None, start=None, tail: int = 1000,
                record: bool = False, record_entropy: bool = False, threads: int | None = None,
                early_stop: bool = False) -> DynamicsRun:
    """Iterate MRS-IPO ``steps`` rounds for a whole batch at once, in log space. Returns a :class:`DynamicsRun`.

    P (..., K, K); alpha, beta, lam (...); pi_ref, pi_0, start (..., K) probabilities (default: uniform
    references, start = pi_ref); everything broadcasts (module docstring). ``tail``: the window of the last
    iterates for the cycle strength and the tail statistics (clipped to steps + 1). ``record`` keeps every
    log pi_t (memory: (steps + 1) x batch x K doubles), ``record_entropy`` every entropy. ``threads``: the batch
    is split over this many threads (numpy releases the GIL; default: the CPU count, at most 8); the result
    does not depend on it.

    ``early_stop``: stop iterating a trajectory once it has settled on a fixed point: its state stopped changing
    (bitwise), or it converges geometrically to an attracting fixed point and its remaining change is estimated
    below 1e-12 (:func:`_settled`); its remaining iterates are then taken as copies of the current one. Every
    returned value (final log pi, cycle strength, tail mean / min / max, hence entropy and the classification)
    agrees with the full run's to 1e-9 (tested); trajectories that oscillate or drift (alpha = 1 collapse) run
    all steps and are bitwise those of the full run. ``steps_run`` says how many steps each one ran. This makes
    large phase diagrams cheap where most trajectories converge; e.g. a 32 x 32 grid over M matrices:
    ``run_mrs_ipo(P[:, None, None], alphas[:, None], gains[None, :] / lam, lam, 3000, early_stop=True)``
    (``.oscillating``, ``.collapsed``, ``.entropy``, ``.cycle_strength`` of shape (M, 32, 32)). Where a full run's
    cycle strength is round-off (about 1e-30) a stopped trajectory's is often exactly 0: clip before taking logs.
    Not with ``record`` / ``record_entropy``.
    """
    steps = int_at_least("steps", steps, 0)
    tail = min(int_at_least("tail", tail, 1), steps + 1)
    threads = _default_threads() if threads is None else int_at_least("threads", threads, 1)
    record, record_entropy = flag("record", record), flag("record_entropy", record_entropy)
    if flag("early_stop", early_stop) and (record or record_entropy):
        raise ValueError("early_stop: must be False when record or record_entropy is set (they keep every iterate), "
                         "got True")
    s = _inputs(P, alpha, beta, lam, pi_ref, pi_0, start=start)
    shape, K = s.batch_shape, s.P.shape[-1]
    N = int(np.prod(shape))
    # the results, trajectories flattened: (name, leading axes, trailing axes) in the order _iterate_flat returns
    layout = [("log_policy", (), (K,)), ("cycle_strength", (), ()), ("tail_mean", (), (K,)), ("tail_min", (), (K,)),
              ("tail_max", (), (K,)), ("history", (steps + 1,), (K,)), ("entropy_history", (steps + 1,), ()),
              ("steps_run", (), ())]
    wanted = {"history": record, "entropy_history": record_entropy}
    out = {name: np.empty(lead + (N,) + trail, dtype=np.int64 if name == "steps_run" else float)
           for name, lead, trail in layout if wanted.get(name, True)}

    def k_major(x, trailing):  # x's own rows (its leading axes flattened) as (*trailing, rows), and its leading shape
        lead = (1,) * (len(shape) + len(trailing) - x.ndim) + x.shape[: x.ndim - len(trailing)]
        return np.ascontiguousarray(np.moveaxis(x.reshape((-1,) + trailing), 0, -1)), lead

    inputs = [k_major(s.log_pi, (K,)), k_major(s.alpha, ()), k_major(s.gain, ()), k_major(s.P, (K, K)),
              k_major(s.c, (K,))]

    def run_rows(a, b):  # trajectories a..b: their inputs gathered, their results written into ``out``
        at = np.unravel_index(np.arange(a, b), shape) if shape else ()

        def rows(x, lead):  # the trajectories' rows of x, (*trailing, b - a)
            row = np.ravel_multi_index(tuple(i if n > 1 else 0 for i, n in zip(at, lead, strict=True)), lead)
            return np.take(x, np.broadcast_to(row, (b - a,)), axis=-1)

        log_pi, alpha_r, gain, P_r, c = (rows(*x) for x in inputs)
        parts = _iterate_flat(log_pi, alpha_r, gain * P_r, c, steps, tail, record, record_entropy, early_stop)
        for (name, lead, _), part in zip(layout, parts, strict=True):
            if part is not None:  # K-major (lead, *trail, rows) -> (lead, rows, *trail)
                out[name][(slice(None),) * len(lead) + (slice(a, b),)] = np.moveaxis(part, -1, len(lead))

    # a few chunks per thread, handed out as threads come free (early stopping makes their costs unequal)
    n_chunks = 1 if threads == 1 else max(1, min(4 * threads, N // _BLOCK))
    bounds = np.linspace(0, N, n_chunks + 1).astype(int)
    if n_chunks == 1:
        run_rows(0, N)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run_rows, bounds[:-1], bounds[1:]))
    res = {name: out[name].reshape(lead + shape + trail) if name in out else None for name, lead, trail in layout}
    return DynamicsRun(steps=steps, tail=tail, **res)


# ----------------------------------------------------------------------------------------------------------
# fixed points and Lipschitz ratios
# ----------------------------------------------------------------------------------------------------------


def mrs_ipo_fixed_point(P, alpha, beta, lam, pi_ref=None, pi_0=None, start=None, tol: float = 1e-13,
                        max_iter: int = 200) -> np.ndarray:
    """The interior fixed point of MRS-IPO for alpha < 1 (unique, R6), by damped Newton on centred logits.

    Solves log pi = log pi_ref + (beta (1 - lam)/(1 - alpha)) P pi_0 + kappa P pi + const with
    kappa = beta lam / (1 - alpha). Returns the normalised log pi* (batched). ``start``: an initial policy
    (default pi_ref). An instance has converged when the max-norm of the residual is below ``tol``, or below 16
    spacings of doubles at the equation's largest term (log pi, the offline term, kappa P pi) where that is larger
    (:func:`_tolerance`: at |log pi| >= 512 rounding alone leaves more than 1e-13). Raises ValueError for
    alpha = 1 (there is no interior fixed point in general) and RuntimeError if Newton does not converge within
    ``max_iter`` iterations.
    """
    s = _inputs(P, alpha, beta, lam, pi_ref, pi_0, start=start)
    _alpha_below_one(s.alpha, "the interior fixed point is only defined for alpha in [0, 1)")
    tol, max_iter = positive("tol", tol), int_at_least("max_iter", max_iter, 1)
    shape, K = s.batch_shape, s.P.shape[-1]
    one_minus = (1 - s.alpha)[..., None]
    Pb = np.broadcast_to(s.P, shape + (K, K))
    c = np.broadcast_to(s.c / one_minus, shape + (K,))
    kap = np.broadcast_to(s.gain / (1 - s.alpha), shape)[..., None, None]
    u = np.broadcast_to(s.log_pi, shape + (K,)).copy()
    eye, ones = np.eye(K), np.full((K, K), 1.0 / K)

    def residual(u):  # (residual, its tolerance) per instance
        feedback = kap[..., 0] * np.einsum("...ij,...j->...i", Pb, np.exp(u))
        return centre(u - c - feedback), _tolerance(tol, u, c, feedback)

    R, tol_u = residual(u)
    norm = np.abs(R).max(-1)
    for _ in range(max_iter):
        if np.all(norm < tol_u):
            break
        pi = np.exp(u)
        J = eye - kap * (Pb @ softmax_covariance(pi))
        J = J - J.mean(-2, keepdims=True)
        J = J - J.mean(-1, keepdims=True) + ones  # Pi J Pi + 11^T/K: invertible, keeps steps in 1^perp
        du = np.linalg.solve(J, -R[..., None])[..., 0]
        step = np.ones(shape)
        for _ in range(40):  # backtracking on the max-norm residual, per instance
            u_new = _log_normalise(u + step[..., None] * du)
            R_new, tol_new = residual(u_new)
            norm_new = np.abs(R_new).max(-1)
            ok = (norm_new < (1 - 1e-4 * step) * norm) | (norm < tol_u)
            if np.all(ok):
                break
            step = np.where(ok, step, step / 2)
        accept = norm >= tol_u
        u = np.where(accept[..., None], u_new, u)
        R = np.where(accept[..., None], R_new, R)
        norm = np.where(accept, norm_new, norm)
        tol_u = np.where(accept, tol_new, tol_u)
    _raise_unless_converged("mrs_ipo_fixed_point", norm, tol_u)
    return u


_ROUNDING_ULPS = 16  # a residual's rounding floor, in spacings of doubles at the largest term of its equation


def _tolerance(tol: float, *terms) -> np.ndarray:
    """The solvers' tolerance per instance (last axis reduced): ``tol``, raised to 16 spacings of doubles at the
    largest |entry| of the equation's terms where that is larger. Rounding alone leaves a residual of a few such
    spacings (1.1e-13 at |log pi| in [512, 1024)), so no absolute tolerance below them can be met; elsewhere
    ``tol`` is unchanged."""
    largest = functools.reduce(np.maximum, [np.abs(t).max(-1) for t in terms])
    return np.maximum(tol, _ROUNDING_ULPS * np.spacing(largest))


def _raise_unless_converged(solver: str, norm: np.ndarray, tol: np.ndarray) -> None:
    failed = ~(norm < tol)
    if np.any(failed):
        raise RuntimeError(f"{solver}: Newton did not converge for {int(failed.sum())} of {norm.size} instances "
                           f"(max residual {norm.max():.3g}, tolerance {np.max(tol):.3g}); raise max_iter or tol")


def lipschitz_ratios(z1, z2, P, alpha, beta, lam, pi_ref=None, pi_0=None) -> np.ndarray:
    """||F(z1) - F(z2)|| / ||centre(z1) - centre(z2)|| (Euclidean, centred logits): the measured Lipschitz
    ratios of the MRS-IPO map, to compare with :func:`contraction_bound` (R8). Batched."""
    K = validate_preference_matrix(P).shape[-1]
    z1, z2 = _check_logits(z1, "z1", K), _check_logits(z2, "z2", K)
    batch_shape(z1=z1.shape[:-1], z2=z2.shape[:-1])
    d_in = np.linalg.norm(centre(z1) - centre(z2), axis=-1)
    if np.any(d_in == 0):
        raise ValueError("z1, z2: each pair must be two different points (mod constants)")
    F1 = centre(_ipo_step(z1, "z1", P, alpha, beta, lam, pi_ref, pi_0))
    F2 = centre(_ipo_step(z2, "z2", P, alpha, beta, lam, pi_ref, pi_0))
    return np.linalg.norm(F1 - F2, axis=-1) / d_in


def sample_lipschitz_ratios(P, alpha, beta, lam, rng: np.random.Generator, n_pairs: int = 50, pi_ref=None,
                            pi_0=None) -> np.ndarray:
    """Lipschitz ratios of F at ``n_pairs`` random point pairs per instance: z1 ~ N(0, s^2 I) with s ~ U(0, 3)
    (policies from near-uniform to concentrated), z2 = z1 + e v with v a random unit direction and e
    log-uniform in [1e-4, 3] (near pairs probe the Jacobian, far pairs the mean-value bound). Returns
    (n_pairs, *batch); the arguments broadcast as in :func:`run_mrs_ipo`."""
    rng, n_pairs = generator("rng", rng), int_at_least("n_pairs", n_pairs, 1)
    s = _inputs(P, alpha, beta, lam, pi_ref, pi_0)
    shape, K = s.batch_shape, s.P.shape[-1]
    size = (n_pairs,) + shape
    z1 = rng.uniform(0, 3, size=size)[..., None] * rng.standard_normal(size + (K,))
    v = centre(rng.standard_normal(size + (K,)))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    z2 = z1 + 10 ** rng.uniform(-4, np.log10(3), size=size)[..., None] * v
    return lipschitz_ratios(z1, z2, P, alpha, beta, lam, pi_ref, pi_0)


# ----------------------------------------------------------------------------------------------------------
# DPO: population optimum (R10) and MRS-DPO (R12)
# ----------------------------------------------------------------------------------------------------------


_MAX_DPO_STEP = 2.0  # largest change of any reward in one Newton step of the DPO solver


def dpo_foc_residual(r, P, mu) -> np.ndarray:
    """F_y(r) = sum_y' mu_y' [P_yy' - sigmoid(r_y - r_y')]: the population-DPO first-order condition divided
    by mu_y (zero at the optimum; defined also where mu_y = 0). Batched."""
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    r, mu = _check_logits(r, "r", K), distribution("mu", mu, K)
    batch_shape(r=r.shape[:-1], P=P.shape[:-2], mu=mu.shape[:-1])
    return _dpo_foc(r, P, mu)


def _dpo_foc(r: np.ndarray, P: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """:func:`dpo_foc_residual` on validated arrays (the solvers' inner loops)."""
    return np.einsum("...ij,...j->...i", P - expit(r[..., :, None] - r[..., None, :]), mu)


def _dpo_laplacian(r: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid(r_y - r_y'), Jhat) for rewards r and sampler mu (..., K): Jhat = diag(W mu) - W diag(mu) with
    W_yy' = sigmoid'(r_y - r_y') off the diagonal (computed as sigmoid * sigmoid(-), no cancellation) is minus the
    derivative in r of the DPO first-order condition (:func:`dpo_foc_residual`): a weighted graph Laplacian."""
    K = r.shape[-1]
    diff = r[..., :, None] - r[..., None, :]
    sig = expit(diff)
    W = sig * expit(-diff) * (1 - np.eye(K))
    Jhat = np.einsum("...ij,...j->...i", W, mu)[..., :, None] * np.eye(K) - W * mu[..., None, :]
    return sig, Jhat


def _mixed_sampler(lam: np.ndarray, pi: np.ndarray, pi_0: np.ndarray) -> np.ndarray:
    """The on-policy sampler mu = lam pi + (1 - lam) pi_0 (lam broadcast over the last axis), renormalised."""
    mu = lam * pi + (1 - lam) * pi_0
    return mu / mu.sum(-1, keepdims=True)


def population_dpo_optimum(P, mu, tol: float = 1e-12, max_iter: int = 100, start=None) -> np.ndarray:
    """The population-DPO optimum: centred rewards r (r = beta_D log(pi / pi_ref)) minimising
    -sum_{y, y'} mu_y mu_y' P_yy' log sigmoid(r_y - r_y') (convex), by damped Newton on the first-order
    condition :func:`dpo_foc_residual` (its Jacobian is a weighted graph Laplacian scaled by 1/mu).

    For a Bradley-Terry P = sigmoid(s_i - s_j) the optimum is centre(s) for every mu (R10). Needs
    off-diagonal entries of P strictly inside (0, 1) (else the optimum is at infinity) and mu with positive
    mass somewhere; responses with mu_y = 0 get the extension solving their own condition. ``tol``: on the max-norm
    of the condition (raised to the rounding floor where the rewards are huge, :func:`_tolerance`; the condition's
    other terms are probabilities). Batched.
    """
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    off = ~np.eye(K, dtype=bool)
    if np.any((P[..., off] <= 0) | (P[..., off] >= 1)):
        raise ValueError("P: off-diagonal entries must lie strictly inside (0, 1) for a finite DPO optimum")
    mu = distribution("mu", mu, K)
    tol, max_iter = positive("tol", tol), int_at_least("max_iter", max_iter, 1)
    start = None if start is None else _check_logits(start, "start", K)
    shape = batch_shape(P=P.shape[:-2], mu=mu.shape[:-1], **({} if start is None else {"start": start.shape[:-1]}))
    P, mu = np.broadcast_to(P, shape + (K, K)), np.broadcast_to(mu, shape + (K,))
    r = np.zeros(shape + (K,)) if start is None else centre(np.broadcast_to(start, shape + (K,)))
    F = _dpo_foc(r, P, mu)
    norm, tol_r = np.abs(F).max(-1), _tolerance(tol, r)
    for _ in range(max_iter):
        if np.all(norm < tol_r):
            break
        Jhat = _dpo_laplacian(r, mu)[1]
        # gauge: keep the most-sampled response fixed (drop its equation, implied by the others since
        # mu^T F = 0); the remaining system is strictly diagonally dominant, hence regular
        gauge = np.eye(K)[np.argmax(mu, axis=-1)]  # (..., K) one-hot
        keep = 1.0 - gauge
        Jhat = Jhat * keep[..., :, None] * keep[..., None, :] + gauge[..., :, None] * gauge[..., None, :]
        Jhat = np.where((norm < tol_r)[..., None, None], np.eye(K), Jhat)  # converged: any regular matrix
        dr = np.linalg.solve(Jhat, (F * keep)[..., None])[..., 0]
        # cap the step (Newton on sigmoids overshoots far from the optimum, e.g. for a response with mu_y = 0)
        scale = np.minimum(1.0, _MAX_DPO_STEP / np.maximum(np.abs(dr).max(-1), 1e-300))
        dr *= scale[..., None]
        step = np.ones(shape)
        for _ in range(40):
            r_new = centre(r + step[..., None] * dr)
            F_new = _dpo_foc(r_new, P, mu)
            norm_new = np.abs(F_new).max(-1)
            # Armijo on the residual; a full capped step may also cross a flat (saturated) stretch
            crossed = (scale < 1) & (step == 1) & (norm_new <= norm)
            ok = (norm_new < (1 - 1e-4 * step) * norm) | (norm < tol_r) | crossed
            if np.all(ok):
                break
            step = np.where(ok, step, step / 2)
        accept = norm >= tol_r
        r = np.where(accept[..., None], r_new, r)
        F = np.where(accept[..., None], F_new, F)
        norm = np.where(accept, norm_new, norm)
        tol_r = _tolerance(tol, r)
    _raise_unless_converged("population_dpo_optimum", norm, tol_r)
    return r


def _mrs_dpo_round(s: _Inputs, log_pi, r_start=None):
    """One round on validated inputs: returns (log pi_{t+1}, r_t, mu_t)."""
    mu = _mixed_sampler(s.lam[..., None], np.exp(log_pi), s.pi_0)
    r = population_dpo_optimum(s.P, mu, start=r_start)
    z = s.alpha[..., None] * log_pi + (1 - s.alpha)[..., None] * s.log_ref + r / s.beta[..., None]
    return _log_normalise(z), r, mu


def mrs_dpo_step(logits, P, alpha, beta_d, lam, pi_ref=None, pi_0=None, r_start=None):
    """One MRS-DPO round (R12 as simulated by us): mu_t = lam pi_t + (1 - lam) pi_0, r_t = the population-DPO
    optimum under mu_t, log pi_{t+1} = normalise(alpha log pi_t + (1 - alpha) log pi_ref + r_t / beta_D).
    Returns (log pi_{t+1}, r_t). ``r_start`` warm-starts the DPO solve. Batched; errors name the argument
    (``logits`` for the policy)."""
    K = validate_preference_matrix(P).shape[-1]
    r_start = None if r_start is None else _check_logits(r_start, "r_start", K)
    extra = {} if r_start is None else {"r_start": r_start.shape[:-1]}
    s = _inputs(P, alpha, beta_d, lam, pi_ref, pi_0, logits=logits, beta_name="beta_d", extra=extra)
    log_next, r, _ = _mrs_dpo_round(s, s.log_pi, r_start)
    return log_next, r


def dpo_reward_derivative(P, mu, r=None) -> np.ndarray:
    """dr/dmu: the derivative of the centred population-DPO optimum r(mu) (:func:`population_dpo_optimum`)
    with respect to the sampler, by implicit differentiation of the first-order condition
    F(r, mu) = sum_y' mu_y' [P_yy' - sigmoid(r_y - r_y')] = 0.

    With W_yy' = sigmoid'(r_y - r_y') (off the diagonal), dF/dr = -(diag(W mu) - W diag(mu)) =: -Jhat (a
    weighted graph Laplacian with mu^T Jhat = 0 and Jhat 1 = 0) and dF/dmu = D, D_yb = P_yb - sigmoid(r_y - r_b).
    So Jhat dr = D dmu, and the centred solution is dr = (Jhat + mu 1^T)^{-1} D dmu (mu^T D = 0 at the
    optimum). Returns (..., K, K) with [..., y, b] = dr_y / dmu_b for tangent directions (sum dmu = 0).
    ``r``: the optimum if already known (otherwise solved). Near mu = uniform, r = 0 this is
    4 Pi (P - 11^T/2) (R12's beta_eff = 4/beta_D). Batched.
    """
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    mu = distribution("mu", mu, K)
    r = population_dpo_optimum(P, mu) if r is None else _check_logits(r, "r", K)
    shape = batch_shape(P=P.shape[:-2], mu=mu.shape[:-1], r=r.shape[:-1])
    P, mu, r = (np.broadcast_to(P, shape + (K, K)), np.broadcast_to(mu, shape + (K,)),
                np.broadcast_to(r, shape + (K,)))
    sig, Jhat = _dpo_laplacian(r, mu)
    M = Jhat + mu[..., :, None] * np.ones(K)
    D = P - sig
    return np.linalg.solve(M, D)


def mrs_dpo_jacobian(logits, P, alpha, beta_d, lam, pi_0=None, r=None) -> np.ndarray:
    """The Jacobian of the centred MRS-DPO map G(z) = centre(alpha z + (1 - alpha) log pi_ref + r(mu(z)) / beta_D)
    at z = logits, mu(z) = lam softmax(z) + (1 - lam) pi_0:

        DG = Pi (alpha I + (lam / beta_D) (dr/dmu) S(pi)),

    with dr/dmu from :func:`dpo_reward_derivative`, S(pi) = diag(pi) - pi pi^T and Pi = I - 11^T/K. Unlike
    MRS-IPO's (:func:`mrs_ipo_jacobian`) it depends on pi_0 (through the sampler at which r is solved); pi_ref
    does not enter. ``r``: the DPO optimum under mu(z) if known (e.g. from :func:`mrs_dpo_step`). At the
    uniform point of the 3-cycle with uniform pi_0 its eigenvalues on 1^perp are those of MRS-IPO with
    beta = 4 / beta_D (R12). Batched (..., K, K); errors name the argument.
    """
    P = validate_preference_matrix(P)
    K = P.shape[-1]
    extra = {} if r is None else {"r": _check_logits(r, "r", K).shape[:-1]}
    s = _inputs(P, alpha, beta_d, lam, None, pi_0, logits=logits, beta_name="beta_d", extra=extra)
    pi = np.exp(s.log_pi)
    mu = _mixed_sampler(s.lam[..., None], pi, s.pi_0)
    if r is None:
        r = population_dpo_optimum(s.P, mu)
    dr = dpo_reward_derivative(s.P, mu, r)
    J = (s.alpha[..., None, None] * np.eye(K)
         + (s.lam / s.beta)[..., None, None] * (dr @ softmax_covariance(pi)))
    return J - J.mean(-2, keepdims=True)


def _dpo_fixed_point_newton(r, P, gain, lam, log_ref, pi_0, tol, max_iter):
    """Damped Newton on H(r) = 0 (see :func:`mrs_dpo_fixed_point`) for N flat instances: r (N, K), P (N, K, K),
    gain and lam (N, 1), log_ref and pi_0 (N, K). Each iteration works on the unconverged instances only.
    Returns (r, max-norm residual (N,), tolerance (N,)): ``tol``, raised to the rounding floor of the rewards where
    they are huge (:func:`_tolerance`; the other terms of H are probabilities)."""
    K = r.shape[-1]
    r = r.copy()

    def evaluate(r, i):
        pi = np.exp(_log_normalise(log_ref[i] + gain[i] * r))
        mu = _mixed_sampler(lam[i], pi, pi_0[i])
        return _dpo_foc(r, P[i], mu), pi, mu

    H = evaluate(r, slice(None))[0]
    norm, tol_r = np.abs(H).max(-1), _tolerance(tol, r)
    for _ in range(max_iter):
        i = np.flatnonzero(norm >= tol_r)
        if i.size == 0:
            break
        ri = r[i]
        Hi, pi, mu = evaluate(ri, i)
        sig, Jhat = _dpo_laplacian(ri, mu)
        A = -Jhat + (gain[i] * lam[i])[:, :, None] * ((P[i] - sig) @ softmax_covariance(pi))
        A = A + mu[:, :, None] * np.ones(K)  # the gauge (mu^T H = 0 identically); steps are centred below
        dr = centre(np.linalg.solve(A, -Hi[:, :, None])[:, :, 0])
        dr = dr * np.minimum(1.0, _MAX_DPO_STEP / np.maximum(np.abs(dr).max(-1), 1e-300))[:, None]
        step = np.ones(i.size)
        merit = (Hi**2).sum(-1)
        for _ in range(40):  # Armijo backtracking on |H|^2 (the step is a descent direction for it)
            r_new = ri + step[:, None] * dr
            H_new = evaluate(r_new, i)[0]
            ok = (H_new**2).sum(-1) <= (1 - 2e-4 * step) * merit
            if np.all(ok):
                break
            step = np.where(ok, step, step / 2)
        r[i] = r_new
        norm[i], tol_r[i] = np.abs(H_new).max(-1), _tolerance(tol, r_new)
    return r, norm, tol_r


def mrs_dpo_fixed_point(P, alpha, beta_d, lam, pi_ref=None, pi_0=None, start=None, tol: float = 1e-12,
                        max_iter: int = 100, continuation_steps: int = 10) -> np.ndarray:
    """An interior fixed point of MRS-DPO for alpha < 1, by damped Newton in the rewards. Batched.

    A fixed point pi* satisfies log pi* = log pi_ref + g r* + const with g = 1 / (beta_D (1 - alpha)), where
    r* is the population-DPO optimum (:func:`population_dpo_optimum`) under mu* = lam pi* + (1 - lam) pi_0.
    We solve for the centred rewards r: with pi(r) = softmax(log pi_ref + g r) and mu(r) its sampler, the DPO
    first-order condition H(r) = sum_y' mu_y'(r) [P_yy' - sigmoid(r_y - r_y')] = 0 (:func:`dpo_foc_residual`)
    has the Newton matrix -Jhat + g lam D S(pi) (notation of :func:`dpo_reward_derivative`). Rewards stay
    bounded where the logits of a concentrated policy would not. Newton starts at the DPO optimum under the
    sampler of ``start`` (default pi_ref). Where it stalls (a near-singular Newton matrix at strong feedback g),
    the instance is re-solved by continuation in the gain, g_j = g j / ``continuation_steps``, each solve
    warm-started from the last (at g -> 0 the solution is the DPO optimum under pi_ref's sampler).

    Unlike MRS-IPO's (R6) we have no proof that this point is unique: the tests check it from several starts
    on random instances. Returns the normalised log pi*. Raises ValueError for alpha = 1 and RuntimeError when
    some instance does not reach ``tol`` (max-norm of H; raised to the rounding floor where the rewards are huge,
    :func:`_tolerance`) within ``max_iter`` Newton iterations per solve.
    """
    s = _inputs(P, alpha, beta_d, lam, pi_ref, pi_0, start=start, beta_name="beta_d")
    _alpha_below_one(s.alpha, "the interior fixed point is only defined for alpha in [0, 1)")
    tol, max_iter = positive("tol", tol), int_at_least("max_iter", max_iter, 1)
    continuation_steps = int_at_least("continuation_steps", continuation_steps, 1)
    shape, K = s.batch_shape, s.P.shape[-1]
    off = ~np.eye(K, dtype=bool)
    if np.any((s.P[..., off] <= 0) | (s.P[..., off] >= 1)):
        raise ValueError("P: off-diagonal entries must lie strictly inside (0, 1) for a finite DPO optimum")
    N = int(np.prod(shape))

    def flat(x, trailing):
        return np.broadcast_to(x, shape + trailing).reshape((N,) + trailing)

    P_f = flat(s.P, (K, K))
    gain = flat(1.0 / (s.beta * (1 - s.alpha)), ())[:, None]
    lam_f = flat(s.lam, ())[:, None]
    log_ref, pi_0 = flat(s.log_ref, (K,)), flat(s.pi_0, (K,))

    def start_rewards(log_pi, idx):
        return population_dpo_optimum(P_f[idx], _mixed_sampler(lam_f[idx], np.exp(log_pi), pi_0[idx]))

    everyone = np.arange(N)
    r, norm, tol_r = _dpo_fixed_point_newton(start_rewards(flat(s.log_pi, (K,)), everyone), P_f, gain, lam_f,
                                             log_ref, pi_0, tol, max_iter)
    stalled = np.flatnonzero(norm >= tol_r)
    if stalled.size:
        idx = stalled
        r_c = start_rewards(log_ref[idx], idx)
        for j in range(1, continuation_steps + 1):
            r_c, norm_c, tol_c = _dpo_fixed_point_newton(r_c, P_f[idx], gain[idx] * j / continuation_steps,
                                                         lam_f[idx], log_ref[idx], pi_0[idx], tol, max_iter)
        r[idx], norm[idx], tol_r[idx] = r_c, norm_c, tol_c
    _raise_unless_converged("mrs_dpo_fixed_point", norm, tol_r)
    return _log_normalise(log_ref + gain * r).reshape(shape + (K,))


def mrs_dpo_spectral_radius(P, alpha, beta_d, lam, pi_ref=None, pi_0=None, start=None) -> np.ndarray:
    """The spectral radius on 1^perp of the MRS-DPO Jacobian (:func:`mrs_dpo_jacobian`) at the fixed point
    (:func:`mrs_dpo_fixed_point`, alpha < 1): above 1 the fixed point repels nearby orbits, below 1 it attracts
    them (the local threshold; for the 3-cycle with uniform references it is sqrt of
    :func:`cyclic_rho_squared` at beta = 4 / beta_D). Batched."""
    log_pi = mrs_dpo_fixed_point(P, alpha, beta_d, lam, pi_ref, pi_0, start=start)
    J = mrs_dpo_jacobian(log_pi, P, alpha, beta_d, lam, pi_0)
    return np.abs(tangent_eigenvalues(J)).max(-1)


def run_mrs_dpo(P, alpha, beta_d, lam, steps: int, pi_ref=None, pi_0=None, start=None, tail: int = 200,
                record: bool = False) -> DynamicsRun:
    """Iterate MRS-DPO ``steps`` rounds for a batch (broadcasting as :func:`run_mrs_ipo`); the DPO solve of
    each round is warm-started from the previous one. Returns a :class:`DynamicsRun` (cycle strength over the
    last ``tail`` iterates). Errors name the argument (shapes, K, ranges)."""
    steps = int_at_least("steps", steps, 0)
    tail, record = min(int_at_least("tail", tail, 1), steps + 1), flag("record", record)
    s = _inputs(P, alpha, beta_d, lam, pi_ref, pi_0, start=start, beta_name="beta_d")
    K = s.P.shape[-1]
    log_pi = np.broadcast_to(s.log_pi, s.batch_shape + (K,)).copy()
    history = [log_pi] if record else None
    stats = _TailStats(k_axis=-1)
    if steps + 1 - tail <= 0:
        stats.add(np.exp(log_pi))
    r = None
    for t in range(1, steps + 1):
        log_pi, r, _ = _mrs_dpo_round(s, log_pi, r_start=r)
        if record:
            history.append(log_pi)
        if t >= steps + 1 - tail:
            stats.add(np.exp(log_pi))
    var, mean, lo, hi = stats.finish()
    return DynamicsRun(log_policy=log_pi, cycle_strength=var, tail_mean=mean, tail_min=lo, tail_max=hi,
                       steps=steps, tail=tail, history=None if history is None else np.stack(history))


# ----------------------------------------------------------------------------------------------------------
# finite samples (the paper's Section 5)
# ----------------------------------------------------------------------------------------------------------


def run_empirical_mrs_ipo(P, alpha, beta, lam, steps: int, n_pairs: int, rng: np.random.Generator,
                          pi_ref=None, pi_0=None, start=None) -> np.ndarray:
    """MRS-IPO with finite data: each round draws ``n_pairs`` pairs from mu_t x mu_t with Bernoulli(P) labels
    (:func:`analysis_lib.preferences.sample_preference_pairs`) and takes the exact empirical IPO optimum
    (:func:`analysis_lib.preferences.empirical_ipo_optimum`, a graph-Laplacian least squares) with reference
    pi_ref^(t) ~ pi_t^alpha pi_ref^(1 - alpha). One matrix, one setting. Returns the trajectory
    (steps + 1, K) of policies."""
    P, alpha, beta, lam, log_ref, pi_0, log_pi = _one_setting(P, alpha, beta, lam, pi_ref, pi_0, start)
    steps, n_pairs = int_at_least("steps", steps, 0), int_at_least("n_pairs", n_pairs, 1)
    rng = generator("rng", rng)
    out = [np.exp(log_pi)]
    for _ in range(steps):
        pi = np.exp(log_pi)
        winners, losers = sample_preference_pairs(P, _mixed_sampler(lam, pi, pi_0), n_pairs, rng)
        ref_t = np.exp(_log_normalise(alpha * log_pi + (1 - alpha) * log_ref))
        pi_next = empirical_ipo_optimum(winners, losers, ref_t, beta)
        with np.errstate(divide="ignore"):
            log_pi = np.log(pi_next)
        out.append(pi_next)
    return np.stack(out)


def _one_setting(P, alpha, beta, lam, pi_ref, pi_0, start):
    """The finite-sample runs' inputs, one matrix and one setting, validated: (P, alpha, beta, lam, log pi_ref,
    pi_0, log start), the start defaulting to pi_ref."""
    P = validate_preference_matrix(P)
    if P.ndim != 2:
        raise ValueError(f"P: takes one K x K matrix, got shape {P.shape}")
    K = P.shape[0]
    rates = validate_rates(alpha, beta, lam)
    if any(x.ndim for x in rates):
        raise ValueError(f"alpha, beta, lam: must be numbers (one setting), got shapes {[x.shape for x in rates]}")
    uniform = np.full(K, 1.0 / K)
    log_ref = positive_log("pi_ref", uniform if pi_ref is None else pi_ref, K)
    pi_0 = distribution("pi_0", uniform if pi_0 is None else pi_0, K)
    log_pi = positive_log("start", np.exp(log_ref) if start is None else start, K)
    for name, arr in (("pi_ref", log_ref), ("pi_0", pi_0), ("start", log_pi)):
        if arr.ndim != 1:
            raise ValueError(f"{name}: must be one distribution (shape (K,)), got shape {arr.shape}")
    return (P, *(float(x) for x in rates), log_ref, pi_0, log_pi)


# ----------------------------------------------------------------------------------------------------------
# summaries over many matrices and many seeds (the paper's Section 5)
# ----------------------------------------------------------------------------------------------------------


def fixed_point_spectral_radius(P, alpha, beta, lam, pi_ref=None, pi_0=None) -> np.ndarray:
    """The spectral radius of the MRS-IPO Jacobian on 1^perp at the unique interior fixed point (alpha < 1).

    Above 1 the fixed point repels, so no orbit that starts elsewhere converges to it (the uniqueness of R6
    then means the orbit keeps moving); below 1 it attracts nearby orbits. For the 3-cycle with uniform
    references this is sqrt(:func:`cyclic_rho_squared`). Batched by broadcasting as :func:`run_mrs_ipo`.
    """
    log_pi = mrs_ipo_fixed_point(P, alpha, beta, lam, pi_ref, pi_0)
    J = mrs_ipo_jacobian(log_pi, P, alpha, beta, lam)
    return np.abs(tangent_eigenvalues(J)).max(-1)


@dataclass
class TrendCheck:
    """The outcome of :func:`trend_violations` on a grid of per-matrix values (M, *grid).

    mean: (*grid) the mean over matrices. step: the mean paired difference between consecutive grid points
    along the axis (signed so that a positive step goes the expected way). noise: its tolerance, atol + z times
    the standard error of the paired difference. violated: step < -noise (a move the wrong way larger than the
    noise). All of shape (*grid) with the axis one shorter.
    """

    mean: np.ndarray
    step: np.ndarray
    noise: np.ndarray
    violated: np.ndarray

    @property
    def n_violations(self) -> int:
        return int(self.violated.sum())

    @property
    def n_comparisons(self) -> int:
        return int(self.violated.size)


def trend_violations(values, axis: int, increasing: bool = True, atol: float = 0.0, z: float = 2.0,
                     where=None) -> TrendCheck:
    """Is the mean over matrices monotone along one grid axis, up to noise?

    ``values``: (M, *grid) one value per matrix (axis 0) and grid cell. ``axis``: the grid axis (0 = first grid
    axis, i.e. axis 1 of ``values``). For each pair of consecutive grid points the paired difference
    d_m = v_m[next] - v_m[this] (negated when ``increasing`` is False) has mean D and standard error
    SE = sd(d) / sqrt(M); the pair violates the trend when D < -(atol + z SE). ``atol`` absorbs values that are
    numerically zero (e.g. converged runs), ``z`` the sampling noise of averaging over M matrices.
    ``where``: an optional boolean mask of the comparisons' shape; pairs outside it never count as violations
    (e.g. a saturated regime). Returns a :class:`TrendCheck`.
    """
    v = real_array("values", values)
    if v.ndim < 2 or v.shape[0] < 2:
        raise ValueError(f"values: must have shape (matrices >= 2, *grid) with at least one grid axis, "
                         f"got shape {v.shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis < v.ndim - 1:
        raise ValueError(f"axis: must be a grid axis in 0..{v.ndim - 2}, got {axis!r}")
    if v.shape[axis + 1] < 2:
        raise ValueError(f"values: grid axis {axis} needs at least 2 points, got {v.shape[axis + 1]}")
    atol, z, increasing = non_negative("atol", atol), non_negative("z", z), flag("increasing", increasing)
    d = np.diff(v, axis=axis + 1) * (1.0 if increasing else -1.0)
    step = d.mean(0)
    noise = atol + z * d.std(0, ddof=1) / np.sqrt(v.shape[0])
    violated = step < -noise
    if where is not None:
        where = np.asarray(where)
        if where.dtype != bool or where.shape != violated.shape:
            raise ValueError(f"where: must be a boolean mask of the comparisons' shape {violated.shape}, got "
                             f"{where.dtype} of shape {where.shape}")
        violated &= where
    return TrendCheck(mean=v.mean(0), step=step, noise=noise, violated=violated)


def averaging_variances(trajectories, window: int):
    """Per-run oscillation vs the oscillation of the averaged trajectory.

    ``trajectories``: (runs, T + 1, K) policies of independent runs (e.g. seeds of
    :func:`run_empirical_mrs_ipo`). Over the last ``window`` iterates returns (per_run, averaged): per_run (runs,)
    the :func:`cycle_strength` of each run, averaged the cycle strength of the mean trajectory over runs. Runs
    that rotate with random phases cancel in the average, so averaged << mean(per_run) although every run
    oscillates (the paper's "averaging hides oscillations").
    """
    x = real_array("trajectories", trajectories)
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"trajectories: must have shape (runs, T + 1, K), got shape {x.shape}")
    window = int_at_least("window", window, 2)
    if window > x.shape[1]:
        raise ValueError(f"window: must be at most the trajectory length {x.shape[1]}, got {window}")
    tail = x[:, -window:]
    return cycle_strength(tail, axis=1), float(cycle_strength(tail.mean(0), axis=0))


def run_empirical_mrs_ipo_runs(P, alpha, beta, lam, steps: int, n_pairs: int, runs: int,
                               rng: np.random.Generator, pi_ref=None, pi_0=None, start=None) -> np.ndarray:
    """``runs`` independent finite-sample MRS-IPO runs at once: the same round as :func:`run_empirical_mrs_ipo`
    (n_pairs labelled pairs from mu_t x mu_t, exact empirical IPO optimum with reference
    pi_t^alpha pi_ref^(1 - alpha)), in count form (:func:`analysis_lib.preferences.sample_pair_counts` and
    :func:`analysis_lib.preferences.empirical_ipo_optimum_counts`), which is statistically identical and
    about runs times faster. One matrix, one setting. Returns (runs, steps + 1, K) policies."""
    P, alpha, beta, lam, log_ref, pi_0, log_pi = _one_setting(P, alpha, beta, lam, pi_ref, pi_0, start)
    steps, n_pairs = int_at_least("steps", steps, 0), int_at_least("n_pairs", n_pairs, 1)
    runs, rng = int_at_least("runs", runs, 1), generator("rng", rng)
    log_pi = np.broadcast_to(log_pi, (runs, P.shape[0])).copy()
    out = [np.exp(log_pi)]
    for _ in range(steps):
        pi = np.exp(log_pi)
        counts = sample_pair_counts(P, _mixed_sampler(lam, pi, pi_0), n_pairs, rng)
        ref_t = np.exp(_log_normalise(alpha * log_pi + (1 - alpha) * log_ref))
        pi_next = empirical_ipo_optimum_counts(counts, ref_t, beta)
        with np.errstate(divide="ignore"):
            log_pi = np.log(pi_next)
        out.append(pi_next)
    return np.stack(out, axis=1)
