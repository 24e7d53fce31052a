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
# # Aligned models are misaligned faster in their loss, not in their answers
#
# :::{admonition} Key result
# :class: tip
# Flipped-label DPO lowers the loss faster from an aligned start than from the base model: in the toy model in
# {glue:text}`toy_faster` of {glue:text}`toy_seeds` seeds (mean gap {glue:text}`toy_gap:.3f` nats), and on SmolLM2
# with its last block trainable in {glue:text}`lm_faster` of {glue:text}`lm_seeds` seeds after the
# {glue:text}`lm_T` steps fixed in advance (the third panel below shows how this depends on the step count). But
# the **answers do not
# flip faster** (a finding, in both parts): over the same steps the flipped accuracy gained
# {glue:text}`acc_gain_aligned:.2f` from the aligned start against {glue:text}`acc_gain_base:.2f` from the base
# start on SmolLM2 ({glue:text}`toy_gain_aligned_mean:.2f` against {glue:text}`toy_gain_base_mean:.2f` in the toy).
# On identical fixed features the starting head makes no difference to the loss (largest difference
# {glue:text}`control_diff:.0e`).
#
# ```{glue:figure} fig_lm
# :alt: Loss and flipped accuracy curves of SmolLM2 flipped-label DPO from the base and the aligned block.
# :name: fig-imli06-lm-key
#
# SmolLM2, last block trainable, flipped labels: the loss falls faster from the aligned start (top row; the third
# panel continues the first seed's run), while the flipped accuracy does not rise faster (bottom row). Thin lines:
# seeds; thick: their mean.
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` report that DPO with *flipped* preferences (chosen and rejected swapped)
# lowers the loss faster when it starts from a model that was first aligned with DPO than when it starts from the
# base model, and conclude that aligned models may be more vulnerable to misuse. This claim is known to us only
# from secondary summaries of the paper ([summary] in the paper notes), and the official code's figure script
# (`misalign_plot.py`: Llama-2-7B, LoRA, behaviour 84, loss and accuracy curves "Base" vs "Aligned", where the
# notes expect the aligned curve to drop faster in loss and to rise faster in flipped accuracy).
#
# **Mechanism (our reconstruction, [derived] in the notes).** In last-layer DPO the first step lowers the loss by
# $\eta\beta^2\|\Delta\|^2/8$ ({ref}`imli-03-learning-speed`), where $\Delta = \mu^+ - \mu^-$ is the gap between
# the mean features of the two answers' prompts: the rate depends on the preference distinguishability
# $\|\Delta\|$, **not on the sign of the labels**. Alignment that moves the features separates the two classes
# more, so the aligned model is also faster to push the other way. The corollary is a control: with the
# features *fixed* and the starting model as reference, the loss depends on the head only through $v - v_{ref}$ and
# its gradient not at all on $v_{ref}$, so flipped training from *any* two heads on the same features follows the
# same loss curve. The effect therefore needs features that alignment changed.
#
# The statements tested, in a toy model and on SmolLM2: alignment raises the feature PD (T3, T4, L2, L2b); the
# flipped loss after $T$ steps is lower from the aligned start (T1, T2, L3); the flipped accuracy rises more from
# the aligned start (T5, L4); and, by construction, identical fixed features give identical losses from two heads
# (C1, C2).
#
# ## Setting
#
# Both parts are our reconstructions of the paper's experiment:
#
# 1. **A toy model with trainable features** (the notes' check d2): inputs $g \sim N(0, I_d) + s\,u$, features
#    $f = \tanh(A g)$, head $v$, DPO on the Yes-minus-No logit $v^\top f$. Stage 1 aligns (labels $s$); stage 2
#    trains flipped labels from the base model (reference = base) and from the aligned model (reference =
#    aligned), with the same batches. Plus the control on identical fixed embeddings.
# 2. **SmolLM2-135M-Instruct** {cite}`allal2025smollm2` on the persona behaviour of the paper's misalignment figure
#    {cite}`perez2023discovering`, with trainable features made cheap: only the **last transformer block** (its
#    attention and MLP, the final norm and the " Yes"/" No" rows of the head) is trained, on cached hidden states
#    entering that block, in fp32.
#
# The chapter extracts its own block inputs (cached per prompt, so only the first run pays for them).

# %% tags=["parameters"]
seed = 0  # [0..100000] first seed; the toy's seeds set data, initialisation and batches, the LM's the batch orders
toy_seeds = 5  # [1..100] toy seeds (seed, seed + 1, ...) {smoke: 2}
toy_n = 1000  # [10..100000] toy training inputs (balanced) {smoke: 200}
toy_d = 32  # [2..1024] toy input and feature dimension
toy_separation = 2.0  # [> 0] distance of the toy's two class means (2: g = N(0, I) + s u)
toy_beta = 0.1  # [> 0] toy DPO inverse temperature
toy_lr = 1.0  # [> 0] toy SGD learning rate
toy_batch = 128  # [1..100000] toy SGD batch {smoke: 64}
toy_align_steps = 300  # [1..100000] toy stage 1 (alignment) steps {smoke: 20}
toy_misalign_steps = 100  # [1..100000] toy stage 2 (flipped) steps, T of the toy checks {smoke: 10}
model_id = "smollm2"  # model: 'smollm2' or a Llama-family model folder / hub id
behaviour = 84  # [0..134] persona behaviour (84 is the paper's misalignment figure)
template = "raw_newline"  # [one of: raw, raw_newline, chat, human_assistant] prompt format (full-DPO code: raw_newline)
max_per_behaviour = 300  # [0..1000] balanced random subset of the behaviour (official split); 0 = all {smoke: 40}
beta = 0.01  # [> 0] DPO inverse temperature (the paper's)
lr = 3e-4  # [> 0] learning rate of the last block (chosen on stage 1 alone; see below)
optimizer = "adam"  # [one of: adam, sgd] optimizer of the last block (adam = AdamW without weight decay)
batch_size = 64  # [1..4096] batch, drawn afresh each step {smoke: 8}
align_steps = 40  # [1..10000] stage 1 (alignment) steps {smoke: 3}
misalign_steps = 40  # [1..10000] stage 2 (flipped) steps, T of the LM checks {smoke: 3}
long_steps = 100  # [0..10000] the first seed's stage 2 also runs this long (0: no longer run) {smoke: 0}
lm_seeds = 3  # [1..20] LM seeds (batch orders of both stages) {smoke: 1}
eval_every = 5  # [1..10000] whole-training-set evaluation every this many steps (test set: every step)
check_prompts = 4  # [1..1000] prompts for the check of the block against the full model's logits {smoke: 2}

# %% [markdown]
# **Paper-scale settings** (the official code's misalignment run, `DPO_training.py -t peft`, and its figure
# `misalign_plot.py`) against this chapter's defaults:
#
# | setting | paper | this chapter (real-LM part) |
# |---|---|---|
# | model | Llama-2-7B | SmolLM2-135M-Instruct, Q4_1 dequantised to fp32 |
# | trained | LoRA (r = 8, alpha = 32) on q_proj, v_proj of every layer | last decoder layer, final norm, 2 head rows |
# | trainable parameters | LoRA adapters | {glue:text}`block_params:,` |
# | "Aligned" start | base + the merged adapter of a DPO run, then a fresh adapter | the block after stage 1 |
# | optimizer, learning rate | AdamW, constant 1e-5, bf16 | `optimizer = "adam"` (no weight decay), `lr = 3e-4`, fp32 |
# | $\beta$ | 0.01 | `beta = 0.01` |
# | batch | 128 | `batch_size = 64` |
# | length per stage | 1 epoch of 900 items (about 8 steps) | 40 steps ({glue:text}`epochs_per_stage:.1f` epochs) |
# | data | behaviour 84, 900 / 100 split | `behaviour = 84`, official split of a balanced 300-item subset |
# | prompt, answers | question + newline; TRL appends EOS | question + newline; single-token " Yes" / " No" |
#
# Closer to the paper (one epoch of all 1,000 items at the paper's learning rate and batch; a GPU is used when
# present, `ANALYSIS_LIB_DEVICE=cuda`): `python3 run.py chapter imli_06_misalignment -p max_per_behaviour=0
# -p batch_size=128 -p lr=1e-5 -p align_steps=8 -p misalign_steps=8 -p long_steps=0`. A Llama-family 7B model is
# `-p model_id=meta-llama/Llama-2-7b-hf` on a GPU machine (only its last block is trained; LoRA on every layer is
# not implemented here). The toy's defaults are the notes' check d2.
#
# **How the learning rate was chosen.** On stage 1 alone (the alignment run of the first seed, before any
# flipped run had been made), Adam at $\beta = 0.01$ was tried for 40 steps at learning rates 1e-4 and 3e-4 (and
# at $\beta = 0.1$ at 1e-5, 3e-5 and 1e-4); 3e-4 was the smallest of these at which $\beta = 0.01$ visibly aligned
# the block (the stage-1 columns of the first SmolLM2 table below show what it reaches). The stage-2 length
# $T$ = 40 was fixed equal to stage 1 at the same time. Nothing was changed after the flipped runs were seen; the
# longer run of the first seed was added afterwards, to show how the comparison depends on $T$. The accuracy checks
# T5 and L4 and the scale-free L2b were added after the first runs had shown the accuracy pattern and how much of
# the PD rise is scale; they record what was measured, whichever way it goes.

