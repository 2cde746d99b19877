"""The end-to-end recipe of stage ch5 'e2e', shared by the test and the docs; the data and the
loops are the tree's given ``ch5/train.py``, run with the tree's lora, sft and dpo.

1. **Pretraining.** A small chapter 3 GPT reads lines of single-digit additions, ``3+4=7``, each
   ended by ``<|end|>`` (the end-of-text token a base model knows), with the chat tokenizer's
   vocabulary. It learns the sums, but has never seen a chat.
2. **SFT with LoRA.** Conversations ``<|user|>3+4<|end|><|assistant|>7<|end|>`` for 70 of the 100
   facts teach the chat format; the 30 others are held out. Exact-match accuracy of the greedy
   answer on the held-out questions: the base model's against the fine-tuned model's.
3. **DPO.** From the SFT model (merged), preference pairs: the sum chosen, the product rejected.
   Held-out preference accuracy: the share of held-out pairs whose chosen answer gets the larger
   implicit reward.
4. **RL.** From the SFT model (merged), GRPO on the 70 fine-tuning questions, rewarded 1 for the
   exact sum. The SFT model's greedy answers are right more often than its samples at temperature
   1 (it is unsure); RL trains only the final norm's gain, which scales the features the logits
   are read from, so what it learns (be surer) holds for the held-out questions too. Held-out mean reward
   (computed exactly: the probability of sampling the right answer) before and after.

``python -m grader.tasks.ch5 [SEED...]`` prints the numbers for each seed (LLMFS_TREE picks the
tree).
"""

from __future__ import annotations

import copy
import sys
import time

import torch

from grader.tree import load

MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 16, "dropout": 0.0}
PRETRAIN = {"steps": 400, "batch_size": 32, "lr": 4e-3, "warmup": 50}
LORA = {"r": 8, "alpha": 16.0, "targets": ("c_attn", "c_proj", "c_fc")}
SFT = {"steps": 300, "batch_size": 16, "lr": 3e-3}
DPO = {"steps": 100, "batch_size": 16, "lr": 3e-3, "beta": 0.1}
RL = {"steps": 40, "prompts_per_step": 8, "group_size": 8, "lr": 0.1}


def data():
    """``(train, held_out)`` facts and their records of each kind."""
    train_mod = load("ch5.train")
    train, held_out = train_mod.facts()
    return {
        kind: (train_mod.records(kind, train), train_mod.records(kind, held_out))
        for kind in ("sft", "dpo", "rl")
    }


def pretrain(seed: int = 0):
    return load("ch5.train").pretrain(**PRETRAIN, seed=seed, **MODEL)


def fine_tune(base, tokenizer, rows, seed: int = 0):
    """A copy of ``base`` with LoRA adapters trained by SFT on ``rows`` (not merged)."""
    train_mod = load("ch5.train")
    model = copy.deepcopy(base)
    train_mod.add_adapters(model, **LORA)
    train_mod.train_sft(model, tokenizer, rows, **SFT, seed=seed)
    return model


def align(tuned, tokenizer, rows, seed: int = 0):
    """``(policy, reference)``: DPO with new adapters on a merged copy of ``tuned``."""
    train_mod, dpo = load("ch5.train"), load("ch5.dpo")
    model = copy.deepcopy(tuned)
    load("ch5.lora").merge_lora(model)
    reference = dpo.frozen_reference(model)
    train_mod.add_adapters(model, **LORA)
    train_mod.train_dpo(model, reference, tokenizer, rows, **DPO, seed=seed)
    return model, reference


def reinforce(tuned, tokenizer, rows, seed: int = 0):
    """A merged copy of ``tuned`` whose final norm's gain is trained by GRPO on ``rows``.

    Why the gain and not LoRA: a policy gradient from a few thousand samples is noisy, and Adam
    moves every trainable number by about ``lr`` per step whatever its gradient's noise. On
    LoRA's 16,384 numbers the noise wins within seconds (the reward falls, or holds still at a
    smaller ``lr``); on the gain's 64 it does not, and a surer model is what carries over to
    questions RL never saw."""
    train_mod = load("ch5.train")
    model = copy.deepcopy(tuned)
    load("ch5.lora").merge_lora(model)
    train_mod.only_final_gain_trainable(model)
    train_mod.train_rl(model, tokenizer, rows, **RL, seed=seed)
    return model


def run(seed: int = 0) -> dict[str, float]:
    """Every number of the stage for one seed (the docs quote three seeds)."""
    train_mod = load("ch5.train")
    records = data()
    base, tokenizer = pretrain(seed)
    tuned = fine_tune(base, tokenizer, records["sft"][0], seed)
    policy, reference = align(tuned, tokenizer, records["dpo"][0], seed)
    trained = reinforce(tuned, tokenizer, records["rl"][0], seed)
    held_out = records["rl"][1]
    return {
        "base_accuracy": train_mod.accuracy(base, tokenizer, held_out),
        "sft_accuracy": train_mod.accuracy(tuned, tokenizer, held_out),
        "preference_accuracy": train_mod.preference_accuracy(
            policy, reference, tokenizer, records["dpo"][1], beta=DPO["beta"]
        ),
        "rl_reward_before": train_mod.expected_reward(tuned, tokenizer, held_out),
        "rl_reward_after": train_mod.expected_reward(trained, tokenizer, held_out),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    for s in map(int, sys.argv[1:] or ["0"]):
        start = time.perf_counter()
        numbers = {k: round(v, 3) for k, v in run(s).items()}
        print(s, numbers, f"{time.perf_counter() - start:.0f} s")
