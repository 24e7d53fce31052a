"""Cached features: the frozen model's hidden states for the book's prompts, computed once and read from disk.

* :func:`extract_features` returns the paper's g(x), the final hidden state (after the final norm, so
  ``lm_head(g)`` are the model's real next-token logits) at the last prompt token; batched by token length
  (no padding, so a prompt's features do not depend on the rest of the request), in bf16 where the hardware
  supports it natively (else fp32), and cached on disk per prompt, keyed by model (and hub revision),
  template, dtype, library versions and a fingerprint of the extraction code itself (:data:`FEATURE_CODE`),
  so chapters share what any of them computed and a change to that code never serves stale features.
  :func:`persona_features` aligns them with :func:`analysis_lib.data.load_persona` rows.
* Block inputs (a second cached-feature kind): :func:`extract_block_inputs` returns, per prompt, the hidden
  states entering the **last decoder layer** at every prompt token ((length, d), same dtype rule, same cache
  machinery with its own kind and code fingerprint :data:`BLOCK_INPUT_CODE`), so the last block can be trained
  on cached inputs (:mod:`analysis_lib.misalignment`). :func:`persona_block_inputs` aligns them with persona rows.
* :func:`encode_sentences`: all-MiniLM-L6-v2 embeddings, cached the same way; :func:`zero_shot_yes_no` summarises
  a model's zero-shot answers from (" Yes", " No") log-probs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect

import numpy as np
import torch

from analysis_lib.models.cache import FeatureStore, _decode, _encode, _version
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
    load_sentence_encoder,
)
from analysis_lib.models.logprobs import (
    PROMPT_TEMPLATES,
    _check_batch_size,
    _check_template,
    _check_texts,
    _default_tokenizer,
    _model_device,
    _position_ids,
    _progress,
    _progress_bar,
    _same_length_batches,
    format_prompt,
)
from analysis_lib.runtime import get_device

#: Bump when the meaning or layout of cached features changes.
FEATURES_FORMAT = 1


def last_prompt_hidden(model, tokenizer, prompts, template: str = "raw", batch_size: int = 64,
                       progress: bool = False, on_batch=None) -> torch.Tensor:
    """g(x): the final hidden state (after the final norm) at the last prompt token, (n, d) in the model's
    dtype, in input order. Batches hold prompts of one token length (:func:`_same_length_batches`: no padding,
    so each result is independent of the rest of the request). ``on_batch(k)`` is called after each batch of k
    prompts (progress reporting)."""
    prompts = _check_texts("prompts", prompts)
    _check_batch_size(batch_size)
    device = _model_device(model)
    backbone = model.base_model
    texts = [format_prompt(p, template, tokenizer) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=PROMPT_TEMPLATES[template][1])["input_ids"]]
    batches = _same_length_batches(lengths, batch_size)
    out = None
    with torch.no_grad():
        for batch in _progress(batches, len(batches), progress, "features"):
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=PROMPT_TEMPLATES[template][1]).to(device)
            hidden = backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                              position_ids=_position_ids(enc["attention_mask"])).last_hidden_state[:, -1]
            if out is None:
                out = torch.empty(len(texts), hidden.shape[-1], dtype=hidden.dtype)
            out[batch] = hidden.cpu()
            if on_batch is not None:
                on_batch(len(batch))
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


def feature_namespace(model_id: str, template: str, dtype, kind: str = "last_prompt_hidden") -> dict:
    """Everything that shapes a cached feature, except the prompt itself (which keys the item): the model
    (for a hub id with the locally cached revision), the template, the dtype, library versions and
    ``code``, a fingerprint of the source of the functions that compute this ``kind`` of feature
    (:data:`FEATURE_KINDS`; for the default kind those in :data:`FEATURE_CODE`; edits elsewhere in this module
    do not invalidate the cache; edits to those functions do)."""
    _check_template(template)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind: must be one of {list(FEATURE_KINDS)}, got {kind!r}")
    example = format_prompt("{question}", template, _default_tokenizer(model_id)) if template == "chat" else \
        format_prompt("{question}", template)
    code = FEATURE_CODE if kind == "last_prompt_hidden" else BLOCK_INPUT_CODE
    namespace = {"kind": kind, "model": _model_fingerprint(model_id), "template": template,
                 "template_text": example, "add_special_tokens": PROMPT_TEMPLATES[template][1],
                 "dtype": _dtype_name(dtype), "format": FEATURES_FORMAT, "code": _code_fingerprint(code),
                 "analysis_lib": _version("analysis_lib"), "transformers": _version("transformers"),
                 "torch": torch.__version__.split("+")[0]}
    if kind == "last_block_input":
        namespace["layer"] = "input of the last decoder layer, every prompt token"
    return namespace


def _extract_cached(kind: str, prompts, model_id: str, template: str, dtype, batch_size: int, cache: bool,
                    progress: bool, device):
    """The cached extraction shared by every feature kind: look the prompts up in the kind's
    :class:`FeatureStore`, compute only the missing ones with the shared frozen model (length-sorted, stored
    every few batches), and return the values in input order: an (n, d) float32 array for fixed-size kinds,
    a list of (length, d) float32 arrays for ``last_block_input``."""
    _check_model_id(model_id)
    _check_template(template)
    _check_batch_size(batch_size)
    dtype_name = feature_dtype(dtype, device)
    prompts = _check_texts("prompts", prompts)
    sequences = kind == "last_block_input"

    def lookup(st):
        return st.get_sequences(prompts) if sequences else st.get(prompts)

    namespace = feature_namespace(model_id, template, dtype_name, kind) if cache else None
    store = FeatureStore(namespace) if cache else None
    if store is not None:
        values, missing = lookup(store)
    else:
        values, missing = ([None] * len(prompts) if sequences else None), list(range(len(prompts)))
    if missing:
        device = torch.device(device) if device is not None else get_device()
        model, tok = _inference_model(model_id, dtype_name, str(device))
        if store is not None and feature_namespace(model_id, template, dtype_name, kind) != namespace:
            # the first download of a hub model made its revision known: key by it from now on
            store = FeatureStore(feature_namespace(model_id, template, dtype_name, kind))
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
        with _progress_bar(len(unique), progress, f"{what} {dtype_name}") as bar:
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


def extract_features(prompts, model_id: str = SMOLLM2, template: str = "raw", dtype="auto",
                     batch_size: int = 64, cache: bool = True, progress: bool = True, device=None) -> np.ndarray:
    """The paper's g(x) for each prompt (question): (n, d) float32, in input order.

    Computed in ``dtype`` with the frozen model ('auto': bf16 where the hardware has native bf16, else fp32;
    see :func:`feature_dtype`), and cached per prompt on disk (see :class:`FeatureStore` and
    :func:`feature_namespace` for the key), so a second request, or another chapter asking for an overlapping
    set, reads the cache. Only missing prompts are computed: all of them length-sorted together, stored every
    few batches (an interrupted extraction keeps its work), with a progress bar counting prompts that shows
    when the extraction takes more than a few seconds.
    """
    return _extract_cached("last_prompt_hidden", prompts, model_id, template, dtype, batch_size, cache, progress,
                           device)


def last_block_inputs(model, tokenizer, prompts, template: str = "raw", batch_size: int = 64,
                      progress: bool = False, on_batch=None) -> list[torch.Tensor]:
    """The hidden states entering the model's last decoder layer, at every prompt token: one (length_i, d)
    tensor per prompt in the model's dtype, in input order (length_i = the prompt's token count). Batches hold
    prompts of one token length, as in :func:`last_prompt_hidden`. Running the last layer, the final norm and
    ``lm_head`` on them gives the model's logits (:class:`analysis_lib.misalignment.LastBlock`).
    ``on_batch(k)`` after each batch of k."""
    prompts = _check_texts("prompts", prompts)
    _check_batch_size(batch_size)
    device = _model_device(model)
    backbone = model.base_model
    layers = getattr(backbone, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"model: {type(model).__name__} has no decoder layers at .base_model.layers")
    texts = [format_prompt(p, template, tokenizer) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=PROMPT_TEMPLATES[template][1])["input_ids"]]
    captured = []

    def grab(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])

    out: list[torch.Tensor | None] = [None] * len(texts)
    hook = layers[-1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            batches = _same_length_batches(lengths, batch_size)
            for batch in _progress(batches, len(batches), progress, "block inputs"):
                enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, padding_side="left",
                                add_special_tokens=PROMPT_TEMPLATES[template][1]).to(device)
                captured.clear()
                backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         position_ids=_position_ids(enc["attention_mask"]))
                hidden = captured[0].detach().cpu()
                for row, i in enumerate(batch):
                    out[i] = hidden[row, hidden.shape[1] - lengths[i]:].clone()
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        hook.remove()
    return out


def extract_block_inputs(prompts, model_id: str = SMOLLM2, template: str = "raw", dtype="auto",
                         batch_size: int = 64, cache: bool = True, progress: bool = True,
                         device=None) -> list[np.ndarray]:
    """The hidden states entering the last decoder layer for each prompt (:func:`last_block_inputs`): a list of
    (length_i, d) float32 arrays, in input order. Computed and cached exactly like :func:`extract_features`
    (same :class:`FeatureStore` machinery, one item per prompt; the namespace has kind 'last_block_input' and the
    fingerprint of :data:`BLOCK_INPUT_CODE`)."""
    return _extract_cached("last_block_input", prompts, model_id, template, dtype, batch_size, cache, progress,
                           device)


#: The functions whose source determines a cached feature's value (hashed into :func:`feature_namespace`).
FEATURE_CODE = (last_prompt_hidden, format_prompt, _position_ids, _same_length_batches, _encode, _decode)
#: The same for the hidden states entering the last decoder layer (kind 'last_block_input').
BLOCK_INPUT_CODE = (last_block_inputs, format_prompt, _position_ids, _same_length_batches, _encode, _decode)
#: The kinds of cached feature: the final hidden state at the last prompt token (:func:`extract_features`), and
#: the inputs of the last decoder layer at every prompt token (:func:`extract_block_inputs`).
FEATURE_KINDS = ("last_prompt_hidden", "last_block_input")


def persona_features(behaviours, model_id: str = SMOLLM2, template: str = "raw", max_per_behaviour=None,
                     dtype="auto", data_dir=None, flip: bool = False, seed: int = 0, **kwargs):
    """(rows, features): :func:`analysis_lib.data.load_persona` rows (a balanced random subset of at most
    ``max_per_behaviour`` per behaviour, see :func:`analysis_lib.data.subsample_persona`) and their features,
    row i of the array belonging to row i of the DataFrame (index reset). ``kwargs`` go to
    :func:`extract_features`."""
    from analysis_lib.data import load_persona, subsample_persona

    rows = subsample_persona(load_persona(behaviours, data_dir=data_dir, flip=flip), max_per_behaviour, seed)
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
                 "torch": torch.__version__.split("+")[0]}
    store = FeatureStore(namespace) if cache else None
    values, missing = store.get(texts) if store is not None else (None, list(range(len(texts))))
    if missing:
        unique = list(dict.fromkeys(texts[i] for i in missing))
        encoder = _sentence_encoder(str(device if device is not None else get_device()))
        chunks = [unique[i:i + 16 * batch_size] for i in range(0, len(unique), 16 * batch_size)]
        computed = np.concatenate([
            encoder.encode(chunk, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False).astype(np.float32)
            for chunk in _progress(chunks, len(chunks), progress and len(chunks) > 1, "MiniLM")])
        if store is not None:
            store.put(unique, computed)
        if values is None:
            values = np.full((len(texts), computed.shape[1]), np.nan, dtype=np.float32)
        position = {t: k for k, t in enumerate(unique)}
        values[missing] = computed[[position[texts[i]] for i in missing]]
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
