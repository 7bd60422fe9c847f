"""Chapter 4 assignment (generation): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``generation.py`` on small random causal LMs built from
configs (no download): their greedy decoding against ``generate(do_sample=False)`` on left-padded
batches (Llama, GPT-2 and the course LM); the KV cache (one cached step against recomputing, the
cache's size, the same tokens, the time per token against the context length); their top-k, top-p
and min-p filters against Hugging Face's warpers, how many tokens each keeps, plotted with
``plot_filtered_distribution``; seeded sampling, reproducible and equal to ``generate`` with
``torch.manual_seed``, and what the settings do to diversity and likelihood; beam search against
``generate`` for several length penalties; the repetition penalty's effect on repeated n-grams; and
stop sequences in tokens and in text, up to ``generate_text``. Every call of an exercise goes through
``attempt``, so an unfinished or broken exercise is reported and the rest still runs; the whole
notebook runs in well under a minute on one CPU thread.
"""

CACHE_POINTS = 3  # written answers, graded by hand
FILTERS_POINTS = 2
BEAM_POINTS = 2


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 4."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 4: text generation strategies",
            what="""
the decoding loop that turns a language model's next-token logits into text, the way Hugging
Face's `generate()` runs it. Greedy decoding over a batch of left-padded prompts, the same with
a KV cache, the logits processors that reshape the distribution before sampling (top-k, top-p,
min-p, the repetition penalty, all of them in `generate()`'s order), seeded sampling, beam
search with a length penalty, and stop sequences in tokens and in text.
""",
            contract="""
and the module docstring the conventions all of them share: left padding, position ids, EOS and
padding, `-inf` for a removed token
""",
            written=(CACHE_POINTS, FILTERS_POINTS, BEAM_POINTS),
            more=f"""
Everything else in `{module}.py` is already written: `model_step` runs one forward pass the way
`generate()` does, `random_causal_lm` builds a small random Llama or GPT-2 from a config,
`cut_at_stops` and `generate_text` call your stop checks and decoders, and
`plot_filtered_distribution` draws what your filters keep.

The models here are random, so their text is nonsense; but every decoding algorithm behaves on them
as on a trained model, and each one can be checked token for token against `generate()` on the same
model. A small tokenizer of syllables and punctuation makes their output readable.
""",
            experiments="""
Run the experiments: they compare *your* functions with `generate()` and Hugging Face's logits
processors, time your KV cache, plot your filters and measure what sampling, beam search and the
repetition penalty do. An exercise you have not done yet is reported, not fatal, so you can run
them at any stage. Then answer the three questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging

logging.set_verbosity_error()  # generate() explains its defaults on stderr; the cells below set them all

# A tokenizer whose 96 tokens are syllables, letters and punctuation ("▁" is a space), so that the
# random models' output can be read. Ids 0, 1 and 2 are padding, BOS and EOS.
SYLLABLES = [c + v for c in "bdklmnprst" for v in "aeiou"]
PIECES = (["<pad>", "<bos>", "<eos>", "▁", ".", ",", "!", "?", "\n"] + SYLLABLES + list("aeiou")
          + list("bdklmnprst") + ["st", "op", "the", "and", "ing", "er", "on", "in", "an", "es", "ed", "th",
                                  "sh", "ch", "ou", "ai", "ee", "oo", "ly", "ion", "ent", "ter"])
backend = Tokenizer(models.WordLevel({piece: i for i, piece in enumerate(PIECES)}, unk_token="<pad>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # text in: pieces separated by spaces
backend.decoder = decoders.Sequence([decoders.Fuse(), decoders.Replace("▁", " ")])  # text out: pieces joined
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                    eos_token="<eos>")
tokenizer.padding_side = "left"  # new tokens go on the right, after every row's last real token
PAD, VOCAB = tokenizer.pad_token_id, len(PIECES)
LABELS = [piece.replace("\n", "\\n") for piece in PIECES]  # for plots

# Two small random causal LMs. Their weights are drawn wider than random_causal_lm's default
# (initializer_range 0.4, not 0.2), so that, as with a trained model, some next-token distributions are
# peaked and others flat.
llama = generation.random_causal_lm("llama", vocab_size=VOCAB, pad_token_id=PAD, initializer_range=0.4, seed=0)
gpt2 = generation.random_causal_lm("gpt2", vocab_size=VOCAB, pad_token_id=PAD, initializer_range=0.4, seed=0)


def left_padded(lengths, seed=0):
    """(input_ids, attention_mask) of random prompts of the given lengths, padded on the left."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(9, VOCAB, (len(lengths), width), generator=gen)   # no special tokens
    attention_mask = (torch.arange(width)[None] >= width - torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(attention_mask == 0, PAD), attention_mask


def positions(attention_mask):
    """Position ids that count real tokens only (padding gets 0), as generate() makes them."""
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def hf_generate(model, input_ids, attention_mask, **options):
    """model.generate() with this notebook's defaults spelled out: greedy, no EOS, PAD padding."""
    options = {"do_sample": False, "eos_token_id": None, "pad_token_id": PAD, **options}
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=attention_mask, **options)


