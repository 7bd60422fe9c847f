"""Chapter 11 graded tests (public): GPTQ and AWQ.

The references are outside the course: ``auto-gptq`` 0.7.1's ``GPTQ.add_batch`` and ``GPTQ.fasterquant``
with its ``Quantizer`` (its two files loaded by path: the package does not import on transformers 5),
and ``autoawq`` 0.2.7.post3's ``AwqQuantizer._search_best_scale`` (with ``_compute_best_scale`` and
``pseudo_quantize_tensor``) on the same layer and inputs; a brute-force optimal-brain-surgeon update in
float64 written out below; round to nearest on the same grid.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped).

11.13 ``gptq_hessian``
  - ``GPTQ.add_batch`` on the same batches, 3-D and 2-D, float32 and bfloat16, inputs unchanged:
    gptq_hessian_matches_auto_gptq_add_batch
  - ``n`` counts samples, not tokens; ``2 X^T X / n``; a dead input's zero row and column:
    gptq_hessian_by_hand

11.14 ``gptq_quantize``
  - ``GPTQ.fasterquant`` (weights, scales, zeros, ``g_idx``) for several shapes, bits, group sizes,
    block sizes, ``act_order``, ``symmetric`` and dead inputs: gptq_quantize_matches_auto_gptq
  - the error compensation is the optimal-brain-surgeon update of each column, lazy blocks change
    nothing: gptq_quantize_is_the_obs_update_column_by_column
  - damping makes a singular Hessian (fewer tokens than inputs) work: gptq_quantize_of_a_singular_hessian
  - less output error than round to nearest on correlated inputs: gptq_quantize_beats_round_to_nearest
  - dtypes (bfloat16 weight in; float32, int32 out), ``None`` = -1 = per row, inputs unchanged:
    gptq_quantize_returns_float32_and_leaves_its_inputs

11.15 ``awq_search_scales``
  - ``autoawq``'s search (scales, ratio, every loss) for several shapes, bits and group sizes, inputs
    unchanged: awq_search_scales_matches_autoawq
  - ``n_grid`` ratios ``k / n_grid``, the first minimum: awq_search_scales_grid
  - the scaled layer ``Q(W s) / s`` beats round to nearest on inputs with a few large channels:
    awq_scales_beat_round_to_nearest

A correct implementation that orders its float operations differently (``torch.linalg.inv`` instead of
``torch.cholesky_inverse``) can round a weight that lies on a grid midpoint the other way, and GPTQ then
carries that row on differently: the comparisons with ``auto-gptq`` accept a few such rows.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from grading.expect import assert_close, assert_unchanged
from tests.test_generation import solution_mode  # noqa: F401  (a fixture)

F64 = torch.float64


# == part C: GPTQ and AWQ ==
def auto_gptq_gptq():
    """``auto_gptq/quantization/gptq.py`` (with its ``quantizer.py``), loaded by path: auto-gptq 0.7.1
    does not import as a package on transformers 5, but these two files run on CPU."""
    if "_auto_gptq_reference.gptq" in sys.modules:
        return sys.modules["_auto_gptq_reference.gptq"]
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs auto-gptq (pip install --no-deps auto-gptq==0.7.1)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "quantization"
    package = types.ModuleType("_auto_gptq_reference")
    package.__path__ = [str(folder)]
    sys.modules["_auto_gptq_reference"] = package
    for name in ("quantizer", "gptq"):
        file_spec = importlib.util.spec_from_file_location(f"_auto_gptq_reference.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[file_spec.name] = module
        file_spec.loader.exec_module(module)
    return sys.modules["_auto_gptq_reference.gptq"]


def auto_gptq_hessian(inputs):
    gptq = auto_gptq_gptq().GPTQ(torch.nn.Linear(inputs[0].shape[-1], 1, bias=False))
    for x in inputs:
        gptq.add_batch(x.clone(), None)
    return gptq.H


def auto_gptq_quantize(monkeypatch, weight, hessian, bits=4, group_size=128, block_size=128, damp_percent=0.01,
                       act_order=False, symmetric=False):
    """``GPTQ.fasterquant`` on a layer holding ``weight`` with the Hessian set to ``hessian``, configured
    as auto-gptq's model code configures it (``perchannel=True``, ``mse=False``)."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight.float().clone()
    gptq = auto_gptq_gptq().GPTQ(layer)
    gptq.quantizer.configure(bits, perchannel=True, sym=symmetric, mse=False)
    gptq.H, gptq.nsamples = hessian.float().clone(), 1
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    scale, zero, g_idx = gptq.fasterquant(blocksize=block_size, percdamp=damp_percent,
                                          group_size=-1 if group_size is None else group_size, actorder=act_order)
    return {"weight": layer.weight.data, "scales": scale, "zeros": zero, "g_idx": g_idx}


