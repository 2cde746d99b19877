"""A Llama-family decoder: the GPT of chapter 3 with the parts of 2023's open models.

What changed since GPT-2, one line each (the Llama papers, Touvron et al. 2023; Llama 3, 2024):
RMSNorm instead of LayerNorm, rotary positions (RoPE) instead of a learned position embedding,
SwiGLU instead of the GELU MLP, grouped-query attention, no biases (Qwen2 keeps them on q, k
and v), and optionally untied input and output embeddings. Mixtral swaps the feed-forward layer
for a mixture of experts (``moe.py``).

The parameter names are Hugging Face's, without its ``model.`` prefix, so that the weights of
``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` and ``MixtralForCausalLM``
load by name (:meth:`Llama.from_hf`, :meth:`Llama.load_hf`)::

    embed_tokens                 token embedding (vocab_size, dim)
    layers[i]                    n_layers pre-norm blocks:
        .input_layernorm             RMSNorm before attention
        .self_attn.q_proj/k_proj/v_proj/o_proj   grouped-query attention
        .post_attention_layernorm    RMSNorm before the feed-forward layer
        .mlp.gate_proj/up_proj/down_proj         SwiGLU (a MoE: .mlp.gate, .mlp.experts[e].*)
    norm                         final RMSNorm
    lm_head                      Linear(dim, vocab_size, bias=False), tied to embed_tokens or not

Parameter counts (:meth:`Llama.num_parameters`, a tied matrix counted once): Llama-3.2-1B's
configuration (:data:`LLAMA_3_2_1B`) has 1,235,814,400 parameters and Qwen2.5-0.5B's
(:data:`QWEN2_5_0_5B`) 494,032,768, as published.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..ch3.safetensors_io import load_file
from .attention import GroupedQueryAttention, KVCache
from .layers import RMSNorm, SwiGLU, rope_cache
from .moe import MoE


@dataclass
class LlamaConfig:
    """The shape of a Llama-family model. The defaults make a small model to train on a CPU.

    ``rope_scaling`` is Llama 3.1's ``{"factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}`` or None. ``attention_bias`` puts biases on q_proj,
    k_proj and v_proj (Qwen2). ``n_experts > 0`` makes every feed-forward layer a mixture of
    ``n_experts`` SwiGLU experts of which ``n_experts_per_tok`` run per token (Mixtral); its
    load-balancing loss is added to the training loss times ``router_aux_loss_coef``.

    Raises:
        ValueError: if a size is not positive, ``n_heads`` does not divide ``dim``,
            ``n_kv_heads`` does not divide ``n_heads``, the head size is odd, or
            ``n_experts_per_tok`` is not in 1..n_experts for a MoE.
    """

    vocab_size: int = 32000
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    hidden_dim: int = 688  # about 8/3 dim: SwiGLU's three matrices cost what a 4 dim MLP's two do
    max_seq_len: int = 2048  # the longest sequence RoPE's tables (and a cache) are built for
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    n_experts: int = 0
    n_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.01

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_seq_len, int) or self.max_seq_len <= 0:
            raise ValueError(f"LlamaConfig.max_seq_len must be positive, got {self.max_seq_len!r}")
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (grouped-query "
                "attention shares each key-value head among a group of query heads)"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"the head size dim // n_heads = {self.head_dim} must be even (RoPE)")
        if self.n_experts < 0 or (
            self.n_experts > 0 and not 1 <= self.n_experts_per_tok <= self.n_experts
        ):
            raise ValueError(
                f"a MoE needs 1 <= n_experts_per_tok <= n_experts, got n_experts={self.n_experts}"
                f" and n_experts_per_tok={self.n_experts_per_tok}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# Published configurations (their config.json), for parameter counts and the command line.
LLAMA_3_2_1B = LlamaConfig(
    vocab_size=128256,
    dim=2048,
    n_layers=16,
    n_heads=32,
    n_kv_heads=8,
    hidden_dim=8192,
    max_seq_len=131072,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    norm_eps=1e-5,
    tie_embeddings=True,
)
QWEN2_5_0_5B = LlamaConfig(
    vocab_size=151936,
    dim=896,
    n_layers=24,
    n_heads=14,
    n_kv_heads=2,
    hidden_dim=4864,
    max_seq_len=32768,
    rope_theta=1000000.0,
    norm_eps=1e-6,
    tie_embeddings=True,
    attention_bias=True,
)


class Block(nn.Module):
    """A pre-norm Llama block: ``x + self_attn(input_layernorm(x))``, then
    ``x + mlp(post_attention_layernorm(x))``; ``mlp`` is a :class:`SwiGLU` of ``hidden_dim``,
    or a :class:`MoE` of ``n_experts`` such experts when ``config.n_experts > 0``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.is_moe = config.n_experts > 0
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Block.__init__ in ch4/llama.py (read docs/chapter04/4_4_model.md#the-block-block)"
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        layer: int = 0,
        pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (B, T, dim) -> ``(x, aux_loss)``: (B, T, dim) and the MoE's load-balancing
        loss (a 0-d tensor, 0 for a dense block). The other arguments go to ``self_attn``."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Block.forward in ch4/llama.py (read docs/chapter04/4_4_model.md#the-forward-pass-forward)"
        )


