"""Chapter 5 graded tests (public): packing, the document split, batch order, the causal-LM loss,
masked-LM masking, the learning-rate schedule, weight-decay groups, the training step and MFU.

The references are outside the course: Hugging Face's run_clm ``group_texts`` packing (written out
below), ``datasets.Dataset.train_test_split``, ``RandomSampler`` and ``BatchSampler``, the
loss of ``LlamaForCausalLM`` and ``GPT2LMHeadModel`` built from tiny configs, ``F.cross_entropy``,
``DataCollatorForLanguageModeling`` (same seed, same draws), ``get_cosine_schedule_with_warmup``
and ``get_cosine_with_min_lr_schedule_with_warmup``, ``Trainer.get_decay_parameter_names``, and a
training loop written here with ``torch.optim.AdamW``, ``clip_grad_norm_`` and Hugging Face's
schedule on one big batch. The training loop written out runs in float64 and the student's in
float32 (models cross the grading door in float32): they agree to 1e-4 or better over five AdamW
steps (Adam turns rounding in near-zero gradients into full-size steps), every wrong step tried
differs by more than 1e-3, and the tolerance is 2e-4.

Each exercise's contract, clause by clause, with the public tests that check it (``test_`` dropped):

5.1 ``pack_blocks``
  - run_clm's ``group_texts`` with an EOS after every document: pack_blocks_matches_group_texts,
    pack_blocks_puts_eos_after_each_document
  - the tail dropped, empty documents add nothing, (0, block_size) long when short:
    pack_blocks_drops_the_tail_and_skips_empty_documents
  - the caller's documents unchanged: pack_blocks_leaves_the_documents_unchanged

5.2 ``split_documents``
  - ``train_test_split``'s rows, ceil of the fraction: split_documents_matches_datasets_train_test_split
  - a tuple of two lists of Python ints: split_documents_returns_a_tuple_of_two_lists_of_python_ints

5.3 ``batch_order``
  - ``BatchSampler(RandomSampler)`` with drop_last: batch_order_matches_torch_samplers
  - its own generator, another seed another order, ``[]`` when short: batch_order_is_reproducible_and_changes_with_the_seed
  - lists of Python ints: batch_order_returns_lists_of_python_ints

5.4 ``causal_lm_loss``
  - Hugging Face's loss (shift, token-weighted mean): causal_lm_loss_matches_hugging_face_models,
    causal_lm_loss_sum_and_token_weighted_mean
  - padding and ignore_index are no targets: causal_lm_loss_ignores_padding_like_hugging_face
  - ``ignore_index`` other than -100; float64 stays float64; inputs unchanged:
    causal_lm_loss_with_another_ignore_index_in_float64_leaves_its_inputs_alone
  - float32 for bf16 logits: causal_lm_loss_of_bf16_logits_is_float32
  - no target: "mean" NaN, "sum" 0: causal_lm_loss_without_targets

5.5 ``mask_tokens``
  - the collator's draws for every probability setting (mask_replace_prob 1 included):
    mask_tokens_matches_the_hugging_face_collator
  - 15/80/10/10 statistics, special tokens never picked: mask_tokens_statistics_are_15_80_10_10
  - input unchanged: mask_tokens_leaves_its_input_alone
  - a 1-D sequence, int32 input, long results: mask_tokens_on_one_sequence_of_any_integer_dtype

5.6 ``lr_at``
  - Hugging Face's cosine (with min_lr_ratio), warmup 0 and warmup == total: lr_at_matches_hugging_face_cosine_schedule
  - the floor after total_steps: lr_at_stays_at_the_floor_after_the_schedule
  - a Python float: lr_at_returns_a_python_float

5.7 ``weight_decay_groups``
  - the Trainer's decayed names without embeddings, tied or not, named_parameters order:
    weight_decay_groups_match_the_trainer_without_embeddings
  - frozen parameters in no group; an nn.Embedding subclass; a model that is an embedding; >2-D weights:
    weight_decay_groups_skip_frozen_parameters_and_find_every_embedding

5.8 ``train_steps``
  - step one's loss and gradient norm, every step's lr and tokens, as Hugging Face (padding, 1-3
    micro-batches, three families): train_steps_first_step_matches_hugging_face_loss
  - labels with -100, ``max_grad_norm=None``: train_steps_first_step_honours_labels_and_no_clipping
  - accumulation equals one big batch: train_steps_with_micro_batches_equals_one_big_batch
  - bf16 autocast: train_steps_in_bf16_autocast_matches_hugging_face_under_autocast
  - Python numbers in the history: train_steps_history_holds_python_numbers
  - the optimizer and scheduler handed in carry the run on (in-process only):
    train_steps_continues_with_the_optimizer_and_scheduler_it_is_given
  - any iterable of steps, ``on_step`` stops the loop, training mode (in-process only):
    train_steps_takes_any_iterable_stops_when_asked_and_leaves_the_model_training

5.9 ``mfu``
  - 3 x forward FLOPs x tokens/s over the devices' peak: mfu_by_hand, mfu_counts_what_flop_counter_measures_in_training
  - a Python float, also for int arguments: mfu_is_a_python_float_for_integer_arguments

5.10 ``AdamW.step`` (through ``adamw_steps``, the course's harness, against ``torch.optim.AdamW``)
  - torch's update step for step, each group's own hyperparameters, defaults, a no-decay group:
    adamw_matches_torch_adamw_step_for_step
  - float32 parameters keep float32 state: adamw_in_float32_matches_torch_adamw
  - bias correction from t = 1: adamw_first_step_moves_every_entry_by_about_lr
  - the state in ``self.state[p]`` under torch's names, ``step`` a 0-dim tensor, the groups' hyperparameters:
    adamw_keeps_its_state_under_torchs_names
  - ``group["lr"]`` read at every step (a scheduler): adamw_reads_each_groups_learning_rate_at_every_step
  - parameters without a gradient skipped, no state: adamw_skips_parameters_without_gradient
  - a resumed run from ``state_dict`` continues exactly: adamw_resumed_from_its_state_dict_continues_exactly
  - the closure called, its loss returned, ``None`` without: adamw_step_calls_the_closure_and_returns_its_loss
  - ``amsgrad`` (its ``max_exp_avg_sq`` state) and ``maximize``: adamw_amsgrad_and_maximize_match_torch

5.11 ``clip_grad_norm_`` (through ``clipped_gradients``, against ``torch.nn.utils.clip_grad_norm_``)
  - the total norm before clipping, every gradient scaled together, p = 1, 2, 3 and inf, a generator of
    parameters: clip_grad_norm_matches_torch
  - below the limit (``max_norm`` inf included) nothing changes: clip_grad_norm_below_the_limit_changes_nothing
  - ``.grad`` None skipped; no gradient at all gives 0: clip_grad_norm_skips_parameters_without_gradient
  - one tensor instead of an iterable; the gradients' dtype: clip_grad_norm_takes_a_single_tensor_and_keeps_float32
  - ``error_if_nonfinite``, and NaN/inf norms scaled as torch does:
    clip_grad_norm_with_a_non_finite_norm_does_what_torch_does

5.12 ``save_checkpoint`` (through ``saved_checkpoint``)
  - model, optimizer, scheduler, step, history and the generators' states:
    save_checkpoint_holds_what_an_exact_resume_needs
  - a new folder (and parent) created, one file replaced atomically, its path returned:
    save_checkpoint_writes_one_file_in_a_new_folder_and_replaces_the_old_one
  - the folder as a ``str``: save_checkpoint_takes_its_folder_as_a_str

5.13 ``load_checkpoint`` (through ``resumed_from_checkpoint``, from a checkpoint written by the tests)
  - ``(step, history)`` returned; weights, optimizer and scheduler restored:
    load_checkpoint_continues_the_run_exactly
  - torch's and Python's generators restored: load_checkpoint_restores_the_random_generators
  - the folder as a ``str``: load_checkpoint_takes_its_folder_as_a_str

Not graded (at the end): the course's loop (``pretrain``) lowers the loss, resumes bit-identically
from a checkpoint, runs as 2 CPU processes through Accelerate (torchrun; slow), and its cached
pretrained model loads with ``AutoModelForCausalLM`` and ``AutoTokenizer``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grading.expect import assert_close, assert_unchanged, in_process_only

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


# -- references --------------------------------------------------------------------------------------
def group_texts(token_ids_per_doc, block_size, eos):
    """Hugging Face run_clm.py's ``group_texts`` on documents that end with the end-of-text token."""
    stream = list(itertools.chain.from_iterable(doc + [eos] for doc in token_ids_per_doc if doc))
    total = len(stream) // block_size * block_size
    return torch.tensor([stream[i:i + block_size] for i in range(0, total, block_size)],
                        dtype=torch.long).view(-1, block_size)


def random_docs(seed, n_docs, max_len, vocab=50):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (n_docs,), generator=gen).tolist()
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


def datasets_split(n_documents, validation_fraction, seed):
    from datasets import Dataset

    split = Dataset.from_dict({"idx": list(range(n_documents))}).train_test_split(test_size=validation_fraction,
                                                                                 seed=seed)
    return split["train"]["idx"], split["test"]["idx"]


def sampler_order(n_blocks, batch_size, seed):
    """The batches of a shuffling, last-dropping ``DataLoader``'s samplers, with a generator seeded ``seed``."""
    from torch.utils.data import BatchSampler, RandomSampler

    sampler = RandomSampler(range(n_blocks), generator=torch.Generator().manual_seed(seed))
    return list(BatchSampler(sampler, batch_size, drop_last=True))


# Each model keeps its class's default attention (torch's SDPA for Hugging Face's, the course's own for
# the course model): a model crosses the grading door as its config and weights, and is rebuilt with it.
def tiny_llama(device, seed=0, vocab=64, tie=True, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def tiny_gpt2(device, seed=0, vocab=64, dtype=torch.float32, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    return GPT2LMHeadModel(config).to(device=device, dtype=dtype)


def tiny_course_lm(device, seed=0, vocab=64, dtype=torch.float32, **overrides):
    from course_lib.language_model import CourseLMForCausalLM, course_lm_config

    torch.manual_seed(seed)
    config = course_lm_config("cpu", **{"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
                                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                        "max_position_embeddings": 64, **overrides})
    return CourseLMForCausalLM(config).to(device=device, dtype=dtype)


def token_batch(batch, seq, device, seed=0, vocab=64, lengths=None, left=False):
    """``(input_ids, attention_mask)``; ``lengths[b]`` real tokens per row (padding id 0), right padded."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    for b, n in enumerate(lengths or []):
        if left:
            attention_mask[b, :seq - n] = 0
        else:
            attention_mask[b, n:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return input_ids.to(device), attention_mask.to(device)


def hf_labels(input_ids, attention_mask):
    """Hugging Face's labels for a padded batch: the inputs, with -100 at padding."""
    return input_ids.masked_fill(attention_mask == 0, -100)


def next_token_ce(logits, labels, attention_mask=None, reduction="mean"):
    """``F.cross_entropy`` of shifted logits, in float64: the loss written out."""
    targets = labels[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].double().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction=reduction)


def hf_decayed(model):
    """Hugging Face Trainer's decayed parameters, without the embedding tables (the course's choice)."""
    from transformers import Trainer

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}  # a tied output layer is listed once
    return [n for n in Trainer.get_decay_parameter_names(None, model) if n in named and id(named[n]) not in embeddings]


