"""Argument checks shared by every chapter: bad input fails early, naming the argument."""

from __future__ import annotations

import math

import torch


def check_tensor(name: str, value, *, floating: bool | None = None, integer: bool | None = None,
                 min_ndim: int = 0) -> torch.Tensor:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is a suitable tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")
    return value


def check_dim(name: str, dim: int, tensor: torch.Tensor, *, non_empty: bool = True) -> int:
    """Normalise ``dim`` for ``tensor`` (negative dims allowed) and check that it is not empty."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -tensor.ndim <= dim < max(tensor.ndim, 1):
        raise ValueError(f"dim={dim} is out of range for {name} with shape {tuple(tensor.shape)}")
    dim = dim % max(tensor.ndim, 1)
    if non_empty and tensor.ndim and tensor.shape[dim] == 0:
        raise ValueError(f"{name} is empty along dim={dim} (shape {tuple(tensor.shape)})")
    return dim


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is an ``int`` (a ``bool`` is not one), and
    ``ValueError`` unless ``minimum <= value <= maximum`` (a bound of ``None`` is no bound)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    _check_bounds(name, value, minimum, maximum, False, False)
    return value


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None, *,
                 open_minimum: bool = False, open_maximum: bool = False, finite: bool = False) -> float:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is a real number (an ``int`` or a ``float``,
    not a ``bool``), and ``ValueError`` if it is NaN, infinite where ``finite``, or outside the interval
    from ``minimum`` to ``maximum`` (closed at each end unless ``open_minimum``/``open_maximum``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, float) and (math.isnan(value) or (finite and math.isinf(value))):  # an int is neither
        raise ValueError(f"{name} must be a {'finite' if finite else 'real'} number, got {value!r}")
    _check_bounds(name, value, minimum, maximum, open_minimum, open_maximum)
    return value


def check_bool(name: str, value) -> bool:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _check_bounds(name: str, value, minimum, maximum, open_minimum: bool, open_maximum: bool) -> None:
    below = minimum is not None and (value < minimum or (open_minimum and value == minimum))
    above = maximum is not None and (value > maximum or (open_maximum and value == maximum))
    if below or above:
        low = "(-inf" if minimum is None else f"{'(' if open_minimum else '['}{minimum}"
        high = "inf)" if maximum is None else f"{maximum}{')' if open_maximum else ']'}"
        raise ValueError(f"{name} must lie in {low}, {high}, got {value!r}")
