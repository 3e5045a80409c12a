"""kmlp.generation.drawing: the numpy rule for drawing a character, and the TensorFlow sampler's copy of it."""

import numpy as np
import pytest
import tensorflow as tf

from kmlp.errors import ConfigError
from kmlp.generation import drawing
from kmlp.generation.sample import draw_tokens, name_keys, uniforms


def test_mix32_is_lowbias32():
    # reference values of lowbias32 (x -> x ^ x>>16, * 0x7feb352d, ^ >>15, * 0x846ca68b, ^ >>16)
    def by_hand(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 12345, 2**31, 2**32 - 1]
    assert drawing.mix32(np.array(values, np.uint32)).tolist() == [by_hand(v) for v in values]


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1, 2**40 + 3, -5])
def test_tensorflow_keys_and_uniforms_are_the_numpy_ones_bit_for_bit(seed):
    rows = np.arange(0, 5000, 7)
    keys = drawing.name_key(seed, rows)
    tf_keys = name_keys(tf.constant(seed, tf.int64), tf.constant(rows, tf.int64)).numpy()
    np.testing.assert_array_equal(tf_keys, keys)
    for step in (0, 1, 17, 999):
        np.testing.assert_array_equal(uniforms(tf.constant(tf_keys), tf.constant(step)).numpy(),
                                      drawing.uniform(keys, step))


def test_uniforms_are_uniform_and_below_one():
    u = drawing.uniform(drawing.name_key(3, np.arange(200_000)), 5)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() <= 1 - 2**-23
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = ((counts - 10_000) ** 2 / 10_000).sum()
    assert chi2 < 60  # 19 degrees of freedom: 60 is far in the tail
    other_step = drawing.uniform(drawing.name_key(3, np.arange(200_000)), 6)
    assert abs(np.corrcoef(u, other_step)[0, 1]) < 0.01


@pytest.mark.parametrize("temperature, top_k, top_p, end_allowed", [
    (1.0, 0, 1.0, True), (0.7, 5, 1.0, True), (1.3, 0, 0.8, False), (1e-38, 0, 1.0, True),
    (2.0, 3, 0.5, True), (1.0, 1, 1.0, False), (0.9, 0, 1e-6, True)])
def test_tensorflow_draws_the_tokens_the_numpy_rule_draws(temperature, top_k, top_p, end_allowed):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(5000, 27)) * 3).astype(np.float32)
    u = drawing.uniform(drawing.name_key(1, np.arange(5000)), 0)
    expected = drawing.next_tokens(logits, u, temperature, top_k, top_p, end_allowed)
    got = draw_tokens(tf.constant(logits), tf.constant(u), tf.constant(temperature, tf.float32),
                      tf.constant(top_k), tf.constant(top_p, tf.float32), tf.constant(end_allowed)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert expected.min() >= (0 if end_allowed else 1) and expected.max() < 27


def test_the_draw_follows_the_probabilities():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
    u = drawing.uniform(drawing.name_key(9, np.arange(40_000)), 0)
    tokens = drawing.next_tokens(np.repeat(logits, len(u), axis=0), u)
    np.testing.assert_allclose(np.bincount(tokens, minlength=4) / len(u), [0.1, 0.2, 0.3, 0.4], atol=0.01)
    nucleus = drawing.next_tokens(np.repeat(logits, len(u), axis=0), u, top_p=0.6)  # 0.4 + 0.3 >= 0.6
    assert set(nucleus) == {2, 3}
    top2 = drawing.next_tokens(np.repeat(logits, len(u), axis=0), u, top_k=2)
    np.testing.assert_allclose(np.bincount(top2, minlength=4)[2:] / len(u), [3 / 7, 4 / 7], atol=0.01)
    assert set(drawing.next_tokens(np.repeat(logits, 100, axis=0), u[:100], end_allowed=False)) <= {1, 2, 3}


def test_sampling_check_and_seed_rules():
    assert drawing.Sampling(prefix="ab", min_len=3).check("abc").prefix == "ab"
    with pytest.raises(ConfigError, match="--prefix 'zoë' has characters outside the model's vocabulary: 'ë'"):
        drawing.Sampling(prefix="zoë").check("oz")
    with pytest.raises(ConfigError, match="--top-k"):
        drawing.Sampling(top_k=True).check()
    assert drawing.pick_seed(7) == 7 and 0 <= drawing.pick_seed(None) < 2**31
    with pytest.raises(ConfigError, match="--seed"):
        drawing.pick_seed(2**32)
    with pytest.raises(ConfigError, match="-n/--num must be a positive integer, got 2.5"):
        drawing.check_count(2.5)
