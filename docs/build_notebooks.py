"""Build the chapter notebooks from the cell lists below: ``python docs/build_notebooks.py``.

The notebooks are generated, never edited by hand: edit a cell here, rebuild, and commit both.
``python docs/build_notebooks.py --check`` exits 1 when a committed notebook differs from what
this file builds (the docs tests run the same check, validate every notebook with nbformat and
execute its code cells against ``solutions`` on CPU).

Each notebook's first code cell holds the one switch, ``TREE = "solutions"``; set it to
``"exercises"`` to run the same cells on your own code. Cells are small (seconds on a CPU) and
nothing is downloaded. Write code cells as ``ruff format`` would (the project's
``ruff check .`` and ``ruff format --check .`` read notebooks too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

DOCS = Path(__file__).resolve().parent

SETUP = """\
import importlib
import sys
from pathlib import Path

import torch

# The one switch: "solutions" (the reference) or "exercises" (your own code).
TREE = "solutions"

# Make the repository importable when Jupyter starts in docs/{chapter}/.
root = Path.cwd()
while not (root / "pyproject.toml").exists() and root != root.parent:
    root = root.parent
if str(root) not in sys.path:
    sys.path.insert(0, str(root))

{imports}
torch.manual_seed(0)
print(f"running against {{TREE}}/ from {{root}}")"""

PLOT_NOTE = (
    '# matplotlib is optional (pip install -e ".[docs]"): without it, this cell prints instead.'
)

CH2 = [
    (
        "markdown",
        """\
# Chapter 2: the Transformer, cell by cell

This notebook follows the chapter's sections: [2.1](2_1_why_attention.md),
[2.2 Attention](2_2_attention.md), [2.3 The other parts](2_3_block.md),
[2.4 The encoder-decoder](2_4_transformer.md) and
[2.5 Training and decoding](2_5_e2e.md). Every cell runs on a CPU in seconds.
The grader checks the same things more thoroughly: `python -m grader ch2`.""",
    ),
    (
        "code",
        SETUP.format(
            chapter="chapter02",
            imports="""\
