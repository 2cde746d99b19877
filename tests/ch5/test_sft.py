"""Stage 'sft': the chat template, the loss mask by position (the assistant's tokens and its
end-of-turn token only), one shift in collate with padding never counted, and a loss that
averages over the labelled tokens only, against F.cross_entropy(ignore_index=-1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grader.tree import load
from tests.ch5.toy import ToyLM
from tests.helpers import (
    Mistake,
    check_close,
    check_equal,
    check_raises,
    check_same,
    fail_if_mistake,
    fill_parameters,
)

sft = load("ch5.sft")

RENDER = "ch5/sft.py, render_chat"
BUILD = "ch5/sft.py, build_example"
PROMPT = "ch5/sft.py, prompt_ids"
COLLATE = "ch5/sft.py, collate"
LOSS = "ch5/sft.py, masked_cross_entropy"
SYS, USR, AST, END = 100, 101, 102, 103


class LetterTokenizer:
    """One id per lower-case letter or digit (a = 0, ..., 0 = 26, ...), the chat tokens 100-103."""

    special_tokens = {"<|system|>": SYS, "<|user|>": USR, "<|assistant|>": AST, "<|end|>": END}

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") if c.isalpha() else 26 + int(c) for c in text]


CHAT = [
    {"role": "system", "content": "ab"},
    {"role": "user", "content": "c1"},
    {"role": "assistant", "content": "d"},
    {"role": "user", "content": "e"},
    {"role": "assistant", "content": "fg"},
]
# position:  0    1  2  3    4    5  6   7    8    9  10   11   12  13   14   15 16  17
IDS = [SYS, 0, 1, END, USR, 2, 27, END, AST, 3, END, USR, 4, END, AST, 5, 6, END]
LABELS = [-1] * 9 + [3, END] + [-1] * 4 + [5, 6, END]


def test_render_chat_writes_the_template():
    """Each message is <|role|>content<|end|>, in order."""
    text = sft.render_chat(CHAT[:3])
    check_equal(
        text,
        "<|system|>ab<|end|><|user|>c1<|end|><|assistant|>d<|end|>",
        "the rendered chat",
        RENDER,
    )
    with check_raises(ValueError, "render_chat with the role 'robot'", RENDER):
        sft.render_chat([{"role": "robot", "content": "hi"}])


def test_build_example_masks_everything_but_the_assistant():
    """Labels equal the ids on the assistant's content and end-of-turn tokens, -1 elsewhere."""
    ids, labels = sft.build_example(LetterTokenizer(), CHAT)
    check_equal(list(ids), IDS, "the input ids of the example conversation", BUILD)
    only_content = [-1 if i in (10, 17) else t for i, t in enumerate(LABELS)]
    with_header = [AST if i in (8, 14) else t for i, t in enumerate(LABELS)]
    everything = list(IDS)
    got = list(labels)
    mistakes = [
        Mistake(
            "labels with the assistant's end-of-turn token masked",
            "label the <|end|> that closes an assistant turn too: a model never taught to produce it never stops",
            only_content,
        ),
        Mistake(
            "labels that include the <|assistant|> role token",
            "mask the role token: the prompt gives it, the model does not write it",
            with_header,
        ),
        Mistake(
            "labels on every token (no mask)",
            "set the label of every token outside an assistant's turn to -1",
            everything,
        ),
    ]
    if got != LABELS:
        fail_if_mistake(got, mistakes, "the labels", BUILD)
    check_equal(got, LABELS, "the labels of the example conversation (position by position)", BUILD)


def test_build_example_refuses_bad_messages():
    """An unknown role is a ValueError, and so is a tokenizer without the chat tokens."""
    with check_raises(ValueError, "build_example with the role 'robot'", BUILD):
        sft.build_example(LetterTokenizer(), [{"role": "robot", "content": "a"}])


def test_prompt_ids_end_with_the_assistant_token():
    """The prompt for the next turn is the conversation's ids followed by <|assistant|>."""
    got = sft.prompt_ids(LetterTokenizer(), CHAT[:2])
    check_equal(
        list(got), IDS[:8] + [AST], "the prompt ids of the system and user messages", PROMPT
    )


