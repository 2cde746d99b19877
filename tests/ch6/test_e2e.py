"""Stage ch6 'e2e': the tree's given ch6/train.py, started by torchrun on 2 processes, trains the
tree's GPT with the tree's DDP, and its losses are one process's on the same global batches; rank
0's checkpoint is chapter 3's, and chapter 3's sample command reads it. The same with --fsdp
(2 forked ranks). The one-process run is the same trainer on 1 rank."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch._dynamo  # noqa: F401 -- every optimizer's first use imports it: once here, not per rank

from grader.ranks import run_ranks
from grader.tasks import ch6 as recipe
from grader.tree import load
from tests.helpers import check, check_close, check_equal

# Imported here once, so that the forked ranks inherit them (FSDP's modules take ~1.5 s).
train_mod, fsdp_mod = load("ch6.train"), load("ch6.fsdp")
ALL = "ch6/dist_utils.py, ddp.py and fsdp.py (all earlier stages pass?)"
DATA = "ch6/ddp.py, ShardedSampler, and how each rank reads its part"
# Two processes average two half-batch gradients where one process takes the mean over the
# whole batch: the same numbers summed in another order. Measured with the reference: at most
# 2.4e-7 apart over the run's 8 AdamW steps (one float32 rounding at a loss of 3), for DDP under
# torchrun and for FSDP; 1e-4 leaves room for other summation orders (buckets, shards).
LOSS_ATOL = 1e-4


def losses(history: dict) -> torch.Tensor:
    return torch.tensor([record["loss"] for record in history["train"]], dtype=torch.float64)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The same trainer on one rank: the whole global batch in one process."""
    out = tmp_path_factory.mktemp("one")
    return run_ranks(recipe.train_in_rank, 1, str(out), init="env", timeout=60)[0]


def check_same_run(got: dict, expected: dict, what: str, where: str) -> None:
    check_close(
        losses(got)[:1],
        losses(expected)[:1],
        f"the first loss of {what} (before any update, so it depends on the data only)",
        DATA,
        atol=LOSS_ATOL,
        hint="with the same weights, only the data can make it differ: each rank must read its "
        "own part of the global batch (ShardedSampler with its rank), the parts together the "
        "whole batch",
    )
    check_close(
        losses(got),
        losses(expected),
        f"the losses of {what} at every step",
        where,
        atol=LOSS_ATOL,
        hint="the first loss matches but later ones drift: average the gradients (not summed, "
        "not left per rank) before every optimizer step, from the same initial weights on "
        "every rank",
    )


def sampled_text(folder) -> str:
    """What chapter 3's ``sample`` command prints for the checkpoint in ``folder``."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = load("ch3.cli").main(
            ["sample", "--checkpoint", str(folder), "--prompt", "the ", "--max-new-tokens", "20"]
        )
    check_equal(code, 0, "chapter 3's sample command's exit code on the checkpoint", ALL)
    return printed.getvalue()


def test_torchrun_ddp_matches_one_process_and_saves_a_chapter_3_checkpoint(one_process, tmp_path):
    """torchrun --nproc_per_node 2: the losses of one process on the same global batches; rank 0
    writes checkpoint.pt (no temporary file left), and chapter 3's sample command reads it."""
    out = tmp_path / "ddp"
    proc = recipe.torchrun(out, 2)
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
    check(
        proc.returncode == 0,
        f"torchrun --nproc_per_node 2 -m grader.tasks.ch6 train failed (exit code "
        f"{proc.returncode}): {tail}. Look at {ALL}.",
    )
    ckpt = load("ch3.trainer").read_checkpoint(out)
    print(f"2 processes: {losses(ckpt['history']).tolist()}")
    print(f"1 process:   {losses(one_process).tolist()}")
    gap = float((losses(ckpt["history"]) - losses(one_process)).abs().max())
    print(f"largest gap: {gap:.3g}")
    check_same_run(ckpt["history"], one_process, "2 DDP processes under torchrun", ALL)
    check_equal(
        sorted(p.name for p in out.iterdir()),
        ["checkpoint.pt"],
        "the files rank 0 leaves in --out",
        "ch6/train.py, save_checkpoint",
    )
    text = sampled_text(out)
    check(
        text.startswith("the ") and len(text.strip()) > len("the"),
        f"chapter 3's sample command should print the prompt and 20 more characters from the "
        f"checkpoint, got {text!r}. Look at {ALL}.",
    )


def test_fsdp_matches_one_process(one_process, tmp_path):
    """--fsdp on 2 ranks: the same losses as one process, and a full chapter 3 checkpoint."""
    out = tmp_path / "fsdp"
    histories = run_ranks(recipe.train_in_rank, 2, str(out), "--fsdp", init="env", timeout=60)
    check_same_run(histories[0], one_process, "2 FSDP ranks", "ch6/fsdp.py, shard_model")
    ckpt = load("ch3.trainer").read_checkpoint(out)
    model = load("ch3.gpt").GPT(load("ch3.gpt").GPTConfig(**ckpt["config"]))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    check_equal(
        (sorted(missing), sorted(unexpected)),
        ([], []),
        "the parameter names missing from and unexpected in rank 0's FSDP checkpoint",
        "ch6/train.py, full_states",
    )
    text = sampled_text(out)
    check(
        text.startswith("the ") and len(text.strip()) > len("the"),
        f"chapter 3's sample command should read the FSDP run's checkpoint, got {text!r}. "
        f"Look at {ALL}.",
    )
