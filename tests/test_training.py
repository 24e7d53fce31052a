"""The preference trainer (analysis_lib.training) and the causal-LM policy (analysis_lib.models.policy), on a tiny
random Llama built from a config (no download): log-probs against a token-by-token computation, log 2 at step 0,
gradients against an independent autograd implementation, LoRA, the reference cache, TRL's DPOTrainer, two
processes under `accelerate launch`, and one-line errors for bad input."""

from __future__ import annotations

import copy
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from ddp_worker import PROMPTS
from ddp_worker import pairs as worker_pairs

from analysis_lib import models as M
from analysis_lib import training as T
from analysis_lib.models import features as MF
from analysis_lib.models import logprobs as MP
from analysis_lib.models.policy import PortableDropout
from analysis_lib.training import CausalLMPolicy, EvalSet, LoraSettings, PreferencePairs, learning_rate, train

pytestmark = pytest.mark.usefixtures("one_thread")

MIXED = PreferencePairs(["I like cats ?", "hello world", "Is the following statement a b", "dogs"],
                        [" Yes", " a b c", " No", " hello world ?"], [" No", " d", " Yes Yes", " e"])


def persona_like() -> PreferencePairs:
    """Single-token answers, " Yes" chosen for the prompts about cats."""
    return PreferencePairs(PROMPTS, [" Yes" if "cats" in p else " No" for p in PROMPTS],
                           [" No" if "cats" in p else " Yes" for p in PROMPTS])


def policy(tiny_model, tiny_tokenizer, **kwargs) -> CausalLMPolicy:
    kwargs = {"precision": "float32", "cache_reference": False, "device": "cpu", **kwargs}
    return CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, **kwargs)


def token_by_token(model, prompt_ids, response_ids, reduction="sum") -> float:
    """log pi(response | prompt): one unpadded forward pass per response token, full logits, float64 sum."""
    total = 0.0
    ids = list(prompt_ids)
    with torch.no_grad():
        for token in response_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, -1)[token])
            ids.append(token)
    return total if reduction == "sum" else total / len(response_ids)


# -- log-probs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("append_eos", [False, True])
def test_sequence_logprobs_equal_a_token_by_token_computation(tiny_model, tiny_tokenizer, reduction, append_eos):
    pairs = MP.encode_pairs(tiny_tokenizer, MIXED.prompts, MIXED.chosen, MIXED.rejected, append_eos=append_eos)
    assert all(ids[-1] == tiny_tokenizer.eos_token_id for ids in pairs.chosen_ids) == append_eos
    with torch.no_grad():
        chosen, rejected = MP.pair_logprobs(tiny_model, pairs, range(len(pairs)), 0, reduction)
    for i in range(len(pairs)):
        assert float(chosen[i]) == pytest.approx(
            token_by_token(tiny_model, pairs.prompt_ids[i], pairs.chosen_ids[i], reduction), abs=2e-6)
        assert float(rejected[i]) == pytest.approx(
            token_by_token(tiny_model, pairs.prompt_ids[i], pairs.rejected_ids[i], reduction), abs=2e-6)


def test_total_norm_is_the_norm_of_all_gradients_together():
    rng = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, generator=rng), torch.randn(200_000, generator=rng) * 3, torch.randn(5, generator=rng)]
    exact = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    got = T._total_norm(grads)
    assert got.dtype == torch.float32 and float(got) == pytest.approx(exact, rel=1e-6)
    assert float(got) == pytest.approx(float(torch.nn.utils.get_total_norm(grads)), rel=1e-4)
    assert float(T._total_norm([g.double() for g in grads])) == pytest.approx(exact, rel=1e-12)


def test_length_buckets_keep_small_batches_whole_and_bound_the_padding():
    lengths = [64, 20, 50, 63, 21, 40, 33, 60, 25, 52]
    assert MP._length_buckets(lengths, min_tokens=10_000) == [[0, 3, 7, 9, 2, 5, 6, 8, 4, 1]]  # longest first
    # by hand, longest first: 64 63 60 52 | 50 40 33 | 25 21 20: the first pass closes at 50 < 0.8 x 64 (239 tokens
    # >= 100); 33 < 0.8 x 50 still joins the second (90 tokens < 100); 25 < 40 closes it (123 tokens)
    assert MP._length_buckets(lengths, min_tokens=100, waste=0.2) == [[0, 3, 7, 9], [2, 5, 6], [8, 4, 1]]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_length_buckets_give_the_one_pass_values(tiny_model, tiny_tokenizer, monkeypatch, reduction):
    pairs = MP.encode_pairs(tiny_tokenizer, MIXED.prompts, MIXED.chosen, MIXED.rejected, append_eos=True)
    rows = [(list(p), list(c)) for p, c in zip(pairs.prompt_ids, pairs.chosen_ids, strict=True)] + \
        [(list(p), list(r)) for p, r in zip(pairs.prompt_ids, pairs.rejected_ids, strict=True)]
    with torch.no_grad():
        whole = MP.response_logprobs(tiny_model, rows, 0, reduction)
        monkeypatch.setattr(MP, "LENGTH_BUCKET_TOKENS", 1)
        monkeypatch.setattr(MP, "LENGTH_BUCKET_WASTE", 0.0)
        assert len(MP._length_buckets([len(p) + len(r) for p, r in rows], 1, 0.0)) > 1
        split = MP.response_logprobs(tiny_model, rows, 0, reduction)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)


