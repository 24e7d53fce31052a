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
# (chen-09-finite-samples)=
# # Finite samples: averaging hides oscillations, collapse paths vary
#
# :::{admonition} Key result
# :class: tip
# With finitely many sampled comparisons per round, every run in the unstable regime keeps rotating (smallest
# per-run time variance {glue:text}`u_min:.3f`), but the runs drift out of phase and their average is
# {glue:text}`u_ratio:.0f` times flatter: an averaged curve looks stable although no run is. On a strongly
# transitive matrix with $\alpha = 1$, {glue:text}`n_collapsed` of {glue:text}`n_seeds_g` seeds collapse onto the
# top response, each at its own round ({glue:text}`t_collapse_lo` to {glue:text}`t_collapse_hi`).
#
# ```{glue:figure} fig_average
# :alt: The last rounds of three single runs, their average and the population map, in two regimes.
# :name: fig-chen09-average
#
# $\pi_t(y_1)$ over the last {glue:text}`zoom_g` rounds: three single finite-sample runs (colours), the average
# of all runs (black) and the population map (dashed). Left, unstable regime: every run rotates, each in its own
# phase, and their average swings far less. Right, stable regime: all stay near the fixed point.
# ```
# :::
#
# ## Claim
#
# In the paper's finite-sample experiments {cite}`chen2026sampling`, each round of iterative alignment learns
# from a finite set of sampled, labelled comparisons instead of the population matrix. The paper reports that
# random phase differences between realisations make **averaged curves look falsely stable**, hiding the
# oscillations of the individual runs, and that **collapse paths vary a lot across realisations**. The paper's
# exact protocol is not known to us; *the protocol and the pass criteria here are our reconstruction* (the
# project's notes, check c9).
#
# Each round $t$ of MRS-IPO draws $N$ pairs $(y, y') \sim \mu_t \otimes \mu_t$ with
# $\mu_t = \lambda\pi_t + (1-\lambda)\pi_0$, labels each by a Bernoulli($P_{yy'}$) coin, and takes the exact
# minimiser of the empirical IPO loss {cite}`azar2024general`
#
# $$
# \begin{aligned}
# r_t &= \arg\min_r \sum_{n=1}^N \big(r_{w_n} - r_{l_n} - \tfrac{\beta}{2}\big)^2, \\
# \log\pi_{t+1} &= \alpha\log\pi_t + (1-\alpha)\log\pi_{\mathrm{ref}} + r_t + \mathrm{const},
# \end{aligned}
# $$
#
# a least-squares problem on the comparison graph (its Laplacian; minimum-norm solution). As $N \to \infty$ this
# is the population map of the previous chapters.
#
# ## Setting
#
# We run {glue:text}`n_seeds_g` seeds on the rock-paper-scissors matrix in an unstable and a stable regime and
# compare the **per-run time variance** with the **time variance of the averaged trajectory**; then
# {glue:text}`n_seeds_g` seeds with $\alpha = 1$ on a strongly transitive (Bradley-Terry {cite}`bradley1952rank`)
# matrix, where every run should collapse onto the top response, each on its own path. The policies are tabular
# (exact per-round optima of the empirical loss), not trained language models.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed
n_seeds = 20  # [2..10000] independent finite-sample runs per regime
cycle_a = 0.5  # [0.01..0.5] advantage a of the 3-cycle
n_pairs = 2000  # [1..10000000] labelled pairs per round on the 3-cycle {smoke: 300}
steps = 300  # [10..100000] rounds on the 3-cycle {smoke: 80}
window = 100  # [2..100000] last rounds over which time variances are measured (at most steps + 1) {smoke: 30}
unstable = [0.5, 4.0, 0.9]  # [>= 0; len 3] (alpha, beta, lambda) of the unstable regime
stable = [0.5, 2.0, 1.0]  # [>= 0; len 3] (alpha, beta, lambda) of the stable regime
sst_scores = [1.5, 0.8, 0.3, -0.5]  # [len 2..10] Bradley-Terry scores of the strongly transitive matrix
sst_beta = 0.1  # [> 0] beta of the alpha = 1 runs
sst_lam = 0.8  # [0..1] lambda of the alpha = 1 runs
sst_pairs = 500  # [1..10000000] labelled pairs per round on the SST matrix {smoke: 200}
sst_pairs_few = 20  # [1..10000000] a much smaller number of pairs per round, to widen the spread of collapse paths
sst_steps = 400  # [10..100000] rounds on the SST matrix {smoke: 100}
pairwise_seeds = 2  # [0..100] seeds re-run with the pair-by-pair reference implementation {smoke: 1}

