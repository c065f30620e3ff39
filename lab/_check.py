"""Argument checks shared by every public function: each error names the argument and what it accepts."""
from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Iterable
from numbers import Integral, Real

import numpy as np


def choice(name: str, value, accepted: Iterable):
    """Return `value` if it is one of `accepted`, else raise ValueError listing them."""
    accepted = tuple(accepted)
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, accepted))}; got {value!r}")
    return value


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int (bools and floats rejected) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}]; got {value}")
    return value


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within the given (open or closed) bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = ("(" if low_open else "[") + (f"{low:g}" if low is not None else "-inf")
        hi = (f"{high:g}" if high is not None else "inf") + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}, {hi}; got {value:g}")
    return value


def array(name: str, value, *, ndim: int | tuple[int, ...] | None = None, finite: bool = True,
          min_len: int = 0) -> np.ndarray:
    """A float numpy array (torch tensors are converted) of the given rank, finite by default."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers; got {type(value).__name__}") from err
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimension(s); "
                             f"got shape {arr.shape}")
    if arr.ndim and arr.shape[0] < min_len:
        raise ValueError(f"{name} needs at least {min_len} entries along axis 0; got {arr.shape[0]}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return arr


def reads_values(tensor) -> bool:
    """Whether a check may read `tensor`'s values (finiteness, ranges): always on the CPU, where
    it is cheap; on an accelerator only with ``LAB_DEBUG=1``, since reading values there waits
    for the device (a sync per call in a training loop)."""
    return tensor.device.type == "cpu" or os.environ.get("LAB_DEBUG", "").strip() == "1"


def checked(check: Callable) -> Callable:
    """Decorate a function with its argument check: the public entry point runs `check` (called with
    the function's bound arguments, defaults filled in, by name) and then the function.

    The function itself stays the readable method: ``inspect.getsource`` shows its body, and
    callers that built their arguments themselves (a layer's forward, one kernel calling another)
    call ``f.unchecked`` and skip checks that would stall a GPU (``isfinite`` forces a sync).
    """
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(**bound.arguments)
            return fn(*args, **kwargs)

        entry.unchecked = fn
        return entry
    return decorate
