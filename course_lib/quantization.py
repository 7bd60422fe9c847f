"""Chapter 11: quantization: integers for weights and activations, LLM.int8, GGUF, GPTQ and AWQ.

A model's weights are numbers in a narrow range, and most of their bits are noise. Quantization
stores them as small integers and a few floating-point scales, and multiplies with the integers (or
dequantizes them on the fly), trading a little accuracy for two to eight times less memory.

- **Integer quantization and LLM.int8** (11.1-11.6): symmetric (absmax) quantization to ``b``-bit
  signed integers with one scale per tensor, per output channel or per group of columns
  (:func:`absmax_quantize`), asymmetric quantization with a zero point as AutoAWQ stores it
  (:func:`zero_point_quantize`), the way back (:func:`dequantize`), vector-wise int8 quantization
  with outlier columns as ``bitsandbytes`` does it (:func:`int8_vectorwise_quant`), the LLM.int8()
  matrix product with its mixed-precision decomposition (:func:`int8_linear`; Dettmers et al., 2022),
  and a weight-only quantized linear layer for inference (:meth:`QuantizedLinear.forward`).
- **GGUF blocks and the .gguf export** (11.7-11.12): the block formats llama.cpp stores weights in,
  byte for byte as ``gguf.quants`` (the Python package of llama.cpp) writes and reads them: Q8_0
  (:func:`quantize_q8_0`, :func:`dequantize_q8_0`: 32 values, a float16 scale and 32 int8), Q4_0
  (:func:`quantize_q4_0`, :func:`dequantize_q4_0`: 32 values, a float16 scale and 16 bytes of 4-bit
  values) and the "K-quant" Q4_K (:func:`quantize_q4_k`, :func:`dequantize_q4_k`: super-blocks of 256
  values in eight sub-blocks of 32, whose scales and minimums are themselves quantized to 6 bits).
  :data:`GGUF_BLOCK_TYPES` tabulates the formats; :func:`write_gguf` writes a course model and its
  tokenizer to a ``.gguf`` file that llama.cpp runs and ``transformers`` loads, quantized by *your*
  11.7/11.9/11.11.
- **GPTQ** (11.13-11.14; Frantar et al., 2022): quantize a layer's weight one input column at a time
  and, after each column, update the columns not yet quantized so that the layer's output on
  calibration inputs changes as little as possible. The update is that of the optimal brain surgeon
  (Hassibi & Stork, 1993) for the layer's quadratic loss, whose Hessian ``H = 2 X^T X`` depends only
  on the inputs (:func:`gptq_hessian`, :func:`gptq_quantize`, as ``auto-gptq`` computes them).
- **AWQ** (11.15; Lin et al., 2024): a few input channels carry large activations and matter most.
  Multiply their weight columns by a factor ``s`` before quantizing (and divide the activations by
  it), with ``s`` searched on a grid of powers of the mean activation magnitude
  (:func:`awq_search_scales`, as ``autoawq`` searches it).

Around the exercises, implemented here: the :class:`QuantizedLinear` module (built from an
``nn.Linear`` by :meth:`QuantizedLinear.from_linear`, its memory counted by
:meth:`QuantizedLinear.weight_bytes`), :func:`quantize_linear_layers` for a whole model, and the
functions the tests call (``quantized_linear_outputs``: plain data in, plain data out); :func:`quantize_model` (a fake-quantized copy of a course model,
every linear layer of its decoder blocks quantized by RTN, GPTQ or AWQ) and :func:`calibration_data`
(token sequences drawn from the course corpus for the calibration).

Conventions used by every exercise of this chapter:

- **Weights** are ``(out_features, in_features)`` as ``nn.Linear`` stores them (``y = x @ W.T + b``).
  A *row* is an output channel. A *group* is ``group_size`` consecutive columns of one row (a run of
  the input dimension), so a row of ``cols`` values has ``cols // group_size`` groups.
- **Scales** are float32 ``(rows, n_groups)`` whatever the granularity: ``(1, 1)`` for one scale per
  tensor, ``(rows, 1)`` for one per row (channel), ``(rows, cols // group_size)`` per group; zero
  points have the same shape, as ``torch.uint8``. A value ``q`` of group ``g`` of row ``r`` stands for
  ``(q - zero_point[r, g]) * scale[r, g]`` (zero point 0 for symmetric quantization).
- **Rounding** is ``torch.round``: to the nearest integer, halves to the even one (``2.5 -> 2``).
- **float32 inside**: float16 and bfloat16 inputs are cast to float32 before anything is computed,
  unless a function says otherwise (:func:`int8_vectorwise_quant` compares its threshold in the input's
  dtype, as ``bitsandbytes`` does).
- **GGUF blocks** (11.7-11.12):

  - **Values in, bytes out.** A quantizer takes a float tensor ``(..., n)`` (any float dtype, read as
    float32) and returns ``torch.uint8`` ``(..., n // block_size * bytes_per_block)``: each row of ``n``
    values is cut into consecutive blocks and each block becomes its bytes, in order. A dequantizer
    takes those bytes and returns float32 ``(..., n)``. Leading dimensions are kept.
  - **Little-endian.** A float16 scale occupies two bytes, low byte first, as ``x.view(torch.uint8)``
    lays it out on every machine PyTorch runs on.
  - **Float32 arithmetic, in the stated order.** Byte equality with the reference needs the same float32
    operations in the same order (``x * (1 / d)`` is not always ``x / d``); each docstring states them.
  - Inputs are never modified.
- Inputs are never modified.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F                  # F.linear and unpack_nibbles: for QuantizedLinear.forward (11.6)
from torch import nn

from course_lib.checks import check_bool, check_int, check_number, check_tensor
from course_lib.exercises import exercise
from course_lib.lora import pack_nibbles, replace_linear_layers, unpack_nibbles


GRANULARITIES = ("tensor", "channel", "group")
QUANT_BITS = range(2, 9)                 # absmax_quantize and zero_point_quantize take 2..8 bits
AWQ_MIN_RANGE = 1e-5                     # AutoAWQ's floor on max - min before dividing (zero_point_quantize)
INT8_MAX = 127                           # LLM.int8's scale: a row's absmax maps to +-127
LLM_INT8_THRESHOLD = 6.0                 # the paper's (and bitsandbytes') outlier threshold
QUANTIZED_LINEAR_BITS = (4, 8)           # QuantizedLinear stores 4 bits (two per byte) or 8 bits


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_float_matrix(name: str, x) -> None:
    check_tensor(name, x, floating=True)
    if x.ndim != 2 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (rows, cols) tensor, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (an inf or NaN makes its whole group's scale inf or NaN)")


def _check_quant_settings(x, bits, granularity, group_size) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in QUANT_BITS:
        raise ValueError(f"bits must be an int from {QUANT_BITS.start} to {QUANT_BITS.stop - 1}, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if x.shape[1] % group_size:
            raise ValueError(f"group_size={group_size} must divide the number of columns of x ({x.shape[1]}): "
                             "every group is group_size consecutive columns of one row")


def _validate_absmax_quantize(x, bits=8, granularity="channel", group_size=128) -> None:
    _check_float_matrix("x", x)
    _check_quant_settings(x, bits, granularity, group_size)


def _validate_zero_point_quantize(x, bits=4, granularity="group", group_size=128) -> None:
    _check_float_matrix("x", x)
    _check_quant_settings(x, bits, granularity, group_size)


def _validate_dequantize(q, scale, zero_point=None) -> None:
    check_tensor("q", q)
    if q.dtype not in (torch.int8, torch.uint8):
        raise TypeError(f"q must be torch.int8 or torch.uint8, got {q.dtype}")
    if q.ndim != 2 or q.numel() == 0:
        raise ValueError(f"q must be a non-empty 2-D (rows, cols) tensor, got shape {tuple(q.shape)}")
    check_tensor("scale", scale, floating=True)
    if scale.ndim != 2 or scale.shape[0] not in (1, q.shape[0]) or scale.shape[1] == 0 \
            or q.shape[1] % scale.shape[1]:
        raise ValueError(f"scale must be (rows, n_groups) with rows 1 or {q.shape[0]} and n_groups dividing "
                         f"{q.shape[1]} (the columns of q), got shape {tuple(scale.shape)}")
    if zero_point is not None:
        check_tensor("zero_point", zero_point, integer=True)
        if zero_point.shape != scale.shape:
            raise ValueError(f"zero_point must have scale's shape {tuple(scale.shape)}, got {tuple(zero_point.shape)}")


def _validate_int8_vectorwise_quant(x, threshold=0.0) -> None:
    _check_float_matrix("x", x)
    check_number("threshold", threshold, 0.0, finite=True)


def _validate_int8_linear(x, weight, bias=None, threshold=LLM_INT8_THRESHOLD) -> None:
    check_tensor("x", x, floating=True, min_ndim=1)
    _check_float_matrix("weight", weight)
    if x.shape[-1] != weight.shape[1] or x.numel() == 0:
        raise ValueError(f"x must be (..., in_features) with in_features={weight.shape[1]} (weight's columns), "
                         f"non-empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    if bias is not None:
        check_tensor("bias", bias, floating=True)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must be (out_features,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_number("threshold", threshold, 0.0, finite=True)


def _validate_quantized_forward(self, x) -> None:
    check_tensor("x", x, floating=True, min_ndim=1)
    if x.shape[-1] != self.in_features:
        raise ValueError(f"x must end in in_features={self.in_features}, got shape {tuple(x.shape)}")


# -- 11.1-11.3 integer quantization ---------------------------------------------------------------------
@exercise("11.1", points=2, validate=_validate_absmax_quantize)
def absmax_quantize(x: torch.Tensor, bits: int = 8, granularity: str = "channel", group_size: int = 128
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (absmax) quantization of a matrix to ``bits``-bit signed integers.

    Args:
        x: float ``(rows, cols)`` (a weight is ``(out_features, in_features)``); float16 and bfloat16 are
            cast to float32 first. Not modified.
        bits: 2 to 8. The integers are ``-qmax .. qmax`` with ``qmax = 2**(bits - 1) - 1`` (127 for 8
            bits, 7 for 4, 1 for 2): a symmetric grid, so ``-2**(bits - 1)`` (-128, -8) is never used.
        granularity: ``"tensor"`` (one scale for all of ``x``), ``"channel"`` (one per row) or
            ``"group"`` (one per ``group_size`` consecutive columns of a row).
        group_size: the columns per group (``"group"`` only; it must divide ``cols``).

    Returns:
        ``(q, scale)``: ``q`` ``torch.int8`` ``(rows, cols)`` and ``scale`` float32 ``(rows, n_groups)``
        (``(1, 1)`` for ``"tensor"``, ``(rows, 1)`` for ``"channel"``, ``(rows, cols // group_size)`` for
        ``"group"``). For each group, ``scale = absmax / qmax`` with ``absmax`` the largest ``|x|`` of the
        group, and ``q = round(x / scale)`` (a true division, halves to even), so the largest value of a
        group becomes ``+-qmax`` and ``q * scale`` is within ``scale / 2`` of ``x``.
        **An all-zero group** has ``scale`` 0 and ``q`` 0 (no division by zero): it dequantizes to 0
        exactly. This is AutoAWQ's ``pseudo_quantize_tensor(zero_point=False)`` wherever a group's absmax
        is at least ``1e-5`` (AutoAWQ raises smaller ones to ``1e-5`` before dividing).

    Hint:
        Reshape ``x`` to ``(rows, n_groups, group_size)`` (``(1, 1, rows * cols)`` for a tensor, ``(rows,
        1, cols)`` for channels), take ``amax`` over the last dimension, and divide where the scale is
        not 0 (``torch.where``).
    """
    raise NotImplementedError("Exercise 11.1: implement absmax_quantize in quantization.py")


