"""Reliability across modules: bad and odd names files, a crash while saving, kill -9 and resume,
repeatability and the mirrored strategy, met the way a user meets them: through the ``kmlp`` command.

Errors must be one line on stderr, ``kmlp: error: ...``, naming the file (and line), exit status 2,
no traceback, and nothing saved before may be lost. Commands run through ``kmlp.cli.main`` in this
process, except where a fresh process is the point (kill -9, logical devices, repeatability).
(Flag mistakes and output folders: tests/cli/test_main.py; damaged runs: tests/runs/test_folders.py.)
"""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time

import keras
import pytest
from conftest import NAMES_RUN_FLAGS, ROOT, TINY_WORDS, copy_run, run_cli

from kmlp.cli import main as cli
from kmlp.data.files import MAX_NAME_LENGTH, load_words
from kmlp.data.pipeline import MIN_DISTINCT_NAMES, NamesData, build_dataset
from kmlp.data.vocab import Vocabulary
from kmlp.runs.rundir import load_run
from kmlp.training import backup as backups
from kmlp.training.train import train

TINY_MODEL = ["--block-size", "3", "--n-embd", "4", "--n-hidden", "16", "--batch-size", "8",
              "--steps", "40", "--decay-at", "none", "--optimizer", "adam", "--lr", "0.01"]


def assert_one_line_error(result, *needles, code=2):
    """``result`` (a CompletedProcess, or (code, stderr) from main) failed as a user should see it."""
    returncode, stderr = (result.returncode, result.stderr) if hasattr(result, "stderr") else result
    assert returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmlp: error: "), stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, stderr)
    return lines[0]


def main_in_process(capsys, *args):
    """``kmlp ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def write_bytes(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def files(run_dir) -> dict:
    """Every file under a run folder (its logs included) with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Bad data files that are refused: one line naming the file (and line), before TensorFlow loads.

GOOD = "\n".join(TINY_WORDS[:10]) + "\n"

