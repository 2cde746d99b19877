"""Stage ch3 'tokenizer': a character tokenizer and GPT-2's byte-level BPE, checked against
references written here (a naive BPE trainer, GPT-2's own ``bpe()`` merge loop)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import regex

from grader.tree import load
from tests.ch3.gpt2_format import gpt2_bytes_to_unicode, write_vocab_and_merges
from tests.helpers import check, check_equal, check_matches, check_raises, fail

tok = load("ch3.tokenizer")

SIMPLE = "ch3/tokenizer.py, SimpleTokenizer"
MERGE = "ch3/tokenizer.py, merge_ids"
LEARN = "ch3/tokenizer.py, learn_merges"
ENCODE = "ch3/tokenizer.py, BPETokenizer._encode_chunk"
DECODE = "ch3/tokenizer.py, BPETokenizer.decode"

# The pattern of GPT-2's encoder.py, copied here so the test does not trust the module's copy.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

WORDS = (
    "the cat sat on a mat and the dog ran to the cat while it rained again "
    "tokenizer tokens merge merges merged running runner 2024 3.14 "
    "日本語 の テキスト を 学習 する 東京 ありがとう 🙂 👍🏽 🇯🇵 café naïve"
).split()


def corpus(n_words: int = 3000, seed: int = 0) -> str:
    """A deterministic text that mixes English, digits, Japanese and emoji."""
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        out.append(rng.choice(WORDS))
        out.append(rng.choice([" ", " ", " ", ", ", ".\n", "  "]) if i % 9 else "!\n")
    return "".join(out)


# Characters that break careless tokenizers: multi-byte UTF-8, combining marks, ZWJ emoji
# sequences, flags, characters outside the BMP, control characters and odd whitespace.
ALPHABETS = [
    "abcxyz ABC 019",
    " \t\n\r\x00\x7f\u3000\u00a0",
    "あいうえおかきくけこ日本語漢字カタカナー。、",
    "🙂🚀👍🏽👨\u200d👩\u200d👧🇯🇵\U0010ffff\U0001f9ea",
    "e\u0301\u0300n\u0303 çñüß€£",
    "'s'll're<|>!?.,;:-_()[]{}",
]


def random_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "\n\n", "日本語", "👨\u200d👩\u200d👧", "a" * 50]
    for _ in range(n):
        pools = rng.sample(ALPHABETS, rng.randint(1, 3))
        chars = "".join(pools)
        out.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 40))))
    return out


# -- references written for the test --------------------------------------------------------------


def ref_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def naive_learn_merges(word_counts, num_merges, first_id=256):
    """BPE by the definition: recount every pair before every merge (slow, obviously right)."""
    words = [(list(w), c) for w, c in word_counts.items()]
    merges = {}
    for k in range(num_merges):
        counts = Counter()
        for w, c in words:
            for pair in zip(w, w[1:], strict=False):
                counts[pair] += c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest pair
        if counts[best] < 2:
            break
        merges[best] = first_id + k
        words = [(ref_merge(w, best, first_id + k), c) for w, c in words]
    return merges


def gpt2_bpe(token: str, bpe_ranks: dict[tuple[str, str], int]) -> list[str]:
    """GPT-2's merge loop from encoder.py: merge the lowest-ranked pair until none is left."""
    word = tuple(token)
    while len(word) > 1:
        pairs = set(zip(word, word[1:], strict=False))
        bigram = min(pairs, key=lambda p: bpe_ranks.get(p, float("inf")))
        if bigram not in bpe_ranks:
            break
        first, second = bigram
        new_word, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
    return list(word)


# -- SimpleTokenizer ------------------------------------------------------------------------------


def test_simple_vocabulary_is_sorted_characters():
    """SimpleTokenizer's ids are the positions of the characters in sorted(set(text))."""
    text = "hello, world! こんにちは 🙂"
    t = tok.SimpleTokenizer(text)
    chars = sorted(set(text))
    check_equal(t.vocab_size, len(chars), "vocab_size", SIMPLE)
    check_equal(
        t.encode("".join(chars)),
        list(range(len(chars))),
        "encode(sorted characters)",
        f"{SIMPLE}.__init__ (ids must follow sorted character order)",
    )
    check_equal(
        tok.SimpleTokenizer(text[::-1]).encode(text),
        t.encode(text),
        "the ids of a text reversed before building the vocabulary",
        f"{SIMPLE}.__init__ (the vocabulary must not depend on character order)",
    )