def correlated_inputs(seed, *shape, mixing=1.0):
    """Inputs whose features are correlated (as a layer's inputs are), ``shape[-1]`` features."""
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    mix = torch.eye(n) + mixing * torch.randn(n, n, generator=g) / math.sqrt(n)
    return torch.randn(*shape, generator=g) @ mix * (0.5 + torch.rand(n, generator=g))


def random_weight(seed, out_features, in_features):
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))


def assert_rows_match(actual, expected, *, what, min_fraction=0.9, hint=""):
    """``actual`` equal to ``expected`` (float32 tolerance) in at least ``min_fraction`` of its rows."""
    __tracebackhide__ = True
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    rows = torch.isclose(actual.cpu(), expected.cpu(), rtol=1.3e-6, atol=1e-5).all(dim=1)
    if rows.float().mean() < min_fraction:
        raise AssertionError(f"{what} differs from auto-gptq's in {int((~rows).sum())} of {len(rows)} rows (first: "
                             f"row {int((~rows).nonzero()[0])}). {hint}".strip())


def assert_gptq_equal(got, expected, setting):
    __tracebackhide__ = True
    assert isinstance(got, dict) and set(got) == {"weight", "scales", "zeros", "g_idx"}, (
        f"gptq_quantize returns {sorted(got) if isinstance(got, dict) else type(got).__name__}, expected a dict "
        "with weight, scales, zeros, g_idx")
    assert_close(got["g_idx"], expected["g_idx"], what=f"g_idx ({setting})",
                 hint="g_idx[j] is the group of original column j (with act_order: of its place in the permutation)")
    assert_rows_match(got["scales"], expected["scales"], what=f"scales ({setting})",
                      hint="Each group's grid comes from its columns as the updates left them, when it starts.")
    assert_rows_match(got["zeros"], expected["zeros"], what=f"zeros ({setting})")
    assert_rows_match(got["weight"], expected["weight"], what=f"the quantized weight ({setting})")


# -- 11.13 gptq_hessian ------------------------------------------------------------------------------------
@pytest.mark.exercise("11.13")
def test_gptq_hessian_matches_auto_gptq_add_batch(student):
    for seed, shapes, dtype in ((0, [(3, 5, 24), (7, 24), (2, 4, 24)], torch.float32),
                                (1, [(11, 16)], torch.float32),
                                (2, [(1, 9, 40), (4, 2, 40), (6, 40), (6, 40)], torch.bfloat16)):
        inputs = [correlated_inputs(seed * 10 + i, *shape).to(dtype) for i, shape in enumerate(shapes)]
        before = [x.clone() for x in inputs]
        got = student.gptq_hessian(inputs)
        assert_close(got, auto_gptq_hessian(inputs), what=f"gptq_hessian of batches {shapes} ({dtype})", rtol=1e-5,
                     hint="n counts samples (a 3-D batch's first dimension, 1 for a 2-D tensor), and each batch "
                          "rescales the running H by n / (n + b) before adding its own 2 / n * X^T X.")
        assert_unchanged(inputs, before, what="the caller's inputs")


