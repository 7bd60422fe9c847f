"""Chapter 8 graded tests (public): LoRA (initialisation, scale, the layer, target matching, injection,
merging, adapter files) and QLoRA (the NF4 code book, block-wise quantization, nibble packing, double
quantization, the 4-bit linear layer), and the memory a fine-tune needs.

The references are outside the course: ``peft`` 0.21 (``LoraConfig`` and ``get_peft_model`` with the
same ``A`` and ``B`` copied in: outputs, gradients, ``get_delta_weight``, ``merge_and_unload``,
``print_trainable_parameters``, ``check_target_module_exists``, ``save_pretrained`` and
``PeftModel.from_pretrained``), ``bitsandbytes`` 0.50 on the CPU (``get_4bit_type``, ``quantize_4bit``,
``dequantize_4bit``, ``dequantize_blockwise`` and ``Linear4bit``, whose packed bytes and scales the
tests unpack themselves), ``torch.nn.init.kaiming_uniform_`` and the bytes of the tensors of a real
fine-tune (parameters, gradients, ``torch.optim.AdamW``'s moments, ``bitsandbytes``' ``quant_state``).
The models are tiny ``transformers`` Llamas and GPT-2s and the course's model, built here.

Not graded (at the end): a QLoRA layer of the course against ``peft``'s LoRA on ``bitsandbytes``'
``Linear4bit``, adapter files round-tripped through ``peft``, merging (and unmerging) a whole model
against ``peft``'s ``merge_and_unload``, and a few steps of QLoRA training of the course model.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped). "Local run only": the test is skipped behind the grading door, which an object, the
global generator or the autograd graph cannot cross; the tests that an input is left alone run
everywhere but can see a change only in a local run (the door sends copies).

8.1 ``init_lora_weights``
  - the pair ``(lora_A, lora_B)``: ``A`` float32 ``(r, in_features)`` drawn by ``kaiming_uniform_(a=sqrt(5))``
    as ``peft`` draws it, ``B`` float32 zeros ``(out_features, r)``: init_lora_weights_draws_what_peft_draws
  - an int seed: its own generator, the global one untouched, the same seed the same ``A``, another seed another:
    init_lora_weights_with_a_seed_leaves_the_global_generator_alone
  - ``seed=None``: torch's global generator, as ``peft``: init_lora_weights_without_a_seed_draws_from_the_global_generator
    (local run only)

8.2 ``lora_scaling``
  - ``alpha / r``, with rsLoRA ``alpha / sqrt(r)``, ``peft``'s ``scaling["default"]``, a Python float:
    lora_scaling_is_peft_scaling

8.3 ``LoRALinear.forward``
  - ``base_layer(x) + lora_B(lora_A(x)) * scaling`` (LoRA and rsLoRA, with and without bias): ``peft``'s output and
    gradients, none for the frozen base: lora_linear_matches_peft_outputs_and_gradients
  - around GPT-2's ``Conv1D``: lora_linear_around_gpt2_conv1d
  - dropout on the LoRA path's input only, none in eval mode: lora_linear_dropout_acts_on_the_lora_path_only; the
    draws ``peft`` makes: lora_linear_dropout_draws_what_peft_draws (local run only)
  - merged: the base layer's output alone: merged_lora_linear_does_not_add_the_adapter_twice
  - ``x`` cast to the adapter's dtype, the sum in the base output's dtype (a bfloat16 base, a float32 adapter):
    lora_linear_on_a_bfloat16_base_keeps_a_float32_adapter
  - ``x`` of shape ``(..., in_features)``, one vector or four dimensions: lora_linear_takes_any_leading_dimensions

8.4 ``target_matches``
  - a list (or a tuple): a name equal to an entry or ending in ``"." + entry``; a str: ``re.fullmatch``; a bool,
    ``peft``'s ``check_target_module_exists``: target_matches_is_peft_rule

8.5 ``inject_lora``
  - ``get_peft_model``'s adapted layers, trainable parameters (the adapters alone: embeddings, norms, weights and
    biases frozen), counts (``print_trainable_parameters``), outputs and gradients, for a Llama, GPT-2's ``Conv1D``
    layers, a regular expression and the course model, with ``r``, ``alpha`` and rsLoRA:
    inject_lora_matches_get_peft_model
  - every bias frozen, the wrapped layers' too: inject_lora_freezes_every_bias_of_gpt2
  - the model starts unchanged; an int seed gives adapter ``i`` the seed ``seed + i``:
    inject_lora_starts_as_the_pretrained_model
  - ``seed=None``: the global generator, adapter after adapter in ``named_modules()`` order:
    inject_lora_without_a_seed_draws_from_the_global_generator_in_order (local run only)
  - the dropout given reaches every adapter: inject_lora_gives_every_adapter_its_dropout
  - in place: the model's own layers become the ``base_layer`` of its ``LoRALinear`` modules:
    inject_lora_wraps_the_models_own_layers_in_place (local run only)
  - ValueError naming ``target_modules`` when nothing matches, naming the module and its type when a match cannot
    be wrapped: inject_lora_refuses_targets_it_cannot_adapt

8.6 ``lora_delta_weight``
  - ``scaling * B @ A``, transposed for ``fan_in_fan_out``, in ``A``'s dtype (bfloat16 multiplied in float32),
    ``peft``'s ``get_delta_weight``: lora_delta_weight_is_peft_get_delta_weight (rounding once rather than twice
    in bfloat16 lies within bfloat16's tolerance: no test tells them apart)
  - a plain tensor outside the autograd graph, also of trainable Parameters:
    lora_delta_weight_of_trainable_weights_is_outside_the_graph (local run only)

8.7 ``adapter_state_dict``
  - ``peft``'s names in ``named_modules()`` order and nothing else, the adapters' values, a file ``peft`` loads:
    adapter_state_dict_is_what_peft_saves
  - the model not modified, the tensors detached: adapter_state_dict_leaves_the_model_alone
  - copies, not views of the model's weights: adapter_state_dict_holds_copies_not_views (local run only)
  - each weight's dtype kept (float64): adapter_state_dict_keeps_the_adapters_dtype
  - (contiguous and on the weight's device: ``LoRALinear``'s weights are contiguous and the tests run on the CPU,
    so no test can tell)

8.8 ``load_adapter_state_dict``
  - every adapter holds the saved ``A`` and ``B`` of a file ``peft`` wrote, still trainable, the logits ``peft``'s:
    load_adapter_state_dict_reads_peft_files
  - copied into the existing weights, which keep their dtype (a float32 file into a float64 model):
    load_adapter_state_dict_keeps_the_adapters_dtype
  - ``state_dict`` not modified: load_adapter_state_dict_leaves_the_state_dict_alone
  - KeyError for a missing or a foreign entry, ValueError for another rank:
    load_adapter_state_dict_refuses_a_partial_or_foreign_adapter
  - the error names the entry: load_adapter_state_dict_names_the_entry_it_refuses

8.9 ``nf4_code``
  - ``bitsandbytes``' ``get_4bit_type("nf4")`` (8 positive and 7 negative quantiles and 0, not an even grid, not
    mirrored): nf4_code_is_bitsandbytes_code_book
  - float32 ``(16,)``, ascending, an exact 0 at index 7, from exactly -1 to exactly 1:
    nf4_code_has_an_exact_zero_and_ends_at_one

8.10 ``quantize_blockwise``
  - ``quantize_4bit``'s indices (uint8 ``(numel,)``) and absmax (float32 ``(n_blocks,)``) for float32, bfloat16 and
    float16 weights, blocks of 32 to 128, a shorter last block: quantize_blockwise_gives_bitsandbytes_indices_and_absmax
  - one absmax per block, an outlier's damage local: an_outlier_only_coarsens_its_own_block
  - any code book (256 values, blocks of 256): quantize_blockwise_to_a_256_value_code
  - a tie to the lower index; a block of zeros: absmax 0 and the index of 0: quantize_blockwise_ties_and_zero_blocks
  - ``x`` and ``code`` not modified: quantize_blockwise_leaves_x_and_the_code_alone

8.11 ``dequantize_blockwise``
  - ``code[indices[i]] * absmax[i // blocksize]`` in float32 and ``shape``, ``dequantize_4bit``'s (blocks of 32 to
    128, a shorter last block): dequantize_blockwise_is_bitsandbytes_dequantize_4bit
  - any code book (``bitsandbytes``' 8-bit dynamic code): dequantize_blockwise_of_an_8_bit_code

8.12 ``pack_nibbles``
  - ``quantize_4bit``'s bytes, ``16 * indices[2j] + indices[2j + 1]``, uint8 ``(n // 2,)``:
    pack_nibbles_gives_bitsandbytes_bytes, pack_nibbles_of_every_pair
  - ``indices`` not modified: pack_nibbles_leaves_the_indices_alone

8.13 ``unpack_nibbles``
  - the high half first, uint8 ``(n,)``, ``n`` even or odd (the last low half dropped):
    unpack_nibbles_reads_bitsandbytes_bytes, unpack_nibbles_inverts_packing
  - ``packed`` not modified: unpack_nibbles_leaves_the_bytes_alone

8.14 ``double_quantize``
  - ``quantize_4bit(compress_statistics=True)``'s offset (the mean, 0-dim), second-level absmax and 8-bit scales, as
    a tuple of three (the scales come back within half a code step because each is the nearest code):
    double_quantize_is_bitsandbytes_compressed_statistics
  - second-level blocks of the ``blocksize`` given (64, and 1000 for 700 scales), ``bitsandbytes``'
    ``quantize_blockwise`` of the centred scales: double_quantize_in_second_level_blocks_of_any_size
  - ``absmax`` and ``code`` not modified: double_quantize_leaves_the_scales_alone

8.15 ``NF4Linear.forward``
  - ``bitsandbytes``' ``Linear4bit``: output and gradient of ``x`` in float32, bfloat16 and float16 compute dtypes,
    float32 and bfloat16 inputs (the output in ``x``'s dtype), with and without double quantization and bias, no
    gradient for anything else: nf4_linear_is_bitsandbytes_linear4bit
  - no dequantized copy of the weight kept for the backward pass (``MatMul4Bit``'s recomputation), the gradient
    still ``bitsandbytes``': nf4_linear_keeps_no_copy_of_the_weight_for_the_backward_pass
  - ``x`` of shape ``(..., in_features)``, one vector or four dimensions: nf4_linear_takes_any_leading_dimensions

8.16 ``training_memory``
  - the bytes of a real fine-tune's tensors, full, LoRA and QLoRA (with and without double quantization), float32
    and bfloat16; the four keys, ``total`` their sum: training_memory_is_what_the_tensors_take
  - Python ints; ``ceil(n / 2)`` packed bytes for an odd ``n``, blocks counted per matrix, ``blocksize`` and
    ``absmax_blocksize`` as given (against ``bitsandbytes``' tensors):
    training_memory_counts_whole_bytes_of_odd_matrices_in_any_blocks

8.17 ``activation_memory``
  - the bytes autograd saves per sequence in a ``transformers`` Llama (float32): full fine-tune, ``peft`` LoRA on
    every projection, ``peft`` on a ``bitsandbytes`` 4-bit model; ``sdpa`` and ``eager`` attention; grouped
    queries and a ``head_dim`` other than ``hidden_size / heads``; any rank and sequence length; a Python int
    times the batch: activation_memory_is_what_autograd_saves
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math

import pytest
import torch

from grading.expect import assert_close, assert_unchanged, in_process_only
from tests.test_generation import reference_mode, solution_mode  # noqa: F401  (a fixture)
from tests.test_sft import memo, tiny_course_lm, tiny_llama

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # optional CPU kernels it looks for on import

F64 = torch.float64
VOCAB = 64
ADAPTER = "base_model.model."


# -- models and references -----------------------------------------------------------------------------------
def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_model(family, seed=0):
    """A fresh tiny model of ``family`` ("llama", "gpt2", "course"), float32, eval mode (no dropout)."""
    if family == "gpt2":
        return tiny_gpt2(seed)
    with reference_mode():
        model = tiny_llama("cpu", VOCAB, seed) if family == "llama" else tiny_course_lm("cpu", VOCAB, seed)
    return model.eval()


def input_ids(seed=0, batch=2, seq=7):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def peft_model(model, targets, r, alpha, autocast_adapter_dtype=True, **settings):
    """``get_peft_model`` of a copy of ``model`` (the copy is adapted; ``model`` is left alone)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, **settings),
                          autocast_adapter_dtype=autocast_adapter_dtype)


