"""Plausible wrong answers to Chapter 4's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout.

Most variants change one thing in an otherwise correct implementation (the helpers below are the
correct parts they share). The beam-search variants wrap the reference solution and change what it
is asked or what it returns, so they run in-process only (``--against mutants``), not as a submitted
file.
"""

import torch
from transformers import DynamicCache

from course_lib.generation import (as_cache, cache_to_tuples, eos_and_pad, min_p_filter, model_step, top_k_filter,
                                   top_p_filter)


# -- 4.1 greedy_search ---------------------------------------------------------------------------------
def greedy_as_in_the_seed(model, input_ids, attention_mask=None, *, max_new_tokens, eos_token_id=None,
                          pad_token_id=None):
    # The seed outline's loop: no mask, no positions, no EOS, and an argmax over the whole output
    # tensor (one flat index for every row and position), appended to every row.
    for _ in range(max_new_tokens):
        output = model(input_ids=input_ids).logits
        next_token = torch.argmax(output) % output.shape[-1]
        input_ids = torch.cat((input_ids, next_token.expand(input_ids.shape[0], 1)), dim=1)
    return input_ids


def _positions(attention_mask):
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def _full_forward(model, input_ids, new_ids, attention_mask, cache, step):
    logits, _ = model_step(model, input_ids, attention_mask, _positions(attention_mask))
    return logits, cache


def _cached_forward(model, input_ids, new_ids, attention_mask, cache, step):
    return model_step(model, new_ids, attention_mask, _positions(attention_mask)[:, -new_ids.shape[1]:], cache)


def _argmax(logits, input_ids, attention_mask):
    return logits.argmax(-1)


def _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, *, forward=_full_forward,
            choose=_argmax, pad_finished=True):
    """A correct decoding loop, but for what ``forward`` and ``choose`` do."""
    eos, pad = eos_and_pad(eos_token_id, pad_token_id)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    cache, new_ids = DynamicCache(), input_ids
    for step in range(max_new_tokens):
        logits, cache = forward(model, input_ids, new_ids, attention_mask, cache, step)
        next_tokens = choose(logits, input_ids, attention_mask)
        if eos:
            if pad_finished:
                next_tokens = torch.where(finished, torch.full_like(next_tokens, pad), next_tokens)
            finished |= torch.isin(next_tokens, torch.tensor(eos, device=next_tokens.device))
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        new_ids = next_tokens[:, None]
        if eos and finished.all():
            break
    return input_ids


def greedy_with_positions_that_count_padding(model, input_ids, attention_mask=None, *, max_new_tokens,
                                             eos_token_id=None, pad_token_id=None):
    def forward(model, input_ids, new_ids, attention_mask, cache, step):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return model_step(model, input_ids, attention_mask, positions)[0], cache

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, forward=forward)


def greedy_that_attends_to_padding(model, input_ids, attention_mask=None, *, max_new_tokens, eos_token_id=None,
                                   pad_token_id=None):
    def forward(model, input_ids, new_ids, attention_mask, cache, step):
        return _full_forward(model, input_ids, new_ids, torch.ones_like(attention_mask), cache, step)

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, forward=forward)


def greedy_that_keeps_decoding_finished_rows(model, input_ids, attention_mask=None, *, max_new_tokens,
                                             eos_token_id=None, pad_token_id=None):
    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, pad_finished=False)


# -- 4.2 decode_step -------------------------------------------------------------------------------------
def _step(model, input_ids, attention_mask, past_key_values, *, position_ids):
    cache = as_cache(past_key_values)
    past_len = cache.get_seq_length()
    logits, cache = model_step(model, input_ids, attention_mask, position_ids(attention_mask, past_len, input_ids),
                               cache)
    return logits, (cache if isinstance(past_key_values, DynamicCache) else cache_to_tuples(cache))


