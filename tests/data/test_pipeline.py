"""kmlp.data: vocabulary, examples, splits, token streams and the tf.data pipeline, on tiny synthetic
word lists (reading files: test_files.py)."""

import numpy as np
import pytest

from kmlp.data import splits
from kmlp.data.files import load_words
from kmlp.data.pipeline import NamesData, _example_order, build_dataset, make_dataset
from kmlp.data.splits import split_words
from kmlp.data.vocab import Vocabulary
from kmlp.errors import DataError


def test_emma_contexts_match_the_lecture():
    vocab = Vocabulary.from_words(["emma"])
    X, y = build_dataset(["emma"], vocab, block_size=3)
    shown = [("".join(vocab.token(i) for i in ctx), vocab.token(t)) for ctx, t in zip(X, y)]
    assert shown == [("...", "e"), ("..e", "m"), (".em", "m"), ("emm", "a"), ("mma", ".")]
    assert X.dtype == np.int32 and y.dtype == np.int32 and X.shape == (5, 3) and y.shape == (5,)


def test_examples_per_word_and_block_sizes(tiny_words):
    vocab = Vocabulary.from_words(tiny_words)
    for block_size in (1, 2, 5, 8):
        X, y = build_dataset(tiny_words, vocab, block_size)
        assert X.shape == (sum(len(w) + 1 for w in tiny_words), block_size)
        # The windows rebuild each word: the targets are the word's characters, then the boundary.
        assert vocab.decode(y[: len(tiny_words[0]) + 1]) == tiny_words[0]
        assert (X[0] == 0).all()


def test_vocabulary_round_trip(tiny_words):
    vocab = Vocabulary.from_words(tiny_words)
    assert len(vocab) == len(set("".join(tiny_words))) + 1
    for w in tiny_words:
        assert vocab.decode(vocab.encode(w)) == w
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert vocab.decode(vocab.encode("ava") + [0] + vocab.encode("mia")) == "ava"  # 0 ends a name


def test_literal_dot_is_not_the_boundary():
    vocab = Vocabulary.from_words(["a.b", "ab"])
    dot = vocab.encode(".")[0]
    assert dot != 0
    X, y = build_dataset(["a.b"], vocab, block_size=2)
    assert list(y) == [vocab.stoi["a"], dot, vocab.stoi["b"], 0]
    assert vocab.decode([vocab.stoi["a"], dot, vocab.stoi["b"], 0]) == "a.b"


def test_unknown_characters_are_named():
    vocab = Vocabulary.from_words(["abc"])
    with pytest.raises(KeyError, match="'xz'"):
        vocab.encode("axbz")


def test_split_is_deterministic_disjoint_and_80_10_10():
    words = [f"name{i}" for i in range(1000)]
    a, b = split_words(words, seed=7), split_words(words, seed=7)
    assert a == b
    assert split_words(words, seed=8) != a
    assert [len(a[s]) for s in ("train", "dev", "test")] == [800, 100, 100]
    sets = [set(a[s]) for s in ("train", "dev", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(words)


def test_repeated_names_stay_in_one_split():
    words = [f"n{i}" for i in range(50)] + ["n3"] * 5
    splits = split_words(words, seed=1)
    holding = [s for s in splits if "n3" in splits[s]]
    assert len(holding) == 1 and splits[holding[0]].count("n3") == 6
    assert sum(len(v) for v in splits.values()) == len(words)


def test_names_data_summary_and_examples(tiny_names_file):
    data = NamesData.from_file(tiny_names_file, block_size=3, split_seed=1)
    assert sum(data.num_names(s) for s in ("train", "dev", "test")) == 26
    assert data.summary() == ("vocabulary 22 tokens; train 21 names / 141 examples; dev 2 names / 11 "
                              "examples; test 3 names / 23 examples")
    for split in ("train", "dev", "test"):
        X, y = data.examples(split)
        assert X.shape[0] == y.shape[0] == data.num_examples(split) == sum(len(w) + 1 for w in data.words[split])
        assert data.num_names(split) == len(data.words[split])


def test_train_pipeline_shuffles_each_epoch_and_covers_the_split():
    X = np.arange(40, dtype=np.int32).reshape(20, 2)
    y = np.arange(20, dtype=np.int32)
    ds = make_dataset(X, y, batch_size=5, shuffle=True, repeat=True, seed=3)
    batches = [b for _, b in ds.take(8)]
    epoch1 = np.concatenate([b.numpy() for b in batches[:4]])
    epoch2 = np.concatenate([b.numpy() for b in batches[4:]])
    assert sorted(epoch1) == sorted(epoch2) == list(range(20))  # each epoch sees every example once
    assert list(epoch1) != list(epoch2)                           # in a new order
    x0, y0 = next(iter(ds))
    np.testing.assert_array_equal(x0.numpy(), X[y0.numpy()])       # contexts stay with their targets
    again = [b.numpy() for _, b in make_dataset(X, y, 5, seed=3).take(8)]
    assert all((p == q).all() for p, q in zip(again, [b.numpy() for b in batches]))  # same seed, same order


def test_chunked_pipeline_shapes():
    X = np.zeros((100, 3), np.int32)
    y = np.zeros(100, np.int32)
    x, t = next(iter(make_dataset(X, y, batch_size=8, steps_per_call=4, seed=0)))
    assert x.shape == (4, 8, 3) and t.shape == (4, 8)


def test_eval_pipeline_is_one_ordered_pass(tiny_names_file):
    data = NamesData.from_file(tiny_names_file, block_size=3, split_seed=1)
    for split, shuffle in (("dev", None), ("train", False)):
        ys = np.concatenate([t.numpy() for _, t in data.dataset(split, 4, shuffle=shuffle)])
        np.testing.assert_array_equal(ys, build_dataset(data.words[split], data.vocab, 3)[1])


# ---------------------------------------------------------------------------------------------
# Token streams: the splits of split_words, the examples of build_dataset, the minibatches of before


ODD_WORDS = ["emma", "a", "st.john", "zoë", "mary ann", "emma", "o'brien", "x", "emma", "Ünal", "a",
             "anne-marie", "bo", "li", "r2d2", "a", "jo"]


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 8])
def test_windows_cut_from_the_stream_are_build_datasets_examples(block_size):
    data = NamesData.from_words(ODD_WORDS, block_size=block_size, split_seed=3)
    assert data.vocab == Vocabulary.from_words(ODD_WORDS)
    splits = split_words(ODD_WORDS, seed=3)
    for split in ("train", "dev", "test"):
        assert data.words[split] == splits[split]
        X, y = data.examples(split)
        ref_X, ref_y = build_dataset(splits[split], data.vocab, block_size)
        np.testing.assert_array_equal(X, ref_X)
        np.testing.assert_array_equal(y, ref_y)
        assert X.dtype == y.dtype == np.int32 and data.streams[split].dtype == np.uint8


