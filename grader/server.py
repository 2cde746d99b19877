"""The stage server: torch and pytest imported once, a fresh forked process for every stage.

Most of a small stage's time is Python importing torch and pytest (2-5 s of the attention stage's
5 s on 2 cores; its tests take well under a second). A learner regrades the same tree again and
again, so the grader keeps one *stage server* per tree: ``python -m grader.server`` imports what
every stage imports, then waits on a Unix socket. For each stage it forks twice: a *handler*,
which answers the grader, and under it the *stage*, which runs ``pytest.main`` with the stage's
arguments, environment and working directory, exactly as the stage subprocess would. No learner
code ever runs in the server itself: each stage starts from the same clean, freshly imported
state, and a stage that crashes, hangs or exits takes only itself down.

Isolation is the sandbox's (``grader/sandbox.py``): the server starts inside it, with the tree
under test and its own work folder bound (the folder holds the socket and, per stage, the results
file, the checks file, the log and the artifacts). A stage that kills the server only makes the
grader start a new one.

Protocol (one connection per stage; JSON lines): the grader sends ``{"args", "env", "cwd",
"log", "fingerprint"}``; the handler answers ``{"started": pid}`` and, when the stage ends,
``{"exit": returncode}`` (negative: killed by that signal). The grader closing the connection
stops the stage (its process group is killed): that is how the runner's time limits reach it.

Used for a learner's own runs only (``python -m grader ch2``, ``check``, ``watch``), never for an
instructor's (``batch``, ``--hidden``), and never when ``GRADER_SERVER=0``. A server exits after
:data:`IDLE` seconds without a stage, or when the grader's code changes (its *fingerprint*, in
the work folder's name, no longer matches). ``python -m grader.server --stop`` stops them all.
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
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fork either: the server is never used
    fcntl = None  # type: ignore[assignment]

from .runner import Sandbox
from .sandbox import PRIVATE_ENV, for_learner
from .tree import REPO_ROOT, resolve_tree

SWITCH_ENV = "GRADER_SERVER"  # "0": every stage in a fresh subprocess
ROOT_ENV = "GRADER_SERVER_DIR"  # where the servers' work folders go (tests use their own)
IDLE = 900.0  # seconds a server waits for a stage before it exits
START_TIMEOUT = 120.0  # seconds to wait for a new server to be ready
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
    key = hashlib.sha256(f"{tree}\0{sandboxed}\0{fingerprint()}".encode()).hexdigest()[:16]
    return root() / key


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

    def private_env(self, run: Path) -> dict[str, str]:
        """The stage's own temporary folder (removed with ``run``), and in the sandbox the
        private HOME every sandboxed stage gets."""
        scratch = run / "tmp"
        scratch.mkdir(exist_ok=True)
        private = dict(PRIVATE_ENV) if self.prefix else {}
        return private | {"TMPDIR": str(scratch), "TMP": str(scratch), "TEMP": str(scratch)}

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
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(5.0)
                probe.connect(str(self.socket))
                probe.sendall(b'{"ping": true}\n')
                return probe.makefile("rb").readline().strip() == b'{"pong": true}'
        except OSError:
            return False

    def start(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> RemoteStage:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10.0)
        conn.connect(str(self.socket))
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
        if "started" not in answer:
            conn.close()
            raise OSError(f"the stage server refused the stage: {answer}")
        conn.settimeout(None)
        return RemoteStage(conn, reader)


class RemoteStage:
    """A stage running under the server, with the part of ``subprocess.Popen`` the runner uses."""

    pid = None

    def __init__(self, conn: socket.socket, reader) -> None:
        self.conn = conn
        self.reader = reader
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if self.conn.fileno() < 0:  # killed before it reported: stopped by the grader
            self.returncode = -signal.SIGKILL
            return self.returncode
        ready, _, _ = select.select([self.conn], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired("stage", timeout or 0.0)
        line = self.reader.readline()
        try:
            self.returncode = int(json.loads(line)["exit"])
        except (ValueError, KeyError, TypeError):
            self.returncode = -signal.SIGKILL  # the handler died: the server was killed
        self.kill()
        return self.returncode

    def kill(self) -> None:
        """Stop the stage: closing the connection makes its handler kill its process group."""
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)  # the reader's reference keeps the fd open
        with contextlib.suppress(OSError):
            self.reader.close()
            self.conn.close()


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


# -- the server's side ----------------------------------------------------------------------


def serve(folder: Path) -> None:
    import importlib

    # Held for the server's life: how a grader knows a server is up (even a slow one) and must
    # not start a second one (flock works across the sandbox's mount and PID namespaces).
    alive = open(folder / "alive.lock", "a")  # noqa: SIM115 - held until the process ends
    if fcntl is not None:
        try:
            fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another server has this folder
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import gc

    gc.collect()
    gc.freeze()  # what is loaded now is never collected again: cheap collections in the stages
    mine = fingerprint()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        (folder / "socket").unlink()
    listener.bind(str(folder / "socket"))
    listener.listen(16)
    listener.settimeout(IDLE)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped as they end
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return  # idle
        if os.fork() == 0:  # the handler reads the request: a slow client never blocks accept
            listener.close()
            try:
                _answer(conn, mine)
            finally:
                os._exit(0)
        conn.close()


def _answer(conn: socket.socket, mine: str) -> None:
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
        # Asked to, or the grader's code changed under this server: the server exits.
        os.kill(os.getppid(), signal.SIGTERM)
        with contextlib.suppress(OSError):
            conn.sendall(b'{"stopped": true}\n')
        return
    _handle(conn, request)


def _handle(conn: socket.socket, request: dict[str, Any]) -> None:
    """The handler: start the stage, report its end, kill it if the grader hangs up."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        _run_stage(request)  # never returns
    conn.sendall(json.dumps({"started": pid}).encode() + b"\n")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # what it left running, as for a fresh process
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            return
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1):  # the grader hung up: stop the stage
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return


def _run_stage(request: dict[str, Any]) -> None:
    """The stage: ``python -m pytest ARGS`` as a fresh process would run it."""
    code = 70
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
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
    args = parser.parse_args(argv)
    if args.stop:
        print(f"stopped {stop_all()} stage server(s)")
        return 0
    serve(Path(args.serve))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
