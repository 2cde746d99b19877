"""The chapter's data and training loops (given): the generated addition task, pretraining a
chat-ready base model, and the SFT, DPO and RL loops that the e2e stage and the command line run
with your ``lora``, ``sft``, ``dpo`` and ``rl``.

Data files are JSON Lines, one record per line:

- SFT: ``{"messages": [{"role": "user", "content": "3+4"}, {"role": "assistant", "content": "7"}]}``
- DPO: ``{"prompt": [messages...], "chosen": "7", "rejected": "12"}``
- RL: ``{"prompt": [messages...], "answer": "7"}`` (reward 1 when the sampled answer, read up to
  ``<|end|>``, equals ``answer`` exactly, else 0)
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ch3.gpt import GPT, GPTConfig
from ..ch3.sampling import generate
from . import dpo, lora, rl, sft

DIGITS = 10
Record = dict[str, Any]


# ------------------------------------------------------------------------------------- data


def facts(n_train: int = 70) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The 100 additions a+b of two digits, shuffled once: (fine-tuning facts, held-out facts)."""
    all_facts = [(a, b) for a in range(DIGITS) for b in range(DIGITS)]
    random.Random(0).shuffle(all_facts)
    return all_facts[:n_train], all_facts[n_train:]


def question(a: int, b: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{a}+{b}"}]


def rejected_answer(a: int, b: int) -> int:
    """The product (the wrong operation), or the sum plus one where product and sum agree."""
    return a * b if a * b != a + b else a + b + 1


def records(kind: str, pairs: Iterable[tuple[int, int]]) -> list[Record]:
    """The generated records of ``kind`` (``sft``, ``dpo`` or ``rl``) for the additions ``pairs``."""
    out = []
    for a, b in pairs:
        if kind == "sft":
            reply = {"role": "assistant", "content": str(a + b)}
            out.append({"messages": question(a, b) + [reply]})
        elif kind == "dpo":
            out.append(
                {
                    "prompt": question(a, b),
                    "chosen": str(a + b),
                    "rejected": str(rejected_answer(a, b)),
                }
            )
        elif kind == "rl":
            out.append({"prompt": question(a, b), "answer": str(a + b)})
        else:
            raise ValueError(f"the data kind must be sft, dpo or rl, got {kind!r}")
    return out


def write_jsonl(path: str | Path, rows: Iterable[Record]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path, kind: str) -> list[Record]:
    """The records of a JSONL file of ``kind``; a ValueError names the file and line of a bad one."""
    keys = {
        "sft": ("messages",),
        "dpo": ("prompt", "chosen", "rejected"),
        "rl": ("prompt", "answer"),
    }[kind]
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or any(k not in row for k in keys):
                raise ValueError(f"{path}:{number}: a {kind} record needs the keys {list(keys)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no records")
    return rows


# ------------------------------------------------------------------------------- pretraining


def _adamw(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay on ``model``'s trainable parameters, fused on CPU and CUDA (one
    kernel for every parameter instead of a loop of small ones: the loops here run tiny models,
    where the per-parameter loop was a tenth of each step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused)


def pretrain(
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 4e-3,
    warmup: int = 50,
    seed: int = 0,
    model: nn.Module | None = None,
    **shape: int,
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: a GPT of ``shape`` trained on lines ``a+b=c<|end|>`` with the
    chat tokenizer (AdamW, the learning rate rising linearly over ``warmup`` steps, then
    constant). It knows the sums and the end token, not the chat format. A ``model`` given (a
    chapter 4 Llama, say, whose vocabulary is the chat tokenizer's) is trained instead.

    The warm-up is what makes the sums reliable: without it, some seeds sat for hundreds of
    steps at a tenth of the sums right before learning them."""
    tokenizer = sft.chat_tokenizer()
    lines = [f"{a}+{b}={a + b}{sft.END}" for a in range(DIGITS) for b in range(DIGITS)]
    torch.manual_seed(seed)
    gpt = model if model is not None else GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape))
    optimizer = _adamw(gpt, lr)
    width = context_length(gpt) + 1
    per_row = -(-(width - 1) // 6)  # lines of at least 6 tokens (a + b = sum <|end|>) fill a row
    gpt.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
        rng = random.Random(seed * 100_003 + step)
        rows = []
        for _ in range(batch_size):
            text = sft.END + "".join(rng.choice(lines) for _ in range(per_row))
            rows.append(tokenizer.encode(text)[:width])
        batch = torch.tensor(rows)
        _, loss = gpt(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return gpt.eval(), tokenizer


# ------------------------------------------------------------------------ answers and scores


def answers(
    model: nn.Module, tokenizer, prompts: list[list[dict[str, str]]], **sampling
) -> list[str | None]:
    """The model's answer to each prompt, read up to ``<|end|>`` (None when it never ends),
    with ``generate``'s options (``temperature=0.0`` for greedy)."""
    end = tokenizer.special_tokens[sft.END]
    out: list[str | None] = []
    for messages in prompts:
        ids = sft.prompt_ids(tokenizer, messages)
        row = generate(model, torch.tensor([ids]), 8, eos_id=end, **sampling)[0, len(ids) :]
        row = row.tolist()
        out.append(tokenizer.decode(row[: row.index(end)]) if end in row else None)
    return out


def accuracy(model: nn.Module, tokenizer, rows: list[Record]) -> float:
    """Exact-match accuracy of the greedy answers to RL-style records (prompt, answer)."""
    got = answers(model, tokenizer, [r["prompt"] for r in rows], temperature=0.0)
    return sum(g == r["answer"] for g, r in zip(got, rows, strict=True)) / len(rows)


def expected_reward(model: nn.Module, tokenizer, rows: list[Record]) -> float:
    """The mean reward of answers sampled at temperature 1, computed exactly instead of sampled:
    per RL record, the probability that the model writes ``answer`` then ``<|end|>`` (the
    chat tokenizer gives each answer one tokenization, so this is the probability of reward 1).
    No sampling noise: a small change in the policy shows as a change of this number."""
    examples = [
        sft.build_example(tokenizer, r["prompt"] + [{"role": "assistant", "content": r["answer"]}])
        for r in rows
    ]
    x, y = sft.collate(examples, pad_id=tokenizer.special_tokens[sft.END])
    with torch.no_grad():
        return float(dpo.sequence_logprobs(model, x, y).exp().mean())


def preference_batches(tokenizer, rows: list[Record]):
    """``((x_chosen, y_chosen), (x_rejected, y_rejected))`` for DPO records."""
    pad = tokenizer.special_tokens[sft.END]

    def batch(key: str):
        examples = [
            sft.build_example(tokenizer, r["prompt"] + [{"role": "assistant", "content": r[key]}])
            for r in rows
        ]
        return sft.collate(examples, pad_id=pad)

    return batch("chosen"), batch("rejected")


def preference_accuracy(
    policy, reference, tokenizer, rows: list[Record], beta: float = 0.1
) -> float:
    """The share of DPO records whose chosen answer gets the larger implicit reward."""
    (xc, yc), (xr, yr) = preference_batches(tokenizer, rows)
    with torch.no_grad():
        _, chosen, rejected = dpo.dpo_loss(
            dpo.sequence_logprobs(policy, xc, yc),
            dpo.sequence_logprobs(policy, xr, yr),
            dpo.sequence_logprobs(reference, xc, yc),
            dpo.sequence_logprobs(reference, xr, yr),
            beta=beta,
        )
    return float((chosen > rejected).float().mean())


# ------------------------------------------------------------------------------------ loops


def context_length(model: nn.Module) -> int:
    """The longest input of a chapter 3 GPT (``config.block_size``) or chapter 4 Llama
    (``config.max_seq_len``)."""
    config = model.config
    return int(getattr(config, "block_size", None) or config.max_seq_len)


def add_adapters(
    model: nn.Module, r: int, alpha: float, targets: Iterable[str]
) -> list[nn.Parameter]:
    """Fresh LoRA adapters on ``model``, only they trainable: their parameters."""
    lora.apply_lora(model, r=r, alpha=alpha, targets=tuple(targets))
    lora.mark_only_lora_trainable(model)
    return [p for p in model.parameters() if p.requires_grad]


FINAL_NORMS = ("transformer.ln_f", "norm")  # chapter 3's GPT, chapter 4's Llama


def only_final_gain_trainable(model: nn.Module) -> list[nn.Parameter]:
    """Freeze ``model`` except the gain (``weight``) of its final norm, the one before
    ``lm_head``: ``[that gain]``. It scales each feature that the logits are read from, a
    learned temperature per feature: few numbers that a noisy reward can steer, and a change
    that holds for every prompt, not only for those trained on."""
    modules = dict(model.named_modules())
    found = [modules[n] for n in FINAL_NORMS if n in modules]
    if not found:
        raise ValueError(f"the model has no final norm named one of {list(FINAL_NORMS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    gain = found[0].weight
    gain.requires_grad_(True)
    return [gain]


def train_sft(
    model: nn.Module,
    tokenizer,
    rows: list[Record],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> list[float]:
    """Train ``model``'s trainable parameters on SFT records; the losses."""
    examples = [sft.build_example(tokenizer, r["messages"]) for r in rows]
    pad = tokenizer.special_tokens[sft.END]
    optimizer = _adamw(model, lr)
    model.train()
    losses = []
    for step in range(steps):
        rng = random.Random(seed * 100_003 + step)
        block = context_length(model)
        x, y = sft.collate(
            [rng.choice(examples) for _ in range(batch_size)], pad_id=pad, block_size=block
        )
        loss = sft.sft_loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def train_dpo(
    model: nn.Module,
    reference: nn.Module,
    tokenizer,
    rows: list[Record],
    steps: int,
    batch_size: int,
    lr: float,
    beta: float,
    seed: int = 0,
) -> list[float]:
    """Train ``model``'s trainable parameters by DPO against ``reference``; the reward margins."""
    optimizer = _adamw(model, lr)
    model.train()
    margins = []
    for step in range(steps):
        rng = random.Random(seed * 100_003 + step)
        (xc, yc), (xr, yr) = preference_batches(
            tokenizer, [rng.choice(rows) for _ in range(batch_size)]
        )
        with torch.no_grad():
            ref_chosen = dpo.sequence_logprobs(reference, xc, yc)
            ref_rejected = dpo.sequence_logprobs(reference, xr, yr)
        loss, chosen, rejected = dpo.dpo_loss(
            dpo.sequence_logprobs(model, xc, yc),
            dpo.sequence_logprobs(model, xr, yr),
            ref_chosen,
            ref_rejected,
            beta=beta,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        margins.append(float((chosen - rejected).mean()))
    model.eval()
    return margins


def train_rl(
    model: nn.Module,
    tokenizer,
    rows: list[Record],
    steps: int,
    prompts_per_step: int,
    group_size: int,
    lr: float,
    clip_eps: float = 0.2,
    reference: nn.Module | None = None,
    kl_coef: float = 0.0,
    max_new_tokens: int = 8,
    seed: int = 0,
) -> list[float]:
    """GRPO on RL records: per step, ``group_size`` answers sampled (temperature 1) for each of
    ``prompts_per_step`` prompts, rewarded 1 for an exact answer, and one update of the clipped
    objective per group; the mean reward of each step."""
    optimizer = _adamw(model, lr)
    end = tokenizer.special_tokens[sft.END]
    generator = torch.Generator().manual_seed(seed)
    means = []
    for step in range(steps):
        rng = random.Random(seed * 100_003 + step)
        batch = [rng.choice(rows) for _ in range(prompts_per_step)]
        rewards_of_step = []
        optimizer.zero_grad()
        for row in batch:  # one group per prompt: every row shares its prompt's length
            ids = sft.prompt_ids(tokenizer, row["prompt"])
            seq = generate(
                model,
                torch.tensor([ids] * group_size),
                max_new_tokens,
                eos_id=end,
                generator=generator,
            )
            rewards = []
            for sample in seq[:, len(ids) :].tolist():
                said = tokenizer.decode(sample[: sample.index(end)]) if end in sample else None
                rewards.append(float(said == row["answer"]))
            rewards_of_step += rewards
            advantages = rl.group_advantages(torch.tensor([rewards]))[0]
            x, y = rl.rollout_batch(seq, len(ids), end)
            model.train()
            logp = dpo.token_logprobs(model, x, y)
            ref_logp = dpo.token_logprobs(reference, x, y) if reference is not None else None
            loss = rl.grpo_loss(
                logp, logp.detach(), advantages, y != -1, clip_eps, ref_logp, kl_coef
            )
            (loss / len(batch)).backward()
        optimizer.step()
        means.append(sum(rewards_of_step) / len(rewards_of_step))
    model.eval()
    return means


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(
    model: nn.Module, tokenizer, path: str | Path, history: dict | None = None
) -> Path:
    """Write ``model`` (plain: merge its adapters first) and ``tokenizer`` as a checkpoint folder
    in chapter 3's format, with the model's config: a GPT's is read by ``python -m solutions.ch3
    sample --checkpoint``, a Llama's by ``python -m solutions.ch4 sample --checkpoint``."""
    path = Path(path)
    file = path / "checkpoint.pt" if path.suffix != ".pt" else path
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": {},
        "step": 0,
        "config": dataclasses.asdict(model.config),
        "tokenizer": json.dumps(tokenizer.to_dict(), ensure_ascii=False),
        "rng": {"torch": torch.get_rng_state()},
        "data": {"epoch": 0, "batch_in_epoch": 0},
        "history": history or {},
    }
    tmp = file.with_name(file.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, file)
    return file
