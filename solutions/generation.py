"""Reference solutions for Chapter 4 (course_lib/generation.py)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Cache, DynamicCache

from course_lib.generation import as_cache, cache_to_tuples, eos_and_pad, model_step


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: 0 at each row's first token; padding gets 0."""
    positions = attention_mask.long().cumsum(-1) - 1                    # (batch, seq)
    return positions.masked_fill(attention_mask == 0, 0)


def _append(input_ids, attention_mask, next_tokens):
    """Both tensors one column longer: the new tokens, and 1s (every new token is attended to)."""
    return (torch.cat([input_ids, next_tokens[:, None]], dim=-1),
            torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1))


def _finish(next_tokens, finished, eos, pad):
    """Rows that are done get ``pad`` instead of a token; a row is done once it has produced an EOS."""
    if not eos:
        return next_tokens, finished
    next_tokens = torch.where(finished, torch.full_like(next_tokens, pad), next_tokens)
    return next_tokens, finished | torch.isin(next_tokens, torch.tensor(eos, device=next_tokens.device))


def _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, choose, use_cache):
    """The decoding loop that greedy search and sampling share; ``choose(logits, input_ids,
    attention_mask)`` picks each row's next token from the last position's logits."""
    eos, pad = eos_and_pad(eos_token_id, pad_token_id)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    cache, new_ids = DynamicCache(), input_ids
    for _ in range(max_new_tokens):
        if use_cache:  # the prompt once (prefill), then one token per step
            logits, cache = decode_step(model, new_ids, attention_mask, cache)
        else:          # the whole sequence again, every step: O(length^2) work
            logits, _ = model_step(model, input_ids, attention_mask, _position_ids(attention_mask))
        next_tokens, finished = _finish(choose(logits, input_ids, attention_mask), finished, eos, pad)   # (batch,)
        input_ids, attention_mask = _append(input_ids, attention_mask, next_tokens)
        new_ids = next_tokens[:, None]
        if finished.all():
            break
    return input_ids


def _argmax(logits, input_ids, attention_mask):
    return logits.argmax(dim=-1)                                         # per row, over the vocabulary


def greedy_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                  max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                  pad_token_id: int | None = None) -> torch.Tensor:
    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, _argmax,
                   use_cache=False)


def decode_step(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                past_key_values: Cache | list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, Cache | list[tuple[torch.Tensor, torch.Tensor]]]:
    cache = as_cache(past_key_values)
    past_len = cache.get_seq_length()
    # Only the new tokens run through the model; their positions continue each row's count of real
    # tokens, which the full attention mask (past and new) holds.
    position_ids = _position_ids(attention_mask)[:, past_len:]
    logits, cache = model_step(model, input_ids, attention_mask, position_ids, cache)
    return logits, (cache if isinstance(past_key_values, Cache) else cache_to_tuples(cache))


def cached_greedy_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                         pad_token_id: int | None = None) -> torch.Tensor:
    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, _argmax,
                   use_cache=True)


def top_k_filter(logits: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]         # (batch, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))       # ties with the k-th are kept


def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # least probable first
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # From the least probable up, a token goes while it and all less probable tokens together hold at
    # most 1 - top_p: the tokens above it still hold at least top_p. The token that crosses stays.
    remove_sorted = cumulative <= 1 - top_p
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    remove = remove.scatter(-1, keep, False)
    return logits.masked_fill(remove, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    batch, vocab = logits.shape
    if attention_mask is not None:  # padding is no occurrence: send it to an extra column, dropped below
        input_ids = input_ids.masked_fill(attention_mask == 0, vocab)
    seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device)
    seen = seen.scatter(-1, input_ids, True)[:, :vocab]                 # (batch, vocab): once per token
    # Positive logits shrink, negative ones grow more negative: either way the token gets less likely.
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def process_logits(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None,
                   repetition_penalty: float = 1.0) -> torch.Tensor:
    # Hugging Face's order: the penalty acts on the raw logits, temperature reshapes the distribution,
    # and only then do the filters cut it (top-p and min-p read probabilities after temperature).
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, input_ids, repetition_penalty, attention_mask)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    return logits


def sample(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
           max_new_tokens: int, seed: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float | None = None, repetition_penalty: float = 1.0, eos_token_id: int | list[int] | None = None,
           pad_token_id: int | None = None) -> torch.Tensor:
    generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    def draw(logits, sequence, mask):
        logits = process_logits(logits, sequence, mask, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty)
        probs = logits.softmax(dim=-1)                                   # filtered tokens get probability 0
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)   # one draw per row

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, draw,
                   use_cache=True)


