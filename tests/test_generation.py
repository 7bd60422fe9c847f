"""Chapter 4 graded tests (public): greedy decoding, the KV cache, logits processors, seeded sampling,
beam search and stop sequences.

The references are outside the course: Hugging Face ``generate()`` on the same model (tiny random
``LlamaForCausalLM`` and ``GPT2LMHeadModel``, and the course's own LM from Chapter 3), its logits
processors (``TopKLogitsWarper``, ``TopPLogitsWarper``, ``MinPLogitsWarper``,
``RepetitionPenaltyLogitsProcessor``), the processed ``scores`` it reports, and its
``StopStringCriteria``. Token ids must match exactly; logits match to float32 rounding, since the
same model runs the same operations.

Each exercise's contract, clause by clause, with the public tests that check it (``test_`` dropped):

4.1 ``greedy_search``
  - ``generate()``'s tokens, left-padded prompts, three model families: greedy_search_matches_generate
  - ``attention_mask=None`` is no padding: greedy_search_without_attention_mask_means_no_padding
  - a list of EOS ids, finished rows get ``pad_token_id``: greedy_search_finishes_rows_at_eos_and_pads_them
  - early stop once every row finished, padding defaults to the first EOS:
    greedy_search_stops_when_every_row_has_finished
  - one EOS id as an int, padding defaults to it, an EOS inside a prompt finishes nothing:
    greedy_search_with_one_eos_id_pads_with_it_and_ignores_it_in_prompts

4.2 ``decode_step``
  - prefill: the model's logits, a list of per-layer ``(key, value)`` tuples:
    decode_step_prefill_gives_the_models_logits_and_cache
  - one token per step equals recomputing the prefix (positions under left padding):
    decode_step_with_a_cache_equals_recomputing_the_prefix
  - several new tokens in one step: decode_step_runs_several_new_tokens_at_once
  - a ``Cache`` given comes back a ``Cache`` (in-process only): decode_step_keeps_a_cache_a_cache

4.3 ``cached_greedy_search``
  - ``generate()``'s tokens, three families: cached_greedy_search_matches_generate
  - a list of EOS ids with ``pad_token_id``: cached_greedy_search_with_eos
  - one EOS id as an int, its default padding, an EOS in a prompt:
    cached_greedy_search_with_one_eos_id_pads_with_it_and_ignores_it_in_prompts

4.4 ``top_k_filter``
  - ``TopKLogitsWarper`` for top_k 1 to beyond the vocabulary, ``min_tokens_to_keep``, input unchanged:
    top_k_filter_matches_hugging_face
  - ties with the k-th kept: top_k_filter_keeps_ties_with_the_kth_logit
  - bf16 and fp16 stay in their dtype: top_k_filter_keeps_a_low_precision_dtype
  - ``min_tokens_to_keep`` beyond the vocabulary: top_k_filter_with_min_tokens_above_the_vocabulary_keeps_everything

4.5 ``top_p_filter``
  - ``TopPLogitsWarper`` for top_p up to 1.0 (off): top_p_filter_matches_hugging_face
  - the token that crosses the threshold kept: top_p_filter_keeps_the_token_that_crosses_the_threshold
  - ``min_tokens_to_keep``: top_p_filter_keeps_min_tokens
  - top_p 0.0 (the lower bound, not "off"): top_p_filter_at_zero_keeps_only_the_most_probable
  - bf16 and fp16 stay in their dtype, input unchanged: top_p_filter_keeps_a_low_precision_dtype_and_its_input

4.6 ``min_p_filter``
  - ``MinPLogitsWarper`` for min_p 0 to 0.5, ``min_tokens_to_keep``: min_p_filter_matches_hugging_face
  - bf16 and fp16 stay in their dtype, input unchanged: min_p_filter_keeps_a_low_precision_dtype_and_its_input
  - min_p 1.0, a strict ``<`` (ties with the threshold kept): min_p_filter_at_one_keeps_the_tokens_tied_for_the_top

4.7 ``apply_repetition_penalty``
  - ``RepetitionPenaltyLogitsProcessor``, penalties above and below 1, once per token:
    repetition_penalty_matches_hugging_face
  - padding is no occurrence; inputs unchanged: repetition_penalty_ignores_padding_and_leaves_its_inputs_alone

4.8 ``process_logits``
  - ``generate()``'s processed scores for combinations of every processor: process_logits_equals_generates_scores
  - temperature before top-p, top-p before min-p: process_logits_applies_temperature_before_top_p,
    process_logits_applies_top_p_before_min_p
  - temperature and penalty with no filter; input unchanged:
    process_logits_without_filters_and_leaves_its_input_alone

4.9 ``sample``
  - ``generate(do_sample=True)``'s tokens under the same seed, plain and processed, three families:
    sample_matches_generate_with_the_same_seed
  - reproducible, another seed other text: sample_is_reproducible_and_depends_on_the_seed
  - min_p and the repetition penalty, one EOS id as an int, its default padding:
    sample_with_min_p_the_penalty_and_one_eos_id

4.10 ``beam_search``
  - ``generate(num_beams=...)``'s sequences and scores for length penalties, every ``early_stopping``,
    ``num_return_sequences``, with and without EOS: beam_search_matches_generate
  - one beam is greedy: beam_search_with_one_beam_is_greedy
  - one EOS id as an int, padding defaults to it: beam_search_with_one_eos_id_pads_with_it

4.11 ``stop_sequence_hit``
  - the row's end only, longer stops never, no stops, a ``(batch,)`` bool tensor:
    stop_sequence_hit_checks_the_end_of_each_row
  - a stop as long as the row: stop_sequence_hit_matches_a_stop_as_long_as_the_row

4.12 ``stop_string_hit``
  - ``StopStringCriteria`` across token boundaries: stop_string_hit_matches_hugging_face
  - a stop that occurred earlier and again at the end, several stop strings:
    stop_string_hit_with_repeats_and_several_stop_strings
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from transformers import Cache, DynamicCache
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from course_lib import exercises
from course_lib.generation import random_causal_lm
from grading.expect import assert_close, assert_unchanged, in_process_only

VOCAB = 96
PAD = 0
ARCHITECTURES = ["llama", "gpt2", "course_lm"]


# -- models, prompts and references -----------------------------------------------------------------
@contextlib.contextmanager
def reference_mode():
    """Run the enclosed code (the references) with the course's reference solutions where they exist,
    so that the course LM's forward pass does not depend on the code under test."""
    try:
        import solutions  # noqa: F401  (absent from the student handout)
        have_solutions = True
    except ImportError:
        have_solutions = False
    if not have_solutions:  # yielded outside the handler, so an error of the body is not chained to it
        yield
        return
    saved = {k: os.environ.get(k) for k in (exercises.MODE_ENV, exercises.STUDENT_MODULES_ENV)}
    os.environ[exercises.MODE_ENV], os.environ[exercises.STUDENT_MODULES_ENV] = "solution", ""
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def course_lm(seed: int = 0):
    """The course's LM from Chapter 3, small and random, or a skip if it cannot run here."""
    try:
        from course_lib.language_model import CourseLMForCausalLM, course_lm_config
    except ImportError:
        pytest.skip("the course LM (Chapter 3, course_lib/language_model.py) is not available")
    torch.manual_seed(seed)
    config = course_lm_config("cpu", "llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=1024, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
                              pad_token_id=PAD)
    model = CourseLMForCausalLM(config).eval()
    try:
        with reference_mode(), torch.no_grad():
            model(input_ids=torch.ones(1, 2, dtype=torch.long))
    except NotImplementedError:
        pytest.skip("the course LM runs your Chapter 2-3 exercises, which are not done yet")
    return model


