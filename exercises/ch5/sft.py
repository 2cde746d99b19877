"""Supervised fine-tuning (SFT): a chat template, a loss mask, padding and batching.

A conversation is a list of messages ``{"role": ..., "content": ...}`` with roles ``system``,
``user`` and ``assistant``. The chat template writes each message as its role's special token,
the content, and the end-of-turn token::

    <|system|>You add numbers.<|end|><|user|>3+4<|end|><|assistant|>7<|end|>

The four special tokens are single ids, added to chapter 3's BPE tokenizer by
:func:`chat_tokenizer`; content text is encoded normally (a user can never type a special
token). The model learns only what the assistant says: every other token has the label -1,
which chapter 3's loss (and :func:`masked_cross_entropy`) ignores. The assistant's end-of-turn
token is labelled too: a model that never learns to produce it never stops talking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ch3.tokenizer import BPETokenizer

ROLES = ("system", "user", "assistant")
END = "<|end|>"
CHAT_TOKENS = tuple(f"<|{role}|>" for role in ROLES) + (END,)
IGNORE = -1  # the label of a token the loss skips (chapter 3's ignore index)

Message = Mapping[str, str]


def chat_tokenizer(tokenizer: BPETokenizer | None = None) -> BPETokenizer:
    """A copy of ``tokenizer`` (default: bytes only, no merges) with :data:`CHAT_TOKENS` added as
    special tokens after its last id (those it already has keep their ids)."""
    description = (tokenizer or BPETokenizer()).to_dict()
    specials = dict(description.get("special_tokens", {}))
    next_id = (tokenizer or BPETokenizer()).vocab_size
    for token in CHAT_TOKENS:
        if token not in specials:
            specials[token] = next_id
            next_id += 1
    return BPETokenizer.from_dict({**description, "special_tokens": specials})


def _check_message(message: Message) -> None:
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
        raise ValueError(
            f"a message must be {{'role': one of {ROLES}, 'content': str}}, got {message!r}"
        )
    if not isinstance(message.get("content"), str):
        raise ValueError(f"a message's content must be a string, got {message!r}")


def render_chat(messages: Sequence[Message]) -> str:
    """The conversation as text in the chat template: ``<|role|>content<|end|>`` per message.

    Raises:
        ValueError: for a role outside :data:`ROLES` or a content that is not a string.
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'sft' not started: implement render_chat in ch5/sft.py (read docs/chapter05/5_3_sft.md#the-chat-template-render_chat)"
    )


def build_example(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``, two lists of one length, for one conversation.

    ``tokenizer`` has ``encode(text) -> list[int]`` and ``special_tokens`` (``{text: id}``) that
    include :data:`CHAT_TOKENS`. Each message gives its role's token id, ``encode(content)``, and
    the :data:`END` id (content encoded on its own, so special-token text inside it stays text).
    ``labels[i]`` is ``input_ids[i]`` for the tokens of an assistant's content and its END token,
    and :data:`IGNORE` (-1) for everything else (the role tokens included). Labels are not
    shifted here: :func:`collate` shifts them, once.

    Raises:
        ValueError: for a bad message (as :func:`render_chat`) or a tokenizer that lacks a chat
            token.
    """
    missing = [t for t in CHAT_TOKENS if t not in getattr(tokenizer, "special_tokens", {})]
    if missing:
        raise ValueError(f"the tokenizer lacks the chat tokens {missing}: use chat_tokenizer()")
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'sft' not started: implement build_example in ch5/sft.py (read docs/chapter05/5_3_sft.md#labels-by-position-build_example-and-prompt_ids)"
    )


def prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """The ids that ask the model for the next assistant turn: the ``input_ids`` of
    :func:`build_example` for ``messages`` followed by the ``<|assistant|>`` id."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'sft' not started: implement prompt_ids in ch5/sft.py (read docs/chapter05/5_3_sft.md#labels-by-position-build_example-and-prompt_ids)"
    )


def collate(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch ``(x, y)`` of (B, T) int64 tensors from ``(input_ids, labels)`` pairs.

    For an example of n tokens, ``x`` holds ``input_ids[:-1]`` and ``y`` holds ``labels[1:]``:
    the label of position t is the token that follows it (the one shift, done here). Rows are
    padded on the right to the longest, ``x`` with ``pad_id`` and ``y`` with :data:`IGNORE`, so
    padding is never counted. With ``block_size``, each example keeps only its first
    ``block_size + 1`` tokens (T <= block_size).

    Raises:
        ValueError: if ``examples`` is empty, an example has fewer than 2 tokens, or its
            input_ids and labels differ in length.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    for ids, labels in examples:
        if len(ids) != len(labels) or len(ids) < 2:
            raise ValueError(
                f"an example needs input_ids and labels of one length >= 2, got {len(ids)} "
                f"and {len(labels)}"
            )
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'sft' not started: implement collate in ch5/sft.py (read docs/chapter05/5_3_sft.md#batches-collate)"
    )


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the positions whose target is not :data:`IGNORE`.

    ``logits`` (B, T, V), ``targets`` (B, T) int64. The sum of ``-log softmax(logits)[target]``
    over the labelled positions, divided by their number (not by B * T: masked positions are
    not zeros to average in). A scalar.

    Raises:
        ValueError: if no position is labelled (the mean of nothing).
    """
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'sft' not started: implement masked_cross_entropy in ch5/sft.py (read docs/chapter05/5_3_sft.md#the-loss-masked_cross_entropy-and-sft_loss)"
    )


def sft_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`masked_cross_entropy` of ``model(x)``'s logits against ``y`` (a batch from
    :func:`collate`); ``model(idx)`` returns ``(logits, loss)`` like chapter 3's GPT."""
    # TODO: write this part yourself.
    raise NotImplementedError(
        "ch5 stage 'sft' not started: implement sft_loss in ch5/sft.py (read docs/chapter05/5_3_sft.md#the-loss-masked_cross_entropy-and-sft_loss)"
    )
