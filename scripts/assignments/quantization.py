"""Chapter 11 assignment (quantization): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``quantization.py`` on random tensors and small layers (no
course model is trained or loaded, so the notebook runs in seconds): the round-trip error of their
absmax and zero-point quantization per tensor, per channel and per group at 2 to 8 bits on a weight
with a few large columns; the error of their LLM.int8 product against all-int8 and per-tensor int8 on
activations with a few large features; their GGUF blocks against the ``gguf`` package (bytes, sizes
and errors) beside their weight-only ``QuantizedLinear``; and the output error of their GPTQ and AWQ
against round to nearest on one layer with correlated inputs and a few large channels, calibrated on
data like the deployment inputs, on too little of it and on data from elsewhere. Every call of an
exercise goes through ``attempt``, so an unfinished or broken exercise is reported and the rest still
runs.
"""

INT8_POINTS = 3  # written answers, graded by hand
GPTQ_POINTS = 3


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 11."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 11: quantization",
            what="""
storing a model's weights (and multiplying its activations) as small integers and a few scales.
Symmetric (absmax) and zero-point quantization per tensor, channel or group and the way back;
LLM.int8's vector-wise int8 with its outlier features kept in floating point; a weight-only quantized
linear layer; the GGUF blocks llama.cpp stores weights in (Q8_0, Q4_0 and the K-quant Q4_K), byte for
byte; and the two calibrated methods, GPTQ (the layer's Hessian from calibration inputs and the
column-by-column error compensation) and AWQ (the search for activation-aware channel scales).
""",
            contract="""
and the module docstring the conventions all of them share: `nn.Linear` weight shapes, scales and zero
points of shape `(rows, n_groups)`, rounding halves to even unless a format says otherwise, float32
inside, GGUF bytes little-endian and in llama.cpp's order
""",
            written=(INT8_POINTS, GPTQ_POINTS),
            more=f"""
Everything else in `{module}.py` is already written and calls your functions: the rest of
`QuantizedLinear` (`from_linear`, `load_buffers`, `weight_bytes`) and `quantize_linear_layers`,
`quantize_gguf_tensor` and `write_gguf` (a course model as a `.gguf` file that llama.cpp runs, quantized
by your 11.7, 11.9 and 11.11), `round_to_nearest` (your 11.2 and 11.3), and `quantize_model` with
`calibration_data` (a course model quantized block by block with RTN, GPTQ or AWQ).
""",
            experiments="""
Run the experiments: they measure *your* quantizers on random weights and activations with a few
large values, compare your GGUF bytes with the `gguf` package's, and quantize one layer by round to
nearest, GPTQ and AWQ. An exercise you have not done yet is reported, not fatal, so you can run them
at any stage. Then answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import math

import numpy as np
import torch

torch.set_num_threads(1)  # small tensors: a second thread costs more in synchronisation than it saves


def generator(seed):
    return torch.Generator().manual_seed(seed)


def relative_error(approx, exact):
    """||approx - exact|| / ||exact|| (Frobenius norms), a Python float."""
    return (torch.linalg.norm(approx.double() - exact.double()) / torch.linalg.norm(exact.double())).item()


def row(label, values, width=9, digits=3):
    """One line of a table: the label, then each value (a dash for a step that did not run)."""
    cells = "".join(f"{'-' if v is None else format(v, f'.{digits}f'):>{width}}" for v in values)
    print(f"{label:<34}{cells}")
'''),
        kit.markdown("about_experiment_granularity", """
## Experiment 1: absmax and zero point, per tensor, channel and group

