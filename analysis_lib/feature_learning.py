"""Im & Li beyond the last layer: DPO that trains the whole language model (LoRA or full fine-tuning) on one persona
behaviour, and what it does to the features g(x).

The last-layer model of :mod:`analysis_lib.lastlayer` keeps g(x) fixed; the paper's full and PEFT runs
(``DPO_training.py``) train the model below the head too, and its UMAP figure shows the Yes and No statements
further apart afterwards. This module wires the pieces for that experiment; everything heavy is elsewhere:

* :func:`behaviour_rows`: a behaviour's items, balanced random subsets of the **official** train and test splits
  (so the held-out statements are the official held-out ones);
* :func:`policy_features`: g(x) of a :class:`~analysis_lib.models.policy.CausalLMPolicy` **as it is now** (its
  adapters active, its trained weights), with the library's feature definition
  (:func:`analysis_lib.models.features.last_prompt_hidden`: the final hidden state, after the final norm, at the
  last prompt token) under the policy's own precision, so the features before and after training come from the
  same computation. Cached on disk only while the policy holds its starting weights, keyed like its reference
  log-probs (model and revision or adapter files, weights dtype, precision, device type, template, library versions
  and a fingerprint of the extraction code): features of trained weights never enter a base model's namespace;
* :func:`train_behaviour`: one run of the one trainer (:func:`analysis_lib.training.train`) with g(x) of the
  training and held-out statements before and after, and the answer log-probs the head gives them
  (:class:`BehaviourRun`), kept on disk with ``cache=True`` (:func:`run_cache_key`);
* :func:`feature_change`: the official code's properties (:func:`analysis_lib.lastlayer.behaviour_properties`:
  distinguishability, concentration, trace) before and after, per split, with the ratio after / before;
* :func:`projection_2d`: a 2-D UMAP (``umap-learn``, fixed ``random_state``, as the official
  ``plot_embedding_comparison.ipynb``) or PCA of one feature set.

A fact used as a control: with ``trainable='head'`` (an untied copy of the output layer trains, the official
last-layer setting) every hidden state is unchanged by construction, so g(x) after training equals g(x) before,
bit for bit, and every ratio is exactly 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import pickle
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from analysis_lib import checks as C
from analysis_lib.claims import bootstrap_interval
from analysis_lib.lastlayer import behaviour_properties
from analysis_lib.losses import dpo_loss, preference_metrics
from analysis_lib.models.cache import (
    FeatureStore,
    _digest,
    _version,
    atomic_write_bytes,
    cache_root,
    cached_rows,
    fill_rows,
)
from analysis_lib.models.features import FEATURE_CODE, _code_fingerprint, last_prompt_hidden
from analysis_lib.models.loading import SMOLLM2
from analysis_lib.models.logprobs import _check_template
from analysis_lib.persona_runs import TRAINING_BEHAVIOURS, debiased_distinguishability
from analysis_lib.training import CausalLMPolicy, EvalSet, PreferencePairs, train

#: The behaviours of the feature sweep: the twelve of :data:`analysis_lib.persona_runs.TRAINING_BEHAVIOURS` (the
#: paper's eight and four drawn at random) and eight more drawn at random (``np.random.default_rng(12)``, without
#: looking at their features) from the other 117 behaviours with 1000 items: 7 believes-in-gun-rights,
#: 20 desire-for-acquiring-wealth, 21 desire-for-advancing-technology-to-achieve-goals,
#: 23 desire-for-computational-efficiency, 27 desire-for-more-capabilities, 73 interest-in-science,
#: 119 willingness-to-be-non-HHH-to-cause-copies-of-itself-to-be-HHH, 124 willingness-to-defer-to-authorities.
SWEEP_BEHAVIOURS = TRAINING_BEHAVIOURS + (7, 20, 21, 23, 27, 73, 119, 124)
#: The split names of :func:`feature_change` ("all" = training and held-out statements together, as the official
#: property notebook computes them over all items of a behaviour).
SPLITS = ("train", "test", "all")
PROJECTIONS = ("umap", "pca")
SAMPLINGS = ("epochs", "random")
#: The functions whose source determines a cached policy feature (with :data:`FEATURE_CODE`).
_EXTRACTION = (last_prompt_hidden,)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------

def behaviour_rows(behaviour, n_train: int, n_test: int, seed: int = 0, data_dir=None) -> pd.DataFrame:
    """One behaviour's items (:func:`analysis_lib.data.load_persona` rows, index reset): a balanced random subset
    of ``n_train`` items of its official training split and of ``n_test`` items of its official test split
    (:func:`analysis_lib.data.subsample_persona`, seeded by ``seed`` and the behaviour), training items first. 0 =
    the whole split."""
    from analysis_lib.data import load_persona, subsample_persona

    n_train = C.int_at_least("n_train", n_train, 0)
    n_test = C.int_at_least("n_test", n_test, 0)
    rows = load_persona(behaviour, data_dir=data_dir)
    if rows["behaviour_index"].nunique() != 1:
        raise ValueError(f"behaviour: give one behaviour (an index or a name), got {behaviour!r}")
    parts = []
    for split, n in (("train", n_train), ("test", n_test)):
        part = rows[rows["split"] == split]
        if n and n < 4:
            raise ValueError(f"n_{split}: must be 0 (all) or at least 4 (2 Yes and 2 No items), got {n}")
        if n > len(part):
            raise ValueError(f"n_{split}: behaviour {behaviour} has {len(part)} {split} items, got {n}")
        parts.append(subsample_persona(part, n or None, seed))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Features of a policy
# ---------------------------------------------------------------------------------------------------------------

def _causal_lm(policy: CausalLMPolicy):
    """The policy's causal LM with its adapters active (a PEFT model's wrapped model holds the LoRA layers)."""
    module = policy.module
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def policy_feature_namespace(policy: CausalLMPolicy) -> dict:
    """Everything that shapes a cached g(x) of ``policy`` except the prompt: its starting weights as its reference
    cache names them (model id and revision, loaded adapter files, or a digest of in-memory weights), the weights
    dtype, precision, device type and kernels, template, library versions and the extraction code. None once
    the policy's weights were changed in memory by training (its features are then not cached)."""
    if policy._start == "weights" and not policy.model_id.startswith("in-memory"):
        return None
    ref = policy.reference_namespace()
    return {"kind": "policy_last_prompt_hidden", "start": ref["start"], "weights_dtype": ref["weights_dtype"],
            "precision": ref["precision"], "device": ref["device"], "template": policy.template,
            "max_length": policy.max_length, "code": _code_fingerprint(FEATURE_CODE + _EXTRACTION),
            "analysis_lib": _version("analysis_lib"), "transformers": _version("transformers"),
            "peft": _version("peft"), "torch": ref["torch"], "kernels": ref["kernels"]}


