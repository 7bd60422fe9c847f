"""Plausible wrong answers to Chapter 0's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout."""

import torch
import torch.nn.functional as F


def softmax_without_max_shift(logits, dim=-1):
    exp = torch.exp(logits)
    return exp / exp.sum(dim=dim, keepdim=True)


def softmax_over_first_axis(logits, dim=-1):
    return torch.softmax(logits - logits.amax(0, keepdim=True), dim=0)


def softmax_nan_on_fully_masked_rows(logits, dim=-1):
    shifted = logits - logits.amax(dim=dim, keepdim=True)
    exp = torch.exp(shifted)
    return exp / exp.sum(dim=dim, keepdim=True)


def logsumexp_naive(x, dim=-1, keepdim=False):
    return torch.log(torch.exp(x).sum(dim=dim, keepdim=keepdim))


def logsumexp_nan_on_fully_masked_rows(x, dim=-1, keepdim=False):
    m = x.amax(dim=dim, keepdim=True)
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def logsumexp_ignoring_keepdim(x, dim=-1, keepdim=False):
    return torch.logsumexp(x, dim=dim)


def log_softmax_as_log_of_softmax(logits, dim=-1):
    return torch.log(torch.softmax(logits, dim=dim).nan_to_num(0.0))


def log_softmax_nan_on_fully_masked_rows(logits, dim=-1):
    return logits - torch.logsumexp(logits, dim=dim, keepdim=True)


def log_softmax_as_logits_minus_logsumexp(logits, dim=-1):
    lse = torch.logsumexp(logits, dim=dim, keepdim=True)
    return torch.where(lse == float("-inf"), torch.full_like(logits, float("-inf")), logits - lse)


def log_softmax_without_keepdim_broadcast(logits, dim=-1):
    lse = torch.logsumexp(logits, dim=dim)
    return (logits - lse.unsqueeze(0)).nan_to_num(float("-inf"))


def _flat(logits, targets):
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def cross_entropy_mean_over_all_positions(logits, targets, ignore_index=-100, label_smoothing=0.0,
                                          reduction="mean"):
    flat_logits, flat_targets = _flat(logits, targets)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none").reshape(targets.shape)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def cross_entropy_smoothing_only_on_wrong_classes(logits, targets, ignore_index=-100, label_smoothing=0.0,
                                                  reduction="mean"):
    log_probs = torch.log_softmax(logits, dim=-1)
    n_classes = logits.shape[-1]
    labelled = targets != ignore_index
    safe = torch.where(labelled, targets, torch.zeros_like(targets))
    true_lp = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    others = (log_probs.sum(-1) - true_lp) / max(n_classes - 1, 1)
    loss = -((1 - label_smoothing) * true_lp + label_smoothing * others)
    loss = torch.where(labelled, loss, torch.zeros_like(loss))
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / labelled.sum()}[reduction]


def cross_entropy_of_probabilities_not_log_probabilities(logits, targets, ignore_index=-100,
                                                         label_smoothing=0.0, reduction="mean"):
    flat_logits, flat_targets = _flat(logits, targets)
    loss = F.nll_loss(-torch.softmax(flat_logits, -1), flat_targets, ignore_index=ignore_index,
                      reduction="none").reshape(targets.shape)
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / (targets != ignore_index).sum()}[reduction]


# -- wrong answers written from the contract alone (issue 16): dtype, in-place, NaN, dim, arguments --
def softmax_in_float32_whatever_the_input(logits, dim=-1):
    x = logits.float()
    m = x.amax(dim=dim, keepdim=True).nan_to_num(neginf=0.0)
    exp = torch.exp(x - m)
    return exp / exp.sum(dim=dim, keepdim=True).clamp_min(1e-30)


def softmax_shifting_the_callers_logits_in_place(logits, dim=-1):
    m = logits.amax(dim=dim, keepdim=True)
    logits -= torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    exp = torch.exp(logits)
    return exp / exp.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(exp.dtype).tiny)


def softmax_hiding_nan_with_nan_to_num(logits, dim=-1):
    return torch.softmax(logits, dim=dim).nan_to_num(0.0)


def softmax_clamping_the_sum_with_a_float32_constant(logits, dim=-1):
    m = logits.amax(dim=dim, keepdim=True)
    exp = torch.exp(logits - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    return exp / exp.sum(dim=dim, keepdim=True).clamp_min(1e-38)   # 0 in float16 and after: 0/0


def logsumexp_squeezing_every_unit_axis(x, dim=-1, keepdim=False):
    m = x.amax(dim=dim, keepdim=True).nan_to_num(neginf=0.0)
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze()


def logsumexp_in_float32_whatever_the_input(x, dim=-1, keepdim=False):
    x = x.float()
    m = x.amax(dim=dim, keepdim=True).nan_to_num(neginf=0.0)
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def logsumexp_shifting_the_callers_tensor_in_place(x, dim=-1, keepdim=False):
    m = x.amax(dim=dim, keepdim=True).nan_to_num(neginf=0.0)
    x -= m
    out = m + torch.log(torch.exp(x).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def logsumexp_hiding_nan_as_minus_inf(x, dim=-1, keepdim=False):
    m = x.amax(dim=dim, keepdim=True)
    out = (m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))).nan_to_num(nan=float("-inf"))
    return out if keepdim else out.squeeze(dim)


