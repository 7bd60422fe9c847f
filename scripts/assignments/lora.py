"""Chapter 8 assignment (lora): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``lora.py``: their LoRA layer against ``peft``'s on the same
weights; their injection into a small Llama and a small GPT-2 (``Conv1D``) with the trainable
parameters counted as ``peft`` counts them, a few steps of LoRA training, merging, and their adapter
file loaded by ``peft``; their NF4 code book drawn over a normal weight's histogram, and the error of
their NF4 quantization against an evenly spaced 4-bit grid and against ``bitsandbytes``, with and
without double quantization; QLoRA on a small course model (their 4-bit layers plus their adapters,
trained a few steps); and their memory formula for the course's models and a 7B Llama. Every call of an
exercise goes through ``attempt``, so an unfinished or broken exercise is reported and the rest still
runs.
"""

INIT_POINTS = 3  # written answers, graded by hand
NF4_POINTS = 2


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 8."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 8: LoRA and QLoRA",
            what="""
fine-tuning a few thousand parameters instead of all of them. LoRA's adapter (its initialisation, its
scale, the layer), choosing the layers by name and wrapping them in any `transformers` model with the
rest frozen, merging, and the adapter file `peft` reads; then QLoRA's 4-bit NormalFloat (the code
book, block-wise quantization, two indices per byte, double quantization of the scales), the 4-bit
linear layer, and the memory each method needs.
""",
            contract="""
and the module docstring the conventions all of them share: `nn.Linear` shapes (and GPT-2's
transposed `Conv1D`), module names, code books, blocks of the flattened tensor
""",
            written=(INIT_POINTS, NF4_POINTS),
            more=f"""
Everything else in `{module}.py` is already written and calls your functions: the `LoRALinear` and
`NF4Linear` modules (their `__init__`, `merge`/`unmerge`, `dequantized_weight`), `merge_and_unload`,
`save_adapter` and `load_adapter` (files `peft` reads and writes), `quantize_model`, `count_parameters`
and `dynamic_code` (the 8-bit code of double quantization).
""",
            experiments="""
Run the experiments: they compare *your* functions with `peft` and `bitsandbytes`, train adapters on
small models, and measure quantization error and memory. An exercise you have not done yet is
reported, not fatal, so you can run them at any stage. Then answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import copy
import logging as pylogging
import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

logging.set_verbosity_error()
pylogging.getLogger("bitsandbytes").setLevel(pylogging.ERROR)  # optional CPU kernels it looks for on import
torch.set_num_threads(1)  # small models: a second thread costs more in synchronisation than it saves


def small_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def small_gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))


def train_adapters(model, steps=30, lr=3e-2):
    """AdamW on the trainable parameters only, memorising `batch`; the loss of every step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


batch = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(0))
print("a small Llama:", sum(p.numel() for p in small_llama().parameters()), "parameters; a small GPT-2:",
      sum(p.numel() for p in small_gpt2().parameters()))
'''),
        kit.markdown("about_experiment_layer", """
## Experiment 1: your LoRA layer against peft's

A `LoRALinear` (your `init_lora_weights` 8.1, `lora_scaling` 8.2 and `forward` 8.3) wraps a 64 -> 48
linear layer. Fresh, it computes exactly what the layer alone computes (`B = 0`). The cell then gives
your layer and `peft`'s the same random `A` and `B` and compares outputs and the gradients of `A` and
`B`, with plain LoRA and with rsLoRA, and prints how the scale changes with the rank.
"""),
        kit.code("experiment_layer", r'''
from peft import LoraConfig, get_peft_model


def peft_layer(base, r, alpha, **settings):
    holder = torch.nn.Module()
    holder.proj = base
    return get_peft_model(holder, LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], **settings)).base_model.model.proj


