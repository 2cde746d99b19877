"""Hugging Face transformers as the oracle, where it is installed (the ``dev`` extra; project tests,
not a graded stage): the stage tests' own forward pass (tests/ch4/oracles.py) against
transformers' logits, and the tree's Llama.load_hf on folders saved by transformers'
save_pretrained (one file or shards, tied, Llama 3 scaling, Qwen2, Mistral, Mixtral).

Why not in the stages: the graded tests must give the same verdicts, the same test count and the
same time limits whether or not a learner installed transformers (importing it costs 4-10 s per
stage process here); the stages check every feature against that oracle instead, and this file
checks the oracle against transformers, so the chain reaches the real thing in CI."""

from __future__ import annotations

import pytest
import torch

from grader.tree import load
from tests.ch4 import hf, oracles

llama = load("ch4.llama")
save_file = load("ch3.safetensors_io").save_file

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CONFIGS = {
    "llama": oracles.hf_config("LlamaForCausalLM"),
    "llama3-tied": oracles.hf_config(
        "LlamaForCausalLM", rope_scaling=LLAMA3, rope_theta=500000.0, tie_word_embeddings=True
    ),
    "qwen2": oracles.hf_config("Qwen2ForCausalLM", tie_word_embeddings=True),
    "mistral": oracles.hf_config("MistralForCausalLM", num_key_value_heads=8),
    "mixtral": oracles.hf_config("MixtralForCausalLM"),
}


@pytest.mark.parametrize("name", list(CONFIGS), ids=list(CONFIGS))
def test_oracle_forward_matches_transformers(name, tmp_path):
    config = CONFIGS[name]
    sd = oracles.hf_state_dict(config, seed=1)
    model = hf.transformers_model(config, sd, tmp_path, save_file)
    idx = torch.randint(
        0, config["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(
        oracles.forward(sd, config, idx), hf.logits(model, idx), atol=1e-4, rtol=1e-4
    )


def test_oracle_llama3_frequencies_match_transformers():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=256, num_attention_heads=4, rope_scaling=LLAMA3, rope_theta=500000.0
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    expected = oracles.inverse_frequencies(64, 500000.0, LLAMA3)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("name", "shard"),
    [("llama3-tied", None), ("qwen2", "20KB"), ("mistral", None), ("mixtral", "30KB")],
    ids=["llama3-tied", "qwen2-sharded", "mistral", "mixtral-sharded"],
)
def test_load_hf_reads_what_transformers_saves(name, shard, tmp_path):
    config = CONFIGS[name]
    sd = oracles.hf_state_dict(config, seed=3)
    model = hf.transformers_model(config, sd, tmp_path / "in", save_file)
    hf.save(model, tmp_path / "out", shard)
    if shard:
        assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    idx = torch.randint(
        0, config["vocab_size"], (2, 30), generator=torch.Generator().manual_seed(4)
    )
    ours = llama.Llama.load_hf(tmp_path / "out")
    with torch.no_grad():
        got, _ = ours(idx)
    torch.testing.assert_close(got, hf.logits(model, idx), atol=1e-4, rtol=1e-4)
