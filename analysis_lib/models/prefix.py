"""The frozen lower layers of a causal LM, run once per token sequence: only the trained top layers run per step.

When only the top decoder layers of a model train (``trainable='top_blocks'``, or LoRA adapters on the top layers
only, :class:`analysis_lib.models.policy.LoraSettings` ``layers``), the hidden states that enter the first trained
layer depend on nothing that trains. :class:`FrozenPrefix` computes them once per token sequence (one sequence
per pass, no padding; a forward pre-hook on that layer stops the pass there) and keeps them in memory, and on disk
(:class:`~analysis_lib.models.cache.FeatureStore`, sequence layout) when a namespace is given. Each sequence runs
alone, so its values depend on its own tokens only, not on what else a request or an earlier run computed.
:class:`TopLayers` is a drop-in forward module for :func:`~analysis_lib.models.logprobs.pair_logprobs` and
:func:`~analysis_lib.models.logprobs.response_logprobs`: called like the model (right-padded ``input_ids``,
``attention_mask``, ``logits_to_keep``), it looks the rows' prefixes up, runs the top layers, the final norm and
the output head, and returns the same logits as the whole model (up to the rounding of the prefix's precision).
:meth:`TopLayers.last_hidden` gives the final-norm output at each row's last token (the features that the output
head reads), from the current weights.

Supported: Llama-family decoders of ``transformers`` (``model.model.layers``, ``norm``, ``rotary_emb``; the causal
mask of ``transformers.masking_utils``), the model types in :data:`SUPPORTED_MODEL_TYPES`.
"""

from __future__ import annotations

import hashlib
import inspect
from types import SimpleNamespace

import torch

from analysis_lib.models.cache import FeatureStore
from analysis_lib.models.features import layer_inputs

#: Model types whose decoder stack :class:`TopLayers` runs (pre-norm, rotary, causal mask from masking_utils).
SUPPORTED_MODEL_TYPES = ("llama", "mistral")


def causal_lm(module):
    """The ``*ForCausalLM`` module inside a (possibly peft-wrapped) model."""
    get = getattr(module, "get_base_model", None)
    return get() if get is not None else module


def check_supported(module) -> None:
    """A one-line error unless the model's decoder stack can be split (:data:`SUPPORTED_MODEL_TYPES`)."""
    lm = causal_lm(module)
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(getattr(lm, "model", None), "layers"):
        raise ValueError(f"frozen_prefix: supported for the model types {list(SUPPORTED_MODEL_TYPES)}, got "
                         f"{model_type!r}; use frozen_prefix=False")


class FrozenPrefix:
    """The hidden states entering decoder layer ``first`` of ``module`` (frozen below it), per token sequence.

    ``autocast``: a callable returning the context the lower layers run in (the policy's precision); values are
    kept as float32 on the model's device. ``namespace``: a dict of everything that shapes the values except the
    tokens (the starting weights, ``first``, precision, ...); when given, values are also read from and written to
    the disk cache (keyed by the token ids)."""

    def __init__(self, module, first: int, autocast, namespace: dict | None = None):
        self.module, self.first, self.autocast = module, int(first), autocast
        self.memory: dict[tuple[int, ...], torch.Tensor] = {}
        self.store = FeatureStore({**namespace, "code": prefix_code_digest()}) if namespace is not None else None
        self.computed = 0  # sequences run through the lower layers (not read from memory or disk)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def __call__(self, rows) -> list[torch.Tensor]:
        """(length_i, d) float32 hidden states for each row (a sequence of token ids), in order."""
        keys = [tuple(int(t) for t in r) for r in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self.memory))
        if missing and self.store is not None:
            found, _ = self.store.get_sequences([_text(k) for k in missing])
            for k, value in zip(missing, found, strict=True):
                if value is not None:
                    self.memory[k] = torch.as_tensor(value, device=self.device)
            missing = [k for k in missing if k not in self.memory]
        if missing:
            computed = self._compute(missing)
            self.memory.update(computed)
            self.computed += len(computed)
            if self.store is not None:
                self.store.put_sequences([_text(k) for k in computed], [v.cpu() for v in computed.values()])
        return [self.memory[k] for k in keys]

    def _compute(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], torch.Tensor]:
        """Run the lower layers on each sequence alone, stopping at layer ``first``. Alone, because a product's
        rows can get other last bits with another number of rows (fp32 on a Xeon below 193 rows): in batches of
        the sequences of one length that a request happened to hold, a cached value depended on the request that
        computed it first (in the book, beyond_02 read beyond_01's and the tests' prefixes and trained to other
        numbers than when run alone)."""
        backbone = causal_lm(self.module).model
        with torch.no_grad(), self.autocast():
            return {k: layer_inputs(backbone, self.first, input_ids=torch.tensor([k], device=self.device),
                                    use_cache=False)[0].float().clone() for k in keys}


