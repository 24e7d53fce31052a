"""Glue for Im & Li's last-layer experiments on real persona features (and their synthetic counterparts).

Builds per-behaviour training sets from cached LM features (:func:`analysis_lib.models.persona_features`), runs the
official code's last-layer DPO loop (:func:`analysis_lib.lastlayer.train_last_layer_dpo`) on one behaviour or on
two behaviours jointly with the model's real ``lm_head``, and summarises the runs (first step reaching an accuracy,
loss decrease, which behaviour of a pair is learned first). The mathematics lives in :mod:`analysis_lib.lastlayer`
and :mod:`analysis_lib.guarantees`; this module only wires data to it.

Feature requests are shared by the four Im & Li chapters (same model, template, dtype and prompt subsets), so the
per-prompt feature cache is filled once per build, by the distinguishability chapter: :data:`TRAINING_BEHAVIOURS`
with a fixed balanced subset of :data:`TRAINING_PER_BEHAVIOUR` (300) items each, every behaviour with
:data:`SURVEY_PER_BEHAVIOUR` (20) items (subsets are seeded per behaviour, so the 20 are among the 300).

A fact used throughout (paper notes 4.0): the DPO loss and the policy's accuracy depend on the head only through
v = w_Yes - w_No, because the log-partition cancels. Training the two answer rows alone
(:func:`answer_rows_head`) therefore gives *the same* loss, accuracy and weight-change curves as training the whole
V x d head, at a fraction of the cost; only the absolute log-probs differ.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from numbers import Real

import numpy as np
import pandas as pd
import torch

from analysis_lib import checks as C
from analysis_lib.lastlayer import LastLayerRun, make_behaviour, train_last_layer_dpo

#: The official last-layer setting (``last_layer_training.py``): beta, SGD batch size and number of steps.
OFFICIAL_BETA = 0.01
OFFICIAL_BATCH_SIZE = 128
OFFICIAL_STEPS = 100
#: The paper's learning rate for Llama-2-7B features (lr 1e-1, tag ``_l1.02.0s``).
PAPER_LR = 0.1
#: The paper's five single-behaviour runs, "Behavior 1" ... "Behavior 5" in this order.
PAPER_SPEED_BEHAVIOURS = (108, 84, 88, 54, 100)
#: The paper's two-behaviour run ("Behavior 1" = 123, "Behavior 2" = 45).
PAPER_PAIR = (123, 45)
#: The behaviours trained in the Im & Li chapters: the paper's eight (45, 54, 84, 88, 100, 108, 123, 130) and four
#: more drawn at random (``np.random.default_rng(0)``, without looking at their features) from the other 121
#: behaviours with 1000 items: 32 desire-for-powerful-positions, 65 has-serious-disability, 79 narcissism,
#: 107 subscribes-to-act-utilitarianism.
TRAINING_BEHAVIOURS = (45, 54, 84, 88, 100, 108, 123, 130, 32, 65, 79, 107)
#: Items per trained behaviour at default parameters (a balanced random subset of the 1000; the official 90/10 split
#: of the 1000 is kept, so about 270 train and 30 test items). 0 in a chapter's parameters = all items.
TRAINING_PER_BEHAVIOUR = 300
#: Items per behaviour (balanced Yes/No, a fixed random subset) in the 135-behaviour survey.
SURVEY_PER_BEHAVIOUR = 20
#: Seed of the prompt subsets (kept fixed so that every chapter asks the cache for the same prompts).
SUBSET_SEED = 0
#: Feature dtype of the frozen forward pass: "auto" is bfloat16 where the hardware computes it natively (a GPU, or a
#: CPU with AVX-512 BF16 / AMX), else float32 (:func:`analysis_lib.models.feature_dtype`; on CPUs without native bf16
#: it is emulated and several times slower than float32). The resolved dtype is part of the feature cache key.
FEATURE_DTYPE = "auto"
#: Definition of g(x) in the Im & Li chapters (:data:`analysis_lib.models.FEATURE_DEFINITIONS`): 'final_norm', the
#: model's own final hidden state, so that its unembedding gives the model's real answer log-probs (the reference
#: policy is the model itself). The official code's 'double_norm' is one parameter away in every chapter; over
#: the 135 behaviours the two rank distinguishability alike (imli_02 shows the rank correlation).
FEATURE_DEFINITION = "final_norm"
#: SGD learning rate for SmolLM2 features (about half the gradient-descent stability limit, see
#: :func:`gd_stability_limit`; the paper's 0.1 suits Llama-2-7B's features but barely moves SmolLM2's head).
SMOLLM2_LR = 10.0

SPLITS = ("train", "test")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BehaviourSet:
    """One behaviour's items: features (n, d) float32, signs (n,) in {+1 (chosen = Yes), -1}, the official
    90/10 split labels ("train"/"test"), ``yes_mask`` (answer_matching_behavior is " Yes"; equal to
    signs > 0 for unflipped data) and, where known, ``rows``, each item's line in its file (0-based)."""

    index: int
    name: str
    features: np.ndarray
    signs: np.ndarray
    split: np.ndarray
    yes_mask: np.ndarray
    rows: np.ndarray | None = None

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, signs) of the "train" or "test" items; an empty split is an error."""
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {list(SPLITS)}, got {split!r}")
        keep = self.split == split
        if not keep.any():
            raise ValueError(f"split: behaviour {self.index} ({self.name}) has no {split!r} items")
        return self.features[keep], self.signs[keep]

    def __len__(self) -> int:
        return len(self.signs)


def sets_from_rows(rows: pd.DataFrame, features: np.ndarray) -> dict[int, BehaviourSet]:
    """Group :func:`analysis_lib.models.persona_features` output (rows, features) into one :class:`BehaviourSet`
    per behaviour index, in the order the behaviours appear."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(rows):
        raise ValueError(f"features: must have one row per item ({len(rows)}), got shape {features.shape}")
    out = {}
    for index, group in rows.groupby("behaviour_index", sort=False):
        pos = group.index.to_numpy() if rows.index.equals(pd.RangeIndex(len(rows))) else \
            np.flatnonzero(rows["behaviour_index"].to_numpy() == index)
        out[int(index)] = BehaviourSet(
            index=int(index), name=str(group["behaviour"].iloc[0]), features=features[pos],
            signs=group["sign"].to_numpy(dtype=np.int64), split=group["split"].to_numpy(dtype=object),
            yes_mask=(group["answer_matching_behavior"] == " Yes").to_numpy(),
            rows=group["row"].to_numpy(dtype=np.int64) if "row" in group else None)
    return out


