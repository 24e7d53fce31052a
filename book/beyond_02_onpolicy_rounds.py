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
# (beyond-02-onpolicy-rounds)=
# # On-policy rounds raise distinguishability and compound the priority gap, but off-policy rounds widen it more
#
# :::{admonition} Key result
# :class: tip
# Over {glue:text}`rounds_g` rounds of DPO with SmolLM2-135M (LoRA on the top layer, the reference reset each
# round), **on-policy rounds raised the preference distinguishability** of both behaviours' features (behaviour
# 123: {glue:text}`pd0_on_123:.1f` to {glue:text}`pdT_on_123:.1f`; behaviour 45: {glue:text}`pd0_on_45:.1f` to
# {glue:text}`pdT_on_45:.1f`) and **the priority gap compounded**: behaviour {glue:text}`leader`, ahead after
# round 1 by {glue:text}`gap1_on:.2f` nats, was ahead by {glue:text}`gapT_on:.2f` after the last round. Against our
# hypotheses, off-policy rounds on the same data widened the gap far more ({glue:text}`gap1_off:.2f` to
# {glue:text}`gapT_off:.2f` nats), and on-policy sampling did not favour the lagging behaviour
# ({glue:text}`lag_share_on:.2f` of the drawn items): two findings. The margins grew without the sign of the margin
# improving: the share of items ordered correctly ended at {glue:text}`acc_on_123:.2f` and
# {glue:text}`acc_on_45:.2f` on-policy.
#
# ```{glue:figure} fig_rounds
# :alt: Four panels over rounds: feature distinguishability, learned margin, the priority gap, the lagging share.
# :name: fig-beyond02-rounds-key
#
# On-policy (solid) and off-policy (dashed) rounds from the same start: PD of each behaviour's features, its
# learned margin, the priority gap, and the lagging behaviour's share of the drawn items.
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` study one round of DPO {cite}`rafailov2023direct`: how fast a behaviour is
# learned depends on its *preference distinguishability* (PD, the distance between the mean features of the
# prompts whose matching answer is " Yes" and those whose matching answer is " No"), and trained together, the
# more distinguishable behaviour is learned first (*prioritisation*; {ref}`imli-05-prioritisation`). Chen et al.
# {cite}`chen2026sampling` study the loop in which the policy feeds the next round's sampler and reference, on
# preference matrices. Neither asks what the loop does to distinguishability, or to prioritisation, when the
# features themselves train. This chapter runs several rounds of DPO on two persona behaviours
# {cite}`perez2023discovering` with SmolLM2-135M-Instruct {cite}`allal2025smollm2` and LoRA, the reference reset to
# the current model every round, and each round's pairs drawn **on-policy**: for an item with the model's
# two-answer distribution $p$ = P(matching answer), two answers sampled from the model differ with probability
# $2p(1-p)$, so the items the model is unsure about are trained most. **Off-policy** rounds draw items uniformly
# (the uniform two-answer sampler), on the same data, from the same start.
#
# These are our own experiments. The questions of the issue, as hypotheses stated before the runs:
#
# - **Q1 (distinguishability).** On-policy rounds raise the PD of the model's own features (the final hidden state
#   at the last prompt token, what the output head reads) for both behaviours: PD after the last round is above PD
#   at the start.
# - **Q2 (compounding).** The priority gap compounds: the learned-margin gap between the faster-learned behaviour
#   (the one whose margin grew more in round 1, a rule fixed now) and the other is larger after the last round than
#   after round 1.
# - **Q3 (on- vs off-policy).** On-policy rounds widen the gap more than off-policy rounds.
#
# Our own expectation runs against Q3, and we check its mechanism too: as the leading behaviour's items become
# certain, their weight $2p(1-p)$ falls, so on-policy rounds shift the pairs towards the lagging behaviour
# (**Q4**: on-policy rounds draw the lagging behaviour's items more than half the time), which should narrow the
# gap, not widen it.
#
# ## Setting
#
# The paper's two-behaviour run (behaviours 123 and 45, the official sequential split), `per_behaviour` items of
# each from its training split (balanced between matching " Yes" and " No"), the prompt as in the official
# full-DPO code (question and newline) and single-token answers. One LoRA adapter (r = 8, alpha = 32 on `q_proj`
# and `v_proj`, the official code's) on the top `lora_layers` decoder layer(s), trained through all rounds; the
# layers below are frozen, so their outputs are computed once per prompt and cached. Each round: the state of both
# behaviours is measured (PD and the covariance trace of the current features, with the book's
# `lastlayer.behaviour_properties`; accuracy and mean margin $\log\pi(\text{matching}) - \log\pi(\text{other})$);
# `items_per_round` items are drawn with replacement (on- or off-policy, from the model at the round's start);
# `steps` Adam steps of the book's DPO trainer on their pairs, batch `batch_size`, with the model at the round's
# start as the reference. The *learned margin* of a behaviour is its mean margin minus the one at the start; the
# *priority gap* after round $t$ is the faster behaviour's learned margin minus the other's. Because a trained
# final layer can also rescale the features, we report PD divided by the root of the pooled covariance trace next to
# the PD (our scale-free variant, as in {ref}`imli-06-misalignment`).
#
# The model computes in float32 on every machine (`precision`; a revision at our 19th stop). With bf16 autocast,
# where the processor has it, Q4 came out at 0.36 where float32 gave 0.56, so the verdict depended on the
# processor; we did not isolate which step of the rounds the number format moves.

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed (item subset, draws, batches)
model_id = "smollm2"  # model: 'smollm2' or a Llama-family model folder / hub id
behaviours = [123, 45]  # [0..134; len 2] the two persona behaviours (the paper's two-behaviour run)
per_behaviour = 40  # [4..1000] items per behaviour from its training split (balanced) {smoke: 8}
rounds = 4  # [1..100] DPO rounds {smoke: 1}
items_per_round = 48  # [1..10000] items drawn per round (with replacement) {smoke: 8}
steps = 6  # [1..1000] Adam steps per round {smoke: 1}
batch_size = 16  # [1..1024] pairs per step {smoke: 4}
beta = 0.1  # [> 0] DPO inverse temperature
lr = 0.01  # [> 0] Adam learning rate of the LoRA adapter
lora_layers = 1  # [1..64] decoder layers (from the top) with LoRA adapters
precision = "float32"  # [one of: float32, bfloat16, auto] arithmetic: float32 everywhere (bf16 gave other verdicts)

# %% [markdown]
# **Paper-scale settings.** The paper trains one round (Llama-2-7B, LoRA on every layer, $\beta$ = 0.01, AdamW at
# 1e-5, batch 128, all 900 training items of each behaviour); there is no paper scale for rounds. A GPU run:
#
# | setting | the paper (one round) | this chapter's default | a GPU run |
# |---|---|---|---|
# | model, trained | Llama-2-7B, LoRA on every layer | SmolLM2-135M, LoRA on the top layer | as the paper |
# | items | 900 per behaviour | 40 per behaviour | 900 per behaviour |
# | rounds x pairs | 1 x 900 | 4 x 48 | 10 x 900 |
# | optimiser | AdamW 1e-5, $\beta$ = 0.01, batch 128 | Adam 1e-2, $\beta$ = 0.1, batch 16, 6 steps | as the paper |
#
# `ANALYSIS_LIB_DEVICE=cuda python3 run.py chapter beyond_02_onpolicy_rounds -p model_id=meta-llama/Llama-2-7b-hf
# -p per_behaviour=900 -p rounds=10 -p items_per_round=900 -p steps=8 -p batch_size=128 -p beta=0.01 -p lr=1e-5
# -p lora_layers=32` (one process; each round is one call of the trainer, which under `accelerate launch` runs
# data-parallel: `accelerate launch -m analysis_lib.training` is the one-round command line, the rounds themselves
# are not wrapped in it).
#
# **How the learning rate was chosen.** The first complete run (both samplings) used Adam at 3e-2 with 3 steps per
# round, chosen because 1e-3 had left every margin within 0.01 of its start. Its margins went up and down from one
# round to the next, a learning rate too large for a comparison of rounds. We then fixed a rule on the on-policy run
# alone: 6 steps per round and the smallest learning rate of 3e-3, 1e-2 and 3e-2 at which the mean margin of both
# behaviours together rises by at least 1 nat over the rounds. That is 1e-2 (3e-3 fell short). The first run's
# setting is one `-p lr=0.03 -p steps=3` away; nothing else was changed. Its verdicts differed on Q1b (one
# behaviour only), Q2 (the gap shrank) and Q4 (held); Q1 and Q3 came out as below.

