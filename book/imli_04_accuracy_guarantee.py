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
# # The training-accuracy guarantee
#
# **Claim.** Im & Li {cite}`im2024understanding` give "rigorous guarantees on the training accuracy" of DPO when
# the centred prompt embeddings are $\alpha$-subexponential: the decision boundary moves toward the class-mean
# direction at a speed set by distinguishability, so accuracy rises faster for more distinguishable behaviours.
# **The exact form of the paper's bound could not be read; the bound below is our reconstruction** (paper notes,
# section 4.4), in the last-layer model of the official code.
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
# $$\mathrm{acc}(t) \;\ge\; 1 - p\,B\big(v(t)^\top\mu^+\big) - (1-p)\,B\big(-v(t)^\top\mu^-\big), \qquad
# B(a) = \min\!\Big(1,\ 2\exp\Big(-\frac{a}{\alpha\,(\|v(0)\| + \eta\beta t\|m\|)}\Big)\Big) \text{ for } a > 0,\ 1
# \text{ otherwise}$$
#
# (`analysis_lib.guarantees.accuracy_bound_over_steps`), a function of $t$ alone. We estimate $\alpha$ from the
# features, as the largest empirical $\psi_1$ norm of $\langle u, g - \mu\rangle$ over both classes and the
# directions $u$ along that path (`analysis_lib.guarantees.estimate_alpha`), track the training accuracy of the
# official loop at every step and compare. The check can fail: the actual $v(t)$ leaves the straight path as the
# sigmoid weights move away from 1/2 and as SGD batches differ from the full set. We also show the same inequality
# evaluated at the actual $v(t)$ of the run; with $\alpha$ fitted on the training items along those very
# directions it holds by construction (Markov's inequality on the empirical law), so it is shown, not checked.
# Synthetic behaviours first (Gaussian embeddings, as in {ref}`imli-01-logistic-regression`), then SmolLM2
# features of persona behaviours {cite}`perez2023discovering` {cite}`allal2025smollm2`.
#
# Whether accuracy grows with distinguishability is measured on the accuracy averaged over several SGD seeds
# (batch orders) and the last few steps, since a single run's last-step accuracy jumps from step to step. The run
# time is printed at the end.

# %% tags=["parameters"]
seed = 0  # [>= 0] random seed
synthetic_pds = [1.0, 2.0, 4.0, 8.0, 16.0]  # [> 0] distinguishability of the synthetic behaviours {smoke: [2.0, 16.0]}
noise = "gaussian"  # [one of: gaussian, laplace] synthetic embedding noise
d = 64  # [>= 2] synthetic embedding dimension
n_items = 1000  # [>= 20] synthetic items per behaviour (official 90/10 split) {smoke: 300}
center_norm = 10.0  # [>= 0] norm of the component shared by the synthetic embeddings
synthetic_lr = 0.1  # [> 0] SGD learning rate on synthetic features (the paper's)
real_behaviours = [108, 84, 88, 54, 100, 45, 123, 130, 32, 65, 79, 107]  # [0..134] trained {smoke: [108, 54]}
paper_behaviours = [108, 84, 88, 54, 100]  # [0..134] the paper's five (monotonicity check) {smoke: [108, 54]}
max_per_behaviour = 300  # [>= 0] items per persona behaviour (balanced subset); 0 = all {smoke: 60}
real_lr = 10.0  # [> 0] SGD learning rate on SmolLM2 features (see the learning-speed chapter)
beta = 0.01  # [> 0] DPO inverse temperature
batch_size = 128  # [>= 1] SGD batch, drawn afresh each step {smoke: 32}
steps = 100  # [>= 4] SGD steps {smoke: 10}
alpha_method = "psi1"  # [one of: psi1, tail] how alpha is estimated from the features
seeds = [0, 1, 2, 3, 4]  # [>= 0] SGD seeds (batch orders) averaged for the accuracy-against-PD checks {smoke: [0]}
last_k = 10  # [>= 1] the accuracy-against-PD checks average the last k steps of each run {smoke: 2}

# %% [markdown]
# **Paper-scale settings.** The official runs use Llama-2-7B features (4096-d), all 1,000 items per behaviour,
# SGD with $\eta = 0.1$, $\beta = 0.01$, batch 128, 100 steps. Ours: SmolLM2-135M-Instruct features (576-d),
# `max_per_behaviour = 300` (0 = all 1,000: `python3 run.py chapter imli_04_accuracy_guarantee -p
# max_per_behaviour=0`), $\eta = 10$ on SmolLM2 features (the reason is in {ref}`imli-03-learning-speed`) and
# $\eta = 0.1$ on the synthetic ones; the rest as in the paper.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display
from myst_nb import glue
from scipy.stats import spearmanr