def layer():
    torch.manual_seed(1)
    base = torch.nn.Linear(64, 48)
    x = torch.randn(5, 64)
    ours = lora.LoRALinear(copy.deepcopy(base), r=8, alpha=16, seed=0)
    print(f"fresh adapter: output equal to the base layer's: {torch.equal(ours(x), base(x))}")
    for use_rslora in (False, True):
        ours = lora.LoRALinear(copy.deepcopy(base), r=8, alpha=16, use_rslora=use_rslora, seed=0)
        theirs = peft_layer(copy.deepcopy(base), 8, 16, use_rslora=use_rslora)
        with torch.no_grad():
            for part in ("lora_A", "lora_B"):
                weight = torch.randn(getattr(ours, part).weight.shape) / 8
                getattr(ours, part).weight.copy_(weight)
                getattr(theirs, part)["default"].weight.copy_(weight)
        y_ours, y_theirs = ours(x), theirs(x)
        y_ours.square().sum().backward()
        y_theirs.square().sum().backward()
        print(f"rslora={use_rslora!s:5}: scaling {ours.scaling:.3f} (peft {theirs.scaling['default']:.3f}); output gap "
              f"{max_gap(y_ours, y_theirs):.1e}; gradient gaps A {max_gap(ours.lora_A.weight.grad, theirs.lora_A['default'].weight.grad):.1e}, "
              f"B {max_gap(ours.lora_B.weight.grad, theirs.lora_B['default'].weight.grad):.1e}")
    print("scale by rank, alpha = 16:", {r: (round(lora.lora_scaling(16, r), 3), round(lora.lora_scaling(16, r, True), 3))
                                          for r in (1, 4, 16, 64)}, "(alpha/r, alpha/sqrt(r))")


attempt("LoRALinear (8.1-8.3)", layer)
'''),
        kit.markdown("about_experiment_inject", """
## Experiment 2: adapt a Llama and a GPT-2, train, merge, save

Your `inject_lora` (8.5, with your `target_matches` 8.4) wraps the attention projections of a small
Llama (`nn.Linear`) and of a small GPT-2 (`Conv1D`, whose weight is stored transposed). The cell
compares the trainable parameters with `peft`'s `print_trainable_parameters`, trains the Llama's
adapters for 30 steps to memorise one batch, merges them (your `lora_delta_weight`, 8.6) and checks the
merged model computes what the adapted one did, then saves the adapter (your `adapter_state_dict`, 8.7)
and loads it into `peft` and back into a fresh model (your `load_adapter_state_dict`, 8.8).
"""),
        kit.code("experiment_inject", r'''
import tempfile

from peft import PeftModel