def test_simple_round_trip_and_unknown_character():
    """decode(encode(s)) == s, and an unknown character raises a ValueError that names it."""
    text = corpus(200)
    t = tok.SimpleTokenizer(text)
    for s in (text, text[100:150], ""):
        check_equal(t.decode(t.encode(s)), s, "decode(encode(s))", SIMPLE)
    with check_raises(ValueError, "encode('cat Ω') (Ω is not in the vocabulary)", SIMPLE) as err:
        t.encode("cat Ω")
    check(
        "Ω" in str(err.value),
        f"encode('cat Ω') should raise a ValueError naming 'Ω', got {str(err.value)!r}. "
        f"Look at {SIMPLE}.encode.",
    )
    with check_raises(ValueError, "decode([vocab_size]) (an id outside the vocabulary)", SIMPLE):
        t.decode([t.vocab_size])


def test_simple_to_dict_round_trip():
    """SimpleTokenizer.from_dict(t.to_dict()) and tokenizer_from_dict rebuild the same tokenizer."""
    text = "ab ba 日本 🙂"
    t = tok.SimpleTokenizer(text)
    d = json.loads(json.dumps(t.to_dict()))
    check_equal(d.get("type"), "char", "to_dict()['type']", f"{SIMPLE}.to_dict")
    for u in (tok.SimpleTokenizer.from_dict(d), tok.tokenizer_from_dict(d)):
        check_equal(u.encode(text), t.encode(text), "ids after to_dict/from_dict", SIMPLE)


# -- BPE building blocks --------------------------------------------------------------------------


def test_merge_ids():
    """merge_ids replaces each pair left to right without overlaps."""
    cases = [
        (([1, 2, 3, 1, 2], (1, 2), 9), [9, 3, 9]),
        (([5, 5, 5], (5, 5), 9), [9, 5]),
        (([5, 5, 5, 5], (5, 5), 9), [9, 9]),
        (([1], (1, 2), 9), [1]),
        (([], (1, 2), 9), []),
        (([2, 1, 2, 1], (1, 2), 9), [2, 9, 1]),
    ]
    for (ids, pair, new), expected in cases:
        check_equal(
            tok.merge_ids(list(ids), pair, new), expected, f"merge_ids({ids}, {pair}, {new})", MERGE
        )


def test_learn_merges_worked_example():
    """'aaabdaaabac': merge aa, then ab (a tie with (aa, a) that the smaller pair wins), then aa+ab."""
    word = tuple(b"aaabdaaabac")
    got = tok.learn_merges({word: 1}, 3)
    expected = {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    check_equal(
        list(got.items()),
        list(expected.items()),
        "learn_merges on 'aaabdaaabac' (pair -> new id, in order)",
        f"{LEARN} (ties between equal counts go to the smallest pair (a, b))",
    )
    check_equal(
        tok.learn_merges({word: 1}, 100),
        expected,
        "learn_merges with room for 100 merges (it must stop when no pair occurs twice)",
        LEARN,
    )


@pytest.mark.parametrize("seed", range(6))
def test_learn_merges_matches_naive_recount(seed):
    """learn_merges gives exactly the merges of recounting all pairs before every merge."""
    rng = random.Random(seed)
    alphabet = [0, 1, 2] if seed % 2 else list(range(6))
    words = {}
    for _ in range(rng.randint(1, 25)):
        words[tuple(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))] = rng.randint(1, 5)
    if seed == 0:
        words = {tuple([7] * 23 + [8, 7, 7, 7]): 1}  # long runs: overlapping pairs
    expected = naive_learn_merges(words, 40, first_id=10)
    got = tok.learn_merges(words, 40, first_id=10)
    check_matches(
        list(got.items()),
        list(expected.items()),
        f"learn_merges({words}, 40, first_id=10) learned {list(got.items())[:12]}..., but "
        f"recounting every pair before each merge gives {list(expected.items())[:12]}... "
        f"Look at {LEARN}: counts weighted by word counts, neighbours updated after a merge, "
        "ties to the smallest pair, stop when no pair occurs twice.",
    )


