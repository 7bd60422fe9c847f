"""Chapter 0 graded tests (public): stable softmax, logsumexp, log-softmax, cross-entropy.

Every answer is compared with torch's own implementation. Where torch and the course differ on
purpose (a fully masked row), the expected value is written out by hand.
"""

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close

NEG_INF = float("-inf")
SHAPES = [(1,), (5,), (3, 7), (2, 4, 33)]


def make_logits(shape, device, dtype=torch.float32, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


# -- 0.1 stable_softmax ---------------------------------------------------------------------------
@pytest.mark.exercise("0.1")
@pytest.mark.parametrize("shape", SHAPES)
def test_stable_softmax_matches_torch_on_random_logits(student, device, shape):
    logits = make_logits(shape, device)
    assert_close(student.stable_softmax(logits), torch.softmax(logits, dim=-1),
                 what=f"stable_softmax(logits of shape {shape})",
                 hint="Normalise along dim (the last axis by default): each row must sum to 1.")


@pytest.mark.exercise("0.1")
def test_stable_softmax_normalises_along_the_given_dim(student, device):
    logits = make_logits((4, 6, 5), device)
    for dim in (0, 1, -1):
        assert_close(student.stable_softmax(logits, dim=dim), torch.softmax(logits, dim=dim),
                     what=f"stable_softmax(logits, dim={dim})", hint="Softmax over the wrong axis?")


@pytest.mark.exercise("0.1")
def test_stable_softmax_survives_logits_that_overflow_exp(student, device):
    logits = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4 + 2.0, -1e4 + 1.0]], device=device)
    assert_close(student.stable_softmax(logits), torch.softmax(logits, dim=-1),
                 what="stable_softmax of logits near +-1e4",
                 hint="exp(1e4) is inf and exp(-1e4) is 0 in float32: subtract the row max first.")


@pytest.mark.exercise("0.1")
def test_stable_softmax_gives_zero_to_masked_entries_and_zeros_to_fully_masked_rows(student, device):
    logits = torch.tensor([[0.5, NEG_INF, 1.5], [NEG_INF, NEG_INF, NEG_INF]], device=device)
    expected = torch.tensor([[torch.softmax(torch.tensor([0.5, 1.5]), 0)[0].item(), 0.0,
                              torch.softmax(torch.tensor([0.5, 1.5]), 0)[1].item()], [0.0, 0.0, 0.0]],
                            device=device)
    assert_close(student.stable_softmax(logits), expected, what="stable_softmax with -inf (masked) logits",
                 hint="A fully masked row has max -inf, and -inf - (-inf) is NaN: shift such rows by 0 "
                      "and return zeros there (torch.softmax returns NaN).")


# -- 0.2 logsumexp --------------------------------------------------------------------------------
@pytest.mark.exercise("0.2")
@pytest.mark.parametrize("shape", SHAPES)
def test_logsumexp_matches_torch_on_random_input(student, device, shape):
    x = make_logits(shape, device)
    assert_close(student.logsumexp(x), torch.logsumexp(x, dim=-1), what=f"logsumexp(x of shape {shape})")


@pytest.mark.exercise("0.2")
def test_logsumexp_keepdim_matches_torch(student, device):
    x = make_logits((3, 4, 5), device)
    for dim in (0, 1, 2):
        assert_close(student.logsumexp(x, dim=dim, keepdim=True), torch.logsumexp(x, dim=dim, keepdim=True),
                     what=f"logsumexp(x, dim={dim}, keepdim=True)", hint="keepdim must keep dim with size 1.")


@pytest.mark.exercise("0.2")
def test_logsumexp_is_exact_for_huge_and_tiny_values(student, device):
    x = torch.tensor([[1e4, 1e4], [-1e4, -1e4], [88.0, 89.0]], device=device)
    assert_close(student.logsumexp(x), torch.logsumexp(x, dim=-1), what="logsumexp of values near +-1e4",
                 hint="log(sum(exp(x))) overflows to inf (or underflows to -inf): factor out the max.")


@pytest.mark.exercise("0.2")
def test_logsumexp_of_fully_masked_row_is_minus_inf(student, device):
    x = torch.tensor([[NEG_INF, NEG_INF], [0.0, NEG_INF]], device=device)
    assert_close(student.logsumexp(x), torch.logsumexp(x, dim=-1), what="logsumexp with -inf entries",
                 hint="For an all -inf row the max is -inf; shift by 0 there, or you get NaN.")


