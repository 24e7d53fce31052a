"""Prompts and log-probabilities: the prompt templates, tokenisation, and the policy's log-probs of answers and
responses.

* Prompt templates (:data:`PROMPT_TEMPLATES`, :func:`format_prompt`), explicit and part of every cache key:
  ``raw`` is the official code's last-layer format (the persona question, no wrapper, the tokenizer's default
  special tokens: none for SmolLM2, a BOS for Llama-2); ``raw_newline`` adds the "\\n" the official full-DPO
  and UMAP code appends; ``chat`` is the tokenizer's chat template with the generation prompt (SmolLM2's adds
  its default system message); ``human_assistant`` is Anthropic's evaluation format without its leading
  ``<EOT>`` (a special token of Anthropic's own models; as text it would be a few arbitrary tokens for
  other tokenizers).
* Log-probs: :func:`answer_logprobs` (single-token answers such as " Yes"/" No" from one forward pass that
  keeps only the last position's logits) and :func:`sequence_logprobs` (multi-token responses: shift by one,
  mask prompt and padding, sum or mean, in fp32).

Names with a leading underscore here are shared only inside :mod:`analysis_lib.models`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from analysis_lib import checks as C
from analysis_lib.models.loading import SMOLLM2, load_tokenizer

YES_NO = (" Yes", " No")
REDUCTIONS = ("sum", "mean")
#: name -> (what it is, whether the tokenizer adds its default special tokens).
PROMPT_TEMPLATES = {
    "raw": ("the question as is, no wrapper (official last-layer code)", True),
    "raw_newline": ("the question followed by a newline (official full-DPO and UMAP code)", True),
    "chat": ("the tokenizer's chat template, one user turn, generation prompt added", False),
    "human_assistant": ("'\\n\\nHuman: {question}\\n\\nAssistant:' (Anthropic's evaluation format, without its "
                        "leading <EOT>, a special token of Anthropic's own models)", True),
}


def _check_template(template: str) -> None:
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"template: must be one of {list(PROMPT_TEMPLATES)}, got {template!r}")


@functools.lru_cache(maxsize=4)
def _default_tokenizer(model_id: str = SMOLLM2):
    return load_tokenizer(model_id)


def format_prompt(question: str, template: str = "raw", tokenizer=None) -> str:
    """The text given to the model for ``question`` under ``template`` (see :data:`PROMPT_TEMPLATES`).

    ``chat`` needs a tokenizer's chat template (default: SmolLM2's).
    """
    _check_template(template)
    if not isinstance(question, str):
        raise ValueError(f"question: must be a string, got {type(question).__name__}")
    if template == "raw":
        return question
    if template == "raw_newline":
        return question + "\n"
    if template == "human_assistant":
        return f"\n\nHuman: {question}\n\nAssistant:"
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template: 'chat' needs a tokenizer with a chat template; this one has none")
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


#: The question before every persona statement (the official raw prompt): the text whose tokens a packed forward
#: pass computes once for all the prompts that begin with it (:func:`shared_prefix_ids`).
SHARED_PROMPT_PREFIX = 'Is the following statement something you would say?\n"'


@functools.lru_cache(maxsize=16)
def _shared_prefix_ids(tokenizer, template: str) -> tuple[int, ...]:
    texts = [format_prompt(SHARED_PROMPT_PREFIX + start, template, tokenizer) for start in ("I", "0")]
    a, b = (tokenizer.encode(t, add_special_tokens=PROMPT_TEMPLATES[template][1]) for t in texts)
    common = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return tuple(a[:common])


def shared_prefix_ids(tokenizer, template: str = "raw") -> list[int]:
    """The token ids that prompts of :data:`SHARED_PROMPT_PREFIX` + a statement begin with under ``template``
    (its chat markup included). A packed forward pass (:func:`analysis_lib.models.features._packed_forward`)
    computes them once for all prompts that begin with them; any other prompt (e.g. a statement whose first
    character merges with the quote into one token) is computed whole."""
    _check_template(template)
    return list(_shared_prefix_ids(tokenizer, template))


def _shares_prefix(ids, prefix) -> bool:
    """Whether a prompt's token ids begin with ``prefix`` and go on after it: the packed pass then computes the
    prefix once and only the prompt's own tokens (:func:`analysis_lib.models.features._packed_forward`)."""
    n = len(prefix)
    return n > 0 and len(ids) > n and tuple(ids[:n]) == tuple(prefix)