def hf_schedule(total_steps, warmup_steps, min_lr_ratio=0.0):
    """The learning-rate multipliers of steps 0..total_steps from Hugging Face's cosine schedule."""
    from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = (get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup_steps, total_steps,
                                                             min_lr_rate=min_lr_ratio)
                 if min_lr_ratio else get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps))
    rates = []
    for _ in range(total_steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


SETTINGS = {"lr": 2e-2, "warmup_steps": 1, "total_steps": 4, "min_lr_ratio": 0.1, "weight_decay": 0.1,
            "betas": [0.9, 0.95], "eps": 1e-8, "max_grad_norm": 0.5, "mixed_precision": "no"}


def micro_batches(n_steps, n_micro, micro_batch, seq, device, seed=0, vocab=64, padded=False):
    steps = []
    for s in range(n_steps):
        step = []
        for m in range(n_micro):
            lengths = None
            if padded:  # unequal numbers of targets per micro-batch
                lengths = [seq - (s + m + b) % (seq - 1) for b in range(micro_batch)]
            input_ids, mask = token_batch(micro_batch, seq, device, seed=seed + 10 * s + m, vocab=vocab,
                                          lengths=lengths)
            step.append({"input_ids": input_ids, "attention_mask": mask} if padded else {"input_ids": input_ids})
        steps.append(step)
    return steps


def whole_step(micro_batches_of_step):
    """The micro-batches of one step as one batch: ``input_ids``, ``attention_mask`` (ones where a
    micro-batch has none) and ``labels`` (the inputs where a micro-batch has none)."""
    return {"input_ids": torch.cat([mb["input_ids"] for mb in micro_batches_of_step]),
            "attention_mask": torch.cat([mb.get("attention_mask", torch.ones_like(mb["input_ids"]))
                                         for mb in micro_batches_of_step]),
            "labels": torch.cat([mb.get("labels", mb["input_ids"]) for mb in micro_batches_of_step])}


NO_CLIPPING = {"max_grad_norm": None, "warmup_steps": 0, "total_steps": 3, "min_lr_ratio": 0.0}


def steps_with_prompts(device):
    """3 steps of 2 micro-batches whose labels are -100 over a prompt of 3, 4, 5 tokens."""
    steps = micro_batches(3, 2, 2, 8, device, seed=9)
    for s, step in enumerate(steps):
        for mb in step:
            mb["labels"] = mb["input_ids"].clone()
            mb["labels"][:, :3 + s] = -100           # a prompt that is not scored
    return steps


def assert_history(actual, expected, *, what, rtol=2e-4, student=None):
    """``train_steps``'s history against ``expected``; with ``student``, a failure also says which AdamW and
    clipping the loop ran (yours or torch's, see which_optimizer_and_clipping)."""
    try:
        _assert_history(actual, expected, what=what, rtol=rtol)
    except AssertionError as err:
        if student is None:
            raise
        raise AssertionError(f"{err} ({which_optimizer_and_clipping(student)}.)") from None


def _assert_history(actual, expected, *, what, rtol):
    if not isinstance(actual, dict) or set(actual) != {"loss", "grad_norm", "lr", "tokens"}:
        raise AssertionError(f"{what}: expected a dict with keys loss, grad_norm, lr, tokens, got {actual!r:.200}")
    hints = {
        "lr": "lr is the learning rate the update used: read it before scheduler.step(), and step the scheduler "
              "after optimizer.step() (lr_at must be right too).",
        "grad_norm": "grad_norm is the total norm before clipping, of the accumulated gradient of the whole step: "
                     "divide each micro-batch's summed loss by the step's number of targets, and zero the "
                     "gradients after every step.",
        "loss": "A step's loss is the sum of its micro-batches' summed target losses divided by the step's number "
                "of targets (labels -100 and padding are not targets). From the second step on, a wrong update "
                "shows here too: clip before optimizer.step(), zero the gradients after it, and decay only the "
                "parameters of weight_decay_groups.",
        "tokens": "tokens counts the step's input tokens that are not padding.",
    }
    for key in ("lr", "tokens", "grad_norm", "loss"):
        got, want = actual[key], expected[key]
        if len(got) != len(want):
            raise AssertionError(f"{what}: {len(got)} values of {key!r}, expected one per step ({len(want)})")
        assert_close(torch.tensor(got, dtype=F64), torch.tensor(want, dtype=F64), what=f"{what}: {key} per step",
                     hint=hints[key], rtol=rtol, atol=1e-9)


# -- 5.1 pack_blocks -----------------------------------------------------------------------------------
@pytest.mark.exercise("5.1")
@pytest.mark.parametrize("seed, n_docs, max_len, block_size", [(0, 5, 12, 4), (1, 20, 40, 16), (2, 3, 3, 5),
                                                               (3, 8, 100, 32)])
def test_pack_blocks_matches_group_texts(student, seed, n_docs, max_len, block_size):
    docs = random_docs(seed, n_docs, max_len)
    got = student.pack_blocks(docs, block_size, 63)
    assert_close(got, group_texts(docs, block_size, 63), what=f"pack_blocks({n_docs} documents, block_size={block_size})",
                 hint="Append eos_token_id after every document (the last too), concatenate, keep the first "
                      "len(stream) // block_size * block_size tokens, view as (n_blocks, block_size).")


@pytest.mark.exercise("5.1")
def test_pack_blocks_puts_eos_after_each_document(student):
    got = student.pack_blocks([[5, 6, 7], [8], [9, 10]], 3, 2)
    assert_close(got, torch.tensor([[5, 6, 7], [2, 8, 2], [9, 10, 2]]), what="pack_blocks([[5,6,7],[8],[9,10]], 3, eos=2)",
                 hint="The stream is 5 6 7 <eos> 8 <eos> 9 10 <eos>: eos after each document, including the last.")


@pytest.mark.exercise("5.1")
def test_pack_blocks_drops_the_tail_and_skips_empty_documents(student):
    got = student.pack_blocks([[5, 6], [], [7, 8, 9]], 4, 2)
    assert_close(got, torch.tensor([[5, 6, 2, 7]]), what="pack_blocks([[5,6],[],[7,8,9]], 4, eos=2)",
                 hint="An empty document adds nothing (no lone eos); the tail 8 9 <eos> does not fill a block and "
                      "is dropped, not padded.")
    short = student.pack_blocks([[5, 6]], 8, 2)
    assert_close(short, torch.zeros(0, 8, dtype=torch.long), what="pack_blocks with fewer tokens than one block",
                 hint="Return an empty (0, block_size) tensor of dtype torch.long.")


@pytest.mark.exercise("5.1")
def test_pack_blocks_leaves_the_documents_unchanged(student):
    docs = [[5, 6, 7], [], [8], [9, 10]]
    before = copy.deepcopy(docs)
    got = student.pack_blocks(docs, 2, 2)
    assert_close(got, torch.tensor([[5, 6], [7, 2], [8, 2], [9, 10]]), what="pack_blocks([[5,6,7],[],[8],[9,10]], 2, eos=2)")
    assert_unchanged(docs, before, what="the caller's documents (append the end-of-text token to a copy)")


# -- 5.2 split_documents -------------------------------------------------------------------------------
@pytest.mark.exercise("5.2")
@pytest.mark.parametrize("n_documents, fraction, seed", [(10, 0.2, 42), (443, 0.05, 1234), (7, 0.5, 0), (25, 0.33, 3)])
def test_split_documents_matches_datasets_train_test_split(student, n_documents, fraction, seed):
    train, validation = student.split_documents(n_documents, fraction, seed)
    expected_train, expected_validation = datasets_split(n_documents, fraction, seed)
    what = f"split_documents({n_documents}, {fraction}, seed={seed})"
    if not (isinstance(train, list) and isinstance(validation, list)):
        raise AssertionError(f"{what}: expected two lists of ints, got {type(train).__name__}, {type(validation).__name__}")
    assert sorted(train + validation) == list(range(n_documents)), \
        f"{what}: together the two lists must hold every document index exactly once"
    assert len(validation) == len(expected_validation), \
        (f"{what}: {len(validation)} validation documents, expected math.ceil({fraction} * {n_documents}) = "
         f"{len(expected_validation)}")
    assert (train, validation) == (expected_train, expected_validation), \
        (f"{what}: not the split of datasets' train_test_split. Use numpy.random.default_rng(seed).permutation(n): "
         "validation = its first n_validation entries, train = the rest, both in permutation order.")


@pytest.mark.exercise("5.2")
def test_split_documents_returns_a_tuple_of_two_lists_of_python_ints(student):
    result = student.split_documents(12, 0.25, 5)
    assert type(result) is tuple and len(result) == 2, f"split_documents returned {type(result).__name__}, expected a tuple"
    for name, part in zip(("train_indices", "validation_indices"), result):
        assert type(part) is list and all(type(i) is int for i in part), (
            f"{name} must be a list of Python ints, got {type(part).__name__} of "
            f"{sorted({type(i).__name__ for i in part})}: numpy's int64 is not an int (use .tolist())")


# -- 5.3 batch_order -----------------------------------------------------------------------------------
@pytest.mark.exercise("5.3")
@pytest.mark.parametrize("n_blocks, batch_size, seed", [(10, 3, 0), (64, 8, 1), (5, 5, 2), (100, 7, 3)])
def test_batch_order_matches_torch_samplers(student, n_blocks, batch_size, seed):
    got = student.batch_order(n_blocks, batch_size, seed)
    assert got == sampler_order(n_blocks, batch_size, seed), \
        (f"batch_order({n_blocks}, {batch_size}, seed={seed}) is not what BatchSampler(RandomSampler(...), "
         "drop_last=True) yields: torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed)), cut into batches, "
         "the incomplete last one dropped.")


@pytest.mark.exercise("5.3")
def test_batch_order_is_reproducible_and_changes_with_the_seed(student):
    torch.manual_seed(123)
    first = student.batch_order(30, 4, 7)
    torch.manual_seed(456)
    assert student.batch_order(30, 4, 7) == first, "batch_order must depend on its seed only, not on torch's global seed"
    assert student.batch_order(30, 4, 8) != first, "another seed must give another order"
    assert student.batch_order(3, 4, 0) == [], "fewer blocks than one batch give no batch"


@pytest.mark.exercise("5.3")
def test_batch_order_leaves_torchs_global_generator_alone(student):
    in_process_only(student, "torch's global random state")
    torch.manual_seed(2024)
    state = torch.random.get_rng_state()
    student.batch_order(30, 4, 7)
    assert torch.equal(torch.random.get_rng_state(), state), \
        ("batch_order changed torch's global random state: draw from a torch.Generator of its own "
         "(torch.manual_seed(seed) would reset the global generator for everything else that draws from it)")


@pytest.mark.exercise("5.3")
def test_batch_order_returns_lists_of_python_ints(student):
    batches = student.batch_order(10, 5, 1)
    assert type(batches) is list and len(batches) == 2, f"batch_order(10, 5, 1) = {batches!r:.100}: two batches"
    for batch in batches:
        assert type(batch) is list and all(type(i) is int for i in batch), (
            f"a batch must be a list of Python ints, got {type(batch).__name__} of "
            f"{sorted({type(i).__name__ for i in batch})} (iterating a tensor gives 0-d tensors: use .tolist())")


# -- 5.4 causal_lm_loss --------------------------------------------------------------------------------
SHIFT_HINT = ("Position t's logits predict labels[:, t + 1]: compare logits[:, :-1] with labels[:, 1:]; "
              "padding targets (attention_mask[:, 1:] == 0) and ignore_index count for nothing; the mean is over "
              "all counted targets of the batch at once.")


@pytest.mark.exercise("5.4")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_loss_matches_hugging_face_models(student, device, family):
    model = (tiny_llama if family == "llama" else tiny_gpt2)(device).eval()
    input_ids, mask = token_batch(3, 10, device, seed=1)
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=input_ids)
    assert_close(student.causal_lm_loss(out.logits, input_ids), out.loss, what=f"causal_lm_loss vs {family}'s loss",
                 hint=SHIFT_HINT, rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("5.4")
def test_causal_lm_loss_ignores_padding_like_hugging_face(student, device):
    model = tiny_llama(device).eval()
    input_ids, mask = token_batch(4, 9, device, seed=2, lengths=[9, 3, 6, 2])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, labels=hf_labels(input_ids, mask))
    assert_close(student.causal_lm_loss(out.logits, input_ids, mask), out.loss,
                 what="causal_lm_loss with right padding vs LlamaForCausalLM(labels with -100 at padding).loss",
                 hint=SHIFT_HINT, rtol=1e-5, atol=1e-6)
    assert_close(student.causal_lm_loss(out.logits, hf_labels(input_ids, mask)), out.loss,
                 what="causal_lm_loss with -100 labels and no attention_mask", hint=SHIFT_HINT, rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("5.4")
def test_causal_lm_loss_sum_and_token_weighted_mean(student, device):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=F64).to(device)
    labels = torch.randint(0, 11, (3, 7), generator=gen).to(device)
    mask = torch.tensor([[1] * 7, [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]], device=device)
    assert_close(student.causal_lm_loss(logits, labels, mask, reduction="sum"), next_token_ce(logits, labels, mask, "sum"),
                 what="causal_lm_loss(reduction='sum')", hint=SHIFT_HINT)
    assert_close(student.causal_lm_loss(logits, labels, mask), next_token_ce(logits, labels, mask),
                 what="causal_lm_loss (mean) with rows of 6, 1 and 3 targets",
                 hint="Token-weighted: divide the sum by all 10 counted targets, not the mean of per-row means.")