_MODELS: dict = {}


def make_model(architecture: str, device, seed: int = 0):
    """A small random causal LM with peaked next-token distributions, in eval mode on ``device``."""
    key = (architecture, str(device), seed)
    if key not in _MODELS:
        model = course_lm(seed) if architecture == "course_lm" else \
            random_causal_lm(architecture, vocab_size=VOCAB, pad_token_id=PAD, seed=seed)
        _MODELS[key] = model.to(device)
    return _MODELS[key]


def left_padded(lengths, device, seed=0, vocab=VOCAB):
    """``(input_ids, attention_mask)`` for prompts of the given lengths, left-padded with PAD."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    attention_mask = (torch.arange(width)[None] >= width - torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(attention_mask == 0, PAD).to(device), attention_mask.to(device)


def hf_generate(model, input_ids, attention_mask, **options):
    """``model.generate`` with the course's defaults spelled out (no EOS unless given, PAD padding)."""
    options = {"eos_token_id": None, "pad_token_id": PAD, "do_sample": False, **options}
    with reference_mode(), torch.no_grad():
        return model.generate(input_ids, attention_mask=attention_mask, **options)


def hf_logits(model, input_ids, attention_mask):
    """The float32 next-token logits of every row after the whole sequence, without a cache."""
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    with reference_mode(), torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).logits[:, -1].float()


def eos_from(sequences, picks):
    """EOS ids taken from a reference run (``picks``: (row, column) pairs), so that rows really end."""
    return [int(sequences[r, c]) for r, c in picks]


def assert_tokens(actual, expected, *, what, hint=""):
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor of token ids, got {type(actual).__name__}")
    if actual.dtype != torch.long:
        raise AssertionError(f"{what}: dtype {actual.dtype}, expected torch.int64 token ids")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)} "
                             f"(prompt length + generated tokens). {hint}".strip())
    actual = actual.to(expected.device)
    if not torch.equal(actual, expected):
        row, col = (actual != expected).nonzero()[0].tolist()
        raise AssertionError(f"{what}: first difference in row {row} at column {col}: got "
                             f"{actual[row].tolist()}, expected {expected[row].tolist()}. {hint}".strip())


GREEDY_HINT = ("Take the argmax per row (dim=-1) of the last position's logits, with position ids from the "
               "attention mask (cumsum - 1) and the mask grown by a column of 1s every step.")
EOS_HINT = "A row that produced an EOS is finished: every later token of that row is pad_token_id."


# -- 4.1 greedy_search --------------------------------------------------------------------------------
@pytest.mark.exercise("4.1")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("lengths", [(5,), (6, 3, 1)], ids=["one-prompt", "left-padded"])
def test_greedy_search_matches_generate(student, device, architecture, lengths):
    model = make_model(architecture, device)
    input_ids, attention_mask = left_padded(lengths, device, seed=1)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=12)
    assert_tokens(student.greedy_search(model, input_ids, attention_mask, max_new_tokens=12, pad_token_id=PAD),
                  expected, what=f"greedy_search on {architecture} with prompt lengths {lengths}",
                  hint=GREEDY_HINT + " Padding shifts positions only if they do not come from the mask.")


@pytest.mark.exercise("4.1")
def test_greedy_search_without_attention_mask_means_no_padding(student, device):
    model = make_model("llama", device)
    input_ids, attention_mask = left_padded((4, 4), device, seed=2)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=6)
    assert_tokens(student.greedy_search(model, input_ids, max_new_tokens=6), expected,
                  what="greedy_search(model, input_ids) without an attention mask",
                  hint="attention_mask=None means every token is real (a mask of 1s).")


@pytest.mark.exercise("4.1")
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_greedy_search_finishes_rows_at_eos_and_pads_them(student, device, architecture):
    model = make_model(architecture, device)
    input_ids, attention_mask = left_padded((6, 2, 4), device, seed=3)
    free = hf_generate(model, input_ids, attention_mask, max_new_tokens=10)
    eos = eos_from(free, [(0, 8), (2, 10)])   # rows end after 3 and 5 new tokens (or earlier)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=5)
    assert_tokens(student.greedy_search(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos,
                                        pad_token_id=5),
                  expected, what=f"greedy_search with eos_token_id={eos}, pad_token_id=5", hint=EOS_HINT)


@pytest.mark.exercise("4.1")
def test_greedy_search_stops_when_every_row_has_finished(student, device):
    model = make_model("gpt2", device)
    input_ids, attention_mask = left_padded((3, 5), device, seed=4)
    free = hf_generate(model, input_ids, attention_mask, max_new_tokens=8)
    eos = eos_from(free, [(0, 6), (1, 7)])    # both rows end within 3 new tokens
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=30, eos_token_id=eos)
    assert expected.shape[1] <= 5 + 3
    assert_tokens(student.greedy_search(model, input_ids, attention_mask, max_new_tokens=30, eos_token_id=eos),
                  expected, what=f"greedy_search with eos_token_id={eos} (pad defaults to the EOS)",
                  hint="Stop as soon as every row has finished (the output is then shorter than max_new_tokens), "
                       "and pad with the first EOS id when pad_token_id is None.")


def check_one_int_eos(decode, reference, device, what):
    """``decode(input_ids, attention_mask, max_new_tokens=, eos_token_id=)`` (the code under test) with
    one int EOS id and no ``pad_token_id`` against ``reference(...)`` (``generate()`` with the same
    arguments and ``pad_token_id`` that EOS, the documented default). The EOS is row 0's 3rd new token;
    row 1's prompt holds it as a real token and row 1 runs all 8 steps."""
    input_ids, attention_mask = left_padded((4, 6), device, seed=8)
    eos = int(reference(input_ids, attention_mask, max_new_tokens=3)[0, 8])
    input_ids[1, 3] = eos
    expected = reference(input_ids, attention_mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=eos)
    assert expected.shape[1] == 6 + 8 and (expected[0, 8:] == eos).all() and (expected[1, 6:] != eos).any(), \
        "the test's setup: row 0 ends after 3 new tokens while row 1 runs the whole 8"
    result = decode(input_ids, attention_mask, max_new_tokens=8, eos_token_id=eos)
    assert_tokens(result[0] if isinstance(result, tuple) else result, expected,
                  what=f"{what}(eos_token_id={eos}, an int; pad_token_id=None) with {eos} in row 1's prompt",
                  hint="eos_token_id may be one int (not only a list); pad_token_id=None pads with the first EOS id; "
                       "a row finishes when it *produces* an EOS, not because its prompt holds one.")


