"""Chapter 7: supervised fine-tuning (SFT).

Supervised fine-tuning turns the pretrained course model (Chapter 5), which continues text, into a
model that answers an instruction with the answer alone (Ouyang et al., 2022; Wei et al., 2022;
Taori et al., 2023). The objective is the same next-token cross-entropy as pre-training; what changes
is the data and *which tokens are scored*: the conversations of Chapter 6's instruction data set,
rendered with the course's chat template, scored only where the assistant writes (its text and the
``<|im_end|>`` that ends its turn), never on the user's instruction or the template's markup.

- **batches** (7.1, 7.2): a padding collator that turns rendered conversations into a right-padded
  batch with an attention mask and *completion-only* labels (:func:`collate_chat`), and packing without
  padding (:func:`pack_examples`): several conversations in one row whose ``position_ids`` restart at
  each conversation, which the model reads as separate sequences, so that packing changes nothing but
  the speed (Krell et al., 2021; the padding-free batches of Hugging Face and TRL).
- **the loss** (7.3): the token-weighted mean over the trained tokens of a whole accumulated step,
  per example when asked (:func:`sft_loss`); Chapter 5's loop (:func:`~course_lib.pretraining.train_steps`)
  does the update with the same loss, unchanged.
- **NEFTune** (7.4): uniform noise of norm ``alpha / sqrt(L * d)`` on the input embeddings while
  training (Jain et al., 2024), off by default (:func:`neftune_noise`).
- **evaluation** (7.5): greedy answers to a batch of chat prompts with Chapter 4's decoding
  (:func:`greedy_answers`: prompts padded on the *left*), checked by Chapter 6's
  :func:`~course_lib.instruction_data.check_answer`, per task family.

Everything around the exercises is implemented here: rendering the data set with the chat template
(:func:`render_examples`), best-fit-decreasing bins for packing (:func:`best_fit_decreasing`, TRL's
``"bfd"`` strategy), the step batches (:func:`sft_step_batches`), the run configurations
(:data:`PRESETS`), the loop through Hugging Face Accelerate with evaluation during training
(:func:`finetune`), task accuracy (:func:`task_accuracy`) and the few-shot baseline of the
pretrained model (:func:`few_shot_accuracy`), the cached fine-tuned model that Chapters 8-11 start
from (:func:`sft_course_lm`), and plots.

Conventions used by every exercise of this chapter:

- **Examples.** A rendered conversation is a dict with ``"input_ids"`` (a list of token ids) and
  ``"assistant_masks"`` (a list of 0/1 of the same length: 1 on every token an assistant writes, its
  ``<|im_end|>`` included), as ``tokenizer.apply_chat_template(messages, return_dict=True,
  return_assistant_tokens_mask=True)`` returns them with the course's chat template (Chapter 6);
  other keys are ignored. A *labelled* example has ``"input_ids"`` and ``"labels"`` instead.
- **Labels** are not shifted (Hugging Face's convention): ``labels[t]`` is the token at ``t`` when it
  is trained and ``-100`` (:data:`IGNORE_INDEX`) when it is not; the loss shifts (the logits at ``t``
  predict ``labels[t + 1]``), as Chapter 5's :func:`~course_lib.pretraining.causal_lm_loss` does.
- **Batches.** A *padded* micro-batch is ``{"input_ids", "attention_mask", "labels"}``, each
  ``(batch, seq)``; a *packed* one is ``{"input_ids", "position_ids", "labels"}``, each ``(1, total)``,
  with no attention mask: the model tells the sequences apart by their positions. Both go unchanged
  into Chapter 5's ``train_steps``.
- **Token-weighted means.** A mean loss is the sum over every trained token of every micro-batch of
  the step divided by their number: a long answer weighs as many times more as it has tokens.
- **Seeds** are integers; inputs are never modified.

Multi-GPU: the loop runs under ``accelerate launch`` with the configuration files in
``configs/accelerate/`` (data parallel, FSDP, DeepSpeed ZeRO-2 and ZeRO-3)::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m course_lib.sft --preset gpu
    torchrun --nproc_per_node 2 -m course_lib.sft --preset tiny   # 2 CPU processes (gloo)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from course_lib.checks import check_bool, check_int, check_tensor
from course_lib.exercises import exercise
from course_lib.loop_settings import LoopSettings

IGNORE_INDEX = -100


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_id_list(name: str, ids) -> None:
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"{name} must be a list of token ids, got {type(ids).__name__}")
    if not ids:
        raise ValueError(f"{name} is empty")
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool):
            raise TypeError(f"{name} must hold ints, got {type(t).__name__}")


def _check_examples(examples, keys: tuple[str, str]) -> None:
    if not isinstance(examples, (list, tuple)):
        raise TypeError(f"examples must be a list of dicts, got {type(examples).__name__}")
    if not examples:
        raise ValueError("examples is empty")
    ids_key, other = keys
    for i, example in enumerate(examples):
        if not isinstance(example, dict) or ids_key not in example or other not in example:
            raise TypeError(f"examples[{i}] must be a dict with {ids_key!r} and {other!r}")
        _check_id_list(f"examples[{i}][{ids_key!r}]", example[ids_key])
        if not isinstance(example[other], (list, tuple)) or len(example[other]) != len(example[ids_key]):
            raise ValueError(f"examples[{i}][{other!r}] must be a list as long as examples[{i}][{ids_key!r}]")
        if other == "assistant_masks" and any(m not in (0, 1) or isinstance(m, bool) for m in example[other]):
            raise ValueError(f"examples[{i}]['assistant_masks'] must hold only 0 and 1")
        if other == "labels" and any(not isinstance(t, int) or isinstance(t, bool) or (t < 0 and t != IGNORE_INDEX)
                                     for t in example[other]):
            raise ValueError(f"examples[{i}]['labels'] must hold token ids and {IGNORE_INDEX}")


def _validate_collate_chat(examples, pad_token_id, all_turns=True) -> None:
    _check_examples(examples, ("input_ids", "assistant_masks"))
    check_int("pad_token_id", pad_token_id, 0)
    check_bool("all_turns", all_turns)


def _validate_pack_examples(examples) -> None:
    _check_examples(examples, ("input_ids", "labels"))


def _validate_micro_batches(micro_batches) -> None:
    if not isinstance(micro_batches, (list, tuple)) or not micro_batches:
        raise TypeError("micro_batches must be a non-empty list of micro-batches (dicts)")
    for i, mb in enumerate(micro_batches):
        name = f"micro_batches[{i}]"
        if not isinstance(mb, dict) or "input_ids" not in mb or "labels" not in mb:
            raise TypeError(f"{name} must be a dict with 'input_ids', 'labels' and 'attention_mask' or 'position_ids'")
        unknown = sorted(set(mb) - {"input_ids", "labels", "attention_mask", "position_ids"})
        if unknown:
            raise ValueError(f"{name} has unknown keys {unknown}")
        for key in ("input_ids", "labels", "attention_mask", "position_ids"):
            if key in mb:
                check_tensor(f"{name}[{key!r}]", mb[key], integer=True)
                if mb[key].ndim != 2 or mb[key].shape != mb["input_ids"].shape:
                    raise ValueError(f"{name}[{key!r}] must be (batch, seq) like input_ids "
                                     f"{tuple(mb['input_ids'].shape)}, got {tuple(mb[key].shape)}")
        if "attention_mask" in mb and "position_ids" in mb:
            raise ValueError(f"{name}: a packed micro-batch has position_ids and no attention_mask")
        if "position_ids" in mb and mb["input_ids"].shape[0] != 1:
            raise ValueError(f"{name}: a packed micro-batch is one row, got {mb['input_ids'].shape[0]}")


def _validate_sft_loss(model, micro_batches, reduction="mean") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _validate_micro_batches(micro_batches)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _validate_neftune_noise(embeddings, alpha, seed) -> None:
    check_tensor("embeddings", embeddings, floating=True)
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be (batch, seq, d_model), got shape {tuple(embeddings.shape)}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha >= 0 or math.isinf(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    check_int("seed", seed, 0)


def _validate_greedy_answers(model, prompts, *, pad_token_id, eos_token_id, max_new_tokens) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError("prompts must be a non-empty list of lists of token ids")
    for i, prompt in enumerate(prompts):
        _check_id_list(f"prompts[{i}]", prompt)
    check_int("pad_token_id", pad_token_id, 0)
    eos = [eos_token_id] if isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool) else eos_token_id
    if not isinstance(eos, (list, tuple)) or not eos:
        raise TypeError(f"eos_token_id must be an int or a non-empty list of ints, got {eos_token_id!r}")
    for t in eos:
        check_int("eos_token_id", t, 0)
    check_int("max_new_tokens", max_new_tokens, 1)


# -- 7.1-7.2 batches -------------------------------------------------------------------------------
@exercise("7.1", points=3, validate=_validate_collate_chat)
def collate_chat(examples: list[dict], pad_token_id: int, all_turns: bool = True) -> dict[str, torch.Tensor]:
    """Pad rendered conversations into one training batch whose labels train only the assistant.

    Args:
        examples: rendered conversations (see the module's conventions): ``"input_ids"`` and
            ``"assistant_masks"``, lists of the same length; not modified.
        pad_token_id: the id that fills the padding (``<|pad|>`` of the course tokenizer).
        all_turns: ``True``: train on every assistant turn of a conversation; ``False``: on its last
            assistant turn only (the last run of consecutive 1s of its assistant mask), the earlier
            ones being context, like the user's turns.

    Returns:
        ``{"input_ids", "attention_mask", "labels"}``, each a ``torch.long`` tensor ``(batch, seq)``
        with ``seq`` the longest example's length, one row per example in order. Rows are padded on
        the *right* (training: every row starts at position 0) with ``pad_token_id``;
        ``attention_mask`` is 1 on the example's tokens and 0 on padding; ``labels`` holds the token
        id where the token is trained (assistant mask 1, in a trained turn) and ``-100`` everywhere
        else: the user's text, the system prompt, the template's markup (``<|im_start|>``, the role
        names, the newlines between turns), earlier turns when ``all_turns`` is ``False``, and
        padding. The ``<|im_end|>`` that closes an assistant turn is trained: it is how the model
        learns to stop. An example without a trained token gets a row of ``-100``. This is the batch
        TRL's ``SFTTrainer`` builds with ``assistant_only_loss=True`` (its labels, then its
        ``DataCollatorForLanguageModeling``).

    Hint:
        Build each row's labels first (``input_ids`` where the mask is 1, else ``-100``), then pad the
        three lists to the longest with ``pad_token_id``, 0 and ``-100``. The last turn's run starts
        after the last 0 that comes before the last 1.
    """
    raise NotImplementedError("Exercise 7.1: implement collate_chat in sft.py")


@exercise("7.2", points=3, validate=_validate_pack_examples)
def pack_examples(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Pack labelled examples into one row without padding, each one kept apart by its positions.

    Args:
        examples: dicts with ``"input_ids"`` and ``"labels"``, lists of the same length (labels as
            :func:`collate_chat` makes them, without the padding; or the rows of TRL's prepared data
            set); not modified.

    Returns:
        ``{"input_ids", "position_ids", "labels"}``, each a ``torch.long`` tensor ``(1, total)`` with
        ``total`` the sum of the examples' lengths and no padding at all: the examples' ``input_ids``
        one after the other, in order; ``position_ids`` counting ``0, 1, ..., len - 1`` within each
        example (restarting at 0 where the next one starts); and the examples' labels, except that the
        first token of every example gets ``-100``, so that no example's last token is trained to
        predict the first token of the next one (the loss shifts by one). A model given
        ``input_ids`` and ``position_ids`` and no attention mask attends only within each example
        (Hugging Face's models and the course's model find the sequences where the positions
        restart), so every example's loss is the one it has alone. Equal to TRL's
        ``DataCollatorForLanguageModeling(padding_free=True)`` on the same examples.

    Hint:
        ``torch.arange(len(ids))`` per example, then ``torch.cat``. Without the restart (positions
        ``0 .. total - 1``) every example attends to all those before it: its loss changes.
    """
    raise NotImplementedError("Exercise 7.2: implement pack_examples in sft.py")


