"""Run a function on every rank of a small torch.distributed group, one forked process per rank.

Chapter 6's tests, its e2e task and its notebook run distributed code on a few CPU processes
with the gloo backend::

    def step(rank: int, world_size: int, seed: int) -> torch.Tensor:
        ...                                    # runs on each rank, in its own process
        return model.weight.detach()

    weights = run_ranks(step, 2, seed)         # [rank 0's return value, rank 1's]

- **Cheap processes.** Each rank is a fork of the calling process (where ``fork`` exists), so it
  starts in milliseconds with torch and every module the caller imported already loaded: import
  heavy modules (FSDP, DTensor) before calling, or every rank pays for them on every call. Each
  rank uses one thread (like a DataLoader worker), so two ranks share two cores fairly. Where
  only ``spawn`` exists, ``fn`` and its arguments must be picklable (module-level functions).
- **The group.** With ``init="group"`` (the default) each rank joins a gloo group through a
  ``FileStore`` in a private temporary folder (no port that another test could take) before
  ``fn(rank, world_size, *args)`` runs, and leaves it afterwards. With ``init="env"`` the harness
  only sets torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``: a free port) and ``fn`` joins itself,
  which is what a ``setup()`` written for torchrun is tested with.
- **Results come home.** Every rank's return value comes back to the caller (saved with
  ``torch.save`` in the private folder), so the checks run in the calling process, in order,
  where the grader records them (``grader/checks.py``; a rank records nothing).
- **Failures name the rank.** An exception on a rank is raised in the caller as
  :class:`RankFailed`, carrying what the grader would have said in that process (status,
  message, the line of the learner's code), so a stub's ``NotImplementedError`` still reads
  "not started". When ranks fail one after another (a rank dies, its peer's collective then
  fails), the earliest failure is the one reported: the cause, not the echo. The other ranks
  are stopped at once rather than left to wait for their timeout.
- **Hangs are reported, not waited for.** A rank still running after ``timeout`` seconds (a
  collective that the other rank never calls) raises :class:`RankTimeout`, whose message names
  every stuck rank, the ``torch.distributed`` call it waits in and the line of the learner's
  code that made it (read from a ``faulthandler`` dump of the rank's stack). Every rank is
  killed before the call returns or raises: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import multiprocessing
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .statuses import CRASHED, FAILED, TIMED_OUT
from .tree import REPO_ROOT

RANK_TIMEOUT = 30.0  # seconds a rank may run in one call: a lost peer fails in seconds, not never
_GRACE = 1.0  # seconds the other ranks get to finish (or fail too) after one rank failed
_STACK_WAIT = 0.3  # seconds a rank gets to write its stack after being asked
_DECORATORS = ("wrapper", "inner")  # c10d's logging decorators, around every collective
_FRAME = re.compile(r'File "(?P<file>.+)", line (?P<line>\d+) in (?P<function>.+)')


class RankFailed(Exception):
    """A rank raised (or died): ``rank`` and ``info``, the grader's reading of it."""

    def __init__(self, rank: int, info: dict[str, Any]) -> None:
        self.rank = rank
        self.info = {**info, "message": f"rank {rank}: {info['message']}"}
        super().__init__(self.info["message"])

    @property
    def grader_reading(self) -> dict[str, Any]:
        """What grader/plugin.py's ``classify`` reports for this exception (its ``READING``)."""
        return self.info


