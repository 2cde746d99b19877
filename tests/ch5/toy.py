"""A tiny language model for the chapter 5 stage tests: any model with chapter 3's
``forward(idx, targets) -> (logits, loss)`` works with chapter 5, and this one keeps the stage
tests independent of the learner's chapter 3 (the e2e stage trains chapter 3's GPT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ToyConfig:
    vocab_size: int = 11
    block_size: int = 16
    n_embd: int = 8


class ToyAttention(nn.Module):
    """Causal attention with Llama's projection names (q_proj, k_proj, v_proj, o_proj)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.k_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.v_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.o_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, C)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y)


class ToyLM(nn.Module):
    """Embedding, one causal attention layer with a residual, a feed-forward Linear pair
    (``mlp.c_fc``, ``mlp.c_proj``, GPT-2's names), and an LM head with a bias."""

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyConfig()
        c = self.config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.attn = ToyAttention(c.n_embd)
        self.mlp = nn.ModuleDict(
            {"c_fc": nn.Linear(c.n_embd, 2 * c.n_embd), "c_proj": nn.Linear(2 * c.n_embd, c.n_embd)}
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        x = x + self.attn(x)
        x = x + self.mlp["c_proj"](torch.tanh(self.mlp["c_fc"](x)))
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss
