"""Names files: reading one once, with every check, and hashing what was read.

A names file (or a pipe, a FIFO, standard input) is read once, in pieces of :data:`PIECE_BYTES`,
each piece's whole lines checked with numpy over their bytes as they come and kept as
:class:`Names` (the text's code points, with each name's start and length), never a Python object
per name or character: lists of millions of names load in seconds. Every byte read is hashed on
the way (:attr:`Names.sha256`), so nothing opens the file again to learn what was read. Every
check that makes a file unusable raises :class:`~kmlp.errors.DataError` in one line naming the file
and line (see :func:`load_words`), at the first bad line, without reading on: a line that never
ends (``/dev/zero``) is refused once it is longer than any name can be, and an input too large for
this machine to split as soon as that much of it has been read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kmlp import config
from kmlp.errors import DataError

logger = logging.getLogger(__name__)


MAX_NAME_LENGTH = 1000  # a longer line is not a name: a file without line breaks, or not a names file


# A line of more bytes as read cannot hold a name of MAX_NAME_LENGTH characters, however much
# whitespace surrounds it: readers stop holding a line there instead of reading on to its end.
MAX_LINE_BYTES = 1 << 20


PIECE_BYTES = 16 << 20  # a names file is read, checked and hashed this many bytes at a time


# Splitting the names into train/dev/test builds the token streams and an index of distinct names
# beside them: at least this many times the memory the names themselves take.
SPLIT_MEMORY_FACTOR = 2


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark, which a file may start with


TABLE_SEPARATORS = ",;|"  # in most lines of a file, one of these makes it look like a table


def load_words(path: str | os.PathLike) -> list[str]:
    """Read one name per line (UTF-8), keeping every character as it is written.

    Surrounding whitespace is stripped and blank lines are dropped; a UTF-8 byte-order mark and
    CRLF or CR line endings are accepted; each name is put in Unicode NFC form, so an accented
    letter is one character however it was typed. Case, letters beyond ASCII, inner spaces,
    hyphens, apostrophes, digits and ``.`` are kept: the vocabulary is whatever the data holds.
    Repeated names are kept (how often a name occurs is part of what the model learns).

    Anything that makes the file unusable raises :class:`DataError` with a one-line message naming
    the file (and the line): a missing or unreadable path, a directory, no names at all, bytes that
    are not UTF-8, control characters (a tab: a TSV file?), a line over ``MAX_NAME_LENGTH`` characters
    (or over ``MAX_LINE_BYTES`` bytes as read), or more names than this machine could split.
    A file whose lines mostly hold a ``,``, ``;`` or ``|`` (a CSV table?) is read as it is, with a
    one-line warning (logged by ``kmlp.data``).
    """
    return read_file(path).texts()


def read_names(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``(line number, name)`` for every name in the file; see :func:`load_words` for the rules."""
    names = read_file(path)
    return list(zip(names.lines.tolist(), names.texts()))


def check_line(path, lineno: int, line: bytes) -> str:
    """The name on one line of a names file (``""`` for a blank line), or the :class:`DataError`
    that the line earns: the one place that holds the rules of :func:`load_words` for a line
    (:func:`read_stream` applies them to many lines at once, with numpy)."""
    check_length(path, lineno, raw_bytes=len(line))
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise utf8_error(path, lineno, line[e.start], e.start + 1) from None
    text = unicodedata.normalize("NFC", text.strip())
    check_length(path, lineno, len(text))
    if text.isprintable():  # no control character, the common case, found at C speed
        return text
    control = next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise DataError(f"{path}:{lineno}: control character U+{ord(text[control]):04X} at column "
                        f"{control + 1}; expected one name per line, not a table or binary file")
    return text


def utf8_error(path, lineno: int, byte: int, column: int) -> DataError:
    """The error for a line whose ``byte`` at ``column`` (from 1) is not UTF-8."""
    return DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{byte:02x} at column {column})")


def check_length(path, lineno: int, length: int = 0, raw_bytes: int = 0) -> None:
    """Refuse a line of more than :data:`MAX_LINE_BYTES` bytes as read (a reader holding that many
    bytes of a line refuses it without reading on to its end), or of more than
    :data:`MAX_NAME_LENGTH` characters (stripped, in NFC form)."""
    if raw_bytes > MAX_LINE_BYTES:
        raise DataError(f"{path}:{lineno}: a line of more than {MAX_LINE_BYTES:,} bytes is not a name "
                        f"(the limit is {MAX_NAME_LENGTH:,} characters); expected one name per line")
    if length > MAX_NAME_LENGTH:
        raise DataError(f"{path}:{lineno}: a line of {length:,} characters is not a name "
                        f"(the limit is {MAX_NAME_LENGTH:,}); expected one name per line")