def inject():
    for name, make, targets in (("llama", small_llama, ["q_proj", "v_proj"]), ("gpt2", small_gpt2, ["c_attn"])):
        ours = lora.inject_lora(make(), targets, r=4, alpha=8, seed=0)
        trainable, total = lora.count_parameters(ours)
        theirs = get_peft_model(make(), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                   fan_in_fan_out=name == "gpt2"))
        print(f"{name}: yours {trainable:,} trainable of {total:,}; peft:", end=" ")
        theirs.print_trainable_parameters()
    model = lora.inject_lora(small_llama(), ["q_proj", "v_proj"], r=4, alpha=8, seed=0)
    losses = train_adapters(model)
    print(f"training the adapters only: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    with torch.no_grad():
        adapted = model(input_ids=batch).logits
        folder = tempfile.mkdtemp()
        lora.save_adapter(model, folder)
        peft_loaded = PeftModel.from_pretrained(small_llama(), folder)
        print(f"peft's model from your adapter file: logits gap {max_gap(peft_loaded(input_ids=batch).logits, adapted):.1e}")
        back = lora.load_adapter(small_llama(), folder)
        print(f"your load_adapter of the same file: logits gap {max_gap(back(input_ids=batch).logits, adapted):.1e}")
        merged = lora.merge_and_unload(model)
        print(f"merged and unloaded: logits gap {max_gap(merged(input_ids=batch).logits, adapted):.1e}; "
              f"LoRA layers left: {len(lora.lora_layers(merged))}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(losses)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (adapters only)")
        plt.show()


attempt("inject, train, merge, save (8.4-8.8)", inject)
'''),
        kit.markdown("about_experiment_nf4", """
## Experiment 3: NF4, measured

Your `nf4_code` (8.9) is drawn over the histogram of a normally distributed weight divided by its
block's absmax. The cell quantizes that weight with your `quantize_blockwise` (8.10) and
`dequantize_blockwise` (8.11) to NF4 and to an evenly spaced 4-bit grid, prints the mean squared
error of each, checks your packed bytes (8.12, 8.13) against `bitsandbytes`' `quantize_4bit`, and
prints the bits per weight with one float32 scale per block of 64 and with your double quantization
(8.14).
"""),
        kit.code("experiment_nf4", r'''
import bitsandbytes.functional as bnbf


def nf4():
    torch.manual_seed(2)
    weight = torch.randn(256, 256) * 0.02
    code = lora.nf4_code()
    print("your code book equals bitsandbytes':", torch.allclose(code, bnbf.get_4bit_type("nf4", device="cpu"), atol=2.4e-7))
    for name, book in (("NF4", code), ("evenly spaced", torch.linspace(-1, 1, 16))):
        indices, absmax = lora.quantize_blockwise(weight, book, 64)
        back = lora.dequantize_blockwise(indices, absmax, book, 64, weight.shape)
        print(f"{name:>13}: mean squared error {(back - weight).square().mean().item():.3e}")
    indices, absmax = lora.quantize_blockwise(weight, code, 64)
    packed = lora.pack_nibbles(indices)
    theirs, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    print("your packed bytes equal bitsandbytes':", torch.equal(packed, theirs.flatten()),
          "| unpacked back:", torch.equal(lora.unpack_nibbles(packed, weight.numel()), indices))
    absmax_q, absmax2, offset = lora.double_quantize(absmax, lora.dynamic_code())
    scales = lora.dequantize_blockwise(absmax_q, absmax2, lora.dynamic_code(), 256, absmax.shape) + offset
    bits = {"float32 scales": 4 + 32 / 64, "double quantization": 4 + (8 * absmax.numel() + 32 * absmax2.numel() + 32) / weight.numel()}
    print("bits per weight:", {k: round(v, 3) for k, v in bits.items()},
          f"| largest relative error of a scale: {((scales - absmax) / absmax).abs().max().item():.2e}")
    if plt is not None:
        scaled = (weight.view(-1, 64) / absmax[:, None]).flatten()
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(scaled.numpy(), bins=120, color="#9bb", density=True)
        for value in code.tolist():
            ax.axvline(value, color="#c50", linewidth=1)
        ax.set_xlabel("weight / absmax of its block (red lines: your NF4 code)")
        plt.show()


attempt("NF4 (8.9-8.14)", nf4)
'''),
        kit.markdown("about_experiment_qlora", """
## Experiment 4: QLoRA on a small model

`quantize_model` replaces every projection of a small Llama by an `NF4Linear` (your quantization,
and your `forward`, 8.15), then your `inject_lora` puts adapters on the same layers. The cell prints
the largest error of a dequantized weight, how far the 4-bit model's logits move from the original's,
and trains the adapters for 30 steps on the batch of Experiment 2.
"""),
        kit.code("experiment_qlora", r'''
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qlora():
    original = small_llama()
    model = lora.quantize_model(copy.deepcopy(original), ALL)
    layer = model.model.layers[0].self_attn.q_proj
    print(f"q_proj of layer 0: {type(layer).__name__}, largest weight error "
          f"{max_gap(layer.dequantized_weight(), original.model.layers[0].self_attn.q_proj.weight):.2e}")
    with torch.no_grad():
        print(f"logits gap, 4-bit against 32-bit: {max_gap(model(input_ids=batch).logits, original(input_ids=batch).logits):.3f}")
    lora.inject_lora(model, ALL, r=4, alpha=8, seed=0)
    trainable, total = lora.count_parameters(model)
    losses = train_adapters(model)
    print(f"QLoRA: {trainable:,} trainable of {total:,}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")


attempt("QLoRA (8.15)", qlora)
'''),
        kit.markdown("about_experiment_memory", """
## Experiment 5: what each method costs

Your `training_memory` (8.16) for the course's two models and for a 7B Llama (32 layers of width 4096,
MLP 11008, vocabulary 32000) with adapters of rank 16 on every projection, in bfloat16 (2 bytes per
value) as such models are trained; then your `activation_memory` (8.17) for one sequence of 512 and of
4096 tokens in float32, with the memory-efficient attention kernel and with the softmax materialised.
"""),
        kit.code("experiment_memory", r'''
from course_lib.language_model import CourseLMForCausalLM, course_lm_config


def shapes_of(model):
    targets = [m.weight.shape for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ALL]
    return [tuple(s) for s in targets], sum(p.numel() for p in model.parameters()) - sum(o * i for o, i in targets)


LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, head_dim=128, vocab_size=32000)


def llama_7b():
    d, ff, layers, vocab = 4096, 11008, 32, 32000
    shapes = [(d, d)] * 4 * layers + [(ff, d), (ff, d), (d, ff)] * layers
    return shapes, 2 * vocab * d + (2 * layers + 1) * d


