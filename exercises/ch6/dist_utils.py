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
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'collectives' not started: implement setup in ch6/dist_utils.py (read docs/chapter06/6_2_collectives.md#joining-the-group-setup-and-cleanup)"
    )


def cleanup() -> None:
    """Leave the process group (``dist.destroy_process_group``); nothing if none was joined."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'collectives' not started: implement cleanup in ch6/dist_utils.py (read docs/chapter06/6_2_collectives.md#joining-the-group-setup-and-cleanup)"
    )


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous block when ``n`` items are split over
    ``world_size`` ranks: blocks in rank order, covering ``range(n)`` exactly once, the first
    ``n % world_size`` ranks one item longer than the others (as ``torch.tensor_split``).
    A rank may get an empty block (``start == stop``) when ``n < world_size``.

    Raises:
        ValueError: if ``n`` < 0, ``world_size`` < 1 or ``rank`` is not in ``[0, world_size)``.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'collectives' not started: implement shard in ch6/dist_utils.py (read docs/chapter06/6_2_collectives.md#splitting-work-shard)"
    )


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
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'collectives' not started: implement ring_all_reduce in ch6/dist_utils.py (read docs/chapter06/6_2_collectives.md#the-ring-all-reduce-ring_all_reduce)"
    )
