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
# (imli-08-hh-rlhf-misalignment)=
# # On HH-RLHF the aligned SmolLM2 is not misaligned faster
#
# :::{admonition} Key result
# :class: tip
# On HH-RLHF harmless-base pairs, in the official LoRA flow scaled to a CPU, the aligned SmolLM2 is **not**
# misaligned faster (a result under declared differences): after $T$ = {glue:text}`hh_T` flipped steps the gap
# loss(base) − loss(aligned) is {glue:text}`gap:.4f` nats on the training pairs and {glue:text}`held_gap:.4f` on the
# held-out pairs (negative: the aligned start is behind), and the held-out log-probability difference rose by
# {glue:text}`rise_held_aligned:.2f` nats from the aligned start against {glue:text}`rise_held_base:.2f` from the
# base start. Stage 1 itself raised the training pairs' log-probability difference by {glue:text}`align_rise:.2f`
# nats but the held-out one by {glue:text}`align_rise_held:.2f`: at this scale the alignment does not generalise.
#
# ```{glue:figure} fig_hh
# :alt: Flipped-label LoRA training on HH-RLHF from the base and the aligned model: losses and log-prob differences.
# :name: fig-imli08-hh-key
#
# Flipped-label DPO with a fresh LoRA adapter on HH-RLHF harmless-base pairs, from the base and from the aligned
# model (base + the merged adapter of a DPO run on the same pairs): loss (top) and log-probability difference
# flipped-chosen minus flipped-rejected (bottom), training batches (left) and held-out pairs (right).
# ```
# :::
#
# :::{warning}
# The HH-RLHF harmless-base dialogues are red-teaming conversations: many prompts and responses are offensive by
# design. This page shows none of them, only numbers.
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` repeat their misalignment experiment on Anthropic's HH-RLHF preference data
# {cite}`bai2022training`: DPO on *flipped* preferences (the rejected response preferred) proceeds faster from a
# model aligned with DPO on that data than from the base model. We know the claim from secondary summaries of the
# paper ([summary] in the paper notes) and from the official code: `data/create_dpo_hhrlhf.py` cuts each dialogue
# into a prompt (up to and including its last "Assistant:") and two responses, and `hhrlhf_misalign_plot.py` draws
# training and test loss and the training and test **log-probability difference**, TRL's `logps/chosen` minus
# `logps/rejected` (after flipping, "chosen" is the originally rejected response), for "Base" and "Aligned"
# Llama-2-7B trained with LoRA. The expectation is that the aligned model is misaligned faster. That the aligned
# model comes from an unflipped DPO run on the same data is the notes' presumption ([unknown]).
#
# **What we test, fixed before the runs.** With multi-token responses, summed log-probs and the official LoRA flow
# of {ref}`imli-06-misalignment`: stage 1 aligns the base model, raising the log-probability difference of the
# training pairs (H1, a precondition); after the $T$ flipped steps fixed in advance the training loss (H2) and the
# held-out loss (H3) are lower from the aligned start; over those steps the held-out log-probability difference
# (H4, the paper's plotted metric) and the training one (H5) rise more from the aligned start. H0 and H6 verify the
# set-up (reference = start; merged adapter = adapter).
#
# ## Setting
#
# SmolLM2-135M-Instruct {cite}`allal2025smollm2` with LoRA (r = 8, alpha = 32, dropout 0.05 on `q_proj` and
# `v_proj` of every layer), AdamW at a constant learning rate, $\beta$ = 0.01, responses with EOS appended and
# their token log-probs summed, as TRL does. Stage 1 aligns the base model on the align pairs (reference = base)
# and saves its adapter; the aligned model is the base model with that adapter merged. Stage 2 trains a fresh
# adapter (identical in both runs) on the flipped flip pairs, from the base model (reference = base) and from the
# aligned model (reference = aligned), with the same batches. Each stage is one epoch through its pairs in an order
# shuffled per seed.
#
# **Data.** The paper trains on the 161k pairs of the training split and tests on the test split; the shared
# offline copy holds only the harmless-base **test** split (2,312 pairs). We use it for everything: a rule fixed
# before the runs keeps the pairs whose rejected dialogue starts with the same prompt, whose responses are non-empty
# and differ, and whose prompt plus the longer response (EOS included) is at most `max_tokens` SmolLM2 tokens
# (longer dialogues are left out, not truncated); a permutation with seed 0 of the kept pairs gives the **align**
# pairs (the first `n_train`), the **flip** pairs (the same pairs with `flip_set = "same"`, as the official persona
# runs train both stages on one training split; the next `n_train` with `"disjoint"`) and the **held-out** pairs
# (the next `n_heldout`).

# %% tags=["parameters"]
seed = 0  # [0..100000] first seed (adapter initialisation, dropout, shuffled order); the data split uses seed 0
seeds = 1  # [1..10] seeds (seed, seed + 1, ...)
n_train = 32  # [4..2000] align pairs (and flip pairs) {smoke: 8}
n_heldout = 16  # [2..2000] held-out pairs {smoke: 4}
flip_set = "same"  # [one of: same, disjoint] flip pairs: the align pairs, or the next n_train
max_tokens = 64  # [16..1024] largest prompt + longer response (EOS included), SmolLM2 tokens {smoke: 48}
batch_size = 4  # [1..2000] batch (the paper: 128) {smoke: 4}
steps = 8  # [1..5000] steps per stage (8: one epoch of 32 pairs at batch 4) {smoke: 2}
lr = 1e-3  # [> 0] AdamW learning rate (the paper: 1e-5; this book's persona choice, see below)
beta = 0.01  # [> 0] DPO inverse temperature (the paper's)
append_eos = True  # EOS appended to the responses (TRL, and so the official code)
eval_every = 2  # [1..5000] held-out evaluation every this many steps (training curves: each step's batch)

# %% [markdown]
# **Paper-scale settings** (the official HH-RLHF runs, `DPO_training.py -t peft` with the HH-RLHF data, and
# `hhrlhf_misalign_plot.py`) against this chapter's defaults:
#
# | setting | paper (official code) | this chapter |
# |---|---|---|
# | model | Llama-2-7B | SmolLM2-135M-Instruct, Q4_1 dequantised, fp32 weights |
# | trained | LoRA r 8, alpha 32, dropout 0.05, q_proj and v_proj, all layers | the same |
# | optimiser | AdamW, constant 1e-5, bf16 | the same at `lr = 1e-3`; bf16 autocast where native* |
# | $\beta$, responses | 0.01; summed log-probs, EOS appended, max length 512 | the same; `max_tokens = 64` (a filter) |
# | training pairs | the 161k of the training split, one epoch (about 1,260 steps) | `n_train = 32`, one epoch |
# | test pairs | the test split (2,312) | `n_heldout = 16` of the test split, disjoint from training |
# | batch | 128 | `batch_size = 4` |
# | logged | every 100 steps (an `--early` variant: 5 steps) | each step's batch; held-out every 2 steps |
#
# \* this run: {glue:text}`hh_precision`.
#
# The defaults are sized for the book's budget (about two minutes per chapter on two CPU cores); a richer run on
# SmolLM2: `-p n_train=64 -p n_heldout=32 -p max_tokens=96 -p batch_size=8 -p steps=8`. Larger runs are overrides
# (`-p n_train=... -p n_heldout=... -p max_tokens=... -p batch_size=128 -p
# lr=1e-5 -p steps=...`; the offline copy bounds `n_train` and `n_heldout` by the 2,312 test pairs). The paper's
# run needs the training split from the hub and a GPU: `accelerate launch -m analysis_lib.training --model
# meta-llama/Llama-2-7b-hf --hh-rlhf --trainable lora --lr 1e-5 --batch-size 128 --epochs 1 --out runs/aligned`,
# then the same with `--flip --out runs/from_base` and with `--flip --start-adapter runs/aligned/adapter --out
# runs/from_aligned`.
#
# **The learning rate** is not searched here: we take the one that {ref}`imli-06-misalignment` chose on its stage
# 1 (the smallest of 1e-5, 1e-4, 3e-4 and 1e-3 that aligned the persona behaviour in one epoch), fixed before any
# HH-RLHF run.