from analysis_lib.claims import Claims
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
from analysis_lib.persona_runs import (
    answer_rows_head,
    load_behaviour_sets,
    real_head,
    require_stable_lr,
    run_behaviour,
    seed_averaged_accuracy,
)
from analysis_lib.plotting import ordered_colors, panel_grid, set_theme
from analysis_lib.runtime import seed_everything, set_cpu_threads

started = time.time()
rng = seed_everything(seed)
set_cpu_threads(1)  # logistic-regression-sized problems: one thread avoids OpenMP overhead on 2 cores
set_theme()
claims = Claims("imli_04_accuracy_guarantee")
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
display(syn.round(4))


# %%
def plot_guarantee(curves, title):
    names = list(dict.fromkeys(curves["behaviour"]))
    fig, axes = panel_grid(len(names), ncols=min(5, len(names)), size=(3.4, 2.8))
    colours = ordered_colors(len(names))
    for ax, name, colour in zip(axes, names, colours, strict=True):
        part = curves[curves["behaviour"] == name]
        ax.plot(part["step"], part["accuracy"], color=colour, label="training accuracy")
        ax.plot(part["step"], part["bound"], color="black", ls="--", label="reconstructed bound (path)")
        ax.plot(part["step"], part["bound at actual v(t)"], color="grey", ls=":", label="same at the actual v(t)")
        ax.set(title=name, xlabel="step", ylim=(-0.02, 1.02))
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    plt.show()


plot_guarantee(syn_curves, f"Synthetic behaviours ({noise} noise): accuracy and the reconstructed guarantee")
glue("syn_alpha", float(syn["alpha"].median()), display=False)
glue("syn_final_bound_max", float(syn["final bound"].max()), display=False)

# %% [markdown]
# For the synthetic behaviours $\alpha \approx$ {glue:text}`syn_alpha:.2f` (the $\psi_1$ norm of a standard normal
# is 1.37); the bound rises with $t$ and, for the largest distinguishability, reaches
# {glue:text}`syn_final_bound_max:.3f` after the run.
#
# ## SmolLM2 features
#
# The same for the persona behaviours, trained on their official training splits with the model's real head. The
# accuracy depends on the head only through $v$, so the runs train the two answer rows
# (`analysis_lib.persona_runs.answer_rows_head`), which gives the same accuracy at every step as the full
# 49,152-row head.

# %%
sets = load_behaviour_sets(real_behaviours, max_per_behaviour=max_per_behaviour)
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
display(real.round(4))
plot_guarantee(real_curves, "SmolLM2 persona behaviours (SGD, batch 128): training accuracy and the reconstructed "
               "guarantee")
plot_guarantee(full_curves, "The same with full-batch gradient descent")
# the worst SGD step: which class the actual boundary and the straight path classify correctly there
worst = real_curves.loc[(real_curves["accuracy"] - real_curves["bound"]).idxmin()]
wb, wt = int(worst["index"]), int(worst["step"])
g_w, s_w = sets[wb].part("train")
g_w = g_w.astype(np.float64)
v_actual = real_runs[wb].v_path[wt]
v_path_w = boundary_path(v0_real, signed_mean(g_w, s_w), [wt], real_lr, beta)[0]
worst_info = {name: (float(np.mean(g_w[s_w > 0] @ v > 0)), float(np.mean(g_w[s_w < 0] @ v < 0)))
              for name, v in (("actual", v_actual), ("path", v_path_w))}
majority = float(np.maximum(real["Yes share"], 1 - real["Yes share"]).max())
glue("real_alpha_lo", float(real["alpha"].min()), display=False)
glue("real_alpha_hi", float(real["alpha"].max()), display=False)
glue("real_bound_max", float(real["max bound"].max()), display=False)
glue("real_actual_bound_max", float(real["max bound at actual v(t)"].max()), display=False)
glue("real_pd_over_alpha", float((real["distinguishability"] / real["alpha"]).max()), display=False)
glue("majority_max", majority, display=False)
glue("sgd_gap", float(real["min (accuracy - bound)"].min()), display=False)
glue("full_gap", float(real["full batch: min (accuracy - bound)"].min()), display=False)
glue("worst_b", wb, display=False)
glue("worst_t", wt, display=False)
glue("worst_actual_pos", worst_info["actual"][0], display=False)
glue("worst_actual_neg", worst_info["actual"][1], display=False)
glue("worst_path_pos", worst_info["path"][0], display=False)
glue("worst_path_neg", worst_info["path"][1], display=False)

