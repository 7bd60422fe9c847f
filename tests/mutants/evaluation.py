"""Plausible wrong answers to Chapter 10's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake.
"""

import math
import re
from collections import Counter

import torch

IGNORE_INDEX = -100
PUNCTUATION = frozenset('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')


def _nll(model, input_ids, labels):
    """Hugging Face's loss convention, summed: position t's logits score labels[t + 1]."""
    logits = model(input_ids=input_ids).logits.float()
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               ignore_index=IGNORE_INDEX, reduction="sum")
    return float(losses), int((targets != IGNORE_INDEX).sum())


class _Eval:
    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()
        self.nograd = torch.no_grad()
        self.nograd.__enter__()

    def __exit__(self, *exc):
        self.nograd.__exit__(*exc)
        self.model.train(self.was)


# -- 10.1 corpus_perplexity ------------------------------------------------------------------------------------
def _batch_sums(model, batches):
    with _Eval(model):
        for batch in batches:
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            yield (*_nll(model, batch["input_ids"], labels), batch)


def perplexity_as_the_mean_of_batch_losses(model, batches):
    sums = list(_batch_sums(model, batches))
    nll, tokens = sum(s[0] for s in sums), sum(s[1] for s in sums)
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(sum(s[0] / s[1] for s in sums) / len(sums))}


def perplexity_as_the_mean_of_row_perplexities(model, batches):
    perplexities, nll, tokens = [], 0.0, 0
    with _Eval(model):
        for batch in batches:
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
                row = ids[mask.bool()][None]
                s, c = _nll(model, row, row)
                perplexities.append(math.exp(s / c))
                nll, tokens = nll + s, tokens + c
    return {"nll": nll, "tokens": tokens, "perplexity": sum(perplexities) / len(perplexities)}


def perplexity_scoring_the_padding(model, batches):
    nll = tokens = 0
    with _Eval(model):
        for batch in batches:
            s, c = _nll(model, batch["input_ids"], batch["input_ids"])
            nll, tokens = nll + s, tokens + c
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens)}


def perplexity_counting_every_real_token(model, batches):
    sums = list(_batch_sums(model, batches))
    nll, tokens = sum(s[0] for s in sums), sum(int(s[2]["attention_mask"].sum()) for s in sums)
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens)}


def perplexity_with_dropout_on(model, batches):
    nll = tokens = 0
    with torch.no_grad():
        for batch in batches:
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            s, c = _nll(model, batch["input_ids"], labels)
            nll, tokens = nll + s, tokens + c
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens)}


# -- 10.2 sliding_window_nll -----------------------------------------------------------------------------------
def _windows(model, input_ids, max_length, stride, scored, tally=lambda s, c, labels: (s, c)):
    """The recipe with ``scored(begin, end, prev_end)`` labels per window, each window's ``(nll, tokens)``
    from ``tally(its summed loss, its scored count, its labels)``."""
    n, nll, tokens, prev_end = input_ids.shape[1], 0.0, 0, 0
    with _Eval(model):
        for begin in range(0, n, stride):
            end = min(begin + max_length, n)
            window = input_ids[:, begin:end]
            labels = window.clone()
            labels[:, :window.shape[1] - scored(begin, end, prev_end)] = IGNORE_INDEX
            s, c = tally(*_nll(model, window, labels), labels)
            nll, tokens, prev_end = nll + s, tokens + c, end
            if end == n:
                break
    return {"nll": nll, "tokens": tokens}


def sliding_window_scoring_the_overlap_twice(model, input_ids, max_length, stride):
    return _windows(model, input_ids, max_length, stride, lambda begin, end, prev_end: end - begin)


def sliding_window_scoring_stride_tokens_per_window(model, input_ids, max_length, stride):
    return _windows(model, input_ids, max_length, stride, lambda begin, end, prev_end: min(stride, end - begin))


def _as_the_docs_count(s, c, labels):
    count = int((labels != IGNORE_INDEX).sum()) - 1
    return s / c * count, count


