"""Assertions for graded tests: compare on the trusted side and tell the student what is wrong."""

from __future__ import annotations

from typing import Mapping

import torch

# Default tolerances per dtype: a few units in the last place of each format (torch.testing's
# defaults), enough for a different but correct order of floating-point operations.
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def assert_close(actual, expected: torch.Tensor, *, what: str, hint: str = "",
                 rtol: float | None = None, atol: float | None = None, check_dtype: bool = True,
                 wrong: Mapping[str, torch.Tensor] | None = None) -> None:
    """Fail with a message for a student unless ``actual`` matches ``expected``.

    ``what`` names the quantity ("stable_softmax(logits)"); ``hint`` says the likely mistake when
    the values differ. ``wrong`` maps a description of a known mistake ("attention without the
    causal mask") to what that mistake computes: when ``actual`` equals one of them, the message names
    that symptom instead of ``hint``, so a test whose point is another clause still says what is
    wrong. NaN must sit where ``expected`` has NaN; infinities must match exactly.
    """
    __tracebackhide__ = True
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype}, expected {expected.dtype} "
                             "(keep the input's dtype)")
    tol = TOLERANCES.get(expected.dtype, dict(rtol=0.0, atol=0.0))
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    actual = actual.to(device=expected.device, dtype=expected.dtype)
    nan_actual, nan_expected = torch.isnan(actual), torch.isnan(expected)
    if not torch.equal(nan_actual, nan_expected):
        where = "has NaN where the answer has none" if (nan_actual & ~nan_expected).any() \
            else "is missing a NaN the answer has"
        raise AssertionError(f"{what} {where} ({int((nan_actual ^ nan_expected).sum())} entries). {hint}".strip())
    ok = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    if not bool(ok.all()):
        for mistake, computed in (wrong or {}).items():
            if computed.shape == actual.shape and bool(torch.isclose(
                    actual, computed.to(device=actual.device, dtype=actual.dtype), rtol=rtol, atol=atol,
                    equal_nan=True).all()):
                hint = f"Your result is {mistake}."
                break
        bad = (~ok).nonzero()[0].tolist()
        a, e = (actual.int(), expected.int()) if expected.dtype == torch.bool else (actual, expected)  # bool: no "-"
        diff = (a - e).abs().nan_to_num(posinf=float("inf"))[~ok].max().item()
        raise AssertionError(
            f"{what} is wrong at {int((~ok).sum())} of {ok.numel()} entries (first at index {bad}: "
            f"got {actual[tuple(bad)].item():.6g}, expected {expected[tuple(bad)].item():.6g}; "
            f"max abs diff {diff:.3g}, rtol={rtol:g}, atol={atol:g}). {hint}".strip()
        )


def _same(a, b) -> bool:
    """Whether ``a`` and ``b`` are equal, tensors included (same shape, dtype, values; NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return False
        b = b.to(a.device)
        equal = a == b
        if a.is_floating_point() or a.is_complex():
            equal |= a.isnan() & b.isnan()
        return bool(equal.all())
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def in_process_only(student, what: str) -> None:
    """Skip the calling test where the student's code runs behind the grading door: ``what`` (an
    optimizer, a callback, a ``transformers.Cache``) cannot cross it, so only a local run checks it."""
    from grading.door import InProcessDoor

    if not isinstance(student, InProcessDoor):
        import pytest

        pytest.skip(f"{what} cannot cross the grading door; run pytest locally")


def assert_unchanged(after, before, *, what: str) -> None:
    """Fail unless an input that a call must leave alone (``after``) still equals ``before``, a copy
    taken before the call. ``what`` names the input ("the caller's logits")."""
    if not _same(after, before):
        raise AssertionError(f"{what} changed during the call: work on a copy (an in-place operation such "
                             "as `x -= m`, `x[mask] = v` or `x.masked_fill_(...)` writes into the caller's "
                             "data)")
