"""Chapter 10 graded tests (public): perplexity, BLEU and chrF, multiple choice by log-likelihood,
agreement and ratings.

The references are outside the course: the loss of Hugging Face's ``LlamaForCausalLM`` (token-weighted,
and window by window as the ``transformers`` documentation's sliding-window recipe runs it, with each
window's true count of scored tokens); sacreBLEU 2.6 (``corpus_bleu``, ``corpus_chrf`` and its ``13a``
tokenizer); the LM Evaluation Harness 0.4 (``HFLM.loglikelihood`` on the same in-memory model and
tokenizer, a local ``multiple_choice`` YAML task run by ``simple_evaluate``, and its ``bits_per_byte``
aggregation); scikit-learn (``cohen_kappa_score``; ``LogisticRegression`` for the Bradley-Terry fit);
SciPy's percentile bootstrap.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped).

10.1 ``corpus_perplexity``
  - ``exp`` of one token-weighted mean over the corpus, whatever the batching, padding holding any id:
    corpus_perplexity_is_the_token_weighted_hugging_face_loss
  - no dropout while scoring, the model's mode kept, plain numbers: corpus_perplexity_scores_in_eval_mode

10.2 ``sliding_window_nll``
  - the recipe written out with Hugging Face's loss, strides below, at and above half the window, a
    window longer than the text: sliding_window_nll_matches_the_recipe
  - every token but the first scored once (``stride < max_length``), disjoint chunks lose each first
    token: sliding_window_nll_scores_every_token_once

10.3 ``bits_per_byte``
  - the LM Evaluation Harness's ``bits_per_byte`` aggregation: bits_per_byte_matches_lm_eval

10.4 ``tokenize_13a``
  - sacreBLEU's ``Tokenizer13a`` on punctuation, numbers, dashes, entities, line breaks and random text:
    tokenize_13a_matches_sacrebleu

10.5 ``corpus_bleu``
  - ``sacrebleu.corpus_bleu``: score, counts, totals, precisions, brevity penalty and lengths, for each
    smoothing method, one and two reference streams, lowercasing, ``max_order``:
    corpus_bleu_matches_sacrebleu
  - clipping, the closest reference length, the brevity penalty, no match at all:
    corpus_bleu_of_hand_made_corpora

10.6 ``corpus_chrf``
  - ``sacrebleu.corpus_chrf`` for chrF and chrF++, several ``beta`` and orders, the best of two
    references: corpus_chrf_matches_sacrebleu

10.7 ``choice_log_likelihoods``
  - the harness's ``HFLM.loglikelihood`` on the same model, tokenizer and requests (log-likelihood and
    ``is_greedy``): choice_log_likelihoods_match_lm_eval
  - a greedy continuation, one request alone equal to it in a padded batch, the pad id irrelevant, the
    mode kept: choice_log_likelihoods_are_independent_of_the_batch

10.8 ``multiple_choice_metrics``
  - the harness's ``acc`` and ``acc_norm`` of a local ``multiple_choice`` YAML task on the same model:
    multiple_choice_metrics_match_lm_eval_on_a_local_task
  - normalised by characters (not tokens), ties to the first: multiple_choice_metrics_of_hand_made_scores

10.9 ``cohen_kappa``
  - ``sklearn.metrics.cohen_kappa_score``, unweighted, linear and quadratic, labels of any type:
    cohen_kappa_matches_sklearn
  - chance agreement removed (raw agreement is not kappa): cohen_kappa_is_not_raw_agreement

10.10 ``bradley_terry``
  - a logistic regression of the outcomes (ties as half a win each), centred: bradley_terry_matches_a_logistic_regression
  - a player who never lost is refused: bradley_terry_refuses_a_player_without_a_loss

10.11 ``elo_ratings``
  - three comparisons by hand, order-dependence: elo_ratings_by_hand

10.12 ``bootstrap_interval``
  - the contract's resampling written out; SciPy's percentile interval close:
    bootstrap_interval_is_the_percentile_interval

10.13 ``position_bias``
  - consistency and first-position rate by hand: position_bias_by_hand
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from grading.expect import assert_unchanged
from tests.test_generation import reference_mode, solution_mode  # noqa: F401  (a fixture)
from tests.test_sft import chat_tokenizer, memo, tiny_llama  # noqa: F401  (chat_tokenizer: a fixture)

F64 = torch.float64


def random_ids(seed, *shape, low=3, high=50):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def right_padded(rows, pad_id):
    """``{"input_ids", "attention_mask"}`` of ``rows`` padded on the right with ``pad_id``."""
    from course_lib.tasks import pad_batch

    input_ids, attention_mask = pad_batch(rows, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def hf_nll(model, ids: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, int]:
    """Hugging Face's loss on one row ``(1, n)`` times the number of targets it averaged over."""
    labels = ids if labels is None else labels
    count = int((labels[:, 1:] != -100).sum())
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    return (float(loss) * count if count else 0.0), count