# %%
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis_lib.misalignment import (
    block_features,
    block_misalignment,
    check_block_against_model,
    last_layer_control,
    load_base_block,
    load_block_behaviour,
    toy_features,
    toy_misalignment,
)
from analysis_lib.models import extract_block_inputs, feature_dtype
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.runtime import get_device

page = start_page("imli_06_misalignment", seed)
rng, claims = page.rng, page.claims
claims.declare("L2b", "adaptation",
               "PD divided by the root of the pooled class-covariance trace is our scale-free variant; the notes' "
               "measure, the PD itself, is L2")
device = get_device()
if long_steps and long_steps < misalign_steps:
    raise ValueError(f"long_steps: must be 0 or at least misalign_steps ({misalign_steps}), got {long_steps}")
START_COLORS = dict(zip(["from base", "from aligned"], ordered_colors(2), strict=True))

# %% [markdown]
# ## Part 1: a toy model with trainable features
#
# Each seed draws {glue:text}`toy_n` training and 200 test inputs in $d$ = {glue:text}`toy_d` dimensions with class
# means {glue:text}`toy_separation:g` apart, initialises $A$ with $N(0, 1/d)$ entries and $v$ with
# $0.1\,N(0, 1)$ entries, aligns for {glue:text}`toy_align_steps` SGD steps and then trains the flipped labels for
# $T$ = {glue:text}`toy_T` steps from both starts ($\beta$ = {glue:text}`toy_beta:g`, $\eta$ = {glue:text}`toy_lr:g`,
# batch {glue:text}`toy_batch`). Feature PD is $\|\mu^+ - \mu^-\|$ of $f = \tanh(Ag)$ on the training inputs,
# classes by the original labels.

# %%
toy_runs = [toy_misalignment(seed + k, n=toy_n, d=toy_d, separation=toy_separation, beta=toy_beta, lr=toy_lr,
                             batch_size=toy_batch, align_steps=toy_align_steps, misalign_steps=toy_misalign_steps,
                             device=device) for k in range(toy_seeds)]
