"""Chapter 5 assignment (pretraining): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``pretraining.py`` on the course corpus, tokenized with the
course tokenizer of Chapter 1 (random token ids stand in if it cannot be built): their packing, on
hand-made documents and on the corpus (blocks, tokens kept, end-of-text tokens per block, a block's
text), their document split and batch order against ``RandomSampler`` and ``BatchSampler``; their
causal-LM loss against the losses of a random ``LlamaForCausalLM`` and ``GPT2LMHeadModel`` on the
same batch, with and without padding; their masked-LM corruption, measured (15%, 80/10/10) and
against ``DataCollatorForLanguageModeling``; their learning-rate schedule against
``get_cosine_schedule_with_warmup`` and its min-lr variant, plotted; their weight-decay groups of a
GPT-2 and of the course LM, listed; and a short run of the course LM of the ``"tiny"`` preset with
their ``train_steps`` (the loss curve against the unigram and uniform baselines, the loss at the
first token of a document against elsewhere, tokens/s and their MFU); and their AdamW and gradient
clipping against ``torch.optim.AdamW`` and ``clip_grad_norm_``, a resume from a state dict,
decoupled decay measured against L2, and a checkpoint round trip with their save and load. Every call of an exercise goes through ``attempt``, so an
unfinished or broken exercise is reported and the rest still runs.
"""

PACKING_POINTS = 3  # written answers, graded by hand
DECAY_POINTS = 2
MFU_POINTS = 2


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 5."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 5: pre-training a small language model",
            what="""
what it takes to pre-train a language model on raw text. The data (pack tokenized documents into
blocks, split the corpus by document, draw batches in a seeded order), the objectives (the
shifted next-token loss of a causal LM, and BERT's masked-LM corruption for comparison), the
optimisation (warmup and cosine decay of the learning rate, the parameters AdamW decays, the
training step with gradient accumulation, clipping and mixed precision, AdamW and gradient
clipping themselves, from scratch, and checkpoints that resume exactly) and the cost (model FLOPs
utilisation).
""",
            contract="""
and the module docstring the conventions all of them share: labels are the inputs, ignored
targets, token-weighted means, seeds, weight decay
""",
            written=(PACKING_POINTS, DECAY_POINTS, MFU_POINTS),
            more=f"""
Everything else in `{module}.py` is already written and calls your functions: `prepare_data` and
`step_batches` (the data pipeline), `make_optimizer` and `make_lr_scheduler`, `evaluate`, the
presets (`"tiny"`, `"cpu"`, `"gpu"`), the Accelerate loop `pretrain`, the baselines `unigram_loss`
and `uniform_loss`, `model_flops_per_token` and `measure_peak_flops`, and the plots.

The experiments use the course corpus (Python's own documentation) and the course tokenizer of
Chapter 1, and train the course LM of Chapter 3 for a few dozen steps: small enough to run in well
under a minute on a laptop's CPU, large enough to see every piece work.
""",
            experiments="""
Run the experiments: they compare *your* functions with Hugging Face's (`LlamaForCausalLM`'s own
loss, `DataCollatorForLanguageModeling`, `get_cosine_schedule_with_warmup`, PyTorch's samplers),
measure your packing and masking, and train a small model with your training step. An exercise
you have not done yet is reported, not fatal, so you can run them at any stage. Then answer the
three questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import math
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

from course_lib.corpus import load_corpus

logging.set_verbosity_error()

# The course corpus (Python's documentation, one text per document): its training split.
documents = load_corpus("train")
print(f"course corpus: {len(documents)} documents, {sum(map(len, documents)):,} characters")

# The course tokenizer (Chapter 1's BPE, 4,096 tokens), as a transformers tokenizer. It is trained on
# first use (a few seconds) and then loaded from the course cache.
tokenizer = attempt("the course tokenizer (course_lib's Chapter 1)", pretraining.course_tokenizer)
if tokenizer is not None:
    EOS, PAD, VOCAB = tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)
    token_ids = pretraining.tokenize_documents(tokenizer, documents)
    print(f"course tokenizer: {VOCAB} tokens, <|endoftext|> = {EOS}, <|pad|> = {PAD}; "
          f"{sum(map(len, token_ids)):,} tokens in the corpus")
else:  # random documents of the corpus's lengths stand in, so that the experiments still run
    EOS, PAD, VOCAB = 0, 1, 4096
    gen = torch.Generator().manual_seed(0)
    token_ids = [torch.randint(4, VOCAB, (max(1, len(text) // 4),), generator=gen).tolist() for text in documents]
    print("random token ids stand in for the corpus until the course tokenizer works")

BLOCK = pretraining.PRESETS["tiny"].block_size  # 32 tokens: the block size of the training run below
'''),
        kit.markdown("about_experiment_data", """