# -- 10.1 corpus_perplexity ----------------------------------------------------------------------------------
@pytest.mark.exercise("10.1")
def test_corpus_perplexity_is_the_token_weighted_hugging_face_loss(student):
    model = tiny_llama("cpu", 50, seed=1).eval()
    rows = [random_ids(10 + i, n)[:n].tolist() for i, n in enumerate((31, 3, 17, 2, 24, 9))]
    nll = sum(hf_nll(model, torch.tensor([r]))[0] for r in rows)
    tokens = sum(len(r) - 1 for r in rows)
    for batching, pad in (((0, 6), 0), ((0, 1, 3, 6), 7), ((0, 2, 5, 6), 49)):
        batches = [right_padded(rows[a:b], pad) for a, b in zip(batching, batching[1:])]
        got = student.corpus_perplexity(model, batches)
        assert set(got) == {"nll", "tokens", "perplexity"}, f"corpus_perplexity returns {sorted(got)}"
        assert got["tokens"] == tokens, (
            f"corpus_perplexity counted {got['tokens']} tokens in rows of {[len(r) for r in rows]} real tokens: each "
            f"row predicts all its real tokens but the first ({tokens}); padding is never predicted")
        assert math.isclose(got["nll"], nll, rel_tol=1e-5), f"nll {got['nll']:.5f}, expected {nll:.5f}"
        per_batch = [sum(hf_nll(model, torch.tensor([r]))[0] for r in rows[a:b]) / sum(len(r) - 1 for r in rows[a:b])
                     for a, b in zip(batching, batching[1:])]
        assert math.isclose(got["perplexity"], math.exp(nll / tokens), rel_tol=1e-5), (
            f"perplexity {got['perplexity']:.4f} with batches {batching}, expected exp(nll / tokens) = "
            f"{math.exp(nll / tokens):.4f}" + (" (you averaged per batch)" if math.isclose(
                got["perplexity"], math.exp(sum(per_batch) / len(per_batch)), rel_tol=1e-5) else ""))


@pytest.mark.exercise("10.1")
def test_corpus_perplexity_scores_in_eval_mode(student):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, attention_dropout=0.5, use_cache=False)
    model = LlamaForCausalLM(config).train()
    rows = [random_ids(20, 12, high=40).tolist(), random_ids(21, 7, high=40).tolist()]
    nll = sum(hf_nll(model.eval(), torch.tensor([r]))[0] for r in rows)
    model.train()
    batches = [right_padded(rows, 0)]
    before = [{k: v.clone() for k, v in b.items()} for b in batches]
    got = student.corpus_perplexity(model, batches)
    assert_unchanged(batches, before, what="the caller's batches")
    assert math.isclose(got["nll"], nll, rel_tol=1e-5), (
        f"nll {got['nll']:.5f} of a model with attention dropout 0.5, expected {nll:.5f} (its dropout off)")
    assert model.training, "corpus_perplexity left a model that came in training mode in eval mode"
    assert isinstance(got["nll"], float) and isinstance(got["perplexity"], float) and isinstance(got["tokens"], int), (
        f"corpus_perplexity returns Python numbers (float, int, float), got {[type(v).__name__ for v in got.values()]}")


# -- 10.2 sliding_window_nll ----------------------------------------------------------------------------------
def recipe_nll(model, ids, max_length, stride):
    """The transformers documentation's recipe, with each window's true number of scored tokens."""
    n, nll, tokens, prev_end = ids.shape[1], 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, :-(end - prev_end)] = -100
        window_nll, count = hf_nll(model, window, labels)
        nll, tokens, prev_end = nll + window_nll, tokens + count, end
        if end == n:
            break
    return nll, tokens


@pytest.mark.exercise("10.2")
@pytest.mark.parametrize("max_length, stride", [(16, 4), (16, 11), (10, 3), (8, 8), (2, 1), (64, 5)])
def test_sliding_window_nll_matches_the_recipe(student, max_length, stride):
    model = tiny_llama("cpu", 50, seed=3).eval()
    ids = random_ids(30, 1, 41)
    nll, tokens = recipe_nll(model, ids, max_length, stride)
    got = student.sliding_window_nll(model, ids, max_length, stride)
    assert set(got) == {"nll", "tokens"}, f"sliding_window_nll returns {sorted(got)}"
    assert got["tokens"] == tokens, (
        f"sliding_window_nll(max_length={max_length}, stride={stride}) of 41 tokens scored {got['tokens']} tokens, "
        f"expected {tokens}")
    assert math.isclose(got["nll"], nll, rel_tol=1e-5), (
        f"sliding_window_nll(max_length={max_length}, stride={stride}): nll {got['nll']:.5f}, expected {nll:.5f}")


@pytest.mark.exercise("10.2")
def test_sliding_window_nll_scores_every_token_once(student):
    model = tiny_llama("cpu", 50, seed=4).train()
    ids = random_ids(31, 1, 30)
    for max_length, stride in ((12, 5), (7, 6), (30, 1)):
        got = student.sliding_window_nll(model, ids, max_length, stride)
        assert got["tokens"] == 29, (
            f"sliding_window_nll(max_length={max_length}, stride={stride}) of 30 tokens scored {got['tokens']}: with "
            "stride < max_length every token but the first is scored exactly once")
    assert model.training, "sliding_window_nll left a model that came in training mode in eval mode"
    got = student.sliding_window_nll(model, ids, 10, 10)
    assert got["tokens"] == 27, f"disjoint chunks of 10, 10 and 10 tokens score 9 + 9 + 9 tokens, got {got['tokens']}"
    whole = student.sliding_window_nll(model, ids, 64, 8)
    assert math.isclose(whole["nll"], hf_nll(model.eval(), ids)[0], rel_tol=1e-5), (
        "a window longer than the text scores it in one piece: Hugging Face's loss times 29")


# -- 10.3 bits_per_byte ---------------------------------------------------------------------------------------
@pytest.mark.exercise("10.3")
def test_bits_per_byte_matches_lm_eval(student):
    from lm_eval.api.metrics import bits_per_byte as harness_bits_per_byte

    for nll, n_bytes in ((100.0, 50), (3.25, 7), (0.0, 1), (12345.678, 40000)):
        expected = harness_bits_per_byte([(-nll, n_bytes)])
        got = student.bits_per_byte(nll, n_bytes)
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-15), (
            f"bits_per_byte({nll}, {n_bytes}) = {got}, expected {expected}: nats per byte divided by ln 2")