toy = pd.DataFrame([{
    "seed": r.seed, "PD base": r.pd_base, "PD aligned": r.pd_aligned, "PD ratio": r.pd_aligned / r.pd_base,
    "stage-1 accuracy": r.align.final["full_train_outputs/accuracies"],
    "flipped loss from base": r.from_base.final["full_train_loss"],
    "flipped loss from aligned": r.from_aligned.final["full_train_loss"],
    "flipped accuracy from base": r.from_base.final["full_train_outputs/accuracies"],
    "flipped accuracy from aligned": r.from_aligned.final["full_train_outputs/accuracies"],
    "test loss from base": r.from_base.final["eval_loss"], "test loss from aligned": r.from_aligned.final["eval_loss"],
} for r in toy_runs])
toy["gap (base - aligned)"] = toy["flipped loss from base"] - toy["flipped loss from aligned"]
for name, value in [("toy_n", toy_n), ("toy_d", toy_d), ("toy_separation", toy_separation),
                    ("toy_align_steps", toy_align_steps), ("toy_T", toy_misalign_steps), ("toy_beta", toy_beta),
                    ("toy_lr", toy_lr), ("toy_batch", toy_batch), ("toy_seeds", toy_seeds)]:
    page.glue(name, value)
page.glue("toy_pd_base", float(toy["PD base"].mean()))
page.glue("toy_pd_aligned", float(toy["PD aligned"].mean()))
page.glue("toy_pd_ratio", float(toy["PD ratio"].mean()))
page.glue("toy_loss_base", float(toy["flipped loss from base"].mean()))
page.glue("toy_loss_aligned", float(toy["flipped loss from aligned"].mean()))
page.glue("toy_gap", float(toy["gap (base - aligned)"].mean()))
page.glue("toy_faster", int((toy["gap (base - aligned)"] > 0).sum()))
toy_acc0_base = np.array([r.from_base.at(0, "full_train_outputs/accuracies") for r in toy_runs])
toy_acc0_aligned = np.array([r.from_aligned.at(0, "full_train_outputs/accuracies") for r in toy_runs])
toy_gain_base = toy["flipped accuracy from base"].to_numpy() - toy_acc0_base
toy_gain_aligned = toy["flipped accuracy from aligned"].to_numpy() - toy_acc0_aligned
for name, value in [("toy_acc0_base", toy_acc0_base), ("toy_acc0_aligned", toy_acc0_aligned),
                    ("toy_accT_base", toy["flipped accuracy from base"]),
                    ("toy_accT_aligned", toy["flipped accuracy from aligned"]),
                    ("toy_gain_base_mean", toy_gain_base), ("toy_gain_aligned_mean", toy_gain_aligned)]:
    page.glue(name, float(np.mean(value)))
page.table(toy, columns={"seed": "seed", "PD base": "feature PD, base", "PD aligned": "feature PD, aligned",
                         "PD ratio": "PD ratio", "stage-1 accuracy": "stage-1 accuracy"},
           formats={"PD base": ".3f", "PD aligned": ".3f", "PD ratio": ".2f", "stage-1 accuracy": ".3f"})
page.table(toy, columns={"seed": "seed", "flipped loss from base": "loss at T, from base",
                         "flipped loss from aligned": "loss at T, from aligned", "gap (base - aligned)": "gap",
                         "flipped accuracy from base": "accuracy at T, from base",
                         "flipped accuracy from aligned": "accuracy at T, from aligned"},
           formats={"flipped loss from base": ".4f", "flipped loss from aligned": ".4f",
                    "gap (base - aligned)": ".4f", "flipped accuracy from base": ".3f",
                    "flipped accuracy from aligned": ".3f"})


# %%
def stage2_curves(pairs, columns):
    """Long table of the stage-2 curves (evaluated steps) of (seed, {start: run}) pairs."""
    frames = []
    for run_seed, runs in pairs:
        for start, run in runs.items():
            for column, panel in columns.items():
                steps_, values = run.curve(column)
                frames.append(pd.DataFrame({"step": steps_, "value": values, "panel": panel, "start": start,
                                            "seed": run_seed}))
    return pd.concat(frames, ignore_index=True)


PANELS = {"full_train_loss": "training loss", "eval_loss": "test loss",
          "full_train_outputs/accuracies": "training accuracy", "eval_outputs/accuracies": "test accuracy"}
START_HANDLES = [Line2D([], [], color=c, lw=2, label=name) for name, c in START_COLORS.items()]


def plot_stage2(curves, extra=None):
    """The four stage-2 panels, losses in the first row and accuracies in the second (2 x 2); with ``extra`` (a
    function drawing on one more axis) 2 x 3, ``extra`` at the end of the loss row and the legend at the end of the
    accuracy row."""
    if extra is None:
        fig, axes = panel_grid(4, ncols=2, aspect=0.7)
        slots = axes
    else:
        fig, axes = panel_grid(6, ncols=3, aspect=1.0)
        slots = [axes[0], axes[1], axes[3], axes[4]]
    for ax, panel in zip(slots, PANELS.values(), strict=True):
        part = curves[curves["panel"] == panel]
        sns.lineplot(data=part, x="step", y="value", hue="start", units="seed", estimator=None, alpha=0.35,
                     palette=START_COLORS, legend=False, ax=ax, linewidth=0.8)
        sns.lineplot(data=part, x="step", y="value", hue="start", errorbar=None, palette=START_COLORS,
                     legend=False, ax=ax, linewidth=2)
        ax.set(title=panel, ylabel=panel.split(" ")[-1], xlabel="stage-2 step")
    if extra is None:
        axes[0].legend(handles=START_HANDLES)
    else:
        extra(axes[2])
        axes[5].axis("off")
        axes[5].legend(handles=START_HANDLES, loc="center", frameon=False)
    return fig