def peft_lora_layers(peft):
    """``{module name in the unwrapped model: peft's LoRA layer}``."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {name[len(prefix):]: m for name, m in peft.named_modules() if isinstance(m, LoraLayer)}


def random_adapters(layers, seed, scale=0.3):
    """Non-zero ``A`` and ``B`` for each of ``layers`` (``{name: (in_features, out_features)}``): with
    ``B = 0`` an adapter adds nothing and most mistakes would not show."""
    gen = torch.Generator().manual_seed(seed)
    return {name: {"lora_A": scale * torch.randn(r_in[2], r_in[0], generator=gen),
                   "lora_B": scale * torch.randn(r_in[1], r_in[2], generator=gen)}
            for name, r_in in layers.items()}


def copy_into_peft(peft, adapters):
    """Copy ``{name: {"lora_A", "lora_B"}}`` into ``peft``'s LoRA layers (adapter ``default``)."""
    layers = peft_lora_layers(peft)
    with torch.no_grad():
        for name, pair in adapters.items():
            for part in ("lora_A", "lora_B"):
                getattr(layers[name], part)["default"].weight.copy_(pair[part])


def adapter_shapes(model, targets, r):
    """``{name: (in_features, out_features, r)}`` of the modules ``peft`` adapts for ``targets``."""
    with torch.no_grad():
        return {name: (m.in_features, m.out_features, r)
                for name, m in peft_lora_layers(peft_model(model, targets, r, r)).items()}


def peft_layer(base, r, alpha, **settings):
    """``peft``'s LoRA layer around ``base`` (made by ``get_peft_model`` on a one-layer model, so that it
    is what a user gets: adapter weights float32 for a 16-bit base)."""
    holder = torch.nn.Module()
    holder.proj = base
    return peft_lora_layers(peft_model(holder, ["proj"], r, alpha, **settings))["proj"]


def trainable_line(peft):
    """What ``print_trainable_parameters`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        peft.print_trainable_parameters()
    return out.getvalue().strip()


def check_dict_close(got, expected, what, hint, **tolerance):
    assert isinstance(got, dict) and set(got) == set(expected), (
        f"{what}: expected the entries {sorted(expected)[:4]}..., got "
        f"{sorted(got)[:4] if isinstance(got, dict) else type(got).__name__}...")
    for key in expected:
        assert_close(got[key], expected[key], what=f"{what}[{key!r}]", hint=hint, **tolerance)


# -- 8.1 init_lora_weights ----------------------------------------------------------------------------------------
@pytest.mark.exercise("8.1")
@pytest.mark.parametrize("in_features, out_features, r, seed", [(32, 16, 4, 0), (7, 5, 1, 3), (12, 40, 8, 11)])
def test_init_lora_weights_draws_what_peft_draws(student, in_features, out_features, r, seed):
    got = student.init_lora_weights(in_features, out_features, r, seed)
    layer = peft_layer(torch.nn.Linear(in_features, out_features), r, 2 * r)
    torch.manual_seed(seed)
    layer.reset_lora_parameters("default", init_lora_weights=True)
    assert isinstance(got, tuple) and len(got) == 2, "init_lora_weights returns the pair (lora_A, lora_B)"
    lora_A, lora_B = got
    bound = 1 / math.sqrt(in_features)
    assert_close(lora_A, layer.lora_A["default"].weight.detach(), what=f"lora_A ({r}, {in_features}) for seed {seed}",
                 hint="peft fills A with torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5)), uniform on "
                      f"[-1/sqrt(in_features), 1/sqrt(in_features)] = [-{bound:.3f}, {bound:.3f}], drawn from "
                      "torch.Generator().manual_seed(seed)",
                 wrong={"drawn with kaiming_uniform_'s default a=0 (a bound sqrt(6) times too wide)":
                        math.sqrt(6) * layer.lora_A["default"].weight.detach()})
    assert_close(lora_B, torch.zeros(out_features, r), what=f"lora_B ({out_features}, {r})",
                 hint="B starts at zero, so that the adapted model starts exactly as the pretrained one")


@pytest.mark.exercise("8.1")
def test_init_lora_weights_with_a_seed_leaves_the_global_generator_alone(student):
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first, _ = student.init_lora_weights(16, 8, 4, 1)
    assert_close(torch.rand(3), expected_next, what="torch.rand after init_lora_weights(..., seed=1)",
                 hint="with a seed, draw from torch.Generator().manual_seed(seed), not from the global generator")
    again, _ = student.init_lora_weights(16, 8, 4, 1)
    other, _ = student.init_lora_weights(16, 8, 4, 2)
    assert_close(again, first, what="lora_A drawn twice with seed 1", hint="the same seed gives the same A")
    assert not torch.equal(other, first), "seeds 1 and 2 gave the same lora_A: the seed must choose the draw"


@pytest.mark.exercise("8.1")
def test_init_lora_weights_without_a_seed_draws_from_the_global_generator(student):
    in_process_only(student, "torch's global generator (the seed set here)")
    layer = peft_layer(torch.nn.Linear(24, 6), 3, 3)
    torch.manual_seed(42)
    layer.reset_lora_parameters("default", init_lora_weights=True)
    torch.manual_seed(42)
    lora_A, _ = student.init_lora_weights(24, 6, 3)
    assert_close(lora_A, layer.lora_A["default"].weight.detach(), what="lora_A with seed=None after torch.manual_seed(42)",
                 hint="seed=None draws from torch's global generator, as peft does")


# -- 8.2 lora_scaling -----------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.2")
@pytest.mark.parametrize("alpha, r, use_rslora", [(16, 4, False), (8, 8, False), (1, 2, False), (16, 4, True),
                                                  (32, 64, True), (5, 1, True)])
def test_lora_scaling_is_peft_scaling(student, alpha, r, use_rslora):
    got = student.lora_scaling(alpha, r, use_rslora)
    expected = peft_layer(torch.nn.Linear(8, 8), r, alpha, use_rslora=use_rslora).scaling["default"]
    assert isinstance(got, float), f"lora_scaling returns a Python float, got {type(got).__name__}"
    assert math.isclose(got, expected, rel_tol=1e-12), (
        f"lora_scaling(alpha={alpha}, r={r}, use_rslora={use_rslora}) = {got}, peft uses {expected}: "
        + ("rsLoRA scales by alpha / sqrt(r)" if use_rslora else "LoRA scales by alpha / r (not r / alpha)"))


# -- 8.3 LoRALinear.forward -----------------------------------------------------------------------------------------
def layer_case(seed, in_features=16, out_features=12, r=4, dtype=F64, bias=True, conv1d=False, lead=(2, 3)):
    """Random base weights, non-zero A and B, an input ``(*lead, in_features)`` and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    shape = (in_features, out_features) if conv1d else (out_features, in_features)
    return {"weight": torch.randn(shape, generator=gen).to(dtype) / 4,
            "bias": torch.randn(out_features, generator=gen).to(dtype) if bias else None,
            "lora_A": torch.randn(r, in_features, generator=gen).to(dtype) / 4,
            "lora_B": torch.randn(out_features, r, generator=gen).to(dtype) / 4,
            "x": torch.randn(*lead, in_features, generator=gen).to(dtype),
            "grad_output": torch.randn(*lead, out_features, generator=gen).to(dtype)}


def peft_layer_run(case, alpha, *, use_rslora=False, dropout=0.0, training=False, conv1d=False, merged=False,
                   adapter_dtype=None, seed=None):
    """peft's LoRA layer on the case's base layer with its A and B: output and gradients."""
    from transformers.pytorch_utils import Conv1D

    weight = case["weight"]
    if conv1d:
        base = Conv1D(weight.shape[1], weight.shape[0]).to(weight.dtype)
    else:
        base = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=case["bias"] is not None, dtype=weight.dtype)
    with torch.no_grad():
        base.weight.copy_(weight)
        if case["bias"] is not None:
            base.bias.copy_(case["bias"])
        elif conv1d:
            base.bias.zero_()
    layer = peft_layer(base, case["lora_A"].shape[0], alpha, use_rslora=use_rslora, lora_dropout=dropout,
                       fan_in_fan_out=conv1d)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(case["lora_A"])
        layer.lora_B["default"].weight.copy_(case["lora_B"])
    layer.train(training)
    if merged:
        layer.merge()
    x = case["x"].clone().requires_grad_(True)
    if seed is not None:
        torch.manual_seed(seed)
    output = layer(x)
    output.backward(case["grad_output"].to(output.dtype))
    return {"output": output.detach(), "grad_x": x.grad, "grad_A": layer.lora_A["default"].weight.grad,
            "grad_B": layer.lora_B["default"].weight.grad, "base_grads": [p.grad for p in base.parameters()]}


def run_student_layer(student, case, alpha, **settings):
    return student.lora_linear_outputs(case["weight"], case["bias"], case["lora_A"], case["lora_B"], case["x"], alpha,
                                       grad_output=case["grad_output"], **settings)


def check_layer_against_peft(got, expected, what, **tolerance):
    scaling = got.get("scaling") if isinstance(got, dict) else None
    hint = (f"the output is base_layer(x) + lora_B(lora_A(dropout(x))) * scaling (scaling {scaling}); the base "
            "layer's output is not touched by dropout")
    assert_close(got["output"], expected["output"], what=f"{what}: output", hint=hint, **tolerance)
    assert_close(got["grad_x"], expected["grad_x"], what=f"{what}: gradient of x", hint=hint, **tolerance)
    assert_close(got["grads"]["lora_A.weight"], expected["grad_A"], what=f"{what}: gradient of lora_A", hint=hint,
                 **tolerance)
    assert_close(got["grads"]["lora_B.weight"], expected["grad_B"], what=f"{what}: gradient of lora_B", hint=hint,
                 **tolerance)
    frozen = {k: v for k, v in got["grads"].items() if k.startswith("base_layer.")}
    assert frozen and all(v is None for v in frozen.values()), (
        f"{what}: the base layer's parameters got gradients {sorted(k for k, v in frozen.items() if v is not None)}: "
        "they are frozen (LoRA trains A and B only)")