@pytest.mark.exercise("11.13")
def test_gptq_hessian_by_hand(student):
    a, b = correlated_inputs(3, 4, 6).to(F64).float(), correlated_inputs(4, 2, 3, 6)
    a[:, 2] = b[..., 2] = 0
    got = student.gptq_hessian([a])
    assert_close(got, 2 * a.T @ a, what="gptq_hessian of one (tokens, in) tensor", rtol=1e-5,
                 hint="a 2-D tensor is one sample: H = 2 X^T X / 1")
    tokens = b.reshape(-1, 6)
    got = student.gptq_hessian([a, b])    # 1 + 2 samples
    assert_close(got, 2 / 3 * (a.T @ a + tokens.T @ tokens), what="gptq_hessian of a 2-D and a 3-D batch", rtol=1e-5,
                 hint="n counts samples (1 + 2 here), not tokens (4 + 6)")
    assert not got[2].any() and not got[:, 2].any(), "a feature that is always 0 leaves a zero row and column"


# -- 11.14 gptq_quantize -----------------------------------------------------------------------------------
GPTQ_SETTINGS = [  # (out, in, bits, group_size, block_size, act_order, symmetric, dead inputs)
    (16, 64, 4, 16, 128, False, False, ()),
    (24, 96, 3, 32, 16, True, False, ()),
    (8, 48, 2, None, 16, False, True, ()),
    (20, 64, 4, 24, 32, True, True, (5, 17, 40)),
    (12, 40, 8, 16, 8, False, False, (0,)),
    (16, 72, 4, 36, 16, False, True, (3,)),
]


@pytest.mark.exercise("11.14")
@pytest.mark.parametrize("setting", GPTQ_SETTINGS, ids=lambda s: "-".join(map(str, s[:7])) + ("-dead" if s[7] else ""))
def test_gptq_quantize_matches_auto_gptq(student, monkeypatch, setting):
    out_features, in_features, bits, group_size, block_size, act_order, symmetric, dead = setting
    seed = sum(setting[:5]) if group_size else sum(setting[:3])
    x = correlated_inputs(seed, 4, 24, in_features)
    x[..., list(dead)] = 0
    hessian = auto_gptq_hessian([x])
    weight = random_weight(seed + 1, out_features, in_features)
    kwargs = dict(bits=bits, group_size=group_size, block_size=block_size, act_order=act_order, symmetric=symmetric)
    got = student.gptq_quantize(weight, hessian, **kwargs)
    assert_gptq_equal(got, auto_gptq_quantize(monkeypatch, weight, hessian, **kwargs), kwargs)
    if dead:
        assert not got["weight"][:, list(dead)].any(), "the weight columns of dead inputs (H_jj = 0) are set to 0"


def obs_quantize(weight, hessian, bits, group_size, damp_percent=0.01, chosen=None):
    """GPTQ without lazy blocks, in float64: quantize column i, then the optimal-brain-surgeon update
    of the columns after it, ``w_j -= (w_i - q_i) / [H_F^-1]_ii * [H_F^-1]_ij``, with ``H_F^-1`` the
    inverse Hessian of the columns not yet quantized (``F``), which loses column i by a Gaussian
    elimination step after each column. ``chosen`` (the answer's quantized weight) breaks ties: where
    a value lies within 1e-4 of a grid midpoint, the answer's side is taken."""
    W, H = weight.to(F64).clone(), hessian.to(F64).clone()
    n, maxq = W.shape[1], 2 ** bits - 1
    H += damp_percent * torch.diag(H).mean() * torch.eye(n, dtype=F64)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for i in range(n):
        if i % group_size == 0:  # auto-gptq's asymmetric grid from the updated columns of the group
            group = W[:, i:i + group_size]
            lo = torch.clamp(group.min(dim=1).values, max=0)
            hi = torch.clamp(group.max(dim=1).values, min=0)
            scale = (hi - lo) / maxq
            zero = torch.round(-lo / scale)
        level = W[:, i] / scale + zero
        q = torch.clamp(torch.round(level), 0, maxq)
        if chosen is not None:
            theirs = torch.clamp(torch.round(chosen[:, i].to(F64) / scale + zero), 0, maxq)
            tie = (level - level.floor() - 0.5).abs() < 1e-4
            q = torch.where(tie, theirs, q)
        Q[:, i] = scale * (q - zero)
        W[:, i + 1:] -= ((W[:, i] - Q[:, i]) / Hinv[i, i])[:, None] * Hinv[i, i + 1:][None, :]
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]   # remove column i from the inverse
    return Q