@pytest.mark.exercise("4.1")
def test_greedy_search_with_one_eos_id_pads_with_it_and_ignores_it_in_prompts(student, device):
    model = make_model("llama", device)
    check_one_int_eos(lambda *args, **options: student.greedy_search(model, *args, **options),
                      lambda *args, **options: hf_generate(model, *args, **options), device, "greedy_search")


# -- 4.2 decode_step ----------------------------------------------------------------------------------
def _step_inputs(device, seed=5):
    input_ids, attention_mask = left_padded((5, 2, 4), device, seed=seed)
    new = torch.randint(3, VOCAB, (3, 2), generator=torch.Generator().manual_seed(seed + 1)).to(device)
    return input_ids, attention_mask, new


@pytest.mark.exercise("4.2")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decode_step_prefill_gives_the_models_logits_and_cache(student, device, architecture):
    model = make_model(architecture, device)
    input_ids, attention_mask, _ = _step_inputs(device)
    logits, cache = student.decode_step(model, input_ids, attention_mask, None)
    assert_close(logits, hf_logits(model, input_ids, attention_mask), what="prefill logits (batch, vocab)",
                 rtol=1e-4, atol=1e-4, hint="Run the whole prompt with position ids from the attention mask.")
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    with reference_mode(), torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=DynamicCache(), use_cache=True).cache
    assert type(cache) is list and len(cache) == len(reference.layers), \
        f"the cache must come back as a list of {len(reference.layers)} (key, value) pairs, got {type(cache).__name__}"
    assert all(type(layer) is tuple and len(layer) == 2 for layer in cache), \
        (f"each layer's entry must be a (key, value) tuple, got {[type(layer).__name__ for layer in cache]} "
         "(cache_to_tuples gives them)")
    for i, ((key, value), layer) in enumerate(zip(cache, reference.layers)):
        assert_close(key, layer.keys, what=f"cached keys of layer {i}", rtol=1e-4, atol=1e-4)
        assert_close(value, layer.values, what=f"cached values of layer {i}", rtol=1e-4, atol=1e-4)


@pytest.mark.exercise("4.2")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decode_step_with_a_cache_equals_recomputing_the_prefix(student, device, architecture):
    model = make_model(architecture, device)
    input_ids, attention_mask, new = _step_inputs(device)
    _, cache = student.decode_step(model, input_ids, attention_mask, None)
    for step in range(new.shape[1]):
        input_ids = torch.cat([input_ids, new[:, step:step + 1]], dim=-1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        logits, cache = student.decode_step(model, new[:, step:step + 1], attention_mask, cache)
        assert_close(logits, hf_logits(model, input_ids, attention_mask), rtol=1e-4, atol=1e-4,
                     what=f"logits of decode step {step + 1} (one new token, cached prefix)",
                     hint="The new token's position is its row's count of real tokens minus 1: the last column "
                          "of cumsum(attention_mask) - 1. A position off by one, or past_len for every row "
                          "(wrong under left padding), gives other logits.")
        assert cache[0][0].shape[2] == input_ids.shape[1], \
            f"after step {step + 1} the cache must hold {input_ids.shape[1]} positions, got {cache[0][0].shape[2]}"


def check_prefill_then_one_step(student, model, input_ids, attention_mask, split):
    """decode_step on the first ``split`` columns (the prefill), then on all the rest in one step."""
    _, cache = student.decode_step(model, input_ids[:, :split], attention_mask[:, :split], None)
    logits, cache = student.decode_step(model, input_ids[:, split:], attention_mask, cache)
    new_len = input_ids.shape[1] - split
    assert_close(logits, hf_logits(model, input_ids, attention_mask), rtol=1e-4, atol=1e-4,
                 what=f"logits after a prefill of {split} columns and one step of {new_len} new tokens",
                 hint="Each new token has its own position: the last new_len columns of cumsum(attention_mask) - 1.")
    assert [key.shape[2] for key, _ in cache] == [input_ids.shape[1]] * len(cache), \
        f"the cache must then hold all {input_ids.shape[1]} positions"


@pytest.mark.exercise("4.2")
def test_decode_step_runs_several_new_tokens_at_once(student, device):
    input_ids, attention_mask = left_padded((7, 5, 4), device, seed=9)
    check_prefill_then_one_step(student, make_model("llama", device), input_ids, attention_mask, split=4)


@pytest.mark.exercise("4.2")
def test_decode_step_keeps_a_cache_a_cache(student, device):
    in_process_only(student, "a transformers.Cache")
    model = make_model("llama", device)
    input_ids, attention_mask, new = _step_inputs(device)
    _, cache = student.decode_step(model, input_ids, attention_mask, DynamicCache())
    assert isinstance(cache, Cache) and cache.get_seq_length() == input_ids.shape[1], \
        (f"decode_step given a DynamicCache returned {type(cache).__name__}: a Cache in, a Cache out (holding "
         f"{input_ids.shape[1]} positions); lists of tuples are only for a list given")
    attention_mask = torch.cat([attention_mask, torch.ones_like(new[:, :1])], -1)
    logits, cache = student.decode_step(model, new[:, :1], attention_mask, cache)
    assert isinstance(cache, Cache) and cache.get_seq_length() == input_ids.shape[1] + 1, \
        f"after a second step decode_step returned {type(cache).__name__} instead of a Cache holding one more position"
    assert_close(logits, hf_logits(model, torch.cat([input_ids, new[:, :1]], -1), attention_mask), rtol=1e-4,
                 atol=1e-4, what="logits of a decode step with a DynamicCache")


# -- 4.3 cached_greedy_search ---------------------------------------------------------------------------
@pytest.mark.exercise("4.3")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_cached_greedy_search_matches_generate(student, device, architecture):
    model = make_model(architecture, device)
    input_ids, attention_mask = left_padded((7, 4, 1), device, seed=6)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=16)
    assert_tokens(student.cached_greedy_search(model, input_ids, attention_mask, max_new_tokens=16, pad_token_id=PAD),
                  expected, what=f"cached_greedy_search on {architecture}",
                  hint="Prefill the whole prompt once, then feed only the new token with the cache; the mask keeps "
                       "every position (cached ones too) and grows by one column per step.")


@pytest.mark.exercise("4.3")
def test_cached_greedy_search_with_eos(student, device):
    model = make_model("llama", device)
    input_ids, attention_mask = left_padded((3, 6), device, seed=7)
    free = hf_generate(model, input_ids, attention_mask, max_new_tokens=10)
    eos = eos_from(free, [(0, 9), (1, 11)])
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=4)
    assert_tokens(student.cached_greedy_search(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos,
                                               pad_token_id=4),
                  expected, what=f"cached_greedy_search with eos_token_id={eos}", hint=EOS_HINT)


@pytest.mark.exercise("4.3")
def test_cached_greedy_search_with_one_eos_id_pads_with_it_and_ignores_it_in_prompts(student, device):
    model = make_model("llama", device)
    check_one_int_eos(lambda *args, **options: student.cached_greedy_search(model, *args, **options),
                      lambda *args, **options: hf_generate(model, *args, **options), device, "cached_greedy_search")


