"""Preference losses with the de-facto signature of TRL and the reference DPO code.

Each loss takes the policy's and the reference's log-probabilities of the chosen and the rejected responses
(one value per example: the sum, or the mean, of the response's token log-probs; see
:func:`analysis_lib.models.sequence_logprobs`) and returns three tensors of shape (batch,):

* ``losses``: per-example losses (take ``.mean()`` for the batch loss);
* ``chosen_rewards`` = beta * (log pi(y_w|x) - log pi_ref(y_w|x)), detached;
* ``rejected_rewards`` = beta * (log pi(y_l|x) - log pi_ref(y_l|x)), detached.

Length normalisation is explicit: the log-probs passed in decide it. Summed token log-probs are the DPO
paper's choice; TRL's IPO averages them (``average_log_prob=True``). For single-token responses (the persona
" Yes"/" No" answers) the two agree.

IPO (Azar et al. 2023) regresses the log-ratio difference h onto the target 1/(2*tau). Some code calls tau
"beta" there: we name it ``tau`` to avoid that trap, and ``beta = 1/tau`` is the preference strength of Chen
et al.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from analysis_lib import checks as C


def _check_inputs(name: str, **logps) -> tuple[torch.Tensor, ...]:
    """The four log-prob inputs as tensors (lists and arrays converted, float64 for Python numbers; tensors as
    they are), of one shape and finite: a NaN or infinite log-prob is an error naming the argument and the item,
    never a silent NaN loss."""
    tensors = {k: v if isinstance(v, torch.Tensor) else _as_tensor(k, v) for k, v in logps.items()}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{name}: the four log-prob tensors must have the same shape, got {shapes}")
    for k, t in tensors.items():
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0]) if t.ndim else ()
            value = float(t.detach()[first]) if t.ndim else float(t.detach())
            raise ValueError(f"{k}: must be finite, got {value} at item {first[0] if len(first) == 1 else first}")
    return tuple(tensors.values())


def _as_tensor(name: str, value) -> torch.Tensor:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a tensor, array or list of log-probs, got {type(value).__name__}") from None
    return torch.from_numpy(array)


def log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)], computed in fp32 or wider."""
    pc, pr, rc, rr = (t if t.dtype == torch.float64 else t.float() for t in
                      (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps))
    return (pc - rc) - (pr - rr)


def _rewards(scale: float, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps):
    chosen = scale * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected = scale * (policy_rejected_logps - reference_rejected_logps).detach()
    return chosen, rejected


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1):
    """DPO (Rafailov et al. 2023): losses = -log sigmoid(beta * h), with h the log-ratio margin.

    Returns (losses, chosen_rewards, rejected_rewards), rewards detached. At policy = reference every loss is
    log 2. ``-F.logsigmoid`` keeps large negative margins finite.
    """
    C.positive("beta", beta)
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps = _check_inputs(
        "dpo_loss", policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps, reference_rejected_logps=reference_rejected_logps)
    h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps)
    losses = -F.logsigmoid(beta * h)
    return (losses, *_rewards(beta, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                              reference_rejected_logps))


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             tau: float = 0.1):
    """IPO (Azar et al. 2023): losses = (h - 1/(2*tau))**2, with h the log-ratio margin.

    Returns (losses, chosen_rewards, rejected_rewards). As in TRL, the rewards are scaled by the loss's own
    strength parameter: rewards = tau * log-ratio (detached). The minimiser is h = 1/(2*tau).
    """
    C.positive("tau", tau)
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps = _check_inputs(
        "ipo_loss", policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps, reference_rejected_logps=reference_rejected_logps)
    h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps)
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return (losses, *_rewards(tau, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                              reference_rejected_logps))


LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss}


def preference_loss(kind: str, *logps: torch.Tensor, strength: float):
    """Dispatch by name: ``kind`` in {'dpo', 'ipo'}; ``strength`` is DPO's beta or IPO's tau."""
    if kind not in LOSSES:
        raise ValueError(f"kind: must be one of {sorted(LOSSES)}, got {kind!r}")
    return LOSSES[kind](*logps, strength)


def preference_metrics(losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       policy_chosen_logps: torch.Tensor | None = None,
                       policy_rejected_logps: torch.Tensor | None = None,
                       accuracy_dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """TRL's metric names: loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, and
    (when the policy log-probs are given) logps/chosen, logps/rejected and outputs/accuracies (the policy's own
    ordering log pi(y_w) > log pi(y_l), the accuracy Im & Li plot).

    Accuracies are means of 0/1 indicators in ``accuracy_dtype``: float32 as TRL does (k/n is then off by up to
    6e-8, enough to put 27/30 just below a 0.9 threshold), float64 for the exact fraction."""
    out = {
        "loss": losses.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(accuracy_dtype).mean().item(),
    }
    if policy_chosen_logps is not None and policy_rejected_logps is not None:
        out["logps/chosen"] = policy_chosen_logps.detach().mean().item()
        out["logps/rejected"] = policy_rejected_logps.detach().mean().item()
        out["outputs/accuracies"] = (policy_chosen_logps > policy_rejected_logps).to(accuracy_dtype).mean().item()
    return out
