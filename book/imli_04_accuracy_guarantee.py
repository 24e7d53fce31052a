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
# (imli-04-accuracy-guarantee)=
# # The reconstructed accuracy bound holds on synthetic features, not under SGD at our learning rate on SmolLM2
#
# :::{admonition} Key result
# :class: tip
# On synthetic features our reconstruction of the training-accuracy guarantee holds at every step (smallest
# accuracy minus bound {glue:text}`syn_gap:.3f`) and reaches {glue:text}`syn_final_bound_max:.3f` for the most
# distinguishable behaviour. On SmolLM2 features it is **violated under the official SGD loop at our learning rate**
# $\eta$ = {glue:text}`real_lr_g:g` (smallest accuracy minus bound {glue:text}`sgd_gap:.3f`), whose accuracy jumps
# by {glue:text}`jitter_ours:.3f` per step; with the paper's $\eta$ = {glue:text}`paper_lr_g:g` it holds (smallest
# margin {glue:text}`paper_gap:.1e`), as it does under full-batch gradient descent. It **never certifies more than
# the larger class** (largest bound {glue:text}`real_bound_max:.3f`, majority share up to
# {glue:text}`majority_max:.3f`): a **finding** that no declared difference explains. The SGD violation goes with
# a declared difference (our learning rate). Accuracy after the run does increase with distinguishability: strictly
# across the paper's five behaviours, and with Spearman $\rho$ = {glue:text}`rho_real_acc:.2f` across
# {glue:text}`n_real`.
#
# ```{glue:figure} fig_real
# :alt: Panels of SmolLM2 training accuracy against step (SGD, full batch), the bound and the majority share.
# :name: fig-imli04-real-key
#
# SmolLM2 features: training accuracy under SGD (solid) and full-batch descent (dashed colour) against the
# reconstructed bound (black dashed). Where SGD dips below the bound the guarantee is violated; the bound itself
# stays at or below the share of the larger class (grey dotted).
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` state that they give "rigorous guarantees on the training accuracy" of DPO
# when the centred prompt embeddings are $\alpha$-subexponential: the decision boundary moves toward the class-mean
# direction at a speed set by distinguishability, so accuracy rises faster for more distinguishable behaviours.
# **The exact form of the paper's bound could not be read; the precise form below is our reconstruction** (paper
# notes, section 4.4), in the last-layer model of the official code.
#
# *The reconstructed bound.* With $v = w_{Yes} - w_{No}$ the policy prefers the chosen answer on $x$ iff
# $s\,v^\top g(x) > 0$. Assume that along every unit vector $u$ the centred embeddings of each class satisfy
# $P(|\langle u, g - \mu\rangle| \ge t) \le 2e^{-t/\alpha}$ (the subexponential tail {cite}`vershynin2018high`,
# section 2.7). A positive item ($s = +1$) is misclassified only if $|\langle u, g - \mu^+\rangle| \ge
# v^\top\mu^+/\|v\|$ with $u = v/\|v\|$. Early in training $v(t) \approx v(0) + \eta\beta t\, m$, with the signed
# mean $m = p\mu^+ - (1-p)\mu^-$ the direction of the first full-batch step ($m = \Delta/2$ for an exactly balanced
# behaviour, so $c(t) = \eta\beta t/2$ in the paper notes; our splits are not exactly balanced, and the shared
# feature component makes the difference matter, so we use $m$), and $\|v(t)\| \le \|v(0)\| + \eta\beta t\|m\|$, so
#
# $$
# \begin{aligned}
# \mathrm{acc}(t) &\;\ge\; 1 - p\,B\big(v(t)^\top\mu^+\big) - (1-p)\,B\big(-v(t)^\top\mu^-\big),\\
# B(a) &= \min\!\Big(1,\ 2\exp\Big(-\frac{a}{\alpha\,(\|v(0)\| + \eta\beta t\|m\|)}\Big)\Big)
#   \quad\text{for } a > 0,\\
# B(a) &= 1 \quad\text{otherwise}
# \end{aligned}
# $$
#
# (`analysis_lib.guarantees.accuracy_bound_over_steps`), a function of $t$ alone. The statements tested:
#
# 1. the training accuracy of the official loop stays above this bound at every step (it can fail: the actual
#    $v(t)$ leaves the straight path as the sigmoid weights move away from 1/2 and as SGD batches differ from the
#    full set);
# 2. the bound says something: it exceeds what a boundary that puts every item on the side of the larger class
#    would score (the *majority share*, $\max(p, 1-p)$), so it certifies more than one class;
# 3. accuracy after the run increases with distinguishability (the paper notes' criterion: a strict order across
#    at least five behaviours; next to it our trend test over at least ten).
#
# ## Setting
#
# We estimate $\alpha$ from the features, as the largest empirical $\psi_1$ norm of $\langle u, g - \mu\rangle$
# over both classes and the directions $u$ along the straight path (`analysis_lib.guarantees.estimate_alpha`),
# track the training accuracy of the official loop at every step and compare. We also show the same inequality
# evaluated at the actual $v(t)$ of the run; with $\alpha$ fitted on the training items along those very
# directions it holds by construction (Markov's inequality on the empirical law), so it is shown, not checked.
# Synthetic behaviours first (Gaussian embeddings, as in {ref}`imli-01-logistic-regression`), then SmolLM2 features
# {cite}`allal2025smollm2` of persona behaviours {cite}`perez2023discovering`. Whether accuracy grows with
# distinguishability is measured on the accuracy averaged over several SGD seeds (batch orders) and the last few
# steps, since a single run's last-step accuracy jumps from step to step.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed
synthetic_pds = [1.0, 2.0, 4.0, 8.0, 16.0]  # [> 0; len 1..20] synthetic distinguishabilities {smoke: [2.0, 16.0]}
noise = "gaussian"  # [one of: gaussian, laplace] synthetic embedding noise
d = 64  # [2..4096] synthetic embedding dimension
n_items = 1000  # [20..100000] synthetic items per behaviour (official 90/10 split) {smoke: 300}
center_norm = 10.0  # [>= 0] norm of the component shared by the synthetic embeddings
synthetic_lr = 0.1  # [> 0] SGD learning rate on synthetic features (the paper's)
real_behaviours = [108, 84, 88, 54, 100, 45, 123, 130, 32, 65, 79, 107]  # [0..134; len 1..135] {smoke: [108, 54]}
paper_behaviours = [108, 84, 88, 54, 100]  # [0..134; len 1..135] monotonicity check {smoke: [108, 54]}
max_per_behaviour = 300  # [0..1000] items per persona behaviour (balanced subset); 0 = all {smoke: 60}
real_lr = 10.0  # [> 0] SGD learning rate on SmolLM2 features (see the learning-speed chapter)
beta = 0.01  # [> 0] DPO inverse temperature
batch_size = 128  # [1..100000] SGD batch, drawn afresh each step {smoke: 32}
steps = 100  # [4..10000] SGD steps {smoke: 10}
alpha_method = "psi1"  # [one of: psi1, tail] how alpha is estimated from the features
seeds = [0, 1, 2, 3, 4]  # [0..100000; len 1..100] SGD seeds for the accuracy-against-PD checks {smoke: [0]}
last_k = 10  # [1..10000] the accuracy-against-PD checks average the last k steps of each run {smoke: 2}
feature_definition = "final_norm"  # [one of: final_norm, double_norm] g(x): once after the final norm, or normed twice

# %% [markdown]
# **Paper-scale settings.** The official runs use Llama-2-7B features (4096-d), all 1,000 items per behaviour,
# SGD with $\eta = 0.1$, $\beta = 0.01$, batch 128, 100 steps.
#
# | setting | paper (official code) | this chapter's default |
# |---|---|---|
# | features | Llama-2-7B, 4096-d | SmolLM2-135M-Instruct (Q4_1 dequantised), 576-d |
# | definition of $g(x)$ | final hidden state normed twice | `feature_definition = "final_norm"` (normed once) |
# | items per behaviour | 1,000 (900 trained) | `max_per_behaviour = 300` (270 trained) |
# | learning rate | $\eta = 0.1$ | $\eta = 10$ on SmolLM2 features ({ref}`imli-03-learning-speed`), 0.1 on synthetic |
# | $\beta$, batch, steps | 0.01, 128, 100 | the same |
# | behaviours | 108, 84, 88, 54, 100 (separately) | these five and seven more |
#
# All 1,000 items: `python3 run.py chapter imli_04_accuracy_guarantee -p max_per_behaviour=0`; the official
# features: `-p feature_definition=double_norm`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from scipy.stats import spearmanr

from analysis_lib.guarantees import (
    accuracy_bound_along_path,
    accuracy_bound_over_steps,
    angle_to,
    boundary_path,
    centred_projections,
    estimate_alpha,
    psi1_norm,
    tail_alpha,
)
from analysis_lib.lastlayer import (
    behaviour_properties,
    make_behaviour,
    preference_direction,
    signed_mean,
    train_last_layer_dpo,
)
from analysis_lib.page import start_page
from analysis_lib.persona_runs import (
    PAPER_LR,
    answer_rows_head,
    load_behaviour_sets,
    real_head,
    require_stable_lr,
    run_behaviour,
    seed_averaged_accuracy,
)
from analysis_lib.plotting import figure_size, ordered_colors, panel_grid

# logistic-regression-sized problems: one thread avoids OpenMP overhead on 2 cores
page = start_page("imli_04_accuracy_guarantee", seed, threads=1)
rng, claims = page.rng, page.claims
claims.declare("G5", "adaptation",
               "the trend test (Spearman rho >= 0.7 over at least 10 behaviours, the notes' threshold for real "
               "personas in the learning-speed criteria) is ours; the paper notes' criterion for this result, a "
               "strict order across the paper's behaviours, is G4")
claims.declare(["G2", "G2b", "G4", "G5"], "setting",
               f"SmolLM2 features g(x) by the definition '{feature_definition}' (the official code's is "
               "'double_norm', the final hidden state normed a second time), trained with eta = "
               f"{real_lr:g} instead of the official 0.1 (max_per_behaviour = {max_per_behaviour}; 0 = all 1,000)")
if not set(paper_behaviours) <= set(real_behaviours):
    raise ValueError("paper_behaviours: every behaviour of the monotonicity check must be in real_behaviours")
if last_k > steps:
    raise ValueError(f"last_k: must be at most steps ({steps}), got {last_k}")


def guarantee_run(run, train_g, train_s, v0, lr):
    """Training accuracy at W(0) .. W(steps), the reconstructed bound (straight path v(0) + eta beta t m) and the
    same inequality at the run's actual v(t)."""
    yes = train_s > 0
    mu_pos, mu_neg = train_g[yes].mean(0), train_g[~yes].mean(0)
    m = signed_mean(train_g, train_s)
    t = np.arange(steps + 1)
    path = boundary_path(v0, m, t, lr, beta)  # v(0) + eta beta t m
    alpha = estimate_alpha(train_g, yes, path[:: max(1, steps // 20)], method=alpha_method)
    bound = accuracy_bound_over_steps(t, v0=v0, drift=m, mu_pos=mu_pos, mu_neg=mu_neg, alpha=alpha, lr=lr,
                                      beta=beta, yes_fraction=float(yes.mean()))
    alpha_actual = estimate_alpha(train_g, yes, run.v_path[:: max(1, steps // 20)], method=alpha_method)
    at_actual = accuracy_bound_along_path(run.v_path, mu_pos, mu_neg, alpha_actual, float(yes.mean()))
    # the policy's own ordering log pi(chosen) > log pi(rejected) is s v^T g > 0: computed here exactly in float64
    # (the logged outputs/accuracies is the same up to the rounding of its mean)
    acc = (train_s[None, :] * (run.v_path @ train_g.T) > 0).mean(axis=1)
    return (pd.DataFrame({"step": t, "accuracy": acc, "bound": bound, "bound at actual v(t)": at_actual}), alpha,
            float(np.linalg.norm(mu_pos - mu_neg)))


# %% [markdown]
# ## Synthetic behaviours
#
# Embeddings $g = c + s\,\tfrac{PD}{2}u + \xi$ with a shared centre $c$, Gaussian (or Laplace) noise with unit
# variance per coordinate, exactly balanced classes, a 16-row head $W(0)$ with $\mathcal N(0, 0.01^2)$ entries,
# the official loop and hyperparameters.

# %%
n_train = int(0.9 * n_items)
W_syn = rng.standard_normal((16, d)) * 0.01
center = rng.standard_normal(d)
center *= center_norm / np.linalg.norm(center)
syn_behaviours = {pd_: make_behaviour(n_items, d, pd_, rng=rng, noise=noise, center=center) for pd_ in synthetic_pds}
require_stable_lr(synthetic_lr, {f"synthetic PD {k:g}": b.features[:n_train] for k, b in syn_behaviours.items()},
                  beta)
syn_curves, syn_rows = [], []
for pd_, beh in syn_behaviours.items():
    g_tr, s_tr = beh.features[:n_train], beh.signs[:n_train]
    run = train_last_layer_dpo(W_syn, g_tr, s_tr, yes_id=0, no_id=1, beta=beta, lr=synthetic_lr, steps=steps,
                               batch_size=batch_size, seed=seed, record_v=True)
    curve, alpha, pd_emp = guarantee_run(run, g_tr, s_tr, W_syn[0] - W_syn[1], synthetic_lr)
    curve["behaviour"] = f"PD {pd_:g}"
    syn_curves.append(curve)
    syn_rows.append({"nominal PD": pd_, "empirical PD": pd_emp, "alpha": alpha,
                     "final accuracy": curve["accuracy"].iloc[-1], "final bound": curve["bound"].iloc[-1],
                     "min (accuracy - bound)": float((curve["accuracy"] - curve["bound"]).min()),
                     "final bound at actual v(t)": curve["bound at actual v(t)"].iloc[-1]})
syn_curves = pd.concat(syn_curves, ignore_index=True)
syn = pd.DataFrame(syn_rows)
page.table(syn, columns={"nominal PD": "nominal PD", "empirical PD": "empirical PD", "alpha": "α",
                         "final accuracy": "accuracy at the end", "final bound": "bound at the end",
                         "min (accuracy - bound)": "min (accuracy − bound)",
                         "final bound at actual v(t)": "bound at the actual v(t), end"},
           formats={"nominal PD": "g", "empirical PD": ".2f", "alpha": ".2f", "final accuracy": ".3f",
                    "final bound": ".3f", "min (accuracy - bound)": ".3f", "final bound at actual v(t)": ".3f"})

# %%
GUARANTEE_LINES = [Line2D([], [], color=ordered_colors(1)[0], label="training accuracy"),
                   Line2D([], [], color="black", ls="--", label="bound (straight path)"),
                   Line2D([], [], color="grey", ls=":", label="bound at the actual v(t)")]
names = list(dict.fromkeys(syn_curves["behaviour"]))
legend_slot = len(names) % 3 != 0  # the legend takes the first empty panel of the last row
fig, axes = panel_grid(len(names) + legend_slot, aspect=1.0, sharey=True)
for ax, name, colour in zip(axes[:len(names)], names, ordered_colors(len(names)), strict=True):
    part = syn_curves[syn_curves["behaviour"] == name]
    ax.plot(part["step"], part["accuracy"], color=colour)
    ax.plot(part["step"], part["bound"], color="black", ls="--")
    ax.plot(part["step"], part["bound at actual v(t)"], color="grey", ls=":")
    ax.set(title=name, xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02))
if legend_slot:
    axes[-1].axis("off")
    axes[-1].legend(handles=GUARANTEE_LINES, loc="center", frameon=False)
else:
    fig.legend(handles=GUARANTEE_LINES, loc="outside lower center", ncol=3, frameon=False)
page.figure("fig_syn", fig)
page.glue("syn_alpha", float(syn["alpha"].median()))
page.glue("syn_final_bound_max", float(syn["final bound"].max()))

# %% [markdown]
# ```{glue:figure} fig_syn
# :alt: Panels of training accuracy against step for five synthetic behaviours, with the bound below it.
# :name: fig-imli04-synthetic
#
# Synthetic behaviours: the training accuracy (colour) stays above the reconstructed bound (black dashed) at every
# step; the bound rises toward one only for the largest distinguishabilities.
# ```
#
# For the synthetic behaviours $\alpha \approx$ {glue:text}`syn_alpha:.2f` (the $\psi_1$ norm of a standard normal
# is 1.37); the bound rises with $t$ and, for the largest distinguishability, reaches
# {glue:text}`syn_final_bound_max:.3f` after the run.
#
# ## SmolLM2 features
#
# The same for the persona behaviours, trained on their official training splits with the model's real head, once
# with the official SGD loop (batch 128) and once with full-batch gradient descent (the dynamics the straight path
# approximates). The accuracy depends on the head only through $v$, so the runs train the two answer rows
# (`analysis_lib.persona_runs.answer_rows_head`), which gives the same accuracy at every step as the full
# 49,152-row head. The features are the final hidden state after the model's final norm, once (definition
# '{glue:text}`definition`'; the official code normalises it a second time, see {ref}`imli-02-distinguishability`).