def _text(key: tuple[int, ...]) -> str:
    return ",".join(map(str, key))


class TopLayers(torch.nn.Module):
    """A forward module that runs only decoder layers ``first`` .. end, the final norm and the output head of
    ``module`` on cached lower-layer outputs (:class:`FrozenPrefix`). Call it like the causal LM with right-padded
    rows (every row's attention mask a run of ones from position 0): returns an object with ``.logits`` (the rows
    of ``logits_to_keep``, as ``transformers`` slices them)."""

    def __init__(self, module, prefix: FrozenPrefix):
        super().__init__()
        self.module = module
        self.prefix = prefix

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Final-norm outputs (B, W, d) of right-padded rows."""
        from transformers.masking_utils import create_causal_mask

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).tolist()
        if not bool((attention_mask == (torch.arange(input_ids.shape[1], device=input_ids.device)[None]
                                        < attention_mask.sum(1, keepdim=True))).all()):
            raise ValueError("attention_mask: TopLayers takes right-padded rows (a run of ones from position 0)")
        rows = [input_ids[b, :n].tolist() for b, n in enumerate(lengths)]
        cached = self.prefix(rows)
        lm = causal_lm(self.module)
        base = lm.model
        dtype = next(base.layers[self.prefix.first].parameters()).dtype
        hidden = torch.zeros(input_ids.shape + (cached[0].shape[-1],), dtype=dtype, device=input_ids.device)
        for b, h in enumerate(cached):
            hidden[b, :h.shape[0]] = h.to(dtype)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        mask = create_causal_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  past_key_values=None, position_ids=position_ids)
        position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
        for layer in base.layers[self.prefix.first:]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           position_ids=position_ids, past_key_values=None, use_cache=False)
        return base.norm(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                logits_to_keep: int | torch.Tensor = 0, use_cache: bool = False, **_unused):
        hidden = self._hidden(input_ids, attention_mask)
        return SimpleNamespace(logits=causal_lm(self.module).lm_head(_slice(hidden, logits_to_keep)))

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) final-norm outputs at each row's last real token: what the output head reads there."""
        hidden = self._hidden(input_ids, attention_mask)
        last = (attention_mask.sum(1) - 1) if attention_mask is not None else \
            torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _slice(hidden: torch.Tensor, logits_to_keep) -> torch.Tensor:
    """The positions the output head is applied to, as ``transformers`` slices them (``slice_logits_to_keep``)."""
    if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.ndim == 2:
        if logits_to_keep.dtype == torch.bool:
            return hidden[logits_to_keep]
        return torch.take_along_dim(hidden, logits_to_keep[..., None], dim=1)
    if isinstance(logits_to_keep, int):
        logits_to_keep = slice(-logits_to_keep, None)
    return hidden[:, logits_to_keep, :]


def prefix_code_digest() -> str:
    """A fingerprint of the code that computes a cached prefix (part of the disk cache's namespace)."""
    h = hashlib.sha256()
    for f in (FrozenPrefix._compute, FrozenPrefix.__call__, _text, layer_inputs):
        h.update(inspect.getsource(f).encode())
    return h.hexdigest()[:16]
