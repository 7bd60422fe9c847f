"""Chapter 2 assignment (attention): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``attention.py``: their scaled dot-product attention against
``F.scaled_dot_product_attention`` (masks included) and timed against it, with and without the
1/sqrt(d_head) scale; their multi-head attention on a hand-built input whose two heads do known
things (attention maps), and against ``nn.MultiheadAttention``; their grouped-query attention against
their multi-head attention, and what sharing key/value heads saves. Every call of an exercise goes
through ``attempt``, so an unfinished or broken exercise is reported and the rest still runs; the
whole notebook runs in a few seconds on one CPU thread.
"""

SCALE_POINTS = 2  # written answers, graded by hand
GQA_POINTS = 3


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 2."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 2: attention, from scaled dot-product to grouped-query attention",
            what="""
the core operation (scaled dot-product attention with masks, causality and dropout), the masks
built from a tokenizer's `attention_mask`, multi-head attention with its projections, and
grouped-query attention, which shares keys and values between heads.
""",
            contract="""
and the module docstring the conventions all of them share: shapes, what `True` means in a mask,
how the causal triangle is aligned, what a fully masked row gives
""",
            written=(SCALE_POINTS, GQA_POINTS),
            more=f"""
The layers `MultiHeadAttention` and `GroupedQueryAttention` in `{module}.py` are already written:
they hold the weights and call your `multi_head_attention` (2.3) and `grouped_query_attention` (2.5).
So is `plot_attention`, which draws an attention map.
""",
            experiments="""
Run the experiments: they compare *your* functions with PyTorch's, time them, and draw the
attention maps of your multi-head attention. An exercise you have not done yet is reported, not
fatal, so you can run them at any stage. Then answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(f"""
import math
import time

import torch
import torch.nn.functional as F
"""),
        kit.markdown("about_experiment_sdpa", """
## Experiment 1: your attention against PyTorch's

`torch.nn.functional.scaled_dot_product_attention` (SDPA) is what models call. The cell runs your
`scaled_dot_product_attention` (2.1) and SDPA on the same random inputs, a batch of three sequences:
one without padding, one padded on the right, one padded on the left. It builds the masks itself
(so that 2.1 is checked on its own): `padding` blocks the padding keys, `causal` the future, and
`padding & causal` both. Under left padding the first queries of the third sequence then see no key
at all: those are fully masked rows, which must come out as zeros, not NaN. Each line gives the
largest difference from SDPA; float32 should agree to about 1e-6 and float64 to about 1e-15.

Then it checks that your `make_attention_mask` (2.2) builds the same mask from the tokenizer's
`attention_mask`, and the one that a single decoding step (`q_len=1`, the newest token) needs.
"""),
        kit.code("experiment_sdpa", f"""
gen = torch.Generator().manual_seed(0)
batch, heads, seq, d_head = 3, 4, 10, 16
attention_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [0] * 4 + [1] * 6])  # 1 = token, 0 = padding
padding = attention_mask.bool()[:, None, None, :]            # (batch, 1, 1, kv_len): True = a real key
causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))  # (q_len, kv_len): True = not in the future
distance = torch.arange(seq)[None, :] - torch.arange(seq)[:, None]
penalty = -0.5 * distance.abs().float()                      # a float mask: far keys lose score

cases = [  # label, q_len, dtype, keyword arguments for both implementations
    ("no mask", seq, torch.float32, {{}}),
    ("is_causal=True", seq, torch.float32, {{"is_causal": True}}),
    ("padding (bool mask)", seq, torch.float32, {{"attn_mask": padding}}),
    ("padding & causal (bool mask)", seq, torch.float32, {{"attn_mask": padding & causal}}),
    ("padding & causal, float64", seq, torch.float64, {{"attn_mask": padding & causal}}),
    ("float mask (distance penalty)", seq, torch.float32, {{"attn_mask": penalty}}),
    ("4 queries, 10 keys, is_causal=True", 4, torch.float32, {{"is_causal": True}}),
]


