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
# (imli-07-beyond-last-layer)=
# # DPO with LoRA raises the features' distinguishability in most behaviours; learning speed no longer follows PD
#
# :::{admonition} Key result
# :class: tip
# {glue:text}`key_sentence`
#
# ```{glue:figure} fig_ratio
# :alt: PD after / PD before against PD before for every behaviour, training and held-out statements, LoRA and full.
# :name: fig-imli07-ratio-key
#
# The ratio of the distinguishability after DPO to the one before, against the one before, for every trained
# behaviour (dots: LoRA; crosses: full fine-tuning), on the training statements (left) and on held-out statements
# (right). The dotted line is 1 (no change), the dashed line the notes' 1.5.
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` train more than the last layer too: the official code's `DPO_training.py`
# aligns Llama-2-7B and Mistral-7B with full fine-tuning and with LoRA {cite}`hu2022lora` (r = 8, alpha = 32 on
# `q_proj` and `v_proj` of every layer), and its notebook `plot_embedding_comparison.ipynb` draws UMAP
# {cite}`mcinnes2018umap` projections of the statement embeddings of behaviour 130 "Before DPO" and "After DPO",
# Yes and No statements coloured. What the paper says about that figure we know only from secondary summaries
# ([summary] in the paper notes): DPO that trains the features **moves the embeddings so that the positive and
# negative statements separate**, i.e. the preference distinguishability $\|\mu^+ - \mu^-\|$ grows, which is the
# premise of its misalignment argument ({ref}`imli-06-misalignment`). The same code plots the
# "across distinguishability" learning curves ({ref}`imli-03-learning-speed`) for full and PEFT runs as well. The
# precise statements tested here are **our reconstruction**:
#
# 1. **Features.** DPO with LoRA on every layer raises the distinguishability of the features $g(x)$ of the
#    training statements, PD$_{after}$ / PD$_{before}$ > 1, for (almost) every behaviour (F1), and, as we
#    predicted before any run, **on held-out statements too** (F2); the paper notes' criterion asks for a ratio of
#    at least 1.5 (F3: we apply it to the median over the behaviours). The same holds for full fine-tuning (F4, F5).
#    A behaviour counts as raised when the whole 90% bootstrap interval of its ratio over the statements is above 1,
#    as not raised when the whole interval is at most 1, and as undecided otherwise; F1, F2, F4 and F5 hold when they
#    hold with every undecided behaviour counted as not raised, and are undecided when only the undecided behaviours
#    decide them. We added this rule after two builds (bf16 and float32 arithmetic) disagreed on one behaviour of F4
#    (5 of 5 against 4 of 5 with a ratio above 1): with 16 statements per behaviour a ratio near 1 cannot be told
#    apart from noise.
#    Concentration and trace before and after are reported, not tested.
# 2. **Control.** Training only the last layer (an untied copy of the output layer, the official last-layer setting)
#    cannot change $g(x)$: every hidden state below the head is untouched, so the ratio is exactly 1 (C1, an
#    identity).
# 3. **Learning speed.** With LoRA and with full fine-tuning the order of learning speed follows the
#    distinguishability before training, as in the last-layer model: the Spearman correlation between PD$_{before}$
#    and the decrease of the training loss over the run is at least 0.7 over the paper's five behaviours (S1: LoRA,
#    S2: full) and over every behaviour trained with LoRA (S3: the twenty of this page's defaults, which include
#    the twelve of {ref}`imli-03-learning-speed`).
#
# These hypotheses, their thresholds and the run settings below were fixed before any feature of a trained model
# was computed at the page's settings. One rule was added after a smoke run on two behaviours, without regard to its
# values: a rank correlation over fewer than five behaviours (two points always give +1 or -1) is inconclusive.
# One setting was changed after the page had been built: the default sweep was six behaviours (the paper's five
# and 130) and is now the twenty listed below, since the paper's statement concerns behaviours in general and a
# fraction or a rank correlation over six says little. The hypotheses and thresholds stayed as they were. With
# six behaviours F1 had held (6 of 6 clearly raised); with twenty it is undecided (see the checks).
#
# ## Setting
#
# **Model and features.** SmolLM2-135M-Instruct {cite}`allal2025smollm2` (the Q4_1 checkpoint dequantised to fp32)
# in place of Llama-2-7B. The feature is the library's $g(x)$: the final hidden state after the model's final norm
# at the last prompt token (`analysis_lib.models.features.last_prompt_hidden`; the official code applies the RMSNorm
# a second time; the library may offer that definition as well, this chapter uses the default). Before and after
# training it is computed by the same function on the policy's own weights, in the policy's precision
# (`analysis_lib.feature_learning.policy_features`). The prompt is the persona question followed by a newline, as
# in the official full-DPO and UMAP code {cite}`perez2023discovering`, without a chat template; the answers
# " Yes"/" No" are one token each and scored at the last prompt position.
#
# **Data.** Per behaviour, a balanced random subset of `n_train` items of the official training split (the
# training statements) and of `n_test` items of the official held-out split (the held-out statements).
#
# **Training.** The library's trainer (`analysis_lib.training.train`) with DPO, $\beta$ = 0.01, the initial model
# as reference, AdamW with a constant learning rate and no weight decay, one epoch over the training items (shuffled
# once, `steps` batches of `batch_size`), as the official runs train one epoch. Three trainable sets: LoRA (the
# official adapter; every behaviour of the sweep), full fine-tuning (the paper's five single-behaviour runs), and
# the head only (the control, on the behaviour of the projection figure).

# %% tags=["parameters"]
seed = 0  # [0..100000] seed of the batch order and of the LoRA dropout
behaviours = [45, 54, 84, 88, 100, 108, 123, 130, 32, 65,
              79, 107, 7, 20, 21, 23, 27, 73, 119, 124]  # [0..134; len 2..135] trained with LoRA {smoke: [130, 108]}
speed_behaviours = [108, 84, 88, 54, 100]  # [0..134; len 2..12] curves, full fine-tuning {smoke: [108, 130]}
projection_behaviour = 130  # [0..134] the UMAP / PCA figure and the head-only control (in behaviours)
n_train = 16  # [4..900] training items per behaviour (balanced subset of the official training split) {smoke: 8}
n_test = 16  # [4..100] held-out items per behaviour (balanced subset of the official test split) {smoke: 8}
steps = 4  # [1..1000] optimiser steps (steps x batch_size = n_train: one epoch) {smoke: 2}
batch_size = 4  # [1..900] items per step
lora_lr = 3e-3  # [> 0] AdamW learning rate of the LoRA adapters (chosen on a pilot behaviour, see below)
full_lr = 1e-4  # [> 0] AdamW learning rate of full fine-tuning (set before any run, see below)
beta = 0.01  # [> 0] DPO inverse temperature (the paper's)
test_every = 1  # [1..1000] held-out evaluation every this many steps in the curve runs
umap_random_state = 1234  # [0..100000] UMAP seed (the official notebook's)

# %% [markdown]
# **Paper-scale settings** (the official `DPO_training.py` and `plot_embedding_comparison.ipynb`) against this
# chapter's defaults:
#
# | setting | paper (official code) | this chapter |
# |---|---|---|
# | model | Llama-2-7B / Mistral-7B | SmolLM2-135M-Instruct, Q4_1 dequantised to fp32 |
# | trained | full, or LoRA r = 8, alpha = 32, dropout 0.05 on q_proj, v_proj | the same; the head alone (control) |
# | optimiser | AdamW, constant learning rate 1e-5, bf16 | AdamW, constant, `lora_lr` / `full_lr`, bf16\* |
# | $\beta$, batch | 0.01, 128 (32 per GPU x 4) | `beta = 0.01`, `batch_size = 4` |
# | length | one epoch of 900 items (about 8 steps) | one epoch of `n_train = 16` items (`steps = 4`) |
# | held-out items | the 100 of the official split | `n_test = 16` of them |
# | behaviours | 130 (UMAP); the five of the speed figure | twenty with LoRA (the paper's eight in them), five full |
# | UMAP embeddings | all 1,000 items of behaviour 130, double RMSNorm | its `n_train + n_test` items, g(x) |
# | prompt, answers | question + newline; EOS appended to " Yes"/" No" | question + newline; " Yes"/" No" |
#
# \* bf16 autocast where the CPU computes bf16 natively, else float32; this run: {glue:text}`precision`.
#
# The default sweep is twenty behaviours: the paper's eight, four more of {ref}`imli-03-learning-speed` and eight
# drawn at random (`analysis_lib.feature_learning.SWEEP_BEHAVIOURS`). The paper's settings are one override away
# (every item of the official split, its batch and learning rates; on a GPU, `ANALYSIS_LIB_DEVICE=cuda`), for
# example on the paper's five and behaviour 130: `python3 run.py chapter imli_07_beyond_last_layer -p
# "behaviours=[108, 84, 88, 54, 100, 130]" -p n_train=900 -p n_test=100 -p batch_size=128 -p steps=7 -p
# lora_lr=1e-5 -p full_lr=1e-5`. One run at the paper's scale on four
# GPUs is the library's command line: `accelerate launch --num_processes 4 -m analysis_lib.training --model
# meta-llama/Llama-2-7b-hf --trainable lora --behaviours 130 --lr 1e-5 --beta 0.01 --batch-size 128 --epochs 1
# --out runs/b130-lora` (`--trainable full` for full fine-tuning); the features before and after of such a run are
# `analysis_lib.feature_learning.train_behaviour` with `model_id`.
#
# **How the learning rates were chosen.** For LoRA, on a pilot behaviour outside the sweep (1, agreeableness), with
# 64 training items and 8 steps of 8, we trained at 1e-5 (the paper's), 1e-4, 1e-3, 3e-3 and 1e-2 and looked at one
# number only, the loss on the training items after the epoch, and took the rate with the lowest loss (3e-3; at the
# paper's rate the loss did not move measurably). The pilot ran outside the book and is not reproduced here. The
# full fine-tuning rate, ten times the paper's, was set without a pilot. No feature of a trained model had been
# computed when the rates, the item counts and the step counts were fixed; the defaults were then cut (16 items in 4
# steps of 4) to fit the book's time budget, before the first run of this page. Each trained run is kept on disk
# (`train_behaviour(..., cache=True)`, keyed by every setting, the items and the library's source), so a rebuild
# does not train again.