page.figure("fig_toy", plot_stage2(stage2_curves([(r.seed, {"from base": r.from_base,
                                                            "from aligned": r.from_aligned}) for r in toy_runs],
                                                 PANELS)))

# %% [markdown]
# ```{glue:figure} fig_toy
# :alt: Four panels: training and test loss and flipped accuracy of the toy model, from the base and aligned start.
# :name: fig-imli06-toy
#
# Toy model, flipped-label DPO from the base and from the aligned model (thin lines: seeds; thick: their mean;
# accuracy on the flipped labels). The loss falls faster from the aligned start; the accuracy does not rise faster.
# ```
#
# Alignment raised the feature PD from {glue:text}`toy_pd_base:.2f` to {glue:text}`toy_pd_aligned:.2f` on average
# (ratio {glue:text}`toy_pd_ratio:.1f`). After $T$ = {glue:text}`toy_T` flipped steps the training loss from the
# aligned start is {glue:text}`toy_loss_aligned:.3f` against {glue:text}`toy_loss_base:.3f` from the base start
# (mean gap {glue:text}`toy_gap:.3f` nats; the aligned start is lower in {glue:text}`toy_faster` of
# {glue:text}`toy_seeds` seeds). The notes' check d2 found the same direction with its own random draws; the
# numbers here are this chapter's own.
#
# The flipped *accuracy* (the policy's own ordering $s\,v^\top f > 0$ on the flipped labels) tells a different
# story: from the base start it rose from {glue:text}`toy_acc0_base:.2f` to {glue:text}`toy_accT_base:.2f`, from the
# aligned start only from {glue:text}`toy_acc0_aligned:.2f` to {glue:text}`toy_accT_aligned:.2f`. The DPO loss
# measures the move of the logit *relative to the reference*, $\beta s (z - z_{ref})$; the aligned model's reference
# prefers the old answers strongly, so its loss falls fast while its answers have not yet crossed over. "Misaligned
# faster" holds here for the loss, the quantity the mechanism is about, and not (within $T$ steps) for the answers:
# the expectation that the flipped accuracy also rises faster does not hold (a finding).
#
# ## The control: identical embeddings, two heads
#
# Freeze the features at the first seed's *base* features $f = \tanh(A_{base}\,g)$ and train only the head on the
# flipped labels, once from the base head $v_{base}$ and once from the aligned head $v_{aligned}$, each with its
# own start as reference and the same batches (`analysis_lib.lastlayer.train_last_layer_dpo`, float64). By the
# argument above the losses and the weight change must coincide; the accuracies need not, because accuracy is the
# sign of $s\,v^\top f$ and uses $v$ itself. For contrast, the same head-only training on *different* fixed
# features, the aligned model's features with the aligned head, shows what the features alone contribute.

# %%
first = toy_runs[0]
f_base = toy_features(first.base, first.data.train_g).cpu().numpy()
f_aligned = toy_features(first.aligned, first.data.train_g).cpu().numpy()
ft_base = toy_features(first.base, first.data.test_g).cpu().numpy()
ft_aligned = toy_features(first.aligned, first.data.test_g).cpu().numpy()
flip_s, flip_test = -first.data.train_s, -first.data.test_s
control_args = {"beta": toy_beta, "lr": toy_lr, "steps": toy_misalign_steps, "batch_size": toy_batch,
                "seed": 2 * first.seed + 1, "device": device}
control = last_layer_control(f_base, flip_s, [first.base.v, first.aligned.v], test_features=ft_base,
                             test_signs=flip_test, **control_args)
other = last_layer_control(f_aligned, flip_s, [first.aligned.v, first.aligned.v], test_features=ft_aligned,
                           test_signs=flip_test, **control_args)["runs"][0]
control_table = pd.DataFrame([
    {"features": "base (identical)", "start head": "base", "flipped loss at T": control["runs"][0].final[
        "full_train_loss"], "flipped accuracy at T": control["runs"][0].final["full_train_outputs/accuracies"]},
    {"features": "base (identical)", "start head": "aligned", "flipped loss at T": control["runs"][1].final[
        "full_train_loss"], "flipped accuracy at T": control["runs"][1].final["full_train_outputs/accuracies"]},
    {"features": "aligned", "start head": "aligned", "flipped loss at T": other.final["full_train_loss"],
     "flipped accuracy at T": other.final["full_train_outputs/accuracies"]},
])
page.table(control_table, formats={"flipped loss at T": ".6f", "flipped accuracy at T": ".3f"})
page.glue("control_diff", control["max_loss_difference"])
page.glue("control_acc_diff", control["max_accuracy_difference"])
page.glue("control_loss", control["runs"][0].final["full_train_loss"])
page.glue("fixed_aligned_loss", other.final["full_train_loss"])

# %% [markdown]
# On identical features the two heads' losses and weight changes differ by at most {glue:text}`control_diff:.1e`
# at every step (rounding); their accuracies differ by up to {glue:text}`control_acc_diff:.2f`, as expected. With
# the features held fixed, the only way to a faster flipped loss is better-separated features: head-only training on
# the aligned features ends at {glue:text}`fixed_aligned_loss:.3f` against {glue:text}`control_loss:.3f` on the
# base features.
#
# ## Part 2: SmolLM2, the last block trainable
#
# **The model.** For each prompt we cache the hidden states entering SmolLM2's last (30th) decoder layer at every
# prompt token (`analysis_lib.models.extract_block_inputs`: the frozen forward pass in {glue:text}`input_dtype`,
# cached per prompt like the last-token features, keyed by model, template, dtype and extraction code). The trained
# model is a copy of that layer, the final norm and the " Yes"/" No" rows of the head
# (`analysis_lib.misalignment.LastBlock`, fp32); it computes keys and values at every position and the rest at the
# last position only, which is all the next-token logits need. DPO needs only the Yes-minus-No logit (the
# log-partition cancels in $\log\pi(\text{chosen}) - \log\pi(\text{rejected})$), so the other 49,150 head rows are
# not needed for training; the block's last-token output $g(x)$ is the feature whose PD we measure.
#
# **Check against the full model.** On {glue:text}`n_check` prompts, the block run on the model's own fp32 inputs,
# with the whole head, against the full fp32 model's next-token logits:

