"""Im & Li's last-layer model: DPO on the unembedding W (V x d) of fixed features, single-token Yes/No answers.

The setting of the official code (shawn-im/dpo-dynamics, ``last_layer_training.py``): a prompt x has a frozen
embedding g(x) in R^d (the last prompt token's final hidden state); the policy is ``log_softmax(W g(x))`` over the
whole vocabulary; only two tokens answer, " Yes" (row ``yes_id``) and " No" (row ``no_id``). A preference pair is
coded by its sign s = +1 (chosen = Yes, rejected = No) or s = -1 (chosen = No, rejected = Yes). The reference
policy is the starting head W(0).

Notation (the paper notes, section 4): v = w_Y - w_N, v_ref = v(0), r_i = beta s_i (v - v_ref)^T g_i. Then

* the log-partition cancels: log pi(chosen) - log pi(rejected) = s v^T g, so the DPO loss is a logistic
  regression, L(W) = mean_i -log sigmoid(r_i), that depends on W only through v - v_ref
  (:func:`dpo_loss_logistic_form`);
* its gradient is closed-form and lives on the two answer rows only, with opposite signs
  (:func:`dpo_gradient_closed_form`), so W(t) - W(0) = (e_Y - e_N) delta(t)^T is rank one;
* first full-batch step from W(0): loss drop ~ eta (beta^2/2) ||p mu+ - (1-p) mu-||^2, = eta beta^2 ||Delta||^2/8
  for a balanced behaviour (:func:`first_step_loss_drop`);
* ||W(t) - W(0)||_F <= sqrt(2) eta beta t max_i ||g_i|| (:func:`weight_change_bound`).

Everything here accepts numpy arrays or torch tensors. Theory uses float64 (the default); float32 is allowed.
Log-probs are always computed in float32 or wider.

Training (:func:`train_last_layer_dpo`) follows the official loop and is fast at LLM vocabulary size: the rows of W
other than Yes/No get an exactly zero DPO gradient, so their log-sum-exp is computed once per feature set and
each step costs O(batch * d), not O(batch * V * d). ``full_softmax=True`` runs the literal computation
(log_softmax of the whole W g on every batch) instead, for verification; both give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F

from analysis_lib import checks as C
from analysis_lib.losses import dpo_loss
from analysis_lib.runtime import get_device
from analysis_lib.training import EvalSet, TrainingRun, train

NOISES = ("gaussian", "laplace")
OPTIMIZERS = ("sgd", "adam")


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------

def _float_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _tensor(name: str, x, ndim: int, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """x as a finite floating tensor with ``ndim`` dimensions (no copy when nothing changes)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != ndim:
        raise ValueError(f"{name}: must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: must not be empty, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise ValueError(f"{name}: must hold real numbers, got dtype {t.dtype}")
    if dtype is None:  # at least float32 (features are often cached as float16 / bfloat16)
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: must be finite (found NaN or inf)")
    return t


def _signs(name: str, signs, n: int, device) -> torch.Tensor:
    return C.signs(name, signs, n, device=device, what="to match the features")


def _answer_ids(yes_id, no_id, vocab_size: int) -> tuple[int, int]:
    what = f"a row index (vocabulary size {vocab_size})"
    yes_id, no_id = (C.index_below(name, value, vocab_size, what) for name, value in (("yes_id", yes_id),
                                                                                        ("no_id", no_id)))
    if yes_id == no_id:
        raise ValueError(f"yes_id, no_id: must differ, both are {yes_id}")
    return yes_id, no_id


def _head_and_features(W, features, dtype=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    W = _tensor("W", W, 2, dtype, device)
    g = _tensor("features", features, 2, W.dtype, W.device)
    if g.shape[1] != W.shape[1]:
        raise ValueError(f"features: must have {W.shape[1]} columns (the head's width d), got shape {tuple(g.shape)}")
    return W, g


# ---------------------------------------------------------------------------------------------------------------
# Synthetic behaviours
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Behaviour:
    """A behaviour's items: features (n, d), signs (n,) in {+1, -1}, and the geometry that generated them.

    ``signs[i] = +1``: the positive statement, chosen = Yes and rejected = No; -1: chosen = No. ``direction`` is the
    unit vector u that separates the class means, ``center`` the shared component c; the population means are
    c + s (PD/2) u. Pass ``direction`` and ``center`` back to :func:`make_behaviour` to draw a test split from the same
    distribution.
    """

    features: np.ndarray
    signs: np.ndarray
    direction: np.ndarray
    center: np.ndarray

    @property
    def yes_mask(self) -> np.ndarray:
        return self.signs > 0


def make_behaviour(n: int, d: int, distinguishability: float, *, rng: np.random.Generator,
                   noise: str = "gaussian", center=None, direction=None, yes_fraction: float = 0.5) -> Behaviour:
    """Draw a synthetic behaviour: g = c + s (PD/2) u + xi (paper notes, check d1).

    * ``round(n * yes_fraction)`` items have s = +1 (exactly n/2 for an even n and ``yes_fraction=0.5``), in random
      order;
    * the population class means are separated by ``distinguishability`` (PD) along the unit vector ``direction``
      (random when None);
    * the noise xi has independent unit-variance coordinates: standard normal (``noise='gaussian'``) or Laplace with
      scale 1/sqrt(2) (``'laplace'``, a subexponential law);
    * ``center``: None (no shared component), a number (the norm of a random shared centre; the paper's LLM features
      share a large component) or a vector of length d.

    The empirical class means differ from the population ones by O(sqrt(d/n)); theory checks use the empirical
    values (:func:`behaviour_properties`).
    """
    n = C.int_at_least("n", n, 1)
    d = C.int_at_least("d", d, 1)
    pd_ = C.non_negative("distinguishability", distinguishability)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if noise not in NOISES:
        raise ValueError(f"noise: must be one of {list(NOISES)}, got {noise!r}")
    C.fraction("yes_fraction", yes_fraction, allow_zero=True)
    if direction is None:
        u = rng.standard_normal(d)
        u /= np.linalg.norm(u)
    else:
        u = np.asarray(direction, dtype=np.float64)
        if u.shape != (d,) or not np.isfinite(u).all() or not np.isclose(np.linalg.norm(u), 1.0, atol=1e-9):
            raise ValueError(f"direction: must be a finite unit vector of length {d}")
    if center is None:
        c = np.zeros(d)
    elif isinstance(center, Real) and not isinstance(center, bool):
        norm = C.non_negative("center", center)
        c = rng.standard_normal(d)
        c *= norm / np.linalg.norm(c)
    else:
        c = np.asarray(center, dtype=np.float64)
        if c.shape != (d,) or not np.isfinite(c).all():
            raise ValueError(f"center: must be None, a norm >= 0, or a finite vector of length {d}")
    n_yes = int(round(n * yes_fraction))
    signs = np.concatenate([np.ones(n_yes, dtype=np.int64), -np.ones(n - n_yes, dtype=np.int64)])
    signs = rng.permutation(signs)
    if noise == "gaussian":
        xi = rng.standard_normal((n, d))
    else:
        xi = rng.laplace(scale=1 / math.sqrt(2), size=(n, d))
    features = c + signs[:, None] * (pd_ / 2) * u + xi
    return Behaviour(features, signs, u, c)


# ---------------------------------------------------------------------------------------------------------------
# Policy log-probabilities and the loss
# ---------------------------------------------------------------------------------------------------------------

def answer_logps(W, features, yes_id: int, no_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(Yes|x), log pi(No|x)) with pi = softmax(W g(x)) over the whole vocabulary (rows of W).

    ``W``: (V, d); ``features``: (n, d). Computed in float32, or float64 when W is float64 (lower-precision inputs
    are upcast). Differentiable in W when W is a tensor that requires grad. Cost O(n V d): for training at LLM
    vocabulary size use :func:`train_last_layer_dpo`, which precomputes the part that never changes.
    """
    W, g = _head_and_features(W, features)
    yes_id, no_id = _answer_ids(yes_id, no_id, W.shape[0])
    logp = torch.log_softmax(g @ W.T, dim=-1)
    return logp[:, yes_id], logp[:, no_id]


def chosen_rejected(logp_yes: torch.Tensor, logp_no: torch.Tensor, signs) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen), log pi(rejected)) per item: chosen = Yes where s = +1, No where s = -1."""
    if logp_yes.shape != logp_no.shape or logp_yes.ndim != 1:
        raise ValueError(f"logp_yes, logp_no: must be 1-d and of equal shape, got {tuple(logp_yes.shape)} and "
                         f"{tuple(logp_no.shape)}")
    return _by_answer(_signs("signs", signs, logp_yes.shape[0], logp_yes.device) > 0, logp_yes, logp_no)


def _by_answer(yes: torch.Tensor, logp_yes: torch.Tensor, logp_no: torch.Tensor):
    return torch.where(yes, logp_yes, logp_no), torch.where(yes, logp_no, logp_yes)


def last_layer_dpo_loss(W, W_ref, features, signs, yes_id: int, no_id: int, beta: float) -> torch.Tensor:
    """The mean DPO loss of head W against reference head W_ref, computed literally: full-vocabulary log-softmax,
    chosen/rejected log-probs, :func:`analysis_lib.losses.dpo_loss`. Differentiable in W."""
    W, g = _head_and_features(W, features)
    W_ref = _tensor("W_ref", W_ref, 2, W.dtype, W.device)
    if W_ref.shape != W.shape:
        raise ValueError(f"W_ref: must have the shape of W {tuple(W.shape)}, got {tuple(W_ref.shape)}")
    pc, pr = chosen_rejected(*answer_logps(W, g, yes_id, no_id), signs)
    with torch.no_grad():
        rc, rr = chosen_rejected(*answer_logps(W_ref, g, yes_id, no_id), signs)
    return dpo_loss(pc, pr, rc, rr, beta=C.positive("beta", beta))[0].mean()


def _margins(W, W_ref, features, signs, yes_id, no_id, beta):
    """r_i = beta s_i (v - v_ref)^T g_i, with the validated inputs."""
    beta = C.positive("beta", beta)
    W, g = _head_and_features(W, features)
    W = W.detach()
    W_ref = _tensor("W_ref", W_ref, 2, W.dtype, W.device)
    if W_ref.shape != W.shape:
        raise ValueError(f"W_ref: must have the shape of W {tuple(W.shape)}, got {tuple(W_ref.shape)}")
    yes_id, no_id = _answer_ids(yes_id, no_id, W.shape[0])
    s = _signs("signs", signs, g.shape[0], g.device).to(g.dtype)
    dv = (W[yes_id] - W[no_id]) - (W_ref[yes_id] - W_ref[no_id])
    return beta * s * (g @ dv), W, g, s, beta, yes_id, no_id


def dpo_loss_logistic_form(W, W_ref, features, signs, yes_id: int, no_id: int, beta: float) -> torch.Tensor:
    """The same loss written as a logistic regression: mean_i -log sigmoid(beta s_i (v - v_ref)^T g_i), with
    v = w_Y - w_N (paper notes section 4.0; our reconstruction). Equals :func:`last_layer_dpo_loss`."""
    r = _margins(W, W_ref, features, signs, yes_id, no_id, beta)[0]
    return -F.logsigmoid(r).mean()


def dpo_gradient_closed_form(W, W_ref, features, signs, yes_id: int, no_id: int, beta: float) -> torch.Tensor:
    """Gradient of the mean last-layer DPO loss with respect to W, in closed form (shape (V, d)):

    row Y: -(beta/n) sum_i sigmoid(-r_i) s_i g_i;  row N: minus row Y;  every other row: 0.
    """
    r, W, g, s, beta, yes_id, no_id = _margins(W, W_ref, features, signs, yes_id, no_id, beta)
    grad_yes = -(beta / g.shape[0]) * ((torch.sigmoid(-r) * s) @ g)
    grad = torch.zeros_like(W)
    grad[yes_id] = grad_yes
    grad[no_id] = -grad_yes
    return grad


# ---------------------------------------------------------------------------------------------------------------
# Closed forms for the dynamics (section 4.3 of the paper notes; our reconstruction)
# ---------------------------------------------------------------------------------------------------------------

def signed_mean(features, signs) -> np.ndarray:
    """m = (1/n) sum_i s_i g_i = p mu+ - (1 - p) mu-: the direction of the first update of v = w_Y - w_N."""
    g = np.asarray(features, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] == 0 or not np.isfinite(g).all():
        raise ValueError(f"features: must be a finite, non-empty (n, d) array, got shape {g.shape}")
    s = np.asarray(signs)
    if s.shape != (g.shape[0],) or not np.isin(s, (-1, 1)).all():
        raise ValueError(f"signs: must have shape ({g.shape[0]},) with entries +1 or -1")
    return (s[:, None] * g).mean(axis=0)


def first_step_loss_drop(features, signs, beta: float, lr: float) -> float:
    """Predicted loss drop of the first full-batch gradient step from W(0) = W_ref:
    eta (beta^2/2) ||p mu+ - (1-p) mu-||^2 (first order in eta). For a balanced behaviour (p = 1/2) this is
    eta beta^2 ||Delta||^2 / 8 (:func:`balanced_first_step_loss_drop`)."""
    beta, lr = C.positive("beta", beta), C.positive("lr", lr)
    m = signed_mean(features, signs)
    return lr * beta**2 / 2 * float(m @ m)


def balanced_first_step_loss_drop(distinguishability: float, beta: float, lr: float) -> float:
    """eta beta^2 PD^2 / 8: the first-step loss drop of an exactly balanced behaviour with class-mean gap PD."""
    pd_ = C.non_negative("distinguishability", distinguishability)
    return C.positive("lr", lr) * C.positive("beta", beta) ** 2 * pd_**2 / 8


def weight_change_spectrum(W, W0) -> tuple[list[int], np.ndarray]:
    """(rows of W that differ from W0, singular values of W - W0, largest first).

    The SVD is taken over the changed rows only (the zero rows add no singular value), so it stays cheap for an
    LLM-sized head. Rank one means: second singular value ~ 0 relative to the first.
    """
    W = _tensor("W", W, 2, torch.float64, "cpu")
    W0 = _tensor("W0", W0, 2, torch.float64, "cpu")
    if W0.shape != W.shape:
        raise ValueError(f"W0: must have the shape of W {tuple(W.shape)}, got {tuple(W0.shape)}")
    delta = W - W0
    rows = torch.nonzero((delta != 0).any(dim=1)).flatten()
    if rows.numel() == 0:
        return [], np.zeros(1)
    return rows.tolist(), torch.linalg.svdvals(delta[rows]).numpy()


def weight_change_bound(lr: float, beta: float, t, max_norm: float):
    """sqrt(2) eta beta t max_i ||g_i||: the bound on ||W(t) - W(0)||_F (= operator norm) after t SGD steps.
    ``t`` may be an array of step counts."""
    lr, beta, max_norm = C.positive("lr", lr), C.positive("beta", beta), C.non_negative("max_norm", max_norm)
    t_arr = np.asarray(t, dtype=np.float64)
    if not np.isfinite(t_arr).all() or (t_arr < 0).any():
        raise ValueError(f"t: must be step counts >= 0, got {t!r}")
    out = math.sqrt(2) * lr * beta * t_arr * max_norm
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------------------------
# Behaviour geometry (the official code's embedding_properties.ipynb and priority_levels.ipynb)
# ---------------------------------------------------------------------------------------------------------------

def _features_and_mask(features, yes_mask) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if g.ndim != 2 or not np.isfinite(g).all():
        raise ValueError(f"features: must be a finite (n, d) array, got shape {g.shape}")
    m = np.asarray(yes_mask.cpu() if isinstance(yes_mask, torch.Tensor) else yes_mask)
    if m.shape != (g.shape[0],) or m.dtype != bool:
        raise ValueError(f"yes_mask: must be a boolean array of shape ({g.shape[0]},), got {m.dtype} {m.shape}")
    n_yes, n_no = int(m.sum()), int((~m).sum())
    if n_yes < 2 or n_no < 2:
        raise ValueError(f"yes_mask: needs at least 2 Yes and 2 No items (covariances), got {n_yes} and {n_no}")
    return g, m


def preference_direction(features, yes_mask) -> np.ndarray:
    """Delta = mu_Yes - mu_No: the class-mean difference of the items whose answer_matching_behavior is " Yes"
    (``yes_mask``; = signs > 0 for unflipped pairs) and the other items."""
    g, m = _features_and_mask(features, yes_mask)
    return g[m].mean(axis=0) - g[~m].mean(axis=0)


def behaviour_properties(features, yes_mask) -> dict[str, float]:
    """The official code's per-behaviour properties:

    * ``distinguishability`` = ||mu_Yes - mu_No|| (PD);
    * ``concentration`` = max(||cov_Yes||_2, ||cov_No||_2), spectral norms of the unbiased ``np.cov``;
    * ``trace`` = max(tr cov_Yes, tr cov_No).
    """
    g, m = _features_and_mask(features, yes_mask)
    covs = [np.atleast_2d(np.cov(g[mask], rowvar=False)) for mask in (m, ~m)]
    return {
        "distinguishability": float(np.linalg.norm(g[m].mean(axis=0) - g[~m].mean(axis=0))),
        "concentration": max(covariance_spectral_norm(g[mask]) for mask in (m, ~m)),
        "trace": max(float(np.trace(c)) for c in covs),
    }


def covariance_spectral_norm(rows) -> float:
    """||np.cov(rows, rowvar=False)||_2 of ``rows`` (n, d), n >= 2: the largest eigenvalue of the (PSD) covariance,
    computed from the n x n Gram matrix of the centred rows when n <= d (the same nonzero eigenvalues; equal to
    ``np.linalg.norm(cov, 2)`` up to rounding, 1e-12 relative in the tests). With n = 32 items and d = 576 it took
    0.2 ms instead of the SVD's 35 ms, which made up 11 s of a chapter that compares 20 behaviours."""
    x = np.asarray(rows, dtype=np.float64)
    x = x - x.mean(axis=0)
    small = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return float(np.linalg.eigvalsh(small / (x.shape[0] - 1))[-1])


def _deltas(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] == 0 or not np.isfinite(a).all():
        raise ValueError(f"{name}: must be a finite array of vectors (..., d), got shape {a.shape}")
    return a


def priority_gap(delta_i, delta_j) -> np.ndarray | float:
    """The official code's priority gap between behaviours i and j (``priority_levels.ipynb``):
    with b = (Delta_i + Delta_j)/2 and p_k = <b, Delta_k>/||b||, gap = (p_i - p_j) / max(||Delta_i||, ||Delta_j||).

    gap > 0 predicts that i is learned first when i and j are trained together. Vectorised over leading axes
    (broadcast); NaN where Delta_i + Delta_j = 0 (undefined).
    """
    di, dj = _deltas("delta_i", delta_i), _deltas("delta_j", delta_j)
    b = (di + dj) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        nb = np.linalg.norm(b, axis=-1)
        p_i = (b * di).sum(-1) / nb
        p_j = (b * dj).sum(-1) / nb
        out = (p_i - p_j) / np.maximum(np.linalg.norm(di, axis=-1), np.linalg.norm(dj, axis=-1))
    return float(out) if np.ndim(out) == 0 else out


def priority_gap_closed_form(delta_i, delta_j) -> np.ndarray | float:
    """(||Delta_i||^2 - ||Delta_j||^2) / (||Delta_i + Delta_j|| max(||Delta_i||, ||Delta_j||)) (paper notes 4.2,
    check d3; our derivation): equal to :func:`priority_gap`, so sign(gap) = sign(PD_i - PD_j) and |gap| < 2."""
    di, dj = _deltas("delta_i", delta_i), _deltas("delta_j", delta_j)
    ni, nj = np.linalg.norm(di, axis=-1), np.linalg.norm(dj, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ni**2 - nj**2) / (np.linalg.norm(di + dj, axis=-1) * np.maximum(ni, nj))
    return float(out) if np.ndim(out) == 0 else out


def priority_gap_matrix(deltas, closed_form: bool = False) -> np.ndarray:
    """The (B, B) matrix gap(i, j) for B behaviours' Delta vectors (rows of ``deltas``); entry (i, j) is the official
    code's ``priorities.csv`` entry B*i + j. Antisymmetric, zero diagonal."""
    D = _deltas("deltas", deltas)
    if D.ndim != 2:
        raise ValueError(f"deltas: must be a (B, d) array of Delta vectors, got shape {D.shape}")
    fn = priority_gap_closed_form if closed_form else priority_gap
    gap = np.asarray(fn(D[:, None, :], D[None, :, :]))
    np.fill_diagonal(gap, 0.0)
    return gap


# ---------------------------------------------------------------------------------------------------------------
# Training: the official code's last-layer loop
# ---------------------------------------------------------------------------------------------------------------

class LastLayerRun(TrainingRun):
    """The result of :func:`train_last_layer_dpo`: a :class:`analysis_lib.training.TrainingRun` whose ``model`` is
    the final head W(steps) (V, d).

    ``log``: one row per step t = 0 .. steps-1 (see :func:`train_last_layer_dpo` for the columns); ``final``:
    full-train-set (and test-set) metrics at W(steps); :attr:`max_feature_norm`: max_i ||g_i|| over the training
    set (for :func:`weight_change_bound`); :attr:`v_path`: v(t) = w_Yes(t) - w_No(t) at t = 0 .. steps, shape
    (steps + 1, d) float64, when the run was asked to record it (``record_v=True``), else None.
    """

    @property
    def W(self) -> torch.Tensor:
        return self.model

    @W.setter
    def W(self, value) -> None:  # e.g. None, to drop a large head and keep the logs
        self.model = value

    @property
    def max_feature_norm(self) -> float:
        return self.info["max_feature_norm"]

    @max_feature_norm.setter
    def max_feature_norm(self, value: float) -> None:
        self.info["max_feature_norm"] = value

    @property
    def v_path(self) -> np.ndarray | None:
        return self.info.get("v_path")

    @v_path.setter
    def v_path(self, value) -> None:
        self.info["v_path"] = value


class _Head:
    """log pi(Yes|x), log pi(No|x) for a fixed feature set, as a function of the two trainable answer rows.

    The other V - 2 rows never move (zero gradient), so their log-sum-exp is precomputed once, in chunks.
    With ``full_softmax`` the whole W is the parameter and the full log-softmax is recomputed on every call.
    """

    def __init__(self, W0: torch.Tensor, yes_id: int, no_id: int, full_softmax: bool, chunk: int = 256):
        self.yes_id, self.no_id, self.full = yes_id, no_id, full_softmax
        self.W0 = W0
        self.chunk = chunk

    def initial_params(self) -> torch.Tensor:
        return (self.W0.clone() if self.full else self.W0[[self.yes_id, self.no_id]].clone()).requires_grad_(True)

    def rest_lse(self, g: torch.Tensor) -> torch.Tensor | None:
        """log sum_{j != Y, N} exp(w_j^T g) per item (None in full-softmax mode or when V = 2)."""
        if self.full or self.W0.shape[0] == 2:
            return None
        out = []
        with torch.no_grad():
            for k in range(0, g.shape[0], self.chunk):
                logits = g[k:k + self.chunk] @ self.W0.T
                logits[:, [self.yes_id, self.no_id]] = -math.inf
                out.append(torch.logsumexp(logits, dim=-1))
        return torch.cat(out)

    def logps(self, params: torch.Tensor, g: torch.Tensor, rest: torch.Tensor | None):
        if self.full:
            logp = torch.log_softmax(g @ params.T, dim=-1)
            return logp[:, self.yes_id], logp[:, self.no_id]
        z = g @ params.T  # (n, 2): Yes and No logits
        parts = z if rest is None else torch.cat([z, rest[:, None]], dim=1)
        log_z = torch.logsumexp(parts, dim=1)
        return z[:, 0] - log_z, z[:, 1] - log_z

    def full_head(self, params: torch.Tensor) -> torch.Tensor:
        if self.full:
            return params.detach().clone()
        W = self.W0.clone()
        W[[self.yes_id, self.no_id]] = params.detach()
        return W


@dataclass
class _Split:
    """A feature set with its signs and the precomputed rest-of-vocabulary log-sum-exp."""

    g: torch.Tensor
    yes: torch.Tensor  # bool: chosen = Yes
    rest: torch.Tensor | None

    @classmethod
    def build(cls, name: str, head: _Head, features, signs, dtype, device) -> "_Split":
        g = _tensor(f"{name}_features", features, 2, dtype, device)
        if g.shape[1] != head.W0.shape[1]:
            raise ValueError(f"{name}_features: must have {head.W0.shape[1]} columns (the head's width d), got "
                             f"shape {tuple(g.shape)}")
        yes = _signs(f"{name}_signs", signs, g.shape[0], device) > 0
        return cls(g, yes, head.rest_lse(g))

    def __len__(self) -> int:
        return self.g.shape[0]

    def chosen_rejected(self, head: _Head, params: torch.Tensor, idx: torch.Tensor | None = None):
        """Policy (log pi(chosen), log pi(rejected)) on the rows idx (all rows when None)."""
        g, yes, rest = (self.g, self.yes, self.rest) if idx is None else (
            self.g[idx], self.yes[idx], None if self.rest is None else self.rest[idx])
        return _by_answer(yes, *head.logps(params, g, rest))


class _LastLayerModel:
    """The head as a model of :func:`analysis_lib.training.train`: the trainable answer rows (or all of W), the
    log-probs of a split's items, the weight change ||W(t) - W(0)||_F after each update, v(t) when recorded."""

    eval_chunk = None  # whole sets in one pass

    def __init__(self, head: _Head, device, record_v: bool):
        self.head, self.device = head, device
        self.params = head.initial_params()
        self.params0 = self.params.detach().clone()
        self.rows_v = [head.yes_id, head.no_id] if head.full else [0, 1]
        self.v_path = [] if record_v else None
        self._record()

    def _record(self) -> None:
        if self.v_path is not None:
            with torch.no_grad():
                v = self.params[self.rows_v[0]] - self.params[self.rows_v[1]]
                self.v_path.append(v.to("cpu", torch.float64).numpy())

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [self.params]

    def logps(self, split: _Split, idx):
        return split.chosen_rejected(self.head, self.params, idx)

    def after_step(self) -> dict[str, float]:
        self._record()
        with torch.no_grad():
            return {"weight_change": float((self.params - self.params0).norm())}

    def result(self) -> torch.Tensor:
        return self.head.full_head(self.params)


#: What :func:`train_last_layer_dpo` says when the whole-training-set loss rises too far.
DIVERGENCE_HINT = ("lower lr (full-batch gradient descent is stable below 4 / (beta^2 lambda_max), "
                   "analysis_lib.persona_runs.gd_stability_limit)")


def train_last_layer_dpo(W0, train_features, train_signs, *, yes_id: int, no_id: int, beta: float, lr: float,
                         steps: int, batch_size: int | None = 128, seed: int = 0, test_features=None,
                         test_signs=None, optimizer: str = "sgd", dtype: torch.dtype = torch.float64, device=None,
                         full_softmax: bool = False, progress: bool = False, max_loss_ratio: float | None = 1.25,
                         record_v: bool = False) -> LastLayerRun:
    """DPO on the unembedding only, as in the official ``last_layer_training.py``.

    Reference = W0 (its log-probs precomputed once). Each step t = 0 .. steps-1 draws a fresh random batch of
    ``batch_size`` training items (without replacement within the batch; ``None`` = the whole training set, in order),
    computes the mean DPO loss (:func:`analysis_lib.losses.dpo_loss`) and takes one ``optimizer`` step ('sgd': plain
    SGD as in the code; 'adam') with learning rate ``lr``.

    Log columns (one row per step; "before" = at W(t), "after" = at W(t+1)):

    * ``step`` (t);
    * on the step's **training batch**, before the update, TRL names: ``loss``, ``outputs/accuracies`` (the policy's
      own ordering log pi(chosen) > log pi(rejected), the accuracy Im & Li plot), ``rewards/chosen``,
      ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``;
      ``grad_norm`` (Frobenius norm of the batch gradient with respect to W);
    * on the **whole training set**, before the update: the same names prefixed ``full_train_`` (for theory);
    * on the **test set** (when given), before the update: the same names prefixed ``eval_`` (as TRL);
    * ``weight_change`` = ||W(t+1) - W(0)||_F, after the update (the code's ``dw``).

    ``final`` holds the ``full_train_`` and ``eval_`` metrics at W(steps). W0 is (V, d) (e.g. a copy of an LM's
    lm_head); features (n, d); signs in {+1 (chosen = Yes), -1 (chosen = No)}. Computation in ``dtype`` (float64
    or float32) on ``device`` (default: :func:`analysis_lib.runtime.get_device`). ``record_v``: keep
    v(t) = w_Yes - w_No at every step (:attr:`LastLayerRun.v_path`).

    Divergence stops training with a ValueError naming lr, beta, the step and the values: a non-finite loss (batch,
    whole training set or test set), or a whole-training-set loss above ``max_loss_ratio`` times its value at W(0)
    (= log 2, since the reference is W(0)); ``max_loss_ratio=None`` keeps only the non-finite rule. A stable run never
    comes close: with the reference at W(0) the loss starts at log 2 and gradient descent below its stability limit
    lowers it.
    """
    for name, value in (("beta", beta), ("lr", lr)):
        C.positive(name, value)
    for name, value in (("steps", steps), ("seed", seed)):
        C.int_at_least(name, value, {"steps": 1, "seed": 0}[name])
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if (test_features is None) != (test_signs is None):
        raise ValueError("test_features, test_signs: give both or neither")
    dtype = _float_dtype(dtype)
    device = torch.device(device) if device is not None else get_device()
    W0 = _tensor("W0", W0, 2, dtype, device)
    yes_id, no_id = _answer_ids(yes_id, no_id, W0.shape[0])
    head = _Head(W0, yes_id, no_id, full_softmax)
    train_split = _Split.build("train", head, train_features, train_signs, dtype, device)
    evaluations = [EvalSet("full_train_", train_split, "full-train")]
    if test_features is not None:
        evaluations.append(EvalSet("eval_", _Split.build("test", head, test_features, test_signs, dtype, device),
                                   "test"))
    model = _LastLayerModel(head, device, record_v)
    run = train(model, train_split, loss="dpo", beta=beta, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                optimizer=optimizer, evaluations=evaluations, max_loss_ratio=max_loss_ratio,
                divergence_hint=DIVERGENCE_HINT, accuracy_dtype=torch.float32, reference_name="W0",
                progress=progress, desc="last-layer DPO")
    run.info["max_feature_norm"] = float(train_split.g.norm(dim=1).max())
    run.info["v_path"] = np.stack(model.v_path) if record_v else None
    return LastLayerRun(run.log, run.final, run.model, run.info)