# %%
sets = load_behaviour_sets(real_behaviours, max_per_behaviour=max_per_behaviour, definition=feature_definition)
require_stable_lr(real_lr, {f"behaviour {b}": sets[b].part("train")[0] for b in real_behaviours}, beta)
W0, yes_id, no_id = real_head()
W2, y2, n2 = answer_rows_head(W0, yes_id, no_id)
v0_real = (W2[y2] - W2[n2]).double().numpy()
real_curves, full_curves, real_rows, real_runs = [], [], [], {}
for b in real_behaviours:
    g_tr, s_tr = sets[b].part("train")
    pd_b = behaviour_properties(sets[b].features, sets[b].yes_mask)["distinguishability"]
    for kind, bs in (("sgd", batch_size), ("full batch", None)):
        run = run_behaviour(sets[b], W2, y2, n2, lr=real_lr, beta=beta, steps=steps, batch_size=bs, seed=seed,
                            record_v=True)
        curve, alpha, _ = guarantee_run(run, g_tr.astype(np.float64), s_tr, v0_real, real_lr)
        curve["behaviour"] = f"{b} (PD {pd_b:.2f})"
        curve["index"] = b
        if kind == "sgd":
            real_runs[b] = run
            real_curves.append(curve)
            row = {"index": b, "distinguishability": pd_b, "alpha": alpha, "Yes share": float((s_tr > 0).mean()),
                   "final accuracy": curve["accuracy"].iloc[-1], "max bound": curve["bound"].max(),
                   "min (accuracy - bound)": float((curve["accuracy"] - curve["bound"]).min()),
                   "max bound at actual v(t)": curve["bound at actual v(t)"].max()}
        else:
            full_curves.append(curve)
            row["full batch: min (accuracy - bound)"] = float((curve["accuracy"] - curve["bound"]).min())
            row["full-batch accuracy"] = float(curve["accuracy"].iloc[-last_k:].mean())
    real_rows.append(row)
