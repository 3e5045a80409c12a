"""Train, dev and test: which names go where, and each split as one token stream.

Names are split by name (repeated names kept together, so no name lands in two splits), 80/10/10,
deterministically for a seed. Each split is one token stream: a boundary token, then each name's
tokens followed by a boundary (one byte a token while the vocabulary fits a byte). Distinct names
are found by hashing code points column by column, a loop as long as the longest name, not as
long as the list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from kmlp.data.files import SPACE, Names, index_dtype, lookup, name_at
from kmlp.data.vocab import Vocabulary

SPLITS = ("train", "dev", "test")


def split_groups(count: int, seed: int = 42, fractions=(0.8, 0.1, 0.1)) -> list[np.ndarray]:
    """Which of ``count`` distinct names (numbered by first appearance) go to train, dev and test,
    each in the order its split lists them; deterministic for a given seed."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(count)
    n1 = int(round(fractions[0] * count))
    n2 = int(round((fractions[0] + fractions[1]) * count))
    return [order[:n1], order[n1:n2], order[n2:]]


def split_words(words, seed: int = 42, fractions=(0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Split by name into train/dev/test, deterministic for a given seed (as :class:`NamesData` does).

    Repeated names are kept together, so no name lands in two splits.
    """
    counts = Counter(words)
    unique = list(counts)  # in order of first appearance
    parts = split_groups(len(unique), seed, fractions)
    return {split: [w for i in part.tolist() for w in [unique[i]] * counts[unique[i]]]
            for split, part in zip(SPLITS, parts)}


def _columns(lengths: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``(order, reach)``: indices into ``lengths``, longest first, and for each character position
    j how many of them are longer than j. The j-th characters of the first ``reach[j]`` names are
    one gather, so a loop over names becomes a loop over positions, as short as the longest name."""
    longest = int(lengths.max(initial=0))
    shortfall = longest - lengths
    if longest < 2**16:
        shortfall = shortfall.astype(np.uint16)  # numpy's stable sort is a radix sort for 16 bits
    order = np.argsort(shortfall, kind="stable").astype(index_dtype(len(lengths)))
    return order, np.searchsorted(-lengths[order], -np.arange(longest), side="left").tolist()


def present(names: Names) -> np.ndarray:
    """A flag per code point (up to the largest in ``names.codes``): does some name hold it? Every
    character of the text is a name's but line breaks and the whitespace stripped around names."""
    present = np.zeros(int(names.codes.max(initial=0)) + 1, bool)
    present[names.codes] = True  # (np.bincount would copy the text as int64 first)
    for space in np.flatnonzero(present & lookup(SPACE, np.arange(len(present)))).tolist():
        present[space] = (name_at(names, np.flatnonzero(names.codes == space)) >= 0).any()
    return present


def first_holding(names: Names, flags: np.ndarray) -> int:
    """The first name (in order) holding a code point whose flag is set, or -1."""
    name = name_at(names, np.flatnonzero(flags[names.codes]))
    name = name[name >= 0]
    return int(name.min()) if name.size else -1


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def distinct(names: Names) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct name once, in order of first appearance (as ``dict.fromkeys``): the index of
    its first occurrence, and how many times it occurs.

    Names are told apart by a 64-bit hash (FNV-1a over code points), and every name is then compared
    with the first one of its hash; if two different names ever share one, the hash is salted anew.
    """
    order, reach = _columns(names.lengths)
    for salt in range(8):
        first, inverse = _groups(_hash_names(names, order, reach, salt))
        if _same_names(names, order, reach, first[inverse][order]):
            break
    else:
        raise AssertionError("names could not be told apart by hashing")
    appearance = np.argsort(first).astype(first.dtype)
    rank = np.empty_like(appearance)
    rank[appearance] = np.arange(len(appearance), dtype=first.dtype)
    return first[appearance], np.bincount(rank[inverse], minlength=len(appearance))


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True, return_inverse=True)[1:]`` in int32 where it fits: the
    first index of each distinct key (in key order) and each key's group."""
    index = index_dtype(len(keys))
    order = np.argsort(keys, kind="stable").astype(index)  # stable: each group starts at its first
    ordered = keys[order]
    new = np.empty(len(keys), bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    del ordered
    inverse = np.empty(len(keys), index)
    inverse[order] = np.cumsum(new, dtype=index) - 1
    return order[new], inverse


def _hash_names(names: Names, order, reach, salt: int) -> np.ndarray:
    """A 64-bit hash of each name (FNV-1a over its code points, started from ``salt``); ``order``
    and ``reach`` are ``_columns(names.lengths)``."""
    starts = names.starts[order]
    hashes = np.full(len(names), _FNV_OFFSET ^ np.uint64(salt), np.uint64)
    for j, k in enumerate(reach):
        hashes[:k] = (hashes[:k] ^ names.codes[starts[:k] + j]) * _FNV_PRIME
    by_name = np.empty_like(hashes)
    by_name[order] = hashes
    return by_name


def _same_names(names: Names, order, reach, other) -> bool:
    """Is each name (taken in ``order``) equal to the name ``other`` gives for it?"""
    if not np.array_equal(names.lengths[order], names.lengths[other]):
        return False
    starts, other_starts = names.starts[order], names.starts[other]
    return all(np.array_equal(names.codes[starts[:k] + j], names.codes[other_starts[:k] + j])
               for j, k in enumerate(reach))


def token_stream(names: Names, which: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The names ``which`` (in that order) as one stream: a boundary, then each name's tokens
    (``tokens[code point]``) and a boundary."""
    lengths = names.lengths[which]
    stream = np.zeros(1 + int(lengths.sum()) + len(which), tokens.dtype)
    places = np.cumsum(lengths + 1, dtype=index_dtype(len(stream))) - lengths  # each name's start
    order, reach = _columns(lengths)
    sources, places = names.starts[which[order]], places[order]
    for j, k in enumerate(reach):
        stream[places[:k] + j] = tokens[names.codes[sources[:k] + j]]
    return stream


def stream_dtype(vocab_size: int):
    """The narrowest unsigned type that holds every index of the vocabulary."""
    return np.uint8 if vocab_size <= 2**8 else np.uint16 if vocab_size <= 2**16 else np.int32


def _decode_stream(stream: np.ndarray, vocab: Vocabulary) -> list[str]:
    """The names of a token stream, as strings."""
    chars = np.array([0] + [ord(c) for c in vocab.chars], np.uint32)[stream[1:]]
    ends = np.flatnonzero(stream[1:] == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return Names(chars, starts, ends - starts).texts()


class SplitNames(Mapping):
    """``split -> list of its names``, each list decoded from the split's token stream when first
    asked for (training never needs them)."""

    def __init__(self, streams: dict[str, np.ndarray], vocab: Vocabulary):
        self._streams, self._vocab, self._decoded = streams, vocab, {}

    def __getitem__(self, split: str) -> list[str]:
        if split not in self._decoded:
            self._decoded[split] = _decode_stream(self._streams[split], self._vocab)
        return self._decoded[split]

    def __iter__(self):
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)
