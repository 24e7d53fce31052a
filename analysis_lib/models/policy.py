"""A causal language model as a trainable preference policy for :func:`analysis_lib.training.train`.

:class:`CausalLMPolicy` loads a model (SmolLM2-135M-Instruct by default; any hub id or local folder, or a model
object) and chooses what trains:

* ``trainable='full'``: every parameter;
* ``'top_blocks'``: the top ``top_blocks`` decoder layers and the final norm (the embeddings, tied to the output
  head in SmolLM2, stay frozen);
* ``'head'``: only the output layer (``lm_head``), the official last-layer setting on the live model; where the
  model ties it to the input embeddings (SmolLM2) an untied copy trains, so every hidden state, and g(x), stays
  exactly as it was;
* ``'lora'``: LoRA adapters via ``peft`` (:class:`LoraSettings`; default the official code's r = 8, alpha = 32,
  dropout 0.05 on ``q_proj`` and ``v_proj``). Adapters can be saved (:meth:`CausalLMPolicy.save_adapter`), merged
  into the weights (:meth:`CausalLMPolicy.merge_adapter`: a fresh adapter then trains on top) and loaded as the
  start of a new policy (``start_adapter=folder``), so an aligned model is the start, and the reference, of a
  later run.

Its forward pass scores the chosen and the rejected response of each pair (:func:`analysis_lib.models.logprobs.
pair_logprobs`): sequence log-probs summed (DPO) or averaged (TRL's IPO; ``reduction='auto'`` picks by loss),
prompt and padding masked, logits only where they score a response token, and one forward pass per prompt when
every response is a single token (the persona " Yes"/" No"). ``append_eos``: TRL appends EOS to both responses;
the default here does not (the official last-layer setting: the answer token alone).

Precision: ``'auto'`` is bf16 autocast where the hardware computes bf16 natively (a CUDA device, or a CPU with
AVX-512 BF16 / AMX) and fp32 elsewhere; weights and optimiser state stay in ``weights_dtype`` (fp32) and log-probs
are always taken in fp32. The choice is reported in :attr:`analysis_lib.training.TrainingRun.info`.

Reference log-probs are cached on disk per pair (:class:`~analysis_lib.models.cache.FeatureStore`, atomic
shards, damaged ones moved aside), keyed by the starting weights (the model id and revision, a loaded adapter's
files, or a digest of the weights once they were changed in memory), the template, EOS, maximum length,
reduction, precision, device type, library versions and a fingerprint of the log-prob code.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from analysis_lib import checks as C
from analysis_lib.models.cache import FeatureStore, _digest, _version
from analysis_lib.models.features import PACKED_FORWARD_CODE
from analysis_lib.models.loading import (
    DTYPES,
    SMOLLM2,
    _check_model_id,
    _model_fingerprint,
    cpu_has_native_bf16,
    kernel_identity,
    load_causal_lm,
)
from analysis_lib.models.logprobs import (
    EncodedPairs,
    _check_template,
    _length_buckets,
    _packed_last_logits,
    _packed_model,
    _packed_response_logprobs,
    _padded_response_logprobs,
    _scoring_batch,
    encode_pairs,
    format_prompt,
    pair_logprobs,
    response_logprobs,
)
from analysis_lib.models.prefix import FrozenPrefix, TopLayers, check_supported, prefix_code_digest
from analysis_lib.models.prefix import causal_lm as prefix_lm

TRAINABLE = ("full", "top_blocks", "head", "lora")
PRECISIONS = ("auto", "float32", "bfloat16")
REDUCTIONS = ("auto", "sum", "mean")
#: The functions whose source determines a reference log-prob (hashed into the cache key).
LOGPROB_CODE = (encode_pairs, format_prompt, _scoring_batch, _length_buckets, response_logprobs,
                _packed_response_logprobs, _padded_response_logprobs, pair_logprobs, _packed_model,
                _packed_last_logits, *PACKED_FORWARD_CODE)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (``peft``): rank ``r``, scale ``alpha`` (the update is alpha / r times B A), dropout on the
    adapter input, and the names of the linear modules that get one. Defaults: the official code's."""

    r: int = 8
    alpha: float = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    #: Adapters only in the top ``layers`` decoder layers (None: every layer, the official code's choice).
    layers: int | None = None