@pytest.mark.exercise("11.14")
def test_gptq_quantize_is_the_obs_update_column_by_column(student):
    x = correlated_inputs(20, 3, 16, 24)
    hessian = (2 / 3 * x.reshape(-1, 24).T.to(F64) @ x.reshape(-1, 24).to(F64)).float()
    weight = random_weight(21, 10, 24)
    for group_size, block_sizes in ((24, (1, 4, 24)), (8, (1, 8)), (12, (1, 4, 12))):
        results = [student.gptq_quantize(weight, hessian, bits=3, group_size=group_size, block_size=b)["weight"]
                   for b in block_sizes]
        expected = obs_quantize(weight, hessian, 3, group_size, chosen=results[0])
        assert_close(results[0].to(F64), expected, what=f"gptq_quantize(block_size=1, group_size={group_size})",
                     rtol=1e-4, atol=1e-4,
                     hint="after quantizing column i, every later column j gets w_j -= (w_i - q_i) / U_ii * U_ij "
                          "(U the upper Cholesky factor of the damped H^-1)")
        for b, result in zip(block_sizes[1:], results[1:]):
            assert_rows_match(result, results[0], what=f"gptq_quantize(block_size={b}, group_size={group_size})",
                              hint="lazy blocks only delay the updates of the later blocks: the result equals "
                                   "block_size=1 when every group starts a block")


@pytest.mark.exercise("11.14")
def test_gptq_quantize_of_a_singular_hessian(student, monkeypatch):
    x = correlated_inputs(30, 20, 48)            # 20 tokens for 48 inputs: H has rank 20
    hessian = auto_gptq_hessian([x])
    weight = random_weight(31, 12, 48)
    got = student.gptq_quantize(weight, hessian, bits=4, group_size=16, block_size=16)
    assert torch.isfinite(got["weight"]).all()
    assert_gptq_equal(got, auto_gptq_quantize(monkeypatch, weight, hessian, bits=4, group_size=16, block_size=16),
                      "a singular Hessian")
    damped = student.gptq_quantize(weight, hessian, bits=4, group_size=16, block_size=16, damp_percent=0.1)
    assert_gptq_equal(damped, auto_gptq_quantize(monkeypatch, weight, hessian, bits=4, group_size=16, block_size=16,
                                                 damp_percent=0.1), "damp_percent=0.1")


def rtn_output_error(weight, x, bits, group_size):
    """||X W^T - X Q^T|| of round to nearest on auto-gptq's asymmetric grid (range widened to include 0)."""
    groups = weight.reshape(weight.shape[0], -1, group_size)
    lo, hi = groups.amin(dim=-1, keepdim=True).clamp(max=0), groups.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    zero = torch.round(-lo / scale)
    q = scale * (torch.clamp(torch.round(groups / scale) + zero, 0, 2 ** bits - 1) - zero)
    return torch.linalg.norm(x @ weight.T - x @ q.reshape(weight.shape).T)


@pytest.mark.exercise("11.14")
def test_gptq_quantize_beats_round_to_nearest(student):
    x = correlated_inputs(40, 8, 32, 64, mixing=3.0).reshape(-1, 64)
    hessian = 2 / 8 * x.T @ x
    weight = random_weight(41, 32, 64)
    for bits, group_size in ((3, 32), (4, 16), (2, 64)):
        q = student.gptq_quantize(weight, hessian, bits=bits, group_size=group_size, block_size=16)["weight"]
        gptq, rtn = torch.linalg.norm(x @ weight.T - x @ q.T), rtn_output_error(weight, x, bits, group_size)
        assert gptq < 0.8 * rtn, (
            f"GPTQ's output error {gptq:.3f} is not below 0.8 times round to nearest's {rtn:.3f} at {bits} bits, "
            f"groups of {group_size}: the later columns must absorb each column's rounding error")


