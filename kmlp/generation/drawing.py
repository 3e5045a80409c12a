"""How kmlp draws names: the sampling options, their checks, and the one rule that turns a model's
next-character logits into a character. Plain numpy, so that a program without TensorFlow (the
LiteRT reference loop in :mod:`kmlp.export.litert`, or a port to a phone) draws exactly the names that
``kmlp sample`` draws for the same seed.

The rule, for name number ``row`` (0, 1, 2, ... within one seed) at generation step ``step``:

1. ``u = uniform(name_key(seed, row), step)``: a number in [0, 1) from a 32-bit integer hash
   (:func:`mix32`, "lowbias32") of ``key + step * 0x9E3779B9`` (modulo 2**32), where the name's
   key hashes the seed and its number the same way (:func:`name_key`); so each name's draws depend on the seed and its own number
   only, not on how many names are drawn together, and any language can recompute them.
2. From the logits ``l`` of the next token (index 0 is the end of the name): while the name is
   shorter than ``min_len`` the end is barred (its logit set to -inf); keep the ``top_k`` largest
   logits (ties kept; 0 keeps all); weights ``w = exp((l - max l) / temperature)``; with ``top_p``
   < 1 keep the likeliest tokens whose weights first reach ``top_p`` of the total (the nucleus;
   every token tied with the last one kept too), setting the others' weights to 0.
3. The token is the first index whose running sum of weights exceeds ``u * sum(w)``.

Everything is computed in float32. :func:`next_tokens` is the rule in numpy;
``kmlp.generation.sample`` computes the same steps in TensorFlow, batched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kmlp.data.files import MAX_NAME_LENGTH  # --max-len and SavedModel names: as long as a name read
from kmlp.config import check_integer
from kmlp.errors import ConfigError

MAX_LEN = 50             # default longest name, in characters (the longest in names.txt has 15)
MIN_DRAWS = 10_000       # --unique/--new give up after max(MIN_DRAWS, DRAWS_PER_NAME * n) draws
DRAWS_PER_NAME = 20

GOLDEN = 0x9E3779B9     # 2**32 / golden ratio: the step between successive hash inputs
SEED_MULTIPLIER = 0x85EBCA6B  # an odd constant that spreads the high half of a 64-bit seed
MAX_FLOAT32 = float(np.finfo(np.float32).max)
UNIFORM_BITS = 23        # u = k / 2**23, so that u * total < total in float32 (no index past the end)


def mix32(x):
    """The "lowbias32" integer hash (C. Wellons) of ``np.uint32`` values, elementwise."""
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):  # multiplication modulo 2**32 is the point
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def name_key(seed: int, row):
    """``uint32`` key of name number ``row`` (an int or array) for a 64-bit ``seed``:
    ``mix32(mix32(low ^ high * SEED_MULTIPLIER) + row * GOLDEN)`` with the seed's two 32-bit halves."""
    seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
    low, high = np.uint32(seed & 0xFFFF_FFFF), np.uint32(seed >> 32)
    with np.errstate(over="ignore"):
        base = mix32(low ^ high * np.uint32(SEED_MULTIPLIER))
        return mix32(base + np.asarray(row, np.uint32) * np.uint32(GOLDEN))


def uniform(key, step: int):
    """``float32`` in [0, 1 - 2**-23]: the draw of the name with ``key`` at generation ``step``."""
    with np.errstate(over="ignore"):  # key + step * GOLDEN modulo 2**32: a Weyl sequence per name
        bits = mix32(np.asarray(key, np.uint32) + np.uint32(step) * np.uint32(GOLDEN))
    return (bits >> np.uint32(32 - UNIFORM_BITS)).astype(np.float32) * np.float32(2.0 ** -UNIFORM_BITS)


