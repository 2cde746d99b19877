"""Joining a process group, and the collective every data-parallel step needs: all-reduce.

``torchrun --nproc_per_node N script.py`` starts N copies of a script and tells each who it is
through environment variables: ``RANK`` (0..N-1 over all machines), ``WORLD_SIZE`` (N),
``LOCAL_RANK`` (the rank on this machine, which picks its GPU), ``MASTER_ADDR`` and
``MASTER_PORT`` (where rank 0 listens so that the others can find it). :func:`setup` reads them
and joins the group; after that every rank calls the same collectives in the same order.

:func:`ring_all_reduce` is the all-reduce of Baidu's ring (Gibiansky 2017; Patarasuk and Yuan
2009, *Bandwidth optimal all-reduce algorithms*), written with point-to-point ``send``/``recv``
only: the tensor is cut into N chunks, a reduce-scatter passes partial sums around the ring for
N - 1 steps (after which each rank holds one chunk summed over all ranks), and an all-gather
passes the finished chunks around for N - 1 more. Every rank sends 2 (N - 1) / N times the
tensor, whatever N: why NCCL and gloo use it for large tensors.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def setup(backend: str | None = None, timeout_s: float = 60.0) -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment; returns
    ``(rank, world_size, device)``.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``MASTER_ADDR`` and ``MASTER_PORT`` are
    read by ``init_process_group``'s ``env://`` rendezvous, but must be set too). The backend is
    ``backend`` if given, else ``"nccl"`` when CUDA is available and ``"gloo"`` otherwise. Calls
    ``dist.init_process_group(backend, rank=..., world_size=...,
    timeout=timedelta(seconds=timeout_s))``, so that a collective whose peer never comes (a
    crashed rank, a collective called on one rank only) fails after ``timeout_s`` seconds
    instead of waiting forever. With NCCL the device is ``cuda:LOCAL_RANK``, made the current CUDA
    device (``torch.cuda.set_device``); with gloo it is the CPU.

    Raises:
        RuntimeError: naming the missing variables and saying to run the script with torchrun,
            when any of the five is not set (before trying to join anything).
    """
    # BEGIN SOLUTION
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"setup() needs torchrun's environment variables, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: run it with torchrun "
            f"--nproc_per_node N (or set {', '.join(TORCHRUN_VARIABLES)} yourself)"
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world_size, device
    # END SOLUTION


def cleanup() -> None:
    """Leave the process group (``dist.destroy_process_group``); nothing if none was joined."""
    # BEGIN SOLUTION
    if dist.is_initialized():
        dist.destroy_process_group()
    # END SOLUTION


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous block when ``n`` items are split over
    ``world_size`` ranks: blocks in rank order, covering ``range(n)`` exactly once, the first
    ``n % world_size`` ranks one item longer than the others (as ``torch.tensor_split``).
    A rank may get an empty block (``start == stop``) when ``n < world_size``.

    Raises:
        ValueError: if ``n`` < 0, ``world_size`` < 1 or ``rank`` is not in ``[0, world_size)``.
    """
    # BEGIN SOLUTION
    if n < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"shard needs n >= 0 and 0 <= rank < world_size, got n={n}, rank={rank}, "
            f"world_size={world_size}"
        )
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
    # END SOLUTION


def ring_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every rank of the group, in place, with ``send``/``recv`` only; returns
    ``tensor``, which afterwards holds the same values on every rank (what
    ``dist.all_reduce(tensor)`` gives, up to float rounding: the additions happen in another
    order).

    ``tensor`` is contiguous, of any shape and any length: it is viewed flat and cut into
    ``world_size`` chunks with :func:`shard` (unequal when the length does not divide, possibly
    empty). With N ranks and ``right = (rank + 1) % N``, ``left = (rank - 1) % N``:

    - reduce-scatter, steps s = 0 .. N - 2: send chunk ``(rank - s) % N`` to the right,
      receive chunk ``(rank - s - 1) % N`` from the left and add it into your own. Afterwards
      rank r holds the complete sum of chunk ``(r + 1) % N``.
    - all-gather, steps s = 0 .. N - 2: send chunk ``(rank + 1 - s) % N`` to the right,
      receive chunk ``(rank - s) % N`` from the left and copy it over your own.

    Post the send without waiting (``dist.isend``), then ``dist.recv``, then wait for the send:
    two blocking sends around a ring could each wait for the other's receive. Every rank makes
    the same 2 (N - 1) sends and receives; none is skipped on any rank. One rank: nothing to do.

    Raises:
        ValueError: if ``tensor`` is not contiguous.
    """
    # BEGIN SOLUTION
    if not tensor.is_contiguous():
        raise ValueError("ring_all_reduce needs a contiguous tensor (call .contiguous() first)")
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size == 1:
        return tensor
    flat = tensor.view(-1)
    chunks = [flat[slice(*shard(flat.numel(), r, world_size))] for r in range(world_size)]
    right, left = (rank + 1) % world_size, (rank - 1) % world_size
    for step in range(world_size - 1):  # reduce-scatter: partial sums travel right
        send, recv = (rank - step) % world_size, (rank - step - 1) % world_size
        incoming = torch.empty_like(chunks[recv])
        request = dist.isend(chunks[send], right)
        dist.recv(incoming, left)
        request.wait()
        chunks[recv] += incoming
    for step in range(world_size - 1):  # all-gather: finished chunks travel right
        send, recv = (rank + 1 - step) % world_size, (rank - step) % world_size
        request = dist.isend(chunks[send], right)
        dist.recv(chunks[recv], left)
        request.wait()
    return tensor
    # END SOLUTION