def same(a, b):
    """Whether two tensors of token ids are equal (shapes included)."""
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


def text(ids):
    """The text of a row of token ids (padding left out)."""
    return repr(tokenizer.decode([i for i in ids.tolist() if i != PAD]))


def log_likelihood(model, sequences, attention_mask, prompt_len):
    """Each row's sum of log-probabilities of its tokens after the prompt, under ``model``
    (tokens after an EOS are masked out by ``attention_mask``): one forward pass, no cache."""
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=attention_mask,
                       position_ids=positions(attention_mask)).logits.float()
    log_probs = logits[:, prompt_len - 1:-1].log_softmax(-1)                       # predicts tokens prompt_len..
    chosen = log_probs.gather(-1, sequences[:, prompt_len:, None]).squeeze(-1)    # (batch, generated)
    return (chosen * attention_mask[:, prompt_len:]).sum(-1)
'''),
        kit.markdown("about_experiment_greedy", """
## Experiment 1: your greedy decoding against `generate()`

Three prompts of 7, 4 and 1 tokens, padded on the left to one batch, as a tokenizer with
`padding_side="left"` returns them. The cell decodes 12 tokens with your `greedy_search` (4.1) and
with `model.generate(do_sample=False)` on the same model: a random Llama, a random GPT-2 (learned
position embeddings, so wrong position ids show at once) and the course's own LM from Chapter 3 (it
runs `course_lib`'s Chapter 2-3 code, so it is skipped if that is not done). The tokens must be
exactly the same.

Then it checks the two things that make batched decoding right:

- **EOS**: with an EOS id that row 1 produces as its third token, that row stops there and gets
  padding from then on, while the others go on;
- **padding changes nothing**: each prompt decoded alone, without padding, gives the tokens of its
  row in the batch. Two mistakes break this: attending to the padding, and position ids that count
  it (a row with 6 padding tokens must start at position 0, not 6).
"""),
        kit.code("experiment_greedy", r'''
input_ids, attention_mask = left_padded([7, 4, 1], seed=0)
width = input_ids.shape[1]
print("prompts, left-padded:", [text(row) for row in input_ids])


def course_lm():
    """The course's LM from Chapter 3, small and random (it runs course_lib's Chapter 2-3 code)."""
    from course_lib.language_model import CourseLMForCausalLM, course_lm_config

    torch.manual_seed(0)
    config = course_lm_config("cpu", "llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              initializer_range=0.4, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    model = CourseLMForCausalLM(config).eval()
    with torch.no_grad():
        model(input_ids=input_ids[:1])  # fails here if an exercise of Chapter 2 or 3 is not done
    return model


def against_generate(models):
    for name, model in models.items():
        yours = generation.greedy_search(model, input_ids, attention_mask, max_new_tokens=12, pad_token_id=PAD)
        expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=12)
        print(f"{name}: greedy_search == generate(do_sample=False): {same(yours, expected)}")
        if name == "Llama":
            print("   new tokens:", [text(row) for row in yours[:, width:]])


def with_eos():
    reference = hf_generate(llama, input_ids, attention_mask, max_new_tokens=12)
    eos = int(reference[1, width + 2])  # row 1's third new token
    yours = generation.greedy_search(llama, input_ids, attention_mask, max_new_tokens=12, eos_token_id=eos,
                                     pad_token_id=PAD)
    expected = hf_generate(llama, input_ids, attention_mask, max_new_tokens=12, eos_token_id=eos)
    print(f"\nEOS = {eos} ({PIECES[eos]!r}): greedy_search == generate(): {same(yours, expected)}; "
          f"{yours.shape[1] - width} new tokens (rows that finished get padding, id {PAD}):")
    print(yours[:, width:])


def padding_changes_nothing():
    batched = generation.greedy_search(llama, input_ids, attention_mask, max_new_tokens=12)
    for row, length in enumerate(attention_mask.sum(-1).tolist()):
        alone = generation.greedy_search(llama, input_ids[row:row + 1, width - length:], max_new_tokens=12)
        print(f"prompt {row} alone ({length} tokens, no padding) gives its row of the batch: "
              f"{same(alone[:, length:], batched[row:row + 1, width:])}")


models = {"Llama": llama, "GPT-2": gpt2}
lm = attempt("the course LM (course_lib's Chapters 2-3)", course_lm)
if lm is not None:
    models["course LM"] = lm