@pytest.mark.exercise("8.3")
@pytest.mark.parametrize("seed, alpha, use_rslora, bias", [(0, 8, False, True), (1, 16, True, True), (2, 3, False, False)])
def test_lora_linear_matches_peft_outputs_and_gradients(student, seed, alpha, use_rslora, bias):
    case = layer_case(seed, bias=bias)
    got = run_student_layer(student, case, alpha, use_rslora=use_rslora)
    check_layer_against_peft(got, peft_layer_run(case, alpha, use_rslora=use_rslora),
                             f"LoRALinear (16 -> 12, r=4, alpha={alpha}, rslora={use_rslora}, bias={bias}, float64)")


@pytest.mark.exercise("8.3")
def test_lora_linear_around_gpt2_conv1d(student):
    case = layer_case(3, in_features=10, out_features=24, r=2, conv1d=True)
    got = run_student_layer(student, case, 4, conv1d=True)
    check_layer_against_peft(got, peft_layer_run(case, 4, conv1d=True),
                             "LoRALinear around GPT-2's Conv1D (weight (in, out), y = x @ W + b)")


@pytest.mark.exercise("8.3")
def test_lora_linear_dropout_acts_on_the_lora_path_only(student):
    case = layer_case(4)
    base = torch.nn.functional.linear(case["x"], case["weight"], case["bias"])
    got = run_student_layer(student, case, 8, dropout=1.0, training=True)
    assert_close(got["output"], base, what="LoRALinear in training mode with dropout=1.0: output",
                 hint="dropout 1.0 zeroes the LoRA path's input, so the output is the base layer's alone; the base "
                      "layer sees x itself, never a dropped-out copy")
    for training in (False, True):
        for dropout in (0.0, 0.5):
            if training and dropout:
                continue
            got = run_student_layer(student, case, 8, dropout=dropout, training=training)
            check_layer_against_peft(got, peft_layer_run(case, 8, dropout=dropout, training=training),
                                     f"LoRALinear with dropout={dropout} in {'training' if training else 'eval'} mode")


@pytest.mark.exercise("8.3")
def test_lora_linear_dropout_draws_what_peft_draws(student):
    in_process_only(student, "torch's global generator (the seed set here)")
    case = layer_case(5)
    torch.manual_seed(9)
    got = run_student_layer(student, case, 8, dropout=0.3, training=True)
    check_layer_against_peft(got, peft_layer_run(case, 8, dropout=0.3, training=True, seed=9),
                             "LoRALinear with dropout=0.3 in training mode after torch.manual_seed(9)")


@pytest.mark.exercise("8.3")
def test_merged_lora_linear_does_not_add_the_adapter_twice(student):
    case = layer_case(6)
    got = run_student_layer(student, case, 8, merged=True)
    expected = peft_layer_run(case, 8, merged=True)
    hint = ("once merged, the adapter's change is inside base_layer.weight: the output is base_layer(x) alone "
            "(adding the LoRA path again counts the change twice)")
    assert_close(got["output"], expected["output"], what="merged LoRALinear: output", hint=hint)
    assert_close(got["grad_x"], expected["grad_x"], what="merged LoRALinear: gradient of x", hint=hint)


@pytest.mark.exercise("8.3")
def test_lora_linear_on_a_bfloat16_base_keeps_a_float32_adapter(student):
    case = layer_case(7, dtype=torch.bfloat16)
    case |= {"lora_A": case["lora_A"].float(), "lora_B": case["lora_B"].float()}
    got = run_student_layer(student, case, 8)
    expected = peft_layer_run(case, 8)
    assert got["output"].dtype == torch.bfloat16, (
        f"LoRALinear on a bfloat16 base returned {got['output'].dtype}: return the sum in the base output's dtype")
    check_layer_against_peft(got, expected, "LoRALinear on a bfloat16 base with a float32 adapter")


@pytest.mark.exercise("8.3")
@pytest.mark.parametrize("lead", [(), (2, 2, 3)], ids=["one vector", "4-d batch"])
def test_lora_linear_takes_any_leading_dimensions(student, lead):
    case = layer_case(8, lead=lead)
    got = run_student_layer(student, case, 8)
    check_layer_against_peft(got, peft_layer_run(case, 8),
                             f"LoRALinear of an input {(*lead, 16)} (x is (..., in_features): any leading dimensions)")


# -- 8.4 target_matches ------------------------------------------------------------------------------------------------
NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.q_proj",
         "model.layers.0.mlp.up_proj", "model.layers.10.self_attn.q_proj", "q_proj", "lm_head", "model.embed_tokens",
         "model.layers.0.self_attn.xq_proj", "model.layers.0.self_attn.q_proj.lora_A", "transformer.h.0.attn.c_attn",
         "model.layers.0.self_attn", "model.layers.0", ""]
TARGETS = [["q_proj", "v_proj"], ["proj"], ["self_attn.q_proj"], ["c_attn", "lm_head"], ["layers.0"],
           r".*\.(q|v)_proj", r"model\.layers\.0", r"model\.layers\.1\..*", "q_proj", r".*attn.*",
           ("q_proj", "v_proj"), ("self_attn.q_proj", "lm_head")]      # a tuple is names too, as a list is


@pytest.mark.exercise("8.4")
@pytest.mark.parametrize("targets", TARGETS, ids=str)
def test_target_matches_is_peft_rule(student, targets):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=targets)
    for name in NAMES:
        expected = bool(check_target_module_exists(config, name))
        got = student.target_matches(name, targets)
        assert got is expected, (
            f"target_matches({name!r}, {targets!r}) is {got}, peft says {expected}: a list (or a tuple) matches a "
            "name that equals one of its entries or ends with '.' + the entry; only a str is a regular expression, "
            "which must match the whole name (re.fullmatch)")

# -- 8.5 inject_lora --------------------------------------------------------------------------------------------------
def injection_case(family, targets, r, alpha, seed=0, **settings):
    """The model of ``family``, peft's adapted copy with random A and B copied in, and those A and B."""
    def make():
        model = tiny_model(family, seed)
        adapters = random_adapters(adapter_shapes(model, targets, r), seed + 1)
        peft = peft_model(model, targets, r, alpha, **settings)
        copy_into_peft(peft, adapters)
        return model, peft, adapters

    return memo(("injection", family, str(targets), r, alpha, seed, str(settings)), make)


