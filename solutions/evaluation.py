"""Reference solutions of Chapter 10 (``course_lib.evaluation``)."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Hashable, Sequence

import torch

from course_lib.alignment import completion_batch, sequence_log_probs
from course_lib.evaluation import BLEU_LOG_ZERO, BLEU_SMOOTH_DEFAULTS, CHRF_PUNCTUATION
from course_lib.pretraining import IGNORE_INDEX, causal_lm_loss


class _Scoring:
    """Runs ``model`` in eval mode without gradients and puts its mode back afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()
        return next(self.model.parameters()).device

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def corpus_perplexity(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    nll, tokens = 0.0, 0
    with _Scoring(model) as device:
        for batch in batches:
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            nll += float(causal_lm_loss(logits, input_ids, mask, reduction="sum").double())
            tokens += int(mask[:, 1:].sum())
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens)}


def sliding_window_nll(model: torch.nn.Module, input_ids: torch.Tensor, max_length: int, stride: int
                       ) -> dict[str, float]:
    n = input_ids.shape[1]
    nll, tokens, prev_end = 0.0, 0, 0
    with _Scoring(model) as device:
        for begin in range(0, n, stride):
            end = min(begin + max_length, n)
            window = input_ids[:, begin:end].to(device)
            labels = window.clone()
            labels[:, :window.shape[1] - (end - prev_end)] = IGNORE_INDEX
            logits = model(input_ids=window).logits
            nll += float(causal_lm_loss(logits, labels, reduction="sum").double())
            tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
            prev_end = end
            if end == n:
                break
    return {"nll": nll, "tokens": tokens}


def bits_per_byte(nll: float, n_bytes: int) -> float:
    return nll / (n_bytes * math.log(2))


_13A_RULES = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
              (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
              (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
              (re.compile(r"([0-9])(-)"), r"\1 \2 ")]


def tokenize_13a(text: str) -> str:
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def _word_ngrams(words, max_order):
    return Counter(tuple(words[i:i + n]) for n in range(1, max_order + 1) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], smooth_method: str = "exp",
                smooth_value: float | None = None, max_order: int = 4, lowercase: bool = False) -> dict:
    from course_lib.evaluation import tokenize_13a as tokenize

    def words(text):
        return tokenize((text.lower() if lowercase else text).rstrip()).split()

    counts, totals = [0] * max_order, [0] * max_order
    sys_len = ref_len = 0
    for i, hypothesis in enumerate(hypotheses):
        hyp = words(hypothesis)
        refs = [words(stream[i]) for stream in references]
        most = Counter()
        for ref in refs:
            for gram, c in _word_ngrams(ref, max_order).items():
                most[gram] = max(most[gram], c)
        sys_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for gram, c in _word_ngrams(hyp, max_order).items():
            totals[len(gram) - 1] += c
            counts[len(gram) - 1] += min(c, most[gram])

    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    precisions = [0.0] * max_order
    result = {"counts": counts, "totals": totals, "precisions": precisions, "bp": bp,
              "sys_len": sys_len, "ref_len": ref_len, "score": 0.0}
    if not any(counts):
        return result
    value = BLEU_SMOOTH_DEFAULTS[smooth_method] if smooth_value is None else smooth_value
    zeros = 0
    for n in range(max_order):
        if smooth_method == "add-k" and n > 0:
            counts[n] += value
            totals[n] += value
        if totals[n] == 0:
            break
        if counts[n]:
            precisions[n] = 100.0 * counts[n] / totals[n]
        elif smooth_method == "exp":
            zeros += 1
            precisions[n] = 100.0 / (2 ** zeros * totals[n])
        elif smooth_method == "floor":
            precisions[n] = 100.0 * value / totals[n]
    logs = [math.log(p) if p > 0 else BLEU_LOG_ZERO for p in precisions]
    result["score"] = bp * math.exp(sum(logs) / max_order)
    return result


def _chrf_words(text):
    words = []
    for word in text.split():
        if len(word) > 1 and word[-1] in CHRF_PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in CHRF_PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def _chrf_ngrams(text, char_order, word_order):
    chars = "".join(text.split())
    grams = [Counter(chars[i:i + n] for i in range(len(chars) - n + 1)) for n in range(1, char_order + 1)]
    words = _chrf_words(text)
    grams += [Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1)) for n in range(1, word_order + 1)]
    return grams


def _chrf_statistics(hyp_grams, ref_grams):
    stats = []
    for h, r in zip(hyp_grams, ref_grams):
        stats.append((sum(h.values()) if r else 0, sum(r.values()), sum(min(c, r[g]) for g, c in h.items() if g in r)))
    return stats


def _chrf_f(stats, beta):
    kept = [(m / h, m / r) for h, r, m in stats if h > 0 and r > 0]
    if not kept:
        return 0.0
    precision = sum(p for p, _ in kept) / len(kept)
    recall = sum(r for _, r in kept) / len(kept)
    if precision + recall == 0:
        return 0.0
    return 100 * (1 + beta ** 2) * precision * recall / (beta ** 2 * precision + recall)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]], char_order: int = 6,
                word_order: int = 0, beta: float = 2.0) -> float:
    total = None
    for i, hypothesis in enumerate(hypotheses):
        hyp_grams = _chrf_ngrams(hypothesis, char_order, word_order)
        best, best_f = None, -1.0
        for stream in references:
            stats = _chrf_statistics(hyp_grams, _chrf_ngrams(stream[i], char_order, word_order))
            f = _chrf_f(stats, beta)
            if f > best_f:
                best, best_f = stats, f
        total = best if total is None else [tuple(a + b for a, b in zip(x, y)) for x, y in zip(total, best)]
    return _chrf_f(total, beta)


