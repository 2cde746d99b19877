"""ch4/hf_tokenizer.py: Hugging Face tokenizer.json files read into chapter 3's BPETokenizer
(project tests of a given file, not a graded stage).

Files the tests write by hand, with the ids worked out here, need nothing but the tree; the
oracle tests train real tokenizers with the ``tokenizers`` library (GPT-2, Llama 3 and Qwen2
layouts, and a tiktoken vocabulary converted the way transformers converts Llama 3's) and compare
every id.
"""

from __future__ import annotations

import json

import pytest

from grader.tree import load
from tests.ch3.gpt2_format import gpt2_bytes_to_unicode

hf_tok = load("ch4.hf_tokenizer")

BYTE = gpt2_bytes_to_unicode()  # byte value -> its character in the vocab files
# Llama 3's split pattern (Qwen2's differs only in \p{N} instead of \p{N}{1,3}).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PRE = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SPLIT_PRE = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ],
}  # fmt: skip


def added(i: int, content: str) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}  # fmt: skip


def write_tokenizer_json(path, vocab, merges, *, added_tokens=(), pre=None, **extra):
    """A tokenizer.json in Hugging Face's layout; ``extra`` replaces top-level or model fields."""
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "ignore_merges": False, "vocab": vocab, "merges": merges}  # fmt: skip
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": list(added_tokens),
        "normalizer": None,
        "pre_tokenizer": pre or GPT2_PRE,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
        "model": model,
    }
    for key, value in extra.items():
        (model if key in model else spec)[key] = value
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def byte_vocab() -> dict[str, int]:
    """The 256 bytes, with ids in GPT-2's order of the byte characters (not the byte values)."""
    return {char: i for i, char in enumerate(BYTE.values())}


def ids_of(vocab: dict[str, int], text: str) -> list[int]:
    """The byte ids of ``text``, no merges."""
    return [vocab[BYTE[b]] for b in text.encode("utf-8")]


# ------------------------------------------------------------------------ files written by hand


def test_gpt2_layout_encodes_with_its_merges(tmp_path):
    """Merges given as "a b" strings, ids in the file's order, an added token matched whole."""
    vocab = byte_vocab()
    merges = ["Ġ t", "h e", "Ġt he"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # GPT-2 lists its special token in the vocab too
    path = write_tokenizer_json(
        tmp_path / "tokenizer.json", vocab, merges, added_tokens=[added(259, "<|endoftext|>")]
    )
    tok = hf_tok.load_hf_tokenizer(tmp_path)  # the folder works as well as the file
    t, he, the_ = vocab["t"], vocab["he"], vocab["Ġthe"]
    expected = [t, he, the_, vocab["m"], vocab["e"], 259, *ids_of(vocab, "!")]
    assert tok.encode("the theme<|endoftext|>!") == expected
    assert tok.decode(expected) == "the theme<|endoftext|>!"
    assert tok.vocab_size == 260 and tok.prefix_ids == []
    assert isinstance(tok, load("ch3.tokenizer").BPETokenizer)  # chapter 3's, of the same tree
    assert hf_tok.load_hf_tokenizer(path).encode("the") == [t, he]


def test_merges_as_pairs_and_a_split_regex(tmp_path):
    """Merges given as [a, b] pairs (newer files); Llama 3's regex cuts digits in threes."""
    vocab = byte_vocab()
    vocab["12"] = len(vocab)
    write_tokenizer_json(tmp_path / "t.json", vocab, [["1", "2"]], pre=SPLIT_PRE)
    tok = hf_tok.load_hf_tokenizer(tmp_path / "t.json")
    # "1212" is cut as "121" + "2": merges never cross the cut.
    assert tok.encode("1212") == [vocab["12"], vocab["1"], vocab["2"]]


def tiktoken_style(path, ranks: dict[bytes, int], **extra):
    """A tokenizer.json made from tiktoken ranks as transformers converts Llama 3's: every split
    of a token into two tokens is a merge, ranked by the token it makes."""
    text = {b: "".join(BYTE[x] for x in b) for b in ranks}
    merges = []
    for token, rank in ranks.items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token))]
        splits = [(a, b) for a, b in splits if a in ranks and b in ranks]
        merges += sorted(((ranks[a], ranks[b]), rank, [text[a], text[b]]) for a, b in splits)
    merges.sort(key=lambda m: m[1])
    vocab = {text[b]: rank for b, rank in ranks.items()}
    return write_tokenizer_json(
        path, vocab, [m[2] for m in merges], pre=SPLIT_PRE, ignore_merges=True, **extra
    )


def test_converted_tiktoken_vocabulary(tmp_path):
    """Several merges make one token, a merge uses a token made later, a token no merge makes
    is still one token (ignore_merges) and decodes."""
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"bc", b"abc", b"ab", b"qqqq"):  # abc before ab: (ab, c) uses a later token
        ranks[token] = len(ranks)
    bc, abc, ab, qqqq = 256, 257, 258, 259
    tok = hf_tok.load_hf_tokenizer(tiktoken_style(tmp_path / "tokenizer.json", ranks))
    assert tok.merges == {(ord("b"), ord("c")): bc, (ord("a"), bc): abc, (ab, ord("c")): abc,
                          (ord("a"), ord("b")): ab}  # fmt: skip
    assert tok.encode("abc") == [abc]
    assert tok.encode("abx") == [ab, ord("x")]
    assert tok.encode("qqqq qqqqq") == [qqqq, ord(" "), *[ord("q")] * 5]  # whole word only
    assert tok.decode([qqqq, abc]) == "qqqqabc"