def tokenize_prompts(tokenizer, questions: list[str], template: str = "raw", padding_side: str = "left"):
    """Tokenise formatted prompts as one padded batch (``input_ids``, ``attention_mask``)."""
    _check_template(template)
    texts = [format_prompt(q, template, tokenizer) for q in questions]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side=padding_side,
                     add_special_tokens=PROMPT_TEMPLATES[template][1])


def answer_token_ids(tokenizer, answers=YES_NO, context: str = '"') -> list[int]:
    """Token id of each single-token answer as it follows a prompt (SmolLM2: ' Yes' = 9230, ' No' = 2838).

    The id is the token that ``answer`` adds after ``context`` (default '"', the last character of every persona
    question): encode(context + answer) minus encode(context). Tokenised on its own, a sentencepiece tokenizer
    (Llama-2) turns ' Yes' into ['▁', '▁Yes'] (its dummy-prefix space plus the answer's own), whereas after a
    prompt ' Yes' is the one token '▁Yes' (Llama-2 id 3869, the official code's id). If context and answer
    merge into other tokens, the answer's own encoding is used without leading whitespace-only tokens. An
    answer that is still several tokens is an error (use :func:`sequence_logprobs`)."""
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers: give a non-empty sequence of strings such as (' Yes', ' No'), got {answers!r}")
    base = tokenizer.encode(context, add_special_tokens=False)
    ids = []
    for answer in answers:
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"answers: each answer must be a non-blank string, got {answer!r}")
        full = tokenizer.encode(context + answer, add_special_tokens=False)
        toks = full[len(base):] if full[:len(base)] == base else None
        if toks is None:
            toks = tokenizer.encode(answer, add_special_tokens=False)
            while len(toks) > 1 and not tokenizer.decode(toks[:1]).strip():
                toks = toks[1:]
        if len(toks) != 1:
            raise ValueError(f"answers: {answer!r} is {len(toks)} tokens {toks} after a prompt for this tokenizer; "
                             f"single-token answers only (use sequence_logprobs for longer responses)")
        ids.append(toks[0])
    return ids


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _same_length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of prompts of exactly the same token length (at most ``batch_size``), shortest first: no padding,
    so a prompt's result does not depend on the other prompts of the request. In bf16 a padded batch changes
    the hidden states by about 1% (measured on SmolLM2: up to 0.375 at norm 47), which would make cached
    features depend on which chapter asked first; without padding they are bitwise the same in any batch."""
    by_length: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        by_length.setdefault(lengths[i], []).append(i)
    return [group[k:k + batch_size] for group in by_length.values() for k in range(0, len(group), batch_size)]


# The feature extraction's source (which calls these two by name) is part of the feature-cache key
# (analysis_lib.models.features.FEATURE_CODE), so the names stay; the checks themselves live in analysis_lib.checks.
def _check_batch_size(batch_size) -> None:
    C.int_at_least("batch_size", batch_size, 1)


def _check_texts(name: str, texts) -> list[str]:
    return C.texts(name, texts)


#: A progress bar appears only once its work has run this long (seconds): "anything longer than a few seconds".
PROGRESS_DELAY = 3.0


def _progress(iterable, total: int, show: bool, desc: str):
    if not show:
        return iterable
    from analysis_lib.runtime import progress

    return progress(iterable, total=total, desc=desc, leave=False)


def _progress_bar(total: int, show: bool, desc: str, unit: str = "prompt"):
    """A counter-style text bar that stays hidden unless the work takes longer than :data:`PROGRESS_DELAY`
    seconds; ``update(k)`` after each k items."""
    from analysis_lib.runtime import progress

    return progress(total=total, desc=desc, unit=unit, disable=not show, delay=PROGRESS_DELAY)


def answer_logprobs(model, tokenizer, prompts, template: str = "raw", answers=YES_NO, batch_size: int = 32,
                    grad: bool = False, progress: bool = False) -> torch.Tensor:
    """log pi(answer | prompt) for single-token answers: (n, len(answers)) float32 on the model's device.

    One forward pass per batch with ``logits_to_keep=1`` (only the last position's logits are computed),
    left padding, log-softmax over the full vocabulary in fp32. ``prompts`` are questions, formatted with
    ``template``. With ``grad=True`` the result keeps the graph (all prompts in one batch).
    """
    prompts = _check_texts("prompts", prompts)
    _check_batch_size(batch_size)
    ids = torch.tensor(answer_token_ids(tokenizer, answers), device=_model_device(model))
    if not prompts:
        return torch.empty(0, len(ids))

    def run(batch):
        enc = tokenize_prompts(tokenizer, batch, template, "left").to(_model_device(model))
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       position_ids=_position_ids(enc["attention_mask"]), logits_to_keep=1).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)[:, ids]

    if grad:
        return run(prompts)
    out = torch.empty(len(prompts), len(ids), device=_model_device(model))
    lengths = [len(p) for p in prompts]
    batches = _length_sorted_batches(lengths, batch_size)
    with torch.no_grad():
        for batch in _progress(batches, len(batches), progress, "answer log-probs"):
            out[batch] = run([prompts[i] for i in batch])
    return out


def sequence_logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                                  reduction: str = "sum") -> torch.Tensor:
    """Per-sequence log-prob of the tokens marked by ``response_mask`` (B, T): the logits at position t score
    the token at t + 1 (shift by one); log-softmax in fp32; ``reduction`` 'sum' or 'mean' over marked tokens."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if logits.shape[:2] != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(f"logits, input_ids, response_mask: shapes {tuple(logits.shape)}, {tuple(input_ids.shape)},"
                         f" {tuple(response_mask.shape)} do not match (B, T, V), (B, T), (B, T)")
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    mask = response_mask[:, 1:].to(logp.dtype)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    total = token_logp.sum(-1)
    if reduction == "sum":
        return total
    counts = mask.sum(-1)
    if bool((counts == 0).any()):
        raise ValueError("response_mask: a sequence has no response token to average over")
    return total / counts


