"""Chapter 10 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import math
import random

import pytest
import torch

from tests.test_evaluation import hf_nll, random_ids, recipe_nll, right_padded, simulated_comparisons
from tests.test_sft import tiny_llama


@pytest.mark.exercise("10.1")
def test_hidden_corpus_perplexity_of_one_long_and_many_short_rows(student):
    model = tiny_llama("cpu", 60, seed=11, pad=0).eval()
    rows = [random_ids(60, 90, high=60).tolist()] + [random_ids(61 + i, 3, high=60).tolist() for i in range(12)]
    nll = sum(hf_nll(model, torch.tensor([r]))[0] for r in rows)
    tokens = sum(len(r) - 1 for r in rows)
    got = student.corpus_perplexity(model, [right_padded(rows[:5], 5), right_padded(rows[5:], 0)])
    assert got["tokens"] == tokens and math.isclose(got["nll"], nll, rel_tol=1e-5)
    assert math.isclose(got["perplexity"], math.exp(nll / tokens), rel_tol=1e-5)


@pytest.mark.exercise("10.2")
@pytest.mark.parametrize("max_length, stride", [(32, 31), (5, 2), (3, 3), (100, 100)])
def test_hidden_sliding_window_nll_of_a_longer_text(student, max_length, stride):
    model = tiny_llama("cpu", 50, seed=12).eval()
    ids = random_ids(70, 1, 97)
    nll, tokens = recipe_nll(model, ids, max_length, stride)
    got = student.sliding_window_nll(model, ids, max_length, stride)
    assert got["tokens"] == tokens and math.isclose(got["nll"], nll, rel_tol=1e-5)


@pytest.mark.exercise("10.3")
def test_hidden_bits_per_byte_of_a_uniform_byte_model(student):
    # a model that gives every byte probability 1/256 spends exactly 8 bits per byte
    assert math.isclose(student.bits_per_byte(1000 * math.log(256), 1000), 8.0, rel_tol=1e-12)


@pytest.mark.exercise("10.4")
def test_hidden_tokenize_13a_of_unicode_and_markup(student):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    reference = Tokenizer13a()
    for text in ["Ça coûte 3,50 € — «vraiment»?", "x&amp;y &lt;z&gt;", "line-\nbreak-\n", "1-2-3 a--b 4.5.6 ,7,",
                 "tab\tand\r\ncarriage", "ünïcödé words, 和 中文。"]:
        assert student.tokenize_13a(text) == reference(text), text


@pytest.mark.exercise("10.5")
def test_hidden_corpus_bleu_of_three_reference_streams(student):
    from sacrebleu.metrics import BLEU

    r = random.Random(5)
    words = "we they it is was a the good bad day night , .".split()
    hyps = [" ".join(r.choice(words) for _ in range(r.randint(1, 14))) for _ in range(20)]
    refs = [[" ".join(r.choice(words) for _ in range(r.randint(1, 14))) for _ in range(20)] for _ in range(3)]
    for smooth in ("exp", "floor", "add-k", "none"):
        expected = BLEU(smooth_method=smooth, max_ngram_order=3).corpus_score(hyps, refs)
        got = student.corpus_bleu(hyps, refs, smooth_method=smooth, max_order=3)
        assert math.isclose(got["score"], expected.score, rel_tol=1e-10, abs_tol=1e-10), smooth
        assert (got["sys_len"], got["ref_len"]) == (expected.sys_len, expected.ref_len)


@pytest.mark.exercise("10.6")
def test_hidden_corpus_chrf_of_short_references(student):
    import sacrebleu

    hyps = ["a", "ab cd", "the big, big cat.", "x y z"]
    refs = [["b", "ab", "a big cat!", "xyz"], ["a", "cd ab", "the cat", "(x) y"]]
    for word_order in (0, 2):
        expected = sacrebleu.corpus_chrf(hyps, refs, word_order=word_order).score
        assert math.isclose(student.corpus_chrf(hyps, refs, word_order=word_order), expected, rel_tol=1e-10, abs_tol=1e-10)


@pytest.mark.exercise("10.7")
def test_hidden_choice_log_likelihoods_of_one_token_contexts(student):
    model = tiny_llama("cpu", 30, seed=13).eval()
    contexts, continuations = [[5], [6], [7, 8, 9]], [[10, 11, 12, 13], [1], [2, 3]]
    got = student.choice_log_likelihoods(model, contexts, continuations, pad_token_id=0)
    for i, (c, x) in enumerate(zip(contexts, continuations)):
        ids = torch.tensor([c + x])
        labels = ids.clone()
        labels[:, :len(c)] = -100
        expected = -hf_nll(model, ids, labels)[0]
        assert math.isclose(got["log_likelihood"][i], expected, rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.exercise("10.8")
def test_hidden_multiple_choice_metrics_of_many_choices(student):
    r = random.Random(6)
    lls = [[r.uniform(-20, -1) for _ in range(5)] for _ in range(30)]
    texts = [["x" * r.randint(1, 12) for _ in range(5)] for _ in range(30)]
    gold = [r.randrange(5) for _ in range(30)]
    acc = sum(max(range(5), key=lambda i: l[i]) == g for l, g in zip(lls, gold)) / 30
    norm = sum(max(range(5), key=lambda i: l[i] / len(t[i])) == g for l, t, g in zip(lls, texts, gold)) / 30
    got = student.multiple_choice_metrics(lls, texts, gold)
    assert math.isclose(got["acc"], acc) and math.isclose(got["acc_norm"], norm)


@pytest.mark.exercise("10.9")
def test_hidden_cohen_kappa_of_perfect_and_opposite_raters(student):
    from sklearn.metrics import cohen_kappa_score

    a = [0, 1, 0, 1, 1, 0]
    assert math.isclose(student.cohen_kappa(a, a), 1.0)
    b = [1 - x for x in a]
    assert math.isclose(student.cohen_kappa(a, b), cohen_kappa_score(a, b))
    c, d = [1, 2, 3, 4, 5, 1, 2], [2, 2, 3, 5, 5, 1, 1]
    assert math.isclose(student.cohen_kappa(c, d, weights="quadratic"), cohen_kappa_score(c, d, weights="quadratic"))


@pytest.mark.exercise("10.10")
def test_hidden_bradley_terry_of_three_players_by_hand(student):
    # A beats B twice and loses once, B beats C twice and loses once, C beats A twice and loses once: all equal
    comparisons = [(0, 1, 1), (0, 1, 1), (1, 0, 1), (1, 2, 1), (1, 2, 1), (2, 1, 1), (2, 0, 1), (2, 0, 1), (0, 2, 1)]
    assert all(abs(x) < 1e-8 for x in student.bradley_terry(comparisons, 3))
    comparisons = simulated_comparisons(9, [1.5, 0.0, -1.5], 200)
    got = student.bradley_terry(comparisons, 3)
    assert got[0] > got[1] > got[2] and math.isclose(sum(got), 0.0, abs_tol=1e-9)


@pytest.mark.exercise("10.11")
def test_hidden_elo_ratings_of_a_long_sequence(student):
    comparisons = simulated_comparisons(10, [1.0, 0.0, -1.0, 0.5], 200, ties=0.1)
    expected = [1000.0] * 4
    for a, b, o in comparisons:
        e = 1 / (1 + 10 ** ((expected[b] - expected[a]) / 400))
        expected[a], expected[b] = expected[a] + 4 * (o - e), expected[b] - 4 * (o - e)
    got = student.elo_ratings(comparisons, 4)
    assert all(math.isclose(g, x, rel_tol=1e-12) for g, x in zip(got, expected))
    assert math.isclose(sum(got), 4000.0)


@pytest.mark.exercise("10.12")
def test_hidden_bootstrap_interval_of_a_constant_and_of_float64(student):
    low, high = student.bootstrap_interval(torch.full((10,), 3.0), "median", 50, 0.9, 2)
    assert low == high == 3.0
    values = torch.randn(15, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    indices = torch.randint(0, 15, (200, 15), generator=torch.Generator().manual_seed(4))
    stats = values[indices].mean(-1)
    expected = torch.quantile(stats, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    got = student.bootstrap_interval(values, "mean", 200, 0.9, 4)
    assert all(math.isclose(g, e, rel_tol=1e-9) for g, e in zip(got, expected))


@pytest.mark.exercise("10.13")
def test_hidden_position_bias_of_a_judge_that_always_says_a(student):
    got = student.position_bias(["A"] * 6, ["A"] * 6)
    assert got["consistency"] == 0.0 and got["first_position_rate"] == 1.0
    ties = student.position_bias(["tie", "tie"], ["tie", "tie"])
    assert ties["consistency"] == 1.0 and math.isnan(ties["first_position_rate"])