# %%
data = load_block_behaviour(behaviour, max_per_behaviour=max_per_behaviour, model_id=model_id, template=template,
                            device=device)
base_block, full_head, full_model, full_tok = load_base_block(model_id, device=device)
check_idx = np.linspace(0, len(data.questions) - 1, min(check_prompts, len(data.questions))).astype(int)
cached_check = extract_block_inputs([data.questions[i] for i in check_idx], model_id=model_id, template=template,
                                    progress=False)
logit_check = check_block_against_model(base_block, full_head, full_model, full_tok,
                                        [data.questions[i] for i in check_idx], template, cached=cached_check)
del full_model, full_tok, full_head
page.glue("input_dtype", feature_dtype("auto", device))
page.glue("n_check", len(check_idx))
page.glue("check_diff", logit_check["max_abs_diff"])
page.glue("check_max_logit", logit_check["max_abs_logit"])
page.glue("check_cached_diff", logit_check["cached_max_abs_diff"])
page.glue("n_train", len(data.train))
page.glue("block_params", sum(p.numel() for p in base_block.parameters() if p.requires_grad))
page.glue("epochs_per_stage", align_steps * batch_size / len(data.train))
page.glue("lr_factor", lr / 1e-5)
page.glue("n_test", len(data.test))
page.glue("behaviour_name", data.name)
page.glue("behaviour_index", data.index)
page.glue("mean_tokens", float(data.lengths.mean()))

# %% [markdown]
# The largest logit difference is {glue:text}`check_diff:.1e` (logits up to {glue:text}`check_max_logit:.1f`): the
# block is the model's last layer. On the cached {glue:text}`input_dtype` inputs that the training uses, the logits
# differ from the fp32 model's by up to {glue:text}`check_cached_diff:.2f` (rounding of the 29 frozen layers'
# output); both the base model and every reference are defined on these cached inputs, so the comparison between
# starts is unaffected.
#
# **Data.** Behaviour {glue:text}`behaviour_index` ({glue:text}`behaviour_name`): {glue:text}`n_train` training and
# {glue:text}`n_test` test prompts (the official 90/10 split of a balanced random subset), on average
# {glue:text}`mean_tokens:.1f` tokens long. Stage 1 trains chosen = the matching answer for
# {glue:text}`align_steps` steps; stage 2 the flipped labels for $T$ = {glue:text}`lm_T` steps from the base block
# (reference = base) and from the aligned block (reference = aligned), with the same optimizer, learning rate and
# batch order; {glue:text}`lm_seeds` seeds (batch orders). The first seed's stage 2 runs
# {glue:text}`long_steps_text`.

# %%
lm_runs = []
for k in range(lm_seeds):
    horizon = long_steps if (k == 0 and long_steps) else misalign_steps
    lm_runs.append(block_misalignment(base_block, data.train, data.train_signs, data.test, data.test_signs,
                                      train_yes=data.train_yes, test_yes=data.test_yes, beta=beta, lr=lr,
                                      align_steps=align_steps, misalign_steps=horizon, batch_size=batch_size,
                                      seed=seed + k, optimizer=optimizer, eval_every=eval_every,
                                      checkpoints=[misalign_steps], progress=True))
T = misalign_steps


def at_T(run, column):
    return run.at(T, column)


lm = pd.DataFrame([{
    "seed": r.seed, "PD base": r.pd["base"]["all"], "PD aligned": r.pd["aligned"]["all"],
    "PD ratio": r.pd["aligned"]["all"] / r.pd["base"]["all"],
    "PD/sqrt(trace) base": r.snr["base"]["all"], "PD/sqrt(trace) aligned": r.snr["aligned"]["all"],
    "stage-1 loss": r.align.final["full_train_loss"],
    "stage-1 accuracy": r.align.final["full_train_outputs/accuracies"],
    "stage-1 test accuracy": r.align.final["eval_outputs/accuracies"],
    "flipped loss from base": at_T(r.from_base, "full_train_loss"),
    "flipped loss from aligned": at_T(r.from_aligned, "full_train_loss"),
    "flipped test loss from base": at_T(r.from_base, "eval_loss"),
    "flipped test loss from aligned": at_T(r.from_aligned, "eval_loss"),
    "flipped accuracy from base (0 -> T)": (r.from_base.at(0, "full_train_outputs/accuracies"),
                                            at_T(r.from_base, "full_train_outputs/accuracies")),
    "flipped accuracy from aligned (0 -> T)": (r.from_aligned.at(0, "full_train_outputs/accuracies"),
                                               at_T(r.from_aligned, "full_train_outputs/accuracies")),
} for r in lm_runs])
lm["gap (base - aligned)"] = lm["flipped loss from base"] - lm["flipped loss from aligned"]
lm["test gap (base - aligned)"] = lm["flipped test loss from base"] - lm["flipped test loss from aligned"]


def arrow(pair):
    """(accuracy at 0, accuracy at T) as '0.50 → 0.62'."""
    return f"{pair[0]:.2f} → {pair[1]:.2f}"


