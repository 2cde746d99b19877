"""Checks that fail with a sentence a learner understands: what was expected, what came out, where.

Stage tests use these instead of bare ``assert`` so that the grader can show one or two plain
lines instead of a traceback. Every helper raises :class:`LearnerFailure` (an ``AssertionError``),
whose message is complete on its own. A check given the likely wrong variants (:class:`Mistake`)
names the one the learner's output equals, and the sentences are built so that no verb has to
agree with ``what`` ("the attention weights" and "the output" both read right).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


class LearnerFailure(AssertionError):
    """A failed check whose message is written for the learner."""


def fail(message: str) -> None:
    raise LearnerFailure(message)


def check(condition: bool, message: str) -> None:
    """Fail with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LearnerFailure(message)


def check_shape(got: torch.Tensor, expected: Sequence[int], what: str, where: str) -> None:
    if not isinstance(got, torch.Tensor):
        fail(
            f"{what} should be a torch.Tensor of shape {tuple(expected)}, got {type(got).__name__}. "
            f"Look at {where}."
        )
    if tuple(got.shape) != tuple(expected):
        fail(
            f"{what} should have shape {tuple(expected)}, got {tuple(got.shape)}. Look at {where}."
        )


@dataclass(frozen=True)
class Mistake:
    """A wrong variant of the reference that a learner is likely to write, computed by the test.

    ``name`` says what that variant computes ("softmax(QK^T) without the 1/sqrt(d_k) scale"),
    ``fix`` what to change, in one clause ("divide the scores by sqrt(d_k)"), and ``value`` what
    the variant gives on the test's inputs (a tensor, or any value compared with ``==``). When a
    check fails and the learner's output equals a variant, the failure names the mistake instead
    of listing numbers.
    """

    name: str
    fix: str
    value: object


def same(got: object, value: object, *, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """``got`` equals ``value``: tensors of one shape within the tolerance, anything else by ``==``."""
    if isinstance(value, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != value.shape:
            return False
        return torch.allclose(
            got.detach().to(torch.float64),
            value.detach().to(torch.float64),
            atol=atol,
            rtol=rtol,
            equal_nan=True,
        )
    try:
        return bool(got == value)
    except (RuntimeError, TypeError, ValueError):
        return False


def fail_if_mistake(
    got: object,
    mistakes: Iterable[Mistake],
    what: str,
    where: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Fail naming the first of ``mistakes`` whose value ``got`` equals; nothing when none does.

    Call it where a check has already found ``got`` wrong: a variant equal to the right answer
    on the test's inputs would otherwise name a mistake the learner did not make.
    """
    for mistake in mistakes:
        if same(got, mistake.value, atol=atol, rtol=rtol):
            fail(f"{what} came out as {mistake.name}: {mistake.fix}. Look at {where}.")


def check_close(
    got: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    where: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    mistakes: Iterable[Mistake] = (),
    hint: str = "",
) -> None:
    """``got`` matches ``expected`` in shape, dtype kind and values, or a one-sentence failure.

    When the values differ and equal one of ``mistakes`` (within the same tolerance), the
    sentence names that mistake; otherwise it gives the first differing entry, followed by
    ``hint`` (what usually causes wrong values here; never shown for a shape or dtype failure).
    """
    check_shape(got, expected.shape, what, where)
    if got.dtype.is_floating_point != expected.dtype.is_floating_point or got.dtype == torch.bool:
        if got.dtype != expected.dtype:
            fail(f"{what} should have dtype {expected.dtype}, got {got.dtype}. Look at {where}.")
    got_f = got.detach().to(torch.float64)
    exp_f = expected.detach().to(torch.float64)
    bad = ~torch.isclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True)
    if not bad.any():
        return
    fail_if_mistake(got, mistakes, what, where, atol=atol, rtol=rtol)
    hint = f"; {hint}" if hint else ""
    if torch.isnan(got_f).any() and not torch.isnan(exp_f).any():
        n = int(torch.isnan(got_f).sum())
        fail(
            f"{what} should have no NaN (the reference has none), but {n} of {got_f.numel()} "
            f"entries {'is' if n == 1 else 'are'} NaN{hint}. Look at {where}."
        )
    index = tuple(int(i) for i in bad.nonzero()[0])
    diff = float((got_f - exp_f).abs().nan_to_num(0.0).max())
    n = int(bad.sum())
    fail(
        f"{what} should match the reference, but {n} of {bad.numel()} entries "
        f"{'differs' if n == 1 else 'differ'} (first at index {index}: expected "
        f"{exp_f[index].item():.6g}, got {got_f[index].item():.6g}; largest difference "
        f"{diff:.3g}, tolerance atol={atol:g} rtol={rtol:g}){hint}. Look at {where}."
    )


def check_equal(got: object, expected: object, what: str, where: str) -> None:
    if got != expected:
        fail(f"{what} should be {expected!r}, got {got!r}. Look at {where}.")


@dataclass
class Raised:
    """What :func:`check_raises` caught: ``value`` is the exception, as with ``pytest.raises``."""

    value: BaseException | None = None


@contextmanager
def check_raises(
    exc_type: type[BaseException], what: str, where: str, *, match: str | None = None
) -> Iterator[Raised]:
    """``pytest.raises`` with a learner's sentence when nothing, or the wrong error, is raised.

    A stub's NotImplementedError passes through untouched, so the grader still says
    "not started"; ``match`` is a regular expression the error message must contain.
    """
    name = exc_type.__name__
    raised = Raised()
    try:
        yield raised
    except NotImplementedError:
        if not issubclass(NotImplementedError, exc_type):
            raise
        raise  # pragma: no cover - no test expects NotImplementedError
    except exc_type as err:
        if match is not None and not re.search(match, str(err)):
            fail(
                f"{what} should raise a {name} whose message mentions {match!r}, got "
                f"{name}: {err}. Look at {where}."
            )
        raised.value = err
    except Exception as err:  # noqa: BLE001 - any other error is the learner's to see
        fail(f"{what} should raise {name}, got {type(err).__name__}: {err}. Look at {where}.")
    else:
        fail(f"{what} should raise {name}, but nothing was raised. Look at {where}.")