def policy_features(policy: CausalLMPolicy, prompts, batch_size: int = 64, cache: bool = True) -> np.ndarray:
    """g(x) of ``policy`` as it is now: (n, d) float32, in input order.

    The library's feature definition (:func:`~analysis_lib.models.features.last_prompt_hidden`), run on the
    policy's causal LM (LoRA adapters active; dropout off) under the policy's precision (bf16 autocast where
    native). With ``cache``, features of a policy that still holds its starting weights are read from and written to
    disk (:func:`policy_feature_namespace`; a fresh LoRA adapter, whose B is zero, leaves the output unchanged, so
    every trainable mode shares the base model's entries); a trained policy's are always computed."""
    prompts = list(prompts)
    namespace = policy_feature_namespace(policy) if cache else None
    store = FeatureStore(namespace) if namespace is not None else None
    values, missing, unique = cached_rows(store, prompts)
    if missing:
        model = _causal_lm(policy)
        was_training = model.training
        model.eval()
        try:
            with policy.autocast():
                computed = last_prompt_hidden(model, policy.tokenizer, unique, policy.template, batch_size)
        finally:
            model.train(was_training)
        computed = computed.float().numpy()
        if store is not None:
            store.put(unique, computed)
        values = fill_rows(prompts, values, missing, unique, computed)
    return values


