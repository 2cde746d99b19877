"""The chapters are tested like code: every section exists and is linked, every link resolves,
every ```python block and every notebook cell runs against ``solutions`` on CPU, the notebooks are
what their builder writes, and the numbers quoted in the prose are what the code computes.

These tests import ``solutions`` by name on purpose: the docs teach the reference (a learner
switches the notebooks to ``exercises`` by hand), so they are not stage tests and do not go
through ``grader.tree``.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import torch

from grader.manifest import CHAPTERS

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = REPO_ROOT / "docs"
INDEX = DOCS / "README.md"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Every numbered section (N_k_<name>.md), and every doc the manifest names.
SECTIONS = sorted(
    {stage.doc.split("#")[0] for chapter in CHAPTERS.values() for stage in chapter.stages}
    | {_path.relative_to(REPO_ROOT).as_posix() for _path in DOCS.glob("chapter*/[0-9]*_*.md")}
)
MARKDOWN = sorted(DOCS.rglob("*.md"))
CHAPTER_FILES = [REPO_ROOT / s for s in SECTIONS]
NOTEBOOKS = sorted(DOCS.rglob("*.ipynb"))

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)
INCLUDED_BLOCK = re.compile(r"^<!-- include: .*? -->\n```.*?^```\s*$", re.S | re.M)


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


@pytest.fixture
def one_thread():
    """Small tensors run faster on one thread, and the 2 shared cores stay free for others."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------- sections and links


def test_every_section_exists_and_is_linked_from_the_index():
    """Each section (the manifest's docs and the numbered reading sections) exists and
    docs/README.md links to it."""
    index_targets = {
        (INDEX.parent / target.split("#")[0]).resolve()
        for target in LINK.findall(INDEX.read_text())
    }
    missing = [s for s in SECTIONS if not (REPO_ROOT / s).is_file()]
    assert not missing, f"sections missing: {missing}"
    unlinked = [s for s in SECTIONS if (REPO_ROOT / s).resolve() not in index_targets]
    assert not unlinked, f"docs/README.md does not link to {unlinked}"


def test_each_stage_section_names_its_exercise_file_and_grader_command():
    """A learner who opens a stage's section finds the file to edit and the command to run."""
    for chapter in CHAPTERS.values():
        for stage in chapter.stages:
            text = (REPO_ROOT / stage.doc.split("#")[0]).read_text()
            command = f"python -m grader {chapter.name} --stage {stage.name}"
            assert command in text, f"{stage.doc} does not show `{command}`"
            if len(stage.files) == 1:  # an e2e stage trains every file of the chapter
                file = f"exercises/{stage.files[0]}"
                assert file in text, f"{stage.doc} does not name {file} (stage {stage.name})"


@pytest.mark.parametrize("path", MARKDOWN + [REPO_ROOT / "README.md"], ids=_rel)
def test_relative_links_resolve(path):
    """Every relative link (and image) in the docs points at a file that exists."""
    if not path.exists():
        pytest.skip(f"{_rel(path)} does not exist yet")
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # URLs and in-page anchors
        if not (path.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{_rel(path)} has broken links: {broken}"


def test_figures_are_pngs_that_the_docs_use():
    """Every figure make_figures.py draws is committed and shown in some section."""
    source = (DOCS / "make_figures.py").read_text()
    makers = dict(re.findall(r'^    "(\w+)": (\w+),$', source, flags=re.M))  # figure: function
    assert makers, "docs/make_figures.py lists no figures in MAKERS"
    used = " ".join(p.read_text() for p in CHAPTER_FILES)
    functions = {
        node.name: ast.get_source_segment(source, node)
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef)
    }
    for name, maker in makers.items():
        png = DOCS / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} missing"
        assert f"figures/{name}.png" in used, f"no section shows figures/{name}.png"
        # a maker that draws but never saves leaves the committed PNG as it was, unnoticed
        assert "savefig(out" in functions[maker], f"{maker} never saves {name}.png"


