"""Plausible wrong answers to Chapter 11's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake. Variants of methods
(``QuantizedLinear.forward``) are run by the course's harnesses (``run_quantized_linear``), as the entry
points the tests call run the real ones.
"""

import torch
import torch.nn.functional as F

# the correct parts the variants share with the reference
from solutions.quantization import _f16_bytes, _f16_value, _gptq_grid, _groups, _pack_scales, _reciprocal, _round_half_away


def _entry_point(harness, wrong, name):
    """A stand-in for an entry point the tests call: the course's ``harness`` run on ``wrong``."""
    def entry_point(*args, **kwargs):
        return harness(wrong, *args, **kwargs)

    entry_point.__name__ = name
    return entry_point


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


def _blocks(x, size):
    return x.float().reshape(*x.shape[:-1], -1, size)


# -- 11.7 quantize_q8_0 --------------------------------------------------------------------------------------------
def _q8_0(x, rounding=_round_half_away, scale_for_values=lambda d: d, scale_bytes=_f16_bytes):
    blocks = _blocks(x, 32)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127
    q = rounding(blocks * _reciprocal(scale_for_values(d))).to(torch.int8)
    return torch.cat([scale_bytes(d), q.view(torch.uint8)], dim=-1).flatten(-2)


def q8_0_rounding_half_to_even(x):
    return _q8_0(x, rounding=torch.round)


def q8_0_rounding_floor_of_v_plus_half(x):
    return _q8_0(x, rounding=lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5))


def q8_0_rounding_values_with_the_float16_scale(x):
    return _q8_0(x, scale_for_values=lambda d: d.half().float())


def q8_0_scale_big_endian(x):
    return _q8_0(x, scale_bytes=lambda d: _f16_bytes(d).flip(-1))


# -- 11.8 dequantize_q8_0 ------------------------------------------------------------------------------------------
def dequantize_q8_0_values_as_unsigned_bytes(data):
    blocks = data.reshape(*data.shape[:-1], -1, 34)
    return (blocks[..., 2:].float() * _f16_value(blocks[..., :2])).flatten(-2)


def dequantize_q8_0_scale_as_bfloat16(data):
    blocks = data.reshape(*data.shape[:-1], -1, 34)
    d = blocks[..., :2].contiguous().view(torch.bfloat16).float()
    return (blocks[..., 2:].contiguous().view(torch.int8).float() * d).flatten(-2)


# -- 11.9 quantize_q4_0 --------------------------------------------------------------------------------------------
def _q4_0(x, pick=None, levels=None, pack=None):
    blocks = _blocks(x, 32)
    m = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True)) if pick is None else pick(blocks)
    d = m / -8
    v = blocks * _reciprocal(d)
    q = (torch.trunc(v + 8.5) if levels is None else levels(v)).clamp(0, 15).to(torch.uint8)
    nibbles = q[..., :16] | (q[..., 16:] << 4) if pack is None else pack(q)
    return torch.cat([_f16_bytes(d), nibbles], dim=-1).flatten(-2)


def q4_0_nibbles_swapped(x):
    return _q4_0(x, pack=lambda q: (q[..., :16] << 4) | q[..., 16:])


def q4_0_neighbours_in_a_byte(x):   # bitsandbytes' order (Chapter 8's pack_nibbles)
    return _q4_0(x, pack=lambda q: (q[..., 0::2] << 4) | q[..., 1::2])


def q4_0_scale_from_the_absmax(x):
    return _q4_0(x, pick=lambda b: -b.abs().amax(dim=-1, keepdim=True))


def q4_0_rounding_to_nearest_even(x):
    return _q4_0(x, levels=lambda v: torch.round(v) + 8)


# -- 11.10 dequantize_q4_0 -----------------------------------------------------------------------------------------
def _dq4_0(data, unpack, offset=8):
    blocks = data.reshape(*data.shape[:-1], -1, 18)
    q = unpack(blocks[..., 2:])
    return (_f16_value(blocks[..., :2]) * (q.float() - offset)).flatten(-2)


def dequantize_q4_0_nibbles_swapped(data):
    return _dq4_0(data, lambda b: torch.cat([b >> 4, b & 15], dim=-1))


