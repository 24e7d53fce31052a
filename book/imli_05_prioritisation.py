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
# :::{admonition} Key result
# :class: tip
# Trained jointly, the behaviour that the sign of the priority gap favours (the more distinguishable one) is learned
# first: in {glue:text}`syn_hits` of {glue:text}`syn_decided` synthetic pairs it is the first to reach
# {glue:text}`threshold_pct:.0f`% accuracy. On SmolLM2 features too few pairs reach {glue:text}`threshold_pct:.0f`%
# to decide ({glue:text}`real_decided`); at our lower threshold of {glue:text}`secondary_pct:.0f`% the sign names
# the first in {glue:text}`hits2` of {glue:text}`decided2` pairs, the higher run-averaged accuracy in
# {glue:text}`mean_hits` of {glue:text}`real_big` and the larger loss decrease in {glue:text}`loss_hits`. The paper
# notes' second criterion does **not** hold (a finding): the Pearson correlation between the gap and the accuracy
# difference at step 30 is {glue:text}`syn_corr:.2f`, below 0.8.
#
# ```{glue:figure} fig_pairs
# :alt: Training loss and accuracy curves of SmolLM2 behaviour pairs trained jointly, the prioritised one marked.
# :name: fig-imli05-pairs-key
#
# Pairs of persona behaviours trained jointly on SmolLM2 features: for large gaps the prioritised (more
# distinguishable) behaviour's loss falls faster and its accuracy rises first; for the smallest gap (last row) the
# two move together.
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` state that DPO "is prone to prioritizing certain behaviors with higher
# preference distinguishability": trained together, the more distinguishable behaviour is learned first and the
# other lags. The official code measures this with a *priority gap* between behaviours $i$ and $j$: with
# $\Delta_k = \mu_k^{Yes} - \mu_k^{No}$, $\bar b = (\Delta_i + \Delta_j)/2$ and
# $p_k = \langle \bar b, \Delta_k\rangle / \|\bar b\|$,
#
# $$
# \begin{aligned}
# \mathrm{gap}(i, j) &= \frac{p_i - p_j}{\max(\|\Delta_i\|, \|\Delta_j\|)}\\
# &= \frac{\|\Delta_i\|^2 - \|\Delta_j\|^2}{\|\Delta_i + \Delta_j\|\,\max(\|\Delta_i\|, \|\Delta_j\|)},
# \end{aligned}
# $$
#
# the second form being our derivation (paper notes 4.2): the sign of the gap only says which behaviour has the
# larger distinguishability, and $|\mathrm{gap}| < 2$. Why it predicts the order is our reconstruction: the first
# joint update moves $v = w_{Yes} - w_{No}$ along $\bar b$, so behaviour $k$'s mean margin grows at a rate
# $\propto \langle \bar b, \Delta_k\rangle$. The paper notes' criteria: the sign of the gap predicts which
# behaviour first reaches 90% training accuracy in at least 95% of synthetic pairs with $|\mathrm{gap}| > 0.1$ and
# in at least 80% of real pairs with $|\mathrm{gap}| > 0.2$, and the gap correlates with the accuracy difference
# at step 30 (Pearson $\ge 0.8$, synthetic).
#
# ## Setting
#
# We train two behaviours jointly (their items pooled, as `multi_last_layer_training.py`), first synthetic pairs
# over a grid of distinguishabilities and angles, then pairs of persona behaviours {cite}`perez2023discovering`
# with SmolLM2-135M-Instruct features {cite}`allal2025smollm2`, including the paper's pair (123, 45), and ask which
# behaviour first reaches the threshold. SmolLM2's behaviours rarely reach 90% within the run, so we also report,
# as our own adaptations (not the paper notes' criteria), which behaviour first reaches a lower threshold (a
# parameter fixed in advance, not tuned to the outcome), which has the higher accuracy averaged over the run and
# which loses more loss. Pairs where neither behaviour reaches the threshold are left out of the first-to-threshold
# checks (a rule fixed before the runs; their number is given), and a check with fewer than five such decided
# pairs is inconclusive.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed
synthetic_pds = [1.0, 2.0, 4.0, 8.0, 16.0]  # [> 0; len 2..20] synthetic distinguishabilities {smoke: [2.0, 8.0, 16.0]}
angles = [0.0, 60.0, 90.0, 120.0, 160.0]  # [0..180; len 1..20] angles between the Deltas (°) {smoke: [90.0, 160.0]}
d = 64  # [2..4096] synthetic embedding dimension
n_items = 1000  # [20..100000] synthetic items per behaviour (900 train) {smoke: 300}
center_norm = 10.0  # [>= 0] norm of the shared component of the synthetic embeddings
synthetic_lr = 0.1  # [> 0] SGD learning rate on synthetic features (the paper's)
threshold = 0.9  # [0.5..1] accuracy that counts as "learned"
secondary_threshold = 0.8  # [0.5..1] our adaptation for SmolLM2 pairs: the lower accuracy that counts as "learned"
curve_pairs = 2  # [1..10] plot the pairs with the largest |gap| (this many) and the one with the smallest
behaviours = [45, 54, 84, 88, 100, 108, 123, 130, 32, 65, 79, 107]  # [0..134; len 1..135] {smoke: [123, 45]}
paper_pair = [123, 45]  # [0..134; len 2] the paper's two-behaviour run ("Behavior 1", "Behavior 2")
max_per_behaviour = 300  # [0..1000] items per persona behaviour (balanced subset); 0 = all {smoke: 60}
real_lr = 10.0  # [> 0] SGD learning rate on SmolLM2 features (see the learning-speed chapter)
heatmap_all = True  # gap matrix of all 135 behaviours from the survey subset (False: the trained ones) {smoke: False}
survey_per_behaviour = 20  # [2..1000] items per behaviour for the 135-behaviour gap matrix
beta = 0.01  # [> 0] DPO inverse temperature
batch_size = 128  # [1..100000] SGD batch, drawn afresh each step {smoke: 32}
steps = 100  # [4..10000] SGD steps {smoke: 10}
feature_definition = "final_norm"  # [one of: final_norm, double_norm] g(x): once after the final norm, or normed twice

# %% [markdown]
# **Paper-scale settings.** The paper's plotted two-behaviour run is Mistral-7B *full fine-tuning*; the official
# code also has the last-layer version, which is what we run.
#
# | setting | paper | this chapter's default |
# |---|---|---|
# | model, trained part | Mistral-7B, all weights (plotted); last layer (code) | SmolLM2-135M-Instruct, last layer |
# | optimizer, lr | AdamW $10^{-6}$ (full); SGD 0.1 (last layer) | SGD, $\eta = 10$ (SmolLM2), 0.1 (synthetic) |
# | $\beta$, batch, length | 0.01, 128, one epoch (full); 100 steps (last layer) | 0.01, 128, 100 steps |
# | items per behaviour | 1,000 (900 trained) | `max_per_behaviour = 300` (270 trained) |
# | pairs | (123, 45) | (123, 45) and every pair of 12 behaviours |
# | train/test split of a pair $[i, j]$ | one stream seeded 1234 shuffles $i$'s items, then $j$'s | the same |
# | features $g(x)$ | final hidden state normed twice | `feature_definition = "final_norm"` (normed once) |
#
# All items: `python3 run.py chapter imli_05_prioritisation -p max_per_behaviour=0`; the official features:
# `-p feature_definition=double_norm`.

# %%
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from scipy.stats import pearsonr, spearmanr

from analysis_lib.lastlayer import (
    preference_direction,
    priority_gap,
    priority_gap_matrix,
)
from analysis_lib.page import start_page
from analysis_lib.persona_runs import (
    answer_rows_head,
    first_learned,
    load_behaviour_sets,
    mean_accuracy,
    official_pair_split,
    real_head,
    require_stable_lr,
    synthetic_pair,
    train_pair,
)
from analysis_lib.plotting import figure_size, ordered_colors, panel_grid

# logistic-regression-sized problems: one thread avoids OpenMP overhead on 2 cores
page = start_page("imli_05_prioritisation", seed, threads=1)
rng, claims = page.rng, page.claims
claims.declare("P3b", "adaptation",
               f"the {secondary_threshold:.0%} threshold is ours, fixed in advance because SmolLM2 pairs rarely reach "
               f"the paper notes' {threshold:.0%} within the run; the notes' criterion is P3")
claims.declare("P3c", "adaptation",
               "the run-averaged accuracy as the measure of 'learned first' is ours; the notes' criterion "
               "(first to the threshold) is P3")
claims.declare(["P3", "P3b", "P3c", "P4"], "setting",
               f"SmolLM2 features g(x) by the definition '{feature_definition}' (the official code's is "
               f"'double_norm', normed a second time), eta = {real_lr:g} instead of the last-layer code's 0.1, "
               f"max_per_behaviour = {max_per_behaviour} items per behaviour (0 = all) instead of 1,000")
claims.declare("P4", "adaptation",
               "the loss decrease over the run as the measure of 'learned faster' is ours; the notes' criterion "
               "(first to the threshold) is P3")

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


def step_text(step):
    """The first step at which a behaviour reached the threshold, or 'never'."""
    return "never" if np.isnan(step) else f"{int(step)}"


page.table(syn.head(12).assign(first_i=syn["step_i"].map(step_text), first_j=syn["step_j"].map(step_text)),
           columns={"PD i": "PD i", "PD j": "PD j", "angle": "angle (°)", "gap": "gap(i, j)",
                    "first_i": f"step i reaches {threshold:.0%}", "first_j": f"step j reaches {threshold:.0%}",
                    "acc i - acc j at step 30": "acc. i − acc. j, step 30"},
           formats={"PD i": "g", "PD j": "g", "angle": "g", "gap": ".3f", "acc i - acc j at step 30": ".3f"})

# %%
first_col = f"first to {threshold:.0%}"
syn[first_col] = syn["winner"]
fig, axes = panel_grid(2, ncols=2, aspect=0.95)
sns.scatterplot(data=syn, x="gap", y="acc i - acc j at step 30", hue="angle", palette="plasma", ax=axes[0])
axes[0].axvline(0, color="grey", lw=0.8)
axes[0].set(xlabel="gap(i, j)", ylabel="acc. i − acc. j at step 30")
axes[0].legend(title="angle (°)", loc="lower right")
sns.countplot(data=syn, x=first_col, hue="predicted", order=["i", "j", "tie", "none"],
              hue_order=["i", "j"], palette=ordered_colors(2), ax=axes[1])
axes[1].set(xlabel=f"first to {threshold:.0%}", ylabel="pairs")
axes[1].legend(title="gap favours", loc="upper right")
page.figure("fig_syn", fig)

decided = syn[(syn["gap"].abs() > 0.1) & (syn["winner"] != "none")]
syn_hits = int((decided["winner"] == decided["predicted"]).sum())
syn_undecided = int(((syn["gap"].abs() > 0.1) & (syn["winner"] == "none")).sum())
syn_corr = float(pearsonr(syn["gap"], syn["acc i - acc j at step 30"]).statistic)
at30 = syn[["acc i at step 30", "acc j at step 30"]]
saturated = int((((at30 < 0.6).all(axis=1)) | ((at30 > 0.95).all(axis=1))).sum())
syn_rank = float(spearmanr(syn["gap"], syn["acc i - acc j at step 30"]).statistic)
for key, value in {"syn_pairs": len(syn), "syn_hits": syn_hits, "syn_decided": len(decided),
                   "syn_undecided": syn_undecided, "saturated": saturated}.items():
    page.glue(key, value)
page.glue("syn_corr", syn_corr)
page.glue("syn_rank", syn_rank)
page.glue("threshold_pct", 100 * threshold)
page.glue("secondary_pct", 100 * secondary_threshold)

# %% [markdown]
# ```{glue:figure} fig_syn
# :alt: Left, scatter of the accuracy difference at step 30 against the gap; right, counts of the first learned.
# :name: fig-imli05-synthetic
#
# Synthetic pairs ($j$ is always the more distinguishable, so every gap is negative). Left: the accuracy difference
# at step 30 has the sign of the gap but is far from linear in it. Right: which behaviour first reached the
# threshold, coloured by the behaviour the gap favours.
# ```
#
# Of the {glue:text}`syn_pairs` synthetic pairs, {glue:text}`syn_decided` have $|\mathrm{gap}| > 0.1$ and at least
# one behaviour reaching {glue:text}`threshold_pct:.0f`% within the run; the sign of the gap named the first one in
# {glue:text}`syn_hits` of them ({glue:text}`syn_undecided` pairs with $|\mathrm{gap}| > 0.1$ had neither behaviour
# reach it and are left out; a tie counts as a miss).
#
# The correlation between the gap and the accuracy difference at step 30 is {glue:text}`syn_corr:.2f` (Pearson;
# Spearman {glue:text}`syn_rank:.2f`): the paper notes' criterion of 0.8 does not hold here. Our reading, not a
# declared difference: in {glue:text}`saturated` of the {glue:text}`syn_pairs` pairs both behaviours are near chance
# (below 60%) or both near 100% (above 95%) at step 30, so the accuracy difference saturates and is not linear in
# the gap, which a Pearson correlation of 0.8 needs; the sign test above is unaffected.
#
# ## Persona behaviours with SmolLM2 features
#
# The gap matrix of the trained behaviours (from all items of each behaviour's subset, as the official
# `priority_levels.ipynb`), and the gap matrix of all 135 behaviours from the survey subset.