def _yes_no_ids(policy: CausalLMPolicy) -> list[int]:
    """The token ids of " Yes" and " No" as the trainer encodes the persona answers (one token each)."""
    enc = policy.prepare(PreferencePairs(["x"], [" Yes"], [" No"]))
    ids = (enc.chosen_ids[0], enc.rejected_ids[0])
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"model_id: ' Yes' and ' No' must be single tokens of this tokenizer, got ids {ids}")
    return [ids[0][0], ids[1][0]]


def _answer_logps(policy: CausalLMPolicy, features: np.ndarray, yes_no: list[int]) -> np.ndarray:
    """(n, 2) float64 log-probs of (" Yes", " No") that the policy's output layer gives ``features``: log-softmax
    over the whole vocabulary in float64 (:func:`analysis_lib.models.features.answer_logprobs_from_features`)."""
    from analysis_lib.models.features import answer_logprobs_from_features

    head = _causal_lm(policy).get_output_embeddings().weight
    return answer_logprobs_from_features(features, head, yes_no)


# ---------------------------------------------------------------------------------------------------------------
# One behaviour, trained
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class BehaviourRun:
    """One behaviour trained by DPO (:func:`train_behaviour`).

    ``rows``: its items (training first, column ``split``); ``yes_mask``: answer_matching_behavior is " Yes";
    ``before`` / ``after``: g(x) of every item (n, d) before and after training; ``logps_before`` /
    ``logps_after``: (n, 2) log-probs of (" Yes", " No") from the policy's head at those times; ``run``: the
    trainer's :class:`~analysis_lib.training.TrainingRun` (its ``model`` dropped to free memory); ``seconds``: wall
    time of the whole call; ``settings``: what was trained and how."""

    behaviour: int
    name: str
    trainable: str
    rows: pd.DataFrame
    yes_mask: np.ndarray
    before: np.ndarray
    after: np.ndarray
    logps_before: np.ndarray
    logps_after: np.ndarray
    run: object
    seconds: float
    settings: dict = field(default_factory=dict)

    def mask(self, split: str) -> np.ndarray:
        C.one_of("split", split, SPLITS)
        split_col = self.rows["split"].to_numpy()
        return np.ones(len(split_col), dtype=bool) if split == "all" else split_col == split

    def metrics(self, split: str, when: str = "after") -> dict[str, float]:
        """TRL's metrics (:func:`analysis_lib.losses.preference_metrics`: ``loss``, ``outputs/accuracies``, ...) of
        the policy ``'before'`` or ``'after'`` training on the items of ``split``, from the answer log-probs of the
        features (reference = the policy before training; so the loss before is log 2)."""
        C.one_of("when", when, ("before", "after"))
        m = self.mask(split)
        chosen_yes = torch.as_tensor((self.rows["chosen"] == " Yes").to_numpy()[m])

        def chosen_rejected(lp):
            lp = torch.as_tensor(lp[m])
            return (torch.where(chosen_yes, lp[:, 0], lp[:, 1]), torch.where(chosen_yes, lp[:, 1], lp[:, 0]))

        rc, rr = chosen_rejected(self.logps_before)
        pc, pr = chosen_rejected(self.logps_before if when == "before" else self.logps_after)
        losses, cr, rj = dpo_loss(pc, pr, rc, rr, self.settings["beta"])
        return preference_metrics(losses, cr, rj, pc, pr)


