"""Chapter 11 graded tests (public): integer quantization, LLM.int8, ...

# == part A: integer quantization and LLM.int8 ==
The references of part A are outside the course: AutoAWQ 0.2.7's ``AwqQuantizer.pseudo_quantize_tensor``
(its scales, zeros and dequantized tensor; the method is read from AutoAWQ's own ``quantizer.py`` and run
alone, since importing the package loads every model class of ``transformers``), ``bitsandbytes``'
``functional.int8_vectorwise_quant`` and ``nn.Linear8bitLt(has_fp16_weights=False)`` in eval mode on the
CPU, and ``torchao``'s ``Int8WeightOnlyConfig`` applied by ``quantize_`` to an ``nn.Linear``.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped).

11.1 ``absmax_quantize``
  - AutoAWQ's scales and dequantized tensor (``zero_point=False``) for bits 2, 3, 4 and 8 and every
    granularity and group size; ``q`` int8 in ``-qmax .. qmax`` reaching ``+-qmax`` in every group, scale
    float32 ``(rows, n_groups)``, input unchanged: absmax_quantize_matches_autoawq
  - float16 and bfloat16 inputs quantized in float32: absmax_quantize_casts_low_precision_input_to_float32
  - an all-zero group (scale 0, q 0), halves to even, a row by hand: absmax_quantize_by_hand

11.2 ``zero_point_quantize``
  - AutoAWQ's scales, zeros and dequantized tensor (``zero_point=True``) for bits 2 to 8, every granularity,
    dtypes uint8 / float32 / uint8, input unchanged; float16 input: zero_point_quantize_matches_autoawq
  - all-positive and all-negative groups (the zero point clamped, values clipped), a constant group (the
    ``1e-5`` floor): zero_point_quantize_clamps_the_zero_point

11.3 ``dequantize``
  - AutoAWQ's dequantized tensor from its scales and zeros, symmetric and asymmetric, per tensor, channel
    and group, float32, inputs unchanged: dequantize_inverts_autoawq
  - uint8 values below their zero point, one set of group scales for every row: dequantize_by_hand

11.4 ``int8_vectorwise_quant``
  - ``bitsandbytes.functional.int8_vectorwise_quant`` byte for byte: float16, bfloat16 and float32, with and
    without a threshold, outlier columns, input unchanged: int8_vectorwise_quant_is_bitsandbytes
  - the scale multiplied (``-63``, not ``-64``), halves to even, ``>=`` the threshold, non-outlier values of
    outlier columns in the row's max, zero rows: int8_vectorwise_quant_by_hand

11.5 ``int8_linear``
  - ``bitsandbytes``' ``Linear8bitLt(has_fp16_weights=False)`` in eval mode, float16 and float32, 2-D and 3-D
    input, with and without bias and outliers: int8_linear_is_bitsandbytes_linear8bitlt
  - the decomposition written out from ``bitsandbytes``' quantization (int32 product, per-row scales,
    outlier columns in float with the dequantized weight), close to the float product, the output in x's
    dtype, inputs unchanged: int8_linear_is_the_decomposition_written_out
  - a value equal to the threshold is an outlier; outliers kept in float beat all-int8:
    int8_linear_keeps_outliers_in_floating_point

11.6 ``QuantizedLinear.forward``
  - ``torchao``'s ``Int8WeightOnlyConfig`` layer on its own int8 weight and scales (float32 and bfloat16 input):
    quantized_linear_is_torchao_int8_weight_only
  - ``x @ W.T + bias`` with ``W`` AutoAWQ's dequantized weight, 4 bits packed two per byte and 8 bits,
    symmetric and asymmetric, groups and channels, any leading dimensions, x's dtype:
    quantized_linear_is_the_dequantized_matmul
# == end of part A ==
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close, assert_unchanged
from tests.test_generation import solution_mode  # noqa: F401  (a fixture)

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # optional CPU kernels it looks for on import


# == part A: integer quantization and LLM.int8 ==
def randn(seed, *shape, std=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def weight_like(seed, rows, cols):
    """A weight with rows of different sizes, a few large values and one all-zero group of 8 columns."""
    w = randn(seed, rows, cols, std=0.05) * (1 + torch.arange(rows)[:, None] % 3)
    w[seed % rows, seed % cols] = 0.4
    w[(seed + 1) % rows, :8] = 0.0
    return w


@functools.cache
def _awq_pseudo_quantize():
    spec = importlib.util.find_spec("awq")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("autoawq is not installed")
    path = Path(spec.submodule_search_locations[0]) / "quantize" / "quantizer.py"
    tree = ast.parse(path.read_text())
    quantizer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AwqQuantizer")
    method = next(n for n in quantizer.body if isinstance(n, ast.FunctionDef) and n.name == "pseudo_quantize_tensor")
    namespace = {"torch": torch}
    exec(compile(ast.Module([method], []), str(path), "exec"), namespace)
    return namespace["pseudo_quantize_tensor"]


def awq_quantize(w, bits, granularity, group_size=128, zero_point=True):
    """AutoAWQ's ``pseudo_quantize_tensor`` of ``w`` (rows, cols): (dequantized w, scales, zeros or None)."""
    rows, cols = w.shape
    flat = w.reshape(1, -1) if granularity == "tensor" else w
    size = {"tensor": rows * cols, "channel": cols, "group": group_size}[granularity]
    settings = SimpleNamespace(w_bit=bits, group_size=size, zero_point=zero_point)
    w_q, scales, zeros = _awq_pseudo_quantize()(settings, flat.clone())
    return w_q.reshape(rows, cols), scales, zeros


