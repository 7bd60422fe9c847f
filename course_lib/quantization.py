"""Chapter 11: quantization: integers, LLM.int8, GGUF blocks, GPTQ and AWQ.

A weight stored in 4 bits instead of 16 makes a model four times smaller and, where memory bandwidth
limits generation, about as much faster. Rounding every weight to its nearest grid point (round to
nearest, RTN) works down to about 8 bits; below that, the best methods choose *how* to round from
what the layer sees on real inputs:

- **GPTQ** (11.13-11.14; Frantar et al., 2022): quantize a layer's weight one input column at a time
  and, after each column, update the columns not yet quantized so that the layer's output on
  calibration inputs changes as little as possible. The update is that of the optimal brain surgeon
  (Hassibi & Stork, 1993) for the layer's quadratic loss, whose Hessian ``H = 2 X^T X`` depends only
  on the inputs (:func:`gptq_hessian`, :func:`gptq_quantize`, as ``auto-gptq`` computes them).
- **AWQ** (11.15; Lin et al., 2024): a few input channels carry large activations and matter most.
  Multiply their weight columns by a factor ``s`` before quantizing (and divide the activations by
  it), with ``s`` searched on a grid of powers of the mean activation magnitude
  (:func:`awq_search_scales`, as ``autoawq`` searches it).

Implemented around the exercises: :func:`quantize_model` (a fake-quantized copy of a course model,
every linear layer of its decoder blocks quantized by RTN, GPTQ or AWQ) and :func:`calibration_data`
(token sequences drawn from the course corpus for the calibration).

Conventions used by every exercise of this chapter:

- **Weights** are ``(out_features, in_features)`` as ``nn.Linear`` stores them. A *row* is an output
  channel; a *column* is an input feature; a *group* is ``group_size`` consecutive columns of a row,
  which share one scale and zero point.
- **Fake quantization**: a quantized weight is returned *dequantized* (float32 values on the grid),
  ready to replace the original in a linear layer.
- Inputs are never modified.
"""

from __future__ import annotations

import copy
import random
from typing import Sequence

import torch
from torch import nn

from course_lib.checks import check_tensor
from course_lib.exercises import exercise

# == part C: GPTQ and AWQ ==
QUANTIZE_METHODS = ("rtn", "gptq", "awq")


def _pseudo_quantize(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Round-to-nearest zero-point quantization of ``w`` (out, in) and back, per group of ``group_size``
    columns (``None`` or -1: per row), as ``autoawq``'s ``pseudo_quantize_tensor`` (``zero_point=True``)."""
    rows = w.reshape(-1, w.shape[-1] if group_size in (None, -1) else group_size)
    max_int = 2 ** bits - 1
    w_max, w_min = rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True)
    scales = (w_max - w_min).clamp(min=1e-5) / max_int
    zeros = (-torch.round(w_min / scales)).clamp(0, max_int)
    return ((torch.clamp(torch.round(rows / scales) + zeros, 0, max_int) - zeros) * scales).reshape(w.shape)


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {minimum}..{maximum}, got {value}" if maximum is not None
                         else f"{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_finite(name: str, value: torch.Tensor) -> None:
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite (no NaN or infinity)")


def _check_weight(weight) -> None:
    check_tensor("weight", weight, floating=True)
    if weight.ndim != 2:
        raise ValueError(f"weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
    _check_finite("weight", weight)


def _validate_gptq_hessian(inputs) -> None:
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, Sequence) or not inputs:
        raise TypeError("inputs must be a non-empty list of (batch, seq, in_features) or (tokens, in_features) tensors")
    for i, x in enumerate(inputs):
        check_tensor(f"inputs[{i}]", x, floating=True)
        if x.ndim not in (2, 3):
            raise ValueError(f"inputs[{i}] must be (batch, seq, in_features) or (tokens, in_features), "
                             f"got shape {tuple(x.shape)}")
        _check_finite(f"inputs[{i}]", x)
        if x.shape[-1] != inputs[0].shape[-1]:
            raise ValueError(f"inputs[{i}] has {x.shape[-1]} features, inputs[0] {inputs[0].shape[-1]}")


