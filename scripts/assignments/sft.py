"""Chapter 7 assignment (sft): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``sft.py`` on conversations of the course instruction data set
(Chapter 6), rendered by the course tokenizer with its chat template: their collator against TRL's
``DataCollatorForLanguageModeling`` (drawn with ``plot_batch``); their packing against TRL's
padding-free collator, and each conversation's loss alone, packed, and packed with positions that run
on, on a small random Llama; their loss against a Llama's own loss with ``num_items_in_batch``, and the
token-weighted mean against the mean of per-example means; their NEFTune noise, measured; and a short
fine-tuning of a small course LM from scratch with Chapter 5's ``train_steps`` on their packed and their
padded batches (loss curves compared, padding share, tokens/s, and their greedy answers checked before
and after). Every call of an exercise goes through ``attempt``, so an unfinished or broken exercise is
reported and the rest still runs.
"""

PACKING_POINTS = 3  # written answers, graded by hand
LOSS_POINTS = 2


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 7."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 7: supervised fine-tuning",
            what="""
the pieces that turn a pretrained language model into one that answers instructions. The batches (a
collator that trains only the assistant's tokens, and packing without padding that keeps each
conversation apart by its positions), the loss (a token-weighted mean over a whole accumulated step),
NEFTune's embedding noise, and evaluation by greedy generation with left padding.
""",
            contract="""
and the module docstring the conventions all of them share: rendered examples, unshifted labels with
`-100`, padded and packed micro-batches, token-weighted means, seeds
""",
            written=(PACKING_POINTS, LOSS_POINTS),
            more=f"""
Everything else in `{module}.py` is already written and calls your functions: `render_examples`
(the chat template of Chapter 6), `labelled_examples`, `best_fit_decreasing` (how packed rows are
filled), `prepare_sft_data` and `sft_step_batches` (the data pipeline), `validation_loss`,
`task_accuracy` and `few_shot_accuracy`, the presets, the Accelerate loop `finetune` (which trains
with Chapter 5's `train_steps`), the cached chat model `sft_course_lm`, `trl_command` and the plots.
""",
            experiments="""
Run the experiments: they compare *your* functions with TRL's collators and a Llama's own loss,
measure packing and NEFTune, and fine-tune a small model with your batches and your loss. An
exercise you have not done yet is reported, not fatal, so you can run them at any stage. Then
answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import dataclasses
import logging as pylogging
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

from course_lib.instruct import chat_tokenizer
from course_lib.instruction_data import FAMILIES, instruction_dataset

logging.set_verbosity_error()
pylogging.getLogger("bitsandbytes").setLevel(pylogging.ERROR)  # optional CPU kernels it looks for on import
torch.set_num_threads(1)  # small models: a second thread costs more in synchronisation than it saves

# The course tokenizer (Chapter 1) with the chat template of Chapter 6, and conversations of the course
# instruction data set: a few of each family, and a two-turn one.
tokenizer = chat_tokenizer()
PAD = tokenizer.pad_token_id
rows = [row for family in FAMILIES for row in instruction_dataset("train", family).select(range(3))]
multi_turn = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
              {"role": "user", "content": "And times 4?"}, {"role": "assistant", "content": "20"}]
examples = sft.render_examples(rows + [{"messages": multi_turn}], tokenizer)
print(f"{len(examples)} rendered conversations, {min(len(e['input_ids']) for e in examples)} to "
      f"{max(len(e['input_ids']) for e in examples)} tokens; the two-turn one:")
print(tokenizer.decode(examples[-1]["input_ids"]))

torch.manual_seed(0)
llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=256, pad_token_id=PAD)).eval()
'''),
        kit.markdown("about_experiment_collator", """
## Experiment 1: your collator against TRL's

