"""Chapter 5: fine-tuning and alignment -- LoRA, supervised fine-tuning, DPO and RL.

Everything here works on any language model whose ``forward(idx, targets)`` returns
``(logits, loss)`` with logits (B, T, V) and a loss that ignores targets of -1: chapter 3's GPT
and chapter 4's Llama both do. ``python -m solutions.ch5 sft|dpo|rl ...`` fine-tunes a chapter 3
checkpoint from the command line (see :mod:`.cli`).
"""