def _validate_gptq_quantize(weight, hessian, bits=4, group_size=128, block_size=128, damp_percent=0.01,
                            act_order=False, symmetric=False) -> None:
    _check_weight(weight)
    check_tensor("hessian", hessian, floating=True)
    columns = weight.shape[1]
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian must be (in_features, in_features) = ({columns}, {columns}), got shape "
                         f"{tuple(hessian.shape)}")
    _check_finite("hessian", hessian)
    if (torch.diag(hessian) < 0).any():
        raise ValueError("hessian must have a non-negative diagonal (it is 2 X^T X)")
    _check_int("bits", bits, 2, 8)
    if group_size is not None and group_size != -1:
        _check_int("group_size", group_size, 1)
    _check_int("block_size", block_size, 1)
    if isinstance(damp_percent, bool) or not isinstance(damp_percent, (int, float)) or not 0 <= damp_percent < 1:
        raise ValueError(f"damp_percent must be a number in [0, 1), got {damp_percent!r}")
    _check_bool("act_order", act_order)
    _check_bool("symmetric", symmetric)


def _validate_awq_search_scales(weight, inputs, bits=4, group_size=128, n_grid=20) -> None:
    _check_weight(weight)
    check_tensor("inputs", inputs, floating=True)
    if inputs.ndim < 2 or inputs.shape[-1] != weight.shape[1]:
        raise ValueError(f"inputs must be (..., in_features) with in_features = {weight.shape[1]}, got shape "
                         f"{tuple(inputs.shape)}")
    _check_finite("inputs", inputs)
    _check_int("bits", bits, 1, 8)
    _check_int("group_size", group_size, 1)
    if weight.shape[1] % group_size:
        raise ValueError(f"group_size must divide in_features ({weight.shape[1]}), got {group_size}")
    _check_int("n_grid", n_grid, 1)


