"""A trained model's weights carried into a model of the same shape whose vocabulary is the trained
one's followed by new characters (for fine-tuning on a list that has characters the first did not).

Every weight is copied; only the two layers sized by the vocabulary grow:

- ``embedding``: a new character's row starts at the mean of the old rows (a character the model
  knows nothing about), with a little noise so that two new characters can move apart;
- ``logits``: a new character's unit starts with zero weights and a bias that gives it, on average
  over the contexts given, a share :data:`NEW_CHARACTER_SHARE` of the probability. Its logit does not
  depend on the context, and the old units' logits are unchanged, so on contexts of old characters
  the old characters' probabilities, renormalised among themselves, are exactly the trained model's.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import tensorflow as tf

NEW_CHARACTER_SHARE = 0.01  # each new character's starting probability: small, so old predictions hold,
                            # yet large enough that its gradient is not negligible
NEW_ROW_NOISE = 0.1  # a new embedding row's noise, as a fraction of the old rows' spread
GROWN_LAYERS = ("embedding", "logits")  # the layers sized by the vocabulary


class CannotExtend(ValueError):
    """The trained model is not one whose vocabulary kmlp knows how to extend."""


def weights_sha256(model: keras.Model) -> str:
    """SHA-256 of a model's weights (their shapes and values, in order): which weights a run started from."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value), dtype=np.float32)
        digest.update(repr(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def copy_extended(source: keras.Model, target: keras.Model, contexts, seed: int = 0,
                  share: float = NEW_CHARACTER_SHARE) -> int:
    """Copy ``source``'s weights into ``target``, layer by layer by name, growing the vocabulary's two
    layers as the module says; ``contexts`` ([N, block_size] indices of old characters) are where a
    new character's share is set. Returns how many tokens were added; :class:`CannotExtend` if the
    two models differ other than in the vocabulary."""
    old_size, new_size = _vocab_size(source), _vocab_size(target)
    if new_size < old_size:
        raise CannotExtend(f"its vocabulary of {old_size} tokens is larger than the new one of {new_size}")
    rng = np.random.default_rng(seed)
    log_normaliser = float(np.mean(tf.reduce_logsumexp(source(contexts, training=False), axis=-1)))
    for layer in target.layers:
        wanted = layer.get_weights()
        if not wanted:
            continue
        try:
            given = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise CannotExtend(f"it has no layer {layer.name!r}") from None
        if layer.name == "embedding":
            given = [_new_rows(given[0], new_size, rng)]
        elif layer.name == "logits":
            added = new_size - old_size
            bias = np.log(share) + log_normaliser  # (a zero-weight unit's logit is its bias)
            given = [np.pad(given[0], ((0, 0), (0, added))), np.concatenate([given[1], np.full(added, bias)])]
        shapes = [w.shape for w in given], [w.shape for w in wanted]
        if shapes[0] != shapes[1]:
            raise CannotExtend(f"its layer {layer.name!r} holds weights of shapes {shapes[0]}, "
                               f"the model to train needs {shapes[1]}")
        layer.set_weights([w.astype(t.dtype) for w, t in zip(given, wanted)])
    return new_size - old_size


def _vocab_size(model: keras.Model) -> int:
    names = {layer.name for layer in model.layers}
    missing = [name for name in GROWN_LAYERS if name not in names]
    if missing:
        raise CannotExtend(f"its model has no {' or '.join(map(repr, missing))} layer (not kmlp's MLP)")
    return int(model.get_layer("embedding").get_weights()[0].shape[0])


def _new_rows(table: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    added = rows - len(table)
    noise = rng.normal(0.0, 1.0, (added, table.shape[1])) * table.std(axis=0) * NEW_ROW_NOISE
    return np.concatenate([table, table.mean(axis=0) + noise])