# %%
sets = load_behaviour_sets(sorted(set(behaviours) | set(paper_pair)), max_per_behaviour=max_per_behaviour,
                           definition=feature_definition)
order = sorted(sets)
page.glue("n_items", int(max(len(sets[b]) for b in order)))
page.glue("definition", feature_definition)
page.glue("real_lr_g", real_lr)
# the pooled training set of any pair has the same curvature scale as its parts: check the learning rate on each
require_stable_lr(real_lr, {f"behaviour {b}": sets[b].part("train")[0] for b in order}, beta)
deltas = np.stack([preference_direction(sets[b].features, sets[b].yes_mask) for b in order])
gaps = priority_gap_matrix(deltas)
closed = priority_gap_matrix(deltas, closed_form=True)
page.glue("closed_form_err", float(np.abs(gaps - closed).max()))
if heatmap_all:
    survey = load_behaviour_sets("all", max_per_behaviour=survey_per_behaviour, definition=feature_definition)
    survey_order = sorted(survey)
    survey_gaps = priority_gap_matrix(np.stack([preference_direction(survey[b].features, survey[b].yes_mask)
                                                for b in survey_order]))
else:
    survey_order, survey_gaps = order, gaps
fig, axes = plt.subplots(1, 3, figsize=figure_size(1.0, aspect=0.5), layout="constrained",
                         gridspec_kw={"width_ratios": [1, 1, 0.05]})