# -- 10.4 tokenize_13a ----------------------------------------------------------------------------------------
TEXTS_13A = ["Hello, world! (3.14) a-b 2-3 &amp; x&quot;y<skipped>z", "co-\nop line\nnext", "it's 1,000.5. end.",
             "Prices: $5.00, €4,50; 10-20% off!", "  spaces   everywhere \t tab ", "a.b,c 1.a a.1 ,x x, .",
             "<tag> {curly} [square] ^caret_ `tick` |pipe| ~tilde @at #hash /slash\\", "&lt;b&gt; &amp;amp;", "",
             "Don't stop-believing -- 2-- x-3", "Mr. Smith's e-mail: a.b@c.com?"]


@pytest.mark.exercise("10.4")
def test_tokenize_13a_matches_sacrebleu(student):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    reference = Tokenizer13a()
    r = random.Random(0)
    alphabet = "ab1 .,-&;:()'\"\n/?!<>"
    texts = TEXTS_13A + ["".join(r.choice(alphabet) for _ in range(r.randint(1, 30))) for _ in range(200)]
    for text in texts:
        got = student.tokenize_13a(text)
        assert got == reference(text), f"tokenize_13a({text!r}) = {got!r}, expected {reference(text)!r}"


# -- 10.5 corpus_bleu -----------------------------------------------------------------------------------------
HYPOTHESES = ["The cat sat on the mat.", "It is 3.14, or 1,000 - 2-3 things!", "a b c d e", "x", "The Dog barked."]
REFERENCES = [["The cat is on the mat.", "It was 3.14 or so, things!", "a b c d", "x y z", "the dog barked loudly."],
              ["A cat sat on a mat .", "It is 3.14, or 1,000 things", "a b c d e f", "y", "The dog barks."]]


def bleu_corpora():
    r = random.Random(1)
    words = "the a cat dog sat on mat is was , . big small".split()
    random_hyps = [" ".join(r.choice(words) for _ in range(r.randint(0, 9))) for _ in range(12)]
    random_refs = [[" ".join(r.choice(words) for _ in range(r.randint(1, 9))) for _ in range(12)] for _ in range(2)]
    return {"hand": (HYPOTHESES, REFERENCES), "one stream": (HYPOTHESES, REFERENCES[:1]),
            "random": (random_hyps, random_refs), "short": (["x", "y z"], [["x y z w v", "y z q"]])}


@pytest.mark.exercise("10.5")
@pytest.mark.parametrize("corpus", ["hand", "one stream", "random", "short"])
@pytest.mark.parametrize("smooth_method, smooth_value", [("exp", None), ("none", None), ("floor", None),
                                                         ("floor", 0.3), ("add-k", None), ("add-k", 2)])
def test_corpus_bleu_matches_sacrebleu(student, corpus, smooth_method, smooth_value):
    from sacrebleu.metrics import BLEU

    hypotheses, references = bleu_corpora()[corpus]
    for max_order, lowercase in ((4, False), (2, True)):
        expected = BLEU(lowercase=lowercase, smooth_method=smooth_method, smooth_value=smooth_value,
                        max_ngram_order=max_order).corpus_score(hypotheses, references)
        got = student.corpus_bleu(hypotheses, references, smooth_method=smooth_method, smooth_value=smooth_value,
                                  max_order=max_order, lowercase=lowercase)
        what = f"corpus_bleu({corpus!r}, smooth_method={smooth_method!r}, smooth_value={smooth_value}, " \
               f"max_order={max_order}, lowercase={lowercase})"
        assert set(got) == {"score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"}, f"{what}: {sorted(got)}"
        assert (got["sys_len"], got["ref_len"]) == (expected.sys_len, expected.ref_len), (
            f"{what}: sys_len, ref_len = {got['sys_len']}, {got['ref_len']}; expected {expected.sys_len}, "
            f"{expected.ref_len} (the reference closest in length to each hypothesis, the shorter on a tie)")
        assert list(got["counts"]) == list(expected.counts) and list(got["totals"]) == list(expected.totals), (
            f"{what}: counts {got['counts']} of totals {got['totals']}, expected {expected.counts} of {expected.totals}")
        assert math.isclose(got["bp"], expected.bp, rel_tol=1e-12), f"{what}: bp {got['bp']}, expected {expected.bp}"
        for p, q in zip(got["precisions"], expected.precisions, strict=True):
            assert math.isclose(p, q, rel_tol=1e-12, abs_tol=1e-12), (
                f"{what}: precisions {got['precisions']}, expected {expected.precisions}")
        assert math.isclose(got["score"], expected.score, rel_tol=1e-10, abs_tol=1e-10), (
            f"{what}: score {got['score']:.6f}, expected {expected.score:.6f}")


