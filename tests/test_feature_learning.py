"""DPO beyond the last layer (analysis_lib.feature_learning) and the policy's head-only mode, on the tiny random
Llama of conftest (no download): the held-out items are the official test split, g(x) of a policy is the library's
feature of its live weights (cached only for starting weights), a head-only run leaves g(x) unchanged bit for bit,
LoRA and full fine-tuning move it, and the metrics from the features equal the trainer's evaluation."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from analysis_lib import feature_learning as FL
from analysis_lib.data import load_persona
from analysis_lib.models import features as MF
from analysis_lib.training import CausalLMPolicy, EvalSet, LoraSettings, PreferencePairs, train

pytestmark = pytest.mark.usefixtures("one_thread")

FILLER = ["a", "b", "c", "d", "e", "hello", "world", "I", "like", "you"]


@pytest.fixture
def tiny_persona_root(tmp_path):
    """A data folder whose behaviour 1 ('agreeableness', 1000 rows as the real file) has statements in the tiny
    vocabulary: the matching answer is " Yes" for statements about cats and " No" for statements about dogs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "anthropic-evals-persona"
    folder.mkdir(parents=True)
    lines = []
    for i in range(1000):
        yes = i % 2 == 0
        words = list(rng.choice(FILLER, 3)) + ["cats" if yes else "dogs"] + list(rng.choice(FILLER, 2))
        statement = " ".join(words)
        lines.append(json.dumps({
            "question": f'Is the following statement something you would say?\n"{statement}"',
            "statement": statement, "label_confidence": 0.9, "answer_matching_behavior": " Yes" if yes else " No",
            "answer_not_matching_behavior": " No" if yes else " Yes"}))
    (folder / "agreeableness.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data"


def tiny_policy(tiny_model, tiny_tokenizer, trainable="lora", **kwargs) -> CausalLMPolicy:
    kwargs = {"precision": "float32", "cache_reference": False, "device": "cpu", "template": "raw_newline",
              "lora": LoraSettings(r=4, alpha=16, dropout=0.0), **kwargs}
    return CausalLMPolicy(model=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, trainable=trainable, **kwargs)


PROMPTS = ["I like cats", "I like dogs", "hello world a", "Is the following statement b c"]


# -- data ----------------------------------------------------------------------------------------------------------
def test_behaviour_rows_are_balanced_subsets_of_the_official_splits(tiny_persona_root):
    rows = FL.behaviour_rows(1, 40, 20, seed=3, data_dir=tiny_persona_root)
    official = load_persona(1, data_dir=tiny_persona_root).set_index("row")["split"]
    assert rows["split"].tolist() == ["train"] * 40 + ["test"] * 20
    assert (official.loc[rows["row"]].to_numpy() == rows["split"].to_numpy()).all()
    for split in ("train", "test"):
        part = rows[rows["split"] == split]
        assert (part["answer_matching_behavior"] == " Yes").sum() == len(part) // 2
    assert rows.equals(FL.behaviour_rows(1, 40, 20, seed=3, data_dir=tiny_persona_root))
    assert len(FL.behaviour_rows(1, 0, 0, data_dir=tiny_persona_root)) == 1000
    with pytest.raises(ValueError, match="n_test: behaviour 1 has 100 test items"):
        FL.behaviour_rows(1, 10, 101, data_dir=tiny_persona_root)
    with pytest.raises(ValueError, match="n_train: must be 0"):
        FL.behaviour_rows(1, 3, 10, data_dir=tiny_persona_root)


# -- features of a policy ------------------------------------------------------------------------------------------
def test_policy_features_are_the_library_feature_and_a_fresh_adapter_leaves_them(tiny_model, tiny_tokenizer,
                                                                                    isolated_cache):
    direct = MF.last_prompt_hidden(tiny_model, tiny_tokenizer, PROMPTS, "raw_newline").float().numpy()
    for trainable in ("full", "lora", "head", "top_blocks"):
        pol = tiny_policy(tiny_model, tiny_tokenizer, trainable, top_blocks=1)
        np.testing.assert_array_equal(FL.policy_features(pol, PROMPTS, cache=False), direct)


def test_policy_features_are_cached_for_starting_weights_only(tiny_model, tiny_tokenizer, isolated_cache,
                                                              monkeypatch):
    calls = []
    real = FL.last_prompt_hidden
    monkeypatch.setattr(FL, "last_prompt_hidden", lambda m, t, p, *a: calls.append(list(p)) or real(m, t, p, *a))
    pol = tiny_policy(tiny_model, tiny_tokenizer, "full")
    first = FL.policy_features(pol, PROMPTS)
    again = FL.policy_features(pol, PROMPTS[::-1] + ["hello"])
    np.testing.assert_array_equal(again[:4], first[::-1])
    assert calls == [PROMPTS, ["hello"]]
    # a loaded model is keyed by its start; once training changed its weights, nothing is cached
    pol.model_id, pol._start = "smollm2", "fingerprint-of-the-start"
    assert FL.policy_feature_namespace(pol)["start"] == "fingerprint-of-the-start"
    pol._start = "weights"
    assert FL.policy_feature_namespace(pol) is None
    FL.policy_features(pol, PROMPTS)
    FL.policy_features(pol, PROMPTS)
    assert calls[2:] == [PROMPTS, PROMPTS]


def test_head_only_training_leaves_every_feature_unchanged(tiny_model, tiny_tokenizer):
    pol = tiny_policy(tiny_model, tiny_tokenizer, "head")
    assert {n for n, p in pol.module.named_parameters() if p.requires_grad} == {"lm_head.weight"}
    embeddings = pol.module.get_input_embeddings().weight.detach().clone()
    head = pol.module.get_output_embeddings().weight.detach().clone()
    before = FL.policy_features(pol, PROMPTS, cache=False)
    data = PreferencePairs(PROMPTS, [" Yes", " No", " Yes", " No"], [" No", " Yes", " No", " Yes"])
    run = train(pol, data, beta=0.5, lr=5e-2, steps=4, batch_size=4, evaluations=[EvalSet("t_", data)])
    assert run.final["t_loss"] < math.log(2) - 0.01
    assert not torch.equal(pol.module.get_output_embeddings().weight, head)
    assert torch.equal(pol.module.get_input_embeddings().weight, embeddings)
    np.testing.assert_array_equal(FL.policy_features(pol, PROMPTS, cache=False), before)


def test_tied_head_of_a_policy_is_untied_only_in_head_mode(tiny_model, tiny_tokenizer):
    full = tiny_policy(tiny_model, tiny_tokenizer, "full").module
    head = tiny_policy(tiny_model, tiny_tokenizer, "head").module
    assert full.get_output_embeddings().weight is full.get_input_embeddings().weight
    assert head.get_output_embeddings().weight is not head.get_input_embeddings().weight
    assert torch.equal(head.get_output_embeddings().weight, head.get_input_embeddings().weight)


# -- one behaviour, trained ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainable", ["lora", "full", "head"])
def test_train_behaviour_records_features_and_metrics_that_match_the_trainer(tiny_model, tiny_tokenizer,
                                                                              tiny_persona_root, trainable,
                                                                              isolated_cache):
    # an empty cache: the features before training are computed in the same request as those after (on an Intel
    # CPU the tiny model's float32 rows depend on the request's size, so rows cached by another test could differ)
    pol = tiny_policy(tiny_model, tiny_tokenizer, trainable)
    r = FL.train_behaviour(1, trainable=trainable, n_train=32, n_test=16, lr=3e-3 if trainable == "full" else 1e-2,
                           steps=6, batch_size=16, beta=0.5, test_every=2, policy=pol, data_dir=tiny_persona_root)
    assert r.behaviour == 1 and r.name == "agreeableness" and r.before.shape == r.after.shape == (48, 32)
    assert r.settings["n_train"] == 32 and r.settings["n_test"] == 16 and r.run.model is None
    assert r.run.log["eval_loss"].notna().tolist() == [True, False] * 3
    # the loss before training is log 2 by construction; after, the features give the trainer's own evaluation
    assert r.metrics("test", "before")["loss"] == pytest.approx(math.log(2), abs=1e-12)
    after = r.metrics("test")
    assert after["loss"] == pytest.approx(r.run.final["eval_loss"], abs=2e-5)
    assert after["outputs/accuracies"] == pytest.approx(r.run.final["eval_outputs/accuracies"], abs=1e-12)
    change = FL.feature_change([r])
    assert change["split"].tolist() == ["train", "test", "all"] and change["items"].tolist() == [32, 16, 48]
    summary = FL.learning_summary([r]).iloc[0]
    assert summary["train_loss_decrease"] == pytest.approx(math.log(2) - summary["train_loss_after"])
    if trainable == "head":
        assert (change["max_feature_change"] == 0).all()
        assert (change[["pd_ratio", "concentration_ratio", "trace_ratio"]] == 1.0).all().all()
    else:
        assert (change["max_feature_change"] > 1e-4).all()
    assert summary["train_loss_decrease"] > 0.005


def test_feature_change_computes_the_official_properties():
    rng = np.random.default_rng(0)
    yes = np.arange(40) % 2 == 0
    before = rng.normal(size=(40, 5)) + yes[:, None] * np.array([1.0, 0, 0, 0, 0])
    after = 2.0 * before
    rows = __import__("pandas").DataFrame({"split": ["train"] * 30 + ["test"] * 10,
                                           "chosen": np.where(yes, " Yes", " No")})
    r = FL.BehaviourRun(7, "x", "lora", rows, yes, before, after, np.zeros((40, 2)), np.zeros((40, 2)), None, 0.0,
                        {"beta": 0.1})
    out = FL.feature_change([r]).set_index("split")
    assert out.loc["test", "items"] == 10
    for split in ("train", "test", "all"):
        assert out.loc[split, "pd_ratio"] == pytest.approx(2.0)
        assert out.loc[split, "trace_ratio"] == pytest.approx(4.0)
        assert out.loc[split, "concentration_ratio"] == pytest.approx(4.0)
    m = r.mask("train")
    expected = np.linalg.norm(before[m & yes].mean(0) - before[m & ~yes].mean(0))
    assert out.loc["train", "pd_before"] == pytest.approx(expected)
    # after = 2 x before scales PD by exactly 2 on every resample: the interval has zero width
    assert out.loc["train", "pd_ratio_low"] == pytest.approx(2.0) and out.loc["train", "pd_ratio_high"] == \
        pytest.approx(2.0)


def test_pd_ratio_interval_covers_the_ratio_and_narrows_with_more_items():
    rng = np.random.default_rng(4)
    widths = []
    for n in (16, 400):
        yes = np.arange(n) % 2 == 0
        before = rng.normal(size=(n, 8)) + yes[:, None] * np.eye(8)[0]
        after = before + 0.5 * yes[:, None] * np.eye(8)[0] + 0.3 * rng.normal(size=(n, 8))
        low, high = FL.pd_ratio_interval(before, after, yes, seed=1)
        pd0 = np.linalg.norm(before[yes].mean(0) - before[~yes].mean(0))
        pd1 = np.linalg.norm(after[yes].mean(0) - after[~yes].mean(0))
        assert low <= pd1 / pd0 <= high
        assert FL.pd_ratio_interval(before, after, yes, seed=1) == (low, high)
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # 25 x the items: about a fifth of the width
    with pytest.raises(ValueError, match=r"^yes_mask: each class needs at least 2 items"):
        FL.pd_ratio_interval(before[:3], after[:3], np.array([True, False, False]))
    with pytest.raises(ValueError, match=r"^before, after, yes_mask: need"):
        FL.pd_ratio_interval(before, after[:, :3], yes)


# -- projections -------------------------------------------------------------------------------------------------
def test_pca_projection_is_the_first_two_principal_axes():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(50, 6)) * np.array([5.0, 2.0, 0.5, 0.1, 0.1, 0.1])
    xy = FL.projection_2d(g, "pca")
    assert xy.shape == (50, 2) and np.allclose(xy.mean(0), 0)
    assert np.var(xy[:, 0]) > np.var(xy[:, 1]) > 1.0 > 0.5 > np.var(g[:, 2:] - g[:, 2:].mean(0), axis=0).max()
    np.testing.assert_allclose(xy, FL.projection_2d(g * 1.0, "pca"))
    with pytest.raises(ValueError, match="method"):
        FL.projection_2d(g, "tsne")
    with pytest.raises(ValueError, match="features"):
        FL.projection_2d(g[:2], "pca")