# %% [markdown]
# On SmolLM2 features the guarantee says little: $\alpha$ is {glue:text}`real_alpha_lo:.2f` to
# {glue:text}`real_alpha_hi:.2f`, about as large as the whole distinguishability (the largest $PD/\alpha$ is
# {glue:text}`real_pd_over_alpha:.2f`), so even a boundary normal exactly along $\Delta$ leaves a tail probability
# near one for at least one class. The bound never exceeds {glue:text}`real_bound_max:.3f` (at the actual
# $v(t)$: {glue:text}`real_actual_bound_max:.3f`), about the share of the larger class (at most
# {glue:text}`majority_max:.3f` in our splits): the boundary passes through the origin, and along the path the large
# shared feature component puts the whole of one class on its correct side and the other class mean close to the
# boundary, so the bound certifies one class and nothing about the other.
#
# That is also where the straight path fails under SGD. The path $v(0) + \eta\beta t\,m$ follows the full training
# set's signed mean, whose Yes/No imbalance along the shared component fixes which class is favoured; each SGD batch
# has its own imbalance and can tip the boundary's offset the other way. The smallest accuracy minus bound is
# {glue:text}`sgd_gap:.3f` with SGD: at step {glue:text}`worst_t` of behaviour {glue:text}`worst_b` the actual
# boundary classifies {glue:text}`worst_actual_pos:.0%` of the positive and {glue:text}`worst_actual_neg:.0%` of the
# negative items correctly, the path {glue:text}`worst_path_pos:.0%` and {glue:text}`worst_path_neg:.0%`. With
# full-batch gradient descent, the dynamics the early-time path approximates, the smallest accuracy minus bound is
# {glue:text}`full_gap:.2g`.
#
# **Where the boundary normal goes.** The reconstruction assumes $v(t) \approx v(0) + \eta\beta t\,m$. The angle
# between $v(t)$ and $\Delta$ in the actual runs (recorded at every step) against that path, for the paper's five
# behaviours:

# %%
checkpoints = np.unique(np.linspace(0, steps, 11).astype(int))
angles = []
for b in paper_behaviours:
    g_tr, s_tr = sets[b].part("train")
    delta = preference_direction(g_tr, s_tr > 0)
    actual = real_runs[b].v_path[checkpoints]
    approx = boundary_path(v0_real, signed_mean(g_tr, s_tr), checkpoints, real_lr, beta)
    for kind, vs in (("actual v(t)", actual), ("v(0) + eta beta t m", approx)):
        angles.append(pd.DataFrame({"step": checkpoints, "angle to Delta (degrees)": angle_to(vs, delta),
                                    "behaviour": str(b), "path": kind}))
angles = pd.concat(angles, ignore_index=True)
fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
sns.lineplot(data=angles, x="step", y="angle to Delta (degrees)", hue="behaviour", style="path", ax=ax,
             palette=ordered_colors(len(paper_behaviours)))
ax.set_title("The decision-boundary normal turns toward Delta")
ax.legend(fontsize=7, ncol=2)
plt.show()

# %% [markdown]
# **The subexponential constant.** The tail of the centred projection for one behaviour, along $\Delta$, against
# $2e^{-t/\alpha}$ for its $\psi_1$ norm and for the tightest constant that the empirical tail obeys
# (`analysis_lib.guarantees.tail_alpha`, never larger than the $\psi_1$ norm).

# %%
b0 = paper_behaviours[0]
g_tr, s_tr = sets[b0].part("train")
proj = centred_projections(g_tr, s_tr > 0, preference_direction(g_tr, s_tr > 0))[:, 0]
x = np.sort(np.abs(proj))
tail = 1 - np.arange(len(x)) / len(x)
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.semilogy(x, tail, drawstyle="steps-post", label="empirical P(|<u, g - mu>| >= t)", color=ordered_colors(3)[0])
for a, name, colour in ((psi1_norm(proj), "psi_1 norm", ordered_colors(3)[1]),
                        (tail_alpha(proj), "tightest tail constant", ordered_colors(3)[2])):
    ax.semilogy(x, np.minimum(1, 2 * np.exp(-x / a)), ls="--", color=colour, label=f"2 exp(-t / {a:.2f}) ({name})")
