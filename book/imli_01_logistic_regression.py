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
# (imli-01-logistic-regression)=
# # DPO on the unembedding is logistic regression
#
# :::{admonition} Key result
# :class: tip
# Trained on fixed embeddings, the unembedding's DPO loss is a logistic regression in $w_{Yes} - w_{No}$: its
# closed-form gradient matches autograd to {glue:text}`grad_rel_err:.0e`, the update is rank one
# ($\sigma_2/\sigma_1 \le$ {glue:text}`rank_ratio_max:.0e`), and the first step lowers the loss by
# $\eta\beta^2\|\Delta\|^2/8$ to a relative error of {glue:text}`first_rel_err_max:.0e`. The more distinguishable
# the behaviour, the more the loss falls and the head moves: Spearman correlation with the distinguishability
# {glue:text}`rho_loss_min:.2f` for the loss decrease and {glue:text}`rho_dw_min:.2f` for the weight change (the
# smaller over both noise laws).
#
# ```{glue:figure} fig_training_gaussian
# :alt: Five panels against SGD steps, one curve per distinguishability: losses, accuracies and weight change.
# :name: fig-imli01-training-key
#
# Last-layer DPO on synthetic behaviours with Gaussian noise: the larger the distinguishability (lighter), the
# faster the loss falls, the accuracy rises and the head moves.
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` analyse DPO {cite}`rafailov2023direct` in a model where only the unembedding
# (the last linear layer, $W_U$) is trained on fixed prompt embeddings and the two answers are single tokens,
# " Yes" and " No". The paper states that in this model the unembedding changes faster, and the loss falls
# faster, for behaviours with larger *preference distinguishability*, and that its bound on
# $\|W_U(t) - W_U(0)\|$ grows linearly in the number of steps $t$. The full text of the paper was not available
# to us: the exact algebra below (the reduction to a logistic regression, the closed-form gradient, the rank-one
# update, the first-step loss drop and the linear bound with its constant) is **our reconstruction** in the
# setting of the authors' official code, checked numerically here.
#
# ## Setting
#
# We (1) derive the reduction and check it on a random head: gradient against autograd, which rows move,
# invariances of the loss; (2) train the unembedding with the official code's loop (SGD, a fresh batch of 128 per
# step, 100 steps, $\beta = 0.01$, $\eta = 0.1$) on synthetic behaviours with Gaussian and Laplace embeddings and
# a range of distinguishabilities, and check the rank-one update, the first-step loss drop, the linear bound and
# the ordering by distinguishability.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed
d = 64  # [2..8192] embedding dimension
vocab_size = 16  # [2..65536] rows of the unembedding W (Yes = row 0, No = row 1)
n_train = 900  # [4..100000] training items per behaviour, exactly balanced Yes/No when even {smoke: 200}
n_test = 100  # [2..100000] test items per behaviour {smoke: 50}
center_norm = 10.0  # [>= 0] norm of the component shared by all embeddings (as in LLM hidden states)
init_scale = 0.01  # [> 0] standard deviation of the entries of W(0)
beta = 0.01  # [> 0] DPO inverse temperature
lr = 0.1  # [> 0] SGD learning rate eta
batch_size = 128  # [1..100000] SGD batch, drawn afresh each step without replacement {smoke: 64}
steps = 100  # [4..100000] SGD steps {smoke: 10}
distinguishabilities = [1.0, 2.0, 4.0, 8.0, 16.0]  # [> 0; len 2..20] nominal PD of the behaviours {smoke: [2.0, 16.0]}
noises = ["gaussian", "laplace"]  # [one of: gaussian, laplace; len 1..2] laws of the embedding noise
robustness_seeds = 5  # [1..1000] extra seeds for the linearity check at the smallest distinguishability {smoke: 1}
imbalanced_yes_fraction = 0.55  # [0.05..0.95] Yes fraction of the imbalanced example in the first-step section

# %% [markdown]
# **Paper-scale settings.** The official code trains the real `lm_head` of a 7B model on the persona embeddings;
# the optimiser settings are the same as ours, the embeddings and the head are not:
#
# | setting | paper (official code, figure run) | this chapter's default |
# |---|---|---|
# | model / embeddings | Llama-2-7B last-prompt-token hidden states | synthetic: $c + s\,\tfrac{PD}{2}\,u + \xi$ |
# | embedding dimension $d$ | 4096 | `d = 64` (at most 8192) |
# | vocabulary $V$ | 32,000 | `vocab_size = 16` (at most 65,536) |
# | items per behaviour | 1,000 (900 train / 100 test) | `n_train = 900`, `n_test = 100` |
# | optimiser, learning rate | SGD, 0.1 | SGD, `lr = 0.1` |
# | $\beta$ | 0.01 | `beta = 0.01` |
# | batch, steps | 128 (fresh random batch each step), 100 | `batch_size = 128`, `steps = 100` |
#
# The LLM's dimensions are one override away (about a minute and 1 GB of memory for the float64 head):
# `python3 run.py chapter imli_01_logistic_regression -p d=4096 -p vocab_size=32000`. The chapters on real
# SmolLM2 features train the model's own head with the same library function.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import NullFormatter
from scipy.stats import linregress, spearmanr

from analysis_lib import lastlayer as ll
from analysis_lib.page import start_page
from analysis_lib.plotting import figure_size, ordered_colors, panel_grid
from analysis_lib.runtime import get_device, progress

# The tensors here are tiny: one CPU thread is faster than two (threading overhead); paper-scale heads use more.
page = start_page("imli_01_logistic_regression", seed, threads=1 if vocab_size * d <= 2**20 else None)
rng, claims = page.rng, page.claims
device = get_device()
claims.declare(["A10", "A11", "A12", "A13"], "data",
               "synthetic embeddings (a shared centre, a class-mean gap along one direction, Gaussian or Laplace "
               "noise) instead of Llama-2-7B hidden states of persona questions")
claims.declare(["A10", "A11", "A12", "A13"], "adaptation",
               "the criteria (R^2 >= 0.99 for linearity, 10% on the early slope, Spearman >= 0.9) are the "
               "project's: the paper gives no numbers")
YES, NO = 0, 1
pd_values = sorted(distinguishabilities)
palette = dict(zip(pd_values, ordered_colors(len(pd_values)), strict=True))
page.glue("pd_lo", pd_values[0])
page.glue("pd_hi", pd_values[-1])
page.glue("vocab_g", vocab_size)
page.glue("d_g", d)

# %% [markdown]
# A1-A9 are identities of the last-layer model (algebra, checked against autograd and the training loop); A10-A13
# are the paper's statements about speed, in the precise form of our reconstruction, on synthetic embeddings with
# criteria of ours.
#
# ## The model and the reduction
#
# Write $W \in \mathbb{R}^{V \times d}$ for the unembedding, with rows $w_j$, and $g = g(x)$ for the frozen
# embedding of prompt $x$. The policy is $\pi_W(y \mid x) = \exp(w_y^\top g) / \sum_j \exp(w_j^\top g)$, over the
# whole vocabulary. A preference pair is coded by its sign $s = +1$ (chosen " Yes", rejected " No") or $s = -1$
# (the reverse). The reference policy is the starting head $W(0)$.
#
# The log-partition is the same for both answers, so it cancels in their log-ratio:
#
# $$\log \pi_W(y_w \mid x) - \log \pi_W(y_l \mid x) = s\, v^\top g, \qquad v = w_Y - w_N .$$
#
# With $v_{\mathrm{ref}} = v(0)$ and $r_i = \beta\, s_i\, (v - v_{\mathrm{ref}})^\top g_i$, the DPO loss over $n$
# pairs is therefore
#
# $$L(W) = -\frac{1}{n} \sum_{i=1}^n \log \sigma(r_i),$$
#
# a logistic regression on the embeddings, with labels $s_i$ and weight vector $\beta (v - v_{\mathrm{ref}})$.
# It depends on $W$ only through $v - v_{\mathrm{ref}}$. Its gradient is
#
# $$\begin{aligned}
# \nabla_{w_Y} L &= -\frac{\beta}{n} \sum_i \sigma(-r_i)\, s_i\, g_i = -\nabla_{w_N} L, \\
# \nabla_{w_j} L &= 0 \qquad (j \ne Y, N).
# \end{aligned}$$
#
# Three consequences follow for (stochastic) gradient descent from $W(0)$:
#
# * **rank one.** $W(t) - W(0) = (e_Y - e_N)\, \delta(t)^\top$, so
#   $\|W(t) - W(0)\|_{\mathrm{op}} = \|W(t) - W(0)\|_F = \sqrt{2}\, \|\delta(t)\|$: the paper's operator norm and
#   the code's Frobenius norm agree;
# * **first step.** At $W(0)$ every $r_i = 0$ and $\sigma(0) = \tfrac12$, so
#   $\nabla_{w_Y} L = -\tfrac{\beta}{2} m$ with $m = \tfrac1n \sum_i s_i g_i = p\,\hat\mu^+ - (1-p)\,\hat\mu^-$
#   ($p$ the fraction of Yes-chosen pairs, $\hat\mu^\pm$ the class means). One full-batch step of size $\eta$
#   lowers the loss by $\eta \|\nabla L\|_F^2 + O(\eta^2) = \eta\, \tfrac{\beta^2}{2} \|m\|^2$. For a balanced
#   behaviour $m = \Delta/2$ with $\Delta = \hat\mu^+ - \hat\mu^-$, and the drop is
#   $\eta \beta^2 \|\Delta\|^2 / 8$, where $\|\Delta\|$ is the preference distinguishability (PD);
# * **linear bound.** Since $\sigma \le 1$, each step moves each answer row by at most
#   $\eta \beta \max_i \|g_i\|$, so $\|W(t) - W(0)\| \le \sqrt{2}\, \eta\, \beta\, t\, \max_i \|g_i\|$. Early in
#   training (balanced) $\|W(t) - W(0)\| \approx t\, \tfrac{\sqrt2}{4}\, \eta \beta \|\Delta\|$: proportional to
#   the distinguishability.
#
# The accuracy the paper plots (the code's `outputs/accuracies`) is the policy's own ordering
# $\mathbb{1}[s\, v^\top g > 0]$: a linear classifier with normal $v$, not $v - v_{\mathrm{ref}}$.
#
# ## Checking the algebra on a random head
#
# A random head $W$ near a random reference $W(0)$, one synthetic behaviour: the literal loss (full-vocabulary
# log-softmax, then `dpo_loss`) differentiated by autograd against the closed form above.

# %%
W_ref = init_scale * rng.standard_normal((vocab_size, d))
W_random = W_ref + 0.5 * rng.standard_normal((vocab_size, d))
algebra = ll.make_behaviour(n_train, d, pd_values[len(pd_values) // 2], rng=rng, center=center_norm)

W_var = torch.tensor(W_random, requires_grad=True)
loss = ll.last_layer_dpo_loss(W_var, W_ref, algebra.features, algebra.signs, YES, NO, beta)
loss.backward()
grad_autograd = W_var.grad
grad_closed = ll.dpo_gradient_closed_form(W_random, W_ref, algebra.features, algebra.signs, YES, NO, beta)
grad_rel_err = float((grad_autograd - grad_closed).norm() / grad_closed.norm())
other_rows_max = float(grad_autograd[2:].abs().max()) if vocab_size > 2 else 0.0
yes_plus_no = float((grad_autograd[YES] + grad_autograd[NO]).norm())


def loss_at(W):
    return float(ll.last_layer_dpo_loss(W, W_ref, algebra.features, algebra.signs, YES, NO, beta))


shift_others = W_random.copy()
shift_others[2:] += 3.0 * rng.standard_normal(shift_others[2:].shape)
shift_common = W_random.copy()
shift_common[[YES, NO]] += 3.0 * rng.standard_normal(d)
invariance_err = max(abs(loss_at(shift_others) - loss.item()), abs(loss_at(shift_common) - loss.item()))
logistic_err = abs(float(ll.dpo_loss_logistic_form(W_random, W_ref, algebra.features, algebra.signs, YES, NO, beta))
                   - loss.item())

page.glue("grad_rel_err", grad_rel_err)
page.glue("other_rows_max", other_rows_max)
page.glue("yes_plus_no", yes_plus_no)
page.glue("invariance_err", invariance_err)
page.glue("logistic_err", logistic_err)
page.table(pd.DataFrame({
    "quantity": ["relative error, closed-form gradient against autograd", "largest |gradient| on the other rows",
                 "‖grad_Yes + grad_No‖", "largest |loss change| when moving the other rows or both answer rows",
                 "|literal loss − logistic-regression form|"],
    "value": [grad_rel_err, other_rows_max, yes_plus_no, invariance_err, logistic_err]}))

# %% [markdown]
# The closed-form gradient matches autograd to a relative error of {glue:text}`grad_rel_err:.1e`; the other
# rows get a gradient of at most {glue:text}`other_rows_max:.1g`, and the Yes and No rows are opposite to
# {glue:text}`yes_plus_no:.1g`. Moving every other row, or adding one vector to both answer rows, changes the loss
# by at most {glue:text}`invariance_err:.1g`, and the logistic-regression form equals the literal loss to
# {glue:text}`logistic_err:.1g`.
#
# ## Training on synthetic behaviours
#
# Each behaviour draws $g = c + s\,\tfrac{PD}{2}\,u + \xi$: a shared centre $c$ of norm `center_norm`, a random
# unit direction $u$, and noise $\xi$ with independent unit-variance coordinates, Gaussian or Laplace (a
# subexponential law, as in the paper's assumption), for PD from {glue:text}`pd_lo:g` to {glue:text}`pd_hi:g`. The
# training and test sets are drawn separately from the same law, each exactly balanced. Training is the official
# code's loop (`train_last_layer_dpo`): reference $=W(0)$, one SGD step per iteration on a fresh random batch, the
# batch loss and accuracy and the test metrics logged before the update, $\|W(t+1) - W(0)\|_F$ after it. The
# library also logs the loss on the whole training set (`full_train_loss`), which the theory speaks about.

# %%
W0 = init_scale * rng.standard_normal((vocab_size, d))
behaviours, runs, logs = {}, {}, []
for noise in noises:
    for pd_ in progress(pd_values, desc=noise):
        train_b = ll.make_behaviour(n_train, d, pd_, rng=rng, noise=noise, center=center_norm)
        test_b = ll.make_behaviour(n_test, d, pd_, rng=rng, noise=noise, center=train_b.center,
                                   direction=train_b.direction)
        run = ll.train_last_layer_dpo(W0, train_b.features, train_b.signs, yes_id=YES, no_id=NO, beta=beta, lr=lr,
                                      steps=steps, batch_size=batch_size, seed=seed,
                                      test_features=test_b.features, test_signs=test_b.signs, device=device)
        behaviours[noise, pd_], runs[noise, pd_] = train_b, run
        logs.append(run.log.assign(noise=noise, PD=pd_))
log = pd.concat(logs, ignore_index=True)

panels = {"loss": "train loss (batch)", "eval_loss": "test loss", "outputs/accuracies": "train accuracy (batch)",
          "eval_outputs/accuracies": "test accuracy", "weight_change": r"$\|W(t) - W(0)\|_F$"}
for noise in noises:
    fig, axes = panel_grid(6, ncols=3, aspect=0.85, sharex=True)
    part = log[log["noise"] == noise]
    for ax, (col, title) in zip(axes[:5], panels.items(), strict=True):
        sns.lineplot(part, x="step", y=col, hue="PD", palette=palette, ax=ax, legend=False)
        ax.set(title=title, xlabel="SGD step", ylabel="")
    axes[-1].axis("off")
    axes[-1].legend(handles=[plt.Line2D([], [], color=palette[v], lw=2) for v in pd_values],
                    labels=[f"{v:g}" for v in pd_values], title="PD", loc="center", frameon=False)
    page.figure(f"fig_training_{noise}", fig)

# %% [markdown]
# ```{glue:figure} fig_training_gaussian
# :alt: Five panels against SGD steps for Gaussian embeddings, one curve per distinguishability.
# :name: fig-imli01-training-gaussian
#
# Gaussian noise: losses, accuracies and $\|W(t) - W(0)\|_F$ over the SGD steps, one curve per distinguishability.
# Larger PD (lighter) gives a faster loss decrease, a faster accuracy rise and a faster-growing weight change.
# ```
#
# ```{glue:figure} fig_training_laplace
# :alt: Five panels against SGD steps for Laplace embeddings, one curve per distinguishability.
# :name: fig-imli01-training-laplace
#
# The same with Laplace (subexponential) noise: the same ordering by distinguishability.
# ```
#
# As in the paper's figure, larger distinguishability gives a faster loss decrease, a faster accuracy rise and a
# faster-growing $\|W(t) - W(0)\|$. With $\beta = 0.01$ the losses move little (the DPO margin is scaled by
# $\beta$) while the accuracies move a lot.
#
# ## The update is rank one, linear early, and bounded
#
# For every run: the rows of $W(T) - W(0)$ that changed and its two largest singular values; the bound
# $\sqrt2\,\eta\beta\,t\,\max_i\|g_i\|$ at every step (with $t$ = updates done); a straight-line fit of
# $\|W(t) - W(0)\|$ over the first half of training; and the early slope against the balanced prediction
# $\tfrac{\sqrt2}{4}\eta\beta\|\Delta\|$, with $\|\Delta\|$ the empirical distinguishability of the training
# set. First the structure of the update:

