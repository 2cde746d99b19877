"""The OS sandbox around every stage process (Linux, bubblewrap): a command prefix.

``python -m grader.sandbox [--hide PATH]... -- COMMAND...`` starts ``COMMAND`` inside
a fresh set of namespaces made by bubblewrap (``bwrap``) and is what the runner's
``Sandbox.prefix`` holds (:func:`prefix`). The wrapper runs just before the stage, so it reads
the stage's own environment (the tree in ``LLMFS_TREE``, the results file in ``GRADER_RESULTS``,
the artifacts folder in ``GRADER_ARTIFACTS``) and its working directory, builds the bwrap command
line (:func:`bwrap_command`) and runs it in its own process group, so the runner's time limit
kills the sandbox with everything inside it. It waits rather than ``exec``: bwrap reports a
command killed by a signal as exit code 128 + n, and the runner tells a crash (``SIGSEGV``) from
the process's own death, so the wrapper then dies by the same signal.

What the stage sees (every path at the same place as outside, so messages and tracebacks name
the learner's files as they are on disk):

- read-only: the system (``/usr``, ``/etc``, ...), the Python installation and every folder on
  its ``sys.path``, the checkout's ``grader/``, ``tests/`` and ``pyproject.toml``, the tree under
  test, and the folder of every ``.py`` file named on the command line (the stage's tests);
- not at all: everything else. ``solutions/`` (unless it is the tree under test), the rest of the
  checkout (``.grader/``, ``.git``, ``exercises/`` when grading a copy), other submissions,
  the instructor's home, and any ``--hide`` path, even one inside a visible folder;
- writable: the results file, the checks file (an instructor's run) and the artifacts folder
  (bound in), a private ``/tmp`` that is
  also ``HOME`` and ``TMPDIR`` (a tmpfs: gone with the stage, so nothing written there, a
  ``.pth`` file in the user site-packages for instance, reaches a later stage);
- no network (a new network namespace has only a loopback with nothing listening), a new PID
  namespace (``/proc`` shows only the stage; no process outlives it, even one in a new session,
  and nothing inside can signal the grader), its own user namespace as ``nobody`` with no
  capabilities, and ``--die-with-parent``: if the grader dies, the stage dies.

Why bubblewrap rather than ``unshare``: the isolation is a declarative list of mounts checked by
a small, widely used setuid-free tool (Flatpak's), where ``unshare`` would need our own mount
code, run as root inside the namespace, to build the same view. It is one system package
(``apt-get install bubblewrap``); where it is missing or cannot start (macOS, a container without
user namespaces), :func:`availability` says why and the grader falls back to the in-process
guard (``grader/guard.py``): ``batch`` refuses to do so without ``--unsafe``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .checks import CHECKS_ENV
from .statuses import RESULTS_ENV
from .tree import ENV_VAR as TREE_ENV
from .tree import REPO_ROOT, TREES

SWITCH_ENV = "GRADER_SANDBOX"  # "0": learner's runs without the sandbox
ARTIFACTS_ENV = "GRADER_ARTIFACTS"  # grader/artifacts.py: a folder the e2e stages write into
CHECKOUT_PARTS = ("grader", "tests", "pyproject.toml")  # what the stage needs of the checkout
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
INSIDE_UID = 65534  # nobody
TMP = "/tmp"
HOME = "/tmp/home"
# What a stage's environment says inside the sandbox: a private HOME and temporary folder.
PRIVATE_ENV = {
    "HOME": HOME,
    "TMPDIR": TMP,
    "TMP": TMP,
    "TEMP": TMP,
    "XDG_CACHE_HOME": f"{HOME}/.cache",
    "MPLCONFIGDIR": f"{HOME}/.matplotlib",
}


# -- the command line -----------------------------------------------------------------------


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _python_paths() -> list[Path]:
    """The interpreter's installation and every existing folder (or zip) on ``sys.path``."""
    found = [Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)]
    found += [Path(p) for p in sys.path if p]
    return [p.resolve() for p in found if p.exists()]


def tree_folder(env: Mapping[str, str]) -> Path:
    """The tree under test, as ``grader.tree.tree_path`` sees it in the stage."""
    value = env.get(TREE_ENV, "solutions")
    return REPO_ROOT / value if value in TREES else Path(value).expanduser().resolve()