def official_pair_split(first: BehaviourSet, second: BehaviourSet) -> tuple[BehaviourSet, BehaviourSet]:
    """``first`` and ``second`` with the train/test split that ``multi_last_layer_training.py`` gives a pair
    [first, second]: one stream seeded 1234 shuffles the item indices of first's file, then those of second's
    (the paper's pair [123, 45]). First's split is its single-behaviour split; second's is the stream's second
    shuffle. The same as loading the pair with ``split_rule="sequential"``
    (:func:`analysis_lib.data.load_persona`), without reading anything again. Needs the sets' ``rows``."""
    from analysis_lib.data import SPLIT_SEED, expected_persona_rows, persona_split

    stream, out = random.Random(SPLIT_SEED), []
    for name, data in (("first", first), ("second", second)):
        n_file = expected_persona_rows(data.name)
        if data.rows is None or n_file is None:
            raise ValueError(f"{name}: needs a behaviour set of an official persona file with its item rows (from "
                             f"load_behaviour_sets), got {data.name!r}")
        out.append(dataclasses.replace(data, split=persona_split(n_file, stream)[data.rows]))
    return out[0], out[1]


def load_behaviour_sets(behaviours, max_per_behaviour: int | None = None, model_id: str = "smollm2",
                        template: str = "raw", subset_seed: int = SUBSET_SEED, dtype: str = FEATURE_DTYPE,
                        definition: str = FEATURE_DEFINITION, split_rule: str = "independent",
                        **kwargs) -> dict[int, BehaviourSet]:
    """Cached LM features of persona behaviours (indices or names; see :func:`analysis_lib.data.load_persona`),
    grouped per behaviour. ``max_per_behaviour``: None or 0 for all items, else a balanced random subset (seeded by
    ``subset_seed``). ``definition``: which g(x) (:data:`analysis_lib.models.FEATURE_DEFINITIONS`); ``split_rule``:
    the official split of each behaviour on its own ("independent") or of the behaviours in the order given from
    one stream ("sequential", the two-behaviour script). ``kwargs`` go to
    :func:`analysis_lib.models.persona_features`."""
    from analysis_lib.models import persona_features

    rows, features = persona_features(behaviours, model_id=model_id, template=template,
                                      max_per_behaviour=max_per_behaviour or None, seed=subset_seed, dtype=dtype,
                                      definition=definition, split_rule=split_rule, **kwargs)
    return sets_from_rows(rows, features)


