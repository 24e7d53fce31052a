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
# (chen-06-entropy-collapse)=
# # Entropy collapse under strongly transitive preferences
#
# :::{admonition} Key result
# :class: tip
# On a strongly transitive matrix the limit of MRS-IPO depends on $(\alpha, \beta, \lambda)$ only through
# $\kappa = \beta\lambda/(1-\alpha)$ (limits at equal $\kappa$ agree to {glue:text}`kappa_spread:.0e`), and its
# entropy falls from nearly $\log K$ to {glue:text}`H_at_50:.4f` at $\kappa = 50$. With a self-referential
# reference ($\alpha = 1$) the policy collapses onto the top response (terminal entropy at most
# {glue:text}`a1_max_HT:.0e`), and on {glue:text}`n_random_total` random strongly transitive matrices every gap
# to the top response grows at every step.
#
# ```{glue:figure} fig_kappa_key
# :alt: Terminal entropy against kappa for three values of alpha; the three curves coincide and fall towards 0.
# :name: fig-chen06-kappa-key
#
# Terminal entropy of MRS-IPO against $\kappa = \beta\lambda/(1-\alpha)$ for three $\alpha$: the curves lie on
# top of each other and fall towards 0 (dotted: $\log K$).
# ```
# :::
#
# ## Claim
#
# Iterative alignment "can exhibit ... entropy collapse for certain parameter choices"
# {cite}`chen2026sampling`. For strongly transitive preferences (strong stochastic transitivity, SST: if
# $P_{ij} \ge \tfrac12$ and $P_{jk} \ge \tfrac12$ then $P_{ik} \ge \max(P_{ij}, P_{jk})$), the paper states that
# the key quantity of MRS-IPO is the ratio
#
# $$\kappa = \frac{\beta\lambda}{1-\alpha}:$$
#
# for $\alpha < 1$ the fixed reference prevents exact collapse, but as $\kappa$ grows the limit puts arbitrarily
# much mass on the top response; for $\alpha = 1$ the entropy eventually decreases monotonically and the policy
# converges to the deterministic policy on the top response. *The precise form here is our reconstruction*
# (secondary summaries of the paper, re-derived by us). For $\alpha < 1$ the fixed point solves
#
# $$\log\pi^\star = \log\pi_{\mathrm{ref}} + \tfrac{\beta(1-\lambda)}{1-\alpha}P\pi_0 + \kappa P\pi^\star + c,$$
#
# so with $\lambda = 1$ the limit depends on $(\alpha, \beta)$ only through $\kappa$. Row dominance (which SST
# implies) gives $\pi^\star_1 \ge \pi_{\mathrm{ref},1}$ and, for every $j$,
#
# $$\frac{\pi^\star_j}{\pi^\star_1} \;\le\; \frac{\pi_{\mathrm{ref},j}}{\pi_{\mathrm{ref},1}}
# \exp\!\big(-\kappa\,\pi_{\mathrm{ref},1}(\tfrac12 - P_{j1})\big) \xrightarrow[\kappa\to\infty]{} 0 .$$
#
# For $\alpha = 1$, $z_{t+1} = z_t + \beta P\mu_t$ and every gap $z_1 - z_j$ grows by at least
# $\beta\lambda\pi_{t,1}(\tfrac12 - P_{j1}) > 0$ per step. Once the policy is ordered like the ranking, every
# likelihood ratio $\pi_i/\pi_j$ ($i$ above $j$) keeps growing, so the new policy majorises the old one and the
# entropy can only fall (our derivation).
#
# ## Setting
#
# We sweep $\kappa$ for several $\alpha$ on a Bradley-Terry matrix {cite}`bradley1952rank` (BT matrices are SST),
# check that the curves coincide, check the bound above at every fixed point, run $\alpha = 1$ from a uniform and
# from an adversarial start, and repeat the $\alpha = 1$ collapse on random BT matrices and on random strongly
# transitive matrices that are not BT. Everything is exact population dynamics in float64.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed
scores = [1.5, 0.8, 0.3, -0.5]  # [len 3..10] Bradley-Terry scores
temperature = 1.0  # [> 0] BT temperature
alphas = [0.0, 0.5, 0.9]  # [0..0.999; len 1..8] alpha values whose kappa curves are compared
kappa_min = 0.5  # [> 0] smallest kappa of the sweep (below kappa_max)
kappa_max = 100.0  # [> 0] largest kappa of the sweep
kappa_points = 30  # [2..1000] log-spaced kappa values, plus 1, 2, 5, 10, 20, 50 {smoke: 6}
steps = 3000  # [10..100000] iterations per run (the paper: 3,000) {smoke: 300}
alpha_one_betas = [0.1, 0.1, 0.02]  # [> 0; len 1..10] beta of the alpha = 1 runs
alpha_one_lams = [1.0, 0.3, 1.0]  # [0..1; len 1..10] lambda of those runs (as many as alpha_one_betas)
worst_start = [0.05, 0.05, 0.1, 0.8]  # [> 0; len 3..10] a start favouring the worst response (one per score)
adversarial_beta = 0.1  # [> 0] beta of the alpha = 1 run from worst_start (lambda = 1)
n_random = 200  # [1..100000] random BT and as many non-BT SST matrices, alpha = 1 {smoke: 10}
random_K_max = 6  # [3..10] the random matrices have K = 3..random_K_max
random_beta = 1.0  # [> 0] beta of the random alpha = 1 runs (lambda = 1)
map_points = 64  # [4..400] alpha and beta*lambda values of the entropy map {smoke: 6}

