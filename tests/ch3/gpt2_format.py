"""GPT-2's published tokenizer format, written independently of the tree, for tests that make
vocab.json / merges.txt files."""

from __future__ import annotations


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
