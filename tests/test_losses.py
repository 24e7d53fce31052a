"""Tests of analysis_lib.losses: DPO and IPO against closed forms, autograd and an independent numpy version."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from analysis_lib.losses import (
    dpo_loss,
    ipo_loss,
    log_ratio_margin,
    preference_loss,
    preference_metrics,
)

LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss}


def random_logps(n=7, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = [-torch.rand(n, generator=g, dtype=dtype) * 5 for _ in range(4)]
    return [t.requires_grad_(requires_grad) for t in out]


def numpy_dpo(pc, pr, rc, rr, beta):
    """Independent float64 re-derivation: -log sigmoid(x) = log(1 + exp(-x)), written stably by cases."""
    h = (np.asarray(pc, np.float64) - rc) - (np.asarray(pr, np.float64) - rr)
    x = beta * h
    return np.where(x > 0, np.log1p(np.exp(-np.abs(x))), -x + np.log1p(np.exp(-np.abs(x))))


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_policy_equal_reference(kind, dtype):
    pc, pr, _, _ = random_logps(dtype=dtype)
    losses, cr, rr = LOSSES[kind](pc, pr, pc.clone(), pr.clone(), 0.3)
    expected = math.log(2) if kind == "dpo" else (1 / (2 * 0.3)) ** 2
    torch.testing.assert_close(losses, torch.full_like(losses, expected), rtol=1e-6, atol=0)
    assert torch.all(cr == 0) and torch.all(rr == 0)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_dpo_gradient_autograd_and_closed_form(beta):
    pc, pr, rc, rr = random_logps(seed=1, requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    losses.sum().backward()
    h = ((pc - rc) - (pr - rr)).detach()
    dl_dh = -beta * torch.sigmoid(-beta * h)  # d/dh of -log sigmoid(beta h)
    torch.testing.assert_close(pc.grad, dl_dh, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pr.grad, -dl_dh, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rc.grad, -dl_dh, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rr.grad, dl_dh, rtol=1e-12, atol=1e-15)
    # and against central finite differences in h
    eps = 1e-6
    f = lambda x: float(numpy_dpo(x, 0.0, 0.0, 0.0, beta)[()])  # noqa: E731
    for hv, gv in zip(h.tolist(), dl_dh.tolist(), strict=True):
        assert (f(hv + eps) - f(hv - eps)) / (2 * eps) == pytest.approx(gv, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_ipo_gradient_autograd_and_closed_form(tau):
    pc, pr, rc, rr = random_logps(seed=2, requires_grad=True)
    losses, _, _ = ipo_loss(pc, pr, rc, rr, tau)
    losses.sum().backward()
    h = ((pc - rc) - (pr - rr)).detach()
    dl_dh = 2 * (h - 1 / (2 * tau))
    torch.testing.assert_close(pc.grad, dl_dh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pr.grad, -dl_dh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rc.grad, -dl_dh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rr.grad, dl_dh, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.25, 1.0, 3.0])
def test_ipo_minimised_at_target(tau):
    def loss_at(h):
        t = torch.tensor([h], dtype=torch.float64)
        z = torch.zeros(1, dtype=torch.float64)
        return float(ipo_loss(t, z, z, z, tau)[0])

    target = 1 / (2 * tau)
    res = minimize_scalar(loss_at, bracket=(target - 3, target + 3), tol=1e-12)
    assert res.x == pytest.approx(target, abs=1e-6)
    assert loss_at(target) == 0.0
    # the derivative changes sign at the target
    h = torch.tensor([target - 1e-3, target + 1e-3], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(2, dtype=torch.float64)
    ipo_loss(h, z, z, z, tau)[0].sum().backward()
    assert h.grad[0] < 0 < h.grad[1]


@pytest.mark.parametrize("beta", [0.01, 0.5, 3.0])
def test_dpo_matches_numpy_rederivation(beta):
    pc, pr, rc, rr = random_logps(n=50, seed=3)
    # widen the margins so that both branches of the numpy version are used
    pc = pc * 20
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    ref = numpy_dpo(pc.numpy(), pr.numpy(), rc.numpy(), rr.numpy(), beta)
    np.testing.assert_allclose(losses.numpy(), ref, rtol=1e-13, atol=1e-300)
    # the naive formula agrees where it is safe to evaluate
    h = ((pc - rc) - (pr - rr)).numpy()
    np.testing.assert_allclose(losses.numpy(), np.log1p(np.exp(-beta * h)), rtol=1e-12)


def test_ipo_matches_numpy_rederivation():
    pc, pr, rc, rr = random_logps(n=20, seed=4)
    tau = 0.2
    h = (pc.numpy() - rc.numpy()) - (pr.numpy() - rr.numpy())
    np.testing.assert_allclose(ipo_loss(pc, pr, rc, rr, tau)[0].numpy(), (h - 2.5) ** 2, rtol=1e-14)


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_rewards_are_detached_and_scaled(kind):
    pc, pr, rc, rr = random_logps(seed=5, requires_grad=True)
    strength = 0.7
    losses, cr, rr_ = LOSSES[kind](pc, pr, rc, rr, strength)
    assert losses.requires_grad
    assert not cr.requires_grad and not rr_.requires_grad
    torch.testing.assert_close(cr, strength * (pc - rc).detach(), rtol=1e-15, atol=0)
    torch.testing.assert_close(rr_, strength * (pr - rr).detach(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_margins_stay_finite(dtype):
    big = torch.tensor([1e6, -1e6, 1e30, -1e30], dtype=dtype, requires_grad=True)
    z = torch.zeros(4, dtype=dtype)
    losses, _, _ = dpo_loss(big, z, z, z, beta=1.0)
    losses.sum().backward()
    losses = losses.detach()
    assert torch.isfinite(losses).all() and torch.isfinite(big.grad).all()
    assert losses[0] == 0 and losses[2] == 0
    assert float(losses[1]) == pytest.approx(1e6, rel=1e-6)
    assert float(big.grad[1]) == pytest.approx(-1.0) and float(big.grad[0]) == pytest.approx(0.0, abs=1e-30)


def test_low_precision_inputs_are_computed_in_fp32():
    pc, pr, rc, rr = (t.to(torch.bfloat16) for t in random_logps(seed=6, dtype=torch.float32))
    assert log_ratio_margin(pc, pr, rc, rr).dtype == torch.float32
    assert dpo_loss(pc, pr, rc, rr, 0.1)[0].dtype == torch.float32


@pytest.mark.parametrize("kind, param", [("dpo", "beta"), ("ipo", "tau")])
@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), "0.1", None, True])
def test_bad_strength_raises_naming_it(kind, param, bad):
    with pytest.raises(ValueError, match=param):
        LOSSES[kind](*random_logps(), bad)


def test_numpy_scalar_strength_is_accepted():
    logps = random_logps()
    ref = dpo_loss(*logps, 0.5)[0]
    torch.testing.assert_close(dpo_loss(*logps, np.float32(0.5))[0], ref)
    torch.testing.assert_close(ipo_loss(*logps, np.int64(2))[0], ipo_loss(*logps, 2.0)[0])


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_mismatched_shapes_raise_naming_the_tensor(kind):
    pc, pr, rc, rr = random_logps(n=5)
    with pytest.raises(ValueError, match="reference_rejected_logps"):
        LOSSES[kind](pc, pr, rc, rr[:4], 0.1)


def test_preference_loss_dispatch():
    logps = random_logps()
    torch.testing.assert_close(preference_loss("dpo", *logps, strength=0.2)[0], dpo_loss(*logps, 0.2)[0])
    torch.testing.assert_close(preference_loss("ipo", *logps, strength=0.2)[0], ipo_loss(*logps, 0.2)[0])
    with pytest.raises(ValueError, match="kind"):
        preference_loss("kto", *logps, strength=0.2)


def test_preference_metrics_small_known_case():
    pc = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    pr = torch.tensor([-2.0, -1.0, -0.5, -1.0], dtype=torch.float64)
    rc = torch.tensor([-1.5, -1.5, -1.0, -2.0], dtype=torch.float64)
    rr = torch.tensor([-1.5, -1.5, -1.0, -2.0], dtype=torch.float64)
    beta = 0.5
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
    m = preference_metrics(losses, cr, rj, pc, pr)
    # chosen rewards 0.5*(0.5, -0.5, 0.5, -1.0); rejected 0.5*(-0.5, 0.5, 0.5, 1.0)
    assert set(m) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                      "logps/chosen", "logps/rejected", "outputs/accuracies"}
    assert m["rewards/chosen"] == pytest.approx(0.5 * (-0.5 / 4))
    assert m["rewards/rejected"] == pytest.approx(0.5 * (1.5 / 4))
    assert m["rewards/margins"] == pytest.approx(0.5 * (-2.0 / 4))
    assert m["rewards/accuracies"] == pytest.approx(0.25)  # only the first pair: 0.25 > -0.25
    assert m["logps/chosen"] == pytest.approx(-6.5 / 4)
    assert m["logps/rejected"] == pytest.approx(-4.5 / 4)
    assert m["outputs/accuracies"] == pytest.approx(0.25)  # only -1 > -2; ties (-0.5, -0.5) do not count
    h = np.array([1.0, -1.0, 0.0, -2.0])
    assert m["loss"] == pytest.approx(float(np.mean(np.logaddexp(0, -beta * h))), rel=1e-14)
    without = preference_metrics(losses, cr, rj)
    assert set(without) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


# -- bad input named in one line (issue 9, section 5) ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_nan_log_probs_are_an_error_naming_the_argument_and_item(kind):
    pc, pr, rc, rr = random_logps(n=4)
    pr = pr.clone()
    pr[2] = float("nan")
    with pytest.raises(ValueError, match=r"^policy_rejected_logps: must be finite, got nan at item 2$"):
        LOSSES[kind](pc, pr, rc, rr, 0.1)
    rc = rc.clone()
    rc[0] = float("-inf")
    with pytest.raises(ValueError, match=r"^reference_chosen_logps: must be finite, got -inf at item 0$"):
        LOSSES[kind](pc, pc, rc, rr, 0.1)


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_lists_and_arrays_are_accepted_as_log_probs(kind):
    pc, pr, rc, rr = random_logps(n=3)
    expected = LOSSES[kind](pc, pr, rc, rr, 0.1)[0]
    got = LOSSES[kind](pc.tolist(), pr.numpy(), list(rc.numpy()), rr, 0.1)[0]
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"^policy_chosen_logps: must be a tensor, array or list of log-probs, got "
                                         r"str$"):
        LOSSES[kind]("abc", pr, rc, rr, 0.1)