# %% [markdown]
# **Paper-scale settings.** The paper runs 3,000 iterations on 4,924 strongly transitive HelpSteer matrices
# (not available offline; see {ref}`chen-08-real-preferences` for a substitute). The reference check (c6) used the
# BT scores (1.5, 0.8, 0.3, -0.5) at temperature 1, $\lambda = 1$, uniform $\pi_{\mathrm{ref}} = \pi_0$,
# uniform start, $T$ = 3,000.
#
# | setting | paper / reference check | this chapter's default |
# |---|---|---|
# | iterations | 3,000 | `steps = 3000` |
# | matrix | HelpSteer SST / BT (1.5, .8, .3, -.5) | BT (1.5, .8, .3, -.5), 200 random BT, 200 random non-BT SST |
# | $\kappa$ values | 1, 2, 5, 10, 20, 50 (c6) | 30 log-spaced in [0.5, 100] plus those |
# | $\alpha = 1$ runs | $(\beta, \lambda)$ = (.1, 1), (.1, .3), (.02, 1) | the same |
#
# More random matrices: `python3 run.py chapter chen_06_entropy_collapse -p n_random=5000 -p random_K_max=8`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis_lib import dynamics as dyn
from analysis_lib.page import start_page
from analysis_lib.plotting import figure_size, ordered_colors, panel_grid
from analysis_lib.preferences import (
    bradley_terry_matrix,
    is_bradley_terry,
    is_strictly_sst,
    random_bt_matrix,
    random_sst_matrix,
)

page = start_page("chen_06_entropy_collapse", seed)
rng, claims = page.rng, page.claims
if len(alpha_one_betas) != len(alpha_one_lams):
    raise ValueError("alpha_one_betas, alpha_one_lams: must have the same length")
if len(worst_start) != len(scores):
    raise ValueError(f"worst_start: needs one entry per score ({len(scores)}), got {len(worst_start)}")
if kappa_min >= kappa_max:
    raise ValueError(f"kappa_min, kappa_max: need kappa_min < kappa_max, got {kappa_min} >= {kappa_max}")
P = bradley_terry_matrix(scores, temperature)
K = P.shape[0]
top = int(np.argmax(scores))
page.glue("log_K", float(np.log(K)))
page.glue("is_sst", "yes" if is_strictly_sst(P) else "no")

# %% [markdown]
# No difference from the paper is declared for any check: every check below tests a property that the
# reconstructed argument guarantees for *any* strictly strongly transitive matrix, so neither the matrices (BT
# and random instead of HelpSteer's) nor the scale could excuse a failure.
#
# ## Terminal entropy as a function of $\kappa$
#
# One batched run covers every ($\alpha$, $\kappa$) pair, with $\beta = \kappa(1-\alpha)$, $\lambda = 1$,
# uniform references, uniform start. We also solve the fixed point directly (damped Newton). The matrix is
# strictly SST (tested: {glue:text}`is_sst`).

