"""The ch3 command line and its safetensors reader (project tests, not a graded stage).

The command line is the same file in both trees; these tests run it on the tree under test and,
for the untouched exercises, check that it says which stage to start instead of a traceback.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
import torch

from grader.tree import REPO_ROOT, load
from tests.ch3.gpt2_format import gpt2_bytes_to_unicode, write_vocab_and_merges

st = load("ch3.safetensors_io")


def write_safetensors_by_hand(tensors: dict[str, torch.Tensor], path) -> None:
    """The format written out independently of the module under test (F32 only)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        raw = t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_reader_reads_the_format(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b.weight": torch.arange(5.0), "scalar": torch.tensor(2.5)}
    path = tmp_path / "t.safetensors"
    write_safetensors_by_hand(tensors, path)
    got = st.load_file(path)
    assert sorted(got) == sorted(tensors)
    for name, t in tensors.items():
        assert torch.equal(got[name], t), name


def test_safetensors_round_trip_all_dtypes(tmp_path):
    tensors = {
        "f32": torch.randn(2, 3),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(3, 1).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3),
        "u8": torch.arange(7, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "all.safetensors"
    st.save_file(tensors, path)
    got = st.load_file(path)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_safetensors_matches_the_safetensors_package(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"w": torch.randn(5, 7), "h": torch.randn(3).half(), "i": torch.arange(4)}
    theirs, ours = tmp_path / "theirs.safetensors", tmp_path / "ours.safetensors"
    safetensors_torch.save_file(tensors, str(theirs))
    st.save_file(tensors, ours)
    for name, t in tensors.items():
        assert torch.equal(st.load_file(theirs)[name], t)
        assert torch.equal(safetensors_torch.load_file(str(ours))[name], t)


def test_safetensors_rejects_garbage(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        st.load_file(path)


def hf_gpt2_folder(path, n_layer=2, n_embd=32, n_head=2, block_size=16):
    """A tiny GPT-2 in Hugging Face's layout: Conv1D (in, out) weights, no 'transformer.' prefix,
    GPT-2's byte-to-unicode vocab.json and a merges.txt."""
    byte_encoder = gpt2_bytes_to_unicode()
    vocab = {byte_encoder[b]: i for i, b in enumerate(byte_encoder)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    V, C = len(vocab), n_embd
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd = {"wte.weight": rnd(V, C), "wpe.weight": rnd(block_size, C)}
    for i in range(n_layer):
        p = f"h.{i}."
        sd |= {
            p + "ln_1.weight": 1 + rnd(C), p + "ln_1.bias": rnd(C),
            p + "attn.c_attn.weight": rnd(C, 3 * C), p + "attn.c_attn.bias": rnd(3 * C),
            p + "attn.c_proj.weight": rnd(C, C), p + "attn.c_proj.bias": rnd(C),
            p + "ln_2.weight": 1 + rnd(C), p + "ln_2.bias": rnd(C),
            p + "mlp.c_fc.weight": rnd(C, 4 * C), p + "mlp.c_fc.bias": rnd(4 * C),
            p + "mlp.c_proj.weight": rnd(4 * C, C), p + "mlp.c_proj.bias": rnd(C),
        }  # fmt: skip
    sd |= {"ln_f.weight": 1 + rnd(C), "ln_f.bias": rnd(C)}
    path.mkdir()
    write_safetensors_by_hand(sd, path / "model.safetensors")
    write_vocab_and_merges(path, vocab, merges)
    return sd


def test_sample_loads_a_hugging_face_gpt2_folder(tmp_path, capsys):
    cli, gpt = load("ch3.cli"), load("ch3.gpt")
    folder = tmp_path / "gpt2"
    sd = hf_gpt2_folder(folder)
    model, tokenizer = cli.load_trained(folder)
    expected = gpt.GPT.from_hf_state_dict(sd).eval()
    idx = torch.tensor([tokenizer.encode("the theme")])
    assert idx.shape[1] < 9  # the merges applied
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], expected(idx)[0], atol=1e-6)
    code = cli.main(["sample", "--checkpoint", str(folder), "--prompt", "the", "--max-new-tokens",
                     "5", "--device", "cpu"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.startswith("the")


def test_train_then_sample_on_the_built_in_corpus(tmp_path, capsys):
    cli = load("ch3.cli")
    out = tmp_path / "run"
    args = ["train", "--config", "tiny", "--max-steps", "4", "--eval-interval", "2", "--out"]
    assert cli.main([*args, str(out), "--device", "cpu", "--quiet", "--batch-size", "4"]) == 0
    assert (out / "checkpoint.pt").is_file()
    assert "the built-in corpus" in capsys.readouterr().out
    assert cli.main(["sample", "--checkpoint", str(out), "--prompt", "the cat", "--seed", "3",
                     "--max-new-tokens", "20", "--device", "cpu"]) == 0  # fmt: skip
    first = capsys.readouterr().out
    cli.main(["sample", "--checkpoint", str(out), "--prompt", "the cat", "--seed", "3",
              "--max-new-tokens", "20", "--device", "cpu"])  # fmt: skip
    assert capsys.readouterr().out == first and first.startswith("the cat")


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    cli = load("ch3.cli")
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint at") and "\n" not in err


def test_untouched_exercises_say_not_started():
    """`python -m exercises.ch3 train` on the stubs: one line naming the stage, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "exercises.ch3", "train", "--max-steps", "1", "--quiet"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if "not started" not in proc.stderr:
        pytest.skip("the exercises tree has been started (this checks untouched stubs)")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage 'tokenizer' not started" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- bad files at the command line: one line naming the file, exit code 1, never a traceback ------

TINY_GPT = {"vocab_size": 5, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}


def write_checkpoint(path, **changes) -> None:
    """A checkpoint as GPTTrainer.save_checkpoint writes it (untrained), with ``changes``."""
    gpt, tokenizer = load("ch3.gpt"), load("ch3.tokenizer")
    ckpt = {
        "model": gpt.GPT(gpt.GPTConfig(**TINY_GPT)).state_dict(),
        "optimizer": {},
        "step": 0,
        "config": dict(TINY_GPT),
        "tokenizer": json.dumps(tokenizer.SimpleTokenizer("abcde").to_dict()),
        "rng": {},
        "data": {"epoch": 0, "batch_in_epoch": 0},
    }
    torch.save(ckpt | changes, path)


def write_header(path, header) -> None:
    """A .safetensors file whose JSON header is ``header`` and whose data is 16 zero bytes."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(16))


class Evil:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def hf_folder_with(tmp_path, damage) -> str:
    folder = tmp_path / "gpt2"
    hf_gpt2_folder(folder, n_layer=1, n_embd=8, n_head=2, block_size=4)
    damage(folder)
    return str(folder)


def bad_checkpoint(tmp_path, **changes) -> str:
    path = tmp_path / "bad.pt"
    write_checkpoint(path, **changes)
    return str(path)


BAD_FILES = {
    "safetensors header is a JSON list": (
        lambda tmp: hf_folder_with(tmp, lambda f: write_header(f / "model.safetensors", [1, 2])),
        "model.safetensors",
    ),
    "tensor entry without dtype": (
        lambda tmp: hf_folder_with(
            tmp,
            lambda f: write_header(
                f / "model.safetensors", {"wte.weight": {"shape": [2], "data_offsets": [0, 8]}}
            ),
        ),
        "model.safetensors",
    ),
    "shape that does not match the data": (
        lambda tmp: hf_folder_with(
            tmp,
            lambda f: write_header(
                f / "model.safetensors",
                {"wte.weight": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}},
            ),
        ),
        "model.safetensors",
    ),
    "vocab.json of the wrong type": (
        lambda tmp: hf_folder_with(tmp, lambda f: (f / "vocab.json").write_text("[1, 2, 3]")),
        "vocab.json",
    ),
    "tokenizer JSON of the wrong type": (
        lambda tmp: bad_checkpoint(tmp, tokenizer="[1, 2, 3]"),
        "bad.pt",
    ),
    "unknown config key": (
        lambda tmp: bad_checkpoint(tmp, config=TINY_GPT | {"n_layers": 2}),
        "bad.pt",
    ),
    "state dict that does not match the model": (
        lambda tmp: bad_checkpoint(tmp, config=TINY_GPT | {"n_embd": 16}),
        "bad.pt",
    ),
    "malicious pickle": (lambda tmp: bad_checkpoint(tmp, model=Evil()), "bad.pt"),
    "random bytes": (
        lambda tmp: (tmp / "bad.pt").write_bytes(b"\xff" * 64) and str(tmp / "bad.pt"),
        "bad.pt",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_one_line_naming_it(tmp_path, capsys, case):
    make, name = BAD_FILES[case]
    path = make(tmp_path)
    code = load("ch3.cli").main(["sample", "--checkpoint", path, "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 1, (case, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert name in err and "Traceback" not in err, err
    assert "this ran while loading" not in out + err


def test_a_text_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    text.write_bytes("café".encode("latin-1") * 100)
    code = load("ch3.cli").main(["train", "--text", str(text), "--max-steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "latin1.txt: not a UTF-8 text file" in err, err


def test_the_command_refuses_a_malicious_pickle_in_one_line(tmp_path):
    """`python -m solutions.ch3 sample` on a pickle that would run code: one line, exit code 1.

    exercises/ch3/cli.py is the same file (python -m grader.stubs --check), but its sample
    command first meets the stub of pick_device and says "not started".
    """
    package = "solutions"
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", f"{package}.ch3", "sample", "--checkpoint", str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(path) in proc.stderr, proc.stderr
    assert "refused" in proc.stderr and "this ran while loading" not in proc.stdout