def peft_run(peft, ids):
    """peft's loss, logits and the gradients of its adapters, named as in the unwrapped model."""
    peft.zero_grad()
    with reference_mode():
        out = peft(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {name[len(ADAPTER):].replace(".default", ""): p.grad.clone()
             for name, p in peft.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.exercise("8.5")
@pytest.mark.parametrize("family, targets, r, alpha, settings", [
    ("llama", ["q_proj", "v_proj"], 4, 8, {}),
    ("gpt2", ["c_attn", "c_proj"], 2, 4, {"fan_in_fan_out": True}),
    ("llama", r".*\.(k_proj|up_proj|down_proj)", 3, 6, {"use_rslora": True}),
    ("course", ["q_proj", "o_proj", "gate_proj"], 2, 2, {})], ids=["llama", "gpt2-conv1d", "llama-regex", "course"])
def test_inject_lora_matches_get_peft_model(student, family, targets, r, alpha, settings):
    model, peft, adapters = injection_case(family, targets, r, alpha, **settings)
    ids = input_ids(1)
    got = student.lora_injection(copy.deepcopy(model), targets, r, alpha, use_rslora=settings.get("use_rslora", False),
                                 lora_weights=adapters, input_ids=ids)
    what = f"inject_lora({family}, {targets!r}, r={r})"
    assert sorted(got["wrapped"]) == sorted(peft_lora_layers(peft)), (
        f"{what} wrapped {sorted(got['wrapped'])}, peft adapts {sorted(peft_lora_layers(peft))}")
    expected_trainable = {name[len(ADAPTER):].replace(".default", ""): list(p.shape)
                          for name, p in peft.named_parameters() if p.requires_grad}
    assert got["trainable"] == expected_trainable, (
        f"{what}: trainable parameters {sorted(set(got['trainable']) ^ set(expected_trainable))[:4]} differ from "
        "peft's: only each adapter's lora_A.weight and lora_B.weight train; every other weight and every bias, "
        "the wrapped layers' too, is frozen")
    trainable, total = peft.get_nb_trainable_parameters()
    assert (got["n_trainable"], got["n_total"]) == (trainable, total), (
        f"{what}: {got['n_trainable']} trainable of {got['n_total']} parameters; peft's print_trainable_parameters "
        f"says {trainable_line(peft)!r}")
    loss, logits, grads = memo(("peft run", family, str(targets), r, alpha, str(settings)), lambda: peft_run(peft, ids))
    hint = "with the same A and B, the adapted model computes what peft's does"
    assert_close(got["logits"], logits, what=f"{what}: logits", hint=hint, rtol=1e-5, atol=1e-5)
    assert_close(got["loss"], loss, what=f"{what}: loss", hint=hint, rtol=1e-5, atol=1e-6)
    check_dict_close(got["grads"], grads, f"{what}: gradients", hint, rtol=1e-4, atol=1e-6)


@pytest.mark.exercise("8.5")
@pytest.mark.parametrize("family, targets", [("llama", ["q_proj", "down_proj"]), ("gpt2", ["c_fc"])])
def test_inject_lora_starts_as_the_pretrained_model(student, family, targets):
    ids = input_ids(2)

    def make():
        model = tiny_model(family, 2)
        with reference_mode(), torch.no_grad():
            return model, model(input_ids=ids).logits

    model, before = memo(("pretrained logits", family), make)
    got = student.lora_injection(copy.deepcopy(model), targets, 4, 8, seed=7, input_ids=ids)
    assert_close(got["logits"], before, what=f"logits of the freshly injected {family}",
                 hint="every adapter starts with B = 0 (init_lora_weights), so the model is unchanged at first")
    for i, name in enumerate(got["wrapped"]):
        r, in_features = got["lora_A"][name].shape
        expected = torch.nn.init.kaiming_uniform_(torch.empty(r, in_features), a=math.sqrt(5),
                                                  generator=torch.Generator().manual_seed(7 + i))
        assert_close(got["lora_A"][name], expected, what=f"lora_A of adapter {i} ({name}) with seed=7",
                     hint="adapter number i, counted in named_modules() order, is initialised with seed + i")


@pytest.mark.exercise("8.5")
def test_inject_lora_freezes_every_bias_of_gpt2(student):
    got = student.lora_injection(tiny_gpt2(3), ["c_attn"], 2, 2)
    biases = sorted(n for n in got["trainable"] if n.endswith("bias"))
    assert not biases, (f"biases {biases[:3]} train after inject_lora: LoRA adapts the weight only and the layer's "
                        "bias stays frozen (peft's default bias='none')")
    assert sorted(got["trainable"]) == sorted(f"transformer.h.{i}.attn.c_attn.lora_{p}.weight"
                                              for i in range(2) for p in "AB"), (
        f"trainable after inject_lora(gpt2, ['c_attn']): {sorted(got['trainable'])}")


@pytest.mark.exercise("8.5")
@pytest.mark.parametrize("targets, needle", [(["nothing_here"], "nothing_here"), (["proj"], "proj"),
                                             (["input_layernorm"], "RMSNorm"), (r".*\.self_attn", "self_attn")])
def test_inject_lora_refuses_targets_it_cannot_adapt(student, targets, needle):
    with pytest.raises(ValueError, match=needle):
        student.lora_injection(tiny_model("llama", 0), targets, 2, 2)


@pytest.mark.exercise("8.5")
def test_inject_lora_wraps_the_models_own_layers_in_place(student):
    in_process_only(student, "the caller's model object")
    model = tiny_model("llama", 1)
    targets = ["k_proj", "up_proj"]
    originals = {name: module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets}
    student.lora_injection(model, targets, 2, 4)
    for name, module in originals.items():
        wrapped = model.get_submodule(name)
        assert getattr(wrapped, "base_layer", None) is module, (
            f"after inject_lora(model, {targets}), model.{name} is {type(wrapped).__name__}"
            + (" whose base_layer is another object" if hasattr(wrapped, "base_layer") else "") + ": inject_lora "
            "changes the model it is given, in place, and wraps that model's own layers (no copies: a copy "
            "doubles the memory and leaves the caller's model without adapters)")


@pytest.mark.exercise("8.5")
def test_inject_lora_without_a_seed_draws_from_the_global_generator_in_order(student):
    in_process_only(student, "torch's global generator (the seed set here)")
    model = tiny_model("llama", 1)
    targets = ["q_proj", "down_proj"]
    sizes = {name: m.in_features for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets}
    torch.manual_seed(13)
    got = student.lora_injection(model, targets, 3, 6, seed=None)
    torch.manual_seed(13)
    for i, (name, in_features) in enumerate(sizes.items()):
        expected = torch.nn.init.kaiming_uniform_(torch.empty(3, in_features), a=math.sqrt(5))
        assert_close(got["lora_A"][name], expected, what=f"lora_A of adapter {i} ({name}) with seed=None after "
                     "torch.manual_seed(13)",
                     hint="without a seed, every adapter draws its A from torch's global generator, one after the "
                          "other in named_modules() order (peft draws from it too)")


@pytest.mark.exercise("8.5")
def test_inject_lora_gives_every_adapter_its_dropout(student):
    targets = ["q_proj", "up_proj"]
    model, peft, adapters = injection_case("llama", targets, 2, 4, lora_dropout=1.0)
    ids = input_ids(10)
    got = student.lora_injection(copy.deepcopy(model).train(), targets, 2, 4, dropout=1.0, lora_weights=adapters,
                                 input_ids=ids)
    loss, logits, grads = memo(("peft run in training mode", "dropout 1"), lambda: peft_run(peft.train(), ids))
    what = f"inject_lora(llama, {targets}, dropout=1.0) in training mode"
    hint = ("dropout 1.0 zeroes every adapter's input in training mode, so the model computes what the pretrained "
            "one does and the adapters get zero gradients: each LoRALinear gets the dropout it is given")
    assert_close(got["logits"], logits, what=f"{what}: logits", hint=hint, rtol=1e-5, atol=1e-5)
    check_dict_close(got["grads"], grads, f"{what}: gradients", hint, rtol=1e-4, atol=1e-6)


# -- 8.6 lora_delta_weight ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.6")
@pytest.mark.parametrize("seed, in_features, out_features, r, alpha, fan_in_fan_out, dtype", [
    (0, 16, 12, 4, 8, False, F64), (1, 10, 24, 2, 5, True, F64), (2, 32, 8, 8, 16, False, torch.bfloat16),
    (3, 6, 6, 1, 1, True, torch.float32)])
def test_lora_delta_weight_is_peft_get_delta_weight(student, seed, in_features, out_features, r, alpha,
                                                     fan_in_fan_out, dtype):
    from transformers.pytorch_utils import Conv1D

    base = Conv1D(out_features, in_features) if fan_in_fan_out else torch.nn.Linear(in_features, out_features)
    layer = peft_layer(base, r, alpha, fan_in_fan_out=fan_in_fan_out)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A["default"].weight.data = torch.randn(r, in_features, generator=gen).to(dtype)
        layer.lora_B["default"].weight.data = torch.randn(out_features, r, generator=gen).to(dtype)
    expected = layer.get_delta_weight("default")
    got = student.lora_delta_weight(layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach(),
                                    layer.scaling["default"], fan_in_fan_out)
    assert_close(got, expected, what=f"lora_delta_weight ({in_features} -> {out_features}, r={r}, alpha={alpha}, "
                                     f"fan_in_fan_out={fan_in_fan_out}, {dtype})",
                 hint="the change is scaling * B @ A, transposed for a (in, out) weight, in A's dtype",
                 wrong={"without the scaling": expected / layer.scaling["default"]})
    assert not got.requires_grad, "lora_delta_weight returns a plain tensor outside the autograd graph"


@pytest.mark.exercise("8.6")
def test_lora_delta_weight_of_trainable_weights_is_outside_the_graph(student):
    in_process_only(student, "the autograd graph")
    gen = torch.Generator().manual_seed(4)
    lora_A = torch.nn.Parameter(torch.randn(2, 6, generator=gen))
    lora_B = torch.nn.Parameter(torch.randn(5, 2, generator=gen))
    got = student.lora_delta_weight(lora_A, lora_B, 1.5)
    assert type(got) is torch.Tensor and not got.requires_grad and got.grad_fn is None, (
        f"lora_delta_weight of the adapter's Parameters returned a {type(got).__name__} with requires_grad="
        f"{getattr(got, 'requires_grad', None)}: the change is computed under torch.no_grad() (as peft merges), a "
        "plain tensor that keeps no graph of lora_A and lora_B")
    assert_close(got, 1.5 * lora_B.detach() @ lora_A.detach(), what="lora_delta_weight of Parameters",
                 hint="scaling * B @ A")


# -- 8.7-8.8 adapter files ----------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.7")
@pytest.mark.parametrize("family, targets", [("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn", "c_fc"])])
def test_adapter_state_dict_is_what_peft_saves(student, family, targets, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import save_file

    settings = {"fan_in_fan_out": True} if family == "gpt2" else {}
    model, peft, adapters = injection_case(family, targets, 2, 4, **settings)
    got = student.adapter_weights(copy.deepcopy(model), adapters, 2, 4)
    expected = get_peft_model_state_dict(peft)
    state = got["state_dict"]
    assert isinstance(state, dict) and list(state) == list(expected), (
        f"adapter_state_dict names {list(state)[:2]}...; peft saves {list(expected)[:2]}... (in named_modules() "
        "order, 'base_model.model.' + the module's name + '.lora_A.weight', no adapter name, nothing else)")
    check_dict_close(state, expected, "adapter_state_dict", "the adapter's own A and B")
    # the saved adapter loads into peft and gives peft's outputs
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "adapter_model.safetensors"))
    peft.peft_config["default"].save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path))
    ids = input_ids(4)
    with reference_mode(), torch.no_grad():
        assert_close(loaded(input_ids=ids).logits, peft(input_ids=ids).logits,
                     what="logits of peft's model loaded from your adapter file",
                     hint="PeftModel.from_pretrained finds every weight by its name")


@pytest.mark.exercise("8.7")
def test_adapter_state_dict_leaves_the_model_alone(student):
    model, _, adapters = injection_case("llama", ["q_proj", "v_proj"], 4, 8)
    got = student.adapter_weights(copy.deepcopy(model), adapters, 4, 8)
    for name, pair in adapters.items():
        for part in ("lora_A", "lora_B"):
            assert_close(got["parameters"][f"{name}.{part}.weight"], pair[part], what=f"{name}.{part}.weight after "
                         "adapter_state_dict", hint="adapter_state_dict only reads the model")
    assert all(not v.requires_grad for v in got["state_dict"].values()), "the saved tensors are detached copies"


@pytest.mark.exercise("8.7")
def test_adapter_state_dict_holds_copies_not_views(student):
    in_process_only(student, "the model's own weights")
    model, _, adapters = injection_case("llama", ["q_proj", "v_proj"], 4, 8)
    model = copy.deepcopy(model)
    state = student.adapter_weights(model, adapters, 4, 8)["state_dict"]
    for tensor in state.values():
        tensor.add_(1.0)            # whoever holds the saved adapter may change it
    for name, pair in adapters.items():
        for part in ("lora_A", "lora_B"):
            assert_close(getattr(model.get_submodule(name), part).weight.detach(), pair[part],
                         what=f"the model's {name}.{part}.weight after the saved tensors were changed",
                         hint="adapter_state_dict returns copies (.detach().clone()): a detached view shares the "
                              "model's memory, so changing the saved adapter changes the model")


@pytest.mark.exercise("8.7")
def test_adapter_state_dict_keeps_the_adapters_dtype(student):
    from peft import get_peft_model_state_dict

    model, peft, adapters = injection_case("llama", ["q_proj", "v_proj"], 2, 4)
    got = student.adapter_weights(copy.deepcopy(model).double(), adapters, 2, 4)
    expected = {k: v.double() for k, v in get_peft_model_state_dict(peft).items()}
    check_dict_close(got["state_dict"], expected, "adapter_state_dict of a float64 model",
                     "each saved weight keeps its adapter's dtype (float64 here) and device")


def peft_saved(peft, tmp_path):
    """The adapter file peft's ``save_pretrained`` writes, read back."""
    from safetensors.torch import load_file

    peft.save_pretrained(str(tmp_path))
    return load_file(str(tmp_path / "adapter_model.safetensors"))


@pytest.mark.exercise("8.8")
@pytest.mark.parametrize("family, targets", [("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"])])
def test_load_adapter_state_dict_reads_peft_files(student, family, targets, tmp_path):
    settings = {"fan_in_fan_out": True} if family == "gpt2" else {}
    model, peft, adapters = injection_case(family, targets, 2, 4, **settings)
    ids = input_ids(5)
    got = student.loaded_adapter(copy.deepcopy(model), list(adapters), peft_saved(peft, tmp_path), 2, 4,
                                 input_ids=ids)
    for name, pair in adapters.items():
        for part in ("lora_A", "lora_B"):
            assert_close(got[part][name], pair[part], what=f"{name}.{part} after loading peft's adapter file",
                         hint="each saved entry goes to the adapter of the module it names")
        assert got["requires_grad"][name] == [True, True], (
            f"{name}: the loaded adapter no longer trains (requires_grad {got['requires_grad'][name]}): copy into the "
            "existing weights instead of replacing them")
    with reference_mode(), torch.no_grad():
        expected = peft(input_ids=ids).logits
    assert_close(got["logits"], expected, what="logits after loading peft's adapter", hint="the adapted model is peft's")


@pytest.mark.exercise("8.8")
def test_load_adapter_state_dict_keeps_the_adapters_dtype(student, tmp_path):
    model, peft, adapters = injection_case("llama", ["q_proj", "v_proj"], 2, 4)
    got = student.loaded_adapter(copy.deepcopy(model).double(), list(adapters), peft_saved(peft, tmp_path), 2, 4)
    for name, pair in adapters.items():
        for part in ("lora_A", "lora_B"):
            assert_close(got[part][name], pair[part].double(), what=f"{name}.{part} of a float64 model after loading "
                         "a float32 adapter file", hint="the saved values are copied into the existing weights, "
                         "which keep their dtype (as peft's load_state_dict does)")
        assert got["requires_grad"][name] == [True, True], f"{name}: the loaded adapter no longer trains"


@pytest.mark.exercise("8.8")
def test_load_adapter_state_dict_leaves_the_state_dict_alone(student, tmp_path):
    model, peft, adapters = injection_case("llama", ["q_proj", "v_proj"], 2, 4)
    state = peft_saved(peft, tmp_path)
    before = {k: v.clone() for k, v in state.items()}
    student.loaded_adapter(copy.deepcopy(model), list(adapters), state, 2, 4)
    assert_unchanged(state, before, what="the caller's state_dict (its entries or their tensors)")