# -- 7.3 the loss ------------------------------------------------------------------------------------
@exercise("7.3", points=3, validate=_validate_sft_loss)
def sft_loss(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    """The SFT loss of a list of micro-batches (one optimizer step's, or a validation set's).

    Args:
        model: a causal LM (any ``...ForCausalLM``).
        micro_batches: padded micro-batches (``input_ids``, ``attention_mask``, ``labels``, from
            :func:`collate_chat`) or packed ones (``input_ids``, ``position_ids``, ``labels``, one row,
            from :func:`pack_examples`), in any mix.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (below).

    Each micro-batch runs through ``model(input_ids=..., attention_mask=..., position_ids=...,
    use_cache=False).logits`` with the keys it has (no attention mask for a packed one: its position
    ids keep the examples apart; ``use_cache=False`` because a Hugging Face model reads the packed
    sequences from the positions only when it builds no cache). The logits at ``t`` predict
    ``labels[:, t + 1]``; a *target* counts when its label is not ``-100`` and, in a padded
    micro-batch, its ``attention_mask`` is 1. Each target's loss is its cross-entropy, computed in
    float32.

    Returns:
        A float32 tensor (with the graph, so that it can be backpropagated):

        - ``"mean"``: the sum of the losses of all counted targets of *all* micro-batches divided by
          their number (NaN if there is none): the loss Chapter 5's ``train_steps`` minimises over a
          step's micro-batches, and Hugging Face's loss with ``num_items_in_batch``; *not* a mean of
          per-micro-batch or per-example means, which give a short answer's tokens more weight;
        - ``"sum"``: that sum (0 without targets);
        - ``"none"``: ``(n_examples,)``, the mean loss of each example's targets (NaN for an example
          without one), in order: every row of a padded micro-batch is an example; in a packed row a
          new example starts at each ``position_ids`` of 0.

    Hint:
        Chapter 5's ``causal_lm_loss(logits, labels, attention_mask, reduction="sum")`` gives a
        micro-batch's sum; for ``"none"``, ``F.cross_entropy(..., reduction="none")`` per target and an
        example index per target (a row number, or a running count of the zeros of ``position_ids``)
        with ``index_add_`` or ``bincount`` collect the sums and counts per example.
    """
    raise NotImplementedError("Exercise 7.3: implement sft_loss in sft.py")


# -- 7.4 NEFTune -------------------------------------------------------------------------------------
@exercise("7.4", points=2, validate=_validate_neftune_noise)
def neftune_noise(embeddings: torch.Tensor, alpha: float, seed: int) -> torch.Tensor:
    """NEFTune (Jain et al., 2024): the input embeddings plus uniform noise, while training.

    Args:
        embeddings: ``(batch, seq, d_model)`` floating: the token embeddings the model's first layer
            reads (not modified).
        alpha: the noise scale (the paper tries 5, 10 and 15; 0 gives the embeddings unchanged).
        seed: the seed of the noise.

    Returns:
        ``embeddings + noise``, same shape, dtype and device, where every entry of ``noise`` is drawn
        uniformly from ``[-m, m]`` with ``m = alpha / sqrt(seq * d_model)`` (``seq`` the tensor's
        sequence length, padding included, as Hugging Face's ``neftune_post_forward_hook`` computes
        it): the noise vector of a whole sequence has a norm of about ``alpha / sqrt(3)`` whatever
        its length and width. Drawn as ``torch.zeros_like(embeddings).uniform_(-m, m,
        generator=torch.Generator(embeddings.device).manual_seed(seed))``, which gives the draws of
        Hugging Face's hook after ``torch.manual_seed(seed)``; the global random state is left alone.

    Hint:
        ``m`` depends on the shape only: ``seq * d_model`` is ``embeddings.shape[1] *
        embeddings.shape[2]``, not the number of entries of the batch.
    """
    raise NotImplementedError("Exercise 7.4: implement neftune_noise in sft.py")


# -- 7.5 evaluation ------------------------------------------------------------------------------------
@exercise("7.5", points=2, validate=_validate_greedy_answers)
def greedy_answers(model: nn.Module, prompts: list[list[int]], *, pad_token_id: int, eos_token_id: int | list[int],
                   max_new_tokens: int) -> list[list[int]]:
    """A chat model's greedy answers to a batch of prompts, by Chapter 4's decoding.

    Args:
        model: a causal LM.
        prompts: token ids of each prompt: a conversation rendered with ``add_generation_prompt=True``
            (it ends with ``<|im_start|>assistant\\n``); lengths may differ.
        pad_token_id: the padding id.
        eos_token_id: an id or a list of ids that end an answer (``<|im_end|>``, and
            ``<|endoftext|>`` for a model that never learnt the chat template).
        max_new_tokens: the most tokens an answer may have.

    Returns:
        One list of token ids per prompt, in order: the tokens the model wrote after its prompt, up to
        and *not* including the first end id (at most ``max_new_tokens`` of them; fewer when it ends
        earlier). Each is what greedy ``model.generate`` gives for that prompt alone.

    Hint:
        Pad the prompts on the *left* (generation appends at the right: with right padding the new
        tokens would follow padding, at the wrong positions) with an attention mask, call
        ``course_lib.generation.cached_greedy_search`` (Chapter 4: it takes left-padded batches), and
        cut each row after its prompt and at its first end id.
    """
    raise NotImplementedError("Exercise 7.5: implement greedy_answers in sft.py")


# -- data ---------------------------------------------------------------------------------------------
def render_examples(rows: Iterable[dict], tokenizer) -> list[dict]:
    """Each row's ``messages`` rendered with the tokenizer's chat template (:func:`~course_lib.instruct.
    chat_tokenizer`): ``{"input_ids", "assistant_masks", "prompt_ids", "id", "family"}``, where
    ``prompt_ids`` is the conversation up to its last assistant turn with the generation prompt
    (``<|im_start|>assistant\\n``): what the model is given when it must answer."""
    examples = []
    for row in rows:
        messages = row["messages"]
        rendered = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)
        examples.append({"input_ids": list(rendered["input_ids"]), "assistant_masks": list(rendered["assistant_masks"]),
                         "prompt_ids": list(prompt["input_ids"]), "id": row.get("id"), "family": row.get("family")})
    return examples


