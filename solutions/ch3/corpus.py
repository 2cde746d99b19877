"""A built-in training corpus: simple English sentences from a small seeded grammar.

The project writes its own text instead of downloading one, so training runs anywhere, offline,
and a test can tell what "well formed" means: every word of the corpus is in :data:`WORDS`, so the
share of generated words found there measures how much structure a model has learned (a model
that learned nothing spells few real words; one that learned the spelling and the grammar writes
sentences like these)::

    the little cat sees a red ball. my old dog runs to the garden.
"""

from __future__ import annotations

import random
import re

DETERMINERS = ("the", "a", "my", "your", "one")
ADJECTIVES = ("little", "big", "red", "old", "happy", "quiet", "green", "brave", "tired", "small")
NOUNS = ("cat", "dog", "bird", "girl", "boy", "fox", "teacher", "farmer", "baker", "king")
OBJECTS = ("ball", "apple", "book", "hat", "box", "cake", "song", "letter", "stone", "map")
TRANSITIVE = ("sees", "finds", "likes", "wants", "takes", "makes", "reads", "holds", "opens")
INTRANSITIVE = ("runs", "sleeps", "sings", "walks", "waits", "jumps", "smiles", "dances")
PREPOSITIONS = ("to", "near", "in", "under", "behind")
PLACES = ("garden", "house", "river", "forest", "market", "school", "kitchen", "park")
CONJUNCTIONS = ("and", "but", "so")

WORDS: frozenset[str] = frozenset(
    DETERMINERS
    + ADJECTIVES
    + NOUNS
    + OBJECTS
    + TRANSITIVE
    + INTRANSITIVE
    + PREPOSITIONS
    + PLACES
    + CONJUNCTIONS
    + ("then", "it")
)


def _noun_phrase(rng: random.Random, nouns: tuple[str, ...]) -> str:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(nouns))
    return " ".join(words)


def _clause(rng: random.Random) -> str:
    subject = _noun_phrase(rng, NOUNS)
    if rng.random() < 0.5:
        return f"{subject} {rng.choice(TRANSITIVE)} {_noun_phrase(rng, OBJECTS)}"
    place = f"{rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}"
    return f"{subject} {rng.choice(INTRANSITIVE)} {place}"


def sentence(rng: random.Random) -> str:
    """One sentence: a clause, sometimes two joined by a conjunction, ending with a period."""
    text = _clause(rng)
    if rng.random() < 0.25:
        text += f" {rng.choice(CONJUNCTIONS)} {_clause(rng)}"
    return text + "."


def generate_corpus(n_sentences: int = 5000, seed: int = 0) -> str:
    """``n_sentences`` sentences, eight to a line, the same for the same ``seed``."""
    rng = random.Random(seed)
    sentences = [sentence(rng) for _ in range(n_sentences)]
    lines = [" ".join(sentences[i : i + 8]) for i in range(0, len(sentences), 8)]
    return "\n".join(lines) + "\n"


def words_of(text: str) -> list[str]:
    """The lowercase words of ``text`` (runs of letters)."""
    return re.findall(r"[a-z]+", text.lower())


def word_rate(text: str, vocabulary: frozenset[str] = WORDS) -> float:
    """The share of the words of ``text`` that are in ``vocabulary`` (0.0 for no words).

    The first and the last word are left out when the text has more than two: a sample cut at an
    arbitrary length usually ends in the middle of a word.
    """
    words = words_of(text)
    if len(words) > 2:
        words = words[1:-1]
    if not words:
        return 0.0
    return sum(w in vocabulary for w in words) / len(words)