attempt("greedy_search", against_generate, models)
attempt("greedy_search", with_eos)
attempt("greedy_search", padding_changes_nothing)
'''),
        kit.markdown("about_experiment_cache", """
## Experiment 2: the KV cache

Greedy decoding without a cache runs the whole sequence through the model at every step, although
the keys and values of the earlier positions never change. With a cache the prompt runs once
(*prefill*) and every later step runs one token per row (your `decode_step`, 4.2, and
`cached_greedy_search`, 4.3). The cell checks, with your code:

1. a prefill and one cached step give the logits of running the whole sequence without a cache (to
   float32 rounding), and the cache holds 2 tensors (keys, values) per layer of shape
   `(batch, kv_heads, positions, d_head)`: count its bytes against the formula;
2. `cached_greedy_search` gives the same tokens as `generate()` (which uses its own cache), on Llama
   and GPT-2, with and without an EOS, and as your `greedy_search`;
3. the **time per generated token** against the context length, for a larger random Llama (4 layers,
   128 features; prompts of 32, 128 and 512 tokens, 24 new tokens each, one at a time): your
   `greedy_search`, your `cached_greedy_search` and `generate()`. Without a cache each step costs a
   forward pass over the whole context; with one, the prefill is paid once and a step costs one
   position (plus attention over the cache).
"""),
        kit.code("experiment_cache", r'''
def one_cached_step():
    logits, cache = generation.decode_step(llama, input_ids, attention_mask)   # prefill: no cache yet
    keys, values = cache[0]
    print(f"after the prefill: {len(cache)} layers of (keys, values), each of shape {tuple(keys.shape)}")
    next_tokens = logits.argmax(-1, keepdim=True)                                # (batch, 1)
    sequence = torch.cat([input_ids, next_tokens], dim=-1)
    mask = torch.cat([attention_mask, torch.ones_like(next_tokens)], dim=-1)
    step_logits, cache = generation.decode_step(llama, next_tokens, mask, cache)  # one new token per row
    recomputed, _ = generation.model_step(llama, sequence, mask, positions(mask))  # the whole sequence again
    print(f"one cached step vs recomputing the whole sequence: max |logits difference| "
          f"{(step_logits - recomputed).abs().max().item():.1e}")
    config = llama.config
    measured = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache)
    d_head = config.hidden_size // config.num_attention_heads
    formula = 2 * config.num_hidden_layers * sequence.shape[0] * config.num_key_value_heads * sequence.shape[1] * d_head * 4
    print(f"cache after {sequence.shape[1]} positions: {measured:,} bytes; 2 (k, v) x {config.num_hidden_layers} layers "
          f"x {sequence.shape[0]} rows x {config.num_key_value_heads} kv heads x {sequence.shape[1]} positions "
          f"x {d_head} features x 4 bytes = {formula:,}")


def same_tokens():
    eos = int(hf_generate(llama, input_ids, attention_mask, max_new_tokens=12)[1, width + 2])
    for name, model in (("Llama", llama), ("GPT-2", gpt2)):
        for eos_token_id in (None, eos):
            cached = generation.cached_greedy_search(model, input_ids, attention_mask, max_new_tokens=12,
                                                     eos_token_id=eos_token_id, pad_token_id=PAD)
            expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=12, eos_token_id=eos_token_id)
            line = f"{name}, eos_token_id={eos_token_id}: cached_greedy_search == generate(): {same(cached, expected)}"
            plain = attempt("greedy_search", generation.greedy_search, model, input_ids, attention_mask,
                            max_new_tokens=12, eos_token_id=eos_token_id, pad_token_id=PAD)
            print(line + (f", == your greedy_search: {same(cached, plain)}" if plain is not None else ""))


attempt("decode_step", one_cached_step)
attempt("cached_greedy_search", same_tokens)

CONTEXTS, NEW_TOKENS = [32, 128, 512], 24
timing_model = generation.random_causal_lm("llama", vocab_size=VOCAB, hidden_size=128, num_layers=4, num_heads=4,
                                           num_kv_heads=2, pad_token_id=PAD, seed=1)
decoders_to_time = {
    "your greedy_search (no cache)": lambda ids, mask: generation.greedy_search(
        timing_model, ids, mask, max_new_tokens=NEW_TOKENS),
    "your cached_greedy_search": lambda ids, mask: generation.cached_greedy_search(
        timing_model, ids, mask, max_new_tokens=NEW_TOKENS),
    "generate() (with its cache)": lambda ids, mask: hf_generate(timing_model, ids, mask, max_new_tokens=NEW_TOKENS),
}
ms_per_token = {name: [] for name in decoders_to_time}
for context in CONTEXTS:
    ids, mask = left_padded([context], seed=context)
    for name, decode in decoders_to_time.items():
        if len(ms_per_token[name]) < len(ms_per_token["generate() (with its cache)"]):
            continue  # it failed at a shorter context
        started = time.perf_counter()
        if attempt(name, decode, ids, mask) is not None:
            ms_per_token[name].append(1000 * (time.perf_counter() - started) / NEW_TOKENS)
print(f"\nms per generated token ({NEW_TOKENS} new tokens, prefill included):")
print(f"{'context':>8} " + " ".join(f"{name:>30}" for name in decoders_to_time))
for i, context in enumerate(CONTEXTS):
    row = [f"{times[i]:>30.1f}" if i < len(times) else f"{'-':>30}" for times in ms_per_token.values()]
    print(f"{context:>8} " + " ".join(row))