def bad_adapter_files(state):
    """``(state_dict, error, what, culprits)``: ``state`` (rank 2, q_proj and v_proj of the tiny Llama) made
    partial, foreign or of another rank; ``culprits`` are the entries an error may name."""
    first = next(iter(state))
    foreign = ADAPTER + "model.layers.0.mlp.up_proj.lora_A.weight"
    return [({k: v for k, v in state.items() if k != first}, KeyError, f"without {first}", [first]),
            (state | {foreign: torch.zeros(2, 32)}, KeyError, "with an entry for a module that has no adapter",
             [foreign]),
            ({k: v[:1] if "lora_A" in k else v[:, :1] for k, v in state.items()}, ValueError,
             "of rank 1 (the model's is 2)", list(state))]


@pytest.mark.exercise("8.8")
def test_load_adapter_state_dict_refuses_a_partial_or_foreign_adapter(student, tmp_path):
    model, peft, adapters = injection_case("llama", ["q_proj", "v_proj"], 2, 4)
    for bad, error, what, _ in bad_adapter_files(peft_saved(peft, tmp_path)):
        try:
            student.loaded_adapter(copy.deepcopy(model), list(adapters), bad, 2, 4)
        except error:
            continue
        except NotImplementedError:
            raise
        except Exception as err:
            raise AssertionError(f"load_adapter_state_dict of an adapter {what} raised {type(err).__name__}: "
                                 f"{err}; expected {error.__name__}") from None
        raise AssertionError(f"load_adapter_state_dict accepted an adapter {what}: raise {error.__name__} (a "
                             "half-loaded adapter runs silently with fresh weights)")


@pytest.mark.exercise("8.8")
def test_load_adapter_state_dict_names_the_entry_it_refuses(student, tmp_path):
    model, peft, adapters = injection_case("llama", ["q_proj", "v_proj"], 2, 4)
    for bad, error, what, culprits in bad_adapter_files(peft_saved(peft, tmp_path)):
        with pytest.raises(error) as refused:
            student.loaded_adapter(copy.deepcopy(model), list(adapters), bad, 2, 4)
        message = str(refused.value)
        assert any(key[len(ADAPTER):] in message for key in culprits), (
            f"load_adapter_state_dict refused an adapter {what} with {error.__name__}: {message!r}; name the entry "
            f"(such as {culprits[0]!r}), so that the user knows which weight is wrong")


# -- 8.9 nf4_code ----------------------------------------------------------------------------------------------------------
def bnb_nf4_code():
    import bitsandbytes.functional as bnbf

    return bnbf.get_4bit_type("nf4", device="cpu")


@pytest.mark.exercise("8.9")
def test_nf4_code_is_bitsandbytes_code_book(student):
    got = student.nf4_code()
    expected = bnb_nf4_code()
    uniform = torch.linspace(-1, 1, 16)
    assert_close(got, expected, what="nf4_code()", rtol=0, atol=2.4e-7,
                 hint="8 positive quantiles Phi^-1(linspace(0.9677083, 0.5, 9)[:-1]), 7 negative "
                      "-Phi^-1(linspace(0.9677083, 0.5, 8)[:-1]) and 0, sorted, divided by the largest",
                 wrong={"an evenly spaced grid (int4), not normal quantiles": uniform,
                        "the code mirrored (8 negative values, 7 positive)": -expected.flip(0)})


@pytest.mark.exercise("8.9")
def test_nf4_code_has_an_exact_zero_and_ends_at_one(student):
    got = student.nf4_code()
    assert got.dtype == torch.float32 and got.shape == (16,), f"nf4_code is float32 (16,), got {got.dtype} {tuple(got.shape)}"
    assert bool((got[1:] > got[:-1]).all()), "nf4_code must be sorted ascending"
    assert got[7].item() == 0.0, f"nf4_code()[7] is {got[7].item()}: NF4 has an exact zero, at index 7"
    assert got[0].item() == -1.0 and got[-1].item() == 1.0, (
        f"nf4_code runs from {got[0].item()} to {got[-1].item()}: divide by the largest value so that it spans [-1, 1]")


# -- 8.10-8.13 block-wise quantization and packing ----------------------------------------------------------------
def bnb_quantize(x, blocksize=64, double_quant=False):
    """``quantize_4bit`` of ``x`` (NF4): its packed bytes ``(n/2,)``, its quant_state, and its indices,
    unpacked here (high nibble first)."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)
    packed = packed.flatten()
    indices = torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()[:x.numel()]
    return packed, state, indices


def weights(seed, shape, dtype=torch.float32, outlier=None):
    """Normal weights (what NF4 is made for), optionally with one large outlier."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    if outlier is not None:
        w.view(-1)[outlier] = 3.0
    return w.to(dtype)


def nearest(values, code):
    """The index of the nearest code value (ties: the lower index), written out."""
    distance = (values.float()[:, None] - code[None, :]).abs()
    return distance.argmin(dim=1).to(torch.uint8)


def blockwise_absmax(x, blocksize, per_row=False):
    """What a mistaken absmax gives: one per row, or one for the whole tensor."""
    flat = x.float().reshape(x.shape[0], -1) if per_row else x.float().reshape(1, -1)
    return flat.abs().amax(dim=1)


QUANT_CASES = [(0, (64, 128), torch.float32, 64), (1, (5, 130), torch.float32, 64), (2, (32, 64), torch.bfloat16, 64),
               (3, (16, 96), torch.float16, 32), (4, (8, 256), torch.float32, 128)]


@pytest.mark.exercise("8.10")
@pytest.mark.parametrize("seed, shape, dtype, blocksize", QUANT_CASES)
def test_quantize_blockwise_gives_bitsandbytes_indices_and_absmax(student, seed, shape, dtype, blocksize):
    x = weights(seed, shape, dtype, outlier=7)
    _, state, indices = bnb_quantize(x, blocksize)
    got_indices, got_absmax = student.quantize_blockwise(x, bnb_nf4_code(), blocksize)
    what = f"quantize_blockwise of a {tuple(shape)} {dtype} weight, blocks of {blocksize}"
    assert_close(got_absmax, state.absmax, what=f"{what}: absmax",
                 hint="one absmax per block of the flattened tensor (the last block may be shorter)",
                 wrong={"one absmax for the whole tensor": x.float().abs().max().reshape(1)})
    assert_close(got_indices, indices, what=f"{what}: indices",
                 hint="each value divided by its block's absmax goes to the nearest code value")


@pytest.mark.exercise("8.10")
def test_an_outlier_only_coarsens_its_own_block(student):
    x = weights(5, (4, 64), outlier=3)
    code = bnb_nf4_code()
    got_indices, got_absmax = student.quantize_blockwise(x, code, 64)
    assert_close(got_absmax[1:], x[1:].abs().amax(dim=1), what="absmax of the blocks without the outlier",
                 hint="each block has its own absmax: an outlier in block 0 must not change the others' scale")
    assert len(set(got_indices[64:].tolist())) >= 8, (
        "the blocks without the outlier use fewer than 8 of the 16 codes: they were scaled by the outlier")


@pytest.mark.exercise("8.10")
def test_quantize_blockwise_to_a_256_value_code(student):
    from course_lib.lora import dynamic_code

    code = dynamic_code()
    x = weights(6, (3, 200)) - 0.02
    got_indices, got_absmax = student.quantize_blockwise(x, code, 256)
    absmax = torch.nn.functional.pad(x.flatten(), (0, 168)).view(3, 256).abs().amax(dim=1)
    assert_close(got_absmax, absmax, what="absmax of 600 values in blocks of 256", hint="the last block holds 88 values")
    scaled = x.flatten() / absmax.repeat_interleave(256)[:600]
    assert_close(got_indices, nearest(scaled, code), what="indices into the 256-value dynamic code",
                 hint="the nearest of the 256 code values (a code book is any sorted list of values)")


@pytest.mark.exercise("8.10")
def test_quantize_blockwise_ties_and_zero_blocks(student):
    code = bnb_nf4_code()
    midpoint = (code[9] + code[10]) / 2
    x = torch.zeros(8)
    x[:4] = torch.tensor([1.0, midpoint, -1.0, 0.0])     # a block whose absmax is 1: the midpoint stays exact
    got_indices, got_absmax = student.quantize_blockwise(x, code, 4)
    assert_close(got_absmax, torch.tensor([1.0, 0.0]), what="absmax of a block and of a block of zeros",
                 hint="a block of zeros has absmax 0")
    assert_close(got_indices, torch.tensor([15, 9, 0, 7, 7, 7, 7, 7], dtype=torch.uint8),
                 what="indices of [1, a value half-way between codes 9 and 10, -1, 0] and a block of zeros",
                 hint="a tie goes to the lower index (as torch.bucketize against the midpoints does); zero, and "
                      "every value of an all-zero block, is code 7, the exact 0 (no division by an absmax of 0)")


@pytest.mark.exercise("8.10")
def test_quantize_blockwise_leaves_x_and_the_code_alone(student):
    x, code = weights(8, (4, 96)), bnb_nf4_code()      # float32: x.reshape(-1).float() is x's own memory
    before = [x.clone(), code.clone()]
    student.quantize_blockwise(x, code, 64)
    assert_unchanged([x, code], before, what="the caller's x or code (scale a copy: `x / absmax`, not `x /= absmax`)")


@pytest.mark.exercise("8.11")
@pytest.mark.parametrize("seed, shape, dtype, blocksize", QUANT_CASES)
def test_dequantize_blockwise_is_bitsandbytes_dequantize_4bit(student, seed, shape, dtype, blocksize):
    import bitsandbytes.functional as bnbf

    x = weights(seed, shape, dtype)
    packed, state, indices = bnb_quantize(x, blocksize)
    state.dtype = torch.float32
    expected = bnbf.dequantize_4bit(packed[:, None], state)
    got = student.dequantize_blockwise(indices, state.absmax, state.code, blocksize, shape)
    assert_close(got, expected, what=f"dequantize_blockwise of a {tuple(shape)} weight, blocks of {blocksize}",
                 hint="value i is code[indices[i]] * absmax[i // blocksize], in float32, then reshaped",
                 wrong={"without the block's absmax": state.code[indices.long()].view(shape)})


@pytest.mark.exercise("8.11")
def test_dequantize_blockwise_of_an_8_bit_code(student):
    import bitsandbytes.functional as bnbf

    x = weights(7, (600,))
    q, state = bnbf.quantize_blockwise(x, blocksize=256)
    expected = bnbf.dequantize_blockwise(q, state)
    got = student.dequantize_blockwise(q, state.absmax, state.code, 256, (600,))
    assert_close(got, expected, what="dequantize_blockwise of 600 values with bitsandbytes' 8-bit dynamic code",
                 hint="the same formula for any code book: code[index] * absmax of the index's block")


@pytest.mark.exercise("8.12")
@pytest.mark.parametrize("seed, shape", [(0, (64, 128)), (1, (4, 6)), (2, (1, 2))])
def test_pack_nibbles_gives_bitsandbytes_bytes(student, seed, shape):
    x = weights(seed, shape)
    packed, state, indices = bnb_quantize(x)
    got = student.pack_nibbles(indices)
    assert_close(got, packed, what=f"pack_nibbles of the {x.numel()} NF4 indices of a {tuple(shape)} weight",
                 hint="byte j = 16 * indices[2j] + indices[2j + 1]: the first index in the high four bits",
                 wrong={"the nibbles in the wrong order (first index in the low bits)": (packed << 4) | (packed >> 4)})