real_curves = pd.concat(real_curves, ignore_index=True)
full_curves = pd.concat(full_curves, ignore_index=True)
real = pd.DataFrame(real_rows).sort_values("distinguishability").reset_index(drop=True)
real["majority share"] = np.maximum(real["Yes share"], 1 - real["Yes share"])
real["max bound - majority share"] = real["max bound"] - real["majority share"]
page.table(real, columns={"index": "behaviour", "distinguishability": "PD", "alpha": "α",
                          "majority share": "majority share", "max bound": "largest bound",
                          "min (accuracy - bound)": "SGD: min (acc. − bound)",
                          "full batch: min (accuracy - bound)": "full batch: min (acc. − bound)"},
           formats={"distinguishability": ".2f", "alpha": ".2f", "majority share": ".3f", "max bound": ".3f",
                    "min (accuracy - bound)": ".3f"})
# the worst SGD step: which class the actual boundary and the straight path classify correctly there
worst = real_curves.loc[(real_curves["accuracy"] - real_curves["bound"]).idxmin()]
wb, wt = int(worst["index"]), int(worst["step"])
g_w, s_w = sets[wb].part("train")
g_w = g_w.astype(np.float64)
v_actual = real_runs[wb].v_path[wt]
v_path_w = boundary_path(v0_real, signed_mean(g_w, s_w), [wt], real_lr, beta)[0]
worst_info = {name: (float(np.mean(g_w[s_w > 0] @ v > 0)), float(np.mean(g_w[s_w < 0] @ v < 0)))
              for name, v in (("actual", v_actual), ("path", v_path_w))}