def compare(label, q_len, dtype, kwargs):
    q = torch.randn(batch, heads, q_len, d_head, generator=gen, dtype=dtype)
    k = torch.randn(batch, heads, seq, d_head, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, seq, d_head, generator=gen, dtype=dtype)
    out, weights = {module}.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
    gap = max_gap(out, F.scaled_dot_product_attention(q, k, v, **kwargs))
    sums = weights.double().sum(dim=-1)
    blank = int((sums == 0).sum())                           # fully masked rows: zero weights
    rows_ok = bool(((sums - 1).abs() < 1e-5).logical_or(sums == 0).all())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    verdict = "same" if gap <= tolerance else "DIFFERENT"
    print(f"{{label:<36}} max |yours - SDPA| {{gap:8.1e}} {{verdict:<9}} NaN: {{bool(out.isnan().any())!s:<5}} "
          f"rows sum to 1: {{rows_ok!s:<5}} fully masked rows: {{blank}}")
    return True


def compare_masks():
    built = {module}.make_attention_mask(attention_mask, seq)
    expected = (padding & causal).expand(batch, 1, seq, seq)
    same = built.dtype == torch.bool and built.shape == expected.shape and torch.equal(built, expected)
    print(f"make_attention_mask(attention_mask, q_len=10) is padding & causal: {{same}} "
          f"(shape {{tuple(built.shape)}}, dtype {{built.dtype}})")
    step = {module}.make_attention_mask(attention_mask, 1)
    same = step.dtype == torch.bool and step.shape == (batch, 1, 1, seq) and torch.equal(
        step.reshape(batch, seq), attention_mask.bool())
    print(f"make_attention_mask(attention_mask, q_len=1): the newest token sees every real token: {{same}}")


for label, q_len, dtype, kwargs in cases:
    if not attempt("scaled_dot_product_attention", compare, label, q_len, dtype, kwargs):
        break
attempt("make_attention_mask", compare_masks)
"""),
        kit.markdown("about_experiment_scale", """
## Experiment 2: why divide by sqrt(d_head)?

For queries and keys with independent entries of variance 1, a score `q · k` is a sum of `d_head`
products, so its standard deviation grows like `sqrt(d_head)`. The cell draws such queries and keys
for growing `d_head` and runs your `scaled_dot_product_attention` twice: with the default scale
`1 / sqrt(d_head)` and with `scale=1.0` (no scaling). It prints the standard deviation of the raw
scores, the average largest weight of a row (1/64 would be uniform over the 64 keys, 1.0 is one key
taking everything) and the size of the gradient that reaches the scores of a row through the
softmax, for a loss `sum_j weight_j * r_j` with random `r_j` (it is
`weight_j * (r_j - sum_k weight_k * r_k)` for score `j`: zero when one key takes all the weight).
"""),
        kit.code("experiment_scale", f"""
D_HEADS = [4, 16, 64, 256, 1024]
n_keys = 64
rows = {{"scaled": [], "unscaled": []}}


def saturation(d, scale):
    q, k, v = (torch.randn(1, 8, n_keys, d, generator=gen) for _ in range(3))
    _, weights = {module}.scaled_dot_product_attention(q, k, v, scale=scale, return_weights=True)
    weights = weights.double()
    largest = weights.max(dim=-1).values.mean().item()
    # For a loss sum_j weight_j * r_j, the gradient reaching score j is weight_j * (r_j - sum_k weight_k r_k):
    # its size per row is how much the softmax lets a query and its keys learn (0 for a one-hot row).
    r = torch.randn(n_keys, generator=gen, dtype=torch.float64)
    grad = (weights * (r - (weights * r).sum(dim=-1, keepdim=True))).norm(dim=-1).mean().item()
    return (q @ k.mT).std().item(), largest, grad


print(f"{{'d_head':>6}} {{'std of q.k':>10}} | {{'largest weight':>14}} {{'grad':>8}} (scaled) | "
      f"{{'largest weight':>14}} {{'grad':>8}} (scale=1)")