# %%
import numpy as np
from matplotlib.lines import Line2D
from scipy.stats import spearmanr

from analysis_lib.claims import DECLARED, FINDING
from analysis_lib.feature_learning import feature_change, learning_summary, projection_2d, train_behaviour
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.runtime import progress, timed

page = start_page("imli_07_beyond_last_layer", seed)
claims = page.claims
for name, values in (("speed_behaviours", speed_behaviours),
                     ("projection_behaviour", [projection_behaviour])):
    if not set(values) <= set(behaviours):
        raise ValueError(f"{name}: every behaviour must also be in behaviours")
claims.declare(["F1", "F2", "F3", "F4", "F5", "S1", "S2", "S3"], "scale",
               f"SmolLM2-135M-Instruct (a Q4_1 checkpoint) instead of Llama-2-7B, and {n_train} training and "
               f"{n_test} held-out items per behaviour instead of all 900 / 100: a smaller model trained on fewer "
               "items moves less")
claims.declare(["F1", "F2", "F3", "F4", "F5", "S1", "S2", "S3"], "setting",
               f"one epoch of {steps} AdamW steps of {batch_size} items at learning rate {lora_lr:g} (LoRA) and "
               f"{full_lr:g} (full) instead of about 8 steps of 128 at 1e-5; single-token answers without EOS")
