"""Make the learner's stubs from the reference solutions, so the two trees can never drift.

Every file of ``exercises/`` is generated from the file of the same name in ``solutions/``:

- A region between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` inside a function becomes a
  ``raise NotImplementedError(...)`` that names the chapter, the stage, the function and the doc
  section to read. An optional ``# STUB`` line inside the region starts commented-out lines that
  replace the raise instead (``#     return None`` becomes ``    return None``).
- A region at module level (no indentation) is dropped: private helpers and imports that only the
  reference needs.
- Everything else (signatures, docstrings, the command line) is copied verbatim.

``python -m grader.stubs`` rewrites ``exercises/``; ``python -m grader.stubs --check`` exits 1 and
lists the stale files when the committed stubs are not what the solutions generate (the project's
tests run this check). ``stub_text(path)`` gives one pristine stub, which ``grader reset`` uses;
``reference_text(path)`` the reference without markers, which ``grader solution`` shows.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .manifest import stage_of_file
from .tree import REPO_ROOT

SOLUTIONS = REPO_ROOT / "solutions"
EXERCISES = REPO_ROOT / "exercises"

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
STUB = "# STUB"
LINE_LENGTH = 100  # [tool.ruff] line-length in pyproject.toml
_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+(\w+)")
_HEADING = re.compile(r"^#{2,3} (.+)$")  # the sections a "read" can point into


class MarkerError(ValueError):
    """A solution file whose markers do not pair up."""


def _owner(lines: list[str], index: int, indent: int) -> str:
    """The qualified name of the def (and class) that encloses line ``index``."""
    names: list[str] = []
    limit = indent
    for line in reversed(lines[:index]):
        match = _DEF.match(line)
        if match and len(match.group(1)) < limit:
            names.append(match.group(3))
            limit = len(match.group(1))
            if limit == 0:
                break
    return ".".join(reversed(names)) or "this function"


def heading_anchors(markdown: str) -> dict[str, str]:
    """``{anchor: heading text}`` for the ``##`` and ``###`` headings of a Markdown text, with
    GitHub's anchors: lower case, punctuation other than ``-`` and ``_`` dropped, each space a
    ``-``, and ``-1``, ``-2``... after a repeated anchor. Fenced code blocks hold no headings."""
    anchors: dict[str, str] = {}
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        text = match.group(1).strip()
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors[f"{slug}-{count}" if count else slug] = text
    return anchors


def _words(name: str) -> list[str]:
    """``scaled_dot_product_attention`` and ``MultiHeadAttention`` as lower-case words."""
    spaced = re.sub(r"([a-z0-9])([A-Z])|([A-Z])([A-Z][a-z])", r"\1\3 \2\4", name)
    return re.findall(r"[a-z0-9]+", spaced.lower())


def _names(heading: str, name: str, code_only: bool) -> bool:
    """Whether ``heading`` names ``name``: as code (`` `name` ``), or, unless ``code_only``, in
    its words outside code (``Multi-head attention`` names ``MultiHeadAttention``)."""
    if f"`{name}`" in heading:
        return True
    words, want = _words(re.sub(r"`[^`]*`", " ", heading)), _words(name)
    return not code_only and any(
        words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1)
    )


def read_target(doc: str, owner: str) -> str:
    """Where a stub of ``owner`` (``GPTTrainer.get_lr``) sends the learner: ``doc#anchor`` for
    the first heading of the section ``doc`` that names the method (as code), else the class or
    function; ``doc`` alone when no heading names either."""
    path = REPO_ROOT / doc
    if not path.is_file():
        return doc
    anchors = heading_anchors(path.read_text(encoding="utf-8"))
    *outer, last = owner.split(".")
    candidates = [(last, bool(outer))] + [(name, False) for name in outer[:1]]
    for name, code_only in candidates:
        if name.startswith("__"):
            continue
        for anchor, heading in anchors.items():
            if _names(heading, name, code_only):
                return f"{doc}#{anchor}"
    return doc


def _message(rel: str, owner: str) -> str:
    stage = stage_of_file(rel)
    chapter = rel.split("/", 1)[0]
    if stage is None:
        return f"{chapter}: implement {owner} in {rel}"
    return (
        f"{chapter} stage '{stage.name}' not started: implement {owner} in {rel} "
        f"(read {read_target(stage.doc, owner)})"
    )


def _raise_line(indent: str, message: str) -> str:
    """The stub's raise, laid out as ``ruff format`` would (the stubs must pass its check)."""
    one_line = f"{indent}raise NotImplementedError({message!r})\n"
    if len(one_line) - 1 <= LINE_LENGTH:
        return one_line
    return f"{indent}raise NotImplementedError(\n{indent}    {message!r}\n{indent})\n"