def choice_log_likelihoods(model: torch.nn.Module, context_ids: Sequence[list[int]],
                           continuation_ids: Sequence[list[int]], pad_token_id: int = 0) -> dict[str, list]:
    batch = completion_batch(context_ids, continuation_ids, pad_token_id)
    with _Scoring(model) as device:
        ids, attention, completion = (batch[k].to(device) for k in ("input_ids", "attention_mask", "completion_mask"))
        logits = model(input_ids=ids, attention_mask=attention).logits
        log_likelihood = sequence_log_probs(logits, ids, completion)
        hits = logits[:, :-1].argmax(-1) == ids[:, 1:]
        is_greedy = (hits | ~completion[:, 1:].bool()).all(-1)
    return {"log_likelihood": log_likelihood.tolist(), "is_greedy": is_greedy.tolist()}


def _argmax(values):
    return max(range(len(values)), key=lambda i: (values[i], -i))


def multiple_choice_metrics(log_likelihoods: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
                            gold: Sequence[int]) -> dict[str, float]:
    acc = [_argmax(lls) == g for lls, g in zip(log_likelihoods, gold)]
    acc_norm = [_argmax([ll / len(t) for ll, t in zip(lls, texts)]) == g
                for lls, texts, g in zip(log_likelihoods, choices, gold)]
    return {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm)}


def cohen_kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable], weights: str | None = None) -> float:
    labels = sorted(set(rater_a) | set(rater_b))
    index = {label: i for i, label in enumerate(labels)}
    k, n = len(labels), len(rater_a)
    observed = torch.zeros(k, k, dtype=torch.float64)
    for a, b in zip(rater_a, rater_b):
        observed[index[a], index[b]] += 1 / n
    expected = torch.outer(observed.sum(1), observed.sum(0))
    i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    if weights is None:
        w = (i != j).double()
    else:
        w = (i - j).abs().double() ** (1 if weights == "linear" else 2)
    return float(1 - (w * observed).sum() / (w * expected).sum())


def bradley_terry(comparisons: Sequence[tuple[int, int, float]], n_players: int, iterations: int = 1000,
                  tolerance: float = 1e-10) -> list[float]:
    wins = [0.0] * n_players
    losses = [0.0] * n_players
    for a, b, outcome in comparisons:
        wins[a] += outcome
        wins[b] += 1 - outcome
        losses[a] += 1 - outcome
        losses[b] += outcome
    for player in range(n_players):
        if wins[player] == 0 or losses[player] == 0:
            raise ValueError(f"player {player} has {'no win' if wins[player] == 0 else 'no loss'}: "
                             "the Bradley-Terry maximum likelihood does not exist")
    strengths = [1.0] * n_players
    for _ in range(iterations):
        denominators = [0.0] * n_players
        for a, b, _outcome in comparisons:
            share = 1 / (strengths[a] + strengths[b])
            denominators[a] += share
            denominators[b] += share
        updated = [w / d if d else s for w, d, s in zip(wins, denominators, strengths)]
        centre = sum(math.log(p) for p in updated) / n_players
        updated = [p / math.exp(centre) for p in updated]
        moved = max(abs(math.log(u) - math.log(s)) for u, s in zip(updated, strengths))
        strengths = updated
        if moved <= tolerance:
            break
    logs = [math.log(p) for p in strengths]
    centre = sum(logs) / n_players
    return [x - centre for x in logs]


def elo_ratings(comparisons: Sequence[tuple[int, int, float]], n_players: int, k: float = 4.0,
                initial: float = 1000.0, scale: float = 400.0) -> list[float]:
    ratings = [float(initial)] * n_players
    for a, b, outcome in comparisons:
        expected = 1 / (1 + 10 ** ((ratings[b] - ratings[a]) / scale))
        delta = k * (outcome - expected)
        ratings[a] += delta
        ratings[b] -= delta
    return ratings


def bootstrap_interval(values: torch.Tensor, statistic: str = "mean", n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    n = values.shape[0]
    indices = torch.randint(0, n, (n_resamples, n), generator=torch.Generator().manual_seed(seed))
    resamples = values.double()[indices]
    stats = resamples.mean(-1) if statistic == "mean" else resamples.median(-1).values
    bounds = torch.quantile(stats, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2],
                                                       dtype=torch.float64))
    return float(bounds[0]), float(bounds[1])


def position_bias(first_order: Sequence[str], swapped_order: Sequence[str]) -> dict[str, float]:
    same = {("A", "B"), ("B", "A"), ("tie", "tie")}
    consistency = sum((x, y) in same for x, y in zip(first_order, swapped_order)) / len(first_order)
    decided = [v for v in (*first_order, *swapped_order) if v != "tie"]
    first = sum(v == "A" for v in decided) / len(decided) if decided else math.nan
    return {"consistency": consistency, "first_position_rate": first}
