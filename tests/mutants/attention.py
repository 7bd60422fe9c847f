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


# -- wrong answers written from the contract alone (issue 16): arguments, shapes, dtypes, inputs -----
def _sdpa(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None, return_weights=False):
    return scaled_dot_product_attention(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights)


def sdpa_treating_scale_zero_as_unset(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                      return_weights=False):
    scale = scale or 1 / math.sqrt(query.shape[-1])
    return _sdpa(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights)


def sdpa_transposing_dims_2_and_3(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                                  return_weights=False):
    return _attend(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights,
                   transpose=lambda k: k.transpose(2, 3))


def sdpa_dividing_by_one_minus_p_by_hand(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0,
                                         scale=None, return_weights=False):
    _, weights = _sdpa(query, key, value, attn_mask, is_causal, 0.0, scale, True)
    if dropout_p > 0:
        keep = torch.rand(weights.shape, device=weights.device) >= dropout_p
        weights = weights * keep / (1 - dropout_p) if dropout_p < 1 else weights * keep / 0.0
    out = weights @ value
    return (out, weights) if return_weights else out


def sdpa_dropout_from_its_own_seeded_generator(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0,
                                               scale=None, return_weights=False):
    _, weights = _sdpa(query, key, value, attn_mask, is_causal, 0.0, scale, True)
    if dropout_p > 0:
        gen = torch.Generator(device=weights.device).manual_seed(0)
        keep = torch.rand(weights.shape, generator=gen, device=weights.device) >= dropout_p
        weights = weights * keep / (1 - dropout_p)
    out = weights @ value
    return (out, weights) if return_weights else out


def sdpa_returning_float32_for_half_inputs(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0,
                                           scale=None, return_weights=False):
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    return _sdpa(query.float(), key.float(), value.float(), attn_mask, is_causal, dropout_p, scale, return_weights)


def sdpa_scaling_the_callers_query_in_place(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0,
                                            scale=None, return_weights=False):
    query *= 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    return _sdpa(query, key, value, attn_mask, is_causal, dropout_p, 1.0, return_weights)


def sdpa_adding_causality_into_the_callers_float_mask(query, key, value, attn_mask=None, is_causal=False,
                                                      dropout_p=0.0, scale=None, return_weights=False):
    if is_causal and attn_mask is not None and attn_mask.is_floating_point():
        q_len, kv_len = query.shape[-2], key.shape[-2]
        future = ~torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        attn_mask.masked_fill_(future.expand(attn_mask.shape), float("-inf"))
        is_causal = False
    return _sdpa(query, key, value, attn_mask, is_causal, dropout_p, scale, return_weights)


def mask_slicing_a_square_causal_mask(attention_mask, q_len, causal=True):
    batch, kv_len = attention_mask.shape
    mask = attention_mask.bool()[:, None, None, :]
    if causal:
        mask = mask & torch.ones(kv_len, kv_len, dtype=torch.bool, device=mask.device).tril()[-q_len:]
    return mask.expand(batch, 1, q_len, kv_len)


def mask_bidirectional_with_a_row_per_key(attention_mask, q_len, causal=True):
    batch, kv_len = attention_mask.shape
    if not causal:
        return attention_mask.bool()[:, None, None, :].expand(batch, 1, kv_len, kv_len)
    return make_attention_mask(attention_mask, q_len, causal)


def mask_unsqueezing_the_callers_attention_mask_in_place(attention_mask, q_len, causal=True):
    batch, kv_len = attention_mask.shape
    padding = attention_mask.unsqueeze_(1).unsqueeze_(1).bool()
    if causal:
        padding = padding & torch.ones(q_len, kv_len, dtype=torch.bool, device=padding.device).tril(kv_len - q_len)
    return padding.expand(batch, 1, q_len, kv_len)


def mha_ignoring_dropout(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                         dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, 0.0, return_weights, n_heads=n_heads)


def mha_reading_every_bias_once_q_has_one(weights, x, context=None, attention_mask=None, attn_mask=None,
                                          is_causal=False, dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                bias="q_proj.bias" in weights and "k_proj.bias" in weights)


def mha_dropping_causality_when_padded(weights, x, context=None, attention_mask=None, attn_mask=None,
                                       is_causal=False, dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal and attention_mask is None, dropout_p,
                return_weights, n_heads=n_heads)


