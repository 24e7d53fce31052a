"""The training-accuracy guarantee of Im & Li (2024) in the last-layer model, as reconstructed in the paper notes.

The paper states "rigorous guarantees on the training accuracy" under the assumption that the centred embeddings
are alpha-subexponential; its exact statement could not be read. **The form implemented here is our
reconstruction** (paper notes section 4.4), not the paper's theorem.

Setting (see :mod:`analysis_lib.lastlayer`): v = w_Yes - w_No; the policy prefers the chosen answer on x iff
s v^T g(x) > 0 (a linear decision boundary through the origin). Subexponential tail along a unit vector u, with
constant alpha (the standard form, Vershynin 2018, section 2.7):

    P(|<u, g - mu>| >= t) <= 2 exp(-t / alpha)        for all t >= 0.

For a positive item (s = +1) with class mean mu+, a misclassification s v^T g <= 0 needs
|<u, g - mu+>| >= v^T mu+ / ||v|| with u = v / ||v||, so

    P(positive misclassified) <= 2 exp(-v^T mu+ / (alpha ||v||))      when v^T mu+ > 0 (else the bound is 1),

and the same with -v^T mu- for the negatives. The expected accuracy is at least
1 - p * bound+ - (1 - p) * bound- (p = fraction of positives): :func:`accuracy_bound_for_head`.

Early in training v moves along a fixed drift: v(t) ~ v(0) + eta beta t m with m = p mu+ - (1 - p) mu- (the signed
mean; m = Delta/2 for a balanced behaviour, so c(t) = eta beta t / 2 in the notes). With ||v(t)|| <= ||v(0)|| +
eta beta t ||m|| this gives the bound as a function of t alone: :func:`accuracy_bound_over_steps`.

alpha is estimated from the features along the relevant directions (:func:`estimate_alpha`), either as the
empirical psi_1 (Orlicz) norm, the smallest K with mean(exp(|x| / K)) <= 2 (which implies the tail form above,
Markov's inequality), or as the smallest alpha for which the empirical tail itself obeys the bound
(:func:`tail_alpha`; never larger than the empirical psi_1 norm).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from analysis_lib import checks as C

ALPHA_METHODS = ("psi1", "tail")


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------

def _sample(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: must be a non-empty sample")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: must be finite (found NaN or inf)")
    return a


def _vector(name: str, x, d: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"{name}: must be a finite, non-empty 1-d vector, got shape {a.shape}")
    if d is not None and a.shape[0] != d:
        raise ValueError(f"{name}: must have length {d}, got {a.shape[0]}")
    return a


# ---------------------------------------------------------------------------------------------------------------
# The subexponential constant
# ---------------------------------------------------------------------------------------------------------------

def psi1_norm(x, rtol: float = 1e-10) -> float:
    """Empirical psi_1 (subexponential Orlicz) norm of a 1-d sample: the smallest K > 0 with
    mean(exp(|x_i| / K)) <= 2 (Vershynin 2018, definition 2.7.5, applied to the empirical law).

    Found by bisection on log K (the mean is decreasing in K); computed with log-sum-exp, so large |x|/K never
    overflows. 0 for an all-zero sample. For a Laplace law with scale b the population value is 2b.
    """
    a = np.abs(_sample("x", x))
    if a.max() == 0:
        return 0.0
    target = math.log(2.0) + math.log(a.size)

    def excess(k: float) -> float:  # log sum exp(a/K) - log(2n): > 0 means K is too small
        return float(logsumexp(a / k)) - target

    lo, hi = a.max() / (target + 1.0), a.max()
    while excess(hi) > 0:  # mean(exp(a/K)) -> 1 < 2 as K -> inf: an upper bracket exists
        hi *= 2
    while excess(lo) <= 0:
        lo /= 2
    while hi - lo > rtol * hi:
        mid = math.sqrt(lo * hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return hi


def tail_alpha(x) -> float:
    """The smallest alpha for which the empirical tail of a 1-d sample obeys P(|X| >= t) <= 2 exp(-t / alpha) for
    every t >= 0: max over the sample of |x_i| / log(2 n / #{j : |x_j| >= |x_i|}).

    (The empirical tail is a step function and the bound decreases in t, so checking t = |x_i| suffices.) For a
    Laplace law with scale b it tends to b. Never larger than :func:`psi1_norm` of the same sample.
    """
    a = np.abs(_sample("x", x))
    asc = np.sort(a)
    count_ge = a.size - np.searchsorted(asc, a, side="left")
    return float(np.max(a / np.log(2.0 * a.size / count_ge)))


def _alpha_of(sample: np.ndarray, method: str) -> float:
    return psi1_norm(sample) if method == "psi1" else tail_alpha(sample)


def _class_parts(features, yes_mask) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(features, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] == 0 or not np.isfinite(g).all():
        raise ValueError(f"features: must be a finite, non-empty (n, d) array, got shape {g.shape}")
    m = np.asarray(yes_mask)
    if m.shape != (g.shape[0],) or m.dtype != bool:
        raise ValueError(f"yes_mask: must be a boolean array of shape ({g.shape[0]},)")
    if m.all() or not m.any():
        raise ValueError("yes_mask: needs at least one Yes and one No item")
    return g, m


def unit_directions(directions, d: int) -> np.ndarray:
    """Rows of ``directions`` (a vector or a (k, d) array) scaled to unit length; zero rows are an error."""
    u = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    if u.ndim != 2 or u.shape[1] != d or u.shape[0] == 0 or not np.isfinite(u).all():
        raise ValueError(f"directions: must be a finite vector of length {d} or a (k, {d}) array, got shape {u.shape}")
    norms = np.linalg.norm(u, axis=1)
    if (norms == 0).any():
        raise ValueError("directions: every direction must be non-zero")
    return u / norms[:, None]


def centred_projections(features, yes_mask, directions) -> np.ndarray:
    """<u_k, g_i - mu_class(i)> for every item i and unit direction u_k (shape (n, k)), each item centred at the
    empirical mean of its own class (Yes or No)."""
    g, m = _class_parts(features, yes_mask)
    u = unit_directions(directions, g.shape[1])
    centred = g.copy()
    centred[m] -= g[m].mean(axis=0)
    centred[~m] -= g[~m].mean(axis=0)
    return centred @ u.T


def estimate_alpha(features, yes_mask, directions, method: str = "psi1") -> float:
    """The subexponential constant alpha of a behaviour along the given directions: the largest, over the
    directions and the two classes, of the psi_1 norm (``method='psi1'``) or the tail-fit constant (``'tail'``) of
    the centred projections <u, g - mu_class>. Use the directions the bound is applied along (e.g. the points of the
    decision-boundary path, :func:`boundary_path`)."""
    if method not in ALPHA_METHODS:
        raise ValueError(f"method: must be one of {list(ALPHA_METHODS)}, got {method!r}")
    proj = centred_projections(features, yes_mask, directions)
    m = np.asarray(yes_mask)
    return max(_alpha_of(proj[mask, k], method) for k in range(proj.shape[1]) for mask in (m, ~m))


# ---------------------------------------------------------------------------------------------------------------
# The bound
# ---------------------------------------------------------------------------------------------------------------

def class_error_bound(margin, norm, alpha: float) -> np.ndarray | float:
    """min(1, 2 exp(-margin / (alpha norm))) where margin > 0, else 1: the subexponential bound on the probability
    that an item of a class whose mean has signed score ``margin`` (= s v^T mu_s) is misclassified by a head of norm
    at most ``norm``. Vectorised."""
    alpha = C.positive("alpha", alpha)
    margin, norm = np.asarray(margin, dtype=np.float64), np.asarray(norm, dtype=np.float64)
    if (norm <= 0).any() or not np.isfinite(norm).all() or not np.isfinite(margin).all():
        raise ValueError("norm: must be finite and > 0 (and margin finite)")
    with np.errstate(over="ignore"):
        out = np.where(margin > 0, np.minimum(1.0, 2.0 * np.exp(-margin / (alpha * norm))), 1.0)
    return float(out) if out.ndim == 0 else out


def accuracy_bound_for_head(v, mu_pos, mu_neg, alpha: float, yes_fraction: float = 0.5) -> float:
    """Lower bound on the expected accuracy 1[s v^T g > 0] of the head difference v = w_Yes - w_No:
    1 - p bound(v^T mu+, ||v||) - (1 - p) bound(-v^T mu-, ||v||) (:func:`class_error_bound`), clipped at 0."""
    v = _vector("v", v)
    mu_pos, mu_neg = _vector("mu_pos", mu_pos, v.size), _vector("mu_neg", mu_neg, v.size)
    p = C.fraction("yes_fraction", yes_fraction, allow_zero=True)
    nv = float(np.linalg.norm(v))
    if nv == 0:
        return 0.0
    err = p * class_error_bound(v @ mu_pos, nv, alpha) + (1 - p) * class_error_bound(-(v @ mu_neg), nv, alpha)
    return max(0.0, 1.0 - float(err))


def accuracy_bound_along_path(v_path, mu_pos, mu_neg, alpha: float, yes_fraction: float = 0.5) -> np.ndarray:
    """:func:`accuracy_bound_for_head` at every row of ``v_path`` (e.g. the actual v(t) of a training run,
    :attr:`analysis_lib.lastlayer.LastLayerRun.v_path`), with the exact norm ||v(t)||.

    Note: with ``alpha`` fitted (:func:`estimate_alpha`) on the same items and along the same directions v(t), the
    bound holds for the empirical accuracy of those items by construction (Markov's inequality on the empirical law);
    it is a statement about the expected accuracy, to be checked on other items or along other directions."""
    V = np.atleast_2d(np.asarray(v_path, dtype=np.float64))
    if V.ndim != 2 or V.shape[0] == 0 or not np.isfinite(V).all():
        raise ValueError(f"v_path: must be a finite (T, d) array of head differences, got shape {V.shape}")
    return np.array([accuracy_bound_for_head(v, mu_pos, mu_neg, alpha, yes_fraction) for v in V])


def boundary_path(v0, drift, steps, lr: float, beta: float) -> np.ndarray:
    """The early-time path of the decision-boundary normal, v(t) = v(0) + eta beta t m, for the step counts
    ``steps`` (shape (len(steps), d)). ``drift`` m is the signed class mean p mu+ - (1 - p) mu-
    (:func:`analysis_lib.lastlayer.signed_mean`; Delta/2 for a balanced behaviour)."""
    v0 = _vector("v0", v0)
    m = _vector("drift", drift, v0.size)
    lr, beta = C.positive("lr", lr), C.positive("beta", beta)
    t = np.atleast_1d(np.asarray(steps, dtype=np.float64))
    if not np.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"steps: must be step counts >= 0, got {steps!r}")
    return v0[None, :] + lr * beta * t[:, None] * m[None, :]


def accuracy_bound_over_steps(steps, *, v0, drift, mu_pos, mu_neg, alpha: float, lr: float, beta: float,
                              yes_fraction: float = 0.5) -> np.ndarray:
    """The reconstructed guarantee as a function of the step count t (paper notes 4.4; our reconstruction):

        acc(t) >= 1 - p B(v(t)^T mu+) - (1 - p) B(-v(t)^T mu-),   B(a) = min(1, 2 exp(-a / (alpha N(t)))) for a > 0,

    with v(t) = v(0) + eta beta t m (:func:`boundary_path`) and N(t) = ||v(0)|| + eta beta t ||m|| >= ||v(t)||.
    Relies on the early-time approximation of v(t) (the sigmoid weights stay near 1/2, true for small beta)."""
    path = boundary_path(v0, drift, steps, lr, beta)
    v0, m = np.asarray(v0, dtype=np.float64), np.asarray(drift, dtype=np.float64)
    d = v0.size
    mu_pos, mu_neg = _vector("mu_pos", mu_pos, d), _vector("mu_neg", mu_neg, d)
    p = C.fraction("yes_fraction", yes_fraction, allow_zero=True)
    t = np.atleast_1d(np.asarray(steps, dtype=np.float64))
    norm = np.linalg.norm(v0) + lr * beta * t * np.linalg.norm(m)
    if (norm == 0).any():
        raise ValueError("v0, drift: the head difference is zero at some step; the bound is undefined there")
    err = p * class_error_bound(path @ mu_pos, norm, alpha) + (1 - p) * class_error_bound(-(path @ mu_neg), norm,
                                                                                          alpha)
    return np.clip(1.0 - np.atleast_1d(err), 0.0, 1.0)


def angle_to(v, delta) -> np.ndarray | float:
    """Angle in degrees between each row of ``v`` (or a vector) and ``delta``: how far the decision-boundary normal
    is from the class-mean direction."""
    delta = _vector("delta", delta)
    V = np.atleast_2d(np.asarray(v, dtype=np.float64))
    if V.shape[1] != delta.size or not np.isfinite(V).all():
        raise ValueError(f"v: must be finite with {delta.size} columns, got shape {V.shape}")
    norms = np.linalg.norm(V, axis=1) * np.linalg.norm(delta)
    if (norms == 0).any():
        raise ValueError("v, delta: must be non-zero")
    cos = np.clip(V @ delta / norms, -1.0, 1.0)
    out = np.degrees(np.arccos(cos))
    return float(out[0]) if np.ndim(v) == 1 else out