# -- 11.13-11.14 GPTQ ----------------------------------------------------------------------------------
@exercise("11.13", points=2, validate=_validate_gptq_hessian)
def gptq_hessian(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Hessian ``H = 2 X^T X / n`` of a linear layer's quadratic loss, from its calibration inputs,
    accumulated batch by batch as ``auto-gptq``'s ``GPTQ.add_batch`` accumulates it.

    Args:
        inputs: the layer's inputs, one tensor per calibration batch: ``(batch, seq, in_features)`` (a
            batch of ``batch`` samples) or ``(tokens, in_features)`` (one sample); any floating dtype.

    Returns:
        ``(in_features, in_features)`` float32, on the inputs' device: ``2 / n`` times the sum over
        every token ``x`` (a row of ``in_features``) of every batch of ``x^T x``, where ``n`` counts
        *samples*, not tokens (``batch`` for a 3-D tensor, 1 for a 2-D one). It is a running average:
        starting from ``H = 0`` and ``n = 0``, each batch first rescales ``H`` by ``n / (n + b)``
        (``b`` its number of samples), then adds ``b`` to ``n`` and ``X^T X`` of its tokens, each
        multiplied by ``sqrt(2 / n)`` in float32 before the product (``X`` its tokens as rows). A
        feature that is 0 in every token leaves a zero row and column (a *dead* input).

    Hint:
        ``x.reshape(-1, in_features)`` gives the tokens as rows; ``(c * X).T @ (c * X)`` with ``c =
        sqrt(2 / n)``.
    """
    raise NotImplementedError("Exercise 11.13: implement gptq_hessian in quantization.py")


@exercise("11.14", points=4, validate=_validate_gptq_quantize)
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  block_size: int = 128, damp_percent: float = 0.01, act_order: bool = False,
                  symmetric: bool = False) -> dict[str, torch.Tensor]:
    """Quantize a linear layer's weight with GPTQ (Frantar et al., 2022), as ``auto-gptq``'s
    ``GPTQ.fasterquant`` does (``static_groups=False``).

    Args:
        weight: ``(out_features, in_features)``, any floating dtype (computed in float32).
        hessian: ``(in_features, in_features)``, the layer's :func:`gptq_hessian` (used in float32).
        bits: 2..8; the grid has ``maxq + 1 = 2**bits`` levels.
        group_size: columns per group; ``None`` or -1 for one group per row (per output channel). The
            last group may be shorter.
        block_size: columns per lazy batch update.
        damp_percent: the damping, a fraction of the mean diagonal of ``H``.
        act_order: quantize the columns in order of decreasing ``H_jj`` (``desc_act``).
        symmetric: the symmetric grid instead of the asymmetric one.

    Returns:
        ``{"weight", "scales", "zeros", "g_idx"}``: the dequantized weight ``(out_features,
        in_features)`` float32; ``scales`` and ``zeros`` ``(out_features, n_groups)`` float32, group by
        group in the order they were quantized (with ``act_order``, group ``k`` holds the quantized
        columns ``k * group_size ...`` of the permuted order); ``g_idx`` ``(in_features,)`` int32, the
        group of each (original) column. The steps:

        1. *Grid* of a group (``auto-gptq``'s ``Quantizer``, per row of the group's columns ``w``):
           ``lo = min(min(w), 0)``, ``hi = max(max(w), 0)`` (the range always includes 0); symmetric:
           ``hi = max(|lo|, hi)`` and, where ``lo < 0``, ``lo = -hi``; where ``lo == hi == 0``: ``lo,
           hi = -1, 1``. ``scale = (hi - lo) / maxq``; ``zero = round(-lo / scale)``, or ``(maxq + 1) / 2``
           symmetric. A value ``x`` becomes ``scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)``.
        2. *Dead inputs* (``H_jj == 0``): ``H_jj = 1`` and column ``j`` of the weight set to 0.
        3. ``act_order``: permute the columns of ``W`` and both sides of ``H`` by decreasing
           ``diag(H)`` (a stable sort), after step 2; undo the permutation of the result at the end.
        4. *Damping*: add ``damp_percent * mean(diag(H))`` to the diagonal of ``H``. Then ``U`` is the
           upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``).
        5. Columns ``i`` in order, in blocks of ``block_size``: quantize column ``i`` to ``q``, then
           ``err = (w_i - q) / U_ii`` and ``w_j -= err * U_ij`` for the later columns ``j`` of the same
           block, at once; once a block is done, the columns after it get ``w_j -= sum over the
           block's columns i of err_i * U_ij``. (Without blocks this is the optimal-brain-surgeon
           update after each column; blocks give the same numbers, computed lazily.)
        6. *Groups*: per row, the grid of step 1 comes from the whole row of the original weight (before
           steps 2-5). With groups, when column ``c`` starts a group (``c % group_size == 0``, in
           quantization order), that group's grid comes from its columns ``c .. c + group_size - 1`` of
           ``W`` as the lazy updates have left it: updated by every block before the current one but
           not by the current block's earlier columns (``auto-gptq`` reads the matrix that the block
           update writes to). When every group starts a block (``group_size`` a multiple of
           ``block_size``) this is simply the updated weight.

        ``g_idx[j]`` is ``j // group_size``, or with ``act_order`` the position of column ``j`` in the
        permuted order ``// group_size``; per row, all 0. The inputs are not modified.

    Hint:
        ``torch.linalg.cholesky``, ``torch.cholesky_inverse`` and ``torch.linalg.cholesky(...,
        upper=True)``, in that order, give ``U``; follow the steps in the order given, in float32, and the
        numbers match ``auto-gptq``'s to the last bit.
    """
    raise NotImplementedError("Exercise 11.14: implement gptq_quantize in quantization.py")


# -- 11.15 AWQ -----------------------------------------------------------------------------------------
@exercise("11.15", points=3, validate=_validate_awq_search_scales)
def awq_search_scales(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4, group_size: int = 128,
                      n_grid: int = 20) -> dict:
    """AWQ's activation-aware search for per-input-channel scales of one linear layer (Lin et al., 2024),
    as ``autoawq`` 0.2.7's ``AwqQuantizer._search_best_scale`` and ``_compute_best_scale`` run it with
    their defaults (``duo_scaling=True``, zero-point quantization).

    Args:
        weight: ``(out_features, in_features)``, any floating dtype (computed in float32).
        inputs: ``(..., in_features)``, the layer's calibration inputs (computed in float32).
        bits: bits of the zero-point grid, 1..8.
        group_size: columns per group; must divide ``in_features``.
        n_grid: the number of ratios tried: ``0, 1 / n_grid, ..., (n_grid - 1) / n_grid``.

    Returns:
        ``{"scales": (in_features,) float32, "ratio": float, "losses": list of n_grid floats}``, with
        ``X`` the inputs as rows ``(tokens, in_features)``:

        - ``x_mean[j]``: the mean of ``|X[:, j]|``; ``w_mean[j]``: the mean over rows of ``|W_rj|``
          divided by the largest ``|W|`` of its group (plus ``1e-6``).
        - For each ratio ``a``: ``s = clamp(x_mean^a / (w_mean^(1 - a) + 1e-4), min=1e-4)``, then
          normalised: ``s / sqrt(max(s) * min(s))``; an infinite or NaN entry becomes 1.
        - The quantized layer ``W_q = Q(W diag(s)) diag(s)^-1``: ``Q`` the zero-point round to nearest of
          ``autoawq``'s ``pseudo_quantize_tensor`` per group; the division by ``s`` is the inverse scale
          that AWQ folds into the activations.
        - Its loss: the mean over every output entry of ``(X W^T - X W_q^T)^2``, a Python float.
        - ``ratio`` and ``scales``: those of the smallest loss (the first one on a tie).

        The inputs are not modified.

    Hint:
        Group the weight's absolute values with ``reshape(-1, group_size)`` to divide by each group's
        maximum.
    """
    raise NotImplementedError("Exercise 11.15: implement awq_search_scales in quantization.py")


# -- a fake-quantized model (implemented) -----------------------------------------------------------
class _StopForward(Exception):
    """Raised by a hook once the block being calibrated has run: the later blocks need not."""


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of a decoder block by name (``"self_attn.q_proj"``, ``"mlp.down_proj"``...)."""
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


