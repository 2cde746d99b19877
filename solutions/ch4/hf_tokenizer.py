"""A Hugging Face ``tokenizer.json`` of byte-level BPE, read into chapter 3's BPETokenizer.

A model folder from the Hugging Face Hub carries its tokenizer as one JSON file. For the byte-level
BPE of GPT-2, Llama 3 and Qwen2 it holds what chapter 3's tokenizer is made of, under other names::

    "model": {"type": "BPE", "vocab": {"Ġthe": 279, ...},     # token (GPT-2's byte alphabet) -> id
              "merges": ["Ġ t", ...] or [["Ġ", "t"], ...],    # by rank, lowest first
              "byte_fallback": false, "ignore_merges": true}
    "added_tokens": [{"id": 128000, "content": "<|begin_of_text|>", ...}, ...]
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "..."}, "behavior": "Isolated"},   # the chunks
        {"type": "ByteLevel", "use_regex": false}]}                 # GPT-2's: {"type": "ByteLevel"}
    "normalizer": null, or {"type": "NFC"} (Qwen2)
    "post_processor": ... a template that puts <|begin_of_text|> first (Llama 3)
    "decoder": {"type": "ByteLevel"}

:func:`load_hf_tokenizer` turns that into an :class:`HFTokenizer`: the chapter 3
:class:`BPETokenizer` of this tree (your ``_encode_chunk`` and ``decode`` do the work) plus the
three things a tokenizer.json can add to it:

- ``ignore_merges`` (Llama 3): a chunk that is a token of the vocabulary is that token, without
  merging (tiktoken's rule, which Llama 3's vocabulary comes from);
- the NFC normalizer (Qwen2): the text is put in Unicode normal form C before it is split;
- tokens no merge makes (possible in a converted tiktoken vocabulary): ``decode`` knows them.

It encodes as ``tokenizers.Tokenizer.encode(text, add_special_tokens=False)`` does; the ids the
post-processor would put around a text (Llama 3's ``<|begin_of_text|>``) are in ``prefix_ids``.
Every other kind of tokenizer.json (SentencePiece-style BPE with ``byte_fallback``, as Llama 2,
Mistral and Mixtral use; Unigram; WordPiece) raises one ValueError that names the file and what it
has that is not supported.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..ch3.tokenizer import GPT2_PATTERN, BPETokenizer, bytes_to_unicode

SUPPORTED = "only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2) are supported"
SENTENCEPIECE = "SentencePiece-style tokenizers (Llama 2, Mistral, Mixtral) are not supported"


class HFTokenizer(BPETokenizer):
    """Chapter 3's byte-level BPE with what a Hugging Face tokenizer.json adds (module docstring).

    Attributes (besides :class:`BPETokenizer`'s):
        prefix_ids: the ids a model expects before a text (``[128000]`` for Llama 3, ``[]`` for
            Qwen2); :meth:`encode` leaves them out.
        ignore_merges: a chunk that is a whole token of the vocabulary encodes to that token.
        nfc: the text is normalised to NFC before it is encoded.

    ``to_dict`` (chapter 3's format) describes the BPE part only: read the tokenizer.json again
    rather than saving this tokenizer in a checkpoint.
    """

    def __init__(
        self,
        merges: Mapping[tuple[int, int], int],
        special_tokens: Mapping[str, int],
        pattern: str | None,
        byte_ids: Iterable[int],
        *,
        unmerged: Mapping[int, bytes] | None = None,
        ignore_merges: bool = False,
        nfc: bool = False,
        prefix_ids: Iterable[int] = (),
    ) -> None:
        super().__init__(merges, special_tokens, pattern, byte_ids)
        for i, token in (unmerged or {}).items():  # tokens no merge makes: decode knows them
            self.vocab.setdefault(i, token)
        self.ignore_merges = ignore_merges
        self.nfc = nfc
        self.prefix_ids = list(prefix_ids)
        specials = set(self.special_tokens.values())
        self._whole = {token: i for i, token in self.vocab.items() if i not in specials}

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        if self.ignore_merges and (whole := self._whole.get(chunk)) is not None:
            return [whole]
        return super()._encode_chunk(chunk)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, as Hugging Face's ``encode(text, add_special_tokens=False)``."""
        return super().encode(unicodedata.normalize("NFC", text) if self.nfc else text)


def load_hf_tokenizer(path: str | Path) -> HFTokenizer:
    """The tokenizer of a Hugging Face ``tokenizer.json`` (``path`` is the file or its folder).

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: one line naming the file, for a file that is not JSON, not byte-level BPE, or
            uses an option this reader does not implement.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
            raise ValueError(f"{path} has only a tokenizer.model: {SENTENCEPIECE} ({SUPPORTED})")
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (a Hugging Face tokenizer.json)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a tokenizer.json (not JSON: {e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise ValueError(f"{path} is not a tokenizer.json (it has no 'model' object)")
    try:
        return _from_spec(spec)
    except (KeyError, TypeError, ValueError) as e:
        text = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{path}: {text}") from None


def _from_spec(spec: dict[str, Any]) -> HFTokenizer:
    model = spec["model"]
    kind = model.get("type")
    if kind != "BPE":
        raise ValueError(f"its model is {kind!r}: {SENTENCEPIECE} ({SUPPORTED})")
    if model.get("byte_fallback"):
        raise ValueError(f"its BPE has byte_fallback: {SENTENCEPIECE} ({SUPPORTED})")
    for option in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(option):
            raise ValueError(f"its BPE sets {option}={model[option]!r}: {SUPPORTED}")
    pattern = _pattern(spec.get("pre_tokenizer"))
    nfc = _nfc(spec.get("normalizer"))
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise ValueError(f"its decoder is {decoder.get('type')!r}, not ByteLevel: {SUPPORTED}")

    added = {}
    for token in spec.get("added_tokens") or []:
        for option in ("lstrip", "rstrip", "single_word"):
            if token.get(option):
                raise ValueError(f"added token {token['content']!r} sets {option}: not supported")
        added[token["content"]] = int(token["id"])

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab: dict[str, int] = model["vocab"]
    token_bytes: dict[int, bytes] = {}
    for text, i in vocab.items():
        if added.get(text) == i:
            continue  # an added token listed in the vocabulary too (GPT-2's <|endoftext|>)
        try:
            token_bytes[i] = bytes(byte_of[char] for char in text)
        except KeyError:
            raise ValueError(
                f"vocabulary token {text!r} is not written in GPT-2's byte alphabet: {SUPPORTED}"
            ) from None
    missing = [b for b, char in bytes_to_unicode().items() if char not in vocab]
    if missing:
        raise ValueError(f"the vocabulary has no token for byte {min(missing)}: {SUPPORTED}")
    byte_ids = [vocab[bytes_to_unicode()[b]] for b in range(256)]

    merges: dict[tuple[int, int], int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        parts = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(parts) != 2:
            raise ValueError(f"merge {rank} ({merge!r}) is not two tokens")
        left, right = parts
        try:
            pair, made = (vocab[left], vocab[right]), vocab[left + right]
        except KeyError as e:
            raise ValueError(f"merge {rank} ({merge!r}) uses {e.args[0]!r}, not in vocab") from None
        merges.setdefault(pair, made)

    made = set(byte_ids) | set(merges.values())
    unmerged = {i: b for i, b in token_bytes.items() if i not in made}
    return HFTokenizer(
        merges,
        added,
        pattern,
        byte_ids,
        unmerged=unmerged,
        ignore_merges=bool(model.get("ignore_merges")),
        nfc=nfc,
        prefix_ids=_prefix_ids(spec.get("post_processor"), added),
    )


def _steps(component: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """The parts of a normalizer, pre-tokenizer or post-processor: those of a "Sequence" (listed
    under ``key``), else the component alone; none for null."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return list(component.get(key) or [])
    return [component]


def _pattern(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """The chunking regex: GPT-2's for a lone ByteLevel, a Split's before a regex-less ByteLevel."""
    steps = _steps(pre_tokenizer, "pretokenizers")
    kinds = [step.get("type") for step in steps]
    if "Metaspace" in kinds:
        raise ValueError(f"its pre-tokenizer is Metaspace: {SENTENCEPIECE} ({SUPPORTED})")
    if not kinds or kinds[-1] != "ByteLevel" or kinds.count("ByteLevel") != 1:
        raise ValueError(f"its pre-tokenizer is {kinds}, not ending in ByteLevel: {SUPPORTED}")
    *splits, byte_level = steps
    if byte_level.get("add_prefix_space"):
        raise ValueError("its ByteLevel pre-tokenizer sets add_prefix_space: not supported")
    if not splits:
        return GPT2_PATTERN if byte_level.get("use_regex", True) else None
    split = splits[0]
    regex = (split.get("pattern") or {}).get("Regex")
    if (
        len(splits) != 1
        or split.get("type") != "Split"
        or regex is None
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or byte_level.get("use_regex", True)
    ):
        raise ValueError(
            f"its pre-tokenizer {kinds} is not one Split by a regex (Isolated) and then a "
            "ByteLevel without a regex: not supported"
        )
    return regex


def _nfc(normalizer: dict[str, Any] | None) -> bool:
    """Whether the normalizer is NFC (Qwen2); no normalizer is False; anything else raises."""
    kinds = [step.get("type") for step in _steps(normalizer, "normalizers")]
    if kinds not in ([], ["NFC"]):
        raise ValueError(f"its normalizer is {kinds}: only none or NFC is supported")
    return kinds == ["NFC"]


def _prefix_ids(processor: dict[str, Any] | None, added: Mapping[str, int]) -> list[int]:
    """The special tokens a TemplateProcessing puts before a single text ($A), if any."""
    for step in _steps(processor, "processors"):
        if step.get("type") != "TemplateProcessing":
            continue
        prefix: list[int] = []
        for piece in step.get("single") or []:
            if "Sequence" in piece:
                break
            name = piece["SpecialToken"]["id"]
            ids = (step.get("special_tokens") or {}).get(name, {}).get("ids")
            prefix.extend(ids if ids is not None else [added[name]])
        return prefix
    return []
