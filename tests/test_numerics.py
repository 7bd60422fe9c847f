"""Chapter 0 graded tests (public): stable softmax, logsumexp, log-softmax, cross-entropy.

Every answer is compared with torch's own implementation. Where torch and the course differ on
purpose (a fully masked row), the expected value is written out by hand.

Each exercise's contract (its docstring and the module's conventions), clause by clause, with the
public tests that check it (``test_`` dropped):

0.1 ``stable_softmax``
  - softmax along ``dim`` (default the last), any shape: stable_softmax_matches_torch_on_random_logits,
    stable_softmax_normalises_along_the_given_dim
  - logits near 1e4 (exp overflows): stable_softmax_survives_logits_that_overflow_exp
  - masked entries exactly 0, a fully masked row all zeros:
    stable_softmax_gives_zero_to_masked_entries_and_zeros_to_fully_masked_rows
  - the input's dtype (float64, float16, bfloat16), with the same guarantees in each:
    stable_softmax_keeps_the_input_dtype_and_range
  - NaN propagates: stable_softmax_propagates_nan
  - the caller's logits unchanged: stable_softmax_leaves_its_input_unchanged

0.2 ``logsumexp``
  - log(sum(exp)) along ``dim``: logsumexp_matches_torch_on_random_input
  - ``keepdim`` keeps ``dim``; without it only ``dim`` goes, every dim: logsumexp_keepdim_matches_torch,
    logsumexp_removes_only_dim_on_shapes_with_unit_axes
  - exact near +-1e4: logsumexp_is_exact_for_huge_and_tiny_values
  - -inf adds nothing, an all -inf row gives -inf: logsumexp_of_fully_masked_row_is_minus_inf
  - the input's dtype: logsumexp_keeps_the_input_dtype_and_range
  - NaN propagates: logsumexp_propagates_nan
  - the caller's tensor unchanged: logsumexp_leaves_its_input_unchanged

0.3 ``log_softmax``
  - log-softmax along ``dim``: log_softmax_matches_torch_on_random_logits, log_softmax_normalises_along_the_given_dim
  - finite where the probability underflows: log_softmax_stays_finite_where_the_probability_underflows
  - precise for logits near 1e4: log_softmax_keeps_precision_for_large_logits
  - masked entries and fully masked rows -inf (along any dim):
    log_softmax_of_masked_entries_is_minus_inf_and_fully_masked_rows_too, log_softmax_normalises_along_the_given_dim
  - the input's dtype: log_softmax_keeps_the_input_dtype_and_range
  - NaN propagates: log_softmax_propagates_nan
  - the caller's logits unchanged: log_softmax_leaves_its_input_unchanged

0.4 ``cross_entropy``
  - matches ``F.cross_entropy`` with the class axis last, each ``reduction``: cross_entropy_matches_torch,
    cross_entropy_matches_torch_on_any_arguments
  - any leading shape, none at all (1-D logits, 0-d targets): cross_entropy_on_degenerate_shapes
  - ``ignore_index`` of any value (-100, -1, 0, n_classes, beyond): no loss, not counted, 0 in "none":
    cross_entropy_skips_ignore_index_in_sum_and_count, cross_entropy_honours_any_ignore_index,
    cross_entropy_matches_torch_on_any_arguments
  - ``label_smoothing`` over [0, 1], both ends, with every reduction:
    cross_entropy_with_label_smoothing_matches_torch, cross_entropy_matches_torch_on_any_arguments
  - every target ignored: "mean" NaN, "sum" 0, "none" zeros: cross_entropy_with_every_target_ignored
  - finite for logits near 1e4: cross_entropy_is_finite_for_logits_that_overflow_exp
  - the logits' dtype (float64, bfloat16): cross_entropy_keeps_the_dtype_of_the_logits
  - the caller's logits and targets unchanged: cross_entropy_leaves_its_inputs_unchanged
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grading.expect import assert_close, assert_unchanged

NEG_INF = float("-inf")
SHAPES = [(1,), (5,), (3, 7), (2, 4, 33)]


# Hypothesis: a fixed, small number of examples, the same ones on every run.
FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_logits(shape, device, dtype=torch.float32, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


# Each float format with a logit beyond the range of its exp (exp overflows to inf), and the
# tolerance of a correct answer computed in that format. Half precisions keep 11 (float16) and 8
# (bfloat16) significant bits: two units in the last place near 1.0 are 2 * 2**-10 and 2 * 2**-7.
DTYPES = [(torch.float64, 1e300, None), (torch.float16, 6e4, 2 * 2**-10), (torch.bfloat16, 1e30, 2 * 2**-7)]
DTYPE_IDS = ["float64", "float16", "bfloat16"]


def awkward_logits(device, dtype, huge):
    """(5, 40) logits of ``dtype``: row 0 holds ``huge``, row 1 is fully masked, row 2 partly masked."""
    logits = make_logits((5, 40), device, scale=8.0, seed=21).to(dtype)
    logits[0, 3] = huge
    logits[1] = NEG_INF
    logits[2, ::3] = NEG_INF
    return logits


def check_dtype_and_range(student_fn, torch_fn, dtype, huge, tol, what, fully_masked):
    """``student_fn`` keeps ``dtype`` and matches ``torch_fn`` computed in float64 on awkward logits;
    ``fully_masked`` is the course's value on a fully masked row (torch gives NaN there)."""
    logits = awkward_logits("cpu", dtype, huge)
    got = student_fn(logits)
    expected = torch_fn(logits.double())
    expected[1] = fully_masked
    assert isinstance(got, torch.Tensor) and got.dtype == dtype, (
        f"{what} of {dtype} logits returned {getattr(got, 'dtype', type(got).__name__)}: keep the input's dtype "
        "(compute in it, or cast back at the end)")
    if tol is None:
        assert_close(got, expected.to(dtype), what=f"{what} of {dtype} logits beyond exp's range")
    else:  # compared in float64, within two units in the last place of the half format
        assert_close(got.double(), expected, rtol=tol, atol=tol, what=f"{what} of {dtype} logits",
                     hint="Masked entries and fully masked rows must come out as documented in half "
                          "precision too: a constant like 1e-38 is 0 in float16.")


