"""Plausible wrong answers to Chapter 11's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake. Variants of methods
(``QuantizedLinear.forward``) are run by the course's harnesses (``run_quantized_linear``), as the entry
points the tests call run the real ones.
"""

import torch
import torch.nn.functional as F


def _entry_point(harness, wrong, name):
    """A stand-in for an entry point the tests call: the course's ``harness`` run on ``wrong``."""
    def entry_point(*args, **kwargs):
        return harness(wrong, *args, **kwargs)

    entry_point.__name__ = name
    return entry_point


# == part A: integer quantization and LLM.int8 ==
def _groups(x, granularity, group_size):
    rows, cols = x.shape
    x = x.float()
    if granularity == "tensor":
        return x.reshape(1, 1, rows * cols)
    if granularity == "channel":
        return x.reshape(rows, 1, cols)
    return x.reshape(rows, cols // group_size, group_size)


# -- 11.1 absmax_quantize ----------------------------------------------------------------------------------------
def _absmax(x, bits, granularity, group_size, *, qmax=None, rounding=torch.round, floor=0.0, signed_max=False):
    groups = _groups(x, granularity, group_size)
    qmax = 2 ** (bits - 1) - 1 if qmax is None else qmax(bits)
    scale = (groups.amax(dim=-1) if signed_max else groups.abs().amax(dim=-1)).clamp(min=floor) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = rounding(groups / safe[..., None]).clamp(-2 ** (bits - 1), 2 ** (bits - 1) - 1)
    return q.to(torch.int8).reshape(x.shape), scale


def absmax_over_the_whole_signed_range(x, bits=8, granularity="channel", group_size=128):
    return _absmax(x, bits, granularity, group_size, qmax=lambda b: 2 ** (b - 1))      # absmax / 128


def absmax_truncating(x, bits=8, granularity="channel", group_size=128):
    return _absmax(x, bits, granularity, group_size, rounding=torch.trunc)


def absmax_with_autoawqs_floor(x, bits=8, granularity="channel", group_size=128):
    return _absmax(x, bits, granularity, group_size, floor=1e-5)       # an all-zero group gets 1e-5 / qmax


def absmax_of_the_signed_maximum(x, bits=8, granularity="channel", group_size=128):
    return _absmax(x, bits, granularity, group_size, signed_max=True)  # max(x), not max(|x|)


def absmax_with_strided_groups(x, bits=8, granularity="channel", group_size=128):
    if granularity != "group":
        return _absmax(x, bits, granularity, group_size)
    rows, cols = x.shape                                     # group g = columns g, g + n_groups, ...
    t = x.reshape(rows, group_size, cols // group_size).transpose(1, 2).reshape(rows, cols)
    q, scale = _absmax(t, bits, granularity, group_size)
    return q.reshape(rows, cols // group_size, group_size).transpose(1, 2).reshape(rows, cols), scale


def absmax_per_column_channels(x, bits=8, granularity="channel", group_size=128):
    if granularity != "channel":
        return _absmax(x, bits, granularity, group_size)
    qmax = 2 ** (bits - 1) - 1
    scale = x.float().abs().amax(dim=0, keepdim=True) / qmax          # (1, cols): one per input column
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x.float() / safe).clamp(-qmax, qmax).to(torch.int8), scale


# -- 11.2 zero_point_quantize --------------------------------------------------------------------------------------
def _zero_point(x, bits, granularity, group_size, *, clamp_zero=True, levels=None, floor=1e-5, clamp_q=True):
    groups = _groups(x, granularity, group_size)
    qmax = 2 ** bits - 1
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = (hi - lo).clamp(min=floor) / (qmax if levels is None else levels(bits))
    zero = -torch.round(lo / scale)
    if clamp_zero:
        zero = zero.clamp(0, qmax)
    q = torch.round(groups / scale[..., None]) + zero[..., None]
    if clamp_q:
        q = q.clamp(0, qmax)
    return q.to(torch.uint8).reshape(x.shape), scale, zero.to(torch.uint8)


def zero_point_not_clamped(x, bits=4, granularity="group", group_size=128):
    return _zero_point(x, bits, granularity, group_size, clamp_zero=False)


def zero_point_with_2_to_the_bits_levels(x, bits=4, granularity="group", group_size=128):
    return _zero_point(x, bits, granularity, group_size, levels=lambda b: 2 ** b)


def zero_point_without_the_floor(x, bits=4, granularity="group", group_size=128):
    return _zero_point(x, bits, granularity, group_size, floor=0.0)


def zero_point_without_clamping_q(x, bits=4, granularity="group", group_size=128):
    return _zero_point(x, bits, granularity, group_size, clamp_q=False)


# -- 11.3 dequantize -----------------------------------------------------------------------------------------------
def dequantize_cycling_the_group_scales(q, scale, zero_point=None):
    repeat = q.shape[1] // scale.shape[1]
    values = q.float() - (0 if zero_point is None else zero_point.float().repeat(1, repeat))
    return values * scale.float().repeat(1, repeat)


def dequantize_in_uint8(q, scale, zero_point=None):
    size = q.shape[1] // scale.shape[1]
    values = q if zero_point is None else q - zero_point.to(q.dtype).repeat_interleave(size, dim=1)   # wraps
    return values.float() * scale.float().repeat_interleave(size, dim=1)


def dequantize_ignoring_the_zero_point(q, scale, zero_point=None):
    return q.float() * scale.float().repeat_interleave(q.shape[1] // scale.shape[1], dim=1)


# -- 11.4 int8_vectorwise_quant ------------------------------------------------------------------------------------
def _vectorwise(x, threshold, *, strict=False, divide=False, stats_with_outliers=False, zero_columns=True,
                stats_over_clean_columns=False, rounding=torch.round):
    if threshold > 0:
        outliers = x.abs() > threshold if strict else x.abs() >= threshold
    else:
        outliers = torch.zeros_like(x, dtype=torch.bool)
    cols = torch.nonzero(outliers.any(dim=0)).flatten()
    inliers = x.masked_fill(outliers, 0).float()
    if stats_over_clean_columns:
        row_stats = inliers.abs().index_fill(1, cols, 0).amax(dim=1)
    else:
        row_stats = (x.float() if stats_with_outliers else inliers).abs().amax(dim=1)
    scaled = inliers * 127 / row_stats[:, None] if divide else inliers * (127 / row_stats[:, None])
    q = torch.where(row_stats[:, None] > 0, rounding(scaled), torch.zeros_like(scaled)).to(torch.int8)
    if zero_columns:
        q[:, cols] = 0
    return q, row_stats, cols


def vectorwise_with_strict_threshold(x, threshold=0.0):
    return _vectorwise(x, threshold, strict=True)


def vectorwise_dividing_by_the_stats(x, threshold=0.0):
    return _vectorwise(x, threshold, divide=True)


def vectorwise_stats_including_outliers(x, threshold=0.0):
    return _vectorwise(x, threshold, stats_with_outliers=True)


def vectorwise_keeping_inliers_of_outlier_columns(x, threshold=0.0):
    return _vectorwise(x, threshold, zero_columns=False)


def vectorwise_stats_over_columns_without_outliers(x, threshold=0.0):
    return _vectorwise(x, threshold, stats_over_clean_columns=True)


def vectorwise_rounding_halves_up(x, threshold=0.0):
    return _vectorwise(x, threshold, rounding=lambda t: torch.floor(t + 0.5))


# -- 11.5 int8_linear ------------------------------------------------------------------------------------------------
def _int8_linear(x, weight, bias, threshold, *, x_scales="row", outliers_in_float=True, drop_outliers=False,
                 float_weight=False, strict=False):
    rows = x.reshape(-1, x.shape[-1])
    q_x, s_x, cols = _vectorwise(rows, threshold, strict=strict)
    if not outliers_in_float:
        q_x, s_x, cols = _vectorwise(rows, 0.0)
    if x_scales != "row":                        # per column, or one for the tensor
        s = rows.float().abs().amax(dim=0) if x_scales == "column" else rows.float().abs().amax().expand(rows.shape[1])
        q_x = torch.round(rows.float() * (127 / s)).to(torch.int8)
        q_x[:, cols] = 0
    q_w, s_w, _ = _vectorwise(weight, 0.0)
    if x_scales == "column":
        y = (q_x.float() * s[None, :] / 127) @ (q_w.float() * s_w[:, None] / 127).T
    else:
        acc = q_x.to(torch.int32) @ q_w.to(torch.int32).T
        scale_x = s_x[:, None] if x_scales == "row" else s[:1][:, None]
        y = acc.float() * (scale_x * s_w[None, :]) / 127 ** 2
    if cols.numel() and not drop_outliers:
        w_cols = weight[:, cols].float() if float_weight else q_w[:, cols].float() * s_w[:, None] / 127
        y = y + rows[:, cols].float() @ w_cols.T
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def int8_linear_with_per_column_scales(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, bias, threshold, x_scales="column")


def int8_linear_with_one_scale_for_x(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, bias, threshold, x_scales="tensor")


def int8_linear_quantizing_the_outliers(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, bias, threshold, outliers_in_float=False)


def int8_linear_dropping_the_outliers(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, bias, threshold, drop_outliers=True)


def int8_linear_with_the_float_weight_for_outliers(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, bias, threshold, float_weight=True)


def int8_linear_with_strict_threshold(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, bias, threshold, strict=True)


def int8_linear_without_the_bias(x, weight, bias=None, threshold=6.0):
    return _int8_linear(x, weight, None, threshold)


# -- 11.6 QuantizedLinear.forward -------------------------------------------------------------------------------------
def _stored(self, low_first=False):
    from course_lib.lora import unpack_nibbles

    q = self.qweight
    if self.bits == 4:
        if low_first:
            q = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(self.out_features, self.in_features)
        else:
            q = unpack_nibbles(q.flatten(), 2 * q.numel()).view(self.out_features, self.in_features)
    return q


def _weight(self, q, *, offset=True, zeros=True):
    from course_lib.quantization import dequantize

    if self.symmetric:
        q = (q.to(torch.int16) - (2 ** (self.bits - 1) if offset else 0)).to(torch.int16)
        size = self.in_features // self.scales.shape[1]
        return q.float() * self.scales.repeat_interleave(size, dim=1)
    return dequantize(q, self.scales, self.zeros if zeros else None)


def quantized_forward_low_nibble_first(self, x):
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, _weight(self, _stored(self, low_first=True)).to(x.dtype), bias)


def quantized_forward_without_the_offset(self, x):
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, _weight(self, _stored(self), offset=False).to(x.dtype), bias)


def quantized_forward_ignoring_the_zero_points(self, x):
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, _weight(self, _stored(self), zeros=False).to(x.dtype), bias)


