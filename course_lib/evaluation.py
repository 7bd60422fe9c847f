"""Chapter 10: evaluation: perplexity, BLEU and chrF, multiple choice, contamination and human judgement.

A number about a model is only as good as the procedure that made it. This chapter implements the
metrics the field reports, each the way the reference tool computes it, so that the course's numbers
can be compared with published ones:

- **Perplexity** (10.1-10.3): ``exp`` of the token-weighted mean negative log-likelihood over a corpus
  (:func:`corpus_perplexity`, with Chapter 5's :func:`~course_lib.pretraining.causal_lm_loss`), over
  texts longer than the model's context with a sliding window (:func:`sliding_window_nll`, the recipe
  of the ``transformers`` documentation), and bits per byte (:func:`bits_per_byte`), which compares
  models whose tokenizers differ.
- **BLEU and chrF** (10.4-10.6): sacreBLEU's ``13a`` tokenization (:func:`tokenize_13a`), corpus BLEU
  with clipped n-gram precisions, the brevity penalty and the smoothing methods of Chen & Cherry
  (2014) (:func:`corpus_bleu`; Papineni et al., 2002; Post, 2018), and chrF, the character n-gram
  F-score (:func:`corpus_chrf`; Popović, 2015), with word n-grams as chrF++ (Popović, 2017).
- **Multiple choice by log-likelihood** (10.7-10.8): how the LM Evaluation Harness (Gao et al., 2024)
  scores a question with several answers: the log-probability of each answer given the question
  (:func:`choice_log_likelihoods`) and the accuracy of the best one, raw and normalised by the
  answer's length in characters (:func:`multiple_choice_metrics`: ``acc`` and ``acc_norm``).
- **Judges and ratings** (10.9-10.13): agreement between two raters beyond chance
  (:func:`cohen_kappa`; Cohen, 1960), ratings from pairwise preferences (:func:`bradley_terry`, fitted
  by Hunter's (2004) minorise-maximise iteration; :func:`elo_ratings`, as the first Chatbot Arena
  leaderboard did: Zheng et al., 2023), a percentile bootstrap interval (:func:`bootstrap_interval`;
  Efron & Tibshirani, 1993), and a model judge's position bias (:func:`position_bias`).

Around the exercises, implemented here: a benchmark harness that runs tasks declared as data on any
causal LM with the student's scoring (:class:`Task`, :func:`encode_pair`, :func:`run_task`, checked
against ``lm-eval`` through :func:`lm_eval_task_yaml`), contamination checks with Chapter 6's
:func:`~course_lib.instruct.find_contaminated` (:func:`task_contamination`) and a measured leak
(:func:`contamination_experiment`), the course benchmark (:func:`course_tasks`), corpus perplexity and
bits per byte of a model (:func:`corpus_scores`), and the cached course leaderboard of every model the
earlier chapters built (:func:`leaderboard`, ``python -m course_lib.evaluation``).

Conventions used by every exercise of this chapter:

- **Log-likelihoods are in nats** (natural logarithms) and float64 Python numbers or float32
  tensors as each function says; a negative log-likelihood (``nll``) is a sum over scored tokens.
- **Token-weighted**: a corpus-level mean divides the sum over every scored token by the number of
  scored tokens, never a mean of per-batch or per-text means (Chapter 5).
- **Texts are ``str``**; references are given as *streams*: ``references[k][i]`` is the ``k``-th
  reference of the ``i``-th hypothesis (sacreBLEU's layout), every stream as long as the hypotheses.
- **Seeds.** Random choices take an integer ``seed`` and draw from ``torch.Generator().manual_seed(seed)``
  as each contract says, so that the same call gives the same answer anywhere.
- Inputs are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import torch

from course_lib.checks import check_bool, check_int, check_number, check_tensor
from course_lib.exercises import exercise

BLEU_SMOOTHING = ("none", "floor", "add-k", "exp")
BLEU_SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}  # sacreBLEU's defaults
BLEU_LOG_ZERO = -9999999999.0   # sacreBLEU's log of a zero precision (the score becomes 0, not an error)
CHRF_PUNCTUATION = frozenset('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')   # split off words by chrF++ (10.6)
KAPPA_WEIGHTS = (None, "linear", "quadratic")


# -- validation: bad input is refused before an exercise runs, with the argument's name ----------------
def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module) or not callable(model):
        raise TypeError(f"model must be a torch.nn.Module that returns logits, got {type(model).__name__}")


def _check_texts(name: str, texts, allow_empty_list: bool = False) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
    if not texts and not allow_empty_list:
        raise ValueError(f"{name} must not be empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")


def _check_streams(hypotheses, references) -> None:
    _check_texts("hypotheses", hypotheses)
    if isinstance(references, str) or not isinstance(references, Sequence) or not references:
        raise TypeError("references must be a non-empty list of reference streams (lists of str)")
    for k, stream in enumerate(references):
        _check_texts(f"references[{k}]", stream)
        if len(stream) != len(hypotheses):
            raise ValueError(f"references[{k}] has {len(stream)} texts for {len(hypotheses)} hypotheses: "
                             "each stream holds one reference per hypothesis")


def _check_ids(name: str, ids) -> None:
    if isinstance(ids, torch.Tensor) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a list of lists of int, got {type(ids).__name__}")
    for i, row in enumerate(ids):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(f"{name}[{i}] must be a list of int")
        for token in row:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"{name}[{i}] must hold token ids (ints >= 0), got {token!r}")


def _validate_corpus_perplexity(model, batches) -> None:
    _check_model(model)
    if isinstance(batches, dict) or not isinstance(batches, Sequence) or not batches:
        raise TypeError("batches must be a non-empty list of {'input_ids', 'attention_mask'} dicts")
    counted = 0
    for i, batch in enumerate(batches):
        if not isinstance(batch, dict) or not {"input_ids", "attention_mask"} <= set(batch):
            raise TypeError(f"batches[{i}] must be a dict with 'input_ids' and 'attention_mask'")
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        check_tensor(f"batches[{i}]['input_ids']", input_ids, integer=True)
        check_tensor(f"batches[{i}]['attention_mask']", mask)
        if input_ids.ndim != 2 or mask.shape != input_ids.shape:
            raise ValueError(f"batches[{i}]: input_ids and attention_mask must both be (batch, seq), got "
                             f"{tuple(input_ids.shape)} and {tuple(mask.shape)}")
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"batches[{i}]['attention_mask'] must hold only 0 and 1")
        real = mask.bool()
        if input_ids.shape[1] == 0 or not real[:, 0].all() or (real[:, 1:] & ~real[:, :-1]).any():
            raise ValueError(f"each row of batches[{i}]['attention_mask'] must be 1s then 0s (at least one 1): "
                             "rows padded on the right")
        counted += int(real[:, 1:].sum())
    if counted == 0:
        raise ValueError("batches predict no token: a row needs at least two real tokens")


def _validate_sliding_window_nll(model, input_ids, max_length, stride) -> None:
    _check_model(model)
    check_tensor("input_ids", input_ids, integer=True)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (1, n) with n >= 2, got shape {tuple(input_ids.shape)}")
    check_int("max_length", max_length, 2)
    check_int("stride", stride, 1)
    if stride > max_length:
        raise ValueError(f"stride must be <= max_length ({max_length}), got {stride}: a larger stride skips tokens")


def _validate_bits_per_byte(nll, n_bytes) -> None:
    check_number("nll", nll, 0.0)
    check_int("n_bytes", n_bytes, 1)


def _validate_tokenize_13a(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")


def _validate_corpus_bleu(hypotheses, references, smooth_method="exp", smooth_value=None, max_order=4,
                          lowercase=False) -> None:
    _check_streams(hypotheses, references)
    if smooth_method not in BLEU_SMOOTHING:
        raise ValueError(f"smooth_method must be one of {BLEU_SMOOTHING}, got {smooth_method!r}")
    if smooth_value is not None:
        check_number("smooth_value", smooth_value, 0.0, open_minimum=True)
    check_int("max_order", max_order, 1)
    check_bool("lowercase", lowercase)


def _validate_corpus_chrf(hypotheses, references, char_order=6, word_order=0, beta=2.0) -> None:
    _check_streams(hypotheses, references)
    check_int("char_order", char_order, 1)
    check_int("word_order", word_order, 0)
    check_number("beta", beta, 0.0, open_minimum=True)


def _validate_choice_log_likelihoods(model, context_ids, continuation_ids, pad_token_id=0) -> None:
    _check_model(model)
    _check_ids("context_ids", context_ids)
    _check_ids("continuation_ids", continuation_ids)
    if not context_ids or len(context_ids) != len(continuation_ids):
        raise ValueError(f"context_ids and continuation_ids must be non-empty and as long as each other, got "
                         f"{len(context_ids)} and {len(continuation_ids)}")
    for i, (context, continuation) in enumerate(zip(context_ids, continuation_ids)):
        if not context:
            raise ValueError(f"context_ids[{i}] is empty: the first token of a continuation needs a context")
        if not continuation:
            raise ValueError(f"continuation_ids[{i}] is empty")
    check_int("pad_token_id", pad_token_id, 0)


def _validate_multiple_choice_metrics(log_likelihoods, choices, gold) -> None:
    if not isinstance(log_likelihoods, Sequence) or not log_likelihoods:
        raise TypeError("log_likelihoods must be a non-empty list (one list of floats per question)")
    if not isinstance(choices, Sequence) or len(choices) != len(log_likelihoods):
        raise ValueError("choices must hold one list of answer texts per question, as long as log_likelihoods")
    if not isinstance(gold, Sequence) or len(gold) != len(log_likelihoods):
        raise ValueError("gold must hold one index per question, as long as log_likelihoods")
    for q, (lls, texts, g) in enumerate(zip(log_likelihoods, choices, gold)):
        if not isinstance(lls, Sequence) or len(lls) < 2:
            raise ValueError(f"log_likelihoods[{q}] must list at least two choices' log-likelihoods")
        for ll in lls:
            check_number(f"log_likelihoods[{q}][...]", ll)
        _check_texts(f"choices[{q}]", texts)
        if len(texts) != len(lls):
            raise ValueError(f"choices[{q}] has {len(texts)} texts for {len(lls)} log-likelihoods")
        if any(not t for t in texts):
            raise ValueError(f"choices[{q}] holds an empty answer: acc_norm divides by its length")
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(lls):
            raise ValueError(f"gold[{q}] must be an index into its choices (0..{len(lls) - 1}), got {g!r}")


def _check_labels(name: str, labels) -> None:
    if isinstance(labels, (str, bytes, torch.Tensor)) or not isinstance(labels, Sequence) or not labels:
        raise TypeError(f"{name} must be a non-empty list of labels")
    for label in labels:
        if not isinstance(label, Hashable) or isinstance(label, float) and label != label:
            raise ValueError(f"{name} must hold hashable labels (no NaN), got {label!r}")


def _validate_cohen_kappa(rater_a, rater_b, weights=None) -> None:
    _check_labels("rater_a", rater_a)
    _check_labels("rater_b", rater_b)
    if len(rater_a) != len(rater_b):
        raise ValueError(f"rater_a and rater_b must rate the same items, got {len(rater_a)} and {len(rater_b)} labels")
    if weights not in KAPPA_WEIGHTS:
        raise ValueError(f"weights must be one of {KAPPA_WEIGHTS}, got {weights!r}")
    if weights is not None:
        for label in (*rater_a, *rater_b):
            if isinstance(label, bool) or not isinstance(label, (int, float)):
                raise TypeError(f"weighted kappa needs ordinal labels (numbers), got {label!r}")


def _check_comparisons(comparisons, n_players) -> None:
    check_int("n_players", n_players, 2)
    if isinstance(comparisons, (str, torch.Tensor)) or not isinstance(comparisons, Sequence) or not comparisons:
        raise TypeError("comparisons must be a non-empty list of (a, b, outcome) triples")
    for i, item in enumerate(comparisons):
        if not isinstance(item, Sequence) or len(item) != 3:
            raise TypeError(f"comparisons[{i}] must be (a, b, outcome), got {item!r}")
        a, b, outcome = item
        for player in (a, b):
            if isinstance(player, bool) or not isinstance(player, int) or not 0 <= player < n_players:
                raise ValueError(f"comparisons[{i}] names player {player!r}: players are 0..{n_players - 1}")
        if a == b:
            raise ValueError(f"comparisons[{i}] compares player {a} with itself")
        if outcome not in (0, 0.5, 1) or isinstance(outcome, bool):
            raise ValueError(f"comparisons[{i}]: outcome must be 1 (a wins), 0 (b wins) or 0.5 (a tie), got {outcome!r}")


def _validate_bradley_terry(comparisons, n_players, iterations=1000, tolerance=1e-10) -> None:
    _check_comparisons(comparisons, n_players)
    check_int("iterations", iterations, 1)
    check_number("tolerance", tolerance, 0.0)


def _validate_elo_ratings(comparisons, n_players, k=4.0, initial=1000.0, scale=400.0) -> None:
    _check_comparisons(comparisons, n_players)
    check_number("k", k, 0.0, open_minimum=True)
    check_number("initial", initial)
    check_number("scale", scale, 0.0, open_minimum=True)


def _validate_bootstrap_interval(values, statistic="mean", n_resamples=1000, confidence=0.95, seed=0) -> None:
    check_tensor("values", values, floating=True)
    if values.ndim != 1 or values.numel() < 2:
        raise ValueError(f"values must be 1-D with at least two entries, got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("values must be finite")
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    check_int("n_resamples", n_resamples, 1)
    check_number("confidence", confidence, 0.0, 1.0, open_minimum=True)
    if confidence == 1.0:
        raise ValueError("confidence must be < 1")
    check_int("seed", seed)


def _validate_position_bias(first_order, swapped_order) -> None:
    for name, verdicts in (("first_order", first_order), ("swapped_order", swapped_order)):
        if isinstance(verdicts, str) or not isinstance(verdicts, Sequence) or not verdicts:
            raise TypeError(f"{name} must be a non-empty list of 'A', 'B' or 'tie'")
        for v in verdicts:
            if v not in ("A", "B", "tie"):
                raise ValueError(f"{name} must hold 'A', 'B' or 'tie', got {v!r}")
    if len(first_order) != len(swapped_order):
        raise ValueError(f"first_order and swapped_order must judge the same pairs, got {len(first_order)} "
                         f"and {len(swapped_order)} verdicts")


# -- 10.1-10.3 perplexity -------------------------------------------------------------------------------
@exercise("10.1", points=2, validate=_validate_corpus_perplexity)
def corpus_perplexity(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The perplexity of ``model`` on a corpus given as padded batches.

    Args:
        model: a causal LM; ``model(input_ids=..., attention_mask=...).logits`` is ``(batch, seq, vocab)``.
        batches: dicts with ``input_ids`` ``(batch, seq)`` and ``attention_mask`` ``(batch, seq)`` (1 on
            real tokens, then 0 on the padding: rows padded on the right); batches may differ in shape.

    Returns:
        ``{"nll": float, "tokens": int, "perplexity": float}``: ``nll`` the sum over every predicted
        token of the corpus of ``-log p(token | the tokens before it in its row)``, ``tokens`` how many
        were predicted (every real token but the first of its row, which has nothing to be predicted
        from; padding is never predicted), and ``perplexity = exp(nll / tokens)``: one
        mean over all tokens of the corpus, not a mean of per-batch or per-row perplexities or losses.
        The model is run without gradients and left in the mode (train or eval) it came in; its
        dropout is off while it runs.

    Hint:
        Chapter 5's ``causal_lm_loss(logits, input_ids, attention_mask, reduction="sum")`` gives a
        batch's ``nll``; add the batches up (in float64) before dividing.
    """
    raise NotImplementedError("Exercise 10.1: implement corpus_perplexity in evaluation.py")


