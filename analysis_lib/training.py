"""The one preference trainer of the book: DPO or IPO on any model that scores chosen and rejected responses.

A model supplies its forward pass; :func:`train` owns everything else:

* **batching** from one seeded ``torch.Generator`` (``sampling='random'``: a fresh batch drawn without replacement
  at every step, as the official code does; ``'sequential'``: consecutive batches in data order, as TRL with
  ``train_sampling_strategy="sequential"``; ``batch_size=None``: the whole set, in order);
* the **reference** log-probs, computed once before the first step (or given), and on disk where the model caches
  them (:class:`analysis_lib.models.policy.CausalLMPolicy`);
* the **loss** from :mod:`analysis_lib.losses` (``'dpo'``: :func:`~analysis_lib.losses.dpo_loss`; ``'ipo'``:
  :func:`~analysis_lib.losses.ipo_loss` with ``beta`` as its tau, TRL's convention: the target is 1/(2 beta));
* **optimisers** (``'sgd'``, ``'adam'`` = torch Adam, ``'adamw'`` with ``weight_decay``), gradient accumulation
  (``grad_accumulation`` micro-batches per step), clipping (``max_grad_norm``), a learning-rate schedule
  (``'constant'``, ``'linear'``, ``'cosine'``, with ``warmup_steps``);
* **stops** that name the step, lr, beta and the values: non-finite log-probs, loss or gradients, and (with
  ``max_loss_ratio``) a whole-training-set loss (else the batch loss) that rises above that multiple of its start;
* **evaluation** of held-out and whole-training sets (:class:`EvalSet`: a column prefix, a schedule), before each
  update and after the last (at step 0, a set whose reference log-probs were just computed from the unmoved model
  takes them as its own instead of running the same pass again);
* TRL's **metric names** (:func:`analysis_lib.losses.preference_metrics`: ``loss``, ``rewards/*``, ``logps/*``, and
  ``outputs/accuracies``, the policy's own ordering that Im & Li plot), ``grad_norm`` and ``learning_rate``;
* a progress bar, and one result type, :class:`TrainingRun`.

On CPU the trainer lets the process keep the memory it frees (:func:`analysis_lib.runtime.keep_freed_memory`: a
step then reuses the last step's pages instead of faulting fresh ones in).

Past one machine, the same call runs under ``accelerate launch`` (data parallel: each process takes its share of
every batch, gradients are averaged, so the run equals the one-process run with the same global batch; a model
that supports it is wrapped by accelerate, e.g. DDP, or FSDP when the launch configures it).

What a model provides (see :class:`PreferenceModel`): ``trainable_parameters()`` and ``logps(data, idx)``, the
policy's log-probs of the chosen and the rejected responses of the items ``idx`` (all items when None),
differentiable. Optional: ``eval_chunk`` (items per no-grad forward pass; None = all at once), ``train(mode)``,
``relative_logps`` (True when only log pi(chosen) - log pi(rejected) is meaningful, e.g. a model of the
Yes-minus-No logit: rewards and log-probs of each side are then not logged), ``extra_metrics(chosen, rejected,
data, idx)``, ``after_step()`` (extra log columns after each update), ``reference_logps(data, compute)`` (e.g. a
disk cache), ``distribute(accelerator)``, ``autocast()``, ``tokens(data, idx)``, ``describe()`` and ``result()``
(what :attr:`TrainingRun.model` holds).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from analysis_lib import checks as C
from analysis_lib.losses import dpo_loss, ipo_loss, preference_metrics
from analysis_lib.models.policy import TRAINABLE as TRAINABLE_MODES
from analysis_lib.models.policy import CausalLMPolicy, LoraSettings, PreferencePairs
from analysis_lib.runtime import keep_freed_memory, timed
from analysis_lib.runtime import progress as progress_bar

LOSS_TYPES = ("dpo", "ipo")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine")
SAMPLINGS = ("random", "sequential")
#: Re-exported so that a chapter imports the trainer and the LM policy from one place.
__all__ = ["CausalLMPolicy", "EvalSet", "LoraSettings", "PreferenceModel", "PreferencePairs", "TrainingRun",
           "learning_rate", "train"]


class PreferenceModel(Protocol):
    """What :func:`train` needs from a model (the optional hooks are listed in the module docstring)."""

    def trainable_parameters(self) -> list[torch.Tensor]: ...

    def logps(self, data, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class EvalSet:
    """A set evaluated during training: its log columns are ``prefix`` + the metric names. Evaluated before the
    update of step t when t = 0, t in ``at`` or t % ``every`` == 0 (``every=None``: only step 0 and the end), and
    after the last update (:attr:`TrainingRun.final`); NaN in the log at the other steps. ``name`` appears in
    messages; ``reference`` = precomputed reference log-probs (chosen, rejected), else computed once."""

    prefix: str
    data: object
    name: str = "eval"
    every: int | None = 1
    at: frozenset = frozenset()
    reference: tuple | None = None

    def due(self, step: int) -> bool:
        return step == 0 or step in self.at or (self.every is not None and step % self.every == 0)


@dataclass
class TrainingRun:
    """The result of :func:`train`.

    ``log``: one row per step t = 0 .. steps-1 with ``step``, the evaluated sets' metrics before the update
    (prefixed, NaN where not evaluated), the step's batch metrics (TRL names, before the update), ``grad_norm``,
    ``learning_rate`` and the model's own columns after the update; ``final``: the evaluated sets' metrics after
    the last update; ``model``: the trained model (what the model's ``result()`` returns); ``info``: device,
    precision, world size, wall-clock seconds (``seconds``, ``step_seconds``), tokens per step where known, and
    what the model reports (``describe()``).
    """

    log: pd.DataFrame
    final: dict[str, float]
    model: object = None
    info: dict = field(default_factory=dict)

    def at(self, step: int, column: str) -> float:
        """A whole-set column after ``step`` updates (the log row of that step, or ``final`` at the last step);
        NaN where it was not evaluated."""
        steps = len(self.log)
        step = C.int_at_least("step", step, 0)
        if step > steps:
            raise ValueError(f"step: must be at most the run's {steps} steps, got {step}")
        return float(self.final[column]) if step == steps else float(self.log[column].iloc[step])

    def curve(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps 0 .. T, values) of a whole-set column with the final value appended, evaluated steps only."""
        steps = np.append(self.log["step"].to_numpy(), len(self.log))
        values = np.append(self.log[column].to_numpy(), self.final[column])
        keep = np.isfinite(values)
        return steps[keep], values[keep]


# ---------------------------------------------------------------------------------------------------------------
# Settings: optimiser, schedule, batches
# ---------------------------------------------------------------------------------------------------------------

def _optimizer(name: str, params: list[torch.Tensor], lr: float, weight_decay: float):
    """None for plain SGD (written out: the same update as torch.optim.SGD without momentum, without its slow
    first call), else a torch optimiser (AdamW fused where the parameters allow it)."""
    if name == "sgd":
        return None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) and \
        len({p.device for p in params}) == 1
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def learning_rate(schedule: str, lr: float, step: int, steps: int, warmup_steps: int = 0) -> float:
    """The learning rate of ``step`` (0-based) of ``steps``: linear warm-up from 0 over ``warmup_steps``, then
    constant, linear decay to 0, or cosine decay to 0 (the Hugging Face schedules)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "linear":
        return lr * max(0.0, 1.0 - progress)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Batches:
    """The batch of every step from one seeded generator: a fresh random batch (without replacement) per step,
    consecutive slices in data order, or the whole set (``batch_size=None``: idx None)."""

    def __init__(self, n: int, batch_size: int | None, sampling: str, seed: int, device):
        self.n, self.batch_size, self.sampling, self.device = n, batch_size, sampling, device
        self.gen = torch.Generator().manual_seed(seed)
        self.offset = 0

    def next(self) -> torch.Tensor | None:
        if self.batch_size is None:
            return None
        if self.sampling == "random":
            return torch.randperm(self.n, generator=self.gen)[:self.batch_size].to(self.device)
        idx = (self.offset + torch.arange(self.batch_size)) % self.n
        self.offset = (self.offset + self.batch_size) % self.n
        return idx.to(self.device)


# ---------------------------------------------------------------------------------------------------------------
# Processes: one, or data parallel under `accelerate launch`
# ---------------------------------------------------------------------------------------------------------------

class _Processes:
    """This process's share of the work. One process: everything. Under ``accelerate launch`` (WORLD_SIZE > 1):
    contiguous shares of every batch and of every whole-set pass, results gathered back in order."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator, self.rank = None, 0
        if self.world > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=device.type == "cpu")
            self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.world == 1 else torch.tensor_split(idx, self.world)[self.rank]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``t`` (first dimension) in process order (shares may differ by one)."""
        if self.world == 1:
            return t
        sizes = self.accelerator.gather(torch.tensor([t.shape[0]], device=t.device)).tolist()
        padded = self.accelerator.pad_across_processes(t.contiguous(), dim=0)
        parts = self.accelerator.gather(padded).split(max(sizes))
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Context:
    """What the steps of one run share: the model, the loss, the processes, and the stop rules."""

    model: object
    loss: str
    beta: float
    lr: float
    processes: _Processes
    accuracy_dtype: torch.dtype
    reference_name: str

    def stop(self, step: int, where: str, what: str, values: str = "") -> None:
        raise ValueError(f"step {step}: non-finite {where} loss with lr = {self.lr:g}, beta = {self.beta:g}: {what}"
                         f"{f' ({values})' if values else ''}; lower lr or beta, or check the inputs")

    def losses(self, step: int, where: str, pc, pr, rc, rr):
        """(per-item losses, chosen rewards, rejected rewards), or a stop naming the step when the policy's
        log-probs or the losses are not finite."""
        for name, t in (("chosen", pc), ("rejected", pr)):
            if not bool(torch.isfinite(t.detach()).all()):
                bad = t.detach()[~torch.isfinite(t.detach())][:3].tolist()
                self.stop(step, where, f"the policy's log-probs of the {name} responses are not finite", f"{bad}")
        fn = dpo_loss if self.loss == "dpo" else ipo_loss
        out = fn(pc, pr, rc, rr, self.beta)
        if not bool(torch.isfinite(out[0].detach()).all()):
            self.stop(step, where, "the per-item losses are not finite")
        return out

    def metrics(self, step: int, where: str, losses, chosen_rewards, rejected_rewards, pc, pr) -> dict[str, float]:
        """TRL's metrics of the items; a stop when the mean loss overflows."""
        out = preference_metrics(losses.detach(), chosen_rewards, rejected_rewards, pc.detach(), pr.detach(),
                                 accuracy_dtype=self.accuracy_dtype)
        if not math.isfinite(out["loss"]):
            self.stop(step, where, "the mean loss is not finite", ", ".join(f"{k}={v:.4g}" for k, v in out.items()))
        if getattr(self.model, "relative_logps", False):
            for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
                out.pop(key)
        return out

    def whole_set(self, data, chunk: int | None):
        """The model's (chosen, rejected) log-probs of every item, without gradients: in chunks of ``chunk``
        consecutive items (None: one pass), this process's share, gathered."""
        n = _size(data)
        device = getattr(self.model, "device", None)
        with torch.no_grad(), _autocast(self.model):
            if chunk is None and self.processes.world == 1:
                return self.model.logps(data, None)
            idx = self.processes.share(torch.arange(n, device=device))
            step = chunk or max(1, len(idx))
            parts = [self.model.logps(data, idx[k:k + step]) for k in range(0, len(idx), step)]
            chosen = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, device=device)
            rejected = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, device=device)
        return self.processes.gather(chosen), self.processes.gather(rejected)

    def reference(self, data, name: str, chunk: int | None) -> tuple[tuple, bool]:
        """The reference log-probs of a set, and whether they were computed now: the model's own cache hook,
        else computed now (the model at its start is the reference); non-finite values are an error naming the
        model argument."""
        computed = []

        def compute():
            computed.append(True)
            return self.whole_set(data, chunk)

        hook = getattr(self.model, "reference_logps", None)
        ref = hook(data, compute) if hook else compute()
        ref = tuple(t.detach() for t in ref)
        if not all(bool(torch.isfinite(t).all()) for t in ref):
            raise ValueError(f"{self.reference_name}: the reference log-probs on the {name} set are not finite "
                             f"(logits overflow?)")
        return ref, bool(computed)

    def evaluate(self, step: int, ev: EvalSet, ref, chunk: int | None, logps=None) -> dict[str, float]:
        """The metrics of the set ``ev`` against ``ref``: from the model's log-probs now, or from ``logps``
        where the caller already has them."""
        pc, pr = self.whole_set(ev.data, chunk) if logps is None else logps
        losses, cr, rr = self.losses(step, f"{ev.name}-set", pc, pr, *ref)
        out = self.metrics(step, f"{ev.name}-set", losses, cr, rr, pc, pr)
        out.update(_extra(self.model, pc, pr, ev.data, None))
        return {ev.prefix + k: v for k, v in out.items()}


