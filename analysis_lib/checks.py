"""Argument checks shared by the library: one home for them, so every module rejects bad input the same way.

Each check takes the argument's name as the caller spells it and raises ``ValueError`` with one line,
``"<name>: must be <what is allowed>, got <value>"``, or returns the value converted (``float`` / ``int`` /
``str``). ``bool`` is never accepted as a number, nor are strings, ``None`` or complex numbers; numpy scalars are.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def real_number(name: str, value, *, finite: bool = True) -> float:
    """A real number (finite unless ``finite=False``)."""
    if not _is_real(value) or (finite and not math.isfinite(value)) or math.isnan(value):
        raise ValueError(f"{name}: must be a {'finite ' if finite else ''}real number, got {value!r}")
    return float(value)


def positive(name: str, value) -> float:
    """A finite number > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative(name: str, value) -> float:
    """A finite number >= 0."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return float(value)


def in_interval(name: str, value, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """A number in the interval from ``low`` to ``high`` (closed unless ``low_open`` / ``high_open``)."""
    ok = _is_real(value) and not math.isnan(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}: must be a number in {interval}, got {value!r}")
    return float(value)


def fraction(name: str, value, *, allow_zero: bool = False) -> float:
    """A number in (0, 1], or in [0, 1] with ``allow_zero``."""
    return in_interval(name, value, 0.0, 1.0, low_open=not allow_zero)


def int_at_least(name: str, value, low: int) -> int:
    """An integer >= ``low`` (numpy integers accepted, bool and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def one_of(name: str, value, allowed) -> str:
    """One of the ``allowed`` values (compared with ==)."""
    allowed = list(allowed)
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------
# Arrays, distributions, generators, batch shapes, flags and axes: the checks that `preferences` and `dynamics`
# share (one-line messages of the same form; arrays are returned as float64)
# ----------------------------------------------------------------------------------------------------------


def _describe(value, arr) -> str:
    if arr is None:
        return "a ragged sequence"
    return repr(value) if arr.ndim == 0 else f"an array of {arr.dtype} with shape {arr.shape}"


def _as_array(value):
    try:
        return np.asarray(value)
    except (ValueError, TypeError):  # a ragged sequence
        return None


def real_array(name: str, value, check=None) -> np.ndarray:
    """A real number or an array of real numbers (any shape), as float64.

    Without ``check`` only the type is checked (the caller checks shapes and entries). With ``check`` (a scalar
    check of this module, e.g. ``positive`` or ``functools.partial(fraction, allow_zero=True)``) every entry must
    pass it: a number is checked as itself (a string, None, bool or complex number gets the check's own message),
    an array by its smallest and largest entries (nan fails every check). Arrays of bool, complex numbers,
    strings or objects and ragged sequences are refused.
    """
    arr = _as_array(value)
    if arr is None or arr.dtype.kind not in "iuf":
        if check is not None and (value is None or np.isscalar(value)):
            check(name, value)  # refuses it, with the allowed values
        raise ValueError(f"{name}: must be {'a number or ' if check else ''}an array of real numbers, "
                         f"got {_describe(value, arr)}")
    arr = arr.astype(np.float64)
    if check is not None and arr.size:
        check(name, arr.min().item())
        check(name, arr.max().item())
    return arr


def finite_array(name: str, value) -> np.ndarray:
    """An array (or number) of finite real numbers, as float64 (:func:`real_array`, then no nan or inf)."""
    arr = real_array(name, value)
    bad = int(np.size(arr) - np.isfinite(arr).sum())
    if bad:
        raise ValueError(f"{name}: must have finite entries, got {_describe(value, arr)} with {bad} nan or inf")
    return arr


def distribution(name: str, value, K: int | None = None, atol: float = 1e-9) -> np.ndarray:
    """A distribution over K responses on the last axis (batched: shape (..., K)), as float64 with rounding
    below zero clipped. ``K``: the required length of the last axis (None: any). Refuses non-real types, a
    missing or wrong last axis, negative or non-finite entries and sums other than 1 (up to ``atol``)."""
    atol = non_negative("atol", atol)
    arr = real_array(name, value)
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name}: must be a distribution over K responses (shape (..., K)), got shape {arr.shape}")
    if K is not None and arr.shape[-1] != int_at_least("K", K, 1):
        raise ValueError(f"{name}: must have K = {K} entries on its last axis, got {arr.shape[-1]}")
    if not np.all(np.isfinite(arr)) or arr.min() < -atol:
        raise ValueError(f"{name}: must be a distribution (finite, non-negative entries summing to 1)")
    dev = np.abs(arr.sum(-1) - 1.0).max()
    if dev > atol:
        raise ValueError(f"{name}: must be a distribution (entries summing to 1), sums deviate by {dev:.3g}")
    return np.clip(arr, 0.0, None)