attention = importlib.import_module(f"{TREE}.ch2.attention")
block = importlib.import_module(f"{TREE}.ch2.block")
transformer = importlib.import_module(f"{TREE}.ch2.transformer")
task = importlib.import_module("grader.tasks.ch2")  # the digits-to-words task (project code)""",
        ),
    ),
    (
        "markdown",
        """\
## 2.2 Scaled dot-product attention and masks

$\\operatorname{Attention}(Q, K, V) = \\operatorname{softmax}(QK^\\top / \\sqrt{d_k})\\,V$. Masks are
boolean and `True` means *may attend*. The result must match PyTorch's own implementation.""",
    ),
    (
        "code",
        """\
import torch.nn.functional as F

q, k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
mask = attention.causal_mask(6)
out, weights = attention.scaled_dot_product_attention(q, k, v, mask=mask)
reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
print("matches torch:", torch.allclose(out, reference, atol=1e-6))
print(weights[0].round(decimals=2))""",
    ),
    (
        "code",
        f"""\
{PLOT_NOTE}
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, m, title in zip(axes, (None, mask), ("no mask", "causal mask"), strict=True):
        w = attention.scaled_dot_product_attention(q, k, v, mask=m)[1][0]
        ax.imshow(w.numpy(), vmin=0, vmax=1)
        ax.set_title(title)
    plt.show()
else:
    print(weights[0].round(decimals=2))""",
    ),
    (
        "code",
        """\
# Padding: a query may not look at padded keys; a query that may see nothing gets zeros, not NaN.
ids = torch.tensor([[5, 6, 7, 0, 0]])
pad = attention.padding_mask(ids, pad_id=0)  # (B, 1, 1, S)
print(pad.shape, pad)
x = torch.randn(1, 5, 8)
_, w = attention.scaled_dot_product_attention(x, x, x, mask=pad)
print("weight on padding:", w[..., 3:].abs().max().item())
nothing = torch.zeros(1, 1, 5, dtype=torch.bool)
out, _ = attention.scaled_dot_product_attention(x, x, x, mask=nothing)
print(
    "fully masked rows are zeros:",
    bool((out == 0).all()),
    "and NaN-free:",
    not out.isnan().any().item(),
)""",
    ),
    (
        "markdown",
        """\
### Multi-head attention

`h` heads of size `d_model / h`, computed in one batched call. With the same weights it matches
`torch.nn.MultiheadAttention`.""",
    ),
    (
        "code",
        """\
mha = attention.MultiHeadAttention(d_model=16, n_heads=4).eval()
ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
with torch.no_grad():
    ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
    ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
    ref.out_proj.weight.copy_(mha.out_proj.weight)
    ref.out_proj.bias.copy_(mha.out_proj.bias)
x = torch.randn(2, 5, 16)
ours, ours_w = mha(x, x, x)
theirs, _ = ref(x, x, x)
print(
    tuple(ours.shape),
    tuple(ours_w.shape),
    "matches torch:",
    torch.allclose(ours, theirs, atol=1e-5),
)""",
    ),
    (
        "markdown",
        """\
## 2.3 Positions, LayerNorm, blocks

The sinusoidal encoding's dot products depend only on the offset between two positions.""",
    ),
    (
        "code",
        """\
pe = block.sinusoidal_positional_encoding(50, 32)
gram = pe @ pe.T
for offset in (1, 5, 10):
    diagonal = gram.diagonal(offset)
    print(f"offset {offset:2d}: PE[p].PE[p+k] ranges {diagonal.min():.4f} .. {diagonal.max():.4f}")

ln = block.LayerNorm(32)
x = torch.randn(4, 32) * 5 + 2
print("LayerNorm matches torch:", torch.allclose(ln(x), F.layer_norm(x, (32,)), atol=1e-5))""",
    ),
    (
        "code",
        """\
# Post-LN (the paper) and pre-LN (GPT-2) blocks differ only in where the LayerNorm sits.
x = torch.randn(2, 5, 16)
for norm_first in (False, True):
    encoder_block = block.EncoderBlock(16, n_heads=4, d_ff=64, norm_first=norm_first).eval()
    y = encoder_block(x)
    print(f"norm_first={norm_first}: output mean {y.mean():+.3f}, std {y.std():.3f}")""",
    ),
    (
        "markdown",
        """\
## 2.4 The encoder-decoder

Decoding one token at a time must give the same logits as the teacher-forced pass.""",
    ),
    (
        "code",
        """\
model = transformer.Transformer(
    src_vocab_size=len(task.SRC_VOCAB),
    tgt_vocab_size=len(task.TGT_VOCAB),
    d_model=32,
    n_heads=4,
    n_layers=2,
    d_ff=64,
    max_len=16,
    pad_id=task.PAD,
).eval()
src = task.pad_batch([task.encode_source(n) for n in (407, 12, 5019)])
tgt = task.pad_batch([task.encode_target(n) for n in (407, 12, 5019)])
logits = model(src, tgt)
memory, memory_mask = model.encode(src), attention.padding_mask(src, task.PAD)
agree = all(
    torch.allclose(
        model.decode(tgt[:, :t], memory, memory_mask)[:, -1], logits[:, t - 1], atol=1e-5
    )
    for t in range(1, tgt.size(1) + 1)
)
print(tuple(logits.shape), "step-by-step == teacher forcing:", agree)""",
    ),
    (
        "markdown",
        """\
## 2.5 Training on digits to words

A short run of the e2e stage's training loop (`grader/tasks/ch2.py`). The grader trains for 500
steps and asks for 90% exact match on held-out numbers; 200 steps already show the idea.""",
    ),
    (
        "code",
        """\
config = task.TrainConfig(d_model=32, n_layers=1, d_ff=64, steps=200, warmup_steps=20)
train_numbers, test_numbers = task.split_numbers(config.n_train, config.n_test)
model = task.make_model(transformer.Transformer, config)
losses = task.train(model, train_numbers, config)
print(f"loss: {losses[0]:.2f} at the start, {sum(losses[-20:]) / 20:.2f} at the end")
print(f"exact match on held-out numbers: {task.exact_match(model, test_numbers):.0%}")
for n, words in zip(test_numbers[:5], task.translate(model, test_numbers[:5]), strict=True):
    print(f"{n:5d} -> {words!r:40} (right: {task.number_to_words(n)!r})")""",
    ),
    (
        "code",
        """\
# Beam search keeps several hypotheses; with beam_size=1 it is greedy decoding.
src = task.pad_batch([task.encode_source(n) for n in test_numbers[:8]])
greedy = model.greedy_decode(src, bos_id=task.BOS, eos_id=task.EOS, max_len=10)
beam1 = model.beam_search(src, task.BOS, task.EOS, beam_size=1, max_len=10)
beam4 = model.beam_search(src, task.BOS, task.EOS, beam_size=4, max_len=10)
print(
    "beam 1 == greedy:",
    [task.decode_target(r) for r in beam1.tolist()]
    == [task.decode_target(r) for r in greedy.tolist()],
)
for n, row in zip(test_numbers[:3], beam4.tolist()[:3], strict=True):
    print(f"{n:5d} -> {task.decode_target(row)!r}")""",
    ),
]

