"""Fully sharded data parallelism with PyTorch's FSDP2 (``fully_shard``), and sharded checkpoints.

ZeRO-1 (``zero.py``) shards the optimizer state; FSDP (ZeRO-3; Zhao et al. 2023, *PyTorch FSDP*,
arXiv:2304.11277) shards the parameters and gradients too. Each rank keeps 1/N of every
parameter (a ``DTensor`` sharded along dim 0), and each FSDP unit (here: one transformer block,
then the root with the embeddings and the final LayerNorm) runs as::

    forward:   all-gather the unit's parameters -> compute -> free the gathered copies
    backward:  all-gather again -> compute gradients -> reduce-scatter them (averaged over ranks)
               -> free; each rank keeps the gradient of its own shard only

so at any time a rank holds its shards plus ONE unit's full parameters, not the whole model. The
optimizer is built after :func:`shard_model`, on the sharded parameters, so its state is sharded
as well.

A sharded checkpoint (``torch.distributed.checkpoint``, DCP) writes every rank's shards and a
description of how they fit together; loading reads back the pieces each rank needs under the
CURRENT sharding, so a run saved by 2 processes resumes on 1 or on 3.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer


def shard_model(model: nn.Module, mesh: DeviceMesh | None = None) -> nn.Module:
    """Shard chapter 3's GPT with FSDP2, in place, and return it.

    ``fully_shard`` each block of ``model.transformer.h`` first, then the root ``model`` (which
    then owns what no block took: the token and position embeddings, tied to ``lm_head``, and
    ``ln_f``). ``mesh`` is the 1-D device mesh of the ranks (None: every rank of the default
    group, on CPU or on the current GPU). Every rank must hold the same initial weights before
    the call (seed alike, or broadcast them): each keeps its own rank's slice.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'fsdp' not started: implement shard_model in ch6/fsdp.py (read docs/chapter06/6_6_fsdp.md#shard_model)"
    )


def parameter_bytes(model: nn.Module) -> int:
    """The bytes of parameters this rank holds: for a sharded parameter (a ``DTensor``) its
    local shard (``p.to_local()``), for any other parameter the whole tensor. A tied parameter
    counts once."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'fsdp' not started: implement parameter_bytes in ch6/fsdp.py (read docs/chapter06/6_6_fsdp.md#parameter_bytes)"
    )


def save_sharded(model: nn.Module, optimizer: Optimizer, folder: str | Path) -> None:
    """Save the sharded model and its optimizer's state to ``folder`` with
    ``torch.distributed.checkpoint`` (every rank calls it and writes its own shards).

    The state is ``{"model": get_model_state_dict(model), "optimizer":
    get_optimizer_state_dict(model, optimizer)}``: parameter names as in the unsharded model
    and the optimizer's state keyed by those names, so the checkpoint does not depend on how
    many ranks wrote it.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'fsdp' not started: implement save_sharded in ch6/fsdp.py (read docs/chapter06/6_6_fsdp.md#save_sharded-and-load_sharded)"
    )


def load_sharded(model: nn.Module, optimizer: Optimizer, folder: str | Path) -> None:
    """Load a checkpoint written by :func:`save_sharded` into ``model`` and ``optimizer`` in
    place, whatever the number of ranks that wrote it (every rank calls it).

    Ask for the state dicts first (they describe this run's sharding), let ``dcp.load`` fill
    them in place, then hand them back with ``set_model_state_dict`` and
    ``set_optimizer_state_dict``.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch6 stage 'fsdp' not started: implement load_sharded in ch6/fsdp.py (read docs/chapter06/6_6_fsdp.md#save_sharded-and-load_sharded)"
    )