if plt is not None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for (name, times), style in zip(ms_per_token.items(), ["s--", "o-", ":"]):
        if times:
            ax.plot(CONTEXTS[:len(times)], times, style, label=name)
    ax.set_xlabel("context length (prompt tokens)")
    ax.set_ylabel("ms per generated token")
    ax.set_ylim(bottom=0)
    ax.legend()
    plt.show()
'''),
        kit.markdown("question_cache", f"""
## Written answer 1 ({kit.points(CACHE_POINTS)}, graded by hand)

Llama 3 8B has 32 layers, 32 query heads and 8 key/value heads of 128 features each, and runs in
bfloat16 (2 bytes a number). How many bytes does its KV cache take **per token**, for one sequence of
**8,192 tokens**, and for a **batch of 32** such sequences? How much would it take with multi-head
attention (32 key/value heads), and why does grouped-query attention shrink it? Compare with the
size of the weights (8 billion parameters). Finally, use the timing table above: why does a cached
step cost about the same at every context length here, and what does each step still have to read
from memory, which makes long contexts slow on a GPU all the same? Answer in a few sentences.
"""),
        kit.written_answer("answer_cache", """
Per token and layer the cache keeps a key and a value for each key/value head: 2 x 8 x 128 numbers x
2 bytes = 4 KiB; over 32 layers that is 128 KiB per token. One sequence of 8,192 tokens takes
8,192 x 128 KiB = 1 GiB, a batch of 32 takes 32 GiB, twice the weights (8e9 x 2 bytes = 16 GB).
With multi-head attention (32 key/value heads) everything is 4 times larger: 512 KiB per token,
4 GiB per sequence, 128 GiB for the batch, more than an 80 GB GPU holds. GQA shrinks the cache by
n_heads / n_kv_heads = 4 because the cache stores keys and values, not queries: the 4 query heads of
a group read the same key/value head, so only 8 heads per layer are stored (the attention scores and
their FLOPs are unchanged: every query head still scores every key).
A cached step runs one position through every layer: the projections and MLP cost the same at every
context length, and only attention over the cache grows (linearly); on this small model that part is
tiny next to the fixed cost of a forward pass, so the time per token hardly moves, while without a
cache it grows with the context (the whole prefix runs again). On a GPU decoding is bound by memory
bandwidth, not arithmetic: each step must read all the weights and the whole KV cache of every
sequence once to produce one token per row. For long contexts and large batches the cache is the
bigger part of that (32 GiB against 16 GB above), so the time per step grows with the context, and a
smaller cache (GQA, MQA, a quantised cache) means faster steps and room for larger batches.
""", points=CACHE_POINTS),
        kit.markdown("about_experiment_filters", """
## Experiment 3: what top-k, top-p and min-p keep

The cell runs the Llama on 64 random prompts and takes the next-token logits of each. On those it
runs your `top_k_filter` (4.4, `top_k=10`), `top_p_filter` (4.5, `top_p=0.9`) and `min_p_filter`
(4.6, `min_p=0.1`), checks each against Hugging Face's `TopKLogitsWarper`, `TopPLogitsWarper` and
`MinPLogitsWarper`, and counts the tokens each keeps per context. Then it draws, with
`plot_filtered_distribution` (which calls your three filters), the most *confident* context (lowest
entropy) and the most *uncertain* one (highest entropy): bars are the probabilities, sorted, grey
where a filter removes the token; the dashed lines are each filter's cut and the black curve the
cumulative probability that top-p cuts.

Last, your `process_logits` (4.8) with `top_p=0.9` at several temperatures: the temperature comes
first (as in `generate()`), so the number of tokens top-p keeps depends on it.
"""),
        kit.code("experiment_filters", r'''
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

contexts, context_mask = left_padded([8] * 64, seed=5)
logits, _ = generation.model_step(llama, contexts, context_mask, positions(context_mask))   # (64, vocab)
probs = logits.softmax(-1)
entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)                                   # nats, per context
confident, uncertain = int(entropy.argmin()), int(entropy.argmax())
print(f"entropy of the 64 next-token distributions: {entropy.min():.2f} to {entropy.max():.2f} nats "
      f"(uniform over {VOCAB} tokens: {torch.log(torch.tensor(float(VOCAB))):.2f}); "
      f"top token's probability {probs.max(-1).values.min():.2f} to {probs.max(-1).values.max():.2f}")


def compare(name, yours, theirs):
    filtered = yours(logits)
    agrees = torch.equal(torch.isinf(filtered), torch.isinf(theirs(None, logits.clone())))
    kept = (filtered > float("-inf")).sum(-1)
    print(f"{name:<18} same tokens as {type(theirs).__name__:<16}: {agrees}; tokens kept per context: "
          f"min {int(kept.min())}, median {int(kept.median())}, max {int(kept.max())}; "
          f"confident context {int(kept[confident])}, uncertain context {int(kept[uncertain])}")