@pytest.mark.exercise("8.12")
def test_pack_nibbles_of_every_pair(student):
    pairs = torch.cartesian_prod(torch.arange(16), torch.arange(16)).to(torch.uint8)      # (256, 2)
    got = student.pack_nibbles(pairs.flatten())
    assert_close(got, torch.arange(256, dtype=torch.uint8), what="pack_nibbles of all 256 pairs (a, b) in order",
                 hint="the pair (a, b) is the byte 16 * a + b")


@pytest.mark.exercise("8.12")
def test_pack_nibbles_leaves_the_indices_alone(student):
    indices = torch.randint(0, 16, (64,), generator=torch.Generator().manual_seed(9)).to(torch.uint8)
    before = indices.clone()
    student.pack_nibbles(indices)
    assert_unchanged(indices, before, what="the caller's indices (indices[0::2] is a view: shift a copy, "
                     "`indices[0::2] << 4`, not `<<=`)")


@pytest.mark.exercise("8.13")
@pytest.mark.parametrize("seed, shape", [(0, (64, 128)), (1, (3, 7)), (2, (1, 1))])
def test_unpack_nibbles_reads_bitsandbytes_bytes(student, seed, shape):
    x = weights(seed, shape)
    packed, state, _ = bnb_quantize(x)
    scaled = x.flatten() / state.absmax.repeat_interleave(64)[:x.numel()]
    expected = nearest(scaled, bnb_nf4_code())
    got = student.unpack_nibbles(packed, x.numel())
    assert_close(got, expected, what=f"unpack_nibbles of the {packed.numel()} bytes of a {tuple(shape)} NF4 weight",
                 hint="the high four bits first, then the low; an odd count drops the last byte's low half")


@pytest.mark.exercise("8.13")
def test_unpack_nibbles_inverts_packing(student):
    pairs = torch.cartesian_prod(torch.arange(16), torch.arange(16)).to(torch.uint8).flatten()
    assert_close(student.unpack_nibbles(torch.arange(256, dtype=torch.uint8), 512), pairs,
                 what="unpack_nibbles of the bytes 0..255", hint="byte 16 * a + b holds a, then b")


@pytest.mark.exercise("8.13")
def test_unpack_nibbles_leaves_the_bytes_alone(student):
    packed = torch.arange(256, dtype=torch.uint8)
    student.unpack_nibbles(packed, 511)
    assert_unchanged(packed, torch.arange(256, dtype=torch.uint8), what="the caller's packed bytes (`packed & 0xF`, "
                     "not `&=`)")


# -- 8.14 double_quantize -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.14")
@pytest.mark.parametrize("seed, shape", [(0, (256, 320)), (1, (48, 64)), (2, (100, 96))])
def test_double_quantize_is_bitsandbytes_compressed_statistics(student, seed, shape):
    from course_lib.lora import dynamic_code

    x = weights(seed, shape) * torch.linspace(0.2, 3, shape[0])[:, None]      # scales that vary along the rows
    _, state, _ = bnb_quantize(x, double_quant=True)
    _, plain, _ = bnb_quantize(x)
    absmax = plain.absmax
    code = dynamic_code()
    got = student.double_quantize(absmax, code, 256)
    assert isinstance(got, tuple) and len(got) == 3, "double_quantize returns (absmax_q, absmax2, offset)"
    absmax_q, absmax2, offset = got
    what = f"double_quantize of the {absmax.numel()} block scales of a {tuple(shape)} weight"
    assert_close(offset, state.offset, what=f"{what}: offset", hint="the offset is the mean of the scales",
                 wrong={"not centred (offset 0)": torch.tensor(0.0)})
    assert_close(absmax2, state.state2.absmax, what=f"{what}: second-level absmax",
                 hint="the centred scales (absmax - offset) are quantized in blocks of 256")
    centred = absmax - state.offset
    expected = nearest(centred / state.state2.absmax.repeat_interleave(256)[:absmax.numel()], code)
    differ = (expected != state.absmax).sum().item()
    assert differ <= max(2, absmax.numel() // 500), f"the test's nearest codes differ from bitsandbytes' in {differ}"
    assert_close(absmax_q, expected, what=f"{what}: 8-bit scales",
                 hint="the nearest of the 256 dynamic code values to (absmax - offset) / absmax2 of its block")


def block_scales(seed, n):
    """``n`` first-level scales: absmax of blocks of 64 normal weights, so positive and near 0.1."""
    return weights(seed, (n, 64)).abs().amax(dim=1)


@pytest.mark.exercise("8.14")
@pytest.mark.parametrize("blocksize", [64, 1000])
def test_double_quantize_in_second_level_blocks_of_any_size(student, blocksize):
    import bitsandbytes.functional as bnbf

    from course_lib.lora import dynamic_code

    absmax, code = block_scales(10, 700), dynamic_code()
    got = student.double_quantize(absmax.clone(), code, blocksize)    # (absmax left alone: the test below)
    assert isinstance(got, tuple) and len(got) == 3, "double_quantize returns (absmax_q, absmax2, offset)"
    absmax_q, absmax2, offset = got
    centred = absmax - absmax.mean()
    q, state = bnbf.quantize_blockwise(centred, code=code, blocksize=blocksize)
    what = f"double_quantize of 700 scales in second-level blocks of {blocksize}"
    assert_close(offset, absmax.mean(), what=f"{what}: offset", hint="the offset is the mean of the scales")
    assert_close(absmax2, state.absmax, what=f"{what}: second-level absmax",
                 hint=f"one absmax per block of blocksize={blocksize} centred scales (the argument, not 256)")
    expected = nearest(centred / state.absmax.repeat_interleave(blocksize)[:700], code)
    differ = (expected != q).sum().item()
    assert differ <= 2, f"the test's nearest codes differ from bitsandbytes' quantize_blockwise in {differ}"
    assert_close(absmax_q, expected, what=f"{what}: 8-bit scales",
                 hint="the nearest dynamic code value to each centred scale divided by its block's absmax")


@pytest.mark.exercise("8.14")
def test_double_quantize_leaves_the_scales_alone(student):
    from course_lib.lora import dynamic_code

    absmax, code = block_scales(11, 300), dynamic_code()
    before = [absmax.clone(), code.clone()]
    student.double_quantize(absmax, code, 256)
    assert_unchanged([absmax, code], before, what="the caller's absmax or code (centre a copy: `absmax - offset`, "
                     "not `absmax -= offset`)")


# -- 8.15 NF4Linear.forward -------------------------------------------------------------------------------------------------
def bnb_linear4bit(weight, bias, compute_dtype, double_quant):
    """bitsandbytes' Linear4bit with ``weight`` and ``bias`` (quantized as it does it) and the buffers of
    the same state for the course's NF4Linear."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=bias is not None, compute_dtype=compute_dtype,
                              compress_statistics=double_quant, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=double_quant, blocksize=64)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
    layer = layer.to("cpu")
    state = layer.weight.quant_state
    buffers = {"weight_packed": layer.weight.data.flatten(), "code": state.code}
    if double_quant:
        buffers |= {"absmax_q": state.absmax, "absmax2": state.state2.absmax, "absmax_offset": state.offset,
                    "absmax_code": state.state2.code}
    else:
        buffers["absmax"] = state.absmax
    return layer, buffers


@pytest.mark.exercise("8.15")
@pytest.mark.parametrize("seed, in_features, out_features, compute, x_dtype, double_quant, bias", [
    (0, 128, 64, torch.float32, torch.float32, False, True), (1, 64, 48, torch.float32, torch.float32, True, False),
    (2, 128, 32, torch.bfloat16, torch.float32, True, True), (3, 64, 64, torch.float32, torch.bfloat16, False, True),
    (4, 192, 16, torch.float16, torch.float32, True, True)])
def test_nf4_linear_is_bitsandbytes_linear4bit(student, seed, in_features, out_features, compute, x_dtype,
                                               double_quant, bias):
    w = weights(seed, (out_features, in_features))
    b = weights(seed + 100, (out_features,)) if bias else None
    layer, buffers = bnb_linear4bit(w, b, compute, double_quant)
    x = torch.randn(2, 3, in_features, generator=torch.Generator().manual_seed(seed)).to(x_dtype)
    x_ref = x.clone().requires_grad_(True)
    expected = layer(x_ref)
    expected.backward(torch.ones_like(expected))
    got = student.nf4_linear_outputs(buffers, in_features, out_features, x, bias=b, compute_dtype=str(compute)[6:])
    what = (f"NF4Linear ({in_features} -> {out_features}, compute {compute}, input {x_dtype}, "
            f"double_quant={double_quant}, bias={bias})")
    assert_close(got["output"], expected.detach(), what=f"{what}: output",
                 hint="dequantize the weight to the compute dtype, cast x and the bias to it, F.linear, then cast the "
                      "result back to x's dtype (bitsandbytes' Linear4bit)")
    assert_close(got["grad_x"], x_ref.grad, what=f"{what}: gradient of x", rtol=2e-2 if compute != torch.float32 else None,
                 atol=1e-2 if compute != torch.float32 else None,
                 hint="the gradient must flow back to x through the dequantized weight (adapters before this layer "
                      "need it)")
    assert all(g is None for g in got["grads"].values()), "NF4Linear's bias is frozen: it gets no gradient"


@pytest.mark.exercise("8.15")
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16], ids=str)
def test_nf4_linear_keeps_no_copy_of_the_weight_for_the_backward_pass(student, compute):
    w, b = weights(15, (96, 128)), weights(16, (96,))
    layer, buffers = bnb_linear4bit(w, b, compute, True)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(17))
    x_ref = x.clone().requires_grad_(True)
    expected = layer(x_ref)
    expected.backward(torch.ones_like(expected))
    got = student.nf4_linear_outputs(buffers, 128, 96, x, bias=b, compute_dtype=str(compute)[6:])
    assert_close(got["grad_x"], x_ref.grad, what=f"NF4Linear (compute {compute}): gradient of x",
                 rtol=2e-2 if compute != torch.float32 else None, atol=1e-2 if compute != torch.float32 else None)
    weight_bytes = w.numel() * torch.finfo(compute).bits // 8
    assert got["saved_bytes"] < weight_bytes // 2, (
        f"NF4Linear's forward left {got['saved_bytes']} bytes for the backward pass; the dequantized weight takes "
        f"{weight_bytes}: a plain F.linear keeps it until the backward pass (in every layer at once, which undoes "
        "QLoRA's saving). Compute x's gradient in a torch.autograd.Function whose backward dequantizes again, as "
        "bitsandbytes' MatMul4Bit does")


@pytest.mark.exercise("8.15")
@pytest.mark.parametrize("lead", [(), (2, 2, 3)], ids=["one vector", "4-d batch"])
def test_nf4_linear_takes_any_leading_dimensions(student, lead):
    w, b = weights(12, (24, 64)), weights(13, (24,))
    layer, buffers = bnb_linear4bit(w, b, torch.float32, False)
    x = torch.randn(*lead, 64, generator=torch.Generator().manual_seed(14))
    x_ref = x.clone().requires_grad_(True)
    expected = layer(x_ref)
    expected.backward(torch.ones_like(expected))
    got = student.nf4_linear_outputs(buffers, 64, 24, x, bias=b)
    what = f"NF4Linear of an input {(*lead, 64)} (x is (..., in_features): any leading dimensions)"
    hint = "F.linear takes any leading dimensions; nothing needs (batch, seq)"
    assert_close(got["output"], expected.detach(), what=f"{what}: output", hint=hint)
    assert_close(got["grad_x"], x_ref.grad, what=f"{what}: gradient of x", hint=hint)


# -- 8.16 training_memory -----------------------------------------------------------------------------------------------------
def tensor_bytes(tensors):
    """Bytes of distinct tensors (by storage)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def measured_memory(model, ids):
    """Bytes of the parameters (with bitsandbytes' quant_state scales), of the gradients after a backward
    pass and of AdamW's moments after a step."""
    import bitsandbytes as bnb

    model.train()   # (in eval mode, bitsandbytes on an AVX512-BF16 CPU repacks 4-bit weights for inference)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    with reference_mode():
        model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scales = []
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            scales += [state.absmax] + ([state.state2.absmax, state.offset] if state.nested else [])
    return {"weights": tensor_bytes(list(model.parameters()) + scales),
            "gradients": tensor_bytes(p.grad for p in trainable),
            "optimizer": tensor_bytes(s[k] for p in trainable for s in [optimizer.state[p]] for k in ("exp_avg", "exp_avg_sq"))}


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]   # what QLoRA quantizes


