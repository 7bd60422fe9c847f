"""Chapter 3 assignment (transformer): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``transformer.py``: their sinusoidal positions drawn and
their embeddings' scales; their RoPE checked for relative-position scores, with its frequencies
measured; their LayerNorm and RMSNorm against torch's; their encoder and decoder layers (and
feed-forward network) against ``nn.TransformerEncoderLayer``/``nn.TransformerDecoderLayer`` with
copied weights, and the gradients of deep pre-norm and post-norm stacks; a small encoder-decoder
Transformer built from their layers trained on reversal, with held-out accuracy; their decoder-only
blocks stacked into Llama and GPT-2 and compared with Hugging Face's, with a KV cache; their
parameter count against the models' and the published sizes, and their FLOP count against context
length. Every call of an exercise goes through ``attempt``, so an unfinished or broken exercise is
reported and the rest still runs. Chapter 2's ``multi_head_attention`` comes from the student's
``course_lib`` when it agrees with PyTorch's, and otherwise (the grading kernel: stubs) from
``F.multi_head_attention_forward``, so that the experiments show Chapter 3's code either way. The
whole notebook runs in about half a minute on one CPU thread (most of it the training run).
"""

ROPE_POINTS = 3  # written answers, graded by hand
NORM_POINTS = 3
FLOPS_POINTS = 2


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 3."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 3: the Transformer, encoder-decoder and decoder-only",
            what="""
where a token is (sinusoidal positions, embeddings, rotary embeddings), the two normalisations,
the feed-forward network, the encoder and decoder layers of the original Transformer (pre-norm
and post-norm), the decoder-only block of GPT-2 and Llama, and what a model costs (parameters
and FLOPs).
""",
            contract="""
and the module docstring the conventions all of them share: shapes, how weights are named,
masks, dtypes
""",
            written=(ROPE_POINTS, NORM_POINTS, FLOPS_POINTS),
            more=f"""
The rest of `{module}.py` is written and calls your functions: the layers `LayerNorm`, `RMSNorm`,
`FeedForward`, `EncoderLayer` and `DecoderLayer` (which hold weights and copy PyTorch's layers with
`from_torch`), the encoder-decoder `Seq2SeqTransformer` and its training loop `train_seq2seq`.

The encoder and decoder layers attend with Chapter 2's `multi_head_attention`, taken from
`course_lib.attention`. If yours there is unfinished or disagrees with PyTorch's, the setup cell
puts PyTorch's attention in its place for these experiments, so that they show your Chapter 3 code
(grading does the same: it uses the reference solution of every other chapter).
""",
            experiments="""
Run the experiments: they compare *your* functions with PyTorch's and Hugging Face's, train a
small Transformer built from your layers, and count what models cost. An exercise you have not
done yet is reported, not fatal, so you can run them at any stage. Then answer the three questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import math

import torch
import torch.nn.functional as F

from course_lib import attention as chapter2
from course_lib.tasks import SymbolTask


def torch_multi_head_attention(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False,
                               dropout_p=0.0, return_weights=False, *, n_heads):
    """Chapter 2's multi_head_attention (2.3) computed by PyTorch's F.multi_head_attention_forward:
    the same contract, for these experiments (no dropout, no attention weights)."""
    context = x if context is None else context
    (batch, q_len, d_model), kv_len = x.shape, context.shape[1]
    blocked = torch.finfo(x.dtype).min  # not -inf: a row that may see no key stays finite
    mask = torch.zeros(batch, n_heads, q_len, kv_len, dtype=x.dtype, device=x.device)
    if attn_mask is not None:
        mask = mask.masked_fill(~attn_mask, blocked) if attn_mask.dtype == torch.bool else mask + attn_mask
    if attention_mask is not None:
        mask = mask.masked_fill(~attention_mask.bool()[:, None, None, :], blocked)
    if is_causal:
        mask = mask.masked_fill(~torch.ones(q_len, kv_len, dtype=torch.bool, device=x.device).tril(), blocked)
    biases = [weights.get(f"{p}_proj.bias") for p in "qkv"]
    in_bias = None if all(b is None for b in biases) else torch.cat(
        [x.new_zeros(weights[f"{p}_proj.weight"].shape[0]) if b is None else b for p, b in zip("qkv", biases)])
    seq_first = context.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), seq_first, seq_first, d_model, n_heads, None, in_bias, None, None, False, 0.0,
        weights["o_proj.weight"], weights.get("o_proj.bias"), training=False, need_weights=False,
        attn_mask=mask.reshape(batch * n_heads, q_len, kv_len), use_separate_proj_weight=True,
        q_proj_weight=weights["q_proj.weight"], k_proj_weight=weights["k_proj.weight"],
        v_proj_weight=weights["v_proj.weight"])
    return out.transpose(0, 1)


def chapter2_gap():
    """How far course_lib's multi_head_attention is from PyTorch's: causal self-attention with padding, cross-attention."""
    gen = torch.Generator().manual_seed(1)
    weights = {f"{p}_proj.{kind}": torch.randn(shape, generator=gen) / 4
               for p in "qkvo" for kind, shape in (("weight", (16, 16)), ("bias", (16,)))}
    x, context = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    padding, context_padding = torch.tensor([[1] * 5, [1] * 3 + [0] * 2]), torch.tensor([[1] * 3, [1, 1, 0]])
    gaps = []
    with torch.no_grad():
        for args, kwargs in (((x,), dict(attention_mask=padding, is_causal=True)),
                             ((x, context), dict(attention_mask=context_padding))):
            gaps.append(max_gap(chapter2.multi_head_attention(weights, *args, **kwargs, n_heads=4),
                                torch_multi_head_attention(weights, *args, **kwargs, n_heads=4)))
    return max(gaps)


try:
    gap = chapter2_gap()
    chapter2_problem = None if gap < 1e-4 else f"differs from PyTorch's by {gap:.1e}"
except NotImplementedError as err:
    chapter2_problem = f"is unfinished in your course_lib ({err})"
except Exception as err:
    chapter2_problem = f"fails in your course_lib ({type(err).__name__}: {err})"
if chapter2_problem is None:
    print("Chapter 2's multi_head_attention (course_lib) agrees with PyTorch's: your layers use it.")
else:
    chapter2.multi_head_attention = torch_multi_head_attention
    print(f"Chapter 2's multi_head_attention {chapter2_problem}: your layers use PyTorch's attention instead.")
'''),
        kit.markdown("about_experiment_positions", """