## Experiment 1: packing, the document split and the batch order

A language model trains on blocks of a fixed length. Your `pack_blocks` (5.1) appends the
end-of-text token `<|endoftext|>` to every document, concatenates them and cuts the stream into
blocks, dropping the incomplete tail: no padding at all, and most blocks hold the end of one document
and the start of the next. The cell first packs four hand-made documents (one of them empty), then:

- splits the corpus's documents into training and validation documents with your `split_documents`
  (5.2; 5% for validation, seed 0), *before* packing, so that no document is on both sides;
- packs the training documents into blocks of 32, 128 and 512 tokens and counts the blocks, the
  share of the token stream they keep, and the end-of-text tokens per block (the document boundaries
  inside a block), and shows the text of one block with a boundary in it;
- draws one epoch of batches with your `batch_order` (5.3) and compares it with PyTorch's
  `BatchSampler(RandomSampler(..., generator=torch.Generator().manual_seed(seed)), batch_size,
  drop_last=True)`, the order of `DataLoader(shuffle=True, drop_last=True)`.

The histogram shows how long the documents are, against the block sizes.
"""),
        kit.code("experiment_data", r'''
from torch.utils.data import BatchSampler, RandomSampler


def by_hand():
    docs = [[11, 12, 13], [21, 22], [], [31, 32, 33, 34, 35]]
    blocks = pretraining.pack_blocks(docs, block_size=4, eos_token_id=0)
    print(f"pack_blocks({docs}, block_size=4, eos_token_id=0):")
    print(blocks)


attempt("pack_blocks", by_hand)

n_validation = math.ceil(0.05 * len(documents))
split = attempt("split_documents", pretraining.split_documents, len(documents), 0.05, 0)
if split is not None:
    train_docs, validation_docs = split
    print(f"\nsplit_documents({len(documents)}, 0.05, seed=0): {len(train_docs)} training and "
          f"{len(validation_docs)} validation documents; in both: {len(set(train_docs) & set(validation_docs))}; "
          f"every document once: {sorted(train_docs + validation_docs) == list(range(len(documents)))}")
else:
    train_docs, validation_docs = list(range(len(documents) - n_validation)), list(range(len(documents) - n_validation, len(documents)))
    print(f"until split_documents works: the last {n_validation} documents are the validation documents")
train_ids = [token_ids[i] for i in train_docs]
validation_ids = [token_ids[i] for i in validation_docs]


def packing_statistics():
    stream = sum(len(doc) + 1 for doc in train_ids if doc)  # every non-empty document and its EOS
    for block_size in (32, 128, 512):
        blocks = pretraining.pack_blocks(train_ids, block_size, EOS)
        if block_size == 32:
            print(f"\n{'block size':>10} {'blocks':>7} {'kept':>7} {'EOS tokens':>10} {'EOS per block':>13} "
                  f"{'blocks with a boundary':>22}")
        eos_per_block = (blocks == EOS).sum(-1)
        print(f"{block_size:>10} {blocks.shape[0]:>7} {blocks.numel() / stream:>7.2%} {int(eos_per_block.sum()):>10} "
              f"{eos_per_block.float().mean().item():>13.3f} {(eos_per_block > 0).float().mean().item():>22.1%}")
    print(f"(the stream: {stream:,} tokens, {sum(1 for doc in train_ids if doc)} documents and their EOS tokens)")
    blocks = pretraining.pack_blocks(train_ids, 128, EOS)
    if tokenizer is not None:
        row = int((blocks == EOS).any(-1).nonzero()[0])
        print(f"\nblock {row} of 128 tokens, with a document boundary:\n{tokenizer.decode(blocks[row])!r}")


attempt("pack_blocks", packing_statistics)
if plt is not None:
    ax = pretraining.plot_document_lengths([len(doc) for doc in train_ids], block_size=128)
    ax.set_title("training documents of the course corpus")
    plt.show()

train_blocks = attempt("pack_blocks", pretraining.pack_blocks, train_ids, BLOCK, EOS)
validation_blocks = attempt("pack_blocks", pretraining.pack_blocks, validation_ids, BLOCK, EOS)
if train_blocks is not None and validation_blocks is not None:
    print(f"\nfor the training run: {tuple(train_blocks.shape)} training blocks, "
          f"{tuple(validation_blocks.shape)} validation blocks")


def batches():
    n = len(train_blocks) if train_blocks is not None else 1000
    order = pretraining.batch_order(n, 8, seed=0)
    drawn = [i for batch in order for i in batch]
    sampler = list(BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), 8,
                                drop_last=True))
    print(f"\nbatch_order({n}, 8, seed=0): {len(order)} batches of 8, every block at most once: "
          f"{len(set(drawn)) == len(drawn)}, left out: {n - len(drawn)}; first batch {order[0]}")
    print(f"  == BatchSampler(RandomSampler(seed 0), 8, drop_last=True): {order == sampler}; "
          f"the same again with seed 0: {order == pretraining.batch_order(n, 8, seed=0)}; "
          f"another with seed 1: {order != pretraining.batch_order(n, 8, seed=1)}")


attempt("batch_order", batches)
'''),
        kit.markdown("about_experiment_loss", """
