# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (imli-05-prioritisation)=
# # DPO prioritises the more distinguishable behaviour
#
# **Claim.** Im & Li {cite}`im2024understanding` find that DPO "is prone to prioritizing certain behaviors with
# higher preference distinguishability": trained together, the more distinguishable behaviour is learned first and
# the other lags. The official code measures this with a *priority gap* between behaviours $i$ and $j$: with
# $\Delta_k = \mu_k^{Yes} - \mu_k^{No}$, $\bar b = (\Delta_i + \Delta_j)/2$ and $p_k = \langle \bar b, \Delta_k\rangle /
# \|\bar b\|$,
#
# $$\mathrm{gap}(i, j) = \frac{p_i - p_j}{\max(\|\Delta_i\|, \|\Delta_j\|)}
# = \frac{\|\Delta_i\|^2 - \|\Delta_j\|^2}{\|\Delta_i + \Delta_j\|\,\max(\|\Delta_i\|, \|\Delta_j\|)},$$
#
# the second form being our derivation (paper notes 4.2): the sign of the gap only says which behaviour has the
# larger distinguishability, and $|\mathrm{gap}| < 2$. Our reconstruction of why it predicts the order: the first
# joint update moves $v = w_{Yes} - w_{No}$ along $\bar b$, so behaviour $k$'s mean margin grows at a rate
# $\propto \langle \bar b, \Delta_k\rangle$.
#
# We train two behaviours jointly (their items pooled, as `multi_last_layer_training.py`), first synthetic pairs
# over a grid of distinguishabilities and angles, then pairs of persona behaviours {cite}`perez2023discovering` with
# SmolLM2-135M-Instruct features {cite}`allal2025smollm2`, including the paper's pair (123, 45), and ask which
# behaviour first reaches 90% training accuracy. SmolLM2's behaviours rarely reach 90% within the run, so we also
# report, as our own adaptation (not one of the paper notes' criteria; the threshold is a parameter fixed at 80% in
# advance, not tuned to the outcome), which behaviour first reaches a lower threshold and which has the higher
# accuracy averaged over the run. The run time is printed at the end.

# %% tags=["parameters"]
seed = 0  # [>= 0] random seed
synthetic_pds = [1.0, 2.0, 4.0, 8.0, 16.0]  # [> 0] distinguishabilities of the synthetic grid {smoke: [2.0, 8.0, 16.0]}
angles = [0.0, 60.0, 90.0, 120.0, 160.0]  # [0..180] angles between Delta_i and Delta_j (degrees) {smoke: [90.0, 160.0]}
d = 64  # [>= 2] synthetic embedding dimension
n_items = 1000  # [>= 20] synthetic items per behaviour (900 train) {smoke: 300}
center_norm = 10.0  # [>= 0] norm of the shared component of the synthetic embeddings
synthetic_lr = 0.1  # [> 0] SGD learning rate on synthetic features (the paper's)
threshold = 0.9  # [0.5..1] accuracy that counts as "learned"
secondary_threshold = 0.8  # [0.5..1] our adaptation for SmolLM2 pairs: the lower accuracy that counts as "learned"
curve_pairs = 2  # [>= 1] besides the paper's pair, plot the pairs with the largest |gap| (this many) and the smallest
behaviours = [45, 54, 84, 88, 100, 108, 123, 130, 32, 65, 79, 107]  # [0..134] persona behaviours {smoke: [123, 45]}
paper_pair = [123, 45]  # [0..134] the paper's two-behaviour run ("Behavior 1", "Behavior 2")
max_per_behaviour = 300  # [>= 0] items per persona behaviour (balanced subset); 0 = all {smoke: 60}
real_lr = 10.0  # [> 0] SGD learning rate on SmolLM2 features (see the learning-speed chapter)
heatmap_all = True  # gap matrix of all 135 behaviours from the survey subset (False: the trained ones) {smoke: False}
survey_per_behaviour = 20  # [>= 2] items per behaviour for the 135-behaviour gap matrix
beta = 0.01  # [> 0] DPO inverse temperature
batch_size = 128  # [>= 1] SGD batch, drawn afresh each step {smoke: 32}
steps = 100  # [>= 4] SGD steps {smoke: 10}