def mha_heads_of_d_model_over_n_heads(weights, x, context=None, attention_mask=None, attn_mask=None,
                                      is_causal=False, dropout_p=0.0, return_weights=False, *, n_heads):
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                scale=lambda inner: 1 / math.sqrt(x.shape[-1] // n_heads))


def mha_folding_the_scale_into_the_callers_weights(weights, x, context=None, attention_mask=None, attn_mask=None,
                                                   is_causal=False, dropout_p=0.0, return_weights=False, *, n_heads):
    d_head = weights["q_proj.weight"].shape[0] // n_heads
    weights["q_proj.weight"].mul_(1 / math.sqrt(d_head))
    if "q_proj.bias" in weights:
        weights["q_proj.bias"].mul_(1 / math.sqrt(d_head))
    return _mha(weights, x, context, attention_mask, attn_mask, is_causal, dropout_p, return_weights, n_heads=n_heads,
                scale=lambda inner: 1.0)


def repeat_kv_into_a_float32_buffer(x, n_rep):
    b, h, s, d = x.shape
    out = torch.empty(b, h * n_rep, s, d, device=x.device)
    for head in range(h * n_rep):
        out[:, head] = x[:, head // n_rep]
    return out


def repeat_kv_unsqueezing_the_callers_tensor_in_place(x, n_rep):
    b, h, s, d = x.shape
    return x.unsqueeze_(2).expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def gqa_always_causal(weights, x, attention_mask=None, is_causal=True, return_weights=False, *, n_heads, n_kv_heads):
    return _gqa(weights, x, attention_mask, True, return_weights, n_heads=n_heads, n_kv_heads=n_kv_heads)


def gqa_returning_weights_averaged_over_heads(weights, x, attention_mask=None, is_causal=True, return_weights=False,
                                              *, n_heads, n_kv_heads):
    out, attn = _gqa(weights, x, attention_mask, is_causal, True, n_heads=n_heads, n_kv_heads=n_kv_heads)
    return (out, attn.mean(1, keepdim=True).expand_as(attn)) if return_weights else out


def gqa_heads_of_d_model_over_n_heads(weights, x, attention_mask=None, is_causal=True, return_weights=False, *,
                                      n_heads, n_kv_heads):
    b, s, d_model = x.shape
    d_head = d_model // n_heads
    q = _linear(weights, "q_proj", x).view(b, s, n_heads, -1).transpose(1, 2)
    k = repeat_kv(_split(_linear(weights, "k_proj", x), n_kv_heads), n_heads // n_kv_heads)
    v = repeat_kv(_split(_linear(weights, "v_proj", x), n_kv_heads), n_heads // n_kv_heads)
    mask = None if attention_mask is None else make_attention_mask(attention_mask, s, causal=is_causal)
    out, attn = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             scale=1 / math.sqrt(d_head), return_weights=True)
    out = _linear(weights, "o_proj", _merge(out))
    return (out, attn) if return_weights else out


MUTANTS = {
    "scaled_dot_product_attention": [
        sdpa_without_scale, sdpa_scaled_by_one_over_d, sdpa_softmax_over_queries, sdpa_key_dot_T,
        sdpa_key_reshaped_not_transposed, sdpa_mask_after_softmax, sdpa_bool_mask_inverted,
        sdpa_float_mask_used_as_bool, sdpa_causal_excludes_the_diagonal, sdpa_causal_bottom_right,
        sdpa_nan_on_fully_masked_rows, sdpa_dropout_not_rescaled, sdpa_ignores_dropout,
        sdpa_treating_scale_zero_as_unset, sdpa_transposing_dims_2_and_3, sdpa_dividing_by_one_minus_p_by_hand,
        sdpa_dropout_from_its_own_seeded_generator, sdpa_returning_float32_for_half_inputs,
        sdpa_scaling_the_callers_query_in_place, sdpa_adding_causality_into_the_callers_float_mask],
    "make_attention_mask": [
        mask_causal_excludes_the_token_itself, mask_causal_sees_one_future_token, mask_causal_top_left,
        mask_padding_inverted, mask_padding_on_query_rows, mask_as_float_ones_and_zeros,
        mask_slicing_a_square_causal_mask, mask_bidirectional_with_a_row_per_key,
        mask_unsqueezing_the_callers_attention_mask_in_place],
    "multi_head_attention": [
        mha_heads_split_in_the_wrong_order, mha_heads_merged_without_transpose, mha_padding_mask_inverted,
        mha_ignores_the_masks, mha_scaled_by_d_model_not_d_head, mha_without_output_projection,
        mha_forgets_the_biases, mha_keys_and_values_swapped, mha_ignoring_dropout,
        mha_reading_every_bias_once_q_has_one, mha_dropping_causality_when_padded, mha_heads_of_d_model_over_n_heads,
        mha_folding_the_scale_into_the_callers_weights],
    "repeat_kv": [repeat_kv_tiles_the_heads, repeat_kv_along_the_sequence, repeat_kv_expands_the_wrong_axis,
                  repeat_kv_into_a_float32_buffer, repeat_kv_unsqueezing_the_callers_tensor_in_place],
    "grouped_query_attention": [
        gqa_kv_heads_tiled_not_interleaved, gqa_heads_split_in_the_wrong_order, gqa_forgets_causality_when_padded,
        gqa_large_negative_mask_not_minus_inf, gqa_padding_mask_inverted, gqa_always_causal,
        gqa_returning_weights_averaged_over_heads, gqa_heads_of_d_model_over_n_heads],
}