def check_nan_propagates(student_fn, what, fully_masked):
    """Rows [0, nan, 1], [-inf, -inf, -inf], [0, 1, 2]: NaN fills the first row's answer, only the
    fully masked row gets ``fully_masked``, and the last row has no NaN."""
    got = student_fn(torch.tensor([[0.0, float("nan"), 1.0], [NEG_INF] * 3, [0.0, 1.0, 2.0]]))
    assert bool(got[0].isnan().all()) and bool((got[1] == fully_masked).all()) and not bool(got[2].isnan().any()), (
        f"{what} of rows [0, nan, 1], [-inf, -inf, -inf], [0, 1, 2] gave {got.tolist()}: NaN must propagate to "
        f"its row (the module's convention) and only a fully masked row gives {fully_masked}; nan_to_num "
        "would hide NaN (and real bugs with it)")


def check_leaves_unchanged(call, *tensors, what):
    """Call ``call(*tensors)`` and check that each of ``tensors`` is what it was before."""
    before = [t.clone() for t in tensors]
    call(*tensors)
    for t, b in zip(tensors, before):
        assert_unchanged(t, b, what=what)


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
    for dim in (0, 1, 2, -1, -2, -3):
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



@pytest.mark.exercise("0.1")
@pytest.mark.parametrize("dtype, huge, atol", DTYPES, ids=DTYPE_IDS)
def test_stable_softmax_keeps_the_input_dtype_and_range(student, dtype, huge, atol):
    check_dtype_and_range(student.stable_softmax, lambda x: torch.softmax(x, dim=-1), dtype, huge, atol,
                          "stable_softmax", fully_masked=0.0)


@pytest.mark.exercise("0.1")
def test_stable_softmax_propagates_nan(student):
    check_nan_propagates(student.stable_softmax, "stable_softmax", fully_masked=0.0)


@pytest.mark.exercise("0.1")
def test_stable_softmax_leaves_its_input_unchanged(student, device):
    check_leaves_unchanged(student.stable_softmax, awkward_logits(device, torch.float32, 1e4), what="the caller's logits")


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