attempt("top_k_filter", compare, "top_k_filter(10)", lambda x: generation.top_k_filter(x, 10), TopKLogitsWarper(10))
attempt("top_p_filter", compare, "top_p_filter(0.9)", lambda x: generation.top_p_filter(x, 0.9), TopPLogitsWarper(0.9))
attempt("min_p_filter", compare, "min_p_filter(0.1)", lambda x: generation.min_p_filter(x, 0.1), MinPLogitsWarper(0.1))


def plot_two():
    fig, axes = plt.subplots(2, 1, figsize=(11, 7))
    try:
        for ax, row, name in ((axes[0], confident, "most confident"), (axes[1], uncertain, "most uncertain")):
            generation.plot_filtered_distribution(logits[row], top_k=10, top_p=0.9, min_p=0.1, n=40,
                                                  token_labels=LABELS, ax=ax,
                                                  title=f"{name} context (entropy {entropy[row]:.2f} nats)")
    except Exception:
        plt.close(fig)  # no half-drawn figure
        raise
    fig.tight_layout()
    plt.show()


if plt is not None:
    attempt("plot_filtered_distribution (your filters)", plot_two)


def temperature_then_top_p():
    for temperature in (0.5, 1.0, 1.5, 2.0):
        processed = generation.process_logits(logits, contexts, context_mask, temperature=temperature, top_p=0.9)
        if temperature == 0.5:
            print("\nprocess_logits(top_p=0.9): tokens kept (median over the 64 contexts) against the temperature")
        theirs = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
        kept = (processed > float("-inf")).sum(-1)
        print(f"  temperature {temperature:<4} keeps {int(kept.median()):>3} tokens; "
              f"same as generate()'s processors: {torch.allclose(processed, theirs)}")


attempt("process_logits", temperature_then_top_p)
'''),
        kit.markdown("question_filters", f"""
## Written answer 2 ({kit.points(FILTERS_POINTS)}, graded by hand)

Use the counts and the two figures above. Why does top-p adapt to the shape of the distribution
while top-k does not? Say what a fixed `k` does wrong in a very confident context and in a very
uncertain one. What does min-p measure that top-p does not? And why must the temperature be applied
*before* top-p and min-p, not after them? Answer in a few sentences.
"""),
        kit.written_answer("answer_filters", """
Top-k keeps a fixed number of tokens whatever their probabilities. In a confident context (one token
near probability 1) k = 10 still keeps 9 tokens the model thinks unlikely, and sampling picks one of
them a few percent of the time at every step, which over a long text derails it; in an uncertain
context with many plausible continuations, 10 tokens cut off plausible ones and make the text
narrower than the model is. Top-p keeps the smallest set of most probable tokens whose mass reaches
p: one or two tokens when the distribution is peaked, dozens when it is flat, so the size of the set
follows the entropy (the experiment's counts of top-p range widely while top-k's are constant).
Min-p keeps the tokens whose probability is at least min_p times the top token's: the cut is
relative to the model's confidence in its best token and does not depend on how the rest of the
mass is spread. Top-p needs the tail's total mass: where a long tail of tiny probabilities holds more
than 1 - p, top-p must keep part of it, notably at high temperature, where min-p still drops tokens
far below the best one.
The filters decide which tokens can be sampled from the distribution that is actually sampled, the
tempered one: top-p and min-p read probabilities, and the temperature changes them (a high
temperature flattens the distribution, so more tokens are needed to reach p). Filtering first and
dividing by T afterwards keeps the set of the untempered distribution, so "top_p = 0.9" would no
longer mean 90 % of the sampled mass; it would also differ from generate(), which applies the
temperature first.
""", points=FILTERS_POINTS),
        kit.markdown("about_experiment_sampling", """
## Experiment 4: seeded sampling

Your `sample` (4.9) draws each row's next token from the distribution your `process_logits` makes,
with a `torch.Generator` seeded by `seed`. The cell checks that:

1. the same seed gives the same tokens, and another seed other tokens;
2. it equals `torch.manual_seed(seed); model.generate(do_sample=True, ...)` on the CPU, for plain
   sampling and with temperature, top-k, top-p and min-p: `generate` draws from torch's global
   generator, once per step for the whole batch, and so must you (a second draw anywhere shifts
   every later token);
3. what the settings do: 16 samples of 20 tokens from one prompt, for greedy (`top_k=1`) and for
   several temperatures and filters. *Distinct* counts the different continuations; *log-likelihood*
   is the model's own mean log-probability per token of what was sampled (higher is more typical of
   the model). Low temperatures repeat the most likely text; high temperatures produce many
   continuations of low likelihood, and a filter pulls them back.
"""),
        kit.code("experiment_sampling", r'''
prompts, prompt_mask = left_padded([5, 7, 3], seed=11)


def reproducible():
    first = generation.sample(gpt2, prompts, prompt_mask, max_new_tokens=16, seed=7, temperature=1.5)
    again = generation.sample(gpt2, prompts, prompt_mask, max_new_tokens=16, seed=7, temperature=1.5)
    other = generation.sample(gpt2, prompts, prompt_mask, max_new_tokens=16, seed=8, temperature=1.5)
    print(f"seed 7 twice gives the same tokens: {same(first, again)}; seed 8 gives other tokens: {not same(first, other)}")


