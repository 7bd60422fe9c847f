"""Chapter 11 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close


# == part A: integer quantization and LLM.int8 ==
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
# == end of part A ==