@exercise("10.2", points=3, validate=_validate_sliding_window_nll)
def sliding_window_nll(model: torch.nn.Module, input_ids: torch.Tensor, max_length: int, stride: int
                       ) -> dict[str, float]:
    """The negative log-likelihood of a text longer than the model's context, scored window by window.

    Args:
        model: a causal LM (as :func:`corpus_perplexity`).
        input_ids: ``(1, n)``, the whole text's token ids.
        max_length: the most tokens the model reads at once (its context).
        stride: how far each window starts after the previous one, ``1 <= stride <= max_length``.

    Returns:
        ``{"nll": float, "tokens": int}`` over the windows that start at ``0, stride, 2*stride, ...``
        while the previous window did not reach the end: the window starting at ``begin`` holds the
        tokens ``begin .. end-1`` with ``end = min(begin + max_length, n)`` and scores only the tokens
        no earlier window scored (``prev_end .. end-1``, with ``prev_end`` the previous window's
        ``end``, 0 for the first), each predicted from the tokens before it *in that window*; the
        window's first token is never scored (nothing in the window precedes it). With ``stride <
        max_length`` every token but the text's first is therefore scored exactly once (``tokens ==
        n - 1``), with at least ``max_length - stride`` tokens of context once the text is long enough;
        ``stride == max_length`` cuts the text into disjoint chunks and leaves each chunk's first token
        unscored; ``max_length >= n`` scores the text in one window.
        This is the recipe of the ``transformers`` documentation ("Perplexity of fixed-length
        models"). No gradients; the model's mode is kept, as in :func:`corpus_perplexity`.

    Hint:
        Keep ``prev_end``; in each window the scored tokens are its last ``end - prev_end`` positions
        (less the window's first position, when they include it). Chapter 5's ``causal_lm_loss`` with the
        other positions' labels set to ``-100`` and ``reduction="sum"`` sums exactly those.
    """
    raise NotImplementedError("Exercise 10.2: implement sliding_window_nll in evaluation.py")