@torch.no_grad()
def capture_inputs(model: nn.Module, block: nn.Module, batches: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """The inputs of each linear layer of ``block`` (one of ``model``'s blocks) when ``model`` reads the
    token batches ``batches`` (each ``(batch, seq)``): ``{name: [(batch, seq, in_features) per batch]}``.
    The model stops after ``block`` (forward hooks)."""
    captured = {name: [] for name in block_linears(block)}

    def keep(name):
        return lambda module, args, output: captured[name].append(args[0].detach().float())

    def stop(module, args, output):
        raise _StopForward

    handles = [m.register_forward_hook(keep(name)) for name, m in block_linears(block).items()]
    handles.append(block.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        for input_ids in batches:
            try:
                model(input_ids=input_ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _validate_quantize_model(model, method, bits, group_size, calibration_batches) -> None:
    from course_lib.language_model import CourseLMForCausalLM

    if not isinstance(model, CourseLMForCausalLM):
        raise TypeError(f"model must be a CourseLMForCausalLM, got {type(model).__name__}")
    if method not in QUANTIZE_METHODS:
        raise ValueError(f"method must be one of {QUANTIZE_METHODS}, got {method!r}")
    _check_int("bits", bits, 2, 8)
    if group_size is not None and group_size != -1:
        _check_int("group_size", group_size, 1)
    if method == "rtn":
        return
    if isinstance(calibration_batches, torch.Tensor) or not isinstance(calibration_batches, Sequence) \
            or not calibration_batches:
        raise TypeError(f"calibration_batches must be a non-empty list of (batch, seq) token id tensors for {method}")
    for i, ids in enumerate(calibration_batches):
        check_tensor(f"calibration_batches[{i}]", ids, integer=True)
        if ids.ndim != 2 or ids.numel() == 0:
            raise ValueError(f"calibration_batches[{i}] must be (batch, seq), got shape {tuple(ids.shape)}")


def quantize_model(model: nn.Module, method: str = "gptq", bits: int = 4, group_size: int | None = 128,
                   calibration_batches: Sequence[torch.Tensor] | None = None, **options) -> nn.Module:
    """A fake-quantized copy of a course model (:class:`~course_lib.language_model.CourseLMForCausalLM`):
    every ``nn.Linear`` of its decoder blocks gets its quantized-and-dequantized weight (same shape and
    dtype); the embeddings, norms and output layer are kept. ``model`` is not modified.

    Args:
        model: the course model.
        method: ``"rtn"`` (round to nearest, zero-point grid: ``autoawq``'s ``pseudo_quantize_tensor``),
            ``"gptq"`` (:func:`gptq_hessian` then :func:`gptq_quantize` per layer) or ``"awq"``
            (:func:`awq_search_scales`, then ``W -> Q(W diag(s)) diag(s)^-1`` with RTN's ``Q``).
        bits: bits per weight.
        group_size: columns per group (``None``: per output channel; AWQ needs a divisor of each
            layer's ``in_features``).
        calibration_batches: token ids, ``(batch, seq)`` tensors (:func:`calibration_data`), for
            GPTQ and AWQ.
        options: passed on to :func:`gptq_quantize` (``block_size``, ``damp_percent``, ``act_order``,
            ``symmetric``) or :func:`awq_search_scales` (``n_grid``).

    GPTQ and AWQ work block by block, as their libraries do: the inputs of a block's linear layers
    are captured (:func:`capture_inputs`) with the earlier blocks already quantized, so that each block
    corrects for the error of the ones before it.
    """
    _validate_quantize_model(model, method, bits, group_size, calibration_batches)
    quantized = copy.deepcopy(model).eval()
    for block in quantized.model.layers:
        linears = block_linears(block)
        inputs = capture_inputs(quantized, block, calibration_batches) if method != "rtn" else {}
        for name, linear in linears.items():
            weight = linear.weight.detach()
            if method == "rtn":
                new = _pseudo_quantize(weight.float(), bits, group_size)
            elif method == "gptq":
                new = gptq_quantize(weight, gptq_hessian(inputs[name]), bits=bits, group_size=group_size,
                                    **options)["weight"]
            else:
                size = weight.shape[1] if group_size in (None, -1) else group_size
                scales = awq_search_scales(weight, torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[name]]),
                                           bits=bits, group_size=size, **options)["scales"].to(weight.device)
                new = _pseudo_quantize(weight.float() * scales, bits, size) / scales
            linear.weight.data = new.to(weight.dtype)
    return quantized


def calibration_data(n: int = 128, seq_len: int = 512, seed: int = 0, tokenizer=None,
                     documents: Sequence[str] | None = None) -> torch.Tensor:
    """``n`` calibration sequences of ``seq_len`` token ids, ``(n, seq_len)`` int64, offline.

    Each is a window of ``seq_len`` consecutive tokens at a random place of a random document long
    enough for it, as GPTQ's and AWQ's calibration loaders cut their text (drawn with
    ``random.Random(seed)``). By default from the ``train`` split of the course corpus
    (:func:`course_lib.corpus.load_corpus`) with the course tokenizer
    (:func:`course_lib.pretraining.course_tokenizer`); ``tokenizer`` (a ``transformers`` tokenizer) and
    ``documents`` (a list of texts) replace them.
    """
    _check_int("n", n, 1)
    _check_int("seq_len", seq_len, 1)
    if tokenizer is None:
        from course_lib.pretraining import course_tokenizer

        tokenizer = course_tokenizer()
    if documents is None:
        from course_lib.corpus import load_corpus

        documents = load_corpus("train")
    rng = random.Random(seed)
    token_ids = {}                                          # document index -> its ids, tokenized once
    order = list(range(len(documents)))
    rng.shuffle(order)
    long_enough = []
    for index in order:                                     # tokenize until n documents fit (or all)
        ids = tokenizer(documents[index], add_special_tokens=False)["input_ids"]
        if len(ids) >= seq_len:
            token_ids[index] = ids
            long_enough.append(index)
        if len(long_enough) >= n:
            break
    if not long_enough:
        raise ValueError(f"no document has {seq_len} tokens: ask for a shorter seq_len")
    rows = []
    for _ in range(n):
        ids = token_ids[rng.choice(long_enough)]
        start = rng.randint(0, len(ids) - seq_len)
        rows.append(ids[start:start + seq_len])
    return torch.tensor(rows, dtype=torch.long)
# == end of part C ==
