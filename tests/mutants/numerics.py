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


MUTANTS = {
    "stable_softmax": [softmax_without_max_shift, softmax_over_first_axis, softmax_nan_on_fully_masked_rows],
    "logsumexp": [logsumexp_naive, logsumexp_nan_on_fully_masked_rows, logsumexp_ignoring_keepdim],
    "log_softmax": [log_softmax_as_log_of_softmax, log_softmax_nan_on_fully_masked_rows,
                    log_softmax_as_logits_minus_logsumexp, log_softmax_without_keepdim_broadcast],
    "cross_entropy": [cross_entropy_mean_over_all_positions, cross_entropy_smoothing_only_on_wrong_classes,
                      cross_entropy_of_probabilities_not_log_probabilities],
}
