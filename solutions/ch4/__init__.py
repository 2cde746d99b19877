"""Chapter 4: a modern LLM (Llama-style) with a KV cache, that loads real open weights.

- ``layers``: RMSNorm, rotary position embeddings (RoPE) and the SwiGLU feed-forward layer;
- ``attention``: grouped-query attention and the KV cache;
- ``llama``: the Llama-family model, and loading Hugging Face checkpoints;
- ``moe``: Mixtral's sparse mixture of experts;
- ``generate``: generation with the KV cache, for batches of prompts of different lengths.

It builds on chapter 3: ``from solutions.ch4 import Llama, LlamaConfig`` and
``from solutions.ch4.generate import generate`` (your own code: ``exercises.ch4``; the function
``generate`` is not exported here because the module of the same name would shadow it). The names
are imported lazily, on first use, so that one stage's module with an error does not stop the
others from loading.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RMSNorm": "layers",
    "SwiGLU": "layers",
    "rope_cache": "layers",
    "apply_rope": "layers",
    "GroupedQueryAttention": "attention",
    "KVCache": "attention",
    "Llama": "llama",
    "LlamaConfig": "llama",
    "MoE": "moe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