# %%
reference_kappas = np.array([1.0, 2.0, 5.0, 10.0, 20.0, 50.0])
kappas = np.unique(np.concatenate([np.geomspace(kappa_min, kappa_max, kappa_points), reference_kappas]))
alpha_arr = np.array(alphas)
betas = kappas[None, :] * (1 - alpha_arr[:, None])
sweep = dyn.run_mrs_ipo(P, alpha_arr[:, None], betas, 1.0, steps)
fixed = dyn.mrs_ipo_fixed_point(P, alpha_arr[:, None], betas, 1.0)
H = sweep.entropy  # (alpha, kappa)
kappa_spread = float(np.ptp(sweep.policy, axis=0).max())  # same kappa, different alpha
iterate_vs_fixed = float(np.abs(sweep.policy - np.exp(fixed)).max())
decreasing = bool(np.all(np.diff(H, axis=1) < 0))
H_at_50 = float(H[:, np.searchsorted(kappas, 50.0)].max())
page.glue("kappa_spread", kappa_spread)
page.glue("iterate_vs_fixed", iterate_vs_fixed)
page.glue("H_at_50", H_at_50)

def entropy_panel(ax, legend=True):
    """Terminal entropy against kappa, one curve per alpha; markers shrink so that coinciding curves stay visible."""
    for i, (a, color) in enumerate(zip(alphas, ordered_colors(len(alphas)), strict=True)):
        size = 3 + 6 * (len(alphas) - 1 - i) / max(len(alphas) - 1, 1)
        ax.plot(kappas, H[i], color=color, marker="o", markersize=size, lw=1.5, label=f"α = {a:g}" if legend else None)
    ax.axhline(np.log(K), color="grey", ls=":", lw=1)
    ax.set(xscale="log", xlabel=r"$\kappa = \beta\lambda/(1-\alpha)$", ylabel=r"entropy of $\pi_T$")


fig, ax = plt.subplots(figsize=figure_size(0.8), layout="constrained")
entropy_panel(ax)
ax.legend(title=None)
page.figure("fig_kappa_key", fig)

fig, axes = panel_grid(2, ncols=2)
entropy_panel(axes[0])
axes[0].legend(title=None)
axes[0].set_title("same κ, same limit")
for i in range(K):
    axes[1].plot(kappas, sweep.policy[0, :, i], color=ordered_colors(K)[i], label=f"y{i + 1} ({scores[i]:g})")
axes[1].set(xscale="log", xlabel=r"$\kappa$", ylabel=r"$\pi_T$", title="limit policy (α = 0)")
axes[1].legend(title="response (score)")
page.figure("fig_kappa", fig)

idx_ref = np.searchsorted(kappas, reference_kappas)
table_c6 = pd.DataFrame({"kappa": reference_kappas})
for i, a in enumerate(alphas):
    table_c6[f"H (α = {a:g})"] = H[i, idx_ref]
table_c6["pi_T(top)"] = sweep.policy[0, idx_ref, top]
page.table(table_c6, columns={"kappa": "κ", **{c: c for c in table_c6.columns[1:-1]}, "pi_T(top)": "π_T(top)"},
           formats={"kappa": "g", **{c: ".4f" for c in table_c6.columns[1:]}})

