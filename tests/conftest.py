"""Shared fixtures: every stage test runs seeded, on CPU, against the tree chosen by LLMFS_TREE."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_cpu():
    """Each test starts from the same random state, so a failure repeats exactly."""
    torch.manual_seed(0)
    yield