@pytest.mark.exercise("10.5")
def test_corpus_bleu_of_hand_made_corpora(student):
    got = student.corpus_bleu(["the the the the"], [["the cat"], ["the the dog"]], max_order=1)
    assert got["counts"] == [2] and got["totals"] == [4], (
        f"'the' four times against references with it once and twice: 2 clipped matches of 4, got {got['counts']} of "
        f"{got['totals']}")
    assert got["ref_len"] == 3 and got["bp"] == 1.0, "the closest reference (3 words) is shorter than the hypothesis"
    assert math.isclose(got["score"], 50.0), f"BLEU-1 of 2 matches in 4: 50, got {got['score']}"
    short = student.corpus_bleu(["a b"], [["a b c d"]], max_order=2)
    assert math.isclose(short["bp"], math.exp(1 - 4 / 2)) and math.isclose(short["score"], 100 * math.exp(-1)), (
        f"a right but half-long hypothesis: bp exp(1 - 4/2), score {100 * math.exp(-1):.4f}; got bp {short['bp']}, "
        f"score {short['score']}")
    tie = student.corpus_bleu(["a b c"], [["a b"], ["a b c d"]])
    assert tie["ref_len"] == 2, f"references of 2 and 4 words are equally close to 3: the shorter counts, got {tie['ref_len']}"
    nothing = student.corpus_bleu(["x y"], [["a b"]])
    assert nothing["score"] == 0.0 and nothing["precisions"] == [0.0] * 4, f"no match at all: score 0, got {nothing}"
    empty = student.corpus_bleu([""], [["a b"]])
    assert empty["bp"] == 0.0 and empty["sys_len"] == 0 and empty["score"] == 0.0, f"an empty hypothesis: {empty}"


# -- 10.6 corpus_chrf -----------------------------------------------------------------------------------------
@pytest.mark.exercise("10.6")
@pytest.mark.parametrize("char_order, word_order, beta", [(6, 0, 2), (6, 2, 2), (4, 1, 1), (3, 3, 3), (1, 0, 0.5)])
def test_corpus_chrf_matches_sacrebleu(student, char_order, word_order, beta):
    import sacrebleu

    r = random.Random(2)
    words = ["cat", "cats", "(cat)", "dog,", "'dog'", "!", "a.", "the", "The", "sat", "mat;", "x"]
    hypotheses = HYPOTHESES + [" ".join(r.choice(words) for _ in range(r.randint(1, 8))) for _ in range(10)]
    references = [REFERENCES[0] + [" ".join(r.choice(words) for _ in range(r.randint(1, 8))) for _ in range(10)],
                  REFERENCES[1] + [" ".join(r.choice(words) for _ in range(r.randint(1, 8))) for _ in range(10)]]
    for refs in (references, references[:1]):
        expected = sacrebleu.corpus_chrf(hypotheses, refs, char_order=char_order, word_order=word_order, beta=beta).score
        got = student.corpus_chrf(hypotheses, refs, char_order=char_order, word_order=word_order, beta=beta)
        assert math.isclose(got, expected, rel_tol=1e-10, abs_tol=1e-10), (
            f"corpus_chrf(char_order={char_order}, word_order={word_order}, beta={beta}) with {len(refs)} reference "
            f"stream(s) = {got:.6f}, expected {expected:.6f}")


# -- 10.7-10.8 multiple choice --------------------------------------------------------------------------------
REQUESTS = [("Question: What is 2 plus 3?\nAnswer:", " 5"), ("Question: What is 2 plus 3?\nAnswer:", " five or so"),
            ("The capital of France is ", "Paris"), ("Reverse lion:", " noil"), ("a", " b c d e f g"),
            ("Sort: pear apple", " apple pear")]


def harness(model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")


@pytest.mark.exercise("10.7")
def test_choice_log_likelihoods_match_lm_eval(student, chat_tokenizer):
    from lm_eval.api.instance import Instance

    model = tiny_llama("cpu", len(chat_tokenizer), seed=5, pad=chat_tokenizer.pad_token_id).eval()
    lm = harness(model, chat_tokenizer)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(REQUESTS)]
    expected = lm.loglikelihood(requests, disable_tqdm=True)
    encoded = [lm._encode_pair(*pair) for pair in REQUESTS]
    got = student.choice_log_likelihoods(model, [c for c, _ in encoded], [x for _, x in encoded],
                                         pad_token_id=chat_tokenizer.pad_token_id)
    assert set(got) == {"log_likelihood", "is_greedy"}, f"choice_log_likelihoods returns {sorted(got)}"
    for i, ((ll, greedy), pair) in enumerate(zip(expected, REQUESTS)):
        assert math.isclose(got["log_likelihood"][i], ll, rel_tol=1e-5, abs_tol=1e-5), (
            f"log-likelihood of {pair[1]!r} after {pair[0]!r}: {got['log_likelihood'][i]:.5f}, the harness says {ll:.5f}")
        assert bool(got["is_greedy"][i]) == greedy, f"is_greedy of request {i}: {got['is_greedy'][i]}, expected {greedy}"


@pytest.mark.exercise("10.7")
def test_choice_log_likelihoods_are_independent_of_the_batch(student):
    model = tiny_llama("cpu", 50, seed=6).train()
    context = random_ids(40, 6).tolist()
    greedy, ids = [], torch.tensor([context])
    with torch.no_grad():
        for _ in range(4):  # the model's own greedy continuation
            token = int(model.eval()(input_ids=ids).logits[0, -1].argmax())
            greedy.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    model.train()
    contexts = [context, random_ids(41, 2).tolist(), context, random_ids(42, 11).tolist()]
    continuations = [greedy, random_ids(43, 5).tolist(), greedy[:1] + [(greedy[1] + 1) % 50], [7]]
    batched = student.choice_log_likelihoods(model, contexts, continuations, pad_token_id=0)
    assert batched["is_greedy"][0] is True or batched["is_greedy"][0] == 1, (
        "the model's own greedy continuation: is_greedy must be True")
    assert not batched["is_greedy"][2], "a continuation whose second token is not the argmax is not greedy"
    for i, (c, x) in enumerate(zip(contexts, continuations)):
        alone = student.choice_log_likelihoods(model, [c], [x], pad_token_id=49)
        assert math.isclose(batched["log_likelihood"][i], alone["log_likelihood"][0], rel_tol=1e-5, abs_tol=1e-5), (
            f"request {i} in a padded batch: {batched['log_likelihood'][i]:.5f}, alone: {alone['log_likelihood'][0]:.5f}")
    assert model.training, "choice_log_likelihoods left a model that came in training mode in eval mode"