def labelled_examples(examples: Sequence[dict], all_turns: bool = True) -> list[dict]:
    """Each example with its labels (:func:`collate_chat` of the example alone): ``{"input_ids", "labels"}``."""
    out = []
    for example in examples:
        batch = collate_chat([example], 0, all_turns)
        out.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
    return out


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of at most ``capacity`` tokens for sequences of ``lengths`` (each at most ``capacity``):
    best fit decreasing, as TRL's ``pack_dataset(strategy="bfd")`` (Ding et al., 2024).

    The sequences are taken longest first (ties in their order); each goes into the open bin with the
    least room that still fits it (of several with that room, the one that has had it longest), or
    into a new bin. Returns the indices of each bin, in the order the bins were opened and, within a
    bin, the order the sequences went in.
    """
    check_int("capacity", capacity, 1)
    if any(n > capacity or n < 1 for n in lengths):
        raise ValueError(f"every length must lie in [1, capacity={capacity}]")
    bins: list[list[int]] = []
    by_room: dict[int, deque] = defaultdict(deque)       # room left -> bins with that room, oldest first
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[index]
        fits = [room for room, waiting in by_room.items() if room >= n and waiting]
        if fits:
            room = min(fits)
            target = by_room[room].popleft()
        else:
            room, target = capacity, []
            bins.append(target)
        target.append(index)
        by_room[room - n].append(target)
    return bins


def padding_share(micro_batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """The share of the positions of ``micro_batches`` that are padding (0 for packed ones)."""
    positions = padded = 0
    for mb in micro_batches:
        positions += mb["input_ids"].numel()
        if "attention_mask" in mb:
            padded += int((mb["attention_mask"] == 0).sum())
    return padded / positions if positions else 0.0


@dataclass
class SFTData:
    """The rendered training and validation conversations of a run, and the validation rows checked
    for accuracy during training."""

    train: list[dict]                   # render_examples rows
    validation: list[dict]
    accuracy_rows: list[dict]           # instruction_dataset rows (validation) whose answers are checked
    accuracy_examples: list[dict]       # the same, rendered

    def units(self, config: "FinetuneConfig") -> list[list[int]]:
        """What batches draw from: one training example each (padded), or one bin of examples (packed)."""
        if not config.packing:
            return [[i] for i in range(len(self.train))]
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(config.seed)).tolist()
        bins = best_fit_decreasing([len(self.train[i]["input_ids"]) for i in order], config.pack_length)
        return [[order[i] for i in b] for b in bins]


def training_rows(config: "FinetuneConfig") -> list[dict]:
    """The rows of Chapter 6's training split that ``config`` trains on, family by family in
    :data:`~course_lib.instruction_data.FAMILIES` order: the first ``config.train_examples`` rows of
    each family (an int), the first ``config.train_examples[family]`` of the families a dict names
    (none of the others), or all rows (``None``)."""
    from course_lib.instruction_data import FAMILIES, instruction_dataset

    wanted = config.train_examples
    if isinstance(wanted, dict) and not set(wanted) <= set(FAMILIES):
        raise ValueError(f"train_examples names unknown families: {sorted(set(wanted) - set(FAMILIES))}")
    for limit in (wanted.values() if isinstance(wanted, dict) else [wanted]):
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"train_examples must give a non-negative int of rows (or None), got {limit!r}")
    out = []
    for family in FAMILIES:
        limit = wanted.get(family, 0) if isinstance(wanted, dict) else wanted
        rows = instruction_dataset("train", family, config.source)
        out += list(rows.select(range(len(rows) if limit is None else min(len(rows), limit))))
    return out


def prepare_sft_data(tokenizer, config: "FinetuneConfig") -> SFTData:
    """Chapter 6's instruction data set rendered for ``config``: the rows it trains on
    (:func:`training_rows`), the validation split, and ``config.eval_examples`` validation rows of
    every family for accuracy (families not trained on included)."""
    from course_lib.instruction_data import FAMILIES, instruction_dataset

    train_rows, accuracy_rows = training_rows(config), []
    for family in FAMILIES:
        accuracy_rows += list(instruction_dataset("validation", family, config.source).select(range(config.eval_examples)))
    validation = list(instruction_dataset("validation", None, config.source))
    if config.validation_examples:
        validation = validation[::max(1, len(validation) // config.validation_examples)][:config.validation_examples]
    return SFTData(render_examples(train_rows, tokenizer), render_examples(validation, tokenizer), accuracy_rows,
                   render_examples(accuracy_rows, tokenizer))


def micro_batch(examples: Sequence[dict], config: "FinetuneConfig", pad_token_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of ``examples``: :func:`pack_examples` of their labels, or :func:`collate_chat`."""
    if config.packing:
        return pack_examples(labelled_examples(examples, config.all_turns))
    return collate_chat(list(examples), pad_token_id, config.all_turns)


