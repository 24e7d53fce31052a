"""Seeding and device selection: the one place that decides both."""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a fresh NumPy generator for this seed.

    Chapters call this once with the ``seed`` of their parameters cell; everything random in a chapter then
    derives from it, so a rerun gives the same numbers.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency, but keep numpy-only use possible
        pass
    return np.random.default_rng(seed)


def get_device(prefer: str = "auto"):
    """The torch device to use: CUDA when present (``prefer='auto'``), else CPU; under a multi-process launch
    (``LOCAL_RANK`` set) the process's own GPU.

    ``prefer`` may be 'auto', 'cpu' or 'cuda'; asking for 'cuda' on a machine without one is an error. The
    environment variable ``ANALYSIS_LIB_DEVICE`` overrides 'auto'.
    """
    import torch

    allowed = {"auto", "cpu", "cuda"}
    if prefer not in allowed:
        raise ValueError(f"prefer: must be one of {sorted(allowed)}, got {prefer!r}")
    if prefer == "auto":
        prefer = os.environ.get("ANALYSIS_LIB_DEVICE", "auto")
        if prefer not in allowed:
            raise ValueError(f"ANALYSIS_LIB_DEVICE: must be one of {sorted(allowed)}, got {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("prefer: 'cuda' was asked for but no CUDA device is available")
    if prefer == "auto":
        prefer = "cuda" if torch.cuda.is_available() else "cpu"
    if prefer == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():  # one GPU per process (accelerate launch)
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(prefer)


#: Threads of numpy's and scipy's BLAS/LAPACK (OpenBLAS or MKL) in a chapter (:func:`set_cpu_threads`).
BLAS_THREADS = 1


def set_blas_threads(n: int = BLAS_THREADS) -> int | None:
    """Cap the thread pool of numpy's and scipy's BLAS/LAPACK at ``n`` threads for the rest of the process
    (``threadpoolctl``); returns the previous size of the first pool, or None where no BLAS pool is found.

    Why 1: the numpy linear algebra of this project is small (covariances, eigenvalues, SVDs of 576 x 576
    matrices), and LAPACK's level-2-heavy routines synchronise their threads on every small step. On a shared
    2-core machine a descheduled BLAS thread leaves the others spinning: a 576 x 576 spectral norm took
    0.83-1.5 s with OpenBLAS's 2 threads under load against 0.06 s with 1, which made the 135-behaviour table of
    :func:`analysis_lib.lastlayer.behaviour_properties` 13 times slower. torch's own threads (the heavy work) are
    set separately."""
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    threadpool_limits(limits=int(n), user_api="blas")
    return int(blas[0]["num_threads"]) if blas else None


def default_threads() -> int:
    """The torch threads a chapter uses unless it asks for fewer: all cores, at most 8."""
    return min(os.cpu_count() or 1, 8)


def set_cpu_threads(n: int | None = None, blas_threads: int = BLAS_THREADS) -> int:
    """Use ``n`` torch threads (default :func:`default_threads`) and ``blas_threads`` threads for numpy's BLAS
    (:func:`set_blas_threads`); returns the number of torch threads."""
    import torch

    n = n or default_threads()
    torch.set_num_threads(n)
    set_blas_threads(blas_threads)
    return n


@contextmanager
def torch_threads(n: int):
    """Run the ``with`` block on ``n`` torch threads, then restore the previous setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


#: glibc's mallopt parameters (malloc.h): the free memory at the heap's top above which it is given back to the
#: system, and the number of allocations that may be served by their own memory map.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEPT_FREED_MEMORY: list[bool] = []


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory this process frees, for its next allocations, instead of giving it back
    to the system (Linux with glibc; elsewhere nothing happens). Returns whether the setting applies.

    Why: a CPU training step allocates and frees the same few hundred MB each time (the gradients, the
    activations, the output layer's 113 MB gradient of SmolLM2). By default glibc serves each allocation over
    32 MB with its own memory map and gives freed memory at the heap's top back to the system, so the next step
    touches fresh pages: about 100,000 page faults a step of full fine-tuning, 0.5-0.6 s of a 2.6 s step on a
    2-core Xeon. With this setting the process keeps the memory of its largest step (its peak, which it reached
    anyway). The setting stays for the rest of the process; :func:`analysis_lib.training.train` and every packed
    pass (:func:`analysis_lib.models.features._packed_hidden`: features, evaluations, training passes) make it on
    CPU."""
    if _KEPT_FREED_MEMORY:
        return _KEPT_FREED_MEMORY[0]
    import ctypes
    import platform

    applied = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL("libc.so.6")
        applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))  # -1: never
    _KEPT_FREED_MEMORY.append(applied)
    return applied


def progress(iterable=None, *, total: int | None = None, desc: str | None = None, leave: bool = True,
             delay: float = 0.0, unit: str = "it", disable: bool = False):
    """A text progress bar (tqdm) for anything longer than a few seconds.

    Plain text rather than a notebook widget; it refreshes at most every few seconds. When the book's runner
    executes the chapter (``ANALYSIS_LIB_PROGRESS=terminal``) the bar goes to the runner's terminal, never into
    the page. ``delay``: stay hidden unless the work takes longer than that many seconds. Without ``iterable``
    it is a counter: call ``update(k)``.
    """
    import sys

    from tqdm import tqdm

    to_terminal = os.environ.get("ANALYSIS_LIB_PROGRESS") == "terminal"
    return tqdm(iterable, total=total, desc=desc, leave=leave, mininterval=3.0, ascii=True, dynamic_ncols=False,
                ncols=90, delay=delay, unit=unit, disable=disable, file=sys.__stderr__ if to_terminal else None)


#: Seconds spent per part of the work in this process (see :func:`timed`); a chapter's footer and the book's
#: build report them, so that a slow build says where its time went.
TIMINGS: dict[str, float] = {}


@contextmanager
def timed(part: str):
    """Add the time spent in the ``with`` block to ``TIMINGS[part]`` (e.g. 'features', 'training', 'plotting')."""
    start = time.perf_counter()
    try:
        yield
    finally:
        TIMINGS[part] = TIMINGS.get(part, 0.0) + time.perf_counter() - start