class Llama(nn.Module):
    """A Llama-family language model: ``Llama(config)``; ``model.config`` is the config.

    Initialisation (as chapter 3's GPT-2): every Linear and Embedding weight ~ N(0, 0.02), biases
    0, RMSNorm weights 1, and the projections that write into the residual stream (``o_proj``,
    every ``down_proj``) ~ N(0, 0.02 / sqrt(2 n_layers)). With ``tie_embeddings``,
    ``lm_head.weight`` is the very Parameter ``embed_tokens.weight``.

    The RoPE tables for ``max_seq_len`` positions are the buffers ``rope_cos`` and ``rope_sin``
    (not saved in the state dict).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Llama.__init__ in ch4/llama.py (read docs/chapter04/4_4_model.md#the-architecture-llamaconfig-and-llama)"
        )
        self._build_rope()

    def _build_rope(self) -> None:
        """(Re)make the RoPE buffers from the config (also after loading onto the meta device)."""
        c = self.config
        device = self.embed_tokens.weight.device
        if device.type == "meta":  # shapes only (a parameter count, or before loading weights)
            cos = sin = torch.empty(c.max_seq_len, c.head_dim, device=device)
        else:
            cos, sin = rope_cache(c.head_dim, c.max_seq_len, c.rope_theta, c.rope_scaling, device)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, head_dim)
        self.register_buffer("rope_sin", sin, persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """N(0, 0.02) for one Linear or Embedding, its bias 0 (the residual rescaling is after)."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Llama._init_weights in ch4/llama.py (read docs/chapter04/4_4_model.md#the-initialisation-_init_weights)"
        )

    def num_parameters(self) -> int:
        """Number of parameters, a tied embedding/lm_head matrix counted once."""
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Llama.num_parameters in ch4/llama.py (read docs/chapter04/4_4_model.md#counting-the-parameters-num_parameters)"
        )

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache` for this model: ``n_layers`` layers of (batch_size,
        n_kv_heads, max_len, head_dim), ``max_len`` defaulting to ``config.max_seq_len``, in the
        dtype and on the device of the model's weights.

        Raises:
            ValueError: if ``max_len`` exceeds ``config.max_seq_len``.
        """
        c = self.config
        max_len = c.max_seq_len if max_len is None else max_len
        if max_len > c.max_seq_len:
            raise ValueError(f"max_len={max_len} is longer than max_seq_len={c.max_seq_len}")
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Llama.new_cache in ch4/llama.py (read docs/chapter04/4_4_model.md#a-cache-for-the-model-new_cache)"
        )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        start_pos: int = 0,
        cache: KVCache | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits for the ``T`` tokens ``idx``, which sit at ``start_pos`` onwards.

        Args:
            idx: (B, T) int64 token ids.
            targets: (B, T) the next token at each position, or None; -1 is ignored (padding).
            start_pos: the position of ``idx``'s first token: with ``cache``, the number of
                tokens already in it (0 for the prompt, then one more per generated token).
            cache: a :class:`KVCache` from :meth:`new_cache`, or None (attend within ``idx``).
            pad_mask: (B, start_pos + T) bool or None, True for real tokens and False for the
                left padding of shorter prompts (see ``GroupedQueryAttention.forward``).

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size); loss, with ``targets``, the mean
            cross-entropy over positions whose target is not -1, plus ``router_aux_loss_coef``
            times the sum of the MoE layers' load-balancing losses; None without ``targets``.

        Raises:
            ValueError: if ``idx`` is not 2-D or ``start_pos + T > max_seq_len``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        T = idx.size(1)
        if start_pos + T > self.config.max_seq_len:
            raise ValueError(
                f"positions up to {start_pos + T - 1} do not fit max_seq_len="
                f"{self.config.max_seq_len}: crop the context or build the model longer"
            )
        # TODO: write this part yourself.
        raise NotImplementedError(
            "ch4 stage 'model' not started: implement Llama.forward in ch4/llama.py (read docs/chapter04/4_4_model.md#the-forward-pass-forward)"
        )

    # -- Hugging Face checkpoints (given: you do not write these) --------------------------------

    @classmethod
    def from_hf(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        hf_config: Mapping[str, Any],
        dtype: torch.dtype = torch.float32,
    ) -> Llama:
        """A model holding the weights of a Hugging Face Llama, Mistral, Qwen2 or Mixtral.

        ``hf_config`` is the checkpoint's config.json as a dict (see :func:`config_from_hf`);
        ``state_dict`` its tensors under Hugging Face's names (``model.layers.0.self_attn.
        q_proj.weight``, ``lm_head.weight``; Mixtral's ``block_sparse_moe.gate`` and
        ``block_sparse_moe.experts.E.w1/w2/w3`` are our ``mlp.gate`` and ``mlp.experts[E].
        gate_proj/down_proj/up_proj``). With tied embeddings ``lm_head.weight`` may be absent.
        The weights are copied, in ``dtype``.

        Raises:
            ValueError: one line naming what is wrong: a config that cannot be read, a tensor
                missing or unexpected, or of the wrong shape.
        """
        return _from_hf(cls, state_dict, hf_config, dtype, {}, "the config")

    @classmethod
    def load_hf(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> Llama:
        """Load a Hugging Face checkpoint folder: ``config.json`` plus ``model.safetensors`` or
        the shards listed in ``model.safetensors.index.json`` (read with chapter 3's
        safetensors reader; nothing is downloaded).

        Raises:
            ValueError: one line naming the file: no config.json, no weights, a missing shard,
                an unsupported architecture, a tensor missing, unexpected or of the wrong shape.
        """
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{config_path}: not found (a Hugging Face folder has config.json)")
        try:
            hf_config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
        tensors, origin = _read_safetensors(folder)
        return _from_hf(cls, tensors, hf_config, dtype, origin, str(config_path))


# -- reading Hugging Face checkpoints ------------------------------------------------------------

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM")
_MODEL_TYPES = {"llama": 0, "mistral": 1, "qwen2": 2, "mixtral": 3}  # index into ARCHITECTURES


def config_from_hf(hf_config: Mapping[str, Any], source: str = "the config") -> LlamaConfig:
    """The :class:`LlamaConfig` of a Hugging Face config.json (a dict), by its field names.

    Reads ``architectures`` (or ``model_type``), ``vocab_size``, ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads`` (default: as many
    as the heads), ``intermediate_size``, ``max_position_embeddings``, ``rms_norm_eps``,
    ``tie_word_embeddings``; RoPE's base from a top-level ``rope_theta`` or from the
    ``rope_parameters`` block recent transformers versions write, and Llama 3.x's
    ``rope_scaling`` (``rope_type: "llama3"``, from either place); Mixtral's
    ``num_local_experts``, ``num_experts_per_tok`` and ``router_aux_loss_coef``. Qwen2 always
    has q/k/v biases.

    Raises:
        ValueError: naming ``source`` and the field: a missing required field, an architecture
            other than :data:`ARCHITECTURES`, or a feature this model does not implement
            (another RoPE scaling, biases on every Llama projection, a head size other than
            hidden_size / num_attention_heads, an activation other than silu, Qwen2's sliding
            window).
    """
    arch = _architecture(hf_config, source)

    def need(key: str) -> Any:
        if key not in hf_config:
            raise ValueError(f"{source}: missing the field {key!r} ({arch} needs it)")
        return hf_config[key]

    def unsupported(what: str) -> ValueError:
        return ValueError(f"{source}: {what} is not supported by this model")

    n_heads = need("num_attention_heads")
    dim = need("hidden_size")
    head_dim = hf_config.get("head_dim")
    if head_dim is not None and n_heads and head_dim != dim // n_heads:
        raise unsupported(f"head_dim={head_dim} (other than hidden_size / num_attention_heads)")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise unsupported(f"hidden_act={hf_config['hidden_act']!r}")
    if arch == "LlamaForCausalLM" and (
        hf_config.get("attention_bias") or hf_config.get("mlp_bias")
    ):
        raise unsupported("attention_bias or mlp_bias on a Llama (biases on every projection)")
    if arch == "Qwen2ForCausalLM" and hf_config.get("use_sliding_window"):
        raise unsupported("use_sliding_window=true")

    rope = hf_config.get("rope_parameters") or {}
    if not isinstance(rope, Mapping):
        raise ValueError(f"{source}: rope_parameters must be an object, got {rope!r}")
    theta = hf_config.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = hf_config.get("rope_scaling") or (rope if rope.get("rope_type") else None)
    rope_scaling = None
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "llama3":
            keys = ("factor", "low_freq_factor", "high_freq_factor")
            missing = [k for k in (*keys, "original_max_position_embeddings") if k not in scaling]
            if missing:
                raise ValueError(f"{source}: rope scaling 'llama3' lacks {missing}")
            rope_scaling = {k: float(scaling[k]) for k in keys}
            rope_scaling["original_max_position_embeddings"] = int(
                scaling["original_max_position_embeddings"]
            )
        elif kind != "default":
            raise unsupported(f"RoPE scaling of type {kind!r} (only 'llama3' is)")

    moe = arch == "MixtralForCausalLM"
    try:
        return LlamaConfig(
            vocab_size=need("vocab_size"),
            dim=dim,
            n_layers=need("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
            hidden_dim=need("intermediate_size"),
            max_seq_len=hf_config.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            rope_scaling=rope_scaling,
            norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            attention_bias=arch == "Qwen2ForCausalLM",
            n_experts=need("num_local_experts") if moe else 0,
            n_experts_per_tok=need("num_experts_per_tok") if moe else 2,
            router_aux_loss_coef=float(hf_config.get("router_aux_loss_coef", 0.01)),
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def _architecture(hf_config: Mapping[str, Any], source: str) -> str:
    names = hf_config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name
    model_type = hf_config.get("model_type")
    if not names and model_type in _MODEL_TYPES:
        return ARCHITECTURES[_MODEL_TYPES[model_type]]
    found = names or model_type
    raise ValueError(
        f"{source}: architecture {found!r} is not supported (this model loads "
        f"{', '.join(ARCHITECTURES)})"
    )


_MIXTRAL_EXPERT = re.compile(r"block_sparse_moe\.experts\.(\d+)\.w([123])\.")
_SWIGLU_OF_W = {"1": "gate_proj", "2": "down_proj", "3": "up_proj"}  # Mixtral's w1, w2, w3


def hf_key_to_ours(key: str) -> str | None:
    """Our parameter name for a Hugging Face one (None for a tensor to ignore, such as an old
    checkpoint's ``rotary_emb.inv_freq``): ``model.`` dropped, Mixtral's
    ``block_sparse_moe.experts.E.w1/w2/w3`` -> ``mlp.experts.E.gate_proj/down_proj/up_proj``
    and ``block_sparse_moe.gate`` -> ``mlp.gate``."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    key = key.removeprefix("model.")
    key = _MIXTRAL_EXPERT.sub(lambda m: f"mlp.experts.{m[1]}.{_SWIGLU_OF_W[m[2]]}.", key)
    return key.replace("block_sparse_moe.gate.", "mlp.gate.")


def _read_safetensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a checkpoint folder, and the file each came from (for error messages)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({e})") from e
        files = sorted(set(weight_map.values()))
    elif single.is_file():
        files, weight_map = [single.name], None
    else:
        other = [p.name for p in folder.glob("*.bin")] if folder.is_dir() else []
        extra = f" ({', '.join(other)} is PyTorch's pickle format, not supported)" if other else ""
        raise ValueError(
            f"{folder}: no model.safetensors or model.safetensors.index.json{extra}"
            if folder.is_dir()
            else f"{folder}: not a folder"
        )
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path}: not found, but {index.name} lists it")
        for key, value in load_file(path).items():
            if weight_map is not None and weight_map.get(key) != name:
                continue  # the index is the authority on where a tensor lives
            tensors[key], origin[key] = value, str(path)
    if weight_map is not None:
        lost = sorted(k for k in weight_map if k not in tensors)
        if lost:
            raise ValueError(f"{folder / weight_map[lost[0]]}: has no tensor {lost[0]!r}")
    return tensors, origin


def _from_hf(
    cls: type[Llama],
    state_dict: Mapping[str, torch.Tensor],
    hf_config: Mapping[str, Any],
    dtype: torch.dtype,
    origin: Mapping[str, str],
    config_source: str,
) -> Llama:
    config = config_from_hf(hf_config, config_source)
    weights_source = next(iter(origin.values()), "the state dict") if origin else "the state dict"
    if len(set(origin.values())) > 1:
        weights_source = str(Path(weights_source).parent / "model.safetensors.index.json")
    ours: dict[str, tuple[str, torch.Tensor]] = {}  # our name -> (HF name, tensor)
    for key, value in state_dict.items():
        name = hf_key_to_ours(key)
        if name is not None:
            ours[name] = (key, value)
    if config.tie_embeddings:
        ours.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
    with _shapes_only():
        model = cls(config)
    expected = {k: v for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in ours]
    if missing:
        raise ValueError(
            f"{weights_source}: tensor {_hf_name(missing[0])!r} is missing "
            f"({len(missing)} missing in all; is config.json the one of these weights?)"
        )
    unexpected = sorted(k for k in ours if k not in expected)
    if unexpected:
        hf_name, _ = ours[unexpected[0]]
        raise ValueError(
            f"{origin.get(hf_name, weights_source)}: unexpected tensor {hf_name!r} "
            f"({len(unexpected)} unexpected in all; {config_source} describes another model?)"
        )
    loaded = {}
    for name, target in expected.items():
        hf_name, value = ours[name]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{origin.get(hf_name, weights_source)}: tensor {hf_name!r} has shape "
                f"{tuple(value.shape)}, the config gives {tuple(target.shape)}"
            )
        # A contiguous copy in dtype: the model must not share memory with the caller's tensors.
        loaded[name] = value.detach().to(dtype=dtype, copy=True).contiguous()
    model.load_state_dict(loaded, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True replaced the Parameter
    model._build_rope()
    return model.eval()


class _SkipRandomFills(TorchFunctionMode):
    """Random initialisation does nothing (transformers' ``no_init_weights`` does the same)."""

    FILLS = {
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        nn.init.normal_,
        nn.init.uniform_,
        nn.init.trunc_normal_,
        nn.init.kaiming_uniform_,
        nn.init.kaiming_normal_,
        nn.init.xavier_uniform_,
        nn.init.xavier_normal_,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


@contextmanager
def _shapes_only() -> Iterator[None]:
    """Build on the meta device (shapes, no memory) and skip the random initialisation: the
    weights are about to be replaced, and the first random fill on the meta device alone loads
    PyTorch's Python meta kernels (seconds)."""
    with torch.device("meta"), _SkipRandomFills():
        yield


def _hf_name(ours: str) -> str:
    """The Hugging Face name of one of our parameters (the inverse of :func:`hf_key_to_ours`)."""
    if ours == "lm_head.weight":
        return ours
    expert = re.match(r"(layers\.\d+\.)mlp\.experts\.(\d+)\.(\w+)\.(.*)", ours)
    if expert:
        w = {name: w for w, name in _SWIGLU_OF_W.items()}[expert[3]]
        ours = f"{expert[1]}block_sparse_moe.experts.{expert[2]}.w{w}.{expert[4]}"
    return "model." + re.sub(r"^(layers\.\d+\.)mlp\.gate\.", r"\1block_sparse_moe.gate.", ours)
