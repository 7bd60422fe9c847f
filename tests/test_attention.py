"""Chapter 2 graded tests (public): scaled dot-product attention, attention masks, multi-head
attention, repeat_kv and grouped-query attention.

The references are outside the course: ``torch.nn.functional.scaled_dot_product_attention`` (its
weights are read off by attending over identity values: ``softmax(...) @ I`` is the weights),
``torch.nn.MultiheadAttention`` with the same weights, Hugging Face's causal-mask builders and its
``LlamaAttention`` (grouped-query attention) with copied weights. float32 answers are compared with
the reference computed in float64 from the same inputs, so only the student's rounding counts.

Each exercise's contract (its docstring and the module's conventions), clause by clause, with the
public tests that check it (``test_`` dropped):

2.1 ``scaled_dot_product_attention``
  - ``softmax(q k^T * scale + mask) v`` over the keys, any q_len/kv_len: sdpa_matches_torch_without_masks
  - any number of leading dims (2-D to 5-D): sdpa_works_for_any_number_of_leading_dims
  - ``scale``: None is 1/sqrt(d_head); any number, 0.0 included: sdpa_uses_the_given_scale,
    sdpa_scale_zero_gives_uniform_weights
  - bool mask True = attend, of every broadcast shape; float mask added: sdpa_boolean_mask_true_means_attend,
    sdpa_float_mask_is_added_to_the_scores
  - ``is_causal`` top-left aligned, combined with a mask: sdpa_is_causal_is_top_left_aligned_like_torch,
    sdpa_causal_combines_with_a_mask, sdpa_half_precision_keeps_the_dtype_and_is_close_to_float32
  - fully masked rows: zero weights and output: sdpa_fully_masked_rows_give_zeros_not_nan
  - ``return_weights``: weights sum to 1, shape with the mask's broadcast: sdpa_returns_weights_that_sum_to_one_over_the_keys,
    sdpa_boolean_mask_true_means_attend
  - ``dropout_p``: after the softmax, rescaled, ``output == weights @ value``, global generator, 0 and 1:
    sdpa_dropout_zeroes_weights_and_rescales_the_rest, sdpa_with_dropout_p_one_drops_every_weight,
    sdpa_dropout_draws_from_the_global_generator (a local run only: the grading door's process has its
    own generator)
  - query's dtype (float64, bfloat16, float16), d_v != d_head: sdpa_float64_and_value_width,
    sdpa_half_precision_keeps_the_dtype_and_is_close_to_float32 (and on CUDA, sdpa_bfloat16_on_cuda_...)
  - inputs (query, key, value, masks) unchanged: sdpa_leaves_its_inputs_unchanged

2.2 ``make_attention_mask``
  - padding & bottom-right causal, as Hugging Face, left or right padding: make_attention_mask_matches_hugging_face
  - queries are the last q_len positions; any q_len (1, < kv_len, == kv_len, > kv_len), causal or not,
    a row of padding only: make_attention_mask_aligns_queries_with_the_last_keys, make_attention_mask_for_any_q_len
  - bool or any integer attention_mask, left unchanged; a torch.bool result on its device:
    make_attention_mask_accepts_bool_masks_and_keeps_the_device,
    make_attention_mask_takes_any_integer_mask_and_leaves_it_unchanged

2.3 ``multi_head_attention``
  - self-attention as ``nn.MultiheadAttention``, with or without biases, per-head weights:
    multi_head_self_attention_matches_torch
  - each bias optional on its own; d_head = q_proj rows / n_heads (not d_model / n_heads):
    multi_head_attention_with_some_biases_and_heads_narrower_than_d_model
  - ``attention_mask`` (1 = token), ``attn_mask`` bool/float, both together:
    multi_head_attention_ignores_padded_keys, multi_head_attention_causal_and_attn_masks
  - ``is_causal``, also with padding and in cross-attention: multi_head_attention_causal_and_attn_masks,
    multi_head_attention_causal_with_padding, multi_head_cross_attention_is_causal_top_left
  - ``context``: cross-attention with kv_dim != d_model: multi_head_cross_attention_matches_torch
  - ``dropout_p`` applied to the attention weights: multi_head_attention_applies_attention_dropout
  - x's dtype: multi_head_attention_float64
  - weights and inputs unchanged: multi_head_attention_leaves_its_weights_and_inputs_unchanged

2.4 ``repeat_kv``
  - adjacent copies, as Llama; n_rep 1 returns x's values: repeat_kv_matches_llama
  - x's dtype (bfloat16, float64, int64), x unchanged: repeat_kv_keeps_the_dtype_and_leaves_x_unchanged

2.5 ``grouped_query_attention``
  - as Llama's attention (GQA, MQA, MHA), causal by default: grouped_query_attention_matches_llama
  - padding with causality: grouped_query_attention_with_padding_matches_llama_on_real_tokens
  - a query that sees nothing gives o_proj's bias: grouped_query_attention_padding_queries_that_see_nothing_...
  - ``is_causal=False`` (with and without padding); ``return_weights`` per query head:
    grouped_query_attention_without_causality_and_its_weights
  - head_dim != d_model / n_heads: grouped_query_attention_with_heads_wider_than_d_model_over_n_heads
  - weights and inputs unchanged: grouped_query_attention_leaves_its_weights_and_inputs_unchanged
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close, assert_unchanged, in_process_only

NEG_INF = float("-inf")


# -- inputs and references ------------------------------------------------------------------------
def randn(shape, device, dtype=torch.float32, seed=0, std=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(device=device, dtype=dtype)


def qkv(batch, heads, q_len, kv_len, d_head, device, dtype=torch.float32, seed=0, d_v=None):
    return (randn((batch, heads, q_len, d_head), device, dtype, seed),
            randn((batch, heads, kv_len, d_head), device, dtype, seed + 1),
            randn((batch, heads, kv_len, d_v or d_head), device, dtype, seed + 2))


def random_bool_mask(shape, device, seed=0, p_keep=0.7):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < p_keep).to(device)


def torch_sdpa(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """torch's answer in float64 (cast back to the inputs' dtype). torch takes a mask or is_causal;
    given both, causality is folded into the mask (top-left aligned)."""
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.double()
    if attn_mask is not None and is_causal:
        future = ~causal_upper_left(query.shape[-2], key.shape[-2], query.device)
        attn_mask = attn_mask.masked_fill(future, False if attn_mask.dtype == torch.bool else NEG_INF)
        is_causal = False
    out = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), attn_mask=attn_mask,
                                         is_causal=is_causal, scale=scale)
    return out.to(query.dtype)


def torch_weights(query, key, attn_mask=None, is_causal=False, scale=None):
    """torch's attention weights: attention over identity values returns them row by row."""
    kv_len = key.shape[-2]
    eye = torch.eye(kv_len, dtype=torch.float64, device=key.device).expand(*key.shape[:-2], kv_len, kv_len)
    weights = torch_sdpa(query.double(), key.double(), eye, attn_mask, is_causal, scale)
    if attn_mask is not None:  # a mask with more dims than q/k broadcasts the weights too
        shape = torch.broadcast_shapes(attn_mask.shape, (*query.shape[:-1], kv_len))
        weights = weights.expand(shape)
    return weights.to(query.dtype)