def log_softmax_always_over_the_last_axis(logits, dim=-1):
    m = logits.amax(dim=-1, keepdim=True).nan_to_num(neginf=0.0)
    shifted = logits - m
    log_total = torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))
    return torch.where(log_total == float("-inf"), torch.full_like(logits, float("-inf")), shifted - log_total)


def log_softmax_in_float32_whatever_the_input(logits, dim=-1):
    x = logits.float()
    m = x.amax(dim=dim, keepdim=True)
    shifted = x - torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    log_total = torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))
    return torch.where(log_total == float("-inf"), torch.full_like(x, float("-inf")), shifted - log_total)


def log_softmax_hiding_nan_as_minus_inf(logits, dim=-1):
    m = logits.amax(dim=dim, keepdim=True)
    shifted = logits - m
    return (shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))).nan_to_num(nan=float("-inf"))


def log_softmax_shifting_the_callers_logits_in_place(logits, dim=-1):
    m = logits.amax(dim=dim, keepdim=True)
    logits -= torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    log_total = torch.log(torch.exp(logits).sum(dim=dim, keepdim=True))
    return torch.where(log_total == float("-inf"), torch.full_like(logits, float("-inf")), logits - log_total)


def _smoothed_nll(logits, safe_targets, label_smoothing):
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1)


def _reduce(loss, labelled, reduction, count=None):
    loss = torch.where(labelled, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (labelled.sum() if count is None else count)


def cross_entropy_ignoring_minus_100_whatever_ignore_index(logits, targets, ignore_index=-100,
                                                           label_smoothing=0.0, reduction="mean"):
    labelled = targets != -100
    safe = torch.where(labelled, targets, torch.zeros_like(targets))
    return _reduce(_smoothed_nll(logits, safe, label_smoothing), labelled, reduction)


def cross_entropy_mean_of_nothing_is_zero(logits, targets, ignore_index=-100, label_smoothing=0.0,
                                          reduction="mean"):
    labelled = targets != ignore_index
    safe = torch.where(labelled, targets, torch.zeros_like(targets))
    return _reduce(_smoothed_nll(logits, safe, label_smoothing), labelled, reduction,
                   count=labelled.sum().clamp_min(1))


def cross_entropy_overwriting_ignored_targets_in_place(logits, targets, ignore_index=-100,
                                                       label_smoothing=0.0, reduction="mean"):
    labelled = targets != ignore_index
    targets[~labelled] = 0
    return _reduce(_smoothed_nll(logits, targets, label_smoothing), labelled, reduction)


def cross_entropy_clamping_negative_targets_for_gather(logits, targets, ignore_index=-100,
                                                       label_smoothing=0.0, reduction="mean"):
    labelled = targets != ignore_index
    return _reduce(_smoothed_nll(logits, targets.clamp_min(0), label_smoothing), labelled, reduction)


def cross_entropy_in_float32_whatever_the_logits(logits, targets, ignore_index=-100, label_smoothing=0.0,
                                                 reduction="mean"):
    labelled = targets != ignore_index
    safe = torch.where(labelled, targets, torch.zeros_like(targets))
    return _reduce(_smoothed_nll(logits.float(), safe, label_smoothing), labelled, reduction)


MUTANTS = {
    "stable_softmax": [softmax_without_max_shift, softmax_over_first_axis, softmax_nan_on_fully_masked_rows,
                       softmax_in_float32_whatever_the_input, softmax_shifting_the_callers_logits_in_place,
                       softmax_hiding_nan_with_nan_to_num, softmax_clamping_the_sum_with_a_float32_constant],
    "logsumexp": [logsumexp_naive, logsumexp_nan_on_fully_masked_rows, logsumexp_ignoring_keepdim,
                  logsumexp_squeezing_every_unit_axis, logsumexp_in_float32_whatever_the_input,
                  logsumexp_shifting_the_callers_tensor_in_place, logsumexp_hiding_nan_as_minus_inf],
    "log_softmax": [log_softmax_as_log_of_softmax, log_softmax_nan_on_fully_masked_rows,
                    log_softmax_as_logits_minus_logsumexp, log_softmax_without_keepdim_broadcast,
                    log_softmax_always_over_the_last_axis, log_softmax_in_float32_whatever_the_input,
                    log_softmax_hiding_nan_as_minus_inf, log_softmax_shifting_the_callers_logits_in_place],
    "cross_entropy": [cross_entropy_mean_over_all_positions, cross_entropy_smoothing_only_on_wrong_classes,
                      cross_entropy_of_probabilities_not_log_probabilities,
                      cross_entropy_ignoring_minus_100_whatever_ignore_index, cross_entropy_mean_of_nothing_is_zero,
                      cross_entropy_overwriting_ignored_targets_in_place,
                      cross_entropy_clamping_negative_targets_for_gather, cross_entropy_in_float32_whatever_the_logits],
}