@exercise("10.3", points=1, validate=_validate_bits_per_byte)
def bits_per_byte(nll: float, n_bytes: int) -> float:
    """Bits per byte of a text: its negative log-likelihood (``nll``, in nats, summed over every token
    of the text) spread over the ``n_bytes`` bytes of its UTF-8 encoding, in bits: ``nll / (n_bytes
    * ln 2)``. Unlike perplexity it does not depend on how a tokenizer cuts the text, so it compares
    models with different tokenizers, as long as each ``nll`` covers the whole text."""
    raise NotImplementedError("Exercise 10.3: implement bits_per_byte in evaluation.py")


# -- 10.4-10.6 BLEU and chrF ----------------------------------------------------------------------------
@exercise("10.4", points=1, validate=_validate_tokenize_13a)
def tokenize_13a(text: str) -> str:
    """sacreBLEU's default tokenization (``"13a"``, that of ``mteval-v13a.pl``, used by WMT).

    Returns the tokens joined by single spaces, with no space at either end, after, in this order:

    1. removing ``<skipped>``; removing ``-`` followed by a newline (a hyphenated line break); turning
       the other newlines into spaces;
    2. replacing ``&quot;``, ``&amp;``, ``&lt;`` and ``&gt;`` by ``"``, ``&``, ``<`` and ``>``;
    3. padding the text with one space at each end, then putting spaces around every character of
       ``{ | } ~ [ \\ ] ^ _ ` (space) ! " # $ % & ( ) * + : ; < = > ? @ /`` (the ranges ``{-~``,
       ``[-```, `` -&``, ``(-+``, ``:-@`` and ``/``; not ``'``, ``,``, ``-`` or ``.``);
    4. separating a period or comma from a non-digit before it (``"a." -> "a ."``), then from a
       non-digit after it (``".a" -> ". a"``): ``3.14`` and ``1,000`` stay whole;
    5. separating a dash that follows a digit (``"2-3" -> "2 - 3"``, ``"a-b"`` stays);
    6. collapsing every run of whitespace into one space.

    Steps 3-5 are regular-expression substitutions applied one after the other over the whole text.
    """
    raise NotImplementedError("Exercise 10.4: implement tokenize_13a in evaluation.py")


@exercise("10.5", points=4, validate=_validate_corpus_bleu)
def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], smooth_method: str = "exp",
                smooth_value: float | None = None, max_order: int = 4, lowercase: bool = False) -> dict:
    """Corpus BLEU (Papineni et al., 2002) as ``sacrebleu.corpus_bleu`` computes it.

    Args:
        hypotheses: the system's outputs, one per segment.
        references: reference streams: ``references[k][i]`` is the ``k``-th reference of segment ``i``.
        smooth_method: ``"none"``, ``"floor"``, ``"add-k"`` or ``"exp"`` (Chen & Cherry, 2014).
        smooth_value: the constant of ``"floor"`` (default 0.1) and ``"add-k"`` (default 1).
        max_order: the longest n-gram counted.
        lowercase: lowercase every text first.

    Returns:
        ``{"score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"}``:

        - Each text (optionally lowercased, trailing whitespace stripped) is tokenized by your
          :func:`tokenize_13a` and split on spaces.
        - Per segment: ``totals[n-1]`` grows by the hypothesis's number of ``n``-grams and
          ``counts[n-1]`` by its *clipped* matches: each distinct n-gram counts at most as often as
          it occurs in the reference that has it most often. ``sys_len`` grows by the hypothesis's
          length and ``ref_len`` by the length of the reference closest to it (the shorter on a tie).
        - Over the corpus (sums of the above, lists of ``max_order`` ints): ``bp = 1`` if ``sys_len
          >= ref_len``, else ``exp(1 - ref_len / sys_len)`` (0 when ``sys_len == 0``).
        - If no n-gram of any order matched: ``score`` 0 and every precision 0. Otherwise, for
          ``n = 1 .. max_order`` in order: with ``"add-k"`` and ``n > 1``, ``smooth_value`` is added
          to ``counts[n-1]`` and ``totals[n-1]`` (the returned lists show it); if ``totals[n-1] == 0``
          the loop stops (this and higher precisions stay 0); a nonzero count gives the precision
          ``100 * counts / totals``; a zero count gives 0, except ``100 * smooth_value / totals`` with
          ``"floor"`` and, with ``"exp"``, ``100 / (2^j * totals)`` for the ``j``-th zero count so far.
        - ``score = bp * exp(mean over n = 1 .. max_order of log(precisions[n-1]))`` with the log of
          0 taken as ``BLEU_LOG_ZERO`` (the score is then 0 to every printed digit), on the 0-100
          scale. ``precisions`` are on the same scale, floats.
    """
    raise NotImplementedError("Exercise 10.5: implement corpus_bleu in evaluation.py")


