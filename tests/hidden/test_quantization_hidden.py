"""Chapter 11 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import pytest
import torch

from tests.test_quantization import (assert_gptq_equal, auto_gptq_hessian, auto_gptq_quantize, autoawq_search,
                                     correlated_inputs, outlier_inputs, random_weight)


# == part C: GPTQ and AWQ ==
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
# == end of part C ==