claims.declare(["F1", "F2", "F3", "F4", "F5"], "setting",
               "g(x) after the model's final norm (the library's feature) where the official code normalises it "
               "twice")
claims.declare(["F1", "F2", "F4", "F5"], "adaptation",
               "'every behaviour' is read as at least 90% of the behaviours (LoRA) and all five (full): our "
               "thresholds")
claims.declare("F3", "adaptation",
               "the notes' 1.5 is a criterion for one behaviour over seeds; we apply it to the median over the "
               "behaviours of one seed")
claims.declare(["S1", "S2", "S3"], "adaptation",
               "Spearman >= 0.7 is the project's criterion of imli_03 (the paper gives no number)")

# %% [markdown]
# ## Training the behaviours
#
# Each behaviour of the sweep is trained once with LoRA and the paper's five once more with full fine-tuning; the
# runs of the paper's five evaluate their held-out items every {glue:text}`test_every` steps for the curves. The
# same runs give the features before and after, the learning curves and the loss decrease.

# %%
common = dict(n_train=n_train, n_test=n_test, steps=steps, batch_size=batch_size, beta=beta, seed=seed, cache=True)
lora_runs, full_runs = {}, {}
for b in progress(behaviours, desc="LoRA DPO, behaviours"):
    lora_runs[b] = train_behaviour(b, trainable="lora", lr=lora_lr, **common,
                                   test_every=test_every if b in speed_behaviours else None)
for b in progress(speed_behaviours, desc="full DPO, behaviours"):
    full_runs[b] = train_behaviour(b, trainable="full", lr=full_lr, test_every=test_every, **common)
head_run = train_behaviour(projection_behaviour, trainable="head", lr=lora_lr, **common)
runs = list(lora_runs.values()) + list(full_runs.values())
change = feature_change(runs + [head_run])
learned = learning_summary(runs + [head_run])
any_run = lora_runs[behaviours[0]]
page.glue("n_lora", len(lora_runs))
page.glue("n_full", len(full_runs))
page.glue("n_train_items", any_run.settings["n_train"])
page.glue("n_test_items", any_run.settings["n_test"])
page.glue("test_every", test_every)
page.glue("precision", any_run.settings["precision"])
page.glue("lora_params", f"{any_run.settings['trainable_parameters']:,}")
page.glue("full_params", f"{next(iter(full_runs.values())).settings['trainable_parameters']:,}")
page.glue("lora_seconds", float(np.mean([r.seconds for r in lora_runs.values()])))
page.glue("full_seconds", float(np.mean([r.seconds for r in full_runs.values()])))