def test_only_response_positions_reach_the_output_head(tiny_model, tiny_tokenizer):
    pairs = MP.encode_pairs(tiny_tokenizer, MIXED.prompts, MIXED.chosen, MIXED.rejected)
    rows = []
    handle = tiny_model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        with torch.no_grad():
            MP.pair_logprobs(tiny_model, pairs, range(4), 0)
    finally:
        handle.remove()
    assert rows == [torch.Size([sum(map(len, pairs.chosen_ids + pairs.rejected_ids)), 32])]


def test_single_token_path_runs_each_prompt_token_once_and_equals_the_general_path(tiny_model, tiny_tokenizer):
    data = persona_like()
    pairs = MP.encode_pairs(tiny_tokenizer, data.prompts, data.chosen, data.rejected)
    assert pairs.single_token
    tokens = []  # the token ids each pass embeds
    handle = tiny_model.model.embed_tokens.register_forward_hook(lambda m, args, out: tokens.append(args[0].numel()))
    try:
        with torch.no_grad():
            fast = MP.pair_logprobs(tiny_model, pairs, range(len(pairs)), 0)
            general = MP.pair_logprobs(tiny_model, pairs, range(len(pairs)), 0, single_token_path=False)
    finally:
        handle.remove()
    # the single-token path packs the prompts (no padding, no answer rows); so does the general path, which
    # computes each distinct prompt once and, for one-token responses, nothing after it
    assert tokens[0] == sum(len(p) for p in pairs.prompt_ids)
    assert tokens[1] == sum(len(p) for p in set(pairs.prompt_ids))
    for a, b in zip(fast, general, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_packed_single_token_path_gives_the_padded_batch_values_and_gradients(tiny_model, tiny_tokenizer):
    data = persona_like()
    pairs = MP.encode_pairs(tiny_tokenizer, data.prompts, data.chosen, data.rejected)
    assert len({len(p) for p in pairs.prompt_ids}) > 1  # several lengths: a padded batch would pad

    got = {}
    for name, model in (("packed", tiny_model), ("padded", _Plain(tiny_model))):
        tiny_model.zero_grad()
        chosen, rejected = MP.pair_logprobs(model, pairs, range(len(pairs)), 0)
        (chosen - 2 * rejected).sum().backward()
        got[name] = (chosen.detach(), rejected.detach(),
                     [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None])
    for a, b in zip(got["packed"][:2], got["padded"][:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert len(got["packed"][2]) == len(got["padded"][2]) > 0
    for a, b in zip(got["packed"][2], got["padded"][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_length_groups_split_where_the_padding_saved_pays_for_the_call():
    lengths = [(2, 0), (3, 4), (10, 4), (11, 4)]  # (tokens, context), sorted by tokens
    assert MF._length_groups(lengths, call_pairs=10**6) == [[0, 1, 2, 3]]
    assert MF._length_groups(lengths, call_pairs=0) == [[0], [1], [2], [3]]
    # one group: 4 x 11 x 15 = 660 pairs; {2, 3} and {10, 11}: 2 x 3 x 7 + 2 x 11 x 15 = 372, so splitting there
    # pays from 288 pairs per call down; the next best, {2}, {3, 10, 11}: 2 x 2 + 3 x 11 x 15 = 499
    assert MF._length_groups(lengths, call_pairs=287) == [[0, 1], [2, 3]]
    assert MF._length_groups(lengths, call_pairs=289) == [[0, 1, 2, 3]]
    assert MF._length_groups([], call_pairs=1) == []
    assert MF._length_groups([(3, 0), (3, 5), (7, 0)], call_pairs=0) == [[0, 1], [2]]  # one length stays together


@pytest.mark.parametrize("pairs", ["single_token", "general"])
def test_packed_training_pass_in_length_buckets_gives_the_one_call_values_and_gradients(
        tiny_model, tiny_tokenizer, monkeypatch, pairs):
    data = persona_like() if pairs == "single_token" else MIXED
    enc = MP.encode_pairs(tiny_tokenizer, data.prompts, data.chosen, data.rejected)
    original, groups = MF._length_groups, []

    def every_length_apart(lengths, call_pairs=2048):
        groups.append(original(lengths, call_pairs=0))
        return groups[-1]

    got = {}
    for name in ("one call", "buckets"):
        if name == "buckets":
            monkeypatch.setattr(MF, "_length_groups", every_length_apart)
        tiny_model.zero_grad()
        chosen, rejected = MP.pair_logprobs(tiny_model, enc, range(len(enc)), 0)
        (chosen - 2 * rejected).sum().backward()
        got[name] = (chosen.detach(), rejected.detach(), [p.grad.clone() for p in tiny_model.parameters()])
    assert groups and all(len(g) > 1 for g in groups)
    for a, b in zip(got["one call"][:2], got["buckets"][:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(got["one call"][2], got["buckets"][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trainable", ["full", "lora"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_packed_general_path_computes_each_prompt_once_with_the_padded_batch_values_and_gradients(
        tiny_model, tiny_tokenizer, monkeypatch, trainable, reduction):
    """Responses of several lengths (EOS appended), two pairs with the same prompt: the packed general path (each
    distinct prompt once, each response after it without its last token) against the right-padded batch."""
    data = PreferencePairs([*MIXED.prompts, MIXED.prompts[1]], [*MIXED.chosen, " c"], [*MIXED.rejected, " d e f"])
    pairs = MP.encode_pairs(tiny_tokenizer, data.prompts, data.chosen, data.rejected, append_eos=True)
    pol = policy(tiny_model, tiny_tokenizer, trainable=trainable)
    pol.module.train(False)  # LoRA's dropout off: both passes see the same function
    embedded, embed = [], MF._embed  # the token ids each packed pass embeds
    monkeypatch.setattr(MF, "_embed", lambda model, ids: embedded.append(ids.numel()) or embed(model, ids))
    got = {}
    for name, model in (("packed", pol.module), ("padded", _Plain(pol.module))):
        pol.module.zero_grad()
        chosen, rejected = MP.pair_logprobs(model, pairs, range(len(pairs)), 0, reduction)
        (chosen - 2 * rejected).sum().backward()
        got[name] = (chosen.detach(), rejected.detach(),
                     [p.grad.clone() for p in pol.module.parameters() if p.grad is not None])
    distinct = sum(len(p) for p in set(pairs.prompt_ids))
    assert embedded == [distinct + sum(len(r) - 1 for r in pairs.chosen_ids + pairs.rejected_ids)] == \
        [pol.tokens(pairs, range(len(pairs)))]
    for a, b in zip(got["packed"][:2], got["padded"][:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    assert len(got["packed"][2]) == len(got["padded"][2]) > 0
    for a, b in zip(got["packed"][2], got["padded"][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_packed_path_computes_the_shared_prefix_once_with_the_padded_batch_values_and_gradients(tiny_model,
                                                                                                tiny_tokenizer,
                                                                                                monkeypatch):
    statements = ["I like cats", "a b", "hello world c d", "dogs", "e", "I like dogs ?"]
    prompts = [f'{MP.SHARED_PROMPT_PREFIX}{t}"' for t in statements] + ["hello world", "Is the following a"]
    pairs = MP.encode_pairs(tiny_tokenizer, prompts, [" Yes"] * 8, [" No"] * 8)
    assert len(pairs.shared_prefix) >= 8
    pol = policy(tiny_model, tiny_tokenizer)
    embedded, embed = [], MF._embed  # the token ids each packed pass embeds
    monkeypatch.setattr(MF, "_embed", lambda model, ids: embedded.append(ids.numel()) or embed(model, ids))
    got = {}
    for name, model in (("packed", pol.module), ("padded", _Plain(pol.module))):
        pol.module.zero_grad()
        chosen, rejected = MP.pair_logprobs(model, pairs, range(8), 0)
        (chosen - 2 * rejected).sum().backward()
        got[name] = (chosen.detach(), rejected.detach(), [p.grad.clone() for p in pol.module.parameters()])
    assert embedded == [pol.tokens(pairs, range(8))]
    assert embedded[0] == pol.tokens(pairs, range(8)) == sum(map(len, pairs.prompt_ids)) - 5 * len(pairs.shared_prefix)
    for a, b in zip(got["packed"][:2], got["padded"][:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(got["packed"][2], got["padded"][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_packed_rotary_embedding_equals_the_models_to_the_bit_in_value_and_gradient(tiny_model):
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    head_dim = tiny_model.config.hidden_size // tiny_model.config.num_attention_heads
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 2, 3]])
    x = torch.randn(8, tiny_model.config.num_attention_heads, head_dim)
    cos, sin = (t[0] for t in tiny_model.model.rotary_emb(x, positions))
    upstream = torch.randn_like(x)
    results = []
    for rotate in (lambda t: modeling_llama.apply_rotary_pos_emb(t, t, cos, sin, unsqueeze_dim=1)[0],
                   lambda t: M.apply_rotary(t, cos[:, None], M.rotary_signed_sin(sin)[:, None])):
        t = x.clone().requires_grad_()
        out = rotate(t)
        out.backward(upstream)
        results.append((out.detach(), t.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    rows = torch.randn(5, 3)
    assert MF._first_rows(rows, 5) is rows and torch.equal(MF._first_rows(rows, 2), rows[:2])


def test_tied_embedding_rows_add_their_gradient_in_place_as_autograd_would(tiny_model):
    """The packed pass's embedding of a matrix tied to the output layer: the same output as the embedding module,
    and the same gradient as plain autograd through both uses, whether the output layer's gradient comes first
    (one backward pass through both) or the rows' (an earlier gradient in .grad, then only the rows), with the
    padding token's rows getting none."""
    model = copy.deepcopy(tiny_model)
    weight = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is weight
    ids = torch.tensor([[3, 5, 3, 0, 7], [5, 9, 9, 2, 0]])
    up = torch.randn(2, 5, weight.shape[1], generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(1))

    def loss(embed):
        return (embed(model, ids) * up).sum() + torch.logsumexp(model.get_output_embeddings()(hidden), -1).sum()

    grads = {}
    for name, embed in (("ours", MF._embed), ("autograd", lambda m, i: m.get_input_embeddings()(i))):
        weight.grad = None
        loss(embed).backward()
        first = weight.grad.clone()
        with torch.no_grad():
            x = embed(model, ids)
        assert not x.requires_grad
        (embed(model, ids) * up).sum().backward()  # .grad already holds a gradient: the rows are added to it
        grads[name] = (first, weight.grad.clone(), embed(model, ids).detach())
    for a, b in zip(grads["ours"], grads["autograd"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert model.get_input_embeddings().padding_idx == 0
    assert torch.equal(grads["ours"][1][0], grads["ours"][0][0])  # the padding rows added nothing


def test_training_pass_under_bf16_autocast_gives_the_inference_pass_values(tiny_model, tiny_tokenizer):
    """With autograd the packed pass attends in padded buckets (in float32 on a CPU); without, per length group:
    under bf16 autocast the two give the same log-probs up to bf16 rounding, and the training pass's gradients
    are finite."""
    statements = ["I like cats", "a b", "hello world c d", "dogs", "e", "I like dogs ?"]
    prompts = [f'{MP.SHARED_PROMPT_PREFIX}{t}"' for t in statements] + ["hello world", "Is the following a"]
    pairs = MP.encode_pairs(tiny_tokenizer, prompts, [" Yes"] * 8, [" No"] * 8)
    tiny_model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            inference = MP.pair_logprobs(tiny_model, pairs, range(8), 0)
        training = MP.pair_logprobs(tiny_model, pairs, range(8), 0)
    (training[0] - 2 * training[1]).sum().backward()
    for a, b in zip(training, inference, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0.05)
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)


class _Plain(torch.nn.Module):
    """A model seen as one the packed path does not apply to (the padded batch runs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs)


# -- the loop on a language model --------------------------------------------------------------------------------
@pytest.mark.parametrize("trainable", ["full", "top_blocks", "lora"])
def test_dpo_loss_at_step_0_is_log_2_and_training_lowers_it(tiny_model, tiny_tokenizer, trainable):
    pol = policy(tiny_model, tiny_tokenizer, trainable=trainable, top_blocks=1)
    data = persona_like()
    run = train(pol, data, beta=0.5, lr=1e-2 if trainable == "full" else 5e-2, steps=8, batch_size=9,
                evaluations=[EvalSet("full_train_", data, "train")])
    assert run.log["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert run.log["full_train_loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    # the policy's pass with autograd attends in padded, masked buckets, the reference's per length
    # group: equal up to rounding (on an AVX2-only CPU they differed by 1e-8)
    assert abs(run.log["rewards/chosen"].iloc[0]) < 1e-6 and abs(run.log["rewards/margins"].iloc[0]) < 1e-6
    assert run.final["full_train_loss"] < math.log(2) - 0.01
    assert run.info["precision"] == "float32" and run.info["trainable"] == trainable and run.model is pol
    assert set(run.log) >= {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                            "logps/chosen", "logps/rejected", "outputs/accuracies", "grad_norm", "learning_rate"}


def reference_dpo_gradient(model, tokenizer, data: PreferencePairs, ref_model, beta: float) -> dict:
    """An independent DPO implementation: each sequence alone (no padding), full logits at every position, the
    response tokens picked by hand, the loss written out; gradients by autograd."""
    def logp(m, prompt, response):
        p = tokenizer.encode(prompt)
        r = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
        logits = m(input_ids=torch.tensor([p + r])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        return sum(lp[len(p) - 1 + k, tok] for k, tok in enumerate(r))

    model.zero_grad()
    terms = []
    for prompt, c, r in zip(data.prompts, data.chosen, data.rejected, strict=True):
        with torch.no_grad():
            rc, rr = logp(ref_model, prompt, c), logp(ref_model, prompt, r)
        h = (logp(model, prompt, c) - rc) - (logp(model, prompt, r) - rr)
        terms.append(-F.logsigmoid(beta * h))
    torch.stack(terms).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_first_step_gradient_equals_an_independent_autograd_implementation(tiny_model, tiny_tokenizer):
    ref_model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # a reference that differs from the start, so that the rewards are not zero
        for p in ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pol = policy(tiny_model, tiny_tokenizer, append_eos=True)
    ref = policy(ref_model, tiny_tokenizer, append_eos=True)
    data = pol.prepare(MIXED)
    with torch.no_grad():
        reference = ref.logps(data, None)
    train(pol, data, beta=0.3, lr=1e-3, steps=1, batch_size=None, optimizer="sgd", reference=reference)
    expected = reference_dpo_gradient(copy.deepcopy(tiny_model), tiny_tokenizer, MIXED, ref_model, 0.3)
    for name, p in pol.module.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_ipo_averages_token_log_probs_and_starts_at_its_target_squared(tiny_model, tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer)
    run = train(pol, MIXED, loss="ipo", beta=0.5, lr=1e-3, steps=1, batch_size=4)
    assert run.info["reduction"] == "mean" and run.log["loss"].iloc[0] == pytest.approx(1.0, abs=1e-6)  # (1/(2b))^2


def test_lora_changes_only_the_adapter_and_merged_weights_give_the_same_log_probs(tiny_model, tiny_tokenizer,
                                                                                  tmp_path):
    pol = policy(tiny_model, tiny_tokenizer, trainable="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    before = {n: p.detach().clone() for n, p in pol.module.named_parameters()}
    train(pol, persona_like(), beta=0.5, lr=5e-2, steps=4, batch_size=9)
    changed = {n for n, p in pol.module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n, p in pol.module.named_parameters() if p.requires_grad} == \
        {n for n in before if "lora_" in n} and any("lora_B" in n for n in changed)
    data = pol.prepare(persona_like())
    with torch.no_grad():
        adapted = pol.logps(data, None)
    folder = pol.save_adapter(tmp_path / "adapter")
    started = CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, start_adapter=folder,
                             precision="float32", cache_reference=False, trainable="lora")
    pol.merge_adapter()
    with torch.no_grad():
        merged, loaded = pol.logps(data, None), started.logps(data, None)
    for a, b, c in zip(adapted, merged, loaded, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-6)
    # the aligned model is the start and the reference of the next run
    assert train(started, persona_like(), beta=0.5, lr=1e-2, steps=1, batch_size=9).log["loss"].iloc[0] == \
        pytest.approx(math.log(2), abs=1e-6)


def test_lora_dropout_drops_each_entry_independently_with_probability_p_from_torchs_own_generator(tiny_model,
                                                                                                 tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer, trainable="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.25))
    dropouts = [m for m in pol.module.modules() if isinstance(m, PortableDropout)]
    assert dropouts and not any(isinstance(m, torch.nn.Dropout) for m in pol.module.modules())
    drop = dropouts[0].train()
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    out = drop(x)
    torch.manual_seed(3)
    gone = torch.zeros(64 * 32, dtype=torch.bool)
    gone[drop.dropped(64 * 32)] = True  # the mask: positions from geometric gaps (torch's generator, no MKL)
    torch.testing.assert_close(out, torch.where(gone.view(64, 32), 0.0, x / 0.75), rtol=1e-6, atol=0)
    leaf, grad = x.clone().requires_grad_(), torch.randn(64, 32)  # the gradient: the same entries dropped
    torch.manual_seed(3)
    drop(leaf).backward(grad)
    torch.testing.assert_close(leaf.grad, torch.where(gone.view(64, 32), 0.0, grad / 0.75), rtol=1e-6, atol=0)
    torch.manual_seed(3)
    assert torch.equal(drop(x.bfloat16()) != 0, out != 0)  # the same mask for bf16 activations
    assert torch.equal(drop.eval()(x), x)
    # a Bernoulli process: each entry dropped with probability p (the first too), independently of its neighbour
    torch.manual_seed(0)
    mask = torch.zeros(200_000, dtype=torch.bool)
    mask[drop.dropped(200_000)] = True
    assert abs(mask.float().mean().item() - 0.25) < 0.005  # 5 standard deviations
    assert abs(mask[1:][mask[:-1]].float().mean().item() - 0.25) < 0.01  # given the previous dropped
    firsts = torch.tensor([bool((drop.dropped(3) == 0).any()) for _ in range(2000)])
    assert abs(firsts.float().mean().item() - 0.25) < 0.05


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_lean_lora_forward_equals_pefts_forward_in_value_and_gradient(tiny_model, tiny_tokenizer, dropout):
    from analysis_lib.models.policy import _LEAN_LORA_CLASSES

    pol = policy(tiny_model, tiny_tokenizer, trainable="lora", lora=LoraSettings(r=4, alpha=8, dropout=dropout))
    # float64: the two differ only in where the scales enter the sums
    layer = next(m for m in pol.module.modules() if type(m) in _LEAN_LORA_CLASSES.values()).train().double()
    peft_linear = type(layer).__mro__[1]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero
    # a batch of sequences, and the packed pass's matrix of rows (its product adds into the output itself)
    for shape in ((2, 5, layer.in_features), (7, layer.in_features)):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        results = []
        for forward in (type(layer).forward, peft_linear.forward):
            torch.manual_seed(1)
            out = forward(layer, x)
            grads = torch.autograd.grad(out.square().sum(), [x, layer.lora_A["default"].weight,
                                                             layer.lora_B["default"].weight])
            results.append((out, *grads))
        for lean, reference in zip(*results, strict=True):
            torch.testing.assert_close(lean, reference, rtol=1e-12, atol=1e-12)
    # under bf16 autocast (the book's precision where the CPU has native bf16) it computes in bf16 like peft
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        lean = type(layer).forward(layer, x.float())
        torch.manual_seed(1)
        reference = peft_linear.forward(layer, x.float())
    assert lean.dtype == reference.dtype == torch.bfloat16
    scale = reference.float().abs().max().item()  # bf16 keeps 8 bits: compare against the output's scale
    torch.testing.assert_close(lean.float(), reference.float(), rtol=0, atol=2e-2 * scale)


def test_top_blocks_trains_only_the_top_layers_and_the_final_norm(tiny_model, tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer, trainable="top_blocks", top_blocks=1)
    names = {n for n, p in pol.module.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.1.", "model.norm.")) for n in names)


# -- the loop's options ------------------------------------------------------------------------------------------
def test_gradient_accumulation_equals_one_batch(tiny_model, tiny_tokenizer):
    runs = [train(policy(tiny_model, tiny_tokenizer), MIXED, beta=0.5, lr=0.5, steps=3, batch_size=4,
                  optimizer="sgd", grad_accumulation=k, sampling="sequential") for k in (1, 2, 4)]
    for other in runs[1:]:
        for p, q in zip(runs[0].model.module.parameters(), other.model.module.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        assert other.log["loss"].tolist() == pytest.approx(runs[0].log["loss"].tolist(), abs=1e-6)


def test_sequential_batches_go_through_the_data_in_order(tiny_model, tiny_tokenizer):
    seen = []

    class Recording(CausalLMPolicy):
        def logps(self, data, idx):
            if torch.is_grad_enabled():
                seen.append(idx.tolist())
            return super().logps(data, idx)

    pol = Recording(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, precision="float32",
                    cache_reference=False)
    train(pol, MIXED, beta=0.5, lr=1e-3, steps=3, batch_size=3, sampling="sequential")
    assert seen == [[0, 1, 2], [3, 0, 1], [2, 3, 0]]


def test_learning_rate_schedules():
    assert [learning_rate("constant", 1.0, t, 10, 2) for t in (0, 1, 2, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert learning_rate("linear", 1.0, 6, 10, 2) == pytest.approx(0.5)
    assert learning_rate("cosine", 1.0, 6, 10, 2) == pytest.approx(0.5)
    assert learning_rate("cosine", 1.0, 2, 10, 2) == pytest.approx(1.0)


def test_clipping_bounds_the_update_and_logs_the_norm_before_it(tiny_model, tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer)
    start = [p.detach().clone() for p in pol.module.parameters()]
    run = train(pol, MIXED, beta=0.5, lr=1.0, steps=1, batch_size=4, optimizer="sgd", max_grad_norm=1e-3)
    with torch.no_grad():
        moved = torch.sqrt(sum(((p - s) ** 2).sum() for p, s in zip(pol.module.parameters(), start, strict=True)))
    assert run.log["grad_norm"].iloc[0] > 1e-3 and float(moved) == pytest.approx(1e-3, rel=1e-3)


def test_clipping_above_the_norm_changes_no_bit(tiny_model, tiny_tokenizer):
    """A max_grad_norm the gradient stays under gives the same parameters, to the bit, as no clipping at all (the
    trainer skips torch's multiplication by 1)."""
    finals = []
    for max_grad_norm in (None, 1e6):
        pol = policy(copy.deepcopy(tiny_model), tiny_tokenizer)
        train(pol, MIXED, beta=0.5, lr=1e-2, steps=2, batch_size=4, optimizer="adamw", max_grad_norm=max_grad_norm)
        finals.append([p.detach() for p in pol.module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


def test_stops_name_the_step_the_learning_rate_and_beta(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"^step [1-9]\d*: training diverged with lr = 50, beta = 5: the batch loss "
                                         r"rose from 0\.693147 at step 0 to .*, more than 1\.1 times its start"):
        train(policy(tiny_model, tiny_tokenizer), MIXED, beta=5.0, lr=50.0, steps=20, batch_size=4, optimizer="sgd",
              max_loss_ratio=1.1)
    pol = policy(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        pol.module.lm_head.weight[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^model: the reference log-probs on the train set are not finite"):
        train(pol, persona_like(), beta=0.5, lr=1e-3, steps=1, batch_size=4)


# -- the reference cache -----------------------------------------------------------------------------------------
def counting_policy(calls: list) -> type:
    """A CausalLMPolicy class that appends the size of every pass without gradients (reference log-probs,
    evaluations) to ``calls``."""

    class Counting(CausalLMPolicy):
        def logps(self, data, idx):
            if not torch.is_grad_enabled():
                calls.append(len(data) if idx is None else len(idx))
            return super().logps(data, idx)

    return Counting


def test_reference_log_probs_are_cached_keyed_and_damage_is_recomputed(tiny_model, tiny_tokenizer, isolated_cache):
    calls = []
    Counting = counting_policy(calls)

    def fresh(**kw):
        return Counting(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, precision="float32",
                        eval_chunk=100, **kw)

    first = train(fresh(), MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)
    assert calls == [4]
    again = train(fresh(), MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)
    assert calls == [4] and again.log["loss"].equals(first.log["loss"])  # read from the cache, same numbers
    train(fresh(append_eos=True), MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)
    assert calls == [4, 4]  # another tokenisation: another key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        train(fresh(), MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)
    finally:
        torch.set_num_threads(threads)
    assert calls == [4, 4, 4]  # another thread count: other kernels, another key (M.kernel_identity)
    calls.pop()
    trained = fresh()
    train(trained, MIXED, beta=0.5, lr=1e-2, steps=1, batch_size=4)  # the same start weights: cached
    assert calls == [4, 4]
    train(trained, MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)  # its start moved: keyed by its new weights
    assert calls == [4, 4, 4] and trained.reference_namespace()["start"].startswith("weights:")
    (shard,) = M.FeatureStore(fresh().reference_namespace()).folder.glob("shard-*.npz")
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.warns(M.DamagedCacheWarning, match=rf"^{shard}: damaged cache file"):
        recomputed = train(fresh(), MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)
    assert calls == [4, 4, 4, 4] and recomputed.log["loss"].equals(first.log["loss"])


def test_step_0_evaluation_takes_a_reference_computed_now_and_runs_for_a_cached_or_given_one(tiny_model,
                                                                                            tiny_tokenizer,
                                                                                            isolated_cache):
    calls = []
    Counting = counting_policy(calls)

    def run(reference=None, **kw):
        pol = Counting(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, precision="float32", **kw)
        return train(pol, MIXED, beta=0.5, lr=1e-2, steps=2, batch_size=2,
                     evaluations=[EvalSet("eval_", held_out, "test", every=None, reference=reference),
                                  EvalSet("full_train_", MIXED, "train", every=None)])

    held_out = persona_like()
    computed = run()  # references computed now (train set, held-out set): step 0 takes them, the end evaluates
    assert calls == [4, len(held_out), len(held_out), 4]
    calls.clear()
    cached = run()  # references read from the cache: step 0 evaluates both sets for real
    assert calls == [len(held_out), 4, len(held_out), 4]
    for col in ("eval_loss", "eval_logps/chosen", "full_train_loss", "full_train_logps/rejected"):
        assert cached.log[col].iloc[0] == pytest.approx(computed.log[col].iloc[0], abs=1e-6)
        assert cached.final[col] == computed.final[col]
    assert computed.log["eval_loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-7)
    # a given reference (here: the start's chosen log-probs plus 1): step 0 evaluates the set, and its loss is
    # -log sigmoid(-beta), not log 2
    start = policy(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        chosen, rejected = start.logps(start.prepare(held_out), None)
    calls.clear()
    given = run(reference=(chosen + 1.0, rejected), cache_reference=False)
    assert calls == [4, len(held_out), len(held_out), 4]  # train reference, step-0 held-out pass, the end
    assert given.log["eval_loss"].iloc[0] == pytest.approx(-math.log(1 / (1 + math.exp(0.5))), abs=1e-5)


# -- precision and data ------------------------------------------------------------------------------------------
def test_precision_auto_is_bf16_autocast_where_native(tiny_model, tiny_tokenizer, monkeypatch):
    from analysis_lib.models import policy as MPol

    monkeypatch.setattr(MPol, "cpu_has_native_bf16", lambda: True)
    pol = policy(tiny_model, tiny_tokenizer, precision="auto")
    run = train(pol, MIXED, beta=0.5, lr=1e-3, steps=1, batch_size=4)
    assert run.info["precision"] == "bfloat16 autocast" and next(pol.module.parameters()).dtype == torch.float32
    monkeypatch.setattr(MPol, "cpu_has_native_bf16", lambda: False)
    assert policy(tiny_model, tiny_tokenizer, precision="auto").precision == "float32"


def test_pairs_from_persona_and_hh_rlhf(data_root):
    from analysis_lib import data as D

    rows = D.load_persona("agreeableness", data_dir=data_root, flip=True).head(4)
    pairs = PreferencePairs.from_persona(rows)
    assert pairs.prompts == tuple(rows["question"]) and pairs.chosen == tuple(rows["answer_not_matching_behavior"])
    hh = PreferencePairs.from_hh_rlhf(D.load_hh_rlhf_harmless(data_dir=data_root, expected_rows=None))
    assert hh.prompts[1] == "\n\nHuman: q\n\nAssistant:" and hh.chosen[1] == " yes" and hh.rejected[1] == " no way"
    assert len(pairs.take([2, 0])) == 2 and pairs.take([2, 0]).prompts[0] == pairs.prompts[2]


# -- bad input: one line naming the argument ---------------------------------------------------------------------
def test_bad_policies_name_the_argument(tiny_model, tiny_tokenizer, monkeypatch):
    with pytest.raises(ValueError, match=r"^trainable: must be one of full, top_blocks, head, lora, got 'all'$"):
        policy(tiny_model, tiny_tokenizer, trainable="all")
    with pytest.raises(ValueError, match=r"^lora.targets: the model has no linear modules named \['c_attn'\]; its "
                                         r"linear modules are \['down_proj', 'gate_proj', 'k_proj', 'lm_head', "):
        policy(tiny_model, tiny_tokenizer, trainable="lora", lora=LoraSettings(targets=("q_proj", "c_attn")))
    with pytest.raises(ValueError, match=r"^top_blocks: the model has 2 decoder layers, got 3$"):
        policy(tiny_model, tiny_tokenizer, trainable="top_blocks", top_blocks=3)
    monkeypatch.setattr("analysis_lib.data.hub_unreachable_reason", lambda *a, **k: "offline (test)")
    with pytest.raises(ValueError, match=r"^model_id: the tokenizer of 'nobody/no-such-model' is not in the local "
                                         r"Hugging Face cache and the hub cannot be used \(offline \(test\)\)"):
        CausalLMPolicy("nobody/no-such-model")


@pytest.mark.parametrize("pairs, kwargs, message", [
    (PreferencePairs(["hello"], [" Yes"], [""]), {}, r"^rejected: pair 0 has an empty response \(''"),
    (PreferencePairs(["a b c d e"], [" Yes"], [" No"]), {"max_length": 4},
     r"^max_length: the prompt of pair 0 is 5 tokens, which leaves no room for a response within max_length = 4"),
])
def test_bad_pairs_name_the_argument(tiny_model, tiny_tokenizer, pairs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(policy(tiny_model, tiny_tokenizer, **kwargs), pairs, beta=0.1, lr=1e-3, steps=1, batch_size=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": 0.0}, r"^beta: must be a finite number > 0, got 0\.0$"),
    ({"lr": -1e-3}, r"^lr: must be a finite number > 0, got -0\.001$"),
    ({"batch_size": 5}, r"^batch_size: must be at most the training-set size 4 \(or None for the whole set\), "
                        r"got 5$"),
    ({"batch_size": 3, "grad_accumulation": 2}, r"^batch_size: must be a multiple of grad_accumulation x "
                                                r"processes = 2, got 3$"),
    ({"loss": "kto"}, r"^loss: must be one of dpo, ipo, got 'kto'$"),
    ({"optimizer": "lion"}, r"^optimizer: must be one of sgd, adam, adamw, got 'lion'$"),
])
def test_bad_training_settings_name_the_argument(tiny_model, tiny_tokenizer, kwargs, message):
    settings = {"beta": 0.1, "lr": 1e-3, "steps": 1, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        train(policy(tiny_model, tiny_tokenizer), MIXED, **settings)


# -- TRL and several processes -----------------------------------------------------------------------------------
def test_loss_rewards_and_first_gradient_equal_trl_dpo_trainer(tiny_model, tiny_tokenizer, tmp_path):
    """TRL's conventions: EOS appended to both responses, summed log-probs, the same batch (sequential)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    ref_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in ref_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    trl_policy = copy.deepcopy(tiny_model)
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=1.0,
                         optim="sgd", lr_scheduler_type="constant", max_grad_norm=0, weight_decay=0.0, beta=0.3,
                         bf16=False, gradient_checkpointing=False, train_sampling_strategy="sequential",
                         logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0)
    dataset = Dataset.from_dict({"prompt": list(MIXED.prompts), "chosen": list(MIXED.chosen),
                                 "rejected": list(MIXED.rejected)})
    trainer = trl.DPOTrainer(model=trl_policy, ref_model=copy.deepcopy(ref_model), args=args, train_dataset=dataset,
                             processing_class=tiny_tokenizer)
    trainer.train()
    logged = trainer.state.log_history[0]
    trl_grad = {n: p0.detach() - p1.detach() for (n, p0), p1 in  # one SGD step with lr 1: the gradient
                zip(tiny_model.named_parameters(), trl_policy.parameters(), strict=True)}

    pol = policy(tiny_model, tiny_tokenizer, append_eos=True)
    data = pol.prepare(MIXED)
    with torch.no_grad():
        reference = policy(ref_model, tiny_tokenizer, append_eos=True).logps(data, None)
    run = train(pol, data, beta=0.3, lr=1.0, steps=1, batch_size=4, optimizer="sgd", sampling="sequential",
                reference=reference)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "grad_norm"):
        assert run.log[key].iloc[0] == pytest.approx(logged[key], abs=1e-5), key
    assert abs(logged["rewards/chosen"]) > 1e-3  # the check is not vacuous: the reference differs
    for name, p in pol.module.named_parameters():
        torch.testing.assert_close(p.grad, trl_grad[name], rtol=0, atol=1e-5, msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_equal_one_process(tmp_path):
    """2 CPU processes (gloo) with the same global batch (each half of it, gradients averaged) end with the
    parameters of the one-process run."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ROOT / "tests" / "ddp_worker.py"
    subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                    str(worker), str(tmp_path / "two.pt")], env=env, check=True, timeout=600, capture_output=True)
    subprocess.run([sys.executable, str(worker), str(tmp_path / "one.pt")], env=env, check=True, timeout=600)
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert two["world_size"] == 2 and one["world_size"] == 1
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=0, atol=1e-6, msg=name)
    assert two["final"]["eval_loss"] == pytest.approx(one["final"]["eval_loss"], abs=1e-6)
    assert len(worker_pairs()) == 27


def test_command_line_trains_and_writes_its_results(tiny_model, tiny_tokenizer, tmp_path, data_root, monkeypatch):
    from analysis_lib.training import main

    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    monkeypatch.setenv("ANALYSIS_LIB_DATA", str(data_root))
    monkeypatch.setenv("ANALYSIS_LIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["--model", str(folder), "--behaviours", "1", "--trainable", "lora", "--epochs", "0.01",
                 "--batch-size", "4", "--precision", "float32", "--eval-every", "2", "--out", str(out)]) == 0
    log = __import__("pandas").read_csv(out / "log.csv")
    assert len(log) == 3 and log["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)  # ceil(0.01 * 900 / 4)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "final.json").is_file()