def causal_upper_left(q_len, kv_len, device):
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril()


def padding(lengths, kv_len, device, left=False):
    """``(batch, kv_len)`` int64 attention_mask with ``lengths[b]`` real tokens, padded right or left."""
    rows = []
    for n in lengths:
        row = [1] * n + [0] * (kv_len - n)
        rows.append(row[::-1] if left else row)
    return torch.tensor(rows, device=device)


SDPA_SHAPES = [  # (batch, heads, q_len, kv_len, d_head)
    (1, 1, 1, 1, 4),      # one query, one key
    (2, 3, 5, 5, 8),      # self-attention
    (2, 2, 3, 7, 16),     # fewer queries than keys
    (1, 4, 6, 2, 32),     # more queries than keys
    (3, 2, 1, 9, 8),      # one decoding step
]

SCALE_HINT = "Scores not scaled by 1/sqrt(d_head), or softmax over the wrong axis (it must be the keys', the last)?"


# -- 2.1 scaled_dot_product_attention ----------------------------------------------------------------
@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("shape", SDPA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sdpa_matches_torch_without_masks(student, device, shape):
    batch, heads, q_len, kv_len, d_head = shape
    q, k, v = qkv(*shape, device)
    assert_close(student.scaled_dot_product_attention(q, k, v), torch_sdpa(q, k, v),
                 what=f"scaled_dot_product_attention(q, k, v) for (batch, heads, q_len, kv_len, d_head) = {shape}",
                 hint=SCALE_HINT + " key.T reverses all dims of a 4-D tensor: use key.transpose(-2, -1).")


@pytest.mark.exercise("2.1")
def test_sdpa_returns_weights_that_sum_to_one_over_the_keys(student, device):
    q, k, v = qkv(2, 3, 4, 6, 8, device, seed=3)
    out, weights = student.scaled_dot_product_attention(q, k, v, return_weights=True)
    assert_close(weights, torch_weights(q, k), what="attention weights (batch, heads, q_len, kv_len)",
                 hint="weights = softmax(q @ k^T / sqrt(d_head)) over the last axis (the keys).")
    assert_close(out, torch_sdpa(q, k, v), what="output with return_weights=True")
    assert_close(weights.sum(-1), torch.ones(2, 3, 4, device=device), what="weights.sum(-1)",
                 hint="Each query's weights must sum to 1 over the keys.")


@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("scale", [None, 0.1, 1.0])
def test_sdpa_uses_the_given_scale(student, device, scale):
    q, k, v = qkv(2, 2, 5, 5, 16, device, seed=4)
    assert_close(student.scaled_dot_product_attention(q, k, v, scale=scale), torch_sdpa(q, k, v, scale=scale),
                 what=f"scaled_dot_product_attention(scale={scale})",
                 hint="scale=None means 1/sqrt(d_head) with d_head = query.shape[-1]; otherwise multiply by scale.")


@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 1, 7), (2, 3, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_sdpa_boolean_mask_true_means_attend(student, device, mask_shape):
    q, k, v = qkv(2, 3, 5, 7, 8, device, seed=5)
    mask = random_bool_mask(mask_shape, device, seed=6)
    mask[..., 0] = True  # no fully masked row here (tested on its own)
    out, weights = student.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert_close(out, torch_sdpa(q, k, v, mask), what=f"output with a bool attn_mask of shape {mask_shape}",
                 hint="True means *may attend* (as torch): set the scores where the mask is False to -inf "
                      "before the softmax, not after it.")
    assert_close(weights, torch_weights(q, k, mask), what="weights with a bool attn_mask",
                 hint="Blocked keys must get weight exactly 0 and the rest must still sum to 1: mask before the softmax.")


@pytest.mark.exercise("2.1")
def test_sdpa_float_mask_is_added_to_the_scores(student, device):
    q, k, v = qkv(2, 2, 4, 6, 8, device, seed=7)
    mask = randn((2, 1, 4, 6), device, seed=8)
    mask[0, 0, :, 2] = NEG_INF
    mask[1, 0, 1, 3:] = NEG_INF
    assert_close(student.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch_sdpa(q, k, v, mask),
                 what="output with a float attn_mask (added to the scores)",
                 hint="A float mask is added to the scaled scores (0 keeps, -inf blocks, anything else biases); "
                      "only a bool mask selects.")


@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("q_len, kv_len", [(6, 6), (3, 7), (7, 3), (1, 5)])
def test_sdpa_is_causal_is_top_left_aligned_like_torch(student, device, q_len, kv_len):
    q, k, v = qkv(2, 2, q_len, kv_len, 8, device, seed=9)
    out, weights = student.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    assert_close(weights, torch_weights(q, k, is_causal=True), what=f"causal weights (q_len={q_len}, kv_len={kv_len})",
                 hint="Query i may attend to keys 0..i, itself included, counted from the top-left corner "
                      "as torch's is_causal does, also when q_len != kv_len.",
                 wrong={"weights without the causal mask (is is_causal applied?)": torch_weights(q, k)})
    assert_close(out, torch_sdpa(q, k, v, is_causal=True), what=f"causal output (q_len={q_len}, kv_len={kv_len})")


@pytest.mark.exercise("2.1")
def test_sdpa_causal_combines_with_a_mask(student, device):
    q, k, v = qkv(2, 2, 5, 5, 8, device, seed=10)
    mask = random_bool_mask((2, 1, 5, 5), device, seed=11)
    mask[..., 0] = True
    expected = torch_sdpa(q, k, v, mask & causal_upper_left(5, 5, device))
    assert_close(student.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True), expected,
                 what="output with attn_mask and is_causal=True", hint="A key must pass both the mask and causality.")


@pytest.mark.exercise("2.1")
def test_sdpa_fully_masked_rows_give_zeros_not_nan(student, device):
    q, k, v = qkv(2, 2, 4, 5, 8, device, seed=12)
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool, device=device)
    mask[0, :, 1] = False      # query 1 of batch 0 may attend to nothing
    mask[1, :, 3] = False
    out, weights = student.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    expected_out = torch_sdpa(q, k, v, mask)
    expected_out[0, :, 1] = 0.0  # the course's convention (torch >= 2.5 agrees; older torch gives NaN)
    expected_out[1, :, 3] = 0.0
    hint = ("A fully masked row has every score -inf: torch.softmax gives NaN there. Return zero weights "
            "and a zero output for it (Chapter 0's stable_softmax does).")
    assert_close(out, expected_out, what="output for a query that may attend to no key", hint=hint)
    assert_close(weights, torch_weights(q, k, mask).nan_to_num(0.0), what="weights of a fully masked row", hint=hint)
    float_mask = torch.zeros(2, 1, 4, 5, device=device).masked_fill(~mask, NEG_INF)
    assert_close(student.scaled_dot_product_attention(q, k, v, attn_mask=float_mask), expected_out,
                 what="output for a row whose float mask is all -inf", hint=hint)