@pytest.mark.exercise("11.14")
def test_gptq_quantize_returns_float32_and_leaves_its_inputs(student):
    x = correlated_inputs(50, 2, 16, 32)
    hessian = 2 / 2 * x.reshape(-1, 32).T @ x.reshape(-1, 32)
    weight = random_weight(51, 8, 32).to(torch.bfloat16)
    before = (weight.clone(), hessian.clone())
    got = student.gptq_quantize(weight, hessian, group_size=None, act_order=True)
    assert_unchanged((weight, hessian), before, what="the caller's weight and hessian")
    assert got["weight"].dtype == got["scales"].dtype == got["zeros"].dtype == torch.float32
    assert got["g_idx"].dtype == torch.int32 and not got["g_idx"].any(), "per row: every column in group 0 (int32)"
    assert got["scales"].shape == got["zeros"].shape == (8, 1)
    same = student.gptq_quantize(weight, hessian, group_size=-1, act_order=True)
    assert_close(same["weight"], got["weight"], what="gptq_quantize(group_size=-1)", hint="-1 means per row, as None")
    levels = [len(torch.unique(row)) for row in got["weight"]]
    assert max(levels) <= 16, f"4 bits give at most 16 values per row, found {max(levels)}"


# -- 11.15 awq_search_scales -------------------------------------------------------------------------------
def autoawq_search(monkeypatch, weight, inputs, bits, group_size):
    """``AwqQuantizer._search_best_scale`` on one linear layer (its ``prev_op`` an identity), built without a
    model (``object.__new__``, the attributes it reads set as its constructor's defaults would:
    zero point, ``duo_scaling=True``). Returns the best scales and the loss of every ratio.

    On CPU, autoawq 0.2.7's backup of the layer (``{k: v.cpu() for ...}``) is the layer's own tensor, which
    its in-place ``weight.mul_(s)`` then changes (on a GPU ``.cpu()`` copies): the layer here hands out
    copies in ``state_dict``, so the search runs as it does on a GPU."""
    quantizer_module = pytest.importorskip("awq.quantize.quantizer")
    monkeypatch.setattr(quantizer_module, "clear_memory", lambda *args: None)   # gc.collect(), 20 times a search
    quantizer = object.__new__(quantizer_module.AwqQuantizer)
    quantizer.w_bit, quantizer.group_size, quantizer.zero_point, quantizer.duo_scaling = bits, group_size, True, True
    quantizer.max_chunk_memory, quantizer.n_parallel_calib_samples = 1024 ** 3, None

    class CopyingLinear(torch.nn.Linear):
        def state_dict(self, *args, **kwargs):
            return {k: v.clone() for k, v in super().state_dict(*args, **kwargs).items()}

    block = torch.nn.Sequential(torch.nn.Identity(), CopyingLinear(weight.shape[1], weight.shape[0], bias=False))
    block[1].weight.data = weight.clone()
    losses = []
    compute_loss = quantizer._compute_loss
    quantizer._compute_loss = lambda *args: losses.append(compute_loss(*args)) or losses[-1]
    _, _, scales = quantizer._search_best_scale(block, block[0], [block[1]], inputs.clone())
    return scales, losses