def expand(groups, cols):
    """(R, G) per-group values -> (R, cols), each column its group's value."""
    return groups.repeat_interleave(cols // groups.shape[1], dim=1)


def awq_codes(w_q, scales, zeros=None):
    """The integers behind AutoAWQ's dequantized tensor: ``w_q / scale + zero``, rounded."""
    cols = w_q.shape[1]
    codes = torch.round(w_q / expand(scales, cols) + (0 if zeros is None else expand(zeros, cols)))
    return codes.nan_to_num(0.0)


# -- 11.1 absmax_quantize ----------------------------------------------------------------------------------------------
SETTINGS = [(8, "channel", 128), (4, "group", 16), (2, "group", 8), (3, "tensor", 128), (8, "group", 32),
            (4, "channel", 128)]


@pytest.mark.exercise("11.1")
@pytest.mark.parametrize("bits, granularity, group_size", SETTINGS)
def test_absmax_quantize_matches_autoawq(student, bits, granularity, group_size):
    x = weight_like(bits, 12, 64)
    before = x.clone()
    q, scale = student.absmax_quantize(x, bits=bits, granularity=granularity, group_size=group_size)
    assert_unchanged(x, before, what="the caller's x")
    what = f"absmax_quantize(bits={bits}, granularity={granularity!r}, group_size={group_size})"
    n_groups = {"tensor": (1, 1), "channel": (12, 1), "group": (12, 64 // group_size)}[granularity]
    assert q.dtype == torch.int8 and q.shape == x.shape, f"{what}: q must be int8 {tuple(x.shape)}, got {q.dtype} {tuple(q.shape)}"
    assert scale.dtype == torch.float32 and scale.shape == n_groups, (
        f"{what}: scale must be float32 {n_groups} (rows, n_groups), got {scale.dtype} {tuple(scale.shape)}")
    w_q, awq_scales, _ = awq_quantize(x, bits, granularity, group_size, zero_point=False)
    qmax = 2 ** (bits - 1) - 1
    assert int(q.abs().max()) <= qmax, f"{what}: |q| reaches {int(q.abs().max())}; the symmetric grid is -{qmax}..{qmax}"
    ours = (q.float().reshape(scale.shape[0], scale.shape[1], -1) * scale[..., None]).reshape(x.shape)
    assert_close(ours, w_q, what=f"{what}: q * scale", hint="scale = absmax / (2**(bits-1) - 1) per group, "
                 "q = round(x / scale) (a group is group_size consecutive columns of one row)")
    floored = awq_scales <= 1.0001e-5 / qmax                    # AutoAWQ raised these groups' absmax to 1e-5
    assert_close(scale[~floored], awq_scales[~floored], what=f"{what}: scale")
    assert bool((scale[floored] == 0).all()), f"{what}: an all-zero group has scale 0"
    groups = q.reshape(scale.shape[0], scale.shape[1], -1).abs().amax(-1)
    assert bool((groups[scale > 0] == qmax).all()), f"{what}: the largest |x| of every group must become +-{qmax}"


@pytest.mark.exercise("11.1")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_absmax_quantize_casts_low_precision_input_to_float32(student, dtype):
    x = weight_like(3, 8, 32).to(dtype)
    q, scale = student.absmax_quantize(x, bits=4, granularity="group", group_size=16)
    w_q, awq_scales, _ = awq_quantize(x.float(), 4, "group", 16, zero_point=False)
    assert scale.dtype == torch.float32, f"scale must be float32 for a {dtype} input, got {scale.dtype}"
    assert torch.equal(q, awq_codes(w_q, awq_scales).to(torch.int8)), (
        f"absmax_quantize of a {dtype} input must quantize its values in float32")


@pytest.mark.exercise("11.1")
def test_absmax_quantize_by_hand(student):
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, 2.0], [127.0, 62.5, -0.0, 1.5]])
    q, scale = student.absmax_quantize(x, bits=8, granularity="channel")
    assert torch.equal(scale, torch.tensor([[0.0], [2.0], [127.0]]) / 127), (
        f"scales {scale.flatten().tolist()}: an all-zero row has scale 0, the others absmax / 127")
    assert q.tolist() == [[0, 0, 0, 0], [64, -127, 32, 127], [127, 62, 0, 2]], (
        f"q = {q.tolist()}: an all-zero group quantizes to 0 (no NaN), 63.5 rounds to 64 and 62.5 to 62 "
        "(halves to even: torch.round)")
    q, scale = student.absmax_quantize(x, bits=2, granularity="group", group_size=2)
    assert scale.tolist() == [[0.0, 0.0], [2.0, 2.0], [127.0, 1.5]] and q.tolist() == [[0, 0, 0, 0], [0, -1, 0, 1],
                                                                                      [1, 0, 0, 1]], (
        f"2 bits in groups of 2: scale {scale.tolist()}, q {q.tolist()}")