# %% [markdown]
# LoRA trains {glue:text}`lora_params` parameters, full fine-tuning {glue:text}`full_params`; a LoRA run (training
# and both feature passes) took {glue:text}`lora_seconds:.0f` s on average here, a full run
# {glue:text}`full_seconds:.0f` s.
#
# ## The features before and after
#
# For every behaviour, the official code's properties (`analysis_lib.lastlayer.behaviour_properties`) of $g(x)$
# before and after training: the distinguishability PD = $\|\mu_{Yes} - \mu_{No}\|$ (classes by the answer that
# matches the behaviour), the concentration $\max(\|\Sigma_{Yes}\|_2, \|\Sigma_{No}\|_2)$ and the trace
# $\max(\operatorname{tr}\Sigma_{Yes}, \operatorname{tr}\Sigma_{No})$, on the {glue:text}`n_train_items` training
# and the {glue:text}`n_test_items` held-out statements together (as the official notebook computes them over all
# items), and the PD ratio on each part separately. With so few items per class the empirical PD carries a noise
# term ($\mathbb{E}\|\hat\mu_{Yes} - \hat\mu_{No}\|^2 = \|\Delta\|^2 + \operatorname{tr}\Sigma_{Yes}/n_{Yes} +
# \operatorname{tr}\Sigma_{No}/n_{No}$), so we also give the ratio of the noise-corrected PD
# (`analysis_lib.persona_runs.debiased_distinguishability`) on the held-out statements.

# %%
SPLIT_NAMES = {"train": "training statements", "test": "held-out statements"}
wide = change[change["split"] == "all"].set_index(["trainable", "behaviour"])
for split in ("train", "test"):
    part = change[change["split"] == split].set_index(["trainable", "behaviour"])
    wide[f"ratio_{split}"] = part["pd_ratio"]
    wide[f"debiased_ratio_{split}"] = part["debiased_pd_ratio"]
    wide[f"low_{split}"], wide[f"high_{split}"] = part["pd_ratio_low"], part["pd_ratio_high"]
wide = wide.join(learned.set_index(["trainable", "behaviour"])[["train_loss_decrease", "test_accuracy_after",
                                                                 "test_accuracy_before"]])
wide = wide.reset_index()
lora_table = wide[wide["trainable"] == "lora"].sort_values("pd_before")
full_table = wide[wide["trainable"] == "full"].sort_values("pd_before")
page.table(lora_table, columns={"behaviour": "index", "pd_before": "PD before", "pd_after": "PD after",
                                "concentration_before": "concentration before",
                                "concentration_after": "concentration after", "trace_before": "trace before",
                                "trace_after": "trace after"},
           formats={"pd_before": ".2f", "pd_after": ".2f", "concentration_before": ".2f",
                    "concentration_after": ".2f", "trace_before": ".1f", "trace_after": ".1f"},
           caption="LoRA: properties of g(x) of all items before and after DPO")

# %%
ratio_columns = {"behaviour": "index", "name": "behaviour", "pd_before": "PD before",
                 "ratio_train": "PD ratio, training", "ratio_test": "PD ratio, held-out",
                 "debiased_ratio_test": "corrected PD ratio, held-out", "trace_ratio": "trace ratio"}
ratio_formats = {"pd_before": ".2f", "ratio_train": ".2f", "ratio_test": ".2f", "debiased_ratio_test": ".2f",
                 "trace_ratio": ".2f"}
page.table(lora_table, columns=ratio_columns, formats=ratio_formats, caption="LoRA: ratios after / before")
page.table(full_table, columns=ratio_columns, formats=ratio_formats,
           caption="Full fine-tuning: ratios after / before")

# %%
lora_ratios = {s: lora_table[f"ratio_{s}"].to_numpy() for s in ("train", "test")}
full_ratios = {s: full_table[f"ratio_{s}"].to_numpy() for s in ("train", "test")}
page.glue("lora_up_train", int((lora_ratios["train"] > 1).sum()))
page.glue("lora_up_test", int((lora_ratios["test"] > 1).sum()))
page.glue("full_up_train", int((full_ratios["train"] > 1).sum()))
page.glue("full_up_test", int((full_ratios["test"] > 1).sum()))


def raised(table, split):
    """(behaviours whose whole 90% interval of the PD ratio is above 1, behaviours whose interval contains 1)."""
    low, high = table[f"low_{split}"].to_numpy(), table[f"high_{split}"].to_numpy()
    return int((low > 1).sum()), int(((low <= 1) & (high > 1)).sum())


for name, table in (("lora", lora_table), ("full", full_table)):
    for split in ("train", "test"):
        clear, open_ = raised(table, split)
        page.glue(f"{name}_clear_{split}", clear)
        page.glue(f"{name}_open_{split}", open_)
for split in ("train", "test"):
    page.glue(f"lora_median_{split}", float(np.median(lora_ratios[split])))
    page.glue(f"lora_min_{split}", float(lora_ratios[split].min()))
    page.glue(f"lora_max_{split}", float(lora_ratios[split].max()))
    page.glue(f"full_median_{split}", float(np.median(full_ratios[split])))