def sft_step_batches(data: SFTData, units: list[list[int]], config: "FinetuneConfig", pad_token_id: int,
                     start_step: int = 0, process_index: int = 0, n_processes: int = 1,
                     device: torch.device | str = "cpu") -> Iterable[list[dict[str, torch.Tensor]]]:
    """The micro-batches of every optimizer step from ``start_step`` to ``config.total_steps``, for one
    process: Chapter 5's :func:`~course_lib.pretraining.step_batches` for conversations. A step takes
    ``micro_batch_size * accumulation_steps * n_processes`` units (examples, or packed bins) in the
    order of :func:`~course_lib.pretraining.batch_order` with seed ``config.seed + epoch``; process
    ``p`` takes the ``p``-th share, cut into micro-batches of ``micro_batch_size`` units each."""
    from course_lib.pretraining import batch_order

    per_process = config.micro_batch_size * config.accumulation_steps
    global_batch = per_process * n_processes
    steps_per_epoch = len(units) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(units)} units are fewer than one step's batch of {global_batch}")
    orders: dict[int, list[list[int]]] = {}
    for step in range(start_step, config.total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: batch_order(len(units), global_batch, config.seed + epoch)}
        mine = orders[epoch][index][process_index * per_process:(process_index + 1) * per_process]
        chunks = [mine[i:i + config.micro_batch_size] for i in range(0, per_process, config.micro_batch_size)]
        yield [{k: v.to(device) for k, v in micro_batch([data.train[j] for u in chunk for j in units[u]], config,
                                                         pad_token_id).items()} for chunk in chunks]


# -- evaluation ------------------------------------------------------------------------------------------
def end_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: ``<|im_end|>`` and the end-of-text token."""
    from course_lib.instruct import IM_END

    return list(dict.fromkeys(t for t in (tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id)
                              if t is not None))


@torch.no_grad()
def validation_loss(model: nn.Module, examples: Sequence[dict], pad_token_id: int, batch_size: int = 64,
                    all_turns: bool = True) -> float:
    """The token-weighted SFT loss (:func:`sft_loss`) of ``examples`` (rendered), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in collate_chat(list(examples[i:i + batch_size]), pad_token_id,
                                                          all_turns).items()}
               for i in range(0, len(examples), batch_size)]
    loss = sft_loss(model, batches).item()
    model.train(was_training)
    return loss


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int = 16,
                     batch_size: int = 64, stop_ids: Sequence[int] | None = None) -> list[str]:
    """The decoded greedy answer (:func:`greedy_answers`) to each prompt (token ids), in batches of
    ``batch_size`` prompts of similar length; ``stop_ids`` default to :func:`end_token_ids`."""
    was_training = model.training
    model.eval()
    stops = list(stop_ids or end_token_ids(tokenizer))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))     # little padding per batch
    answers: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        new = greedy_answers(model, [list(prompts[i]) for i in chunk], pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stops, max_new_tokens=max_new_tokens)
        for i, ids in zip(chunk, new):
            answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
    model.train(was_training)
    return answers


def accuracy_by_family(rows: Sequence[dict], answers: Sequence[str]) -> dict[str, float]:
    """The share of right answers per family (Chapter 6's :func:`~course_lib.instruction_data.check_answer`),
    families in :data:`~course_lib.instruction_data.FAMILIES` order."""
    from course_lib.instruction_data import FAMILIES, check_answer

    right, total = defaultdict(int), defaultdict(int)
    for row, answer in zip(rows, answers):
        total[row["family"]] += 1
        right[row["family"]] += check_answer(row["family"], row, answer)
    return {f: right[f] / total[f] for f in FAMILIES if total[f]}


def task_accuracy(model: nn.Module, tokenizer, rows: Sequence[dict], max_new_tokens: int = 16,
                  batch_size: int = 64, examples: Sequence[dict] | None = None) -> tuple[dict[str, float], list[str]]:
    """The chat model's accuracy per family on ``rows`` (rows of the instruction data set): each
    question asked with the chat template, answered greedily. Returns ``(accuracy, answers)``."""
    examples = examples or render_examples(rows, tokenizer)
    answers = generate_answers(model, tokenizer, [e["prompt_ids"] for e in examples], max_new_tokens, batch_size)
    return accuracy_by_family(rows, answers), answers


