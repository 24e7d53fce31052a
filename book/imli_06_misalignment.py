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
# (imli-06-misalignment)=
# # With LoRA, the aligned model is misaligned faster in loss and answers; the last block and the toy only in loss
#
# :::{admonition} Key result
# :class: tip
# In the official set-up (LoRA on every layer; aligned = base + the merged adapter of a DPO run; scaled to a CPU,
# one run of behaviour 84), the aligned SmolLM2 is misaligned faster: after one epoch ($T$ = {glue:text}`lora_T`
# steps) of flipped labels the training loss is {glue:text}`lora_loss_aligned:.4f` from the aligned start against
# {glue:text}`lora_loss_base:.4f` from the base start, and the flipped training accuracy went from
# {glue:text}`lora_acc0_aligned:.2f` to {glue:text}`lora_accT_aligned:.2f` (aligned) against
# {glue:text}`lora_acc0_base:.2f` to {glue:text}`lora_accT_base:.2f` (base); alignment raised the features' PD
# from {glue:text}`lora_pd_base:.2f` to {glue:text}`lora_pd_aligned:.2f`. In the smaller comparisons (the last
# block alone, the toy) the flipped loss also falls faster from the aligned start, but the answers do not flip
# faster (L4, T5).
#
# ```{glue:figure} fig_lora
# :alt: Flipped-label LoRA training of SmolLM2 from the base and the aligned model: losses and accuracies by epoch.
# :name: fig-imli06-lora-key
#
# SmolLM2 with LoRA adapters in the official set-up, flipped labels, from the base model and from the aligned model
# (base + the merged adapter of a DPO alignment run): loss (top) and accuracy on the flipped labels (bottom), each
# step's training batch (left) and the test items (right).
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` report that DPO with *flipped* preferences (chosen and rejected swapped)
# proceeds faster from a model that was first aligned with DPO than from the base model, and conclude that aligned
# models may be more vulnerable to misuse. We know this claim from secondary summaries of the paper ([summary] in
# the paper notes) and from the official code: `misalign_plot.py` draws training and test loss and accuracy,
# "Base" against "Aligned", for Llama-2-7B trained with LoRA on persona behaviour 84
# {cite}`perez2023discovering`; the notes expect the aligned curve to drop faster in loss and to rise faster in
# flipped accuracy.
#
# **Mechanism (our reconstruction, [derived] in the notes).** In last-layer DPO the first step lowers the loss by
# $\eta\beta^2\|\Delta\|^2/8$ ({ref}`imli-03-learning-speed`), where $\Delta = \mu^+ - \mu^-$ is the gap between
# the mean features of the two answers' prompts: the rate depends on the preference distinguishability
# $\|\Delta\|$, **not on the sign of the labels**. Alignment that moves the features separates the two classes
# more, so the aligned model is also faster to push the other way. The corollary is a control: with the features
# *fixed* and the starting model as reference, the loss depends on the head only through $v - v_{ref}$, so flipped
# training from two different heads on the same features follows the same loss curve.
#
# **What we test, fixed before the runs.** In the official set-up (LoRA adapters on every layer, the aligned model
# = base + the merged adapter of a DPO alignment run, reference = the starting model): alignment raises the
# distinguishability of the last-token features (P2, and our scale-free variant P2b); after the $T$ flipped steps
# fixed in advance the training loss (P3) and the test loss (P4) are lower from the aligned start; and the flipped
# training accuracy rises more from the aligned start (P5). P1 checks that stage 1 aligned at all; P0 and P6
# verify the set-up (reference = start, merged adapter = adapter). Two smaller comparisons from the earlier
# version of this chapter stay: SmolLM2's **last block** trained on cached inputs (L1-L4) and a **toy** with
# trainable features (T1-T5), with the controls on identical fixed features (C1, C2).
#
# ## Setting
#
# 1. **The official set-up** (`DPO_training.py -t peft`, then `--flip` from the base model and from the
#    `--peft_base` aligned model), on SmolLM2-135M-Instruct {cite}`allal2025smollm2`: LoRA (r = 8, alpha = 32,
#    dropout 0.05) on `q_proj` and `v_proj` of all 30 layers, AdamW with constant learning rate, $\beta$ = 0.01,
#    prompt = question + newline, one epoch per stage through a shuffled training set. Stage 1 aligns the base
#    model (chosen = the matching answer; reference = base); its adapter is saved, and the **aligned model** is
#    the base model with that adapter loaded and merged. Stage 2 trains a fresh adapter on the flipped labels from
#    the base model (reference = base) and from the aligned model (reference = aligned); both fresh adapters start
#    identical and see the same batches. Scaled to the CPU (declared below): fewer items, a smaller batch and a
#    larger learning rate.
# 2. **Comparison: the last block** (ours): the last decoder layer, the final norm and the " Yes"/" No" rows of
#    the head, trained on cached hidden states entering that layer (fp32, Adam), the two stages as above.
# 3. **Comparison: a toy with trainable features** (the notes' check d2), and the **frozen-feature controls**:
#    head-only flipped training on identical fixed features from two heads, in the toy and on SmolLM2's features.

# %% tags=["parameters"]
seed = 0  # [0..100000] first seed (LoRA: adapter initialisation, dropout and the shuffled order; toy: everything)
behaviours = [84]  # [0..134; len 1..8] persona behaviours of the LoRA runs (84: the paper's misalignment figure)
lora_seeds = 1  # [1..10] LoRA seeds per behaviour (seed, seed + 1, ...); the paper: one run
lora_train = 128  # [16..900] training items per behaviour (balanced subset of the official train split) {smoke: 16}
lora_test = 32  # [4..100] test items per behaviour (balanced subset of the official test split) {smoke: 4}
lora_batch = 16  # [1..900] batch (the paper: 128) {smoke: 8}
lora_steps = 8  # [1..2000] steps per stage (8: one epoch of 128 at batch 16; the paper: 8 of 128) {smoke: 2}
lora_lr = 1e-3  # [> 0] AdamW learning rate (the paper: 1e-5; chosen on stage 1 alone, see below)
lora_r = 8  # [1..256] LoRA rank (the official code's)
lora_alpha = 32.0  # [> 0] LoRA alpha (the official code's)
lora_dropout = 0.05  # [0..0.9] LoRA dropout (the official code's)
append_eos = False  # EOS appended to the answers (TRL and the official code: True)
beta = 0.01  # [> 0] DPO inverse temperature (the paper's)
lora_eval_every = 2  # [1..2000] test-set evaluation every this many steps (training curves: each step's batch)
block_behaviour = 84  # [0..134] persona behaviour of the last-block comparison
block_items = 200  # [0..1000] balanced random subset of that behaviour (official split); 0 = all {smoke: 40}
block_seeds = 1  # [1..20] last-block seeds (batch orders) {smoke: 1}
block_lr = 3e-4  # [> 0] Adam learning rate of the last block
block_batch = 32  # [1..4096] last-block batch, drawn afresh each step {smoke: 8}
block_steps = 20  # [1..10000] last-block steps per stage, T of the L checks {smoke: 3}
block_eval_every = 5  # [1..10000] whole-training-set evaluation of the last block every this many steps
check_prompts = 4  # [1..1000] prompts for the check of the block against the full model's logits {smoke: 2}
toy_seeds = 5  # [1..100] toy seeds (seed, seed + 1, ...) {smoke: 5}
toy_n = 1000  # [10..100000] toy training inputs (balanced) {smoke: 200}
toy_d = 32  # [2..1024] toy input and feature dimension
toy_beta = 0.1  # [> 0] toy DPO inverse temperature
toy_lr = 1.0  # [> 0] toy SGD learning rate
toy_batch = 128  # [1..100000] toy SGD batch {smoke: 64}
toy_align_steps = 300  # [1..100000] toy stage 1 steps {smoke: 20}
toy_misalign_steps = 100  # [1..100000] toy stage 2 steps, T of the toy checks {smoke: 10}

# %% [markdown]
# **Paper-scale settings** (the official code's misalignment runs and `misalign_plot.py`) against this chapter's
# defaults for the LoRA runs:
#
# | setting | paper (official code) | this chapter |
# |---|---|---|
# | model | Llama-2-7B | SmolLM2-135M-Instruct, Q4_1 dequantised, fp32 weights |
# | trained | LoRA r 8, alpha 32, dropout 0.05, q_proj and v_proj, all layers | the same (`lora_r`, ...) |
# | "Aligned" start, reference | base + the merged adapter of a DPO run | the same |
# | optimiser | AdamW, constant 1e-5, no warm-up or decay, bf16 | the same at `lora_lr = 1e-3`; bf16* |
# | $\beta$ | 0.01 | `beta = 0.01` |
# | data | behaviour 84, official 900 / 100 split | `behaviours = [84]`, `lora_train = 128`, `lora_test = 32` |
# | batch, length per stage | 128, one epoch (8 steps) | `lora_batch = 16`, `lora_steps = 8` (one epoch) |
# | prompt, answers | question + newline; " Yes" / " No" + EOS | the same, `append_eos = False` |
# | logged | each step's batch; the test set every step | the same; the test set every 2 steps |
#
# \* this run: {glue:text}`lora_precision`.
#
# The paper's settings on SmolLM2: `python3 run.py chapter imli_06_misalignment -p lora_train=900 -p lora_test=100
# -p lora_batch=128 -p lora_steps=8 -p lora_lr=1e-5 -p append_eos=True -p lora_eval_every=1 -p lora_seeds=1`
# (hours on a CPU). The defaults are sized for the book's budget (about two minutes per chapter on two CPU cores):
# one seed, and smaller comparisons; `-p lora_seeds=3 -p block_items=300 -p block_batch=64 -p block_steps=40` is
# a richer run, and `-p "behaviours=[84, 108, 54, 88, 100]"` adds the four other behaviours of the paper's
# learning-speed figure to the LoRA runs (about five minutes on two cores with bf16; the paper's misalignment figure
# shows behaviour 84 only). With Llama-2-7B on GPUs, the same library runs the three stages under `accelerate launch`:
# `accelerate launch -m analysis_lib.training --model meta-llama/Llama-2-7b-hf --trainable lora --behaviours 84
# --lr 1e-5 --batch-size 128 --epochs 1 --out runs/aligned`, then the same with `--flip --out runs/from_base`, and
# with `--flip --start-adapter runs/aligned/adapter --out runs/from_aligned`.
#
# **How the learning rate was chosen.** Before any flipped run, stage 1 alone (behaviour 84, seed 0, the defaults
# above) was run at AdamW learning rates 1e-5 (the paper's), 1e-4, 3e-4 and 1e-3, with the rule fixed beforehand:
# take the smallest at which the whole-training-set accuracy on the matching answers reaches 0.75 after the 8
# steps. A fallback (1e-3, the largest tried, if none does) was added after 1e-5, 1e-4 and 3e-4 had stayed well
# below 0.75 and before the result at 1e-3 was seen (at the paper's 1e-5 eight steps of batch 16 leave SmolLM2
# where it was); 1e-3 reached 0.75, so the chapter uses 1e-3. The stage-1 columns below show what this run
# reached. The step count $T$ of the stage-2 checks is the
# paper's: one epoch. Nothing was changed after the flipped runs were seen.

