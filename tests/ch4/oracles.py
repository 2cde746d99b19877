"""Oracles for the chapter 4 stage tests, written independently of the tree under test.

- RoPE as complex multiplication (Meta's formulation) in float64, with the rotate-half pairing
  ``(x[i], x[i + head_dim/2])``; Llama 3's frequency scaling as Meta's loop over frequencies.
- A whole Llama / Qwen2 / Mistral / Mixtral forward pass written with ``torch.nn.functional`` on
  a state dict under Hugging Face's names (``model.layers.0.self_attn.q_proj.weight``), with
  ``F.scaled_dot_product_attention`` on key-value heads repeated with ``repeat_interleave``, and
  the mixture of experts as a dense loop that runs every expert on every token.
- Random weights under those names, drawn from a seeded ``torch.Generator`` (so the expected
  values never depend on how the tree consumes torch's global random numbers), and folders in
  Hugging Face's checkpoint layout (config.json, model.safetensors or shards with an index).

``tests/ch4/test_hf_oracle.py`` checks these oracles against ``transformers`` where it is
installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.helpers import fail

# -- RoPE -----------------------------------------------------------------------------------------


def llama3_frequencies(
    inv_freq: list[float], factor: float, low: float, high: float, original_max_len: int
) -> list[float]:
    """Meta's ``apply_scaling`` (Llama 3.1), one frequency at a time."""
    low_wavelength, high_wavelength = original_max_len / low, original_max_len / high
    out = []
    for freq in inv_freq:
        wavelength = 2 * math.pi / freq
        if wavelength < high_wavelength:
            out.append(freq)
        elif wavelength > low_wavelength:
            out.append(freq / factor)
        else:
            smooth = (original_max_len / wavelength - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def inverse_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, float] | None = None
) -> torch.Tensor:
    """(head_dim/2,) float64: theta^(-2i/head_dim), scaled the Llama 3 way when asked."""
    freqs = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    if scaling is not None:
        freqs = llama3_frequencies(
            freqs,
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
            scaling["original_max_position_embeddings"],
        )
    return torch.tensor(freqs, dtype=torch.float64)


def rope_tables(
    head_dim: int, max_len: int, theta: float = 10000.0, scaling=None, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), (max_len, head_dim) float32, rotate-half columns (``interleaved``: Meta's
    layout, column 2i and 2i+1 share an angle, for naming that mistake)."""
    angles = torch.outer(
        torch.arange(max_len, dtype=torch.float64), inverse_frequencies(head_dim, theta, scaling)
    )
    wide = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat([angles, angles], -1)
    return wide.cos().float(), wide.sin().float()


def rotate(x: torch.Tensor, angles: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Turn each pair of ``x`` (..., head_dim) by ``angles`` (broadcastable to (..., head_dim/2))
    as complex numbers: pair i is (x[i], x[i + head_dim/2]), or (x[2i], x[2i+1]) if
    ``interleaved``. Computed in float64, returned in x's dtype."""
    half = x.shape[-1] // 2
    x64 = x.double()
    if interleaved:
        re, im = x64[..., 0::2], x64[..., 1::2]
    else:
        re, im = x64[..., :half], x64[..., half:]
    z = torch.complex(re, im) * torch.polar(torch.ones_like(angles.double()), angles.double())
    if interleaved:
        out = torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    else:
        out = torch.cat([z.real, z.imag], dim=-1)
    return out.to(x.dtype)


def rope_angles(positions: torch.Tensor, head_dim: int, theta=10000.0, scaling=None):
    """positions (T,) or (B, T) -> angles (T, hd/2) or (B, 1, T, hd/2), float64."""
    angles = positions.double()[..., None] * inverse_frequencies(head_dim, theta, scaling)
    return angles[:, None] if positions.dim() == 2 else angles


# -- random weights under Hugging Face's names ---------------------------------------------------


def hf_config(arch: str = "LlamaForCausalLM", **overrides: Any) -> dict[str, Any]:
    """A tiny config.json (as a dict) of ``arch``, as transformers writes it."""
    config: dict[str, Any] = {
        "architectures": [arch],
        "model_type": {
            "LlamaForCausalLM": "llama",
            "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2",
            "MixtralForCausalLM": "mixtral",
        }[arch],
        "vocab_size": 61,
        "hidden_size": 32,
        "intermediate_size": 40,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }
    if arch == "MixtralForCausalLM":
        config |= {"num_local_experts": 4, "num_experts_per_tok": 2}
    config |= overrides
    return config


def rope_settings(config: Mapping[str, Any]) -> tuple[float, dict | None]:
    """RoPE's base and Llama 3 scaling from a config.json, wherever they are written."""
    block = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", block.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or block
    return theta, (scaling if scaling.get("rope_type") == "llama3" else None)