def few_shot_prompts(rows: Sequence[dict], shot_rows: Sequence[dict], k: int = 3, seed: int = 0) -> list[str]:
    """For each row, Chapter 6's :func:`~course_lib.instruct.few_shot_prompt` with ``k`` shots drawn
    (seeded, per row) from ``shot_rows`` of the same family: how a pretrained model is asked."""
    import random

    from course_lib.instruct import few_shot_prompt
    from course_lib.instruction_data import user_content

    by_family: dict[str, list[dict]] = defaultdict(list)
    for row in shot_rows:
        by_family[row["family"]].append(row)
    prompts = []
    for i, row in enumerate(rows):
        shots = random.Random(f"{seed}:{i}").sample(by_family[row["family"]], k)
        prompts.append(few_shot_prompt(user_content(row["instruction"], row["input"]),
                                       [{"question": user_content(s["instruction"], s["input"]), "answer": s["output"]}
                                        for s in shots]))
    return prompts


def few_shot_accuracy(model: nn.Module, tokenizer, rows: Sequence[dict], shot_rows: Sequence[dict], k: int = 3,
                      max_new_tokens: int = 16, batch_size: int = 32, seed: int = 0) -> tuple[dict[str, float], list[str]]:
    """A pretrained model's accuracy per family with ``k``-shot prompts (:func:`few_shot_prompts`): its
    greedy continuation up to the first newline (Chapter 6's :func:`~course_lib.instruct.extract_answer`)
    is its answer. Returns ``(accuracy, answers)``."""
    answers = line_answers(model, tokenizer, few_shot_prompts(rows, shot_rows, k, seed), max_new_tokens, batch_size)
    return accuracy_by_family(rows, answers), answers


def line_answers(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16,
                 batch_size: int = 32) -> list[str]:
    """A model's one-line answer to each text prompt (a few-shot prompt, say): its greedy continuation
    (:func:`generate_answers`, stopping at Chapter 6's :func:`~course_lib.instruct.line_stop_ids`) read
    by :func:`~course_lib.instruct.extract_answer`."""
    from course_lib.instruct import extract_answer, line_stop_ids

    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    texts = generate_answers(model, tokenizer, ids, max_new_tokens, batch_size, stop_ids=line_stop_ids(tokenizer))
    return [extract_answer(t) for t in texts]


# -- run configurations --------------------------------------------------------------------------------
@dataclass
class FinetuneConfig(LoopSettings):
    """One fine-tuning run: the pretrained model it starts from, the data, the batches, the optimizer
    and the evaluation. A step takes ``micro_batch_size * accumulation_steps * n_processes`` units:
    examples, or with ``packing`` bins of up to ``pack_length`` tokens (each micro-batch then one
    padding-free row). ``settings()`` gives the dict Chapter 5's ``train_steps`` takes."""

    base: str = "cpu"                       # the pretrained_course_lm preset to start from
    train_examples: int | dict[str, int] | None = None  # training rows per family (training_rows)
    all_turns: bool = True                  # train on every assistant turn (collate_chat)
    packing: bool = True                    # padding-free rows (pack_examples) instead of padded batches
    pack_length: int = 256                  # tokens per packed bin
    micro_batch_size: int = 2               # units (examples, or packed bins) per micro-batch, per process
    accumulation_steps: int = 1
    total_steps: int = 300                  # Chapter 5's loop settings (LoopSettings), these three its own
    lr: float = 1e-3
    weight_decay: float = 0.0
    neftune_alpha: float | None = None      # NEFTune noise (e.g. 5.0); None: off
    eval_every: int = 100
    eval_examples: int = 25                 # validation rows per family whose answers are checked
    validation_examples: int | None = None  # validation rows for the loss (None: all)
    test_examples: int | None = None        # test rows per family of the cached model's report (None: all)
    max_new_tokens: int = 16
    seed: int = 0
    source: str | None = None               # corpus source of the base model and the string family


PRESETS: dict[str, FinetuneConfig] = {
    # Seconds on a CPU: the loop's tests (Chapter 5's tiny pretrained model, 50 examples per family).
    "tiny": FinetuneConfig(base="tiny", train_examples=50, pack_length=128, micro_batch_size=2,
                           accumulation_steps=2, total_steps=6, warmup_steps=1, lr=3e-3, eval_every=3,
                           eval_examples=4, validation_examples=32, test_examples=8, max_new_tokens=8),
    # The course's chat model on a CPU (Chapter 5's "cpu" model): about 90 s of one CPU thread in all
    # (200 steps of up to 512 tokens, 70 s; three evaluations; the test report on 100 questions per
    # family). Mostly the naming family, the one skill this 4M model learns in minutes (80 % of held-out
    # names after 200 steps, against 56 % for always answering "function"; trained on every family
    # alike it still answers "function" to all after 300 steps), and 100 rows of each other family,
    # enough to learn their answers' form.
    "cpu": FinetuneConfig(train_examples={"naming": 1000, "arithmetic": 100, "string": 100, "sorting": 100,
                                          "stdlib": 100},
                          total_steps=200, warmup_steps=10, lr=2e-3, eval_every=100, eval_examples=16,
                          validation_examples=64, test_examples=100),
    # ~100M parameters on one GPU (Chapter 5's gpu model), bf16.
    "gpu": FinetuneConfig(base="gpu", pack_length=2048, micro_batch_size=4, accumulation_steps=1, total_steps=600,
                          warmup_steps=30, lr=3e-4, mixed_precision="bf16", eval_every=100, eval_examples=50),
}


