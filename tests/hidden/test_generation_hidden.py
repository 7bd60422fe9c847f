"""Chapter 4 graded tests (hidden: grading only, not in the student handout)."""

import random

import pytest
import torch
from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from grading.expect import assert_close
from tests.test_generation import (ARCHITECTURES, PAD, STOP_WORDS, VOCAB, assert_filtered, assert_tokens,
                                   check_prefill_then_one_step, eos_from, hf_beam, hf_generate, hf_logits,
                                   hf_repetition_penalty, hf_stop_string_hit, left_padded, make_model, random_logits,
                                   word_tokenizer)


# -- 4.1 greedy_search --------------------------------------------------------------------------------------
@pytest.mark.exercise("4.1")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hidden_greedy_search_other_shapes(student, device, architecture):
    model = make_model(architecture, device, seed=1)
    for lengths, new, seed in (((1,), 1, 50), ((2, 9, 1, 5), 7, 51)):
        input_ids, attention_mask = left_padded(lengths, device, seed=seed)
        assert_tokens(student.greedy_search(model, input_ids, attention_mask, max_new_tokens=new, pad_token_id=PAD),
                      hf_generate(model, input_ids, attention_mask, max_new_tokens=new),
                      what=f"greedy_search with prompt lengths {lengths}, max_new_tokens={new} on {architecture}")


@pytest.mark.exercise("4.1")
def test_hidden_greedy_search_eos_at_the_first_step_and_several_eos_ids(student, device):
    model = make_model("llama", device, seed=1)
    input_ids, attention_mask = left_padded((4, 2, 6), device, seed=52)
    free = hf_generate(model, input_ids, attention_mask, max_new_tokens=6)
    eos = eos_from(free, [(0, 6), (1, 6), (2, 6)])   # every row's first new token
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=None)
    assert_tokens(student.greedy_search(model, input_ids, attention_mask, max_new_tokens=6, eos_token_id=eos),
                  expected, what=f"greedy_search where every row's first token is an EOS ({eos})",
                  hint="Every row finishes at once: stop after one step.")
    eos = eos_from(free, [(1, 8)]) + [2]
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=7)
    assert_tokens(student.greedy_search(model, input_ids, attention_mask, max_new_tokens=6, eos_token_id=eos,
                                        pad_token_id=7),
                  expected, what=f"greedy_search with eos_token_id={eos} and pad_token_id=7")


# -- 4.2 decode_step -------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.2")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hidden_decode_step_several_new_tokens_at_once(student, device, architecture):
    input_ids, attention_mask = left_padded((8, 5, 3), device, seed=53)
    check_prefill_then_one_step(student, make_model(architecture, device, seed=2), input_ids, attention_mask, split=6)


@pytest.mark.exercise("4.2")
def test_hidden_decode_step_one_row_one_token_prompt(student, device):
    model = make_model("gpt2", device, seed=2)
    input_ids = torch.tensor([[17]], device=device)
    mask = torch.ones_like(input_ids)
    logits, cache = student.decode_step(model, input_ids, mask, None)
    assert_close(logits, hf_logits(model, input_ids, mask), rtol=1e-4, atol=1e-4, what="logits of a 1-token prompt")
    ids = torch.tensor([[17, 40]], device=device)
    logits, _ = student.decode_step(model, ids[:, 1:], torch.ones_like(ids), cache)
    assert_close(logits, hf_logits(model, ids, torch.ones_like(ids)), rtol=1e-4, atol=1e-4,
                 what="logits of the second token (position 1)")


# -- 4.3 cached_greedy_search ---------------------------------------------------------------------------------------
@pytest.mark.exercise("4.3")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hidden_cached_greedy_search_long_and_padded(student, device, architecture):
    model = make_model(architecture, device, seed=3)
    input_ids, attention_mask = left_padded((1, 9, 4, 2), device, seed=54)
    free = hf_generate(model, input_ids, attention_mask, max_new_tokens=40)
    eos = eos_from(free, [(1, 20)])
    for eos_token_id in (None, eos):
        assert_tokens(student.cached_greedy_search(model, input_ids, attention_mask, max_new_tokens=40,
                                                   eos_token_id=eos_token_id, pad_token_id=PAD),
                      hf_generate(model, input_ids, attention_mask, max_new_tokens=40, eos_token_id=eos_token_id),
                      what=f"cached_greedy_search, 40 new tokens, eos_token_id={eos_token_id}, on {architecture}")