def _layer_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    C, H = config["hidden_size"], config["intermediate_size"]
    hd = C // config["num_attention_heads"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * hd
    shapes = {
        "input_layernorm.weight": (C,),
        "post_attention_layernorm.weight": (C,),
        "self_attn.q_proj.weight": (C, C),
        "self_attn.k_proj.weight": (kv, C),
        "self_attn.v_proj.weight": (kv, C),
        "self_attn.o_proj.weight": (C, C),
    }
    if config["architectures"][0] == "Qwen2ForCausalLM":
        shapes |= {"self_attn.q_proj.bias": (C,), "self_attn.k_proj.bias": (kv,)}
        shapes |= {"self_attn.v_proj.bias": (kv,)}
    if config["architectures"][0] == "MixtralForCausalLM":
        E = config["num_local_experts"]
        shapes["block_sparse_moe.gate.weight"] = (E, C)
        for e in range(E):
            shapes[f"block_sparse_moe.experts.{e}.w1.weight"] = (H, C)
            shapes[f"block_sparse_moe.experts.{e}.w2.weight"] = (C, H)
            shapes[f"block_sparse_moe.experts.{e}.w3.weight"] = (H, C)
    else:
        shapes |= {"mlp.gate_proj.weight": (H, C), "mlp.up_proj.weight": (H, C)}
        shapes["mlp.down_proj.weight"] = (C, H)
    return shapes


def hf_state_dict(config: Mapping[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a config under Hugging Face's names: norms near 1, the rest of a size
    that keeps the activations O(1); no ``lm_head.weight`` when the embeddings are tied."""
    g = torch.Generator().manual_seed(seed)
    C, V = config["hidden_size"], config["vocab_size"]
    sd = {"model.embed_tokens.weight": torch.randn(V, C, generator=g)}
    for i in range(config["num_hidden_layers"]):
        for name, shape in _layer_shapes(config).items():
            if name.endswith("layernorm.weight"):
                value = 1 + 0.3 * torch.randn(shape, generator=g)
            elif name.endswith("bias"):
                value = 0.5 * torch.randn(shape, generator=g)
            else:
                value = torch.randn(shape, generator=g) / math.sqrt(shape[1])
            sd[f"model.layers.{i}.{name}"] = value
    sd["model.norm.weight"] = 1 + 0.3 * torch.randn(C, generator=g)
    if not config.get("tie_word_embeddings", False):
        sd["lm_head.weight"] = torch.randn(V, C, generator=g) / math.sqrt(C)
    return sd


def ours(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict of a dense model under the tree's names (``model.`` dropped)."""
    return {k.removeprefix("model."): v for k, v in sd.items()}


# -- the forward pass -----------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def causal(S: int) -> torch.Tensor:
    """(S, S) bool, True on and below the diagonal."""
    return torch.ones(S, S, dtype=torch.bool).tril()


def attention(
    x: torch.Tensor,
    sd: Mapping[str, torch.Tensor],
    prefix: str,
    n_heads: int,
    n_kv_heads: int,
    angles: torch.Tensor,
    mask: torch.Tensor,
    *,
    tile_kv: bool = False,
    interleaved: bool = False,
) -> torch.Tensor:
    """Grouped-query self-attention over all of ``x`` (B, S, C) with the (.., S, S) ``mask``.

    ``tile_kv`` repeats the kv heads with ``repeat`` (0 1 0 1), a mistake; ``interleaved`` pairs
    neighbouring dimensions in RoPE, another."""
    B, S, C = x.shape
    hd = C // n_heads

    def project(name: str, heads: int) -> torch.Tensor:
        y = F.linear(x, sd[f"{prefix}{name}.weight"], sd.get(f"{prefix}{name}.bias"))
        return y.view(B, S, heads, hd).transpose(1, 2)  # (B, heads, S, hd)

    q = rotate(project("q_proj", n_heads), angles, interleaved)
    k = rotate(project("k_proj", n_kv_heads), angles, interleaved)
    v = project("v_proj", n_kv_heads)
    rep = n_heads // n_kv_heads
    if tile_kv:
        k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)
    else:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, S, hd)
    return F.linear(y.transpose(1, 2).reshape(B, S, C), sd[f"{prefix}o_proj.weight"])


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def moe_dense(
    x: torch.Tensor,
    gate: torch.Tensor,
    experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    top_k: int,
    *,
    softmax_over_all: bool = False,
) -> torch.Tensor:
    """Every expert on every token, weighted by softmax over the chosen experts' logits (0 for
    the others); ``softmax_over_all`` keeps the full softmax's probabilities, not renormalised
    over the chosen ones (a mistake)."""
    logits = F.linear(x, gate)  # (..., E)
    top = logits.topk(top_k, dim=-1)
    if softmax_over_all:
        chosen = torch.softmax(logits, dim=-1).gather(-1, top.indices)
    else:
        chosen = torch.softmax(top.values, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, top.indices, chosen)  # (..., E)
    outputs = torch.stack([swiglu(x, *expert) for expert in experts], dim=-1)  # (..., C, E)
    return (outputs * weights[..., None, :]).sum(-1)