# -- BPETokenizer ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A BPE tokenizer trained on the test corpus, with one special token."""
    return tok.BPETokenizer().train(corpus(), 400, special_tokens=["<|endoftext|>"])


def test_train_vocab_size_and_naive_merges(trained):
    """train() learns vocab_size - 256 - specials merges, the same as the naive trainer on chunks."""
    check_equal(
        trained.vocab_size,
        400,
        "vocab_size after train(text, 400, ['<|endoftext|>'])",
        "ch3/tokenizer.py, BPETokenizer.train",
    )
    chunks = Counter(regex.findall(GPT2_PAT, corpus()))
    words = {tuple(c.encode("utf-8")): n for c, n in chunks.items()}
    expected = naive_learn_merges(words, 400 - 256 - 1)
    check_equal(list(trained.merges.items()), list(expected.items()), "the learned merges", LEARN)
    check_equal(
        trained.special_tokens,
        {"<|endoftext|>": 399},
        "special_tokens (ids after the merges)",
        "ch3/tokenizer.py, BPETokenizer.train",
    )


def by_definition(chunk: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """The ids of one chunk by the definition: merge the lowest-ranked pair until none is left."""
    ranks = {pair: r for r, pair in enumerate(merges)}
    ids = list(chunk.encode("utf-8"))
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:], strict=False), key=lambda p: ranks.get(p, 1 << 30))
        if pair not in ranks:
            break
        ids = ref_merge(ids, pair, merges[pair])
    return ids


def test_encode_matches_training_segmentation(trained):
    """encode applies the merges lowest rank first, as GPT-2's bpe() does."""
    for chunk in ["the", " tokenizer", " merged", " 日本語", " 🙂", "aaaa", " catcatcat"]:
        check_equal(
            trained.encode(chunk),
            by_definition(chunk, trained.merges),
            f"encode({chunk!r})",
            ENCODE,
        )
    n_tokens, n_bytes = len(trained.encode(corpus())), len(corpus().encode("utf-8"))
    check(
        n_tokens < 0.6 * n_bytes,
        f"encoding the training text should take fewer than 60% as many tokens as bytes, got "
        f"{n_tokens:,} tokens for {n_bytes:,} bytes. Look at {ENCODE}.",
    )


# Merges that make runs of one letter: "aaa" is (aa)a, not a(aa), and "aaaa" is (aa)(aa).
RUN_MERGES = {(97, 97): 256, (256, 97): 257, (256, 256): 258, (98, 97): 259, (259, 256): 260}
# Merges as a converted tiktoken vocabulary lists them: "abc" is made twice, as a + bc and later
# as ab + c, and (abc, ab) ranks between the two. "abcabc" is then [abc, abc] by the definition
# (both ab + c at once), not [abcab, c] (one at a time, leftmost first).
CONVERTED_MERGES = {(97, 98): 256, (98, 99): 257, (97, 257): 258, (258, 256): 259, (256, 99): 258}