# -- 4.4 to 4.7 logits processors --------------------------------------------------------------------------
def random_logits(batch, vocab, device, seed=0, std=3.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, vocab, generator=gen, dtype=torch.float64) * std).to(device=device, dtype=dtype)


def assert_filtered(actual, expected, *, what, hint=""):
    """Same kept set (finite entries) and the same values there."""
    if isinstance(actual, torch.Tensor) and actual.shape == expected.shape:
        kept, want = torch.isfinite(actual), torch.isfinite(expected)
        if not torch.equal(kept.cpu(), want.cpu()):
            row = int((kept != want).any(-1).nonzero()[0])
            raise AssertionError(f"{what}: row {row} keeps {int(kept[row].sum())} tokens, expected "
                                 f"{int(want[row].sum())} (removed tokens must be -inf). {hint}")
    assert_close(actual, expected, what=what, hint=hint)


@pytest.mark.exercise("4.4")
@pytest.mark.parametrize("top_k, min_keep", [(1, 1), (5, 1), (2, 4), (200, 1)])
def test_top_k_filter_matches_hugging_face(student, device, top_k, min_keep):
    logits = random_logits(4, 50, device, seed=top_k)
    original = logits.clone()
    expected = TopKLogitsWarper(top_k, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert_filtered(student.top_k_filter(logits, top_k, min_keep), expected,
                    what=f"top_k_filter(top_k={top_k}, min_tokens_to_keep={min_keep})",
                    hint="Keep max(top_k, min_tokens_to_keep) tokens (at most the vocabulary), set the rest to -inf.")
    assert torch.equal(logits, original), "top_k_filter must not change its input in place"


@pytest.mark.exercise("4.4")
def test_top_k_filter_keeps_ties_with_the_kth_logit(student, device):
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0, 1.0, -1.0]], device=device)
    expected = TopKLogitsWarper(2)(None, logits.clone())
    assert_filtered(student.top_k_filter(logits, 2), expected, what="top_k_filter(top_k=2) with ties at the 2nd",
                    hint="Remove only logits strictly below the k-th highest: tokens tied with it stay.")


LOW_PRECISION = [torch.bfloat16, torch.float16]


def check_filter_in_low_precision(run, cut, dtype, device, what):
    """``run(logits)`` (the code under test) against ``cut(logits)`` (a Hugging Face warper) on ``(4, 40)``
    logits in ``dtype``, chosen so that ``cut`` keeps the same tokens whether it computes in ``dtype`` or
    in float64 (computing the probabilities in float32 and casting back is as right as staying in
    ``dtype``); the caller's logits must stay as they were."""
    for seed in range(100):
        logits = random_logits(4, 40, device, seed=seed, dtype=dtype)
        if torch.equal(cut(logits.clone()).isfinite(), cut(logits.double()).isfinite()):
            break
    else:
        raise AssertionError("no seed gave logits away from the cut's thresholds")
    before = logits.clone()
    assert_filtered(run(logits), cut(logits.clone()), what=f"{what} on {dtype} logits",
                    hint="Return the input's dtype: mask the logits you were given, do not cast them.")
    assert_unchanged(logits, before, what="the caller's logits")


@pytest.mark.exercise("4.4")
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_top_k_filter_keeps_a_low_precision_dtype(student, device, dtype):
    check_filter_in_low_precision(lambda x: student.top_k_filter(x, 6), lambda x: TopKLogitsWarper(6)(None, x),
                                  dtype, device, "top_k_filter(top_k=6)")


@pytest.mark.exercise("4.4")
def test_top_k_filter_with_min_tokens_above_the_vocabulary_keeps_everything(student, device):
    logits = random_logits(2, 5, device, seed=9)
    expected = TopKLogitsWarper(3, min_tokens_to_keep=8)(None, logits.clone())
    assert_filtered(student.top_k_filter(logits, 3, 8), expected,
                    what="top_k_filter(top_k=3, min_tokens_to_keep=8) on a vocabulary of 5",
                    hint="k = min(max(top_k, min_tokens_to_keep), vocab): never more than the vocabulary.")


@pytest.mark.exercise("4.5")
@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.9, 0.95, 1.0])
def test_top_p_filter_matches_hugging_face(student, device, top_p):
    logits = random_logits(5, 40, device, seed=int(top_p * 100))
    expected = TopPLogitsWarper(top_p)(None, logits.clone())
    assert_filtered(student.top_p_filter(logits, top_p), expected, what=f"top_p_filter(top_p={top_p})",
                    hint="Keep the smallest set of most probable tokens whose probability reaches top_p: the token "
                         "that crosses the threshold stays (ascending cumulative sum <= 1 - top_p is removed).")


@pytest.mark.exercise("4.5")
def test_top_p_filter_keeps_the_token_that_crosses_the_threshold(student, device):
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]], device=device).log()
    expected = logits.clone()
    expected[0, 2:] = float("-inf")
    assert_filtered(student.top_p_filter(logits, 0.6), expected,
                    what="top_p_filter(top_p=0.6) on probabilities [0.5, 0.3, 0.15, 0.05]",
                    hint="0.5 alone is short of 0.6, so 0.3 (the token that crosses) must stay: keep [0.5, 0.3].")


@pytest.mark.exercise("4.5")
def test_top_p_filter_removes_tokens_whose_ascending_sum_reaches_exactly_one_minus_top_p(student, device):
    logits = torch.tensor([[4.0, 2.0, 1.0, 1.0]], device=device).log()   # probabilities 1/2, 1/4, 1/8, 1/8: exact
    expected = TopPLogitsWarper(0.75)(None, logits.clone())               # 1/8 + 1/8 == 1 - 0.75: both go
    assert_filtered(student.top_p_filter(logits, 0.75), expected,
                    what="top_p_filter(top_p=0.75) on probabilities [1/2, 1/4, 1/8, 1/8]",
                    hint="The two smallest add up to exactly 1 - top_p = 0.25: a cumulative sum equal to 1 - top_p is "
                         "removed too (<=, not <), so [1/2, 1/4] stay, which reach exactly top_p.")


