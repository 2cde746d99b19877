"""Stage 'lora': LoRALinear against its closed form (alpha != r, so a forgotten scale shows),
merge and unmerge, apply_lora on a model with GPT-2's and Llama's layer names, the trainable
count against r (in + out), gradients that reach only A and B, and the adapters saved alone."""

from __future__ import annotations

import math

import torch
from torch import nn

from grader.tree import load
from tests.ch5.toy import ToyLM
from tests.helpers import (
    Mistake,
    check_at_least,
    check_close,
    check_equal,
    check_raises,
    check_same,
    check_shape,
    fill_parameters,
)

lora = load("ch5.lora")

INIT = "ch5/lora.py, LoRALinear.__init__"
FORWARD = "ch5/lora.py, LoRALinear.forward"
MERGE = "ch5/lora.py, LoRALinear.merge"
UNMERGE = "ch5/lora.py, LoRALinear.unmerge"
APPLY = "ch5/lora.py, apply_lora"
MARK = "ch5/lora.py, mark_only_lora_trainable"
STATE = "ch5/lora.py, lora_state_dict"
LOAD = "ch5/lora.py, load_lora_state_dict"
R, ALPHA = 4, 16.0  # alpha != r: a forgotten alpha / r scale changes the numbers


def filled_layer(n_in: int = 6, n_out: int = 5) -> nn.Module:
    """A LoRALinear with every weight fixed by name (lora_B not zero, so the update shows)."""
    layer = lora.LoRALinear(nn.Linear(n_in, n_out), r=R, alpha=ALPHA)
    return fill_parameters(layer)


def test_fresh_adapter_changes_nothing():
    """A new adapter has B = 0, so the wrapped layer gives the base layer's output exactly."""
    base = fill_parameters(nn.Linear(6, 5))
    x = torch.randn(3, 7, 6)
    expected = base(x).detach()
    layer = lora.LoRALinear(base, r=R, alpha=ALPHA)
    check_same(
        layer(x).detach(),
        expected,
        f"a fresh LoRALinear should give exactly the base layer's output (lora_B starts at "
        f"zero, so the update B A is zero). Look at {INIT} and {FORWARD}.",
    )


def test_initialisation_and_frozen_base():
    """lora_A (r, in) Kaiming-uniform with bound 1/sqrt(in), lora_B (out, r) zeros, the base
    frozen, and A and B the module's only trainable parameters."""
    layer = lora.LoRALinear(nn.Linear(64, 5), r=R, alpha=ALPHA)
    check_shape(layer.lora_A, (R, 64), "lora_A", INIT)
    check_shape(layer.lora_B, (5, R), "lora_B", INIT)
    check_same(
        layer.lora_B.detach(), torch.zeros(5, R), f"lora_B should start at zero. Look at {INIT}."
    )
    bound = 1 / math.sqrt(64)
    largest = float(layer.lora_A.detach().abs().max())
    check_at_least(
        bound * 1.0001,
        largest,
        f"lora_A should be Kaiming-uniform with bound 1/sqrt(in_features) = {bound:.4f} "
        f"(nn.init.kaiming_uniform_(A, a=math.sqrt(5))), got an entry of {largest:.4f}. "
        f"Look at {INIT}.",
    )
    spread = float(layer.lora_A.detach().std())
    check_at_least(
        spread,
        0.4 * bound,
        f"lora_A should be random (std about {bound / math.sqrt(3):.3f}), got std {spread:.4f}: "
        f"with A = 0 as well as B = 0 no gradient ever reaches the adapter. Look at {INIT}.",
    )
    trainable = sorted(n for n, p in layer.named_parameters() if p.requires_grad)
    check_equal(trainable, ["lora_A", "lora_B"], "the trainable parameters of a LoRALinear", INIT)
    check_equal(layer.scaling, ALPHA / R, "LoRALinear.scaling (alpha / r)", INIT)


def test_forward_matches_the_closed_form():
    """y = x W^T + b + (alpha / r) x A^T B^T."""
    layer = filled_layer()
    W, b = layer.base.weight.detach(), layer.base.bias.detach()
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    x = torch.randn(2, 3, 6)
    base = x @ W.T + b
    expected = base + (ALPHA / R) * (x @ A.T @ B.T)
    check_close(
        layer(x).detach(),
        expected,
        "the LoRALinear output",
        FORWARD,
        mistakes=[
            Mistake(
                "the update without its alpha / r scale",
                "multiply x A^T B^T by self.scaling",
                base + x @ A.T @ B.T,
            ),
            Mistake(
                "the update scaled by r / alpha",
                "scale by alpha / r",
                base + (R / ALPHA) * (x @ A.T @ B.T),
            ),
            Mistake("the base output alone", "add scaling * x A^T B^T to base(x)", base),
        ],
    )


def test_merge_and_unmerge_are_exact():
    """merge() puts W + (alpha / r) B A in the base weight and changes no output; unmerge() gives
    W back; merging twice merges once."""
    layer = filled_layer()
    W = layer.base.weight.detach().clone()
    BA = (layer.lora_B @ layer.lora_A).detach()
    x = torch.randn(4, 6)
    before = layer(x).detach()
    layer.merge()
    check_close(
        layer.base.weight.detach(),
        W + (ALPHA / R) * BA,
        "the merged base weight",
        MERGE,
        mistakes=[
            Mistake("W + B A, without the alpha / r scale", "add self.scaling * (B @ A)", W + BA)
        ],
    )
    check_close(
        layer(x).detach(),
        before,
        "the output after merge()",
        f"{MERGE} and {FORWARD} (a merged layer must not add the update again)",
        atol=1e-5,
    )
    layer.merge()
    check_close(
        layer.base.weight.detach(),
        W + (ALPHA / R) * BA,
        "the base weight after merging twice",
        MERGE,
    )
    layer.unmerge()
    check_close(
        layer.base.weight.detach(),
        W,
        "the base weight after unmerge()",
        UNMERGE,
        atol=1e-6,
        mistakes=[
            Mistake(
                "W + 2 (alpha / r) B A (the update added again)",
                "subtract the update",
                W + 2 * (ALPHA / R) * BA,
            )
        ],
    )
    check_close(layer(x).detach(), before, "the output after unmerge()", UNMERGE, atol=1e-5)