def decode_step_with_positions_off_by_one(model, input_ids, attention_mask, past_key_values=None):
    return _step(model, input_ids, attention_mask, past_key_values,
                 position_ids=lambda mask, past, ids: attention_mask.cumsum(-1)[:, past:])


def decode_step_with_positions_from_the_cache_length(model, input_ids, attention_mask, past_key_values=None):
    arange = lambda mask, past, ids: torch.arange(past, past + ids.shape[1], device=ids.device).expand_as(ids)
    return _step(model, input_ids, attention_mask, past_key_values, position_ids=arange)


# -- 4.3 cached_greedy_search ----------------------------------------------------------------------------
def cached_greedy_with_cache_positions_off_by_one(model, input_ids, attention_mask=None, *, max_new_tokens,
                                                  eos_token_id=None, pad_token_id=None):
    def forward(model, input_ids, new_ids, attention_mask, cache, step):
        positions = _positions(attention_mask)[:, -new_ids.shape[1]:] + (1 if step else 0)
        return model_step(model, new_ids, attention_mask, positions, cache)

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, forward=forward)


def cached_greedy_with_a_mask_one_column_short(model, input_ids, attention_mask=None, *, max_new_tokens,
                                               eos_token_id=None, pad_token_id=None):
    def forward(model, input_ids, new_ids, attention_mask, cache, step):
        positions = _positions(attention_mask)[:, -new_ids.shape[1]:]
        return model_step(model, new_ids, attention_mask[:, :-1] if step else attention_mask, positions, cache)

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, forward=forward)


# -- 4.4 top_k_filter --------------------------------------------------------------------------------------
def top_k_that_drops_the_kth(logits, top_k, min_tokens_to_keep=1):
    k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
    return logits.masked_fill(logits <= torch.topk(logits, k).values[..., -1:], float("-inf"))


def top_k_that_breaks_ties(logits, top_k, min_tokens_to_keep=1):
    k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_k_without_min_tokens(logits, top_k, min_tokens_to_keep=1):
    return logits.masked_fill(logits < torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:],
                              float("-inf"))


# -- 4.5 top_p_filter --------------------------------------------------------------------------------------
def _nucleus(logits, top_p, min_tokens_to_keep, *, drop_crossing=False, softmax_dim=-1):
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = sorted_logits.softmax(dim=softmax_dim)
    if drop_crossing:  # keep while the running sum stays within top_p: the crossing token goes
        remove = probs.cumsum(-1) > top_p
    else:
        remove = probs.cumsum(-1) - probs >= top_p
    remove[..., :min_tokens_to_keep] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def top_p_that_drops_the_crossing_token(logits, top_p, min_tokens_to_keep=1):
    return _nucleus(logits, top_p, min_tokens_to_keep, drop_crossing=True)


def top_p_with_softmax_over_the_batch(logits, top_p, min_tokens_to_keep=1):
    return _nucleus(logits, top_p, min_tokens_to_keep, softmax_dim=0)


def top_p_without_min_tokens(logits, top_p, min_tokens_to_keep=1):
    return _nucleus(logits, top_p, 1)


# -- 4.6 min_p_filter --------------------------------------------------------------------------------------
def _min_p(logits, min_p, min_tokens_to_keep, *, scaled=True, on_logits=False):
    values = logits if on_logits else logits.softmax(-1)
    threshold = min_p * values.amax(-1, keepdim=True) if scaled else torch.full_like(values[:, :1], min_p)
    remove = (values < threshold).scatter(-1, torch.topk(values, min_tokens_to_keep).indices, False)
    return logits.masked_fill(remove, float("-inf"))


def min_p_with_an_absolute_threshold(logits, min_p, min_tokens_to_keep=1):
    return _min_p(logits, min_p, min_tokens_to_keep, scaled=False)


def min_p_on_logits(logits, min_p, min_tokens_to_keep=1):
    return _min_p(logits, min_p, min_tokens_to_keep, on_logits=True)