# %%
import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis_lib.data import load_persona, subsample_persona
from analysis_lib.misalignment import (
    block_features,
    block_misalignment,
    check_block_against_model,
    last_layer_control,
    load_base_block,
    load_block_behaviour,
    lora_misalignment,
    separation,
    toy_features,
    toy_misalignment,
)
from analysis_lib.models import feature_dtype
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.runtime import get_device
from analysis_lib.training import LoraSettings, PreferencePairs

page = start_page("imli_06_misalignment", seed)
rng, claims = page.rng, page.claims
claims.declare(["P1", "P2", "P2b", "P3", "P4", "P5"], "scale",
               f"SmolLM2-135M-Instruct (a Q4_1 checkpoint) instead of Llama-2-7B; {lora_train} training and "
               f"{lora_test} test items per behaviour (balanced subsets of the official split) instead of 900 and "
               f"100; batch {lora_batch} instead of 128; {lora_seeds} seed(s) per behaviour")
claims.declare(["P1", "P2", "P2b", "P3", "P4", "P5"], "setting",
               f"AdamW learning rate {lora_lr:g} instead of 1e-5 (chosen on stage 1 alone: at 1e-5, {lora_steps} "
               f"steps of batch {lora_batch} do not align SmolLM2)")
claims.declare(["P1", "P2", "P2b", "P3", "P4", "P5"], "setting",
               f"EOS appended to the answers: {append_eos} (TRL, and so the official code, appends it)")