# %%
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis_lib import iterated as it
from analysis_lib.data import load_persona, subsample_persona
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid
from analysis_lib.training import CausalLMPolicy, LoraSettings, PreferencePairs

page = start_page("beyond_02_onpolicy_rounds", seed)
rng, claims = page.rng, page.claims
claims.declare("Q1b", "adaptation",
               "PD divided by the root of the pooled class-covariance trace is our scale-free variant; Im & Li's "
               "measure, the PD itself, is Q1")

# %% [markdown]
# ## Data and model

# %%
rows = load_persona(behaviours, split_rule="sequential")
rows = subsample_persona(rows[rows["split"] == "train"], per_behaviour, seed=seed)
pairs = PreferencePairs.from_persona(rows)
behaviour = rows["behaviour_index"].to_numpy()
names = {b: f"behaviour {b}" for b in behaviours}
policy = CausalLMPolicy(model_id, trainable="lora", lora=LoraSettings(layers=lora_layers), frozen_prefix=True,
                        cache_reference=False, template="raw_newline", precision=precision)
results = {}
for sampling in it.SAMPLINGS:
    with it.restored(policy):
        results[sampling] = it.run_persona_rounds(policy, pairs, behaviour, rounds=rounds,
                                                  items_per_round=items_per_round, steps=steps,
                                                  batch_size=batch_size, beta=beta, lr=lr, sampling=sampling,
                                                  seed=seed, progress=True)