@dataclass(frozen=True)
class PreferencePairs:
    """Preference pairs as text: a prompt, the chosen and the rejected response (same length, one per pair)."""

    prompts: tuple[str, ...]
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]

    def __post_init__(self):
        for name in ("prompts", "chosen", "rejected"):
            object.__setattr__(self, name, tuple(C.texts(name, getattr(self, name))))
        if not len(self.prompts) == len(self.chosen) == len(self.rejected):
            raise ValueError(f"chosen, rejected: need one of each per prompt, got {len(self.prompts)} prompts, "
                             f"{len(self.chosen)} chosen and {len(self.rejected)} rejected")

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, idx) -> "PreferencePairs":
        """The pairs at the positions ``idx`` (a slice, or a sequence of integers), in that order."""
        picked = range(len(self))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        return PreferencePairs(*([column[i] for i in picked] for column in (self.prompts, self.chosen,
                                                                             self.rejected)))

    @classmethod
    def from_persona(cls, rows: pd.DataFrame) -> "PreferencePairs":
        """Persona items (:func:`analysis_lib.data.load_persona` rows): the question as the prompt, the chosen and
        rejected answers (" Yes"/" No"; ``flip=True`` rows are already swapped)."""
        missing = [c for c in ("question", "chosen", "rejected") if c not in rows]
        if missing:
            raise ValueError(f"rows: need the load_persona columns question, chosen, rejected; missing {missing}")
        return cls(rows["question"].tolist(), rows["chosen"].tolist(), rows["rejected"].tolist())

    @classmethod
    def from_hh_rlhf(cls, frame: pd.DataFrame) -> "PreferencePairs":
        """HH-RLHF pairs (:func:`analysis_lib.data.load_hh_rlhf_harmless`): the dialogue up to its last
        "Assistant:" as the prompt, the final assistant turns as the responses (:func:`analysis_lib.data.
        split_dialogue`)."""
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in frame]
        if missing:
            raise ValueError(f"frame: need the load_hh_rlhf_harmless columns prompt, chosen, rejected; missing "
                             f"{missing}")
        return cls(frame["prompt"].tolist(), frame["chosen"].tolist(), frame["rejected"].tolist())


