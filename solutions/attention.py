"""Reference solutions for Chapter 2 (course_lib/attention.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.numerics import stable_softmax


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                                 dropout_p: float = 0.0, scale: float | None = None,
                                 return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    q_len, kv_len, d_head = query.shape[-2], key.shape[-2], query.shape[-1]
    scale = 1.0 / math.sqrt(d_head) if scale is None else scale
    scores = query @ key.transpose(-2, -1) * scale                     # (..., q_len, kv_len)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))     # broadcasts the mask's shape too
        else:
            scores = scores + attn_mask
    if is_causal:  # top-left aligned, as torch: query i sees keys j <= i
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    # Softmax over the keys in at least float32; Chapter 0's stable_softmax gives a fully masked
    # row (all -inf) zeros, where torch.softmax would give NaN.
    weights = stable_softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(query.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    output = weights @ value                                           # (..., q_len, d_v)
    return (output, weights) if return_weights else output


def make_attention_mask(attention_mask: torch.Tensor, q_len: int, causal: bool = True) -> torch.Tensor:
    batch, kv_len = attention_mask.shape
    mask = attention_mask.bool()[:, None, None, :]                      # (batch, 1, 1, kv_len): real keys
    if causal:  # bottom-right aligned: the queries are the last q_len positions
        future = torch.ones(q_len, kv_len, dtype=torch.bool, device=attention_mask.device)
        mask = mask & future.tril(diagonal=kv_len - q_len)             # (q_len, kv_len) broadcasts
    return mask.expand(batch, 1, q_len, kv_len)


def _linear(weights, name, x):
    return F.linear(x, weights[f"{name}.weight"], weights.get(f"{name}.bias"))


def _split_heads(x, n_heads):
    batch, seq, features = x.shape                                     # (batch, seq, n_heads * d_head)
    return x.view(batch, seq, n_heads, features // n_heads).transpose(1, 2)   # (batch, heads, seq, d_head)


def _merge_heads(x):
    batch, heads, seq, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * d_head)


def _padding_and_mask(attention_mask, attn_mask):
    """``attn_mask`` with the keys that ``attention_mask`` marks as padding blocked as well."""
    if attention_mask is None:
        return attn_mask
    keep = attention_mask.bool()[:, None, None, :]                      # (batch, 1, 1, kv_len)
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return attn_mask.masked_fill(~keep, float("-inf"))


def multi_head_attention(weights: dict[str, torch.Tensor], x: torch.Tensor, context: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False, dropout_p: float = 0.0, return_weights: bool = False, *,
                         n_heads: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    source = x if context is None else context                         # keys/values come from here
    q = _split_heads(_linear(weights, "q_proj", x), n_heads)           # (batch, heads, q_len, d_head)
    k = _split_heads(_linear(weights, "k_proj", source), n_heads)      # (batch, heads, kv_len, d_head)
    v = _split_heads(_linear(weights, "v_proj", source), n_heads)
    out, attn = scaled_dot_product_attention(q, k, v, attn_mask=_padding_and_mask(attention_mask, attn_mask),
                                             is_causal=is_causal, dropout_p=dropout_p, return_weights=True)
    out = _linear(weights, "o_proj", _merge_heads(out))                # (batch, q_len, d_model)
    return (out, attn) if return_weights else out


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    batch, n_kv_heads, seq, d_head = x.shape
    x = x[:, :, None].expand(batch, n_kv_heads, n_rep, seq, d_head)    # copies of a head side by side
    return x.reshape(batch, n_kv_heads * n_rep, seq, d_head)


def grouped_query_attention(weights: dict[str, torch.Tensor], x: torch.Tensor,
                            attention_mask: torch.Tensor | None = None, is_causal: bool = True,
                            return_weights: bool = False, *, n_heads: int,
                            n_kv_heads: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    batch, seq, _ = x.shape
    q = _split_heads(_linear(weights, "q_proj", x), n_heads)           # (batch, n_heads, seq, d_head)
    k = _split_heads(_linear(weights, "k_proj", x), n_kv_heads)        # (batch, n_kv_heads, seq, d_head)
    v = _split_heads(_linear(weights, "v_proj", x), n_kv_heads)
    k, v = repeat_kv(k, n_heads // n_kv_heads), repeat_kv(v, n_heads // n_kv_heads)
    mask = None
    if attention_mask is not None:
        mask = make_attention_mask(attention_mask, seq, causal=is_causal)
    out, attn = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             return_weights=True)
    out = _linear(weights, "o_proj", _merge_heads(out))
    return (out, attn) if return_weights else out