def _size(data) -> int:
    return len(data)


def _extra(model, pc, pr, data, idx) -> dict[str, float]:
    hook = getattr(model, "extra_metrics", None)
    return hook(pc.detach(), pr.detach(), data, idx) if hook else {}


def _autocast(model):
    hook = getattr(model, "autocast", None)
    return hook() if hook else contextlib.nullcontext()


def _set_train_mode(model, mode: bool) -> None:
    hook = getattr(model, "train", None)
    if hook is not None:
        hook(mode)


def _check_settings(loss, beta, lr, steps, batch_size, seed, optimizer, weight_decay, grad_accumulation,
                    max_grad_norm, lr_schedule, warmup_steps, sampling, max_loss_ratio, world) -> dict:
    C.one_of("loss", loss, LOSS_TYPES)
    out = {"beta": C.positive("beta", beta), "lr": C.positive("lr", lr), "steps": C.int_at_least("steps", steps, 1),
           "seed": C.int_at_least("seed", seed, 0)}
    C.one_of("optimizer", optimizer, OPTIMIZERS)
    C.one_of("lr_schedule", lr_schedule, SCHEDULES)
    C.one_of("sampling", sampling, SAMPLINGS)
    out["weight_decay"] = C.non_negative("weight_decay", weight_decay)
    out["grad_accumulation"] = C.int_at_least("grad_accumulation", grad_accumulation, 1)
    out["warmup_steps"] = C.int_at_least("warmup_steps", warmup_steps, 0)
    if max_grad_norm is not None:
        C.positive("max_grad_norm", max_grad_norm)
    if max_loss_ratio is not None and C.positive("max_loss_ratio", max_loss_ratio) <= 1:
        raise ValueError(f"max_loss_ratio: must be > 1 (or None), got {max_loss_ratio!r}")
    if batch_size is not None:
        C.int_at_least("batch_size", batch_size, 1)
        parts = out["grad_accumulation"] * world
        if batch_size % parts:
            raise ValueError(f"batch_size: must be a multiple of grad_accumulation x processes = {parts}, got "
                             f"{batch_size}")
    elif out["grad_accumulation"] > 1 or world > 1:
        raise ValueError("batch_size: give a batch size (not None) with grad_accumulation > 1 or several processes")
    return out