def sliding_window_counting_like_the_docs(model, input_ids, max_length, stride):
    """The documentation's recipe as printed: the window's mean loss times (scored tokens - 1)."""
    return _windows(model, input_ids, max_length, stride, lambda begin, end, prev_end: end - prev_end,
                    tally=_as_the_docs_count)


def sliding_window_without_context(model, input_ids, max_length, stride):
    return _windows(model, input_ids, stride, stride, lambda begin, end, prev_end: end - prev_end)


# -- 10.3 bits_per_byte ----------------------------------------------------------------------------------------
def bits_per_byte_in_nats(nll, n_bytes):
    return nll / n_bytes


def bits_per_byte_times_log_two(nll, n_bytes):
    return nll * math.log(2) / n_bytes


# -- 10.4 tokenize_13a -----------------------------------------------------------------------------------------
_RULES = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "), (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
          (re.compile(r"([\.,])([^0-9])"), r" \1 \2"), (re.compile(r"([0-9])(-)"), r"\1 \2 ")]


def _tokenize(text, rules=_RULES, entities=True, pad=True, breaks=True):
    if breaks:
        text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if entities:
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            text = text.replace(entity, char)
    if pad:
        text = f" {text} "
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def tokenize_13a_splitting_every_period_and_comma(text):
    return _tokenize(text, [_RULES[0], (re.compile(r"([\.,])"), r" \1 "), _RULES[3]])


def tokenize_13a_without_entities(text):
    return _tokenize(text, entities=False)


def tokenize_13a_splitting_every_dash(text):
    return _tokenize(text, _RULES[:3] + [(re.compile(r"(-)"), r" \1 ")])


def tokenize_13a_keeping_hyphenated_line_breaks(text):
    return _tokenize(text.replace("<skipped>", "").replace("\n", " "), breaks=False)


def tokenize_13a_without_padding(text):
    return _tokenize(text, pad=False)


# -- 10.5 corpus_bleu ------------------------------------------------------------------------------------------
def _grams(words, max_order):
    return Counter(tuple(words[i:i + n]) for n in range(1, max_order + 1) for i in range(len(words) - n + 1))


def _bleu(hypotheses, references, smooth_method="exp", smooth_value=None, max_order=4, lowercase=False, *,
          clip=True, ref_length=None, brevity=True, exp_base=2, add_k_from=1, effective=False):
    def words(text):
        return _tokenize((text.lower() if lowercase else text).rstrip()).split()

    ref_length = ref_length or (lambda refs, hyp: min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1])
    counts, totals, sys_len, ref_len = [0] * max_order, [0] * max_order, 0, 0
    for i, hypothesis in enumerate(hypotheses):
        hyp, refs = words(hypothesis), [words(s[i]) for s in references]
        most = Counter()
        for ref in refs:
            for g, c in _grams(ref, max_order).items():
                most[g] = max(most[g], c)
        sys_len += len(hyp)
        ref_len += ref_length(refs, hyp)
        for g, c in _grams(hyp, max_order).items():
            totals[len(g) - 1] += c
            counts[len(g) - 1] += min(c, most[g]) if clip else (c if most[g] else 0)
    bp = 1.0 if sys_len >= ref_len or not brevity else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    precisions = [0.0] * max_order
    out = {"counts": counts, "totals": totals, "precisions": precisions, "bp": bp, "sys_len": sys_len,
           "ref_len": ref_len, "score": 0.0}
    if not any(counts):
        return out
    value = {"floor": 0.1, "add-k": 1}.get(smooth_method) if smooth_value is None else smooth_value
    zeros = 0
    for n in range(max_order):
        if smooth_method == "add-k" and n >= add_k_from:
            counts[n] += value
            totals[n] += value
        if totals[n] == 0:
            break
        if counts[n]:
            precisions[n] = 100.0 * counts[n] / totals[n]
        elif smooth_method == "exp":
            zeros += 1
            precisions[n] = 100.0 / (exp_base ** zeros * totals[n])
        elif smooth_method == "floor":
            precisions[n] = 100.0 * value / totals[n]
    used = [p for p in precisions if p > 0] if effective else precisions
    out["score"] = bp * math.exp(sum(math.log(p) if p > 0 else -9999999999.0 for p in used) / len(used))
    return out