## Experiment 1: sinusoidal positions and the scale of embeddings

The cell draws your `sinusoidal_positions` (3.1) for 100 positions of 64 features: each pair of
columns is a sine and a cosine of one frequency, the frequencies falling from one turn every 6.3
positions (columns 0 and 1) to one every 47,000 (the last pair). Because
`pe[p] . pe[p + k] = sum_i cos(k w_i)`, the dot product of two encodings depends only on their
offset `k`, not on where they are: the cell checks this over every `p`.

Then it uses your `embed` (3.2) the way `Seq2SeqTransformer` does: a token table initialised with
rows of norm about 1, plus the sinusoidal table, whose rows have norm `sqrt(d_model / 2)` (5.7 here).
Compare the sizes of the two parts without the scale and with the paper's `sqrt(d_model)`. Last, a
left-padded row with its `position_ids` must give the same embeddings as the same tokens unpadded.
"""),
        kit.code("experiment_positions", r'''
D_MODEL, N_POSITIONS = 64, 100


def show_positions():
    pe = transformer.sinusoidal_positions(N_POSITIONS, D_MODEL)
    print(f"sinusoidal_positions({N_POSITIONS}, {D_MODEL}): shape {tuple(pe.shape)}, {pe.dtype}, "
          f"row 0 starts {[round(v, 3) for v in pe[0, :4].tolist()]}")
    for k in (1, 4, 16):
        dots = (pe[:-k] * pe[k:]).sum(dim=-1)   # pe[p] . pe[p + k] for every p
        print(f"pe[p] . pe[p + {k:>2}] over all p: {dots.mean():6.3f} (spread {dots.max() - dots.min():.1e})")
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
        image = left.imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
        left.set(xlabel="position p", ylabel="feature", title="your sinusoidal_positions(100, 64), transposed")
        fig.colorbar(image, ax=left)
        right.plot(pe @ pe[50], marker=".")
        right.axvline(50, color="gray", linestyle=":")
        right.set(xlabel="position p", ylabel="pe[p] . pe[50]", title="similarity to position 50")
        fig.tight_layout()
        plt.show()
    return pe


def embedding_scales():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(13, D_MODEL, generator=gen) / math.sqrt(D_MODEL)   # rows of norm about 1
    positions = transformer.sinusoidal_positions(16, D_MODEL)
    ids = torch.randint(3, 13, (4, 10), generator=gen)
    for scale in (1.0, math.sqrt(D_MODEL)):
        tokens = transformer.embed({"embed_tokens.weight": table}, ids, scale=scale)
        both = transformer.embed({"embed_tokens.weight": table, "embed_positions.weight": positions}, ids, scale=scale)
        print(f"scale {scale:3.0f}: token part of norm {tokens.norm(dim=-1).mean():4.1f}, "
              f"position part of norm {(both - tokens).norm(dim=-1).mean():4.1f}")
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])                     # two padding tokens on the left
    padded = torch.tensor([[0, 0, 5, 6, 7, 8, 9]])
    position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)            # the first real token is position 0
    weights = {"embed_tokens.weight": table, "embed_positions.weight": positions}
    left = transformer.embed(weights, padded, position_ids)[0, 2:]
    plain = transformer.embed(weights, padded[:, 2:])[0]
    print(f"left padding with position_ids gives the unpadded embeddings: {torch.allclose(left, plain)}")


pe = attempt("sinusoidal_positions", show_positions)
_ = attempt("embed", embedding_scales)
'''),
        kit.markdown("about_experiment_rope", """
