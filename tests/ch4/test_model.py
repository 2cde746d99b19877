"""Stage ch4 'model': the Llama model against a forward pass written here with torch.nn.functional
from the same weights (Llama, Qwen2 and Mistral layouts), the KV-cache property, the published
parameter counts, and loading Hugging Face folders written here with chapter 3's safetensors
writer and a hand-made config.json (tests/ch4/test_hf_oracle.py checks this oracle against
transformers, and the loader on folders transformers saved, where transformers is installed)."""

from __future__ import annotations

import math

import pytest
import torch

from grader.tree import load
from tests.ch4 import oracles
from tests.helpers import Mistake, check, check_close, check_equal, check_raises, fail_if_mistake

llama = load("ch4.llama")
safetensors_io = load("ch3.safetensors_io")

INIT = "ch4/llama.py, Llama.__init__"
FORWARD = "ch4/llama.py, Llama.forward and Block.forward"
COUNT = "ch4/llama.py, Llama.num_parameters and Llama.__init__"
LOAD = (
    "ch4/llama.py, the parameter names of Llama.__init__ and Block.__init__ (load_hf loads by name)"
)


def our_config(config: dict, **overrides) -> object:
    """The tree's LlamaConfig for a config.json dict, field by field (written out here)."""
    rope = config.get("rope_parameters") or {}
    fields = dict(
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config["num_key_value_heads"],
        hidden_dim=config["intermediate_size"],
        max_seq_len=config["max_position_embeddings"],
        rope_theta=config.get("rope_theta", rope.get("rope_theta", 10000.0)),
        norm_eps=config["rms_norm_eps"],
        tie_embeddings=config["tie_word_embeddings"],
        attention_bias=config["architectures"][0] == "Qwen2ForCausalLM",
    )
    return llama.LlamaConfig(**(fields | overrides))


LLAMA = oracles.hf_config("LlamaForCausalLM")
QWEN2 = oracles.hf_config("Qwen2ForCausalLM", tie_word_embeddings=True, rms_norm_eps=1e-6)
MISTRAL = oracles.hf_config("MistralForCausalLM", num_key_value_heads=4, rope_theta=1e6)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def model_with(config: dict, seed: int = 0):
    """The tree's Llama of ``config`` holding the oracle's random weights (drawn first)."""
    sd = oracles.hf_state_dict(config, seed)
    model = llama.Llama(our_config(config))
    oracles.copy_into(model, sd, LOAD)
    return model.eval(), sd


def tokens(config: dict, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, config["vocab_size"], shape, generator=torch.Generator().manual_seed(seed)
    )


# -- structure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [LLAMA, QWEN2], ids=["llama", "qwen2"])
def test_parameter_names_follow_hugging_face(config):
    """The state dict has Hugging Face's names without 'model.' (embed_tokens, layers.0.self_attn...)."""
    model = llama.Llama(our_config(config))
    got = set(model.state_dict())
    expected = set(oracles.ours(oracles.hf_state_dict(config))) | {"lm_head.weight"}
    missing, extra = sorted(expected - got), sorted(got - expected)
    check(
        not missing and not extra,
        f"the model's state dict should have Hugging Face's names (the module docstring lists "
        f"them); missing {missing[:5]}, unexpected {extra[:5]}. Look at {INIT} and "
        "Block.__init__ (the RoPE tables are buffers with persistent=False).",
    )


def test_tied_embeddings():
    """With tie_embeddings lm_head.weight is embed_tokens.weight; without, a matrix of its own."""
    tied = llama.Llama(our_config(QWEN2))
    check(
        tied.lm_head.weight is tied.embed_tokens.weight,
        f"with tie_embeddings=True lm_head.weight should be the same Parameter as "
        f"embed_tokens.weight. Look at {INIT}.",
    )
    untied = llama.Llama(our_config(LLAMA))
    check(
        untied.lm_head.weight is not untied.embed_tokens.weight,
        f"with tie_embeddings=False lm_head should have its own weight. Look at {INIT}.",
    )
    check(untied.lm_head.bias is None, f"lm_head should have no bias. Look at {INIT}.")