def dequantize_q4_0_neighbours_in_a_byte(data):
    return _dq4_0(data, lambda b: torch.stack([b & 15, b >> 4], dim=-1).flatten(-2))


def dequantize_q4_0_offset_half_a_level(data):
    return _dq4_0(data, lambda b: torch.cat([b & 15, b >> 4], dim=-1), offset=8.5)


# -- 11.11 quantize_q4_k -------------------------------------------------------------------------------------------
def _pack_nibble_runs(q):
    q = q.reshape(*q.shape[:-2], 4, 2, 32)
    return (q[..., 0, :] | (q[..., 1, :] << 4)).flatten(-2)


def _q4_k(x, pack_scales=_pack_scales, pack_nibbles=_pack_nibble_runs, requantize=True, min_sign=1,
          clamp_lo=True):
    sub = _blocks(x, 256).reshape(*x.shape[:-1], -1, 8, 32)
    lo = sub.amin(dim=-1).clamp(max=0) if clamp_lo else sub.amin(dim=-1)
    scale, the_min = (sub.amax(dim=-1) - lo) / 15, (-lo).clamp(min=0)
    top_scale, top_min = scale.amax(dim=-1, keepdim=True), the_min.amax(dim=-1, keepdim=True)
    d, dmin = top_scale / 63, top_min / 63
    sc = torch.round(scale * torch.where(top_scale > 0, 63 / top_scale, 0.0)).clamp(max=63).int()
    m = torch.round(the_min * torch.where(top_min > 0, 63 / top_min, 0.0)).clamp(max=63).int()
    if requantize:
        step, offset = (d.half().float() * sc)[..., None], (dmin.half().float() * m)[..., None]
    else:
        step, offset = scale[..., None], the_min[..., None]
    q = torch.where(step != 0, torch.round((sub + min_sign * offset) / step), 0.0).clamp(0, 15).to(torch.uint8)
    return torch.cat([_f16_bytes(d), _f16_bytes(dmin), pack_scales(sc, m), pack_nibbles(q)], dim=-1).flatten(-2)


def q4_k_upper_scales_packed_like_the_lower(x):
    # sub-blocks 4-7 keep only their low 4 bits, with no high bits moved to bytes 0-7
    return _q4_k(x, pack_scales=lambda sc, m: torch.cat([sc[..., :4], m[..., :4],
                                                          (sc[..., 4:] & 15) | (m[..., 4:] & 15) << 4],
                                                         dim=-1).to(torch.uint8))


def q4_k_scale_and_min_bytes_swapped(x):
    return _q4_k(x, pack_scales=lambda sc, m: _pack_scales(m, sc))


def q4_k_values_rounded_against_the_unquantized_scales(x):
    return _q4_k(x, requantize=False)


def q4_k_min_subtracted_with_the_wrong_sign(x):
    return _q4_k(x, min_sign=-1)


def q4_k_sub_blocks_in_order_through_the_nibbles(x):
    # the first 128 values in the low nibbles, the last 128 in the high ones (Q4_0's order, super-block wide)
    return _q4_k(x, pack_nibbles=lambda q: q.flatten(-2)[..., :128] | (q.flatten(-2)[..., 128:] << 4))


def q4_k_range_not_holding_zero(x):
    return _q4_k(x, clamp_lo=False)


# -- 11.12 dequantize_q4_k -----------------------------------------------------------------------------------------
def _unpack_scales(b, high=True):
    b = b.int()
    sc_hi = (b[..., 0:4] >> 6) << 4 if high else 0
    m_hi = (b[..., 4:8] >> 6) << 4 if high else 0
    return (torch.cat([b[..., 0:4] & 63, (b[..., 8:12] & 15) | sc_hi], dim=-1),
            torch.cat([b[..., 4:8] & 63, (b[..., 8:12] >> 4) | m_hi], dim=-1))


