"""kmlp.models.extend: a trained model's weights in a model whose vocabulary has new characters."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmlp.models.extend import NEW_CHARACTER_SHARE, CannotExtend, copy_extended, weights_sha256
from kmlp.models.mlp import build_model

SHAPE = dict(block_size=3, n_embd=4, n_hidden=16, n_layers=2, norm="batch", dropout=0.1)


def trained(vocab_size=6, seed=1, **shape):
    """A small model whose weights (batch norm's statistics included) are all set at random, away
    from their initial values, as training would leave them."""
    model = build_model(vocab_size=vocab_size, seed=seed, **{**SHAPE, **shape})
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in v.path else rng.normal(0, 0.5, w.shape)
                       for v, w in zip(model.weights, model.get_weights())])
    return model


# The lecture's part 5 model, tiny: two levels fusing two positions each.
HIERARCHICAL = dict(arch="hierarchical", block_size=4, n_layers=2, norm="batch", init="fan_in", dropout=0.0)


def old_contexts(vocab_size, n=200, seed=2, block_size=3):
    return np.random.default_rng(seed).integers(0, vocab_size, (n, block_size)).astype("int32")


@pytest.mark.parametrize("shape", [{}, HIERARCHICAL], ids=["mlp", "hierarchical"])
def test_old_predictions_renormalised_over_the_old_characters_are_unchanged(shape):
    source = trained(**shape)
    target = build_model(vocab_size=9, seed=5, **{**SHAPE, **shape})
    x = old_contexts(6, block_size={**SHAPE, **shape}["block_size"])
    assert copy_extended(source, target, x) == 3
    before = keras.ops.softmax(source(x, training=False)).numpy()
    after = keras.ops.softmax(target(x, training=False)).numpy()
    renormalised = after[:, :6] / after[:, :6].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(renormalised, before, atol=1e-5)
    # Each new character starts with a small share: NEW_CHARACTER_SHARE on average over the contexts.
    shares = after[:, 6:] / after[:, :6].sum(axis=1, keepdims=True)
    assert np.exp(np.log(shares).mean()) == pytest.approx(NEW_CHARACTER_SHARE, rel=1e-3)
    assert (after[:, 6:] < 0.05).all()


def test_new_characters_are_learnable_and_sit_at_the_end():
    source, target = trained(), build_model(vocab_size=8, seed=5, **SHAPE)
    copy_extended(source, target, old_contexts(6))
    embedding = target.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(embedding[:6], source.get_layer("embedding").get_weights()[0])
    assert not np.allclose(embedding[6], embedding[7])  # two new characters can move apart
    with tf.GradientTape() as tape:
        logits = target(np.array([[0, 6, 7]], "int32"), training=False)
        loss = keras.losses.sparse_categorical_crossentropy(np.array([7]), logits, from_logits=True)
    kernel = target.get_layer("logits").kernel
    grad = tape.gradient(loss, [kernel, target.get_layer("embedding").embeddings])
    assert np.abs(keras.ops.convert_to_numpy(grad[0])[:, 7]).sum() > 0  # the new output unit learns
    assert np.abs(keras.ops.convert_to_numpy(tf.convert_to_tensor(grad[1]))[6:]).sum() > 0  # and the new rows


def test_the_same_vocabulary_copies_the_model_exactly():
    source, target = trained(), build_model(vocab_size=6, seed=5, **SHAPE)
    assert copy_extended(source, target, old_contexts(6)) == 0
    x = old_contexts(6, seed=9)
    np.testing.assert_allclose(target(x, training=False), source(x, training=False), atol=1e-6)
    assert weights_sha256(target) == weights_sha256(source)


def test_a_model_of_another_shape_or_kind_cannot_be_extended():
    source = trained()
    with pytest.raises(CannotExtend, match="layer 'hidden_1' holds weights of shapes .*needs"):
        copy_extended(source, build_model(vocab_size=7, seed=5, **{**SHAPE, "n_hidden": 8}), old_contexts(6))
    with pytest.raises(CannotExtend, match="no layer 'hidden_3'"):
        copy_extended(source, build_model(vocab_size=7, seed=5, **{**SHAPE, "n_layers": 3}), old_contexts(6))
    with pytest.raises(CannotExtend, match="larger than the new one"):
        copy_extended(source, build_model(vocab_size=5, seed=5, **SHAPE), old_contexts(5))
    inputs = keras.Input((3,), dtype="int32")
    other = keras.Model(inputs, keras.layers.Dense(6, name="out")(keras.ops.cast(inputs, "float32")))
    with pytest.raises(CannotExtend, match="no 'embedding' or 'logits' layer"):
        copy_extended(other, build_model(vocab_size=7, seed=5, **SHAPE), old_contexts(6))


def test_the_weights_hash_follows_the_weights():
    a, b = trained(seed=1), trained(seed=2)
    assert weights_sha256(a) == weights_sha256(a) != weights_sha256(b)