class RankTimeout(RankFailed):
    """Some rank was still running after the time limit (see :func:`run_ranks`); its message
    names every stuck rank itself, so it is not prefixed with one."""

    def __init__(self, rank: int, info: dict[str, Any]) -> None:
        self.rank = rank
        self.info = dict(info)
        Exception.__init__(self, info["message"])


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (for ``MASTER_PORT``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(
    fn: Callable[..., Any],
    world_size: int = 2,
    *args: Any,
    timeout: float = RANK_TIMEOUT,
    init: str = "group",
) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, world_size, *args)]``, each rank in
    its own process (see the module docstring). Raises :class:`RankFailed` or
    :class:`RankTimeout`."""
    if init not in ("group", "env"):
        raise ValueError(f"init must be 'group' or 'env', got {init!r}")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with tempfile.TemporaryDirectory(prefix="ranks-") as tmp:
        folder = Path(tmp)
        port = free_port()
        procs = [
            context.Process(
                target=_rank_main,
                args=(rank, world_size, fn, args, str(folder), init, port, timeout),
                daemon=True,
            )
            for rank in range(world_size)
        ]
        try:
            for proc in procs:
                proc.start()
            hung = _wait(procs, folder, timeout)
            if hung:
                raise _timeout_error(hung, procs, folder, timeout)
            return _collect(procs, folder)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                proc.join()


# -- inside a rank -------------------------------------------------------------------------------
def _rank_main(
    rank: int,
    world_size: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    folder: str,
    init: str,
    port: int,
    timeout: float,
) -> None:
    import torch
    import torch.distributed as dist

    from . import checks

    checks.silence()  # the caller makes the checks, with what the ranks send back
    torch.set_num_threads(1)
    stack = open(Path(folder, f"stack{rank}"), "w")  # noqa: SIM115 -- kept until the process ends
    faulthandler.register(signal.SIGUSR1, file=stack, all_threads=False)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        if init == "group":
            store = dist.FileStore(str(Path(folder, "store")), world_size)
            dist.init_process_group(
                "gloo",
                store=store,
                rank=rank,
                world_size=world_size,
                # Later than the harness's own limit, which names the waiting call.
                timeout=datetime.timedelta(seconds=2 * timeout),
            )
        outcome: dict[str, Any] = {"value": fn(rank, world_size, *args)}
    except BaseException as exc:  # noqa: BLE001 -- everything a rank does is reported, even exit
        outcome = {"error": _reading(exc), "time": time.time(), "call": _failed_call(exc)}
    finally:
        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    try:
        torch.save(outcome, Path(folder, f"rank{rank}.pt"))
    except Exception as exc:  # noqa: BLE001 -- an unpicklable return value is the caller's bug
        message = f"could not send its result back ({type(exc).__name__}: {exc})"
        error = {"status": FAILED, "message": message, "where": None, "exception": "TypeError"}
        outcome = {"error": error, "time": time.time()}
        torch.save(outcome, Path(folder, f"rank{rank}.pt"))
    if "error" in outcome:
        Path(folder, f"failed{rank}").touch()  # read by the caller while the others still run
    sys.stdout.flush()
    sys.stderr.flush()
    _exit_now()


def _exit_now() -> None:
    """Leave without running the caller's exit handlers or the grader's ``os._exit`` hook (a
    forked rank shares the caller's open files: it must not write the caller's records)."""
    try:
        import posix
    except ImportError:  # no fork there: a spawned rank has no hook to skip
        os._exit(0)
    posix._exit(0)


def _failed_call(exc: BaseException) -> str | None:
    """The torch.distributed function ``exc`` came out of, if any."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    return _distributed_call(frames[::-1])


def _reading(exc: BaseException) -> dict[str, Any]:
    """What the grader says of ``exc`` in this process: status, message, where (the tree's line)."""
    try:
        from .plugin import _Places, classify
        from .tree import tree_path

        return classify(exc, _Places(tree_path()))
    except Exception:  # noqa: BLE001 -- pytest missing (a notebook): a plain reading
        kind = type(exc).__name__
        return {"status": FAILED, "message": f"{kind}: {exc}", "where": None, "exception": kind}


# -- in the caller -------------------------------------------------------------------------------
def _wait(procs: list[Any], folder: Path, timeout: float) -> list[int]:
    """Wait for every rank; stop early once one failed. The ranks still running at the end."""
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    while True:
        alive = [p for p in procs if p.is_alive()]
        if not alive:
            return []
        if failed_at is None and any(_failed(folder, r, p) for r, p in enumerate(procs)):
            failed_at = time.monotonic()
        now = time.monotonic()
        if failed_at is not None and now > failed_at + _GRACE:
            return []  # the failure is the news; the others only wait for the dead rank
        if now > deadline:
            return [r for r, p in enumerate(procs) if p.is_alive()]
        wait([p.sentinel for p in alive], timeout=0.05)


def _failed(folder: Path, rank: int, proc: Any) -> bool:
    """Whether rank ``rank`` has ended with an error (or died)."""
    if proc.is_alive():
        return False
    return proc.exitcode != 0 or (folder / f"failed{rank}").exists()


def _load(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, weights_only=False)