@exercise("10.6", points=3, validate=_validate_corpus_chrf)
def corpus_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]], char_order: int = 6,
                word_order: int = 0, beta: float = 2.0) -> float:
    """Corpus chrF (Popović, 2015), or chrF++ with ``word_order=2`` (Popović, 2017), as
    ``sacrebleu.corpus_chrf`` computes it (its defaults: no lowercasing, no epsilon smoothing).

    Returns the score on the 0-100 scale, from these statistics:

    - Character n-grams of a text, for ``n = 1 .. char_order``: those of the text with *all*
      whitespace removed. Word n-grams, for ``n = 1 .. word_order``: the text split on whitespace,
      then every word longer than one character that ends with a punctuation character
      (:data:`CHRF_PUNCTUATION`) split into the word and that character, or else, if it begins with
      one, into that character and the rest (one split per word, the end first).
    - For a hypothesis and a reference, per order (the char orders, then the word orders): the
      hypothesis's n-gram count (taken as 0 when the reference has no n-gram of that order), the
      reference's, and the matches (per distinct n-gram the smaller of its two counts, summed).
    - The F-score of such statistics: over the orders where both the hypothesis and the reference
      have at least one n-gram, average the precisions (matches / hypothesis count) and the recalls
      (matches / reference count); then ``100 * (1 + beta^2) P R / (beta^2 P + R)`` of the averages
      (0 when no order counts or ``P + R == 0``).
    - Each segment keeps the statistics of its reference with the highest F-score (the first on a
      tie); the corpus's statistics are their sums, and the score is their F-score.
    """
    raise NotImplementedError("Exercise 10.6: implement corpus_chrf in evaluation.py")


# -- 10.7-10.8 multiple choice by log-likelihood ---------------------------------------------------------
@exercise("10.7", points=3, validate=_validate_choice_log_likelihoods)
def choice_log_likelihoods(model: torch.nn.Module, context_ids: Sequence[list[int]],
                           continuation_ids: Sequence[list[int]], pad_token_id: int = 0) -> dict[str, list]:
    """How likely ``model`` finds each continuation after its context (the harness's ``loglikelihood``).

    Args:
        model: a causal LM (as :func:`corpus_perplexity`).
        context_ids: one token-id list per request, non-empty.
        continuation_ids: the tokens to score after each context, non-empty.
        pad_token_id: what fills the rows of a padded batch (it must not change the result).

    Returns:
        ``{"log_likelihood": list[float], "is_greedy": list[bool]}``, one entry per request:
        ``log_likelihood`` the sum over the continuation's tokens of ``log p(token | context and the
        continuation's tokens before it)``, and ``is_greedy`` whether every continuation token is the
        model's most likely token at its position (what the harness reports as ``is_greedy``). The
        requests may be run in padded batches of any size: each row's result must equal the one of
        the row run alone. No gradients; the model's mode is kept, as in :func:`corpus_perplexity`.

    Hint:
        Chapter 9's ``completion_batch`` and ``sequence_log_probs`` are this computation with the
        context as the prompt; ``is_greedy`` compares each scored token with the ``argmax`` of the
        logits one position before it.
    """
    raise NotImplementedError("Exercise 10.7: implement choice_log_likelihoods in evaluation.py")


@exercise("10.8", points=2, validate=_validate_multiple_choice_metrics)
def multiple_choice_metrics(log_likelihoods: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
                            gold: Sequence[int]) -> dict[str, float]:
    """Accuracy of choosing the most likely answer, as the LM Evaluation Harness scores
    ``multiple_choice`` tasks.

    Args:
        log_likelihoods: per question, each choice's log-likelihood (:func:`choice_log_likelihoods`).
        choices: per question, each choice's text, as the task lists it (without the space or other
            delimiter that joins it to the question).
        gold: per question, the index of the right choice.

    Returns:
        ``{"acc": float, "acc_norm": float}``, means over the questions of 1 where the predicted
        index equals ``gold`` and 0 otherwise: for ``acc`` the index of the largest log-likelihood,
        for ``acc_norm`` of the largest log-likelihood divided by the choice's length **in
        characters** (``len(text)``), which no longer favours short answers just for being short.
        A tie goes to the first such index (``numpy.argmax``).
    """
    raise NotImplementedError("Exercise 10.8: implement multiple_choice_metrics in evaluation.py")


# -- 10.9-10.13 judges and ratings ------------------------------------------------------------------------
@exercise("10.9", points=2, validate=_validate_cohen_kappa)
def cohen_kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable], weights: str | None = None) -> float:
    """Cohen's kappa (Cohen, 1960): agreement between two raters of the same items beyond chance.

    ``kappa = 1 - sum(w * observed) / sum(w * expected)`` over the ``K x K`` table of the labels either
    rater used (sorted): ``observed[i][j]`` the share of items rated ``i`` by ``a`` and ``j`` by ``b``,
    ``expected`` the outer product of the two raters' label frequencies (what independent raters
    with those habits would produce), and the disagreement weights ``w[i][j]`` 0 on the diagonal and
    1 off it (``weights=None``), or ``|i - j|`` (``"linear"``) or ``(i - j)^2`` (``"quadratic"``) for the
    labels' positions ``i, j`` in the sorted list. Equals ``sklearn.metrics.cohen_kappa_score``. Raw
    agreement is not kappa: two raters who both say "yes" 90 % of the time agree on 82 % of items by
    chance. Returns a float (``nan`` when ``expected`` has no weight off the diagonal, i.e. both raters
    used one and the same label throughout)."""
    raise NotImplementedError("Exercise 10.9: implement cohen_kappa in evaluation.py")


@exercise("10.10", points=3, validate=_validate_bradley_terry)
def bradley_terry(comparisons: Sequence[tuple[int, int, float]], n_players: int, iterations: int = 1000,
                  tolerance: float = 1e-10) -> list[float]:
    """Bradley-Terry strengths from pairwise comparisons, by maximum likelihood.

    The model: ``P(a beats b) = p_a / (p_a + p_b)`` with ``p > 0``. ``comparisons`` are ``(a, b,
    outcome)`` with ``outcome`` 1 if ``a`` won, 0 if ``b`` won and 0.5 for a tie (half a win each).
    Fit by the minorise-maximise iteration of Hunter (2004): ``p_i <- W_i / sum over i's comparisons
    of 1 / (p_i + p_opponent)``, ``W_i`` the wins of ``i`` (ties halved), all players updated together
    from the previous ``p``, starting from all ``p = 1``, each ``p`` then divided by their geometric
    mean; stop after ``iterations`` updates or once no ``log p`` moved by more than ``tolerance``.

    Returns ``log p`` per player (a list of ``n_players`` floats that sum to 0). This is the maximum
    of the likelihood, so a logistic regression of the outcomes on ``+1`` for ``a``, ``-1`` for ``b``
    (no intercept, no penalty) gives the same numbers up to the shift. The maximum exists when every
    player has won and lost at least once against a set of players that connects everyone (Zermelo's
    condition); otherwise :class:`ValueError` names a player without a win or without a loss.
    """
    raise NotImplementedError("Exercise 10.10: implement bradley_terry in evaluation.py")


