"""Chapter 8: parameter-efficient fine-tuning, LoRA and QLoRA.

Full fine-tuning (Chapter 7) trains every weight and keeps, for each one, a gradient and two AdamW
moments. LoRA (Hu et al., 2022) freezes the pretrained weight ``W`` of a linear layer and learns a
low-rank change instead, ``W + (alpha / r) * B @ A`` with ``A`` of shape ``(r, in_features)`` and
``B`` of shape ``(out_features, r)``: a few thousand numbers per layer instead of millions, because
the change a fine-tune makes has a low "intrinsic dimension" (Aghajanyan et al., 2021). QLoRA
(Dettmers et al., 2023) also stores the frozen ``W`` in 4 bits, in the NormalFloat (NF4) format, with
the block scales quantized once more (double quantization), and computes in a 16- or 32-bit
*compute dtype*.

- **LoRA** (8.1-8.8): the initialisation (:func:`init_lora_weights`: ``A`` Kaiming-uniform as
  ``peft`` draws it, ``B`` zero, so the model starts unchanged), the scale ``alpha / r`` or rsLoRA's
  ``alpha / sqrt(r)`` (:func:`lora_scaling`, Kalajdzievski, 2023), the layer's forward pass
  (:meth:`LoRALinear.forward`, dropout on the LoRA path only), target modules chosen by name as
  ``peft`` chooses them (:func:`target_matches`), the injection into any ``transformers`` model with
  everything else frozen (:func:`inject_lora`), the weight change that merging adds
  (:func:`lora_delta_weight`), and the adapter as ``peft`` saves it (:func:`adapter_state_dict`,
  :func:`load_adapter_state_dict`).
- **NF4 and QLoRA** (8.9-8.15): the 16-value code book from normal quantiles (:func:`nf4_code`),
  block-wise absmax quantization to a code book and back (:func:`quantize_blockwise`,
  :func:`dequantize_blockwise`), two 4-bit indices per byte (:func:`pack_nibbles`,
  :func:`unpack_nibbles`), double quantization of the block scales (:func:`double_quantize`) and the
  4-bit linear layer (:meth:`NF4Linear.forward`), which a :class:`LoRALinear` wraps like any other.
- **memory** (8.16): the bytes of weights, gradients and optimizer states of full fine-tuning, LoRA
  and QLoRA (:func:`training_memory`).

Everything around the exercises is implemented here: the :class:`LoRALinear` and :class:`NF4Linear`
modules, merging and unloading (:func:`merge_and_unload`), adapter files that ``peft`` reads
(:func:`save_adapter`, :func:`load_adapter`), 4-bit quantization of a model's linear layers
(:func:`quantize_model`), counting (:func:`count_parameters`), and the functions the tests call
(``*_outputs``, ``lora_injection``, ...: plain data in, plain data out).

Conventions used by every exercise of this chapter:

- **Shapes** follow ``nn.Linear``: a weight is ``(out_features, in_features)`` and ``y = x @ W.T +
  b``. GPT-2's ``Conv1D`` stores its weight transposed, ``(in_features, out_features)``, with ``y = x
  @ W + b``; ``peft`` calls that ``fan_in_fan_out=True``.
- **Names.** A module is named as ``model.named_modules()`` names it (``"model.layers.0.self_attn.
  q_proj"``). Inside a :class:`LoRALinear` the frozen layer is ``base_layer`` and the adapter is
  ``lora_A`` and ``lora_B`` (``nn.Linear`` without bias), as in ``peft`` (which adds the adapter's
  name, ``.default``, to each).
- **Code books** are 1-D float32 tensors sorted ascending, with values in ``[-1, 1]``; an index is the
  position of a value in its code book, stored as ``torch.uint8``.
- **Blocks** cut the *flattened* tensor (row-major order) into runs of ``blocksize`` values; the last
  block may be shorter. Block ``b`` holds the values ``b * blocksize`` to ``(b + 1) * blocksize - 1``.
- Inputs are never modified, unless a function says it works in place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import check_bool, check_int, check_number, check_tensor
from course_lib.exercises import exercise
from course_lib.memory import saved_tensor_bytes

ADAPTER_PREFIX = "base_model.model."       # how peft names a saved adapter's weights
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
NF4_OFFSET = 0.9677083                     # the top quantile level of NF4 (Dettmers et al., 2023)
NF4_BLOCKSIZE = 64
ABSMAX_BLOCKSIZE = 256                     # double quantization's block of scales
METHODS = ("full", "lora", "qlora")


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_code(code) -> None:
    check_tensor("code", code, floating=True)
    if code.ndim != 1 or code.numel() < 2:
        raise ValueError(f"code must be a 1-D code book of at least 2 values, got shape {tuple(code.shape)}")
    if code.numel() > 256:
        raise ValueError(f"code has {code.numel()} values: a uint8 index holds at most 256")
    if not bool((code[1:] > code[:-1]).all()):
        raise ValueError("code must be sorted ascending, without repeated values")


def _check_indices(name: str, indices, below: int) -> None:
    check_tensor(name, indices)
    if indices.dtype != torch.uint8:
        raise TypeError(f"{name} must be torch.uint8, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(indices.shape)}")
    if indices.numel() and int(indices.max()) >= below:
        raise ValueError(f"{name} must hold values below {below}, got {int(indices.max())}")


def _check_lora_pair(lora_A, lora_B) -> None:
    check_tensor("lora_A", lora_A, floating=True)
    check_tensor("lora_B", lora_B, floating=True)
    if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_B.shape[1] != lora_A.shape[0]:
        raise ValueError(f"lora_A must be (r, in_features) and lora_B (out_features, r), got "
                         f"{tuple(lora_A.shape)} and {tuple(lora_B.shape)}")


def _check_targets(target_modules) -> None:
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules is not a regular expression: {err}") from None
        return
    if not isinstance(target_modules, (list, tuple, set, frozenset)) or not target_modules:
        raise TypeError("target_modules must be a regular expression (str) or a non-empty list of module names")
    if not all(isinstance(t, str) and t for t in target_modules):
        raise TypeError("target_modules must hold non-empty str names")


def _validate_init(in_features, out_features, r, seed=None) -> None:
    check_int("in_features", in_features, 1)
    check_int("out_features", out_features, 1)
    check_int("r", r, 1)
    if seed is not None:
        check_int("seed", seed, 0)


def _validate_scaling(alpha, r, use_rslora=False) -> None:
    check_number("alpha", alpha, finite=True)
    check_int("r", r, 1)
    check_bool("use_rslora", use_rslora)


def _validate_forward(self, x) -> None:
    check_tensor("x", x, floating=True, min_ndim=1)
    if x.shape[-1] != self.in_features:
        raise ValueError(f"x must end in in_features={self.in_features}, got shape {tuple(x.shape)}")


def _validate_target_matches(name, target_modules) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    _check_targets(target_modules)


def _validate_lora_settings(r, alpha, dropout, use_rslora, seed) -> None:
    _validate_scaling(alpha, r, use_rslora)
    check_number("dropout", dropout, 0.0, 1.0, finite=True)
    if seed is not None:
        check_int("seed", seed, 0)


def _validate_inject(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None) -> None:
    _validate_model(model)
    _check_targets(target_modules)
    _validate_lora_settings(r, alpha, dropout, use_rslora, seed)


def _validate_delta(lora_A, lora_B, scaling, fan_in_fan_out=False) -> None:
    _check_lora_pair(lora_A, lora_B)
    check_number("scaling", scaling, finite=True)
    check_bool("fan_in_fan_out", fan_in_fan_out)


def _validate_model(model, *_) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _validate_load_adapter(model, state_dict) -> None:
    _validate_model(model)
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise TypeError("state_dict must be a dict of str names to tensors")


def _validate_quantize(x, code, blocksize=NF4_BLOCKSIZE) -> None:
    check_tensor("x", x, floating=True)
    if x.numel() == 0:
        raise ValueError("x is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (an absmax of inf or NaN scales every value of its block to 0 or NaN)")
    _check_code(code)
    check_int("blocksize", blocksize, 1)


def _validate_dequantize(indices, absmax, code, blocksize, shape) -> None:
    _check_code(code)
    _check_indices("indices", indices, code.numel())
    check_int("blocksize", blocksize, 1)
    check_tensor("absmax", absmax, floating=True)
    if absmax.ndim != 1 or absmax.numel() != -(-indices.numel() // blocksize):
        raise ValueError(f"absmax must hold one scale per block: {-(-indices.numel() // blocksize)} for "
                         f"{indices.numel()} indices in blocks of {blocksize}, got shape {tuple(absmax.shape)}")
    if not isinstance(shape, (tuple, list, torch.Size)) or math.prod(shape) != indices.numel():
        raise ValueError(f"shape {shape!r} must hold {indices.numel()} values, as many as indices")


def _validate_pack(indices) -> None:
    _check_indices("indices", indices, 16)
    if indices.numel() % 2:
        raise ValueError(f"indices must have an even length (two per byte), got {indices.numel()}: "
                         "pad with one more index first")


def _validate_unpack(packed, n) -> None:
    _check_indices("packed", packed, 256)
    check_int("n", n, 0)
    if not 2 * packed.numel() - 1 <= n <= 2 * packed.numel():
        raise ValueError(f"{packed.numel()} bytes hold {2 * packed.numel() - 1} or {2 * packed.numel()} "
                         f"indices, not n={n}")


def _validate_double_quantize(absmax, code, blocksize=ABSMAX_BLOCKSIZE) -> None:
    check_tensor("absmax", absmax, floating=True)
    if absmax.ndim != 1 or absmax.numel() == 0:
        raise ValueError(f"absmax must be a non-empty 1-D tensor of block scales, got shape {tuple(absmax.shape)}")
    _check_code(code)
    check_int("blocksize", blocksize, 1)


def _validate_training_memory(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=NF4_BLOCKSIZE,
                              double_quant=True, absmax_blocksize=ABSMAX_BLOCKSIZE) -> None:
    if not isinstance(linear_shapes, (list, tuple)):
        raise TypeError("linear_shapes must be a list of (out_features, in_features) pairs")
    for i, shape in enumerate(linear_shapes):
        if (not isinstance(shape, (list, tuple)) or len(shape) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise ValueError(f"linear_shapes[{i}] must be a pair of positive ints, got {shape!r}")
    check_int("other_params", other_params, 0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_int("r", r, 1)
    check_int("param_bytes", param_bytes, 1)
    check_int("blocksize", blocksize, 1)
    check_bool("double_quant", double_quant)
    check_int("absmax_blocksize", absmax_blocksize, 1)


ACTIVATION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "vocab_size")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _validate_activation_memory(config, batch_size, seq_len, method="full", *, r=8, attn_implementation="sdpa") -> None:
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of the architecture, got {type(config).__name__}")
    for key in ACTIVATION_KEYS:
        if key not in config:
            raise ValueError(f"config needs {key!r} (the keys: {ACTIVATION_KEYS})")
        check_int(f"config[{key!r}]", config[key], 1)
    check_int("batch_size", batch_size, 1)
    check_int("seq_len", seq_len, 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_int("r", r, 1)
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")


# -- 8.1-8.2 initialisation and scale --------------------------------------------------------------
@exercise("8.1", points=1, validate=_validate_init)
def init_lora_weights(in_features: int, out_features: int, r: int, seed: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting weights of a LoRA adapter, as ``peft`` initialises them (``init_lora_weights=True``).

    Args:
        in_features: the input size of the adapted layer.
        out_features: its output size.
        r: the rank of the adapter.
        seed: ``None``: draw from torch's global generator (as ``peft`` does); an int: draw from
            ``torch.Generator().manual_seed(seed)`` and leave the global generator alone.

    Returns:
        ``(lora_A, lora_B)``, float32 tensors on the CPU: ``lora_A`` ``(r, in_features)`` filled by
        ``torch.nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))`` (``nn.Linear``'s own initialisation:
        uniform on ``[-1/sqrt(in_features), 1/sqrt(in_features)]``), drawn with the generator above;
        ``lora_B`` ``(out_features, r)`` all zeros. With ``B = 0`` the adapter adds nothing, so the
        adapted model starts exactly where the pretrained one is, while ``A != 0`` lets the gradient of
        ``B`` be non-zero from the first step.

    Hint:
        ``kaiming_uniform_`` takes ``generator=``. Zeros for *both* would leave both gradients zero
        forever (the gradient of ``A`` is ``B.T @ ...`` and that of ``B`` is ``... @ A.T``).
    """
    raise NotImplementedError("Exercise 8.1: implement init_lora_weights in lora.py")