@pytest.mark.exercise("0.2")
def test_logsumexp_removes_only_dim_on_shapes_with_unit_axes(student, device):
    x = make_logits((2, 1, 3, 1), device, seed=5)
    for dim in (0, 1, 2, 3, -1, -2, -3, -4):
        for keepdim in (False, True):
            assert_close(student.logsumexp(x, dim=dim, keepdim=keepdim), torch.logsumexp(x, dim=dim, keepdim=keepdim),
                         what=f"logsumexp(x of shape (2, 1, 3, 1), dim={dim}, keepdim={keepdim})",
                         hint="Reduce exactly `dim`: squeeze(dim), not squeeze() (which drops every size-1 axis).")


@pytest.mark.exercise("0.2")
@pytest.mark.parametrize("dtype, huge, atol", DTYPES, ids=DTYPE_IDS)
def test_logsumexp_keeps_the_input_dtype_and_range(student, dtype, huge, atol):
    check_dtype_and_range(student.logsumexp, lambda x: torch.logsumexp(x, dim=-1), dtype, huge, atol,
                          "logsumexp", fully_masked=NEG_INF)


@pytest.mark.exercise("0.2")
def test_logsumexp_propagates_nan(student):
    check_nan_propagates(student.logsumexp, "logsumexp", fully_masked=NEG_INF)


@pytest.mark.exercise("0.2")
def test_logsumexp_leaves_its_input_unchanged(student, device):
    check_leaves_unchanged(student.logsumexp, awkward_logits(device, torch.float32, 1e4), what="the caller's tensor x")


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


@pytest.mark.exercise("0.3")
def test_log_softmax_normalises_along_the_given_dim(student, device):
    logits = make_logits((4, 6, 5), device)
    logits[:, 2, :] = NEG_INF  # fully masked along dim 1, partly along the others
    for dim in (0, 1, 2, -1, -2, -3):
        expected = F.log_softmax(logits, dim=dim).nan_to_num(nan=NEG_INF, neginf=NEG_INF)
        assert_close(student.log_softmax(logits, dim=dim), expected, what=f"log_softmax(logits, dim={dim})",
                     hint="Normalise along `dim`, not always the last axis.")


@pytest.mark.exercise("0.3")
@pytest.mark.parametrize("dtype, huge, atol", DTYPES, ids=DTYPE_IDS)
def test_log_softmax_keeps_the_input_dtype_and_range(student, dtype, huge, atol):
    check_dtype_and_range(student.log_softmax, lambda x: F.log_softmax(x, dim=-1), dtype, huge, atol,
                          "log_softmax", fully_masked=NEG_INF)


@pytest.mark.exercise("0.3")
def test_log_softmax_propagates_nan(student):
    check_nan_propagates(student.log_softmax, "log_softmax", fully_masked=NEG_INF)


@pytest.mark.exercise("0.3")
def test_log_softmax_leaves_its_input_unchanged(student, device):
    check_leaves_unchanged(student.log_softmax, awkward_logits(device, torch.float32, 1e4), what="the caller's logits")


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
    for eps in (0.1, 0.5, 1.0):
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


@pytest.mark.exercise("0.4")
@pytest.mark.parametrize("ignore_index", [0, -1, 11, 1000])
def test_cross_entropy_honours_any_ignore_index(student, device, ignore_index):
    # 0 is a class id, 11 == n_classes and 1000 lie beyond the classes: each is a valid ignore_index.
    logits, targets = make_logits((3, 8, 11), device), make_targets((3, 8), 11, device, seed=4)
    targets[:, ::3] = ignore_index
    for reduction in ("mean", "sum", "none"):
        for eps in (0.0, 0.3):
            assert_close(student.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=eps,
                                               reduction=reduction),
                         reference_cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=eps,
                                                 reduction=reduction),
                         what=f"cross_entropy(ignore_index={ignore_index}, label_smoothing={eps}, "
                              f"reduction={reduction!r})",
                         hint="Compare targets with the ignore_index argument (not -100), and give gather a "
                              "valid class at ignored positions whatever their value (0 <= index < n_classes).")