def open_names_file(path: str | os.PathLike) -> BinaryIO:
    """The file at ``path``, open to read its bytes, or the :class:`DataError` that says why not."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file with one name per line")
    try:
        return open(path, "rb")
    except OSError as e:
        raise unreadable(path, e) from None


def unreadable(path, error: OSError) -> DataError:
    return DataError(f"{path}: cannot be read ({error.strerror or error})")


@dataclass
class Names:
    """Names as spans of one array of code points: no Python object per name or character.

    ``codes`` holds the whole text (uint8 when it is ASCII, else uint32, after NFC); name ``i`` is
    ``codes[starts[i]:starts[i] + lengths[i]]`` and, read from a file, stood on line ``lines[i]``
    (int32 positions while the text is under 2**31 code points: these per-name arrays, not the
    text, are most of the memory a large file takes while it is split). Read from a file, ``sha256``
    is the hash of every byte read.
    """

    codes: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    lines: np.ndarray | None = None
    sha256: str | None = None

    @classmethod
    def from_list(cls, words) -> "Names":
        words = list(words)
        codes = np.frombuffer("".join(words).encode("utf-32-le", "surrogatepass"), np.uint32)
        if codes.size and codes.max() < 128:
            codes = codes.astype(np.uint8)
        lengths = np.fromiter(map(len, words), np.int64, count=len(words))
        return cls(codes, np.cumsum(lengths) - lengths, lengths)

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, i: int) -> str:
        return _decode(self.codes[self.starts[i]:self.starts[i] + self.lengths[i]])

    def texts(self) -> list[str]:
        text = _decode(self.codes)
        return [text[s:s + n] for s, n in zip(self.starts.tolist(), self.lengths.tolist())]

    def iter_texts(self, batch: int = 1 << 16):
        """The names one by one, decoded ``batch`` at a time: the memory of a batch, not of a list."""
        for first in range(0, len(self), batch):
            starts, lengths = self.starts[first:first + batch], self.lengths[first:first + batch]
            begin, end = int(starts[0]), int(starts[-1] + lengths[-1])
            yield from Names(self.codes[begin:end], starts - begin, lengths).texts()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.starts, self.lengths, self.lines) if a is not None)

    @classmethod
    def joined(cls, parts: list["Names"], sha256: str | None = None) -> "Names":
        """One table of the names of ``parts`` (read one after another), ``sha256`` the hash of all."""
        if not parts:
            parts = [cls(np.zeros(0, np.uint8), *[np.zeros(0, np.int32)] * 3)]
        if len(parts) == 1:
            return replace(parts[0], sha256=sha256)
        codes = np.concatenate([part.codes for part in parts])  # uint32 if any part is not ASCII
        offsets = np.cumsum([0] + [len(part.codes) for part in parts[:-1]]).tolist()  # ints: keep int32
        position = index_dtype(len(codes))
        starts = np.concatenate([part.starts.astype(position) + offset for part, offset in zip(parts, offsets)])
        return cls(codes, starts, np.concatenate([part.lengths.astype(position) for part in parts]),
                   np.concatenate([part.lines for part in parts]), sha256)


def _decode(codes: np.ndarray) -> str:
    return codes.tobytes().decode("latin-1" if codes.dtype == np.uint8 else "utf-32-le", "surrogatepass")


def index_dtype(size: int):
    """Positions in an array of ``size`` items: int32 while they fit, which halves the per-name arrays."""
    return np.int32 if size < 2**31 else np.int64


def _flags(predicate, size: int) -> np.ndarray:
    """``predicate`` of each code point below ``size``; the last entry, False, stands for all beyond."""
    return np.array([predicate(chr(c)) for c in range(size)] + [False])


SPACE = _flags(str.isspace, 0x3001)  # what str.strip removes; none lies beyond U+3000


# Control characters (C0, DEL and C1) but line breaks, which end lines rather than lie inside them.
_CONTROL = _flags(lambda c: unicodedata.category(c) == "Cc" and c not in "\n\r", 0x100)


def lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]``, every code beyond the table taking its last entry (tables have 256 or more)."""
    return table[codes if codes.dtype == np.uint8 else np.minimum(codes, len(table) - 1)]


def read_file(path: str | os.PathLike, piece: int = PIECE_BYTES) -> Names:
    """The names of a file, read as :func:`load_words` describes, as a :class:`Names` table."""
    path = Path(path)
    with open_names_file(path) as f:
        names = read_stream(f, path, piece)
    if not len(names):
        raise DataError(f"{path}: no names in the file (it is empty or holds only blank lines)")
    _warn_if_table(path, names)
    return names


