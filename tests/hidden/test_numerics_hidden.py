"""Chapter 0 graded tests (hidden: grading only, not in the student handout)."""

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close
from tests.test_numerics import NEG_INF, make_logits, make_targets, reference_cross_entropy


@pytest.mark.exercise("0.1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [3, 4])
def test_hidden_stable_softmax_random_shapes_dims_and_dtypes(student, device, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(torch.randint(1, 9, (3,), generator=gen).tolist())
    logits = make_logits(shape, device, dtype=dtype, scale=50.0, seed=seed)
    for dim in range(-3, 3):
        assert_close(student.stable_softmax(logits, dim=dim), torch.softmax(logits, dim=dim),
                     what=f"stable_softmax({dtype}, shape {shape}, dim={dim})")


@pytest.mark.exercise("0.1")
def test_hidden_stable_softmax_float64_logits_beyond_float64_exp_range(student, device):
    logits = torch.tensor([[1e300, 1e300 - 1e290], [800.0, 799.0]], dtype=torch.float64, device=device)
    assert_close(student.stable_softmax(logits), torch.softmax(logits, dim=-1),
                 what="stable_softmax of float64 logits beyond exp's range")


@pytest.mark.exercise("0.1")
def test_hidden_stable_softmax_masked_rows_inside_a_batch(student, device):
    logits = make_logits((2, 3, 5), device)
    logits[0, 1] = NEG_INF
    logits[1, :, 2] = NEG_INF
    expected = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    assert_close(student.stable_softmax(logits), expected, what="stable_softmax with masked rows in a batch")


@pytest.mark.exercise("0.2")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hidden_logsumexp_every_dim_and_dtype(student, device, dtype):
    x = make_logits((3, 1, 6), device, dtype=dtype, scale=100.0, seed=7)
    for dim in (-3, -2, -1, 0, 1, 2):
        for keepdim in (False, True):
            assert_close(student.logsumexp(x, dim=dim, keepdim=keepdim),
                         torch.logsumexp(x, dim=dim, keepdim=keepdim),
                         what=f"logsumexp(dim={dim}, keepdim={keepdim}, {dtype})")


@pytest.mark.exercise("0.2")
def test_hidden_logsumexp_length_one_rows_and_masks(student, device):
    x = torch.tensor([[3.0], [NEG_INF], [-1e4]], device=device)
    assert_close(student.logsumexp(x), torch.logsumexp(x, dim=-1), what="logsumexp of length-1 rows")


@pytest.mark.exercise("0.3")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hidden_log_softmax_every_dim_and_dtype(student, device, dtype):
    logits = make_logits((4, 2, 5), device, dtype=dtype, scale=300.0, seed=9)
    for dim in (0, 1, 2, -1):
        assert_close(student.log_softmax(logits, dim=dim), F.log_softmax(logits, dim=dim),
                     what=f"log_softmax(dim={dim}, {dtype})")


@pytest.mark.exercise("0.3")
def test_hidden_log_softmax_fully_masked_column_along_dim_zero(student, device):
    logits = make_logits((3, 4), device)
    logits[:, 1] = NEG_INF
    expected = F.log_softmax(logits, dim=0)
    expected[:, 1] = NEG_INF
    assert_close(student.log_softmax(logits, dim=0), expected, what="log_softmax(dim=0) with a masked column")


@pytest.mark.exercise("0.4")
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_hidden_cross_entropy_random_batches_with_everything(student, device, seed):
    logits = make_logits((3, 17, 29), device, scale=8.0, seed=seed)
    targets = make_targets((3, 17), 29, device, seed=seed, ignored=0.3, ignore_index=0)
    targets[targets == 0] = 0
    for reduction in ("mean", "sum", "none"):
        for eps in (0.0, 0.2):
            assert_close(student.cross_entropy(logits, targets, ignore_index=0, label_smoothing=eps,
                                               reduction=reduction),
                         reference_cross_entropy(logits, targets, ignore_index=0, label_smoothing=eps,
                                                 reduction=reduction),
                         what=f"cross_entropy(ignore_index=0, label_smoothing={eps}, reduction={reduction!r})")


@pytest.mark.exercise("0.4")
def test_hidden_cross_entropy_all_ignored_is_nan_for_mean_and_zero_for_sum(student, device):
    logits = make_logits((4, 5), device)
    targets = torch.full((4,), -100, device=device)
    assert_close(student.cross_entropy(logits, targets), reference_cross_entropy(logits, targets),
                 what="cross_entropy(mean) with every target ignored", hint="0/0 is NaN, as in torch.")
    assert_close(student.cross_entropy(logits, targets, reduction="sum"),
                 reference_cross_entropy(logits, targets, reduction="sum"),
                 what="cross_entropy(sum) with every target ignored")


@pytest.mark.exercise("0.4")
def test_hidden_cross_entropy_float64_single_class(student, device):
    logits = make_logits((6, 1), device, dtype=torch.float64)
    targets = torch.zeros(6, dtype=torch.long, device=device)
    assert_close(student.cross_entropy(logits, targets, label_smoothing=0.3),
                 reference_cross_entropy(logits, targets, label_smoothing=0.3),
                 what="cross_entropy with a single class (loss 0)")


# Half precisions keep 11 (float16) and 8 (bfloat16) significant bits: one unit in the last place
# near 1.0 is 2**-10 and 2**-7, so two of them bound a correct half-precision softmax.
@pytest.mark.exercise("0.1")
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2 * 2**-10), (torch.bfloat16, 2 * 2**-7)])
def test_hidden_stable_softmax_half_precision_is_close_to_the_float32_answer(student, device, dtype, atol):
    logits = make_logits((16, 300), device, scale=8.0, seed=21).to(dtype)
    logits[0, 0] = 6e4 if dtype == torch.float16 else 1e30  # exp overflows in either format
    expected = torch.softmax(logits.float(), dim=-1)
    assert_close(student.stable_softmax(logits).float(), expected, rtol=0.0, atol=atol,
                 what=f"stable_softmax in {dtype}")
