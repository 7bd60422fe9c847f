"""Argument checks shared by every chapter: bad input fails early, naming the argument."""

from __future__ import annotations

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