class CausalLMPolicy:
    """A causal LM whose chosen/rejected log-probs :func:`analysis_lib.training.train` trains (module docstring).

    ``model`` / ``tokenizer``: a model object to use instead of loading ``model_id`` (trained in place; e.g. a
    tiny random Llama in tests). ``eval_chunk``: pairs per forward pass without gradients (reference,
    evaluation). ``gradient_checkpointing``: trade compute for memory (7B models).

    ``frozen_prefix``: when only the top layers train (``trainable='top_blocks'``, or LoRA with ``lora.layers``),
    run the frozen layers below them once per token sequence and keep their output
    (:class:`~analysis_lib.models.prefix.FrozenPrefix`; on disk too, with ``cache_prefix``, for a model loaded by
    its id): every later forward pass runs only the trained layers (:class:`~analysis_lib.models.prefix.TopLayers`),
    the same numbers as the whole model up to the rounding of the prefix's precision, at a fraction of the cost.
    One process only (under ``accelerate launch`` the whole model runs).
    """

    def __init__(self, model_id: str = SMOLLM2, *, trainable: str = "full", top_blocks: int = 2,
                 lora: LoraSettings | None = None, start_adapter=None, template: str = "raw",
                 append_eos: bool = False, reduction: str = "auto", max_length: int = 512, precision: str = "auto",
                 weights_dtype: str = "float32", device=None, eval_chunk: int = 32, single_token_path: bool = True,
                 cache_reference: bool = True, gradient_checkpointing: bool = False, frozen_prefix: bool = False,
                 cache_prefix: bool = True, model=None, tokenizer=None):
        C.one_of("trainable", trainable, TRAINABLE)
        C.one_of("precision", precision, PRECISIONS)
        C.one_of("reduction", reduction, REDUCTIONS)
        C.one_of("weights_dtype", weights_dtype, list(DTYPES))
        _check_template(template)
        self.max_length = C.int_at_least("max_length", max_length, 2)
        self.eval_chunk = C.int_at_least("eval_chunk", eval_chunk, 1)
        self.top_blocks = C.int_at_least("top_blocks", top_blocks, 1)
        if (model is None) != (tokenizer is None):
            raise ValueError("model, tokenizer: give both or neither")
        self.lora = lora or LoraSettings()
        self.model_id = model_id if model is None else f"in-memory {type(model).__name__}"
        self.trainable, self.template, self.append_eos = trainable, template, bool(append_eos)
        self.reduction, self.single_token_path, self.cache_reference = reduction, single_token_path, cache_reference
        if model is None:
            _check_model_id(model_id)
            model, tokenizer = load_causal_lm(model_id, weights_dtype, device)
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._start = "weights" if self.model_id.startswith("in-memory") else _model_fingerprint(model_id)
        if start_adapter is not None:
            model = self._merged_adapter(model, Path(start_adapter))
        self.precision = _precision(precision, self.device)
        self._base_weights_dtype = weights_dtype
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.module = self._with_trainable_set(model)
        self.frozen_prefix, self.cache_prefix = C.flag("frozen_prefix", frozen_prefix), cache_prefix
        self._prefix = self._make_prefix() if self.frozen_prefix else None
        self.forward_module = self._forward_module()
        self._accelerator = None
        self._loss = "dpo"

    # -- the trainable set -------------------------------------------------------------------------------------
    def _with_trainable_set(self, model):
        if self.trainable == "lora":
            return self._with_fresh_adapter(model)
        if self.trainable == "head":
            return _with_untied_head(model)
        model.requires_grad_(self.trainable == "full")
        if self.trainable == "top_blocks":
            layers = model.base_model.layers
            if self.top_blocks > len(layers):
                raise ValueError(f"top_blocks: the model has {len(layers)} decoder layers, got {self.top_blocks}")
            for module in list(layers[-self.top_blocks:]) + [model.base_model.norm]:
                module.requires_grad_(True)
        return model

    def _with_fresh_adapter(self, model):
        from peft import LoraConfig, get_peft_model

        C.int_at_least("lora.r", self.lora.r, 1)
        C.positive("lora.alpha", self.lora.alpha)
        C.in_interval("lora.dropout", self.lora.dropout, 0, 1, high_open=True)
        names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        missing = [t for t in self.lora.targets if t not in names]
        if missing or not self.lora.targets:
            raise ValueError(f"lora.targets: the model has no linear modules named {missing or '(none given)'}; "
                             f"its linear modules are {sorted(names)}")
        layers = {}
        if self.lora.layers is not None:
            n_layers = len(model.base_model.layers)
            top = C.int_at_least("lora.layers", self.lora.layers, 1)
            if top > n_layers:
                raise ValueError(f"lora.layers: the model has {n_layers} decoder layers, got {top}")
            layers = {"layers_to_transform": list(range(n_layers - top, n_layers)), "layers_pattern": "layers"}
        config = LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                            target_modules=list(self.lora.targets), bias="none", task_type="CAUSAL_LM", **layers)
        return _with_lean_adapters(get_peft_model(model, config))

    # -- the frozen prefix -------------------------------------------------------------------------------------
    @property
    def first_trained_layer(self) -> int | None:
        """The lowest decoder layer with trainable weights (None when the embeddings train: ``'full'``)."""
        n_layers = len(prefix_lm(self.module).model.layers)
        if self.trainable == "top_blocks":
            return n_layers - self.top_blocks
        if self.trainable == "lora":
            return 0 if self.lora.layers is None else n_layers - self.lora.layers
        return None

    def _make_prefix(self) -> FrozenPrefix:
        check_supported(self.module)
        first = self.first_trained_layer
        if first is None:
            raise ValueError("frozen_prefix: needs trainable='top_blocks' or 'lora' (the embeddings train in "
                             "'full'); use frozen_prefix=False")
        namespace = None
        if self.cache_prefix and self._start != "weights":
            namespace = {"kind": "frozen_prefix", "start": self._start, "first_layer": first,
                         "weights_dtype": self._base_weights_dtype, "precision": self.precision,
                         "device": self.device.type, "analysis_lib": _version("analysis_lib"),
                         "transformers": _version("transformers"), "torch": torch.__version__.split("+")[0],
                         "kernels": kernel_identity(self.device)}
        return FrozenPrefix(self.module, first, self.autocast, namespace)

    def _forward_module(self):
        if self._prefix is None:
            return self.module
        self._prefix.module = self.module
        return TopLayers(self.module, self._prefix)

    def _merged_adapter(self, model, folder: Path):
        from peft import PeftModel

        if not (folder / "adapter_config.json").is_file():
            raise ValueError(f"start_adapter: {str(folder)!r} holds no saved adapter (adapter_config.json)")
        files = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir() if p.is_file())
        self._start = f"{self._start}+adapter:{_digest(files)[:16]}"
        return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.forward_module.parameters() if p.requires_grad]

    # -- what the trainer calls ---------------------------------------------------------------------------------
    def prepare(self, data) -> EncodedPairs:
        """Token ids of :class:`PreferencePairs` (an :class:`EncodedPairs` passes through)."""
        if isinstance(data, EncodedPairs):
            return data
        if not isinstance(data, PreferencePairs):
            raise ValueError(f"data: give PreferencePairs (e.g. PreferencePairs.from_persona(rows)), got "
                             f"{type(data).__name__}")
        return encode_pairs(self.tokenizer, data.prompts, data.chosen, data.rejected, template=self.template,
                            append_eos=self.append_eos, max_length=self.max_length)

    def begin(self, loss: str) -> None:
        self._loss = loss

    @property
    def effective_reduction(self) -> str:
        """'sum' for DPO, 'mean' for IPO (TRL's IPO averages token log-probs) unless ``reduction`` says."""
        if self.reduction != "auto":
            return self.reduction
        return "mean" if self._loss == "ipo" else "sum"

    def logps(self, data: EncodedPairs, idx):
        idx = range(len(data)) if idx is None else idx.tolist()
        return pair_logprobs(self.forward_module, data, idx, self.pad_id, self.effective_reduction,
                             self.single_token_path)

    def train(self, mode: bool) -> None:
        self.module.train(mode)

    def autocast(self):
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def distribute(self, accelerator) -> None:
        """Data-parallel (or FSDP, as the launch configures it) wrapping by accelerate (the whole model runs: no
        frozen prefix)."""
        self._accelerator = accelerator
        self.forward_module = accelerator.prepare_model(self.module)

    def sync_gradients(self, sync: bool):
        no_sync = getattr(self.forward_module, "no_sync", None)
        return contextlib.nullcontext() if sync or no_sync is None else no_sync()

    def after_step(self) -> dict[str, float]:
        self._start = "weights"  # the weights moved: a later run's reference is keyed by them
        return {}

    def tokens(self, data: EncodedPairs, idx) -> int:
        """Real tokens one forward pass over the pairs ``idx`` processes."""
        idx = range(len(data)) if idx is None else [int(i) for i in idx]
        single = self.single_token_path and data.single_token
        return data.tokens(idx, single, packed=_packed_model(self.forward_module) is not None)

    def describe(self) -> dict:
        n_train = sum(p.numel() for p in self.trainable_parameters())
        n_all = sum(p.numel() for p in self.module.parameters())
        return {"model": self.model_id, "trainable": self.trainable, "trainable_parameters": n_train,
                "parameters": n_all, "precision": "bfloat16 autocast" if self.precision == "bfloat16" else "float32",
                "reduction": self.effective_reduction, "append_eos": self.append_eos,
                "frozen_prefix_layers": None if self._prefix is None else self._prefix.first}

    def result(self) -> "CausalLMPolicy":
        return self

    # -- the reference cache -----------------------------------------------------------------------------------
    def reference_logps(self, data: EncodedPairs, compute):
        """The reference (this policy at the start of the run) log-probs of ``data``: from the disk cache, else
        ``compute()`` and stored (by the first process)."""
        if not self.cache_reference:
            return compute()
        store = FeatureStore(self.reference_namespace())
        keys = ["\x1f".join(t) for t in data.texts]
        values, missing = store.get(keys)
        if values is not None and not missing:
            return tuple(torch.as_tensor(values[:, k], device=self.device) for k in (0, 1))
        chosen, rejected = compute()
        if self._accelerator is None or self._accelerator.is_main_process:
            store.put(keys, torch.stack([chosen, rejected], dim=1).float().cpu())
        return chosen, rejected

    def reference_namespace(self) -> dict:
        """Everything that shapes a cached reference log-prob except the pair itself."""
        start = self._start if self._start != "weights" else f"weights:{self.weights_digest()}"
        return {"kind": "reference_logps", "start": start, "weights_dtype": self._base_weights_dtype,
                "template": self.template, "append_eos": self.append_eos, "max_length": self.max_length,
                "reduction": self.effective_reduction, "precision": self.precision, "device": self.device.type,
                "single_token_path": self.single_token_path, "code": _code_digest(LOGPROB_CODE),
                "frozen_prefix": None if self._prefix is None or self._accelerator is not None else
                f"{self._prefix.first}:{prefix_code_digest()}",
                "analysis_lib": _version("analysis_lib"), "transformers": _version("transformers"),
                "peft": _version("peft"), "torch": torch.__version__.split("+")[0],
                "kernels": kernel_identity(self.device)}

    def weights_digest(self) -> str:
        """sha256 of the weights that shape the outputs (a fresh LoRA adapter, whose B is zero, does not)."""
        h = hashlib.sha256()
        fresh = {name.rsplit(".lora_B", 1)[0] for name, p in self.module.named_parameters()
                 if ".lora_B" in name and not bool(p.detach().any())}
        for name, p in sorted(self.module.named_parameters()):
            if any(name.startswith(f) and (".lora_A" in name or ".lora_B" in name) for f in fresh):
                continue
            h.update(name.encode())
            t = p.detach().cpu().contiguous()
            h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        return h.hexdigest()[:24]

    # -- features of the current weights ----------------------------------------------------------------------
    def last_prompt_hidden(self, data, idx=None) -> torch.Tensor:
        """(n, d) float32 features of the current weights: the final-norm output at the last prompt token of the
        pairs ``idx`` (all when None) of ``data`` (:class:`PreferencePairs` or their encoding), i.e. what the
        output head reads to score a single-token answer (the paper's g(x) of this policy). Computed now, without
        gradients and without any cache (the weights may have been trained)."""
        data = self.prepare(data)
        idx = range(len(data)) if idx is None else [int(i) for i in idx]
        out = []
        with torch.no_grad(), self.autocast():
            for start in range(0, len(idx), self.eval_chunk):
                chunk = list(idx)[start:start + self.eval_chunk]
                rows = [(list(data.prompt_ids[i]), []) for i in chunk]
                ids, attention, _, _, _ = _scoring_batch(rows, self.pad_id, self.device)
                if isinstance(self.forward_module, TopLayers):
                    hidden = self.forward_module.last_hidden(ids, attention)
                else:
                    states = prefix_lm(self.forward_module).model(input_ids=ids, attention_mask=attention,
                                                                  use_cache=False).last_hidden_state
                    hidden = states[torch.arange(len(chunk), device=states.device), attention.sum(1) - 1]
                out.append(hidden.float())
        return torch.cat(out) if out else torch.empty(0, self.module.config.hidden_size)

    # -- adapters and checkpoints ------------------------------------------------------------------------------
    def save_adapter(self, folder) -> Path:
        """Save the LoRA adapter (``peft``'s format) to ``folder``; start a later policy from it with
        ``start_adapter=folder``."""
        if self.trainable != "lora":
            raise ValueError(f"trainable: saving an adapter needs trainable='lora', this policy trains "
                             f"{self.trainable!r} (use save)")
        folder = Path(folder)
        self.module.save_pretrained(str(folder))
        return folder

    def merge_adapter(self) -> None:
        """Fold the LoRA adapter into the weights; a fresh adapter then trains on top, and the merged model is the
        start (and the reference) of the next run."""
        if self.trainable != "lora":
            raise ValueError(f"trainable: merging needs trainable='lora', this policy trains {self.trainable!r}")
        self.module = self._with_fresh_adapter(self.module.merge_and_unload())
        self.forward_module = self._forward_module()
        self._start = "weights"

    def save(self, folder) -> Path:
        """Save the whole model (adapters merged into a copy) and the tokenizer: a local folder for ``model_id``."""
        folder = Path(folder)
        module = self.module
        if self.trainable == "lora":
            import copy

            module = copy.deepcopy(self.module).merge_and_unload()
        module.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return folder


