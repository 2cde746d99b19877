"""One course order, everywhere: the manifest's stage order is the order of the docs' section files
(``docs/chapterNN/N_k_<stage>.md``, one per stage), of docs/README.md, of the README's table and of
the notebooks' sections; every "read" of a stub and every doc of the manifest lands on a real
heading; every snippet of the project's code in the docs is that code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from grader.manifest import CHAPTERS
from grader.stubs import generate, heading_anchors, read_target

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = REPO_ROOT / "docs"
SECTION_FILE = re.compile(r"^(\d+)_(\d+)_(\w+)\.md$")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
READ = re.compile(r"\(read ([^)\s]+)\)")


def _folder(chapter: str) -> Path:
    return DOCS / f"chapter{int(chapter.removeprefix('ch')):02d}"


def _sections(chapter: str) -> list[tuple[int, str, Path]]:
    """``(k, name, path)`` of every numbered section of a chapter, in number order."""
    found = []
    for path in _folder(chapter).glob("*.md"):
        match = SECTION_FILE.match(path.name)
        assert match, f"{path.relative_to(REPO_ROOT)} is not named N_k_<name>.md"
        assert int(match[1]) == int(chapter.removeprefix("ch")), (
            f"{path.name} is in the wrong folder"
        )
        found.append((int(match[2]), match[3], path))
    return sorted(found)


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _section_order(links: list[str], base: Path) -> list[str]:
    """The numbered section files that ``links`` (relative to ``base``) point at, first link
    first, each once."""
    order: list[str] = []
    for target in links:
        path = (base / target.split("#")[0]).resolve()
        if SECTION_FILE.match(path.name) and path.is_relative_to(DOCS):
            rel = _rel(path)
            if rel not in order:
                order.append(rel)
    return order


def _all_sections() -> list[str]:
    return [_rel(path) for chapter in CHAPTERS for _, _, path in _sections(chapter)]


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_one_section_per_stage_in_the_manifests_order(chapter):
    """Sections are numbered 1..n without gaps, each starts with its number, every stage has
    exactly one, named N_k_<stage>.md and given as the stage's doc, and the stages' sections come
    in the manifest's order."""
    sections = _sections(chapter)
    n = int(chapter.removeprefix("ch"))
    assert [k for k, _, _ in sections] == list(range(1, len(sections) + 1)), (
        f"the sections of {chapter} are not numbered 1..n: {[p.name for _, _, p in sections]}"
    )
    for k, _, path in sections:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(f"# {n}.{k} "), f"{_rel(path)} should open with '# {n}.{k} ...'"
    stages = [stage.name for stage in CHAPTERS[chapter].stages]
    by_name = {name: path for _, name, path in sections}
    for stage in CHAPTERS[chapter].stages:
        assert stage.name in by_name, f"stage {chapter} {stage.name} has no N_k_{stage.name}.md"
        assert stage.doc.split("#")[0] == _rel(by_name[stage.name]), (
            f"the manifest's doc for {chapter} {stage.name} is {stage.doc}, "
            f"not its section {_rel(by_name[stage.name])}"
        )
    in_file_order = [name for _, name, _ in sections if name in stages]
    assert in_file_order == stages, (
        f"{chapter}: the manifest runs {stages}, the section numbers give {in_file_order}"
    )


def test_docs_index_lists_the_sections_in_order():
    text = (DOCS / "README.md").read_text(encoding="utf-8")
    links = [target for _, target in LINK.findall(text)]
    assert _section_order(links, DOCS) == _all_sections()