CH3 = [
    (
        "markdown",
        """\
# Chapter 3: GPT, cell by cell

This notebook follows the chapter's sections in the grader's order ([3.1](3_1_overview.md) gives
the map): tokenize the built-in corpus ([3.2](3_2_tokenizer.md)), build a GPT
([3.4](3_4_gpt.md)), cut the data ([3.5](3_5_data.md)), train it for a few seconds
([3.6](3_6_trainer.md)), sample from it, save and reload it ([3.7](3_7_sampling.md)). The grader checks all of it more thoroughly:
`python -m grader ch3`.""",
    ),
    (
        "code",
        SETUP.format(
            chapter="chapter03",
            imports="""\
tokenizer_mod = importlib.import_module(f"{TREE}.ch3.tokenizer")
gpt = importlib.import_module(f"{TREE}.ch3.gpt")
data = importlib.import_module(f"{TREE}.ch3.data")
trainer_mod = importlib.import_module(f"{TREE}.ch3.trainer")
sampling = importlib.import_module(f"{TREE}.ch3.sampling")
corpus = importlib.import_module(f"{TREE}.ch3.corpus")""",
        ),
    ),
    (
        "markdown",
        """\
## 3.2 Tokenizers

A character tokenizer, and byte-level BPE learning its first merges on the built-in corpus.""",
    ),
    (
        "code",
        """\
text = corpus.generate_corpus(n_sentences=1500)
print(text[:160])
chars = tokenizer_mod.SimpleTokenizer(text)
print(f"{len(text):,} characters, {chars.vocab_size} distinct: {''.join(chars.stoi)!r}")

bpe = tokenizer_mod.BPETokenizer().train(text, vocab_size=256 + 12)
for (a, b), new_id in bpe.merges.items():
    print(f"{new_id}: {bpe.vocab[a]!r} + {bpe.vocab[b]!r} -> {bpe.vocab[new_id]!r}")
for s in ("the cat sees a ball.", "猫が箱を開ける 🐈"):
    ids = bpe.encode(s)
    print(len(s), "characters ->", len(ids), "tokens; round trip:", bpe.decode(ids) == s)""",
    ),
    (
        "markdown",
        """\
## 3.4 The model

Parameter counts (the tied LM head counted once), and the loss of an untrained model, which is
close to $\\ln V$.""",
    ),
    (
        "code",
        """\
import math

small = gpt.GPT(vocab_size=1000, n_embd=128, n_layer=4, n_head=4, block_size=64)
print(f"book's small config: {small.num_parameters():,} parameters")
with torch.device("meta"):  # shapes only, no memory: counting GPT-2 small is free
    gpt2 = gpt.GPT(gpt.GPTConfig())
print(f"GPT-2 small (the GPTConfig defaults): {gpt2.num_parameters():,} parameters")

config = gpt.GPTConfig(vocab_size=chars.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=48)
model = gpt.GPT(config)
idx = torch.tensor([chars.encode(text[:33])])
_, loss = model(idx[:, :-1], targets=idx[:, 1:])
print(f"untrained loss {loss.item():.3f}, ln(V) = {math.log(chars.vocab_size):.3f}")""",
    ),
    (
        "markdown",
        """\
## 3.5 Data without leakage""",
    ),
    (
        "code",
        """\
train_loader, val_loader = data.create_dataloaders(text, chars, block_size=32, batch_size=16)
train_set, val_set = train_loader.dataset, val_loader.dataset
print(
    "last training position:",
    max(train_set.positions(len(train_set) - 1)),
    "| first validation position:",
    min(val_set.positions(0)),
)""",
    ),
    (
        "markdown",
        """\
## 3.6 The trainer and its learning-rate schedule""",
    ),
    (
        "code",
        """\
trainer = trainer_mod.GPTTrainer(
    model,
    train_loader,
    val_loader,
    learning_rate=3e-3,
    warmup_steps=10,
    max_steps=80,
    eval_interval=20,
    eval_batches=5,
    device="cpu",
    quiet=True,
    tokenizer=chars,
)
print("lr at steps 0, 9, 10, 45, 80:", [f"{trainer.get_lr(s):.1e}" for s in (0, 9, 10, 45, 80)])""",
    ),
    (
        "markdown",
        """\
### A few seconds of training

The unigram baseline is the best loss without using the context; the validation loss must go
below it to show that the model reads its context.""",
    ),
    (
        "code",
        """\
from collections import Counter

ids = chars.encode(text)
counts = Counter(ids[: int(len(ids) * 0.9)])
total = sum(counts.values())
unigram = -sum(c / total * math.log(c / total) for c in counts.values())
history = trainer.train()
for record in history["val"]:
    print(f"step {record['step']:3d}: validation loss {record['loss']:.3f}")
print(f"unigram baseline {unigram:.3f}")""",
    ),
    (
        "markdown",
        """\
## 3.7 Sampling, and a checkpoint reloaded

The same seed gives the same text; a checkpoint reloaded into a fresh model gives it too.""",
    ),
    (
        "code",
        """\
import tempfile

prompt = torch.tensor([chars.encode("the ")])


def sample(m, seed, **kwargs):
    out = sampling.generate(m, prompt, 60, generator=torch.Generator().manual_seed(seed), **kwargs)
    return chars.decode(out[0].tolist())


for temperature in (0.0, 0.8, 1.5):
    print(f"temperature {temperature}: {sample(model, 0, temperature=temperature, top_k=10)!r}")

with tempfile.TemporaryDirectory() as folder:
    trainer.save_checkpoint(folder)
    ckpt = trainer_mod.read_checkpoint(folder)
    fresh = gpt.GPT(gpt.GPTConfig(**ckpt["config"]))
    fresh.load_state_dict(ckpt["model"])
print("reloaded model, same text:", sample(fresh, 1, top_p=0.9) == sample(model, 1, top_p=0.9))""",
    ),
]

