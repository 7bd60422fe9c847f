"""Reference solutions for Chapter 8 (course_lib/lora.py)."""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import lora
from course_lib.lora import (ABSMAX_BLOCKSIZE, ADAPTER_PREFIX, NF4_BLOCKSIZE, NF4_OFFSET, linear_features,
                             lora_layers, replace_module)


def init_lora_weights(in_features: int, out_features: int, r: int, seed: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    lora_A = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
    return lora_A, torch.zeros(out_features, r)


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoRALinear(lora.LoRALinear):
    """The reference of :meth:`course_lib.lora.LoRALinear.forward`; the class supplies the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        h = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        return (result + self.lora_B(self.lora_A(h)) * self.scaling).to(result.dtype)


def target_matches(name: str, target_modules: str | Sequence[str]) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def inject_lora(model: nn.Module, target_modules: str | Sequence[str], r: int = 8, alpha: float = 8.0,
                dropout: float = 0.0, use_rslora: bool = False, seed: int | None = None) -> nn.Module:
    matches = [(name, module) for name, module in model.named_modules() if target_matches(name, target_modules)]
    if not matches:
        raise ValueError(f"target_modules {target_modules!r} match no module of the model")
    for name, module in matches:
        try:
            linear_features(module)
        except ValueError as err:
            raise ValueError(f"target {name}: {err}") from None
    model.requires_grad_(False)
    for i, (name, module) in enumerate(matches):
        layer = lora.LoRALinear(module, r, alpha, dropout, use_rslora, None if seed is None else seed + i)
        replace_module(model, name, layer)
    return model


def lora_delta_weight(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
                      fan_in_fan_out: bool = False) -> torch.Tensor:
    with torch.no_grad():
        low_precision = lora_A.dtype in (torch.float16, torch.bfloat16)
        A, B = (lora_A.float(), lora_B.float()) if low_precision else (lora_A, lora_B)
        delta = (B @ A) * scaling                                  # (out_features, in_features)
        delta = delta.T if fan_in_fan_out else delta
        return delta.to(lora_A.dtype)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            state[f"{ADAPTER_PREFIX}{name}.{part}.weight"] = getattr(layer, part).weight.detach().clone().contiguous()
    return state


def load_adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    targets = {f"{ADAPTER_PREFIX}{name}.{part}.weight": getattr(layer, part).weight
               for name, layer in lora_layers(model).items() for part in ("lora_A", "lora_B")}
    unknown = sorted(set(state_dict) - set(targets))
    if unknown:
        raise KeyError(f"state_dict has entries that are no adapter weight of the model: {unknown[:3]}")
    missing = sorted(set(targets) - set(state_dict))
    if missing:
        raise KeyError(f"state_dict lacks adapter weights of the model: {missing[:3]}")
    for key, weight in targets.items():
        if state_dict[key].shape != weight.shape:
            raise ValueError(f"{key}: saved shape {tuple(state_dict[key].shape)}, the model's {tuple(weight.shape)}")
    with torch.no_grad():
        for key, weight in targets.items():
            weight.copy_(state_dict[key])


def nf4_code() -> torch.Tensor:
    def quantiles(levels: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtri(levels.double()).float()

    positive = quantiles(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1])
    negative = -quantiles(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1])
    values = torch.cat([negative, torch.zeros(1), positive]).sort().values
    return values / values.max()


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int = NF4_BLOCKSIZE
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = F.pad(flat, (0, n_blocks * blocksize - n)).view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                                           # (n_blocks,)
    scaled = (blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]).clamp(-1, 1)
    code = code.to(flat.device, torch.float32)
    midpoints = (code[1:] + code[:-1]) / 2
    indices = torch.bucketize(scaled.reshape(-1)[:n], midpoints)                 # ties go to the lower index
    return indices.to(torch.uint8), absmax


def dequantize_blockwise(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                         shape: Sequence[int]) -> torch.Tensor:
    values = code.float()[indices.long()]
    scales = absmax.float().repeat_interleave(blocksize)[:indices.numel()]
    return (values * scales).reshape(tuple(shape))


def pack_nibbles(indices: torch.Tensor) -> torch.Tensor:
    return (indices[0::2] << 4) | indices[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()[:n]


def double_quantize(absmax: torch.Tensor, code: torch.Tensor, blocksize: int = ABSMAX_BLOCKSIZE
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    offset = absmax.float().mean()
    absmax_q, absmax2 = quantize_blockwise(absmax - offset, code, blocksize)
    return absmax_q, absmax2, offset


class _NF4Matmul(torch.autograd.Function):
    """``F.linear(x, W, bias)`` with ``W`` the layer's NF4 weight dequantized, keeping only the layer for
    the backward pass, which dequantizes ``W`` again for ``x``'s gradient (weight and bias are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: lora.NF4Linear, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight(), bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output @ ctx.layer.dequantized_weight(grad_output.dtype), None, None


class NF4Linear(lora.NF4Linear):
    """The reference of :meth:`course_lib.lora.NF4Linear.forward`; the class supplies the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return _NF4Matmul.apply(x.to(self.compute_dtype), self, bias).to(x.dtype)


def training_memory(linear_shapes: Sequence[tuple[int, int]], other_params: int, method: str, *, r: int = 8,
                    param_bytes: int = 4, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                    absmax_blocksize: int = ABSMAX_BLOCKSIZE) -> dict[str, int]:
    adapted = sum(out * inp for out, inp in linear_shapes)
    lora_params = sum(r * (out + inp) for out, inp in linear_shapes)
    if method == "full":
        trainable, weights = other_params + adapted, (other_params + adapted) * param_bytes
    elif method == "lora":
        trainable, weights = lora_params, (other_params + adapted + lora_params) * param_bytes
    else:
        quantized = 0
        for out, inp in linear_shapes:
            n = out * inp
            blocks = -(-n // blocksize)
            scales = blocks + 4 * -(-blocks // absmax_blocksize) + 4 if double_quant else 4 * blocks
            quantized += -(-n // 2) + scales
        trainable, weights = lora_params, (other_params + lora_params) * param_bytes + quantized
    memory = {"weights": weights, "gradients": trainable * param_bytes, "optimizer": 2 * trainable * param_bytes}
    return memory | {"total": sum(memory.values())}


def activation_memory(config: dict, batch_size: int, seq_len: int, method: str = "full", *, r: int = 8,
                      attn_implementation: str = "sdpa") -> int:
    d, f, n_layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    h, k, e, vocab = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"], config["vocab_size"]
    full = method == "full"
    norm = d + 1 + (d if full else 0)
    inputs = 2 * d + h * e + f
    if attn_implementation == "sdpa":
        attention = h * e + 2 * k * e + h
    else:
        attention = 3 * h * e + h * seq_len
    block = 2 * norm + inputs + attention + 3 * f + (0 if full else 7 * r)
    values = n_layers * block - (0 if full else norm) + norm + (d if full else 0) + vocab
    return batch_size * seq_len * (4 * values + 8 + (8 if full else 0))