def outlier_inputs(seed, *shape, n_large=3, factor=30.0):
    """Inputs with ``n_large`` channels ``factor`` times larger than the rest (as LLM activations have)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., torch.randperm(shape[-1], generator=g)[:n_large]] *= factor
    return x


AWQ_SETTINGS = [(16, 64, 4, 32), (24, 128, 3, 64), (8, 48, 2, 16)]   # (out, in, bits, group_size)


@pytest.mark.exercise("11.15")
def test_awq_search_scales_matches_autoawq(student, monkeypatch):
    for seed, (out_features, in_features, bits, group_size) in enumerate(AWQ_SETTINGS):
        weight, x = random_weight(60 + seed, out_features, in_features), outlier_inputs(70 + seed, 3, 17, in_features)
        before = (weight.clone(), x.clone())
        got = student.awq_search_scales(weight, x, bits=bits, group_size=group_size)
        assert_unchanged((weight, x), before, what="the caller's weight and inputs")
        scales, losses = autoawq_search(monkeypatch, weight, x, bits, group_size)
        setting = f"bits={bits}, group_size={group_size}"
        assert isinstance(got, dict) and set(got) == {"scales", "ratio", "losses"}, "a dict: scales, ratio, losses"
        assert isinstance(got["losses"], list) and len(got["losses"]) == 20
        assert got["losses"] == pytest.approx(losses, rel=1e-5), (
            f"the loss of each ratio ({setting}), expected {losses}: the mean over outputs of (X W^T - X W_q^T)^2 "
            "with W_q = Q(W diag(s)) diag(s)^-1")
        best = min(range(20), key=lambda k: losses[k])
        assert isinstance(got["ratio"], float) and got["ratio"] == pytest.approx(best / 20), f"ratio ({setting})"
        assert_close(got["scales"], scales, what=f"the best scales ({setting})", rtol=1e-5,
                     hint="s = clamp(x_mean^a / (w_mean^(1-a) + 1e-4), 1e-4), then s / sqrt(max(s) min(s))")


@pytest.mark.exercise("11.15")
def test_awq_search_scales_grid(student):
    weight, x = random_weight(80, 16, 64), outlier_inputs(81, 50, 64)
    fine = student.awq_search_scales(weight, x, bits=3, group_size=16, n_grid=20)
    coarse = student.awq_search_scales(weight, x, bits=3, group_size=16, n_grid=5)
    assert len(coarse["losses"]) == 5
    assert coarse["losses"] == pytest.approx(fine["losses"][::4], rel=1e-6), "n_grid=5 tries the ratios 0, 0.2, ..., 0.8"
    k = min(range(5), key=lambda i: coarse["losses"][i])
    assert coarse["ratio"] == pytest.approx(k / 5)
    one = student.awq_search_scales(weight, x, bits=3, group_size=16, n_grid=1)
    assert one["ratio"] == 0.0 and one["losses"] == pytest.approx(fine["losses"][:1])


def awq_rtn(weight, bits, group_size):
    """autoawq's zero-point round to nearest, per group."""
    groups = weight.reshape(-1, group_size)
    hi, lo = groups.amax(dim=1, keepdim=True), groups.amin(dim=1, keepdim=True)
    scales = (hi - lo).clamp(min=1e-5) / (2 ** bits - 1)
    zeros = (-torch.round(lo / scales)).clamp(0, 2 ** bits - 1)
    return ((torch.clamp(torch.round(groups / scales) + zeros, 0, 2 ** bits - 1) - zeros) * scales).reshape(weight.shape)


@pytest.mark.exercise("11.15")
def test_awq_scales_beat_round_to_nearest(student):
    for seed, (bits, group_size) in enumerate(((3, 32), (4, 64))):
        weight, x = random_weight(90 + seed, 32, 128), outlier_inputs(95 + seed, 256, 128, n_large=4)
        s = student.awq_search_scales(weight, x, bits=bits, group_size=group_size)["scales"]
        assert s.shape == (128,) and s.dtype == torch.float32
        awq = torch.linalg.norm(x @ weight.T - x @ (awq_rtn(weight * s, bits, group_size) / s).T)
        rtn = torch.linalg.norm(x @ weight.T - x @ awq_rtn(weight, bits, group_size).T)
        assert awq < 0.9 * rtn, (f"the AWQ-scaled layer's output error {awq:.2f} is not below 0.9 times round to "
                                 f"nearest's {rtn:.2f} ({bits} bits, groups of {group_size})")


# -- not graded: the quantized model and its calibration data --------------------------------------------------
def tiny_course_model(seed=0):
    from tests.test_sft import tiny_course_lm

    return tiny_course_lm("cpu", 64, seed=seed).eval()


def test_quantize_model_replaces_the_block_linears_only(solution_mode):
    from course_lib.quantization import block_linears, quantize_model

    model = tiny_course_model()
    ids = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(1))
    batches = list(ids.split(3))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for method in ("rtn", "gptq", "awq"):
        quantized = quantize_model(model, method, bits=4, group_size=16, calibration_batches=batches)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items()), f"{method} changed the model"
        state = quantized.state_dict()
        for name, value in original.items():
            inside = name.startswith("model.layers.") and name.endswith("proj.weight")
            assert torch.equal(state[name], value) != inside, f"{method}: {name} {'kept' if inside else 'changed'}"
        for block in quantized.model.layers:
            for name, linear in block_linears(block).items():
                levels = [len(torch.unique(row)) for row in linear.weight.reshape(-1, 16)]
                assert method == "awq" or max(levels) <= 16, f"{method}: {name} has more than 16 levels per group"
        with torch.no_grad():
            error = (quantized(input_ids=ids).logits - logits).abs().max()
        assert 0 < error < 0.5, f"{method}: logits moved by {error}"