REFUSED = {
    # case: (file contents or None for "no such path", "dir" for a directory), expected words, line
    "missing path": (None, "no such file", None),
    "directory": ("dir", "is a directory", None),
    "empty file": (b"", "no names", None),
    "only blank lines": (b"\n  \n\t\n\r\n", "no names", None),
    "invalid UTF-8": (b"emma\nzo\xe9\nava\n", "not valid UTF-8", 2),
    "100k-character line": (b"emma\nava\n" + b"x" * 100_000 + b"\nmia\n", "is not a name", 3),
    "tab inside a line (a TSV file)": (b"emma\t120\nava\t80\n", "control character U+0009", 1),
    "a single name": (b"emma\n", "too few", None),
    "fewer names than three splits need": (("\n".join(TINY_WORDS[:MIN_DISTINCT_NAMES - 1])).encode(),
                                           "too few", None),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_data_file_is_refused_with_one_line_naming_file_and_line(case, tmp_path, capsys):
    contents, words, line = REFUSED[case]
    path = tmp_path / "names.txt"
    if contents == "dir":
        path.mkdir()
    elif contents is not None:
        path.write_bytes(contents)
    result = main_in_process(capsys, "train", "--data", path, "--out", tmp_path / "run", *TINY_MODEL)
    message = assert_one_line_error(result, words, path if line is None else f"{path}:{line}:")
    assert not (tmp_path / "run").exists(), message


def test_enough_distinct_names_for_three_splits():
    words = TINY_WORDS[:MIN_DISTINCT_NAMES]
    data = NamesData.from_words(words, block_size=2)
    assert all(data.words[split] for split in ("train", "dev", "test"))


# ---------------------------------------------------------------------------------------------
# Odd data files that are accepted as they are (documented in the README).


def test_bom_crlf_and_cr_line_endings_are_read_as_plain_lines(tmp_path):
    path = write_bytes(tmp_path, "names.txt", b"\xef\xbb\xbfemma\r\nava\r\n\r\nmia\rzoe\n")
    assert load_words(path) == ["emma", "ava", "mia", "zoe"]


def test_case_is_kept_and_upper_case_letters_are_their_own_characters(tmp_path):
    path = write_bytes(tmp_path, "names.txt", "Emma\nEMMA\nemma\nMcKenzie\n".encode())
    words = load_words(path)
    assert words == ["Emma", "EMMA", "emma", "McKenzie"]
    vocab = Vocabulary.from_words(words)
    assert {"E", "M", "K", "e", "m"} <= set(vocab.chars)


def test_non_ascii_letters_are_kept_and_normalised_to_one_character(tmp_path):
    decomposed = "Jose\u0301"  # e + combining acute accent, as some keyboards type it
    path = write_bytes(tmp_path, "names.txt", f"Zoë\nNúñez\n{decomposed}\nJosé\n".encode())
    words = load_words(path)
    assert words == ["Zoë", "Núñez", "José", "José"]
    assert {"ë", "ú", "ñ", "é"} <= set(Vocabulary.from_words(words).chars)
    assert "\u0301" not in Vocabulary.from_words(words).chars


def test_spaces_hyphens_apostrophes_and_digits_inside_names_are_kept(tmp_path):
    path = write_bytes(tmp_path, "names.txt", "  mary ann  \nanne-marie\no'brien\nr2d2\n".encode())
    assert load_words(path) == ["mary ann", "anne-marie", "o'brien", "r2d2"]
    assert {" ", "-", "'", "2"} <= set(Vocabulary.from_words(load_words(path)).chars)


def test_a_literal_dot_is_a_character_of_its_own_not_the_boundary_token():
    vocab = Vocabulary.from_words(["st.john", "emma"])
    dot = vocab.stoi["."]
    assert dot != 0 and vocab.token(0) == "." and vocab.token(dot) == "."
    assert vocab.decode(vocab.encode("st.john")) == "st.john"  # a boundary would have ended it
    a, s = vocab.stoi["a"], vocab.stoi["s"]
    X, y = build_dataset(["a.s"], vocab, block_size=2)
    assert X.tolist() == [[0, 0], [0, a], [a, dot], [dot, s]]
    assert y.tolist() == [a, dot, s, 0]


def test_duplicate_names_are_kept_and_stay_in_one_split():
    words = TINY_WORDS + ["emma"] * 5
    data = NamesData.from_words(words, block_size=3)
    holding = [split for split, names in data.words.items() if "emma" in names]
    assert len(holding) == 1 and data.words[holding[0]].count("emma") == 6


def test_line_limit_is_generous_for_real_names(tmp_path):
    path = write_bytes(tmp_path, "names.txt", ("a" * MAX_NAME_LENGTH + "\nbob\n").encode())
    assert len(load_words(path)[0]) == MAX_NAME_LENGTH


def test_train_and_sample_on_a_file_with_every_accepted_oddity(tmp_path, capsys):
    names = ["Émilie", "O'Brien", "anne-marie", "mary ann", "st.john", "r2d2", "Zoë", "Núñez",
             "emma", "emma", "ava", "mia", "Léa", "jean-luc"]
    path = write_bytes(tmp_path, "odd.txt", b"\xef\xbb\xbf" + "\r\n".join(names).encode() + b"\r\n")
    code, err = main_in_process(capsys, "train", "--data", path, "--out", tmp_path / "run", *TINY_MODEL,
                                "--quiet", "--samples", "0")
    assert code == 0, err
    run = load_run(tmp_path / "run")
    assert {"É", "'", "-", " ", ".", "2", "ë", "ñ"} <= set(run.vocab.chars)
    code, err = main_in_process(capsys, "sample", tmp_path / "run", "-n", "5", "--seed", "1")
    assert code == 0, err


def test_evaluating_on_a_file_with_unknown_characters_names_the_line(tiny_run_dir, tmp_path, capsys):
    path = write_bytes(tmp_path, "other.txt", "emma\n\nava\nzoë\n".encode())
    result = main_in_process(capsys, "evaluate", tiny_run_dir, "--data", path)
    assert_one_line_error(result, f"{path}:4:", "ë")


# ---------------------------------------------------------------------------------------------
# Faults: a crash while saving, divergence, kill -9 and --resume


def test_crash_while_saving_leaves_the_previous_model_intact(tiny_run_dir, tmp_path, monkeypatch):
    run_dir = copy_run(tiny_run_dir, tmp_path / "run")
    before = files(run_dir)
    data_file = tmp_path / "tiny.txt"
    data_file.write_text("\n".join(TINY_WORDS), encoding="utf-8")

    def save_half_then_fail(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half of a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    config = load_run(run_dir).config.replace(steps=20, decay_at=[], seed=7)
    with pytest.raises(OSError, match="No space left"):
        train(config, data_path=data_file, out_dir=run_dir, verbose=0, log=lambda *_: None)
    assert files(run_dir) == before
    assert not list(tmp_path.glob(".run.partial-*"))
    assert (tmp_path / ".run.backup").is_dir()  # the trained epochs survive for --resume

    monkeypatch.undo()
    result = train(config, data_path=data_file, out_dir=run_dir, verbose=0, log=lambda *_: None,
                   resume=True)  # every epoch was done: nothing left to train, only the save
    assert result.metrics["steps"] == 20 and result.metrics["resumed_at_step"] == 20
    assert load_run(run_dir).config.seed == 7 and not (tmp_path / ".run.backup").exists()


def test_a_run_that_diverges_keeps_the_good_model_it_would_replace(tiny_run_dir, tmp_path, capsys):
    run_dir = copy_run(tiny_run_dir, tmp_path / "run")
    before = files(run_dir)
    data_file = load_run(run_dir).data_path
    result = main_in_process(capsys, "train", "--data", data_file, "--out", run_dir, *TINY_MODEL,
                             "--lr", "1000", "--quiet", "--samples", "0")
    assert_one_line_error(result, "diverged", "--lr", f"{run_dir} is unchanged")
    assert files(run_dir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def history(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [(row["epoch"], row["loss"], row["val_loss"]) for row in csv.DictReader(f)]


@pytest.mark.integration
def test_kill_9_then_resume_finishes_as_an_uninterrupted_run_would(names_path, tmp_path, capsys):
    data_file = tmp_path / "names_2k.txt"  # big enough for several epochs of a few seconds in all
    data_file.write_text("\n".join(names_path.read_text().split()[:2000]), encoding="utf-8")
    # without XLA, whose compiling would take longer than the training (resumes with it: test_logs.py)
    args = ["train", "--data", data_file, "--block-size", "3", "--n-embd", "8", "--n-hidden", "64",
            "--batch-size", "64", "--steps", "800", "--optimizer", "adam", "--lr", "0.01",
            "--decay-at", "400", "--samples", "5", "--quiet", "--no-jit"]
    out = tmp_path / "run"
    backup = backups.backup_dir(out)
    proc = subprocess.Popen([sys.executable, "-m", "kmlp", *map(str, args), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Killed once the first epoch is saved: from then on a kill (even mid-save) loses nothing.
        while proc.poll() is None and not backups.epoch_of(backup / backups.METADATA_FILE):
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not out.exists()

    assert_one_line_error(main_in_process(capsys, *args, "--out", out), backup, "--resume")
    capsys.readouterr()
    assert cli.main([str(a) for a in (*args, "--out", out, "--resume")]) == 0
    assert "resuming from" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 800 and metrics["resumed_at_step"] > 0
    assert not backup.exists() and not list(tmp_path.glob(".run.*"))

    code, err = main_in_process(capsys, *args, "--out", tmp_path / "uninterrupted")
    assert code == 0, err
    reference = json.loads((tmp_path / "uninterrupted" / "metrics.json").read_text())
    assert abs(metrics["dev_loss"] - reference["dev_loss"]) < 0.01
    assert len(history(out)) == len(history(tmp_path / "uninterrupted")) == metrics["epochs"]


# ---------------------------------------------------------------------------------------------
# Repeatability and the mirrored strategy


def test_same_seed_and_configuration_give_identical_losses_and_names(tiny_names_file, tmp_path, capsys):
    args = ["train", "--data", tiny_names_file, *TINY_MODEL, "--dropout", "0.1", "--samples", "8",
            "--quiet"]
    first = run_cli(*args, "--out", tmp_path / "a")  # a fresh process, and this one with its history
    assert first.returncode == 0, first.stderr
    capsys.readouterr()
    assert cli.main([str(a) for a in (*args, "--out", tmp_path / "b")]) == 0
    second = capsys.readouterr().out
    assert history(tmp_path / "a") == history(tmp_path / "b")
    sampled = first.stdout.split("names sampled from the model:")[1]
    assert sampled == second.split("names sampled from the model:")[1] and sampled.strip()
    assert (json.loads((tmp_path / "a" / "metrics.json").read_text())["dev_loss"]
            == json.loads((tmp_path / "b" / "metrics.json").read_text())["dev_loss"])


@pytest.mark.integration
def test_mirrored_strategy_on_two_logical_cpus_trains_as_well(names_path, names_run, tmp_path):
    """The same training as names_run (the default strategy), on two logical CPUs."""
    mirrored = run_cli("train", "--data", names_path, *NAMES_RUN_FLAGS, "--samples", "0", "--quiet",
                       "--out", tmp_path / "mirrored", "--strategy", "mirrored", "--devices", "2")
    assert mirrored.returncode == 0, mirrored.stderr
    assert "2 devices" in mirrored.stdout
    dev = {name: json.loads((out / "metrics.json").read_text())["dev_loss"]
           for name, out in (("mirrored", tmp_path / "mirrored"), ("default", names_run[0]))}
    assert all(math.isfinite(v) and v < 2.6 for v in dev.values()), dev
    assert abs(dev["mirrored"] - dev["default"]) < 0.05, dev