## Experiment 2: your causal-LM loss against Hugging Face's

For a causal LM the labels are the inputs themselves; your `causal_lm_loss` (5.4) shifts them, so
that the logits at position `t` are scored against the token at `t + 1`. Hugging Face's
`...ForCausalLM` models compute the same loss when called with `labels=input_ids`. The cell runs two
small random models (a Llama and a GPT-2) on four training blocks and compares:

1. your loss with the model's own `loss`, on the blocks as they are;
2. the same with padding: rows 1 and 3 end early (right padding, `attention_mask` 0 after their
   end). Hugging Face's models do not read the attention mask for the loss, so their labels get
   `-100` at the padding; yours must leave those targets out from the mask alone;
3. `reduction="sum"` divided by the number of counted targets, which must be the mean.

A random model predicts almost uniformly: its loss is close to `ln(vocab_size)`.
"""),
        kit.code("experiment_loss", r'''
torch.manual_seed(0)
llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()

if train_blocks is not None:
    loss_batch = train_blocks[:4]
else:
    loss_batch = torch.randint(4, VOCAB, (4, BLOCK), generator=torch.Generator().manual_seed(0))
loss_mask = torch.ones_like(loss_batch)
loss_mask[1, 20:] = 0
loss_mask[3, 9:] = 0
padded = loss_batch.masked_fill(loss_mask == 0, PAD)


def against_hugging_face():
    for name, model in (("Llama", llama), ("GPT-2", gpt2)):
        with torch.no_grad():
            plain = model(input_ids=loss_batch, labels=loss_batch)
            masked = model(input_ids=padded, attention_mask=loss_mask, labels=padded.masked_fill(loss_mask == 0, -100))
        yours = pretraining.causal_lm_loss(plain.logits, loss_batch)
        yours_padded = pretraining.causal_lm_loss(masked.logits, padded, loss_mask)
        total = pretraining.causal_lm_loss(masked.logits, padded, loss_mask, reduction="sum")
        n_targets = int(loss_mask[:, 1:].sum())
        print(f"{name}: blocks: yours {yours.item():.6f}, the model's {plain.loss.item():.6f} "
              f"(gap {max_gap(yours, plain.loss):.1e}); with padding: yours {yours_padded.item():.6f}, "
              f"the model's {masked.loss.item():.6f} (gap {max_gap(yours_padded, masked.loss):.1e}); "
              f"sum / {n_targets} targets = {total.item() / n_targets:.6f}")
    print(f"ln(vocab_size) = ln({VOCAB}) = {math.log(VOCAB):.6f}")


attempt("causal_lm_loss", against_hugging_face)
'''),
        kit.markdown("about_experiment_masking", """
## Experiment 3: masked-LM corruption, measured