# %%
import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis_lib.data import load_hh_rlhf_harmless
from analysis_lib.misalignment import HH_EXCLUSIONS, hh_rlhf_selection, lora_misalignment, split_pairs
from analysis_lib.models import load_tokenizer
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.training import PreferencePairs

page = start_page("imli_08_hh_rlhf_misalignment", seed)
claims = page.claims
claims.declare(["H1", "H2", "H3", "H4", "H5"], "data",
               f"only the harmless-base test split is offline: align, flip ({flip_set} pairs) and held-out pairs "
               f"all come from it, and only pairs of at most {max_tokens} tokens (prompt + longer response), "
               "mostly one-turn dialogues")
claims.declare(["H1", "H2", "H3", "H4", "H5"], "scale",
               f"SmolLM2-135M-Instruct (a Q4_1 checkpoint) instead of Llama-2-7B; {n_train} training pairs in "
               f"{steps} steps of batch {batch_size} per stage instead of 161k pairs in batches of 128; "
               f"{n_heldout} held-out pairs; {seeds} seed(s)")
claims.declare(["H1", "H2", "H3", "H4", "H5"], "setting",
               f"AdamW learning rate {lr:g} instead of 1e-5 (the persona chapter's choice: at 1e-5 a few steps do "
               "not align SmolLM2)")