def _dq4_k(data, high=True, min_sign=-1, runs=True):
    blocks = data.reshape(*data.shape[:-1], -1, 144)
    d, dmin = _f16_value(blocks[..., 0:2]), _f16_value(blocks[..., 2:4])
    sc, m = _unpack_scales(blocks[..., 4:16], high)
    nibbles = blocks[..., 16:]
    if runs:
        n = nibbles.reshape(*blocks.shape[:-1], 4, 1, 32)
        q = torch.cat([n & 15, n >> 4], dim=-2).reshape(*blocks.shape[:-1], 8, 32)
    else:
        q = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).reshape(*blocks.shape[:-1], 8, 32)
    return ((d * sc.float())[..., None] * q.float() + min_sign * (dmin * m.float())[..., None]).flatten(-3)


def dequantize_q4_k_without_the_high_bits(data):
    return _dq4_k(data, high=False)


def dequantize_q4_k_adding_the_min(data):
    return _dq4_k(data, min_sign=1)


def dequantize_q4_k_nibbles_in_q4_0_order(data):
    return _dq4_k(data, runs=False)


MUTANTS_PART_B = {
    "quantize_q8_0": [q8_0_rounding_half_to_even, q8_0_rounding_floor_of_v_plus_half,
                      q8_0_rounding_values_with_the_float16_scale, q8_0_scale_big_endian],
    "dequantize_q8_0": [dequantize_q8_0_values_as_unsigned_bytes, dequantize_q8_0_scale_as_bfloat16],
    "quantize_q4_0": [q4_0_nibbles_swapped, q4_0_neighbours_in_a_byte, q4_0_scale_from_the_absmax,
                      q4_0_rounding_to_nearest_even],
    "dequantize_q4_0": [dequantize_q4_0_nibbles_swapped, dequantize_q4_0_neighbours_in_a_byte,
                        dequantize_q4_0_offset_half_a_level],
    "quantize_q4_k": [q4_k_upper_scales_packed_like_the_lower, q4_k_scale_and_min_bytes_swapped,
                      q4_k_values_rounded_against_the_unquantized_scales, q4_k_min_subtracted_with_the_wrong_sign,
                      q4_k_sub_blocks_in_order_through_the_nibbles, q4_k_range_not_holding_zero],
    "dequantize_q4_k": [dequantize_q4_k_without_the_high_bits, dequantize_q4_k_adding_the_min,
                        dequantize_q4_k_nibbles_in_q4_0_order],
}


# -- 11.13 gptq_hessian ----------------------------------------------------------------------------------
def _hessian(inputs, samples_of, scale=2.0):
    n_in = inputs[0].shape[-1]
    H, n = torch.zeros(n_in, n_in), 0
    for x in inputs:
        b = samples_of(x)
        x = x.reshape(-1, n_in).float()
        H *= n / (n + b)
        n += b
        H += scale / n * x.T @ x
    return H


def hessian_counting_tokens_as_samples(inputs):
    return _hessian(inputs, lambda x: x.reshape(-1, x.shape[-1]).shape[0])


def hessian_counting_a_2d_tensor_as_its_rows(inputs):
    return _hessian(inputs, lambda x: x.shape[0])


def hessian_without_the_factor_two(inputs):
    return _hessian(inputs, lambda x: x.shape[0] if x.ndim == 3 else 1, scale=1.0)


def hessian_as_the_mean_of_batch_hessians(inputs):
    per_batch = [2 * x.reshape(-1, x.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
                 / (x.shape[0] if x.ndim == 3 else 1) for x in inputs]
    return sum(per_batch) / len(per_batch)


# -- 11.14 gptq_quantize ---------------------------------------------------------------------------------
def _gptq(weight, hessian, bits=4, group_size=128, block_size=128, damp_percent=0.01, act_order=False,
          symmetric=False, *, update=True, damp=True, groups_from_original=False, undo_order=True, upper=True):
    maxq = 2 ** bits - 1
    W, H = weight.float().clone(), hessian.float().clone()
    n = W.shape[1]
    per_row = group_size in (None, -1)
    if per_row:
        scale, zero = _gptq_grid(W, maxq, symmetric)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    original = W.clone()
    if damp:
        H += damp_percent * torch.diag(H).mean() * torch.eye(n)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(H))
    Hinv = torch.linalg.cholesky(inverse, upper=upper)
    Q, scales, zeros = torch.zeros_like(W), [], []
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if not per_row and c % group_size == 0:
                scale, zero = _gptq_grid((original if groups_from_original else W)[:, c:c + group_size], maxq, symmetric)
                scales.append(scale)
                zeros.append(zero)
            w, d = W1[:, i], Hinv1[i, i]
            q = (scale * (torch.clamp(torch.round(w[:, None] / scale) + zero, 0, maxq) - zero)).flatten()
            Q[:, c] = q
            err = (w - q) / d
            if update:
                W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        if update:
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if per_row:
        scales, zeros, group_size = [scale], [zero], n
    g_idx = torch.arange(n, dtype=torch.int32) // group_size
    if act_order and undo_order:
        inv = torch.argsort(perm)
        Q, g_idx = Q[:, inv], g_idx[inv]
    return {"weight": Q, "scales": torch.cat(scales, 1), "zeros": torch.cat(zeros, 1), "g_idx": g_idx}


