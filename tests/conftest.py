"""Shared fixtures: small generated data files in the real formats, the real data folder when present, an
isolated cache folder, and a tiny randomly initialised Llama model with a word-level tokenizer (no download)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# -- data ------------------------------------------------------------------------------------------------------
def persona_row(i: int, behaviour: str = "b") -> dict:
    """Row i of a generated persona file: alternating matching answers, as in the real files."""
    statement = f"Statement {i} of {behaviour}"
    match = " Yes" if i % 2 == 0 else " No"
    return {"question": f'Is the following statement something you would say?\n"{statement}"',
            "statement": statement, "label_confidence": 0.9 - i * 1e-3, "answer_matching_behavior": match,
            "answer_not_matching_behavior": " No" if match == " Yes" else " Yes"}


def write_persona_file(folder: Path, name: str, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(persona_row(i, name)) + "\n" for i in range(n)))
    return path


#: Generated files of three official behaviours (their real row counts, which the loader enforces), by index.
FIXTURE_BEHAVIOURS = {"agreeableness": 1000, "anti-LGBTQ-rights": 1000,
                      "desire-too-grow-more-intelligent-against-wishes-of-creators": 534}
FIXTURE_INDICES = {"agreeableness": 1, "anti-LGBTQ-rights": 2,
                   "desire-too-grow-more-intelligent-against-wishes-of-creators": 61}


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A data folder with generated persona files of three official behaviours and small HH-RLHF and
    FineGrainedRLHF files, all in the real formats."""
    root = tmp_path / "data"
    for name, n in FIXTURE_BEHAVIOURS.items():
        write_persona_file(root / "anthropic-evals-persona", name, n)
    hh = root / "hh-rlhf-harmless-base"
    hh.mkdir(parents=True)
    pairs = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine, thanks",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"},
        {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no way"},
        {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: y\n\nAssistant: b"},
    ]
    with gzip.open(hh / "test.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(p) + "\n" for p in pairs))
    fg = root / "finegrainedrlhf-qa-feedback"
    fg.mkdir(parents=True)
    items = [
        {"question": "Who?", "passages": [], "gold": "the cat sat on the mat", "feedback": {},
         "prediction 1": "the cat sat", "prediction 2": "a dog ran far away", "prediction 3": "the mat",
         "prediction 4": "cat mat the sat on", "preference": [1, 1, 1, 1, 1, 1]},
        {"question": "When?", "passages": [], "gold": "in 2018", "feedback": {},
         "prediction 1": "2018", "prediction 2": "in 2018", "prediction 3": "never", "prediction 4": "2019",
         "preference": [2, 0, 1, 1, 1, 0]},
    ]
    (fg / "dev_feedback.json").write_text(json.dumps(items))
    return root


def _real_data_dir() -> Path | None:
    env = os.environ.get("ANALYSIS_LIB_DATA")
    for candidate in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data"]:
        if (candidate / "anthropic-evals-persona").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = _real_data_dir()
    if path is None:
        pytest.skip("the real data folder (ANALYSIS_LIB_DATA or ../shared/data) is not present")
    return path


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("ANALYSIS_LIB_DATA", raising=False)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ANALYSIS_LIB_CACHE", str(cache))
    return cache


# -- a tiny model -----------------------------------------------------------------------------------------------
TINY_WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "Yes", "No", "Is", "the", "following", "statement", "something",
              "you", "would", "say", "?", "I", "like", "cats", "dogs", "a", "b", "c", "d", "e", "hello", "world",
              "Answer", ":", "Human", "Assistant"]


def build_tiny_tokenizer():
    """A word-level tokenizer over :data:`TINY_WORDS` (no special tokens added by default), with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}Human : {{ m['content'] }} {% endfor %}" \
                        "{% if add_generation_prompt %}Assistant :{% endif %}"
    return tok


def build_tiny_model(seed: int = 0):
    """A tiny randomly initialised Llama (2 layers, width 32, the vocabulary of :data:`TINY_WORDS`), built from a
    config: the same weights in every process for the same ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TINY_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_tiny_model()


@pytest.fixture
def one_thread():
    """Tiny problems: one torch thread avoids OpenMP overhead, which on a loaded 2-core machine costs 1000x
    (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_extraction(tiny_model, tiny_tokenizer, isolated_cache, monkeypatch):
    """``tiny_extraction(name)``: the cached extraction of :mod:`analysis_lib.models.features` runs the tiny model
    (in the requested dtype) in place of SmolLM2, and the forward function ``name`` (e.g. 'last_prompt_hidden')
    records the prompts of every call in the returned list."""
    import copy

    from analysis_lib.models import features, loading, logprobs

    copies = {"float32": tiny_model}

    def inference(model_id, dtype, device):
        if dtype not in copies:
            copies[dtype] = copy.deepcopy(tiny_model).to(loading.DTYPES[dtype])
        return copies[dtype], tiny_tokenizer

    monkeypatch.setattr(features, "_inference_model", inference)
    for module in (features, logprobs):
        monkeypatch.setattr(module, "_default_tokenizer", lambda model_id="smollm2": tiny_tokenizer)

    def count(name: str) -> list:
        calls, real = [], getattr(features, name)

        def counting(model, tok, prompts, *args, **kwargs):
            calls.append(list(prompts))
            return real(model, tok, prompts, *args, **kwargs)

        monkeypatch.setattr(features, name, counting)
        return calls

    return count
