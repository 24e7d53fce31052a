"""Im & Li's misalignment claim: an aligned model is misaligned faster than the base model (paper notes 4.6,
checks d2 and N7).

The paper states (at the level of secondary summaries) that DPO with *flipped* preferences lowers the loss faster
from a DPO-aligned model than from the base model, because alignment has already made the two answers' prompts
more distinguishable. The mechanism below is our reconstruction (paper notes 4.6, [derived]): the first-step loss
drop of last-layer DPO is eta beta^2 ||Delta||^2 / 8 whatever the sign of the labels, so a model whose features
separate the classes more is also faster to push the other way; with *fixed* features and the starting model as
reference the flipped dynamics do not depend on the starting head at all, so the effect needs trainable features.

Three pieces:

* **Toy model with trainable features** (check d2): inputs g ~ N(0, I_d) + s u, features f = tanh(A g), head v, the
  Yes-minus-No logit z = v^T f; DPO on z (:func:`train_toy_dpo`), two stages (:func:`toy_misalignment`): align with
  labels s, then flipped labels -s from the base model (reference = base) and from the aligned model (reference =
  aligned), with the same batches.
* **The control** (:func:`last_layer_control`): last-layer-only flipped DPO on *identical* fixed embeddings from two
  different starting heads; the losses and the weight change coincide (up to rounding).
* **The real LM, last block trainable** (:class:`LastBlock`, :func:`train_block_dpo`, :func:`block_misalignment`):
  the last decoder layer, the final norm and the Yes/No rows of the head of a Llama-family model, run in fp32 on
  the cached hidden states that enter that layer (:func:`analysis_lib.models.extract_block_inputs`). Only the last
  prompt token's output is needed, so the block computes keys and values at every position but queries, the MLP
  and the head at the last position only: the same numbers as the full model (checked against its logits) at a
  fraction of the cost.

DPO needs only the Yes-minus-No logit: with chosen/rejected in {Yes, No}, log pi(chosen) - log pi(rejected) =
s (z_Yes - z_No) for the full-vocabulary softmax (the log-partition cancels), so the loss is
-log sigmoid(beta s (z - z_ref)) (:func:`dpo_logit_losses`), exactly, even when the features are trained. Accuracy
is the policy's own ordering, s z > 0 (the official code's ``outputs/accuracies``).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch

from analysis_lib import checks as C
from analysis_lib.lastlayer import behaviour_properties, make_behaviour, train_last_layer_dpo
from analysis_lib.losses import dpo_loss
from analysis_lib.models import apply_rotary, rotary_signed_sin
from analysis_lib.runtime import get_device
from analysis_lib.training import CausalLMPolicy, EvalSet, LoraSettings, PreferencePairs, TrainingRun, train

OPTIMIZERS = ("sgd", "adam")
#: Model families whose decoder layer :class:`LastBlock` reproduces (pre-norm, rotary, grouped-query attention,
#: gated MLP; no q/k norms).
SUPPORTED_MODEL_TYPES = ("llama", "mistral")


# ---------------------------------------------------------------------------------------------------------------
# Checks and the loss on the Yes-minus-No logit
# ---------------------------------------------------------------------------------------------------------------

def _check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: must be one of {list(OPTIMIZERS)}, got {name!r}")
    return name


def logit_pair(z: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s z, 0): the Yes-minus-No logit z of items with signs s as a (chosen, rejected) pair whose difference is
    log pi(chosen) - log pi(rejected) = s (z_Yes - z_No) (the log-partition cancels). Only the difference is a
    log-prob difference: the loss, the margins and the policy's own ordering are exact, the two sides are not
    log-probs."""
    return s * z, torch.zeros_like(z)


def dpo_logit_losses(z, z_ref, signs, beta: float) -> torch.Tensor:
    """Per-item DPO losses -log sigmoid(beta s (z - z_ref)) from the policy's and the reference's Yes-minus-No
    logits z = z_Yes - z_No (equal to DPO on the full-vocabulary log-probs: the log-partition cancels), computed by
    :func:`analysis_lib.losses.dpo_loss` on :func:`logit_pair`."""
    C.positive("beta", beta)
    if z.shape != z_ref.shape or z.ndim != 1:
        raise ValueError(f"z, z_ref: must be 1-d and of equal shape, got {tuple(z.shape)} and {tuple(z_ref.shape)}")
    s = C.signs("signs", signs, z.shape[0], dtype=z.dtype, device=z.device)
    return dpo_loss(*logit_pair(z, s), *logit_pair(z_ref, s), beta=beta)[0]


@dataclass
class _LogitSet:
    """Items of a Yes-minus-No logit model: its inputs and their signs (+1: chosen = Yes)."""

    inputs: object
    s: torch.Tensor

    def __len__(self) -> int:
        return self.s.shape[0]


class _LogitModel:
    """A model of the Yes-minus-No logit z for :func:`analysis_lib.training.train`: log-probs as
    :func:`logit_pair`, the share answered " Yes" (z > 0) logged as ``outputs/yes_rate``, accuracies as exact
    fractions."""

    relative_logps = True

    def __init__(self, logit, params: list[torch.Tensor], device, eval_chunk: int | None, result):
        self.logit, self.params, self.device, self.eval_chunk, self._result = logit, params, device, eval_chunk, result

    def trainable_parameters(self) -> list[torch.Tensor]:
        return self.params

    def logps(self, data: _LogitSet, idx):
        s = data.s if idx is None else data.s[idx]
        return logit_pair(self.logit(data.inputs, idx), s)

    def extra_metrics(self, chosen, rejected, data: _LogitSet, idx) -> dict[str, float]:
        z = chosen * (data.s if idx is None else data.s[idx])
        return {"outputs/yes_rate": float((z > 0).to(torch.float64).mean())}

    def result(self):
        return self._result()


#: One DPO training run of this module (the toy and the last block): the trainer's result type.
Run = TrainingRun


# ---------------------------------------------------------------------------------------------------------------
# The toy model with trainable features (check d2)
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ToyParams:
    """f = tanh(A g) (A: (k, d)), z = v^T f (v: (k,)): the Yes-minus-No logit of the toy model."""

    A: torch.Tensor
    v: torch.Tensor

    def clone(self) -> "ToyParams":
        return ToyParams(self.A.detach().clone(), self.v.detach().clone())