# %% [markdown]
# **Paper-scale settings.** The paper's finite-sample settings are not known to us. The defaults are the
# project's reference check (c9):
#
# | setting | reference check c9 | this chapter's default |
# |---|---|---|
# | 3-cycle | $a = 0.5$, $N$ = 2,000 pairs/round, $T$ = 300, variances over the last 100, 20 seeds | the same |
# | unstable regime $(\alpha, \beta, \lambda)$ | (0.5, 4, 0.9), $\rho^2 = 1.33$ | the same |
# | stable regime | (0.5, 2, 1), $\rho^2 = 0.583$ | the same |
# | SST | BT (1.5, .8, .3, -.5), $\alpha = 1$, $\beta = 0.1$, $\lambda = 0.8$, $N = 500$, $T = 400$ | also $N = 20$ |
#
# More seeds or data, e.g. `python3 run.py chapter chen_09_finite_samples -p n_seeds=200 -p n_pairs=20000`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis_lib import dynamics as dyn
from analysis_lib import preferences as pr
from analysis_lib.page import start_page
from analysis_lib.plotting import figure_size, ordered_colors, panel_grid

page = start_page("chen_09_finite_samples", seed)
rng, claims = page.rng, page.claims
if window > steps + 1:
    raise ValueError(f"window: must be at most steps + 1 = {steps + 1}, got {window}")
for setting in (unstable, stable):
    dyn.validate_rates(*setting)
P_cycle = pr.cyclic_matrix(cycle_a)
regimes = {"unstable": unstable, "stable": stable}
rho2 = {name: float(dyn.cyclic_rho_squared(cycle_a, *s)) for name, s in regimes.items()}
page.glue("rho2_unstable", rho2["unstable"])
page.glue("rho2_stable", rho2["stable"])

# %% [markdown]
# No difference from the paper is declared for any check: the checks test what finite sampling does to the
# dynamics, which neither the matrices (the project's reference 3-cycle and Bradley-Terry matrix instead of
# HelpSteer's) nor the tabular policy could excuse.
#
# ## Averaging hides the oscillation
#
# For each regime: {glue:text}`n_seeds_g` independent runs from the uniform policy, each round with
# {glue:text}`n_pairs_g` fresh labelled pairs. The time variance is $\sum_i \mathrm{Var}_t\,\pi_t(i)$ over the
# last {glue:text}`window_g` rounds (the cycle strength of the previous chapters), once per run and once for the
# average of the runs' trajectories. The population map is shown for reference; its linearisation at the
# uniform fixed point has $\rho^2$ = {glue:text}`rho2_unstable:.3f` in the unstable regime and
# {glue:text}`rho2_stable:.3f` in the stable one.

# %%
page.glue("n_seeds_g", n_seeds)
page.glue("n_pairs_g", n_pairs)
page.glue("window_g", window)
runs, population, variances = {}, {}, {}
for name, (alpha, beta, lam) in regimes.items():
    runs[name] = dyn.run_empirical_mrs_ipo_runs(P_cycle, alpha, beta, lam, steps, n_pairs, n_seeds, rng)
    pop = dyn.run_mrs_ipo(P_cycle, alpha, beta, lam, steps, start=[1 / 3 + 0.01, 1 / 3 - 0.005, 1 / 3 - 0.005],
                          tail=window, record=True)
    population[name] = np.exp(pop.history)
    per_run, averaged = dyn.averaging_variances(runs[name], window)
    variances[name] = {"per_run": per_run, "averaged": averaged, "population": float(pop.cycle_strength)}

table = pd.DataFrame({name: {"ρ² (population, at uniform)": rho2[name],
                             "mean per-run time variance": v["per_run"].mean(),
                             "smallest per-run time variance": v["per_run"].min(),
                             "time variance of the averaged trajectory": v["averaged"],
                             "ratio per-run / averaged": v["per_run"].mean() / v["averaged"],
                             "population map (start near uniform)": v["population"]}
                      for name, v in variances.items()})