table = pd.concat([r.table.assign(sampling=s) for s, r in results.items()], ignore_index=True)
table["pd_scaled"] = table["pd"] / np.sqrt(table["trace"])
start = table[(table["round"] == 0) & (table["sampling"] == "on")].set_index("behaviour")
table["learned"] = table["margin"] - table["behaviour"].map(start["margin"])
page.glue("n_items", len(pairs))
page.glue("per_behaviour_g", per_behaviour)

# %% [markdown]
# Both runs start from the same weights and draw from the same seed; {glue:text}`n_items` items in all
# ({glue:text}`per_behaviour_g` per behaviour).
#
# ## Rounds

# %%
after1 = table[(table["round"] == 1) & (table["sampling"] == "on")].set_index("behaviour")["learned"]
leader = int(after1.idxmax())
lagger = int(after1.idxmin())


def gap(sampling):
    """The priority gap per round: the leader's learned margin minus the lagger's."""
    sub = table[table["sampling"] == sampling].pivot(index="round", columns="behaviour", values="learned")
    return sub[leader] - sub[lagger]


gaps = {s: gap(s) for s in it.SAMPLINGS}
lag_share = {s: table[(table["sampling"] == s) & (table["behaviour"] == lagger) & table["drawn"].notna()]
             .set_index("round")["drawn"] for s in it.SAMPLINGS}
styles = {"on": "-", "off": "--"}
colours = dict(zip(behaviours, ordered_colors(2), strict=True))
fig, axes = panel_grid(4, ncols=2, aspect=0.75)
for s in it.SAMPLINGS:
    for b in behaviours:
        sub = table[(table["sampling"] == s) & (table["behaviour"] == b)]
        axes[0].plot(sub["round"], sub["pd"], color=colours[b], ls=styles[s], lw=2, marker="o", markersize=4)
        axes[1].plot(sub["round"], sub["learned"], color=colours[b], ls=styles[s], lw=2, marker="o", markersize=4)
    axes[2].plot(gaps[s].index, gaps[s].values, color="dimgrey", ls=styles[s], lw=2, marker="o", markersize=4,
                 label=f"{s}-policy")
    axes[3].plot(lag_share[s].index, lag_share[s].values, color=colours[lagger], ls=styles[s], lw=2, marker="o",
                 markersize=4, label=f"{s}-policy")
