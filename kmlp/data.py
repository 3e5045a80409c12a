"""Data: a names file -> vocabulary -> (context, next character) examples -> tf.data pipelines.

The dataset is built as in the "makemore, part 2" lecture: every name is padded on the left with
``block_size`` boundary tokens and followed by one, and each position gives one example, the
``block_size`` previous characters (the context) and the character that follows::

    emma, block_size 3:   ... -> e   ..e -> m   .em -> m   emm -> a   mma -> .

Index 0 is the boundary token, shown as ``.``. It is a token of its own, not a character of the
data: a literal ``.`` inside a name gets an index of its own like any other character.

Memory grows with the file by a small constant: each split is one token stream, its names one
after another, each followed by the boundary token (one byte a character when the vocabulary fits
a byte), and the pipeline cuts each minibatch's context windows out of it; no ``[N, block_size]``
array and no Python object per name or character is built. The file is read with numpy over its
bytes, with every check of :func:`load_words`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

BOUNDARY = "."
NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = PROJECT_ROOT / "data" / "names.txt"
SPLITS = ("train", "dev", "test")

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The data file cannot be used; the message names the file (and line where it applies)."""


# ---------------------------------------------------------------------------------------------
# Reading the file


MAX_NAME_LENGTH = 1000  # a longer line is not a name: a file without line breaks, or not a names file
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
    that the line earns: the one place that words the rules of :func:`load_words` for a line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"
        ) from None
    text = unicodedata.normalize("NFC", text.strip())
    if len(text) > MAX_NAME_LENGTH:
        raise DataError(f"{path}:{lineno}: a line of {len(text):,} characters is not a name "
                        f"(the limit is {MAX_NAME_LENGTH:,}); expected one name per line")
    control = next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise DataError(f"{path}:{lineno}: control character U+{ord(text[control]):04X} at column "
                        f"{control + 1}; expected one name per line, not a table or binary file")
    return text


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


def _index_dtype(size: int):
    """Positions in an array of ``size`` items: int32 while they fit, which halves the per-name arrays."""
    return np.int32 if size < 2**31 else np.int64


def _flags(predicate, size: int) -> np.ndarray:
    """``predicate`` of each code point below ``size``; the last entry, False, stands for all beyond."""
    return np.array([predicate(chr(c)) for c in range(size)] + [False])


_SPACE = _flags(str.isspace, 0x3001)  # what str.strip removes; none lies beyond U+3000
# Control characters (C0, DEL and C1) but line breaks, which end lines rather than lie inside them.
_CONTROL = _flags(lambda c: unicodedata.category(c) == "Cc" and c not in "\n\r", 0x100)


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]``, every code beyond the table taking its last entry (tables have 256 or more)."""
    return table[codes if codes.dtype == np.uint8 else np.minimum(codes, len(table) - 1)]


def read_file(path: str | os.PathLike) -> Names:
    """The names of a file, read as :func:`load_words` describes, as a :class:`Names` table."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file with one name per line")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
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
    breaks = np.flatnonzero((codes == 10) | (codes == 13)).astype(_index_dtype(len(codes)))
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
            moving = moving[_lookup(_SPACE, codes[edge[moving] + look])]
            edge[moving] += step
            moving = moving[starts[moving] < ends[moving]]
            if not moving.size:
                break
        for i in moving.tolist():
            solid = np.flatnonzero(~_lookup(_SPACE, codes[starts[i]:ends[i]]))
            if solid.size:
                starts[i], ends[i] = starts[i] + solid[0], starts[i] + solid[-1] + 1
            else:
                starts[i] = ends[i]
    return starts, ends


def _first_bad_line(codes, starts, ends) -> int | None:
    """Index of the first line (span) that :func:`check_line` refuses: too long, or a control
    character inside it."""
    bad = np.flatnonzero(ends - starts > MAX_NAME_LENGTH)[:1].tolist()
    controls = np.flatnonzero(_lookup(_CONTROL, codes))
    if controls.size:
        line = np.searchsorted(starts, controls, side="right") - 1
        bad += line[(line >= 0) & (controls < ends[line])][:1].tolist()
    return min(bad, default=None)