# -- 4.4 to 4.7 ----------------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.4")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_hidden_top_k_dtypes_infinities_and_whole_vocabulary(student, device, dtype):
    logits = random_logits(3, 25, device, seed=60, dtype=dtype)
    logits[0, :5] = float("-inf")
    for top_k in (3, 25, 24):
        assert_filtered(student.top_k_filter(logits, top_k), TopKLogitsWarper(top_k)(None, logits.clone()),
                        what=f"top_k_filter(top_k={top_k}) on {dtype} logits with -inf entries",
                        hint="Keep the input's dtype; -inf logits are simply never in the top k.")


@pytest.mark.exercise("4.5")
@pytest.mark.parametrize("top_p, min_keep, std", [(0.0, 1, 3.0), (0.0, 5, 3.0), (0.999, 1, 1.0), (0.5, 2, 20.0)])
def test_hidden_top_p_edge_cases(student, device, top_p, min_keep, std):
    logits = random_logits(4, 33, device, seed=61, std=std, dtype=torch.float64)
    logits[1, 3] = float("-inf")
    assert_filtered(student.top_p_filter(logits, top_p, min_keep),
                    TopPLogitsWarper(top_p, min_tokens_to_keep=min_keep)(None, logits.clone()),
                    what=f"top_p_filter(top_p={top_p}, min_tokens_to_keep={min_keep}) on float64 logits (std {std})")


@pytest.mark.exercise("4.5")
def test_hidden_top_p_uniform_distribution_keeps_enough_tied_tokens(student, device):
    logits = torch.zeros(2, 8, device=device)
    kept = torch.isfinite(student.top_p_filter(logits, 0.5)).sum(-1)
    assert kept.tolist() == [4, 4], (f"top_p=0.5 on 8 equally likely tokens kept {kept.tolist()}, expected 4 per row "
                                     "(their mass 0.5 reaches top_p)")


@pytest.mark.exercise("4.6")
@pytest.mark.parametrize("min_p, min_keep", [(1.0, 1), (0.3, 2), (0.01, 1)])
def test_hidden_min_p_edge_cases(student, device, min_p, min_keep):
    logits = random_logits(3, 20, device, seed=62, dtype=torch.float64)
    logits[2, 7] = logits[2].max()   # a tie for the top
    assert_filtered(student.min_p_filter(logits, min_p, min_keep),
                    MinPLogitsWarper(min_p, min_tokens_to_keep=min_keep)(None, logits.clone()),
                    what=f"min_p_filter(min_p={min_p}, min_tokens_to_keep={min_keep})")


@pytest.mark.exercise("4.7")
def test_hidden_repetition_penalty_whole_vocabulary_zero_logits_and_no_op(student, device):
    logits = random_logits(2, 12, device, seed=63)
    logits[0, 4] = 0.0
    input_ids = torch.arange(24, device=device).remainder(12).view(2, 12)
    assert_close(student.apply_repetition_penalty(logits, input_ids, 2.0), hf_repetition_penalty(logits, input_ids, 2.0),
                 what="repetition penalty when every token was seen")
    assert_close(student.apply_repetition_penalty(logits, input_ids, 1.0), logits, what="penalty 1.0 changes nothing")
    input_ids, attention_mask = left_padded((1, 7, 4), device, seed=64, vocab=12)
    assert_close(student.apply_repetition_penalty(logits.repeat(2, 1)[:3], input_ids, 1.7, attention_mask),
                 hf_repetition_penalty(logits.repeat(2, 1)[:3], input_ids, 1.7, attention_mask),
                 what="repetition penalty with mostly padded rows")


# -- 4.8 process_logits ----------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.8")
@pytest.mark.parametrize("architecture", ["gpt2", "course_lm"])
def test_hidden_process_logits_every_processor_on(student, device, architecture):
    model = make_model(architecture, device, seed=4)
    input_ids, attention_mask = left_padded((3, 7, 5), device, seed=65)
    settings = dict(repetition_penalty=0.8, temperature=1.7, top_k=20, top_p=0.7, min_p=0.02)
    torch.manual_seed(3)
    out = hf_generate(model, input_ids, attention_mask, max_new_tokens=5, do_sample=True, output_scores=True,
                      output_logits=True, return_dict_in_generate=True, **settings)
    for step, (raw, scores) in enumerate(zip(out.logits, out.scores)):
        sequence = out.sequences[:, :input_ids.shape[1] + step]
        mask = torch.cat([attention_mask, torch.ones_like(sequence[:, input_ids.shape[1]:])], dim=-1)
        assert_filtered(student.process_logits(raw, sequence, mask, **settings), scores,
                        what=f"process_logits({settings}) at step {step} on {architecture}",
                        hint="Repetition penalty, temperature, top-k, top-p, min-p: Hugging Face's order.")


