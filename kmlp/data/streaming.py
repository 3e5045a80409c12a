"""Names read as they come, and names checked against a model's vocabulary, for ``kmlp score``.

:func:`~kmlp.data.files.read_file` reads a whole file, as training needs every name; ``kmlp score``
scores names from a file (:func:`hold_names`: read once, every line checked before any is scored)
or from standard input, as each arrives (:func:`iter_names`). Both read in bounded pieces with
:func:`~kmlp.data.files.scan_stream`, so lines are split, numbered and refused in the same words
as ``kmlp train`` refuses them (naming the file and line). Names to score are also checked against
the model's vocabulary (:func:`known_names`, :func:`held_known`, :func:`check_known`)::

    for lineno, name in stream_file("names.txt"): ...
    for name in known_names(iter_names(sys.stdin.buffer, "<stdin>"), "<stdin>", run.vocab): ...
    for name in held_known(hold_names("names.txt"), "names.txt", run.vocab): ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from kmlp.data.files import Names, open_names_file, read_stream, scan_stream
from kmlp.data.splits import present
from kmlp.data.vocab import Vocabulary
from kmlp.errors import DataError

PIECE = 1 << 16  # bytes read at a time from a stream read as it comes


def stream_file(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, name)`` for every name of the file at ``path``, read in pieces."""
    path = Path(path)  # named in errors as kmlp train names it
    with open_names_file(path) as f:
        yield from iter_names(f, path)


def iter_names(stream: BinaryIO, source) -> Iterator[tuple[int, str]]:
    """``(line number, name)`` for every name of a binary stream, read as it comes; ``source``
    names the stream in the :class:`~kmlp.errors.DataError` a refused line raises."""
    for names in scan_stream(stream, source, PIECE, as_it_comes=True):
        yield from zip(names.lines.tolist(), names.texts())


def hold_names(path: str | os.PathLike) -> Names:
    """Every name of the file at ``path`` (a FIFO too), read once, every line checked; a file
    without names holds none (there is nothing to score, which is no error)."""
    path = Path(path)
    with open_names_file(path) as f:
        return read_stream(f, path, use="holding", factor=1)


def held_known(names: Names, source, vocab: Vocabulary) -> Iterator[str]:
    """The names of ``names`` (read from ``source``), once all are checked against ``vocab``: the
    first with a character outside it raises :class:`~kmlp.errors.DataError` naming its line."""
    characters = "".join(map(chr, np.flatnonzero(present(names)).tolist()))
    if vocab.unknown(characters):
        for _ in known_names(zip(names.lines.tolist(), names.iter_texts()), source, vocab):
            pass
    return names.iter_texts()


def known_names(rows: Iterable[tuple[int, str]], source, vocab: Vocabulary) -> Iterator[str]:
    """The names of ``rows`` (``(line number, name)``), stopping at the first with a character
    outside ``vocab``, which raises :class:`~kmlp.errors.DataError` naming ``source`` and the line."""
    for lineno, name in rows:
        missing = vocab.unknown(name)
        if missing:
            raise DataError(f"{source}:{lineno}: {name!r} has characters outside the model's vocabulary: "
                            f"{''.join(missing)!r} {_knows(vocab)}")
        yield name


def check_known(names: list[str], vocab: Vocabulary) -> list[str]:
    """``names``, unless some have characters outside ``vocab``: then a DataError naming them all."""
    bad = [name for name in names if vocab.unknown(name)]
    if bad:
        details = "; ".join(f"{name!r} has {''.join(vocab.unknown(name))!r}" for name in bad)
        raise DataError(f"names with characters outside the model's vocabulary: {details} {_knows(vocab)}")
    return names


def _knows(vocab: Vocabulary) -> str:
    return f"(it knows {''.join(vocab.chars)!r})"