@pytest.mark.exercise("4.5")
@pytest.mark.parametrize("min_keep", [1, 3])
def test_top_p_filter_keeps_min_tokens(student, device, min_keep):
    logits = random_logits(3, 30, device, seed=11, std=6.0)
    expected = TopPLogitsWarper(0.05, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert_filtered(student.top_p_filter(logits, 0.05, min_keep), expected,
                    what=f"top_p_filter(top_p=0.05, min_tokens_to_keep={min_keep})",
                    hint="The min_tokens_to_keep most probable tokens always stay.")


@pytest.mark.exercise("4.5")
@pytest.mark.parametrize("min_keep", [1, 3])
def test_top_p_filter_at_zero_keeps_only_the_most_probable(student, device, min_keep):
    logits = random_logits(3, 20, device, seed=12)
    expected = TopPLogitsWarper(0.0, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert_filtered(student.top_p_filter(logits, 0.0, min_keep), expected,
                    what=f"top_p_filter(top_p=0.0, min_tokens_to_keep={min_keep})",
                    hint="top_p=0.0 is not 'off' (that is 1.0): it removes every token but the min_tokens_to_keep "
                         "most probable.")


@pytest.mark.exercise("4.5")
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_top_p_filter_keeps_a_low_precision_dtype_and_its_input(student, device, dtype):
    check_filter_in_low_precision(lambda x: student.top_p_filter(x, 0.8), lambda x: TopPLogitsWarper(0.8)(None, x),
                                  dtype, device, "top_p_filter(top_p=0.8)")


@pytest.mark.exercise("4.6")
@pytest.mark.parametrize("min_p, min_keep", [(0.05, 1), (0.2, 1), (0.5, 3), (0.0, 1)])
def test_min_p_filter_matches_hugging_face(student, device, min_p, min_keep):
    logits = random_logits(4, 40, device, seed=13)
    expected = MinPLogitsWarper(min_p, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert_filtered(student.min_p_filter(logits, min_p, min_keep), expected,
                    what=f"min_p_filter(min_p={min_p}, min_tokens_to_keep={min_keep})",
                    hint="Remove tokens whose probability is below min_p times the row's top probability "
                         "(probabilities, not logits), keeping the min_tokens_to_keep most probable.")


@pytest.mark.exercise("4.6")
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_min_p_filter_keeps_a_low_precision_dtype_and_its_input(student, device, dtype):
    check_filter_in_low_precision(lambda x: student.min_p_filter(x, 0.1), lambda x: MinPLogitsWarper(0.1)(None, x),
                                  dtype, device, "min_p_filter(min_p=0.1)")


@pytest.mark.exercise("4.6")
def test_min_p_filter_at_one_keeps_the_tokens_tied_for_the_top(student, device):
    logits = torch.tensor([[2.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, -1.0]], device=device)
    expected = MinPLogitsWarper(1.0)(None, logits.clone())
    assert_filtered(student.min_p_filter(logits, 1.0), expected,
                    what="min_p_filter(min_p=1.0) on [[2, 2, 1, 0], [0, 1, 3, -1]]",
                    hint="Remove only p < min_p * max(p), strictly: a token exactly at the threshold (here, tied "
                         "with the top) stays.")


def hf_repetition_penalty(logits, input_ids, penalty, attention_mask=None):
    ignore = None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)
    return RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=ignore)(input_ids, logits.clone())


@pytest.mark.exercise("4.7")
@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_hugging_face(student, device, penalty):
    logits = random_logits(3, 30, device, seed=17)
    input_ids = torch.tensor([[4, 7, 4, 4, 29], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9]], device=device)
    assert_close(student.apply_repetition_penalty(logits, input_ids, penalty),
                 hf_repetition_penalty(logits, input_ids, penalty), what=f"repetition penalty {penalty}",
                 hint="Divide the positive logits of seen tokens by the penalty and multiply the negative ones; a "
                      "token seen three times is penalised once.")


@pytest.mark.exercise("4.7")
def test_repetition_penalty_ignores_padding_and_leaves_its_inputs_alone(student, device):
    logits = random_logits(2, 20, device, seed=19)
    input_ids, attention_mask = left_padded((6, 3), device, seed=19, vocab=20)
    inputs = (logits, input_ids, attention_mask)
    before = tuple(x.clone() for x in inputs)
    expected = hf_repetition_penalty(logits, input_ids, 1.5, attention_mask)
    assert_close(student.apply_repetition_penalty(logits, input_ids, 1.5, attention_mask), expected,
                 what="repetition penalty with a left-padded row",
                 hint="Padding (attention_mask == 0) is not an occurrence: the pad id is not penalised for it.")
    assert_unchanged(inputs, before, what="the caller's logits, input_ids or attention_mask")


# -- 4.8 process_logits ---------------------------------------------------------------------------------------
SETTINGS = [dict(temperature=0.6, top_p=0.8), dict(temperature=1.5, top_k=12, top_p=0.85, min_p=0.1),
            dict(repetition_penalty=1.4, temperature=0.8, top_k=10, top_p=0.9)]


@pytest.mark.exercise("4.8")
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_process_logits_equals_generates_scores(student, device, settings):
    model = make_model("llama", device)
    input_ids, attention_mask = left_padded((5, 3), device, seed=23)
    torch.manual_seed(0)
    out = hf_generate(model, input_ids, attention_mask, max_new_tokens=4, do_sample=True,
                      top_k=settings.get("top_k", 0), output_scores=True, output_logits=True,
                      return_dict_in_generate=True, **{k: v for k, v in settings.items() if k != "top_k"})
    for step, (raw, scores) in enumerate(zip(out.logits, out.scores)):
        sequence = out.sequences[:, :input_ids.shape[1] + step]
        mask = torch.cat([attention_mask, torch.ones_like(sequence[:, input_ids.shape[1]:])], dim=-1)
        assert_filtered(student.process_logits(raw, sequence, mask, **settings), scores,
                        what=f"process_logits({settings}) at step {step}",
                        hint="Hugging Face's order: repetition penalty, temperature, top-k, top-p, min-p. Top-p and "
                             "min-p read the probabilities after the temperature.")


@pytest.mark.exercise("4.8")
def test_process_logits_applies_temperature_before_top_p(student, device):
    logits = random_logits(4, 30, device, seed=29)
    input_ids = torch.zeros(4, 1, dtype=torch.long, device=device)
    expected = TopPLogitsWarper(0.7)(None, TemperatureLogitsWarper(2.5)(None, logits.clone()))
    assert_filtered(student.process_logits(logits, input_ids, temperature=2.5, top_p=0.7), expected,
                    what="process_logits(temperature=2.5, top_p=0.7)",
                    hint="Divide by the temperature first: at T = 2.5 the distribution is flatter, so top-p keeps more "
                         "tokens than it would on the raw logits.")


@pytest.mark.exercise("4.8")
@pytest.mark.parametrize("settings", [dict(temperature=0.5), dict(temperature=2.0, repetition_penalty=1.3)],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_process_logits_without_filters_and_leaves_its_input_alone(student, device, settings):
    logits = random_logits(2, 20, device, seed=31)
    input_ids, attention_mask = left_padded((4, 2), device, seed=31, vocab=20)
    before = logits.clone()
    expected = logits.clone()
    if "repetition_penalty" in settings:
        expected = hf_repetition_penalty(expected, input_ids, settings["repetition_penalty"], attention_mask)
    expected = TemperatureLogitsWarper(settings["temperature"])(None, expected)
    assert_close(student.process_logits(logits, input_ids, attention_mask, **settings), expected,
                 what=f"process_logits({settings}) with no filter on",
                 hint="Each processor that is on applies, whether or not a filter follows it.")
    assert_unchanged(logits, before, what="the caller's logits (`logits / temperature`, not `logits /= temperature`)")


@pytest.mark.exercise("4.8")
def test_process_logits_applies_top_p_before_min_p(student, device):
    logits = torch.tensor([[0.45, 0.25, 0.15, 0.08, 0.04, 0.03]], device=device).log()
    input_ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    expected = MinPLogitsWarper(0.1)(None, TopPLogitsWarper(0.75)(None, logits.clone()))   # keeps 3 tokens
    assert_filtered(student.process_logits(logits, input_ids, top_p=0.75, min_p=0.1), expected,
                    what="process_logits(top_p=0.75, min_p=0.1) on probabilities [0.45, 0.25, 0.15, 0.08, 0.04, 0.03]",
                    hint="Top-p comes before min-p: min-p first renormalises what is left, and top-p then cuts deeper "
                         "(2 tokens instead of 3).")


# -- 4.9 sample -----------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.9")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=10, top_p=0.9)],
                         ids=["plain", "processed"])
