"""The reports other tools read: JUnit XML, Gradescope's results.json, our JSON; hidden tests."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from grader import cli
from grader.instructor import formats, report
from grader.results import ChapterResult, StageResult, TestResult, Where

from .conftest import PASSING, stage_test


def _t(name: str, status: str, message: str = "") -> TestResult:
    return TestResult(f"tests/ch9/test_x.py::{name}", name, status, message, seconds=0.5)


def _s(name: str, status: str, tests=(), **kwargs) -> StageResult:
    return StageResult("ch9", name, f"The {name} stage", status, 10, tuple(tests), **kwargs)


@pytest.fixture
def result() -> ChapterResult:
    stages = (
        _s("good", "passed", [_t("a", "passed"), _t("b", "passed")], hidden_excluded=2),
        _s(
            "mixed",
            "failed",
            [
                _t("a", "passed"),
                _t("b", "failed", "b() should be 1, got 2. Look at ch9/mod.py, b."),
                _t("c", "not started", "ch9 stage 'mixed' not started: implement c"),
                _t("d", "skipped", "not for this tree"),
            ],
            message="b() should be 1, got 2. Look at ch9/mod.py, b.",
            where=Where("ch9/mod.py", 3, "b"),
            hint="a hint",
            doc="docs/ch9.md",
        ),
        _s(
            "dead",
            "crashed",
            [
                _t("a", "passed"),
                _t("b", "crashed", "your code called os._exit(0)"),
                _t("c", "not run"),
            ],
            message="your code called os._exit(0)",
        ),
        _s("broken", "error", message="ch9/mod.py:4: SyntaxError: invalid syntax"),
        _s("cheat", "passed", [_t("a", "passed")], flags=("ch9/mod.py:1 imports solutions",)),
        _s("later", "locked", message="locked until stage 'mixed' passes"),
    )
    return ChapterResult("ch9", "Fake", "alice", "/subs/alice", stages, seconds=12.3)


def test_junit_xml_parses_with_the_right_counts(result, tmp_path):
    path = formats.write_junit(result, tmp_path / "junit.xml", name="alice")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("name") == "alice"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == [f"ch9.{s.name}" for s in result.stages]
    counts = {
        name: tuple(int(s.get(k)) for k in ("tests", "failures", "errors", "skipped"))
        for name, s in suites.items()
    }
    assert counts == {
        "ch9.good": (2, 0, 0, 0),
        "ch9.mixed": (4, 2, 0, 1),
        "ch9.dead": (3, 0, 2, 0),
        "ch9.broken": (1, 0, 1, 0),
        "ch9.cheat": (2, 1, 0, 0),  # the test, and the integrity flag as a failure
        "ch9.later": (1, 0, 0, 1),
    }
    assert root.get("tests") == "13" and root.get("failures") == "3" and root.get("errors") == "3"
    failure = suites["ch9.mixed"].find("testcase[@name='b']/failure")
    assert failure.get("message") == "b() should be 1, got 2. Look at ch9/mod.py, b."
    assert failure.get("type") == "failed"
    assert suites["ch9.broken"].find("testcase/error").get("message").endswith("invalid syntax")
    assert all(float(c.get("time")) >= 0 for c in root.iter("testcase"))


# Gradescope's documented results.json fields
# (https://gradescope-autograders.readthedocs.io/en/latest/specs/, "Output format").
GS_TOP = {
    "score",
    "execution_time",
    "output",
    "output_format",
    "test_output_format",
    "test_name_format",
    "visibility",
    "stdout_visibility",
    "extra_data",
    "tests",
    "leaderboard",
}
GS_TEST = {
    "score",
    "max_score",
    "status",
    "name",
    "name_format",
    "number",
    "output",
    "output_format",
    "tags",
    "visibility",
    "extra_data",
}
GS_VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}


def test_gradescope_results_use_only_documented_fields(result, tmp_path):
    data = json.loads(formats.write_gradescope(result, tmp_path / "results.json").read_text())
    assert set(data) <= GS_TOP and {"score", "tests"} <= set(data)
    assert isinstance(data["score"], float) and isinstance(data["execution_time"], int)
    assert data["visibility"] in GS_VISIBILITY and data["stdout_visibility"] in GS_VISIBILITY
    assert isinstance(data["extra_data"], dict) and isinstance(data["output"], str)
    for test in data["tests"]:
        assert set(test) <= GS_TEST
        assert test["status"] in ("passed", "failed")
        assert isinstance(test["score"], float) and isinstance(test["max_score"], int)
        assert 0 <= test["score"] <= test["max_score"]
        assert isinstance(test["name"], str) and isinstance(test["output"], str)
        assert isinstance(test["number"], str) and test["visibility"] in GS_VISIBILITY
        assert all(isinstance(tag, str) for tag in test["tags"])
    assert [t["number"] for t in data["tests"]] == ["9.1", "9.2", "9.3", "9.4", "9.5", "9.6"]
    assert data["score"] == pytest.approx(sum(t["score"] for t in data["tests"]))
    by_name = {t["tags"][1]: t for t in data["tests"]}
    assert by_name["good"]["status"] == "passed"
    assert by_name["good"]["output"].startswith("public tests passed")
    assert by_name["cheat"]["status"] == "failed" and by_name["cheat"]["score"] == 0.0
    assert "Integrity: ch9/mod.py:1 imports solutions" in by_name["cheat"]["output"]
    assert "b() should be 1, got 2" in by_name["mixed"]["output"]
    assert "Hint: a hint" in by_name["mixed"]["output"]
    with pytest.raises(ValueError, match="visibility"):
        formats.gradescope_dict(result, visibility="sometimes")


def test_json_report_adds_label_flags_and_hidden_compatibly(result):
    data = report.to_dict(result)
    assert data["schema"] == "llmfs-grader/1"
    good, _, _, _, cheat, _ = data["stages"]
    assert (good["status"], good["label"], good["hidden_excluded"]) == (
        "passed",
        "public tests passed",
        2,
    )
    assert cheat["flags"] == ["ch9/mod.py:1 imports solutions"] and cheat["score"] == 0.0
    assert data["score"] == 10.0 + round(10 * 1 / 3, 2) + round(10 * 1 / 3, 2)


HIDDEN = (
    PASSING
    + """

import pytest


@pytest.mark.hidden
def test_secret():
    assert mod.wrong() == 1, "the hidden test caught wrong()"
"""
)


def test_hidden_tests_learner_sees_public_tests_passed(
    make_stage, fake_chapter, tree, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("GRADER_HIDDEN", "0")
    fake_chapter(make_stage("secretive", stage_test(HIDDEN)))
    junit, gs = tmp_path / "j.xml", tmp_path / "gs.json"
    code = cli.main(["ch9", "--tree", str(tree), "--junit", str(junit), "--gradescope", str(gs)])
    out = capsys.readouterr().out
    assert code == 0
    assert "public tests passed" in out and "2/2" in out
    assert "Every stage passed its public tests" in out and "Every stage passed." not in out
    assert ET.parse(junit).getroot().get("tests") == "2"
    assert json.loads(gs.read_text())["tests"][0]["output"].startswith("public tests passed")

    code = cli.main(["ch9", "--tree", str(tree), "--hidden"])
    out = capsys.readouterr().out
    assert code == 1 and "the hidden test caught wrong()" in out and "2/3" in out