axes[0].set(title="distinguishability (PD)", xlabel="round", ylabel="PD of the features")
axes[1].set(title="learned margin", xlabel="round", ylabel="nats")
axes[2].set(title=f"priority gap ({leader} minus {lagger})", xlabel="round", ylabel="nats")
axes[3].set(title=f"share of {lagger}'s items drawn", xlabel="round", ylabel="share", ylim=(0, 1))
axes[3].axhline(0.5, color="grey", lw=0.8, ls=":")
axes[2].legend(loc="upper left")
fig.legend(handles=[Line2D([], [], color=colours[b], lw=2, label=names[b]) for b in behaviours] +
           [Line2D([], [], color="grey", lw=2, ls=styles[s], label=f"{s}-policy") for s in it.SAMPLINGS],
           loc="outside lower center", ncols=4, frameon=False)
for ax in axes:
    ax.set_xticks(range(rounds + 1))
page.figure("fig_rounds", fig)

show = table[["sampling", "round", "behaviour", "pd", "pd_scaled", "accuracy", "margin", "drawn"]]
page.table(show, columns={"sampling": "sampling", "round": "round", "behaviour": "behaviour", "pd": "PD",
                          "pd_scaled": "PD / √trace", "accuracy": "accuracy", "margin": "margin (nats)",
                          "drawn": "share drawn"},
           formats={"pd": ".2f", "pd_scaled": ".3f", "accuracy": ".2f", "margin": ".2f", "drawn": ".2f"})

# %% [markdown]
# ```{glue:figure} fig_rounds
# :alt: Four panels over rounds: PD of each behaviour, its learned margin, the priority gap, the lagging share drawn.
# :name: fig-beyond02-rounds
#
# On-policy (solid) and off-policy (dashed) rounds from the same start: the PD of each behaviour's features, its
# learned margin, the priority gap between them, and the share of the round's drawn items that belong to the
# lagging behaviour.
# ```
#
# The table gives each round's state at its start (the last row of each run: after the last round); "share drawn" is
# the behaviour's share of the items drawn in that round.

# %%
final = table[table["round"] == rounds].set_index(["sampling", "behaviour"])
first = table[table["round"] == 0].set_index(["sampling", "behaviour"])
for s in it.SAMPLINGS:
    for b in behaviours:
        page.glue(f"pd0_{s}_{b}", float(first.loc[(s, b), "pd"]))
        page.glue(f"pdT_{s}_{b}", float(final.loc[(s, b), "pd"]))
        page.glue(f"acc_{s}_{b}", float(final.loc[(s, b), "accuracy"]))
    page.glue(f"gap1_{s}", float(gaps[s].loc[1]))
    page.glue(f"gapT_{s}", float(gaps[s].loc[rounds]))
    page.glue(f"lag_share_{s}", float(lag_share[s].loc[1:].mean()) if rounds > 1 else float("nan"))
page.glue("leader", leader)
page.glue("lagger", lagger)
page.glue("rounds_g", rounds)
losses0 = [r.at(0, "round_loss") for res in results.values() for r in res.runs]
page.glue("loss0_error", float(np.max(np.abs(np.array(losses0) - np.log(2)))))