# %%
rows = []
for (noise, pd_), run in runs.items():
    b = behaviours[noise, pd_]
    changed, sv = ll.weight_change_spectrum(run.W.cpu(), W0)
    t = run.log["step"].to_numpy() + 1
    change = run.log["weight_change"].to_numpy()
    bound = ll.weight_change_bound(lr, beta, t, run.max_feature_norm)
    half = t <= max(2, steps // 2)
    fit = linregress(t[half], change[half])
    pd_hat = ll.behaviour_properties(b.features, b.yes_mask)["distinguishability"]
    rows.append({"noise": noise, "PD": pd_, "PD (empirical)": pd_hat, "rows changed": len(changed),
                 "sigma_2 / sigma_1": sv[1] / sv[0] if len(sv) > 1 else 0.0,
                 "max change / bound": float(np.max(change / bound)),
                 "steps within bound": int(np.sum(change <= bound)),
                 "R^2 (first half)": fit.rvalue**2, "slope": fit.slope,
                 "predicted slope": np.sqrt(2) / 4 * lr * beta * pd_hat,
                 "loss decrease": run.log["full_train_loss"].iloc[0] - run.final["full_train_loss"],
                 "final weight change": change[-1]})
summary = pd.DataFrame(rows)

rank_ratio_max = float(summary["sigma_2 / sigma_1"].max())
only_two_rows = int((summary["rows changed"] == 2).sum())
bound_hits, bound_total = int(summary["steps within bound"].sum()), len(runs) * steps
bound_ratio_max = float(summary["max change / bound"].max())
r2_min = float(summary["R^2 (first half)"].min())
slope_dev_max = float((summary["slope"] / summary["predicted slope"] - 1).abs().max())
page.glue("rank_ratio_max", rank_ratio_max)
page.glue("bound_ratio_max", bound_ratio_max)
page.glue("r2_min", r2_min)
page.glue("slope_dev_max", 100 * slope_dev_max)
page.glue("n_runs", len(runs))
page.glue("steps_per_run", steps)
page.table(summary, columns={"noise": "noise", "PD": "PD", "rows changed": "rows changed",
                             "sigma_2 / sigma_1": "σ₂ / σ₁", "max change / bound": "largest change / bound",
                             "steps within bound": "steps within bound"},
           formats={"PD": "g", "max change / bound": ".3f"})

# %% [markdown]
# Then its speed: the straight-line fit over the first half of training, its slope against the prediction, and
# the loss decrease and weight change at the end.

# %%
page.table(summary, columns={"noise": "noise", "PD": "PD", "R^2 (first half)": "R² (first half)",
                             "slope": "fitted slope", "predicted slope": "predicted slope",
                             "loss decrease": "loss decrease", "final weight change": "final ‖ΔW‖"},
           formats={"PD": "g", "R^2 (first half)": ".4f", "slope": ".2e", "predicted slope": ".2e",
                    "loss decrease": ".2e", "final weight change": ".4f"})

# %%
fig, ax = plt.subplots(figsize=figure_size(1.0, aspect=0.55), layout="constrained")
sns.scatterplot(data=summary, x="predicted slope", y="slope", hue="PD", style="noise", palette=palette, s=60, ax=ax)
values = summary[["predicted slope", "slope"]].to_numpy()
lim = [0.8 * values.min(), 1.25 * values.max()]
ax.plot(lim, lim, color="grey", lw=1, ls="--", label="slope = prediction")
ax.set(xscale="log", yscale="log", xlabel=r"predicted early slope $\frac{\sqrt{2}}{4}\eta\beta\|\Delta\|$",
       ylabel=r"fitted slope of $\|W(t) - W(0)\|$")
ticks = [m * 10.0**k for k in range(-8, 3) for m in (1, 2, 5) if lim[0] <= m * 10.0**k <= lim[1]]
for axis in (ax.xaxis, ax.yaxis):
    axis.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    axis.set_minor_formatter(NullFormatter())
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
page.figure("fig_slopes", fig)

# %% [markdown]
# ```{glue:figure} fig_slopes
# :alt: Log-log scatter of the fitted slope of the weight change against the predicted slope, on the diagonal.
# :name: fig-imli01-slopes
#
# The fitted early slope of $\|W(t) - W(0)\|$ against the balanced prediction $\tfrac{\sqrt2}{4}\eta\beta\|\Delta\|$,
# per run: every point lies on the diagonal (dashed), so the head moves at a speed proportional to the
# distinguishability.
# ```
#
# The smallest distinguishability is the delicate case for linearity. There the drift per step,
# $\propto \|\Delta\|$, is not large next to the batch-to-batch fluctuation of the update (a random batch of 128
# is rarely balanced, and the shared centre turns its imbalance into a sizeable update), so for the first steps
# $\|W(t) - W(0)\|$ grows partly like a random walk, $\propto \sqrt t$. To see how much the linear fit depends on
# the draw, we repeat the smallest-PD runs over more seeds (new data and new batches):

# %%
pd_min = pd_values[0]
robust = []
for noise in noises:
    for k in progress(range(robustness_seeds), desc=f"PD = {pd_min:g}, {noise}"):
        extra_rng = np.random.default_rng([seed, 1000 + k])
        b = ll.make_behaviour(n_train, d, pd_min, rng=extra_rng, noise=noise, center=center_norm)
        extra = ll.train_last_layer_dpo(W0, b.features, b.signs, yes_id=YES, no_id=NO, beta=beta, lr=lr, steps=steps,
                                        batch_size=batch_size, seed=seed + 1 + k, device=device)
        t = extra.log["step"].to_numpy() + 1
        half = t <= max(2, steps // 2)
        fit = linregress(t[half], extra.log["weight_change"].to_numpy()[half])
        robust.append({"noise": noise, "seed": k, "R^2 (first half)": fit.rvalue**2})
robust = pd.DataFrame(robust)
robust_r2_min, robust_r2_max = float(robust["R^2 (first half)"].min()), float(robust["R^2 (first half)"].max())
robust_below = int((robust["R^2 (first half)"] < 0.99).sum())
r2_min_larger_pd = float(summary.loc[summary["PD"] > pd_min, "R^2 (first half)"].min())  # NaN with a single PD
page.glue("pd_min", pd_min)
page.glue("robust_n", len(robust))
page.glue("robust_r2_min", robust_r2_min)
page.glue("robust_r2_max", robust_r2_max)
page.glue("robust_below", robust_below)
page.glue("r2_min_larger_pd", r2_min_larger_pd)
robust_table = robust.groupby("noise", sort=False)["R^2 (first half)"].agg(
    runs="size", smallest="min", median="median", largest="max",
    below=lambda r: int((r < 0.99).sum())).reset_index()
page.table(robust_table, columns={"noise": "noise", "runs": "runs", "smallest": "smallest R²", "median": "median R²",
                                  "largest": "largest R²", "below": "runs with R² < 0.99"},
           formats={"smallest": ".4f", "median": ".4f", "largest": ".4f"})

# %% [markdown]
# In all {glue:text}`n_runs` runs only the Yes and No rows moved and the update is rank one
# ($\sigma_2/\sigma_1 \le$ {glue:text}`rank_ratio_max:.1e`). The weight change stays far below the linear bound
# (at most {glue:text}`bound_ratio_max:.2f` of it): the bound uses $\max_i \|g_i\|$, which the shared centre
# inflates, while the actual per-step change is set by $\|\Delta\|$. Over the first half of training the change
# is linear in $t$ (smallest $R^2$ {glue:text}`r2_min:.4f`), and the fitted slopes agree with the balanced
# prediction $\tfrac{\sqrt2}{4}\eta\beta\|\Delta\|$ to within {glue:text}`slope_dev_max:.1f`%: the weights
# move at a speed proportional to the distinguishability. At PD = {glue:text}`pd_min:g` the $R^2$ over
# {glue:text}`robust_n` further runs ranged from {glue:text}`robust_r2_min:.4f` to {glue:text}`robust_r2_max:.4f`
# (below 0.99 in {glue:text}`robust_below` of them), while the main runs with larger PD all have
# $R^2 \ge$ {glue:text}`r2_min_larger_pd:.4f`. At the smallest distinguishability $R^2$ sits close to the 0.99
# threshold, so whether the linearity criterion (A10) passes depends on the draw there.
#
# ## The first-step loss drop
#
# One full-batch gradient step from $W(0)$ on each training set (exactly balanced), measured on the whole
# training set, against $\eta\beta^2\|\Delta\|^2/8$ with the empirical $\Delta$.

# %%
first = []
for (noise, pd_), b in behaviours.items():
    one = ll.train_last_layer_dpo(W0, b.features, b.signs, yes_id=YES, no_id=NO, beta=beta, lr=lr, steps=1,
                                  batch_size=None, seed=seed, device=device)
    measured = one.log["full_train_loss"].iloc[0] - one.final["full_train_loss"]
    pd_hat = ll.behaviour_properties(b.features, b.yes_mask)["distinguishability"]
    predicted = ll.balanced_first_step_loss_drop(pd_hat, beta, lr)
    first.append({"noise": noise, "PD": pd_, "PD (empirical)": pd_hat, "measured drop": measured,
                  "eta beta^2 PD^2 / 8": predicted, "relative error": abs(measured - predicted) / predicted})
first = pd.DataFrame(first)
first_rel_err_max = float(first["relative error"].max())
page.glue("first_rel_err_max", first_rel_err_max)
page.table(first, columns={"noise": "noise", "PD": "PD", "PD (empirical)": "‖Δ‖ (empirical)",
                           "measured drop": "measured drop", "eta beta^2 PD^2 / 8": "ηβ²‖Δ‖²/8",
                           "relative error": "relative error"},
           formats={"PD": "g", "PD (empirical)": ".3f", "measured drop": ".4e", "eta beta^2 PD^2 / 8": ".4e",
                    "relative error": ".1e"})

# %% [markdown]
# The measured drops agree with the formula to a relative error of at most
# {glue:text}`first_rel_err_max:.1e` (the neglected term is $O(\eta^2)$).
#
# **Balance matters.** The balanced formula has a practical caveat: LLM hidden states share a large common
# component, and $m = \Delta/2 + (p - \tfrac12)(\hat\mu^+ + \hat\mu^-)$. A small imbalance, multiplied by the
# shared centre, can dominate $m$. The same check on one behaviour whose training set has a Yes fraction of
# {glue:text}`imb_fraction:g`:

# %%
page.glue("imb_fraction", imbalanced_yes_fraction)
b_imb = ll.make_behaviour(n_train, d, pd_values[0], rng=rng, center=center_norm, yes_fraction=imbalanced_yes_fraction)
one = ll.train_last_layer_dpo(W0, b_imb.features, b_imb.signs, yes_id=YES, no_id=NO, beta=beta, lr=lr, steps=1,
                              batch_size=None, seed=seed, device=device)
imb_measured = one.log["full_train_loss"].iloc[0] - one.final["full_train_loss"]
imb_general = ll.first_step_loss_drop(b_imb.features, b_imb.signs, beta, lr)
imb_balanced = ll.balanced_first_step_loss_drop(
    ll.behaviour_properties(b_imb.features, b_imb.yes_mask)["distinguishability"], beta, lr)
imb_general_err = float(abs(imb_measured - imb_general) / imb_general)
imb_ratio = float(imb_measured / imb_balanced)
p_yes = float(np.mean(b_imb.signs > 0))
imb_term = abs(p_yes - 0.5) * float(np.linalg.norm(b_imb.features[b_imb.yes_mask].mean(0)
                                                  + b_imb.features[~b_imb.yes_mask].mean(0)))
half_delta = float(np.linalg.norm(ll.preference_direction(b_imb.features, b_imb.yes_mask))) / 2
page.glue("imb_term", imb_term)
page.glue("half_delta", half_delta)
page.glue("imb_n_yes", int((b_imb.signs > 0).sum()))
page.glue("imb_n_no", int((b_imb.signs < 0).sum()))
page.glue("imb_ratio", imb_ratio)
page.glue("imb_general_err", imb_general_err)
page.table(pd.DataFrame({
    "formula": ["measured", "general: η (β²/2) ‖p μ⁺ − (1−p) μ⁻‖²", "balanced: η β² ‖Δ‖²/8"],
    "first-step drop": [imb_measured, imb_general, imb_balanced]}), formats={"first-step drop": ".4e"})

# %% [markdown]
# With {glue:text}`imb_n_yes` Yes and {glue:text}`imb_n_no` No items, the imbalance term
# $|p - \tfrac12|\,\|\hat\mu^+ + \hat\mu^-\| =$ {glue:text}`imb_term:.2f` is not small next to
# $\|\Delta\|/2 =$ {glue:text}`half_delta:.2f`, and the measured drop is {glue:text}`imb_ratio:.2f` times the
# balanced formula, while the general formula still matches (relative error {glue:text}`imb_general_err:.1e`).
# The first steps then move $v$ partly along the shared centre, not only along $\Delta$. The larger the shared
# component relative to the distinguishability (as in LLM hidden states), the smaller the imbalance that
# suffices: chapters on real features should use exactly balanced training sets or the general formula.
#
# ## Loss decrease and weight change grow with distinguishability

# %%
order = []
for noise in noises:
    part = summary[summary["noise"] == noise]
    order.append({
        "noise": noise,
        "Spearman rho(PD, loss decrease)": spearmanr(part["PD"], part["loss decrease"]).statistic,
        "Spearman rho(PD, final weight change)": spearmanr(part["PD"], part["final weight change"]).statistic,
    })
order = pd.DataFrame(order)
rho_loss_min = float(order["Spearman rho(PD, loss decrease)"].min())
rho_dw_min = float(order["Spearman rho(PD, final weight change)"].min())
page.glue("rho_loss_min", rho_loss_min)
page.glue("rho_dw_min", rho_dw_min)
page.table(order, columns={"noise": "noise", "Spearman rho(PD, loss decrease)": "Spearman ρ(PD, loss decrease)",
                           "Spearman rho(PD, final weight change)": "Spearman ρ(PD, final ‖ΔW‖)"},
           formats={"Spearman rho(PD, loss decrease)": ".3f", "Spearman rho(PD, final weight change)": ".3f"})

# %% [markdown]
# Ranked against the distinguishability, the full-training-set loss decrease after {glue:text}`steps_per_run`
# steps has a Spearman correlation of at least {glue:text}`rho_loss_min:.2f`, and the final weight change at
# least {glue:text}`rho_dw_min:.2f`, for both noise laws.
#
# ## Claim checks

# %%
claims.check_at_most("A1", "closed-form gradient = autograd gradient of the literal DPO loss (relative error)",
                     grad_rel_err, 1e-6, kind="identity")
claims.check_at_most("A2", "only the Yes and No rows get a gradient (max |gradient| elsewhere)", other_rows_max, 1e-12,
                     kind="identity")
claims.check_at_most("A3", "the Yes and No row gradients are opposite (||grad_Y + grad_N||)", yes_plus_no, 1e-12,
                     kind="identity")
claims.check_at_most("A4", "the loss depends on W only through w_Y - w_N (max |loss change| under the shifts)",
                     invariance_err, 1e-12, kind="identity")
claims.check_fraction("A5", "only two rows of W move during training", only_two_rows, len(runs), 1.0,
                      kind="identity")
claims.check_at_most("A6", "W(T) - W(0) is rank one (max sigma_2 / sigma_1 over the runs)", rank_ratio_max, 1e-10,
                     kind="identity")
claims.check_at_most("A7", "first full-batch step: drop = eta beta^2 ||Delta||^2 / 8, balanced "
                     "(max relative error over the runs)", first_rel_err_max, 0.1, kind="identity")
claims.check_at_most("A8", "first full-batch step, imbalanced: drop = eta (beta^2/2) ||p mu+ - (1-p) mu-||^2 "
                     "(relative error)", imb_general_err, 0.1, kind="identity")
claims.check_fraction("A9", "||W(t) - W(0)|| <= sqrt(2) eta beta t max||g|| at every logged step",
                      bound_hits, bound_total, 1.0, kind="identity")
claims.check_at_least("A10", "||W(t) - W(0)|| is linear over the first half of training (min R^2 of a line fit)",
                      r2_min, 0.99, kind="claim")
claims.check_at_most("A11", "early slope of ||W(t) - W(0)|| = (sqrt(2)/4) eta beta ||Delta|| (max relative "
                     "deviation of the fitted slope)", slope_dev_max, 0.1, kind="claim")
claims.check_at_least("A12", "loss decrease after T steps grows with PD (min Spearman rho over noise laws)",
                      rho_loss_min, 0.9, kind="claim")
claims.check_at_least("A13", "weight change after T steps grows with PD (min Spearman rho over noise laws)",
                      rho_dw_min, 0.9, kind="claim")
page.report()

# %% [markdown]
# A1-A6 hold by the algebra of the reduction (A1 compares two computations of the same gradient); A7 and A8 are
# the first-order expansion of the loss, exact up to an $O(\eta^2)$ term that is tiny at these step sizes; A9 holds
# because $\sigma \le 1$. They verify the implementation. A10-A13 test what the reconstruction predicts for the
# speed of learning, and could fail: A10 and A11 rest on an early-time approximation, A12 and A13 on the paper's
# statement that distinguishability orders the speed.
#
# ## What differs from the paper
#
# The embeddings here are synthetic (a shared centre, a class-mean gap along one direction, Gaussian or Laplace
# noise), not Llama-2-7B hidden states of persona questions, and the head has {glue:text}`vocab_g` rows of
# dimension {glue:text}`d_g` instead of 32,000 rows of dimension 4096. Nothing in the reduction depends on these
# sizes: the algebra is exact for any vocabulary and dimension, which is why the same library function trains the
# real `lm_head` of SmolLM2 in the chapters on real features. The training and test sets are exactly balanced;
# the official code's random 90/10 split of a 500/500 behaviour is not, and the section on balance shows how much
# that can matter. The paper's bounds are stated with constants and assumptions (an $\alpha$-subexponential embedding
# law) that we could not read; the constants checked here ($\eta\beta^2\|\Delta\|^2/8$,
# $\sqrt2\,\eta\beta\,t\,\max_i\|g_i\|$) are those of our reconstruction, and the bound we check is a simple
# deterministic one, not the paper's high-probability bound. The declared differences:

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
