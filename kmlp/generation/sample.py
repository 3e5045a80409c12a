"""Sampling and scoring: the trained network and its vocabulary as TensorFlow functions on strings.

:class:`NameModel` wraps a Keras model and its :class:`~kmlp.data.vocab.Vocabulary` in a ``tf.Module``
whose vocabulary lives in the graph (a lookup table from characters to indices and a tensor of
characters), so that the same functions serve ``kmlp sample``/``kmlp score`` in Python and the
exported SavedModel (see :mod:`kmlp.export`), where no Python vocabulary is needed.

Generation is batched and in-graph: up to :data:`CHUNK_NAMES` names advance one character per step
together inside a ``tf.while_loop``, each character drawn by the rule of :mod:`kmlp.generation.drawing` (a
uniform number hashed from the seed, the name's number and the step), so the same seed gives the
same names, however many are asked for. Names stream out chunk by chunk and scoring runs over
bounded slices of characters, so memory does not grow with the number of names or with the length
of one name::

    lm = NameModel(run.model, run.vocab)
    lm.sample(5, seed=1, temperature=0.8, prefix="an")   # five names starting with "an"
    for name in lm.stream(10**7, seed=1, unique=True): ...  # ten million distinct names, streamed
    lm.score(["emma", "zzzx"])       # [(log-likelihood in nats, tokens incl. the end), ...]
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from kmlp.data.vocab import BOUNDARY, Vocabulary
from kmlp.errors import ConfigError
from kmlp.generation.drawing import (DRAWS_PER_NAME, GOLDEN, MAX_LEN, MIN_DRAWS, SEED_MULTIPLIER,
                                     UNIFORM_BITS, Sampling, check_count, pick_seed)

__all__ = ["NameModel", "sample_names", "score_names", "where_found"]

CHUNK_NAMES = 65_536         # names drawn per compiled call: memory is bounded by this, not by -n,
CHUNK_CHARACTERS = CHUNK_NAMES * MAX_LEN  # and by names x --max-len (the tokens a call can hold)
SCORE_CHUNK_TOKENS = 65_536  # characters scored per model call inside the score graph
SCORE_BATCH = 8_192          # names per score call from Python


class NameModel(tf.Module):
    """A character model and its vocabulary, with generation and scoring as graph functions.

    Strings go in and out; the character <-> index mapping is a ``tf.lookup.StaticHashTable`` inside
    the module. A character outside the vocabulary maps to -1: :meth:`score` gives such names a
    log-likelihood of -inf, and :meth:`check` names them for a readable error in Python.
    """

    draws_up_front = False  # hash each step's draws for the growing names only (large batches)

    def __init__(self, model, vocab: Vocabulary, max_len: int = MAX_LEN, name: str = "kmlp"):
        super().__init__(name=name)
        self.model = model
        # The weights' tf.Variables tracked directly as well: TensorFlow 1 style loaders
        # (saved_model_cli run, TensorFlow Serving) leave them uninitialised when they are reached
        # only through the Keras model or its keras.Variable wrappers.
        self.weights = [v.value for v in model.variables]
        self.vocab = vocab
        self.block_size = int(model.input_shape[-1])
        self.max_len = max_len
        # Index -> how the token is shown (the boundary as "."), and -> its text inside a name
        # (the boundary adds nothing, so joining a padded row of indices gives the name).
        self.tokens = tf.constant([BOUNDARY] + vocab.chars)
        self._pieces = tf.constant([""] + vocab.chars)
        keys = list(vocab.chars)
        values = list(range(1, len(vocab)))
        if BOUNDARY not in vocab.stoi:  # "." in a context means the boundary (left padding)
            keys.append(BOUNDARY)
            values.append(0)
        self.char_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values, tf.int32)),
            default_value=-1)

    # -- graph building blocks ----------------------------------------------------------------

    def encode(self, strings, boundary_ok: bool = False):
        """Character indices of each string, ragged ``int32 [B, None]``; -1 marks unknown characters.

        With ``boundary_ok`` a "." that is not a character of the vocabulary reads as the boundary
        (contexts are written that way); otherwise it is unknown, as inside a name.
        """
        chars = tf.strings.unicode_split(strings, "UTF-8")
        ids = tf.ragged.map_flat_values(self.char_table.lookup, chars)
        return ids if boundary_ok else tf.ragged.map_flat_values(
            lambda i: tf.where(tf.equal(i, 0), -1, i), ids)

    def context_ids(self, strings):
        """``int32 [B, block_size]``: the last ``block_size`` characters, left-padded with the boundary."""
        ids = self.encode(strings, boundary_ok=True)
        pad = tf.zeros([ids.nrows(), self.block_size], tf.int32)
        padded = tf.concat([tf.RaggedTensor.from_tensor(pad), ids], axis=1)
        return padded[:, -self.block_size:].to_tensor(shape=[None, self.block_size])

    def next_probs(self, context_ids):
        """Probabilities of every next token, ``float32 [B, vocab]``."""
        return tf.nn.softmax(self.model(context_ids, training=False), axis=-1)

    def sample_ids(self, count, seed, first_row, context, options):
        """Token indices ``int32 [count, steps]`` of names ``first_row`` ... drawn after ``context``.

        ``options`` holds scalars ``temperature, top_k, top_p, min_steps, max_steps`` (steps counted
        after the prefix; ``min_steps`` None for none), as tensors or Python values (see
        :func:`draw_tokens`). All unfinished names advance together, one token per step. A
        name that draws the boundary (its end) leaves the batch, so later steps only compute the
        names still growing; each step's tokens are written with their row numbers and scattered
        into place once at the end. The loop ends when every name has ended or after ``max_steps``.
        """
        temperature, top_k, top_p, min_steps, max_steps = options
        keys = name_keys(seed, tf.cast(first_row, tf.int64) + tf.cast(tf.range(count), tf.int64))
        contexts = tf.tile(context[None, :], [count, 1])
        where = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False,
                               element_shape=[None, 2])  # (row, step) of each drawn token
        drawn = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])

        if self.draws_up_front:  # every name's draw at every step, in one go: fewer ops per step
            table = uniforms(keys[None, :], tf.range(max_steps)[:, None])  # [max_steps, count]
            draws = lambda rows, t: tf.gather(table[t], rows)  # noqa: E731
        else:  # only for the names still growing: less work when few names run long
            draws = lambda rows, t: uniforms(tf.gather(keys, rows), t)  # noqa: E731

        def step(t, rows, contexts, where, drawn):
            nxt = draw_tokens(self.model(contexts, training=False), draws(rows, t),
                              temperature, top_k, top_p,
                              end_allowed=True if min_steps is None else t >= min_steps)
            where = where.write(t, tf.stack([rows, tf.fill(tf.shape(rows), t)], axis=1))
            drawn = drawn.write(t, nxt)
            growing = tf.where(tf.not_equal(nxt, 0))[:, 0]
            contexts = tf.concat([contexts[:, 1:], nxt[:, None]], axis=1)
            return t + 1, tf.gather(rows, growing), tf.gather(contexts, growing), where, drawn

        steps, _, _, where, drawn = tf.while_loop(
            lambda t, rows, *_: tf.logical_and(t < max_steps, tf.size(rows) > 0),
            step, (tf.constant(0), tf.range(count), contexts, where, drawn),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]),
                              tf.TensorShape([None, self.block_size]), tf.TensorShape(None),
                              tf.TensorShape(None)))
        return tf.scatter_nd(where.concat(), drawn.concat(), tf.stack([count, steps]))

    def generate_names(self, count, seed, first_row, temperature, top_k, top_p, prefix, min_len, max_len):
        """``string [count]``: names that start with ``prefix`` (a scalar string, "" for none), from
        ``min_len`` to ``max_len`` characters long, prefix included (checked by the caller)."""
        prefix_len = tf.strings.length(prefix, unit="UTF8_CHAR")
        context = self.context_ids(prefix[None])[0]
        no_minimum = isinstance(min_len, int) and min_len == 0  # then the end is never barred
        options = (temperature, top_k, top_p, None if no_minimum else min_len - prefix_len,
                   max_len - prefix_len)
        ids = self.sample_ids(count, seed, first_row, context, options)
        ids = tf.RaggedTensor.from_tensor(ids, padding=0)  # each name's characters, no padding
        rest = tf.strings.reduce_join(tf.gather(self._pieces, ids), axis=1)
        return tf.strings.join([tf.fill([count], prefix), rest])

    def log_likelihood(self, names):
        """Log-likelihood in nats of each name (``float32 [B]``) and its tokens incl. the end (``int32 [B]``).

        Every name is scored as the data module builds examples: ``block_size`` boundary tokens,
        the characters, then the closing boundary, each token predicted from the ones before it.
        The names are laid end to end (no padding to the longest) and the model runs on slices of
        at most :data:`SCORE_CHUNK_TOKENS` of their tokens, so memory follows the total length.
        """
        ids = self.encode(names)
        splits = tf.cast(ids.row_splits, tf.int32)
        unknown = _row_sums(tf.cast(ids.flat_values < 0, tf.int32), splits)
        tokens = splits[1:] - splits[:-1] + 1
        boundary = tf.RaggedTensor.from_tensor(tf.zeros([ids.nrows(), self.block_size], tf.int32))
        laid = tf.concat([boundary, tf.maximum(ids, 0), boundary[:, :1]], axis=1)
        flat = laid.flat_values                        # every name: T boundaries, characters, end
        # The j-th token of name i is predicted at flat position start_i + T + j. (Row ids come from
        # a search, not RaggedTensor.value_rowids, whose tf.repeat pads every row to the longest.)
        ends = tf.cumsum(tokens)
        target = tf.range(tf.reduce_sum(tokens))
        name_of = tf.searchsorted(ends, target, side="right")
        positions = tf.gather(tf.cast(laid.row_starts(), tf.int32) + self.block_size - (ends - tokens),
                              name_of) + target
        offsets = tf.range(-self.block_size, 0)
        picked = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False,
                                element_shape=[None])

        def score_slice(i, picked):
            at = positions[i * SCORE_CHUNK_TOKENS:(i + 1) * SCORE_CHUNK_TOKENS]
            log_probs = tf.nn.log_softmax(
                self.model(tf.gather(flat, at[:, None] + offsets), training=False), axis=-1)
            return i + 1, picked.write(i, tf.gather(log_probs, tf.gather(flat, at), batch_dims=1))

        slices = (tf.size(positions) + SCORE_CHUNK_TOKENS - 1) // SCORE_CHUNK_TOKENS
        _, picked = tf.while_loop(lambda i, _: i < slices, score_slice, (tf.constant(0), picked))
        log_probs = tf.cond(slices > 0, picked.concat, lambda: tf.zeros([0], tf.float32))
        total = tf.math.unsorted_segment_sum(log_probs, name_of, tf.size(tokens))
        return tf.where(unknown == 0, total, -np.inf), tokens


    # -- compiled entry points ------------------------------------------------------------------

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([], tf.int32, name="count"), tf.TensorSpec([], tf.int64, name="seed"),
        tf.TensorSpec([], tf.int64, name="first_row"), tf.TensorSpec([], tf.float32, name="temperature"),
        tf.TensorSpec([], tf.int32, name="top_k"), tf.TensorSpec([], tf.float32, name="top_p"),
        tf.TensorSpec([], tf.string, name="prefix"), tf.TensorSpec([], tf.int32, name="min_len"),
        tf.TensorSpec([], tf.int32, name="max_len")])
    def generate(self, count, seed, first_row, temperature, top_k, top_p, prefix, min_len, max_len):
        return self.generate_names(count, seed, first_row, temperature, top_k, top_p, prefix, min_len,
                                   max_len)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="names")])
    def score_graph(self, names):
        return self.log_likelihood(names)

    # -- Python conveniences --------------------------------------------------------------------

    def stream(self, num: int, seed: int | None = None, *, unique: bool = False, exclude=None,
               max_draws: int | None = None, **options) -> Iterator[str]:
        """``num`` names, yielded as they are drawn, at most :data:`CHUNK_NAMES` at a time (fewer
        for a ``max_len`` above 50, :data:`CHUNK_CHARACTERS` characters at most).

        ``options`` are those of :class:`~kmlp.generation.drawing.Sampling` (``temperature``, ``top_k``,
        ``top_p``, ``prefix``, ``min_len``, ``max_len``); bad values raise
        :class:`~kmlp.config.ConfigError` before anything is drawn. Name number i depends only on
        the seed, i and the options, so ``stream(10, s)`` gives the first names of ``stream(100, s)``.

        ``unique`` skips names already given, and ``exclude`` (a set, e.g. every name of the
        training file) names never to give; drawing goes on until ``num`` names pass, for at most
        ``max_draws`` draws (default ``max(MIN_DRAWS, DRAWS_PER_NAME * num)``), after which
        :class:`~kmlp.config.ConfigError` says how many were found. ``unique`` keeps every name
        given in a set: the one use of memory that grows with ``num``.
        """
        sampling = Sampling(**options).check(self.vocab.chars)
        num = check_count(num)
        filtering = unique or exclude is not None
        if max_draws is None:
            max_draws = max(MIN_DRAWS, DRAWS_PER_NAME * num) if filtering else num
        return self._stream(num, pick_seed(seed), sampling, unique, exclude, max_draws)

    def _stream(self, num, seed, sampling, unique, exclude, max_draws) -> Iterator[str]:
        filtering = unique or exclude is not None
        given, seen, drawn = 0, set(), 0
        while given < num:
            if drawn >= max_draws:
                raise ConfigError(_shortfall(num, given, drawn, unique, exclude is not None))
            want = num - given
            size = min(CHUNK_NAMES, max(1, CHUNK_CHARACTERS // sampling.max_len), max_draws - drawn,
                       max(2 * want, 1_000) if filtering else want)
            for name in self._draw(size, seed, drawn, sampling):
                drawn += 1
                if (exclude is not None and name in exclude) or (unique and name in seen):
                    continue
                if unique:
                    seen.add(name)
                given += 1
                yield name
                if given == num:
                    return

    def sample(self, num: int, seed: int | None = None, **options) -> list[str]:
        """``num`` names as a list; see :meth:`stream` and :func:`sample_names`."""
        return list(self.stream(num, seed, **options))

    def _draw(self, count: int, seed: int, first_row: int, s: Sampling) -> list[str]:
        names = self.generate(tf.constant(count, tf.int32), tf.constant(seed, tf.int64),
                              tf.constant(first_row, tf.int64), tf.constant(s.temperature, tf.float32),
                              tf.constant(s.top_k, tf.int32), tf.constant(s.top_p, tf.float32),
                              tf.constant(s.prefix), tf.constant(s.min_len, tf.int32),
                              tf.constant(s.max_len, tf.int32))
        return [n.decode("utf-8") for n in names.numpy()]

    def iter_scores(self, names: Iterable[str]) -> Iterator[tuple[str, float, int]]:
        """(name, log-likelihood in nats, tokens incl. the end) for each name, read and scored
        :data:`SCORE_BATCH` names at a time; -inf for names with characters outside the vocabulary."""
        names = iter(names)
        while batch := list(islice(names, SCORE_BATCH)):
            total, tokens = self.score_graph(tf.constant(batch, tf.string))
            yield from zip(batch, map(float, total.numpy()), map(int, tokens.numpy()))

    def score(self, names: Iterable[str]) -> list[tuple[float, int]]:
        """(log-likelihood in nats, tokens incl. the end) of each name; -inf for unknown characters."""
        return [(total, tokens) for _, total, tokens in self.iter_scores(names)]


def _row_sums(values, row_splits):
    """Sum of ``values`` within each row of a ragged layout given by ``row_splits``, in O(values)."""
    running = tf.concat([[0], tf.cumsum(values)], axis=0)
    return tf.gather(running, row_splits[1:]) - tf.gather(running, row_splits[:-1])


def _shortfall(num: int, given: int, drawn: int, unique: bool, new: bool) -> str:
    kind = " ".join(w for w, on in (("distinct", unique), ("new", new)) if on)
    where = " (in none of the training file's splits)" if new else ""
    return (f"-n/--num: the model gave only {given:,} {kind} name{'' if given == 1 else 's'}{where} in "
            f"{drawn:,} draws, "
            f"{num:,} asked; ask for fewer, or widen the choice (a higher --temperature, "
            f"--top-k 0, --top-p 1)")


# -- the drawing rule of kmlp.generation.drawing, in TensorFlow ------------------------------------------------


def _mix32(x):
    """:func:`kmlp.generation.drawing.mix32` on ``uint32`` tensors."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * 0x7FEB352D
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * 0x846CA68B
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def name_keys(seed, rows):
    """:func:`kmlp.generation.drawing.name_key`: ``uint32 [N]`` keys of the names numbered ``rows`` (int64)."""
    seed = tf.cast(seed, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(seed, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(seed, 32), 0xFFFFFFFF), tf.uint32)
    base = _mix32(tf.bitwise.bitwise_xor(low, high * SEED_MULTIPLIER))
    return _mix32(base + tf.cast(tf.bitwise.bitwise_and(rows, 0xFFFFFFFF), tf.uint32) * GOLDEN)