## Experiment 2: rotary position embeddings

Your `apply_rope` (3.3) rotates each pair of features `(j, j + d/2)` of a query or key by the angle
`position * theta_j`. The cell checks three things with it, for one head of 64 features:

1. the score of a query at position `m` with a key at position `n` depends only on `m - n` (moving
   both by 100 or 1000 changes nothing but rounding), and a rotation keeps the vector's length;
2. the frequencies: it rotates a unit vector in each pair by one position and reads the angle back,
   which gives `theta_j` and the wavelength `2 pi / theta_j` (positions per full turn), and counts the
   pairs that do not complete one turn within 512 positions (the context of the course's CPU model).
   This also tells the layouts apart: rotating adjacent features `(2j, 2j + 1)`, as the paper does,
   gives relative scores too, but not Llama's checkpoints' pairs;
3. the score of a vector with itself at distance `m - n`, `q . R(m - n) q` for `q` of all ones,
   with `rope_theta` 10,000 (Llama 2) and 500,000 (Llama 3): it falls, on average, with distance.
"""),
        kit.code("experiment_rope", r'''
D_HEAD = 64


def rope_at(x, position):
    """Your apply_rope of one vector x (d_head,) at one position."""
    return transformer.apply_rope(x[None, None, None, :], torch.tensor([[position]]))[0, 0, 0]


def relative_scores():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(D_HEAD, generator=gen), torch.randn(D_HEAD, generator=gen)
    for shift in (0, 100, 1000):
        scores = [(rope_at(q, m + shift) @ rope_at(k, n + shift)).item() for m, n in ((5, 2), (2, 5), (7, 7))]
        print(f"positions moved by {shift:>4}: q.k at m - n = +3, -3, 0: " + ", ".join(f"{s:+.4f}" for s in scores))
    print(f"|q| = {q.norm():.4f}, |rotated q at 1000| = {rope_at(q, 1000).norm():.4f}")
    return True


def frequencies(context=512):
    half = D_HEAD // 2
    unit = torch.zeros(half, D_HEAD)
    unit[torch.arange(half), torch.arange(half)] = 1.0                # e_j: the first feature of pair j
    turned = transformer.apply_rope(unit[None, :, None, :], torch.ones(1, 1, dtype=torch.long))[0, :, 0]
    first, second = turned[torch.arange(half), torch.arange(half)], turned[torch.arange(half), torch.arange(half) + half]
    outside = (1 - (first.square() + second.square())).abs().max().item()
    if outside > 1e-4:
        print(f"e_j did not stay in the plane of features (j, j + {half}) (off by up to {outside:.2f}): your apply_rope "
              "does not rotate Hugging Face's pairs (j, j + d/2); the angles below are not its frequencies")
    theta = torch.atan2(second, first).abs().double()
    wavelength = 2 * math.pi / theta
    print("pair j:      " + " ".join(f"{j:>8}" for j in range(0, half, 4)) + f" {half - 1:>8}")
    print("theta_j:     " + " ".join(f"{t:8.2e}" for t in theta[::4].tolist()) + f" {theta[-1]:8.2e}")
    print("wavelength:  " + " ".join(f"{w:8.0f}" for w in wavelength[::4].tolist()) + f" {wavelength[-1]:8.0f}")
    slow = int((wavelength > context).sum())
    print(f"{slow} of {half} pairs turn less than once in {context} positions")


def decay(length=2048):
    ones = torch.ones(1, 1, length, D_HEAD)
    positions = torch.arange(length)[None]
    curves = {}
    for base in (10_000.0, 500_000.0):
        rotated = transformer.apply_rope(ones, positions, base=base)[0, 0]   # R(p) q for p = 0 ... length - 1
        curves[base] = (rotated @ rotated[0]) / D_HEAD                        # q . R(p) q / |q|^2
    for base, curve in curves.items():
        print(f"rope_theta {base:>9,.0f}: average score over distances 0-15 {curve[:16].mean():.2f}, "
              f"256-511 {curve[256:512].mean():.2f}, 1024-2047 {curve[1024:].mean():.2f}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3))
        for base, curve in curves.items():
            ax.plot(curve, label=f"rope_theta {base:,.0f}", linewidth=0.8)
        ax.set(xlabel="distance m - n", ylabel="q . R(m - n) q / |q|^2", xscale="symlog")
        ax.legend()
        plt.show()


if attempt("apply_rope", relative_scores):
    attempt("apply_rope", frequencies)
    attempt("apply_rope", decay)
'''),
        kit.markdown("question_rope", f"""
## Written answer 1 ({kit.points(ROPE_POINTS)}, graded by hand)

Why does rotating queries and keys (and not values) make attention depend on the *relative* position
`m - n` only? Show it in one line with rotation matrices. Then use the table of wavelengths: a model
trained on sequences of 512 tokens is given 2,048. Which pairs of features see something they never
saw in training, and why does the model then go wrong? Name one way that models such as Llama 3 or
Code Llama extend their context, and say what it changes.
"""),
        kit.written_answer("answer_rope", """
Each pair j of q and k is rotated by R(m theta_j) and R(n theta_j). Rotations compose and are
orthogonal, R(a)^T = R(-a), so (R(m theta) q) . (R(n theta) k) = q^T R(m theta)^T R(n theta) k =
q^T R((n - m) theta) k: summed over the pairs, the score is a function of the contents and of n - m
only (the experiment's scores are the same at 5/2, 105/102 and 1005/1002). The positions enter only
through the dot product, where the absolute angles cancel. Values are not rotated because they are
not compared, they are averaged: a rotated value would carry its absolute position into the output,
and nothing would cancel it.
Beyond the training length the relative distances 512-2047 were never seen. For the fast pairs
(short wavelengths, the first half: 6 to about 500 positions per turn) every angle has been seen
many times, so nothing is new. The slow pairs (about 16 of 32 with base 10,000 and d_head 64, whose
wavelength is longer than 512) never completed a turn in training: at distance 2,048 their angles
lie outside the range the model learned, the scores they give are out of distribution, attention
goes to the wrong tokens and perplexity shoots up (RoPE models do not extrapolate by themselves).
Remedies: position interpolation (Chen et al. 2023) scales the positions by 512/2048 so that every
angle stays in the trained range (at the cost of finer, less distinct steps, fixed by a short
fine-tune); a larger base (Code Llama 1,000,000, Llama 3 500,000, "NTK-aware" scaling) slows the slow
pairs down so that longer distances map to trained angles while the fast pairs barely change;
YaRN / Llama 3.1's scaling interpolate only the low frequencies and leave the high ones. All of them
are followed by some training on long sequences.
""", points=ROPE_POINTS),
        kit.markdown("about_experiment_norms", """
## Experiment 3: LayerNorm and RMSNorm against PyTorch's

Your `layer_norm` (3.4) against `torch.nn.functional.layer_norm` and your `rms_norm` (3.5) against
`torch.nn.functional.rms_norm`, with random gains and biases: in float32, in bfloat16 (where the two
may differ by a rounding step of bfloat16, about 0.01 at 1), and for LayerNorm on vectors with a
mean of 1000 (computing the variance as `E[x^2] - E[x]^2` in float32 loses every digit there). Then
what each does to vectors with mean 3: LayerNorm centres and scales them; RMSNorm only scales, so
the mean survives.
"""),
        kit.code("experiment_norms", r'''
def compare_norms():
    gen = torch.Generator().manual_seed(0)
    d = 48
    x = torch.randn(4, 7, d, generator=gen)
    weight, bias = 1 + 0.3 * torch.randn(d, generator=gen), 0.3 * torch.randn(d, generator=gen)
    bf = lambda t: t.to(torch.bfloat16)
    cases = [  # label, yours, PyTorch's, tolerance
        ("layer_norm, float32", lambda: transformer.layer_norm(x, weight, bias),
         lambda: F.layer_norm(x, (d,), weight, bias, 1e-5), 1e-5),
        ("layer_norm, float32, mean 1000", lambda: transformer.layer_norm(x + 1000, weight, bias),
         lambda: F.layer_norm(x + 1000, (d,), weight, bias, 1e-5), 1e-3),
        ("layer_norm, bfloat16", lambda: transformer.layer_norm(bf(x), bf(weight), bf(bias)),
         lambda: F.layer_norm(bf(x), (d,), bf(weight), bf(bias), 1e-5), 3e-2),
        ("rms_norm, float32", lambda: transformer.rms_norm(x, weight), lambda: F.rms_norm(x, (d,), weight, 1e-6), 1e-5),
        ("rms_norm, bfloat16", lambda: transformer.rms_norm(bf(x), bf(weight)),
         lambda: F.rms_norm(bf(x), (d,), bf(weight), 1e-6), 3e-2),
    ]
    failed = set()
    for label, yours, theirs, tolerance in cases:
        name = label.split(",")[0]
        out = None if name in failed else attempt(name, yours)
        if out is None:
            failed.add(name)
            continue
        gap = max_gap(out, theirs())
        print(f"{label:<32} max |yours - torch| {gap:8.1e} {'same' if gap <= tolerance else 'DIFFERENT'} "
              f"(dtype {out.dtype})")
    shifted = torch.randn(3, d, generator=gen) + 3
    if len(failed) < 2:
        print(f"input:       mean {shifted.mean():5.2f}, rms {shifted.square().mean().sqrt():5.2f}")
    for name, norm in (("layer_norm", transformer.layer_norm), ("rms_norm", transformer.rms_norm)):
        out = None if name in failed else attempt(name, norm, shifted)
        if out is not None:
            print(f"{name + ':':<12} mean {out.mean():5.2f}, rms {out.square().mean().sqrt():5.2f}")


compare_norms()
'''),
        kit.markdown("about_experiment_layers", """
## Experiment 4: your layers against PyTorch's, and gradients through deep stacks

`EncoderLayer.from_torch` and `DecoderLayer.from_torch` copy the weights of
`nn.TransformerEncoderLayer` and `nn.TransformerDecoderLayer` into layers that run your
`encoder_layer` (3.7) and `decoder_layer` (3.8), which call your `layer_norm` and `feed_forward`
(3.6). The cell compares them, pre-norm and post-norm, on a padded batch (the decoder causal, its
memory padded too; the rows of padding tokens are left out, since nothing reads them), and your
`feed_forward` with the torch layers' own `linear2(activation(linear1(x)))`.

Then it stacks your encoder layers 3 to 24 deep, pre-norm (with a final LayerNorm, as
`nn.Transformer(norm_first=True)`) and post-norm, at their initialisation, takes a made-up loss
(squared error to random targets) and measures the gradient of each layer's weights. Xiong et al.
(2020) show that with post-norm the layers near the output get large gradients that do not shrink
as the stack gets deeper, while with pre-norm they shrink like `1/sqrt(depth)`.
"""),
        kit.code("experiment_layers", r'''
gen = torch.Generator().manual_seed(0)


def against_torch(norm_first):
    """Your encoder and decoder layers against torch's (and, once, your feed_forward); True if both layers ran."""
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=norm_first).eval()
    dec = torch.nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, activation="relu", batch_first=True,
                                           norm_first=norm_first).eval()
    x, memory = torch.randn(2, 6, 32, generator=gen), torch.randn(2, 5, 32, generator=gen)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])           # 1 = token; torch wants True = padding
    memory_keep = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    real = keep.bool()
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)         # torch's causal mask: True = blocked
    name = "pre-norm " if norm_first else "post-norm"
    with torch.no_grad():
        if norm_first:
            for layer, activation in ((enc, "gelu"), (dec, "relu")):
                mlp = {"fc_in.weight": layer.linear1.weight, "fc_in.bias": layer.linear1.bias,
                       "fc_out.weight": layer.linear2.weight, "fc_out.bias": layer.linear2.bias}
                ours = attempt("feed_forward", transformer.feed_forward, mlp, x, activation)
                if ours is None:
                    break
                theirs = layer.linear2(layer.activation(layer.linear1(x)))
                print(f"feed_forward, {activation}: max |yours - linear2(activation(linear1(x)))| {max_gap(ours, theirs):.1e}")
        theirs = enc(x, src_key_padding_mask=~real)
        ours = attempt("encoder_layer", transformer.EncoderLayer.from_torch(enc), x, attention_mask=keep)
        if ours is not None:
            print(f"encoder_layer, {name}: max |yours - nn.TransformerEncoderLayer| {max_gap(ours[real], theirs[real]):.1e}")
        theirs = dec(x, memory, tgt_mask=future, tgt_key_padding_mask=~real, memory_key_padding_mask=~memory_keep.bool(),
                     tgt_is_causal=True)
        ours_dec = attempt("decoder_layer", transformer.DecoderLayer.from_torch(dec), x, memory, attention_mask=keep,
                           memory_attention_mask=memory_keep)
        if ours_dec is not None:
            print(f"decoder_layer, {name}: max |yours - nn.TransformerDecoderLayer| {max_gap(ours_dec[real], theirs[real]):.1e}")
    return ours is not None and ours_dec is not None