def test_apply_lora_replaces_the_named_layers_in_place():
    """apply_lora wraps exactly the Linears whose own name is a target, returns their number,
    leaves the output unchanged, and wraps nothing twice."""
    model = fill_parameters(ToyLM())
    idx = torch.randint(0, 11, (2, 9))
    before = model(idx)[0].detach()
    count = lora.apply_lora(model, r=2, alpha=4.0, targets=("q_proj", "v_proj", "c_fc"))
    check_equal(count, 3, "apply_lora's count for targets q_proj, v_proj, c_fc", APPLY)
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, lora.LoRALinear))
    check_equal(
        wrapped, ["attn.q_proj", "attn.v_proj", "mlp.c_fc"], "the layers apply_lora wrapped", APPLY
    )
    check_same(
        model(idx)[0].detach(),
        before,
        f"a model with fresh adapters should give the same logits. Look at {APPLY}.",
    )
    again = lora.apply_lora(model, r=2, alpha=4.0, targets=("q_proj", "v_proj", "c_fc"))
    check_equal(again, 0, "apply_lora's count on layers that already have adapters", APPLY)
    with check_raises(ValueError, "apply_lora with targets no layer has", APPLY):
        lora.apply_lora(ToyLM(), r=2, alpha=4.0, targets=("no_such_layer",))


def test_trainable_count_is_r_times_in_plus_out():
    """mark_only_lora_trainable leaves r (in + out) numbers per adapted layer trainable."""
    model = ToyLM()
    lora.apply_lora(model, r=R, alpha=ALPHA, targets=("q_proj", "v_proj", "c_fc"))
    n = lora.mark_only_lora_trainable(model)
    expected = R * (8 + 8) + R * (8 + 8) + R * (8 + 16)
    check_equal(
        n,
        expected,
        "mark_only_lora_trainable's count of trainable numbers (r (in + out) per layer)",
        MARK,
    )
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_equal(
        counted,
        expected,
        "the numbers with requires_grad=True after mark_only_lora_trainable",
        MARK,
    )


def test_gradients_reach_only_a_and_b():
    """After mark_only_lora_trainable, backward gives gradients to lora_A and lora_B only."""
    model = ToyLM()
    lora.apply_lora(model, r=R, alpha=ALPHA, targets=("q_proj", "v_proj"))
    fill_parameters(model)  # lora_B not zero, so lora_A gets a gradient too
    lora.mark_only_lora_trainable(model)
    idx = torch.randint(0, 11, (2, 9))
    _, loss = model(idx, torch.randint(0, 11, (2, 9)))
    loss.backward()
    with_grad = sorted(
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    )
    expected = sorted(n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B")))
    check_equal(
        with_grad,
        expected,
        "the parameters that received a gradient",
        f"{MARK} and {INIT} (freeze the base)",
    )


def test_adapters_save_and_load_alone():
    """lora_state_dict holds only the adapters; loading it into a fresh copy gives the same
    logits; a key that is not an adapter is refused."""
    model = ToyLM()
    lora.apply_lora(model, r=R, alpha=ALPHA, targets=("q_proj", "v_proj"))
    fill_parameters(model)
    idx = torch.randint(0, 11, (2, 9))  # before any learner code draws from the generator
    state = lora.lora_state_dict(model)
    check_equal(
        sorted(state),
        sorted(n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))),
        "the keys of lora_state_dict",
        STATE,
    )
    other = ToyLM()
    lora.apply_lora(other, r=R, alpha=ALPHA, targets=("q_proj", "v_proj"))
    other.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k not in state}, strict=False
    )
    lora.load_lora_state_dict(other, state)
    check_close(
        other(idx)[0].detach(),
        model(idx)[0].detach(),
        "the logits after loading the adapters",
        LOAD,
    )
    with check_raises(ValueError, "load_lora_state_dict with a key that is not an adapter", LOAD):
        lora.load_lora_state_dict(other, {**state, "wte.weight": torch.zeros(11, 8)})


def test_merge_lora_gives_the_base_architecture_back():
    """merge_lora merges every adapter and puts the plain Linears back: the original parameter
    names and the adapted model's logits."""
    model = ToyLM()
    names = sorted(model.state_dict())
    lora.apply_lora(model, r=R, alpha=ALPHA, targets=("q_proj", "v_proj"))
    fill_parameters(model)
    idx = torch.randint(0, 11, (2, 9))
    adapted = model(idx)[0].detach()
    check_equal(lora.merge_lora(model), 2, "merge_lora's count", "ch5/lora.py, merge_lora")
    check_equal(
        sorted(model.state_dict()),
        names,
        "the parameter names after merge_lora",
        "ch5/lora.py, merge_lora",
    )
    check_close(model(idx)[0].detach(), adapted, "the logits of the merged model", MERGE, atol=1e-5)