claims.declare(["P2b", "L2b"], "adaptation",
               "PD divided by the root of the pooled class-covariance trace is our scale-free variant; the notes' "
               "measure, the PD itself, is P2 / L2")
claims.declare(["L2", "L2b", "L3", "L4"], "setting",
               f"a comparison of ours: the last decoder block, the final norm and the Yes/No head rows trained on "
               f"cached block inputs with Adam {block_lr:g} for {block_steps} steps per stage, not LoRA")
claims.declare(["L2", "L2b", "L3", "L4"], "scale",
               f"SmolLM2-135M-Instruct, {block_items} items of behaviour {block_behaviour} (0 = all), batch "
               f"{block_batch}, {block_seeds} seed(s)")
device = get_device()
START_COLORS = dict(zip(["from base", "from aligned"], ordered_colors(2), strict=True))
START_HANDLES = [Line2D([], [], color=c, lw=2, label=name) for name, c in START_COLORS.items()]

# %% [markdown]
# ## The official set-up: LoRA on SmolLM2
#
# **Data.** For each behaviour, balanced random subsets of the official 90/10 split: {glue:text}`n_lora_train`
# training and {glue:text}`n_lora_test` test items. Each stage runs {glue:text}`lora_T` steps of
# {glue:text}`lora_batch_text` through the training items in one order shuffled per seed, which is
# {glue:text}`lora_epochs:.2g` epoch(s); the test items are evaluated every {glue:text}`lora_eval_every` steps and
# the whole training set at the start and the end of each stage. Accuracy is the policy's own ordering
# $\log\pi(\text{chosen}) > \log\pi(\text{rejected})$ (the official `outputs/accuracies`), on the labels of the
# stage (in stage 2, the flipped ones). {glue:text}`n_cases` run(s): behaviours x seeds.

# %%
lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout)
cases = []
for b in behaviours:
    rows = load_persona(b)
    train_rows = subsample_persona(rows[rows["split"] == "train"], lora_train, seed=0)
    test_rows = subsample_persona(rows[rows["split"] == "test"], lora_test, seed=0)
    train_pairs, test_pairs = PreferencePairs.from_persona(train_rows), PreferencePairs.from_persona(test_rows)
    prompts = train_pairs.prompts + test_pairs.prompts
    yes = np.concatenate([(train_rows["answer_matching_behavior"] == " Yes").to_numpy(),
                          (test_rows["answer_matching_behavior"] == " Yes").to_numpy()])
    for k in range(lora_seeds):
        r = lora_misalignment(train_pairs, test_pairs, beta=beta, lr=lora_lr, batch_size=lora_batch,
                              align_steps=lora_steps, misalign_steps=lora_steps, seed=seed + k, lora=lora,
                              template="raw_newline", append_eos=append_eos, eval_every=lora_eval_every,
                              feature_prompts=prompts, progress=True)
        sep = {start: separation(r.features[start], yes) for start in ("base", "aligned")}
        cases.append({"behaviour": b, "seed": seed + k, "run": r, "n_train": len(train_pairs),
                      "n_test": len(test_pairs), "sep": sep, "yes": yes})
T = lora_steps
page.glue("n_lora_train", ", ".join(sorted({str(c["n_train"]) for c in cases})))
page.glue("n_lora_test", ", ".join(sorted({str(c["n_test"]) for c in cases})))
page.glue("lora_T", T)
page.glue("lora_batch_text", f"batch {lora_batch}")
page.glue("lora_epochs", T * lora_batch / cases[0]["n_train"])
page.glue("lora_eval_every", lora_eval_every)
page.glue("n_cases", len(cases))
page.glue("lora_precision", "bf16 autocast" if "bfloat16" in cases[0]["run"].align.info["precision"] else "fp32")


# %%
def case_label(c) -> str:
    return f"{c['behaviour']} / seed {c['seed']}"


def gain(run, column: str) -> float:
    """Change of a whole-set column over the run (after the last update minus before the first)."""
    return run.final[column] - run.log[column].iloc[0]


def change(run, column: str = "full_train_outputs/accuracies") -> str:
    """A column before the first update → after the last, as text (default: the whole-training-set accuracy)."""
    return f"{run.log[column].iloc[0]:.2f} → {run.final[column]:.2f}"


