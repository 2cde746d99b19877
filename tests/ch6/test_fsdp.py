"""Stage 'fsdp': shard_model makes one FSDP2 unit per block plus the root, with every parameter
sharded; k steps on 2 ranks, each with half of every batch, give one process's losses and weights
(SGD, so summed gradients, which FSDP2 on gloo once produced, would show); each rank holds its
1/N of the parameter bytes; a checkpoint saved by 2 ranks resumes on 1 with the same
parameters, optimizer state and next loss.

The model is the tree's chapter 3 GPT with weights fixed here (fill_parameters); the ranks
(grader/ranks.py) send back losses, states and bytes, and every check is made here."""

from __future__ import annotations

import tempfile

import torch
import torch._dynamo  # noqa: F401 -- fully_shard imports it lazily: once here, not in every rank
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_map

from grader.ranks import run_ranks
from grader.tree import load
from tests.helpers import (
    Mistake,
    check_close,
    check_equal,
    check_matches,
    fill_parameters,
)

fsdp = load("ch6.fsdp")
gpt = load("ch3.gpt")

WS = 2
CONFIG = {"vocab_size": 24, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}
BATCH, STEPS, SGD_LR = 4, 3, 0.5
SHARD = "ch6/fsdp.py, shard_model"
BYTES = "ch6/fsdp.py, parameter_bytes"
SAVE = "ch6/fsdp.py, save_sharded and load_sharded"
FULL = StateDictOptions(full_state_dict=True)


def reference_model() -> torch.nn.Module:
    return fill_parameters(gpt.GPT(gpt.GPTConfig(**CONFIG)))


def batches(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (steps, BATCH, CONFIG["block_size"])
    return (
        torch.randint(CONFIG["vocab_size"], shape, generator=g),
        torch.randint(CONFIG["vocab_size"], shape, generator=g),
    )


def mean_over_ranks(loss: torch.Tensor) -> float:
    loss = loss.detach().clone()
    dist.all_reduce(loss)
    return loss.item() / dist.get_world_size()


def sharded_model(state: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = gpt.GPT(gpt.GPTConfig(**CONFIG))
    model.load_state_dict(state)
    return fsdp.shard_model(model)


# -- rank functions -------------------------------------------------------------------------------


def structure(rank: int, world_size: int, state: dict) -> dict:
    model = sharded_model(state)
    return {
        "units": [name for name, m in model.named_modules() if isinstance(m, FSDPModule)],
        "unsharded": [n for n, p in model.named_parameters() if not isinstance(p, DTensor)],
    }


def sgd_steps(rank: int, world_size: int, state: dict, xs, ys) -> dict:
    model = sharded_model(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=SGD_LR)
    losses = []
    for x, y in zip(xs, ys, strict=True):
        _, loss = model(x.chunk(world_size)[rank], y.chunk(world_size)[rank])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(mean_over_ranks(loss))
    final = get_model_state_dict(model, options=FULL)  # new tensors: gathered from the shards
    return {"losses": losses, "bytes": fsdp.parameter_bytes(model), "final": final}


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    # fused: one operation per step. DTensor works out the sharding of each kind of operation
    # the first time a process meets it (about 0.1 s each): the per-tensor loop would pay that
    # for dozens of operations in every fresh rank.
    return torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)


def adamw_step(model, optimizer, x, y, rank: int, world_size: int) -> float:
    _, loss = model(x.chunk(world_size)[rank], y.chunk(world_size)[rank])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return mean_over_ranks(loss)


def full_state(model, optimizer) -> dict:
    """Copies of the whole model's parameters and AdamW state (on one rank the full tensors
    would be views of the live ones, which the next step changes)."""
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)["state"]
    state = {"model": get_model_state_dict(model, options=FULL), "optimizer": optim}
    return tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, state)


def train_and_save(rank: int, world_size: int, state: dict, xs, ys, folder: str) -> dict:
    model = sharded_model(state)
    optimizer = adamw(model)
    for x, y in zip(xs[:-1], ys[:-1], strict=True):
        adamw_step(model, optimizer, x, y, rank, world_size)
    fsdp.save_sharded(model, optimizer, folder)
    saved = full_state(model, optimizer)
    next_loss = adamw_step(model, optimizer, xs[-1], ys[-1], rank, world_size)
    return saved | {"next_loss": next_loss}


def load_and_step(rank: int, world_size: int, state: dict, xs, ys, folder: str) -> dict:
    # A fresh model with other weights: everything must come from the checkpoint.
    other = {k: torch.randn_like(v) for k, v in state.items()}
    model = sharded_model(other, seed=1)
    optimizer = adamw(model)
    fsdp.load_sharded(model, optimizer, folder)
    loaded = full_state(model, optimizer)
    next_loss = adamw_step(model, optimizer, xs[-1], ys[-1], rank, world_size)
    return loaded | {"next_loss": next_loss}


# -- the tests ------------------------------------------------------------------------------------