@pytest.mark.exercise("2.1")
def test_sdpa_float64_and_value_width(student, device):
    q, k, v = qkv(2, 3, 4, 6, 8, device, dtype=torch.float64, seed=13, d_v=5)
    out = student.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(out, torch_sdpa(q, k, v, is_causal=True), what="float64 causal output with d_v != d_head",
                 hint="The scale is 1/sqrt(d_head), from query.shape[-1], not from value's width.",
                 wrong={"attention without the causal mask (is is_causal applied?)": torch_sdpa(q, k, v),
                        "causal attention scaled by 1/sqrt(d_v) instead of 1/sqrt(d_head)":
                            torch_sdpa(q, k, v, is_causal=True, scale=v.shape[-1] ** -0.5),
                        "causal attention without the 1/sqrt(d_head) scale":
                            torch_sdpa(q, k, v, is_causal=True, scale=1.0)})


@pytest.mark.exercise("2.1")
def test_sdpa_dropout_zeroes_weights_and_rescales_the_rest(student, device):
    q, k, v = qkv(2, 4, 32, 32, 8, device, seed=14)
    p = 0.25
    clean = torch_weights(q, k)
    out, weights = student.scaled_dot_product_attention(q, k, v, dropout_p=p, return_weights=True)
    dropped = weights == 0
    fraction = dropped.float().mean().item()
    # 8192 independent draws: the fraction's standard deviation is sqrt(p (1 - p) / 8192) = 0.005.
    assert abs(fraction - p) < 0.03, (f"with dropout_p={p}, {fraction:.3f} of the weights are zero; expected "
                                      f"about {p}. Apply dropout to the weights after the softmax.")
    assert_close(torch.where(dropped, clean / (1 - p), weights), clean / (1 - p),
                 what="the weights dropout kept", hint="Kept weights are scaled by 1 / (1 - dropout_p), as nn.Dropout does.")
    assert_close(out, weights @ v, what="output with dropout",
                 hint="The output must be the dropped-out weights (the ones returned) times value.")
    assert_close(student.scaled_dot_product_attention(q, k, v, dropout_p=0.0), torch_sdpa(q, k, v),
                 what="output with dropout_p=0.0", hint="dropout_p=0 means no dropout at all.")


@pytest.mark.exercise("2.1")
def test_sdpa_scale_zero_gives_uniform_weights(student, device):
    q, k, v = qkv(2, 2, 3, 5, 8, device, seed=16)
    out, weights = student.scaled_dot_product_attention(q, k, v, scale=0.0, return_weights=True)
    assert_close(weights, torch.full((2, 2, 3, 5), 0.2, device=device), what="weights with scale=0.0",
                 hint="scale=0.0 is a scale like any other (all scores 0, uniform weights); only None means "
                      "1/sqrt(d_head). `scale or default` mistakes 0.0 for None.")
    assert_close(out, torch_sdpa(q, k, v, scale=0.0), what="output with scale=0.0")


@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("lead", [(), (3,), (2, 3, 2)], ids=["2d", "3d", "5d"])
def test_sdpa_works_for_any_number_of_leading_dims(student, device, lead):
    q, k, v = (randn((*lead, n, 8), device, seed=17 + i) for i, n in enumerate((4, 6, 6)))
    out, weights = student.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    assert_close(out, torch_sdpa(q, k, v, is_causal=True), what=f"output for query of shape {tuple(q.shape)}",
                 hint="The sequence and feature axes are the last two, whatever comes before them: count "
                      "them from the end (a 4-D layout written into the code breaks other shapes).",
                 wrong={"attention without the causal mask (is is_causal applied?)": torch_sdpa(q, k, v)})
    assert_close(weights, torch_weights(q, k, is_causal=True), what=f"weights for query of shape {tuple(q.shape)}")


@pytest.mark.exercise("2.1")
def test_sdpa_dropout_draws_from_the_global_generator(student, device):
    in_process_only(student, "torch's global generator (the seed set here)")
    q, k, v = qkv(1, 2, 8, 8, 4, device, seed=18)
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(student.scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)[1])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2]), (
        "dropout must draw from torch's global generator: the same torch.manual_seed gives the same weights, "
        "another seed other weights (do not make a generator of your own)")


@pytest.mark.exercise("2.1")
def test_sdpa_with_dropout_p_one_drops_every_weight(student, device):
    q, k, v = qkv(1, 2, 8, 8, 4, device, seed=18)
    out, weights = student.scaled_dot_product_attention(q, k, v, dropout_p=1.0, return_weights=True)
    assert_close(weights, torch.zeros_like(weights), what="weights with dropout_p=1.0",
                 hint="dropout_p=1 zeroes every weight (no 0/0: nn.Dropout and F.dropout return zeros).")
    assert_close(out, torch.zeros_like(out), what="output with dropout_p=1.0")


@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_sdpa_half_precision_keeps_the_dtype_and_is_close_to_float32(student, device, dtype):
    # The same error budget as the GPU test below: scores rounded to the format, then weights and output.
    q, k, v = qkv(2, 2, 6, 9, 16, device, dtype=dtype, seed=19)
    mask = torch.zeros(6, 9, dtype=dtype, device=device)
    mask[:, -2:] = NEG_INF
    out, weights = student.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True, return_weights=True)
    assert out.dtype == dtype and weights.dtype == dtype, (
        f"{dtype} inputs must give {dtype} output and weights, got {out.dtype} and {weights.dtype}: compute the "
        "softmax in float32 if you like, then cast back")
    expected = torch_sdpa(q.float(), k.float(), v.float(), mask.float(), is_causal=True)
    assert_close(out.float(), expected, rtol=2**-6, atol=0.03, what=f"{dtype} causal attention with a float mask",
                 hint="Compute the softmax in float32 and cast back; check the scaling.",
                 wrong={"attention with the float mask but without the causal mask (is is_causal applied?)":
                            torch_sdpa(q.float(), k.float(), v.float(), mask.float())})


@pytest.mark.exercise("2.1")
def test_sdpa_leaves_its_inputs_unchanged(student, device):
    q, k, v = qkv(2, 2, 4, 4, 8, device, seed=20)
    float_mask = randn((2, 1, 4, 4), device, seed=21)
    bool_mask = random_bool_mask((4, 4), device, seed=22)
    for mask in (float_mask, bool_mask):
        inputs = [q, k, v, mask]
        before = [t.clone() for t in inputs]
        student.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True, scale=0.5)
        assert_unchanged(inputs, before, what=f"the caller's query, key, value or {mask.dtype} attn_mask")