stage1 = pd.DataFrame([{
    "case": case_label(c),
    "train": change(c["run"].align),
    "test": change(c["run"].align, "eval_outputs/accuracies"),
    "loss": c["run"].align.final["full_train_loss"],
    "pd": f"{c['sep']['base'][0]:.2f} → {c['sep']['aligned'][0]:.2f}",
    "snr": f"{c['sep']['base'][1]:.3f} → {c['sep']['aligned'][1]:.3f}",
} for c in cases])
page.table(stage1, columns={"case": "behaviour / seed", "train": "stage 1: training accuracy",
                            "test": "stage 1: test accuracy", "loss": "stage 1: final training loss",
                            "pd": "PD, base → aligned", "snr": "PD/√trace, base → aligned"},
           formats={"loss": ".4f"})
stage2 = pd.DataFrame([{
    "case": case_label(c),
    "loss_base": c["run"].from_base.final["full_train_loss"],
    "loss_aligned": c["run"].from_aligned.final["full_train_loss"],
    "test_base": c["run"].from_base.final["eval_loss"],
    "test_aligned": c["run"].from_aligned.final["eval_loss"],
    "acc_base": change(c["run"].from_base),
    "acc_aligned": change(c["run"].from_aligned),
} for c in cases])
page.table(stage2, columns={"case": "behaviour / seed", "loss_base": "loss at T, from base",
                            "loss_aligned": "loss at T, from aligned", "test_base": "test loss, from base",
                            "test_aligned": "test loss, from aligned", "acc_base": "accuracy 0 → T, from base",
                            "acc_aligned": "accuracy 0 → T, from aligned"},
           formats={k: ".4f" for k in ("loss_base", "loss_aligned", "test_base", "test_aligned")})
lora_gap = np.array([c["run"].from_base.final["full_train_loss"] - c["run"].from_aligned.final["full_train_loss"]
                     for c in cases])
lora_test_gap = np.array([c["run"].from_base.final["eval_loss"] - c["run"].from_aligned.final["eval_loss"]
                          for c in cases])
lora_acc_gain = {start: np.array([gain(getattr(c["run"], f"from_{start}"), "full_train_outputs/accuracies")
                                  for c in cases]) for start in ("base", "aligned")}
lora_acc_T = {start: np.array([getattr(c["run"], f"from_{start}").final["full_train_outputs/accuracies"]
                               for c in cases]) for start in ("base", "aligned")}
lora_acc_0 = {start: np.array([getattr(c["run"], f"from_{start}").log["full_train_outputs/accuracies"].iloc[0]
                               for c in cases]) for start in ("base", "aligned")}
lora_loss_T = {start: np.array([getattr(c["run"], f"from_{start}").final["full_train_loss"] for c in cases])
               for start in ("base", "aligned")}
page.glue("lora_gap", float(lora_gap.mean()))
page.glue("lora_test_gap", float(lora_test_gap.mean()))
page.glue("lora_faster", int((lora_gap > 0).sum()))
page.glue("lora_test_faster", int((lora_test_gap > 0).sum()))
for start in ("base", "aligned"):
    page.glue(f"lora_acc_gain_{start}", float(lora_acc_gain[start].mean()))
    page.glue(f"lora_acc0_{start}", float(lora_acc_0[start].mean()))
    page.glue(f"lora_accT_{start}", float(lora_acc_T[start].mean()))
    page.glue(f"lora_loss_{start}", float(lora_loss_T[start].mean()))
page.glue("lora_pd_base", float(np.mean([c["sep"]["base"][0] for c in cases])))
page.glue("lora_pd_aligned", float(np.mean([c["sep"]["aligned"][0] for c in cases])))
page.glue("lora_snr_base", float(np.mean([c["sep"]["base"][1] for c in cases])))
page.glue("lora_snr_aligned", float(np.mean([c["sep"]["aligned"][1] for c in cases])))
page.glue("lora_align_acc", float(np.mean([c["run"].align.final["full_train_outputs/accuracies"] for c in cases])))
page.glue("lora_align_acc0", float(np.mean([c["run"].align.log["full_train_outputs/accuracies"].iloc[0]
                                             for c in cases])))
page.glue("lora_merge_diff", max(c["run"].merge_difference for c in cases))
page.glue("lora_params", int(cases[0]["run"].align.info["trainable_parameters"]))

# %%
LORA_PANELS = {("loss", "batch"): "training loss", ("eval_loss", "eval"): "test loss",
               ("outputs/accuracies", "batch"): "training accuracy",
               ("eval_outputs/accuracies", "eval"): "test accuracy"}


def lora_curves(cases):
    """Long table of the stage-2 curves: each step's batch metrics (TRL's logged training curves) and the
    evaluated test steps, against epochs (steps x batch / training items)."""
    frames = []
    for c in cases:
        for start in ("base", "aligned"):
            run = getattr(c["run"], f"from_{start}")
            for (column, kind), panel in LORA_PANELS.items():
                if kind == "batch":
                    steps_, values = run.log["step"].to_numpy(), run.log[column].to_numpy()
                else:
                    steps_, values = run.curve(column)
                frames.append(pd.DataFrame({"epoch": steps_ * lora_batch / c["n_train"], "value": values,
                                            "panel": panel, "start": f"from {start}", "case": case_label(c)}))
    return pd.concat(frames, ignore_index=True)


def plot_start_curves(curves, panels, xlabel):
    """2 x 2 panels (losses on top, accuracies or log-prob differences below), base vs aligned start; thin
    lines: cases, thick: their mean."""
    fig, axes = panel_grid(4, ncols=2, aspect=0.7)
    for ax, panel in zip(axes, panels, strict=True):
        part = curves[curves["panel"] == panel]
        sns.lineplot(data=part, x=xlabel, y="value", hue="start", units="case", estimator=None, alpha=0.35,
                     palette=START_COLORS, legend=False, ax=ax, linewidth=0.8)
        sns.lineplot(data=part, x=xlabel, y="value", hue="start", errorbar=None, palette=START_COLORS,
                     legend=False, ax=ax, linewidth=2, marker="o", markersize=4)
        ax.set(title=panel, ylabel=panel.split(" ")[-1], xlabel=xlabel)
    axes[0].legend(handles=START_HANDLES)
    return fig


