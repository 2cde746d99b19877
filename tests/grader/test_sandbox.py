"""The OS sandbox (grader/sandbox.py): a hostile submission can harm nothing.

The hostile tree's module does, as soon as a stage imports it, what a determined student tried
(issue 13): read the solutions by ``open`` and through ``cat``, write into the grading checkout
and into another learner's submission, connect to a port on 127.0.0.1, start a process in a new
session that would outlive the stage, SIGKILL its parent, and plant a ``.pth`` file in the user
site-packages of its HOME. It writes what each attempt gave into the artifacts folder (the one
place it may write), and a batch grades it with two stages, so the second one shows whether
anything of the first survived. The batch runs in a child process: were the sandbox broken, the
SIGKILL would hit that child, not this test session.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader import cli, sandbox
from grader.runner import REPO_ROOT

from .conftest import make_tree, stage_test, write

AVAILABLE, WHY = sandbox.availability()
needs_sandbox = pytest.mark.skipif(not AVAILABLE, reason=f"no OS sandbox here: {WHY}")
MARKER = "llmfs-sandbox-escapee-31337"

HOSTILE = """
import json, os, signal, site, socket, subprocess, sys
from pathlib import Path

REPO = Path({repo!r})
VICTIM = Path({victim!r})
report = {{"pid": os.getpid(), "ppid": os.getppid()}}
folder = Path(os.environ["GRADER_ARTIFACTS"])
out = folder / f"report-{{len(list(folder.glob('report-*.json'))) + 1}}.json"


def attempt(name, action):
    try:
        report[name] = repr(action())
    except Exception as error:
        report[name] = "refused: " + type(error).__name__


user_site = Path(site.getusersitepackages())
report["pth_from_before"] = (user_site / "evil.pth").exists()
attempt("open_solutions", lambda: (REPO / "solutions/ch2/attention.py").read_text()[:20])
attempt("cat_solutions", lambda: subprocess.run(
    ["cat", str(REPO / "solutions/ch2/attention.py")], capture_output=True, text=True, check=True
).stdout[:20])
attempt("write_checkout", lambda: (REPO / "tests/ch2/test_attention.py").open("a").write("x"))
attempt("create_in_checkout", lambda: (REPO / "grader/evil.py").write_text("x"))
attempt("write_victim", lambda: VICTIM.open("a").write("raise SystemExit"))
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
attempt("escapee", lambda: subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}], start_new_session=True
).pid)
def plant():
    user_site.mkdir(parents=True, exist_ok=True)
    (user_site / "evil.pth").write_text("import os\\n")
    return str(user_site)
