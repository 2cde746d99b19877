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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch5 stage 'lora' not started: implement LoRALinear.__init__ in ch5/lora.py (read docs/chapter05/5_2_lora.md#the-adapter-loralinear)"
        )

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: ``scaling * B @ A``, (out, in)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch5 stage 'lora' not started: implement LoRALinear.delta_weight in ch5/lora.py (read docs/chapter05/5_2_lora.md#the-adapter-loralinear)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling * dropout(x) A^T B^T`` for x (..., in); (..., out). Once merged,
        the base layer alone (its weight already holds the update)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch5 stage 'lora' not started: implement LoRALinear.forward in ch5/lora.py (read docs/chapter05/5_2_lora.md#the-adapter-loralinear)"
        )

    @torch.no_grad()
    def merge(self) -> None:
        """Add :meth:`delta_weight` into the base weight in place (nothing if already merged);
        the output does not change, up to float rounding."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch5 stage 'lora' not started: implement LoRALinear.merge in ch5/lora.py (read docs/chapter05/5_2_lora.md#merging-merge-and-unmerge)"
        )

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take :meth:`delta_weight` out of the base weight again (nothing if not merged)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch5 stage 'lora' not started: implement LoRALinear.unmerge in ch5/lora.py (read docs/chapter05/5_2_lora.md#merging-merge-and-unmerge)"
        )


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
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'lora' not started: implement apply_lora in ch5/lora.py (read docs/chapter05/5_2_lora.md#adapting-a-model-apply_lora)"
    )


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze every parameter of ``model`` except the adapters' ``lora_A`` and ``lora_B``;
    returns how many numbers stay trainable (sum of their numel)."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'lora' not started: implement mark_only_lora_trainable in ch5/lora.py (read docs/chapter05/5_2_lora.md#freezing-mark_only_lora_trainable)"
    )


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only: ``{name: tensor}`` of every ``lora_A`` and ``lora_B`` of ``model``
    (names as in ``model.state_dict()``), detached copies."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'lora' not started: implement lora_state_dict in ch5/lora.py (read docs/chapter05/5_2_lora.md#saving-adapters-alone-lora_state_dict-and-load_lora_state_dict)"
    )


def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy the adapters of ``state`` (from :func:`lora_state_dict`) into ``model``, which
    already has the same adapters (:func:`apply_lora` with the same targets and rank).

    Raises:
        ValueError: naming the first key of ``state`` that is not an adapter of ``model``, or the
            first adapter of ``model`` that ``state`` lacks, or a shape that differs.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'lora' not started: implement load_lora_state_dict in ch5/lora.py (read docs/chapter05/5_2_lora.md#saving-adapters-alone-lora_state_dict-and-load_lora_state_dict)"
    )


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
