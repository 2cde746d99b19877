"""The end-to-end recipe of stage ch5 'e2e', shared by the test and the docs.

Everything is generated here and runs on CPU in about half a minute:

1. **Pretraining.** A small chapter 3 GPT reads lines of single-digit additions, ``3+4=7``, each
   ended by ``<|end|>`` (the end-of-text token a base model knows), with the chat tokenizer's
   vocabulary (bytes plus the four chat tokens). It learns the sums, but has never seen a chat.
2. **SFT with LoRA.** Conversations ``<|user|>3+4<|end|><|assistant|>7<|end|>`` for 70 of the 100
   facts teach the chat format; the 30 others are held out. Exact-match accuracy of the greedy
   answer on the held-out questions: the base model's against the fine-tuned model's.
3. **DPO.** From the SFT model (merged), preference pairs: the sum chosen, the product rejected
   (a wrong operation; a wrong sum when the two agree). Held-out preference accuracy: the share of
   held-out pairs whose chosen answer gets the larger implicit reward.
"""

from __future__ import annotations

import copy
import random

import torch
from torch import nn

from grader.tree import load

DIGITS = 10
N_TRAIN = 70  # facts for fine-tuning; the other 30 are held out
MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32, "dropout": 0.0}
PRETRAIN = {"steps": 400, "batch_size": 32, "lr": 3e-3}
LORA = {"r": 8, "alpha": 16.0, "targets": ("c_attn", "c_proj", "c_fc")}
SFT = {"steps": 300, "batch_size": 16, "lr": 3e-3}
DPO = {"steps": 100, "batch_size": 16, "lr": 3e-3, "beta": 0.1}

Fact = tuple[int, int]


def facts() -> tuple[list[Fact], list[Fact]]:
    """The 100 additions a+b of two digits, shuffled once: (fine-tuning facts, held-out facts)."""
    all_facts = [(a, b) for a in range(DIGITS) for b in range(DIGITS)]
    random.Random(0).shuffle(all_facts)
    return all_facts[:N_TRAIN], all_facts[N_TRAIN:]


def question(fact: Fact) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{fact[0]}+{fact[1]}"}]


def conversation(fact: Fact, answer: int) -> list[dict[str, str]]:
    return question(fact) + [{"role": "assistant", "content": str(answer)}]


def pretrain(seed: int = 0):
    """``(model, tokenizer)``: the tree's GPT trained on addition lines with the tree's chat
    tokenizer (AdamW, constant learning rate)."""
    sft, gpt = load("ch5.sft"), load("ch3.gpt")
    tokenizer = sft.chat_tokenizer()
    end = sft.END
    lines = [f"{a}+{b}={a + b}{end}" for a in range(DIGITS) for b in range(DIGITS)]
    torch.manual_seed(seed)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tokenizer.vocab_size, **MODEL))
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.0)
    width = MODEL["block_size"] + 1
    model.train()
    for step in range(PRETRAIN["steps"]):
        rng = random.Random(seed * 100_003 + step)
        rows = []
        for _ in range(PRETRAIN["batch_size"]):
            text = end + "".join(rng.choice(lines) for _ in range(8))
            rows.append(tokenizer.encode(text)[:width])
        batch = torch.tensor(rows)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


def accuracy(model: nn.Module, tokenizer, questions: list[Fact]) -> float:
    """Exact-match accuracy of the greedy answer (up to <|end|>) to each question in chat form."""
    sft, generate = load("ch5.sft"), load("ch3.sampling").generate
    end = tokenizer.special_tokens[sft.END]
    prompts = [sft.prompt_ids(tokenizer, question(fact)) for fact in questions]
    idx = torch.tensor(prompts)  # every prompt has the same length: one digit, '+', one digit
    out = generate(model, idx, 4, temperature=0.0, eos_id=end)[:, idx.size(1) :].tolist()
    right = 0
    for fact, row in zip(questions, out, strict=True):
        if end in row:
            right += tokenizer.decode(row[: row.index(end)]) == str(fact[0] + fact[1])
    return right / len(questions)


def _adapted(model: nn.Module) -> list[nn.Parameter]:
    """Fresh LoRA adapters on ``model``, only they trainable: their parameters."""
    lora = load("ch5.lora")
    lora.apply_lora(model, r=LORA["r"], alpha=LORA["alpha"], targets=LORA["targets"])
    lora.mark_only_lora_trainable(model)
    return [p for p in model.parameters() if p.requires_grad]


