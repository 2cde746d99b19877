"""The ch4 command line (project tests, not a graded stage): train a Llama with chapter 3's
options, sample from its checkpoint or from a Hugging Face folder, one line for bad input.

The folders are written here: by hand (the stage tests' config.json and random weights under
Hugging Face's names, a byte-level tokenizer.json), or, where ``transformers`` is installed, by ``save_pretrained`` of a
tiny random LlamaForCausalLM, whose own greedy ``generate`` is the oracle. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from grader.tree import REPO_ROOT, load
from tests.ch3.gpt2_format import gpt2_bytes_to_unicode
from tests.ch4 import oracles

cli = load("ch4.cli")

BOS, EOS = 256, 257  # after the 256 bytes
BYTE_OF_ID = list(gpt2_bytes_to_unicode())  # id i is byte BYTE_OF_ID[i] (GPT-2's char order)


def ids_of(text: str) -> list[int]:
    return [BYTE_OF_ID.index(b) for b in text.encode("utf-8")]


def text_of(ids: list[int]) -> str:
    return bytes(BYTE_OF_ID[i] for i in ids).decode("utf-8", errors="replace")


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64}  # fmt: skip


def byte_tokenizer_json(path, *, bos: bool = True) -> None:
    """A byte-level tokenizer.json without merges (Llama 3's layout): ids 0..255 are the bytes in
    GPT-2's character order, then <|begin_of_text|> (put first by the template) and
    <|end_of_text|>."""
    vocab = {char: i for i, char in enumerate(gpt2_bytes_to_unicode().values())}
    specials = {"<|begin_of_text|>": BOS, "<|end_of_text|>": EOS}
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [BOS],
                                                 "tokens": ["<|begin_of_text|>"]}},
    }  # fmt: skip
    spec = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": i,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for text, i in specials.items()
        ],  # fmt: skip
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "post_processor": template if bos else None,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "byte_fallback": False, "vocab": vocab, "merges": []},
    }
    path.write_text(json.dumps(spec), encoding="utf-8")


def hf_folder(path, eos=EOS, **config_changes) -> dict:
    """A tiny Llama in Hugging Face's layout with random weights (the stage tests' writer):
    config.json, model.safetensors, tokenizer.json and generation_config.json."""
    config = oracles.hf_config(vocab_size=258, eos_token_id=1, **config_changes)
    save_file = load("ch3.safetensors_io").save_file
    oracles.write_folder(path, oracles.hf_state_dict(config), config, save_file)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 2]}))
    byte_tokenizer_json(path / "tokenizer.json")
    return config


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens by full passes over the whole sequence (no cache, no generate)."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids


def run_sample(capsys, *args: str) -> str:
    code = cli.main(["sample", *args, "--device", "cpu", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_sample_from_a_hugging_face_folder(tmp_path, capsys):
    """--hf: the folder's weights, tokenizer and first token (<|begin_of_text|>), greedy."""
    folder = tmp_path / "llama"
    hf_folder(folder)
    model = load("ch4.llama").Llama.load_hf(folder)
    prompt_ids = [BOS, *ids_of("the")]
    expected = text_of(greedy_ids(model, prompt_ids, 12)[len(prompt_ids) :])
    out = run_sample(capsys, "--hf", str(folder), "--prompt", "the", "--temperature", "0",
                     "--max-new-tokens", "12")  # fmt: skip
    assert out == "the" + expected + "\n"
    uncached = run_sample(capsys, "--hf", str(folder), "--prompt", "the", "--temperature", "0",
                          "--max-new-tokens", "12", "--no-cache")  # fmt: skip
    assert uncached == out


def test_sample_stops_at_an_eos_id_of_generation_config(tmp_path, capsys):
    """Generation stops at the first id of generation_config.json's eos_token_id list."""
    probe = tmp_path / "probe"
    hf_folder(probe)
    model = load("ch4.llama").Llama.load_hf(probe)
    prompt_ids = [BOS, *ids_of("a")]
    new = greedy_ids(model, prompt_ids, 8)[len(prompt_ids) :]
    stop = new[3]  # the greedy text's fourth token ends the text
    cut = new.index(stop)
    folder = tmp_path / "llama"
    hf_folder(folder, eos=stop)
    out = run_sample(capsys, "--hf", str(folder), "--prompt", "a", "--temperature", "0",
                     "--max-new-tokens", "8")  # fmt: skip
    assert out == "a" + text_of(new[:cut]) + "\n"


