"""kmlp.sample and the sample/score commands, on a tiny model trained for a few steps."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli, train_tiny_run

from kmlp.cli import main
from kmlp.data import build_dataset
from kmlp.sample import NameModel, keep_top_k, sample_names, score_names, where_found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def lm(run):
    return NameModel(run.model, run.vocab)


def greedy_by_hand(model, vocab, block_size, prefix="", max_len=50):
    """Always the likeliest next character, one model call per character."""
    context = [0] * block_size + vocab.encode(prefix)
    out = []
    for _ in range(max_len):
        logits = np.asarray(model(np.array([context[-block_size:]], np.int32), training=False))[0]
        nxt = int(np.argmax(logits))
        if nxt == 0:
            break
        out.append(nxt)
        context.append(nxt)
    return prefix + vocab.decode(out)


def test_same_seed_same_names_and_another_seed_others(lm):
    first = lm.sample(40, seed=7)
    assert first == lm.sample(40, seed=7)
    assert first != lm.sample(40, seed=8)
    assert len(first) == 40 and all(set(n) <= set(lm.vocab.chars) for n in first)


def test_sample_names_keeps_the_call_train_makes(run):
    names = sample_names(run.model, run.vocab, 5, seed=3)
    assert names == NameModel(run.model, run.vocab).sample(5, seed=3)
    assert len(names) == 5 and all(isinstance(n, str) for n in names)


def test_every_name_starts_with_the_prefix(lm):
    names = lm.sample(50, seed=1, prefix="el")
    assert all(n.startswith("el") for n in names)
    assert len(set(names)) > 1  # the rest is drawn, not fixed


def test_prefix_outside_the_vocabulary_is_refused(lm):
    with pytest.raises(ValueError, match="'ë'"):
        lm.sample(3, seed=1, prefix="zoë")
    with pytest.raises(ValueError, match=r"'\.'"):
        lm.sample(3, seed=1, prefix="a.")


def test_top_k_1_is_the_greedy_name_for_every_seed(run, lm):
    expected = greedy_by_hand(run.model, run.vocab, run.config.block_size, prefix="a")
    for seed in (1, 2):
        assert set(lm.sample(20, seed=seed, top_k=1, prefix="a")) == {expected}


def test_keep_top_k_leaves_the_k_largest():
    logits = tf.constant([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 3.0, 2.0]])
    kept = keep_top_k(logits, tf.constant(2)).numpy()
    np.testing.assert_array_equal(np.isfinite(kept), [[False, True, True, False], [True, True, False, False]])
    np.testing.assert_array_equal(keep_top_k(logits, tf.constant(0)), logits)
    np.testing.assert_array_equal(keep_top_k(logits, tf.constant(9)), logits)


def test_lower_temperature_gives_likelier_names(lm):
    def mean_log_lik(temperature):
        names = lm.sample(400, seed=5, temperature=temperature)
        return np.mean([total / tokens for total, tokens in lm.score(names)])

    cold, warm, hot = mean_log_lik(0.5), mean_log_lik(1.0), mean_log_lik(2.0)
    assert cold > warm > hot
    greedy = lm.sample(1, seed=0, top_k=1)[0]
    assert set(lm.sample(20, seed=5, temperature=1e-3)) == {greedy}  # near zero: the likeliest


def test_max_len_cuts_long_names(lm):
    names = lm.sample(200, seed=2, temperature=3.0, max_len=4)
    assert max(map(len, names)) == 4


def test_score_is_the_sum_of_log_probabilities_by_hand(run, lm):
    names = ["emma", "ava", "zzz", "y"]
    for name, (total, tokens) in zip(names, lm.score(names)):
        X, y = build_dataset([name], run.vocab, run.config.block_size)
        logits = np.asarray(run.model(X, training=False), np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        assert tokens == len(name) + 1 == len(y)
        assert total == pytest.approx(log_probs[np.arange(len(y)), y].sum(), abs=1e-4)
    assert score_names(run.model, run.vocab, ["emma"]) == lm.score(["emma"])


def test_score_of_unknown_characters_is_minus_infinity(lm):
    (bad, _), (dot, _), (empty, tokens) = lm.score(["zoë", "a.b", ""])
    assert bad == dot == -np.inf
    assert np.isfinite(empty) and tokens == 1  # the end token alone


def test_contexts_are_left_padded_and_keep_the_last_characters(lm):
    ids = lm.context_ids(tf.constant(["", "e", "emma", "..e"])).numpy()
    e, m, a = lm.vocab.encode("ema")
    np.testing.assert_array_equal(ids, [[0, 0, 0], [0, 0, e], [m, m, a], [0, 0, e]])


def test_where_found_marks_splits_and_new():
    words = {"train": ["emma", "ava"], "dev": ["mia"], "test": ["zoe"]}
    assert where_found(["ava", "mia", "zoe", "bob"], words) == ["train", "dev", "test", "new"]


def test_sample_command_marks_names_and_reports_the_new_share(run, capsys):
    assert main(["sample", str(run.path), "-n", "30", "--seed", "4", "--prefix", "a", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [entry["name"] for entry in out["names"]]
    assert names == NameModel(run.model, run.vocab).sample(30, seed=4, prefix="a")
    assert {entry["found_in"] for entry in out["names"]} <= {"train", "dev", "test", "new"}
    new = sum(entry["found_in"] == "new" for entry in out["names"])
    assert out["new_share"] == pytest.approx(new / 30)
    assert main(["sample", str(run.path), "-n", "5", "--seed", "4", "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[-1].startswith("new: ")


def test_sample_without_the_data_file_still_samples(run, tmp_path, capsys):
    moved = shutil.copytree(run.path, tmp_path / "run")
    info = json.loads((moved / "config.json").read_text())
    info["data"] = str(tmp_path / "gone.txt")
    (moved / "config.json").write_text(json.dumps(info))
    assert main(["sample", str(moved), "-n", "3", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    assert "marks unavailable" in captured.err and "gone.txt" in captured.err


def test_score_command_text_and_json(run, lm, capsys):
    assert main(["score", str(run.path), "emma", "ava", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    (emma, emma_tokens), _ = lm.score(["emma", "ava"])
    assert rows[0]["name"] == "emma" and rows[0]["tokens"] == emma_tokens == 5
    assert rows[0]["log_likelihood"] == pytest.approx(emma)
    assert rows[0]["per_char"] == pytest.approx(emma / 5)
    assert main(["score", str(run.path), "emma"]) == 0
    assert "emma" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(run, capsys):
    assert main(["sample", str(run.path), "--prefix", "zoë"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kmlp: error: --prefix 'zoë'") and "'ë'" in err
    result = run_cli("score", run.path, "emma", "chloë")  # as a user sees it: no traceback, no noise
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kmlp: error:")
    assert "'chloë'" in result.stderr
