"""LoRA: low-rank adapters that fine-tune a frozen model (Hu et al. 2021, arXiv:2106.09685).

A frozen ``nn.Linear`` with weight W (out, in) is given a trainable update of rank ``r``::

    y = x W^T + b + (alpha / r) * x A^T B^T        A: (r, in), B: (out, r)

A starts random (like a Linear's weight: Kaiming-uniform, bound 1/sqrt(in)) and B starts at zero,
so a fresh adapter changes nothing and training starts from the base model exactly. Only A and B
train: r (in + out) numbers per layer instead of in * out. After training the update can be
merged into W (``W + (alpha / r) B A``), so the fine-tuned model costs nothing extra to run, and
only the adapters need to be saved (:func:`lora_state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

LORA_TARGETS = ("c_attn", "q_proj", "v_proj")  # GPT-2's fused q,k,v; Llama's q and v


class LoRALinear(nn.Module):
    """A frozen ``base`` Linear plus a trainable rank-``r`` update scaled by ``alpha / r``.

    Attributes: ``base`` (the original layer, its weight and bias frozen: requires_grad False),
    ``lora_A`` (r, in_features) Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in_features), as
    ``nn.Linear`` initialises its weight), ``lora_B`` (out_features, r) zeros, both parameters of
    this module with the base weight's dtype and device; ``scaling`` = alpha / r; ``merged``
    (False until :meth:`merge`); ``dropout`` applied to the adapter's input only.

    Raises:
        TypeError: if ``base`` is not an ``nn.Linear``.
        ValueError: if ``r`` < 1.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"the LoRA rank r must be an int >= 1, got {r!r}")
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        # BEGIN SOLUTION
        weight = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # bound 1/sqrt(in_features)
        for p in base.parameters():
            p.requires_grad_(False)
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: ``scaling * B @ A``, (out, in)."""
        # BEGIN SOLUTION
        return self.scaling * (self.lora_B @ self.lora_A)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling * dropout(x) A^T B^T`` for x (..., in); (..., out). Once merged,
        the base layer alone (its weight already holds the update)."""
        # BEGIN SOLUTION
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)
        # END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        """Add :meth:`delta_weight` into the base weight in place (nothing if already merged);
        the output does not change, up to float rounding."""
        # BEGIN SOLUTION
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True
        # END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take :meth:`delta_weight` out of the base weight again (nothing if not merged)."""
        # BEGIN SOLUTION
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False
        # END SOLUTION


def apply_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    targets: Iterable[str] = LORA_TARGETS,
    dropout: float = 0.0,
) -> int:
    """Replace, in place, every ``nn.Linear`` of ``model`` whose own name (the last part of its
    dotted name: ``q_proj`` in ``layers.0.attn.q_proj``) is in ``targets`` by a
    :class:`LoRALinear` wrapping it; returns how many were replaced. Layers already inside a
    LoRALinear are left alone, so applying twice adds nothing.

    Raises:
        ValueError: if no layer matches (a typo in ``targets`` would otherwise train nothing).
    """
    targets = tuple(targets)
    # BEGIN SOLUTION
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in targets
    ]
    count = 0
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(parent, LoRALinear):
            continue
        setattr(parent, child, LoRALinear(module, r, alpha, dropout))
        count += 1
    if count == 0 and not any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"no nn.Linear of the model is named one of {targets}")
    return count
    # END SOLUTION


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze every parameter of ``model`` except the adapters' ``lora_A`` and ``lora_B``;
    returns how many numbers stay trainable (sum of their numel)."""
    # BEGIN SOLUTION
    trainable = 0
    for name, p in model.named_parameters():
        is_lora = name.rpartition(".")[2] in ("lora_A", "lora_B")
        p.requires_grad_(is_lora)
        trainable += p.numel() if is_lora else 0
    return trainable
    # END SOLUTION


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only: ``{name: tensor}`` of every ``lora_A`` and ``lora_B`` of ``model``
    (names as in ``model.state_dict()``), detached copies."""
    # BEGIN SOLUTION
    return {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if name.rpartition(".")[2] in ("lora_A", "lora_B")
    }
    # END SOLUTION


def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy the adapters of ``state`` (from :func:`lora_state_dict`) into ``model``, which
    already has the same adapters (:func:`apply_lora` with the same targets and rank).

    Raises:
        ValueError: naming the first key of ``state`` that is not an adapter of ``model``, or the
            first adapter of ``model`` that ``state`` lacks, or a shape that differs.
    """
    # BEGIN SOLUTION
    own = lora_state_dict(model)
    for name in state:
        if name not in own:
            raise ValueError(f"{name} is not a LoRA adapter of this model")
    for name, tensor in own.items():
        if name not in state:
            raise ValueError(f"the adapters lack {name}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{name} has shape {tuple(state[name].shape)}, the model's {tuple(tensor.shape)}"
            )
    model.load_state_dict(dict(state), strict=False)
    # END SOLUTION


def merge_lora(model: nn.Module) -> int:
    """Merge every :class:`LoRALinear` of ``model`` and put its base Linear back in its place,
    so the model has its original parameter names again (a checkpoint of the base architecture
    can hold it); returns how many were merged."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.base)
            for p in module.base.parameters():
                p.requires_grad_(True)
            count += 1
    return count