def preset(name: str, **overrides) -> FinetuneConfig:
    """A copy of :data:`PRESETS` ``[name]`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)


# -- the loop -----------------------------------------------------------------------------------------------
def add_neftune(model: nn.Module, alpha: float, seed: int = 0):
    """Switch NEFTune on for ``model`` (a ``...ForCausalLM``): while the model trains, its decoder gets
    the token embeddings plus :func:`neftune_noise` (a new seed, ``seed + call``, on each forward pass)
    instead of the token ids. Returns the hook's handle: ``handle.remove()`` switches it off.

    The noise goes on the token embeddings only, as in Hugging Face's ``neftune_post_forward_hook``;
    the hook sits on the decoder (``model.base_model``) rather than on the embedding module, because
    the course's model looks its embeddings up itself (Chapter 3's ``embed``)."""
    embeddings, calls = model.get_input_embeddings(), [seed]

    def hook(module, args, kwargs):
        if not module.training or kwargs.get("input_ids") is None:
            return None
        noisy = neftune_noise(embeddings(kwargs["input_ids"]), alpha, calls[0])
        calls[0] += 1
        return args, {**kwargs, "input_ids": None, "inputs_embeds": noisy}

    return model.base_model.register_forward_pre_hook(hook, with_kwargs=True)


def _empty_history() -> dict:
    return {"step": [], "loss": [], "grad_norm": [], "lr": [], "tokens": [], "positions": [], "seconds": [],
            "eval_step": [], "eval_loss": [], "eval_accuracy": []}


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the fine-tuned model (unwrapped, in eval mode), its chat
    tokenizer, the run's history and summary figures."""

    model: nn.Module
    tokenizer: object
    config: FinetuneConfig
    history: dict
    train_seconds: float
    tokens_per_second: float
    padding_share: float

    def summary(self) -> dict:
        """The figures as a plain dict (what the command line prints and the cache stores)."""
        return {"train_seconds": self.train_seconds, "tokens_per_second": self.tokens_per_second,
                "padding_share": self.padding_share, "validation_loss": self.history["eval_loss"][-1],
                "validation_accuracy": self.history["eval_accuracy"][-1],
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "config": dataclasses.asdict(self.config)}


def finetune(config: FinetuneConfig | str = "cpu", model: nn.Module | None = None, tokenizer=None,
             progress: bool = True, data: SFTData | None = None, accelerator=None) -> FinetuneResult:
    """Fine-tune a causal LM on the course's instruction data with Chapter 5's ``train_steps``.

    Args:
        config: a :class:`FinetuneConfig` or the name of a preset (``"tiny"``, ``"cpu"``, ``"gpu"``).
        model, tokenizer: the model to fine-tune (changed in place) and its tokenizer; default:
            Chapter 5's :func:`~course_lib.pretraining.pretrained_course_lm` of ``config.base``. The
            tokenizer gets the course's chat template (:func:`~course_lib.instruct.chat_tokenizer`).
        progress: a progress bar (main process) with the loss, tokens/s and the validation figures.
        data: prepared data to reuse (default: :func:`prepare_sft_data`).
        accelerator: an ``accelerate.Accelerator`` (default: a new one; under ``accelerate launch`` or
            ``torchrun`` it finds the other processes).

    The model is evaluated before training, every ``config.eval_every`` steps and at the end: the
    validation loss (:func:`validation_loss`) and the accuracy per family of its greedy answers to
    ``config.eval_examples`` validation questions per family (:func:`task_accuracy`). Throughput counts
    every process's non-padding tokens; evaluation time does not count.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from course_lib.instruct import chat_tokenizer
    from course_lib.pretraining import make_lr_scheduler, make_optimizer, pretrained_course_lm, train_steps

    config = preset(config) if isinstance(config, str) else config
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.distributed_type == "DEEPSPEED":
        raise RuntimeError("the course's loop (Chapter 5's train_steps) calls loss.backward() and optimizer.step() "
                           "itself, which DeepSpeed's engine must own: run this fine-tuning with DeepSpeed through "
                           "TRL (trl sft, see configs/accelerate/deepspeed_zero2.yaml), or use ddp.yaml or fsdp.yaml")
    if model is None:
        model, tokenizer = pretrained_course_lm(config.base, source=config.source, progress=progress)
    tokenizer = chat_tokenizer(tokenizer)
    data = data or prepare_sft_data(tokenizer, config)
    model = model.to(accelerator.device)
    pad = tokenizer.pad_token_id
    settings = config.settings()
    use_cache, model.config.use_cache = model.config.use_cache, False  # packed rows need a model without a cache
    neftune = add_neftune(model, config.neftune_alpha, config.seed) if config.neftune_alpha else None
    # DistributedDataParallel or FSDP under several processes (FSDP shards the optimizer's state too).
    wrapped, optimizer = accelerator.prepare(model, make_optimizer(model, settings))
    scheduler = make_lr_scheduler(optimizer, settings)
    n_processes = accelerator.num_processes
    history = _empty_history()

    def evaluate(step: int) -> None:
        history["eval_step"].append(step)
        history["eval_loss"].append(validation_loss(model, data.validation, pad, all_turns=config.all_turns))
        accuracy, _ = task_accuracy(model, tokenizer, data.accuracy_rows, config.max_new_tokens,
                                    examples=data.accuracy_examples)
        history["eval_accuracy"].append(accuracy)

    evaluate(0)
    bar = tqdm(total=config.total_steps, disable=not (progress and accelerator.is_main_process), desc="fine-tuning",
               unit="step")
    step, clock = 0, time.perf_counter()
    positions: list[int] = []

    def counted(batches):
        for micro_batches in batches:              # the positions (padding included) each step runs
            positions.append(sum(mb["input_ids"].numel() for mb in micro_batches))
            yield micro_batches

    def on_step(stats: dict) -> bool:
        nonlocal step, clock
        step += 1
        stats = dict(stats, tokens=stats["tokens"] * n_processes, positions=positions[-1] * n_processes,
                     seconds=time.perf_counter() - clock)
        if n_processes > 1:  # every process's loss, not only this one's
            stats["loss"] = accelerator.reduce(torch.tensor(stats["loss"], device=accelerator.device), "mean").item()
        for key in ("loss", "grad_norm", "lr", "tokens", "positions", "seconds"):
            history[key].append(stats[key])
        history["step"].append(step)
        if step % config.eval_every == 0 or step == config.total_steps:
            evaluate(step)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{stats['tokens'] / stats['seconds']:.0f}",
                        val=f"{history['eval_loss'][-1]:.3f}")
        clock = time.perf_counter()  # evaluation does not count as training time
        return step >= config.total_steps

    batches = sft_step_batches(data, data.units(config), config, pad, 0, accelerator.process_index, n_processes,
                               accelerator.device)
    train_steps(wrapped, counted(batches), settings, optimizer, scheduler, on_step=on_step)
    bar.close()
    if neftune is not None:
        neftune.remove()
    model.config.use_cache = use_cache
    model.eval()
    timed = history["seconds"][1:] or history["seconds"]    # the first step warms up
    timed_tokens = history["tokens"][1:] or history["tokens"]
    return FinetuneResult(model=model, tokenizer=tokenizer, config=config, history=history,
                          train_seconds=sum(history["seconds"]),
                          tokens_per_second=sum(timed_tokens) / sum(timed) if sum(timed) > 0 else 0.0,
                          padding_share=1 - sum(history["tokens"]) / sum(history["positions"]))


# -- the course's fine-tuned model -----------------------------------------------------------------------
# Bump when the loop, the presets or the evaluation change in a way that should rebuild cached models.
SFT_VERSION = 2  # 2: the CPU preset trains mostly on the naming family
# Chapter modules whose code runs while the model is fine-tuned and evaluated (the pretrained model and
# the data set are keyed by their own folder and file names).
_SFT_MODULES = ("numerics", "attention", "transformer", "generation", "pretraining", "instruct", "sft")
TEST_SHOTS = 3  # shots of the pretrained model's few-shot baseline


def sft_model_dir(size: str = "cpu", source: str | None = None) -> Path:
    """The cache folder of the course's fine-tuned model of preset ``size`` (built or not)."""
    from course_lib.cache import cache_entry, cache_key
    from course_lib.instruction_data import instruction_data_path
    from course_lib.pretraining import implementation_key, pretrained_model_dir

    config = preset(size, source=source)
    key = cache_key(SFT_VERSION, dataclasses.asdict(config), pretrained_model_dir(config.base, source).name,
                    instruction_data_path(source).name, implementation_key(_SFT_MODULES))
    return cache_entry("models", f"course-sft-{size}-{key}")


