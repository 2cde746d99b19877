"""Chapter 3: a GPT you build, train and sample from.

The book's quick start works with this package path::

    from solutions.ch3 import GPT, GPTConfig, SimpleTokenizer, create_dataloaders, GPTTrainer

(``exercises.ch3`` for your own code). The names are imported lazily, on first use, so that one
stage's module with an error does not stop the others from loading.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SimpleTokenizer": "tokenizer",
    "BPETokenizer": "tokenizer",
    "GPT": "gpt",
    "GPTConfig": "gpt",
    "create_dataloaders": "data",
    "GPTTrainer": "trainer",
    "TrainConfig": "trainer",
    "generate": "sampling",
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