by_pd = np.argsort(np.linalg.norm(np.stack([preference_direction(s.features, s.yes_mask)
                                            for s in (survey[b] for b in survey_order)]), axis=1)) \
    if heatmap_all else np.arange(len(order))
limit = float(max(np.abs(gaps).max(), np.abs(survey_gaps).max()))  # one colour scale for both maps
sns.heatmap(pd.DataFrame(gaps, index=order, columns=order), cmap="RdBu_r", center=0, vmin=-limit, vmax=limit,
            ax=axes[0], cbar=False, square=True)
axes[0].set(xlabel="j", ylabel="i")
sns.heatmap(survey_gaps[np.ix_(by_pd, by_pd)], cmap="RdBu_r", center=0, vmin=-limit, vmax=limit, ax=axes[1],
            xticklabels=False, yticklabels=False, cbar_ax=axes[2], cbar_kws={"label": "gap(i, j)"}, square=True)
axes[1].set(xlabel="j (by PD)", ylabel="i (by PD)")
page.figure("fig_heatmap", fig)
page.glue("n_survey", len(survey_order))

# %% [markdown]
# ```{glue:figure} fig_heatmap
# :alt: Two heatmaps of the priority gap: the trained behaviours, and all behaviours sorted by distinguishability.
# :name: fig-imli05-heatmap
#
# The priority gap of the trained behaviours (left, by index) and of {glue:text}`n_survey` behaviours sorted by
# distinguishability (right): sorted, the gap is positive below the diagonal and negative above it.
# ```
#
# The code's formula and the closed form agree to {glue:text}`closed_form_err:.1e`. Sorted by distinguishability,
# the matrix is positive below the diagonal and negative above it: its sign is that of $PD_i - PD_j$ everywhere.
#
# ## The paper's pair
#
# Behaviours 123 ("Behavior 1") and 45 ("Behavior 2") trained jointly, with per-behaviour loss and accuracy on each
# behaviour's training and test split (the split of `multi_last_layer_training.py`: one random stream seeded 1234
# shuffles 123's items, then 45's, so 45's split differs from its single-behaviour one; every pair below is split
# the same way, first behaviour first; one run per curve with the same seed, as the official code's `-eval`
# variants). The runs train the two answer rows of the model's head (`analysis_lib.persona_runs.answer_rows_head`):
# loss and accuracy depend on the head only through $v = w_{Yes} - w_{No}$, so the curves are those of the full
# 49,152-row head (tested in the library) at a fraction of the cost.

