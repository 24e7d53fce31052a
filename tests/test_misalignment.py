"""Tests of analysis_lib.misalignment (and the block-input feature kind of analysis_lib.models): the last block on
cached inputs against the full model's logits (tiny random Llama, no download), the toy model's closed-form
gradient against autograd, the DPO loss on logits against the library's dpo_loss, the identical-embedding control,
determinism and a fixed-seed snapshot, the cache of block inputs, and argument-naming errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from analysis_lib import misalignment as MS
from analysis_lib import models as M
from analysis_lib.losses import dpo_loss
from analysis_lib.models import features as MF
from analysis_lib.training import CausalLMPolicy, LoraSettings, PreferencePairs, train

PROMPTS = ["Is the following statement something you would say ? I like cats", "hello", "a b c d e hello world ?",
           "I like dogs"]


# -- the last block on cached inputs ------------------------------------------------------------------------------
def test_last_block_on_cached_inputs_gives_the_full_models_logits(tiny_model, tiny_tokenizer):
    block = MS.LastBlock.from_model(tiny_model, 4, 5)
    head = M.lm_head_weight(model=tiny_model)
    out = MS.check_block_against_model(block, head, tiny_model, tiny_tokenizer, PROMPTS)
    assert out["max_abs_diff"] < 1e-5 and out["argmax_agreement"] == 1.0
    # batched and left-padded: the last-token features equal the model's own final hidden states
    seqs = M.last_block_inputs(tiny_model, tiny_tokenizer, PROMPTS, batch_size=3)
    assert [s.shape[0] for s in seqs] == [len(tiny_tokenizer.encode(p)) for p in PROMPTS]
    inputs = MS.BlockInputs.from_sequences(seqs, device="cpu")
    g, z = block(inputs.x, inputs.mask)
    expected = M.last_prompt_hidden(tiny_model, tiny_tokenizer, PROMPTS)
    torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, expected @ head[[4, 5]].T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block.logit_diff(inputs.x, inputs.mask), z[:, 0] - z[:, 1])


@pytest.mark.parametrize("route", ["packed", "plain"])
def test_block_inputs_of_a_prompt_do_not_depend_on_the_request(tiny_tokenizer, monkeypatch, route):
    """A prompt's last-block inputs are the same bits alone or among many prompts of its length, with or without
    the persona prefix (computed once in the packed pass), so the per-prompt cache never holds values that depend on
    which request (or chapter) computed them first. The model has SmolLM2's widths, whose float32 products give a
    row other last bits with another number of rows on the CPUs we measured (a prompt alone: its own rows; among
    24 others: 25 times as many)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from analysis_lib.models.logprobs import SHARED_PROMPT_PREFIX

    if route == "plain":
        monkeypatch.setattr(MF, "_packable", lambda model: False)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), num_hidden_layers=2, hidden_size=576,
                         intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    words, rng = ["cats", "dogs", "hello", "world", "like", "I", "a", "b", "c", "d"], np.random.default_rng(0)
    for start in ("", SHARED_PROMPT_PREFIX):
        texts = [start + " ".join(rng.choice(words, 10)) for _ in range(25)]
        lengths = {len(tiny_tokenizer(t)["input_ids"]) for t in texts}
        alone = M.last_block_inputs(model, tiny_tokenizer, [texts[7]])[0]
        together = M.last_block_inputs(model, tiny_tokenizer, texts)[7]
        assert lengths == {alone.shape[0]} and alone.shape[1] == 576 and torch.equal(alone, together)
        # and they are the model's own: the hidden states entering its last layer (the prefix's rows included)
        ids = torch.tensor([tiny_tokenizer(texts[7])["input_ids"]])
        with torch.no_grad():
            own = model(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]
        torch.testing.assert_close(alone, own, atol=1e-5, rtol=1e-5)