page.figure("fig_lora", plot_start_curves(lora_curves(cases), LORA_PANELS.values(), "epoch"))

# %% [markdown]
# ```{glue:figure} fig_lora
# :alt: Flipped-label LoRA training from the base and the aligned model: losses and accuracies by epoch.
# :name: fig-imli06-lora
#
# Stage 2 of the official set-up: flipped-label DPO with a fresh LoRA adapter from the base model and from the
# aligned model (thin lines: runs; thick: their mean). Training curves are each step's batch before its update, as
# TRL logs them; test curves the held-out items; accuracy is on the flipped labels.
# ```
#
# **Stage 1.** The adapter ({glue:text}`lora_params:,` trainable parameters) raised the training accuracy on the
# matching answers from {glue:text}`lora_align_acc0:.2f` to {glue:text}`lora_align_acc:.2f` on average. Loading
# the saved adapter into the base model and merging it reproduces the stage-1 policy: the log-probs differ by at
# most {glue:text}`lora_merge_diff:.1e` (fp32). Alignment raised the PD of the last-token features (train and test
# prompts, the model's final hidden state) from {glue:text}`lora_pd_base:.3f` to {glue:text}`lora_pd_aligned:.3f`
# on average, and the scale-free PD/√trace from {glue:text}`lora_snr_base:.4f` to
# {glue:text}`lora_snr_aligned:.4f`.
#
# **Stage 2.** After $T$ = {glue:text}`lora_T` flipped steps the training loss is {glue:text}`lora_loss_aligned:.4f`
# from the aligned start and {glue:text}`lora_loss_base:.4f` from the base start on average (mean gap
# {glue:text}`lora_gap:.4f` nats; lower from the aligned start in {glue:text}`lora_faster` of
# {glue:text}`n_cases` runs, on the test items in {glue:text}`lora_test_faster`). The flipped training accuracy
# went from {glue:text}`lora_acc0_aligned:.2f` to {glue:text}`lora_accT_aligned:.2f` from the aligned start (a
# gain of {glue:text}`lora_acc_gain_aligned:.2f`) and from {glue:text}`lora_acc0_base:.2f` to
# {glue:text}`lora_accT_base:.2f` from the base start (a gain of {glue:text}`lora_acc_gain_base:.2f`). Here, unlike
# in the last-block and toy comparisons below, the aligned start is ahead in the answers as well as in the loss:
# the LoRA adapter on every layer moves the features (PD up about fivefold), and the fresh adapter can move them
# back. This is one run of one behaviour; `-p lora_seeds=...` and `-p behaviours=...` give more.

# %%
feats = cases[0]["run"].features
fig, axes = panel_grid(2, ncols=2, aspect=0.8)
centred = feats["base"] - feats["base"].mean(0)
axes_pc = np.linalg.svd(centred, full_matrices=False)[2][:2].T  # the base features' first two principal axes
for ax, start in zip(axes, ("base", "aligned"), strict=True):
    coords = (feats[start] - feats["base"].mean(0)) @ axes_pc
    sns.scatterplot(x=coords[:, 0], y=coords[:, 1], ax=ax, s=14, legend=False,
                    hue=np.where(cases[0]["yes"], "Yes", "No"), palette={"Yes": "yellowgreen", "No": "dimgrey"})
    ax.set(title=f"{start} model (PD {cases[0]['sep'][start][0]:.2f})", xlabel="PC 1", ylabel="PC 2")
fig.legend(handles=[Line2D([], [], ls="", marker="o", color=c, label=f"matching answer: {name}")
                    for name, c in (("Yes", "yellowgreen"), ("No", "dimgrey"))],
           loc="outside upper center", ncol=2, frameon=False)
page.figure("fig_lora_pca", fig)
page.glue("pca_case", case_label(cases[0]))

# %% [markdown]
# ```{glue:figure} fig_lora_pca
# :alt: SmolLM2's last-token features of the prompts, base and aligned model, coloured by the matching answer.
# :name: fig-imli06-lora-pca
#
# The last-token features (final hidden state) of the training and test prompts under the base model and the
# aligned model, both projected on the base features' first two principal axes (behaviour / seed
# {glue:text}`pca_case`; the paper's "Before DPO / After DPO" figure uses UMAP).
# ```

# %% [markdown]
# ## Comparison: the last block on cached inputs
#
# The earlier version of this chapter trained SmolLM2's **last decoder layer**, the final norm and the " Yes"/" No"
# rows of the head (`analysis_lib.misalignment.LastBlock`, fp32, {glue:text}`block_params:,` parameters) on the
# cached hidden states entering that layer ({glue:text}`input_dtype` forward pass, cached per prompt). It stays
# as a smaller comparison: behaviour {glue:text}`block_behaviour_index`, {glue:text}`block_n_train` training and
# {glue:text}`block_n_test` test prompts, Adam {glue:text}`block_lr:g`, batch {glue:text}`block_batch`,
# {glue:text}`block_T` steps per stage, {glue:text}`block_seeds` seed(s). Run on the model's own fp32 inputs with
# the whole head, the block gives the full model's logits to {glue:text}`check_diff:.1e` (L1).

# %%
data = load_block_behaviour(block_behaviour, max_per_behaviour=block_items, model_id="smollm2",
                            template="raw_newline", device=device)