@pytest.mark.exercise("5.4")
def test_causal_lm_loss_of_bf16_logits_is_float32(student, device):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 6, 13, generator=gen).to(device=device, dtype=torch.bfloat16)
    labels = torch.randint(0, 13, (2, 6), generator=gen).to(device)
    got = student.causal_lm_loss(logits, labels)
    assert_close(got, next_token_ce(logits.float(), labels).float(), what="causal_lm_loss of bfloat16 logits",
                 hint="Compute the loss in float32: logits.float() before the log-softmax.")


@pytest.mark.exercise("5.4")
def test_causal_lm_loss_without_targets(student, device):
    logits = torch.zeros(2, 1, 5, device=device)
    labels = torch.zeros(2, 1, dtype=torch.long, device=device)
    assert_close(student.causal_lm_loss(logits, labels, reduction="sum"), torch.tensor(0.0, device=device),
                 what="causal_lm_loss(reduction='sum') of one-token rows (nothing to predict)",
                 hint="A block of seq tokens has seq - 1 targets; with none the sum is 0.")
    assert torch.isnan(student.causal_lm_loss(logits, labels)), "the mean over no targets is NaN (0/0)"


@pytest.mark.exercise("5.4")
def test_causal_lm_loss_with_another_ignore_index_in_float64_leaves_its_inputs_alone(student, device):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 6, 9, generator=gen, dtype=F64).to(device)
    labels = torch.randint(0, 9, (3, 6), generator=gen).to(device)
    labels[0, 2] = -1                                  # ignored with ignore_index=-1
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1] * 6], device=device)
    inputs, before = [logits, labels, mask], [logits.clone(), labels.clone(), mask.clone()]
    targets = labels[:, 1:].masked_fill(mask[:, 1:] == 0, -1)
    for reduction in ("mean", "sum"):
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, 9), targets.reshape(-1), ignore_index=-1,
                                   reduction=reduction)
        got = student.causal_lm_loss(logits, labels, mask, ignore_index=-1, reduction=reduction)
        assert_close(got, expected, what=f"causal_lm_loss(float64 logits, ignore_index=-1, reduction={reduction!r})",
                     hint="Padding targets become ignore_index (the argument, not -100); float64 logits give a "
                          "float64 loss (promote_types(dtype, float32)).")
    assert_unchanged(inputs, before, what="the caller's logits, labels or attention_mask (mask a copy of the labels)")


