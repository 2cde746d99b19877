"""The encoder-decoder Transformer of "Attention Is All You Need", with greedy decoding and beam
search.

Token ids are ``torch.long``; ``pad_id`` pads both the source and the target. Masks follow
``ch2/attention.py`` (``torch.bool``, ``True`` = may attend). The decoding methods call
``self.encode`` once and ``self.decode`` once per generated position, recomputing the whole prefix
each time (simple and exact; a key/value cache would make it faster).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import causal_mask, padding_mask
from .block import DecoderBlock, EncoderBlock, sinusoidal_positional_encoding


class Transformer(nn.Module):
    """Encoder-decoder Transformer (post-LN, as in the paper).

    Submodules: ``src_embed`` (``nn.Embedding(src_vocab_size, d_model)``), ``tgt_embed``
    (``nn.Embedding(tgt_vocab_size, d_model)``), ``encoder_layers`` (``nn.ModuleList`` of
    ``n_layers`` :class:`EncoderBlock`), ``decoder_layers`` (``nn.ModuleList`` of ``n_layers``
    :class:`DecoderBlock`), ``lm_head`` (``nn.Linear(d_model, tgt_vocab_size)``); buffer
    ``pos_encoding`` (``sinusoidal_positional_encoding(max_len, d_model)``, not saved in the
    state dict). Input to either stack: ``dropout(embed(ids) * sqrt(d_model) + pos_encoding[:T])``.

    Initialisation: the weights of ``src_embed`` and ``tgt_embed`` are drawn from
    N(0, 1 / d_model), so that after the sqrt(d_model) scaling they have unit variance, like the
    positional encoding (``nn.Embedding``'s default N(0, 1) would give variance d_model and drown
    the positions). Every other layer keeps PyTorch's default initialisation.

    Raises:
        ValueError: if ``d_model`` is not divisible by ``n_heads``.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int,
        max_len: int,
        dropout: float = 0.0,
        pad_id: int = 0,
    ):
        super().__init__()
        # BEGIN SOLUTION
        self.d_model = d_model
        self.max_len = max_len
        self.pad_id = pad_id
        self.src_embed = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)
        self.register_buffer(
            "pos_encoding", sinusoidal_positional_encoding(max_len, d_model), persistent=False
        )
        self.dropout = nn.Dropout(dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.lm_head = nn.Linear(d_model, tgt_vocab_size)
        # Embeddings of std d_model^-0.5 have unit variance once scaled by sqrt(d_model), the
        # scale of the positional encoding (nn.Embedding's default std 1 would drown it).
        nn.init.normal_(self.src_embed.weight, std=d_model**-0.5)
        nn.init.normal_(self.tgt_embed.weight, std=d_model**-0.5)
        # END SOLUTION

    def embed(self, ids: torch.Tensor, embedding: nn.Embedding) -> torch.Tensor:
        """``dropout(embedding(ids) * sqrt(d_model) + pos_encoding[:T])`` for ids of shape (B, T).

        Returns:
            float tensor of shape (B, T, d_model).

        Raises:
            ValueError: if T is longer than ``max_len`` (there is no position for it).
        """
        # BEGIN SOLUTION
        T = ids.size(1)
        if T > self.max_len:
            raise ValueError(
                f"sequence of length {T} is longer than max_len={self.max_len}: the positional "
                "encoding has no row for it (build the model with a larger max_len)"
            )
        x = embedding(ids) * math.sqrt(self.d_model) + self.pos_encoding[:T]  # (B, T, d_model)
        return self.dropout(x)
        # END SOLUTION

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """Run the encoder on ``src`` (B, S) ids; padding (``pad_id``) is masked out as keys.

        Returns:
            ``memory``, float tensor of shape (B, S, d_model).
        """
        # BEGIN SOLUTION
        src_mask = padding_mask(src, self.pad_id)  # (B, 1, 1, S)
        x = self.embed(src, self.src_embed)  # (B, S, d_model)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return x
        # END SOLUTION

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder on ``tgt`` (B, T) ids against ``memory`` (B, S, d_model).

        Self-attention is masked with ``causal_mask(T) & padding_mask(tgt, pad_id)``, so the
        logits at position t depend only on ``tgt[:, :t + 1]``. ``memory_mask`` (usually
        ``padding_mask(src, pad_id)``, shape (B, 1, 1, S)) masks cross-attention.

        Returns:
            logits over the target vocabulary for the next token, shape (B, T, tgt_vocab_size).
        """
        # BEGIN SOLUTION
        T = tgt.size(1)
        tgt_mask = causal_mask(T, tgt.device) & padding_mask(tgt, self.pad_id)  # (B, 1, T, T)
        x = self.embed(tgt, self.tgt_embed)  # (B, T, d_model)
        for layer in self.decoder_layers:
            x = layer(x, memory, tgt_mask, memory_mask)
        return self.lm_head(x)  # (B, T, tgt_vocab_size)
        # END SOLUTION

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits for every target position at once.

        Args:
            src: source ids (B, S), padded with ``pad_id``.
            tgt: target ids (B, T), usually ``[BOS, y_1, ..., y_n]`` padded with ``pad_id``.

        Returns:
            logits of shape (B, T, tgt_vocab_size); position t predicts ``tgt[:, t + 1]``.

        Raises:
            ValueError: if S or T is longer than ``max_len``.
        """
        # BEGIN SOLUTION
        return self.decode(tgt, self.encode(src), padding_mask(src, self.pad_id))
        # END SOLUTION

    @torch.no_grad()
    def greedy_decode(
        self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int
    ) -> torch.Tensor:
        """Translate a batch by always taking the most likely next token.

        Call ``model.eval()`` first. Every sequence starts with ``bos_id``; once a sequence has
        produced ``eos_id`` its later positions are ``pad_id``. Decoding stops when every
        sequence has produced EOS or the output is ``max_len`` tokens long.

        Args:
            src: source ids (B, S), padded with ``pad_id``.
            max_len: the longest output, BOS included.

        Returns:
            ``torch.long`` tensor of shape (B, L), L <= max_len: BOS, the tokens, EOS (if
            reached), then padding.

        Raises:
            ValueError: if ``max_len`` is larger than the model's ``max_len``.
        """
        # BEGIN SOLUTION
        if max_len > self.max_len:
            raise ValueError(f"max_len={max_len} is larger than the model's max_len={self.max_len}")
        memory = self.encode(src)  # (B, S, d_model)
        memory_mask = padding_mask(src, self.pad_id)  # (B, 1, 1, S)
        ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,) saw EOS
        while ys.size(1) < max_len and not done.all():
            logits = self.decode(ys, memory, memory_mask)[:, -1]  # (B, V): the last position
            next_id = logits.argmax(dim=-1).masked_fill(done, self.pad_id)  # (B,)
            ys = torch.cat([ys, next_id[:, None]], dim=1)
            done |= next_id == eos_id
        return ys
        # END SOLUTION

    @torch.no_grad()
    def beam_search(
        self,
        src: torch.Tensor,
        bos_id: int,
        eos_id: int,
        beam_size: int,
        max_len: int,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Translate a batch, keeping the ``beam_size`` most likely partial outputs at each step.

        Each source sentence is searched on its own (its beams form the batch). At every step
        the live hypotheses are extended by every token and the ``beam_size - n_finished`` best
        extensions, by total log-probability, are kept; an extension that ends in ``eos_id`` is
        finished and leaves the beam. The search stops when ``beam_size`` hypotheses are finished
        or they are ``max_len`` tokens long (unfinished ones then count as finished). The answer
        is the finished hypothesis with the highest ``sum of log-probs / n ** length_penalty``,
        where n is its number of tokens after BOS (0 = no normalisation). With ``beam_size=1``
        this is exactly :meth:`greedy_decode`. Call ``model.eval()`` first.

        Returns:
            ``torch.long`` tensor of shape (B, L), L <= max_len, laid out as in
            :meth:`greedy_decode`: BOS, the tokens, EOS (if reached), then ``pad_id``.

        Raises:
            ValueError: if ``beam_size < 1`` or ``max_len`` is larger than the model's.
        """
        # BEGIN SOLUTION
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if max_len > self.max_len:
            raise ValueError(f"max_len={max_len} is larger than the model's max_len={self.max_len}")
        memory = self.encode(src)  # (B, S, d_model)
        memory_mask = padding_mask(src, self.pad_id)  # (B, 1, 1, S)
        best = [
            self._beam_search_one(
                memory[b : b + 1],
                memory_mask[b : b + 1],
                bos_id,
                eos_id,
                beam_size,
                max_len,
                length_penalty,
            )
            for b in range(src.size(0))
        ]
        out = torch.full((len(best), max(len(ys) for ys in best)), self.pad_id, dtype=torch.long)
        for b, ys in enumerate(best):
            out[b, : len(ys)] = ys
        return out.to(src.device)
        # END SOLUTION

    def _beam_search_one(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        bos_id: int,
        eos_id: int,
        beam_size: int,
        max_len: int,
        length_penalty: float,
    ) -> torch.Tensor:
        """Beam search for one sentence: ``memory`` (1, S, d_model) -> the best ids (L,)."""
        # BEGIN SOLUTION
        beams = torch.full((1, 1), bos_id, dtype=torch.long, device=memory.device)  # (k, t)
        scores = torch.zeros(1, device=memory.device)  # (k,) total log-prob of each beam
        finished: list[tuple[torch.Tensor, float]] = []
        while beams.size(0) > 0 and beams.size(1) < max_len:
            k = beams.size(0)
            logits = self.decode(beams, memory.expand(k, -1, -1), memory_mask)[:, -1]  # (k, V)
            candidates = scores[:, None] + logits.log_softmax(dim=-1)  # (k, V)
            n_keep = min(beam_size - len(finished), candidates.numel())
            top_scores, top = candidates.flatten().topk(n_keep)  # best over every (beam, token)
            beam_idx, token = top // candidates.size(1), top % candidates.size(1)
            extended = torch.cat([beams[beam_idx], token[:, None]], dim=1)  # (n_keep, t + 1)
            is_eos = token == eos_id
            finished += zip(extended[is_eos], top_scores[is_eos].tolist(), strict=True)
            beams, scores = extended[~is_eos], top_scores[~is_eos]
        finished += zip(beams, scores.tolist(), strict=True)  # out of length: unfinished count too
        best, _ = max(finished, key=lambda h: h[1] / max(len(h[0]) - 1, 1) ** length_penalty)
        return best
        # END SOLUTION