@dataclass(frozen=True)
class Region:
    """One ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region of a solution file."""

    indent: str  # the markers' indentation ("" at module level)
    owner: str  # the def (and class) it belongs to: "MultiHeadAttention.forward"
    body: tuple[str, ...]  # the reference's lines
    stub: tuple[str, ...] | None  # the lines after "# STUB", uncommented; None without one


def parse(source: str, rel: str) -> list[str | Region]:
    """The marker grammar, read once: ``source`` as its lines outside regions and its regions.
    Raises :class:`MarkerError` (naming ``rel`` and the line) when the markers do not pair up."""
    lines = source.splitlines(keepends=True)
    parts: list[str | Region] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != BEGIN:
            if line.strip() in (END, STUB):
                raise MarkerError(f"{rel}:{i + 1}: {line.strip()!r} without {BEGIN!r}")
            parts.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        start = i
        body: list[str] = []
        stub: list[str] | None = None
        i += 1
        while i < len(lines) and lines[i].strip() != END:
            text = lines[i]
            if text.strip() == BEGIN:
                raise MarkerError(f"{rel}:{i + 1}: nested {BEGIN!r}")
            if text.strip() == STUB:
                stub = []
            elif stub is not None:
                if text.strip() and not text.strip().startswith("#"):
                    raise MarkerError(f"{rel}:{i + 1}: lines after {STUB!r} must be comments")
                # "#     return x" under indent "    " -> "    return x"
                uncommented = text[len(indent) :].removeprefix("# ").removeprefix("#")
                stub.append(indent + uncommented if text.strip() else "\n")
            else:
                body.append(text)
            i += 1
        if i == len(lines):
            raise MarkerError(f"{rel}:{start + 1}: {BEGIN!r} without {END!r}")
        i += 1  # skip END
        owner = _owner(lines, start, len(indent))
        parts.append(Region(indent, owner, tuple(body), None if stub is None else tuple(stub)))
    return parts


def make_stub(source: str, rel: str) -> str:
    """The exercise text for solution ``source`` whose tree-relative path is ``rel``."""
    out: list[str] = []
    drop_blanks = False  # after a dropped module-level region: no third blank line
    for part in parse(source, rel):
        if isinstance(part, str):
            if drop_blanks and not part.strip():
                continue
            drop_blanks = False
            out.append(part)
        elif not part.indent:
            # Module-level region: reference-only code, dropped. Keep at most the two blank
            # lines that separate top-level definitions where the region used to be.
            blank_before = 0
            while blank_before < len(out) and not out[-1 - blank_before].strip():
                blank_before += 1
            drop_blanks = blank_before >= 2
        elif part.stub is not None:
            out.extend(part.stub)
        else:
            out.append(f"{part.indent}# TODO: write this part yourself.\n")
            out.append(_raise_line(part.indent, _message(rel, part.owner)))
    return "".join(out)


def reference_text(rel: str) -> str:
    """The reference file as a learner would write it: no markers, no stub comments."""
    source = (SOLUTIONS / rel).read_text(encoding="utf-8")
    return "".join(p if isinstance(p, str) else "".join(p.body) for p in parse(source, rel))


def solution_files() -> list[Path]:
    return sorted(p for p in SOLUTIONS.rglob("*.py") if "__pycache__" not in p.parts)


def stub_text(rel: str) -> str:
    """The pristine stub for tree-relative ``rel`` (``ch2/attention.py``)."""
    return make_stub((SOLUTIONS / rel).read_text(encoding="utf-8"), rel)


def generate() -> dict[str, str]:
    """Every exercise file, by tree-relative path."""
    return {(rel := p.relative_to(SOLUTIONS).as_posix()): stub_text(rel) for p in solution_files()}


def stale_files() -> list[str]:
    """Exercise files that differ from what the solutions generate, or that have no solution."""
    expected = generate()
    stale = [
        rel
        for rel, text in expected.items()
        if not (EXERCISES / rel).exists() or (EXERCISES / rel).read_text(encoding="utf-8") != text
    ]
    extra = [
        p.relative_to(EXERCISES).as_posix()
        for p in EXERCISES.rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(EXERCISES).as_posix() not in expected
    ]
    return sorted(stale + extra)


def write() -> list[str]:
    changed = stale_files()
    for rel, text in generate().items():
        target = EXERCISES / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grader.stubs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="only report stale stubs (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for rel in stale:
            print(f"stale: exercises/{rel} (run: python -m grader.stubs)")
        return 1 if stale else 0
    for rel in write():
        print(f"wrote exercises/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