MC_DOCS = [{"question": "What is 2 plus 3?", "choices": ["5", "six", "23", "a lot more than that"], "answer": 0},
           {"question": "Which word is an animal?", "choices": ["table", "cat", "blue sky"], "answer": 1},
           {"question": "Reverse the word lion.", "choices": ["noil", "lion", "noli", "loin"], "answer": 0},
           {"question": "What comes after Monday?", "choices": ["Tuesday", "Sunday", "Friday"], "answer": 0},
           {"question": "Is ice cold?", "choices": ["yes", "no"], "answer": 0},
           {"question": "Sort: pear apple", "choices": ["apple pear", "pear apple"], "answer": 0}]

def mc_task(num_fewshot=0, doc_to_text="{question}"):
    from course_lib.evaluation import Task

    docs = tuple({**d, "topic": f"topic {i}"} for i, d in enumerate(MC_DOCS))
    return Task("course_mc", "multiple_choice", docs, num_fewshot=num_fewshot, fewshot_docs=docs[-2:],
                doc_to_text=doc_to_text)


def lm_eval_multiple_choice(model, tokenizer, folder: Path, task):
    """The harness's run of ``task`` as a local YAML task (:func:`~course_lib.evaluation.lm_eval_task_yaml`):
    its results and its samples in document order."""
    import json

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from course_lib.evaluation import lm_eval_task_yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in task.docs))
    data.with_suffix(".fewshot.jsonl").write_text("".join(json.dumps(d) + "\n" for d in task.fewshot_docs))
    (folder / f"{task.name}.yaml").write_text(lm_eval_task_yaml(task, data))
    out = simple_evaluate(model=harness(model, tokenizer), tasks=[task.name], num_fewshot=task.num_fewshot,
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                          bootstrap_iters=0, log_samples=True)
    return out["results"][task.name], sorted(out["samples"][task.name], key=lambda s: s["doc_id"])


@pytest.mark.exercise("10.8")
def test_multiple_choice_metrics_match_lm_eval_on_a_local_task(student, chat_tokenizer, tmp_path):
    model = tiny_llama("cpu", len(chat_tokenizer), seed=7, pad=chat_tokenizer.pad_token_id).eval()
    results, samples = lm_eval_multiple_choice(model, chat_tokenizer, tmp_path, mc_task())
    log_likelihoods = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    got = student.multiple_choice_metrics(log_likelihoods, [d["choices"] for d in MC_DOCS], [d["answer"] for d in MC_DOCS])
    assert set(got) == {"acc", "acc_norm"}, f"multiple_choice_metrics returns {sorted(got)}"
    for metric in ("acc", "acc_norm"):
        assert math.isclose(got[metric], results[f"{metric},none"], abs_tol=1e-12), (
            f"{metric} {got[metric]}, the harness says {results[f'{metric},none']} on the same log-likelihoods")


@pytest.mark.exercise("10.8")
def test_multiple_choice_metrics_of_hand_made_scores(student):
    # "a" is 1 character and 1 token, "bbbbbb" 6 characters but maybe 1 token: acc_norm divides by characters
    got = student.multiple_choice_metrics([[-2.0, -6.0], [-3.0, -3.0], [-4.0, -9.0], [-1.0, -2.5]],
                                          [["a", "bbbbbb"], ["x", "y"], ["cc", "dddddddddd"], ["a", "bbb"]], [1, 1, 1, 1])
    assert got["acc"] == 0.0, f"the larger log-likelihood is the first choice of every question: acc 0, got {got['acc']}"
    assert math.isclose(got["acc_norm"], 3 / 4), (
        f"per character: -2/1 < -6/6, -4/2 < -9/10 and -1/1 < -2.5/3 pick the second choice, the tie -3/1 = -3/1 the "
        f"first: acc_norm 3/4, got {got['acc_norm']}")


# -- 10.9 cohen_kappa ----------------------------------------------------------------------------------------
@pytest.mark.exercise("10.9")
@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn(student, weights):
    from sklearn.metrics import cohen_kappa_score

    r = random.Random(3)
    for trial in range(5):
        labels = [1, 2, 3, 4, 5][:2 + trial]
        a = [r.choice(labels) for _ in range(40)]
        b = [x if r.random() < 0.6 else r.choice(labels) for x in a]
        expected = cohen_kappa_score(a, b, weights=weights)
        got = student.cohen_kappa(a, b, weights=weights)
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12), (
            f"cohen_kappa(weights={weights!r}) of labels {labels}: {got:.6f}, sklearn says {expected:.6f}")
    for a, b in ((["yes", "no", "maybe", "yes", "no"], ["yes", "yes", "maybe", "no", "no"]),
                 ([1, 1, 2, 2, 1, 4], [1, 3, 2, 2, 3, 4])):  # rater b uses a label rater a never does
        if weights is None or isinstance(a[0], int):
            expected = cohen_kappa_score(a, b, weights=weights)
            assert math.isclose(student.cohen_kappa(a, b, weights=weights), expected, rel_tol=1e-9), (
                f"cohen_kappa({a}, {b}, weights={weights!r}), sklearn says {expected:.6f}: the table has every label "
                "either rater used")