def against_generate():
    for settings in (dict(), dict(temperature=0.7, top_k=10, top_p=0.9), dict(temperature=1.5, min_p=0.1)):
        torch.manual_seed(1234)
        expected = hf_generate(llama, prompts, prompt_mask, max_new_tokens=16, do_sample=True,
                               top_k=settings.get("top_k", 0), **{k: v for k, v in settings.items() if k != "top_k"})
        yours = generation.sample(llama, prompts, prompt_mask, max_new_tokens=16, seed=1234, pad_token_id=PAD, **settings)
        print(f"sample(seed=1234, {settings}) == torch.manual_seed(1234); generate(do_sample=True): {same(yours, expected)}")


attempt("sample", reproducible)
attempt("sample", against_generate)

one, one_mask = left_padded([6], seed=13)
many, many_mask = one.repeat(16, 1), one_mask.repeat(16, 1)
SETTINGS = [("greedy (top_k=1)", dict(top_k=1)), ("temperature 0.7", dict(temperature=0.7)),
            ("temperature 1.0", dict()), ("temperature 1.0, top_p 0.9", dict(top_p=0.9)),
            ("temperature 1.5", dict(temperature=1.5)), ("temperature 1.5, min_p 0.1", dict(temperature=1.5, min_p=0.1))]


def diversity():
    for i, (label, settings) in enumerate(SETTINGS):
        sequences = generation.sample(llama, many, many_mask, max_new_tokens=20, seed=0, **settings)
        if i == 0:
            print(f"\n16 samples of 20 tokens after {text(one[0])}:")
            print(f"{'settings':<28} {'distinct':>8} {'log-likelihood':>15}   first sample")
        distinct = len({tuple(row) for row in sequences[:, 6:].tolist()})
        mask = torch.ones_like(sequences)
        per_token = log_likelihood(llama, sequences, mask, 6).mean().item() / (sequences.shape[1] - 6)
        print(f"{label:<28} {distinct:>8} {per_token:>15.2f}   {text(sequences[0, 6:])}")


attempt("sample", diversity)
'''),
        kit.markdown("about_experiment_beam", """
## Experiment 5: beam search and the length penalty

Your `beam_search` (4.10) keeps 4 hypotheses per prompt and returns the best finished one with its
score, its sum of log-probabilities divided by `generated_length ** length_penalty`. The EOS here is
the token the Llama predicts most often (the highest average probability along its greedy
continuations of the six prompts), so hypotheses can end early, at different lengths.

For each length penalty the cell compares your sequences and scores with
`generate(num_beams=4, length_penalty=..., output_scores=True, return_dict_in_generate=True)`'s
`sequences` and `sequences_scores`, and prints the length of the best hypothesis of each prompt
(generated tokens, EOS included; 16 means it never ended). The plot shows the mean length against the
length penalty.

Last, without an EOS (every hypothesis 16 tokens long): the sum of log-probabilities of your greedy
output and of your beam search's best. Greedy picks the best token at each step; beam search keeps
more than one prefix and often finds a sequence that is more likely overall.
"""),
        kit.code("experiment_beam", r'''
beam_prompts, beam_mask = left_padded([5, 8, 3, 6, 4, 7], seed=3)
beam_width, NEW = beam_prompts.shape[1], 16
greedy_reference = hf_generate(llama, beam_prompts, beam_mask, max_new_tokens=NEW)
full_mask = torch.cat([beam_mask, torch.ones(len(beam_prompts), NEW, dtype=torch.long)], dim=-1)
with torch.no_grad():
    next_probs = llama(input_ids=greedy_reference, attention_mask=full_mask,
                       position_ids=positions(full_mask)).logits[:, beam_width - 1:-1].softmax(-1)
beam_eos = int(next_probs.mean((0, 1)).argmax())
print(f"EOS for this experiment: {beam_eos} ({PIECES[beam_eos]!r})")


def generated_lengths(sequences):
    new = sequences[:, beam_width:]
    ended = new == beam_eos
    return torch.where(ended.any(-1), ended.int().argmax(-1) + 1, torch.tensor(new.shape[1]))


PENALTIES = [0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]
mean_lengths = []


def length_penalties():
    for length_penalty in PENALTIES:
        # Finished rows are padded with the EOS: generate()'s beam search reads a padding id of 0 as
        # "none" and pads with the EOS instead, so the comparison asks both for the EOS.
        options = dict(num_beams=4, max_new_tokens=NEW, length_penalty=length_penalty, eos_token_id=beam_eos,
                       pad_token_id=beam_eos)
        sequences, scores = generation.beam_search(llama, beam_prompts, beam_mask, **options)
        if not mean_lengths:
            print(f"{'length_penalty':>14} {'== generate()':>13}   best hypothesis' length per prompt   mean  "
                  "best score of prompt 0")
        expected = hf_generate(llama, beam_prompts, beam_mask, output_scores=True, return_dict_in_generate=True,
                               **options)
        agrees = same(sequences, expected.sequences) and torch.allclose(scores, expected.sequences_scores, atol=1e-5)
        lengths = generated_lengths(sequences)
        mean_lengths.append(lengths.float().mean().item())
        print(f"{length_penalty:>14} {str(agrees):>13}   {str(lengths.tolist()):<34} {mean_lengths[-1]:>5.1f}  "
              f"{scores[0].item():.3f}")