class PortableDropout(torch.nn.Module):
    """Dropout (``nn.Dropout``'s inverted form: each entry dropped independently with probability ``p``, kept ones
    scaled by 1 / (1 - p)) whose mask is the same on every processor and for every dtype, and cheap to draw.
    ``nn.Dropout`` draws its CPU mask with ``bernoulli_``, which uses MKL's generator on Intel processors and torch's
    own on others, so the same seed gave different LoRA runs on Intel and AMD machines. Here the dropped entries'
    flat positions come from torch's own generator as a Bernoulli process: the gaps between successive drops are
    geometric draws (``geometric_``), one draw per dropped entry (about p n) instead of one per entry, which on
    SmolLM2's LoRA steps made the masks 4x cheaper."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def dropped(self, n: int, device=None) -> torch.Tensor:
        """The flat positions (int64, increasing) among ``n`` entries that this call drops."""
        expected = n * self.p
        chunk = int(expected + 8 * math.sqrt(expected) + 32)
        parts, last = [], -1
        while last < n - 1:
            positions = torch.empty(chunk, dtype=torch.int64, device=device).geometric_(self.p).cumsum_(0) + last
            parts.append(positions)
            last = int(positions[-1])
        positions = parts[0] if len(parts) == 1 else torch.cat(parts)
        return positions[:int(torch.searchsorted(positions, n))]  # increasing: those below n, as a view

    def zero_dropped(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the dropped entries set to 0 (not rescaled)."""
        # index_put: a copy and a scatter each way (index_fill's own function and gradient, in about half the time)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return x.reshape(-1).index_put((self.dropped(x.numel(), x.device),), zero).view(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return self.zero_dropped(x) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _lean_lora_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    """A plain LoRA linear layer's output, W x + b + (alpha / r) B A dropout(x), in three products: the adapter's
    up-projection adds into the base output with ``addmm``, and the scales (alpha / r and dropout's 1 / (1 - p))
    ride on its ``alpha``. The same function as peft's forward pass with fewer passes over the activations (no
    separate scaling, sum or mask scaling: about 0.01 s of a 1 s SmolLM2 LoRA step); None where the layer is not
    the plain case (merged, disabled, several adapters, a LoRA variant, another dropout), which peft computes."""
    adapters = layer.active_adapters
    if layer.disable_adapters or layer.merged or len(adapters) != 1 or adapters[0] not in layer.lora_A \
            or adapters[0] in layer.lora_variant or type(layer.base_layer) is not torch.nn.Linear:
        return None
    name = adapters[0]
    if x.dtype != layer.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type):
        return None
    dropout, scale = layer.lora_dropout[name], layer.scaling[name]
    if isinstance(dropout, PortableDropout) and dropout.training and dropout.p > 0:
        dropped, scale = dropout.zero_dropped(x), scale / (1 - dropout.p)
    elif isinstance(dropout, (torch.nn.Identity, PortableDropout)):
        dropped = x
    else:
        return None
    # the products on the rows as a matrix: the up-projection then adds into the base output itself, in place (the
    # base product's output is not needed by any backward pass; an in-place product on a view of it would cost the
    # backward pass two copies of the output's gradient)
    base = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), layer.base_layer.weight, layer.base_layer.bias)
    down = torch.nn.functional.linear(dropped.reshape(-1, x.shape[-1]), layer.lora_A[name].weight)
    up = layer.lora_B[name].weight.to(down.dtype)  # in-place products are not autocast: cast as autocast would
    return base.addmm_(down, up.t(), alpha=scale).view(*x.shape[:-1], base.shape[-1])


_LEAN_LORA_CLASSES: dict[type, type] = {}


def _lean_lora_class(peft_linear: type) -> type:
    """peft's LoRA ``Linear`` with :func:`_lean_lora_forward` in the plain case (one class, made once: peft is
    imported only when a LoRA policy is built)."""
    if peft_linear not in _LEAN_LORA_CLASSES:
        def forward(self, x, *args, **kwargs):
            out = None if args or kwargs else _lean_lora_forward(self, x)
            return peft_linear.forward(self, x, *args, **kwargs) if out is None else out

        _LEAN_LORA_CLASSES[peft_linear] = type("LeanLoraLinear", (peft_linear,), {
            "forward": forward, "__module__": __name__, "__doc__": _lean_lora_class.__doc__})
    return _LEAN_LORA_CLASSES[peft_linear]


def _with_lean_adapters(model):
    """``model`` with every ``nn.Dropout`` of its LoRA adapters replaced by :class:`PortableDropout` and every
    plain peft LoRA ``Linear`` computing :func:`_lean_lora_forward`."""
    from peft.tuners.lora.layer import Linear

    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout):
                    dropouts[name] = PortableDropout(dropout.p)
        if type(module) is Linear:
            module.__class__ = _lean_lora_class(Linear)
    return model


def _with_untied_head(model):
    """``model`` with only its output layer trainable; a head tied to the input embeddings is replaced by a copy
    (the official last-layer code trains a separate copy of ``lm_head``), so training it cannot move the inputs."""
    model.requires_grad_(False)
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.nn.Parameter):
        raise ValueError(f"trainable: 'head' needs a model with an output layer (get_output_embeddings), "
                         f"{type(model).__name__} has none")
    inputs = model.get_input_embeddings()
    if inputs is not None and head.weight is inputs.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    head.weight.requires_grad_(True)
    return model


def _precision(precision: str, device: torch.device) -> str:
    """'bfloat16' (autocast) or 'float32': 'auto' is bf16 where the hardware computes it natively."""
    if precision != "auto":
        return precision
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return "bfloat16" if native else "float32"


def _code_digest(functions) -> str:
    h = hashlib.sha256()
    for f in functions:
        h.update(inspect.getsource(f).encode())
    return h.hexdigest()[:16]