def test_readme_table_lists_the_sections_in_order():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    links = [target for _, target in LINK.findall(text)]
    assert _section_order(links, REPO_ROOT) == _all_sections()


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_each_chapter_introduction_lists_its_sections_in_order(chapter):
    """The first section of a chapter is its map: its table links to every other section, in
    order."""
    _, _, intro = _sections(chapter)[0]
    rows = [ln for ln in intro.read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    links = [target for _, target in LINK.findall("\n".join(rows))]
    expected = [_rel(p) for _, _, p in _sections(chapter)[1:]]
    assert [s for s in _section_order(links, intro.parent) if s in expected] == expected


def test_notebook_sections_follow_the_order():
    """A notebook's `## N.k` headings name existing sections, in increasing order."""
    for chapter in CHAPTERS:
        numbers = {k for k, _, _ in _sections(chapter)}
        n = int(chapter.removeprefix("ch"))
        path = _folder(chapter) / f"chapter{n:02d}.ipynb"
        cells = nbformat.read(path, as_version=4).cells
        heads = [
            (int(m[1]), int(m[2]))
            for cell in cells
            if cell.cell_type == "markdown"
            for m in re.finditer(r"^## (\d+)\.(\d+) ", cell.source, re.M)
        ]
        assert heads, f"{_rel(path)} has no '## {n}.k' section headings"
        assert all(c == n and k in numbers for c, k in heads), f"{_rel(path)}: {heads}"
        assert heads == sorted(heads), f"{_rel(path)} visits the sections out of order: {heads}"


def test_numbered_link_texts_point_at_their_sections():
    """A link whose text starts with a section number ("[3.6 The trainer](...)") goes to that
    section's file, so a renumbering cannot leave a stale number behind."""
    files = list(DOCS.rglob("*.md")) + [REPO_ROOT / "README.md"]
    wrong = []
    for path in files:
        for label, target in LINK.findall(path.read_text(encoding="utf-8")):
            number = re.match(r"^(\d+)\.(\d+)\b", label)
            name = target.split("#")[0].rsplit("/", 1)[-1]
            if number and not name.startswith(f"{number[1]}_{number[2]}_"):
                wrong.append(f"{_rel(path)}: [{label}]({target})")
    assert not wrong, "links whose number and file disagree:\n" + "\n".join(wrong)


# ------------------------------------------------------------------------------------- anchors


def test_heading_anchors_are_githubs():
    """The anchors are GitHub's: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    text = (
        "## Scaled dot-product attention\n"
        "## Masks: `causal_mask` and `padding_mask`\n"
        "## The contract (what `python -m grader ch2 --stage block` checks)\n"
        "### Why divide by $\\sqrt{d_k}$?\n"
        "```text\n## not a heading\n```\n"
        "## Try it\n## Try it\n"
    )
    assert list(heading_anchors(text)) == [
        "scaled-dot-product-attention",
        "masks-causal_mask-and-padding_mask",
        "the-contract-what-python--m-grader-ch2---stage-block-checks",
        "why-divide-by-sqrtd_k",
        "try-it",
        "try-it-1",
    ]


def _resolves(target: str) -> bool:
    path, _, anchor = target.partition("#")
    file = REPO_ROOT / path
    return file.is_file() and (not anchor or anchor in heading_anchors(file.read_text("utf-8")))


def test_every_stub_reads_a_real_heading():
    """Each stub's "(read docs/...#anchor)" lands on a heading of its stage's section, and every
    public function or class of a stage gets a heading, not just the file."""
    targets = {}
    for rel, text in generate().items():
        for match in re.finditer(r"implement ([\w.]+) in \S+ \(read ([^)\s]+)\)", text):
            targets[f"{rel}: {match[1]}"] = match[2]
    assert targets, "no stub names a section to read"
    broken = [f"{owner} -> {t}" for owner, t in targets.items() if not _resolves(t)]
    assert not broken, "stubs point at missing headings:\n" + "\n".join(broken)
    unanchored = [
        f"{owner} -> {t}"
        for owner, t in targets.items()
        if "#" not in t and not any(p.startswith("_") for p in owner.split(": ")[1].split("."))
    ]
    assert not unanchored, (
        "no heading of the section names these (add the name in backticks to a heading):\n"
        + "\n".join(unanchored)
    )


def test_read_target_prefers_the_method_then_the_class():
    doc = "docs/chapter03/3_6_trainer.md"
    assert read_target(doc, "GPTTrainer.get_lr").startswith(f"{doc}#the-learning-rate-schedule")
    assert read_target("docs/chapter02/2_2_attention.md", "MultiHeadAttention.forward") == (
        "docs/chapter02/2_2_attention.md#multi-head-attention"
    )
    assert read_target("docs/nowhere.md", "f") == "docs/nowhere.md"


def test_manifest_docs_and_section_links_resolve():
    """Every stage's doc, and every link between sections with an #anchor, lands on a heading."""
    broken = [
        stage.doc
        for chapter in CHAPTERS.values()
        for stage in chapter.stages
        if not _resolves(stage.doc)
    ]
    for path in list(DOCS.rglob("*.md")) + [REPO_ROOT / "README.md"]:
        for _, target in LINK.findall(path.read_text(encoding="utf-8")):
            if "#" in target and not re.match(r"^[a-z]+:", target):
                file = (path.parent / target.split("#")[0]) if not target.startswith("#") else path
                anchor = target.split("#", 1)[1]
                if anchor not in heading_anchors(file.read_text(encoding="utf-8")):
                    broken.append(f"{_rel(path)}: {target}")
    assert not broken, f"anchors that name no heading: {broken}"


# ------------------------------------------------------------------------------------ snippets


def _snippet_builder():
    spec = importlib.util.spec_from_file_location("build_snippets", DOCS / "build_snippets.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return builder


def test_snippets_of_the_projects_code_are_that_code():
    """Every block under an `<!-- include: PATH:NAME -->` marker is NAME's source, verbatim."""
    builder = _snippet_builder()
    texts = [p.read_text(encoding="utf-8") for p in builder.sections()]
    assert any(builder.INCLUDE.search(t) for t in texts), "no section includes the project's code"
    stale = [_rel(p) for p in builder.stale()]
    assert not stale, f"snippets differ from their source in {stale}: run docs/build_snippets.py"


def test_snippet_builder_finds_functions_methods_and_names():
    builder = _snippet_builder()
    assert builder.source_of("grader/tasks/ch2.py", "train").startswith("def train(")
    assert builder.source_of("grader/manifest.py", "Chapter.stage").startswith("def stage(")
    assert builder.source_of("grader/tasks/ch2.py", "BOS").startswith("PAD, BOS, EOS = 0, 1, 2")
    with pytest.raises(builder.SnippetError, match="has no nothing_here"):
        builder.source_of("grader/tasks/ch2.py", "nothing_here")


@pytest.mark.parametrize("chapter", ["ch3", "ch4"])
def test_command_lines_in_the_docs_parse(chapter):
    """Every `python -m solutions.chN ...` line a section or the README shows is accepted by the
    real command line's parser (chN/cli.py), so a renamed option cannot stay in the text."""
    import importlib
    import shlex

    parser = importlib.import_module(f"solutions.{chapter}.cli").build_parser()
    pattern = rf"^python -m (solutions|exercises)\.{chapter} "
    lines = [
        line.split("#", 1)[0]
        for path in [*DOCS.rglob("*.md"), REPO_ROOT / "README.md"]
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.match(pattern, line)
    ]
    assert lines, f"no section shows the {chapter} command line"
    for line in lines:
        parser.parse_args(shlex.split(line)[3:])  # SystemExit names the bad option