# --------------------------------------------------------------------------------- code blocks


@pytest.mark.parametrize("path", CHAPTER_FILES, ids=_rel)
def test_python_blocks_run(path, one_thread, monkeypatch, tmp_path):
    """Every ```python block of a section runs, in order, in one namespace per file (blocks
    included from the project's code are compared with it instead, by test_snippets.py)."""
    monkeypatch.chdir(tmp_path)  # a block that writes a file cannot litter the repository
    text = INCLUDED_BLOCK.sub("", path.read_text(encoding="utf-8"))
    blocks = PYTHON_BLOCK.findall(text)
    namespace: dict = {"__name__": "__docs__"}
    for i, source in enumerate(blocks, 1):
        code = compile(source, f"{_rel(path)} (python block {i})", "exec")
        exec(code, namespace)


# ----------------------------------------------------------------------------------- notebooks


def test_notebooks_exist_and_are_up_to_date():
    """Each chapter has a notebook, and it is exactly what docs/build_notebooks.py writes."""
    spec = importlib.util.spec_from_file_location("build_notebooks", DOCS / "build_notebooks.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert sorted(builder.NOTEBOOKS) == NOTEBOOKS, "every .ipynb under docs/ comes from the builder"
    chapters = [f"chapter{int(name.removeprefix('ch')):02d}" for name in sorted(CHAPTERS)]
    assert [p.parent.name for p in NOTEBOOKS] == chapters
    for path in NOTEBOOKS:
        assert path.read_text(encoding="utf-8") == builder.render(path), (
            f"{_rel(path)} is out of date: run python docs/build_notebooks.py"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_is_valid_and_runs(path, one_thread, monkeypatch):
    """The notebook validates with nbformat and its code cells run against solutions on CPU,
    from the notebook's own folder (as Jupyter would start it)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    text = path.read_text(encoding="utf-8")
    assert "drive.mount" not in text and "urlretrieve" not in text and "wget " not in text
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert 'TREE = "solutions"' in code_cells[0].source, "the first code cell holds the switch"
    for cell in code_cells:
        exec(compile(cell.source, f"{_rel(path)} (cell {cell.id})", "exec"), namespace)
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    plt.close("all")


# ------------------------------------------------------------------------------------- numbers


def _gpt_params(**shape) -> int:
    from solutions.ch3.gpt import GPT, GPTConfig

    with torch.device("meta"):  # shapes only: GPT-2 small costs no memory
        return GPT(GPTConfig(**shape)).num_parameters()


def _corpus_stats() -> dict[str, float]:
    from solutions.ch3.corpus import generate_corpus
    from solutions.ch3.tokenizer import BPETokenizer, SimpleTokenizer

    text = generate_corpus()
    tokenizer = SimpleTokenizer(text)
    ids = tokenizer.encode(text)
    counts = Counter(ids[: int(len(ids) * 0.9)])
    total = sum(counts.values())
    return {
        "vocab": tokenizer.vocab_size,
        "ln_vocab": math.log(tokenizer.vocab_size),
        "unigram": -sum(c / total * math.log(c / total) for c in counts.values()),
        "bpe_vocab_reached": BPETokenizer().train(text, vocab_size=1024).vocab_size,
    }


def test_numbers_quoted_in_the_text_match_the_code():
    """Parameter counts, loss baselines and vocabulary sizes in the prose are what the code gives."""
    gpt2 = {"vocab_size": 50257, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768}
    small = {"vocab_size": 1000, "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128}
    stats = _corpus_stats()
    n_gpt2, n_small = _gpt_params(**gpt2), _gpt_params(**small)
    n_corpus_small = _gpt_params(**{**small, "vocab_size": stats["vocab"]})
    blocks_small = n_small - (1000 + 64) * 128 - 2 * 128
    from grader.tasks.ch2 import TrainConfig

    e2e = TrainConfig()
    quoted = {
        "docs/chapter02/2_5_e2e.md": [
            f"on {e2e.n_train:,} such pairs",
            f"decodes {e2e.n_test:,}",
            f"the real run takes {e2e.steps:,}",
        ],
        "docs/chapter03/3_4_gpt.md": [
            f"{n_gpt2:,}",  # GPT-2 small, tied
            f"{n_gpt2 + 50257 * 768:,}",  # the book's untied version
            f"{n_small:,}",  # the book's small config
            f"{blocks_small:,}",
            f"{n_corpus_small:,}",
            f"({stats['vocab']} symbols",
            f"{50257 * 768 / 1e6:.1f}M",  # what tying saves
        ],
        "docs/chapter03/3_8_e2e.md": [
            f"$V = {stats['vocab']}$",
            f"$\\ln {stats['vocab']} = {stats['ln_vocab']:.2f}$",
            f"**{stats['unigram']:.2f}**",
        ],
        "docs/chapter03/3_2_tokenizer.md": [f"stops at {stats['bpe_vocab_reached']}"],
    }
    assert n_gpt2 == 124_439_808, "GPT-2 small must have exactly 124,439,808 parameters"
    quoted |= _chapter4_numbers()
    for doc, numbers in quoted.items():
        text = " ".join((REPO_ROOT / doc).read_text(encoding="utf-8").split())  # lines joined
        missing = [n for n in numbers if n not in text]
        assert not missing, f"{doc} should quote {missing} (what the code computes now)"


def _chapter4_numbers() -> dict[str, list[str]]:
    """The parameter counts and cache sizes chapter 4 quotes, from the reference's configs."""
    from grader.tasks import ch3 as ch3_task
    from grader.tasks import ch4 as ch4_task
    from solutions.ch4.llama import LLAMA_3_2_1B, QWEN2_5_0_5B, Llama, LlamaConfig

    with torch.device("meta"):  # shapes only
        n_llama, n_qwen = Llama(LLAMA_3_2_1B).num_parameters(), Llama(QWEN2_5_0_5B).num_parameters()
    c = LLAMA_3_2_1B
    feed_forward = c.n_layers * 3 * c.dim * c.hidden_dim
    attention = c.n_layers * (2 * c.dim * c.dim + 2 * c.dim * c.n_kv_heads * c.head_dim)
    attention_mha = c.n_layers * 4 * c.dim * c.dim
    cache_per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2  # bytes, bf16
    vocab = len(set(ch3_task.corpus_text()))
    e2e_llama = ch4_task.build_llama(vocab).num_parameters()
    e2e_gpt = _gpt_params(vocab_size=vocab, block_size=ch3_task.BLOCK_SIZE, **ch3_task.MODEL)
    embedding_share = (
        c.vocab_size * c.dim / n_llama,
        QWEN2_5_0_5B.vocab_size * QWEN2_5_0_5B.dim / n_qwen,
    )
    assert 0.18 < embedding_share[0] < 0.22 and 0.25 < embedding_share[1] < 0.3, (
        f"4.4 says the embedding is a fifth of Llama-3.2-1B and more than a quarter of "
        f"Qwen2.5-0.5B: {embedding_share}"
    )
    counts = [f"{n_llama:,}", f"{n_qwen:,}"]
    spec = importlib.util.spec_from_file_location(
        "bench", REPO_ROOT / "benchmarks/bench_kv_cache.py"
    )
    bench_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_module)
    bench = bench_module.CONFIG
    n_bench = Llama(LlamaConfig(**bench)).num_parameters()
    return {
        "docs/chapter04/4_1_overview.md": counts,
        "docs/chapter04/4_4_model.md": [
            *counts,
            f"hold {feed_forward / 1e6:.0f}M parameters and attention {attention / 1e6:.0f}M",
            f"attention would hold {attention_mha / 1e6:.0f}M",
        ],
        "docs/chapter04/4_3_attention.md": [
            f"= {cache_per_token // 1024} KiB per token",
            f"{cache_per_token * c.max_seq_len / 2**30:.0f} GiB at its {c.max_seq_len:,}-token",
        ],
        "docs/chapter04/4_7_e2e.md": [f"| {e2e_llama:,} |", f"| {e2e_gpt:,} |"],
        "docs/chapter04/4_6_generate.md": [
            f"(vocabulary {bench['vocab_size']:,}, {bench['n_layers']}",
            f"layers, {bench['dim']} wide, {bench['n_heads']} query heads sharing "
            f"{bench['n_kv_heads']} key-value heads: {n_bench:,} parameters) from a "
            f"{bench_module.PROMPT}-token",
        ],
        "grader/tasks/ch4.py": [f"{e2e_llama:,} parameters against {e2e_gpt:,}"],
    }


def _chapter4_settings(baseline: float) -> dict[str, list[tuple[str | None, str | None, str]]]:
    """What 4.7 says about the e2e stage and the command line, from the task and the parser."""
    from grader.tasks import ch3 as ch3_task
    from grader.tasks import ch4 as task
    from solutions.ch4.cli import CONFIGS, build_parser

    model, small = task.MODEL, CONFIGS["small"]
    cli = build_parser().parse_args(["train"])
    assert ch3_task.TRAIN["learning_rate"] == 1e-2 and ch3_task.TRAIN["warmup_steps"] == 60
    assert ch3_task.TRAIN["grad_clip"] == 1.0 and cli.out.as_posix() == "out/ch4"
    return {
        "docs/chapter04/4_7_e2e.md": [
            (
                "tests/ch4/test_e2e.py",
                "check_below(val_loss, 0.5 * baseline,",
                "below **half the unigram",
            ),
            ("tests/ch4/test_e2e.py", "check_at_least(rate, 0.9,", "at least 90% of the words"),
            ("tests/ch4/test_e2e.py", '"the ", seed, 300)', "three samples of 300 characters"),
            ("grader/tasks/ch4.py", "temperature: float = 0.8", "at temperature 0.8"),
            (None, None, f"for {task.STEPS} steps"),
            (None, None, f"trained from scratch for {task.STEPS} steps"),
            (None, None, f"{ch3_task.N_SENTENCES:,} sentences of the built-in corpus"),
            (None, None, f"(batch {ch3_task.BATCH_SIZE}, block {ch3_task.BLOCK_SIZE}, peak"),
            (None, None, f"after {ch3_task.TRAIN['warmup_steps']} warm-up steps"),
            (None, None, f"{model['n_layers']} layers, {model['n_heads']} heads, "),
            (None, None, f"{model['dim']} wide), with {model['n_kv_heads']}"),
            (None, None, f"SwiGLU of width {model['hidden_dim']}"),
            (None, None, f"{baseline:.2f} nats per character"),
            (None, None, f"the bar is {0.5 * baseline:.2f}"),
            (
                None,
                None,
                f"`--config small` is {small['n_layers']} layers, {small['n_heads']} heads, "
                f"{small['dim']} wide, block {small['block_size']}",
            ),
        ],
    }


def _power_of_ten(x: float) -> str:
    """``3e-3`` as the docs write it: ``3 \\cdot 10^{-3}`` (``10^{-3}`` for ``1e-3``)."""
    mantissa, exponent = f"{x:e}".split("e")
    digits = f"{float(mantissa):g}"
    power = f"10^{{{int(exponent)}}}"
    return power if digits == "1" else f"{digits} \\cdot {power}"


def _chapter5_settings() -> dict[str, list[tuple[str | None, str | None, str]]]:
    """What 5.5 and 5.6 say about the e2e recipe and its bars, from the task and the test."""
    from grader.tasks import ch5 as task

    rl, dpo = task.RL, task.DPO
    return {
        "docs/chapter05/5_6_e2e.md": [
            ("tests/ch5/test_e2e.py", "RL_MARGIN = 0.04", "raise it by at least 0.04"),
            ("tests/ch5/test_e2e.py", "SFT_MARGIN = 0.5", "rise by at least 0.5"),
            ("tests/ch5/test_e2e.py", "PREFERENCE_BAR = 0.7", "must reach 70%"),
            (None, None, f"pretrained for {task.PRETRAIN['steps']} steps"),
            (None, None, f"rank-{task.LORA['r']} adapters"),
            (None, None, f"for {task.SFT['steps']} steps on the 70"),
            (None, None, f"($\\beta = {dpo['beta']}$, {dpo['steps']} steps)"),
            (None, None, f"{rl['steps']} steps, each sampling {rl['group_size']} answers"),
            (None, None, f"to each of {rl['prompts_per_step']} questions"),
            (None, None, f"(learning rate {rl['lr']}, no KL penalty)"),
        ],
        "docs/chapter05/5_4_dpo.md": [
            (None, None, f"$\\beta = {dpo['beta']}$, {dpo['steps']} steps of {dpo['batch_size']}"),
        ],
    }


def test_chapter5_table_meets_the_bars_it_quotes():
    """5.6's table (what ``python -m grader.tasks.ch5 0 1 2`` printed) clears the e2e test's bars
    on every seed, and the test's comment quotes the same RL gains. Running the task here would
    cost two minutes; the e2e stage itself checks seed 0 against the bars."""
    from tests.ch5 import test_e2e as e2e

    text = _source("docs/chapter05/5_6_e2e.md")
    row = re.compile(
        r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) → ([\d.]+) \|$", re.M
    )
    rows = {int(m[1]): [float(v) for v in m.groups()[1:]] for m in row.finditer(text)}
    assert sorted(rows) == [0, 1, 2], f"5.6's table should have seeds 0, 1, 2: {sorted(rows)}"
    gains = []
    for seed, (base, tuned, preference, before, after) in rows.items():
        assert tuned >= base + e2e.SFT_MARGIN, f"5.6, seed {seed}: SFT below its bar"
        assert preference >= e2e.PREFERENCE_BAR, f"5.6, seed {seed}: DPO below its bar"
        assert after >= before + e2e.RL_MARGIN, f"5.6, seed {seed}: RL below its bar"
        gains.append(f"{after - before:+.2f}")
    comment = _source("tests/ch5/test_e2e.py").split("RL_MARGIN = ", 1)[1].split("\n", 1)[0]
    assert ", ".join(gains) in comment, f"test_e2e.py's RL_MARGIN comment should quote {gains}"