# -- 5.5 mask_tokens -----------------------------------------------------------------------------------
def mlm_tokenizer(vocab_size=40):
    """A word-level ``PreTrainedTokenizerFast`` with ``[PAD]`` 0, ``[CLS]`` 1, ``[SEP]`` 2, ``[MASK]`` 3."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3} | {f"w{i}": i for i in range(4, vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[PAD]")), pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def collator_masking(input_ids, seed, special_ids=(0, 1, 2), **probabilities):
    """What ``DataCollatorForLanguageModeling`` does to ``input_ids`` with a generator seeded ``seed``."""
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(mlm_tokenizer(), **probabilities)
    collator.generator = torch.Generator().manual_seed(seed)
    special = torch.isin(input_ids, torch.tensor(special_ids))
    return collator.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)


def mlm_ids(batch, seq, seed, vocab=40):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, seq), generator=gen)
    ids[:, 0], ids[:, -1] = 1, 2                     # [CLS] ... [SEP]
    ids[0, -3:] = 0                                  # some padding
    return ids


@pytest.mark.exercise("5.5")
@pytest.mark.parametrize("seed, shape, probabilities", [
    (0, (4, 16), {}),
    (1, (8, 32), {}),
    (2, (3, 20), {"mlm_probability": 0.5, "mask_replace_prob": 0.6, "random_replace_prob": 0.3}),
    (3, (2, 25), {"mlm_probability": 0.3, "mask_replace_prob": 1.0, "random_replace_prob": 0.0}),
])
def test_mask_tokens_matches_the_hugging_face_collator(student, device, seed, shape, probabilities):
    ids = mlm_ids(*shape, seed)
    expected_inputs, expected_labels = collator_masking(ids, seed, **probabilities)
    got_inputs, got_labels = student.mask_tokens(ids.to(device), vocab_size=40, mask_token_id=3,
                                                 special_token_ids=[0, 1, 2], seed=seed, **probabilities)
    what = f"mask_tokens(seed={seed}, {probabilities or 'defaults'})"
    assert_close(got_labels, expected_labels.to(device), what=f"{what}: labels",
                 hint="labels = the original token where picked, -100 elsewhere; pick with one bernoulli draw of "
                      "mlm_probability (0 at special tokens) from torch.Generator().manual_seed(seed), first.")
    assert_close(got_inputs, expected_inputs.to(device), what=f"{what}: masked input_ids",
                 hint="Draw in the collator's order: picked, then masked (bernoulli(mask_replace_prob) & picked), then "
                      "randomised (bernoulli(random_replace_prob / (1 - mask_replace_prob)) & picked & ~masked), "
                      "then torch.randint(vocab_size, shape).")


@pytest.mark.exercise("5.5")
def test_mask_tokens_statistics_are_15_80_10_10(student):
    ids = torch.randint(4, 1000, (64, 256), generator=torch.Generator().manual_seed(5))
    ids[:, 0] = 1
    got_inputs, labels = student.mask_tokens(ids, vocab_size=1000, mask_token_id=3, special_token_ids=[1], seed=5)
    picked = labels != -100
    n = int(picked.sum())
    # binomial standard deviations: 0.15 of 16,320 tokens and 0.8/0.1 of ~2,450 picked ones; 5 sigma bounds
    assert abs(n / ids[:, 1:].numel() - 0.15) < 0.015, f"{n / ids[:, 1:].numel():.3f} of the tokens picked, expected 0.15"
    assert not picked[:, 0].any(), "a special token was picked as a target: it must never be"
    assert torch.equal(labels[picked], ids[picked]), "labels must hold the original tokens at the picked positions"
    masked = (got_inputs == 3) & picked
    unchanged = (got_inputs == ids) & picked
    randomised = picked & ~masked & ~unchanged
    assert abs(int(masked.sum()) / n - 0.8) < 0.04, f"{int(masked.sum()) / n:.3f} of picked tokens masked, expected 0.8"
    assert abs(int(randomised.sum()) / n - 0.1) < 0.03, \
        (f"{int(randomised.sum()) / n:.3f} of picked tokens randomised, expected 0.1: the random draw is conditional on "
         "not being masked (probability random_replace_prob / (1 - mask_replace_prob))")
    assert torch.equal(got_inputs[~picked], ids[~picked]), "tokens that were not picked must stay unchanged"


@pytest.mark.exercise("5.5")
def test_mask_tokens_leaves_its_input_alone(student):
    ids = mlm_ids(2, 12, 6)
    before = ids.clone()
    student.mask_tokens(ids, vocab_size=40, mask_token_id=3, special_token_ids=[0, 1, 2], seed=6, mlm_probability=0.9)
    assert torch.equal(ids, before), "mask_tokens changed its input_ids in place: clone them first"


@pytest.mark.exercise("5.5")
@pytest.mark.parametrize("dtype", [torch.int32, torch.long], ids=["int32", "int64"])
def test_mask_tokens_on_one_sequence_of_any_integer_dtype(student, dtype):
    ids = mlm_ids(1, 30, 7)[0]                          # (seq,): one sequence
    expected_inputs, expected_labels = collator_masking(ids[None], 7, mlm_probability=0.4)
    got_inputs, got_labels = student.mask_tokens(ids.to(dtype), vocab_size=40, mask_token_id=3,
                                                 special_token_ids=(0, 1, 2), seed=7, mlm_probability=0.4)
    assert_close(got_labels, expected_labels[0], what=f"labels of mask_tokens on a ({30},) {dtype} sequence",
                 hint="Both results are torch.long, of input_ids' shape (here one dimension).")
    assert_close(got_inputs, expected_inputs[0], what=f"masked ids of mask_tokens on a ({30},) {dtype} sequence")


# -- 5.6 lr_at -----------------------------------------------------------------------------------------
@pytest.mark.exercise("5.6")
@pytest.mark.parametrize("total_steps, warmup_steps, min_lr_ratio", [(10, 2, 0.0), (100, 10, 0.0), (50, 0, 0.0),
                                                                     (40, 5, 0.1), (7, 7, 0.0)])
def test_lr_at_matches_hugging_face_cosine_schedule(student, total_steps, warmup_steps, min_lr_ratio):
    peak = 3e-4
    got = [student.lr_at(s, peak_lr=peak, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
           for s in range(total_steps + 1)]
    expected = [peak * r for r in hf_schedule(total_steps, warmup_steps, min_lr_ratio)]
    assert_close(torch.tensor(got, dtype=F64), torch.tensor(expected, dtype=F64),
                 what=f"lr_at(step) for steps 0..{total_steps} (warmup {warmup_steps}, min_lr_ratio {min_lr_ratio})",
                 hint="Step 0 has lr 0 (peak * step / warmup_steps, not step + 1); the cosine starts at step == "
                      "warmup_steps with progress (step - warmup) / (total - warmup); min_lr_ratio scales the "
                      "cosine into [min_lr_ratio, 1].", rtol=1e-12, atol=1e-15)


@pytest.mark.exercise("5.6")
def test_lr_at_stays_at_the_floor_after_the_schedule(student):
    for step in (20, 21, 35):
        got = student.lr_at(step, peak_lr=1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
        assert math.isclose(got, 0.1, rel_tol=1e-12), \
            f"lr_at({step}) after total_steps=20 is {got}, expected the floor min_lr_ratio * peak_lr = 0.1 (clamp progress at 1)"


@pytest.mark.exercise("5.6")
def test_lr_at_returns_a_python_float(student):
    for step in (0, 3, 10, 15):
        got = student.lr_at(step, peak_lr=1e-3, warmup_steps=3, total_steps=10)
        assert type(got) is float, f"lr_at({step}) returned {type(got).__name__}, expected a Python float"


# -- 5.7 weight_decay_groups ---------------------------------------------------------------------------
def check_groups(groups, model, weight_decay, what):
    if not (isinstance(groups, list) and len(groups) == 2 and all(isinstance(g, dict) for g in groups)):
        raise AssertionError(f"{what}: expected a list of two dicts, got {groups!r:.200}")
    decay, no_decay = groups
    assert decay.get("weight_decay") == weight_decay and no_decay.get("weight_decay") == 0.0, \
        f"{what}: the first group decays by weight_decay={weight_decay}, the second by 0.0"
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = hf_decayed(model)
    assert sorted(decay["params"] + no_decay["params"]) == sorted(names), \
        f"{what}: every trainable parameter (named_parameters(), requires_grad) must be in exactly one group"
    wrongly_decayed = sorted(set(decay["params"]) - set(expected))
    assert not wrongly_decayed, \
        (f"{what}: {wrongly_decayed[:4]} must not be decayed: biases and norm weights (1-D) and embedding tables are "
         "left alone")
    missing = sorted(set(expected) - set(decay["params"]))
    assert not missing, f"{what}: {missing[:4]} are weight matrices of linear maps and must be decayed"
    assert decay["params"] == [n for n in names if n in set(expected)], \
        f"{what}: keep the order of named_parameters() within each group"


@pytest.mark.exercise("5.7")
@pytest.mark.parametrize("family", ["llama", "llama_untied", "gpt2", "course"])
def test_weight_decay_groups_match_the_trainer_without_embeddings(student, family):
    model = {"llama": lambda: tiny_llama("cpu"), "llama_untied": lambda: tiny_llama("cpu", tie=False),
             "gpt2": lambda: tiny_gpt2("cpu"), "course": lambda: tiny_course_lm("cpu")}[family]()
    check_groups(student.weight_decay_groups(model, 0.1), model, 0.1, f"weight_decay_groups({family} model, 0.1)")


class ScaledEmbedding(nn.Embedding):
    """An embedding table of a subclass of ``nn.Embedding`` (as some models define their own)."""

    def forward(self, ids):
        return super().forward(ids) * 2.0


@pytest.mark.exercise("5.7")
def test_weight_decay_groups_skip_frozen_parameters_and_find_every_embedding(student):
    in_process_only(student, "a hand-built nn.ModuleDict with an embedding class of this file")
    model = nn.ModuleDict({"wte": ScaledEmbedding(10, 4), "proj": nn.Linear(4, 4), "frozen": nn.Linear(4, 4),
                           "norm": nn.LayerNorm(4), "conv": nn.Conv1d(4, 4, 3)})
    model["frozen"].requires_grad_(False)
    groups = student.weight_decay_groups(model, 0.05)
    expected = [{"params": ["proj.weight", "conv.weight"], "weight_decay": 0.05},
                {"params": ["wte.weight", "proj.bias", "norm.weight", "norm.bias", "conv.bias"], "weight_decay": 0.0}]
    assert groups == expected, (f"weight_decay_groups = {groups}, expected {expected}: frozen parameters "
                                "(requires_grad=False) are in no group; an nn.Embedding subclass is an embedding "
                                "(isinstance); a 3-D convolution weight is decayed")
    bare = nn.Embedding(10, 4)
    assert student.weight_decay_groups(bare, 0.05) == [{"params": [], "weight_decay": 0.05},
                                                       {"params": ["weight"], "weight_decay": 0.0}], \
        "a model that *is* an nn.Embedding: its parameter is called 'weight' (module name ''), and is not decayed"


# -- 5.8 train_steps -----------------------------------------------------------------------------------
def hugging_face_gradients(model, micro_batches_of_step, autocast=False):
    """``(loss, {name: gradient})`` of one step as Hugging Face computes it: ``.loss`` of the whole step as
    one batch (labels -100 at padding and wherever the micro-batches' labels say so), under bf16 autocast
    if ``autocast``. Leaves ``model`` unchanged."""
    model = copy.deepcopy(model)
    batch = whole_step(micro_batches_of_step)
    batch["labels"] = hf_labels(batch["labels"], batch["attention_mask"])
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
        output = model(**batch)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gradients = torch.autograd.grad(output.loss, [p for _, p in named])
    return output.loss.item(), {n: g for (n, _), g in zip(named, gradients)}


def first_step_by_hugging_face(model, micro_batches_of_step, autocast=False):
    """Step one's loss and the total norm of its gradient as Hugging Face computes them
    (:func:`hugging_face_gradients`)."""
    loss, gradients = hugging_face_gradients(model, micro_batches_of_step, autocast)
    return loss, torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients.values()])).item()


def first_step_expected(model, steps, settings, autocast=False):
    """What ``train_steps(model, steps, settings)`` must report, from Hugging Face: step one's loss and
    gradient norm, every step's learning rate (the cosine schedule) and token count. Call it before
    training ``model``."""
    loss, grad_norm = first_step_by_hugging_face(model, steps[0], autocast)
    multipliers = hf_schedule(settings["total_steps"], settings["warmup_steps"], settings["min_lr_ratio"])
    return {"loss": [loss], "grad_norm": [grad_norm], "lr": [settings["lr"] * m for m in multipliers[:len(steps)]],
            "tokens": [int(whole_step(step)["attention_mask"].sum()) for step in steps]}


def check_first_step(history, expected, what, student=None):
    """``history`` against :func:`first_step_expected` (loss and gradient norm of step one only)."""
    if isinstance(history, dict) and set(history) == set(expected):   # else assert_history explains the type
        history = history | {"loss": history["loss"][:1], "grad_norm": history["grad_norm"][:1]}
    assert_history(history, expected, what=what, rtol=1e-5, student=student)


@pytest.mark.exercise("5.8")
@pytest.mark.parametrize("family, n_micro, padded", [("llama", 1, False), ("llama", 2, True), ("course", 3, True),
                                                     ("gpt2", 2, False)])
def test_train_steps_first_step_matches_hugging_face_loss(student, device, family, n_micro, padded):
    model = {"llama": tiny_llama, "course": tiny_course_lm, "gpt2": tiny_gpt2}[family](device, seed=1)
    steps = micro_batches(4, n_micro, 2, 12, device, seed=7, padded=padded)
    expected = first_step_expected(model, steps, SETTINGS)
    check_first_step(student.train_steps(model, steps, SETTINGS), expected,
                     what=f"train_steps({family} model, 4 steps of {n_micro} micro-batch(es), padded={padded})",
                     student=student)


@pytest.mark.exercise("5.8")
def test_train_steps_first_step_honours_labels_and_no_clipping(student, device):
    model = tiny_gpt2(device, seed=3)
    steps, settings = steps_with_prompts(device), SETTINGS | NO_CLIPPING
    expected = first_step_expected(model, steps, settings)
    check_first_step(student.train_steps(model, steps, settings), expected,
                     what="train_steps with max_grad_norm=None and labels with -100", student=student)


@pytest.mark.exercise("5.8")
@pytest.mark.parametrize("family", ["llama", "course"])
def test_train_steps_with_micro_batches_equals_one_big_batch(student, device, family):
    model = {"llama": tiny_llama, "course": tiny_course_lm}[family](device, seed=2)
    steps = micro_batches(4, 3, 2, 10, device, seed=8, padded=True)
    one_batch = student.train_steps(copy.deepcopy(model), [[whole_step(step)] for step in steps], SETTINGS)
    accumulated = student.train_steps(copy.deepcopy(model), steps, SETTINGS)
    assert_history(accumulated, one_batch, rtol=1e-5, student=student,
                   what=f"train_steps({family} model) with 3 padded micro-batches per step, against the same "
                        "steps as one batch each")


@pytest.mark.exercise("5.8")
def test_train_steps_in_bf16_autocast_matches_hugging_face_under_autocast(student, device):
    model = tiny_llama(device, seed=4)
    steps = micro_batches(3, 1, 2, 12, device, seed=10)
    full_precision = first_step_by_hugging_face(model, steps[0])
    bf16 = first_step_by_hugging_face(model, steps[0], autocast=True)
    gap = max(abs(a - b) / b for a, b in zip(bf16, full_precision))
    assert gap > 1e-4   # the test itself: bf16 shows in the loss or the gradient norm, ten times the tolerance
    settings = SETTINGS | {"mixed_precision": "bf16"}
    expected = first_step_expected(model, steps, settings, autocast=True)
    check_first_step(student.train_steps(model, steps, settings), expected, what="train_steps with mixed_precision='bf16'",
                     student=student)


@pytest.mark.exercise("5.8")
def test_train_steps_history_holds_python_numbers(student, device):
    model = tiny_llama(device, seed=6)
    history = student.train_steps(model, micro_batches(2, 2, 2, 8, device, seed=11, padded=True), SETTINGS)
    for key, kind in (("loss", float), ("grad_norm", float), ("lr", float), ("tokens", int)):
        assert isinstance(history.get(key), list) and all(type(v) is kind for v in history[key]), (
            f"history[{key!r}] must be a list of Python {kind.__name__}s, got {history.get(key)!r:.120}")


@pytest.mark.exercise("5.8")
def test_train_steps_continues_with_the_optimizer_and_scheduler_it_is_given(student, device):
    in_process_only(student, "an optimizer and a scheduler")
    from course_lib.pretraining import make_lr_scheduler, make_optimizer

    steps = micro_batches(4, 1, 2, 10, device, seed=12)
    settings = SETTINGS | {"warmup_steps": 2, "total_steps": 4}
    histories, models = [], []
    for cuts in ((0, 4), (0, 2, 4)):
        model = tiny_llama(device, seed=7)
        optimizer = make_optimizer(model, settings)
        scheduler = make_lr_scheduler(optimizer, settings)
        history = {"loss": [], "grad_norm": [], "lr": [], "tokens": []}
        for start, end in zip(cuts, cuts[1:]):
            part = student.train_steps(model, steps[start:end], settings, optimizer, scheduler)
            for key in history:
                history[key] += part[key]
        histories.append(history)
        models.append(model)
    assert_history(histories[1], histories[0], rtol=1e-6,
                   what="train_steps for 2 steps, then 2 more with the same optimizer and scheduler, against 4 steps")
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert_close(b.detach(), a.detach(), what=f"parameter {name} after the resumed run",
                     hint="Use the optimizer and scheduler you are given (their state carries the run on); build "
                          "new ones only when they are None.")


def constant_lr(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@pytest.mark.exercise("5.8")
def test_train_steps_steps_the_optimizer_on_the_clipped_gradient(student, device):
    in_process_only(student, "an optimizer and a scheduler")
    model = tiny_llama(device, seed=9)
    steps = micro_batches(1, 2, 2, 10, device, seed=14, padded=True)
    _, gradients = hugging_face_gradients(model, steps[0])
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients.values()])).item()
    max_norm, lr = 0.05, 0.1
    assert norm > 10 * max_norm   # the test itself: clipping scales this gradient down
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)        # plain SGD: the update is -lr * gradient
    student.train_steps(model, steps, SETTINGS | {"max_grad_norm": max_norm}, optimizer, constant_lr(optimizer))
    scale = max_norm / (norm + 1e-6)                              # clip_grad_norm_'s factor
    for name, p in model.named_parameters():
        assert_close(p.detach() - before[name], -lr * scale * gradients[name], rtol=1e-4, atol=1e-7,
                     what=f"the SGD(lr={lr}) update of {name} with max_grad_norm={max_norm}",
                     hint="Clip the gradient (clip_grad_norm_) after backward and before optimizer.step(): the "
                          "optimizer must step on the clipped gradient.")


@pytest.mark.exercise("5.8")
def test_train_steps_starts_every_step_from_a_zero_gradient(student, device):
    in_process_only(student, "an optimizer and a scheduler")
    model = tiny_llama(device, seed=10)
    step = micro_batches(1, 2, 2, 10, device, seed=15, padded=True)[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)       # the model stays as it is: every step is the same
    history = student.train_steps(model, [step, step, step], SETTINGS | NO_CLIPPING, optimizer, constant_lr(optimizer))
    assert_close(torch.tensor(history["grad_norm"]), torch.tensor(history["grad_norm"][:1] * 3), rtol=1e-5,
                 what="the gradient norms of three identical steps of a model that does not change",
                 hint="Zero the gradients after each optimizer step (optimizer.zero_grad()): else the next step's "
                      "backward adds to the last one's gradient.")


@pytest.mark.exercise("5.8")
def test_train_steps_takes_any_iterable_stops_when_asked_and_leaves_the_model_training(student, device):
    in_process_only(student, "a generator of steps and an on_step callback")
    steps = micro_batches(4, 1, 2, 8, device, seed=13)
    model = tiny_llama(device, seed=8).eval()
    seen = []
    history = student.train_steps(model, (step for step in steps), SETTINGS,
                                  on_step=lambda stats: seen.append(stats) or len(seen) == 2)
    assert len(history["loss"]) == 2 and len(seen) == 2, (
        f"on_step returned True after step 2, yet train_steps made {len(history['loss'])} steps (and called on_step "
        f"{len(seen)} times): stop right there. batches may be a generator: iterate it once.")
    assert seen[0]["loss"] == history["loss"][0], "on_step gets each step's stats, the same numbers as the history"
    assert model.training, "train_steps leaves the model in training mode"


# -- 5.9 mfu -------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.9")
def test_mfu_by_hand(student):
    # A 100M-parameter model at ~2N = 2e8 forward FLOPs per token, 500k tokens/s on one H100 (989 TFLOP/s):
    # 6 * 1e8 * 5e5 / 9.89e14 = 0.3033...
    got = student.mfu(5e5, 2 * 10**8, 989e12)
    assert math.isclose(got, 3 * 2e8 * 5e5 / 989e12, rel_tol=1e-12), \
        f"mfu(5e5 tokens/s, 2e8 forward FLOPs/token, 989e12) = {got}, expected 0.3033 (training = 3 forward passes; a fraction)"
    assert math.isclose(student.mfu(4e6, 2 * 10**8, 989e12, n_devices=8), 3 * 2e8 * 4e6 / (8 * 989e12), rel_tol=1e-12), \
        "with n_devices the peak is that of all devices together"


@pytest.mark.exercise("5.9")
def test_mfu_counts_what_flop_counter_measures_in_training(student):
    from torch.utils.flop_counter import FlopCounterMode

    from course_lib.transformer import flops_per_token

    model = tiny_course_lm("cpu", seed=5)
    input_ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, labels=input_ids).loss.backward()
    measured_per_token = counter.get_total_flops() / input_ids.numel()
    fpt = flops_per_token(model.config.architecture(), 16)
    got = student.mfu(1000.0, fpt, 1e12)
    assert math.isclose(got, measured_per_token * 1000.0 / 1e12, rel_tol=0.05), \
        (f"mfu = {got:.3g}, but FlopCounterMode measures {measured_per_token:.4g} FLOPs per token for forward + "
         f"backward, {measured_per_token / fpt:.2f} times flops_per_token")


@pytest.mark.exercise("5.9")
def test_mfu_is_a_python_float_for_integer_arguments(student):
    got = student.mfu(1000, 2 * 10**6, 10**12, 2)
    assert type(got) is float and math.isclose(got, 3e-3, rel_tol=1e-12), (
        f"mfu(1000, 2e6, 1e12, n_devices=2) = {got!r}, expected the Python float 0.003 (true division, even for ints)")


# -- the course's loop (not graded) -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_loop():
    """Skips unless the chapter's exercises run the reference solutions (the loop calls them)."""
    from course_lib import exercises

    if not exercises.uses_reference("pretraining"):
        pytest.skip("the loop's tests run in solution mode (--against solution or COURSE_LIB_MODE=solution)")


@pytest.fixture(scope="module")
def tiny_run_inputs(reference_loop):
    from course_lib.pretraining import course_tokenizer, prepare_data, preset

    config = preset("tiny")
    tokenizer = course_tokenizer()
    data = prepare_data(tokenizer, config.block_size)
    return config, tokenizer, data


def test_pretrain_lowers_the_validation_loss(tiny_run_inputs):
    from course_lib.pretraining import pretrain

    config, tokenizer, data = tiny_run_inputs
    result = pretrain(config, progress=False, data=data, tokenizer=tokenizer)
    history = result.history
    assert history["step"] == list(range(1, config.total_steps + 1))
    assert history["eval_step"] == [0, 4, 8]
    assert history["eval_loss"][-1] < history["eval_loss"][0] - 0.05
    assert abs(history["eval_loss"][0] - result.uniform_loss) < 0.2          # an untrained model is near uniform
    assert result.unigram_loss < result.uniform_loss
    assert result.tokens_per_second > 0 and 0 < result.mfu < 1
    assert all(t == config.tokens_per_step() for t in history["tokens"])


def test_resume_continues_bit_identically(tiny_run_inputs, tmp_path):
    from course_lib.pretraining import pretrain

    config, tokenizer, data = tiny_run_inputs
    whole = pretrain(config, tmp_path / "whole", progress=False, data=data, tokenizer=tokenizer)
    pretrain(config, tmp_path / "parts", max_steps=3, progress=False, data=data, tokenizer=tokenizer)
    resumed = pretrain(config, tmp_path / "parts", resume=True, progress=False, data=data, tokenizer=tokenizer)
    assert resumed.history["loss"] == whole.history["loss"]
    assert resumed.history["grad_norm"] == whole.history["grad_norm"]
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_step_batches_share_each_step_between_processes(tiny_run_inputs):
    from course_lib.pretraining import step_batches

    config, _, data = tiny_run_inputs
    one = list(step_batches(data.train_blocks, config))
    two = [list(step_batches(data.train_blocks, config, process_index=p, n_processes=2)) for p in range(2)]
    later = list(step_batches(data.train_blocks, config, start_step=5))
    assert len(one) == config.total_steps and len(one[0]) == config.accumulation_steps
    assert [b["input_ids"] for b in later[0]][0].equal(one[5][0]["input_ids"])
    per_step = [torch.cat([mb["input_ids"] for mb in step]) for step in two[0]]
    assert all(s.shape[0] == config.micro_batch_size * config.accumulation_steps for s in per_step)


@pytest.mark.slow
def test_accelerate_loop_with_two_cpu_processes(reference_loop, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")   # the children inherit the course_lib mode
    # accelerate launch starts several CPU processes only through mpirun; torchrun sets the same
    # environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) that Accelerator reads.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "course_lib.pretraining", "--preset", "tiny", "--no-progress", "--output", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["processes"] == 2
    assert math.isfinite(summary["validation_loss"]) and summary["validation_loss"] < summary["uniform_loss"]
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "model" / "config.json").is_file()


def test_pretrained_model_loads_with_auto_classes(tiny_run_inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course_lib.pretraining import pretrained_course_lm, pretrained_model_dir

    model, tokenizer = pretrained_course_lm("tiny", progress=False)
    directory = pretrained_model_dir("tiny")
    again = AutoModelForCausalLM.from_pretrained(directory)
    auto_tokenizer = AutoTokenizer.from_pretrained(directory)
    text = "def f(x):\n    return x"
    ids = auto_tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tiny_run_inputs[1](text, add_special_tokens=False)["input_ids"]
    assert auto_tokenizer.eos_token == "<|endoftext|>" and auto_tokenizer.pad_token == "<|pad|>"
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    summary = json.loads((directory / "training.json").read_text())
    assert summary["validation_loss"] < summary["uniform_loss"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)


def test_cli_cached_reads_the_cached_model_instead_of_training(tiny_run_inputs, capsys):
    """What the book build runs before its pages: on a warm cache it loads, it does not train again."""
    from course_lib.pretraining import main, pretrained_course_lm, pretrained_model_dir

    pretrained_course_lm("tiny", progress=False)
    weights = next(pretrained_model_dir("tiny").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    summary = main(["--cached", "--preset", "tiny", "--no-progress"])
    assert summary["directory"] == str(pretrained_model_dir("tiny"))
    assert weights.stat().st_mtime_ns == stamp, "--cached trained the model again on a warm cache"
    recorded = json.loads((pretrained_model_dir("tiny") / "training.json").read_text())
    assert summary["validation_loss"] == recorded["validation_loss"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    with pytest.raises(SystemExit):
        main(["--cached", "--preset", "tiny", "--steps", "3"])


@pytest.mark.parametrize("call, error, names", [
    (lambda p: p.pack_blocks([[1, 2]], 0, 2), ValueError, "block_size"),
    (lambda p: p.pack_blocks([[1, -2]], 4, 2), TypeError, "token_ids_per_doc"),
    (lambda p: p.split_documents(10, 1.0, 0), ValueError, "validation_fraction"),
    (lambda p: p.causal_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)), ValueError, "labels"),
    (lambda p: p.causal_lm_loss(torch.zeros(2, 3, 5), torch.full((2, 3), 5)), ValueError, "labels"),
    (lambda p: p.causal_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), reduction="none"),
     ValueError, "reduction"),
    (lambda p: p.mask_tokens(torch.zeros(2, 3, dtype=torch.long), vocab_size=5, mask_token_id=5, seed=0), ValueError,
     "mask_token_id"),
    (lambda p: p.lr_at(0, peak_lr=1.0, warmup_steps=5, total_steps=3), ValueError, "warmup_steps"),
    (lambda p: p.weight_decay_groups({"w": torch.zeros(2)}, 0.1), TypeError, "model"),
    (lambda p: p.train_steps(nn.Linear(2, 2), [[{"input_ids": torch.zeros(2, 3)}]], SETTINGS), TypeError, "input_ids"),
    (lambda p: p.train_steps(nn.Linear(2, 2), [], {"lr": 1.0}), ValueError, "settings"),
    (lambda p: p.mfu(1.0, 0, 1.0), ValueError, "flops_per_token"),
])
def test_bad_input_gets_an_error_naming_the_argument(call, error, names):
    from course_lib import pretraining

    with pytest.raises(error, match=names):
        call(pretraining)


