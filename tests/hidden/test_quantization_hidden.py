"""Chapter 11 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close
from tests.test_quantization import (assert_gptq_equal, assert_same_bytes, assert_same_values, auto_gptq_hessian,
                                     auto_gptq_quantize, autoawq_search, correlated_inputs, gguf_bytes, gguf_values,
                                     outlier_inputs, q4_k_rule, random_blocks, random_q4_k_blocks, random_weight,
                                     weights)


from tests.test_quantization import (activations, awq_buffers, awq_codes, awq_quantize, bnb_linear8bit,  # noqa: E402
                                     llm_int8_written_out, randn, weight_like)


@pytest.mark.exercise("11.1")
@pytest.mark.parametrize("bits, granularity, group_size", [(5, "group", 4), (6, "channel", 128), (7, "tensor", 128),
                                                           (8, "group", 128)])
def test_hidden_absmax_quantize_of_other_shapes(student, bits, granularity, group_size):
    x = weight_like(bits + 60, 3, 256) * 30
    q, scale = student.absmax_quantize(x, bits=bits, granularity=granularity, group_size=group_size)
    w_q, awq_scales, _ = awq_quantize(x, bits, granularity, group_size, zero_point=False)
    assert torch.equal(q, awq_codes(w_q, awq_scales).to(torch.int8))
    live = awq_scales > 1.0001e-5 / (2 ** (bits - 1) - 1)
    assert_close(scale[live], awq_scales[live], what="scale")
    assert bool((scale[~live] == 0).all()), "an all-zero group has scale 0"


@pytest.mark.exercise("11.2")
@pytest.mark.parametrize("bits, granularity, group_size", [(2, "channel", 128), (4, "group", 2), (8, "tensor", 128)])
def test_hidden_zero_point_quantize_of_shifted_weights(student, bits, granularity, group_size):
    x = weight_like(bits + 70, 5, 32) + torch.linspace(-0.3, 0.3, 5)[:, None]     # rows off centre
    q, scale, zero = student.zero_point_quantize(x, bits=bits, granularity=granularity, group_size=group_size)
    w_q, awq_scales, awq_zeros = awq_quantize(x, bits, granularity, group_size)
    assert torch.equal(zero, awq_zeros.to(torch.uint8)) and torch.equal(q, awq_codes(w_q, awq_scales, awq_zeros).to(torch.uint8))
    assert_close(scale, awq_scales, what="scale")


@pytest.mark.exercise("11.3")
def test_hidden_dequantize_of_8_bit_groups(student):
    x = weight_like(80, 4, 64)
    w_q, scales, zeros = awq_quantize(x, 8, "group", 8)
    got = student.dequantize(awq_codes(w_q, scales, zeros).to(torch.uint8), scales, zeros.to(torch.uint8))
    assert_close(got, w_q, what="dequantize of 8-bit groups of 8")


@pytest.mark.exercise("11.4")
@pytest.mark.parametrize("dtype, threshold", [(torch.float16, 1.5), (torch.float32, 4.0), (torch.bfloat16, 0.0)], ids=str)
def test_hidden_int8_vectorwise_quant_of_many_outliers(student, dtype, threshold):
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    x = activations(90, 17, 96, dtype, outliers=(0, 1, 50, 95))
    q, row_stats, cols = student.int8_vectorwise_quant(x, threshold=threshold)
    expected = bnb_functional.int8_vectorwise_quant(x.clone(), threshold)
    assert torch.equal(q, expected[0]) and torch.equal(row_stats, expected[1])
    assert torch.equal(cols, torch.empty(0, dtype=torch.int64) if expected[2] is None else expected[2])


@pytest.mark.exercise("11.5")
@pytest.mark.parametrize("threshold", [6.0, 3.0, 0.0])
def test_hidden_int8_linear_of_a_batch_of_sequences(student, threshold):
    x = activations(91, 12, 128, torch.float16, outliers=(3, 64, 100)).reshape(3, 4, 128)
    weight, bias = randn(92, 40, 128, std=0.05).half(), randn(93, 40, std=0.1).half()
    with torch.no_grad():
        expected = bnb_linear8bit(weight, bias, threshold)(x)
    got = student.int8_linear(x, weight, bias, threshold=threshold)
    assert_close(got, expected, what="int8_linear of (3, 4, 128)", rtol=2e-3, atol=8e-3)
    assert_close(student.int8_linear(x.float(), weight.float(), bias.float(), threshold=threshold),
                 llm_int8_written_out(x.float(), weight.float(), bias.float(), threshold), what="int8_linear in float32",
                 rtol=1e-5, atol=1e-5)


@pytest.mark.exercise("11.6")
@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 8, True), (8, 64, False), (4, 64, False)])
def test_hidden_quantized_linear_of_other_groups(student, bits, group_size, symmetric):
    weight, bias = weight_like(94, 20, 64), randn(95, 20, std=0.1)
    buffers, w_q = awq_buffers(weight, bits, group_size, symmetric)
    x = randn(96, 2, 7, 64)
    got = student.quantized_linear_outputs(buffers, 64, 20, x, bits=bits, group_size=group_size, symmetric=symmetric,
                                           bias=bias)
    assert_close(got["output"], F.linear(x, w_q, bias), what="QuantizedLinear")


EXTREMES = [  # (seed, shape, kind, scale): float16-subnormal scales, large values, a long row
    (20, (3, 256), "gauss", 1e-5), (21, (2, 256), "gauss", 2e4), (22, (1, 4096), "outliers", 0.05),
    (23, (4, 1, 512), "t", 7.0)]


@pytest.mark.exercise("11.7")
@pytest.mark.parametrize("seed, shape, kind, scale", EXTREMES)
def test_hidden_quantize_q8_0_of_extreme_scales(student, seed, shape, kind, scale):
    x = weights(seed, *shape, kind=kind, scale=scale)
    assert_same_bytes(student.quantize_q8_0(x), gguf_bytes(x, "Q8_0"), f"quantize_q8_0 of {kind} {shape} x{scale}", 34)


@pytest.mark.exercise("11.7")
def test_hidden_quantize_q8_0_of_exact_halves_at_other_scales(student):
    x = torch.zeros(3, 32)
    x[:, 0] = torch.tensor([254.0, 63.5, -127.0])                 # d = 2, 0.5, -1 as |max|/127
    x[:, 1:6] = torch.tensor([[1.0, 3.0, 5.0, -7.0, 0.99999994], [0.25, 0.75, -1.25, 0.2499999, 31.25],
                              [0.5, 1.5, -126.5, -0.5, 2.5]])
    assert_same_bytes(student.quantize_q8_0(x), gguf_bytes(x, "Q8_0"), "quantize_q8_0 of exact halves", 34)


@pytest.mark.exercise("11.8")
def test_hidden_dequantize_q8_0_of_more_bytes(student):
    for seed, shape in ((24, (1, 1, 34)), (25, (6, 340))):
        data = random_blocks(seed, shape[-2] if len(shape) > 1 else 1, shape[-1] // 34, 34, 2).reshape(shape)
        assert_same_values(student.dequantize_q8_0(data), gguf_values(data, "Q8_0"), f"dequantize_q8_0 {shape}")


@pytest.mark.exercise("11.9")
@pytest.mark.parametrize("seed, shape, kind, scale", EXTREMES)
def test_hidden_quantize_q4_0_of_extreme_scales(student, seed, shape, kind, scale):
    x = weights(seed, *shape, kind=kind, scale=scale)
    assert_same_bytes(student.quantize_q4_0(x), gguf_bytes(x, "Q4_0"), f"quantize_q4_0 of {kind} {shape} x{scale}", 18)


@pytest.mark.exercise("11.9")
def test_hidden_quantize_q4_0_of_blocks_with_repeated_extremes(student):
    x = torch.tensor([[-2.0, 2.0] * 16, [2.0, -2.0] * 16, [0.0] * 31 + [-1e-3], [5.0] * 32])
    assert_same_bytes(student.quantize_q4_0(x), gguf_bytes(x, "Q4_0"), "quantize_q4_0 of repeated extremes", 18)


@pytest.mark.exercise("11.10")
def test_hidden_dequantize_q4_0_of_more_bytes(student):
    data = random_blocks(26, 5, 7, 18, 2).reshape(5, 7, 18)
    assert_same_values(student.dequantize_q4_0(data), gguf_values(data, "Q4_0"), "dequantize_q4_0 (5, 7, 18)")


@pytest.mark.exercise("11.11")
@pytest.mark.parametrize("seed, shape, kind, scale", EXTREMES)
def test_hidden_quantize_q4_k_of_extreme_scales(student, seed, shape, kind, scale):
    x = weights(seed, *shape, kind=kind, scale=scale)
    assert_same_bytes(student.quantize_q4_k(x), q4_k_rule(x), f"quantize_q4_k of {kind} {shape} x{scale}", 144)


@pytest.mark.exercise("11.11")
def test_hidden_quantize_q4_k_of_one_sided_super_blocks(student):
    g = torch.Generator().manual_seed(27)
    x = torch.stack([torch.rand(256, generator=g) + 0.5, -torch.rand(256, generator=g) - 0.5,
                     torch.linspace(-1, 1, 256), torch.full((256,), 3.0)])
    assert_same_bytes(student.quantize_q4_k(x), q4_k_rule(x), "quantize_q4_k of one-sided super-blocks", 144)


@pytest.mark.exercise("11.12")
def test_hidden_dequantize_q4_k_of_more_bytes(student):
    data = random_q4_k_blocks(28, 3, 5)
    assert_same_values(student.dequantize_q4_k(data), gguf_values(data, "Q4_K"), "dequantize_q4_k (3, 720)")
    data = q4_k_rule(weights(29, 2, 1024, kind="outliers"))
    assert_same_values(student.dequantize_q4_k(data), gguf_values(data, "Q4_K"), "dequantize_q4_k of outlier weights")


@pytest.mark.exercise("11.13")
def test_hidden_gptq_hessian_of_many_small_batches_in_float16(student):
    from grading.expect import assert_close

    inputs = [correlated_inputs(100 + i, *shape).half() for i, shape in
              enumerate([(1, 1, 32), (5, 32), (2, 7, 32), (1, 32), (3, 3, 32), (9, 1, 32)])]
    assert_close(student.gptq_hessian(inputs), auto_gptq_hessian(inputs), what="gptq_hessian (float16 inputs)", rtol=1e-5)


@pytest.mark.exercise("11.14")
@pytest.mark.parametrize("setting", [
    (32, 128, 4, 64, 32, True, False, (7, 8, 100)),
    (8, 64, 3, 64, 64, False, False, ()),
    (16, 80, 2, 20, 8, True, True, ()),
    (40, 32, 8, None, 32, True, False, (31,)),
    (5, 50, 4, 10, 7, False, True, ()),
    (24, 64, 3, 128, 16, True, False, ()),
])
def test_hidden_gptq_quantize_matches_auto_gptq(student, monkeypatch, setting):
    out_features, in_features, bits, group_size, block_size, act_order, symmetric, dead = setting
    x = correlated_inputs(200 + in_features, 3, 30, in_features, mixing=2.0)
    x[..., list(dead)] = 0
    hessian = auto_gptq_hessian([x[:2], x[2].reshape(-1, in_features)])
    weight = random_weight(300 + out_features, out_features, in_features) * torch.linspace(0.1, 3, in_features)
    kwargs = dict(bits=bits, group_size=group_size, block_size=block_size, act_order=act_order, symmetric=symmetric,
                  damp_percent=0.05)
    assert_gptq_equal(student.gptq_quantize(weight, hessian, **kwargs),
                      auto_gptq_quantize(monkeypatch, weight, hessian, **kwargs), kwargs)


@pytest.mark.exercise("11.14")
def test_hidden_gptq_quantize_of_a_zero_row_and_a_positive_row(student, monkeypatch):
    x = correlated_inputs(400, 2, 20, 32)
    hessian = auto_gptq_hessian([x])
    weight = random_weight(401, 6, 32)
    weight[0] = 0
    weight[1] = weight[1].abs()
    for symmetric in (False, True):
        kwargs = dict(bits=4, group_size=16, block_size=16, symmetric=symmetric)
        assert_gptq_equal(student.gptq_quantize(weight, hessian, **kwargs),
                          auto_gptq_quantize(monkeypatch, weight, hessian, **kwargs), kwargs)


@pytest.mark.exercise("11.15")
@pytest.mark.parametrize("out_features, in_features, bits, group_size", [(12, 96, 4, 16), (32, 64, 3, 64), (4, 256, 4, 128)])
def test_hidden_awq_search_scales_matches_autoawq(student, monkeypatch, out_features, in_features, bits, group_size):
    from grading.expect import assert_close

    weight = random_weight(500 + in_features, out_features, in_features)
    x = outlier_inputs(600 + in_features, 2, 33, in_features, n_large=2, factor=50.0)
    got = student.awq_search_scales(weight, x, bits=bits, group_size=group_size)
    scales, losses = autoawq_search(monkeypatch, weight, x, bits, group_size)
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    assert got["ratio"] == pytest.approx(min(range(20), key=lambda k: losses[k]) / 20)
    assert_close(got["scales"], scales, what="the best scales", rtol=1e-5)