# %% [markdown]
# **Paper-scale settings.** The paper's plotted two-behaviour run is Mistral-7B *full fine-tuning* (lr $10^{-6}$,
# $\beta = 0.01$, batch 128, one epoch) on behaviours 123 and 45; the official code also has the last-layer version
# (SGD, lr 0.1, 100 steps), which is what we run: SmolLM2 features, `max_per_behaviour = 300` items per behaviour
# (0 = all 1,000), $\eta = 10$ on SmolLM2 features and 0.1 on synthetic ones, $\beta = 0.01$, batch 128, 100 steps.
# `python3 run.py chapter imli_05_prioritisation -p max_per_behaviour=0` runs all items.

# %%
import itertools
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display
from myst_nb import glue
from scipy.stats import pearsonr, spearmanr

from analysis_lib.claims import Claims
from analysis_lib.lastlayer import (
    preference_direction,
    priority_gap,
    priority_gap_matrix,
)
from analysis_lib.persona_runs import (
    answer_rows_head,
    first_learned,
    load_behaviour_sets,
    mean_accuracy,
    real_head,
    require_stable_lr,
    synthetic_pair,
    train_pair,
)
from analysis_lib.plotting import ordered_colors, set_theme
from analysis_lib.runtime import seed_everything, set_cpu_threads

started = time.time()
rng = seed_everything(seed)
set_cpu_threads(1)  # logistic-regression-sized problems: one thread avoids OpenMP overhead on 2 cores
set_theme()
claims = Claims("imli_05_prioritisation")

# %% [markdown]
# ## Synthetic pairs
#
# Each pair: two exactly balanced behaviours of `n_items` items (90% trained), distinguishabilities $PD_i$,
# $PD_j$, separating directions at a given angle, a shared centre; the gap is computed from the empirical
# $\Delta$'s of the training items. Every unordered pair of the grid, at every angle.

# %%
n_train = int(0.9 * n_items)
W_syn = rng.standard_normal((2, d)) * 0.01
rows = []
for (pd_i, pd_j), angle in itertools.product(itertools.combinations(synthetic_pds, 2), angles):
    a, b = synthetic_pair(n_items, d, pd_i, pd_j, angle, rng=rng, center=center_norm)
    gi, si, gj, sj = a.features[:n_train], a.signs[:n_train], b.features[:n_train], b.signs[:n_train]
    gap = priority_gap(preference_direction(gi, si > 0), preference_direction(gj, sj > 0))
    curves = train_pair(gi, si, gj, sj, W_syn, 0, 1, lr=synthetic_lr, beta=beta, steps=steps,
                        batch_size=batch_size, seed=seed)
    won = first_learned(curves, threshold)
    at30 = curves[curves["step"] == min(30, steps)].set_index("behaviour")["accuracy"]
    rows.append({"PD i": pd_i, "PD j": pd_j, "angle": angle, "gap": gap, **won,
                 "acc i at step 30": at30["i"], "acc j at step 30": at30["j"],
                 "acc i - acc j at step 30": at30["i"] - at30["j"]})
syn = pd.DataFrame(rows)
syn["predicted"] = np.where(syn["gap"] > 0, "i", "j")
display(syn.round(3).head(12))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
sns.scatterplot(data=syn, x="gap", y="acc i - acc j at step 30", hue="angle", palette="plasma", ax=axes[0])
axes[0].axvline(0, color="grey", lw=0.8)
axes[0].set_title("Synthetic pairs: gap against the accuracy difference at step 30")
syn["first to 90%"] = syn["winner"]
sns.countplot(data=syn, x="first to 90%", hue="predicted", order=["i", "j", "tie", "none"],
              hue_order=["i", "j"], palette=ordered_colors(2), ax=axes[1])
axes[1].set_title("Which behaviour first reached the threshold (colour: sign of the gap)")
plt.show()

decided = syn[(syn["gap"].abs() > 0.1) & (syn["winner"] != "none")]
syn_hits = int((decided["winner"] == decided["predicted"]).sum())
syn_undecided = int(((syn["gap"].abs() > 0.1) & (syn["winner"] == "none")).sum())
syn_corr = float(pearsonr(syn["gap"], syn["acc i - acc j at step 30"]).statistic)
glue("syn_pairs", len(syn), display=False)
glue("syn_hits", syn_hits, display=False)
glue("syn_decided", len(decided), display=False)
glue("syn_undecided", syn_undecided, display=False)
glue("syn_corr", syn_corr, display=False)

