"""Plausible wrong answers to Chapter 7's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake.
"""

import math

import torch
import torch.nn.functional as F

from course_lib.generation import cached_greedy_search
from course_lib.tasks import pad_batch

IGNORE = -100


# -- 7.1 collate_chat ------------------------------------------------------------------------------------------
def _runs(mask):
    """(start, end) of each run of 1s."""
    runs, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _collate(examples, pad_token_id, all_turns, *, label=None, left=False, pad_label=IGNORE):
    seq = max(len(e["input_ids"]) for e in examples)
    label = label or (lambda ids, mask, t: ids[t] if mask[t] else IGNORE)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        ids, mask = list(e["input_ids"]), list(e["assistant_masks"])
        if not all_turns:
            runs = _runs(mask)
            mask = [int(bool(runs) and runs[-1][0] <= t < runs[-1][1]) for t in range(len(mask))]
        labels = [label(ids, mask, t) for t in range(len(ids))]
        n = seq - len(ids)
        padding = (lambda row, value: [value] * n + row) if left else (lambda row, value: row + [value] * n)
        rows["input_ids"].append(padding(ids, pad_token_id))
        rows["attention_mask"].append(padding([1] * len(ids), 0))
        rows["labels"].append(padding(labels, pad_label if pad_label is not None else pad_token_id))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}


def collate_trains_the_prompt(examples, pad_token_id, all_turns=True):
    return _collate(examples, pad_token_id, all_turns, label=lambda ids, mask, t: ids[t])


def collate_without_the_end_of_turn_token(examples, pad_token_id, all_turns=True):
    def label(ids, mask, t):
        last_of_run = mask[t] and (t + 1 == len(mask) or not mask[t + 1])
        return ids[t] if mask[t] and not last_of_run else IGNORE
    return _collate(examples, pad_token_id, all_turns, label=label)


def collate_pads_on_the_left(examples, pad_token_id, all_turns=True):
    return _collate(examples, pad_token_id, all_turns, left=True)


def collate_trains_the_padding(examples, pad_token_id, all_turns=True):
    return _collate(examples, pad_token_id, all_turns, pad_label=None)


def collate_ignores_all_turns(examples, pad_token_id, all_turns=True):
    return _collate(examples, pad_token_id, True)


def collate_first_turn_only(examples, pad_token_id, all_turns=True):
    if all_turns:
        return _collate(examples, pad_token_id, True)
    firsts = []
    for e in examples:
        runs = _runs(e["assistant_masks"])
        firsts.append({"input_ids": e["input_ids"],
                       "assistant_masks": [int(bool(runs) and runs[0][0] <= t < runs[0][1])
                                           for t in range(len(e["input_ids"]))]})
    return _collate(firsts, pad_token_id, True)


def collate_pads_with_zero(examples, pad_token_id, all_turns=True):
    return _collate(examples, 0, all_turns)


def collate_shifts_the_labels(examples, pad_token_id, all_turns=True):
    return _collate(examples, pad_token_id, all_turns,
                    label=lambda ids, mask, t: ids[t + 1] if t + 1 < len(ids) and mask[t + 1] else IGNORE)


# -- 7.2 pack_examples -----------------------------------------------------------------------------------------
def _pack(examples, *, positions=None, mask_first=True, labels_from_ids=False):
    ids = torch.cat([torch.tensor(e["input_ids"]) for e in examples])
    pos = positions(examples) if positions else torch.cat([torch.arange(len(e["input_ids"])) for e in examples])
    labels = torch.cat([torch.tensor(e["input_ids"] if labels_from_ids else e["labels"]) for e in examples])
    if mask_first:
        starts = torch.tensor([0] + [len(e["input_ids"]) for e in examples[:-1]]).cumsum(0)
        labels[starts] = IGNORE
    return {"input_ids": ids[None], "position_ids": pos[None].long(), "labels": labels[None].long()}


def pack_positions_not_restarting(examples):
    return _pack(examples, positions=lambda ex: torch.arange(sum(len(e["input_ids"]) for e in ex)))


def pack_positions_from_one(examples):
    return _pack(examples, positions=lambda ex: torch.cat([torch.arange(1, len(e["input_ids"]) + 1) for e in ex]))


def pack_without_masking_first_tokens(examples):
    return _pack(examples, mask_first=False)


def pack_trains_every_token(examples):
    return _pack(examples, labels_from_ids=True)