corrected = lora_table["debiased_ratio_test"].to_numpy()
page.glue("lora_median_debiased", float(np.nanmedian(corrected)) if np.isfinite(corrected).any() else float("nan"))
page.glue("debiased_note", "" if np.isfinite(corrected).all() else
          f" over the {int(np.isfinite(corrected).sum())} behaviours where the corrected PD before is positive")
page.glue("lora_median_trace", float(np.median(lora_table["trace_ratio"])))
page.glue("full_median_trace", float(np.median(full_table["trace_ratio"])))
rho_gain = float(spearmanr(lora_table["pd_before"], lora_table["ratio_train"]).statistic)
page.glue("rho_gain", rho_gain)

fig, axes = panel_grid(2, ncols=2, aspect=0.85, sharey=False)
mode_style = {"lora": ("o", ordered_colors(2)[0], "LoRA"), "full": ("X", ordered_colors(2)[1], "full fine-tuning")}
for ax, split in zip(axes, ("train", "test"), strict=True):
    for mode, table in (("lora", lora_table), ("full", full_table)):
        marker, color, label = mode_style[mode]
        ax.scatter(table["pd_before"], table[f"ratio_{split}"], marker=marker, color=color, s=45, label=label,
                   edgecolor="white", linewidth=0.5)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.axhline(1.5, color="grey", linestyle="--", linewidth=1)
    ax.set(title=SPLIT_NAMES[split], xlabel="PD before", ylabel="PD after / PD before")
axes[0].legend(loc="best", frameon=False)
page.figure("fig_ratio", fig)

# %% [markdown]
# ```{glue:figure} fig_ratio
# :alt: Two scatter panels of the PD ratio after / before against PD before, with reference lines at 1 and 1.5.
# :name: fig-imli07-ratio
#
# PD after / PD before against PD before, per behaviour and trainable set, on the training statements (left) and on
# the held-out statements (right); dotted: 1, dashed: 1.5.
# ```
#
# With LoRA the PD of the training statements rose in {glue:text}`lora_up_train` of {glue:text}`n_lora` behaviours
# ({glue:text}`lora_clear_train` with the whole 90% interval above 1, {glue:text}`lora_open_train` undecided; median
# ratio {glue:text}`lora_median_train:.2f`, from {glue:text}`lora_min_train:.2f` to {glue:text}`lora_max_train:.2f`),
# and on the held-out statements in {glue:text}`lora_up_test` ({glue:text}`lora_clear_test` clearly,
# {glue:text}`lora_open_test` undecided; median {glue:text}`lora_median_test:.2f`, from {glue:text}`lora_min_test:.2f`
# to {glue:text}`lora_max_test:.2f`; the noise-corrected PD: median ratio
# {glue:text}`lora_median_debiased:.2f`{glue:text}`debiased_note`). The trace changed by a median factor of
# {glue:text}`lora_median_trace:.2f`. With full fine-tuning the PD rose in {glue:text}`full_up_train` and
# {glue:text}`full_up_test` of {glue:text}`n_full` behaviours (clearly in {glue:text}`full_clear_train` and
# {glue:text}`full_clear_test`, undecided in {glue:text}`full_open_train` and {glue:text}`full_open_test`; median ratios
# {glue:text}`full_median_train:.2f` and {glue:text}`full_median_test:.2f`; trace factor
# {glue:text}`full_median_trace:.2f`). Across the LoRA sweep the gain and the starting PD have a Spearman correlation of
# {glue:text}`rho_gain:.2f` (not a claim of the paper; we only report it).
#
# ## Behaviour 130 before and after
#
# The official figure projects the statement embeddings of one behaviour with UMAP, fitted separately before and
# after DPO (`random_state` 1234), Yes statements in yellowgreen and No statements in dimgrey. We do the same for all
# {glue:text}`n_proj` items of behaviour {glue:text}`proj_b` (training and held-out), after LoRA, and put PCA (the
# first two principal axes, also fitted separately) next to it, since distances in a UMAP plot are not to scale.

# %%
proj = lora_runs[projection_behaviour]
COLORS = {"Yes": "yellowgreen", "No": "dimgrey"}
labels = np.where(proj.yes_mask, "Yes", "No")
fig, axes = panel_grid(4, ncols=2, aspect=0.8)
with timed("plotting"):
    for row, method in enumerate(("umap", "pca")):
        for col, (when, g) in enumerate((("before DPO", proj.before), ("after DPO (LoRA)", proj.after))):
            ax = axes[2 * row + col]
            xy = projection_2d(g, method, random_state=umap_random_state)
            for answer in ("Yes", "No"):
                keep = labels == answer
                ax.scatter(xy[keep, 0], xy[keep, 1], s=14, alpha=0.75, color=COLORS[answer])
            ax.set(title=f"{method.upper()}, {when}", xlabel=f"{method.upper()} 1", ylabel=f"{method.upper()} 2")
            ax.set_xticks([])
            ax.set_yticks([])