majority = float(real["majority share"].max())
informative_max = float(real["max bound - majority share"].max())
for key, value in {"real_alpha_lo": real["alpha"].min(), "real_alpha_hi": real["alpha"].max(),
                   "real_bound_max": real["max bound"].max(),
                   "real_actual_bound_max": real["max bound at actual v(t)"].max(),
                   "real_pd_over_alpha": (real["distinguishability"] / real["alpha"]).max(),
                   "majority_max": majority, "informative_max": informative_max,
                   "sgd_gap": real["min (accuracy - bound)"].min(),
                   "full_gap": real["full batch: min (accuracy - bound)"].min(),
                   "worst_actual_pos": worst_info["actual"][0], "worst_actual_neg": worst_info["actual"][1],
                   "worst_path_pos": worst_info["path"][0], "worst_path_neg": worst_info["path"][1]}.items():
    page.glue(key, float(value))
page.glue("worst_b", wb)
page.glue("worst_t", wt)
page.glue("n_violated", int((real["min (accuracy - bound)"] < 0).sum()))
page.glue("n_items_real", int(max(len(sets[b]) for b in real_behaviours)))
page.glue("real_lr_g", real_lr)
page.glue("n_real", len(real))
page.glue("definition", feature_definition)

# %%
shown = [b for b in real.loc[real["index"].isin(paper_behaviours), "index"]] + ([wb] if wb not in paper_behaviours
                                                                                  else [])