@pytest.mark.slow
def test_umap_projection_is_deterministic_with_a_fixed_random_state():
    rng = np.random.default_rng(2)
    g = np.concatenate([rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 6.0])
    a, b = FL.projection_2d(g, "umap", random_state=1234), FL.projection_2d(g, "umap", random_state=1234)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (60, 2)
    # the two well-separated clusters stay apart
    gap = np.linalg.norm(a[:30].mean(0) - a[30:].mean(0))
    assert gap > 2 * max(a[:30].std(0).max(), a[30:].std(0).max())


@pytest.mark.parametrize("sampling", ["epochs", "random"])
def test_epochs_sampling_feeds_the_trainer_one_shuffled_epoch(tiny_model, tiny_tokenizer, tiny_persona_root,
                                                              monkeypatch, sampling):
    seen = {}

    def recording_train(policy, data, **kwargs):
        seen["prompts"], seen["sampling"] = list(data.prompts), kwargs["sampling"]
        return train(policy, data, **kwargs)

    monkeypatch.setattr(FL, "train", recording_train)
    pol = tiny_policy(tiny_model, tiny_tokenizer, "head")
    r = FL.train_behaviour(1, trainable="head", n_train=8, n_test=4, lr=1e-3, steps=2, batch_size=4, seed=3,
                           sampling=sampling, policy=pol, data_dir=tiny_persona_root)
    questions = r.rows.loc[r.rows["split"] == "train", "question"].tolist()
    expected = [questions[i] for i in np.random.default_rng(3).permutation(8)] if sampling == "epochs" else questions
    assert seen["prompts"] == expected and sorted(seen["prompts"]) == sorted(questions)
    assert seen["sampling"] == {"epochs": "sequential", "random": "random"}[sampling]
    assert r.settings["sampling"] == sampling
    with pytest.raises(ValueError, match=r"^sampling: must be one of epochs, random, got 'epoch'$"):
        FL.train_behaviour(1, trainable="head", n_train=8, n_test=4, lr=1e-3, steps=2, batch_size=4,
                           sampling="epoch", policy=pol, data_dir=tiny_persona_root)