def _closed_form(c, qkv_bias: bool) -> int:
    """Parameters of a dense Llama: embeddings once (tied), per layer attention, SwiGLU, norms."""
    kv = c.n_kv_heads * (c.dim // c.n_heads)
    attention = 2 * c.dim * c.dim + 2 * c.dim * kv + ((c.dim + 2 * kv) if qkv_bias else 0)
    per_layer = attention + 3 * c.dim * c.hidden_dim + 2 * c.dim
    head = 0 if c.tie_embeddings else c.vocab_size * c.dim
    return c.vocab_size * c.dim + c.n_layers * per_layer + c.dim + head


@pytest.mark.parametrize(
    ("name", "published", "qkv_bias"),
    [("LLAMA_3_2_1B", 1_235_814_400, False), ("QWEN2_5_0_5B", 494_032_768, True)],
    ids=["llama-3.2-1b", "qwen2.5-0.5b"],
)
def test_published_parameter_counts(name, published, qkv_bias):
    """Llama-3.2-1B has 1,235,814,400 parameters and Qwen2.5-0.5B 494,032,768 (tied, once)."""
    config = getattr(llama, name)
    check_equal(_closed_form(config, qkv_bias), published, f"the closed form for {name}", COUNT)
    with oracles.shapes_only():  # no memory, no time
        model = llama.Llama(config)
    got = model.num_parameters()
    if got != published:
        fail_if_mistake(
            got,
            [
                Mistake(
                    "a count with the tied embedding matrix counted twice",
                    "tie lm_head.weight to embed_tokens.weight and count each Parameter once",
                    published + config.vocab_size * config.dim,
                ),
                Mistake(
                    "a count without the q/k/v biases",
                    "give q_proj, k_proj and v_proj a bias when config.attention_bias",
                    published
                    - config.n_layers * (config.dim + 2 * config.n_kv_heads * config.head_dim),
                ),
            ],
            f"{name}'s num_parameters()",
            COUNT,
        )
    check_equal(got, published, f"{name}'s num_parameters()", COUNT)


def test_initialisation():
    """Weights ~ N(0, 0.02), o_proj and down_proj ~ N(0, 0.02/sqrt(2 n_layers)), norms 1, biases 0."""
    torch.manual_seed(0)
    config = llama.LlamaConfig(
        vocab_size=500, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=256,
        attention_bias=True,
    )  # fmt: skip
    model = llama.Llama(config)
    residual = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            check(bool((p == 1).all()), f"{name} should start at 1. Look at {INIT}.")
        elif name.endswith(".bias"):
            check(bool((p == 0).all()), f"{name} should start at 0. Look at {INIT}.")
        else:
            std = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            got = p.std().item()
            check(
                abs(got - std) < 0.15 * std and abs(p.mean().item()) < 0.2 * std,
                f"{name} should be drawn from N(0, {std:.4f}), but its std is {got:.4f}. Look "
                f"at {INIT}"
                + (
                    " (o_proj and down_proj get 0.02 / sqrt(2 * n_layers))." if std != 0.02 else "."
                ),
            )


# -- numerics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [LLAMA, QWEN2, MISTRAL], ids=["llama", "qwen2", "mistral"])
def test_forward_matches_reference(config):
    """logits and loss equal a forward pass written here from the same weights."""
    idx, targets = tokens(config, (2, 11), 1), tokens(config, (2, 11), 2)
    targets[0, :3] = -1  # ignored
    model, sd = model_with(config)
    with torch.no_grad():
        logits, loss = model(idx, targets)
        expected = oracles.forward(sd, config, idx)
        mistakes = [Mistake(
            "attention with key-value heads tiled by repeat instead of repeat_interleave",
            "repeat_interleave the kv heads (ch4/attention.py)",
            oracles.forward(sd, config, idx, tile_kv=True),
        )]  # fmt: skip
    check_close(
        logits,
        expected,
        "the logits",
        FORWARD,
        atol=1e-4,
        mistakes=mistakes,
        hint="pre-norm blocks x + self_attn(input_layernorm(x)), x + mlp(post_attention_"
        "layernorm(x)), then norm and lm_head",
    )
    expected_loss = torch.nn.functional.cross_entropy(
        expected.view(-1, config["vocab_size"]), targets.view(-1), ignore_index=-1
    )
    check(loss is not None and loss.dim() == 0, f"loss should be a scalar. Look at {FORWARD}.")
    check_close(loss, expected_loss, "the loss", FORWARD, atol=1e-5, hint="targets of -1 ignored")
    check(model(idx)[1] is None, f"model(idx) should return (logits, None). Look at {FORWARD}.")


def test_causality():
    """Changing the tokens after position t never changes the logits at positions <= t."""
    idx = tokens(LLAMA, (2, 12), 3)
    changed = idx.clone()
    changed[:, 7:] = tokens(LLAMA, (2, 5), 4)
    model, _ = model_with(LLAMA)
    with torch.no_grad():
        before, after = model(idx)[0][:, :7], model(changed)[0][:, :7]
    check_close(
        after,
        before,
        "the logits at positions 0..6 after changing tokens 7..11",
        FORWARD,
        hint="the model sees the future: look at the mask in ch4/attention.py",
    )


def test_cache_gives_the_full_pass_logits():
    """A prefill of 6 tokens, then 5 one-token steps through new_cache, equals the full pass."""
    idx = tokens(LLAMA, (2, 11), 5)
    model, _ = model_with(LLAMA)
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2, max_len=16)
        steps = [model(idx[:, :6], start_pos=0, cache=cache)[0]]
        for t in range(6, 11):
            steps.append(model(idx[:, t : t + 1], start_pos=t, cache=cache)[0])
    check_close(
        torch.cat(steps, dim=1),
        full,
        "the logits of a prefill and 5 one-token steps with the cache",
        FORWARD,
        atol=1e-5,
        hint="give every block its own layer index in the cache (layer=i) and the same start_pos",
    )


