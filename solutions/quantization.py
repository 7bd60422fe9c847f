"""Reference solutions for Chapter 11 (course_lib/quantization.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib import quantization
from course_lib.lora import unpack_nibbles


# == part A: integer quantization and LLM.int8 ==
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
# == end of part A ==