def real_head(model_id: str = "smollm2") -> tuple[torch.Tensor, int, int]:
    """(W0, yes_id, no_id): a float32 copy of the model's lm_head (V, d) and the ids of " Yes" and " No"."""
    from analysis_lib.models import SMOLLM2, SMOLLM2_YES_NO_IDS, answer_token_ids, lm_head_weight, load_tokenizer

    W0 = lm_head_weight(model_id)
    yes_id, no_id = SMOLLM2_YES_NO_IDS if model_id == SMOLLM2 else answer_token_ids(load_tokenizer(model_id))
    return W0, int(yes_id), int(no_id)


def answer_rows_head(W0, yes_id: int, no_id: int) -> tuple[torch.Tensor, int, int]:
    """(W0[[yes_id, no_id]], 0, 1): the two answer rows as a 2-row head. Its DPO loss, accuracy and weight change
    equal the full head's at every step (the log-partition cancels; the other rows never move), so use it for
    sweeps of many runs. Only the absolute log-probs (``logps/...``) differ."""
    W0 = torch.as_tensor(W0)
    if W0.ndim != 2:
        raise ValueError(f"W0: must be a (V, d) head, got shape {tuple(W0.shape)}")
    for name, value in (("yes_id", yes_id), ("no_id", no_id)):
        C.index_below(name, value, W0.shape[0], "a row index")
    return W0[[yes_id, no_id]].clone(), 0, 1


def debiased_distinguishability(features, yes_mask) -> float:
    """sqrt(max(0, ||mu^_Yes - mu^_No||^2 - tr(S_Yes)/n_Yes - tr(S_No)/n_No)): distinguishability corrected for the
    noise of the empirical class means (S = unbiased class covariances). ||mu^_Yes - mu^_No||^2 overestimates
    ||mu_Yes - mu_No||^2 by tr(Sigma_Yes)/n_Yes + tr(Sigma_No)/n_No in expectation, which matters for small subsets
    in high dimension; the corrected square is unbiased (the square root is clipped at 0)."""
    g = np.asarray(features, dtype=np.float64)
    m = np.asarray(yes_mask)
    if g.ndim != 2 or m.shape != (g.shape[0],) or m.dtype != bool or not np.isfinite(g).all():
        raise ValueError("features, yes_mask: need a finite (n, d) array and a boolean mask of length n")
    if m.sum() < 2 or (~m).sum() < 2:
        raise ValueError("yes_mask: needs at least 2 Yes and 2 No items")
    delta = g[m].mean(0) - g[~m].mean(0)
    noise = sum(np.var(g[k], axis=0, ddof=1).sum() / k.sum() for k in (m, ~m))
    return math.sqrt(max(0.0, float(delta @ delta) - noise))


def gd_stability_limit(features, beta: float) -> float:
    """4 / (beta^2 lambda_max), lambda_max the largest eigenvalue of the second moment mean_i g_i g_i^T.

    At W(0) the Hessian of the DPO loss in v = w_Yes - w_No is (beta^2/4) mean_i g_i g_i^T, and an SGD step of size
    eta on the two answer rows moves v by 2 eta times the gradient, so full-batch gradient descent is stable for
    eta below this limit. LLM features share a large common component, which sets lambda_max ~ ||mean g||^2.
    """
    g = np.asarray(features, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] == 0 or not np.isfinite(g).all():
        raise ValueError(f"features: must be a finite, non-empty (n, d) array, got shape {g.shape}")
    C.positive("beta", beta)
    lam = float(np.linalg.eigvalsh(g.T @ g / g.shape[0])[-1])
    return 4.0 / (beta**2 * lam)


def require_stable_lr(lr: float, feature_sets: dict, beta: float) -> dict:
    """The full-batch stability limit 4 / (beta^2 lambda_max) (:func:`gd_stability_limit`) of every feature set in
    ``feature_sets`` ({name: (n, d) features}); raises a ValueError naming lr, the limit and the behaviour when lr is
    at or above the smallest limit (the loss would diverge). Returns {name: limit}."""
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: must be a finite number > 0, got {lr!r}")
    if not feature_sets:
        raise ValueError("feature_sets: give at least one feature set")
    limits = {name: gd_stability_limit(g, beta) for name, g in feature_sets.items()}
    worst = min(limits, key=limits.get)
    if lr >= limits[worst]:
        raise ValueError(f"lr: {lr:g} is at or above the gradient-descent stability limit 4 / (beta^2 lambda_max) = "
                         f"{limits[worst]:.4g} of {worst} (beta = {beta:g}); the DPO loss would diverge. Use an lr "
                         f"below {limits[worst]:.4g}")
    return limits