def memory_model(dtype):
    """A tiny Llama (hidden 40: weights whose sizes are no multiple of 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).to(dtype)


def memory_sizes(model, targets):
    """The shapes of the weights of ``targets`` and the number of every other parameter."""
    shapes = [tuple(m.weight.shape) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    return shapes, sum(p.numel() for p in model.parameters()) - sum(o * i for o, i in shapes)


def adapted_memory_model(model, method, dtype, double_quant, targets, r, tmp_path):
    """``model`` adapted by ``method``: itself (full), peft's LoRA, or peft's LoRA on the model loaded
    in 4 bits by transformers (QLoRA quantizes every linear layer of the blocks: ``BitsAndBytesConfig``
    leaves only ``lm_head``)."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    if method == "qlora":
        model.save_pretrained(str(tmp_path))
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                          bnb_4bit_use_double_quant=double_quant)
        model = LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=quantization, dtype=dtype)
    return model if method == "full" else peft_model(model, targets, r, r, autocast_adapter_dtype=False)


@pytest.mark.exercise("8.16")
@pytest.mark.parametrize("method, dtype, double_quant, targets, r", [
    ("full", torch.float32, True, ["q_proj", "v_proj"], 4), ("lora", torch.float32, True, ["q_proj", "v_proj"], 4),
    ("lora", torch.bfloat16, True, ["k_proj", "up_proj", "down_proj"], 2),
    ("qlora", torch.float32, True, ALL_LINEAR, 4), ("qlora", torch.float32, False, ALL_LINEAR, 8)], ids=str)
def test_training_memory_is_what_the_tensors_take(student, method, dtype, double_quant, targets, r, tmp_path):
    model = memory_model(dtype)
    shapes, other = memory_sizes(model, targets)
    got = student.training_memory(shapes, other, method, r=r, param_bytes=torch.finfo(dtype).bits // 8,
                                  double_quant=double_quant)
    measured = memo(("memory", method, str(dtype), double_quant, str(targets), r), lambda: measured_memory(
        adapted_memory_model(model, method, dtype, double_quant, targets, r, tmp_path), input_ids(6)))
    assert isinstance(got, dict) and set(got) == {"weights", "gradients", "optimizer", "total"}, (
        f"training_memory returns {{'weights', 'gradients', 'optimizer', 'total'}}, got {got!r}")
    what = f"training_memory({method}, {dtype}, double_quant={double_quant}, r={r}, {len(shapes)} adapted weights)"
    for key in ("weights", "gradients", "optimizer"):
        assert got[key] == measured[key], (
            f"{what}[{key!r}] = {got[key]} bytes; the tensors of the model take {measured[key]} "
            + {"weights": "(every parameter, and for QLoRA the packed 4-bit weights, ceil(n/2) bytes each, plus "
                          "their scales, counted per matrix)",
               "gradients": "(one gradient per trainable value)",
               "optimizer": "(AdamW keeps two moments per trainable value)"}[key])
    assert got["total"] == sum(measured.values()), f"{what}['total'] is not the sum of the other three"


def bnb_nf4_bytes(shape, blocksize, double_quant, absmax_blocksize):
    """Bytes of one weight of ``shape`` quantized to NF4 by bitsandbytes: its packed indices and its scales;
    with double quantization, the scales centred and quantized to 8 bits in blocks of ``absmax_blocksize``
    (``quantize_4bit(compress_statistics=True)`` does this with 256), their absmax and the offset."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weights(0, shape), blocksize=blocksize, quant_type="nf4")
    scales = [state.absmax]
    if double_quant:
        offset = state.absmax.mean()
        absmax_q, state2 = bnbf.quantize_blockwise(state.absmax - offset, blocksize=absmax_blocksize)
        scales = [absmax_q, state2.absmax, offset]
    return tensor_bytes([packed] + scales)


@pytest.mark.exercise("8.16")
@pytest.mark.parametrize("blocksize, double_quant, absmax_blocksize", [(128, False, 256), (32, True, 8)])
def test_training_memory_counts_whole_bytes_of_odd_matrices_in_any_blocks(student, blocksize, double_quant,
                                                                          absmax_blocksize):
    shapes, other, r = [(7, 9), (5, 13), (33, 41)], 1000, 3     # 63, 65 and 1353 values: odd counts
    blocks = {"blocksize": blocksize, "double_quant": double_quant, "absmax_blocksize": absmax_blocksize}
    for method in ("full", "lora", "qlora"):
        got = student.training_memory(shapes, other, method, r=r, param_bytes=2, **blocks)
        assert isinstance(got, dict) and all(type(v) is int for v in got.values()), (
            f"training_memory(..., {method!r}) returns {got!r}: a count of bytes is a Python int")
    quantized = sum(bnb_nf4_bytes(shape, **blocks) for shape in shapes)
    expected = (other + sum(r * (o + i) for o, i in shapes)) * 2 + quantized
    assert got["weights"] == expected, (
        f"training_memory(qlora, {blocks}) weights = {got['weights']} bytes; bitsandbytes' tensors take {expected}: "
        f"{other} other parameters and the adapters, 2 bytes each, and per 4-bit matrix ceil(n / 2) bytes of packed "
        "indices (an odd count pads the last byte) plus its scales, in blocks of the sizes given")


# -- 8.17 activation_memory ---------------------------------------------------------------------------------------------------
ACTIVATION_ARCHITECTURES = {
    "grouped queries": dict(vocab_size=VOCAB, hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2),
    "one kv head, wide heads": dict(vocab_size=300, hidden_size=48, intermediate_size=100, num_hidden_layers=3,
                                    num_attention_heads=6, num_key_value_heads=1, head_dim=12),
}


def saved_bytes(model, ids):
    """Bytes of the distinct storages autograd saves in a forward pass with labels, the model's own tensors
    left out."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in own:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


def activations_per_sequence(architecture, method, attn, seq_len, r, tmp_path):
    """What one more sequence adds to the saved bytes: batch 3 minus batch 2 (at batch 1 a slice of the labels
    is a view where a bigger batch copies it), in float32, the adapters on every projection."""
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**architecture, attn_implementation=attn))
    if method == "qlora":
        model.save_pretrained(str(tmp_path))
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.float32)
        model = LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=quantization, dtype=torch.float32,
                                                 attn_implementation=attn)
    if method != "full":
        model = peft_model(model, ALL_LINEAR, r, r, autocast_adapter_dtype=False)
    model.train()
    vocab = architecture["vocab_size"]
    two, three = (saved_bytes(model, torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(batch)))
                  for batch in (2, 3))
    return three - two


def activation_architecture(architecture):
    from transformers import LlamaConfig

    from course_lib.lora import ACTIVATION_KEYS

    config = LlamaConfig(**architecture)
    return {key: getattr(config, key) for key in ACTIVATION_KEYS}


@pytest.mark.exercise("8.17")
@pytest.mark.parametrize("name, method, attn, seq_len, r", [
    ("grouped queries", "full", "sdpa", 16, 4), ("grouped queries", "full", "eager", 24, 4),
    ("grouped queries", "lora", "sdpa", 24, 2), ("one kv head, wide heads", "lora", "eager", 16, 8),
    ("one kv head, wide heads", "full", "eager", 20, 4), ("grouped queries", "qlora", "sdpa", 16, 4)], ids=str)
def test_activation_memory_is_what_autograd_saves(student, name, method, attn, seq_len, r, tmp_path):
    architecture = ACTIVATION_ARCHITECTURES[name]
    measured = memo(("activations", name, method, attn, seq_len, r),
                    lambda: activations_per_sequence(architecture, method, attn, seq_len, r, tmp_path))
    config = activation_architecture(architecture)
    for batch in (1, 3):
        got = student.activation_memory(config, batch, seq_len, method, r=r, attn_implementation=attn)
        assert type(got) is int, f"activation_memory returns a Python int of bytes, got {type(got).__name__}"
        assert got == batch * measured, (
            f"activation_memory({name}, batch {batch}, seq_len {seq_len}, {method!r}, r={r}, {attn!r}) = {got} bytes; "
            f"autograd saves {batch * measured} ({measured} per sequence; off by {got - batch * measured}): count what "
            "the backward pass needs, only where a gradient is needed (frozen norms keep no normalised input, the "
            "first norm nothing under adapters), 4 bytes per float32 value and 8 per int64 id")


