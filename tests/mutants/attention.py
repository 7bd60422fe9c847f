"""Plausible wrong answers to Chapter 2's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation, so that the test that catches
it catches that mistake (the helpers below are the correct parts they share).
"""

import math

import torch
import torch.nn.functional as F

from course_lib.attention import make_attention_mask, repeat_kv, scaled_dot_product_attention


# -- 2.1 scaled_dot_product_attention ----------------------------------------------------------------
def _attend(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None, return_weights=False, *,
            transpose=lambda k: k.transpose(-2, -1), softmax_dim=-1, causal_diagonal=lambda q, kv: 0,
            bool_mask=lambda s, m: s.masked_fill(~m, float("-inf")), float_mask=lambda s, m: s + m,
            default_scale=lambda d: 1 / math.sqrt(d), mask_after_softmax=False, nan_rows=False, rescale=True):
    q_len, kv_len = query.shape[-2], key.shape[-2]
    scale = default_scale(query.shape[-1]) if scale is None else scale
    scores = query @ transpose(key) * scale
    allowed = None
    if attn_mask is not None:
        if mask_after_softmax:
            allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
        else:
            scores = bool_mask(scores, attn_mask) if attn_mask.dtype == torch.bool else float_mask(scores, attn_mask)
    if is_causal:
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(causal_diagonal(q_len, kv_len))
        scores = scores.masked_fill(~causal, float("-inf"))
    weights = torch.softmax(scores.double(), dim=softmax_dim)
    if not nan_rows:
        weights = weights.nan_to_num(0.0)
    if allowed is not None:
        weights = weights * allowed
    weights = weights.to(query.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p) * (1.0 if rescale else 1 - dropout_p)
    out = weights @ value
    return (out, weights) if return_weights else out


def sdpa_without_scale(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                       return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   default_scale=lambda d: 1.0)


def sdpa_scaled_by_one_over_d(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                              return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   default_scale=lambda d: 1.0 / d)


def sdpa_softmax_over_queries(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                              return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights, softmax_dim=-2)


def sdpa_key_dot_T(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                   return_weights=False):
    """The seed's ``k.T``: on a 4-D tensor it reverses every dim (deprecated, and it breaks)."""
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   transpose=lambda k: k.permute(*reversed(range(k.ndim))))


def sdpa_key_reshaped_not_transposed(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                     return_weights=False):
    """``k.reshape(..., d, kv_len)``: the shape of the transpose, with the numbers scrambled; it runs."""
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   transpose=lambda k: k.reshape(*k.shape[:-2], k.shape[-1], k.shape[-2]))


def sdpa_mask_after_softmax(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                            return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights, mask_after_softmax=True)


def sdpa_bool_mask_inverted(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                            return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   bool_mask=lambda s, m: s.masked_fill(m, float("-inf")))


def sdpa_float_mask_used_as_bool(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                 return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   float_mask=lambda s, m: s.masked_fill(~m.bool(), float("-inf")))


def sdpa_causal_excludes_the_diagonal(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                      return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   causal_diagonal=lambda q, kv: -1)


def sdpa_causal_bottom_right(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                             return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   causal_diagonal=lambda q, kv: kv - q)


def sdpa_nan_on_fully_masked_rows(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                  return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights, nan_rows=True)


def sdpa_dropout_not_rescaled(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                              return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights, rescale=False)


def sdpa_ignores_dropout(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                        return_weights=False):
    """Never applies dropout, whatever dropout_p says."""
    return _attend(query, key, value, attn_mask, is_causal, 0.0, scale, return_weights)


# -- 2.2 make_attention_mask -----------------------------------------------------------------------------
def _mask(attention_mask, q_len, causal=True, *, diagonal=lambda q, kv: kv - q, keep=lambda m: m.bool(),
          on_queries=False):
    batch, kv_len = attention_mask.shape
    real = keep(attention_mask)
    mask = real[:, None, :, None] if on_queries else real[:, None, None, :]
    if causal:
        mask = mask & torch.ones(q_len, kv_len, dtype=torch.bool, device=attention_mask.device).tril(
            diagonal(q_len, kv_len))
    return mask.expand(batch, 1, q_len, kv_len)


def mask_causal_excludes_the_token_itself(attention_mask, q_len, causal=True):
    return _mask(attention_mask, q_len, causal, diagonal=lambda q, kv: kv - q - 1)


