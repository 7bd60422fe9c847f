"""Reference solutions for Chapter 0 (course_lib/numerics.py)."""

from __future__ import annotations

import torch


def _finite_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max along ``dim`` (kept), with fully masked (all ``-inf``) rows shifted by 0 instead."""
    m = x.amax(dim=dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def stable_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    shifted = logits - _finite_max(logits, dim)          # every exponent <= 0: no overflow
    exp = torch.exp(shifted)
    total = exp.sum(dim=dim, keepdim=True)               # >= 1, or 0 for a fully masked row
    # The clamp only acts on fully masked rows, where exp is all zeros: 0 / tiny = 0, not NaN.
    return exp / total.clamp_min(torch.finfo(exp.dtype).tiny)


def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    m = _finite_max(x, dim)
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))   # log(0) = -inf when masked
    return out if keepdim else out.squeeze(dim)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # Subtract the max first, then log(sum(exp)) of the shifted values: x - logsumexp(x) would
    # subtract two numbers near 1e4 and lose the digits that matter (the shifted form keeps them).
    shifted = logits - _finite_max(logits, dim)
    log_total = torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))   # -inf when fully masked
    # A fully masked row has shifted = -inf and log_total = -inf; their difference would be NaN.
    return torch.where(log_total == float("-inf"), torch.full_like(logits, float("-inf")), shifted - log_total)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    log_probs = log_softmax(logits, dim=-1)                          # (..., n_classes)
    labelled = targets != ignore_index                               # (...)
    safe_targets = torch.where(labelled, targets, torch.zeros_like(targets))
    nll = -log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    loss = nll
    if label_smoothing > 0:
        uniform = -log_probs.mean(dim=-1)                            # cross-entropy to uniform
        loss = (1 - label_smoothing) * nll + label_smoothing * uniform
    loss = torch.where(labelled, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / labelled.sum().to(loss.dtype)               # NaN when nothing is labelled
