"""Reference solutions for Chapter 7 (course_lib/sft.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.generation import cached_greedy_search
from course_lib.pretraining import causal_lm_loss
from course_lib.sft import IGNORE_INDEX
from course_lib.tasks import pad_batch


def _last_turn(mask: list[int]) -> list[int]:
    """``mask`` with only its last run of 1s kept."""
    end = max((i for i, m in enumerate(mask) if m), default=-1) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [1 if start <= i < end else 0 for i in range(len(mask))]


def collate_chat(examples: list[dict], pad_token_id: int, all_turns: bool = True) -> dict[str, torch.Tensor]:
    seq = max(len(e["input_ids"]) for e in examples)
    input_ids, attention_mask, labels = [], [], []
    for example in examples:
        ids, mask = list(example["input_ids"]), list(example["assistant_masks"])
        trained = mask if all_turns else _last_turn(mask)
        padding = seq - len(ids)
        input_ids.append(ids + [pad_token_id] * padding)
        attention_mask.append([1] * len(ids) + [0] * padding)
        labels.append([t if m else IGNORE_INDEX for t, m in zip(ids, trained)] + [IGNORE_INDEX] * padding)
    return {name: torch.tensor(rows, dtype=torch.long)
            for name, rows in (("input_ids", input_ids), ("attention_mask", attention_mask), ("labels", labels))}


def pack_examples(examples: list[dict]) -> dict[str, torch.Tensor]:
    input_ids = torch.cat([torch.tensor(e["input_ids"], dtype=torch.long) for e in examples])
    position_ids = torch.cat([torch.arange(len(e["input_ids"])) for e in examples])
    labels = torch.cat([torch.tensor(e["labels"], dtype=torch.long) for e in examples])
    labels[position_ids == 0] = IGNORE_INDEX          # no example predicts the next one's first token
    return {"input_ids": input_ids[None], "position_ids": position_ids[None], "labels": labels[None]}


def _example_index(mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(batch, seq)``: the example each position belongs to, counted from 0 within the micro-batch."""
    if "position_ids" in mb:
        return (mb["position_ids"] == 0).long().cumsum(-1) - 1
    batch, seq = mb["input_ids"].shape
    return torch.arange(batch, device=mb["input_ids"].device)[:, None].expand(batch, seq)


def sft_loss(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], reduction: str = "mean") -> torch.Tensor:
    sums, counts = [], []
    for mb in micro_batches:
        inputs = {k: mb[k] for k in ("input_ids", "attention_mask", "position_ids") if k in mb}
        logits = model(**inputs, use_cache=False).logits                   # (batch, seq, vocab)
        if reduction != "none":
            sums.append(causal_lm_loss(logits, mb["labels"], mb.get("attention_mask"), reduction="sum"))
            targets = mb["labels"][:, 1:] != IGNORE_INDEX
            if "attention_mask" in mb:
                targets &= mb["attention_mask"][:, 1:].bool()
            counts.append(targets.sum())
            continue
        targets = mb["labels"][:, 1:].masked_fill(mb["attention_mask"][:, 1:] == 0, IGNORE_INDEX) \
            if "attention_mask" in mb else mb["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")                          # (batch, seq - 1), 0 where ignored
        example = _example_index(mb)[:, 1:]                                 # the example of each target
        n_examples = int(_example_index(mb).max()) + 1
        counted = (targets != IGNORE_INDEX).float()
        sums.append(torch.zeros(n_examples, device=losses.device).index_add(0, example.flatten(), losses.flatten()))
        counts.append(torch.zeros(n_examples, device=losses.device).index_add(0, example.flatten(), counted.flatten()))
    if reduction == "none":
        return torch.cat(sums) / torch.cat(counts)
    total = torch.stack(sums).sum()
    return total if reduction == "sum" else total / torch.stack(counts).sum()


def neftune_noise(embeddings: torch.Tensor, alpha: float, seed: int) -> torch.Tensor:
    magnitude = alpha / torch.sqrt(torch.tensor(embeddings.shape[1] * embeddings.shape[2]))
    generator = torch.Generator(embeddings.device).manual_seed(seed)
    noise = torch.zeros_like(embeddings).uniform_(-magnitude, magnitude, generator=generator)
    return embeddings + noise


def greedy_answers(model: nn.Module, prompts: list[list[int]], *, pad_token_id: int, eos_token_id: int | list[int],
                   max_new_tokens: int) -> list[list[int]]:
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_batch(prompts, pad_token_id, left=True)      # (batch, width) each
    out = cached_greedy_search(model, input_ids.to(device), attention_mask.to(device), max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    ends = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    answers = []
    for row in out[:, input_ids.shape[1]:].tolist():
        stop = next((i for i, t in enumerate(row) if t in ends), len(row))
        answers.append(row[:stop])
    return answers