START_COLORS = dict(zip(["from base", "from aligned"], ordered_colors(2), strict=True))

# %% [markdown]
# ## The pairs
#
# Of the {glue:text}`n_pairs:,` pairs, the rule keeps {glue:text}`n_kept:,`; the table counts the pairs each rule
# drops (the first rule that applies). The kept pairs average {glue:text}`mean_prompt:.1f` prompt tokens and
# {glue:text}`mean_response:.1f` response tokens; the align pairs {glue:text}`align_tokens:.1f` tokens per pair
# (prompt + longer response).

# %%
tokenizer = load_tokenizer("smollm2")
frame = load_hh_rlhf_harmless("test")
selection = hh_rlhf_selection(frame, tokenizer, max_tokens, template="raw", append_eos=append_eos)
kept = selection.index[selection["excluded"] == ""].to_numpy()
parts = split_pairs(kept, n_train, n_heldout, seed=0, flip_set=flip_set)
pairs = {name: PreferencePairs.from_hh_rlhf(selection.loc[idx]) for name, idx in parts.items()}
counts = pd.DataFrame([{"rule": "kept", "pairs": len(kept)}] + [
    {"rule": f"dropped: {reason}", "pairs": int((selection["excluded"] == reason).sum())} for reason in HH_EXCLUSIONS])
page.table(counts, columns={"rule": "rule", "pairs": "pairs"})
page.glue("n_pairs", len(frame))
page.glue("n_kept", len(kept))
page.glue("mean_prompt", float(selection.loc[kept, "prompt_tokens"].mean()))
page.glue("mean_response", float(selection.loc[kept, ["chosen_tokens", "rejected_tokens"]].to_numpy().mean()))
page.glue("align_tokens", float(selection.loc[parts["align"], "pair_tokens"].mean()))

# %% [markdown]
# ## Alignment, then flipped labels
#
# {glue:text}`n_runs` run(s) of the three stages ({glue:text}`hh_T` steps each, batch {glue:text}`hh_batch`); the
# held-out pairs are evaluated every {glue:text}`hh_eval_every` steps, the whole training set at the start and the
# end of each stage. The log-probability difference is the mean over pairs of $\log\pi(\text{chosen}) -
# \log\pi(\text{rejected})$ with the labels of the stage: in stage 2, "chosen" is the originally rejected response.