colours = ordered_colors(3)
legend_slot = len(shown) % 3 != 0  # the legend takes the first empty panel of the last row
fig, axes = panel_grid(len(shown) + legend_slot, aspect=1.0, sharey=True)
for ax, b in zip(axes[:len(shown)], shown, strict=True):
    sgd_part = real_curves[real_curves["index"] == b]
    full_part = full_curves[full_curves["index"] == b]
    share = float(real.loc[real["index"] == b, "majority share"].iloc[0])
    ax.plot(sgd_part["step"], sgd_part["accuracy"], color=colours[0])
    ax.plot(full_part["step"], full_part["accuracy"], color=colours[2], ls="--")
    ax.plot(sgd_part["step"], sgd_part["bound"], color="black", ls="--")
    ax.axhline(share, color="grey", ls=":")
    ax.set(title=sgd_part["behaviour"].iloc[0], xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02))
handles = [Line2D([], [], color=colours[0], label="SGD accuracy"),
           Line2D([], [], color=colours[2], ls="--", label="full-batch accuracy"),
           Line2D([], [], color="black", ls="--", label="bound (straight path)"),
           Line2D([], [], color="grey", ls=":", label="majority share")]
if legend_slot:
    axes[-1].axis("off")
    axes[-1].legend(handles=handles, loc="center", frameon=False)
else:
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
page.figure("fig_real", fig)

# %% [markdown]
# ```{glue:figure} fig_real
# :alt: Panels of SmolLM2 training accuracy against step, with the bound and the majority share.
# :name: fig-imli04-real
#
# The paper's five behaviours (and the behaviour with the largest violation under SGD, {glue:text}`worst_b`, if it
# is not one of them): SGD accuracy (solid), full-batch accuracy (dashed colour), the reconstructed bound (black
# dashed), and the share of the larger class (grey dotted), which the bound does not exceed.
# ```
#
# On SmolLM2 features the guarantee says little: $\alpha$ is {glue:text}`real_alpha_lo:.2f` to
# {glue:text}`real_alpha_hi:.2f`, about as large as the whole distinguishability (the largest $PD/\alpha$ is
# {glue:text}`real_pd_over_alpha:.2f`), so even a boundary normal exactly along $\Delta$ leaves a tail probability
# near one for at least one class. The bound never exceeds {glue:text}`real_bound_max:.3f` (at the actual
# $v(t)$: {glue:text}`real_actual_bound_max:.3f`), and in no behaviour does it exceed the share of the larger class
# (which is at most {glue:text}`majority_max:.3f` in our splits): the boundary passes through the origin, and along the
# path the large shared feature component puts the whole of one class on its correct side and the other class mean
# close to the boundary, so the bound certifies one class and nothing about the other.
#
# That is also where the straight path fails under SGD, in {glue:text}`n_violated` of the {glue:text}`n_real`
# behaviours. The path $v(0) + \eta\beta t\,m$ follows the full training set's signed mean, whose Yes/No imbalance
# along the shared component fixes which class is favoured; each SGD batch has its own imbalance and can tip the
# boundary's offset the other way. The smallest accuracy minus bound is {glue:text}`sgd_gap:.3f` with SGD: at step
# {glue:text}`worst_t` of behaviour {glue:text}`worst_b` the actual boundary classifies
# {glue:text}`worst_actual_pos:.0%` of the positive and {glue:text}`worst_actual_neg:.0%` of the negative items
# correctly, the path {glue:text}`worst_path_pos:.0%` and {glue:text}`worst_path_neg:.0%`. With full-batch
# gradient descent, the dynamics the early-time path approximates, the smallest accuracy minus bound is
# {glue:text}`full_gap:.1e`: it holds, by a margin that small where accuracy and bound meet.
#
# ## The learning rate behind the violations
#
# Our $\eta$ = {glue:text}`real_lr_g:g` makes the SGD accuracy jump from step to step ({ref}`imli-03-learning-speed`
# shows the curves of both learning rates). The same SGD runs (same batches) with the paper's $\eta$ =
# {glue:text}`paper_lr_g:g`, against the bound of their own straight path, next to ours:

# %%
paper_gap_rows, paper_curves = [], []
for b in real_behaviours:
    g_tr, s_tr = sets[b].part("train")
    run = run_behaviour(sets[b], W2, y2, n2, lr=PAPER_LR, beta=beta, steps=steps, batch_size=batch_size, seed=seed,
                        record_v=True)
    curve, _, _ = guarantee_run(run, g_tr.astype(np.float64), s_tr, v0_real, PAPER_LR)
    curve["index"] = b
    paper_curves.append(curve)
    ours = real_curves[real_curves["index"] == b]
    full = full_curves[full_curves["index"] == b]
    paper_gap_rows.append({"index": b, "jitter ours": float(ours["accuracy"].diff().abs().mean()),
                           "jitter full": float(full["accuracy"].diff().abs().mean()),
                           "jitter paper": float(curve["accuracy"].diff().abs().mean()),
                           "gap ours": float((ours["accuracy"] - ours["bound"]).min()),
                           "gap paper": float((curve["accuracy"] - curve["bound"]).min())})
paper_curves = pd.concat(paper_curves, ignore_index=True)
lr_table = pd.DataFrame(paper_gap_rows).merge(real[["index", "distinguishability"]], on="index")
page.table(lr_table.sort_values("distinguishability"), columns={
    "index": "behaviour", "distinguishability": "PD", "jitter ours": f"jitter, SGD η = {real_lr:g}",
    "jitter full": f"jitter, full batch η = {real_lr:g}", "jitter paper": f"jitter, SGD η = {PAPER_LR:g}",
    "gap ours": f"min (acc. − bound), η = {real_lr:g}", "gap paper": f"min (acc. − bound), η = {PAPER_LR:g}"},
    formats={"distinguishability": ".2f", "jitter ours": ".4f", "jitter full": ".4f", "jitter paper": ".4f",
             "gap ours": ".3f", "gap paper": ".3f"})
