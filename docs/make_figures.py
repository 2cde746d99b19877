"""Draw the pictures of the chapters from the project's own code: ``python docs/make_figures.py``.

Every figure is computed by the reference solutions (attention weights, positional encodings, the
trainer's learning-rate schedule, a short real training run, BPE merges), so a picture can never
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


MAKERS: dict[str, Callable[[Path], None]] = {
    "attention_weights": attention_weights,
    "positional_encoding": positional_encoding,
    "lr_schedule": lr_schedule,
    "loss_curve": loss_curve,
    "bpe_merges": bpe_merges,
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