def min_p_without_min_tokens(logits, min_p, min_tokens_to_keep=1):
    return _min_p(logits, min_p, 1)


# -- 4.7 apply_repetition_penalty ----------------------------------------------------------------------------
def _penalise(logits, input_ids, penalty, attention_mask, *, divide_negative=False, count_padding=False,
              per_occurrence=False):
    logits = logits.clone()
    for row in range(logits.shape[0]):
        ids = input_ids[row] if count_padding or attention_mask is None else input_ids[row][attention_mask[row] != 0]
        for token in (ids.tolist() if per_occurrence else sorted(set(ids.tolist()))):
            value = logits[row, token]
            logits[row, token] = value / penalty if value > 0 or divide_negative else value * penalty
    return logits


def repetition_penalty_that_divides_negative_logits(logits, input_ids, penalty, attention_mask=None):
    return _penalise(logits, input_ids, penalty, attention_mask, divide_negative=True)


def repetition_penalty_that_counts_padding(logits, input_ids, penalty, attention_mask=None):
    return _penalise(logits, input_ids, penalty, attention_mask, count_padding=True)


def repetition_penalty_per_occurrence(logits, input_ids, penalty, attention_mask=None):
    return _penalise(logits, input_ids, penalty, attention_mask, per_occurrence=True)


# -- 4.8 process_logits ----------------------------------------------------------------------------------------
def _process(logits, input_ids, attention_mask, temperature, top_k, top_p, min_p, repetition_penalty, *, order):
    from course_lib.generation import apply_repetition_penalty

    steps = {"penalty": lambda x: apply_repetition_penalty(x, input_ids, repetition_penalty, attention_mask)
             if repetition_penalty != 1.0 else x,
             "temperature": lambda x: x / temperature,
             "top_k": lambda x: top_k_filter(x, top_k) if top_k else x,
             "top_p": lambda x: top_p_filter(x, top_p) if top_p < 1.0 else x,
             "min_p": lambda x: min_p_filter(x, min_p) if min_p is not None else x}
    for name in order:
        logits = steps[name](logits)
    return logits


def process_logits_with_temperature_after_the_filters(logits, input_ids, attention_mask=None, *, temperature=1.0,
                                                      top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0):
    return _process(logits, input_ids, attention_mask, temperature, top_k, top_p, min_p, repetition_penalty,
                    order=["penalty", "top_k", "top_p", "min_p", "temperature"])


def process_logits_with_min_p_before_top_p(logits, input_ids, attention_mask=None, *, temperature=1.0, top_k=0,
                                           top_p=1.0, min_p=None, repetition_penalty=1.0):
    return _process(logits, input_ids, attention_mask, temperature, top_k, top_p, min_p, repetition_penalty,
                    order=["penalty", "temperature", "top_k", "min_p", "top_p"])


def process_logits_without_the_penalty(logits, input_ids, attention_mask=None, *, temperature=1.0, top_k=0,
                                       top_p=1.0, min_p=None, repetition_penalty=1.0):
    return _process(logits, input_ids, attention_mask, temperature, top_k, top_p, min_p, repetition_penalty,
                    order=["temperature", "top_k", "top_p", "min_p"])


# -- 4.9 sample ------------------------------------------------------------------------------------------------
def _sample(model, input_ids, attention_mask, max_new_tokens, seed, settings, eos_token_id, pad_token_id, *, draw):
    from course_lib.generation import process_logits

    generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    def choose(logits, sequence, mask):
        return draw(logits, lambda x: process_logits(x, sequence, mask, **settings), generator)

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                   forward=_cached_forward, choose=choose)


def sample_from_torchs_global_generator(model, input_ids, attention_mask=None, *, max_new_tokens, seed,
                                        eos_token_id=None, pad_token_id=None, **settings):
    draw = lambda logits, process, gen: torch.multinomial(process(logits).softmax(-1), 1).squeeze(1)
    return _sample(model, input_ids, attention_mask, max_new_tokens, seed, settings, eos_token_id, pad_token_id,
                   draw=draw)


