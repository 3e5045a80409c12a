"""Names files read as they come, in bounded pieces, with the checks of :mod:`kmlp.data.files`.

:func:`~kmlp.data.files.read_file` reads a whole file at once, as training needs every name;
``kmlp score`` reads a file of any size, or standard input, and scores each name as it arrives.
Both split lines at "\\n", "\\r\\n" or "\\r", skip a leading byte-order mark and blank lines, and
refuse a line in the same words (:func:`~kmlp.data.files.check_line`, naming the file and line).
Memory stays bounded by :data:`PIECE` whatever the input holds: a line longer than that is read on
to its end without being kept whole. Names to score are also checked against the model's
vocabulary (:func:`known_names`, :func:`check_known`)::

    for lineno, name in stream_file("names.txt"): ...
    for name in known_names(iter_names(sys.stdin.buffer, "<stdin>"), "<stdin>", run.vocab): ...
"""

from __future__ import annotations

import codecs
import os
import re
import unicodedata
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from kmlp.data import files
from kmlp.data.files import BOM, check_length, check_line, open_names_file, unreadable, utf8_error
from kmlp.data.vocab import Vocabulary
from kmlp.errors import DataError

PIECE = 1 << 16  # bytes read at a time, and the longest line kept whole


def stream_file(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, name)`` for every name of the file at ``path``, read in pieces."""
    path = Path(path)  # named in errors as kmlp train names it
    with open_names_file(path) as f:
        try:
            yield from iter_names(f, path)
        except OSError as e:
            raise unreadable(path, e) from None


def iter_names(stream: BinaryIO, source) -> Iterator[tuple[int, str]]:
    """``(line number, name)`` for every name of a binary stream, read as it comes; ``source``
    names the stream in the :class:`~kmlp.errors.DataError` a refused line raises."""
    lineno, held, size, long_line = 0, [], 0, None
    for part, ends in _line_parts(stream):
        if long_line is not None:
            long_line.feed(part)
        elif held or not ends:  # a line in several parts, held until it is too long to hold
            held.append(part)
            size += len(part)
            if size > PIECE:
                long_line = _LongLine()
                long_line.feed(b"".join(held))
        if not ends:
            continue
        lineno += 1
        if long_line is not None:
            name = long_line.check(source, lineno)
        else:
            name = check_line(source, lineno, b"".join(held) if held else part)
        if held:
            held, size, long_line = [], 0, None
        if name:
            yield lineno, name


def known_names(rows: Iterable[tuple[int, str]], source, vocab: Vocabulary) -> Iterator[str]:
    """The names of ``rows`` (``(line number, name)``), stopping at the first with a character
    outside ``vocab``, which raises :class:`~kmlp.errors.DataError` naming ``source`` and the line."""
    for lineno, name in rows:
        missing = vocab.unknown(name)
        if missing:
            raise DataError(f"{source}:{lineno}: {name!r} has characters outside the model's vocabulary: "
                            f"{''.join(missing)!r} {_knows(vocab)}")
        yield name


def file_characters(path: str | os.PathLike) -> set[str]:
    """The characters of the names of the file at ``path``, every line checked on the way."""
    characters = set()
    for _, name in stream_file(path):
        characters.update(name)
    return characters


def read_known(path: str | os.PathLike, vocab: Vocabulary, characters: set[str] | None = None) -> Iterator[str]:
    """The names of the file at ``path``, once every line is checked, against ``vocab`` too: the
    file is read once to check it (pass its ``characters`` if :func:`file_characters` already did)
    and again for the names, never held whole."""
    path = Path(path)
    if characters is None:
        characters = file_characters(path)
    if vocab.unknown("".join(characters)):
        for _ in known_names(stream_file(path), path, vocab):  # to name the first line with one
            pass
    return (name for _, name in stream_file(path))


def check_known(names: list[str], vocab: Vocabulary) -> list[str]:
    """``names``, unless some have characters outside ``vocab``: then a DataError naming them all."""
    bad = [name for name in names if vocab.unknown(name)]
    if bad:
        details = "; ".join(f"{name!r} has {''.join(vocab.unknown(name))!r}" for name in bad)
        raise DataError(f"names with characters outside the model's vocabulary: {details} {_knows(vocab)}")
    return names


def _knows(vocab: Vocabulary) -> str:
    return f"(it knows {''.join(vocab.chars)!r})"


def _line_parts(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """The stream's lines in parts of at most :data:`PIECE` bytes, each with whether it ends its line."""
    read = getattr(stream, "read1", stream.read)  # read1: what has arrived, without waiting for more
    after_cr = line_open = False
    for piece in chain([stream.read(len(BOM)).removeprefix(BOM)], iter(lambda: read(PIECE), b"")):
        if after_cr and piece[:1] == b"\n":
            piece = piece[1:]  # the "\n" of a "\r\n" split between two pieces
        after_cr = piece.endswith(b"\r")
        if not piece:
            continue
        lines = piece.splitlines()
        line_open = not piece.endswith((b"\n", b"\r"))
        for i, line in enumerate(lines):
            yield line, i < len(lines) - 1 or not line_open
    if line_open:  # the last line has no line break
        yield b"", True


# NFC never joins characters across an ASCII character or a space, so the text before one can be
# put in NFC form apart from the text after it.
_LAST_BOUNDARY = re.compile(r"[\x00-\x7f\s][^\x00-\x7f\s]*\Z")


class _LongLine:
    """A line too long to keep, read on to its end: what :func:`check_line` says of the whole line,
    from its first byte that is not UTF-8 if any, else from the length of its stripped NFC text, of
    which only the first ``MAX_NAME_LENGTH + 1`` characters are kept."""

    def __init__(self):
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.fed = 0         # bytes fed so far
        self.bad = None      # (byte, column) of the first byte that is not UTF-8
        self.pending = ""    # decoded text after the last boundary, not yet in NFC form
        self.length = 0      # characters of the NFC text from its first non-space one
        self.spaces = 0      # of which whitespace at the end so far
        self.head = ""       # the first of those characters

    def feed(self, part: bytes, final: bool = False) -> None:
        if self.bad is None:
            waiting = len(self.decoder.getstate()[0])  # bytes of a character begun in the last part
            try:
                new = self.decoder.decode(part, final)
            except UnicodeDecodeError as e:
                self.bad = (e.object[e.start], self.fed - waiting + e.start + 1)
                return
            boundary = _LAST_BOUNDARY.search(new)
            if final or boundary:
                cut = len(new) if final else boundary.start()
                self._count(unicodedata.normalize("NFC", self.pending + new[:cut]))
                self.pending, new = "", new[cut:]
            self.pending += new
        self.fed += len(part)

    def _count(self, text: str) -> None:
        if not self.length:
            text = text.lstrip()
        body = text.rstrip()
        self.spaces = len(text) - len(body) if body else self.spaces + len(text)
        self.length += len(text)
        self.head += text[:max(0, files.MAX_NAME_LENGTH + 1 - len(self.head))]

    def check(self, source, lineno: int) -> str:
        """The line's name, or the DataError that :func:`check_line` raises for the whole line."""
        self.feed(b"", final=True)
        if self.bad:
            raise utf8_error(source, lineno, *self.bad)
        length = self.length - self.spaces
        check_length(source, lineno, length)
        return check_line(source, lineno, self.head[:length].encode("utf-8"))