attempt("plant_pth", plant)
report["processes_seen"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out.write_text(json.dumps(report))
attempt("kill_parent", lambda: os.kill(os.getppid(), signal.SIGKILL))


def good():
    return 1
"""

DRIVER = """
import json, sys
from pathlib import Path
from grader.instructor import batch
from grader.manifest import Chapter, Stage

config = json.loads(sys.argv[1])
stages = tuple(
    Stage(name, name, config["tests"], ("ch9/mod.py",), "docs/x.md", ("hint",), time_limit=60)
    for name in ("first", "second")
)
chapter = Chapter("ch9", "hostile", stages)
sub = batch.Submission("mallory", Path(config["folder"]), Path(config["folder"]))
graded = batch.grade_submission(chapter, sub, batch.Options(), Path(config["scratch"]))
print(json.dumps([[s.name, s.status, s.message] for s in graded.result.stages]))
"""


def digest(*folders: Path) -> dict[str, str]:
    """A hash of every file under ``folders`` (the damage check)."""
    hashes = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def alive_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def hostile_batch(tmp_path_factory):
    """Grade the hostile submission in a batch; (per-run reports, stages, damage, escapees)."""
    if not AVAILABLE:
        pytest.skip(f"no OS sandbox here: {WHY}")
    root = tmp_path_factory.mktemp("hostile")
    victim = write(root / "class" / "alice" / "ch9" / "mod.py", "def good():\n    return 1\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    tree = make_tree(root / "class" / "mallory")
    (tree / "ch9" / "mod.py").write_text(
        HOSTILE.format(repo=str(REPO_ROOT), victim=str(victim), port=port, marker=MARKER)
    )
    tests = write(root / "stage_tests" / "test_hostile.py", stage_test(
        "def test_good():\n    assert mod.good() == 1\n"
    ))  # fmt: skip
    artifacts = root / "artifacts"
    artifacts.mkdir()
    (root / "scratch").mkdir()
    protected = (REPO_ROOT / "grader", REPO_ROOT / "tests", REPO_ROOT / "solutions", victim.parent)
    before = digest(*protected)
    config = {"tests": str(tests), "folder": str(tree), "scratch": str(root / "scratch")}
    env = dict(os.environ, GRADER_ARTIFACTS=str(artifacts))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    deadline = time.monotonic() + 5
    while alive_with(MARKER) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        accepted = listener.accept()[0] is not None
    except BlockingIOError:
        accepted = False
    listener.close()
    reports = sorted(artifacts.glob("report-*.json"))
    yield {
        "proc": proc,
        "reports": [json.loads(p.read_text()) for p in reports],
        "damaged": sorted(k for k, v in digest(*protected).items() if before.get(k) != v),
        "escapees": alive_with(MARKER),
        "accepted": accepted,
    }
    for pid in alive_with(MARKER):  # only if the test failed: leave nothing running
        os.kill(pid, 9)


@needs_sandbox
def test_the_grader_survives_and_grades_both_stages(hostile_batch):
    proc = hostile_batch["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [name for name, _, _ in stages] == ["first", "second"]
    assert len(hostile_batch["reports"]) == 2, "the hostile code ran in both stages"


@needs_sandbox
def test_solutions_cannot_be_read(hostile_batch):
    for report in hostile_batch["reports"]:
        assert report["open_solutions"].startswith("refused"), report
        assert report["cat_solutions"].startswith("refused"), report


@needs_sandbox
def test_nothing_outside_is_written(hostile_batch):
    for report in hostile_batch["reports"]:
        for attempt in ("write_checkout", "create_in_checkout", "write_victim"):
            assert report[attempt].startswith("refused"), (attempt, report)
    assert hostile_batch["damaged"] == []


@needs_sandbox
def test_no_network(hostile_batch):
    assert all(r["connect"].startswith("refused") for r in hostile_batch["reports"])
    assert not hostile_batch["accepted"]


@needs_sandbox
def test_no_process_outlives_its_stage_nor_sees_the_grader(hostile_batch):
    assert hostile_batch["escapees"] == []
    for report in hostile_batch["reports"]:
        assert not report["escapee"].startswith("refused"), "the escapee was started"
        assert report["ppid"] < 10 and len(report["processes_seen"]) < 10, report


@needs_sandbox
def test_home_is_private_to_each_stage(hostile_batch):
    first, second = hostile_batch["reports"]
    assert not first["plant_pth"].startswith("refused"), "the .pth file was written"
    assert not second["pth_from_before"], "the .pth file of the first stage reached the second"


# -- without a sandbox, and the command line it builds --------------------------------------


def test_batch_refuses_to_run_unsandboxed_without_unsafe(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "availability", lambda: (False, "no bwrap in this test"))
    (tmp_path / "subs").mkdir()
    code = cli.main(["batch", "ch2", str(tmp_path / "subs"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no bwrap in this test" in err and "--unsafe" in err
    assert len(err.strip().splitlines()) == 1
    code = cli.main(
        ["batch", "ch2", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--unsafe"]
    )
    assert code == 0 and "WITHOUT the OS sandbox" in capsys.readouterr().out


def test_the_command_line_hides_the_solutions_and_binds_the_results(tmp_path):
    results = tmp_path / "run" / "results.jsonl"
    env = {"LLMFS_TREE": str(tmp_path / "tree"), "GRADER_RESULTS": str(results)}
    (tmp_path / "tree").mkdir()
    results.parent.mkdir()
    results.touch()
    words = sandbox.bwrap_command(["python", "-m", "pytest"], env=env, cwd=REPO_ROOT)
    binds = {words[i + 1]: words[i] for i, w in enumerate(words) if w.endswith("bind")}
    assert binds[str(REPO_ROOT / "grader")] == "--ro-bind"
    assert binds[str(tmp_path / "tree")] == "--ro-bind"
    assert binds[str(results)] == "--bind"
    assert not any(path.startswith(str(REPO_ROOT / "solutions")) for path in binds)
    assert str(REPO_ROOT) not in binds and "/" not in binds
    assert words[-4:] == ["--", "python", "-m", "pytest"]


def test_the_reference_tree_is_visible_when_it_is_the_tree_under_test():
    words = sandbox.bwrap_command(["true"], env={"LLMFS_TREE": "solutions"}, cwd=REPO_ROOT)
    assert str(REPO_ROOT / "solutions") in words


def test_a_hidden_folder_inside_a_visible_one_is_covered(tmp_path):
    tree = make_tree(tmp_path / "tree")
    secret = tree / "secret"
    secret.mkdir()
    words = sandbox.bwrap_command(
        ["true"], env={"LLMFS_TREE": str(tree)}, cwd=REPO_ROOT, hide=[secret]
    )
    at = words.index(str(secret))
    assert words[at - 1] == "--tmpfs" and at > words.index(str(tree))