# == 5.10-5.11: the optimizer and gradient clipping, from scratch =========================================
# The references are torch.optim.AdamW and torch.nn.utils.clip_grad_norm_, run by the course's own
# harnesses (run_optimizer, run_clipping: they set the gradients, the learning rates, interrupt and
# resume), the same harnesses that run the student's AdamW and clip_grad_norm_ behind the door. In
# float64 a correct AdamW differs from torch's by rounding only (~1e-15 over these few steps); every
# wrong variant tried differs by 1e-6 or more, so the default float64 tolerance (1e-7) decides.
def which_optimizer_and_clipping(student) -> str:
    """Which AdamW and clipping the student's train_steps ran: make_optimizer and clip_gradients take
    the student's once 5.10 and 5.11 run and torch's while they raise NotImplementedError. Found by
    calling their entry points through the same door."""
    ran = []
    for yours, torchs, call in (
            ("AdamW (5.10)", "torch.optim.AdamW",
             lambda: student.adamw_steps([torch.zeros(1)], [[torch.ones(1)]], [{"params": [0]}])),
            ("clip_grad_norm_ (5.11)", "torch.nn.utils.clip_grad_norm_",
             lambda: student.clipped_gradients([torch.ones(1)], 1.0))):
        try:
            call()
            ran.append(f"your {yours}")
        except NotImplementedError:
            ran.append(f"{torchs} (your {yours} is not done yet)")
        except Exception as err:  # noqa: BLE001 (any failure of theirs is worth naming here)
            ran.append(f"your {yours}, which raises {type(err).__name__}")
    return "train_steps ran with " + " and ".join(ran)