def test_new_cache():
    """new_cache(B, max_len) has n_layers layers of (B, n_kv_heads, max_len, head_dim) in the model's dtype."""
    model = llama.Llama(our_config(LLAMA)).to(torch.bfloat16)
    cache = model.new_cache(3, max_len=20)
    where = "ch4/llama.py, Llama.new_cache"
    check_equal(len(cache.k), LLAMA["num_hidden_layers"], "the number of cached layers", where)
    check_equal(tuple(cache.k[0].shape), (3, 2, 20, 4), "the shape of one layer's keys", where)
    check_equal(cache.v[1].dtype, torch.bfloat16, "the cache's dtype for a bfloat16 model", where)
    default = llama.Llama(our_config(LLAMA)).new_cache(1)
    check_equal(
        default.k[0].size(2), LLAMA["max_position_embeddings"], "the default max_len", where
    )


def test_loss_at_init_is_about_log_vocab():
    """At initialisation the loss on random targets is close to ln(vocab_size)."""
    idx = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(6))
    targets = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(7))
    config = llama.LlamaConfig(vocab_size=1000, dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                               hidden_dim=256)  # fmt: skip
    model = llama.Llama(config).eval()
    with torch.no_grad():
        _, loss = model(idx, targets)
    check(
        abs(loss.item() - math.log(1000)) < 0.15,
        f"the loss at initialisation should be close to ln(1000) = {math.log(1000):.3f}, got "
        f"{loss.item():.3f}: the initial weights are too large. Look at {INIT}.",
    )