@timed("training")  # the seconds spent here count as "training" in a chapter's footer and the build's summary
def train(model, data, *, loss: str = "dpo", beta: float, lr: float, steps: int, batch_size: int | None = 16,
          seed: int = 0, optimizer: str = "adamw", weight_decay: float = 0.0, grad_accumulation: int = 1,
          max_grad_norm: float | None = None, lr_schedule: str = "constant", warmup_steps: int = 0,
          sampling: str = "random", evaluations=(), reference=None, max_loss_ratio: float | None = None,
          divergence_hint: str = "lower lr", accuracy_dtype: torch.dtype = torch.float64,
          reference_name: str = "model", progress: bool = False, desc: str | None = None) -> TrainingRun:
    """Train ``model`` on the preference items ``data`` with DPO (``loss='dpo'``) or IPO for ``steps`` steps.

    ``data``: what the model's ``logps`` takes (its ``prepare(data)`` hook converts it first, e.g. a
    :class:`~analysis_lib.models.policy.PreferencePairs` to token ids); ``evaluations``: :class:`EvalSet` s (their
    data prepared the same way); ``reference``: the training set's reference log-probs (chosen, rejected),
    computed from the model at its start when None. ``accuracy_dtype``: the dtype in which 0/1 accuracies are
    averaged (float64: the exact fraction; TRL: float32). Everything else: see the module docstring. Returns a
    :class:`TrainingRun`.
    """
    data, evaluations = _prepared(model, data, evaluations)
    device = torch.device(getattr(model, "device", None) or "cpu")
    processes = _Processes(device)
    if device.type == "cpu":
        keep_freed_memory()
    s = _check_settings(loss, beta, lr, steps, batch_size, seed, optimizer, weight_decay, grad_accumulation,
                        max_grad_norm, lr_schedule, warmup_steps, sampling, max_loss_ratio, processes.world)
    if hasattr(model, "begin"):
        model.begin(loss)
    ctx = _Context(model, loss, s["beta"], s["lr"], processes, accuracy_dtype, reference_name)
    chunk = getattr(model, "eval_chunk", None)
    _set_train_mode(model, False)
    ref, fresh = (tuple(reference), False) if reference is not None else ctx.reference(data, "train", chunk)
    refs = [(ev.reference, False) if ev.reference is not None else (ref, fresh) if ev.data is data else
            ctx.reference(ev.data, ev.name, chunk) for ev in evaluations]
    if batch_size is not None and batch_size > _size(data):
        raise ValueError(f"batch_size: must be at most the training-set size {_size(data)} (or None for the "
                         f"whole set), got {batch_size}")
    _distribute(model, processes)
    params = list(model.trainable_parameters())
    loop = _Loop(ctx, data, ref, evaluations, [r for r, _ in refs], [f for _, f in refs], chunk, max_loss_ratio,
                 divergence_hint,
                 watch=next((k for k, ev in enumerate(evaluations) if ev.data is data), None))
    opt = _optimizer(optimizer, params, s["lr"], s["weight_decay"])
    batches = _Batches(_size(data), batch_size, sampling, s["seed"], device)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(s["seed"])  # dropout is seeded; the caller's random state is untouched
        steps_iter = progress_bar(range(s["steps"]), desc=desc or f"{loss.upper()} training", leave=False) \
            if progress else range(s["steps"])
        for t in steps_iter:
            lr_t = learning_rate(lr_schedule, s["lr"], t, s["steps"], s["warmup_steps"])
            loop.step(t, batches.next(), params, opt, lr_t, s["grad_accumulation"], max_grad_norm)
        final = loop.evaluations(s["steps"], final=True)
    _set_train_mode(model, False)
    info = {"device": str(device), "world_size": processes.world, "seconds": time.perf_counter() - started,
            "step_seconds": loop.step_seconds, "loss_type": loss, "optimizer": optimizer,
            **(model.describe() if hasattr(model, "describe") else {})}
    result = model.result() if hasattr(model, "result") else model
    return TrainingRun(pd.DataFrame(loop.rows), final, result, info)  # NaN where a set was not evaluated


