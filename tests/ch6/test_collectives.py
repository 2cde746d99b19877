"""Stage 'collectives': setup() joins the group torchrun describes (and fails in one line without
torchrun's variables), its timeout turns a lost peer into an error within seconds, shard() splits
like torch.tensor_split, and ring_all_reduce sums like dist.all_reduce on 2 and 3 ranks, for
lengths that do not divide, using send/recv only."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist

from grader.ranks import run_ranks
from grader.tree import load
from tests.helpers import (
    Mistake,
    check_below,
    check_close,
    check_equal,
    check_raises,
    check_same,
    fail_if_mistake,
)

du = load("ch6.dist_utils")

SETUP = "ch6/dist_utils.py, setup"
CLEANUP = "ch6/dist_utils.py, cleanup"
SHARD = "ch6/dist_utils.py, shard"
RING = "ch6/dist_utils.py, ring_all_reduce"
RANK_LIMIT = 20.0  # seconds a rank may take here (run_ranks); the stage's test_timeout is 60
RING_LIMIT = 6.0  # the ring tests take 0.3 s: a ring that hangs is reported after 6
LENGTHS = (1, 2, 5, 7, 64, 1001)  # 1 and 2 leave a rank an empty chunk on 3 ranks
PEER_TIMEOUT = 2.0  # setup(timeout_s=...) in the lost-peer test
PATIENCE = 6.5  # seconds the lost peer waits before giving up: just above the bar, 2 + 4 s
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "reduce",
    "all_to_all",
    "all_to_all_single",
)


# -- in the ranks (each returns what the checks need; the checks run in the test) --------------
def joins_with_setup(rank: int, world_size: int) -> dict:
    """What a torchrun script does first: setup(), one collective, cleanup()."""
    got_rank, got_world, device = du.setup()
    backend = dist.get_backend()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    du.cleanup()
    return {
        "rank": got_rank,
        "world_size": got_world,
        "device": str(device),
        "backend": backend,
        "sum": total,
        "still_in_group": dist.is_initialized(),
    }


def loses_its_peer(rank: int, world_size: int, flag: str) -> float | None:
    """Rank 0 all-reduces while rank 1 never does; rank 0 returns how long it waited for the
    error. Rank 1 waits for rank 0 to be done (a file), PATIENCE seconds at most."""
    du.setup(timeout_s=PEER_TIMEOUT)
    if rank == 1:
        deadline = time.monotonic() + PATIENCE
        while not Path(flag).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(4))
    except Exception:  # noqa: BLE001 -- gloo's timeout is a RuntimeError; any error will do
        return time.monotonic() - start
    finally:
        Path(flag).touch()
    return None  # no error: impossible while rank 1 never joins the collective


def _forbid(name: str):
    def forbidden(*args, **kwargs):
        raise RuntimeError(f"ring_all_reduce must use send/recv only, it called dist.{name}")

    return forbidden


def ring_sums(rank: int, world_size: int, seed: int) -> list[tuple]:
    """For every length: (this rank's input, ring_all_reduce's result, dist.all_reduce's)."""
    out = []
    for n in LENGTHS:
        generator = torch.Generator().manual_seed(seed * 1000 + n * 10 + rank)
        x = torch.randn(n, generator=generator)
        expected = x.clone()
        dist.all_reduce(expected)
        out.append((x.clone(), _ring_only(x), expected))
    grid = torch.arange(15, dtype=torch.int64).reshape(3, 5) * (rank + 1)  # 2-D, integers
    expected = grid.clone()
    dist.all_reduce(expected)
    out.append((grid.clone(), _ring_only(grid), expected))
    return out


def _ring_only(x: torch.Tensor) -> torch.Tensor:
    """ring_all_reduce(x), with every collective but send/recv raising meanwhile; returns x."""
    saved = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
    try:
        for name in saved:
            setattr(dist, name, _forbid(name))
        returned = du.ring_all_reduce(x)
    finally:
        for name, function in saved.items():
            setattr(dist, name, function)
    if returned is not x:
        raise RuntimeError("ring_all_reduce should return the tensor it was given (in place)")
    return x


# -- in the test process ---------------------------------------------------------------------
def simulated_ring(inputs: list[torch.Tensor], gather_from: int) -> list[torch.Tensor]:
    """Every rank's result of the ring of the docstring, computed in one process, when rank r's
    all-gather starts from chunk (r + gather_from) % N: 1 is right, 0 the mistake of sending
    your own chunk index, which the reduce-scatter did not complete on this rank."""
    n = len(inputs)
    chunks = [list(x.to(torch.float64).tensor_split(n)) for x in inputs]
    for step in range(n - 1):
        sent = [chunks[(r - 1) % n][(r - step - 1) % n].clone() for r in range(n)]
        for r in range(n):
            chunks[r][(r - step - 1) % n] += sent[r]
    for step in range(n - 1):
        first = gather_from - 1
        sent = [chunks[(r - 1) % n][(r + first - step) % n].clone() for r in range(n)]
        for r in range(n):
            chunks[r][(r + first - step) % n] = sent[r]
    return [torch.cat(c).to(inputs[0].dtype) for c in chunks]


def test_setup_without_torchrun_is_a_one_line_error(monkeypatch):
    """Without torchrun's variables, setup() raises a RuntimeError naming the missing ones and
    torchrun, before joining anything."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with check_raises(RuntimeError, "setup() without RANK and the others", SETUP, match="torchrun"):
        du.setup()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with check_raises(
        RuntimeError, "setup() without MASTER_ADDR and MASTER_PORT", SETUP, match="MASTER_ADDR"
    ):
        du.setup()


def test_setup_joins_the_group_torchrun_describes():
    """On 2 ranks started with torchrun's variables: setup() returns (rank, world_size, cpu),
    joins a gloo group whose all_reduce works, and cleanup() leaves it."""
    results = run_ranks(joins_with_setup, 2, timeout=RANK_LIMIT, init="env")
    for rank, got in enumerate(results):
        check_equal(got["rank"], rank, f"setup()'s rank on rank {rank}", SETUP)
        check_equal(got["world_size"], 2, "setup()'s world_size", SETUP)
        check_equal(got["device"], "cpu", "setup()'s device without CUDA", SETUP)
        check_equal(got["backend"], "gloo", "the backend setup() picks without CUDA", SETUP)
        check_same(
            got["sum"],
            torch.tensor([3.0]),
            f"an all_reduce after setup() should give 1 + 2 = 3 on rank {rank}. Look at {SETUP}.",
        )
        check_equal(got["still_in_group"], False, "dist.is_initialized() after cleanup()", CLEANUP)


def test_a_lost_peer_fails_within_the_timeout(tmp_path):
    """With setup(timeout_s=2), an all_reduce that the other rank never joins raises after about
    2 s, not after the default 60 s (or never)."""
    waited, _ = run_ranks(loses_its_peer, 2, str(tmp_path / "done"), timeout=RANK_LIMIT, init="env")
    if waited is None:
        waited = PATIENCE  # no error at all: as bad as no timeout
    check_below(
        waited,
        PEER_TIMEOUT + 4.0,
        f"an all_reduce whose peer never comes should fail after setup(timeout_s="
        f"{PEER_TIMEOUT:g}) seconds, but it waited {waited:.1f} s: pass timeout=timedelta("
        f"seconds=timeout_s) to dist.init_process_group. Look at {SETUP}.",
    )


def test_shard_splits_like_tensor_split():
    """shard(n, rank, world_size) gives contiguous blocks in rank order covering range(n), the
    first n % world_size one longer, as torch.tensor_split does; bad arguments are a ValueError."""
    for world_size in (1, 2, 3, 4, 7):
        for n in (0, 1, 3, 7, 8, 10, 100, 101):
            got = [du.shard(n, rank, world_size) for rank in range(world_size)]
            blocks = torch.arange(n).tensor_split(world_size)
            starts = [sum(len(b) for b in blocks[:rank]) for rank in range(world_size)]
            expected = [(s, s + len(b)) for s, b in zip(starts, blocks, strict=True)]
            if got != expected:
                base = n // world_size
                last_longer = [
                    (r * base, (r + 1) * base if r < world_size - 1 else n)
                    for r in range(world_size)
                ]
                mistakes = [
                    Mistake(
                        "blocks that give the whole remainder to the last rank",
                        "make the first n % world_size ranks one item longer instead",
                        last_longer,
                    )
                ]
                what = f"shard(n={n}, rank, world_size={world_size}) over the ranks"
                fail_if_mistake(got, mistakes, what, SHARD)
            check_equal(got, expected, f"[shard({n}, r, {world_size}) for r in ranks]", SHARD)
    with check_raises(ValueError, "shard(5, rank=2, world_size=2)", SHARD):
        du.shard(5, 2, 2)


def _check_ring(world_size: int) -> None:
    results = run_ranks(ring_sums, world_size, 7, timeout=RING_LIMIT)
    for case in range(len(LENGTHS) + 1):
        inputs = [results[rank][case][0] for rank in range(world_size)]
        flat = [x.reshape(-1) for x in inputs]
        wrong_gather = simulated_ring(flat, gather_from=0)
        for rank in range(world_size):
            x, got, expected = results[rank][case]
            what = (
                f"ring_all_reduce of a tensor of {x.numel()} numbers on rank {rank} of {world_size}"
            )
            mistakes = [
                Mistake(
                    "an all-gather that starts from chunk rank",
                    "after the reduce-scatter rank r holds the finished chunk (r + 1) % N, so "
                    "the all-gather sends chunk (rank + 1 - step) % N and receives chunk "
                    "(rank - step) % N",
                    wrong_gather[rank].reshape(x.shape),
                ),
                Mistake("the rank's own tensor, unchanged", "sum over every rank in place", x),
            ]
            if x.dtype.is_floating_point:
                mistakes.append(
                    Mistake(
                        "the average over the ranks, not the sum",
                        "do not divide by world_size",
                        expected / world_size,
                    )
                )
            check_close(got, expected, what, RING, atol=1e-5, mistakes=mistakes)


def test_ring_all_reduce_on_two_ranks():
    """On 2 ranks, ring_all_reduce gives dist.all_reduce's sum, in place, for lengths 1 to 1001
    (odd ones too) and for a 2-D integer tensor, calling send/recv only."""
    _check_ring(2)


def test_ring_all_reduce_on_three_ranks():
    """On 3 ranks (chunks of unequal size, empty ones for lengths 1 and 2), the same."""
    _check_ring(3)