BERT trains on another objective: it picks 15% of the tokens as targets, replaces 80% of those with
a mask token, 10% with a random token and keeps 10% unchanged, and predicts the original tokens at
the picked positions only. The course tokenizer has no mask token (it serves a causal LM), so
`<|im_start|>` stands in for it here. The cell corrupts 256 training blocks (8,192 tokens) with your
`mask_tokens` (5.5), `<|endoftext|>` and `<|pad|>` being special (never picked), and measures every
share. A random replacement may draw the token it replaces (1 time in 4,096), so "unchanged" is a
little above 10%. Last, it compares your output with Hugging Face's `DataCollatorForLanguageModeling`
with a generator of the same seed: the same draws in the same order give the same tokens.
"""),
        kit.code("experiment_masking", r'''
import copy

MASK = tokenizer.convert_tokens_to_ids("<|im_start|>") if tokenizer is not None else 2
if train_blocks is not None and len(train_blocks) >= 256:
    mlm_ids = train_blocks[:256]
else:
    mlm_ids = torch.randint(4, VOCAB, (256, BLOCK), generator=torch.Generator().manual_seed(1))
    mlm_ids[:, ::9] = EOS


def masking_statistics():
    original = mlm_ids.clone()
    corrupted, labels = pretraining.mask_tokens(mlm_ids, vocab_size=VOCAB, mask_token_id=MASK,
                                                special_token_ids=[EOS, PAD], seed=0)
    special = torch.isin(mlm_ids, torch.tensor([EOS, PAD]))
    picked = labels != -100
    n = int(picked.sum())
    print(f"mask_tokens on {mlm_ids.numel():,} tokens ({int(special.sum())} special): picked {n} = "
          f"{n / int((~special).sum()):.2%} of the ordinary tokens; special tokens picked: {int((picked & special).sum())}")
    print(f"  of the picked tokens: mask token {(corrupted[picked] == MASK).float().mean().item():.1%}, "
          f"another token {((corrupted[picked] != MASK) & (corrupted[picked] != mlm_ids[picked])).float().mean().item():.1%}, "
          f"unchanged {(corrupted[picked] == mlm_ids[picked]).float().mean().item():.1%}")
    print(f"  labels are the original tokens where picked: {torch.equal(labels[picked], mlm_ids[picked])}; "
          f"tokens not picked unchanged: {torch.equal(corrupted[~picked], mlm_ids[~picked])}; "
          f"input_ids left as they were: {torch.equal(mlm_ids, original)}")
    if tokenizer is not None:
        print(f"  a corrupted block: {tokenizer.decode(corrupted[0])[:300]!r}")
    return corrupted, labels


def against_collator(yours):
    from transformers import DataCollatorForLanguageModeling

    mlm_tokenizer = copy.deepcopy(tokenizer)
    mlm_tokenizer.mask_token = "<|im_start|>"
    collator = DataCollatorForLanguageModeling(mlm_tokenizer, mlm_probability=0.15)
    collator.generator = torch.Generator().manual_seed(0)
    special = torch.isin(mlm_ids, torch.tensor([EOS, PAD]))
    theirs = collator.torch_mask_tokens(mlm_ids.clone(), special_tokens_mask=special)
    print(f"  == DataCollatorForLanguageModeling (generator seeded 0): inputs {torch.equal(yours[0], theirs[0])}, "
          f"labels {torch.equal(yours[1], theirs[1])}")


masked = attempt("mask_tokens", masking_statistics)
if masked is not None and tokenizer is not None:
    attempt("DataCollatorForLanguageModeling", against_collator, masked)
'''),
        kit.markdown("about_experiment_schedule", """
## Experiment 4: the learning-rate schedule

Your `lr_at` (5.6) gives the learning rate of each optimizer step: a linear warmup from 0, then a
cosine decay to `min_lr_ratio` times the peak. The cell takes the schedule of the `"cpu"` preset
(200 steps, 20 of warmup, peak 3e-3) and compares your rates, step by step, with what Hugging Face's
schedulers set on an optimizer: `get_cosine_schedule_with_warmup` (decay to 0) and
`get_cosine_with_min_lr_schedule_with_warmup` (decay to 10% of the peak, the preset's own). The plot
shows both curves of each; yours must lie on theirs.
"""),
        kit.code("experiment_schedule", r'''
from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

cpu = pretraining.preset("cpu")
PEAK, WARMUP, TOTAL = cpu.lr, cpu.warmup_steps, cpu.total_steps
SCHEDULES = [
    (0.0, "get_cosine_schedule_with_warmup", lambda opt: get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)),
    (cpu.min_lr_ratio, "get_cosine_with_min_lr_schedule_with_warmup",
     lambda opt: get_cosine_with_min_lr_schedule_with_warmup(opt, WARMUP, TOTAL, min_lr_rate=cpu.min_lr_ratio)),
]
curves = []


def hugging_face_rates(make):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    scheduler, rates = make(optimizer), []
    for _ in range(TOTAL + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def schedules():
    for min_lr_ratio, name, make in SCHEDULES:
        theirs = hugging_face_rates(make)
        yours = [pretraining.lr_at(step, peak_lr=PEAK, warmup_steps=WARMUP, total_steps=TOTAL, min_lr_ratio=min_lr_ratio)
                 for step in range(TOTAL + 1)]
        gap = max(abs(a - b) for a, b in zip(yours, theirs))
        print(f"min_lr_ratio {min_lr_ratio}: lr_at against {name}: largest gap {gap:.1e} over steps 0-{TOTAL}; "
              f"steps 0, 10, 20, 110, 200: {[f'{yours[s]:.2e}' for s in (0, 10, 20, 110, 200)]}")
        curves.append((min_lr_ratio, name, yours, theirs))


attempt("lr_at", schedules)
if plt is not None and curves:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for min_lr_ratio, name, yours, theirs in curves:
        ax.plot(theirs, linewidth=5, alpha=0.3, label=name)
        ax.plot(yours, "--", label=f"your lr_at, min_lr_ratio={min_lr_ratio}")
    ax.axvline(WARMUP, color="gray", linestyle=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8)
    plt.show()
'''),
        kit.markdown("about_experiment_decay", """
## Experiment 5: which parameters AdamW decays

Your `weight_decay_groups` (5.7) splits a model's parameters into the ones AdamW decays (the weight
matrices of linear maps) and the rest (biases, normalisation weights, embedding tables). The cell
lists both groups for the random GPT-2 of Experiment 2 (it has biases, LayerNorms and learned
position embeddings) and for the course LM of the `"tiny"` preset (RMSNorm, no biases, tied input
and output embeddings), with their number of parameters. Layers repeat, so `h.<i>.` stands for
every layer's copy of a name.
"""),
        kit.code("experiment_decay", r'''
import re


def course_model(config):
    """A fresh course LM of ``config`` (Chapter 3's model; it runs course_lib's Chapters 2-3 code)."""
    from course_lib.language_model import CourseLMForCausalLM, course_lm_config

    model_config = course_lm_config(config.model_size, config.style, vocab_size=VOCAB, bos_token_id=EOS,
                                    eos_token_id=EOS, pad_token_id=PAD, max_position_embeddings=512,
                                    **config.model_overrides)
    torch.manual_seed(config.seed)
    model = CourseLMForCausalLM(model_config)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))  # fails here if Chapter 2 or 3 is not done
    return model


def show_groups(name, model):
    parameters = dict(model.named_parameters())
    groups = pretraining.weight_decay_groups(model, 0.1)
    print(f"{name}: {len(parameters)} parameter tensors, {sum(p.numel() for p in parameters.values()):,} parameters")
    for group in groups:
        names = list(dict.fromkeys(re.sub(r"\.\d+\.", ".<i>.", n) for n in group["params"]))
        count = sum(parameters[n].numel() for n in group["params"])
        print(f"  weight_decay={group['weight_decay']}: {len(group['params'])} tensors, {count:,} parameters")
        for n in names:
            print(f"      {n}")


attempt("weight_decay_groups", show_groups, "GPT-2", gpt2)
tiny = pretraining.preset("tiny")
tiny_lm = attempt("the course LM (course_lib's Chapters 2-3)", course_model, tiny)
if tiny_lm is not None:
    attempt("weight_decay_groups", show_groups, "course LM (tiny)", tiny_lm)
'''),
        kit.markdown("question_decay", f"""