def bleu_without_the_brevity_penalty(*args, **kwargs):
    return _bleu(*args, **kwargs, brevity=False)


def bleu_without_clipping(*args, **kwargs):
    return _bleu(*args, **kwargs, clip=False)


def bleu_with_the_longest_reference(*args, **kwargs):
    return _bleu(*args, **kwargs, ref_length=lambda refs, hyp: max(len(r) for r in refs))


def bleu_breaking_length_ties_to_the_longer(*args, **kwargs):
    return _bleu(*args, **kwargs, ref_length=lambda refs, hyp: min((abs(len(r) - len(hyp)), -len(r)) for r in refs)[1] * -1)


def bleu_exp_smoothing_without_doubling(*args, **kwargs):
    return _bleu(*args, **kwargs, exp_base=1)


def bleu_adding_k_to_unigrams_too(*args, **kwargs):
    return _bleu(*args, **kwargs, add_k_from=0)


def bleu_over_the_nonzero_precisions_only(*args, **kwargs):
    return _bleu(*args, **kwargs, effective=True)


# -- 10.6 corpus_chrf ------------------------------------------------------------------------------------------
def _chrf_words(text, split=True):
    out = []
    for w in text.split():
        if split and len(w) > 1 and w[-1] in PUNCTUATION:
            out += [w[:-1], w[-1]]
        elif split and len(w) > 1 and w[0] in PUNCTUATION:
            out += [w[0], w[1:]]
        else:
            out.append(w)
    return out


def _chrf(hypotheses, references, char_order=6, word_order=0, beta=2.0, *, keep_spaces=False, split=True,
          f=None, pick=max, zero_hyp=True):
    def grams(text):
        chars = text if keep_spaces else "".join(text.split())
        out = [Counter(chars[i:i + n] for i in range(len(chars) - n + 1)) for n in range(1, char_order + 1)]
        ws = _chrf_words(text, split)
        return out + [Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)) for n in range(1, word_order + 1)]

    def fscore(stats):
        kept = [(m / h, m / r) for h, r, m in stats if h > 0 and r > 0]
        if not kept:
            return 0.0
        p, r = sum(x for x, _ in kept) / len(kept), sum(y for _, y in kept) / len(kept)
        return 0.0 if p + r == 0 else 100 * (1 + beta ** 2) * p * r / (beta ** 2 * p + r)

    f = f or fscore
    total = None
    for i, hypothesis in enumerate(hypotheses):
        h = grams(hypothesis)
        candidates = []
        for stream in references:
            r = grams(stream[i])
            stats = [((sum(a.values()) if (b or not zero_hyp) else 0), sum(b.values()),
                      sum(min(c, b[g]) for g, c in a.items() if g in b)) for a, b in zip(h, r)]
            candidates.append((f(stats), -len(candidates), stats))
        best = pick(candidates)[2]
        total = best if total is None else [tuple(x + y for x, y in zip(u, v)) for u, v in zip(total, best)]
    return f(total)


def chrf_keeping_whitespace(*args, **kwargs):
    return _chrf(*args, **kwargs, keep_spaces=True)


def chrf_without_splitting_punctuation(*args, **kwargs):
    return _chrf(*args, **kwargs, split=False)


def chrf_averaging_f_scores_over_orders(hypotheses, references, char_order=6, word_order=0, beta=2.0):
    def mean_f(stats):
        scores = []
        for h, r, m in stats:
            p, rc = (m / h if h else 0.0), (m / r if r else 0.0)
            scores.append(0.0 if p + rc == 0 else (1 + beta ** 2) * p * rc / (beta ** 2 * p + rc))
        return 100 * sum(scores) / len(scores)
    return _chrf(hypotheses, references, char_order, word_order, beta, f=mean_f)


def chrf_with_beta_on_precision(hypotheses, references, char_order=6, word_order=0, beta=2.0):
    return _chrf(hypotheses, references, char_order, word_order, 1 / beta)