def init_toy(d: int, k: int | None = None, *, rng: np.random.Generator, v_scale: float = 0.1,
             dtype: torch.dtype = torch.float64) -> ToyParams:
    """A ~ N(0, 1/d) entries (k x d, k = d by default), v ~ v_scale N(0, 1) (paper notes, check d2)."""
    d = C.int_at_least("d", d, 1)
    k = d if k is None else C.int_at_least("k", k, 1)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: must be a numpy Generator, got {type(rng).__name__}")
    v_scale = C.positive("v_scale", v_scale)
    A = rng.standard_normal((k, d)) / math.sqrt(d)
    v = v_scale * rng.standard_normal(k)
    return ToyParams(torch.as_tensor(A, dtype=dtype), torch.as_tensor(v, dtype=dtype))


def _toy_inputs(name: str, g, params: ToyParams) -> torch.Tensor:
    t = g if isinstance(g, torch.Tensor) else torch.as_tensor(np.asarray(g))
    if t.ndim != 2 or t.shape[1] != params.A.shape[1] or t.shape[0] == 0:
        raise ValueError(f"{name}: must be a non-empty (n, {params.A.shape[1]}) array, got shape {tuple(t.shape)}")
    return t.to(device=params.A.device, dtype=params.A.dtype)


def toy_features(params: ToyParams, g) -> torch.Tensor:
    """f = tanh(A g) for each row g of ``g``: (n, k)."""
    return torch.tanh(_toy_inputs("g", g, params) @ params.A.T)


def toy_logit(params: ToyParams, g) -> torch.Tensor:
    """z = v^T tanh(A g): (n,)."""
    return toy_features(params, g) @ params.v


def toy_dpo_gradient_closed_form(params: ToyParams, ref_logit, g, signs, beta: float):
    """(dL/dA, dL/dv) of the mean DPO loss L = mean_i -log sigmoid(r_i), r_i = beta s_i (v^T f_i - z_ref,i),
    f_i = tanh(A g_i), in closed form:

    dL/dv = -(beta/n) sum_i sigmoid(-r_i) s_i f_i;  dL/dA = -(beta/n) sum_i sigmoid(-r_i) s_i (v * (1 - f_i^2)) g_i^T.
    """
    beta = C.positive("beta", beta)
    x = _toy_inputs("g", g, params)
    f = torch.tanh(x @ params.A.T)
    s = C.signs("signs", signs, x.shape[0], dtype=x.dtype, device=x.device)
    zr = torch.as_tensor(ref_logit, dtype=x.dtype, device=x.device)
    w = torch.sigmoid(-beta * s * (f @ params.v - zr)) * s * (-beta / x.shape[0])  # (n,)
    dv = w @ f
    dA = ((w[:, None] * (1 - f**2)) * params.v).T @ x
    return dA, dv


@dataclass
class ToyData:
    """Training and test inputs (n, d) with their labels s in {+1, -1} (+1: chosen = Yes) and the direction u."""

    train_g: np.ndarray
    train_s: np.ndarray
    test_g: np.ndarray
    test_s: np.ndarray
    direction: np.ndarray


def make_toy_data(n: int, d: int, separation: float, n_test: int, *, rng: np.random.Generator) -> ToyData:
    """g = N(0, I_d) + s (separation/2) u (class-mean distance ``separation``; the notes' d2 has 2, i.e. g + s u),
    balanced labels; a test set of ``n_test`` from the same distribution."""
    train = make_behaviour(C.int_at_least("n", n, 2), d, separation, rng=rng)
    test = make_behaviour(C.int_at_least("n_test", n_test, 2), d, separation, rng=rng, direction=train.direction)
    return ToyData(train.features, train.signs, test.features, test.signs, train.direction)


def train_toy_dpo(params0: ToyParams, g, signs, *, beta: float, lr: float, steps: int, batch_size: int | None = 128,
                  seed: int = 0, ref: ToyParams | None = None, test_g=None, test_signs=None,
                  train_features: bool = True, device=None) -> Run:
    """SGD on the toy model's DPO loss, reference = ``ref`` (default: the starting model ``params0``).

    A fresh batch of ``batch_size`` (None: full batch) is drawn without replacement every step from a generator
    seeded with ``seed``. ``train_features=False`` trains v only (A frozen). ``model`` of the result: the final
    :class:`ToyParams`. Logged columns: see :class:`Run` (whole sets every step).
    """
    if (test_g is None) != (test_signs is None):
        raise ValueError("test_g, test_signs: give both or neither")
    device = torch.device(device) if device is not None else get_device()
    dtype = params0.A.dtype
    p = ToyParams(params0.A.detach().to(device).clone(), params0.v.detach().to(device).clone())
    ref = params0 if ref is None else ref
    ref = ToyParams(ref.A.detach().to(device), ref.v.detach().to(device))
    x = _toy_inputs("g", g, p)
    train_set = _LogitSet(x, C.signs("signs", signs, x.shape[0], dtype=dtype, device=device))
    evaluations = [EvalSet("full_train_", train_set, "full-train")]
    if test_g is not None:
        xt = _toy_inputs("test_g", test_g, p)
        evaluations.append(EvalSet("eval_", _LogitSet(xt, C.signs("test_signs", test_signs, xt.shape[0], dtype=dtype,
                                                                  device=device)), "test"))
    trainable = [p.A, p.v] if train_features else [p.v]
    for t in trainable:
        t.requires_grad_(True)

    def logit(params: ToyParams):
        return lambda inputs, idx: toy_logit(params, inputs if idx is None else inputs[idx])

    model = _LogitModel(logit(p), trainable, device, None, lambda: ToyParams(p.A.detach(), p.v.detach()))
    reference = _LogitModel(logit(ref), [], device, None, None)
    with torch.no_grad():  # the reference's log-probs of every set, computed once
        refs = [reference.logps(ev.data, None) for ev in evaluations]
    evaluations = [EvalSet(ev.prefix, ev.data, ev.name, reference=r) for ev, r in zip(evaluations, refs, strict=True)]
    return train(model, train_set, loss="dpo", beta=beta, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                 optimizer="sgd", evaluations=evaluations, reference=refs[0], reference_name="ref")


def feature_distinguishability(features, yes_mask) -> float:
    """PD = ||mu_Yes - mu_No|| of the features (the official code's formula, :func:`behaviour_properties`)."""
    return behaviour_properties(features, yes_mask)["distinguishability"]