# -- not graded: the accounting against the CUDA allocator (the reference's 8.16 and 8.17) -----------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["full", "lora"])
def test_memory_bill_and_activations_match_the_cuda_peak_of_a_training_step(solution_mode, method):
    """On a GPU, the peak that ``torch.cuda.max_memory_allocated`` sees in one training step (forward,
    backward, AdamW) of a float32 Llama lies close to ``training_memory`` plus ``activation_memory``: above
    it by the allocator's temporaries (the logits and their gradient, matmul workspaces), and below it by the
    activations a backward pass frees before the last gradients exist."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from course_lib import lora

    architecture = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**architecture, attn_implementation="sdpa"))
    shapes, other = memory_sizes(model, ALL_LINEAR)
    model = model.to("cuda")
    if method == "lora":
        model = peft_model(model, ALL_LINEAR, 8, 8, autocast_adapter_dtype=False)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch, seq_len = 8, 256
    ids = torch.randint(0, 4096, (batch, seq_len), device="cuda", generator=torch.Generator("cuda").manual_seed(0))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()                                   # AdamW's moments exist from here on
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    bill = lora.training_memory(shapes, other, method, r=8)["total"]
    activations = lora.activation_memory(activation_architecture(architecture), batch, seq_len, method, r=8)
    predicted = bill + activations
    assert 0.8 * predicted <= peak <= 1.4 * predicted, (
        f"{method}: CUDA peak {peak / 2**20:.1f} MiB against {predicted / 2**20:.1f} MiB predicted "
        f"({bill / 2**20:.1f} MiB of weights, gradients and AdamW states, {activations / 2**20:.1f} MiB of activations)")


# -- not graded: bad input is refused before your code runs, with the argument's name ---------------------
@pytest.mark.parametrize("call, error, name", [
    (lambda lo: lo.init_lora_weights(8, 4, 0), ValueError, "r"),
    (lambda lo: lo.lora_scaling(float("nan"), 4), ValueError, "alpha"),
    (lambda lo: lo.target_matches("q_proj", []), TypeError, "target_modules"),
    (lambda lo: lo.target_matches("q_proj", "(unclosed"), ValueError, "target_modules"),
    (lambda lo: lo.inject_lora(torch.nn.Linear(2, 2), ["x"], dropout=1.5), ValueError, "dropout"),
    (lambda lo: lo.lora_delta_weight(torch.zeros(2, 4), torch.zeros(3, 5), 1.0), ValueError, "lora_A"),
    (lambda lo: lo.quantize_blockwise(torch.zeros(4), torch.tensor([1.0, -1.0])), ValueError, "code"),
    (lambda lo: lo.quantize_blockwise(torch.tensor([1.0, float("inf")]), torch.tensor([-1.0, 1.0])), ValueError, "x"),
    (lambda lo: lo.dequantize_blockwise(torch.zeros(4, dtype=torch.uint8), torch.ones(2), torch.tensor([-1.0, 1.0]),
                                        64, (4,)), ValueError, "absmax"),
    (lambda lo: lo.pack_nibbles(torch.zeros(3, dtype=torch.uint8)), ValueError, "indices"),
    (lambda lo: lo.pack_nibbles(torch.full((2,), 16, dtype=torch.uint8)), ValueError, "indices"),
    (lambda lo: lo.unpack_nibbles(torch.zeros(2, dtype=torch.uint8), 5), ValueError, "n"),
    (lambda lo: lo.double_quantize(torch.ones(2, 2), torch.tensor([-1.0, 1.0])), ValueError, "absmax"),
    (lambda lo: lo.training_memory([(4, 0)], 0, "full"), ValueError, "linear_shapes"),
    (lambda lo: lo.training_memory([(4, 4)], 0, "adapter"), ValueError, "method"),
    (lambda lo: lo.activation_memory({"hidden_size": 8}, 1, 4), ValueError, "intermediate_size"),
    (lambda lo: lo.activation_memory(dict.fromkeys(lo.ACTIVATION_KEYS, 4), 1, 4, attn_implementation="flash"),
     ValueError, "attn_implementation"),
    (lambda lo: lo.LoRALinear(torch.nn.Linear(4, 4))(torch.zeros(2, 3)), ValueError, "x"),
    (lambda lo: lo.LoRALinear(torch.nn.Embedding(4, 4)), ValueError, "Embedding"),
])
def test_bad_input_gets_an_error_naming_the_argument(solution_mode, call, error, name):
    from course_lib import lora

    with pytest.raises(error, match=name):
        call(lora)


# -- not graded: QLoRA end to end, adapter files through peft, merging a model ------------------------------------------
def test_qlora_layer_matches_peft_lora_on_bitsandbytes_linear4bit(solution_mode):
    from course_lib.lora import LoRALinear, NF4Linear

    w, b = weights(8, (48, 128)), weights(9, (48,))
    layer4, buffers = bnb_linear4bit(w, b, torch.float32, True)
    peft = peft_layer(layer4, 4, 8)
    ours = NF4Linear(128, 48, True, double_quant=True)
    ours.load_buffers(buffers)
    with torch.no_grad():
        ours.bias.copy_(b)
    qlora = LoRALinear(ours, 4, 8, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for part in ("lora_A", "lora_B"):
            weight = torch.randn(getattr(qlora, part).weight.shape, generator=gen) / 4
            getattr(qlora, part).weight.copy_(weight)
            getattr(peft, part)["default"].weight.copy_(weight)
    x = torch.randn(3, 128, generator=gen)
    expected, got = peft(x), qlora(x)
    expected.sum().backward()
    got.sum().backward()
    assert_close(got, expected, what="QLoRA layer output (NF4Linear base + LoRA) against peft on Linear4bit")
    assert_close(qlora.lora_B.weight.grad, peft.lora_B["default"].weight.grad, what="gradient of lora_B")


def test_adapters_travel_to_peft_and_back(solution_mode, tmp_path):
    from peft import PeftModel

    from course_lib.lora import inject_lora, load_adapter, save_adapter, set_adapters

    model, _, adapters = injection_case("gpt2", ["c_attn", "c_proj"], 2, 4, fan_in_fan_out=True)
    ours = inject_lora(copy.deepcopy(model), ["c_attn", "c_proj"], 2, 4)
    set_adapters(ours, adapters)
    save_adapter(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["target_modules"] == ["c_attn", "c_proj"]
    peft = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "ours"))
    peft.save_pretrained(str(tmp_path / "peft"))
    back = load_adapter(copy.deepcopy(model), tmp_path / "peft")
    ids = input_ids(7)
    with torch.no_grad():
        expected = ours(input_ids=ids).logits
        assert_close(peft(input_ids=ids).logits, expected, what="peft model loaded from the course's adapter folder")
        assert_close(back(input_ids=ids).logits, expected, what="course model loaded from peft's adapter folder")


def test_merge_and_unload_gives_back_a_plain_model(solution_mode):
    from course_lib.lora import LoRALinear, inject_lora, merge_and_unload, set_adapters

    model, peft, adapters = injection_case("llama", ["q_proj", "v_proj"], 4, 8)
    ours = inject_lora(copy.deepcopy(model), ["q_proj", "v_proj"], 4, 8)
    set_adapters(ours, adapters)
    merged = merge_and_unload(ours)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(model.state_dict())
    ids = input_ids(8)
    with torch.no_grad():
        assert_close(merged(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-5, atol=1e-5,
                     what="logits of the merged and unloaded model against peft's adapted model")


def test_qlora_trains_the_course_model_adapters_only(solution_mode):
    from course_lib.lora import NF4Linear, count_parameters, inject_lora, quantize_model

    model = tiny_model("course", 4).train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    quantize_model(model, targets)
    inject_lora(model, targets, r=4, alpha=8, seed=0)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainable, total = count_parameters(model)
    assert 0 < trainable < total // 5
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = input_ids(9, batch=4, seq=16)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, f"QLoRA did not learn the batch: {losses}"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items()), "a frozen tensor changed"
    assert sum(isinstance(m, NF4Linear) for m in model.modules()) == 2 * len(targets)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapt_runs_chapter_7s_loop_on_the_adapters_alone(solution_mode, method):
    from course_lib.lora import AdaptConfig, LoRALinear, NF4Linear, adapt, adapter_report
    from course_lib.pretraining import pretrained_course_lm

    config = AdaptConfig(method=method, r=4, alpha=8.0, modules_to_save=(), finetune="tiny", total_steps=4)
    base, _ = pretrained_course_lm("tiny", progress=False)
    result = adapt(config)
    assert result.history["step"] == [1, 2, 3, 4]
    model = result.model
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == 7 * base.config.num_hidden_layers
    assert all(m.lora_B.weight.abs().sum() > 0 for m in adapters), "every adapter trained"
    assert all(isinstance(m.base_layer, NF4Linear) == (method == "qlora") for m in adapters)
    trained = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, value in base.state_dict().items():
        if name in trained:  # NF4 layers store other tensors: their names are not the base's
            assert torch.equal(value, trained[name]), f"{name} changed: only the adapters may train"
    report = adapter_report(config, result)
    assert report["memory"]["weights"] == report["measured_weight_bytes"]
    assert report["trainable_parameters"] == sum(m.lora_A.weight.numel() + m.lora_B.weight.numel() for m in adapters)
    assert report["test_examples"] == 8 * len(report["test"])


def test_an_adapter_with_a_trained_embedding_travels_to_peft_and_back(solution_mode, tmp_path):
    from peft import PeftModel

    from course_lib.lora import AdaptConfig, adapt, adapter_report, load_adapter, save_adapter
    from course_lib.pretraining import pretrained_course_lm

    config = AdaptConfig(r=4, alpha=8.0, finetune="tiny", total_steps=2)       # modules_to_save: the embedding
    result = adapt(config)
    base, _ = pretrained_course_lm("tiny", progress=False)
    embedding = result.model.get_input_embeddings().weight
    assert not torch.equal(embedding, base.get_input_embeddings().weight), "the embedding trained"
    assert result.model.get_output_embeddings().weight is embedding, "the output layer stays tied to it"
    report = adapter_report(config, result)
    assert report["trained_in_full"] == embedding.numel()
    assert report["memory"]["weights"] == report["measured_weight_bytes"]
    save_adapter(result.model, tmp_path, None, config.modules_to_save)
    ours = load_adapter(pretrained_course_lm("tiny", progress=False)[0], tmp_path).eval()
    theirs = PeftModel.from_pretrained(pretrained_course_lm("tiny", progress=False)[0], tmp_path).eval()
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    with torch.no_grad():
        trained = result.model.eval()(input_ids=ids).logits
        assert_close(ours(input_ids=ids).logits, trained, rtol=0, atol=0, what="the adapter loaded back")
        assert_close(theirs(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5, what="the adapter loaded by peft")


@pytest.mark.slow
def test_the_course_adapter_is_a_peft_adapter_of_the_pretrained_model(solution_mode):
    from peft import PeftModel

    from course_lib.lora import adapted_course_lm, adapted_model_dir, adapted_training_record
    from course_lib.pretraining import pretrained_course_lm

    model, tokenizer = adapted_course_lm("lora", "cpu", progress=False)
    base, _ = pretrained_course_lm("cpu", progress=False)
    peft_model = PeftModel.from_pretrained(base, adapted_model_dir("lora", "cpu")).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Is `TextWrapper` a class or a function?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert_close(model(**prompt).logits, peft_model(**prompt).logits, rtol=1e-5, atol=1e-5,
                     what="the cached adapter in the course's layers and in peft's")
    record = adapted_training_record("lora", "cpu")
    assert record["trainable_parameters"] - record["trained_in_full"] < record["parameters"] // 10
    assert set(record["test"]) == {"arithmetic", "string", "sorting", "stdlib", "naming"}


def merged_copy(model, adapters, r, alpha, **settings):
    """``model`` with the modules of ``adapters`` wrapped by the course's LoRALinear and set."""
    from course_lib.lora import set_adapters, wrap_modules

    adapted = wrap_modules(copy.deepcopy(model), list(adapters), r, alpha, **settings)
    set_adapters(adapted, adapters)
    return adapted


@pytest.mark.parametrize("family, targets, use_rslora", [("llama", ["q_proj", "up_proj"], False),
                                                         ("gpt2", ["c_attn"], True)])
def test_merged_weights_are_peft_merge_and_unload(solution_mode, family, targets, use_rslora):
    from course_lib.lora import lora_layers

    model, peft, adapters = injection_case(family, targets, 4, 12, use_rslora=use_rslora,
                                           **({"fan_in_fan_out": True} if family == "gpt2" else {}))
    ours = merged_copy(model, adapters, 4, 12, use_rslora=use_rslora)
    ids = input_ids(3)
    with torch.no_grad():
        adapted = ours(input_ids=ids).logits
        for layer in lora_layers(ours).values():
            layer.merge()
        assert_close(ours(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5,
                     what="logits of the merged model against the adapted one")
    merged = copy.deepcopy(peft).merge_and_unload()
    for name, layer in lora_layers(ours).items():
        assert_close(layer.base_layer.weight.detach(), merged.get_submodule(name).weight.detach(), rtol=1e-6,
                     atol=1e-6, what=f"{name}.weight merged, against peft's merge_and_unload")
        layer.unmerge()
        assert_close(layer.base_layer.weight.detach(), model.get_submodule(name).weight.detach(), rtol=1e-6,
                     atol=1e-6, what=f"{name}.weight after merge then unmerge")