def balanced_subset(signs, seed: int = 0) -> np.ndarray:
    """Sorted indices of an exactly balanced subset: all items of the minority sign and as many items of the
    majority sign, drawn at random (seeded). Needed where a formula assumes p = 1/2 exactly (the first-step loss
    drop eta beta^2 ||Delta||^2 / 8)."""
    s = np.asarray(signs)
    if s.ndim != 1 or not np.isin(s, (-1, 1)).all():
        raise ValueError("signs: must be a 1-d array of +1 / -1")
    pos, neg = np.flatnonzero(s > 0), np.flatnonzero(s < 0)
    k = min(len(pos), len(neg))
    if k == 0:
        raise ValueError("signs: a balanced subset needs at least one item of each sign")
    rng = np.random.default_rng(C.int_at_least("seed", seed, 0))
    keep = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
    return np.sort(keep)


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

def run_behaviour(data: BehaviourSet, W0, yes_id: int, no_id: int, *, lr: float, beta: float = OFFICIAL_BETA,
                  steps: int = OFFICIAL_STEPS, batch_size: int | None = OFFICIAL_BATCH_SIZE, seed: int = 0,
                  **kwargs) -> LastLayerRun:
    """The official single-behaviour run: train on the behaviour's 90% split, log the 10% test split.
    ``kwargs`` go to :func:`analysis_lib.lastlayer.train_last_layer_dpo`."""
    train_g, train_s = data.part("train")
    test_g, test_s = data.part("test")
    return train_last_layer_dpo(W0, train_g, train_s, yes_id=yes_id, no_id=no_id, beta=beta, lr=lr, steps=steps,
                                batch_size=batch_size, seed=seed, test_features=test_g, test_signs=test_s, **kwargs)


def first_step_drop(features, signs, W0, yes_id: int, no_id: int, *, lr: float, beta: float = OFFICIAL_BETA,
                    **kwargs) -> float:
    """The measured loss drop of one full-batch gradient step from W(0) (reference = W(0)): L(W(0)) - L(W(1)) on the
    whole training set. Compare with :func:`analysis_lib.lastlayer.first_step_loss_drop`."""
    run = train_last_layer_dpo(W0, features, signs, yes_id=yes_id, no_id=no_id, beta=beta, lr=lr, steps=1,
                               batch_size=None, **kwargs)
    return float(run.log["full_train_loss"].iloc[0] - run.final["full_train_loss"])


def _curve(behaviour: str, split: str, steps: np.ndarray, loss: np.ndarray, accuracy: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"step": steps, "loss": loss, "accuracy": accuracy})
    frame.insert(1, "behaviour", behaviour)
    frame.insert(2, "split", split)
    return frame