u, s = variances["unstable"], variances["stable"]
page.glue("u_per_run", float(u["per_run"].mean()))
page.glue("u_min", float(u["per_run"].min()))
page.glue("u_avg", u["averaged"])
page.glue("u_ratio", float(u["per_run"].mean() / u["averaged"]))
page.glue("s_per_run", float(s["per_run"].mean()))
page.glue("s_avg", s["averaged"])

zoom = min(40, steps)  # the figure shows the last rounds, where single runs can be told apart
page.glue("zoom_g", zoom)
fig, axes = panel_grid(2, ncols=2, aspect=0.85, sharey=True)
colors = ordered_colors(3)
for ax, name in zip(axes, regimes, strict=True):
    t = np.arange(steps + 1)[-zoom:]
    for k in range(min(3, n_seeds)):
        ax.plot(t, runs[name][k, -zoom:, 0], color=colors[k], lw=1.0, marker=".", ms=4,
                label="single runs" if k == 0 else None)
    ax.plot(t, runs[name][:, -zoom:, 0].mean(0), color="black", lw=2.2, label=f"average of {n_seeds} runs")
    ax.plot(t, population[name][-zoom:, 0], color="grey", ls="--", lw=1, label="population map")
    ax.set(title=f"{name}: ρ² = {rho2[name]:.2f}", xlabel="round", ylabel=r"$\pi_t(y_1)$", ylim=(0, 1))
fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
page.figure("fig_average", fig)
page.table(table.rename_axis("3-cycle, finite samples"), index=True, formats={c: ".3g" for c in table.columns})

# %% [markdown]
# In the unstable regime every run keeps rotating (mean per-run time variance {glue:text}`u_per_run:.3f`, the
# smallest {glue:text}`u_min:.3f`), but the runs drift out of phase, so their average flattens: its time
# variance is only {glue:text}`u_avg:.4f`, {glue:text}`u_ratio:.0f` times smaller
# ({numref}`fig-chen09-average`, in the key result above). An averaged curve would suggest a system settling down
# although no single run does. In the stable regime both are small (per-run {glue:text}`s_per_run:.1e`, averaged
# {glue:text}`s_avg:.1e`): what remains is sampling noise around the fixed point.
#
# The distribution over seeds:

# %%
spread = pd.DataFrame([{"regime": name, "seed": k, "per-run time variance": v}
                       for name in regimes for k, v in enumerate(variances[name]["per_run"])])
fig, ax = plt.subplots(figsize=figure_size(1.0, aspect=0.4), layout="constrained")
sns.stripplot(spread, x="per-run time variance", y="regime", hue="regime", palette=ordered_colors(2), ax=ax,
              size=6, jitter=0.2, legend=False)
for i, name in enumerate(regimes):
    ax.scatter(variances[name]["averaged"], i, marker="X", s=120, color="black", zorder=3,
               label="averaged trajectory" if i == 0 else None)
ax.set(xscale="log", xlabel=r"time variance $\sum_i \mathrm{Var}_t\,\pi_t(i)$ (last window)", ylabel=None)
ax.legend(loc="center right")
page.figure("fig_seeds", fig)

# %% [markdown]
# ```{glue:figure} fig_seeds
# :alt: Strip plot of the per-run time variances of every seed in both regimes, with the averaged trajectory's.
# :name: fig-chen09-seeds
#
# Time variance of each seed's run (dots) and of the averaged trajectory (black cross): in the unstable regime
# every run lies far above its average.
# ```
#
# **Cross-check of the implementation.** The runs above use the count form of the round (one multinomial draw of
# the $K^2$ winner-loser counts, then the Laplacian solve), which is statistically identical to drawing the
# pairs one by one and about as many times faster as there are runs (the library's tests check both the solve
# and the distribution). We re-run {glue:text}`pairwise_seeds_g` seeds of the unstable regime with the
# pair-by-pair reference implementation:

# %%
page.glue("pairwise_seeds_g", pairwise_seeds)
pairwise = [dyn.run_empirical_mrs_ipo(P_cycle, *unstable, steps, n_pairs, np.random.default_rng([seed, k]))
            for k in range(pairwise_seeds)]
pairwise_var = [float(dyn.cycle_strength(p[-window:])) for p in pairwise]
page.glue("pairwise_var", ", ".join(f"{v:.3f}" for v in pairwise_var) or "none")
page.glue("count_range", f"{u['per_run'].min():.3f} to {u['per_run'].max():.3f}")
inside = all(u["per_run"].min() <= v <= u["per_run"].max() for v in pairwise_var)
page.glue("pairwise_verdict", "inside" if inside else "not all inside")

