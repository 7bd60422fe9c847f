"""Plausible wrong answers to Chapter 5's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.pretraining import make_lr_scheduler, make_optimizer


# -- 5.1 pack_blocks -------------------------------------------------------------------------------------
def _pack(docs, block_size, eos, *, stream=lambda docs, eos: [t for d in docs if d for t in (*d, eos)], pad_tail=False):
    tokens = stream(docs, eos)
    n_blocks = math.ceil(len(tokens) / block_size) if pad_tail else len(tokens) // block_size
    tokens = (tokens + [eos] * block_size)[:n_blocks * block_size]
    return torch.tensor(tokens, dtype=torch.long).view(n_blocks, block_size)


def pack_without_eos(token_ids_per_doc, block_size, eos_token_id):
    return _pack(token_ids_per_doc, block_size, eos_token_id, stream=lambda docs, eos: [t for d in docs for t in d])


def pack_eos_only_between_documents(token_ids_per_doc, block_size, eos_token_id):
    def stream(docs, eos):
        return [t for i, d in enumerate(x for x in docs if x) for t in ([eos] if i else []) + list(d)]
    return _pack(token_ids_per_doc, block_size, eos_token_id, stream=stream)


def pack_eos_before_each_document(token_ids_per_doc, block_size, eos_token_id):
    return _pack(token_ids_per_doc, block_size, eos_token_id,
                 stream=lambda docs, eos: [t for d in docs if d for t in (eos, *d)])


def pack_pads_the_tail(token_ids_per_doc, block_size, eos_token_id):
    return _pack(token_ids_per_doc, block_size, eos_token_id, pad_tail=True)


def pack_eos_after_empty_documents(token_ids_per_doc, block_size, eos_token_id):
    return _pack(token_ids_per_doc, block_size, eos_token_id, stream=lambda docs, eos: [t for d in docs for t in (*d, eos)])


# -- 5.2 split_documents ---------------------------------------------------------------------------------
def split_with_round(n_documents, validation_fraction, seed):
    permutation = np.random.default_rng(seed).permutation(n_documents).tolist()
    n_validation = round(validation_fraction * n_documents)
    return permutation[n_validation:], permutation[:n_validation]


def split_with_legacy_numpy_seed(n_documents, validation_fraction, seed):
    np.random.seed(seed)
    permutation = np.random.permutation(n_documents).tolist()
    n_validation = math.ceil(validation_fraction * n_documents)
    return permutation[n_validation:], permutation[:n_validation]


def split_train_first(n_documents, validation_fraction, seed):
    permutation = np.random.default_rng(seed).permutation(n_documents).tolist()
    n_train = n_documents - math.ceil(validation_fraction * n_documents)
    return permutation[:n_train], permutation[n_train:]


def split_sorted(n_documents, validation_fraction, seed):
    permutation = np.random.default_rng(seed).permutation(n_documents).tolist()
    n_validation = math.ceil(validation_fraction * n_documents)
    return sorted(permutation[n_validation:]), sorted(permutation[:n_validation])


# -- 5.3 batch_order -------------------------------------------------------------------------------------
def _batches(order, batch_size, drop_last=True):
    stop = len(order) - batch_size + 1 if drop_last else len(order)
    return [order[i:i + batch_size] for i in range(0, max(stop, 0), batch_size)]


def batch_order_keeps_the_last_batch(n_blocks, batch_size, seed):
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    return _batches(order, batch_size, drop_last=False)


def batch_order_from_the_global_seed(n_blocks, batch_size, seed):
    return _batches(torch.randperm(n_blocks).tolist(), batch_size)


def batch_order_reseeding_torchs_global_generator(n_blocks, batch_size, seed):
    torch.manual_seed(seed)   # the same order as a generator of its own, and everyone else's draws reset
    return _batches(torch.randperm(n_blocks).tolist(), batch_size)


def batch_order_with_numpy(n_blocks, batch_size, seed):
    return _batches(np.random.default_rng(seed).permutation(n_blocks).tolist(), batch_size)


def batch_order_unshuffled(n_blocks, batch_size, seed):
    return _batches(list(range(n_blocks)), batch_size)


# -- 5.4 causal_lm_loss ----------------------------------------------------------------------------------
def _lm_loss(logits, labels, attention_mask, ignore_index, reduction, *, shift=1, mask_shift=1, per_row=False,
             use_mask=True, use_ignore=True, upcast=True):
    logits = logits.float() if upcast and logits.dtype in (torch.float16, torch.bfloat16) else logits
    seq = logits.shape[1]
    logits = logits[:, :seq - shift]
    targets = labels[:, shift:].clone()
    if attention_mask is not None and use_mask:
        targets[attention_mask[:, mask_shift:seq - shift + mask_shift] == 0] = ignore_index
    if not use_ignore:
        targets = targets.clamp(min=0)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=ignore_index, reduction="none")
    counted = (targets != ignore_index).to(losses.dtype)
    if reduction == "sum":
        return losses.sum()
    if per_row:
        return (losses.sum(1) / counted.sum(1)).nanmean()
    return losses.sum() / counted.sum()


def loss_without_shift(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits, labels, attention_mask, ignore_index, reduction, shift=0, mask_shift=0)


def loss_counts_padding(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits, labels, attention_mask, ignore_index, reduction, use_mask=False)


def loss_masks_the_input_position(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits, labels, attention_mask, ignore_index, reduction, mask_shift=0)


def loss_mean_of_row_means(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits, labels, attention_mask, ignore_index, reduction, per_row=True)


def loss_ignores_ignore_index(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits, labels, attention_mask, ignore_index, reduction, use_ignore=False)


def loss_in_the_logits_dtype(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits, labels, attention_mask, ignore_index, reduction, upcast=False)


# -- 5.5 mask_tokens -------------------------------------------------------------------------------------
def _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, mask_replace_prob,
          random_replace_prob, *, conditional=True, protect_special=True, label_all=False, in_place=False):
    gen = torch.Generator().manual_seed(seed)
    ids = input_ids if in_place else input_ids.clone()
    probability = torch.full(ids.shape, mlm_probability)
    if protect_special:
        probability[torch.isin(ids, torch.tensor(list(special_token_ids), dtype=torch.long))] = 0.0
    picked = torch.bernoulli(probability, generator=gen).bool()
    labels = ids.clone() if label_all else ids.masked_fill(~picked, -100)
    masked = torch.bernoulli(torch.full(ids.shape, mask_replace_prob), generator=gen).bool() & picked
    ids[masked] = mask_token_id
    if mask_replace_prob < 1 and random_replace_prob > 0:
        p = random_replace_prob / (1 - mask_replace_prob) if conditional else random_replace_prob
        randomised = torch.bernoulli(torch.full(ids.shape, p), generator=gen).bool() & picked & ~masked
        random_ids = torch.randint(vocab_size, ids.shape, dtype=torch.long, generator=gen)
        ids[randomised] = random_ids[randomised]
    return ids, labels


def mask_random_probability_not_conditional(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                                            mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1):
    return _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, mask_replace_prob,
                 random_replace_prob, conditional=False)


def mask_special_tokens_too(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                            mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1):
    return _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, mask_replace_prob,
                 random_replace_prob, protect_special=False)


def mask_labels_every_token(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                            mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1):
    return _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, mask_replace_prob,
                 random_replace_prob, label_all=True)


def mask_all_picked_tokens(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                           mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1):
    return _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, 1.0, 0.0)


def mask_in_place(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                  mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1):
    return _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, mask_replace_prob,
                 random_replace_prob, in_place=True)


# -- 5.6 lr_at ------------------------------------------------------------------------------------------
def _lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio, *, warmup_offset=0, cosine_from=None, clamp=True,
        floor_by_max=False):
    if step < warmup_steps:
        return peak_lr * (step + warmup_offset) / warmup_steps
    start = warmup_steps if cosine_from is None else cosine_from
    progress = (step - start) / max(1, total_steps - start)
    progress = min(progress, 1.0) if clamp else progress
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    if floor_by_max:
        return peak_lr * max(min_lr_ratio, cosine)
    return peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def lr_warmup_off_by_one(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    return _lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio, warmup_offset=1)


def lr_cosine_counts_the_warmup(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    return _lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio, cosine_from=0)


def lr_floor_by_max(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    return _lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio, floor_by_max=True)


def lr_cosine_rises_after_the_end(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    return _lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio, clamp=False)


# -- 5.7 weight_decay_groups -----------------------------------------------------------------------------
def _groups(model, weight_decay, decays):
    embeddings = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decays(name, p, name in embeddings) else no_decay).append(name)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def decay_everything(model, weight_decay):
    return _groups(model, weight_decay, lambda name, p, embedding: True)


def decay_norms_and_biases(model, weight_decay):
    return _groups(model, weight_decay, lambda name, p, embedding: not embedding)


def decay_embeddings_too(model, weight_decay):
    return _groups(model, weight_decay, lambda name, p, embedding: p.ndim >= 2)


def decay_by_name_weight(model, weight_decay):
    return _groups(model, weight_decay, lambda name, p, embedding: name.endswith("weight") and not embedding)


# -- 5.8 train_steps ------------------------------------------------------------------------------------
def _targets(mb):
    counted = mb.get("labels", mb["input_ids"])[:, 1:] != -100
    if "attention_mask" in mb:
        counted &= mb["attention_mask"][:, 1:].bool()
    return int(counted.sum())


def _train(model, batches, settings, optimizer=None, scheduler=None, on_step=None, *, divide="targets",
           clip="before", zero_grad=True, scheduler_first=False, autocast=True, lr_after=False):
    from course_lib.pretraining import causal_lm_loss

    optimizer = optimizer or make_optimizer(model, settings)
    scheduler = scheduler or make_lr_scheduler(optimizer, settings)
    device_type = next(model.parameters()).device.type
    max_norm = settings["max_grad_norm"] if settings["max_grad_norm"] is not None else math.inf
    history = {"loss": [], "grad_norm": [], "lr": [], "tokens": []}
    model.train()
    for micro_batches in batches:
        n = sum(_targets(mb) for mb in micro_batches)
        step_loss, tokens = 0.0, 0
        for mb in micro_batches:
            with torch.autocast(device_type, dtype=torch.bfloat16,
                                enabled=autocast and settings["mixed_precision"] == "bf16"):
                logits = model(input_ids=mb["input_ids"], attention_mask=mb.get("attention_mask")).logits
                labels = mb.get("labels", mb["input_ids"])
                if divide == "targets":
                    loss = causal_lm_loss(logits, labels, mb.get("attention_mask"), reduction="sum") / n
                elif divide == "micro_batches":
                    loss = causal_lm_loss(logits, labels, mb.get("attention_mask")) / len(micro_batches)
                else:
                    loss = causal_lm_loss(logits, labels, mb.get("attention_mask"))
            loss.backward()
            step_loss += loss.item()
            tokens += int(mb["attention_mask"].sum()) if "attention_mask" in mb else mb["input_ids"].numel()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        if clip == "before":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler_first:
            scheduler.step()
            lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if clip == "after":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if not scheduler_first:
            scheduler.step()
        if lr_after:
            lr = optimizer.param_groups[0]["lr"]
        if zero_grad:
            optimizer.zero_grad()
        stats = {"loss": step_loss if divide != "none" else step_loss / len(micro_batches), "grad_norm": norm.item(),
                 "lr": lr, "tokens": tokens}
        for key, value in stats.items():
            history[key].append(value)
        if on_step is not None and on_step(stats):
            break
    return history


def train_accumulates_without_dividing(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, divide="none")


def train_divides_by_micro_batches(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, divide="micro_batches")


def train_clips_after_the_optimizer_step(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, clip="after")


def train_never_clips(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, clip="never")


def train_without_zero_grad(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, zero_grad=False)


def train_steps_the_scheduler_first(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, scheduler_first=True)


def train_reports_the_next_lr(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, lr_after=True)


def train_ignores_mixed_precision(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler, on_step, autocast=False)


# -- 5.9 mfu ------------------------------------------------------------------------------------------
def mfu_forward_only(tokens_per_second, flops_per_token, peak_flops, n_devices=1):
    return flops_per_token * tokens_per_second / (peak_flops * n_devices)


def mfu_six_times_forward_flops(tokens_per_second, flops_per_token, peak_flops, n_devices=1):
    return 6 * flops_per_token * tokens_per_second / (peak_flops * n_devices)


def mfu_as_a_percentage(tokens_per_second, flops_per_token, peak_flops, n_devices=1):
    return 300 * flops_per_token * tokens_per_second / (peak_flops * n_devices)


def mfu_ignores_the_devices(tokens_per_second, flops_per_token, peak_flops, n_devices=1):
    return 3 * flops_per_token * tokens_per_second / peak_flops


# -- wrong answers written from the contract alone (issue 16): types, inputs, arguments, state --------
def pack_appending_eos_to_the_callers_documents(token_ids_per_doc, block_size, eos_token_id):
    for doc in token_ids_per_doc:
        if doc:
            doc.append(eos_token_id)
    return _pack(token_ids_per_doc, block_size, eos_token_id, stream=lambda docs, eos: [t for d in docs for t in d])


def pack_blocks_in_int32(token_ids_per_doc, block_size, eos_token_id):
    return _pack(token_ids_per_doc, block_size, eos_token_id).int()


def split_with_numpy_ints(n_documents, validation_fraction, seed):
    permutation = list(np.random.default_rng(seed).permutation(n_documents))
    n_validation = math.ceil(validation_fraction * n_documents)
    return permutation[n_validation:], permutation[:n_validation]


def split_as_a_list_of_two_lists(n_documents, validation_fraction, seed):
    permutation = np.random.default_rng(seed).permutation(n_documents).tolist()
    n_validation = math.ceil(validation_fraction * n_documents)
    return [permutation[n_validation:], permutation[:n_validation]]


def batch_order_of_tensor_elements(n_blocks, batch_size, seed):
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
    return [list(order[i:i + batch_size]) for i in range(0, n_blocks - batch_size + 1, batch_size)]


def batch_order_as_tuples(n_blocks, batch_size, seed):
    return [tuple(batch) for batch in _batches(torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
                                               .tolist(), batch_size)]


def loss_padding_with_minus_100_whatever_ignore_index(logits, labels, attention_mask=None, ignore_index=-100,
                                                      reduction="mean"):
    targets = labels[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=ignore_index, reduction=reduction)


def loss_always_in_float32(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    return _lm_loss(logits.float(), labels, attention_mask, ignore_index, reduction)


def loss_masking_the_callers_labels(logits, labels, attention_mask=None, ignore_index=-100, reduction="mean"):
    if attention_mask is not None:
        labels[attention_mask == 0] = ignore_index
    return _lm_loss(logits, labels, None, ignore_index, reduction)


def mask_drawing_step_3_even_when_everything_is_masked(input_ids, *, vocab_size, mask_token_id,
                                                       special_token_ids=(), seed, mlm_probability=0.15,
                                                       mask_replace_prob=0.8, random_replace_prob=0.1):
    p_random = random_replace_prob / (1 - mask_replace_prob)   # ZeroDivisionError at mask_replace_prob == 1
    assert p_random >= 0
    return _mask(input_ids, vocab_size, mask_token_id, special_token_ids, seed, mlm_probability, mask_replace_prob,
                 random_replace_prob)


def mask_in_the_inputs_dtype(input_ids, *, vocab_size, mask_token_id, special_token_ids=(), seed,
                             mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1):
    ids, labels = _mask(input_ids.long(), vocab_size, mask_token_id, special_token_ids, seed, mlm_probability,
                        mask_replace_prob, random_replace_prob)
    return ids.to(input_ids.dtype), labels.to(input_ids.dtype)


def lr_warmup_up_to_and_including_its_last_step(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    if step <= warmup_steps:
        return peak_lr * step / warmup_steps
    return _lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio)


def lr_cosine_over_total_minus_warmup(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_as_a_tensor(step, *, peak_lr, warmup_steps, total_steps, min_lr_ratio=0.0):
    return torch.tensor(_lr(step, peak_lr, warmup_steps, total_steps, min_lr_ratio))


def decay_frozen_parameters_too(model, weight_decay):
    embeddings = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    decay = [n for n, p in model.named_parameters() if p.ndim >= 2 and n not in embeddings]
    no_decay = [n for n, p in model.named_parameters() if not (p.ndim >= 2 and n not in embeddings)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def decay_embeddings_found_by_exact_type(model, weight_decay):
    embeddings = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if type(m) is nn.Embedding}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in embeddings else no_decay).append(name)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def decay_embeddings_named_with_a_dot_always(model, weight_decay):
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and name not in embeddings else no_decay).append(name)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_building_a_new_optimizer_every_call(model, batches, settings, optimizer=None, scheduler=None,
                                              on_step=None):
    return _train(model, batches, settings, None, None, on_step)


def train_building_a_new_scheduler_every_call(model, batches, settings, optimizer=None, scheduler=None,
                                              on_step=None):
    return _train(model, batches, settings, optimizer, None, on_step)


def train_ignoring_the_stop_signal(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    return _train(model, batches, settings, optimizer, scheduler,
                  None if on_step is None else (lambda stats: on_step(stats) and False))


def train_counting_the_batches_first(model, batches, settings, optimizer=None, scheduler=None, on_step=None):
    total = sum(1 for _ in batches)  # a generator is used up here
    history = _train(model, batches, settings, optimizer, scheduler, on_step)
    return history if total else history


def mfu_in_integer_arithmetic(tokens_per_second, flops_per_token, peak_flops, n_devices=1):
    return 3 * flops_per_token * tokens_per_second // (peak_flops * n_devices)


def mfu_as_a_tensor(tokens_per_second, flops_per_token, peak_flops, n_devices=1):
    return torch.tensor(3.0 * flops_per_token) * tokens_per_second / (peak_flops * n_devices)


MUTANTS = {
    "pack_blocks": [pack_without_eos, pack_eos_only_between_documents, pack_eos_before_each_document,
                    pack_pads_the_tail, pack_eos_after_empty_documents, pack_appending_eos_to_the_callers_documents,
                    pack_blocks_in_int32],
    "split_documents": [split_with_round, split_with_legacy_numpy_seed, split_train_first, split_sorted,
                        split_with_numpy_ints, split_as_a_list_of_two_lists],
    "batch_order": [batch_order_keeps_the_last_batch, batch_order_from_the_global_seed, batch_order_with_numpy,
                    batch_order_unshuffled, batch_order_of_tensor_elements, batch_order_as_tuples,
                    batch_order_reseeding_torchs_global_generator],
    "causal_lm_loss": [loss_without_shift, loss_counts_padding, loss_masks_the_input_position, loss_mean_of_row_means,
                       loss_ignores_ignore_index, loss_in_the_logits_dtype,
                       loss_padding_with_minus_100_whatever_ignore_index, loss_always_in_float32,
                       loss_masking_the_callers_labels],
    "mask_tokens": [mask_random_probability_not_conditional, mask_special_tokens_too, mask_labels_every_token,
                    mask_all_picked_tokens, mask_in_place, mask_drawing_step_3_even_when_everything_is_masked,
                    mask_in_the_inputs_dtype],
    "lr_at": [lr_warmup_off_by_one, lr_cosine_counts_the_warmup, lr_floor_by_max, lr_cosine_rises_after_the_end,
              lr_warmup_up_to_and_including_its_last_step, lr_cosine_over_total_minus_warmup, lr_as_a_tensor],
    "weight_decay_groups": [decay_everything, decay_norms_and_biases, decay_embeddings_too, decay_by_name_weight,
                            decay_frozen_parameters_too, decay_embeddings_found_by_exact_type,
                            decay_embeddings_named_with_a_dot_always],
    "train_steps": [train_accumulates_without_dividing, train_divides_by_micro_batches,
                    train_clips_after_the_optimizer_step, train_never_clips, train_without_zero_grad,
                    train_steps_the_scheduler_first, train_reports_the_next_lr, train_ignores_mixed_precision,
                    train_building_a_new_optimizer_every_call, train_building_a_new_scheduler_every_call,
                    train_ignoring_the_stop_signal, train_counting_the_batches_first],
    "mfu": [mfu_forward_only, mfu_six_times_forward_flops, mfu_as_a_percentage, mfu_ignores_the_devices,
            mfu_in_integer_arithmetic, mfu_as_a_tensor],
}


# -- 5.10 AdamW.step -----------------------------------------------------------------------------------
# Each variant is a body of AdamW.step (self, closure): the harness runs it through an AdamW subclass
# (adamw_driver below), and grading.submissions splices it into a student's file.
def _adamw_step(self, closure, *, bias_correction=True, first_t=1, decay="decoupled", decay_from="group",
                eps_inside_sqrt=False, lr_from="group", state_in="state", skip_missing=True, count="parameter",
                use_closure=True, maximize=True, amsgrad=True, step_as="tensor", max_name="max_exp_avg_sq"):
    loss = None
    if closure is not None and use_closure:
        with torch.enable_grad():
            loss = closure()
    if state_in == "attribute" and not hasattr(self, "moments"):
        self.moments = {}
    for group in self.param_groups:
        lr = group["lr"] if lr_from == "group" else self.defaults["lr"]
        weight_decay = group["weight_decay"] if decay_from == "group" else self.defaults["weight_decay"]
        beta1, beta2 = group["betas"]
        if count == "group":
            group["updates"] = group.get("updates", 0) + 1
        for p in group["params"]:
            if p.grad is None and skip_missing:
                continue
            g = torch.zeros_like(p) if p.grad is None else p.grad
            g = -g if group["maximize"] and maximize else g
            state = self.state[p] if state_in == "state" else self.moments.setdefault(p, {})
            if not state:
                state.update(step=torch.tensor(0.0) if step_as == "tensor" else 0, exp_avg=torch.zeros_like(p),
                             exp_avg_sq=torch.zeros_like(p))
                if group["amsgrad"]:
                    state[max_name] = torch.zeros_like(p)
            state["step"] += 1
            t = (float(state["step"]) if count == "parameter" else group["updates"]) - 1 + first_t
            if decay == "decoupled":
                p.mul_(1 - lr * weight_decay)
            elif decay == "without_lr":
                p.mul_(1 - weight_decay)
            elif decay == "l2":
                g = g + weight_decay * p
            state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            v = state["exp_avg_sq"]
            if group["amsgrad"] and amsgrad:
                v = torch.maximum(state[max_name], v, out=state[max_name])
            m_hat = state["exp_avg"] / (1 - beta1**t) if bias_correction else state["exp_avg"]
            v_hat = v / (1 - beta2**t) if bias_correction else v
            denominator = (v_hat + group["eps"]).sqrt() if eps_inside_sqrt else v_hat.sqrt() + group["eps"]
            update = lr * m_hat / denominator
            if decay == "after_update":
                p.sub_(update).mul_(1 - lr * weight_decay)
            else:
                p.sub_(update)
    return loss


def adamw_without_bias_correction(self, closure=None):
    return _adamw_step(self, closure, bias_correction=False)


def adamw_bias_correction_from_step_0(self, closure=None):
    return _adamw_step(self, closure, first_t=0)


def adamw_bias_correction_one_step_ahead(self, closure=None):
    return _adamw_step(self, closure, first_t=2)


def adamw_with_l2_instead_of_decoupled_decay(self, closure=None):
    return _adamw_step(self, closure, decay="l2")


def adamw_decay_without_the_learning_rate(self, closure=None):
    return _adamw_step(self, closure, decay="without_lr")


def adamw_decay_after_the_update(self, closure=None):
    return _adamw_step(self, closure, decay="after_update")


def adamw_decays_the_no_decay_group(self, closure=None):
    return _adamw_step(self, closure, decay_from="defaults")


def adamw_eps_inside_the_square_root(self, closure=None):
    return _adamw_step(self, closure, eps_inside_sqrt=True)


def adamw_learning_rate_from_init(self, closure=None):
    return _adamw_step(self, closure, lr_from="defaults")


def adamw_state_outside_self_state(self, closure=None):
    return _adamw_step(self, closure, state_in="attribute")


def adamw_treats_a_missing_gradient_as_zero(self, closure=None):
    return _adamw_step(self, closure, skip_missing=False)


def adamw_one_step_count_per_group(self, closure=None):
    return _adamw_step(self, closure, count="group")


def adamw_ignores_the_closure(self, closure=None):
    return _adamw_step(self, closure, use_closure=False)


def adamw_ignores_maximize(self, closure=None):
    return _adamw_step(self, closure, maximize=False)


def adamw_ignores_amsgrad(self, closure=None):
    return _adamw_step(self, closure, amsgrad=False)


def adamw_counting_steps_in_a_python_int(self, closure=None):
    return _adamw_step(self, closure, step_as="int")


def adamw_keeping_the_amsgrad_maximum_under_another_name(self, closure=None):
    return _adamw_step(self, closure, max_name="max_v")


def _entry_point(harness, wrong, name):
    """A stand-in for an entry point the tests call (adamw_steps, clipped_gradients): the course's
    ``harness`` run on the ``wrong`` optimizer class or clipping function, named ``name``."""
    def entry_point(*args, **kwargs):
        return harness(wrong, *args, **kwargs)

    entry_point.__name__ = name
    return entry_point


def adamw_driver(wrong_step):
    """adamw_steps with an AdamW whose step is ``wrong_step``."""
    from course_lib.pretraining import AdamW, run_optimizer

    wrong = type(f"AdamW_{wrong_step.__name__}", (AdamW,), {"step": torch.no_grad()(wrong_step)})
    return _entry_point(run_optimizer, wrong, wrong_step.__name__)


ADAMW_MUTANTS = [adamw_without_bias_correction, adamw_bias_correction_from_step_0, adamw_bias_correction_one_step_ahead,
                 adamw_with_l2_instead_of_decoupled_decay, adamw_decay_without_the_learning_rate,
                 adamw_decay_after_the_update, adamw_decays_the_no_decay_group, adamw_eps_inside_the_square_root,
                 adamw_learning_rate_from_init, adamw_state_outside_self_state, adamw_treats_a_missing_gradient_as_zero,
                 adamw_one_step_count_per_group, adamw_ignores_the_closure, adamw_ignores_maximize,
                 adamw_ignores_amsgrad, adamw_counting_steps_in_a_python_int,
                 adamw_keeping_the_amsgrad_maximum_under_another_name]


# -- 5.11 clip_grad_norm_ ------------------------------------------------------------------------------
def _clip(parameters, max_norm, norm_type, error_if_nonfinite, *, per_tensor=False, first_only=False, read_twice=False,
          total="norm_of_norms", ignore_norm_type=False, epsilon=1e-6, clamp=True, check=True, report="before"):
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else parameters
    if not read_twice:
        parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    p = 2.0 if ignore_norm_type else norm_type
    norms = torch.stack([torch.linalg.vector_norm(g, p) for g in grads])
    total_norm = {"norm_of_norms": lambda: torch.linalg.vector_norm(norms, p), "sum": norms.sum,
                  "first": lambda: norms[0]}["first" if first_only else total]()
    if check and error_if_nonfinite and not torch.isfinite(total_norm):
        raise RuntimeError("the total gradient norm is not finite")
    for g, norm in zip([q.grad for q in parameters if q.grad is not None], norms):
        scale = max_norm / ((norm if per_tensor else total_norm) + epsilon)
        g.mul_(torch.clamp(scale, max=1.0) if clamp else scale)
    if report == "after":
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, p) for g in grads]), p)
    return total_norm


def clip_each_tensor_on_its_own(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, per_tensor=True)


def clip_by_the_norm_of_the_first_tensor(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, first_only=True)


def clip_reads_the_generator_twice(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, read_twice=True)


def clip_by_the_sum_of_the_norms(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, total="sum")


def clip_always_by_the_2_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, ignore_norm_type=True)


def clip_without_the_epsilon(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, epsilon=0.0)


def clip_scales_small_gradients_up(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, clamp=False)


def clip_ignores_error_if_nonfinite(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, check=False)


def clip_returns_the_norm_after_clipping(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    return _clip(parameters, max_norm, norm_type, error_if_nonfinite, report="after")


def clipping_driver(wrong_clip):
    """clipped_gradients with ``wrong_clip`` as the clipping."""
    from course_lib.pretraining import run_clipping

    return _entry_point(run_clipping, wrong_clip, wrong_clip.__name__)


CLIP_MUTANTS = [clip_each_tensor_on_its_own, clip_by_the_norm_of_the_first_tensor, clip_reads_the_generator_twice,
                clip_by_the_sum_of_the_norms, clip_always_by_the_2_norm, clip_without_the_epsilon,
                clip_scales_small_gradients_up, clip_ignores_error_if_nonfinite, clip_returns_the_norm_after_clipping]

MUTANTS["adamw_steps"] = [adamw_driver(m) for m in ADAMW_MUTANTS]
MUTANTS["clipped_gradients"] = [clipping_driver(m) for m in CLIP_MUTANTS]


# -- 5.12 save_checkpoint and 5.13 load_checkpoint -------------------------------------------------------
def _save(directory, model, optimizer, scheduler, step, history, *, leave_out=(), copy_temporary=False,
          path_of=lambda directory: Path(directory) / "checkpoint.pt"):
    import io
    import random

    from course_lib.cache import write_atomic

    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all(), "python": random.getstate()}
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "history": history, "rng": rng}
    state = {k: v for k, v in state.items() if k not in leave_out}
    if copy_temporary:  # written to a temporary file first, but copied over instead of renamed
        import shutil

        temporary = Path(directory) / "checkpoint.pt.tmp"
        temporary.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, temporary)
        return Path(shutil.copyfile(temporary, Path(directory) / "checkpoint.pt"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_atomic(path_of(directory), buffer.getvalue())


def save_without_the_optimizer(directory, model, optimizer, scheduler, step, history):
    return _save(directory, model, optimizer, scheduler, step, history, leave_out=("optimizer",))


def save_without_the_scheduler(directory, model, optimizer, scheduler, step, history):
    return _save(directory, model, optimizer, scheduler, step, history, leave_out=("scheduler",))


def save_without_the_generators(directory, model, optimizer, scheduler, step, history):
    return _save(directory, model, optimizer, scheduler, step, history, leave_out=("rng",))


def save_leaves_its_temporary_file(directory, model, optimizer, scheduler, step, history):
    return _save(directory, model, optimizer, scheduler, step, history, copy_temporary=True)


def _load(directory, model, optimizer, scheduler, *, restore=("model", "optimizer", "scheduler", "torch", "python"),
          path_of=lambda directory: Path(directory) / "checkpoint.pt"):
    import random

    state = torch.load(path_of(directory), map_location=next(model.parameters()).device, weights_only=True)
    for key, target in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if key in restore:
            target.load_state_dict(state[key])
    if "torch" in restore:
        torch.set_rng_state(state["rng"]["torch"].cpu())
    if "python" in restore:
        random.setstate(state["rng"]["python"])
    return state["step"], state["history"]


def load_without_the_optimizer(directory, model, optimizer, scheduler):
    return _load(directory, model, optimizer, scheduler, restore=("model", "scheduler", "torch", "python"))


def load_without_the_scheduler(directory, model, optimizer, scheduler):
    return _load(directory, model, optimizer, scheduler, restore=("model", "optimizer", "torch", "python"))


def load_without_the_generators(directory, model, optimizer, scheduler):
    return _load(directory, model, optimizer, scheduler, restore=("model", "optimizer", "scheduler"))


def load_only_torchs_generator(directory, model, optimizer, scheduler):
    return _load(directory, model, optimizer, scheduler, restore=("model", "optimizer", "scheduler", "torch"))


def save_into_a_path_only(directory, model, optimizer, scheduler, step, history):
    return _save(directory, model, optimizer, scheduler, step, history, path_of=lambda d: d / "checkpoint.pt")


def save_creating_only_the_last_folder(directory, model, optimizer, scheduler, step, history):
    Path(directory).mkdir(exist_ok=True)
    return _save(directory, model, optimizer, scheduler, step, history)


def load_from_a_str_only(directory, model, optimizer, scheduler):
    return _load(directory, model, optimizer, scheduler, path_of=lambda d: d + "/checkpoint.pt")


def _save_entry(wrong_save):
    from course_lib.pretraining import run_save_checkpoint

    return _entry_point(run_save_checkpoint, wrong_save, wrong_save.__name__)


def _load_entry(wrong_load):
    from course_lib.pretraining import run_checkpoint_resume

    return _entry_point(run_checkpoint_resume, wrong_load, wrong_load.__name__)


MUTANTS["saved_checkpoint"] = [_save_entry(m) for m in (save_without_the_optimizer, save_without_the_scheduler,
                                                         save_without_the_generators, save_leaves_its_temporary_file,
                                                         save_into_a_path_only, save_creating_only_the_last_folder)]
MUTANTS["resumed_from_checkpoint"] = [_load_entry(m) for m in (load_without_the_optimizer, load_without_the_scheduler,
                                                               load_without_the_generators, load_only_torchs_generator,
                                                               load_from_a_str_only)]