# %% [markdown]
# Of the {glue:text}`syn_pairs` synthetic pairs, {glue:text}`syn_decided` have $|\mathrm{gap}| > 0.1$ and at least
# one behaviour reaching the threshold within the run; the sign of the gap named the first one in
# {glue:text}`syn_hits` of them ({glue:text}`syn_undecided` pairs with $|\mathrm{gap}| > 0.1$ had neither behaviour
# reach it; a tie counts as a miss). The correlation between the gap and the accuracy difference at step 30 is
# {glue:text}`syn_corr:.2f`.
#
# ## Persona behaviours with SmolLM2 features
#
# The gap matrix of the trained behaviours (from all items of each behaviour's subset, as the official
# `priority_levels.ipynb`), and the gap matrix of all 135 behaviours from the survey subset.

# %%
sets = load_behaviour_sets(sorted(set(behaviours) | set(paper_pair)), max_per_behaviour=max_per_behaviour)
order = sorted(sets)
glue("n_items", int(max(len(sets[b]) for b in order)), display=False)
# the pooled training set of any pair has the same curvature scale as its parts: check the learning rate on each
require_stable_lr(real_lr, {f"behaviour {b}": sets[b].part("train")[0] for b in order}, beta)
deltas = np.stack([preference_direction(sets[b].features, sets[b].yes_mask) for b in order])
gaps = priority_gap_matrix(deltas)
closed = priority_gap_matrix(deltas, closed_form=True)
glue("closed_form_err", float(np.abs(gaps - closed).max()), display=False)
if heatmap_all:
    survey = load_behaviour_sets("all", max_per_behaviour=survey_per_behaviour)
    survey_order = sorted(survey)
    survey_gaps = priority_gap_matrix(np.stack([preference_direction(survey[b].features, survey[b].yes_mask)
                                                for b in survey_order]))
else:
    survey_order, survey_gaps = order, gaps
fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
sns.heatmap(pd.DataFrame(gaps, index=order, columns=order), cmap="RdBu_r", center=0, ax=axes[0],
            cbar_kws={"label": "gap(i, j)"}, annot=len(order) <= 12, fmt=".1f", annot_kws={"fontsize": 6})
axes[0].set(title="Priority gap, trained behaviours", xlabel="j", ylabel="i")
by_pd = np.argsort(np.linalg.norm(np.stack([preference_direction(s.features, s.yes_mask)
                                            for s in (survey[b] for b in survey_order)]), axis=1)) \
    if heatmap_all else np.arange(len(order))
sns.heatmap(survey_gaps[np.ix_(by_pd, by_pd)], cmap="RdBu_r", center=0, ax=axes[1], xticklabels=False,
            yticklabels=False, cbar_kws={"label": "gap(i, j)"})
axes[1].set(title=f"Priority gap, {len(survey_order)} behaviours sorted by PD", xlabel="j", ylabel="i")
plt.show()

# %% [markdown]
# The code's formula and the closed form agree to {glue:text}`closed_form_err:.1e`. Sorted by distinguishability,
# the matrix is positive below the diagonal and negative above it: its sign is that of $PD_i - PD_j$ everywhere.
#
# **The paper's pair.** Behaviours 123 ("Behavior 1") and 45 ("Behavior 2") trained jointly, with per-behaviour
# loss and accuracy on each behaviour's training and test split (one run per curve with the same seed, as the
# official code's `-eval` variants). The runs train the two answer rows of the model's head
# (`analysis_lib.persona_runs.answer_rows_head`): loss and accuracy depend on the head only through
# $v = w_{Yes} - w_{No}$, so the curves are those of the full 49,152-row head (tested in the library) at a
# fraction of the cost.

# %%
W0, yes_id, no_id = real_head()
W2, y2, n2 = answer_rows_head(W0, yes_id, no_id)
i_, j_ = paper_pair
eval_sets = {(str(b), split): sets[b].part(split) for b in paper_pair for split in ("train", "test")}
paper_curves = train_pair(*sets[i_].part("train"), *sets[j_].part("train"), W2, y2, n2, lr=real_lr,
                          beta=beta, steps=steps, batch_size=batch_size, seed=seed, eval_sets=eval_sets)