def _prepared(model, data, evaluations):
    """The training data and the evaluation sets through the model's ``prepare`` hook (once per distinct set)."""
    prepare = getattr(model, "prepare", None)
    if prepare is None:
        return data, list(evaluations)
    raw, data = data, prepare(data)
    return data, [EvalSet(ev.prefix, data if ev.data is raw else prepare(ev.data), ev.name, ev.every, ev.at,
                          ev.reference) for ev in evaluations]


def _distribute(model, processes: _Processes) -> None:
    """Under a multi-process launch, let the model wrap itself (DDP, or FSDP as configured)."""
    if processes.accelerator is None:
        return
    if not hasattr(model, "distribute"):
        raise ValueError(f"model: {type(model).__name__} cannot train on {processes.world} processes (it has no "
                         f"distribute hook); run it in one process")
    model.distribute(processes.accelerator)


@dataclass
class _Loop:
    """The steps of one run: due evaluations, the update, the divergence rule, the log rows and step times."""

    ctx: _Context
    data: object
    ref: tuple
    sets: list
    refs: list
    computed_now: list  # per set: its reference was computed at the start of this run (not given, not cached)
    chunk: int | None
    max_loss_ratio: float | None
    hint: str
    watch: int | None
    rows: list = field(default_factory=list)
    step_seconds: list = field(default_factory=list)
    start_loss: list = field(default_factory=list)

    def step(self, t: int, idx, params, opt, lr: float, accumulation: int, max_grad_norm) -> None:
        row = {"step": t, **self.evaluations(t)}
        tic = time.perf_counter()
        row.update(_step(self.ctx, t, self.data, idx, self.ref, params, opt, lr, accumulation, max_grad_norm))
        self.step_seconds.append(time.perf_counter() - tic)  # the update only: forward, backward, optimiser
        row["learning_rate"] = lr
        if self.watch is None:
            self.diverged(t, row["loss"], "batch")
        if hasattr(self.ctx.model, "after_step"):
            row.update(self.ctx.model.after_step())
        self.rows.append(row)

    def evaluations(self, t: int, final: bool = False) -> dict[str, float]:
        """The due evaluations before step t (all of them when ``final``), with the divergence rule on the
        watched whole-training set. At step 0 a set whose reference was computed at the start of this run is not
        run again: the model has not moved, so its log-probs are that computation (a reference that was given or
        read from a cache is checked by a real evaluation)."""
        out = {}
        for k, (ev, ref) in enumerate(zip(self.sets, self.refs, strict=True)):
            if final or ev.due(t):
                reuse = t == 0 and not final and self.computed_now[k]
                metrics = self.ctx.evaluate(t, ev, ref, self.chunk, logps=ref if reuse else None)
                out.update(metrics)
                if k == self.watch:
                    self.diverged(t, metrics[ev.prefix + "loss"], "whole-training-set")
        return out

    def diverged(self, t: int, loss: float, what: str) -> None:
        """The divergence rule: the watched loss may not exceed ``max_loss_ratio`` times its value at step 0."""
        if not self.start_loss:
            self.start_loss.append(loss)
        ratio, start, ctx = self.max_loss_ratio, self.start_loss[0], self.ctx
        if ratio is not None and loss > ratio * start:
            raise ValueError(f"step {t}: training diverged with lr = {ctx.lr:g}, beta = {ctx.beta:g}: the {what} "
                             f"loss rose from {start:.6g} at step 0 to {loss:.6g}, more than {ratio:g} times its "
                             f"start; {self.hint}")