def _collect(procs: list[Any], folder: Path) -> list[Any]:
    """The ranks' return values, or the earliest failure raised as :class:`RankFailed`."""
    values: list[Any] = []
    failures: list[tuple[float, int, dict[str, Any]]] = []
    for rank, proc in enumerate(procs):
        path = folder / f"rank{rank}.pt"
        if path.exists():
            outcome = _load(path)
            if "error" in outcome:
                failures.append((outcome["time"], rank, outcome["error"], outcome.get("call")))
            values.append(outcome.get("value"))
            continue
        code = proc.exitcode
        if code is not None and code < 0:
            cause = f"was killed by signal {signal.Signals(-code).name}"
        else:
            cause = "was stopped" if code is None else f"exited with code {code}"
        message = f"the process {cause} before it finished (a crash, or os._exit in the code?)"
        error = {"status": CRASHED, "message": message, "where": None, "exception": None}
        failures.append((float("inf"), rank, error, None))
        values.append(None)
    if not failures:
        return values
    # The cause first: an error of the rank's own code, then a dead rank (its peers' collectives
    # then fail), then a failed collective; the earliest of a kind.
    _, rank, error, call = min(failures, key=lambda f: (_echo_rank(f), f[0], f[1]))
    finished = [r for r in range(len(procs)) if r not in {f[1] for f in failures}]
    if call is not None and finished:
        # Its peer returned without making the same call, and left: the group broke under it.
        where = error.get("where")
        at = f", called at {where['file']}:{where['line']} in {where['function']}," if where else ""
        error = error | {
            "message": f"{call}{at} failed because rank {', '.join(map(str, finished))} had "
            f"finished without making the same call: a collective called on one rank only "
            f"never completes."  # gloo's own words ("Connection closed by peer") add nothing
        }
    raise RankFailed(rank, error)


def _echo_rank(failure: tuple[float, int, dict[str, Any], str | None]) -> int:
    """0 for a rank's own error, 1 for a dead rank, 2 for an error inside a collective."""
    _, _, error, call = failure
    return 2 if call is not None else 1 if error["status"] == CRASHED else 0


def _timeout_error(hung: list[int], procs: list[Any], folder: Path, timeout: float) -> RankTimeout:
    """Ask each stuck rank for its stack, kill every rank, and say where each one waited."""
    for rank in hung:
        with contextlib.suppress(ProcessLookupError):
            os.kill(procs[rank].pid, signal.SIGUSR1)
    time.sleep(_STACK_WAIT)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    places = []
    first_where = None
    for rank in hung:
        call, where = _waiting_in(folder / f"stack{rank}")
        if where is not None and where.get("in_tree"):
            first_where = first_where or {k: where[k] for k in ("file", "line", "function")}
        line = f"{where['file']}:{where['line']} in {where['function']}" if where else ""
        if call:
            places.append(
                f"rank {rank} waiting in {call}" + (f", called at {line}" if line else "")
            )
        else:
            places.append(f"rank {rank} running" + (f" at {line}" if line else ""))
    done = [r for r in range(len(procs)) if r not in hung]
    others = f" while rank {', '.join(map(str, done))} had finished" if done else ""
    message = (
        f"still running after {timeout:.0f} s: {'; '.join(places)}{others}. A collective or "
        f"send/recv that the other ranks never make (called on one rank only?) waits forever."
    )
    info = {"status": TIMED_OUT, "message": message, "where": first_where, "exception": None}
    return RankTimeout(hung[0], info)


def _waiting_in(stack_file: Path) -> tuple[str | None, dict[str, Any] | None]:
    """From a faulthandler dump (innermost frame first): the ``torch.distributed`` function the
    rank waits in, and the innermost frame of the code that called it (the tree's if any)."""
    try:
        lines = stack_file.read_text(errors="replace").splitlines()
    except OSError:
        return None, None
    frames = []
    for line in lines:
        match = _FRAME.search(line)
        if match is None:
            continue
        if match["function"].strip() == "_rank_main":
            break  # below it: the caller's own frames, copied by fork
        frames.append((match["file"], int(match["line"]), match["function"].strip()))
    return _distributed_call(frames), _innermost_code(frames)


def _distributed_call(frames: list[tuple[str, int, str]]) -> str | None:
    """``torch.distributed.all_reduce``: the innermost torch.distributed function in ``frames``."""
    for file, _, function in frames:
        if "torch/distributed/" in file.replace(os.sep, "/") and function not in _DECORATORS:
            return f"torch.distributed.{function}"
    return None


def _innermost_code(frames: list[tuple[str, int, str]]) -> dict[str, Any] | None:
    """The innermost frame of the tree under test, else of any code outside torch."""
    from .plugin import _Places
    from .tree import tree_path

    places = _Places(tree_path())
    for file, line, function in frames:
        rel = places.in_tree(file)
        if rel is not None:
            return {"file": rel, "line": line, "function": function, "in_tree": True}
    grader = Path(__file__).parent
    for file, line, function in frames:
        path = Path(file)
        if f"{os.sep}torch{os.sep}" in file or file.startswith("<") or path.parent == grader:
            continue  # torch's frames, and the grader's wrappers (forbidden.py, this file)
        with contextlib.suppress(ValueError):
            file = path.relative_to(REPO_ROOT).as_posix()  # tests/ch6/test_x.py
        return {"file": file, "line": line, "function": function}
    return None