page.table(lm, columns={"seed": "seed", "PD base": "PD, base", "PD aligned": "PD, aligned",
                        "PD/sqrt(trace) base": "PD/√trace, base", "PD/sqrt(trace) aligned": "PD/√trace, aligned",
                        "stage-1 accuracy": "stage-1 accuracy", "stage-1 test accuracy": "stage-1 test accuracy"},
           formats={"PD base": ".3f", "PD aligned": ".3f", "PD/sqrt(trace) base": ".3f",
                    "PD/sqrt(trace) aligned": ".3f", "stage-1 accuracy": ".3f", "stage-1 test accuracy": ".3f"})
page.table(lm.assign(acc_base=lm["flipped accuracy from base (0 -> T)"].map(arrow),
                     acc_aligned=lm["flipped accuracy from aligned (0 -> T)"].map(arrow)),
           columns={"seed": "seed", "flipped loss from base": "loss at T, from base",
                    "flipped loss from aligned": "loss at T, from aligned",
                    "flipped test loss from base": "test loss, from base",
                    "flipped test loss from aligned": "test loss, from aligned",
                    "acc_base": "accuracy 0 → T, from base", "acc_aligned": "accuracy 0 → T, from aligned"},
           formats={"flipped loss from base": ".4f", "flipped loss from aligned": ".4f",
                    "flipped test loss from base": ".4f", "flipped test loss from aligned": ".4f"})
page.glue("align_steps", align_steps)
page.glue("lm_T", T)
page.glue("lm_seeds", lm_seeds)
page.glue("long_steps_text", f"on to step {long_steps}, to show the later course" if long_steps else
          "no longer than the others (long_steps = 0)")

# %%
lm_curves = stage2_curves([(r.seed, {"from base": r.from_base, "from aligned": r.from_aligned}) for r in lm_runs],
                          PANELS)
lm_curves = lm_curves[lm_curves["step"] <= T]


def long_panel(ax):
    for start, run in (("from base", lm_runs[0].from_base), ("from aligned", lm_runs[0].from_aligned)):
        steps_, values = run.curve("full_train_loss")
        ax.plot(steps_, values, color=START_COLORS[start], label=start, linewidth=2)
    ax.axvline(T, color="grey", linestyle=":", linewidth=1)
    ax.set(title=f"training loss to {long_steps}", xlabel="stage-2 step", ylabel="loss")


page.figure("fig_lm", plot_stage2(lm_curves, extra=long_panel if long_steps else None))

# %% [markdown]
# ```{glue:figure} fig_lm
# :alt: Panels of SmolLM2 training and test loss and flipped accuracy from the base and aligned block, and a longer run.
# :name: fig-imli06-lm
#
# SmolLM2, last block trainable: flipped-label DPO on the persona behaviour from the base and from the aligned block
# (thin lines: seeds; thick: their mean; top row loss, bottom row accuracy on the flipped labels); where present,
# the panel "training loss to ..." continues the first seed's run past $T$ (dotted line).
# ```
#
# Training curves are evaluated on the whole training split every {glue:text}`eval_every` steps, test curves on
# the {glue:text}`n_test` test prompts every step; accuracy is the policy's own ordering on the flipped labels.

# %%
page.glue("eval_every", eval_every)
pd_rows = []
for r in lm_runs:
    for start in ("base", "aligned"):
        pd_rows.append({"seed": r.seed, "model": start, "PD (all items)": r.pd[start]["all"],
                        "PD / sqrt(pooled trace)": r.snr[start]["all"]})
pd_long = pd.DataFrame(pd_rows)
g_base = block_features(base_block, data.train)
g_aligned = block_features(lm_runs[0].aligned, data.train)
fig, axes = panel_grid(4, ncols=2, aspect=0.8)
for ax, feats, title in ((axes[0], g_base, "base block"), (axes[1], g_aligned, "aligned block")):
    centred = feats - feats.mean(0)
    coords = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # the first two principal axes
    sns.scatterplot(x=coords[:, 0], y=coords[:, 1], hue=np.where(data.train_yes, "matching = Yes", "matching = No"),
                    palette={"matching = Yes": "yellowgreen", "matching = No": "dimgrey"}, s=14, ax=ax,
                    legend=False)
    ax.set(title=f"{title} (PCA)", xlabel="PC 1", ylabel="PC 2")
fig.legend(handles=[Line2D([], [], ls="", marker="o", color=c, label=f"matching answer: {name}")
                    for name, c in (("Yes", "yellowgreen"), ("No", "dimgrey"))],
           loc="outside upper center", ncol=2, frameon=False)
for ax, column, title in ((axes[2], "PD (all items)", "PD"), (axes[3], "PD / sqrt(pooled trace)", "PD / √trace")):
    sns.barplot(data=pd_long, x="seed", y=column, hue="model", palette=dict(zip(["base", "aligned"],
                ordered_colors(2), strict=True)), ax=ax, legend=ax is axes[2])
    ax.set(title=title, ylabel=title, ylim=(0, 1.3 * pd_long[column].max()))
axes[2].legend(title=None, loc="upper left", ncol=2)
page.figure("fig_pd", fig)
page.glue("lm_pd_base", float(lm["PD base"].mean()))
page.glue("lm_pd_aligned", float(lm["PD aligned"].mean()))
page.glue("lm_snr_base", float(lm["PD/sqrt(trace) base"].mean()))
page.glue("lm_snr_aligned", float(lm["PD/sqrt(trace) aligned"].mean()))
page.glue("lm_loss_base", float(lm["flipped loss from base"].mean()))
page.glue("lm_loss_aligned", float(lm["flipped loss from aligned"].mean()))
page.glue("lm_gap_min", float(lm["gap (base - aligned)"].min()))
page.glue("lm_gap_max", float(lm["gap (base - aligned)"].max()))
page.glue("lm_faster", int((lm["gap (base - aligned)"] > 0).sum()))
page.glue("lm_test_faster", int((lm["test gap (base - aligned)"] > 0).sum()))
page.glue("pd_seed", lm_runs[0].seed)