# Half precision: bfloat16 keeps 8 significant bits (unit roundoff 2**-8). The scores (|s| up to about 4
# for unit-normal inputs) are rounded to bf16, an error of up to 4 * 2**-8 = 0.016 in an exponent, i.e.
# about 1.6% in a weight; the weights and the output are rounded again (2**-8 each). An output is an
# average of values of size up to about 3, so a correct bf16 kernel lands within about 0.03 of the
# float32 answer; the reference measures 0.01 and missing scaling is off by more than 2.
@pytest.mark.gpu
@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("shape", [(2, 4, 64, 64, 64), (1, 8, 128, 300, 128), (2, 2, 1, 257, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_sdpa_bfloat16_on_cuda_is_close_to_float32(student, device, shape):
    q, k, v = qkv(*shape, device, dtype=torch.bfloat16, seed=15)
    causal = shape[2] == shape[3]
    out = student.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert out.dtype == torch.bfloat16, f"bf16 inputs must give a bf16 output, got {out.dtype}"
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    assert_close(out.float(), expected, rtol=2**-6, atol=0.03, what=f"bf16 attention {shape}",
                 hint="Compute the softmax in float32 and cast back; check the scaling.")


# -- 2.2 make_attention_mask --------------------------------------------------------------------------
def hf_config(n_heads=4, n_kv_heads=2, d_model=16, head_dim=None, bias=False, implementation="sdpa"):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=d_model, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                         head_dim=head_dim or d_model // n_heads, attention_bias=bias, vocab_size=16,
                         num_hidden_layers=1, intermediate_size=2 * d_model)
    config._attn_implementation = implementation
    return config


def hf_causal_mask(attention_mask, q_len, causal=True):
    """Hugging Face's boolean mask for ``q_len`` new queries after ``kv_len - q_len`` cached tokens."""
    from transformers import DynamicCache
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    config = hf_config()
    batch, kv_len = attention_mask.shape
    embeds = torch.zeros(batch, q_len, config.hidden_size, device=attention_mask.device)
    if not causal:
        mask = create_bidirectional_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask,
                                         allow_is_bidirectional_skip=False)
        return mask.expand(batch, 1, q_len, kv_len)
    cache = None
    if kv_len > q_len:  # the earlier tokens sit in a KV cache
        cache = DynamicCache(config=config)
        past = torch.zeros(batch, config.num_key_value_heads, kv_len - q_len, 4, device=attention_mask.device)
        cache.update(past, past, 0)
    return create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask, cache=cache,
                              allow_is_causal_skip=False)


MASK_HINT = ("True where key j is a real token (attention_mask 1) and, when causal, j <= i + (kv_len - q_len): "
             "padding (batch, 1, 1, kv_len) & torch.tril(ones(q_len, kv_len), diagonal=kv_len - q_len).")


@pytest.mark.exercise("2.2")
@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_make_attention_mask_matches_hugging_face(student, device, left, causal):
    attention_mask = padding([6, 4, 1], 6, device, left=left)
    mask = student.make_attention_mask(attention_mask, 6, causal=causal)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, \
        f"make_attention_mask must return a torch.bool tensor, got {getattr(mask, 'dtype', type(mask))}"
    assert_close(mask, hf_causal_mask(attention_mask, 6, causal),
                 what=f"make_attention_mask({'left' if left else 'right'} padding, causal={causal})", hint=MASK_HINT)


@pytest.mark.exercise("2.2")
@pytest.mark.parametrize("q_len", [1, 3])
def test_make_attention_mask_aligns_queries_with_the_last_keys(student, device, q_len):
    attention_mask = padding([7, 5], 7, device, left=True)
    assert_close(student.make_attention_mask(attention_mask, q_len, causal=True), hf_causal_mask(attention_mask, q_len),
                 what=f"make_attention_mask for {q_len} new queries after {7 - q_len} cached tokens",
                 hint="The queries are the *last* q_len positions (decoding with a KV cache): bottom-right "
                      "alignment, diagonal=kv_len - q_len. The last query sees every real key.")


@pytest.mark.exercise("2.2")
def test_make_attention_mask_accepts_bool_masks_and_keeps_the_device(student, device):
    attention_mask = padding([3, 2], 4, device).bool()
    mask = student.make_attention_mask(attention_mask, 4, causal=True)
    assert_close(mask, hf_causal_mask(attention_mask.long(), 4), what="make_attention_mask of a bool attention_mask")
    assert mask.device.type == device.type, f"mask is on {mask.device}, expected {device}"


@pytest.mark.exercise("2.2")
@pytest.mark.parametrize("q_len", [1, 3, 6, 9])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_make_attention_mask_for_any_q_len(student, device, q_len, causal):
    attention_mask = padding([6, 4, 0], 6, device, left=True)  # the last row is all padding
    kv_len = 6
    keys = attention_mask.bool()[:, None, None, :]
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)  # query i sits at position i + kv - q
    allowed = (torch.arange(kv_len, device=device)[None, :] <= rows) if causal else torch.ones(
        q_len, kv_len, dtype=torch.bool, device=device)
    expected = (keys & allowed).expand(3, 1, q_len, kv_len)
    got = student.make_attention_mask(attention_mask, q_len, causal=causal)
    assert_close(got, expected, what=f"make_attention_mask(q_len={q_len}, kv_len={kv_len}, causal={causal})",
                 hint=MASK_HINT + " Without causal, every query row is the padding row; with q_len > kv_len the "
                                  "first q_len - kv_len rows are all False.")


@pytest.mark.exercise("2.2")
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool], ids=["int32", "uint8", "bool"])
def test_make_attention_mask_takes_any_integer_mask_and_leaves_it_unchanged(student, device, dtype):
    attention_mask = padding([4, 2], 4, device, left=True).to(dtype)
    before = attention_mask.clone()
    mask = student.make_attention_mask(attention_mask, 4, causal=True)
    assert_close(mask, hf_causal_mask(attention_mask.long(), 4), what=f"make_attention_mask of a {dtype} mask")
    assert_unchanged(attention_mask, before, what="the caller's attention_mask")


# -- 2.3 multi_head_attention --------------------------------------------------------------------------
def torch_mha(d_model, n_heads, device, bias=True, kv_dim=None, seed=0):
    """An ``nn.MultiheadAttention`` (batch_first, float64) with random, non-trivial weights."""
    torch.manual_seed(seed)
    layer = torch.nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True, kdim=kv_dim, vdim=kv_dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.6 / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.3))
    return layer.double().to(device).eval()


def mha_weights(layer, dtype=torch.float32):
    """The course's weights dict of an ``nn.MultiheadAttention``: in_proj split into q, k and v."""
    d = layer.embed_dim
    if layer._qkv_same_embed_dim:
        q, k, v = layer.in_proj_weight.split(d)
    else:
        q, k, v = layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight
    weights = {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "o_proj.weight": layer.out_proj.weight}
    if layer.in_proj_bias is not None:
        qb, kb, vb = layer.in_proj_bias.split(d)
        weights.update({"q_proj.bias": qb, "k_proj.bias": kb, "v_proj.bias": vb, "o_proj.bias": layer.out_proj.bias})
    return {name: w.detach().to(dtype).clone() for name, w in weights.items()}


