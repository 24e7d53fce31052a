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
# (beyond-01-mrs-loop-lm)=
# # SmolLM2 in the MRS loop stays close to the tabular map, and its prompts couple weakly
#
# :::{admonition} Key result
# :class: tip
# With SmolLM2-135M as the policy of the MRS-IPO loop ({glue:text}`M_cyc` cyclic and {glue:text}`M_tra` transitive
# FineGrainedRLHF prompts, {glue:text}`rounds_g` rounds, four settings), the model's candidate distributions stay close
# to the tabular map run from the same start: mean total variation {glue:text}`tv_lm_cyc:.2f` (cyclic) and
# {glue:text}`tv_lm_tra:.2f` (transitive) after the last round; it ends {glue:text}`h4b_outcome`
# ({glue:text}`tv_sampled:.3f` for the table against the model's {glue:text}`tv_lm_all:.3f`; per prompt, the 90%
# interval of their difference is [{glue:text}`h4b_low:.3f`, {glue:text}`h4b_high:.3f`]). The model rotated in
# {glue:text}`h1a_hits` of the {glue:text}`h1a_total` cyclic cases where the table rotates (few: the model's peaked
# starting distributions make most fixed points stable) and in {glue:text}`h1b_rot` of the {glue:text}`h1b_total` stable
# ones; on the transitive prompts its entropy fell as $\kappa$ grew, and at the largest $\kappa$ ended below the start
# on {glue:text}`h2b_hits` of {glue:text}`M_tra` prompts. One set of weights couples the prompts, but weakly: training
# one moved the others by {glue:text}`coupling_ratio:.2f` of its own move ({glue:text}`h4a_outcome`).
#
# ```{glue:figure} fig_paths
# :alt: Candidate probabilities over the rounds for example prompts, the language model next to the tabular map.
# :name: fig-beyond01-paths-key
#
# One cyclic prompt at the strongest and the weakest feedback of the grid, and one transitive prompt at the
# strongest: the language model (solid) next to the tabular map from the same start (dashed).
# ```
# :::
#
# ## Claim
#
# Chen et al. {cite}`chen2026sampling` analyse iterated alignment as a map on preference matrices: each round the
# sampler mixes the current policy with an offline one, $\mu_t = \lambda\pi_t + (1-\lambda)\pi_0$, the reference
# follows the policy geometrically, $\pi_{\mathrm{ref}}^{(t)} \propto \pi_t^{\alpha}\pi_{\mathrm{ref}}^{1-\alpha}$,
# and the next policy is the round's exact IPO optimum {cite}`azar2024general`,
# $\pi_{t+1} \propto \pi_{\mathrm{ref}}^{(t)} e^{\beta P\mu_t}$ (MRS-IPO). Under cyclic preferences the map keeps
# rotating when its fixed point is unstable (for the symmetric 3-cycle with uniform references:
# $\alpha^2 + a^2\beta^2\lambda^2/3 > 1$); under strongly transitive preferences the policy concentrates, the more
# the larger $\kappa = \beta\lambda/(1-\alpha)$ (the book's {ref}`chen-04-cyclic-oscillation` and
# {ref}`chen-06-entropy-collapse`; the thresholds are our reconstructions). The paper trains no language model.
# Im & Li {cite}`im2024understanding` train one, for one round. **Neither runs the loop with a real language
# model as the policy.** This chapter does: SmolLM2-135M-Instruct {cite}`allal2025smollm2` is the policy, its
# distribution over a prompt's candidate responses is its own sequence probability renormalised over the
# candidates, and each round is a few IPO steps with LoRA on pairs drawn from $\mu_t$ with labels drawn from $P$.
#
# These are our own experiments. The hypotheses, stated before the runs:
#
# - **H1 (oscillation).** On cyclic prompts, where the tabular map rotates over the rounds run here, the language
#   model's distribution rotates too (every candidate leads in turn); where the tabular fixed point is stable, it
#   does not rotate.
# - **H2 (entropy and $\kappa$).** On strongly transitive prompts the language model's entropy after the last
#   round falls as $\kappa$ grows, and at the largest $\kappa$ it ends below where it started.
# - **H3 (agreement).** The language model stays close to the tabular path (mean total variation at the last
#   round at most 0.2 in each regime).
# - **H4 (why it deviates).** One set of weights couples the prompts, which the tabular map (one table per
#   prompt) does not: training on one prompt moves the other prompts' distributions by at least a tenth as much,
#   and the language model ends farther from the exact tabular path than a table trained on the same number of
#   sampled pairs (so finite samples alone do not explain its deviation). The second part is decided on the
#   per-prompt difference of the two distances (averaged over the grid points) with a 90% bootstrap interval over
#   the prompts: it holds when the whole interval is above zero, does not hold when it is below, and is undecided
#   otherwise. We added this rule after two builds (bf16 and float32 arithmetic) put the mean difference on
#   opposite sides of zero, which a bare comparison of two means cannot tell from noise.
#
# As a baseline for H1 and H2 we also check, over the same few rounds, the tabular statements themselves (they are
# asymptotic in the paper).
#
# ## Setting
#
# **Candidates and preferences.** The prompts come from the FineGrainedRLHF qa-feedback data
# {cite}`wu2023finegrained` (four model answers per question, six human pairwise preferences). Each prompt gets
# $K = 3$ candidates by a rule fixed before any run: three of the question's answers, cut to their first
# `n_tokens` tokens after the token prefix the three share (the shared prefix joins the prompt, so the candidates
# are the points where the answers part). Cyclic prompts take $P$ from {ref}`chen-08-real-preferences`'s
# construction (one randomly chosen attribute per pair: human Copeland score, length, F1 against the gold answer;
# a triple with a majority cycle); transitive prompts take $P_{ij} = \sigma(c_i - c_j)$ from the human Copeland
# scores $c$ alone (a Bradley-Terry {cite}`bradley1952rank` matrix, strictly transitive on a triple with distinct
# scores). From a pool of `pool` questions per regime we keep the `per_regime` on which the model's initial
# candidate distribution has the largest entropy (a rule on $\pi_0$ only: where the model already puts all its mass
# on one candidate, nothing can rotate).
#
# **The loop** (`analysis_lib.iterated`). The policy $\pi_t(k \mid x)$ is the softmax over the candidates of
# the model's summed token log-probs. $\pi_{\mathrm{ref}} = \pi_0$ = the model's initial distribution. Round $t$
# draws `n_pairs` pairs per prompt from $\mu_t\otimes\mu_t$ with Bernoulli($P$) labels (self-pairs dropped), sets the
# reference of each candidate to $\alpha\log\pi_t + (1-\alpha)\log\pi_{\mathrm{ref}}$ (precomputed reference
# log-probs: no reference model exists), and runs `steps` full-batch IPO steps of the book's trainer with TRL's
# $\tau = 1/\beta$ (target $\beta/2$: Chen et al.'s $\beta$ is the preference strength). All prompts share one LoRA
# adapter (r = 8, alpha = 32 on `q_proj` and `v_proj`, the official code's) on the top `lora_layers` decoder
# layers; the layers below are frozen, so their outputs are computed once per sequence and cached. The tabular
# prediction iterates `analysis_lib.dynamics.run_mrs_ipo` with the same $P$, $\alpha$, $\beta$, $\lambda$
# and $\pi_0$; a second tabular path uses the same finite samples (the exact optimum of each round's pairs).
#
# **Measures**, fixed before the runs: a path *rotates* when every candidate leads (is the most probable one by at
# least 0.1) at some round; the *cycle strength* is $\sum_k \mathrm{Var}_t\,\pi_t(k)$ over the last `window`
# rounds; distances are total variation. H2's monotonicity allows a rise of at most 0.02 nats between neighbouring
# $\kappa$.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed (question order, attribute draws, pairs, training)
model_id = "smollm2"  # model: 'smollm2' or a Llama-family model folder / hub id
per_regime = 5  # [2..100] prompts per regime (cyclic, transitive) in the loop {smoke: 2}
pool = 10  # [2..500] candidate prompts per regime, of which the per_regime most uncertain are kept {smoke: 2}
n_tokens = 4  # [1..64] tokens per candidate, after the three answers' common prefix
max_prompt_tokens = 24  # [4..1024] longest prompt (question and common prefix) in tokens
lam = 1.0  # [0..1] on-policy fraction lambda of the sampler; beta = (beta*lambda) / lambda
alphas = [0.0, 0.5]  # [0..0.95; len 2..4] the alpha grid of the language model's loops {smoke: [0.0, 0.5]}
gains = [2.0, 10.0]  # [> 0; len 2..4] the beta*lambda grid of the language model's loops {smoke: [2.0, 10.0]}
rounds = 8  # [2..200] MRS rounds {smoke: 2}
steps = 3  # [1..1000] IPO steps per round (full batch) {smoke: 1}
lr = 0.01  # [> 0] Adam learning rate of the LoRA adapter
n_pairs = 64  # [1..100000] pairs drawn per prompt and round (before self-pairs are dropped)
lora_layers = 1  # [1..64] decoder layers (from the top) with LoRA adapters
precision = "float32"  # [one of: float32, bfloat16, auto] arithmetic: float32 everywhere (bf16 gave other verdicts)
window = 4  # [2..200] rounds over which the cycle strength is measured (at most rounds + 1) {smoke: 2}
coupling_prompts = 2  # [1..200] prompts trained alone in the coupling measurement {smoke: 1}
table_steps = 400  # [10..100000] Adam steps of the tabular identity check {smoke: 50}
grid_points = 13  # [3..101] points per axis of the tabular phase diagram {smoke: 5}