def test_sample_matches_generate_with_the_same_seed(student, architecture, settings):
    device = torch.device("cpu")  # the CPU's generator: generate() draws from torch's global one
    model = make_model(architecture, device)
    input_ids, attention_mask = left_padded((4, 6, 2), device, seed=31)
    torch.manual_seed(1234)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=12, do_sample=True,
                           top_k=settings.get("top_k", 0), **{k: v for k, v in settings.items() if k != "top_k"})
    assert_tokens(student.sample(model, input_ids, attention_mask, max_new_tokens=12, seed=1234, pad_token_id=PAD,
                                 **settings),
                  expected, what=f"sample(seed=1234, {settings}) on {architecture}",
                  hint="Draw with torch.multinomial(softmax(processed logits), 1, generator=generator), one call for "
                       "the whole batch per step, from a torch.Generator seeded with `seed`.")


@pytest.mark.exercise("4.9")
def test_sample_is_reproducible_and_depends_on_the_seed(student, device):
    model = make_model("gpt2", device)
    input_ids, attention_mask = left_padded((3, 3), device, seed=37)
    first = student.sample(model, input_ids, attention_mask, max_new_tokens=20, seed=7, temperature=1.5)
    again = student.sample(model, input_ids, attention_mask, max_new_tokens=20, seed=7, temperature=1.5)
    other = student.sample(model, input_ids, attention_mask, max_new_tokens=20, seed=8, temperature=1.5)
    assert_tokens(again, first, what="sample with the same seed twice", hint="Use a torch.Generator seeded with seed.")
    assert not torch.equal(first, other), "sample with seeds 7 and 8 gave the same 40 tokens: is the seed used?"


@pytest.mark.exercise("4.9")
def test_sample_with_min_p_the_penalty_and_one_eos_id(student):
    device = torch.device("cpu")  # the CPU's generator: generate() draws from torch's global one
    model = make_model("llama", device)
    settings = dict(temperature=1.2, min_p=0.05, repetition_penalty=2.0)

    def reference(*args, **options):
        torch.manual_seed(77)
        return hf_generate(model, *args, do_sample=True, top_k=0, **settings, **options)

    check_one_int_eos(lambda *args, **options: student.sample(model, *args, seed=77, **settings, **options),
                      reference, device, f"sample(seed=77, {settings}, ...)")


@pytest.mark.exercise("4.9")
def test_sample_ignores_what_the_padding_holds_even_with_a_repetition_penalty(student):
    device = torch.device("cpu")
    model = make_model("llama", device)
    input_ids, attention_mask = left_padded((2, 7, 4), device, seed=47)
    width = input_ids.shape[1]
    prompt = set(input_ids[0, attention_mask[0] == 1].tolist())
    ranked = hf_logits(model, input_ids, attention_mask)[0].argsort(descending=True).tolist()
    favoured = next(t for t in ranked if t not in prompt and t != PAD)   # row 0's likeliest next token, not yet seen
    filled = input_ids.masked_fill(attention_mask == 0, favoured)
    settings = dict(max_new_tokens=12, repetition_penalty=5.0, top_k=3, pad_token_id=PAD)
    for seed in (3, 4, 5):
        padded = student.sample(model, input_ids, attention_mask, seed=seed, **settings)
        refilled = student.sample(model, filled, attention_mask, seed=seed, **settings)
        assert_tokens(refilled[:, width:], padded[:, width:],
                      what=f"sample(seed={seed}, {settings}) with the padding holding token {favoured} (the model's "
                           f"favourite for row 0) instead of {PAD}",
                      hint="Padding (attention_mask 0) is not an occurrence: pass the attention mask to the repetition "
                           "penalty, so what the padded positions hold changes nothing.")


@pytest.mark.exercise("4.9")
def test_sample_leaves_torchs_global_generator_alone(student):
    in_process_only(student, "torch's global random state")
    model = make_model("gpt2", torch.device("cpu"))
    input_ids, attention_mask = left_padded((3, 3), torch.device("cpu"), seed=53)
    torch.manual_seed(2024)
    state = torch.random.get_rng_state()
    student.sample(model, input_ids, attention_mask, max_new_tokens=6, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state), \
        ("sample changed torch's global random state: draw from a torch.Generator of its own seeded with `seed` "
         "(torch.manual_seed would reset every other user of the global generator)")


# -- 4.10 beam_search -----------------------------------------------------------------------------------------
BEAM_SETTINGS = [dict(num_beams=3, length_penalty=1.0, early_stopping=False, num_return_sequences=1),
                 dict(num_beams=4, length_penalty=0.5, early_stopping=True, num_return_sequences=2),
                 dict(num_beams=3, length_penalty=2.0, early_stopping="never", num_return_sequences=3)]
BEAM_HINT = ("Keep the best 2 * num_beams candidates over (num_beams * vocab) per prompt; finished ones among the best "
             "num_beams enter the pool scored sum_logprobs / generated_len ** length_penalty; the best unfinished "
             "num_beams go on, with their caches reordered.")


def hf_beam(model, input_ids, attention_mask, **options):
    out = hf_generate(model, input_ids, attention_mask, output_scores=True, return_dict_in_generate=True, **options)
    return out.sequences, out.sequences_scores


@pytest.mark.exercise("4.10")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("settings", BEAM_SETTINGS, ids=lambda s: f"beams{s['num_beams']}-lp{s['length_penalty']}-"
                                                                  f"es{s['early_stopping']}")
def test_beam_search_matches_generate(student, device, architecture, settings):
    model = make_model(architecture, device)
    input_ids, attention_mask = left_padded((6, 3), device, seed=41)
    free, _ = hf_beam(model, input_ids, attention_mask, max_new_tokens=10, **settings)
    eos = eos_from(free, [(0, 9), (free.shape[0] - 1, 11)])
    for eos_token_id in (None, eos):
        expected, scores = hf_beam(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos_token_id,
                                   pad_token_id=5, **settings)
        result = student.beam_search(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos_token_id,
                                     pad_token_id=5, **settings)
        assert isinstance(result, tuple) and len(result) == 2, "beam_search returns (sequences, scores)"
        what = f"beam_search({settings}, eos_token_id={eos_token_id}) on {architecture}"
        assert_tokens(result[0], expected, what=what + ": sequences", hint=BEAM_HINT)
        assert_close(result[1], scores, what=what + ": scores", rtol=1e-5, atol=1e-5,
                     hint="A hypothesis' score is its sum of log-probabilities divided by "
                          "(number of generated tokens) ** length_penalty.")