def test_streams_take_a_byte_per_character_and_two_beyond_256_tokens():
    data = NamesData.from_words(ODD_WORDS, block_size=3)
    for split, stream in data.streams.items():
        assert stream.dtype == np.uint8 and stream.nbytes == 1 + sum(len(w) + 1 for w in data.words[split])
    many = [chr(0x4E00 + i) + chr(0x4E00 + (7 * i) % 300) for i in range(300)]  # 300 characters
    data = NamesData.from_words(many, block_size=2)
    assert len(data.vocab) == 301 and data.streams["train"].dtype == np.uint16
    X, y = data.examples("dev")
    np.testing.assert_array_equal(X, build_dataset(data.words["dev"], data.vocab, 2)[0])
    assert y.max() > 255


def test_splits_match_split_words_with_many_repeats():
    rng = np.random.default_rng(0)
    words = [f"n{i}" for i in rng.integers(0, 60, 500)] + ["", "n1"]  # repeats everywhere, an empty name
    data = NamesData.from_words(words, block_size=2, split_seed=9)
    splits = split_words(words, seed=9)
    assert all(data.words[s] == splits[s] for s in ("train", "dev", "test"))


def test_a_hash_collision_is_noticed_and_the_names_still_told_apart(monkeypatch):
    real = splits._hash_names

    def colliding_first(names, order, reach, salt):
        return np.zeros(len(names), np.uint64) if salt == 0 else real(names, order, reach, salt)

    monkeypatch.setattr(splits, "_hash_names", colliding_first)
    data = NamesData.from_words(ODD_WORDS, block_size=3, split_seed=3)
    expected = split_words(ODD_WORDS, seed=3)
    assert all(data.words[s] == expected[s] for s in ("train", "dev", "test"))


def test_shuffled_minibatches_are_those_of_before():
    """The first minibatches that the word lists and [N, block_size] arrays gave, for these seeds."""
    from conftest import TINY_WORDS

    data = NamesData.from_words(TINY_WORDS, block_size=3, split_seed=1)
    assert (data.words["dev"], data.words["test"]) == (["aria", "chloe"], ["camila", "amelia", "scarlett"])
    targets = [t.numpy().tolist() for _, t in data.dataset("train", 8, seed=5).take(2)]
    assert targets == [[1, 19, 8, 15, 10, 19, 5, 16], [1, 5, 0, 16, 12, 14, 20, 20]]
    x, t = next(iter(data.dataset("train", 4, seed=5, steps_per_call=2, start_step=3)))
    assert t.numpy().tolist() == [[12, 14, 20, 20], [8, 9, 0, 5]]
    assert x.numpy()[0].tolist() == [[0, 14, 5], [5, 10, 13], [0, 10, 1], [19, 5, 10]]
    X, y = data.examples("train")
    ours = next(iter(data.dataset("train", 8, seed=5)))
    arrays = next(iter(make_dataset(X, y, 8, seed=5)))
    for a, b in zip(ours, arrays):
        np.testing.assert_array_equal(a, b)