def layer_gradients(depth, norm_first):
    torch.manual_seed(0)
    layers = [transformer.EncoderLayer(64, 4, 256, norm_first=norm_first) for _ in range(depth)]
    h = torch.randn(8, 16, 64, generator=gen)
    for layer in layers:
        h = layer(h)
    if norm_first:
        h = transformer.LayerNorm(64)(h)
    F.mse_loss(h, torch.randn(8, 16, 64, generator=gen)).backward()
    return [math.sqrt(sum(p.grad.square().sum().item() for p in layer.parameters())) for layer in layers]


def gradients_by_depth():
    curves = {}
    for depth in (3, 6, 12, 24):
        pre, post = layer_gradients(depth, True), layer_gradients(depth, False)
        if not curves:
            print(f"{'depth':>5} | {'pre-norm: first':>15} {'last':>7} | {'post-norm: first':>16} {'last':>7} | "
                  f"{'last layer, post / pre':>22}")
        curves[depth] = pre, post
        print(f"{depth:>5} | {pre[0]:>15.3f} {pre[-1]:>7.3f} | {post[0]:>16.3f} {post[-1]:>7.3f} | {post[-1] / pre[-1]:>22.1f}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3))
        pre, post = curves[24]
        ax.plot(range(1, 25), pre, "o-", label="pre-norm")
        ax.plot(range(1, 25), post, "s--", label="post-norm")
        ax.set(xlabel="layer (1 = next to the input)", ylabel="gradient norm of its weights",
               title="24 encoder layers at initialisation")
        ax.legend()
        plt.show()


if against_torch(True):
    against_torch(False)
_ = attempt("encoder_layer", gradients_by_depth)
'''),
        kit.markdown("about_experiment_train", """
## Experiment 5: train a Transformer made of your layers

`train_seq2seq` builds a `Seq2SeqTransformer` from your functions (embeddings with your sinusoidal
positions, 2 encoder and 2 decoder layers of width 64, your norms and feed-forward networks) and
trains it with teacher forcing to **reverse** sequences of 4 to 8 symbols, for 250 steps of 64
examples (AdamW, warm-up, cosine decay). Then it decodes 200 held-out sequences it never saw, greedily,
and counts the exact matches. With correct layers this takes about ten seconds on one CPU thread and
reaches over 90% exact match (a few hundred more steps reach 99%). Set `NORM_FIRST = False` to train
the post-norm version instead.
"""),
        kit.code("experiment_train", r'''
NORM_FIRST = True
task = SymbolTask("reverse", n_symbols=10, min_len=4, max_len=8)


def train():
    result = transformer.train_seq2seq(task, n_train=5000, n_test=200, steps=250, norm_first=NORM_FIRST)
    late = sum(result.losses[-10:]) / 10
    print(f"{'pre' if NORM_FIRST else 'post'}-norm: {result.steps} steps in {result.seconds:.1f} s, "
          f"loss {result.losses[0]:.2f} -> {late:.3f}")
    print(f"held-out exact match: {result.test_accuracy:.1%} of 200 sequences")
    _, test = task.split(5000, 200)
    for source, target in test[:4]:
        src = torch.tensor([source])
        output = result.model.greedy_decode(src, torch.ones_like(src), max_new_tokens=len(target) + 1)[0]
        print(f"  {source} -> {output} {'right' if output == target else 'wrong, expected ' + str(target)}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(result.losses)
        ax.set(xlabel="step", ylabel="training loss (cross-entropy)", yscale="log",
               title=f"reversal, {'pre' if NORM_FIRST else 'post'}-norm")
        plt.show()
    return result


result = attempt("train_seq2seq", train)
'''),
        kit.markdown("question_norm", f"""
## Written answer 2 ({kit.points(NORM_POINTS)}, graded by hand)

The original Transformer is post-norm; GPT-2, Llama and nearly every model since are pre-norm. Use
the gradient table of Experiment 4: what happens to the layers near the output of a deep post-norm
stack at the start of training, and why does post-norm therefore need a learning-rate warm-up (and
still fails in very deep stacks)? What is different about the path from a layer's output to the loss
in a pre-norm stack? What does pre-norm cost, or need, in return?
"""),
        kit.written_answer("answer_norm", """
Post-norm puts a LayerNorm on the residual stream itself, x_{l+1} = LN(x_l + F(x_l)): there is no
identity path, and the gradient reaching layer l passes through every LayerNorm above it. At
initialisation (Xiong et al. 2020) the gradients of the weights near the output are large and do not
shrink with depth (the table: the last layer's gradient is 2 to 4 times pre-norm's, and the ratio
grows from 3 to 24 layers). A normal learning rate then takes huge steps in those layers right away,
and training diverges or lands in a bad region; warm-up keeps the first steps small until Adam's
statistics and the weights settle. The deeper the stack, the worse it gets, and beyond a few dozen
layers post-norm fails even with warm-up (hence DeepNorm and similar rescalings).
Pre-norm, x_{l+1} = x_l + F(LN(x_l)), keeps a clean identity path from every layer to the output:
dL/dx_l = dL/dx_L (I + J_L-1) ... (I + J_l), a product that contains dL/dx_L itself, so the gradient
reaches every layer undamped whatever the depth, and the weight gradients near the output shrink
as the stack deepens (like 1/sqrt(depth) in Xiong et al.'s analysis; the table's pre-norm "last"
column falls): large learning rates and short or no warm-up work, and deep stacks train.
The cost: the residual stream is never normalised, so its norm grows with depth and the later
layers' contributions become relatively small (a deep pre-norm model behaves somewhat shallower than
it is; post-norm that trains can end up slightly better); and the output of the stack is
unnormalised, so a final LayerNorm/RMSNorm is needed before the output layer (GPT-2's ln_f, Llama's
norm, nn.Transformer's encoder/decoder norm).
""", points=NORM_POINTS),
        kit.markdown("about_experiment_decoder", """
## Experiment 6: your decoder-only blocks in Llama and GPT-2

A decoder-only language model is your `embed` (3.2), a stack of your `decoder_block` (3.9), a final
norm and the output layer. The cell builds two small random models with Hugging Face `transformers`,
a Llama (RMSNorm, SwiGLU, RoPE, 4 query heads sharing 2 key/value heads) and a GPT-2 (LayerNorm,
tanh GELU, learned positions, biases), converts their weights to the course's names, runs the stack
with your functions and compares the logits with the Hugging Face models' own. The attention inside
the block is `attn_implementation="sdpa"` (PyTorch's fused kernel, so this experiment does not
depend on Chapter 2).

Then two properties of the Llama stack: decoding token by token with a KV cache (each step feeds one
token and the keys and values your block returned for the earlier ones) gives the logits of the
whole sequence at once; and, since RoPE only sees relative positions, moving every position by 1000
changes the logits by rounding only.
"""),
        kit.code("experiment_decoder", r'''
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from course_lib.language_model import from_gpt2, from_llama


def randomized(model, seed):
    """Random weights of a useful size (Hugging Face initialises with std 0.02), norm gains near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or ".ln_" in name:
                p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.1 * noise)
    return model.eval()


@torch.no_grad()
def your_stack(course, input_ids, position_ids, cache=None):
    """The course model's forward pass run by your functions. cache: one (key, value) per layer, or None."""
    arch, m = course.config.architecture(), course.model
    table = {"embed_tokens.weight": m.embed_tokens.weight}
    if m.embed_positions is not None:
        table["embed_positions.weight"] = m.embed_positions.weight
    h = transformer.embed(table, input_ids, position_ids)
    new_cache = []
    for i, layer in enumerate(m.layers):
        past_key, past_value = cache[i] if cache else (None, None)
        h, key, value = transformer.decoder_block(dict(layer.named_parameters()), h, position_ids, None, past_key,
                                                  past_value, "sdpa", config=arch)
        if past_key is not None:
            key, value = torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2)
        new_cache.append((key, value))
    if arch["norm_type"] == "rmsnorm":
        h = transformer.rms_norm(h, m.norm.weight, arch["norm_eps"])
    else:
        h = transformer.layer_norm(h, m.norm.weight, m.norm.bias, arch["norm_eps"])
    return course.lm_head(h), new_cache


llama = randomized(LlamaForCausalLM(LlamaConfig(
    vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)), seed=1)
gpt2 = randomized(GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                               bos_token_id=0, eos_token_id=0)), seed=2)
ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))
positions = torch.arange(12).expand(2, 12)