for d in D_HEADS:
    scaled = attempt("scaled_dot_product_attention", saturation, d, None)
    unscaled = attempt("scaled_dot_product_attention", saturation, d, 1.0) if scaled else None
    if scaled is None or unscaled is None:
        break
    rows["scaled"].append(scaled[1])
    rows["unscaled"].append(unscaled[1])
    print(f"{{d:>6}} {{scaled[0]:>10.1f}} | {{scaled[1]:>14.3f}} {{scaled[2]:>8.3f}}          | "
          f"{{unscaled[1]:>14.3f}} {{unscaled[2]:>8.3f}}")

if plt is not None and rows["scaled"]:
    fig, ax = plt.subplots(figsize=(5, 3))
    done = D_HEADS[:len(rows["scaled"])]
    ax.semilogx(done, rows["scaled"], "o-", base=2, label="scale 1/sqrt(d_head)")
    ax.semilogx(done, rows["unscaled"], "s--", base=2, label="scale 1 (none)")
    ax.axhline(1 / n_keys, color="gray", linestyle=":", label=f"uniform (1/{{n_keys}})")
    ax.set_xlabel("d_head")
    ax.set_ylabel("average largest weight of a row")
    ax.legend()
    plt.show()
"""),
        kit.markdown("question_scale", f"""
## Written answer 1 ({kit.points(SCALE_POINTS)}, graded by hand)

Use the table above. What happens to the attention weights, and to the gradient that reaches the
queries and keys, when the scores are not scaled and `d_head` is large? Why is that bad for training?
Why divide by `sqrt(d_head)` and not, say, by `d_head`? Answer in a few sentences.
"""),
        kit.written_answer("answer_scale", """
