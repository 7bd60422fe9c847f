"""Chapter 2 graded tests (hidden: grading only, not in the student handout)."""

import pytest
import torch

from grading.expect import assert_close
from tests.test_attention import (NEG_INF, causal_upper_left, hf_causal_mask, llama_attention, llama_weights,
                                  mha_weights, padding, qkv, randn, random_bool_mask, run_llama, run_torch_mha,
                                  torch_mha, torch_sdpa, torch_weights)


# -- 2.1 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [50, 51, 52])
def test_hidden_sdpa_random_shapes_masks_and_dtypes(student, device, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    batch, heads, q_len, kv_len = torch.randint(1, 6, (4,), generator=gen).tolist()
    d_head = [4, 8, 16, 64][seed % 4]
    q, k, v = qkv(batch, heads, q_len, kv_len, d_head, device, dtype=dtype, seed=seed)
    mask = random_bool_mask((batch, 1, q_len, kv_len), device, seed=seed)
    mask[..., -1] = True
    for causal in (False, True):
        assert_close(student.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal),
                     torch_sdpa(q, k, v, mask & causal_upper_left(q_len, kv_len, device) if causal else mask)
                     .nan_to_num(0.0),
                     what=f"attention {(batch, heads, q_len, kv_len, d_head)} {dtype}, causal={causal}")


@pytest.mark.exercise("2.1")
def test_hidden_sdpa_three_dim_inputs_and_large_scores(student, device):
    q, k, v = (randn((3, n, 16), device, seed=60 + i, std=6.0) for i, n in enumerate((4, 9, 9)))
    out, weights = student.scaled_dot_product_attention(q, k, v, return_weights=True)
    assert_close(out, torch_sdpa(q, k, v), what="attention of (batch, seq, d) inputs with scores near 100",
                 hint="Any number of leading dims; the softmax must not overflow.")
    assert_close(weights, torch_weights(q, k), what="weights of (batch, seq, d) inputs")


@pytest.mark.exercise("2.1")
def test_hidden_sdpa_float_mask_with_whole_rows_and_columns_blocked(student, device):
    q, k, v = qkv(1, 2, 5, 6, 8, device, seed=61)
    mask = randn((2, 5, 6), device, seed=62)
    mask[:, 2] = NEG_INF          # query 2 sees nothing
    mask[:, :, 4] = NEG_INF       # key 4 is never seen
    out, weights = student.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    expected = torch_sdpa(q, k, v, mask)
    expected[:, :, 2] = 0.0
    assert_close(out, expected, what="float mask with a fully blocked row and column")
    assert_close(weights, torch_weights(q, k, mask).nan_to_num(0.0), what="weights with a fully blocked row")


@pytest.mark.exercise("2.1")
def test_hidden_sdpa_one_key_and_one_query(student, device):
    q, k, v = qkv(4, 3, 1, 1, 2, device, seed=63)
    out, weights = student.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    assert_close(weights, torch.ones(4, 3, 1, 1, device=device), what="weights with one key (all 1)")
    assert_close(out, v, what="output with one key (the value itself)")


@pytest.mark.exercise("2.1")
def test_hidden_sdpa_dropout_keeps_the_expected_output_unbiased(student, device):
    q, k, v = qkv(1, 2, 16, 16, 8, device, seed=64)
    copies = 2000  # one call, 2000 independent dropout draws of the same attention
    runs = student.scaled_dot_product_attention(*(t.expand(copies, -1, -1, -1) for t in (q, k, v)), dropout_p=0.5)
    # Each output entry has a standard deviation of at most 1.06 over draws here, so its mean over
    # 2000 draws has a standard error below 0.024; 0.15 is six of them (for the worst of 256 entries).
    assert_close(runs.mean(0, keepdim=True), torch_sdpa(q, k, v), rtol=0.0, atol=0.15,
                 what="mean output over 2000 dropout draws",
                 hint="Rescale the kept weights by 1 / (1 - dropout_p) so the expected output is unchanged.")
    assert runs.std(0).mean() > 0.01, "dropout_p=0.5 must make the output random"