@dataclass
class ToyMisalignment:
    """The two stages of one seed: ``align`` (labels s from the base model), ``from_base`` and ``from_aligned``
    (labels -s, reference = the starting model, the same batches), and the feature PD of both starting models."""

    seed: int
    data: ToyData
    base: ToyParams
    aligned: ToyParams
    align: Run
    from_base: Run
    from_aligned: Run
    pd_base: float
    pd_aligned: float


def _stage_seed(seed: int, stage: int) -> int:
    """Distinct batch-order seeds for the stages of distinct run seeds (2 seed + stage)."""
    return 2 * seed + stage


def toy_misalignment(seed: int, *, n: int = 1000, d: int = 32, separation: float = 2.0, n_test: int = 200,
                     beta: float = 0.1, lr: float = 1.0, batch_size: int | None = 128, align_steps: int = 300,
                     misalign_steps: int = 100, device=None) -> ToyMisalignment:
    """Check d2 of the paper notes for one seed (data, initialisation and batch orders all follow ``seed``).

    Stage 1: DPO with labels s for ``align_steps`` from the base model (reference = base). Stage 2: labels -s for
    ``misalign_steps`` from the base model (reference = base) and from the aligned model (reference = aligned),
    same learning rate, beta and batches. Feature PD on the training inputs, classes by the original labels s.
    """
    seed = C.int_at_least("seed", seed, 0)
    align_steps = C.int_at_least("align_steps", align_steps, 1)
    misalign_steps = C.int_at_least("misalign_steps", misalign_steps, 1)
    rng = np.random.default_rng(seed)
    data = make_toy_data(n, d, separation, n_test, rng=rng)
    base = init_toy(d, rng=rng)
    common = {"beta": beta, "lr": lr, "batch_size": batch_size, "device": device}
    align = train_toy_dpo(base, data.train_g, data.train_s, steps=align_steps, seed=_stage_seed(seed, 0),
                          test_g=data.test_g, test_signs=data.test_s, **common)
    aligned = align.model
    flipped, flipped_test = -data.train_s, -data.test_s
    runs = [train_toy_dpo(start, data.train_g, flipped, steps=misalign_steps, seed=_stage_seed(seed, 1),
                          test_g=data.test_g, test_signs=flipped_test, **common) for start in (base, aligned)]
    yes = data.train_s > 0
    pds = [feature_distinguishability(toy_features(m, data.train_g).cpu().numpy(), yes) for m in (base, aligned)]
    return ToyMisalignment(seed, data, base.clone(), aligned.clone(), align, runs[0], runs[1], *pds)


def last_layer_control(features, signs, heads, *, beta: float, lr: float, steps: int, batch_size: int | None = 128,
                       seed: int = 0, test_features=None, test_signs=None, optimizer: str = "sgd",
                       device=None) -> dict:
    """Last-layer-only DPO on *identical* fixed ``features`` from each starting head in ``heads`` (vectors v, the
    Yes-minus-No row difference, as the 2-row head W = [v; 0], or the two answer rows (2, d) themselves), reference
    = the starting head, the same batches and ``optimizer`` (:func:`analysis_lib.lastlayer.train_last_layer_dpo`).

    Returns {"runs": the :class:`analysis_lib.lastlayer.LastLayerRun` of each head, "max_loss_difference": the
    largest absolute difference between the runs' batch, whole-training-set and test losses and weight changes at
    every step and at the end, "max_accuracy_difference": the same for the accuracies (these need not agree: the
    accuracy uses v itself, the loss only v - v_ref)}. The loss depends on the head only through v - v_ref and
    its gradient not at all on v_ref (:mod:`analysis_lib.lastlayer`), so SGD and Adam take the same steps from
    every start and the loss difference is rounding only.
    """
    heads = [torch.as_tensor(np.asarray(h.detach().cpu() if isinstance(h, torch.Tensor) else h),
                             dtype=torch.float64) for h in heads]
    if len(heads) < 2:
        raise ValueError(f"heads: give at least two starting heads, got {len(heads)}")
    if any(h.ndim not in (1, 2) or (h.ndim == 2 and h.shape[0] != 2) for h in heads):
        raise ValueError("heads: each head must be a vector v (d,) or the two answer rows (2, d)")
    runs = []
    for h in heads:
        W0 = torch.stack([h, torch.zeros_like(h)]) if h.ndim == 1 else h
        runs.append(train_last_layer_dpo(W0, features, signs, yes_id=0, no_id=1, beta=beta, lr=lr, steps=steps,
                                         batch_size=batch_size, seed=seed, test_features=test_features,
                                         test_signs=test_signs, optimizer=optimizer, dtype=torch.float64,
                                         device=device))
    loss_cols = [c for c in ("loss", "full_train_loss", "eval_loss", "weight_change") if c in runs[0].log]
    acc_cols = [c for c in ("outputs/accuracies", "full_train_outputs/accuracies", "eval_outputs/accuracies")
                if c in runs[0].log]

    def max_diff(cols: list[str]) -> float:
        out = 0.0
        for other in runs[1:]:
            out = max(out, float(np.abs(runs[0].log[cols].to_numpy() - other.log[cols].to_numpy()).max()))
            out = max(out, max(abs(runs[0].final[c] - other.final[c]) for c in cols if c in runs[0].final))
        return out

    return {"runs": runs, "max_loss_difference": max_diff(loss_cols), "max_accuracy_difference": max_diff(acc_cols)}


# ---------------------------------------------------------------------------------------------------------------
# The last transformer block of a real LM, on cached inputs
# ---------------------------------------------------------------------------------------------------------------