def uniforms(keys, step):
    """:func:`kmlp.generation.drawing.uniform`: ``float32 [N]`` in [0, 1) for the names' ``keys`` at ``step``."""
    bits = tf.bitwise.right_shift(_mix32(keys + tf.cast(step, tf.uint32) * GOLDEN), 32 - UNIFORM_BITS)
    return tf.cast(bits, tf.float32) * (2.0 ** -UNIFORM_BITS)


def draw_tokens(logits, u, temperature, top_k=0, top_p=1.0, end_allowed=True):
    """:func:`kmlp.generation.drawing.next_tokens` in TensorFlow: ``int32 [B]`` tokens for ``logits [B, V]``.

    ``top_k``, ``top_p`` and ``end_allowed`` may be tensors, or Python values: then a step they
    leave out (0, 1.0, True) is left out of the graph, which keeps a one-name call short.
    """
    if end_allowed is not True:
        end = tf.constant(np.arange(logits.shape[1]) == 0)
        logits = tf.where(tf.logical_and(end, tf.logical_not(end_allowed)), -np.inf, logits)
    if not (isinstance(top_k, int) and top_k == 0):
        logits = keep_top_k(logits, top_k)
    temperature = tf.maximum(temperature, np.finfo(np.float32).tiny)  # FTZ would make a tiny one 0
    weights = tf.exp((logits - tf.reduce_max(logits, axis=1, keepdims=True)) / temperature)
    if not (isinstance(top_p, float) and top_p == 1.0):
        weights = tf.cond(top_p < 1, lambda: keep_top_p(weights, top_p), lambda: weights)
    running = running_sums(weights)
    return tf.searchsorted(running, u[:, None] * running[:, -1:], side="right")[:, 0]