def test_gptq_model_is_closer_to_the_float_model_than_rtn(solution_mode):
    from course_lib.quantization import quantize_model

    model = tiny_course_model(seed=3)
    ids = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        errors = {method: (quantize_model(model, method, bits=3, group_size=None, calibration_batches=[ids])(
            input_ids=ids).logits - logits).pow(2).mean().item() for method in ("rtn", "gptq")}
    assert errors["gptq"] < errors["rtn"], errors


def test_calibration_data_cuts_windows_of_documents(solution_mode):
    from course_lib.quantization import calibration_data
    from tests.test_generation import word_tokenizer

    words = [f"w{i}" for i in range(30)]
    tokenizer = word_tokenizer(words)
    documents = [" ".join(words[i:i + n]) for i, n in ((0, 5), (2, 25), (10, 12), (1, 29))]
    data = calibration_data(n=7, seq_len=10, seed=3, tokenizer=tokenizer, documents=documents)
    assert data.shape == (7, 10) and data.dtype == torch.long
    for row in data.tolist():   # consecutive words of one document: ids increase by one
        assert row == list(range(row[0], row[0] + 10)), row
    assert torch.equal(data, calibration_data(n=7, seq_len=10, seed=3, tokenizer=tokenizer, documents=documents))
    with pytest.raises(ValueError, match="seq_len"):
        calibration_data(n=2, seq_len=40, tokenizer=tokenizer, documents=documents)


# -- not graded: bad input is refused before your code runs, with the argument's name ---------------------
@pytest.mark.parametrize("call, error, name", [
    (lambda q: q.gptq_hessian([]), TypeError, "inputs"),
    (lambda q: q.gptq_hessian([torch.ones(2, 4), torch.ones(2, 5)]), ValueError, r"inputs\[1\]"),
    (lambda q: q.gptq_hessian([torch.ones(2, 4, dtype=torch.long)]), TypeError, r"inputs\[0\]"),
    (lambda q: q.gptq_quantize(torch.ones(4, 8), torch.eye(7)), ValueError, "hessian"),
    (lambda q: q.gptq_quantize(torch.ones(8), torch.eye(8)), ValueError, "weight"),
    (lambda q: q.gptq_quantize(torch.ones(4, 8), torch.eye(8), bits=1), ValueError, "bits"),
    (lambda q: q.gptq_quantize(torch.ones(4, 8), torch.eye(8), group_size=0), ValueError, "group_size"),
    (lambda q: q.gptq_quantize(torch.ones(4, 8), torch.eye(8), damp_percent=1.5), ValueError, "damp_percent"),
    (lambda q: q.gptq_quantize(torch.ones(4, 8), torch.eye(8), act_order=1), TypeError, "act_order"),
    (lambda q: q.gptq_quantize(torch.full((4, 8), float("nan")), torch.eye(8)), ValueError, "weight"),
    (lambda q: q.awq_search_scales(torch.ones(4, 8), torch.ones(3, 8), group_size=3), ValueError, "group_size"),
    (lambda q: q.awq_search_scales(torch.ones(4, 8), torch.ones(3, 6), group_size=4), ValueError, "inputs"),
    (lambda q: q.awq_search_scales(torch.ones(4, 8), torch.ones(3, 8), group_size=4, n_grid=0), ValueError, "n_grid"),
    (lambda q: q.quantize_model(torch.nn.Linear(2, 2), "rtn"), TypeError, "model"),
    (lambda q: q.quantize_model(tiny_course_model(), "gptq"), TypeError, "calibration_batches"),
    (lambda q: q.quantize_model(tiny_course_model(), "hqq"), ValueError, "method"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_gets_an_error_naming_the_argument(solution_mode, call, error, name):
    from course_lib import quantization

    with pytest.raises(error, match=name):
        call(quantization)
# == end of part C ==
