"""Loading Hugging Face folders: every bad input is a one-line ValueError naming the file (project
tests, not a graded stage: the loader is given code, so these run on the tree under test but
would pass on untouched stubs for the errors raised before the model is built)."""

from __future__ import annotations

import json

import pytest
import torch

from grader.tree import load
from tests.ch4 import oracles

llama = load("ch4.llama")
save_file = load("ch3.safetensors_io").save_file

LLAMA = oracles.hf_config("LlamaForCausalLM")


def folder_with(tmp_path, config=LLAMA, sd=None, shards=1):
    sd = oracles.hf_state_dict(config) if sd is None else sd
    return oracles.write_folder(tmp_path / "model", sd, config, save_file, shards)


def load_error(path) -> str:
    with pytest.raises(ValueError) as raised:
        llama.Llama.load_hf(path)
    message = str(raised.value)
    assert "\n" not in message, message
    return message


def test_missing_config_key_names_config_json(tmp_path):
    config = {k: v for k, v in LLAMA.items() if k != "intermediate_size"}
    message = load_error(folder_with(tmp_path, config, oracles.hf_state_dict(LLAMA)))
    assert "config.json" in message and "intermediate_size" in message


def test_unknown_architecture(tmp_path):
    config = LLAMA | {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}
    message = load_error(folder_with(tmp_path, config, oracles.hf_state_dict(LLAMA)))
    assert "config.json" in message and "GPTNeoXForCausalLM" in message
    assert "LlamaForCausalLM" in message  # says what is supported


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 8}, "head_dim"),
        ({"attention_bias": True}, "attention_bias"),
    ],
    ids=["yarn", "gelu", "head_dim", "llama-bias"],
)
def test_unsupported_features_are_named(tmp_path, overrides, words):
    message = load_error(folder_with(tmp_path, LLAMA | overrides, oracles.hf_state_dict(LLAMA)))
    assert "config.json" in message and words in message and "not supported" in message


def test_missing_tensor(tmp_path):
    sd = oracles.hf_state_dict(LLAMA)
    del sd["model.layers.1.post_attention_layernorm.weight"]
    message = load_error(folder_with(tmp_path, sd=sd))
    assert "model.safetensors" in message
    assert "model.layers.1.post_attention_layernorm.weight" in message and "missing" in message


def test_missing_untied_lm_head(tmp_path):
    sd = oracles.hf_state_dict(LLAMA)
    del sd["lm_head.weight"]
    message = load_error(folder_with(tmp_path, sd=sd))
    assert "'lm_head.weight' is missing" in message


def test_unexpected_tensor_names_its_shard(tmp_path):
    sd = oracles.hf_state_dict(LLAMA)
    sd["model.layers.2.mlp.up_proj.weight"] = torch.zeros(2, 2)  # a third layer
    folder = folder_with(tmp_path, sd=sd, shards=3)
    message = load_error(folder)
    assert "model.layers.2.mlp.up_proj.weight" in message and "unexpected" in message
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.layers.2.mlp.up_proj.weight"] in message


def test_shape_mismatch_names_file_and_shapes(tmp_path):
    sd = oracles.hf_state_dict(LLAMA)
    sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)  # 8 kv heads, not 2
    message = load_error(folder_with(tmp_path, sd=sd))
    assert "model.safetensors" in message and "(32, 32)" in message and "(8, 32)" in message


def test_missing_shard_and_missing_weights(tmp_path):
    folder = folder_with(tmp_path, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    message = load_error(folder)
    assert "model-00002-of-00002.safetensors" in message and "not found" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(LLAMA))
    (empty / "pytorch_model.bin").write_bytes(b"")
    message = load_error(empty)
    assert "model.safetensors" in message and "pytorch_model.bin" in message
    assert "config.json" in load_error(tmp_path / "nowhere")


def test_tied_checkpoint_that_stores_lm_head_anyway(tmp_path):
    config = LLAMA | {"tie_word_embeddings": True}
    sd = oracles.hf_state_dict(config)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    model = llama.Llama.load_hf(folder_with(tmp_path, config, sd))
    assert model.lm_head.weight is model.embed_tokens.weight


def test_old_checkpoints_rotary_buffers_are_ignored_and_bf16_loads(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in oracles.hf_state_dict(LLAMA).items()}
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(2)
    model = llama.Llama.load_hf(folder_with(tmp_path, sd=sd))
    assert model.embed_tokens.weight.dtype == torch.float32
    half = llama.Llama.load_hf(tmp_path / "model", dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16
    idx = torch.randint(0, LLAMA["vocab_size"], (1, 6))
    with torch.no_grad():
        assert half(idx)[0].dtype == torch.bfloat16


def test_config_from_hf_reads_both_rope_layouts():
    top = llama.config_from_hf(LLAMA | {"rope_theta": 123.0})
    block = llama.config_from_hf(
        {k: v for k, v in LLAMA.items() if k != "rope_theta"}
        | {"rope_parameters": {"rope_type": "default", "rope_theta": 456.0}}
    )
    assert (top.rope_theta, top.rope_scaling) == (123.0, None)
    assert (block.rope_theta, block.rope_scaling) == (456.0, None)
    qwen = llama.config_from_hf(oracles.hf_config("Qwen2ForCausalLM"))
    assert qwen.attention_bias and not llama.config_from_hf(LLAMA).attention_bias
    mixtral = llama.config_from_hf(oracles.hf_config("MixtralForCausalLM"))
    assert (mixtral.n_experts, mixtral.n_experts_per_tok) == (4, 2)