def run_torch_mha(layer, x, context=None, attention_mask=None, attn_mask=None, dtype=torch.float32):
    """``layer``'s output and per-head weights, with the course's masks converted to torch's
    (``key_padding_mask`` and a boolean ``attn_mask`` are True where attention is *blocked*)."""
    source = x if context is None else context
    kwargs = {}
    if attention_mask is not None:  # of the attn_mask's kind (torch warns about mixing them)
        blocked = attention_mask == 0
        kwargs["key_padding_mask"] = (blocked if attn_mask is None or attn_mask.dtype == torch.bool
                                      else torch.zeros(blocked.shape, dtype=torch.float64,
                                                       device=x.device).masked_fill(blocked, NEG_INF))
    if attn_mask is not None:
        mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.double()
        if mask.ndim == 4:  # (batch, heads, q, kv) -> (batch * heads, q, kv)
            mask = mask.expand(x.shape[0], layer.num_heads, *mask.shape[2:]).reshape(-1, *mask.shape[2:])
        kwargs["attn_mask"] = mask
    with torch.no_grad():
        out, weights = layer(x.double(), source.double(), source.double(), need_weights=True,
                             average_attn_weights=False, **kwargs)
    return out.to(dtype), weights.to(dtype)


MHA_HINT = ("Split heads with view(batch, seq, n_heads, d_head).transpose(1, 2) and merge them back with the "
            "inverse steps; scale by 1/sqrt(d_head) (not d_model); apply o_proj at the end.")


@pytest.mark.exercise("2.3")
@pytest.mark.parametrize("batch, seq, d_model, n_heads, bias", [
    (2, 5, 16, 4, True), (1, 1, 8, 2, True), (3, 7, 24, 3, False), (2, 4, 16, 1, True)])
def test_multi_head_self_attention_matches_torch(student, device, batch, seq, d_model, n_heads, bias):
    layer = torch_mha(d_model, n_heads, device, bias=bias, seed=batch + seq)
    x = randn((batch, seq, d_model), device, seed=20)
    out, weights = student.multi_head_attention(mha_weights(layer), x, n_heads=n_heads, return_weights=True)
    expected_out, expected_weights = run_torch_mha(layer, x)
    assert_close(weights, expected_weights, what=f"per-head weights (batch, n_heads, q_len, kv_len), n_heads={n_heads}",
                 hint=MHA_HINT)
    assert_close(out, expected_out, what=f"multi_head_attention(batch={batch}, seq={seq}, d_model={d_model}, "
                                         f"n_heads={n_heads}, bias={bias})", hint=MHA_HINT)


@pytest.mark.exercise("2.3")
@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_multi_head_attention_ignores_padded_keys(student, device, left):
    layer = torch_mha(16, 4, device, seed=21)
    x = randn((3, 6, 16), device, seed=22)
    attention_mask = padding([6, 4, 2], 6, device, left=left)
    assert_close(student.multi_head_attention(mha_weights(layer), x, attention_mask=attention_mask, n_heads=4),
                 run_torch_mha(layer, x, attention_mask=attention_mask)[0],
                 what="multi_head_attention with padding (attention_mask: 1 = token, 0 = padding)",
                 hint="attention_mask is 1 for keys to keep (Hugging Face's convention); torch's key_padding_mask "
                      "is True for keys to drop. Block the keys where attention_mask == 0.")


@pytest.mark.exercise("2.3")
def test_multi_head_attention_causal_and_attn_masks(student, device):
    layer = torch_mha(16, 2, device, seed=23)
    x = randn((2, 5, 16), device, seed=24)
    weights = mha_weights(layer)
    causal = causal_upper_left(5, 5, device)
    assert_close(student.multi_head_attention(weights, x, is_causal=True, n_heads=2),
                 run_torch_mha(layer, x, attn_mask=causal)[0], what="multi_head_attention(is_causal=True)",
                 hint="Pass is_causal on to your scaled_dot_product_attention.")
    bool_mask = random_bool_mask((2, 2, 5, 5), device, seed=25) | torch.eye(5, dtype=torch.bool, device=device)
    attention_mask = padding([5, 3], 5, device)
    bool_mask[1, :, :, 0] = True
    assert_close(student.multi_head_attention(weights, x, attention_mask=attention_mask, attn_mask=bool_mask, n_heads=2),
                 run_torch_mha(layer, x, attention_mask=attention_mask, attn_mask=bool_mask)[0],
                 what="multi_head_attention with a per-head bool attn_mask and padding",
                 hint="A key must pass both attn_mask (True = attend) and attention_mask (1 = token).")
    float_mask = randn((5, 5), device, seed=26)
    assert_close(student.multi_head_attention(weights, x, attention_mask=attention_mask, attn_mask=float_mask,
                                              n_heads=2),
                 run_torch_mha(layer, x, attention_mask=attention_mask, attn_mask=float_mask)[0],
                 what="multi_head_attention with a float attn_mask and padding",
                 hint="Add the float mask to the scores, and block padded keys with -inf on top of it.")


@pytest.mark.exercise("2.3")
def test_multi_head_cross_attention_matches_torch(student, device):
    layer = torch_mha(16, 4, device, kv_dim=12, seed=27)
    x, context = randn((2, 3, 16), device, seed=28), randn((2, 7, 12), device, seed=29)
    attention_mask = padding([7, 5], 7, device)
    out, weights = student.multi_head_attention(mha_weights(layer), x, context, attention_mask=attention_mask,
                                                n_heads=4, return_weights=True)
    expected_out, expected_weights = run_torch_mha(layer, x, context, attention_mask=attention_mask)
    hint = "Cross-attention: queries from x, keys *and values* from context (attention_mask pads context)."
    assert_close(weights, expected_weights, what="cross-attention weights (batch, n_heads, q_len, kv_len)", hint=hint)
    assert_close(out, expected_out, what="cross-attention output", hint=hint)


@pytest.mark.exercise("2.3")
def test_multi_head_attention_float64(student, device):
    layer = torch_mha(12, 3, device, seed=30)
    x = randn((2, 4, 12), device, dtype=torch.float64, seed=31)
    assert_close(student.multi_head_attention(mha_weights(layer, torch.float64), x, is_causal=True, n_heads=3),
                 run_torch_mha(layer, x, attn_mask=causal_upper_left(4, 4, device), dtype=torch.float64)[0],
                 what="multi_head_attention in float64", hint="Keep the input's dtype.")


