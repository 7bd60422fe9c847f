"""The assertion helper of the graded tests: what a student reads when a value is wrong."""

import pytest
import torch

from grading.expect import assert_close


def test_a_known_mistake_is_named_instead_of_the_generic_hint():
    expected = torch.tensor([1.0, 2.0, 3.0])
    unscaled = torch.tensor([2.0, 4.0, 6.0])
    with pytest.raises(AssertionError, match=r"Your result is the scores without the scale\.$"):
        assert_close(unscaled.clone(), expected, what="scores", hint="Check the dtype.",
                     wrong={"the scores of another test": torch.zeros(3), "the scores without the scale": unscaled})


def test_the_generic_hint_stays_when_no_known_mistake_matches():
    with pytest.raises(AssertionError, match=r"is wrong at 3 of 3 entries.*Check the dtype\.$"):
        assert_close(torch.tensor([9.0, 9.0, 9.0]), torch.tensor([1.0, 2.0, 3.0]), what="scores",
                     hint="Check the dtype.", wrong={"the scores without the scale": torch.tensor([2.0, 4.0, 6.0])})


def test_shape_dtype_and_nan_problems_come_before_the_values():
    with pytest.raises(AssertionError, match=r"shape \(2,\), expected \(3,\)"):
        assert_close(torch.zeros(2), torch.zeros(3), what="x")
    with pytest.raises(AssertionError, match=r"dtype torch.float64, expected torch.float32"):
        assert_close(torch.zeros(3, dtype=torch.float64), torch.zeros(3), what="x")
    with pytest.raises(AssertionError, match=r"has NaN where the answer has none \(1 entries\)"):
        assert_close(torch.tensor([0.0, float("nan")]), torch.zeros(2), what="x")


def test_a_wrong_bool_mask_gets_the_message_not_a_torch_error():
    with pytest.raises(AssertionError, match=r"mask is wrong at 1 of 4 entries \(first at index \[0, 1\]: got 1, "
                                             r"expected 0; max abs diff 1"):
        assert_close(torch.tensor([[True, True], [True, True]]), torch.tensor([[True, False], [True, True]]),
                     what="mask", hint="Check the causal part.")
