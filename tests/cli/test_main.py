"""kmlp.cli.main: every mistake as one line and exit 2 (checked in this process through ``main``; one
fresh process shows what a user sees, and that TensorFlow was not loaded), SIGTERM as Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import NOISE, TINY_MODEL, assert_one_line_error, main, main_in_a_fresh_process
from conftest import ROOT, TINY_WORDS, run_cli

from kmlp.runs import rundir
from kmlp.training import backup as backups


@pytest.mark.parametrize("flags, needle", [
    (["--block-size", "0"], "--block-size"), (["--n-embd", "0"], "--n-embd"), (["--n-hidden", "-3"], "--n-hidden"),
    (["--batch-size", "0"], "--batch-size"), (["--steps", "0"], "--steps"), (["--steps", "-5"], "--steps"),
    (["--lr", "0"], "--lr"), (["--lr", "-0.1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--samples", "-1"], "--samples"), (["--devices", "-1"], "--devices"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    (["--seed", "99999999999"], "--seed"), (["--split-seed", "-1"], "--split-seed"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a number >= 0"),
    (["--dropout", "1.5"], "--dropout must be in"), (["--rdrop", "-1"], "--rdrop"),
    (["--preset", "fast", "--rdrop", "1"], "--rdrop needs --dropout above 0"),
    (["--preset", "huge"], "unknown preset 'huge'; choose one of: best, default, fast, lecture"),
    (["--minutes", "1"], "--minutes and --steps both set how long the run trains; give one"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--norm", "group"], "argument --norm: invalid choice"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_bad_training_flag_is_one_line_naming_it(flags, needle, tiny_names_file, tmp_path, capsys):
    code, _, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", *TINY_MODEL, *flags)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_bad_budget_is_one_line(value, tiny_names_file, tmp_path, capsys):
    code, _, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", "--minutes", value)
    assert_one_line_error(code, err, f"--minutes must be a positive number, got {float(value)!r}")
    code, _, err = main(capsys, "train", "--minutes", "2", "--epochs", "3")
    assert_one_line_error(code, err, "--minutes and --epochs both set how long the run trains")


@pytest.mark.parametrize("args, needle", [
    (["sample"], "kmlp sample: the following arguments are required: DIR"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["tune", "--max-minutes", "inf"], "--max-minutes must be a positive number"),
    (["tune", "--max-trials", "0"], "--max-trials must be a positive integer"),
    (["tune", "--seed", "-1"], "--seed must be an integer from 0"),
    (["lr-find", "--seed", "-1"], "--seed must be an integer from 0"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr (0.1) must be above --start-lr (1)"),
    (["lr-find", "--num-steps", "1"], "--num-steps must be an integer of at least 2"),
])
def test_a_bad_flag_of_any_command_is_one_line(args, needle, capsys):
    assert_one_line_error(*main(capsys, *args)[::2], needle)


def test_a_fresh_process_reports_mistakes_before_loading_tensorflow_and_shows_no_noise(tiny_names_file, tmp_path):
    done = run_cli("train", "--data", tiny_names_file, "--seed", "-1", "--out", tmp_path / "run")
    assert_one_line_error(done.returncode, done.stderr, "--seed")
    assert not any(word in done.stdout + done.stderr for word in NOISE) and not (tmp_path / "run").exists()
    bad_names = tmp_path / "bad.txt"
    bad_names.write_bytes(b"emma\nav\x00a\n")
    mistakes = [["train", "--data", str(tiny_names_file), "--steps", "0"], ["tune", "--max-minutes", "inf"],
                ["train", "--data", str(tiny_names_file), "--minutes", "0"],
                ["lr-find", "--end-lr", "0"], ["train", "--out", str(tiny_names_file)], ["evaluate"],
                ["sample", "run", "--top-p", "2"], ["sample", "run", "--seed", "1180591620717411303424"],
                ["sample", "run", "--temperature", "inf"], ["score", "run"], ["export", "run", "--version", "0"],
                ["serve", "run", "--port", "70000"], ["score", "run", "--file", str(tmp_path / "missing.txt")],
                ["score", "run", "--file", str(bad_names)]]
    results, tensorflow = main_in_a_fresh_process(*mistakes)
    assert [code for code, _ in results] == [2] * len(mistakes), results
    assert tensorflow is False  # every mistake was found before TensorFlow loaded


@pytest.mark.parametrize("command", ["sample", "evaluate", "export"])
def test_commands_on_a_folder_that_holds_no_run(command, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert_one_line_error(*main(capsys, command, tmp_path / "empty")[::2], tmp_path / "empty", "holds no kmlp model")
    assert_one_line_error(*main(capsys, command, tmp_path / "nowhere")[::2], tmp_path / "nowhere", "no such run")


# ---------------------------------------------------------------------------------------------
# Interrupted training


def test_sigterm_stops_training_like_ctrl_c_and_resume_finishes_it(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("\n".join(TINY_WORDS) + "\n")
    args = [sys.executable, "-m", "kmlp", "train", "--data", str(data), "--block-size", "3", "--n-embd", "4",
            "--n-hidden", "16", "--batch-size", "1", "--steps", "1000", "--optimizer", "adam", "--lr", "0.01",
            "--decay-at", "none", "--steps-per-call", "10", "--early-stopping", "0", "--no-jit", "--samples", "0",
            "--quiet", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metadata = backups.backup_dir(tmp_path / "run") / backups.METADATA_FILE
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not backups.epoch_of(metadata) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "kmlp: terminated" and "--resume continues" in out
    assert not (tmp_path / "run").exists() and metadata.exists()
    resumed = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    metrics = rundir.read_json(tmp_path / "run" / "metrics.json")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    seconds = [float(row.split(",")[history[0].split(",").index("seconds")]) for row in history[1:]]
    assert seconds == sorted(seconds) and metrics["seconds"] >= seconds[-1] > 0
    assert metrics["steps"] == 1000 and metrics["resumed_at_step"] > 0
    assert len(history) == 1 + metrics["epochs"]
    assert sorted(os.listdir(tmp_path)) == ["run", "tiny.txt"]  # no backup, lock or staging left