def running_sums(weights):
    """Running sums along each row, as a product with a triangular matrix of ones (several times
    faster than ``tf.cumsum`` along a short last axis; the same rounding as kmlp.generation.drawing's)."""
    return weights @ tf.constant(np.triu(np.ones((weights.shape[1],) * 2, np.float32)))


def keep_top_k(logits, k):
    """Logits with all but the ``k`` largest of each row set to -inf; ``k`` <= 0 keeps them all."""
    vocab_size = tf.shape(logits)[-1]

    def cut():
        kth = tf.math.top_k(logits, tf.minimum(k, vocab_size)).values[:, -1:]
        return tf.where(logits < kth, tf.constant(-np.inf, logits.dtype), logits)

    return tf.cond(tf.logical_and(k > 0, k < vocab_size), cut, lambda: logits)


def keep_top_p(weights, p):
    """Weights outside the nucleus set to 0: the likeliest tokens whose weights first reach ``p`` of
    the row's total are kept, with every token tied with the last of them."""
    ranked = tf.sort(weights, axis=1, direction="DESCENDING")
    running = running_sums(ranked)
    before = tf.concat([tf.zeros_like(running[:, :1]), running[:, :-1]], axis=1)
    kept = tf.reduce_sum(tf.cast(before < p * running[:, -1:], tf.int32), axis=1)
    smallest = tf.gather(ranked, kept - 1, batch_dims=1)
    return tf.where(weights >= smallest[:, None], weights, tf.zeros_like(weights))


