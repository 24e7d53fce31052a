"""Iterated alignment (analysis_lib.iterated) and the frozen prefix of the LM policy (analysis_lib.models.prefix), on
the tiny random Llama (no download): the top layers on cached lower-layer outputs equal the whole model (log-probs,
training, features); LoRA on the top layers only; the MRS round with a table in place of the LM reproduces the
tabular map (Chen et al.'s beta mapped to TRL's tau) and the empirical IPO optimum; the candidate LM scores each
candidate once; a table has no coupling between prompts, an LM does; on-policy item draws; persona rounds; errors."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from ddp_worker import PROMPTS

from analysis_lib import dynamics as dyn
from analysis_lib import iterated as it
from analysis_lib import preferences as pr
from analysis_lib.models.logprobs import response_logprobs
from analysis_lib.training import CausalLMPolicy, LoraSettings, PreferencePairs, train

pytestmark = pytest.mark.usefixtures("one_thread")

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, layers=1)


def persona_like() -> PreferencePairs:
    return PreferencePairs(PROMPTS, [" Yes" if "cats" in p else " No" for p in PROMPTS],
                           [" No" if "cats" in p else " Yes" for p in PROMPTS])


def policy(tiny_model, tiny_tokenizer, seed: int = 1, **kwargs) -> CausalLMPolicy:
    kwargs = {"precision": "float32", "cache_reference": False, "device": "cpu", "trainable": "lora", "lora": LORA,
              **kwargs}
    torch.manual_seed(seed)  # the same fresh adapter (LoRA's A is random) in every policy built with this seed
    return CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, **kwargs)


def candidates(tok) -> it.EncodedCandidates:
    enc, kept = it.encode_candidates(tok, ["I like cats", "hello world", "Is the following"],
                                     [["a b c", "a d e", "Yes No"], ["cats dogs", "dogs cats", "hello"],
                                      ["statement a", "something b", "you c"]], n_tokens=2)
    assert kept == [0, 1, 2]
    return enc


# -- the frozen prefix ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainable", ["lora", "top_blocks"])
def test_top_layers_on_the_frozen_prefix_equal_the_whole_model(tiny_model, tiny_tokenizer, trainable):
    whole = policy(tiny_model, tiny_tokenizer, trainable=trainable, top_blocks=1)
    top = policy(tiny_model, tiny_tokenizer, trainable=trainable, top_blocks=1, frozen_prefix=True)
    data = PreferencePairs(["I like cats ?", "hello world", "Is the following statement a b"],
                           [" Yes", " a b c", " No"], [" No", " d", " Yes Yes"])
    for d in (data, persona_like()):  # the general path and the single-token path
        enc = whole.prepare(d)
        with torch.no_grad():
            for a, b in zip(whole.logps(enc, None), top.logps(enc, None), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole.last_prompt_hidden(data), top.last_prompt_hidden(data), rtol=0, atol=1e-5)
    runs = [train(p, data, beta=0.5, lr=0.05, steps=3, batch_size=None) for p in (whole, top)]
    np.testing.assert_allclose(runs[0].log["loss"], runs[1].log["loss"], rtol=0, atol=1e-5)
    # after 3 Adam steps (which normalise rounding-level gradient differences) the weights agree less tightly
    torch.testing.assert_close(whole.last_prompt_hidden(data), top.last_prompt_hidden(data), rtol=0, atol=2e-3)
    assert top.describe()["frozen_prefix_layers"] == 1 and whole.describe()["frozen_prefix_layers"] is None
    # each distinct sequence ran through the lower layers once: 6 (prompt, response) rows, the persona prompts, and
    # the features of the 3 prompts alone, "I like cats ?" among the persona prompts
    assert top._prefix.computed == 6 + len(PROMPTS) + 2


def test_lora_layers_puts_adapters_in_the_top_layers_only(tiny_model, tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer)
    names = [n for n, p in pol.module.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n and "lora_" in n for n in names)
    everywhere = policy(tiny_model, tiny_tokenizer, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    assert any(".layers.0." in n for n, p in everywhere.module.named_parameters() if p.requires_grad)
    assert pol.first_trained_layer == 1 and everywhere.first_trained_layer == 0


def test_frozen_prefix_is_cached_on_disk_by_the_model_it_came_from(tiny_model, tiny_tokenizer, tmp_path,
                                                                   isolated_cache):
    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    data = persona_like()
    first = CausalLMPolicy(str(folder), trainable="lora", lora=LORA, frozen_prefix=True, precision="float32",
                           cache_reference=False)
    hidden = first.last_prompt_hidden(data)
    again = CausalLMPolicy(str(folder), trainable="lora", lora=LORA, frozen_prefix=True, precision="float32",
                           cache_reference=False)
    torch.testing.assert_close(again.last_prompt_hidden(data), hidden, rtol=0, atol=0)
    assert first._prefix.computed == len(PROMPTS) and again._prefix.computed == 0
    other = CausalLMPolicy(str(folder), trainable="top_blocks", top_blocks=2, frozen_prefix=True,
                           precision="float32", cache_reference=False)
    other.last_prompt_hidden(data)
    assert other._prefix.computed == len(PROMPTS)  # another first layer: another namespace


def test_frozen_prefix_of_a_sequence_does_not_depend_on_the_request(tiny_tokenizer, isolated_cache):
    """A sequence's cached prefix states are the same bits whether it was computed alone or among many sequences
    of its length: the disk cache never holds values that depend on which request (or chapter) came first. The
    model has SmolLM2's widths, whose float32 products give a row other last bits with another number of rows on
    the CPUs we measured (a 10-token sequence alone: 10 rows; among 24 others: 250)."""
    import contextlib

    from transformers import LlamaConfig, LlamaForCausalLM

    from analysis_lib.models.prefix import FrozenPrefix

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), num_hidden_layers=2, hidden_size=576,
                         intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    rows = [tuple(int(t) for t in torch.randint(3, len(tiny_tokenizer), (10,))) for _ in range(25)]
    alone = FrozenPrefix(model, 1, contextlib.nullcontext)([rows[7]])[0]
    together = FrozenPrefix(model, 1, contextlib.nullcontext)(rows)[7]
    assert alone.shape == (10, 576) and torch.equal(alone, together)


def test_frozen_prefix_needs_frozen_lower_layers(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"^frozen_prefix: needs trainable='top_blocks' or 'lora'"):
        policy(tiny_model, tiny_tokenizer, trainable="full", frozen_prefix=True)
    with pytest.raises(ValueError, match=r"^lora.layers: the model has 2 decoder layers, got 3"):
        policy(tiny_model, tiny_tokenizer, lora=LoraSettings(layers=3))


# -- candidates ------------------------------------------------------------------------------------------------
def test_continuations_cut_after_the_common_prefix(tiny_tokenizer):
    common, conts = it.continuations(tiny_tokenizer, ["I like cats a", "I like dogs b c", "I like"], 2)
    assert tiny_tokenizer.decode(list(common)) == "I like"
    assert [tiny_tokenizer.decode(list(c)) for c in conts] == ["cats a", "dogs b", ""]
    enc, kept = it.encode_candidates(tiny_tokenizer, ["hello", "world"], [["a b", "a c"], ["a b", "a b"]], 1)
    assert kept == [0] and enc.shape == (1, 2) and enc.candidates == (("b", "c"),)
    assert enc.prompt_ids[0][-1] == tiny_tokenizer.convert_tokens_to_ids("a")  # the common prefix joins the prompt


def test_cyclic_and_strictly_transitive_triples():
    P = np.full((4, 4), 0.5)
    for i, j, p in [(0, 1, 0.8), (1, 2, 0.8), (2, 0, 0.8), (0, 3, 0.9), (1, 3, 0.9), (2, 3, 0.9)]:
        P[i, j], P[j, i] = p, 1 - p
    assert it.cyclic_triples(P) == [(0, 1, 2)]
    assert it.strictly_transitive_triples(pr.bradley_terry_matrix([2.0, 1.0, 0.0, -1.0])) == \
        [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]


def test_sampled_pairs_follow_the_sampler_and_the_preferences():
    P = np.stack([pr.cyclic_matrix(0.3), pr.bradley_terry_matrix([1.0, 0.0, -1.0])])
    mu = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    pairs = it.sample_candidate_pairs(P, mu, 200_000, np.random.default_rng(0))
    counts = pairs.counts(2, 3)
    assert np.all(pairs.winner != pairs.loser)
    expected = pr.labelled_pair_probabilities(P, mu)
    expected[:, np.arange(3), np.arange(3)] = 0
    expected /= expected.sum((1, 2), keepdims=True)
    np.testing.assert_allclose(counts / counts.sum((1, 2), keepdims=True), expected, atol=5e-3)


def test_candidate_lm_scores_every_candidate_like_response_logprobs(tiny_model, tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer, frozen_prefix=True)
    enc = candidates(tiny_tokenizer)
    model = it.CandidateLM(pol, enc)
    s = model.sequence_logps()
    rows = [(list(enc.prompt_ids[m]), list(enc.candidate_ids[m][k])) for m in range(3) for k in range(3)]
    with torch.no_grad():
        direct = response_logprobs(pol.module, rows, pol.pad_id, "sum").double().numpy().reshape(3, 3)
    np.testing.assert_allclose(s, direct, atol=1e-5)
    np.testing.assert_allclose(np.exp(model.log_policy()).sum(1), 1.0)
    pairs = it.CandidatePairs(np.array([0, 0, 2, 0]), np.array([1, 1, 2, 0]), np.array([2, 0, 0, 2]))
    rows_scored = []
    pol.forward_module.register_forward_hook(
        lambda m, args, kwargs, out: rows_scored.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    with torch.no_grad():
        w, lo = model.logps(pairs, None)
    assert rows_scored == [5]  # the 5 distinct (prompt, candidate) cells of the 4 pairs, each scored once
    np.testing.assert_allclose(w.double().numpy(), s[[0, 0, 2, 0], [1, 1, 2, 0]], atol=1e-5)
    np.testing.assert_allclose(lo.double().numpy(), s[[0, 0, 2, 0], [2, 0, 0, 2]], atol=1e-5)


# -- the MRS round against the tabular map ---------------------------------------------------------------------
def test_a_table_trained_on_population_pairs_takes_one_mrs_ipo_step():
    """Uniform sampler (lam = 0, pi_0 uniform) and P in multiples of 1/4: the labelled pairs (w, l) in the exact
    population proportions 4 P_wl make the IPO loss the population loss, so a table trained to convergence with
    tau = 1/beta and the per-candidate mixed reference is exactly one MRS-IPO step."""
    P = np.array([[0.5, 0.75, 0.25], [0.25, 0.5, 1.0], [0.75, 0.0, 0.5]])
    log_pi = np.log(np.array([[0.6, 0.3, 0.1]]))
    log_ref = np.log(np.array([[0.2, 0.5, 0.3]]))
    alpha, beta = 0.4, 3.0
    w, lo = np.nonzero(4 * P * (1 - np.eye(3)))
    reps = (4 * P[w, lo]).astype(int)
    pairs = it.CandidatePairs(np.zeros(reps.sum(), int), np.repeat(w, reps), np.repeat(lo, reps))
    table = it.TabularCandidates(1, 3, log_pi)
    it.train_round(table, pairs, alpha * log_pi + (1 - alpha) * log_ref, beta, steps=1500, lr=0.05)
    expected = dyn.mrs_ipo_step(log_pi, P[None], alpha, beta, 0.0, pi_ref=np.exp(log_ref), pi_0=np.full(3, 1 / 3))
    np.testing.assert_allclose(table.log_policy(), expected, atol=1e-6)
    assert it.ipo_tau(beta) == pytest.approx(1 / 3)


def test_mrs_round_with_a_table_reaches_the_empirical_optimum():
    rng = np.random.default_rng(0)
    P = np.stack([pr.cyclic_matrix(0.3), pr.bradley_terry_matrix([1.0, 0.0, -1.0]),
                  pr.random_preference_matrix(3, rng)])
    pi_0 = rng.dirichlet(np.ones(3), size=3)
    table = it.TabularCandidates(3, 3, np.log(pi_0))
    r = it.mrs_round(table, P, 0.5, 4.0, 1.0, np.log(pi_0), pi_0, n_pairs=200, steps=600, lr=0.1, rng=rng)
    np.testing.assert_allclose(r.log_pi_next, r.empirical, atol=1e-6)
    np.testing.assert_allclose(r.exact, dyn.mrs_ipo_step(np.log(pi_0), P, 0.5, 4.0, 1.0, pi_ref=pi_0, pi_0=pi_0))
    assert r.run.log["loss"].iloc[0] == pytest.approx(4.0)  # (beta/2)^2 at the start: h = 0 against pi_t


def test_run_mrs_loop_records_the_lm_path_next_to_the_tabular_prediction(tiny_model, tiny_tokenizer):
    model = it.CandidateLM(policy(tiny_model, tiny_tokenizer, frozen_prefix=True), candidates(tiny_tokenizer))
    P = np.stack([pr.cyclic_matrix(0.4)] * 3)
    start = model.sequence_logps()
    with it.restored(model):
        run = it.run_mrs_loop(model, P, 0.5, 6.0, 1.0, 3, n_pairs=32, steps=2, lr=0.05, seed=3)
        assert not np.allclose(model.sequence_logps(), start)
    np.testing.assert_allclose(model.sequence_logps(), start)  # restored
    assert run.history.shape == run.tabular.shape == (4, 3, 3)
    np.testing.assert_allclose(run.history[0], run.tabular[0])
    np.testing.assert_allclose(run.history[1:], np.stack([r.log_pi_next for r in run.rounds]))
    expected = dyn.run_mrs_ipo(P, 0.5, 6.0, 1.0, 3, pi_ref=np.exp(run.history[0]), pi_0=np.exp(run.history[0]),
                               start=np.exp(run.history[0]), record=True).history
    np.testing.assert_allclose(run.tabular, expected)
    assert run.entropy.shape == (4, 3) and run.cycle_strength(3).shape == (3,)
    assert run.one_step_error.shape == run.training_error.shape == run.sampling_error.shape == (3, 3)
    np.testing.assert_allclose(run.distance[0], 0.0, atol=1e-12)


def test_a_table_has_no_coupling_between_prompts_an_lm_has(tiny_model, tiny_tokenizer):
    P = np.stack([pr.cyclic_matrix(0.4)] * 3)
    table = it.TabularCandidates(3, 3, np.log(np.full((3, 3), 1 / 3)))
    coupling = it.prompt_coupling(table, P, 4.0, [0, 1], n_pairs=32, steps=20, lr=0.1)
    assert list(coupling["others"]) == [0.0, 0.0] and (coupling["own"] > 0.01).all()
    np.testing.assert_allclose(table.log_policy(), np.log(np.full((3, 3), 1 / 3)))  # restored
    lm = it.CandidateLM(policy(tiny_model, tiny_tokenizer, frozen_prefix=True), candidates(tiny_tokenizer))
    coupling = it.prompt_coupling(lm, P, 4.0, [0], n_pairs=32, steps=3, lr=0.05)
    assert coupling["others"].iloc[0] > 0 and coupling["own"].iloc[0] > 0


# -- on-policy persona rounds ----------------------------------------------------------------------------------
def test_item_weights_and_draws():
    margins = np.array([-3.0, 0.0, 3.0, 20.0])
    p = 1 / (1 + np.exp(-margins))
    np.testing.assert_allclose(it.item_weights(margins, "on"), 2 * p * (1 - p))
    np.testing.assert_allclose(it.item_weights(margins, "off"), 0.5)
    idx = it.draw_items(margins, 40_000, "on", np.random.default_rng(0))
    freq = np.bincount(idx, minlength=4) / 40_000
    np.testing.assert_allclose(freq, 2 * p * (1 - p) / (2 * p * (1 - p)).sum(), atol=0.01)


def test_persona_rounds_record_each_behaviour_and_train(tiny_model, tiny_tokenizer):
    pol = policy(tiny_model, tiny_tokenizer, frozen_prefix=True)
    data = persona_like()
    behaviour = np.array(["hello" if p.startswith("hello") else "other" for p in PROMPTS])
    before = it.trainable_state(pol)
    res = it.run_persona_rounds(pol, data, behaviour, rounds=2, items_per_round=8, steps=2, batch_size=4, beta=0.5,
                                lr=0.05, sampling="on", seed=0)
    table = res.table
    assert list(table["round"]) == [0, 0, 1, 1, 2, 2] and set(table["behaviour"]) == {"hello", "other"}
    assert table.groupby("round")["drawn"].sum().iloc[:2].tolist() == pytest.approx([1.0, 1.0])
    assert table["drawn"].iloc[-2:].isna().all() and len(res.runs) == 2
    assert np.isfinite(table[["pd", "trace", "accuracy", "margin"]].to_numpy()).all()
    for r in res.runs:  # the reference is the model at the round's start
        assert r.at(0, "round_loss") == pytest.approx(np.log(2), abs=1e-6)  # float32 losses
    assert any(not torch.equal(a, b) for a, b in zip(before, it.trainable_state(pol), strict=True))
    state, margins = it.persona_state(pol, pol.prepare(data), behaviour,
                                      np.array([c.strip() == "Yes" for c in data.chosen]),
                                      [(c[0], r[0]) for c, r in zip(pol.prepare(data).chosen_ids,
                                                                   pol.prepare(data).rejected_ids, strict=True)])
    with torch.no_grad():
        chosen, rejected = pol.logps(pol.prepare(data), None)
    np.testing.assert_allclose(margins, (chosen - rejected).double().numpy(), atol=1e-4)
    assert isinstance(state, pd.DataFrame)


# -- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: it.TabularCandidates(2, 3, np.zeros((3, 3))), r"^logits: need shape \(2, 3\)"),
    (lambda: it.ipo_tau(0.0), r"^beta: must be a finite number > 0"),
    (lambda: it.item_weights([0.0], "sometimes"), r"^sampling: must be one of"),
    (lambda: it.sample_candidate_pairs(pr.cyclic_matrix(0.3), np.full(3, 1 / 3), 4, np.random.default_rng(0)),
     r"^P: need one K x K matrix per prompt"),
    (lambda: it.TabularCandidates(1, 3).prepare([1, 2]), r"^data: give CandidatePairs"),
    (lambda: it.encode_candidates(None, ["q"], [["a"], ["b"]], 2), r"^responses: need one row of responses"),
    (lambda: it.train_round(it.TabularCandidates(1, 3), it.CandidatePairs(np.zeros(1, int), np.zeros(1, int),
                                                                            np.ones(1, int)), np.zeros((2, 3)), 1.0,
                            steps=1, lr=0.1), r"^reference: need one log-prob per candidate"),
])
def test_bad_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_finegrained_candidates_follow_the_rule_and_the_sampled_path_is_the_tables(tiny_tokenizer, data_root):
    from analysis_lib.data import load_finegrained_qa

    fg = load_finegrained_qa(data_root, expected_questions=None)
    with pytest.raises(ValueError, match=r"^per_regime: only"):
        it.finegrained_candidates(fg, tiny_tokenizer, np.random.default_rng(0), per_regime=2, n_tokens=2,
                                  max_prompt_tokens=64)
    rng = np.random.default_rng(0)
    words = ["cats", "dogs", "hello", "world", "a", "b", "c", "d", "e"]
    texts = [" ".join(rng.choice(words, 3)) for _ in range(30 * 4)]
    responses = pd.DataFrame({"question_id": np.repeat(np.arange(30), 4), "text": texts,
                              "copeland": rng.permutation(np.tile([3, 1, -1, -3], 30)),
                              "n_words": rng.integers(1, 50, 120), "gold_f1": rng.random(120)})
    questions = pd.DataFrame({"question": ["I like"] * 15 + ["Is the following statement"] * 15})
    fake = type("FG", (), {"questions": questions, "responses": responses})()
    got = it.finegrained_candidates(fake, tiny_tokenizer, np.random.default_rng(1), per_regime=3, n_tokens=2,
                                    max_prompt_tokens=8)
    assert list(got.regime) == ["cyclic"] * 3 + ["transitive"] * 3 and len(set(got.question)) == 6
    assert all(pr.has_cycle(P) for P in got.P[:3]) and all(pr.is_strictly_sst(P) for P in got.P[3:])
    assert all(len(p) <= 8 for p in got.encoded.prompt_ids) and got.encoded.shape == (6, 3)
    for row, (q, resp) in enumerate(zip(got.question, got.responses, strict=True)):
        c = responses["copeland"].to_numpy().reshape(30, 4)[q, resp]
        if row >= 3:  # the human Copeland scores alone, Bradley-Terry at temperature 1
            np.testing.assert_allclose(got.P[row], pr.bradley_terry_matrix(c.astype(float)))
    assert got.take([4]).regime.tolist() == ["transitive"]
    P = np.stack([pr.cyclic_matrix(0.4), pr.bradley_terry_matrix([1.0, 0.0, -1.0])])
    pi_0 = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    path = it.sampled_tabular_path(P, 0.5, 4.0, 1.0, 3, pi_0=pi_0, n_pairs=64, seed=1)
    table = it.TabularCandidates(2, 3, np.log(pi_0))
    rng = np.random.default_rng(1)
    for t in range(3):
        r = it.mrs_round(table, P, 0.5, 4.0, 1.0, np.log(pi_0), pi_0, n_pairs=64, steps=800, lr=0.1, rng=rng)
        np.testing.assert_allclose(r.log_pi_next, path[t + 1], atol=1e-5)


def test_rotation_needs_every_candidate_to_lead_clearly():
    lead = lambda k, p=0.6: np.log(np.roll([p, (1 - p) / 2, (1 - p) / 2], k))  # noqa: E731
    turning = np.stack([lead(0), lead(1), lead(2), lead(0)])
    flat = np.stack([lead(0), lead(1, 0.36), lead(2, 0.36), lead(0)])  # two leads by less than the margin
    assert it.rotates(np.stack([turning, flat], 1)).tolist() == [True, False]
    assert not it.rotates(np.stack([lead(1), lead(0), lead(0), lead(2)]))  # round 0 does not count