Your `collate_chat` (7.1) pads three conversations on the right and labels only the assistant's
tokens. `SFTTrainer` does the same in two steps: when it prepares the data set it writes each
conversation's labels (the token where the assistant mask is 1, else `-100`; `trl_labels` below is that
rule), and its `DataCollatorForLanguageModeling` pads them. The cell compares the two batches, prints the text each row
trains on, every turn and the last turn only, and draws your batch: orange cells are trained, light
ones are input only, grey ones padding.
"""),
        kit.code("experiment_collator", r'''
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

chosen = [examples[0], examples[4], examples[-1]]


def trl_labels(example):
    """The labels SFTTrainer writes into its prepared data set with assistant_only_loss=True."""
    return [t if m else -100 for t, m in zip(example["input_ids"], example["assistant_masks"])]


def collator():
    batch = sft.collate_chat(chosen, PAD)
    theirs = DataCollatorForLanguageModeling(pad_token_id=PAD)(
        [{"input_ids": e["input_ids"], "labels": trl_labels(e)} for e in chosen])
    for key in ("input_ids", "attention_mask", "labels"):
        same = batch[key].shape == theirs[key].shape and torch.equal(batch[key], theirs[key])
        print(f"{key}: your shape {tuple(batch[key].shape)}, equal to TRL's: {same}")
    for row in batch["labels"]:
        print("trains on:", repr(tokenizer.decode(row[row != -100])))
    last = sft.collate_chat(chosen, PAD, all_turns=False)["labels"][2]
    print("last turn only, two-turn row:", repr(tokenizer.decode(last[last != -100])))
    if plt is not None:
        tokens = [[tokenizer.decode([t]) for t in row] for row in batch["input_ids"]]
        fig, ax = plt.subplots(figsize=(10, 2.5))
        sft.plot_batch(batch, tokens, ax=ax)
        ax.set_title("your collate_chat")
        plt.show()


attempt("collate_chat", collator)
'''),
        kit.markdown("about_experiment_packing", """
## Experiment 2: packing, and what the positions do

Your `pack_examples` (7.2) puts four labelled conversations in one row without padding. The cell
compares it with TRL's padding-free collator, then computes each conversation's loss on the small
Llama three ways: alone, in your packed row, and in your packed row with `position_ids` replaced by
`0, 1, 2, ...` through the whole row (what packing without the restart does). A Hugging Face model
reads the conversations' boundaries from the positions only when it builds no KV cache
(`use_cache=False`), as in training.
"""),
        kit.code("experiment_packing", r'''
four = [examples[i] for i in (1, 4, 7, 10)]


def per_conversation(logits, labels, position_ids):
    """Each conversation's mean loss over its trained targets, from one packed row."""
    losses = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], reduction="none", ignore_index=-100)
    which = (position_ids[0] == 0).cumsum(0)[1:] - 1
    trained = labels[0, 1:] != -100
    return [losses[(which == i) & trained].mean().item() for i in range(int(which.max()) + 1)]


def packing():
    labelled = sft.labelled_examples(four)
    packed = sft.pack_examples(labelled)
    theirs = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)(labelled)
    print("equal to TRL's padding-free batch:",
          all(torch.equal(packed[k], theirs[k]) for k in ("input_ids", "position_ids", "labels")))
    print("position_ids:", packed["position_ids"][0].tolist())
    with torch.no_grad():
        alone = []
        for e in labelled:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            alone += per_conversation(llama(input_ids=ids, use_cache=False).logits, labels, torch.arange(ids.shape[1])[None])
        together = per_conversation(llama(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits,
                                    packed["labels"], packed["position_ids"])
        running = torch.arange(packed["input_ids"].shape[1])[None]
        naive = per_conversation(llama(input_ids=packed["input_ids"], position_ids=running, use_cache=False).logits,
                                 packed["labels"], packed["position_ids"])
    print("alone:                 ", [f"{v:.5f}" for v in alone])
    print("packed:                ", [f"{v:.5f}" for v in together])
    print("positions not restarted:", [f"{v:.5f}" for v in naive])
    if plt is not None:
        fig, ax = plt.subplots(figsize=(10, 1.4))
        sft.plot_batch(packed, ax=ax)
        ax.set_title("your pack_examples (a thick line where a conversation starts)")
        plt.show()


attempt("pack_examples", packing)
'''),
        kit.markdown("about_experiment_loss", """
## Experiment 3: the loss of an accumulated step

Your `sft_loss` (7.3) takes a step's micro-batches. A Llama computes the same loss itself when it gets
`labels` and `num_items_in_batch`, the number of trained targets of the whole step (what the
`Trainer` passes under gradient accumulation): the sum of its two micro-batches' losses must equal
yours. The cell then prints the per-example losses (`reduction="none"`) and the mean of those means,
which is not the step's loss.
"""),
        kit.code("experiment_loss", r'''
def loss():
    micro = [sft.collate_chat(examples[:2], PAD), sft.collate_chat(examples[2:7], PAD)]
    n = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro)
    with torch.no_grad():
        yours = sft.sft_loss(llama, micro)
        hf = sum(llama(**mb, num_items_in_batch=n).loss for mb in micro)
        per_example = sft.sft_loss(llama, micro, "none")
        total = sft.sft_loss(llama, micro, "sum")
    print(f"your step loss {yours.item():.6f}, the Llama's with num_items_in_batch={n}: {hf.item():.6f} "
          f"(gap {max_gap(yours, hf):.1e}); your sum / {n} = {total.item() / n:.6f}")
    print("per-example losses:", [round(v, 4) for v in per_example.tolist()])
    print(f"mean of per-example means: {per_example.mean().item():.6f}")


