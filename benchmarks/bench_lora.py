"""Chapter 8: the course's LoRA layer against peft's (forward + backward), and its NF4 quantization and
dequantization against bitsandbytes' ``quantize_4bit``/``dequantize_4bit``, on the same inputs."""

from __future__ import annotations

import copy
import logging

import torch

from benchmarks.timing import Row, interleaved_ms
from course_lib import lora


def _peft_layer(base: torch.nn.Module, r: int, alpha: float) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    holder = torch.nn.Module()
    holder.proj = base
    return get_peft_model(holder, LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"])).base_model.model.proj


def _train_step(layer: torch.nn.Module, x: torch.Tensor):
    def step():
        layer(x).sum().backward()
    return step


def run(device: torch.device) -> list[Row]:
    import bitsandbytes.functional as bnbf

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    sizes = [(1024, 16), (4096, 64)] if device.type == "cpu" else [(4096, 16), (8192, 64)]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for width, r in sizes:
        base = torch.nn.Linear(width, width, device=device)
        ours = lora.LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r, seed=0)
        theirs = _peft_layer(copy.deepcopy(base), r, 2 * r)
        with torch.no_grad():
            for part in ("lora_A", "lora_B"):
                weight = torch.randn(getattr(ours, part).weight.shape, generator=gen).to(device) / width
                getattr(ours, part).weight.copy_(weight)
                getattr(theirs, part)["default"].weight.copy_(weight)
        x = torch.randn(8, 128, width, generator=gen).to(device)
        course_ms, library_ms = interleaved_ms(_train_step(ours, x), _train_step(theirs, x), device, repeats=10)
        rows.append(Row("lora fwd+bwd", f"{width}, r={r}", str(device), course_ms, library_ms, "peft lora.Linear"))
        weight = base.weight.detach()
        code = lora.nf4_code().to(device)

        def course_quantize():
            indices, absmax = lora.quantize_blockwise(weight, code, 64)
            return lora.pack_nibbles(indices), absmax

        course_ms, library_ms = interleaved_ms(course_quantize, lambda: bnbf.quantize_4bit(weight, blocksize=64,
                                                                                           quant_type="nf4"),
                                               device, repeats=10)
        rows.append(Row("nf4 quantize", f"{width}x{width}", str(device), course_ms, library_ms, "bnb quantize_4bit"))
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
        n = weight.numel()

        def course_dequantize():
            indices = lora.unpack_nibbles(packed.flatten(), n)
            return lora.dequantize_blockwise(indices, state.absmax, code, 64, weight.shape)

        course_ms, library_ms = interleaved_ms(course_dequantize, lambda: bnbf.dequantize_4bit(packed, state), device,
                                               repeats=10)
        rows.append(Row("nf4 dequantize", f"{width}x{width}", str(device), course_ms, library_ms, "bnb dequantize_4bit"))
    return rows