def adamw_problem(seed, n_steps=6, dtype=F64, device="cpu", scales=(1.0, 1e-6, 1e-2), shrink=1.0):
    """Three parameters of shapes (4, 3), (5,) and (2, 2, 2) and ``n_steps`` gradients for each, the
    gradient of parameter i of size ``scales[i]`` (a tiny one is where eps matters), multiplied by
    ``shrink ** t`` at step t (shrinking gradients are where AMSGrad's running maximum matters)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 2, 2)]
    params = [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes]
    grads = [[(torch.randn(s, generator=gen, dtype=dtype) * scale * shrink**t).to(device)
              for s, scale in zip(shapes, scales)] for t in range(n_steps)]
    return params, grads


def torch_adamw(params, grads, groups, **options):
    """``torch.optim.AdamW`` through the course's harness, on the trusted side."""
    from course_lib.pretraining import run_optimizer

    return run_optimizer(torch.optim.AdamW, params, grads, groups, **options)


ADAMW_HINT = ("Per parameter with a gradient: t = its update count from 1; p *= 1 - lr * weight_decay; m = beta1 m + "
              "(1 - beta1) g; v = beta2 v + (1 - beta2) g^2; p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + "
              "eps), with lr, betas, eps and weight_decay read from the parameter's own group at every step.")


def assert_same_run(got, expected, *, what, hint=ADAMW_HINT, exact=False):
    """The parameters after every step of ``got`` against ``expected`` (both from the harness)."""
    if not isinstance(got, dict) or set(got) != {"params", "returned", "state"}:
        raise AssertionError(f"{what}: expected the harness's dict with params, returned, state, got {got!r:.200}")
    assert len(got["params"]) == len(expected["params"]), f"{what}: {len(got['params'])} steps ran, expected {len(expected['params'])}"
    for t, (got_t, want_t) in enumerate(zip(got["params"], expected["params"])):
        for i, (g, w) in enumerate(zip(got_t, want_t)):
            label = f"{what}: parameter {i} after step {t + 1}"
            if exact:
                assert isinstance(g, torch.Tensor) and torch.equal(g, w), f"{label} differs: {hint}"
            else:
                assert_close(g, w, what=label, hint=hint)


