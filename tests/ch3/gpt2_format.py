"""GPT-2's published tokenizer format, written independently of the tree, for tests that make
vocab.json / merges.txt files."""

from __future__ import annotations

import json
from pathlib import Path


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table, as in its encoder.py."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_vocab_and_merges(folder: Path, encoder: dict[str, int], merges: list[tuple[str, str]]):
    """``folder/vocab.json`` (token string -> id, non-ASCII escaped like the published file) and
    ``folder/merges.txt`` (a version line, then one ``"a b"`` merge per line, by rank)."""
    (folder / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