def bwrap_command(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    hide: Iterable[Path] = (),
    writable: Iterable[Path] = (),
    as_pid_1: bool = False,
    bwrap: str = "bwrap",
) -> list[str]:
    """The bwrap command line that runs ``command`` in the sandbox (see the module docstring);
    ``writable``: more folders bound writable (a batch's stage server: its stages' run folders);
    ``as_pid_1``: ``command`` is the sandbox's process 1 itself, with no bwrap process inside
    (whose memory a stage could write: a batch's stage server, see grader/server.py)."""
    tree = tree_folder(env)
    hidden = [Path(p).resolve() for p in hide]
    if not _is_within(tree, REPO_ROOT / "solutions"):
        hidden.append(REPO_ROOT / "solutions")

    def secret(path: Path) -> bool:
        """A folder that would show the checkout or a hidden path as a whole: never bound."""
        return any(_is_within(h, path) for h in (REPO_ROOT, *hidden))

    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
    args += ["--as-pid-1"] if as_pid_1 else []
    args += ["--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID)]
    # Writable and private first, so that what is bound below (a tree or tests under /tmp) lies
    # on top of it rather than under it.
    args += ["--tmpfs", TMP, "--dir", HOME]
    args += ["--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc"]  # this stage's processes
    for name in SYSTEM:
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    readable = [p for p in _python_paths() if not secret(p)]
    readable += [REPO_ROOT / part for part in CHECKOUT_PARTS if (REPO_ROOT / part).exists()]
    for word in command:
        named = Path(cwd, word)
        if word.endswith(".py") and named.is_file() and not secret(named.parent.resolve()):
            readable.append(named.parent.resolve())  # the stage's test file, wherever it lives
    readable.append(tree)
    for path in sorted(set(readable), key=lambda p: len(p.parts)):  # a folder before its insides
        args += ["--ro-bind", str(path), str(path)]
    for path in hidden:
        if any(_is_within(path, p) and path != p for p in readable) and path.exists():
            args += (
                ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
            )
    for name in (RESULTS_ENV, CHECKS_ENV, ARTIFACTS_ENV):
        value = env.get(name)
        if value and Path(value).exists():
            args += ["--bind", value, value]
    for path in writable:
        args += ["--bind", os.fspath(path), os.fspath(path)]
    args += ["--dir", str(cwd), "--chdir", str(cwd), "--remount-ro", "/"]
    for key, value in PRIVATE_ENV.items():
        args += ["--setenv", key, value]
    return [*args, "--", *command]


def prefix(
    hide: Iterable[os.PathLike[str] | str] = (),
    python: str = sys.executable,
    *,
    writable: Iterable[os.PathLike[str] | str] = (),
    keep_fds: Iterable[int] = (),
    as_pid_1: bool = False,
) -> tuple[str, ...]:
    """The command words that run what follows them in the sandbox (for ``Sandbox.prefix``);
    ``writable`` folders are bound writable, ``keep_fds`` stay open for the command (a batch's
    stage server gets its listening socket that way, so the socket's file is never inside)."""
    words = [python, "-m", "grader.sandbox"]
    for path in hide:
        words += ["--hide", os.fspath(path)]
    for path in writable:
        words += ["--writable", os.fspath(path)]
    for fd in keep_fds:
        words += ["--keep-fd", str(fd)]
    words += ["--as-pid-1"] if as_pid_1 else []
    return (*words, "--")


# -- is it there? ---------------------------------------------------------------------------


@functools.cache
def availability() -> tuple[bool, str]:
    """``(True, "")`` when a stage can run in the sandbox here, else ``(False, why)``.

    Checked once per process by starting the sandbox for real (about 50 ms): bwrap may be
    installed and still unable to start (user namespaces switched off in a container).
    """
    if not sys.platform.startswith("linux"):
        return False, f"the OS sandbox needs Linux (this is {sys.platform})"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False, "bubblewrap is not installed (apt-get install bubblewrap)"
    command = bwrap_command(
        [sys.executable, "-S", "-c", "pass"], env={}, cwd=Path(TMP), bwrap=bwrap
    )
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"bubblewrap could not start: {error}"
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return False, f"bubblewrap could not start a sandbox here: {said}"
    return True, ""


def for_learner() -> tuple[str, ...]:
    """The prefix for a learner's own run: the sandbox where it is available, else nothing.

    A learner's run falls back without a word (the sandbox protects an instructor's grades; the
    learner's own code is not an adversary of the learner), and ``GRADER_SANDBOX=0`` turns it off.
    """
    if os.environ.get(SWITCH_ENV) == "0" or not availability()[0]:
        return ()
    return prefix()


# -- the wrapper ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.sandbox")
    parser.add_argument("--hide", action="append", default=[], metavar="PATH")
    parser.add_argument("--writable", action="append", default=[], metavar="PATH")
    parser.add_argument("--keep-fd", action="append", default=[], type=int, metavar="FD")
    parser.add_argument("--as-pid-1", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    for name in (RESULTS_ENV, CHECKS_ENV):
        value = os.environ.get(name)
        if value and Path(value).parent.is_dir():
            Path(value).touch()  # bound in below, so it must exist before the stage appends to it
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        sys.exit("python -m grader.sandbox: error: bubblewrap (bwrap) is not installed")
    full = bwrap_command(
        command,
        env=os.environ,
        cwd=Path.cwd(),
        hide=[Path(p) for p in args.hide],
        writable=[Path(p) for p in args.writable],
        as_pid_1=args.as_pid_1,
        bwrap=bwrap,
    )
    code = subprocess.call(full, pass_fds=tuple(args.keep_fd))
    if code > 128 and code - 128 in signal.valid_signals():
        die_like(signal.Signals(code - 128))
    sys.exit(code)


def die_like(number: signal.Signals) -> None:
    """End this process by signal ``number`` (no core file), as the sandboxed command did."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(ValueError, OSError):
        signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


if __name__ == "__main__":
    main()