def read_stream(stream: BinaryIO, source, piece: int = PIECE_BYTES, use: str = "splitting",
                factor: int = SPLIT_MEMORY_FACTOR) -> Names:
    """Every name of a binary stream, read to its end once, ``piece`` bytes at a time, every line
    checked as it comes (``source`` names the stream in errors), with the SHA-256 of what was read.
    Refused as soon as the names read, ``factor`` times over (what their ``use`` takes at least),
    are more than this machine's memory."""
    digest, parts, held = hashlib.sha256(), [], 0
    memory = config.machine_memory()
    for names in scan_stream(stream, source, piece, digest):
        parts.append(names)
        held += names.nbytes
        if memory and held * factor > memory:
            raise DataError(f"{source}: too large for this machine: by line {int(names.lines[-1]):,} its "
                            f"names take {_gib(held)}, and {use} them takes at least {_gib(held * factor)} "
                            f"of memory, more than this machine's {_gib(memory)}")
    return Names.joined(parts, digest.hexdigest())


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def scan_stream(stream: BinaryIO, source, piece: int = PIECE_BYTES, digest=None, as_it_comes: bool = False):
    """The names of a binary stream, a :class:`Names` table per piece of whole lines read, each line
    checked (:func:`check_line`'s rules, applied with numpy) and numbered from the stream's start.

    ``piece`` bytes are read at a time (``as_it_comes``: what has arrived, up to that many, so that
    lines typed in are given at once); every byte read goes to ``digest`` (a ``hashlib`` object).
    Memory holds a piece and at most :data:`MAX_LINE_BYTES` of a line not yet ended.
    """
    lines = 0
    try:
        for block in _line_blocks(stream, piece, digest, as_it_comes):
            if block is None:
                check_length(source, lines + 1, raw_bytes=MAX_LINE_BYTES + 1)
            names, count = _scan(source, block, lines)
            lines += count
            if len(names):
                yield names
    except OSError as e:
        raise unreadable(source, e) from None


def _line_blocks(stream: BinaryIO, piece: int, digest, as_it_comes: bool):
    """The stream's bytes after a byte-order mark, in blocks of whole lines, each ended by its line
    break (but the stream's last line, which may have none); None in place of a line of more than
    :data:`MAX_LINE_BYTES` bytes, which is not read on. A "\\r\\n" split between two reads is one
    line break."""
    read = getattr(stream, "read1", stream.read) if as_it_comes else stream.read
    update = digest.update if digest is not None else lambda data: None
    held, at_start, after_cr = b"", True, False
    while True:
        data = read(piece)
        update(data)
        ended = not data
        if after_cr and data[:1] == b"\n":
            data = data[1:]  # the "\n" of a "\r\n" whose "\r" ended the last block
        held, after_cr = held + data if held else data, False
        if at_start:
            if len(held) < len(BOM) and BOM.startswith(held) and not ended:
                continue  # too few bytes yet to tell a byte-order mark
            held, at_start = held.removeprefix(BOM), False
        overlong = _overlong_line(held)
        if overlong is not None:
            if overlong:
                yield held[:overlong]  # the lines before it, which may fail first
            yield None
            return
        cut = len(held) if ended else _last_break(held, 0, len(held)) + 1
        if cut:
            yield held if cut == len(held) else held[:cut]
            after_cr, held = cut == len(held) and held[-1] == 13, held[cut:]
        if ended:
            return


def _last_break(raw: bytes, start: int, end: int) -> int:
    """Where the last line break ("\\n" or "\\r") in ``raw[start:end]`` is, or -1."""
    newline = raw.rfind(b"\n", start, end)
    return max(newline, raw.rfind(b"\r", max(start, newline + 1), end))


def _overlong_line(raw: bytes) -> int | None:
    """Where the first line of more than :data:`MAX_LINE_BYTES` bytes in ``raw`` (which starts a
    line) starts, ended or not; None if there is none. A few searches per MAX_LINE_BYTES."""
    start = 0
    while len(raw) - start > MAX_LINE_BYTES:
        line_break = _last_break(raw, start, start + MAX_LINE_BYTES + 1)
        if line_break < 0:
            return start
        start = line_break + 1
    return None


def _scan(path: Path, raw: bytes, lines_before: int = 0) -> tuple[Names, int]:
    """:func:`check_line` applied to every line of ``raw`` (whole lines, each with its line break but
    perhaps the last) at once, with numpy; the names, numbered after ``lines_before`` lines, and the
    lines read."""
    if raw.isascii():
        codes = np.frombuffer(raw, np.uint8)
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _raise_decode_error(path, raw, e.start, lines_before)
        # NFC never joins characters across a line break or whitespace, so the whole text in NFC
        # is every stripped line in NFC.
        codes = np.frombuffer(unicodedata.normalize("NFC", text).encode("utf-32-le"), np.uint32)
        del text
    line_starts, line_ends = _line_spans(codes)
    if len(codes) and codes[-1] in (10, 13):  # the empty span after the last line break is no line
        line_starts, line_ends = line_starts[:-1], line_ends[:-1]
    starts, ends = _strip(codes, line_starts, line_ends)
    bad = _first_bad_line(codes, starts, ends)
    if bad is not None:
        lineno = lines_before + bad + 1
        check_line(path, lineno, _decode(codes[line_starts[bad]:line_ends[bad]]).encode("utf-8"))
        raise AssertionError(f"{path}:{lineno}: a line refused by the scan passes check_line")
    count = len(line_starts)
    del line_starts, line_ends
    kept = np.flatnonzero(ends > starts).astype(index_dtype(lines_before + count + 1))
    ends -= starts
    return Names(codes, starts[kept], ends[kept], kept + (lines_before + 1)), count


