"""Hugging Face ``transformers`` as an oracle, for the tests that can use it (a ``dev`` extra).

Every call starts with ``pytest.importorskip``, so a machine without transformers skips those
tests (the folders the tests write themselves cover the same features). Nothing is downloaded:
the models are built from a config with random weights, offline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.ch4.oracles import write_folder


def transformers_model(
    config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], folder: Path, save_file
):
    """A ``transformers`` model of ``config``'s architecture holding the weights ``sd`` (HF
    names), in eval mode; skips the test when transformers is not installed.

    The weights go in through transformers' own loading (a folder written with ``save_file``,
    then ``from_pretrained``), so that versions whose modules store the weights differently
    (transformers 5 fuses Mixtral's experts into one tensor) convert them their own way."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    write_folder(folder, sd, config, save_file)
    model_class = getattr(transformers, config["architectures"][0])
    return model_class.from_pretrained(folder).float().eval()


def save(model, folder: Path, max_shard_size: str | None = None) -> Path:
    """``save_pretrained`` into ``folder`` (sharded when ``max_shard_size`` is small)."""
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


@torch.no_grad()
def logits(model, idx: torch.Tensor) -> torch.Tensor:
    return model(idx).logits