@exercise("8.2", points=1, validate=_validate_scaling)
def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    """The factor that multiplies the LoRA path: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA.

    Args:
        alpha: ``lora_alpha`` of ``peft``'s ``LoraConfig``.
        r: the rank.
        use_rslora: rank-stabilised LoRA (Kalajdzievski, 2023).

    Returns:
        A Python float: ``alpha / r`` (Hu et al., 2022), so that changing ``r`` does not change the
        size of the update much at the start of training; with ``use_rslora``, ``alpha / sqrt(r)``,
        which keeps the update's scale stable as ``r`` grows (with ``alpha / r`` a large rank learns
        too slowly). ``peft`` stores it as ``layer.scaling["default"]``.

    Hint:
        A ratio the other way round (``r / alpha``) is right only when ``r == alpha``.
    """
    raise NotImplementedError("Exercise 8.2: implement lora_scaling in lora.py")


# -- the layer ---------------------------------------------------------------------------------------
def linear_features(module: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a layer LoRA can wrap: ``nn.Linear``,
    :class:`NF4Linear`, or GPT-2's ``Conv1D`` (weight ``(in, out)``: ``fan_in_fan_out`` is True).
    Anything else is a ``ValueError`` naming its type."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (nn.Linear, NF4Linear)):
        return module.in_features, module.out_features, False
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1], True
    raise ValueError(f"LoRA here wraps nn.Linear, transformers' Conv1D and NF4Linear layers, not "
                     f"{type(module).__name__}")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank adapter: ``base_layer(x) + scaling * B(A(dropout(x)))``.

    Args:
        base_layer: the layer to adapt (``nn.Linear``, GPT-2's ``Conv1D`` or :class:`NF4Linear`); its
            parameters are frozen (``requires_grad = False``).
        r: the rank of the adapter.
        alpha: ``lora_alpha``; the scale is :func:`lora_scaling` of ``alpha``, ``r``, ``use_rslora``.
        dropout: the dropout probability on the input of the LoRA path (``nn.Dropout``; ``nn.Identity``
            when 0, as in ``peft``).
        use_rslora: scale by ``alpha / sqrt(r)``.
        seed: the seed of :func:`init_lora_weights` (``None``: torch's global generator).

    Attributes: ``base_layer``, ``lora_A`` (``nn.Linear(in_features, r, bias=False)``), ``lora_B``
    (``nn.Linear(r, out_features, bias=False)``), ``lora_dropout``, ``scaling``, ``r``, ``alpha``,
    ``use_rslora``, ``in_features``, ``out_features``, ``fan_in_fan_out`` and ``merged`` (whether the
    adapter's change sits in the base weight, :meth:`merge`). The adapter's weights sit on the base
    layer's device, in its weight's dtype when that is float32 or float64, and in float32 for a 16-bit
    or 4-bit base (``peft``'s default, ``autocast_adapter_dtype=True``: a 16-bit model still trains its
    adapter in float32).
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 use_rslora: bool = False, seed: int | None = None):
        super().__init__()
        in_features, out_features, _ = linear_features(base_layer)
        _validate_lora_settings(r, alpha, dropout, use_rslora, seed)
        self._build(base_layer, r, alpha, dropout, use_rslora, lora_scaling(alpha, r, use_rslora),
                    *init_lora_weights(in_features, out_features, r, seed))

    @classmethod
    def from_adapter(cls, base_layer: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float, *,
                     scaling: float, dropout: float = 0.0, use_rslora: bool = False) -> "LoRALinear":
        """A layer around ``base_layer`` with the adapter ``lora_A`` ``(r, in_features)`` and ``lora_B``
        ``(out_features, r)`` and the scale ``scaling`` given, instead of drawn and computed by your 8.1
        and 8.2: how the tests build the layers that 8.3, 8.7 and 8.8 run, so that each exercise is
        graded on its own."""
        in_features, out_features, _ = linear_features(base_layer)
        r = lora_A.shape[0]
        _validate_lora_settings(r, alpha, dropout, use_rslora, None)
        _check_lora_pair(lora_A, lora_B)
        if lora_A.shape[1] != in_features or lora_B.shape[0] != out_features:
            raise ValueError(f"lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} do not fit a layer "
                             f"{in_features} -> {out_features}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._build(base_layer, r, alpha, dropout, use_rslora, scaling, lora_A.detach(), lora_B.detach())
        return layer

    def _build(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, use_rslora: bool, scaling: float,
               lora_A: torch.Tensor, lora_B: torch.Tensor) -> None:
        self.in_features, self.out_features, self.fan_in_fan_out = linear_features(base_layer)
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.use_rslora, self.dropout = r, float(alpha), use_rslora, float(dropout)
        self.scaling = scaling
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = next(iter(base_layer.parameters()), None) if not isinstance(base_layer, NF4Linear) else None
        device = base_layer.weight_packed.device if weight is None else weight.device
        dtype = weight.dtype if weight is not None and weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device="meta")
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device="meta")
        self.lora_A.weight = nn.Parameter(lora_A.to(device, dtype).clone())
        self.lora_B.weight = nn.Parameter(lora_B.to(device, dtype).clone())
        self.merged = False

    @exercise("8.3", points=3, validate=_validate_forward, entry="lora_linear_outputs")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapted layer's output for ``x`` ``(..., in_features)``: ``(..., out_features)``.

        ``base_layer(x)``, plus, unless the adapter is merged (``self.merged``: its change is already
        in the base weight), the LoRA path ``self.lora_B(self.lora_A(self.lora_dropout(x))) *
        self.scaling``. The LoRA path reads ``x`` cast to the adapter's dtype (``self.lora_A.weight.
        dtype``); the sum is returned in the dtype of the base layer's output. Dropout acts on the LoRA
        path's input only, never on the base layer's: in training mode the frozen model still sees
        every feature. This is ``peft``'s ``lora.Linear.forward`` (and ``lora.bnb.Linear4bit``'s for
        a 4-bit base) with one adapter.

        Hint:
            Compute ``A`` first: ``B(A(x))`` costs ``r * (in + out)`` multiplications per token, while
            forming ``B @ A`` first costs ``in * out``, as much as the layer itself. Adding the LoRA path
            to a merged layer counts the change twice.
        """
        raise NotImplementedError("Exercise 8.3: implement LoRALinear.forward in lora.py")

    def delta_weight(self) -> torch.Tensor:
        """The change the adapter makes to the base weight, in the base weight's layout and dtype."""
        return lora_delta_weight(self.lora_A.weight, self.lora_B.weight, self.scaling, self.fan_in_fan_out)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the adapter's change into the base weight (inference without the extra matmuls)."""
        self._shift_base(+1)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the adapter's change back out of the base weight (exact up to float rounding)."""
        self._shift_base(-1)

    def _shift_base(self, sign: int) -> None:
        if isinstance(self.base_layer, NF4Linear):
            raise ValueError("a 4-bit base weight cannot hold the adapter's change exactly: dequantize the "
                             "model first (NF4Linear.to_linear) and merge into that copy")
        if self.merged == (sign > 0):
            raise RuntimeError(f"the adapter is {'already' if self.merged else 'not'} merged")
        weight = self.base_layer.weight
        weight.add_(sign * self.delta_weight().to(weight.dtype))
        self.merged = sign > 0

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}")