def _warn_if_table(path: Path, names: Names) -> None:
    """Warn when most names hold the same table separator: a CSV file is read whole, and its
    separators and columns become characters of the names."""
    for sep in TABLE_SEPARATORS:
        name = _name_at(names, np.flatnonzero(names.codes == ord(sep)))
        holding = np.unique(name[name >= 0]).size
        if holding > len(names) / 2:
            logger.warning(f"{path}: warning: {holding / len(names):.0%} of the lines hold {sep!r}, as the "
                           f"rows of a table (CSV) do; each line is taken whole as one name, {sep!r} "
                           f"included; give one name per line")
            return


def _name_at(names: Names, positions: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Vocabulary


class Vocabulary:
    """Maps characters to indices and back. Index 0 is the boundary token.

    >>> v = Vocabulary.from_words(["emma", "ava"])
    >>> v.encode("ava"), v.decode([1, 4, 1])
    ([1, 4, 1], 'ava')
    """

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
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
        return cls(obj["chars"])


# ---------------------------------------------------------------------------------------------
# Examples and splits


def build_dataset(words, vocab: Vocabulary, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All (context, next index) examples of ``words``: ``X`` int32 [N, block_size], ``y`` int32 [N].

    Materialised arrays, for small lists and as the reference that :meth:`NamesData.dataset`'s
    windows are tested against.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    if not words:
        return np.zeros((0, block_size), np.int32), np.zeros((0,), np.int32)
    encoded = [vocab.encode(w) for w in words]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    # One flat stream: per word, block_size boundary tokens, its characters, one closing boundary.
    seq_lens = lengths + block_size + 1
    flat = np.zeros(int(seq_lens.sum()), dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]])
    chars = np.fromiter((c for e in encoded for c in e), dtype=np.int32, count=int(lengths.sum()))
    char_pos = np.repeat(starts + block_size, lengths) + _ranges(lengths)
    flat[char_pos] = chars
    # A word of length L gives L + 1 windows, starting at its first L + 1 positions.
    window_starts = np.repeat(starts, lengths + 1) + _ranges(lengths + 1)
    windows = np.lib.stride_tricks.sliding_window_view(flat, block_size + 1)[window_starts]
    return np.ascontiguousarray(windows[:, :block_size]), np.ascontiguousarray(windows[:, block_size])


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(n)`` for each n in ``lengths``."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - offsets


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
    order = np.argsort(shortfall, kind="stable").astype(_index_dtype(len(lengths)))
    return order, np.searchsorted(-lengths[order], -np.arange(longest), side="left").tolist()


def _present(names: Names) -> np.ndarray:
    """A flag per code point (up to the largest in ``names.codes``): does some name hold it? Every
    character of the text is a name's but line breaks and the whitespace stripped around names."""
    present = np.zeros(int(names.codes.max(initial=0)) + 1, bool)
    present[names.codes] = True  # (np.bincount would copy the text as int64 first)
    for space in np.flatnonzero(present & _lookup(_SPACE, np.arange(len(present)))).tolist():
        present[space] = (_name_at(names, np.flatnonzero(names.codes == space)) >= 0).any()
    return present


def _first_holding(names: Names, flags: np.ndarray) -> int:
    """The first name (in order) holding a code point whose flag is set, or -1."""
    name = _name_at(names, np.flatnonzero(flags[names.codes]))
    name = name[name >= 0]
    return int(name.min()) if name.size else -1


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _distinct(names: Names) -> tuple[np.ndarray, np.ndarray]:
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
    index = _index_dtype(len(keys))
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