# -- 7.3 sft_loss ------------------------------------------------------------------------------------------------
def _token_losses(model, mb, *, pass_positions=True, shift=1, upcast=True):
    """Per-target losses ``(batch, seq - shift)`` (0 where not counted), the counted mask, example ids."""
    inputs = {k: mb[k] for k in ("input_ids", "attention_mask") if k in mb}
    if pass_positions and "position_ids" in mb:
        inputs["position_ids"] = mb["position_ids"]
    logits = model(**inputs, use_cache=False).logits
    logits = logits.float() if upcast else logits
    seq = logits.shape[1]
    targets = mb["labels"][:, shift:].clone()
    if "attention_mask" in mb:
        targets[mb["attention_mask"][:, shift:] == 0] = IGNORE
    losses = F.cross_entropy(logits[:, :seq - shift].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    if "position_ids" in mb:
        example = (mb["position_ids"] == 0).long().cumsum(-1) - 1
    else:
        example = torch.arange(mb["input_ids"].shape[0], device=logits.device)[:, None].expand_as(mb["input_ids"])
    return losses, targets != IGNORE, example[:, shift:]


def _per_example(losses, counted, example):
    n = int(example.max()) + 1
    sums = torch.zeros(n, device=losses.device).index_add(0, example.flatten(), losses.flatten())
    counts = torch.zeros(n, device=losses.device).index_add(0, example.flatten(), counted.float().flatten())
    return sums, counts


def _sft_loss(model, micro_batches, reduction, *, combine="tokens", pass_positions=True, shift=1, per_row=False,
              upcast=True):
    parts = [_token_losses(model, mb, pass_positions=pass_positions, shift=shift, upcast=upcast) for mb in micro_batches]
    if reduction == "none":
        out = []
        for losses, counted, example in parts:
            if per_row:
                example = torch.arange(losses.shape[0], device=losses.device)[:, None].expand_as(losses)
            sums, counts = _per_example(losses, counted, example)
            out.append(sums / counts)
        return torch.cat(out)
    total = sum(l.sum() for l, _, _ in parts)
    if reduction == "sum":
        return total
    if combine == "micro_batches":
        return torch.stack([l.sum() / c.sum() for l, c, _ in parts]).mean()
    if combine == "examples":
        means = [s / c for s, c in (_per_example(*p) for p in parts)]
        return torch.cat(means).nanmean()
    return total / sum(c.sum() for _, c, _ in parts)


def sft_loss_mean_of_example_means(model, micro_batches, reduction="mean"):
    return _sft_loss(model, micro_batches, reduction, combine="examples")


def sft_loss_mean_of_micro_batch_means(model, micro_batches, reduction="mean"):
    return _sft_loss(model, micro_batches, reduction, combine="micro_batches")


def sft_loss_without_position_ids(model, micro_batches, reduction="mean"):
    return _sft_loss(model, micro_batches, reduction, pass_positions=False)


def sft_loss_without_shift(model, micro_batches, reduction="mean"):
    return _sft_loss(model, micro_batches, reduction, shift=0)


def sft_loss_one_example_per_packed_row(model, micro_batches, reduction="mean"):
    return _sft_loss(model, micro_batches, reduction, per_row=True)


def sft_loss_in_the_models_dtype(model, micro_batches, reduction="mean"):
    return _sft_loss(model, micro_batches, reduction, upcast=False).float()   # bf16 cross-entropy, cast at the end


def sft_loss_without_the_graph(model, micro_batches, reduction="mean"):
    with torch.no_grad():
        return _sft_loss(model, micro_batches, reduction)


def sft_loss_ignores_the_attention_mask(model, micro_batches, reduction="mean"):
    total, count = 0.0, 0
    for mb in micro_batches:
        inputs = {k: mb[k] for k in ("input_ids", "attention_mask", "position_ids") if k in mb}
        logits = model(**inputs, use_cache=False).logits.float()
        targets = mb["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        total = total + losses.sum()
        count += int((targets != IGNORE).sum())
    if reduction == "none":
        return _sft_loss(model, micro_batches, reduction)
    return total if reduction == "sum" else total / count


# -- 7.4 neftune_noise --------------------------------------------------------------------------------------------
def _noise(embeddings, alpha, seed, *, scale, low=-1.0):
    g = torch.Generator(embeddings.device).manual_seed(seed)
    u = torch.zeros_like(embeddings).uniform_(low, 1.0, generator=g)
    return embeddings + u * scale(embeddings.shape, alpha)


def neftune_without_d_model(embeddings, alpha, seed):
    return _noise(embeddings, alpha, seed, scale=lambda s, a: a / math.sqrt(s[1]))


def neftune_over_the_whole_batch(embeddings, alpha, seed):
    return _noise(embeddings, alpha, seed, scale=lambda s, a: a / math.sqrt(s[0] * s[1] * s[2]))


def neftune_divides_by_l_times_d(embeddings, alpha, seed):
    return _noise(embeddings, alpha, seed, scale=lambda s, a: a / (s[1] * s[2]))


def neftune_only_positive_noise(embeddings, alpha, seed):
    return _noise(embeddings, alpha, seed, scale=lambda s, a: a / math.sqrt(s[1] * s[2]), low=0.0)


def neftune_gaussian(embeddings, alpha, seed):
    g = torch.Generator(embeddings.device).manual_seed(seed)
    return embeddings + torch.randn(embeddings.shape, generator=g).to(embeddings) * alpha / math.sqrt(
        embeddings.shape[1] * embeddings.shape[2])


def neftune_from_the_global_generator(embeddings, alpha, seed):
    torch.manual_seed(seed)
    m = alpha / math.sqrt(embeddings.shape[1] * embeddings.shape[2])
    return embeddings + torch.zeros_like(embeddings).uniform_(-m, m)


def neftune_in_place(embeddings, alpha, seed):
    m = alpha / math.sqrt(embeddings.shape[1] * embeddings.shape[2])
    noise = torch.zeros_like(embeddings).uniform_(-m, m, generator=torch.Generator(embeddings.device).manual_seed(seed))
    return embeddings.add_(noise)


# -- 7.5 greedy_answers ---------------------------------------------------------------------------------------------
def _answers(model, prompts, pad_token_id, eos_token_id, max_new_tokens, *, left=True, keep_end=False, cut=True):
    device = next(model.parameters()).device
    ids, mask = pad_batch(prompts, pad_token_id, left=left)
    ends = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    if left:
        out = cached_greedy_search(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id)[:, ids.shape[1]:].tolist()
    else:  # right padding: generate() appends after the padding
        with torch.no_grad():
            out = model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=list(ends),
                                 pad_token_id=pad_token_id)[:, ids.shape[1]:].tolist()
    answers = []
    for row in out:
        stop = next((i for i, t in enumerate(row) if t in ends), len(row)) if cut else len(row)
        answers.append(row[:stop + 1] if keep_end and stop < len(row) else row[:stop])
    return answers


def greedy_answers_right_padded(model, prompts, *, pad_token_id, eos_token_id, max_new_tokens):
    return _answers(model, prompts, pad_token_id, eos_token_id, max_new_tokens, left=False)


def greedy_answers_keep_the_end_token(model, prompts, *, pad_token_id, eos_token_id, max_new_tokens):
    return _answers(model, prompts, pad_token_id, eos_token_id, max_new_tokens, keep_end=True)


def greedy_answers_not_cut_at_the_end(model, prompts, *, pad_token_id, eos_token_id, max_new_tokens):
    return _answers(model, prompts, pad_token_id, eos_token_id, max_new_tokens, cut=False)


def greedy_answers_with_the_prompt(model, prompts, *, pad_token_id, eos_token_id, max_new_tokens):
    new = _answers(model, prompts, pad_token_id, eos_token_id, max_new_tokens)
    return [list(p) + a for p, a in zip(prompts, new)]


MUTANTS = {
    "collate_chat": [collate_trains_the_prompt, collate_without_the_end_of_turn_token, collate_pads_on_the_left,
                     collate_trains_the_padding, collate_ignores_all_turns, collate_first_turn_only,
                     collate_pads_with_zero, collate_shifts_the_labels],
    "pack_examples": [pack_positions_not_restarting, pack_positions_from_one, pack_without_masking_first_tokens,
                      pack_trains_every_token],
    "sft_loss": [sft_loss_mean_of_example_means, sft_loss_mean_of_micro_batch_means, sft_loss_without_position_ids,
                 sft_loss_without_shift, sft_loss_one_example_per_packed_row, sft_loss_ignores_the_attention_mask,
                 sft_loss_in_the_models_dtype, sft_loss_without_the_graph],
    "neftune_noise": [neftune_without_d_model, neftune_over_the_whole_batch, neftune_divides_by_l_times_d,
                      neftune_only_positive_noise, neftune_gaussian, neftune_from_the_global_generator,
                      neftune_in_place],
    "greedy_answers": [greedy_answers_right_padded, greedy_answers_keep_the_end_token,
                       greedy_answers_not_cut_at_the_end, greedy_answers_with_the_prompt],
}