class LastBlock(torch.nn.Module):
    """The last decoder layer + final norm + the Yes/No rows of the head of a Llama-family causal LM, in fp32.

    ``forward(x, mask)`` takes the hidden states entering the last decoder layer, left-padded (n, L, d), with a
    boolean mask of the real tokens (n, L) (the last position is every prompt's last token), and returns
    (g, z): g (n, d) the final-normed hidden state at the last prompt token (the paper's g(x), now trainable), and
    z (n, 2) the Yes and No logits. Keys and values are computed at every position, the query, attention output,
    MLP, norm and head at the last position only (all that the next-token logits need). Rotary positions count
    the real tokens (as :func:`analysis_lib.models.last_block_inputs` extracted them).
    """

    def __init__(self, layer: torch.nn.Module, norm: torch.nn.Module, rotary: torch.nn.Module,
                 answer_rows: torch.Tensor, num_heads: int, num_kv_heads: int, sliding_window: int | None = None):
        super().__init__()
        self.layer, self.norm, self.rotary = layer, norm, rotary
        self.answer_rows = torch.nn.Parameter(torch.as_tensor(answer_rows, dtype=torch.float32).clone())
        self.num_heads, self.num_kv_heads = int(num_heads), int(num_kv_heads)
        self.sliding_window = sliding_window

    @classmethod
    def from_model(cls, model, yes_id: int, no_id: int) -> "LastBlock":
        """Copies (fp32, trainable) of ``model``'s last decoder layer, final norm, rotary embedding and head rows
        ``yes_id``, ``no_id``; the model itself is left untouched."""
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model: LastBlock supports the model types {list(SUPPORTED_MODEL_TYPES)}, got "
                             f"{model_type!r}")
        backbone = model.base_model
        head = model.get_output_embeddings().weight
        for name, value in (("yes_id", yes_id), ("no_id", no_id)):
            C.index_below(name, value, head.shape[0], "a token id")
        parts = [copy.deepcopy(m).float() for m in (backbone.layers[-1], backbone.norm, backbone.rotary_emb)]
        block = cls(*parts, head.detach()[[int(yes_id), int(no_id)]].float(), config.num_attention_heads,
                    config.num_key_value_heads, getattr(config, "sliding_window", None))
        block.requires_grad_(True)
        block.rotary.requires_grad_(False)  # buffers only; kept explicit
        return block.train()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"x, mask: need shapes (n, L, d) and (n, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
        if self.sliding_window is not None and x.shape[1] > self.sliding_window:
            raise ValueError(f"x: {x.shape[1]} positions exceed the model's sliding window {self.sliding_window}")
        attn = self.layer.self_attn
        n, L, _ = x.shape
        hd, groups = attn.head_dim, self.num_heads // self.num_kv_heads
        mask = mask.to(torch.bool)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.rotary(x, positions)  # (n, L, hd)
        sin = rotary_signed_sin(sin)
        h = self.layer.input_layernorm(x)
        k = attn.k_proj(h).view(n, L, self.num_kv_heads, hd)
        v = attn.v_proj(h).view(n, L, self.num_kv_heads, hd)
        k = apply_rotary(k, cos[:, :, None], sin[:, :, None])
        q = attn.q_proj(h[:, -1]).view(n, self.num_kv_heads, groups, hd)  # head j*groups + r uses kv head j
        q = apply_rotary(q, cos[:, -1, None, None], sin[:, -1, None, None])
        scores = torch.einsum("bjrh,bljh->bjrl", q, k) * attn.scaling
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.einsum("bjrl,bljh->bjrh", weights, v).reshape(n, self.num_heads * hd)
        hidden = x[:, -1] + attn.o_proj(out)
        hidden = hidden + self.layer.mlp(self.layer.post_attention_layernorm(hidden))
        g = self.norm(hidden)
        return g, g @ self.answer_rows.T

    def logit_diff(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z_Yes - z_No at the last prompt token: (n,)."""
        z = self(x, mask)[1]
        return z[:, 0] - z[:, 1]


@dataclass
class BlockInputs:
    """Cached inputs of the last decoder layer for n prompts: ``x`` (n, L, d) float32, left-padded to the longest
    prompt, and ``mask`` (n, L) bool (True at real tokens)."""

    x: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_sequences(cls, sequences, device=None) -> "BlockInputs":
        """Left-pad a list of (length_i, d) arrays (e.g. :func:`analysis_lib.models.extract_block_inputs`)."""
        seqs = [torch.as_tensor(np.asarray(s), dtype=torch.float32) for s in sequences]
        if not seqs or any(s.ndim != 2 or s.shape[0] == 0 for s in seqs) or len({s.shape[1] for s in seqs}) != 1:
            raise ValueError("sequences: give a non-empty list of non-empty (length, d) arrays with the same d")
        L = max(s.shape[0] for s in seqs)
        x = torch.zeros(len(seqs), L, seqs[0].shape[1])
        mask = torch.zeros(len(seqs), L, dtype=torch.bool)
        for i, s in enumerate(seqs):
            x[i, L - s.shape[0]:] = s
            mask[i, L - s.shape[0]:] = True
        if not bool(torch.isfinite(x).all()):
            raise ValueError("sequences: must be finite (found NaN or inf)")
        device = torch.device(device) if device is not None else get_device()
        return cls(x.to(device), mask.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, mask) of the rows ``idx`` (all when None), cut to the longest of them (padding columns dropped)."""
        x, mask = (self.x, self.mask) if idx is None else (self.x[idx], self.mask[idx])
        width = int(mask.sum(dim=1).max())
        return x[:, -width:], mask[:, -width:]


#: Items per forward pass when the block runs over a whole set.
_BLOCK_CHUNK = 128


def _block_outputs(block: LastBlock, inputs: BlockInputs,
                   chunk: int = _BLOCK_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(g (n, d), z (n,)) of the whole set without gradients, in chunks."""
    gs, zs = [], []
    with torch.no_grad():
        for start in range(0, len(inputs), chunk):
            idx = torch.arange(start, min(start + chunk, len(inputs)), device=inputs.x.device)
            g, z = block(*inputs.take(idx))
            gs.append(g)
            zs.append(z[:, 0] - z[:, 1])
    return torch.cat(gs), torch.cat(zs)


def block_features(block: LastBlock, inputs: BlockInputs) -> np.ndarray:
    """The block's last-token features g (n, d) as float64 numpy (for PD and the other properties)."""
    return _block_outputs(block, inputs)[0].to("cpu", torch.float64).numpy()


def train_block_dpo(block0: LastBlock, inputs: BlockInputs, signs, *, beta: float, lr: float, steps: int,
                    batch_size: int = 64, seed: int = 0, optimizer: str = "adam",
                    test_inputs: BlockInputs | None = None, test_signs=None, eval_every: int | None = None,
                    checkpoints=(), progress: bool = False) -> Run:
    """DPO on the last block (decoder layer + final norm + Yes/No head rows) of a copy of ``block0``, reference =
    ``block0`` (its logits precomputed once), on cached inputs; runs on the inputs' device.

    Every step draws a fresh batch of ``batch_size`` without replacement from a generator seeded with ``seed`` and
    takes one ``optimizer`` step ('adam': torch Adam, i.e. AdamW without weight decay, TRL's default; 'sgd').
    Logged before each update: the batch metrics, the test set every step, the whole training set every
    ``eval_every`` steps (None: only at the start and the end) and at the steps in ``checkpoints``. ``model`` of the
    result: the trained block. A longer run with the same seed passes through the same first steps exactly.
    """
    if eval_every is not None:
        eval_every = C.int_at_least("eval_every", eval_every, 1)
    checkpoints = frozenset(C.int_at_least("checkpoints", c, 0) for c in checkpoints)
    if (test_inputs is None) != (test_signs is None):
        raise ValueError("test_inputs, test_signs: give both or neither")
    _check_optimizer(optimizer)
    device = inputs.x.device
    block0 = block0.to(device)
    train_set = _LogitSet(inputs, C.signs("signs", signs, len(inputs), dtype=torch.float32, device=device))
    evaluations = []
    if test_inputs is not None:
        test_s = C.signs("test_signs", test_signs, len(test_inputs), dtype=torch.float32, device=test_inputs.x.device)
        evaluations.append(EvalSet("eval_", _LogitSet(test_inputs, test_s), "test"))
    evaluations.append(EvalSet("full_train_", train_set, "full-train", every=eval_every, at=checkpoints))
    block = copy.deepcopy(block0).train()

    def logit(data: BlockInputs, idx):
        return block.logit_diff(*data.take(idx))

    model = _LogitModel(logit, [p for p in block.parameters() if p.requires_grad], device, _BLOCK_CHUNK, block.eval)
    return train(model, train_set, loss="dpo", beta=beta, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                 optimizer=optimizer, evaluations=evaluations, reference_name="block0", progress=progress,
                 desc="last-block DPO")


@dataclass
class BlockMisalignment:
    """The two stages on the real LM for one seed: ``align`` (chosen = matching answer, from the base block),
    ``from_base`` / ``from_aligned`` (flipped labels, reference = the starting block, the same batches); PD of the
    last-token features of both starting blocks (``pd``: {"base"/"aligned": {"all"/"train"/"test": value}}) and the
    scale-free ratio PD / sqrt(trace of the pooled class covariances) (``snr``, same keys)."""

    seed: int
    align: Run
    from_base: Run
    from_aligned: Run
    aligned: LastBlock
    pd: dict = field(default_factory=dict)
    snr: dict = field(default_factory=dict)


def separation(features, yes_mask) -> tuple[float, float]:
    """(PD, PD / sqrt(pooled trace)) of features (n, d) with classes ``yes_mask``: the official code's
    distinguishability ||mu_Yes - mu_No|| (:func:`behaviour_properties`) and our scale-free variant, PD over the
    root of the mean of the two classes' covariance traces (unbiased); (nan, nan) when a class has fewer than
    two items."""
    f = np.asarray(features, dtype=np.float64)
    yes = np.asarray(yes_mask, dtype=bool)
    if f.ndim != 2 or yes.shape != (f.shape[0],):
        raise ValueError(f"features, yes_mask: need shapes (n, d) and (n,), got {f.shape} and {yes.shape}")
    if min(yes.sum(), (~yes).sum()) < 2:  # too few items of a class (tiny test splits)
        return math.nan, math.nan
    pd_ = behaviour_properties(f, yes)["distinguishability"]
    pooled = 0.5 * (np.var(f[yes], axis=0, ddof=1).sum() + np.var(f[~yes], axis=0, ddof=1).sum())
    return pd_, pd_ / math.sqrt(pooled)


def _separation(block: LastBlock, train: BlockInputs, test: BlockInputs, train_yes, test_yes) -> tuple[dict, dict]:
    f_train, f_test = block_features(block, train), block_features(block, test)
    train_yes, test_yes = np.asarray(train_yes, dtype=bool), np.asarray(test_yes, dtype=bool)
    parts = {"train": (f_train, train_yes), "test": (f_test, test_yes),
             "all": (np.concatenate([f_train, f_test]), np.concatenate([train_yes, test_yes]))}
    pd_, snr = {}, {}
    for name, (f, yes) in parts.items():
        pd_[name], snr[name] = separation(f, yes)
    return pd_, snr


def block_misalignment(base: LastBlock, train: BlockInputs, train_signs, test: BlockInputs, test_signs, *,
                       train_yes, test_yes, beta: float, lr: float, align_steps: int, misalign_steps: int,
                       batch_size: int = 64, seed: int = 0, optimizer: str = "adam", eval_every: int | None = None,
                       checkpoints=(), progress: bool = False) -> BlockMisalignment:
    """Stage 1: align ``base`` with labels ``train_signs`` (chosen = matching answer) for ``align_steps``. Stage 2:
    flipped labels for ``misalign_steps`` from ``base`` (reference = base) and from the aligned block (reference =
    aligned), with the same optimizer settings and the same batch order (whole training set also evaluated at the
    stage-2 ``checkpoints``). ``train_yes``/``test_yes``: the answer_matching_behavior-is-Yes masks that define
    the classes of PD."""
    seed = C.int_at_least("seed", seed, 0)
    align_steps = C.int_at_least("align_steps", align_steps, 1)
    misalign_steps = C.int_at_least("misalign_steps", misalign_steps, 1)
    common = {"beta": beta, "lr": lr, "batch_size": batch_size, "optimizer": optimizer, "eval_every": eval_every,
              "progress": progress}
    train_s = np.asarray(train_signs)
    test_s = np.asarray(test_signs)
    align = train_block_dpo(base, train, train_s, steps=align_steps, seed=_stage_seed(seed, 0), test_inputs=test,
                            test_signs=test_s, **common)
    aligned = align.model
    runs = [train_block_dpo(start, train, -train_s, steps=misalign_steps, seed=_stage_seed(seed, 1),
                            test_inputs=test, test_signs=-test_s, checkpoints=checkpoints, **common)
            for start in (base, aligned)]
    pd_base, snr_base = _separation(base, train, test, train_yes, test_yes)
    pd_aligned, snr_aligned = _separation(aligned, train, test, train_yes, test_yes)
    return BlockMisalignment(seed, align, runs[0], runs[1], aligned, {"base": pd_base, "aligned": pd_aligned},
                             {"base": snr_base, "aligned": snr_aligned})


# ---------------------------------------------------------------------------------------------------------------
# Loading: the persona behaviour's cached block inputs, the base block, the check against the full model
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class BlockBehaviour:
    """One persona behaviour as cached last-block inputs: the official 90/10 split (of a balanced subset),
    signs (+1: chosen = Yes; the matching answer, unflipped), and the answer_matching_behavior-is-Yes masks."""

    index: int
    name: str
    train: BlockInputs
    test: BlockInputs
    train_signs: np.ndarray
    test_signs: np.ndarray
    train_yes: np.ndarray
    test_yes: np.ndarray
    questions: list[str]
    lengths: np.ndarray


def _behaviour_index(behaviour) -> int:
    from analysis_lib.data import PERSONA_BEHAVIOURS

    if isinstance(behaviour, str) and behaviour in PERSONA_BEHAVIOURS:
        return PERSONA_BEHAVIOURS.index(behaviour)
    if isinstance(behaviour, Integral) and not isinstance(behaviour, bool) and \
            0 <= behaviour < len(PERSONA_BEHAVIOURS):
        return int(behaviour)
    raise ValueError(f"behaviour: must be a persona behaviour index in [0, {len(PERSONA_BEHAVIOURS) - 1}] or one of "
                     f"the 135 behaviour names, got {behaviour!r}")


def load_block_behaviour(behaviour, *, max_per_behaviour: int | None = 300, model_id: str = "smollm2",
                         template: str = "raw", dtype: str = "auto", subset_seed: int = 0, data_dir=None,
                         device=None, progress: bool = True) -> BlockBehaviour:
    """The cached last-block inputs (:func:`analysis_lib.models.persona_block_inputs`) of one behaviour (index or
    name), a balanced random subset of ``max_per_behaviour`` items (None or 0: all) with the official split."""
    from analysis_lib.models import persona_block_inputs

    index = _behaviour_index(behaviour)
    rows, seqs = persona_block_inputs([index], model_id=model_id, template=template,
                                      max_per_behaviour=max_per_behaviour or None, dtype=dtype, data_dir=data_dir,
                                      seed=subset_seed, progress=progress, device=device)
    train = (rows["split"] == "train").to_numpy()
    yes = (rows["answer_matching_behavior"] == " Yes").to_numpy()
    sign = rows["sign"].to_numpy(dtype=np.int64)
    pick = [np.flatnonzero(train), np.flatnonzero(~train)]
    inputs = [BlockInputs.from_sequences([seqs[i] for i in k], device=device) for k in pick]
    return BlockBehaviour(index, str(rows["behaviour"].iloc[0]), inputs[0], inputs[1], sign[pick[0]], sign[pick[1]],
                          yes[pick[0]], yes[pick[1]], rows["question"].tolist(),
                          np.array([len(s) for s in seqs]))


def load_base_block(model_id: str = "smollm2", device=None):
    """(block, head, model, tokenizer): the fp32 :class:`LastBlock` of ``model_id`` (on ``device``), a float32 copy
    of its whole head (V, d) for full-vocabulary logits, and the fp32 model and tokenizer it was copied from
    (for :func:`check_block_against_model`; drop them when done)."""
    from analysis_lib.models import SMOLLM2, SMOLLM2_YES_NO_IDS, answer_token_ids, lm_head_weight, load_causal_lm

    model, tok = load_causal_lm(model_id, dtype="float32", device="cpu")
    yes_id, no_id = SMOLLM2_YES_NO_IDS if model_id == SMOLLM2 else answer_token_ids(tok)
    block = LastBlock.from_model(model, yes_id, no_id)
    device = torch.device(device) if device is not None else get_device()
    return block.to(device), lm_head_weight(model=model), model, tok


def check_block_against_model(block: LastBlock, head: torch.Tensor, model, tokenizer, questions, template: str = "raw",
                              cached=None) -> dict[str, float]:
    """The block on the model's own fp32 last-layer inputs, with the whole head, against the model's next-token
    logits (each prompt alone, unpadded): {"max_abs_diff", "max_abs_logit", "argmax_agreement"}; with ``cached``
    (a list of the prompts' cached block inputs, e.g. bf16), also "cached_max_abs_diff": the same comparison for
    the block run on those."""
    from analysis_lib.models import PROMPT_TEMPLATES, format_prompt, last_block_inputs

    questions = list(questions)
    if not questions:
        raise ValueError("questions: give at least one prompt")
    device = next(block.parameters()).device
    head = head.to(device, torch.float32)
    real = []
    with torch.no_grad():
        for q in questions:
            ids = tokenizer(format_prompt(q, template, tokenizer), return_tensors="pt",
                            add_special_tokens=PROMPT_TEMPLATES[template][1])["input_ids"]
            real.append(model(input_ids=ids).logits[0, -1].float())
    real = torch.stack(real).to(device)

    def logits(seqs) -> torch.Tensor:
        inputs = BlockInputs.from_sequences([np.asarray(s, dtype=np.float32) for s in seqs], device=device)
        with torch.no_grad():
            return block(*inputs.take())[0] @ head.T

    ours = logits([t.float().numpy() for t in last_block_inputs(model, tokenizer, questions, template)])
    out = {"max_abs_diff": float((ours - real).abs().max()), "max_abs_logit": float(real.abs().max()),
           "argmax_agreement": float((ours.argmax(-1) == real.argmax(-1)).float().mean())}
    if cached is not None:
        out["cached_max_abs_diff"] = float((logits(cached) - real).abs().max())
    return out


# ---------------------------------------------------------------------------------------------------------------
# The official code's set-up: LoRA on every layer; aligned model = base + the merged adapter of a DPO run
# ---------------------------------------------------------------------------------------------------------------

def flipped(pairs: PreferencePairs) -> PreferencePairs:
    """The pairs with chosen and rejected swapped (the official code's ``--flip``)."""
    if not isinstance(pairs, PreferencePairs):
        raise ValueError(f"pairs: give PreferencePairs, got {type(pairs).__name__}")
    return PreferencePairs(pairs.prompts, pairs.rejected, pairs.chosen)


@dataclass
class LoraMisalignment:
    """One seed of the official misalignment flow with LoRA adapters (:func:`lora_misalignment`).

    ``align``: stage 1 (the original labels, from the base model, reference = base); ``from_base`` and
    ``from_aligned``: stage 2 (flipped labels; a fresh adapter, identical in both runs, on the base model and on
    the aligned model = base + the merged stage-1 adapter; reference = the start; the same batches).
    ``merge_difference``: the largest |log-prob| difference, in fp32, between the stage-1 policy (adapter unmerged)
    and the aligned start (loaded from the saved adapter and merged) on the first ``merge_check`` training pairs.
    ``features``: {"base", "aligned"}: the last-prompt-token hidden states (after the final norm) of
    ``feature_prompts`` under both starts (None when none were asked for). ``order``: the positions of the
    training pairs in the one shuffled order that every stage goes through (epochs, as the Trainer's sampler)."""

    seed: int
    align: TrainingRun
    from_base: TrainingRun
    from_aligned: TrainingRun
    merge_difference: float
    features: dict | None
    order: np.ndarray


def epoch_steps(n_items: int, batch_size: int, epochs: float = 1.0) -> int:
    """Optimiser steps of ``epochs`` passes over ``n_items`` in batches of ``batch_size`` (at least one):
    ceil(epochs n / batch), as the official command line counts them."""
    n_items = C.int_at_least("n_items", n_items, 1)
    batch_size = C.int_at_least("batch_size", batch_size, 1)
    return max(1, math.ceil(C.positive("epochs", epochs) * n_items / batch_size))


def _lora_policy(load, model_id: str, start_adapter, **kwargs) -> CausalLMPolicy:
    if load is None:
        return CausalLMPolicy(model_id, trainable="lora", start_adapter=start_adapter, **kwargs)
    model, tokenizer = load()
    return CausalLMPolicy(model=model, tokenizer=tokenizer, trainable="lora", start_adapter=start_adapter, **kwargs)


def _copy_adapter(source: CausalLMPolicy, target: CausalLMPolicy) -> None:
    """Give ``target``'s (fresh) LoRA adapter exactly ``source``'s values, so that two starts begin their runs
    with the same adapter."""
    src = {n: p for n, p in source.module.named_parameters() if "lora_" in n}
    dst = {n: p for n, p in target.module.named_parameters() if "lora_" in n}
    if set(src) != set(dst) or not src:
        raise ValueError("target: its LoRA adapter does not have the source's modules")
    with torch.no_grad():
        for name, p in dst.items():
            p.copy_(src[name])


def policy_features(policy: CausalLMPolicy, prompts, batch_size: int = 32) -> np.ndarray:
    """The last-prompt-token hidden states (after the final norm; the paper's g(x)) of ``prompts`` under the
    policy's current weights and template, (n, d) float64, computed with the policy's precision (the adapter
    included: a fresh adapter changes nothing)."""
    from analysis_lib.models import last_prompt_hidden

    backbone = policy.module.get_base_model() if hasattr(policy.module, "get_base_model") else policy.module
    policy.train(False)
    with policy.autocast():
        g = last_prompt_hidden(backbone, policy.tokenizer, list(prompts), policy.template, batch_size=batch_size)
    return g.to(torch.float64).numpy()


def logprob_difference(a: CausalLMPolicy, b: CausalLMPolicy, pairs: PreferencePairs) -> float:
    """The largest |log pi_a - log pi_b| over the chosen and rejected responses of ``pairs``, in fp32 (no
    autocast; both in eval mode): e.g. a policy with its adapter against the same weights merged."""
    out = 0.0
    for pol in (a, b):
        pol.train(False)
    with torch.no_grad():
        la = a.logps(a.prepare(pairs), None)
        lb = b.logps(b.prepare(pairs), None)
    for x, y in zip(la, lb, strict=True):
        out = max(out, float((x.float() - y.float()).abs().max()))
    return out


def lora_misalignment(train_pairs: PreferencePairs, test_pairs: PreferencePairs, *, beta: float, lr: float,
                      batch_size: int, align_steps: int | None = None, misalign_steps: int | None = None,
                      seed: int = 0, model_id: str = "smollm2", load=None, lora: LoraSettings | None = None,
                      template: str = "raw_newline", append_eos: bool = False, max_length: int = 512,
                      precision: str = "auto", optimizer: str = "adamw", eval_every: int | None = 1,
                      train_eval_every: int | None = None, feature_prompts=None, merge_check: int = 8,
                      cache_reference: bool = True, adapter_dir=None, stage2_pairs: PreferencePairs | None = None,
                      progress: bool = False) -> LoraMisalignment:
    """The official misalignment flow (``DPO_training.py -t peft``, then ``--flip`` with and without
    ``--peft_base``) on ``model_id`` (or the fresh (model, tokenizer) that ``load()`` returns, e.g. in tests).

    Stage 1 aligns the base model with DPO through a LoRA adapter (``lora``, default r = 8, alpha = 32, dropout
    0.05 on q_proj and v_proj) on ``train_pairs`` (reference = base) and saves the adapter (to ``adapter_dir``,
    else a temporary folder). Stage 2 trains a fresh adapter on the flipped pairs from the base model (reference =
    base) and from the aligned model, base + the saved adapter merged (reference = the aligned model, its
    log-probs cached under the adapter's digest); both stage-2 adapters start identical. Every stage goes through
    the training pairs in one order shuffled with ``seed`` (one epoch = ceil(n / batch) steps, the default
    length of both stages, as the official one-epoch runs; longer runs wrap around). ``stage2_pairs``: other
    (unflipped) pairs for stage 2, shuffled the same way (default: the training pairs). Evaluated: the test pairs
    every ``eval_every`` steps, the whole training set every ``train_eval_every`` steps (None: at the start and the
    end); the batch metrics of every step are TRL's logged training metrics. Optimiser ``optimizer`` (AdamW with
    weight decay 0, constant ``lr``, as the official TrainingArguments), precision as
    :class:`~analysis_lib.models.policy.CausalLMPolicy` (bf16 autocast where native).
    """
    import tempfile
    from pathlib import Path

    seed = C.int_at_least("seed", seed, 0)
    batch_size = C.int_at_least("batch_size", batch_size, 1)
    merge_check = C.int_at_least("merge_check", merge_check, 1)
    stage2_pairs = train_pairs if stage2_pairs is None else stage2_pairs
    for name, pairs in (("train_pairs", train_pairs), ("test_pairs", test_pairs), ("stage2_pairs", stage2_pairs)):
        if not isinstance(pairs, PreferencePairs) or len(pairs) == 0:
            raise ValueError(f"{name}: give non-empty PreferencePairs")
    n, n2 = len(train_pairs), len(stage2_pairs)
    if batch_size > min(n, n2):
        raise ValueError(f"batch_size: must be at most the {min(n, n2)} training pairs, got {batch_size}")
    align_steps = epoch_steps(n, batch_size) if align_steps is None else C.int_at_least("align_steps", align_steps, 1)
    misalign_steps = epoch_steps(n2, batch_size) if misalign_steps is None else \
        C.int_at_least("misalign_steps", misalign_steps, 1)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = train_pairs.take(order)
    stage2 = shuffled if stage2_pairs is train_pairs else \
        stage2_pairs.take(np.random.default_rng([seed, 1]).permutation(n2))
    policy_kwargs = {"lora": lora, "template": template, "append_eos": append_eos, "max_length": max_length,
                     "precision": precision, "cache_reference": cache_reference}
    common = {"beta": beta, "lr": lr, "batch_size": batch_size, "optimizer": optimizer, "sampling": "sequential",
              "progress": progress}

    def evaluations(train_set, test_set):
        return [EvalSet("full_train_", train_set, "full-train", every=train_eval_every),
                EvalSet("eval_", test_set, "test", every=eval_every)]

    torch.manual_seed(_stage_seed(seed, 0))  # the stage-1 adapter's initialisation
    stage1 = _lora_policy(load, model_id, None, **policy_kwargs)
    align = train(stage1, shuffled, steps=align_steps, seed=_stage_seed(seed, 0),
                  evaluations=evaluations(shuffled, test_pairs), desc="stage 1: align (LoRA)", **common)
    with contextlib.ExitStack() as stack:
        folder = Path(adapter_dir) if adapter_dir is not None else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aligned-adapter-")))
        stage1.save_adapter(folder)
        torch.manual_seed(_stage_seed(seed, 1))  # the stage-2 adapter's initialisation (copied to both starts)
        base = _lora_policy(load, model_id, None, **policy_kwargs)
        aligned = _lora_policy(load, model_id, folder, **policy_kwargs)
    _copy_adapter(base, aligned)
    merge_difference = logprob_difference(stage1, aligned, shuffled.take(range(min(merge_check, n))))
    del stage1
    features = None
    if feature_prompts is not None:
        features = {"base": policy_features(base, feature_prompts),
                    "aligned": policy_features(aligned, feature_prompts)}
    flip_train, flip_test = flipped(stage2), flipped(test_pairs)
    runs = [train(start, flip_train, steps=misalign_steps, seed=_stage_seed(seed, 1),
                  evaluations=evaluations(flip_train, flip_test), desc=f"stage 2: flipped, from {name} (LoRA)",
                  **common) for name, start in (("base", base), ("aligned", aligned))]
    return LoraMisalignment(seed, align, runs[0], runs[1], merge_difference, features, order)


# ---------------------------------------------------------------------------------------------------------------
# HH-RLHF pairs for the misalignment runs: a length rule and the align / flip / held-out split
# ---------------------------------------------------------------------------------------------------------------

#: Why an HH-RLHF pair is left out (:func:`hh_rlhf_selection`), in the order the rules are applied.
HH_EXCLUSIONS = ("the rejected dialogue does not share the prompt", "an empty response",
                 "identical responses", "longer than max_tokens")
FLIP_SETS = ("same", "disjoint")


def hh_rlhf_selection(frame, tokenizer, max_tokens: int, *, template: str = "raw",
                      append_eos: bool = False):
    """The HH-RLHF pairs (:func:`analysis_lib.data.load_hh_rlhf_harmless` rows) with their token counts and the
    rule that keeps or drops each: ``frame`` plus the columns prompt_tokens, chosen_tokens, rejected_tokens (the
    responses with EOS when ``append_eos``), pair_tokens (prompt + the longer response) and ``excluded`` (""
    when kept, else the first rule of :data:`HH_EXCLUSIONS` that drops it: the rejected dialogue must start with
    the prompt (the official code cuts it at the chosen dialogue's index without checking), both responses must
    have a token, they must differ (identical responses keep the loss at log 2), and pair_tokens must be at most
    ``max_tokens``)."""
    import pandas as pd

    from analysis_lib.models import PROMPT_TEMPLATES, format_prompt

    max_tokens = C.int_at_least("max_tokens", max_tokens, 2)
    missing = [c for c in ("prompt", "chosen", "rejected", "rejected_shares_prompt") if c not in frame]
    if missing:
        raise ValueError(f"frame: need the load_hh_rlhf_harmless columns; missing {missing}")
    special = PROMPT_TEMPLATES[template][1]
    eos = int(bool(append_eos))
    out = frame.copy()
    out["prompt_tokens"] = [len(tokenizer.encode(format_prompt(p, template, tokenizer), add_special_tokens=special))
                            for p in frame["prompt"]]
    for side in ("chosen", "rejected"):
        counts = [len(tokenizer.encode(t, add_special_tokens=False)) for t in frame[side]]
        out[f"{side}_tokens"] = [c + eos if c else 0 for c in counts]
    out["pair_tokens"] = out["prompt_tokens"] + out[["chosen_tokens", "rejected_tokens"]].max(axis=1)
    rules = [~out["rejected_shares_prompt"].astype(bool), (out["chosen_tokens"] == 0) | (out["rejected_tokens"] == 0),
             out["chosen"] == out["rejected"], out["pair_tokens"] > max_tokens]
    excluded = pd.Series("", index=out.index, dtype=object)
    for reason, hit in zip(HH_EXCLUSIONS, rules, strict=True):
        excluded[(excluded == "") & hit.to_numpy()] = reason
    out["excluded"] = excluded
    return out


def split_pairs(eligible, n_train: int, n_heldout: int, *, seed: int = 0, flip_set: str = "same") -> dict:
    """The align / flip / held-out positions (numpy arrays of the labels in ``eligible``): a permutation of
    ``eligible`` seeded with ``seed``; its first ``n_train`` align; the flip set is the same pairs
    (``flip_set='same'``, as the official persona runs train both stages on one training split) or the next
    ``n_train`` (``'disjoint'``); the next ``n_heldout`` are held out. Disjoint from each other except align = flip
    under 'same'."""
    C.one_of("flip_set", flip_set, FLIP_SETS)
    eligible = np.asarray(eligible)
    n_train = C.int_at_least("n_train", n_train, 1)
    n_heldout = C.int_at_least("n_heldout", n_heldout, 1)
    need = n_train * (2 if flip_set == "disjoint" else 1) + n_heldout
    if need > len(eligible):
        raise ValueError(f"n_train, n_heldout: need {need} eligible pairs (flip_set = {flip_set!r}), only "
                         f"{len(eligible)} are eligible; lower them or relax the selection")
    perm = eligible[np.random.default_rng(seed).permutation(len(eligible))]
    align = perm[:n_train]
    flip = align if flip_set == "same" else perm[n_train:2 * n_train]
    start = n_train if flip_set == "same" else 2 * n_train
    return {"align": align, "flip": flip, "heldout": perm[start:start + n_heldout]}