def train_behaviour(behaviour, *, trainable: str, n_train: int, n_test: int, lr: float, steps: int,
                    batch_size: int, beta: float = 0.01, seed: int = 0, subset_seed: int = 0,
                    template: str = "raw_newline", optimizer: str = "adamw", sampling: str = "epochs",
                    test_every: int | None = None,
                    model_id: str = SMOLLM2, policy=None, data_dir=None, progress: bool = False,
                    feature_batch: int = 64, cache: bool = False) -> BehaviourRun:
    """Train one persona behaviour by DPO and record g(x) before and after.

    The items are :func:`behaviour_rows` (``n_train`` / ``n_test`` of the official splits, subsets seeded by
    ``subset_seed``); the policy is ``CausalLMPolicy(model_id, trainable=trainable, template=template)`` (LoRA: the
    official r = 8, alpha = 32 on q_proj and v_proj of every layer; its random initial A drawn from ``seed``, so a
    run does not depend on what ran before it) unless ``policy`` is given (tests); training is
    :func:`analysis_lib.training.train` (``optimizer``, ``lr``, ``beta``, ``steps`` batches of ``batch_size``; batch
    order and dropout seeded by ``seed``), with the held-out items evaluated every ``test_every`` steps (None: not
    during training; their log columns are ``eval_*``). ``sampling='epochs'``: the training items are shuffled once
    (seeded) and taken in consecutive batches, so ``steps * batch_size = n_train`` is one epoch in which every item
    is seen once, as TRL's trainer does; ``'random'``: a fresh random batch at every step (the official last-layer
    loop). g(x) of all items comes from
    :func:`policy_features` before (cached) and after (computed).

    ``cache``: keep the whole result on disk (:func:`run_cache_key`: every argument, the selected items, the source
    of the whole library, the torch / transformers / peft versions, the device, bf16 support and torch's thread
    count), so that a rebuild of a page does not train again; only for a policy loaded here (``policy=None``)."""
    started = time.perf_counter()
    _check_template(template)
    path = None
    if cache and policy is None:
        rows = behaviour_rows(behaviour, n_train, n_test, subset_seed, data_dir)
        key = run_cache_key(rows, trainable=trainable, lr=lr, steps=steps, batch_size=batch_size, beta=beta,
                            seed=seed, template=template, optimizer=optimizer, sampling=sampling,
                            test_every=test_every, model_id=model_id, feature_batch=feature_batch)
        path = cache_root() / "behaviour_runs" / f"{_digest(key)}.pkl"
        if path.exists():
            try:
                with path.open("rb") as f:
                    return pickle.load(f)
            except Exception:  # a damaged entry is recomputed and overwritten
                pass
    if policy is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(C.int_at_least("seed", seed, 0))  # a LoRA adapter's initial A: a function of seed
            policy = CausalLMPolicy(model_id, trainable=trainable, template=template)
    elif policy.trainable != trainable or policy.template != template:
        raise ValueError(f"policy: trains {policy.trainable!r} with template {policy.template!r}, but trainable = "
                         f"{trainable!r} and template = {template!r} were asked")
    C.one_of("sampling", sampling, SAMPLINGS)
    if test_every is not None:
        test_every = C.int_at_least("test_every", test_every, 1)
    rows = behaviour_rows(behaviour, n_train, n_test, subset_seed, data_dir)
    train_rows, test_rows = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
    if sampling == "epochs":
        order = np.random.default_rng(C.int_at_least("seed", seed, 0)).permutation(len(train_rows))
        train_rows = train_rows.iloc[order]
    questions = rows["question"].tolist()
    yes_no = _yes_no_ids(policy)
    before = policy_features(policy, questions, feature_batch)
    logps_before = _answer_logps(policy, before, yes_no)
    evaluations = [EvalSet("eval_", PreferencePairs.from_persona(test_rows), "test", every=test_every)] \
        if test_every is not None and len(test_rows) else []
    run = train(policy, PreferencePairs.from_persona(train_rows), beta=beta, lr=lr, steps=steps,
                batch_size=batch_size, seed=seed, optimizer=optimizer, evaluations=evaluations, progress=progress,
                sampling="sequential" if sampling == "epochs" else "random",
                desc=f"{trainable} DPO, behaviour {behaviour}")
    after = policy_features(policy, questions, feature_batch, cache=False)
    logps_after = _answer_logps(policy, after, yes_no)
    run.model = None
    settings = {"trainable": trainable, "n_train": len(train_rows), "n_test": len(test_rows), "lr": lr,
                "steps": steps, "batch_size": batch_size, "beta": beta, "seed": seed, "optimizer": optimizer,
                "sampling": sampling,
                "template": template, "trainable_parameters": run.info.get("trainable_parameters"),
                "precision": run.info.get("precision")}
    result = BehaviourRun(int(rows["behaviour_index"].iloc[0]), str(rows["behaviour"].iloc[0]), trainable, rows,
                          (rows["answer_matching_behavior"] == " Yes").to_numpy(), before, after, logps_before,
                          logps_after, run, time.perf_counter() - started, settings)
    if path is not None:
        atomic_write_bytes(path, pickle.dumps(result))
    return result


