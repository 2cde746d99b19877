"""The stage server: torch and pytest imported once, a fresh forked process for every stage.

Most of a small stage's time is Python importing torch and pytest (2-5 s of the attention stage's
5 s on 2 cores; its tests take well under a second). A learner regrades the same tree again and
again, so the grader keeps one *stage server* per tree: ``python -m grader.server`` imports what
every stage imports, then waits on a Unix socket. For each stage it forks twice: a *handler*,
which answers the grader, and under it the *stage*, which runs ``pytest.main`` with the stage's
arguments, environment and working directory, exactly as the stage subprocess would (its
``atexit`` handlers too). No learner code ever runs in the server itself: each stage starts from
the same clean, freshly imported state, and a stage that crashes, hangs or exits takes only
itself down. When the stage ends, or the grader hangs up to stop it, the handler kills its
process group and then every process the stage left, even one in a new session (the handler is
their *subreaper*: orphans come back to it), before it answers.

Isolation is the sandbox's (``grader/sandbox.py``): the server starts inside it, with the tree
under test and its own work folder bound (the folder holds the socket and, per stage, the results
file, the checks file, the log and the artifacts). A stage that kills the server only makes the
grader start a new one. The grader reads a stage's results, checks and log only through
descriptors it opened before the stage started, so a stage that swaps them for links to other
files is not believed.

Protocol (one connection per stage; JSON lines): the grader sends ``{"args", "env", "cwd",
"log", "fingerprint"}``; the handler answers ``{"started": pid}`` and, when the stage ends,
``{"exit": returncode}`` (negative: killed by that signal; a batch's server adds ``"clean"``).
The grader half-closing the connection stops the stage: that is how the runner's time limits
reach it; the handler still answers once everything is killed.

**A learner's server** (``python -m grader ch2``, ``check``, ``watch``; never with
``GRADER_SERVER=0``): one per tree, under :func:`root`, shared by that tree's runs. It exits
after :data:`IDLE` seconds without a stage, or when the grader's code changes (its
*fingerprint*, in the work folder's name, no longer matches). ``python -m grader.server --stop``
stops them all. It trusts its stages as the learner does (they share its ``/tmp`` and HOME).

**A batch submission's server** (:class:`SubmissionServer`; ``grade --hidden`` never uses one).
Every stage of one submission runs on a server of its own, started inside THAT submission's sandbox
(the same bwrap prefix with the other submissions hidden, the same memory and output limits, the
same environment: threads, hash seed, guard, strict, hidden) while the submission before it is
graded (the batch calls :meth:`SubmissionServer.ensure` early), and stopped with everything under
it when the submission is done, even when grading raises (or when the grader dies: the server exits
when a pipe from the grader closes). Where no server can run (``GRADER_SERVER=0``, no fork, no OS
sandbox or ``--unsafe``, a custom Python, tests it cannot see) the stages run as fresh
subprocesses, with the same results. What holds, for code running in a stage (each point is tested
in ``tests/grader/test_batch_server.py``):

- *It cannot change what a later stage reports.* The server and its handlers are not
  "dumpable" (``prctl``): without that, a stage running as the same user could attach to its
  server or write its memory through ``/proc/PID/mem`` (this kernel has no Yama ptrace scope) and
  so rewrite every later stage. The server is the sandbox's process 1 (``bwrap --as-pid-1``): no
  bwrap process inside whose memory a stage could write, and process 1 ignores a stage's
  signals. Nothing the stage started outlives it (the handler's subreaper loop), and after every
  stage the handler puts ``/tmp`` (also HOME and TMPDIR), ``/dev/shm`` and ``/dev`` back as the
  sandbox made them, as a fresh sandbox per stage would have had them; what it cannot remove,
  like a stage that killed or stopped its handler, makes the grader replace the server (a new
  sandbox, a new runs folder) before the next stage.
- *It cannot reach the server's socket.* The socket's file lies outside the sandbox: the grader
  makes the listening socket and the server inherits it as a descriptor (``--listen-fd``), and
  it takes connections only from outside its PID namespace (``SO_PEERCRED``).
- *One submission's server never serves another*: its sandbox binds only that submission's copy
  and its own runs folder, under the submission's scratch folder (removed afterwards), never the
  learners' shared :func:`root`. ``--jobs N`` runs N such servers at once, with the same threads
  per stage as fresh processes.
- A stage that kills its handler, exits, crashes, hangs or forks stragglers fails as it would in
  a fresh process; the submission's later stages are still graded.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fork either: the server is never used
    fcntl = None  # type: ignore[assignment]

from . import sandbox as os_sandbox
from .runner import Sandbox
from .sandbox import ARTIFACTS_ENV, HOME, PRIVATE_ENV, for_learner
from .tree import REPO_ROOT, resolve_tree

SWITCH_ENV = "GRADER_SERVER"  # "0": every stage in a fresh subprocess
ROOT_ENV = "GRADER_SERVER_DIR"  # where the servers' work folders go (tests use their own)
IDLE = 900.0  # seconds a server waits for a stage before it exits
START_TIMEOUT = 120.0  # seconds to wait for a new server to be ready
KILL_WAIT = 10.0  # seconds a stopped stage's handler has to answer before its server is replaced
# What every stage imports, and what torch imports lazily the first time a test uses an oracle
# (nn.MultiheadAttention's forward pulls in torch.fx's symbolic shapes and sympy: 0.8-1.9 s).
PRELOAD = (
    "torch",
    "numpy",
    "pytest",
    "pytest_timeout",
    "_pytest.python",
    "_pytest.assertion.rewrite",
    "torch.fx.experimental.proxy_tensor",
    "torch.fx.experimental.symbolic_shapes",
    "torch._dynamo",  # 2.3 s, paid by the first optimizer a stage builds (every trainer)
    "torch.distributed.fsdp",  # chapter 6: 0.1 s more once torch._dynamo is in
    "torch.distributed.tensor.parallel",
    "torch.distributed.checkpoint",
    "grader.plugin",
    "grader.guard",
    "grader.forbidden",
    "grader.checks",
)
# What a batch's server imports for stages whose tests are not the course's (made-up chapters in
# the grader's own tests): what every stage imports, without torch (0.2 s instead of 3-6 s).
LIGHT = tuple(name for name in PRELOAD if name.startswith(("pytest", "_pytest", "grader.")))


def enabled() -> bool:
    return (
        os.environ.get(SWITCH_ENV, "1") != "0"
        and hasattr(os, "fork")
        and hasattr(socket, "AF_UNIX")
    )


def fingerprint() -> str:
    """A hash of what a server has imported that can change under it: the grader's code and
    the Python that runs it."""
    digest = hashlib.sha256(sys.executable.encode() + sys.version.encode())
    for path in sorted((REPO_ROOT / "grader").rglob("*.py")):
        with contextlib.suppress(OSError):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    return digest.hexdigest()[:12]


def root() -> Path:
    """Where servers keep their work folders (``GRADER_SERVER_DIR``, else one in the temporary
    folder): short, so that socket paths fit in 108 bytes."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    base = Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / f"llmfs-servers-{uid}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def folder_for(tree: Path, sandboxed: bool) -> Path:
    """The work folder of the server for ``tree``. The tree folder's identity (device, inode) is
    part of the key: a sandboxed server has the folder bound, so a tree deleted and made again
    under the same name (a fresh copy, a new clone) needs a new server; the old one would still
    see the deleted folder and report every file missing."""
    try:
        stat = tree.stat()
        identity = f"{stat.st_dev}:{stat.st_ino}"
    except OSError:
        identity = "missing"
    key = f"{tree}\0{identity}\0{sandboxed}\0{fingerprint()}"
    return root() / hashlib.sha256(key.encode()).hexdigest()[:16]