## Written answer 1 ({kit.points(DECAY_POINTS)}, graded by hand)

Use the lists above. AdamW's decoupled weight decay multiplies every decayed parameter by
`1 - lr * weight_decay` at every step. Why is it applied to the weight matrices of linear maps but
not to biases and normalisation weights (what would decay do to an RMSNorm weight, whose right value
is near 1)? And why not to the token embedding table, although it is a matrix (think of a rare
token's row, updated only in the few steps whose batch contains that token)? Answer in a few
sentences.
"""),
        kit.written_answer("answer_decay", """
Weight decay is a regulariser: it pulls parameters towards 0 so that the weight matrices, which
carry the model's capacity, stay small unless the data asks otherwise. Biases and normalisation
weights are few (1-D, a vector per layer), regularise nothing in that sense, and their right value is
not near 0: an RMSNorm or LayerNorm gain should sit near 1 (its initialisation), and decay pulls it
towards 0 at every step, shrinking the signal of the whole layer that the next matrices must make up
for; a bias that decays is pulled away from the offset the data needs. Decaying them costs accuracy
and buys nothing.
The embedding table is a matrix but a lookup table, not a linear map over every input: a token's
row gets a gradient only in the steps where the token occurs, but decoupled decay shrinks every row
at every step. A rare token's row is therefore shrunk many times between two updates and drifts
towards 0, so rare tokens end up with small, poorly trained embeddings (and with tied embeddings,
low output logits). Hence GPT-style training recipes leave the embeddings (token and position) out
of the decayed group.
""", points=DECAY_POINTS),
        kit.markdown("about_experiment_training", """
## Experiment 6: a short pre-training run with your training step

Everything together: the course LM of the `"tiny"` preset (2 layers of width 64, about 0.4M
parameters, most of them in the 4,096 x 64 embedding table) trains for 60 optimizer steps on the
blocks of 32 tokens that your `pack_blocks` made, each step 2 micro-batches of 4 blocks (gradient
accumulation, 256 tokens per step), through your `train_steps` (5.8): AdamW with your weight-decay
groups, your learning-rate schedule (warmup 6 steps), clipping at norm 1. The batches come from the
course's `step_batches`, which draws them with your `batch_order`. The cell then reports:

- the training loss per step and the validation loss before and after (the course's `evaluate`,
  which sums your `causal_lm_loss` over 64 validation blocks), against two baselines: the
  **uniform** model (`ln 4096 = 8.32` nats per token) and the **unigram** model, the token
  frequencies of the training blocks, the best a model can do without reading the context;
- the loss at the first token of a document (the target right after an `<|endoftext|>`) against the
  loss at every other target of the same blocks, the blocks with a document boundary (training and
  validation; the run has seen only a few of them), with your loss and `ignore_index`;
- the throughput in tokens per second and your `mfu` (5.9): the share of this CPU's peak (a large
  matrix product, measured) that the model's training arithmetic, 3 x its forward FLOPs per token,
  uses.

