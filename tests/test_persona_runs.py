"""Glue for the last-layer runs on persona features (analysis_lib.persona_runs), tested on synthetic behaviours."""

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib import persona_runs
from analysis_lib.lastlayer import first_step_loss_drop, make_behaviour, train_last_layer_dpo
from analysis_lib.persona_runs import (
    SUBSET_SEED,
    SURVEY_PER_BEHAVIOUR,
    TRAINING_BEHAVIOURS,
    TRAINING_PER_BEHAVIOUR,
    BehaviourSet,
    answer_rows_head,
    balanced_subset,
    debiased_distinguishability,
    directions_at_angle,
    first_learned,
    first_step_drop,
    first_step_reaching,
    gd_stability_limit,
    head_path,
    load_behaviour_sets,
    mean_accuracy,
    require_stable_lr,
    run_behaviour,
    seed_averaged_accuracy,
    sets_from_rows,
    synthetic_pair,
    train_pair,
)
from analysis_lib.runner import parse_parameters

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: one thread avoids OpenMP overhead (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toy(n=200, d=8, pd_=3.0, seed=0, yes_fraction=0.5):
    rng = np.random.default_rng(seed)
    beh = make_behaviour(n, d, pd_, rng=rng, center=4.0, yes_fraction=yes_fraction)
    W0 = rng.standard_normal((12, d)) * 0.3
    return beh, W0


def _behaviour_set(beh, index=7):
    split = np.where(np.arange(len(beh.signs)) % 10 == 0, "test", "train").astype(object)
    return BehaviourSet(index, f"toy-{index}", beh.features.astype(np.float32), beh.signs, split, beh.yes_mask)


# --- data ----------------------------------------------------------------------------------------------------------

def test_balanced_subset_keeps_every_minority_item_and_is_deterministic():
    signs = np.array([1] * 7 + [-1] * 4 + [1] * 3)
    keep = balanced_subset(signs, seed=3)
    assert (signs[keep] > 0).sum() == (signs[keep] < 0).sum() == 4
    assert set(np.flatnonzero(signs < 0)) <= set(keep)
    np.testing.assert_array_equal(keep, balanced_subset(signs, seed=3))
    assert (np.diff(keep) > 0).all()


def test_sets_from_rows_groups_items_per_behaviour():
    rows = pd.DataFrame({"behaviour": ["a", "a", "b", "a", "b"], "behaviour_index": [3, 3, 9, 3, 9],
                         "sign": [1, -1, -1, 1, 1], "split": ["train", "test", "train", "train", "test"],
                         "answer_matching_behavior": [" Yes", " No", " No", " Yes", " Yes"]})
    features = np.arange(10, dtype=np.float32).reshape(5, 2)
    sets = sets_from_rows(rows, features)
    assert list(sets) == [3, 9]
    np.testing.assert_array_equal(sets[3].features, features[[0, 1, 3]])
    np.testing.assert_array_equal(sets[9].signs, [-1, 1])
    np.testing.assert_array_equal(sets[3].yes_mask, [True, False, True])
    g, s = sets[3].part("train")
    np.testing.assert_array_equal(s, [1, 1])
    with pytest.raises(ValueError, match="split"):
        BehaviourSet(1, "x", features[:2], np.array([1, -1]), np.array(["train", "train"], dtype=object),
                     np.array([True, False])).part("test")


def test_answer_rows_head_gives_the_full_heads_curves():
    beh, W0 = _toy()
    full = train_last_layer_dpo(W0, beh.features, beh.signs, yes_id=4, no_id=9, beta=0.05, lr=0.5, steps=15,
                                batch_size=32, seed=1, device="cpu")
    W2, y, n = answer_rows_head(W0, 4, 9)
    small = train_last_layer_dpo(W2, beh.features, beh.signs, yes_id=y, no_id=n, beta=0.05, lr=0.5, steps=15,
                                 batch_size=32, seed=1, device="cpu")
    for col in ("loss", "outputs/accuracies", "full_train_loss", "full_train_outputs/accuracies", "weight_change"):
        np.testing.assert_allclose(small.log[col], full.log[col], rtol=1e-10, atol=1e-12)
    assert not np.allclose(small.log["logps/chosen"], full.log["logps/chosen"])  # absolute log-probs do differ


def test_first_step_drop_matches_the_closed_form_on_a_balanced_set():
    beh, W0 = _toy(n=300, yes_fraction=0.6)
    keep = balanced_subset(beh.signs, seed=0)
    g, s = beh.features[keep], beh.signs[keep]
    measured = first_step_drop(g, s, W0, 4, 9, lr=0.2, beta=0.01, device="cpu")
    predicted = first_step_loss_drop(g, s, beta=0.01, lr=0.2)
    delta = g[s > 0].mean(0) - g[s < 0].mean(0)
    assert predicted == pytest.approx(0.2 * 0.01**2 * (delta @ delta) / 8, rel=1e-12)  # p = 1/2 exactly
    assert measured == pytest.approx(predicted, rel=1e-3)


def test_run_behaviour_trains_on_the_train_split_and_logs_the_test_split():
    beh, W0 = _toy()
    data = _behaviour_set(beh)
    run = run_behaviour(data, W0, 4, 9, lr=1.0, beta=0.05, steps=5, batch_size=16, seed=0, device="cpu")
    assert len(run.log) == 5 and "eval_outputs/accuracies" in run.log
    train_g, _ = data.part("train")
    assert run.max_feature_norm == pytest.approx(float(np.linalg.norm(train_g, axis=1).max()), rel=1e-6)


def test_train_pair_curves_average_to_the_pooled_loss():
    rng = np.random.default_rng(4)
    a, b = synthetic_pair(120, 10, 2.0, 6.0, 60.0, rng=rng, center=3.0)
    W0 = rng.standard_normal((2, 10)) * 0.1
    curves = train_pair(a.features, a.signs, b.features[:80], b.signs[:80], W0, 0, 1, lr=2.0, beta=0.05, steps=12,
                        batch_size=64, seed=2, device="cpu")
    pooled = train_last_layer_dpo(W0, np.concatenate([a.features, b.features[:80]]),
                                  np.concatenate([a.signs, b.signs[:80]]), yes_id=0, no_id=1, beta=0.05, lr=2.0,
                                  steps=12, batch_size=64, seed=2, device="cpu")
    li = curves.query("behaviour == 'i'").sort_values("step")
    lj = curves.query("behaviour == 'j'").sort_values("step")
    assert list(li["step"]) == list(range(13))
    mixed = (120 * li["loss"].to_numpy() + 80 * lj["loss"].to_numpy()) / 200
    np.testing.assert_allclose(mixed[:-1], pooled.log["full_train_loss"], rtol=1e-10)
    assert mixed[-1] == pytest.approx(pooled.final["full_train_loss"], rel=1e-10)
    acc = (120 * li["accuracy"].to_numpy() + 80 * lj["accuracy"].to_numpy()) / 200
    np.testing.assert_allclose(acc[:-1], pooled.log["full_train_outputs/accuracies"], atol=1e-12)
    # the one-run default (i derived from the pooled metrics) equals one logged run per behaviour
    two_runs = train_pair(a.features, a.signs, b.features[:80], b.signs[:80], W0, 0, 1, lr=2.0, beta=0.05, steps=12,
                          batch_size=64, seed=2, device="cpu",
                          eval_sets={("i", "train"): (a.features, a.signs), ("j", "train"): (b.features[:80],
                                                                                            b.signs[:80])})
    np.testing.assert_allclose(two_runs["loss"], curves["loss"], rtol=1e-9)
    np.testing.assert_allclose(two_runs["accuracy"], curves["accuracy"], atol=1e-12)


def test_first_step_reaching_and_first_learned():
    assert first_step_reaching([0.5, 0.8, 0.91, 0.7], 0.9) == 2
    assert math.isnan(first_step_reaching([0.5, 0.6], 0.9))

    def curves(acc_i, acc_j):
        return pd.DataFrame({"step": list(range(len(acc_i))) * 2, "behaviour": ["i"] * len(acc_i) + ["j"] * len(acc_j),
                             "split": "train", "loss": 0.0, "accuracy": list(acc_i) + list(acc_j)})

    assert first_learned(curves([0.5, 0.95], [0.5, 0.6]))["winner"] == "i"
    assert first_learned(curves([0.5, 0.6, 0.92], [0.9, 0.9, 0.9]))["winner"] == "j"
    assert first_learned(curves([0.5, 0.95], [0.5, 0.99]))["winner"] == "tie"
    out = first_learned(curves([0.5, 0.6], [0.5, 0.6]))
    assert out["winner"] == "none" and math.isnan(out["step_i"])
    with pytest.raises(ValueError, match="split"):
        first_learned(curves([0.5], [0.5]), split="test")


def test_head_path_matches_full_head_runs():
    beh, W0 = _toy()
    path = head_path(W0, beh.features, beh.signs, 4, 9, checkpoints=[0, 3, 7], lr=1.0, beta=0.05, batch_size=32,
                     seed=5)
    np.testing.assert_allclose(path[0], W0[4] - W0[9])
    run = train_last_layer_dpo(W0, beh.features, beh.signs, yes_id=4, no_id=9, beta=0.05, lr=1.0, steps=7,
                               batch_size=32, seed=5, device="cpu")
    np.testing.assert_allclose(path[2], (run.W[4] - run.W[9]).numpy(), rtol=1e-10, atol=1e-12)


def test_synthetic_pair_geometry():
    rng = np.random.default_rng(0)
    u, w = directions_at_angle(20, 120.0, rng)
    assert np.linalg.norm(u) == pytest.approx(1) and np.linalg.norm(w) == pytest.approx(1)
    assert math.degrees(math.acos(u @ w)) == pytest.approx(120.0)
    a, b = synthetic_pair(4000, 5, 1.0, 4.0, 90.0, rng=rng, center=2.0)
    np.testing.assert_allclose(a.center, b.center)
    assert np.linalg.norm(a.center) == pytest.approx(2.0)
    assert a.direction @ b.direction == pytest.approx(0.0, abs=1e-12)
    d_b = b.features[b.signs > 0].mean(0) - b.features[b.signs < 0].mean(0)
    assert np.linalg.norm(d_b) == pytest.approx(4.0, rel=0.05)


def test_synthetic_pair_run_regression_snapshot():
    # A short fixed-seed run: the more distinguishable behaviour j reaches 90% first (snapshot of the step numbers).
    rng = np.random.default_rng(11)
    a, b = synthetic_pair(400, 16, 2.0, 8.0, 90.0, rng=rng, center=5.0)
    W0 = rng.standard_normal((2, 16)) * 0.01
    curves = train_pair(a.features, a.signs, b.features, b.signs, W0, 0, 1, lr=0.5, beta=0.01, steps=40,
                        batch_size=128, seed=0, device="cpu")
    out = first_learned(curves)
    assert out["winner"] == "j" and out["step_j"] == 2 and math.isnan(out["step_i"])
    last = curves[curves["step"] == 40].set_index("behaviour")
    np.testing.assert_allclose(last.loc[["i", "j"], "accuracy"], [0.555, 1.0], atol=1e-12)
    np.testing.assert_allclose(last.loc[["i", "j"], "loss"], [0.692583, 0.685256], atol=2e-6)


def test_debiased_distinguishability_is_unbiased_in_the_square():
    rng = np.random.default_rng(10)
    raw, fixed = [], []
    for _ in range(400):
        beh = make_behaviour(20, 50, 2.0, rng=rng, direction=np.eye(50)[0])  # 10 per class, d = 50
        delta = beh.features[beh.yes_mask].mean(0) - beh.features[~beh.yes_mask].mean(0)
        raw.append(delta @ delta)
        g, m = beh.features, beh.yes_mask
        fixed.append(float(delta @ delta) - sum(np.var(g[k], axis=0, ddof=1).sum() / k.sum() for k in (m, ~m)))
        assert debiased_distinguishability(g, m) == pytest.approx(math.sqrt(max(0.0, fixed[-1])))
    assert np.mean(raw) == pytest.approx(4.0 + 2 * 50 / 10, rel=0.05)  # E||D^||^2 = PD^2 + tr/n+ + tr/n-
    assert np.mean(fixed) == pytest.approx(4.0, abs=0.4)


def test_gd_stability_limit_separates_stable_from_divergent_steps():
    assert gd_stability_limit(np.array([[2.0, 0.0], [0.0, 1.0]]), beta=0.5) == pytest.approx(4 / (0.25 * 2.0))
    rng = np.random.default_rng(9)
    beh = make_behaviour(200, 6, 1.0, rng=rng, center=20.0)
    W0 = np.zeros((2, 6))
    limit = gd_stability_limit(beh.features, beta=0.1)

    def losses(lr):
        run = train_last_layer_dpo(W0, beh.features, beh.signs, yes_id=0, no_id=1, beta=0.1, lr=lr, steps=30,
                                   batch_size=None, device="cpu", max_loss_ratio=None)
        return run.log["full_train_loss"].to_numpy()

    assert (np.diff(losses(0.9 * limit)) < 0).all()  # the limit is sharp: 0.9x converges, 1.2x diverges
    assert losses(1.2 * limit)[-1] > losses(1.2 * limit)[0]
    assert require_stable_lr(0.9 * limit, {"toy": beh.features}, beta=0.1) == {"toy": pytest.approx(limit)}
    with pytest.raises(ValueError, match=r"lr: .* stability limit .* of toy"):
        require_stable_lr(1.2 * limit, {"other": beh.features[:, ::-1] * 0.5, "toy": beh.features}, beta=0.1)


def test_seed_averaged_accuracy_averages_the_last_steps_over_seeds():
    beh, W0 = _toy()
    data = _behaviour_set(beh)
    out = seed_averaged_accuracy(data, W0, 4, 9, lr=1.0, beta=0.05, steps=8, batch_size=32, seeds=[0, 3], last_k=3)
    expected = []
    for seed in (0, 3):
        run = run_behaviour(data, W0, 4, 9, lr=1.0, beta=0.05, steps=8, batch_size=32, seed=seed)
        acc = list(run.log["full_train_outputs/accuracies"]) + [run.final["full_train_outputs/accuracies"]]
        expected.append(np.mean(acc[-3:]))  # accuracy at W(6), W(7), W(8)
    np.testing.assert_allclose(out["per_seed"], expected, rtol=1e-12)
    assert out["mean"] == pytest.approx(np.mean(expected)) and out["std"] == pytest.approx(np.std(expected, ddof=1))
    with pytest.raises(ValueError, match="last_k"):
        seed_averaged_accuracy(data, W0, 4, 9, lr=1.0, steps=4, seeds=[0], last_k=5)
    with pytest.raises(ValueError, match="seeds"):
        seed_averaged_accuracy(data, W0, 4, 9, lr=1.0, seeds=[])


def test_mean_accuracy_of_a_pair():
    curves = pd.DataFrame({"step": [0, 1, 2] * 2, "behaviour": ["i"] * 3 + ["j"] * 3, "split": "train",
                           "loss": 0.0, "accuracy": [0.5, 0.7, 0.9, 0.5, 0.5, 0.8]})
    assert mean_accuracy(curves) == {"i": pytest.approx(0.7), "j": pytest.approx(0.6)}
    with pytest.raises(ValueError, match="split"):
        mean_accuracy(curves, split="test")


def test_train_pair_with_an_empty_behaviour_raises():
    rng = np.random.default_rng(4)
    a, b = synthetic_pair(60, 5, 2.0, 6.0, 60.0, rng=rng)
    W0 = np.zeros((2, 5))
    with pytest.raises(ValueError, match="behaviour j needs a non-empty"):
        train_pair(a.features, a.signs, b.features[:0], b.signs[:0], W0, 0, 1, lr=0.1, steps=2, batch_size=16)
    with pytest.raises(ValueError, match="behaviour i needs a non-empty"):
        train_pair(np.zeros((0, 5)), np.zeros(0), b.features, b.signs, W0, 0, 1, lr=0.1, steps=2, batch_size=16)


def test_divergent_learning_rate_stops_a_persona_run():
    beh, W0 = _toy()
    data = _behaviour_set(beh)
    limit = gd_stability_limit(data.part("train")[0], beta=1.0)
    with pytest.raises(ValueError, match=r"training diverged with lr = "):
        run_behaviour(data, np.zeros((2, 8)), 0, 1, lr=3 * limit, beta=1.0, steps=60, batch_size=None,
                      device="cpu")
    stable = run_behaviour(data, np.zeros((2, 8)), 0, 1, lr=0.5 * limit, beta=1.0, steps=60, batch_size=16,
                           device="cpu")  # SGD at half the limit: the rule does not fire
    assert stable.final["full_train_loss"] < stable.log["full_train_loss"].iloc[0]


# --- the chapters share one feature request ------------------------------------------------------------------------

def _chapter_defaults(name):
    return {k: p.default for k, p in parse_parameters((BOOK / f"{name}.py").read_text(), name).items()}


def _requests():
    """{chapter: [(behaviours, items per behaviour)]}: what each Im & Li chapter asks the feature cache for at
    default parameters."""
    d2, d3 = _chapter_defaults("imli_02_distinguishability"), _chapter_defaults("imli_03_learning_speed")
    d4, d5 = _chapter_defaults("imli_04_accuracy_guarantee"), _chapter_defaults("imli_05_prioritisation")
    return d2, {
        "imli_02": [(list(range(d2["n_behaviours"])), d2["per_behaviour"]),
                    (d2["check_behaviours"], d2["check_per_behaviour"]), (d2["check_behaviours"], d2["per_behaviour"])],
        "imli_03": [(d3["behaviours"], d3["max_per_behaviour"])],
        "imli_04": [(d4["real_behaviours"], d4["max_per_behaviour"])],
        "imli_05": [(sorted(set(d5["behaviours"]) | set(d5["paper_pair"])), d5["max_per_behaviour"])]
        + ([(list(range(135)), d5["survey_per_behaviour"])] if d5["heatmap_all"] else []),
    }


def test_chapter_defaults_equal_the_shared_constants():
    d2, requests = _requests()
    assert d2["check_behaviours"] == list(TRAINING_BEHAVIOURS)
    assert d2["check_per_behaviour"] == TRAINING_PER_BEHAVIOUR
    assert d2["per_behaviour"] == SURVEY_PER_BEHAVIOUR and d2["n_behaviours"] == 135
    assert _chapter_defaults("imli_03_learning_speed")["lr"] == persona_runs.SMOLLM2_LR
    for name in ("imli_03", "imli_04", "imli_05"):
        for behaviours, per in requests[name]:
            if per == TRAINING_PER_BEHAVIOUR:
                assert set(behaviours) <= set(TRAINING_BEHAVIOURS), name
            else:
                assert per == SURVEY_PER_BEHAVIOUR, name


@pytest.mark.realdata
def test_imli_02_requests_every_prompt_the_other_chapters_need(monkeypatch, real_data_dir):
    from analysis_lib.data import load_persona, subsample_persona

    monkeypatch.setenv("ANALYSIS_LIB_DATA", os.fspath(real_data_dir))
    everything = load_persona(list(range(135)))

    def prompts(requests):
        out = set()
        for behaviours, per in requests:
            part = everything[everything["behaviour_index"].isin(behaviours)]
            out |= set(subsample_persona(part, per or None, seed=SUBSET_SEED)["question"])
        return out

    _, requests = _requests()
    filled = prompts(requests["imli_02"])
    for name in ("imli_03", "imli_04", "imli_05"):
        missing = prompts(requests[name]) - filled
        assert not missing, f"{name} would extract {len(missing)} prompts that imli_02 does not"


# --- bad input -----------------------------------------------------------------------------------------------------

def test_bad_input_names_the_parameter():
    beh, W0 = _toy()
    data = _behaviour_set(beh)
    with pytest.raises(ValueError, match="beta"):
        run_behaviour(data, W0, 4, 9, lr=0.1, beta=0.0, steps=2, batch_size=16)
    with pytest.raises(ValueError, match="step 1: non-finite"):  # a learning rate that makes the loss non-finite
        run_behaviour(data, W0, 4, 9, lr=1e308, beta=1.0, steps=3, batch_size=16, device="cpu")
    with pytest.raises(ValueError, match="yes_id"):
        answer_rows_head(W0, 12, 0)
    with pytest.raises(ValueError, match="signs"):
        balanced_subset(np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="angle_degrees"):
        directions_at_angle(3, 200, np.random.default_rng(0))
    with pytest.raises(ValueError, match="beta"):
        gd_stability_limit(np.ones((3, 2)), beta=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        first_step_reaching([0.5], 1.5)
    with pytest.raises(ValueError, match="lr"):
        require_stable_lr(float("nan"), {"a": beh.features}, beta=0.1)
    with pytest.raises(ValueError, match="eval_sets"):
        train_pair(beh.features, beh.signs, beh.features, beh.signs, W0, 4, 9, lr=0.1, eval_sets={})
    with pytest.raises(ValueError, match="split"):
        BehaviourSet(1, "x", W0[:2], np.array([1, -1]), np.array(["a", "b"], dtype=object),
                     np.array([True, False])).part("dev")


@pytest.mark.realdata
def test_behaviour_index_out_of_range_is_named(monkeypatch, real_data_dir):
    monkeypatch.setenv("ANALYSIS_LIB_DATA", os.fspath(real_data_dir))
    with pytest.raises(ValueError, match="index 135 is out of range"):
        load_behaviour_sets([3, 135])


def test_official_pair_split_equals_the_sequential_rule_of_the_two_behaviour_script(data_root):
    from analysis_lib.data import load_persona, subsample_persona

    short, agree = "desire-too-grow-more-intelligent-against-wishes-of-creators", "agreeableness"
    rows = subsample_persona(load_persona([short, agree], data_dir=data_root), 200, 0).reset_index(drop=True)
    sets = sets_from_rows(rows, np.zeros((len(rows), 3), dtype=np.float32))
    by_name = {s.name: s for s in sets.values()}
    first, second = persona_runs.official_pair_split(by_name[short], by_name[agree])
    seq = load_persona([short, agree], data_dir=data_root, split_rule="sequential")
    for s in (first, second):
        expected = seq[seq.behaviour == s.name].set_index("row")["split"]
        assert list(s.split) == list(expected.loc[s.rows])
    # the first behaviour keeps its own split; the second's differs from its own (the stream moved on)
    assert list(first.split) == list(by_name[short].split)
    assert list(second.split) != list(by_name[agree].split)
    # the order matters: [agree, short] gives agree its own split
    again, _ = persona_runs.official_pair_split(by_name[agree], by_name[short])
    assert list(again.split) == list(by_name[agree].split)
    with pytest.raises(ValueError, match="second: needs a behaviour set"):
        persona_runs.official_pair_split(by_name[short], BehaviourSet(0, "made-up", np.zeros((2, 3)),
                                                                      np.array([1, -1]), np.array(["train", "test"]),
                                                                      np.array([True, False])))