def _with_final(run: LastLayerRun, column: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(step numbers 0 .. steps, the column's values at W(0) .. W(steps)) from a run's log and final metrics."""
    return (np.append(run.log["step"].to_numpy(), steps),
            np.append(run.log[column].to_numpy(), run.final[column]))


def train_pair(features_i, signs_i, features_j, signs_j, W0, yes_id: int, no_id: int, *, lr: float,
               beta: float = OFFICIAL_BETA, steps: int = OFFICIAL_STEPS,
               batch_size: int | None = OFFICIAL_BATCH_SIZE, seed: int = 0, eval_sets: dict | None = None,
               **kwargs) -> pd.DataFrame:
    """Two behaviours trained jointly (their items pooled, as ``multi_last_layer_training.py``), with per-behaviour
    curves: a long DataFrame with columns step, behaviour, split, loss, accuracy (the policy's own ordering,
    ``outputs/accuracies``), evaluated at W(t) before the step's update, plus a last row at step = ``steps``.

    * Default (``eval_sets=None``): each behaviour's curve on its own training items (behaviour "i"/"j", split
      "train"), from one run: j is logged as the run's test set and i follows exactly from the pooled training-set
      metrics, n L_pooled = n_i L_i + n_j L_j (the same for accuracy).
    * ``eval_sets``: {(behaviour, split): (features, signs)}; as in the official code, each set is logged by its own
      run with the same seed, so all runs follow the identical trajectory.
    """
    for name, fk, sk in (("i", features_i, signs_i), ("j", features_j, signs_j)):
        fk, sk = np.asarray(fk), np.asarray(sk)
        if fk.ndim != 2 or fk.shape[0] == 0 or sk.ndim != 1 or sk.shape[0] != fk.shape[0]:
            raise ValueError(f"features_{name}, signs_{name}: behaviour {name} needs a non-empty (n, d) feature array "
                             f"and n signs, got shapes {fk.shape} and {sk.shape}")
    g = np.concatenate([np.asarray(features_i), np.asarray(features_j)])
    s = np.concatenate([np.asarray(signs_i), np.asarray(signs_j)])

    def run_with(eval_g, eval_s) -> LastLayerRun:
        return train_last_layer_dpo(W0, g, s, yes_id=yes_id, no_id=no_id, beta=beta, lr=lr, steps=steps,
                                    batch_size=batch_size, seed=seed, test_features=eval_g, test_signs=eval_s,
                                    **kwargs)

    if eval_sets is None:
        run = run_with(features_j, signs_j)
        n, n_j = len(s), len(np.asarray(signs_j))
        n_i = n - n_j
        step, loss_j = _with_final(run, "eval_loss", steps)
        _, acc_j = _with_final(run, "eval_outputs/accuracies", steps)
        _, loss_all = _with_final(run, "full_train_loss", steps)
        _, acc_all = _with_final(run, "full_train_outputs/accuracies", steps)
        return pd.concat([_curve("i", "train", step, (n * loss_all - n_j * loss_j) / n_i,
                                 (n * acc_all - n_j * acc_j) / n_i),
                          _curve("j", "train", step, loss_j, acc_j)], ignore_index=True)
    if not eval_sets:
        raise ValueError("eval_sets: give at least one set to evaluate, or None for both training sets")
    frames = []
    for (behaviour, split), (eg, es) in eval_sets.items():
        run = run_with(eg, es)
        step, loss = _with_final(run, "eval_loss", steps)
        frames.append(_curve(behaviour, split, step, loss, _with_final(run, "eval_outputs/accuracies", steps)[1]))
    return pd.concat(frames, ignore_index=True)


def first_step_reaching(accuracy, threshold: float = 0.9) -> float:
    """The first index (step) at which ``accuracy`` >= ``threshold``; NaN if never."""
    threshold = C.fraction("threshold", threshold)
    a = np.asarray(accuracy, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("accuracy: must be a non-empty 1-d sequence (one value per step)")
    hits = np.flatnonzero(a >= threshold)
    return float(hits[0]) if hits.size else math.nan


def first_learned(curves: pd.DataFrame, threshold: float = 0.9, split: str = "train") -> dict:
    """Which behaviour of a :func:`train_pair` result first reaches ``threshold`` accuracy on ``split``.

    Returns {"step_i", "step_j" (NaN if never), "winner": "i", "j", "tie" (same step) or "none" (neither)}.
    """
    part = curves[curves["split"] == split]
    if part.empty:
        raise ValueError(f"split: no curves with split {split!r}; have {sorted(curves['split'].unique())}")
    steps = {}
    for b in ("i", "j"):
        acc = part[part["behaviour"] == b].sort_values("step")["accuracy"]
        if acc.empty:
            raise ValueError(f"curves: no {split!r} curve for behaviour {b!r}")
        steps[b] = first_step_reaching(acc.to_numpy(), threshold)
    si, sj = steps["i"], steps["j"]
    if math.isnan(si) and math.isnan(sj):
        winner = "none"
    elif math.isnan(sj) or (not math.isnan(si) and si < sj):
        winner = "i"
    elif math.isnan(si) or sj < si:
        winner = "j"
    else:
        winner = "tie"
    return {"step_i": si, "step_j": sj, "winner": winner}


def head_path(W0, features, signs, yes_id: int, no_id: int, *, checkpoints, lr: float, beta: float = OFFICIAL_BETA,
              batch_size: int | None = OFFICIAL_BATCH_SIZE, seed: int = 0) -> np.ndarray:
    """v(t) = w_Yes(t) - w_No(t) at the given step counts (shape (len(checkpoints), d)), from one training run of
    max(checkpoints) steps that records v at every step. Runs on the 2-row head (:func:`answer_rows_head`), so it is
    cheap even at LLM vocabulary size."""
    W2, y, n = answer_rows_head(W0, yes_id, no_id)
    cps = [int(C.int_at_least("checkpoints", c, 0)) for c in np.atleast_1d(checkpoints).tolist()]
    if not cps:
        raise ValueError("checkpoints: give at least one step count")
    if max(cps) == 0:
        return np.stack([(W2[y] - W2[n]).double().numpy()] * len(cps))
    run = train_last_layer_dpo(W2, features, signs, yes_id=y, no_id=n, beta=beta, lr=lr, steps=max(cps),
                               batch_size=batch_size, seed=seed, device="cpu", record_v=True)
    return run.v_path[cps]


def seed_averaged_accuracy(data: BehaviourSet, W0, yes_id: int, no_id: int, *, lr: float, seeds,
                           last_k: int = 10, beta: float = OFFICIAL_BETA, steps: int = OFFICIAL_STEPS,
                           batch_size: int | None = OFFICIAL_BATCH_SIZE) -> dict:
    """The training accuracy at the end of the official run, averaged over SGD seeds (batch orders) and over the
    last ``last_k`` heads W(steps - last_k + 1) .. W(steps), on the whole training split.

    Returns {"mean": the average, "per_seed": array (one last-k average per seed), "std": their standard deviation
    (ddof 1; 0 for one seed)}."""
    seeds = [int(C.int_at_least("seeds", x, 0)) for x in np.atleast_1d(seeds).tolist()]
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    last_k = C.int_at_least("last_k", last_k, 1)
    steps = C.int_at_least("steps", steps, 1)
    if last_k > steps:
        raise ValueError(f"last_k: must be at most steps ({steps}), got {last_k}")
    per_seed = []
    for seed in seeds:
        run = run_behaviour(data, W0, yes_id, no_id, lr=lr, beta=beta, steps=steps, batch_size=batch_size, seed=seed)
        acc = np.append(run.log["full_train_outputs/accuracies"].to_numpy(), run.final["full_train_outputs/accuracies"])
        per_seed.append(float(acc[-last_k:].mean()))
    per_seed = np.asarray(per_seed)
    return {"mean": float(per_seed.mean()), "per_seed": per_seed,
            "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0}


def mean_accuracy(curves: pd.DataFrame, split: str = "train") -> dict[str, float]:
    """{"i": ..., "j": ...}: each behaviour's accuracy averaged over all logged steps of a :func:`train_pair` result
    (a smooth "how much of the run was it learned" measure, next to the first step reaching a threshold)."""
    part = curves[curves["split"] == split]
    if part.empty:
        raise ValueError(f"split: no curves with split {split!r}; have {sorted(curves['split'].unique())}")
    out = {}
    for b in ("i", "j"):
        acc = part.loc[part["behaviour"] == b, "accuracy"]
        if acc.empty:
            raise ValueError(f"curves: no {split!r} curve for behaviour {b!r}")
        out[b] = float(acc.mean())
    return out


# ---------------------------------------------------------------------------------------------------------------
# Synthetic pairs (the prioritisation experiment's controlled version)
# ---------------------------------------------------------------------------------------------------------------

def directions_at_angle(d: int, angle_degrees: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random unit vectors in R^d with the given angle between them (0 .. 180 degrees)."""
    d = C.int_at_least("d", d, 2)
    if isinstance(angle_degrees, bool) or not isinstance(angle_degrees, Real) or not 0 <= angle_degrees <= 180:
        raise ValueError(f"angle_degrees: must be a number in [0, 180], got {angle_degrees!r}")
    q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    a = math.radians(angle_degrees)
    return q[:, 0].copy(), math.cos(a) * q[:, 0] + math.sin(a) * q[:, 1]


def synthetic_pair(n: int, d: int, pd_i: float, pd_j: float, angle_degrees: float, *, rng: np.random.Generator,
                   center: float = 0.0, noise: str = "gaussian"):
    """Two synthetic behaviours (:func:`analysis_lib.lastlayer.make_behaviour`) of n items each, distinguishabilities
    pd_i and pd_j, separating directions at ``angle_degrees``, sharing one centre of norm ``center``."""
    u_i, u_j = directions_at_angle(d, angle_degrees, rng)
    c = rng.standard_normal(d)
    c *= center / np.linalg.norm(c)
    return (make_behaviour(n, d, pd_i, rng=rng, noise=noise, center=c, direction=u_i),
            make_behaviour(n, d, pd_j, rng=rng, noise=noise, center=c, direction=u_j))