@exercise("11.2", points=2, validate=_validate_zero_point_quantize)
def zero_point_quantize(x: torch.Tensor, bits: int = 4, granularity: str = "group", group_size: int = 128
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization with a zero point to ``bits``-bit unsigned integers, as AutoAWQ does it.

    Args:
        x: float ``(rows, cols)``; float16 and bfloat16 are cast to float32 first. Not modified.
        bits: 2 to 8: the integers are ``0 .. qmax`` with ``qmax = 2**bits - 1`` (15 for 4 bits).
        granularity, group_size: as :func:`absmax_quantize` (default: groups of 128 columns).

    Returns:
        ``(q, scale, zero_point)``: ``q`` ``torch.uint8`` ``(rows, cols)``, ``scale`` float32 and
        ``zero_point`` ``torch.uint8``, both ``(rows, n_groups)`` (shapes as :func:`absmax_quantize`).
        For each group with minimum ``lo`` and maximum ``hi``:

        - ``scale = max(hi - lo, 1e-5) / qmax`` (the floor keeps a constant group from dividing by 0),
        - ``zero_point = clamp(-round(lo / scale), 0, qmax)``: the integer that stands for 0.0,
        - ``q = clamp(round(x / scale) + zero_point, 0, qmax)``,

        in float32, ``round`` halves to even. These are AutoAWQ's ``pseudo_quantize_tensor(zero_point=True)``
        scales and zeros, and ``(q - zero_point) * scale`` is its dequantized tensor, to the last bit.
        The clamp of the zero point matters: a group whose values are all positive (``lo > 0``) gets
        ``zero_point`` 0, so its grid starts at 0.0 and values above ``qmax * scale`` are clipped to it
        (AutoAWQ's grid always holds 0.0); likewise an all-negative group gets ``zero_point = qmax``.

    Hint:
        The group view of :func:`absmax_quantize`, with ``amin`` and ``amax``. Cast to ``torch.uint8``
        only after clamping.
    """
    raise NotImplementedError("Exercise 11.2: implement zero_point_quantize in quantization.py")


@exercise("11.3", points=1, validate=_validate_dequantize)
def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 values that quantized integers stand for: ``(q - zero_point) * scale``.

    Args:
        q: ``torch.int8`` or ``torch.uint8`` ``(rows, cols)``. Not modified.
        scale: float32 ``(rows, n_groups)`` or ``(1, n_groups)`` (one set of scales for every row: ``(1,
            1)`` is one scale per tensor), ``n_groups`` dividing ``cols``: group ``g`` of a row is its
            columns ``g * cols // n_groups`` to ``(g + 1) * cols // n_groups - 1``.
        zero_point: integers of ``scale``'s shape, or ``None`` for 0 (symmetric quantization).

    Returns:
        float32 ``(rows, cols)``: ``(q - zero_point) * scale``, each computed in float32 with the scale
        and zero point of the value's group. The inverse of :func:`absmax_quantize` and
        :func:`zero_point_quantize` up to their rounding.

    Hint:
        ``scale.repeat_interleave(cols // n_groups, dim=1)`` gives each column its group's scale
        (``repeat`` would cycle through the groups instead). Subtract in a signed dtype: ``uint8`` wraps
        around below 0.
    """
    raise NotImplementedError("Exercise 11.3: implement dequantize in quantization.py")


# -- 11.4-11.5 LLM.int8 -------------------------------------------------------------------------------------
@exercise("11.4", points=2, validate=_validate_int8_vectorwise_quant)
def int8_vectorwise_quant(x: torch.Tensor, threshold: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise (vector-wise) int8 quantization with outlier columns: ``bitsandbytes.functional.
    int8_vectorwise_quant`` on the CPU, byte for byte.

    Args:
        x: float16, bfloat16 or float32 ``(rows, cols)`` (activations: one row per token; or a weight).
            Not modified.
        threshold: 0 for no outliers; otherwise every value with ``|x| >= threshold`` (compared in
            ``x``'s dtype) is an *outlier*, and every column that holds one is an *outlier column*.

    Returns:
        ``(q, row_stats, outlier_cols)``:

        - ``row_stats`` float32 ``(rows,)``: each row's largest ``|x|`` over its values that are not
          outliers (a row's non-outlier values in an outlier column count).
        - ``q`` ``torch.int8`` ``(rows, cols)``: ``round(x * (127 / row_stats))`` in float32, the row's
          scale ``127 / row_stats`` computed first and *multiplied* (not ``x * 127 / row_stats``: the
          two differ at some halves), halves to even; every outlier column is 0 in every row; a row
          whose ``row_stats`` is 0 is all 0.
        - ``outlier_cols`` ``torch.int64`` ``(k,)``: the outlier columns in increasing order; empty
          when there are none or ``threshold`` is 0 (``bitsandbytes`` returns ``None`` then).

    Hint:
        Find the outliers first, set them to 0 in a copy for the row maxima, then zero the outlier
        columns of ``q``. ``torch.nonzero(mask.any(dim=0)).flatten()`` lists the columns.
    """
    raise NotImplementedError("Exercise 11.4: implement int8_vectorwise_quant in quantization.py")


@exercise("11.5", points=3, validate=_validate_int8_linear)
def int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                threshold: float = LLM_INT8_THRESHOLD) -> torch.Tensor:
    """The LLM.int8() matrix product ``x @ weight.T + bias`` (Dettmers et al., 2022): int8 for most of
    it, floating point for the outlier features of ``x``.

    Args:
        x: float ``(..., in_features)`` (activations; leading dimensions are flattened into rows, one
            per token). Not modified.
        weight: float ``(out_features, in_features)``. Not modified.
        bias: float ``(out_features,)`` or ``None``.
        threshold: the outlier threshold (6.0 in the paper); 0 means no outlier decomposition.

    Returns:
        ``(..., out_features)`` in ``x``'s dtype, computed in float32 and cast at the end from:

        - ``q_x, s_x, cols = int8_vectorwise_quant(x_rows, threshold)`` (your 11.4: per row of ``x``,
          outlier columns taken out) and ``q_w, s_w, _ = int8_vectorwise_quant(weight)`` (per output
          row of the weight, no threshold);
        - the int8 part: ``acc = q_x @ q_w.T`` accumulated in ``torch.int32`` (exact), rescaled by the
          outer product of the row stats: ``acc * (s_x[:, None] * s_w[None, :]) / 127**2``;
        - the outlier part (``cols`` not empty): ``x_rows[:, cols] @ w_cols.T`` in float32 with ``w_cols
          = q_w[:, cols] * s_w[:, None] / 127``, the stored int8 weight's columns dequantized (a layer
          that keeps only the int8 weight has nothing else: ``Linear8bitLt(has_fp16_weights=False)``);
        - plus the bias.

        This is ``bitsandbytes.nn.Linear8bitLt(has_fp16_weights=False, threshold=threshold)`` in eval mode,
        which casts ``x`` and the weight to float16 first: on float16 inputs the two agree to float16
        rounding (and to 2e-5 relative error in float32, from its rescaling constant 6.200124e-05, which
        is 1.8e-5 above 1 / 127**2).

    Hint:
        ``torch.matmul`` has no int8 kernel on every device: ``q_x.to(torch.int32) @ q_w.to(torch.int32).T``
        is exact and runs everywhere.
    """
    raise NotImplementedError("Exercise 11.5: implement int8_linear in quantization.py")


# -- 11.6 a weight-only quantized linear layer ----------------------------------------------------------------
class QuantizedLinear(nn.Module):
    """A linear layer for inference whose weight is stored as ``bits``-bit integers with one float32
    scale (and, asymmetric, one zero point) per group of ``group_size`` input columns of each output row.

    Buffers: ``qweight`` ``torch.uint8``: ``(out_features, in_features // 2)`` for 4 bits, two values per
    byte (Chapter 8's :func:`~course_lib.lora.pack_nibbles` over each row: column ``2j`` in the high
    nibble), ``(out_features, in_features)`` for 8 bits; ``scales`` float32 ``(out_features, n_groups)``;
    ``zeros`` ``torch.uint8`` of the same shape (asymmetric only, :func:`zero_point_quantize`); ``bias``
    float32 ``(out_features,)`` or ``None``. A symmetric layer (:func:`absmax_quantize`) stores ``q +
    2**(bits - 1)``, offset binary as GGUF's Q4_0 stores its nibbles, so that every stored value is an
    unsigned ``bits``-bit integer; a stored 0 (-128 or -8) is allowed though the course's quantizer
    never makes it. ``group_size=None`` is one group per row (per-channel).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 group_size: int | None = 128, symmetric: bool = False):
        super().__init__()
        group_size = in_features if group_size is None else group_size
        if bits not in QUANTIZED_LINEAR_BITS:
            raise ValueError(f"bits must be one of {QUANTIZED_LINEAR_BITS}, got {bits!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
                or in_features % group_size:
            raise ValueError(f"group_size must be a positive int dividing in_features={in_features}, got {group_size!r}")
        if bits == 4 and in_features % 2:
            raise ValueError(f"4-bit weights pack two columns per byte: in_features must be even, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features * bits // 8, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, n_groups))
        self.register_buffer("zeros", None if symmetric else torch.zeros(out_features, n_groups, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int | None = 128,
                    symmetric: bool = False) -> "QuantizedLinear":
        """``linear``'s weight quantized (your 11.1 when ``symmetric``, else 11.2; per group of
        ``group_size`` columns, ``None`` for per channel) and packed (Chapter 8's ``pack_nibbles`` for
        4 bits); its bias kept in float32."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                    group_size=group_size, symmetric=symmetric).to(linear.weight.device)
        weight = linear.weight.detach().float()
        if symmetric:
            q, scales = absmax_quantize(weight, bits, "group", layer.group_size)
            stored, buffers = (q.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8), {"scales": scales}
        else:
            stored, scales, zeros = zero_point_quantize(weight, bits, "group", layer.group_size)
            buffers = {"scales": scales, "zeros": zeros}
        if bits == 4:
            stored = pack_nibbles(stored.flatten()).view(linear.out_features, -1)
        layer.load_buffers(buffers | {"qweight": stored})
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def load_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        """Set ``qweight``, ``scales``, ``zeros`` (and ``bias``) from tensors of the same shapes (copies)."""
        own = dict(self.named_buffers())
        for name, value in buffers.items():
            if own.get(name) is None:
                raise KeyError(f"QuantizedLinear ({'symmetric' if self.symmetric else 'asymmetric'}"
                               f"{', no bias' if self.bias is None else ''}) has no buffer {name!r}")
            if own[name].shape != value.shape:
                raise ValueError(f"{name} must have shape {tuple(own[name].shape)}, got {tuple(value.shape)}")
            setattr(self, name, value.detach().to(device=own[name].device, dtype=own[name].dtype).clone())

    def weight_bytes(self) -> int:
        """Bytes of what stands for the weight: the packed integers, the float32 scales and the zero
        points (the bias is not counted: an ``nn.Linear`` has it too)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros) if t is not None)

    @exercise("11.6", points=2, validate=_validate_quantized_forward, entry="quantized_linear_outputs")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``x`` ``(..., in_features)``: ``(..., out_features)`` in ``x``'s dtype.

        The weight is dequantized on the fly, never kept: the stored integers unpacked (4 bits: Chapter
        8's ``unpack_nibbles``, high nibble first, into ``(out_features, in_features)``), a symmetric
        layer's offset ``2**(bits - 1)`` subtracted (its integers are then signed), and your
        :func:`dequantize` with ``scales`` (and ``zeros``) gives the float32 weight ``W``. The output is
        ``F.linear(x, W.to(x.dtype), bias.to(x.dtype))`` (no bias term when ``bias`` is ``None``): the
        product runs in ``x``'s dtype, as PyTorch's weight-only int8 kernel (``torch._weight_int8pack_mm``) does.

        Hint:
            ``unpack_nibbles`` takes and returns 1-D tensors: unpack ``qweight.flatten()`` and ``view`` the
            result as the weight. Subtract the offset in ``torch.int16`` before casting to ``torch.int8``.
        """
        raise NotImplementedError("Exercise 11.6: implement QuantizedLinear.forward in quantization.py")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric}")


@torch.no_grad()
def quantize_linear_layers(model: nn.Module, target_modules: str | Sequence[str], *, bits: int = 4,
                           group_size: int | None = 128, symmetric: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` whose name matches ``target_modules`` (Chapter 8's
    ``target_matches``) by a :class:`QuantizedLinear` (:meth:`QuantizedLinear.from_linear`), in place.
    Returns ``model``."""
    return replace_linear_layers(model, target_modules, lambda linear: QuantizedLinear.from_linear(
        linear, bits=bits, group_size=group_size, symmetric=symmetric))


def run_quantized_linear(layer_class: type, buffers: dict[str, torch.Tensor], in_features: int, out_features: int,
                         x: torch.Tensor, *, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                         bias: torch.Tensor | None = None) -> dict:
    """Build ``layer_class`` (:class:`QuantizedLinear` or a variant) from its quantized state ``buffers``
    (``qweight``, ``scales`` and, asymmetric, ``zeros``) and ``bias``, and run ``x`` through it without
    gradients. Returns ``{"output": ...}``."""
    layer = layer_class(in_features, out_features, bias is not None, bits=bits, group_size=group_size,
                        symmetric=symmetric).to(x.device)
    layer.load_buffers(dict(buffers) | ({} if bias is None else {"bias": bias}))
    with torch.no_grad():
        return {"output": layer(x)}


def quantized_linear_outputs(buffers: dict[str, torch.Tensor], in_features: int, out_features: int, x: torch.Tensor,
                             *, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                             bias: torch.Tensor | None = None) -> dict:
    """How the tests run your :meth:`QuantizedLinear.forward` (11.6): :func:`run_quantized_linear` of
    :class:`QuantizedLinear`."""
    return run_quantized_linear(QuantizedLinear, buffers, in_features, out_features, x, bits=bits,
                                group_size=group_size, symmetric=symmetric, bias=bias)


QK4_0 = QK8_0 = 32          # values per Q4_0 / Q8_0 block
QK_K = 256                  # values per K-quant super-block
K_SUBBLOCK = 32             # values per Q4_K sub-block (8 per super-block)
# name: (values per block, bytes per block), as gguf.GGML_QUANT_SIZES; bits per weight = 8 * bytes / values
GGUF_BLOCK_TYPES = {"F32": (1, 4), "F16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_K": (256, 144)}
GGUF_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 15}   # general.file_type (LlamaFileType)
GGUF_TEMPLATE_TAGS = ("{%- generation -%}", "{%- endgeneration -%}", "{% generation %}", "{% endgeneration %}")
LLAMA_CPP_COMMAND = 'llama-completion -m {path} -p "{prompt}" -n 32 --temp 0 -no-cnv'


def gguf_bits_per_weight(qtype: str) -> float:
    """Bits a weight costs in block type ``qtype`` (scales included): ``8 * bytes / values`` per block."""
    if qtype not in GGUF_BLOCK_TYPES:
        raise ValueError(f"qtype must be one of {sorted(GGUF_BLOCK_TYPES)}, got {qtype!r}")
    values, nbytes = GGUF_BLOCK_TYPES[qtype]
    return 8 * nbytes / values


def _check_values(x, block_size: int) -> None:
    check_tensor("x", x, floating=True, min_ndim=1)
    if x.shape[-1] == 0 or x.shape[-1] % block_size:
        raise ValueError(f"x's last dimension must be a positive multiple of {block_size} (whole blocks), "
                         f"got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (an inf or NaN makes its block's scale inf or NaN)")


def _check_blocks(data, qtype: str) -> None:
    check_tensor("data", data, min_ndim=1)
    if data.dtype != torch.uint8:
        raise TypeError(f"data must be torch.uint8 bytes, got {data.dtype}")
    nbytes = GGUF_BLOCK_TYPES[qtype][1]
    if data.shape[-1] == 0 or data.shape[-1] % nbytes:
        raise ValueError(f"data's last dimension must be a positive multiple of {nbytes} (whole {qtype} blocks "
                         f"of {nbytes} bytes), got shape {tuple(data.shape)}")


def _validate_quantize_q8_0(x) -> None:
    _check_values(x, QK8_0)


def _validate_dequantize_q8_0(data) -> None:
    _check_blocks(data, "Q8_0")


def _validate_quantize_q4_0(x) -> None:
    _check_values(x, QK4_0)


def _validate_dequantize_q4_0(data) -> None:
    _check_blocks(data, "Q4_0")


def _validate_quantize_q4_k(x) -> None:
    _check_values(x, QK_K)


def _validate_dequantize_q4_k(data) -> None:
    _check_blocks(data, "Q4_K")


@exercise("11.7", points=2, validate=_validate_quantize_q8_0)
def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """Q8_0: blocks of 32 values as a float16 scale and 32 signed bytes, as ``gguf.quants.quantize(x,
    GGMLQuantizationType.Q8_0)`` (and llama.cpp's ``quantize_row_q8_0_ref``) writes them.

    Args:
        x: float ``(..., n)`` with ``n`` a positive multiple of 32, finite; any float dtype is read as
            float32 first. Not modified.

    Returns:
        ``torch.uint8`` ``(..., n // 32 * 34)``. For each block of 32 consecutive values of a row, 34
        bytes: the scale ``d`` as float16 (2 bytes, little-endian), then ``q[0..31]`` as int8 (two's
        complement). All arithmetic in float32:

        - ``d = max(|x_i|) / 127``;
        - ``q_i = round(x_i * id)`` with ``id = 1 / d`` (``id = 0`` when ``d == 0``), *round half away
          from zero* (C's ``roundf``: ``2.5 -> 3``, ``-0.5 -> -1``) computed exactly, so that
          ``0.49999997 -> 0``;
        - ``q`` uses the float32 ``d``; only the stored copy of ``d`` is rounded to float16.

        An all-zero block is ``d = 0`` and ``q = 0``.

    Hint:
        Reshape to ``(..., n // 32, 32)``. ``torch.round`` rounds halves to even, and ``floor(|v| +
        0.5)`` is wrong for ``0.49999997`` (the sum rounds up to 1): truncate, then step away from
        zero where the dropped fraction ``|v - trunc(v)|`` is at least 0.5. ``t.half().view(torch.uint8)``
        gives a float16's two bytes; ``torch.cat`` the scale bytes before the values.
    """
    raise NotImplementedError("Exercise 11.7: implement quantize_q8_0 in quantization.py")


@exercise("11.8", points=1, validate=_validate_dequantize_q8_0)
def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """The values that Q8_0 bytes stand for, as ``gguf.quants.dequantize(data, GGMLQuantizationType.Q8_0)``.

    Args:
        data: ``torch.uint8`` ``(..., m)`` with ``m`` a positive multiple of 34 (whole blocks, as
            :func:`quantize_q8_0` returns them). Not modified.

    Returns:
        float32 ``(..., m // 34 * 32)``: block by block, ``d * q_i`` with ``d`` the block's float16
        scale (its first two bytes, little-endian) converted to float32 and ``q_i`` its next 32 bytes
        read as int8.

    Hint:
        ``bytes.view(torch.float16)`` and ``bytes.view(torch.int8)`` reinterpret bytes without copying
        (the last dimension must be contiguous: slice, then ``.contiguous()``).
    """
    raise NotImplementedError("Exercise 11.8: implement dequantize_q8_0 in quantization.py")


@exercise("11.9", points=2, validate=_validate_quantize_q4_0)
def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    """Q4_0: blocks of 32 values as a float16 scale and 16 bytes of 4-bit values, as
    ``gguf.quants.quantize(x, GGMLQuantizationType.Q4_0)`` (llama.cpp's ``quantize_row_q4_0_ref``).

    Args:
        x: float ``(..., n)`` with ``n`` a positive multiple of 32, finite (read as float32). Not modified.

    Returns:
        ``torch.uint8`` ``(..., n // 32 * 18)``: per block, 2 bytes of float16 ``d`` then 16 bytes of
        nibbles. In float32:

        - ``m`` is the block's value of largest magnitude *with its sign* (the first one on a tie of
          magnitudes) and ``d = m / -8``: ``m`` itself becomes level 0, i.e. ``-8 * d``, exactly;
        - ``id = 1 / d`` (0 when ``d == 0``) and ``q_i = min(15, trunc(x_i * id + 8.5))``: the value
          ``(q_i - 8) * d`` nearest to ``x_i``, halves rounded up, with the positive end clipped to 7;
        - byte ``j`` (``j = 0..15``) holds ``q_j`` in its *low* nibble and ``q_{j+16}`` in its *high*
          nibble: the first 16 values in the low halves, the last 16 in the high halves.

        An all-zero block is ``d = 0`` and every ``q = 8``.

    Hint:
        ``torch.argmax`` of ``|x|`` along the block and ``gather`` give ``m``. The nibble order is not
        that of ``bitsandbytes`` (Chapter 8's :func:`~course_lib.lora.pack_nibbles`, pairs of
        neighbours, first in the high half): ``q[..., :16] | (q[..., 16:] << 4)``.
    """
    raise NotImplementedError("Exercise 11.9: implement quantize_q4_0 in quantization.py")


@exercise("11.10", points=1, validate=_validate_dequantize_q4_0)
def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """The values that Q4_0 bytes stand for, as ``gguf.quants.dequantize(data, GGMLQuantizationType.Q4_0)``.

    Args:
        data: ``torch.uint8`` ``(..., m)`` with ``m`` a positive multiple of 18. Not modified.

    Returns:
        float32 ``(..., m // 18 * 32)``: per block, ``d * (q_i - 8)`` with ``d`` the float16 scale of
        its first two bytes and ``q_0..q_15`` the low nibbles, ``q_16..q_31`` the high nibbles of its
        other 16 bytes.

    Hint:
        ``qs & 0x0F`` and ``qs >> 4``, concatenated (not interleaved) along the block.
    """
    raise NotImplementedError("Exercise 11.10: implement dequantize_q4_0 in quantization.py")


@exercise("11.11", points=3, validate=_validate_quantize_q4_k)
def quantize_q4_k(x: torch.Tensor) -> torch.Tensor:
    """Q4_K: super-blocks of 256 values in llama.cpp's ``block_q4_K`` layout (4.5 bits per weight, as
    Q4_0), quantized by the min/max rule below.

    Args:
        x: float ``(..., n)`` with ``n`` a positive multiple of 256, finite (read as float32). Not modified.

    Returns:
        ``torch.uint8`` ``(..., n // 256 * 144)``. Each super-block is eight sub-blocks of 32 values
        (``j = 0..7``); value ``i`` of sub-block ``j`` stands for ``D_j * q_ji - M_j`` with a 4-bit
        ``q`` and ``D_j = d * sc_j``, ``M_j = dmin * m_j`` for 6-bit ``sc_j, m_j``. All in float32:

        1. Per sub-block: ``lo_j = min(0, min_i x_ji)`` (the range always holds 0, as llama.cpp's),
           ``scale_j = (max_i x_ji - lo_j) / 15`` and ``min_j = -lo_j`` (>= 0).
        2. ``S = max_j scale_j``, ``N = max_j min_j``; ``d = S / 63`` and ``dmin = N / 63``, each
           stored as float16.
        3. ``sc_j = min(63, round((63 / S) * scale_j))`` and ``m_j = min(63, round((63 / N) * min_j))``
           (0 where ``S`` or ``N`` is 0), *round half to even* (llama.cpp's ``nearest_int``).
        4. With the stored scales, ``D_j = float32(d) * sc_j`` and ``M_j = float32(dmin) * m_j``, each
           value is rounded again: ``q_ji = clamp(round((x_ji + M_j) / D_j), 0, 15)`` (half to even;
           ``q = 0`` where ``D_j == 0``).

        The 144 bytes: ``d`` and ``dmin`` as float16 (2 + 2 bytes), then 12 bytes of scales, then 128
        bytes of nibbles.

        - Scales: for ``j < 4`` byte ``j`` is ``sc_j`` and byte ``j + 4`` is ``m_j`` (low 6 bits); for
          ``j >= 4`` byte ``j + 4`` is ``(sc_j & 15) | (m_j & 15) << 4`` and the top two bits of
          ``sc_j`` and ``m_j`` go to the top two bits of bytes ``j - 4`` and ``j``:
          ``sc_j >> 4 << 6`` and ``m_j >> 4 << 6``.
        - Nibbles: four runs of 32 bytes; run ``r`` holds sub-block ``2r`` in the low nibbles and
          sub-block ``2r + 1`` in the high nibbles (byte ``i`` of run ``r``: ``q_{2r,i} | q_{2r+1,i} << 4``).

        ``gguf.quants.dequantize(bytes, GGMLQuantizationType.Q4_K)`` and your :func:`dequantize_q4_k`
        read them as the same values. llama.cpp's own quantizer (``quantize_row_q4_K_ref``) stores
        the same layout, but chooses each sub-block's ``scale_j, min_j`` by ``make_qkx2_quants``: it
        starts from this min/max and then tries 20 slightly shrunk or stretched ranges, refitting
        scale and minimum by least squares (weighted by ``x^2`` plus the block's mean square) and
        keeping the best; with an importance matrix (``llama-quantize --imatrix``) the weights come
        from activations instead. This rule skips that search.

    Hint:
        Work on ``(..., n // 256, 8, 32)``. Make ``sc`` and ``m`` integer tensors of shape ``(..., 8)``
        and build the 12 bytes from their first and last four; the top two bits of a 6-bit number are
        ``v >> 4``.
    """
    raise NotImplementedError("Exercise 11.11: implement quantize_q4_k in quantization.py")


@exercise("11.12", points=2, validate=_validate_dequantize_q4_k)
def dequantize_q4_k(data: torch.Tensor) -> torch.Tensor:
    """The values that Q4_K bytes stand for, as ``gguf.quants.dequantize(data, GGMLQuantizationType.Q4_K)``.

    Args:
        data: ``torch.uint8`` ``(..., m)`` with ``m`` a positive multiple of 144 (the layout of
            :func:`quantize_q4_k`). Not modified.

    Returns:
        float32 ``(..., m // 144 * 256)``: value ``i`` of sub-block ``j`` is ``(d * sc_j) * q_ji -
        (dmin * m_j)``, with ``d, dmin`` the two float16 numbers converted to float32, the 6-bit
        ``sc_j, m_j`` unpacked from the 12 scale bytes and the 4-bit ``q`` from the 128 nibble bytes,
        both as :func:`quantize_q4_k` packs them; the products and the difference in that order, in float32.

    Hint:
        For ``j >= 4``: ``sc_j = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4`` and ``m_j = (b[j + 4] >> 4) |
        (b[j] >> 6) << 4``. Widen bytes to ``torch.int32`` before shifting left.
    """
    raise NotImplementedError("Exercise 11.12: implement dequantize_q4_k in quantization.py")


# -- the .gguf export -------------------------------------------------------------------------------------
def quantize_gguf_tensor(weight: torch.Tensor, qtype: str) -> tuple[str, torch.Tensor]:
    """``(type, data)`` of one tensor as :func:`write_gguf` stores it in a file of type ``qtype``.

    1-D tensors (norms) stay float32. A matrix is stored in ``qtype`` by the chapter's quantizers
    (:func:`quantize_q8_0`, :func:`quantize_q4_0`, :func:`quantize_q4_k`: your code, in student mode)
    when its rows are whole blocks, else as float16, as llama.cpp's converter and ``llama-quantize``
    fall back; ``"F32"``/``"F16"`` files store matrices as float32/float16. ``data`` is ``torch.uint8``
    for a quantized type and float32/float16 otherwise, shaped ``(rows, bytes)`` or ``(rows, n)``.
    """
    if qtype not in GGUF_FILE_TYPES:
        raise ValueError(f"qtype must be one of {sorted(GGUF_FILE_TYPES)}, got {qtype!r}")
    weight = weight.detach().float().cpu()
    if weight.ndim < 2 or qtype == "F32":
        return "F32", weight.contiguous()
    block_size = GGUF_BLOCK_TYPES[qtype][0]
    if qtype == "F16" or weight.shape[-1] % block_size:
        return "F16", weight.half().contiguous()
    quantizer = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_K": quantize_q4_k}[qtype]
    return qtype, quantizer(weight)


def llama_cpp_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The rows of a q or k projection ``(n_head * head_dim, d)`` in llama.cpp's order.

    Hugging Face's Llama rotates the two *halves* of each head (``rotate_half``); llama.cpp's RoPE
    rotates neighbouring *pairs*. Its converter (``LlamaModel.permute`` in ``convert_hf_to_gguf.py``)
    reorders each head's rows from ``[first half, second half]`` to interleaved pairs, so the same
    weights give the same attention; ``transformers`` undoes it when it loads a GGUF file.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def _gguf_tensor_name(name: str) -> str:
    """llama.cpp's name for a parameter of a Llama-style course model (``"blk.0.attn_q.weight"``)."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in names:
        return names[name]
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    parts = name.split(".")   # model.layers.{i}.{module...}.weight
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:-1]) in layer:
        return f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
    raise ValueError(f"no GGUF name for parameter {name!r} of a Llama-style model")


def gguf_chat_template(template: str) -> str:
    """A chat template without ``{% generation %}`` marks: they only tell ``transformers`` which tokens
    are the assistant's (for training masks), and llama.cpp's Jinja engine does not know the tag."""
    for tag in GGUF_TEMPLATE_TAGS:
        template = template.replace(tag, "")
    return template


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary: tokens in id order, their
    types (control for special tokens, else normal), merges, special ids, chat template."""
    import json

    from gguf import TokenType

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        raise ValueError(f"only a byte-level BPE tokenizer converts to GGUF's 'gpt2' model, got {model['type']}")
    vocab = tokenizer.get_vocab()
    if len(vocab) != vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab)} tokens for the model's vocab_size={vocab_size}")
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")         # GPT-2's split pattern: that of the course tokenizer (Chapter 1)
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for add, token in ((writer.add_bos_token_id, tokenizer.bos_token), (writer.add_eos_token_id, tokenizer.eos_token),
                       (writer.add_pad_token_id, tokenizer.pad_token)):
        if token is not None:
            add(vocab[token])
    writer.add_add_bos_token(False)           # the course tokenizer adds no special tokens when encoding
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(gguf_chat_template(tokenizer.chat_template))


def write_gguf(model, tokenizer, path: Path | str, qtype: str = "Q8_0", name: str = "course-lm") -> Path:
    """Write a Llama-style course model and its tokenizer to a ``.gguf`` file, as llama.cpp's
    ``convert_hf_to_gguf.py`` (and ``llama-quantize``) would.

    Args:
        model: a :class:`~course_lib.language_model.CourseLMForCausalLM` of Llama style (RMSNorm,
            SwiGLU, RoPE, no biases).
        tokenizer: its ``transformers`` byte-level BPE tokenizer, ``len(tokenizer) == vocab_size``
            (the course tokenizer).
        path: the file to write (its folder is created).
        qtype: ``"F32"``, ``"F16"``, ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_K"``: how matrices are stored
            (see :func:`quantize_gguf_tensor`: norms stay float32, a matrix whose rows are not whole
            blocks becomes float16).
        name: ``general.name``.

    The file holds architecture ``llama`` with its metadata (context, embedding and feed-forward
    lengths, block count, head counts, key/value lengths, RoPE base and dimensions, RMSNorm epsilon,
    vocabulary size, file type), the tokenizer (:func:`gguf_chat_template`) and the tensors under
    llama.cpp's names, q and k rows permuted (:func:`llama_cpp_permute`); tied embeddings are written
    once (no ``output.weight``). Run it with llama.cpp::

        llama-completion -m course.gguf -p "Once upon a time" -n 32 --temp 0 -no-cnv

    (:data:`LLAMA_CPP_COMMAND`; builds before llama.cpp split raw completion out of ``llama-cli``
    take the same arguments as ``llama-cli``), or load it with ``transformers``:
    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name)``.

    Returns:
        The path written.
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    from course_lib.language_model import course_config_to_llama

    if qtype not in GGUF_FILE_TYPES:
        raise ValueError(f"qtype must be one of {sorted(GGUF_FILE_TYPES)}, got {qtype!r}")
    config = model.config
    course_config_to_llama(config)            # refuses a model that is not Llama style
    if config.attention_bias or config.mlp_bias:
        raise ValueError("llama.cpp's llama architecture has no biases: attention_bias and mlp_bias must be False")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(GGUF_FILE_TYPES[qtype])
    writer.add_quantization_version(2)
    _add_tokenizer(writer, tokenizer, config.vocab_size)

    for param_name, weight in model.state_dict().items():
        if param_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if param_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in param_name else config.num_key_value_heads
            weight = llama_cpp_permute(weight, heads)
        kind, data = quantize_gguf_tensor(weight, qtype)
        # quantized bytes go in as raw uint8 rows: gguf works out the logical shape from the type
        writer.add_tensor(_gguf_tensor_name(param_name), data.numpy(), raw_dtype=GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_gguf(path: Path | str):
    """The model of a ``.gguf`` file as ``transformers`` loads it (``from_pretrained(folder, gguf_file=name)``:
    a ``LlamaForCausalLM`` with every tensor dequantized to float32), in eval mode. Its GGUF loader draws a
    progress bar whatever ``transformers``' logging settings say (a widget in a notebook); it is switched
    off while the file loads."""
    import transformers.modeling_gguf_pytorch_utils as gguf_loader
    from transformers import AutoModelForCausalLM

    path = Path(path)
    progress_bar = gguf_loader.tqdm
    gguf_loader.tqdm = lambda iterable, **kwargs: iterable
    try:
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    finally:
        gguf_loader.tqdm = progress_bar


QUANTIZE_METHODS = ("rtn", "gptq", "awq")


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """``weight`` (out, in) quantized to ``bits`` by round to nearest on the zero-point grid and back,
    float32: your :func:`zero_point_quantize` (per group of ``group_size`` columns, or per output channel
    for ``None`` or -1) then your :func:`dequantize`. RTN, the baseline of GPTQ and AWQ."""
    if group_size in (None, -1):
        return dequantize(*zero_point_quantize(weight, bits, "channel"))
    return dequantize(*zero_point_quantize(weight, bits, "group", group_size))


def layer_group_size(group_size: int | None, in_features: int) -> int | None:
    """The group size :func:`quantize_model` uses for a layer of ``in_features`` columns: ``group_size``
    when it divides them, else their greatest common divisor (the course model's ``down_proj`` has 688
    columns: groups of 16 when 32 are asked for); ``None`` (per output channel) stays ``None``."""
    if group_size in (None, -1):
        return None
    return math.gcd(group_size, in_features)


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
    check_int("bits", bits, 2, 8)
    if group_size is not None and group_size != -1:
        check_int("group_size", group_size, 1)
    check_int("block_size", block_size, 1)
    check_number("damp_percent", damp_percent, 0.0, 1.0, open_maximum=True)
    check_bool("act_order", act_order)
    check_bool("symmetric", symmetric)


def _validate_awq_search_scales(weight, inputs, bits=4, group_size=128, n_grid=20) -> None:
    _check_weight(weight)
    check_tensor("inputs", inputs, floating=True)
    if inputs.ndim < 2 or inputs.shape[-1] != weight.shape[1]:
        raise ValueError(f"inputs must be (..., in_features) with in_features = {weight.shape[1]}, got shape "
                         f"{tuple(inputs.shape)}")
    _check_finite("inputs", inputs)
    check_int("bits", bits, 1, 8)
    check_int("group_size", group_size, 1)
    if weight.shape[1] % group_size:
        raise ValueError(f"group_size must divide in_features ({weight.shape[1]}), got {group_size}")
    check_int("n_grid", n_grid, 1)


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
        - The quantized layer ``W_q = Q(W diag(s)) diag(s)^-1``: ``Q`` is :func:`round_to_nearest` per
          group (your 11.2 and 11.3: ``autoawq``'s ``pseudo_quantize_tensor``); the division by ``s`` is
          the inverse scale that AWQ folds into the activations.
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
    check_int("bits", bits, 2, 8)
    if group_size is not None and group_size != -1:
        check_int("group_size", group_size, 1)
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
        method: ``"rtn"`` (:func:`round_to_nearest`),
            ``"gptq"`` (:func:`gptq_hessian` then :func:`gptq_quantize` per layer) or ``"awq"``
            (:func:`awq_search_scales`, then ``W -> Q(W diag(s)) diag(s)^-1`` with RTN's ``Q``).
        bits: bits per weight.
        group_size: columns per group (``None``: per output channel); a layer whose ``in_features`` it
            does not divide gets :func:`layer_group_size`.
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
            size = layer_group_size(group_size, weight.shape[1])
            if method == "rtn":
                new = round_to_nearest(weight, bits, size)
            elif method == "gptq":
                new = gptq_quantize(weight, gptq_hessian(inputs[name]), bits=bits, group_size=size,
                                    **options)["weight"]
            else:
                size = size or weight.shape[1]
                scales = awq_search_scales(weight, torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[name]]),
                                           bits=bits, group_size=size, **options)["scales"].to(weight.device)
                new = round_to_nearest(weight.float() * scales, bits, size) / scales
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
    check_int("n", n, 1)
    check_int("seq_len", seq_len, 1)
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


# -- what each method costs the course model (implemented) --------------------------------------------------
GGUF_DEQUANTIZERS = {"Q8_0": "dequantize_q8_0", "Q4_0": "dequantize_q4_0", "Q4_K": "dequantize_q4_k"}
SWEEP_VERSION = 1
SWEEP_GROUP_SIZE = 32
# (method, bits, group size): RTN, GPTQ and AWQ at 4, 3 and 2 bits in groups of 32 and at 2 bits per output
# channel (where they differ most), RTN at 8 bits
SWEEP_SETTINGS = (("rtn", 8, SWEEP_GROUP_SIZE),
                  *((method, bits, SWEEP_GROUP_SIZE) for bits in (4, 3, 2) for method in QUANTIZE_METHODS),
                  *((method, 2, None) for method in QUANTIZE_METHODS))
SWEEP_GGUF = ("Q8_0", "Q4_K", "Q4_0")
SWEEP_CALIBRATION = {"n": 16, "seq_len": 128, "seed": 0}                 # 2,048 tokens of the training split


def gguf_round_trip(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    """``weight`` stored as :func:`write_gguf` stores it in a ``qtype`` file and read back, float32 (a
    matrix whose rows are not whole blocks comes back from float16)."""
    kind, data = quantize_gguf_tensor(weight, qtype)
    if kind in ("F32", "F16"):
        return data.float()
    return globals()[GGUF_DEQUANTIZERS[kind]](data)


def gguf_quantize_model(model: nn.Module, qtype: str) -> nn.Module:
    """A fake-quantized copy of a course model whose decoder's linear layers hold their ``qtype`` round
    trip (:func:`gguf_round_trip`); embeddings, norms and output layer kept, as :func:`quantize_model` does."""
    quantized = copy.deepcopy(model).eval()
    for block in quantized.model.layers:
        for linear in block_linears(block).values():
            linear.weight.data = gguf_round_trip(linear.weight.detach(), qtype).to(linear.weight.dtype)
    return quantized


def linear_bits_per_weight(model: nn.Module, method: str, bits: int | None = None,
                           group_size: int | None = SWEEP_GROUP_SIZE) -> float:
    """What a weight of the decoder's linear layers costs, scales included, averaged over their weights.

    ``method`` a GGUF type (``"Q4_0"``...): :func:`gguf_bits_per_weight`, 16 for a matrix whose rows are not
    whole blocks (stored as float16). Otherwise ``bits`` plus, per group of :func:`layer_group_size`
    columns, a float16 scale and a ``bits``-wide zero point, as GPTQ and AWQ checkpoints store them."""
    total_bits = total = 0
    for block in model.model.layers:
        for linear in block_linears(block).values():
            rows, cols = linear.weight.shape
            if method in GGUF_BLOCK_TYPES:
                per_weight = gguf_bits_per_weight(method) if cols % GGUF_BLOCK_TYPES[method][0] == 0 else 16.0
            else:
                per_weight = bits + (16 + bits) / (layer_group_size(group_size, cols) or cols)
            total_bits += per_weight * rows * cols
            total += rows * cols
    return total_bits / total


def quantization_sweep(size: str = "cpu", progress: bool = False) -> dict:
    """The course's pretrained model quantized with each setting of :data:`SWEEP_SETTINGS` (GPTQ and AWQ
    calibrated on :data:`SWEEP_CALIBRATION`) and in each GGUF type of :data:`SWEEP_GGUF`, each scored on the test corpus (Chapter 10's
    :func:`~course_lib.evaluation.corpus_scores`, windows of 128 tokens without overlap). Computed once
    and cached in the course cache, keyed by the model's folder and the code that quantizes and scores.

    Returns ``{"rows": [{"method", "bits", "group_size", "bits_per_weight", "perplexity", "bits_per_byte",
    "seconds"}], "calibration_tokens"}``: the float model first (``"method": "float32"``), ``seconds`` the
    CPU time the quantization took (``group_size`` ``None``: per output channel)."""
    import json
    import time

    from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic
    from course_lib.evaluation import corpus_scores
    from course_lib.pretraining import implementation_key, pretrained_course_lm, pretrained_model_dir

    key = cache_key(SWEEP_VERSION, pretrained_model_dir(size).name, SWEEP_SETTINGS, SWEEP_GGUF, SWEEP_CALIBRATION, implementation_key(("lora", "evaluation", "quantization")))
    path = cache_entry("quantization", f"sweep-{size}-{key}.json")
    with building(path):
        result = read_json(path)
        if result is None:
            model, tokenizer = pretrained_course_lm(size, progress=progress)
            calibration = list(calibration_data(**SWEEP_CALIBRATION, tokenizer=tokenizer).split(8))

            def row(method, bits, group_size, quantized, seconds):
                scores = corpus_scores(quantized, tokenizer, stride=128)
                bits_per_weight = (32.0 if quantized is model
                                   else linear_bits_per_weight(model, method, bits, group_size))
                return {"method": method, "bits": bits, "group_size": group_size, "bits_per_weight": bits_per_weight,
                        "seconds": seconds, "perplexity": scores["perplexity"], "bits_per_byte": scores["bits_per_byte"]}

            rows = [row("float32", 32, None, model, 0.0)]
            for method, bits, group_size in SWEEP_SETTINGS:
                started = time.process_time()
                quantized = quantize_model(model, method, bits, group_size, calibration)
                rows.append(row(method, bits, group_size, quantized, time.process_time() - started))
            for qtype in SWEEP_GGUF:
                started = time.process_time()
                quantized = gguf_quantize_model(model, qtype)
                rows.append(row(qtype, None, GGUF_BLOCK_TYPES[qtype][0], quantized, time.process_time() - started))
            result = {"rows": rows, "calibration_tokens": SWEEP_CALIBRATION["n"] * SWEEP_CALIBRATION["seq_len"]}
            write_atomic(path, json.dumps(result))
    return result
