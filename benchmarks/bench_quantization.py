"""Chapter 11: the course's GPTQ (``gptq_quantize``) against auto-gptq 0.7.1's ``GPTQ.fasterquant`` on the
same layer, Hessian and settings; its GGUF Q8_0/Q4_0 quantizers against ``gguf.quants.quantize`` on the
same float32 matrix; and a weight-only 4-bit ``QuantizedLinear``'s forward against the float
``nn.Linear`` it came from (with both weights' bytes).

The GGUF rows time what each needs: a torch tensor in and a ``torch.uint8`` tensor out for the course, a
numpy array in and out for gguf (on CUDA the course's quantizer runs on the GPU and gguf's timing includes
copying the matrix to the host, gguf being numpy-only). ``QuantizedLinear`` dequantizes its weight on
every forward in plain PyTorch, so it is *slower* than the float matmul (ratio above 1); what it buys is
the weight memory in the library column, not speed (that takes a fused kernel such as Marlin or
llama.cpp's). The last row is the whole course model decoding with every linear layer of its decoder in
4 bits, against the float model (tokens/s and the decoder's weight memory in the library column). A
reference library that is not installed gives no row."""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import torch

from benchmarks.timing import Row, interleaved_ms
from course_lib import quantization as Q
from tests.auto_gptq_reference import load_auto_gptq_gptq

GPTQ_SETTINGS = dict(bits=4, group_size=128, block_size=128, damp_percent=0.01)


@contextlib.contextmanager
def _without_cuda_synchronize():
    """``GPTQ.fasterquant`` calls ``torch.cuda.synchronize()``, which fails where there is no CUDA: a
    no-op there while it runs (the timing itself synchronises only on a CUDA device)."""
    if torch.cuda.is_available():
        yield
        return
    synchronize, torch.cuda.synchronize = torch.cuda.synchronize, lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch.cuda.synchronize = synchronize


