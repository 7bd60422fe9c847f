"""The argument checks every chapter module shares (not graded): a wrong type is a ``TypeError``, a value
of the right type out of range a ``ValueError``, and each message names the argument."""

import math

import pytest
import torch

from course_lib.checks import check_bool, check_dim, check_int, check_number, check_tensor


@pytest.mark.parametrize("value", [True, 2.0, "2", None, torch.tensor(2)])
def test_check_int_refuses_what_is_not_an_int_with_a_type_error(value):
    with pytest.raises(TypeError, match="n_heads"):
        check_int("n_heads", value, 1)


@pytest.mark.parametrize("value, minimum, maximum, ok", [
    (1, 1, None, True), (0, 1, None, False), (8, 2, 8, True), (9, 2, 8, False), (-5, None, None, True),
    (-5, None, 0, True), (1, None, 0, False)])
def test_check_int_bounds_are_inclusive(value, minimum, maximum, ok):
    if ok:
        assert check_int("bits", value, minimum, maximum) == value
    else:
        with pytest.raises(ValueError, match="bits"):
            check_int("bits", value, minimum, maximum)


@pytest.mark.parametrize("value", [True, "0.5", None, torch.tensor(0.5), [0.5]])
def test_check_number_refuses_what_is_not_a_real_number_with_a_type_error(value):
    with pytest.raises(TypeError, match="top_p"):
        check_number("top_p", value, 0.0, 1.0)


def test_check_number_refuses_nan_always_and_infinity_only_where_finite():
    with pytest.raises(ValueError, match="beta"):
        check_number("beta", math.nan)
    assert check_number("max_norm", math.inf, 0.0) == math.inf
    with pytest.raises(ValueError, match="eps"):
        check_number("eps", math.inf, finite=True)
    with pytest.raises(ValueError, match="eps"):
        check_number("eps", -math.inf, finite=True)


@pytest.mark.parametrize("value, kwargs, ok", [
    (0.0, {}, True), (0.0, {"open_minimum": True}, False), (1.0, {}, True), (1.0, {"open_maximum": True}, False),
    (0.5, {"open_minimum": True, "open_maximum": True}, True), (-0.1, {}, False), (1.1, {}, False)])
def test_check_number_ends_are_closed_unless_said_open(value, kwargs, ok):
    if ok:
        assert check_number("confidence", value, 0.0, 1.0, **kwargs) == value
    else:
        with pytest.raises(ValueError, match="confidence"):
            check_number("confidence", value, 0.0, 1.0, **kwargs)


def test_check_number_keeps_an_int_an_int_however_large():
    assert type(check_number("scale", 3, 0.0)) is int
    assert check_number("seed", 10 ** 400, 0, finite=True) == 10 ** 400   # too large for a float


@pytest.mark.parametrize("value", [0, 1, "True", None])
def test_check_bool_takes_only_true_and_false(value):
    with pytest.raises(TypeError, match="causal"):
        check_bool("causal", value)
    assert check_bool("causal", False) is False


def test_check_tensor_and_check_dim_name_the_argument():
    with pytest.raises(TypeError, match="logits"):
        check_tensor("logits", [1.0])
    with pytest.raises(TypeError, match="input_ids"):
        check_tensor("input_ids", torch.zeros(2), integer=True)
    with pytest.raises(ValueError, match="logits"):
        check_dim("logits", 2, torch.zeros(2, 3))
    assert check_dim("logits", -1, torch.zeros(2, 3)) == 1