# %% [markdown]
# ```{glue:figure} fig_pd
# :alt: PCA scatters of the block's last-token features before and after alignment, and bar charts of PD per seed.
# :name: fig-imli06-pd
#
# The block's last-token features of the training prompts before (top left) and after stage 1 (top right, seed
# {glue:text}`pd_seed`), on their first two principal axes; below, the PD and the scale-free PD / √(pooled trace)
# before and after stage 1 in every seed.
# ```
#
# Alignment raised the PD of the block's last-token features from {glue:text}`lm_pd_base:.2f` to
# {glue:text}`lm_pd_aligned:.1f` on average; part of that is scale (the trained norm and layer can grow the
# features), so we also report the scale-free ratio of PD to the root of the pooled class-covariance trace, which
# rose from {glue:text}`lm_snr_base:.2f` to {glue:text}`lm_snr_aligned:.2f`. After $T$ = {glue:text}`lm_T` flipped
# steps the training loss from the aligned start is {glue:text}`lm_loss_aligned:.3f` against
# {glue:text}`lm_loss_base:.3f` from the base start on average (per-seed gaps {glue:text}`lm_gap_min:.3f` to
# {glue:text}`lm_gap_max:.3f` nats; lower from the aligned start in {glue:text}`lm_faster` of
# {glue:text}`lm_seeds` seeds, and on the test prompts in {glue:text}`lm_test_faster`). In the first
# {glue:text}`early_steps` steps of seed {glue:text}`pd_seed` the loss fell by {glue:text}`early_drop_aligned:.3f`
# from the aligned start and by {glue:text}`early_drop_base:.3f` from the base start. {glue:text}`long_sentence`

# %%
fb, fa = lm_runs[0].from_base, lm_runs[0].from_aligned
early = min(eval_every, T)
early_drop_base = fb.at(0, "full_train_loss") - fb.at(early, "full_train_loss")
early_drop_aligned = fa.at(0, "full_train_loss") - fa.at(early, "full_train_loss")
acc_gain_base = np.array([r.from_base.at(T, "full_train_outputs/accuracies")
                          - r.from_base.at(0, "full_train_outputs/accuracies") for r in lm_runs])
acc_gain_aligned = np.array([r.from_aligned.at(T, "full_train_outputs/accuracies")
                             - r.from_aligned.at(0, "full_train_outputs/accuracies") for r in lm_runs])
yes_rate_aligned_T = np.array([r.from_aligned.at(T, "full_train_outputs/yes_rate") for r in lm_runs])
page.glue("early_steps", early)
page.glue("early_drop_aligned", float(early_drop_aligned))
page.glue("early_drop_base", float(early_drop_base))
if long_steps:
    sb, vb = fb.curve("full_train_loss")
    _, va = fa.curve("full_train_loss")
    below = np.flatnonzero((sb > 0) & (vb < va))
    crossing = f"the base run's loss is below the aligned run's from step {int(sb[below[0]])} on (of the evaluated " \
               "steps)" if below.size else "the base run's loss never falls below the aligned run's"
    page.glue("long_sentence", f"In the longer run of seed {lm_runs[0].seed}, {crossing}; at step {long_steps} the "
              f"losses are {fb.final['full_train_loss']:.3f} from the base and {fa.final['full_train_loss']:.3f} "
              "from the aligned start.")
else:
    page.glue("long_sentence", "")
page.glue("acc_gain_base", float(acc_gain_base.mean()))
page.glue("acc_gain_aligned", float(acc_gain_aligned.mean()))
page.glue("yes_rate_aligned", ", ".join(f"{x:.2f}" for x in yes_rate_aligned_T))

# %% [markdown]
# In flipped *accuracy* (the policy's own ordering) the aligned start gained {glue:text}`acc_gain_aligned:.2f` on
# average over the $T$ steps and the base start {glue:text}`acc_gain_base:.2f`: as in the toy, the aligned model
# starts from a strong preference for the matching answers, and its loss (relative to that reference) falls while
# its answers have not flipped; at $T$ the aligned-start policy answers " Yes" on a share
# {glue:text}`yes_rate_aligned` of the training prompts (per seed), one-sided rather than flipped. The answers do
# not flip faster from the aligned start (a finding).
#
# **Control on real features.** The same identity as in the toy: head-only flipped DPO on the base block's fixed
# last-token features, from the base block's and from the aligned block's " Yes"/" No" rows (same optimizer,
# learning rate, batches and $T$):

# %%
rows_base = base_block.answer_rows.detach().cpu()
rows_aligned = lm_runs[0].aligned.answer_rows.detach().cpu()
g_test = block_features(base_block, data.test)
lm_control = last_layer_control(g_base, -data.train_signs, [rows_base, rows_aligned], beta=beta, lr=lr, steps=T,
                                batch_size=batch_size, seed=2 * lm_runs[0].seed + 1, test_features=g_test,
                                test_signs=-data.test_signs, optimizer=optimizer, device=device)
page.glue("lm_control_diff", lm_control["max_loss_difference"])
page.glue("lm_control_acc_diff", lm_control["max_accuracy_difference"])

# %% [markdown]
# The two heads' losses differ by at most {glue:text}`lm_control_diff:.1e` (their accuracies by up to
# {glue:text}`lm_control_acc_diff:.2f`): whatever the aligned model's head learned, on fixed features it does not
# change how fast the flipped loss falls.
#
# ## Claim checks
#
# The toy's thresholds are the notes' N7 criteria (T4: N6's); the real LM's ask the direction in every seed, with
# the learning rate and $T$ fixed before any flipped run. C1 and C2 hold by construction (identical fixed features,
# head-only training from two heads; the loss depends on the head only through $v - v_{ref}$), and L1 compares two
# implementations of the same layer: these are identities, which verify the code.