ADAMW_GROUPS = {
    # make_optimizer's two groups: the first decayed, the second not (its weight_decay is 0, not the default 1e-2)
    "decay_and_no_decay": [{"params": [0, 2], "lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1},
                           {"params": [1], "lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.0}],
    # every hyperparameter from its own group; the second group takes AdamW's defaults for the rest
    "own_hyperparameters": [{"params": [0], "lr": 3e-2, "eps": 1e-3, "weight_decay": 0.5, "betas": (0.8, 0.9)},
                            {"params": [1, 2], "betas": (0.5, 0.9), "weight_decay": 0.0}],
    "defaults": [{"params": [0, 1, 2]}],
}
ADAMW_GROUP_HINTS = {
    "decay_and_no_decay": "The second group has weight_decay 0.0: decay by the group's coefficient, not AdamW's default, "
                          "and multiply the weights (decoupled), do not add weight_decay * p to the gradient (L2).",
    "own_hyperparameters": "Read lr, betas, eps and weight_decay from each parameter's group (self.defaults only fills in "
                           "what a group leaves out); eps is added after the square root.",
    "defaults": "With AdamW's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2).",
}


# -- 5.10 AdamW.step -----------------------------------------------------------------------------------
@pytest.mark.exercise("5.10")
@pytest.mark.parametrize("groups", list(ADAMW_GROUPS))
def test_adamw_matches_torch_adamw_step_for_step(student, device, groups):
    params, grads = adamw_problem(0, device=device)
    expected = torch_adamw(params, grads, ADAMW_GROUPS[groups])
    plain_adam = torch_adamw(params, grads, [dict(g, weight_decay=0.0) for g in ADAMW_GROUPS[groups]])
    assert not torch.equal(expected["params"][0][0], plain_adam["params"][0][0])   # the test itself: decay shows
    assert_same_run(student.adamw_steps(params, grads, ADAMW_GROUPS[groups]), expected,
                    what=f"AdamW with groups {groups!r}, 6 steps in float64",
                    hint=f"{ADAMW_GROUP_HINTS[groups]} {ADAMW_HINT}")


@pytest.mark.exercise("5.10")
def test_adamw_in_float32_matches_torch_adamw(student, device):
    params, grads = adamw_problem(1, n_steps=5, dtype=torch.float32, device=device)
    groups = ADAMW_GROUPS["decay_and_no_decay"]
    assert_same_run(student.adamw_steps(params, grads, groups), torch_adamw(params, grads, groups),
                    what="AdamW in float32 (the state in the parameters' dtype)")


@pytest.mark.exercise("5.10")
def test_adamw_first_step_moves_every_entry_by_about_lr(student):
    # With m and v starting at 0, the bias-corrected first step is lr * g / (|g| + eps): lr per entry with
    # eps = 0, whatever the gradient's size. Without bias correction it is lr * 0.1 / sqrt(0.001) = 3.2 lr.
    params, grads = adamw_problem(2, n_steps=1, scales=(1.0, 1e-3, 1e3))
    got = student.adamw_steps(params, grads, [{"params": [0, 1, 2], "lr": 0.1, "eps": 0.0, "weight_decay": 0.0}])
    for i, (before, after) in enumerate(zip(params, got["params"][0])):
        moved = (after - before).abs()
        assert_close(moved, torch.full_like(moved, 0.1), what=f"AdamW's first step: |change| of parameter {i}",
                     hint="Bias correction: divide m by 1 - beta1^t and v by 1 - beta2^t with t = 1 at the first "
                          "update, so that m_hat = g and v_hat = g^2.", rtol=1e-9, atol=0)


@pytest.mark.exercise("5.10")
def test_adamw_keeps_its_state_under_torchs_names(student, device):
    params, grads = adamw_problem(3, n_steps=4, device=device)
    groups = ADAMW_GROUPS["decay_and_no_decay"]
    got, expected = student.adamw_steps(params, grads, groups)["state"], torch_adamw(params, grads, groups)["state"]
    assert isinstance(got, dict) and set(got) == {"state", "param_groups"}, \
        f"state_dict() must have 'state' and 'param_groups' (the base class's), got {got!r:.200}"
    for key, want in expected["state"].items():
        have = got["state"].get(key)
        assert isinstance(have, dict) and set(have) == set(want), \
            (f"state of parameter {key}: keys {sorted(have) if isinstance(have, dict) else have}, expected "
             f"{sorted(want)}: keep step, exp_avg and exp_avg_sq in self.state[p], where state_dict() finds them")
        assert isinstance(have["step"], torch.Tensor) and have["step"].ndim == 0, \
            (f"state of parameter {key}: step is {have['step']!r}, expected a 0-dim tensor (torch.tensor(0.0), "
             "counted up in place), as torch keeps it")
        assert float(have["step"]) == float(want["step"]), \
            f"state of parameter {key}: step {float(have['step'])}, expected {float(want['step'])} (one per update)"
        for name in ("exp_avg", "exp_avg_sq"):
            assert_close(have[name], want[name], what=f"state of parameter {key}: {name}",
                         hint="exp_avg is m = beta1 m + (1 - beta1) g, exp_avg_sq is v = beta2 v + (1 - beta2) g^2, "
                              "both without bias correction (that is applied to the step only).")
    for have, want in zip(got["param_groups"], expected["param_groups"]):
        for key in ("params", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert have.get(key) == want[key], f"param_groups: {key} is {have.get(key)!r}, expected {want[key]!r}"


@pytest.mark.exercise("5.10")
def test_adamw_reads_each_groups_learning_rate_at_every_step(student, device):
    # What a scheduler does between steps; lr 0 also stops the decay (it is lr * weight_decay).
    params, grads = adamw_problem(4, n_steps=5, device=device)
    groups = ADAMW_GROUPS["decay_and_no_decay"]
    lrs = [[0.0, 1e-3], [1e-2, 0.0], [3e-2, 2e-3], [5e-3, 5e-3], [1e-1, 1e-4]]
    expected = torch_adamw(params, grads, groups, lrs=lrs)
    assert not torch.equal(expected["params"][-1][0], torch_adamw(params, grads, groups)["params"][-1][0])
    assert_same_run(student.adamw_steps(params, grads, groups, lrs=lrs), expected,
                    what="AdamW with the learning rates of a schedule",
                    hint="A scheduler writes each group's 'lr' before every step: read group['lr'] in step(), "
                         "never a learning rate kept from __init__ (self.defaults).")


@pytest.mark.exercise("5.10")
def test_adamw_skips_parameters_without_gradient(student, device):
    params, grads = adamw_problem(5, n_steps=5, device=device)
    for t in (1, 2):
        grads[t][0] = None                      # parameter 0 misses two steps
    for step in grads:
        step[2] = None                          # parameter 2 never has a gradient
    groups = [{"params": [0, 1, 2], "lr": 1e-2, "weight_decay": 0.1}]
    got = student.adamw_steps(params, grads, groups)
    hint = ("A parameter whose .grad is None is skipped altogether: no decay, no moment update, no step count "
            "(its t counts its own updates only), and no state until its first gradient.")
    assert_same_run(got, torch_adamw(params, grads, groups), what="AdamW with missing gradients", hint=hint)
    assert isinstance(got["state"], dict) and "2" not in got["state"].get("state", {}), \
        f"parameter 2 never had a gradient but has state: {hint}"


@pytest.mark.exercise("5.10")
def test_adamw_resumed_from_its_state_dict_continues_exactly(student, device):
    params, grads = adamw_problem(6, n_steps=7, device=device)
    groups = ADAMW_GROUPS["own_hyperparameters"]
    uninterrupted = student.adamw_steps(params, grads, groups)
    resumed = student.adamw_steps(params, grads, groups, resume_after=3)
    hint = ("After load_state_dict a new optimizer must continue where the old one stopped: keep every piece of "
            "state (step, exp_avg, exp_avg_sq) in self.state[p], which state_dict() saves, not in attributes of "
            "your own.")
    assert_same_run(resumed, uninterrupted, what="AdamW interrupted after 3 of 7 steps and resumed from its state_dict, "
                    "against the uninterrupted run", hint=hint, exact=device.type == "cpu")
    assert_same_run(resumed, torch_adamw(params, grads, groups, resume_after=3),
                    what="AdamW resumed from its state_dict, against torch's", hint=hint)


@pytest.mark.exercise("5.10")
def test_adamw_step_calls_the_closure_and_returns_its_loss(student, device):
    params, grads = adamw_problem(7, n_steps=3, device=device)
    groups = ADAMW_GROUPS["decay_and_no_decay"]
    got = student.adamw_steps(params, grads, groups, closure=True)
    hint = ("step(closure) calls the closure first (inside torch.enable_grad()): it computes the gradients the "
            "update uses; step returns its loss.")
    returned = got.get("returned") if isinstance(got, dict) else None
    assert isinstance(returned, list) and [r.item() if isinstance(r, torch.Tensor) else r for r in returned] == \
        [0.5, 1.5, 2.5], f"step(closure) returned {returned!r:.200}, expected the closure's losses 0.5, 1.5, 2.5. {hint}"
    assert_same_run(got, torch_adamw(params, grads, groups, closure=True), what="AdamW with a closure", hint=hint)
    plain = student.adamw_steps(params, grads, groups)
    assert plain["returned"] == [None, None, None], f"step() without a closure must return None, got {plain['returned']}"


@pytest.mark.exercise("5.10")
@pytest.mark.parametrize("flag", ["amsgrad", "maximize"])
def test_adamw_amsgrad_and_maximize_match_torch(student, device, flag):
    # Shrinking gradients and beta2 = 0.5: v falls from step to step, so AMSGrad's running maximum differs from v.
    params, grads = adamw_problem(8, device=device, shrink=0.3)
    groups = [{"params": [0, 2], "lr": 1e-2, "betas": (0.9, 0.5), "weight_decay": 0.1, flag: True},
              {"params": [1], "lr": 1e-2, "weight_decay": 0.0}]
    expected = torch_adamw(params, grads, groups)
    assert not torch.equal(expected["params"][-1][0], torch_adamw(params, grads, [dict(g, **{flag: False}) for g in groups])["params"][-1][0])
    hints = {"amsgrad": "With amsgrad, keep the elementwise maximum of all v so far in state['max_exp_avg_sq'] and use "
                        "it (bias-corrected by 1 - beta2^t) in place of v in the denominator; v itself keeps its own "
                        "average.",
             "maximize": "With maximize, the update uses g = -p.grad (ascent); the decay still shrinks the weights."}
    got = student.adamw_steps(params, grads, groups)
    assert_same_run(got, expected, what=f"AdamW with {flag}=True in the first group", hint=hints[flag])
    state = got["state"]["state"]["0"]
    assert set(state) == set(expected["state"]["state"]["0"]), \
        (f"with {flag}=True the first parameter's state holds {sorted(state)}, expected "
         f"{sorted(expected['state']['state']['0'])} (torch's names: state_dict() saves them, a resumed run needs them)")


# -- 5.11 clip_grad_norm_ ------------------------------------------------------------------------------
def clip_problem(seed, shapes=((30, 20), (50,), (4, 4, 4)), scale=1.0, dtype=F64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=dtype) * scale).to(device) for s in shapes]


def torch_clipping(grads, max_norm, norm_type=2.0, error_if_nonfinite=False, as_tensor=False):
    """``torch.nn.utils.clip_grad_norm_`` through the course's harness, on the trusted side."""
    from course_lib.pretraining import run_clipping

    return run_clipping(torch.nn.utils.clip_grad_norm_, grads, max_norm, norm_type, error_if_nonfinite, as_tensor)


NORM_HINT = ("The total norm is the p-norm of all gradients' entries together: the p-norm of the per-tensor p-norms "
             "(the largest absolute entry for norm_type=inf), from before clipping; not their sum, not one tensor's.")
SCALE_HINT = ("Multiply every gradient by the same min(1, max_norm / (total_norm + 1e-6)): clipping each tensor on "
              "its own turns the update's direction, and a scale above 1 would blow small gradients up.")


def check_clipping(got, expected, what, originals=None):
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise AssertionError(f"{what}: the harness returns (total_norm, gradients), got {got!r:.200}")
    (norm, grads), (want_norm, want_grads) = got, expected
    # atol 0: clipped gradients can be small, and the scale must be right relative to them
    assert_close(norm, want_norm, what=f"{what}: the total norm returned", atol=0.0,
                 hint=f"{NORM_HINT} Return it as a 0-dim tensor in the gradients' dtype.")
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        if w is None:
            assert g is None, f"{what}: parameter {i} had no gradient and must still have none"
            continue
        if originals is not None and isinstance(g, torch.Tensor) and torch.equal(g, originals[i]) \
                and not torch.equal(w, originals[i]):
            raise AssertionError(f"{what}: gradient {i} was not scaled at all. parameters may be a generator, like "
                                 "model.parameters(), which is empty the second time it is read: list(parameters) first.")
        assert_close(g, w, what=f"{what}: gradient {i} after clipping", hint=SCALE_HINT, atol=0.0)


@pytest.mark.exercise("5.11")
@pytest.mark.parametrize("norm_type, max_norm, scale", [(2.0, 1.0, 1.0), (2.0, 1e-4, 1e-4), (math.inf, 0.5, 1.0),
                                                        (1.0, 3.0, 1.0), (3.0, 2.0, 0.5)])
def test_clip_grad_norm_matches_torch(student, device, norm_type, max_norm, scale):
    grads = clip_problem(10, scale=scale, device=device)
    expected = torch_clipping(grads, max_norm, norm_type)
    assert expected[0] > 2 * max_norm   # the test itself: these gradients are clipped
    check_clipping(student.clipped_gradients(grads, max_norm, norm_type), expected, originals=grads,
                   what=f"clip_grad_norm_(max_norm={max_norm}, norm_type={norm_type}) of 3 gradients")


@pytest.mark.exercise("5.11")
@pytest.mark.parametrize("max_norm", [10.0, math.inf])
def test_clip_grad_norm_below_the_limit_changes_nothing(student, device, max_norm):
    grads = clip_problem(11, scale=1e-3 if max_norm == 10.0 else 1e3, device=device)
    expected = torch_clipping(grads, max_norm)
    assert all(torch.equal(g, w) for g, w in zip(grads, expected[1]))   # the test itself: nothing to clip
    check_clipping(student.clipped_gradients(grads, max_norm), expected,
                   what=f"clip_grad_norm_(max_norm={max_norm}) of gradients with a norm below it")


@pytest.mark.exercise("5.11")
def test_clip_grad_norm_skips_parameters_without_gradient(student, device):
    grads = clip_problem(12, device=device)
    grads = [grads[0], None, grads[1], None, grads[2]]
    check_clipping(student.clipped_gradients(grads, 1.0), torch_clipping(grads, 1.0), originals=grads,
                   what="clip_grad_norm_ with two parameters whose .grad is None")
    norm, untouched = student.clipped_gradients([None, None], 1.0)
    assert_close(norm, torch.tensor(0.0), what="clip_grad_norm_ when no parameter has a gradient",
                 hint="Nothing to measure: return torch.tensor(0.0) and change nothing.")
    assert untouched == [None, None], "parameters without gradients must keep .grad None"


@pytest.mark.exercise("5.11")
def test_clip_grad_norm_takes_a_single_tensor_and_keeps_float32(student, device):
    (grad,) = clip_problem(13, shapes=((7, 5),), dtype=torch.float32, device=device)
    check_clipping(student.clipped_gradients([grad], 0.5, as_tensor=True), torch_clipping([grad], 0.5, as_tensor=True),
                   what="clip_grad_norm_(one tensor, 0.5) in float32", originals=[grad])


@pytest.mark.exercise("5.11")
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_clip_grad_norm_with_a_non_finite_norm_does_what_torch_does(student, device, bad):
    grads = clip_problem(14, device=device)
    grads[1][3] = float(bad)
    try:
        student.clipped_gradients(grads, 1.0, error_if_nonfinite=True)
    except RuntimeError:
        pass
    else:
        raise AssertionError(f"clip_grad_norm_(error_if_nonfinite=True) of gradients holding {bad} returned: a NaN or "
                             "infinite total norm must raise RuntimeError then")
    check_clipping(student.clipped_gradients(grads, 1.0), torch_clipping(grads, 1.0),
                   what=f"clip_grad_norm_ of gradients holding {bad} (error_if_nonfinite=False)")


@pytest.mark.parametrize("call, error, names", [
    (lambda p: p.AdamW([nn.Parameter(torch.zeros(2))], lr=-1e-3), ValueError, "lr"),
    (lambda p: p.AdamW([nn.Parameter(torch.zeros(2))], betas=(0.9, 1.0)), ValueError, "betas"),
    (lambda p: p.AdamW([{"params": [nn.Parameter(torch.zeros(2))], "weight_decay": -0.1}]), ValueError, "weight_decay"),
    (lambda p: p.AdamW([nn.Parameter(torch.zeros(2))], amsgrad=1), TypeError, "amsgrad"),
    (lambda p: p.AdamW([nn.Parameter(torch.zeros(2))]).step(closure=1.0), TypeError, "closure"),
    (lambda p: p.clip_grad_norm_([nn.Parameter(torch.zeros(2))], -1.0), ValueError, "max_norm"),
    (lambda p: p.clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0, norm_type=0), ValueError, "norm_type"),
    (lambda p: p.clip_grad_norm_(3.0, 1.0), TypeError, "parameters"),
    (lambda p: p.adamw_steps([torch.zeros(2)], [[torch.zeros(3)]], [{"params": [0]}]), ValueError, "grads"),
    (lambda p: p.adamw_steps([torch.zeros(2)], [[torch.zeros(2)]], [{"params": [0, 0]}]), ValueError, "groups"),
    (lambda p: p.clipped_gradients([torch.zeros(2), torch.zeros(2)], 1.0, as_tensor=True), ValueError, "as_tensor"),
])
def test_bad_optimizer_and_clipping_input_gets_an_error_naming_the_argument(call, error, names):
    from course_lib import pretraining

    with pytest.raises(error, match=names):
        call(pretraining)


# == 5.12-5.13: checkpoints that resume exactly ===========================================================
# The run to save is course_lib's checkpoint_setup (a small network, AdamW, a warmup schedule and the
# global generators, all seeded); the trusted side rebuilds it from the same seed to know what a
# checkpoint must hold (and writes the checkpoint that load_checkpoint's tests load), and the
# harnesses (run_save_checkpoint, run_checkpoint_resume) call the student's functions behind the door.
def checkpoint_contents(seed, updates, step, history):
    """What save_checkpoint's contract says the checkpoint of checkpoint_setup(seed, updates) holds."""
    import random

    from course_lib.pretraining import checkpoint_setup

    model, optimizer, scheduler = checkpoint_setup(seed, updates)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "step": step, "history": history,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all(), "python": random.getstate()}}