@exercise("10.11", points=2, validate=_validate_elo_ratings)
def elo_ratings(comparisons: Sequence[tuple[int, int, float]], n_players: int, k: float = 4.0,
                initial: float = 1000.0, scale: float = 400.0) -> list[float]:
    """Online Elo ratings, updated one comparison at a time in the given order.

    Every player starts at ``initial``. For a comparison ``(a, b, outcome)`` (``outcome`` as in
    :func:`bradley_terry`): ``expected = 1 / (1 + 10 ** ((R_b - R_a) / scale))``, then ``R_a += k *
    (outcome - expected)`` and ``R_b -= k * (outcome - expected)``, both from the ratings before this
    comparison. Returns the final ratings, a list of ``n_players`` floats. Unlike
    :func:`bradley_terry` the result depends on the order of the comparisons (the reason the
    Chatbot Arena moved from Elo to a Bradley-Terry fit)."""
    raise NotImplementedError("Exercise 10.11: implement elo_ratings in evaluation.py")


@exercise("10.12", points=2, validate=_validate_bootstrap_interval)
def bootstrap_interval(values: torch.Tensor, statistic: str = "mean", n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap confidence interval (Efron & Tibshirani, 1993) for the mean or the
    median of ``values`` ``(n,)``.

    Draw ``indices = torch.randint(0, n, (n_resamples, n), generator=torch.Generator().manual_seed(seed))``
    (one resample of ``n`` values with replacement per row), compute the statistic of each resample
    in float64 (``torch.median`` for the median: the lower of the two middle values), and return the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those statistics with linear
    interpolation (``torch.quantile``'s default), as two floats. With the same arguments the same
    interval comes back anywhere."""
    raise NotImplementedError("Exercise 10.12: implement bootstrap_interval in evaluation.py")


@exercise("10.13", points=1, validate=_validate_position_bias)
def position_bias(first_order: Sequence[str], swapped_order: Sequence[str]) -> dict[str, float]:
    """How much a judge's verdicts depend on which answer it saw first.

    Each pair of answers was judged twice: ``first_order[i]`` with answer X shown as "A" and Y as
    "B", ``swapped_order[i]`` with Y as "A" and X as "B". A verdict is ``"A"``, ``"B"`` or ``"tie"``.
    Returns ``{"consistency", "first_position_rate"}``: the share of pairs whose two verdicts name the
    same answer (``"A"`` then ``"B"``, ``"B"`` then ``"A"``, or two ties), and the share of all the
    judge's non-tie verdicts (both orders together) that picked the answer shown first (0.5 without
    bias; ``nan`` when there is none)."""
    raise NotImplementedError("Exercise 10.13: implement position_bias in evaluation.py")


# -- the benchmark harness (not graded): tasks declared as data, run over any causal LM ----------------
OUTPUT_TYPES = ("multiple_choice", "generate_until")


@dataclass(frozen=True)
class Task:
    """A benchmark task declared as data, with the LM Evaluation Harness's names for its fields.

    Every document has a ``question``. A ``"multiple_choice"`` task's documents list their
    ``choices`` (texts) and the index of the right one as ``answer``; it is scored by comparing the
    choices' log-likelihoods after the prompt (``acc``, ``acc_norm``). A ``"generate_until"`` task's
    documents hold the expected text as ``answer`` and a ``family`` of Chapter 6's instruction data;
    the model's greedy answer, up to the end of its line, is judged by Chapter 6's
    :func:`~course_lib.instruction_data.check_answer` (``exact_match``).

    The prompt of a question is Chapter 6's :func:`~course_lib.instruct.few_shot_prompt`:
    ``"Question: <question>\\nAnswer:"``, after the first ``num_fewshot`` documents of
    ``fewshot_docs`` solved in the same format (the harness's ``first_n`` sampler), joined by a blank
    line, and a choice is scored as ``" " + choice``: exactly what ``lm-eval`` builds for a YAML task
    with ``doc_to_text: "Question: {{question}}\\nAnswer:"`` (see :func:`lm_eval_task_yaml`).
    """

    name: str
    output_type: str
    docs: tuple[dict, ...]
    num_fewshot: int = 0
    fewshot_docs: tuple[dict, ...] = ()
    max_new_tokens: int = 16
    metric: str = ""          # the score a leaderboard reports: "acc" (default) or "acc_norm"; "exact_match"
    doc_to_text: str = "{question}"   # the question's text: a template over the document's fields

    def __post_init__(self):
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {self.output_type!r}")
        allowed = ("acc", "acc_norm") if self.output_type == "multiple_choice" else ("exact_match",)
        if not self.metric:
            object.__setattr__(self, "metric", allowed[0])
        elif self.metric not in allowed:
            raise ValueError(f"{self.name}: metric must be one of {allowed} for {self.output_type}, got {self.metric!r}")
        if "{{" in self.doc_to_text or "}}" in self.doc_to_text:
            raise ValueError(f"{self.name}: doc_to_text takes {{field}} slots only, no literal braces")

    def question(self, doc: dict) -> str:
        """The document's question text: :attr:`doc_to_text` filled with its fields (Chapter 6's
        :func:`~course_lib.instruct.fill_template`, which names a field the document lacks)."""
        from course_lib.instruct import fill_template, template_slots

        return fill_template(self.doc_to_text, {k: doc.get(k) for k in template_slots(self.doc_to_text) if k in doc})
        if self.num_fewshot > len(self.fewshot_docs):
            raise ValueError(f"{self.name}: num_fewshot={self.num_fewshot} but only {len(self.fewshot_docs)} fewshot_docs")

    def target(self, doc: dict) -> str:
        """The right answer's text."""
        return doc["choices"][doc["answer"]] if self.output_type == "multiple_choice" else doc["answer"]

    def prompt(self, doc: dict, chat_tokenizer=None) -> str:
        """The context the model continues: the shots, then the question (Chapter 6's few-shot format),
        or with a ``chat_tokenizer`` the question alone as a user turn of its chat template, followed by
        the assistant's generation prompt (how Chapter 7's chat models are asked; no shots)."""
        from course_lib.instruct import few_shot_prompt

        if chat_tokenizer is not None:
            return chat_tokenizer.apply_chat_template([{"role": "user", "content": self.question(doc)}],
                                                      add_generation_prompt=True, tokenize=False)
        shots = [{"question": self.question(s), "answer": self.target(s)} for s in self.fewshot_docs[:self.num_fewshot]]
        return few_shot_prompt(self.question(doc), shots)


def lm_eval_task_yaml(task: Task, data_file: Path | str) -> str:
    """The same multiple-choice task as an ``lm-eval`` YAML task (its ``doc_to_text`` as Jinja), reading
    its documents from ``data_file`` (JSON lines, one document per line; its few-shot documents in a
    ``fewshot`` split of ``data_file`` with ``.fewshot`` before the suffix): what the course's numbers
    are checked against."""
    from course_lib.instruct import template_slots

    if task.output_type != "multiple_choice":
        raise ValueError("only multiple-choice tasks are written as lm-eval YAML here")
    text = task.doc_to_text
    for slot in template_slots(text):
        text = text.replace("{" + slot + "}", "{{" + slot + "}}")          # Jinja's slot
    data_file = Path(data_file)
    fewshot_file = data_file.with_suffix(".fewshot" + data_file.suffix)
    return (f"task: {task.name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
            f"    fewshot: {fewshot_file}\ntest_split: test\nfewshot_split: fewshot\nfewshot_config:\n"
            f"  sampler: first_n\noutput_type: multiple_choice\n"
            f"doc_to_text: \"Question: {text}\\nAnswer:\"\ndoc_to_choice: \"{{{{choices}}}}\"\n"
            f"doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as the LM Evaluation Harness cuts them: spaces
    at the end of the context move to the continuation, the two are encoded together, and the
    continuation's ids are those after the context's own (a token that straddles the boundary counts
    for the continuation). No special tokens are added."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[:len(context_ids)], whole[len(context_ids):]


def _batched_log_likelihoods(model, requests: Sequence[tuple[list[int], list[int]]], pad_token_id: int,
                             batch_size: int) -> tuple[list[float], list[bool]]:
    """:func:`choice_log_likelihoods` of every ``(context_ids, continuation_ids)``, longest first in
    batches of ``batch_size`` (little padding), back in the requests' order."""
    order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
    log_likelihoods, greedy = [0.0] * len(requests), [False] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        out = choice_log_likelihoods(model, [requests[i][0] for i in chunk], [requests[i][1] for i in chunk],
                                     pad_token_id=pad_token_id)
        for i, ll, g in zip(chunk, out["log_likelihood"], out["is_greedy"]):
            log_likelihoods[i], greedy[i] = float(ll), bool(g)
    return log_likelihoods, greedy


def run_task(model: torch.nn.Module, tokenizer, task: Task, chat: bool = False, batch_size: int = 32,
             n_resamples: int = 1000, seed: int = 0) -> dict:
    """``task`` run on ``model``: ``{"task", "output_type", "metric", "n", "metrics", "intervals", "samples"}``.

    ``chat``: ask in the chat template (:meth:`Task.prompt` with the tokenizer; a choice is scored
    right after the generation prompt, with no space, and a generated answer ends at the end of the
    assistant's turn), else in the few-shot format.

    ``metrics`` maps ``acc`` and ``acc_norm`` (:func:`multiple_choice_metrics` of the choices'
    :func:`choice_log_likelihoods`) or ``exact_match`` to a share of the documents; ``intervals`` each
    metric's 95 % percentile bootstrap interval over the documents (:func:`bootstrap_interval`);
    ``samples`` per document what was asked and answered (the choices' log-likelihoods, or the
    generated text)."""
    from course_lib.instruct import extract_answer
    from course_lib.instruction_data import check_answer
    from course_lib.sft import generate_answers, line_answers

    prompts = [task.prompt(doc, tokenizer if chat else None) for doc in task.docs]
    delimiter = "" if chat else " "
    samples, per_doc = [], {}
    if task.output_type == "multiple_choice":
        requests = [encode_pair(tokenizer, prompt, delimiter + choice) for prompt, doc in zip(prompts, task.docs)
                    for choice in doc["choices"]]
        lls, _ = _batched_log_likelihoods(model, requests, tokenizer.pad_token_id, batch_size)
        position = 0
        for prompt, doc in zip(prompts, task.docs):
            doc_lls = lls[position:position + len(doc["choices"])]
            position += len(doc["choices"])
            scores = {m: multiple_choice_metrics([doc_lls], [doc["choices"]], [doc["answer"]])[m] for m in ("acc", "acc_norm")}
            for metric, value in scores.items():
                per_doc.setdefault(metric, []).append(value)
            samples.append({"prompt": prompt, "log_likelihoods": doc_lls, "answer": doc["answer"], **scores})
    else:
        if chat:   # the answer ends with the assistant's turn
            answers = [extract_answer(t) for t in generate_answers(
                model, tokenizer, [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
                task.max_new_tokens, batch_size)]
        else:
            answers = line_answers(model, tokenizer, prompts, task.max_new_tokens, batch_size)
        for prompt, doc, answer in zip(prompts, task.docs, answers):
            right = float(check_answer(doc["family"], doc, answer))
            per_doc.setdefault("exact_match", []).append(right)
            samples.append({"prompt": prompt, "generated": answer, "answer": doc["answer"], "exact_match": right})
    metrics = {m: sum(v) / len(v) for m, v in per_doc.items()}
    intervals = {m: bootstrap_interval(torch.tensor(v, dtype=torch.float64), "mean", n_resamples, 0.95, seed)
                 for m, v in per_doc.items()}
    return {"task": task.name, "output_type": task.output_type, "metric": task.metric, "n": len(task.docs),
            "metrics": metrics, "intervals": intervals, "samples": samples}


# -- the course benchmark and leaderboard (not graded) ---------------------------------------------------
COURSE_MODELS = ("random", "pretrained", "sft", "lora", "qlora", "dpo", "grpo")
CHAT_MODELS = ("sft", "lora", "qlora", "dpo", "grpo")   # asked in the chat template; the others few-shot
BENCHMARK_SIZE = 50        # questions per task
DISTRACTORS = 3            # wrong choices per multiple-choice question


def _doc(row: dict) -> dict:
    from course_lib.instruction_data import user_content

    return {"question": user_content(row["instruction"], row["input"]), "answer": row["output"],
            "family": row["family"], "id": row["id"], "input": row["input"], "output": row["output"]}


def _with_choices(doc: dict, wrong: Sequence[str], rng) -> dict:
    choices = [doc["answer"], *wrong]
    rng.shuffle(choices)
    return {**doc, "choices": choices, "answer": choices.index(doc["answer"])}


def _arithmetic_distractors(answer: str, rng) -> list[str]:
    value = int(answer)
    near = sorted({value + d for d in (-10, -2, -1, 1, 2, 10, 100)} - {value})
    return [str(v) for v in rng.sample(near, DISTRACTORS)]


def course_tasks(n: int = BENCHMARK_SIZE, num_fewshot: int = 3, seed: int = 0) -> list[Task]:
    """The course benchmark, from Chapter 6's held-out test split (few-shot examples from its validation
    split): per family, its first ``n`` questions to answer (``"generate_until"``, judged by Chapter 6's
    checker), and three multiple-choice tasks on the same questions: ``naming_mc`` (the question's own
    two choices, ``"function"`` and ``"class"``), ``stdlib_mc`` (the right module against
    :data:`DISTRACTORS` modules that answer other questions: choices of different lengths) and
    ``arithmetic_mc`` (the right number against near ones: ``±1``, ``±2``, ``±10``, ``+100``), choices
    shuffled with ``seed``."""
    import random

    from course_lib.instruction_data import FAMILIES, instruction_dataset

    def docs(split: str, family: str, count: int | None = None) -> list[dict]:
        rows = instruction_dataset(split, family)
        return [_doc(r) for r in rows.select(range(min(count or len(rows), len(rows))))]

    tasks = [Task(family, "generate_until", tuple(docs("test", family, n)), num_fewshot,
                  tuple(docs("validation", family, num_fewshot))) for family in FAMILIES]
    rng = random.Random(seed)
    modules = sorted({d["answer"] for d in docs("test", "stdlib")})
    wrong = {"naming": lambda doc: [{"function": "class", "class": "function"}[doc["answer"]]],
             "stdlib": lambda doc: rng.sample([m for m in modules if m != doc["answer"]], DISTRACTORS),
             "arithmetic": lambda doc: _arithmetic_distractors(doc["answer"], rng)}
    for family, distractors in wrong.items():
        def with_choices(doc: dict) -> dict:
            if family == "naming":   # in the order the question names them
                return {**doc, "choices": ["function", "class"], "answer": ["function", "class"].index(doc["answer"])}
            return _with_choices(doc, distractors(doc), rng)

        tasks.append(Task(f"{family}_mc", "multiple_choice", tuple(map(with_choices, docs("test", family, n))),
                          num_fewshot, tuple(map(with_choices, docs("validation", family, num_fewshot)))))
    return tasks


def task_contamination(task: Task, train_texts: Sequence[str], n: int = 13) -> dict:
    """Which of ``task``'s documents appear in ``train_texts``, by Chapter 6's n-gram test
    (:func:`~course_lib.instruct.find_contaminated`, words of ``normalize_text``): a document (its question
    and its answer, as one text) is contaminated when some training text contains one of its ``n``-grams, or
    all of it when it is shorter. ``{"contaminated": [document index, ...], "fraction": float}``."""
    from course_lib.instruct import find_contaminated

    contaminated = [i for i, doc in enumerate(task.docs)
                    if find_contaminated(list(train_texts), [f"{doc['question']} {task.target(doc)}"], n)]
    return {"contaminated": contaminated, "fraction": len(contaminated) / len(task.docs)}


JUDGE_TEMPLATE = ("Question: {question}\n\nAnswer A: {first}\n\nAnswer B: {second}\n\n"
                  "Which answer is right? Reply with the letter A or B.")


def judge_verdicts(model: torch.nn.Module, tokenizer, pairs: Sequence[tuple[str, str, str]],
                   batch_size: int = 32) -> list[str]:
    """A chat model as a judge: for each ``(question, first, second)``, :data:`JUDGE_TEMPLATE` filled with
    Chapter 6's :func:`~course_lib.instruct.fill_template` and asked as a user turn of the chat template;
    the verdict is the letter (``"A"`` or ``"B"``) whose reply the model finds more likely
    (:func:`choice_log_likelihoods`), so that the judge always answers. Ask each pair twice, the answers
    swapped, and give both lists to :func:`position_bias`."""
    from course_lib.instruct import fill_template

    requests = []
    for question, first, second in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": fill_template(JUDGE_TEMPLATE, {"question": question, "first": first,
                                                                        "second": second})}],
            add_generation_prompt=True, tokenize=False)
        requests += [encode_pair(tokenizer, prompt, letter) for letter in ("A", "B")]
    log_likelihoods, _ = _batched_log_likelihoods(model, requests, tokenizer.pad_token_id, batch_size)
    return ["A" if a >= b else "B" for a, b in zip(log_likelihoods[::2], log_likelihoods[1::2])]