@pytest.mark.exercise("10.9")
def test_cohen_kappa_is_not_raw_agreement(student):
    a = ["yes"] * 9 + ["no"]
    b = ["yes"] * 8 + ["no", "yes"]
    got = student.cohen_kappa(a, b)
    # observed agreement 0.8; by chance 0.9 * 0.9 + 0.1 * 0.1 = 0.82; kappa (0.8 - 0.82) / (1 - 0.82)
    assert math.isclose(got, (0.8 - 0.82) / 0.18, rel_tol=1e-9), (
        f"two raters who say 'yes' 90 % of the time and agree on 8 of 10 items: kappa -1/9, got {got:.4f}")


# -- 10.10-10.11 ratings --------------------------------------------------------------------------------------
def simulated_comparisons(seed, strengths, n, ties=0.0):
    r = random.Random(seed)
    comparisons = []
    for _ in range(n):
        a, b = r.sample(range(len(strengths)), 2)
        if r.random() < ties:
            comparisons.append((a, b, 0.5))
        else:
            comparisons.append((a, b, 1 if r.random() < 1 / (1 + math.exp(strengths[b] - strengths[a])) else 0))
    return comparisons


@pytest.mark.exercise("10.10")
@pytest.mark.parametrize("ties", [0.0, 0.2])
def test_bradley_terry_matches_a_logistic_regression(student, ties):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    strengths = [0.0, 0.5, 1.0, -0.7, 0.2]
    comparisons = simulated_comparisons(4, strengths, 300, ties)
    rows, outcomes, weights = [], [], []
    for a, b, outcome in comparisons:
        x = np.zeros(len(strengths))
        x[a], x[b] = 1.0, -1.0
        for y, w in ((1, outcome), (0, 1 - outcome)):  # a tie is half a win and half a loss
            if w:
                rows.append(x)
                outcomes.append(y)
                weights.append(w)
    fit = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-12, max_iter=100000)
    fit.fit(np.array(rows), np.array(outcomes), sample_weight=np.array(weights))
    expected = fit.coef_[0] - fit.coef_[0].mean()
    got = student.bradley_terry(comparisons, len(strengths))
    assert len(got) == len(strengths) and math.isclose(sum(got), 0.0, abs_tol=1e-9), (
        f"bradley_terry returns one log-strength per player, summing to 0: got {got}")
    for player, (g, e) in enumerate(zip(got, expected)):
        assert math.isclose(g, e, abs_tol=1e-5), (
            f"log-strength of player {player}: {g:.6f}, the maximum likelihood (a logistic regression) says {e:.6f}")


@pytest.mark.exercise("10.10")
def test_bradley_terry_stops_after_its_iterations_or_at_its_tolerance(student):
    comparisons = [(0, 1, 1), (0, 1, 1), (1, 0, 1), (1, 2, 1), (2, 1, 1), (2, 0, 0.5), (0, 2, 1)]
    before = [tuple(c) for c in comparisons]
    # one update from p = 1: p_i = W_i / (n_i / 2), W = (3.5, 2, 1.5) wins in n = (5, 5, 4) comparisons
    p = [3.5 / 2.5, 2 / 2.5, 1.5 / 2.0]
    logs = [math.log(x) for x in p]
    one_step = [x - sum(logs) / 3 for x in logs]
    for kwargs in ({"iterations": 1}, {"tolerance": 10.0}):
        got = student.bradley_terry(comparisons, 3, **kwargs)
        assert got == pytest.approx(one_step, abs=1e-12), (
            f"bradley_terry(..., {kwargs}) = {got}: one update from p = 1 gives {one_step}")
    assert [tuple(c) for c in comparisons] == before, "bradley_terry changed the caller's comparisons"
    converged = student.bradley_terry(comparisons, 3, iterations=10_000, tolerance=0.0)
    assert converged != pytest.approx(one_step, abs=1e-3), "with tolerance 0 the fit runs all its iterations"


@pytest.mark.exercise("10.10")
def test_bradley_terry_refuses_a_player_without_a_loss(student):
    comparisons = [(0, 1, 1), (1, 2, 1), (2, 1, 1), (0, 2, 1), (2, 0, 0)]  # player 0 never loses
    with pytest.raises(ValueError, match="player 0"):
        student.bradley_terry(comparisons, 3)


@pytest.mark.exercise("10.11")
def test_elo_ratings_by_hand(student):
    got = student.elo_ratings([(0, 1, 1), (1, 2, 0.5), (2, 0, 1)], 3, k=32)
    r0, r1 = 1000 + 16, 1000 - 16                              # equal ratings: expected 0.5
    e12 = 1 / (1 + 10 ** ((1000 - r1) / 400))
    r1, r2 = r1 + 32 * (0.5 - e12), 1000 - 32 * (0.5 - e12)
    e20 = 1 / (1 + 10 ** ((r0 - r2) / 400))
    r2, r0 = r2 + 32 * (1 - e20), r0 - 32 * (1 - e20)
    for player, (g, e) in enumerate(zip(got, (r0, r1, r2))):
        assert math.isclose(g, e, rel_tol=1e-12), f"Elo rating of player {player}: {g:.6f}, expected {e:.6f}"
    reordered = student.elo_ratings([(2, 0, 1), (1, 2, 0.5), (0, 1, 1)], 3, k=32)
    assert not all(math.isclose(a, b) for a, b in zip(got, reordered)), "Elo depends on the order of the comparisons"
    scaled = student.elo_ratings([(0, 1, 1)], 2, k=10, initial=1500, scale=100)
    assert scaled == pytest.approx([1505, 1495])


