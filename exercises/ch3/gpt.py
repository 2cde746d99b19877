"""GPT-2: a decoder-only Transformer that predicts the next token.

The architecture and the parameter names are GPT-2's (as in nanoGPT and Hugging Face), so
OpenAI's weights load into it with :meth:`GPT.from_hf_state_dict`::

    transformer.wte          token embedding (vocab_size, n_embd), shared with lm_head
    transformer.wpe          learned position embedding (block_size, n_embd)
    transformer.h[i]         n_layer pre-LN blocks: x + attn(ln_1(x)), then x + mlp(ln_2(x))
        .ln_1, .attn.c_attn (q, k, v in one Linear), .attn.c_proj,
        .ln_2, .mlp.c_fc (n_embd -> 4 n_embd), .mlp.c_proj (4 n_embd -> n_embd)
    transformer.ln_f         final LayerNorm
    lm_head                  Linear(n_embd, vocab_size, bias=False), weight tied to wte

Parameter counts (tied weights counted once, position embeddings included): GPT-2 small
(vocab 50257, block 1024, 12 layers, 12 heads, 768 wide) has 124,439,808; the "small" example
configuration (vocab 1000, block 64, 4 layers, 4 heads, 128 wide) has 929,536.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """The shape of a GPT. The defaults are GPT-2 small's.

    Raises:
        ValueError: if a size is not positive, ``n_embd`` is not a multiple of ``n_head``, or
            ``dropout`` is outside [0, 1).
    """

    vocab_size: int = 50257
    block_size: int = 1024  # the longest sequence the model can read
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear layers and LayerNorms, as in GPT-2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}: each head "
                "gets n_embd // n_head dimensions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with an optional bias (``nn.LayerNorm`` always has one).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the biased variance.
    """

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., ndim) -> same shape."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement LayerNorm.forward in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#using-it-forward-and-from_hf_state_dict)"
        )


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t only sees positions 0..t.

    ``c_attn`` projects x to queries, keys and values at once (n_embd -> 3 n_embd, in that
    order); each head gets ``n_embd // n_head`` dimensions; ``c_proj`` mixes the heads back.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} must be divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement CausalSelfAttention.__init__ in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#the-parts-layernorm-causalselfattention-mlp-and-block)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, n_embd) -> (B, T, n_embd)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement CausalSelfAttention.forward in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#using-it-forward-and-from_hf_state_dict)"
        )


class MLP(nn.Module):
    """Position-wise feed-forward: n_embd -> 4 n_embd -> GELU -> n_embd.

    GELU is GPT-2's tanh approximation (``nn.GELU(approximate="tanh")``, Hugging Face's
    ``gelu_new``): published GPT-2 weights give GPT-2's logits only with this exact curve.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement MLP.__init__ in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#the-parts-layernorm-causalselfattention-mlp-and-block)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, n_embd) -> (B, T, n_embd)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement MLP.forward in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#using-it-forward-and-from_hf_state_dict)"
        )


class Block(nn.Module):
    """A pre-LN Transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement Block.__init__ in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#the-parts-layernorm-causalselfattention-mlp-and-block)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, n_embd) -> (B, T, n_embd)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement Block.forward in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#using-it-forward-and-from_hf_state_dict)"
        )


