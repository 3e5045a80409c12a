"""Data: a names file -> vocabulary -> (context, next character) examples -> tf.data pipelines.

The dataset is built as in the "makemore, part 2" lecture: every name is padded on the left with
``block_size`` boundary tokens and followed by one, and each position gives one example, the
``block_size`` previous characters (the context) and the character that follows::

    emma, block_size 3:   ... -> e   ..e -> m   .em -> m   emm -> a   mma -> .

Index 0 is the boundary token, shown as ``.``. It is a token of its own, not a character of the
data: a literal ``.`` inside a name gets an index of its own like any other character.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOUNDARY = "."
NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = PROJECT_ROOT / "data" / "names.txt"
SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """The data file cannot be used; the message names the file (and line where it applies)."""


# ---------------------------------------------------------------------------------------------
# Reading the file


MAX_NAME_LENGTH = 1000  # a longer line is not a name: a file without line breaks, or not a names file


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
    """
    return [text for _, text in read_names(path)]


def read_names(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``(line number, name)`` for every name in the file; see :func:`load_words` for the rules."""
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
    names = []
    for lineno, line in enumerate(raw.splitlines(), start=1):  # splits on \n, \r\n and \r
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"
            ) from None
        text = unicodedata.normalize("NFC", text.strip())
        if not text:
            continue
        if len(text) > MAX_NAME_LENGTH:
            raise DataError(f"{path}:{lineno}: a line of {len(text):,} characters is not a name "
                            f"(the limit is {MAX_NAME_LENGTH:,}); expected one name per line")
        control = next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            raise DataError(f"{path}:{lineno}: control character U+{ord(text[control]):04X} at column "
                            f"{control + 1}; expected one name per line, not a table or binary file")
        names.append((lineno, text))
    if not names:
        raise DataError(f"{path}: no names in the file (it is empty or holds only blank lines)")
    return names


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
    """All (context, next index) examples of ``words``: ``X`` int32 [N, block_size], ``y`` int32 [N]."""
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


def split_words(words, seed: int = 42, fractions=(0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Split by name into train/dev/test, deterministic for a given seed.

    Repeated names are kept together, so no name lands in two splits.
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    unique = list(dict.fromkeys(words))
    order = np.random.default_rng(seed).permutation(len(unique))
    n1 = int(round(fractions[0] * len(unique)))
    n2 = int(round((fractions[0] + fractions[1]) * len(unique)))
    which = np.empty(len(unique), dtype=np.int8)
    which[order[:n1]], which[order[n1:n2]], which[order[n2:]] = 0, 1, 2
    split_of = dict(zip(unique, which.tolist()))
    out = {name: [] for name in SPLITS}
    shuffled = [unique[i] for i in order]
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    for w in shuffled:
        out[SPLITS[split_of[w]]].extend([w] * counts[w])
    return out


# The fewest distinct names for which the 80/10/10 split leaves every part non-empty.
MIN_DISTINCT_NAMES = 8


@dataclass
class NamesData:
    """Everything the model needs from a names file: vocabulary, word splits and their examples.

    >>> data = NamesData.from_file("names.txt", block_size=3, seed=42)
    >>> train = data.dataset("train", batch_size=32)      # shuffled, repeats forever
    >>> dev = data.dataset("dev", batch_size=1024)        # in order, one pass
    """

    vocab: Vocabulary
    block_size: int
    words: dict[str, list[str]]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    path: Path | None = None
    seed: int = 42

    @classmethod
    def from_words(cls, words, block_size: int = 3, seed: int = 42, vocab: Vocabulary | None = None,
                   path: Path | None = None) -> "NamesData":
        vocab = vocab or Vocabulary.from_words(words)
        splits = split_words(words, seed=seed)
        empty = [name for name in SPLITS if not splits[name]]
        if empty:
            where = f"{path}: " if path else ""
            raise DataError(
                f"{where}{len(set(words))} distinct names are too few for non-empty train/dev/test "
                f"splits (80/10/10); at least {MIN_DISTINCT_NAMES} are needed and many more for a "
                f"useful model"
            )
        arrays = {name: build_dataset(splits[name], vocab, block_size) for name in SPLITS}
        return cls(vocab=vocab, block_size=block_size, words=splits, arrays=arrays, path=path, seed=seed)

    @classmethod
    def from_file(cls, path=None, block_size: int = 3, seed: int = 42, vocab: Vocabulary | None = None
                  ) -> "NamesData":
        path = resolve_data_path(path)
        numbered = read_names(path)
        if vocab is not None:
            for lineno, w in numbered:
                missing = vocab.unknown(w)
                if missing:
                    raise DataError(f"{path}:{lineno}: name {w!r} has characters the model's vocabulary "
                                    f"lacks: {''.join(missing)!r}")
        words = [w for _, w in numbered]
        return cls.from_words(words, block_size=block_size, seed=seed, vocab=vocab, path=path)

    @classmethod
    def for_config(cls, path, config, vocab: Vocabulary | None = None) -> "NamesData":
        """The names file as a run with ``config`` (a :class:`kmlp.config.Config`) sees it: its
        context length and its split (``split_seed``, not ``seed``)."""
        return cls.from_file(path, block_size=config.block_size, seed=config.split_seed, vocab=vocab)

    def summary(self) -> str:
        parts = [f"{name} {len(self.words[name]):,} names / {len(self.arrays[name][1]):,} examples"
                 for name in SPLITS]
        return f"vocabulary {len(self.vocab)} tokens; " + "; ".join(parts)

    def num_examples(self, split: str) -> int:
        return int(self.arrays[split][1].shape[0])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Minibatches in one pass over the train split (the last, partial one is dropped)."""
        return max(1, self.num_examples("train") // batch_size)

    def dataset(self, split: str, batch_size: int, shuffle: bool | None = None, seed: int | None = None,
                first_epoch: int = 0, steps_per_call: int = 1, start_step: int = 0):
        """A ``tf.data.Dataset`` of ``(context, next_index)`` minibatches for ``split``.

        The train split is shuffled afresh every epoch and repeats forever (give ``model.fit`` a
        ``steps_per_epoch``); the others, and the train split with ``shuffle=False``, go once, in
        order. See :func:`make_dataset`.
        """
        X, y = self.arrays[split]
        shuffle = split == "train" if shuffle is None else shuffle
        return make_dataset(X, y, batch_size, shuffle=shuffle, repeat=shuffle,
                            seed=self.seed if seed is None else seed, first_epoch=first_epoch,
                            steps_per_call=steps_per_call, start_step=start_step)


def make_dataset(X, y, batch_size: int, shuffle: bool = True, repeat: bool = True, seed: int = 0,
                 first_epoch: int = 0, steps_per_call: int = 1, start_step: int = 0):
    """Minibatches from in-memory arrays, built for speed.

    The arrays live in memory as tensors. Shuffling permutes indices once per epoch (a single op,
    not a per-example shuffle buffer) and each minibatch is one ``gather``; the permutation of epoch
    ``e`` depends only on ``(seed, e)``, so runs repeat exactly and a resumed run can start at any
    epoch. Shuffled epochs drop their last partial batch so every step sees ``batch_size`` examples.
    ``start_step`` skips that many minibatches (counted from ``first_epoch``): a run resumed after
    ``s`` optimizer steps sees exactly the minibatches an uninterrupted run would from step ``s`` on.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    X = tf.convert_to_tensor(X, tf.int32)
    y = tf.convert_to_tensor(y, tf.int32)
    n = int(y.shape[0])
    if not shuffle:
        ds = tf.data.Dataset.from_tensor_slices((X, y)).batch(batch_size)
        return (ds.repeat() if repeat else ds).prefetch(tf.data.AUTOTUNE)
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
    ds = ds.map(lambda idx: (tf.gather(X, idx), tf.gather(y, idx)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