def written_out_attention(weights, x, context=None, attn_mask=None, is_causal=False, *, n_heads, n_kv_heads=None):
    """(output, per-head weights) of multi-head or grouped-query attention written out with torch's SDPA
    in float64, for weights that ``nn.MultiheadAttention`` cannot hold (some biases missing,
    ``n_heads * d_head != d_model``, fewer key/value heads)."""
    source = x if context is None else context
    n_kv_heads = n_kv_heads or n_heads
    w = {k: t.double() for k, t in weights.items()}

    def heads(t, name, n):  # (batch, seq, n * d_head) -> (batch, n_heads, seq, d_head), kv heads repeated
        y = F.linear(t.double(), w[f"{name}.weight"], w.get(f"{name}.bias"))
        return y.view(*y.shape[:2], n, -1).transpose(1, 2).repeat_interleave(n_heads // n, dim=1)

    q, k, v = heads(x, "q_proj", n_heads), heads(source, "k_proj", n_kv_heads), heads(source, "v_proj", n_kv_heads)
    out = torch_sdpa(q, k, v, attn_mask, is_causal).transpose(1, 2).reshape(*x.shape[:2], -1)
    out = F.linear(out, w["o_proj.weight"], w.get("o_proj.bias"))
    return out.to(x.dtype), torch_weights(q, k, attn_mask, is_causal).to(x.dtype)


def random_weights(shapes: dict, device, seed=0):
    return {name: randn(shape, device, seed=seed + i, std=0.6 / math.sqrt(shape[-1]) if len(shape) == 2 else 0.3)
            for i, (name, shape) in enumerate(shapes.items())}


@pytest.mark.exercise("2.3")
def test_multi_head_attention_with_some_biases_and_heads_narrower_than_d_model(student, device):
    # 3 heads of d_head 4 (12 features) on d_model 10; only q_proj and o_proj have a bias.
    weights = random_weights({"q_proj.weight": (12, 10), "k_proj.weight": (12, 10), "v_proj.weight": (12, 10),
                              "o_proj.weight": (10, 12), "q_proj.bias": (12,), "o_proj.bias": (10,)}, device, seed=32)
    x = randn((2, 5, 10), device, seed=33)
    assert_close(student.multi_head_attention(weights, x, is_causal=True, n_heads=3),
                 written_out_attention(weights, x, is_causal=True, n_heads=3)[0],
                 what="multi_head_attention with q/o biases only and n_heads * d_head != d_model",
                 hint="Each projection uses its own bias if it has one; d_head = q_proj.weight.shape[0] // n_heads "
                      "(here 4, not d_model // n_heads), and the scale is 1/sqrt(d_head).")


@pytest.mark.exercise("2.3")
@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_multi_head_attention_causal_with_padding(student, device, left):
    layer = torch_mha(16, 4, device, seed=34)
    x = randn((3, 5, 16), device, seed=35)
    attention_mask = padding([5, 3, 2], 5, device, left=left)
    got = student.multi_head_attention(mha_weights(layer), x, attention_mask=attention_mask, is_causal=True, n_heads=4)
    expected, _ = written_out_attention(mha_weights(layer), x, attn_mask=attention_mask.bool()[:, None, None, :],
                                        is_causal=True, n_heads=4)
    if left:  # a left-padding query sees no key at all: zero attention, o_proj's bias
        expected[1, :2] = expected[2, :3] = layer.out_proj.bias.detach().float()
    assert_close(got, expected, what=f"multi_head_attention(is_causal=True) with {'left' if left else 'right'} "
                 "padding", hint="A key must pass causality *and* padding: keep is_causal when attention_mask is "
                                 "given; a query that sees no key gets a zero attention output.")


@pytest.mark.exercise("2.3")
def test_multi_head_cross_attention_is_causal_top_left(student, device):
    layer = torch_mha(16, 2, device, kv_dim=12, seed=36)
    x, context = randn((2, 3, 16), device, seed=37), randn((2, 5, 12), device, seed=38)
    assert_close(student.multi_head_attention(mha_weights(layer), x, context, is_causal=True, n_heads=2),
                 run_torch_mha(layer, x, context, attn_mask=causal_upper_left(3, 5, device))[0],
                 what="cross-attention with is_causal=True (q_len 3, kv_len 5)",
                 hint="is_causal means what it means for scaled_dot_product_attention: top-left aligned.")


@pytest.mark.exercise("2.3")
def test_multi_head_attention_applies_attention_dropout(student, device):
    layer = torch_mha(16, 4, device, seed=39)
    weights, x = mha_weights(layer), randn((2, 16, 16), device, seed=40)
    torch.manual_seed(0)
    out, attn = student.multi_head_attention(weights, x, dropout_p=0.4, return_weights=True, n_heads=4)
    fraction = (attn == 0).float().mean().item()
    # 2048 weights: the zero fraction's standard deviation is sqrt(0.4 * 0.6 / 2048) = 0.011.
    assert abs(fraction - 0.4) < 0.06, (f"with dropout_p=0.4, {fraction:.3f} of the attention weights are zero: "
                                        "pass dropout_p on to scaled_dot_product_attention")
    v = F.linear(x, weights["v_proj.weight"], weights["v_proj.bias"]).view(2, 16, 4, 4).transpose(1, 2)
    expected = F.linear((attn @ v).transpose(1, 2).reshape(2, 16, 16), weights["o_proj.weight"], weights["o_proj.bias"])
    assert_close(out, expected, what="output with attention dropout",
                 hint="The output must use the dropped-out weights that are returned.")


@pytest.mark.exercise("2.3")
def test_multi_head_attention_leaves_its_weights_and_inputs_unchanged(student, device):
    layer = torch_mha(16, 4, device, kv_dim=12, seed=41)
    weights, x, context = mha_weights(layer), randn((2, 3, 16), device, seed=42), randn((2, 5, 12), device, seed=43)
    attention_mask, attn_mask = padding([5, 4], 5, device), randn((3, 5), device, seed=44)
    inputs = [weights, x, context, attention_mask, attn_mask]
    before = [{k: t.clone() for k, t in weights.items()}, *(t.clone() for t in inputs[1:])]
    student.multi_head_attention(weights, x, context, attention_mask, attn_mask, is_causal=True, n_heads=4)
    assert_unchanged(inputs, before, what="the caller's weights, x, context or masks")


# -- 2.4 repeat_kv and 2.5 grouped_query_attention -------------------------------------------------------
@pytest.mark.exercise("2.4")
@pytest.mark.parametrize("n_kv_heads, n_rep", [(2, 3), (1, 4), (4, 1), (3, 2)])
def test_repeat_kv_matches_llama(student, device, n_kv_heads, n_rep):
    from transformers.models.llama.modeling_llama import repeat_kv as llama_repeat_kv

    x = randn((2, n_kv_heads, 5, 4), device, seed=n_kv_heads * 10 + n_rep)
    assert_close(student.repeat_kv(x, n_rep), llama_repeat_kv(x, n_rep),
                 what=f"repeat_kv(x with {n_kv_heads} kv heads, n_rep={n_rep})",
                 hint="Copies of one head must be adjacent ([k0, k0, k1, k1], like torch.repeat_interleave(x, n_rep, "
                      "dim=1)); x.repeat(1, n_rep, 1, 1) gives [k0, k1, k0, k1].")


@pytest.mark.exercise("2.4")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, torch.int64], ids=["bfloat16", "float64", "int64"])
def test_repeat_kv_keeps_the_dtype_and_leaves_x_unchanged(student, device, dtype):
    x = (randn((2, 3, 4, 2), device, seed=45) * 100).to(dtype)
    before = x.clone()
    got = student.repeat_kv(x, 2)
    assert_close(got, x.repeat_interleave(2, dim=1), what=f"repeat_kv of a {dtype} tensor",
                 hint="Keep x's dtype and device (build the result from x, not from torch.empty(...) defaults).")
    assert_unchanged(x, before, what="the caller's x (an in-place unsqueeze_ changes its shape)")