def run_sft(model: nn.Module, tokenizer, train: list[Fact], seed: int = 0) -> nn.Module:
    """``model`` (changed in place) with LoRA adapters trained on ``train`` as conversations."""
    sft = load("ch5.sft")
    examples = [sft.build_example(tokenizer, conversation(f, f[0] + f[1])) for f in train]
    pad = tokenizer.special_tokens[sft.END]
    optimizer = torch.optim.AdamW(_adapted(model), lr=SFT["lr"], weight_decay=0.0)
    model.train()
    for step in range(SFT["steps"]):
        rng = random.Random(seed * 100_003 + step)
        x, y = sft.collate([rng.choice(examples) for _ in range(SFT["batch_size"])], pad_id=pad)
        loss = sft.sft_loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def rejected_answer(fact: Fact) -> int:
    """The product (the wrong operation), or the sum plus one where product and sum agree."""
    a, b = fact
    return a * b if a * b != a + b else a + b + 1


def preference_batches(tokenizer, pairs: list[Fact]):
    """``((x_chosen, y_chosen), (x_rejected, y_rejected))`` for ``pairs``."""
    sft = load("ch5.sft")
    pad = tokenizer.special_tokens[sft.END]
    chosen = [sft.build_example(tokenizer, conversation(f, f[0] + f[1])) for f in pairs]
    rejected = [sft.build_example(tokenizer, conversation(f, rejected_answer(f))) for f in pairs]
    return sft.collate(chosen, pad_id=pad), sft.collate(rejected, pad_id=pad)


def preference_accuracy(policy, reference, tokenizer, pairs: list[Fact]) -> float:
    """The share of ``pairs`` whose chosen answer gets the larger implicit reward."""
    dpo = load("ch5.dpo")
    (xc, yc), (xr, yr) = preference_batches(tokenizer, pairs)
    with torch.no_grad():
        _, chosen, rejected = dpo.dpo_loss(
            dpo.sequence_logprobs(policy, xc, yc),
            dpo.sequence_logprobs(policy, xr, yr),
            dpo.sequence_logprobs(reference, xc, yc),
            dpo.sequence_logprobs(reference, xr, yr),
            beta=DPO["beta"],
        )
    return float((chosen > rejected).float().mean())


def run_dpo(model: nn.Module, tokenizer, train: list[Fact], seed: int = 0):
    """``(policy, reference)``: a frozen copy of ``model``, and ``model`` with LoRA adapters
    trained by DPO on the preference pairs of ``train``."""
    dpo = load("ch5.dpo")
    reference = dpo.frozen_reference(model)
    optimizer = torch.optim.AdamW(_adapted(model), lr=DPO["lr"], weight_decay=0.0)
    model.train()
    for step in range(DPO["steps"]):
        rng = random.Random(seed * 100_003 + step)
        batch = [rng.choice(train) for _ in range(DPO["batch_size"])]
        (xc, yc), (xr, yr) = preference_batches(tokenizer, batch)
        with torch.no_grad():
            ref_chosen = dpo.sequence_logprobs(reference, xc, yc)
            ref_rejected = dpo.sequence_logprobs(reference, xr, yr)
        loss, _, _ = dpo.dpo_loss(
            dpo.sequence_logprobs(model, xc, yc),
            dpo.sequence_logprobs(model, xr, yr),
            ref_chosen,
            ref_rejected,
            beta=DPO["beta"],
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), reference


def run(seed: int = 0) -> dict[str, float]:
    """Every number of the stage for one seed (the docs quote three seeds)."""
    train, held_out = facts()
    base, tokenizer = pretrain(seed)
    numbers = {"base_accuracy": accuracy(base, tokenizer, held_out)}
    tuned = run_sft(copy.deepcopy(base), tokenizer, train, seed)
    numbers["sft_accuracy"] = accuracy(tuned, tokenizer, held_out)
    load("ch5.lora").merge_lora(tuned)
    policy, reference = run_dpo(tuned, tokenizer, train, seed)
    numbers["preference_accuracy"] = preference_accuracy(policy, reference, tokenizer, held_out)
    return numbers


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    for s in map(int, sys.argv[1:] or ["0"]):
        print(s, run(s))