@pytest.mark.exercise("4.10")
def test_beam_search_with_one_beam_is_greedy(student, device):
    model = make_model("gpt2", device)
    input_ids, attention_mask = left_padded((2, 5), device, seed=43)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=8)
    sequences, _ = student.beam_search(model, input_ids, attention_mask, num_beams=1, max_new_tokens=8)
    assert_tokens(sequences, expected, what="beam_search(num_beams=1)", hint="One beam keeps the best token: greedy.")


@pytest.mark.exercise("4.10")
def test_beam_search_with_one_eos_id_pads_with_it(student, device):
    model = make_model("gpt2", device)
    input_ids, attention_mask = left_padded((5, 3), device, seed=40)
    settings = dict(num_beams=3, num_return_sequences=3, early_stopping=True, max_new_tokens=8)
    free, _ = hf_beam(model, input_ids, attention_mask, **settings)
    eos = int(free[0, 8])                        # the best hypothesis of prompt 0 ends after 4 new tokens
    expected, scores = hf_beam(model, input_ids, attention_mask, eos_token_id=eos, pad_token_id=eos, **settings)
    assert (expected[0, 8:] == eos).all() and expected.shape[1] == 5 + 8, \
        "the test's setup: a hypothesis that ends early is padded beside full-length ones"
    sequences, got_scores = student.beam_search(model, input_ids, attention_mask, eos_token_id=eos, **settings)
    what = f"beam_search({settings}, eos_token_id={eos}, an int; pad_token_id=None)"
    assert_tokens(sequences, expected, what=what,
                  hint="eos_token_id may be one int (not only a list); pad_token_id=None pads with the first EOS id.")
    assert_close(got_scores, scores, what=what + ": scores", rtol=1e-5, atol=1e-5)


# -- 4.11, 4.12 stop sequences ----------------------------------------------------------------------------------
@pytest.mark.exercise("4.11")
def test_stop_sequence_hit_checks_the_end_of_each_row(student, device):
    input_ids = torch.tensor([[5, 6, 7, 8], [7, 8, 5, 6], [1, 2, 3, 9], [9, 9, 9, 8]], device=device)
    stops = [[7, 8], [9], [1, 2, 3, 9, 4]]
    hit = student.stop_sequence_hit(input_ids, stops)
    expected = torch.tensor([True, False, True, False])
    assert isinstance(hit, torch.Tensor) and hit.dtype == torch.bool and hit.shape == (4,), \
        f"stop_sequence_hit must return a (batch,) bool tensor, got {hit!r}"
    assert torch.equal(hit.cpu(), expected), \
        (f"stop_sequence_hit({input_ids.tolist()}, {stops}) = {hit.tolist()}, expected {expected.tolist()}: only the "
         "end of a row counts (an earlier occurrence was caught when it was made), and a stop longer than the row "
         "never matches.")
    assert not student.stop_sequence_hit(input_ids, []).any(), "no stop sequences: no row stops"


@pytest.mark.exercise("4.11")
def test_stop_sequence_hit_matches_a_stop_as_long_as_the_row(student, device):
    input_ids = torch.tensor([[4, 5, 6], [4, 5, 7]], device=device)
    stops = [[9, 9, 9, 9], [4, 5, 6], [3, 4, 5, 7]]
    hit = student.stop_sequence_hit(input_ids, stops)
    assert isinstance(hit, torch.Tensor) and hit.cpu().tolist() == [True, False], \
        (f"stop_sequence_hit([[4, 5, 6], [4, 5, 7]], {stops}) = {hit!r}, expected [True, False]: a stop exactly as "
         "long as the row matches the whole row; a longer one never matches, even when its end is the whole row "
         "([3, 4, 5, 7] ends with [4, 5, 7])")