# -- 10.12-10.13 ----------------------------------------------------------------------------------------------
@pytest.mark.exercise("10.12")
@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_bootstrap_interval_is_the_percentile_interval(student, statistic):
    values = torch.randn(25, generator=torch.Generator().manual_seed(8))
    for n_resamples, confidence, seed in ((1000, 0.95, 0), (333, 0.8, 5)):
        indices = torch.randint(0, 25, (n_resamples, 25), generator=torch.Generator().manual_seed(seed))
        resampled = values.double()[indices]
        stats = resampled.mean(-1) if statistic == "mean" else resampled.median(-1).values
        expected = torch.quantile(stats, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=F64)).tolist()
        before = values.clone()
        got = student.bootstrap_interval(values, statistic, n_resamples, confidence, seed)
        assert_unchanged(values, before, what="the caller's values")
        assert len(got) == 2 and all(math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-12) for g, e in zip(got, expected)), (
            f"bootstrap_interval({statistic!r}, n_resamples={n_resamples}, confidence={confidence}, seed={seed}) = "
            f"{got}, expected {expected}")
    if statistic == "mean":
        import numpy as np
        from scipy.stats import bootstrap

        scipy = bootstrap((values.numpy().astype(np.float64),), np.mean, n_resamples=20000, method="percentile",
                          random_state=0).confidence_interval
        ours = student.bootstrap_interval(values, "mean", 20000, 0.95, 1)
        assert abs(ours[0] - scipy.low) < 0.03 and abs(ours[1] - scipy.high) < 0.03, (
            f"95 % interval of the mean {ours}, SciPy's percentile bootstrap {tuple(scipy)}")


@pytest.mark.exercise("10.13")
def test_position_bias_by_hand(student):
    got = student.position_bias(["A", "A", "B", "tie", "A"], ["B", "A", "A", "tie", "tie"])
    assert math.isclose(got["consistency"], 3 / 5), (
        f"consistent pairs: (A, B), (B, A) and (tie, tie): 3 of 5, got {got['consistency']}")
    assert math.isclose(got["first_position_rate"], 5 / 7), (
        f"non-tie verdicts A A B A / B A A: 5 of 7 pick the answer shown first, got {got['first_position_rate']}")
    unbiased = student.position_bias(["A", "B"], ["B", "A"])
    assert unbiased == {"consistency": 1.0, "first_position_rate": 0.5}


# -- not graded: the course's harness --------------------------------------------------------------------------
@pytest.mark.parametrize("num_fewshot, doc_to_text", [(0, "{question}"), (2, "{question}"),
                                                     (2, "On {topic}: {question}")])
def test_run_task_scores_a_multiple_choice_task_as_lm_eval_does(solution_mode, chat_tokenizer, tmp_path, num_fewshot,
                                                                doc_to_text):
    from course_lib.evaluation import run_task

    model = tiny_llama("cpu", len(chat_tokenizer), seed=8, pad=chat_tokenizer.pad_token_id).eval()
    task = mc_task(num_fewshot, doc_to_text)
    results, samples = lm_eval_multiple_choice(model, chat_tokenizer, tmp_path, task)
    ours = run_task(model, chat_tokenizer, task, batch_size=3)
    for sample, mine in zip(samples, ours["samples"], strict=True):
        assert sample["arguments"][0][0] == mine["prompt"], "the same prompt as lm-eval's"
        assert mine["log_likelihoods"] == pytest.approx([float(r[0][0]) for r in sample["resps"]], rel=1e-5, abs=1e-5)
    for metric in ("acc", "acc_norm"):
        assert ours["metrics"][metric] == pytest.approx(results[f"{metric},none"])
        low, high = ours["intervals"][metric]
        assert low <= ours["metrics"][metric] <= high


def test_course_tasks_ask_held_out_questions_with_one_right_choice(solution_mode):
    from course_lib.evaluation import BENCHMARK_SIZE, course_tasks, task_contamination
    from course_lib.instruction_data import example_text, instruction_dataset

    tasks = {t.name: t for t in course_tasks()}
    assert set(tasks) == {"arithmetic", "string", "sorting", "stdlib", "naming", "naming_mc", "stdlib_mc", "arithmetic_mc"}
    test_ids = set(instruction_dataset("test")["id"])
    for task in tasks.values():
        assert len(task.docs) == BENCHMARK_SIZE and {d["id"] for d in task.docs} <= test_ids
        assert not {d["id"] for d in task.fewshot_docs} & test_ids, f"{task.name}: a shot is a test question"
        if task.output_type == "multiple_choice":
            for doc in task.docs:
                assert len(set(doc["choices"])) == len(doc["choices"]) and doc["choices"][doc["answer"]] == doc["output"]
    train = [example_text(r) for r in instruction_dataset("train")]
    clean = task_contamination(tasks["stdlib"], train)
    assert clean["fraction"] == 0.0, f"Chapter 6's split is decontaminated, yet {clean['contaminated']} were found"
    planted = train + [f"{tasks['stdlib'].docs[3]['question']} {tasks['stdlib'].docs[3]['answer']}"]
    assert task_contamination(tasks["stdlib"], planted)["contaminated"] == [3]


def test_the_contamination_experiment_reports_leaked_and_fresh_questions_before_and_after(solution_mode):
    from course_lib.evaluation import contamination_experiment

    result = contamination_experiment("tiny", n=4, copies=2, steps=2)
    assert set(result["leaked"]) == set(result["fresh"]) == {"before", "after"}
    assert all(0.0 <= v <= 1.0 for part in ("leaked", "fresh") for v in result[part].values())
    assert result["found"] == 4, "every leaked question is found in the contaminated training rows"
    assert result["training_rows"] > 4 * 2


