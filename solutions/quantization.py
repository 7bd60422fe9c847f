"""Reference solutions of Chapter 11 (``course_lib.quantization``)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from course_lib.quantization import _pseudo_quantize


# == part C: GPTQ and AWQ ==
def gptq_hessian(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    in_features = inputs[0].shape[-1]
    hessian = torch.zeros(in_features, in_features, device=inputs[0].device)   # (in, in) float32
    n_samples = 0
    for x in inputs:
        batch = x.shape[0] if x.ndim == 3 else 1          # a (tokens, in) tensor is one sample
        x = x.reshape(-1, in_features).t()                # (in, tokens)
        hessian *= n_samples / (n_samples + batch)        # the running mean so far, reweighted
        n_samples += batch
        x = math.sqrt(2 / n_samples) * x.float()
        hessian += x @ x.t()                              # H = 2/n * sum of X^T X
    return hessian


def _gptq_grid(w: torch.Tensor, maxq: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """auto-gptq's ``Quantizer.find_params`` per row of ``w`` (rows, k): scale and zero point, (rows, 1)."""
    zero = torch.zeros(w.shape[0], device=w.device)
    w_min = torch.minimum(w.min(dim=1).values, zero)      # the range always includes 0
    w_max = torch.maximum(w.max(dim=1).values, zero)
    if symmetric:
        w_max = torch.maximum(w_min.abs(), w_max)
        w_min = torch.where(w_min < 0, -w_max, w_min)
    flat = (w_min == 0) & (w_max == 0)                    # an all-zero row gets the range [-1, 1]
    w_min, w_max = w_min.masked_fill(flat, -1.0), w_max.masked_fill(flat, 1.0)
    scale = (w_max - w_min) / maxq
    if symmetric:
        zero_point = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero_point = torch.round(-w_min / scale)
    return scale[:, None], zero_point[:, None]


def _gptq_round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return scale * (q - zero)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  block_size: int = 128, damp_percent: float = 0.01, act_order: bool = False,
                  symmetric: bool = False) -> dict[str, torch.Tensor]:
    maxq = 2 ** bits - 1
    W = weight.float().clone()                             # (out, in)
    H = hessian.float().clone()                            # (in, in)
    columns = W.shape[1]
    per_channel = group_size is None or group_size == -1
    if per_channel:                                        # one grid per row, from the original row
        scale, zero = _gptq_grid(W, maxq, symmetric)
    dead = torch.diag(H) == 0                              # inputs that were always 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if act_order:                                          # the columns with the largest H_jj first
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp_percent * torch.diag(H).mean() * torch.eye(columns, device=H.device)
    # the upper Cholesky factor of H^-1: row i holds what is left of H^-1 after columns < i are quantized
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    scales, zeros = [], []
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].clone()                           # this block, updated column by column
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column = i1 + i
            if not per_channel and column % group_size == 0:
                # a new group: its grid from W as the updates so far have left it (lazily: the
                # updates from this block's earlier columns are still in W1, not in W)
                scale, zero = _gptq_grid(W[:, column:column + group_size], maxq, symmetric)
                scales.append(scale)
                zeros.append(zero)
            w, d = W1[:, i], Hinv1[i, i]
            q = _gptq_round(w[:, None], scale, zero, maxq).flatten()
            Q[:, column] = q
            err = (w - q) / d
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]   # compensate in this block's later columns
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]               # and, once per block, in all later columns

    if per_channel:
        scales, zeros, group_size = [scale], [zero], columns
    g_idx = torch.arange(columns, device=W.device, dtype=torch.int32) // group_size
    if act_order:                                          # back to the original column order
        inverse = torch.argsort(perm)
        Q, g_idx = Q[:, inverse], g_idx[inverse]
    return {"weight": Q, "scales": torch.cat(scales, dim=1), "zeros": torch.cat(zeros, dim=1), "g_idx": g_idx}


def awq_search_scales(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4, group_size: int = 128,
                      n_grid: int = 20) -> dict:
    W = weight.float()                                     # (out, in)
    x = inputs.float().reshape(-1, W.shape[1])             # (tokens, in)
    groups = W.abs().reshape(-1, group_size)
    w_mean = (groups / (groups.amax(dim=1, keepdim=True) + 1e-6)).reshape(W.shape).mean(dim=0)   # (in,)
    x_mean = x.abs().sum(dim=0) / x.shape[0]                                                    # (in,)
    reference = x @ W.t()
    losses, best = [], None
    for k in range(n_grid):
        ratio = k / n_grid
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        quantized = _pseudo_quantize(W * s, bits, group_size) / s        # Q(W diag(s)) diag(s)^-1
        loss = (reference - x @ quantized.t()).pow(2).sum().item() / reference.numel()
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, ratio, s)
    return {"scales": best[2], "ratio": best[1], "losses": losses}
# == end of part C ==