def test_the_order_follows_the_runs_seed_not_the_split_seed():
    data = NamesData.from_words(ODD_WORDS * 3, block_size=3, split_seed=7)
    assert data.split_seed == 7 and not hasattr(data, "seed")

    def first_targets(**kwargs):
        return next(iter(data.dataset("train", 16, **kwargs)))[1].numpy().tolist()

    assert first_targets() == first_targets(seed=42) != first_targets(seed=7)


def test_a_fixed_sample_of_examples_for_the_train_loss(tiny_names_file):
    data = NamesData.from_file(tiny_names_file, block_size=3, split_seed=1)
    n = data.num_examples("train")
    chosen = data.sample_examples("train", 50)
    assert len(chosen) == 50 and (np.diff(chosen) >= 0).all() and 0 <= chosen[0] and chosen[-1] < n
    assert len(set(chosen.tolist())) > 40  # drawn across the split
    np.testing.assert_array_equal(chosen, data.sample_examples("train", 50))  # fixed
    X, y = data.examples("train")
    batches = list(data.dataset("train", 16, shuffle=False, sample=50))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X[chosen])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[chosen])
    assert data.sample_examples("train", n) is None  # a split no larger than the sample: all of it
    whole = np.concatenate([t for _, t in data.dataset("train", 16, shuffle=False, sample=n)])
    np.testing.assert_array_equal(whole, y)
    with pytest.raises(ValueError, match="unshuffled"):
        data.dataset("train", 16, sample=50)


def test_names_are_decoded_only_when_asked_and_only_kept_splits_remain():
    data = NamesData.from_words(ODD_WORDS, block_size=3)
    assert data.words._decoded == {}  # nothing decoded for training
    kept = data.only("train", "dev")
    assert list(kept.streams) == list(kept.words) == ["train", "dev"]
    assert "test" not in kept.summary()
    with pytest.raises(KeyError):
        kept.words["test"]
    assert kept.words["dev"] == data.words["dev"] and kept.digest("train") == data.digest("train")
    assert data.digest("train") != NamesData.from_words(ODD_WORDS, block_size=3, split_seed=5).digest("train")


def test_a_given_vocabulary_must_hold_every_character(tmp_path):
    vocab = Vocabulary.from_words(["abc"])
    with pytest.raises(KeyError, match="'xz'"):
        NamesData.from_words(["abc", "axbz"] * 8, vocab=vocab)
    path = tmp_path / "names.txt"
    path.write_text("abc\n\nbca\ncab\nzab\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:5: name 'zab' has characters .* lacks: 'z'$"):
        NamesData.from_file(path, vocab=vocab)


@pytest.mark.integration
def test_names_txt_streams_give_the_lecture_splits_and_examples(names_path):
    data = NamesData.from_file(names_path, block_size=3)
    words = load_words(names_path)
    splits = split_words(words, seed=42)
    assert len(data.vocab) == 27 and data.vocab == Vocabulary.from_words(words)
    for split in ("train", "dev", "test"):
        assert data.words[split] == splits[split]
        X, y = data.examples(split)
        ref_X, ref_y = build_dataset(splits[split], data.vocab, 3)
        np.testing.assert_array_equal(X, ref_X)
        np.testing.assert_array_equal(y, ref_y)
    assert data.streams["train"].nbytes == data.num_examples("train") + 1 == 182_719


def test_a_large_splits_order_is_computed_place_by_place_and_is_still_a_permutation():
    """Above ``permuted_up_to`` examples, no permutation is held: each epoch's order is still every
    index once (the last partial batch dropped), new each epoch, the same for the same seed, and a
    resumed run's start_step skips exactly the minibatches an uninterrupted run saw."""
    def order(**kwargs):
        args = {"shuffle": True, "repeat": True, "seed": 3, "permuted_up_to": 0, **kwargs}
        return [b.numpy() for b in _example_order(23, 5, **args).take(8)]

    batches = order()
    epoch1, epoch2 = np.concatenate(batches[:4]), np.concatenate(batches[4:])
    assert all(b.shape == (5,) for b in batches) and len(set(epoch1)) == len(set(epoch2)) == 20
    assert set(epoch1) <= set(range(23)) and set(epoch2) <= set(range(23)) and list(epoch1) != list(epoch2)
    assert all((p == q).all() for p, q in zip(order(), batches))
    assert any((p != q).any() for p, q in zip(order(seed=4), batches))
    assert all((p == q).all() for p, q in zip(order(start_step=3), batches[3:]))
    chunk = next(iter(_example_order(23, 5, True, True, seed=3, steps_per_call=2, permuted_up_to=0)))
    np.testing.assert_array_equal(chunk, np.stack(batches[:2]))
    assert [b.tolist() for b in order(permuted_up_to=23)] != [b.tolist() for b in batches]  # the other order
