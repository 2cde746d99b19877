"""Draw the pictures of the chapters from the project's own code: ``python docs/make_figures.py``.

Every figure is computed by the reference solutions (attention weights, positional encodings, the
trainer's learning-rate schedule, a short real training run, BPE merges, RoPE, grouped-query heads,
the KV cache, MoE routing, chapter 5's loss mask and fine-tuning curves, the ring all-reduce, DDP's
and ZeRO's memory, tensor-parallel shards, FSDP's memory), so a picture can never
disagree with the code it illustrates. Needs matplotlib (``pip install -e ".[docs]"``); writes
PNGs to ``docs/figures/`` (or ``--out``). ``--only NAME ...`` draws some of them; the loss curve
trains a small GPT for a few hundred steps (a minute or two on a laptop CPU).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

FIGURES = REPO_ROOT / "docs" / "figures"


def attention_weights(out: Path) -> None:
    """One head's weights for a short sentence, without and with the causal mask."""
    from solutions.ch2.attention import causal_mask, scaled_dot_product_attention

    words = "the cat sat on the mat because it was warm".split()
    T, d_k = len(words), 16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, d_k, generator=g)
    w_q, w_k = torch.randn(d_k, d_k, generator=g), torch.randn(d_k, d_k, generator=g)
    # Random projections (an untrained head), scaled up a little so the pattern is visible.
    q, k = 2 * x @ w_q / math.sqrt(d_k), x @ w_k / math.sqrt(d_k)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), constrained_layout=True)
    for ax, (title, mask) in zip(
        axes, (("no mask", None), ("causal mask", causal_mask(T))), strict=True
    ):
        _, weights = scaled_dot_product_attention(q, k, x, mask=mask)
        image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"attention weights, {title}")
        ax.set_xticks(range(T), words, rotation=60)
        ax.set_yticks(range(T), words)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight (each row sums to 1)")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def positional_encoding(out: Path) -> None:
    """The sinusoidal table, and PE[p] . PE[q], which depends only on p - q."""
    from solutions.ch2.block import sinusoidal_positional_encoding

    pe = sinusoidal_positional_encoding(64, 128)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    image = axes[0].imshow(pe, cmap="RdBu", aspect="auto", vmin=-1, vmax=1)
    axes[0].set_title("sinusoidal_positional_encoding(64, 128)")
    axes[0].set_xlabel("feature (pairs sin, cos; lower = faster)")
    axes[0].set_ylabel("position")
    fig.colorbar(image, ax=axes[0], label="value")
    image = axes[1].imshow(pe @ pe.T, cmap="magma")
    axes[1].set_title("PE[p] . PE[q]: constant along each diagonal")
    axes[1].set_xlabel("position q")
    axes[1].set_ylabel("position p")
    fig.colorbar(image, ax=axes[1], label="dot product")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _tiny_trainer(**kwargs):
    """A GPTTrainer on a minimal model and loader, only to evaluate get_lr."""
    from solutions.ch3.data import create_dataloaders
    from solutions.ch3.gpt import GPT, GPTConfig
    from solutions.ch3.tokenizer import SimpleTokenizer
    from solutions.ch3.trainer import GPTTrainer

    text = "abcdefgh" * 20
    tokenizer = SimpleTokenizer(text)
    train_loader, val_loader = create_dataloaders(text, tokenizer, block_size=4, batch_size=2)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=4, n_layer=1, n_head=1, n_embd=4)
    return GPTTrainer(GPT(config), train_loader, val_loader, device="cpu", quiet=True, **kwargs)


