"""kmlp.data: vocabulary, examples, splits and the tf.data pipeline, on tiny synthetic word lists."""

import numpy as np
import pytest

from kmlp.data import NamesData, Vocabulary, build_dataset, load_words, make_dataset, split_words


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


def test_names_txt_vocabulary_is_27(names_path):
    assert len(Vocabulary.from_words(load_words(names_path))) == 27


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


def test_names_data_summary_and_arrays(tiny_names_file):
    data = NamesData.from_file(tiny_names_file, block_size=3, seed=1)
    assert sum(len(data.words[s]) for s in ("train", "dev", "test")) == 26
    assert "train" in data.summary() and "examples" in data.summary()
    for split in ("train", "dev", "test"):
        X, y = data.arrays[split]
        assert X.shape[0] == y.shape[0] == sum(len(w) + 1 for w in data.words[split])


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
    data = NamesData.from_file(tiny_names_file, block_size=3, seed=1)
    for split, shuffle in (("dev", None), ("train", False)):
        ys = np.concatenate([t.numpy() for _, t in data.dataset(split, 4, shuffle=shuffle)])
        np.testing.assert_array_equal(ys, data.arrays[split][1])


class _FakeResponse:
    def __init__(self, body):
        self.body = body

    def read(self):
        return self.body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_is_verified_before_it_is_kept(tmp_path, monkeypatch):
    import hashlib
    import urllib.request

    from kmlp import data

    body = b"emma\nava\n"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(body))
    dest = tmp_path / "data" / "names.txt"
    with pytest.raises(data.DataError, match="does not match"):
        data.download_names(dest, url="https://example.invalid/names.txt", sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.iterdir())  # nothing half-written is left
    good = hashlib.sha256(body).hexdigest()
    assert data.download_names(dest, url="https://example.invalid/names.txt", sha256=good) == dest
    assert dest.read_bytes() == body


def test_offline_download_says_how_to_provide_the_file(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from kmlp import data

    def offline(url, timeout):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(data.DataError) as err:
        data.download_names(tmp_path / "names.txt")
    message = str(err.value)
    assert "\n" not in message and "--data PATH" in message and data.NAMES_URL in message


def test_default_data_path_prefers_data_dir_then_verified_copy(tmp_path, monkeypatch, names_path):
    from kmlp import data

    project = tmp_path / "project"
    monkeypatch.setattr(data, "PROJECT_ROOT", project)
    monkeypatch.setattr(data, "DEFAULT_DATA", project / "data" / "names.txt")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "names.txt").write_bytes(names_path.read_bytes())
    assert data.resolve_data_path() == tmp_path / "shared" / "data" / "names.txt"
    (project / "data").mkdir(parents=True)
    (project / "data" / "names.txt").write_text("emma\n")
    assert data.resolve_data_path() == project / "data" / "names.txt"
    assert data.resolve_data_path("elsewhere.txt") == data.Path("elsewhere.txt")