# %% [markdown]
# Behaviour {glue:text}`leader` led after round 1 (the rule fixed before the runs), so the gap is
# {glue:text}`leader` minus {glue:text}`lagger`. On-policy, the gap went from {glue:text}`gap1_on:.2f` nats after
# round 1 to {glue:text}`gapT_on:.2f` after round {glue:text}`rounds_g`; off-policy from
# {glue:text}`gap1_off:.2f` to {glue:text}`gapT_off:.2f`. From round 2 on, the lagging behaviour's items were
# {glue:text}`lag_share_on:.2f` of the on-policy draws and {glue:text}`lag_share_off:.2f` of the off-policy ones.
# Every round's loss started at $\log 2$ to {glue:text}`loss0_error:.0e` (the reference is the model at the round's
# start).
#
# The learned margin is a mean over a behaviour's items; it grew by nats while the share of items with a positive
# margin (the table's accuracy) did not rise: after the last round {glue:text}`acc_on_123:.2f` and
# {glue:text}`acc_on_45:.2f` on-policy, {glue:text}`acc_off_123:.2f` and {glue:text}`acc_off_45:.2f` off-policy.
# The mean grew because some items' margins grew large, not because the ordering of the two answers improved item
# by item; the priority gap measures the former. A
# likely reason for Q4: the leading behaviour's items did not become certain one by one, so their on-policy weight
# $2p(1-p)$ did not fall below the lagging behaviour's.
#
# ## Claim checks

# %%
claims.check_at_most("I1", "each round's DPO loss on its pairs before the first step is log 2 (reference = the "
                     "model at the round's start; largest deviation over rounds and both samplings)",
                     float(np.max(np.abs(np.array(losses0) - np.log(2)))), 1e-6, kind="identity")
pd_rise = [float(final.loc[("on", b), "pd"] - first.loc[("on", b), "pd"]) for b in behaviours]
claims.check_fraction("Q1", f"on-policy rounds raise the PD of both behaviours' features (PD after round {rounds} "
                      "> PD at the start)", int(sum(r > 0 for r in pd_rise)), len(behaviours), 1.0, kind="claim")
scaled_rise = [float(final.loc[("on", b), "pd_scaled"] - first.loc[("on", b), "pd_scaled"]) for b in behaviours]
claims.check_fraction("Q1b", "on-policy rounds raise PD / sqrt(pooled covariance trace) of both behaviours",
                      int(sum(r > 0 for r in scaled_rise)), len(behaviours), 1.0, kind="claim")
decided = rounds >= 2
claims.check("Q2", f"on-policy: the priority gap after round {rounds} exceeds the gap after round 1 (nats)",
             f"{gaps['on'].loc[rounds]:.3f} vs {gaps['on'].loc[1]:.3f}", "larger after the last round",
             gaps["on"].loc[rounds] > gaps["on"].loc[1], "gap(last) > gap(1)", kind="claim",
             inconclusive=None if decided else "one round only: no growth to measure")
growth_on = float(gaps["on"].loc[rounds] - gaps["on"].loc[1])
growth_off = float(gaps["off"].loc[rounds] - gaps["off"].loc[1])
claims.check("Q3", "the gap grows more on-policy than off-policy (growth from round 1 to the last, nats)",
             f"{growth_on:.3f} vs {growth_off:.3f}", "on > off", growth_on > growth_off, "on > off", kind="claim",
             inconclusive=None if decided else "one round only: no growth to measure")
share = float(lag_share["on"].loc[1:].mean()) if decided else float("nan")
claims.check("Q4", "on-policy rounds draw the lagging behaviour's items more than half the time (mean share, "
             "rounds 2 to the last)", share, "> 0.5", share > 0.5, "> 0.5", kind="claim",
             inconclusive=None if decided else "one round only: no round after the leader is known")
page.report()

# %% [markdown]
# ## What differs from the paper
#
# The paper trains one round with Llama-2-7B; rounds, on-policy sampling and the per-round reference are ours (and
# Chen et al.'s idea), so the hypotheses are ours and no difference is declared for them. What differs from the
# paper's one-round set-up: SmolLM2-135M instead of Llama-2-7B; LoRA on the top {glue:text}`lora_layers_g` layer(s)
# instead of every layer (the frozen lower layers are what makes rounds affordable on a CPU); $\beta$ =
# {glue:text}`beta_g` and an Adam learning rate of {glue:text}`lr_g` instead of 0.01 and 1e-5 (a LoRA on one layer
# moves little at the paper's rate);
# {glue:text}`per_behaviour_g` items per behaviour instead of 900. The declared difference:

# %% tags=["remove-input"]
page.glue("lora_layers_g", lora_layers)
page.glue("beta_g", f"{beta:g}")
page.glue("lr_g", f"{lr:g}")
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
