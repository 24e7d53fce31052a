"""Cached features: the frozen model's hidden states for the book's prompts, computed once and read from disk.

* :func:`extract_features` returns the paper's g(x) at the last prompt token under one of two definitions
  (:data:`FEATURE_DEFINITIONS`, ``definition=``): 'final_norm' (the default), the final hidden state after the
  model's final norm, so ``lm_head(g)`` are the model's real next-token logits; or 'double_norm', the official
  code's, which applies the RMSNorm and the final norm's weight a second time (:func:`second_rms_norm`, derived
  from the cached 'final_norm' features, never a second forward pass). Prompts are never padded (so a prompt's
  features do not depend on the rest of the request): they are grouped by token length, and for Llama-family
  models the groups of up to :data:`PACK_PROMPTS` prompts / :data:`PACK_TOKENS` rows run as one packed token
  matrix (:func:`_packed_forward`: matrix products over all their tokens, attention per length group; the
  persona question that prompts begin with, :func:`~analysis_lib.models.logprobs.shared_prefix_ids`, computed
  once per pass), in bf16 where the hardware supports it natively (else fp32). Cached on disk per prompt, keyed
  by model (and hub revision), template, dtype, definition, library versions and a fingerprint of the extraction
  code itself (:data:`FEATURE_CODE`), so chapters share what any of them computed and a change to that code never
  serves stale features. :func:`persona_features` aligns them with :func:`analysis_lib.data.load_persona` rows.
* Block inputs (a second cached-feature kind): :func:`extract_block_inputs` returns, per prompt, the hidden
  states entering the **last decoder layer** at every prompt token ((length, d), same dtype rule, same cache
  machinery with its own kind and code fingerprint :data:`BLOCK_INPUT_CODE`), so the last block can be trained
  on cached inputs (:mod:`analysis_lib.misalignment`). :func:`persona_block_inputs` aligns them with persona rows.
* :func:`encode_sentences`: all-MiniLM-L6-v2 embeddings, cached the same way; :func:`zero_shot_yes_no` summarises
  a model's zero-shot answers from (" Yes", " No") log-probs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import math

import numpy as np
import torch

from analysis_lib.models.cache import FeatureStore, _decode, _encode, _version, cached_rows, fill_rows
from analysis_lib.models.loading import (
    MINILM_DIM,
    MINILM_DISTRIBUTION,
    SMOLLM2,
    _check_model_id,
    _dtype_name,
    _inference_model,
    _model_fingerprint,
    feature_dtype,
    hidden_size,
    kernel_identity,
    load_sentence_encoder,
)
from analysis_lib.models.logprobs import (
    PROMPT_TEMPLATES,
    SHARED_PROMPT_PREFIX,
    _check_batch_size,
    _check_template,
    _check_texts,
    _default_tokenizer,
    _model_device,
    _position_ids,
    _progress,
    _progress_bar,
    _same_length_batches,
    _shared_prefix_ids,
    _shares_prefix,
    format_prompt,
    shared_prefix_ids,
)
from analysis_lib.runtime import default_threads, get_device, keep_freed_memory, timed, torch_threads

#: Bump when the meaning or layout of cached features changes.
FEATURES_FORMAT = 1


#: The definitions of g(x) that :func:`extract_features` offers (``definition=``); part of the feature-cache key.
FEATURE_DEFINITIONS = {
    "final_norm": "the hidden state after the model's final norm at the last prompt token (Hugging Face's "
                  "last_hidden_state, which equals hidden_states[-1]); lm_head(g) are the model's own next-token "
                  "logits",
    "double_norm": "the official code's g(x): the same state with an RMSNorm (eps 1e-5) and the final norm's "
                   "weight applied a second time; lm_head(g) are not the model's logits",
}
#: The library's default definition: the model's own g(x) (its unembedding gives the model's real answer
#: log-probs, so the reference policy of last-layer DPO is the model itself).
DEFAULT_FEATURE_DEFINITION = "final_norm"
#: The epsilon of the official code's second RMSNorm (hard-coded there; also Llama-2's and SmolLM2's own).
OFFICIAL_SECOND_NORM_EPS = 1e-5


def _check_definition(definition) -> str:
    if definition not in FEATURE_DEFINITIONS:
        raise ValueError(f"definition: must be one of {list(FEATURE_DEFINITIONS)}, got {definition!r}")
    return definition


def second_rms_norm(features, weight, eps: float = OFFICIAL_SECOND_NORM_EPS) -> np.ndarray:
    """The official code's extra norm of g(x) ('double_norm' from 'final_norm' features): per row,
    ``g * rsqrt(mean(g^2) + eps) * weight`` with the final norm's ``weight``, the operations of
    ``last_layer_training.py`` in their order, in float32 (the official training scripts run in float32).
    Returns an (n, d) float32 array."""
    g = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    w = torch.as_tensor(weight).detach().to(torch.float32).cpu()
    if g.ndim != 2 or w.shape != (g.shape[1],):
        raise ValueError(f"features, weight: need shapes (n, d) and (d,), got {tuple(g.shape)} and {tuple(w.shape)}")
    return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps) * w).numpy()


#: At most this many prompts per forward pass of :func:`last_prompt_hidden` (the default of every feature request):
#: persona prompts compute about 15 rows each after the shared prefix, so about 550 of them fill a pass.
PACK_PROMPTS = 1024
#: At most this many computed rows (tokens) per forward pass: packed matrix products of about this many rows run
#: near the machine's dense matmul throughput, the activations stay small (the pass's q and attention output:
#: 8192 x 576 x 4 B = 19 MB each in fp32; the norms' and the MLP's are a block's), and a full pass is a whole number
#: of blocks (:data:`PACK_ROW_BLOCKS`).
PACK_TOKENS = 8192
#: Rows per matrix product of an inference pass, per dtype. How many rows a product has may change the kernel
#: that computes it, and with it a row's last bits: measured in float32 below 12 rows on an AMD EPYC and below 193
#: rows on an Intel Xeon (MKL splits the sum of SmolLM2's down projection between threads); in bfloat16 on a Xeon
#: with AMX (oneDNN) below about 1,536 rows per thread (3,070 rows with 2 threads, 6,128 with 4), and at some
#: sizes above. So every product of :func:`_packed_forward` without gradients runs on blocks of exactly this many
#: rows (a pass is filled up with zero rows to a multiple of it; they never reach a prompt): the same shape, the
#: same kernel, and a row's result depends on that row only, whatever else the request holds. The sizes are the
#: smallest near full speed on 2 threads of that Xeon: float32 products in blocks of 512 rows ran within 6% of
#: blocks of 2,048 (2% with AVX2 only), and 1,000 persona prompts took as long, while a request of 32 prompts
#: (about 700 rows) took half the time (0.93 instead of 1.73 s; AVX2: 1.30 instead of 2.61 s), with the same bits;
#: bfloat16 blocks of 1,024 / 2,048 / 4,096 rows at 1,130 / 1,460 / 1,970 GFLOP/s, whole 8,192-row products at 2,050.
PACK_ROW_BLOCKS = {"float32": 512, "bfloat16": 4096}


def pack_row_block(dtype) -> int:
    """The rows per block of an inference pass's products in ``dtype`` (:data:`PACK_ROW_BLOCKS`; 512 for others)."""
    return PACK_ROW_BLOCKS.get(str(dtype).removeprefix("torch."), 512)


#: Decoder-layer classes whose forward pass :func:`_packed_forward` reproduces operation by operation.
PACKED_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer")