attempt("sft_loss", loss)
'''),
        kit.markdown("about_experiment_neftune", """
## Experiment 4: NEFTune's noise

Your `neftune_noise` (7.4) adds uniform noise of scale `alpha / sqrt(L * d)` to a batch of embeddings.
The cell measures, for three sequence lengths, the norm of one sequence's noise (about
`alpha / sqrt(3)` whatever the length) and the largest entry, and checks that the seed fixes the draw.
"""),
        kit.code("experiment_neftune", r'''
def neftune():
    for length in (8, 64, 256):
        embeddings = torch.randn(2, length, 32)
        noise = sft.neftune_noise(embeddings, 5.0, seed=0) - embeddings
        bound = 5.0 / (length * 32) ** 0.5
        print(f"L={length:>3}: noise norm of a sequence {noise[0].norm().item():.3f} (alpha/sqrt(3) = "
              f"{5 / 3 ** 0.5:.3f}); largest entry {noise.abs().max().item():.4f} <= {bound:.4f}; "
              f"same seed, same noise: {torch.equal(sft.neftune_noise(embeddings, 5.0, seed=0), noise + embeddings)}")


attempt("neftune_noise", neftune)
'''),
        kit.markdown("about_experiment_training", """
## Experiment 5: fine-tune a small model with your batches and your loss

A small course LM (two layers of width 64), from scratch, is trained on 200 conversations per family
for 30 steps with Chapter 5's `train_steps`, once on your packed rows and once on your padded batches
(`sft_step_batches` builds both with your functions). A step takes the same number of *units*
either way: 4 conversations when padded, 4 packed rows of up to 128 tokens, several conversations
each, when packed; so for the same number of steps the packed run sees more conversations. The cell
prints the padding share and the tokens per second of each, draws the two loss curves, and measures the
validation loss (your `sft_loss`) and the accuracy of greedy answers (your `greedy_answers`) on 8
validation questions per family, before and after. A model this small, trained this briefly, learns
the format and the frequent answers, not the tasks: look at the loss and at what the answers look
like, not at the accuracy.
"""),
        kit.code("experiment_training", r'''
from course_lib import pretraining
from course_lib.language_model import CourseLMForCausalLM, course_lm_config

config = sft.preset("tiny", train_examples=200, total_steps=30, warmup_steps=3, eval_examples=8)
run = {}


def small_model():
    torch.manual_seed(0)
    return CourseLMForCausalLM(course_lm_config("cpu", vocab_size=len(tokenizer), hidden_size=64,
                                                intermediate_size=172, num_hidden_layers=2,
                                                num_attention_heads=2, num_key_value_heads=1))


