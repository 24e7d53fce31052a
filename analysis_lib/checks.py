"""Argument checks shared by the library: one home for them, so every module rejects bad input the same way.

Each check takes the argument's name as the caller spells it and raises ``ValueError`` with one line,
``"<name>: must be <what is allowed>, got <value>"``, or returns the value converted (``float`` / ``int`` /
``str``). ``bool`` is never accepted as a number, nor are strings, ``None`` or complex numbers; numpy scalars are.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


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