def memory():
    with torch.device("meta"):
        course_cpu, course_gpu = (CourseLMForCausalLM(course_lm_config(size)) for size in ("cpu", "gpu"))
    for name, (shapes, other) in (("course cpu", shapes_of(course_cpu)), ("course gpu", shapes_of(course_gpu)),
                                  ("Llama 7B", llama_7b())):
        row = {m: lora.training_memory(shapes, other, m, r=16, param_bytes=2)["total"] for m in ("full", "lora", "qlora")}
        print(f"{name:>10}: " + ", ".join(f"{m} {b / 2**20:,.1f} MiB" for m, b in row.items()))


def activations():
    for name, config in (("course cpu", course_lm_config("cpu").architecture()),
                         ("course gpu", course_lm_config("gpu").architecture()), ("Llama 7B", LLAMA_7B)):
        for seq_len in (512, 4096):
            row = {(m, attn): lora.activation_memory(config, 1, seq_len, m, r=16, attn_implementation=attn)
                   for m in ("full", "lora") for attn in ("sdpa", "eager")}
            print(f"{name:>10}, {seq_len:>4} tokens: " + ", ".join(f"{m} {attn} {b / 2**20:,.0f} MiB"
                                                              for (m, attn), b in row.items()))


attempt("training_memory (8.16)", memory)
attempt("activation_memory (8.17)", activations)
'''),
        kit.markdown("question_init", f"""
## Written answer 1 ({kit.points(INIT_POINTS)}, graded by hand)

Use Experiments 1 and 2. (a) LoRA starts with `B = 0` and a random `A`. Why not both zero, and why
not both random? (b) With `alpha` fixed, how does the scale of the LoRA path change with the rank under
`alpha / r` and under rsLoRA's `alpha / sqrt(r)`, and what does that mean for a large rank? (c) Why can
merging make inference as fast as the original model, and why can a 4-bit base not take the merged
change exactly?
"""),
        kit.written_answer("answer_init", """
(a) With B = 0 the product B @ A is zero, so the adapted model starts exactly as the pretrained one
(no random damage to what it knows). A must not be zero too: the gradient of B is (scaling) * dL/dy^T
times A x, and the gradient of A is B^T times ..., so with both zero both gradients are zero and
nothing ever trains (a saddle). Both random would add a random change of rank r to every adapted
weight before any training: the model's outputs change at step 0.
(b) alpha / r shrinks as 1/r: doubling the rank halves the scale, so with more rank the update of each
direction gets smaller and a large rank learns more slowly (the effective learning rate falls); tuning
alpha with r compensates. rsLoRA's alpha / sqrt(r) keeps the size of the update's output stable as r
grows (Kalajdzievski, 2023), so larger ranks actually help.
(c) The change is a matrix of the same shape as W: W + scaling * B @ A is one linear layer again, so
the merged model has exactly the original's architecture and cost (no extra matmuls). A 4-bit weight
can hold only the 16 code values times a block scale: W + delta is generally not representable, so
merging needs a dequantize, add, requantize, which changes the weight by the quantization error again.
""", points=INIT_POINTS),
        kit.markdown("question_nf4", f"""
## Written answer 2 ({kit.points(NF4_POINTS)}, graded by hand)

Use Experiment 3. (a) Why does NF4 have a lower error than an evenly spaced 4-bit grid on this weight,
and why does NF4 take 8 positive and 7 negative values? (b) Why quantize in blocks of 64 rather than
with one absmax for the whole matrix, and how many bits per weight do double quantization save?
"""),
        kit.written_answer("answer_nf4", """
(a) The weights divided by their block's absmax are close to normally distributed, dense near 0 and
sparse near +-1. NF4 places its 16 values at quantiles of the normal distribution, so each code value
covers about the same share of the weights: fine steps where most weights are, coarse ones in the
tails. An evenly spaced grid spends as many values on the rare large weights as on the common small
ones, so most weights get a coarse step and the error is larger. An exact 0 is needed (zero weights
and padding stay zero), which 16 symmetric quantiles cannot give: NF4 takes 8 positive quantiles, 7
negative ones and 0 (an asymmetric code).
(b) One outlier sets the absmax of its whole block: every other value of that block is divided by
it and lands on the few codes near 0. With one absmax for the whole matrix a single outlier crushes
the whole matrix; with blocks of 64 the damage stays in one block. A float32 scale per 64 weights
costs 32/64 = 0.5 bits per weight; double quantization stores it in 8 bits plus a float32 per 256
scales: 8/64 + 32/(64*256) = 0.127 bits, saving about 0.373 bits per weight (the experiment prints
about 4.5 and 4.13 bits per weight).
""", points=NF4_POINTS),
    ]