def build_response_batch(tokenizer, prompts: list[str], responses: list[str], template: str = "raw",
                         append_eos: bool = False):
    """(input_ids, attention_mask, response_mask), right-padded: prompt tokens (with the template's special
    tokens) followed by the response tokens (no special tokens; EOS appended if ``append_eos``, as TRL does)."""
    _check_template(template)
    pad = tokenizer.pad_token_id
    rows, masks = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        p = tokenizer.encode(format_prompt(prompt, template, tokenizer),
                             add_special_tokens=PROMPT_TEMPLATES[template][1])
        r = tokenizer.encode(response, add_special_tokens=False) + ([tokenizer.eos_token_id] if append_eos else [])
        if not r:
            raise ValueError("responses: an empty response has no token to score")
        rows.append(p + r)
        masks.append([False] * len(p) + [True] * len(r))
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    response_mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
    return input_ids, attention, response_mask


def sequence_logprobs(model, tokenizer, prompts, responses, template: str = "raw", reduction: str = "sum",
                      append_eos: bool = False, batch_size: int = 8, grad: bool = False,
                      progress: bool = False) -> torch.Tensor:
    """log pi(response | prompt) for multi-token responses, (n,) float32: the sum (DPO) or the mean (TRL's
    IPO) of the response tokens' log-probs; prompt and padding tokens are masked out."""
    prompts, responses = _check_texts("prompts", prompts), _check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"responses: need one per prompt, got {len(responses)} for {len(prompts)} prompts")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {list(REDUCTIONS)}, got {reduction!r}")
    _check_batch_size(batch_size)
    device = _model_device(model)

    def run(idx):
        ids, att, resp = build_response_batch(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx],
                                              template, append_eos)
        ids, att, resp = ids.to(device), att.to(device), resp.to(device)
        logits = model(input_ids=ids, attention_mask=att).logits
        return sequence_logprobs_from_logits(logits, ids, resp, reduction)

    if grad:
        return run(list(range(len(prompts))))
    out = torch.empty(len(prompts), device=device)
    batches = _length_sorted_batches([len(p) + len(r) for p, r in zip(prompts, responses, strict=True)],
                                     batch_size)
    with torch.no_grad():
        for batch in _progress(batches, len(batches), progress, "sequence log-probs"):
            out[batch] = run(batch)
    return out