# %% [markdown]
# ```{glue:figure} fig_kappa
# :alt: Left, terminal entropy against kappa for three alphas (coinciding curves); right, the limit policy.
# :name: fig-chen06-kappa
#
# Left: the terminal entropy depends on $\kappa$ alone. Right: the limit policy at $\alpha = 0$; the top
# response takes over the mass as $\kappa$ grows.
# ```
#
# The terminal entropy falls from nearly $\log K$ = {glue:text}`log_K:.3f` to {glue:text}`H_at_50:.4f` at
# $\kappa = 50$, and the three $\alpha$ curves lie on top of each other: at equal $\kappa$ the final policies
# differ by at most {glue:text}`kappa_spread:.1e`. Every run has reached its fixed point (largest distance to the
# Newton solution {glue:text}`iterate_vs_fixed:.1e`). The table gives the reference check's $\kappa$ values.
#
# The same statement over the whole $(\alpha, \beta\lambda)$ plane: a {glue:text}`map_points` x
# {glue:text}`map_points` grid, each cell iterated up to {glue:text}`map_steps` times (a trajectory stops early once it
# has settled on its fixed point; the library's early stop gives the same terminal values, to $10^{-9}$, as the
# full run). If the entropy depends on $\kappa = \beta\lambda/(1-\alpha)$ alone, its level sets are the lines
# $\beta\lambda = \kappa(1-\alpha)$ drawn in white.

# %%
map_alpha = np.linspace(0.0, 0.95, map_points)
map_gain = np.geomspace(0.1, 20.0, map_points)
entropy_map = dyn.run_mrs_ipo(P, map_alpha[:, None], map_gain[None, :], 1.0, steps, early_stop=True).entropy
fig, ax = plt.subplots(figsize=figure_size(0.85, aspect=0.72), layout="constrained")
mesh = ax.pcolormesh(map_gain, map_alpha, entropy_map, cmap="plasma", shading="nearest")
fig.colorbar(mesh, ax=ax, label=r"entropy of $\pi_T$")
for k in (1.0, 2.0, 5.0, 10.0, 20.0, 50.0):
    a_line = np.linspace(0.0, 0.95, 200)
    g_line = k * (1 - a_line)
    keep = (g_line >= map_gain[0]) & (g_line <= map_gain[-1])
    ax.plot(g_line[keep], a_line[keep], color="white", lw=1)
    if keep.any():
        ax.annotate(f"κ={k:g}", (g_line[keep][0], a_line[keep][0]), color="white", fontsize=10,
                    xytext=(2, 2), textcoords="offset points")
ax.set(xscale="log", xlabel=r"$\beta\lambda$", ylabel=r"$\alpha$")
page.figure("fig_entropy_map", fig)
page.glue("map_points", map_points)
page.glue("map_steps", steps)

# %% [markdown]
# ```{glue:figure} fig_entropy_map
# :alt: Heatmap of the terminal entropy over alpha and beta-lambda with white lines of constant kappa.
# :name: fig-chen06-entropy-map
#
# Terminal entropy over the $(\alpha, \beta\lambda)$ plane: the colour follows the white lines of constant
# $\kappa$, so the entropy depends on $\kappa$ alone.
# ```
#
# ## The concentration bound at every fixed point
#
# We evaluate both sides of the inequality above at each fixed point of the sweep (uniform $\pi_{\mathrm{ref}}$,
# so its right-hand side is $\exp(-\kappa(\tfrac12 - P_{j1})/K)$), together with $\pi^\star_1 \ge
# \pi_{\mathrm{ref},1}$.

# %%
pi_star = np.exp(fixed[0])  # alpha = 0 row: the limit depends on kappa only
ref = np.full(K, 1 / K)
others = [j for j in range(K) if j != top]
lhs = pi_star[:, others] / pi_star[:, [top]]
rhs = (ref[others] / ref[top])[None, :] * np.exp(-kappas[:, None] * ref[top] * (0.5 - P[others, top])[None, :])
bound_slack = float((lhs / rhs).max())
top_above_ref = bool(np.all(pi_star[:, top] >= ref[top]))
page.glue("bound_slack", bound_slack)

fig, ax = plt.subplots(figsize=figure_size(0.8), layout="constrained")
for n, j in enumerate(others):
    ax.plot(kappas, lhs[:, n], color=ordered_colors(K)[j], label=f"π*_{j + 1} / π*_{top + 1}")
    ax.plot(kappas, rhs[:, n], color=ordered_colors(K)[j], ls="--", lw=1)
ax.set(xscale="log", yscale="log", xlabel=r"$\kappa$", ylabel="ratio")
ax.legend()
page.figure("fig_bound", fig)