def expected_checkpoint(seed, updates, step, history):
    """:func:`checkpoint_contents` as the plain data the door returns."""
    from course_lib.pretraining import _plain

    return _plain(checkpoint_contents(seed, updates, step, history))


def checkpoint_bytes(seed, updates, step, history) -> bytes:
    """The contract's checkpoint.pt of checkpoint_setup(seed, updates), written here on the trusted side,
    for load_checkpoint's tests (so that they do not depend on the student's save_checkpoint)."""
    import io

    buffer = io.BytesIO()
    torch.save(checkpoint_contents(seed, updates, step, history), buffer)
    return buffer.getvalue()


CHECKPOINT_HINTS = {
    "model": "model.state_dict(): the weights.",
    "optimizer": "optimizer.state_dict(): AdamW's moments and step counts, without which the resumed run restarts "
                 "its moments at zero.",
    "scheduler": "scheduler.state_dict(): the position in the schedule, without which the learning rate restarts "
                 "its warmup.",
    "step": "the step passed in (the data position).",
    "history": "the history passed in.",
    "rng": "{'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all(), 'python': random.getstate()}: "
           "the generators' states at the moment of saving.",
}


def assert_same_data(got, want, what, hint):
    """Plain data (dicts, lists, numbers, tensors) equal, entry by entry."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), \
            f"{what}: keys {sorted(got) if isinstance(got, dict) else type(got).__name__}, expected {sorted(want)}. {hint}"
        for key in want:
            assert_same_data(got[key], want[key], f"{what}[{key!r}]", hint)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{what}: expected a list of {len(want)}. {hint}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_data(g, w, f"{what}[{i}]", hint)
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want), \
            f"{what} differs from the run's. {hint}"
    else:
        assert got == want, f"{what} is {got!r:.100}, expected {want!r:.100}. {hint}"


# -- 5.12 save_checkpoint ------------------------------------------------------------------------------
@pytest.mark.exercise("5.12")
@pytest.mark.parametrize("key", list(CHECKPOINT_HINTS))
def test_save_checkpoint_holds_what_an_exact_resume_needs(student, key):
    history = {"loss": [2.5, 2.25, 2.0], "lr": [0.0, 1e-3, 2e-3]}
    got = student.saved_checkpoint(1, 3, 9, history)
    content = got.get("content") if isinstance(got, dict) else None
    want = expected_checkpoint(1, 3, 9, history)
    assert isinstance(content, dict) and key in content, \
        (f"the checkpoint holds {sorted(content) if isinstance(content, dict) else content!r:.100}, and no {key!r}: "
         f"{CHECKPOINT_HINTS[key]}")
    assert_same_data(content[key], want[key], f"checkpoint[{key!r}]", CHECKPOINT_HINTS[key])


@pytest.mark.exercise("5.12")
def test_save_checkpoint_writes_one_file_in_a_new_folder_and_replaces_the_old_one(student):
    got = student.saved_checkpoint(2, 2, 4, {"loss": [1.0]})
    assert got["path"] == "checkpoint.pt", \
        f"save_checkpoint returned {got['path']!r} (relative to the folder); return the path of directory / 'checkpoint.pt'"
    assert got["files"] == ["checkpoint.pt"], \
        (f"after two saves the folder holds {got['files']}: write checkpoint.pt only (a temporary file is renamed "
         "over it, not left beside it)")
    assert got["content"]["step"] == 4 and got["content"]["history"] == {"loss": [1.0]}, \
        "the second save must replace the first: the file holds step 4 and its history"


@pytest.mark.exercise("5.12")
def test_save_checkpoint_takes_its_folder_as_a_str(student):
    got = student.saved_checkpoint(5, 2, 3, {"loss": [1.0, 0.5]}, as_str=True)
    assert got["path"] == "checkpoint.pt" and got["files"] == ["checkpoint.pt"], \
        (f"save_checkpoint('<folder as a str>', ...) returned {got['path']!r} and left {got['files']}: directory may be "
         "a str as well as a Path (Path(directory) / 'checkpoint.pt')")
    assert_same_data(got["content"], expected_checkpoint(5, 2, 3, {"loss": [1.0, 0.5]}), "checkpoint",
                     "The same checkpoint whether the folder comes as a str or a Path.")


# -- 5.13 load_checkpoint ------------------------------------------------------------------------------
@pytest.mark.exercise("5.13")
def test_load_checkpoint_continues_the_run_exactly(student):
    got = student.resumed_from_checkpoint(checkpoint_bytes(3, 3, 11, {"loss": [3.0, 2.0]}), 3, 3)
    assert got["returned"] == [11, {"loss": [3.0, 2.0]}], \
        f"load_checkpoint returned {got['returned']!r:.100}, expected (step, history) as saved: (11, {{'loss': [3.0, 2.0]}})"
    assert got["lr"]["resumed"] == got["lr"]["uninterrupted"], \
        (f"after one more step the resumed run's learning rate is {got['lr']['resumed']}, the uninterrupted one's "
         f"{got['lr']['uninterrupted']}: restore the scheduler with scheduler.load_state_dict")
    for i, (resumed, uninterrupted) in enumerate(zip(got["params"]["resumed"], got["params"]["uninterrupted"])):
        assert torch.equal(resumed, uninterrupted), \
            (f"parameter {i} after one more step differs from the uninterrupted run's: restore the weights "
             "(model.load_state_dict) and the optimizer's moments and step counts (optimizer.load_state_dict)")


@pytest.mark.exercise("5.13")
def test_load_checkpoint_takes_its_folder_as_a_str(student):
    got = student.resumed_from_checkpoint(checkpoint_bytes(6, 2, 4, {"loss": [2.0]}), 6, 2, as_str=True)
    assert got["returned"] == [4, {"loss": [2.0]}] and all(
        torch.equal(a, b) for a, b in zip(got["params"]["resumed"], got["params"]["uninterrupted"])), \
        "load_checkpoint('<folder as a str>', ...) must resume as from a Path: Path(directory) / 'checkpoint.pt'"


@pytest.mark.exercise("5.13")
def test_load_checkpoint_restores_the_random_generators(student):
    draws = student.resumed_from_checkpoint(checkpoint_bytes(4, 2, 5, {}), 4, 2)["draws"]
    for name in ("torch", "python"):
        got, want = draws["resumed"][name], draws["uninterrupted"][name]
        same = torch.equal(got, want) if isinstance(want, torch.Tensor) else got == want
        assert same, (f"after load_checkpoint, {name}'s generator draws {got}, but the uninterrupted run drew {want}: "
                      "restore torch.set_rng_state(state['rng']['torch'].cpu()), the CUDA states when there are some, "
                      "and random.setstate(state['rng']['python'])")
