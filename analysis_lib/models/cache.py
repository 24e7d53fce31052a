"""Disk caches of the library: the cache root, atomic writes and folder builds, and the per-item store of
features (:class:`FeatureStore`).

Cache root: ``$ANALYSIS_LIB_CACHE``, default ``~/.cache/analysis_lib``. Every write is atomic (a temporary
file in the same folder, then ``os.replace``); a folder built by :func:`atomic_build_dir` is trusted only with
its completion marker.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

CACHE_ENV = "ANALYSIS_LIB_CACHE"


#: errno values that mean "this folder cannot be written" (read-only file system, permissions).
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class CacheNotWritableError(OSError):
    """The cache folder cannot be written; the message names the setting to change (``ANALYSIS_LIB_CACHE``)."""


@contextlib.contextmanager
def writing_to_cache(path: Path):
    """Turn 'read-only file system' / 'permission denied' while writing ``path`` into one line that says which
    setting to change."""
    try:
        yield
    except CacheNotWritableError:
        raise
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        raise CacheNotWritableError(f"{CACHE_ENV}: cannot write to the cache at {str(path)!r} ({exc.strerror}); "
                                    f"set {CACHE_ENV} to a writable folder") from None


def cache_root() -> Path:
    """``$ANALYSIS_LIB_CACHE`` or ``~/.cache/analysis_lib`` (created on first use)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "analysis_lib").expanduser()
    with writing_to_cache(root):
        root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with writing_to_cache(path):
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
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    with writing_to_cache(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    try:
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
            content = self._read_shard(shard, values=False)
            if content is None:
                continue
            (sequence_shards if content["sequences"] else vector_shards).add(shard)
            for row, k in enumerate(content["keys"]):
                index.setdefault(k.tobytes(), (shard, row))
        self._index, self._sequence_shards, self._vector_shards = index, sequence_shards, vector_shards
        return index

    def _read_shard(self, shard: Path, values: bool = True) -> dict | None:
        """The shard's keys (and decoded values and offsets), or None for a damaged shard, which is moved aside
        (:meth:`_set_aside`) so that its items count as missing and are recomputed. Damage is whatever fails to
        read or to fit together: a truncated file, flipped bytes (the zip CRC-32 of every array is checked),
        keys that are not 16-byte digests, values or offsets that do not match the keys."""
        try:
            with open(shard, "rb") as f, np.load(f, allow_pickle=False) as z:
                keys = z["keys"]
                if keys.ndim != 2 or keys.shape[1] != 16 or keys.dtype != np.uint8:
                    raise ValueError(f"keys of shape {keys.shape} and dtype {keys.dtype}")
                out = {"keys": keys, "sequences": "offsets" in z.files}
                if values:
                    out.update(_checked_values(z, len(keys)))
            return out
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError) as exc:
            self._set_aside(shard, exc)
            return None

    def _set_aside(self, shard: Path, exc: BaseException) -> None:
        """Move a damaged shard into ``damaged/`` next to the shards, with a warning that names it; where it cannot
        be moved, a one-line error says how to remove it."""
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        aside = self.folder / "damaged" / f"{shard.name}.{uuid.uuid4().hex[:8]}"
        try:
            aside.parent.mkdir(exist_ok=True)
            os.replace(shard, aside)
        except OSError as move_error:
            raise CacheNotWritableError(
                f"{shard}: damaged cache file ({reason}) that cannot be moved aside ({move_error.strerror}); delete "
                f"it (rm {str(shard)!r}) or set {CACHE_ENV} to a writable folder") from None
        self._index = None
        warnings.warn(f"{shard}: damaged cache file ({reason}); moved to {aside}, its items are recomputed",
                      DamagedCacheWarning, stacklevel=4)

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
            content = self._read_shard(shard)
            if content is None:  # damaged and moved aside: read again without it
                return self.get(texts)
            values = content["values"]
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
        with writing_to_cache(self.folder):
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
            content = self._read_shard(shard)
            if content is None:  # damaged and moved aside: read again without it
                return self.get_sequences(texts)
            values, offsets = content["values"], content["offsets"]
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


def cached_rows(store: FeatureStore | None, texts: list[str]) -> tuple[np.ndarray | None, list[int], list[str]]:
    """Look ``texts`` up in ``store`` (None: no cache): (the cached rows, or None; the positions of the missing
    texts; the missing texts without repeats, in first-seen order, which are the ones to compute)."""
    values, missing = store.get(texts) if store is not None else (None, list(range(len(texts))))
    return values, missing, list(dict.fromkeys(texts[i] for i in missing))


def fill_rows(texts: list[str], values: np.ndarray | None, missing: list[int], unique: list[str],
              computed: np.ndarray) -> np.ndarray:
    """The (n, d) float32 rows of ``texts`` in input order: the cached ``values`` (or None) with the rows
    ``computed`` for ``unique`` (the missing texts of :func:`cached_rows`) put at the ``missing`` positions."""
    if values is None:
        values = np.full((len(texts), computed.shape[1]), np.nan, dtype=np.float32)
    position = {t: k for k, t in enumerate(unique)}
    values[missing] = computed[[position[texts[i]] for i in missing]]
    return values


class DamagedCacheWarning(UserWarning):
    """A damaged cache file was found, moved aside and will be recomputed."""


def _checked_values(z, n_keys: int) -> dict:
    """The decoded values (and offsets) of an open shard, checked against its ``n_keys`` keys."""
    dtype = str(z["dtype"])
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"unknown stored dtype {dtype!r}")
    values = _decode(z["values"], dtype)
    if values.ndim != 2:
        raise ValueError(f"values of shape {values.shape}")
    if "offsets" not in z.files:
        if values.shape[0] != n_keys:
            raise ValueError(f"{values.shape[0]} value rows for {n_keys} keys")
        return {"values": values}
    offsets = z["offsets"]
    if offsets.shape != (n_keys + 1,) or offsets[0] != 0 or offsets[-1] != values.shape[0] or \
            bool((np.diff(offsets) <= 0).any()):
        raise ValueError(f"offsets do not split {values.shape[0]} rows into {n_keys} items")
    return {"values": values, "offsets": offsets}


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