def lr_schedule(out: Path) -> None:
    """GPTTrainer.get_lr: linear warm-up, then cosine decay to min_lr."""
    trainer = _tiny_trainer(learning_rate=1e-3, warmup_steps=100, max_steps=1000)
    steps = list(range(1100))
    lrs = [trainer.get_lr(s) for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    ax.plot(steps, lrs, color="tab:blue")
    ax.axvline(100, color="gray", ls=":", lw=1)
    ax.axvline(1000, color="gray", ls=":", lw=1)
    ax.axhline(trainer.min_lr, color="gray", ls="--", lw=1)
    ax.text(105, 5e-4, "end of warm-up (step 100)", color="gray")
    ax.text(720, 1.3e-4, "min_lr = peak / 10", color="gray")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title("get_lr: learning_rate=1e-3, warmup_steps=100, max_steps=1000")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def loss_curve(out: Path, steps: int = 400) -> None:
    """A short real run of the book's small configuration on the built-in corpus."""
    from solutions.ch3 import GPT, GPTTrainer, SimpleTokenizer, create_dataloaders
    from solutions.ch3.corpus import generate_corpus

    text = generate_corpus()
    tokenizer = SimpleTokenizer(text)
    ids = tokenizer.encode(text)
    counts = Counter(ids[: int(len(ids) * 0.9)])
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())
    train_loader, val_loader = create_dataloaders(text, tokenizer, block_size=64, batch_size=12)
    torch.manual_seed(0)
    model = GPT(vocab_size=tokenizer.vocab_size, n_embd=128, n_layer=4, n_head=4, block_size=64)
    trainer = GPTTrainer(
        model,
        train_loader,
        val_loader,
        learning_rate=2e-3,
        warmup_steps=steps // 10,
        max_steps=steps,
        eval_interval=20,
        eval_batches=10,
        device="cpu",
        quiet=True,
    )
    history = trainer.train()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    train_steps = [r["step"] + 1 for r in history["train"]]
    ax.plot(train_steps, [r["loss"] for r in history["train"]], lw=0.8, alpha=0.6, label="train")
    ax.plot(
        [r["step"] for r in history["val"]],
        [r["loss"] for r in history["val"]],
        "o-",
        ms=3,
        label="validation",
    )
    ax.axhline(math.log(tokenizer.vocab_size), color="gray", ls="--", lw=1)
    ax.text(
        steps * 0.55, math.log(tokenizer.vocab_size) + 0.05, f"ln V = ln {tokenizer.vocab_size}"
    )
    ax.axhline(unigram, color="tab:red", ls=":", lw=1)
    ax.text(steps * 0.55, unigram + 0.05, f"unigram baseline {unigram:.2f}", color="tab:red")
    ax.set_xlabel("optimizer step (batch 12 x 64 characters)")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(f"GPT, {model.num_parameters():,} parameters, built-in corpus")
    ax.legend()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def bpe_merges(out: Path) -> None:
    """The first merges BPE learns on the built-in corpus, and compression against vocab size."""
    from solutions.ch3.corpus import generate_corpus
    from solutions.ch3.tokenizer import BPETokenizer

    text = generate_corpus()
    tok = BPETokenizer().train(text, vocab_size=256 + 20)
    first = list(tok.merges.items())
    labels = [
        f"{i - 255:2d}. {tok.vocab[a].decode()!r} + {tok.vocab[b].decode()!r} -> "
        f"{tok.vocab[i].decode()!r}"
        for (a, b), i in first
    ]
    asked = [256, 288, 320, 384, 512, 768, 1024]
    sizes, per_char = [], []  # the vocabulary size each request reached, and its compression
    for size in asked:
        trained = BPETokenizer().train(text, vocab_size=size)
        if sizes and trained.vocab_size == sizes[-1]:
            break  # merges ran out: a larger request learns the same tokenizer
        sizes.append(trained.vocab_size)
        per_char.append(len(trained.encode(text)) / len(text))
    reached = sizes[-1]  # merges stop once every word of the corpus is one token
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 5.2), constrained_layout=True, gridspec_kw={"width_ratios": [1, 1.2]}
    )
    axes[0].axis("off")
    axes[0].set_title("first 20 merges, in rank order")
    for row, label in enumerate(labels):
        axes[0].text(0.0, 1 - (row + 0.5) / len(labels), label, family="monospace", va="center")
    axes[1].plot(sizes, per_char, "o-")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(sizes, [str(s) for s in sizes])
    axes[1].set_xlabel("vocabulary size reached (256 bytes + merges)")
    axes[1].set_ylabel("tokens per character")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("longer tokens: fewer tokens for the same text")
    axes[1].annotate(
        f"every word is one token:\nno pair left to merge\n(vocabulary stops at {reached},\n"
        f"even when {asked[-1]:,} is asked for)",
        xy=(reached, per_char[-1]),
        xytext=(330, 0.55),
        arrowprops={"arrowstyle": "->", "color": "gray"},
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def rope_rotation(out: Path) -> None:
    """RoPE turns each pair of a query's dimensions by position x frequency; the score of a
    rotated query and key depends only on their distance."""
    from solutions.ch4.layers import apply_rope, rope_cache

    head_dim, n = 8, 12
    cos, sin = rope_cache(head_dim, 64)
    q = torch.tensor([1.0, 0.3, 0.6, 0.2, 0.2, 0.9, 0.4, 1.0]).view(1, 1, 1, head_dim)
    positions = torch.arange(n)
    rotated = apply_rope(q.expand(1, 1, n, head_dim), cos, sin, positions)[0, 0]  # (n, hd)
    half = head_dim // 2
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
    colors = plt.cm.viridis(torch.linspace(0, 1, n).numpy())
    for ax, pair in zip(axes[:2], (0, 1), strict=True):
        x, y = rotated[:, pair], rotated[:, pair + half]
        for p in range(n):
            ax.annotate("", xy=(x[p], y[p]), xytext=(0, 0),
                        arrowprops={"arrowstyle": "->", "color": colors[p]})  # fmt: skip
            ax.text(1.1 * x[p], 1.1 * y[p], str(p), ha="center", va="center", fontsize=8)
        r = float(torch.hypot(x[0], y[0]))
        ax.set_xlim(-1.3 * r, 1.3 * r)
        ax.set_ylim(-1.3 * r, 1.3 * r)
        ax.set_aspect("equal")
        ax.axhline(0, color="lightgray", lw=0.8)
        ax.axvline(0, color="lightgray", lw=0.8)
        freq = 10000 ** (-2 * pair / head_dim)
        ax.set_title(f"dims ({pair}, {pair + half}): {freq:g} rad per position")
        ax.set_xlabel(f"q[{pair}]")
        ax.set_ylabel(f"q[{pair + half}]")
    g = torch.Generator().manual_seed(0)
    T, dim = 40, 32
    cos, sin = rope_cache(dim, T)
    q, k = torch.randn(1, 1, 1, dim, generator=g), torch.randn(1, 1, 1, dim, generator=g)
    at = torch.arange(T)
    scores = apply_rope(q.expand(1, 1, T, dim), cos, sin, at)[0, 0]
    scores = scores @ apply_rope(k.expand(1, 1, T, dim), cos, sin, at)[0, 0].T
    image = axes[2].imshow(scores, cmap="RdBu", vmin=-scores.abs().max(), vmax=scores.abs().max())
    axes[2].set_title("the same q and k at every position:\nq_m . k_n depends only on m - n")
    axes[2].set_xlabel("key position n")
    axes[2].set_ylabel("query position m")
    fig.colorbar(image, ax=axes[2], shrink=0.8, label="score")
    fig.suptitle("apply_rope(q, *rope_cache(head_dim=8, ...), positions=0..11): each pair turns")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def gqa_heads(out: Path) -> None:
    """Which key-value head each query head reads, for MHA, GQA and MQA (repeat_interleave)."""
    n_heads = 8
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    for ax, (title, n_kv) in zip(
        axes,
        (("multi-head (MHA)", 8), ("grouped-query (GQA)", 2), ("multi-query (MQA)", 1)),
        strict=True,
    ):
        # The kv head each query head uses, as GroupedQueryAttention repeats them.
        kv_of = torch.arange(n_kv).repeat_interleave(n_heads // n_kv)
        q_x = [(h + 0.5) / n_heads for h in range(n_heads)]
        kv_x = [(j + 0.5) / n_kv for j in range(n_kv)]
        colors = plt.cm.tab10(range(n_kv))
        for h in range(n_heads):
            j = int(kv_of[h])
            ax.plot([q_x[h], kv_x[j]], [1, 0], color=colors[j], lw=1.5)
            ax.add_patch(plt.Rectangle((q_x[h] - 0.04, 1), 0.08, 0.12, color="lightsteelblue"))
            ax.text(q_x[h], 1.06, f"q{h}", ha="center", va="center", fontsize=8)
        for j in range(n_kv):
            ax.add_patch(plt.Rectangle((kv_x[j] - 0.05, -0.14), 0.1, 0.14, color=colors[j]))
            ax.text(kv_x[j], -0.07, f"kv{j}", ha="center", va="center", fontsize=8, color="white")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.25, 1.25)
        ax.axis("off")
        ax.set_title(f"{title}: n_heads={n_heads}, n_kv_heads={n_kv}\ncache per token: "
                     f"{2 * n_kv} vectors of head_dim per layer")  # fmt: skip
    fig.savefig(out, dpi=110)
    plt.close(fig)


def kv_cache(out: Path) -> None:
    """What a KVCache holds at each step of generate, and its size for Llama-3.2-1B."""
    from solutions.ch4.llama import LLAMA_3_2_1B, Llama

    prompt, steps = 6, 5
    grid = torch.zeros(steps + 1, prompt + steps)
    for step in range(steps + 1):
        filled = prompt + step
        grid[step, : filled - 1 if step else prompt] = 1  # read from the cache
        grid[step, (filled - 1 if step else 0) : filled] = 2  # written at this step
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), constrained_layout=True)
    cmap = matplotlib.colors.ListedColormap(["whitesmoke", "lightsteelblue", "tab:orange"])
    axes[0].imshow(grid, cmap=cmap, vmin=0, vmax=2)
    axes[0].set_yticks(range(steps + 1), ["prefill"] + [f"step {s}" for s in range(1, steps + 1)])
    axes[0].set_xticks(range(prompt + steps))
    axes[0].set_xlabel("position in the cache")
    axes[0].set_title("orange: keys and values computed at this call (start_pos onwards)\n"
                      "blue: read back from the cache")  # fmt: skip
    c = LLAMA_3_2_1B
    tokens = torch.arange(0, 131073, 4096)
    for n_kv, label in ((c.n_heads, "if it had MHA (32 kv heads)"), (c.n_kv_heads, "GQA (8)")):
        # KVCache: 2 tensors (k, v) per layer of (batch, n_kv_heads, tokens, head_dim), bf16.
        gib = 2 * c.n_layers * n_kv * c.head_dim * tokens * 2 / 2**30
        axes[1].plot(tokens, gib, label=f"Llama-3.2-1B, {label}")
    with torch.device("meta"):  # shapes only: the count costs no memory
        weights_gib = Llama(c).num_parameters() * 2 / 2**30
    axes[1].axhline(weights_gib, color="gray", ls=":", lw=1)
    axes[1].text(2000, weights_gib + 0.4, "the weights themselves (bf16)", color="gray")
    axes[1].set_xlabel("tokens in the cache (one sequence)")
    axes[1].set_ylabel("GiB (bf16)")
    axes[1].set_title("cache size: 2 x n_layers x n_kv_heads x head_dim numbers per token")
    axes[1].legend()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def moe_routing(out: Path) -> None:
    """A Mixtral-style MoE layer routing 16 tokens to 2 of 8 experts each."""
    from solutions.ch4.moe import MoE

    torch.manual_seed(2)
    moe = MoE(dim=16, hidden_dim=32, n_experts=8, top_k=2)
    x = torch.randn(16, 16)
    with torch.no_grad():
        logits = moe.gate(x)  # (tokens, experts)
        top, chosen = logits.topk(2, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, chosen, top.softmax(-1))
        _, aux = moe(x)
    fig, axes = plt.subplots(
        1, 2, figsize=(13, 5), constrained_layout=True, gridspec_kw={"width_ratios": [1.2, 1]}
    )
    image = axes[0].imshow(weights, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    axes[0].set_xlabel("expert")
    axes[0].set_ylabel("token")
    axes[0].set_title("gate weights: softmax over each token's 2 chosen experts\n"
                      "(the other 6 experts do not run for that token)")  # fmt: skip
    fig.colorbar(image, ax=axes[0], shrink=0.8)
    load = (weights > 0).sum(dim=0)
    axes[1].bar(range(8), load.tolist(), color="tab:blue")
    axes[1].axhline(16 * 2 / 8, color="gray", ls="--", lw=1)
    axes[1].text(-0.4, 16 * 2 / 8 + 0.15, "balanced: 4 each", color="gray")
    axes[1].set_xlabel("expert")
    axes[1].set_ylabel("tokens routed to it")
    axes[1].set_title(f"load of an untrained router; load-balancing loss {aux.item():.3f}\n"
                      "(1 for a balanced load or a uniform router)")  # fmt: skip
    fig.savefig(out, dpi=110)
    plt.close(fig)


def sft_loss_mask(out: Path) -> None:
    """Which tokens of a chat example the SFT loss counts: the input ids and the shifted labels."""
    from solutions.ch5.sft import build_example, chat_tokenizer, collate

    tok = chat_tokenizer()
    chat = [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "3+4"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "12+5"},
        {"role": "assistant", "content": "17"},
    ]
    ids, labels = build_example(tok, chat)
    x, y = collate([(ids, labels)], pad_id=tok.special_tokens["<|end|>"])
    names = {i: t for t, i in tok.special_tokens.items()}

    def show(i: int) -> str:
        return names.get(i) or tok.decode([i]).replace(" ", "\u2423")

    fig, ax = plt.subplots(figsize=(15, 2.6), constrained_layout=True)
    for row, (title, tokens, counted) in enumerate(
        (
            ("input x", x[0].tolist(), [True] * x.size(1)),
            ("label y", y[0].tolist(), [t != -1 for t in y[0].tolist()]),
        )
    ):
        for t, (token, on) in enumerate(zip(tokens, counted, strict=True)):
            colour = "tab:orange" if row and on else ("white" if row else "#e8eef7")
            ax.add_patch(plt.Rectangle((t, -row), 0.95, 0.9, color=colour, ec="gray", lw=0.5))
            text = show(token) if token != -1 else "-1"
            ax.text(t + 0.47, -row + 0.45, text, ha="center", va="center", fontsize=7,
                    rotation=90 if len(text) > 2 else 0)  # fmt: skip
        ax.text(-0.3, -row + 0.45, title, ha="right", va="center")
    ax.set_xlim(-2.2, x.size(1))
    ax.set_ylim(-1.1, 1.0)
    ax.axis("off")
    ax.set_title(
        f"the SFT loss counts {int((y != -1).sum())} of {y.size(1)} positions (orange): each "
        "assistant's answer and its <|end|>; y is x shifted by one, -1 elsewhere"
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _traced_ring(rank: int, world_size: int) -> list[torch.Tensor]:
    """On one rank: the tensor before every send of ring_all_reduce, and at the end."""
    import torch.distributed as dist

    from solutions.ch6.dist_utils import ring_all_reduce

    x = torch.full((world_size,), float(2**rank))  # the value says which ranks a sum holds
    states, send = [], dist.isend

    def isend(tensor, dst, *args, **kwargs):
        states.append(x.clone())
        return send(tensor, dst, *args, **kwargs)

    dist.isend = isend
    try:
        ring_all_reduce(x)
    finally:
        dist.isend = send
    return [*states, x.clone()]


def ring_all_reduce(out: Path) -> None:
    """The chunks each rank holds before and after every step of the ring, on 3 ranks."""
    from grader.ranks import run_ranks

    n = 3
    states = run_ranks(_traced_ring, n)  # [rank][moment] -> (n,) one entry per chunk
    titles = ["start"] + [f"reduce-scatter\nstep {s}" for s in range(1, n)]
    titles += [f"all-gather\nstep {s}" for s in range(1, n)]
    fig, axes = plt.subplots(
        1, len(titles), figsize=(2.6 * len(titles), 3.4), constrained_layout=True
    )
    for moment, (ax, title) in enumerate(zip(axes, titles, strict=True)):
        grid = torch.stack([states[rank][moment] for rank in range(n)]).int()  # (rank, chunk)
        holds = [[bin(int(v)).count("1") for v in row] for row in grid.tolist()]
        ax.imshow(holds, cmap="Greens", vmin=0, vmax=n + 0.5)
        for rank in range(n):
            for chunk in range(n):
                value = int(grid[rank, chunk])
                ranks = "+".join(str(r) for r in range(n) if value >> r & 1)
                color = "white" if holds[rank][chunk] == n else "black"
                ax.text(chunk, rank, ranks, ha="center", va="center", fontsize=10, color=color)
        ax.set_title(title)
        ax.set_xticks(range(n), [f"chunk {c}" for c in range(n)], fontsize=8)
        ax.set_yticks(range(n), [f"rank {r}" for r in range(n)] if moment == 0 else [""] * n)
    fig.suptitle("ring_all_reduce on 3 ranks: whose numbers each chunk holds (dark: all of them)")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fine_tuning_curves(out: Path) -> None:
    """The e2e recipe for seed 0: DPO's reward margin and RL's mean reward, step by step."""
    import copy

    from grader.tasks import ch5 as recipe
    from grader.tree import load

    dpo, lora, train = load("ch5.dpo"), load("ch5.lora"), load("ch5.train")  # the recipe's tree
    torch.set_num_threads(1)
    records = recipe.data()
    base, tokenizer = recipe.pretrain(seed=0)
    tuned = recipe.fine_tune(base, tokenizer, records["sft"][0], seed=0)
    policy = copy.deepcopy(tuned)
    lora.merge_lora(policy)
    reference = dpo.frozen_reference(policy)
    rl_policy = copy.deepcopy(policy)
    train.add_adapters(policy, **recipe.LORA)
    margins = train.train_dpo(policy, reference, tokenizer, records["dpo"][0], **recipe.DPO)
    train.only_final_gain_trainable(rl_policy)
    rewards = train.train_rl(rl_policy, tokenizer, records["rl"][0], **recipe.RL)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    axes[0].plot(margins, color="tab:blue")
    axes[0].axhline(0, color="gray", lw=0.8)
    axes[0].set_title("DPO: chosen minus rejected implicit reward (batch mean)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(f"margin (beta = {recipe.DPO['beta']})")
    axes[1].plot(rewards, color="tab:orange", alpha=0.5, label="each step (8 prompts x 8 samples)")
    k = 8
    smooth = [sum(rewards[max(0, i - k + 1) : i + 1]) / len(rewards[max(0, i - k + 1) : i + 1])
              for i in range(len(rewards))]  # fmt: skip
    axes[1].plot(smooth, color="tab:red", label=f"mean of the last {k} steps")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("RL: mean reward of the sampled answers (fine-tuning questions)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("reward (1 = the exact sum)")
    axes[1].legend(loc="lower right")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _zero_state_bytes(rank: int, world_size: int, vocab: int) -> int:
    from grader.tasks import ch3 as task
    from solutions.ch3.gpt import GPT, GPTConfig
    from solutions.ch6.zero import ShardedAdamW

    model = GPT(GPTConfig(vocab_size=vocab, block_size=task.BLOCK_SIZE, **task.MODEL))
    return ShardedAdamW(model.parameters()).state_bytes()


def ddp_vs_zero_memory(out: Path) -> None:
    """Bytes per rank of parameters, gradients and AdamW state: DDP against ZeRO-1 on 2 and 4
    ranks, for chapter 3's end-to-end GPT (ZeRO's state measured on the ranks)."""
    from grader.ranks import run_ranks
    from grader.tasks import ch3 as task
    from solutions.ch3.gpt import GPT, GPTConfig

    vocab = len(set(task.corpus_text()))
    model = GPT(GPTConfig(vocab_size=vocab, block_size=task.BLOCK_SIZE, **task.MODEL))
    adamw = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    adamw.step()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in adamw.state.values()
        for name, t in s.items()
        if name in ("exp_avg", "exp_avg_sq")
    )
    bars = {"DDP, any number of ranks": state}
    for world_size in (2, 4):
        bars[f"ZeRO-1, {world_size} ranks"] = run_ranks(_zero_state_bytes, world_size, vocab)[0]
    fig, ax = plt.subplots(figsize=(9, 4.6), constrained_layout=True)
    labels = list(bars)
    kb = 1 / 1024
    ax.barh(labels, [parameters * kb] * 3, color="tab:blue", label="parameters (fp32)")
    ax.barh(labels, [gradients * kb] * 3, left=[parameters * kb] * 3, color="tab:orange",
            label="gradients (fp32)")  # fmt: skip
    ax.barh(labels, [b * kb for b in bars.values()], left=[(parameters + gradients) * kb] * 3,
            color="tab:green", label="AdamW exp_avg + exp_avg_sq")  # fmt: skip
    for i, b in enumerate(bars.values()):
        total = (parameters + gradients + b) * kb
        ax.text(total + 10, i, f"{total:,.0f} KiB (state {b * kb:,.0f})", va="center")
    ax.invert_yaxis()
    ax.set_xlim(0, (parameters + gradients + state) * kb * 1.45)
    ax.set_xlabel("KiB per rank")
    n = parameters // 4
    ax.set_title(f"What each rank stores, chapter 3's e2e GPT ({n:,} parameters)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _mlp_shards(rank: int, world_size: int, state: dict) -> dict:
    """On one rank: the parts of a full MLP that ParallelMLP.load_full keeps."""
    from torch import nn

    from solutions.ch6.tensor_parallel import ParallelMLP

    full = nn.ModuleDict({"c_fc": nn.Linear(8, 32), "c_proj": nn.Linear(32, 8)})
    full.load_state_dict(state)
    mlp = ParallelMLP(8, 32)
    mlp.load_full(full)
    return {name: p.detach() for name, p in mlp.named_parameters()}


def tensor_parallel_mlp(out: Path) -> None:
    """Which rows of c_fc and which columns of c_proj each of 2 ranks keeps in ParallelMLP
    (found by matching the shards load_full took against the full weights), and what is sent."""
    from torch import nn

    from grader.ranks import run_ranks

    torch.manual_seed(0)
    full = nn.ModuleDict({"c_fc": nn.Linear(8, 32), "c_proj": nn.Linear(32, 8)})
    shards = run_ranks(_mlp_shards, 2, full.state_dict())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for ax, name in zip(axes, ("c_fc", "c_proj"), strict=True):
        weight = full[name].weight.detach()  # (out, in)
        owner = torch.full(weight.shape, -1.0)
        for rank, shard in enumerate(shards):
            local = shard[f"{name}.weight"]
            for i in range(weight.shape[0]):  # a row of the full weight held by this rank?
                for j in range(weight.shape[1]):
                    if (local == weight[i, j]).any():
                        owner[i, j] = rank
        ax.imshow(owner.T, cmap=colors, vmin=0, vmax=9, aspect="auto")
        rows, cols = weight.shape
        ax.set_xlabel(f"output feature (weight row, of {rows})")
        ax.set_ylabel(f"input feature (weight column, of {cols})")
        kind = "column-parallel: rows split" if name == "c_fc" else "row-parallel: columns split"
        ax.set_title(f"{name}.weight ({kind})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors(r)) for r in range(2)]
    fig.legend(handles, ["rank 0", "rank 1"], loc="outside right center")
    fig.suptitle(
        "ParallelMLP on 2 ranks: x -> f (identity; backward: all-reduce) -> c_fc shard -> GELU\n"
        "-> c_proj shard -> g (all-reduce; backward: identity)"
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fsdp_bytes(rank: int, world_size: int, vocab: int) -> dict[str, int]:
    """One rank's parameter, gradient and AdamW bytes after one FSDP step of the e2e GPT."""
    from torch.distributed.tensor import DTensor

    from grader.tasks import ch3 as task
    from solutions.ch3.gpt import GPT, GPTConfig
    from solutions.ch6.fsdp import parameter_bytes, shard_model

    torch.manual_seed(0)
    model = shard_model(GPT(GPTConfig(vocab_size=vocab, block_size=task.BLOCK_SIZE, **task.MODEL)))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))[1].backward()
    optimizer.step()

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    state = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
    return {
        "parameters": parameter_bytes(model),
        "gradients": sum(local(p.grad) for p in model.parameters()),
        "AdamW state": sum(local(t) for t in state),
    }


def fsdp_memory(out: Path) -> None:
    """Bytes per rank of the e2e GPT's parameters, gradients and AdamW state under DDP, ZeRO-1
    and FSDP on 2 and 4 ranks, beside one process (FSDP measured on the ranks; DDP keeps
    everything, ZeRO-1 divides the AdamW state only)."""
    import torch._dynamo  # noqa: F401 -- imported by the first optimizer: once, before forking

    from grader.ranks import run_ranks
    from grader.tasks import ch3 as task

    vocab = len(set(task.corpus_text()))
    parts = ("parameters", "gradients", "AdamW state")
    whole = run_ranks(_fsdp_bytes, 1, vocab)[0]  # one process: everything
    bars: dict[str, dict[str, int]] = {"one\nprocess": whole}
    for n in (2, 4):
        measured = run_ranks(_fsdp_bytes, n, vocab)[0]
        bars[f"DDP\n{n} ranks"] = whole
        bars[f"ZeRO-1\n{n} ranks"] = whole | {"AdamW state": -(-whole["AdamW state"] // n)}
        bars[f"FSDP\n{n} ranks"] = measured
    fig, ax = plt.subplots(figsize=(11, 4.5), constrained_layout=True)
    bottom = [0.0] * len(bars)
    for part in parts:
        values = [b[part] / 1024 for b in bars.values()]
        ax.bar(list(bars), values, bottom=bottom, label=part)
        bottom = [a + v for a, v in zip(bottom, values, strict=True)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("KiB per rank")
    ax.set_title("What each rank stores for the e2e GPT (FSDP's bars measured on the ranks)")
    ax.legend()
    fig.savefig(out, dpi=110)
    plt.close(fig)


MAKERS: dict[str, Callable[[Path], None]] = {
    "attention_weights": attention_weights,
    "positional_encoding": positional_encoding,
    "lr_schedule": lr_schedule,
    "loss_curve": loss_curve,
    "bpe_merges": bpe_merges,
    "rope_rotation": rope_rotation,
    "gqa_heads": gqa_heads,
    "kv_cache": kv_cache,
    "moe_routing": moe_routing,
    "sft_loss_mask": sft_loss_mask,
    "fine_tuning_curves": fine_tuning_curves,
    "ring_all_reduce": ring_all_reduce,
    "ddp_vs_zero_memory": ddp_vs_zero_memory,
    "tensor_parallel_mlp": tensor_parallel_mlp,
    "fsdp_memory": fsdp_memory,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNGs")
    parser.add_argument("--only", nargs="+", choices=sorted(MAKERS), help="draw only these")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or MAKERS:
        path = args.out / f"{name}.png"
        MAKERS[name](path)
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