def chrf_with_the_worst_reference(*args, **kwargs):
    return _chrf(*args, **kwargs, pick=min)


def chrf_counting_hypothesis_ngrams_of_orders_the_reference_lacks(*args, **kwargs):
    return _chrf(*args, **kwargs, zero_hyp=False)


# -- 10.7 choice_log_likelihoods -------------------------------------------------------------------------------
def _choices(model, context_ids, continuation_ids, pad_token_id=0, *, whole=False, shift=1, greedy=all):
    rows = [list(c) + list(x) for c, x in zip(context_ids, continuation_ids)]
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    with _Eval(model):
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    log_probs = torch.log_softmax(logits, -1)
    lls, greedies = [], []
    for i, (c, x) in enumerate(zip(context_ids, continuation_ids)):
        start = 1 if whole else len(c)
        positions = range(start, len(c) + len(x))
        lls.append(float(sum(log_probs[i, t - shift, ids[i, t]] for t in positions)))
        greedies.append(greedy(bool(logits[i, t - shift].argmax() == ids[i, t]) for t in range(len(c), len(c) + len(x))))
    return {"log_likelihood": lls, "is_greedy": greedies}


def choice_log_likelihoods_including_the_context(*args, **kwargs):
    return _choices(*args, **kwargs, whole=True)


def choice_log_likelihoods_without_the_shift(*args, **kwargs):
    return _choices(*args, **kwargs, shift=0)


def choice_greedy_if_any_token_is(*args, **kwargs):
    return _choices(*args, **kwargs, greedy=any)


# -- 10.8 multiple_choice_metrics ------------------------------------------------------------------------------
def _metrics(log_likelihoods, choices, gold, length=len, last=False):
    def argmax(values):
        best = max(values)
        indices = [i for i, v in enumerate(values) if v == best]
        return indices[-1] if last else indices[0]
    acc = [argmax(lls) == g for lls, g in zip(log_likelihoods, gold)]
    norm = [argmax([ll / length(t) for ll, t in zip(lls, texts)]) == g for lls, texts, g in zip(log_likelihoods, choices, gold)]
    return {"acc": sum(acc) / len(acc), "acc_norm": sum(norm) / len(norm)}


def acc_norm_by_words(log_likelihoods, choices, gold):
    return _metrics(log_likelihoods, choices, gold, length=lambda t: len(t.split()))


def acc_norm_counting_the_delimiter(log_likelihoods, choices, gold):
    return _metrics(log_likelihoods, choices, gold, length=lambda t: len(t) + 1)


def multiple_choice_ties_to_the_last(log_likelihoods, choices, gold):
    return _metrics(log_likelihoods, choices, gold, last=True)