def sample_from_the_raw_logits(model, input_ids, attention_mask=None, *, max_new_tokens, seed, eos_token_id=None,
                               pad_token_id=None, **settings):
    draw = lambda logits, process, gen: torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    return _sample(model, input_ids, attention_mask, max_new_tokens, seed, settings, eos_token_id, pad_token_id,
                   draw=draw)


def sample_that_takes_the_argmax(model, input_ids, attention_mask=None, *, max_new_tokens, seed, eos_token_id=None,
                                 pad_token_id=None, **settings):
    draw = lambda logits, process, gen: process(logits).argmax(-1)
    return _sample(model, input_ids, attention_mask, max_new_tokens, seed, settings, eos_token_id, pad_token_id,
                   draw=draw)


# -- 4.10 beam_search (wrappers of the reference: in-process only) ----------------------------------------------
def beam_search_ranked_by_raw_sums(model, input_ids, attention_mask=None, *, num_beams, max_new_tokens,
                                   length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                                   eos_token_id=None, pad_token_id=None):
    from solutions.generation import beam_search

    # Scores never divided by length ** length_penalty: what length_penalty = 0 computes.
    return beam_search(model, input_ids, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
                       length_penalty=0.0, early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def beam_search_returning_unnormalised_scores(model, input_ids, attention_mask=None, *, num_beams, max_new_tokens,
                                              length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                                              eos_token_id=None, pad_token_id=None):
    from solutions.generation import beam_search

    sequences, scores = beam_search(model, input_ids, attention_mask, num_beams=num_beams,
                                    max_new_tokens=max_new_tokens, length_penalty=length_penalty,
                                    early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                                    eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    eos = torch.tensor(eos_and_pad(eos_token_id, pad_token_id)[0], dtype=torch.long, device=sequences.device)
    generated = sequences[:, input_ids.shape[1]:]
    ended = torch.isin(generated, eos)
    lengths = torch.where(ended.any(-1), ended.int().argmax(-1) + 1, generated.shape[1])
    return sequences, scores * lengths.float() ** length_penalty


def beam_search_that_ignores_early_stopping(model, input_ids, attention_mask=None, *, num_beams, max_new_tokens,
                                            length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                                            eos_token_id=None, pad_token_id=None):
    from solutions.generation import beam_search

    return beam_search(model, input_ids, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
                       length_penalty=length_penalty, early_stopping=False, num_return_sequences=num_return_sequences,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id)


# -- 4.11 stop_sequence_hit ---------------------------------------------------------------------------------------
def stop_sequence_found_anywhere(input_ids, stop_sequences):
    rows = [any(any(row[i:i + len(stop)] == stop for i in range(len(row))) for stop in stop_sequences)
            for row in input_ids.tolist()]
    return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)


def stop_sequence_by_its_last_token(input_ids, stop_sequences):
    last = torch.tensor([stop[-1] for stop in stop_sequences], dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids[:, -1], last)


# -- 4.12 stop_string_hit -----------------------------------------------------------------------------------------
def stop_string_at_the_very_end(token_texts, stop_strings):
    return any("".join(token_texts).endswith(stop) for stop in stop_strings)


def stop_string_anywhere(token_texts, stop_strings):
    return any(stop in "".join(token_texts) for stop in stop_strings)


# -- wrong answers written from the contract alone (issue 16): arguments, types, state, inputs --------
def _eos_list_only(eos_token_id):
    """What a loop that assumes a list of EOS ids does with a single int: ``for e in eos_token_id``."""
    return [e for e in eos_token_id] if eos_token_id is not None else None


def greedy_assuming_a_list_of_eos_ids(model, input_ids, attention_mask=None, *, max_new_tokens, eos_token_id=None,
                                      pad_token_id=None):
    return _decode(model, input_ids, attention_mask, max_new_tokens, _eos_list_only(eos_token_id), pad_token_id)


def _decode_finishing_on_prompts(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                                 forward):
    """A row counts as finished once it *holds* an EOS anywhere, its prompt included."""
    eos, pad = eos_and_pad(eos_token_id, pad_token_id)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    cache, new_ids = DynamicCache(), input_ids
    for step in range(max_new_tokens):
        finished = (torch.isin(input_ids, torch.tensor(eos, device=input_ids.device)) & (attention_mask == 1)).any(-1) \
            if eos else torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if eos and finished.all():
            break
        logits, cache = forward(model, input_ids, new_ids, attention_mask, cache, step)
        next_tokens = torch.where(finished, torch.full_like(finished, pad, dtype=torch.long), logits.argmax(-1))
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        new_ids = next_tokens[:, None]
    return input_ids


def greedy_finishing_rows_whose_prompt_holds_an_eos(model, input_ids, attention_mask=None, *, max_new_tokens,
                                                    eos_token_id=None, pad_token_id=None):
    return _decode_finishing_on_prompts(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                                        _full_forward)


def decode_step_positioning_later_steps_by_the_last_column(model, input_ids, attention_mask, past_key_values=None):
    """Right for the prefill and for one token per step; every token of a longer step gets the last position."""
    last = lambda mask, past, ids: _positions(mask)[:, past:] if past == 0 else \
        _positions(mask)[:, -1:].expand_as(ids)
    return _step(model, input_ids, attention_mask, past_key_values, position_ids=last)


def decode_step_always_returning_tuples(model, input_ids, attention_mask, past_key_values=None):
    from course_lib.generation import decode_step

    logits, cache = decode_step(model, input_ids, attention_mask, past_key_values)
    return logits, cache_to_tuples(as_cache(cache))


def decode_step_returning_a_cache_when_given_none(model, input_ids, attention_mask, past_key_values=None):
    from course_lib.generation import decode_step

    if past_key_values is None:
        return decode_step(model, input_ids, attention_mask, DynamicCache())
    return decode_step(model, input_ids, attention_mask, past_key_values)


def decode_step_returning_lists_not_tuples(model, input_ids, attention_mask, past_key_values=None):
    from course_lib.generation import decode_step

    logits, cache = decode_step(model, input_ids, attention_mask, past_key_values)
    return logits, (cache if isinstance(cache, DynamicCache) else [list(layer) for layer in cache])


def cached_greedy_padding_with_zero_by_default(model, input_ids, attention_mask=None, *, max_new_tokens,
                                               eos_token_id=None, pad_token_id=None):
    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id,
                   0 if pad_token_id is None else pad_token_id, forward=_cached_forward)


