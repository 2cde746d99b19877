"""The end-to-end recipe of stage ch6 'e2e': the tree's given ``ch6/train.py`` trains its chapter 3
GPT on the built-in corpus with its DDP (or FSDP), under torchrun or in forked ranks.

A tree in an arbitrary folder is not an importable package, so torchrun cannot start
``-m <tree>.ch6.train`` itself; this module binds the tree (LLMFS_TREE, :mod:`grader.tree`) and
runs its trainer::

    LLMFS_TREE=exercises python -m torch.distributed.run --nproc_per_node 2 \\
        -m grader.tasks.ch6 train --out /tmp/run [train.py's options]

:data:`RUN` is the stage's small run: a tiny GPT, a few steps, a global batch of 8 windows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from grader.ranks import free_port
from grader.tree import ENV_VAR, REPO_ROOT, load, tree_path

# Cheap on purpose: torchrun starts fresh processes, each paying ~3 s to import torch.
RUN = {
    "--config": "tiny",
    "--sentences": "400",
    "--block-size": "32",
    "--max-steps": "8",
    "--warmup-steps": "2",
    "--batch-size": "8",
    "--learning-rate": "3e-3",
    "--eval-batches": "4",
    "--sample-tokens": "0",
    "--threads": "1",
}


def train_args(out: str | Path, *extra: str) -> list[str]:
    """The command-line options of the stage's run, writing to ``out``."""
    return [str(out), *[item for pair in RUN.items() for item in pair], *extra]


def train_in_rank(rank: int, world_size: int, out: str, *extra: str) -> dict[str, Any]:
    """One rank of the run (grader.ranks, init="env"): the tree's train(), history returned.
    Errors propagate (a stub's NotImplementedError stays one)."""
    train = load("ch6.train")
    args = train.build_parser().parse_args(["--out", *train_args(out, *extra), "--quiet"])
    return train.train(args)


def torchrun(out: str | Path, nproc: int = 2, *extra: str, timeout: float = 120.0):
    """``python -m torch.distributed.run --nproc_per_node nproc -m grader.tasks.ch6 train ...``
    on the tree under test, on a free port of the loopback; the CompletedProcess (text)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
        **{ENV_VAR: str(tree_path())},
        OMP_NUM_THREADS="1",
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        f"--nproc_per_node={nproc}",
        "-m",
        "grader.tasks.ch6",
        "train",
        "--out",
        *train_args(out, *extra),
        "--quiet",
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "train":
        print("usage: python -m grader.tasks.ch6 train [ch6/train.py's options]", file=sys.stderr)
        return 2
    return load("ch6.train").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