# -- 10.9 cohen_kappa -----------------------------------------------------------------------------------------
def _kappa(rater_a, rater_b, weights=None, *, raw=False, labels_from=None, power=None):
    labels = sorted(set(labels_from(rater_a, rater_b) if labels_from else set(rater_a) | set(rater_b)))
    k, n = len(labels), len(rater_a)
    index = {label: i for i, label in enumerate(labels)}
    observed = [[0.0] * k for _ in range(k)]
    for a, b in zip(rater_a, rater_b):
        if a in index and b in index:
            observed[index[a]][index[b]] += 1 / n
    if raw:
        return sum(observed[i][i] for i in range(k))
    rows = [sum(r) for r in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    p = power if power is not None else {None: 0, "linear": 1, "quadratic": 2}[weights]
    w = [[(1.0 if i != j else 0.0) if p == 0 else abs(i - j) ** p for j in range(k)] for i in range(k)]
    num = sum(w[i][j] * observed[i][j] for i in range(k) for j in range(k))
    den = sum(w[i][j] * rows[i] * cols[j] for i in range(k) for j in range(k))
    return 1 - num / den if den else math.nan


def kappa_as_raw_agreement(rater_a, rater_b, weights=None):
    return _kappa(rater_a, rater_b, weights, raw=True)


def kappa_with_linear_weights_for_quadratic(rater_a, rater_b, weights=None):
    return _kappa(rater_a, rater_b, weights, power={None: 0, "linear": 1, "quadratic": 1}[weights])


def kappa_with_the_labels_of_rater_a_only(rater_a, rater_b, weights=None):
    return _kappa(rater_a, rater_b, weights, labels_from=lambda a, b: set(a))


# -- 10.10-10.11 ratings ---------------------------------------------------------------------------------------
def _bradley_terry(comparisons, n_players, iterations=1000, tolerance=1e-10, *, tie_win=0.5, centre=True,
                   logs=True, drop_ties=False):
    if drop_ties:
        comparisons = [c for c in comparisons if c[2] != 0.5]
    wins, losses = [0.0] * n_players, [0.0] * n_players
    for a, b, o in comparisons:
        wa = tie_win if o == 0.5 else o
        wb = tie_win if o == 0.5 else 1 - o
        wins[a] += wa
        wins[b] += wb
        losses[a] += 1 - o
        losses[b] += o
    for player in range(n_players):
        if not wins[player] or not losses[player]:
            raise ValueError(f"player {player} has no win or no loss")
    p = [1.0] * n_players
    for _ in range(iterations):
        d = [0.0] * n_players
        for a, b, _o in comparisons:
            d[a] += 1 / (p[a] + p[b])
            d[b] += 1 / (p[a] + p[b])
        new = [w / x for w, x in zip(wins, d)]
        g = math.exp(sum(math.log(x) for x in new) / n_players)
        new = [x / g for x in new]
        moved = max(abs(math.log(x) - math.log(y)) for x, y in zip(new, p))
        p = new
        if moved <= tolerance:
            break
    out = [math.log(x) for x in p] if logs else p
    if centre:
        return out
    return [x + 1.0 for x in out]


def bradley_terry_counting_ties_as_wins(comparisons, n_players, iterations=1000, tolerance=1e-10):
    return _bradley_terry(comparisons, n_players, iterations, tolerance, tie_win=1.0)


def bradley_terry_dropping_ties(comparisons, n_players, iterations=1000, tolerance=1e-10):
    return _bradley_terry(comparisons, n_players, iterations, tolerance, drop_ties=True)


def bradley_terry_returning_strengths_not_logs(comparisons, n_players, iterations=1000, tolerance=1e-10):
    return _bradley_terry(comparisons, n_players, iterations, tolerance, logs=False)


def bradley_terry_not_centred(comparisons, n_players, iterations=1000, tolerance=1e-10):
    return _bradley_terry(comparisons, n_players, iterations, tolerance, centre=False)


def elo_updating_b_from_the_new_rating_of_a(comparisons, n_players, k=4.0, initial=1000.0, scale=400.0):
    r = [float(initial)] * n_players
    for a, b, o in comparisons:
        r[a] += k * (o - 1 / (1 + 10 ** ((r[b] - r[a]) / scale)))
        r[b] -= k * (o - 1 / (1 + 10 ** ((r[b] - r[a]) / scale)))
    return r


def elo_with_the_expectation_reversed(comparisons, n_players, k=4.0, initial=1000.0, scale=400.0):
    r = [float(initial)] * n_players
    for a, b, o in comparisons:
        delta = k * (o - 1 / (1 + 10 ** ((r[a] - r[b]) / scale)))
        r[a], r[b] = r[a] + delta, r[b] - delta
    return r


# -- 10.12-10.13 -----------------------------------------------------------------------------------------------
def _bootstrap(values, statistic="mean", n_resamples=1000, confidence=0.95, seed=0, *, low=None, transpose=False):
    n = values.shape[0]
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, n, (n, n_resamples), generator=g).T if transpose else \
        torch.randint(0, n, (n_resamples, n), generator=g)
    x = values.double()[indices]
    stats = x.mean(-1) if statistic == "mean" else x.median(-1).values
    q = torch.tensor([(1 - confidence) / 2 if low is None else low, (1 + confidence) / 2], dtype=torch.float64)
    bounds = torch.quantile(stats, q)
    return float(bounds[0]), float(bounds[1])