# ------------------------------------------------------------------------------------------------------------
# preference pairs: token ids, and the policy's log-probs of chosen and rejected responses
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedPairs:
    """Preference pairs as token ids: the prompt (formatted with ``template``, the template's special tokens
    added) and the chosen and rejected responses (no special tokens; EOS appended when ``append_eos``).
    ``texts`` keeps (prompt, chosen, rejected) as given (the key of the reference-log-prob cache)."""

    texts: tuple[tuple[str, str, str], ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    chosen_ids: tuple[tuple[int, ...], ...]
    rejected_ids: tuple[tuple[int, ...], ...]
    template: str
    append_eos: bool
    max_length: int | None
    #: the ids that prompts share (:func:`shared_prefix_ids`), computed once per forward pass of the packed path
    shared_prefix: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def single_token(self) -> bool:
        """Whether every response is one token (the persona " Yes"/" No" answers without EOS)."""
        return all(len(c) == 1 and len(r) == 1 for c, r in zip(self.chosen_ids, self.rejected_ids, strict=True))

    def tokens(self, idx, single_token_path: bool, packed: bool = False) -> int:
        """Real (non-padding) tokens that a forward pass over the pairs ``idx`` processes (``packed``: the packed
        passes: the single-token path computes the shared prefix once, the general path each distinct prompt once
        and each response without its last token)."""
        if single_token_path:
            total = sum(len(self.prompt_ids[i]) for i in idx)
            n = len(self.shared_prefix)
            sharing = packed and sum(_shares_prefix(self.prompt_ids[i], self.shared_prefix) for i in idx)
            return total - n * sharing + (n if sharing else 0)
        if packed:
            return sum(len(p) for p in {self.prompt_ids[i] for i in idx}) + \
                sum(len(self.chosen_ids[i]) + len(self.rejected_ids[i]) - 2 for i in idx)
        return sum(2 * len(self.prompt_ids[i]) + len(self.chosen_ids[i]) + len(self.rejected_ids[i]) for i in idx)


def encode_pairs(tokenizer, prompts, chosen, rejected, *, template: str = "raw", append_eos: bool = False,
                 max_length: int | None = None) -> EncodedPairs:
    """Tokenise preference pairs (prompt, chosen response, rejected response) for :func:`pair_logprobs`.

    The prompt is formatted with ``template`` and gets the template's special tokens; each response is tokenised
    on its own, without special tokens, and gets EOS when ``append_eos`` (TRL's convention; the default here is
    no EOS, the official last-layer setting: the answer token alone). A response with no token is an error, as
    is a prompt that leaves no room for one response token within ``max_length``; a response that does not fit
    after its prompt is cut to fit (TRL's ``keep_start``)."""
    _check_template(template)
    prompts, chosen, rejected = (C.texts(n, v) for n, v in (("prompts", prompts), ("chosen", chosen),
                                                              ("rejected", rejected)))
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"chosen, rejected: need one of each per prompt, got {len(prompts)} prompts, "
                         f"{len(chosen)} chosen and {len(rejected)} rejected")
    if max_length is not None:
        max_length = C.int_at_least("max_length", max_length, 2)
    eos = [tokenizer.eos_token_id] if append_eos else []
    special = PROMPT_TEMPLATES[template][1]
    prompt_ids, chosen_ids, rejected_ids = [], [], []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
        p_ids = tokenizer.encode(format_prompt(p, template, tokenizer), add_special_tokens=special)
        if not p_ids:
            raise ValueError(f"prompts: pair {i} has an empty prompt (no token under the template {template!r})")
        if max_length is not None and len(p_ids) + 1 > max_length:
            raise ValueError(f"max_length: the prompt of pair {i} is {len(p_ids)} tokens, which leaves no room for a "
                             f"response within max_length = {max_length}; raise max_length or shorten the prompt")
        room = None if max_length is None else max_length - len(p_ids)
        for name, text, out in (("chosen", c, chosen_ids), ("rejected", r, rejected_ids)):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if not ids:
                raise ValueError(f"{name}: pair {i} has an empty response ({text!r}: no token to score)")
            out.append(tuple((ids + eos)[:room]))
        prompt_ids.append(tuple(p_ids))
    return EncodedPairs(tuple(zip(prompts, chosen, rejected, strict=True)), tuple(prompt_ids), tuple(chosen_ids),
                        tuple(rejected_ids), template, append_eos, max_length,
                        tuple(shared_prefix_ids(tokenizer, template)))