def test_sample_goes_past_max_seq_len(tmp_path):
    """More tokens than the model has positions: after a full window the text goes on from its
    last max_seq_len // 2 tokens, prefilled again."""
    folder = tmp_path / "short"
    hf_folder(folder, max_position_embeddings=16)
    model = load("ch4.llama").Llama.load_hf(folder)

    class Ids:  # a tokenizer whose text is the ids themselves
        prefix_ids = [BOS]

        def encode(self, text):
            return ids_of(text)

        def decode(self, ids):
            return ",".join(map(str, ids))

    text = cli.sample_text(model, Ids(), "x", 40, temperature=0)
    new = [int(i) for i in text.split(",")]
    prompt = [BOS, *ids_of("x")]
    assert len(new) == 40
    assert new[:14] == greedy_ids(model, prompt, 14)[2:]  # the first window: 16 positions
    context = (prompt + new[:14])[-8:]
    assert new[14:22] == greedy_ids(model, context, 8)[8:]


def test_train_then_sample_a_gqa_and_a_moe_llama(tmp_path, capsys):
    """train with --n-kv-heads and --experts writes a checkpoint that sample reloads, the same
    text for the same seed, with and without the cache."""
    for extra in (["--n-kv-heads", "1"], ["--experts", "4", "--experts-per-tok", "2"]):
        out = tmp_path / extra[0].strip("-")
        args = ["train", "--config", "tiny", "--max-steps", "3", "--eval-interval", "3", "--out",
                str(out), "--device", "cpu", "--quiet", "--batch-size", "4", *extra]  # fmt: skip
        assert cli.main(args) == 0
        report = capsys.readouterr().out
        assert "-parameter Llama (tiny) on the built-in corpus" in report
        ckpt = load("ch3.trainer").read_checkpoint(out)
        config = ckpt["config"]
        assert (config["n_kv_heads"], config["n_experts"]) == (
            (1, 0) if extra[0] == "--n-kv-heads" else (2, 4)
        )
        sample = ["--checkpoint", str(out), "--prompt", "the cat", "--seed", "3"]
        first = run_sample(capsys, *sample, "--max-new-tokens", "90")  # past block 64
        assert first.startswith("the cat") and len(first) == len("the cat") + 90 + 1
        assert run_sample(capsys, *sample, "--max-new-tokens", "90", "--no-cache") == first


def test_matches_transformers_generate(tmp_path, capsys):
    """A tiny random LlamaForCausalLM saved by transformers: the same greedy text as its own
    generate, through the folder's tokenizer.json."""
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=258, max_position_embeddings=64,
                                      bos_token_id=BOS, eos_token_id=EOS, **TINY)  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    byte_tokenizer_json(folder / "tokenizer.json")
    ids = torch.tensor([[BOS, *ids_of("Hello")]])
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None)
    new = theirs[0, ids.size(1) :].tolist()
    out = run_sample(capsys, "--hf", str(folder), "--prompt", "Hello", "--temperature", "0",
                     "--max-new-tokens", "10")  # fmt: skip
    stop = new.index(EOS) if EOS in new else len(new)
    assert out == "Hello" + text_of(new[:stop]) + "\n"


# -- bad input: one line naming the file or the value, exit code 1, never a traceback ------------


def sentencepiece_folder(tmp_path):
    folder = tmp_path / "mistral"
    hf_folder(folder, architectures=["MistralForCausalLM"], model_type="mistral")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"] |= {"byte_fallback": True}
    spec["pre_tokenizer"] = None
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def missing_config(tmp_path):
    folder = tmp_path / "llama"
    hf_folder(folder)
    (folder / "config.json").unlink()
    return folder


BAD = {
    "no such checkpoint": (lambda tmp: ["--checkpoint", str(tmp / "nope")], "no checkpoint at"),
    "no such folder": (lambda tmp: ["--hf", str(tmp / "nope")], "is not a folder"),
    "SentencePiece tokenizer": (
        lambda tmp: ["--hf", str(sentencepiece_folder(tmp))],
        "tokenizer.json: its BPE has byte_fallback: SentencePiece-style",
    ),
    "no config.json": (lambda tmp: ["--hf", str(missing_config(tmp))], "config.json"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(tmp_path, capsys, case):
    make, words = BAD[case]
    code = cli.main(["sample", *make(tmp_path), "--max-new-tokens", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err


def test_bad_training_options_are_one_line(capsys):
    code = cli.main(["train", "--config", "tiny", "--experts", "2", "--experts-per-tok", "3"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "n_experts_per_tok" in err, err
    code = cli.main(["train", "--config", "tiny", "--n-kv-heads", "3", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "n_kv_heads=3 must divide" in err, err


def test_untouched_exercises_say_not_started():
    """`python -m exercises.ch4 train` on the stubs: one line naming a stage, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "exercises.ch4", "train", "--max-steps", "1", "--quiet"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if "not started" not in proc.stderr:
        pytest.skip("the exercises tree has been started (this checks untouched stubs)")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not started" in lines[0] and "Traceback" not in proc.stderr
