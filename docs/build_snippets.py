"""Keep the docs' snippets of the project's code equal to that code: ``python docs/build_snippets.py``.

A section shows a piece of the project's code by including it, never by copying it. The line

    <!-- include: grader/tasks/ch2.py:train -->

followed by a fenced code block says "this block is ``train`` from ``grader/tasks/ch2.py``": a
function, a class, a method (``Class.method``) or a module-level assignment (``NAME = ...``) of
that repository file, found with ``ast`` and dedented, decorators and comments inside it
included. This script rewrites every such block from its source; ``--check`` exits 1 and lists
the blocks that differ (the docs tests run the same check). A block that is not the project's
code (an illustration, a toy version) carries no marker and says so in the text.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO_ROOT = DOCS.parent

INCLUDE = re.compile(
    r"^<!-- include: (?P<path>[^\s:]+):(?P<name>[\w.]+) -->\n"
    r"(?P<fence>```[^\n]*)\n(?P<body>.*?)^```[ \t]*$",
    re.M | re.S,
)


class SnippetError(ValueError):
    """An include marker that names a file or a definition that does not exist."""


def _find(body: list[ast.stmt], name: str) -> ast.stmt | None:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if name in names:  # NAME = ..., or one name of A, NAME = ...
                return node
    return None


def source_of(path: str, name: str) -> str:
    """The source text of ``name`` (``train``, ``Class.method``, ``CONFIG``) in repository file
    ``path``, dedented, with a final newline."""
    file = REPO_ROOT / path
    if not file.is_file():
        raise SnippetError(f"include: {path} does not exist")
    text = file.read_text(encoding="utf-8")
    node: ast.AST = ast.parse(text)
    for part in name.split("."):
        found = _find(getattr(node, "body", []), part)
        if found is None:
            raise SnippetError(f"include: {path} has no {name}")
        node = found
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    lines = text.splitlines(keepends=True)[first - 1 : node.end_lineno]
    return textwrap.dedent("".join(lines))


def render(markdown: str) -> str:
    """``markdown`` with every included block rewritten from its source."""

    def block(match: re.Match) -> str:
        source = source_of(match["path"], match["name"])
        return f"<!-- include: {match['path']}:{match['name']} -->\n{match['fence']}\n{source}```"

    return INCLUDE.sub(block, markdown)


def sections() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def stale() -> list[Path]:
    """The sections whose included blocks differ from their sources."""
    changed = []
    for path in sections():
        text = path.read_text(encoding="utf-8")
        try:
            if render(text) != text:
                changed.append(path)
        except SnippetError as error:
            raise SnippetError(f"{path.relative_to(REPO_ROOT)}: {error}") from None
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a snippet is out of date")
    args = parser.parse_args(argv)
    try:
        changed = stale()
    except SnippetError as error:
        print(error, file=sys.stderr)
        return 1
    for path in changed:
        rel = path.relative_to(REPO_ROOT)
        if args.check:
            print(f"out of date: {rel} (run python docs/build_snippets.py)")
        else:
            path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
            print(f"wrote {rel}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