# -- 11.2 zero_point_quantize ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("11.2")
@pytest.mark.parametrize("bits, granularity, group_size", [(4, "group", 16), (2, "group", 8), (3, "channel", 128),
                                                           (5, "tensor", 128), (6, "group", 32), (7, "channel", 128),
                                                           (8, "group", 64)])
def test_zero_point_quantize_matches_autoawq(student, bits, granularity, group_size):
    x = weight_like(bits + 10, 10, 64) + 0.02
    before = x.clone()
    q, scale, zero = student.zero_point_quantize(x, bits=bits, granularity=granularity, group_size=group_size)
    assert_unchanged(x, before, what="the caller's x")
    what = f"zero_point_quantize(bits={bits}, granularity={granularity!r}, group_size={group_size})"
    n_groups = {"tensor": (1, 1), "channel": (10, 1), "group": (10, 64 // group_size)}[granularity]
    assert (q.dtype, scale.dtype, zero.dtype) == (torch.uint8, torch.float32, torch.uint8), (
        f"{what}: dtypes must be uint8, float32, uint8, got {q.dtype}, {scale.dtype}, {zero.dtype}")
    assert q.shape == x.shape and scale.shape == zero.shape == n_groups, (
        f"{what}: shapes {tuple(q.shape)}, {tuple(scale.shape)}, {tuple(zero.shape)}; expected {tuple(x.shape)} and "
        f"{n_groups} twice")
    w_q, awq_scales, awq_zeros = awq_quantize(x, bits, granularity, group_size)
    assert_close(scale, awq_scales, what=f"{what}: scale", hint="scale = max(hi - lo, 1e-5) / (2**bits - 1)")
    assert torch.equal(zero, awq_zeros.to(torch.uint8)), f"{what}: zero points {zero.tolist()}, AutoAWQ's {awq_zeros.tolist()}"
    ours = ((q.float().reshape(*n_groups, -1) - zero.float()[..., None]) * scale[..., None]).reshape(x.shape)
    assert_close(ours, w_q, what=f"{what}: (q - zero_point) * scale", hint="q = clamp(round(x / scale) + zero_point, 0, 2**bits - 1)")
    q16, scale16, zero16 = student.zero_point_quantize(x.half(), bits=bits, granularity=granularity, group_size=group_size)
    reference = awq_quantize(x.half().float(), bits, granularity, group_size)
    assert scale16.dtype == torch.float32 and torch.equal(zero16, reference[2].to(torch.uint8)), (
        f"{what} of a float16 input: compute in float32")


@pytest.mark.exercise("11.2")
def test_zero_point_quantize_clamps_the_zero_point(student):
    x = torch.tensor([[5.0, 5.5, 6.0, 5.2, -1.0, 2.0, 0.0, 0.5],
                      [-3.0, -2.5, -2.0, -2.9, 3.0, 3.0, 3.0, 3.0]])
    q, scale, zero = student.zero_point_quantize(x, bits=4, granularity="group", group_size=4)
    w_q, awq_scales, awq_zeros = awq_quantize(x, 4, "group", 4)
    assert zero.tolist() == awq_zeros.to(torch.uint8).tolist() == [[0, 5], [15, 0]], (
        f"zero points {zero.tolist()}: an all-positive group's zero point -round(lo / scale) is negative and is clamped "
        "to 0; an all-negative group's is clamped to 15 (AutoAWQ)")
    assert q.tolist() == awq_codes(w_q, awq_scales, awq_zeros).to(torch.uint8).tolist(), (
        f"q = {q.tolist()}: with the zero point clamped, values above 15 * scale are clipped to 15 (q is clamped too)")
    assert_close(scale, awq_scales, what="scale of groups [5 .. 6], [-1 .. 2], [-3 .. -2] and a constant group",
                 hint="a constant group has hi - lo = 0: AutoAWQ floors it at 1e-5 before dividing")
    assert torch.isfinite(scale).all() and scale[1, 1] > 0


# -- 11.3 dequantize ---------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("11.3")
@pytest.mark.parametrize("zero_point, granularity, group_size", [(True, "group", 16), (True, "channel", 128),
                                                                 (False, "group", 8), (False, "tensor", 128),
                                                                 (True, "tensor", 128)])
def test_dequantize_inverts_autoawq(student, zero_point, granularity, group_size):
    x = weight_like(21, 6, 32)
    w_q, scales, zeros = awq_quantize(x, 4, granularity, group_size, zero_point=zero_point)
    codes = awq_codes(w_q, scales, zeros)
    q = codes.to(torch.uint8) if zero_point else codes.to(torch.int8)
    zeros = zeros.to(torch.uint8) if zero_point else None
    before = [q.clone(), scales.clone(), None if zeros is None else zeros.clone()]
    got = student.dequantize(q, scales, zeros)
    assert_unchanged([q, scales, zeros], before, what="the caller's q, scale or zero_point")
    assert_close(got, w_q, what=f"dequantize of AutoAWQ's {granularity} quantization (zero point: {zero_point})",
                 hint="(q - zero_point) * scale, each column with its group's scale: repeat_interleave, not repeat")


@pytest.mark.exercise("11.3")
def test_dequantize_by_hand(student):
    q = torch.tensor([[0, 3, 200, 255], [1, 2, 3, 4]], dtype=torch.uint8)
    scale = torch.tensor([[0.5, 2.0]])
    zero = torch.tensor([[2, 250]], dtype=torch.uint8)
    got = student.dequantize(q, scale, zero)
    assert got.dtype == torch.float32
    assert got.tolist() == [[-1.0, 0.5, -100.0, 10.0], [-0.5, 0.0, -494.0, -492.0]], (
        f"dequantize gave {got.tolist()}: values below their zero point are negative (subtract in a signed dtype, "
        "uint8 wraps around), and a (1, n_groups) scale serves every row")
    signed = student.dequantize(torch.tensor([[-7, 7, 1]], dtype=torch.int8), torch.tensor([[0.25]]))
    assert signed.tolist() == [[-1.75, 1.75, 0.25]]


# -- 11.4 int8_vectorwise_quant ----------------------------------------------------------------------------------------------
def activations(seed, rows, cols, dtype, outliers=()):
    """Activations with a few outlier columns (LLM.int8's emergent features)."""
    x = randn(seed, rows, cols)
    for col in outliers:
        x[:, col] *= 15
    return x.to(dtype)


@pytest.mark.exercise("11.4")
@pytest.mark.parametrize("dtype, threshold, rows, cols", [
    (torch.float16, 0.0, 9, 48), (torch.float16, 6.0, 9, 48), (torch.float32, 6.0, 1, 40), (torch.bfloat16, 3.5, 6, 32),
    (torch.float32, 0.0, 5, 33), (torch.float16, 100.0, 4, 16)], ids=str)
def test_int8_vectorwise_quant_is_bitsandbytes(student, dtype, threshold, rows, cols):
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    x = activations(rows + cols, rows, cols, dtype, outliers=(3, cols - 2))
    x[rows // 2] = 0.0
    before = x.clone()
    q, row_stats, outlier_cols = student.int8_vectorwise_quant(x, threshold=threshold)
    assert_unchanged(x, before, what="the caller's x")
    expected_q, expected_stats, expected_cols = bnb_functional.int8_vectorwise_quant(x.clone(), threshold)
    what = f"int8_vectorwise_quant of {dtype} ({rows}, {cols}) with threshold {threshold}"
    assert (q.dtype, row_stats.dtype, outlier_cols.dtype) == (torch.int8, torch.float32, torch.int64), (
        f"{what}: dtypes must be int8, float32, int64, got {q.dtype}, {row_stats.dtype}, {outlier_cols.dtype}")
    expected_cols = torch.empty(0, dtype=torch.int64) if expected_cols is None else expected_cols
    assert torch.equal(outlier_cols, expected_cols), f"{what}: outlier columns {outlier_cols.tolist()}, expected {expected_cols.tolist()}"
    assert torch.equal(row_stats, expected_stats), f"{what}: row_stats {row_stats.tolist()}, expected {expected_stats.tolist()}"
    assert_close(q, expected_q, what=f"{what}: q", hint="round(x * (127 / row_stats)), outlier columns 0")


@pytest.mark.exercise("11.4")
def test_int8_vectorwise_quant_by_hand(student):
    x = torch.tensor([[2.884765625, -1.4423828125, 0.0, 1.0],
                      [127.0, 62.5, 0.0, -6.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [1.0, 2.0, 5.0, -8.0]], dtype=torch.float16)
    q, row_stats, cols = student.int8_vectorwise_quant(x)
    assert q[0, 1] == -63, (
        f"x = -1.4423828125 in a row of absmax 2.884765625 gave {int(q[0, 1])}: bitsandbytes multiplies by the row's "
        "127 / absmax, computed first (here a hair under 127 / 2.884765625), and gets -63.4999..., so -63")
    assert q[1, 1] == 62, f"62.5 rounds to {int(q[1, 1])}: halves go to the even integer (62)"
    assert q[2].tolist() == [0, 0, 0, 0] and row_stats[2] == 0, "an all-zero row: row_stats 0 and q 0"
    q, row_stats, cols = student.int8_vectorwise_quant(x, threshold=6.0)
    assert cols.tolist() == [0, 1, 3], (
        f"outlier columns {cols.tolist()} with threshold 6: |x| >= 6 (-6.0 is an outlier: >=, not >)")
    assert row_stats.tolist() == [2.884765625, 0.0, 0.0, 5.0] and q[3].tolist() == [0, 0, 127, 0], (
        f"row_stats {row_stats.tolist()}, q {q.tolist()}: outliers are left out of their row's max but non-outlier "
        "values of outlier columns count (row 0: 2.88 in column 0 is no outlier); outlier columns are 0 in q")


# -- 11.5 int8_linear ----------------------------------------------------------------------------------------------------------
def bnb_linear8bit(weight, bias, threshold):
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear8bitLt(weight.shape[1], weight.shape[0], bias=bias is not None, has_fp16_weights=False,
                                threshold=threshold)
    layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
    return layer.to("cpu").eval()


def llm_int8_written_out(x, weight, bias, threshold):
    """The contract of 11.5 from bitsandbytes' quantization, in float32."""
    from bitsandbytes.functional import int8_vectorwise_quant

    rows = x.reshape(-1, x.shape[-1])
    q_x, s_x, cols = int8_vectorwise_quant(rows.clone(), threshold)
    q_w, s_w, _ = int8_vectorwise_quant(weight.clone())
    y = (q_x.to(torch.int32) @ q_w.to(torch.int32).T).float() * torch.outer(s_x, s_w) / 127 ** 2
    if cols is not None and cols.numel():
        y += rows[:, cols].float() @ (q_w[:, cols].float() * s_w[:, None] / 127).T
    if bias is not None:
        y += bias.float()
    return y.reshape(*x.shape[:-1], -1)


@pytest.mark.exercise("11.5")
@pytest.mark.parametrize("dtype, lead, threshold, bias", [
    (torch.float16, (7,), 6.0, True), (torch.float16, (2, 5), 0.0, False), (torch.float16, (2, 5), 6.0, False),
    (torch.float32, (6,), 6.0, True), (torch.float32, (3, 4), 0.0, True)], ids=str)
def test_int8_linear_is_bitsandbytes_linear8bitlt(student, dtype, lead, threshold, bias):
    x = activations(sum(lead), int(torch.tensor(lead).prod()), 64, torch.float16, outliers=(5, 40)).reshape(*lead, 64)
    weight, b = randn(1, 24, 64, std=0.1).half(), randn(2, 24, std=0.1).half() if bias else None
    x, weight, b = x.to(dtype), weight.to(dtype), None if b is None else b.to(dtype)   # float16 values either way
    with torch.no_grad():
        expected = bnb_linear8bit(weight, b, threshold)(x)
    got = student.int8_linear(x, weight, b, threshold=threshold)
    tolerance = dict(rtol=2e-3, atol=8e-3) if dtype == torch.float16 else dict(rtol=1e-4, atol=1e-4)
    assert_close(got, expected, what=f"int8_linear of {dtype} {tuple(x.shape)} (threshold {threshold}, bias {bias})",
                 hint="int8 product with per-row scales of x and of the weight, outlier columns of x in float",
                 **tolerance)


@pytest.mark.exercise("11.5")
@pytest.mark.parametrize("dtype, threshold", [(torch.float32, 6.0), (torch.float32, 2.5), (torch.bfloat16, 6.0),
                                              (torch.float32, 0.0)], ids=str)
def test_int8_linear_is_the_decomposition_written_out(student, dtype, threshold):
    x = activations(7, 10, 48, dtype, outliers=(0, 17, 30))
    x[4, 9] = 4.0
    weight, bias = randn(8, 20, 48, std=0.1).to(dtype), randn(9, 20, std=0.1).to(dtype)
    before = [x.clone(), weight.clone(), bias.clone()]
    got = student.int8_linear(x, weight, bias, threshold=threshold)
    assert_unchanged([x, weight, bias], before, what="the caller's x, weight or bias")
    expected = llm_int8_written_out(x, weight, bias, threshold).to(dtype)
    assert got.dtype == dtype, f"int8_linear of a {dtype} input returned {got.dtype}"
    assert_close(got, expected, what=f"int8_linear (threshold {threshold}) of {dtype} input",
                 hint="acc = q_x @ q_w.T in int32, times s_x[:, None] * s_w[None, :] / 127**2, plus x's outlier columns "
                      "times the dequantized weight's columns, plus the bias",
                 **(dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}))
    exact = x.float() @ weight.float().T + bias.float()
    s_x, s_w = x.float().abs().amax(1, keepdim=True), weight.float().abs().amax(1)   # at least each row's scale
    bound = (s_x * weight.float().abs().sum(1) + x.float().abs() @ torch.ones(48, 20) * s_w + 48 * s_x * s_w / 254) / 254
    bound += 1e-2 * exact.abs() + 1e-4                          # each value within half a step; bfloat16's rounding
    assert bool(((got.float() - exact).abs() <= bound).all()), "int8_linear must stay close to the float product"


@pytest.mark.exercise("11.5")
def test_int8_linear_keeps_outliers_in_floating_point(student):
    x = randn(11, 6, 32, std=0.5)
    x[:, 7] = torch.tensor([60.0, -6.0, 0.1, 0.2, 40.0, -0.3])     # an emergent feature; -6.0 is at the threshold
    x[:, 20] = torch.tensor([0.0, 0.0, 6.0, 0.0, 0.0, 0.0])
    codes = torch.randint(-126, 127, (16, 32), generator=torch.Generator().manual_seed(12))
    codes[:, 0] = 127
    weight = codes * (0.1 / 127)                 # int8 holds this weight exactly: the error left is x's
    exact = x @ weight.T
    mixed = student.int8_linear(x, weight, threshold=6.0)
    assert_close(mixed, llm_int8_written_out(x, weight, None, 6.0), what="int8_linear with an outlier column",
                 rtol=1e-5, atol=1e-5, hint="a column is an outlier column when any of its |values| >= threshold (6.0 "
                 "itself counts), and is multiplied in float32 instead of int8")
    all_int8 = student.int8_linear(x, weight, threshold=0.0)
    assert (mixed - exact).abs().max() < 0.1 * (all_int8 - exact).abs().max(), (
        "keeping the outlier columns in floating point must cut the error of rows with an outlier")


# -- 11.6 QuantizedLinear.forward ---------------------------------------------------------------------------------------------
def torchao_int8_weight_only(weight, bias):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    quantize_(linear, Int8WeightOnlyConfig())
    return linear


@pytest.mark.exercise("11.6")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantized_linear_is_torchao_int8_weight_only(student, dtype):
    weight, bias = randn(30, 24, 64, std=0.1).to(dtype), randn(31, 24, std=0.1).to(dtype)
    layer = torchao_int8_weight_only(weight, bias)
    qdata, scale = layer.weight.qdata, layer.weight.scale
    buffers = {"qweight": (qdata.to(torch.int16) + 128).to(torch.uint8), "scales": scale.reshape(24, 1).float()}
    x = randn(32, 3, 5, 64).to(dtype)
    with torch.no_grad():
        expected = layer(x)
    got = student.quantized_linear_outputs(buffers, 64, 24, x, bits=8, group_size=None, symmetric=True, bias=bias.float())
    assert_close(got["output"], expected, what=f"QuantizedLinear (8 bits, per channel, symmetric) on {dtype} input",
                 hint="stored - 128 is the signed weight; dequantize, cast to x's dtype, F.linear",
                 **({} if dtype == torch.float32 else dict(rtol=1.6e-2, atol=3e-2)))


def awq_buffers(weight, bits, group_size, symmetric):
    """The buffers of a QuantizedLinear from AutoAWQ's quantization, and AutoAWQ's dequantized weight."""
    granularity = "group" if group_size else "channel"
    w_q, scales, zeros = awq_quantize(weight, bits, granularity, group_size or 128, zero_point=not symmetric)
    codes = awq_codes(w_q, scales, zeros)
    stored = (codes + (2 ** (bits - 1) if symmetric else 0)).to(torch.uint8)
    if bits == 4:
        stored = (stored[:, 0::2] << 4) | stored[:, 1::2]
    buffers = {"qweight": stored, "scales": scales.float()}
    if not symmetric:
        buffers["zeros"] = zeros.to(torch.uint8)
    return buffers, w_q


@pytest.mark.exercise("11.6")
@pytest.mark.parametrize("bits, group_size, symmetric, lead, dtype, bias", [
    (4, 16, False, (5,), torch.float32, True), (4, 32, True, (2, 3), torch.float32, False),
    (8, 16, False, (), torch.float32, True), (8, None, True, (4,), torch.bfloat16, True),
    (4, None, False, (2, 1, 3), torch.float16, True)], ids=str)
def test_quantized_linear_is_the_dequantized_matmul(student, bits, group_size, symmetric, lead, dtype, bias):
    weight = weight_like(40 + bits, 12, 64)
    b = randn(41, 12, std=0.1) if bias else None
    buffers, w_q = awq_buffers(weight, bits, group_size, symmetric)
    x = randn(42, *lead, 64).to(dtype)
    before = {k: v.clone() for k, v in buffers.items()}
    got = student.quantized_linear_outputs(buffers, 64, 12, x, bits=bits, group_size=group_size, symmetric=symmetric,
                                           bias=b)
    assert_unchanged(buffers, before, what="the buffers")
    expected = F.linear(x, w_q.to(dtype), None if b is None else b.to(dtype))
    what = (f"QuantizedLinear ({bits} bits, group_size {group_size}, {'symmetric' if symmetric else 'zero point'}, "
            f"bias {bias}) of {dtype} {tuple(x.shape)}")
    assert_close(got["output"], expected, what=what,
                 hint="unpack (high nibble first), subtract a symmetric layer's offset 2**(bits - 1), dequantize with "
                      "the scales (and zeros), cast the weight and bias to x's dtype, F.linear",
                 **({} if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)))


# -- not graded: the layer around 11.6 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 16, False), (8, None, True), (4, 32, True)])
def test_quantized_linear_from_linear_stores_the_quantized_weight(solution_mode, bits, group_size, symmetric):
    from course_lib.lora import unpack_nibbles
    from course_lib.quantization import QuantizedLinear, absmax_quantize, dequantize, zero_point_quantize

    linear = torch.nn.Linear(64, 12)
    with torch.no_grad():
        linear.weight.copy_(weight_like(50, 12, 64))
    layer = QuantizedLinear.from_linear(linear, bits=bits, group_size=group_size, symmetric=symmetric)
    stored = layer.qweight if bits == 8 else unpack_nibbles(layer.qweight.flatten(), 12 * 64).view(12, 64)
    if symmetric:
        q, scales = absmax_quantize(linear.weight.detach(), bits, "group", group_size or 64)
        assert torch.equal(stored.to(torch.int16) - 2 ** (bits - 1), q.to(torch.int16)) and layer.zeros is None
        zeros = None
    else:
        q, scales, zeros = zero_point_quantize(linear.weight.detach(), bits, "group", group_size or 64)
        assert torch.equal(stored, q) and torch.equal(layer.zeros, zeros)
    weight = dequantize(q, scales, zeros)
    assert torch.equal(layer.scales, scales) and torch.equal(layer.bias, linear.bias.detach())
    groups = 64 // (group_size or 64)
    assert layer.weight_bytes() == 12 * 64 * bits // 8 + 12 * groups * (4 + (0 if symmetric else 1))
    x = randn(51, 3, 64)
    with torch.no_grad():
        assert_close(layer(x), F.linear(x, weight, linear.bias), what="QuantizedLinear.from_linear's layer")


def test_quantize_linear_layers_replaces_the_matching_layers(solution_mode):
    from course_lib.quantization import QuantizedLinear, quantize_linear_layers

    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    x = randn(60, 4, 32)
    with torch.no_grad():
        before = model(x)
        quantize_linear_layers(model, ["0"], bits=8, group_size=16, symmetric=True)
        after = model(x)
    assert isinstance(model[0], QuantizedLinear) and isinstance(model[2], torch.nn.Linear)
    assert (after - before).abs().max() < 0.05


# -- not graded: bad input is refused before your code runs, with the argument's name ---------------------------------------
@pytest.mark.parametrize("call, error, name", [
    (lambda qz: qz.absmax_quantize(torch.ones(4)), ValueError, "x"),
    (lambda qz: qz.absmax_quantize(torch.ones(2, 4, dtype=torch.long)), TypeError, "x"),
    (lambda qz: qz.absmax_quantize(torch.ones(2, 4), bits=9), ValueError, "bits"),
    (lambda qz: qz.absmax_quantize(torch.ones(2, 4), granularity="row"), ValueError, "granularity"),
    (lambda qz: qz.absmax_quantize(torch.ones(2, 6), granularity="group", group_size=4), ValueError, "group_size"),
    (lambda qz: qz.absmax_quantize(torch.tensor([[1.0, float("inf")]])), ValueError, "x"),
    (lambda qz: qz.zero_point_quantize(torch.ones(2, 4), bits=1), ValueError, "bits"),
    (lambda qz: qz.zero_point_quantize(torch.ones(2, 8), group_size=0), ValueError, "group_size"),
    (lambda qz: qz.dequantize(torch.ones(2, 4), torch.ones(2, 1)), TypeError, "q"),
    (lambda qz: qz.dequantize(torch.ones(2, 4, dtype=torch.int8), torch.ones(2, 3)), ValueError, "scale"),
    (lambda qz: qz.dequantize(torch.ones(2, 4, dtype=torch.uint8), torch.ones(2, 2), torch.ones(2, 1, dtype=torch.uint8)),
     ValueError, "zero_point"),
    (lambda qz: qz.int8_vectorwise_quant(torch.ones(2, 4), threshold=-1.0), ValueError, "threshold"),
    (lambda qz: qz.int8_vectorwise_quant(torch.ones(3, dtype=torch.float16)), ValueError, "x"),
    (lambda qz: qz.int8_linear(torch.ones(2, 5), torch.ones(3, 4)), ValueError, "in_features"),
    (lambda qz: qz.int8_linear(torch.ones(2, 4), torch.ones(3, 4), torch.ones(4)), ValueError, "bias"),
    (lambda qz: qz.int8_linear(torch.ones(2, 4), torch.ones(3, 4, dtype=torch.int8)), TypeError, "weight"),
    (lambda qz: qz.quantized_linear_outputs({"qweight": torch.zeros(3, 2, dtype=torch.uint8),
                                             "scales": torch.ones(3, 1), "zeros": torch.zeros(3, 1, dtype=torch.uint8)},
                                            4, 3, torch.ones(2, 5), group_size=None), ValueError, "in_features"),
    (lambda qz: qz.QuantizedLinear(6, 3, bits=3), ValueError, "bits"),
    (lambda qz: qz.QuantizedLinear(6, 3, group_size=4), ValueError, "group_size"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_gets_an_error_naming_the_argument(solution_mode, call, error, name):
    from course_lib import quantization

    with pytest.raises(error, match=name):
        call(quantization)
# == end of part A ==