# %%
n_toy = len(toy)
claims.check_fraction("T1", f"toy: flipped training loss after T = {toy_misalign_steps} steps is lower from the "
                      f"aligned start than from the base start (seeds; N7)",
                      int((toy["gap (base - aligned)"] > 0).sum()), n_toy, 1.0, min_cases=5,
                      few_cases_note="the notes' criterion asks for at least 5 seeds", kind="claim")
claims.check_at_least("T2", f"toy: mean gap loss_base(T) - loss_aligned(T) in nats at T = {toy_misalign_steps} (N7)",
                      float(toy["gap (base - aligned)"].mean()), 0.03, kind="claim")
claims.check_fraction("T3", "toy: feature PD rises with alignment, PD(aligned) > PD(base) (seeds)",
                      int((toy["PD ratio"] > 1).sum()), n_toy, 1.0, min_cases=5,
                      few_cases_note="the notes' criterion asks for at least 5 seeds", kind="claim")
claims.check_at_least("T4", "toy: smallest PD ratio aligned / base over the seeds (N6's criterion, >= 1.5)",
                      float(toy["PD ratio"].min()), 1.5, kind="claim")
toy_gains = toy_gain_aligned - toy_gain_base
claims.check_fraction("T5", f"toy: flipped training accuracy rises more over the T = {toy_misalign_steps} steps from "
                      "the aligned start than from the base start (seeds; the figure's expected pattern, not an N7 "
                      "criterion)", int((toy_gains > 0).sum()), n_toy, 1.0, min_cases=5,
                      few_cases_note="the notes' criterion asks for at least 5 seeds", kind="claim")
claims.check_at_most("C1", "toy control: identical fixed features, flipped head-only DPO from the base and from the "
                     "aligned head: largest difference of the losses and weight changes (all steps)",
                     control["max_loss_difference"], 1e-6, kind="identity")
claims.check_at_most("L1", f"SmolLM2: the last block on the model's own fp32 inputs vs the full fp32 model, largest "
                     f"|logit difference| over {len(check_idx)} prompts x the whole vocabulary",
                     logit_check["max_abs_diff"], 1e-3, kind="identity")
n_lm = len(lm)
lm_ratio = lm["PD ratio"].to_numpy()
claims.check_fraction("L2", "SmolLM2: PD of the trained block's last-token features rises with alignment, "
                      "PD(aligned) > PD(base) (seeds)", int((lm_ratio > 1).sum()), n_lm, 1.0, min_cases=3,
                      few_cases_note="at least 3 seeds are needed", kind="claim")
snr_ratio = (lm["PD/sqrt(trace) aligned"] / lm["PD/sqrt(trace) base"]).to_numpy()
claims.check_fraction("L2b", "SmolLM2 (our scale-free variant): PD / sqrt(pooled class-covariance trace) rises with "
                      "alignment (seeds)", int((snr_ratio > 1).sum()), n_lm, 1.0, min_cases=3,
                      few_cases_note="at least 3 seeds are needed", kind="claim")
gaps = lm["gap (base - aligned)"].to_numpy()
claims.check_fraction("L3", f"SmolLM2: flipped training loss after T = {T} steps is lower from the aligned start "
                      "than from the base start (seeds)", int((gaps > 0).sum()), n_lm, 1.0, min_cases=3,
                      few_cases_note="at least 3 seeds are needed", kind="claim")
gains = acc_gain_aligned - acc_gain_base
claims.check_fraction("L4", f"SmolLM2: flipped training accuracy rises more over the T = {T} steps from the aligned "
                      "start than from the base start (seeds; the figure's expected pattern)", int((gains > 0).sum()),
                      n_lm, 1.0, min_cases=3, few_cases_note="at least 3 seeds are needed", kind="claim")
claims.check_at_most("C2", "SmolLM2 control: identical fixed last-token features, flipped head-only DPO from the "
                     "base and from the aligned block's answer rows: largest difference of the losses and weight "
                     "changes", lm_control["max_loss_difference"], 1e-6, kind="identity")
page.report()

# %% [markdown]
# T5 and L4 do not hold: in neither part do the answers flip faster from the aligned start within $T$ steps. These
# are findings, not scale effects: the toy, where scale plays no role, shows the same as the 135M model. DPO's loss
# is measured against each start's own reference, and the aligned reference prefers the old answers strongly, so
# the loss can fall faster while the answers stay.
#
# ## What differs from the paper
#
# The toy reproduces the notes' check d2 and the control: the aligned start's flipped loss falls faster because its
# features separate the classes more, and on identical features the starting head makes no difference to the loss.
# On SmolLM2 the experiment is the paper's in miniature and differs from it in what is trained (the last decoder
# layer with the final norm and two head rows, not LoRA adapters on every layer), in the model (135M parameters,
# a quantised checkpoint, not Llama-2-7B), in the optimiser settings (a learning rate {glue:text}`lr_factor:.0f`
# times the paper's, chosen on the alignment stage so that the block moves in {glue:text}`align_steps` steps) and in
# the data ({glue:text}`n_train` training prompts seen for {glue:text}`epochs_per_stage:.1f` epochs per stage, not
# one epoch of 900). These differences are described here rather than declared for single checks: a declared
# difference has to explain a failure, and the accuracy finding (L4) appears in the toy as well. The claim checks
# report the direction at the step count $T$ fixed in advance; the curves and the longer run show how that
# comparison depends on $T$, which is part of the result. The paper's figure plots accuracy too; what it shows we do
# not know (the notes' expectation that it rises faster is not confirmed here). The declared differences:

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