def experts_of(sd: Mapping[str, torch.Tensor], prefix: str, n_experts: int):
    """[(gate, up, down)] of Mixtral's experts (w1, w3, w2) under ``prefix``."""
    return [
        tuple(sd[f"{prefix}experts.{e}.w{w}.weight"] for w in (1, 3, 2)) for e in range(n_experts)
    ]


def forward(
    sd: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    idx: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    tile_kv: bool = False,
    untied: bool = False,
) -> torch.Tensor:
    """Logits (B, S, V) of a Hugging Face Llama/Mistral/Qwen2/Mixtral state dict on ``idx``.

    ``mask`` (.., S, S) defaults to causal and ``positions`` (S,) to 0..S-1; the other flags
    compute a named mistake (see :func:`attention`; ``untied`` reads the logits through
    ``lm_head.weight`` even when the config ties it to the embedding)."""
    S = idx.size(1)
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_heads)
    hd = config["hidden_size"] // n_heads
    eps = config.get("rms_norm_eps", 1e-6)
    theta, scaling = rope_settings(config)
    positions = torch.arange(S) if positions is None else positions
    angles = rope_angles(positions, hd, theta, scaling)
    mask = causal(S) if mask is None else mask
    x = sd["model.embed_tokens.weight"][idx]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        x = x + attention(h, sd, p + "self_attn.", n_heads, n_kv, angles, mask, tile_kv=tile_kv)
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        if config["architectures"][0] == "MixtralForCausalLM":
            E, k = config["num_local_experts"], config["num_experts_per_tok"]
            moe = p + "block_sparse_moe."
            x = x + moe_dense(h, sd[moe + "gate.weight"], experts_of(sd, moe, E), k)
        else:
            mlp = [sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down")]
            x = x + swiglu(h, *mlp)
    x = rms_norm(x, sd["model.norm.weight"], eps)
    tied = config.get("tie_word_embeddings", False) and not untied
    head = sd["model.embed_tokens.weight"] if tied else sd["lm_head.weight"]
    return x @ head.T


# -- checkpoint folders ---------------------------------------------------------------------------


def write_folder(
    folder: Path,
    sd: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    save_file,
    shards: int = 1,
) -> Path:
    """A Hugging Face checkpoint folder: config.json and model.safetensors, or ``shards`` files
    ``model-0000i-of-0000n.safetensors`` with model.safetensors.index.json. ``save_file`` is
    chapter 3's safetensors writer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    keys = list(sd)
    if shards == 1:
        save_file({k: sd[k] for k in keys}, folder / "model.safetensors")
        return folder
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: sd[k] for k in part}, folder / name)
        weight_map |= {k: name for k in part}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def copy_into(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Load a dense Hugging Face state dict into the tree's model by name, or fail naming the
    names that do not match (the module docstring lists them)."""
    theirs = ours(sd)
    own = model.state_dict()
    tied = "lm_head.weight" not in theirs
    missing = sorted(k for k in theirs if k not in own)
    extra = sorted(k for k in own if k not in theirs and not (tied and k == "lm_head.weight"))
    if missing or extra:
        fail(
            f"the model's parameter names should be Hugging Face's without 'model.' (the module "
            f"docstring lists them); expected but missing {missing[:4]}, unexpected {extra[:4]}. "
            f"Look at {where}."
        )
    with torch.no_grad():
        for name, value in theirs.items():
            own[name].copy_(value)


_INIT = torch.nn.init
_RANDOM_FILLS = {
    torch.Tensor.normal_,
    torch.Tensor.uniform_,
    _INIT.normal_,
    _INIT.uniform_,
    _INIT.trunc_normal_,
    _INIT.kaiming_uniform_,
    _INIT.kaiming_normal_,
    _INIT.xavier_uniform_,
    _INIT.xavier_normal_,
}


class _SkipRandomFills(TorchFunctionMode):
    """Random initialisation does nothing: on the meta device it only costs time (the first
    random fill there loads PyTorch's Python meta kernels, 3-6 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RANDOM_FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


@contextmanager
def shapes_only() -> Iterator[None]:
    """Build modules on the meta device (shapes, no memory) without running random init."""
    with torch.device("meta"), _SkipRandomFills():
        yield