def bootstrap_with_the_whole_tail_below(values, statistic="mean", n_resamples=1000, confidence=0.95, seed=0):
    return _bootstrap(values, statistic, n_resamples, confidence, seed, low=1 - confidence)


def bootstrap_drawing_the_indices_transposed(values, statistic="mean", n_resamples=1000, confidence=0.95, seed=0):
    return _bootstrap(values, statistic, n_resamples, confidence, seed, transpose=True)


def bootstrap_quantiles_of_the_values(values, statistic="mean", n_resamples=1000, confidence=0.95, seed=0):
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    bounds = torch.quantile(values.double(), q)
    return float(bounds[0]), float(bounds[1])


def position_bias_counting_equal_letters_as_consistent(first_order, swapped_order):
    consistency = sum(x == y for x, y in zip(first_order, swapped_order)) / len(first_order)
    decided = [v for v in (*first_order, *swapped_order) if v != "tie"]
    return {"consistency": consistency, "first_position_rate": sum(v == "A" for v in decided) / len(decided)}


def position_bias_over_every_verdict(first_order, swapped_order):
    same = {("A", "B"), ("B", "A"), ("tie", "tie")}
    consistency = sum((x, y) in same for x, y in zip(first_order, swapped_order)) / len(first_order)
    verdicts = [*first_order, *swapped_order]
    return {"consistency": consistency, "first_position_rate": sum(v == "A" for v in verdicts) / len(verdicts)}


MUTANTS = {
    "corpus_perplexity": [perplexity_as_the_mean_of_batch_losses, perplexity_as_the_mean_of_row_perplexities,
                          perplexity_scoring_the_padding, perplexity_counting_every_real_token, perplexity_with_dropout_on],
    "sliding_window_nll": [sliding_window_scoring_the_overlap_twice, sliding_window_scoring_stride_tokens_per_window,
                           sliding_window_counting_like_the_docs, sliding_window_without_context],
    "bits_per_byte": [bits_per_byte_in_nats, bits_per_byte_times_log_two],
    "tokenize_13a": [tokenize_13a_splitting_every_period_and_comma, tokenize_13a_without_entities,
                     tokenize_13a_splitting_every_dash, tokenize_13a_keeping_hyphenated_line_breaks,
                     tokenize_13a_without_padding],
    "corpus_bleu": [bleu_without_the_brevity_penalty, bleu_without_clipping, bleu_with_the_longest_reference,
                    bleu_breaking_length_ties_to_the_longer, bleu_exp_smoothing_without_doubling,
                    bleu_adding_k_to_unigrams_too, bleu_over_the_nonzero_precisions_only],
    "corpus_chrf": [chrf_keeping_whitespace, chrf_without_splitting_punctuation, chrf_averaging_f_scores_over_orders,
                    chrf_with_beta_on_precision, chrf_with_the_worst_reference,
                    chrf_counting_hypothesis_ngrams_of_orders_the_reference_lacks],
    "choice_log_likelihoods": [choice_log_likelihoods_including_the_context, choice_log_likelihoods_without_the_shift,
                               choice_greedy_if_any_token_is],
    "multiple_choice_metrics": [acc_norm_by_words, acc_norm_counting_the_delimiter, multiple_choice_ties_to_the_last],
    "cohen_kappa": [kappa_as_raw_agreement, kappa_with_linear_weights_for_quadratic, kappa_with_the_labels_of_rater_a_only],
    "bradley_terry": [bradley_terry_counting_ties_as_wins, bradley_terry_dropping_ties,
                      bradley_terry_returning_strengths_not_logs, bradley_terry_not_centred],
    "elo_ratings": [elo_updating_b_from_the_new_rating_of_a, elo_with_the_expectation_reversed],
    "bootstrap_interval": [bootstrap_with_the_whole_tail_below, bootstrap_drawing_the_indices_transposed,
                           bootstrap_quantiles_of_the_values],
    "position_bias": [position_bias_counting_equal_letters_as_consistent, position_bias_over_every_verdict],
}