fig.legend(handles=[Line2D([], [], ls="", marker="o", color=c, label=f"matching answer: {a}")
                    for a, c in COLORS.items()], loc="outside upper center", ncol=2, frameon=False)
page.figure("fig_projection", fig)
proj_rows = change[(change["behaviour"] == projection_behaviour) & (change["trainable"] == "lora")].set_index("split")
page.glue("proj_b", projection_behaviour)
page.glue("proj_name", proj.name)
page.glue("n_proj", len(proj.rows))
page.glue("proj_ratio_all", float(proj_rows.loc["all", "pd_ratio"]))
page.glue("proj_ratio_test", float(proj_rows.loc["test", "pd_ratio"]))

# %% [markdown]
# ```{glue:figure} fig_projection
# :alt: UMAP (top) and PCA (bottom) of behaviour 130's statement features before and after LoRA DPO, Yes vs No.
# :name: fig-imli07-projection
#
# Behaviour {glue:text}`proj_b` ({glue:text}`proj_name`): UMAP (top) and PCA (bottom) of $g(x)$ of its training and
# held-out statements before (left) and after (right) DPO with LoRA; each panel is fitted on its own features.
# ```
#
# For this behaviour the PD of all its items changed by a factor {glue:text}`proj_ratio_all:.2f` (held-out:
# {glue:text}`proj_ratio_test:.2f`).
#
# ## The control: only the last layer trained
#
# The same run on behaviour {glue:text}`proj_b` with only an untied copy of the output layer trainable (the official
# last-layer setting, on the live model): DPO moves the head, and nothing below it.

# %%
head_rows = change[change["trainable"] == "head"].set_index("split")
head_learned = learned[learned["trainable"] == "head"].iloc[0]
page.glue("head_loss_decrease", float(head_learned["train_loss_decrease"]))
page.glue("head_max_change", float(head_rows["max_feature_change"].max()))
page.glue("head_ratio", float(head_rows.loc["all", "pd_ratio"]))
page.table(head_rows.reset_index(), columns={"split": "statements", "items": "items", "pd_before": "PD before",
                                             "pd_after": "PD after", "pd_ratio": "PD ratio",
                                             "max_feature_change": "largest |change| of g(x)"},
           formats={"pd_before": ".4f", "pd_after": ".4f", "pd_ratio": ".6f", "max_feature_change": ".1e"})

# %% [markdown]
# The head-only run lowered the training loss by {glue:text}`head_loss_decrease:.4f` nats, and $g(x)$ did not change
# at all (largest change {glue:text}`head_max_change:.1e`, PD ratio {glue:text}`head_ratio:.6f`): by construction, a
# change of the features needs training below the last layer.
#
# ## Learning speed beyond the last layer
#
# The paper's five behaviours trained separately, as in the "across distinguishability" figure, with LoRA and with
# full fine-tuning: the loss and the accuracy (the policy's own ordering) on each step's training batch, as the
# official trainer logs them, and on the held-out statements every {glue:text}`test_every` steps. The colours order
# the behaviours by their PD before training.

# %%
pd_of = dict(zip(lora_table["behaviour"], lora_table["pd_before"], strict=True))
order = sorted(speed_behaviours, key=pd_of.get)
names = {b: f"{b} (PD {pd_of[b]:.2f})" for b in order}
palette = dict(zip(names.values(), ordered_colors(len(order)), strict=True))
PANELS = {("loss", "train"): "training loss (batch)", ("eval_loss", "test"): "held-out loss",
          ("outputs/accuracies", "train"): "training accuracy (batch)",
          ("eval_outputs/accuracies", "test"): "held-out accuracy"}


def curve_figure(runs_of_mode):
    fig, axes = panel_grid(4, ncols=2, aspect=0.7, sharex=True)
    for ax, ((column, split), title) in zip(axes, PANELS.items(), strict=True):
        for b in order:
            run = runs_of_mode[b].run
            if split == "test":
                x, y = run.curve(column)
            else:
                x, y = run.log["step"].to_numpy(), run.log[column].to_numpy()
            ax.plot(x, y, marker="o", markersize=3, color=palette[names[b]], label=names[b])
        ax.set(title=title, xlabel="step")
    fig.legend(handles=[Line2D([], [], color=palette[n], lw=2, label=n) for n in names.values()],
               loc="outside lower center", ncol=3, frameon=False, title="behaviour (PD before)")
    return fig


page.figure("fig_curves_lora", curve_figure(lora_runs))
page.figure("fig_curves_full", curve_figure(full_runs))

