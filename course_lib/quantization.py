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

Around the exercises, implemented here: the :class:`QuantizedLinear` module (built from an
``nn.Linear`` by :meth:`QuantizedLinear.from_linear`, its memory counted by
:meth:`QuantizedLinear.weight_bytes`), :func:`quantize_linear_layers` for a whole model, and the
functions the tests call (``quantized_linear_outputs``: plain data in, plain data out).

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
- Inputs are never modified.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F                  # F.linear and unpack_nibbles: for QuantizedLinear.forward (11.6)
from torch import nn

from course_lib.checks import check_tensor
from course_lib.exercises import exercise
from course_lib.lora import pack_nibbles, replace_module, target_matches, unpack_nibbles


# == part A: integer quantization and LLM.int8 ==
GRANULARITIES = ("tensor", "channel", "group")
QUANT_BITS = range(2, 9)                 # absmax_quantize and zero_point_quantize take 2..8 bits
AWQ_MIN_RANGE = 1e-5                     # AutoAWQ's floor on max - min before dividing (zero_point_quantize)
INT8_MAX = 127                           # LLM.int8's scale: a row's absmax maps to +-127
LLM_INT8_THRESHOLD = 6.0                 # the paper's (and bitsandbytes') outlier threshold
QUANTIZED_LINEAR_BITS = (4, 8)           # QuantizedLinear stores 4 bits (two per byte) or 8 bits


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_real(name: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


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
    _check_real("threshold", threshold, 0.0)


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
    _check_real("threshold", threshold, 0.0)


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
        product runs in ``x``'s dtype, as ``torchao``'s ``Int8WeightOnlyConfig`` layer does.

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
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and target_matches(name, target_modules)]
    if not names:
        raise ValueError(f"target_modules {target_modules!r} match no nn.Linear of the model")
    for name in names:
        replace_module(model, name, QuantizedLinear.from_linear(model.get_submodule(name), bits=bits,
                                                                group_size=group_size, symmetric=symmetric))
    return model


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
# == end of part A ==