On one CPU thread the run takes a few seconds. In 15k tokens the model learns little more than
the tokens' frequencies: its loss falls from the uniform baseline to near the unigram one. To go well
below it, the model must learn from the context, which takes more data and steps (the `"cpu"`
preset: 200 steps of 2,048 tokens, a few minutes).
"""),
        kit.code("experiment_training", r'''
config = pretraining.preset("tiny", total_steps=60, warmup_steps=6)
run = {}


def train():
    model = course_model(config)
    validation = validation_blocks[:64]
    run["before"] = pretraining.evaluate(model, validation, micro_batch_size=16)
    seconds, clock = [], [time.perf_counter()]

    def on_step(stats):
        seconds.append(time.perf_counter() - clock[0])
        clock[0] = time.perf_counter()

    batches = pretraining.step_batches(train_blocks, config)  # your batch_order draws them
    history = pretraining.train_steps(model, batches, config.settings(), on_step=on_step)
    run.update(model=model, history=history, seconds=seconds,
               after=pretraining.evaluate(model, validation, micro_batch_size=16))
    steps = len(history["loss"])
    tokens_per_second = sum(history["tokens"][1:]) / sum(seconds[1:])  # the first step warms up
    run["tokens_per_second"] = tokens_per_second
    print(f"{steps} steps of {config.tokens_per_step()} tokens in {sum(seconds):.1f} s "
          f"({tokens_per_second:,.0f} tokens/s); learning rate of steps 0, 5, 6, 59: "
          f"{[format(history['lr'][s], '.1e') for s in (0, 5, 6, steps - 1) if s < steps]}")
    print(f"training loss: first step {history['loss'][0]:.3f}, mean of the last 10 steps "
          f"{sum(history['loss'][-10:]) / len(history['loss'][-10:]):.3f}; gradient norm before clipping: "
          f"first {history['grad_norm'][0]:.2f}, last {history['grad_norm'][-1]:.2f}")
    print(f"validation loss: before {run['before']:.3f}, after {run['after']:.3f}; baselines: "
          f"unigram {run['unigram']:.3f}, uniform {run['uniform']:.3f}")


def loss_at_document_starts():
    blocks = torch.cat([train_blocks, validation_blocks])
    blocks = blocks[(blocks[:, :-1] == EOS).any(-1)]       # the blocks with a document boundary
    with torch.no_grad():
        logits = run["model"].eval()(input_ids=blocks).logits
    after_eos = torch.full_like(blocks, -100)
    elsewhere = torch.full_like(blocks, -100)
    starts = blocks[:, :-1] == EOS                         # the target at t + 1 follows an EOS at t
    after_eos[:, 1:] = blocks[:, 1:].masked_fill(~starts, -100)
    elsewhere[:, 1:] = blocks[:, 1:].masked_fill(starts, -100)
    print(f"in the {len(blocks)} blocks with a document boundary: loss at the first token of a document "
          f"{pretraining.causal_lm_loss(logits, after_eos).item():.3f} ({int(starts.sum())} targets), "
          f"elsewhere {pretraining.causal_lm_loss(logits, elsewhere).item():.3f} ({int((~starts).sum())} targets)")


def utilisation():
    flops_per_token = pretraining.model_flops_per_token(run["model"].config, BLOCK)
    peak = pretraining.measure_peak_flops("cpu")
    share = pretraining.mfu(run["tokens_per_second"], flops_per_token, peak)
    print(f"forward FLOPs per token {flops_per_token:,}; training ~3x that; this CPU's peak "
          f"(a 1024 x 1024 matrix product) {peak / 1e9:.1f} GFLOP/s; your MFU: {share:.2%}")


if train_blocks is not None and validation_blocks is not None:
    run["unigram"] = pretraining.unigram_loss(train_blocks, validation_blocks, VOCAB)
    run["uniform"] = pretraining.uniform_loss(VOCAB)
    attempt("train_steps", train)
else:
    print("the training run needs the blocks of your pack_blocks (5.1)")
if "history" in run:
    attempt("causal_lm_loss", loss_at_document_starts)
    attempt("mfu", utilisation)
    if plt is not None:
        history = run["history"]
        steps = list(range(1, len(history["loss"]) + 1))
        curves = {"step": steps, "loss": history["loss"], "eval_step": [0, steps[-1]],
                  "eval_loss": [run["before"], run["after"]]}
        ax = pretraining.plot_loss_curves(curves, {"unigram": run["unigram"], "uniform": run["uniform"]})
        ax.set_title("the tiny course LM, trained with your train_steps")
        plt.show()
'''),
        kit.markdown("about_experiment_optimizer", """
