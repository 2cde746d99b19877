"""The values a stage's checks saw, written down so that the grader can decide verdicts itself.

Every check of ``tests/helpers.py`` (``check_close``, ``check_equal``, ``check_shape``,
``check``, ``check_raises``) calls :func:`record` before it decides anything. Outside an
instructor's run this does nothing. In one (``batch``, ``grade --hidden``), the grader names a
file in ``GRADER_CHECKS`` and every call appends one JSON line to it::

    {"nodeid", "n", "kind", "got", "expected", "atol", "rtol"}

``n`` counts the checks of the test (0, 1, ...); ``got`` is what the code under test produced and
``expected`` what the test compared it with, both encoded by :func:`encode` (tensors as raw bytes,
so the grader compares exactly what the process saw). The grader (``grader/verdicts.py``) reads
these lines after the stage and compares them with an answer key made from the reference in a
process that never ran learner code: the process under test reports values, never verdicts.

This module is imported into the stage's process (the tests import it through their helpers), so
it imports nothing heavy and never raises: a value it cannot encode is written as its ``repr``.
"""

from __future__ import annotations

import base64
import json
import math
import numbers
import sys
from typing import IO, Any

CHECKS_ENV = "GRADER_CHECKS"  # the file this process appends its check lines to

# Check kinds, and how the grader compares ``got`` with ``expected`` (grader/verdicts.py).
CLOSE = "close"  # tensors: same shape, dtype kind, values within atol/rtol
EQUAL = "equal"  # any value: equal encodings
SHAPE = "shape"  # a tensor's shape (or the type it had instead)
TRUE = "true"  # a condition the test computed: must be true
RAISES = "raises"  # the exception that came out (its class name, or "nothing")
SAME = "same"  # tensors: the same dtype, shape and values, exactly (torch.equal)
BELOW = "below"  # a number (a loss): strictly below the expected limit
AT_LEAST = "at least"  # a number (an accuracy): at least the expected floor
KINDS = (CLOSE, EQUAL, SAME, SHAPE, TRUE, RAISES, BELOW, AT_LEAST)

_state: dict[str, Any] = {"nodeid": None, "n": 0, "file": None}


def open_channel(path: str) -> None:
    """Append this process's check lines to ``path`` (the plugin calls it before collection)."""
    _state["file"] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept for the process


def silence() -> None:
    """Record nothing more in this process (a rank forked by ``grader/ranks.py``: its caller
    makes the checks, with the values the ranks send back)."""
    _state["file"] = None


def begin(nodeid: str) -> None:
    """The test ``nodeid`` starts: its checks count from 0."""
    _state["nodeid"], _state["n"] = nodeid, 0


def record(kind: str, got: Any, expected: Any, *, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Write one check's values (nothing outside an instructor's run)."""
    out: IO[str] | None = _state["file"]
    if out is None or _state["nodeid"] is None:
        return
    line = {
        "nodeid": _state["nodeid"],
        "n": _state["n"],
        "kind": kind,
        "got": encode(got),
        "expected": encode(expected),
        "atol": float(atol),
        "rtol": float(rtol),
    }
    _state["n"] += 1
    try:
        out.write(json.dumps(line) + "\n")
        out.flush()
    except (OSError, ValueError):
        pass  # a closed or full channel: the grader sees missing checks, which fail


def encode(value: Any) -> Any:
    """A JSON value standing for ``value``: equal values give equal encodings."""
    try:
        return _encode(value, depth=0)
    except Exception:  # noqa: BLE001 - a hostile __eq__/__repr__ must not break the test
        return {"repr": "<unencodable>"}


def _encode(value: Any, depth: int) -> Any:
    if depth > 20:
        return {"repr": "<too deep>"}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else {"float": repr(number)}
    tensor = _tensor(value)
    if tensor is not None:
        return tensor
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list):
        return [_encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):  # torch.Size too: (2, 3) == torch.Size([2, 3])
        return {"tuple": [_encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        items = [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]
        return {"dict": sorted(items, key=json.dumps)}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted((_encode(v, depth + 1) for v in value), key=json.dumps)}
    if isinstance(value, type):
        return {"type": f"{value.__module__}.{value.__qualname__}"}
    return {"repr": repr(value)[:2000]}


def _tensor(value: Any) -> dict[str, Any] | None:
    """A tensor as its dtype, shape and values (float64, int64 or bool bytes, base64)."""
    torch = _torch()
    if torch is None or not isinstance(value, torch.Tensor):
        return None
    data = value.detach().cpu()
    if data.is_complex():
        data = torch.view_as_real(data)
    if data.dtype.is_floating_point:
        data = data.to(torch.float64)
    elif data.dtype != torch.bool:
        data = data.to(torch.int64)
    raw = data.contiguous().numpy().tobytes()
    return {
        "tensor": str(value.dtype).removeprefix("torch."),
        "shape": list(value.shape),
        "data": base64.b64encode(raw).decode("ascii"),
    }


def _torch():
    return sys.modules.get("torch")  # a tensor exists only if torch is imported already


def is_floating(dtype: str) -> bool:
    """Whether an encoded tensor's dtype name (``float32``, ``bfloat16``, ...) is a float kind."""
    return any(kind in dtype for kind in ("float", "half", "double", "complex"))


def decode_tensor(encoded: dict[str, Any]):
    """The float64 / int64 / bool tensor of an encoded tensor (the grader's side)."""
    import torch

    name = encoded["tensor"]
    raw = base64.b64decode(encoded["data"])
    if name == "bool":
        kind = torch.bool
    elif is_floating(name):
        kind = torch.float64
    else:
        kind = torch.int64
    shape = [int(s) for s in encoded["shape"]]
    if name.startswith("complex"):
        shape = [*shape, 2]
    if not raw:
        return torch.empty(shape, dtype=kind)
    return torch.frombuffer(bytearray(raw), dtype=kind).reshape(shape)