ax.set(xlabel="t", title=f"Behaviour {b0}: tail along Delta")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## Accuracy against distinguishability
#
# A single run's accuracy after 100 steps jumps from step to step (the learning-speed chapter explains why), so we
# average it over the SGD seeds {glue:text}`seeds_text` (batch orders) and over the last {glue:text}`last_k` steps of
# each run. For comparison, the same average for full-batch gradient descent (no batch noise at all, one run per
# behaviour).

# %%
acc_rows = []
for b in real_behaviours:
    avg = seed_averaged_accuracy(sets[b], W2, y2, n2, lr=real_lr, beta=beta, steps=steps, batch_size=batch_size,
                                 seeds=seeds, last_k=last_k)
    acc_rows.append({"index": b, "seed-averaged accuracy": avg["mean"], "seed std": avg["std"]})
real = real.merge(pd.DataFrame(acc_rows), on="index")
display(real[["index", "distinguishability", "alpha", "final accuracy", "seed-averaged accuracy", "seed std",
              "full-batch accuracy"]].round(4))
rho_real = float(spearmanr(real["distinguishability"], real["seed-averaged accuracy"]).statistic)
rho_single = float(spearmanr(real["distinguishability"], real["final accuracy"]).statistic)
rho_full = float(spearmanr(real["distinguishability"], real["full-batch accuracy"]).statistic)
fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
colours = ordered_colors(3)
ax.errorbar(real["distinguishability"], real["seed-averaged accuracy"], yerr=real["seed std"], fmt="o",
            color=colours[0], label=f"SGD, mean of {len(seeds)} seeds x last {last_k} steps")
ax.scatter(real["distinguishability"], real["full-batch accuracy"], marker="x", color=colours[2],
           label=f"full batch, last {last_k} steps")
for _, r in real.iterrows():
    ax.annotate(str(int(r["index"])), (r["distinguishability"], r["seed-averaged accuracy"]), fontsize=8)
ax.set(xlabel="distinguishability", ylabel="training accuracy", title=f"Accuracy after {steps} steps against PD")
ax.legend(fontsize=7)
plt.show()
paper = real[real["index"].isin(paper_behaviours)].sort_values("distinguishability")
paper_pd = paper["distinguishability"].to_numpy()
glue("seeds_text", ", ".join(str(x) for x in seeds), display=False)
glue("last_k", last_k, display=False)
glue("rho_real_acc", rho_real, display=False)
glue("rho_single_acc", rho_single, display=False)
glue("rho_full_acc", rho_full, display=False)
glue("n_real", len(real), display=False)
glue("seed_std_max", float(real["seed std"].max()), display=False)

# %% [markdown]
# Over the {glue:text}`n_real` behaviours, the Spearman correlation between distinguishability and the accuracy is
# {glue:text}`rho_real_acc:.2f` seed-averaged ({glue:text}`rho_single_acc:.2f` for one run's last step,
# {glue:text}`rho_full_acc:.2f` for full-batch training). The seed-to-seed standard deviation of the averaged
# accuracy is at most {glue:text}`seed_std_max:.3f`. Full-batch training is not a noiseless version of "accuracy
# is a function of PD": with no batch noise at all the order of the accuracies departs from that of PD as much as
# a single SGD run's does, so SGD noise is only part of the story. The accuracy a boundary through the origin
# reaches presumably also depends on the spread of each class along it ($\alpha$) and on where the shared feature
# component puts the two class means; we do not separate these effects here.
#
# ## Claim checks
#
# The bound must hold at every step (0 to the last) for every behaviour; the accuracy after the run should
# increase with distinguishability, across at least five behaviours.

# %%
syn_gap = float((syn_curves["accuracy"] - syn_curves["bound"]).min())
real_gap = float((real_curves["accuracy"] - real_curves["bound"]).min())
syn_bound_max = float(syn_curves["bound"].max())
real_bound_max = float(real_curves["bound"].max())
claims.check("G1", f"synthetic ({noise}): training accuracy - reconstructed bound (path v(0) + eta beta t m), "
             "minimum over all steps and behaviours, and how informative the bound is (its largest value)",
             f"min {syn_gap:.3g}; largest bound {syn_bound_max:.3f}", "min >= 0", syn_gap >= 0,
             "accuracy >= bound at every step")