## Experiment 7: your AdamW, your gradient clipping and your checkpoints

`train_steps` does not care whose optimizer and clipping it runs: `make_optimizer` builds your
`AdamW` (5.10) as soon as its `step` runs, and `clip_gradients` calls your `clip_grad_norm_` (5.11)
as soon as it runs; until then they use PyTorch's, so that 5.8 never waits for 5.10 and 5.11. The
cell says which ones Experiment 6 used, then:

- runs your `AdamW` and `torch.optim.AdamW` for 20 steps on the same float64 parameters and gradients
  (two groups, the second without decay, as `make_optimizer` builds them) and prints the largest
  difference after each few steps; then interrupts your run after 10 steps, saves and loads its
  `state_dict()` into a new optimizer, and checks that the rest is bit-for-bit the uninterrupted run;
- measures what decoupled decay changes: 1,000 steps on weights that start at 1 and whose gradients
  are pure noise of very different sizes, once with your `AdamW` (`weight_decay=0.1`) and once with
  `torch.optim.Adam(weight_decay=0.1)`, which adds `0.1 * weight` to the gradient (L2);
- clips the gradients of the small GPT-2 of Experiment 2 with your `clip_grad_norm_` and with
  PyTorch's, in the 2-norm and the max-norm;
- saves a small run in the middle of its schedule with your `save_checkpoint` (5.12), loads it into
  a run built from other weights with your `load_checkpoint` (5.13), and compares the next update and
  the next random draws of both.
"""),
        kit.code("experiment_optimizer", r'''
print("Experiment 6 ran with:", pretraining.loop_parts())


def against_torch_adamw():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, dtype=torch.float64, generator=gen), torch.randn(5, dtype=torch.float64, generator=gen)]
    grads = [[torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params] for _ in range(20)]
    groups = [{"params": [0], "lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1},
              {"params": [1], "lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.0}]
    yours = pretraining.adamw_steps(params, grads, groups)
    torchs = pretraining.run_optimizer(torch.optim.AdamW, params, grads, groups)
    gaps = [max(max_gap(a, b) for a, b in zip(mine, theirs)) for mine, theirs in zip(yours["params"], torchs["params"])]
    print("largest difference from torch.optim.AdamW after steps 1, 5, 10, 20:",
          ", ".join(f"{gaps[t - 1]:.1e}" for t in (1, 5, 10, 20)))
    resumed = pretraining.adamw_steps(params, grads, groups, resume_after=10)
    same = all(torch.equal(a, b) for mine, again in zip(yours["params"], resumed["params"]) for a, b in zip(mine, again))
    print(f"interrupted after 10 steps and resumed from its state_dict: {'bit-for-bit' if same else 'NOT'} the same run")


def decoupled_against_l2():
    scales = [1e-4, 1e-2, 1e-1, 1.0, 10.0]
    results = {}
    for name, make in (("your AdamW (decoupled)", lambda p: pretraining.AdamW(p, lr=1e-3, weight_decay=0.1)),
                       ("Adam + L2", lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=0.1))):
        gen = torch.Generator().manual_seed(1)
        weights = torch.nn.Parameter(torch.ones(len(scales), 64, dtype=torch.float64))
        optimizer = make([weights])
        for _ in range(1000):
            weights.grad = torch.tensor(scales, dtype=torch.float64)[:, None] * torch.randn(
                weights.shape, dtype=torch.float64, generator=gen)
            optimizer.step()
        results[name] = weights.detach().mean(1)
    print(f"mean weight left after 1,000 steps (decay alone would leave (1 - 1e-3 * 0.1)^1000 = {0.9999**1000:.3f}):")
    for i, scale in enumerate(scales):
        print(f"  gradient noise {scale:7.0e}: " + ", ".join(f"{name} {w[i]:.3f}" for name, w in results.items()))


def against_torch_clipping():
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    gpt2.zero_grad()
    gpt2(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad.clone() for p in gpt2.parameters()]
    gpt2.zero_grad()
    for norm_type in (2.0, math.inf):
        norm, clipped = pretraining.clipped_gradients(grads, 0.1, norm_type)
        torch_norm, torch_clipped = pretraining.run_clipping(torch.nn.utils.clip_grad_norm_, grads, 0.1, norm_type)
        print(f"norm_type={norm_type}: your total norm {float(norm):.6f}, torch's {float(torch_norm):.6f}; largest "
              f"gradient difference after clipping to 0.1: {max(max_gap(a, b) for a, b in zip(clipped, torch_clipped)):.1e}")


def checkpoint_round_trip():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:  # a run after 3 updates, saved by your save_checkpoint
        path = pretraining.save_checkpoint(directory, *pretraining.checkpoint_setup(0, 3), 7, {"loss": [2.5, 2.25]})
        saved = Path(path).read_bytes()
    got = pretraining.resumed_from_checkpoint(saved, seed=0, updates=3)
    weights = all(torch.equal(a, b) for a, b in zip(got["params"]["resumed"], got["params"]["uninterrupted"]))
    draws = (torch.equal(got["draws"]["resumed"]["torch"], got["draws"]["uninterrupted"]["torch"])
             and got["draws"]["resumed"]["python"] == got["draws"]["uninterrupted"]["python"])
    print(f"checkpoint: load_checkpoint returned step {got['returned'][0]}; after one more update the weights are "
          f"{'identical' if weights else 'DIFFERENT'} and the learning rates {got['lr']['resumed']:.4f} "
          f"vs {got['lr']['uninterrupted']:.4f}; the next random draws are {'identical' if draws else 'DIFFERENT'}")


attempt("AdamW (5.10)", against_torch_adamw)
attempt("AdamW (5.10)", decoupled_against_l2)
attempt("clip_grad_norm_ (5.11)", against_torch_clipping)
attempt("save_checkpoint and load_checkpoint (5.12, 5.13)", checkpoint_round_trip)
'''),
        kit.markdown("question_packing", f"""
