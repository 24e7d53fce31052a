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
# behaviour first reaches 90% training accuracy.
#
# At default parameters, with the features cached, the chapter runs in about a minute and a half on a 2-core CPU.

# %% tags=["parameters"]
seed = 0  # [>= 0] random seed
synthetic_pds = [1.0, 2.0, 4.0, 8.0, 16.0]  # [> 0] distinguishabilities of the synthetic grid {smoke: [2.0, 8.0, 16.0]}
angles = [0.0, 60.0, 90.0, 120.0, 160.0]  # [0..180] angles between Delta_i and Delta_j (degrees) {smoke: [90.0, 160.0]}
d = 64  # [>= 2] synthetic embedding dimension
n_items = 1000  # [>= 20] synthetic items per behaviour (900 train) {smoke: 300}
center_norm = 10.0  # [>= 0] norm of the shared component of the synthetic embeddings
synthetic_lr = 0.1  # [> 0] SGD learning rate on synthetic features (the paper's)
threshold = 0.9  # [0.5..1] accuracy that counts as "learned"
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
from scipy.stats import pearsonr

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
    real_head,
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

# %% [markdown]
# gap({glue:text}`paper_gap:.2f`) for the paper's pair, with (123, 45) in that order.
#
# **All pairs of trained behaviours.** Every unordered pair, trained jointly in the same way.

# %%
real_rows = []
for bi, bj in itertools.combinations(order, 2):
    curves = train_pair(*sets[bi].part("train"), *sets[bj].part("train"), W2, y2, n2, lr=real_lr, beta=beta,
                        steps=steps, batch_size=batch_size, seed=seed)
    won = first_learned(curves, threshold)
    last = curves[curves["step"] == steps].set_index("behaviour")
    first = curves[curves["step"] == 0].set_index("behaviour")
    real_rows.append({"i": bi, "j": bj, "gap": gaps[order.index(bi), order.index(bj)], **won,
                      "final acc i": last.loc["i", "accuracy"], "final acc j": last.loc["j", "accuracy"],
                      "loss drop i - loss drop j": (first.loc["i", "loss"] - last.loc["i", "loss"])
                      - (first.loc["j", "loss"] - last.loc["j", "loss"])})
real = pd.DataFrame(real_rows)
real["predicted"] = np.where(real["gap"] > 0, "i", "j")
display(real.sort_values("gap", key=np.abs, ascending=False).round(3).head(15))
big = real[real["gap"].abs() > 0.2]
real_decided = big[big["winner"] != "none"]
real_hits = int((real_decided["winner"] == real_decided["predicted"]).sum())
loss_hits = int(((big["loss drop i - loss drop j"] > 0) == (big["gap"] > 0)).sum())
glue("real_pairs", len(real), display=False)
glue("real_big", len(big), display=False)
glue("real_decided", len(real_decided), display=False)
glue("real_hits", real_hits, display=False)
glue("loss_hits", loss_hits, display=False)
glue("reach_any", int((real["winner"] != "none").sum()), display=False)
glue("threshold_pct", 100 * threshold, display=False)

# %% [markdown]
# Of {glue:text}`real_pairs` pairs, {glue:text}`real_big` have $|\mathrm{gap}| > 0.2$; in only
# {glue:text}`real_decided` of those did either behaviour reach {glue:text}`threshold_pct:.0f`% training accuracy
# within the run, and the sign of the gap named the first one in {glue:text}`real_hits` of them. As a smoother
# measure of "learned first", the behaviour with the larger gap also had the larger loss decrease in
# {glue:text}`loss_hits` of the {glue:text}`real_big` pairs.
#
# ## Claim checks

# %%
claims.check_fraction("P1", f"synthetic pairs with |gap| > 0.1: sign(gap) predicts which behaviour first reaches "
                      f"{threshold:.0%} accuracy ({syn_undecided} pairs where neither did are left out; ties count "
                      "as misses)", syn_hits, len(decided), 0.95)
claims.check_at_least("P2", "synthetic pairs: Pearson correlation of gap(i, j) and acc_i - acc_j at step 30 (paper "
                      "notes' criterion)", syn_corr, 0.8,
                      scale_note="not a scale effect: in this grid many pairs are both near chance (low PDs) or both "
                                 "near 100% (high PDs) at step 30, so the accuracy difference is not linear in the "
                                 "gap; the sign test P1 is the robust form of the claim")
enough = len(real_decided) >= 5
claims.check("P3", f"SmolLM2 pairs with |gap| > 0.2: sign(gap) predicts which behaviour first reaches "
             f"{threshold:.0%} training accuracy (pairs where neither did are left out; at least 5 decided pairs "
             "needed)", f"{real_hits}/{len(real_decided)} decided, of {len(big)} pairs", ">= 80% of >= 5 pairs",
             enough and real_hits >= 0.8 * len(real_decided), "fraction >= 0.8 of at least 5 decided pairs",
             scale_note="with SmolLM2-135M features most persona behaviours stay below 90% training accuracy in "
                        "100 steps even when trained alone, so almost no pair has a behaviour that reaches it; "
                        "see P4 for the loss-based comparison")
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
# quantised 135M model, with 300 items per behaviour at default parameters. The priority gap is computed exactly
# as in the official code on our own features (gap values and orderings are model-specific and are not imported
# from the paper). On synthetic pairs the direction of the effect is clean; on SmolLM2 features the 90% criterion
# is rarely reached, which limits what the first-to-threshold check can say, and the loss-based measure is reported
# alongside it.