def _source(relative: str) -> str:
    return (REPO_ROOT / relative).read_text(encoding="utf-8")


def _flat(code: str) -> str:
    """Code on one line, as a call split over lines by the formatter reads: ``f(a, b,``."""
    return re.sub(r"([(\[])\s+", r"\1", " ".join(code.split()))


def _bench_constants(name: str) -> dict:
    """The module-level CONFIG (and BATCH_SIZE) of a benchmark script, without running it."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {**module.CONFIG, "batch_size": getattr(module, "BATCH_SIZE", None)}


def test_stage_settings_quoted_in_the_text_match_the_tests():
    """The e2e stages' sizes and thresholds, the command line's defaults and the benchmarks'
    configuration, as the prose states them, are what the tests and scripts use."""
    from grader.tasks import ch2 as task
    from grader.tasks import ch3 as recipe
    from solutions.ch3.cli import CONFIGS, build_parser
    from solutions.ch3.corpus import generate_corpus

    e2e2 = task.TrainConfig()
    baseline = recipe.unigram_baseline(generate_corpus(recipe.N_SENTENCES))
    model, train = recipe.MODEL, recipe.TRAIN
    cli = build_parser().parse_args(["train"])
    small, bench = CONFIGS["small"], _bench_constants("bench_train")
    # (file the setting lives in, what that file says, what the section says)
    pairs = {
        "docs/chapter02/2_5_e2e.md": [
            ("tests/ch2/test_e2e.py", "check_below(end, 0.1,", "must be below 0.1"),
            ("tests/ch2/test_e2e.py", "sum(losses[-50:]) / 50", "averaged over the last 50 steps"),
            ("tests/ch2/test_e2e.py", "check_at_least(accuracy, 0.9,", "at least 90% of the"),
            ("grader/tasks/ch2.py", "betas=(0.9, 0.98)", "betas 0.9 and 0.98"),
            ("grader/tasks/ch2.py", "clip_grad_norm_(model.parameters(), 1.0)", "norm to 1.0"),
            (None, None, f"$d_\\text{{model}} = {e2e2.d_model}$, {e2e2.n_heads} heads"),
            (None, None, f"{e2e2.n_layers} layers, $d_\\text{{ff}} = {e2e2.d_ff}$"),
            (None, None, f"batch of {e2e2.batch_size} numbers"),
            (None, None, f"first {e2e2.warmup_steps} steps"),
            (None, None, f"learning rate of ${_power_of_ten(e2e2.lr)}$"),
            (None, None, f"from 0 to {task.MAX_NUMBER:,}"),
            (None, None, f"`task.train` for {e2e2.steps:,} steps"),
        ],
        "docs/chapter03/3_8_e2e.md": [
            (
                "tests/ch3/test_e2e.py",
                "check_below(val_loss, 0.5 * baseline,",
                "below **half the unigram",
            ),
            ("tests/ch3/test_e2e.py", "check_at_least(rate, 0.9,", "at least 90% of the words"),
            ("tests/ch3/test_e2e.py", '"the ", seed, 300)', "three samples of 300 characters"),
            ("grader/tasks/ch3.py", "temperature: float = 0.8", "At temperature 0.8"),
            (None, None, f"{model['n_layer']} layers, {model['n_head']} heads, "),
            (None, None, f"{model['n_embd']} wide, block {recipe.BLOCK_SIZE})"),
            (None, None, f"for {train['max_steps']} steps"),
            (None, None, f"(batch {recipe.BATCH_SIZE}, peak learning rate $10^{{-2}}$)"),
            (None, None, f"on {recipe.N_SENTENCES:,} sentences"),
            (None, None, f"{baseline:.2f} nats per"),
            (None, None, f"the bar is {0.5 * baseline:.2f}"),
            (None, None, f"({cli.max_steps:,} by default"),
            (None, None, f"(`{cli.out.as_posix()}` by default)"),
            (
                None,
                None,
                f"`small` is the book's {small['n_layer']} layers, {small['n_head']} heads",
            ),
            (None, None, f"{small['n_embd']} wide, block {small['block_size']})"),
            (None, None, f"batch {bench['batch_size']}, block {bench['block_size']}, "),
            (
                None,
                None,
                f"{bench['n_layer']} layers, {bench['n_head']} heads, {bench['n_embd']} wide",
            ),
        ],
    }
    pairs |= _chapter4_settings(baseline)
    pairs |= _chapter5_settings()
    from grader.tasks import ch4 as ch4_task

    pairs["grader/manifest.py"] = [  # the e2e hints say how long the stage trains
        (None, None, f"The stage trains {train['max_steps']} steps of a 2-layer GPT"),
        (None, None, f"The stage trains {ch4_task.STEPS} steps of a 2-layer Llama"),
    ]
    pairs["docs/build_notebooks.py"] = [(None, None, f"(the stage trains {ch4_task.STEPS} steps)")]
    assert train["learning_rate"] == 1e-2, "3.8 quotes the e2e stage's peak learning rate 10^-2"
    for doc, checks in pairs.items():
        text = " ".join(_source(doc).split())  # line breaks in the prose do not matter
        for origin, code, prose in checks:
            if origin is not None:
                assert code in _flat(_source(origin)), (
                    f"{origin} no longer has {code!r}: update {doc}"
                )
            assert prose in text, f"{doc} should say {prose!r} (what the tests use now)"