CONTAMINATION_VERSION = 1


def contamination_experiment(size: str = "cpu", family: str = "arithmetic", n: int = BENCHMARK_SIZE,
                             copies: int = 10, steps: int = 150, progress: bool = False) -> dict:
    """What a leaked benchmark does to a score, measured: Chapter 7's chat model trained ``steps`` more
    steps (Chapter 7's :func:`~course_lib.sft.finetune`, its preset's settings) on a sample of its own
    training rows plus ``copies`` copies of the benchmark's ``n`` ``family`` test questions with their
    answers, then asked those ``leaked`` questions and ``n`` fresh test questions of the same family, as
    was the chat model before. Computed once and cached (keyed by the chat model's folder, the settings and
    the code): ``{"leaked", "fresh"}`` each ``{"before", "after"}`` exact match, the contamination check
    of the leaked task against the contaminated training rows, and the steps' seconds."""
    import copy
    import json
    import time

    from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic
    from course_lib.instruction_data import example_text, instruction_dataset
    from course_lib.pretraining import implementation_key
    from course_lib.sft import SFTData, finetune, preset, render_examples, sft_course_lm, sft_model_dir, training_rows

    key = cache_key(CONTAMINATION_VERSION, sft_model_dir(size).name, family, n, copies, steps,
                    implementation_key(_EVALUATION_MODULES + ("pretraining",)))
    path = cache_entry("evaluation", f"contamination-{size}-{key}.json")
    with building(path):
        result = read_json(path)
        if result is None:
            chat_model, tokenizer = sft_course_lm(size, progress=progress)
            rows = list(instruction_dataset("test", family).select(range(2 * n)))
            tasks = {"leaked": Task(f"{family} (leaked)", "generate_until", tuple(map(_doc, rows[:n]))),
                     "fresh": Task(f"{family} (fresh)", "generate_until", tuple(map(_doc, rows[n:])))}
            before = {k: run_task(chat_model, tokenizer, t, chat=True)["metrics"]["exact_match"] for k, t in tasks.items()}
            config = preset(size, total_steps=steps, warmup_steps=max(1, steps // 10), eval_every=steps, eval_examples=2,
                            validation_examples=8)
            train = training_rows(config)[::4] + rows[:n] * copies      # a quarter of its own data, and the leak
            data = SFTData(render_examples(train, tokenizer), render_examples(train[:8], tokenizer), [], [])
            started = time.process_time()
            model = finetune(config, copy.deepcopy(chat_model), tokenizer, progress=progress, data=data).model.eval()
            seconds = time.process_time() - started
            after = {k: run_task(model, tokenizer, t, chat=True)["metrics"]["exact_match"] for k, t in tasks.items()}
            check = task_contamination(tasks["leaked"], [example_text(r) for r in train])
            result = {"leaked": {"before": before["leaked"], "after": after["leaked"]},
                      "fresh": {"before": before["fresh"], "after": after["fresh"]},
                      "found": len(check["contaminated"]), "n": n, "copies": copies, "steps": steps,
                      "training_rows": len(train), "seconds": seconds}
            write_atomic(path, json.dumps(result))
    return result


def course_model(name: str, size: str = "cpu", progress: bool = False):
    """``(model, tokenizer)`` of one of :data:`COURSE_MODELS`, from the course cache (built on first use
    by its chapter): ``"random"`` is the pretrained model's architecture with freshly initialised weights
    (seed 0), the floor every trained model must clear."""
    from course_lib.instruct import chat_tokenizer

    if name in ("random", "pretrained"):
        from course_lib.pretraining import pretrained_course_lm

        model, tokenizer = pretrained_course_lm(size, progress=progress)
        if name == "random":
            torch.manual_seed(0)
            model = type(model)(model.config).eval()
        return model, chat_tokenizer(tokenizer)
    if name == "sft":
        from course_lib.sft import sft_course_lm

        return sft_course_lm(size, progress=progress)
    if name in ("lora", "qlora"):
        from course_lib.lora import adapted_course_lm

        return adapted_course_lm(name, size, progress=progress)
    if name in ("dpo", "grpo"):
        from course_lib.alignment import aligned_course_lm

        return aligned_course_lm(name, size, progress=progress)
    raise ValueError(f"name must be one of {COURSE_MODELS}, got {name!r}")


def corpus_scores(model: torch.nn.Module, tokenizer, max_length: int = 128, stride: int = 64,
                  source: str | None = None) -> dict[str, float]:
    """How well ``model`` predicts the course corpus's test documents (held out from pre-training and from
    its model selection, which used the validation split):
    each document after an end-of-text token (what preceded every document in pre-training, so that
    every token of the text is predicted), scored with :func:`sliding_window_nll` (``max_length``: the
    pre-training block size). ``{"nll", "tokens", "bytes", "perplexity", "bits_per_byte"}`` over all
    documents (:func:`bits_per_byte` of their UTF-8 bytes)."""
    from course_lib.corpus import load_corpus

    nll = tokens = n_bytes = 0
    for text in load_corpus("test", source):
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        scored = sliding_window_nll(model, torch.tensor([ids]), max_length, stride)
        nll, tokens, n_bytes = nll + scored["nll"], tokens + scored["tokens"], n_bytes + len(text.encode("utf-8"))
    return {"nll": nll, "tokens": tokens, "bytes": n_bytes, "perplexity": math.exp(nll / tokens),
            "bits_per_byte": bits_per_byte(nll, n_bytes)}


LEADERBOARD_VERSION = 2   # 2: each task's metric recorded (multiple choice reported by acc)
# Chapter modules whose code runs while the leaderboard is computed (the models are keyed by their folders).
_EVALUATION_MODULES = ("generation", "instruct", "sft", "alignment", "evaluation")


def _model_folder(name: str, size: str) -> str:
    from course_lib.alignment import aligned_model_dir
    from course_lib.lora import adapted_model_dir
    from course_lib.pretraining import pretrained_model_dir
    from course_lib.sft import sft_model_dir

    folders = {"random": pretrained_model_dir, "pretrained": pretrained_model_dir, "sft": sft_model_dir,
               "lora": lambda s: adapted_model_dir("lora", s), "qlora": lambda s: adapted_model_dir("qlora", s),
               "dpo": lambda s: aligned_model_dir("dpo", s), "grpo": lambda s: aligned_model_dir("grpo", s)}
    return folders[name](size).name


def leaderboard(size: str = "cpu", names: Sequence[str] = COURSE_MODELS, progress: bool = False) -> dict:
    """The course leaderboard: ``{"tasks": {model: {task: run_task(...)}}, "corpus": {model: corpus_scores(...)}}``
    for every model of ``names``: every task of :func:`course_tasks` (chat models, :data:`CHAT_MODELS`, asked
    in their chat template, the others in the few-shot format) and the test corpus (:func:`corpus_scores`),
    computed once and
    cached in the course cache, keyed by the models' folders and the code that scores them."""
    import json

    from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic
    from course_lib.pretraining import implementation_key

    key = cache_key(LEADERBOARD_VERSION, {n: _model_folder(n, size) for n in names}, BENCHMARK_SIZE,
                    implementation_key(_EVALUATION_MODULES))
    path = cache_entry("evaluation", f"leaderboard-{size}-{key}.json")
    with building(path):
        board = read_json(path)
        if board is None:
            board = {"tasks": {}, "corpus": {}}
            tasks = course_tasks()
            for name in names:
                model, tokenizer = course_model(name, size, progress)
                board["tasks"][name] = {t.name: run_task(model, tokenizer, t, chat=name in CHAT_MODELS) for t in tasks}
                board["corpus"][name] = corpus_scores(model, tokenizer)
            write_atomic(path, json.dumps(board))
    return board


def leaderboard_rows(board: dict) -> list[dict]:
    """One row per model of a :func:`leaderboard`: ``{"model", <task>: (score, low, high), ..., "mean",
    "perplexity", "bits_per_byte"}``, a task's score its :attr:`Task.metric` with the 95 % bootstrap
    interval; ``mean`` the mean score over the tasks."""
    rows = []
    for name, by_task in board["tasks"].items():
        row = {"model": name}
        for task, result in by_task.items():
            metric = result["metric"]
            row[task] = (result["metrics"][metric], *result["intervals"][metric])
        row["mean"] = sum(row[task][0] for task in by_task) / len(by_task)
        row["perplexity"] = board["corpus"][name]["perplexity"]
        row["bits_per_byte"] = board["corpus"][name]["bits_per_byte"]
        rows.append(row)
    return rows


def leaderboard_table(board: dict) -> str:
    """The leaderboard as a Markdown table: per model each task's score in % with its interval, the
    mean, and the test corpus's perplexity and bits per byte."""
    rows = leaderboard_rows(board)
    tasks = [k for k in rows[0] if k not in ("model", "mean", "perplexity", "bits_per_byte")]
    lines = ["| model | " + " | ".join(tasks) + " | mean | perplexity | bits/byte |",
             "|---" * (len(tasks) + 4) + "|"]
    for row in rows:
        cells = [f"{100 * row[t][0]:.0f} ({100 * row[t][1]:.0f}-{100 * row[t][2]:.0f})" for t in tasks]
        lines.append(f"| {row['model']} | " + " | ".join(cells) +
                     f" | {100 * row['mean']:.1f} | {row['perplexity']:.1f} | {row['bits_per_byte']:.3f} |")
    return "\n".join(lines)


def plot_leaderboard(board: dict, ax=None):
    """Each model's score on each task with its 95 % interval (one panel row of points per task)."""
    import matplotlib.pyplot as plt

    rows = leaderboard_rows(board)
    tasks = [k for k in rows[0] if k not in ("model", "mean", "perplexity", "bits_per_byte")]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.45 * len(tasks) + 1.2))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        y = [t + (i - (len(rows) - 1) / 2) * width for t in range(len(tasks))]
        score = [100 * row[t][0] for t in tasks]
        error = [[100 * (row[t][0] - row[t][1]) for t in tasks], [100 * (row[t][2] - row[t][0]) for t in tasks]]
        ax.errorbar(score, y, xerr=error, fmt="o", markersize=3, capsize=2, label=row["model"])
    ax.set_yticks(range(len(tasks)), tasks)
    ax.invert_yaxis()
    ax.set_xlabel("score (%): exact match, or acc for multiple choice; 95 % bootstrap interval")
    ax.set_xlim(-2, 102)
    ax.legend(fontsize=7, ncol=len(rows), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return ax


def main(argv: Sequence[str] | None = None) -> dict:
    """Evaluate every course model (built on first use, cached) on the course benchmark and the test
    corpus; write ``leaderboard.json``, ``leaderboard.md`` and ``leaderboard.png`` to ``--output``."""
    import argparse
    import json

    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluation", description=main.__doc__)
    parser.add_argument("--size", default="cpu", help="the models' preset size (default cpu)")
    parser.add_argument("--models", nargs="+", choices=COURSE_MODELS, default=list(COURSE_MODELS))
    parser.add_argument("--output", default="_build/leaderboard", help="folder for the results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    board = leaderboard(args.size, args.models, progress=not args.no_progress)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "leaderboard.json").write_text(json.dumps(board))
    table = leaderboard_table(board)
    (output / "leaderboard.md").write_text(table + "\n")
    ax = plot_leaderboard(board)
    ax.figure.tight_layout()
    ax.figure.savefig(output / "leaderboard.png", dpi=120)
    print(table)
    return board


if __name__ == "__main__":
    # Run the main() of the imported module, whose exercises are registered under "evaluation" (this
    # file, run as a script, is a second copy named "__main__").
    from course_lib.evaluation import main as module_main

    module_main()