CH4 = [
    (
        "markdown",
        """\
# Chapter 4: a modern LLM, cell by cell

This notebook follows the chapter's sections ([4.1](4_1_overview.md) gives the map): the new
layers ([4.2](4_2_norm_rope.md)), grouped-query attention and its cache
([4.3](4_3_attention.md)), the Llama model ([4.4](4_4_model.md)), a mixture of experts
([4.5](4_5_moe.md)), generation with the cache ([4.6](4_6_generate.md)) and a short training run
with chapter 3's trainer ([4.7](4_7_e2e.md)). Nothing is downloaded; every cell runs on a CPU in
seconds. The grader checks all of it more thoroughly: `python -m grader ch4`.""",
    ),
    (
        "code",
        SETUP.format(
            chapter="chapter04",
            imports="""\
layers = importlib.import_module(f"{TREE}.ch4.layers")
attention = importlib.import_module(f"{TREE}.ch4.attention")
llama = importlib.import_module(f"{TREE}.ch4.llama")
moe = importlib.import_module(f"{TREE}.ch4.moe")
generation = importlib.import_module(f"{TREE}.ch4.generate")
cli = importlib.import_module(f"{TREE}.ch4.cli")
recipe = importlib.import_module("grader.tasks.ch3")  # chapter 3's e2e task (project code)""",
        ),
    ),
    (
        "markdown",
        """\
## 4.2 RMSNorm and rotary positions

RMSNorm divides by the root mean square (no mean, no bias). RoPE turns each pair of dimensions
of a query or key by position times frequency, so a score depends only on the distance.""",
    ),
    (
        "code",
        """\
norm = layers.RMSNorm(16)
x = torch.randn(3, 16) * 4
reference = torch.nn.RMSNorm(16, eps=1e-6)
print("RMSNorm matches torch:", torch.allclose(norm(x), reference(x), atol=1e-6))

cos, sin = layers.rope_cache(head_dim=16, max_len=64)
q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)


def score(m, n):
    qm = layers.apply_rope(q, cos, sin, torch.tensor([m]))
    kn = layers.apply_rope(k, cos, sin, torch.tensor([n]))
    return (qm * kn).sum().item()


print("distance 4 at (4, 0), (20, 16), (60, 56):", [round(score(m, m - 4), 4) for m in (4, 20, 60)])""",
    ),
    (
        "markdown",
        """\
## 4.3 Grouped-query attention and the KV cache

Eight query heads share two key-value heads. Prefilling five tokens and then feeding one token
at a time through a `KVCache` gives the outputs of one full pass.""",
    ),
    (
        "code",
        """\
gqa = attention.GroupedQueryAttention(dim=32, n_heads=8, n_kv_heads=2).eval()
cos, sin = layers.rope_cache(head_dim=4, max_len=16)
x = torch.randn(1, 9, 32)
full = gqa(x, cos, sin)
cache = attention.KVCache(n_layers=1, batch_size=1, n_kv_heads=2, max_len=16, head_dim=4)
steps = [gqa(x[:, :5], cos, sin, start_pos=0, cache=cache)]
steps += [gqa(x[:, t : t + 1], cos, sin, start_pos=t, cache=cache) for t in range(5, 9)]
print("cached == full pass:", torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5))
print("the cache holds", tuple(cache.k[0].shape), "(batch, kv heads, max_len, head_dim)")""",
    ),
    (
        "markdown",
        """\
## 4.4 The Llama model

The published configurations give the published parameter counts (on the `meta` device: shapes,
no memory). A fresh small model's loss is close to $\\ln V$.""",
    ),
    (
        "code",
        """\
import math

published = {"Llama-3.2-1B": llama.LLAMA_3_2_1B, "Qwen2.5-0.5B": llama.QWEN2_5_0_5B}
with torch.device("meta"):
    for name, shape in published.items():
        print(f"{name}: {llama.Llama(shape).num_parameters():,} parameters")

config = llama.LlamaConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           hidden_dim=96, max_seq_len=64)  # fmt: skip
model = llama.Llama(config)
idx = torch.randint(0, 50, (4, 17))
_, loss = model(idx[:, :-1], targets=idx[:, 1:])
print(f"untrained loss {loss.item():.3f}, ln(V) = {math.log(50):.3f}")""",
    ),
    (
        "markdown",
        """\
## 4.5 A mixture of experts

Each token runs 2 of 4 experts; the load-balancing loss is 1 for a uniform router.""",
    ),
    (
        "code",
        """\
layer = moe.MoE(dim=16, hidden_dim=32, n_experts=4, top_k=2)
y, aux = layer(torch.randn(2, 6, 16))
print(tuple(y.shape), f"load-balancing loss {aux.item():.3f}")""",
    ),
    (
        "markdown",
        """\
## 4.6 Generation with a KV cache

The same greedy tokens with and without the cache, and the time each takes.""",
    ),
    (
        "code",
        """\
import time

prompt = torch.randint(0, 50, (1, 8))
timings = {}
for use_cache in (True, False):
    start = time.perf_counter()
    out = generation.generate(model, prompt, 48, temperature=0, use_cache=use_cache)
    timings[use_cache] = (out, time.perf_counter() - start)
print("same tokens:", torch.equal(timings[True][0], timings[False][0]))
print(f"with the cache {timings[True][1]:.3f} s, without {timings[False][1]:.3f} s")""",
    ),
    (
        "markdown",
        """\
## 4.7 Training with chapter 3's trainer

The e2e stage's recipe, shortened to 60 steps: chapter 3's corpus, loaders and `GPTTrainer`
train the Llama unchanged (the stage trains 200 steps).""",
    ),
    (
        "code",
        """\
def build(vocab_size):
    config = llama.LlamaConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                               hidden_dim=192, max_seq_len=recipe.BLOCK_SIZE)  # fmt: skip
    return llama.Llama(config)


trainer, tokenizer = recipe.train(seed=0, build=build, max_steps=60, warmup_steps=10)
print(f"validation loss after 60 steps: {trainer.evaluate():.3f}")
print(repr("the " + cli.sample_text(trainer.model, tokenizer, "the ", 120, seed=0)))""",
    ),
]