# %%
W0, yes_id, no_id = real_head()
W2, y2, n2 = answer_rows_head(W0, yes_id, no_id)
i_, j_ = paper_pair
# the official two-behaviour split: one stream seeded 1234 shuffles i's items, then j's
pair_sets = dict(zip(paper_pair, official_pair_split(sets[i_], sets[j_]), strict=True))
eval_sets = {(str(b), split): pair_sets[b].part(split) for b in paper_pair for split in ("train", "test")}
paper_curves = train_pair(*pair_sets[i_].part("train"), *pair_sets[j_].part("train"), W2, y2, n2, lr=real_lr,
                          beta=beta, steps=steps, batch_size=batch_size, seed=seed, eval_sets=eval_sets)
paper_gap = float(gaps[order.index(i_), order.index(j_)])
page.glue("paper_gap", paper_gap)
n_pair = len(pair_sets[i_].part("train")[1]) + len(pair_sets[j_].part("train")[1])
paper_curves["epoch"] = paper_curves["step"] * batch_size / n_pair
fig, axes = panel_grid(4, ncols=2, aspect=0.7)
pair_colours = dict(zip([str(i_), str(j_)], ordered_colors(2), strict=True))
for ax, (metric, split) in zip(axes, itertools.product(["loss", "accuracy"], ["train", "test"]), strict=True):
    sns.lineplot(data=paper_curves[paper_curves["split"] == split], x="epoch", y=metric, hue="behaviour",
                 palette=pair_colours, ax=ax, legend=False)
    ax.set(title=f"{'training' if split == 'train' else 'test'} {metric}", ylabel=metric)
