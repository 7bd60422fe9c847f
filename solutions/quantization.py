"""Reference solutions of Chapter 11 (quantization): same qualified names as in ``course_lib.quantization``."""

from __future__ import annotations

import torch


# == part B: GGUF ==
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
# == end of part B ==
