"""Tensor parallelism: one layer's weight matrix split across ranks (Megatron-LM, Shoeybi et al.
2019, arXiv:1909.08053; picotron's ``tensor_parallel.py``).

Data parallelism copies the whole model on every rank; tensor parallelism splits each big matrix
instead, so a layer too large for one device still fits. A Linear ``y = x W^T + b`` with W of
shape (out, in) can be split two ways:

- **column parallel** (:class:`ColumnParallelLinear`): rank r keeps the rows ``r*out/N ..
  (r+1)*out/N`` of W (the columns of ``W^T``) and computes that slice of the output from the
  whole input;
- **row parallel** (:class:`RowParallelLinear`): rank r keeps the columns ``r*in/N ..
  (r+1)*in/N`` of W, reads that slice of the input, and the N partial outputs are summed.

A column-parallel layer followed by a row-parallel one (an MLP, or attention with its heads split)
needs no communication in between, and exactly two all-reduces per block: one in the forward pass
(summing the partial outputs, Megatron's ``g``) and one in the backward pass (summing the partial
input gradients, Megatron's ``f``). ``f`` and ``g`` are autograd Functions that are each an
identity on one pass and an all-reduce on the other:

    copy_to_parallel_region      (f)  forward: identity         backward: all-reduce
    reduce_from_parallel_region  (g)  forward: all-reduce       backward: identity

Every rank computes the same (replicated) loss, so the gradient reaching g's output is already
the full gradient on every rank: an all-reduce there as well (what
``torch.distributed.nn.functional.all_reduce`` does in backward) would multiply it by N.

Every module here reads its rank and the world size from the default process group
(``torch.distributed.get_rank()`` / ``get_world_size()``) when it is built; ``load_full`` copies
its own slice of an unsharded layer's weights, so the parallel layer computes exactly what the
unsharded one does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _split_last(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous block of the last dimension (which world_size divides)."""
    return x.chunk(world_size, dim=-1)[rank].contiguous()