Without scaling, a score q·k of d_head independent unit-variance terms has standard deviation
sqrt(d_head) (8 for d_head = 64, 32 for 1024): the gaps between the scores of a row grow with the
width, so the softmax saturates and nearly all the weight goes to one key (the largest weight tends
to 1). The softmax's derivative p_i (δ_ij - p_j) is then almost zero everywhere, so almost no
gradient reaches the queries and keys (the table's gradient column falls towards 0): attention at
initialisation picks an arbitrary key per query and can hardly learn to change that, and training is
slow or unstable, more so the wider the heads.
Dividing by sqrt(d_head) gives the scores unit variance whatever d_head is, so the softmax starts in
the same, smooth regime for every width (the scaled column stays put). Dividing by d_head would
overcorrect: the scores' standard deviation would be 1/sqrt(d_head), every row would start close to
uniform (attention as plain averaging) and the weights would have to grow large to make it
selective. (muP-style parametrisations do use 1/d_head, together with other changes to the
initialisation, because during training q and k become correlated and their dot product then grows
like d_head.)
""", points=SCALE_POINTS),
        kit.markdown("about_experiment_timing", """
## Experiment 3: time and memory against sequence length

Causal self-attention of one sequence with 8 heads of 64 features, for growing lengths: your
`scaled_dot_product_attention` against SDPA (best of three runs each, on the CPU). Your version, like
the textbook formula, builds the whole `(heads, seq, seq)` score matrix; the memory column is its size
(`attention_memory_bytes`), which grows with the square of the length. SDPA's fused kernels work on
blocks of keys and never hold it. Doubling the length should roughly quadruple the time of both.
"""),
        kit.code("experiment_timing", f"""
LENGTHS = [128, 256, 512, 1024]
timing_heads, timing_d = 8, 64


def best_of(fn, repeats=3):
    fn()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


torch_ms, yours_ms = [], []
print(f"{{'seq':>5}} {{'SDPA ms':>8}} {{'yours ms':>9}} {{'yours / SDPA':>12}} {{'score matrix MiB':>16}}")
with torch.inference_mode():
    for n in LENGTHS:
        q, k, v = (torch.randn(1, timing_heads, n, timing_d, generator=gen) for _ in range(3))
        torch_ms.append(1000 * best_of(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        mib = {module}.attention_memory_bytes(1, timing_heads, n, n) / 2**20
        if len(yours_ms) == len(torch_ms) - 1:  # yours ran at every length so far
            mine = attempt("scaled_dot_product_attention", best_of,
                           lambda: {module}.scaled_dot_product_attention(q, k, v, is_causal=True))
            if mine is not None:
                yours_ms.append(1000 * mine)
        if len(yours_ms) == len(torch_ms):
            print(f"{{n:>5}} {{torch_ms[-1]:>8.2f}} {{yours_ms[-1]:>9.2f}} {{yours_ms[-1] / torch_ms[-1]:>12.1f}} {{mib:>16.1f}}")
        else:
            print(f"{{n:>5}} {{torch_ms[-1]:>8.2f}} {{'-':>9}} {{'-':>12}} {{mib:>16.1f}}")

if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.loglog(LENGTHS, torch_ms, "o-", base=2, label="F.scaled_dot_product_attention")
    if yours_ms:
        ax.loglog(LENGTHS[:len(yours_ms)], yours_ms, "s--", base=2, label="your scaled_dot_product_attention")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("time per call (ms)")
    ax.legend()
    plt.show()
"""),
        kit.markdown("about_experiment_maps", """
## Experiment 4: the attention maps of a hand-built multi-head attention

Six tokens, *the cat sat on the mat*, each embedded as 16 features: a one-hot of its position
(features 0-7) and a one-hot of its word (features 8-15). The weights of a `MultiHeadAttention` with
two heads of 8 features are set by hand:

- **head 0** reads positions: its queries are the position of the token, its keys the position
  *plus one*, so query `i` matches key `i - 1`: a **previous-token head**;
- **head 1** reads words: query and key are the word, so a token attends to **itself and the
  earlier copies of its word**, as the second *the* does (a duplicate-token head).

A match scores 4 after the scaling, a miss 0, and the mask is causal. The cell runs the layer (your
`multi_head_attention`, 2.3, on top of your 2.1), prints where each query looks most and draws both
heads with `plot_attention`. Then it copies the weights of random `nn.MultiheadAttention` layers
into `MultiHeadAttention.from_torch` and compares the outputs: self-attention with padding, and
cross-attention to a context of another width.
"""),
        kit.code("experiment_maps", f"""
words = ["the", "cat", "sat", "on", "the", "mat"]
vocab = sorted(set(words))
x = torch.zeros(1, len(words), 16)                   # (batch, seq, d_model)
for i, word in enumerate(words):
    x[0, i, i] = 1.0                                 # features 0-7: position
    x[0, i, 8 + vocab.index(word)] = 1.0             # features 8-15: word

sharp = 4 * math.sqrt(8)                             # a match scores 4 after the 1/sqrt(d_head) scaling
eye, next_position = torch.eye(8), torch.diag(torch.ones(7), -1)  # next_position: one-hot of p -> of p + 1
hand_built = {module}.MultiHeadAttention(d_model=16, n_heads=2, bias=False)
with torch.no_grad():
    hand_built.q_proj.weight.copy_(torch.block_diag(sharp * eye, sharp * eye))  # head 0: position, head 1: word
    hand_built.k_proj.weight.copy_(torch.block_diag(next_position, eye))        # head 0: position + 1, head 1: word
    hand_built.v_proj.weight.copy_(torch.eye(16))
    hand_built.o_proj.weight.copy_(torch.eye(16))

def show_maps():
    with torch.no_grad():
        _, maps = hand_built(x, is_causal=True, return_weights=True)
    for head, name in enumerate(["previous token", "same word"]):
        looks = [f"{{words[i]}}{{i}}->{{words[j]}}{{j}} {{maps[0, head, i, j]:.2f}}"
                 for i, j in enumerate(maps[0, head].argmax(dim=-1).tolist())]
        print(f"head {{head}} ({{name}}): " + ", ".join(looks))
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for head, name in enumerate(["head 0: previous token", "head 1: same word"]):
            {module}.plot_attention(maps[0, head], [f"{{w}}{{i}}" for i, w in enumerate(words)], ax=axes[head], title=name)
        fig.tight_layout()
        plt.show()


attempt("multi_head_attention", show_maps)


def against_torch():
    torch.manual_seed(0)
    self_attn = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    cross_attn = torch.nn.MultiheadAttention(32, 4, kdim=20, vdim=20, batch_first=True).eval()
    xs = torch.randn(2, 7, 32, generator=gen)
    context = torch.randn(2, 9, 20, generator=gen)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])   # 1 = token; nn.MultiheadAttention wants True = padding
    with torch.no_grad():
        theirs, _ = self_attn(xs, xs, xs, key_padding_mask=~keep.bool(), need_weights=False)
        ours = {module}.MultiHeadAttention.from_torch(self_attn).eval()(xs, attention_mask=keep)
        print(f"self-attention with padding: max |yours - nn.MultiheadAttention| {{max_gap(ours, theirs):.1e}}")
        theirs, _ = cross_attn(xs, context, context, need_weights=False)
        ours = {module}.MultiHeadAttention.from_torch(cross_attn).eval()(xs, context)
        print(f"cross-attention (kv_dim 20): max |yours - nn.MultiheadAttention| {{max_gap(ours, theirs):.1e}}")
    return True


_ = attempt("multi_head_attention", against_torch)
"""),
        kit.markdown("about_experiment_gqa", """
## Experiment 5: grouped-query attention, and what it saves

Grouped-query attention (GQA) gives the `n_heads` query heads only `n_kv_heads` key/value heads; each
is shared by `n_heads / n_kv_heads` adjacent query heads, which your `repeat_kv` (2.4) arranges.
The cell checks three things with your code:

1. `repeat_kv` puts the copies of a head next to each other, as `torch.repeat_interleave` does;
2. your `grouped_query_attention` (2.5) with `n_kv_heads == n_heads` is ordinary (causal) multi-head
   attention: loaded with the weights of a `MultiHeadAttention`, it gives your layer's output;
3. the way Ainslie et al. (2023) turn a multi-head checkpoint into a GQA one (average the key and
   value projections of the heads of each group) changes the output: by how much, for 8, 4, 2 and 1
   key/value heads? (Random weights here; in a trained model the paper recovers the quality with a
   short extra training run.)

Then it computes the size of the KV cache (the keys and values that generation keeps for every past
token) for a 7-billion-parameter Llama-like model (32 layers, 32 query heads of 128 features) with
`kv_cache_bytes`.
"""),
        kit.code("experiment_gqa", f"""
kv = torch.randn(2, 2, 3, 4, generator=gen)         # (batch, n_kv_heads=2, seq, d_head)


def compare_repeat():
    repeated = {module}.repeat_kv(kv, 4)
    same = repeated.shape == (2, 8, 3, 4) and torch.equal(repeated, torch.repeat_interleave(kv, 4, dim=1))
    print(f"repeat_kv(kv, 4) == torch.repeat_interleave(kv, 4, dim=1): {{same}}")


attempt("repeat_kv", compare_repeat)

d_model, n_heads, d_head = 64, 8, 8
torch.manual_seed(0)
mha = {module}.MultiHeadAttention(d_model, n_heads).eval()
xs = torch.randn(2, 12, d_model, generator=gen)


def pooled(n_kv_heads):
    \"\"\"A GroupedQueryAttention made from mha by averaging the k/v projections of each group of heads.\"\"\"
    layer = {module}.GroupedQueryAttention(d_model, n_heads, n_kv_heads, bias=True)
    state = {{name: w.detach().clone() for name, w in mha.state_dict().items()}}
    for name in ("k_proj", "v_proj"):
        group = n_heads // n_kv_heads
        weight = state[f"{{name}}.weight"].reshape(n_kv_heads, group, d_head, d_model)
        state[f"{{name}}.weight"] = weight.mean(dim=1).reshape(n_kv_heads * d_head, d_model)
        state[f"{{name}}.bias"] = state[f"{{name}}.bias"].reshape(n_kv_heads, group, d_head).mean(dim=1).reshape(-1)
    layer.load_state_dict(state)
    return layer


@torch.no_grad()
def compare_gqa():
    full = pooled(n_heads)(xs)                       # n_kv_heads = n_heads
    reference = attempt("multi_head_attention", mha, xs, is_causal=True)
    if reference is not None:
        print(f"GQA with n_kv_heads = n_heads vs your causal MHA: max difference {{max_gap(full, reference):.1e}}")
    print(f"{{'n_kv_heads':>10}} {{'k/v params':>10}} {{'output change (relative)':>24}}")
    for n_kv_heads in (8, 4, 2, 1):
        layer = pooled(n_kv_heads)
        change = ((layer(xs) - full).norm() / full.norm()).item()
        params = layer.k_proj.weight.numel() + layer.v_proj.weight.numel()
        print(f"{{n_kv_heads:>10}} {{params:>10}} {{change:>24.3f}}")


attempt("grouped_query_attention", compare_gqa)

print()
print("KV cache of a Llama-like 7B model (32 layers, 32 query heads of 128), float16, batch 1:")
print(f"{{'n_kv_heads':>10}} {{'':<6}} {{'per token KiB':>13}} {{'4,096 tokens GiB':>16}} {{'32 x 4,096 tokens GiB':>21}}")
for n_kv_heads, name in ((32, "MHA"), (8, "GQA"), (1, "MQA")):
    per_token = {module}.kv_cache_bytes(32, 1, 1, n_kv_heads, 128, torch.float16)
    context = {module}.kv_cache_bytes(32, 1, 4096, n_kv_heads, 128, torch.float16)
    print(f"{{n_kv_heads:>10}} {{name:<6}} {{per_token / 2**10:>13.0f}} {{context / 2**30:>16.3f}} {{32 * context / 2**30:>21.2f}}")
"""),
        kit.markdown("question_gqa", f"""
## Written answer 2 ({kit.points(GQA_POINTS)}, graded by hand)

Llama 2 70B, Llama 3 and Mistral use grouped-query attention with 8 key/value heads. Using the table
above: what does GQA save, and why does that matter most when a model *generates* text (one token
at a time) rather than when it is trained or reads a prompt? What does it *not* save (think of the
attention scores)? What does it cost, and why is it a middle ground between multi-head and
multi-query attention? Answer in a few sentences.
"""),
        kit.written_answer("answer_gqa", """
It saves KV cache: every generated token keeps keys and values for n_kv_heads heads instead of
n_heads, n_heads / n_kv_heads times less (4x for 32 query heads over 8: 0.5 instead of 2 GiB for 4,096
tokens of the 7B model, 16 instead of 64 GiB for a batch of 32), and the k/v projections shrink by
the same factor. During generation each step computes one token but must read the whole cache from
memory, so decoding is limited by memory bandwidth, not arithmetic: a smaller cache makes every step
faster and leaves room for longer contexts and larger batches (more throughput per GPU). Training
and prompt processing handle all tokens in parallel and are compute-bound, so they gain little.
It does not save attention compute or the score matrix: every query head still scores every key,
so the (batch, n_heads, q_len, kv_len) scores and the FLOPs of q k^T and weights @ v are those of
MHA (repeat_kv only copies, or merely views, the shared heads).
The cost is expressiveness: heads of a group must read the same keys and values and can differ only
in their queries, so the model has fewer independent subspaces to look up; quality drops a little
(converting an MHA checkpoint by averaging heads needs some extra training to recover it, as the
experiment's growing output change hints). MQA (one k/v head) saves the most but loses the most
quality and trains less stably; it also cannot be split across tensor-parallel devices (the single
head is replicated on each). GQA with a few groups keeps most of MHA's quality for most of MQA's
memory saving.
""", points=GQA_POINTS),
    ]