# %% [markdown]
# ```{glue:figure} fig_bound
# :alt: Log-log plot of the ratios pi*_j / pi*_1 against kappa (solid) below their bounds (dashed).
# :name: fig-chen06-bound
#
# Measured ratios $\pi^\star_j/\pi^\star_1$ (solid) and their bounds (dashed, same colour): every ratio stays
# below its bound and falls much faster at large $\kappa$.
# ```
#
# The largest ratio of the measured $\pi^\star_j/\pi^\star_1$ to its bound is {glue:text}`bound_slack:.3f`
# (at most 1 as derived); the bound is loose at large $\kappa$, where the actual ratios fall much faster.
#
# ## $\alpha = 1$: collapse, eventually monotone
#
# With a fully self-referential reference there is no interior fixed point. We run the reference settings from
# the uniform start, and one run from an initial policy that favours the *worst* response. An entropy *increase*
# is $H_{t+1} > H_t(1 + 10^{-10}) + 10^{-300}$: above round-off, and above the subnormal numbers that entropies
# near $10^{-320}$ reach late in the fastest runs.

# %%
a1_betas = np.array(alpha_one_betas + [adversarial_beta])
a1_lams = np.array(alpha_one_lams + [1.0])
a1_starts = np.array([np.full(K, 1 / K)] * len(alpha_one_betas) + [worst_start])
a1 = dyn.run_mrs_ipo(P, 1.0, a1_betas, a1_lams, steps, start=a1_starts, record_entropy=True)
Ht = a1.entropy_history  # (steps + 1, runs)
rise_tol = 1e-10  # an "increase" is H_{t+1} > H_t (1 + rise_tol) + 1e-300: above round-off and subnormals


def increases(h):
    """Indices t with H_{t+1} > H_t (1 + rise_tol) + 1e-300."""
    return np.flatnonzero(h[1:] > h[:-1] * (1 + rise_tol) + 1e-300)


rises = [increases(Ht[:, r]) for r in range(Ht.shape[1])]
last_rise = [int(x.max()) + 1 if x.size else 0 for x in rises]  # t0: no increase after it
starts = ["uniform"] * len(alpha_one_betas) + ["worst"]
t_mid, t_late = min(100, steps), min(1000, steps)
a1_table = pd.DataFrame({"run": [f"β = {b:g}, λ = {lm:g}, {s} start" for b, lm, s in zip(a1_betas, a1_lams, starts,
                                                                                             strict=True)],
                         "H_0": Ht[0], "H_mid": Ht[t_mid], "H_late": Ht[t_late], "H_T": Ht[-1],
                         "pi_T(top)": a1.policy[:, top],
                         "rises": [f"{x.size} (last at {t})" if x.size else "none" for x, t in zip(rises, last_rise,
                                                                                                  strict=True)]})
page.glue("worst_t0", last_rise[-1])
page.glue("worst_Hmax", float(Ht[:, -1].max()))
page.glue("worst_H0", float(Ht[0, -1]))
fast = a1_betas >= 0.1  # the slow beta = 0.02 run needs more than 3,000 steps (reference check: H_T = 5e-4)
uniform_runs = np.arange(len(alpha_one_betas))
page.glue("a1_max_HT", float(Ht[-1, fast].max()))
page.glue("slow_HT", float(Ht[-1, ~fast].max()) if np.any(~fast) else float("nan"))
page.glue("steps_g", steps)

fig, ax = plt.subplots(figsize=figure_size(1.0, aspect=0.5), layout="constrained")
for r in range(Ht.shape[1]):
    ax.plot(np.maximum(Ht[:, r], 1e-300), color=ordered_colors(Ht.shape[1])[r], label=a1_table.run[r])
ax.set(yscale="log", xlabel="iteration", ylabel=r"entropy of $\pi_t$", ylim=(1e-25, 3))
ax.legend(loc="lower left")
page.figure("fig_alpha_one", fig)
page.table(a1_table, columns={"run": "run (α = 1)", "H_0": "H₀", "H_mid": f"H at t = {t_mid}",
                              "H_late": f"H at t = {t_late}", "H_T": f"H at T = {steps}", "pi_T(top)": "π_T(top)",
                              "rises": "entropy increases"},
           formats={"H_0": ".3f", "H_mid": ".3f", "H_late": ".1e", "H_T": ".1e", "pi_T(top)": ".6f"})