def beam_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, num_beams: int,
                max_new_tokens: int, length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1, eos_token_id: int | list[int] | None = None,
                pad_token_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    eos, pad = eos_and_pad(eos_token_id, pad_token_id)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    # Keep enough candidates that num_beams of them go on even if the best ones all end with an EOS.
    n_candidates = max(2, 1 + len(eos)) * num_beams
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)

    # Running hypotheses, (batch * num_beams) rows. All beams start as the prompt; only beam 0 counts
    # at first (the others score -1e9), or the first step would pick the same token num_beams times.
    running = input_ids.repeat_interleave(num_beams, dim=0)             # (batch * num_beams, length)
    attention_mask = attention_mask.repeat_interleave(num_beams, dim=0)
    running_scores = torch.zeros(batch, num_beams, device=device)       # sum of log-probabilities
    running_scores[:, 1:] = -1e9
    # Finished hypotheses: the best num_beams per prompt, by length-penalised score; -inf = empty slot.
    fill = pad if pad is not None else 0    # without an EOS all hypotheses have the same length
    done = torch.full((batch, num_beams, prompt_len + max_new_tokens), fill, dtype=torch.long, device=device)
    done_scores = torch.full((batch, num_beams), float("-inf"), device=device)
    done_lengths = torch.zeros(batch, num_beams, dtype=torch.long, device=device)
    improvable = torch.ones(batch, dtype=torch.bool, device=device)     # can a running beam still enter the pool?

    cache, new_ids = DynamicCache(), running
    for step in range(max_new_tokens):
        logits, cache = decode_step(model, new_ids, attention_mask, cache)
        vocab = logits.shape[-1]
        log_probs = logits.log_softmax(dim=-1).view(batch, num_beams, vocab) + running_scores[..., None]
        scores, flat = torch.topk(log_probs.view(batch, -1), n_candidates, dim=-1)   # (batch, n_candidates), best first
        source_beam, token = flat // vocab, flat % vocab
        rows = source_beam + torch.arange(batch, device=device)[:, None] * num_beams    # rows of `running`
        candidates = torch.cat([running[rows], token[..., None]], dim=-1)             # (batch, n_candidates, length + 1)
        length = step + 1                                                            # generated tokens, EOS included
        ends = torch.isin(token, eos_ids) | (length == max_new_tokens)

        # Finished candidates among the best num_beams enter the pool with their length-normalised score
        # (score / length ** length_penalty, Wu et al. 2016 as Hugging Face defines it), unless the pool
        # can no longer change: early_stopping=True and the pool is full, or no running beam can improve it.
        full = torch.isfinite(done_scores).all(dim=-1)
        accepting = improvable & ~(full & (early_stopping is True))
        new_scores = (scores[:, :num_beams] / (length ** length_penalty)).masked_fill(
            ~(ends[:, :num_beams] & accepting[:, None]), float("-inf"))
        padded = torch.nn.functional.pad(candidates[:, :num_beams], (0, done.shape[-1] - candidates.shape[-1]),
                                         value=fill)
        pool_scores, best = torch.topk(torch.cat([done_scores, new_scores], dim=-1), num_beams, dim=-1)
        done = torch.cat([done, padded], dim=1).gather(1, best[..., None].expand(-1, -1, done.shape[-1]))
        done_lengths = torch.cat([done_lengths, torch.full_like(done_lengths, length)], dim=1).gather(1, best)
        done_scores = pool_scores

        # The best num_beams candidates that did not end go on.
        keep = torch.topk(scores.masked_fill(ends, float("-inf")), num_beams, dim=-1).indices
        running_scores = scores.gather(1, keep)
        running = candidates.gather(1, keep[..., None].expand(-1, -1, candidates.shape[-1])).flatten(0, 1)
        cache.reorder_cache(rows.gather(1, keep).flatten())                 # each beam's cache follows its source
        new_ids = running[:, -1:]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)

        # Can the best running beam still beat the worst finished one? It can grow longer (and, with a
        # positive length_penalty and early_stopping="never", be judged at max length); the default
        # (early_stopping=False) judges it at its current length, Hugging Face's heuristic.
        best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
        best_possible = running_scores[:, 0] / (best_length ** length_penalty)
        full = torch.isfinite(done_scores).all(dim=-1)
        improvable &= ~full | (best_possible > done_scores.min(dim=-1).values)
        if not improvable.any() or (early_stopping is True and full.all()):
            break

    sequences = done[:, :num_return_sequences].flatten(0, 1)
    longest = int(done_lengths[:, :num_return_sequences].max())
    return sequences[:, :prompt_len + longest], done_scores[:, :num_return_sequences].flatten()


def stop_sequence_hit(input_ids: torch.Tensor, stop_sequences: list[list[int]]) -> torch.Tensor:
    hit = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for stop in stop_sequences:
        if len(stop) <= input_ids.shape[1]:
            tail = torch.tensor(stop, dtype=input_ids.dtype, device=input_ids.device)
            hit |= (input_ids[:, -len(stop):] == tail).all(dim=-1)
    return hit


def stop_string_hit(token_texts: list[str], stop_strings: list[str]) -> bool:
    if not token_texts:
        return False
    text = "".join(token_texts)
    start_of_last = len(text) - len(token_texts[-1])
    # An occurrence completed by the last token ends after start_of_last, so it starts at or after
    # start_of_last - len(stop) + 1: any occurrence in that window counts, none before it does.
    return any(stop in text[max(0, start_of_last - len(stop) + 1):] for stop in stop_strings)