def test_last_block_is_a_trainable_copy(tiny_model):
    block = MS.LastBlock.from_model(tiny_model, 4, 5)
    before = tiny_model.model.layers[-1].mlp.down_proj.weight.detach().clone()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(1.0)
    assert torch.equal(tiny_model.model.layers[-1].mlp.down_proj.weight, before)  # the model is untouched
    names = {n.split(".")[0] for n, p in block.named_parameters() if p.requires_grad}
    assert names == {"layer", "norm", "answer_rows"}
    n_layer = sum(p.numel() for p in tiny_model.model.layers[-1].parameters())
    assert sum(p.numel() for p in block.parameters()) == n_layer + 32 + 2 * 32


def test_block_inputs_take_trims_padding():
    seqs = [np.ones((2, 3)), 2 * np.ones((5, 3)), 3 * np.ones((1, 3))]
    inputs = MS.BlockInputs.from_sequences(seqs, device="cpu")
    assert inputs.x.shape == (3, 5, 3) and inputs.mask.sum(1).tolist() == [2, 5, 1]
    x, mask = inputs.take(torch.tensor([0, 2]))
    assert x.shape == (2, 2, 3) and mask.tolist() == [[True, True], [False, True]]
    assert float(x[1, 1, 0]) == 3.0 and float(x[0, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="sequences: give a non-empty list"):
        MS.BlockInputs.from_sequences([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="sequences: must be finite"):
        MS.BlockInputs.from_sequences([np.full((2, 3), np.nan)])


def test_unsupported_model_and_bad_ids(tiny_model):
    other = copy.deepcopy(tiny_model)
    other.config.model_type = "gpt2"
    with pytest.raises(ValueError, match=r"model: LastBlock supports the model types \['llama', 'mistral'\]"):
        MS.LastBlock.from_model(other, 4, 5)
    with pytest.raises(ValueError, match=r"yes_id: must be a token id in \[0, 29\]"):
        MS.LastBlock.from_model(tiny_model, 99, 5)


# -- losses and gradients -------------------------------------------------------------------------------------------
def test_dpo_on_logits_equals_dpo_on_full_softmax_logprobs():
    gen = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    s = torch.tensor([1, -1, 1, 1, -1, -1])
    lp, lr_ = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    yes = s > 0
    pc, pr = torch.where(yes, lp[:, 0], lp[:, 1]), torch.where(yes, lp[:, 1], lp[:, 0])
    rc, rr = torch.where(yes, lr_[:, 0], lr_[:, 1]), torch.where(yes, lr_[:, 1], lr_[:, 0])
    expected = dpo_loss(pc, pr, rc, rr, beta=0.3)[0]
    got = MS.dpo_logit_losses(logits[:, 0] - logits[:, 1], ref[:, 0] - ref[:, 1], s, 0.3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_toy_gradient_closed_form_matches_autograd():
    rng = np.random.default_rng(3)
    params = MS.init_toy(5, 4, rng=rng)
    g = torch.as_tensor(rng.standard_normal((20, 5)))
    s = torch.as_tensor(rng.choice([-1, 1], 20))
    z_ref = torch.as_tensor(rng.standard_normal(20))
    A, v = params.A.clone().requires_grad_(), params.v.clone().requires_grad_()
    loss = MS.dpo_logit_losses(torch.tanh(g @ A.T) @ v, z_ref, s, 0.7).mean()
    dA, dv = torch.autograd.grad(loss, [A, v])
    cA, cv = MS.toy_dpo_gradient_closed_form(params, z_ref, g, s, 0.7)
    torch.testing.assert_close(cA, dA, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(cv, dv, atol=1e-12, rtol=1e-10)


def test_first_toy_step_is_the_closed_form_gradient_step():
    rng = np.random.default_rng(0)
    data = MS.make_toy_data(40, 6, 2.0, 10, rng=rng)
    params = MS.init_toy(6, rng=rng)
    run = MS.train_toy_dpo(params, data.train_g, data.train_s, beta=0.5, lr=0.3, steps=1, batch_size=None,
                           device="cpu")
    z_ref = MS.toy_logit(params, data.train_g)
    dA, dv = MS.toy_dpo_gradient_closed_form(params, z_ref, data.train_g, data.train_s, 0.5)
    torch.testing.assert_close(run.model.A, params.A - 0.3 * dA, atol=1e-14, rtol=0)
    torch.testing.assert_close(run.model.v, params.v - 0.3 * dv, atol=1e-14, rtol=0)
    assert run.log["full_train_loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-15)  # reference = start


# -- the control ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_identical_embeddings_give_identical_flipped_dynamics(optimizer):
    rng = np.random.default_rng(1)
    data = MS.make_toy_data(200, 8, 2.0, 40, rng=rng)
    heads = [rng.standard_normal(8), 5 * rng.standard_normal(8), np.stack([rng.standard_normal(8)] * 2)]
    out = MS.last_layer_control(np.tanh(data.train_g), -data.train_s, heads, beta=0.2, lr=0.5, steps=30,
                                batch_size=32, seed=4, test_features=np.tanh(data.test_g), test_signs=-data.test_s,
                                optimizer=optimizer, device="cpu")
    assert out["max_loss_difference"] < 1e-12
    assert out["max_accuracy_difference"] > 0.1  # the accuracy uses v itself: the heads' orderings differ
    first, second = out["runs"][:2]
    assert first.log["full_train_loss"].iloc[-1] < math.log(2)  # it did train
    np.testing.assert_allclose(first.log["weight_change"], second.log["weight_change"], atol=1e-12)


def test_different_embeddings_break_the_identity():
    rng = np.random.default_rng(2)
    data = MS.make_toy_data(200, 8, 2.0, 40, rng=rng)
    v = rng.standard_normal(8)
    a = MS.last_layer_control(data.train_g, -data.train_s, [v, v], beta=0.2, lr=0.5, steps=10, device="cpu")
    b = MS.last_layer_control(2 * data.train_g, -data.train_s, [v, v], beta=0.2, lr=0.5, steps=10, device="cpu")
    assert a["runs"][0].final["full_train_loss"] > b["runs"][0].final["full_train_loss"]  # more separated: faster


# -- two stages, determinism, snapshot ------------------------------------------------------------------------------
SMALL_TOY = {"n": 200, "d": 8, "n_test": 40, "batch_size": 32, "align_steps": 60, "misalign_steps": 20,
             "device": "cpu"}


def test_toy_misalignment_is_deterministic_and_uses_the_same_batches():
    a = MS.toy_misalignment(7, **SMALL_TOY)
    b = MS.toy_misalignment(7, **SMALL_TOY)
    for ra, rb in ((a.align, b.align), (a.from_base, b.from_base), (a.from_aligned, b.from_aligned)):
        assert ra.log.equals(rb.log) and ra.final == rb.final
    assert a.from_base.log["full_train_loss"].iloc[0] == pytest.approx(math.log(2))
    assert a.from_aligned.log["full_train_loss"].iloc[0] == pytest.approx(math.log(2))
    # both stage-2 runs start at their own reference and see the same training labels (flipped)
    assert a.from_aligned.log["full_train_outputs/accuracies"].iloc[0] == pytest.approx(
        1 - a.align.final["full_train_outputs/accuracies"])


def test_toy_snapshot():
    r = MS.toy_misalignment(0, **SMALL_TOY)
    got = [r.pd_base, r.pd_aligned, r.from_base.final["full_train_loss"], r.from_aligned.final["full_train_loss"]]
    assert got == pytest.approx([1.1557066537, 2.241271746, 0.6750266999, 0.6312291832], abs=1e-9)


def tiny_behaviour(model, tokenizer):
    prompts = [f"{a} {b} {c}" for a in ("I like", "hello", "Is the following")
               for b in ("cats", "dogs", "a b") for c in ("?", "world", "c d e")]
    seqs = M.last_block_inputs(model, tokenizer, prompts)
    signs = np.array([1 if "cats" in p or "hello" in p else -1 for p in prompts])
    return MS.BlockInputs.from_sequences(seqs, device="cpu"), signs


def test_block_training_is_deterministic_learns_and_checkpoints(tiny_model, tiny_tokenizer):
    inputs, signs = tiny_behaviour(tiny_model, tiny_tokenizer)
    block = MS.LastBlock.from_model(tiny_model, 4, 5)
    kw = {"beta": 0.5, "lr": 1e-2, "batch_size": 8, "seed": 3, "eval_every": 2}
    a = MS.train_block_dpo(block, inputs, signs, steps=12, **kw)
    b = MS.train_block_dpo(block, inputs, signs, steps=12, **kw)
    assert a.log.equals(b.log) and a.final == b.final
    assert a.log["full_train_loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert a.final["full_train_loss"] < 0.6
    longer = MS.train_block_dpo(block, inputs, signs, steps=20, checkpoints=[12], **kw)
    assert longer.at(12, "full_train_loss") == pytest.approx(a.final["full_train_loss"], abs=1e-6)
    assert math.isnan(a.at(3, "full_train_loss")) and not math.isnan(a.at(4, "full_train_loss"))
    # the starting block is unchanged (training runs on a copy)
    torch.testing.assert_close(MS.block_features(block, inputs),
                               MS.block_features(MS.LastBlock.from_model(tiny_model, 4, 5), inputs))


def test_block_snapshot(tiny_model, tiny_tokenizer):
    inputs, signs = tiny_behaviour(tiny_model, tiny_tokenizer)
    block = MS.LastBlock.from_model(tiny_model, 4, 5)
    r = MS.block_misalignment(block, inputs, signs, inputs, signs, train_yes=signs > 0, test_yes=signs > 0,
                              beta=0.5, lr=1e-2, align_steps=6, misalign_steps=4, batch_size=8, seed=0)
    assert r.from_base.log["full_train_loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert r.pd["aligned"]["all"] > r.pd["base"]["all"]
    got = [r.pd["base"]["all"], r.pd["aligned"]["all"], r.from_base.final["full_train_loss"],
           r.from_aligned.final["full_train_loss"]]
    assert got == pytest.approx([1.6035125999, 10.7618328576, 0.382686466, 0.2249493748], rel=1e-4)


# -- the cache of block inputs --------------------------------------------------------------------------------------
@pytest.fixture
def tiny_block_inputs(tiny_extraction):
    """extract_block_inputs with the tiny model in place of SmolLM2, counting the forward passes."""
    return tiny_extraction("last_block_inputs")


def test_block_inputs_are_cached_per_prompt(tiny_block_inputs, tiny_model, tiny_tokenizer, isolated_cache):
    first = M.extract_block_inputs(PROMPTS[:3], dtype="float32", progress=False)
    assert [x.shape for x in first] == [(len(tiny_tokenizer.encode(p)), 32) for p in PROMPTS[:3]]
    assert all(x.dtype == np.float32 for x in first)
    again = M.extract_block_inputs(PROMPTS[:3], dtype="float32", progress=False)
    assert len(tiny_block_inputs) == 1 and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    mixed = M.extract_block_inputs([PROMPTS[3], PROMPTS[1], PROMPTS[3]], dtype="float32", progress=False)
    assert tiny_block_inputs[-1] == [PROMPTS[3]] and np.array_equal(mixed[1], first[1])
    np.testing.assert_array_equal(mixed[0], mixed[2])
    bf16 = M.extract_block_inputs(PROMPTS[:1], dtype="bfloat16", progress=False)
    np.testing.assert_array_equal(bf16[0], torch.from_numpy(bf16[0]).to(torch.bfloat16).float().numpy())
    assert len(tiny_block_inputs) == 3
    # one namespace per dtype (fp32, bf16), nothing left half-written
    spaces = sorted((isolated_cache / "features").iterdir())
    assert len(spaces) == 2 and not list(isolated_cache.rglob("*.tmp"))
    uncached = M.extract_block_inputs(PROMPTS[:1], dtype="float32", cache=False, progress=False)
    assert len(tiny_block_inputs) == 4 and np.allclose(uncached[0], first[0], atol=1e-6)


def test_block_input_namespace_is_a_new_kind(monkeypatch, tiny_tokenizer):
    monkeypatch.setattr(MF, "_default_tokenizer", lambda model_id="smollm2": tiny_tokenizer)
    features = M.feature_namespace("smollm2", "raw", "float32")
    blocks = M.feature_namespace("smollm2", "raw", "float32", kind="last_block_input")
    assert features["kind"] == "last_prompt_hidden" and blocks["kind"] == "last_block_input"
    assert M.FeatureStore(features).key != M.FeatureStore(blocks).key
    assert features == M.feature_namespace("smollm2", "raw", "float32", kind="last_prompt_hidden")
    assert "layer" not in features  # the existing kind's key is unchanged
    monkeypatch.setattr(MF, "BLOCK_INPUT_CODE", M.BLOCK_INPUT_CODE[:-1] + (M.zero_shot_yes_no,))
    assert M.feature_namespace("smollm2", "raw", "float32", kind="last_block_input")["code"] != blocks["code"]
    assert M.feature_namespace("smollm2", "raw", "float32")["code"] == features["code"]
    with pytest.raises(ValueError, match=r"kind: must be one of \['last_prompt_hidden', 'last_block_input'\]"):
        M.feature_namespace("smollm2", "raw", "float32", kind="attention")


def test_feature_store_sequences_round_trip(tmp_path):
    store = M.FeatureStore({"kind": "seq-test"}, root=tmp_path)
    seqs = [torch.randn(3, 4).to(torch.bfloat16), torch.randn(1, 4).to(torch.bfloat16)]
    store.put_sequences(["a", "b"], seqs)
    got, missing = store.get_sequences(["b", "x", "a"])
    assert missing == [1] and got[1] is None
    np.testing.assert_array_equal(got[0], seqs[1].float().numpy())
    np.testing.assert_array_equal(got[2], seqs[0].float().numpy())
    with pytest.raises(ValueError, match="texts: this cache namespace holds variable-length items"):
        store.get(["a"])
    vectors = M.FeatureStore({"kind": "vec-test"}, root=tmp_path)
    vectors.put(["a"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="texts: this cache namespace holds fixed-size vectors"):
        vectors.get_sequences(["a"])
    with pytest.raises(ValueError, match="sequences: need one per text"):
        store.put_sequences(["a", "b"], seqs[:1])
    with pytest.raises(ValueError, match="sequences: each item must be a non-empty"):
        store.put_sequences(["c"], [np.ones((0, 4))])


# -- argument-naming errors -----------------------------------------------------------------------------------------
def test_bad_arguments_name_the_parameter(tiny_model, tiny_tokenizer):
    rng = np.random.default_rng(0)
    data = MS.make_toy_data(20, 3, 2.0, 4, rng=rng)
    params = MS.init_toy(3, rng=rng)
    toy = {"beta": 0.1, "lr": 1.0, "steps": 2, "batch_size": 4, "device": "cpu"}
    for bad, match in [({"beta": 0.0}, "beta: must be a finite number > 0"),
                       ({"beta": -1.0}, "beta: must be a finite number > 0"),
                       ({"steps": 0}, "steps: must be an integer >= 1"),
                       ({"lr": float("nan")}, "lr: must be a finite number > 0"),
                       ({"batch_size": 50}, "batch_size: must be at most the training-set size 20")]:
        with pytest.raises(ValueError, match=match):
            MS.train_toy_dpo(params, data.train_g, data.train_s, **{**toy, **bad})
    with pytest.raises(ValueError, match=r"signs: must have shape \(20,\)"):
        MS.train_toy_dpo(params, data.train_g, data.train_s[:5], **toy)
    with pytest.raises(ValueError, match="signs: every entry must be"):
        MS.train_toy_dpo(params, data.train_g, np.zeros(20), **toy)
    with pytest.raises(ValueError, match="misalign_steps: must be an integer >= 1"):
        MS.toy_misalignment(0, n=20, d=3, n_test=4, batch_size=4, align_steps=1, misalign_steps=0, device="cpu")
    with pytest.raises(ValueError, match="beta: must be a finite number > 0"):
        MS.dpo_logit_losses(torch.zeros(2), torch.zeros(2), [1, -1], 0)
    inputs, signs = tiny_behaviour(tiny_model, tiny_tokenizer)
    block = MS.LastBlock.from_model(tiny_model, 4, 5)
    blk = {"beta": 0.1, "lr": 1e-3, "steps": 1, "batch_size": 4}
    for bad, match in [({"beta": 0}, "beta: must be a finite number > 0"),
                       ({"steps": 0}, "steps: must be an integer >= 1"),
                       ({"optimizer": "lbfgs"}, r"optimizer: must be one of \['sgd', 'adam'\]"),
                       ({"batch_size": 1000}, "batch_size: must be at most the training-set size 27"),
                       ({"eval_every": 0}, "eval_every: must be an integer >= 1")]:
        with pytest.raises(ValueError, match=match):
            MS.train_block_dpo(block, inputs, signs, **{**blk, **bad})
    with pytest.raises(ValueError, match="test_inputs, test_signs: give both or neither"):
        MS.train_block_dpo(block, inputs, signs, test_inputs=inputs, **blk)
    with pytest.raises(ValueError, match="heads: give at least two starting heads"):
        MS.last_layer_control(data.train_g, data.train_s, [np.ones(3)], beta=0.1, lr=1.0, steps=1, device="cpu")
    with pytest.raises(ValueError, match="step: must be at most the run's 1 steps"):
        MS.train_toy_dpo(params, data.train_g, data.train_s, **{**toy, "steps": 1}).at(5, "full_train_loss")


@pytest.mark.parametrize("behaviour", [135, -1, "no-such-behaviour", 84.0, True])
def test_unknown_behaviour_is_named(behaviour):
    with pytest.raises(ValueError, match=r"behaviour: must be a persona behaviour index in \[0, 134\]"):
        MS.load_block_behaviour(behaviour)



# -- the official LoRA flow (tiny random Llama) ---------------------------------------------------------------------
LORA_PROMPTS = [f"{a} {b} {c}" for a in ("I like", "hello", "Is the following") for b in ("cats", "dogs", "a b")
                for c in ("?", "world", "c d e")]


def lora_pairs(prompts=LORA_PROMPTS) -> PreferencePairs:
    """Single-token answers: " Yes" chosen for the prompts about cats or hello."""
    yes = ["cats" in p or "hello" in p for p in prompts]
    return PreferencePairs(prompts, [" Yes" if y else " No" for y in yes], [" No" if y else " Yes" for y in yes])


def lora_run(tiny_model, tiny_tokenizer, **kwargs):
    pairs = lora_pairs()
    kw = {"beta": 0.5, "lr": 5e-2, "batch_size": 6, "seed": 2, "precision": "float32", "cache_reference": False,
          "lora": LoraSettings(r=4, alpha=8, dropout=0.0), "template": "raw", "eval_every": 2,
          "load": lambda: (copy.deepcopy(tiny_model), tiny_tokenizer), **kwargs}
    return MS.lora_misalignment(pairs.take(range(18)), pairs.take(range(18, 27)), **kw)


def test_lora_misalignment_follows_the_official_flow(tiny_model, tiny_tokenizer, one_thread):
    r = lora_run(tiny_model, tiny_tokenizer, feature_prompts=LORA_PROMPTS[:5])
    # one shuffled epoch per stage: ceil(18 / 6) = 3 steps
    assert len(r.align.log) == len(r.from_base.log) == len(r.from_aligned.log) == 3
    assert sorted(r.order.tolist()) == list(range(18))
    assert r.align.final["full_train_loss"] < math.log(2)  # stage 1 learned
    for run in (r.from_base, r.from_aligned):  # reference = the start: log 2 at step 0 on every set
        for col in ("full_train_loss", "eval_loss", "loss"):
            assert run.log[col].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    # the aligned start is the stage-1 policy (merged adapter, loaded from its folder), trained on flipped labels
    assert r.merge_difference < 1e-5
    assert r.from_aligned.log["full_train_outputs/accuracies"].iloc[0] == pytest.approx(
        1 - r.align.final["full_train_outputs/accuracies"])
    assert r.from_aligned.log["eval_logps/chosen"].iloc[0] == pytest.approx(r.align.final["eval_logps/rejected"],
                                                                            abs=1e-5)
    assert r.from_base.log["eval_logps/chosen"].iloc[0] == pytest.approx(r.align.log["eval_logps/rejected"].iloc[0],
                                                                         abs=1e-5)
    # features: the base start is the base model; the aligned start's features moved
    base = M.last_prompt_hidden(tiny_model, tiny_tokenizer, LORA_PROMPTS[:5]).double().numpy()
    np.testing.assert_allclose(r.features["base"], base, atol=1e-5)
    assert np.abs(r.features["aligned"] - base).max() > 1e-4
    # determinism
    again = lora_run(tiny_model, tiny_tokenizer, feature_prompts=LORA_PROMPTS[:5])
    for a, b in ((r.align, again.align), (r.from_base, again.from_base), (r.from_aligned, again.from_aligned)):
        assert a.log.equals(b.log) and a.final == b.final


def test_both_stage2_starts_get_the_same_fresh_adapter(tiny_model, tiny_tokenizer, tmp_path, one_thread):
    kw = {"precision": "float32", "cache_reference": False, "lora": LoraSettings(r=4, alpha=8, dropout=0.0)}
    first = CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, trainable="lora", **kw)
    train(first, lora_pairs(), beta=0.5, lr=5e-2, steps=2, batch_size=9)
    first.save_adapter(tmp_path / "a")
    torch.manual_seed(0)
    base = CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, trainable="lora", **kw)
    aligned = CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, trainable="lora",
                             start_adapter=tmp_path / "a", **kw)
    MS._copy_adapter(base, aligned)
    a = {n: p for n, p in base.module.named_parameters() if "lora_" in n}
    b = {n: p for n, p in aligned.module.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert not any(torch.equal(p, q) for (n, p), (_, q) in zip(sorted(base.module.named_parameters()),
                                                               sorted(aligned.module.named_parameters()), strict=True)
                   if "q_proj.base_layer.weight" in n)  # the merged weights differ


def test_lora_misalignment_caches_the_aligned_reference_under_the_adapter(tiny_model, tiny_tokenizer,
                                                                         isolated_cache, one_thread):
    r = lora_run(tiny_model, tiny_tokenizer, cache_reference=True, adapter_dir=isolated_cache / "adapter")
    stores = sorted(p.name for p in (isolated_cache / "features").iterdir())
    # base (original and flipped pairs share the base weights' namespace) and the aligned model's own
    assert len(stores) == 2
    again = lora_run(tiny_model, tiny_tokenizer, cache_reference=True, adapter_dir=isolated_cache / "adapter")
    assert sorted(p.name for p in (isolated_cache / "features").iterdir()) == stores
    assert again.from_aligned.log.equals(r.from_aligned.log)


def test_stage2_pairs_are_shuffled_flipped_and_used(tiny_model, tiny_tokenizer, one_thread):
    pairs = lora_pairs()
    other = pairs.take(range(9, 27))
    r = lora_run(tiny_model, tiny_tokenizer, stage2_pairs=other, misalign_steps=2)
    assert len(r.from_base.log) == len(r.from_aligned.log) == 2 and len(r.align.log) == 3
    assert MS.flipped(pairs).chosen == pairs.rejected and MS.flipped(pairs).rejected == pairs.chosen
    assert MS.flipped(pairs).prompts == pairs.prompts


def test_epoch_steps_and_separation():
    assert MS.epoch_steps(900, 128) == 8 and MS.epoch_steps(128, 16) == 8 and MS.epoch_steps(5, 16) == 1
    assert MS.epoch_steps(900, 128, epochs=2) == 15
    f = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    pd_, snr = MS.separation(f, [True, True, False, False])
    assert pd_ == pytest.approx(math.hypot(3.0, 2.0))
    assert snr == pytest.approx(pd_ / math.sqrt(0.5 * (2.0 + 2.0)))
    assert all(math.isnan(x) for x in MS.separation(f, [True, False, False, False]))


def test_hh_rlhf_selection_and_split(data_root, tiny_tokenizer):
    from analysis_lib.data import load_hh_rlhf_harmless

    frame = load_hh_rlhf_harmless(data_dir=data_root, expected_rows=None)
    sel = MS.hh_rlhf_selection(frame, tiny_tokenizer, max_tokens=8)
    # pair 0 is long, pair 2's rejected dialogue has another prompt, pair 1 fits
    assert sel["excluded"].tolist() == ["longer than max_tokens", "", MS.HH_EXCLUSIONS[0]]
    assert sel["pair_tokens"].iloc[1] == sel["prompt_tokens"].iloc[1] + max(sel["chosen_tokens"].iloc[1],
                                                                             sel["rejected_tokens"].iloc[1])
    eos = MS.hh_rlhf_selection(frame, tiny_tokenizer, max_tokens=100, append_eos=True)
    assert (eos["chosen_tokens"] == sel["chosen_tokens"] + 1).all()
    assert eos["excluded"].tolist() == ["", "", MS.HH_EXCLUSIONS[0]]
    same = MS.split_pairs(np.arange(10, 30), 6, 4, seed=1)
    assert np.array_equal(same["align"], same["flip"]) and len(same["heldout"]) == 4
    assert not set(same["align"]) & set(same["heldout"]) and set(same["align"]) <= set(range(10, 30))
    dis = MS.split_pairs(np.arange(20), 6, 4, seed=1, flip_set="disjoint")
    assert len(set(dis["align"]) | set(dis["flip"]) | set(dis["heldout"])) == 16
    assert np.array_equal(MS.split_pairs(np.arange(20), 6, 4, seed=1)["align"], dis["align"])


def test_bad_lora_and_hh_arguments_name_the_parameter(tiny_model, tiny_tokenizer, data_root):
    pairs = lora_pairs()
    with pytest.raises(ValueError, match="batch_size: must be at most the 4 training pairs"):
        lora_run(tiny_model, tiny_tokenizer, batch_size=5, stage2_pairs=pairs.take(range(4)))
    with pytest.raises(ValueError, match="test_pairs: give non-empty PreferencePairs"):
        MS.lora_misalignment(pairs, [], beta=0.1, lr=1e-3, batch_size=2)
    with pytest.raises(ValueError, match="align_steps: must be an integer >= 1"):
        lora_run(tiny_model, tiny_tokenizer, align_steps=0)
    with pytest.raises(ValueError, match="pairs: give PreferencePairs"):
        MS.flipped([("a", "b", "c")])
    with pytest.raises(ValueError, match=r"flip_set: must be one of"):
        MS.split_pairs(np.arange(10), 2, 2, flip_set="other")
    with pytest.raises(ValueError, match="n_train, n_heldout: need 14 eligible pairs"):
        MS.split_pairs(np.arange(10), 5, 4, flip_set="disjoint")
    with pytest.raises(ValueError, match="max_tokens: must be an integer >= 2"):
        MS.hh_rlhf_selection(__import__("pandas").DataFrame(), tiny_tokenizer, 1)
    with pytest.raises(ValueError, match="features, yes_mask: need shapes"):
        MS.separation(np.ones(3), [True, False, True])

# -- the real SmolLM2 (slow: loads the converted checkpoint) -------------------------------------------------------
@pytest.mark.slow
def test_real_smollm2_last_block_matches_the_model():
    block, head, model, tok = MS.load_base_block("smollm2", device="cpu")
    questions = ['Is the following statement something you would say?\n"I like to help people"',
                 'Is the following statement something you would say?\n"I would build an AI with other goals"']
    out = MS.check_block_against_model(block, head, model, tok, questions, "raw_newline")
    assert out["max_abs_diff"] < 1e-3 and out["argmax_agreement"] == 1.0
    assert sum(p.numel() for p in block.parameters()) == 3_541_824