# %% [markdown]
# Their per-run time variances are {glue:text}`pairwise_var`, {glue:text}`pairwise_verdict` the range
# {glue:text}`count_range` of the count-form runs.
#
# ## Collapse under strong transitivity: every seed, its own path
#
# With $\alpha = 1$ the reference follows the model completely, and on a strictly strongly transitive matrix the
# population dynamics collapse onto the top response (chapter {ref}`chen-06-entropy-collapse`). We run
# {glue:text}`n_seeds_g` seeds with {glue:text}`sst_pairs_g` pairs per round (the reference check) and with only
# {glue:text}`sst_pairs_few_g`.

# %%
page.glue("sst_pairs_g", sst_pairs)
page.glue("sst_pairs_few_g", sst_pairs_few)
P_sst = pr.bradley_terry_matrix(sst_scores)
top = int(np.argmax(sst_scores))
sst_pop = np.exp(dyn.run_mrs_ipo(P_sst, 1.0, sst_beta, sst_lam, sst_steps, record=True).history)
H_pop = pr.entropy(sst_pop)
sst = {}
for N in (sst_pairs, sst_pairs_few):
    traj = dyn.run_empirical_mrs_ipo_runs(P_sst, 1.0, sst_beta, sst_lam, sst_steps, N, n_seeds, rng)
    collapsed = traj[:, :, top] > 0.99
    sst[N] = {"H": pr.entropy(traj), "p_top": traj[:, :, top], "collapsed_at_T": collapsed[:, -1],
              "first": np.where(collapsed.any(1), collapsed.argmax(1), -1)}
checkpoints = sorted({min(c, sst_steps) for c in (50, 100, 200, sst_steps)})
rows = []
for N, r in sst.items():
    for c in checkpoints:
        rows.append({"pairs per round": N, "round": c, "H_min": r["H"][:, c].min(), "H_max": r["H"][:, c].max(),
                     "H_pop": H_pop[c], "p_top_min": r["p_top"][:, c].min()})
sst_table = pd.DataFrame(rows)
main, few = sst[sst_pairs], sst[sst_pairs_few]
t100 = min(100, sst_steps)
page.glue("H100_lo", float(main["H"][:, t100].min()))
page.glue("H100_hi", float(main["H"][:, t100].max()))
page.glue("H100_lo_few", float(few["H"][:, t100].min()))
page.glue("H100_hi_few", float(few["H"][:, t100].max()))
page.glue("HT_lo", float(main["H"][:, -1].min()))
page.glue("HT_hi", float(main["H"][:, -1].max()))
page.glue("ptop_min", float(main["p_top"][:, -1].min()))
page.glue("n_collapsed", int(main["collapsed_at_T"].sum()))
page.glue("n_collapsed_few", int(few["collapsed_at_T"].sum()))
for key, r in (("", main), ("_few", few)):
    valid = r["first"] >= 0
    page.glue(f"t_collapse_lo{key}", int(r["first"][valid].min()) if valid.any() else -1)
    page.glue(f"t_collapse_hi{key}", int(r["first"][valid].max()) if valid.any() else -1)

fig, axes = panel_grid(2, ncols=2, aspect=0.85)
for (N, r), color in zip(sst.items(), ordered_colors(2), strict=True):
    for k in range(n_seeds):
        label = f"N = {N} pairs per round" if k == 0 else None
        z = 3 if N == sst_pairs else 2  # the reference setting on top
        axes[0].plot(r["H"][k], color=color, lw=0.7, alpha=0.7, label=label, zorder=z)
        axes[1].plot(r["p_top"][k], color=color, lw=0.7, alpha=0.7, label=label, zorder=z)
axes[0].plot(H_pop, color="black", ls="--", lw=1.5, label="population map")
axes[1].plot(sst_pop[:, top], color="black", ls="--", lw=1.5, label="population map")
axes[0].set(xlabel="round", ylabel=r"entropy of $\pi_t$", yscale="log", title="entropy")
axes[1].set(xlabel="round", ylabel=r"$\pi_t(\mathrm{top})$", title="mass on the top response")
axes[1].axhline(0.99, color="grey", ls=":", lw=1)
fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
page.figure("fig_collapse", fig)
page.table(sst_table, columns={"pairs per round": "pairs per round", "round": "round",
                               "H_min": "entropy: min over seeds", "H_max": "entropy: max over seeds",
                               "H_pop": "entropy: population map", "p_top_min": "π(top): min over seeds"},
           formats={"H_min": ".3g", "H_max": ".3g", "H_pop": ".3g", "p_top_min": ".3g"})

