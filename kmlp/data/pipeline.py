"""The pipeline: a names file -> vocabulary -> splits -> shuffled (context, next character) minibatches.

The examples are built as in the "makemore, part 2" lecture: every name is padded on the left with
``block_size`` boundary tokens and followed by one, and each position gives one example, the
``block_size`` previous characters (the context) and the character that follows::

    emma, block_size 3:   ... -> e   ..e -> m   .em -> m   emm -> a   mma -> .

Memory grows with the file by a small constant: each split is one token stream (see
:mod:`kmlp.data.splits`), and ``tf.data`` cuts each minibatch's context windows out of it; no
``[N, block_size]`` array and no Python object per name or character is built, and a large train
split's shuffled order is computed as it is read, not held (see :func:`_example_order`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kmlp.data.fetch import resolve_data_path
from kmlp.data.files import Names, read_file
from kmlp.data.splits import (SPLITS, SplitNames, distinct, first_holding, present, split_groups,
                              stream_dtype, token_stream)
from kmlp.data.vocab import Vocabulary
from kmlp.errors import DataError

# The fewest distinct names for which the 80/10/10 split leaves every part non-empty.
MIN_DISTINCT_NAMES = 8
# The most examples whose epoch is shuffled as one permutation held whole (4 bytes per example, 8
# while it is made); a larger split's order is computed place by place, holding nothing per example.
PERMUTED_EXAMPLES = 2**20


@dataclass(eq=False)
class NamesData:
    """Everything the model needs from a names file: the vocabulary and each split's token stream.

    >>> data = NamesData.from_file("names.txt", block_size=3, split_seed=42)
    >>> train = data.dataset("train", batch_size=32, seed=1)  # shuffled (seed: the run's), forever
    >>> dev = data.dataset("dev", batch_size=1024)             # in order, one pass
    >>> data.words["dev"][:3]                                  # the names, decoded when asked for

    ``streams[split]`` holds a boundary token, then each name's tokens followed by a boundary, in
    the split's order; its example k is token k + 1 (see :meth:`dataset`). ``data_sha256``, for data
    read from a file, is the SHA-256 of the bytes read: what a run records of its file.
    """

    vocab: Vocabulary
    block_size: int
    streams: dict[str, np.ndarray]
    path: Path | None = None
    split_seed: int = 42
    data_sha256: str | None = None
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
            unknown = first_holding(names, ~_known(vocab, names))
            if unknown >= 0:
                vocab.encode(names.text(unknown))  # raises KeyError naming the characters
        return cls._split(names, block_size, split_seed, vocab, path)

    @classmethod
    def from_file(cls, path=None, block_size: int = 3, split_seed: int = 42, vocab: Vocabulary | None = None
                  ) -> "NamesData":
        path = resolve_data_path(path)
        names = read_file(path)
        if vocab is not None:
            unknown = first_holding(names, ~_known(vocab, names))
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
            vocab = Vocabulary(map(chr, np.flatnonzero(present(names)).tolist()))
        first, counts = distinct(names)
        parts = split_groups(len(first), seed=split_seed)
        if not all(len(part) for part in parts):
            where = f"{path}: " if path else ""
            raise DataError(
                f"{where}{len(first)} distinct names are too few for non-empty train/dev/test "
                f"splits (80/10/10); at least {MIN_DISTINCT_NAMES} are needed and many more for a "
                f"useful model"
            )
        tokens = np.zeros(max([int(names.codes.max(initial=0)), *map(ord, vocab.chars)]) + 1,
                          stream_dtype(len(vocab)))
        tokens[[ord(c) for c in vocab.chars]] = np.arange(1, len(vocab))
        streams = {split: token_stream(names, np.repeat(first[part], counts[part]), tokens)
                   for split, part in zip(SPLITS, parts)}
        return cls(vocab=vocab, block_size=block_size, streams=streams, path=path, split_seed=split_seed,
                   data_sha256=names.sha256)

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
                   steps_per_call: int = 1, start_step: int = 0, index: np.ndarray | None = None,
                   permuted_up_to: int = PERMUTED_EXAMPLES):
    """A ``tf.data.Dataset`` of minibatches of example indices (of ``range(n)``, or of ``index``).

    Shuffling permutes indices once per epoch, not through a per-example shuffle buffer: up to
    ``permuted_up_to`` examples, as one permutation made whole (the order of every earlier version);
    beyond, each place's index is computed alone, a bijection of ``range(n)``
    (``tf.random.experimental.index_shuffle``), so that nothing is held per example. Epoch ``e``'s
    order depends only on ``(seed, e)``, so runs repeat exactly and a resumed run can start at any
    epoch. Shuffled epochs drop their last partial batch so every step sees
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
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        if n > permuted_up_to:
            last = tf.constant(n - 1, tf.int64)
            return tf.data.Dataset.range(n_batches).map(lambda b: tf.random.experimental.index_shuffle(
                tf.range(b * batch_size, (b + 1) * batch_size), key, last))
        perm = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(perm[:used], [n_batches, -1]))

    first_epoch += start_step // n_batches
    epochs = tf.data.Dataset.range(first_epoch, 2**62 if repeat else first_epoch + 1)
    ds = epochs.flat_map(epoch_batches).skip(start_step % n_batches)  # index rows only: cheap
    if steps_per_call > 1:
        ds = ds.batch(steps_per_call, drop_remainder=True)
    return ds