def gptq_without_updating_the_remaining_columns(*args, **kwargs):
    return _gptq(*args, **kwargs, update=False)


def gptq_without_damping(*args, **kwargs):
    return _gptq(*args, **kwargs, damp=False)


def gptq_with_groups_from_the_original_weights(*args, **kwargs):
    return _gptq(*args, **kwargs, groups_from_original=True)


def gptq_leaving_the_act_order_permutation(*args, **kwargs):
    return _gptq(*args, **kwargs, undo_order=False)


def gptq_with_the_lower_cholesky_factor(*args, **kwargs):
    return _gptq(*args, **kwargs, upper=False)


# -- 11.15 awq_search_scales -----------------------------------------------------------------------------
def _rtn(w, bits, group_size):
    g = w.reshape(-1, group_size)
    hi, lo = g.amax(1, keepdim=True), g.amin(1, keepdim=True)
    s = (hi - lo).clamp(min=1e-5) / (2 ** bits - 1)
    z = (-torch.round(lo / s)).clamp(0, 2 ** bits - 1)
    return ((torch.clamp(torch.round(g / s) + z, 0, 2 ** bits - 1) - z) * s).reshape(w.shape)


def _awq(weight, inputs, bits=4, group_size=128, n_grid=20, *, divide=True, duo=True, signed_mean=False,
         normalise_groups=True):
    W, x = weight.float(), inputs.float().reshape(-1, weight.shape[1])
    g = W.abs().reshape(-1, group_size)
    w_mean = (g / (g.amax(1, keepdim=True) + 1e-6) if normalise_groups else g).reshape(W.shape).mean(0)
    x_mean = (x if signed_mean else x.abs()).sum(0) / x.shape[0]
    ref = x @ W.T
    losses, best = [], None
    for k in range(n_grid):
        a = k / n_grid
        s = (x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4) if duo else x_mean.pow(a)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        wq = _rtn(W * s, bits, group_size) / s if divide else _rtn(W * s, bits, group_size)
        loss = (ref - x @ wq.T).pow(2).sum().item() / ref.numel()
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, a, s)
    return {"scales": best[2], "ratio": best[1], "losses": losses}


def awq_without_dividing_by_the_scales(*args, **kwargs):
    return _awq(*args, **kwargs, divide=False)


def awq_from_the_activations_only(*args, **kwargs):
    return _awq(*args, **kwargs, duo=False)


def awq_with_the_signed_activation_mean(*args, **kwargs):
    return _awq(*args, **kwargs, signed_mean=True)


def awq_without_normalising_the_weight_groups(*args, **kwargs):
    return _awq(*args, **kwargs, normalise_groups=False)


MUTANTS_PART_C = {
    "gptq_hessian": [hessian_counting_tokens_as_samples, hessian_counting_a_2d_tensor_as_its_rows,
                     hessian_without_the_factor_two, hessian_as_the_mean_of_batch_hessians],
    "gptq_quantize": [gptq_without_updating_the_remaining_columns, gptq_without_damping,
                      gptq_with_groups_from_the_original_weights, gptq_leaving_the_act_order_permutation,
                      gptq_with_the_lower_cholesky_factor],
    "awq_search_scales": [awq_without_dividing_by_the_scales, awq_from_the_activations_only,
                          awq_with_the_signed_activation_mean, awq_without_normalising_the_weight_groups],
}

MUTANTS = {**MUTANTS_PART_A, **MUTANTS_PART_B, **MUTANTS_PART_C}