# %% [markdown]
# ```{glue:figure} fig_curves_lora
# :alt: LoRA DPO on the paper's five behaviours: batch and held-out loss and accuracy against the step.
# :name: fig-imli07-curves-lora
#
# LoRA: loss (top) and accuracy (bottom) on each step's training batch (left, before the step's update) and on the
# held-out statements (right), for the paper's five behaviours (lighter = larger PD before training).
# ```
#
# ```{glue:figure} fig_curves_full
# :alt: Full fine-tuning DPO on the paper's five behaviours: batch and held-out loss and accuracy against the step.
# :name: fig-imli07-curves-full
#
# Full fine-tuning: the same panels.
# ```
#
# The order of learning speed: the decrease of the loss on the whole set of training statements over the epoch
# ($\log 2$ minus the loss after, from the answer log-probs of the features after training), against PD before
# training:

# %%
speed = learned[learned["trainable"].isin(["lora", "full"])].copy()
speed["pd_before"] = speed["behaviour"].map(pd_of)
speed["trained"] = speed["trainable"].map({"lora": "LoRA", "full": "full"})
rho = {}
for key, mode, members in (("S1", "lora", speed_behaviours), ("S2", "full", speed_behaviours),
                           ("S3", "lora", behaviours)):
    part = speed[(speed["trainable"] == mode) & speed["behaviour"].isin(members)]
    rho[key] = (float(spearmanr(part["pd_before"], part["train_loss_decrease"]).statistic), len(part))
    page.glue(f"rho_{key}", rho[key][0])
fig, axes = panel_grid(2, ncols=2, aspect=0.85)
for ax, mode in zip(axes, ("lora", "full"), strict=True):
    part = speed[speed["trainable"] == mode]
    marker, color, label = mode_style[mode]
    ranked = part["behaviour"].isin(speed_behaviours)
    ax.scatter(part.loc[~ranked, "pd_before"], part.loc[~ranked, "train_loss_decrease"], marker=marker, s=40,
               color="lightgrey", edgecolor="grey", linewidth=0.5, label="other behaviours")
    ax.scatter(part.loc[ranked, "pd_before"], part.loc[ranked, "train_loss_decrease"], marker=marker, s=55,
               color=[palette[names[b]] for b in part.loc[ranked, "behaviour"]], edgecolor="black", linewidth=0.5,
               label="the paper's five")
    ax.set(title=label, xlabel="PD before", ylabel="training loss decrease (nats)")
axes[0].legend(loc="best", frameon=False)
page.figure("fig_speed", fig)
page.table(speed.sort_values(["trainable", "pd_before"]),
           columns={"trained": "trained", "behaviour": "index", "pd_before": "PD before",
                    "train_loss_decrease": "training loss decrease", "train_accuracy_after": "training accuracy after",
                    "test_loss_decrease": "held-out loss decrease", "test_accuracy_after": "held-out accuracy after"},
           formats={"pd_before": ".2f", "train_loss_decrease": ".4f", "train_accuracy_after": ".3f",
                    "test_loss_decrease": ".4f", "test_accuracy_after": ".3f"})

# %% [markdown]
# ```{glue:figure} fig_speed
# :alt: Training loss decrease against PD before, LoRA (left, all behaviours) and full fine-tuning (right).
# :name: fig-imli07-speed
#
# The loss decrease over the epoch against PD before training; coloured: the paper's five behaviours (as in the
# curves), grey: the rest of the LoRA sweep.
# ```
#
# Spearman correlations of PD before and the loss decrease: {glue:text}`rho_S1:.2f` (LoRA) and
# {glue:text}`rho_S2:.2f` (full) over the paper's five and {glue:text}`rho_S3:.2f` over all
# {glue:text}`n_lora` behaviours trained with LoRA.
#
# ## Claim checks
#
# F1-F5 and S1-S3 are the hypotheses of the Claim section with the thresholds fixed there; C1 holds by construction
# (training the head cannot move anything below it) and verifies that the features of a trained policy are read from
# its own weights.

# %%
FEW_LORA, FEW_FULL = "a fraction over fewer than 5 behaviours says little", "the paper's five behaviours are needed"


def check_raised(cid, what, table, split, need, few_cases_note):
    clear, open_ = raised(table, split)
    claims.check_fraction(cid, f"{what}: PD after / PD before > 1 over its whole 90% interval (behaviours; the "
                          "undecided count as not raised)", clear, len(table), need, min_cases=5,
                          few_cases_note=few_cases_note, undecided=open_, kind="claim")


check_raised("F1", "LoRA DPO raises the PD of the training statements", lora_table, "train", 0.9, FEW_LORA)
check_raised("F2", "LoRA DPO raises the PD of held-out statements too", lora_table, "test", 0.9, FEW_LORA)
claims.check_at_least("F3", "LoRA: median over the behaviours of PD after / PD before on held-out statements "
                      "(the notes' 1.5)", float(np.median(lora_ratios["test"])), 1.5, kind="claim")