full_gap = float((full_curves["accuracy"] - full_curves["bound"]).min())
full_bound_max = float(full_curves["bound"].max())
claims.check("G2", "SmolLM2 persona, the official SGD loop (batch 128): training accuracy - reconstructed bound "
             "(path v(0) + eta beta t m), minimum over all steps and behaviours, and how informative the bound is "
             "(its largest value)", f"min {real_gap:.3g}; largest bound {real_bound_max:.3f}", "min >= 0",
             real_gap >= 0, "accuracy >= bound at every step",
             scale_note="the reconstruction's v(t) is the full-batch gradient path (its drift m is the whole training "
                        "set's signed mean), not expected to bound SGD exactly where the large shared feature "
                        "component makes the batch's Yes/No imbalance decide which class the boundary favours; "
                        f"measured: at the worst step ({wt} of behaviour {wb}) the actual boundary classifies "
                        f"{worst_info['actual'][0]:.0%} of the positive and {worst_info['actual'][1]:.0%} of the "
                        f"negative items correctly, the path {worst_info['path'][0]:.0%} and "
                        f"{worst_info['path'][1]:.0%}; G2b tests the bound on the dynamics it is derived for")
claims.check("G2b", "SmolLM2 persona, full-batch gradient descent (the dynamics the path approximates): training "
             "accuracy - reconstructed bound, minimum over all steps and behaviours, and the bound's largest value",
             f"min {full_gap:.3g}; largest bound {full_bound_max:.3f}", "min >= 0", full_gap >= 0,
             "accuracy >= bound at every step")
syn_sorted = syn.sort_values("nominal PD")["final accuracy"].to_numpy()
claims.check("G3", f"synthetic: accuracy after {steps} steps strictly increases with PD across at least 5 behaviours "
             f"({len(synthetic_pds)} behaviours)", tuple(np.round(syn_sorted, 3)), "increasing",
             len(syn_sorted) >= 5 and bool(np.all(np.diff(syn_sorted) > 0)),
             "strictly increasing in PD, at least 5 behaviours")
paper_acc = paper["seed-averaged accuracy"].to_numpy()
closest = int(np.argmin(np.diff(paper_pd))) if len(paper_pd) > 1 else 0
claims.check("G4", f"SmolLM2: accuracy after {steps} steps (mean over {len(seeds)} seeds and the last {last_k} "
             f"steps) strictly increases with PD across the paper's {len(paper)} behaviours (PD order "
             f"{tuple(int(x) for x in paper['index'])}; at least 5)",
             tuple(np.round(paper_acc, 3)), "increasing",
             len(paper) >= 5 and bool(np.all(np.diff(paper_acc) > 0)), "strictly increasing in PD, at least 5",
             scale_note=f"accuracy after {steps} steps is not a function of PD alone on SmolLM2 features: full-batch "
                        f"training (no SGD noise) gives Spearman rho(PD, accuracy) = {rho_full:.2f} over "
                        f"{len(real)} behaviours, and the seed std of the averaged accuracy is up to "
                        f"{real['seed std'].max():.3f}, while the two closest PDs of the five differ by only "
                        f"{np.diff(paper_pd)[closest] if len(paper_pd) > 1 else float('nan'):.2f} "
                        f"({paper_pd[closest]:.2f} and "
                        f"{paper_pd[min(closest + 1, len(paper_pd) - 1)]:.2f}); a strict order on five behaviours is "
                        "therefore fragile, and G5 tests the trend")
claims.check("G5", f"SmolLM2: Spearman rho(PD, accuracy after {steps} steps, mean over {len(seeds)} seeds and the "
             f"last {last_k} steps) across at least 10 behaviours",
             f"rho = {rho_real:.3f} over {len(real)} behaviours", ">= 0.7 over >= 10 behaviours",
             len(real) >= 10 and rho_real >= 0.7, "rho >= 0.7 and at least 10 behaviours")
claims.report()
glue("runtime", time.time() - started, display=False)

# %% [markdown]
# The chapter ran in {glue:text}`runtime:.0f` s.
#
# ## Note on scale
#
# The bound is our reconstruction; its validity here is checked against the official loop's training accuracy at
# every step, on synthetic features (where it becomes informative as $PD/\alpha$ grows) and on SmolLM2-135M
# features (a quantised 135M model, not the paper's 7B models), where distinguishability is of the order of
# $\alpha$ and the bound certifies little more than the larger class (its largest value is in G2). Under the
# official SGD loop the straight early-time path is not a safe stand-in for the actual boundary (G2); under
# full-batch gradient descent it is (G2b). With 7B features the ratio $PD/\alpha$ may well be larger; we cannot
# measure it here.