# %% [markdown]
# **Paper-scale settings.** The paper iterates exact optima on HelpSteer matrices for 3,000 iterations; it trains no
# model. Our loop is new, so there is no paper scale for it; the table says what a GPU run would change.
#
# | setting | the paper (tabular) | this chapter's default | a GPU run |
# |---|---|---|---|
# | policy | a table per prompt | SmolLM2-135M-Instruct, one LoRA adapter | a 1-7B model, LoRA on every layer |
# | data | HelpSteer, 4 responses | FineGrainedRLHF: 5 + 5 prompts, 3 candidates of 4 tokens | 50 + 50 prompts |
# | round | exact optimum | 64 sampled pairs per prompt, 3 Adam steps | 1,000 pairs, 20 steps |
# | rounds | 3,000 | 8 | 60 |
# | grid | unknown | $\alpha \in \{0, 0.5\}$, $\beta\lambda \in \{2, 10\}$, $\lambda = 1$ | 4 x 4 |
#
# A GPU run is one process (`ANALYSIS_LIB_DEVICE=cuda python3 run.py chapter beyond_01_mrs_loop_lm
# -p per_regime=50 -p pool=100 -p rounds=60 -p n_pairs=1000 -p steps=20 -p lora_layers=30 -p n_tokens=16
# -p max_prompt_tokens=256`); the candidate model has no data-parallel hook, so `accelerate launch` does not apply.

