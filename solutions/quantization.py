"""Reference solutions of Chapter 11 (``course_lib.quantization``): same qualified names."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from course_lib import quantization
from course_lib.lora import unpack_nibbles


def _groups(x: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """``x`` (rows, cols) in float32 as (scale rows, groups per row, values per group)."""
    rows, cols = x.shape
    x = x.float()
    if granularity == "tensor":
        return x.reshape(1, 1, rows * cols)
    if granularity == "channel":
        return x.reshape(rows, 1, cols)
    return x.reshape(rows, cols // group_size, group_size)


def absmax_quantize(x: torch.Tensor, bits: int = 8, granularity: str = "channel", group_size: int = 128
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    groups = _groups(x, granularity, group_size)                     # (R, G, S)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(dim=-1) / qmax                         # (R, G); 0 for an all-zero group
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))     # divide by 1 there: q = 0
    q = torch.round(groups / safe[..., None]).clamp(-qmax, qmax)
    return q.to(torch.int8).reshape(x.shape), scale


def zero_point_quantize(x: torch.Tensor, bits: int = 4, granularity: str = "group", group_size: int = 128
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups = _groups(x, granularity, group_size)                     # (R, G, S)
    qmax = 2 ** bits - 1
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)                # (R, G)
    scale = (hi - lo).clamp(min=quantization.AWQ_MIN_RANGE) / qmax
    zero = (-torch.round(lo / scale)).clamp(0, qmax)
    q = (torch.round(groups / scale[..., None]) + zero[..., None]).clamp(0, qmax)
    return q.to(torch.uint8).reshape(x.shape), scale, zero.to(torch.uint8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    group_size = q.shape[1] // scale.shape[1]
    values = q.float()
    if zero_point is not None:
        values = values - zero_point.float().repeat_interleave(group_size, dim=1)
    return values * scale.float().repeat_interleave(group_size, dim=1)


def int8_vectorwise_quant(x: torch.Tensor, threshold: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    outliers = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    outlier_cols = torch.nonzero(outliers.any(dim=0)).flatten()      # int64, increasing
    inliers = x.masked_fill(outliers, 0).float()
    row_stats = inliers.abs().amax(dim=1)                            # (rows,)
    q = torch.round(inliers * (quantization.INT8_MAX / row_stats[:, None]))
    q = torch.where(row_stats[:, None] > 0, q, torch.zeros_like(q)).to(torch.int8)   # 0 * inf: NaN
    q[:, outlier_cols] = 0
    return q, row_stats, outlier_cols


def int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                threshold: float = quantization.LLM_INT8_THRESHOLD) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])                                # (n, in)
    q_x, s_x, cols = int8_vectorwise_quant(rows, threshold)
    q_w, s_w, _ = int8_vectorwise_quant(weight)                      # (out, in), (out,)
    acc = q_x.to(torch.int32) @ q_w.to(torch.int32).T                # (n, out), exact
    y = acc.float() * (s_x[:, None] * s_w[None, :]) / quantization.INT8_MAX ** 2
    if cols.numel():
        w_cols = q_w[:, cols].float() * s_w[:, None] / quantization.INT8_MAX
        y = y + rows[:, cols].float() @ w_cols.T
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


class QuantizedLinear(quantization.QuantizedLinear):
    """The reference of :meth:`course_lib.quantization.QuantizedLinear.forward`; the class supplies the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.qweight
        if self.bits == 4:
            q = unpack_nibbles(q.flatten(), 2 * q.numel()).view(self.out_features, self.in_features)
        if self.symmetric:
            q = (q.to(torch.int16) - 2 ** (self.bits - 1)).to(torch.int8)
        weight = quantization.dequantize(q, self.scales, self.zeros)   # float32 (out, in)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight.to(x.dtype), bias)


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``roundf``, exactly: truncate, then one step away from zero where the dropped part is >= 1/2.
    (``floor(|v| + 0.5)`` is wrong for 0.49999997, whose sum with 0.5 rounds up to 1 in float32.)"""
    t = torch.trunc(v)
    return torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t)


def _f16_bytes(d: torch.Tensor) -> torch.Tensor:
    """``(..., 1)`` float32 -> ``(..., 2)`` uint8: the float16 value's two bytes, little-endian."""
    return d.half().view(torch.uint8)