def train():
    data = sft.prepare_sft_data(tokenizer, config)
    for packing in (True, False):
        run_config = dataclasses.replace(config, packing=packing)
        model = small_model()
        model.config.use_cache = False
        steps = list(sft.sft_step_batches(data, data.units(run_config), run_config, PAD))
        share = sft.padding_share([mb for step in steps for mb in step])
        start = time.perf_counter()
        history = pretraining.train_steps(model, steps, run_config.settings())
        seconds = time.perf_counter() - start
        run[packing] = dict(model=model, history=history)
        print(f"packing={packing!s:5}: {len(steps)} steps, padding {share:.1%} of the positions, "
              f"{sum(history['tokens']) / seconds:,.0f} tokens/s, loss {history['loss'][0]:.3f} -> "
              f"{history['loss'][-1]:.3f}")
    before = small_model()
    for name, model in (("before", before), ("after (packed)", run[True]["model"])):
        loss = sft.validation_loss(model, data.validation, PAD)
        accuracy, answers = sft.task_accuracy(model, tokenizer, data.accuracy_rows, 8,
                                              examples=data.accuracy_examples)
        print(f"{name}: validation loss {loss:.3f}; accuracy " + ", ".join(f"{f} {a:.0%}" for f, a in accuracy.items()))
        print("  answers:", [a for a in answers[::8]])
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 3))
        for packing, label in ((True, "packed (your pack_examples)"), (False, "padded (your collate_chat)")):
            ax.plot(run[packing]["history"]["loss"], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (your batches)")
        ax.legend()
        plt.show()


attempt("fine-tuning (7.1-7.3, 7.5; Chapter 5's train_steps)", train)
'''),
        kit.markdown("question_packing", f"""
## Written answer 1 ({kit.points(PACKING_POINTS)}, graded by hand)

Use Experiments 2 and 5. (a) Why does packing with restarting `position_ids` leave every
conversation's loss unchanged, and what two things change when the positions run on through the row?
Why is the first conversation's loss the same in both packed versions? (b) Why does the first token of
each packed conversation get the label `-100`? (c) Padding goes on the right for training and on the
left for generation (7.5). Explain both choices, and what goes wrong with right padding in
`greedy_answers`.
"""),
        kit.written_answer("answer_packing", """
(a) A Hugging Face model (and the course model) given position_ids and no attention mask finds the
sequence boundaries where the positions restart and attends only within each sequence
(block-diagonal causal attention); each conversation also gets the positions 0..len-1 it has alone, so
its logits, and its loss, are those it has alone (up to float rounding). When the positions run on,
(1) every conversation attends to all the conversations before it in the row, and (2) it sits at
positions it never has alone (RoPE rotates its queries and keys differently), so its logits change.
The first conversation has nothing before it and positions 0..len-1 either way: its loss is the same.
(b) The loss shifts by one: the logits at a conversation's last token (its <|im_end|> or the newline
after it) would be trained to predict the first token of the next, unrelated conversation. Setting
that label to -100 removes the only target that crosses a boundary; alone, a conversation's first
token is never a target either.
(c) Training: every row then starts at position 0 as in pre-training, and the padding comes after the
last target, masked out of attention and with label -100, so it changes nothing. Generation appends
new tokens at the right end of every row: with left padding each prompt ends at the last column and
the first new token follows the prompt directly. With right padding a short prompt is followed by
padding, the model's next token is predicted after pad tokens (or from the wrong position), and the
answers of short prompts differ from what the model gives each prompt alone.
""", points=PACKING_POINTS),
        kit.markdown("question_loss", f"""
## Written answer 2 ({kit.points(LOSS_POINTS)}, graded by hand)

Use Experiment 3. The step loss is the sum over every trained token of all micro-batches divided by
their number. Give a small example (two answers of different lengths) where the mean of per-example
means differs from it, say which examples it over-weights, and say why the token-weighted loss does not
depend on how a step is split into micro-batches while the mean of micro-batch means does.
"""),
        kit.written_answer("answer_loss", """
Two answers: A with 1 trained token of loss 3.0, B with 9 trained tokens of loss 1.0 each. The
token-weighted mean is (3 + 9) / 10 = 1.2; the mean of per-example means is (3.0 + 1.0) / 2 = 2.0. The
per-example mean gives each example the same total weight, so each token of a short answer counts as
much as all of a long answer's tokens together: short answers are over-weighted (here A's token
weighs 9 times B's tokens). The token-weighted loss is one sum over all trained tokens divided by one
count, both of which are the same however the examples are grouped into micro-batches (sums are
associative), so its gradient is that of one big batch. A mean of micro-batch means divides each
micro-batch by its own count: regrouping changes the counts and so the weights, and the step's gradient
depends on the grouping (and on the padding and packing choices).
""", points=LOSS_POINTS),
    ]