# %% [markdown]
# ```{glue:figure} fig_alpha_one
# :alt: Entropy against iteration on a log scale for four alpha = 1 runs; all fall, the worst-start run rises first.
# :name: fig-chen06-alpha-one
#
# Entropy of $\pi_t$ for $\alpha = 1$: from the uniform start it only falls; from the worst start (last curve)
# it first rises while mass leaves the worst response, then falls.
# ```
#
# The runs with $\beta \ge 0.1$ end on the top response (largest terminal entropy {glue:text}`a1_max_HT:.1e`);
# the slow run ($\beta = 0.02$) is still on its way after {glue:text}`steps_g` steps (entropy
# {glue:text}`slow_HT:.1e`, as in the reference check). From the uniform start the entropy never increases. From
# the adversarial start the entropy first *rises*, from {glue:text}`worst_H0:.3f` to {glue:text}`worst_Hmax:.3f`,
# as mass leaves the worst response; its last increase is at $t_0$ = {glue:text}`worst_t0`, after which it
# decreases monotonically: "eventually monotone".
#
# ## Random strongly transitive matrices
#
# The same collapse on {glue:text}`n_random_g` random BT matrices ($K$ = 3 to {glue:text}`random_K_max_g`, scores
# $N(0, 1)$, temperature $U(0.2, 2)$) and on {glue:text}`n_random_g` random strictly SST matrices that are *not*
# BT (the library's `random_sst_matrix`: upper triangle in ranked coordinates increasing along rows and decreasing
# down columns, each entry drawn above the larger of its inner neighbours; none is BT, which we test),
# $\alpha = \lambda = 1$, $\beta$ = {glue:text}`random_beta_g`, random Dirichlet(1) starts. The argument above
# uses only row dominance and strict SST, not the BT form, so it should hold for both kinds.

# %%
page.glue("n_random_g", n_random)
page.glue("random_K_max_g", random_K_max)
page.glue("random_beta_g", random_beta)
random_rows = []
n_sst_not_bt, n_strict = 0, 0
for kind in ("BT", "SST, not BT"):
    for K_r in range(3, random_K_max + 1):
        n_K = n_random // (random_K_max - 2) + (1 if K_r - 3 < n_random % (random_K_max - 2) else 0)
        if n_K == 0:
            continue
        if kind == "BT":
            P_r = random_bt_matrix(K_r, rng, size=n_K)  # sorted: response 0 is the best, 1 the second, ...
        else:
            P_r = random_sst_matrix(K_r, rng, size=n_K)  # sorted the same way
            n_sst_not_bt += int(np.sum(~np.asarray(is_bradley_terry(P_r))))
        n_strict += int(np.sum(is_strictly_sst(P_r)))
        run_r = dyn.run_mrs_ipo(P_r, 1.0, random_beta, 1.0, steps, start=rng.dirichlet(np.ones(K_r), size=n_K),
                                record=True, record_entropy=True)
        E, Z = run_r.entropy_history, run_r.history  # (t, n), (t, n, K)
        gaps_grow = np.all(np.diff(Z[:, :, :1] - Z[:, :, 1:], axis=0) > 0, axis=(0, 2))  # z_top - z_j, every step
        sorted_t = np.all(np.diff(Z, axis=-1) <= 0, axis=-1)  # policy ordered by rank at t
        for i in range(n_K):
            inc = increases(E[:, i])
            first_sorted = int(np.argmax(sorted_t[:, i])) if sorted_t[:, i].any() else None
            random_rows.append({"kind": kind, "K": K_r, "pi_T(top)": run_r.policy[i, 0], "H_T": E[-1, i],
                                "top is argmax": bool(np.argmax(run_r.policy[i]) == 0),
                                "gaps grow every step": bool(gaps_grow[i]),
                                "first sorted": first_sorted,
                                "last increase t0": int(inc.max()) + 1 if inc.size else 0})