def word_tokenizer(words):
    """A tokenizer whose tokens are exactly ``words`` (ids 2, 3, ...; text splits on spaces; decoding
    joins tokens without spaces). Id 0 is padding and id 1 is ``"abcdef"``, which
    ``StopStringCriteria`` needs in the vocabulary to read the tokens' text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "abcdef", *words])}, unk_token="<pad>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.WhitespaceSplit(), decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")


STOP_WORDS = ["st", "op", "stop", "opera", "sto", "pper", "las", "topper", "s", "to", "pped", "at", "tion", "a", "p"]


def hf_stop_string_hit(tokenizer, token_texts, stop_strings):
    from transformers.generation.stopping_criteria import StopStringCriteria

    ids = torch.tensor([tokenizer.convert_tokens_to_ids(token_texts)])
    return bool(StopStringCriteria(tokenizer, stop_strings)(ids, None)[0])


@pytest.mark.exercise("4.12")
@pytest.mark.parametrize("tokens", [["st", "op"], ["stop"], ["st", "opera"], ["sto", "pper"], ["las", "topper"],
                                    ["s", "to", "pped"], ["stop", "at"], ["st", "op", "at"], ["st", "opera", "tion"],
                                    ["a", "st", "o"], ["p"]], ids="".join)
def test_stop_string_hit_matches_hugging_face(student, tokens):
    tokenizer = word_tokenizer(STOP_WORDS + ["o"])
    expected = hf_stop_string_hit(tokenizer, tokens, ["stop"])
    assert student.stop_string_hit(tokens, ["stop"]) is expected, \
        (f"stop_string_hit({tokens}, ['stop']) should be {expected}: a stop string counts when the last token "
         "completes it (it may start in earlier tokens and the last token may run past it), not when it was "
         "complete before the last token.")


@pytest.mark.exercise("4.12")
@pytest.mark.parametrize("tokens, stops", [(["stop", "st", "op"], ["stop"]), (["a", "st", "op"], ["pper", "stop"]),
                                           (["stop", "p"], ["pper", "p"]), (["to", "pper"], ["opera", "stop"])],
                         ids=lambda v: "+".join(v))
def test_stop_string_hit_with_repeats_and_several_stop_strings(student, tokens, stops):
    tokenizer = word_tokenizer(STOP_WORDS + ["o"])
    expected = hf_stop_string_hit(tokenizer, tokens, stops)
    assert student.stop_string_hit(tokens, stops) is expected, \
        (f"stop_string_hit({tokens}, {stops}) should be {expected}: any of the stop strings counts, and an "
         "occurrence the last token completes counts even when the same stop occurred earlier.")


# -- not graded: the helpers built on the exercises (need the reference solutions) ----------------------
@pytest.fixture
def solution_mode(monkeypatch):
    pytest.importorskip("solutions.generation", reason="needs the reference solutions")
    monkeypatch.setenv(exercises.MODE_ENV, "solution")
    monkeypatch.setenv(exercises.STUDENT_MODULES_ENV, "")


LETTERS = "abcdefghij"
WORDS = [a + b for a in LETTERS for b in LETTERS][:VOCAB - 3]   # 93 two-letter tokens after <pad>, abcdef, <eos>


def text_tokenizer():
    tokenizer = word_tokenizer(["<eos>", *WORDS])
    tokenizer.eos_token = "<eos>"
    return tokenizer


def test_cut_at_stop_strings_equals_generate_with_stop_strings(solution_mode):
    from course_lib.generation import cached_greedy_search, cut_at_stops, generate_text

    model, tokenizer = make_model("llama", torch.device("cpu")), text_tokenizer()
    prompts = ["aa bb cc", "dd"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    prompt_len = input_ids.shape[1]
    free = cached_greedy_search(model, input_ids, attention_mask, max_new_tokens=12, eos_token_id=2, pad_token_id=0)
    pieces = tokenizer.convert_ids_to_tokens(free[0, prompt_len + 3:prompt_len + 5].tolist())
    stop = pieces[0][-1] + pieces[1]          # spans a token boundary, ends inside the 5th new token
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=12, eos_token_id=2,
                           stop_strings=[stop], tokenizer=tokenizer)
    cut = cut_at_stops(free, prompt_len, stop_strings=[stop], tokenizer=tokenizer, pad_token_id=0)
    assert torch.equal(cut, expected), f"stop {stop!r}: {cut.tolist()} != {expected.tolist()}"
    texts = generate_text(model, tokenizer, prompts, max_new_tokens=12, stop_strings=[stop])
    assert texts == tokenizer.batch_decode(expected[:, prompt_len:], skip_special_tokens=True)
    assert stop in texts[0]


def test_cut_at_stop_sequences_keeps_the_stop_and_pads_the_rest(solution_mode):
    from course_lib.generation import cut_at_stops

    sequences = torch.tensor([[9, 1, 2, 3, 4, 5], [9, 4, 5, 1, 2, 3], [9, 7, 7, 7, 7, 7]])
    cut = cut_at_stops(sequences, 1, stop_sequences=[[2, 3], [5]], pad_token_id=0)
    assert cut.tolist() == [[9, 1, 2, 3, 0, 0], [9, 4, 5, 0, 0, 0], [9, 7, 7, 7, 7, 7]]
    assert cut_at_stops(sequences[:2], 1, stop_sequences=[[2, 3], [5]]).shape == (2, 4)


def test_generate_text_runs_every_strategy(solution_mode):
    from course_lib.generation import generate_text

    model, tokenizer = make_model("gpt2", torch.device("cpu")), text_tokenizer()
    for strategy, options in (("greedy", {}), ("sample", dict(seed=0, top_p=0.9)), ("beam", dict(num_beams=3))):
        texts = generate_text(model, tokenizer, ["aa bb", "cc"], max_new_tokens=5, strategy=strategy, **options)
        assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    with pytest.raises(ValueError, match="strategy"):
        generate_text(model, tokenizer, "aa", strategy="nucleus")


def test_random_causal_lm_builds_both_families():
    for architecture in ("llama", "gpt2"):
        model = random_causal_lm(architecture, vocab_size=50, seed=3)
        assert model.config.vocab_size == 50 and not model.training
    with pytest.raises(ValueError, match="architecture"):
        random_causal_lm("t5")


def test_plots_draw_the_cuts_and_the_temperatures(solution_mode):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib.generation import plot_filtered_distribution, plot_temperatures

    logits = random_logits(1, 40, "cpu", seed=3)[0]
    ax = plot_filtered_distribution(logits, temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, n=20, title="cuts")
    assert len(ax.patches) == 20 and ax.get_title() == "cuts"
    assert {t.get_text().split(":")[0] for t in ax.get_legend().get_texts()} == {"top-k = 10", "top-p = 0.9",
                                                                                    "min-p = 0.05"}
    plt.close(ax.figure)
    ax = plot_temperatures(logits, (0.5, 1.0, 2.0), n=10)
    assert len(ax.lines) == 3
    plt.close(ax.figure)


# -- not graded: bad input gets an error naming the argument (checked before your code runs) --------
def _bad_calls():
    from course_lib import generation as G

    model = make_model("llama", torch.device("cpu"))
    ids = torch.ones(2, 3, dtype=torch.long)
    logits = torch.zeros(2, 10)
    return [
        (lambda: G.greedy_search(model.config, ids, max_new_tokens=2), TypeError, "model"),
        (lambda: G.greedy_search(model, ids.float(), max_new_tokens=2), TypeError, "input_ids"),
        (lambda: G.greedy_search(model, ids[0], max_new_tokens=2), ValueError, "input_ids"),
        (lambda: G.greedy_search(model, ids + VOCAB, max_new_tokens=2), ValueError, "input_ids"),
        (lambda: G.greedy_search(model, ids, torch.tensor([[1, 1, 0], [1, 1, 1]]), max_new_tokens=2), ValueError,
         "attention_mask"),
        (lambda: G.greedy_search(model, ids, torch.ones(2, 4, dtype=torch.long), max_new_tokens=2), ValueError,
         "attention_mask"),
        (lambda: G.greedy_search(model, ids, max_new_tokens=0), ValueError, "max_new_tokens"),
        (lambda: G.greedy_search(model, ids, max_new_tokens=2, eos_token_id=[]), ValueError, "eos_token_id"),
        (lambda: G.cached_greedy_search(model, ids, max_new_tokens=2, pad_token_id=VOCAB), ValueError,
         "pad_token_id"),
        (lambda: G.decode_step(model, ids, torch.ones(2, 4, dtype=torch.long)), ValueError, "attention_mask"),
        (lambda: G.decode_step(model, ids, torch.ones(2, 3, dtype=torch.long), "cache"), TypeError,
         "past_key_values"),
        (lambda: G.top_k_filter(logits, 0), ValueError, "top_k"),
        (lambda: G.top_k_filter(logits.long(), 2), TypeError, "logits"),
        (lambda: G.top_p_filter(logits, 1.5), ValueError, "top_p"),
        (lambda: G.top_p_filter(logits[0], 0.5), ValueError, "logits"),
        (lambda: G.min_p_filter(logits, 0.1, min_tokens_to_keep=0), ValueError, "min_tokens_to_keep"),
        (lambda: G.apply_repetition_penalty(logits, ids, 0.0), ValueError, "penalty"),
        (lambda: G.apply_repetition_penalty(logits, ids[:1], 1.2), ValueError, "input_ids"),
        (lambda: G.process_logits(logits, ids, temperature=0), ValueError, "temperature"),
        (lambda: G.sample(model, ids, max_new_tokens=2, seed=-1), ValueError, "seed"),
        (lambda: G.beam_search(model, ids, num_beams=2, num_return_sequences=3, max_new_tokens=2), ValueError,
         "num_return_sequences"),
        (lambda: G.beam_search(model, ids, num_beams=2, max_new_tokens=2, early_stopping="always"), ValueError,
         "early_stopping"),
        (lambda: G.stop_sequence_hit(ids, [[]]), TypeError, "stop_sequences"),
        (lambda: G.stop_string_hit("abc", ["b"]), TypeError, "token_texts"),
        (lambda: G.stop_string_hit(["a"], [""]), TypeError, "stop_strings"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_gets_an_error_naming_the_argument(index):
    call, error, names = _bad_calls()[index]
    with pytest.raises(error, match=names):
        call()