def _step(ctx: _Context, t: int, data, idx, ref, params, opt, lr: float, accumulation: int,
          max_grad_norm: float | None) -> dict[str, float]:
    """One update: forward and backward over this process's micro-batches of the batch ``idx`` (None: the whole
    set), the batch metrics (gathered over processes), then clipping and the optimiser step."""
    _set_train_mode(ctx.model, True)
    for p in params:
        p.grad = None
    got = _backward(ctx, t, data, idx, ref, accumulation)
    row = ctx.metrics(t, "training-batch", got["losses"], got["cr"], got["rjr"], got["pc"], got["pr"])
    row.update(_extra(ctx.model, got["pc"], got["pr"], data, idx))
    row["grad_norm"] = _update(ctx, t, params, opt, lr, max_grad_norm)
    _set_train_mode(ctx.model, False)
    return row


def _backward(ctx: _Context, t: int, data, idx, ref, accumulation: int) -> dict[str, torch.Tensor]:
    """Gradients of the batch's mean loss, accumulated over micro-batches (synchronised across processes on the
    last one); the per-item values of the whole batch, gathered, for the metrics."""
    model, processes = ctx.model, ctx.processes
    if idx is None:
        parts, size = [None], _size(data)
    else:
        parts, size = torch.tensor_split(processes.share(idx), accumulation), len(idx)
    single = len(parts) == 1 and processes.world == 1
    seen = {k: [] for k in ("pc", "pr", "losses", "cr", "rjr")}
    for m, part in enumerate(parts):
        sync = m == len(parts) - 1
        with _sync(model, sync), _autocast(model):
            pc, pr = model.logps(data, part)
        rc, rr = ref if part is None else (ref[0][part], ref[1][part])
        losses, cr, rjr = ctx.losses(t, "training-batch", pc, pr, rc, rr)
        with _sync(model, sync):  # the mean over the batch, whichever process and micro-batch holds an item
            (losses.mean() if single else losses.sum() * (processes.world / size)).backward()
        for key, value in zip(seen, (pc, pr, losses, cr, rjr), strict=True):
            seen[key].append(value.detach())
    return {k: processes.gather(torch.cat(v)) for k, v in seen.items()}


