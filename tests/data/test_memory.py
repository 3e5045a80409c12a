"""Memory of large data, on synthetic data: what reading minibatches out of a large split takes at
its height in TensorFlow's CPU allocator (docs/large-files.md, "Where the memory goes"). Holding the
examples whole, int32 [N, block_size + 1], would take 36 bytes per example at block_size 8; holding
the epoch's order as a permutation, 4 (8 while it is made)."""

import numpy as np
import pytest

from kmlp.data.pipeline import PERMUTED_EXAMPLES, NamesData, _example_order
from kmlp.data.vocab import Vocabulary

EXAMPLES = 2_000_000
BLOCK_SIZE = 8


@pytest.fixture(scope="module")
def data():
    return NamesData(vocab=Vocabulary(["a"]), block_size=BLOCK_SIZE,
                     streams={"train": np.ones(EXAMPLES + 1, np.uint8)})


def height(batches, count: int | None = None) -> int:
    """Bytes that making ``batches`` and reading ``count`` of them (None: all) took at their height
    in TensorFlow's CPU allocator, above what it held before."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except ValueError:
        pytest.skip("TensorFlow's CPU allocator keeps no statistics here")
    for i, (context, _) in enumerate(batches()):
        assert context.shape[1:] == (BLOCK_SIZE,)
        if i + 1 == count:
            break
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def test_a_large_split_is_shuffled_holding_nothing_per_example(data):
    """Above PERMUTED_EXAMPLES, each place's index is computed as it is read: what the shuffled
    minibatches take at their height is about a byte per example, the copy of the split's token
    stream that TensorFlow makes as the pass begins."""
    assert EXAMPLES > PERMUTED_EXAMPLES
    data.dataset("train", 1024)  # the token stream's tensor, made once for every pass
    assert height(lambda: data.dataset("train", 1024, seed=1), count=5) < 3 * EXAMPLES


def test_a_permuted_order_is_held_as_int32_indices():
    """Up to PERMUTED_EXAMPLES (here forced for a larger split), the epoch's order is int32 indices,
    made as a range and its shuffled copy: 8 bytes per example at once, which the allocator's
    statistics show (a little more with its rounding), so they would show a held order above too."""
    import tensorflow as tf

    def batches():
        order = _example_order(EXAMPLES, 1024, shuffle=True, repeat=True, seed=1, permuted_up_to=EXAMPLES)
        return order.map(lambda index: (tf.zeros([1024, BLOCK_SIZE]), index))

    assert 4 * EXAMPLES <= height(batches, count=5) < 12 * EXAMPLES


def test_a_pass_in_order_holds_neither_an_order_nor_the_examples(data):
    """What the evaluations read: minibatches cut in order (of a fixed sample's indices when one is
    asked for), so about a byte per example of the split at the height: the copy of its token stream
    that TensorFlow makes as the pass begins. An int32 index per example would take 4 more."""
    data.dataset("train", 1024)  # the token stream's tensor, made once for every pass
    assert height(lambda: data.dataset("train", 1024, shuffle=False)) < 3 * EXAMPLES
    assert height(lambda: data.dataset("train", 1024, shuffle=False, sample=1000)) < 3 * EXAMPLES