attempt("beam_search", length_penalties)
if plt is not None and mean_lengths:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(PENALTIES[:len(mean_lengths)], mean_lengths, "o-")
    ax.set_xlabel("length_penalty")
    ax.set_ylabel("mean length of the best hypothesis")
    ax.set_ylim(0, NEW + 1)
    plt.show()


def greedy_against_beam():
    greedy = generation.greedy_search(llama, beam_prompts, beam_mask, max_new_tokens=NEW)
    beam, _ = generation.beam_search(llama, beam_prompts, beam_mask, num_beams=4, max_new_tokens=NEW)
    print("\nwithout an EOS, sum of log-probabilities of the 16 new tokens, per prompt:")
    print("  your greedy_search:", [round(x, 2) for x in log_likelihood(llama, greedy, full_mask, beam_width).tolist()])
    print("  your beam_search:  ", [round(x, 2) for x in log_likelihood(llama, beam, full_mask, beam_width).tolist()])


attempt("greedy_search and beam_search", greedy_against_beam)
'''),
        kit.markdown("question_beam", f"""
## Written answer 3 ({kit.points(BEAM_POINTS)}, graded by hand)

Use the table above. Why does beam search prefer short hypotheses when `length_penalty = 0` (raw sums
of log-probabilities), and what does `length_penalty` change? What does `length_penalty = 1` compare
the hypotheses by? Beam search finds more likely text than greedy decoding, and is the standard
decoder for translation; why is it a poor choice for open-ended generation such as a story, even
with a length penalty? Answer in a few sentences.
"""),
        kit.written_answer("answer_beam", """
Every token adds a log-probability, which is negative, so a hypothesis' sum can only fall as it
grows: a hypothesis that ends early stops paying, and among finished hypotheses compared by their
raw sums the shortest tends to win even if each of its tokens is less likely than the longer one's
(with an EOS that is somewhat likely everywhere, beam search ends almost at once). Hugging Face
divides the sum by generated_length ** length_penalty: with 1 the hypotheses are compared by their
mean log-probability per token, which does not penalise length as such; values above 1 favour
longer hypotheses, values between 0 and 1 sit in between, negative ones favour shorter ones. The
table shows the best hypotheses getting longer as the penalty grows.
For translation the right outputs form a narrow set tied to the source sentence, and the model's
most likely output is usually a good one. For open-ended text the most likely sequences are not what
people write: maximising likelihood gives generic, bland text that falls into repetition loops (a
repeated phrase becomes more likely each time; Holtzman et al. 2020), and beam search, which
searches harder for high likelihood, makes this worse. Human text has the model's typical, not its
maximal, likelihood, which sampling with temperature and top-p or min-p reproduces.
""", points=BEAM_POINTS),
        kit.markdown("about_experiment_repetition", """
## Experiment 6: the repetition penalty

Greedy decoding falls into loops: once a phrase repeats, the model finds it more likely still, as
small trained models do too. The repetition penalty makes every token already in the row less
likely: a positive logit is divided by the penalty, a negative one multiplied by it. The cell first
runs your `apply_repetition_penalty` (4.7) on a hand-made row, against Hugging Face's
`RepetitionPenaltyLogitsProcessor`. Then it decodes 8 prompts greedily with the penalty on the random
GPT-2 (your `sample` with `top_k=1`, which is greedy decoding with your processors; the cell checks
it against `generate(do_sample=False, repetition_penalty=...)`), 48 new tokens each, and measures
the share of repeated 3-grams (3-grams starting at a new token that occurred earlier in the row) and
the number of different tokens per row.
"""),
        kit.code("experiment_repetition", r'''
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor


def by_hand():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0, -0.5]])
    history = torch.tensor([[0, 1, 1, 4]])  # tokens 0, 1 (twice) and 4 occurred; 2 and 3 did not
    yours = generation.apply_repetition_penalty(scores, history, 2.0)
    theirs = RepetitionPenaltyLogitsProcessor(2.0)(history, scores.clone())
    print(f"logits {scores[0].tolist()}, history {history[0].tolist()}, penalty 2.0")
    print(f"  yours:        {yours[0].tolist()}\n  Hugging Face: {theirs[0].tolist()}")


attempt("apply_repetition_penalty", by_hand)

loop_prompts, loop_mask = left_padded([6] * 8, seed=17)
loop_width = loop_prompts.shape[1]


def repeated_trigrams(sequences):
    """The share of the 3-grams that start at a new token and occurred earlier in their row."""
    repeats = total = 0
    for row in sequences.tolist():
        seen = set()
        for i in range(len(row) - 2):
            gram = tuple(row[i:i + 3])
            if i >= loop_width:
                total += 1
                repeats += gram in seen
            seen.add(gram)
    return repeats / total