A 64 x 256 weight of small normal values, except four input columns 25 times larger (as a few input
features of a trained layer carry large activations, their weight columns often stand out). The cell
quantizes it with your `absmax_quantize` (11.1) and `zero_point_quantize` (11.2) at 2, 3, 4 and 8 bits,
with one scale per tensor, per output channel (row) and per group of 32 columns, dequantizes with your
`dequantize` (11.3), and prints the relative error of the *ordinary* weights (the four large columns
left out), then the share of ordinary weights that 4 bits round to exactly 0.
"""),
        kit.code("experiment_granularity", r'''
BITS = (2, 3, 4, 8)
g = generator(0)
weight = torch.randn(64, 256, generator=g) * 0.02
large_columns = torch.randperm(256, generator=g)[:4]
weight[:, large_columns] *= 25
ordinary = torch.ones(256, dtype=torch.bool)
ordinary[large_columns] = False


def round_trip(method, granularity, bits):
    if method == "absmax":
        q, scale = quantization.absmax_quantize(weight, bits, granularity, 32)
        return q, quantization.dequantize(q, scale)
    q, scale, zero_point = quantization.zero_point_quantize(weight, bits, granularity, 32)
    return q, quantization.dequantize(q, scale, zero_point)


def granularity_table():
    print(f"relative error of the ordinary weights; large columns {sorted(large_columns.tolist())}")
    print(f"{'':<34}" + "".join(f"{f'{b} bits':>9}" for b in BITS))
    errors = {}
    for method in ("absmax", "zero point"):
        for granularity in ("tensor", "channel", "group"):
            errors[method, granularity] = [relative_error(round_trip(method, granularity, b)[1][:, ordinary],
                                                          weight[:, ordinary]) for b in BITS]
            row(f"{method}, per {granularity}", errors[method, granularity])
    for granularity in ("tensor", "channel", "group"):
        q, _ = round_trip("absmax", granularity, 4)
        print(f"absmax, 4 bits, per {granularity:<8}: {(q[:, ordinary] == 0).float().mean().item():.1%} "
              "of the ordinary weights rounded to 0")
    return errors


errors = attempt("absmax_quantize, zero_point_quantize, dequantize (11.1-11.3)", granularity_table)
if errors is not None and plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for (method, granularity), values in errors.items():
        ax.plot(BITS, values, marker="o", linestyle="-" if method == "absmax" else "--", label=f"{method}, {granularity}")
    ax.set_yscale("log")
    ax.set_xlabel("bits")
    ax.set_ylabel("relative error (ordinary weights)")
    ax.legend(fontsize=7)
    plt.show()
'''),
        kit.markdown("about_experiment_int8", """
## Experiment 2: LLM.int8 and outlier features

Activations of 64 tokens with 256 features, normal except three features multiplied by 1 (no
outliers), 10, 30 and 60, as the large features of a transformer's hidden states. The cell multiplies
them by a 128 x 256 weight in three ways and prints the relative error of each product: the
activations quantized per tensor to int8 (your 11.1 and 11.3); all-int8 with one scale per token and
per output row (your `int8_linear`, 11.5, with `threshold=0`, over your `int8_vectorwise_quant`,
11.4); and LLM.int8 (`threshold=6`): the features with a value of 6 or more taken out and multiplied
in floating point. It also prints which features your 11.4 finds and the share of the product that
runs in floating point.
"""),
        kit.code("experiment_int8", r'''
g = generator(1)
activations = torch.randn(64, 256, generator=g)
outlier_features = torch.randperm(256, generator=g)[:3]
layer_weight = torch.randn(128, 256, generator=g) * 0.05


FACTORS = (1, 10, 30, 60)


def with_large_features(factor):
    x = activations.clone()
    x[:, outlier_features] *= factor
    return x


def per_tensor_int8():
    return [quantization.dequantize(*quantization.absmax_quantize(with_large_features(f), 8, "tensor")) @ layer_weight.T
            for f in FACTORS]


def int8_products(threshold):
    return [quantization.int8_linear(with_large_features(f), layer_weight, None, threshold) for f in FACTORS]


products = {"tensor": attempt("per-tensor int8 (11.1, 11.3)", per_tensor_int8),
            "int8": attempt("int8_linear, threshold 0 (11.4, 11.5)", int8_products, 0.0),
            "LLM.int8": attempt("int8_linear, threshold 6 (11.4, 11.5)", int8_products, 6.0)}
found = attempt("int8_vectorwise_quant (11.4)",
                lambda: [quantization.int8_vectorwise_quant(with_large_features(f), 6.0)[2].tolist() for f in FACTORS])
print(f"{'large features x':<34}" + "".join(f"{name:>9}" for name in products) + "   outlier features found")
for i, factor in enumerate(FACTORS):
    exact = with_large_features(factor) @ layer_weight.T
    errors = [None if p is None else relative_error(p[i], exact) for p in products.values()]
    cells = "".join(f"{'-' if e is None else format(e, '.4f'):>9}" for e in errors)
    print(f"{factor:>16}{'':<18}{cells}   " + ("-" if found is None else
          f"{found[i]} ({len(found[i]) / activations.shape[1]:.1%} of the features in floating point)"))
print("the large features:", sorted(outlier_features.tolist()))
'''),
        kit.markdown("about_experiment_gguf", """
## Experiment 3: GGUF blocks against the gguf package, and a weight-only layer