def test_a_judge_gives_a_verdict_per_pair_and_its_position_bias_is_measured(solution_mode, chat_tokenizer):
    from course_lib.evaluation import JUDGE_TEMPLATE, judge_verdicts, position_bias
    from course_lib.instruct import template_slots

    assert template_slots(JUDGE_TEMPLATE) == ["question", "first", "second"]
    model = tiny_llama("cpu", len(chat_tokenizer), seed=9, pad=chat_tokenizer.pad_token_id).eval()
    pairs = [("What is 2 plus 3?", "5", "6"), ("Reverse lion.", "noil", "lion"), ("Sort: b a", "a b", "b a")]
    first = judge_verdicts(model, chat_tokenizer, pairs, batch_size=2)
    swapped = judge_verdicts(model, chat_tokenizer, [(q, b, a) for q, a, b in pairs])
    assert len(first) == len(swapped) == 3 and set(first + swapped) <= {"A", "B"}
    bias = position_bias(first, swapped)
    assert 0.0 <= bias["consistency"] <= 1.0 and 0.0 <= bias["first_position_rate"] <= 1.0


def test_leaderboard_table_and_plot_of_a_made_up_board():
    import matplotlib

    from course_lib.evaluation import leaderboard_rows, leaderboard_table, plot_leaderboard

    matplotlib.use("Agg")
    run = {"output_type": "multiple_choice", "metric": "acc_norm", "metrics": {"acc": 0.5, "acc_norm": 0.75},
           "intervals": {"acc": (0.25, 0.75), "acc_norm": (0.5, 1.0)}}
    generated = {"output_type": "generate_until", "metric": "exact_match", "metrics": {"exact_match": 0.2},
                 "intervals": {"exact_match": (0.1, 0.3)}}
    board = {"tasks": {"a": {"mc": run, "gen": generated}, "b": {"mc": run, "gen": generated}},
             "corpus": {"a": {"perplexity": 30.0, "bits_per_byte": 1.5}, "b": {"perplexity": 40.0, "bits_per_byte": 1.7}}}
    rows = leaderboard_rows(board)
    assert rows[0]["mc"] == (0.75, 0.5, 1.0) and rows[0]["gen"] == (0.2, 0.1, 0.3)
    assert rows[0]["mean"] == pytest.approx(0.475)
    table = leaderboard_table(board)
    assert "| a | 75 (50-100) | 20 (10-30) | 47.5 | 30.0 | 1.500 |" in table, table
    assert len(plot_leaderboard(board).lines) >= 2


# -- not graded: bad input is refused before your code runs, with the argument's name ---------------------
@pytest.mark.parametrize("call, error, name", [
    (lambda ev: ev.corpus_perplexity(torch.nn.Linear(2, 2), [{"input_ids": torch.ones(1, 3, dtype=torch.long),
                                                               "attention_mask": torch.tensor([[0, 1, 1]])}]),
     ValueError, "attention_mask"),
    (lambda ev: ev.corpus_perplexity(torch.nn.Linear(2, 2), []), TypeError, "batches"),
    (lambda ev: ev.sliding_window_nll(torch.nn.Linear(2, 2), torch.ones(1, 5, dtype=torch.long), 4, 5), ValueError,
     "stride"),
    (lambda ev: ev.sliding_window_nll(torch.nn.Linear(2, 2), torch.ones(2, 5, dtype=torch.long), 4, 2), ValueError,
     "input_ids"),
    (lambda ev: ev.bits_per_byte(1.0, 0), ValueError, "n_bytes"),
    (lambda ev: ev.tokenize_13a(None), TypeError, "text"),
    (lambda ev: ev.corpus_bleu(["a"], [["a", "b"]]), ValueError, "references"),
    (lambda ev: ev.corpus_bleu(["a"], [["a"]], smooth_method="add-one"), ValueError, "smooth_method"),
    (lambda ev: ev.corpus_bleu(["a"], ["a"]), TypeError, "references"),
    (lambda ev: ev.corpus_chrf(["a"], [["a"]], beta=0), ValueError, "beta"),
    (lambda ev: ev.choice_log_likelihoods(torch.nn.Linear(2, 2), [[]], [[1]]), ValueError, "context_ids"),
    (lambda ev: ev.choice_log_likelihoods(torch.nn.Linear(2, 2), [[1]], [[1], [2]]), ValueError, "continuation_ids"),
    (lambda ev: ev.multiple_choice_metrics([[-1.0, -2.0]], [["a", ""]], [0]), ValueError, "choices"),
    (lambda ev: ev.multiple_choice_metrics([[-1.0, -2.0]], [["a", "b"]], [2]), ValueError, "gold"),
    (lambda ev: ev.cohen_kappa([1, 2], [1]), ValueError, "rater_b"),
    (lambda ev: ev.cohen_kappa(["a"], ["b"], weights="linear"), TypeError, "ordinal"),
    (lambda ev: ev.bradley_terry([(0, 3, 1)], 3), ValueError, "player"),
    (lambda ev: ev.elo_ratings([(0, 1, 2)], 2), ValueError, "outcome"),
    (lambda ev: ev.bootstrap_interval(torch.ones(5), confidence=1.0), ValueError, "confidence"),
    (lambda ev: ev.bootstrap_interval(torch.ones(5), statistic="mode"), ValueError, "statistic"),
    (lambda ev: ev.position_bias(["A"], ["C"]), ValueError, "swapped_order"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_gets_an_error_naming_the_argument(solution_mode, call, error, name):
    from course_lib import evaluation

    with pytest.raises(error, match=name):
        call(evaluation)