@pytest.mark.parametrize("which", ["trained", "runs", "converted"])
def test_encode_of_a_long_text_equals_each_chunk_by_the_definition(trained, which):
    """Encoding thousands of distinct words in one call (a cold cache) gives, chunk by chunk,
    the ids of the definition: runs of one letter, multi-byte characters, words longer than
    32 bytes, and the same words again once they are cached."""
    if which != "trained":
        trained = tok.BPETokenizer(RUN_MERGES if which == "runs" else CONVERTED_MERGES)
    rng = random.Random(5)
    letters = "aaabbcnnndeéあ🙂 "
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(3000)}
    words |= {"a" * n for n in range(1, 40)} | {"abc" * n for n in range(1, 5)}
    words |= {" " + "ab" * 20, "catcat" * 8}
    mixed = " ".join(sorted(words)) + corpus(300)
    plain = " ".join(sorted(w for w in words if w.isascii()))  # ASCII text takes other paths
    for text in (mixed, plain):
        fresh = tok.BPETokenizer.from_dict(trained.to_dict())  # nothing cached yet
        chunks = regex.findall(GPT2_PAT, text)
        expected = [i for chunk in chunks for i in by_definition(chunk, trained.merges)]
        kind = "an ASCII" if text.isascii() else "a"
        for attempt in ("first call", "second call"):
            got = fresh.encode(text)
            if got != expected:
                at = next(
                    (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                    min(len(got), len(expected)),
                )
                fail(
                    f"encode of {kind} {len(text):,}-character text with {len(set(chunks)):,} "
                    f"distinct chunks ({attempt}) differs from encoding each chunk by the "
                    f"definition at id {at}: got {got[at : at + 5]}, expected "
                    f"{expected[at : at + 5]}. Look at {ENCODE}."
                )


@pytest.mark.parametrize("pattern", ["gpt2", None])
def test_round_trip_any_string(trained, pattern):
    """decode(encode(s)) == s for random strings: Japanese, emoji, combining marks, controls."""
    t = trained if pattern else tok.BPETokenizer().train(corpus(800), 330, pattern=None)
    for s in random_strings(150, seed=1 if pattern else 2):
        ids = t.encode(s)
        back = t.decode(ids)
        if back != s:
            fail(f"decode(encode({s!r})) gave {back!r} (ids {ids}). Look at {DECODE} and {ENCODE}.")
        if not all(isinstance(i, int) for i in ids):
            kinds = sorted({type(i).__name__ for i in ids})
            fail(
                f"encode should return a list of int, got elements of type {kinds}. Look at {ENCODE}."
            )


def test_long_text_without_pattern():
    """With pattern=None a long text is one chunk, and encode still applies merges by rank."""
    t = tok.BPETokenizer().train(corpus(800), 360, pattern=None)
    text = corpus(600, seed=9)
    ids = list(text.encode("utf-8"))
    ranks = {pair: r for r, pair in enumerate(t.merges)}
    while len(ids) > 1:  # the definition, one merge at a time
        pair = min(zip(ids, ids[1:], strict=False), key=lambda p: ranks.get(p, 1 << 30))
        if pair not in ranks:
            break
        ids = ref_merge(ids, pair, t.merges[pair])
    check_equal(
        t.encode(text), ids, f"encode of a {len(text)}-character text with pattern=None", ENCODE
    )
    check_equal(t.decode(ids), text, "decode of that text", DECODE)


def test_special_tokens_whole_and_never_merged():
    """A special token encodes to its one id and its text never takes part in merges."""
    # Many short documents: unless cut out, the special token's pieces are the commonest pairs.
    text = "<|endoftext|>".join(corpus(15, seed=i) for i in range(200))
    t = tok.BPETokenizer().train(text, 300, special_tokens=["<|endoftext|>", "<|pad|>"])
    eot, pad = t.special_tokens["<|endoftext|>"], t.special_tokens["<|pad|>"]
    check_equal(
        t.encode("<|endoftext|>"),
        [eot],
        "encode('<|endoftext|>')",
        "ch3/tokenizer.py, BPETokenizer.encode",
    )
    ids = t.encode("the cat<|endoftext|><|pad|>日本")
    check_equal(
        ids.count(eot) + ids.count(pad),
        2,
        "special ids in encode('the cat<|endoftext|><|pad|>日本')",
        "ch3/tokenizer.py, BPETokenizer.encode",
    )
    check_equal(
        t.decode(ids),
        "the cat<|endoftext|><|pad|>日本",
        "decode of a text with special tokens",
        DECODE,
    )
    leaked = [
        t.vocab[i]
        for i in t.merges.values()
        if b"<|" in t.vocab[i] or b"|>" in t.vocab[i] or b"ndoft" in t.vocab[i]
    ]
    check(
        not leaked,
        f"merged tokens {leaked} contain pieces of the special token '<|endoftext|>': special "
        "tokens must be cut out of the text before training. Look at ch3/tokenizer.py, BPETokenizer.train.",
    )


def test_decode_unknown_id_and_broken_utf8(trained):
    """decode raises ValueError for an unknown id and shows half a character as U+FFFD."""
    with check_raises(
        ValueError,
        "decode of an id outside the vocabulary",
        "ch3/tokenizer.py, BPETokenizer.decode",
    ):
        trained.decode([trained.vocab_size + 5])
    ids = trained.encode("日")  # three bytes
    first_byte = [trained.byte_ids["日".encode()[0]]]
    try:
        half = trained.decode(first_byte)
    except UnicodeDecodeError:
        fail(
            "decode of the first byte of '日' alone raised UnicodeDecodeError: a model can emit "
            f"half a character, so decode with errors='replace'. Look at {DECODE}."
        )
    check_equal(half, "\ufffd", "decode of the first byte of '日' alone", DECODE)
    check_equal(trained.decode(ids), "日", "decode(encode('日'))", DECODE)


def test_save_load_and_dicts(trained, tmp_path):
    """save/load, to_dict/from_dict and tokenizer_from_dict keep every encoding."""
    path = tmp_path / "tok.json"
    trained.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    check(
        {"type", "version", "pattern", "byte_ids", "merges", "special_tokens"} <= set(d),
        f"the saved JSON should have the documented keys, got {sorted(d)}. Look at ch3/tokenizer.py, BPETokenizer.to_dict.",
    )
    sample = corpus(100, seed=5) + "<|endoftext|> 日本語🙂"
    expected = trained.encode(sample)
    for name, u in (
        ("load", tok.BPETokenizer.load(path)),
        ("from_dict", tok.BPETokenizer.from_dict(trained.to_dict())),
        ("tokenizer_from_dict", tok.tokenizer_from_dict(d)),
    ):
        check_equal(
            u.encode(sample), expected, f"ids after {name}", "ch3/tokenizer.py, BPETokenizer"
        )
        check_equal(u.decode(expected), sample, f"text after {name}", DECODE)


# -- GPT-2's published files ----------------------------------------------------------------------


def write_gpt2_files(tmp_path, merges_by_bytes: list[tuple[bytes, bytes]]):
    """vocab.json and merges.txt in GPT-2's format; merged tokens get shuffled ids."""
    b2u = gpt2_bytes_to_unicode()

    def u(data: bytes) -> str:
        return "".join(b2u[b] for b in data)

    encoder = {u(bytes([b])): i for i, b in enumerate(b2u)}  # GPT-2's byte order
    merged_ids = list(range(256, 256 + len(merges_by_bytes)))
    random.Random(0).shuffle(merged_ids)  # ids need not follow ranks: only merges.txt ranks
    for (left, right), i in zip(merges_by_bytes, merged_ids, strict=True):
        encoder[u(left + right)] = i
    encoder["<|endoftext|>"] = len(encoder)
    write_vocab_and_merges(tmp_path, encoder, [(u(a), u(b)) for a, b in merges_by_bytes])
    ranks = {(u(a), u(b)): r for r, (a, b) in enumerate(merges_by_bytes)}
    return encoder, ranks, b2u


def test_load_gpt2_files_encodes_like_gpt2(tmp_path):
    """load_gpt2_files gives the ids of GPT-2's own encode loop, for files in GPT-2's format."""
    chunks = Counter(regex.findall(GPT2_PAT, corpus(1500, seed=3)))
    learned = naive_learn_merges({tuple(c.encode("utf-8")): n for c, n in chunks.items()}, 120)
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), i in learned.items():
        vocab[i] = vocab[a] + vocab[b]
    merges_by_bytes = [(vocab[a], vocab[b]) for a, b in learned]
    encoder, ranks, b2u = write_gpt2_files(tmp_path, merges_by_bytes)
    t = tok.load_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")

    def gpt2_encode(text: str) -> list[int]:
        ids = []
        for piece in regex.findall(GPT2_PAT, text):
            token = "".join(b2u[b] for b in piece.encode("utf-8"))
            ids.extend(encoder[s] for s in gpt2_bpe(token, ranks))
        return ids

    for s in [
        corpus(60, seed=4),
        "Hello world's 3.14 日本語 🙂 tokens",
        *random_strings(40, seed=3),
    ]:
        got = t.encode(s)
        expected = gpt2_encode(s)
        if got != expected:
            k = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None
            )
            k = min(len(got), len(expected)) if k is None else k
            fail(
                f"with GPT-2 files, encode({s[:40]!r}) differs from GPT-2's algorithm at token {k}: "
                f"got {got[k : k + 6]}, expected {expected[k : k + 6]}. Look at {ENCODE}: apply "
                "the pair with the lowest rank (self._ranks), not the lowest id."
            )
        check_equal(t.decode(got), s, f"decode(encode({s[:30]!r})) with GPT-2 files", DECODE)
    check_equal(
        t.encode("a<|endoftext|>b"),
        [encoder["a"], encoder["<|endoftext|>"], encoder["b"]],
        "encode('a<|endoftext|>b') with GPT-2 files",
        "ch3/tokenizer.py, load_gpt2_files",
    )