def _raise_decode_error(path: Path, raw: bytes, offset: int, lines_before: int):
    """The error for the first line that is not UTF-8 (at byte ``offset``), unless a line before it
    has another fault, which a reader going line by line would meet first."""
    line_start = max(raw.rfind(b"\n", 0, offset), raw.rfind(b"\r", 0, offset)) + 1
    _scan(path, raw[:line_start], lines_before)
    lineno = lines_before + raw.count(b"\n", 0, line_start) + raw.count(b"\r", 0, line_start) \
        - raw.count(b"\r\n", 0, line_start) + 1
    line_end = min((i for i in (raw.find(b"\n", offset), raw.find(b"\r", offset)) if i >= 0), default=len(raw))
    check_line(path, lineno, raw[line_start:line_end])
    raise AssertionError(f"{path}:{lineno}: undecodable line passes check_line")


def _line_spans(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every line; lines end at "\\n", "\\r\\n" or "\\r", as bytes.splitlines()."""
    breaks = np.flatnonzero((codes == 10) | (codes == 13)).astype(index_dtype(len(codes)))
    pair = (codes[breaks] == 10) & (breaks > 0) & (codes[breaks - 1] == 13)  # the "\n" of "\r\n"
    breaks = breaks[~pair]
    n = len(codes)
    after = breaks + 1
    after += (codes[breaks] == 13) & (after < n) & (codes[np.minimum(after, n - 1)] == 10)
    return np.concatenate([np.zeros(1, after.dtype), after]), np.append(breaks, np.array(n, breaks.dtype))


def _strip(codes, starts, ends, rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The spans without the whitespace at either end (as ``str.strip``). Whitespace at the ends of
    lines is rare and short, so a few vectorised rounds do nearly all; long runs are searched
    line by line."""
    starts, ends = starts.copy(), ends.copy()
    for edge, step, look in ((starts, 1, 0), (ends, -1, -1)):
        moving = np.flatnonzero(starts < ends)
        for _ in range(rounds):
            moving = moving[lookup(SPACE, codes[edge[moving] + look])]
            edge[moving] += step
            moving = moving[starts[moving] < ends[moving]]
            if not moving.size:
                break
        for i in moving.tolist():
            solid = np.flatnonzero(~lookup(SPACE, codes[starts[i]:ends[i]]))
            if solid.size:
                starts[i], ends[i] = starts[i] + solid[0], starts[i] + solid[-1] + 1
            else:
                starts[i] = ends[i]
    return starts, ends


def _first_bad_line(codes, starts, ends) -> int | None:
    """Index of the first line (span) that :func:`check_line` refuses: too long, or a control
    character inside it."""
    bad = np.flatnonzero(ends - starts > MAX_NAME_LENGTH)[:1].tolist()
    controls = np.flatnonzero(lookup(_CONTROL, codes))
    if controls.size:
        line = np.searchsorted(starts, controls, side="right") - 1
        bad += line[(line >= 0) & (controls < ends[line])][:1].tolist()
    return min(bad, default=None)


def _warn_if_table(path: Path, names: Names) -> None:
    """Warn when most names hold the same table separator: a CSV file is read whole, and its
    separators and columns become characters of the names."""
    for sep in TABLE_SEPARATORS:
        name = name_at(names, np.flatnonzero(names.codes == ord(sep)))
        holding = np.unique(name[name >= 0]).size
        if holding > len(names) / 2:
            logger.warning(f"{path}: warning: {holding / len(names):.0%} of the lines hold {sep!r}, as the "
                           f"rows of a table (CSV) do; each line is taken whole as one name, {sep!r} "
                           f"included; give one name per line")
            return


def name_at(names: Names, positions: np.ndarray) -> np.ndarray:
    """For each position in ``names.codes``: the name it lies in, or -1 (a line break, stripped
    whitespace)."""
    name = np.maximum(np.searchsorted(names.starts, positions, side="right") - 1, 0)
    inside = (names.starts[name] <= positions) & (positions < names.starts[name] + names.lengths[name])
    return np.where(inside, name, -1)
