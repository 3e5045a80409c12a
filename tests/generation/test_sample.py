"""kmlp.generation.sample and the sample/score commands, on a tiny model trained for a few steps."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import copy_run, run_cli

from kmlp.cli.main import main
from kmlp.data.pipeline import build_dataset
from kmlp.errors import ConfigError
from kmlp.generation import sample as sampling
from kmlp.generation.sample import NameModel, keep_top_k, sample_names, score_names, where_found
from kmlp.runs.rundir import load_run


@pytest.fixture(scope="module")
def run(tiny_run_dir, tmp_path_factory):
    return load_run(copy_run(tiny_run_dir, tmp_path_factory.mktemp("sample") / "run"))


@pytest.fixture(scope="module")
def lm(run):
    return NameModel(run.model, run.vocab)


def greedy_by_hand(model, vocab, block_size, prefix="", max_len=50):
    """Always the likeliest next character, one model call per character; at most max_len in all."""
    context = [0] * block_size + vocab.encode(prefix)
    out = []
    for _ in range(max_len - len(prefix)):
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
    prefixed = lm.sample(200, seed=2, temperature=3.0, prefix="el", max_len=4)  # the prefix counts
    assert max(map(len, prefixed)) == 4 and all(n.startswith("el") for n in prefixed)


def test_a_tiny_temperature_gives_the_greedy_name(run, lm):
    # 1e-38 used to overflow the logits to inf and draw an index past the vocabulary
    expected = greedy_by_hand(run.model, run.vocab, run.config.block_size)
    for temperature in (1e-38, 1e-45, 1e-300):
        assert set(lm.sample(20, seed=3, temperature=temperature)) == {expected}


@pytest.mark.parametrize("options, message", [
    ({"seed": 1180591620717411303424}, "--seed must be an integer from 0 to 4294967295"),
    ({"seed": -1}, "--seed must be an integer"),
    ({"temperature": float("inf")}, "--temperature must be a positive number"),
    ({"temperature": float("nan")}, "--temperature"),
    ({"temperature": 1e39}, "--temperature"),   # finite in Python, inf as float32
    ({"temperature": 0.0}, "--temperature"),
    ({"top_k": -1}, "--top-k must be 0"),
    ({"top_k": 2**31}, r"--top-k must be below 2\*\*31"),
    ({"top_p": 1.5}, r"--top-p must be in \(0, 1\], got 1.5"),
    ({"top_p": 0.0}, "--top-p"),
    ({"top_p": float("nan")}, "--top-p"),
    ({"max_len": 0}, "--max-len must be an integer from 1 to 1000"),
    ({"max_len": 1001}, "--max-len"),
    ({"min_len": 6, "max_len": 5}, r"--min-len must be an integer from 0 to --max-len \(5\)"),
    ({"min_len": -1}, "--min-len"),
    ({"prefix": "abc", "max_len": 3}, "--prefix 'abc' must be shorter than --max-len"),
    ({"num": 0}, "-n/--num must be a positive integer, got 0"),
    ({"num": -5}, "-n/--num"),
])
def test_bad_options_are_refused_by_the_api_naming_the_flag(lm, options, message):
    options = {"num": 3, "seed": 1, **options}
    with pytest.raises(ConfigError, match=message):
        lm.sample(options.pop("num"), **options)


def test_names_depend_on_the_seed_and_their_number_only(run, lm, monkeypatch):
    names = lm.sample(60, seed=11, top_p=0.9)
    assert lm.sample(10, seed=11, top_p=0.9) == names[:10]  # -n 10 gives the first of -n 60
    monkeypatch.setattr(sampling, "CHUNK_NAMES", 7)      # drawn 7 at a time: the same names
    assert NameModel(run.model, run.vocab).sample(60, seed=11, top_p=0.9) == names


def test_stream_draws_one_bounded_chunk_at_a_time(lm, monkeypatch):
    sizes = []
    draw = lm._draw
    monkeypatch.setattr(lm, "_draw", lambda count, *rest: sizes.append(count) or draw(count, *rest))
    monkeypatch.setattr(sampling, "CHUNK_NAMES", 500)
    stream = lm.stream(10**12, seed=1)  # a trillion names: nothing is drawn until asked for
    assert sizes == []
    first = [next(stream) for _ in range(700)]
    assert sizes == [500, 500] and len(first) == 700


def test_top_p_keeps_the_nucleus(run, lm):
    greedy = greedy_by_hand(run.model, run.vocab, run.config.block_size, prefix="e")
    assert set(lm.sample(30, seed=2, prefix="e", top_p=1e-6)) == {greedy}  # only the likeliest
    assert lm.sample(30, seed=2, top_p=1.0) == lm.sample(30, seed=2)
    wide, narrow = (len(set(lm.sample(300, seed=2, top_p=p))) for p in (1.0, 0.5))
    assert narrow < wide


def test_min_len_bars_the_end_until_the_name_is_long_enough(lm):
    names = lm.sample(200, seed=4, prefix="a", min_len=6, max_len=9)
    assert all(6 <= len(n) <= 9 and n.startswith("a") for n in names)
    assert {len(n) for n in lm.sample(50, seed=4, min_len=5, max_len=5)} == {5}
    assert min(map(len, lm.sample(200, seed=4))) < 6  # without it, shorter names come out


def test_unique_and_exclude_keep_drawing_until_enough_pass(lm):
    names = lm.sample(150, seed=5, unique=True)
    assert len(set(names)) == 150
    plain = lm.sample(40, seed=5)
    excluded = set(plain[:20])
    kept = lm.sample(40, seed=5, exclude=excluded)
    assert len(kept) == 40 and not excluded & set(kept)
    assert kept[:len([n for n in plain if n not in excluded])] == [n for n in plain if n not in excluded]


def test_unique_names_the_model_cannot_give_end_in_a_clear_error(lm):
    with pytest.raises(ConfigError, match=r"only 1 distinct name in 500 draws, 2 asked"):
        lm.sample(2, seed=1, top_k=1, unique=True, max_draws=500)
    with pytest.raises(ConfigError, match=r"new names \(in none of the training file's splits\)"):
        lm.sample(2, seed=1, top_k=1, exclude=set(lm.sample(1, seed=1, top_k=1)), max_draws=300)


def test_score_is_the_sum_of_log_probabilities_by_hand(run, lm):
    names = ["emma", "ava", "zzz", "y"]
    for name, (total, tokens) in zip(names, lm.score(names)):
        X, y = build_dataset([name], run.vocab, run.config.block_size)
        logits = np.asarray(run.model(X, training=False), np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        assert tokens == len(name) + 1 == len(y)
        assert total == pytest.approx(log_probs[np.arange(len(y)), y].sum(), abs=1e-4)
    assert score_names(run.model, run.vocab, ["emma"]) == lm.score(["emma"])


def test_score_runs_in_slices_and_batches_with_the_same_result(run, lm, monkeypatch):
    names = ["emma", "a" * 2_000, "", "ava", "isabella" * 40]
    expected = lm.score(names)
    (emma, tokens), (long, long_tokens) = expected[:2]
    assert long_tokens == 2_001 and np.isfinite(long) and long < emma
    monkeypatch.setattr(sampling, "SCORE_CHUNK_TOKENS", 7)  # the model sees 7 tokens at a time
    monkeypatch.setattr(sampling, "SCORE_BATCH", 2)         # and Python sends 2 names a call
    sliced = NameModel(run.model, run.vocab).score(names)
    assert [t for _, t in sliced] == [t for _, t in expected]
    np.testing.assert_allclose([s for s, _ in sliced], [s for s, _ in expected], rtol=1e-5)
    assert lm.score([]) == []


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
    assert out["new_share"] == pytest.approx(new / 30) and out["copies"] == 30 - new
    assert main(["sample", str(run.path), "-n", "5", "--seed", "4", "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    copies = sum(line.split()[-1] in ("train", "dev/test", "dev", "test") for line in lines[:5])
    assert len(lines) == 6 and lines[-1].startswith("new: ")
    assert f"copies of the run's list: {copies} (in train" in lines[-1]


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


def test_sample_command_new_and_unique_and_json_that_stays_valid_when_short(run, capsys):
    assert main(["sample", str(run.path), "-n", "15", "--seed", "2", "--new", "--unique", "--json",
                 "--top-p", "0.95", "--min-len", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [e["name"] for e in out["names"]]
    assert len(set(names)) == 15 and {e["found_in"] for e in out["names"]} == {"new"}
    assert out["new_share"] == 1.0 and out["top_p"] == 0.95 and out["min_len"] == 3
    assert main(["sample", str(run.path), "-n", "3", "--top-k", "1", "--unique", "--json"]) == 2
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["names"]) == 1  # what was found, as valid JSON
    assert captured.err.startswith("kmlp: error: -n/--num: the model gave only 1 distinct name")


def test_sample_flags_are_checked_before_the_model_loads(tmp_path, capsys):
    # no model at that path: the flag's error comes first, so it was checked before loading
    assert main(["sample", str(tmp_path / "none"), "--top-p", "1.5"]) == 2
    assert capsys.readouterr().err == "kmlp: error: --top-p must be in (0, 1], got 1.5\n"
    assert main(["sample", str(tmp_path / "none"), "--seed", "1180591620717411303424"]) == 2
    assert "--seed must be an integer from 0 to 4294967295" in capsys.readouterr().err


def test_score_reads_names_from_a_file_or_stdin(run, lm, tmp_path, capsys, monkeypatch):
    import io

    names = tmp_path / "names.txt"
    names.write_bytes("\ufeffemma\r\n\n  ava \nmia\n".encode())
    assert main(["score", str(run.path), "--file", str(names), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["emma", "ava", "mia"]
    assert [r["log_likelihood"] for r in rows] == pytest.approx([s for s, _ in lm.score(["emma", "ava", "mia"])])
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"emma\nava\n")))
    assert main(["score", str(run.path), "--file", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["log-lik", "per", "char", "tokens", "name"]
    assert [line.split()[-1] for line in lines[1:]] == ["emma", "ava"]


def test_score_file_with_a_bad_name_stops_before_scoring_and_names_the_line(run, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("emma\nava\nchloë\n", encoding="utf-8")
    assert main(["score", str(run.path), "--file", str(names)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"kmlp: error: {names}:3: 'chloë' has characters outside")
    names.write_bytes(b"emma\n\xff\n")
    assert main(["score", str(run.path), "--file", str(names)]) == 2
    assert f"{names}:2: not valid UTF-8" in capsys.readouterr().err
    assert main(["score", str(run.path), "emma", "--file", str(names)]) == 2
    assert "either as arguments or with --file" in capsys.readouterr().err


def test_sample_into_a_pipe_closed_early_ends_quietly(run):
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "kmlp", "sample", str(run.path), "-n", "10000000",
                             "--seed", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert first.strip() and proc.returncode == 0 and err == b""


def test_long_max_len_draws_fewer_names_at_a_time(lm, monkeypatch):
    sizes = []
    draw = lm._draw
    monkeypatch.setattr(lm, "_draw", lambda count, *rest: sizes.append(count) or draw(count, *rest))
    monkeypatch.setattr(sampling, "CHUNK_CHARACTERS", 5_000)
    assert len(lm.sample(300, seed=1, max_len=1000)) == 300
    assert sizes == [5] * 60  # 5,000 characters a call, at most 1,000 per name