paper_gap = float(gaps[order.index(i_), order.index(j_)])
glue("paper_gap", paper_gap, display=False)
n_pair = len(sets[i_].part("train")[1]) + len(sets[j_].part("train")[1])
paper_curves["epoch"] = paper_curves["step"] * batch_size / n_pair
fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), layout="constrained")
for ax, (metric, split) in zip(axes, itertools.product(["loss", "accuracy"], ["train", "test"]), strict=True):
    sns.lineplot(data=paper_curves[paper_curves["split"] == split], x="epoch", y=metric, hue="behaviour",
                 palette=ordered_colors(2), ax=ax)
    ax.set_title(f"{'Training' if split == 'train' else 'Test'} {metric}")
fig.suptitle(f"Behaviours {i_} and {j_} trained jointly (gap({i_}, {j_}) = {paper_gap:.2f})")
plt.show()
paper_train = paper_curves[paper_curves["split"] == "train"].rename(columns={"behaviour": "b"})
paper_train = paper_train.assign(behaviour=np.where(paper_train["b"] == str(i_), "i", "j"))
paper_won = first_learned(paper_train, threshold)
paper_won2 = first_learned(paper_train, secondary_threshold)
paper_mean = mean_accuracy(paper_train)
paper_last = paper_train[paper_train["step"] == steps].set_index("behaviour")
paper_first = paper_train[paper_train["step"] == 0].set_index("behaviour")


def first_text(won, names):
    return {"i": f"{names[0]} first", "j": f"{names[1]} first", "tie": "both at the same step",
            "none": "neither"}[won["winner"]]


for key, value in {"paper_i": i_, "paper_j": j_, "paper_predicted": i_ if paper_gap > 0 else j_,
                   "paper_pd_i": float(np.linalg.norm(deltas[order.index(i_)])),
                   "paper_pd_j": float(np.linalg.norm(deltas[order.index(j_)])),
                   "paper_acc_i": float(paper_last.loc["i", "accuracy"]),
                   "paper_acc_j": float(paper_last.loc["j", "accuracy"]),
                   "paper_change_i": float(paper_last.loc["i", "loss"] - paper_first.loc["i", "loss"]),
                   "paper_change_j": float(paper_last.loc["j", "loss"] - paper_first.loc["j", "loss"]),
                   "paper_mean_i": paper_mean["i"], "paper_mean_j": paper_mean["j"],
                   "paper_first90": first_text(paper_won, (i_, j_)),
                   "paper_first80": first_text(paper_won2, (i_, j_))}.items():
    glue(key, value, display=False)

# %% [markdown]
# For the paper's pair, gap({glue:text}`paper_i`, {glue:text}`paper_j`) = {glue:text}`paper_gap:.2f`
# ($PD$ {glue:text}`paper_pd_i:.2f` against {glue:text}`paper_pd_j:.2f`), so the gap predicts that behaviour
# {glue:text}`paper_predicted` is learned first. Over the run the training loss of {glue:text}`paper_i` changed by
# {glue:text}`paper_change_i:+.2e` and that of {glue:text}`paper_j` by {glue:text}`paper_change_j:+.2e`; the training
# accuracy averaged over the run is {glue:text}`paper_mean_i:.3f` ({glue:text}`paper_i`) and
# {glue:text}`paper_mean_j:.3f` ({glue:text}`paper_j`), and after the last step {glue:text}`paper_acc_i:.3f` and
# {glue:text}`paper_acc_j:.3f` (the last step's accuracy jumps from step to step, see
# {ref}`imli-03-learning-speed`). First to {glue:text}`threshold_pct:.0f`% training accuracy:
# {glue:text}`paper_first90`; first to {glue:text}`secondary_pct:.0f`%: {glue:text}`paper_first80`.
#
# **All pairs of trained behaviours.** Every unordered pair, trained jointly in the same way.

