"""Chapter 5: pre-training a small language model.

Pre-training is next-token prediction on a large amount of text (Radford et al., 2019): the model
reads a block of tokens and, at every position, is scored by the cross-entropy of the token that
actually comes next. Everything else in this chapter is what makes that run correctly and fast:

- **data** (5.1-5.3): the corpus is tokenized with Chapter 1's tokenizer, every document is followed
  by the end-of-text token, and the token stream is cut into fixed-length blocks (:func:`pack_blocks`;
  no padding is wasted). The split into training and validation data is by *document*
  (:func:`split_documents`, the same split as ``datasets.Dataset.train_test_split``), before packing,
  so that no validation text leaks into training blocks. Batches are drawn in a seeded order
  (:func:`batch_order`), the order ``torch.utils.data.DataLoader(shuffle=True)`` uses.
- **objectives** (5.4-5.5): the shifted causal-LM cross-entropy (:func:`causal_lm_loss`) and, for
  comparison, BERT's masked-LM corruption (:func:`mask_tokens`; Devlin et al., 2019).
- **optimisation** (5.6-5.8): linear warmup and cosine decay of the learning rate (:func:`lr_at`;
  Loshchilov & Hutter, 2017), AdamW with decoupled weight decay on the right parameters only
  (:func:`weight_decay_groups`; Loshchilov & Hutter, 2019), and the training step with gradient
  accumulation, clipping and bf16 mixed precision (:func:`train_steps`; Micikevicius et al., 2018).
- **cost** (5.9): tokens per second and model FLOPs utilisation (:func:`mfu`; Chowdhery et al., 2022)
  from Chapter 3's FLOP count (Kaplan et al., 2020; Hoffmann et al., 2022 for how many tokens a
  model of a given size deserves).
- **the optimizer from scratch** (5.10-5.11): AdamW as a ``torch.optim.Optimizer`` (:class:`AdamW`;
  Kingma & Ba, 2015 for Adam's moments and bias correction) and clipping by the global gradient
  norm (:func:`clip_grad_norm_`; Pascanu et al., 2013). The loop uses them once they are done and
  torch's until then (:func:`make_optimizer`, :func:`clip_gradients`, :func:`loop_parts`).
- **checkpoints** (5.12-5.13): save and restore the model, the optimizer, the scheduler, the step
  (the data position) and the random generators, so that a resumed run is the uninterrupted one
  (:func:`save_checkpoint`, :func:`load_checkpoint`).

Everything around the exercises is implemented here: the data pipeline (:func:`prepare_data`), the
run configurations (:data:`PRESETS`: ``"tiny"`` for tests, ``"cpu"`` for a laptop, ``"gpu"`` for
~100M parameters on one H100), the loop that runs through Hugging Face Accelerate with evaluation,
checkpoints, exact resume and a progress bar (:func:`pretrain`), the course's pretrained model for
later chapters (:func:`pretrained_course_lm`), baselines (:func:`unigram_loss`,
:func:`uniform_loss`), peak-FLOPs figures and plots.

Conventions used by every exercise of this chapter:

- **Blocks and batches.** Token ids are ``torch.long``. A batch of blocks is ``(batch, seq)``;
  logits are ``(batch, seq, vocab_size)``. For a causal LM the labels are the inputs themselves
  (``labels = input_ids``); the *shift* happens in the loss: position ``t``'s logits predict the
  token at ``t + 1``, so a block of ``seq`` tokens gives ``seq - 1`` predictions.
- **Ignored targets.** A target equal to ``ignore_index`` (``-100``, as in PyTorch and Hugging Face)
  or whose ``attention_mask`` is 0 (padding) gives no loss and is not counted.
- **Token-weighted means.** A mean loss is the sum over all counted targets of the batch divided by
  their number (Hugging Face's convention), never a mean of per-sequence or per-batch means: those
  weigh a short sequence's tokens more than a long one's (the seed outline's perplexity did that).
- **Seeds.** Every random choice takes an integer ``seed`` (not a generator), so that the same call
  gives the same answer anywhere, including across the grading door.
- **Weight decay.** Decay applies to the weight matrices of linear maps only: never to biases,
  normalisation weights (both 1-D) or embedding tables (token and position). Decoupled weight decay
  shrinks every decayed parameter at every step, also an embedding row whose token did not occur in
  the batch: rare tokens' rows would shrink towards zero between their updates.

Multi-GPU: the loop runs unchanged under ``accelerate launch`` (data parallel, one process per GPU)::

    accelerate launch --multi_gpu --num_processes 8 -m course_lib.pretraining --preset gpu --output runs/gpu
    torchrun --nproc_per_node 2 -m course_lib.pretraining --preset tiny   # 2 CPU processes (gloo)

(``accelerate launch`` starts several CPU processes only through ``mpirun``; ``torchrun`` sets the
same environment that ``Accelerator`` reads.)

Each process takes its own share of every optimizer step's blocks, so the run sees the same data
and the same schedule whatever the number of processes; only ``micro_batch_size`` is per process.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from course_lib.attention import _check_padding_mask
from course_lib.checks import check_bool, check_int, check_number, check_tensor
from course_lib.exercises import exercise
from course_lib.loop_settings import LoopSettings

IGNORE_INDEX = -100
MIXED_PRECISION = ("no", "bf16")
SETTINGS_KEYS = ("lr", "warmup_steps", "total_steps", "min_lr_ratio", "weight_decay", "betas", "eps",
                 "max_grad_norm", "mixed_precision")


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_token_ids(name: str, ids, ndim: int | None = 2) -> None:
    check_tensor(name, ids, integer=True)
    if ndim is not None and ids.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor of token ids, got shape {tuple(ids.shape)}")


def _validate_pack_blocks(token_ids_per_doc, block_size, eos_token_id) -> None:
    if not isinstance(token_ids_per_doc, (list, tuple)):
        raise TypeError(f"token_ids_per_doc must be a list of lists of token ids, got {type(token_ids_per_doc).__name__}")
    for i, doc in enumerate(token_ids_per_doc):
        if not isinstance(doc, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                         for t in doc):
            raise TypeError(f"token_ids_per_doc[{i}] must be a list of non-negative int token ids")
    check_int("block_size", block_size, 1)
    check_int("eos_token_id", eos_token_id, minimum=0)


def _validate_split_documents(n_documents, validation_fraction, seed) -> None:
    check_int("n_documents", n_documents, minimum=2)
    check_number("validation_fraction", validation_fraction, 0.0, 1.0, open_minimum=True, open_maximum=True)
    if math.ceil(validation_fraction * n_documents) >= n_documents:
        raise ValueError(f"validation_fraction={validation_fraction} of {n_documents} documents leaves no "
                         "training document")
    check_int("seed", seed, minimum=0)


def _validate_batch_order(n_blocks, batch_size, seed) -> None:
    check_int("n_blocks", n_blocks, minimum=0)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, minimum=0)


def _validate_causal_lm_loss(logits, labels, attention_mask=None, ignore_index=IGNORE_INDEX,
                             reduction="mean") -> None:
    check_tensor("logits", logits, floating=True)
    if logits.ndim != 3 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (batch, seq, vocab_size) with vocab_size > 0, "
                         f"got {tuple(logits.shape)}")
    _check_token_ids("labels", labels)
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have shape (batch, seq) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    check_int("ignore_index", ignore_index, minimum=-(2**63))
    kept = labels[labels != ignore_index]
    if kept.numel() and (kept.min() < 0 or kept.max() >= logits.shape[-1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[-1]}) or equal ignore_index={ignore_index}, "
                         f"got values in [{int(kept.min())}, {int(kept.max())}]")
    if attention_mask is not None:
        _check_padding_mask("attention_mask", attention_mask, *labels.shape)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _validate_mask_tokens(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                          mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1) -> None:
    _check_token_ids("input_ids", input_ids, ndim=None)
    if input_ids.ndim not in (1, 2):
        raise ValueError(f"input_ids must be (seq,) or (batch, seq), got shape {tuple(input_ids.shape)}")
    check_int("vocab_size", vocab_size, 1)
    check_int("mask_token_id", mask_token_id, minimum=0)
    if mask_token_id >= vocab_size:
        raise ValueError(f"mask_token_id={mask_token_id} must be < vocab_size={vocab_size}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size})")
    if not isinstance(special_token_ids, (list, tuple, set, frozenset)):
        raise TypeError(f"special_token_ids must be a list of ints, got {type(special_token_ids).__name__}")
    for t in special_token_ids:
        check_int("special_token_ids[...]", t, minimum=0)
    check_int("seed", seed, minimum=0)
    check_number("mlm_probability", mlm_probability, 0.0, 1.0)
    check_number("mask_replace_prob", mask_replace_prob, 0.0, 1.0)
    check_number("random_replace_prob", random_replace_prob, 0.0, 1.0)
    if mask_replace_prob + random_replace_prob > 1:
        raise ValueError(f"mask_replace_prob + random_replace_prob must be <= 1, got "
                         f"{mask_replace_prob} + {random_replace_prob}")


def _validate_lr_at(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0) -> None:
    check_int("step", step, minimum=0)
    check_number("peak_lr", peak_lr, 0.0)
    check_int("warmup_steps", warmup_steps, minimum=0)
    check_int("total_steps", total_steps, 1)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be <= total_steps={total_steps}")
    check_number("min_lr_ratio", min_lr_ratio, 0.0, 1.0)


def _validate_weight_decay_groups(model, weight_decay) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_number("weight_decay", weight_decay, 0.0)


def _validate_settings(settings) -> None:
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict with keys {list(SETTINGS_KEYS)}, got {type(settings).__name__}")
    missing = [k for k in SETTINGS_KEYS if k not in settings]
    if missing:
        raise ValueError(f"settings is missing {missing} (see PretrainConfig.settings())")
    _validate_lr_at(0, peak_lr=settings["lr"], warmup_steps=settings["warmup_steps"],
                    total_steps=settings["total_steps"], min_lr_ratio=settings["min_lr_ratio"])
    _check_adam(settings["weight_decay"], settings["betas"], settings["eps"], name="settings['{}']")
    if settings["max_grad_norm"] is not None:
        check_number("settings['max_grad_norm']", settings["max_grad_norm"], 0.0, open_minimum=True)
    if settings["mixed_precision"] not in MIXED_PRECISION:
        raise ValueError(f"settings['mixed_precision'] must be one of {MIXED_PRECISION}, "
                         f"got {settings['mixed_precision']!r}")
    if not isinstance(settings.get("fused_optimizer", False), bool):
        raise TypeError(f"settings['fused_optimizer'] (optional) must be a bool, got {settings['fused_optimizer']!r}")


def _validate_micro_batch(name: str, micro_batch) -> None:
    if not isinstance(micro_batch, dict) or "input_ids" not in micro_batch:
        raise TypeError(f"{name} must be a dict with 'input_ids' (and optionally 'attention_mask', 'labels', "
                        "'position_ids')")
    unknown = sorted(set(micro_batch) - {"input_ids", "attention_mask", "labels", "position_ids"})
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}")
    input_ids = micro_batch["input_ids"]
    _check_token_ids(f"{name}['input_ids']", input_ids)
    if "labels" in micro_batch:
        _check_token_ids(f"{name}['labels']", micro_batch["labels"])
        if micro_batch["labels"].shape != input_ids.shape:
            raise ValueError(f"{name}['labels'] must have the shape of input_ids {tuple(input_ids.shape)}")
    if "attention_mask" in micro_batch:
        _check_padding_mask(f"{name}['attention_mask']", micro_batch["attention_mask"], *input_ids.shape)
    if "position_ids" in micro_batch:
        _check_token_ids(f"{name}['position_ids']", micro_batch["position_ids"])
        if micro_batch["position_ids"].shape != input_ids.shape:
            raise ValueError(f"{name}['position_ids'] must have the shape of input_ids {tuple(input_ids.shape)}")


def _validate_train_steps(model, batches, settings, optimizer=None, scheduler=None, on_step=None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batches, list):  # an iterator (the data loader) is checked as it runs
        for i, step in enumerate(batches):
            if not isinstance(step, list) or not step:
                raise TypeError(f"batches[{i}] must be a non-empty list of micro-batches (dicts)")
            for j, micro_batch in enumerate(step):
                _validate_micro_batch(f"batches[{i}][{j}]", micro_batch)
    _validate_settings(settings)
    if scheduler is not None and optimizer is None:
        raise ValueError("a scheduler needs the optimizer it drives: give both or neither")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be None or a callable, got {type(on_step).__name__}")


def _validate_mfu(tokens_per_second, flops_per_token, peak_flops, n_devices=1) -> None:
    check_number("tokens_per_second", tokens_per_second, 0.0)
    check_number("flops_per_token", flops_per_token, 0.0, open_minimum=True)
    check_number("peak_flops", peak_flops, 0.0, open_minimum=True)
    check_int("n_devices", n_devices, 1)


def _check_adam(weight_decay, betas, eps, name: str = "{}") -> None:
    """AdamW's weight_decay, betas and eps; ``name`` formats each argument's name for the errors."""
    check_number(name.format("weight_decay"), weight_decay, 0.0)
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise TypeError(f"{name.format('betas')} must be a pair of numbers, got {betas!r}")
    for b in betas:
        check_number(f"{name.format('betas')}[...]", b, 0.0, 1.0, open_maximum=True)
    check_number(name.format("eps"), eps, 0.0)


def _validate_adamw_group(group: dict) -> None:
    """The hyperparameters of one parameter group of :class:`AdamW` (what torch.optim.AdamW checks)."""
    check_number("lr", group["lr"], 0.0)
    _check_adam(group["weight_decay"], group["betas"], group["eps"])
    for flag in ("amsgrad", "maximize"):
        if not isinstance(group[flag], bool):
            raise TypeError(f"{flag} must be a bool, got {type(group[flag]).__name__}")


def _validate_step(self, closure=None) -> None:
    if closure is not None and not callable(closure):
        raise TypeError(f"closure must be None or a callable that returns the loss, got {type(closure).__name__}")


def _validate_clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False) -> None:
    if not isinstance(parameters, torch.Tensor) and not hasattr(parameters, "__iter__"):
        raise TypeError(f"parameters must be a tensor or an iterable of tensors, got {type(parameters).__name__}")
    check_number("max_norm", max_norm, 0.0)
    check_number("norm_type", norm_type, 0.0, open_minimum=True)
    check_bool("error_if_nonfinite", error_if_nonfinite)


# -- 5.1-5.3 data ----------------------------------------------------------------------------------
@exercise("5.1", points=2, validate=_validate_pack_blocks)
def pack_blocks(token_ids_per_doc: list[list[int]], block_size: int, eos_token_id: int) -> torch.Tensor:
    """Concatenate tokenized documents, each followed by ``eos_token_id``, and cut the stream into blocks.

    Args:
        token_ids_per_doc: one list of token ids per document, in order (no special tokens added).
        block_size: tokens per block (the model's context length during training).
        eos_token_id: the end-of-text token (``<|endoftext|>``), appended after *every* document, the
            last one included, as GPT-2's training data does: the model learns where a document ends,
            and the next document's first token is predicted from the end-of-text token.

    Returns:
        A ``torch.long`` tensor of shape ``(n_blocks, block_size)``: the stream
        ``doc_0 + [eos] + doc_1 + [eos] + ...`` read left to right, row after row, with
        ``n_blocks = len(stream) // block_size``. The tail that does not fill a block is dropped
        (Hugging Face's ``run_clm.py`` ``group_texts`` does the same). An empty document contributes
        nothing (not even an end-of-text token). Fewer than ``block_size`` tokens in all gives a
        ``(0, block_size)`` tensor. Blocks ignore document boundaries: a block may end one document
        and start the next, and attention then crosses the end-of-text token (GPT-2-style packing).

    Hint:
        Build the stream as one flat list (or tensor), keep its first ``n_blocks * block_size``
        tokens and ``view`` them as ``(n_blocks, block_size)``. Padding each document to a block
        instead wastes most of the compute on short documents.
    """
    raise NotImplementedError("Exercise 5.1: implement pack_blocks in pretraining.py")


@exercise("5.2", points=1, validate=_validate_split_documents)
def split_documents(n_documents: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``n_documents`` documents into training and validation documents.

    What the seed outline's ``dataset.split(test_size=0.2, random_state=42)`` meant (no such method
    exists): the split of ``datasets.Dataset.train_test_split(test_size=validation_fraction,
    seed=seed)``, on document indices. Split documents *before* packing them into blocks: a block
    split would put the two halves of one document on both sides.

    Args:
        n_documents: how many documents (``>= 2``).
        validation_fraction: the share of documents to hold out, in ``(0, 1)``.
        seed: the seed of the shuffle.

    Returns:
        ``(train_indices, validation_indices)``, two lists of ints that together hold every index in
        ``range(n_documents)`` exactly once. With ``permutation =
        numpy.random.default_rng(seed).permutation(n_documents)`` and ``n_validation =
        math.ceil(validation_fraction * n_documents)``, ``validation_indices`` is the first
        ``n_validation`` entries of ``permutation`` and ``train_indices`` the rest, both in
        permutation order (exactly what ``train_test_split`` returns as its ``"test"`` and
        ``"train"`` rows).

    Hint:
        ``numpy.random.default_rng(seed)`` is numpy's current generator (not the legacy
        ``numpy.random.seed``); convert its ``int64`` entries with ``.tolist()``.
    """
    raise NotImplementedError("Exercise 5.2: implement split_documents in pretraining.py")


@exercise("5.3", points=1, validate=_validate_batch_order)
def batch_order(n_blocks: int, batch_size: int, seed: int) -> list[list[int]]:
    """The blocks of each batch for one pass over the data (an epoch), in a seeded random order.

    Args:
        n_blocks: how many blocks there are.
        batch_size: blocks per batch.
        seed: the seed of this epoch's shuffle (the loop passes ``seed + epoch``, so every epoch
            has another order and a rerun the same ones).

    Returns:
        A list of batches, each a list of ``batch_size`` block indices: ``torch.randperm(n_blocks)``
        drawn from ``torch.Generator().manual_seed(seed)``, cut into consecutive batches; a last
        batch with fewer than ``batch_size`` blocks is dropped (every step sees as many tokens).
        This is exactly what ``list(BatchSampler(RandomSampler(range(n_blocks), generator=g), batch_size,
        drop_last=True))`` yields with ``g = torch.Generator().manual_seed(seed)``: the batches of a
        ``DataLoader(shuffle=True, drop_last=True)`` (which itself first draws a worker seed from its
        generator, so it needs another one). ``n_blocks < batch_size`` gives ``[]``.

    Hint:
        A generator of its own (``torch.Generator().manual_seed(seed)``), not the global
        ``torch.manual_seed``, keeps the order independent of whatever else draws random numbers.
    """
    raise NotImplementedError("Exercise 5.3: implement batch_order in pretraining.py")


# -- 5.4-5.5 objectives ----------------------------------------------------------------------------
@exercise("5.4", points=3, validate=_validate_causal_lm_loss)
def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """The next-token cross-entropy of a causal language model.

    Args:
        logits: ``(batch, seq, vocab_size)``, the model's output for every position.
        labels: ``(batch, seq)``, **not shifted**: usually ``input_ids`` itself (Hugging Face's
            ``labels`` convention). Entries equal to ``ignore_index`` are not predicted.
        attention_mask: ``None`` or ``(batch, seq)`` of 1 (token) and 0 (padding); a padding target
            is not predicted either.
        ignore_index: the label value that marks a position without a target.
        reduction: ``"mean"``: the sum of the losses of all counted targets divided by how many
            there are (token-weighted over the whole batch); ``"sum"``: their sum (to combine
            micro-batches, see :func:`train_steps`).

    Returns:
        A scalar tensor in ``torch.promote_types(logits.dtype, torch.float32)`` (float32 for bf16
        logits). Position ``t``'s logits predict ``labels[:, t + 1]``: there are ``seq - 1``
        predictions per row, and the last position predicts nothing. With no counted target,
        ``"mean"`` is NaN (0/0, as ``F.cross_entropy``) and ``"sum"`` is 0. Matches
        ``LlamaForCausalLM(...)(input_ids, labels=labels).loss`` when ``labels`` holds ``-100``
        wherever ``attention_mask`` is 0.

    Hint:
        Shift, then flatten: ``logits[:, :-1]`` against ``labels[:, 1:]`` (and the mask's
        ``[:, 1:]``). Set padding targets to ``ignore_index`` and use Chapter 0's
        ``course_lib.numerics.cross_entropy`` (or ``F.cross_entropy``, which wants
        ``(N, vocab_size)``) on the float32 logits. Averaging per-row means first is a different
        number when rows have different numbers of targets.
    """
    raise NotImplementedError("Exercise 5.4: implement causal_lm_loss in pretraining.py")


@exercise("5.5", points=2, validate=_validate_mask_tokens)
def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_token_id: int,
                special_token_ids: Sequence[int] = (), seed: int, mlm_probability: float = 0.15,
                mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption (Devlin et al., 2019): pick 15% of the tokens as targets; of
    those, replace 80% with the mask token, 10% with a random token, and keep 10% unchanged.

    Args:
        input_ids: ``(batch, seq)`` or ``(seq,)`` token ids (not modified).
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``.
        mask_token_id: the id of the mask token (``[MASK]``).
        special_token_ids: ids that are never picked as targets (padding, end-of-text, ...).
        seed: the seed of a ``torch.Generator()`` (on the CPU) that makes every draw.
        mlm_probability: the probability that a (non-special) token is picked as a target.
        mask_replace_prob: the probability that a picked token becomes ``mask_token_id``.
        random_replace_prob: the probability that a picked token becomes a random token
            (``1 - mask_replace_prob - random_replace_prob`` of them stay unchanged).

    Returns:
        ``(masked_input_ids, labels)``, both ``torch.long`` of the shape and device of
        ``input_ids``: ``labels`` holds the original token at the picked positions and ``-100``
        everywhere else (only picked positions are scored, also those that were kept unchanged).

        The draws are those of ``transformers.DataCollatorForLanguageModeling`` (its
        ``torch_mask_tokens``), in its order, so that the same seed gives the same result:
        ``gen = torch.Generator().manual_seed(seed)``; then

        1. ``picked = torch.bernoulli(p, generator=gen).bool()`` where ``p`` is ``mlm_probability``
           at ordinary tokens and 0 at special ones;
        2. ``masked = torch.bernoulli(torch.full(shape, mask_replace_prob), generator=gen).bool() & picked``;
        3. unless ``mask_replace_prob == 1`` or ``random_replace_prob == 0`` (then stop here):
           ``randomised = torch.bernoulli(torch.full(shape, random_replace_prob / (1 - mask_replace_prob)),
           generator=gen).bool() & picked & ~masked`` and
           ``random_ids = torch.randint(vocab_size, shape, generator=gen)``, used where ``randomised``.

    Hint:
        Step 3's probability is *conditional*: among the 20% not masked, half are randomised, which
        is 10% of the picked tokens. Draw on the CPU (the generator is a CPU one) and move the results
        to ``input_ids.device``; clone before writing into the input.
    """
    raise NotImplementedError("Exercise 5.5: implement mask_tokens in pretraining.py")


# -- 5.6-5.8 optimisation ------------------------------------------------------------------------
@exercise("5.6", points=2, validate=_validate_lr_at)
def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    Args:
        step: the optimizer step, 0 for the first update.
        peak_lr: the learning rate at the end of the warmup.
        warmup_steps: steps of linear warmup (0: none).
        total_steps: the length of the whole schedule.
        min_lr_ratio: where the cosine ends, as a fraction of ``peak_lr``.

    Returns:
        ``peak_lr * step / warmup_steps`` for ``step < warmup_steps`` (so the first update uses lr 0
        when there is a warmup); after that, with ``progress = (step - warmup_steps) /
        max(1, total_steps - warmup_steps)`` clamped to at most 1,
        ``peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * progress)))``: ``peak_lr``
        at ``step == warmup_steps``, ``min_lr_ratio * peak_lr`` from ``total_steps`` on. A float.
        For ``step <= total_steps`` this is exactly ``transformers.get_cosine_schedule_with_warmup``
        (``min_lr_ratio=0``) and ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)``
        (Hugging Face's cosine keeps going up again after ``total_steps``; this one stays at the floor).

    Hint:
        Step 0 must be 0, not ``peak_lr / warmup_steps``: an off-by-one here shifts the whole schedule.
        ``torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, peak_lr=1.0, ...))`` turns
        it into a scheduler (the multiplier of the base learning rate).
    """
    raise NotImplementedError("Exercise 5.6: implement lr_at in pretraining.py")


@exercise("5.7", points=2, validate=_validate_weight_decay_groups)
def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Which parameters AdamW decays: the two parameter groups, by name.

    Args:
        model: any ``nn.Module`` (a Hugging Face or course model).
        weight_decay: the decay coefficient of the decayed group.

    Returns:
        ``[{"params": decay_names, "weight_decay": weight_decay}, {"params": no_decay_names,
        "weight_decay": 0.0}]``: every trainable parameter (``requires_grad``) of
        ``model.named_parameters()`` in exactly one list, in ``named_parameters()`` order (a tied
        weight appears once, under the name ``named_parameters()`` gives it). Decayed: parameters
        with at least 2 dims that are not the ``weight`` of an ``nn.Embedding`` (the weight
        matrices of linear maps, also GPT-2's ``Conv1D``). Not decayed: biases and normalisation
        weights (1-D) and embedding tables (token and position embeddings). An output layer tied to
        the token embeddings *is* the embedding table and is not decayed.

    Hint:
        ``model.named_modules()`` tells you which parameters belong to an ``nn.Embedding``
        (``f"{module_name}.weight"``, or just ``"weight"`` when the module is the model itself).
        Decaying norm weights pulls them towards 0 (their natural value is 1); decaying biases and
        embeddings has no regularising purpose. Hugging Face's ``Trainer`` decays embeddings; this
        course does not (see the chapter's conventions).
    """
    raise NotImplementedError("Exercise 5.7: implement weight_decay_groups in pretraining.py")


@exercise("5.8", points=5, validate=_validate_train_steps)
def train_steps(model: nn.Module, batches: Iterable[list[dict[str, torch.Tensor]]], settings: dict,
                optimizer: torch.optim.Optimizer | None = None,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                on_step: Callable[[dict], bool | None] | None = None) -> dict[str, list]:
    """Train ``model`` in place: one optimizer step per element of ``batches``.

    Args:
        model: a causal language model: ``model(input_ids=..., attention_mask=...).logits`` is
            ``(batch, seq, vocab_size)`` (any ``...ForCausalLM``; also one wrapped by Accelerate).
        batches: the steps, in order (a list, or any iterable such as the course's data loader);
            each step is a non-empty list of **micro-batches**, each a dict with ``"input_ids"``
            ``(micro_batch, seq)`` and optionally ``"attention_mask"`` (1/0, same shape) and
            ``"labels"`` (default: ``input_ids``), as :func:`causal_lm_loss` takes them, and
            ``"position_ids"`` (same shape), which the model gets too: rows that pack several
            sequences without padding restart their positions at each sequence (Chapter 7).
        settings: a dict (``PretrainConfig.settings()``) with ``lr`` (peak), ``warmup_steps``,
            ``total_steps``, ``min_lr_ratio``, ``weight_decay``, ``betas``, ``eps``, ``max_grad_norm``
            (``None``: no clipping) and ``mixed_precision`` (``"no"`` or ``"bf16"``).
        optimizer: ``None`` to build AdamW with :func:`make_optimizer` (which uses your
            :func:`weight_decay_groups`, and your :class:`AdamW` once its ``step``, 5.10, is done),
            or the optimizer to continue with (a resumed run).
        scheduler: ``None`` to build one with :func:`make_lr_scheduler` (your :func:`lr_at`), or the
            scheduler to continue with.
        on_step: ``None`` or a function called with each step's stats (the dict below, one number
            per key) right after the step; if it returns ``True`` the loop stops there.

    Each step, with ``n`` the number of targets that :func:`causal_lm_loss` counts over *all* the
    step's micro-batches:

    1. for each micro-batch: the forward pass and the loss under
       ``torch.autocast(device_type, dtype=torch.bfloat16)`` when ``mixed_precision == "bf16"``
       (``device_type`` of the model's parameters), ``loss = causal_lm_loss(..., reduction="sum") / n``,
       then ``loss.backward()``: the gradients add up to those of one batch of all micro-batches
       (gradient accumulation), weighted per token;
    2. ``clip_gradients(model.parameters(), max_grad_norm)``: all parameters' gradients clipped to a
       total 2-norm of ``max_grad_norm`` (``None``: no clipping), by your :func:`clip_grad_norm_`
       (5.11) once it is done and by ``torch.nn.utils.clip_grad_norm_`` until then;
    3. ``optimizer.step()``, then ``scheduler.step()``, then ``optimizer.zero_grad()``.

    Returns:
        ``{"loss": [...], "grad_norm": [...], "lr": [...], "tokens": [...]}``, one entry per step:
        the step's mean loss over its ``n`` targets (a float), the total gradient 2-norm *before*
        clipping (what ``clip_gradients`` returns; computed also without clipping), the learning
        rate the update used (``optimizer.param_groups[0]["lr"]`` before ``scheduler.step()``), and
        the number of input tokens of the step (non-padding ones; an int). The model is left in
        training mode.

    Hint:
        Clip *before* ``optimizer.step()`` (afterwards it changes nothing that was used) and zero the
        gradients after it (or they pile up across steps). Without the division by ``n`` the
        accumulated gradient is as many times too large as there are micro-batches' targets. Under
        several processes (``accelerate launch``) the model is a ``DistributedDataParallel`` that
        averages gradients across processes in ``backward``: the same code works.
    """
    raise NotImplementedError("Exercise 5.8: implement train_steps in pretraining.py")


# -- 5.9 cost --------------------------------------------------------------------------------------
@exercise("5.9", points=1, validate=_validate_mfu)
def mfu(tokens_per_second: float, flops_per_token: int, peak_flops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation (Chowdhery et al., 2022): the share of the hardware's peak that the
    model's training arithmetic uses.

    Args:
        tokens_per_second: training throughput of the whole run (all devices together).
        flops_per_token: *forward* FLOPs per token (Chapter 3's ``flops_per_token(config, seq_len)``).
        peak_flops: one device's peak FLOP/s in the training dtype (e.g. 989e12 for an H100 SXM in
            dense bf16; :func:`peak_flops`).
        n_devices: how many devices share the work.

    Returns:
        A float in ``[0, 1]`` for a real run: ``3 * flops_per_token * tokens_per_second /
        (peak_flops * n_devices)``. Training costs three forward passes per token: the forward pass
        and a backward pass that costs twice as much (gradients with respect to activations and to
        weights), the familiar ``6N`` FLOPs per token. Recomputation (activation checkpointing) is
        *not* counted: MFU counts the model's FLOPs, not the hardware's.

    Hint:
        A fraction, not a percentage. ``flops_per_token`` already counts a multiply-add as 2.
    """
    raise NotImplementedError("Exercise 5.9: implement mfu in pretraining.py")


# -- 5.10-5.11 the optimizer and gradient clipping, from scratch ----------------------------------------
class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter, 2019): Adam (Kingma & Ba, 2015) with weight decay decoupled from
    the gradient, as a ``torch.optim.Optimizer``. Your :meth:`step` (exercise 5.10) does the update;
    everything else (parameter groups, ``zero_grad``, ``state_dict``/``load_state_dict``) is the
    base class's.

    Args:
        params: the parameters, or parameter groups (dicts with ``"params"`` and any of the
            hyperparameters below, which then override the defaults for that group only; how
            :func:`make_optimizer` gives the groups of :func:`weight_decay_groups` their own decay).
        lr: the learning rate (a scheduler changes each group's ``"lr"`` between steps).
        betas: ``(beta1, beta2)``, the decay rates of the first and second moment estimates.
        eps: added to the root of the second moment estimate, against division by zero.
        weight_decay: the decoupled decay coefficient: each step multiplies a parameter by
            ``1 - lr * weight_decay``.
        amsgrad: use the largest second moment estimate so far (Reddi et al., 2018).
        maximize: climb the objective instead of descending it (the update uses ``-grad``).

    The defaults are ``torch.optim.AdamW``'s. Each group's hyperparameters sit in
    ``self.param_groups[i]`` under these names; the per-parameter state in ``self.state[p]``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _validate_adamw_group(group)

    @torch.no_grad()
    @exercise("5.10", points=4, validate=_validate_step, entry="adamw_steps")
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One AdamW update of every parameter that has a gradient.

        Args:
            closure: ``None``, or a function that recomputes the loss and its gradients and returns
                the loss; call it first, inside ``torch.enable_grad()`` (the step itself runs under
                ``torch.no_grad()``, the decorator above).

        For each group in ``self.param_groups`` take *its* ``lr``, ``betas = (beta1, beta2)``,
        ``eps``, ``weight_decay``, ``amsgrad`` and ``maximize``, read at every step (a scheduler
        changes ``group["lr"]`` between steps, and :func:`weight_decay_groups`' second group has
        ``weight_decay = 0``). For each parameter ``p`` of the group whose ``p.grad`` is not ``None``
        (the others are skipped: no update and no state), with ``g = p.grad`` (``-p.grad`` when
        ``maximize``), in place:

        1. ``state = self.state[p]``. On ``p``'s first update create ``state["step"] =
           torch.tensor(0.0)``, ``state["exp_avg"]`` (m) and ``state["exp_avg_sq"]`` (v) as
           ``torch.zeros_like(p)``, and with ``amsgrad`` also ``state["max_exp_avg_sq"]``.
        2. ``state["step"] += 1``; ``t`` is the new count (1 at the first update of ``p``).
        3. Decoupled weight decay: ``p <- p * (1 - lr * weight_decay)``.
        4. The moments: ``m <- beta1 * m + (1 - beta1) * g`` and ``v <- beta2 * v + (1 - beta2) * g**2``.
        5. With ``amsgrad``: ``v_max <- max(v_max, v)`` elementwise, and ``v_max`` stands for ``v`` below.
        6. ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected moments
           ``m_hat = m / (1 - beta1**t)`` and ``v_hat = v / (1 - beta2**t)``.

        This is ``torch.optim.AdamW`` step for step. Keep all state in ``self.state[p]`` under these
        names (torch's): the inherited ``state_dict()`` saves it and ``load_state_dict()`` restores
        it, so that a run resumed from a checkpoint continues exactly as the uninterrupted run would.

        Returns:
            The closure's loss, or ``None`` without a closure.

        Hint:
            The moments start at zero, so early ``m`` and ``v`` are too small by the factors
            ``1 - beta**t``; the bias correction divides them out (without it the first steps are
            far too short or too long). The decay multiplies the *parameter*: adding
            ``weight_decay * p`` to the gradient instead is L2 regularisation, which Adam then
            divides by ``sqrt(v)`` (Loshchilov & Hutter's point). ``eps`` goes outside the square
            root. In-place tensor methods (``mul_``, ``add_``, ``addcmul_``, ``addcdiv_``,
            ``lerp_``) update ``p`` and the state without new tensors.
        """
        raise NotImplementedError("Exercise 5.10: implement AdamW.step in pretraining.py")


@exercise("5.11", points=2, validate=_validate_clip_grad_norm, entry="clipped_gradients")
def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> torch.Tensor:
    """Scale all gradients together so that their total norm is at most ``max_norm``, in place
    (Pascanu et al., 2013); return the total norm from before.

    Args:
        parameters: a tensor, or an iterable of tensors (a generator such as
            ``model.parameters()`` too, which can be read only once). Tensors whose ``.grad`` is
            ``None`` are skipped.
        max_norm: the largest total norm allowed (``math.inf``: measure only).
        norm_type: ``p`` of the p-norm, a positive number, or ``math.inf`` (the largest absolute entry).
        error_if_nonfinite: raise ``RuntimeError`` when the total norm is NaN or infinite instead of
            scaling by it.

    Returns:
        The total norm, a 0-dim tensor: the p-norm of all gradients' entries together, computed as
        the p-norm of the vector of per-tensor p-norms (``torch.nn.utils.get_total_norm``), in
        the gradients' dtype; ``torch.tensor(0.0)`` when no tensor has a gradient. Every gradient is
        then multiplied in place by the same ``min(1, max_norm / (total_norm + 1e-6))``, so the
        direction of the whole gradient is kept. A NaN or infinite total norm with
        ``error_if_nonfinite=False`` scales anyway (the gradients turn NaN, or 0 and NaN for an
        infinite norm), exactly as ``torch.nn.utils.clip_grad_norm_`` does, whose contract this is.

    Hint:
        The norm is *global*: clipping each tensor to ``max_norm`` on its own changes the
        direction of the update, and the norm of one tensor is not the total. Turn ``parameters``
        into a list first (a generator is empty the second time you read it). ``torch.linalg.
        vector_norm(x, ord)`` takes ``ord=math.inf`` too.
    """
    raise NotImplementedError("Exercise 5.11: implement clip_grad_norm_ in pretraining.py")


# -- the loop's optimizer, clipping and schedule (implemented: they call the exercises) ---------------
def _runs(probe: Callable[[], object]) -> bool:
    """False while ``probe`` raises ``NotImplementedError`` (an exercise still a stub), else True.
    Any other error propagates: a broken exercise shows, it is not quietly replaced."""
    try:
        probe()
    except NotImplementedError:
        return False
    return True


def _probe_parameter() -> nn.Parameter:
    """A one-element parameter with a zero gradient, to try an optimizer or a clipping on."""
    p = nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    return p


def adamw_is_done() -> bool:
    """Whether :meth:`AdamW.step` (5.10) runs, rather than raising its stub's ``NotImplementedError``."""
    return _runs(lambda: AdamW([_probe_parameter()]).step())


def clipping_is_done() -> bool:
    """Whether :func:`clip_grad_norm_` (5.11) runs, rather than raising its stub's ``NotImplementedError``."""
    return _runs(lambda: clip_grad_norm_([_probe_parameter()], 1.0))


def loop_parts() -> dict[str, str]:
    """Which optimizer :func:`make_optimizer` builds and which clipping :func:`clip_gradients` runs
    right now: ``{"optimizer": ..., "clipping": ...}`` in words."""
    return {"optimizer": "AdamW of pretraining.py (5.10)" if adamw_is_done()
            else "torch.optim.AdamW (5.10 is not done yet)",
            "clipping": "clip_grad_norm_ of pretraining.py (5.11)" if clipping_is_done()
            else "torch.nn.utils.clip_grad_norm_ (5.11 is not done yet)"}


def make_optimizer(model: nn.Module, settings: dict) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters in the two groups of :func:`weight_decay_groups`.

    It is this module's :class:`AdamW` once its ``step`` (5.10) is done, and ``torch.optim.AdamW``
    (the same algorithm) while it is still the stub, so that :func:`train_steps` (5.8) does not
    wait for 5.10; :func:`loop_parts` says which. ``settings["fused_optimizer"]`` (optional,
    default False) asks for torch's fused kernel instead: one launch for all parameters on a GPU,
    what the ``"gpu"`` preset uses for its throughput.
    """
    _validate_settings(settings)
    parameters = dict(model.named_parameters())
    groups = [{"params": [parameters[name] for name in group["params"]], "weight_decay": group["weight_decay"]}
              for group in weight_decay_groups(model, settings["weight_decay"]) if group["params"]]
    hyperparameters = dict(lr=settings["lr"], betas=tuple(settings["betas"]), eps=settings["eps"])
    if settings.get("fused_optimizer", False):
        return torch.optim.AdamW(groups, **hyperparameters, fused=True)
    return (AdamW if adamw_is_done() else torch.optim.AdamW)(groups, **hyperparameters)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """The loop's clipping (:func:`train_steps`, step 2): the total gradient 2-norm of ``parameters``
    (a 0-dim tensor), with every gradient scaled so that the total is at most ``max_norm``
    (``None``: measured only). It runs :func:`clip_grad_norm_` (5.11) once that is done, and
    ``torch.nn.utils.clip_grad_norm_`` while it is still the stub; :func:`loop_parts` says which."""
    clip = clip_grad_norm_ if clipping_is_done() else torch.nn.utils.clip_grad_norm_
    return clip(list(parameters), math.inf if max_norm is None else max_norm)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, settings: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that sets every group's learning rate to :func:`lr_at` of the step (the base
    learning rate of each group is ``settings["lr"]``, the peak)."""
    _validate_settings(settings)
    schedule = dict(warmup_steps=settings["warmup_steps"], total_steps=settings["total_steps"],
                    min_lr_ratio=settings["min_lr_ratio"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, peak_lr=1.0, **schedule))


# -- how tests run 5.10 and 5.11 (implemented): plain data in, plain data out ---------------------------
def _plain(value):
    """``value`` as data that crosses the grading door: tensors (detached copies), bools, ints,
    floats, strings, ``None``, lists and dicts with ``str`` keys; anything else as its ``repr``."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if value is None or isinstance(value, str):
        return value
    for kind in (bool, int, float):   # bool first: it is an int too; numpy scalars become plain numbers
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def _check_optimizer_run(params, grads, groups, lrs, resume_after) -> None:
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError("params must be a list of tensors (the parameters' starting values)")
    for t, step in enumerate(grads):
        if len(step) != len(params) or not all(g is None or (isinstance(g, torch.Tensor) and g.shape == p.shape)
                                               for g, p in zip(step, params)):
            raise ValueError(f"grads[{t}] must hold one gradient (or None) per parameter, of its shape")
    indices = sorted(i for group in groups for i in group["params"])
    if indices != sorted(set(indices)) or not set(indices) <= set(range(len(params))):
        raise ValueError("groups' 'params' must be indices into params, each in one group at most")
    if lrs is not None and (len(lrs) != len(grads) or any(len(row) != len(groups) for row in lrs)):
        raise ValueError("lrs must hold one learning rate per group for every step")
    if resume_after is not None:
        check_int("resume_after", resume_after, minimum=0)


def run_optimizer(optimizer_class: type, params: list[torch.Tensor], grads: list[list[torch.Tensor | None]],
                  groups: list[dict], lrs: list[list[float]] | None = None, resume_after: int | None = None,
                  closure: bool = False) -> dict:
    """Run ``optimizer_class`` (:class:`AdamW`, ``torch.optim.AdamW``, ...) for ``len(grads)`` steps
    on given gradients, and report everything as plain data.

    Args:
        optimizer_class: called as ``optimizer_class(param_groups)``.
        params: the parameters' starting values (not modified; the optimizer gets copies).
        grads: ``grads[t][i]``: the gradient of parameter ``i`` at step ``t``, or ``None`` (no gradient).
        groups: the parameter groups as plain data: ``{"params": [indices into params], ...}`` with
            any hyperparameters (``"lr"``, ``"betas"``, ``"weight_decay"``, ...); absent ones take the
            optimizer's defaults.
        lrs: ``None``, or ``lrs[t][g]``: the learning rate group ``g`` is set to before step ``t``
            (what a scheduler does).
        resume_after: ``None``, or a number of steps after which the run is interrupted: the
            optimizer's ``state_dict()`` goes through ``torch.save``/``torch.load(weights_only=True)``,
            and a new optimizer over copies of the parameters loads it and does the remaining steps.
        closure: hand each step a closure that sets the step's gradients and returns the loss
            ``torch.tensor(t + 0.5)``, instead of setting the gradients before the step.

    Returns:
        ``{"params": [[value of each parameter after step t] for each step t], "returned": [what each
        step() returned], "state": the final state_dict()}``, with the state's integer keys as strings.
    """
    import io

    _check_optimizer_run(params, grads, groups, lrs, resume_after)
    values = [nn.Parameter(p.detach().clone()) for p in params]

    def build(values):
        return optimizer_class([{**{k: tuple(v) if k == "betas" else v for k, v in group.items() if k != "params"},
                                 "params": [values[i] for i in group["params"]]} for group in groups])

    def set_gradients(t):
        for p, g in zip(values, grads[t]):
            p.grad = None if g is None else g.detach().clone()

    optimizer = build(values)
    trajectory, returned = [], []
    for t in range(len(grads)):
        if t == resume_after:
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            buffer.seek(0)
            values = [nn.Parameter(p.detach().clone()) for p in values]
            optimizer = build(values)
            optimizer.load_state_dict(torch.load(buffer, weights_only=True))
        if lrs is not None:
            for group, lr in zip(optimizer.param_groups, lrs[t]):
                group["lr"] = lr
        if closure:
            def loss_and_gradients(t=t):
                set_gradients(t)
                return torch.tensor(t + 0.5)
            returned.append(optimizer.step(loss_and_gradients))
        else:
            set_gradients(t)
            returned.append(optimizer.step())
        trajectory.append([p.detach().clone() for p in values])
    return {"params": trajectory, "returned": _plain(returned), "state": _plain(optimizer.state_dict())}


def adamw_steps(params: list[torch.Tensor], grads: list[list[torch.Tensor | None]], groups: list[dict],
                lrs: list[list[float]] | None = None, resume_after: int | None = None, closure: bool = False) -> dict:
    """How the tests run your :class:`AdamW` (5.10): :func:`run_optimizer` of this module's ``AdamW``."""
    return run_optimizer(AdamW, params, grads, groups, lrs, resume_after, closure)


def run_clipping(clip: Callable, grads: list[torch.Tensor | None], max_norm: float, norm_type: float = 2.0,
                 error_if_nonfinite: bool = False, as_tensor: bool = False) -> tuple[torch.Tensor, list]:
    """Call ``clip`` (:func:`clip_grad_norm_`, ``torch.nn.utils.clip_grad_norm_``, ...) on parameters
    whose gradients are copies of ``grads`` (``None``: a parameter without a gradient), handed over as
    a generator (as ``model.parameters()`` is) or, with ``as_tensor``, as the one parameter itself.
    Returns ``(what clip returned, the gradients afterwards)``."""
    if not isinstance(grads, (list, tuple)) or not all(g is None or isinstance(g, torch.Tensor) for g in grads):
        raise TypeError("grads must be a list of tensors or None")
    if as_tensor and len(grads) != 1:
        raise ValueError("as_tensor takes exactly one gradient")
    parameters = []
    for g in grads:
        p = nn.Parameter(torch.zeros(1) if g is None else torch.zeros_like(g))
        p.grad = None if g is None else g.detach().clone()
        parameters.append(p)
    total = clip(parameters[0] if as_tensor else (p for p in parameters), max_norm, norm_type, error_if_nonfinite)
    return _plain(total), [_plain(p.grad) for p in parameters]


def clipped_gradients(grads: list[torch.Tensor | None], max_norm: float, norm_type: float = 2.0,
                      error_if_nonfinite: bool = False, as_tensor: bool = False) -> tuple[torch.Tensor, list]:
    """How the tests run your :func:`clip_grad_norm_` (5.11): :func:`run_clipping` of it."""
    return run_clipping(clip_grad_norm_, grads, max_norm, norm_type, error_if_nonfinite, as_tensor)


# -- run configurations --------------------------------------------------------------------------------
@dataclass
class PretrainConfig(LoopSettings):
    """One pre-training run: the model, the data, the optimizer and the loop's bookkeeping.

    The batch of one optimizer step is ``micro_batch_size * accumulation_steps * n_processes`` blocks
    of ``block_size`` tokens. The optimisation settings and their defaults are :class:`LoopSettings`';
    ``settings()`` gives the plain dict :func:`train_steps` takes.
    """

    model_size: str = "cpu"                 # course_lm_config size ("cpu" ~4M, "gpu" ~100M parameters)
    style: str = "llama"                    # course_lm_config style ("llama" or "gpt2")
    model_overrides: dict = field(default_factory=dict)  # any CourseLMConfig field
    block_size: int = 128
    micro_batch_size: int = 16              # per process
    accumulation_steps: int = 1
    fused_optimizer: bool = False           # torch's fused AdamW kernel instead of the course's AdamW (GPUs)
    attn_implementation: str = "sdpa"       # torch's fused attention; "eager" runs Chapter 2's
    compile: bool = False                   # torch.compile the model (GPU runs)
    eval_every: int = 100
    eval_blocks: int | None = 128           # validation blocks per evaluation (None: all)
    checkpoint_every: int | None = None     # steps between checkpoints (None: only at the end)
    seed: int = 0
    source: str | None = None               # corpus source (course_lib.corpus.load_corpus)

    def tokens_per_step(self, n_processes: int = 1) -> int:
        return self.block_size * self.micro_batch_size * self.accumulation_steps * n_processes


PRESETS: dict[str, PretrainConfig] = {
    # Seconds on a CPU: the loop's tests (a 2-layer model of width 64).
    "tiny": PretrainConfig(model_overrides=dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                                num_attention_heads=2, num_key_value_heads=1),
                           block_size=32, micro_batch_size=4, accumulation_steps=2, total_steps=8, warmup_steps=2,
                           lr=3e-3, eval_every=4, eval_blocks=16),
    # The course model on a 2-core CPU: ~4M parameters, 400 steps of 16 x 128 tokens (820k tokens,
    # 1.6 passes over the built-in corpus): 3.4 minutes on a quiet 2-core machine (191 s of training).
    # Validation loss 5.37 nats per token against 6.57 for the unigram model and 8.32 for uniform.
    "cpu": PretrainConfig(),
    # ~100M parameters on one GPU: 2,000 steps of 64 x 1,024 tokens (131M tokens). What it takes to
    # reach the target of >= 45% MFU on an H100: bf16 autocast (tensor cores), torch's fused
    # attention (attn_implementation="sdpa": FlashAttention), torch.compile (fuses the norms, RoPE
    # and SwiGLU's elementwise work), torch's fused AdamW (fused_optimizer) and micro-batches of
    # 32 x 1,024 tokens that fill the GPU. The built-in corpus has 0.5M training tokens, so these
    # 2,000 steps would be ~260 passes over it: give a larger `source` for a real run.
    # scripts/gpu_check.sh runs 300 steps on the built-in corpus and prints the validation curve.
    "gpu": PretrainConfig(model_size="gpu", block_size=1024, micro_batch_size=32, accumulation_steps=2,
                          total_steps=2000, warmup_steps=100, lr=1e-3, mixed_precision="bf16", fused_optimizer=True,
                          compile=True, eval_every=250, eval_blocks=128),
}


def preset(name: str, **overrides) -> PretrainConfig:
    """A copy of :data:`PRESETS` ``[name]`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)


# -- data ---------------------------------------------------------------------------------------------
def course_tokenizer(source: str | None = None):
    """Chapter 1's tokenizer as a ``transformers`` tokenizer (``PreTrainedTokenizerFast``), with
    ``<|endoftext|>`` as its end-of-text (and beginning) token and ``<|pad|>`` as padding."""
    from course_lib.tokenization import train_course_tokenizer

    return train_course_tokenizer(source=source).to_transformers()


def tokenize_documents(tokenizer, documents: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens (the fast tokenizer, in parallel)."""
    if not documents:
        return []
    return [list(ids) for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]]


@dataclass
class PretrainingData:
    """Packed blocks for training and validation, and the documents' token counts (for plots)."""

    train_blocks: torch.Tensor          # (n_train_blocks, block_size)
    validation_blocks: torch.Tensor     # (n_validation_blocks, block_size)
    train_document_lengths: list[int]
    validation_document_lengths: list[int]

    @property
    def block_size(self) -> int:
        return self.train_blocks.shape[1]


def prepare_data(tokenizer, block_size: int, source: str | None = None, documents: Sequence[str] | None = None,
                 validation_fraction: float = 0.05, seed: int = 0) -> PretrainingData:
    """Tokenize, split by document and pack into blocks.

    By default the course corpus's own ``train`` and ``validation`` splits (of ``source``; see
    :func:`course_lib.corpus.load_corpus`). With ``documents`` (a list of texts from anywhere), they
    are split with :func:`split_documents` (``validation_fraction``, ``seed``) first.
    """
    check_int("block_size", block_size, 1)
    if documents is None:
        from course_lib.corpus import load_corpus

        train_docs, validation_docs = load_corpus("train", source), load_corpus("validation", source)
    else:
        train_idx, validation_idx = split_documents(len(documents), validation_fraction, seed)
        train_docs, validation_docs = [documents[i] for i in train_idx], [documents[i] for i in validation_idx]
    eos = tokenizer.eos_token_id
    train_ids, validation_ids = tokenize_documents(tokenizer, train_docs), tokenize_documents(tokenizer, validation_docs)
    return PretrainingData(pack_blocks(train_ids, block_size, eos), pack_blocks(validation_ids, block_size, eos),
                           [len(ids) for ids in train_ids], [len(ids) for ids in validation_ids])


def step_batches(blocks: torch.Tensor, config: PretrainConfig, start_step: int = 0, process_index: int = 0,
                 n_processes: int = 1, device: torch.device | str = "cpu") -> Iterable[list[dict[str, torch.Tensor]]]:
    """The micro-batches of every optimizer step from ``start_step`` to ``config.total_steps``, for one process.

    Step ``s`` uses batch ``s % steps_per_epoch`` of :func:`batch_order` with seed
    ``config.seed + s // steps_per_epoch`` (a new order every epoch), so the data of a step depends on
    its number only: a resumed run continues with exactly the batches the interrupted one would
    have seen. Process ``p`` takes the ``p``-th share of each step's blocks.
    """
    per_process = config.micro_batch_size * config.accumulation_steps
    global_batch = per_process * n_processes
    steps_per_epoch = blocks.shape[0] // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{blocks.shape[0]} blocks are fewer than one step's batch of {global_batch}")
    orders: dict[int, list[list[int]]] = {}
    for step in range(start_step, config.total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: batch_order(blocks.shape[0], global_batch, config.seed + epoch)}
        mine = orders[epoch][index][process_index * per_process:(process_index + 1) * per_process]
        input_ids = blocks[torch.tensor(mine)].to(device)           # (per_process, block_size)
        yield [{"input_ids": chunk} for chunk in input_ids.split(config.micro_batch_size)]


# -- evaluation, baselines, throughput ------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, blocks: torch.Tensor, micro_batch_size: int = 16, mixed_precision: str = "no",
             accelerator=None) -> float:
    """The token-weighted mean next-token loss of ``model`` over ``blocks`` ``(n, block_size)``
    (:func:`causal_lm_loss` summed over every batch, divided by all targets at once). Under several
    processes each evaluates its share and the sums are added up. The model's mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    total = torch.zeros(2, dtype=torch.float64, device=device)     # (loss sum, targets)
    for batch in blocks[rank::world].split(micro_batch_size):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
            logits = model(input_ids=batch).logits
        total[0] += causal_lm_loss(logits, batch, reduction="sum").double()
        total[1] += batch.shape[0] * (batch.shape[1] - 1)
    if accelerator is not None:
        total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    return (total[0] / total[1]).item()


def uniform_loss(vocab_size: int) -> float:
    """The loss of a model that spreads its probability evenly: ``ln(vocab_size)`` nats per token."""
    return math.log(check_int("vocab_size", vocab_size, 1))


def unigram_loss(train_blocks: torch.Tensor, validation_blocks: torch.Tensor, vocab_size: int) -> float:
    """The validation loss of the best model that ignores context: token frequencies of the training
    blocks (add-one smoothed), scored on the validation blocks' targets (every token but the first of
    each block, as the language model is). A trained model must beat it to have learned anything from
    context."""
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return -log_p[validation_blocks[:, 1:].flatten()].mean().item()


# Datasheet peak dense bf16 FLOP/s of one GPU (no sparsity), by a piece of its device name.
GPU_PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
                       "A10": 125e12}


@functools.lru_cache(maxsize=None)
def measure_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024,
                       seconds: float = 0.5) -> float:
    """FLOP/s of a large square matrix product on ``device``: what this machine reaches in practice
    (used as the peak on CPUs, which have no single datasheet figure; measured once per process)."""
    device = torch.device(device)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    runs, start = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed


def peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16) -> float:
    """One device's peak FLOP/s: the datasheet's dense bf16 figure for known GPUs, else measured."""
    device = torch.device(device)
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16_FLOPS.items():
            if key in name:
                return value
    return measure_peak_flops(device, dtype if device.type == "cuda" else torch.float32)


def model_flops_per_token(model_config, seq_len: int) -> int:
    """Forward FLOPs per token of a course model (Chapter 3's :func:`~course_lib.transformer.flops_per_token`)."""
    from course_lib.transformer import flops_per_token

    return flops_per_token(model_config.architecture(), seq_len)


# -- 5.12-5.13 checkpoints ----------------------------------------------------------------------------
CHECKPOINT_FILE = "checkpoint.pt"


def _validate_save_checkpoint(directory, model, optimizer, scheduler, step, history) -> None:
    _validate_checkpoint_objects(directory, model, optimizer, scheduler)
    check_int("step", step, minimum=0)
    if not isinstance(history, dict):
        raise TypeError(f"history must be a dict of lists, got {type(history).__name__}")


def _validate_checkpoint_objects(directory, model, optimizer, scheduler) -> None:
    if not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a path (str or pathlib.Path), got {type(directory).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError(f"scheduler must be a torch.optim.lr_scheduler.LRScheduler, got {type(scheduler).__name__}")


@exercise("5.12", points=2, validate=_validate_save_checkpoint, entry="saved_checkpoint")
def save_checkpoint(directory: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, history: dict) -> Path:
    """Save everything a run needs to continue exactly as if it had never stopped.

    Args:
        directory: the run's folder (created if missing). The checkpoint is ``directory /
            "checkpoint.pt"`` (:data:`CHECKPOINT_FILE`); a newer one replaces the older.
        model: the model (the unwrapped one, not a ``DistributedDataParallel`` or compiled wrapper,
            whose parameter names differ).
        optimizer: the optimizer, mid-run (its state: AdamW's moments and step counts).
        scheduler: the learning-rate scheduler, mid-run (its position in the schedule).
        step: the optimizer steps done so far. It is also the data position: :func:`step_batches`
            draws each step's batches from the step's number alone.
        history: the run's history so far (a dict of lists of numbers).

    Returns:
        The path of the checkpoint. The file is ``torch.save`` of the dict ``{"model":
        model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler":
        scheduler.state_dict(), "step": step, "history": history, "rng": {"torch":
        torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all(), "python":
        random.getstate()}}`` (``"cuda"`` is an empty list without a GPU), which
        ``torch.load(..., weights_only=True)`` reads back. It is written *atomically*: a reader, or a
        run that crashes while writing, finds the old checkpoint whole or the new one whole, never
        a part of one.

    Hint:
        ``torch.save`` into an ``io.BytesIO``, then ``course_lib.cache.write_atomic(path,
        buffer.getvalue())`` (a temporary file in the same folder, then ``os.replace``). Without the
        optimizer's state AdamW restarts from zero moments and the loss jumps; without the
        scheduler's, the learning rate falls back into the warmup; without the generators' states,
        dropout and every other random draw repeat the ones made since the start.
    """
    raise NotImplementedError("Exercise 5.12: implement save_checkpoint in pretraining.py")


@exercise("5.13", points=2, validate=_validate_checkpoint_objects, entry="resumed_from_checkpoint")
def load_checkpoint(directory: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, dict]:
    """Restore a run from what ``save_checkpoint`` wrote: the other half of an exact resume.

    Args:
        directory: the folder that holds ``checkpoint.pt``.
        model, optimizer, scheduler: built afresh for the same run (the same architecture and
            parameter groups), restored in place.

    Returns:
        ``(step, history)`` as saved. Afterwards the model's weights, the optimizer's state, the
        scheduler's position and the random generators (torch's CPU generator, the CUDA generators
        when the checkpoint has them and a GPU is there, Python's ``random``) are exactly as they
        were when the checkpoint was saved: the next step, and the next random draw, are the ones
        the uninterrupted run would have made.

    Hint:
        ``torch.load(path, map_location=<the device of the model's parameters>,
        weights_only=True)``: ``weights_only`` builds tensors and plain containers only, never
        objects whose loading runs code (a checkpoint may come from elsewhere). ``map_location``
        moves the torch generator's state too, and ``torch.set_rng_state`` wants it on the CPU.
    """
    raise NotImplementedError("Exercise 5.13: implement load_checkpoint in pretraining.py")


def checkpoint_setup(seed: int = 0, updates: int = 3) -> tuple[nn.Module, torch.optim.Optimizer,
                                                               torch.optim.lr_scheduler.LambdaLR]:
    """A small run in the middle of training, for the checkpoint tests: a 4 -> 8 -> 3 network with a
    LayerNorm, ``torch.optim.AdamW`` and a 5-step warmup after ``updates`` steps on random gradients,
    and torch's and Python's global generators seeded and a few draws along. All from ``seed``."""
    import random

    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
    for _ in range(updates):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad()
    torch.manual_seed(seed)
    random.seed(seed)
    torch.rand(5), random.random()            # the generators mid-stream, not at a fresh seed
    return model, optimizer, scheduler


def _next_draws() -> dict:
    """What torch's and Python's global generators give next."""
    import random

    return {"torch": torch.rand(4), "python": [random.random() for _ in range(3)]}


def run_save_checkpoint(save: Callable, seed: int = 0, updates: int = 3, step: int = 7,
                        history: dict | None = None, as_str: bool = False) -> dict:
    """Call ``save`` (:func:`save_checkpoint`, ...) twice on the run of :func:`checkpoint_setup`, in
    a folder that does not exist yet (nor does its parent), given as a ``Path`` (a ``str`` with
    ``as_str``): first with ``step - 1`` and an empty history, then with ``step`` and ``history``. Returns ``{"path": the path it returned, relative to the folder,
    "files": the folder's files afterwards, "content": torch.load(checkpoint, weights_only=True)}``."""
    import os
    import tempfile

    history = {"loss": [2.5, 2.25]} if history is None else history
    model, optimizer, scheduler = checkpoint_setup(seed, updates)
    with tempfile.TemporaryDirectory() as parent:
        directory = Path(parent) / "runs" / "run"
        folder = str(directory) if as_str else directory
        save(folder, model, optimizer, scheduler, max(step - 1, 0), {})
        path = save(folder, model, optimizer, scheduler, step, history)
        return {"path": None if path is None else os.path.relpath(path, directory),
                "files": sorted(os.listdir(directory)),
                "content": _plain(torch.load(directory / CHECKPOINT_FILE, weights_only=True))}


def run_checkpoint_resume(load: Callable, checkpoint: bytes, seed: int = 0, updates: int = 3,
                          as_str: bool = False) -> dict:
    """Resume the run of :func:`checkpoint_setup` ``(seed, updates)`` from ``checkpoint`` (the bytes of
    its ``checkpoint.pt``) with ``load`` (:func:`load_checkpoint`, ...), given its folder as a ``Path``
    (a ``str`` with ``as_str``), into a run built from
    another seed (other weights, no optimizer state, the schedule at its start, the generators
    elsewhere); draw from the generators, and make one more update on the same gradients, in the
    resumed run and in the uninterrupted one. Returns ``{"returned": what load returned, "draws":
    {"uninterrupted": ..., "resumed": ...}, "params": {...}, "lr": {...}}``: the draws, weights
    and learning rates are equal when everything was restored."""
    import random
    import tempfile

    runs = {"uninterrupted": checkpoint_setup(seed, updates)}   # its generators as they were at saving
    draws = {"uninterrupted": _next_draws()}
    runs["resumed"] = checkpoint_setup(seed + 1, 0)
    torch.manual_seed(seed + 2)
    random.seed(seed + 2)
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / CHECKPOINT_FILE).write_bytes(checkpoint)
        returned = load(directory if as_str else Path(directory), *runs["resumed"])
    draws["resumed"] = _next_draws()
    for model, optimizer, scheduler in runs.values():
        gen = torch.Generator().manual_seed(seed + 3)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
        scheduler.step()
    return {"returned": _plain(returned), "draws": _plain(draws),
            "params": {name: [p.detach().clone() for p in run[0].parameters()] for name, run in runs.items()},
            "lr": {name: run[1].param_groups[0]["lr"] for name, run in runs.items()}}


def saved_checkpoint(seed: int = 0, updates: int = 3, step: int = 7, history: dict | None = None,
                     as_str: bool = False) -> dict:
    """How the tests run your :func:`save_checkpoint` (5.12): :func:`run_save_checkpoint` of it."""
    return run_save_checkpoint(save_checkpoint, seed, updates, step, history, as_str)


def resumed_from_checkpoint(checkpoint: bytes, seed: int = 0, updates: int = 3, as_str: bool = False) -> dict:
    """How the tests run your :func:`load_checkpoint` (5.13): :func:`run_checkpoint_resume` of it."""
    return run_checkpoint_resume(load_checkpoint, checkpoint, seed, updates, as_str)


# -- the loop ---------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the trained model (unwrapped, on its device), its tokenizer,
    the per-step history and the summary figures."""

    model: nn.Module
    tokenizer: object
    config: PretrainConfig
    history: dict
    validation_loss: float
    unigram_loss: float
    uniform_loss: float
    train_seconds: float
    tokens_per_second: float
    flops_per_token: int
    mfu: float | None

    def summary(self) -> dict:
        """The figures as a plain dict (what the CLI prints and the cache stores)."""
        return {k: getattr(self, k) for k in ("validation_loss", "unigram_loss", "uniform_loss", "train_seconds",
                                              "tokens_per_second", "flops_per_token", "mfu")} | {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "config": dataclasses.asdict(self.config)}


def build_model(config: PretrainConfig, tokenizer):
    """A freshly initialised course model for ``config`` (seeded by ``config.seed``)."""
    from course_lib.language_model import SIZES, CourseLMForCausalLM, course_lm_config

    positions = max(config.block_size, SIZES[config.model_size]["max_position_embeddings"])
    model_config = course_lm_config(
        config.model_size, config.style, **{
            "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "attn_implementation": config.attn_implementation,
            "max_position_embeddings": positions, **config.model_overrides})
    torch.manual_seed(config.seed)
    return CourseLMForCausalLM(model_config)


def _empty_history() -> dict:
    return {"step": [], "loss": [], "grad_norm": [], "lr": [], "tokens": [], "seconds": [],
            "eval_step": [], "eval_loss": []}


def pretrain(config: PretrainConfig | str = "cpu", output_dir: Path | str | None = None, resume: bool = False,
             max_steps: int | None = None, progress: bool = True, data: PretrainingData | None = None,
             tokenizer=None, accelerator=None) -> PretrainResult:
    """Pre-train a course model with :func:`train_steps`, through Hugging Face Accelerate.

    Args:
        config: a :class:`PretrainConfig` or the name of a preset (``"tiny"``, ``"cpu"``, ``"gpu"``).
        output_dir: where checkpoints go (every ``config.checkpoint_every`` steps and at the end);
            ``None``: no checkpoints.
        resume: continue from ``output_dir``'s checkpoint when there is one. The continued run is
            the uninterrupted one: same weights, optimizer state, schedule position and data.
        max_steps: stop after this step (the schedule still spans ``config.total_steps``); used to
            interrupt a run on purpose.
        progress: show a progress bar (main process only) with the loss, learning rate and tokens/s.
        data, tokenizer: prepared ones to reuse (default: :func:`course_tokenizer` and
            :func:`prepare_data` of ``config.source``).
        accelerator: an ``accelerate.Accelerator`` (default: a new one; under ``accelerate launch``
            it finds the other processes).

    The model is evaluated on the validation blocks before training, every ``config.eval_every``
    steps and at the end. Throughput counts every process's tokens.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    config = preset(config) if isinstance(config, str) else config
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = tokenizer or course_tokenizer(config.source)
    data = data or prepare_data(tokenizer, config.block_size, config.source)
    model = build_model(config, tokenizer).to(accelerator.device)
    settings = config.settings()
    optimizer = make_optimizer(model, settings)
    scheduler = make_lr_scheduler(optimizer, settings)
    start_step, history = 0, _empty_history()
    if resume and output_dir is not None and (Path(output_dir) / CHECKPOINT_FILE).is_file():
        start_step, history = load_checkpoint(output_dir, model, optimizer, scheduler)
    wrapped = accelerator.prepare_model(model)              # DistributedDataParallel under several processes
    if config.compile:
        wrapped = torch.compile(wrapped)
    end_step = min(config.total_steps, max_steps or config.total_steps)
    n_processes = accelerator.num_processes

    def validation_loss() -> float:
        return evaluate(wrapped, data.validation_blocks[:config.eval_blocks], config.micro_batch_size,
                        config.mixed_precision, accelerator)

    if start_step == 0 and not history["eval_step"]:
        history["eval_step"].append(0)
        history["eval_loss"].append(validation_loss())
    bar = tqdm(total=end_step, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc="pre-training", unit="step")
    step = start_step
    clock = time.perf_counter()

    def on_step(stats: dict) -> bool:
        nonlocal step, clock
        step += 1
        now = time.perf_counter()
        stats = dict(stats, tokens=stats["tokens"] * n_processes, seconds=now - clock)
        if n_processes > 1:  # every process's loss, not only this one's
            stats["loss"] = accelerator.reduce(torch.tensor(stats["loss"], device=accelerator.device), "mean").item()
        for key in ("loss", "grad_norm", "lr", "tokens", "seconds"):
            history[key].append(stats[key])
        history["step"].append(step)
        if step % config.eval_every == 0 or step == end_step:
            history["eval_step"].append(step)
            history["eval_loss"].append(validation_loss())
        if output_dir is not None and (step == end_step or (config.checkpoint_every
                                                            and step % config.checkpoint_every == 0)):
            if accelerator.is_main_process:
                save_checkpoint(output_dir, model, optimizer, scheduler, step, history)
            accelerator.wait_for_everyone()
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}",
                        tok_s=f"{stats['tokens'] / stats['seconds']:.0f}",
                        val=f"{history['eval_loss'][-1]:.3f}")
        clock = time.perf_counter()  # evaluation and checkpoints do not count as training time
        return step >= end_step

    batches = step_batches(data.train_blocks, config, start_step, accelerator.process_index, n_processes,
                           accelerator.device)
    if start_step < end_step:
        train_steps(wrapped, batches, settings, optimizer, scheduler, on_step=on_step)
    bar.close()
    model.eval()
    timed = history["seconds"][1:] or history["seconds"]     # the first step warms up (and compiles)
    timed_tokens = history["tokens"][1:] or history["tokens"]
    seconds = sum(history["seconds"])
    tokens_per_second = sum(timed_tokens) / sum(timed) if timed and sum(timed) > 0 else 0.0
    fpt = model_flops_per_token(model.config, config.block_size)
    device = accelerator.device
    utilisation = (mfu(tokens_per_second, fpt, peak_flops(device, torch.bfloat16 if config.mixed_precision == "bf16"
                                                           else torch.float32), n_processes)
                   if tokens_per_second > 0 else None)
    return PretrainResult(model=model, tokenizer=tokenizer, config=config, history=history,
                          validation_loss=history["eval_loss"][-1],
                          unigram_loss=unigram_loss(data.train_blocks, data.validation_blocks, len(tokenizer)),
                          uniform_loss=uniform_loss(len(tokenizer)), train_seconds=seconds,
                          tokens_per_second=tokens_per_second, flops_per_token=fpt, mfu=utilisation)


# -- the course's pretrained model -------------------------------------------------------------------
# Bump when the loop or the presets change in a way that should rebuild cached models.
PRETRAINED_VERSION = 1
# Chapter modules whose code runs while pre-training (the tokenizer is keyed by its own content).
_TRAINING_MODULES = ("numerics", "attention", "transformer", "pretraining")


def implementation_key(modules: Sequence[str] = _TRAINING_MODULES) -> dict:
    """:func:`course_lib.exercises.implementation` of every chapter module of ``modules``: what a cached
    model built by that code is keyed by."""
    from course_lib import exercises

    return {module: exercises.implementation(module) for module in modules}


def pretrained_model_dir(size: str = "cpu", source: str | None = None) -> Path:
    """The cache folder of the course's pretrained model of preset ``size`` (built or not)."""
    import hashlib

    from course_lib.cache import cache_entry, cache_key

    config = dataclasses.asdict(preset(size, source=source))
    tokenizer_json = course_tokenizer(source).backend_tokenizer.to_str()
    key = cache_key(PRETRAINED_VERSION, config, hashlib.sha256(tokenizer_json.encode()).hexdigest(),
                    implementation_key())
    return cache_entry("models", f"course-lm-{size}-{key}")


def pretrained_course_lm(size: str = "cpu", source: str | None = None, progress: bool = True):
    """The course's pretrained language model and its tokenizer: ``(model, tokenizer)``.

    Loaded from the course cache; on first use it is pre-trained with preset ``size`` (``"cpu"``: a
    few minutes on a laptop; ``"gpu"`` needs a CUDA GPU) and saved there in the ``transformers``
    format with its tokenizer, so the folder also loads with ``AutoModelForCausalLM`` and
    ``AutoTokenizer`` (after ``import course_lib.language_model``, which registers the course model). In solution mode the reference solutions train
    it; in student mode your own code does, and the cache entry is keyed by your files, so editing
    them trains a new one. ``training.json`` in the folder holds the run's history and figures.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import course_lib.language_model  # noqa: F401  (registers the course model with the Auto classes)
    from course_lib.cache import building, stage_directory

    if size == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("the 'gpu' preset needs a CUDA GPU (about 100M parameters); use size='cpu' here")
    directory = pretrained_model_dir(size, source)
    with building(directory):
        if not (directory / "config.json").is_file():
            result = pretrain(preset(size, source=source), progress=progress)
            with stage_directory(directory) as staging:
                result.model.to("cpu").save_pretrained(staging)
                result.tokenizer.save_pretrained(staging)
                (staging / "training.json").write_text(json.dumps({**result.summary(), "history": result.history},
                                                                  default=str))
    model = AutoModelForCausalLM.from_pretrained(directory)
    return model.eval(), AutoTokenizer.from_pretrained(directory)


# -- plots ---------------------------------------------------------------------------------------------
def plot_lr_schedule(config: PretrainConfig | dict, ax=None):
    """The learning rate of every step of ``config`` (a :class:`PretrainConfig` or its ``settings()``)."""
    import matplotlib.pyplot as plt

    settings = config.settings() if isinstance(config, PretrainConfig) else config
    _validate_settings(settings)
    steps = list(range(settings["total_steps"] + 1))
    rates = [lr_at(s, peak_lr=settings["lr"], warmup_steps=settings["warmup_steps"],
                   total_steps=settings["total_steps"], min_lr_ratio=settings["min_lr_ratio"]) for s in steps]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, rates)
    ax.axvline(settings["warmup_steps"], color="gray", linestyle=":", label="end of warmup")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.legend()
    return ax


def plot_loss_curves(history: dict, baselines: dict[str, float] | None = None, ax=None):
    """Training loss per step and validation loss at each evaluation (nats per token), with
    horizontal lines for ``baselines`` (e.g. ``{"unigram": ..., "uniform": ...}``)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["step"], history["loss"], label="training (per step)", alpha=0.7)
    ax.plot(history["eval_step"], history["eval_loss"], "o-", label="validation")
    for (name, value), style in zip((baselines or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="gray", linestyle=style, label=f"{name} ({value:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    return ax


def plot_document_lengths(lengths: Sequence[int], block_size: int | None = None, ax=None):
    """Histogram of documents' lengths in tokens (log scale), with the block size marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    if not lengths:
        raise ValueError("lengths is empty")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    positive = [n for n in lengths if n > 0]
    ax.hist(positive, bins=np.logspace(0, math.log10(max(positive)) + 0.01, 40))
    ax.set_xscale("log")
    if block_size:
        ax.axvline(block_size, color="red", linestyle="--", label=f"block size {block_size}")
        ax.legend()
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("documents")
    return ax


# -- command line: python -m course_lib.pretraining / accelerate launch -m course_lib.pretraining -------
def main(argv: Sequence[str] | None = None) -> dict:
    """Pre-train from the command line; prints the run's figures as JSON (main process)."""
    from accelerate import Accelerator

    parser = argparse.ArgumentParser(prog="python -m course_lib.pretraining", description=main.__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--output", default=None, help="folder for checkpoints and the final model")
    parser.add_argument("--resume", action="store_true", help="continue from --output's checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="override total_steps")
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (the schedule is unchanged)")
    parser.add_argument("--eval-every", type=int, default=None, help="override eval_every (steps)")
    parser.add_argument("--source", default=None, help="corpus source (file, folder or HF dataset name)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--cached", action="store_true",
                        help="the course's pretrained model of --preset, from the course cache: trained and stored "
                             "there on a miss (pretrained_course_lm); prints its folder and recorded figures")
    args = parser.parse_args(argv)
    if args.cached:
        if args.output or args.resume or args.steps or args.max_steps or args.eval_every:
            parser.error("--cached takes only --preset, --source and --no-progress (the cache is keyed by the preset)")
        if args.no_progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()     # the bar of loading the weights
        pretrained_course_lm(args.preset, args.source, progress=not args.no_progress)
        directory = pretrained_model_dir(args.preset, args.source)
        record = json.loads((directory / "training.json").read_text())
        summary = {"directory": str(directory), **{key: record[key] for key in (
            "parameters", "validation_loss", "train_seconds", "tokens_per_second")}}
        print(json.dumps(summary))
        return summary
    overrides = {"total_steps": args.steps, "eval_every": args.eval_every}
    config = preset(args.preset, source=args.source, **{k: v for k, v in overrides.items() if v is not None})
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    result = pretrain(config, args.output, resume=args.resume, max_steps=args.max_steps,
                      progress=not args.no_progress, accelerator=accelerator)
    summary = result.summary() | {"processes": accelerator.num_processes, "final_loss": result.history["loss"][-1],
                                  "eval_step": result.history["eval_step"], "eval_loss": result.history["eval_loss"],
                                  "weights_checksum": sum(p.double().sum().item() for p in result.model.parameters())}
    if args.output and accelerator.is_main_process:
        result.model.save_pretrained(Path(args.output) / "model")
        result.tokenizer.save_pretrained(Path(args.output) / "model")
    if accelerator.is_main_process:
        print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    # Run the main() of the imported module, whose exercises are registered under "pretraining"
    # (this file, run as a script, is a second copy named "__main__").
    from course_lib.pretraining import main as module_main

    module_main()