@pytest.mark.gpu
@pytest.mark.exercise("2.1")
def test_hidden_sdpa_bfloat16_with_masks_on_cuda(student, device):
    q, k, v = qkv(2, 4, 33, 77, 64, device, dtype=torch.bfloat16, seed=65)
    mask = random_bool_mask((2, 1, 33, 77), device, seed=66)
    mask[..., 0] = True
    out = student.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected = torch_sdpa(q.float(), k.float(), v.float(), mask)
    assert_close(out.float(), expected, rtol=2**-6, atol=0.03, what="bf16 attention with a bool mask on CUDA")


# -- 2.2 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.2")
@pytest.mark.parametrize("seed", [70, 71])
def test_hidden_make_attention_mask_random_padding_and_cache_lengths(student, device, seed):
    gen = torch.Generator().manual_seed(seed)
    kv_len = 9
    lengths = torch.randint(1, kv_len + 1, (4,), generator=gen).tolist()
    attention_mask = padding(lengths, kv_len, device, left=seed % 2 == 0)
    for q_len in (1, 4, 9):
        for causal in (True, False):
            assert_close(student.make_attention_mask(attention_mask, q_len, causal=causal),
                         hf_causal_mask(attention_mask, q_len, causal),
                         what=f"make_attention_mask(lengths {lengths}, q_len={q_len}, causal={causal})")


@pytest.mark.exercise("2.2")
def test_hidden_make_attention_mask_more_queries_than_keys(student, device):
    attention_mask = padding([3, 2], 3, device)
    expected = torch.zeros(2, 1, 5, 3, dtype=torch.bool, device=device)
    for i in range(5):
        for j in range(3):
            expected[:, 0, i, j] = (j <= i + 3 - 5) & attention_mask[:, j].bool()
    assert_close(student.make_attention_mask(attention_mask, 5, causal=True), expected,
                 what="make_attention_mask with q_len=5 > kv_len=3 (the first two rows see nothing)")


@pytest.mark.exercise("2.2")
def test_hidden_make_attention_mask_without_padding_is_the_causal_triangle(student, device):
    from torch.nn.attention.bias import causal_lower_right

    attention_mask = torch.ones(2, 6, dtype=torch.long, device=device)
    expected = causal_lower_right(2, 6)._materialize(device).expand(2, 1, 2, 6)
    assert_close(student.make_attention_mask(attention_mask, 2, causal=True), expected,
                 what="make_attention_mask without padding (torch's causal_lower_right)")


# -- 2.3 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.3")
@pytest.mark.parametrize("seed", [80, 81])
def test_hidden_multi_head_cross_attention_random(student, device, seed):
    gen = torch.Generator().manual_seed(seed)
    batch, q_len, kv_len = torch.randint(1, 5, (3,), generator=gen).tolist()
    n_heads, kv_dim = [(2, 6), (4, 20)][seed % 2]
    layer = torch_mha(16, n_heads, device, kv_dim=kv_dim, bias=seed % 2 == 0, seed=seed)
    x, context = randn((batch, q_len, 16), device, seed=seed), randn((batch, kv_len, kv_dim), device, seed=seed + 1)
    attention_mask = padding(torch.randint(1, kv_len + 1, (batch,), generator=gen).tolist(), kv_len, device, left=True)
    out, weights = student.multi_head_attention(mha_weights(layer), x, context, attention_mask=attention_mask,
                                                n_heads=n_heads, return_weights=True)
    expected_out, expected_weights = run_torch_mha(layer, x, context, attention_mask=attention_mask)
    assert_close(out, expected_out, what=f"cross-attention (seed {seed})")
    assert_close(weights, expected_weights, what=f"cross-attention weights (seed {seed})")


@pytest.mark.exercise("2.3")
def test_hidden_multi_head_attention_padded_causal_self_attention(student, device):
    layer = torch_mha(32, 8, device, seed=82)
    x = randn((3, 7, 32), device, seed=83)
    attention_mask = padding([7, 5, 2], 7, device)  # right padding: every query keeps a real key
    assert_close(student.multi_head_attention(mha_weights(layer), x, attention_mask=attention_mask, is_causal=True,
                                              n_heads=8),
                 run_torch_mha(layer, x, attention_mask=attention_mask, attn_mask=causal_upper_left(7, 7, device))[0],
                 what="causal self-attention with right padding, 8 heads")