def test_one_unit_per_block_and_the_root():
    """fully_shard on each transformer block and on the root; every parameter a sharded DTensor."""
    state = reference_model().state_dict()
    got = run_ranks(structure, WS, state)[0]
    expected = ["", *(f"transformer.h.{i}" for i in range(CONFIG["n_layer"]))]
    units = got["units"]
    if "" not in units:
        why = (
            "the root model is not an FSDP unit: call fully_shard(model) after the blocks, or "
            "the embeddings, ln_f and lm_head are neither sharded nor averaged across ranks"
        )
    elif units == [""]:
        why = (
            "only the root is an FSDP unit: fully_shard each block of model.transformer.h first, "
            "so that one block's parameters are gathered at a time, not the whole model's"
        )
    else:
        why = "expected one unit per block of model.transformer.h plus the root"
    check_matches(
        units,
        expected,
        f"the FSDP units should be {expected}, got {units}: {why}. Look at {SHARD}.",
    )
    check_equal(got["unsharded"], [], "the parameters left unsharded (not DTensors)", SHARD)


def test_two_ranks_match_one_process_and_hold_half_the_bytes():
    """3 SGD steps on 2 ranks with half of each batch: one process's losses and final weights
    on the whole batches (averaged gradients, not summed); each rank holds its torch.chunk
    share of every parameter's bytes."""
    model = reference_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xs, ys = batches(STEPS)
    results = run_ranks(sgd_steps, WS, state, xs, ys)

    def one_process(scale: float) -> tuple[list[float], dict]:
        m = gpt.GPT(gpt.GPTConfig(**CONFIG))
        m.load_state_dict(state)
        optimizer = torch.optim.SGD(m.parameters(), lr=SGD_LR)
        losses = []
        for x, y in zip(xs, ys, strict=True):
            _, loss = m(x, y)
            (scale * loss).backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses, m.state_dict()

    expected, final = one_process(1.0)
    summed, summed_final = one_process(float(WS))
    print(f"losses on {WS} ranks {results[0]['losses']}, one process {expected}")
    check_close(
        torch.tensor(results[0]["losses"]),
        torch.tensor(expected),
        f"the losses of {STEPS} SGD steps on {WS} ranks (each half the batch)",
        SHARD,
        mistakes=[
            Mistake(
                "one process's losses with gradients summed over ranks instead of averaged",
                "FSDP averages the gradients in its reduce-scatter: do not scale the loss or "
                "change the gradient divide factor",
                torch.tensor(summed),
            )
        ],
    )
    names = sorted(final)
    check_close(
        torch.cat([results[0]["final"][n].flatten() for n in names]),
        torch.cat([final[n].flatten() for n in names]),
        f"the weights after {STEPS} steps on {WS} ranks",
        SHARD,
        mistakes=[
            Mistake(
                "one process's weights with gradients summed over ranks",
                "the gradients must be averaged",
                torch.cat([summed_final[n].flatten() for n in names]),
            )
        ],
    )
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    shares = [
        sum(
            p.chunk(WS)[rank].numel() * p.element_size() if len(p.chunk(WS)) > rank else 0
            for p in model.parameters()
        )
        for rank in range(WS)
    ]
    got = [r["bytes"] for r in results]
    print(f"parameter bytes per rank: {got} of {full} for the whole model")
    check_close(
        torch.tensor(got),
        torch.tensor(shares),
        f"parameter_bytes on each of {WS} ranks (the whole model: {full} bytes)",
        BYTES,
        atol=0,
        rtol=0,
        mistakes=[
            Mistake(
                "the whole model's bytes on every rank",
                "count each DTensor's local shard, p.to_local(), whose numel() is 1/N of p's",
                torch.tensor([full] * WS),
            )
        ],
    )


def test_checkpoint_saved_by_two_ranks_resumes_on_one():
    """save_sharded on 2 ranks after 2 AdamW steps; load_sharded on 1 rank (every shard read
    back into one) gives the same parameters and AdamW state, and the same next loss as the run
    that never stopped."""
    state = reference_model().state_dict()
    xs, ys = batches(STEPS)
    with tempfile.TemporaryDirectory(prefix="fsdp-ckpt-") as folder:
        saved = run_ranks(train_and_save, WS, state, xs, ys, folder)[0]
        resumed = {1: run_ranks(load_and_step, 1, state, xs, ys, folder)[0]}
    names = sorted(saved["model"])
    for n, got in resumed.items():
        check_close(
            torch.cat([got["model"][k].flatten() for k in names]),
            torch.cat([saved["model"][k].flatten() for k in names]),
            f"the parameters saved on {WS} ranks and loaded on {n}",
            SAVE,
        )
        keys = sorted(saved["optimizer"])
        check_equal(sorted(got["optimizer"]), keys, f"the AdamW states loaded on {n} ranks", SAVE)
        for moment in ("exp_avg", "exp_avg_sq", "step"):
            check_close(
                torch.cat([got["optimizer"][k][moment].flatten() for k in keys]),
                torch.cat([saved["optimizer"][k][moment].flatten() for k in keys]),
                f"AdamW's {moment} loaded on {n} ranks",
                SAVE,
            )
        check_close(
            torch.tensor(got["next_loss"]),
            torch.tensor(saved["next_loss"]),
            f"the loss of the next step after resuming on {n} ranks",
            SAVE,
        )