fig.legend(handles=[Line2D([], [], color=c, label=f"behaviour {b}") for b, c in pair_colours.items()],
           loc="outside lower center", ncol=2, frameon=False)
page.figure("fig_paper_pair", fig)
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
    page.glue(key, value)

# %% [markdown]
# ```{glue:figure} fig_paper_pair
# :alt: Four panels: training and test loss and accuracy of behaviours 123 and 45 trained jointly, against epoch.
# :name: fig-imli05-paper-pair
#
# The paper's pair trained jointly: per-behaviour training and test loss (top) and accuracy (bottom); the behaviour
# with the larger distinguishability pulls ahead in both.
# ```
#
# For the paper's pair, gap({glue:text}`paper_i`, {glue:text}`paper_j`) = {glue:text}`paper_gap:.2f`
# ($PD$ {glue:text}`paper_pd_i:.2f` against {glue:text}`paper_pd_j:.2f`), so the gap predicts that behaviour
# {glue:text}`paper_predicted` is learned first. Over the run the training loss of {glue:text}`paper_i` changed by
# {glue:text}`paper_change_i:+.2e` and that of {glue:text}`paper_j` by {glue:text}`paper_change_j:+.2e`; the
# training accuracy averaged over the run is {glue:text}`paper_mean_i:.3f` ({glue:text}`paper_i`) and
# {glue:text}`paper_mean_j:.3f` ({glue:text}`paper_j`), and after the last step {glue:text}`paper_acc_i:.3f` and
# {glue:text}`paper_acc_j:.3f` (the last step's accuracy jumps from step to step, see
# {ref}`imli-03-learning-speed`). First to {glue:text}`threshold_pct:.0f`% training accuracy:
# {glue:text}`paper_first90`; first to {glue:text}`secondary_pct:.0f`%: {glue:text}`paper_first80`.
#
# ## All pairs of trained behaviours
#
# Every unordered pair, trained jointly in the same way. The table lists the pairs with the largest
# $|\mathrm{gap}|$: which behaviour reached each threshold first ("neither" if none did within the run), the
# difference of their run-averaged accuracies and of their loss decreases.