def llama_attention(n_heads, n_kv_heads, d_model, device, head_dim=None, bias=False, seed=0, implementation="sdpa"):
    """A Hugging Face ``LlamaAttention`` (float64, eval) from a tiny config, with random weights."""
    from transformers.models.llama.modeling_llama import LlamaAttention

    config = hf_config(n_heads, n_kv_heads, d_model, head_dim, bias, implementation)
    torch.manual_seed(seed)
    layer = LlamaAttention(config, layer_idx=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.6 / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.3))
    return layer.double().to(device).eval()


def run_llama(layer, x, attention_mask=None, dtype=torch.float32):
    """Llama's attention output with rotary embeddings switched off (cos = 1, sin = 0 is the identity)."""
    batch, seq, _ = x.shape
    cos = torch.ones(batch, seq, layer.head_dim, dtype=torch.float64, device=x.device)
    mask = None
    if attention_mask is not None:
        from transformers.masking_utils import create_causal_mask

        mask = create_causal_mask(config=layer.config, inputs_embeds=x.double(), attention_mask=attention_mask,
                                  cache=None, allow_is_causal_skip=False)
    with torch.no_grad():
        out, _ = layer(x.double(), (cos, torch.zeros_like(cos)), mask)
    return out.to(dtype)


def llama_weights(layer, dtype=torch.float32):
    return {name: p.detach().to(dtype).clone() for name, p in layer.named_parameters()}


GQA_HINT = ("Query head h must read key/value head h // (n_heads // n_kv_heads): expand k and v with repeat_kv "
            "(adjacent copies) before attention; split heads with view(batch, seq, heads, d_head).transpose(1, 2).")


@pytest.mark.exercise("2.5")
@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 2), (4, 1), (4, 4), (6, 3)], ids=["gqa", "mqa", "mha", "gqa6"])
def test_grouped_query_attention_matches_llama(student, device, n_heads, n_kv_heads):
    layer = llama_attention(n_heads, n_kv_heads, 24, device, seed=n_heads + n_kv_heads)
    x = randn((2, 6, 24), device, seed=40)
    assert_close(student.grouped_query_attention(llama_weights(layer), x, n_heads=n_heads, n_kv_heads=n_kv_heads),
                 run_llama(layer, x), what=f"grouped_query_attention(n_heads={n_heads}, n_kv_heads={n_kv_heads})",
                 hint=GQA_HINT + " It is causal by default.")


@pytest.mark.exercise("2.5")
@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_grouped_query_attention_with_padding_matches_llama_on_real_tokens(student, device, left):
    layer = llama_attention(4, 2, 16, device, bias=True, seed=41)
    x = randn((3, 5, 16), device, seed=42)
    attention_mask = padding([5, 3, 1], 5, device, left=left)
    out = student.grouped_query_attention(llama_weights(layer), x, attention_mask, n_heads=4, n_kv_heads=2)
    real = attention_mask.bool()[..., None]
    expected = run_llama(layer, x, attention_mask)
    assert_close(torch.where(real, out, 0.0), torch.where(real, expected, 0.0),
                 what=f"grouped_query_attention with {'left' if left else 'right'} padding (rows of real tokens)",
                 hint="Combine padding and causality with make_attention_mask.")


@pytest.mark.exercise("2.5")
def test_grouped_query_attention_padding_queries_that_see_nothing_give_the_output_bias(student, device):
    layer = llama_attention(4, 2, 16, device, bias=True, seed=43)
    x = randn((2, 4, 16), device, seed=44)
    attention_mask = padding([4, 2], 4, device, left=True)
    out = student.grouped_query_attention(llama_weights(layer), x, attention_mask, n_heads=4, n_kv_heads=2)
    bias = layer.o_proj.bias.detach().float()
    assert_close(out[1, :2], bias.expand(2, 16),
                 what="output of left-padding queries (their causal, padded row is fully masked)",
                 hint="A query that may attend to no key gets a zero attention output, so o_proj returns its bias; "
                      "NaN here means the softmax of an all -inf row was not handled.")


@pytest.mark.exercise("2.5")
@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "padding"])
def test_grouped_query_attention_without_causality_and_its_weights(student, device, padded):
    layer = llama_attention(4, 2, 16, device, bias=True, seed=46)
    x = randn((2, 5, 16), device, seed=47)
    attention_mask = padding([5, 3], 5, device) if padded else None
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    expected_out, expected_weights = written_out_attention(llama_weights(layer), x, attn_mask=mask, n_heads=4,
                                                           n_kv_heads=2)
    out, weights = student.grouped_query_attention(llama_weights(layer), x, attention_mask, is_causal=False,
                                                   return_weights=True, n_heads=4, n_kv_heads=2)
    what = f"grouped_query_attention(is_causal=False{', with padding' if padded else ''})"
    assert_close(weights, expected_weights, what=f"per-head weights (batch, n_heads, seq, seq) of {what}",
                 hint="One row of weights per query head (not averaged over heads); is_causal=False is "
                      "bidirectional: pass causal=is_causal to make_attention_mask.")
    assert_close(out, expected_out, what=what)


@pytest.mark.exercise("2.5")
def test_grouped_query_attention_with_heads_wider_than_d_model_over_n_heads(student, device):
    layer = llama_attention(4, 2, 24, device, head_dim=8, seed=48)  # 4 heads of 8 features on d_model 24
    x = randn((2, 5, 24), device, seed=49)
    assert_close(student.grouped_query_attention(llama_weights(layer), x, n_heads=4, n_kv_heads=2), run_llama(layer, x),
                 what="grouped_query_attention with head_dim 8 != d_model // n_heads = 6",
                 hint="d_head = q_proj.weight.shape[0] // n_heads, and the scale is 1/sqrt(d_head).")


@pytest.mark.exercise("2.5")
def test_grouped_query_attention_leaves_its_weights_and_inputs_unchanged(student, device):
    layer = llama_attention(4, 2, 16, device, bias=True, seed=50)
    weights, x, attention_mask = llama_weights(layer), randn((2, 5, 16), device, seed=51), padding([5, 3], 5, device)
    inputs = [weights, x, attention_mask]
    before = [{k: t.clone() for k, t in weights.items()}, x.clone(), attention_mask.clone()]
    student.grouped_query_attention(weights, x, attention_mask, n_heads=4, n_kv_heads=2)
    assert_unchanged(inputs, before, what="the caller's weights, x or attention_mask")