@pytest.mark.exercise("0.4")
def test_cross_entropy_with_every_target_ignored(student, device):
    logits = make_logits((4, 5), device)
    targets = torch.full((4,), -100, device=device)
    for reduction, expected in (("mean", float("nan")), ("sum", 0.0)):
        got = student.cross_entropy(logits, targets, reduction=reduction)
        assert_close(got, torch.tensor(expected, device=device), what=f"cross_entropy({reduction!r}) with every "
                     "target ignored", hint="'mean' divides 0 by 0 positions: NaN, as in torch (do not clamp the "
                     "count to 1); 'sum' is 0.")
    assert_close(student.cross_entropy(logits, targets, reduction="none"), torch.zeros(4, device=device),
                 what="cross_entropy('none') with every target ignored")


@pytest.mark.exercise("0.4")
def test_cross_entropy_on_degenerate_shapes(student, device):
    cases = [((7,), ()), ((1, 7), (1,)), ((2, 1, 3, 7), (2, 1, 3)), ((3, 1), (3,))]
    for i, (logit_shape, target_shape) in enumerate(cases):
        logits = make_logits(logit_shape, device, seed=i)
        targets = make_targets(target_shape, logit_shape[-1], device, seed=i)
        for reduction in ("mean", "sum", "none"):
            assert_close(student.cross_entropy(logits, targets, label_smoothing=0.2, reduction=reduction),
                         reference_cross_entropy(logits, targets, label_smoothing=0.2, reduction=reduction),
                         what=f"cross_entropy(logits {logit_shape}, targets {target_shape}, reduction={reduction!r})",
                         hint="The class axis is the last one and targets has the shape of the rest, which may "
                              "be () for a single position; 'none' keeps the shape of targets.")


@pytest.mark.exercise("0.4")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
def test_cross_entropy_keeps_the_dtype_of_the_logits(student, device, dtype):
    logits = make_logits((4, 6, 9), device, seed=3).to(dtype)
    targets = make_targets((4, 6), 9, device, ignored=0.3)
    for reduction in ("mean", "none"):
        got = student.cross_entropy(logits, targets, label_smoothing=0.1, reduction=reduction)
        assert isinstance(got, torch.Tensor) and got.dtype == dtype, (
            f"cross_entropy of {dtype} logits returned {getattr(got, 'dtype', type(got).__name__)}: the loss has "
            "the dtype of the logits (cast back if you compute in float32)")
        expected = reference_cross_entropy(logits.double(), targets, label_smoothing=0.1, reduction=reduction)
        assert_close(got.double(), expected, rtol=TOLERANCE_OF[dtype], atol=TOLERANCE_OF[dtype],
                     what=f"cross_entropy of {dtype} logits ({reduction!r})")


TOLERANCE_OF = {torch.float64: 1e-7, torch.bfloat16: 4 * 2**-8}  # a few units in the last place


@pytest.mark.exercise("0.4")
def test_cross_entropy_leaves_its_inputs_unchanged(student, device):
    logits, targets = make_logits((3, 4, 6), device), make_targets((3, 4), 6, device, ignored=0.5)
    for ignore_index, smoothing in ((-100, 0.0), (-100, 0.4)):
        check_leaves_unchanged(lambda l, t: student.cross_entropy(l, t, ignore_index=ignore_index,
                                                                  label_smoothing=smoothing),
                               logits, targets, what="the caller's logits or targets")


@pytest.mark.exercise("0.4")
@FEW
@given(shape=st.sampled_from([(1,), (5,), (2, 3), (2, 1, 4)]), n_classes=st.integers(1, 6),
       ignore_index=st.sampled_from([-100, -1, 0, 2, 6]), eps=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_cross_entropy_matches_torch_on_any_arguments(*, student, shape, n_classes, ignore_index, eps, reduction,
                                                       seed):
    logits = make_logits((*shape, n_classes), "cpu", scale=5.0, seed=seed)
    targets = make_targets(shape, n_classes, "cpu", seed=seed, ignored=0.3, ignore_index=ignore_index)
    assert_close(student.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=eps,
                                       reduction=reduction),
                 reference_cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=eps,
                                         reduction=reduction),
                 what=f"cross_entropy(shape {shape}, {n_classes} classes, ignore_index={ignore_index}, "
                      f"label_smoothing={eps}, reduction={reduction!r})")