for key, col in (("jitter_ours", "jitter ours"), ("jitter_full", "jitter full"), ("jitter_paper", "jitter paper")):
    page.glue(key, float(lr_table[col].median()))
page.glue("paper_gap", float(lr_table["gap paper"].min()))
page.glue("n_violated_paper", int((lr_table["gap paper"] < 0).sum()))
page.glue("paper_lr_g", PAPER_LR)
fig, axes = panel_grid(2, ncols=2, aspect=0.8, sharey=True)
lr_palette = dict(zip([str(b) for b in paper_behaviours], ordered_colors(len(paper_behaviours)), strict=True))
for ax, (rate, curves_) in zip(axes, ((real_lr, real_curves), (PAPER_LR, paper_curves)), strict=True):
    part = curves_[curves_["index"].isin(paper_behaviours)].assign(
        behaviour=lambda t: t["index"].astype(str), margin=lambda t: t["accuracy"] - t["bound"])
    sns.lineplot(data=part, x="step", y="margin", hue="behaviour", palette=lr_palette, ax=ax, legend=False)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(title=f"SGD, η = {rate:g}", xlabel="step", ylabel="training accuracy − bound")
fig.legend(handles=[Line2D([], [], color=c, label=b) for b, c in lr_palette.items()], title="behaviour",
           loc="outside lower center", ncol=len(lr_palette), frameon=False)
page.figure("fig_lr", fig)

# %% [markdown]
# ```{glue:figure} fig_lr
# :alt: Two panels of training accuracy minus the bound against step, with our learning rate and with 0.1.
# :name: fig-imli04-lr
#
# Training accuracy minus the reconstructed bound under SGD for the paper's five behaviours, with our learning rate
# (left) and the paper's (right); below zero the bound is violated.
# ```
#
# The jitter (mean absolute change of the training accuracy from one step to the next, median over the
# {glue:text}`n_real` behaviours) is {glue:text}`jitter_ours:.3f` under SGD with $\eta$ = {glue:text}`real_lr_g:g`,
# {glue:text}`jitter_full:.4f` with full-batch descent at the same $\eta$, and {glue:text}`jitter_paper:.4f` under
# SGD with $\eta$ = {glue:text}`paper_lr_g:g`. With the paper's learning rate the smallest accuracy minus bound is
# {glue:text}`paper_gap:.3f` ({glue:text}`n_violated_paper` of {glue:text}`n_real` behaviours below zero); the head
# then barely moves within the run, so the bound stays near its start as well. G2 and G4 are checked at our
# learning rate, with its jitter: G4 averages over seeds and the last steps for that reason.
#
# ## Where the boundary normal goes
#
# The reconstruction assumes $v(t) \approx v(0) + \eta\beta t\,m$. The angle between $v(t)$ and $\Delta$ in the
# actual SGD runs (recorded at every step) against that path, for the paper's five behaviours:

# %%
checkpoints = np.unique(np.linspace(0, steps, 11).astype(int))
angles = []
for b in paper_behaviours:
    g_tr, s_tr = sets[b].part("train")
    delta = preference_direction(g_tr, s_tr > 0)
    actual = real_runs[b].v_path[checkpoints]
    approx = boundary_path(v0_real, signed_mean(g_tr, s_tr), checkpoints, real_lr, beta)
    for kind, vs in (("actual v(t)", actual), ("straight path", approx)):
        angles.append(pd.DataFrame({"step": checkpoints, "angle to Δ (degrees)": angle_to(vs, delta),
                                    "behaviour": str(b), "path": kind}))
angles = pd.concat(angles, ignore_index=True)
fig, ax = plt.subplots(figsize=figure_size(1.0, aspect=0.55), layout="constrained")
sns.lineplot(data=angles, x="step", y="angle to Δ (degrees)", hue="behaviour", style="path", ax=ax,
             palette=ordered_colors(len(paper_behaviours)))
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
page.figure("fig_angle", fig)

# %% [markdown]
# ```{glue:figure} fig_angle
# :alt: Angle between the boundary normal and the class-mean difference against step, actual and straight.
# :name: fig-imli04-angle
#
# The decision-boundary normal turns toward $\Delta$ in the actual runs (solid) and along the straight path
# (dashed).
# ```
#
# ## The subexponential constant
#
# The tail of the centred projection for one behaviour, along $\Delta$, against $2e^{-t/\alpha}$ for its $\psi_1$
# norm and for the tightest constant that the empirical tail obeys (`analysis_lib.guarantees.tail_alpha`, never
# larger than the $\psi_1$ norm).

# %%
b0 = paper_behaviours[0]
g_tr, s_tr = sets[b0].part("train")
proj = centred_projections(g_tr, s_tr > 0, preference_direction(g_tr, s_tr > 0))[:, 0]
x = np.sort(np.abs(proj))
tail = 1 - np.arange(len(x)) / len(x)
fig, ax = plt.subplots(figsize=figure_size(0.85), layout="constrained")
ax.semilogy(x, tail, drawstyle="steps-post", label=r"empirical $P(|\langle u, g - \mu\rangle| \geq t)$",
            color=ordered_colors(3)[0])
for a, name, colour in ((psi1_norm(proj), r"$\psi_1$ norm", ordered_colors(3)[1]),
                        (tail_alpha(proj), "tightest tail constant", ordered_colors(3)[2])):
    ax.semilogy(x, np.minimum(1, 2 * np.exp(-x / a)), ls="--", color=colour,
                label=rf"$2e^{{-t/{a:.2f}}}$ ({name})")