def test_rows(config: FinetuneConfig) -> list[dict]:
    """The held-out questions a run is reported on: the first ``config.test_examples`` rows of each
    family's test split (or all), in :data:`~course_lib.instruction_data.FAMILIES` order."""
    from course_lib.instruction_data import FAMILIES, instruction_dataset

    rows = []
    for family in FAMILIES:
        family_rows = instruction_dataset("test", family, config.source)
        rows += list(family_rows.select(range(min(len(family_rows), config.test_examples or len(family_rows)))))
    return rows


def test_report(model: nn.Module, tokenizer, base_model: nn.Module, base_tokenizer, config: FinetuneConfig) -> dict:
    """Held-out accuracy per family on :func:`test_rows`: the fine-tuned model asked with the chat
    template, and the pretrained model it started from asked with :data:`TEST_SHOTS`-shot prompts
    (shots from the training split), each with a few answers to show."""
    from course_lib.instruction_data import instruction_dataset

    rows = test_rows(config)
    shots = list(instruction_dataset("train", None, config.source))
    tuned, tuned_answers = task_accuracy(model, tokenizer, rows, config.max_new_tokens)
    base, base_answers = few_shot_accuracy(base_model, base_tokenizer, rows, shots, TEST_SHOTS, config.max_new_tokens,
                                           seed=config.seed)
    samples = [{"id": r["id"], "family": r["family"], "question": r["messages"][0]["content"], "expected": r["output"],
                "fine_tuned": a, "few_shot_base": b}
               for r, a, b in zip(rows[::len(rows) // 16], tuned_answers[::len(rows) // 16], base_answers[::len(rows) // 16])]
    return {"examples": len(rows), "fine_tuned": tuned, "few_shot_base": base, "samples": samples}


def sft_course_lm(size: str = "cpu", source: str | None = None, progress: bool = True):
    """The course's fine-tuned (chat) model and its tokenizer: ``(model, tokenizer)``.

    Loaded from the course cache; on first use Chapter 5's pretrained model of the preset's ``base``
    (:func:`~course_lib.pretraining.pretrained_course_lm`) is fine-tuned with preset ``size``
    (``"cpu"``: a few minutes on a laptop; ``"gpu"`` needs a CUDA GPU), evaluated on the test split
    against the pretrained model's few-shot answers, and saved in the ``transformers`` format with
    its tokenizer, chat template and generation settings (it stops at ``<|im_end|>``): the folder
    loads with ``AutoModelForCausalLM`` and ``AutoTokenizer`` (after ``import
    course_lib.language_model``), and ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``
    then ``model.generate`` chats with it. In solution mode the reference solutions fine-tune it; in
    student mode your code does, keyed by your files. ``training.json`` in the folder holds the
    run's history and the test report (:func:`test_report`). Chapters 8-11 start from this model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import course_lib.language_model  # noqa: F401  (registers the course model with the Auto classes)
    from course_lib.cache import building, stage_directory
    from course_lib.pretraining import pretrained_course_lm

    if size == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("the 'gpu' preset needs a CUDA GPU (about 100M parameters); use size='cpu' here")
    directory = sft_model_dir(size, source)
    with building(directory):  # one builder at a time (the book and the tests run side by side)
        if not (directory / "config.json").is_file():
            config = preset(size, source=source)
            base_model, base_tokenizer = pretrained_course_lm(config.base, source, progress=progress)
            result = finetune(config, progress=progress)
            model = result.model.to("cpu")
            model.generation_config.eos_token_id = end_token_ids(result.tokenizer)
            model.generation_config.pad_token_id = result.tokenizer.pad_token_id
            report = test_report(model, result.tokenizer, base_model, base_tokenizer, config)
            with stage_directory(directory) as staging:
                model.save_pretrained(staging)
                result.tokenizer.save_pretrained(staging)
                (staging / "training.json").write_text(json.dumps({**result.summary(), "history": result.history,
                                                                   "test": report}, default=str))
    model = AutoModelForCausalLM.from_pretrained(directory)
    return model.eval(), AutoTokenizer.from_pretrained(directory)


def sft_training_record(size: str = "cpu", source: str | None = None) -> dict:
    """``training.json`` of the cached fine-tuned model (built if missing): summary, history, test report."""
    sft_course_lm(size, source, progress=False)
    return json.loads((sft_model_dir(size, source) / "training.json").read_text())


# -- the same run with TRL ------------------------------------------------------------------------------------
def trl_command(config: FinetuneConfig, directory: Path | str) -> list[str]:
    """The fine-tuning of ``config`` as a TRL command line (``trl sft ...``, for ``accelerate launch -m
    trl.cli sft ...`` too): writes the training conversations to ``directory/data/train.jsonl`` and
    returns the command, which reads them and writes its model to ``directory/model``.

    The flags say what :func:`finetune` does in code: the pretrained course model of ``config.base``,
    loss on the assistant's tokens only, packing (best fit decreasing, padding-free rows) or padded
    batches, the batch sizes, steps, AdamW's settings, warm-up then cosine decay to
    ``min_lr_ratio`` of the peak, clipping, NEFTune. The course model's type is known to
    ``transformers`` once ``course_lib.language_model`` is imported, so the process that runs the
    command must import it first (``python -c "import course_lib.language_model; from trl.cli import
    main; main()" sft ...``). Differences that remain: TRL decays embeddings too, and draws its own
    batch order."""
    from course_lib.pretraining import pretrained_model_dir

    directory = Path(directory)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    with open(directory / "data" / "train.jsonl", "w", encoding="utf-8") as out:
        for row in training_rows(config):
            out.write(json.dumps({"messages": row["messages"]}) + "\n")
    flags = {"model_name_or_path": pretrained_model_dir(config.base, config.source),
             "dataset_name": directory / "data", "output_dir": directory / "model",
             "assistant_only_loss": True, "packing": config.packing, "padding_free": config.packing,
             "max_length": config.pack_length, "per_device_train_batch_size": config.micro_batch_size,
             "gradient_accumulation_steps": config.accumulation_steps, "max_steps": config.total_steps,
             "learning_rate": config.lr, "warmup_steps": config.warmup_steps,
             "lr_scheduler_type": "cosine_with_min_lr",
             "lr_scheduler_kwargs": json.dumps({"min_lr_rate": config.min_lr_ratio}),
             "weight_decay": config.weight_decay, "adam_beta1": config.betas[0], "adam_beta2": config.betas[1],
             "adam_epsilon": config.eps, "max_grad_norm": config.max_grad_norm or 0.0,
             "bf16": config.mixed_precision == "bf16", "seed": config.seed, "report_to": "none",
             "save_strategy": "no", "logging_steps": 10}
    if config.neftune_alpha:
        flags["neftune_noise_alpha"] = config.neftune_alpha
    return ["trl", "sft"] + [part for name, value in flags.items() for part in (f"--{name}", str(value))]


# -- plots ---------------------------------------------------------------------------------------------------
def plot_batch(batch: dict[str, torch.Tensor], tokens: Sequence[Sequence[str]] | None = None, ax=None):
    """Draw a micro-batch as a grid, one row per row of ``input_ids``: padding (grey), tokens the loss
    skips (light), tokens it trains (orange), and for a packed row the start of each example (a thick
    line where ``position_ids`` is 0). ``tokens``: the tokens' texts, written into the cells."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ids = batch["input_ids"]
    state = torch.ones_like(ids)                                           # 1: in the input, not trained
    if "attention_mask" in batch:
        state = state.masked_fill(batch["attention_mask"] == 0, 0)         # 0: padding
    state = state.masked_fill(batch["labels"] != IGNORE_INDEX, 2)          # 2: trained
    rows, cols = ids.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(min(10, 0.45 * cols + 1.5), 0.5 * rows + 1.2))
    ax.imshow(state, cmap=ListedColormap(["#d9d9d9", "#f2efe6", "#f4a259"]), vmin=0, vmax=2, aspect="auto")
    if tokens is not None:
        for r, row in enumerate(tokens):
            for c, text in enumerate(row[:cols]):
                ax.text(c, r, text.replace("\n", "\\n"), ha="center", va="center", fontsize=7, family="monospace",
                        rotation=90 if len(text) > 3 else 0)
    if "position_ids" in batch:
        for r in range(rows):
            for c in (batch["position_ids"][r] == 0).nonzero().flatten().tolist():
                ax.axvline(c - 0.5, color="black", linewidth=2)
    ax.set_yticks(range(rows))
    ax.set_xlabel("position in the row")
    ax.set_ylabel("row")
    return ax


def plot_finetuning(history: dict, axes=None):
    """Two panels: the training loss per step and the validation loss at each evaluation; the
    validation accuracy per family at each evaluation."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_ax, accuracy_ax = axes
    loss_ax.plot(history["step"], history["loss"], alpha=0.6, label="training (per step)")
    loss_ax.plot(history["eval_step"], history["eval_loss"], "o-", label="validation")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("loss on trained tokens (nats)")
    loss_ax.legend()
    for family in history["eval_accuracy"][0]:
        accuracy_ax.plot(history["eval_step"], [a[family] for a in history["eval_accuracy"]], "o-", label=family)
    accuracy_ax.set_xlabel("optimizer step")
    accuracy_ax.set_ylabel("validation accuracy")
    accuracy_ax.set_ylim(-0.03, 1.03)
    accuracy_ax.legend(fontsize=8)
    return axes


def plot_accuracy(reports: dict[str, dict[str, float]], ax=None):
    """Grouped bars: accuracy per family (x) for each named report (``{"few-shot base": {...}, ...}``)."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    families = list(next(iter(reports.values())))
    width = 0.8 / len(reports)
    x = np.arange(len(families))
    for i, (name, accuracy) in enumerate(reports.items()):
        bars = ax.bar(x + (i - (len(reports) - 1) / 2) * width, [accuracy[f] for f in families], width, label=name)
        ax.bar_label(bars, labels=[f"{accuracy[f]:.0%}" for f in families], fontsize=8)
    ax.set_xticks(x, families)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.1)
    ax.legend()
    return ax


# -- command line: python -m course_lib.sft / torchrun / accelerate launch -m course_lib.sft ------------------
def main(argv: Sequence[str] | None = None) -> dict:
    """Fine-tune from the command line; prints the run's figures as JSON (main process)."""
    from accelerate import Accelerator

    parser = argparse.ArgumentParser(prog="python -m course_lib.sft", description=main.__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--cached", action="store_true",
                        help="build (or find) the course's cached fine-tuned model of --preset (sft_course_lm)")
    parser.add_argument("--output", default=None, help="folder for the fine-tuned model")
    parser.add_argument("--steps", type=int, default=None, help="override total_steps")
    parser.add_argument("--packing", choices=("yes", "no"), default=None, help="override packing")
    parser.add_argument("--neftune", type=float, default=None, help="NEFTune alpha (e.g. 5)")
    parser.add_argument("--base-model", default=None,
                        help="folder of a pretrained model to start from (python -m course_lib.pretraining "
                             "--output DIR writes DIR/model) instead of the preset's cached course model")
    parser.add_argument("--source", default=None, help="corpus source (file, folder or HF dataset name)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.cached:
        if args.output or args.steps or args.packing or args.neftune or args.base_model:
            parser.error("--cached takes only --preset, --source and --no-progress (the cache is keyed by the preset)")
        sft_course_lm(args.preset, args.source, progress=not args.no_progress)
        summary = {"directory": str(sft_model_dir(args.preset, args.source))}
        print(json.dumps(summary))
        return summary
    overrides = {"total_steps": args.steps, "neftune_alpha": args.neftune,
                 "packing": None if args.packing is None else args.packing == "yes"}
    config = preset(args.preset, source=args.source, **{k: v for k, v in overrides.items() if v is not None})
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = tokenizer = None
    if args.base_model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import course_lib.language_model  # noqa: F401  (registers the course model with the Auto classes)

        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.base_model), AutoTokenizer.from_pretrained(args.base_model)
    result = finetune(config, model=model, tokenizer=tokenizer, progress=not args.no_progress, accelerator=accelerator)
    summary = result.summary() | {"processes": accelerator.num_processes,
                                  "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
                                  "sharded": any(type(p).__name__ == "DTensor" for p in result.model.parameters()),
                                  "loss": result.history["loss"],
                                  "eval_loss": result.history["eval_loss"],
                                  "weights_checksum": sum(p.double().sum().item() for p in result.model.parameters())}
    if args.output and accelerator.is_main_process:
        result.model.save_pretrained(args.output)
        result.tokenizer.save_pretrained(args.output)
    if accelerator.is_main_process:
        print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    # Run the main() of the imported module, whose exercises are registered under "sft" (this file,
    # run as a script, is a second copy named "__main__").
    from course_lib.sft import main as module_main

    module_main()