def _update(ctx: _Context, t: int, params, opt, lr: float, max_grad_norm: float | None) -> float:
    """Clip and take the optimiser step; returns the gradient norm before clipping (a stop when not finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = _total_norm(grads) if grads else torch.tensor(0.0)
    if not bool(torch.isfinite(norm)):
        ctx.stop(t, "training-batch", "the gradient is not finite", f"grad_norm = {float(norm)}")
    # torch's factor, max_grad_norm / (norm + 1e-6) clamped to 1: where it is 1, multiplying changes no bit (a pass
    # over every gradient, 28 ms of a full fine-tuning step of SmolLM2)
    if max_grad_norm is not None and bool(max_grad_norm / (norm + 1e-6) < 1):
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, norm)
    if opt is None:  # plain SGD
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
    else:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return float(norm)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together. Plain CPU tensors: the square root of the sum of each flattened
    gradient's dot product with itself, in float32 or wider (on SmolLM2's 273 gradients 22 instead of 50 ms on 2
    threads, and nearer the float64 value: 8e-6 relative against torch's 3e-4, whose per-tensor norm of the
    embedding's gradient lost the digits); otherwise (GPU, distributed tensors) torch's ``get_total_norm``."""
    if not all(type(g) is torch.Tensor and g.device.type == "cpu" and g.layout == torch.strided for g in grads):
        return torch.nn.utils.get_total_norm(grads)
    flat = [g.reshape(-1) if g.dtype in (torch.float32, torch.float64) else g.reshape(-1).float() for g in grads]
    return torch.stack([torch.dot(f, f).to(flat[0].dtype) for f in flat]).sum().sqrt()