def mask_causal_sees_one_future_token(attention_mask, q_len, causal=True):
    return _mask(attention_mask, q_len, causal, diagonal=lambda q, kv: kv - q + 1)


def mask_causal_top_left(attention_mask, q_len, causal=True):
    return _mask(attention_mask, q_len, causal, diagonal=lambda q, kv: 0)


def mask_padding_inverted(attention_mask, q_len, causal=True):
    return _mask(attention_mask, q_len, causal, keep=lambda m: m == 0)


def mask_padding_on_query_rows(attention_mask, q_len, causal=True):
    return _mask(attention_mask, q_len, causal, on_queries=True)


def mask_as_float_ones_and_zeros(attention_mask, q_len, causal=True):
    return _mask(attention_mask, q_len, causal).float()


# -- 2.3 multi_head_attention ---------------------------------------------------------------------------
def _linear(weights, name, x, bias=True):
    return F.linear(x, weights[f"{name}.weight"], weights.get(f"{name}.bias") if bias else None)


def _split(x, n_heads):
    b, s, f = x.shape
    return x.view(b, s, n_heads, f // n_heads).transpose(1, 2)


def _split_wrong_order(x, n_heads):
    b, s, f = x.shape
    return x.view(b, n_heads, s, f // n_heads)


def _merge(x):
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def _merge_wrong_order(x):
    b, h, s, d = x.shape
    return x.reshape(b, s, h * d)


def _pad(attention_mask, attn_mask, keep=lambda m: m.bool()):
    if attention_mask is None:
        return attn_mask
    pad = keep(attention_mask)[:, None, None, :]
    if attn_mask is None:
        return pad
    return attn_mask & pad if attn_mask.dtype == torch.bool else attn_mask.masked_fill(~pad, float("-inf"))


def _mha(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False, dropout_p=0.0,
         return_weights=False, *, n_heads, split=_split, merge=_merge, keep=lambda m: m.bool(), bias=True,
         output_projection=True, scale=None, use_masks=True):
    source = x if context is None else context
    q = split(_linear(weights, "q_proj", x, bias), n_heads)
    k = split(_linear(weights, "k_proj", source, bias), n_heads)
    v = split(_linear(weights, "v_proj", source, bias), n_heads)
    mask = _pad(attention_mask, attn_mask, keep) if use_masks else None
    scale = scale(q.shape[-1] * n_heads) if scale else None
    out, attn = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                             scale=scale, return_weights=True)
    out = merge(out)
    if output_projection:
        out = _linear(weights, "o_proj", out, bias)
    return (out, attn) if return_weights else out


def mha_heads_split_in_the_wrong_order(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                                       dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                split=_split_wrong_order, merge=lambda o: o.reshape(o.shape[0], o.shape[2], -1))


def mha_heads_merged_without_transpose(weights, x, context=None, attention_mask=None, attn_mask=None,
                                       is_causal=False, dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                merge=_merge_wrong_order)


def mha_padding_mask_inverted(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                              dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                keep=lambda m: m == 0)


def mha_ignores_the_masks(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                          dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                use_masks=False)


def mha_scaled_by_d_model_not_d_head(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                                     dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                scale=lambda d_model: 1 / math.sqrt(d_model))


def mha_without_output_projection(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                                  dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                output_projection=False)


def mha_forgets_the_biases(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                           dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                bias=False)


def mha_keys_and_values_swapped(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                                dropout_p=0.0, return_weights=False, *, n_heads):
    swapped = {name.replace("k_proj", "@").replace("v_proj", "k_proj").replace("@", "v_proj"): w
               for name, w in weights.items()}
    return _mha(swapped, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads)


# -- 2.4 repeat_kv --------------------------------------------------------------------------------------
def repeat_kv_tiles_the_heads(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


def repeat_kv_along_the_sequence(x, n_rep):
    b, h, s, d = x.shape
    return x.repeat_interleave(n_rep, dim=2).reshape(b, h * n_rep, s, d)


def repeat_kv_expands_the_wrong_axis(x, n_rep):
    b, h, s, d = x.shape
    return x[:, None].expand(b, n_rep, h, s, d).reshape(b, h * n_rep, s, d)


# -- 2.5 grouped_query_attention -------------------------------------------------------------------------
def _gqa(weights, x, attention_mask=None, is_causal=True, return_weights=False, *, n_heads, n_kv_heads,
         repeat=repeat_kv, split=_split, mask_fn=make_attention_mask, causal_with_padding=True, finfo_min=False):
    b, s, _ = x.shape
    q = split(_linear(weights, "q_proj", x), n_heads)
    k = repeat(split(_linear(weights, "k_proj", x), n_kv_heads), n_heads // n_kv_heads)
    v = repeat(split(_linear(weights, "v_proj", x), n_kv_heads), n_heads // n_kv_heads)
    mask = None
    if attention_mask is not None:
        mask = mask_fn(attention_mask, s, causal=is_causal and causal_with_padding)
        if finfo_min:  # Hugging Face eager's additive mask: a large negative number, not -inf
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
    out, attn = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             return_weights=True)
    out = _linear(weights, "o_proj", _merge(out))
    return (out, attn) if return_weights else out


def gqa_kv_heads_tiled_not_interleaved(weights, x, attention_mask=None, is_causal=True, return_weights=False, *,
                                       n_heads, n_kv_heads):
    return _gqa(weights, x, attention_mask, is_causal, return_weights, n_heads=n_heads, n_kv_heads=n_kv_heads,
                repeat=repeat_kv_tiles_the_heads)


def gqa_heads_split_in_the_wrong_order(weights, x, attention_mask=None, is_causal=True, return_weights=False, *,
                                       n_heads, n_kv_heads):
    return _gqa(weights, x, attention_mask, is_causal, return_weights, n_heads=n_heads, n_kv_heads=n_kv_heads,
                split=_split_wrong_order)


def gqa_forgets_causality_when_padded(weights, x, attention_mask=None, is_causal=True, return_weights=False, *,
                                      n_heads, n_kv_heads):
    return _gqa(weights, x, attention_mask, is_causal, return_weights, n_heads=n_heads, n_kv_heads=n_kv_heads,
                causal_with_padding=False)


def gqa_large_negative_mask_not_minus_inf(weights, x, attention_mask=None, is_causal=True, return_weights=False, *,
                                          n_heads, n_kv_heads):
    return _gqa(weights, x, attention_mask, is_causal, return_weights, n_heads=n_heads, n_kv_heads=n_kv_heads,
                finfo_min=True)


def gqa_padding_mask_inverted(weights, x, attention_mask=None, is_causal=True, return_weights=False, *,
                              n_heads, n_kv_heads):
    return _gqa(weights, x, attention_mask, is_causal, return_weights, n_heads=n_heads, n_kv_heads=n_kv_heads,
                mask_fn=lambda m, s, causal: make_attention_mask(1 - m.long(), s, causal=causal))


MUTANTS = {
    "scaled_dot_product_attention": [
        sdpa_without_scale, sdpa_scaled_by_one_over_d, sdpa_softmax_over_queries, sdpa_key_dot_T,
        sdpa_key_reshaped_not_transposed, sdpa_mask_after_softmax, sdpa_bool_mask_inverted,
        sdpa_float_mask_used_as_bool, sdpa_causal_excludes_the_diagonal, sdpa_causal_bottom_right,
        sdpa_nan_on_fully_masked_rows, sdpa_dropout_not_rescaled, sdpa_ignores_dropout],
    "make_attention_mask": [
        mask_causal_excludes_the_token_itself, mask_causal_sees_one_future_token, mask_causal_top_left,
        mask_padding_inverted, mask_padding_on_query_rows, mask_as_float_ones_and_zeros],
    "multi_head_attention": [
        mha_heads_split_in_the_wrong_order, mha_heads_merged_without_transpose, mha_padding_mask_inverted,
        mha_ignores_the_masks, mha_scaled_by_d_model_not_d_head, mha_without_output_projection,
        mha_forgets_the_biases, mha_keys_and_values_swapped],
    "repeat_kv": [repeat_kv_tiles_the_heads, repeat_kv_along_the_sequence, repeat_kv_expands_the_wrong_axis],
    "grouped_query_attention": [
        gqa_kv_heads_tiled_not_interleaved, gqa_heads_split_in_the_wrong_order, gqa_forgets_causality_when_padded,
        gqa_large_negative_mask_not_minus_inf, gqa_padding_mask_inverted],
}