def test_post_processor_prefix_and_nfc(tmp_path):
    """A template's <|begin_of_text|> becomes prefix_ids (encode leaves it out); an NFC
    normalizer composes 'e' + U+0301 into 'é' before encoding."""
    vocab = byte_vocab()
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [256],
                                                 "tokens": ["<|begin_of_text|>"]}},
    }  # fmt: skip
    processor = {"type": "Sequence", "processors": [{"type": "ByteLevel"}, template]}
    write_tokenizer_json(
        tmp_path / "tokenizer.json", vocab, [], added_tokens=[added(256, "<|begin_of_text|>")],
        post_processor=processor, normalizer={"type": "NFC"},
    )  # fmt: skip
    tok = hf_tok.load_hf_tokenizer(tmp_path)
    assert tok.prefix_ids == [256]
    assert tok.encode("e\u0301") == ids_of(vocab, "\u00e9")
    assert tok.encode("<|begin_of_text|>") == [256]


UNSUPPORTED = {
    "unigram": ({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}, "'Unigram'"),
    "byte_fallback": ({"byte_fallback": True}, "byte_fallback"),
    "metaspace": ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "Metaspace"),
    "normalizer": ({"normalizer": {"type": "Lowercase"}}, "normalizer"),
    "decoder": ({"decoder": {"type": "WordPiece"}}, "decoder"),
    "prefix_space": ({"pre_tokenizer": {**GPT2_PRE, "add_prefix_space": True}}, "add_prefix_space"),
    "suffix": ({"end_of_word_suffix": "</w>"}, "end_of_word_suffix"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_what_is_not_supported_is_one_line_naming_the_file(case, tmp_path):
    change, words = UNSUPPORTED[case]
    path = write_tokenizer_json(tmp_path / "tokenizer.json", byte_vocab(), [], **change)
    with pytest.raises(ValueError) as error:
        hf_tok.load_hf_tokenizer(path)
    message = str(error.value)
    assert str(path) in message and words in message and "\n" not in message, message
    if case in ("unigram", "byte_fallback", "metaspace"):
        assert "SentencePiece" in message


def test_broken_files_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        hf_tok.load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0b")  # SentencePiece's own file
    with pytest.raises(ValueError, match="has only a tokenizer.model: SentencePiece"):
        hf_tok.load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a tokenizer.json"):
        hf_tok.load_hf_tokenizer(tmp_path)
    path = write_tokenizer_json(tmp_path / "t.json", byte_vocab(), ["a zz"])
    with pytest.raises(ValueError, match=r"t\.json: merge 0 \('a zz'\) uses 'zz', not in vocab"):
        hf_tok.load_hf_tokenizer(path)
    vocab = byte_vocab()
    del vocab[BYTE[0]]
    with pytest.raises(ValueError, match="no token for byte 0"):
        hf_tok.load_hf_tokenizer(write_tokenizer_json(tmp_path / "u.json", vocab, []))


# ----------------------------------------------------------------- the tokenizers library's ids

TEXTS = [
    "the cat sat on the mat.",
    "Héllo wörld, 日本語のテキスト 🐈 1234567 and 3.14!!",
    "e\u0301 cafe\u0301 ﬁ",  # NFC composes the first two, leaves the ligature
    "a<|end_of_text|>b<|begin_of_text|>c",
    "   x\n\n\ty  \r\nz",
    "it's THEY'RE don't I'LL",
    "",
]


def _corpus() -> str:
    return load("ch3.corpus").generate_corpus(400) + "".join(TEXTS[1:3]) * 3


def _trained(flavour: str):
    """A byte-level BPE trained by the tokenizers library in one model family's layout."""
    tk = pytest.importorskip("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE(ignore_merges=flavour == "llama3"))
    if flavour == "gpt2":
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        pattern = LLAMA3_PATTERN if flavour == "llama3" else LLAMA3_PATTERN.replace("{1,3}", "")
        split = tk.pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated")
        byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([split, byte_level])
    if flavour == "qwen2":
        tokenizer.normalizer = tk.normalizers.NFC()
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_corpus()], trainer)
    if flavour == "llama3":
        tokenizer.post_processor = tk.processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
        )
    return tokenizer


@pytest.mark.parametrize("flavour", ["gpt2", "llama3", "qwen2"])
def test_same_ids_as_the_tokenizers_library(flavour, tmp_path):
    """GPT-2's, Llama 3's and Qwen2's layouts: every id and every decoded text as the library's."""
    theirs = _trained(flavour)
    theirs.save(str(tmp_path / "tokenizer.json"))
    ours = hf_tok.load_hf_tokenizer(tmp_path / "tokenizer.json")
    for text in [*TEXTS, _corpus()[:4000]]:
        ids = theirs.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == ids, text[:60]
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=False), text[:60]
    with_specials = theirs.encode("the cat").ids
    assert ours.prefix_ids + ours.encode("the cat") == with_specials


def test_converted_tiktoken_vocabulary_matches_the_tokenizers_library(tmp_path):
    """Ranks learned on the corpus, converted like Llama 3's: the library gives the same ids."""
    tk = pytest.importorskip("tokenizers")
    bpe = load("ch3.tokenizer").BPETokenizer().train(_corpus(), vocab_size=600)
    ranks = {token: i for i, token in sorted(bpe.vocab.items())}
    ranks[b" zyzzyva"] = len(ranks)  # a word no merge makes
    path = tiktoken_style(
        tmp_path / "tokenizer.json", ranks, added_tokens=[added(len(ranks), "<|eot|>")]
    )
    theirs, ours = tk.Tokenizer.from_file(str(path)), hf_tok.load_hf_tokenizer(path)
    texts = load("ch3.corpus").generate_corpus(300, seed=1).splitlines()
    for text in [*texts, *TEXTS, "a zyzzyva<|eot|>"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, text
