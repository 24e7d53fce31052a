"""Language models of the book: one package, four modules along the seams of the work, and this facade.

* :mod:`~analysis_lib.models.cache`: the cache root (``$ANALYSIS_LIB_CACHE``), atomic writes and folder builds,
  the per-item :class:`FeatureStore`;
* :mod:`~analysis_lib.models.loading`: SmolLM2 (from its PyPI package), any local folder or hub id, the dtype
  rule, the output embedding, the sentence encoder;
* :mod:`~analysis_lib.models.logprobs`: prompt templates, tokenisation, answer and response log-probs (the home
  of every log-prob computation, the trainer's included);
* :mod:`~analysis_lib.models.features`: cached hidden states (the paper's g(x), the last block's inputs) and
  sentence embeddings;
* :mod:`~analysis_lib.models.policy`: a causal LM as a trainable preference policy (full, top blocks, LoRA) for
  :func:`analysis_lib.training.train`, with its reference-log-prob cache;
* :mod:`~analysis_lib.models.prefix`: the frozen lower layers run once per token sequence and cached, so that only
  the trained top layers run per step (used by the policy's ``frozen_prefix``).

Imports go one way, cache -> loading -> logprobs -> features, prefix -> policy (none of them imports this facade).
Chapters import the public names from here (``from analysis_lib.models import extract_features``); names with a
leading underscore are shared only inside this package.
"""

from analysis_lib.models.cache import (
    CACHE_ENV,
    COMPLETE_MARKER,
    STALE_BUILD_SECONDS,
    CacheNotWritableError,
    DamagedCacheWarning,
    FeatureStore,
    atomic_build_dir,
    atomic_write_bytes,
    cache_root,
    remove_orphaned_builds,
)
from analysis_lib.models.features import (
    BLOCK_INPUT_CODE,
    FEATURE_CODE,
    FEATURE_KINDS,
    FEATURES_FORMAT,
    answer_logprobs_from_features,
    encode_sentences,
    extract_block_inputs,
    extract_features,
    feature_namespace,
    last_block_inputs,
    last_prompt_hidden,
    persona_block_inputs,
    persona_features,
    zero_shot_yes_no,
)
from analysis_lib.models.loading import (
    DTYPES,
    FEATURE_DTYPE_ENV,
    ISA_CAPS,
    MINILM_DIM,
    MINILM_DISTRIBUTION,
    SMOLLM2,
    SMOLLM2_DISTRIBUTION,
    SMOLLM2_FILES,
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    SMOLLM2_YES_NO_IDS,
    cpu_capability,
    cpu_has_native_bf16,
    feature_dtype,
    hidden_size,
    inference_model,
    lm_head_weight,
    load_causal_lm,
    load_sentence_encoder,
    load_tokenizer,
    smollm2_checkpoint,
    smollm2_gguf_path,
)
from analysis_lib.models.logprobs import (
    PROGRESS_DELAY,
    PROMPT_TEMPLATES,
    REDUCTIONS,
    YES_NO,
    EncodedPairs,
    answer_logprobs,
    answer_token_ids,
    build_response_batch,
    encode_pairs,
    format_prompt,
    pair_logprobs,
    response_logprobs,
    sequence_logprobs,
    sequence_logprobs_from_logits,
    tokenize_prompts,
)
from analysis_lib.models.policy import CausalLMPolicy, LoraSettings, PreferencePairs

__all__ = [
    "PreferencePairs",
    "LoraSettings",
    "CausalLMPolicy",
    "response_logprobs",
    "pair_logprobs",
    "encode_pairs",
    "EncodedPairs",
    "BLOCK_INPUT_CODE",
    "CACHE_ENV",
    "CacheNotWritableError",
    "DamagedCacheWarning",
    "COMPLETE_MARKER",
    "DTYPES",
    "FEATURES_FORMAT",
    "FEATURE_CODE",
    "FEATURE_DTYPE_ENV",
    "FEATURE_KINDS",
    "FeatureStore",
    "ISA_CAPS",
    "MINILM_DIM",
    "MINILM_DISTRIBUTION",
    "PROGRESS_DELAY",
    "PROMPT_TEMPLATES",
    "REDUCTIONS",
    "SMOLLM2",
    "SMOLLM2_DISTRIBUTION",
    "SMOLLM2_FILES",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "SMOLLM2_YES_NO_IDS",
    "STALE_BUILD_SECONDS",
    "YES_NO",
    "answer_logprobs",
    "answer_logprobs_from_features",
    "answer_token_ids",
    "atomic_build_dir",
    "atomic_write_bytes",
    "build_response_batch",
    "cache_root",
    "cpu_capability",
    "cpu_has_native_bf16",
    "encode_sentences",
    "extract_block_inputs",
    "extract_features",
    "feature_dtype",
    "feature_namespace",
    "format_prompt",
    "hidden_size",
    "inference_model",
    "last_block_inputs",
    "last_prompt_hidden",
    "lm_head_weight",
    "load_causal_lm",
    "load_sentence_encoder",
    "load_tokenizer",
    "persona_block_inputs",
    "persona_features",
    "remove_orphaned_builds",
    "sequence_logprobs",
    "sequence_logprobs_from_logits",
    "smollm2_checkpoint",
    "smollm2_gguf_path",
    "tokenize_prompts",
    "zero_shot_yes_no",
]