def positive_log(name: str, value, K: int | None = None) -> np.ndarray:
    """The log of a distribution (:func:`distribution`) that puts positive mass on every response (an interior
    point of the simplex: log-ratios and iterated references take its log)."""
    arr = distribution(name, value, K)
    if np.any(arr <= 0):
        raise ValueError(f"{name}: must put positive mass on every response (an interior distribution: its log is "
                         "taken), got a zero entry")
    return np.log(arr)


def generator(name: str, value) -> np.random.Generator:
    """A numpy random Generator."""
    if not isinstance(value, np.random.Generator):
        raise ValueError(f"{name}: must be a numpy Generator (np.random.default_rng(seed)), got {type(value).__name__}")
    return value


def batch_shape(**leading) -> tuple:
    """The broadcast of the arguments' leading (batch) shapes, given as name=shape; a one-line error naming every
    argument and its shape when they do not broadcast."""
    try:
        return np.broadcast_shapes(*leading.values())
    except ValueError:
        shown = ", ".join(f"{k} {v}" for k, v in leading.items())
        raise ValueError(f"{', '.join(leading)}: leading (batch) shapes must broadcast, got {shown}") from None


def flag(name: str, value) -> bool:
    """True or False (numpy bools accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


def array_axis(name: str, value, ndim: int) -> int:
    """An axis of an array with ``ndim`` dimensions: an integer in [-ndim, ndim)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not -ndim <= value < ndim:
        raise ValueError(f"{name}: must be an integer in [{-ndim}, {ndim}) (an axis of a {ndim}-d array), "
                         f"got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# Indices, preference signs and texts (models, trainers)
# ---------------------------------------------------------------------------------------------------------------

def index_below(name: str, value, size: int, what: str = "an index") -> int:
    """An integer index in [0, ``size`` - 1] (``what`` names it in the message, e.g. 'a token id')."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value < size:
        raise ValueError(f"{name}: must be {what} in [0, {size - 1}], got {value!r}")
    return int(value)


def signs(name: str, values, n: int, *, dtype=None, device=None, what: str = "one sign per item"):
    """A (n,) torch tensor of preference signs, every entry +1 (chosen = Yes) or -1 (chosen = No), converted to
    ``dtype`` (default int64) on ``device``; ``what`` says in the message what the n entries match."""
    import numpy as np
    import torch

    s = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"{name}: must have shape ({n},), {what}, got {tuple(s.shape)}")
    if not bool(((s == 1) | (s == -1)).all()):
        raise ValueError(f"{name}: every entry must be +1 (chosen = Yes) or -1 (chosen = No)")
    return s.to(device=device if device is not None else s.device, dtype=dtype or torch.int64)


def texts(name: str, values) -> list[str]:
    """A list of strings (any iterable of them; one bare string is refused, it is almost always a mistake)."""
    if isinstance(values, str):
        raise ValueError(f"{name}: give a list of strings, not one string")
    values = list(values)
    if not all(isinstance(t, str) for t in values):
        raise ValueError(f"{name}: every item must be a string")
    return values