# -- not graded: the layers and the helpers built on the exercises (need the reference solutions) -------
@pytest.fixture
def solution_mode(monkeypatch):
    pytest.importorskip("solutions.attention", reason="needs the reference solutions")
    from course_lib import exercises

    monkeypatch.setenv(exercises.MODE_ENV, "solution")
    monkeypatch.setenv(exercises.STUDENT_MODULES_ENV, "")


def test_multi_head_attention_layer_copies_torch_and_drops_out_only_in_training(solution_mode):
    from course_lib.attention import MultiHeadAttention

    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True, kdim=8, vdim=8, dropout=0.5).eval()
    layer = MultiHeadAttention.from_torch(reference).eval()
    x, context = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    assert torch.allclose(layer(x, context), reference(x, context, context)[0], atol=1e-6)
    layer.train()
    assert not torch.allclose(layer(x, context), reference(x, context, context, need_weights=False)[0], atol=1e-6)
    out = layer(x, context)
    out.sum().backward()
    assert all(p.grad is not None for p in layer.parameters()), "gradients reach every projection"


def test_grouped_query_attention_layer_loads_a_llama_state_dict(solution_mode):
    from course_lib.attention import GroupedQueryAttention

    reference = llama_attention(4, 2, 16, torch.device("cpu"), head_dim=8, seed=1)
    layer = GroupedQueryAttention(16, 4, 2, d_head=8).double()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert torch.allclose(layer(x), run_llama(reference, x, dtype=torch.float64), atol=1e-10)
    assert layer.kv_cache_bytes(batch=1, seq_len=10) == 2 * 10 * 2 * 8 * 2


def test_cost_helpers():
    from course_lib import attention as A

    assert A.attention_memory_bytes(2, 4, 128, 256) == 2 * 4 * 128 * 256 * 4
    assert A.attention_memory_bytes(1, 1, 10, 10, torch.bfloat16) == 200
    assert A.attention_flops(1, 2, 3, 4, 5) == 4 * 2 * 3 * 4 * 5
    mha = A.kv_cache_bytes(32, 1, 4096, 32, 128)
    assert mha == 2 * 32 * 4096 * 32 * 128 * 2 == 2 * 2**30  # Llama-2-7B-sized: 2 GiB per 4k-token sequence
    assert mha == 4 * A.kv_cache_bytes(32, 1, 4096, 8, 128) == 32 * A.kv_cache_bytes(32, 1, 4096, 1, 128)


def test_plot_attention_draws_a_labelled_map():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib.attention import plot_attention

    weights = torch.softmax(torch.randn(1, 1, 3, 4), dim=-1)
    ax = plot_attention(weights, ["a", "b", "c"], ["w", "x", "y", "z"], title="head 0")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    assert ax.get_title() == "head 0" and len(ax.texts) == 12
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="tokens_k"):
        plot_attention(weights, ["a", "b", "c"], ["w"])


# -- not graded: bad input gets an error naming the argument (checked before your code runs) --------
def _bad_calls():
    from course_lib import attention as A

    q = torch.zeros(1, 2, 3, 4)
    w = {"q_proj.weight": torch.zeros(8, 8), "k_proj.weight": torch.zeros(8, 8), "v_proj.weight": torch.zeros(8, 8),
         "o_proj.weight": torch.zeros(8, 8)}
    x = torch.zeros(2, 3, 8)
    gw = {"q_proj.weight": torch.zeros(8, 8), "k_proj.weight": torch.zeros(4, 8), "v_proj.weight": torch.zeros(4, 8),
          "o_proj.weight": torch.zeros(8, 8)}
    return [
        (lambda: A.scaled_dot_product_attention(q.tolist(), q, q), TypeError, "query"),
        (lambda: A.scaled_dot_product_attention(q, q.long(), q), TypeError, "key"),
        (lambda: A.scaled_dot_product_attention(q, torch.zeros(1, 2, 3, 5), q), ValueError, "key"),
        (lambda: A.scaled_dot_product_attention(q, q, torch.zeros(1, 2, 4, 4)), ValueError, "value"),
        (lambda: A.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 4, dtype=torch.bool)), ValueError,
         "attn_mask"),
        (lambda: A.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.long)), TypeError,
         "attn_mask"),
        (lambda: A.scaled_dot_product_attention(q, q, q, dropout_p=1.5), ValueError, "dropout_p"),
        (lambda: A.scaled_dot_product_attention(q, q, q, is_causal=1), TypeError, "is_causal"),
        (lambda: A.make_attention_mask(torch.ones(3), 3), ValueError, "attention_mask"),
        (lambda: A.make_attention_mask(torch.full((1, 3), 2), 3), ValueError, "attention_mask"),
        (lambda: A.make_attention_mask(torch.ones(1, 3), 3), TypeError, "attention_mask"),
        (lambda: A.make_attention_mask(torch.ones(1, 3, dtype=torch.long), 0), ValueError, "q_len"),
        (lambda: A.multi_head_attention(w, x, n_heads=3), ValueError, "n_heads"),
        (lambda: A.multi_head_attention({**w, "bias": torch.zeros(8)}, x, n_heads=2), ValueError, "weights"),
        (lambda: A.multi_head_attention({k: v for k, v in w.items() if k != "o_proj.weight"}, x, n_heads=2), ValueError,
         "o_proj"),
        (lambda: A.multi_head_attention(w, x, torch.zeros(2, 5, 6), n_heads=2), ValueError, "k_proj"),
        (lambda: A.multi_head_attention(w, x, attention_mask=torch.ones(2, 4, dtype=torch.long), n_heads=2),
         ValueError, "attention_mask"),
        (lambda: A.multi_head_attention(w, x.double(), n_heads=2), TypeError, "weights"),
        (lambda: A.repeat_kv(torch.zeros(2, 3, 4), 2), ValueError, "x"),
        (lambda: A.repeat_kv(torch.zeros(1, 2, 3, 4), 0), ValueError, "n_rep"),
        (lambda: A.grouped_query_attention(gw, x, n_heads=4, n_kv_heads=3), ValueError, "n_kv_heads"),
        (lambda: A.grouped_query_attention(gw, x, n_heads=4, n_kv_heads=4), ValueError, "k_proj"),
        (lambda: A.MultiHeadAttention(10, 3), ValueError, "d_model"),
        (lambda: A.GroupedQueryAttention(16, 4, 3), ValueError, "n_kv_heads"),
        (lambda: A.kv_cache_bytes(1, 1, 0, 1, 1), ValueError, "seq_len"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_gets_an_error_naming_the_argument(index):
    call, error, names = _bad_calls()[index]
    with pytest.raises(error, match=names):
        call()