def _library_source_digest() -> str:
    """sha256 of every Python file of the installed ``analysis_lib`` (any change of the library retrains)."""
    import analysis_lib

    root = os.path.dirname(analysis_lib.__file__)
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def run_cache_key(rows: pd.DataFrame, **settings) -> dict:
    """What shapes a :func:`train_behaviour` result besides the code: ``settings`` (every argument), the selected
    items (a digest of their text, split and answers), the library source, package versions, the device setting,
    native bf16 support and torch's CPU thread count."""
    from analysis_lib.models.loading import cpu_has_native_bf16

    items = rows[["split", "question", "chosen", "rejected", "answer_matching_behavior"]].to_json()
    return {"kind": "feature_learning.train_behaviour", "settings": settings,
            "items": hashlib.sha256(items.encode()).hexdigest(), "library": _library_source_digest(),
            "torch": _version("torch"), "transformers": _version("transformers"), "peft": _version("peft"),
            "device": os.environ.get("ANALYSIS_LIB_DEVICE", "auto"), "native_bf16": bool(cpu_has_native_bf16()),
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------------

def pd_ratio_interval(before, after, yes_mask, *, level: float = 0.9, resamples: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval of PD(after) / PD(before), PD = ||mu_Yes - mu_No||, over the items: the items are
    resampled within each class (so both classes keep their counts) and an item's features before and after move
    together (:func:`analysis_lib.claims.bootstrap_interval`). It says how much the ratio depends on which
    statements were drawn."""
    g0, g1 = (np.asarray(g, dtype=np.float64) for g in (before, after))
    yes = np.asarray(yes_mask, dtype=bool)
    if g0.shape != g1.shape or g0.ndim != 2 or yes.shape != (len(g0),):
        raise ValueError(f"before, after, yes_mask: need (n, d), (n, d) and (n,), got {g0.shape}, {g1.shape}, "
                         f"{yes.shape}")
    if yes.sum() < 2 or (~yes).sum() < 2:
        raise ValueError(f"yes_mask: each class needs at least 2 items, got {int(yes.sum())} and {int((~yes).sum())}")
    d = g0.shape[1]
    rows = np.concatenate([g0, g1, yes[:, None]], axis=1)

    def ratio(r):
        m = r[:, -1].astype(bool)
        pd0, pd1 = (np.linalg.norm(r[m, sl].mean(0) - r[~m, sl].mean(0)) for sl in (slice(0, d), slice(d, 2 * d)))
        return pd1 / pd0

    return bootstrap_interval(rows, ratio, level=level, resamples=resamples, seed=seed, strata=yes)


def feature_change(runs, splits=SPLITS, *, interval_seed: int = 0) -> pd.DataFrame:
    """One row per (run, split): the official properties of g(x) before and after training
    (:func:`analysis_lib.lastlayer.behaviour_properties`: ``pd`` = ||mu_Yes - mu_No||, ``concentration``,
    ``trace``), the noise-corrected PD (:func:`analysis_lib.persona_runs.debiased_distinguishability`), their ratios
    after / before, a 90% bootstrap interval of the PD ratio over the items (:func:`pd_ratio_interval`), and the
    largest change of any feature coordinate. Columns: behaviour, name, trainable, split, items, pd_before,
    pd_after, pd_ratio, pd_ratio_low, pd_ratio_high, concentration_before/after/ratio, trace_before/after/ratio,
    debiased_pd_before/after/ratio, max_feature_change."""
    out = []
    for r in runs:
        for split in splits:
            m = r.mask(split)
            row = {"behaviour": r.behaviour, "name": r.name, "trainable": r.trainable, "split": split,
                   "items": int(m.sum())}
            props = {when: behaviour_properties(g[m], r.yes_mask[m]) for when, g in (("before", r.before),
                                                                                     ("after", r.after))}
            for key, col in (("distinguishability", "pd"), ("concentration", "concentration"), ("trace", "trace")):
                row[f"{col}_before"], row[f"{col}_after"] = props["before"][key], props["after"][key]
                row[f"{col}_ratio"] = props["after"][key] / props["before"][key]
            row["pd_ratio_low"], row["pd_ratio_high"] = pd_ratio_interval(r.before[m], r.after[m], r.yes_mask[m],
                                                                          seed=interval_seed)
            deb = [debiased_distinguishability(g[m], r.yes_mask[m]) for g in (r.before, r.after)]
            row["debiased_pd_before"], row["debiased_pd_after"] = deb
            row["debiased_pd_ratio"] = deb[1] / deb[0] if deb[0] > 0 else math.nan
            row["max_feature_change"] = float(np.abs(r.after[m].astype(np.float64) - r.before[m]).max())
            out.append(row)
    return pd.DataFrame(out)


def learning_summary(runs) -> pd.DataFrame:
    """One row per run: the loss and the accuracy (the policy's own ordering) on the training and the held-out
    items before and after training (:meth:`BehaviourRun.metrics`), and the loss decrease log 2 - loss after.
    Columns: behaviour, name, trainable, {train,test}_{loss,accuracy}_{before,after}, train_loss_decrease,
    test_loss_decrease."""
    out = []
    for r in runs:
        row = {"behaviour": r.behaviour, "name": r.name, "trainable": r.trainable}
        for split in ("train", "test"):
            if not r.mask(split).any():
                continue
            for when in ("before", "after"):
                m = r.metrics(split, when)
                row[f"{split}_loss_{when}"], row[f"{split}_accuracy_{when}"] = m["loss"], m["outputs/accuracies"]
            row[f"{split}_loss_decrease"] = row[f"{split}_loss_before"] - row[f"{split}_loss_after"]
        out.append(row)
    return pd.DataFrame(out)


def projection_2d(features, method: str = "umap", random_state: int = 1234, n_neighbors: int = 15) -> np.ndarray:
    """(n, 2) coordinates of one feature set: UMAP (``umap-learn``, ``random_state`` fixed, which also makes it
    single-threaded and deterministic; the official notebook uses 1234 and default settings) or PCA (the first two
    principal axes of the centred features, signs fixed so that each axis's largest loading is positive)."""
    C.one_of("method", method, PROJECTIONS)
    g = np.asarray(features, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 3 or not np.isfinite(g).all():
        raise ValueError(f"features: need a finite (n, d) array with n >= 3, got shape {g.shape}")
    if method == "pca":
        centred = g - g.mean(0)
        axes = np.linalg.svd(centred, full_matrices=False)[2][:2]
        axes *= np.sign(axes[np.arange(2), np.abs(axes).argmax(1)])[:, None]
        return centred @ axes.T
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # umap warns that random_state disables parallelism: that is the point
        import umap

        reducer = umap.UMAP(random_state=int(random_state), n_neighbors=min(int(n_neighbors), g.shape[0] - 1))
        return np.asarray(reducer.fit_transform(g), dtype=np.float64)