# -- functions -----------------------------------------------------------------------------------


def sample_names(model, vocab: Vocabulary, num: int = 20, seed: int | None = None, **options) -> list[str]:
    """Draw ``num`` names in batched, in-graph loops; the same ``seed`` gives the same names.

    ``options`` (see :class:`~kmlp.generation.drawing.Sampling`): ``temperature`` divides the logits (below 1:
    safer, more common names; above 1: wilder), ``top_k`` > 0 draws only among the k likeliest next
    characters (1: always the likeliest), ``top_p`` < 1 among the likeliest whose probabilities add
    up to p, every name starts with ``prefix``, and has ``min_len`` to ``max_len`` characters.
    """
    return NameModel(model, vocab).sample(num, seed, **options)


def score_names(model, vocab: Vocabulary, names: list[str]) -> list[tuple[float, int]]:
    """(log-likelihood in nats, tokens incl. the end) of each name under the model."""
    return NameModel(model, vocab).score(names)


def where_found(names, words: dict[str, list[str]]) -> list[str]:
    """For each name, the split of the training data it appears in ("train", "dev", "test"), or "new".

    ``words`` is the run's split, ``NamesData.words``: a name the model merely memorised shows up
    as "train", one it could only have guessed as "dev"/"test".
    """
    split_of = split_index(words)
    return [split_of.get(name, "new") for name in names]


def split_index(words: dict[str, list[str]]) -> dict[str, str]:
    """Name -> the split it is in ("train" where a name is in several), for :func:`where_found`."""
    split_of = {}
    for split in ("test", "dev", "train"):  # the split names are disjoint; train wins if not
        split_of.update(dict.fromkeys(words.get(split, ()), split))
    return split_of
