"""grader/ranks.py: chapter 6's harness runs a function on each rank of a gloo group, brings the
values home, names the rank, the call and the line of a failure or a hang, and leaves nothing
running."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from grader.plugin import _Places, classify
from grader.ranks import RankFailed, RankTimeout, run_ranks
from grader.statuses import CRASHED, FAILED, TIMED_OUT


def summed(rank: int, world_size: int) -> tuple[int, torch.Tensor]:
    x = torch.full((3,), float(rank + 1))
    dist.all_reduce(x)
    return world_size, x


def joins_from_environment(rank: int, world_size: int) -> str:
    """What a setup() written for torchrun does: env:// rendezvous on MASTER_ADDR/PORT."""
    dist.init_process_group("gloo")
    x = torch.tensor([float(rank)])
    dist.all_reduce(x)
    return f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}:{x.item():g}"


def one_rank_raises(rank: int, world_size: int) -> None:
    if rank == 1:
        time.sleep(0.2)  # rank 0 is already waiting in the collective when rank 1 fails
        raise ValueError("bad shapes")
    dist.all_reduce(torch.ones(2))


def one_rank_reduces(rank: int, world_size: int) -> int:
    if rank == 0:
        dist.all_reduce(torch.ones(2))
    return rank


def one_rank_reduces_the_other_loops(rank: int, world_size: int) -> None:
    if rank == 0:
        dist.all_reduce(torch.ones(2))
    else:
        time.sleep(60)


def one_rank_exits(rank: int, world_size: int) -> None:
    if rank == 1:
        os._exit(3)
    dist.all_reduce(torch.ones(2))


def _children() -> list[str]:
    """Processes whose parent is this one (from /proc): what a call could leave behind."""
    mine = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == mine:
                found.append(entry)
    return found


def test_each_rank_returns_its_value():
    results = run_ranks(summed, 2)
    assert [n for n, _ in results] == [2, 2]
    assert all(torch.equal(x, torch.full((3,), 3.0)) for _, x in results)


def test_env_mode_sets_torchruns_variables():
    assert run_ranks(joins_from_environment, 2, init="env") == ["0/2:1", "1/2:1"]


def test_the_earliest_failure_is_reported_with_its_rank():
    with pytest.raises(RankFailed) as info:
        run_ranks(one_rank_raises, 2)
    assert info.value.rank == 1
    assert str(info.value) == "rank 1: ValueError: bad shapes"
    assert classify(info.value, _Places(None))["status"] == FAILED


def test_a_collective_on_one_rank_only_is_named():
    with pytest.raises(RankFailed) as info:
        run_ranks(one_rank_reduces, 2)
    message = str(info.value)
    assert info.value.rank == 0
    assert "torch.distributed.all_reduce" in message and "rank 1 had finished" in message


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="counts processes through /proc")
def test_a_hang_times_out_naming_the_call_and_leaves_nothing_behind():
    start = time.monotonic()
    with pytest.raises(RankTimeout) as info:
        run_ranks(one_rank_reduces_the_other_loops, 2, timeout=2)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert message.startswith("still running after 2 s: rank 0 waiting in "), message
    assert "torch.distributed.all_reduce, called at " in message
    assert "rank 1 running at " in message and "one_rank_reduces_the_other_loops" in message
    assert classify(info.value, _Places(None))["status"] == TIMED_OUT
    assert _children() == []


def test_a_rank_that_dies_is_a_crash():
    with pytest.raises(RankFailed) as info:
        run_ranks(one_rank_exits, 2)
    assert info.value.rank == 1
    assert "exited with code 3" in str(info.value)
    assert info.value.info["status"] == CRASHED