def _packable(model) -> bool:
    """Whether :func:`_packed_forward` applies: a Llama or Mistral decoder with SDPA or eager attention."""
    backbone = model.base_model
    layers = getattr(backbone, "layers", None)
    if not layers or not all(hasattr(backbone, a) for a in ("embed_tokens", "rotary_emb", "norm")):
        return False
    config = backbone.config
    return (all(type(layer).__name__ in PACKED_LAYERS for layer in layers)
            and all(hasattr(layer.mlp, a) for layer in layers for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"))


def _embed(model, ids: torch.Tensor) -> torch.Tensor:
    """The input embeddings of ``ids`` (the model's embedding module). When the embedding matrix is trained and tied
    to the output layer, in one process, the rows' gradients are added into the matrix's gradient in place
    (:class:`_TiedEmbeddingRows`): autograd would otherwise sum the output layer's dense gradient and the
    embedding's into a new matrix of the whole vocabulary (a dense embedding gradient fills a zero matrix of that
    size too; a sparse one is added out of place: a copy of SmolLM2's 113 MB per full fine-tuning step, 25 ms on a
    2-core Xeon)."""
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    if not (torch.is_grad_enabled() and embedding.weight.requires_grad and output is not None
            and output.weight is embedding.weight and type(embedding) is torch.nn.Embedding
            and embedding.max_norm is None and not embedding.scale_grad_by_freq and not _distributed()):
        return embedding(ids)
    return _TiedEmbeddingRows.apply(torch.empty(0, requires_grad=True), embedding, ids)


def _distributed() -> bool:
    """Whether this process is one of several (their gradient hooks must see every contribution)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _TiedEmbeddingRows(torch.autograd.Function):
    """Rows ``ids`` of an embedding matrix that is tied to the output layer; the backward pass adds their gradients
    into the matrix's ``.grad`` in place (``index_add_``) and returns no gradient to autograd. The matrix is not an
    input of the function (``anchor``, an empty tensor that requires a gradient, makes the output differentiable),
    so the matrix's gradient accumulator need not wait for this function: it takes the output layer's gradient as it
    comes, and the two contributions add in either order. In one process only (:func:`_embed`): under DDP the
    gradient hooks fire on the accumulator, before this addition."""

    @staticmethod
    def forward(ctx, anchor, embedding, ids):
        ctx.embedding, ctx.ids = embedding, ids
        return torch.nn.functional.embedding(ids, embedding.weight.detach(), embedding.padding_idx)

    @staticmethod
    def backward(ctx, grad):
        weight, ids = ctx.embedding.weight, ctx.ids.reshape(-1)
        rows = grad.reshape(ids.numel(), -1).to(weight.dtype)
        if ctx.embedding.padding_idx is not None:
            rows = rows.masked_fill((ids == ctx.embedding.padding_idx)[:, None], 0)
        with torch.no_grad():
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
            weight.grad.index_add_(0, ids, rows)
        return None, None, None


def _packed_forward(model, groups: list[torch.Tensor], prefix: list[int] | None = None,
                    blocks: bool = True) -> torch.Tensor:
    """The final hidden state (after the final norm) at the last token of every prompt of ``groups``, a list of
    (B_g, L_g) token-id tensors (each group one token length, no padding): (sum B_g, d) in group order.

    The same operations as the model's own forward pass of each group, in the same order and dtype, except that
    every per-token operation (embedding, norms, the q/k/v/o and MLP projections, residuals) runs once on the
    tokens of all groups stacked into one matrix (so the matrix products have thousands of rows and run near the
    machine's matmul throughput), while attention runs per group on (B_g, heads, L_g, head_dim), through the
    model's own rotary embedding and attention function (transformers' SDPA as the torch call it makes, on the
    key/value heads as they are: :func:`_grouped_attention`), causal. A prompt's result therefore does not depend on
    the other prompts: a row of a matrix product depends only on that row (the products run on blocks of
    :func:`pack_row_block` rows; a pass is filled up with zero rows to a multiple of it), and attention never mixes
    prompts. ``blocks=False`` (the trainer's passes, whose values need not be independent of their batch): the
    products run whole, with no zero rows.

    ``prefix``: token ids that many prompts begin with (:func:`shared_prefix_ids`). Its tokens are computed once
    per pass, as a sequence of their own, and every prompt that begins with them and is longer computes only its
    remaining tokens, attending to the prefix's keys and values (positions continue after the prefix). Whether a
    prompt takes this route depends on its own tokens only, so its result is still independent of the request.

    With gradients enabled (the trainer's single-token path) attention instead runs in a few calls, each for a
    bucket of sequences of similar lengths padded to its longest and masked (:func:`_padded_attention`): the same
    values up to rounding, and about a tenth as many operations to differentiate as per length group (a step of 16
    persona pairs had about 100,000 with one call per length); a training step's
    values need not be bitwise independent of the rest of its batch, so a small training pass is not filled up
    with zero rows either (a LoRA step of 4 persona prompts: 0.59 -> 0.44 s)."""
    pieces, rows = _prefix_pieces(groups, prefix)
    last, start = torch.empty(sum(g.shape[0] for g in groups), dtype=torch.long), 0
    for (piece, _), prompts in zip(pieces, rows, strict=True):
        b, s = piece.shape
        if prompts is not None:
            last[prompts] = start + torch.arange(b) * s + s - 1
        start += b * s
    # the prefix (when any prompt uses it) is the first piece: its rows are the context of every piece after it
    return _packed_hidden(model, [(piece, skip, [0] * piece.shape[0] if skip else None) for piece, skip in pieces],
                          last, blocks)


def _packed_hidden(model, pieces, keep: torch.Tensor, blocks: bool = True, one_attention: bool = False,
                   stop_before_last: bool = False):
    """The final hidden state (after the final norm) at the packed rows ``keep`` of a packed pass over ``pieces``:
    [(ids (b, s), skip, contexts)], b sequences of s tokens each, at positions skip .. skip + s - 1, whose tokens
    are the packed rows in piece order; ``contexts`` None, or for each sequence the packed row where its context
    begins (``skip`` tokens, computed earlier in the same pass: a shared prefix, or the prompt of a response) that
    it attends to before its own tokens. The inference route (no gradients and not ``one_attention``) attends per
    piece and allows only contexts at row 0 (the first piece, a shared prefix); see :func:`_packed_forward`.
    ``stop_before_last``: instead, the hidden states entering the last layer at every packed row (``keep`` unused)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    backbone = model.base_model
    config = backbone.config
    device = _model_device(model)

    layer0 = backbone.layers[0]
    module = sys.modules[type(layer0.self_attn).__module__]
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, module.eager_attention_forward)
    extra = {"sliding_window": getattr(config, "sliding_window", None)} \
        if type(layer0).__name__ == "MistralDecoderLayer" else {}
    spans, start = [], 0  # (first row, sequences, rows per sequence, positions skipped, context rows)
    for piece, skip, contexts in pieces:
        b, s = piece.shape
        spans.append((start, b, s, skip, contexts))
        start += b * s
    tokens = start
    sizes = [b * s for _, b, s, _, _ in spans]
    if device.type == "cpu":
        # glibc otherwise gives the memory of each freed block-sized intermediate back and faults fresh pages in
        # for the next (a bf16 block's norm computes in fp32: 9 MB per call); keeping it made bf16 feature
        # passes about 20% faster on a 2-core Xeon (500 persona prompts: 106-115 -> 134-141 prompts/s); the
        # values do not change
        keep_freed_memory()
    # Every operation on the process's threads. (Earlier only the products did, the rest on one thread; on a
    # 2-core Xeon all on 2 threads ran 1,000 persona prompts at 152 instead of 92 prompts/s in bf16, 55 instead
    # of 48 in fp32. Every other operation is per row or per prompt, so the threads do not change its bits.)
    x = _embed(model, torch.cat([piece.reshape(-1) for piece, _, _ in pieces]).to(device))
    block, blockwise = pack_row_block(x.dtype), blocks and not torch.is_grad_enabled()
    if blockwise:
        x = _filled_to_blocks(x, block)
    # cos and sin of each token's position: computed per length n for positions 0 .. n-1, exactly as the
    # model's own forward pass of one prompt does, then copied to every token of that length
    rope, cos, sin = {}, [], []
    for _, b, s, skip, _ in spans:
        n = skip + s
        if n not in rope:
            rope[n] = backbone.rotary_emb(x, torch.arange(n, device=device)[None])
        cos.append(rope[n][0][:, skip:].expand(b, -1, -1).reshape(b * s, -1))
        sin.append(rope[n][1][:, skip:].expand(b, -1, -1).reshape(b * s, -1))
    cos, sin = torch.cat(cos)[:, None], rotary_signed_sin(torch.cat(sin))[:, None]  # (tokens, 1, head_dim)
    masks = {}  # the attention masks, built once for all layers
    # training: the sequences in a few padded attention calls (far fewer operations to differentiate); inference:
    # attention per length group, so that a prompt's features do not depend on the rest of the request
    layout = _padded_layout(spans, device) if torch.is_grad_enabled() or one_attention else None
    if layout is not None:  # transformers' SDPA repeats the key/value heads when there is a mask; torch's need not
        layout["sdpa"] = config._attn_implementation == "sdpa"
    keep = keep.to(device)
    for layer in backbone.layers[:-1] if stop_before_last else backbone.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if blockwise:  # the norm and the products per block of rows
            q, k, v = _attention_inputs_in_blocks(layer, x, block, tokens)
        else:
            h = layer.input_layernorm(x)
            q, k, v = (proj(h) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        # (tokens, heads, head_dim) is the memory layout of the model's (B, L, heads, head_dim): the rotary
        # embedding is elementwise, so one call for all tokens gives each element the same value
        q, k, v = (_first_rows(t, tokens).view(tokens, -1, attn.head_dim) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if layout is not None:
            out = _padded_attention(attention, attn, (q, k, v), layout, masks, extra)
        else:
            out = _grouped_attention(attention, attn, (q, k, v), spans, sizes, masks, extra,
                                     sdpa=config._attn_implementation == "sdpa" and not extra)
        rows = tokens
        if layer is backbone.layers[-1]:
            # the last layer: only the kept rows go on (a row's o_proj, residual and MLP need only that row; the
            # other rows' keys and values were used above). Skipping the rest saved 2.8% of a feature pass's
            # products; a kept row's result is unchanged (in blocks, a row's product does not depend on the others)
            out, x, rows = out[keep], x[keep], len(keep)
            if blockwise:
                out, x = _filled_to_blocks(out, block), _filled_to_blocks(x, block)
        elif tokens < x.shape[0]:
            out = torch.cat([out, out.new_zeros(x.shape[0] - tokens, out.shape[1])])
        if blockwise:  # the residual stream updated in place, block by block
            x = _rest_of_layer_in_blocks(layer, x, out, block, rows)
        else:
            x = x + attn.o_proj(out)
            h = layer.post_attention_layernorm(x)
            # the MLP's own forward: down(act(gate(h)) * up(h))
            x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
    return x[:tokens] if stop_before_last else backbone.norm(x[:len(keep)])


def _attention_inputs_in_blocks(layer, x: torch.Tensor, block: int, real: int) -> list[torch.Tensor]:
    """q, k and v (rows, features each) of a decoder layer: its input norm and the three products on each block of
    ``block`` rows of ``x`` (a multiple of it), a plain ``Linear``'s product written into its output in place.
    Without gradients only: an inference pass has thousands of rows (an fp32 MLP activation of 8,192 rows is 50 MB,
    which the allocator maps afresh, page by page, at every operation); a block's activations stay small and in the
    caches. Every operation is per row, so the values are those of one call on all rows. Only the first ``real``
    rows are the pass's (the rest fill the last block, :func:`_filled_to_blocks`): the norm runs on those alone and
    the fill rows enter the products as zeros (:func:`_real_rows`); the caller reads the first ``real`` rows."""
    attn = layer.self_attn
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    outs = [x.new_empty(x.shape[0], p.out_features) if _plain(p, x) else None for p in projections]
    for start in range(0, x.shape[0], block):
        n = _real_rows(start, block, real)
        h = _filled_to_blocks(layer.input_layernorm(x[start:start + n]), block)
        for i, p in enumerate(projections):
            if outs[i] is not None and _plain(p, h):
                _product(p, h, outs[i][start:start + block])
            else:
                result = p(h)
                if outs[i] is None:
                    outs[i] = result.new_empty(x.shape[0], result.shape[1])
                outs[i][start:start + block] = result
    return outs


def _plain(linear, t: torch.Tensor) -> bool:
    """Whether ``linear`` on ``t`` is a plain product in the weight's dtype (a ``Linear``, no autocast)."""
    return type(linear) is torch.nn.Linear and t.dtype == linear.weight.dtype \
        and not torch.is_autocast_enabled(t.device.type)


def _product(linear, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(rows)`` for a block of an inference pass's rows; a plain ``Linear`` (:func:`_plain`) as
    ``torch.mm`` (into ``out`` when given), then the bias added."""
    if not _plain(linear, rows):
        return linear(rows)
    out = torch.mm(rows, linear.weight.t(), out=out)
    return out if linear.bias is None else out.add_(linear.bias)


def _rest_of_layer_in_blocks(layer, x: torch.Tensor, attended: torch.Tensor, block: int,
                             real: int) -> torch.Tensor:
    """A decoder layer after attention, ``x + o_proj(attended)`` and then its MLP with the residual, on each block
    of ``block`` rows, the residual stream ``x`` updated in place (without gradients only; see
    :func:`_attention_inputs_in_blocks`).
    The same operations per row as the layer's own forward pass (torch's or transformers' SiLU runs in place).
    The products run on whole blocks; every per-row operation (residual adds, norm, activation) only on the first
    ``real`` rows, the pass's own (:func:`_real_rows`): the fill rows of ``x`` are left as they are."""
    attn, mlp = layer.self_attn, layer.mlp
    for start in range(0, x.shape[0], block):
        n = _real_rows(start, block, real)
        rows = x[start:start + n]
        rows.add_(_product(attn.o_proj, attended[start:start + block])[:n])
        h = _filled_to_blocks(layer.post_attention_layernorm(rows), block)
        gate, up = _product(mlp.gate_proj, h), _product(mlp.up_proj, h)
        if type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") and gate.dtype == up.dtype:  # silu(t), in place
            torch.nn.functional.silu(gate[:n], inplace=True).mul_(up[:n])
            act = gate
        else:
            act = _filled_to_blocks(mlp.act_fn(gate[:n]) * up[:n], block)
        rows.add_(_product(mlp.down_proj, act)[:n])
    return x


def _real_rows(start: int, block: int, real: int) -> int:
    """How many of the ``block`` rows from ``start`` are among the first ``real`` rows of a pass. A row of a
    product depends on that row only, so the fill rows after them can be zeros, whatever the layer's per-row
    operations would have made of them: a small request's last block is mostly fill (256 persona prompts: 4,130
    rows in two bf16 blocks of 4,096), and its norms, activation and residual adds ran on all of them."""
    return min(block, real - start)


def _first_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of ``t``; ``t`` itself when it has n (a slice of all rows would still cost its
    backward pass a zero matrix and a copy)."""
    return t if t.shape[0] == n else t[:n]


def rotary_signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` (..., head_dim) of a Llama-family rotary embedding with its first half negated, for
    :func:`apply_rotary`."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding of ``t`` (..., head_dim), ``cos`` and ``signed_sin`` (:func:`rotary_signed_sin`)
    broadcast against it: the Llama family's ``t cos + rotate_half(t) sin``, with rotate_half(t) = (-t2, t1),
    computed as ``t cos + roll(t) signed_sin`` with roll(t) = (t2, t1). A sign moved from one factor to the other
    changes no bit, so the values and gradients equal the model's own to the bit (a test checks it); the roll's
    backward pass is one roll, where rotate_half's two slices each filled a zero matrix (about 1% of a SmolLM2
    training step)."""
    return t * cos + t.roll(t.shape[-1] // 2, dims=-1) * signed_sin


def _filled_to_blocks(rows: torch.Tensor, block: int) -> torch.Tensor:
    """``rows`` (n, d) followed by zero rows up to a multiple of ``block`` rows (itself when n is a multiple)."""
    pad = -rows.shape[0] % block
    return torch.cat([rows, rows.new_zeros(pad, rows.shape[1])]) if pad else rows


def _blockwise(linear, t: torch.Tensor, block: int) -> torch.Tensor:
    """``linear(t)`` for ``t`` of a multiple of ``block`` rows, computed per block of that many rows:
    a plain ``Linear`` in its weight's dtype writes each block's product into the output in place (no copy), any
    other layer (a LoRA layer, autocast) is called per block and the blocks are concatenated."""
    blocks = t.split(block)
    if not _plain(linear, t):
        return torch.cat([linear(b) for b in blocks])
    out = t.new_empty(t.shape[0], linear.out_features)
    for rows, into in zip(blocks, out.split(block), strict=True):
        _product(linear, rows, into)
    return out


def _grouped_attention(attention, attn, qkv, spans, sizes, masks: dict, extra: dict, sdpa: bool = False):
    """Attention of the packed pass per length group (the inference route, without gradients): ``qkv`` are
    (tokens, heads, head_dim); returns the outputs, (tokens, heads x head_dim), in row order. A group after the
    prefix attends to the prefix's keys and values (those of the first group, whose context rows are all 0) and its
    own, causal. ``sdpa``: the model's attention is transformers' SDPA function, called here as torch's own
    ``scaled_dot_product_attention`` with the arguments that function passes, except that the key/value heads are
    not repeated for the query heads (``enable_gqa``, which the function itself uses only where there is no mask):
    the same values to the bit (a test checks it), without copying every group's keys and values three times."""
    if any(c for *_, contexts in spans if contexts is not None for c in contexts):
        raise ValueError("contexts: the grouped route attends only to a shared prefix at row 0 (one_attention=True "
                         "for other contexts)")
    q = qkv[0]
    out, shared = q.new_empty(q.shape[0], q.shape[1] * q.shape[2]), None
    for (_, b, s, skip, _), rows, *group in zip(spans, out.split(sizes), *(t.split(sizes) for t in qkv),
                                                strict=True):
        q_, k_, v_ = (t.view(b, s, -1, attn.head_dim).transpose(1, 2) for t in group)
        mask = None
        if skip:  # after the prefix: its keys and values first, then the prompt's own, causal
            k_, v_ = (torch.cat([p.expand(b, -1, -1, -1), t], dim=2) for p, t in zip(shared, (k_, v_), strict=True))
            if (s, q_.dtype) not in masks:
                masks[s, q_.dtype] = _after_prefix_mask(s, skip, q_.dtype, q_.device)
            mask = masks[s, q_.dtype]
        elif shared is None:  # the first group: the prefix, when a group after it skips it
            shared = (k_, v_)
        if sdpa:  # (b, heads, s, head_dim), written into the rows of the group as (b, s, heads, head_dim)
            o = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=attn.scaling,
                                                                 is_causal=mask is None and s > 1, enable_gqa=True)
            rows.view(b, s, -1, attn.head_dim).copy_(o.transpose(1, 2))
        else:
            o, _ = attention(attn, q_, k_, v_, mask, dropout=0.0, scaling=attn.scaling, **extra)
            rows.copy_(o.reshape(b * s, -1))
    return out


def _padded_layout(spans, device) -> dict:
    """Where the packed pass's tokens go for attention with padding (the training route, and the general path's):
    the n sequences, sorted by length, in buckets (:func:`_length_groups`), each padded to its longest, S tokens,
    for one attention call per bucket. ``unpad`` (tokens,): each packed row's padded position, the buckets' padded
    rows one after the other. Per bucket (``buckets``): ``index`` (n S,) the packed row of each padded position
    (row 0 for padding), ``allowed`` (n, 1, S, C + S) which keys each query sees (the first c_i of C context columns,
    c_i its context's length, then its own, causal; padding is never seen by a real token). The context columns'
    keys: when every context is the same one at row 0 (a shared prefix), ``prefix`` C: the first C packed rows, as
    they are; otherwise ``keys`` (n C,) the packed row of each context column (row 0 where unused) and ``prefix``
    0."""
    sequences = [(first + j * s, s, skip if contexts is not None else 0, contexts[j] if contexts is not None else 0)
                 for first, b, s, skip, contexts in spans for j in range(b)]
    order = sorted(range(len(sequences)), key=lambda i: sequences[i][1])
    unpad = [None] * len(sequences)
    buckets, offset = [], 0
    for members in _length_groups([sequences[i][1:3] for i in order]):
        group = [sequences[order[m]] for m in members]
        n, longest, width = len(group), max(s for _, s, _, _ in group), max(c for _, _, c, _ in group)
        index = torch.zeros(n, longest, dtype=torch.long)
        for j, (m, (start, s, _, _)) in enumerate(zip(members, group, strict=True)):
            index[j, :s] = torch.arange(start, start + s)
            unpad[order[m]] = torch.arange(offset + j * longest, offset + j * longest + s)
        offset += n * longest
        seen = torch.arange(width)[None, :] < torch.tensor([c for _, _, c, _ in group])[:, None]
        own = torch.ones(longest, longest, dtype=torch.bool).tril().expand(n, -1, -1)
        allowed = torch.cat([seen[:, None, :].expand(-1, longest, -1), own], dim=2)[:, None]
        bucket = {"index": index.view(-1).to(device), "allowed": allowed.to(device), "n": n, "longest": longest,
                  "context": width, "prefix": width}
        if any(c not in (0, width) or (c and row) for _, _, c, row in group):
            keys = torch.zeros(n, width, dtype=torch.long)
            for j, (_, _, c, row) in enumerate(group):
                keys[j, :c] = torch.arange(row, row + c)
            bucket["keys"], bucket["prefix"] = keys.view(-1).to(device), 0
        buckets.append(bucket)
    return {"buckets": buckets, "unpad": torch.cat(unpad).to(device)}


def _length_groups(lengths: list[tuple[int, int]], call_pairs: int = 2048) -> list[list[int]]:
    """Consecutive groups of sequences (``lengths``: (tokens s, context c) each, sorted by s) for the padded
    attention: the split that minimises the padded query-key pairs, sum over groups of n S (C + S) (n sequences,
    S the longest, C the widest context), plus ``call_pairs`` per group, what one more attention call costs
    (measured on a 2-core Xeon: SmolLM2's attention in a training step, forward and backward, took 0.12 ms per
    call and 0.09 ms per 1,000 pairs). Dynamic programming over the splits between distinct lengths (sequences
    of one length are never split)."""
    n = len(lengths)
    bounds = [i for i in range(n) if i == 0 or lengths[i][0] != lengths[i - 1][0]] + [n]
    widths = [max(c for _, c in lengths[a:b]) for a, b in itertools.pairwise(bounds)]  # per length: the widest context
    best, cut = {0: 0}, {}
    for e, end in enumerate(bounds[1:], start=1):
        longest, width, best[end] = lengths[end - 1][0], 0, math.inf
        for b in range(e - 1, -1, -1):
            start, width = bounds[b], max(width, widths[b])
            cost = best[start] + (end - start) * longest * (width + longest) + call_pairs
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], n
    while end:
        groups.append(list(range(cut[end], end)))
        end = cut[end]
    return groups[::-1]


def _context_columns(t: torch.Tensor, bucket: dict, head_dim: int) -> torch.Tensor:
    """The context columns' keys or values (n, heads, C, head_dim) of a bucket of :func:`_padded_layout` from the
    packed rows ``t`` (tokens, heads, head_dim)."""
    n, width, prefix = bucket["n"], bucket["context"], bucket["prefix"]
    if prefix:  # the shared prefix (its own sequence, the first packed rows), the same for every sequence
        return t[:prefix].view(1, prefix, -1, head_dim).transpose(1, 2).expand(n, -1, -1, -1)
    return t.index_select(0, bucket["keys"]).view(n, width, -1, head_dim).transpose(1, 2)


def _padded_attention(attention, attn, qkv, layout: dict, masks: dict, extra: dict) -> torch.Tensor:
    """Attention of all sequences of the packed pass, one call per bucket of :func:`_padded_layout`: ``qkv`` are
    (tokens, heads, head_dim); returns (tokens, heads x head_dim) in row order. Where the model attends with SDPA
    (``layout['sdpa']``), torch's SDPA runs on the key/value heads as they are (``enable_gqa``): transformers'
    repeats them whenever there is a mask, which took a quarter of the attention's time in a CPU training step."""
    out, dtype = [], qkv[2].dtype  # the grouped route's output dtype (under bf16 autocast: bf16; q, k are fp32)
    for b, bucket in enumerate(layout["buckets"]):
        n, longest, width = bucket["n"], bucket["longest"], bucket["context"]
        q_, k_, v_ = (t.index_select(0, bucket["index"]).view(n, longest, -1, attn.head_dim).transpose(1, 2)
                      for t in qkv)
        if width:  # the context's keys and values before every sequence's own
            k_, v_ = (torch.cat([_context_columns(t, bucket, attn.head_dim), padded], dim=2)
                      for t, padded in ((qkv[1], k_), (qkv[2], v_)))
        precision = contextlib.nullcontext()
        if q_.device.type == "cpu":  # in float32: the CPU's masked bf16 attention is 10x slower to differentiate
            q_, k_, v_ = q_.float(), k_.float(), v_.float()
            precision = torch.autocast("cpu", enabled=False)
        if ("padded", b, q_.dtype) not in masks:
            masks["padded", b, q_.dtype] = torch.zeros(bucket["allowed"].shape, dtype=q_.dtype, device=q_.device) \
                .masked_fill(~bucket["allowed"], torch.finfo(q_.dtype).min)
        mask = masks["padded", b, q_.dtype]
        with precision:
            if layout["sdpa"] and not extra:  # torch's SDPA on the key/value heads as they are (grouped-query)
                o = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=attn.scaling,
                                                                     enable_gqa=True).transpose(1, 2)
            else:
                o, _ = attention(attn, q_, k_, v_, mask, dropout=0.0, scaling=attn.scaling, **extra)
        out.append(o.reshape(n * longest, -1))
    return (out[0] if len(out) == 1 else torch.cat(out)).index_select(0, layout["unpad"]).to(dtype)


def _after_prefix_mask(s: int, skip: int, dtype, device) -> torch.Tensor:
    """The additive attention mask (1, 1, s, skip + s) of s tokens that follow a prefix of ``skip`` tokens: each
    sees the prefix and itself and the tokens before it."""
    allowed = torch.ones(s, skip + s, dtype=torch.bool, device=device).tril(diagonal=skip)
    mask = torch.zeros(s, skip + s, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def _prefix_pieces(groups: list[torch.Tensor], prefix: list[int] | None):
    """The sequences :func:`_packed_forward` computes: per group, its prompts that begin with ``prefix`` (and are
    longer) without those tokens, then the rest whole; with the prefix itself first when any prompt uses it.
    Returns [(ids (B, L), prefix tokens skipped)] and, per piece, the prompts' positions in the request (None
    for the prefix)."""
    n_prefix = len(prefix) if prefix else 0
    head = torch.tensor(prefix) if n_prefix else None
    pieces, rows, first = [], [], 0
    for g in groups:
        shared = torch.tensor([_shares_prefix(row, prefix or ()) for row in g.tolist()], dtype=torch.bool)
        for use in (True, False):
            picked = torch.nonzero(shared == use)[:, 0]
            if len(picked):
                pieces.append((g[picked.to(g.device), n_prefix if use else 0:], n_prefix if use else 0))
                rows.append(first + picked)
        first += len(g)
    if any(skip for _, skip in pieces):
        pieces.insert(0, (head[None].to(groups[0].device), 0))
        rows.insert(0, None)
    return pieces, rows


def _plain_forward(backbone, ids: torch.Tensor) -> torch.Tensor:
    """The final hidden state at the last token of each row of ``ids`` (B, L), one plain forward pass of the
    backbone (other architectures than :data:`PACKED_LAYERS`), its ``Linear`` layers computed on blocks of
    :func:`pack_row_block` rows like the packed pass's products (:func:`_blockwise_linears`)."""
    mask = torch.ones_like(ids)
    with _blockwise_linears(backbone):
        return backbone(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask)).last_hidden_state[:, -1]


@contextlib.contextmanager
def _blockwise_linears(module: torch.nn.Module):
    """Inside the block, every ``Linear`` of ``module`` computes its rows (all leading dimensions flattened, filled
    up with zero rows to a multiple of :func:`pack_row_block`) with :func:`_blockwise`."""
    def forward(linear, x):
        rows, block = x.reshape(-1, x.shape[-1]), pack_row_block(x.dtype)
        return _blockwise(linear, _filled_to_blocks(rows, block), block)[:rows.shape[0]].view(*x.shape[:-1], -1)

    linears = [m for m in module.modules() if type(m) is torch.nn.Linear]
    for linear in linears:
        linear.forward = functools.partial(forward, linear)
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward


def _packs(lengths: list[int], batch_size: int, max_tokens: int = PACK_TOKENS,
           costs: list[int] | None = None) -> list[list[list[int]]]:
    """The prompts (indices into ``lengths``) of each forward pass: lists of same-length groups, shortest first,
    at most ``batch_size`` prompts and (unless one prompt is larger) ``max_tokens`` rows per pass, where a prompt
    costs ``costs[i]`` rows (default its length; after a shared prefix, fewer)."""
    costs = lengths if costs is None else costs
    packs, current, prompts, rows = [], [], 0, 0
    for group in _same_length_batches(lengths, batch_size):
        taken = []
        for i in group:
            if (current or taken) and (prompts == batch_size or rows + costs[i] > max_tokens):
                packs.append(current + ([taken] if taken else []))
                current, taken, prompts, rows = [], [], 0, 0
            taken.append(i)
            prompts, rows = prompts + 1, rows + costs[i]
        current.append(taken)
    return packs + ([current] if current else [])


def _pass_plan(model, tokenizer, prompts, template: str, batch_size: int):
    """(token ids per prompt, whether the model takes the packed pass, the shared prefix's ids or None, the prompts
    of each forward pass (:func:`_packs`)) for :func:`last_prompt_hidden` and :func:`last_block_inputs`."""
    prompts = _check_texts("prompts", prompts)
    _check_batch_size(batch_size)
    texts = [format_prompt(p, template, tokenizer) for p in prompts]
    ids = tokenizer(texts, add_special_tokens=PROMPT_TEMPLATES[template][1])["input_ids"]
    packed = _packable(model)
    prefix = shared_prefix_ids(tokenizer, template) if packed else None
    # a packed pass computes the prefix once and, for every prompt that goes on after it, only the rest
    skip = len(prefix) if prefix else 0
    costs = [len(x) - skip if _shares_prefix(x, prefix or ()) else len(x) for x in ids]
    return ids, packed, prefix, _packs([len(x) for x in ids], batch_size, PACK_TOKENS - skip, costs)


def last_prompt_hidden(model, tokenizer, prompts, template: str = "raw", batch_size: int = PACK_PROMPTS,
                       progress: bool = False, on_batch=None) -> torch.Tensor:
    """g(x): the final hidden state (after the final norm, the definition 'final_norm' of
    :data:`FEATURE_DEFINITIONS`) at the last prompt token, (n, d) in the model's dtype, in input order.

    Prompts are never padded: they are grouped by token length, and a forward pass takes several length groups at
    once (at most ``batch_size`` prompts and :data:`PACK_TOKENS` computed rows, :func:`_packs`). For Llama and Mistral
    models the groups of a pass are packed into one token matrix (:func:`_packed_forward`); other architectures
    run one plain forward pass per group. Either way each result is independent of the rest of the request.
    ``on_batch(k)`` is called after each forward pass of k prompts (progress reporting)."""
    device = _model_device(model)
    backbone = model.base_model
    ids, packed, prefix, packs = _pass_plan(model, tokenizer, prompts, template, batch_size)
    out = None
    with torch.no_grad():
        for pack in _progress(packs, len(packs), progress, "features"):
            tensors = [torch.tensor([ids[i] for i in group], device=device) for group in pack]
            if packed:
                hidden = _packed_forward(model, tensors, prefix)
            else:
                hidden = torch.cat([_plain_forward(backbone, t) for t in tensors])
            order = [i for group in pack for i in group]
            if out is None:
                out = torch.empty(len(ids), hidden.shape[-1], dtype=hidden.dtype)
            out[order] = hidden.cpu()
            if on_batch is not None:
                on_batch(len(order))
    return out if out is not None else torch.empty(0, 0)


def _code_fingerprint(functions) -> str:
    """sha256 (first 16 hex digits) of the source of ``functions`` (their byte code where no source exists)."""
    h = hashlib.sha256()
    for f in functions:
        try:
            h.update(inspect.getsource(f).encode())
        except (OSError, TypeError):
            h.update(f.__code__.co_code)
    return h.hexdigest()[:16]


def feature_namespace(model_id: str, template: str, dtype, kind: str = "last_prompt_hidden",
                      definition: str = DEFAULT_FEATURE_DEFINITION, device=None) -> dict:
    """Everything that shapes a cached feature, except the prompt itself (which keys the item): the model
    (for a hub id with the locally cached revision), the template, the dtype, library versions, for the default
    kind the ``definition`` of g(x) (:data:`FEATURE_DEFINITIONS`), and ``code``, a fingerprint of the source of the
    functions that compute this ``kind`` of feature (:data:`FEATURE_KINDS`; for the default kind those in
    :data:`FEATURE_CODE`, plus :func:`second_rms_norm` for 'double_norm'; edits elsewhere in this module do not
    invalidate the cache; edits to those functions do), and the kernels of ``device`` (:func:`kernel_identity`;
    features are computed on :func:`~analysis_lib.runtime.default_threads` torch threads, whatever the caller set)."""
    _check_template(template)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind: must be one of {list(FEATURE_KINDS)}, got {kind!r}")
    _check_definition(definition)
    example = format_prompt("{question}", template, _default_tokenizer(model_id)) if template == "chat" else \
        format_prompt("{question}", template)
    code = FEATURE_CODE if kind == "last_prompt_hidden" else BLOCK_INPUT_CODE
    if kind == "last_prompt_hidden" and definition == "double_norm":
        code = code + (second_rms_norm,)
    namespace = {"kind": kind, "model": _model_fingerprint(model_id), "template": template,
                 "template_text": example, "add_special_tokens": PROMPT_TEMPLATES[template][1],
                 "dtype": _dtype_name(dtype), "format": FEATURES_FORMAT, "code": _code_fingerprint(code),
                 "pack_row_blocks": PACK_ROW_BLOCKS, "shared_prefix": SHARED_PROMPT_PREFIX,
                 "analysis_lib": _version("analysis_lib"), "transformers": _version("transformers"),
                 "torch": torch.__version__.split("+")[0], "kernels": kernel_identity(device, default_threads())}
    if kind == "last_block_input":
        namespace["layer"] = "input of the last decoder layer, every prompt token"
    else:
        namespace["definition"] = definition
        if definition == "double_norm":
            namespace["second_norm_eps"] = OFFICIAL_SECOND_NORM_EPS
    return namespace


def _double_norm_cached(prompts: list[str], model_id: str, template: str, dtype_name: str, batch_size: int,
                        cache: bool, progress: bool, device) -> np.ndarray:
    """'double_norm' features: read from their own store; missing ones are derived from the 'final_norm' features
    (cached or computed) by :func:`second_rms_norm` with the weight of the final norm of the model that computes
    them (in its dtype), then stored."""
    def namespace():
        return feature_namespace(model_id, template, dtype_name, definition="double_norm", device=device)

    store = FeatureStore(namespace()) if cache else None
    values, missing, unique = cached_rows(store, prompts)
    if missing:
        base = _extract_cached("last_prompt_hidden", unique, model_id, template, dtype_name, batch_size, cache,
                               progress, device)
        model, _ = _inference_model(model_id, dtype_name,
                                    str(torch.device(device) if device is not None else get_device()))
        derived = second_rms_norm(base, model.base_model.norm.weight)
        if store is not None:
            if store.namespace != namespace():  # the model's first download made its hub revision known
                store = FeatureStore(namespace())
            store.put(unique, derived)
        values = fill_rows(prompts, values, missing, unique, derived)
    return values if values is not None else np.empty((0, hidden_size(model_id)), dtype=np.float32)


def _extract_cached(kind: str, prompts, model_id: str, template: str, dtype, batch_size: int, cache: bool,
                    progress: bool, device, definition: str = DEFAULT_FEATURE_DEFINITION):
    """The cached extraction shared by every feature kind: look the prompts up in the kind's
    :class:`FeatureStore`, compute only the missing ones with the shared frozen model (length-sorted, stored
    every few forward passes), and return the values in input order: an (n, d) float32 array for fixed-size
    kinds, a list of (length, d) float32 arrays for ``last_block_input``. ``definition`` (default kind only):
    'double_norm' features are derived from the cached 'final_norm' ones (:func:`_double_norm_cached`)."""
    _check_model_id(model_id)
    _check_template(template)
    _check_batch_size(batch_size)
    _check_definition(definition)
    dtype_name = feature_dtype(dtype, device)
    prompts = _check_texts("prompts", prompts)
    sequences = kind == "last_block_input"
    if not sequences and definition == "double_norm":
        return _double_norm_cached(prompts, model_id, template, dtype_name, batch_size, cache, progress, device)

    def lookup(st):
        return st.get_sequences(prompts) if sequences else st.get(prompts)

    namespace = feature_namespace(model_id, template, dtype_name, kind, device=device) if cache else None
    store = FeatureStore(namespace) if cache else None
    if store is not None:
        values, missing = lookup(store)
    else:
        values, missing = ([None] * len(prompts) if sequences else None), list(range(len(prompts)))
    if missing:
        device = torch.device(device) if device is not None else get_device()
        model, tok = _inference_model(model_id, dtype_name, str(device))
        if store is not None and feature_namespace(model_id, template, dtype_name, kind, device=device) \
                != namespace:
            # the first download of a hub model made its revision known: key by it from now on
            store = FeatureStore(feature_namespace(model_id, template, dtype_name, kind, device=device))
            values, missing = lookup(store)
    if missing:
        unique = list(dict.fromkeys(prompts[i] for i in missing))
        texts = [format_prompt(p, template, tok) for p in unique]
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=PROMPT_TEMPLATES[template][1])["input_ids"]]
        if 0 in lengths:
            raise ValueError(f"prompts: {unique[lengths.index(0)]!r} is no token at all under the template "
                             f"{template!r}; give non-empty prompts")
        unique = [unique[i] for i in sorted(range(len(unique)), key=lambda i: (lengths[i], i))]
        step = 8 * batch_size
        parts = []
        what = "block inputs" if sequences else "features"
        # on the machine's default threads, whatever the caller set (a chapter of small heads runs on one): the
        # threads can pick other kernels (bf16 products on a Xeon with AMX change their last bits from 3 threads
        # on), and a cached feature must not depend on which chapter computed it
        with _progress_bar(len(unique), progress, f"{what} {dtype_name}") as bar, torch_threads(default_threads()):
            for start in range(0, len(unique), step):
                chunk = unique[start:start + step]
                compute = last_block_inputs if sequences else last_prompt_hidden
                parts.append(compute(model, tok, chunk, template, batch_size, on_batch=bar.update))
                if store is not None:
                    (store.put_sequences if sequences else store.put)(chunk, parts[-1])
        position = {p: k for k, p in enumerate(unique)}
        if sequences:
            decoded = [_decode(*_encode(x)) for part in parts for x in part]
            for i in missing:
                values[i] = decoded[position[prompts[i]]]
            return values
        decoded = _decode(*_encode(torch.cat([torch.as_tensor(p) for p in parts])))
        if values is None:
            values = np.full((len(prompts), decoded.shape[1]), np.nan, dtype=np.float32)
        values[missing] = decoded[[position[prompts[i]] for i in missing]]
    if values is None:  # no prompts
        return np.empty((0, hidden_size(model_id)), dtype=np.float32)
    return values


@timed("features")  # the seconds spent here count as "features" in a chapter's footer and the build's summary
def extract_features(prompts, model_id: str = SMOLLM2, template: str = "raw", dtype="auto",
                     batch_size: int = PACK_PROMPTS, cache: bool = True, progress: bool = True, device=None,
                     definition: str = DEFAULT_FEATURE_DEFINITION) -> np.ndarray:
    """The paper's g(x) for each prompt (question): (n, d) float32, in input order.

    ``definition`` (:data:`FEATURE_DEFINITIONS`): 'final_norm' (default), the hidden state after the model's final
    norm at the last prompt token, so that the model's unembedding gives its own answer log-probs; or
    'double_norm', the official code's g(x), the same state normed a second time (:func:`second_rms_norm`).

    Computed in ``dtype`` with the frozen model ('auto': bf16 where the hardware has native bf16, else fp32;
    see :func:`feature_dtype`), and cached per prompt on disk (see :class:`FeatureStore` and
    :func:`feature_namespace` for the key), so a second request, or another chapter asking for an overlapping
    set, reads the cache. Only missing prompts are computed: all of them length-sorted together, stored every
    few batches (an interrupted extraction keeps its work), with a progress bar counting prompts that shows
    when the extraction takes more than a few seconds.
    """
    return _extract_cached("last_prompt_hidden", prompts, model_id, template, dtype, batch_size, cache, progress,
                           device, definition)


def last_block_inputs(model, tokenizer, prompts, template: str = "raw", batch_size: int = PACK_PROMPTS,
                      progress: bool = False, on_batch=None) -> list[torch.Tensor]:
    """The hidden states entering the model's last decoder layer, at every prompt token: one (length_i, d)
    tensor per prompt in the model's dtype, in input order (length_i = the prompt's token count). Running the last
    layer, the final norm and ``lm_head`` on them gives the model's logits
    (:class:`analysis_lib.misalignment.LastBlock`). ``on_batch(k)`` after each forward pass of k prompts.

    Computed as :func:`last_prompt_hidden` computes features, so a prompt's result does not depend on the rest of
    the request, nor therefore a cached one on which request computed it: for Llama and Mistral models the packed
    pass (:func:`_packed_hidden`, stopped before the last layer; a shared prefix computed once, its rows then
    begin every prompt that goes on after it), else one plain forward pass per length group with every ``Linear``
    on blocks of :func:`pack_row_block` rows (:func:`_blockwise_linears`). (Batches of equal-length prompts
    through the model's own forward pass gave a prompt other last bits in another batch.)"""
    device = _model_device(model)
    backbone = model.base_model
    layers = getattr(backbone, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"model: {type(model).__name__} has no decoder layers at .base_model.layers")
    ids, packed, prefix, packs = _pass_plan(model, tokenizer, prompts, template, batch_size)
    out: list[torch.Tensor | None] = [None] * len(ids)
    with torch.no_grad():
        for pack in _progress(packs, len(packs), progress, "block inputs"):
            tensors = [torch.tensor([ids[i] for i in group], device=device) for group in pack]
            order = [i for group in pack for i in group]
            if packed:
                for k, seq in enumerate(_packed_block_inputs(model, tensors, prefix)):
                    out[order[k]] = seq.cpu()
            else:
                for group, t in zip(pack, tensors, strict=True):
                    for i, seq in zip(group, _plain_block_inputs(backbone, t), strict=True):
                        out[i] = seq.cpu()
            if on_batch is not None:
                on_batch(len(order))
    return out


def _packed_block_inputs(model, groups: list[torch.Tensor], prefix: list[int] | None) -> list[torch.Tensor]:
    """The inputs of the last decoder layer at every token of every prompt of ``groups`` (as
    :func:`_packed_forward`'s), one (L_g, d) tensor per prompt in group order."""
    pieces, rows = _prefix_pieces(groups, prefix)
    hidden = _packed_hidden(model, [(piece, skip, [0] * piece.shape[0] if skip else None) for piece, skip in pieces],
                            torch.empty(0, dtype=torch.long), stop_before_last=True)
    out: list[torch.Tensor | None] = [None] * sum(g.shape[0] for g in groups)
    start = 0
    for (piece, skip), prompts in zip(pieces, rows, strict=True):
        b, s = piece.shape
        if prompts is not None:
            for j, k in enumerate(prompts.tolist()):
                own = hidden[start + j * s:start + (j + 1) * s]
                out[k] = torch.cat([hidden[:skip], own]) if skip else own.clone()
        start += b * s
    return out


def _plain_block_inputs(backbone, ids: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of the last decoder layer at every token of each row of ``ids`` (B, L): one plain forward pass
    of the backbone with its ``Linear`` layers on blocks of :func:`pack_row_block` rows (:func:`_blockwise_linears`)."""
    mask = torch.ones_like(ids)
    with _blockwise_linears(backbone):
        hidden = layer_inputs(backbone, len(backbone.layers) - 1, input_ids=ids, attention_mask=mask,
                              position_ids=_position_ids(mask))
    return list(hidden.unbind(0))


class _StopPass(Exception):
    """Raised by :func:`layer_inputs`' pre-hook: the rest of the forward pass is not needed."""


def layer_inputs(backbone, index: int, **inputs) -> torch.Tensor:
    """The hidden states entering decoder layer ``index`` of ``backbone`` (its ``.layers``) in one forward pass on
    ``inputs`` (the backbone's keyword arguments), detached; the pass stops there (a forward pre-hook)."""
    captured = []

    def grab(_module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopPass

    hook = backbone.layers[index].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        backbone(**inputs)
    except _StopPass:
        pass
    finally:
        hook.remove()
    return captured[0].detach()


@timed("features")
def extract_block_inputs(prompts, model_id: str = SMOLLM2, template: str = "raw", dtype="auto",
                         batch_size: int = PACK_PROMPTS, cache: bool = True, progress: bool = True,
                         device=None) -> list[np.ndarray]:
    """The hidden states entering the last decoder layer for each prompt (:func:`last_block_inputs`): a list of
    (length_i, d) float32 arrays, in input order. Computed and cached exactly like :func:`extract_features`
    (same :class:`FeatureStore` machinery, one item per prompt; the namespace has kind 'last_block_input' and the
    fingerprint of :data:`BLOCK_INPUT_CODE`)."""
    return _extract_cached("last_block_input", prompts, model_id, template, dtype, batch_size, cache, progress,
                           device)


#: The packed forward pass (features, and the trainer's single-token path).
PACKED_FORWARD_CODE = (_packed_forward, _packed_hidden, _grouped_attention, _padded_layout, _length_groups,
                       _context_columns, _padded_attention, _first_rows, rotary_signed_sin, apply_rotary,
                       _after_prefix_mask, _prefix_pieces, _shares_prefix, _embed, _filled_to_blocks, _blockwise,
                       _attention_inputs_in_blocks, _plain, _product, _rest_of_layer_in_blocks, _real_rows,
                       _blockwise_linears, shared_prefix_ids, _shared_prefix_ids)
#: The functions whose source determines a cached feature's value (hashed into :func:`feature_namespace`).
FEATURE_CODE = (last_prompt_hidden, _pass_plan, *PACKED_FORWARD_CODE, _plain_forward, _packs, format_prompt,
                _position_ids, _same_length_batches, _encode, _decode)
#: The same for the hidden states entering the last decoder layer (kind 'last_block_input').
BLOCK_INPUT_CODE = (last_block_inputs, _pass_plan, _packed_block_inputs, _plain_block_inputs, layer_inputs,
                    *PACKED_FORWARD_CODE, _packs, format_prompt, _position_ids, _same_length_batches, _encode, _decode)
#: The kinds of cached feature: the final hidden state at the last prompt token (:func:`extract_features`), and
#: the inputs of the last decoder layer at every prompt token (:func:`extract_block_inputs`).
FEATURE_KINDS = ("last_prompt_hidden", "last_block_input")


def persona_features(behaviours, model_id: str = SMOLLM2, template: str = "raw", max_per_behaviour=None,
                     dtype="auto", data_dir=None, flip: bool = False, seed: int = 0, split_rule: str = "independent",
                     **kwargs):
    """(rows, features): :func:`analysis_lib.data.load_persona` rows (a balanced random subset of at most
    ``max_per_behaviour`` per behaviour, see :func:`analysis_lib.data.subsample_persona`; ``split_rule`` as in
    ``load_persona``) and their features, row i of the array belonging to row i of the DataFrame (index reset).
    ``kwargs`` go to :func:`extract_features` (e.g. ``definition``)."""
    from analysis_lib.data import load_persona, subsample_persona

    rows = subsample_persona(load_persona(behaviours, data_dir=data_dir, flip=flip, split_rule=split_rule),
                             max_per_behaviour, seed)
    rows = rows.reset_index(drop=True)
    features = extract_features(rows["question"].tolist(), model_id=model_id, template=template, dtype=dtype,
                                **kwargs)
    return rows, features


def persona_block_inputs(behaviours, model_id: str = SMOLLM2, template: str = "raw", max_per_behaviour=None,
                         dtype="auto", data_dir=None, flip: bool = False, seed: int = 0, **kwargs):
    """(rows, block inputs): as :func:`persona_features`, with the hidden states entering the last decoder layer
    (:func:`extract_block_inputs`, one (length, d) array per row) in place of the last-token features."""
    from analysis_lib.data import load_persona, subsample_persona

    rows = subsample_persona(load_persona(behaviours, data_dir=data_dir, flip=flip), max_per_behaviour, seed)
    rows = rows.reset_index(drop=True)
    inputs = extract_block_inputs(rows["question"].tolist(), model_id=model_id, template=template, dtype=dtype,
                                  **kwargs)
    return rows, inputs


def encode_sentences(texts, cache: bool = True, batch_size: int = 64, progress: bool = True,
                     device=None) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (n, 384) float32, unit norm; cached per text like the LM features."""
    texts = _check_texts("texts", texts)
    _check_batch_size(batch_size)
    namespace = {"kind": "sentence_embedding", "model": f"{MINILM_DISTRIBUTION}=={_version(MINILM_DISTRIBUTION)}",
                 "format": FEATURES_FORMAT, "sentence_transformers": _version("sentence-transformers"),
                 "torch": torch.__version__.split("+")[0], "kernels": kernel_identity(device, default_threads())}
    store = FeatureStore(namespace) if cache else None
    values, missing, unique = cached_rows(store, texts)
    if missing:
        encoder = _sentence_encoder(str(device if device is not None else get_device()))
        chunks = [unique[i:i + 16 * batch_size] for i in range(0, len(unique), 16 * batch_size)]
        with torch_threads(default_threads()):  # as the LM features (see _extract_cached)
            computed = np.concatenate([
                encoder.encode(chunk, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                               show_progress_bar=False).astype(np.float32)
                for chunk in _progress(chunks, len(chunks), progress and len(chunks) > 1, "MiniLM")])
        if store is not None:
            store.put(unique, computed)
        values = fill_rows(texts, values, missing, unique, computed)
    return values if values is not None else np.empty((0, MINILM_DIM), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _sentence_encoder(device: str):
    return load_sentence_encoder(device)


def answer_logprobs_from_features(features, head: torch.Tensor, token_ids) -> np.ndarray:
    """log-softmax(head @ g) at ``token_ids``: (n, k) float64; equals the model's own answer log-probs when
    ``features`` are :func:`extract_features` outputs and ``head`` is :func:`lm_head_weight`."""
    g = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    w = head.detach().to(torch.float64)
    if g.ndim != 2 or g.shape[1] != w.shape[1]:
        raise ValueError(f"features: need shape (n, {w.shape[1]}) for this head, got {tuple(g.shape)}")
    return torch.log_softmax(g @ w.T, dim=-1)[:, list(token_ids)].numpy()


def zero_shot_yes_no(logp_yes_no, matching_is_yes) -> dict[str, float]:
    """Summary of a model's zero-shot answers, from (n, 2) log-probs of (" Yes", " No") per prompt:

    * ``mass``: mean P(Yes) + P(No), how much of the next-token distribution the two answers get;
    * ``p_matching``: mean P(matching answer | {Yes, No}) (0.5 = no preference on average);
    * ``agreement``: fraction of prompts whose more likely answer of the two is the matching one;
    * ``yes_rate``: fraction of prompts whose more likely answer is " Yes" (1 or 0 = the same answer always).
    """
    lp = np.asarray(logp_yes_no, dtype=np.float64)
    match_yes = np.asarray(matching_is_yes, dtype=bool)
    if lp.ndim != 2 or lp.shape[1] != 2 or lp.shape[0] != match_yes.shape[0] or lp.shape[0] == 0:
        raise ValueError(f"logp_yes_no, matching_is_yes: need shapes (n, 2) and (n,) with n >= 1, got "
                         f"{lp.shape} and {match_yes.shape}")
    p = np.exp(lp)
    p_yes_given = p[:, 0] / p.sum(axis=1)
    p_match = np.where(match_yes, p_yes_given, 1.0 - p_yes_given)
    says_yes = lp[:, 0] > lp[:, 1]
    return {"mass": float(p.sum(axis=1).mean()), "p_matching": float(p_match.mean()),
            "agreement": float((says_yes == match_yes).mean()), "yes_rate": float(says_yes.mean())}
