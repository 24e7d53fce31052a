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
