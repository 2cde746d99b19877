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
from tests.helpers import check_below, check_equal, check_matches

# Imported here once, so that the forked ranks inherit them (FSDP's modules take ~1.5 s).
train_mod, fsdp_mod = load("ch6.train"), load("ch6.fsdp")
ALL = "ch6/dist_utils.py, ddp.py and fsdp.py (all earlier stages pass?)"
DATA = "ch6/ddp.py, ShardedSampler, and how each rank reads its part"
# Two processes average two half-batch gradients where one process takes the mean over the
# whole batch: the same numbers summed in another order. Measured with the reference: at most
# 2.4e-7 apart over the run's 8 AdamW steps (one float32 rounding at a loss of 3), for DDP under
# torchrun and for FSDP; 1e-4 leaves room for other summation orders (buckets, shards).
LOSS_ATOL = 1e-4
PROMPT, SAMPLED = "the ", 20  # characters: the char tokenizer's tokens


def losses(history: dict) -> torch.Tensor:
    return torch.tensor([record["loss"] for record in history["train"]], dtype=torch.float64)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The same trainer on one rank: the whole global batch in one process."""
    out = tmp_path_factory.mktemp("one")
    return run_ranks(recipe.train_in_rank, 1, str(out), init="env", timeout=60)[0]


def check_same_run(got: dict, expected: dict, what: str, where: str) -> None:
    """The gaps, not the losses, are checked against a constant: the grader can verify them
    whatever the learner's GPT computes."""
    got_losses, expected_losses = losses(got), losses(expected)
    first = abs(float(got_losses[0] - expected_losses[0]))
    check_below(
        first,
        LOSS_ATOL,
        f"the first loss of {what} should equal one process's on the same global batch (within "
        f"{LOSS_ATOL:g}), got {got_losses[0].item():.6f} against {expected_losses[0].item():.6f}: "
        f"it comes before any update, so with the same weights only the data can make it "
        f"differ. Each rank must read its own part of the global batch (ShardedSampler with its "
        f"rank), the parts together the whole batch. Look at {DATA}.",
    )
    gaps = (got_losses - expected_losses).abs()
    step = int(gaps.argmax())
    check_below(
        float(gaps.max()),
        LOSS_ATOL,
        f"the losses of {what} should equal one process's at every step (within {LOSS_ATOL:g}), "
        f"but step {step} gives {got_losses[step].item():.6f} against "
        f"{expected_losses[step].item():.6f}: the first loss matches, so average the gradients "
        f"(not summed, not left per rank) before every optimizer step, from the same initial "
        f"weights on every rank. Look at {where}.",
    )


def check_samples(folder) -> None:
    """Chapter 3's ``sample`` command prints the prompt and SAMPLED characters from the
    checkpoint in ``folder``."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = load("ch3.cli").main(
            [
                "sample",
                "--checkpoint",
                str(folder),
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                str(SAMPLED),
            ]
        )
    check_equal(code, 0, "chapter 3's sample command's exit code on the checkpoint", ALL)
    text = printed.getvalue()
    check_equal(
        (text[: len(PROMPT)], len(text)),
        (PROMPT, len(PROMPT) + SAMPLED + 1),
        f"what chapter 3's sample command printed (the prompt, then {SAMPLED} characters and a "
        f"newline), as (start, length),",
        ALL,
    )


def test_torchrun_ddp_matches_one_process_and_saves_a_chapter_3_checkpoint(one_process, tmp_path):
    """torchrun --nproc_per_node 2: the losses of one process on the same global batches; rank 0
    writes checkpoint.pt (no temporary file left), and chapter 3's sample command reads it."""
    out = tmp_path / "ddp"
    proc = recipe.torchrun(out, 2)
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
    check_matches(
        proc.returncode,
        0,
        f"torchrun --nproc_per_node 2 -m grader.tasks.ch6 train failed (exit code "
        f"{proc.returncode}): {tail}. Look at {ALL}.",
    )
    ckpt = load("ch3.trainer").read_checkpoint(out)
    print(f"2 processes: {losses(ckpt['history']).tolist()}")
    print(f"1 process:   {losses(one_process).tolist()}")
    check_same_run(ckpt["history"], one_process, "2 DDP processes under torchrun", ALL)
    check_equal(
        sorted(p.name for p in out.iterdir()),
        ["checkpoint.pt"],
        "the files rank 0 leaves in --out",
        "ch6/train.py, save_checkpoint",
    )
    check_samples(out)


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
    check_samples(out)
