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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.__init__ in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#the-model-transformer)"
        )

    def embed(self, ids: torch.Tensor, embedding: nn.Embedding) -> torch.Tensor:
        """``dropout(embedding(ids) * sqrt(d_model) + pos_encoding[:T])`` for ids of shape (B, T).

        Returns:
            float tensor of shape (B, T, d_model).

        Raises:
            ValueError: if T is longer than ``max_len`` (there is no position for it).
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.embed in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#encode-and-embed)"
        )

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """Run the encoder on ``src`` (B, S) ids; padding (``pad_id``) is masked out as keys.

        Returns:
            ``memory``, float tensor of shape (B, S, d_model).
        """
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.encode in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#encode-and-embed)"
        )

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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.decode in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#decode)"
        )

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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.forward in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#forward)"
        )

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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.greedy_decode in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#decoding-greedy_decode-and-beam_search)"
        )

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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer.beam_search in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#decoding-greedy_decode-and-beam_search)"
        )

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
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch2 stage 'transformer' not started: implement Transformer._beam_search_one in ch2/transformer.py (read docs/chapter02/2_4_transformer.md#the-model-transformer)"
        )