# %%
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis_lib import dynamics as dyn
from analysis_lib import iterated as it
from analysis_lib.claims import bootstrap_interval
from analysis_lib.data import load_finegrained_qa
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.training import CausalLMPolicy, LoraSettings

page = start_page("beyond_01_mrs_loop_lm", seed)
rng, claims = page.rng, page.claims
if window > rounds + 1:
    raise ValueError(f"window: must be at most rounds + 1 = {rounds + 1}, got {window}")
if pool < per_regime:
    raise ValueError(f"pool: must be at least per_regime = {per_regime}, got {pool}")
if coupling_prompts > 2 * per_regime:
    raise ValueError(f"coupling_prompts: at most the {2 * per_regime} prompts of the loop, got {coupling_prompts}")
for name, grid in (("alphas", alphas), ("gains", gains)):
    if np.any(np.diff(grid) <= 0):
        raise ValueError(f"{name}: must be increasing, got {grid}")
claims.declare("T1", "adaptation",
               f"rotation over {rounds} rounds (every candidate leads by 0.1 at some round) is our criterion; the "
               "paper's oscillation is a cycle strength over the last 1,000 of 3,000 iterations")
claims.declare("T2", "scale", f"entropy after {rounds} rounds instead of the paper's limit (3,000 iterations)")
claims.declare(["T1", "T2"], "data",
               "FineGrainedRLHF prompts (3 candidates, the model's own pi_0 as reference) instead of HelpSteer "
               "matrices with uniform references")

# %% [markdown]
# ## Prompts, candidates and the model's starting distribution

# %%
fg = load_finegrained_qa()
policy = CausalLMPolicy(model_id, trainable="lora", lora=LoraSettings(layers=lora_layers), frozen_prefix=True,
                        cache_reference=False, template="raw_newline", precision=precision)
candidates = it.finegrained_candidates(fg, policy.tokenizer, rng, per_regime=pool, n_tokens=n_tokens,
                                       max_prompt_tokens=max_prompt_tokens)
pool_entropy = dyn.log_policy_entropy(it.CandidateLM(policy, candidates.encoded).log_policy())
keep = np.concatenate([np.flatnonzero(candidates.regime == r)[np.argsort(-pool_entropy[candidates.regime == r],
                                                                           kind="stable")[:per_regime]]
                       for r in it.REGIMES])
prompts = candidates.take(keep)
model = it.CandidateLM(policy, prompts.encoded)
log_pi_0 = model.log_policy()
pi_0 = np.exp(log_pi_0)
P, regime = prompts.P, prompts.regime
cyc, tra = regime == "cyclic", regime == "transitive"
M, K = model.shape
start_table = pd.DataFrame({
    "regime": regime, "prompt": [p[-70:] if len(p) <= 70 else "…" + p[-69:] for p in prompts.encoded.prompts],
    "candidates": [" | ".join(c.strip() for c in cs) for cs in prompts.encoded.candidates],
    "pi_0": [", ".join(f"{x:.2f}" for x in row) for row in pi_0],
    "H_0": dyn.log_policy_entropy(log_pi_0)})
page.glue("M_cyc", int(cyc.sum()))
page.glue("M_tra", int(tra.sum()))
page.glue("pool_g", pool)
page.glue("pool_H_median", float(np.median(pool_entropy)))
page.glue("kept_H_median", float(np.median(start_table["H_0"])))
page.table(start_table, columns={"regime": "regime", "prompt": "prompt (end)", "candidates": "candidates",
                                 "pi_0": "π₀", "H_0": "entropy"}, formats={"H_0": ".2f"})

# %% [markdown]
# The table lists the {glue:text}`M_cyc` cyclic and {glue:text}`M_tra` transitive prompts (the end of each prompt,
# the three candidates, the model's starting distribution and its entropy; $\log 3 \approx 1.10$ is uniform). On the
# pool of {glue:text}`pool_g` questions per regime the median starting entropy is {glue:text}`pool_H_median:.2f`;
# on the kept prompts {glue:text}`kept_H_median:.2f`.
#
# ## One round against the tabular map
#
# With the language model replaced by one logit per candidate (`analysis_lib.iterated.TabularCandidates`),
# the same round function, trained to convergence, must land on the exact optimum of the round's sampled pairs
# (a graph least-squares problem, `analysis_lib.preferences.empirical_ipo_optimum_counts`): this checks the
# mapping of Chen et al.'s $\beta$ to TRL's $\tau$, the per-candidate reference and the pair handling (an identity).
# Its distance to the exact map is the sampling error of one round.