# -- 4.9 sample ---------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.9")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hidden_sample_with_eos_min_p_and_penalty(student, architecture):
    device = torch.device("cpu")
    model = make_model(architecture, device, seed=5)
    input_ids, attention_mask = left_padded((5, 1, 3), device, seed=66)
    settings = dict(temperature=1.2, min_p=0.05, repetition_penalty=1.3)
    torch.manual_seed(0)
    free = hf_generate(model, input_ids, attention_mask, max_new_tokens=15, do_sample=True, top_k=0, **settings)
    eos = eos_from(free, [(0, 9), (2, 12)])
    torch.manual_seed(99)
    expected = hf_generate(model, input_ids, attention_mask, max_new_tokens=15, do_sample=True, top_k=0,
                           eos_token_id=eos, pad_token_id=3, **settings)
    assert_tokens(student.sample(model, input_ids, attention_mask, max_new_tokens=15, seed=99, eos_token_id=eos,
                                 pad_token_id=3, **settings),
                  expected, what=f"sample(seed=99, {settings}, eos_token_id={eos}) on {architecture}",
                  hint="Finished rows still take part in the draw (one multinomial for the whole batch) but get the "
                       "pad token.")


# -- 4.10 beam_search -----------------------------------------------------------------------------------------------------
HIDDEN_BEAMS = [dict(num_beams=5, length_penalty=-1.0, early_stopping="never", num_return_sequences=5),
                dict(num_beams=2, length_penalty=1.5, early_stopping=True, num_return_sequences=1),
                dict(num_beams=4, length_penalty=0.0, early_stopping=False, num_return_sequences=2)]


@pytest.mark.exercise("4.10")
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("settings", HIDDEN_BEAMS, ids=lambda s: f"beams{s['num_beams']}-lp{s['length_penalty']}-"
                                                                 f"es{s['early_stopping']}")
def test_hidden_beam_search_other_settings(student, device, architecture, settings):
    model = make_model(architecture, device, seed=6)
    input_ids, attention_mask = left_padded((1, 6, 3), device, seed=67)
    free, _ = hf_beam(model, input_ids, attention_mask, max_new_tokens=9, **settings)
    n = settings["num_return_sequences"]
    eos = eos_from(free, [(0, 8), (n, 10), (2 * n, 12)])
    expected, scores = hf_beam(model, input_ids, attention_mask, max_new_tokens=9, eos_token_id=eos, pad_token_id=4,
                               **settings)
    sequences, actual = student.beam_search(model, input_ids, attention_mask, max_new_tokens=9, eos_token_id=eos,
                                            pad_token_id=4, **settings)
    what = f"beam_search({settings}, eos_token_id={eos}) on {architecture}"
    assert_tokens(sequences, expected, what=what + ": sequences")
    assert_close(actual, scores, what=what + ": scores", rtol=1e-5, atol=1e-5)


# -- 4.11, 4.12 -------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.11")
def test_hidden_stop_sequence_hit_random_rows(student, device):
    gen = random.Random(68)
    rows = [[gen.randrange(4) for _ in range(9)] for _ in range(40)]
    stops = [[1, 2], [3], [0, 0, 0], [2, 2, 1, 3, 0, 1, 2, 3, 0, 1]]
    expected = [any(row[-len(s):] == s for s in stops if len(s) <= len(row)) for row in rows]
    hit = student.stop_sequence_hit(torch.tensor(rows, device=device), stops)
    assert hit.tolist() == expected, "stop_sequence_hit on 40 random rows differs from the rows' ends"


@pytest.mark.exercise("4.12")
def test_hidden_stop_string_hit_random_sequences_and_several_stops(student):
    tokenizer = word_tokenizer(STOP_WORDS + ["o", "ps", "ss"])
    gen = random.Random(69)
    pieces = STOP_WORDS + ["o", "ps", "ss"]
    for _ in range(60):
        tokens = [gen.choice(pieces) for _ in range(gen.randint(1, 5))]
        stops = gen.choice([["stop"], ["op", "zz"], ["pst", "sto"], ["s"], ["stopperation"]])
        expected = hf_stop_string_hit(tokenizer, tokens, stops)
        assert student.stop_string_hit(tokens, stops) is expected, \
            f"stop_string_hit({tokens}, {stops}) should be {expected}"
    assert student.stop_string_hit(["sto", "p", ""], ["stop"]) is False, \
        "an empty last token completes nothing"