def _gather_last(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` side by side along the last dimension, in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


class _CopyToParallelRegion(torch.autograd.Function):
    """Megatron's f: identity in forward, all-reduce (sum) of the gradient in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _CopyToParallelRegion.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _CopyToParallelRegion.backward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )


class _ReduceFromParallelRegion(torch.autograd.Function):
    """Megatron's g: all-reduce (sum) in forward, identity in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _ReduceFromParallelRegion.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _ReduceFromParallelRegion.backward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )


class _GatherFromParallelRegion(torch.autograd.Function):
    """All-gather along the last dimension in forward; this rank's slice of the gradient in
    backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _GatherFromParallelRegion.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _GatherFromParallelRegion.backward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )


class _ScatterToParallelRegion(torch.autograd.Function):
    """This rank's slice of the last dimension in forward; all-gather of the gradient in
    backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _ScatterToParallelRegion.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement _ScatterToParallelRegion.backward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md)"
        )


def copy_to_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """f: ``x`` unchanged; its gradient is all-reduced (summed) across ranks in backward."""
    return _CopyToParallelRegion.apply(x)


def reduce_from_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """g: the sum of ``x`` over ranks; its gradient passes through unchanged in backward."""
    return _ReduceFromParallelRegion.apply(x)


def gather_from_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """(..., n) on each rank -> (..., n * world_size), the ranks' slices in rank order."""
    return _GatherFromParallelRegion.apply(x)


def scatter_to_parallel_region(x: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (..., n / world_size): this rank's contiguous slice of the last dimension."""
    return _ScatterToParallelRegion.apply(x)


def _divide(n: int, world_size: int, what: str) -> int:
    if n % world_size != 0:
        raise ValueError(f"{what}={n} must be divisible by the world size {world_size}")
    return n // world_size


def _init_like_linear(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """nn.Linear's initialisation for a slice of a layer whose full input has ``fan_in``
    features: uniform in +-1/sqrt(fan_in), so the slices together are a fresh full layer."""
    bound = 1.0 / fan_in**0.5
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


def _check_full(linear: nn.Linear, in_features: int, out_features: int, who: str) -> None:
    expected = (out_features, in_features)
    if tuple(linear.weight.shape) != expected:
        raise ValueError(
            f"{who}.load_full needs a full layer with weight {expected}, got "
            f"{tuple(linear.weight.shape)}"
        )


class ColumnParallelLinear(nn.Module):
    """``y = x W^T + b`` with the rows of W (the output features) split across ranks.

    Rank r holds ``weight`` (out_features / N, in_features) = rows ``r*out/N .. (r+1)*out/N`` of
    the full weight, and ``bias`` (out_features / N,), the same slice of the full bias. The input
    (..., in_features) is the same on every rank and goes through :func:`copy_to_parallel_region`
    first (its gradient is summed over ranks in backward); the output is this rank's slice
    (..., out_features / N), or with ``gather_output=True`` the whole (..., out_features),
    all-gathered in rank order (:func:`gather_from_parallel_region`).

    Raises:
        ValueError: if the world size does not divide ``out_features``.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False
    ) -> None:
        super().__init__()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.in_features, self.out_features = in_features, out_features
        self.out_per_rank = _divide(out_features, self.world_size, "out_features")
        self.gather_output = gather_output
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ColumnParallelLinear.__init__ in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#columnparallellinear)"
        )
        _init_like_linear(self.weight, self.bias, in_features)

    @torch.no_grad()
    def load_full(self, linear: nn.Linear) -> None:
        """Copy this rank's rows of ``linear``'s weight (and bias) in place."""
        _check_full(linear, self.in_features, self.out_features, "ColumnParallelLinear")
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ColumnParallelLinear.load_full in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#columnparallellinear)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features / N), or (..., out_features) gathered."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ColumnParallelLinear.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#columnparallellinear)"
        )


class RowParallelLinear(nn.Module):
    """``y = x W^T + b`` with the columns of W (the input features) split across ranks.

    Rank r holds ``weight`` (out_features, in_features / N) = columns ``r*in/N .. (r+1)*in/N`` of
    the full weight, and the WHOLE ``bias`` (out_features,). With ``input_is_parallel=True``
    (after a :class:`ColumnParallelLinear`) the input is already this rank's slice (..., in / N);
    otherwise the full input (..., in) is split first (:func:`scatter_to_parallel_region`). The
    partial products are summed over ranks (:func:`reduce_from_parallel_region`) and the bias is
    added once, after the sum: every rank returns the same full output (..., out_features).

    Raises:
        ValueError: if the world size does not divide ``in_features``.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = True
    ) -> None:
        super().__init__()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.in_features, self.out_features = in_features, out_features
        self.in_per_rank = _divide(in_features, self.world_size, "in_features")
        self.input_is_parallel = input_is_parallel
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement RowParallelLinear.__init__ in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#rowparallellinear)"
        )
        _init_like_linear(self.weight, self.bias, in_features)

    @torch.no_grad()
    def load_full(self, linear: nn.Linear) -> None:
        """Copy this rank's columns of ``linear``'s weight, and its whole bias, in place."""
        _check_full(linear, self.in_features, self.out_features, "RowParallelLinear")
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement RowParallelLinear.load_full in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#rowparallellinear)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features / N), or (..., in_features) when not ``input_is_parallel``, ->
        (..., out_features), the same on every rank."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement RowParallelLinear.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#rowparallellinear)"
        )


class ParallelMLP(nn.Module):
    """Chapter 3's MLP split across ranks: ``c_proj(gelu(c_fc(x)))`` with ``c_fc`` a
    :class:`ColumnParallelLinear` (n_embd -> hidden, its output left split) and ``c_proj`` a
    :class:`RowParallelLinear` (hidden -> n_embd, input already split), GELU the tanh
    approximation as in chapter 3. One all-reduce in forward, one in backward.

    Raises:
        ValueError: if the world size does not divide ``hidden``.
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ParallelMLP.__init__ in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#parallelmlp)"
        )

    @torch.no_grad()
    def load_full(self, mlp: nn.Module) -> None:
        """Copy this rank's slices of an unsharded MLP (with ``c_fc`` and ``c_proj`` Linears)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ParallelMLP.load_full in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#parallelmlp)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_embd) -> (B, T, n_embd), the same on every rank."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ParallelMLP.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#parallelmlp)"
        )


class ParallelSelfAttention(nn.Module):
    """Chapter 3's causal self-attention with its heads split across ranks.

    Rank r computes heads ``r*n_head/N .. (r+1)*n_head/N``. ``c_attn`` is a
    :class:`ColumnParallelLinear` (n_embd -> 3 n_embd / N) whose local output holds this rank's
    queries, then its keys, then its values, each (.., n_embd / N); ``c_proj`` is a
    :class:`RowParallelLinear` (n_embd -> n_embd, input already split) that reads this rank's
    heads side by side. The full ``c_attn`` stacks ALL the queries, then all the keys, then all
    the values, so this rank's rows of it are three separate blocks, not one contiguous slice.

    Raises:
        ValueError: if ``n_embd`` is not a multiple of ``n_head``, or the world size does not
            divide ``n_head``.
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool = True) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.n_embd, self.n_head = n_embd, n_head
        self.local_heads = _divide(n_head, self.world_size, "n_head")
        self.head_size = n_embd // n_head
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ParallelSelfAttention.__init__ in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#parallelselfattention)"
        )

    @torch.no_grad()
    def load_full(self, attn: nn.Module) -> None:
        """Copy this rank's slices of an unsharded attention (``c_attn``: n_embd -> 3 n_embd,
        queries then keys then values; ``c_proj``: n_embd -> n_embd)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ParallelSelfAttention.load_full in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#parallelselfattention)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_embd) -> (B, T, n_embd), causal, the same on every rank."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch6 stage 'tensor_parallel' not started: implement ParallelSelfAttention.forward in ch6/tensor_parallel.py (read docs/chapter06/6_5_tensor_parallel.md#parallelselfattention)"
        )