# %%
table = it.TabularCandidates(M, K, log_pi_0)
one_round = it.mrs_round(table, P, alphas[-1], gains[-1] / lam, lam, log_pi_0, pi_0, n_pairs=n_pairs,
                         steps=table_steps, lr=0.1, rng=np.random.default_rng(seed))
table_error = float(np.abs(one_round.log_pi_next - one_round.empirical).max())
page.glue("table_error", table_error)
page.glue("one_round_sampling", float(it.total_variation(one_round.empirical, one_round.exact).mean()))

# %% [markdown]
# The table reaches the empirical optimum to {glue:text}`table_error:.1e` (largest log-probability difference); the
# empirical optimum lies at a mean total variation of {glue:text}`one_round_sampling:.3f` from the exact map.
#
# ## The loop on a grid of settings
#
# Every grid point starts from the same weights (the adapter is reset) and runs {glue:text}`rounds_g` rounds; the
# tabular paths start from the same $\pi_0$.

# %%
grid = [(a, g) for a in alphas for g in gains]
runs, sampled, rho = {}, {}, {}
for a, g in grid:
    with it.restored(model):
        runs[a, g] = it.run_mrs_loop(model, P, a, g / lam, lam, rounds, n_pairs=n_pairs, steps=steps, lr=lr,
                                     seed=seed, progress=True, desc=f"MRS loop alpha={a:g}, beta*lambda={g:g}")
    sampled[a, g] = it.sampled_tabular_path(P, a, g / lam, lam, rounds, pi_0=pi_0, n_pairs=n_pairs, seed=seed)
    rho[a, g] = dyn.fixed_point_spectral_radius(P, a, g / lam, lam, pi_ref=pi_0, pi_0=pi_0)
page.glue("rounds_g", rounds)


def kappa_of(a, g):
    return g / (1 - a)


summary = []
for (a, g), run in runs.items():
    lm_rot, tab_rot = it.rotates(run.history), it.rotates(run.tabular)
    for name, sel in (("cyclic", cyc), ("transitive", tra)):
        summary.append({
            "alpha": a, "gain": g, "kappa": kappa_of(a, g), "regime": name,
            "unstable": int((rho[a, g][sel] > 1).sum()),
            "rotating (table)": int(tab_rot[sel].sum()), "rotating (LM)": int(lm_rot[sel].sum()),
            "cycle strength (table)": float(run.cycle_strength(window, tabular=True)[sel].mean()),
            "cycle strength (LM)": float(run.cycle_strength(window)[sel].mean()),
            "entropy (table)": float(run.tabular_entropy[-1][sel].mean()),
            "entropy (LM)": float(run.entropy[-1][sel].mean()),
            "TV to table (LM)": float(run.distance[-1][sel].mean()),
            "TV to table (sampled table)": float(it.total_variation(sampled[a, g][-1], run.tabular[-1])[sel].mean())})
summary = pd.DataFrame(summary)
page.table(summary[summary.regime == "cyclic"],
           columns={"alpha": "α", "gain": "βλ", "unstable": "unstable fixed points",
                    "rotating (table)": "rotating: table", "rotating (LM)": "rotating: LM",
                    "cycle strength (table)": "cycle strength: table", "cycle strength (LM)": "cycle strength: LM"},
           formats={"alpha": "g", "gain": "g", "cycle strength (table)": ".3f", "cycle strength (LM)": ".3f"},
           caption=f"Cyclic prompts ({int(cyc.sum())}): counts of prompts, and means over them")
page.table(summary[summary.regime == "transitive"],
           columns={"alpha": "α", "gain": "βλ", "kappa": "κ", "entropy (table)": "entropy: table",
                    "entropy (LM)": "entropy: LM", "TV to table (LM)": "TV to table: LM",
                    "TV to table (sampled table)": "TV to table: sampled table"},
           formats={"alpha": "g", "gain": "g", "kappa": "g", "entropy (table)": ".3f", "entropy (LM)": ".3f",
                    "TV to table (LM)": ".3f", "TV to table (sampled table)": ".3f"},
           caption=f"Transitive prompts ({int(tra.sum())}): means after the last round")

# %% [markdown]
# On the cyclic prompts, "unstable fixed points" counts the prompts whose tabular fixed point (with the model's own
# $\pi_0$ as reference and offline sampler) has spectral radius above 1, "rotating" those whose path rotates over
# the {glue:text}`rounds_g` rounds. On the transitive prompts, with the grid points ordered by $\kappa$, the largest
# step of the mean entropy after the last round between neighbouring points is {glue:text}`rise_lm:+.3f` nats for
# the model and {glue:text}`rise_tab:+.3f` for the table (a negative value: a fall at every step).
#
# ### Paths of single prompts