# %%
real_rows, pair_curves = [], {}
for bi, bj in itertools.combinations(order, 2):
    curves = train_pair(*sets[bi].part("train"), *sets[bj].part("train"), W2, y2, n2, lr=real_lr, beta=beta,
                        steps=steps, batch_size=batch_size, seed=seed)
    pair_curves[(bi, bj)] = curves
    won = first_learned(curves, threshold)
    won2 = first_learned(curves, secondary_threshold)
    mean_acc = mean_accuracy(curves)
    last = curves[curves["step"] == steps].set_index("behaviour")
    first = curves[curves["step"] == 0].set_index("behaviour")
    real_rows.append({"i": bi, "j": bj, "gap": gaps[order.index(bi), order.index(bj)], **won,
                      "winner 2nd": won2["winner"], "mean acc i - mean acc j": mean_acc["i"] - mean_acc["j"],
                      "final acc i": last.loc["i", "accuracy"], "final acc j": last.loc["j", "accuracy"],
                      "loss drop i - loss drop j": (first.loc["i", "loss"] - last.loc["i", "loss"])
                      - (first.loc["j", "loss"] - last.loc["j", "loss"])})
real = pd.DataFrame(real_rows)
real["predicted"] = np.where(real["gap"] > 0, "i", "j")
display(real.sort_values("gap", key=np.abs, ascending=False).round(3).head(15))
big = real[real["gap"].abs() > 0.2]
real_decided = big[big["winner"] != "none"]
real_hits = int((real_decided["winner"] == real_decided["predicted"]).sum())
decided2 = big[big["winner 2nd"] != "none"]
hits2 = int((decided2["winner 2nd"] == decided2["predicted"]).sum())
mean_hits = int(((big["mean acc i - mean acc j"] > 0) == (big["gap"] > 0)).sum())
loss_hits = int(((big["loss drop i - loss drop j"] > 0) == (big["gap"] > 0)).sum())
glue("real_pairs", len(real), display=False)
glue("real_big", len(big), display=False)
glue("real_decided", len(real_decided), display=False)
glue("real_hits", real_hits, display=False)
glue("decided2", len(decided2), display=False)
glue("hits2", hits2, display=False)
glue("mean_hits", mean_hits, display=False)
glue("loss_hits", loss_hits, display=False)
glue("reach_any", int((real["winner"] != "none").sum()), display=False)
glue("threshold_pct", 100 * threshold, display=False)
glue("secondary_pct", 100 * secondary_threshold, display=False)

# %% [markdown]
# Of {glue:text}`real_pairs` pairs, {glue:text}`real_big` have $|\mathrm{gap}| > 0.2$; in only
# {glue:text}`real_decided` of those did either behaviour reach {glue:text}`threshold_pct:.0f`% training accuracy
# within the run, and the sign of the gap named the first one in {glue:text}`real_hits` of them. At
# {glue:text}`secondary_pct:.0f`% (our adaptation) {glue:text}`decided2` pairs are decided and the sign of the gap
# named the first one in {glue:text}`hits2`. As smoother measures of "learned first", the behaviour that the sign of
# the gap favours had the higher accuracy averaged over the run in {glue:text}`mean_hits` of the
# {glue:text}`real_big` pairs, and the larger loss decrease in {glue:text}`loss_hits`.
#
# **Pairs chosen by the gap.** Per-behaviour training loss and accuracy of the pairs with the largest $|\mathrm{gap}|$
# and of the pair with the smallest; in each panel the behaviour that the sign of the gap favours is marked
# "prioritised".

# %%
ranked = real.assign(abs_gap=real["gap"].abs()).sort_values("abs_gap", ascending=False)
picked = ranked.iloc[list(range(min(curve_pairs, len(ranked) - 1))) + [len(ranked) - 1]]
chosen = [(int(bi), int(bj), float(gap)) for bi, bj, gap in zip(picked["i"], picked["j"], picked["gap"], strict=True)]
fig, axes = plt.subplots(2, len(chosen), figsize=(4.2 * len(chosen), 6.4), layout="constrained", squeeze=False)
for col, (bi, bj, gap) in enumerate(chosen):
    curves = pair_curves[(bi, bj)]
    hi, lo = (bi, bj) if gap >= 0 else (bj, bi)  # the behaviour the gap prioritises is drawn first
    named = curves.assign(behaviour=np.where(curves["behaviour"] == ("i" if hi == bi else "j"),
                                             f"{hi} (prioritised)", f"{lo}"))
    for row, metric in enumerate(["loss", "accuracy"]):
        ax = axes[row, col]
        sns.lineplot(data=named, x="step", y=metric, hue="behaviour", hue_order=[f"{hi} (prioritised)", f"{lo}"],
                     palette=ordered_colors(2), ax=ax, legend=row == 0)
        ax.set_title(f"({hi}, {lo}): gap {abs(gap):.2f}" if row == 0 else "", fontsize=9)
        ax.set_ylabel(f"training {metric}")