random_table = pd.DataFrame(random_rows)
became_sorted = random_table["first sorted"].notna()
monotone_after_sorted = became_sorted & (random_table["last increase t0"] <= random_table["first sorted"])
per_kind = {}
for kind, g in random_table.groupby("kind", sort=False):
    srt = became_sorted[g.index]
    per_kind[kind] = {"n": len(g), "top": int(g["top is argmax"].sum()), "collapsed": int((g["H_T"] < 1e-6).sum()),
                      "gaps": int(g["gaps grow every step"].sum()), "sorted": int(srt.sum()),
                      "monotone": int(monotone_after_sorted[g.index].sum()),
                      "never_sorted": int(len(g) - srt.sum()),
                      "rising_late": int((g["last increase t0"] > steps // 2).sum()),
                      "rising_at_T": int((g["last increase t0"] == steps).sum()),
                      "median_H": float(g["H_T"].median()), "max_H": float(g["H_T"].max())}
for kind, tag in (("BT", "bt"), ("SST, not BT", "sst")):
    for key, val in per_kind[kind].items():
        page.glue(f"{tag}_{key}", val)
page.glue("n_sst_not_bt", n_sst_not_bt)
page.glue("n_strict", n_strict)
page.glue("n_random_total", len(random_table))
by_K = random_table.groupby(["kind", "K"], sort=False).agg(
    matrices=("H_T", "size"), median_H_T=("H_T", "median"), max_H_T=("H_T", "max"),
    top_is_argmax=("top is argmax", "mean"), max_t0=("last increase t0", "max")).reset_index()
page.table(by_K, columns={"kind": "matrices", "K": "K", "matrices": "count", "median_H_T": "median H_T",
                          "max_H_T": "largest H_T", "top_is_argmax": "top response first",
                          "max_t0": "last entropy increase (latest t₀)"},
           formats={"median_H_T": ".1e", "max_H_T": ".1e", "top_is_argmax": ".0%"})

# %% [markdown]
# All {glue:text}`n_random_total` matrices are strictly SST, and {glue:text}`n_sst_not_bt` of the
# {glue:text}`n_random_g` of the second kind fail the BT test. The table below counts, per kind, what happened
# within {glue:text}`steps_g` steps.

# %%
labels = {"top": "top response carries the most mass", "collapsed": "entropy below 1e-6",
          "gaps": "every gap z_1 − z_j grew at every step", "sorted": "policy became rank-ordered",
          "monotone": "… and its entropy never rose after that", "never_sorted": "never rank-ordered",
          "rising_late": "last entropy increase after T/2", "rising_at_T": "entropy still rising at the last step",
          "median_H": "median terminal entropy", "max_H": "largest terminal entropy"}
outcomes = pd.DataFrame({"outcome": ["matrices"] + list(labels.values())})
for kind, vals in per_kind.items():
    outcomes[kind] = [vals["n"]] + [vals[k] for k in labels]
page.table(outcomes, columns={"outcome": f"within T = {steps} steps", "BT": "BT", "SST, not BT": "SST, not BT"})

# %% [markdown]
# Matrices whose top two responses are nearly tied ($P_{21}$ close to $\tfrac12$) collapse slowly: the gap
# $z_1 - z_2$ grows by about $\beta\pi_{t,1}(\tfrac12 - P_{21})$ per step, so within a finite horizon such a matrix
# may not yet put the top response first, may never have become rank-ordered, or may still have a rising entropy:
# the table's counts of those cases need not be zero, and they are reported, not claimed. What the argument
# guarantees at every step is the mechanism: every gap $z_1 - z_j$ grows. The entropy can rise while mass moves
# from a better-placed but worse response to a better one; once the policy is ordered like the ranking, the
# entropy can only fall (the rows "policy became rank-ordered" and "… and its entropy never rose after that"
# count it).
#
# ## Claim checks
#
# C1-C10 test the reconstructed statements (they would fail if the reconstruction or the paper's statement were
# wrong for these matrices); C11 checks the library's constructor of non-BT strongly transitive matrices.

# %%
claims.check("C1", "terminal entropy strictly decreasing in kappa (every alpha)", decreasing, True, decreasing,
              "strictly decreasing", kind="claim")
claims.check_at_most("C2", "terminal entropy at kappa = 50 (largest over alphas)", H_at_50, 0.01, kind="claim")
claims.check_at_most("C3", "same kappa, same limit: max difference of pi_T across alphas", kappa_spread, 1e-10,
                     kind="claim")
claims.check("C4", "fixed-point concentration bound pi*_j/pi*_1 <= (ref_j/ref_1) exp(-kappa ref_1 (1/2 - P_j1)) "
             "and pi*_1 >= ref_1 (largest measured/bound ratio)", bound_slack, "<= 1, pi*_1 >= ref_1",
             bound_slack <= 1 + 1e-9 and top_above_ref, "<= 1, pi*_1 >= ref_1", kind="claim")
claims.check_at_most("C5", "alpha = 1, beta >= 0.1: largest terminal entropy", float(Ht[-1, fast].max()), 1e-6,
                     kind="claim")
top_min = float(a1.policy[fast, top].min())
claims.check("C6", "alpha = 1, beta >= 0.1: smallest pi_T(top)", top_min, ">= 1 - 1e-6", top_min >= 1 - 1e-6,
             ">= 1 - 1e-6", kind="claim")
claims.check("C7", "alpha = 1 from the uniform start (all beta, lambda): the entropy never increases (increases)",
             sum(len(rises[r]) for r in uniform_runs), 0, all(len(rises[r]) == 0 for r in uniform_runs),
             "no increase", kind="claim")
claims.check("C8", "alpha = 1 from the worst start: entropy rises, then never increases after t0 (t0, rises)",
             (last_rise[-1], len(rises[-1])), "0 < t0 <= T/2",
             0 < last_rise[-1] <= steps // 2, "0 < t0 <= T/2", kind="claim")
for kind, tag in (("BT", ""), ("SST, not BT", "b")):
    k = per_kind[kind]
    claims.check_fraction(f"C9{tag}", f"random {kind} matrices, alpha = 1: every gap z_top - z_j grows at every step",
                          k["gaps"], k["n"], 1.0, kind="claim")
    claims.check_fraction(f"C10{tag}", f"random {kind} matrices, alpha = 1: no entropy increase once the policy is "
                          "rank-ordered", k["monotone"], k["sorted"], 1.0, kind="claim")
expected_c11 = f"({len(random_table)}, {per_kind['SST, not BT']['n']})"
claims.check("C11", "the non-BT constructor: every matrix strictly SST, every second-kind matrix not "
             "Bradley-Terry (counts: strictly SST, not BT)", (n_strict, n_sst_not_bt), expected_c11,
             n_strict == len(random_table) and n_sst_not_bt == per_kind["SST, not BT"]["n"], expected_c11,
             kind="identity")
page.report()

# %% [markdown]
# ## What differs from the paper
#
# These are exact population dynamics in float64 at the paper's horizon; the matrices are a BT matrix from the
# project's reference check and random BT and non-BT strictly SST matrices, not HelpSteer's (unavailable
# offline). The $\kappa$ statement, the concentration bound and the $\alpha = 1$ argument are our reconstruction
# of what the paper states. Full collapse within {glue:text}`steps_g` steps is not guaranteed for every random
# matrix: nearly tied top responses collapse slowly. So the claim checks on the random matrices are the two
# properties our argument guarantees at every step (C9, C10, C9b, C10b: the gaps to the top grow; no entropy
# increase once the policy is rank-ordered), and the rest is reported as measured, not claimed: the top response
# carries the most mass in {glue:text}`bt_top` of {glue:text}`bt_n` BT and {glue:text}`sst_top` of
# {glue:text}`sst_n` non-BT matrices, {glue:text}`bt_never_sorted` BT and {glue:text}`sst_never_sorted` non-BT
# matrices never became rank-ordered, and {glue:text}`bt_rising_at_T` BT and {glue:text}`sst_rising_at_T` non-BT
# matrices still had a rising entropy at the last step. No difference from the paper is declared for any check
# (none would explain a failure: the checked properties hold for every strictly strongly transitive matrix).
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# :list: bullet
# ```

# %% tags=["remove-input"]
page.footer()