CH5 = [
    (
        "markdown",
        """\
# Chapter 5: fine-tuning and alignment, cell by cell

This notebook follows the chapter's sections ([5.1](5_1_overview.md) gives the map): LoRA
adapters on a small GPT ([5.2](5_2_lora.md)), a chat example and its loss mask
([5.3](5_3_sft.md)), the DPO loss of a chosen and a rejected answer ([5.4](5_4_dpo.md)), and the pieces of
GRPO ([5.5](5_5_rl.md)). The grader checks all of it more thoroughly:
`python -m grader ch5`.""",
    ),
    (
        "code",
        SETUP.format(
            chapter="chapter05",
            imports="""\
gpt = importlib.import_module(f"{TREE}.ch3.gpt")
lora = importlib.import_module(f"{TREE}.ch5.lora")
sft = importlib.import_module(f"{TREE}.ch5.sft")
dpo = importlib.import_module(f"{TREE}.ch5.dpo")
rl = importlib.import_module(f"{TREE}.ch5.rl")""",
        ),
    ),
    (
        "markdown",
        """\
## 5.2 LoRA

Adapters on the attention's q, k, v projection of a small GPT: the same logits while B is zero,
a fraction of the parameters to train, and a merge that changes nothing.""",
    ),
    (
        "code",
        """\
model = gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
idx = torch.randint(0, 64, (1, 16))
before = model(idx)[0]
print("adapted layers:", lora.apply_lora(model, r=4, alpha=8.0))
print("trainable numbers:", lora.mark_only_lora_trainable(model), "of", model.num_parameters())
print("same logits with fresh adapters:", torch.equal(model(idx)[0], before))
for name, p in model.named_parameters():
    if name.endswith("lora_B"):
        torch.nn.init.normal_(p, std=0.1)  # as if trained
adapted = model(idx)[0]
lora.merge_lora(model)
print("merged model, same logits:", torch.allclose(model(idx)[0], adapted, atol=1e-5))""",
    ),
    (
        "markdown",
        """\
## 5.3 Supervised fine-tuning

A conversation in the chat template, its labels (the assistant's tokens and end-of-turn only),
and the one shift of `collate`.""",
    ),
    (
        "code",
        """\
tok = sft.chat_tokenizer()
chat = [{"role": "user", "content": "2+5"}, {"role": "assistant", "content": "7"}]
print(sft.render_chat(chat))
ids, labels = sft.build_example(tok, chat)
for i, label in zip(ids, labels, strict=True):
    print(f"{tok.decode([i])!r:>16} {'learned' if label != -1 else '-'}")
x, y = sft.collate([(ids, labels)], pad_id=0)
print("x:", x.tolist())
print("y:", y.tolist())""",
    ),
    (
        "markdown",
        """\
## 5.4 Direct preference optimization

A policy and its frozen reference score a chosen and a rejected answer; the loss starts at
log 2, and a policy that raises the chosen answer earns a positive margin.""",
    ),
    (
        "code",
        """\
import math

config = gpt.GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
policy = gpt.GPT(config)
reference = dpo.frozen_reference(policy)
pairs = []
for answer in ("7", "8"):
    chat[1]["content"] = answer
    pairs.append(sft.build_example(tok, chat))
x, y = sft.collate(pairs, pad_id=0)
chosen, rejected = dpo.sequence_logprobs(policy, x, y)
ref_chosen, ref_rejected = dpo.sequence_logprobs(reference, x, y)
loss, r_w, r_l = dpo.dpo_loss(chosen[None], rejected[None], ref_chosen[None], ref_rejected[None])
print(f"loss {loss.item():.4f} (log 2 = {math.log(2):.4f}), margin {(r_w - r_l).item():+.3f}")""",
    ),
    (
        "markdown",
        """\
## 5.5 Reinforcement learning on a verifiable reward

Four sampled answers to one prompt, scored by a program: their advantages, which tokens count,
and the clipped loss right after sampling.""",
    ),
    (
        "code",
        """\
end = tok.special_tokens["<|end|>"]
prompt = sft.prompt_ids(tok, chat[:1])
answers = ["7", "8", "7", "12"]
rows = [prompt + tok.encode(a) + [end] for a in answers]
width = max(map(len, rows))
seq = torch.tensor([r + [end] * (width - len(r)) for r in rows])
rewards = torch.tensor([[float(a == "7") for a in answers]])
advantages = rl.group_advantages(rewards)[0]
x, y = rl.rollout_batch(seq, prompt_len=len(prompt), end_id=end)
logp = dpo.token_logprobs(policy, x, y)
loss = rl.grpo_loss(logp, logp.detach(), advantages, y != -1)
print("advantages:", [round(a, 2) for a in advantages.tolist()])
print("scored tokens per answer:", (y != -1).sum(-1).tolist(), "loss:", round(loss.item(), 4))""",
    ),
]