@pytest.mark.exercise("2.3")
def test_hidden_multi_head_attention_rectangular_causal_cross_mask(student, device):
    layer = torch_mha(12, 3, device, seed=84)
    x, context = randn((2, 4, 12), device, seed=85), randn((2, 6, 12), device, seed=86)
    assert_close(student.multi_head_attention(mha_weights(layer), x, context, is_causal=True, n_heads=3),
                 run_torch_mha(layer, x, context, attn_mask=causal_upper_left(4, 6, device))[0],
                 what="is_causal with q_len=4, kv_len=6 (top-left aligned, as scaled_dot_product_attention)")


# -- 2.4 and 2.5 ------------------------------------------------------------------------------------------
@pytest.mark.exercise("2.4")
def test_hidden_repeat_kv_keeps_dtype_and_matches_repeat_interleave(student, device):
    x = randn((3, 2, 4, 5), device, dtype=torch.float64, seed=90)
    for n_rep in (1, 2, 5):
        assert_close(student.repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1),
                     what=f"repeat_kv(float64, n_rep={n_rep})")


@pytest.mark.exercise("2.5")
@pytest.mark.parametrize("n_heads, n_kv_heads, head_dim, bias", [(8, 2, 4, True), (8, 1, 6, False), (4, 2, 16, True)])
def test_hidden_grouped_query_attention_llama_shapes_with_padding(student, device, n_heads, n_kv_heads, head_dim, bias):
    layer = llama_attention(n_heads, n_kv_heads, 32, device, head_dim=head_dim, bias=bias, seed=n_heads * head_dim)
    x = randn((3, 7, 32), device, seed=91)
    attention_mask = padding([7, 6, 3], 7, device, left=True)
    out = student.grouped_query_attention(llama_weights(layer), x, attention_mask, n_heads=n_heads,
                                          n_kv_heads=n_kv_heads)
    real = attention_mask.bool()[..., None]
    assert_close(torch.where(real, out, 0.0), torch.where(real, run_llama(layer, x, attention_mask), 0.0),
                 what=f"grouped_query_attention(n_heads={n_heads}, n_kv_heads={n_kv_heads}, head_dim={head_dim}) "
                      "with left padding")


@pytest.mark.exercise("2.5")
def test_hidden_grouped_query_attention_weights_and_eager_llama(student, device):
    layer = llama_attention(4, 2, 16, device, seed=92, implementation="eager")
    x = randn((2, 5, 16), device, seed=93)
    attention_mask = padding([5, 4], 5, device)
    out, weights = student.grouped_query_attention(llama_weights(layer), x, attention_mask, n_heads=4, n_kv_heads=2,
                                                   return_weights=True)
    real = attention_mask.bool()[..., None]
    assert_close(torch.where(real, out, 0.0), torch.where(real, run_llama(layer, x, attention_mask), 0.0),
                 what="grouped_query_attention against Llama's eager attention")
    assert tuple(weights.shape) == (2, 4, 5, 5), f"weights shape {tuple(weights.shape)}, expected (2, 4, 5, 5)"
    assert_close(weights.triu(1), torch.zeros_like(weights), what="weights above the diagonal (the future)")


@pytest.mark.exercise("2.5")
def test_hidden_grouped_query_attention_float64_not_causal(student, device):
    layer = llama_attention(4, 2, 16, device, seed=94)
    x = randn((2, 3, 16), device, dtype=torch.float64, seed=95)
    kv = llama_weights(layer, torch.float64)
    out = student.grouped_query_attention(kv, x, is_causal=False, n_heads=4, n_kv_heads=2)
    # Bidirectional Llama attention: an all-True 4-D mask makes it attend everywhere.
    with torch.no_grad():
        cos = torch.ones(2, 3, layer.head_dim, dtype=torch.float64, device=device)
        expected, _ = layer(x, (cos, torch.zeros_like(cos)), torch.ones(2, 1, 3, 3, dtype=torch.bool, device=device))
    assert_close(out, expected, what="grouped_query_attention(is_causal=False) in float64")
