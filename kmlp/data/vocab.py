"""The vocabulary: characters to indices and back, with index 0 the boundary token ``.``.

The boundary is a token of its own, not a character of the data: a literal ``.`` inside a name
gets an index of its own like any other character.
"""

from __future__ import annotations

import reprlib
import unicodedata

BOUNDARY = "."


class Vocabulary:
    """Maps characters to indices and back. Index 0 is the boundary token.

    >>> v = Vocabulary.from_words(["emma", "ava"])
    >>> v.encode("ava"), v.decode([1, 4, 1])
    ([1, 4, 1], 'ava')
    """

    def __init__(self, chars):
        chars = list(chars)
        seen = set()
        for i, c in enumerate(chars, 1):
            # A names file gives characters, none of them a control character (see kmlp.data.files),
            # nor a lone surrogate (UTF-8 has none); a vocabulary read from a file is checked alike.
            if not isinstance(c, str) or len(c) != 1 or unicodedata.category(c) in ("Cc", "Cs"):
                raise ValueError(f"vocabulary entry {i} is not a character of a name: {reprlib.repr(c)}")
            if c in seen:
                raise ValueError(f"vocabulary characters must be unique; {c!r} is there twice")
            seen.add(c)
        self.chars = chars  # the data's characters; chars[i] has index i + 1
        self.stoi = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_words(cls, words) -> "Vocabulary":
        return cls(sorted(set("".join(words))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocabulary({''.join(self.chars)!r})"

    def unknown(self, word: str) -> list[str]:
        """Characters of ``word`` that the vocabulary lacks, in order of appearance."""
        return list(dict.fromkeys(c for c in word if c not in self.stoi))

    def encode(self, word: str) -> list[int]:
        missing = self.unknown(word)
        if missing:
            raise KeyError(f"{word!r}: characters not in the vocabulary: {''.join(missing)!r}")
        return [self.stoi[c] for c in word]

    def decode(self, ids) -> str:
        """Characters of the given indices; the boundary token (0) ends the word."""
        out = []
        for i in ids:
            i = int(i)
            if i == 0:
                break
            out.append(self.chars[i - 1])
        return "".join(out)

    def token(self, i: int) -> str:
        """How index ``i`` is shown: the boundary as ``.``, any other as its character."""
        return BOUNDARY if i == 0 else self.chars[i - 1]

    def to_json(self) -> dict:
        return {"boundary": BOUNDARY, "chars": self.chars}

    @classmethod
    def from_json(cls, obj: dict) -> "Vocabulary":
        """The vocabulary :meth:`to_json` wrote; ValueError if ``obj`` is not one."""
        if not isinstance(obj, dict) or not isinstance(obj.get("chars"), list):
            raise ValueError("the vocabulary is not an object holding a list of characters, \"chars\"")
        return cls(obj["chars"])