check_raised("F4", "full fine-tuning raises the PD of the training statements", full_table, "train", 1.0, FEW_FULL)
check_raised("F5", "full fine-tuning raises the PD of held-out statements", full_table, "test", 1.0, FEW_FULL)
claims.check_at_most("C1", "head-only DPO (untied output layer): largest |g_after - g_before| over all items "
                     "(the PD ratio is then exactly 1)", float(head_rows["max_feature_change"].max()), 0.0,
                     kind="identity")
speed_statements = {"S1": "LoRA, the paper's five", "S2": "full fine-tuning, the paper's five",
                    "S3": "LoRA, every behaviour trained"}
for key, what in speed_statements.items():
    value, cases = rho[key]
    claims.check(key, f"Spearman rho(PD before, training loss decrease), {what} ({cases} behaviours)", value,
                 ">= 0.7", bool(np.isfinite(value) and value >= 0.7), ">= 0.7 over at least 5 behaviours",
                 kind="claim", inconclusive=None if cases >= 5 else
                 f"only {cases} behaviours; a rank correlation needs at least 5 to decide")
verdict = {c.id: c.verdict for c in claims.claims}
held = {k: v in ("reproduced", "verified") for k, v in verdict.items()}
undecided = {k: v == "inconclusive" for k, v in verdict.items()}


def outcome(keys, yes, no, open_):
    """The words for what the checks ``keys`` found: ``yes`` if all held, ``no`` if one did not, else ``open_``."""
    if any(not held[k] and not undecided[k] for k in keys):
        return no
    return yes if all(held[k] for k in keys) else open_



def median_of(table, split):
    return float(np.median(table[f"ratio_{split}"]))


page.glue("key_sentence",
          f"With LoRA on every layer ({len(lora_table)} behaviours, {n_train} training statements each, one epoch "
          f"of {steps} steps), DPO "
          f"{outcome(['F1'], 'raised', 'did not reliably raise', 'mostly raised (F1 undecided)')} the "
          f"distinguishability of the features: PD after / PD before rose in "
          f"{int((lora_ratios['train'] > 1).sum())} of "
          f"{len(lora_table)} behaviours on the training statements ({raised(lora_table, 'train')[0]} with the whole "
          f"90% interval above 1; median {median_of(lora_table, 'train'):.3f}) and in "
          f"{int((lora_ratios['test'] > 1).sum())} on held-out statements ({raised(lora_table, 'test')[0]} clearly; "
          f"median {median_of(lora_table, 'test'):.3f}), {'above' if held['F3'] else 'below'} the notes' 1.5; full "
          f"fine-tuning raised it in {int((full_ratios['train'] > 1).sum())} and "
          f"{int((full_ratios['test'] > 1).sum())} of {len(full_table)} (clearly in {raised(full_table, 'train')[0]} "
          f"and {raised(full_table, 'test')[0]}; medians {median_of(full_table, 'train'):.3f}"
          f" and {median_of(full_table, 'test'):.3f}). Training only the head leaves g(x) exactly unchanged (ratio "
          f"{float(head_rows.loc['all', 'pd_ratio']):.6f}). The order of learning speed "
          f"{outcome(['S1', 'S2'], 'followed', 'did not follow', 'may follow (undecided)')} PD before over the "
          "paper's five "
          f"(Spearman {rho['S1'][0]:.2f} with LoRA, {rho['S2'][0]:.2f} with full fine-tuning; criterion 0.7).")


def listed(verdict):
    return "; ".join(f"{c.id} ({c.statement}: {c.measured})" for c in claims.claims if c.verdict == verdict)


open_ids = [c.id for c in claims.claims if undecided[c.id]]
page.glue("findings_sentence", " ".join(part for part in (
    f"Not reproduced, with a difference from the paper declared before the run: {listed(DECLARED)}."
    if listed(DECLARED) else "",
    f"Findings (no declared difference covers them): {listed(FINDING)}." if listed(FINDING) else "",
    "Every claim of the Claim section held or is undecided." if not listed(DECLARED) and not listed(FINDING) else "",
    f"Undecided (too few behaviours, or behaviours whose interval contains 1 decide it): {', '.join(open_ids)}."
    if open_ids else "") if part))
page.report()

# %% [markdown]
# {glue:text}`findings_sentence`
#
# ## What differs from the paper
#
# The experiment is the paper's in miniature: a 135M-parameter quantised checkpoint instead of a 7B model,
# {glue:text}`n_train_items` training statements per behaviour seen once instead of 900, and a learning rate chosen
# so that one short epoch moves the model on a CPU ({glue:text}`lora_lr_factor:.0f` times the paper's for LoRA,
# {glue:text}`full_lr_factor:.0f` times for full fine-tuning). The features are the library's $g(x)$ (one final
# norm), not the official double-normalised embedding, and the UMAP figure uses the subset's items, not all 1,000
# statements. The declared differences:

# %% tags=["remove-input"]
page.glue("lora_lr_factor", lora_lr / 1e-5)
page.glue("full_lr_factor", full_lr / 1e-5)
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