# -- 8.4-8.5 choosing and wrapping the layers ---------------------------------------------------------
@exercise("8.4", points=2, validate=_validate_target_matches)
def target_matches(name: str, target_modules: str | Sequence[str]) -> bool:
    """Whether the module called ``name`` is a LoRA target, by ``peft``'s rule.

    Args:
        name: a module's full name, as ``model.named_modules()`` gives it
            (``"model.layers.0.self_attn.q_proj"``).
        target_modules: a list of names (``["q_proj", "v_proj"]``), or one ``str``, read as a regular
            expression.

    Returns:
        For a list: ``True`` when ``name`` equals one of the names or ends with ``"." + name`` (a
        whole last part of the path: ``"q_proj"`` matches ``"...self_attn.q_proj"`` but neither
        ``"...self_attn.xq_proj"`` nor ``"...q_proj.lora_A"``). For a ``str``: ``True`` when the
        regular expression matches the *whole* name (``re.fullmatch``), so ``r".*\\.(q|v)_proj"``
        selects the query and value projections of every layer. This is ``peft``'s
        ``check_target_module_exists`` for a ``LoraConfig(target_modules=...)``.

    Hint:
        A substring test (``"proj" in name``) matches far too much; ``re.search`` too.
    """
    raise NotImplementedError("Exercise 8.4: implement target_matches in lora.py")


@exercise("8.5", points=4, validate=_validate_inject, entry="lora_injection")
def inject_lora(model: nn.Module, target_modules: str | Sequence[str], r: int = 8, alpha: float = 8.0,
                dropout: float = 0.0, use_rslora: bool = False, seed: int | None = None) -> nn.Module:
    """Wrap every target layer of ``model`` in a :class:`LoRALinear` and freeze everything else, in place.

    Args:
        model: any ``torch`` model (the course's model, a Hugging Face Llama or GPT-2, ...).
        target_modules: which modules to adapt, as :func:`target_matches` reads it.
        r, alpha, dropout, use_rslora: the settings of every adapter (see :class:`LoRALinear`).
        seed: ``None``: every adapter draws its ``A`` from torch's global generator, in the order of
            ``model.named_modules()``; an int: adapter number ``i`` (counting from 0 in that order)
            gets seed ``seed + i``.

    Returns:
        ``model`` itself, changed: each module whose full name matches (:func:`target_matches`) is
        replaced, in its parent, by ``LoRALinear(module, r, alpha, dropout, use_rslora, seed)``, so
        that ``model.get_submodule(name).base_layer`` is the old module. Afterwards the only
        parameters with ``requires_grad=True`` are the adapters' ``lora_A.weight`` and
        ``lora_B.weight``: every other weight, the embeddings, the norms and every bias (of the
        wrapped layers too) are frozen, as ``peft``'s ``get_peft_model`` leaves them with its default
        ``bias="none"``. Matching the same model with ``peft`` gives the same adapted layers, the
        same trainable parameters (``print_trainable_parameters``) and, with the same ``A`` and
        ``B``, the same outputs and gradients.

    Raises:
        ValueError: when no module matches (naming ``target_modules``), or when a matching module is
            not a layer LoRA can wrap (naming it and its type; :func:`linear_features`).

    Hint:
        Collect the matches from ``list(model.named_modules())`` *before* replacing anything (the
        new modules have names too: ``...q_proj.base_layer`` must not be wrapped again), freeze the
        whole model with ``model.requires_grad_(False)`` first, and swap a module with
        :func:`replace_module`.
    """
    raise NotImplementedError("Exercise 8.5: implement inject_lora in lora.py")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``model``'s submodule ``name`` is (``"a.b.c"``: attribute ``c`` of
    ``model.get_submodule("a.b")``; a digit indexes an ``nn.ModuleList``); returns the old module."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` modules of ``model`` by name, in ``named_modules()`` order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters, as ``peft``'s ``get_nb_trainable_parameters``
    counts them (a 4-bit weight counts as two values per stored byte)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    for module in model.modules():
        if isinstance(module, NF4Linear):
            total += 2 * module.weight_packed.numel()
    return trainable, total


# -- 8.6 merging -------------------------------------------------------------------------------------
@exercise("8.6", points=2, validate=_validate_delta)
def lora_delta_weight(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
                      fan_in_fan_out: bool = False) -> torch.Tensor:
    """The change a LoRA adapter makes to its layer's weight: what merging adds and unmerging subtracts.

    Args:
        lora_A: ``(r, in_features)``.
        lora_B: ``(out_features, r)``, the same dtype as ``lora_A``.
        scaling: the adapter's scale (:func:`lora_scaling`).
        fan_in_fan_out: the base weight is stored ``(in_features, out_features)`` (GPT-2's ``Conv1D``).

    Returns:
        ``scaling * lora_B @ lora_A``, ``(out_features, in_features)``, or its transpose
        ``(in_features, out_features)`` when ``fan_in_fan_out``: the same layout as the base weight,
        so that ``W + delta`` is the merged weight and the merged layer computes what the adapted one
        did. In the dtype of ``lora_A``; float16 and bfloat16 adapters are multiplied in float32 and
        rounded once at the end, as ``peft``'s ``get_delta_weight`` does on a CPU. Not a
        ``Parameter`` and not part of the autograd graph of the inputs (``peft`` merges under
        ``torch.no_grad()``).

    Hint:
        ``B @ A`` has rank at most ``r``: that is the whole point. Forgetting ``scaling`` merges an
        adapter ``alpha / r`` times too weak or too strong.
    """
    raise NotImplementedError("Exercise 8.6: implement lora_delta_weight in lora.py")


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter of ``model`` into its base weight and put the base layers back in place of
    the :class:`LoRALinear` modules (``peft``'s ``merge_and_unload``); returns ``model``."""
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        replace_module(model, name, layer.base_layer)
    return model


# -- 8.7-8.8 adapter files -----------------------------------------------------------------------------
@exercise("8.7", points=2, validate=_validate_model, entry="adapter_weights")
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter of ``model`` alone, named as ``peft`` saves it: what ``adapter_model.safetensors`` holds.

    Args:
        model: a model with :class:`LoRALinear` layers (:func:`inject_lora`); not modified.

    Returns:
        A dict with two entries per :class:`LoRALinear` module named ``name`` (in
        ``model.named_modules()`` order): ``"base_model.model." + name + ".lora_A.weight"`` and
        ``"... .lora_B.weight"``, each a detached copy of the weight (contiguous, same dtype and
        device), and nothing else: no frozen weight, no bias, no dropout, no merged base. These are
        the names ``peft``'s ``get_peft_model_state_dict`` writes (its model is wrapped twice, as
        ``base_model.model``, and it drops the adapter's name ``.default``), so a folder with this file
        and an ``adapter_config.json`` loads with ``PeftModel.from_pretrained`` (:func:`save_adapter`).
        A few kilobytes instead of the whole model.

    Hint:
        :func:`lora_layers` finds the modules; ``.detach().clone()`` copies a weight.
    """
    raise NotImplementedError("Exercise 8.7: implement adapter_state_dict in lora.py")


@exercise("8.8", points=2, validate=_validate_load_adapter, entry="loaded_adapter")
def load_adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a saved adapter (names as :func:`adapter_state_dict` and ``peft`` write them) into ``model``.

    Args:
        model: a model with :class:`LoRALinear` layers at the saved places (the same targets and
            ranks); its adapters' weights are overwritten in place, keeping their dtype, device and
            ``requires_grad``.
        state_dict: ``{"base_model.model.<module name>.lora_A.weight": tensor, ...}``; not modified.

    Returns:
        ``None``. Afterwards every adapter of ``model`` holds the saved ``A`` and ``B``.

    Raises:
        KeyError: naming the entry, when ``state_dict`` has an entry that is not an adapter weight of
            ``model`` (a different target, a different model), or when an adapter of ``model`` has no
            entry: a half-loaded adapter would run silently with its fresh ``B = 0``.
        ValueError: naming the entry, when a saved weight's shape is not the adapter's (another rank).

    Hint:
        Build the expected names from :func:`lora_layers` first and compare the two sets of keys; copy
        with ``weight.data.copy_(...)`` under ``torch.no_grad()``.
    """
    raise NotImplementedError("Exercise 8.8: implement load_adapter_state_dict in lora.py")


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None,
                   modules_to_save: Sequence[str] = ()) -> dict:
    """The ``adapter_config.json`` of ``model``'s adapters, as ``peft``'s ``LoraConfig`` writes it:
    ``target_modules`` is the set of last name parts of the adapted modules (``["q_proj", "v_proj"]``),
    which selects the same modules again. Every adapter must share ``r``, ``alpha``, dropout and
    rsLoRA (``peft``'s ``rank_pattern`` is not supported here). ``modules_to_save`` names modules
    trained in full beside the adapters (``peft``'s option of that name, with ``ensure_weight_tying``
    so that a tied output layer follows a saved embedding)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRALinear layers (inject_lora first)")
    settings = {(m.r, m.alpha, m.dropout, m.use_rslora) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"the adapters differ in (r, alpha, dropout, use_rslora): {sorted(settings)}")
    r, alpha, dropout, use_rslora = settings.pop()
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "use_rslora": use_rslora,
            "target_modules": sorted({name.rsplit(".", 1)[-1] for name in layers}),
            "fan_in_fan_out": any(m.fan_in_fan_out for m in layers.values()), "bias": "none",
            "init_lora_weights": True, "inference_mode": True,
            **({"modules_to_save": list(modules_to_save), "ensure_weight_tying": True} if modules_to_save else {})}


def saved_module_state(model: nn.Module, modules_to_save: Sequence[str]) -> dict[str, torch.Tensor]:
    """The parameters of the modules of ``model`` whose last name part is in ``modules_to_save``, keyed
    as ``peft`` saves them (``base_model.model.<name>``), with every other name of a tied parameter
    too (a tied ``lm_head.weight`` beside ``embed_tokens.weight``)."""
    tensors = {id(p): p for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in modules_to_save
               for p in module.parameters()}
    return {f"{ADAPTER_PREFIX}{name}": p.detach().clone().contiguous()
            for name, p in model.named_parameters(remove_duplicate=False) if id(p) in tensors}


def save_adapter(model: nn.Module, directory: Path | str, base_model_name_or_path: str | None = None,
                 modules_to_save: Sequence[str] = ()) -> Path:
    """Write ``model``'s adapter to ``directory`` as ``peft`` does: ``adapter_model.safetensors``
    (:func:`adapter_state_dict`, and :func:`saved_module_state` of ``modules_to_save``) and
    ``adapter_config.json`` (:func:`adapter_config`). The folder loads with
    ``PeftModel.from_pretrained(base_model, directory)`` and with :func:`load_adapter`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model, base_model_name_or_path, modules_to_save)
    state = adapter_state_dict(model) | saved_module_state(model, modules_to_save)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return directory