# -- the grader's side ----------------------------------------------------------------------


def learner_sandbox(tree: str | os.PathLike[str]) -> Sandbox:
    """How a learner's own run starts its stages: in the OS sandbox where there is one
    (``grader.sandbox.for_learner``), on the tree's stage server unless ``GRADER_SERVER=0``."""
    prefix = for_learner()
    server = Client(resolve_tree(tree)[1], prefix) if enabled() else None
    return Sandbox(prefix=prefix, server=server)


class Client:
    """A server for one tree, started on first use."""

    def __init__(self, tree: Path, prefix: tuple[str, ...]) -> None:
        self.tree = tree
        self.prefix = prefix
        self.folder = folder_for(tree, bool(prefix))
        self.socket = self.folder / "socket"
        self._lock = threading.Lock()

    def serves(self, tests: Path, cwd: Path | None) -> bool:
        """A stage with these tests, run from the repository root: a sandboxed server sees only
        the course's tests."""
        return cwd is None and (tests.is_relative_to(REPO_ROOT / "tests") or not self.prefix)

    def private_env(self, run: Path) -> dict[str, str]:
        """The stage's own temporary folder (removed with ``run``), in the sandbox the private
        HOME every sandboxed stage gets, and the artifacts folder (:meth:`hand_over`)."""
        scratch = run / "tmp"
        scratch.mkdir(exist_ok=True)
        private = dict(PRIVATE_ENV) if self.prefix else {}
        return private | {
            "TMPDIR": str(scratch),
            "TMP": str(scratch),
            "TEMP": str(scratch),
            ARTIFACTS_ENV: str(run / "artifacts"),
        }

    def hand_over(self, run: Path) -> None:
        """Copy what an e2e stage left in ``run`` to this command's artifacts folder."""
        target = os.environ.get(ARTIFACTS_ENV)
        folder = run / "artifacts"
        if not target or not folder.is_dir():
            return
        for path in folder.iterdir():
            with contextlib.suppress(OSError):
                shutil.copy2(path, Path(target) / path.name)

    def run_dir(self) -> Path:
        """A fresh folder for one stage's files, inside the server's work folder."""
        path = self.folder / "runs" / uuid.uuid4().hex[:12]
        path.mkdir(parents=True)
        return path

    def ensure(self) -> bool:
        """A server is listening (started now if there was none); False if none could start."""
        if self._ready():
            return True
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # One starter at a time, threads (batch-like callers) and processes (two commands) alike:
        # a second server would unlink the first one's socket and leave it running unreachable.
        with self._lock, open(self.folder / "start.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            if self._ready():
                return True
            return self._wait() if self._alive() else self._start()

    def _alive(self) -> bool:
        """A server holds this folder's alive.lock (it may still be importing torch)."""
        if fcntl is None:
            return False
        with open(self.folder / "alive.lock", "a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False

    def _wait(self, grace: float = 0.0) -> bool:
        """Until the server answers; False if it dies (after ``grace`` seconds: a server just
        spawned takes that long to take its lock) or does not answer in START_TIMEOUT."""
        start = time.monotonic()
        while time.monotonic() - start < START_TIMEOUT:
            if self._ready():
                return True
            if time.monotonic() - start > grace and not self._alive():
                return False
            time.sleep(0.05)
        return False

    def _start(self) -> bool:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
        env.update(
            {
                "LLMFS_TREE": str(self.tree),  # the sandbox binds the tree ...
                "GRADER_ARTIFACTS": str(self.folder),  # ... and the work folder, writable
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - handed to the server
        with log:
            subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "grader.server", "--serve", str(self.folder)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # it outlives this command, by design
            )
        return self._wait(grace=30.0)

    def stop(self) -> None:
        """Ask this tree's server to exit (it finishes the stages it is running)."""
        _ask_to_stop(self.socket)

    def _ready(self) -> bool:
        return _ping(self.socket)

    def start(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> RemoteStage:
        return _request_stage(self.socket, args, env, cwd, log)


def _request_stage(
    path: Path, args: list[str], env: dict[str, str], cwd: Path, log: Path, ended=None
) -> RemoteStage:
    """Ask the server listening at ``path`` to run a stage (the module docstring's protocol)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10.0)
    try:
        conn.connect(str(path))
        request = {
            "args": args,
            "env": env,
            "cwd": str(cwd),
            "log": str(log),
            "fingerprint": fingerprint(),
        }
        conn.sendall(json.dumps(request).encode() + b"\n")
        reader = conn.makefile("rb")
        answer = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        raise
    if "started" not in answer:
        conn.close()
        raise OSError(f"the stage server refused the stage: {answer}")
    conn.settimeout(None)
    return RemoteStage(conn, reader, ended)


class RemoteStage:
    """A stage running under the server, with the part of ``subprocess.Popen`` the runner uses.

    ``ended(clean)`` hears how it ended: clean when the handler answered with the exit status
    (having killed everything the stage left, and on a batch's server put the sandbox's scratch
    places back), not clean when the handler died or did not answer in :data:`KILL_WAIT`."""

    pid = None

    def __init__(self, conn: socket.socket, reader, ended=None) -> None:
        self.conn = conn
        self.reader = reader
        self.ended = ended
        self.returncode: int | None = None
        self._stopped_at: float | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        deadline = None if self._stopped_at is None else self._stopped_at + KILL_WAIT
        if deadline is not None:  # stopped by the grader: its handler answers soon
            left = max(0.0, deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        ready, _, _ = select.select([self.conn], [], [], timeout)
        if not ready:
            if deadline is not None and time.monotonic() >= deadline:
                return self._end(-signal.SIGKILL, clean=False)  # a stopped or stuck handler
            raise subprocess.TimeoutExpired("stage", timeout or 0.0)
        line = self.reader.readline()
        try:
            answer = json.loads(line)
            code, clean = int(answer["exit"]), answer.get("clean", True) is True
        except (ValueError, KeyError, TypeError):
            code, clean = -signal.SIGKILL, False  # the handler died: the server was killed
        return self._end(code, clean)

    def _end(self, code: int, clean: bool) -> int:
        self.returncode = code
        with contextlib.suppress(OSError):
            self.reader.close()
            self.conn.close()
        if self.ended is not None:
            self.ended(clean)
        return code

    def kill(self) -> None:
        """Stop the stage: the grader hanging up makes its handler kill the stage's process
        group and everything the stage left, then answer (see :meth:`wait`)."""
        if self.returncode is not None or self._stopped_at is not None:
            return
        self._stopped_at = time.monotonic()
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_WR)


def stop_all() -> int:
    """Stop every stage server of this user (``--stop``); returns how many were asked."""
    count = 0
    for folder in root().iterdir():
        count += _ask_to_stop(folder / "socket")
        shutil.rmtree(folder, ignore_errors=True)
    return count


def _ask_to_stop(path: Path) -> bool:
    """Send a server the stop request; False when none listens there."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(2.0)
            conn.connect(str(path))
            conn.sendall(b'{"stop": true}\n')
        return True
    except OSError:
        return False


class SubmissionServer:
    """One submission's own server in a batch (``grader/instructor/batch.py``).

    Started by :meth:`ensure` inside THAT submission's sandbox (the batch's bwrap prefix, the other
    submissions hidden, the batch's memory and output limits, the batch's environment: threads,
    hash seed, guard, strict), it runs every stage of the submission, each a fresh fork, and
    :meth:`close` stops it with everything under it when the submission is done. It differs from a
    learner's :class:`Client` where a batch's stages must not reach each other:

    - its socket's file lies outside the sandbox (the server gets the listening socket as an
      inherited descriptor), so no stage can reach, replace or answer on it, and the server takes
      connections only from outside its PID namespace;
    - every stage gets the sandbox's own HOME and TMPDIR (``/tmp``), and after each stage the
      server puts ``/tmp``, ``/dev/shm`` and ``/dev`` back as they were (:class:`_Scratch`): what
      a stage writes there never reaches a later stage, as with a fresh sandbox per stage;
    - a stage that did not end cleanly (it killed or stopped its handler or the server, or left
      something the server could not remove) gets this server replaced before the next stage;
      where no server can start, the stages run as fresh subprocesses.
    """

    def __init__(
        self,
        folder: Path,
        *,
        tree: Path,
        hide: tuple[Path, ...],
        limits: tuple[str, ...],
        env: dict[str, str],
        cwd: Path,
        tests: tuple[Path, ...],
        preload: tuple[str, ...] = PRELOAD,
    ) -> None:
        self.folder = folder  # outside the sandbox, but for the runs folder of each start
        self.tree = tree
        self.hide = hide
        self.limits = limits
        self.env = env
        self.cwd = cwd
        self.tests = tuple(tests)
        self.preload = preload
        self.prefix = os_sandbox.prefix(hide)  # sandboxed, as far as anyone asks
        self.starts = 0  # servers started so far (a stage that broke one costs a new one)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None  # closing it makes the server exit
        self._socket: Path | None = None
        self._runs: Path | None = None
        self._broken = False
        self._failed = False

    def serves(self, tests: Path, cwd: Path | None) -> bool:
        return tests in self.tests or tests.is_relative_to(REPO_ROOT / "tests")

    def private_env(self, run: Path) -> dict[str, str]:
        """What every sandboxed stage's environment says: HOME and TMPDIR in the sandbox's own
        ``/tmp``, which the server empties after each stage."""
        return dict(PRIVATE_ENV)

    def hand_over(self, run: Path) -> None:
        """Nothing: artifacts go straight to the batch's own folder, bound in as for a fresh
        stage."""

    def run_dir(self) -> Path:
        """A fresh folder for one stage's files, in the running server's runs folder (the one
        place outside ``/tmp`` its stages can write)."""
        if not self.ensure() or self._runs is None:
            return Path(tempfile.mkdtemp(prefix="run-", dir=self.folder))
        path = self._runs / uuid.uuid4().hex[:12]
        path.mkdir()
        return path

    def ensure(self) -> bool:
        """This submission's server is up (started, or replaced after a stage broke it); False
        where none can start (then the stages run as fresh subprocesses)."""
        if self._failed:
            return False
        if self._proc is not None and not self._broken and self._proc.poll() is None:
            return True
        self.close()
        if not self._start():
            self.close()
            self._failed = True
            return False
        return True

    def start(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> RemoteStage:
        if self._socket is None or not log.is_relative_to(self._runs or self.folder / "-"):
            raise OSError("the stage's folder is not this server's")  # it was replaced meanwhile
        return _request_stage(self._socket, args, env, cwd, log, ended=self._ended)

    def _ended(self, clean: bool) -> None:
        if not clean:
            self._broken = True
            self.close()  # now, before the grader reads what the stage left

    def _start(self) -> bool:
        self.starts += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        runs = self.folder / f"runs-{self.starts}"  # a new server never shares a folder with an old
        runs.mkdir()
        path = self.folder / f"socket-{self.starts}"
        if len(os.fsencode(path)) > 100:  # a Unix socket's path has at most 107 bytes
            return False
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lifeline, keep = os.pipe()
        try:
            listener.bind(str(path))
            listener.listen(16)
            fds = (listener.fileno(), lifeline)
            command = [
                *os_sandbox.prefix(self.hide, writable=(runs,), keep_fds=fds, as_pid_1=True),
                *self.limits,
                sys.executable,
                "-m",
                "grader.server",
                "--serve",
                str(runs),
                "--listen-fd",
                str(listener.fileno()),
                "--lifeline-fd",
                str(lifeline),
                "--preload",
                ",".join(self.preload),
                *(word for test in self.tests for word in ("--sees", str(test))),  # bound in
            ]
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "GRADER_RESULTS", "GRADER_CHECKS")
            }
            env |= dict(self.env) | {"LLMFS_TREE": str(self.tree), "PYTHONDONTWRITEBYTECODE": "1"}
            with open(self.folder / f"server-{self.starts}.log", "ab") as log:
                self._proc = subprocess.Popen(
                    command,
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=fds,
                    start_new_session=True,  # stopped as a group by close()
                )
        except OSError:
            os.close(keep)
            return False
        finally:
            listener.close()  # the server holds it now
            os.close(lifeline)
        self._lifeline, self._socket, self._runs, self._broken = keep, path, runs, False
        start = time.monotonic()
        while time.monotonic() - start < START_TIMEOUT:
            if _ping(path):
                return True
            if self._proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Stop the server and everything under it (its sandbox's PID namespace ends with it)."""
        proc, self._proc = self._proc, None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if proc is None:
            return
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # a stopped server: the sandbox goes by force
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ping(path: Path) -> bool:
    """The server listening at ``path`` answers (a learner's or a batch submission's)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5.0)
            probe.connect(str(path))
            probe.sendall(b'{"ping": true}\n')
            return probe.makefile("rb").readline().strip() == b'{"pong": true}'
    except OSError:
        return False


# -- the server's side ----------------------------------------------------------------------

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    """Linux's prctl(2); False elsewhere or where it fails."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def serve(
    folder: Path,
    listen_fd: int | None = None,
    lifeline_fd: int | None = None,
    preload: tuple[str, ...] = PRELOAD,
) -> None:
    """Serve stages until idle (a learner's server, at ``folder/socket``) or, for a batch's
    submission (``listen_fd``: the listening socket the grader made), until the grader closes
    the ``lifeline_fd`` pipe or dies."""
    import importlib

    private = listen_fd is not None
    if not private:
        # Held for the server's life: how a grader knows a server is up (even a slow one) and
        # must not start a second one (flock works across the sandbox's mount and PID
        # namespaces).
        alive = open(folder / "alive.lock", "a")  # noqa: SIM115 - held until the process ends
        if fcntl is not None:
            try:
                fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another server has this folder
    for name in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import gc

    gc.collect()
    gc.freeze()  # what is loaded now is never collected again: cheap collections in the stages
    # A stage runs as this process's grandchild, as the same user: the kernel lets a process
    # attach to another of its user, or write its memory through /proc/PID/mem, and so change
    # every later stage, unless the target is not "dumpable". The server and its handlers are
    # not; each stage is made dumpable again, as a fresh process is.
    _prctl(_PR_SET_DUMPABLE, 0)
    mine = fingerprint()
    scratch = None
    if private:
        listener = socket.socket(fileno=listen_fd)
        listener.set_inheritable(False)
        scratch = _Scratch()
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            (folder / "socket").unlink()
        listener.bind(str(folder / "socket"))
        listener.listen(16)
    watched: list[Any] = [listener]
    if lifeline_fd is not None:
        os.set_inheritable(lifeline_fd, False)
        watched.append(lifeline_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped as they end
    while True:
        ready, _, _ = select.select(watched, [], [], None if private else IDLE)
        if not ready or lifeline_fd in ready:
            return  # idle, or the grader is done with this submission (or gone)
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        if private and _peer_pid(conn) != 0:
            conn.close()  # from inside this sandbox: only the grader, outside, may ask
            continue
        if os.fork() == 0:  # the handler reads the request: a slow client never blocks accept
            listener.close()
            if lifeline_fd is not None:
                os.close(lifeline_fd)
            try:
                _answer(conn, mine, scratch)
            finally:
                os._exit(0)
        conn.close()


def _peer_pid(conn: socket.socket) -> int:
    """The connecting process's pid as this PID namespace sees it: 0 from outside it."""
    import struct

    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return -1
    return struct.unpack("3i", raw)[0]


class _Scratch:
    """The places a sandboxed stage can write besides its run folder: ``/tmp`` (also HOME and
    TMPDIR), ``/dev/shm`` and ``/dev``, put back after every stage of a batch's server as the
    sandbox made them (a fresh sandbox per stage gave each stage empty ones)."""

    ROOTS = ("/tmp", "/dev/shm")

    def __init__(self) -> None:
        self.mounts = _mount_points()
        self.dev = set(os.listdir("/dev"))

    def restore(self) -> bool:
        """Remove what the stage left; False when something stays (the server is replaced)."""
        for root in self.ROOTS:
            with contextlib.suppress(OSError):
                for path in list(self._left(Path(root))):
                    _remove(path)
        for name in set(os.listdir("/dev")) - self.dev:
            _remove(Path("/dev", name))
        with contextlib.suppress(OSError):
            os.makedirs(HOME, exist_ok=True)
        try:
            return (
                _mount_points() == self.mounts
                and set(os.listdir("/dev")) == self.dev
                and not any(path for root in self.ROOTS for path in self._left(Path(root)))
            )
        except OSError:
            return False

    def _left(self, folder: Path) -> Iterator[Path]:
        """What a stage left in ``folder``: every entry but the sandbox's mount points (the
        folders above one are looked into) and HOME itself (its entries are left)."""
        for entry in os.scandir(folder):
            if entry.path in self.mounts:
                continue
            above = any(m.startswith(entry.path + "/") for m in self.mounts)
            if above and entry.is_dir(follow_symlinks=False):
                yield from self._left(Path(entry.path))
            elif entry.path == HOME:
                yield from (Path(inside.path) for inside in os.scandir(HOME))
            else:
                yield Path(entry.path)


def _remove(path: Path) -> None:
    """Remove a file or a whole folder, whatever modes the stage gave them."""

    def unlock(function, name, _error) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
            function(name)

    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=unlock)
        else:
            path.unlink()


def _mount_points() -> set[str]:
    """Every mount point this process sees (``/proc/self/mountinfo``, octal escapes undone)."""
    points = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                points.add(fields[4].encode().decode("unicode_escape"))
    return points


def _answer(conn: socket.socket, mine: str, scratch: _Scratch | None) -> None:
    """A handler: read one request, then answer a ping, stop the server, or run a stage."""
    conn.settimeout(10.0)
    try:
        request = json.loads(conn.makefile("rb").readline())
    except (OSError, ValueError):
        return
    conn.settimeout(None)
    if not isinstance(request, dict):
        return
    if request.get("ping"):
        with contextlib.suppress(OSError):
            conn.sendall(b'{"pong": true}\n')
        return
    if request.get("stop") or request.get("fingerprint") != mine:
        # Asked to, or the grader's code changed under this server: the server exits (but a
        # batch's server, its sandbox's process 1, ignores the signal: the stage then runs as a
        # fresh subprocess, and the server goes with its submission).
        os.kill(os.getppid(), signal.SIGTERM)
        with contextlib.suppress(OSError):
            conn.sendall(b'{"stopped": true}\n')
        return
    _handle(conn, request, scratch)


def _handle(conn: socket.socket, request: dict[str, Any], scratch: _Scratch | None) -> None:
    """The handler: start the stage, kill it if the grader hangs up, and when it ends, kill
    what it left (this handler is their subreaper: even a process in a new session whose parent
    died comes back here), put the scratch places back, and report the exit status."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    pid = os.fork()
    if pid == 0:
        _run_stage(request, conn)  # never returns
    conn.sendall(json.dumps({"started": pid}).encode() + b"\n")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1):  # the grader hung up: stop the stage
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            break
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # what it left running, as for a fresh process
    _kill_the_rest()
    answer: dict[str, Any] = {"exit": code}
    if scratch is not None:
        answer["clean"] = scratch.restore()
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(answer).encode() + b"\n")


def _kill_the_rest() -> None:
    """Kill and reap every process left under this handler, until none is left (what a killed
    process had started comes back here, so the loop ends with the last of them)."""
    me = str(os.getpid())
    while True:
        left = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                    parent = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if parent == me:
                left.append(int(entry))
        if not left:
            return
        for child in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        for child in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)


def _run_stage(request: dict[str, Any], conn: socket.socket) -> None:
    """The stage: ``python -m pytest ARGS`` as a fresh process would run it."""
    code = 70
    try:
        conn.close()  # the stage has no say in what its handler reports
        _prctl(_PR_SET_DUMPABLE, 1)
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.makedirs(request["cwd"], exist_ok=True)  # a batch server's /tmp was emptied
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # the server's imports cached theirs; the stage's is its TMPDIR
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.dont_write_bytecode = True
        sys.path[0] = request["cwd"]  # what `python -m pytest` puts first
        sys.argv = ["pytest", *request["args"]]
        import pytest

        code = int(pytest.main(list(request["args"])))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it in the log, end like a crashed process
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()  # as an interpreter's exit does (the learner's handlers too)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grader.server", description=__doc__.split("\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--serve", metavar="FOLDER", help="run a server in FOLDER (the grader does)")
    group.add_argument("--stop", action="store_true", help="stop every stage server of this user")
    parser.add_argument("--listen-fd", type=int, help="a batch's: the listening socket it made")
    parser.add_argument("--lifeline-fd", type=int, help="a batch's: exit when this pipe closes")
    parser.add_argument("--preload", help="modules to import first, comma-separated")
    parser.add_argument("--sees", action="append", default=[], help="(for the sandbox to bind)")
    args = parser.parse_args(argv)
    if args.stop:
        print(f"stopped {stop_all()} stage server(s)")
        return 0
    preload = tuple(filter(None, args.preload.split(","))) if args.preload else PRELOAD
    serve(Path(args.serve), args.listen_fd, args.lifeline_fd, preload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
