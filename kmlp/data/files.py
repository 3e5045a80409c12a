"""Names files: reading one with every check, fetching names.txt, hashing.

A names file is read once, with numpy over its bytes, into :class:`Names` (the text's code points,
with each name's start and length), never a Python object per name or character: lists of
millions of names load in seconds. Every check that makes a file unusable raises
:class:`~kmlp.errors.DataError` in one line naming the file and line (see :func:`load_words`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kmlp.errors import DataError

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"


NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


PROJECT_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_DATA = PROJECT_ROOT / "data" / "names.txt"


logger = logging.getLogger(__name__)


MAX_NAME_LENGTH = 1000  # a longer line is not a name: a file without line breaks, or not a names file


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
    are not UTF-8, control characters (a tab: a TSV file?) or a line over ``MAX_NAME_LENGTH``.
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
    (:mod:`kmlp.data.streaming` applies them to lines read in pieces)."""
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


def check_length(path, lineno: int, length: int) -> None:
    """Refuse a line of more than :data:`MAX_NAME_LENGTH` characters (stripped, in NFC form)."""
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
    text, are most of the memory a large file takes while it is split).
    """

    codes: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    lines: np.ndarray | None = None

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


def read_file(path: str | os.PathLike) -> Names:
    """The names of a file, read as :func:`load_words` describes, as a :class:`Names` table."""
    path = Path(path)
    with open_names_file(path) as f:
        try:
            raw = f.read()
        except OSError as e:
            raise unreadable(path, e) from None
    raw = raw.removeprefix(BOM)
    names = _scan(path, raw)
    if not len(names):
        raise DataError(f"{path}: no names in the file (it is empty or holds only blank lines)")
    _warn_if_table(path, names)
    return names


def _scan(path: Path, raw: bytes) -> Names:
    """:func:`check_line` applied to every line of ``raw`` at once, with numpy."""
    if raw.isascii():
        codes = np.frombuffer(raw, np.uint8)
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _raise_decode_error(path, raw, e.start)
        # NFC never joins characters across a line break or whitespace, so the whole text in NFC
        # is every stripped line in NFC.
        codes = np.frombuffer(unicodedata.normalize("NFC", text).encode("utf-32-le"), np.uint32)
        del text
    line_starts, line_ends = _line_spans(codes)
    starts, ends = _strip(codes, line_starts, line_ends)
    bad = _first_bad_line(codes, starts, ends)
    if bad is not None:
        check_line(path, bad + 1, _decode(codes[line_starts[bad]:line_ends[bad]]).encode("utf-8"))
        raise AssertionError(f"{path}:{bad + 1}: a line refused by the scan passes check_line")
    del line_starts, line_ends
    kept = np.flatnonzero(ends > starts).astype(starts.dtype)
    ends -= starts
    return Names(codes, starts[kept], ends[kept], kept + 1)


def _raise_decode_error(path: Path, raw: bytes, offset: int):
    """The error for the first line that is not UTF-8 (at byte ``offset``), unless a line before it
    has another fault, which a reader going line by line would meet first."""
    line_start = max(raw.rfind(b"\n", 0, offset), raw.rfind(b"\r", 0, offset)) + 1
    _scan(path, raw[:line_start])
    lineno = raw.count(b"\n", 0, line_start) + raw.count(b"\r", 0, line_start) \
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


def resolve_data_path(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Where to read names from: ``path`` if given, else ``data/names.txt``.

    When the default file is missing it is fetched from the public address and kept in ``data/``
    only if its SHA-256 matches; a copy beside the project (``../shared/data/names.txt``, verified the
    same way) is used instead of the network when there is one.
    """
    if path is not None:
        return Path(path)
    if DEFAULT_DATA.exists():
        return DEFAULT_DATA
    beside = PROJECT_ROOT.parent / "shared" / "data" / "names.txt"
    if beside.exists() and file_sha256(beside) == NAMES_SHA256:
        return beside
    if not download:
        raise DataError(f"{DEFAULT_DATA}: no such file")
    return download_names(DEFAULT_DATA)


def download_names(dest: Path = DEFAULT_DATA, url: str = NAMES_URL, sha256: str = NAMES_SHA256) -> Path:
    """Download names.txt to ``dest``, verify its SHA-256, and only then move it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"{dest}: missing and could not be downloaded ({reason}); "
            f"download {url} to {dest} yourself, or pass --data PATH"
        ) from None
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        raise DataError(f"{url}: SHA-256 {digest} does not match the expected {sha256}; not saved")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".names-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    os.replace(tmp, dest)
    return dest


def file_sha256(path) -> str:
    """The SHA-256 of a file, read in pieces (names files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
