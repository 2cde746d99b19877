"""Chapter 2 tests run torch on one thread.

Their tensors are tiny, so a second thread buys little, and when the cores are shared (the
grader next to an editor, CI runners, this project's 2-core machine under load) torch's spinning
worker threads make training up to 10x slower: the e2e stage measured 58 ms/step on one thread
against 600 ms/step on two under load. One thread also makes timings and results repeatable.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