def against_hugging_face():
    for name, hf, convert in (("Llama", llama, from_llama), ("GPT-2", gpt2, from_gpt2)):
        course = convert(hf)
        with torch.no_grad():
            theirs = hf(ids).logits
        ours, _ = your_stack(course, ids, positions)
        print(f"{name:<6} max |your logits - {type(hf).__name__}'s| {max_gap(ours, theirs):.1e} "
              f"(logits of size {theirs.abs().mean():.1f} on average)")
    return True


def cache_and_shift():
    course = from_llama(llama)
    full, _ = your_stack(course, ids, positions)
    logits, cache = your_stack(course, ids[:, :4], positions[:, :4])   # the prompt, at once
    steps = [logits]
    for t in range(4, 12):                                               # then one token per step
        logits, cache = your_stack(course, ids[:, t:t + 1], positions[:, t:t + 1], cache)
        steps.append(logits)
    print(f"token by token with your KV cache vs all at once: max difference {max_gap(torch.cat(steps, dim=1), full):.1e}"
          f" (cache: {len(cache)} layers of keys {tuple(cache[0][0].shape)})")
    moved, _ = your_stack(course, ids, positions + 1000)
    print(f"every position moved by 1000: logits change by {max_gap(moved, full):.1e}")


if attempt("embed and decoder_block", against_hugging_face):
    attempt("decoder_block", cache_and_shift)
