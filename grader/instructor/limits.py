"""Resource limits for a stage subprocess, applied in the subprocess itself before pytest starts.

``python -m grader.instructor.limits --memory MB --output MB -- COMMAND...`` sets the limits, then replaces
itself with ``COMMAND`` (``os.execv``: same process, same process group, so the runner's
time limit and signal handling see the command itself). The batch grader puts this in front of
every stage's pytest command (``Sandbox.prefix``). An exec wrapper rather than ``preexec_fn``:
the batch grades submissions from several threads, and ``preexec_fn`` is not safe to use while
other threads run (see the ``subprocess`` documentation).

- memory (``RLIMIT_AS``, address space): default 6 GiB. torch maps about 1-2 GiB of address
  space just to import, so below about 3 GiB even a correct submission fails; 6 GiB leaves room
  for the chapter 3 end-to-end stage. Past it an allocation fails (``MemoryError``, or torch's
  "can't allocate memory"), and the grader reports ``crashed``: ran out of memory.
- output (``RLIMIT_FSIZE``, the largest file a stage may write): default 64 MiB. Captured
  ``print`` output is a file too, so endless printing stops with ``EFBIG`` and the test is
  ``crashed``: wrote more output than the grader allows.
- core files: none (``RLIMIT_CORE`` 0), so a segfault leaves nothing behind.

POSIX only: where :mod:`resource` is missing the command runs without limits.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

DEFAULT_MEMORY_MB = 6144
DEFAULT_OUTPUT_MB = 64
MB = 1024 * 1024


def apply(memory_mb: float | None, output_mb: float | None) -> None:
    """Set this process's limits (inherited by everything it execs or starts)."""
    if resource is None:
        return
    for kind, megabytes in (
        (resource.RLIMIT_AS, memory_mb),
        (resource.RLIMIT_FSIZE, output_mb),
    ):
        if megabytes is None or megabytes <= 0:
            continue
        limit = int(megabytes * MB)
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(kind, (limit, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def prefix(
    memory_mb: float | None = DEFAULT_MEMORY_MB,
    output_mb: float | None = DEFAULT_OUTPUT_MB,
    python: str = sys.executable,
) -> tuple[str, ...]:
    """The command words that run what follows them under these limits."""
    if resource is None:  # pragma: no cover - Windows
        return ()
    return (
        python,
        "-m",
        "grader.instructor.limits",
        "--memory",
        f"{memory_mb or 0:g}",
        "--output",
        f"{output_mb or 0:g}",
        "--",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.instructor.limits")
    parser.add_argument("--memory", type=float, default=DEFAULT_MEMORY_MB, help="MB, 0: none")
    parser.add_argument("--output", type=float, default=DEFAULT_OUTPUT_MB, help="MB, 0: none")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    apply(args.memory, args.output)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