def load_adapter(model: nn.Module, directory: Path | str, seed: int | None = 0) -> nn.Module:
    """Inject the adapter saved in ``directory`` (by :func:`save_adapter` or ``peft``'s
    ``save_pretrained``) into ``model`` (:func:`inject_lora` with the saved settings, then
    :func:`load_adapter_state_dict`) and copy the weights of its ``modules_to_save`` into ``model``'s
    modules of those names; returns ``model``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("rank_pattern") \
            or config.get("alpha_pattern") or config.get("bias", "none") != "none":
        raise ValueError(f"{directory / ADAPTER_CONFIG}: only plain LoRA adapters (one rank, no bias, no DoRA) load here")
    inject_lora(model, config["target_modules"], config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                config.get("use_rslora", False), seed)
    state = load_file(str(directory / ADAPTER_WEIGHTS))
    load_adapter_state_dict(model, {k: v for k, v in state.items() if ".lora_" in k})
    saved = saved_module_state(model, config.get("modules_to_save") or ())
    if set(saved) != {k for k in state if ".lora_" not in k}:
        raise ValueError(f"{directory / ADAPTER_WEIGHTS}: its full weights {sorted(k for k in state if '.lora_' not in k)} "
                         f"are not those of modules_to_save {config.get('modules_to_save')}")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for key in saved:
            parameters[key.removeprefix(ADAPTER_PREFIX)].copy_(state[key])
    return model


# -- 8.9-8.14 NF4 ---------------------------------------------------------------------------------------
@exercise("8.9", points=2)
def nf4_code() -> torch.Tensor:
    """The 16 values of the 4-bit NormalFloat (NF4) data type (Dettmers et al., 2023).

    Pretrained weights are close to normally distributed, so a 4-bit code whose 16 values sit at
    quantiles of the standard normal distribution ``N(0, 1)`` gives each value about the same share
    of the weights, and uses its 16 values better than an evenly spaced grid does. Zero must be exact
    (padding and zero weights), which an even number of symmetric quantiles cannot give: NF4 takes 8
    positive and 7 negative quantiles and adds 0.

    Returns:
        A float32 tensor ``(16,)``, sorted ascending, built as ``bitsandbytes``' ``create_normal_map``
        does with ``offset = NF4_OFFSET`` (0.9677083):

        1. the positive half: the normal quantiles ``Phi^-1(p)`` at the 8 levels
           ``torch.linspace(offset, 0.5, 9)[:-1]`` (float32 levels, from ``offset`` down to just above
           0.5), computed in float64 (``torch.special.ndtri`` of the levels as float64) and stored as
           float32;
        2. the negative half: ``-Phi^-1(p)`` at the 7 levels ``torch.linspace(offset, 0.5, 8)[:-1]``,
           the same way;
        3. the value 0;
        4. sorted, and divided (in float32) by the largest value, so that the code runs from exactly
           ``-1`` to exactly ``1``.

        The result is ``bitsandbytes.functional.get_4bit_type("nf4")`` (to within float32 rounding).

    Hint:
        ``offset`` is not 1: ``Phi^-1(1)`` is infinite. It is the mean of ``1 - 1/(2*15)`` and
        ``1 - 1/(2*16)``, so that the outermost values are not the distribution's far tails. The two
        halves differ in length: the code is not symmetric.
    """
    raise NotImplementedError("Exercise 8.9: implement nf4_code in lora.py")


@exercise("8.10", points=3, validate=_validate_quantize)
def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int = NF4_BLOCKSIZE
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization of ``x`` to a code book.

    Args:
        x: any shape, floating (float32, bfloat16, float16, ...), finite; not modified. Read as float32.
        code: a code book (see the module's conventions): :func:`nf4_code` for NF4, a 256-value code for
            8 bits.
        blocksize: the values per block (64 for NF4 weights, 256 for double quantization).

    Returns:
        ``(indices, absmax)``. ``absmax``: float32 ``(n_blocks,)``, ``n_blocks = ceil(x.numel() /
        blocksize)``, the largest absolute value of each block of the flattened ``x`` (the last block
        may be shorter). ``indices``: ``torch.uint8`` ``(x.numel(),)``, for each value ``v`` of block
        ``b`` the index of the code value nearest to ``v / absmax[b]`` (which lies in ``[-1, 1]``);
        at a tie (exactly half-way between two code values), the lower index. A block of zeros has
        ``absmax`` 0 and every index that of the code's value nearest 0. This is what
        ``bitsandbytes.functional.quantize_4bit(x, blocksize=64, quant_type="nf4")`` computes before
        it packs the indices (same indices, same absmax).

    Hint:
        Pad the flattened tensor to a whole number of blocks, ``view(n_blocks, blocksize)``,
        ``amax(dim=1)`` of the absolute values. Nearest: ``torch.bucketize`` against the midpoints of
        neighbouring code values (``right=False`` sends a tie to the lower index), or the ``argmin``
        of the distances to every code value. One absmax for the whole tensor lets a single outlier
        crush every other block to a few codes; per-block scales keep an outlier's damage local.
    """
    raise NotImplementedError("Exercise 8.10: implement quantize_blockwise in lora.py")


@exercise("8.11", points=1, validate=_validate_dequantize)
def dequantize_blockwise(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                         shape: Sequence[int]) -> torch.Tensor:
    """The values that :func:`quantize_blockwise`'s ``(indices, absmax)`` stand for.

    Args:
        indices: ``torch.uint8`` ``(n,)``, positions in ``code``.
        absmax: ``(n_blocks,)``, one scale per block of ``blocksize`` indices (the last block may be
            shorter).
        code: the code book the indices point into.
        blocksize: the block size used when quantizing.
        shape: the shape to return (``math.prod(shape) == n``).

    Returns:
        float32, ``shape``: ``code[indices[i]] * absmax[i // blocksize]`` for every ``i`` (in the
        flattened order). ``bitsandbytes.functional.dequantize_4bit`` of NF4 computes exactly this in
        float32 before it casts to the dtype asked for (and ``dequantize_blockwise`` for an 8-bit code).

    Hint:
        Indexing a tensor with a uint8 tensor is read as a *mask*: turn the indices into ``long``
        first. ``absmax.repeat_interleave(blocksize)[:n]`` gives every value its scale.
    """
    raise NotImplementedError("Exercise 8.11: implement dequantize_blockwise in lora.py")


@exercise("8.12", points=1, validate=_validate_pack)
def pack_nibbles(indices: torch.Tensor) -> torch.Tensor:
    """Two 4-bit indices per byte, as ``bitsandbytes`` stores NF4 weights.

    Args:
        indices: ``torch.uint8`` ``(n,)`` with ``n`` even and every value below 16; not modified.

    Returns:
        ``torch.uint8`` ``(n // 2,)``: byte ``j`` holds ``indices[2j]`` in its *high* four bits and
        ``indices[2j + 1]`` in its low four bits, i.e. ``16 * indices[2j] + indices[2j + 1]``. The
        bytes are those of ``quantize_4bit`` (its packed tensor has shape ``(n // 2, 1)``).

    Hint:
        ``(even << 4) | odd`` with ``even = indices[0::2]``. The order is a convention: the other one
        gives a valid-looking byte that ``bitsandbytes`` reads as a different weight.
    """
    raise NotImplementedError("Exercise 8.12: implement pack_nibbles in lora.py")