def test_gradients_reach_every_parameter():
    """loss.backward() gives every parameter a finite, non-zero gradient."""
    idx = tokens(QWEN2, (2, 9), 8)
    model, _ = model_with(QWEN2)
    model.train()
    _, loss = model(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    for name, p in model.named_parameters():
        check(
            p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0,
            f"{name} got no gradient (or a zero or NaN one) from the loss. Look at {FORWARD}.",
        )


# -- Hugging Face folders, written here -----------------------------------------------------------


def _rope_in_block_only(config: dict) -> dict:
    """The config as recent transformers versions write it: RoPE's base only in the block."""
    return {k: v for k, v in config.items() if k != "rope_theta"}


FOLDERS = {
    "llama": (LLAMA, 1),
    "llama3-tied-rope_parameters": (
        _rope_in_block_only(
            oracles.hf_config(
                "LlamaForCausalLM",
                tie_word_embeddings=True,
                rope_parameters=LLAMA3 | {"rope_theta": 500000.0},
            )
        ),
        1,
    ),
    "llama3-rope_scaling": (
        oracles.hf_config("LlamaForCausalLM", rope_scaling=LLAMA3, rope_theta=500000.0),
        1,
    ),
    "qwen2-sharded": (QWEN2, 3),
    "mistral-sharded": (MISTRAL, 2),
}


@pytest.mark.parametrize("case", list(FOLDERS), ids=list(FOLDERS))
def test_load_hf_folder(case, tmp_path):
    """Llama.load_hf reads folders (config.json, one or several safetensors files) and gives the
    logits of the forward pass written here."""
    config, shards = FOLDERS[case]
    sd = oracles.hf_state_dict(config, seed=9)
    idx = tokens(config, (2, 40), 10)
    expected = oracles.forward(sd, config, idx)
    oracles.write_folder(tmp_path, sd, config, safetensors_io.save_file, shards)
    model = llama.Llama.load_hf(tmp_path)
    with torch.no_grad():
        got, _ = model(idx)
    mistakes = []
    if config.get("tie_word_embeddings"):
        check(
            model.lm_head.weight is model.embed_tokens.weight,
            f"the loaded model should keep lm_head tied to embed_tokens. Look at {INIT}.",
        )
    theta, scaling = oracles.rope_settings(config)
    if scaling is not None:
        unscaled = dict(config, rope_scaling=None, rope_parameters={"rope_theta": theta})
        mistakes.append(
            Mistake(
                "the logits without Llama 3's RoPE scaling",
                "pass config.rope_scaling to rope_cache",
                oracles.forward(sd, unscaled, idx),
            )
        )
    check_close(
        got,
        expected,
        f"the logits of the {case} folder",
        FORWARD,
        atol=1e-4,
        mistakes=mistakes,
        hint="rope_cache needs config.rope_theta and config.rope_scaling",
    )


def test_from_hf_copies_the_weights():
    """Llama.from_hf(state_dict, config) gives the same logits and owns its weights."""
    sd = oracles.hf_state_dict(QWEN2, seed=11)
    idx = tokens(QWEN2, (1, 8), 12)
    expected = oracles.forward(sd, QWEN2, idx)
    model = llama.Llama.from_hf(sd, QWEN2)
    with torch.no_grad():
        check_close(model(idx)[0], expected, "the logits of from_hf", FORWARD, atol=1e-4)
        for value in sd.values():
            value.add_(1.0)
        check_close(
            model(idx)[0],
            expected,
            "the logits after the source state dict changed",
            "ch4/llama.py, Llama.from_hf",
            atol=1e-4,
        )


def test_load_hf_names_the_file_of_a_bad_tensor(tmp_path):
    """A tensor of the wrong shape is a one-line ValueError naming the file and the tensor."""
    sd = oracles.hf_state_dict(LLAMA)
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    oracles.write_folder(tmp_path, sd, LLAMA, safetensors_io.save_file, shards=2)
    with check_raises(ValueError, "load_hf of a folder with a bad shape", LOAD) as raised:
        llama.Llama.load_hf(tmp_path)
    message = str(raised.value)
    check(
        "model.layers.1.mlp.up_proj.weight" in message and ".safetensors" in message,
        f"the error should name the tensor and its file, got {message!r}. Look at {LOAD}.",
    )