'''),
        kit.markdown("about_experiment_cost", """
## Experiment 7: what a model costs

Your `count_parameters` (3.10) against the number of parameters of the course's models (built on
PyTorch's `meta` device: shapes without memory), in both styles and sizes, tied and untied, and
against the published sizes of GPT-2 small, Llama 2 7B and Llama 3 8B (from their configurations).

Then your `flops_per_token` (3.11) for growing context lengths. It is `a + b * seq_len`: the matrix
multiplications with the weights cost the same for every token, while the attention products
`q k^T` and `weights v` grow with the context each token reads. The cell takes `a` and `b` from your
function and prints the share of attention in the forward pass, and the training cost of one token
against the rule of thumb `6N`.
"""),
        kit.code("experiment_cost", r'''
from course_lib.language_model import CourseLMForCausalLM, course_lm_config

PUBLISHED = {  # name: (architecture, parameters as published / as transformers counts them)
    "GPT-2 small": (dict(vocab_size=50257, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, head_dim=64, max_position_embeddings=1024,
                         norm_type="layernorm", norm_eps=1e-5, hidden_act="gelu_tanh",
                         position_embedding_type="learned", rope_theta=10000.0, attention_bias=True, mlp_bias=True,
                         tie_word_embeddings=True), 124_439_808),
    "Llama 2 7B": (dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=4096,
                        norm_type="rmsnorm", norm_eps=1e-5, hidden_act="swiglu", position_embedding_type="rope",
                        rope_theta=10000.0, attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
                   6_738_415_616),
    "Llama 3 8B": (dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                        norm_type="rmsnorm", norm_eps=1e-5, hidden_act="swiglu", position_embedding_type="rope",
                        rope_theta=500000.0, attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
                   8_030_261_248),
}