class GPT(nn.Module):
    """GPT-2: ``GPT(config)`` or ``GPT(vocab_size=..., n_embd=..., n_layer=..., ...)``.

    ``model.config`` is the :class:`GPTConfig`. Initialisation follows GPT-2: every Linear and
    Embedding weight ~ N(0, 0.02), biases 0, LayerNorms 1 and 0, and the two projections that
    write into the residual stream (``attn.c_proj``, ``mlp.c_proj``) ~ N(0, 0.02 / sqrt(2 n_layer))
    so the residual stream's variance does not grow with depth.
    """

    def __init__(self, config: GPTConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = GPTConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a GPTConfig or keyword arguments, not both")
        self.config = config
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement GPT.__init__ in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#the-gpt-2-architecture-gpt)"
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation for one module (the residual projections are rescaled after)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement GPT._init_weights in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#the-initialisation-_init_weights)"
        )

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters, the tied wte/lm_head matrix counted once.

        With ``non_embedding=True`` the position embedding is left out (the token embedding
        stays: it is also the output layer).
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement GPT.num_parameters in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#counting-the-parameters-num_parameters)"
        )

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits for every position, and the loss when ``targets`` are given.

        Args:
            idx: (B, T) token ids (int64), ``T <= block_size``.
            targets: (B, T) the next token at each position, or None. Positions whose target is
                -1 are ignored by the loss (padding).

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size); loss the mean cross-entropy over the
            positions that have a target, or None without ``targets``.

        Raises:
            ValueError: if ``idx`` is not 2-D or ``T > block_size`` (there is no learned position
                embedding beyond it).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"sequence of length {T} is longer than block_size={self.config.block_size}: "
                "crop the context to the last block_size tokens"
            )
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch3 stage 'gpt' not started: implement GPT.forward in ch3/gpt.py (read docs/chapter03/3_4_gpt.md#using-it-forward-and-from_hf_state_dict)"
        )

    @classmethod
    def from_hf_state_dict(
        cls, state_dict: Mapping[str, torch.Tensor], n_head: int | None = None
    ) -> GPT:
        """A GPT holding the weights of a Hugging Face GPT-2 state dict.

        Accepts the keys of ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``,
        ``lm_head.weight``) or of ``GPT2Model`` / ``model.safetensors`` (no ``transformer.``
        prefix). Hugging Face stores ``c_attn``, ``c_proj`` and ``c_fc`` as Conv1D, whose weight
        is (in, out): they are transposed into ``nn.Linear``'s (out, in). The ``attn.bias`` and
        ``attn.masked_bias`` buffers (causal masks) are ignored, and ``lm_head.weight`` is the tied
        token embedding.

        The config is read from the shapes: vocab_size and n_embd from ``wte``, block_size from
        ``wpe``, n_layer from the block indices. Shapes do not tell the number of heads: it is
        ``n_head`` if given, else ``n_embd // 64`` (every GPT-2 size uses 64-wide heads).

        Raises:
            ValueError: if a weight is missing, unexpected or of the wrong shape.
        """
        sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
        sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        for key in ("wte.weight", "wpe.weight"):
            if key not in sd:
                raise ValueError(f"not a GPT-2 state dict: no {key!r} (keys: {sorted(sd)[:5]}...)")
        vocab_size, n_embd = sd["wte.weight"].shape
        block_size = sd["wpe.weight"].shape[0]
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"h\.(\d+)\.", k))}
        config = GPTConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=max(layers) + 1 if layers else 0,
            n_head=n_head if n_head is not None else max(n_embd // 64, 1),
            n_embd=n_embd,
            bias="ln_f.bias" in sd,
        )
        with torch.device("meta"):
            model = cls(config)
        lm_head = sd.pop("lm_head.weight", None)
        if lm_head is not None and lm_head.shape != sd["wte.weight"].shape:
            raise ValueError("lm_head.weight must have the shape of wte.weight (they are tied)")
        conv1d = (
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        )
        ours = model.state_dict()
        missing = [
            k for k in ours if k.removeprefix("transformer.") not in sd and k != "lm_head.weight"
        ]
        unexpected = sorted(set(sd) - {k.removeprefix("transformer.") for k in ours})
        if missing or unexpected:
            raise ValueError(
                f"state dict does not match GPT-2: missing {missing}, unexpected {unexpected}"
            )
        weights = {}
        for key, target in ours.items():
            if key == "lm_head.weight":
                continue
            value = sd[key.removeprefix("transformer.")]
            if key.endswith(conv1d):
                value = value.t()
            if value.shape != target.shape:
                raise ValueError(
                    f"{key}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}"
                )
            # A contiguous copy: the model must not share memory with the caller's tensors.
            weights[key] = value.detach().clone(memory_format=torch.contiguous_format)
        model.load_state_dict(weights, strict=False, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # assign=True broke the tie
        return model