def test_collate_shifts_once_and_pads_with_ignored_labels():
    """x = ids[:-1], y = labels[1:], padded on the right with pad_id and -1."""
    short = ([USR, 2, END, AST, 3, END], [-1, -1, -1, -1, 3, END])
    x, y = sft.collate([(IDS, LABELS), short], pad_id=99)
    T = len(IDS) - 1
    expected_x = torch.full((2, T), 99)
    expected_x[0] = torch.tensor(IDS[:-1])
    expected_x[1, :5] = torch.tensor(short[0][:-1])
    expected_y = torch.full((2, T), -1)
    expected_y[0] = torch.tensor(LABELS[1:])
    expected_y[1, :5] = torch.tensor(short[1][1:])
    check_same(
        x,
        expected_x,
        f"x should be each example's ids without the last one, padded with pad_id on the right; expected {expected_x.tolist()}, got {x.tolist()}. Look at {COLLATE}.",
    )
    not_shifted = torch.full((2, T), -1)
    not_shifted[0] = torch.tensor(LABELS[:-1])
    not_shifted[1, :5] = torch.tensor(short[1][:-1])
    padded_with_pad = expected_y.clone()
    padded_with_pad[1, 5:] = 99
    check_close(
        y,
        expected_y,
        "the labels y",
        COLLATE,
        mistakes=[
            Mistake(
                "labels not shifted (y[t] is the label of x[t] itself)",
                "take labels[1:] so that y[t] is the token after x[t]",
                not_shifted,
            ),
            Mistake(
                "labels padded with pad_id",
                "pad y with -1, so padding is never counted",
                padded_with_pad,
            ),
        ],
    )
    x, y = sft.collate([(IDS, LABELS)], pad_id=99, block_size=6)
    check_same(
        y,
        torch.tensor([LABELS[1:7]]),
        f"with block_size=6 the labels should be the first 6 shifted labels. Look at {COLLATE}.",
    )


def test_masked_cross_entropy_counts_only_labelled_tokens():
    """The loss equals F.cross_entropy(ignore_index=-1): a mean over the labelled tokens."""
    logits = torch.randn(2, 7, 11)
    targets = torch.randint(0, 11, (2, 7))
    targets[0, :4] = -1
    targets[1, 5:] = -1
    expected = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=-1)
    per_token = F.cross_entropy(
        logits.view(-1, 11), targets.view(-1), ignore_index=-1, reduction="none"
    )
    check_close(
        sft.masked_cross_entropy(logits, targets).detach(),
        expected,
        "the masked cross-entropy",
        LOSS,
        mistakes=[
            Mistake(
                "the mean over every position (masked ones counted as zeros)",
                "divide by the number of labelled positions, not by B * T",
                per_token.sum() / per_token.numel(),
            )
        ],
    )
    with check_raises(ValueError, "masked_cross_entropy with every target -1", LOSS):
        sft.masked_cross_entropy(logits, torch.full((2, 7), -1))


def test_masked_positions_get_no_gradient():
    """The logits of a masked position get exactly zero gradient; labelled ones F's gradient."""
    logits = torch.randn(2, 7, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 7))
    targets[:, :3] = -1
    sft.masked_cross_entropy(logits, targets).backward()
    oracle = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(oracle.view(-1, 11), targets.view(-1), ignore_index=-1).backward()
    check_same(
        logits.grad[:, :3],
        torch.zeros(2, 3, 11),
        f"the gradient on the prompt's (masked) positions should be exactly zero. Look at {LOSS}.",
    )
    check_close(
        logits.grad, oracle.grad, "the gradient of the loss with respect to the logits", LOSS
    )


def test_sft_loss_is_the_models_masked_loss():
    """sft_loss(model, x, y) is the masked cross-entropy of the model's logits."""
    model = fill_parameters(ToyLM())
    x, y = sft.collate([([1, 2, 3, 4, 5], [-1, -1, 3, 4, 5]), ([6, 7, 8], [-1, 7, 8])], pad_id=0)
    _, expected = model(x, y)
    check_close(
        sft.sft_loss(model, x, y).detach(),
        expected.detach(),
        "sft_loss on a toy model",
        "ch5/sft.py, sft_loss",
    )