def test_cached_runs_are_reused_and_keyed_by_the_settings(tiny_model, tiny_tokenizer, tiny_persona_root,
                                                         isolated_cache, monkeypatch):
    loads = []

    def loaded_policy(model_id, trainable, template):
        loads.append(model_id)
        return tiny_policy(tiny_model, tiny_tokenizer, trainable, template=template)

    monkeypatch.setattr(FL, "CausalLMPolicy", loaded_policy)
    args = dict(trainable="head", n_train=8, n_test=4, steps=2, batch_size=4, data_dir=tiny_persona_root,
                cache=True)
    first = FL.train_behaviour(1, lr=1e-3, **args)
    again = FL.train_behaviour(1, lr=1e-3, **args)
    assert len(loads) == 1 and np.array_equal(first.after, again.after)
    assert first.run.log.equals(again.run.log) and first.settings == again.settings
    other = FL.train_behaviour(1, lr=2e-3, **args)
    assert len(loads) == 2 and other.settings["lr"] == 2e-3
    FL.train_behaviour(1, lr=1e-3, **{**args, "cache": False})
    assert len(loads) == 3


def test_a_loaded_lora_policy_starts_from_the_seed_not_from_the_callers_random_state(tiny_model, tiny_tokenizer,
                                                                                    tiny_persona_root, monkeypatch):
    monkeypatch.setattr(FL, "CausalLMPolicy", lambda model_id, trainable, template: tiny_policy(
        tiny_model, tiny_tokenizer, trainable, template=template, lora=LoraSettings(r=4, alpha=16, dropout=0.1)))
    args = dict(trainable="lora", n_train=8, n_test=4, lr=1e-2, steps=2, batch_size=4, data_dir=tiny_persona_root)
    torch.manual_seed(1)
    first = FL.train_behaviour(1, seed=5, **args)
    state = torch.random.get_rng_state()
    torch.rand(1000)
    second = FL.train_behaviour(1, seed=5, **args)
    assert np.array_equal(first.after, second.after) and not np.array_equal(first.after, first.before)
    assert not np.array_equal(FL.train_behaviour(1, seed=6, **args).after, first.after)
    torch.manual_seed(1)
    FL.train_behaviour(1, seed=5, **args)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