## Written answer 2 ({kit.points(PACKING_POINTS)}, graded by hand)

Use Experiments 1, 2 and 6. (a) The labels of a causal LM are its inputs: why does the loss shift
them by one position, and what would a model trained without the shift learn (what would its loss
tend to)? (b) Packing puts several documents into one block, separated by `<|endoftext|>`, and the
attention is not reset at the boundary. What does the model see when it predicts the first token of
a document, and how does this show in the loss at document starts measured above? Why is packing
used all the same, rather than one document per block padded to the block size?
"""),
        kit.written_answer("answer_packing", """
(a) The logits at position t are computed from tokens 0..t (causal attention) and must predict what
comes next, token t + 1: so the targets are labels[:, 1:] for logits[:, :-1], and a block of n tokens
gives n - 1 predictions. Without the shift each position is scored on its own input token, which it
can see: the model learns to copy its input (the identity through the residual stream and tied
embeddings), the training loss falls towards 0, and the model has learned nothing about the next
token: it is useless for generation.
(b) At the first token of a document the model's context is the end of an unrelated document and an
<|endoftext|> token. Nothing in the context tells it what the new document is about, so it can only
predict a typical document start (a title, a capital letter, a common first word), close to a
unigram-like guess: the loss there is clearly higher than elsewhere, where the preceding tokens of
the same document help. This costs little: such targets are a small share (about one per document,
a few percent of the targets) and the model also learns to ignore what comes before an EOS. Packing
wastes nothing: every position of every block is a real token and a real target, while one document
per block padded to the block size would spend a large share of the compute on padding (most
documents are shorter than the block or must be cut anyway) and would need attention masks. The
dropped tail is at most one block.
""", points=PACKING_POINTS),
        kit.markdown("question_mfu", f"""
## Written answer 3 ({kit.points(MFU_POINTS)}, graded by hand)

Use Experiment 6. What does MFU measure, and why does training count 3 times the forward FLOPs per
token (about 6 FLOPs per parameter and token)? Give two reasons why your tiny model reaches only a
small share of this CPU's peak, and say what raises MFU on a GPU (typical good runs reach 40-60%).
"""),
        kit.written_answer("answer_mfu", """
MFU is the model's useful arithmetic per second divided by the hardware's peak: tokens per second
times the FLOPs that training one token needs by formula, over the peak FLOP/s of the devices. It
counts the model's FLOPs, not what the hardware actually executes (recomputation for activation
checkpointing does not raise it), so it measures how well the run uses the machine. The backward pass
costs about twice the forward pass (the gradients with respect to the activations and to the weights,
one matrix product each per forward product), so a training step is forward + backward = 3 x the
forward FLOPs, about 2N + 4N = 6N FLOPs per token for N parameters.
The tiny model is far from the peak because its matrix products are small (width 64, 8 rows of 32
tokens per micro-batch): the peak is measured on a 1024 x 1024 product, and small products are
bound by memory traffic and per-call overhead, not arithmetic. Much of the time goes to work that
has few FLOPs: the Python loop, kernel launches, softmax, norms, the embedding lookup and the
optimizer step over all parameters, data loading and the loss. On a GPU MFU rises with larger
matrices (bigger width and batches, long blocks), bf16 on the tensor cores, fused kernels
(FlashAttention, torch.compile, fused AdamW) and an input pipeline that keeps the GPU busy.
""", points=MFU_POINTS),
    ]