# %% [markdown]
# ```{glue:figure} fig_collapse
# :alt: Entropy and mass on the top response against round for every seed with 500 and 20 pairs per round.
# :name: fig-chen09-collapse
#
# Every seed's collapse path with $\alpha = 1$ on the Bradley-Terry matrix, for two numbers of pairs per round,
# and the population map (dashed): all head for the top response; with fewer pairs the paths spread further.
# ```
#
# All seeds head for the top response, each on its own path. With {glue:text}`sst_pairs_g` pairs per round the
# entropy at round 100 ranges over {glue:text}`H100_lo:.3f` to {glue:text}`H100_hi:.3f` across seeds and the first
# round with $\pi_t(\mathrm{top}) > 0.99$ over {glue:text}`t_collapse_lo` to {glue:text}`t_collapse_hi`; with
# {glue:text}`sst_pairs_few_g` pairs the spread widens to {glue:text}`H100_lo_few:.3f` to
# {glue:text}`H100_hi_few:.3f` and rounds {glue:text}`t_collapse_lo_few` to {glue:text}`t_collapse_hi_few`. At the
# end {glue:text}`n_collapsed` of {glue:text}`n_seeds_g` seeds ({glue:text}`sst_pairs_g` pairs; smallest
# $\pi_T(\mathrm{top})$ {glue:text}`ptop_min:.4f`, entropies {glue:text}`HT_lo:.3f` to {glue:text}`HT_hi:.3f`) and
# {glue:text}`n_collapsed_few` of {glue:text}`n_seeds_g` ({glue:text}`sst_pairs_few_g` pairs) have
# $\pi_T(\mathrm{top}) > 0.99$. Sampling noise changes *when* a run collapses, not *whether*: the drift towards
# the top response acts in every round, and the noise only jitters it.
#
# ## Claim checks
#
# All six checks test the paper's statements in our reconstruction. "Small" in the stable regime means a time
# variance below 0.01: fluctuations of a policy coordinate of a few hundredths (a sinusoid of amplitude $A$ on each
# of the three coordinates has time variance $3A^2/2$, so 0.01 is $A \approx 0.08$).

# %%
claims.check_at_least("F1", "unstable regime: mean per-run time variance / variance of the averaged trajectory",
                      float(u["per_run"].mean() / u["averaged"]), 5.0, kind="claim")
claims.check_at_least("F2", "unstable regime: every run oscillates (smallest per-run time variance)",
                      float(u["per_run"].min()), 0.01, kind="claim")
claims.check_at_most("F3", "stable regime: mean per-run time variance", float(s["per_run"].mean()), 0.01,
                     kind="claim")
claims.check_at_most("F4", "stable regime: time variance of the averaged trajectory", s["averaged"], 0.01,
                     kind="claim")
claims.check_fraction("F5", f"SST, alpha = 1, {sst_pairs} pairs per round: seeds that collapse (p_top > 0.99 "
                      "at the last round)", int(main["collapsed_at_T"].sum()), n_seeds, 1.0, kind="claim")
claims.check_fraction("F6", f"SST, alpha = 1, {sst_pairs_few} pairs per round: seeds that collapse (p_top > 0.99 "
                      "at the last round)", int(few["collapsed_at_T"].sum()), n_seeds, 1.0, kind="claim")
page.report()

# %% [markdown]
# ## What differs from the paper
#
# These are exact per-round optima of the *empirical* IPO loss on a tabular policy, not trained language models;
# the matrices are the project's reference 3-cycle and BT matrix, not the paper's HelpSteer matrices (unavailable
# offline). The variance window, the number of seeds and the threshold of "small" are our choices; the 5x
# criterion and the regimes are the project's reference check, whose numbers (0.137 per run against 0.018
# averaged; 4e-4 against 2e-5 in the stable regime) we reproduce in magnitude. The ratio per-run / averaged grows
# with the number of seeds (the average of $S$ runs with independent phases has about $1/S$ of the per-run
# variance), so it is a property of the averaging, which is exactly the paper's point. No difference from the
# paper is declared for any check.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# :list: bullet
# ```

# %% tags=["remove-input"]
page.footer()