base_block, full_head, full_model, full_tok = load_base_block("smollm2", device=device)
check_idx = np.linspace(0, len(data.questions) - 1, min(check_prompts, len(data.questions))).astype(int)
logit_check = check_block_against_model(base_block, full_head, full_model, full_tok,
                                        [data.questions[i] for i in check_idx], "raw_newline")
del full_model, full_tok, full_head
block_runs = [block_misalignment(base_block, data.train, data.train_signs, data.test, data.test_signs,
                                 train_yes=data.train_yes, test_yes=data.test_yes, beta=beta, lr=block_lr,
                                 align_steps=block_steps, misalign_steps=block_steps, batch_size=block_batch,
                                 seed=seed + k, optimizer="adam", eval_every=block_eval_every, progress=True)
              for k in range(block_seeds)]
block = pd.DataFrame([{
    "seed": r.seed, "pd": f"{r.pd['base']['all']:.2f} → {r.pd['aligned']['all']:.2f}",
    "snr": f"{r.snr['base']['all']:.3f} → {r.snr['aligned']['all']:.3f}",
    "loss_base": r.from_base.final["full_train_loss"], "loss_aligned": r.from_aligned.final["full_train_loss"],
    "acc_base": change(r.from_base),
    "acc_aligned": change(r.from_aligned),
} for r in block_runs])
page.table(block, columns={"seed": "seed", "pd": "PD, base → aligned", "snr": "PD/√trace, base → aligned",
                           "loss_base": "loss at T, from base", "loss_aligned": "loss at T, from aligned",
                           "acc_base": "accuracy 0 → T, from base", "acc_aligned": "accuracy 0 → T, from aligned"},
           formats={"loss_base": ".4f", "loss_aligned": ".4f"})
block_gap = block["loss_base"].to_numpy() - block["loss_aligned"].to_numpy()
block_acc_gain = {start: np.array([gain(getattr(r, f"from_{start}"), "full_train_outputs/accuracies")
                                   for r in block_runs]) for start in ("base", "aligned")}
for name, value in [("block_behaviour_index", data.index), ("block_n_train", len(data.train)),
                    ("block_n_test", len(data.test)), ("block_lr", block_lr), ("block_batch", block_batch),
                    ("block_T", block_steps), ("block_seeds", block_seeds), ("check_diff", logit_check["max_abs_diff"]),
                    ("block_params", sum(p.numel() for p in base_block.parameters() if p.requires_grad)),
                    ("input_dtype", feature_dtype("auto", device)), ("block_gap", float(block_gap.mean())),
                    ("block_faster", int((block_gap > 0).sum())),
                    ("block_gain_base", float(block_acc_gain["base"].mean())),
                    ("block_gain_aligned", float(block_acc_gain["aligned"].mean()))]:
    page.glue(name, value)

BLOCK_PANELS = {"full_train_loss": "training loss", "eval_loss": "test loss",
                "full_train_outputs/accuracies": "training accuracy", "eval_outputs/accuracies": "test accuracy"}


def stage2_curves(pairs, columns):
    """Long table of the stage-2 curves (evaluated steps) of (label, {start: run}) pairs."""
    frames = []
    for label, runs in pairs:
        for start, run in runs.items():
            for column, panel in columns.items():
                steps_, values = run.curve(column)
                frames.append(pd.DataFrame({"step": steps_, "value": values, "panel": panel, "start": start,
                                            "case": label}))
    return pd.concat(frames, ignore_index=True)


page.figure("fig_block", plot_start_curves(stage2_curves(
    [(r.seed, {"from base": r.from_base, "from aligned": r.from_aligned}) for r in block_runs], BLOCK_PANELS),
    BLOCK_PANELS.values(), "step"))

# %% [markdown]
# ```{glue:figure} fig_block
# :alt: Flipped-label training of SmolLM2's last block from the base and aligned block: losses and accuracies.
# :name: fig-imli06-block
#
# The last-block comparison: flipped-label DPO from the base block and from the aligned block (whole training set
# every few steps, test set every step; accuracy on the flipped labels).
# ```
#
# After {glue:text}`block_T` flipped steps the last block's training loss is lower from the aligned start in
# {glue:text}`block_faster` of {glue:text}`block_seeds` seed(s) (mean gap {glue:text}`block_gap:.3f` nats), while
# the flipped accuracy gained {glue:text}`block_gain_aligned:.2f` from the aligned start against
# {glue:text}`block_gain_base:.2f` from the base start.
#
# ## Comparison: a toy with trainable features, and the frozen-feature controls
#
# The toy (the notes' check d2): inputs $g \sim N(0, I_d) + s\,u$ ($d$ = {glue:text}`toy_d`,
# {glue:text}`toy_n` training inputs), features $f = \tanh(A g)$, head $v$, DPO on the Yes-minus-No logit
# $v^\top f$ with SGD ($\beta$ = {glue:text}`toy_beta:g`, $\eta$ = {glue:text}`toy_lr:g`, batch
# {glue:text}`toy_batch`): {glue:text}`toy_align_steps` aligning steps, then $T$ = {glue:text}`toy_T` flipped steps
# from the base and from the aligned model, {glue:text}`toy_seeds` seeds. The controls train only the head, on
# flipped labels, on *identical* fixed features (the toy's base features; SmolLM2's base-block last-token
# features) from two different starting heads.

# %%
toy_runs = [toy_misalignment(seed + k, n=toy_n, d=toy_d, beta=toy_beta, lr=toy_lr, batch_size=toy_batch,
                             align_steps=toy_align_steps, misalign_steps=toy_misalign_steps, device=device)
            for k in range(toy_seeds)]