CH6 = [
    (
        "markdown",
        """\
# Chapter 6: training at scale, cell by cell

This notebook follows the chapter's sections ([6.1](6_1_overview.md) gives the map): joining a
process group and a ring all-reduce ([6.2](6_2_collectives.md)), data parallelism by hand
([6.3](6_3_ddp.md)), ZeRO-1 ([6.4](6_4_zero.md)), tensor parallelism
([6.5](6_5_tensor_parallel.md)), FSDP ([6.6](6_6_fsdp.md)) and training with torchrun
([6.7](6_7_e2e.md)). Each distributed cell runs a function on
several ranks with `grader.ranks.run_ranks`: one forked process per rank, joined in a gloo group
on this CPU, whose return values come back here. A real run starts the same code with
`torchrun --nproc_per_node N`. The grader checks all of it more thoroughly:
`python -m grader ch6`.""",
    ),
    (
        "code",
        SETUP.format(
            chapter="chapter06",
            imports="""\
dist = importlib.import_module("torch.distributed")
run_ranks = importlib.import_module("grader.ranks").run_ranks  # a process per rank (project code)
gpt = importlib.import_module(f"{TREE}.ch3.gpt")
dist_utils = importlib.import_module(f"{TREE}.ch6.dist_utils")
ddp = importlib.import_module(f"{TREE}.ch6.ddp")
zero = importlib.import_module(f"{TREE}.ch6.zero")""",
        ),
    ),
    (
        "markdown",
        """\
## 6.2 Collectives

`setup()` reads torchrun's variables (`run_ranks(..., init="env")` sets them, as torchrun
would) and joins the group; `shard` splits work like `torch.tensor_split`; `ring_all_reduce`
sums over the ranks with send and receive only, and must agree with `dist.all_reduce`.""",
    ),
    (
        "code",
        """\
def joins(rank, world_size):
    got = dist_utils.setup(timeout_s=10)
    dist_utils.cleanup()
    return got


print(run_ranks(joins, 2, init="env"))
print([dist_utils.shard(10, r, 3) for r in range(3)])


def ring_vs_torch(rank, world_size):
    x = torch.arange(7.0) * (rank + 1)  # 7 numbers on 3 ranks: chunks of 3, 2 and 2
    expected = x.clone()
    dist.all_reduce(expected)
    return dist_utils.ring_all_reduce(x), expected


for rank, (ours, theirs) in enumerate(run_ranks(ring_vs_torch, 3)):
    print(f"rank {rank}: {ours.tolist()} equals dist.all_reduce: {torch.equal(ours, theirs)}")""",
    ),
    (
        "markdown",
        """\
## 6.3 Data parallelism by hand

Two ranks start from different weights (on purpose), broadcast rank 0's, and take three steps
on halves of a batch: the same losses and parameters as one process on the whole batch.""",
    ),
    (
        "code",
        """\
config = gpt.GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=False)
x, y = torch.randint(0, 32, (4, 8)), torch.randint(0, 32, (4, 8))


def data_parallel(rank, world_size):
    torch.manual_seed(rank)  # a different model on every rank...
    model = gpt.GPT(config)
    ddp.broadcast_parameters(model)  # ...until rank 0's weights reach everyone
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mine = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
    losses = [ddp.train_step(model, optimizer, *mine) for _ in range(3)]
    return losses, torch.cat([p.detach().flatten() for p in model.parameters()])


# One process first: AdamW's first step imports torch._dynamo (seconds), which the ranks
# forked afterwards then inherit instead of importing it each.
torch.manual_seed(0)
model = gpt.GPT(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
alone = []
for _ in range(3):
    _, loss = model(x, y)
    alone.append(loss.item())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
one = torch.cat([p.detach().flatten() for p in model.parameters()])
(losses, params), _ = run_ranks(data_parallel, 2)
print("2 ranks:  ", [round(v, 6) for v in losses])
print("1 process:", [round(v, 6) for v in alone])
print("largest parameter difference:", (params - one).abs().max().item())""",
    ),
    (
        "code",
        """\
# Each rank its own part of each epoch; set_epoch gives every epoch its own order.
for epoch in (0, 1):
    parts = []
    for rank in range(2):
        sampler = ddp.ShardedSampler(10, rank, 2, seed=0)
        sampler.set_epoch(epoch)
        parts.append(list(sampler))
    print(f"epoch {epoch}: rank 0 {parts[0]}, rank 1 {parts[1]}")""",
    ),
    (
        "markdown",
        """\
## 6.4 ZeRO-1

`ShardedAdamW` keeps AdamW's state for 1/N of the flattened parameters on each of N ranks,
and still takes AdamW's step.""",
    ),
    (
        "code",
        """\
def zero_step(rank, world_size):
    model = gpt.GPT(config)  # run_ranks forks after torch.manual_seed below: same on all ranks
    optimizer = zero.ShardedAdamW(model.parameters(), lr=1e-2)
    mine = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
    model(*mine)[1].backward()
    optimizer.step()
    return optimizer.state_bytes(), torch.cat([p.detach().flatten() for p in model.parameters()])


for world_size in (1, 2, 4):
    torch.manual_seed(0)
    results = run_ranks(zero_step, world_size)
    print(f"{world_size} rank(s): state bytes per rank {[b for b, _ in results]}")
torch.manual_seed(0)
model = gpt.GPT(config)
adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
model(x, y)[1].backward()
adamw.step()
one = torch.cat([p.detach().flatten() for p in model.parameters()])
print("4 ranks against AdamW, largest difference:", (results[0][1] - one).abs().max().item())""",
    ),
    (
        "markdown",
        """\
## 6.5 Tensor parallelism

`ParallelMLP` splits `c_fc` by rows (output features) and `c_proj` by columns (input
features): on 2 ranks it gives the unsharded MLP's output, with one all-reduce in forward (g)
and one in backward (f), counted by PyTorch's `CommDebugMode`.""",
    ),
    (
        "code",
        """\
from torch import nn
from torch.distributed.tensor.debug import CommDebugMode

tensor_parallel = importlib.import_module(f"{TREE}.ch6.tensor_parallel")
full_mlp = nn.ModuleDict({"c_fc": nn.Linear(16, 64), "c_proj": nn.Linear(64, 16)})
h = torch.randn(2, 5, 16)
expected = full_mlp.c_proj(nn.functional.gelu(full_mlp.c_fc(h), approximate="tanh"))


def tensor_parallel_mlp(rank, world_size):
    mlp = tensor_parallel.ParallelMLP(16, 64)
    mlp.load_full(full_mlp)
    inputs = h.clone().requires_grad_()
    with CommDebugMode() as forward:
        out = mlp(inputs)
    with CommDebugMode() as backward:
        out.sum().backward()
    counts = forward.get_total_counts(), backward.get_total_counts()
    return tuple(mlp.c_fc.weight.shape), tuple(mlp.c_proj.weight.shape), out.detach(), counts


for rank, (fc, proj, out, counts) in enumerate(run_ranks(tensor_parallel_mlp, 2)):
    print(f"rank {rank}: c_fc {fc}, c_proj {proj}, collectives (forward, backward) {counts}")
    print("  equals the unsharded MLP:", torch.allclose(out, expected.detach(), atol=1e-6))""",
    ),
    (
        "markdown",
        """\
## 6.6 FSDP

`shard_model` makes each block, then the whole GPT, an FSDP unit: every parameter becomes a
sharded `DTensor`, and each rank holds about half of the bytes. Two ranks with half a batch each
take the same SGD steps as one process with the whole batch.""",
    ),
    (
        "code",
        """\
fsdp = importlib.import_module(f"{TREE}.ch6.fsdp")
torch.manual_seed(0)
state = gpt.GPT(config).state_dict()


def sgd_alone(world_size, rank):
    model = gpt.GPT(config)
    model.load_state_dict(state)
    if world_size > 1:
        fsdp.shard_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(3):
        loss = model(x.chunk(world_size)[rank], y.chunk(world_size)[rank])[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 5))
    return losses, fsdp.parameter_bytes(model)


def fully_sharded(rank, world_size):
    return sgd_alone(world_size, rank)


print("1 process: losses, parameter bytes", sgd_alone(1, 0))
for rank, result in enumerate(run_ranks(fully_sharded, 2)):
    print(f"rank {rank}:    losses (its half), parameter bytes", result)""",
    ),
    (
        "markdown",
        """\
## 6.7 Train your GPT with torchrun

`ch6/train.py` is what `torchrun --nproc_per_node 2 -m solutions.ch6.train --out DIR [--fsdp]`
runs. Here it runs on 2 forked ranks (`init="env"`: your `setup()` joins, as under torchrun) and
on 1, with the same global batch: the same losses, and rank 0's checkpoint is chapter 3's.""",
    ),
    (
        "code",
        """\
import tempfile

task = importlib.import_module("grader.tasks.ch6")  # the stage's small run (project code)
train = importlib.import_module(f"{TREE}.ch6.train")
folder = tempfile.mkdtemp()


def run_trainer(rank, world_size, *extra):
    argv = ["--out", *task.train_args(f"{folder}/{world_size}{''.join(extra)}", *extra)]
    return train.train(train.build_parser().parse_args([*argv, "--quiet"]))


one = [r["loss"] for r in run_ranks(run_trainer, 1, init="env")[0]["train"]]
two = [r["loss"] for r in run_ranks(run_trainer, 2, "--fsdp", init="env")[0]["train"]]
print("1 process:      ", [round(v, 5) for v in one])
print("2 ranks (FSDP): ", [round(v, 5) for v in two])
cli = importlib.import_module(f"{TREE}.ch3.cli")
cli.main(
    ["sample", "--checkpoint", f"{folder}/2--fsdp", "--prompt", "the ", "--max-new-tokens", "40"]
)""",
    ),
]

NOTEBOOKS = {
    DOCS / "chapter02" / "chapter02.ipynb": CH2,
    DOCS / "chapter03" / "chapter03.ipynb": CH3,
    DOCS / "chapter04" / "chapter04.ipynb": CH4,
    DOCS / "chapter05" / "chapter05.ipynb": CH5,
    DOCS / "chapter06" / "chapter06.ipynb": CH6,
}


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    """A notebook from ``(kind, source)`` pairs, with stable cell ids so rebuilds are identical."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(source, id=f"{prefix}-{i:02d}"))
    return nb


def render(path: Path) -> str:
    """The exact text the builder writes for the notebook at ``path``."""
    return nbformat.writes(build(NOTEBOOKS[path], path.stem)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in NOTEBOOKS:
        text = render(path)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(DOCS.parent)}")
    for path in stale:
        print(f"out of date: {path.relative_to(DOCS.parent)} (run python docs/build_notebooks.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