def _f16_value(two_bytes: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` uint8 -> ``(..., 1)`` float32: the float16 those bytes hold."""
    return two_bytes.contiguous().view(torch.float16).float()


def _reciprocal(d: torch.Tensor) -> torch.Tensor:
    """``1 / d``, with 0 where ``d == 0`` (an all-zero block)."""
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    blocks = x.float().reshape(*x.shape[:-1], -1, 32)                   # (..., n/32, 32)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127                   # (..., n/32, 1)
    q = _round_half_away(blocks * _reciprocal(d)).to(torch.int8)
    return torch.cat([_f16_bytes(d), q.view(torch.uint8)], dim=-1).flatten(-2)


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    blocks = data.reshape(*data.shape[:-1], -1, 34)                     # (..., m/34, 34)
    d = _f16_value(blocks[..., :2])
    q = blocks[..., 2:].contiguous().view(torch.int8).float()
    return (q * d).flatten(-2)


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    blocks = x.float().reshape(*x.shape[:-1], -1, 32)
    m = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))    # signed value of largest magnitude
    d = m / -8
    q = torch.trunc(blocks * _reciprocal(d) + 8.5).clamp(0, 15).to(torch.uint8)
    nibbles = q[..., :16] | (q[..., 16:] << 4)                          # first 16 low, last 16 high
    return torch.cat([_f16_bytes(d), nibbles], dim=-1).flatten(-2)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    blocks = data.reshape(*data.shape[:-1], -1, 18)
    d = _f16_value(blocks[..., :2])
    nibbles = blocks[..., 2:]
    q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1)
    return (d * (q.float() - 8)).flatten(-2)


def _pack_scales(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins ``(..., 8)`` (int32) -> llama.cpp's 12 bytes ``(..., 12)``."""
    low = torch.cat([sc[..., :4] | (sc[..., 4:] >> 4) << 6,            # bytes 0-3: sc_0..3, top bits of sc_4..7
                     m[..., :4] | (m[..., 4:] >> 4) << 6,              # bytes 4-7: m_0..3, top bits of m_4..7
                     (sc[..., 4:] & 15) | (m[..., 4:] & 15) << 4], dim=-1)   # bytes 8-11: low bits of sc/m_4..7
    return low.to(torch.uint8)


def _unpack_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's 12 bytes ``(..., 12)`` -> the 6-bit scales and mins, ``(..., 8)`` int32 each."""
    b = b.int()
    sc = torch.cat([b[..., 0:4] & 63, (b[..., 8:12] & 15) | (b[..., 0:4] >> 6) << 4], dim=-1)
    m = torch.cat([b[..., 4:8] & 63, (b[..., 8:12] >> 4) | (b[..., 4:8] >> 6) << 4], dim=-1)
    return sc, m


def quantize_q4_k(x: torch.Tensor) -> torch.Tensor:
    sub = x.float().reshape(*x.shape[:-1], -1, 8, 32)                   # (..., n/256, 8, 32)
    lo = sub.amin(dim=-1).clamp(max=0)                                  # (..., n/256, 8)
    scale = (sub.amax(dim=-1) - lo) / 15
    the_min = -lo
    top_scale = scale.amax(dim=-1, keepdim=True)                        # (..., n/256, 1)
    top_min = the_min.amax(dim=-1, keepdim=True)
    d, dmin = top_scale / 63, top_min / 63
    sc = torch.round(scale * torch.where(top_scale > 0, 63 / top_scale, 0.0)).clamp(max=63).int()
    m = torch.round(the_min * torch.where(top_min > 0, 63 / top_min, 0.0)).clamp(max=63).int()
    # round each value again against the scales as stored (float16 d, dmin times the 6-bit numbers)
    step = (d.half().float() * sc)[..., None]                           # (..., n/256, 8, 1)
    offset = (dmin.half().float() * m)[..., None]
    q = torch.where(step != 0, torch.round((sub + offset) / step), 0.0).clamp(0, 15).to(torch.uint8)
    q = q.reshape(*q.shape[:-2], 4, 2, 32)                              # pairs of sub-blocks
    nibbles = (q[..., 0, :] | (q[..., 1, :] << 4)).flatten(-2)          # (..., n/256, 128)
    return torch.cat([_f16_bytes(d), _f16_bytes(dmin), _pack_scales(sc, m), nibbles], dim=-1).flatten(-2)


def dequantize_q4_k(data: torch.Tensor) -> torch.Tensor:
    blocks = data.reshape(*data.shape[:-1], -1, 144)
    d, dmin = _f16_value(blocks[..., 0:2]), _f16_value(blocks[..., 2:4])
    sc, m = _unpack_scales(blocks[..., 4:16])
    nibbles = blocks[..., 16:].reshape(*blocks.shape[:-1], 4, 1, 32)
    q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-2).reshape(*blocks.shape[:-1], 8, 32)
    values = (d * sc.float())[..., None] * q.float() - (dmin * m.float())[..., None]
    return values.flatten(-3)


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
        quantized = quantization.round_to_nearest(W * s, bits, group_size) / s     # Q(W diag(s)) diag(s)^-1
        loss = (reference - x @ quantized.t()).pow(2).sum().item() / reference.numel()
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, ratio, s)
    return {"scales": best[2], "ratio": best[1], "losses": losses}
