"""Chapter 11 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import pytest
import torch

from tests.test_quantization import (assert_same_bytes, assert_same_values, gguf_bytes, gguf_values, q4_k_rule,
                                     random_blocks, random_q4_k_blocks, weights)


# == part B: GGUF ==
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
# == end of part B ==
