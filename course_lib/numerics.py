"""Chapter 0: tensors and numerically stable softmax.

Softmax turns a vector of scores (logits) into a probability distribution; log-softmax and
log-sum-exp are its log-space forms, and cross-entropy is the loss every language model in this
course is trained with. Done naively, each of them overflows or returns NaN on inputs that real
models produce; the exercises here are the stable versions.

Conventions used by every exercise of this chapter:

- the class (vocabulary) axis is ``dim`` (default the last one), as in language models;
- a logit of ``-inf`` means "masked": it gets probability exactly 0;
- a row whose logits are all ``-inf`` (fully masked) has no distribution: softmax returns zeros
  there (not NaN, unlike ``torch.softmax``), log-softmax returns ``-inf`` and log-sum-exp ``-inf``;
- logits are finite or ``-inf``; ``+inf`` and NaN are not supported (NaN propagates);
- outputs have the dtype and device of the input.
"""

from __future__ import annotations

import torch

from course_lib.checks import check_dim, check_tensor
from course_lib.exercises import exercise


def _validate_logits(logits, dim: int = -1, *_, **__) -> None:
    check_tensor("logits", logits, floating=True, min_ndim=1)
    check_dim("logits", dim, logits)


def _validate_logsumexp(x, dim: int = -1, keepdim: bool = False) -> None:
    check_tensor("x", x, floating=True, min_ndim=1)
    check_dim("x", dim, x)


def _validate_cross_entropy(logits, targets, ignore_index: int = -100, label_smoothing: float = 0.0,
                            reduction: str = "mean") -> None:
    check_tensor("logits", logits, floating=True, min_ndim=1)
    check_tensor("targets", targets, integer=True)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
            f"got {tuple(targets.shape)} (the class axis of logits is the last one)"
        )
    if logits.shape[-1] == 0:
        raise ValueError("logits has no classes (last dimension is 0)")
    labelled = targets[targets != ignore_index]
    if labelled.numel() and (labelled.min() < 0 or labelled.max() >= logits.shape[-1]):
        raise ValueError(
            f"targets must lie in [0, {logits.shape[-1]}) or equal ignore_index={ignore_index}, "
            f"got values in [{int(labelled.min())}, {int(labelled.max())}]"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@exercise("0.1", points=2, validate=_validate_logits)
def stable_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``logits`` along ``dim`` that never overflows.

    Args:
        logits: float tensor of any shape ``(..., n, ...)``; ``-inf`` entries are masked.
        dim: the axis that sums to one.

    Returns:
        A tensor of the same shape, dtype and device: ``exp(x_i) / sum_j exp(x_j)`` along ``dim``.
        Entries are in ``[0, 1]``, each row sums to 1, masked entries are exactly 0, and a fully
        masked row is all zeros. Logits around ``1e4`` (float32) must work: ``exp(1e4)`` is ``inf``.

    Hint:
        ``softmax(x) == softmax(x - c)`` for any constant ``c``. Which ``c`` makes every exponent
        ``<= 0``? What is that ``c`` for a fully masked row, and what must you do there?
    """
    raise NotImplementedError("Exercise 0.1: implement stable_softmax in numerics.py")


@exercise("0.2", points=2, validate=_validate_logsumexp)
def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """``log(sum(exp(x)))`` along ``dim``, without overflow or underflow.

    Args:
        x: float tensor of any shape; ``-inf`` entries contribute nothing.
        dim: the axis reduced.
        keepdim: keep ``dim`` with size 1 (as ``torch.logsumexp`` does).

    Returns:
        The reduced tensor (same dtype and device). A row of all ``-inf`` gives ``-inf``; a row of
        values near ``1e4`` or ``-1e4`` gives the exact answer, not ``inf`` or ``-inf``.

    Hint:
        ``logsumexp(x) = m + log(sum(exp(x - m)))`` for ``m = max(x)``.
    """
    raise NotImplementedError("Exercise 0.2: implement logsumexp in numerics.py")


@exercise("0.3", points=2, validate=_validate_logits)
def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log of the softmax of ``logits`` along ``dim``, computed in log space.

    Args:
        logits: float tensor of any shape; ``-inf`` entries are masked.
        dim: the axis that is normalised.

    Returns:
        Same shape, dtype and device. ``exp`` of it sums to 1 along ``dim``. Finite logits give
        finite outputs even when ``log(stable_softmax(x))`` would give ``-inf`` (a gap of 200 in
        float32 underflows the probability, not its log). Masked entries and every entry of a fully
        masked row are ``-inf``.

    Hint:
        ``log_softmax(x) = x - logsumexp(x)`` in exact arithmetic. In floating point, subtract the
        row max ``m`` first and compute ``(x - m) - log(sum(exp(x - m)))``: for logits near ``1e4``,
        ``x - logsumexp(x)`` subtracts two large, nearly equal numbers and loses precision.
    """
    raise NotImplementedError("Exercise 0.3: implement log_softmax in numerics.py")


@exercise("0.4", points=4, validate=_validate_cross_entropy)
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class ``logits`` against integer ``targets``, as language models use it.

    Args:
        logits: ``(..., n_classes)`` float tensor, class axis **last** (``F.cross_entropy`` wants
            it second; reshape to ``(N, n_classes)`` to compare).
        targets: ``(...)`` integer tensor, each entry in ``[0, n_classes)`` or ``ignore_index``.
        ignore_index: positions with this target contribute no loss and are not counted.
        label_smoothing: ``eps`` in ``[0, 1]``: the target distribution is ``(1 - eps)`` on the
            true class plus ``eps / n_classes`` on every class (Szegedy et al., 2016).
        reduction: ``"mean"`` (over non-ignored positions), ``"sum"`` or ``"none"`` (shape of
            ``targets``, 0 at ignored positions).

    Returns:
        The loss with the dtype of ``logits``; it matches ``F.cross_entropy``. When every target is
        ignored, ``"mean"`` is 0/0 and returns NaN, as torch does; ``"sum"`` returns 0.

    Hint:
        Per position, ``loss = (1 - eps) * (-log p[target]) + eps * mean_c(-log p[c])`` with
        ``log p = log_softmax(logits)``. Gather needs a valid index even at ignored positions.
    """
    raise NotImplementedError("Exercise 0.4: implement cross_entropy in numerics.py")