def quantized_forward_in_float32(self, x):
    return F.linear(x.float(), _weight(self, _stored(self)), self.bias)     # not cast back to x's dtype


def quantized_forward_without_the_bias(self, x):
    return F.linear(x, _weight(self, _stored(self)).to(x.dtype))


def quantized_forward_cycling_the_group_scales(self, x):
    q = _stored(self)
    if self.symmetric:
        q = (q.to(torch.int16) - 2 ** (self.bits - 1)).to(torch.int8)
    weight = dequantize_cycling_the_group_scales(q, self.scales, self.zeros)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, weight.to(x.dtype), bias)


def quantized_linear_driver(wrong_forward):
    from course_lib.quantization import QuantizedLinear, run_quantized_linear

    wrong = type(f"QuantizedLinear_{wrong_forward.__name__}", (QuantizedLinear,), {"forward": wrong_forward})
    return _entry_point(run_quantized_linear, wrong, wrong_forward.__name__)


MUTANTS_PART_A = {
    "absmax_quantize": [absmax_over_the_whole_signed_range, absmax_truncating, absmax_with_autoawqs_floor,
                        absmax_of_the_signed_maximum,
                        absmax_with_strided_groups, absmax_per_column_channels],
    "zero_point_quantize": [zero_point_not_clamped, zero_point_with_2_to_the_bits_levels, zero_point_without_the_floor,
                            zero_point_without_clamping_q],
    "dequantize": [dequantize_cycling_the_group_scales, dequantize_in_uint8, dequantize_ignoring_the_zero_point],
    "int8_vectorwise_quant": [vectorwise_with_strict_threshold, vectorwise_dividing_by_the_stats,
                              vectorwise_stats_including_outliers, vectorwise_keeping_inliers_of_outlier_columns,
                              vectorwise_stats_over_columns_without_outliers, vectorwise_rounding_halves_up],
    "int8_linear": [int8_linear_with_per_column_scales, int8_linear_with_one_scale_for_x,
                    int8_linear_quantizing_the_outliers, int8_linear_dropping_the_outliers,
                    int8_linear_with_the_float_weight_for_outliers, int8_linear_with_strict_threshold,
                    int8_linear_without_the_bias],
    "quantized_linear_outputs": [quantized_linear_driver(m) for m in (
        quantized_forward_low_nibble_first, quantized_forward_without_the_offset,
        quantized_forward_ignoring_the_zero_points, quantized_forward_in_float32, quantized_forward_without_the_bias,
        quantized_forward_cycling_the_group_scales)],
}
# == end of part A ==

MUTANTS = {**MUTANTS_PART_A}