penalties, repeated = [], []


def penalty_effect():
    for penalty in (1.0, 1.1, 1.2, 1.5, 2.0):
        sequences = generation.sample(gpt2, loop_prompts, loop_mask, max_new_tokens=48, seed=0, top_k=1,
                                      repetition_penalty=penalty)
        if not penalties:
            print(f"\n{'penalty':>7} {'== generate()':>13} {'repeated 3-grams':>16} {'distinct tokens per row':>24}"
                  "   row 0 (first 24 tokens)")
        expected = hf_generate(gpt2, loop_prompts, loop_mask, max_new_tokens=48, repetition_penalty=penalty)
        distinct = sum(len(set(row)) for row in sequences[:, loop_width:].tolist()) / len(sequences)
        penalties.append(penalty)
        repeated.append(repeated_trigrams(sequences))
        print(f"{penalty:>7} {str(same(sequences, expected)):>13} {repeated[-1]:>16.0%} {distinct:>24.1f}   "
              f"{text(sequences[0, loop_width:loop_width + 24])}")


attempt("sample with repetition_penalty", penalty_effect)
if plt is not None and repeated:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(penalties, [100 * r for r in repeated], "o-")
    ax.set_xlabel("repetition_penalty (greedy decoding)")
    ax.set_ylabel("repeated 3-grams (%)")
    ax.set_ylim(bottom=0)
    plt.show()
'''),
        kit.markdown("about_experiment_stops", """
## Experiment 7: stop sequences, in tokens and in text

A stop sequence ends a row when its last tokens equal it (your `stop_sequence_hit`, 4.11, which
`cut_at_stops` calls after each token). The cell takes the Llama's greedy output and a stop sequence
of two tokens that row 0 produces on the way, and cuts every row at its first stop.

Text stops are harder: a stop string may span several tokens, and the token that completes it may
run past it. The cell feeds your `stop_string_hit` (4.12) a made-up answer token by token, with the
stop strings `"\\n\\n"` and `"Question:"`, next to the check a first attempt often makes (does the text
so far *end* with a stop string?).

Last, everything together: `generate_text` tokenizes two prompts (left padding), decodes with your
`cached_greedy_search`, `sample` or `beam_search`, cuts at a stop string with your `stop_string_hit`
and detokenizes. The stop string is two characters that span a token boundary in the greedy text.
"""),
        kit.code("experiment_stops", r'''
def token_stops():
    sequences = hf_generate(llama, input_ids, attention_mask, max_new_tokens=12)
    stop = sequences[0, width + 4:width + 6].tolist()  # two tokens row 0 produces on the way
    cut = generation.cut_at_stops(sequences, width, stop_sequences=[stop], pad_token_id=PAD)
    print(f"stop sequence {stop} ({[PIECES[t] for t in stop]}):")
    for row in range(len(sequences)):
        print(f"  row {row}: {text(sequences[row, width:]):<42} -> {text(cut[row, width:])}")


attempt("stop_sequence_hit", token_stops)


def text_stops():
    tokens = ["The", " answer", " is", " 4", ".", "\n", "\nQuest", "ion", ":", " What"]
    stops = ["\n\n", "Question:"]
    for t in range(1, len(tokens) + 1):
        so_far = "".join(tokens[:t])
        hit = generation.stop_string_hit(tokens[:t], stops)
        if t == 1:
            print(f"\nstop strings {stops}; tokens arrive one at a time:")
        naive = any(so_far.endswith(stop) for stop in stops)
        print(f"  + {tokens[t - 1]!r:<10} stop_string_hit: {str(hit):<5}  text ends with a stop: {str(naive):<5}")
        if hit:
            print(f"  stops after {t} tokens: {so_far!r}")
            break


attempt("stop_string_hit", text_stops)


def all_together():
    prompts_text = ["ka ▁ lo mi", "the ▁ st op ▁ sa"]
    free = generation.generate_text(llama, tokenizer, prompts_text, max_new_tokens=16)
    batch = tokenizer(prompts_text, return_tensors="pt", padding=True)
    greedy = hf_generate(llama, batch["input_ids"], batch["attention_mask"], max_new_tokens=16)
    pieces = [PIECES[t] for t in greedy[0, -16:].tolist()]
    stop = pieces[5][-1] + pieces[6][0]  # spans the boundary between the 6th and 7th new tokens of prompt 0
    print(f"\ngenerate_text, greedy, no stop: {free}")
    for strategy, options in (("greedy", {}), ("sample", dict(seed=0, temperature=0.8)), ("beam", dict(num_beams=4))):
        cut = generation.generate_text(llama, tokenizer, prompts_text, max_new_tokens=16, strategy=strategy,
                                       stop_strings=[stop], **options)
        print(f"generate_text, {strategy:<6} stop_strings=[{stop!r}]: {cut}")


attempt("generate_text", all_together)
'''),
    ]