A 128 x 512 linear layer with heavy-tailed weights (Student's t, 4 degrees of freedom). The cell
stores its weight in your Q8_0, Q4_0 and Q4_K blocks (11.7, 11.9, 11.11) and checks them against
`gguf.quants`, the Python package of llama.cpp: your bytes against its quantizer's (it has none for
Q4_K) and your dequantizers (11.8, 11.10, 11.12) against its dequantizer on your bytes. Beside them,
the same layer as your `QuantizedLinear` (11.6; quantized by your 11.1 or 11.2): 8 bits per channel,
and 4 bits in groups of 32 and 128. For each format: bytes, bits per weight (scales included), the
relative error of the weight and of the layer's output on 32 inputs.
"""),
        kit.code("experiment_gguf", r'''
import gguf
from gguf import GGMLQuantizationType

g = generator(2)
torch.manual_seed(2)
linear = torch.nn.Linear(512, 128)
with torch.no_grad():
    linear.weight.copy_(torch.distributions.StudentT(4.0).sample((128, 512)) * 0.02)
W = linear.weight.detach()
inputs = torch.randn(32, 512, generator=g)
with torch.no_grad():
    exact_output = linear(inputs)

BLOCKS = {"Q8_0": ("quantize_q8_0", "dequantize_q8_0", "11.7, 11.8"),
          "Q4_0": ("quantize_q4_0", "dequantize_q4_0", "11.9, 11.10"),
          "Q4_K": ("quantize_q4_k", "dequantize_q4_k", "11.11, 11.12")}


def gguf_block(name):
    quantize, dequantize, ids = BLOCKS[name]
    data = getattr(quantization, quantize)(W)
    qtype = getattr(GGMLQuantizationType, name)
    try:
        same = "equal" if torch.equal(data, torch.from_numpy(gguf.quants.quantize(W.numpy(), qtype))) else "DIFFERENT"
    except NotImplementedError:
        same = "(gguf has no quantizer)"
    back = getattr(quantization, dequantize)(data)
    theirs = torch.from_numpy(gguf.quants.dequantize(data.numpy(), qtype).copy()).reshape(back.shape)
    output = inputs @ back.T + linear.bias.detach()
    print(f"{name + ' (' + ids + ')':<26}{data.numel():>8,}{8 * data.numel() / W.numel():>8.3f}"
          f"{relative_error(back, W):>9.4f}{relative_error(output, exact_output):>9.4f}   bytes vs gguf: {same}; "
          f"values vs gguf's: {'equal' if torch.equal(back, theirs) else 'gap %.1e' % max_gap(back, theirs)}")


def quantized_linear(bits, group_size, symmetric):
    layer = quantization.QuantizedLinear.from_linear(linear, bits, group_size, symmetric)
    with torch.no_grad():
        output = layer(inputs)
        weight = (layer(torch.eye(512)) - linear.bias.detach()).T  # the weight the layer multiplies by
    label = f"{bits}-bit {'per channel' if group_size is None else f'groups of {group_size}'}, {'sym' if symmetric else 'asym'}"
    print(f"{label:<26}{layer.weight_bytes():>8,}{8 * layer.weight_bytes() / W.numel():>8.3f}{relative_error(weight, W):>9.4f}"
          f"{relative_error(output, exact_output):>9.4f}   QuantizedLinear (11.6)")


print(f"{'format':<26}{'bytes':>8}{'bits/w':>8}{'weight':>9}{'output':>9}")
print(f"{'float32':<26}{W.numel() * 4:>8,}{32:>8.3f}{0:>9.4f}{0:>9.4f}")
print(f"{'float16':<26}{W.numel() * 2:>8,}{16:>8.3f}{relative_error(W.half().float(), W):>9.4f}"
      f"{relative_error(inputs @ W.half().float().T + linear.bias.detach(), exact_output):>9.4f}")
for name in BLOCKS:
    attempt(f"{name} blocks ({BLOCKS[name][2]})", gguf_block, name)
for bits, group_size, symmetric in ((8, None, True), (4, 32, False), (4, 128, True)):
    attempt(f"QuantizedLinear, {bits} bits (11.6 and 11.1/11.2)", quantized_linear, bits, group_size, symmetric)
'''),
        kit.markdown("about_experiment_gptq", """
## Experiment 4: round to nearest, GPTQ and AWQ on one layer