# -- 0.3 log_softmax ------------------------------------------------------------------------------
@pytest.mark.exercise("0.3")
@pytest.mark.parametrize("shape", SHAPES)
def test_log_softmax_matches_torch_on_random_logits(student, device, shape):
    logits = make_logits(shape, device)
    assert_close(student.log_softmax(logits), F.log_softmax(logits, dim=-1), what=f"log_softmax(shape {shape})")


@pytest.mark.exercise("0.3")
def test_log_softmax_stays_finite_where_the_probability_underflows(student, device):
    logits = torch.tensor([[0.0, -200.0, -1000.0], [1e4, 0.0, -1e4]], device=device)
    assert_close(student.log_softmax(logits), F.log_softmax(logits, dim=-1), what="log_softmax with large gaps",
                 hint="log(softmax(x)) gives -inf once exp underflows: compute x - logsumexp(x) instead.")


@pytest.mark.exercise("0.3")
def test_log_softmax_keeps_precision_for_large_logits(student, device):
    logits = torch.tensor([[1e4, 1e4 - 1.0, 1e4 - 2.0], [-5e3, -5e3 - 0.5, -5e3 - 3.0]], device=device)
    assert_close(student.log_softmax(logits), F.log_softmax(logits, dim=-1), what="log_softmax of logits near 1e4",
                 hint="x - logsumexp(x) subtracts two numbers near 1e4 in float32 (spacing 2**-10): "
                      "compute (x - max) - log(sum(exp(x - max))) instead.")


@pytest.mark.exercise("0.3")
def test_log_softmax_of_masked_entries_is_minus_inf_and_fully_masked_rows_too(student, device):
    logits = torch.tensor([[2.0, NEG_INF, 0.0], [NEG_INF, NEG_INF, NEG_INF]], device=device)
    expected = F.log_softmax(logits, dim=-1)
    expected[1] = NEG_INF  # torch gives NaN for a fully masked row; the course defines -inf (log 0)
    assert_close(student.log_softmax(logits), expected, what="log_softmax with -inf logits",
                 hint="A fully masked row must be all -inf, not NaN.")


# -- 0.4 cross_entropy ----------------------------------------------------------------------------
def make_targets(shape, n_classes, device, seed=1, ignored=0.0, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, n_classes, shape, generator=gen)
    targets[torch.rand(shape, generator=gen) < ignored] = ignore_index
    return targets.to(device)


def reference_cross_entropy(logits, targets, **kwargs):
    n_classes = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, n_classes), targets.reshape(-1), **kwargs)
    return loss.reshape(targets.shape) if kwargs.get("reduction") == "none" else loss


@pytest.mark.exercise("0.4")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(student, device, reduction):
    logits, targets = make_logits((6, 11), device), make_targets((6,), 11, device)
    assert_close(student.cross_entropy(logits, targets, reduction=reduction),
                 reference_cross_entropy(logits, targets, reduction=reduction),
                 what=f"cross_entropy(reduction={reduction!r})",
                 hint="loss = -log_softmax(logits)[target], averaged over positions for 'mean'.")


@pytest.mark.exercise("0.4")
def test_cross_entropy_skips_ignore_index_in_sum_and_count(student, device):
    logits, targets = make_logits((4, 9, 7), device), make_targets((4, 9), 7, device, ignored=0.4)
    for reduction in ("mean", "none"):
        assert_close(student.cross_entropy(logits, targets, reduction=reduction),
                     reference_cross_entropy(logits, targets, reduction=reduction),
                     what=f"cross_entropy with ignored targets (reduction={reduction!r})",
                     hint="Ignored positions add 0 to the loss and are not counted in the mean.")


@pytest.mark.exercise("0.4")
def test_cross_entropy_with_label_smoothing_matches_torch(student, device):
    logits, targets = make_logits((5, 8, 13), device), make_targets((5, 8), 13, device, ignored=0.2)
    for eps in (0.1, 0.5):
        assert_close(student.cross_entropy(logits, targets, label_smoothing=eps),
                     reference_cross_entropy(logits, targets, label_smoothing=eps),
                     what=f"cross_entropy(label_smoothing={eps})",
                     hint="The smoothed target puts eps/n_classes on every class, the true one included.")


@pytest.mark.exercise("0.4")
def test_cross_entropy_is_finite_for_logits_that_overflow_exp(student, device):
    logits = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], device=device)
    targets = torch.tensor([2, 1], device=device)
    assert_close(student.cross_entropy(logits, targets, reduction="none"),
                 reference_cross_entropy(logits, targets, reduction="none"),
                 what="cross_entropy of logits near +-1e4", hint="Use log_softmax, not log(softmax).")