fig.suptitle("Pairs with the largest |gap| and the smallest |gap| (right), trained jointly")
plt.show()
glue("smallest_gap", abs(chosen[-1][2]), display=False)
glue("largest_gap", abs(chosen[0][2]), display=False)

# %% [markdown]
# The largest $|\mathrm{gap}|$ among the trained behaviours is {glue:text}`largest_gap:.2f`, the smallest
# {glue:text}`smallest_gap:.3f`; for a near-zero gap the two behaviours are distinguishable to about the same degree
# and the gap predicts no order.
#
# ## Claim checks

# %%
claims.check_fraction("P1", f"synthetic pairs with |gap| > 0.1: sign(gap) predicts which behaviour first reaches "
                      f"{threshold:.0%} accuracy ({syn_undecided} pairs where neither did are left out; ties count "
                      "as misses)", syn_hits, len(decided), 0.95)
at30 = syn[["acc i at step 30", "acc j at step 30"]]
saturated = int((((at30 < 0.6).all(axis=1)) | ((at30 > 0.95).all(axis=1))).sum())
syn_rank = float(spearmanr(syn["gap"], syn["acc i - acc j at step 30"]).statistic)
claims.check_at_least("P2", "synthetic pairs: Pearson correlation of gap(i, j) and acc_i - acc_j at step 30 (paper "
                      "notes' criterion)", syn_corr, 0.8,
                      scale_note=f"expected to fail in this grid for a reason other than scale: in {saturated} of "
                                 f"{len(syn)} pairs both behaviours are near chance (< 60%) or both near 100% (> 95%) "
                                 "at step 30, so the accuracy difference saturates and is not linear in the gap, which "
                                 f"a Pearson correlation of 0.8 needs (the rank correlation is {syn_rank:.2f}); the "
                                 "sign test P1 is the robust form of the claim")
claims.check_fraction("P3", f"SmolLM2 pairs with |gap| > 0.2: sign(gap) predicts which behaviour first reaches "
                      f"{threshold:.0%} training accuracy ({len(big) - len(real_decided)} of {len(big)} pairs where "
                      "neither did are left out; ties count as misses)", real_hits, len(real_decided), 0.8,
                      min_cases=5,
                      few_cases_note=f"with SmolLM2-135M features few behaviours reach {threshold:.0%} training "
                                     f"accuracy within {steps} steps; P3b (our adaptation) applies the same test at "
                                     "a threshold these pairs reach")
claims.check_fraction("P3b", "our adaptation of P3 (a lower threshold fixed in advance; not one of the paper notes' "
                      "criteria): SmolLM2 pairs with |gap| > 0.2, sign(gap) predicts which behaviour first reaches "
                      f"{secondary_threshold:.0%} training accuracy ({len(big) - len(decided2)} of {len(big)} pairs "
                      "where neither did are left out; ties count as misses)", hits2, len(decided2), 0.8,
                      min_cases=5)
claims.check_fraction("P3c", "our adaptation: SmolLM2 pairs with |gap| > 0.2, sign(gap) predicts which behaviour "
                      f"has the higher training accuracy averaged over the {steps + 1} logged steps", mean_hits,
                      len(big), 0.8)
claims.check_fraction("P4", "SmolLM2 pairs with |gap| > 0.2: sign(gap) predicts which behaviour's loss falls more "
                      f"in {steps} steps (a smoother measure, not one of the paper notes' criteria)", loss_hits,
                      len(big), 0.8)
claims.report()
glue("runtime", time.time() - started, display=False)

# %% [markdown]
# The chapter ran in {glue:text}`runtime:.0f` s.
#
# ## Note on scale
#
# The paper's figure is a 7B model fine-tuned in full; ours is the last-layer version of the same experiment on a
# quantised 135M model, with {glue:text}`n_items` items per behaviour. The priority gap is computed exactly
# as in the official code on our own features (gap values and orderings are model-specific and are not imported
# from the paper). On synthetic pairs the direction of the effect is clean; on SmolLM2 features the 90% criterion
# is rarely reached, which leaves the first-to-threshold check inconclusive; the 80% threshold, the run-averaged
# accuracy and the loss are reported alongside it.