# %%
strong, weak = (alphas[-1], gains[-1]), (alphas[0], gains[0])
run_s = runs[strong]
cs_tab = run_s.cycle_strength(window, tabular=True)
example_cyc = int(np.flatnonzero(cyc)[np.argmax(cs_tab[cyc])])
example_tra = int(np.flatnonzero(tra)[np.argmax(run_s.tabular_entropy[0][tra] - run_s.tabular_entropy[-1][tra])])
colours = ordered_colors(K)


def draw_path(ax, run, m, title):
    t = np.arange(rounds + 1)
    for k in range(K):
        ax.plot(t, np.exp(run.history[:, m, k]), color=colours[k], lw=2)
        ax.plot(t, np.exp(run.tabular[:, m, k]), color=colours[k], lw=1.2, ls="--")
    ax.set(title=title, xlabel="round", ylim=(-0.02, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


fig, axes = panel_grid(3, ncols=3, aspect=1.45, sharey=True)
draw_path(axes[0], run_s, example_cyc, f"cyclic, α={strong[0]:g}, βλ={strong[1]:g}")
draw_path(axes[1], runs[weak], example_cyc, f"cyclic, α={weak[0]:g}, βλ={weak[1]:g}")
draw_path(axes[2], run_s, example_tra, f"transitive, α={strong[0]:g}, βλ={strong[1]:g}")
axes[0].set(ylabel="probability")
handles = [Line2D([], [], color=colours[k], lw=2, label=f"candidate {k + 1}") for k in range(K)] + \
    [Line2D([], [], color="grey", lw=2, label="language model"),
     Line2D([], [], color="grey", lw=1.2, ls="--", label="tabular map")]
fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
page.figure("fig_paths", fig)
page.glue("example_cyc_rho", float(rho[strong][example_cyc]))
page.glue("example_cyc_rho_weak", float(rho[weak][example_cyc]))

# %% [markdown]
# ```{glue:figure} fig_paths
# :alt: Three panels of candidate probabilities against rounds, solid for the language model, dashed for the table.
# :name: fig-beyond01-paths
#
# One cyclic prompt at the strongest and the weakest feedback of the grid, and one transitive prompt at the
# strongest: the language model (solid) next to the tabular map from the same start (dashed).
# ```
#
# The cyclic example is the prompt whose tabular path rotates most at the strongest feedback (spectral radius of
# the tabular fixed point {glue:text}`example_cyc_rho:.2f` there, {glue:text}`example_cyc_rho_weak:.2f` at the
# weakest); the transitive example is the one whose tabular entropy falls most.
#
# ## The phase plot
#
# The tabular phase diagram over a fine $(\alpha, \beta\lambda)$ grid (same prompts, same $\pi_0$, the same
# {glue:text}`rounds_g` rounds) with the language model's values at its grid points on the same colour scale.

# %%
fine_a = np.linspace(0, max(alphas), grid_points)
fine_g = np.linspace(min(gains) / 2, max(gains) * 1.2, grid_points)
fine = dyn.run_mrs_ipo(P[:, None, None], fine_a[:, None], fine_g[None, :] / lam, lam, rounds,
                       pi_ref=pi_0[:, None, None], pi_0=pi_0[:, None, None], start=pi_0[:, None, None], record=True)
fine_cs = dyn.cycle_strength(np.exp(fine.history[-window:]), axis=0)  # (M, grid, grid)
fine_H = dyn.log_policy_entropy(fine.history[-1])
lm_cs = {k: r.cycle_strength(window)[cyc].mean() for k, r in runs.items()}
lm_H = {k: r.entropy[-1][tra].mean() for k, r in runs.items()}

fig, axes = panel_grid(2, ncols=2, aspect=0.9)
for ax, values, lm_values, title, cmap in (
        (axes[0], fine_cs[cyc].mean(0), lm_cs, "cycle strength, cyclic prompts", "plasma"),
        (axes[1], fine_H[tra].mean(0), lm_H, "entropy, transitive prompts", "viridis")):
    vmin = min(values.min(), min(lm_values.values()))
    vmax = max(values.max(), max(lm_values.values()))
    mesh = ax.pcolormesh(fine_g, fine_a, values, cmap=cmap, vmin=vmin, vmax=vmax, shading="nearest")
    ax.scatter([g for _, g in lm_values], [a for a, _ in lm_values], c=list(lm_values.values()), cmap=cmap,
               vmin=vmin, vmax=vmax, s=160, edgecolors="white", linewidths=2, zorder=3)
    fig.colorbar(mesh, ax=ax, location="bottom", shrink=0.9, pad=0.02)
    ax.set(title=title, xlabel="βλ", ylabel="α")
    ax.grid(False)
page.figure("fig_phase", fig)

# %% [markdown]
# ```{glue:figure} fig_phase
# :alt: Two heatmaps over alpha and beta*lambda from the tabular map, with circles showing the language model's values.
# :name: fig-beyond01-phase
#
# The tabular phase diagram over the same rounds (background) and the language model at its four grid points
# (circles, same colour scale): cycle strength over the last rounds on the cyclic prompts (left), entropy after the
# last round on the transitive prompts (right).
# ```
#
# ## Where the language model leaves the tabular path, and why

# %%
coupled = it.prompt_coupling(model, P, gains[-1] / lam, list(range(coupling_prompts)), n_pairs=n_pairs,
                             steps=steps, lr=lr, seed=seed)
table_coupling = it.prompt_coupling(it.TabularCandidates(M, K, log_pi_0), P, gains[-1] / lam,
                                    list(range(coupling_prompts)), n_pairs=n_pairs, steps=steps, lr=0.1, seed=seed)
ratio = float(coupled["ratio"].mean())
# over one trained prompt there is no spread to resample: the interval is the value itself
coupling_interval = bootstrap_interval(coupled["ratio"].to_numpy(), np.mean, seed=seed) if len(coupled) > 1 \
    else (ratio, ratio)
page.glue("coupling_ratio", ratio)
COUPLING_EXPECTED = 0.1  # H4a: the other prompts move by at least a tenth of the trained prompt's move
coupling_low, coupling_high = coupling_interval
page.glue("h4a_outcome", "we expected at least a tenth, as here" if coupling_low >= COUPLING_EXPECTED else
          "we expected at least a tenth: a finding" if coupling_high < COUPLING_EXPECTED else
          f"we expected at least a tenth; over the trained prompts the interval [{coupling_low:.2f}, "
          f"{coupling_high:.2f}] leaves it undecided")
page.glue("h4a_coupling", "reached the tenth we expected" if coupling_low >= COUPLING_EXPECTED else
          "is weaker than we expected (a finding)" if coupling_high < COUPLING_EXPECTED else
          f"is undecided against the tenth we expected (interval [{coupling_low:.2f}, {coupling_high:.2f}])")
page.glue("coupling_own", float(coupled["own"].mean()))
page.glue("coupling_others", float(coupled["others"].mean()))

fig, axes = panel_grid(2, ncols=2, aspect=0.95)
t = np.arange(rounds + 1)
regime_colours = dict(zip(it.REGIMES, ordered_colors(2), strict=True))
for name, sel in (("cyclic", cyc), ("transitive", tra)):
    lm_dist = np.mean([runs[k].distance[:, sel].mean(1) for k in grid], axis=0)
    table_dist = np.mean([it.total_variation(sampled[k], runs[k].tabular)[:, sel].mean(1) for k in grid], axis=0)
    axes[0].plot(t, lm_dist, color=regime_colours[name], lw=2, label=f"{name}: language model")
    axes[0].plot(t, table_dist, color=regime_colours[name], lw=1.5, ls="--", label=f"{name}: sampled table")
axes[0].set(title="distance to the exact tabular path", xlabel="round", ylabel="mean total variation")
fig.legend(handles=axes[0].get_legend_handles_labels()[0], loc="outside lower center", ncols=2, frameon=False)
bars = pd.DataFrame({"prompt": np.repeat(coupled["prompt"].to_numpy() + 1, 2),
                     "moved": np.column_stack([coupled["own"], coupled["others"]]).ravel(),
                     "which": ["trained prompt", "other prompts (mean)"] * len(coupled)})
sns.barplot(data=bars, x="prompt", y="moved", hue="which", palette=ordered_colors(2), ax=axes[1])
axes[1].set(title="training on one prompt alone", xlabel="trained prompt", ylabel="total variation moved",
            ylim=(0, 1.7 * bars["moved"].max()))
axes[1].legend(fontsize=10, title=None, loc="upper left")
page.figure("fig_deviation", fig)
errors = pd.DataFrame([{"alpha": a, "gain": g, "one step": run.one_step_error.mean(),
                        "training": run.training_error.mean(), "sampling": run.sampling_error.mean()}
                       for (a, g), run in runs.items()])
page.table(errors, columns={"alpha": "α", "gain": "βλ", "one step": "LM vs exact map",
                            "training": "LM vs round's optimum", "sampling": "round's optimum vs exact map"},
           formats={"alpha": "g", "gain": "g", "one step": ".3f", "training": ".3f", "sampling": ".3f"},
           caption="One round's errors (mean total variation over rounds and prompts)")

terminal_lm = {r: float(np.mean([runs[k].distance[-1][sel].mean() for k in grid])) for r, sel in
               (("cyclic", cyc), ("transitive", tra))}
terminal_sampled = float(np.mean([it.total_variation(sampled[k][-1], runs[k].tabular[-1]).mean() for k in grid]))
terminal_lm_all = float(np.mean([runs[k].distance[-1].mean() for k in grid]))
# H4b's units are the prompts: per prompt, the LM's distance minus the sampled table's, averaged over the grid
h4b_diff = np.mean([runs[k].distance[-1] - it.total_variation(sampled[k][-1], runs[k].tabular[-1]) for k in grid],
                   axis=0)
h4b_interval = bootstrap_interval(h4b_diff, np.mean, seed=seed)
page.glue("tv_lm_cyc", terminal_lm["cyclic"])
page.glue("tv_lm_tra", terminal_lm["transitive"])
page.glue("tv_lm_all", terminal_lm_all)
page.glue("tv_sampled", terminal_sampled)
H4B_OUTCOME = {"farther": "farther from the exact map than a table fitted to the same number of sampled pairs, as "
                          "our hypothesis expected",
               "closer": "closer to the exact map than a table fitted to the same number of sampled pairs (our "
                         "hypothesis expected the model farther: a finding)",
               "undecided": "neither clearly farther from the exact map nor clearly closer than a table fitted to the "
                            "same number of sampled pairs (the interval of their difference contains zero, so H4b is "
                            "undecided)"}
page.glue("h4b_outcome", H4B_OUTCOME["farther" if h4b_interval[0] > 0 else
                                     "closer" if h4b_interval[1] < 0 else "undecided"])
page.glue("h4b_low", h4b_interval[0])
page.glue("h4b_high", h4b_interval[1])
page.glue("n_prompts", len(h4b_diff))
page.glue("one_step", float(np.mean([runs[k].one_step_error.mean() for k in grid])))
page.glue("train_err", float(np.mean([runs[k].training_error.mean() for k in grid])))
page.glue("sample_err", float(np.mean([runs[k].sampling_error.mean() for k in grid])))

# %% [markdown]
# ```{glue:figure} fig_deviation
# :alt: Two panels: distance to the tabular path over rounds, and how far training one prompt moves the others.
# :name: fig-beyond01-deviation
#
# Left: mean total variation between the language model and the exact tabular path (solid) and between the
# finite-sample table and the exact path (dashed), averaged over the grid points, per regime. Right: training on one
# prompt alone (one round from the start) moves the other prompts too.
# ```
#
# After the last round the language model is at a mean total variation of {glue:text}`tv_lm_cyc:.3f` from the
# exact tabular path on the cyclic prompts and {glue:text}`tv_lm_tra:.3f` on the transitive ones (all grid points),
# against {glue:text}`tv_sampled:.3f` for a table trained on the same number of sampled pairs. One round moves the
# model to within {glue:text}`one_step:.3f` of the exact map from its own state, split into
# {glue:text}`train_err:.3f` between the model and the round's empirical optimum (finitely many steps, shared weights)
# and {glue:text}`sample_err:.3f` between that optimum and the exact map (finitely many pairs). Training on one
# prompt alone moved it by {glue:text}`coupling_own:.3f` and the other prompts by {glue:text}`coupling_others:.3f`
# on average (ratio {glue:text}`coupling_ratio:.2f`); a table does not couple prompts at all.
#
# The coupling {glue:text}`h4a_coupling` (H4a), and the model ends {glue:text}`h4b_outcome` (H4b). Over
# these rounds the model's distance to the tabular path is of the order of the sampling error of a finite number of
# pairs: per prompt, the model's distance minus the table's has a 90% bootstrap interval of
# [{glue:text}`h4b_low:.3f`, {glue:text}`h4b_high:.3f`] over the {glue:text}`n_prompts` prompts. The two means
# themselves moved with the number format in earlier builds (equal to three decimals with bf16 autocast, the model
# the farther with float32); the interval was wide enough to give both the same verdict.
#
# ## Claim checks
#
# I1 and I2 verify the code (a table in place of the model must reach the round's exact empirical optimum and
# cannot couple prompts). T1 and T2 check the paper's tabular statements over our few rounds; H1-H4 are our
# hypotheses, with the thresholds stated in the Setting.
#
# The defaults were cut for the time budget before this run (3 IPO steps per round instead of 4, the coupling
# measured on 2 prompts instead of 4). Our earlier run with 4 steps and 4 prompts (`-p steps=4
# -p coupling_prompts=4`) gave the opposite verdicts on H2a (the entropy did not fall monotonically in $\kappa$)
# and on H4a (the coupling reached a tenth): those two are sensitive to the settings.
#
# Two rules were revised after builds that differed only in the machine's number format (bf16 autocast or
# float32) or in the random stream of LoRA's dropout had given opposite verdicts: H1a is decided only on at least
# four cases (two cases had flipped between 0/2 and 1/2), and H4a on the 90% bootstrap interval of the coupling
# over the trained prompts (0.110 and 0.122 with bf16, 0.066 with float32, against the tenth expected): a verdict
# that one case decides is inconclusive. The chapter also computes in float32 on every machine now (`precision`):
# with bf16 autocast the coupling came out about twice as large (0.11-0.12 against 0.06), probably because bf16
# rounding is of the order of the other prompts' small moves (not isolated).

# %%
claims.check_at_most("I1", "a table in place of the LM, trained by the same round function to convergence, reaches "
                     "the exact empirical IPO optimum of the round's pairs (largest |log pi difference|): "
                     "tau = 1/beta, per-candidate reference", table_error, 1e-6, kind="identity")
claims.check_at_most("I2", "a table's coupling: training on one prompt moves no other prompt (largest total "
                     "variation of the others)", float(table_coupling["others"].max()), 1e-12, kind="identity")
unstable_cyc = [(k, m) for k in grid for m in np.flatnonzero(cyc) if rho[k][m] > 1]
stable_cyc = [(k, m) for k in grid for m in np.flatnonzero(cyc) if rho[k][m] < 1]
tab_rotating = [(k, m) for k in grid for m in np.flatnonzero(cyc) if it.rotates(runs[k].tabular)[m]]
claims.check_fraction("T1", f"tabular map: cyclic (prompt, grid point) cases with an unstable fixed point rotate "
                      f"within {rounds} rounds", sum(bool(it.rotates(runs[k].tabular)[m]) for k, m in unstable_cyc),
                      len(unstable_cyc), 0.75, min_cases=2,
                      few_cases_note="the grid gives fewer unstable cyclic cases", kind="claim")
claims.check_fraction("H1a", "LM: cyclic cases where the tabular map rotates rotate in the LM loop too",
                      sum(bool(it.rotates(runs[k].history)[m]) for k, m in tab_rotating), len(tab_rotating), 0.5,
                      min_cases=4, few_cases_note="the tabular map rotates in fewer cases", kind="claim")
claims.check_fraction("H1b", "LM: cyclic cases with a stable tabular fixed point do not rotate in the LM loop",
                      sum(not it.rotates(runs[k].history)[m] for k, m in stable_cyc), len(stable_cyc), 0.75,
                      min_cases=2, few_cases_note="the grid gives fewer stable cyclic cases", kind="claim")
order = sorted(grid, key=lambda k: kappa_of(*k))
tab_H = [float(runs[k].tabular_entropy[-1][tra].mean()) for k in order]
lm_H_sorted = [float(runs[k].entropy[-1][tra].mean()) for k in order]
rise_tab, rise_lm = float(np.max(np.diff(tab_H))), float(np.max(np.diff(lm_H_sorted)))
kappas = ", ".join(f"{kappa_of(*k):g}" for k in order)
claims.check_at_most("T2", f"tabular map: mean entropy of the transitive prompts after {rounds} rounds is "
                     f"non-increasing in kappa = {kappas} (largest rise between neighbours, nats)", rise_tab, 0.02,
                     kind="claim")
claims.check_at_most("H2a", f"LM: mean entropy of the transitive prompts after {rounds} rounds is non-increasing in "
                     f"kappa = {kappas} (largest rise between neighbours, nats)", rise_lm, 0.02, kind="claim")
top = order[-1]
claims.check_fraction("H2b", f"LM: at the largest kappa ({kappa_of(*top):g}) the entropy after the last round is "
                      "below the start (transitive prompts)",
                      int((runs[top].entropy[-1][tra] < runs[top].entropy[0][tra]).sum()), int(tra.sum()), 0.75,
                      kind="claim")
claims.check_at_most("H3a", "LM vs the exact tabular path: mean total variation after the last round, cyclic prompts "
                     "(all grid points)", terminal_lm["cyclic"], 0.2, kind="claim")
claims.check_at_most("H3b", "LM vs the exact tabular path: mean total variation after the last round, transitive "
                     "prompts (all grid points)", terminal_lm["transitive"], 0.2, kind="claim")
claims.check_at_least("H4a", "coupling: mean ratio of the other prompts' move to the trained prompt's move "
                      f"[90% bootstrap interval over the {len(coupled)} trained prompts]", ratio, COUPLING_EXPECTED,
                      interval=coupling_interval, kind="claim")
claims.check_at_least("H4b", "the LM ends farther from the exact tabular path than a table trained on the same "
                      "number of sampled pairs: mean over the prompts of (LM's - table's total variation after the "
                      f"last round, averaged over the grid points) [90% bootstrap interval over the {len(h4b_diff)} "
                      f"prompts]; LM {terminal_lm_all:.3f} vs table {terminal_sampled:.3f}",
                      float(h4b_diff.mean()), 0.0, predicted="> 0 (LM farther)", interval=h4b_interval, kind="claim")
page.glue("h1a_hits", sum(bool(it.rotates(runs[k].history)[m]) for k, m in tab_rotating))
page.glue("h1a_total", len(tab_rotating))
page.glue("h1b_rot", sum(bool(it.rotates(runs[k].history)[m]) for k, m in stable_cyc))
page.glue("h1b_total", len(stable_cyc))
page.glue("h2b_hits", int((runs[top].entropy[-1][tra] < runs[top].entropy[0][tra]).sum()))
page.glue("rise_lm", rise_lm)
page.glue("rise_tab", rise_tab)
page.report()

# %% [markdown]
# ## What differs from the paper
#
# The paper's loop is a map on preference matrices with the exact optimum each round; ours has a language model as
# the policy, finitely many sampled pairs, a few optimiser steps per round, one LoRA adapter (on the top
# {glue:text}`lora_layers_g` layer(s)) for all prompts, three short candidates per prompt from FineGrainedRLHF (not
# HelpSteer's four responses), the model's own starting distribution as reference and offline sampler (not uniform
# ones), and {glue:text}`rounds_g` rounds (not 3,000). The hypotheses H1-H4 are ours and concern exactly these
# differences, so none is declared for them; the tabular baselines T1 and T2 carry their declared differences:

# %% tags=["remove-input"]
page.glue("lora_layers_g", lora_layers)
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
