"""Shared fixtures: every test runs seeded, on CPU, on one torch thread.

Seeded so a failure repeats exactly. One thread because the tensors here are small, so a second
thread buys little, while on shared cores (the grader beside an editor, batch grading with
--jobs 2, a 2-core CI runner) torch's spinning worker threads make training up to 10x slower:
the ch2 e2e stage measured 58 ms/step on one thread against 600 ms/step on two under load.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)
