"""Stage 'tensor_parallel': Megatron's f and g (each an identity on one pass and an all-reduce on
the other), the column- and row-parallel Linears (their shards, outputs, input gradients and the
full weight gradients put back together) against one unsharded nn.Linear, the parallel MLP against
the unsharded MLP and against torch.distributed.tensor.parallel (ColwiseParallel, RowwiseParallel),
attention with its heads split, and one all-reduce per block in each pass.

Every oracle input and weight is drawn here, in the caller; the two ranks (grader/ranks.py) get
them, run the learner's layers, and send back what came out; every check is made here."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from grader.ranks import run_ranks
from grader.tree import load
from tests.helpers import Mistake, check_close, check_equal, check_matches, fill_parameters

tp = load("ch6.tensor_parallel")

WS = 2  # ranks
B, T, C, HIDDEN, N_HEAD = 2, 5, 8, 16, 4
F_WHERE = "ch6/tensor_parallel.py, _CopyToParallelRegion"
G_WHERE = "ch6/tensor_parallel.py, _ReduceFromParallelRegion"
COLUMN = "ch6/tensor_parallel.py, ColumnParallelLinear"
ROW = "ch6/tensor_parallel.py, RowParallelLinear"
MLP_WHERE = "ch6/tensor_parallel.py, ParallelMLP"
ATTN = "ch6/tensor_parallel.py, ParallelSelfAttention"
TRAP = Mistake(
    "a gradient world_size times too large",
    "g's backward must pass the gradient through unchanged (every rank's loss is the same, so "
    "its gradient is already the full one); torch.distributed.nn.functional.all_reduce "
    "all-reduces in backward too, which is Megatron's f and g in one, not g",
    None,
)


def trap(value: torch.Tensor) -> Mistake:
    """The backward-all-reduce trap's value: the right input gradient times the world size."""
    return Mistake(TRAP.name, TRAP.fix, WS * value)


