"""kmlp train --from RUN on the command line: what is refused, in one line and before TensorFlow
loads where it can, and that RUN is only read."""

import shutil

import keras
from cli_helpers import TINY_MODEL, assert_one_line_error, main, main_in_a_fresh_process

FINE = ["--steps", "20", "--steps-per-call", "10", "--quiet", "--samples", "0"]


def test_what_is_not_a_run_or_contradicts_it_is_refused_before_tensorflow_loads(tiny_run_dir, tmp_path):
    run = tiny_run_dir
    words = tmp_path / "w.txt"
    words.write_text("anna\nbob\ncarl\ndora\nemil\nfred\ngreta\nhugo\nines\n", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    broken = shutil.copytree(run, tmp_path / "broken")
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    train = ["train", "--data", words, "--out", tmp_path / "out", *FINE]
    results, tensorflow = main_in_a_fresh_process(
        [*train, "--from", tmp_path / "gone"], [*train, "--from", tmp_path / "empty"],
        [*train, "--from", broken], [*train, "--from", run, "--n-hidden", "300"],
        ["train", "--data", words, "--out", run, "--from", run, *FINE],
        [*train, "--from", run, "--lr", "0.1", "--lr-passes", "0.03"])
    expected = [(tmp_path / "gone", "no such run directory"), (tmp_path / "empty", "holds no kmlp model"),
                (broken / "config.json", ""), (f"--n-hidden 300 contradicts --from {run}'s n_hidden 16",),
                (f"--out {run} is the run --from {run} starts from, which is only ever read",),
                ("--lr and --lr-passes both set the learning rate; give one",)]
    for (code, err), needles in zip(results, expected):
        assert_one_line_error(code, err, *needles)
    assert not tensorflow


def test_a_run_whose_model_fails_the_safe_load_is_refused_and_left_as_it_was(tiny_run_dir, tmp_path, capsys):
    run = shutil.copytree(tiny_run_dir, tmp_path / "unsafe")
    inputs = keras.Input((3,), dtype="int32")
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(run / "model.keras")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = main(capsys, "train", "--data", tmp_path / "none.txt", "--from", run,
                        "--out", tmp_path / "out", *FINE)
    assert_one_line_error(code, err, "none.txt")  # the data first: nothing loaded yet
    data = tmp_path / "w.txt"
    data.write_text("\n".join(["anna", "bob", "carl", "dora", "emil", "fred", "greta", "hugo", "ines"]), "utf-8")
    code, _, err = main(capsys, "train", "--data", data, "--from", run, "--out", tmp_path / "out", *FINE)
    assert_one_line_error(code, err, f"{run / 'model.keras'}: cannot be loaded")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (tmp_path / "out").exists()


def test_fine_tuning_on_the_command_line_prints_what_it_started_from(tiny_run_dir, tmp_path, capsys):
    run = tiny_run_dir
    data = tmp_path / "w.txt"
    data.write_text("\n".join(["anna", "bob", "carl", "dora", "emil", "fred", "greta", "hugo", "ines", "zoë"]),
                    encoding="utf-8")
    code, out, err = main(capsys, "train", "--data", data, "--from", run, "--out", tmp_path / "out",
                          "--n-hidden", "16", "--lr-passes", "0.06", *FINE)  # an explicit flag that agrees
    assert code == 0, err                                                        # is no contradiction
    assert f"starting from {run.resolve()}: its weights, and its vocabulary with" in out
    assert "rate: --lr 0.003, that is --lr-passes 0.06 over 20 passes over the train split" in out  # a step a pass
    assert "note: the dev split has only 1 name (under 50)" in out and "early stopping (patience" in out
    code, out, err = main(capsys, "train", "--data", data, "--out", tmp_path / "plain", *TINY_MODEL,
                          "--early-stopping", "0", "--quiet", "--samples", "0")
    assert code == 0 and "early stopping (patience" not in out