def _token_stream(names: Names, which: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The names ``which`` (in that order) as one stream: a boundary, then each name's tokens
    (``tokens[code point]``) and a boundary."""
    lengths = names.lengths[which]
    stream = np.zeros(1 + int(lengths.sum()) + len(which), tokens.dtype)
    places = np.cumsum(lengths + 1, dtype=_index_dtype(len(stream))) - lengths  # each name's start
    order, reach = _columns(lengths)
    sources, places = names.starts[which[order]], places[order]
    for j, k in enumerate(reach):
        stream[places[:k] + j] = tokens[names.codes[sources[:k] + j]]
    return stream


def _stream_dtype(vocab_size: int):
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


# The fewest distinct names for which the 80/10/10 split leaves every part non-empty.
MIN_DISTINCT_NAMES = 8


@dataclass(eq=False)
class NamesData:
    """Everything the model needs from a names file: the vocabulary and each split's token stream.

    >>> data = NamesData.from_file("names.txt", block_size=3, split_seed=42)
    >>> train = data.dataset("train", batch_size=32, seed=1)  # shuffled (seed: the run's), forever
    >>> dev = data.dataset("dev", batch_size=1024)             # in order, one pass
    >>> data.words["dev"][:3]                                  # the names, decoded when asked for

    ``streams[split]`` holds a boundary token, then each name's tokens followed by a boundary, in
    the split's order; its example k is token k + 1 (see :meth:`dataset`).
    """

    vocab: Vocabulary
    block_size: int
    streams: dict[str, np.ndarray]
    path: Path | None = None
    split_seed: int = 42
    words: SplitNames = field(init=False, repr=False)
    _tensors: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        self.words = SplitNames(self.streams, self.vocab)

    @classmethod
    def from_words(cls, words, block_size: int = 3, split_seed: int = 42, vocab: Vocabulary | None = None,
                   path: Path | None = None) -> "NamesData":
        names = Names.from_list(words)
        if vocab is not None:
            unknown = _first_holding(names, ~_known(vocab, names))
            if unknown >= 0:
                vocab.encode(names.text(unknown))  # raises KeyError naming the characters
        return cls._split(names, block_size, split_seed, vocab, path)

    @classmethod
    def from_file(cls, path=None, block_size: int = 3, split_seed: int = 42, vocab: Vocabulary | None = None
                  ) -> "NamesData":
        path = resolve_data_path(path)
        names = read_file(path)
        if vocab is not None:
            unknown = _first_holding(names, ~_known(vocab, names))
            if unknown >= 0:
                w = names.text(unknown)
                raise DataError(f"{path}:{names.lines[unknown]}: name {w!r} has characters the model's "
                                f"vocabulary lacks: {''.join(vocab.unknown(w))!r}")
        names.lines = None  # only errors name lines: freed before the split's peak
        return cls._split(names, block_size, split_seed, vocab, path)

    @classmethod
    def for_config(cls, path, config, vocab: Vocabulary | None = None) -> "NamesData":
        """The names file as a run with ``config`` (a :class:`kmlp.config.Config`) sees it: its
        context length and its split (``split_seed``, not ``seed``)."""
        return cls.from_file(path, block_size=config.block_size, split_seed=config.split_seed, vocab=vocab)

    @classmethod
    def _split(cls, names: Names, block_size: int, split_seed: int, vocab: Vocabulary | None,
               path: Path | None) -> "NamesData":
        if vocab is None:
            vocab = Vocabulary(map(chr, np.flatnonzero(_present(names)).tolist()))
        first, counts = _distinct(names)
        parts = split_groups(len(first), seed=split_seed)
        if not all(len(part) for part in parts):
            where = f"{path}: " if path else ""
            raise DataError(
                f"{where}{len(first)} distinct names are too few for non-empty train/dev/test "
                f"splits (80/10/10); at least {MIN_DISTINCT_NAMES} are needed and many more for a "
                f"useful model"
            )
        tokens = np.zeros(max([int(names.codes.max(initial=0)), *map(ord, vocab.chars)]) + 1,
                          _stream_dtype(len(vocab)))
        tokens[[ord(c) for c in vocab.chars]] = np.arange(1, len(vocab))
        streams = {split: _token_stream(names, np.repeat(first[part], counts[part]), tokens)
                   for split, part in zip(SPLITS, parts)}
        return cls(vocab=vocab, block_size=block_size, streams=streams, path=path, split_seed=split_seed)

    def only(self, *splits: str) -> "NamesData":
        """The same data holding only ``splits`` (e.g. ``only("train", "dev")``: nothing can read test)."""
        return replace(self, streams={split: self.streams[split] for split in splits})

    def summary(self) -> str:
        parts = [f"{name} {self.num_names(name):,} names / {self.num_examples(name):,} examples"
                 for name in self.streams]
        return f"vocabulary {len(self.vocab)} tokens; " + "; ".join(parts)

    def num_names(self, split: str) -> int:
        return int(np.count_nonzero(self.streams[split] == 0)) - 1

    def num_examples(self, split: str) -> int:
        return len(self.streams[split]) - 1

    def steps_per_epoch(self, batch_size: int) -> int:
        """Minibatches in one pass over the train split (the last, partial one is dropped)."""
        return max(1, self.num_examples("train") // batch_size)

    def digest(self, split: str) -> str:
        """SHA-256 of a split's names and vocabulary: equal digests, equal data."""
        h = hashlib.sha256("\n".join(self.vocab.chars).encode("utf-8", "surrogatepass") + b"\0")
        h.update(memoryview(np.ascontiguousarray(self.streams[split])).cast("B"))
        return h.hexdigest()

    def sample_examples(self, split: str, size: int) -> np.ndarray | None:
        """Indices of ``size`` examples of ``split``, each drawn at random (independently, so one
        may come twice; memory of the sample's size, whatever the split's), in order: the same ones
        for the same data and ``split_seed``. None when the split has no more than ``size``."""
        n = self.num_examples(split)
        if size >= n:
            return None
        return np.sort(np.random.default_rng(self.split_seed).integers(0, n, size))

    def examples(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Every example of ``split`` as arrays, ``X`` int32 [N, block_size] and ``y`` int32 [N], in
        order (for small data: this is the memory that :meth:`dataset` avoids)."""
        x, y = next(iter(self.dataset(split, self.num_examples(split), shuffle=False)))
        return x.numpy(), y.numpy()

    def dataset(self, split: str, batch_size: int, shuffle: bool | None = None, seed: int = 42,
                first_epoch: int = 0, steps_per_call: int = 1, start_step: int = 0, sample: int | None = None):
        """A ``tf.data.Dataset`` of ``(context, next_index)`` minibatches for ``split``.

        The train split is shuffled afresh every epoch and repeats forever (give ``model.fit`` a
        ``steps_per_epoch``); ``seed`` (the run's seed, not the split's) sets the order. The other
        splits, and the train split with ``shuffle=False``, go once, in order; with ``sample=N``, only
        a fixed random choice of N of its examples (:meth:`sample_examples`), or all when it has no
        more. See :func:`make_dataset` for the order and the other arguments.

        Each minibatch is cut from the split's token stream: example k is token k + 1 with the
        ``block_size`` tokens before it as context, those before its name's first character set to
        the boundary, exactly :func:`build_dataset`'s examples of the split's names, in order.
        """
        import tensorflow as tf

        shuffle = split == "train" if shuffle is None else shuffle
        if sample is not None and shuffle:
            raise ValueError("sample= takes a fixed choice of examples, for an unshuffled pass")
        if split not in self._tensors:
            self._tensors[split] = tf.constant(self.streams[split])
        index = None if sample is None else self.sample_examples(split, sample)
        order = _example_order(self.num_examples(split), batch_size, shuffle=shuffle, repeat=shuffle,
                               seed=seed, first_epoch=first_epoch, steps_per_call=steps_per_call,
                               start_step=start_step, index=index)
        return order.map(_window_cutter(self._tensors[split], self.block_size),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def _known(vocab: Vocabulary, names: Names) -> np.ndarray:
    """A flag per code point of ``names.codes``' range: is it a character of ``vocab``?"""
    known = np.zeros(int(names.codes.max(initial=0)) + 1, bool)
    codes = [ord(c) for c in vocab.chars if ord(c) < len(known)]
    known[codes] = True
    return known


def _window_cutter(stream, block_size: int):
    """Example indices -> their ``(context, next index)``, cut from a split's token stream."""
    import tensorflow as tf

    dtype = tf.int32 if stream.shape[0] < 2**31 else tf.int64
    offsets = tf.range(1 - block_size, 2, dtype=dtype)  # the context, then the next token

    def cut(index):
        window = tf.cast(tf.gather(stream, tf.maximum(tf.cast(index, dtype)[..., None] + offsets, 0)), tf.int32)
        context, target = window[..., :-1], window[..., -1]
        # Keep only the context's characters after its last boundary: those of the example's name.
        own = tf.math.cumprod(tf.cast(context != 0, tf.int32), axis=-1, reverse=True)
        return context * own, target

    return cut


def make_dataset(X, y, batch_size: int, shuffle: bool = True, repeat: bool = True, seed: int = 0,
                 first_epoch: int = 0, steps_per_call: int = 1, start_step: int = 0):
    """Minibatches from in-memory arrays ``X`` [N, ...] and ``y`` [N], built for speed.

    The arrays live in memory as tensors and each minibatch is one ``gather``; see
    :func:`_example_order` for the order, which :meth:`NamesData.dataset` shares.
    """
    import tensorflow as tf

    X = tf.convert_to_tensor(X, tf.int32)
    y = tf.convert_to_tensor(y, tf.int32)
    order = _example_order(int(y.shape[0]), batch_size, shuffle=shuffle, repeat=repeat, seed=seed,
                           first_epoch=first_epoch, steps_per_call=steps_per_call, start_step=start_step)
    return order.map(lambda idx: (tf.gather(X, idx), tf.gather(y, idx)), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True).prefetch(tf.data.AUTOTUNE)


def _example_order(n: int, batch_size: int, shuffle: bool, repeat: bool, seed: int, first_epoch: int = 0,
                   steps_per_call: int = 1, start_step: int = 0, index: np.ndarray | None = None):
    """A ``tf.data.Dataset`` of minibatches of example indices (of ``range(n)``, or of ``index``).

    Shuffling permutes indices once per epoch (a single op, not a per-example shuffle buffer); the
    permutation of epoch ``e`` depends only on ``(seed, e)``, so runs repeat exactly and a resumed
    run can start at any epoch. Shuffled epochs drop their last partial batch so every step sees
    ``batch_size`` examples. ``start_step`` skips that many minibatches (counted from
    ``first_epoch``): a run resumed after ``s`` optimizer steps sees exactly the minibatches an
    uninterrupted run would from step ``s`` on. ``steps_per_call`` > 1 groups that many minibatches
    into one element ``[steps_per_call, batch_size]``. Without shuffling: ``range(n)`` (or
    ``index``) in order, in minibatches, the last one partial.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not shuffle:
        starts = tf.data.Dataset.range(0, n if index is None else len(index), batch_size)
        if index is None:
            ds = starts.map(lambda s: tf.range(s, tf.minimum(s + batch_size, n)))
        else:
            chosen = tf.constant(index, tf.int64)
            ds = starts.map(lambda s: chosen[s:s + batch_size])
        return ds.repeat() if repeat else ds
    n_batches = max(1, n // batch_size)
    used = min(n, n_batches * batch_size)

    def epoch_batches(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(perm[:used], [n_batches, -1]))

    first_epoch += start_step // n_batches
    epochs = tf.data.Dataset.range(first_epoch, 2**62 if repeat else first_epoch + 1)
    ds = epochs.flat_map(epoch_batches).skip(start_step % n_batches)  # index rows only: cheap
    if steps_per_call > 1:
        ds = ds.batch(steps_per_call, drop_remainder=True)
    return ds