@exercise("8.13", points=1, validate=_validate_unpack)
def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The 4-bit indices stored in ``packed`` by :func:`pack_nibbles`: its inverse.

    Args:
        packed: ``torch.uint8`` ``(m,)``; not modified.
        n: how many indices to return: ``2 * m``, or ``2 * m - 1`` when the last byte's low half is
            padding (a tensor with an odd number of values).

    Returns:
        ``torch.uint8`` ``(n,)``: the high half of byte 0, its low half, the high half of byte 1, ...

    Hint:
        ``packed >> 4`` and ``packed & 0xF`` give the two halves; interleave them with ``torch.stack(...,
        dim=1).flatten()``.
    """
    raise NotImplementedError("Exercise 8.13: implement unpack_nibbles in lora.py")


@exercise("8.14", points=2, validate=_validate_double_quantize)
def double_quantize(absmax: torch.Tensor, code: torch.Tensor, blocksize: int = ABSMAX_BLOCKSIZE
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the block scales themselves to 8 bits (QLoRA's double quantization).

    With blocks of 64, one float32 scale per block costs ``32 / 64 = 0.5`` bits per weight on top of
    the 4. Quantizing the scales to 8 bits in blocks of 256 costs ``8 / 64 + 32 / (64 * 256)``, about
    0.127 bits per weight: 0.373 bits saved per weight, about 3 GB on a 65B model (Dettmers et al., 2023).

    Args:
        absmax: float32 ``(n_blocks,)``: the first-level scales (:func:`quantize_blockwise`); not modified.
        code: the 8-bit code book (:func:`dynamic_code`, ``bitsandbytes``' dynamic map, 256 signed values).
        blocksize: the block size of the second level (256).

    Returns:
        ``(absmax_q, absmax2, offset)``: ``offset`` is the mean of ``absmax``, a 0-dim float32 tensor
        (the scales are all positive: subtracting their mean centres them on 0, where a signed code
        has its finest steps); ``(absmax_q, absmax2) = quantize_blockwise(absmax - offset, code,
        blocksize)``, ``absmax_q`` ``torch.uint8`` ``(n_blocks,)`` and ``absmax2`` float32
        ``(ceil(n_blocks / blocksize),)``. ``dequantize_blockwise(absmax_q, absmax2, code, blocksize,
        absmax.shape) + offset`` gives the scales back, to within half a code step. This is the
        ``quant_state`` of ``quantize_4bit(..., compress_statistics=True)``: its ``offset``, its
        ``state2.absmax``, and its ``absmax`` (up to rare values that lie a rounding error from
        half-way between two codes, where ``bitsandbytes``' CPU kernel picks the other one).

    Hint:
        Reuse your :func:`quantize_blockwise`: only the centring is new.
    """
    raise NotImplementedError("Exercise 8.14: implement double_quantize in lora.py")


def dynamic_code() -> torch.Tensor:
    """The 256-value signed "dynamic" code book that ``bitsandbytes`` uses for 8-bit block-wise
    quantization, and for double quantization (Dettmers, 2016; Dettmers et al., 2022): values of
    many magnitudes, from 1e-7 to 1, each decade cut evenly, so that small and large scales keep
    the same relative precision. Taken from ``bitsandbytes.functional.create_dynamic_map``."""
    from bitsandbytes.functional import create_dynamic_map

    return create_dynamic_map(signed=True).float()