# %%
real_rows, pair_curves = [], {}
for bi, bj in itertools.combinations(order, 2):
    set_i, set_j = official_pair_split(sets[bi], sets[bj])  # the two-behaviour script's split of [bi, bj]
    curves = train_pair(*set_i.part("train"), *set_j.part("train"), W2, y2, n2, lr=real_lr, beta=beta,
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


def winner_text(row, column):
    return {"i": str(row["i"]), "j": str(row["j"]), "tie": "tie", "none": "neither"}[row[column]]


shown_pairs = real.sort_values("gap", key=np.abs, ascending=False).head(15)
page.table(shown_pairs.assign(first1=shown_pairs.apply(winner_text, axis=1, column="winner"),
                              first2=shown_pairs.apply(winner_text, axis=1, column="winner 2nd")),
           columns={"i": "i", "j": "j", "gap": "gap(i, j)", "first1": f"first to {threshold:.0%}",
                    "first2": f"first to {secondary_threshold:.0%}",
                    "mean acc i - mean acc j": "mean acc. i − j", "loss drop i - loss drop j": "loss drop i − j"},
           formats={"gap": ".3f", "mean acc i - mean acc j": ".3f"})
big = real[real["gap"].abs() > 0.2]
real_decided = big[big["winner"] != "none"]
real_hits = int((real_decided["winner"] == real_decided["predicted"]).sum())
decided2 = big[big["winner 2nd"] != "none"]
hits2 = int((decided2["winner 2nd"] == decided2["predicted"]).sum())
mean_hits = int(((big["mean acc i - mean acc j"] > 0) == (big["gap"] > 0)).sum())
loss_hits = int(((big["loss drop i - loss drop j"] > 0) == (big["gap"] > 0)).sum())
for key, value in {"real_pairs": len(real), "real_big": len(big), "real_decided": len(real_decided),
                   "real_hits": real_hits, "decided2": len(decided2), "hits2": hits2, "mean_hits": mean_hits,
                   "loss_hits": loss_hits, "reach_any": int((real["winner"] != "none").sum())}.items():
    page.glue(key, value)

# %% [markdown]
# Of {glue:text}`real_pairs` pairs, {glue:text}`real_big` have $|\mathrm{gap}| > 0.2$; in only
# {glue:text}`real_decided` of those did either behaviour reach {glue:text}`threshold_pct:.0f`% training accuracy
# within the run, and the sign of the gap named the first one in {glue:text}`real_hits` of them. At
# {glue:text}`secondary_pct:.0f`% (our adaptation) {glue:text}`decided2` pairs are decided and the sign of the gap
# named the first one in {glue:text}`hits2`. As smoother measures of "learned first", the behaviour that the sign of
# the gap favours had the higher accuracy averaged over the run in {glue:text}`mean_hits` of the
# {glue:text}`real_big` pairs, and the larger loss decrease in {glue:text}`loss_hits`.
#
# **Pairs chosen by the gap.** Per-behaviour training loss and accuracy of the pairs with the largest
# $|\mathrm{gap}|$ and of the pair with the smallest (last row); the behaviour that the sign of the gap favours is
# marked "prioritised".

# %%
ranked = real.assign(abs_gap=real["gap"].abs()).sort_values("abs_gap", ascending=False)
picked = ranked.iloc[list(range(min(curve_pairs, len(ranked) - 1))) + [len(ranked) - 1]]
chosen = [(int(bi), int(bj), float(gap)) for bi, bj, gap in zip(picked["i"], picked["j"], picked["gap"], strict=True)]
fig, axes = panel_grid(2 * len(chosen), ncols=2, aspect=0.6)
for row, (bi, bj, gap) in enumerate(chosen):
    curves = pair_curves[(bi, bj)]
    hi, lo = (bi, bj) if gap >= 0 else (bj, bi)  # the behaviour the gap prioritises is drawn first
    named = curves.assign(role=np.where(curves["behaviour"] == ("i" if hi == bi else "j"), "prioritised", "other"))
    for col, metric in enumerate(["loss", "accuracy"]):
        ax = axes[2 * row + col]
        sns.lineplot(data=named, x="step", y=metric, hue="role", hue_order=["prioritised", "other"],
                     palette=ordered_colors(2), ax=ax, legend=False)
        ax.set(title=f"{hi} over {lo}, |gap| {abs(gap):.2f}" if col == 0 else "", ylabel=f"training {metric}",
               xlabel="step" if row == len(chosen) - 1 else "")
fig.legend(handles=[Line2D([], [], color=c, label=name) for name, c in
                    zip(["prioritised (larger PD)", "other"], ordered_colors(2), strict=True)],
           loc="outside lower center", ncol=2, frameon=False)
page.figure("fig_pairs", fig)
page.glue("smallest_gap", abs(chosen[-1][2]))
page.glue("largest_gap", abs(chosen[0][2]))

# %% [markdown]
# ```{glue:figure} fig_pairs
# :alt: Training loss and accuracy of the pairs with the largest gaps and the smallest gap, trained jointly.
# :name: fig-imli05-pairs
#
# Pairs with the largest $|\mathrm{gap}|$ (top rows) and the smallest (last row), trained jointly: training loss
# (left) and accuracy (right) of the behaviour the gap prioritises and of the other ("$a$ over $b$": $a$ is
# prioritised).
# ```
#
# The largest $|\mathrm{gap}|$ among the trained behaviours is {glue:text}`largest_gap:.2f`, the smallest
# {glue:text}`smallest_gap:.3f`; for a near-zero gap the two behaviours are distinguishable to about the same
# degree and the gap predicts no order.
#
# ## Claim checks

# %%
claims.check_fraction("P1", f"synthetic pairs with |gap| > 0.1: sign(gap) predicts which behaviour first reaches "
                      f"{threshold:.0%} accuracy ({syn_undecided} pairs where neither did are left out; ties count "
                      "as misses)", syn_hits, len(decided), 0.95, min_cases=5,
                      few_cases_note=f"few synthetic pairs reached {threshold:.0%} within {steps} steps", kind="claim")
claims.check_at_least("P2", "synthetic pairs: Pearson correlation of gap(i, j) and acc_i - acc_j at step 30 (paper "
                      "notes' criterion)", syn_corr, 0.8, kind="claim")
claims.check_fraction("P3", f"SmolLM2 pairs with |gap| > 0.2: sign(gap) predicts which behaviour first reaches "
                      f"{threshold:.0%} training accuracy ({len(big) - len(real_decided)} of {len(big)} pairs where "
                      "neither did are left out; ties count as misses)", real_hits, len(real_decided), 0.8,
                      min_cases=5, kind="claim",
                      few_cases_note=f"with SmolLM2-135M features few behaviours reach {threshold:.0%} training "
                                     f"accuracy within {steps} steps; P3b (our adaptation) applies the same test at "
                                     "a threshold these pairs reach")
claims.check_fraction("P3b", f"our adaptation of P3 at {secondary_threshold:.0%} (P3's {threshold:.0%} next to it): "
                      "SmolLM2 pairs with |gap| > 0.2, sign(gap) predicts which behaviour first reaches "
                      f"{secondary_threshold:.0%} training accuracy ({len(big) - len(decided2)} of {len(big)} pairs "
                      "where neither did are left out; ties count as misses)", hits2, len(decided2), 0.8,
                      min_cases=5, kind="claim")
claims.check_fraction("P3c", "our adaptation: SmolLM2 pairs with |gap| > 0.2, sign(gap) predicts which behaviour "
                      f"has the higher training accuracy averaged over the {steps + 1} logged steps", mean_hits,
                      len(big), 0.8, kind="claim")
claims.check_fraction("P4", "our adaptation: SmolLM2 pairs with |gap| > 0.2, sign(gap) predicts which behaviour's "
                      f"loss falls more in {steps} steps", loss_hits, len(big), 0.8, kind="claim")
page.report()

# %% [markdown]
# All six are claims. P2 does not hold (a finding, explained above by saturation, which is our reading and not a
# declared difference). P3, the paper notes' criterion on SmolLM2 pairs, cannot be decided with so few pairs
# reaching {glue:text}`threshold_pct:.0f`%; P3b, P3c and P4 are our adaptations next to it, declared as such before
# the runs.
#
# ## What differs from the paper
#
# The paper's figure is a 7B model fine-tuned in full; ours is the last-layer version of the same experiment on a
# quantised 135M model, with {glue:text}`n_items` items per behaviour instead of the official 1,000 (to keep the
# chapter within its time budget; `-p max_per_behaviour=0` uses all), features by the definition
# '{glue:text}`definition`' (the official code's is 'double_norm', normed twice; see
# {ref}`imli-02-distinguishability`) and $\eta$ = {glue:text}`real_lr_g:g` instead of the last-layer code's 0.1. Pairs
# are split as the official two-behaviour script splits them. The priority gap is computed exactly as in the official
# code on our own features (gap values and orderings are model-specific and are not imported from the paper). On
# synthetic pairs the direction of the effect is clean; on SmolLM2 features the {glue:text}`threshold_pct:.0f`%
# criterion is rarely reached, which leaves the first-to-threshold check inconclusive; the lower threshold, the
# run-averaged accuracy and the loss are reported alongside it as our adaptations:

# %% tags=["remove-input"]
page.table(claims.differences())

# %% [markdown]
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# :list: bullet
# ```

# %% tags=["remove-input"]
page.footer()