def next_tokens(logits, u, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                end_allowed=True) -> np.ndarray:
    """Token index of each row of ``logits [B, V]`` for the uniforms ``u [B]`` (see the module's rule)."""
    logits = np.array(logits, np.float32, ndmin=2)
    if not np.all(end_allowed):
        logits[~np.broadcast_to(end_allowed, logits.shape[:1]), 0] = -np.inf
    if 0 < top_k < logits.shape[1]:
        kth = -np.sort(-logits, axis=1)[:, top_k - 1:top_k]
        logits = np.where(logits < kth, np.float32(-np.inf), logits)
    temperature = max(np.float32(temperature), np.finfo(np.float32).tiny)  # as TensorFlow's, never 0
    with np.errstate(over="ignore"):  # a tiny temperature sends all but the likeliest to -inf
        weights = np.exp((logits - logits.max(axis=1, keepdims=True)) / temperature)
    if top_p < 1:
        ranked = -np.sort(-weights, axis=1)
        before = running_sums(ranked)
        total = before[:, -1:]
        before = np.concatenate([np.zeros_like(total), before[:, :-1]], axis=1)
        kept = np.sum(before < np.float32(top_p) * total, axis=1)
        smallest = np.take_along_axis(ranked, kept[:, None] - 1, axis=1)
        weights = np.where(weights >= smallest, weights, np.float32(0))
    running = running_sums(weights)
    threshold = np.asarray(u, np.float32).reshape(-1, 1) * running[:, -1:]
    return np.sum(running <= threshold, axis=1)


def running_sums(weights) -> np.ndarray:
    """Running sums along each row of a float32 matrix, as its product with a triangular matrix of
    ones (the way the TensorFlow sampler computes them, for the same rounding)."""
    size = weights.shape[1]
    return weights @ np.triu(np.ones((size, size), np.float32))


@dataclass(frozen=True)
class Sampling:
    """How names are drawn; :meth:`check` refuses values out of range, naming the CLI flag.

    ``temperature`` divides the logits (below 1: safer, commoner names; above 1: wilder); ``top_k``
    > 0 draws among the k likeliest next characters only (1: always the likeliest); ``top_p`` < 1
    among the likeliest whose probabilities add up to ``top_p`` (nucleus sampling); every name
    starts with ``prefix`` and has from ``min_len`` to ``max_len`` characters, the prefix included
    (a name still growing at ``max_len`` is cut there).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    prefix: str = ""
    min_len: int = 0
    max_len: int = MAX_LEN

    def check(self, known_chars=None) -> "Sampling":
        """``self`` if every option is in range, else :class:`~kmlp.config.ConfigError`.

        With ``known_chars`` (the vocabulary's characters), also refuse a prefix with others.
        """
        t = self.temperature
        if not (_is_number(t) and 0 < t <= MAX_FLOAT32):
            raise ConfigError(f"--temperature must be a positive number (at most {MAX_FLOAT32:.3g}), "
                              f"got {t!r}")
        check_integer(self.top_k, "--top-k", least=0, bits=32)  # (the sampler takes it as a tf.int32)
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p!r}")
        if not is_integer(self.max_len) or not 1 <= self.max_len <= MAX_NAME_LENGTH:
            raise ConfigError(f"--max-len must be an integer from 1 to {MAX_NAME_LENGTH}, got {self.max_len!r}")
        if not is_integer(self.min_len) or not 0 <= self.min_len <= self.max_len:
            raise ConfigError(f"--min-len must be an integer from 0 to --max-len ({self.max_len}), "
                              f"got {self.min_len!r}")
        if not isinstance(self.prefix, str):
            raise ConfigError(f"--prefix must be a string, got {self.prefix!r}")
        if len(self.prefix) >= self.max_len:
            raise ConfigError(f"--prefix {self.prefix!r} must be shorter than --max-len ({self.max_len})")
        if known_chars is not None:
            missing = "".join(dict.fromkeys(c for c in self.prefix if c not in set(known_chars)))
            if missing:
                raise ConfigError(f"--prefix {self.prefix!r} has characters outside the model's "
                                  f"vocabulary: {missing!r} (it knows {''.join(known_chars)!r})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def check_count(num) -> int:
    """``num`` if it is a positive integer (how many names to draw), else :class:`ConfigError`."""
    if not is_integer(num) or num < 1:
        raise ConfigError(f"-n/--num must be a positive integer, got {num!r}")
    return int(num)


def is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def pick_seed(seed: int | None) -> int:
    """``seed`` if valid (see :func:`kmlp.config.check_seed`), or a fresh random one when None."""
    from kmlp.config import check_seed

    if seed is None:
        return int(np.random.default_rng().integers(2**31))
    return check_seed(seed)