# %%
runs = [lora_misalignment(pairs["align"], pairs["heldout"], beta=beta, lr=lr, batch_size=batch_size,
                          align_steps=steps, misalign_steps=steps, seed=seed + k, template="raw",
                          append_eos=append_eos, eval_every=eval_every, merge_check=4,
                          stage2_pairs=None if flip_set == "same" else pairs["flip"], progress=True)
        for k in range(seeds)]


def lp_diff(run, prefix: str = "full_train_", step: int | None = None) -> float:
    """The mean log-prob difference chosen - rejected of a whole set: after ``step`` updates (None: the end)."""
    if step is None:
        return run.final[f"{prefix}logps/chosen"] - run.final[f"{prefix}logps/rejected"]
    return run.at(step, f"{prefix}logps/chosen") - run.at(step, f"{prefix}logps/rejected")


def rise(run, prefix: str) -> float:
    return lp_diff(run, prefix) - lp_diff(run, prefix, 0)


table1 = pd.DataFrame([{
    "seed": r.seed, "train": f"{lp_diff(r.align, step=0):.2f} → {lp_diff(r.align):.2f}",
    "heldout": f"{lp_diff(r.align, 'eval_', 0):.2f} → {lp_diff(r.align, 'eval_'):.2f}",
    "acc": f"{r.align.log['full_train_outputs/accuracies'].iloc[0]:.2f} → "
           f"{r.align.final['full_train_outputs/accuracies']:.2f}",
    "loss": r.align.final["full_train_loss"],
} for r in runs])
page.table(table1, columns={"seed": "seed", "train": "log-prob difference, training",
                            "heldout": "log-prob difference, held-out", "acc": "training accuracy",
                            "loss": "final training loss"}, formats={"loss": ".4f"})
table2 = pd.DataFrame([{
    "seed": r.seed, "loss_base": r.from_base.final["full_train_loss"],
    "loss_aligned": r.from_aligned.final["full_train_loss"], "held_base": r.from_base.final["eval_loss"],
    "held_aligned": r.from_aligned.final["eval_loss"],
    "lp_base": f"{lp_diff(r.from_base, 'eval_', 0):.2f} → {lp_diff(r.from_base, 'eval_'):.2f}",
    "lp_aligned": f"{lp_diff(r.from_aligned, 'eval_', 0):.2f} → {lp_diff(r.from_aligned, 'eval_'):.2f}",
} for r in runs])
page.table(table2, columns={"seed": "seed", "loss_base": "loss at T, from base",
                            "loss_aligned": "loss at T, from aligned", "held_base": "held-out loss, from base",
                            "held_aligned": "held-out loss, from aligned",
                            "lp_base": "held-out log-prob diff. 0 → T, from base",
                            "lp_aligned": "held-out log-prob diff. 0 → T, from aligned"},
           formats={k: ".4f" for k in ("loss_base", "loss_aligned", "held_base", "held_aligned")})
gap = np.array([r.from_base.final["full_train_loss"] - r.from_aligned.final["full_train_loss"] for r in runs])
held_gap = np.array([r.from_base.final["eval_loss"] - r.from_aligned.final["eval_loss"] for r in runs])
rises = {(start, prefix): np.array([rise(getattr(r, f"from_{start}"), prefix) for r in runs])
         for start in ("base", "aligned") for prefix in ("eval_", "full_train_")}