def cached_greedy_finishing_rows_whose_prompt_holds_an_eos(model, input_ids, attention_mask=None, *, max_new_tokens,
                                                           eos_token_id=None, pad_token_id=None):
    return _decode_finishing_on_prompts(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                                        _full_forward)


def cached_greedy_assuming_a_list_of_eos_ids(model, input_ids, attention_mask=None, *, max_new_tokens,
                                             eos_token_id=None, pad_token_id=None):
    return _decode(model, input_ids, attention_mask, max_new_tokens, _eos_list_only(eos_token_id), pad_token_id,
                   forward=_cached_forward)


def top_k_in_float32(logits, top_k, min_tokens_to_keep=1):
    return top_k_filter(logits.float(), top_k, min_tokens_to_keep)


def top_k_clamping_to_the_vocabulary_before_min_tokens(logits, top_k, min_tokens_to_keep=1):
    k = max(min(top_k, logits.shape[-1]), min_tokens_to_keep)
    return logits.masked_fill(logits < torch.topk(logits, k, dim=-1).values[..., -1:], float("-inf"))


def top_p_in_float32(logits, top_p, min_tokens_to_keep=1):
    return top_p_filter(logits.float(), top_p, min_tokens_to_keep)


def top_p_treating_zero_as_off(logits, top_p, min_tokens_to_keep=1):
    return logits if top_p == 0.0 else top_p_filter(logits, top_p, min_tokens_to_keep)