def count_against_models():
    for size, style, overrides in (("cpu", "llama", {}), ("cpu", "llama", {"tie_word_embeddings": False}),
                                   ("cpu", "gpt2", {}), ("gpu", "llama", {}), ("gpu", "gpt2", {})):
        config = course_lm_config(size, style, **overrides)
        with torch.device("meta"):
            model = CourseLMForCausalLM(config)
        numel = sum(p.numel() for p in model.parameters())   # a tied tensor counts once
        yours = transformer.count_parameters(config.architecture())
        if size == "cpu" and style == "llama" and not overrides:
            print(f"{'model':<30} {'numel':>15} {'yours':>15}")
        name = f"course {size}, {style}, {'tied' if config.tie_word_embeddings else 'untied'}"
        print(f"{name:<30} {numel:>15,} {yours:>15,} {'same' if yours == numel else 'DIFFERENT'}")
    for name, (architecture, published) in PUBLISHED.items():
        yours = transformer.count_parameters(architecture)
        print(f"{name:<30} {published:>15,} {yours:>15,} {'same' if yours == published else 'DIFFERENT'}")


def flops_against_context():
    models = {"course gpu, llama": course_lm_config("gpu").architecture(), "Llama 2 7B": PUBLISHED["Llama 2 7B"][0]}
    lengths = [2 ** k for k in range(7, 18)]
    shares = {}
    for name, arch in models.items():
        f1, f2 = transformer.flops_per_token(arch, 1), transformer.flops_per_token(arch, 2)
        per_context = f2 - f1                    # b: attention products per token of context
        fixed = f1 - per_context                 # a: the weights' matrix multiplications
        n = transformer.count_parameters(arch)
        print(f"{name}: {n / 1e6:,.0f}M parameters; per token, weights {fixed / 1e9:.3f} GFLOP (2N = "
              f"{2 * n / 1e9:.3f}) + attention {per_context / 1e3:.1f} kFLOP x seq_len")
        print(f"  {'seq_len':>8} {'GFLOP/token':>12} {'attention':>10} {'training 3x':>12} {'6N':>8}")
        shares[name] = []
        for s in lengths:
            flops = transformer.flops_per_token(arch, s)
            shares[name].append((flops - fixed) / flops)
            if s in (512, 2048, 8192, 32768, 131072):
                print(f"  {s:>8,} {flops / 1e9:>12.3f} {shares[name][-1]:>10.0%} {3 * flops / 1e9:>12.2f} {6 * n / 1e9:>8.2f}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3))
        for name, share in shares.items():
            ax.semilogx(lengths, [100 * v for v in share], "o-", base=2, label=name)
        ax.set(xlabel="context length (tokens)", ylabel="attention's share of FLOPs (%)")
        ax.legend()
        plt.show()


attempt("count_parameters", count_against_models)
_ = attempt("flops_per_token", flops_against_context)
'''),
        kit.markdown("question_flops", f"""
## Written answer 3 ({kit.points(FLOPS_POINTS)}, graded by hand)

From the last table: at about what context length does attention take half of the forward FLOPs of
Llama 2 7B, and of the course's GPU model? Why does that happen at a *shorter* context for the
smaller model? When is `6N` per token a good estimate of the training cost, and what does it leave
out? Does FlashAttention change these numbers?
"""),
        kit.written_answer("answer_flops", """
Per token the weights cost a fixed 2 N_matmul FLOPs (about 13 GFLOP for Llama 2 7B, 0.2 GFLOP for
the course's GPU model), while the two attention products cost 4 * layers * seq_len * d_attn, which
grows linearly with the context each token reads (so the whole sequence costs quadratically). They
are equal at seq_len = 2 N_matmul / (4 L d_attn) = N_matmul / (2 L d_attn), roughly 6 d_model for a
model with the usual 12 d^2 weights per layer: about 25k tokens for Llama 2 7B (d 4096) and about
4k for the course's GPU model (d 768, whose grouped k/v and narrower MLP make its weights per layer a
little smaller than 12 d^2). The smaller model reaches it sooner because its weights per layer grow like
d^2 while attention per token of context grows like d only: narrow models are dominated by attention
at shorter contexts.
6N (2N forward, 4N backward) is good while seq_len is small against about 6-12 d_model (Kaplan et al.
use n_ctx << 12 d_model), which held for GPT-3-era pretraining at 2k tokens on wide models; it
leaves out the attention products (and the softmax, norms and activations, a few percent), which
dominate long-context training and small models. A causal mask halves the useful attention work
(Kaplan counts that half), which kernels that skip masked blocks realise.
FlashAttention does not reduce the FLOPs (it even recomputes some in the backward pass): it avoids
writing the seq_len x seq_len score matrix to memory, so memory becomes linear in the length and
the run is faster because it is less memory-bound. To cut the FLOPs themselves you need fewer
attention computations (sliding-window or sparse attention, linear-attention/state-space layers).
""", points=FLOPS_POINTS),
    ]