class NF4Linear(nn.Module):
    """A linear layer whose weight is stored in 4-bit NF4: ``bitsandbytes``' ``Linear4bit`` from scratch.

    Buffers (``state_dict`` entries, never trained): ``weight_packed`` ``torch.uint8``
    ``(ceil(out * in / 2),)``, the NF4 indices of the flattened weight, two per byte
    (:func:`pack_nibbles`, an odd count padded with the index of 0); the block scales, either
    ``absmax`` float32 ``(n_blocks,)`` or, with double quantization, ``absmax_q`` ``torch.uint8``,
    ``absmax2`` float32 and ``absmax_offset`` (a 0-dim float32) (:func:`double_quantize`). ``bias``:
    a frozen ``Parameter`` or ``None``. The code books (``code``, and ``absmax_code`` with double
    quantization) are buffers that a checkpoint does not store (``bitsandbytes`` shares them).

    ``compute_dtype``: the dtype of the matrix product (float32, or bfloat16 on hardware that has it).
    Build one from a trained layer with :meth:`from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, blocksize: int = NF4_BLOCKSIZE,
                 double_quant: bool = True, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.blocksize, self.double_quant, self.compute_dtype = blocksize, double_quant, compute_dtype
        n = in_features * out_features
        n_blocks = -(-n // blocksize)
        self.register_buffer("weight_packed", torch.zeros(-(-n // 2), dtype=torch.uint8))
        if double_quant:
            self.register_buffer("absmax_q", torch.zeros(n_blocks, dtype=torch.uint8))
            self.register_buffer("absmax2", torch.zeros(-(-n_blocks // ABSMAX_BLOCKSIZE)))
            self.register_buffer("absmax_offset", torch.zeros(()))
            self.register_buffer("absmax_code", torch.zeros(256), persistent=False)
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks))
        self.register_buffer("code", torch.zeros(16), persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, *, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                    compute_dtype: torch.dtype = torch.float32) -> "NF4Linear":
        """``linear``'s weight quantized to NF4 (your 8.9, 8.10, 8.12 and 8.14), its bias kept as it is."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, blocksize=blocksize,
                    double_quant=double_quant, compute_dtype=compute_dtype).to(linear.weight.device)
        code = nf4_code().to(linear.weight.device)
        indices, absmax = quantize_blockwise(linear.weight, code, blocksize)
        if indices.numel() % 2:     # one more index, of the value 0, fills the last byte (as bitsandbytes)
            indices = torch.cat([indices, torch.argmin(code.abs()).to(torch.uint8).reshape(1)])
        buffers = {"weight_packed": pack_nibbles(indices), "code": code}
        if double_quant:
            absmax_code = dynamic_code().to(absmax.device)
            absmax_q, absmax2, offset = double_quantize(absmax, absmax_code)
            buffers |= {"absmax_q": absmax_q, "absmax2": absmax2, "absmax_offset": offset, "absmax_code": absmax_code}
        else:
            buffers["absmax"] = absmax
        layer.load_buffers(buffers)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    def load_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        """Set the quantized state (``weight_packed``, the scales, ``code``, ...) from tensors of the same
        shapes, as :meth:`from_linear` makes them or as taken from ``bitsandbytes``' ``quant_state``."""
        for name, value in buffers.items():
            current = getattr(self, name)
            if not isinstance(current, torch.Tensor) or name not in dict(self.named_buffers()):
                raise KeyError(f"NF4Linear has no buffer {name!r}")
            if current.shape != value.shape:
                raise ValueError(f"{name} must have shape {tuple(current.shape)}, got {tuple(value.shape)}")
            setattr(self, name, value.detach().to(device=current.device, dtype=current.dtype).clone())

    def block_scales(self) -> torch.Tensor:
        """The first-level scales, float32 ``(n_blocks,)`` (undoing double quantization: your 8.11)."""
        if not self.double_quant:
            return self.absmax
        return dequantize_blockwise(self.absmax_q, self.absmax2, self.absmax_code, ABSMAX_BLOCKSIZE,
                                    self.absmax_q.shape) + self.absmax_offset

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight ``(out_features, in_features)`` the 4 bits stand for, in ``dtype`` (default: the
        compute dtype): your :func:`unpack_nibbles` and :func:`dequantize_blockwise`."""
        n = self.in_features * self.out_features
        indices = unpack_nibbles(self.weight_packed, n)
        weight = dequantize_blockwise(indices, self.block_scales(), self.code, self.blocksize,
                                      (self.out_features, self.in_features))
        return weight.to(dtype or self.compute_dtype)

    @exercise("8.15", points=2, validate=_validate_forward, entry="nf4_linear_outputs")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``x`` ``(..., in_features)``: ``(..., out_features)`` in ``x``'s dtype.

        Computed in ``self.compute_dtype``: the weight dequantized to it (:meth:`dequantized_weight`),
        ``x`` and the bias cast to it, ``F.linear``, and the result cast back to ``x.dtype``: this is
        ``bitsandbytes.nn.Linear4bit(compute_dtype=...)`` on the same packed weight and scales, to the
        last bit. The gradient flows to ``x`` (adapters in earlier layers need it) and to nothing else:
        the 4-bit weight is frozen.

        The dequantized weight lives only for the duration of the call: autograd keeps no copy of it for
        the backward pass, which computes ``x``'s gradient ``grad_output @ W`` from a weight dequantized
        again (``bitsandbytes``' ``MatMul4Bit`` does the same). A plain ``F.linear`` would keep the
        16- or 32-bit weight until the backward pass, in every layer at once: the memory QLoRA saves.

        Hint:
            Two casts: ``x`` to the compute dtype on the way in, the output to ``x.dtype`` on the way
            out. Between them, a ``torch.autograd.Function`` whose ``forward(ctx, x, layer, bias)`` keeps
            the layer (``ctx.layer = layer``: nothing is saved) and whose ``backward`` dequantizes again;
            inside ``forward`` autograd records nothing.
        """
        raise NotImplementedError("Exercise 8.15: implement NF4Linear.forward in lora.py")

    def to_linear(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        """An ``nn.Linear`` with the dequantized weight and the bias, in ``dtype``."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight_packed.device,
                           dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight(dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")


@torch.no_grad()
def quantize_model(model: nn.Module, target_modules: str | Sequence[str], *, blocksize: int = NF4_BLOCKSIZE,
                   double_quant: bool = True, compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` whose name matches ``target_modules`` (:func:`target_matches`)
    by an :class:`NF4Linear` (:meth:`NF4Linear.from_linear`), in place, and freeze the model: the frozen
    base of QLoRA. Returns ``model``."""
    replace_linear_layers(model, target_modules, lambda linear: NF4Linear.from_linear(
        linear, blocksize=blocksize, double_quant=double_quant, compute_dtype=compute_dtype))
    return model.requires_grad_(False)


def replace_linear_layers(model: nn.Module, target_modules: str | Sequence[str], make) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` whose name matches ``target_modules`` (:func:`target_matches`)
    by ``make(linear)``, in place; refuse targets that match none. Returns ``model``."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and target_matches(name, target_modules)]
    if not names:
        raise ValueError(f"target_modules {target_modules!r} match no nn.Linear of the model")
    for name in names:
        replace_module(model, name, make(model.get_submodule(name)))
    return model


# -- 8.16 memory ------------------------------------------------------------------------------------------
@exercise("8.16", points=3, validate=_validate_training_memory)
def training_memory(linear_shapes: Sequence[tuple[int, int]], other_params: int, method: str, *, r: int = 8,
                    param_bytes: int = 4, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                    absmax_blocksize: int = ABSMAX_BLOCKSIZE) -> dict[str, int]:
    """The bytes a fine-tune keeps for weights, gradients and AdamW's states, by method.

    Args:
        linear_shapes: ``(out_features, in_features)`` of each adapted weight matrix: the LoRA targets
            (quantized to NF4 by QLoRA). Their biases, if any, belong to ``other_params``.
        other_params: the number of every other parameter of the model (embeddings, norms, biases,
            layers that are not adapted).
        method: ``"full"`` (every parameter trained), ``"lora"`` (frozen base, an adapter of rank ``r``
            on each adapted weight) or ``"qlora"`` (the same, with the adapted weights in NF4).
        r: the rank of every adapter.
        param_bytes: bytes per value of every parameter that is not 4-bit, of the adapters, of their
            gradients and of AdamW's states (4 for float32, 2 for bfloat16).
        blocksize: NF4's block size.
        double_quant: QLoRA's scales quantized once more (:func:`double_quantize`).
        absmax_blocksize: the block size of double quantization.

    Returns:
        ``{"weights", "gradients", "optimizer", "total"}``, ints of bytes (``total`` the sum of the
        other three). With ``N = other_params + sum(out * in)`` and ``L = sum(r * (out + in))`` (an
        adapter's ``A`` and ``B``):

        - ``"full"``: weights ``N * param_bytes``; gradients the same; optimizer ``2 * N * param_bytes``
          (``torch.optim.AdamW``'s ``exp_avg`` and ``exp_avg_sq``, each like its parameter; its
          one-number step counters are left out).
        - ``"lora"``: weights ``(N + L) * param_bytes``; gradients ``L * param_bytes``; optimizer
          ``2 * L * param_bytes``.
        - ``"qlora"``: as ``"lora"``, except that each adapted weight of ``n = out * in`` values costs
          ``ceil(n / 2)`` bytes of packed indices plus its scales instead of ``n * param_bytes``: with
          ``b = ceil(n / blocksize)`` blocks, ``4 * b`` bytes of float32 scales, or with double
          quantization ``b`` bytes of 8-bit scales, ``4 * ceil(b / absmax_blocksize)`` bytes of
          second-level scales and 4 bytes for the offset. Code books are shared and not counted.

        These are the tensor bytes measured on a model: its parameters (and for QLoRA
        ``bitsandbytes``' packed weights and ``quant_state`` scales), the ``.grad`` of the trainable
        ones after a backward pass, and AdamW's moments after one step. Activations come on top,
        growing with batch size and sequence length.

    Hint:
        Every 4-bit matrix is quantized on its own, so its block counts are rounded up separately:
        sum per matrix, not over the total.
    """
    raise NotImplementedError("Exercise 8.16: implement training_memory in lora.py")


@exercise("8.17", points=3, validate=_validate_activation_memory)
def activation_memory(config: dict, batch_size: int, seq_len: int, method: str = "full", *, r: int = 8,
                      attn_implementation: str = "sdpa") -> int:
    """The bytes of the activations a float32 Llama-style model keeps for the backward pass of one
    training step: what autograd saves during the forward pass of ``batch_size`` sequences of
    ``seq_len`` tokens with labels.

    Args:
        config: the architecture (:data:`ACTIVATION_KEYS`: ``hidden_size`` ``d``, ``intermediate_size``
            ``f``, ``num_hidden_layers`` ``L``, ``num_attention_heads`` ``h``, ``num_key_value_heads``
            ``k``, ``head_dim`` ``e``, ``vocab_size`` ``V``) of a decoder with RMSNorm, rotary
            positions, a SwiGLU MLP and ``transformers``' causal-LM loss (Llama, the course model).
        method: ``"full"`` (every parameter trains), ``"lora"`` or ``"qlora"`` (everything frozen but
            an adapter of rank ``r`` on each of the seven projections of every block, no dropout;
            QLoRA's 4-bit layers keep no weight for the backward pass, so the two keep the same).
        attn_implementation: ``"sdpa"`` (a memory-efficient kernel) or ``"eager"`` (the softmax
            materialised).

    Returns:
        An int of bytes: ``batch_size * seq_len`` tokens times the bytes per token below, 4 per float32
        value. Left out: what does not grow with the batch (the rotary tables, the loss's count).

        Per token and per block:

        - each RMSNorm whose input needs a gradient: its input (``d``) and the reciprocal RMS (1); with
          its weight trained (``"full"``), the normalised input too (``d``). With adapters the first
          block's first norm keeps nothing: its input, the frozen embedding's output, needs no gradient.
        - the inputs of the linear layers (every one trains or has an adapter): the normalised state
          before attention (``d``, shared by ``q``/``k``/``v``), the attention output before ``o_proj``
          (``h * e``), the normalised state before the MLP (``d``, shared by ``gate``/``up``), the
          product before ``down_proj`` (``f``).
        - attention, ``"sdpa"``: the rotated queries (``h * e``), the rotated keys and the values
          (``k * e`` each) and the log-sum-exp of each head (``h``). ``"eager"``: the queries, the keys
          and values repeated to ``h`` heads (``h * e`` each) and the attention probabilities
          (``h * seq_len``). With ``"sdpa"`` the kernel's saved output is ``o_proj``'s input (one tensor).
        - the MLP: the gate projection's output, its SiLU and the up projection's output (``f`` each).
        - each adapter: ``A``'s output (``r``).

        Once per token: the final norm (as a block's; ``lm_head``'s input ``d`` too when it trains, in
        ``"full"``), the loss's log-probabilities (``V``), the label (8 bytes: int64) and, in
        ``"full"``, the input id that the embedding's gradient needs (8 bytes).

    Hint:
        Autograd keeps a tensor only where a gradient needs it: the input of a product by a trained
        weight, the output of a softmax or log-softmax. Measure your count on a real model with
        ``torch.autograd.graph.saved_tensors_hooks`` (:func:`course_lib.memory.saved_tensor_bytes`):
        its batch-2 result minus its batch-1 result is one sequence's bytes.
    """
    raise NotImplementedError("Exercise 8.17: implement activation_memory in lora.py")


# -- the course's adapted models: Chapter 7's run with adapters ------------------------------------------------
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # every linear layer
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# Bump when the adaptation or its report changes in a way that should rebuild cached adapters.
ADAPT_VERSION = 3  # 2: the embedding trained (modules_to_save), the validation loss in the report; 3: NF4Linear recomputes its weight in the backward pass
_ADAPT_MODULES = ("numerics", "attention", "transformer", "generation", "pretraining", "instruct", "sft", "lora")


@dataclass(frozen=True)
class AdaptConfig:
    """A parameter-efficient fine-tune: Chapter 7's run (:func:`course_lib.sft.finetune` with the
    ``finetune`` preset: its data, batches, schedule and evaluation, at learning rate ``lr`` and for
    ``total_steps``) on Chapter 5's pretrained course model, with LoRA adapters of rank ``r`` on
    ``target_modules``, the ``modules_to_save`` trained in full, and everything else frozen;
    ``method="qlora"`` stores the adapted weights in NF4 first (:func:`quantize_model`).

    ``modules_to_save`` is the token embedding by default: the chat template's ``<|im_start|>`` and
    ``<|im_end|>`` are new tokens (Chapter 6), whose rows of the embedding (tied to the output layer)
    pre-training never trained. With the embedding frozen the adapters must work around two random
    vectors, and on the CPU model they do not (validation loss 6.2 after 200 steps against 2.6)."""

    method: str = "lora"                               # "lora" or "qlora"
    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = PROJECTIONS
    dropout: float = 0.0
    modules_to_save: tuple[str, ...] = ("embed_tokens",)
    finetune: str = "cpu"                              # the course_lib.sft preset of the run
    lr: float = 3e-3
    total_steps: int | None = None                     # None: the finetune preset's
    seed: int = 0                                      # the adapters' A (inject_lora's seed)

    def finetune_config(self):
        """The :class:`~course_lib.sft.FinetuneConfig` of the run."""
        from course_lib.sft import preset

        return preset(self.finetune, lr=self.lr, **({"total_steps": self.total_steps} if self.total_steps else {}))


ADAPT_PRESETS: dict[str, AdaptConfig] = {
    # On a CPU: Chapter 7's "cpu" run (200 steps) with adapters of rank 8 on every projection.
    "lora-cpu": AdaptConfig(),
    "qlora-cpu": AdaptConfig(method="qlora"),
    # On one GPU: Chapter 7's "gpu" run (the 100M-parameter model, bf16) with rank-16 adapters.
    "lora-gpu": AdaptConfig(r=16, alpha=32.0, finetune="gpu", lr=1e-3),
    "qlora-gpu": AdaptConfig(method="qlora", r=16, alpha=32.0, finetune="gpu", lr=1e-3),
}
# The measured sweep of the book: rank on every projection, and the attention projections alone, in
# shorter runs (100 steps) than the presets.
SWEEP_STEPS = 50
SWEEP: tuple[AdaptConfig, ...] = tuple(
    [AdaptConfig(r=r, alpha=2.0 * r, total_steps=SWEEP_STEPS) for r in (1, 4, 16)]
    + [AdaptConfig(r=4, alpha=8.0, target_modules=ATTENTION, total_steps=SWEEP_STEPS)])


def adapt_preset(method: str = "lora", size: str = "cpu") -> AdaptConfig:
    """:data:`ADAPT_PRESETS` ``[f"{method}-{size}"]``."""
    name = f"{method}-{size}"
    if name not in ADAPT_PRESETS:
        raise ValueError(f"no preset {name!r}: method is 'lora' or 'qlora', size 'cpu' or 'gpu'")
    return ADAPT_PRESETS[name]


def adapter_model(config: AdaptConfig, model: nn.Module) -> nn.Module:
    """``model`` made ready for ``config``'s training, in place: with QLoRA its target layers in NF4
    (:func:`quantize_model`), then LoRA adapters on them (:func:`inject_lora`, seeded); only the
    adapters and the ``modules_to_save`` train."""
    if config.method not in ("lora", "qlora"):
        raise ValueError(f"method must be 'lora' or 'qlora', got {config.method!r}")
    if config.method == "qlora":
        model = quantize_model(model, list(config.target_modules))
    inject_lora(model, list(config.target_modules), r=config.r, alpha=config.alpha, dropout=config.dropout,
                seed=config.seed)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in config.modules_to_save:
            module.requires_grad_(True)
    return model


def adapt(config: AdaptConfig, progress: bool = False):
    """Run ``config``: the pretrained course model of its fine-tuning preset's ``base``, adapted
    (:func:`adapter_model`), trained by :func:`course_lib.sft.finetune`. Returns its
    :class:`~course_lib.sft.FinetuneResult`; ``result.model`` holds the trained adapters."""
    from course_lib.pretraining import pretrained_course_lm
    from course_lib.sft import finetune

    run = config.finetune_config()
    model, tokenizer = pretrained_course_lm(run.base, run.source, progress=progress)
    return finetune(run, model=adapter_model(config, model), tokenizer=tokenizer, progress=progress)


def adapter_report(config: AdaptConfig, result) -> dict:
    """What the book compares: held-out accuracy per family on :func:`course_lib.sft.test_rows`, the
    final validation loss, trainable and total parameters, the training's seconds and tokens per second, and the bytes of
    weights, gradients and AdamW's states (:func:`training_memory`) next to the model's measured
    tensor bytes (the bill counts the ``modules_to_save`` among the trained parameters: their gradients
    and AdamW's moments); the peak of GPU memory when it ran on one."""
    from course_lib.sft import task_accuracy, test_rows

    run = config.finetune_config()
    model = result.model
    accuracy, _ = task_accuracy(model, result.tokenizer, test_rows(run), run.max_new_tokens)
    trainable, total = count_parameters(model)
    shapes = [(m.base_layer.out_features, m.base_layer.in_features) for m in lora_layers(model).values()]
    adapted = sum(o * i for o, i in shapes)
    in_full = trainable - sum(o.lora_A.weight.numel() + o.lora_B.weight.numel() for o in lora_layers(model).values())
    memory = training_memory(shapes, total - trainable - adapted + in_full, config.method, r=config.r)
    memory["gradients"] += 4 * in_full
    memory["optimizer"] += 8 * in_full
    memory["total"] = memory["weights"] + memory["gradients"] + memory["optimizer"]
    stored = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
    return {"config": dataclasses.asdict(config), "test": accuracy, "test_examples": len(test_rows(run)),
            "trainable_parameters": trainable, "parameters": total, "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second, "history": result.history,
            "validation_loss": result.history["eval_loss"][-1],
            "trained_in_full": in_full, "memory": memory,
            "measured_weight_bytes": sum(stored.values()),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}


def adapted_model_dir(method: str = "lora", size: str = "cpu") -> Path:
    """The cache folder of the course's adapter of ``method`` and ``size`` (built or not)."""
    from course_lib.cache import cache_entry, cache_key
    from course_lib.instruction_data import instruction_data_path
    from course_lib.pretraining import implementation_key, pretrained_model_dir

    config = adapt_preset(method, size)
    run = config.finetune_config()
    key = cache_key(ADAPT_VERSION, dataclasses.asdict(config), dataclasses.asdict(run),
                    pretrained_model_dir(run.base).name, instruction_data_path().name,
                    implementation_key(_ADAPT_MODULES))
    return cache_entry("models", f"course-{method}-{size}-{key}")


def adapted_course_lm(method: str = "lora", size: str = "cpu", progress: bool = True):
    """The course's adapted chat model and its tokenizer: ``(model, tokenizer)``.

    Loaded from the course cache; on first use preset ``f"{method}-{size}"`` (:data:`ADAPT_PRESETS`)
    is trained (:func:`adapt`: Chapter 7's run with adapters, a minute or two on a CPU for ``"cpu"``),
    reported (:func:`adapter_report`, in ``training.json``) and saved as ``peft`` saves an adapter
    (:func:`save_adapter`) with the tokenizer and its chat template. The model is Chapter 5's
    pretrained model with the adapter loaded (:func:`load_adapter`; with QLoRA on its NF4 base), the
    adapters unmerged. In solution mode the reference solutions build it; in student mode your code
    does, keyed by your files."""
    from transformers import AutoTokenizer

    from course_lib.cache import building, stage_directory
    from course_lib.pretraining import pretrained_course_lm, pretrained_model_dir

    config = adapt_preset(method, size)
    run = config.finetune_config()
    if run.base == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("the 'gpu' presets need a CUDA GPU; use size='cpu' here")
    directory = adapted_model_dir(method, size)
    with building(directory):  # one builder at a time (the book and the tests run side by side)
        if not (directory / ADAPTER_CONFIG).is_file():
            result = adapt(config, progress)
            result.model.to("cpu")
            report = adapter_report(config, result)
            with stage_directory(directory) as staging:
                save_adapter(result.model, staging, str(pretrained_model_dir(run.base)), config.modules_to_save)
                result.tokenizer.save_pretrained(staging)
                (staging / "training.json").write_text(json.dumps(report, default=str))
    model, _ = pretrained_course_lm(run.base, progress=progress)
    if config.method == "qlora":
        model = quantize_model(model, list(config.target_modules))
    return load_adapter(model, directory).eval(), AutoTokenizer.from_pretrained(directory)


def adapted_training_record(method: str = "lora", size: str = "cpu") -> dict:
    """``training.json`` of the cached adapter (built if missing): :func:`adapter_report`."""
    adapted_course_lm(method, size, progress=False)
    return json.loads((adapted_model_dir(method, size) / "training.json").read_text())


def rank_sweep(progress: bool = False) -> list[dict]:
    """:func:`adapter_report` of every run of :data:`SWEEP` (without its history), built once and
    cached in one file keyed like the adapters."""
    from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic
    from course_lib.instruction_data import instruction_data_path
    from course_lib.pretraining import implementation_key, pretrained_model_dir

    key = cache_key(ADAPT_VERSION, [dataclasses.asdict(c) for c in SWEEP],
                    [dataclasses.asdict(c.finetune_config()) for c in SWEEP], pretrained_model_dir("cpu").name,
                    instruction_data_path().name, implementation_key(_ADAPT_MODULES))
    path = cache_entry("models", f"course-lora-sweep-{key}.json")
    with building(path):
        cached = read_json(path)
        if cached is not None:
            return cached
        reports = []
        for config in SWEEP:
            report = adapter_report(config, adapt(config, progress))
            reports.append({k: v for k, v in report.items() if k != "history"})
        write_atomic(path, json.dumps(reports, default=str))
        return reports


# -- the functions the tests call: plain data in, plain data out ---------------------------------------------
def _grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in module.named_parameters()}


def run_lora_linear(layer_class: type, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                    lora_B: torch.Tensor, x: torch.Tensor, alpha: float, *, use_rslora: bool = False,
                    dropout: float = 0.0, training: bool = False, conv1d: bool = False, merged: bool = False,
                    grad_output: torch.Tensor | None = None) -> dict:
    """Build ``layer_class`` (:class:`LoRALinear` or a variant) around an ``nn.Linear`` with ``weight``
    ``(out, in)`` and ``bias`` (or a GPT-2 ``Conv1D`` with ``weight`` ``(in, out)`` when ``conv1d``),
    set its adapter to ``lora_A`` and ``lora_B`` (in their dtype), put it in training or eval mode,
    merge it when ``merged``, and run ``x`` forward and backward (with ``grad_output``, default ones).
    Returns the output, ``x``'s gradient, the gradients of every parameter by name (``None`` for a
    frozen one) and the scale."""
    from transformers.pytorch_utils import Conv1D

    with torch.random.fork_rng(devices=[]):     # building draws nothing from the global generator (dropout does)
        if conv1d:
            base = Conv1D(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)
        else:
            base = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                             dtype=weight.dtype)
        with torch.no_grad():
            base.weight.copy_(weight)
            if bias is not None:
                base.bias.copy_(bias)
            elif conv1d:
                base.bias.zero_()
        r = lora_A.shape[0]
        layer = layer_class.from_adapter(base, lora_A, lora_B, alpha, scaling=alpha / (math.sqrt(r) if use_rslora else r),
                                         dropout=dropout, use_rslora=use_rslora)
    with torch.no_grad():   # in the adapter's own dtype, whatever the base's
        layer.lora_A.weight.data = lora_A.detach().clone()
        layer.lora_B.weight.data = lora_B.detach().clone()
    layer.train(training)
    if merged:
        layer.merge()
    x = x.detach().clone().requires_grad_(True)
    output = layer(x)
    output.backward(torch.ones_like(output) if grad_output is None else grad_output.to(output.dtype))
    return {"output": output.detach(), "grad_x": x.grad, "grads": _grads(layer), "scaling": layer.scaling}


def lora_linear_outputs(weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                        lora_B: torch.Tensor, x: torch.Tensor, alpha: float, *, use_rslora: bool = False,
                        dropout: float = 0.0, training: bool = False, conv1d: bool = False, merged: bool = False,
                        grad_output: torch.Tensor | None = None) -> dict:
    """How the tests run your :meth:`LoRALinear.forward` (8.3): :func:`run_lora_linear` of :class:`LoRALinear`."""
    return run_lora_linear(LoRALinear, weight, bias, lora_A, lora_B, x, alpha, use_rslora=use_rslora, dropout=dropout,
                           training=training, conv1d=conv1d, merged=merged, grad_output=grad_output)


def set_adapters(model: nn.Module, lora_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    """Copy ``{module name: {"lora_A": A, "lora_B": B}}`` into ``model``'s :class:`LoRALinear` layers."""
    layers = lora_layers(model)
    with torch.no_grad():
        for name, pair in lora_weights.items():
            if name not in layers:
                raise KeyError(f"{name} is not a LoRA layer of the model (those are {sorted(layers)})")
            for part in ("lora_A", "lora_B"):
                getattr(layers[name], part).weight.copy_(pair[part])


def wrap_modules(model: nn.Module, names: Iterable[str], r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 use_rslora: bool = False) -> nn.Module:
    """Wrap the modules ``names`` of ``model`` in :class:`LoRALinear` with zero adapters of rank ``r`` and
    the scale ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), no matching, no freezing
    (:meth:`LoRALinear.from_adapter`): how the tests of 8.7 and 8.8 build an adapted model without your
    :func:`inject_lora`, :func:`init_lora_weights` and :func:`lora_scaling`."""
    scaling = alpha / (math.sqrt(r) if use_rslora else r)
    for name in names:
        base = model.get_submodule(name)
        in_features, out_features, _ = linear_features(base)
        replace_module(model, name, LoRALinear.from_adapter(base, torch.zeros(r, in_features), torch.zeros(out_features, r),
                                                            alpha, scaling=scaling, dropout=dropout, use_rslora=use_rslora))
    return model


def run_lora_injection(inject: Callable, model: nn.Module, target_modules: str | Sequence[str], r: int = 8,
                       alpha: float = 8.0, *, dropout: float = 0.0, use_rslora: bool = False, seed: int | None = 0,
                       lora_weights: dict[str, dict[str, torch.Tensor]] | None = None,
                       input_ids: torch.Tensor | None = None) -> dict:
    """Inject adapters into ``model`` with ``inject`` (:func:`inject_lora` or a variant); set them to
    ``lora_weights`` when given; with ``input_ids``, run the model with ``labels=input_ids`` and
    backward. Returns the names and classes of the wrapped modules' bases, the trainable parameters
    (name -> shape), the counts (:func:`count_parameters`), the adapters' weights, the loss, the logits
    and the gradients of the trainable parameters."""
    model = inject(model, target_modules, r, alpha, dropout, use_rslora, seed)
    layers = lora_layers(model)
    if lora_weights:
        set_adapters(model, lora_weights)
    trainable, total = count_parameters(model)
    out = {"wrapped": {name: type(m.base_layer).__name__ for name, m in layers.items()},
           "trainable": {name: list(p.shape) for name, p in model.named_parameters() if p.requires_grad},
           "n_trainable": trainable, "n_total": total,
           "lora_A": {name: m.lora_A.weight.detach().clone() for name, m in layers.items()},
           "lora_B": {name: m.lora_B.weight.detach().clone() for name, m in layers.items()}}
    if input_ids is not None:
        result = model(input_ids=input_ids, labels=input_ids)
        result.loss.backward()
        out |= {"loss": result.loss.detach(), "logits": result.logits.detach(),
                "grads": {name: p.grad.detach().clone() for name, p in model.named_parameters()
                          if p.requires_grad and p.grad is not None}}
    return out


def lora_injection(model: nn.Module, target_modules: str | Sequence[str], r: int = 8, alpha: float = 8.0, *,
                   dropout: float = 0.0, use_rslora: bool = False, seed: int | None = 0,
                   lora_weights: dict[str, dict[str, torch.Tensor]] | None = None,
                   input_ids: torch.Tensor | None = None) -> dict:
    """How the tests run your :func:`inject_lora` (8.5): :func:`run_lora_injection` of it."""
    return run_lora_injection(inject_lora, model, target_modules, r, alpha, dropout=dropout, use_rslora=use_rslora,
                              seed=seed, lora_weights=lora_weights, input_ids=input_ids)


def run_adapter_weights(state_dict_of: Callable, model: nn.Module, lora_weights: dict[str, dict[str, torch.Tensor]],
                        r: int, alpha: float) -> dict:
    """``state_dict_of`` (:func:`adapter_state_dict` or a variant) of ``model`` with the modules of
    ``lora_weights`` wrapped and set. Returns the state dict, and the model's parameters afterwards
    (to check that nothing changed)."""
    wrap_modules(model, list(lora_weights), r, alpha)
    set_adapters(model, lora_weights)
    state = state_dict_of(model)
    return {"state_dict": state, "parameters": {n: p.detach().clone() for n, p in model.named_parameters()}}


def adapter_weights(model: nn.Module, lora_weights: dict[str, dict[str, torch.Tensor]], r: int, alpha: float) -> dict:
    """How the tests run your :func:`adapter_state_dict` (8.7): :func:`run_adapter_weights` of it."""
    return run_adapter_weights(adapter_state_dict, model, lora_weights, r, alpha)


def run_loaded_adapter(load: Callable, model: nn.Module, modules: Sequence[str], state_dict: dict[str, torch.Tensor],
                       r: int, alpha: float, input_ids: torch.Tensor | None = None) -> dict:
    """Wrap ``modules`` of ``model`` (fresh adapters) and ``load`` (:func:`load_adapter_state_dict` or a
    variant) ``state_dict`` into them. Returns the adapters' weights and ``requires_grad`` by module
    name and, with ``input_ids``, the logits."""
    wrap_modules(model, modules, r, alpha)
    load(model, state_dict)
    layers = lora_layers(model)
    out = {"lora_A": {n: m.lora_A.weight.detach().clone() for n, m in layers.items()},
           "lora_B": {n: m.lora_B.weight.detach().clone() for n, m in layers.items()},
           "requires_grad": {n: [m.lora_A.weight.requires_grad, m.lora_B.weight.requires_grad] for n, m in layers.items()}}
    if input_ids is not None:
        with torch.no_grad():
            out["logits"] = model(input_ids=input_ids).logits
    return out


def loaded_adapter(model: nn.Module, modules: Sequence[str], state_dict: dict[str, torch.Tensor], r: int,
                   alpha: float, input_ids: torch.Tensor | None = None) -> dict:
    """How the tests run your :func:`load_adapter_state_dict` (8.8): :func:`run_loaded_adapter` of it."""
    return run_loaded_adapter(load_adapter_state_dict, model, modules, state_dict, r, alpha, input_ids)


def run_nf4_linear(layer_class: type, buffers: dict[str, torch.Tensor], in_features: int, out_features: int,
                   x: torch.Tensor, *, bias: torch.Tensor | None = None, compute_dtype: str = "float32",
                   blocksize: int = NF4_BLOCKSIZE) -> dict:
    """Build ``layer_class`` (:class:`NF4Linear` or a variant) from its quantized state ``buffers``
    (double quantization when they hold ``absmax_q``) with ``compute_dtype`` (a name: ``"bfloat16"``),
    run ``x`` forward and backward (ones). Returns the output, ``x``'s gradient, the gradients of
    the layer's parameters (``None``: all frozen) and ``saved_bytes``, what autograd kept from the
    forward pass for the backward (:func:`~course_lib.memory.saved_tensor_bytes`, leaving out ``x`` and
    the layer's own tensors)."""
    layer = layer_class(in_features, out_features, bias is not None, blocksize=blocksize,
                        double_quant="absmax_q" in buffers, compute_dtype=getattr(torch, compute_dtype)).to(x.device)
    layer.load_buffers(buffers)
    if bias is not None:
        with torch.no_grad():
            layer.bias.copy_(bias)
    x = x.detach().clone().requires_grad_(True)
    outputs = []
    saved = saved_tensor_bytes(lambda: outputs.append(layer(x)), exclude=[x, *layer.parameters(), *layer.buffers()])
    output = outputs.pop()
    output.backward(torch.ones_like(output))
    return {"output": output.detach(), "grad_x": x.grad, "grads": _grads(layer), "saved_bytes": saved}


def nf4_linear_outputs(buffers: dict[str, torch.Tensor], in_features: int, out_features: int, x: torch.Tensor, *,
                       bias: torch.Tensor | None = None, compute_dtype: str = "float32",
                       blocksize: int = NF4_BLOCKSIZE) -> dict:
    """How the tests run your :meth:`NF4Linear.forward` (8.15): :func:`run_nf4_linear` of :class:`NF4Linear`."""
    return run_nf4_linear(NF4Linear, buffers, in_features, out_features, x, bias=bias, compute_dtype=compute_dtype,
                          blocksize=blocksize)