def _sync(model, sync: bool):
    """Gradient synchronisation across processes only on the last micro-batch of a step (the model's hook)."""
    hook = getattr(model, "sync_gradients", None)
    return hook(sync) if hook else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# Command line: the paper's runs at full scale (`accelerate launch -m analysis_lib.training ...`)
# ---------------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    """Train a causal LM on persona (or HH-RLHF) pairs from the command line; under ``accelerate launch`` on
    several GPUs for the paper's settings. The first process writes ``log.csv``, ``final.json`` and ``info.json``
    (and the adapter, or with ``--save-model`` the model) to ``--out``."""
    import argparse
    import json
    from pathlib import Path

    from analysis_lib.data import load_hh_rlhf_harmless, load_persona

    p = argparse.ArgumentParser(prog="python -m analysis_lib.training", description=main.__doc__.split(";")[0])
    p.add_argument("--model", default="smollm2", help="'smollm2', a hub id (e.g. meta-llama/Llama-2-7b-hf) or folder")
    p.add_argument("--trainable", default="full", choices=TRAINABLE_MODES)
    p.add_argument("--behaviours", type=int, nargs="+", default=[84], help="persona behaviour indices")
    p.add_argument("--hh-rlhf", action="store_true", help="HH-RLHF harmless-base train/test pairs, not persona")
    p.add_argument("--flip", action="store_true", help="swap chosen and rejected (misalignment)")
    p.add_argument("--start-adapter", help="a saved LoRA adapter merged into the start (and reference) model")
    p.add_argument("--loss", default="dpo", choices=LOSS_TYPES)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all processes)")
    p.add_argument("--grad-accumulation", type=int, default=1)
    p.add_argument("--epochs", type=float, default=1.0, help="steps = ceil(epochs x training pairs / batch size)")
    p.add_argument("--template", default="raw_newline", help="prompt template (official full DPO: question + newline)")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to the responses (TRL appends it)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--weights-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--save-model", action="store_true", help="also save the whole trained model")
    a = p.parse_args(argv)
    if a.hh_rlhf:  # the paper's split: train (161k pairs, from the hub) and test
        train_pairs, test_pairs = (PreferencePairs.from_hh_rlhf(load_hh_rlhf_harmless(part)) for part in
                                   ("train", "test"))
    else:
        rows = load_persona(a.behaviours, flip=a.flip, split_rule="sequential" if len(a.behaviours) > 1 else
                            "independent")
        train_pairs, test_pairs = (PreferencePairs.from_persona(rows[rows["split"] == part]) for part in
                                   ("train", "test"))
    policy = CausalLMPolicy(a.model, trainable=a.trainable, start_adapter=a.start_adapter, template=a.template,
                            append_eos=not a.no_eos, precision=a.precision, weights_dtype=a.weights_dtype,
                            gradient_checkpointing=a.gradient_checkpointing)
    steps = max(1, math.ceil(a.epochs * len(train_pairs) / a.batch_size))
    run = train(policy, train_pairs, loss=a.loss, beta=a.beta, lr=a.lr, steps=steps, batch_size=a.batch_size,
                grad_accumulation=a.grad_accumulation, seed=a.seed, progress=True,
                evaluations=[EvalSet("eval_", test_pairs, "test", every=a.eval_every)])
    if int(os.environ.get("RANK", "0")) == 0:
        a.out.mkdir(parents=True, exist_ok=True)
        run.log.to_csv(a.out / "log.csv", index=False)
        (a.out / "final.json").write_text(json.dumps(run.final, indent=1))
        info = {k: v for k, v in run.info.items() if k != "step_seconds"}
        (a.out / "info.json").write_text(json.dumps({**info, "steps": steps, "args": vars(a)}, indent=1,
                                                    default=str))
        if a.trainable == "lora":
            policy.save_adapter(a.out / "adapter")
        if a.save_model:
            policy.save(a.out / "model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