A 64 x 128 layer whose inputs are correlated (mixed by a fixed random matrix, as a layer's inputs are)
and have four channels ten times larger than the rest. Deployment is 2048 fresh inputs of that kind.
The cell quantizes the weight to 3 and 4 bits in groups of 32: by round to nearest (`round_to_nearest`,
your 11.2 and 11.3), by your GPTQ (`gptq_hessian` 11.13 and `gptq_quantize` 11.14) and by your AWQ
(`awq_search_scales` 11.15, then round to nearest of the scaled weight, divided back), the last two
calibrated on four sets: 2048 inputs like the deployment's, only 64 of them, 2048 inputs with the
same correlations but no large channels, and 2048 uncorrelated ones. It prints the relative error of
the layer's output on the deployment inputs and, in brackets, on the method's own calibration inputs,
and draws the deployment errors.
"""),
        kit.code("experiment_gptq", r'''
N_IN, N_OUT, GROUP = 128, 64, 32
MIX = torch.eye(N_IN) + 2.0 * torch.randn(N_IN, N_IN, generator=generator(40)) / math.sqrt(N_IN)
LARGE = torch.randperm(N_IN, generator=generator(41))[:4]


def layer_inputs(seed, tokens, correlated=True, large=True):
    x = torch.randn(tokens, N_IN, generator=generator(seed))
    if correlated:
        x = x @ MIX
    if large:
        x[:, LARGE] *= 10.0
    return x


w = torch.randn(N_OUT, N_IN, generator=generator(42)) * 0.05
deployment = layer_inputs(43, 2048)
calibrations = {"2048 inputs like deployment": layer_inputs(44, 2048),
                "64 inputs like deployment": layer_inputs(45, 64),
                "2048 without the large channels": layer_inputs(46, 2048, large=False),
                "2048 uncorrelated inputs": layer_inputs(47, 2048, correlated=False, large=False)}


def output_error(quantized, x):
    return relative_error(x @ quantized.T, x @ w.T)


def rtn():
    return {bits: quantization.round_to_nearest(w, bits, GROUP) for bits in (3, 4)}


def gptq():
    quantized = {}
    for name, x in calibrations.items():
        hessian = quantization.gptq_hessian(list(x.split(128)))  # one sample per 128 inputs
        for bits in (3, 4):
            quantized[name, bits] = quantization.gptq_quantize(w, hessian, bits=bits, group_size=GROUP)["weight"]
    return quantized


def awq():
    quantized = {}
    for name, x in calibrations.items():
        for bits in (3, 4):
            scales = quantization.awq_search_scales(w, x, bits=bits, group_size=GROUP)["scales"]
            quantized[name, bits] = quantization.round_to_nearest(w * scales, bits, GROUP) / scales
    return quantized


methods = {"RTN": attempt("round_to_nearest (11.2, 11.3)", rtn),
           "GPTQ": attempt("GPTQ (11.13, 11.14)", gptq),
           "AWQ": attempt("AWQ (11.15, with 11.2 and 11.3)", awq)}
deployment_errors = {}
print(f"{'relative output error':<42}{'3 bits':>16}{'4 bits':>16}")
for method, quantized in methods.items():
    for name in ([None] if method == "RTN" else calibrations):
        label = method if name is None else f"{method}, {name}"
        cells = []
        for bits in (3, 4):
            q = None if quantized is None else quantized[bits if name is None else (name, bits)]
            if q is None:
                cells.append("-")
                continue
            deployment_errors[label, bits] = output_error(q, deployment)
            own = "" if name is None else f" ({output_error(q, calibrations[name]):.3f})"
            cells.append(f"{deployment_errors[label, bits]:.3f}{own}")
        print(f"{label:<42}" + "".join(f"{c:>16}" for c in cells))

if deployment_errors and plt is not None:
    labels = list(dict.fromkeys(label for label, _ in deployment_errors))  # in the table's order
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1))
    for offset, bits in ((-0.2, 3), (0.2, 4)):
        ax.barh([i + offset for i in range(len(labels))], [deployment_errors.get((l, bits), 0) for l in labels],
                height=0.4, label=f"{bits} bits")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("relative output error on the deployment inputs")
    ax.legend()
    plt.show()
'''),
        kit.markdown("question_int8", f"""
## Written answer 1 ({kit.points(INT8_POINTS)}, graded by hand)

Use Experiments 1 and 2. (a) Why does one scale per tensor fail on the weight of Experiment 1, and why
does one scale per output channel hardly help there, while groups of 32 do? (b) In Experiment 2, why
do per-tensor int8 and all-int8 activations (one scale per token) lose accuracy as the large features
grow, and what does LLM.int8 do about it? What does it pay for that (memory, speed), and why does it
depend on the large features sitting in a few fixed columns? (c) Why does zero-point quantization
beat absmax at the same bits in Experiment 1, and what does it cost to store?
"""),
        kit.written_answer("answer_int8", """
(a) A scale is the absmax of what it covers divided by qmax. One scale per tensor is set by the
large columns (25 times the rest), so the step is larger than almost every ordinary weight: at 4
bits nearly all of them round to 0 (relative error about 1, the printed share of zeros near 100 %).
The large values sit in input *columns*, and every output row (channel) crosses every column: each
row's absmax is still set by its large entries, so per-channel scales are just as coarse. A group of
32 consecutive columns holds a large column only in a few of its groups; the other groups get scales
of their own size, so most weights keep their resolution (error falls from about 1 to 0.3-0.5 at 4
bits, and 8 bits becomes far better).
(b) An activation's row (token) holds ordinary features of size about 1 and a few features of size
10-60. With one scale per tensor or per token, the step is absmax / 127, set by the large features
(with features 60 times larger, a step of about 1 to 2, the size of an ordinary feature), so the
ordinary features, which carry most of the product, are rounded to a few levels or to 0: the error
grows with the size of the large features (per tensor worst: one token's largest value sets the step
of every token). LLM.int8 finds the columns with a value
at or above the threshold (6), takes them out of the int8 product and multiplies them (about 1 % of
the features) in floating point with the dequantized weight columns, so the per-token scale of the
rest is set by ordinary values; the error stays at the level of no outliers. It pays: the weight is
still 8 bits (half of float16, no more), the activations must be scanned for outliers at every call,
the outlier columns gathered and a second (floating-point) matmul run and added, which makes it
slower than a plain float16 matmul for small batches. It works because the large features are few
and in the same columns for all tokens (the paper: systematic outlier dimensions); were they spread
over many columns, the float part would grow to most of the product.
(c) Zero point maps [min, max] of a group onto all 2^b levels (0 .. 2^b - 1); absmax maps [-absmax,
absmax] onto a symmetric grid that gives up one level and wastes the part of the range on the side
where the group's values do not reach. At 2 bits absmax has 3 levels (-1, 0, 1), zero point 4. The
cost: a zero point per group (one more byte per group, or 4 bits as AutoAWQ packs it) and a
subtraction when dequantizing.
""", points=INT8_POINTS),
        kit.markdown("question_gptq", f"""
## Written answer 2 ({kit.points(GPTQ_POINTS)}, graded by hand)

Use Experiment 4. (a) GPTQ minimises the error of the layer's *output* on calibration inputs. What
does it do after quantizing a column, why does it need calibration data for that, and why is it no
better than round to nearest when calibrated on uncorrelated inputs? (b) What goes wrong when GPTQ is
calibrated on only 64 inputs, or on inputs without the large channels, compared with its error on its
own calibration inputs? What does that mean for choosing calibration data for a chat model deployed
on code or another language? (c) Why does AWQ suffer much less from the same calibration sets?
"""),
        kit.written_answer("answer_gptq", """
(a) After rounding column i, GPTQ changes the columns not yet quantized so that the layer's output on
the calibration inputs moves as little as possible: w_j -= (w_i - q_i) / U_ii * U_ij (the optimal
brain surgeon step for the quadratic loss ||X W^T - X Q^T||^2). The loss's Hessian H = 2 X^T X is what
says how an error in one input's weight can be cancelled by the weights of inputs correlated with it;
without inputs there is no H and nothing to compensate with. Uncorrelated inputs give H close to a
multiple of the identity: its inverse is (nearly) diagonal, U_ij is about 0 for j != i, no later
column is changed and GPTQ is round to nearest (the printed errors are about RTN's).
(b) With 64 inputs for 128 features H has rank 64 (singular, only the damping keeps it invertible):
GPTQ fits the weight to those 64 inputs (its error on them is far below RTN's) by pushing the rounding
error into the directions they do not span, and on fresh inputs the error is above RTN's: overfitting.
Without the large channels the calibration H does not know that four inputs are ten times larger at
deployment, so it moves error onto their weight columns, which deployment multiplies by 10: again
worse than RTN on deployment while good on its own inputs. GPTQ is only as good as the match between
calibration and deployment inputs; a chat model used on code or another language should be calibrated
on enough tokens (many more than the layer's width) of that kind of text, in the chat template it
will see, or on a broad mixture.
(c) AWQ uses the calibration data only for one number per input channel (the mean |x|) and picks one
exponent from a grid of 20 by the output loss; the weight itself is rounded to nearest. It has far
fewer degrees of freedom to fit the calibration set, so 64 inputs estimate the channel means well
enough and it barely overfits; calibrated without the large channels it sees no reason to protect
them and just falls back to about RTN (scales near 1), never much worse than it.
""", points=GPTQ_POINTS),
    ]