ax.set(xlabel="t", ylabel="tail probability")
ax.legend()
page.figure("fig_tail", fig)
page.glue("b0", int(b0))

# %% [markdown]
# ```{glue:figure} fig_tail
# :alt: Log-scale tail probability of the centred projection against t, with two exponential tail bounds.
# :name: fig-imli04-tail
#
# Behaviour {glue:text}`b0`: the empirical tail along $\Delta$ and the exponential tails $2e^{-t/\alpha}$ for its
# $\psi_1$ norm and for the tightest constant it obeys.
# ```
#
# ## Accuracy against distinguishability
#
# A single run's accuracy after 100 steps jumps from step to step ({ref}`imli-03-learning-speed` explains why), so
# we average it over the SGD seeds {glue:text}`seeds_text` (batch orders) and over the last {glue:text}`last_k`
# steps of each run. For comparison, the same average for full-batch gradient descent (no batch noise at all, one
# run per behaviour).

# %%
acc_rows = []
for b in real_behaviours:
    avg = seed_averaged_accuracy(sets[b], W2, y2, n2, lr=real_lr, beta=beta, steps=steps, batch_size=batch_size,
                                 seeds=seeds, last_k=last_k)
    acc_rows.append({"index": b, "seed-averaged accuracy": avg["mean"], "seed std": avg["std"]})
real = real.merge(pd.DataFrame(acc_rows), on="index")
page.table(real, columns={"index": "behaviour", "distinguishability": "PD", "alpha": "α",
                          "final accuracy": "one run, last step", "seed-averaged accuracy": "seed-averaged",
                          "seed std": "seed std", "full-batch accuracy": "full batch"},
           formats={"distinguishability": ".2f", "alpha": ".2f", "final accuracy": ".3f",
                    "seed-averaged accuracy": ".3f", "seed std": ".3f", "full-batch accuracy": ".3f"})
rho_real = float(spearmanr(real["distinguishability"], real["seed-averaged accuracy"]).statistic)
rho_single = float(spearmanr(real["distinguishability"], real["final accuracy"]).statistic)
rho_full = float(spearmanr(real["distinguishability"], real["full-batch accuracy"]).statistic)
fig, ax = plt.subplots(figsize=figure_size(1.0, aspect=0.6), layout="constrained")
colours = ordered_colors(3)
ax.errorbar(real["distinguishability"], real["seed-averaged accuracy"], yerr=real["seed std"], fmt="o",
            color=colours[0], label=f"SGD, mean of {len(seeds)} seeds × last {last_k} steps")
ax.scatter(real["distinguishability"], real["full-batch accuracy"], marker="x", color=colours[2],
           label=f"full batch, last {last_k} steps")
for _, r in real.iterrows():
    ax.annotate(str(int(r["index"])), (r["distinguishability"], r["seed-averaged accuracy"]),
                xytext=(3, 3), textcoords="offset points")
ax.set(xlabel="distinguishability", ylabel="training accuracy")
ax.legend()
page.figure("fig_acc_pd", fig)
paper = real[real["index"].isin(paper_behaviours)].sort_values("distinguishability")
paper_pd = paper["distinguishability"].to_numpy()
paper_acc = paper["seed-averaged accuracy"].to_numpy()
page.glue("seeds_text", ", ".join(str(x) for x in seeds))
page.glue("last_k", last_k)
page.glue("rho_real_acc", rho_real)
page.glue("rho_single_acc", rho_single)
page.glue("rho_full_acc", rho_full)
page.glue("seed_std_max", float(real["seed std"].max()))
page.glue("paper_order", ", ".join(str(int(x)) for x in paper["index"]))
page.glue("paper_acc", ", ".join(f"{a:.3f}" for a in paper_acc))
if len(paper_pd) > 1:
    closest = int(np.argmin(np.diff(paper_pd)))
    page.glue("closest_pd_diff", float(np.diff(paper_pd)[closest]))
else:
    page.glue("closest_pd_diff", float("nan"))

# %% [markdown]
# ```{glue:figure} fig_acc_pd
# :alt: Scatter of training accuracy after the run against distinguishability, SGD and full batch.
# :name: fig-imli04-acc-pd
#
# Accuracy after the run against distinguishability (numbers: behaviour indices): the seed-averaged SGD accuracy
# rises with PD; the full-batch accuracy scatters more.
# ```
#
# Over the {glue:text}`n_real` behaviours, the Spearman correlation between distinguishability and the accuracy is
# {glue:text}`rho_real_acc:.2f` seed-averaged ({glue:text}`rho_single_acc:.2f` for one run's last step,
# {glue:text}`rho_full_acc:.2f` for full-batch training). The seed-to-seed standard deviation of the averaged
# accuracy is at most {glue:text}`seed_std_max:.3f`. In PD order ({glue:text}`paper_order`) the paper's five
# behaviours reach {glue:text}`paper_acc` seed-averaged; the two closest of their PDs differ by only
# {glue:text}`closest_pd_diff:.2f`. Full-batch training is not a noiseless version of "accuracy is a function of
# PD": with no batch noise at all the order of the accuracies departs from that of PD as much as a single SGD run's
# does, so SGD noise is only part of the story. The accuracy a boundary through the origin reaches presumably also
# depends on the spread of each class along it ($\alpha$) and on where the shared feature component puts the two
# class means; we do not separate these effects here.
#
# ## Claim checks
#
# The bound must hold at every step (0 to the last) for every behaviour (G1, G2, G2b) and exceed the majority share
# somewhere (G2c); the accuracy after the run should increase with distinguishability, across at least five
# behaviours (G3, G4), and as a trend across at least ten (G5, our adaptation).