def _hessian(in_features: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """``2 X^T X / n`` of correlated inputs (as ``GPTQ.add_batch`` accumulates it), twice as many tokens as
    inputs so that it is not singular."""
    tokens = 2 * in_features
    mixing = torch.randn(in_features, in_features, generator=gen) / in_features ** 0.5
    x = (torch.randn(tokens, in_features, generator=gen) @ (torch.eye(in_features) + mixing)).to(device)
    return 2 / tokens * x.T @ x


def _gptq_rows(device: torch.device, gen: torch.Generator) -> list[Row]:
    gptq = load_auto_gptq_gptq()
    if gptq is None:
        return []
    logging.getLogger(gptq.__name__).setLevel(logging.WARNING)   # fasterquant logs its duration and loss
    sizes = [256, 1024] if device.type == "cpu" else [1024, 4096]
    rows = []
    for width in sizes:
        weight = (torch.randn(width, width, generator=gen) / width ** 0.5).to(device)
        hessian = _hessian(width, device, gen)
        s = GPTQ_SETTINGS

        def course():
            return Q.gptq_quantize(weight, hessian, **s)

        def library():   # a fresh layer and GPTQ each call: fasterquant consumes its H and overwrites the weight
            layer = torch.nn.utils.skip_init(torch.nn.Linear, width, width, bias=False, device=device)  # no init
            layer.weight.data = weight.clone()
            quantizer = gptq.GPTQ(layer)
            quantizer.quantizer.configure(s["bits"], perchannel=True, sym=False, mse=False)
            quantizer.H, quantizer.nsamples = hessian.clone(), 1
            return quantizer.fasterquant(blocksize=s["block_size"], percdamp=s["damp_percent"],
                                         group_size=s["group_size"])

        with _without_cuda_synchronize():
            course_ms, library_ms = interleaved_ms(course, library, device, repeats=5)
        rows.append(Row("gptq quantize", f"{width}x{width}", str(device), course_ms, library_ms,
                        "auto-gptq GPTQ.fasterquant (4b, g128)"))
    return rows


def _gguf_rows(device: torch.device, gen: torch.Generator) -> list[Row]:
    if importlib.util.find_spec("gguf") is None:
        return []
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    rows_, cols = (1024, 1024) if device.type == "cpu" else (4096, 4096)
    weight = torch.randn(rows_, cols, generator=gen).to(device)
    host = weight.cpu().numpy()
    rows = []
    for name, course_quantize in (("Q8_0", Q.quantize_q8_0), ("Q4_0", Q.quantize_q4_0)):
        qtype = GGMLQuantizationType[name]
        if device.type == "cpu":
            def library():
                return quantize(host, qtype)
            label = "gguf.quants.quantize (numpy)"
        else:
            def library():
                return quantize(weight.cpu().numpy(), qtype)
            label = "gguf.quants.quantize (numpy, copy to host)"
        course_ms, library_ms = interleaved_ms(lambda: course_quantize(weight), library, device, repeats=5)
        rows.append(Row(f"gguf {name}", f"{rows_}x{cols}", str(device), course_ms, library_ms, label))
    return rows


def _inference_rows(device: torch.device, gen: torch.Generator) -> list[Row]:
    sizes = [(1024, 256), (2048, 256)] if device.type == "cpu" else [(4096, 2048), (8192, 2048)]
    rows = []
    for width, tokens in sizes:
        linear = torch.nn.Linear(width, width, device=device)
        layer = Q.QuantizedLinear.from_linear(linear, bits=4, group_size=128)
        x = torch.randn(tokens, width, generator=gen).to(device)
        with torch.no_grad():
            course_ms, library_ms = interleaved_ms(lambda: layer(x), lambda: linear(x), device, repeats=10)
        float_mb = linear.weight.numel() * linear.weight.element_size() / 2 ** 20
        rows.append(Row("int4 linear fwd", f"{width}x{width}", str(device), course_ms, library_ms,
                        f"nn.Linear fp32, {tokens} tokens; weight {layer.weight_bytes() / 2 ** 20:.2f} MiB "
                        f"int4 g128 vs {float_mb:.2f} MiB fp32"))
    return rows


def _model_rows(device: torch.device) -> list[Row]:
    """The course model of the device's preset (random weights: the time does not depend on them) with every
    linear layer of its decoder a 4-bit QuantizedLinear (groups of 16, which divide the MLP's 688 columns
    too), against the float model: 32 tokens of greedy decoding with the KV cache, one prompt."""
    import copy

    from course_lib.language_model import CourseLMForCausalLM, course_lm_config

    size = "cpu" if device.type == "cpu" else "gpu"
    torch.manual_seed(0)
    model = CourseLMForCausalLM(course_lm_config(size)).to(device).eval()
    quantized = Q.quantize_linear_layers(copy.deepcopy(model), r"model\.layers\..*", bits=4, group_size=16)
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1)).to(device)

    def decode(lm):
        return lambda: lm.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                   pad_token_id=model.config.pad_token_id)

    def linear_bytes(lm):
        """Bytes of the decoder's linear weights (a QuantizedLinear's packed integers, scales and zeros)."""
        total = 0
        for name, module in lm.named_modules():
            if ".layers." in name and isinstance(module, Q.QuantizedLinear):
                total += module.weight_bytes()
            elif ".layers." in name and isinstance(module, torch.nn.Linear):
                total += module.weight.numel() * module.weight.element_size()
        return total

    with torch.no_grad():
        course_ms, library_ms = interleaved_ms(decode(quantized), decode(model), device, repeats=3)
    return [Row("int4 model decode", f"{size}, 32 tokens", str(device), course_ms, library_ms,
                f"float course model; {32 / course_ms * 1000:.0f} vs {32 / library_ms * 1000:.0f} tokens/s, "
                f"decoder {linear_bytes(quantized) / 2 ** 20:.2f} vs {linear_bytes(model) / 2 ** 20:.2f} MiB")]


def run(device: torch.device) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    return _gptq_rows(device, gen) + _gguf_rows(device, gen) + _inference_rows(device, gen) + _model_rows(device)