class MLP(nn.Module):
    """The unsharded oracle: chapter 3's MLP (n_embd -> hidden -> GELU(tanh) -> n_embd)."""

    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(C, HIDDEN)
        self.c_proj = nn.Linear(HIDDEN, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Attention(nn.Module):
    """The unsharded oracle: chapter 3's causal self-attention (q, k, v fused in c_attn)."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(heads_attention(self.c_attn(x), N_HEAD))


def heads_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, 3 w) queries, keys, values -> (B, T, w): causal attention over n_head heads."""
    b, t, w3 = qkv.shape
    q, k, v = (z.view(b, t, n_head, -1).transpose(1, 2) for z in qkv.split(w3 // 3, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(b, t, w3 // 3)


def filled(module: nn.Module) -> nn.Module:
    return fill_parameters(module)


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def collectives(mode: CommDebugMode) -> dict[str, int]:
    """{collective: calls} seen by ``mode``, with the c10d and functional spellings merged."""
    counts: Counter[str] = Counter()
    for op, n in mode.get_comm_counts().items():
        name = str(op).split(".")[-1].rstrip("_")
        counts[{"allreduce": "all_reduce", "allgather": "all_gather"}.get(name, name)] += n
    return dict(counts)


def stacked(results: list[dict], key: str) -> torch.Tensor:
    return torch.stack([r[key] for r in results])


def every_rank(value: torch.Tensor) -> torch.Tensor:
    return value.expand(WS, *value.shape)


# -- rank functions: build the learner's layers, run them, send back what came out ----------------


def f_and_g(rank: int, world_size: int, xs: torch.Tensor, weights: torch.Tensor) -> dict:
    x = xs[rank].clone().requires_grad_()
    y = tp.reduce_from_parallel_region(x)  # the same sum on every rank
    (y * weights[0]).sum().backward()  # a replicated loss
    x2 = xs[rank].clone().requires_grad_()
    z = tp.copy_to_parallel_region(x2)
    (z * weights[rank]).sum().backward()  # each rank's part of one loss
    return {"g": y.detach(), "g_grad": x.grad, "f": z.detach(), "f_grad": x2.grad}


def gather_and_scatter(rank: int, world_size: int, xs: torch.Tensor, weight: torch.Tensor) -> dict:
    x = xs[rank].clone().requires_grad_()
    y = tp.gather_from_parallel_region(x)
    (y * weight).sum().backward()
    full = xs[0].repeat(1, world_size).clone().requires_grad_()  # the same on every rank
    part = tp.scatter_to_parallel_region(full)
    (part * weight.chunk(world_size, dim=-1)[rank]).sum().backward()
    return {"gather": y.detach(), "gather_grad": x.grad, "scatter": part.detach()} | {
        "scatter_grad": full.grad
    }


def shards(rank: int, world_size: int, column_state: dict, row_state: dict) -> dict:
    column_full, row_full = nn.Linear(6, C), nn.Linear(C, 6)
    column_full.load_state_dict(column_state)
    row_full.load_state_dict(row_state)
    column, row = tp.ColumnParallelLinear(6, C), tp.RowParallelLinear(C, 6)
    column.load_full(column_full)
    row.load_full(row_full)
    return {
        "column_weight": column.weight.detach(),
        "column_bias": column.bias.detach(),
        "row_weight": row.weight.detach(),
        "row_bias": row.bias.detach(),
    }


def column_run(rank: int, world_size: int, state: dict, x: torch.Tensor, g: torch.Tensor) -> dict:
    full = nn.Linear(C, HIDDEN)
    full.load_state_dict(state)
    out = {}
    for gather in (False, True):
        layer = tp.ColumnParallelLinear(C, HIDDEN, gather_output=gather)
        layer.load_full(full)
        xr = x.clone().requires_grad_()
        y = layer(xr)
        # Without gathering, each rank holds its slice of the output: its part of one loss.
        weight = g if gather else g.chunk(world_size, dim=-1)[rank]
        (y * weight).sum().backward()
        key = "gathered" if gather else "split"
        out[key] = {"y": y.detach(), "x_grad": xr.grad} | grads(layer)
    return out


def row_run(rank: int, world_size: int, state: dict, x: torch.Tensor, g: torch.Tensor) -> dict:
    full = nn.Linear(HIDDEN, C)
    full.load_state_dict(state)
    out = {}
    for parallel in (True, False):
        layer = tp.RowParallelLinear(HIDDEN, C, input_is_parallel=parallel)
        layer.load_full(full)
        xr = (x.chunk(world_size, dim=-1)[rank] if parallel else x).clone().requires_grad_()
        y = layer(xr)
        (y * g).sum().backward()  # replicated: every rank has the whole output
        key = "parallel" if parallel else "full"
        out[key] = {"y": y.detach(), "x_grad": xr.grad} | grads(layer)
    return out


def mlp_run(rank: int, world_size: int, state: dict, x: torch.Tensor, g: torch.Tensor) -> dict:
    full = MLP()
    full.load_state_dict(state)
    mlp = tp.ParallelMLP(C, HIDDEN)
    mlp.load_full(full)
    xr = x.clone().requires_grad_()
    with CommDebugMode() as forward:
        y = mlp(xr)
    with CommDebugMode() as backward:
        (y * g).sum().backward()
    ours = {"y": y.detach(), "x_grad": xr.grad} | grads(mlp)
    # torch's own tensor parallelism on the same weights: the oracle, in the same ranks.
    mesh = init_device_mesh("cpu", (world_size,))
    reference = parallelize_module(
        full, mesh, {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()}
    )
    xt = x.clone().requires_grad_()
    yt = reference(xt)
    (yt * g).sum().backward()
    theirs = {"y": yt.detach(), "x_grad": xt.grad}
    for name, p in reference.named_parameters():
        theirs[name] = p.grad.to_local().detach()  # this rank's shard of torch's gradient
    comms = {"forward": collectives(forward), "backward": collectives(backward)}
    return {"ours": ours, "torch": theirs, "comms": comms}


def attention_run(
    rank: int, world_size: int, state: dict, x: torch.Tensor, g: torch.Tensor
) -> dict:
    full = Attention()
    full.load_state_dict(state)
    attn = tp.ParallelSelfAttention(C, N_HEAD)
    attn.load_full(full)
    xr = x.clone().requires_grad_()
    with CommDebugMode() as forward:
        y = attn(xr)
    with CommDebugMode() as backward:
        (y * g).sum().backward()
    comms = {"forward": collectives(forward), "backward": collectives(backward)}
    return {"y": y.detach(), "x_grad": xr.grad, "comms": comms} | grads(attn)


# -- the tests ------------------------------------------------------------------------------------


def test_f_is_identity_forward_and_g_sums():
    """g sums over ranks in forward and passes the gradient through; f passes forward and sums
    the ranks' gradients in backward."""
    xs, weights = torch.randn(WS, 3, 4), torch.randn(WS, 3, 4)
    results = run_ranks(f_and_g, WS, xs, weights)
    check_close(
        stacked(results, "g"),
        every_rank(xs.sum(0)),
        "reduce_from_parallel_region's output on each rank",
        G_WHERE + ".forward",
        mistakes=[Mistake("each rank's own input", "all-reduce (sum) it across ranks", xs)],
    )
    expected = every_rank(weights[0])
    check_close(
        stacked(results, "g_grad"),
        expected,
        "the input gradient through reduce_from_parallel_region (a replicated loss)",
        G_WHERE + ".backward",
        mistakes=[trap(expected)],
    )
    check_close(
        stacked(results, "f"),
        xs,
        "copy_to_parallel_region's output",
        F_WHERE + ".forward",
        mistakes=[
            Mistake("the sum over ranks", "return the input unchanged", every_rank(xs.sum(0)))
        ],
    )
    check_close(
        stacked(results, "f_grad"),
        every_rank(weights.sum(0)),
        "the input gradient through copy_to_parallel_region (each rank's part of one loss)",
        F_WHERE + ".backward",
        mistakes=[Mistake("this rank's gradient alone", "all-reduce (sum) the gradient", weights)],
    )


def test_gather_and_scatter():
    """gather_from_parallel_region puts the ranks' slices side by side (its backward keeps this
    rank's slice); scatter_to_parallel_region keeps this rank's slice (its backward gathers)."""
    xs, weight = torch.randn(WS, 3, 2), torch.randn(3, 2 * WS)
    results = run_ranks(gather_and_scatter, WS, xs, weight)
    where = "ch6/tensor_parallel.py, _GatherFromParallelRegion"
    check_close(
        stacked(results, "gather"),
        every_rank(torch.cat(list(xs), dim=-1)),
        "gather_from_parallel_region's output",
        where + ".forward",
    )
    check_close(
        stacked(results, "gather_grad"),
        torch.stack(weight.chunk(WS, dim=-1)),
        "the gradient through gather_from_parallel_region",
        where + ".backward",
    )
    where = "ch6/tensor_parallel.py, _ScatterToParallelRegion"
    full = xs[0].repeat(1, WS)
    check_close(
        stacked(results, "scatter"),
        torch.stack(full.chunk(WS, dim=-1)),
        "scatter_to_parallel_region's output",
        where + ".forward",
    )
    check_close(
        stacked(results, "scatter_grad"),
        every_rank(weight),
        "the gradient through scatter_to_parallel_region",
        where + ".backward",
    )


def test_shards_are_the_right_slices():
    """After load_full, a column-parallel layer holds rows of the weight (output features) and of
    the bias; a row-parallel layer holds columns (input features) and the whole bias."""
    column_full, row_full = filled(nn.Linear(6, C)), filled(nn.Linear(C, 6))
    results = run_ranks(shards, WS, column_full.state_dict(), row_full.state_dict())
    W, b = column_full.weight.detach(), column_full.bias.detach()
    for what, where, key, expected, wrong in (
        ("ColumnParallelLinear's weight", COLUMN, "column_weight", (C // WS, 6), (C, 6 // WS)),
        ("RowParallelLinear's weight", ROW, "row_weight", (6, C // WS), (6 // WS, C)),
    ):
        got = tuple(results[0][key].shape)
        message = (
            f"{what} should have shape {expected} on each of {WS} ranks, got {got}"
            + (
                ": it is split along the wrong dimension (a Linear's weight is (out, in): a "
                "column-parallel layer splits the out_features, dim 0; a row-parallel layer the "
                "in_features, dim 1)"
                if got == wrong
                else ""
            )
            + f". Look at {where}.__init__."
        )
        check_matches(got, expected, message)
    check_close(
        stacked(results, "column_weight"),
        torch.stack(W.chunk(WS, dim=0)),
        "ColumnParallelLinear's weight shard",
        COLUMN + ".load_full",
        mistakes=[
            Mistake(
                "every world_size-th row (strided) instead of a contiguous block",
                "take rows rank*out/N to (rank+1)*out/N",
                torch.stack([W[r::WS] for r in range(WS)]),
            )
        ],
    )
    check_close(
        stacked(results, "column_bias"),
        torch.stack(b.chunk(WS)),
        "ColumnParallelLinear's bias shard",
        COLUMN + ".load_full",
    )
    W, b = row_full.weight.detach(), row_full.bias.detach()
    check_close(
        stacked(results, "row_weight"),
        torch.stack(W.chunk(WS, dim=1)),
        "RowParallelLinear's weight shard",
        ROW + ".load_full",
    )
    check_close(
        stacked(results, "row_bias"),
        every_rank(b),
        "RowParallelLinear's bias (whole on every rank)",
        ROW + ".load_full",
    )


def test_column_parallel_matches_linear():
    """Split and gathered outputs, the input gradient, and the ranks' weight and bias gradients
    put back together equal one nn.Linear's."""
    full = filled(nn.Linear(C, HIDDEN))
    x, g = torch.randn(B, T, C), torch.randn(B, T, HIDDEN)
    results = run_ranks(column_run, WS, full.state_dict(), x, g)
    xr = x.clone().requires_grad_()
    y = full(xr)
    (y * g).sum().backward()
    y = y.detach()
    for key in ("split", "gathered"):
        got = [r[key] for r in results]
        expected_y = every_rank(y) if key == "gathered" else torch.stack(y.chunk(WS, dim=-1))
        check_close(
            torch.stack([r["y"] for r in got]),
            expected_y,
            f"ColumnParallelLinear's output ({key})",
            COLUMN + ".forward",
            atol=1e-5,
        )
        check_close(
            torch.stack([r["x_grad"] for r in got]),
            every_rank(xr.grad),
            f"ColumnParallelLinear's input gradient ({key})",
            COLUMN + ".forward (copy_to_parallel_region first)",
            mistakes=[
                Mistake(
                    "this rank's share of the gradient (no all-reduce in backward)",
                    "pass the input through copy_to_parallel_region before the matmul",
                    torch.stack(
                        [
                            g.chunk(WS, -1)[r] @ full.weight.detach().chunk(WS, 0)[r]
                            for r in range(WS)
                        ]
                    ),
                )
            ],
        )
        check_close(
            torch.cat([r["weight"] for r in got]),
            full.weight.grad,
            f"the ranks' weight gradients side by side ({key})",
            COLUMN + ".forward",
        )
        check_close(
            torch.cat([r["bias"] for r in got]),
            full.bias.grad,
            f"the ranks' bias gradients side by side ({key})",
            COLUMN + ".forward",
        )


def test_row_parallel_matches_linear():
    """The output (bias added once), the input gradient, and the weight gradients put back
    together equal one nn.Linear's, with the input already split and with the full input."""
    full = filled(nn.Linear(HIDDEN, C))
    x, g = torch.randn(B, T, HIDDEN), torch.randn(B, T, C)
    results = run_ranks(row_run, WS, full.state_dict(), x, g)
    xr = x.clone().requires_grad_()
    y = full(xr)
    (y * g).sum().backward()
    y, bias = y.detach(), full.bias.detach()
    for key in ("parallel", "full"):
        got = [r[key] for r in results]
        check_close(
            torch.stack([r["y"] for r in got]),
            every_rank(y),
            f"RowParallelLinear's output (input {key})",
            ROW + ".forward",
            mistakes=[
                Mistake(
                    "the bias added on every rank (world_size times the bias)",
                    "add the bias once, after reduce_from_parallel_region",
                    every_rank(y + (WS - 1) * bias),
                ),
                Mistake(
                    "this rank's partial sum (no all-reduce)",
                    "sum the partial outputs with reduce_from_parallel_region",
                    torch.stack(
                        [
                            x.chunk(WS, -1)[r] @ full.weight.detach().chunk(WS, 1)[r].T + bias
                            for r in range(WS)
                        ]
                    ),
                ),
            ],
        )
        expected = (
            torch.stack(xr.grad.chunk(WS, dim=-1)) if key == "parallel" else every_rank(xr.grad)
        )
        check_close(
            torch.stack([r["x_grad"] for r in got]),
            expected,
            f"RowParallelLinear's input gradient (input {key})",
            ROW + ".forward",
            mistakes=[trap(expected)],
        )
        check_close(
            torch.cat([r["weight"] for r in got], dim=1),
            full.weight.grad,
            f"the ranks' weight gradients side by side (input {key})",
            ROW + ".forward",
            mistakes=[trap(full.weight.grad)],
        )
        check_close(
            torch.stack([r["bias"] for r in got]),
            every_rank(full.bias.grad),
            f"RowParallelLinear's bias gradient (input {key})",
            ROW + ".forward",
            mistakes=[trap(every_rank(full.bias.grad))],
        )


def test_parallel_mlp_matches_mlp_and_torch_tensor_parallel():
    """ParallelMLP equals the unsharded MLP (output, input gradient, full weight gradients) and
    torch's ColwiseParallel/RowwiseParallel (each rank's gradient shard), with one all-reduce
    in forward and one in backward."""
    full = filled(MLP())
    x, g = torch.randn(B, T, C), torch.randn(B, T, C)
    results = run_ranks(mlp_run, WS, full.state_dict(), x, g)
    xr = x.clone().requires_grad_()
    y = full(xr)
    (y * g).sum().backward()
    ours = [r["ours"] for r in results]
    check_close(
        stacked(ours, "y"),
        every_rank(y.detach()),
        "ParallelMLP's output",
        MLP_WHERE + ".forward",
        mistakes=[
            Mistake(
                "the exact GELU",
                "use nn.GELU(approximate='tanh'), chapter 3's",
                every_rank(full.c_proj(F.gelu(full.c_fc(x))).detach()),
            )
        ],
    )
    check_close(
        stacked(ours, "x_grad"),
        every_rank(xr.grad),
        "ParallelMLP's input gradient",
        MLP_WHERE,
        mistakes=[trap(every_rank(xr.grad))],
    )
    for name, dim in (("c_fc.weight", 0), ("c_fc.bias", 0), ("c_proj.weight", 1)):
        check_close(
            torch.cat([r[name] for r in ours], dim=dim),
            full.get_parameter(name).grad,
            f"the ranks' {name} gradients put back together",
            MLP_WHERE,
            mistakes=[trap(full.get_parameter(name).grad)],
        )
    theirs = [r["torch"] for r in results]
    for name in ("y", "x_grad", "c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"):
        check_close(
            stacked(ours, name),
            stacked(theirs, name),
            f"ParallelMLP's {name if name != 'y' else 'output'} against torch's "
            f"ColwiseParallel/RowwiseParallel on the same weights",
            MLP_WHERE,
        )
    for rank, r in enumerate(results):
        for phase in ("forward", "backward"):
            check_equal(
                r["comms"][phase],
                {"all_reduce": 1},
                f"the collectives of one ParallelMLP {phase} pass on rank {rank}",
                MLP_WHERE + (": f all-reduces in backward only, g in forward only"),
            )


def contiguous_qkv_attention(full: Attention, x: torch.Tensor) -> torch.Tensor:
    """What attention gives when each rank takes one contiguous block of the fused c_attn rows
    (rank 0 all the queries and half the keys...) instead of its queries, keys and values."""
    W, b = full.c_attn.weight.detach(), full.c_attn.bias.detach()
    P, pb = full.c_proj.weight.detach(), full.c_proj.bias.detach()
    total = torch.zeros(B, T, C)
    for r in range(WS):
        rows = slice(r * 3 * C // WS, (r + 1) * 3 * C // WS)
        y = heads_attention(F.linear(x, W[rows], b[rows]), N_HEAD // WS)
        total += y @ P.chunk(WS, dim=1)[r].T
    return total + pb


def test_parallel_attention_matches_attention():
    """Heads split across ranks: output, input gradient and full weight gradients equal the
    unsharded causal attention's; one all-reduce in forward and one in backward."""
    full = filled(Attention())
    x, g = torch.randn(B, T, C), torch.randn(B, T, C)
    results = run_ranks(attention_run, WS, full.state_dict(), x, g)
    xr = x.clone().requires_grad_()
    y = full(xr)
    (y * g).sum().backward()
    check_close(
        stacked(results, "y"),
        every_rank(y.detach()),
        "ParallelSelfAttention's output",
        ATTN + ".load_full and .forward",
        mistakes=[
            Mistake(
                "attention with one contiguous block of c_attn's rows per rank (rank 0 got all "
                "the queries and half the keys)",
                "take this rank's rows from each of the query, key and value blocks",
                every_rank(contiguous_qkv_attention(full, x)),
            )
        ],
        hint="the attention must be causal, each rank computing n_head / world_size heads",
    )
    check_close(
        stacked(results, "x_grad"),
        every_rank(xr.grad),
        "ParallelSelfAttention's input gradient",
        ATTN,
        mistakes=[trap(every_rank(xr.grad))],
    )
    C_per = C // WS
    rows = [
        torch.cat([torch.arange(p * C + r * C_per, p * C + (r + 1) * C_per) for p in range(3)])
        for r in range(WS)
    ]
    for name in ("c_attn.weight", "c_attn.bias"):
        expected = torch.stack([full.get_parameter(name).grad[idx] for idx in rows])
        check_close(stacked(results, name), expected, f"each rank's {name} gradient", ATTN)
    check_close(
        torch.cat([r["c_proj.weight"] for r in results], dim=1),
        full.c_proj.weight.grad,
        "the ranks' c_proj.weight gradients put back together",
        ATTN,
    )
    for rank, r in enumerate(results):
        for phase in ("forward", "backward"):
            check_equal(
                r["comms"][phase],
                {"all_reduce": 1},
                f"the collectives of one ParallelSelfAttention {phase} pass on rank {rank}",
                ATTN,
            )