def top_p_filling_the_callers_logits(logits, top_p, min_tokens_to_keep=1):
    logits.copy_(top_p_filter(logits, top_p, min_tokens_to_keep))
    return logits


def min_p_removing_ties_with_the_threshold(logits, min_p, min_tokens_to_keep=1):
    probs = logits.softmax(-1)
    remove = probs <= min_p * probs.amax(-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    return logits.masked_fill(remove.scatter(-1, keep, False), float("-inf"))


def min_p_filling_the_callers_logits(logits, min_p, min_tokens_to_keep=1):
    logits.copy_(min_p_filter(logits, min_p, min_tokens_to_keep))
    return logits


def min_p_in_float32(logits, min_p, min_tokens_to_keep=1):
    return min_p_filter(logits.float(), min_p, min_tokens_to_keep)


def repetition_penalty_marking_padding_in_the_callers_ids(logits, input_ids, penalty, attention_mask=None):
    from course_lib.generation import apply_repetition_penalty

    if attention_mask is not None:
        input_ids.masked_fill_(attention_mask == 0, logits.shape[-1] - 1)
    return apply_repetition_penalty(logits, input_ids, penalty)


def repetition_penalty_in_place(logits, input_ids, penalty, attention_mask=None):
    from course_lib.generation import apply_repetition_penalty

    logits.copy_(apply_repetition_penalty(logits, input_ids, penalty, attention_mask))
    return logits


def process_logits_dividing_the_callers_logits(logits, input_ids, attention_mask=None, *, temperature=1.0, top_k=0,
                                               top_p=1.0, min_p=None, repetition_penalty=1.0):
    from course_lib.generation import process_logits

    logits /= temperature
    return process_logits(logits, input_ids, attention_mask, top_k=top_k, top_p=top_p, min_p=min_p,
                          repetition_penalty=repetition_penalty)


def process_logits_with_temperature_only_before_a_filter(logits, input_ids, attention_mask=None, *, temperature=1.0,
                                                         top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0):
    from course_lib.generation import process_logits

    filtering = top_k or top_p < 1.0 or min_p is not None
    return process_logits(logits, input_ids, attention_mask, temperature=temperature if filtering else 1.0,
                          top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty)


def process_logits_penalising_without_the_mask(logits, input_ids, attention_mask=None, *, temperature=1.0, top_k=0,
                                               top_p=1.0, min_p=None, repetition_penalty=1.0):
    return _process(logits, input_ids, None, temperature, top_k, top_p, min_p, repetition_penalty,
                    order=["penalty", "temperature", "top_k", "top_p", "min_p"])


def _sample_with(settings_edit, model, input_ids, attention_mask, max_new_tokens, seed, eos_token_id, pad_token_id,
                 settings):
    draw = lambda logits, process, gen: torch.multinomial(process(logits).softmax(-1), 1, generator=gen).squeeze(1)
    return _sample(model, input_ids, attention_mask, max_new_tokens, seed, settings_edit(settings), eos_token_id,
                   pad_token_id, draw=draw)


def sample_without_the_repetition_penalty(model, input_ids, attention_mask=None, *, max_new_tokens, seed,
                                          eos_token_id=None, pad_token_id=None, **settings):
    return _sample_with(lambda s: {k: v for k, v in s.items() if k != "repetition_penalty"}, model, input_ids,
                        attention_mask, max_new_tokens, seed, eos_token_id, pad_token_id, settings)


def sample_without_min_p(model, input_ids, attention_mask=None, *, max_new_tokens, seed, eos_token_id=None,
                         pad_token_id=None, **settings):
    return _sample_with(lambda s: {k: v for k, v in s.items() if k != "min_p"}, model, input_ids, attention_mask,
                        max_new_tokens, seed, eos_token_id, pad_token_id, settings)


def sample_assuming_a_list_of_eos_ids(model, input_ids, attention_mask=None, *, max_new_tokens, seed,
                                      eos_token_id=None, pad_token_id=None, **settings):
    return _sample_with(lambda s: s, model, input_ids, attention_mask, max_new_tokens, seed,
                        _eos_list_only(eos_token_id), pad_token_id, settings)


def sample_counting_padding_in_the_penalty(model, input_ids, attention_mask=None, *, max_new_tokens, seed,
                                           eos_token_id=None, pad_token_id=None, **settings):
    from course_lib.generation import process_logits

    generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    def choose(logits, sequence, mask):   # the mask is not passed on: padding counts as an occurrence
        return torch.multinomial(process_logits(logits, sequence, None, **settings).softmax(-1), 1,
                                 generator=generator).squeeze(1)

    return _decode(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                   forward=_cached_forward, choose=choose)


def sample_reseeding_torchs_global_generator(model, input_ids, attention_mask=None, *, max_new_tokens, seed,
                                             eos_token_id=None, pad_token_id=None, **settings):
    torch.manual_seed(seed)   # the same draws as a generator of its own on a CPU, and everyone else's reset
    draw = lambda logits, process, gen: torch.multinomial(process(logits).softmax(-1), 1).squeeze(1)
    return _sample(model, input_ids, attention_mask, max_new_tokens, seed, settings, eos_token_id, pad_token_id,
                   draw=draw)


def top_p_keeping_a_tail_that_sums_exactly_to_one_minus_top_p(logits, top_p, min_tokens_to_keep=1):
    ascending, order = logits.sort(dim=-1)
    remove = ascending.softmax(-1).cumsum(-1) < 1 - top_p     # < where the contract says <=
    remove[..., -min_tokens_to_keep:] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def stop_sequence_matching_the_end_of_a_stop_longer_than_the_row(input_ids, stop_sequences):
    hit = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for stop in stop_sequences:
        stop = stop[-input_ids.shape[1]:]
        hit |= (input_ids[:, -len(stop):] == torch.tensor(stop, device=input_ids.device)).all(-1)
    return hit


def _reference_beam(model, input_ids, attention_mask, **options):
    from solutions.generation import beam_search

    return beam_search(model, input_ids, attention_mask, **options)


def beam_search_padding_with_zero_by_default(model, input_ids, attention_mask=None, *, num_beams, max_new_tokens,
                                             length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                                             eos_token_id=None, pad_token_id=None):
    return _reference_beam(model, input_ids, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           length_penalty=length_penalty, early_stopping=early_stopping,
                           num_return_sequences=num_return_sequences, eos_token_id=eos_token_id,
                           pad_token_id=0 if pad_token_id is None else pad_token_id)


def beam_search_assuming_a_list_of_eos_ids(model, input_ids, attention_mask=None, *, num_beams, max_new_tokens,
                                           length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                                           eos_token_id=None, pad_token_id=None):
    return _reference_beam(model, input_ids, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           length_penalty=length_penalty, early_stopping=early_stopping,
                           num_return_sequences=num_return_sequences, eos_token_id=_eos_list_only(eos_token_id),
                           pad_token_id=pad_token_id)


def stop_sequence_skipping_stops_as_long_as_the_row(input_ids, stop_sequences):
    hit = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for stop in stop_sequences:
        if len(stop) >= input_ids.shape[1]:
            continue
        hit |= (input_ids[:, -len(stop):] == torch.tensor(stop, device=input_ids.device)).all(-1)
    return hit


def stop_sequence_as_a_list_of_bools(input_ids, stop_sequences):
    from course_lib.generation import stop_sequence_hit

    return stop_sequence_hit(input_ids, stop_sequences).tolist()


def stop_string_at_its_first_occurrence(token_texts, stop_strings):
    text, last = "".join(token_texts), len(token_texts[-1]) if token_texts else 0
    for stop in stop_strings:
        at = text.find(stop)
        if at >= 0 and at + len(stop) > len(text) - last:
            return True
    return False


def stop_string_checking_the_first_stop_only(token_texts, stop_strings):
    from course_lib.generation import stop_string_hit

    return stop_string_hit(token_texts, stop_strings[:1])


MUTANTS = {
    "greedy_search": [greedy_as_in_the_seed, greedy_with_positions_that_count_padding, greedy_that_attends_to_padding,
                      greedy_that_keeps_decoding_finished_rows, greedy_assuming_a_list_of_eos_ids,
                      greedy_finishing_rows_whose_prompt_holds_an_eos],
    "decode_step": [decode_step_with_positions_off_by_one, decode_step_with_positions_from_the_cache_length,
                    decode_step_always_returning_tuples, decode_step_returning_a_cache_when_given_none,
                    decode_step_positioning_later_steps_by_the_last_column,
                    decode_step_returning_lists_not_tuples],
    "cached_greedy_search": [cached_greedy_with_cache_positions_off_by_one, cached_greedy_with_a_mask_one_column_short,
                             cached_greedy_padding_with_zero_by_default, cached_greedy_finishing_rows_whose_prompt_holds_an_eos,
                             cached_greedy_assuming_a_list_of_eos_ids],
    "top_k_filter": [top_k_that_drops_the_kth, top_k_that_breaks_ties, top_k_without_min_tokens, top_k_in_float32,
                     top_k_clamping_to_the_vocabulary_before_min_tokens],
    "top_p_filter": [top_p_that_drops_the_crossing_token, top_p_with_softmax_over_the_batch, top_p_without_min_tokens,
                     top_p_in_float32, top_p_treating_zero_as_off, top_p_filling_the_callers_logits,
                     top_p_keeping_a_tail_that_sums_exactly_to_one_minus_top_p],
    "min_p_filter": [min_p_with_an_absolute_threshold, min_p_on_logits, min_p_without_min_tokens,
                     min_p_removing_ties_with_the_threshold, min_p_filling_the_callers_logits, min_p_in_float32],
    "apply_repetition_penalty": [repetition_penalty_that_divides_negative_logits,
                                 repetition_penalty_that_counts_padding, repetition_penalty_per_occurrence,
                                 repetition_penalty_marking_padding_in_the_callers_ids, repetition_penalty_in_place],
    "process_logits": [process_logits_with_temperature_after_the_filters, process_logits_with_min_p_before_top_p,
                       process_logits_without_the_penalty, process_logits_dividing_the_callers_logits,
                       process_logits_with_temperature_only_before_a_filter, process_logits_penalising_without_the_mask],
    "sample": [sample_from_torchs_global_generator, sample_from_the_raw_logits, sample_that_takes_the_argmax,
               sample_without_the_repetition_penalty, sample_without_min_p, sample_assuming_a_list_of_eos_ids,
               sample_counting_padding_in_the_penalty, sample_reseeding_torchs_global_generator],
    "beam_search": [beam_search_ranked_by_raw_sums, beam_search_returning_unnormalised_scores,
                    beam_search_that_ignores_early_stopping, beam_search_padding_with_zero_by_default,
                    beam_search_assuming_a_list_of_eos_ids],
    "stop_sequence_hit": [stop_sequence_found_anywhere, stop_sequence_by_its_last_token,
                          stop_sequence_skipping_stops_as_long_as_the_row, stop_sequence_as_a_list_of_bools,
                          stop_sequence_matching_the_end_of_a_stop_longer_than_the_row],
    "stop_string_hit": [stop_string_at_the_very_end, stop_string_anywhere, stop_string_at_its_first_occurrence,
                        stop_string_checking_the_first_stop_only],
}