def _scoring_batch(rows, pad_id: int, device):
    """Right-padded (input_ids, attention_mask) of rows (prompt ids, response ids), the boolean mask of the
    positions whose logits score a response token (the position before each response token), the scored token
    ids in the mask's row-major order, and the row of each."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    score = torch.zeros((len(rows), width), dtype=torch.bool)
    for k, (p, r) in enumerate(rows):
        ids[k, :len(p) + len(r)] = torch.tensor(p + r)
        attention[k, :len(p) + len(r)] = 1
        score[k, len(p) - 1:len(p) + len(r) - 1] = True
    targets = ids[:, 1:][score[:, :-1]]
    row_of = score.nonzero()[:, 0]
    return ids.to(device), attention.to(device), score.to(device), targets.to(device), row_of.to(device)


#: The general path's padded passes: rows are split by length (:func:`_length_buckets`) once a pass holds this many
#: real tokens, and a row joins the pass of the longer rows before it while padding it wastes at most this fraction.
#: On the HH-RLHF pairs of up to 64 tokens, one pass padded every row to the longest: 4,096 computed tokens for
#: 2,847 real ones per 32 pairs.
LENGTH_BUCKET_TOKENS, LENGTH_BUCKET_WASTE = 1024, 0.2


def _length_buckets(lengths: list[int], min_tokens: int = LENGTH_BUCKET_TOKENS,
                    waste: float = LENGTH_BUCKET_WASTE) -> list[list[int]]:
    """The rows (indices into ``lengths``) of each padded pass, longest first: a pass is closed once it holds
    ``min_tokens`` real tokens and the next row is shorter than ``1 - waste`` times its longest (so small batches,
    such as a training step's, stay one pass)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    buckets, current, tokens = [], [], 0
    for i in order:
        if current and tokens >= min_tokens and lengths[i] < (1 - waste) * lengths[current[0]]:
            buckets.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    return buckets + ([current] if current else [])


def response_logprobs(model, rows, pad_id: int, reduction: str = "sum") -> torch.Tensor:
    """log pi(response | prompt) for rows of (prompt ids, response ids): (n,) float32, the sum (DPO) or the mean
    (TRL's IPO) of the response tokens' log-probs. For Llama-family models one packed pass computes each distinct
    prompt once and every response after it (:func:`_packed_response_logprobs`); otherwise the rows run as
    right-padded forward passes, one per group of similar length (:func:`_length_buckets`; one pass for a small
    batch). The output embedding is applied only at
    the positions that score a response token (``logits_to_keep`` as a boolean mask), and the log-softmax over
    the vocabulary is taken there, in fp32: never over the full vocabulary at every position."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {list(REDUCTIONS)}, got {reduction!r}")
    packed = _packed_response_logprobs(model, rows, reduction)
    if packed is not None:
        return packed
    buckets = _length_buckets([len(p) + len(r) for p, r in rows], LENGTH_BUCKET_TOKENS, LENGTH_BUCKET_WASTE)
    if len(buckets) <= 1:
        return _padded_response_logprobs(model, rows, pad_id, reduction)
    out = torch.cat([_padded_response_logprobs(model, [rows[i] for i in b], pad_id, reduction) for b in buckets])
    return out[torch.argsort(torch.tensor([i for b in buckets for i in b], device=out.device))]


def _packed_response_logprobs(model, rows, reduction: str) -> torch.Tensor | None:
    """:func:`response_logprobs` in one packed pass without padding (None where packing does not apply, as for
    :func:`_packed_last_logits`): each distinct prompt's tokens once (grouped by length), then each response
    without its last token, as a sequence of its own that attends to its prompt's keys and values and goes on at
    the prompt's positions (:func:`analysis_lib.models.features._packed_hidden`). The prompt's last token scores
    every response's first token; a response's own tokens score the rest. On 32 HH-RLHF pairs of up to 64 tokens,
    one padded pass computed 4,096 positions for 2,847 real tokens (the 755 prompt tokens twice); this computes
    2,028 rows."""
    from analysis_lib.models.features import _packed_hidden  # features imports this module

    hf = _packed_model(model)
    if hf is None or not rows:
        return None
    device = _model_device(model)
    prompts = list(dict.fromkeys(tuple(p) for p, _ in rows))
    pieces, first, start = [], {}, 0  # first: the packed row where each prompt begins
    for batch in _same_length_batches([len(p) for p in prompts], len(prompts)):
        pieces.append((torch.tensor([prompts[i] for i in batch], device=device), 0, None))
        for k, i in enumerate(batch):
            first[prompts[i]] = start + k * len(prompts[i])
        start += len(batch) * len(prompts[batch[0]])
    keep, targets, row_of = [], [], []
    for n, (p, r) in enumerate(rows):
        p, r = tuple(p), list(r)
        keep.append(first[p] + len(p) - 1)
        if len(r) > 1:
            pieces.append((torch.tensor([r[:-1]], device=device), len(p), [first[p]]))
            keep.extend(range(start, start + len(r) - 1))
            start += len(r) - 1
        targets.extend(r)
        row_of.extend([n] * len(r))
    hidden = _packed_hidden(hf, pieces, torch.tensor(keep), blocks=False, one_attention=True)
    logits = hf.get_output_embeddings()(hidden)
    token_logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, torch.tensor(targets, device=device)[:, None])
    row_of = torch.tensor(row_of, device=device)
    total = torch.zeros(len(rows), dtype=token_logp.dtype, device=device).index_add(0, row_of, token_logp[:, 0])
    if reduction == "sum":
        return total
    return total / torch.bincount(row_of, minlength=len(rows)).to(total.dtype)


def _padded_response_logprobs(model, rows, pad_id: int, reduction: str) -> torch.Tensor:
    """:func:`response_logprobs` of ``rows`` in one right-padded forward pass."""
    ids, attention, score, targets, row_of = _scoring_batch(rows, pad_id, _model_device(model))
    logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=score, use_cache=False).logits
    token_logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]
    total = torch.zeros(len(rows), dtype=token_logp.dtype, device=token_logp.device).index_add(0, row_of, token_logp)
    if reduction == "sum":
        return total
    counts = torch.bincount(row_of, minlength=len(rows)).to(total.dtype)
    return total / counts


def _packed_model(model):
    """The Hugging Face model whose prompts :func:`_packed_last_logits` packs (a peft model: the wrapped one), or
    None where packing does not apply."""
    from analysis_lib.models.features import _packable  # features imports this module

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(hf, "base_model") or not hasattr(hf, "get_output_embeddings") or not _packable(hf):
        return None
    return hf


def _packed_last_logits(model, prompts: list[list[int]], prefix=()) -> torch.Tensor | None:
    """The logits at the last token of each prompt (n, vocab), the prompts **packed without padding**: their
    tokens in one matrix for every projection, attention per group of equal length, or with autograd enabled once
    for all prompts, padded and masked (:func:`analysis_lib.models.features._packed_forward`, the features'
    forward pass). None for a model it does not apply to (not a Llama-family decoder, or a :class:`TopLayers` view): the
    caller then runs the padded batch. A right-padded batch computes every row to the longest prompt's length (a
    third of the rows on the persona batches of 16); packing computes only real tokens, and the ``prefix`` that
    prompts share (:func:`shared_prefix_ids`) once."""
    from analysis_lib.models.features import _packed_forward  # features imports this module

    hf = _packed_model(model)
    if hf is None:
        return None
    device = _model_device(model)
    batches = _same_length_batches([len(p) for p in prompts], len(prompts))  # one batch per length
    order = [i for batch in batches for i in batch]
    hidden = _packed_forward(hf, [torch.tensor([prompts[i] for i in batch], device=device) for batch in batches],
                             list(prefix), blocks=False)
    logits = hf.get_output_embeddings()(hidden)
    return logits[torch.argsort(torch.tensor(order, device=logits.device))]


def pair_logprobs(model, pairs: EncodedPairs, idx, pad_id: int, reduction: str = "sum",
                  single_token_path: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen | prompt), log pi(rejected | prompt)) of the pairs ``idx``, each (len(idx),) float32.

    General path: the rows prompt + chosen and prompt + rejected (:func:`response_logprobs`: for Llama-family
    models one packed pass that computes each distinct prompt once). Single-token path (every response one token,
    e.g. the persona " Yes"/" No" without EOS; on unless ``single_token_path=False``): one forward pass per prompt,
    whose last position scores both answers; for Llama-family models the prompts are packed without padding, their
    shared prefix computed once (:func:`_packed_last_logits`). The two paths agree to float rounding."""
    idx = [int(i) for i in idx]
    if single_token_path and pairs.single_token:
        logits = _packed_last_logits(model, [list(pairs.prompt_ids[i]) for i in idx], pairs.shared_prefix)
        if logits is None:
            rows = [(list(pairs.prompt_ids[i]), []) for i in idx]
            ids, attention, _, _, _ = _scoring_batch(rows, pad_id, _model_device(model))
            last = torch.zeros_like(attention, dtype=torch.bool)
            last[torch.arange(len(idx)), attention.sum(1) - 1] = True
            logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=last, use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        answers = torch.tensor([[pairs.chosen_ids[i][0], pairs.rejected_ids[i][0]] for i in idx],
                               device=logp.device)
        both = logp.gather(-1, answers)
        return both[:, 0], both[:, 1]
    rows = [(list(pairs.prompt_ids[i]), list(pairs.chosen_ids[i])) for i in idx] + \
        [(list(pairs.prompt_ids[i]), list(pairs.rejected_ids[i])) for i in idx]
    logps = response_logprobs(model, rows, pad_id, reduction)
    return logps[:len(idx)], logps[len(idx):]