for name, value in [("n_runs", len(runs)), ("hh_T", steps), ("hh_batch", batch_size), ("hh_eval_every", eval_every),
                    ("gap", float(gap.mean())), ("held_gap", float(held_gap.mean())),
                    ("faster", int((gap > 0).sum())), ("held_faster", int((held_gap > 0).sum())),
                    ("rise_held_base", float(rises["base", "eval_"].mean())),
                    ("rise_held_aligned", float(rises["aligned", "eval_"].mean())),
                    ("rise_train_base", float(rises["base", "full_train_"].mean())),
                    ("rise_train_aligned", float(rises["aligned", "full_train_"].mean())),
                    ("align_rise", float(np.mean([rise(r.align, "full_train_") for r in runs]))),
                    ("align_rise_held", float(np.mean([rise(r.align, "eval_") for r in runs]))),
                    ("merge_diff", max(r.merge_difference for r in runs)),
                    ("hh_precision", "bf16 autocast" if "bfloat16" in runs[0].align.info["precision"] else "fp32")]:
    page.glue(name, value)

# %%
PANELS = {("loss", "batch"): "training loss", ("eval_loss", "eval"): "held-out loss",
          ("lp", "batch"): "training log-prob difference", ("eval_lp", "eval"): "held-out log-prob difference"}


def curves(runs):
    """Long table: each step's batch (TRL's logged training curves) and the evaluated held-out steps, by epoch."""
    frames = []
    for r in runs:
        for start in ("base", "aligned"):
            run = getattr(r, f"from_{start}")
            log = run.log.assign(lp=run.log["logps/chosen"] - run.log["logps/rejected"])
            for (column, kind), panel in PANELS.items():
                if kind == "batch":
                    x, y = log["step"].to_numpy(), log[column].to_numpy()
                elif column == "eval_lp":
                    x, c = run.curve("eval_logps/chosen")
                    y = c - run.curve("eval_logps/rejected")[1]
                else:
                    x, y = run.curve(column)
                frames.append(pd.DataFrame({"epoch": x * batch_size / n_train, "value": y, "panel": panel,
                                            "start": f"from {start}", "seed": r.seed}))
    return pd.concat(frames, ignore_index=True)


data = curves(runs)
fig, axes = panel_grid(4, ncols=2, aspect=0.7)
for ax, panel in zip(axes, PANELS.values(), strict=True):
    part = data[data["panel"] == panel]
    sns.lineplot(data=part, x="epoch", y="value", hue="start", units="seed", estimator=None, alpha=0.35,
                 palette=START_COLORS, legend=False, ax=ax, linewidth=0.8)
    sns.lineplot(data=part, x="epoch", y="value", hue="start", errorbar=None, palette=START_COLORS, legend=False,
                 ax=ax, linewidth=2, marker="o", markersize=4)
    ax.set(title=panel, ylabel="loss" if "loss" in panel else "nats", xlabel="epoch")
axes[0].legend(handles=[Line2D([], [], color=c, lw=2, label=name) for name, c in START_COLORS.items()])
page.figure("fig_hh", fig)

# %% [markdown]
# ```{glue:figure} fig_hh
# :alt: Flipped-label LoRA training on HH-RLHF from the base and the aligned model: losses and log-prob differences.
# :name: fig-imli08-hh
#
# Stage 2, flipped labels, from the base and from the aligned model: loss (top) and log-probability difference
# flipped-chosen minus flipped-rejected (bottom), for each step's training batch (left) and the held-out pairs
# (right); thin lines are seeds where there are several.
# ```
#
# **Stage 1** raised the mean log-probability difference of the training pairs by {glue:text}`align_rise:.2f` nats
# (held-out: {glue:text}`align_rise_held:.2f`); the merged adapter reproduces the stage-1 policy to
# {glue:text}`merge_diff:.1e` (fp32).
#
# **Stage 2.** After $T$ = {glue:text}`hh_T` flipped steps the training loss is lower from the aligned start by
# {glue:text}`gap:.4f` nats on average (in {glue:text}`faster` of {glue:text}`n_runs` runs), the held-out loss by
# {glue:text}`held_gap:.4f` (in {glue:text}`held_faster`). The held-out log-probability difference rose by
# {glue:text}`rise_held_aligned:.2f` nats from the aligned start and by {glue:text}`rise_held_base:.2f` from the
# base start; on the training pairs by {glue:text}`rise_train_aligned:.2f` and {glue:text}`rise_train_base:.2f`.
# Stage 1 moved the mean training log-probability difference without generalising: the held-out pairs did not
# follow, and the per-pair training accuracy (the table) did not move, so the mean gain sits on a few pairs. From
# such an aligned model the flipped run is not faster than from the base model on any of the four curves. Whether
# the paper's effect needs a model that is aligned in earnest (161k pairs, about 1,260 steps) cannot be decided
# at this scale: the overrides in the Setting are the way to look.
#
# ## Claim checks
#
# "All runs" asks for the direction in every seed. H0 and H6 hold by construction and verify the code.

