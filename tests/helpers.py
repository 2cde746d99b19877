"""Checks that fail with a sentence a learner understands: what was expected, what came out, where.

Stage tests use these instead of bare ``assert`` so that the grader can show one or two plain
lines instead of a traceback, and so that in an instructor's run the grader can decide the
verdict itself: every check first hands its values to :func:`grader.checks.record`, which the
grader compares with the reference's (``grader/verdicts.py``). So a stage test makes every
verdict through a ``check*`` helper, and prefers comparing a value with an expected one
(``check_close``, ``check_equal``) to ``check(condition)``, whose condition is computed in the
process under test. Every helper raises :class:`LearnerFailure` (an ``AssertionError``),
whose message is complete on its own. A check given the likely wrong variants (:class:`Mistake`)
names the one the learner's output equals, and the sentences are built so that no verb has to
agree with ``what`` ("the attention weights" and "the output" both read right).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from grader import checks as recorded


class LearnerFailure(AssertionError):
    """A failed check whose message is written for the learner."""


def fail(message: str) -> None:
    raise LearnerFailure(message)


def check(condition: bool, message: str) -> None:
    """Fail with ``message`` unless ``condition`` holds."""
    recorded.record(recorded.TRUE, bool(condition), True)
    if not condition:
        raise LearnerFailure(message)


def check_matches(got: object, expected: object, message: str) -> None:
    """Fail with ``message`` unless ``got == expected`` (the grader compares the two itself);
    ``check_equal`` when its standard sentence fits, this when the message must say more."""
    recorded.record(recorded.EQUAL, got, expected)
    if got != expected:
        raise LearnerFailure(message)


def check_same(got: torch.Tensor, expected: torch.Tensor, message: str) -> None:
    """Fail with ``message`` unless ``torch.equal(got, expected)``: exactly the same tensor (the
    grader compares the two itself)."""
    recorded.record(recorded.SAME, got, expected)
    if not (
        isinstance(got, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and torch.equal(got, expected)
    ):
        raise LearnerFailure(message)


def check_below(value: float, limit: float, message: str) -> None:
    """Fail with ``message`` unless ``value < limit`` (a loss under its bar); the grader compares
    the number itself, where ``check(value < limit, ...)`` would leave it to the process."""
    recorded.record(recorded.BELOW, float(value), float(limit))
    if not float(value) < float(limit):
        raise LearnerFailure(message)


def check_at_least(value: float, floor: float, message: str) -> None:
    """Fail with ``message`` unless ``value >= floor`` (an accuracy over its bar)."""
    recorded.record(recorded.AT_LEAST, float(value), float(floor))
    if not float(value) >= float(floor):
        raise LearnerFailure(message)


def check_shape(got: torch.Tensor, expected: Sequence[int], what: str, where: str) -> None:
    recorded.record(recorded.SHAPE, _shape_of(got), tuple(expected))
    _check_shape(got, expected, what, where)


def _shape_of(got: object) -> object:
    return tuple(got.shape) if isinstance(got, torch.Tensor) else type(got)


def _check_shape(got: torch.Tensor, expected: Sequence[int], what: str, where: str) -> None:
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
    recorded.record(recorded.CLOSE, got, expected, atol=atol, rtol=rtol)
    _check_shape(got, expected.shape, what, where)
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
    recorded.record(recorded.EQUAL, got, expected)
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
        matched = match is None or re.search(match, str(err)) is not None
        recorded.record(recorded.RAISES, name if matched else f"{name} (other message)", name)
        if not matched:
            fail(
                f"{what} should raise a {name} whose message mentions {match!r}, got "
                f"{name}: {err}. Look at {where}."
            )
        raised.value = err
    except Exception as err:  # noqa: BLE001 - any other error is the learner's to see
        recorded.record(recorded.RAISES, type(err).__name__, name)
        fail(f"{what} should raise {name}, got {type(err).__name__}: {err}. Look at {where}.")
    else:
        recorded.record(recorded.RAISES, "nothing", name)
        fail(f"{what} should raise {name}, but nothing was raised. Look at {where}.")


@torch.no_grad()
def fill_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter of ``module`` values fixed by its name, its shape and ``seed``, then
    reseed torch's generator with ``seed``; returns ``module``.

    A test that compares the learner's module with an oracle holding the same weights, or that
    draws its inputs after building the module, would otherwise expect values that depend on how
    the learner's ``__init__`` used the random generator. After this call every correct learner
    gets the same expected values, so the grader can hold them in its answer key
    (``grader/verdicts.py``). Matrices get N(0, 1/fan_in); vectors named ``weight`` (norms)
    1 + N(0, 0.2^2); other vectors N(0, 0.2^2). A parameter shared under several names (tied
    weights) is filled once, by the first of its names in sorted order, so the order in which
    the learner registered its modules does not matter. Not for tests of the initialisation.
    """
    by_id: dict[int, tuple[str, nn.Parameter]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) not in by_id or name < by_id[id(param)][0]:
            by_id[id(param)] = (name, param)
    for name, param in by_id.values():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        if param.dim() >= 2:
            value = noise / math.sqrt(param.shape[-1])
        elif name.endswith("weight"):
            value = 1.0 + 0.2 * noise
        else:
            value = 0.2 * noise
        param.copy_(value.to(param.dtype))
    torch.manual_seed(seed)
    return module