# %%
syn_gap = float((syn_curves["accuracy"] - syn_curves["bound"]).min())
real_gap = float((real_curves["accuracy"] - real_curves["bound"]).min())
syn_bound_max = float(syn_curves["bound"].max())
real_bound_max = float(real_curves["bound"].max())
full_gap = float((full_curves["accuracy"] - full_curves["bound"]).min())
full_bound_max = float(full_curves["bound"].max())
page.glue("syn_gap", syn_gap)
claims.check("G1", f"synthetic ({noise}): training accuracy - reconstructed bound (path v(0) + eta beta t m), "
             "minimum over all steps and behaviours (accuracy >= bound at every step), and the bound's largest value",
             f"min {syn_gap:.3g}; max bound {syn_bound_max:.3f}", "min >= 0", syn_gap >= 0, "min >= 0", kind="claim")
claims.check("G2", f"SmolLM2 persona, the official SGD loop (batch {batch_size}): training accuracy - "
             "reconstructed bound (path v(0) + eta beta t m), minimum over all steps and behaviours (accuracy >= "
             "bound at every step), and the bound's largest value",
             f"min {real_gap:.3g}; max bound {real_bound_max:.3f}", "min >= 0", real_gap >= 0, "min >= 0", kind="claim")
claims.check("G2b", "SmolLM2 persona, full-batch gradient descent (the dynamics the path approximates): training "
             "accuracy - reconstructed bound, minimum over all steps and behaviours (accuracy >= bound at every "
             "step), and the bound's largest value", f"min {full_gap:.3g}; max bound {full_bound_max:.3f}",
             "min >= 0", full_gap >= 0, "min >= 0", kind="claim")
claims.check("G2c", "SmolLM2 persona: the bound is informative, i.e. in at least one behaviour its largest value "
             "exceeds that behaviour's majority share max(p, 1 - p), the accuracy of answering every item with the "
             f"larger class (largest majority share {majority:.3f}); measured: the largest excess over behaviours",
             f"max excess {informative_max:.2g}", "> 0", informative_max > 0, "> 0", kind="claim")
syn_sorted = syn.sort_values("nominal PD")["final accuracy"].to_numpy()
claims.check("G3", f"synthetic: accuracy after {steps} steps strictly increases with PD across at least 5 behaviours "
             f"({len(synthetic_pds)} behaviours)", tuple(np.round(syn_sorted, 3)), "increasing",
             len(syn_sorted) >= 5 and bool(np.all(np.diff(syn_sorted) > 0)), "increasing", kind="claim")
claims.check("G4", f"SmolLM2: accuracy after {steps} steps (mean over {len(seeds)} seeds and the last {last_k} "
             f"steps) strictly increases with PD across the paper's {len(paper)} behaviours (PD order "
             f"{tuple(int(x) for x in paper['index'])}; at least 5)",
             tuple(np.round(paper_acc, 3)), "increasing",
             len(paper) >= 5 and bool(np.all(np.diff(paper_acc) > 0)), "increasing", kind="claim")
claims.check("G5", f"SmolLM2: Spearman rho(PD, accuracy after {steps} steps, mean over {len(seeds)} seeds and the "
             f"last {last_k} steps) across at least 10 behaviours ({len(real)} behaviours)",
             f"rho = {rho_real:.3f}", "rho >= 0.7", len(real) >= 10 and rho_real >= 0.7, "rho >= 0.7", kind="claim")
page.report()

# %% [markdown]
# All seven are claims about our reconstruction or the paper's statement and can fail. G2 and G2c fail on SmolLM2
# features: under the paper's SGD loop at our learning rate the straight-path bound is violated, and where it holds
# (full batch, G2b) it certifies no more than the larger class. G2 runs under a declared difference from the paper
# (SmolLM2's features by the definition '{glue:text}`definition`' and $\eta$ = {glue:text}`real_lr_g:g` instead of
# {glue:text}`paper_lr_g:g`; declared in a revision after an earlier build had shown the violation, and backed by
# a measurement): with the paper's learning rate the smallest SGD margin is {glue:text}`paper_gap:.1e`
# ({glue:text}`n_violated_paper` of {glue:text}`n_real` behaviours below zero; section on the learning rate), so G2's
# failure goes with our learning rate and its jitter. G2c stays a **finding**: we cannot say which difference, if
# any, is responsible, so it carries no declaration. The
# explanation above (batch imbalance along the shared feature component) is ours and was measured, not assumed.
# The accuracy-against-distinguishability claims hold: the paper notes' strict order (G4) and our trend test (G5).
#
# ## What differs from the paper
#
# The bound is our reconstruction of a guarantee whose exact statement we could not read; its validity is checked
# against the official loop's training accuracy at every step, on synthetic features (where it becomes informative as
# $PD/\alpha$ grows) and on SmolLM2-135M features (a quantised 135M model, not the paper's 7B models, with
# {glue:text}`n_items_real` items per behaviour instead of 1,000, which keeps the chapter within its time budget,
# features by the definition '{glue:text}`definition`' (the official code's is 'double_norm'), and a learning rate of
# {glue:text}`real_lr_g:g` instead of 0.1, so that the head moves within the run; the section on the learning rate
# shows the paper's), where distinguishability is of the order of $\alpha$ and the bound certifies little more than
# the larger class. With 7B features the ratio $PD/\alpha$ may well be larger; we cannot measure it here, so we do not
# attribute the failure of G2c to scale. The declared differences:

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
