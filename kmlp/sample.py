"""Sampling and scoring: the trained network and its vocabulary as TensorFlow functions on strings.

:class:`NameModel` wraps a Keras model and its :class:`~kmlp.data.Vocabulary` in a ``tf.Module``
whose vocabulary lives in the graph (a lookup table from characters to indices and a tensor of
characters), so that the same functions serve ``kmlp sample``/``kmlp score`` in Python and the
exported SavedModel (see :mod:`kmlp.export`), where no Python vocabulary is needed.

Generation is batched and in-graph: all requested names advance one character per step together
inside a ``tf.while_loop``, each step drawing from ``tf.random.stateless_categorical`` seeded by
``(seed, step)``, so the same seed gives the same names. The loop stops as soon as every name has
ended (or at ``max_len`` characters, where a name is cut short)::

    lm = NameModel(run.model, run.vocab)
    lm.sample(5, seed=1, temperature=0.8, prefix="an")   # five names starting with "an"
    lm.score(["emma", "zzzx"])       # [(log-likelihood in nats, tokens incl. the end), ...]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .data import BOUNDARY, Vocabulary

MAX_LEN = 50  # characters generated at most per name (the longest name in names.txt has 15)


class NameModel(tf.Module):
    """A character model and its vocabulary, with generation and scoring as graph functions.

    Strings go in and out; the character <-> index mapping is a ``tf.lookup.StaticHashTable`` inside
    the module. A character outside the vocabulary maps to -1: :meth:`score` gives such names a
    log-likelihood of -inf, and :meth:`check` names them for a readable error in Python.
    """

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

    def sample_ids(self, count, seed, temperature, top_k, context, max_len):
        """Token indices ``int32 [count, steps]`` drawn after ``context`` (``int32 [block_size]``).

        All unfinished names advance together, one token per step. A name that draws the boundary
        (its end) leaves the batch, so later steps only compute the names still growing; each step's
        tokens are written with their row numbers and scattered into place once at the end.
        The loop ends when every name has ended or after ``max_len`` steps.
        """
        rows = tf.range(count)
        contexts = tf.tile(context[None, :], [count, 1])
        seed = tf.cast(seed, tf.int64)
        where = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False,
                               element_shape=[None, 2])  # (row, step) of each drawn token
        drawn = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])

        def step(t, rows, contexts, where, drawn):
            logits = keep_top_k(self.model(contexts, training=False) / temperature, top_k)
            nxt = tf.random.stateless_categorical(logits, 1, seed=tf.stack([seed, tf.cast(t, tf.int64)]),
                                                  dtype=tf.int32)[:, 0]
            where = where.write(t, tf.stack([rows, tf.fill(tf.shape(rows), t)], axis=1))
            drawn = drawn.write(t, nxt)
            growing = tf.not_equal(nxt, 0)
            contexts = tf.concat([contexts[:, 1:], nxt[:, None]], axis=1)
            return (t + 1, tf.boolean_mask(rows, growing), tf.boolean_mask(contexts, growing),
                    where, drawn)

        steps, _, _, where, drawn = tf.while_loop(
            lambda t, rows, *_: tf.logical_and(t < max_len, tf.size(rows) > 0),
            step, (tf.constant(0), rows, contexts, where, drawn),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]),
                              tf.TensorShape([None, self.block_size]), tf.TensorShape(None),
                              tf.TensorShape(None)))
        return tf.scatter_nd(where.concat(), drawn.concat(), tf.stack([count, steps]))

    def generate_names(self, count, seed, temperature, top_k, prefix, max_len):
        """``string [count]``: names that start with ``prefix`` (a scalar string, "" for none)."""
        prefix_ids = self.encode(prefix[None])
        tf.debugging.assert_non_negative(prefix_ids.flat_values,
                                         message="the prefix has characters outside the vocabulary")
        context = self.context_ids(prefix[None])[0]
        ids = self.sample_ids(count, seed, temperature, top_k, context, max_len)
        rest = tf.strings.reduce_join(tf.gather(self._pieces, ids), axis=1)
        return tf.strings.join([tf.fill([count], prefix), rest])

    def log_likelihood(self, names):
        """Log-likelihood in nats of each name (``float32 [B]``) and its tokens incl. the end (``int32 [B]``).

        Every name is scored as the data module builds examples: ``block_size`` boundary tokens,
        the characters, then the closing boundary, each token predicted from the ones before it.
        """
        ids = self.encode(names)
        known = tf.reduce_all(ids >= 0, axis=1)
        tokens = tf.cast(ids.row_lengths(), tf.int32) + 1
        width = tf.reduce_max(tf.concat([tokens, [1]], 0)) - 1  # longest name, 0 for an empty batch
        body = tf.maximum(ids, 0).to_tensor(0, shape=[None, None])
        body = tf.pad(body, [[0, 0], [0, width - tf.shape(body)[1]]])
        padded = tf.pad(body, [[0, 0], [self.block_size, 1]])                       # [B, T + L + 1]
        windows = tf.signal.frame(padded, self.block_size + 1, 1, axis=1)         # [B, L + 1, T + 1]
        contexts = tf.reshape(windows[..., :-1], [-1, self.block_size])
        targets = tf.reshape(windows[..., -1], [-1])
        log_probs = tf.nn.log_softmax(self.model(contexts, training=False), axis=-1)
        picked = tf.reshape(tf.gather(log_probs, targets, batch_dims=1), tf.shape(windows)[:2])
        in_name = tf.sequence_mask(tokens, width + 1)
        total = tf.reduce_sum(tf.where(in_name, picked, 0.0), axis=1)
        return tf.where(known, total, -np.inf), tokens

    # -- compiled entry points ------------------------------------------------------------------

    @tf.function(input_signature=[
        tf.TensorSpec([], tf.int32, name="count"), tf.TensorSpec([], tf.int64, name="seed"),
        tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int32, name="top_k"),
        tf.TensorSpec([], tf.string, name="prefix"), tf.TensorSpec([], tf.int32, name="max_len")])
    def generate(self, count, seed, temperature, top_k, prefix, max_len):
        return self.generate_names(count, seed, temperature, top_k, prefix, max_len)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="names")])
    def score_graph(self, names):
        return self.log_likelihood(names)

    # -- Python conveniences --------------------------------------------------------------------

    def check(self, text: str, what: str = "name") -> None:
        """Raise ``ValueError`` naming the characters of ``text`` the vocabulary lacks."""
        missing = self.vocab.unknown(text)
        if missing:
            raise ValueError(f"{what} {text!r} has characters outside the model's vocabulary: "
                             f"{''.join(missing)!r} (it knows {''.join(self.vocab.chars)!r})")

    def sample(self, num: int, seed: int | None = None, temperature: float = 1.0, top_k: int = 0,
               prefix: str = "", max_len: int = MAX_LEN) -> list[str]:
        """``num`` names as Python strings; see :func:`sample_names`."""
        self.check(prefix, "prefix")
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        names = self.generate(tf.constant(num, tf.int32), tf.constant(seed, tf.int64),
                              tf.constant(temperature, tf.float32), tf.constant(top_k or 0, tf.int32),
                              tf.constant(prefix), tf.constant(max_len, tf.int32))
        return [n.decode("utf-8") for n in names.numpy()]

    def score(self, names: list[str]) -> list[tuple[float, int]]:
        """(log-likelihood in nats, tokens incl. the end) of each name; -inf for unknown characters."""
        total, tokens = self.score_graph(tf.constant(list(names), tf.string))
        return [(float(s), int(n)) for s, n in zip(total.numpy(), tokens.numpy())]


def keep_top_k(logits, k):
    """Logits with all but the ``k`` largest of each row set to -inf; ``k`` <= 0 keeps them all."""
    vocab_size = tf.shape(logits)[-1]

    def cut():
        kth = tf.math.top_k(logits, tf.minimum(k, vocab_size)).values[:, -1:]
        return tf.where(logits < kth, tf.constant(-np.inf, logits.dtype), logits)

    return tf.cond(tf.logical_and(k > 0, k < vocab_size), cut, lambda: logits)


def sample_names(model, vocab: Vocabulary, num: int = 20, seed: int | None = None, max_len: int = MAX_LEN,
                 temperature: float = 1.0, top_k: int = 0, prefix: str = "") -> list[str]:
    """Draw ``num`` names in one batched, in-graph loop; the same ``seed`` gives the same names.

    ``temperature`` divides the logits (below 1: safer, more common names; above 1: wilder),
    ``top_k`` > 0 draws only among the k likeliest next characters (1: always the likeliest),
    and every name starts with ``prefix``. Names are cut at ``max_len`` generated characters.
    """
    return NameModel(model, vocab).sample(num, seed=seed, temperature=temperature, top_k=top_k,
                                          prefix=prefix, max_len=max_len)


def score_names(model, vocab: Vocabulary, names: list[str]) -> list[tuple[float, int]]:
    """(log-likelihood in nats, tokens incl. the end) of each name under the model."""
    return NameModel(model, vocab).score(names)


def where_found(names, words: dict[str, list[str]]) -> list[str]:
    """For each name, the split of the training data it appears in ("train", "dev", "test"), or "new".

    ``words`` is the run's split, ``NamesData.words``: a name the model merely memorised shows up
    as "train", one it could only have guessed as "dev"/"test".
    """
    split_of = {}
    for split in ("test", "dev", "train"):  # the split names are disjoint; train wins if not
        split_of.update(dict.fromkeys(words.get(split, ()), split))
    return [split_of.get(name, "new") for name in names]