toy = pd.DataFrame([{
    "seed": r.seed, "pd": f"{r.pd_base:.2f} → {r.pd_aligned:.2f}", "ratio": r.pd_aligned / r.pd_base,
    "loss_base": r.from_base.final["full_train_loss"], "loss_aligned": r.from_aligned.final["full_train_loss"],
    "acc_base": change(r.from_base),
    "acc_aligned": change(r.from_aligned),
} for r in toy_runs])
toy["gap"] = toy["loss_base"] - toy["loss_aligned"]
toy_acc_gain = {start: np.array([gain(getattr(r, f"from_{start}"), "full_train_outputs/accuracies")
                                 for r in toy_runs]) for start in ("base", "aligned")}
page.table(toy, columns={"seed": "seed", "pd": "feature PD, base → aligned", "loss_base": "loss at T, from base",
                         "loss_aligned": "loss at T, from aligned", "acc_base": "accuracy 0 → T, from base",
                         "acc_aligned": "accuracy 0 → T, from aligned"},
           formats={"loss_base": ".4f", "loss_aligned": ".4f"})
first = toy_runs[0]
flip_s, flip_test = -first.data.train_s, -first.data.test_s
control = last_layer_control(toy_features(first.base, first.data.train_g).cpu().numpy(), flip_s,
                             [first.base.v, first.aligned.v],
                             test_features=toy_features(first.base, first.data.test_g).cpu().numpy(),
                             test_signs=flip_test, beta=toy_beta, lr=toy_lr, steps=toy_misalign_steps,
                             batch_size=toy_batch, seed=2 * first.seed + 1, device=device)
g_base = block_features(base_block, data.train)
lm_control = last_layer_control(g_base, -data.train_signs, [base_block.answer_rows.detach().cpu(),
                                                           block_runs[0].aligned.answer_rows.detach().cpu()],
                                beta=beta, lr=block_lr, steps=block_steps, batch_size=block_batch,
                                seed=2 * block_runs[0].seed + 1, test_features=block_features(base_block, data.test),
                                test_signs=-data.test_signs, optimizer="adam", device=device)
for name, value in [("toy_n", toy_n), ("toy_d", toy_d), ("toy_align_steps", toy_align_steps),
                    ("toy_T", toy_misalign_steps), ("toy_beta", toy_beta), ("toy_lr", toy_lr),
                    ("toy_batch", toy_batch), ("toy_seeds", toy_seeds), ("toy_gap", float(toy["gap"].mean())),
                    ("toy_faster", int((toy["gap"] > 0).sum())), ("toy_ratio", float(toy["ratio"].mean())),
                    ("toy_gain_base", float(toy_acc_gain["base"].mean())),
                    ("toy_gain_aligned", float(toy_acc_gain["aligned"].mean())),
                    ("control_diff", control["max_loss_difference"]),
                    ("lm_control_diff", lm_control["max_loss_difference"])]:
    page.glue(name, value)

# %% [markdown]
# In the toy, alignment multiplied the feature PD by {glue:text}`toy_ratio:.1f` on average; after $T$ flipped
# steps the loss is lower from the aligned start in {glue:text}`toy_faster` of {glue:text}`toy_seeds` seeds (mean
# gap {glue:text}`toy_gap:.3f` nats), while the flipped accuracy gained {glue:text}`toy_gain_aligned:.2f` from the
# aligned start against {glue:text}`toy_gain_base:.2f` from the base start: the DPO loss measures the move of the
# logit *relative to the reference*, and the aligned reference prefers the old answers strongly, so the loss can
# fall fast while the answers have not crossed over. On identical fixed features the two heads' losses differ by
# at most {glue:text}`control_diff:.1e` (toy) and {glue:text}`lm_control_diff:.1e` (SmolLM2's features): the
# starting head alone does not change how fast the flipped loss falls.
#
# ## Claim checks
#
# Every "all runs" criterion asks for the direction in every run (behaviour x seed for LoRA, seed otherwise); the
# toy's thresholds are the notes' N7 criteria (T4: N6's). P0, P6, C1, C2 and L1 hold by construction and verify
# the code.

# %%
n_lora = len(cases)
step0 = max(abs(getattr(c["run"], f"from_{start}").log[col].iloc[0] - math.log(2))
            for c in cases for start in ("base", "aligned") for col in ("full_train_loss", "eval_loss"))
claims.check_at_most("P0", "LoRA: flipped loss at step 0 = log 2 from both starts, training and test sets "
                     "(reference = the start; largest |loss - log 2|; bf16 rounding of cached references)",
                     step0, 1e-4, kind="identity")
claims.check_at_most("P6", "LoRA: base + the saved adapter, merged, reproduces the stage-1 policy (largest "
                     "|log-prob difference|, fp32)", max(c["run"].merge_difference for c in cases), 1e-3,
                     kind="identity")
claims.check_fraction("P1", "LoRA: stage 1 aligns: the test accuracy on the matching answers rises (runs)",
                      sum(gain(c["run"].align, "eval_outputs/accuracies") > 0 for c in cases), n_lora, 1.0,
                      kind="claim")
claims.check_fraction("P2", "LoRA: PD of the last-token features rises with alignment, PD(aligned) > PD(base) (runs)",
                      sum(c["sep"]["aligned"][0] > c["sep"]["base"][0] for c in cases), n_lora, 1.0, kind="claim")
claims.check_fraction("P2b", "LoRA (our scale-free variant): PD / sqrt(pooled trace) rises with alignment (runs)",
                      sum(c["sep"]["aligned"][1] > c["sep"]["base"][1] for c in cases), n_lora, 1.0, kind="claim")
claims.check_fraction("P3", f"LoRA: flipped training loss after T = {T} steps is lower from the aligned start than "
                      "from the base start (runs; the paper's claim)", int((lora_gap > 0).sum()), n_lora, 1.0,
                      kind="claim")