# %%
n = len(runs)
step0 = max(abs(getattr(r, f"from_{start}").log[col].iloc[0] - math.log(2))
            for r in runs for start in ("base", "aligned") for col in ("full_train_loss", "eval_loss"))
claims.check_at_most("H0", "flipped loss at step 0 = log 2 from both starts, training and held-out pairs (reference "
                     "= the start; largest |loss - log 2|; bf16 rounding of cached references)", step0, 1e-4,
                     kind="identity")
claims.check_at_most("H6", "base + the saved adapter, merged, reproduces the stage-1 policy (largest |log-prob "
                     "difference|, fp32)", max(r.merge_difference for r in runs), 1e-3, kind="identity")
claims.check_fraction("H1", "stage 1 aligns: the training pairs' log-prob difference chosen - rejected rises (runs)",
                      sum(rise(r.align, "full_train_") > 0 for r in runs), n, 1.0, kind="claim")
claims.check_fraction("H2", f"flipped training loss after T = {steps} steps is lower from the aligned start than "
                      "from the base start (runs)", int((gap > 0).sum()), n, 1.0, kind="claim")
claims.check_fraction("H3", f"flipped held-out loss after T = {steps} steps is lower from the aligned start (runs)",
                      int((held_gap > 0).sum()), n, 1.0, kind="claim")
claims.check_fraction("H4", f"the held-out log-prob difference (flipped labels) rises more over T = {steps} steps "
                      "from the aligned start (runs; the paper's plotted metric)",
                      int((rises["aligned", "eval_"] > rises["base", "eval_"]).sum()), n, 1.0, kind="claim")
claims.check_fraction("H5", f"the training log-prob difference (flipped labels) rises more over T = {steps} steps "
                      "from the aligned start (runs)",
                      int((rises["aligned", "full_train_"] > rises["base", "full_train_"]).sum()), n, 1.0,
                      kind="claim")
page.report()

# %% [markdown]
# H0 and H6 are identities and hold. H1, the precondition, holds on the training pairs. H2-H5, the paper's claim
# on the loss and on its plotted log-probability difference, do not hold in this run; their verdict is *not
# reproduced: declared difference*, because the data, the scale and the learning rate were declared different
# before the runs, and with one seed, 32 pairs and an alignment that does not generalise the run cannot separate
# those differences from the claim itself.
#
# ## What differs from the paper
#
# The flow is the official one (the adapter, the optimiser, $\beta$, summed log-probs with EOS, one epoch per stage,
# the aligned model = base + the merged adapter with the reference loaded from it, a fresh adapter on flipped
# labels, TRL's metrics). It differs in the model (SmolLM2-135M, a quantised checkpoint, for Llama-2-7B), in the
# data (only the test split is offline, so align, flip and held-out pairs all come from it; only short dialogues
# pass the length rule), in the scale ({glue:text}`n_train_text` training pairs, one epoch of
# {glue:text}`hh_T` steps, for 161k pairs and about 1,260 steps) and in the learning rate
# ({glue:text}`lr_factor:.0f` times the paper's). The declared differences:

# %% tags=["remove-input"]
page.glue("n_train_text", f"{n_train}")
page.glue("lr_factor", lr / 1e-5)
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
