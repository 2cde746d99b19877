"""Stage ch3 'gpt': the GPT-2 model, checked against torch.nn layers, a forward pass written here
from the same weights with torch.nn.functional, GPT-2's parameter counts and its HF layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grader.tree import load
from tests.helpers import (
    Mistake,
    check,
    check_close,
    check_equal,
    check_raises,
    fail,
    fill_parameters,
)

gpt = load("ch3.gpt")

WHERE = "ch3/gpt.py"
INIT = "ch3/gpt.py, GPT.__init__ and GPT._init_weights"
FORWARD = "ch3/gpt.py, GPT.forward"
ATTN = "ch3/gpt.py, CausalSelfAttention.forward"

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)


def tiny(**overrides) -> torch.nn.Module:
    model = gpt.GPT(gpt.GPTConfig(**(TINY | overrides)))
    return model.eval()


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter (LayerNorms and biases included) non-trivial values fixed by its name
    (``fill_parameters``: the same for every correct tree, whatever its initialisation drew)."""
    fill_parameters(model, seed)


def reference_forward(
    sd: dict[str, torch.Tensor], idx: torch.Tensor, n_head: int, head: str = "transformer.wte"
) -> torch.Tensor:
    """GPT-2's forward pass written out with torch.nn.functional from a state dict.

    The LM head is the token embedding (``head="lm_head"``: a separate matrix, the untied variant).
    """

    def ln(x, prefix):
        return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd.get(prefix + ".bias"))

    def linear(x, prefix):
        return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))

    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        a = ln(x, f"{h}.ln_1")
        q, k, v = linear(a, f"{h}.attn.c_attn").chunk(3, dim=-1)
        q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        att = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
        x = x + linear(att.transpose(1, 2).reshape(B, T, -1), f"{h}.attn.c_proj")
        m = F.gelu(linear(ln(x, f"{h}.ln_2"), f"{h}.mlp.c_fc"), approximate="tanh")
        x = x + linear(m, f"{h}.mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ sd[head + ".weight"].T


def expected_keys(n_layer: int, bias: bool = True) -> set[str]:
    per_block = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    keys = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"}
    keys |= {"transformer.ln_f.bias"} if bias else set()
    for i in range(n_layer):
        for name in per_block:
            keys.add(f"transformer.h.{i}.{name}.weight")
            if bias:
                keys.add(f"transformer.h.{i}.{name}.bias")
    return keys


def to_hf(model: torch.nn.Module, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """The model's weights in Hugging Face GPT-2's layout: Conv1D weights are (in, out)."""
    sd = {}
    for key, value in model.state_dict().items():
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.t().contiguous()
        sd[key.replace("transformer.", prefix, 1) if key.startswith("transformer.") else key] = (
            value
        )
    n_layer = model.config.n_layer
    T = model.config.block_size
    for i in range(n_layer):  # the causal-mask buffers HF checkpoints carry
        sd[f"{prefix}h.{i}.attn.bias"] = torch.ones(T, T).tril().view(1, 1, T, T)
        sd[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if not prefix:
        sd.pop("lm_head.weight", None)  # GPT2Model / model.safetensors has no LM head
    return sd


# -- structure ------------------------------------------------------------------------------------


def test_parameter_names_follow_gpt2():
    """The parameters have GPT-2's names (transformer.wte, transformer.h.0.attn.c_attn, ...)."""
    model = tiny()
    got = set(model.state_dict())
    expected = expected_keys(TINY["n_layer"]) | {"lm_head.weight"}
    missing, extra = sorted(expected - got), sorted(got - expected)
    check(
        not missing and not extra,
        f"the model's state_dict should have GPT-2's parameter names; missing {missing[:6]}, "
        f"unexpected {extra[:6]}. Look at {INIT} and the module docstring for the layout "
        "(buffers such as a causal mask should be registered with persistent=False).",
    )
    check_equal(
        tuple(model.transformer.h[0].mlp.c_fc.weight.shape),
        (4 * TINY["n_embd"], TINY["n_embd"]),
        "mlp.c_fc.weight's shape (the MLP is 4 * n_embd wide)",
        "ch3/gpt.py, MLP.__init__",
    )
    got = set(tiny(bias=False).state_dict())
    expected = expected_keys(TINY["n_layer"], bias=False) | {"lm_head.weight"}
    missing, extra = sorted(expected - got), sorted(got - expected)
    check(
        not missing and not extra,
        f"with bias=False no Linear or LayerNorm should have a bias; unexpected {extra[:6]}, "
        f"missing {missing[:6]}. Look at {INIT}.",
    )


def test_lm_head_is_tied_to_token_embedding():
    """lm_head.weight is the very tensor transformer.wte.weight (weight tying)."""
    model = tiny()
    check(
        model.lm_head.weight is model.transformer.wte.weight,
        "lm_head.weight should be the same Parameter as transformer.wte.weight (GPT-2 ties "
        f"them: one matrix reads tokens in and scores them out). Look at {INIT}.",
    )
    check(model.lm_head.bias is None, f"lm_head should have no bias. Look at {INIT}.")


def test_config_and_keyword_form():
    """GPT(config) and the book's GPT(vocab_size=..., ...) both give model.config as a GPTConfig."""
    a = gpt.GPT(**TINY)
    check(
        isinstance(a.config, gpt.GPTConfig),
        f"model.config should be a GPTConfig, got {type(a.config).__name__}. Look at {INIT}.",
    )
    check_equal(a.config, gpt.GPTConfig(**TINY), "GPT(**kwargs).config", INIT)
    check_equal(a.config.dropout, 0.0, "the default dropout", "ch3/gpt.py, GPTConfig")


def test_parameter_counts():
    """GPT-2 small has 124,439,808 parameters (tied weights once); the book's small config 929,536."""
    with torch.device("meta"):  # no memory, no time: only shapes
        small = gpt.GPT(
            gpt.GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
        )
    check_equal(
        small.num_parameters(),
        124_439_808,
        "GPT-2 small's num_parameters()",
        "ch3/gpt.py, GPT.num_parameters (count the tied wte/lm_head matrix once) and GPT.__init__",
    )
    book = gpt.GPT(vocab_size=1000, n_embd=128, n_layer=4, n_head=4, block_size=64)
    check_equal(
        book.num_parameters(),
        929_536,
        "num_parameters() of vocab 1000, n_embd 128, 4 layers, block 64",
        "ch3/gpt.py, GPT.num_parameters",
    )


# -- numerics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(bias):
    """LayerNorm equals torch.nn.LayerNorm with the same weights (and no bias when bias=False)."""
    ln = gpt.LayerNorm(24, bias=bias)
    ref = torch.nn.LayerNorm(24, elementwise_affine=True, bias=bias)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(24))
        ln.weight.copy_(ref.weight)
        if bias:
            ref.bias.copy_(torch.randn(24))
            ln.bias.copy_(ref.bias)
    x = 3 * torch.randn(2, 5, 24) + 1
    check_close(
        ln(x), ref(x), f"LayerNorm(bias={bias}) output", "ch3/gpt.py, LayerNorm.forward", atol=1e-5
    )


def test_attention_matches_sdpa():
    """CausalSelfAttention equals F.scaled_dot_product_attention(is_causal=True) on c_attn's q, k, v."""
    model = tiny()
    randomize(model)
    attn = model.transformer.h[0].attn
    B, T, C, nh = 2, 7, TINY["n_embd"], TINY["n_head"]
    x = torch.randn(B, T, C)
    q, k, v = F.linear(x, attn.c_attn.weight, attn.c_attn.bias).split(C, dim=2)

    def attend(q, k, v, *, transpose=True, is_causal=True):
        if transpose:
            q, k, v = (t.reshape(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        else:  # straight to (B, nh, T, hs): positions and heads mixed up
            q, k, v = (t.reshape(B, nh, T, C // nh) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, nh, T, hs)
        return F.linear(y.transpose(1, 2).reshape(B, T, C), attn.c_proj.weight, attn.c_proj.bias)

    mistakes = [
        Mistake(
            "attention without the causal mask (every position sees the later ones)",
            "pass is_causal=True, or fill the scores above the diagonal with -inf",
            attend(q, k, v, is_causal=False),
        ),
        Mistake(
            "heads split without a transpose (q, k, v viewed straight as (B, nh, T, hs), which "
            "mixes positions and heads)",
            "view them as (B, T, nh, hs), then .transpose(1, 2)",
            attend(q, k, v, transpose=False),
        ),
    ]
    with torch.no_grad():
        check_close(
            attn(x),
            attend(q, k, v),
            "CausalSelfAttention's output",
            ATTN,
            atol=1e-5,
            mistakes=mistakes,
            hint="q, k, v come from c_attn in that order, heads are n_embd // n_head wide, the "
            "mask is causal, and c_proj mixes the heads",
        )


def test_mlp_matches_functional_with_gpt2_gelu():
    """MLP equals c_proj(gelu(c_fc(x))) with GPT-2's tanh-approximated GELU."""
    model = tiny()
    randomize(model)
    mlp = model.transformer.h[0].mlp
    x = 3 * torch.randn(2, 5, TINY["n_embd"])  # wide inputs, where the two GELUs differ most

    def mlp_with(approximate: str) -> torch.Tensor:
        hidden = F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), approximate=approximate)
        return F.linear(hidden, mlp.c_proj.weight, mlp.c_proj.bias)

    exact_gelu = Mistake(
        "an MLP with the exact GELU (nn.GELU()), not GPT-2's tanh approximation",
        "use nn.GELU(approximate='tanh'): GPT-2's weights give GPT-2's logits only with its curve",
        mlp_with("none"),
    )
    with torch.no_grad():
        check_close(
            mlp(x),
            mlp_with("tanh"),
            "MLP's output",
            f"{WHERE}, MLP",
            atol=1e-5,
            mistakes=[exact_gelu],
            hint="it should be c_proj(gelu(c_fc(x))) with nn.GELU(approximate='tanh')",
        )


def test_forward_matches_reference():
    """logits and loss equal a GPT-2 forward pass written in the test from the same weights."""
    model = tiny()
    randomize(model)
    idx = torch.randint(0, TINY["vocab_size"], (3, 11))
    targets = torch.randint(0, TINY["vocab_size"], (3, 11))
    targets[0, :4] = -1  # ignored positions
    with torch.no_grad():
        try:
            logits, loss = model(idx, targets)
        except (IndexError, RuntimeError) as err:
            fail(
                f"model(idx, targets) failed on targets that contain -1 ({err}): positions whose "
                f"target is -1 must be ignored (F.cross_entropy(..., ignore_index=-1)). Look at {FORWARD}."
            )
        sd = model.state_dict()
        expected = reference_forward(sd, idx, TINY["n_head"])
        untied = Mistake(
            "the output of an LM head that is not tied to the token embedding",
            "make lm_head.weight the same Parameter as transformer.wte.weight",
            reference_forward(sd, idx, TINY["n_head"], head="lm_head"),
        )
    check_close(
        logits,
        expected,
        "the logits",
        f"{FORWARD} and the blocks",
        atol=1e-4,
        rtol=1e-4,
        mistakes=[untied] if "lm_head.weight" in sd else [],
        hint="pre-LN blocks x + attn(ln_1(x)), then x + mlp(ln_2(x)), then the final ln_f",
    )
    expected_loss = F.cross_entropy(
        expected.view(-1, TINY["vocab_size"]), targets.view(-1), ignore_index=-1
    )
    check(
        loss is not None and loss.dim() == 0,
        f"loss should be a scalar tensor when targets are given. Look at {FORWARD}.",
    )
    check_close(
        loss,
        expected_loss,
        "the loss",
        FORWARD,
        atol=1e-5,
        hint="the mean cross-entropy over the positions whose target is not -1",
    )
    no_loss = model(idx)
    check(
        isinstance(no_loss, tuple) and len(no_loss) == 2 and no_loss[1] is None,
        f"model(idx) without targets should return (logits, None). Look at {FORWARD}.",
    )


def test_causality():
    """Changing the tokens after position t never changes the logits at positions <= t."""
    model = tiny()
    randomize(model)
    idx = torch.randint(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        logits, _ = model(idx)
        for t in (0, 5, 10):
            changed = idx.clone()
            changed[:, t + 1 :] = torch.randint(0, TINY["vocab_size"], (2, 11 - t))
            again, _ = model(changed)
            before, after = logits[:, : t + 1], again[:, : t + 1]  # (2, t + 1, V)
            moved = ~torch.isclose(before, after, atol=1e-5)  # torch.allclose's test, per entry
            if bool(moved.any()):
                first = int(moved.nonzero()[0, 1])
                fail(
                    f"changing tokens after position {t} changed the logits at positions <= {t} "
                    f"(first at position {first}, by up to {float((after - before).abs().max()):.3g}"
                    f"; expected no change): the model sees the future. Look at {ATTN} (the "
                    "causal mask)."
                )
        prefix, _ = model(idx[:, :6])
    check_close(
        prefix,
        logits[:, :6],
        "logits of the first 6 tokens run alone",
        FORWARD,
        atol=1e-5,
        hint="positions must start at 0",
    )


def test_gpt2_initialisation():
    """Weights ~ N(0, 0.02), residual projections ~ N(0, 0.02/sqrt(2 n_layer)), biases 0, LN 1/0."""
    torch.manual_seed(0)
    model = gpt.GPT(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128)
    residual = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            check(bool((p == 1).all()), f"{name} should start at 1. Look at {INIT}.")
        elif name.endswith(".bias"):
            check(bool((p == 0).all()), f"{name} should start at 0. Look at {INIT}.")
        else:
            std = residual if name.endswith("c_proj.weight") else 0.02
            got = p.std().item()
            check(
                abs(got - std) < 0.1 * std and abs(p.mean().item()) < 0.2 * std,
                f"{name} should be drawn from N(0, {std:.4f}), but its std is {got:.4f} and its "
                f"mean {p.mean().item():.4f}. Look at {INIT}"
                + (" (residual projections get 0.02 / sqrt(2 * n_layer))." if std != 0.02 else "."),
            )


def test_loss_at_init_is_about_log_vocab():
    """At initialisation the model is nearly uniform: loss on random targets ~ ln(vocab_size)."""
    model = gpt.GPT(vocab_size=1000, block_size=64, n_layer=4, n_head=4, n_embd=128).eval()
    idx = torch.randint(0, 1000, (4, 64))
    targets = torch.randint(0, 1000, (4, 64))
    with torch.no_grad():
        _, loss = model(idx, targets)
    check(
        abs(loss.item() - math.log(1000)) < 0.15,
        f"the loss at initialisation should be close to ln(1000) = {math.log(1000):.3f}, got "
        f"{loss.item():.3f}: the initial weights are too large. Look at {INIT}.",
    )


def test_gradients_reach_every_parameter():
    """loss.backward() gives every parameter a finite, non-zero gradient."""
    model = tiny().train()
    randomize(model)
    idx = torch.randint(0, TINY["vocab_size"], (2, 9))
    _, loss = model(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    for name, p in model.named_parameters():
        check(
            p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0,
            f"{name} got no gradient (or a zero/NaN one) from the loss. Look at {FORWARD}: is "
            "every module used, and nothing detached?",
        )


# -- errors ---------------------------------------------------------------------------------------


def test_errors():
    """A sequence longer than block_size and n_embd not divisible by n_head raise ValueError."""
    model = tiny()
    too_long = torch.zeros(1, TINY["block_size"] + 1, dtype=torch.long)
    with check_raises(ValueError, "a sequence longer than block_size", FORWARD, match="block_size"):
        model(too_long)
    with check_raises(
        ValueError, "GPT(n_embd=32, n_head=3)", "ch3/gpt.py, GPTConfig or GPT.__init__"
    ):
        gpt.GPT(vocab_size=50, block_size=16, n_layer=1, n_head=3, n_embd=32)
    logits, _ = model(too_long[:, : TINY["block_size"]])
    check_equal(
        tuple(logits.shape),
        (1, TINY["block_size"], TINY["vocab_size"]),
        "logits shape at T = block_size",
        FORWARD,
    )


# -- Hugging Face layout --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["transformer.", ""], ids=["GPT2LMHeadModel", "GPT2Model"])
def test_from_hf_state_dict_round_trip(prefix):
    """GPT.from_hf_state_dict reads HF GPT-2 weights (Conv1D transposed) and gives the same logits."""
    model = tiny()
    randomize(model)
    hf = to_hf(model, prefix)
    loaded = gpt.GPT.from_hf_state_dict(hf, n_head=TINY["n_head"]).eval()
    check_equal(
        loaded.config,
        model.config,
        "the config inferred from the state dict",
        "ch3/gpt.py, GPT.from_hf_state_dict",
    )
    check(
        loaded.lm_head.weight is loaded.transformer.wte.weight,
        f"the loaded model must keep lm_head tied to wte. Look at {INIT}.",
    )
    idx = torch.randint(0, TINY["vocab_size"], (2, 10))
    with torch.no_grad():
        check_close(
            loaded(idx)[0],
            model(idx)[0],
            "logits of the model loaded from HF weights",
            "ch3/gpt.py, GPT.from_hf_state_dict and the parameter names",
            atol=1e-5,
        )
    with torch.no_grad():
        before = loaded(idx)[0]
        for value in hf.values():  # the loaded model must own its weights
            value.add_(1.0)
        check_close(
            loaded(idx)[0],
            before,
            "logits after the source state dict changed",
            "ch3/gpt.py, GPT.from_hf_state_dict",
            atol=0,
            hint="the model must own copies of the weights, not share the caller's tensors",
        )
    default_heads = gpt.GPT.from_hf_state_dict(to_hf(tiny(n_embd=128, n_head=2), prefix))
    check_equal(
        default_heads.config.n_head,
        2,
        "n_head inferred for n_embd=128 (GPT-2 heads are 64 wide)",
        "ch3/gpt.py, GPT.from_hf_state_dict",
    )
    broken = dict(hf)
    broken.pop(f"{prefix}h.1.mlp.c_fc.weight")
    with check_raises(
        ValueError, "a state dict with a missing weight", "ch3/gpt.py, GPT.from_hf_state_dict"
    ):
        gpt.GPT.from_hf_state_dict(broken, n_head=TINY["n_head"])
