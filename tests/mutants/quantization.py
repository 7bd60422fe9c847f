"""Plausible wrong answers to Chapter 11's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake.
"""

import torch


# == part B: GGUF ==
def _roundf(v):
    t = torch.trunc(v)
    return torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t)


def _f16_bytes(d):
    return d.half().view(torch.uint8)


def _f16_value(two_bytes):
    return two_bytes.contiguous().view(torch.float16).float()


def _inverse(d):
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _blocks(x, size):
    return x.float().reshape(*x.shape[:-1], -1, size)


# -- 11.7 quantize_q8_0 --------------------------------------------------------------------------------------------
def _q8_0(x, rounding=_roundf, scale_for_values=lambda d: d, scale_bytes=_f16_bytes):
    blocks = _blocks(x, 32)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127
    q = rounding(blocks * _inverse(scale_for_values(d))).to(torch.int8)
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
    v = blocks * _inverse(d)
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
def _pack_scales(sc, m):
    return torch.cat([sc[..., :4] | (sc[..., 4:] >> 4) << 6, m[..., :4] | (m[..., 4:] >> 4) << 6,
                      (sc[..., 4:] & 15) | (m[..., 4:] & 15) << 4], dim=-1).to(torch.uint8)


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


MUTANTS = {
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
# == end of part B ==