claims.check_fraction("P4", f"LoRA: flipped test loss after T = {T} steps is lower from the aligned start (runs)",
                      int((lora_test_gap > 0).sum()), n_lora, 1.0, kind="claim")
claims.check_fraction("P5", f"LoRA: flipped training accuracy rises more over the T = {T} steps from the aligned "
                      "start than from the base start (runs; the figure's expected pattern)",
                      int((lora_acc_gain["aligned"] > lora_acc_gain["base"]).sum()), n_lora, 1.0, kind="claim")
claims.check_at_most("L1", f"last block on the model's own fp32 inputs vs the full fp32 model, largest |logit "
                     f"difference| over {len(check_idx)} prompts x the whole vocabulary", logit_check["max_abs_diff"],
                     1e-3, kind="identity")
n_block = len(block_runs)
claims.check_fraction("L2", "last block: PD of its last-token features rises with alignment (seeds)",
                      sum(r.pd["aligned"]["all"] > r.pd["base"]["all"] for r in block_runs), n_block, 1.0,
                      kind="claim")
claims.check_fraction("L2b", "last block (our scale-free variant): PD / sqrt(pooled trace) rises (seeds)",
                      sum(r.snr["aligned"]["all"] > r.snr["base"]["all"] for r in block_runs), n_block, 1.0,
                      kind="claim")
claims.check_fraction("L3", f"last block: flipped training loss after T = {block_steps} steps is lower from the "
                      "aligned start (seeds)", int((block_gap > 0).sum()), n_block, 1.0, kind="claim")
claims.check_fraction("L4", f"last block: flipped training accuracy rises more over the T = {block_steps} steps from "
                      "the aligned start (seeds)", int((block_acc_gain["aligned"] > block_acc_gain["base"]).sum()),
                      n_block, 1.0, kind="claim")
n_toy = len(toy)
claims.check_fraction("T1", f"toy: flipped training loss after T = {toy_misalign_steps} steps is lower from the "
                      "aligned start (seeds; N7)", int((toy["gap"] > 0).sum()), n_toy, 1.0, min_cases=5,
                      few_cases_note="the notes' criterion asks for at least 5 seeds", kind="claim")
claims.check_at_least("T2", f"toy: mean gap loss_base(T) - loss_aligned(T) in nats at T = {toy_misalign_steps} (N7)",
                      float(toy["gap"].mean()), 0.03, kind="claim")
claims.check_fraction("T3", "toy: feature PD rises with alignment (seeds)", int((toy["ratio"] > 1).sum()), n_toy, 1.0,
                      min_cases=5, few_cases_note="the notes' criterion asks for at least 5 seeds", kind="claim")
claims.check_at_least("T4", "toy: smallest PD ratio aligned / base over the seeds (N6's criterion, >= 1.5)",
                      float(toy["ratio"].min()), 1.5, kind="claim")
claims.check_fraction("T5", f"toy: flipped training accuracy rises more over the T = {toy_misalign_steps} steps from "
                      "the aligned start (seeds; the figure's expected pattern, not an N7 criterion)",
                      int((toy_acc_gain["aligned"] > toy_acc_gain["base"]).sum()), n_toy, 1.0, min_cases=5,
                      few_cases_note="the notes' criterion asks for at least 5 seeds", kind="claim")
claims.check_at_most("C1", "toy control: identical fixed features, flipped head-only DPO from the base and from the "
                     "aligned head: largest difference of the losses and weight changes (all steps)",
                     control["max_loss_difference"], 1e-6, kind="identity")
claims.check_at_most("C2", "SmolLM2 control: identical fixed last-token features (base block), flipped head-only DPO "
                     "from the base and from the aligned block's answer rows: largest difference of the losses and "
                     "weight changes", lm_control["max_loss_difference"], 1e-6, kind="identity")
page.report()

# %% [markdown]
# P0, P6, L1, C1 and C2 are identities and hold. In the LoRA set-up every claim holds in this run: stage 1 aligns
# (P1), the features separate (P2, P2b), and the flipped loss (P3, P4) and accuracy (P5) move faster from the
# aligned start, with one run under declared differences (scale, learning rate, no EOS). In the last block the
# loss claim holds (L3) but the accuracy does not rise more from the aligned start (L4; not reproduced under the
# declared differences of that comparison); in the toy the loss criteria hold (T1-T4) and the accuracy does not
# (T5, a finding: the DPO loss measures the move relative to the aligned reference, which can fall while the
# answers have not crossed over).
#
# ## What differs from the paper
#
# The LoRA runs follow the official code's misalignment flow step by step: the adapter (rank, alpha, dropout, target
# modules), the optimiser (AdamW, constant learning rate, no warm-up or weight decay), $\beta$, one epoch per stage,
# the aligned model as base + the merged adapter of a DPO run on the same behaviour with the reference loaded from
# the same adapter, a fresh adapter on flipped labels, and TRL's logged metrics. They differ in the model (135M
# parameters, a quantised checkpoint, not Llama-2-7B), in the scale (balanced subsets of the behaviour's split,
# {glue:text}`lora_train_items` training and {glue:text}`lora_test_items` test items instead of the official 900 and
# 100, to keep the chapter within its time budget, and {glue:text}`lora_batch_text` instead of 128, so that one
# epoch is the paper's eight steps), in the learning rate
# ({glue:text}`lora_lr_factor:.0f` times the paper's, chosen on stage 1 alone), and, at the defaults, in the answers
# (no EOS token after " Yes"/" No"). The last-block run and the toy are our own comparisons, not the paper's
# experiments. The declared differences:

# %% tags=["remove-input"]
page.glue("lora_lr_factor", lora_lr / 1e-5)
page.glue("lora_train_items", lora_train)
page.glue("lora_test_items", lora_test)
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
